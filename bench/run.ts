/**
 * `npm run bench`: kvx-proxy side by side with a direct connection, nginx and node http-proxy 1.x, in one
 * run, as ratios. Every process (upstream, candidates, load generator, transfer client) is its own child
 * process on 127.0.0.1; this process only orchestrates and reads /proc between runs.
 *
 *   node --import tsx bench/run.ts [--smoke] [--duration S] [--rounds N] [--transfer-mb N] [--only a,b]
 *                                  [--shapes load,transfer,mlflow,workflow,idle,burst,churn,startup] [--mlflow-mb N] [--workflow-mb N]
 *                                  [--idle-connections N] [--burst-connections N] [--after-s S]
 *
 * Not a test: it asserts no timing. It prints the table, a target check, and writes JSON to bench/results/.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { autocannonDriver, findWrk, wrkDriver } from './load.js';
import type { LoadDriver, LoadResult } from './load.js';
import { findNginx, nginxConfig } from './nginx.js';
import { PeakRss, cpuSeconds, freePort, openFileLimits, processTree, rssMb, shippedLaunch, startChild, waitForPort } from './proc.js';
import type { Child } from './proc.js';
import { RUN_ID, TOKEN, logBatchBody, runGetBody } from './shapes.js';
import type { IdleSpec } from './conns.js';
import type { TransferResult, TransferSpec } from './transfer.js';
import type { WorkflowResult, WorkflowSpec } from './workflow.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const KVX_BIN = join(ROOT, 'dist', 'cli', 'kvx-proxy.js');
const KVX_LAUNCH = shippedLaunch(KVX_BIN);

interface Options {
  smoke: boolean;
  durationSec: number;
  rounds: number;
  transferBytes: number;
  slowBytes: number;
  slowBps: number;
  startupRuns: number;
  getConnections: number[];
  postConnections: number[];
  only: Set<string> | undefined;
  shapes: Set<Shape>;
  /** The MLflow-shaped download: its size, and the HTTP chunk size MLflow's server sends. */
  mlflowBytes: number;
  mlflowChunkBytes: number;
  workflowBytes: number;
  workflowIterations: number;
  /** Connection scale and churn: idle keep-alive connections held, active connections, connections per request. */
  idleConnections: number;
  idleHoldMs: number;
  burstConnections: number;
  churnConnections: number;
  /** RSS is read again this long after each of those runs. */
  afterMs: number;
  out: string;
}

/** Parts of the benchmark, selectable with --shapes. */
const SHAPES = ['load', 'transfer', 'mlflow', 'workflow', 'idle', 'burst', 'churn', 'startup'] as const;
type Shape = (typeof SHAPES)[number];

function parseOptions(argv: string[]): Options {
  const smoke = argv.includes('--smoke');
  const value = (flag: string): string | undefined => {
    const at = argv.indexOf(flag);
    return at === -1 ? undefined : argv[at + 1];
  };
  const mb = Number(value('--transfer-mb') ?? (smoke ? 16 : 1000));
  const only = value('--only');
  const shapes = (value('--shapes') ?? SHAPES.join(',')).split(',');
  for (const shape of shapes) {
    if (!(SHAPES as readonly string[]).includes(shape)) throw new Error(`--shapes: unknown shape "${shape}"; choose from ${SHAPES.join(', ')}`);
  }
  return {
    smoke,
    durationSec: Number(value('--duration') ?? (smoke ? 1 : 5)),
    rounds: Number(value('--rounds') ?? (smoke ? 1 : 3)),
    transferBytes: Math.round(mb * 1e6),
    slowBytes: smoke ? 8e6 : 256e6,
    slowBps: smoke ? 16e6 : 64e6,
    startupRuns: smoke ? 1 : 7,
    getConnections: smoke ? [1, 16] : [1, 16, 64],
    postConnections: smoke ? [16] : [1, 16, 64],
    only: only ? new Set(only.split(',')) : undefined,
    shapes: new Set(shapes as Shape[]),
    mlflowBytes: Math.round(Number(value('--mlflow-mb') ?? (smoke ? 4 : 100)) * 1e6),
    mlflowChunkBytes: 255,
    workflowBytes: Math.round(Number(value('--workflow-mb') ?? (smoke ? 2 : 20)) * 1e6),
    workflowIterations: smoke ? 1 : 3,
    idleConnections: Number(value('--idle-connections') ?? (smoke ? 200 : 2000)),
    idleHoldMs: smoke ? 1000 : 10_000,
    burstConnections: Number(value('--burst-connections') ?? (smoke ? 100 : 500)),
    churnConnections: 16,
    afterMs: Number(value('--after-s') ?? (smoke ? 2 : 30)) * 1000,
    out: value('--out') ?? join(ROOT, 'bench', 'results', `${smoke ? 'smoke' : 'full'}-${new Date().toISOString().replace(/[:.]/g, '-')}.json`),
  };
}

interface Candidate {
  name: string;
  description: string;
  url: string;
  /** Headers the client sends (only `direct` sends the token itself). */
  clientHeaders: Record<string, string>;
  /** Processes whose CPU and memory count as the candidate's; empty for direct. */
  pids: number[];
  /** Measured only at these connection counts (undefined: all). */
  onlyConnections?: number[];
  stop(): Promise<void>;
}

const median = (values: number[]): number => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
};

const medianOrNull = (values: (number | null)[]): number | null => {
  const present = values.filter((v): v is number => v !== null);
  return present.length === 0 ? null : median(present);
};

function log(line: string): void {
  process.stderr.write(line + '\n');
}

function request(url: string, options: { method?: string; headers?: Record<string, string>; body?: Buffer } = {}): Promise<{ status: number; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: options.method ?? 'GET', headers: options.headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(options.body);
  });
}

const tsxChild = (file: string, args: string[], env: NodeJS.ProcessEnv): Child =>
  startChild(process.execPath, ['--import', 'tsx', join(ROOT, 'bench', file), ...args], env, ROOT);

const portLine = (v: Record<string, unknown>): number | undefined => (typeof v['port'] === 'number' ? v['port'] : undefined);

async function startKvx(
  name: string,
  description: string,
  upstreamUrl: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  tmp: string,
  onlyConnections?: number[],
  bin = KVX_BIN,
): Promise<Candidate> {
  // stdout (one JSON line per request) goes to a file, as nginx's access log does: a pipe would need a
  // reader process, and on the benchmark's two cores that reader takes CPU from the candidate.
  const launch = shippedLaunch(bin);
  const child = startChild(
    process.execPath,
    [...launch.flags, bin, '--upstream', upstreamUrl, ...args, '--port', '0', '--admin-port', '0', '--log-level', 'info'],
    { ...launch.env, ...env },
    ROOT,
    join(tmp, `${name}.log`),
  );
  const url = await child.waitFor((v) => (v['msg'] === 'kvx-proxy listening' && typeof v['url'] === 'string' ? v['url'] : undefined));
  child.drainOnly();
  return { name, description, url, clientHeaders: {}, pids: [child.pid], stop: () => child.stop(), ...(onlyConnections ? { onlyConnections } : {}) };
}

