/**
 * Memory under hostile or careless clients, measured on a real kvx-proxy process: a request refused before
 * forwarding has its body read and dropped, never kept, however much the client sends; and the client still
 * gets its answer when it reads only after sending everything.
 */
import { expect } from 'chai';
import { RawConnection, parseResponses } from '../helpers/raw-http.js';
import { Harness } from './support/harness.js';
import { pollUntil } from './support/proxy-process.js';
import { wireOnly } from '../helpers/engine.js';

const MB = 1024 * 1024;
const BURST = 'after a burst of 500 connections';

interface Streamed {
  /** Everything the proxy wrote back, read only after the whole body was sent (as most clients do). */
  answer: string;
  sent: number;
  error: string | undefined;
  /** The proxy's largest RSS while the body streamed in, over its RSS before. */
  rssGrowth: number;
}

/**
 * Sends `head` and then `bodyBytes` of body as fast as the proxy reads them, sampling the proxy's RSS, and
 * only then reads the answer and ends the connection.
 */
async function streamBody(h: Harness, head: string, bodyBytes: number): Promise<Streamed> {
  const before = h.proxy.rssBytes();
  let peak = before;
  const sampler = setInterval(() => {
    peak = Math.max(peak, h.proxy.rssBytes());
  }, 10);
  const c = await RawConnection.open(h.proxy.port);
  c.socket.pause();
  c.write(head);
  const sent = await c.writeRepeated(bodyBytes, Buffer.alloc(MB, 0x61));
  c.socket.resume();
  c.end();
  const { error } = await c.closed;
  clearInterval(sampler);
  peak = Math.max(peak, h.proxy.rssBytes());
  return { answer: c.text, sent, error, rssGrowth: peak - before };
}

/**
 * One keep-alive connection sending `count` pipelined GETs; resolves once it has closed with how each was
 * answered: its status, or how the connection failed before it.
 */
async function pipelined(port: number, count: number): Promise<string[]> {
  const c = await RawConnection.open(port, { timeoutMs: 30_000 });
  c.write('GET /bytes/2000 HTTP/1.1\r\nHost: kvx\r\n\r\n'.repeat(count));
  const outcomes: string[] = [];
  try {
    while (outcomes.length < count) {
      const answer = await c.readResponse();
      outcomes.push(answer.status === 200 ? '200' : `${answer.status} ${answer.body.toString('utf8', 0, 160).replace(/\d+/g, 'N')}`);
    }
  } catch (err) {
    outcomes.push(`then ${(err as Error).message.slice(0, 160)} (${count - outcomes.length} unanswered)`);
  }
  c.destroy();
  await c.closed;
  return outcomes;
}

/** How many of each outcome, most frequent first. */
function tally(outcomes: string[]): string {
  const counts = new Map<string, number>();
  for (const o of outcomes) counts.set(o, (counts.get(o) ?? 0) + 1);
  return [...counts].sort((a, b) => b[1] - a[1]).map(([o, n]) => `${n} × ${o}`).join('; ');
}

