/**
 * Imported first by kvx-proxy's entry module. kvx-proxy is meant to run with the Node flags kvx ships with
 * (package.json kvx.nodeFlags): `--max-semi-space-size=8`, without which V8 grows its young generation toward
 * 128 MB under sustained load (about 100 MB more RSS in the soak at the same throughput), and `--disable-sigusr1`,
 * which keeps the inspector's signal closed from Node's first instruction (see inspector-guard.ts). The
 * standalone executable has them built in, and the image runs it; the npm bin's `#!/usr/bin/env node` line
 * cannot pass flags. So kvx-proxy started as that bin without them replaces itself, once and before it has read
 * any configuration, with the same Node given them: process.execve keeps the pid, stdio, arguments and
 * environment, so a supervisor, a shell's job control or Kubernetes sees one process throughout. A flag already
 * given in any form (on the command line or in NODE_OPTIONS, with any value) is left as the user gave it. Where
 * execve does not exist (Windows) or package.json cannot be read, kvx-proxy runs as it was started.
 *
 * The same replacement gives it the process environment kvx ships with (package.json kvx.processEnv), settings the
 * C library reads only when a process starts: `MALLOC_ARENA_MAX=1` keeps the memory glibc's malloc has freed in one
 * arena, for any thread to reuse, instead of one arena per thread that allocated (4-6 MB less RSS after load and
 * in every transfer, no measurable cost: a proxy's JS runs on one thread). A variable the user set, to any value,
 * is kept. What kvx added is taken out of process.env again as the new process starts (glibc has read it by
 * then), so the commands `kvx-proxy exec` runs and the helpers a credential source starts get the user's
 * environment, not one tuned for kvx.
 *
 * One V8 setting is applied at run time instead, in every process that loads this module: the old generation's
 * growing factor (HEAP_GROWING_FLAG, below).
 */
import { readFileSync, realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import v8 from 'node:v8';

/** Names, comma-separated, of the variables the replacement added: kvx's own, never the user's. */
export const ADDED_ENV_MARKER = 'KVX_PROXY_ADDED_ENV';

/** The shipped flags whose option is not among those this Node was given. */
export function missingNodeFlags(shipped: readonly string[], execArgv: readonly string[], nodeOptions: string | undefined): string[] {
  const optionName = (arg: string): string => arg.split('=')[0]!;
  const given = new Set([...execArgv, ...(nodeOptions ?? '').split(/\s+/)].map(optionName));
  return shipped.filter((flag) => !given.has(optionName(flag)));
}

/** The shipped variables this process has no value for, with the values kvx ships. */
export function missingProcessEnv(shipped: Readonly<Record<string, string>>, env: NodeJS.ProcessEnv): Record<string, string> {
  return Object.fromEntries(Object.entries(shipped).filter(([name]) => env[name] === undefined));
}

/**
 * Removes from `env` the variables an earlier replacement added, and the marker naming them. Returns whether
 * there was one: this process is then that replacement, and must not replace itself again for them.
 */
export function forgetAddedEnv(env: NodeJS.ProcessEnv): boolean {
  const added = env[ADDED_ENV_MARKER];
  if (added === undefined) return false;
  for (const name of added.split(',')) if (name !== '') delete env[name];
  delete env[ADDED_ENV_MARKER];
  return true;
}

interface Shipped {
  flags: string[];
  env: Record<string, string>;
}

function shipped(): Shipped {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { kvx?: { nodeFlags?: unknown; processEnv?: unknown } };
    const flags = pkg.kvx?.nodeFlags;
    const env = pkg.kvx?.processEnv;
    return {
      flags: Array.isArray(flags) && flags.every((f): f is string => typeof f === 'string' && f.startsWith('--')) ? flags : [],
      env: typeof env === 'object' && env !== null && Object.values(env).every((v) => typeof v === 'string') ? (env as Record<string, string>) : {},
    };
  } catch {
    return { flags: [], env: {} }; // the standalone bundle has no import.meta.url and no package.json: its flags are built in
  }
}

/** Whether this process was started with kvx-proxy's entry file as its script, not imported by a test or a tool. */
function startedAsKvxProxy(): boolean {
  const script = process.argv[1];
  if (!script) return false;
  try {
    return realpathSync(script) === realpathSync(fileURLToPath(new URL('./kvx-proxy.js', import.meta.url)));
  } catch {
    return false;
  }
}

/**
 * How much V8 lets its old generation grow past what the last full collection kept, before it runs the next
 * one. V8 picks a factor between 1.1 and 4 from how fast it collects: a proxy's live heap is small and fast to
 * mark, so it gets 4, and under sustained traffic the old generation fills with promoted garbage up to four times
 * the live heap before anything reclaims it. Fixed at 1.5, a proxy on Node 24 under 12 s of mixed GET, POST and
 * new-connection-per-request load held 99 MB instead of 119, and a transfer right after load (the benchmark's
 * `--shapes load,transfer --only kvx`, where no idle spell lets the idle reducer run) peaked at 100 MB instead of
 * 114. The price is a full collection about twice as often (13 against 6 in those 12 s, 3 to 4.5 ms each, the
 * marking mostly on V8's helper threads); instructions per request under callgrind did not change.
 *
 * Set at run time, not with the shipped command-line flags: Node does not document this V8 flag, and an unknown
 * flag on a command line stops Node from starting, while here V8 prints two lines and Node goes on. V8 reads it at
 * every collection, so setting it once the heap exists works (checked on Node 22.19, 24 and 26). A value the user
 * gave on the command line is kept.
 */
export const HEAP_GROWING_FLAG = '--heap-growing-percent=50';

/** Applies HEAP_GROWING_FLAG unless this Node was given the flag itself. */
function limitHeapGrowth(): void {
  if (missingNodeFlags([HEAP_GROWING_FLAG], process.execArgv, process.env['NODE_OPTIONS']).length > 0) v8.setFlagsFromString(HEAP_GROWING_FLAG);
}

const replaced = forgetAddedEnv(process.env);
if (typeof process.execve === 'function' && startedAsKvxProxy()) {
  const ship = shipped();
  const flags = missingNodeFlags(ship.flags, process.execArgv, process.env['NODE_OPTIONS']);
  const env = replaced ? {} : missingProcessEnv(ship.env, process.env);
  const added = Object.keys(env);
  if (flags.length > 0 || added.length > 0) {
    process.execve(
      process.execPath,
      [process.execPath, ...flags, ...process.execArgv, ...process.argv.slice(1)],
      added.length > 0 ? { ...process.env, ...env, [ADDED_ENV_MARKER]: added.join(',') } : process.env,
    );
  }
}

limitHeapGrowth();
