import { expect } from 'chai';
import { registerProviderType } from '../../src/auth/registry.js';
import type { HeaderMap, HeaderProvider } from '../../src/auth/provider.js';
import { CredentialsError } from '../../src/errors.js';
import { request, startScriptedUpstream } from '../helpers/http.js';
import { startTestProxy } from '../helpers/proxy.js';

/**
 * A provider whose credential the test controls: `generation` increments on every refresh, and the
 * upstream accepts only `accepted`. `failing` makes fetches fail.
 */
class RotatingProvider implements HeaderProvider {
  static instances: RotatingProvider[] = [];
  readonly name = 'rotating';
  generation = 1;
  refreshes = 0;
  failing = false;
  refreshFails = false;

  constructor() {
    RotatingProvider.instances.push(this);
  }

  inContext(): boolean {
    return true;
  }

  requestHeaders(): HeaderMap {
    if (this.failing) throw new CredentialsError('rotating', 'token endpoint answered 500', { retryAfterSeconds: 7 });
    return { Authorization: `Bearer gen-${this.generation}` };
  }

  async invalidate(rejected: HeaderMap): Promise<void> {
    if (rejected['Authorization'] !== `Bearer gen-${this.generation}`) return;
    if (this.refreshFails) throw new CredentialsError('rotating', 'token endpoint answered 500', { retryAfterSeconds: 3 });
    this.refreshes++;
    this.generation++;
  }

  status() {
    return { ready: !this.failing };
  }
}

registerProviderType('test-rotating', {
  validate: () => [],
  create: () => new RotatingProvider(),
});

