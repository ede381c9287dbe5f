/**
 * The churn shape of the soak: connections that come and go instead of a few kept alive. Every request opens a
 * new connection; clients abort mid-body and mid-answer, leave mid-head, send large bodies to refused paths;
 * and the upstream, behind a flaky relay, takes turns answering, dropping every new connection and refusing
 * connections altogether. Each answer must be the real one or an MLflow-shaped error, the refused requests get
 * their 400, and the proxy's RSS, V8 heap and open fds must not grow: during the run (early against late) and
 * once it is over (after the proxy's idle memory reduction, against its start).
 */
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import http from 'node:http';
import { performance } from 'node:perf_hooks';
import type { FakeMlflow } from '../fakes/mlflow/index.js';
import { RawConnection } from '../helpers/raw-http.js';
import type { RawResponse } from '../helpers/raw-http.js';
import type { startCredWorld } from '../faults/support/google.js';
import { SHIPPED_NODE_OPTIONS, pollUntil, spawnProxy } from '../faults/support/proxy-process.js';
import type { ProxyProcess } from '../faults/support/proxy-process.js';

export interface ChurnOptions {
  durationS: number;
  concurrency: number;
  /** Size of each body sent to a refused path. */
  refusedBodyBytes: number;
  sampleMs: number;
  label: string;
}

type Kind = 'get' | 'post-leave' | 'abort-body' | 'abort-answer' | 'refused-body' | 'abort-head';

interface Outcome {
  kind: Kind;
  status: number;
  problem?: string;
}

interface Sample {
  t: number;
  rss: number;
  heapUsed: number;
  heapTotal: number;
  fds: number;
}

type Mode = 'pass' | 'drop' | 'refuse';

/**
 * A TCP relay in front of the fake MLflow that changes its behaviour on a cycle: `pass` pipes connections through,
 * `drop` accepts new connections and closes them (half with a reset) as soon as the request arrives, `refuse` stops
 * listening so connections are refused. Connections already piped carry on whatever the mode.
 */
class FlakyRelay {
  mode: Mode = 'pass';
  port = 0;
  readonly counts: Record<Mode, number> = { pass: 0, drop: 0, refuse: 0 };
  private server: net.Server | undefined;
  private readonly sockets = new Set<net.Socket>();
  private timer: NodeJS.Timeout | undefined;
  private phase = 0;

  constructor(private readonly target: number) {}

  async start(): Promise<void> {
    await this.listen(0);
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Cycles pass (3 s), drop (1 s), pass (2 s), refuse (1 s). */
  startCycling(): void {
    const plan: [Mode, number][] = [
      ['pass', 3000],
      ['drop', 1000],
      ['pass', 2000],
      ['refuse', 1000],
    ];
    const step = () => {
      const [mode, ms] = plan[this.phase++ % plan.length]!;
      void this.setMode(mode).then(() => {
        this.timer = setTimeout(step, ms);
      });
    };
    step();
  }

  async stopCycling(): Promise<void> {
    clearTimeout(this.timer);
    await this.setMode('pass');
  }

  async setMode(mode: Mode): Promise<void> {
    if (mode === this.mode) return;
    const wasRefusing = this.mode === 'refuse';
    this.mode = mode;
    if (mode === 'refuse') await this.unlisten();
    else if (wasRefusing) await this.listen(this.port);
  }

  private listen(port: number): Promise<void> {
    const server = net.createServer((socket) => this.accept(socket));
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => {
        this.port = (server.address() as AddressInfo).port;
        resolve();
      });
    });
  }

  private unlisten(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    return new Promise((resolve) => (server ? server.close(() => resolve()) : resolve()));
  }

  private accept(socket: net.Socket): void {
    socket.on('error', () => {});
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
    if (this.mode !== 'pass') {
      this.counts.drop += 1;
      const reset = this.counts.drop % 2 === 0;
      socket.once('data', () => (reset ? socket.resetAndDestroy() : socket.end()));
      return;
    }
    this.counts.pass += 1;
    const upstream = net.connect(this.target, '127.0.0.1');
    upstream.on('error', () => socket.destroy());
    socket.on('close', () => upstream.destroy());
    upstream.on('close', () => socket.destroy());
    socket.pipe(upstream);
    upstream.pipe(socket);
  }

  async close(): Promise<void> {
    clearTimeout(this.timer);
    for (const s of this.sockets) s.destroy();
    await this.unlisten();
  }
}

