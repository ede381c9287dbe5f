/**
 * IAP's own answers (X-Goog-IAP-Generated-Response: true) read as IAP means them: its 401 is a credential problem
 * (one refresh and replay, whatever auth.retryOnStatus says), its 403 a missing IAP-secured Web App User role (no
 * refresh, a log line naming the identity, the role and the resource); MLflow's own 401/403 behind it go back
 * untouched.
 */
import { expect } from 'chai';
import { AuthAnswerReader } from '../../src/proxy/iap.js';
import { silentLogger } from '../../src/log/logger.js';
import { CLIENT_ID, KEY_SA, TARGET_SA, startGoogleWorld } from '../fakes/google-world.js';
import type { GoogleWorld } from '../fakes/google-world.js';
import { iapGate } from '../fakes/iap-gate.js';
import { basicGate, startFakeMlflow } from '../fakes/mlflow/index.js';
import type { FakeMlflow, Gate } from '../fakes/mlflow/index.js';
import { request, startScriptedUpstream } from '../helpers/http.js';
import { startTestProxy } from '../helpers/proxy.js';
import type { TestProxy } from '../helpers/proxy.js';
import { expectNoSecrets } from './google-helpers.js';

const SEARCH = '/api/2.0/mlflow/experiments/search';
const post = (url: string) => request(`${url}${SEARCH}`, { method: 'POST', body: '{"max_results":1}', headers: { 'content-type': 'application/json' } });

