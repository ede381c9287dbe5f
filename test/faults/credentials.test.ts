/**
 * Google credential faults against a real kvx-proxy process: token endpoints refusing, timing out, failing,
 * answering garbage, expired tokens or tokens for another audience; a metadata server impostor; clock jumps.
 */
import { expect } from 'chai';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { mlflowError, request } from './support/client.js';
import { FAST_ENV, Harness } from './support/harness.js';
import { pollUntil, spawnProxy } from './support/proxy-process.js';
import { iapGate } from '../fakes/iap-gate.js';
import type { IapGate } from '../fakes/iap-gate.js';
import { CLIENT_ID, startCredWorld } from './support/google.js';
import type { CredWorld } from './support/google.js';
import { makeSecret, registerSecret } from './support/transcript.js';

/** Short lifetimes need a short refresh lead and no jitter, or every token would be "due" at once. */
const TOKEN_ENV = {
  KVX_AUTH_REFRESH_BEFORE_EXPIRY_SEC: '1',
  KVX_AUTH_REFRESH_JITTER_SEC: '0',
  KVX_AUTH_TOKEN_FETCH_TIMEOUT_MS: '500',
  KVX_AUTH_STARTUP_TIMEOUT_MS: '4000',
};

type Failure = 'down' | 'error500' | 'garbage' | 'expired' | 'wrong-audience' | 'slow';

const EXPECTED: Record<Failure, RegExp> = {
  down: /cannot reach IAM Credentials/,
  slow: /timed out after 500 ms/,
  error500: /IAM Credentials answered 500 INTERNAL/,
  garbage: /answered without a token/,
  expired: /already expired on arrival/,
  'wrong-audience': /returned a token for audience "some-other-audience" instead of/,
};

