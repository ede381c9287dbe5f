/**
 * Soak: a real kvx-proxy process with the google-iam provider (short-lived tokens from the Google fakes)
 * in front of the fake MLflow server behind an IAP-like gate, under a mixed MLflow-shaped load over many
 * keep-alive connections. Every request carries an id; the upstream's record proves that each request the
 * client saw succeed was processed exactly once with the same bytes, and that each failure was answered in
 * MLflow's error shape. RSS, fds, sockets and event-loop delay are sampled throughout. Then the churn shape
 * (test/soak/churn.ts): a new connection per request, aborts, refused large bodies and a flaky upstream, failing
 * on any growth of RSS, heap or fds.
 *
 *   npm run soak                  # full: mixed 180 s or 150 000 requests, 48 connections; churn 180 s, 32 clients
 *   npm run soak -- --short       # CI: mixed 15 s or 20 000 requests, 16 connections; churn 15 s (also KVX_SOAK_SHORT=1)
 *   npm run soak -- --duration 60 --requests 50000 --concurrency 32
 *   npm run soak -- --shape churn --duration 600    # one shape only (mixed or churn); --duration applies to each
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { cpus } from 'node:os';
import http from 'node:http';
import { performance } from 'node:perf_hooks';
import { startFakeMlflow } from '../fakes/mlflow/index.js';
import type { FakeMlflow } from '../fakes/mlflow/index.js';
import { startCredWorld } from '../faults/support/google.js';
import { SHIPPED_NODE_OPTIONS, pollUntil, spawnProxy } from '../faults/support/proxy-process.js';
import type { ProxyProcess } from '../faults/support/proxy-process.js';
import { findLeaks, record, transcriptStats } from '../faults/support/transcript.js';
import { fetchText, metricValue, printVerdict, runChurn } from './churn.js';
import type { ChurnOptions } from './churn.js';

interface Options {
  durationS: number;
  requests: number;
  concurrency: number;
  tokenLifetimeS: number;
  refreshBeforeS: number;
  sampleMs: number;
  label: string;
  shapes: ('mixed' | 'churn')[];
  churn: ChurnOptions;
}

function parseOptions(argv: string[]): Options {
  const short = argv.includes('--short') || process.env['KVX_SOAK_SHORT'] === '1';
  const label = short ? 'short' : 'full';
  const churn: ChurnOptions = short
    ? { durationS: 15, concurrency: 16, refusedBodyBytes: 8 * 1024 * 1024, sampleMs: 500, label }
    : { durationS: 180, concurrency: 32, refusedBodyBytes: 64 * 1024 * 1024, sampleMs: 1000, label };
  const shapes: Options['shapes'] = ['mixed', 'churn'];
  const opts: Options = short
    ? { durationS: 15, requests: 20_000, concurrency: 16, tokenLifetimeS: 5, refreshBeforeS: 2, sampleMs: 500, label, shapes, churn }
    : { durationS: 180, requests: 150_000, concurrency: 48, tokenLifetimeS: 20, refreshBeforeS: 5, sampleMs: 1000, label, shapes, churn };
  const num = (flag: string): number | undefined => {
    const i = argv.indexOf(flag);
    if (i === -1) return undefined;
    const v = Number(argv[i + 1]);
    if (!Number.isFinite(v) || v <= 0) throw new Error(`${flag} needs a positive number`);
    return v;
  };
  opts.durationS = num('--duration') ?? opts.durationS;
  opts.requests = num('--requests') ?? opts.requests;
  opts.concurrency = num('--concurrency') ?? opts.concurrency;
  opts.tokenLifetimeS = num('--token-lifetime') ?? opts.tokenLifetimeS;
  churn.durationS = num('--duration') ?? churn.durationS;
  const shapeAt = argv.indexOf('--shape');
  if (shapeAt !== -1) {
    const shape = argv[shapeAt + 1];
    if (shape !== 'mixed' && shape !== 'churn') throw new Error('--shape needs mixed or churn');
    opts.shapes = [shape];
  }
  return opts;
}

type Op = 'log-batch' | 'run-get' | 'artifact-put' | 'artifact-get';

interface Outcome {
  id: string;
  op: Op;
  status: number;
  sent: number;
  received: number;
  ms: number;
  /** Why the answer is wrong although its status says success; or the network error. */
  problem?: string;
  errorShape?: boolean;
}

interface Sample {
  t: number;
  rss: number;
  fds: number;
  tcp: number;
  lagP99: number;
  lagMax: number;
  inFlight: number;
  heapUsed: number;
  external: number;
}