describe('proxy: IAP answers', () => {
  let world: GoogleWorld;
  let mlflow: FakeMlflow | undefined;
  let proxy: TestProxy | undefined;

  beforeEach(async () => {
    world = await startGoogleWorld();
  });
  afterEach(async () => {
    await proxy?.close(500);
    await mlflow?.close();
    proxy = undefined;
    mlflow = undefined;
    await world.close();
  });

  async function start(gate: Gate, settings: Record<string, unknown> = {}): Promise<TestProxy> {
    mlflow = await startFakeMlflow({ gate });
    proxy = await startTestProxy(
      mlflow.url,
      {
        'auth.endpoints.oauthToken': world.endpoints.oauthToken,
        'auth.endpoints.iamCredentials': world.endpoints.iamCredentials,
        'auth.params.client_id': CLIENT_ID,
        'auth.params.service_account': TARGET_SA,
        ...settings,
      },
      world.metadataEnv(),
    );
    return proxy;
  }

  it("IAP's 401 refreshes once and replays, even with auth.retryOnStatus empty", async () => {
    const gate = iapGate({ issuer: world.issuer, audience: CLIENT_ID });
    const p = await start(gate, { 'auth.retryOnStatus': [] });
    expect((await post(p.url)).status).to.equal(200);
    for (const t of gate.tokens) gate.revoke(t);
    const res = await post(p.url);
    expect(res.status).to.equal(200);
    expect(gate.rejected).to.deep.equal({ revoked: 1 });
    expect(world.iam.calls).to.have.length(2);
  });

  it("IAP's 403 is not refreshed, even with 403 in auth.retryOnStatus: its answer goes back, and the log names identity, role and resource", async () => {
    const gate = iapGate({ issuer: world.issuer, audience: CLIENT_ID, allowed: [KEY_SA] });
    const p = await start(gate, { 'auth.retryOnStatus': [401, 403] });
    for (let i = 0; i < 3; i++) {
      const res = await post(p.url);
      expect(res.status).to.equal(403);
      expect(res.headers['x-goog-iap-generated-response']).to.equal('true');
      expect(res.body).to.equal("You don't have access. Please contact your administrator.");
    }
    expect(world.iam.calls, 'one token minted: a new one cannot fix a missing role').to.have.length(1);
    const denials = p.logs.records().filter((r) => r['msg'] === 'IAP answered 403: the identity lacks the IAP-secured Web App User role');
    expect(denials.map((r) => r['level'])).to.deep.equal(['warn', 'debug', 'debug']);
    expect(denials[0]).to.include({ identity: TARGET_SA, role: 'IAP-secured Web App User (roles/iap.httpsResourceAccessor)', resource: `the IAP-secured resource in front of ${mlflow!.url}` });
    expect(String(denials[0]!['hint'])).to.include(`--member=serviceAccount:${TARGET_SA} --role=roles/iap.httpsResourceAccessor`);
    expectNoSecrets(p.logs.lines, [...gate.tokens]);
  });

  it("MLflow's own 401 behind IAP (basic auth, no IAP mark) goes back untouched, without a refresh", async () => {
    const iap = iapGate({ issuer: world.issuer, audience: CLIENT_ID });
    const basic = basicGate('pipeline', 'secret');
    const gate: Gate = (req) => iap(req) ?? basic(req);
    const p = await start(gate, { 'auth.header': 'Proxy-Authorization' });
    const res = await post(p.url);
    expect(res.status).to.equal(401);
    expect(res.headers['www-authenticate']).to.equal('Basic realm="mlflow"');
    expect(res.body).to.include('You are not authenticated');
    expect(iap.accepted).to.equal(1);
    expect(world.iam.calls).to.have.length(1);
  });

  it('once IAP is known to be in front, an unmarked 401 or 403 is the upstream\'s own; before that auth.retryOnStatus decides', async () => {
    let generation = 0;
    const upstream = await startScriptedUpstream((req, res) => {
      generation++;
      if (req.url!.startsWith('/ok')) {
        res.writeHead(200, { 'content-type': 'application/json' });
        return void res.end('{}');
      }
      if (req.url!.startsWith('/iap')) {
        res.writeHead(401, { 'x-goog-iap-generated-response': 'true', 'content-type': 'text/html' });
        return void res.end('Invalid IAP credentials: empty token');
      }
      res.writeHead(403, { 'content-type': 'application/json' });
      res.end('{"error_code":"PERMISSION_DENIED","message":"no READ permission"}');
    });
    try {
      proxy = await startTestProxy(
        upstream.url,
        {
          'auth.endpoints.oauthToken': world.endpoints.oauthToken,
          'auth.endpoints.iamCredentials': world.endpoints.iamCredentials,
          'auth.params.client_id': CLIENT_ID,
          'auth.params.service_account': TARGET_SA,
          'auth.retryOnStatus': [401, 403],
        },
        world.metadataEnv(),
      );
      const before = await request(`${proxy.url}/mlflow`);
      expect(before.status).to.equal(403);
      expect(generation, 'not known to be IAP yet: 403 is in auth.retryOnStatus, so one replay').to.equal(2);
      expect((await request(`${proxy.url}/iap`)).status).to.equal(401);
      // A request accepted with the current token, so nothing but the kind of answer decides the next one.
      expect((await request(`${proxy.url}/ok`)).status).to.equal(200);
      generation = 0;
      const after = await request(`${proxy.url}/mlflow`);
      expect(after.status).to.equal(403);
      expect(after.body).to.equal('{"error_code":"PERMISSION_DENIED","message":"no READ permission"}');
      expect(generation, "MLflow's own answer: sent once").to.equal(1);
    } finally {
      await proxy?.close(500);
      proxy = undefined;
      await upstream.close();
    }
  });

  it('classifies by the mark, not the body', () => {
    const reader = new AuthAnswerReader(silentLogger, 'https://mlflow.example.com');
    expect(reader.classify(401, ['Content-Type', 'text/plain'])).to.equal('unknown');
    expect(reader.classify(401, ['WWW-Authenticate', 'Basic realm="mlflow"'])).to.equal('upstream_own');
    expect(reader.classify(403, ['X-Goog-IAP-Generated-Response', 'false'])).to.equal('unknown');
    expect(reader.iapInFront).to.equal(false);
    expect(reader.classify(403, ['X-Goog-IAP-Generated-Response', 'true'])).to.equal('iap_denied');
    expect(reader.classify(401, ['x-goog-iap-generated-response', 'TRUE'])).to.equal('credentials');
    expect(reader.classify(401, ['Content-Type', 'text/plain'])).to.equal('upstream_own');
  });
});
