import { expect } from 'chai';
import { CredentialsError } from '../../src/errors.js';
import { GoogleOauthProvider } from '../../src/auth/google-oauth.js';
import { planProviders } from '../../src/auth/registry.js';
import type { HeaderMap } from '../../src/auth/provider.js';
import { decodeJwt, generateSigningKey, verifyJwt } from '../fakes/jwt.js';
import { writeCredentialsFile } from '../fakes/google-oauth-token.js';
import { CLIENT_ID, KEY_SA, capturingLogger, startGoogleWorld } from '../fakes/google-world.js';
import type { GoogleWorld } from '../fakes/google-world.js';
import { configFor, contextFor, expectNoSecrets, injectorFor, sleep } from './google-helpers.js';
import path from 'node:path';

const PARAMS = { client_id: CLIENT_ID };

function token(headers: HeaderMap): string {
  return headers['Authorization']!.replace(/^Bearer /, '');
}

describe('google-oauth provider', () => {
  let world: GoogleWorld;
  const closers: (() => unknown)[] = [];

  beforeEach(async () => {
    world = await startGoogleWorld();
  });
  afterEach(async () => {
    for (const close of closers.splice(0)) await close();
    await world.close();
  });

  async function oauth(env: NodeJS.ProcessEnv, params: Record<string, unknown> = PARAMS, extra: Record<string, unknown> = {}) {
    const { logger, lines } = capturingLogger();
    const { injector, plans } = await injectorFor(world, env, { params, ...extra }, logger);
    closers.push(() => injector.close());
    return { injector, plans, lines };
  }

  function direct(env: NodeJS.ProcessEnv) {
    const { logger, lines } = capturingLogger();
    const { config } = configFor(world, { params: PARAMS });
    const plan = planProviders(config, env).plans[0]!;
    const provider = new GoogleOauthProvider(plan, contextFor(config, env, logger), { backoffInitialMs: 50, backoffMaxMs: 200 });
    closers.push(() => provider.close());
    return { provider, lines };
  }

  it('is selected by client_id alone and mints an ID token from a service-account key, once for 100 concurrent requests', async () => {
    const { injector, plans, lines } = await oauth(world.keyEnv());
    expect(plans[0]).to.include({ type: 'google-oauth', reason: 'auth.params has client_id (and no service_account)' });
    const all = await Promise.all(Array.from({ length: 100 }, () => injector.headers()));
    expect(world.oauth.counts['token']).to.equal(1);
    expect(world.oauth.audiences).to.deep.equal([CLIENT_ID]);
    const verified = verifyJwt(token(all[0]!), { keys: world.issuer.keys, audience: CLIENT_ID, issuer: 'https://accounts.google.com' });
    expect(verified.ok && verified.payload['email']).to.equal(KEY_SA);
    expect(injector.status().providers[0]).to.include({ ready: true, identity: KEY_SA });
    expectNoSecrets(lines, [token(all[0]!), world.saKey.private_key.split('\n')[1]!]);
  });

  it('asks the metadata server for an identity token with the audience and format=full', async () => {
    const { injector, lines } = await oauth(world.metadataEnv());
    const all = await Promise.all(Array.from({ length: 100 }, () => injector.headers()));
    expect(world.metadata.counts['identity']).to.equal(1);
    expect(world.metadata.audiences).to.deep.equal([CLIENT_ID]);
    const claims = decodeJwt(token(all[0]!))!.payload;
    expect(claims).to.include({ aud: CLIENT_ID, email: world.metadata.email });
    expectNoSecrets(lines, [token(all[0]!)]);
  });

  it('honours auth.endpoints.metadataHost over GCE_METADATA_HOST', async () => {
    const env = { ...world.noCredentialsEnv() };
    const { injector } = await oauth(env, PARAMS, { endpoints: { metadataHost: world.metadata.host } });
    await injector.start();
    expect(world.metadata.counts['identity']).to.equal(1);
  });

  it('refuses a gcloud user login and points at google-iam', async () => {
    const { injector } = await oauth(world.userEnv());
    const err = (await injector.start().catch((e: unknown) => e)) as CredentialsError;
    expect(err).to.be.instanceOf(CredentialsError);
    expect(err.message).to.include('google-oauth: Application Default Credentials are a gcloud user login');
    expect(err.message).to.include(`cannot mint ID tokens for audience ${CLIENT_ID}`);
    expect(err.hint).to.include('use google-iam');
    expect(err.hint).to.include('service_account');
  });

  it('explains a key the token endpoint does not accept', async () => {
    const stranger = { ...world.saKey, private_key: generateSigningKey('other').privatePem };
    const file = writeCredentialsFile(path.join(world.dir, 'stale-key.json'), stranger);
    const { injector } = await oauth({ ...world.keyEnv(), GOOGLE_APPLICATION_CREDENTIALS: file });
    const err = (await injector.start().catch((e: unknown) => e)) as CredentialsError;
    expect(err.message).to.include(`refused the service-account key of ${KEY_SA}: invalid_grant: Invalid JWT Signature.`);
    expect(err.hint).to.include('create a new key');
  });

  it('explains a GOOGLE_APPLICATION_CREDENTIALS path that does not exist', async () => {
    const { injector } = await oauth({ ...world.keyEnv(), GOOGLE_APPLICATION_CREDENTIALS: path.join(world.dir, 'missing.json') });
    const err = (await injector.start().catch((e: unknown) => e)) as CredentialsError;
    expect(err.message).to.match(/GOOGLE_APPLICATION_CREDENTIALS points at .*missing\.json, which cannot be read \(ENOENT\)/);
  });

  it('refuses a token that is already expired and one for another audience', async () => {
    const { provider } = direct(world.keyEnv());
    world.oauth.failure = 'expired';
    expect(((await provider.start().catch((e: unknown) => e)) as Error).message).to.include('already expired on arrival');
    world.oauth.failure = 'wrong-audience';
    await sleep(250);
    expect(((await provider.token().catch((e: unknown) => e)) as Error).message).to.include('instead of');
    world.oauth.failure = 'garbage';
    await sleep(250);
    expect(((await provider.token().catch((e: unknown) => e)) as Error).message).to.include('not JSON');
  });

  it('keeps the held token while the metadata server fails, then answers CredentialsError after expiry and recovers', async () => {
    world.metadata.lifetimeSeconds = 2;
    const { provider, lines } = direct(world.metadataEnv());
    await provider.start();
    const held = provider.requestHeaders();
    world.metadata.failure = 'error500';
    await provider.freshToken().catch(() => {});
    expect(provider.requestHeaders()).to.equal(held);
    await sleep(2_100);
    const err = (await Promise.resolve()
      .then(() => provider.requestHeaders())
      .catch((e: unknown) => e)) as CredentialsError;
    expect(err).to.be.instanceOf(CredentialsError);
    expect(err.message).to.include('the metadata server at');
    expect(err.message).to.include('answered 500');
    world.metadata.failure = undefined;
    await sleep(400);
    const headers = await provider.requestHeaders();
    expect(verifyJwt(token(headers), { keys: world.issuer.keys, audience: CLIENT_ID }).ok).to.equal(true);
    expectNoSecrets(lines, [token(headers)]);
  });

  it('times out a slow token endpoint and retries', async () => {
    const { logger } = capturingLogger();
    const { config } = configFor(world, { params: PARAMS, tokenFetchTimeoutMs: 200 });
    const env = world.keyEnv();
    const plan = planProviders(config, env).plans[0]!;
    const provider = new GoogleOauthProvider(plan, contextFor(config, env, logger), { backoffInitialMs: 50, backoffMaxMs: 100 });
    closers.push(() => provider.close());
    world.oauth.failure = 'slow';
    const err = (await provider.start().catch((e: unknown) => e)) as CredentialsError;
    expect(err.message).to.include('timed out after 200 ms');
    world.oauth.failure = undefined;
    await sleep(150);
    expect(provider.status().ready).to.equal(true);
  });

  it('requires client_id when chosen explicitly', () => {
    const { config } = configFor(world, { provider: 'google-oauth', params: { service_account: KEY_SA } });
    const { problems } = planProviders(config, {});
    expect(problems).to.have.length(1);
    expect(problems[0]!.path).to.equal('auth.params.client_id');
    expect(problems[0]!.message).to.match(/^required for google-oauth/);
  });
});
