import { expect } from 'chai';
import { CredentialsError } from '../../src/errors.js';
import { GoogleIamProvider } from '../../src/auth/google-iam.js';
import { planProviders } from '../../src/auth/registry.js';
import type { ProviderPlan } from '../../src/auth/registry.js';
import type { HeaderMap } from '../../src/auth/provider.js';
import { verifyJwt } from '../fakes/jwt.js';
import { CLIENT_ID, KEY_SA, TARGET_SA, USER, capturingLogger, startGoogleWorld } from '../fakes/google-world.js';
import type { GoogleWorld } from '../fakes/google-world.js';
import { configFor, contextFor, expectNoSecrets, injectorFor, sleep } from './google-helpers.js';

const PARAMS = { client_id: CLIENT_ID, service_account: TARGET_SA };

function bearer(headers: HeaderMap): string {
  const value = headers['Authorization'];
  expect(value).to.match(/^Bearer /);
  return value!.slice('Bearer '.length);
}

describe('google-iam provider', () => {
  let world: GoogleWorld;
  const closers: (() => unknown)[] = [];

  beforeEach(async () => {
    world = await startGoogleWorld();
  });
  afterEach(async () => {
    for (const close of closers.splice(0)) await close();
    await world.close();
  });

  async function iam(env: NodeJS.ProcessEnv, params: Record<string, unknown> = PARAMS) {
    const { logger, lines } = capturingLogger();
    const { injector, plans } = await injectorFor(world, env, { params }, logger);
    closers.push(() => injector.close());
    return { injector, plans, lines };
  }

  /** A provider built directly, with backoff short enough for real-time tests. */
  function direct(env: NodeJS.ProcessEnv) {
    const { logger, lines } = capturingLogger();
    const { config } = configFor(world, { params: PARAMS });
    const plan = planProviders(config, env).plans[0]!;
    const provider = new GoogleIamProvider(plan, contextFor(config, env, logger), { backoffInitialMs: 50, backoffMaxMs: 200 });
    closers.push(() => provider.close());
    return { provider, lines };
  }

  it('is selected by client_id + service_account and mints one token for 100 concurrent requests (metadata server source)', async () => {
    const { injector, plans, lines } = await iam(world.metadataEnv());
    expect(plans[0]).to.include({ type: 'google-iam', reason: 'auth.params has client_id and service_account' });
    const all = await Promise.all(Array.from({ length: 100 }, () => injector.headers()));
    expect(world.iam.counts['generateIdToken']).to.equal(1);
    expect(world.metadata.counts['token']).to.equal(1);
    expect(new Set(all.map((h) => h['Authorization'])).size).to.equal(1);
    const token = bearer(all[0]!);
    const verified = verifyJwt(token, { keys: world.issuer.keys, audience: CLIENT_ID, issuer: 'https://accounts.google.com' });
    expect(verified.ok).to.equal(true);
    expect(verified.ok && verified.payload['email']).to.equal(TARGET_SA);
    expect(world.iam.calls[0]).to.deep.equal({ serviceAccount: TARGET_SA, caller: world.metadata.email, body: { audience: CLIENT_ID, includeEmail: true } });
    // steady state: synchronous, the same frozen object
    const sync = injector.headers();
    expect(sync).to.not.be.instanceOf(Promise);
    expect(injector.headers()).to.equal(sync);
    const status = injector.status();
    expect(status.ready).to.equal(true);
    expect(status.providers[0]).to.include({ name: 'google-iam', identity: TARGET_SA });
    expectNoSecrets(lines, [token]);
  });

  it('uses a gcloud user login as source credentials', async () => {
    const { injector, lines } = await iam(world.userEnv());
    const headers = await injector.headers();
    expect(world.iam.calls[0]!.caller).to.equal(USER.email);
    expect(verifyJwt(bearer(headers), { keys: world.issuer.keys, audience: CLIENT_ID }).ok).to.equal(true);
    expectNoSecrets(lines, [bearer(headers), USER.refreshToken, USER.clientSecret]);
  });

  it('uses a service-account key (GOOGLE_APPLICATION_CREDENTIALS) as source credentials', async () => {
    const { provider } = direct(world.keyEnv());
    await provider.start();
    expect(world.iam.calls[0]!.caller).to.equal(KEY_SA);
    expect(await provider.credentialsInfo()).to.deep.include({ kind: 'service_account', identity: KEY_SA });
  });

  it('sends delegates as a delegation chain', async () => {
    const DELEGATE = 'hop-account@my-project.iam.gserviceaccount.com';
    world.iam.serviceAccounts[DELEGATE] = [world.metadata.email];
    world.iam.serviceAccounts[TARGET_SA] = [DELEGATE];
    const { injector } = await iam(world.metadataEnv(), { ...PARAMS, delegates: [DELEGATE] });
    await injector.start();
    expect(world.iam.calls[0]!.body).to.deep.equal({ audience: CLIENT_ID, includeEmail: true, delegates: [`projects/-/serviceAccounts/${DELEGATE}`] });
  });

  it('explains a missing Token Creator role', async () => {
    world.iam.serviceAccounts[TARGET_SA] = [];
    const { injector, lines } = await iam(world.metadataEnv());
    const err = (await injector.start().catch((e: unknown) => e)) as CredentialsError;
    expect(err).to.be.instanceOf(CredentialsError);
    expect(err.message).to.include(`google-iam: ${world.metadata.email} may not mint ID tokens for ${TARGET_SA}`);
    expect(err.message).to.include('PERMISSION_DENIED');
    expect(err.hint).to.include('roles/iam.serviceAccountTokenCreator');
    expect(err.hint).to.include(`--member=serviceAccount:${world.metadata.email}`);
    expect(injector.status().ready).to.equal(false);
    expectNoSecrets(lines, []);
  });

  it('says when the service account does not exist', async () => {
    const missing = 'nobody@my-project.iam.gserviceaccount.com';
    const { injector } = await iam(world.metadataEnv(), { ...PARAMS, service_account: missing });
    const err = (await injector.start().catch((e: unknown) => e)) as CredentialsError;
    expect(err.message).to.include(`service account ${missing} does not exist`);
    expect(err.hint).to.include('auth.params.service_account');
  });

  it('explains how to set up credentials when there are none', async () => {
    const { injector } = await iam(world.noCredentialsEnv());
    const err = (await injector.start().catch((e: unknown) => e)) as CredentialsError;
    expect(err.message).to.include('no Google credentials found');
    expect(err.hint).to.include('gcloud auth application-default login');
    expect(err.hint).to.include('Workload Identity');
  });

  it('explains a Google error that is not JSON and a wrong-audience token', async () => {
    const { provider } = direct(world.metadataEnv());
    world.iam.failure = 'garbage';
    expect(((await provider.start().catch((e: unknown) => e)) as Error).message).to.include('IAM Credentials answered without a token');
    world.iam.failure = 'wrong-audience';
    await sleep(250);
    const err = (await provider.token().catch((e: unknown) => e)) as Error;
    expect(err.message).to.include(`instead of "${CLIENT_ID}"`);
  });

  it('fetches a new source access token once when IAM rejects the held one', async () => {
    const { provider } = direct(world.metadataEnv());
    await provider.start();
    world.accessTokens.revokeAll();
    await provider.freshToken();
    expect(world.metadata.counts['token']).to.equal(2);
    expect(world.iam.counts['generateIdToken']).to.equal(3);
  });

  it('keeps serving the held token while IAM Credentials is down', async () => {
    const { provider } = direct(world.metadataEnv());
    await provider.start();
    const before = provider.requestHeaders();
    world.iam.failure = 'down';
    await provider.freshToken().catch(() => {});
    world.iam.failure = 'error500';
    await sleep(100);
    await provider.freshToken().catch(() => {});
    const after = provider.requestHeaders();
    expect(after).to.not.be.instanceOf(Promise);
    expect(after).to.equal(before);
    expect(provider.status()).to.include({ ready: true });
    expect(provider.status().lastError).to.include('IAM Credentials answered 500');
  });

  it('answers CredentialsError once the token expired with IAM down, and recovers when it returns', async () => {
    world.iam.lifetimeSeconds = 2;
    const { provider, lines } = direct(world.metadataEnv());
    await provider.start();
    world.iam.failure = 'down';
    await sleep(2_100);
    const err = (await Promise.resolve()
      .then(() => provider.requestHeaders())
      .catch((e: unknown) => e)) as CredentialsError;
    expect(err).to.be.instanceOf(CredentialsError);
    expect(err.message).to.match(/^google-iam: cannot reach IAM Credentials/);
    expect(err.retryAfterSeconds).to.be.at.least(1);
    world.iam.failure = undefined;
    await sleep(400);
    const headers = await provider.requestHeaders();
    expect(verifyJwt(bearer(headers), { keys: world.issuer.keys, audience: CLIENT_ID }).ok).to.equal(true);
    expectNoSecrets(lines, [bearer(headers)]);
  });

  it('refreshes on invalidate only for the header still held, sharing one fetch', async () => {
    const { injector } = await iam(world.metadataEnv());
    const first = (await injector.headers()) as HeaderMap;
    await Promise.all([injector.invalidate(first), injector.invalidate(first), injector.invalidate({ authorization: first['Authorization']! })]);
    expect(world.iam.counts['generateIdToken']).to.equal(2);
    const second = injector.headers() as HeaderMap;
    expect(second['Authorization']).to.not.equal(first['Authorization']);
    await injector.invalidate(first);
    expect(world.iam.counts['generateIdToken']).to.equal(2);
  });

  it('reports every parameter problem with its full path', () => {
    const { config } = configFor(world, { provider: 'google-iam', params: { service_account: 'x', delegates: ['y@example.com'] } });
    const { problems } = planProviders(config, {});
    expect(problems).to.deep.include({
      path: 'auth.params.client_id',
      message: 'required for google-iam: the OAuth client id of the IAP-protected app (the token\'s audience), e.g. 1234-abc.apps.googleusercontent.com',
    });
    expect(problems).to.deep.include({ path: 'auth.params.service_account', message: '"x" is not a service-account email (name@project.iam.gserviceaccount.com)' });
    expect(problems).to.deep.include({ path: 'auth.params.delegates[0]', message: '"y@example.com" is not a service-account email' });
  });

  it('reports a missing service_account when google-iam is chosen explicitly', () => {
    const { config } = configFor(world, { provider: 'google-iam', params: { client_id: CLIENT_ID } });
    const { problems } = planProviders(config, {});
    expect(problems.map((p: { path: string }) => p.path)).to.deep.equal(['auth.params.service_account']);
    expect(problems[0]!.message).to.match(/^required for google-iam/);
  });

  it('validates the params of listed providers under their own path', () => {
    const { config } = configFor(world, { providers: [{ type: 'static', params: { token: 't' } }, { type: 'google-iam', params: { client_id: 'a b' } }] });
    const { problems } = planProviders(config, {});
    const paths = problems.map((p: { path: string }) => p.path);
    expect(paths).to.include('auth.providers[1].params.client_id');
    expect(paths).to.include('auth.providers[1].params.service_account');
    const plan: ProviderPlan | undefined = planProviders(config, {}).plans[1];
    expect(plan?.type).to.equal('google-iam');
  });
});
