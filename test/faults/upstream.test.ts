/**
 * Upstream misbehaviour against a real kvx-proxy process. Each case checks the documented answer and ends
 * with the proxy serving normal traffic with no more fds or sockets than before.
 */
import { expect } from 'chai';
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { mlflowError, request } from './support/client.js';
import { Harness } from './support/harness.js';
import { pollUntil } from './support/proxy-process.js';
import { pattern } from './support/upstream.js';
import { wireOnly } from '../helpers/engine.js';

describe('faults: upstream', function () {
  this.timeout(30_000);
  let h: Harness;

  before(async () => {
    h = await Harness.start({ label: 'faults-upstream' });
  });
  after(async () => {
    await h?.stop();
  });
  afterEach(() => {
    if (h) h.upstream.behaviour = undefined;
  });

  it('refuses connections: 502 TEMPORARILY_UNAVAILABLE naming the upstream, then recovers when it is back', async () => {
    await h.upstream.stopListening();
    const answers = await Promise.all(Array.from({ length: 20 }, (_, i) => request(h.url, `/api/2.0/mlflow/runs/get?run_id=${i}`)));
    for (const a of answers) {
      expect(a.status).to.equal(502);
      expect(a.headers['x-kvx-error']).to.equal('upstream_unreachable');
      const body = mlflowError(a);
      expect(body.error_code).to.equal('TEMPORARILY_UNAVAILABLE');
      expect(body.message).to.include(h.upstream.url).and.include('refused');
    }
    await h.upstream.listenAgain();
    await h.assertHealthy('after connection refused');
  });

  it('accepts and never answers: 504 DEADLINE_EXCEEDED after upstream.headersTimeoutMs, upstream request cancelled', async () => {
    h.upstream.behaviour = (req) => {
      req.resume();
      return true;
    };
    const before = h.upstream.requests.length;
    const answers = await Promise.all(Array.from({ length: 10 }, () => request(h.url, '/api/2.0/mlflow/experiments/get?experiment_id=0')));
    for (const a of answers) {
      expect(a.status).to.equal(504);
      expect(a.headers['x-kvx-error']).to.equal('upstream_timeout');
      expect(mlflowError(a)).to.include({ error_code: 'DEADLINE_EXCEEDED' });
      expect(mlflowError(a).message).to.include('upstream.headersTimeoutMs');
    }
    const stalled = h.upstream.requests.slice(before);
    expect(stalled).to.have.length(10, 'a timed-out request must not be retried');
    await pollUntil(() => stalled.every((r) => r.cancelled), Boolean, 3000);
    expect(stalled.map((r) => r.cancelled)).to.deep.equal(Array(10).fill(true), 'proxy must close the upstream request it gave up on');
    await h.assertHealthy('after upstream never answered');
  });

  for (const framing of ['content-length', 'chunked'] as const) {
    it(`answers headers then stalls mid-body (${framing}): client sees a broken body, not a complete one`, async () => {
      h.upstream.behaviour = (req, res) => {
        req.resume();
        res.writeHead(200, framing === 'chunked' ? { 'content-type': 'application/octet-stream' } : { 'content-length': 100_000 });
        res.write(pattern(0, 1000));
        return true;
      };
      const results = await Promise.allSettled(Array.from({ length: 5 }, () => request(h.url, '/api/2.0/mlflow-artifacts/artifacts/0/r/artifacts/model.pkl')));
      for (const r of results) {
        // node:http reports a body cut short as an error ('aborted'); a complete 200 would mean a silent truncation.
        expect(r.status, `stalled body delivered as complete: ${JSON.stringify(r)}`).to.equal('rejected');
      }
      await h.assertHealthy(`after stalled ${framing} body`);
    });
  }

  it('resets mid-response: the client connection is broken, never a clean short body', async () => {
    h.upstream.behaviour = (req, res) => {
      req.resume();
      res.writeHead(200, { 'content-length': 50_000 });
      res.write(pattern(0, 20_000), () => (res.socket as Socket).resetAndDestroy());
      return true;
    };
    const results = await Promise.allSettled(Array.from({ length: 10 }, () => request(h.url, '/api/2.0/mlflow-artifacts/artifacts/0/r/artifacts/data.csv')));
    for (const r of results) expect(r.status).to.equal('rejected');
    await h.assertHealthy('after reset mid-response');
  });

  it('resets before answering: a POST gets 502 and reached upstream once; a GET is retried at most once', async () => {
    h.upstream.behaviour = (req) => {
      req.on('end', () => req.socket.resetAndDestroy());
      req.resume();
      return true;
    };
    const post = await request(h.url, '/api/2.0/mlflow/runs/log-batch', { method: 'POST', headers: { 'content-type': 'application/json', 'x-request-id': 'reset-post-1' }, body: '{"run_id":"r"}' });
    expect(post.status).to.equal(502);
    expect(post.headers['x-kvx-error']).to.equal('upstream_unreachable');
    expect(mlflowError(post).message).to.include('closed the connection');
    expect(h.upstream.byId('reset-post-1')).to.have.length(1, 'a POST must never be sent twice');

    const get = await request(h.url, '/api/2.0/mlflow/runs/get?run_id=r', { headers: { 'x-request-id': 'reset-get-1' } });
    expect(get.status).to.equal(502);
    expect(h.upstream.byId('reset-get-1').length).to.be.within(1, 2);
    await h.assertHealthy('after reset before answering');
  });

  const malformed: Record<string, string> = {
    'garbage instead of a status line': 'SSH-2.0-OpenSSH_9.6\r\n\r\n',
    'a non-numeric Content-Length': 'HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\nabc',
    'two different Content-Lengths': 'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde',
    'a header with a control character': 'HTTP/1.1 200 OK\r\nX-Bad: a\x01b\r\nContent-Length: 2\r\n\r\nok',
    'an invalid chunk size': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n',
  };
  for (const [what, bytes] of Object.entries(malformed)) {
    it(`sends a malformed response (${what}): 502 upstream_bad_response or a broken connection, never the bytes as-is`, async () => {
      h.upstream.behaviour = (req) => {
        req.on('end', () => req.socket.end(bytes));
        req.resume();
        return true;
      };
      const outcome = await request(h.url, '/api/2.0/mlflow/experiments/get?experiment_id=0', { headers: { 'x-request-id': `malformed-${what.length}` } }).then(
        (a) => ({ answer: a }),
        (err: Error) => ({ error: err }),
      );
      if ('answer' in outcome) {
        // Headers could not have been forwarded: a clean MLflow-shaped 502.
        expect(outcome.answer.status, outcome.answer.text).to.equal(502);
        expect(outcome.answer.headers['x-kvx-error']).to.equal('upstream_bad_response');
        expect(mlflowError(outcome.answer).message).to.match(/malformed|does not match its Content-Length/);
      } else {
        // Only acceptable when the status line was already sent (a body error): the chunked case.
        expect(what).to.equal('an invalid chunk size');
      }
      expect(h.upstream.byId(`malformed-${what.length}`).length).to.be.within(1, 2);
      await h.assertHealthy(`after malformed response: ${what}`);
    });
  }

  // Both keep the connection open so the surplus sits where the next answer would be read.
  const surplus = [
    {
      what: 'more body than its Content-Length (a whole forged answer): the client gets exactly Content-Length bytes, the extra never reaches the next answer',
      bytes: 'HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nforged',
    },
    {
      // Only part of a head: no headers complete, so nothing but the start of a message shows it.
      what: 'the start of another answer after its own, in the same write: the connection is not reused, the next answer is its own',
      bytes: 'HTTP/1.1 200 OK\r\nContent-Le',
    },
  ];
  for (const { what, bytes } of surplus) {
    it(`sends ${what}`, async () => {
      h.upstream.behaviour = (req) => {
        req.on('end', () => req.socket.write(`HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok${bytes}`));
        req.resume();
        return true;
      };
      const first = await request(h.url, '/api/2.0/mlflow/runs/get?run_id=1');
      expect(first.status).to.equal(200);
      expect(first.text).to.equal('ok');
      h.upstream.behaviour = undefined;
      const second = await request(h.url, '/bytes/10');
      expect(second.status, 'the next answer was read after the surplus bytes').to.equal(200);
      expect(second.body.length, 'the surplus bytes were read as the next response').to.equal(10);
      await h.assertHealthy(`after surplus bytes: ${bytes.slice(0, 30)}`);
    });
  }

  wireOnly('no distrust of connection reuse: undici does not tell whether a connection was reused')('closes a reused keep-alive connection instead of answering: a GET is re-sent once and succeeds, a POST is never re-sent', async () => {
    // From the proxy's side this is the stale-socket race made deterministic: the request went out on a
    // reused connection and the server closed it. Sequential requests, so the retry finds no idle socket.
    const served = new WeakMap<Socket, number>();
    h.upstream.behaviour = (req) => {
      const n = (served.get(req.socket) ?? 0) + 1;
      served.set(req.socket, n);
      if (n === 1) return false;
      req.on('end', () => req.socket.destroy());
      req.resume();
      return true;
    };
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      for (let i = 0; i < 10; i++) {
        h.upstream.dropIdle();
        await request(h.url, '/bytes/10', { agent });
        const get = await request(h.url, '/api/2.0/mlflow/runs/get?run_id=x', { agent, headers: { 'x-request-id': `stale-get-${i}` } });
        expect(get.status, get.text).to.equal(200);
        expect(h.upstream.byId(`stale-get-${i}`).map((r) => r.answered)).to.deep.equal([false, true]);

        h.upstream.dropIdle();
        await request(h.url, '/bytes/10', { agent });
        const post = await request(h.url, '/api/2.0/mlflow/runs/log-metric', {
          agent,
          method: 'POST',
          headers: { 'x-request-id': `stale-post-${i}`, 'content-type': 'application/json' },
          body: '{"run_id":"x","key":"m","value":1,"timestamp":1}',
        });
        expect(h.upstream.byId(`stale-post-${i}`), 'a POST must never be re-sent').to.have.length(1);
        if (i === 0) {
          // It met the closing connection: a 502, or a 200 if the pool already distrusted reuse.
          expect(post.status).to.be.oneOf([200, 502]);
          if (post.status === 502) expect(mlflowError(post).error_code).to.equal('TEMPORARILY_UNAVAILABLE');
        } else {
          // By now the pool has seen this upstream close connections after its answers: a POST gets a new one.
          expect(post.status, post.text).to.equal(200);
        }
      }
    } finally {
      agent.destroy();
    }
    await h.assertHealthy('after stale reused connections');
  });

  it('closes keep-alive connections at random moments between requests: every answer is the real one or an MLflow 502, no POST is processed twice', async () => {
    // Each connection is closed a few milliseconds after an answer, when the proxy is likely to reuse it.
    let n = 0;
    h.upstream.behaviour = (req, res) => {
      const delay = n++ % 4;
      res.on('finish', () => setTimeout(() => (n % 2 ? req.socket.end() : req.socket.destroy()), delay));
      return false;
    };
    const outcomes: { id: string; method: string; status: number; text: string; kvx: unknown }[] = [];
    const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
    try {
      for (let round = 0; round < 60; round++) {
        const batch = Array.from({ length: 4 }, (_, i) => {
          const method = (round + i) % 3 === 0 ? 'POST' : 'GET';
          const id = `race-${round}-${i}`;
          return request(h.url, method === 'GET' ? '/api/2.0/mlflow/runs/get?run_id=x' : '/api/2.0/mlflow/runs/log-metric', {
            method,
            agent,
            headers: { 'x-request-id': id, ...(method === 'POST' ? { 'content-type': 'application/json' } : {}) },
            ...(method === 'POST' ? { body: '{"run_id":"x","key":"m","value":1,"timestamp":1}' } : {}),
          }).then((a) => outcomes.push({ id, method, status: a.status, text: a.text, kvx: a.headers['x-kvx-error'] }));
        });
        await Promise.all(batch);
        await new Promise((r) => setTimeout(r, round % 3));
      }
    } finally {
      agent.destroy();
    }
    expect(outcomes).to.have.length(240);
    for (const o of outcomes) {
      const arrived = h.upstream.byId(o.id).filter((r) => r.complete);
      if (o.status === 200) {
        expect(JSON.parse(o.text)).to.include({ method: o.method });
        // A GET whose connection closed before its answer is re-sent once; a POST never is.
        if (o.method === 'POST') expect(arrived, `${o.id} succeeded: must have arrived exactly once`).to.have.length(1);
        else expect(arrived.length, o.id).to.be.within(1, 2);
      } else {
        expect(o.status, o.id).to.equal(502);
        expect(o.kvx).to.equal('upstream_unreachable');
        expect(mlflowError(o).error_code).to.equal('TEMPORARILY_UNAVAILABLE');
        if (o.method === 'POST') expect(arrived.length, `${o.id} failed: must not have been processed twice`).to.be.at.most(1);
      }
    }
    await h.assertHealthy('after keep-alive race');
  });

  it('answers 401 on every call: the 401 reaches the client once, unchanged, with no retry loop (static token cannot refresh)', async () => {
    h.upstream.behaviour = (req, res) => {
      req.resume();
      res.writeHead(401, { 'content-type': 'text/plain', 'www-authenticate': 'Bearer realm="x"' });
      res.end('Invalid IAP credentials: JWT audience doesn\'t match this application');
      return true;
    };
    const answers = await Promise.all(
      Array.from({ length: 10 }, (_, i) => request(h.url, '/api/2.0/mlflow/runs/search', { method: 'POST', body: '{}', headers: { 'content-type': 'application/json', 'x-request-id': `r401-${i}` } })),
    );
    for (const [i, a] of answers.entries()) {
      expect(a.status).to.equal(401);
      expect(a.headers['x-kvx-error']).to.equal(undefined);
      expect(a.headers['www-authenticate']).to.equal('Bearer realm="x"');
      expect(a.text).to.include('Invalid IAP credentials');
      expect(h.upstream.byId(`r401-${i}`)).to.have.length(1);
    }
    await h.assertHealthy('after 401 on every call');
  });

  it('redirects to another host: not followed, Location passed through, the other host gets nothing', async () => {
    const elsewhere: http.IncomingMessage[] = [];
    const other = http.createServer((req, res) => {
      elsewhere.push(req);
      res.end('should not be reached');
    });
    await new Promise<void>((r) => other.listen(0, '127.0.0.1', r));
    const otherUrl = `http://127.0.0.1:${(other.address() as AddressInfo).port}`;
    try {
      h.upstream.behaviour = (req, res) => {
        req.resume();
        const target = req.url!.startsWith('/self') ? `${h.upstream.url}/api/2.0/mlflow/runs/get?run_id=1` : `${otherUrl}/steal?x=1`;
        res.writeHead(req.method === 'PUT' ? 307 : 302, { location: target, 'content-length': 0 });
        res.end();
        return true;
      };
      const get = await request(h.url, '/api/2.0/mlflow/runs/get?run_id=1');
      expect(get.status).to.equal(302);
      expect(get.headers.location).to.equal(`${otherUrl}/steal?x=1`);
      const put = await request(h.url, '/api/2.0/mlflow-artifacts/artifacts/0/r/artifacts/f.bin', { method: 'PUT', body: Buffer.alloc(10_000, 1) });
      expect(put.status).to.equal(307);
      const self = await request(h.url, '/self');
      expect(self.headers.location, 'a Location pointing at upstream is rewritten to the proxy').to.equal(`${h.url}/api/2.0/mlflow/runs/get?run_id=1`);
      expect(elsewhere).to.have.length(0);
    } finally {
      other.closeAllConnections();
      await new Promise<void>((r) => other.close(() => r()));
    }
    await h.assertHealthy('after redirects');
  });
});

