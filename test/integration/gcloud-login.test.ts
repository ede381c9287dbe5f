import path from 'node:path';
import { Writable } from 'node:stream';
import { renameSync, writeFileSync } from 'node:fs';
import { expect } from 'chai';
import YAML from 'yaml';
import { main } from '../../src/cli/kvx-proxy.js';
import { GoogleIamProvider } from '../../src/auth/google-iam.js';
import { GoogleOauthProvider } from '../../src/auth/google-oauth.js';
import { planProviders } from '../../src/auth/registry.js';
import type { CredentialsError } from '../../src/errors.js';
import { authorizedUserFile, writeCredentialsFile } from '../fakes/google-oauth-token.js';
import { cloudRunGate } from '../fakes/cloud-run-gate.js';
import { iapGate } from '../fakes/iap-gate.js';
import { startFakeMlflow } from '../fakes/mlflow/index.js';
import type { FakeMlflow } from '../fakes/mlflow/index.js';
import { CLIENT_ID, TARGET_SA, USER, capturingLogger, startGoogleWorld } from '../fakes/google-world.js';
import type { GoogleWorld } from '../fakes/google-world.js';
import { startTestProxy } from '../helpers/proxy.js';
import type { TestProxy } from '../helpers/proxy.js';
import { request } from '../helpers/http.js';
import { configFor, contextFor, expectNoSecrets, sleep } from './google-helpers.js';

class Sink extends Writable {
  text = '';
  override _write(chunk: Buffer, _enc: string, done: () => void): void {
    this.text += chunk.toString();
    done();
  }
}

const SERVICE_URL = 'https://mlflow-abc123-uc.a.run.app';

