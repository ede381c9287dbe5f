/**
 * The upstream connection pool under pressure. An upstream that closes every keep-alive connection right after
 * its answer, without `Connection: close`: each reused connection is one the server is closing, so a request
 * sent on it meets a reset or an EOF; the proxy must re-send idempotent requests on a new connection, and never
 * send a POST twice. And requests queued above upstream.maxConnections: the wait counts against the headers timeout.
 */
import { expect } from 'chai';
import http from 'node:http';
import { mlflowError, request } from './support/client.js';
import { Harness } from './support/harness.js';

interface Outcome {
  id: string;
  method: string;
  status: number;
  text: string;
  kvx: unknown;
}

const METHODS = ['GET', 'POST', 'GET', 'PUT', 'GET', 'POST', 'DELETE', 'HEAD'] as const;

describe('faults: upstream closes every connection after its answer', function () {
  this.timeout(120_000);
  let h: Harness;

  before(async () => {
    // The answers come from this process, under load: a host that stalls it past the harness's 1.5 s timeouts
    // would fail a GET with a 504, which is not what this case is about (the memory burst met that in CI).
    h = await Harness.start({ label: 'faults-reuse', env: { KVX_UPSTREAM_HEADERS_TIMEOUT_MS: '30000', KVX_UPSTREAM_IDLE_TIMEOUT_MS: '30000' } });
  });
  after(async () => {
    await h?.stop();
  });

  // Measured before the fix: 0.83% of requests failed at 1,500 req/s, GETs included despite the one re-send
  // (it could land on another reused connection the server was just as busy closing).
  it('under concurrent load every GET, HEAD, PUT and DELETE succeeds; a POST is never processed twice and fails only as a 502', async () => {
    let closes = 0;
    h.upstream.behaviour = (req, res) => {
      // Half of them FIN, half of them FIN and drop what arrives after (a reset for the next request's bytes).
      res.on('finish', () => (closes++ % 2 === 0 ? req.socket.end() : req.socket.destroy()));
      return false;
    };
    const concurrency = 32;
    const perWorker = 100;
    const outcomes: Outcome[] = [];
    const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
    const started = performance.now();
    try {
      await Promise.all(
        Array.from({ length: concurrency }, async (_, worker) => {
          for (let i = 0; i < perWorker; i++) {
            const method = METHODS[(worker + i) % METHODS.length]!;
            const id = `reuse-${worker}-${i}`;
            const withBody = method === 'POST' || method === 'PUT';
            const path = method === 'POST' ? '/api/2.0/mlflow/runs/log-metric' : method === 'PUT' ? `/api/2.0/mlflow-artifacts/artifacts/0/r/artifacts/${id}` : '/api/2.0/mlflow/runs/get?run_id=x';
            const outcome = await request(h.url, path, {
              method,
              agent,
              headers: { 'x-request-id': id, ...(withBody ? { 'content-type': 'application/json' } : {}) },
              ...(withBody ? { body: `{"run_id":"x","key":"m","value":${i},"timestamp":1}` } : {}),
            }).then(
              (answer): Outcome => ({ id, method, status: answer.status, text: answer.text, kvx: answer.headers['x-kvx-error'] }),
              (err: Error): Outcome => ({ id, method, status: 0, text: `client error: ${err.message}`, kvx: undefined }),
            );
            outcomes.push(outcome);
          }
        }),
      );
    } finally {
      agent.destroy();
    }
    const seconds = (performance.now() - started) / 1000;
    h.upstream.behaviour = undefined;
    expect(outcomes).to.have.length(concurrency * perWorker);

    const failed = outcomes.filter((o) => o.status !== 200);
    const byMethod = (list: Outcome[]) => Object.fromEntries(METHODS.map((m) => [m, list.filter((o) => o.method === m).length]));
    // For the report: the rate reached and what failed, by method.
    const resent = outcomes.filter((o) => h.upstream.byId(o.id).length > 1);
    console.log(
      `      ${outcomes.length} requests in ${seconds.toFixed(1)} s (${Math.round(outcomes.length / seconds)} req/s), ${closes} upstream closes; ` +
        `failed: ${JSON.stringify(byMethod(failed))}; arrived twice: ${JSON.stringify(byMethod(resent))}`,
    );
    for (const o of outcomes) {
      const arrived = h.upstream.byId(o.id).filter((r) => r.complete);
      if (o.method !== 'POST') {
        expect(o.status, `${o.method} ${o.id} failed: ${o.text}`).to.equal(200);
        expect(arrived.length, `${o.id} reached upstream`).to.be.within(1, 2);
        continue;
      }
      if (o.status === 200) {
        expect(JSON.parse(o.text)).to.include({ method: 'POST' });
        expect(arrived, `${o.id} succeeded: must have arrived exactly once`).to.have.length(1);
      } else {
        expect(o.status, `${o.id}: ${o.text}`).to.equal(502);
        expect(o.kvx).to.equal('upstream_unreachable');
        expect(mlflowError(o).error_code).to.equal('TEMPORARILY_UNAVAILABLE');
        expect(arrived.length, `${o.id} failed: must not have been processed twice`).to.be.at.most(1);
      }
    }
    await h.assertHealthy('after an upstream closing every connection');
  });
});

describe('faults: requests queued above upstream.maxConnections', function () {
  this.timeout(60_000);
  const timeoutMs = 2000;
  let h: Harness;

  before(async () => {
    h = await Harness.start({ label: 'faults-queue', env: { KVX_UPSTREAM_MAX_CONNECTIONS: '1', KVX_UPSTREAM_HEADERS_TIMEOUT_MS: String(timeoutMs) } });
  });
  after(async () => {
    await h?.stop();
  });

  // Measured before: a queued request waited for the slot and then the whole headers timeout on top (10.8 s for
  // a 5 s timeout); the third of three waited three timeouts.
  it('an upstream that never answers: three concurrent requests on one connection all get their 504 within about upstream.headersTimeoutMs', async () => {
    h.upstream.behaviour = (req) => {
      req.resume();
      return true;
    };
    const started = performance.now();
    const answers = await Promise.all(
      Array.from({ length: 3 }, (_, i) =>
        request(h.url, `/api/2.0/mlflow/runs/get?run_id=${i}`, { headers: { 'x-request-id': `queued-${i}` } }).then((a) => ({ a, ms: performance.now() - started })),
      ),
    );
    for (const { a, ms } of answers) {
      expect(a.status, a.text).to.equal(504);
      expect(a.headers['x-kvx-error']).to.equal('upstream_timeout');
      expect(mlflowError(a).message).to.include('upstream.headersTimeoutMs');
      // The sweep runs every tenth of the timeout; twice the timeout would be the old behaviour.
      expect(ms, 'answered within about the headers timeout').to.be.below(timeoutMs * 1.5);
    }
    const queued = answers.filter(({ a }) => mlflowError(a).message.includes('upstream.maxConnections (1)'));
    console.log(`      answered after ${answers.map(({ ms }) => Math.round(ms)).join(', ')} ms; ${queued.length} timed out while queued`);
    h.upstream.behaviour = undefined;
    await h.assertHealthy('after queued requests timed out');
  });
});
