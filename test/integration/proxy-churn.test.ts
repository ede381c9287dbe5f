/**
 * Connections that come and go must leave nothing behind: after clients churn through the proxy (a new
 * connection per request, aborts mid-body and mid-answer, refused requests) or an upstream refuses or drops
 * every connection under retrying clients, no ClientConnection, ClientRequest, Exchange, UpstreamConnection or
 * UpstreamRequest stays reachable, and no native handle or timer stays open. Live objects are counted with
 * v8.queryObjects, which runs a full garbage collection first; the connection objects are what a native
 * HTTPParser left open keeps alive (through the closures in its callback slots).
 */
import http from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import v8 from 'node:v8';
import { expect } from 'chai';
import { Exchange } from '../../src/proxy/forward.js';
import { ClientConnection, ClientRequest } from '../../src/proxy/wire/client-connection.js';
import { UpstreamConnection, UpstreamRequest } from '../../src/proxy/wire/upstream-pool.js';
import { startTestProxy } from '../helpers/proxy.js';
import { RawConnection } from '../helpers/raw-http.js';
import type { TestProxy } from '../helpers/proxy.js';

const TOKEN = 'churn-secret-token-81c3';
const env = { TEST_CHURN_TOKEN: TOKEN };
const settings = { 'auth.provider': 'static', 'auth.params.token_env': 'TEST_CHURN_TOKEN', 'log.level': 'error', 'upstream.connectTimeoutMs': 1000 };
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

const tracked = { ClientConnection, ClientRequest, Exchange, UpstreamConnection, UpstreamRequest } as const;
type Tracked = keyof typeof tracked;
type Counts = Record<Tracked, number>;

/** Objects of each tracked class still reachable, after a full GC (queryObjects collects garbage first). */
function liveObjects(): Counts {
  // queryObjects is marked experimental and says so once on stderr; the counts are all the test needs.
  const emitWarning = process.emitWarning;
  process.emitWarning = (() => {}) as typeof process.emitWarning;
  try {
    const out = {} as Counts;
    for (const [name, ctor] of Object.entries(tracked)) out[name as Tracked] = v8.queryObjects(ctor as new (...args: never[]) => unknown, { format: 'count' }) as number;
    return out;
  } finally {
    process.emitWarning = emitWarning;
  }
}

/** Native handles and timers the process holds, by kind (TCPSocketWrap, Timeout, ...). */
function activeResources(): Record<string, number> {
  const out: Record<string, number> = {};
  for (const kind of process.getActiveResourcesInfo()) out[kind] = (out[kind] ?? 0) + 1;
  return out;
}

/** Waits (up to `timeoutMs`) until no more timers and sockets are open than in `limit`; the last counts either way. */
async function settledResources(limit: Record<string, number>, timeoutMs = 3000): Promise<Record<string, number>> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const now = activeResources();
    const within = (now['Timeout'] ?? 0) <= (limit['Timeout'] ?? 0) && (now['TCPSocketWrap'] ?? 0) <= (limit['TCPSocketWrap'] ?? 0);
    if (within || Date.now() > until) return now;
    await sleep(50);
  }
}

/**
 * Waits until no tracked class has more live objects than `limit` allows (closing sockets and freeing parsers
 * take a few turns of the event loop), and returns the last counts either way.
 */
async function settledCounts(limit: Partial<Counts>, timeoutMs = 8000): Promise<Counts> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const counts = liveObjects();
    const within = (Object.keys(limit) as Tracked[]).every((k) => counts[k] <= limit[k]!);
    if (within || Date.now() > until) return counts;
    await sleep(100);
  }
}

/** Every limit as `baseline + slack` for the named classes. */
function atMost(baseline: Counts, names: Tracked[], slack = 0): Partial<Counts> {
  return Object.fromEntries(names.map((n) => [n, baseline[n] + slack]));
}

/**
 * A request on a fresh connection, closed by the client once the answer is in (or at `abortAfter` bytes of it);
 * resolves with the first bytes of what came back once the connection has closed.
 */
async function oneShot(port: number, head: string, body?: Buffer, options: { abortAfterBytes?: number; keepAlive?: boolean; abortAfterWrite?: boolean } = {}): Promise<string> {
  const c = await RawConnection.open(port);
  c.write(head);
  if (body) c.write(body);
  if (options.abortAfterWrite) {
    await sleep(5);
    c.destroy();
  } else if (options.abortAfterBytes !== undefined) {
    await c.receivedAtLeast(options.abortAfterBytes);
    c.destroy();
  } else if (options.keepAlive) {
    // A keep-alive client that leaves after one answer (the proxy sees EOF, not a request).
    await c.readResponse();
    c.end();
  }
  await c.closed;
  return c.text.slice(0, 12);
}

