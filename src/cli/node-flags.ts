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
 */
import { readFileSync, realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** The shipped flags whose option is not among those this Node was given. */
export function missingNodeFlags(shipped: readonly string[], execArgv: readonly string[], nodeOptions: string | undefined): string[] {
  const optionName = (arg: string): string => arg.split('=')[0]!;
  const given = new Set([...execArgv, ...(nodeOptions ?? '').split(/\s+/)].map(optionName));
  return shipped.filter((flag) => !given.has(optionName(flag)));
}

function shippedNodeFlags(): string[] {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { kvx?: { nodeFlags?: unknown } };
    const flags = pkg.kvx?.nodeFlags;
    return Array.isArray(flags) && flags.every((f): f is string => typeof f === 'string' && f.startsWith('--')) ? flags : [];
  } catch {
    return []; // the standalone bundle has no import.meta.url and no package.json: its flags are built in
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

if (typeof process.execve === 'function' && startedAsKvxProxy()) {
  const missing = missingNodeFlags(shippedNodeFlags(), process.execArgv, process.env['NODE_OPTIONS']);
  if (missing.length > 0) process.execve(process.execPath, [process.execPath, ...missing, ...process.execArgv, ...process.argv.slice(1)], process.env);
}