describe('proxy: credentials', () => {
  let accepted = 'Bearer gen-2';
  const seen: { auth: string | undefined; body: string }[] = [];
  let upstream: Awaited<ReturnType<typeof startScriptedUpstream>>;

  before(async () => {
    upstream = await startScriptedUpstream((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        seen.push({ auth: req.headers.authorization, body: Buffer.concat(chunks).toString() });
        if (req.headers.authorization !== accepted) {
          res.writeHead(401, { 'content-type': 'text/plain', 'www-authenticate': 'Bearer' });
          return void res.end('Invalid IAP credentials');
        }
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end('{}');
      });
    });
  });

  after(() => upstream.close());

  beforeEach(() => {
    seen.length = 0;
    RotatingProvider.instances.length = 0;
    accepted = 'Bearer gen-2';
  });

  it('refreshes once and replays a small POST byte-exact after a 401', async () => {
    const proxy = await startTestProxy(upstream.url, { 'auth.provider': 'test-rotating' });
    try {
      const body = JSON.stringify({ run_id: 'r1', metrics: [{ key: 'a', value: 1, timestamp: 1, step: 0 }] });
      const res = await request(`${proxy.url}/api/2.0/mlflow/runs/log-batch`, { method: 'POST', body, headers: { 'content-type': 'application/json' } });
      expect(res.status).to.equal(200);
      expect(seen.map((s) => s.auth)).to.deep.equal(['Bearer gen-1', 'Bearer gen-2']);
      expect(seen[1]!.body).to.equal(body);
      expect(RotatingProvider.instances[0]!.refreshes).to.equal(1);
      const metrics = await proxy.metrics.registry.getSingleMetricAsString('kvx_auth_replays_total');
      expect(metrics).to.contain('kvx_auth_replays_total{result="success"} 1');
    } finally {
      await proxy.close(500);
    }
  });

  it('returns a second rejection to the client as is, without a third attempt', async () => {
    accepted = 'Bearer never';
    const proxy = await startTestProxy(upstream.url, { 'auth.provider': 'test-rotating' });
    try {
      const res = await request(`${proxy.url}/api/2.0/mlflow/runs/get?run_id=1`);
      expect(res.status).to.equal(401);
      expect(res.body).to.equal('Invalid IAP credentials');
      expect(res.headers['www-authenticate']).to.equal('Bearer');
      expect(seen).to.have.length(2);
      // Counted when the replay's answer arrived: rejected again, not a success.
      const metrics = await proxy.metrics.registry.getSingleMetricAsString('kvx_auth_replays_total');
      expect(metrics).to.contain('kvx_auth_replays_total{result="rejected_again"} 1').and.not.contain('result="success"');
    } finally {
      await proxy.close(500);
    }
  });

  it('answers 503 naming the cause when the refresh after a 401 fails, never replaying with the rejected credential', async () => {
    const proxy = await startTestProxy(upstream.url, { 'auth.provider': 'test-rotating' });
    RotatingProvider.instances[0]!.refreshFails = true;
    try {
      const res = await request(`${proxy.url}/api/2.0/mlflow/runs/get?run_id=1`);
      expect(res.status).to.equal(503);
      expect(res.headers['retry-after']).to.equal('3');
      expect(JSON.parse(res.body).message).to.contain('rotating: token endpoint answered 500');
      expect(seen.map((s) => s.auth)).to.deep.equal(['Bearer gen-1']);
      const metrics = await proxy.metrics.registry.getSingleMetricAsString('kvx_auth_replays_total');
      expect(metrics).to.contain('kvx_auth_replays_total{result="refresh_failed"} 1');
    } finally {
      await proxy.close(500);
    }
  });

  it('never replays a body over auth.replayMaxBodyBytes: it streams and the 401 goes back', async () => {
    const proxy = await startTestProxy(upstream.url, { 'auth.provider': 'test-rotating', 'auth.replayMaxBodyBytes': 1024 });
    try {
      const res = await request(`${proxy.url}/api/2.0/mlflow-artifacts/artifacts/1/r/artifacts/model.pkl`, { method: 'PUT', body: Buffer.alloc(4096, 1) });
      expect(res.status).to.equal(401);
      expect(seen).to.have.length(1);
      // Not replayed, but the next request gets a fresh credential.
      expect(RotatingProvider.instances[0]!.refreshes).to.equal(1);
    } finally {
      await proxy.close(500);
    }
  });

  it('replays on 403 only when auth.retryOnStatus lists it', async () => {
    const forbidding = await startScriptedUpstream((req, res) => {
      seen.push({ auth: req.headers.authorization, body: '' });
      res.writeHead(req.headers.authorization === 'Bearer gen-2' ? 200 : 403);
      res.end();
    });
    const plain = await startTestProxy(forbidding.url, { 'auth.provider': 'test-rotating' });
    const with403 = await startTestProxy(forbidding.url, { 'auth.provider': 'test-rotating', 'auth.retryOnStatus': [401, 403] });
    try {
      expect((await request(`${plain.url}/x`)).status).to.equal(403);
      expect((await request(`${with403.url}/x`)).status).to.equal(200);
    } finally {
      await plain.close(500);
      await with403.close(500);
      await forbidding.close();
    }
  });

  it('answers 503 with Retry-After in MLflow shape when credentials fail, and recovers', async () => {
    const proxy = await startTestProxy(upstream.url, { 'auth.provider': 'test-rotating' });
    const provider = RotatingProvider.instances[0]!;
    provider.generation = 2;
    try {
      provider.failing = true;
      const res = await request(`${proxy.url}/api/2.0/mlflow/runs/get?run_id=1`);
      expect(res.status).to.equal(503);
      expect(res.headers['retry-after']).to.equal('7');
      const body = JSON.parse(res.body);
      expect(body.error_code).to.equal('TEMPORARILY_UNAVAILABLE');
      expect(body.message).to.contain('rotating').and.contain('token endpoint answered 500');
      const ready = await request(`${proxy.adminUrl}/readyz`);
      expect(ready.status).to.equal(503);
      provider.failing = false;
      expect((await request(`${proxy.url}/api/2.0/mlflow/runs/get?run_id=1`)).status).to.equal(200);
      expect((await request(`${proxy.adminUrl}/readyz`)).status).to.equal(200);
    } finally {
      await proxy.close(500);
    }
  });

  it('refuses to start when the first credentials fail, unless told to start anyway', async () => {
    registerProviderType('test-broken', {
      validate: () => [],
      create: () => ({
        name: 'broken',
        inContext: () => true,
        requestHeaders: () => {
          throw new CredentialsError('broken', 'no credentials found');
        },
        start: () => Promise.reject(new CredentialsError('broken', 'no credentials found')),
        status: () => ({ ready: false, lastError: 'no credentials found' }),
      }),
    });
    const err = await startTestProxy(upstream.url, { 'auth.provider': 'test-broken' }).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err).to.be.instanceOf(CredentialsError);
    const lenient = await startTestProxy(upstream.url, { 'auth.provider': 'test-broken', 'auth.requireTokenAtStart': false });
    try {
      expect((await request(`${lenient.url}/x`)).status).to.equal(503);
      const ready = JSON.parse((await request(`${lenient.adminUrl}/readyz`)).body);
      expect(ready.status).to.equal('not ready');
      expect(ready.providers[0].lastError).to.equal('no credentials found');
    } finally {
      await lenient.close(500);
    }
  });
});
