import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Command, CommanderError } from 'commander';
import { ConfigError, KvxError, errorMessage } from '../errors.js';
import { VERSION } from '../version.js';
import { CommandFlags, commanderOptions } from './flags.js';
import type { CommandId, ProgramName } from './flags.js';

/** Output streams and environment, injectable so `main(argv)` is testable in-process. */
export interface CliIO {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  env: NodeJS.ProcessEnv;
}

export const defaultIO = (): CliIO => ({ stdout: process.stdout, stderr: process.stderr, env: process.env });

/** Exit codes both programs share; a command's own outcome (a job's state, a wrapped command's code) adds to them. */
export const EXIT = {
  ok: 0,
  failed: 1,
  /** Bad configuration, flags or arguments. */
  usage: 2,
  /** 128 + SIGINT: SIGINT/SIGTERM ended the work. Never a usage error. */
  interrupted: 130,
} as const;

/** One subcommand: its words, and the one function it calls, which returns the exit code. */
export interface CommandDef {
  id: CommandId;
  description: string;
  isDefault?: boolean;
  /** commander argument syntax: `<job>`, `[spec]`, `[args...]`. */
  arguments?: readonly { name: string; help: string }[];
  /** Options after the first argument belong to it (`exec -- kedro run --pipeline x`). */
  passThroughOptions?: boolean;
  helpAfter?: string;
  run(flags: CommandFlags, args: readonly (string | string[] | undefined)[]): Promise<number>;
}

export interface ProgramDef {
  name: ProgramName;
  description: string;
  /** Descriptions of command groups (`schedule` of `schedule create`). */
  groups?: Readonly<Record<string, string>>;
  commands: readonly CommandDef[];
}

/**
 * Parses `argv`, runs the command it names and returns its exit code, also set as process.exitCode (the process
 * is never exited here, so tests and the exec wrapper run programs in-process): the command's own code, 2 for
 * usage errors commander reports, and exitCodeFor's code for errors.
 */
export async function runCli(def: ProgramDef, argv: readonly string[], io: CliIO): Promise<number> {
  let code: number = EXIT.ok;
  const program = new Command(def.name)
    .description(def.description)
    .version(VERSION, '-V, --version')
    .showHelpAfterError(`(run ${def.name} --help for usage)`)
    // Set before any subcommand is added: commander copies these settings into subcommands at creation.
    .exitOverride()
    .configureOutput({ writeOut: (s) => io.stdout.write(s), writeErr: (s) => io.stderr.write(s) });
  if (def.commands.some((c) => c.passThroughOptions)) program.enablePositionalOptions();
  const groups = new Map<string, Command>();
  for (const command of def.commands) {
    // `schedule create`: a group command (made once, with its description from the program's) holding `create`.
    const words = command.id.slice(def.name.length + 1).split(' ');
    let parent = program;
    if (words.length === 2) {
      const group = words[0]!;
      parent = groups.get(group) ?? program.command(group).description(def.groups?.[group] ?? `${group} commands`);
      groups.set(group, parent);
    }
    const sub = parent.command(words.at(-1)!, command.isDefault ? { isDefault: true } : {}).description(command.description);
    for (const arg of command.arguments ?? []) sub.argument(arg.name, arg.help);
    if (command.passThroughOptions) sub.passThroughOptions();
    if (command.helpAfter !== undefined) sub.addHelpText('after', command.helpAfter);
    for (const option of commanderOptions(command.id)) sub.addOption(option);
    sub.action(async (...received: unknown[]) => {
      // commander passes the arguments, then the options, then the command itself.
      const args = received.slice(0, -2) as (string | string[] | undefined)[];
      code = await command.run(new CommandFlags(command.id, received.at(-2) as Record<string, unknown>), args);
    });
  }
  try {
    await program.parseAsync(['node', def.name, ...argv]);
  } catch (err) {
    if (err instanceof CommanderError) code = err.exitCode === 0 ? EXIT.ok : EXIT.usage;
    else code = reportError(err, io, def.name, argv.includes('--debug'));
  }
  process.exitCode = code;
  return code;
}

/** 2 for configuration and usage problems, 130 for an interrupt, 1 for everything else. */
export function exitCodeFor(err: unknown): number {
  if (!(err instanceof KvxError)) return EXIT.failed;
  if (err instanceof ConfigError || err.code === 'KVX_CONFIG_INVALID' || err.code === 'KVX_USAGE') return EXIT.usage;
  return err.code === 'KVX_INTERRUPTED' ? EXIT.interrupted : EXIT.failed;
}

/** Prints an error the way every kvx CLI does and returns its exit code. Stack traces only with --debug. */
export function reportError(err: unknown, io: CliIO, program: string, debug: boolean): number {
  io.stderr.write(`${program}: ${errorMessage(err)}\n`);
  if (err instanceof KvxError && err.hint) io.stderr.write(`  hint: ${err.hint}\n`);
  if (debug && !(err instanceof ConfigError) && err instanceof Error && err.stack) io.stderr.write(`${err.stack}\n`);
  return exitCodeFor(err);
}

/**
 * True when the module at `moduleUrl` is the script node was started with (not imported by a test or by the
 * standalone executable's dispatcher, where `import.meta.url` is empty). Links are resolved, as npm's bin shims
 * are links.
 */
export function isMainModule(moduleUrl: string | undefined): boolean {
  const entry = process.argv[1];
  if (!entry || !moduleUrl) return false;
  try {
    return realpathSync(entry) === realpathSync(fileURLToPath(moduleUrl));
  } catch {
    return false;
  }
}
