/**
 * Entry logic of the standalone executable: one binary holds every kvx program and picks one by the name it
 * was invoked as (a `kvx-proxy` link or copy) or, when invoked as `kvx`, by its first argument.
 * scripts/build-sea.mjs generates the module that imports the programs and calls `dispatch`.
 */
import path from 'node:path';

export type Program = (argv: readonly string[]) => Promise<number>;

export interface DispatchIO {
  stdout: { write(s: string): unknown };
  stderr: { write(s: string): unknown };
}

const ALIASES: Record<string, string> = { proxy: 'kvx-proxy', launch: 'kvx-launch' };

export async function dispatch(
  programs: Readonly<Record<string, Program>>,
  invokedAs: string,
  args: readonly string[],
  version: string,
  io: DispatchIO = { stdout: process.stdout, stderr: process.stderr },
): Promise<number> {
  const name = path.basename(invokedAs).replace(/\.exe$/i, '');
  const direct = programs[name];
  if (direct) return direct(args);

  const first = args[0];
  if (first !== undefined) {
    const program = programs[ALIASES[first] ?? first];
    if (program) return program(args.slice(1));
  }
  const names = Object.keys(programs);
  const usage =
    `Usage: ${name} <program> [args...]   (or invoke this file through a link named after the program)\n` +
    `Programs: ${names.join(', ')}\n`;
  if (first === '--version' || first === '-V') {
    io.stdout.write(`${version}\n`);
    return 0;
  }
  if (first === undefined || first === '--help' || first === '-h' || first === 'help') {
    io.stdout.write(usage);
    return 0;
  }
  io.stderr.write(`${name}: unknown program "${first}"\n${usage}`);
  return 2;
}