describe('faults: slow upstream with upstream.idleTimeoutMs below upstream.headersTimeoutMs', function () {
  this.timeout(30_000);
  let h: Harness;
  before(async () => {
    h = await Harness.start({ label: 'faults-slow-upstream', env: { KVX_UPSTREAM_IDLE_TIMEOUT_MS: '600', KVX_UPSTREAM_HEADERS_TIMEOUT_MS: '3000' } });
  });
  after(async () => {
    await h?.stop();
  });

  // Regression: the client socket's inactivity timer (upstream.idleTimeoutMs) used to drop the client while it
  // waited for a slow upstream, so the answer (or the 504) never arrived.
  it('an answer slower than the idle timeout but within the headers timeout reaches the client', async () => {
    h.upstream.behaviour = (req, res) => {
      req.resume();
      setTimeout(() => res.end('{"runs":[]}'), 1200);
      return true;
    };
    const answers = await Promise.all(
      Array.from({ length: 5 }, () => request(h.url, '/api/2.0/mlflow/runs/search', { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } })),
    );
    for (const a of answers) {
      expect(a.status).to.equal(200);
      expect(a.text).to.equal('{"runs":[]}');
    }
    await h.assertHealthy('after slow answers');
  });

  it('an upstream that never answers gets a 504 after the headers timeout, not a dropped connection', async () => {
    h.upstream.behaviour = (req) => {
      req.resume();
      return true;
    };
    const a = await request(h.url, '/api/2.0/mlflow/runs/get?run_id=1');
    expect(a.status).to.equal(504);
    expect(mlflowError(a).error_code).to.equal('DEADLINE_EXCEEDED');
    await h.assertHealthy('after a 504');
  });
});