/** Artifact slots: fixed path, size and content, so any GET can be checked and disk use stays bounded. */
const SIZES = [1024, 1024, 1024, 1024, 16 * 1024, 64 * 1024, 64 * 1024, 256 * 1024, 1024 * 1024, 4 * 1024 * 1024];

async function main(): Promise<number> {
  const opts = parseOptions(process.argv.slice(2));
  const world = await startCredWorld(opts.tokenLifetimeS);
  const mlflow = await startFakeMlflow({ gate: world.gate });
  try {
    let code = 0;
    if (opts.shapes.includes('mixed')) code = Math.max(code, await mixed(opts, world, mlflow));
    if (opts.shapes.includes('churn')) code = Math.max(code, await runChurn(opts.churn, world, mlflow));
    return code;
  } finally {
    await mlflow.close();
    await world.close();
  }
}

async function mixed(opts: Options, world: Awaited<ReturnType<typeof startCredWorld>>, mlflow: FakeMlflow): Promise<number> {
  const { env, authArgs } = world.iamSetup();
  let proxy: ProxyProcess | undefined;
  const agent = new http.Agent({ keepAlive: true, maxSockets: opts.concurrency });
  try {
    proxy = await spawnProxy({
      label: 'soak',
      args: ['--upstream', mlflow.url, ...authArgs, '--port', '0', '--admin-port', '0'],
      env: {
        ...env,
        KVX_AUTH_REFRESH_BEFORE_EXPIRY_SEC: String(opts.refreshBeforeS),
        KVX_AUTH_REFRESH_JITTER_SEC: '0',
        KVX_UPSTREAM_MAX_CONNECTIONS: String(opts.concurrency * 2),
        // Without them V8 grows the young generation toward 128 MB over the first 20 s of this load; a 15 s run
        // then judged that ramp as growth, or not, depending on where it fell (both churn and mixed run as shipped).
        NODE_OPTIONS: SHIPPED_NODE_OPTIONS,
      },
    });
    return await run(opts, world, mlflow, proxy, agent);
  } finally {
    agent.destroy();
    await proxy?.stop();
  }
}

