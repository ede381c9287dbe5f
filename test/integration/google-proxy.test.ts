import { expect } from 'chai';
import { startFakeMlflow } from '../fakes/mlflow/index.js';
import type { FakeMlflow } from '../fakes/mlflow/index.js';
import { iapGate } from '../fakes/iap-gate.js';
import type { IapGate } from '../fakes/iap-gate.js';
import { CLIENT_ID, TARGET_SA, startGoogleWorld } from '../fakes/google-world.js';
import type { GoogleWorld } from '../fakes/google-world.js';
import { MlflowClientEmulator, runTrackingWorkflow } from '../helpers/mlflow-client.js';
import { startTestProxy } from '../helpers/proxy.js';
import type { TestProxy } from '../helpers/proxy.js';
import { request } from '../helpers/http.js';
import { expectNoSecrets, sleep } from './google-helpers.js';

/**
 * The proxy with each Google provider in front of an IAP-like gate: short token lifetimes under
 * continuous traffic, Google endpoints failing and recovering, and upstream rejections.
 */
describe('proxy with Google providers behind an IAP gate', () => {
  let world: GoogleWorld;
  let gate: IapGate;
  let mlflow: FakeMlflow;
  let proxy: TestProxy | undefined;

  beforeEach(async () => {
    world = await startGoogleWorld({ lifetimeSeconds: 2 });
    gate = iapGate({ issuer: world.issuer, audience: CLIENT_ID });
    mlflow = await startFakeMlflow({ gate });
  });
  afterEach(async () => {
    await proxy?.close(1000);
    proxy = undefined;
    await mlflow.close();
    await world.close();
  });

  function settings(params: Record<string, unknown>): Record<string, unknown> {
    const out: Record<string, unknown> = {
      'auth.endpoints.oauthToken': world.endpoints.oauthToken,
      'auth.endpoints.iamCredentials': world.endpoints.iamCredentials,
    };
    for (const [k, v] of Object.entries(params)) out[`auth.params.${k}`] = v;
    return out;
  }

  /** `workers` clients sending requests back to back for `ms`; every status seen. */
  async function traffic(url: string, ms: number, workers = 4): Promise<number[]> {
    const statuses: number[] = [];
    const until = Date.now() + ms;
    await Promise.all(
      Array.from({ length: workers }, async () => {
        while (Date.now() < until) {
          const res = await request(`${url}/api/2.0/mlflow/experiments/search?max_results=1`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } });
          statuses.push(res.status);
        }
      }),
    );
    return statuses;
  }

  for (const [name, params, env] of [
    ['google-iam', { client_id: CLIENT_ID, service_account: TARGET_SA }, (w: GoogleWorld) => w.metadataEnv()],
    ['google-oauth (metadata server)', { client_id: CLIENT_ID }, (w: GoogleWorld) => w.metadataEnv()],
    ['google-oauth (service-account key)', { client_id: CLIENT_ID }, (w: GoogleWorld) => w.keyEnv()],
  ] as const) {
    it(`${name}: no 401 reaches the client over several token lifetimes of continuous traffic`, async () => {
      proxy = await startTestProxy(mlflow.url, settings(params), env(world));
      const client = new MlflowClientEmulator(proxy.url);
      try {
        await runTrackingWorkflow(client, { artifactBytes: 64 * 1024 });
        expect(client.statuses.filter((s) => s === 401)).to.deep.equal([]);
      } finally {
        client.close();
      }
      const statuses = await traffic(proxy.url, 3_000);
      expect(statuses.length).to.be.greaterThan(50);
      expect(statuses.filter((s) => s !== 200)).to.deep.equal([]);
      expect(gate.rejected).to.deep.equal({});
      // several lifetimes passed, so several distinct tokens were used, each minted once
      expect(gate.tokens.size).to.be.at.least(3);
      expectNoSecrets(proxy.logs.lines, [...gate.tokens]);
    });
  }

  it('mints one token for 100 concurrent requests at start', async () => {
    proxy = await startTestProxy(mlflow.url, settings({ client_id: CLIENT_ID, service_account: TARGET_SA }), world.metadataEnv());
    const before = world.iam.counts['generateIdToken'] ?? 0;
    const results = await Promise.all(Array.from({ length: 100 }, () => request(`${proxy!.url}/health`)));
    expect(results.map((r) => r.status).filter((s) => s !== 200)).to.deep.equal([]);
    // the first token was fetched at start; the burst shares it
    expect(world.iam.counts['generateIdToken']! - before).to.equal(0);
    expect(before).to.equal(1);
  });

  it('keeps traffic flowing while IAM Credentials is down and a token is valid; 503 in MLflow shape once it expired; recovers', async () => {
    proxy = await startTestProxy(mlflow.url, settings({ client_id: CLIENT_ID, service_account: TARGET_SA }), world.metadataEnv());
    world.iam.failure = 'down';
    const during = await traffic(proxy.url, 800, 2);
    expect(during.filter((s) => s !== 200)).to.deep.equal([]);
    await sleep(2_100); // every token minted before the outage has expired now
    const refused = await request(`${proxy.url}/api/2.0/mlflow/experiments/get?experiment_id=0`);
    expect(refused.status).to.equal(503);
    expect(Number(refused.headers['retry-after'])).to.be.at.least(1);
    const body = JSON.parse(refused.body) as { error_code: string; message: string };
    expect(body.error_code).to.be.a('string');
    expect(body.message).to.include('google-iam');
    expect(body.message).to.include('cannot reach IAM Credentials');
    world.iam.failure = undefined;
    let recovered = 0;
    for (let i = 0; i < 100 && recovered === 0; i++) {
      await sleep(200);
      recovered = (await request(`${proxy.url}/health`)).status === 200 ? 1 : 0;
    }
    expect(recovered).to.equal(1);
    expectNoSecrets(proxy.logs.lines, [...gate.tokens]);
  });

  it('refreshes once and replays when the upstream rejects the token', async () => {
    world.iam.lifetimeSeconds = 3600;
    proxy = await startTestProxy(mlflow.url, settings({ client_id: CLIENT_ID, service_account: TARGET_SA }), world.metadataEnv());
    expect((await request(`${proxy.url}/health`)).status).to.equal(200);
    const first = [...gate.tokens][0]!;
    gate.revoke(first);
    const before = world.iam.counts['generateIdToken']!;
    const results = await Promise.all(Array.from({ length: 10 }, () => request(`${proxy!.url}/api/2.0/mlflow/experiments/search?max_results=1`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } })));
    expect(results.map((r) => r.status)).to.deep.equal(Array(10).fill(200));
    expect(world.iam.counts['generateIdToken']! - before).to.equal(1);
    expect(gate.rejected['revoked']).to.be.at.least(1);
  });
});
