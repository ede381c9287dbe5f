import { writeFileSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import { expect } from 'chai';
import YAML from 'yaml';
import { main } from '../../src/cli/kvx-proxy.js';
import { GoogleUserProvider, desktopClientOf } from '../../src/auth/google-user.js';
import { Egress } from '../../src/config/egress.js';
import { login } from '../../src/auth/google/desktop-login.js';
import { LoginStore } from '../../src/auth/google/login-store.js';
import { planProviders } from '../../src/auth/registry.js';
import { CredentialsError } from '../../src/errors.js';
import { loadConfig } from '../../src/config/load.js';
import { startFakeMlflow } from '../fakes/mlflow/index.js';
import type { FakeMlflow } from '../fakes/mlflow/index.js';
import { iapGate } from '../fakes/iap-gate.js';
import { verifyJwt } from '../fakes/jwt.js';
import { CLIENT_ID, capturingLogger, startGoogleWorld } from '../fakes/google-world.js';
import type { GoogleWorld } from '../fakes/google-world.js';
import { startTestProxy } from '../helpers/proxy.js';
import type { TestProxy } from '../helpers/proxy.js';
import { request } from '../helpers/http.js';
import { contextFor, sleep } from './google-helpers.js';

class Sink extends Writable {
  text = '';
  override _write(chunk: Buffer, _enc: string, done: () => void): void {
    this.text += chunk.toString();
    done();
  }
}

const DESKTOP = { clientId: '123456789012-desktop.apps.googleusercontent.com', clientSecret: 'GOCSPX-desktop-client-secret' };

/** What a browser does with the authorization URL: Google's page consents at once and redirects to the loopback listener. */
async function followAsBrowser(url: string): Promise<{ status: number; body: string }> {
  const consent = await fetch(url, { redirect: 'manual' });
  const location = consent.headers.get('location');
  if (consent.status !== 302 || location === null) return { status: consent.status, body: await consent.text() };
  expect(new URL(location).hostname).to.equal('127.0.0.1');
  const landed = await fetch(location);
  return { status: landed.status, body: await landed.text() };
}

describe('google-user provider and kvx-proxy login / logout', () => {
  let world: GoogleWorld;
  let mlflow: FakeMlflow | undefined;
  let proxy: TestProxy | undefined;
  let env: NodeJS.ProcessEnv;
  let secretFile: string;
  const closers: (() => unknown)[] = [];

  beforeEach(async () => {
    world = await startGoogleWorld({ lifetimeSeconds: 3600 });
    world.oauth.addDesktopClient(DESKTOP);
    world.oauth.consentAs = 'alice@example.com';
    secretFile = path.join(world.dir, 'desktop-secret.txt');
    writeFileSync(secretFile, `${DESKTOP.clientSecret}\n`, { mode: 0o600 });
    env = { HOME: world.home, XDG_CONFIG_HOME: path.join(world.dir, 'xdg'), PATH: process.env['PATH'] ?? '' };
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

  function params(extra: Record<string, unknown> = {}): Record<string, unknown> {
    return { oauth_client_id: DESKTOP.clientId, oauth_client_secret_file: secretFile, client_id: CLIENT_ID, login_store: 'file', ...extra };
  }
  const endpoints = () => ({ oauthToken: world.oauth.tokenUrl, oauthAuthorize: world.oauth.authorizeUrl, oauthRevoke: world.oauth.revokeUrl, iamCredentials: world.iam.url });

  function configFile(p: Record<string, unknown> = params(), extra: Record<string, unknown> = {}): string {
    const file = path.join(world.dir, `kvx-${Math.random().toString(36).slice(2)}.yml`);
    writeFileSync(file, YAML.stringify({ auth: { provider: 'google-user', params: p, endpoints: endpoints() }, ...extra }));
    return file;
  }

  async function run(argv: string[], during?: (stderr: Sink) => Promise<void>) {
    const stdout = new Sink();
    const stderr = new Sink();
    const running = main(argv, { stdout, stderr, env });
    if (during) await during(stderr);
    const code = await running;
    return { code, out: stdout.text, err: stderr.text };
  }

  /** Waits for the URL `login --no-browser` prints, then plays the browser. */
  async function browse(stderr: Sink): Promise<{ status: number; body: string }> {
    for (let i = 0; i < 200 && !/https?:\/\/\S+\/o\/oauth2\/v2\/auth\?\S+/.test(stderr.text); i++) await sleep(10);
    const url = /(https?:\/\/\S+\/o\/oauth2\/v2\/auth\?\S+)/.exec(stderr.text)![1]!;
    return followAsBrowser(url);
  }

  function proxySettings(p: Record<string, unknown> = params()): Record<string, unknown> {
    const out: Record<string, unknown> = { 'auth.provider': 'google-user' };
    for (const [k, v] of Object.entries(endpoints())) out[`auth.endpoints.${k}`] = v;
    for (const [k, v] of Object.entries(p)) out[`auth.params.${k}`] = v;
    return out;
  }

  function storedRefreshToken(): string {
    const store = new LoginStore({ clientId: DESKTOP.clientId, env, kind: 'file' });
    return (JSON.parse(readFileSync(store.file, 'utf8')) as { refresh_token: string }).refresh_token;
  }

  it('login follows the authorization URL as a browser would, stores the refresh token 0600, and the proxy then passes an IAP gate', async () => {
    let page: { status: number; body: string } | undefined;
    const result = await run(['login', '--no-browser', '-c', configFile()], async (stderr) => {
      page = await browse(stderr);
    });
    expect(result.code, result.err).to.equal(0);
    expect(page).to.deep.include({ status: 200 });
    expect(page!.body).to.include('Signed in');
    expect(result.err).to.include('Logged in as alice@example.com');

    // The authorization request Google saw: offline access, openid email, PKCE S256, a state, a loopback redirect.
    const asked = world.oauth.authorizations[0]!.params;
    expect(asked).to.include({ client_id: DESKTOP.clientId, response_type: 'code', access_type: 'offline', prompt: 'consent', scope: 'openid email', code_challenge_method: 'S256' });
    expect(asked['state']).to.match(/^[\w-]{40,}$/);
    expect(asked['code_challenge']).to.match(/^[\w-]{43}$/);
    expect(asked['redirect_uri']).to.match(/^http:\/\/127\.0\.0\.1:\d+\/oauth2callback$/);
    expect(world.oauth.counts['code']).to.equal(1);

    const store = new LoginStore({ clientId: DESKTOP.clientId, env, kind: 'file' });
    expect(statSync(store.file).mode & 0o777).to.equal(0o600);
    const refreshToken = storedRefreshToken();
    expect(refreshToken).to.match(/^1\/\//);

    const gate = iapGate({ issuer: world.issuer, audience: CLIENT_ID });
    mlflow = await startFakeMlflow({ gate });
    proxy = await startTestProxy(mlflow.url, proxySettings(), env);
    for (let i = 0; i < 5; i++) {
      const res = await request(`${proxy.url}/api/2.0/mlflow/experiments/search?max_results=1`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } });
      expect(res.status).to.equal(200);
    }
    expect(gate.identities).to.deep.equal(Array(5).fill('alice@example.com'));
    // The IAP model: ID tokens for IAP's client id, asked for with `audience`, one refresh for all requests.
    expect(world.oauth.refreshAudiences).to.deep.equal([CLIENT_ID]);

    const printed = await run(['print-token', '--token-only', '-c', configFile()]);
    expect(printed.code).to.equal(0);
    expect(verifyJwt(printed.out.trim(), { keys: world.issuer.keys, audience: CLIENT_ID }).ok).to.equal(true);

    const secrets = [refreshToken, DESKTOP.clientSecret, ...gate.tokens];
    for (const text of [result.err, printed.err, proxy.logs.text()]) for (const s of secrets) expect(text).to.not.include(s);
    expect(printed.out).to.not.include(refreshToken);
  });

  it('opens the browser with the opener when there is one, and sends no audience when client_id is unset (desktop client allowlisted in IAP)', async () => {
    const { config, baseDir } = loadConfig({ files: [configFile(params({ client_id: undefined }))], env, require: { upstream: false } });
    const plan = planProviders(config, env).plans[0]!;
    const client = desktopClientOf(plan, { config, env, baseDir, logger: capturingLogger().logger, egress: Egress.none });
    closers.push(() => client.close());
    const said: string[] = [];
    const opened: string[] = [];
    const result = await login(client, {
      noBrowser: false,
      timeoutMs: 10_000,
      say: (line) => said.push(line),
      open: async (url) => {
        opened.push(url);
        void followAsBrowser(url);
        return true;
      },
    });
    expect(opened).to.have.length(1);
    expect(said.join('\n')).to.include('Your browser has been opened');
    expect(result.email).to.equal('alice@example.com');

    const gate = iapGate({ issuer: world.issuer, audience: DESKTOP.clientId });
    mlflow = await startFakeMlflow({ gate });
    const p = params();
    delete p['client_id'];
    proxy = await startTestProxy(mlflow.url, proxySettings(p), env);
    const res = await request(`${proxy.url}/api/2.0/mlflow/experiments/search?max_results=1`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } });
    expect(res.status).to.equal(200);
    expect(world.oauth.refreshAudiences).to.deep.equal(['']);
  });

  it('falls back to printing the URL when no browser opener can be started', async () => {
    // No PATH: xdg-open (or open) cannot be found, as on a server without a desktop.
    env['PATH'] = '';
    const result = await run(['login', '-c', configFile()], async (stderr) => void (await browse(stderr)));
    expect(result.code, result.err).to.equal(0);
    expect(result.err).to.include('Sign in with Google by opening this URL in a browser on this machine');
    expect(result.err).to.match(/ssh -L \d+:127\.0\.0\.1:\d+/);
  });

  it('logout revokes the refresh token at Google and deletes it; a second logout finds none', async () => {
    await run(['login', '--no-browser', '-c', configFile()], async (stderr) => void (await browse(stderr)));
    const refreshToken = storedRefreshToken();
    const out = await run(['logout', '-c', configFile()]);
    expect(out.code, out.err).to.equal(0);
    expect(out.err).to.include('Revoked the login of alice@example.com');
    expect(world.oauth.revoked).to.deep.equal([refreshToken]);
    expect(out.err).to.not.include(refreshToken);
    const again = await run(['logout', '-c', configFile()]);
    expect(again.code).to.equal(0);
    expect(again.err).to.include('No kvx-proxy login is stored');
    const doctor = await run(['doctor', '-c', configFile()]);
    expect(doctor.code).to.equal(1);
    expect(doctor.out).to.match(/\[FAIL\] credentials: no kvx-proxy login is stored for OAuth client/);
    expect(doctor.out).to.include('run `kvx-proxy login`');
  });

  it('login refuses a config without a google-user provider, and Google refusing the client', async () => {
    const none = path.join(world.dir, 'none.yml');
    writeFileSync(none, YAML.stringify({ auth: { params: { client_id: CLIENT_ID } } }));
    const wrong = await run(['login', '--no-browser', '-c', none]);
    expect(wrong.code).to.equal(2);
    expect(wrong.err).to.include('login is for the google-user provider');
    const missing = await run(['login', '--no-browser', '-c', configFile({ client_id: CLIENT_ID })]);
    expect(missing.code).to.equal(2);
    expect(missing.err).to.include('auth.params.oauth_client_id: required for google-user');

    let page: { status: number; body: string } | undefined;
    const stranger = await run(['login', '--no-browser', '--login-timeout', '1', '-c', configFile(params({ oauth_client_id: 'unknown.apps.googleusercontent.com' }))], async (stderr) => {
      page = await browse(stderr);
    });
    expect(page!.status).to.equal(401);
    expect(stranger.code).to.equal(1);
    expect(stranger.err).to.include('no answer from the browser within 1 s');
  });

  describe('the provider', () => {
    async function provider(p = params()) {
      const { logger, lines } = capturingLogger();
      const { config } = loadConfig({ files: [configFile(p)], env, require: { upstream: false } });
      const plan = planProviders(config, env).plans[0]!;
      const made = new GoogleUserProvider(plan, contextFor(config, env, logger), { backoffInitialMs: 50, backoffMaxMs: 200 });
      closers.push(() => made.close());
      return { provider: made, lines };
    }
    function storeLogin(refreshToken: string, email = 'alice@example.com') {
      world.oauth.addUser({ email, clientId: DESKTOP.clientId, clientSecret: DESKTOP.clientSecret, refreshToken, scope: 'openid email' });
      return new LoginStore({ clientId: DESKTOP.clientId, env, kind: 'file' }).write({ refreshToken, clientId: DESKTOP.clientId, email, savedAt: Date.now() });
    }

    it('says to run login when none is stored', async () => {
      const { provider: p } = await provider();
      const err = (await p.start().catch((e: unknown) => e)) as CredentialsError;
      expect(err).to.be.instanceOf(CredentialsError);
      expect(err.message).to.include('no kvx-proxy login is stored');
      expect(err.hint).to.include('kvx-proxy login');
    });

    it('turns invalid_rapt into "run `kvx-proxy login` again", does not ask Google again with the refused token, and picks up a new login without a restart', async () => {
      await storeLogin('1//first-refresh-token');
      const { provider: p, lines } = await provider();
      await p.start();
      world.oauth.requireReauth('1//first-refresh-token');
      const err = (await p.freshToken().catch((e: unknown) => e)) as CredentialsError;
      expect(err.message).to.include('invalid_rapt');
      expect(err.message).to.include('run `kvx-proxy login` again');
      expect(err.message).to.include('sign in again');
      const refreshes = world.oauth.counts['refresh'];
      // Requests keep asking (each one reads the store); Google is not asked again, and no timer retries on its own.
      for (let i = 0; i < 4; i++) {
        await sleep(60);
        expect(((await p.freshToken().catch((e: unknown) => e)) as Error).message).to.include('run `kvx-proxy login` again');
      }
      await sleep(300);
      expect(world.oauth.counts['refresh']).to.equal(refreshes);
      expect(lines.filter((l) => l.includes('"level":"warn"') && l.includes('invalid_rapt'))).to.have.length(1);

      // Another `kvx-proxy login` writes the store: the next refresh uses it.
      await storeLogin('1//second-refresh-token', 'alice@example.com');
      await sleep(60);
      const token = await p.freshToken();
      expect(token.identity).to.equal('alice@example.com');
      expect(world.oauth.counts['refresh']).to.equal(refreshes! + 1);
      for (const line of lines) for (const s of ['1//first-refresh-token', '1//second-refresh-token', DESKTOP.clientSecret, token.value]) expect(line).to.not.include(s);
    });

    it('turns a revoked token (invalid_grant) into the relogin error too', async () => {
      await storeLogin('1//revoked-refresh-token');
      world.oauth.revokeUser('1//revoked-refresh-token');
      const { provider: p } = await provider();
      const err = (await p.start().catch((e: unknown) => e)) as CredentialsError;
      expect(err.message).to.include('Google no longer accepts the kvx-proxy login of alice@example.com');
      expect(err.message).to.include('invalid_grant');
      expect(err.hint).to.include('picks the new login up without a restart');
    });

    it('doctor names the login in use, where it is kept, the token\'s expiry, and what to do', async () => {
      await storeLogin('1//doctor-refresh-token');
      const out = await run(['doctor', '-c', configFile()]);
      expect(out.out).to.match(/\[OK {2}\] credentials: kvx-proxy login of alice@example.com on \S+ with OAuth client 123456789012-desktop/);
      expect(out.out).to.include('google-user/123456789012-desktop.apps.googleusercontent.com.json');
      expect(out.out).to.include('kvx-proxy login` again');
      expect(out.out).to.match(/\[OK {2}\] token \(google-user\): minted: audience 123456789012-iapclient\.apps\.googleusercontent\.com; email alice@example.com; .*expires/);
      expect(out.out).to.not.include('1//doctor-refresh-token');
    });
  });
});