/** Opens a connection, writes a head and part of a body, and resets the connection once `ready` says so. */
async function abortMidBody(port: number, head: string, part: Buffer, ready: () => boolean): Promise<void> {
  const c = await RawConnection.open(port);
  c.write(head);
  c.write(part);
  while (!ready() && !c.ended) await sleep(2);
  c.destroy();
  await c.closed;
}

/** Runs `count` tasks, `concurrency` at a time. */
async function churn(count: number, concurrency: number, task: (i: number) => Promise<unknown>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < count) await task(next++);
    }),
  );
}

function listen(server: net.Server): Promise<string> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(`http://127.0.0.1:${(server.address() as AddressInfo).port}`)));
}

function close(server: net.Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

describe('proxy: churned connections are released', function () {
  this.timeout(30_000);
  let proxy: TestProxy | undefined;
  let upstream: net.Server | undefined;

  afterEach(async () => {
    await proxy?.close(500);
    proxy = undefined;
    if (upstream) {
      (upstream as http.Server).closeAllConnections?.();
      await close(upstream);
    }
    upstream = undefined;
  });

  it('clients churning (a new connection per request, aborts mid-body and mid-answer, refused requests) leave no connection, request or exchange alive', async () => {
    const bodyStarted = new Set<string>();
    const server = http.createServer((req, res) => {
      if (req.headers.authorization !== `Bearer ${TOKEN}`) {
        res.writeHead(401, { 'content-length': 0 }).end();
        return;
      }
      const id = String(req.headers['x-request-id'] ?? '');
      req.on('data', () => bodyStarted.add(id));
      req.on('error', () => {});
      res.on('error', () => {});
      if (req.url?.startsWith('/big')) {
        // Larger than the socket buffers: the client leaves while the answer is still being written.
        res.writeHead(200, { 'content-length': 4 * 1024 * 1024 });
        res.end(Buffer.alloc(4 * 1024 * 1024, 1));
        return;
      }
      req.on('end', () => res.end('{}'));
    });
    upstream = server;
    proxy = await startTestProxy(await listen(server), settings, env);
    const port = proxy.address.port;

    const get = (path: string) => `GET ${path} HTTP/1.1\r\nHost: kvx\r\n`;
    await oneShot(port, `${get('/warm')}Connection: close\r\n\r\n`);
    await sleep(50);
    const baseline = liveObjects();
    const resources = activeResources();

    const answers: string[] = [];
    await churn(600, 16, async (i) => {
      switch (i % 6) {
        case 0:
          answers.push(await oneShot(port, `${get(`/close/${i}`)}Connection: close\r\n\r\n`));
          break;
        case 1:
          answers.push(await oneShot(port, `${get(`/keepalive/${i}`)}\r\n`, undefined, { keepAlive: true }));
          break;
        case 2: {
          const id = `up-${i}`;
          const head = `PUT /upload/${i} HTTP/1.1\r\nHost: kvx\r\nX-Request-Id: ${id}\r\nContent-Length: 1000000\r\n\r\n`;
          await abortMidBody(port, head, Buffer.alloc(100_000, 2), () => bodyStarted.has(id));
          break;
        }
        case 3:
          await oneShot(port, `${get(`/big/${i}`)}\r\n`, undefined, { abortAfterBytes: 1 });
          break;
        case 4:
          // Refused before forwarding, with a body the proxy never reads.
          answers.push(await oneShot(port, `POST /a/../b HTTP/1.1\r\nHost: kvx\r\nContent-Length: 200000\r\n\r\n`, Buffer.alloc(200_000, 4), { keepAlive: true }));
          break;
        default:
          // Mid-head: the client leaves before the request is complete.
          await oneShot(port, 'GET /partial HTTP/1.1\r\nHost: kv', undefined, { abortAfterWrite: true });
          break;
      }
    });
    expect(answers.filter((a) => a.startsWith('HTTP/1.1 200')).length, 'plain requests answered').to.equal(200);
    expect(answers.filter((a) => a.startsWith('HTTP/1.1 400')).length, 'refused requests answered').to.equal(100);

    const names: Tracked[] = ['ClientConnection', 'ClientRequest', 'Exchange', 'UpstreamRequest'];
    const counts = await settledCounts(atMost(baseline, names));
    for (const name of names) expect(counts[name], `${name} objects alive after the clients left (baseline ${baseline[name]})`).to.be.at.most(baseline[name]);
    // Upstream connections may stay pooled for reuse, but never more of them than the pool allows.
    expect(counts.UpstreamConnection).to.be.at.most(baseline.UpstreamConnection + 16);
    const after = activeResources();
    expect(after['Timeout'] ?? 0, 'timers').to.be.at.most(resources['Timeout'] ?? 0);
    expect(after['TCPSocketWrap'] ?? 0, 'sockets').to.be.at.most((resources['TCPSocketWrap'] ?? 0) + 16);
  });

  it('an upstream refusing connections under retrying clients leaves no upstream connection, request, exchange or connect timer alive', async () => {
    // A port that refuses: bound once, then closed.
    const probe = net.createServer();
    const refusing = await listen(probe);
    await close(probe);
    proxy = await startTestProxy(refusing, settings, env);
    const port = proxy.address.port;
    await oneShot(port, 'GET /warm HTTP/1.1\r\nHost: kvx\r\nConnection: close\r\n\r\n');
    await sleep(50);
    const baseline = liveObjects();
    const resources = activeResources();

    // Each client tries three times, on a new connection each time; every attempt gets a 502.
    const statuses: string[] = [];
    await churn(150, 16, async (i) => {
      for (let attempt = 0; attempt < 3; attempt++) {
        const body = i % 2 === 0 ? Buffer.alloc(20_000, 5) : undefined;
        const head = body
          ? `POST /api/2.0/mlflow/runs/log-batch HTTP/1.1\r\nHost: kvx\r\nConnection: close\r\nContent-Length: ${body.length}\r\n\r\n`
          : `GET /api/2.0/mlflow/runs/get?run_id=${i} HTTP/1.1\r\nHost: kvx\r\nConnection: close\r\n\r\n`;
        statuses.push(await oneShot(port, head, body));
      }
    });
    expect(statuses.filter((s) => s.startsWith('HTTP/1.1 502')).length).to.equal(450);

    const names: Tracked[] = ['ClientConnection', 'ClientRequest', 'Exchange', 'UpstreamConnection', 'UpstreamRequest'];
    const counts = await settledCounts(atMost(baseline, names));
    for (const name of names) expect(counts[name], `${name} objects alive after the clients left (baseline ${baseline[name]})`).to.be.at.most(baseline[name]);
    // A lingering client connection closes when its client's FIN arrives, a few turns after the objects are gone.
    const after = await settledResources(resources);
    expect(after['Timeout'] ?? 0, 'timers').to.be.at.most(resources['Timeout'] ?? 0);
    expect(after['TCPSocketWrap'] ?? 0, 'sockets').to.be.at.most(resources['TCPSocketWrap'] ?? 0);
  });

  it('an upstream that accepts and drops every connection leaves no upstream connection, request or exchange alive', async () => {
    const server = net.createServer((socket) => {
      socket.on('error', () => {});
      // Reads the request head, then closes without answering (half the time with a reset).
      socket.once('data', () => (Math.random() < 0.5 ? socket.destroy() : socket.end()));
    });
    upstream = server;
    proxy = await startTestProxy(await listen(server), settings, env);
    const port = proxy.address.port;
    await oneShot(port, 'GET /warm HTTP/1.1\r\nHost: kvx\r\nConnection: close\r\n\r\n');
    await sleep(50);
    const baseline = liveObjects();

    const statuses: string[] = [];
    await churn(300, 16, async (i) => {
      const body = i % 3 === 0 ? Buffer.alloc(100_000, 6) : undefined;
      const head = body
        ? `PUT /artifact/${i} HTTP/1.1\r\nHost: kvx\r\nConnection: close\r\nContent-Length: ${body.length}\r\n\r\n`
        : `GET /get/${i} HTTP/1.1\r\nHost: kvx\r\nConnection: close\r\n\r\n`;
      statuses.push(await oneShot(port, head, body));
    });
    expect(statuses.filter((s) => s.startsWith('HTTP/1.1 502')).length).to.equal(300);

    const names: Tracked[] = ['ClientConnection', 'ClientRequest', 'Exchange', 'UpstreamConnection', 'UpstreamRequest'];
    const counts = await settledCounts(atMost(baseline, names));
    for (const name of names) expect(counts[name], `${name} objects alive after the clients left (baseline ${baseline[name]})`).to.be.at.most(baseline[name]);
  });
});