describe('faults: Google credentials', function () {
  this.timeout(60_000);
  let world: CredWorld;
  const cleanups: (() => Promise<unknown>)[] = [];

  before(async () => {
    world = await startCredWorld(3600);
  });
  after(async () => {
    await world?.close();
  });
  afterEach(async () => {
    world.iam.failure = undefined;
    world.issuer.offsetSeconds = 0;
    world.iam.lifetimeSeconds = 3600;
    while (cleanups.length) await cleanups.pop()!().catch(() => {});
  });

  async function startFailing(failure: Failure | undefined, env: Record<string, string> = {}): Promise<{ code: number | null; stderr: string; started: boolean }> {
    world.iam.failure = failure;
    world.iam.slowMs = 10_000;
    const { env: googleEnv, authArgs } = world.iamSetup();
    try {
      const proxy = await spawnProxy({
        label: `faults-cred-start-${failure}`,
        args: ['--upstream', 'http://127.0.0.1:9', ...authArgs, '--port', '0', '--admin-port', '0'],
        env: { ...FAST_ENV, ...TOKEN_ENV, ...googleEnv, ...env },
      });
      await proxy.stop();
      return { code: 0, stderr: proxy.stderr, started: true };
    } catch (err) {
      const text = (err as Error).message;
      return { code: Number(/"code":(\d+)/.exec(text)?.[1] ?? NaN), stderr: text.split('stderr:\n')[1] ?? '', started: false };
    }
  }

  for (const failure of Object.keys(EXPECTED) as Failure[]) {
    it(`token endpoint ${failure} at start: exit 1 with the provider and the cause, never listening`, async () => {
      const result = await startFailing(failure);
      expect(result.started, 'a proxy without credentials must not start (auth.requireTokenAtStart)').to.equal(false);
      expect(result.code).to.equal(1);
      expect(result.stderr).to.match(/^kvx-proxy: google-iam: /);
      expect(result.stderr).to.match(EXPECTED[failure]);
    });
  }

  it('metadata server answering without Metadata-Flavor: not trusted, exit 1 saying so', async () => {
    const impostor = http.createServer((_req, res) => res.end('{"access_token":"from-an-impostor-1234567890","expires_in":3600}'));
    await new Promise<void>((r) => impostor.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise((r) => impostor.close(r)));
    const { env, authArgs } = world.metadataSetup(`127.0.0.1:${(impostor.address() as AddressInfo).port}`);
    const failed = await spawnProxy({
      label: 'faults-cred-no-flavor',
      args: ['--upstream', 'http://127.0.0.1:9', ...authArgs, '--port', '0', '--admin-port', '0'],
      env: { ...FAST_ENV, ...TOKEN_ENV, ...env },
    }).then(
      async (p) => {
        await p.stop();
        return '';
      },
      (err: Error) => err.message,
    );
    expect(failed).to.include('"code":1');
    expect(failed).to.include('answered without Metadata-Flavor: Google, so it is not a metadata server');
  });

  for (const kind of ['an ID token', 'an access token'] as const) {
    it(`a token endpoint answering garbage that holds ${kind} under another name: exit 1, the credential not echoed`, async () => {
      // A plausible garbage answer: a credential under a field name the provider does not expect.
      const stray =
        kind === 'an ID token'
          ? world.issuer.idToken({ audience: CLIENT_ID, email: 'stray@faults-project.iam.gserviceaccount.com', lifetimeSeconds: 3600 })
          : makeSecret('stray-access-token').replace('kvxS3cret', 'ya29.a0Af');
      registerSecret('stray credential', stray);
      const garbage = http.createServer((req, res) => {
        req.resume();
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(kind === 'an ID token' ? { idToken: stray } : { accessToken: stray, expireTime: '2099-01-01T00:00:00Z' }));
      });
      await new Promise<void>((r) => garbage.listen(0, '127.0.0.1', r));
      cleanups.push(() => new Promise((r) => garbage.close(r)));
      const result = await startFailing(undefined, { KVX_AUTH_ENDPOINTS_IAM_CREDENTIALS: `http://127.0.0.1:${(garbage.address() as AddressInfo).port}` });
      expect(result.started).to.equal(false);
      expect(result.stderr).to.match(/answered without a token/);
      const signature = stray.split('.').at(-1)!;
      expect(result.stderr, 'the credential was echoed in the error').to.not.include(signature);
    });
  }

  it('proxy clock 2 h ahead of Google at start: exit 1, the hint names the clock', async () => {
    world.issuer.offsetSeconds = -7200;
    const result = await startFailing(undefined);
    expect(result.started).to.equal(false);
    expect(result.stderr).to.include('already expired on arrival');
    expect(result.stderr).to.match(/clock.*NTP/);
  });

  describe('an upstream rejecting every token, a hung token endpoint', () => {
    let h: Harness | undefined;
    afterEach(async () => {
      world.iam.releaseHung();
      await h?.stop();
      h = undefined;
    });

    const warnings = (from: number) => h!.proxy.logs.slice(from).filter((l) => l.level === 'warn');
    /** The proxy batches its log lines: once the request line of `id` is in, every line before it is too. */
    const logged = (id: string) => h!.proxy.waitForLog((l) => l.msg === 'request' && l['id'] === id, 5000);

    it('an IAP expecting another audience: one refresh and one replay, then no more replays and token fetches backed off; one warning naming auth.params.client_id; /readyz and /metrics say so; counts truthful; recovers', async () => {
      world.iam.lifetimeSeconds = 3600;
      const right = iapGate({ issuer: world.issuer, audience: CLIENT_ID });
      // The IAP's OAuth client is another one than the proxy mints tokens for (auth.params.client_id).
      const wrong = iapGate({ issuer: world.issuer, audience: '135792468024-otheriap.apps.googleusercontent.com' });
      let gate: IapGate = right;
      const { env, authArgs } = world.iamSetup();
      h = await Harness.start({
        label: 'faults-cred-rejecting',
        authArgs,
        env: { ...TOKEN_ENV, ...env },
        gate: (req) => gate(req),
        backgroundPorts: [world.iam.port, world.metadata.port],
      });
      const replays = async () => ({
        success: await h!.metric('kvx_auth_replays_total', { result: 'success' }),
        rejectedAgain: await h!.metric('kvx_auth_replays_total', { result: 'rejected_again' }),
        refreshFailed: await h!.metric('kvx_auth_replays_total', { result: 'refresh_failed' }),
      });
      const before = await replays();
      const fetchesBefore = world.iam.counts['generateIdToken'] ?? 0;
      const logFrom = h.proxy.logs.length;
      gate = wrong;

      const N = 60;
      for (let i = 0; i < N; i++) {
        const id = `rejecting-${i}`;
        const a =
          i % 2 === 0
            ? await request(h.url, '/api/2.0/mlflow/experiments/get?experiment_id=0', { headers: { 'x-request-id': id } })
            : await request(h.url, '/api/2.0/mlflow/runs/log-batch', { method: 'POST', body: '{"run_id":"r","metrics":[]}', headers: { 'content-type': 'application/json', 'x-request-id': id } });
        expect(a.status, a.text).to.equal(401);
        expect(a.text).to.include('Expected JWT to have audience');
        expect(a.headers['x-kvx-error']).to.equal(undefined);
        await new Promise((r) => setTimeout(r, 10));
      }
      const fetches = (world.iam.counts['generateIdToken'] ?? 0) - fetchesBefore;
      const after = await replays();
      await logged(`rejecting-${N - 1}`);
      // Before the fix: one fetch and one replay (counted as a success) per request.
      expect(fetches, `token fetches for ${N} rejected requests`).to.be.within(1, 2);
      expect(after.success - before.success, 'replays counted as success although rejected again').to.equal(0);
      expect(after.rejectedAgain - before.rejectedAgain, 'every refresh after a rejection was tried by one replay, rejected again').to.equal(fetches);
      expect(after.refreshFailed - before.refreshFailed).to.equal(0);
      let sent = 0;
      for (let i = 0; i < N; i++) sent += h.upstream.byId(`rejecting-${i}`).length;
      expect(sent, 'requests reaching the upstream: each once, plus the replays').to.equal(N + fetches);
      expect(h.upstream.byId('rejecting-0'), 'the first rejection is refreshed and replayed once').to.have.length(2);
      expect(h.upstream.byId(`rejecting-${N - 1}`), 'no replay once fresh tokens are rejected too').to.have.length(1);

      const warned = warnings(logFrom);
      expect(warned.map((l) => l.msg), 'exactly one warning for the whole burst').to.have.length(1);
      const line = JSON.stringify(warned[0]);
      expect(line).to.include('auth.params.client_id').and.include(CLIENT_ID).and.include('google-iam');
      expect(await h.metric('kvx_auth_upstream_rejecting', { provider: 'google-iam' })).to.equal(1);
      const readyz = await request(h.proxy.adminUrl, '/readyz');
      const provider = (JSON.parse(readyz.text) as { providers: Record<string, unknown>[] }).providers[0]!;
      const rejection = provider['upstreamRejects'] as Record<string, unknown> | undefined;
      expect(rejection, readyz.text).to.be.an('object');
      expect(rejection!['status']).to.equal(401);
      expect(String(rejection!['likelyCause'])).to.include('auth.params.client_id');
      expect(rejection!['nextRefreshInSeconds']).to.be.a('number');

      // IAP now accepts the proxy's client id: the first answer with the held token resets the state.
      gate = right;
      const fetchesBeforeRecovery = world.iam.counts['generateIdToken'] ?? 0;
      const ok = await request(h.url, '/api/2.0/mlflow/experiments/get?experiment_id=0');
      expect(ok.status, ok.text).to.equal(200);
      expect(world.iam.counts['generateIdToken'] ?? 0, 'the held token is used as is').to.equal(fetchesBeforeRecovery);
      expect(await h.metric('kvx_auth_upstream_rejecting', { provider: 'google-iam' })).to.equal(0);
      const readyAgain = JSON.parse((await request(h.proxy.adminUrl, '/readyz')).text) as { providers: Record<string, unknown>[] };
      expect(readyAgain.providers[0]!['upstreamRejects']).to.equal(undefined);
      await h.proxy.waitForLog((l) => l.level === 'info' && /accepts the token again/.test(l.msg), 2000);
      await h.assertHealthy('after an upstream rejecting every token');
    });

    it('token endpoint hangs as the held token ends: requests get their 503 with Retry-After within 3 s (auth.tokenFetchTimeoutMs is 30 s); one warning for the refusals, one for the unanswered refresh; recovers', async () => {
      world.iam.lifetimeSeconds = 3;
      const { env, authArgs } = world.iamSetup();
      h = await Harness.start({
        label: 'faults-cred-hung',
        authArgs,
        // The client idle timeout above the token wait, as by default (300 s), so it is not what answers.
        env: { ...TOKEN_ENV, KVX_AUTH_TOKEN_FETCH_TIMEOUT_MS: '30000', KVX_UPSTREAM_IDLE_TIMEOUT_MS: '60000', ...env },
        gate: world.gate,
        backgroundPorts: [world.iam.port, world.metadata.port],
      });
      const logFrom = h.proxy.logs.length;
      world.iam.failure = 'hang';
      const path = '/api/2.0/mlflow/experiments/get?experiment_id=0';
      const pending: Promise<{ status: number; ms: number; answer?: Awaited<ReturnType<typeof request>>; error?: string }>[] = [];
      const burstStart = Date.now();
      let sent = 0;
      while (Date.now() - burstStart < 5000) {
        const t0 = Date.now();
        pending.push(
          request(h.url, path, { timeoutMs: 10_000, headers: { 'x-request-id': `hung-${sent++}` } }).then(
            (answer) => ({ status: answer.status, ms: Date.now() - t0, answer }),
            (err: Error) => ({ status: 0, ms: Date.now() - t0, error: err.message }),
          ),
        );
        await new Promise((r) => setTimeout(r, 50));
      }
      const results = await Promise.all(pending);
      await logged(`hung-${sent - 1}`);
      expect(world.iam.hung, 'the token endpoint held a refresh').to.be.at.least(1);
      const slow = results.filter((r) => r.status === 0 || r.ms > 3000).map((r) => `${r.status} after ${r.ms} ms ${r.error ?? ''}`);
      expect(slow, 'answers slower than 3 s').to.deep.equal([]);
      const refused = results.filter((r) => r.status === 503);
      expect(refused.length, 'requests after the held token ended').to.be.at.least(20);
      expect(results.every((r) => r.status === 200 || r.status === 503), JSON.stringify(results.map((r) => r.status))).to.equal(true);
      for (const r of refused) {
        expect(r.answer!.headers['x-kvx-error']).to.equal('credentials_unavailable');
        expect(Number(r.answer!.headers['retry-after'])).to.be.at.least(1);
        expect(mlflowError(r.answer!).message).to.include('google-iam');
      }
      const refusalLines = () => h!.proxy.logs.slice(logFrom).filter((l) => l.level === 'warn' && /request refused/.test(l.msg));
      expect(refusalLines(), `${refused.length} refusals`).to.have.length(1);
      const unanswered = warnings(logFrom).filter((l) => /unanswered/.test(l.msg));
      expect(unanswered.map((l) => l.msg), 'one warning: the refresh is unanswered as the held token ends').to.have.length(1);
      const readyz = await request(h.proxy.adminUrl, '/readyz');
      expect(readyz.status).to.equal(503);
      expect((JSON.parse(readyz.text) as { providers: Record<string, unknown>[] }).providers[0]!['fetchPendingSeconds']).to.be.at.least(1);

      // The endpoint comes back; its dead connections are dropped.
      world.iam.failure = undefined;
      world.iam.releaseHung();
      const recovered = await pollUntil(() => request(h!.url, path), (a) => a.status === 200, 10_000, 100);
      expect(recovered.status).to.equal(200);
      expect(refusalLines(), 'still one line for the whole burst').to.have.length(1);
      const summary = await h.proxy.waitForLog((l) => l.level === 'info' && /credentials available again/.test(l.msg), 2000);
      expect(Number(summary['refused'])).to.be.at.least(refused.length);
      expect(Number(summary['suppressed'])).to.equal(Number(summary['refused']) - 1);
      await h.assertHealthy('after a hung token endpoint');
    });
  });

  describe('while serving', () => {
    let h: Harness;
    beforeEach(async () => {
      world.iam.lifetimeSeconds = 3;
      const { env, authArgs } = world.iamSetup();
      h = await Harness.start({
        label: 'faults-cred-serving',
        authArgs,
        env: { ...TOKEN_ENV, ...env },
        gate: world.gate,
        backgroundPorts: [world.iam.port, world.metadata.port],
      });
    });
    afterEach(async () => {
      await h?.stop();
    });

    async function answerFor(path = '/api/2.0/mlflow/experiments/get?experiment_id=0') {
      return request(h.url, path);
    }

    for (const failure of Object.keys(EXPECTED) as Failure[]) {
      it(`token endpoint ${failure}: 503 in MLflow shape with Retry-After once the held token expired, never a bad token upstream; recovers`, async () => {
        const rejectedBefore = { ...world.rejected };
        world.iam.slowMs = 10_000;
        world.iam.failure = failure;
        // Until the held token expires, traffic is unaffected.
        const during = await answerFor();
        expect(during.status).to.equal(200);
        const refused = await pollUntil(() => answerFor(), (a) => a.status !== 200, 8000, 100);
        expect(refused.status, refused.text).to.equal(503);
        expect(Number(refused.headers['retry-after'])).to.be.at.least(1);
        expect(refused.headers['x-kvx-error']).to.equal('credentials_unavailable');
        const body = mlflowError(refused);
        expect(body.error_code).to.equal('TEMPORARILY_UNAVAILABLE');
        expect(body.message).to.include('google-iam').and.match(EXPECTED[failure]);
        const readyz = await request(h.proxy.adminUrl, '/readyz');
        expect(readyz.status).to.equal(503);
        // The proxy never forwarded a token the gate would reject (expired, wrong audience) or nothing at all.
        expect(world.rejected).to.deep.equal(rejectedBefore);

        world.iam.failure = undefined;
        const recovered = await pollUntil(() => answerFor(), (a) => a.status === 200, 10_000, 100);
        expect(recovered.status).to.equal(200);
        await h.assertHealthy(`after token endpoint ${failure}`);
      });
    }

    it('upstream answers 401 on every call: one refresh and one replay, none once the fresh token is rejected too, none for a streamed upload; the 401 reaches the client unchanged; replays counted rejected_again', async () => {
      h.upstream.behaviour = (req, res) => {
        req.resume();
        req.on('end', () => {
          res.writeHead(401, { 'content-type': 'text/plain', 'x-goog-iap-generated-response': 'true' });
          res.end('Invalid IAP credentials: JWT audience doesn\'t match this application');
        });
        return true;
      };
      const successBefore = await h.metric('kvx_auth_replays_total', { result: 'success' });
      const againBefore = await h.metric('kvx_auth_replays_total', { result: 'rejected_again' });
      let replays = 0;
      for (let i = 0; i < 5; i++) {
        const a = await request(h.url, '/api/2.0/mlflow/runs/log-batch', { method: 'POST', body: '{"run_id":"r","metrics":[]}', headers: { 'content-type': 'application/json', 'x-request-id': `g401-${i}` } });
        expect(a.status).to.equal(401);
        expect(a.headers['x-kvx-error']).to.equal(undefined);
        expect(a.text).to.include('Invalid IAP credentials');
        const sent = h.upstream.byId(`g401-${i}`).length;
        // Tokens here live 3 s: one renewed on schedule gets one refresh and replay again.
        expect(sent, 'the original and at most one replay').to.be.within(i === 0 ? 2 : 1, 2);
        replays += sent - 1;
      }
      expect(replays, 'replays stop once a fresh token is rejected too').to.be.below(5);
      expect(await h.metric('kvx_auth_replays_total', { result: 'rejected_again' })).to.equal(againBefore + replays);
      expect(await h.metric('kvx_auth_replays_total', { result: 'success' })).to.equal(successBefore);
      const upload = await request(h.url, '/api/2.0/mlflow-artifacts/artifacts/1/r/artifacts/big.bin', { method: 'PUT', body: Buffer.alloc(2 * 1024 * 1024, 3), headers: { 'x-request-id': 'g401-upload' } });
      expect(upload.status).to.equal(401);
      expect(h.upstream.byId('g401-upload'), 'a streamed upload is never replayed').to.have.length(1);
      await h.assertHealthy('after 401 on every call');
    });

    it('Google clock 2 h ahead (the proxy clock jumped back): upstream rejects the held token as expired, one refresh and replay, no 401 reaches clients', async () => {
      const replaysBefore = await h.metric('kvx_auth_replays_total', { result: 'success' });
      world.issuer.offsetSeconds = 7200;
      const statuses: number[] = [];
      for (let i = 0; i < 20; i++) {
        statuses.push((await request(h.url, '/api/2.0/mlflow/runs/search', { method: 'POST', body: '{"max_results":1}', headers: { 'content-type': 'application/json' } })).status);
        await new Promise((r) => setTimeout(r, 50));
      }
      expect(statuses.filter((s) => s !== 200)).to.deep.equal([]);
      expect(world.rejected['expired'] ?? 0, 'the held token was rejected upstream at least once').to.be.at.least(1);
      expect(await h.metric('kvx_auth_replays_total', { result: 'success' })).to.be.above(replaysBefore);
      await h.assertHealthy('after the clock jumped back');
    });

    it('Google clock 2 h behind (the proxy clock jumped ahead): 503 naming the clock once the refresh after the upstream\'s rejection failed; recovers when clocks agree', async () => {
      // Documented limit: expiry is read from the token's exp on the local clock. Fresh tokens look expired
      // on arrival, so the held one keeps being used until it expires locally; each rejection of it upstream
      // asks for a refresh (within the fetch backoff), which fails and is answered with 503 naming the clock.
      world.issuer.offsetSeconds = -7200;
      const seen: { status: number; kvx: unknown; text: string }[] = [];
      const final = await pollUntil(
        async () => {
          const a = await answerFor();
          seen.push({ status: a.status, kvx: a.headers['x-kvx-error'], text: a.text });
          return a;
        },
        (a) => a.status === 503,
        8000,
        100,
      );
      expect(final.status, final.text).to.equal(503);
      expect(mlflowError(final).message).to.match(/already expired on arrival.*clock/);
      for (const a of seen.slice(0, -1)) {
        // The upstream's own rejection, passed through after the proxy tried to refresh, or a 200 before the held token was rejected.
        expect([200, 401], a.text).to.include(a.status);
        expect(a.kvx).to.equal(undefined);
      }
      await h.proxy.waitForLog((l) => JSON.stringify(l).includes('expired on arrival'), 2000).catch(() => expect.fail('the log says why'));
      world.issuer.offsetSeconds = 0;
      const recovered = await pollUntil(() => answerFor(), (a) => a.status === 200, 10_000, 100);
      expect(recovered.status).to.equal(200);
      await h.assertHealthy('after the clock jumped ahead and back');
    });
  });
});