describe('faults: memory', function () {
  this.timeout(60_000);
  let h: Harness;

  // A fresh process per case: memory a case freed may stay resident and would hide the next case's growth.
  beforeEach(async function () {
    // The burst's 20,000 requests over 500 connections wait their turn for 256 upstream connections, behind an
    // upstream in this process: a host that stalls the suite past the harness's 1.5 s timeouts gets 504s (seen
    // in CI: 38 of them). That case is about memory, so it allows the waits a user's configuration would.
    const burst = this.currentTest?.title.startsWith(BURST) === true;
    h = await Harness.start({
      label: 'faults-memory',
      ...(burst ? { env: { KVX_UPSTREAM_HEADERS_TIMEOUT_MS: '30000', KVX_UPSTREAM_IDLE_TIMEOUT_MS: '30000', KVX_SERVER_HEADERS_TIMEOUT_MS: '30000' } } : {}),
    });
  });
  afterEach(async () => {
    await h?.stop();
  });

  wireOnly('a refused body: node:http reads and drops it through its own buffers (RSS grows with it) and keeps the connection')('a request refused before forwarding streams a 200 MB body: the proxy keeps none of it, and the client that reads only afterwards gets its 400', async () => {
    const size = 200 * MB;
    const upstreamBefore = h.upstream.requests.length;
    const result = await streamBody(h, `POST /api/2.0/mlflow-artifacts/artifacts/../../etc HTTP/1.1\r\nHost: kvx\r\nContent-Length: ${size}\r\n\r\n`, size);
    expect(result.error, 'the client could send its whole body').to.equal(undefined);
    expect(result.sent).to.equal(size);
    const answer = parseResponses(result.answer)[0];
    expect(answer?.status, result.answer.slice(0, 300)).to.equal(400);
    expect(answer?.value('connection')).to.equal('close');
    expect(result.rssGrowth, `proxy RSS grew by ${(result.rssGrowth / MB).toFixed(1)} MB while it dropped a 200 MB body`).to.be.below(24 * MB);
    expect(h.upstream.requests.slice(upstreamBefore), 'nothing reached upstream').to.deep.equal([]);
    await h.assertHealthy('after a refused 200 MB body');
  });

  for (const [kind, head] of [
    ['absolute-form target', 'PUT http://elsewhere.example/upload HTTP/1.1\r\nHost: elsewhere.example\r\n'],
    ['TRACE', 'TRACE /api/2.0/mlflow/experiments/list HTTP/1.1\r\nHost: kvx\r\n'],
    ['protocol upgrade', 'POST /api/2.0/mlflow/runs/log-batch HTTP/1.1\r\nHost: kvx\r\nConnection: upgrade\r\nUpgrade: h2c\r\n'],
    ['encoded dot segment', 'PUT /api/2.0/mlflow-artifacts/artifacts/%2e%2e/x HTTP/1.1\r\nHost: kvx\r\n'],
  ] as const) {
    wireOnly('a refused body: node:http reads and drops it through its own buffers (RSS grows with it) and keeps the connection')(`${kind} with a 64 MB body: answered with an error, body dropped, memory flat`, async () => {
      const size = 64 * MB;
      const result = await streamBody(h, `${head}Content-Length: ${size}\r\n\r\n`, size);
      expect(result.sent).to.equal(size);
      const status = parseResponses(result.answer)[0]?.status ?? 0;
      expect(status, result.answer.slice(0, 300)).to.be.within(400, 599);
      expect(result.rssGrowth, `proxy RSS grew by ${(result.rssGrowth / MB).toFixed(1)} MB`).to.be.below(24 * MB);
      await h.assertHealthy(`after a refused body (${kind})`);
    });
  }

  it(`${BURST} the proxy gives its memory back once every client has left`, async () => {
    const heapTotal = () => h.metric('kvx_nodejs_heap_size_total_bytes');
    const rest = h.proxy.rssBytes();
    const restHeap = await heapTotal();
    const outcomes = (await Promise.all(Array.from({ length: 500 }, () => pipelined(h.proxy.port, 40)))).flat();
    expect(outcomes.filter((o) => o === '200').length, tally(outcomes)).to.equal(500 * 40);
    const peak = h.proxy.rssBytes();
    const peakHeap = await heapTotal();
    // Its pooled upstream connections go too (as an upstream's keep-alive timeout would close them); from here
    // the proxy is idle: no request starts and no client connection opens or closes.
    h.upstream.dropIdle();
    // Both at once: a collection of V8's own can bring the heap back before the idle reduction returns the rest.
    // Most of what the burst added comes back, and what stays (native memory the allocator keeps for reuse) is
    // bounded from the rest level: 10-12.5 MB on the wire engine, with V8's own old-generation growing factor
    // (peaks of 121-123 MB) and with the one kvx sets (106-110 MB), 11-14 MB on the node engine (204-229 MB). A
    // bound taken from the peak instead would depend on how high V8 let the burst go.
    const returned = (rss: number) => rss - rest < (peak - rest) / 2 && rss < rest + 18 * MB;
    const back = (m: { heap: number; rss: number }) => m.heap < restHeap + 8 * MB && returned(m.rss);
    const { heap: settledHeap, rss: settled } = await pollUntil(async () => ({ heap: await heapTotal(), rss: h.proxy.rssBytes() }), back, 15_000, 500);
    const story = `RSS at rest ${(rest / MB).toFixed(1)} MB, after the burst ${(peak / MB).toFixed(1)} MB, once idle ${(settled / MB).toFixed(1)} MB; V8 heap ${(restHeap / MB).toFixed(1)} → ${(peakHeap / MB).toFixed(1)} → ${(settledHeap / MB).toFixed(1)} MB`;
    expect(settledHeap, story).to.be.below(restHeap + 8 * MB);
    // What stays is native memory the allocator keeps for reuse (see the README); most of the burst's comes back.
    expect(peak - rest, `${story}: the burst did not grow the proxy, so this case measures nothing`).to.be.above(20 * MB);
    expect(returned(settled), story).to.equal(true);
  });
});
