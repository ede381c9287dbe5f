/** Child processes for the benchmark and what /proc says about them (CPU time, peak RSS). Linux only; elsewhere figures are null. */
import { execFileSync, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import net from 'node:net';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';

let clockTicks: number | undefined;
function ticksPerSecond(): number {
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clockTicks = 100;
    }
  }
  return clockTicks;
}

function statFields(pid: number): string[] | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // comm may contain spaces; fields after it start with the state (field 3).
    return text.slice(text.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

/** The process and its descendants (nginx: master and worker). */
export function processTree(pid: number): number[] {
  const children = new Map<number, number[]>();
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return [pid];
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    const fields = statFields(Number(entry));
    if (!fields) continue;
    const ppid = Number(fields[1]);
    const list = children.get(ppid) ?? [];
    list.push(Number(entry));
    children.set(ppid, list);
  }
  const out: number[] = [];
  const walk = (p: number): void => {
    out.push(p);
    for (const c of children.get(p) ?? []) walk(c);
  };
  walk(pid);
  return out;
}

/** User + system CPU seconds used so far by the process tree; null where /proc is missing. */
export function cpuSeconds(pids: readonly number[]): number | null {
  let ticks = 0;
  for (const pid of pids) {
    const fields = statFields(pid);
    if (!fields) return null;
    ticks += Number(fields[11]) + Number(fields[12]);
  }
  return ticks / ticksPerSecond();
}

function statusKb(pid: number, key: string): number | null {
  try {
    const match = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match ? Number(match[1]) : null;
  } catch {
    return null;
  }
}

/** Resident memory now, in MB (10^6 bytes), summed over the process tree; null without /proc. */
export function rssMb(pids: readonly number[]): number | null {
  let kb = 0;
  for (const pid of pids) {
    const v = statusKb(pid, 'VmRSS');
    if (v === null) return null;
    kb += v;
  }
  return (kb * 1024) / 1e6;
}

