/**
 * A real kvx-proxy process (dist/cli/kvx-proxy.js on the Node running the tests), its logs, and what it
 * holds open: file descriptors and TCP sockets read from /proc, so a case can prove nothing leaked.
 */
import { execFileSync, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { closeSync, constants as fsConstants, existsSync, mkdtempSync, openSync, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import type { Readable } from 'node:stream';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { record } from './transcript.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const PROXY_CLI = path.join(ROOT, 'dist/cli/kvx-proxy.js');
/**
 * The Node flags kvx ships with (package.json kvx.nodeFlags), as NODE_OPTIONS: the standalone executable, the
 * image and `npm run proxy` run with them, so a measurement of the shipped proxy's memory must too.
 */
export const SHIPPED_NODE_OPTIONS = (JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { kvx: { nodeFlags: string[] } }).kvx.nodeFlags.join(' ');

export interface LogLine {
  level: string;
  msg: string;
  [field: string]: unknown;
}

export interface SpawnOptions {
  /** Arguments after the CLI path. */
  args: string[];
  /** Environment for the child, on top of PATH and HOME only (nothing else leaks in from the test runner). */
  env?: Record<string, string>;
  /** YAML written to a temporary file and passed with --config. */
  configYaml?: string;
  /** Label for transcript entries. */
  label?: string;
  startTimeoutMs?: number;
  /** The program and its first arguments, before `args`; default: this Node running dist/cli/kvx-proxy.js. */
  command?: string[];
  /** Soft and hard RLIMIT_NOFILE for the process (set with prlimit, as `ulimit -n` would). */
  fdLimit?: number;
  /**
   * 'fifo' makes the process's stdout a real pipe (a FIFO, as `kvx-proxy | tee` gives; node's own 'pipe' is a
   * socketpair), read here until closeStdout().
   */
  stdout?: 'pipe' | 'fifo';
  /** The stream the JSON log lines arrive on: stdout for serve, stderr for exec. */
  logStream?: 'stdout' | 'stderr';
  /** The log line that means the process is up; default "kvx-proxy listening". */
  ready?: (l: LogLine) => boolean;
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

const TCP_STATES: Record<string, string> = {
  '01': 'ESTABLISHED',
  '02': 'SYN_SENT',
  '03': 'SYN_RECV',
  '04': 'FIN_WAIT1',
  '05': 'FIN_WAIT2',
  '06': 'TIME_WAIT',
  '07': 'CLOSE',
  '08': 'CLOSE_WAIT',
  '09': 'LAST_ACK',
  '0A': 'LISTEN',
  '0B': 'CLOSING',
};

export interface TcpSocket {
  inode: string;
  localPort: number;
  remotePort: number;
  state: string;
}

export interface FdSnapshot {
  total: number;
  sockets: number;
  tcp: TcpSocket[];
}

/** Starts a proxy and waits for its "kvx-proxy listening" line. Rejects with its output if it exits first. */
export async function spawnProxy(options: SpawnOptions): Promise<ProxyProcess> {
  if (!options.command && !existsSync(PROXY_CLI)) throw new Error(`${PROXY_CLI} is missing: run \`npm run build\` first (npm run test:faults does)`);
  const dir = mkdtempSync(path.join(tmpdir(), 'kvx-faults-'));
  const args = [...options.args];
  if (options.configYaml !== undefined) {
    const file = path.join(dir, 'kvx.yaml');
    writeFileSync(file, options.configYaml);
    args.unshift('--config', file);
  }
  // The fault suite runs once per engine (npm run test:faults): KVX_SERVER_ENGINE=node for the second run.
  const engine: Record<string, string> = process.env['KVX_SERVER_ENGINE'] ? { KVX_SERVER_ENGINE: process.env['KVX_SERVER_ENGINE'] } : {};
  const env: Record<string, string> = { PATH: process.env['PATH'] ?? '/usr/bin:/bin', HOME: dir, ...engine, ...options.env };
  let argv = [...(options.command ?? [process.execPath, PROXY_CLI]), ...args];
  // prlimit execs the program: the pid, and so /proc/<pid>/fd, is the proxy's own.
  if (options.fdLimit !== undefined) argv = [prlimitPath(), `--nofile=${options.fdLimit}:${options.fdLimit}`, '--', ...argv];
  let stdout: Readable | undefined;
  let stdoutFd: number | undefined;
  if (options.stdout === 'fifo') {
    const fifo = path.join(dir, 'stdout.fifo');
    execFileSync('mkfifo', [fifo]);
    // The read end first, without blocking (no writer yet); then the write end the child inherits.
    const readFd = openSync(fifo, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
    stdout = new net.Socket({ fd: readFd, readable: true, writable: false });
    stdoutFd = openSync(fifo, 'w');
  }
  const child = spawn(argv[0]!, argv.slice(1), { env, stdio: ['ignore', stdoutFd ?? 'pipe', 'pipe'] });
  if (stdoutFd !== undefined) closeSync(stdoutFd);
  const proxy = new ProxyProcess(child, dir, options.label ?? args.join(' ').slice(0, 80), stdout ?? child.stdout!, options.logStream ?? 'stdout');
  try {
    await proxy.waitForLog(options.ready ?? ((l) => l.msg === 'kvx-proxy listening'), options.startTimeoutMs ?? 15_000);
  } catch (err) {
    child.kill('SIGKILL');
    await proxy.exited;
    throw new Error(`kvx-proxy did not start: ${(err as Error).message}\nstdout:\n${proxy.stdout}\nstderr:\n${proxy.stderr}`, { cause: err });
  }
  return proxy;
}

function prlimitPath(): string {
  const found = ['/usr/bin/prlimit', '/bin/prlimit'].find((p) => existsSync(p));
  if (!found) throw new Error('prlimit (util-linux) is needed to run a proxy with a low file descriptor limit');
  return found;
}

export class ProxyProcess {
  url = '';
  adminUrl = '';
  port = 0;
  adminPort = 0;
  stdout = '';
  stderr = '';
  readonly logs: LogLine[] = [];
  readonly exited: Promise<Exit>;
  exit: Exit | undefined;
  private partial = '';
  private waiters: { match: (l: LogLine) => boolean; resolve: (l: LogLine) => void }[] = [];

  constructor(
    readonly child: ChildProcess,
    readonly dir: string,
    private readonly label: string,
    private readonly stdoutStream: Readable = child.stdout!,
    logStream: 'stdout' | 'stderr' = 'stdout',
  ) {
    stdoutStream.setEncoding('utf8');
    child.stderr!.setEncoding('utf8');
    stdoutStream.on('data', (s: string) => {
      this.stdout += s;
      record('log', this.label, s);
      if (logStream === 'stdout') this.onLogText(s);
    });
    // A reader closed on purpose (closeStdout) can report the pipe's end; nothing to do with it.
    stdoutStream.on('error', () => {});
    child.stderr!.on('data', (s: string) => {
      this.stderr += s;
      record('stderr', this.label, s);
      if (logStream === 'stderr') this.onLogText(s);
    });
    this.exited = new Promise<Exit>((resolve) => {
      child.on('exit', (code, signal) => {
        this.exit = { code, signal };
        resolve(this.exit);
      });
    });
  }

  get pid(): number {
    return this.child.pid!;
  }

  get alive(): boolean {
    return this.exit === undefined;
  }

  /** Closes the reading end of the process's stdout, as a `tee` that goes away does. */
  closeStdout(): void {
    this.stdoutStream.destroy();
  }

  /** TCP ports the process listens on. */
  listeningPorts(): number[] {
    return this.fds()
      .tcp.filter((t) => t.state === 'LISTEN')
      .map((t) => t.localPort);
  }

  private onLogText(s: string): void {
    this.partial += s;
    let nl: number;
    while ((nl = this.partial.indexOf('\n')) !== -1) {
      const line = this.partial.slice(0, nl);
      this.partial = this.partial.slice(nl + 1);
      if (line.trim() === '') continue;
      let parsed: LogLine;
      try {
        parsed = JSON.parse(line) as LogLine;
      } catch {
        parsed = { level: 'unparsed', msg: line };
      }
      if (parsed.msg === 'kvx-proxy listening') {
        this.url = String(parsed['url']);
        this.adminUrl = String(parsed['adminUrl'] ?? '');
        this.port = Number(new URL(this.url).port);
        if (this.adminUrl) this.adminPort = Number(new URL(this.adminUrl).port);
      }
      this.logs.push(parsed);
      this.waiters = this.waiters.filter((w) => {
        if (!w.match(parsed)) return true;
        w.resolve(parsed);
        return false;
      });
    }
  }

  /** Resolves with the first log line (already written or future) that matches. */
  waitForLog(match: (l: LogLine) => boolean, timeoutMs = 10_000): Promise<LogLine> {
    const seen = this.logs.find(match);
    if (seen) return Promise.resolve(seen);
    return new Promise<LogLine>((resolve, reject) => {
      const waiter = {
        match,
        resolve: (l: LogLine) => {
          clearTimeout(timer);
          resolve(l);
        },
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(new Error(`no matching log line within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiters.push(waiter);
      void this.exited.then(() => {
        if (this.waiters.includes(waiter)) {
          clearTimeout(timer);
          this.waiters = this.waiters.filter((w) => w !== waiter);
          reject(new Error(`process exited (${JSON.stringify(this.exit)}) before a matching log line`));
        }
      });
    });
  }

  requestLogs(): LogLine[] {
    return this.logs.filter((l) => l.msg === 'request');
  }

  /** Open file descriptors and the TCP sockets among them, read from /proc. */
  fds(): FdSnapshot {
    const fdDir = `/proc/${this.pid}/fd`;
    const inodes = new Set<string>();
    let total = 0;
    for (const fd of readdirSync(fdDir)) {
      let target: string;
      try {
        target = readlinkSync(`${fdDir}/${fd}`);
      } catch {
        continue; // closed between readdir and readlink
      }
      total += 1;
      const m = /^socket:\[(\d+)\]$/.exec(target);
      if (m) inodes.add(m[1]!);
    }
    const tcp: TcpSocket[] = [];
    for (const table of ['tcp', 'tcp6']) {
      let text: string;
      try {
        text = readFileSync(`/proc/${this.pid}/net/${table}`, 'utf8');
      } catch {
        continue;
      }
      for (const line of text.split('\n').slice(1)) {
        const cols = line.trim().split(/\s+/);
        if (cols.length < 10 || !inodes.has(cols[9]!)) continue;
        tcp.push({
          inode: cols[9]!,
          localPort: parseInt(cols[1]!.split(':')[1]!, 16),
          remotePort: parseInt(cols[2]!.split(':')[1]!, 16),
          state: TCP_STATES[cols[3]!] ?? cols[3]!,
        });
      }
    }
    return { total, sockets: inodes.size, tcp };
  }

  /** TCP connections (not listeners) the proxy holds, split by peer. */
  connections(upstreamPort?: number): { clients: TcpSocket[]; upstream: TcpSocket[]; other: TcpSocket[] } {
    const { tcp } = this.fds();
    const open = tcp.filter((s) => s.state !== 'LISTEN');
    return {
      clients: open.filter((s) => s.localPort === this.port),
      upstream: open.filter((s) => upstreamPort !== undefined && s.remotePort === upstreamPort),
      other: open.filter((s) => s.localPort !== this.port && s.localPort !== this.adminPort && s.remotePort !== upstreamPort),
    };
  }

  rssBytes(): number {
    const status = readFileSync(`/proc/${this.pid}/status`, 'utf8');
    const m = /VmRSS:\s+(\d+) kB/.exec(status);
    return m ? Number(m[1]) * 1024 : NaN;
  }

  signal(sig: NodeJS.Signals): void {
    if (this.alive) this.child.kill(sig);
  }

  /** SIGTERM, then SIGKILL if it has not exited within `graceMs`. */
  async stop(graceMs = 10_000): Promise<Exit> {
    if (this.alive) {
      this.child.kill('SIGTERM');
      const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
      await this.exited;
      clearTimeout(timer);
    }
    rmSync(this.dir, { recursive: true, force: true });
    return this.exit!;
  }
}

/** Polls `probe` until `done` accepts its value or the time is up; returns the last value either way. */
export async function pollUntil<T>(probe: () => T | Promise<T>, done: (v: T) => boolean, timeoutMs = 5000, everyMs = 25): Promise<T> {
  const until = Date.now() + timeoutMs;
  let value = await probe();
  while (!done(value) && Date.now() < until) {
    await new Promise((r) => setTimeout(r, everyMs));
    value = await probe();
  }
  return value;
}