interface RawAnswer {
  /** 0 without a whole, well-formed answer. */
  status: number;
  /** The answer's body as text ('' without one). */
  body: string;
  /** Everything received, for describing a problem. */
  text: string;
  /** The socket's error code, or why no answer could be read. */
  error?: string;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** The answer on `c`, or why there is none, without throwing (a churn client records problems, it does not stop). */
async function answerOn(c: RawConnection): Promise<{ response?: RawResponse; failure?: string }> {
  try {
    return { response: await c.readResponse() };
  } catch (err) {
    return { failure: (err as Error).message };
  }
}

async function answered(c: RawConnection, outcome: { response?: RawResponse; failure?: string }): Promise<RawAnswer> {
  const { error } = await c.closed;
  const problem = error ?? outcome.failure;
  return { status: outcome.response?.status ?? 0, body: outcome.response?.text ?? '', text: c.text, ...(problem !== undefined ? { error: problem } : {}) };
}

/** One request on a fresh connection; the client leaves after the answer, or at the point `leave` names. */
async function fresh(
  port: number,
  head: string,
  body: Buffer | undefined,
  leave: 'after-answer' | 'mid-answer' | 'mid-body' | 'mid-head' = 'after-answer',
): Promise<RawAnswer> {
  const c = await RawConnection.open(port, { timeoutMs: 30_000 });
  c.write(head);
  if (leave === 'after-answer') {
    if (body) c.write(body);
    const outcome = await answerOn(c);
    c.end();
    return answered(c, outcome);
  }
  if (leave === 'mid-head') await sleep(2);
  else if (leave === 'mid-body') {
    // Part of the body, then a reset once the proxy has had time to start forwarding it.
    c.write(body!);
    await sleep(20);
  } else await c.receivedAtLeast(1).catch(() => false);
  c.destroy();
  return answered(c, {});
}

/** Streams `bytes` of body at a refused path as fast as the proxy takes them, then reads the answer. */
async function refusedUpload(port: number, path: string, bytes: number): Promise<RawAnswer> {
  const c = await RawConnection.open(port, { allowHalfOpen: true, timeoutMs: 30_000 });
  c.socket.pause();
  c.write(`POST ${path} HTTP/1.1\r\nHost: kvx\r\nContent-Type: application/octet-stream\r\nContent-Length: ${bytes}\r\n\r\n`);
  await c.writeRepeated(bytes, Buffer.alloc(256 * 1024, 0x62));
  c.socket.resume();
  const outcome = await answerOn(c);
  c.end();
  return answered(c, outcome);
}

function isMlflowError(body: string): boolean {
  try {
    const parsed = JSON.parse(body) as { error_code?: unknown; message?: unknown };
    return typeof parsed.error_code === 'string' && typeof parsed.message === 'string';
  } catch {
    return false;
  }
}

/** A page of the admin listener (metrics, readyz) as text. */
export function fetchText(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    http
      .get(url, { agent: false }, (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => resolve(text));
        res.on('error', reject);
      })
      .on('error', reject);
  });
}