/** The soft and hard limits on open files of this process (children inherit them); null without /proc. */
export function openFileLimits(): { soft: number; hard: number } | null {
  try {
    const line = /^Max open files\s+(\S+)\s+(\S+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    if (!line) return null;
    const n = (v: string) => (v === 'unlimited' ? Number.POSITIVE_INFINITY : Number(v));
    return { soft: n(line[1]!), hard: n(line[2]!) };
  } catch {
    return null;
  }
}

/**
 * Peak RSS over a phase. The kernel's high-water mark (VmHWM) is reset at the start where allowed
 * (clear_refs 5, Linux ≥ 4.0); a 20 ms VmRSS sampler backs it up. Summed over the process tree.
 */
export class PeakRss {
  private sampled = 0;
  private readonly timer: NodeJS.Timeout;
  private readonly hwmReset: boolean;

  constructor(private readonly pids: readonly number[]) {
    let reset = true;
    for (const pid of pids) {
      try {
        writeFileSync(`/proc/${pid}/clear_refs`, '5');
      } catch {
        reset = false;
      }
    }
    this.hwmReset = reset;
    this.sample();
    this.timer = setInterval(() => this.sample(), 20);
  }

  private sample(): void {
    let total = 0;
    for (const pid of this.pids) total += statusKb(pid, 'VmRSS') ?? 0;
    this.sampled = Math.max(this.sampled, total);
  }

  /** Peak in MB (10^6 bytes), or null without /proc. */
  stop(): number | null {
    clearInterval(this.timer);
    this.sample();
    let hwm = 0;
    for (const pid of this.pids) {
      const kb = statusKb(pid, 'VmHWM');
      if (kb === null) return this.sampled > 0 ? (this.sampled * 1024) / 1e6 : null;
      hwm += kb;
    }
    const kb = this.hwmReset ? Math.max(hwm, this.sampled) : this.sampled;
    return (kb * 1024) / 1e6;
  }
}

export interface Child {
  proc: ChildProcess;
  pid: number;
  /** Resolves with the first stdout line that parses as JSON and satisfies `accept`. */
  waitFor<T>(accept: (value: Record<string, unknown>) => T | undefined, timeoutMs?: number): Promise<T>;
  /** Stop looking for lines: a pipe is only drained from here on, as a log collector would; a file is no longer read. */
  drainOnly(): void;
  stop(): Promise<void>;
  stderrTail(): string;
}

/**
 * Spawns a child whose stdout carries JSON lines. By default stdout is a pipe drained for the child's whole
 * life (like a log collector). With `stdoutFile` it goes straight to that file instead, as nginx writes its
 * access log: no reader process competes for the benchmark's two cores, and `waitFor` polls the file.
 */
export function startChild(command: string, args: string[], env: NodeJS.ProcessEnv, cwd: string, stdoutFile?: string): Child {
  const fileFd = stdoutFile === undefined ? undefined : openSync(stdoutFile, 'a');
  const proc = spawn(command, args, { env, cwd, stdio: ['ignore', fileFd ?? 'pipe', 'pipe'] });
  if (fileFd !== undefined) closeSync(fileFd);
  let stderr = '';
  proc.stderr!.setEncoding('utf8');
  proc.stderr!.on('data', (s: string) => {
    stderr = (stderr + s).slice(-4000);
  });
  const waiters = new Set<(value: Record<string, unknown>) => boolean>();
  const onLine = (line: string): void => {
    if (waiters.size === 0 || !line.startsWith('{')) return;
    let value: Record<string, unknown>;
    try {
      value = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return;
    }
    for (const w of [...waiters]) if (w(value)) waiters.delete(w);
  };
  let stopReading: () => void;
  if (stdoutFile === undefined) {
    const lines = createInterface({ input: proc.stdout! });
    lines.on('line', onLine);
    stopReading = () => {
      lines.close();
      proc.stdout!.on('data', () => {});
      proc.stdout!.resume();
    };
  } else {
    let linesSeen = 0;
    const poll = setInterval(() => {
      if (waiters.size === 0) return;
      const lines = readFileSync(stdoutFile, 'utf8').split('\n');
      lines.pop(); // a line still being written
      for (const line of lines.slice(linesSeen)) onLine(line);
      linesSeen = lines.length;
    }, 10);
    stopReading = () => clearInterval(poll);
    proc.once('exit', () => clearInterval(poll));
  }
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  return {
    proc,
    pid: proc.pid!,
    waitFor<T>(accept: (value: Record<string, unknown>) => T | undefined, timeoutMs = 15_000) {
      return new Promise<T>((resolve, reject) => {
        const timer = setTimeout(() => {
          waiters.delete(waiter);
          reject(new Error(`${command} ${args.join(' ')}: no ready line within ${timeoutMs} ms\n${stderr}`));
        }, timeoutMs);
        const onExit = () => {
          clearTimeout(timer);
          reject(new Error(`${command} ${args.join(' ')} exited (${proc.exitCode ?? proc.signalCode}) before it was ready\n${stderr}`));
        };
        proc.once('exit', onExit);
        const waiter = (value: Record<string, unknown>) => {
          const result = accept(value);
          if (result === undefined) return false;
          clearTimeout(timer);
          proc.off('exit', onExit);
          resolve(result);
          return true;
        };
        waiters.add(waiter);
      });
    },
    async stop() {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    },
    drainOnly: () => stopReading(),
    stderrTail: () => stderr,
  };
}

export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

export async function waitForPort(port: number, child: Child, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const socket = net.connect(port, '127.0.0.1');
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (ok) return;
    if (child.proc.exitCode !== null) throw new Error(`exited before listening: ${child.stderrTail()}`);
    if (Date.now() > deadline) throw new Error(`nothing listening on ${port} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * The Node flags and process environment a build of kvx-proxy ships with (its package.json's kvx.nodeFlags and
 * kvx.processEnv: what the image gives it), so each candidate runs here as it runs there, and none spends its
 * start-up replacing itself to get them.
 */
export function shippedLaunch(bin: string): { flags: string[]; env: Record<string, string> } {
  const file = join(dirname(bin), '..', '..', 'package.json');
  if (!existsSync(file)) throw new Error(`${bin}: no package.json at ${file}; point BENCH_KVX_BASELINE at the dist/cli/kvx-proxy.js of a checkout`);
  const pkg = JSON.parse(readFileSync(file, 'utf8')) as { kvx?: { nodeFlags?: string[]; processEnv?: Record<string, string> } };
  return { flags: pkg.kvx?.nodeFlags ?? [], env: pkg.kvx?.processEnv ?? {} };
}