/** Starts the candidates into `candidates` one by one, so that those already running are stopped if a later one fails. */
async function startCandidates(opts: Options, upstreamUrl: string, upstreamPort: number, tmp: string, notes: string[], candidates: Candidate[]): Promise<void> {
  const want = (name: string) => !opts.only || opts.only.has(name);
  const baseEnv = { ...process.env, BENCH_TOKEN: TOKEN };
  if (want('direct')) {
    candidates.push({ name: 'direct', description: 'no proxy: the client sends the token itself (the limit)', url: upstreamUrl, clientHeaders: { authorization: `Bearer ${TOKEN}` }, pids: [], stop: async () => {} });
  }
  if (want('nginx')) {
    const nginx = findNginx();
    if (!nginx) {
      notes.push('nginx not installed: its column is skipped (apt-get install nginx)');
    } else {
      const port = await freePort();
      const dir = join(tmp, 'nginx');
      mkdirSync(dir, { recursive: true });
      const child = startChild(nginx, nginxConfig(dir, port, upstreamPort, TOKEN), process.env, dir);
      await waitForPort(port, child);
      child.drainOnly();
      const version = execFileSync(nginx, ['-v'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim() || 'nginx';
      candidates.push({
        name: 'nginx',
        description: 'nginx reverse proxy, 1 worker, upstream keep-alive, proxy_set_header Authorization, no request buffering, access log to a file',
        url: `http://127.0.0.1:${port}`,
        clientHeaders: {},
        pids: processTree(child.pid),
        stop: () => child.stop(),
      });
      notes.push(`nginx: ${nginxVersion(nginx) ?? version}, foreground child process, generated config in ${dir}, 127.0.0.1 only`);
    }
  }
  if (want('http-proxy')) {
    const child = tsxChild('http-proxy-baseline.ts', [], { ...baseEnv, BENCH_UPSTREAM: upstreamUrl });
    const port = await child.waitFor(portLine);
    child.drainOnly();
    candidates.push({
      name: 'http-proxy',
      description: 'node http-proxy 1.18, keep-alive agent, token set in the proxyReq hook',
      url: `http://127.0.0.1:${port}`,
      clientHeaders: {},
      pids: [child.pid],
      stop: () => child.stop(),
    });
  }
  if (want('kvx')) {
    candidates.push(await startKvx('kvx', 'kvx-proxy, static token (auth.provider static), request log on, to a file', upstreamUrl, ['--auth-provider', 'static', '--token-env', 'BENCH_TOKEN'], baseEnv, tmp));
  }
  const baseline = process.env['BENCH_KVX_BASELINE'];
  if (baseline && want('kvx-base')) {
    // An A/B within one run: another build of kvx (e.g. the commit before a change), as the kvx column runs.
    if (!existsSync(baseline)) throw new Error(`BENCH_KVX_BASELINE=${baseline}: no such file; point it at another build's dist/cli/kvx-proxy.js`);
    candidates.push(await startKvx('kvx-base', `kvx-proxy built elsewhere (${baseline}), static token, request log on`, upstreamUrl, ['--auth-provider', 'static', '--token-env', 'BENCH_TOKEN'], baseEnv, tmp, undefined, baseline));
  }
  if (want('kvx-node')) {
    // The second engine (issue 17), where this build has it: kvx's figures on node:http and undici beside the wire engine's.
    const schema = join(ROOT, 'dist', 'config', 'schema.js');
    if (existsSync(schema) && /\bengine\b/.test(readFileSync(schema, 'utf8'))) {
      candidates.push(
        await startKvx('kvx-node', 'kvx-proxy, static token, request log on, server.engine node (node:http + undici)', upstreamUrl, ['--auth-provider', 'static', '--token-env', 'BENCH_TOKEN'], { ...baseEnv, KVX_SERVER_ENGINE: 'node' }, tmp),
      );
    } else if (opts.only?.has('kvx-node')) notes.push('kvx-node skipped: this build has no server.engine setting');
  }
  if (want('kvx-google')) {
    if (!existsSync(join(ROOT, 'src', 'auth', 'google-iam.ts')) || !existsSync(join(ROOT, 'test', 'fakes', 'google-iam-credentials.ts'))) {
      notes.push('kvx-google skipped: the google-iam provider or its fakes are missing');
    } else {
      const fakes = tsxChild('google-fakes.ts', [], process.env);
      const g = await fakes.waitFor((v) =>
        typeof v['metadataHost'] === 'string' ? (v as { metadataHost: string; iamUrl: string; serviceAccount: string; audience: string; idTokenLength: number }) : undefined,
      );
      if (g.idTokenLength !== TOKEN.length) notes.push(`kvx-google: its ID token is ${g.idTokenLength} bytes, the static token ${TOKEN.length}: set ID_TOKEN_LENGTH in bench/shapes.ts to match`);
      const home = join(tmp, 'google-home');
      mkdirSync(home, { recursive: true });
      const env: NodeJS.ProcessEnv = { ...process.env, HOME: home, GCE_METADATA_HOST: g.metadataHost, KVX_AUTH_ENDPOINTS_IAM_CREDENTIALS: g.iamUrl };
      delete env['GOOGLE_APPLICATION_CREDENTIALS'];
      delete env['CLOUDSDK_CONFIG'];
      const kvx = await startKvx(
        'kvx-google',
        'kvx-proxy, google-iam ID token (metadata server + IAM Credentials fakes), cached',
        upstreamUrl,
        ['--auth-provider', 'google-iam', '--client-id', g.audience, '--service-account', g.serviceAccount],
        env,
        tmp,
      ).catch(async (err: unknown) => {
        await fakes.stop();
        throw err;
      });
      candidates.push({ ...kvx, stop: async () => void (await Promise.all([kvx.stop(), fakes.stop()])) });
    }
  }
  if (want('kvx-nolog') && !opts.smoke) {
    candidates.push(
      await startKvx(
        'kvx-nolog',
        'kvx-proxy, static token, log.requests false (KVX_LOG_REQUESTS=false)',
        upstreamUrl,
        ['--auth-provider', 'static', '--token-env', 'BENCH_TOKEN'],
        { ...baseEnv, KVX_LOG_REQUESTS: 'false' },
        tmp,
        [16],
      ),
    );
  }
}

function nginxVersion(bin: string): string | undefined {
  try {
    execFileSync(bin, ['-v'], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch {
    return undefined;
  }
  try {
    const out = execFileSync('sh', ['-c', `"${bin}" -v 2>&1`], { encoding: 'utf8' });
    return out.trim().replace(/^nginx version: /, '');
  } catch {
    return undefined;
  }
}

/** A candidate answers both workloads correctly (and the upstream saw the token) before it is measured. */
async function check(c: Candidate, runGetLength: number, batch: Buffer): Promise<void> {
  const get = await request(`${c.url}/api/2.0/mlflow/runs/get?run_id=${RUN_ID}`, { headers: c.clientHeaders });
  if (get.status !== 200 || get.body.length !== runGetLength) throw new Error(`${c.name}: runs/get answered ${get.status} with ${get.body.length} bytes: ${get.body.toString().slice(0, 200)}`);
  const post = await request(`${c.url}/api/2.0/mlflow/runs/log-batch`, {
    method: 'POST',
    headers: { ...c.clientHeaders, 'content-type': 'application/json', 'content-length': String(batch.length) },
    body: batch,
  });
  if (post.status !== 200) throw new Error(`${c.name}: runs/log-batch answered ${post.status}: ${post.body.toString().slice(0, 200)}`);
}

interface LoadRun extends LoadResult {
  workload: 'get' | 'post';
  connections: number;
  candidate: string;
  round: number;
  /** Proxy CPU (user + system) per request over the run; null for direct or without /proc. */
  cpuUsPerRequest: number | null;
}

interface TransferRun extends TransferResult {
  kind: string;
  candidate: string;
  round: number;
  peakRssMb: number | null;
  /** Proxy CPU (user + system) per MB moved; null for direct or without /proc. */
  cpuMsPerMb: number | null;
}

interface WorkflowRun {
  candidate: string;
  round: number;
  seconds: number[];
}

/** 500 active connections ('burst') or a new connection per request ('churn'): GET runs/get under wrk. */
interface ScaleRun extends Omit<LoadRun, 'workload'> {
  shape: 'burst' | 'churn';
  peakRssMb: number | null;
  /** RSS opts.afterMs after the candidate's last run of the shape (recorded on that run only). */
  afterRssMb: number | null;
}

interface IdleRun {
  candidate: string;
  connections: number;
  /** How many the candidate still held open when the hold ended. */
  stillOpen: number;
  beforeMb: number;
  /** RSS a second after the last connection went idle, and at the end of the hold. */
  earlyMb: number;
  heldMb: number;
  /** (RSS at the end of the hold - RSS before) / connections, in KB of 1,024 bytes. */
  kbPerConnection: number;
  afterRssMb: number | null;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Reads the candidate's RSS `delayMs` from now, into `into.afterRssMb`; the caller awaits the promise before summing up. */
function rssLater(c: Candidate, delayMs: number, into: { afterRssMb: number | null }): Promise<void> {
  return sleep(delayMs).then(() => {
    into.afterRssMb = rssMb(c.pids);
  });
}

async function measureIdle(c: Candidate, opts: Options): Promise<IdleRun> {
  const beforeMb = rssMb(c.pids)!;
  const spec: IdleSpec = { url: c.url, headers: c.clientHeaders, count: opts.idleConnections };
  const child = tsxChild('conns.ts', [JSON.stringify(spec)], process.env);
  try {
    const open = await child.waitFor((v) => (typeof v['open'] === 'number' ? v['open'] : undefined), 120_000);
    if (open !== opts.idleConnections) throw new Error(`${c.name}: only ${open} of ${opts.idleConnections} idle connections stayed open`);
    await sleep(1000);
    const earlyMb = rssMb(c.pids)!;
    await sleep(Math.max(0, opts.idleHoldMs - 1000));
    const heldMb = rssMb(c.pids)!;
    const closing = child.waitFor((v) => (typeof v['stillOpen'] === 'number' ? v['stillOpen'] : undefined), 30_000);
    child.proc.kill('SIGTERM');
    const stillOpen = await closing;
    const kbPerConnection = ((heldMb - beforeMb) * 1e6) / 1024 / opts.idleConnections;
    return { candidate: c.name, connections: opts.idleConnections, stillOpen, beforeMb, earlyMb, heldMb, kbPerConnection, afterRssMb: null };
  } finally {
    await child.stop();
  }
}

/**
 * Open files the connection shapes need in one process: the idle client holds every idle connection, a proxy
 * holds each active connection twice (client and upstream side). Raised up to the hard limit by running the
 * benchmark again under `ulimit -n`; below that, it stops and says what it needs.
 */
function ensureOpenFiles(opts: Options): void {
  const shapes = ['idle', 'burst', 'churn'].filter((s) => opts.shapes.has(s as Shape));
  if (shapes.length === 0) return;
  const need = Math.max(opts.shapes.has('idle') ? opts.idleConnections : 0, opts.shapes.has('burst') ? 2 * opts.burstConnections : 0) + 512;
  const limits = openFileLimits();
  if (limits === null || limits.soft >= need) return;
  if (limits.hard < need || process.env['BENCH_ULIMIT_RAISED'] === '1') {
    throw new Error(
      `the ${shapes.join(', ')} shapes need ${need} open files per process; the limit is ${limits.soft} (hard ${limits.hard}): ` +
        `raise it (ulimit -n ${need}, as root if the hard limit is lower), lower --idle-connections / --burst-connections, or leave those shapes out with --shapes`,
    );
  }
  log(`raising the open-file limit from ${limits.soft} to ${need} (ulimit -n) and starting again`);
  const argv = [process.execPath, ...process.execArgv, ...process.argv.slice(1)];
  try {
    execFileSync('sh', ['-c', `ulimit -n ${need} && exec "$@"`, 'sh', ...argv], { stdio: 'inherit', env: { ...process.env, BENCH_ULIMIT_RAISED: '1' } });
    process.exit(0);
  } catch (err) {
    process.exit((err as { status?: number }).status ?? 1);
  }
}

async function measureLoad(
  driver: LoadDriver,
  c: Candidate,
  workload: 'get' | 'post',
  connections: number,
  durationSec: number,
  batch: Buffer,
  extraHeaders: Record<string, string> = {},
): Promise<Omit<LoadRun, 'round'>> {
  const pids = c.pids;
  const cpuBefore = pids.length ? cpuSeconds(pids) : null;
  const result = await driver.run({
    url: workload === 'get' ? `${c.url}/api/2.0/mlflow/runs/get?run_id=${RUN_ID}` : `${c.url}/api/2.0/mlflow/runs/log-batch`,
    connections,
    durationSec,
    method: workload === 'get' ? 'GET' : 'POST',
    ...(workload === 'post' ? { body: batch } : {}),
    headers: { ...c.clientHeaders, ...extraHeaders },
  });
  const cpuAfter = pids.length ? cpuSeconds(pids) : null;
  const cpuUsPerRequest = cpuBefore !== null && cpuAfter !== null && result.requests > 0 ? ((cpuAfter - cpuBefore) * 1e6) / result.requests : null;
  return { workload, connections, candidate: c.name, cpuUsPerRequest, ...result };
}

async function transfer(c: Candidate, spec: Omit<TransferSpec, 'url' | 'headers'>): Promise<TransferResult & { peakRssMb: number | null; cpuMsPerMb: number | null }> {
  const rss = c.pids.length ? new PeakRss(c.pids) : undefined;
  const cpuBefore = c.pids.length ? cpuSeconds(c.pids) : null;
  const child = tsxChild('transfer.ts', [JSON.stringify({ ...spec, url: c.url, headers: c.clientHeaders })], process.env);
  const result = await child.waitFor((v) => (typeof v['mbPerSec'] === 'number' ? (v as unknown as TransferResult) : undefined), 600_000);
  await child.stop();
  const cpuAfter = c.pids.length ? cpuSeconds(c.pids) : null;
  const cpuMsPerMb = cpuBefore !== null && cpuAfter !== null ? ((cpuAfter - cpuBefore) * 1e3) / (result.bytes / 1e6) : null;
  return { ...result, peakRssMb: rss ? rss.stop() : null, cpuMsPerMb };
}

async function workflow(c: Candidate, opts: Options): Promise<WorkflowResult> {
  const spec: WorkflowSpec = { url: c.url, headers: c.clientHeaders, artifactBytes: opts.workflowBytes, chunkBytes: opts.mlflowChunkBytes, iterations: opts.workflowIterations };
  const child = tsxChild('workflow.ts', [JSON.stringify(spec)], process.env);
  const result = await child.waitFor((v) => (Array.isArray(v['seconds']) ? (v as unknown as WorkflowResult) : undefined), 600_000);
  await child.stop();
  return result;
}

/** Spawn to a 200 from /readyz, polled every millisecond or so. */
async function timeToReady(command: string, args: string[], env: NodeJS.ProcessEnv, readyUrl: string): Promise<number> {
  const started = process.hrtime.bigint();
  const child = startChild(command, args, env, ROOT);
  try {
    for (;;) {
      const ok = await request(readyUrl).then(
        (r) => r.status === 200,
        () => false,
      );
      if (ok) return Number(process.hrtime.bigint() - started) / 1e6;
      if (child.proc.exitCode !== null) throw new Error(`exited before ready: ${child.stderrTail()}`);
      if (Number(process.hrtime.bigint() - started) > 20e9) throw new Error('not ready within 20 s');
      await new Promise((r) => setTimeout(r, 1));
    }
  } finally {
    await child.stop();
  }
}

async function measureStartup(opts: Options, upstreamUrl: string): Promise<{ kvxMs: number[]; nodeFloorMs: number[] }> {
  const kvxMs: number[] = [];
  const nodeFloorMs: number[] = [];
  for (let i = 0; i < opts.startupRuns; i++) {
    const adminPort = await freePort();
    kvxMs.push(
      await timeToReady(
        process.execPath,
        [...KVX_LAUNCH.flags, KVX_BIN, '--upstream', upstreamUrl, '--auth-provider', 'static', '--token-env', 'BENCH_TOKEN', '--port', '0', '--admin-port', String(adminPort), '--log-level', 'warn'],
        { ...KVX_LAUNCH.env, ...process.env, BENCH_TOKEN: TOKEN },
        `http://127.0.0.1:${adminPort}/readyz`,
      ),
    );
    const port = await freePort();
    nodeFloorMs.push(
      await timeToReady(
        process.execPath,
        ['-e', `require('node:http').createServer((q, s) => s.end('ok')).listen(${port}, '127.0.0.1')`],
        process.env,
        `http://127.0.0.1:${port}/`,
      ),
    );
  }
  return { kvxMs, nodeFloorMs };
}

const rotate = <T>(list: T[], by: number): T[] => list.map((_, i) => list[(i + by) % list.length]!);

interface Row {
  label: string;
  unit: string;
  better: 'higher' | 'lower';
  values: Record<string, number | null>;
  /** Some run behind a value saw errors or non-2xx answers. */
  errors: Record<string, number>;
}

function fmt(v: number | null | undefined, unit: string): string {
  if (v === null || v === undefined || Number.isNaN(v)) return '-';
  if (unit === 'ms') return v < 10 ? v.toFixed(2) : v.toFixed(0);
  if (unit === 'µs/req') return v.toFixed(1);
  if (unit === 'ms/MB') return v.toFixed(2);
  if (unit === 'KB/conn') return v.toFixed(1);
  if (unit === 'MB') return v.toFixed(0);
  return v >= 100 ? Math.round(v).toString() : v.toFixed(1);
}

function table(rows: Row[], names: string[]): string {
  const ratioCols = [
    ['kvx/direct', 'direct'],
    ['kvx/nginx', 'nginx'],
    ['kvx/http-proxy', 'http-proxy'],
  ] as const;
  const header = ['workload', 'unit', ...names, ...ratioCols.map(([l]) => l)];
  const lines = rows.map((r) => [
    r.label,
    r.unit,
    ...names.map((n) => fmt(r.values[n], r.unit) + (r.errors[n] ? '!' : '')),
    ...ratioCols.map(([, peer]) => {
      const kvx = r.values['kvx'];
      const p = r.values[peer];
      return kvx != null && p != null && p !== 0 ? (kvx / p).toFixed(2) : '-';
    }),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const render = (cells: string[]) => cells.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [render(header), widths.map((w) => '-'.repeat(w)).join('  '), ...lines.map(render)].join('\n');
}

async function main(): Promise<void> {
  const opts = parseOptions(process.argv.slice(2));
  ensureOpenFiles(opts);
  if (!existsSync(KVX_BIN)) throw new Error(`${KVX_BIN} is missing: run \`npm run build\` first (npm run bench does)`);
  const tmp = mkdtempSync(join(os.tmpdir(), 'kvx-bench-'));
  const notes: string[] = [];
  const children: { stop(): Promise<void> }[] = [];
  const candidates: Candidate[] = [];
  const stopAll = async () => {
    await Promise.allSettled([...children, ...candidates].map((c) => c.stop()));
    rmSync(tmp, { recursive: true, force: true });
  };
  // Interrupted (Ctrl-C, or a kill from a CI runner), the bench stops its servers and proxies rather than leaving them running.
  process.once('SIGINT', () => void stopAll().then(() => process.exit(130)));
  process.once('SIGTERM', () => void stopAll().then(() => process.exit(143)));

  try {
    const wrk = findWrk();
    const driver = wrk ? wrkDriver(tmp) : autocannonDriver(tmp);
    if (!wrk) notes.push('wrk not installed: load from autocannon (a Node process, heavier on the shared cores; apt-get install wrk)');

    const upstream = tsxChild('upstream.ts', [], { ...process.env, BENCH_TOKEN: TOKEN, BENCH_ACCEPT_JWT: '1' });
    children.push(upstream);
    const upstreamPort = await upstream.waitFor(portLine);
    upstream.drainOnly();
    const upstreamUrl = `http://127.0.0.1:${upstreamPort}`;
    await startCandidates(opts, upstreamUrl, upstreamPort, tmp, notes, candidates);
    const names = candidates.map((c) => c.name);
    const batch = logBatchBody();
    const runGetLength = runGetBody().length;
    for (const c of candidates) await check(c, runGetLength, batch);
    for (const n of notes) log(`note: ${n}`);
    log(`candidates: ${names.join(', ')}; load: ${driver.name}; ${opts.durationSec} s per run, ${opts.rounds} round(s), alternated`);

    // Warm-up: JIT and connection pools, not recorded.
    for (const c of candidates) await measureLoad(driver, c, 'get', 16, 1, batch);

    const loadRuns: LoadRun[] = [];
    const configs: ['get' | 'post', number][] = opts.shapes.has('load')
      ? [...opts.getConnections.map((n) => ['get', n] as ['get', number]), ...opts.postConnections.map((n) => ['post', n] as ['post', number])]
      : [];
    for (const [ci, [workload, connections]] of configs.entries()) {
      for (let round = 0; round < opts.rounds; round++) {
        for (const c of rotate(candidates, round + ci)) {
          if (c.onlyConnections && !c.onlyConnections.includes(connections)) continue;
          const r = await measureLoad(driver, c, workload, connections, opts.durationSec, batch);
          loadRuns.push({ ...r, round });
          log(
            `${workload} c=${connections} ${c.name.padEnd(10)} ${r.rps.toFixed(0).padStart(6)} req/s  p50 ${r.p50Ms.toFixed(2)} ms  p99 ${r.p99Ms.toFixed(2)} ms` +
              (r.cpuUsPerRequest !== null ? `  cpu ${r.cpuUsPerRequest.toFixed(1)} µs/req` : '') +
              (r.errors ? `  ERRORS ${r.errors}` : ''),
          );
        }
      }
    }

    const transferRuns: TransferRun[] = [];
    const movers = candidates.filter((c) => c.name !== 'kvx-nolog');
    const kvxOnly = movers.filter((c) => c.name === 'kvx');
    /** MLflow's own streams, measured where the issue measured them: kvx beside the proxies it is compared with. */
    const mlflowPeers = movers.filter((c) => ['direct', 'nginx', 'http-proxy', 'kvx', 'kvx-node', 'kvx-base'].includes(c.name));
    const transferKinds: { kind: string; label: string; spec: Omit<TransferSpec, 'url' | 'headers'>; rounds: number; who: Candidate[]; cpu?: boolean }[] = [];
    const mb = (bytes: number) => (bytes >= 1e9 ? `${(bytes / 1e9).toFixed(bytes % 1e9 ? 1 : 0)} GB` : `${Math.round(bytes / 1e6)} MB`);
    if (opts.shapes.has('transfer')) {
      const x4 = mb(Math.round(opts.transferBytes / 4));
      transferKinds.push(
        { kind: 'put', label: `PUT artifact ${mb(opts.transferBytes)}`, spec: { mode: 'put', bytes: opts.transferBytes, parallel: 1 }, rounds: opts.rounds, who: movers },
        { kind: 'get', label: `GET artifact ${mb(opts.transferBytes)}`, spec: { mode: 'get', bytes: opts.transferBytes, parallel: 1 }, rounds: opts.rounds, who: movers },
        { kind: 'put x4', label: `PUT artifact 4x${x4}`, spec: { mode: 'put', bytes: Math.round(opts.transferBytes / 4), parallel: 4 }, rounds: 1, who: opts.smoke ? kvxOnly : movers },
        { kind: 'get x4', label: `GET artifact 4x${x4}`, spec: { mode: 'get', bytes: Math.round(opts.transferBytes / 4), parallel: 4 }, rounds: 1, who: opts.smoke ? kvxOnly : movers },
        {
          kind: 'get slow client',
          label: `GET artifact ${mb(opts.slowBytes)} slow client @${mb(opts.slowBps)}/s`,
          spec: { mode: 'get', bytes: opts.slowBytes, parallel: 1, clientReadBps: opts.slowBps },
          rounds: 1,
          who: kvxOnly,
        },
        {
          kind: 'put slow upstream',
          label: `PUT artifact ${mb(opts.slowBytes)} slow upstream @${mb(opts.slowBps)}/s`,
          spec: { mode: 'put', bytes: opts.slowBytes, parallel: 1, upstreamReadBps: opts.slowBps },
          rounds: 1,
          who: kvxOnly,
        },
      );
    }
    if (opts.shapes.has('mlflow')) {
      transferKinds.push({
        kind: 'get mlflow chunks',
        label: `MLflow download ${mb(opts.mlflowBytes)} in ${opts.mlflowChunkBytes} B chunks`,
        spec: { mode: 'get', bytes: opts.mlflowBytes, parallel: 1, chunkBytes: opts.mlflowChunkBytes },
        rounds: opts.rounds,
        who: mlflowPeers,
        cpu: true,
      });
    }
    for (const [ki, t] of transferKinds.entries()) {
      for (let round = 0; round < t.rounds; round++) {
        for (const c of rotate(t.who, round + ki)) {
          const r = await transfer(c, t.spec);
          transferRuns.push({ ...r, kind: t.kind, candidate: c.name, round });
          log(
            `${t.kind} ${c.name.padEnd(10)} ${r.mbPerSec.toFixed(0).padStart(5)} MB/s  peak RSS ${r.peakRssMb === null ? '-' : r.peakRssMb.toFixed(0) + ' MB'}` +
              (r.cpuMsPerMb !== null ? `  cpu ${r.cpuMsPerMb.toFixed(2)} ms/MB` : ''),
          );
        }
      }
    }

    const workflowRuns: WorkflowRun[] = [];
    if (opts.shapes.has('workflow')) {
      for (let round = 0; round < opts.rounds; round++) {
        for (const c of rotate(mlflowPeers, round)) {
          const r = await workflow(c, opts);
          workflowRuns.push({ candidate: c.name, round, seconds: r.seconds });
          log(`workflow ${c.name.padEnd(10)} ${r.seconds.map((v) => (v * 1000).toFixed(0)).join(', ')} ms`);
        }
      }
    }

    // Connection scale and churn. RSS is read again opts.afterMs after each candidate's last run of a shape
    // (while the others run), and the shape ends once every such reading is in.
    // http-proxy is left out: its process stopped answering under 2,000 idle and 500 active connections (0 req/s,
    // then refused connections), which took the rest of the run with it.
    const scalePeers = candidates.filter((c) => ['direct', 'nginx', 'kvx', 'kvx-node', 'kvx-base'].includes(c.name));
    const idleRuns: IdleRun[] = [];
    if (opts.shapes.has('idle')) {
      const later: Promise<void>[] = [];
      for (const c of scalePeers.filter((x) => x.pids.length > 0)) {
        const r = await measureIdle(c, opts);
        idleRuns.push(r);
        later.push(rssLater(c, opts.afterMs, r));
        log(
          `idle ${opts.idleConnections} ${c.name.padEnd(10)} RSS ${r.beforeMb.toFixed(0)} -> ${r.earlyMb.toFixed(0)} (1 s) -> ${r.heldMb.toFixed(0)} MB (${(opts.idleHoldMs / 1000).toFixed(0)} s held): ` +
            `${r.kbPerConnection.toFixed(1)} KB per connection; ${r.stillOpen} still open`,
        );
      }
      await Promise.all(later);
      for (const r of idleRuns) log(`idle ${r.candidate.padEnd(10)} RSS ${r.afterRssMb?.toFixed(0) ?? '-'} MB ${opts.afterMs / 1000} s after the connections closed`);
    }
    const scaleRuns: ScaleRun[] = [];
    for (const shape of ['burst', 'churn'] as const) {
      if (!opts.shapes.has(shape)) continue;
      const connections = shape === 'burst' ? opts.burstConnections : opts.churnConnections;
      // Churn: the client asks for the connection to be closed after each answer, and opens a new one.
      const extra: Record<string, string> = shape === 'churn' ? { connection: 'close' } : {};
      const later: Promise<void>[] = [];
      for (let round = 0; round < opts.rounds; round++) {
        for (const c of rotate(scalePeers, round + (shape === 'churn' ? 1 : 0))) {
          const rss = c.pids.length ? new PeakRss(c.pids) : undefined;
          const r = await measureLoad(driver, c, 'get', connections, opts.durationSec, batch, extra);
          const run: ScaleRun = { ...r, shape, round, peakRssMb: rss ? rss.stop() : null, afterRssMb: null };
          scaleRuns.push(run);
          if (round === opts.rounds - 1 && c.pids.length) later.push(rssLater(c, opts.afterMs, run));
          log(
            `${shape} c=${connections} ${c.name.padEnd(10)} ${r.rps.toFixed(0).padStart(6)} req/s` +
              (r.cpuUsPerRequest !== null ? `  cpu ${r.cpuUsPerRequest.toFixed(1)} µs/req` : '') +
              (run.peakRssMb !== null ? `  peak RSS ${run.peakRssMb.toFixed(0)} MB` : '') +
              (r.errors ? `  ERRORS ${r.errors}` : ''),
          );
        }
      }
      await Promise.all(later);
      for (const r of scaleRuns.filter((x) => x.shape === shape && x.afterRssMb !== null)) log(`${shape} ${r.candidate.padEnd(10)} RSS ${r.afterRssMb!.toFixed(0)} MB ${opts.afterMs / 1000} s after`);
    }

    const startup = opts.shapes.has('startup') ? await measureStartup(opts, upstreamUrl) : { kvxMs: [], nodeFloorMs: [] };
    if (startup.kvxMs.length) log(`start-up to ready: kvx ${startup.kvxMs.map((v) => v.toFixed(0)).join(', ')} ms; bare node http server ${startup.nodeFloorMs.map((v) => v.toFixed(0)).join(', ')} ms`);

    // Summaries: medians per configuration.
    const rows: Row[] = [];
    const loadRow = (label: string, unit: string, better: Row['better'], workload: string, connections: number, pick: (r: LoadRun) => number | null) => {
      const values: Record<string, number | null> = {};
      const errors: Record<string, number> = {};
      for (const n of names) {
        const runs = loadRuns.filter((r) => r.candidate === n && r.workload === workload && r.connections === connections);
        values[n] = runs.length ? medianOrNull(runs.map(pick)) : null;
        errors[n] = runs.reduce((a, r) => a + r.errors, 0);
      }
      rows.push({ label, unit, better, values, errors });
    };
    for (const [workload, connections] of configs) {
      const what = workload === 'get' ? 'GET runs/get 1 KB' : 'POST log-batch 25 KB';
      loadRow(`${what} c=${connections}`, 'req/s', 'higher', workload, connections, (r) => r.rps);
      if (connections === 1) {
        loadRow(`${what} c=1 p50`, 'ms', 'lower', workload, connections, (r) => r.p50Ms);
        loadRow(`${what} c=1 p99`, 'ms', 'lower', workload, connections, (r) => r.p99Ms);
      }
      if (connections === 16) loadRow(`${what} c=16 proxy CPU`, 'µs/req', 'lower', workload, connections, (r) => r.cpuUsPerRequest);
    }
    for (const t of transferKinds) {
      for (const [unit, pick, better, suffix] of [
        ['MB/s', (r: TransferRun) => r.mbPerSec, 'higher', ''],
        ['ms/MB', (r: TransferRun) => r.cpuMsPerMb, 'lower', ' proxy CPU'],
        ['MB', (r: TransferRun) => r.peakRssMb, 'lower', ' peak RSS'],
      ] as const) {
        if (t.kind.includes('slow') && unit === 'MB/s') continue;
        if (unit === 'ms/MB' && !t.cpu) continue;
        const values: Record<string, number | null> = {};
        for (const n of names) {
          const runs = transferRuns.filter((r) => r.candidate === n && r.kind === t.kind);
          values[n] = runs.length ? (unit === 'MB' ? Math.max(...runs.map((r) => r.peakRssMb ?? 0)) || null : medianOrNull(runs.map(pick))) : null;
        }
        rows.push({ label: t.label + suffix, unit, better, values, errors: {} });
      }
    }
    if (workflowRuns.length) {
      const values: Record<string, number | null> = {};
      for (const n of names) {
        const seconds = workflowRuns.filter((r) => r.candidate === n).flatMap((r) => r.seconds);
        values[n] = seconds.length ? median(seconds) * 1000 : null;
      }
      rows.push({ label: `MLflow client workflow, ${mb(opts.workflowBytes)} artifact`, unit: 'ms', better: 'lower', values, errors: {} });
    }
    const afterLabel = `${opts.afterMs / 1000} s after`;
    if (idleRuns.length) {
      const label = `${opts.idleConnections.toLocaleString('en')} idle keep-alive connections`;
      const pick = (f: (r: IdleRun) => number | null) => Object.fromEntries(names.map((n) => [n, idleRuns.find((r) => r.candidate === n) ? f(idleRuns.find((r) => r.candidate === n)!) : null]));
      rows.push({ label: `${label}, memory per connection`, unit: 'KB/conn', better: 'lower', values: pick((r) => r.kbPerConnection), errors: {} });
      rows.push({ label: `${label}, RSS held`, unit: 'MB', better: 'lower', values: pick((r) => r.heldMb), errors: {} });
      rows.push({ label: `${label}, RSS ${afterLabel}`, unit: 'MB', better: 'lower', values: pick((r) => r.afterRssMb), errors: {} });
    }
    for (const shape of ['burst', 'churn'] as const) {
      const runs = scaleRuns.filter((r) => r.shape === shape);
      if (!runs.length) continue;
      const label = shape === 'burst' ? `GET runs/get 1 KB, ${opts.burstConnections} connections` : `GET runs/get 1 KB, new connection per request c=${opts.churnConnections}`;
      const of = (n: string) => runs.filter((r) => r.candidate === n);
      const medianOf = (f: (r: ScaleRun) => number | null) => Object.fromEntries(names.map((n) => [n, of(n).length ? medianOrNull(of(n).map(f)) : null]));
      const maxOf = (f: (r: ScaleRun) => number | null) =>
        Object.fromEntries(names.map((n) => [n, of(n).some((r) => f(r) !== null) ? Math.max(...of(n).map((r) => f(r) ?? 0)) : null]));
      const errors = Object.fromEntries(names.map((n) => [n, of(n).reduce((a, r) => a + r.errors, 0)]));
      rows.push({ label, unit: 'req/s', better: 'higher', values: medianOf((r) => r.rps), errors });
      rows.push({ label: `${label} proxy CPU`, unit: 'µs/req', better: 'lower', values: medianOf((r) => r.cpuUsPerRequest), errors: {} });
      rows.push({ label: `${label} peak RSS`, unit: 'MB', better: 'lower', values: maxOf((r) => r.peakRssMb), errors: {} });
      rows.push({ label: `${label} RSS ${afterLabel}`, unit: 'MB', better: 'lower', values: maxOf((r) => r.afterRssMb), errors: {} });
    }
    if (startup.kvxMs.length) {
      rows.push({ label: 'start-up to ready (static token)', unit: 'ms', better: 'lower', values: { kvx: median(startup.kvxMs) }, errors: {} });
      rows.push({ label: 'start-up, bare node http server (floor)', unit: 'ms', better: 'lower', values: { kvx: median(startup.nodeFloorMs) }, errors: {} });
    }

    const targets = evaluateTargets(rows, names, startup.kvxMs);
    const result = {
      date: new Date().toISOString(),
      mode: opts.smoke ? 'smoke' : 'full',
      machine: { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model, memoryGb: Math.round(os.totalmem() / 1e9), kernel: os.release(), node: process.version },
      driver: driver.name,
      options: {
        durationSec: opts.durationSec,
        rounds: opts.rounds,
        shapes: [...opts.shapes],
        transferBytes: opts.transferBytes,
        slowBytes: opts.slowBytes,
        slowBps: opts.slowBps,
        mlflowBytes: opts.mlflowBytes,
        mlflowChunkBytes: opts.mlflowChunkBytes,
        workflowBytes: opts.workflowBytes,
        workflowIterations: opts.workflowIterations,
        idleConnections: opts.idleConnections,
        idleHoldMs: opts.idleHoldMs,
        burstConnections: opts.burstConnections,
        churnConnections: opts.churnConnections,
        afterMs: opts.afterMs,
      },
      candidates: candidates.map((c) => ({ name: c.name, description: c.description })),
      notes,
      rows,
      targets,
      startup,
      loadRuns,
      transferRuns,
      workflowRuns,
      idleRuns,
      scaleRuns,
    };
    mkdirSync(dirname(opts.out), { recursive: true });
    writeFileSync(opts.out, JSON.stringify(result, null, 2) + '\n');

    const out: string[] = [];
    out.push('');
    out.push(`kvx benchmark (${result.mode}): ${result.machine.cpus} CPUs ${result.machine.cpuModel ?? ''}, node ${process.version}, load by ${driver.name}, ${opts.durationSec} s x ${opts.rounds} round(s) per configuration, medians`);
    for (const c of candidates) out.push(`  ${c.name.padEnd(11)} ${c.description}`);
    for (const n of notes) out.push(`  note: ${n}`);
    out.push('');
    out.push(table(rows, names));
    if (rows.some((r) => Object.values(r.errors).some((e) => e > 0))) out.push('  ! some runs behind this value saw errors or non-2xx answers');
    out.push('');
    out.push('targets (issues 6, 12 and 17):');
    for (const t of targets) out.push(`  ${t.met === null ? 'n/a ' : t.met ? 'met ' : 'MISS'}  ${t.target}: ${t.measured}`);
    out.push('');
    out.push(`JSON: ${opts.out}`);
    process.stdout.write(out.join('\n') + '\n');
  } finally {
    await stopAll();
  }
}

interface TargetCheck {
  target: string;
  measured: string;
  met: boolean | null;
}

function evaluateTargets(rows: Row[], names: string[], startupMs: number[]): TargetCheck[] {
  const row = (label: string) => rows.find((r) => r.label === label);
  const v = (label: string, name: string) => row(label)?.values[name] ?? null;
  const checks: TargetCheck[] = [];
  /** kvx over `peer` on the row: at least `min`, or with `max` at most that. */
  const ratio = (target: string, label: string, peer: string, min: number, max = Number.POSITIVE_INFINITY) => {
    const k = v(label, 'kvx');
    const p = v(label, peer);
    if (!names.includes(peer) || k === null || p === null) return checks.push({ target, measured: names.includes(peer) ? 'not measured' : `${peer} not measured`, met: null });
    const unit = row(label)!.unit;
    checks.push({ target, measured: `${fmt(k, unit)} vs ${fmt(p, unit)} ${unit} = ${(k / p).toFixed(2)}x`, met: k / p >= min && k / p <= max });
  };
  ratio('1 KB GET c=16: kvx >= 2x http-proxy', 'GET runs/get 1 KB c=16', 'http-proxy', 2);
  ratio('1 KB GET c=16: kvx >= 40% of nginx', 'GET runs/get 1 KB c=16', 'nginx', 0.4);
  const cpu = v('GET runs/get 1 KB c=16 proxy CPU', 'kvx');
  checks.push({ target: '1 KB GET c=16: <= 60 µs proxy CPU per request', measured: cpu === null ? 'not measured' : `${cpu.toFixed(1)} µs`, met: cpu === null ? null : cpu <= 60 });
  ratio('25 KB POST c=16: kvx >= 90% of nginx', 'POST log-batch 25 KB c=16', 'nginx', 0.9);
  for (const [p, limit] of [
    ['p50', 0.3],
    ['p99', 1],
  ] as const) {
    const label = `GET runs/get 1 KB c=1 ${p}`;
    const k = v(label, 'kvx');
    const n = v(label, 'nginx');
    checks.push({
      target: `1 conn ${p} within ${limit} ms of nginx`,
      measured: k === null || n === null ? 'nginx not measured' : `${k.toFixed(2)} vs ${n.toFixed(2)} ms (+${(k - n).toFixed(2)})`,
      met: k === null || n === null ? null : k - n <= limit,
    });
  }
  for (const dir of ['PUT', 'GET']) {
    const r = rows.find((x) => x.label.startsWith(`${dir} artifact`) && x.unit === 'MB/s' && !x.label.includes('x'));
    if (r) ratio(`${dir} artifact: kvx >= 60% of nginx MB/s`, r.label, 'nginx', 0.6);
  }
  const transferRss = rows.filter((r) => r.unit === 'MB' && r.label.endsWith(' peak RSS') && !r.label.startsWith('GET runs/get'));
  const rss = transferRss.map((r) => r.values['kvx']).filter((x): x is number => x != null);
  const maxRss = rss.length ? Math.max(...rss) : null;
  checks.push({ target: 'kvx peak RSS < 150 MB in every transfer', measured: maxRss === null ? 'not measured' : `max ${maxRss.toFixed(0)} MB`, met: maxRss === null ? null : maxRss < 150 });
  const rel: number[] = [];
  for (const r of rows.filter((x) => x.unit === 'req/s')) {
    const s = r.values['kvx'];
    const g = r.values['kvx-google'];
    if (s != null && g != null) rel.push(g / s);
  }
  checks.push({
    target: 'cached Google token within 3% of static',
    measured: rel.length ? `google/static ${rel.map((x) => x.toFixed(3)).join(', ')} (median ${median(rel).toFixed(3)})` : 'kvx-google not measured',
    met: rel.length ? median(rel) >= 0.97 : null,
  });
  const flow = rows.find((r) => r.label.startsWith('MLflow client workflow'));
  const k = flow?.values['kvx'] ?? null;
  const p = flow?.values['http-proxy'] ?? null;
  checks.push({
    target: 'MLflow client workflow: kvx within 10% of the plain node proxy (http-proxy)',
    measured: k === null || p === null ? 'not measured' : `${k.toFixed(0)} vs ${p.toFixed(0)} ms = ${(k / p).toFixed(2)}x`,
    met: k === null || p === null ? null : k / p <= 1.1,
  });
  const ready = startupMs.length ? median(startupMs) : null;
  checks.push({ target: 'ready < 300 ms from process start', measured: ready === null ? 'not measured' : `${ready.toFixed(0)} ms (median)`, met: ready === null ? null : ready < 300 });

  // Issue 17.
  const mlflow = rows.find((r) => r.label.startsWith('MLflow download') && r.unit === 'MB/s');
  if (mlflow) ratio('MLflow download: kvx >= 90% of nginx MB/s', mlflow.label, 'nginx', 0.9);
  const burst = rows.find((r) => r.label.startsWith('GET runs/get 1 KB,') && r.label.endsWith(' connections') && r.unit === 'req/s');
  if (burst) ratio(`${burst.label}: kvx >= 90% of nginx`, burst.label, 'nginx', 0.9);
  const churn = rows.find((r) => r.label.includes('new connection per request') && r.unit === 'req/s');
  if (churn) ratio('new connection per request: kvx >= 80% of nginx', churn.label, 'nginx', 0.8);
  const idle = rows.find((r) => r.unit === 'KB/conn');
  const perConn = idle?.values['kvx'] ?? null;
  checks.push({
    target: 'idle keep-alive: <= 8 KB per connection',
    measured: perConn === null ? 'not measured' : `${perConn.toFixed(1)} KB${idle?.values['nginx'] != null ? ` (nginx ${idle.values['nginx']!.toFixed(1)} KB)` : ''}`,
    met: perConn === null ? null : perConn <= 8,
  });
  const burstAfter = burst ? (rows.find((r) => r.label.startsWith(burst.label + ' RSS '))?.values['kvx'] ?? null) : null;
  const burstAfterLabel = burst ? rows.find((r) => r.label.startsWith(burst.label + ' RSS '))?.label.slice(burst.label.length + 5) : undefined;
  checks.push({
    target: `RSS < 120 MB ${burstAfterLabel ?? '30 s after'} the ${burst ? burst.label.slice('GET runs/get 1 KB, '.length) : '500 connections'} burst`,
    measured: burstAfter === null ? 'not measured' : `${burstAfter.toFixed(0)} MB`,
    met: burstAfter === null ? null : burstAfter < 120,
  });
  ratio('1 KB GET c=16 proxy CPU, request log on: kvx <= 1.5x nginx', 'GET runs/get 1 KB c=16 proxy CPU', 'nginx', 0, 1.5);
  ratio('25 KB POST c=16 proxy CPU, request log on: kvx <= 1.3x nginx', 'POST log-batch 25 KB c=16 proxy CPU', 'nginx', 0, 1.3);
  checks.push({ target: 'kvx peak RSS <= 80 MB in every transfer', measured: maxRss === null ? 'not measured' : `max ${maxRss.toFixed(0)} MB`, met: maxRss === null ? null : maxRss <= 80 });
  return checks;
}

main().catch((err: unknown) => {
  process.stderr.write(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
});