/** One sample's value from Prometheus text; NaN when absent. */
export function metricValue(text: string, name: string): number {
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})? ([0-9.eE+-]+)$`, 'm').exec(text);
  return m ? Number(m[1]) : NaN;
}

const mb = (bytes: number): string => (bytes / 1024 / 1024).toFixed(1);
const MB = 1024 * 1024;

/** How the proxy is not back where it started once idle, give or take what the allocator keeps for reuse. */
function idleProblems(start: Sample, settled: Sample): string[] {
  const problems: string[] = [];
  if (settled.heapTotal > start.heapTotal + 8 * MB) problems.push(`V8 heap ${mb(settled.heapTotal)} MB once idle, ${mb(start.heapTotal)} MB at the start`);
  if (settled.heapUsed > start.heapUsed + 8 * MB) problems.push(`V8 heap used ${mb(settled.heapUsed)} MB once idle, ${mb(start.heapUsed)} MB at the start`);
  if (settled.rss > start.rss + 32 * MB) problems.push(`RSS ${mb(settled.rss)} MB once idle, ${mb(start.rss)} MB at the start`);
  if (settled.fds > start.fds + 4) problems.push(`open fds ${settled.fds} once idle, ${start.fds} at the start`);
  return problems;
}

function median(values: number[]): number {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  return v.length ? v[Math.floor(v.length / 2)]! : NaN;
}

export async function runChurn(opts: ChurnOptions, world: Awaited<ReturnType<typeof startCredWorld>>, mlflow: FakeMlflow): Promise<number> {
  const relay = new FlakyRelay(Number(new URL(mlflow.url).port));
  await relay.start();
  const { env, authArgs } = world.iamSetup();
  let proxy: ProxyProcess | undefined;
  try {
    proxy = await spawnProxy({
      label: 'soak-churn',
      args: ['--upstream', relay.url, ...authArgs, '--port', '0', '--admin-port', '0'],
      // Request log lines for a few hundred thousand requests are not what this shape checks. The Node flags are
      // the shipped ones, as the executable, the image and `npm run proxy` run with.
      // The churn clients send `Host: kvx`, as the fault cases do.
      env: { ...env, KVX_SERVER_ALLOWED_HOSTS: 'kvx', KVX_LOG_REQUESTS: 'false', KVX_UPSTREAM_CONNECT_TIMEOUT_MS: '2000', NODE_OPTIONS: SHIPPED_NODE_OPTIONS },
    });
    return await churn(opts, proxy, relay, mlflow);
  } finally {
    await proxy?.stop();
    await relay.close();
  }
}

async function churn(opts: ChurnOptions, proxy: ProxyProcess, relay: FlakyRelay, mlflow: FakeMlflow): Promise<number> {
  const port = proxy.port;
  const json = (method: string, path: string, body: unknown) => {
    const data = Buffer.from(JSON.stringify(body));
    return { head: `${method} ${path} HTTP/1.1\r\nHost: kvx\r\nContent-Type: application/json\r\nContent-Length: ${data.length}\r\n\r\n`, data };
  };
  const call = async (method: string, path: string, body: unknown) => {
    const { head, data } = json(method, path, body);
    const a = await fresh(port, head, data);
    if (a.status !== 200) throw new Error(`churn set-up ${method} ${path}: ${a.status} ${a.text.slice(0, 200)}`);
    return JSON.parse(a.body) as Record<string, unknown>;
  };
  const exp = (await call('POST', '/api/2.0/mlflow/experiments/create', { name: `churn-${Date.now()}` })) as { experiment_id: string };
  const run = (await call('POST', '/api/2.0/mlflow/runs/create', { experiment_id: exp.experiment_id, start_time: Date.now() })) as { run: { info: { run_id: string } } };
  const runId = run.run.info.run_id;
  const artifact = `/api/2.0/mlflow-artifacts/artifacts/${exp.experiment_id}/${runId}/artifacts/churn/big.bin`;
  const big = Buffer.alloc(2 * 1024 * 1024, 0x63);
  const put = await fresh(port, `PUT ${artifact} HTTP/1.1\r\nHost: kvx\r\nContent-Type: application/octet-stream\r\nContent-Length: ${big.length}\r\n\r\n`, big);
  if (put.status !== 200) throw new Error(`churn set-up upload: ${put.status}`);

  const samples: Sample[] = [];
  const sampleOnce = async (): Promise<Sample> => {
    let text = '';
    try {
      text = await fetchText(`${proxy.adminUrl}/metrics`);
    } catch {
      /* a gap in the heap figures */
    }
    const s = {
      t: performance.now(),
      rss: proxy.rssBytes(),
      heapUsed: metricValue(text, 'kvx_nodejs_heap_size_used_bytes'),
      heapTotal: metricValue(text, 'kvx_nodejs_heap_size_total_bytes'),
      fds: proxy.fds().total,
    };
    samples.push(s);
    return s;
  };
  const line = (label: string, s: Sample) =>
    process.stdout.write(`churn ${label.padEnd(8)} t=${((s.t - started) / 1000).toFixed(0).padStart(4)} s  RSS ${mb(s.rss).padStart(6)} MB  heap used ${mb(s.heapUsed).padStart(5)} / total ${mb(s.heapTotal).padStart(5)} MB  fds ${s.fds}\n`);

  let started = performance.now();
  const start = await sampleOnce();
  started = start.t;
  line('start', start);

  const deadline = started + opts.durationS * 1000;
  const outcomes: Outcome[] = [];
  let middle: Sample | undefined;
  let progressAt = started + Math.max(10_000, (opts.durationS * 1000) / 10);
  const sampler = setInterval(() => {
    void sampleOnce().then((s) => {
      if (middle === undefined && s.t >= started + (opts.durationS * 1000) / 2) {
        middle = s;
        line('middle', s);
      } else if (s.t >= progressAt) {
        progressAt += Math.max(10_000, (opts.durationS * 1000) / 10);
        line('progress', s);
      }
    });
    // The fake keeps a record of every request; this shape does not read it.
    mlflow.requests.length = 0;
    for (const r of mlflow.store.runs.values()) r.metrics.clear();
  }, opts.sampleMs);
  relay.startCycling();

  let n = 0;
  const worker = async (): Promise<void> => {
    while (performance.now() < deadline) {
      const i = n++;
      const roll = i % 20;
      let o: Outcome;
      if (roll < 8) {
        const a = await fresh(port, `GET /api/2.0/mlflow/runs/get?run_id=${runId} HTTP/1.1\r\nHost: kvx\r\nConnection: close\r\n\r\n`, undefined);
        o = { kind: 'get', status: a.status };
        if (a.status === 200 && !a.body.includes(runId)) o.problem = 'answer is not this run';
        else if (a.status !== 200 && !isMlflowError(a.body)) o.problem = `${a.status} not in MLflow's error shape (${a.error ?? ''}) ${JSON.stringify(a.text.slice(0, 120))}`;
      } else if (roll < 11) {
        // A keep-alive client that leaves after one answer.
        const { head, data } = json('POST', '/api/2.0/mlflow/runs/log-batch', { run_id: runId, metrics: [{ key: 'loss', value: i, timestamp: Date.now(), step: i }] });
        const a = await fresh(port, head, data);
        o = { kind: 'post-leave', status: a.status };
        if (a.status === 200 && a.body !== '{}') o.problem = 'unexpected log-batch answer';
        else if (a.status !== 200 && !isMlflowError(a.body)) o.problem = `${a.status} not in MLflow's error shape (${a.error ?? ''}) ${JSON.stringify(a.text.slice(0, 120))}`;
      } else if (roll < 14) {
        const head = `PUT ${artifact.replace('big.bin', `abort-${i % 8}.bin`)} HTTP/1.1\r\nHost: kvx\r\nContent-Type: application/octet-stream\r\nContent-Length: ${4 * 1024 * 1024}\r\n\r\n`;
        await fresh(port, head, Buffer.alloc(256 * 1024, 0x64), 'mid-body');
        o = { kind: 'abort-body', status: 0 };
      } else if (roll < 16) {
        await fresh(port, `GET ${artifact} HTTP/1.1\r\nHost: kvx\r\n\r\n`, undefined, 'mid-answer');
        o = { kind: 'abort-answer', status: 0 };
      } else if (roll < 17) {
        const paths = ['/api/2.0/mlflow-artifacts/artifacts/../../etc/passwd', 'http://elsewhere.example/upload', '/api/2.0/mlflow/%2e%2e/x'];
        const a = await refusedUpload(port, paths[i % paths.length]!, opts.refusedBodyBytes);
        o = { kind: 'refused-body', status: a.status };
        if (a.status !== 400 && a.status !== 403) o.problem = `refused upload answered ${a.status} (${a.error ?? 'no error'})`;
        else if (!isMlflowError(a.body)) o.problem = 'refusal not in MLflow error shape';
      } else {
        await fresh(port, 'POST /api/2.0/mlflow/runs/log-batch HTTP/1.1\r\nHost: kvx\r\nContent-Le', undefined, 'mid-head');
        o = { kind: 'abort-head', status: 0 };
      }
      outcomes.push(o);
    }
  };
  await Promise.all(Array.from({ length: opts.concurrency }, () => worker()));
  const elapsedS = (performance.now() - started) / 1000;
  clearInterval(sampler);
  await relay.stopCycling();
  const end = await sampleOnce();
  line('end', end);
  middle ??= end;

  // Once idle (no request, no connection coming or going) the proxy reduces its memory; then it must be back
  // where it started, give or take what the allocator keeps for reuse.
  const clientsLeft = await pollUntil(
    () => proxy.connections().clients.length,
    (c) => c === 0,
    10_000,
  );
  // Waits for all that the verdict judges: a collection of V8's own can bring the heap back before the idle
  // reduction has returned the rest (seen in CI: the heap back to 26.4 MB while RSS was still 119.8 MB).
  // Pooled upstream connections close when the fake's keep-alive timeout (5 s) ends them.
  const settled = await pollUntil(() => sampleOnce(), (s) => idleProblems(start, s).length === 0, 20_000, 500);
  line('settled', settled);

  // ---------- verdict ----------
  const problems: string[] = [];
  for (const o of outcomes) if (o.problem) problems.push(`${o.kind}: ${o.problem}`);
  const kinds = (['get', 'post-leave', 'abort-body', 'abort-answer', 'refused-body', 'abort-head'] as Kind[]).map((k) => {
    const of = outcomes.filter((o) => o.kind === k);
    const statuses = new Map<number, number>();
    for (const o of of) statuses.set(o.status, (statuses.get(o.status) ?? 0) + 1);
    return `${k} ${of.length}${of.some((o) => o.status) ? ` (${[...statuses].map(([s, c]) => `${s}×${c}`).join(', ')})` : ''}`;
  });
  const okGets = outcomes.filter((o) => o.kind === 'get' && o.status === 200).length;
  if (okGets === 0) problems.push('no GET succeeded: the relay never passed traffic');
  if (relay.counts.drop === 0) problems.push('the relay never dropped a connection: the run was too short for the upstream faults');
  // The first fifth is warm-up: V8 sizes its young generation to the load.
  const during = samples.filter((s) => s.t > started && s.t <= end.t);
  const steady = during.slice(Math.floor(during.length / 5));
  const quarter = Math.max(1, Math.floor(steady.length / 4));
  const early = steady.slice(0, quarter);
  const late = steady.slice(-quarter);
  const rssEarly = median(early.map((s) => s.rss));
  const rssLate = median(late.map((s) => s.rss));
  const heapEarly = median(early.map((s) => s.heapUsed));
  const heapLate = median(late.map((s) => s.heapUsed));
  // A trend needs a run longer than V8's own warm-up; a short run is judged by where it settles.
  const trended = opts.durationS >= 60;
  if (trended && rssLate > rssEarly * 1.1 + 16 * MB) problems.push(`RSS grew during the run from ${mb(rssEarly)} to ${mb(rssLate)} MB`);
  if (trended && heapLate > heapEarly * 1.25 + 16 * MB) problems.push(`V8 heap used grew during the run from ${mb(heapEarly)} to ${mb(heapLate)} MB`);
  problems.push(...idleProblems(start, settled));
  if (clientsLeft > 0) problems.push(`${clientsLeft} client connections still open after the clients left`);
  if (!proxy.alive) problems.push(`the proxy exited: ${JSON.stringify(proxy.exit)}`);

  const rows: [string, string][] = [
    ['run', `churn (${opts.label}): ${elapsedS.toFixed(0)} s, ${opts.concurrency} clients, a new connection per request`],
    ['connections', `${outcomes.length} (${(outcomes.length / elapsedS).toFixed(0)}/s): ${kinds.join(', ')}`],
    ['upstream relay', `${relay.counts.pass} connections passed, ${relay.counts.drop} dropped, refusing 1 s in every 7`],
    ['refused bodies', `${outcomes.filter((o) => o.kind === 'refused-body').length} × ${mb(opts.refusedBodyBytes)} MB read and dropped`],
    ['proxy RSS', `start ${mb(start.rss)} MB, middle ${mb(middle.rss)} MB, end ${mb(end.rss)} MB, once idle ${mb(settled.rss)} MB; steady early ${mb(rssEarly)}, late ${mb(rssLate)} MB${trended ? '' : ' (not judged under 60 s)'}`],
    ['proxy V8 heap used / total', `start ${mb(start.heapUsed)} / ${mb(start.heapTotal)} MB, middle ${mb(middle.heapUsed)} / ${mb(middle.heapTotal)} MB, end ${mb(end.heapUsed)} / ${mb(end.heapTotal)} MB, once idle ${mb(settled.heapUsed)} / ${mb(settled.heapTotal)} MB`],
    ['proxy open fds', `start ${start.fds}, middle ${middle.fds}, end ${end.fds}, once idle ${settled.fds}`],
    ['verdict', problems.length === 0 ? 'PASS' : `FAIL (${problems.length} problems)`],
  ];
  return printVerdict(rows, problems);
}

/** A shape's result table and its problems on stdout; the exit code (1 with any problem). */
export function printVerdict(rows: readonly (readonly [string, string])[], problems: readonly string[]): number {
  const width = Math.max(...rows.map(([k]) => k.length));
  process.stdout.write(`\n| ${'measure'.padEnd(width)} | result |\n|${'-'.repeat(width + 2)}|--------|\n`);
  for (const [k, v] of rows) process.stdout.write(`| ${k.padEnd(width)} | ${v} |\n`);
  if (problems.length > 0) {
    process.stdout.write(`\nproblems:\n${problems.slice(0, 30).map((p) => `  - ${p}`).join('\n')}\n`);
    return 1;
  }
  return 0;
}
