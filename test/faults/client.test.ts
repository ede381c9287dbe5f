/**
 * Misbehaving and hostile clients against a real kvx-proxy process: aborts, slowloris, header abuse,
 * lying Content-Length, forward-proxy attempts, path tricks, odd methods and pipelining.
 */
import { expect } from 'chai';
import { RawConnection } from '../helpers/raw-http.js';
import { mlflowError, raw, request } from './support/client.js';
import { Harness } from './support/harness.js';
import { pollUntil } from './support/proxy-process.js';
import { wireOnly } from '../helpers/engine.js';

/** Opens a connection, writes `head` and `body`, and destroys it once `abortWhen` says so. */
async function abortingClient(port: number, head: string, body: Buffer | undefined, abortWhen: (received: number) => boolean | Promise<boolean>): Promise<void> {
  const c = await RawConnection.open(port);
  c.write(head);
  if (body) c.write(body);
  while (!c.ended && !(await abortWhen(c.received))) await new Promise((r) => setTimeout(r, 5));
  c.destroy();
  await c.closed;
}

describe('faults: clients', function () {
  this.timeout(60_000);
  let h: Harness;

  before(async () => {
    h = await Harness.start({ label: 'faults-client' });
  });
  after(async () => {
    await h?.stop();
  });

  it('100 clients abort mid-upload: every upstream request is cancelled, none completes, no socket is left', async () => {
    const ids: string[] = [];
    for (let batch = 0; batch < 4; batch++) {
      await Promise.all(
        Array.from({ length: 25 }, (_, i) => {
          const id = `abort-up-${batch}-${i}`;
          ids.push(id);
          const head = `PUT /api/2.0/mlflow-artifacts/artifacts/1/run/artifacts/model-${id}.bin HTTP/1.1\r\nHost: kvx\r\nContent-Type: application/octet-stream\r\nContent-Length: 8000000\r\nX-Request-Id: ${id}\r\n\r\n`;
          // Abort once upstream has seen part of the body: the upload is truly in flight.
          return abortingClient(h.proxy.port, head, Buffer.alloc(300_000, 7), () => h.upstream.byId(id).some((r) => r.bytes > 0));
        }),
      );
    }
    const arrived = ids.flatMap((id) => h.upstream.byId(id));
    expect(arrived).to.have.length(100);
    await pollUntil(() => arrived.every((r) => r.cancelled), Boolean, 5000);
    expect(arrived.filter((r) => !r.cancelled).map((r) => r.id), 'upstream requests still open').to.deep.equal([]);
    expect(arrived.filter((r) => r.complete).map((r) => r.id), 'an aborted upload reached upstream whole').to.deep.equal([]);
    const logged = await pollUntil(() => h.proxy.requestLogs().filter((l) => ids.includes(String(l['id']))), (l) => l.length === 100, 3000);
    expect(logged.map((l) => l['status'])).to.deep.equal(Array(100).fill(499));
    expect(await h.metric('kvx_requests_in_flight')).to.equal(0);
    await h.assertHealthy('after 100 aborted uploads');
  });

  it('100 clients abort mid-download: every upstream response is cancelled, no socket is left', async () => {
    const ids: string[] = [];
    for (let batch = 0; batch < 4; batch++) {
      await Promise.all(
        Array.from({ length: 25 }, (_, i) => {
          const id = `abort-down-${batch}-${i}`;
          ids.push(id);
          const head = `GET /slow-bytes?total=20000000 HTTP/1.1\r\nHost: kvx\r\nX-Request-Id: ${id}\r\n\r\n`;
          return abortingClient(h.proxy.port, head, undefined, (received) => received > 100_000);
        }),
      );
    }
    const arrived = ids.flatMap((id) => h.upstream.byId(id));
    expect(arrived).to.have.length(100);
    await pollUntil(() => arrived.every((r) => r.cancelled), Boolean, 5000);
    expect(arrived.filter((r) => !r.cancelled).map((r) => r.id), 'upstream responses still streaming').to.deep.equal([]);
    expect(arrived.filter((r) => r.answered)).to.have.length(0);
    expect(await h.metric('kvx_requests_in_flight')).to.equal(0);
    await h.assertHealthy('after 100 aborted downloads');
  });

  it('slowloris: 20 clients sending headers byte by byte get 408 after server.headersTimeoutMs while others are served', async () => {
    const header = 'GET /api/2.0/mlflow/runs/get?run_id=1 HTTP/1.1\r\nHost: kvx\r\nUser-Agent: ' + 'x'.repeat(200);
    const attackers = Array.from({ length: 20 }, () => raw(h.proxy.port, header.split(''), { gapMs: 50, waitMs: 12_000 }));
    // Normal traffic keeps flowing meanwhile.
    for (let i = 0; i < 5; i++) {
      const a = await request(h.url, '/bytes/1000');
      expect(a.status).to.equal(200);
    }
    const results = await Promise.all(attackers);
    for (const r of results) {
      expect(r.closedByServer, 'slowloris connection still open when the wait ended').to.equal(true);
      expect(r.statuses).to.deep.equal([408]);
      expect(mlflowError(r.responses[0]!).message).to.include('not received in time');
    }
    await h.assertHealthy('after slowloris');
  });

  it('idle connections that never send a byte are closed', async () => {
    const results = await Promise.all(Array.from({ length: 20 }, () => raw(h.proxy.port, [], { waitMs: 10_000 })));
    for (const r of results) expect(r.closedByServer).to.equal(true);
    await h.assertHealthy('after idle connections');
  });

  it('oversized headers: one huge header and thousands of small ones both get 431, nothing reaches upstream', async () => {
    const before = h.upstream.requests.length;
    const huge = await raw(h.proxy.port, `GET /api/2.0/mlflow/runs/get HTTP/1.1\r\nHost: kvx\r\nCookie: ${'a'.repeat(40_000)}\r\n\r\n`);
    const many = await raw(h.proxy.port, `GET /api/2.0/mlflow/runs/get HTTP/1.1\r\nHost: kvx\r\n${Array.from({ length: 2100 }, (_, i) => `x${i}:1\r\n`).join('')}\r\n`);
    for (const r of [huge, many]) {
      const answer = r.responses[0];
      expect(answer?.status).to.equal(431);
      expect(JSON.parse(answer!.text)).to.include({ error_code: 'BAD_REQUEST' });
      expect(r.closedByServer).to.equal(true);
    }
    expect(h.upstream.requests.length).to.equal(before);
    await h.assertHealthy('after oversized headers');
  });

  it('body shorter than Content-Length, then EOF: 400, upstream request cancelled and never complete', async () => {
    const id = 'short-eof';
    const r = await raw(h.proxy.port, [`POST /api/2.0/mlflow/runs/log-batch HTTP/1.1\r\nHost: kvx\r\nContent-Type: application/json\r\nContent-Length: 5000\r\nX-Request-Id: ${id}\r\n\r\n{"run_id":`], {
      endAfterWrite: true,
    });
    expect(r.statuses).to.deep.equal([400]);
    const seen = await pollUntil(() => h.upstream.byId(id), (l) => l.every((x) => x.cancelled), 3000);
    expect(seen.filter((x) => x.complete)).to.have.length(0);
    expect(seen.every((x) => x.cancelled)).to.equal(true);
    await h.assertHealthy('after a short body with EOF');
  });

  it('body shorter than Content-Length, connection left open: cut after upstream.idleTimeoutMs, upstream request cancelled', async () => {
    const id = 'short-open';
    const r = await raw(h.proxy.port, [`PUT /api/2.0/mlflow-artifacts/artifacts/1/r/artifacts/a.bin HTTP/1.1\r\nHost: kvx\r\nContent-Length: 5000\r\nX-Request-Id: ${id}\r\n\r\n`, Buffer.alloc(100)], { waitMs: 10_000 });
    expect(r.closedByServer, 'a stalled upload must not hold its connection forever').to.equal(true);
    const seen = await pollUntil(() => h.upstream.byId(id), (l) => l.length > 0 && l.every((x) => x.cancelled), 3000);
    expect(seen.filter((x) => x.complete)).to.have.length(0);
    expect(seen.every((x) => x.cancelled)).to.equal(true);
    await h.assertHealthy('after a stalled short body');
  });

  // Regression: the 400 for the surplus bytes used to be written straight away and replaced the answer to the
  // request that had already been forwarded.
  wireOnly('surplus bytes after a body: node:http waits for them as the next request (408 after server.headersTimeoutMs), the wire engine refuses at once (400)')('body longer than Content-Length: the request is forwarded with exactly Content-Length bytes and answered; the surplus gets 400', async () => {
    const id = 'long-body';
    const r = await raw(h.proxy.port, `POST /upload HTTP/1.1\r\nHost: kvx\r\nContent-Length: 5\r\nX-Request-Id: ${id}\r\n\r\nhelloSURPLUS-THAT-IS-NOT-HTTP\r\n\r\n`);
    expect(r.statuses).to.deep.equal([200, 400]);
    const first = r.responses[0]!;
    expect(JSON.parse(first.text)).to.include({ bytes: 5 });
    const seen = h.upstream.byId(id);
    expect(seen).to.have.length(1);
    expect(seen[0]).to.include({ bytes: 5, complete: true });
    expect(r.closedByServer).to.equal(true);
    await h.assertHealthy('after a long body');
  });

  it('CONNECT is refused with 405 and the connection closed: never a forward proxy', async () => {
    const before = h.upstream.requests.length;
    for (const target of ['example.com:443', `127.0.0.1:${h.upstream.port}`]) {
      const r = await raw(h.proxy.port, `CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`);
      const answer = r.responses[0]!;
      expect(answer.status).to.equal(405);
      expect(JSON.parse(answer.text).message).to.include('not a forward proxy');
      expect(r.closedByServer).to.equal(true);
    }
    expect(h.upstream.requests.length).to.equal(before);
    await h.assertHealthy('after CONNECT');
  });

  it('absolute-form and asterisk-form targets are refused with 400 forbidden_target; nothing reaches upstream', async () => {
    const before = h.upstream.requests.length;
    const targets = [`http://127.0.0.1:${h.upstream.port}/bytes/10`, 'http://metadata.google.internal/computeMetadata/v1/', 'https://example.com/api/2.0/mlflow/runs/get', '*'];
    for (const target of targets) {
      const method = target === '*' ? 'OPTIONS' : 'GET';
      const r = await raw(h.proxy.port, `${method} ${target} HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n`);
      const answer = r.responses[0]!;
      expect(answer.status, target).to.equal(400);
      expect(answer.value('x-kvx-error')).to.equal('forbidden_target');
    }
    expect(h.upstream.requests.length).to.equal(before);
    await h.assertHealthy('after absolute-form targets');
  });

  // Regression: `..` between encoded slashes or backslashes used to pass.
  it('dot segments, raw, percent-encoded or between encoded slashes/backslashes, are refused; encoded slashes alone pass unchanged', async () => {
    const before = h.upstream.requests.length;
    const refused = [
      '/api/2.0/../../admin',
      '/api/2.0/mlflow-artifacts/artifacts/%2e%2e/%2E%2E/etc/passwd',
      '/api/2.0/mlflow-artifacts/artifacts/..%2f..%2fadmin',
      '/api/2.0/mlflow-artifacts/artifacts/%2e%2e%2F%2e%2e%2Fadmin',
      '/api/2.0/mlflow-artifacts/artifacts/a%2f..%2fb',
      '/api/2.0/mlflow-artifacts/artifacts/..%5c..%5cadmin',
      '/api/2.0/mlflow-artifacts/artifacts/..\\admin',
      '/api/2.0/./mlflow/runs/get',
      '/..',
    ];
    for (const path of refused) {
      const r = await raw(h.proxy.port, `GET ${path} HTTP/1.1\r\nHost: kvx\r\nConnection: close\r\n\r\n`);
      const answer = r.responses[0];
      expect(answer?.status, path).to.equal(400);
      expect(answer!.value('x-kvx-error'), path).to.equal('bad_request');
    }
    expect(h.upstream.requests.length, 'a refused path reached upstream').to.equal(before);
    const passing = ['/api/2.0/mlflow-artifacts/artifacts/dir%2Ffile..name', '/api/2.0/mlflow-artifacts/artifacts/model..v2/a.pkl', '/api/2.0/mlflow/runs/get?path=../x'];
    for (const path of passing) {
      const a = await request(h.url, path);
      expect(a.status, path).to.equal(200);
      expect(h.upstream.requests.at(-1)!.url, 'path must reach upstream byte for byte').to.equal(path);
    }
    await h.assertHealthy('after dot-segment paths');
  });

  // Regression: TRACE used to be forwarded, and an upstream that implements it echoes the injected token back.
  it('TRACE is refused with 405; invalid methods get 400; other methods pass through', async () => {
    const before = h.upstream.requests.length;
    const trace = await raw(h.proxy.port, 'TRACE /api/2.0/mlflow/runs/get HTTP/1.1\r\nHost: kvx\r\nConnection: close\r\n\r\n');
    expect(trace.responses[0]!.status).to.equal(405);
    expect(trace.responses[0]!.value('x-kvx-error')).to.equal('method_not_allowed');
    for (const bad of ['FOO / HTTP/1.1', 'get / HTTP/1.1', 'G@T / HTTP/1.1', 'GET  HTTP/1.1', 'GET / HTTP/9.9', '\x16\x03\x01\x02\x00']) {
      const r = await raw(h.proxy.port, `${bad}\r\nHost: kvx\r\n\r\n`);
      expect(r.statuses, JSON.stringify(bad)).to.deep.equal([400]);
      expect(r.closedByServer).to.equal(true);
    }
    expect(h.upstream.requests.length).to.equal(before);
    for (const method of ['PATCH', 'DELETE', 'OPTIONS', 'PROPFIND']) {
      const a = await request(h.url, '/api/2.0/mlflow/runs/x', { method });
      expect(a.status, method).to.equal(200);
      expect(h.upstream.requests.at(-1)!.method).to.equal(method);
    }
    await h.assertHealthy('after odd methods');
  });

  it('pipelined requests are answered in order, each forwarded once, bodies intact', async () => {
    const parts: string[] = [];
    const expected: { path: string; bytes: number }[] = [];
    for (let i = 0; i < 12; i++) {
      const id = `pipe-${i}`;
      if (i % 3 === 1) {
        const body = `{"run_id":"r","metrics":[{"key":"m${i}","value":${i},"timestamp":1,"step":0}]}`;
        parts.push(`POST /p/${i} HTTP/1.1\r\nHost: kvx\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nX-Request-Id: ${id}\r\n\r\n${body}`);
        expected.push({ path: `/p/${i}`, bytes: body.length });
      } else {
        parts.push(`GET /p/${i} HTTP/1.1\r\nHost: kvx\r\nX-Request-Id: ${id}\r\n\r\n`);
        expected.push({ path: `/p/${i}`, bytes: 0 });
      }
    }
    // The last one asks to close, so the server ends the connection when done.
    parts[parts.length - 1] = parts.at(-1)!.replace('\r\n\r\n', '\r\nConnection: close\r\n\r\n');
    const r = await raw(h.proxy.port, parts.join(''));
    const bodies = r.responses.map((answer) => JSON.parse(answer.text) as { path: string; bytes: number });
    expect(r.statuses).to.deep.equal(Array(12).fill(200));
    expect(bodies.map((b) => ({ path: b.path, bytes: b.bytes }))).to.deep.equal(expected);
    for (let i = 0; i < 12; i++) expect(h.upstream.byId(`pipe-${i}`), `pipe-${i}`).to.have.length(1);
    await h.assertHealthy('after pipelining');
  });

  // Regression: a refused bodyless request used to close the connection, dropping the answers to the requests
  // pipelined behind it although they had been forwarded.
  it('a refused request in the middle of a pipeline does not drop the answers of the ones behind it', async () => {
    const r = await raw(
      h.proxy.port,
      'GET /q/1 HTTP/1.1\r\nHost: kvx\r\nX-Request-Id: q1\r\n\r\n' +
        'GET http://elsewhere.example/ HTTP/1.1\r\nHost: kvx\r\n\r\n' +
        'GET /q/3 HTTP/1.1\r\nHost: kvx\r\nX-Request-Id: q3\r\nConnection: close\r\n\r\n',
    );
    expect(r.statuses).to.deep.equal([200, 400, 200]);
    expect(h.upstream.byId('q1')).to.have.length(1);
    expect(h.upstream.byId('q3')).to.have.length(1);
    await h.assertHealthy('after a refused request in a pipeline');
  });
});