/** A gcloud application-default login on a laptop: rewritten by a new login while kvx runs; Cloud Run IAM without IAP. */
describe('gcloud user login (authorized_user ADC)', () => {
  let world: GoogleWorld;
  let mlflow: FakeMlflow | undefined;
  let proxy: TestProxy | undefined;
  const closers: (() => unknown)[] = [];
  beforeEach(async () => {
    world = await startGoogleWorld();
  });
  afterEach(async () => {
    for (const close of closers.splice(0)) await close();
    await proxy?.close(1000);
    proxy = undefined;
    await mlflow?.close();
    mlflow = undefined;
    await world.close();
    process.exitCode = undefined;
  });

  function direct<T>(make: (plan: ReturnType<typeof planProviders>['plans'][number], context: ReturnType<typeof contextFor>) => T & { close(): void }, params: Record<string, unknown>) {
    const { logger, lines } = capturingLogger();
    const env = world.userEnv();
    const { config } = configFor(world, { params });
    const plan = planProviders(config, env).plans[0]!;
    const provider = make(plan, contextFor(config, env, logger));
    closers.push(() => provider.close());
    return { provider, lines };
  }

  /** What `gcloud auth application-default login` does: a new refresh token written over the ADC file. */
  function relogin(refreshToken: string): void {
    const login = { ...USER, refreshToken };
    world.oauth.addUser(login);
    // gcloud replaces the file as a whole.
    writeCredentialsFile(`${world.userFile}.new`, authorizedUserFile(login));
    renameSync(`${world.userFile}.new`, world.userFile);
  }

  it('google-iam picks up a new gcloud application-default login without a restart', async () => {
    const { provider, lines } = direct((plan, context) => new GoogleIamProvider(plan, context, { backoffInitialMs: 50, backoffMaxMs: 200 }), { client_id: CLIENT_ID, service_account: TARGET_SA });
    await provider.start();
    // The login is revoked (password change, `gcloud auth application-default revoke`): the access token too.
    world.oauth.revokeUser(USER.refreshToken);
    world.accessTokens.revokeAll();
    let err: CredentialsError | undefined;
    for (let i = 0; i < 10 && !/invalid_grant/.test(err?.message ?? ''); i++) {
      await sleep(60);
      err = (await provider.freshToken().catch((e: unknown) => e)) as CredentialsError;
    }
    expect(err!.message).to.include('invalid_grant');
    relogin('1//user-refresh-token-after-relogin');
    await sleep(60);
    const token = await provider.freshToken();
    expect(token.identity).to.equal(TARGET_SA);
    expect(err!.message).to.include('Google no longer accepts the gcloud user login');
    expect(err!.message).to.include('run `gcloud auth application-default login` again');
    expect(lines.some((l) => l.includes('Google credentials file changed; reading it again'))).to.equal(true);
    expectNoSecrets(lines, [USER.refreshToken, '1//user-refresh-token-after-relogin', token.value]);
  });

  it('google-oauth sends the login\'s own ID token to Cloud Run IAM, and picks up a new login without a restart', async () => {
    const gate = cloudRunGate({ issuer: world.issuer, serviceUrl: SERVICE_URL, invokers: [USER.email] });
    mlflow = await startFakeMlflow({ gate });
    proxy = await startTestProxy(mlflow.url, { 'auth.endpoints.oauthToken': world.endpoints.oauthToken, 'auth.params.client_id': SERVICE_URL }, world.userEnv());
    const search = () => request(`${proxy!.url}/api/2.0/mlflow/experiments/search?max_results=1`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } });
    expect((await search()).status).to.equal(200);
    expect(gate.identities).to.deep.equal([USER.email]);
    // The audience is the gcloud login's OAuth client, as `gcloud run services proxy` sends it.
    expect(gate.audiences).to.deep.equal([USER.clientId]);

    const { provider } = direct((plan, context) => new GoogleOauthProvider(plan, context, { backoffInitialMs: 50, backoffMaxMs: 200 }), { client_id: SERVICE_URL });
    await provider.start();
    world.oauth.revokeUser(USER.refreshToken);
    const err = (await provider.freshToken().catch((e: unknown) => e)) as CredentialsError;
    expect(err.message).to.include('run `gcloud auth application-default login` again');
    const refreshes = world.oauth.counts['refresh'];
    await sleep(60);
    await provider.freshToken().catch(() => {});
    // The refused refresh token is not sent again while the file is unchanged.
    expect(world.oauth.counts['refresh']).to.equal(refreshes);
    relogin('1//user-refresh-token-2');
    await sleep(60);
    expect((await provider.freshToken()).identity).to.equal(USER.email);
    expectNoSecrets(proxy.logs.lines, [USER.refreshToken, USER.clientSecret]);
  });

  it('refuses IAP with a gcloud login and says to use `kvx-proxy login` or impersonation, in the error and in doctor', async () => {
    const { provider } = direct((plan, context) => new GoogleOauthProvider(plan, context), { client_id: CLIENT_ID });
    const err = (await provider.start().catch((e: unknown) => e)) as CredentialsError;
    expect(err.message).to.include('cannot mint ID tokens for audience');
    expect(err.hint).to.include('`kvx-proxy login`').and.include('impersonation');

    mlflow = await startFakeMlflow({ gate: iapGate({ issuer: world.issuer, audience: CLIENT_ID }) });
    const doctor = async (clientId: string) => {
      const file = path.join(world.dir, `kvx-${clientId.length}.yml`);
      writeFileSync(file, YAML.stringify({ upstream: { url: mlflow!.url }, auth: { params: { client_id: clientId }, endpoints: { oauthToken: world.endpoints.oauthToken } } }));
      const stdout = new Sink();
      const code = await main(['doctor', '-c', file], { stdout, stderr: new Sink(), env: world.userEnv() });
      return { code, out: stdout.text };
    };
    const iap = await doctor(CLIENT_ID);
    expect(iap.code).to.equal(1);
    expect(iap.out).to.match(/\[FAIL\] token \(google-oauth\)/);
    expect(iap.out).to.include('likely cause: IAP accepts only ID tokens for its own OAuth client');
    // A Cloud Run URL as audience, but the upstream is IAP after all: doctor says what IAP needs.
    const cloudRunConfigured = await doctor(SERVICE_URL);
    expect(cloudRunConfigured.code).to.equal(1);
    expect(cloudRunConfigured.out).to.match(/\[OK {2}\] token \(google-oauth\): minted: audience 764086051850-gcloud/);
    expect(cloudRunConfigured.out).to.include("the gcloud user login's own ID token");
    expect(cloudRunConfigured.out).to.include('IAP answered: a gcloud user login cannot get through IAP');
    expect(cloudRunConfigured.out).to.include('`kvx-proxy login`');
  });
});