async function run(opts: Options, world: Awaited<ReturnType<typeof startCredWorld>>, mlflow: FakeMlflow, proxy: ProxyProcess, agent: http.Agent): Promise<number> {
  const base = proxy.url;
  const call = (method: string, path: string, id: string, body?: Buffer, contentType = 'application/json'): Promise<{ status: number; body: Buffer; error?: string }> =>
    new Promise((resolve) => {
      const headers: Record<string, string | number> = { 'x-request-id': id, 'user-agent': 'mlflow-python-client/2.12.2', accept: '*/*' };
      if (body) {
        headers['content-type'] = contentType;
        headers['content-length'] = body.length;
      }
      const req = http.request(`${base}${path}`, { method, headers, agent }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) }));
        res.on('error', (err) => resolve({ status: 0, body: Buffer.alloc(0), error: err.message }));
      });
      req.on('error', (err: NodeJS.ErrnoException) => resolve({ status: 0, body: Buffer.alloc(0), error: err.code ?? err.message }));
      req.end(body);
    });

  // Set-up traffic (not counted): an experiment, runs to log into.
  const exp = await call('POST', '/api/2.0/mlflow/experiments/create', 'setup-exp', Buffer.from(JSON.stringify({ name: `soak-${Date.now()}` })));
  if (exp.status !== 200) throw new Error(`set-up failed: ${exp.status} ${exp.body.toString()}`);
  const experimentId = (JSON.parse(exp.body.toString()) as { experiment_id: string }).experiment_id;
  const runs: string[] = [];
  for (let i = 0; i < 8; i++) {
    const r = await call('POST', '/api/2.0/mlflow/runs/create', `setup-run-${i}`, Buffer.from(JSON.stringify({ experiment_id: experimentId, run_name: `soak-${i}`, start_time: Date.now() })));
    runs.push((JSON.parse(r.body.toString()) as { run: { info: { run_id: string } } }).run.info.run_id);
  }
  const slots = SIZES.flatMap((size, s) =>
    Array.from({ length: 6 }, (_, k) => {
      const content = randomBytes(size);
      return { path: `${experimentId}/${runs[(s + k) % runs.length]}/artifacts/soak/slot-${s}-${k}.bin`, content, sha: sha(content), written: false };
    }),
  );

  for (const [i, slot] of slots.entries()) {
    const put = await call('PUT', `/api/2.0/mlflow-artifacts/artifacts/${slot.path}`, `setup-put-${i}`, slot.content, 'application/octet-stream');
    if (put.status !== 200) throw new Error(`set-up upload failed: ${put.status}`);
    slot.written = true;
  }

  // Upstream accounting, folded as it goes so the fake's log does not grow for the whole run.
  const processed = new Map<string, { count: number; bytes: number; status: number }>();
  let gateRejections = 0;
  const fold = () => {
    for (const r of mlflow.requests.splice(0)) {
      const id = String(r.headers['x-request-id'] ?? '');
      if (!id.startsWith('soak-')) continue;
      if (r.status === 401 || r.status === 403) {
        gateRejections += 1;
        continue;
      }
      const entry = processed.get(id) ?? { count: 0, bytes: 0, status: 0 };
      entry.count += 1;
      entry.bytes = r.bodyBytes;
      entry.status = r.status;
      processed.set(id, entry);
    }
    // Metric histories would otherwise grow with every batch; what matters here is what arrived.
    for (const r of mlflow.store.runs.values()) r.metrics.clear();
  };

  const samples: Sample[] = [];
  const sampleOnce = async (): Promise<void> => {
    const fds = proxy.fds();
    let text = '';
    try {
      text = await fetchText(`${proxy.adminUrl}/metrics`);
      record('metrics', 'soak', text);
    } catch {
      /* counted as a gap in the samples */
    }
    samples.push({
      t: performance.now(),
      rss: proxy.rssBytes(),
      fds: fds.total,
      tcp: fds.tcp.filter((t) => t.state !== 'LISTEN').length,
      lagP99: metricValue(text, 'kvx_nodejs_eventloop_lag_p99_seconds'),
      lagMax: metricValue(text, 'kvx_nodejs_eventloop_lag_max_seconds'),
      inFlight: metricValue(text, 'kvx_requests_in_flight'),
      heapUsed: metricValue(text, 'kvx_nodejs_heap_size_used_bytes'),
      external: metricValue(text, 'kvx_nodejs_external_memory_bytes'),
    });
  };
  await sampleOnce();
  const sampler = setInterval(() => void sampleOnce().then(fold), opts.sampleMs);

  const loadBefore = readFileSync('/proc/loadavg', 'utf8').split(' ')[0];
  const outcomes: Outcome[] = [];
  const mintedBefore = world.issuer.minted;
  const started = performance.now();
  const deadline = started + opts.durationS * 1000;
  let issued = 0;
  const worker = async (w: number): Promise<void> => {
    while (issued < opts.requests && performance.now() < deadline) {
      const n = issued++;
      const id = `soak-${n}`;
      const roll = (n * 7919 + w) % 100;
      const t0 = performance.now();
      let o: Outcome;
      if (roll < 40) {
        const metrics = Array.from({ length: 1 + (n % 7 === 0 ? 299 : n % 40) }, (_, i) => ({ key: `loss_${i % 20}`, value: Math.sin(n + i), timestamp: Date.now(), step: n }));
        const body = Buffer.from(JSON.stringify({ run_id: runs[n % runs.length], metrics, params: [], tags: [{ key: `soak.${n % 50}`, value: String(n) }] }));
        const a = await call('POST', '/api/2.0/mlflow/runs/log-batch', id, body);
        o = { id, op: 'log-batch', status: a.status, sent: body.length, received: a.body.length, ms: 0 };
        if (a.error) o.problem = a.error;
        else if (a.status === 200 && a.body.toString() !== '{}') o.problem = `unexpected answer ${a.body.toString().slice(0, 80)}`;
        else if (a.status !== 200) o.errorShape = isMlflowError(a.body);
      } else if (roll < 70) {
        const run = runs[n % runs.length]!;
        const a = await call('GET', `/api/2.0/mlflow/runs/get?run_uuid=${run}&run_id=${run}`, id);
        o = { id, op: 'run-get', status: a.status, sent: 0, received: a.body.length, ms: 0 };
        if (a.error) o.problem = a.error;
        else if (a.status === 200 && !a.body.toString().includes(run)) o.problem = 'answer is not this run';
        else if (a.status !== 200) o.errorShape = isMlflowError(a.body);
      } else if (roll < 85) {
        const slot = slots[n % slots.length]!;
        const a = await call('PUT', `/api/2.0/mlflow-artifacts/artifacts/${slot.path}`, id, slot.content, 'application/octet-stream');
        o = { id, op: 'artifact-put', status: a.status, sent: slot.content.length, received: a.body.length, ms: 0 };
        if (a.error) o.problem = a.error;
        else if (a.status === 200) slot.written = true;
        else o.errorShape = isMlflowError(a.body);
      } else {
        const written = slots.filter((s) => s.written);
        const slot = written.length ? written[n % written.length]! : slots[0]!;
        const a = await call('GET', `/api/2.0/mlflow-artifacts/artifacts/${slot.path}`, id);
        o = { id, op: 'artifact-get', status: a.status, sent: 0, received: a.body.length, ms: 0 };
        if (a.error) o.problem = a.error;
        else if (a.status === 200 && sha(a.body) !== slot.sha) o.problem = `artifact bytes differ (${a.body.length} of ${slot.content.length})`;
        else if (a.status !== 200) o.errorShape = isMlflowError(a.body) || (!slot.written && a.status === 404);
      }
      o.ms = performance.now() - t0;
      outcomes.push(o);
    }
  };
  await Promise.all(Array.from({ length: opts.concurrency }, (_, w) => worker(w)));
  const elapsedS = (performance.now() - started) / 1000;
  const loadAfter = readFileSync('/proc/loadavg', 'utf8').split(' ')[0];
  clearInterval(sampler);
  await sampleOnce();
  agent.destroy();
  // With the clients gone, every client connection must be released.
  const clientsLeft = await pollUntil(
    () => proxy.connections().clients.length,
    (n) => n === 0,
    5000,
  );
  // Upstream records land when the fake finishes each answer; give the last ones a moment.
  await new Promise((r) => setTimeout(r, 200));
  fold();
  const tokensMinted = world.issuer.minted - mintedBefore;

  // ---------- verdict ----------
  const problems: string[] = [];
  const byStatus = new Map<number, number>();
  let bytesUp = 0;
  let bytesDown = 0;
  for (const o of outcomes) {
    byStatus.set(o.status, (byStatus.get(o.status) ?? 0) + 1);
    const up = processed.get(o.id);
    if (o.problem) problems.push(`${o.id} ${o.op}: ${o.problem}`);
    if (o.status >= 200 && o.status < 300) {
      if (up?.count !== 1) problems.push(`${o.id} ${o.op} succeeded but was processed ${up?.count ?? 0} times upstream`);
      else if (up.bytes !== o.sent) problems.push(`${o.id} ${o.op}: client sent ${o.sent} bytes, upstream got ${up.bytes}`);
      bytesUp += o.sent;
      bytesDown += o.received;
    } else if (o.status !== 0) {
      if (!o.errorShape) problems.push(`${o.id} ${o.op}: ${o.status} not in MLflow's error shape`);
      if ((up?.count ?? 0) > 1) problems.push(`${o.id} ${o.op} failed and was processed ${up!.count} times upstream`);
    }
  }
  const unauthorized = byStatus.get(401) ?? 0;
  if (unauthorized > 0) problems.push(`${unauthorized} requests answered 401 although tokens are refreshed ahead of expiry`);
  if (tokensMinted < 3) problems.push(`only ${tokensMinted} tokens minted: the run did not span several token lifetimes`);
  const steady = samples.slice(Math.max(1, Math.floor(samples.length / 5)));
  const quarter = Math.max(1, Math.floor(steady.length / 4));
  const rssEarly = median(steady.slice(0, quarter).map((s) => s.rss));
  const rssLate = median(steady.slice(-quarter).map((s) => s.rss));
  if (rssLate > rssEarly * 1.25 + 20 * 1024 * 1024) problems.push(`RSS grew from ${mb(rssEarly)} to ${mb(rssLate)} MB`);
  const tcpMax = Math.max(...samples.map((s) => s.tcp));
  // Client connections plus upstream pool plus token-endpoint connections.
  const tcpLimit = opts.concurrency + opts.concurrency * 2 + 8;
  if (tcpMax > tcpLimit) problems.push(`proxy held ${tcpMax} TCP connections (limit ${tcpLimit})`);
  const fdEarly = median(steady.slice(0, quarter).map((s) => s.fds));
  const fdLate = median(steady.slice(-quarter).map((s) => s.fds));
  if (fdLate > fdEarly + opts.concurrency) problems.push(`open fds grew from ${fdEarly} to ${fdLate}`);
  if (clientsLeft > 0) problems.push(`${clientsLeft} client connections still open after the clients left`);
  const heapEarly = median(steady.slice(0, quarter).map((s) => s.heapUsed));
  const heapLate = median(steady.slice(-quarter).map((s) => s.heapUsed));
  const leaks = findLeaks();
  if (leaks.length > 0) problems.push(`secrets in output: ${JSON.stringify(leaks.slice(0, 3))}`);
  const logged = proxy.requestLogs().filter((l) => String(l['id']).startsWith('soak-')).length;
  if (logged < outcomes.length) problems.push(`${logged} request log lines for ${outcomes.length} requests: the secret check saw too little`);

  // ---------- report ----------
  const lat = outcomes.map((o) => o.ms).sort((a, b) => a - b);
  const ops = (['log-batch', 'run-get', 'artifact-put', 'artifact-get'] as Op[]).map((op) => `${op} ${outcomes.filter((o) => o.op === op).length}`).join(', ');
  const failed = outcomes.filter((o) => o.status < 200 || o.status >= 300).length;
  const rows: [string, string][] = [
    ['run', `${opts.label}: ${elapsedS.toFixed(0)} s, ${opts.concurrency} keep-alive connections, limit ${opts.requests} requests / ${opts.durationS} s`],
    ['machine', `${cpus().length} CPUs, load average ${loadBefore} → ${loadAfter} (load generator, fakes and proxy share it)`],
    ['requests', `${outcomes.length} (${(outcomes.length / elapsedS).toFixed(0)}/s): ${ops}`],
    ['succeeded / failed', `${outcomes.length - failed} / ${failed}${failed ? ` (${[...byStatus].filter(([s]) => s < 200 || s >= 300).map(([s, c]) => `${s}×${c}`).join(', ')})` : ''}`],
    ['processed exactly once (succeeded)', `${outcomes.filter((o) => o.status >= 200 && o.status < 300 && processed.get(o.id)?.count === 1).length} of ${outcomes.length - failed}`],
    ['bytes up / down (checked)', `${mb(bytesUp)} MB / ${mb(bytesDown)} MB, every upload's byte count and every download's SHA-256 matched`],
    ['tokens', `${tokensMinted} ID tokens minted (lifetime ${opts.tokenLifetimeS} s, refreshed ${opts.refreshBeforeS} s early); 401s to clients: ${unauthorized}; gate rejections: ${gateRejections}`],
    ['latency (client)', `p50 ${pct(lat, 0.5).toFixed(1)} ms, p99 ${pct(lat, 0.99).toFixed(1)} ms, max ${lat.at(-1)?.toFixed(0) ?? 0} ms`],
    ['proxy RSS', `start ${mb(samples[0]!.rss)} MB, steady early ${mb(rssEarly)} MB, late ${mb(rssLate)} MB, max ${mb(Math.max(...samples.map((s) => s.rss)))} MB`],
    ['proxy RSS over the run', trend(steady.map((s) => s.rss)).map((v) => mb(v)).join(' → ') + ' MB'],
    ['proxy V8 heap used / external', `steady early ${mb(heapEarly)} / ${mb(median(steady.slice(0, quarter).map((s) => s.external)))} MB, late ${mb(heapLate)} / ${mb(median(steady.slice(-quarter).map((s) => s.external)))} MB`],
    ['proxy open fds', `start ${samples[0]!.fds}, steady early ${fdEarly}, late ${fdLate}, max ${Math.max(...samples.map((s) => s.fds))}, end ${samples.at(-1)!.fds}`],
    ['proxy TCP connections', `max ${tcpMax} (clients + upstream pool + token endpoints); client connections after the clients left: ${clientsLeft}`],
    ['event-loop delay (proxy)', `p99 median ${ms(median(steady.map((s) => s.lagP99)))} ms, p99 max ${ms(Math.max(...steady.map((s) => s.lagP99)))} ms, max ${ms(Math.max(...steady.map((s) => s.lagMax)))} ms`],
    ['secrets in logs, bodies, metrics', `${leaks.length} (${logged} request log lines, ${transcriptStats().metrics} metrics pages searched)`],
    ['verdict', problems.length === 0 ? 'PASS' : `FAIL (${problems.length} problems)`],
  ];
  return printVerdict(rows, problems);
}

/** Ten evenly spaced medians: the shape of a series. */
function trend(values: number[]): number[] {
  const out: number[] = [];
  const step = Math.max(1, Math.ceil(values.length / 10));
  for (let i = 0; i + step <= values.length; i += step) out.push(median(values.slice(i, i + step)));
  return out;
}


function isMlflowError(body: Buffer): boolean {
  try {
    const parsed = JSON.parse(body.toString('utf8')) as { error_code?: unknown; message?: unknown };
    return typeof parsed.error_code === 'string' && typeof parsed.message === 'string';
  } catch {
    return false;
  }
}

function sha(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

function median(values: number[]): number {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  return v.length ? v[Math.floor(v.length / 2)]! : NaN;
}

function pct(sorted: number[], p: number): number {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]! : NaN;
}

const mb = (bytes: number): string => (bytes / 1024 / 1024).toFixed(1);
const ms = (seconds: number): string => (seconds * 1000).toFixed(1);

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`soak: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  },
);
