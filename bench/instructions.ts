/**
 * `npm run bench:instructions`: user-space instructions per proxied request, kvx-proxy against nginx, counted
 * by valgrind's callgrind in the candidate's process (every thread; nginx runs as one process here).
 *
 *   node --import tsx bench/instructions.ts [--warmup N] [--requests N] [--shapes get,post,churn] [--only kvx,nginx]
 *
 * Why beside `npm run bench`: on a shared two-core machine the same build's CPU per request differs by 20 % and
 * more from round to round, more than most changes to the hot path. Instruction counts repeat to about 3 %, so
 * they tell whether a change helped. They leave out the kernel (system calls, loopback TCP), which is half of a
 * small request's cost and much the same for both candidates, and cache misses, so they rank changes; the timed
 * run stays the measure of record.
 *
 * Each candidate starts under callgrind with collection off, takes the warm-up requests (so kvx's JavaScript is
 * compiled as it is in service), counts the measured requests and nothing else, and is stopped.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { findNginx, nginxConfig } from './nginx.js';
import { freePort, shippedLaunch, startChild, waitForPort } from './proc.js';
import type { Child } from './proc.js';
import { RUN_ID, TOKEN, logBatchBody } from './shapes.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const KVX_BIN = join(ROOT, 'dist', 'cli', 'kvx-proxy.js');
const SHAPES = ['get', 'post', 'churn'] as const;
type Shape = (typeof SHAPES)[number];
const CONNECTIONS = 16;
const SHAPE_LABEL: Record<Shape, string> = {
  get: `GET runs/get 1 KB, keep-alive, c=${CONNECTIONS}`,
  post: `POST log-batch 25 KB, keep-alive, c=${CONNECTIONS}`,
  churn: `GET runs/get 1 KB, new connection per request, c=${CONNECTIONS}`,
};

interface Options {
  warmup: number;
  requests: number;
  shapes: Shape[];
  only: Set<string> | undefined;
}

const CANDIDATES = ['kvx', 'nginx'];
const FLAGS = ['--warmup', '--requests', '--shapes', '--only'];

function parseArgs(argv: string[]): Options {
  const given = new Map<string, string>();
  for (let i = 0; i < argv.length; i += 2) {
    const flag = argv[i]!;
    if (!FLAGS.includes(flag)) throw new Error(`${flag}: unknown option; the options are ${FLAGS.join(', ')}`);
    const raw = argv[i + 1];
    if (raw === undefined || raw.startsWith('--')) throw new Error(`${flag} needs a value`);
    given.set(flag, raw);
  }
  const count = (flag: string, fallback: number): number => {
    const raw = given.get(flag);
    if (raw === undefined) return fallback;
    const n = Number(raw);
    if (!Number.isInteger(n) || n < 1) throw new Error(`${flag} ${raw}: expected a whole number of requests, at least 1`);
    return n;
  };
  const list = (flag: string, allowed: readonly string[]): string[] => {
    const names = (given.get(flag) ?? allowed.join(',')).split(',').map((s) => s.trim());
    for (const n of names) if (!allowed.includes(n)) throw new Error(`${flag}: unknown name "${n}"; choose from ${allowed.join(', ')}`);
    return names;
  };
  const only = given.has('--only') ? new Set(list('--only', CANDIDATES)) : undefined;
  return { warmup: count('--warmup', 12_000), requests: count('--requests', 6_000), shapes: list('--shapes', SHAPES) as Shape[], only };
}

/** Sends `total` requests over CONNECTIONS connections at a time, as the shape asks; rejects on any answer but 200. */
async function drive(url: string, shape: Shape, total: number, batch: Buffer): Promise<void> {
  const agent = shape === 'churn' ? undefined : new http.Agent({ keepAlive: true, maxSockets: CONNECTIONS });
  const path = shape === 'post' ? '/api/2.0/mlflow/runs/log-batch' : `/api/2.0/mlflow/runs/get?run_id=${RUN_ID}`;
  const headers: Record<string, string> =
    shape === 'post' ? { 'content-type': 'application/json', 'content-length': String(batch.length) } : shape === 'churn' ? { connection: 'close' } : {};
  let left = total;
  const one = (): Promise<void> =>
    new Promise((resolveOne, reject) => {
      const req = http.request(`${url}${path}`, { method: shape === 'post' ? 'POST' : 'GET', headers, agent: agent ?? false }, (res) => {
        res.resume();
        res.on('end', () => (res.statusCode === 200 ? resolveOne() : reject(new Error(`${path} answered ${res.statusCode}`))));
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end(shape === 'post' ? batch : undefined);
    });
  const worker = async (): Promise<void> => {
    while (left > 0) {
      left--;
      await one();
    }
  };
  try {
    await Promise.all(Array.from({ length: CONNECTIONS }, worker));
  } finally {
    agent?.destroy();
  }
}

/**
 * Ir summed over the dumps callgrind wrote for `pid` (the explicit dump and the one at exit): over every thread,
 * and over the main thread alone (file suffix -01), where the event loop runs.
 */
function instructionsOf(dir: string, prefix: string, pid: number): { all: number; main: number } {
  const own = `${prefix}.${pid}`;
  const files = readdirSync(dir).filter((f) => f.startsWith(own) && (f.length === own.length || f[own.length] === '.' || f[own.length] === '-'));
  if (files.length === 0) throw new Error(`callgrind wrote nothing for process ${pid} in ${dir}`);
  let all = 0;
  let main = 0;
  for (const f of files) {
    // A dump's `summary` line can read 0 while its `totals` line holds the count.
    const match = /^totals:\s+(\d+)/m.exec(readFileSync(join(dir, f), 'utf8'));
    if (!match) continue;
    all += Number(match[1]);
    if (f.endsWith('-01')) main += Number(match[1]);
  }
  // Nothing counted means callgrind_control reached a process that does not serve the requests.
  if (all === 0) throw new Error(`callgrind counted no instructions for process ${pid} (files: ${files.join(', ')})`);
  return { all, main };
}

const callgrind = (pid: number, ...args: string[]): void => {
  execFileSync('callgrind_control', [...args, String(pid)], { stdio: 'ignore', timeout: 60_000 });
};

interface Counted {
  candidate: string;
  shape: Shape;
  requests: number;
  /** Every thread's instructions, and the main thread's, per request. */
  instructionsPerRequest: number;
  mainThreadPerRequest: number;
}

async function measure(name: string, shape: Shape, opts: Options, upstreamPort: number, tmp: string, batch: Buffer): Promise<Counted> {
  const dir = join(tmp, `${name}-${shape}`);
  mkdirSync(dir, { recursive: true });
  const prefix = 'callgrind.out';
  const valgrind = ['--tool=callgrind', '--instr-atstart=no', '--separate-threads=yes', `--callgrind-out-file=${join(dir, prefix)}.%p`];
  let child: Child;
  let url: string;
  if (name === 'kvx') {
    const launch = shippedLaunch(KVX_BIN);
    const args = [process.execPath, ...launch.flags, KVX_BIN, '--upstream', `http://127.0.0.1:${upstreamPort}`, '--auth-provider', 'static', '--token-env', 'BENCH_TOKEN', '--port', '0', '--admin-port', '0', '--log-level', 'info'];
    child = startChild('valgrind', [...valgrind, ...args], { ...process.env, ...launch.env, BENCH_TOKEN: TOKEN }, ROOT, join(dir, 'kvx.log'));
    url = await child.waitFor((v) => (v['msg'] === 'kvx-proxy listening' && typeof v['url'] === 'string' ? v['url'] : undefined), 300_000);
    child.drainOnly();
  } else {
    const nginx = findNginx();
    if (!nginx) throw new Error('nginx is not installed (apt-get install nginx), or pass --only kvx');
    const port = await freePort();
    const confDir = join(dir, 'nginx');
    mkdirSync(confDir, { recursive: true });
    const nginxArgs = nginxConfig(confDir, port, upstreamPort, TOKEN);
    // One process: callgrind_control reaches a process valgrind started, not one it forked (nginx's worker).
    const conf = join(confDir, 'nginx.conf');
    const generated = readFileSync(conf, 'utf8');
    if (!/^master_process on;$/m.test(generated)) throw new Error(`${conf}: no "master_process on;" line to turn off; bench/nginx.ts changed its config`);
    writeFileSync(conf, generated.replace(/^master_process on;$/m, 'master_process off;'));
    child = startChild('valgrind', [...valgrind, nginx, ...nginxArgs], process.env, confDir);
    await waitForPort(port, child, 120_000);
    child.drainOnly();
    url = `http://127.0.0.1:${port}`;
  }
  try {
    await drive(url, shape, opts.warmup, batch);
    callgrind(child.pid, '-i', 'on');
    await drive(url, shape, opts.requests, batch);
    callgrind(child.pid, '-i', 'off');
    callgrind(child.pid, '-d');
  } finally {
    await child.stop();
  }
  const counted = instructionsOf(dir, prefix, child.pid);
  return { candidate: name, shape, requests: opts.requests, instructionsPerRequest: counted.all / opts.requests, mainThreadPerRequest: counted.main / opts.requests };
}

async function main(): Promise<void> {
  const opts = parseArgs(process.argv.slice(2));
  try {
    execFileSync('valgrind', ['--version'], { stdio: 'ignore' });
  } catch {
    throw new Error('valgrind is not installed: apt-get install valgrind (callgrind counts the instructions)');
  }
  const candidates = CANDIDATES.filter((c) => !opts.only || opts.only.has(c));
  const tmp = mkdtempSync(join(os.tmpdir(), 'kvx-instructions-'));
  const upstream = startChild(process.execPath, ['--import', 'tsx', join(ROOT, 'bench', 'upstream.ts')], { ...process.env, BENCH_TOKEN: TOKEN }, ROOT);
  const results: Counted[] = [];
  try {
    const upstreamPort = await upstream.waitFor((v) => (typeof v['port'] === 'number' ? v['port'] : undefined));
    upstream.drainOnly();
    const batch = logBatchBody();
    for (const shape of opts.shapes) {
      for (const name of candidates) {
        const r = await measure(name, shape, opts, upstreamPort, tmp, batch);
        process.stderr.write(`${shape.padEnd(6)} ${name.padEnd(6)} ${(r.instructionsPerRequest / 1000).toFixed(1)}k instructions per request (main thread ${(r.mainThreadPerRequest / 1000).toFixed(1)}k)\n`);
        results.push(r);
      }
    }
  } finally {
    await upstream.stop();
    rmSync(tmp, { recursive: true, force: true });
  }
  console.log(`\nuser-space instructions per request (callgrind; ${opts.warmup} warm-up requests, ${opts.requests} counted)`);
  console.log(`${'shape'.padEnd(58)} ${'kvx'.padStart(9)} ${'kvx main'.padStart(9)} ${'nginx'.padStart(9)} ${'kvx/nginx'.padStart(10)}`);
  for (const shape of opts.shapes) {
    const of = (c: string) => results.find((r) => r.shape === shape && r.candidate === c);
    const kvx = of('kvx')?.instructionsPerRequest;
    const kvxMain = of('kvx')?.mainThreadPerRequest;
    const nginx = of('nginx')?.instructionsPerRequest;
    const cell = (v: number | undefined) => (v === undefined ? '-' : `${(v / 1000).toFixed(1)}k`).padStart(9);
    const ratio = kvx !== undefined && nginx !== undefined ? `${(kvx / nginx).toFixed(2)}x` : '-';
    console.log(`${SHAPE_LABEL[shape].padEnd(58)} ${cell(kvx)} ${cell(kvxMain)} ${cell(nginx)} ${ratio.padStart(10)}`);
  }
  const outDir = join(ROOT, 'bench', 'results');
  mkdirSync(outDir, { recursive: true });
  const file = join(outDir, `instructions-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, JSON.stringify({ node: process.version, warmup: opts.warmup, requests: opts.requests, results }, null, 2) + '\n');
  console.log(`\nJSON: ${file}`);
}

main().catch((err: unknown) => {
  process.stderr.write(`bench:instructions: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
