/**
 * Source credentials on their own (what google-iam, google-oauth and kvx-launch's Vertex calls stand on): the
 * cloud-platform access token each kind holds, one fetch at a time, kept while valid, failures passed through as
 * the fetch raised them.
 */
import { Egress } from '../../src/config/egress.js';
import path from 'node:path';
import { expect } from 'chai';
import { CredentialsLookup, findCredentials } from '../../src/auth/google/discovery.js';
import { HeaderInjector } from '../../src/auth/injector.js';
import { planProviders } from '../../src/auth/registry.js';
import { applicationDefaultCredentials } from '../../src/vertex/client.js';
import type { SourceCredentials } from '../../src/auth/google/source.js';
import { TokenFetchError } from '../../src/auth/token.js';
import { silentLogger } from '../../src/log/logger.js';
import { generateSigningKey } from '../fakes/jwt.js';
import { authorizedUserFile, writeCredentialsFile } from '../fakes/google-oauth-token.js';
import { CLIENT_ID, KEY_SA, TARGET_SA, USER, startGoogleWorld } from '../fakes/google-world.js';
import type { GoogleWorld } from '../fakes/google-world.js';
import { configFor } from './google-helpers.js';

describe('Google source credentials: the access token', () => {
  let world: GoogleWorld;
  const sources: SourceCredentials[] = [];

  beforeEach(async () => {
    world = await startGoogleWorld();
  });
  afterEach(async () => {
    for (const s of sources.splice(0)) s.close();
    await world.close();
  });

  async function find(env: NodeJS.ProcessEnv, endpoints: Partial<GoogleWorld['endpoints']> = {}): Promise<SourceCredentials> {
    const source = await findCredentials({ env, endpoints: { ...world.endpoints, ...endpoints }, logger: silentLogger, egress: Egress.none });
    sources.push(source);
    return source;
  }

  const fetchesOf = (which: 'key' | 'user' | 'metadata') => (which === 'metadata' ? world.metadata : world.oauth).counts['token'] ?? 0;
  const envOf = (which: 'key' | 'user' | 'metadata') => (which === 'key' ? world.keyEnv() : which === 'user' ? world.userEnv() : world.metadataEnv());

  for (const which of ['key', 'user', 'metadata'] as const) {
    it(`${which}: one fetch for concurrent callers, the token kept while valid, a dropped one fetched anew`, async () => {
      const source = await find(envOf(which));
      const tokens = await Promise.all(Array.from({ length: 20 }, () => source.accessToken(AbortSignal.timeout(5_000))));
      expect(fetchesOf(which)).to.equal(1);
      expect(new Set(tokens.map((t) => t.value)).size).to.equal(1);
      const identity = { key: KEY_SA, user: USER.email, metadata: world.metadata.email }[which];
      expect(world.accessTokens.check(`Bearer ${tokens[0]!.value}`)).to.deep.equal({ email: identity });
      expect((await source.accessToken(AbortSignal.timeout(5_000))).value).to.equal(tokens[0]!.value);
      expect(fetchesOf(which)).to.equal(1);
      source.dropAccessToken(tokens[0]!.value);
      const next = await source.accessToken(AbortSignal.timeout(5_000));
      expect(next.value).to.not.equal(tokens[0]!.value);
      expect(fetchesOf(which)).to.equal(2);
    });

    it(`${which}: a failed fetch is not kept, and its error reaches the caller as raised`, async () => {
      const source = await find(envOf(which));
      const server = which === 'metadata' ? world.metadata : world.oauth;
      // google-auth-library, which refreshes user logins, retries a 500 itself; an HTML page it does not.
      server.failure = which === 'user' ? 'garbage' : 'error500';
      const before = server.counts['all'] ?? 0;
      const failures = await Promise.all([source.accessToken(AbortSignal.timeout(5_000)), source.accessToken(AbortSignal.timeout(5_000))].map((p) => p.catch((e: unknown) => e)));
      expect((server.counts['all'] ?? 0) - before, 'concurrent callers share the failed fetch').to.equal(1);
      for (const err of failures) {
        expect(err).to.be.instanceOf(TokenFetchError);
        expect((err as Error).message).to.not.match(/^(service-account key|gcloud user login|metadata server): /);
      }
      server.failure = undefined;
      const token = await source.accessToken(AbortSignal.timeout(5_000));
      expect(token.value).to.match(/^ya29\./);
      expect((server.counts['all'] ?? 0) - before).to.equal(2);
    });
  }

  it('a key the token endpoint refuses: the error keeps Google\'s HTTP status and the hint', async () => {
    const stale = writeCredentialsFile(path.join(world.dir, 'stale-key.json'), { ...world.saKey, private_key: generateSigningKey('other').privatePem });
    const source = await find({ ...world.keyEnv(), GOOGLE_APPLICATION_CREDENTIALS: stale });
    const err = (await source.accessToken(AbortSignal.timeout(5_000)).catch((e: unknown) => e)) as TokenFetchError;
    expect(err).to.be.instanceOf(TokenFetchError);
    expect(err.message).to.equal(`the OAuth token endpoint refused the service-account key of ${KEY_SA}: invalid_grant: Invalid JWT Signature.`);
    expect(err.status).to.equal(400);
    expect(err.hint).to.include('create a new key');
  });

  it('the metadata server answering 500: the error keeps that status', async () => {
    const source = await find(world.metadataEnv());
    world.metadata.failure = 'error500';
    const err = (await source.accessToken(AbortSignal.timeout(5_000)).catch((e: unknown) => e)) as TokenFetchError;
    expect(err.message).to.match(/^the metadata server at 127\.0\.0\.1:\d+ answered 500 for token/);
    expect(err.status).to.equal(500);
  });

  it('Vertex AI headers: the access token, and the quota project of the credentials file or GOOGLE_CLOUD_QUOTA_PROJECT', async () => {
    const file = writeCredentialsFile(path.join(world.dir, 'adc-quota.json'), { ...authorizedUserFile(USER), quota_project_id: 'billing-project' });
    const lookup = (env: NodeJS.ProcessEnv) => new CredentialsLookup('test', { env, endpoints: world.endpoints, logger: silentLogger, egress: Egress.none });
    const withFile = lookup({ ...world.userEnv(), GOOGLE_APPLICATION_CREDENTIALS: file });
    const overridden = lookup({ ...world.userEnv(), GOOGLE_APPLICATION_CREDENTIALS: file, GOOGLE_CLOUD_QUOTA_PROJECT: 'other-billing' });
    const metadata = lookup(world.metadataEnv());
    try {
      const headers = (await applicationDefaultCredentials(withFile).getRequestHeaders()) as Record<string, string>;
      expect(Object.keys(headers).sort()).to.deep.equal(['authorization', 'x-goog-user-project']);
      expect(world.accessTokens.check(headers['authorization'])).to.deep.equal({ email: USER.email });
      expect(headers['x-goog-user-project']).to.equal('billing-project');
      expect(((await applicationDefaultCredentials(overridden).getRequestHeaders()) as Record<string, string>)['x-goog-user-project']).to.equal('other-billing');
      expect(Object.keys(await applicationDefaultCredentials(metadata).getRequestHeaders())).to.deep.equal(['authorization']);
    } finally {
      for (const l of [withFile, overridden, metadata]) l.close();
    }
  });

  it('a look-up shared with a provider: one access token for IAM and Vertex AI, still usable after the provider closed', async () => {
    const env = world.metadataEnv();
    const shared = new CredentialsLookup('kvx-launch', { env, endpoints: world.endpoints, logger: silentLogger, egress: Egress.none });
    const { config, baseDir } = configFor(world, { params: { client_id: CLIENT_ID, service_account: TARGET_SA } });
    const injector = await HeaderInjector.create(planProviders(config, env).plans, { config, logger: silentLogger, baseDir, env, googleCredentials: shared });
    const vertex = applicationDefaultCredentials(shared);
    try {
      await injector.start();
      const first = (await vertex.getRequestHeaders()) as Record<string, string>;
      expect(world.iam.calls.map((c) => c.caller)).to.deep.equal([world.metadata.email]);
      expect(world.metadata.counts['token']).to.equal(1);
      await injector.close();
      const after = (await vertex.getRequestHeaders()) as Record<string, string>;
      expect(after['authorization']).to.equal(first['authorization']);
      expect(world.metadata.counts['token']).to.equal(1);
    } finally {
      await injector.close();
      shared.close();
    }
  });
});
