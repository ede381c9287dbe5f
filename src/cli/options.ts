import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { CommanderError, Option } from 'commander';
import type { ConfigOverride, LoadedConfig } from '../config/load.js';
import { planProviders } from '../auth/registry.js';
import '../auth/index.js';
import { loadConfig } from '../config/load.js';
import { AUTH_PROVIDER_TYPES } from '../config/schema.js';
import { ConfigError, KvxError, errorMessage } from '../errors.js';

/** Output streams and environment, injectable so `main(argv)` is testable in-process. */
export interface CliIO {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  env: NodeJS.ProcessEnv;
}

export const defaultIO = (): CliIO => ({ stdout: process.stdout, stderr: process.stderr, env: process.env });

/** Flag → config key. Flags win over env and files; each override remembers its flag for error messages. */
const FLAG_KEYS: Record<string, { key: string; flag: string }> = {
  upstream: { key: 'upstream.url', flag: '--upstream' },
  host: { key: 'listen.host', flag: '--host' },
  port: { key: 'listen.port', flag: '--port' },
  allowNonLoopback: { key: 'listen.allowNonLoopback', flag: '--allow-non-loopback' },
  adminHost: { key: 'admin.host', flag: '--admin-host' },
  adminPort: { key: 'admin.port', flag: '--admin-port' },
  admin: { key: 'admin.enabled', flag: '--no-admin' },
  authProvider: { key: 'auth.provider', flag: '--auth-provider' },
  authHeader: { key: 'auth.header', flag: '--auth-header' },
  authScheme: { key: 'auth.scheme', flag: '--auth-scheme' },
  authModule: { key: 'auth.module', flag: '--auth-module' },
  clientId: { key: 'auth.params.client_id', flag: '--client-id' },
  serviceAccount: { key: 'auth.params.service_account', flag: '--service-account' },
  tokenEnv: { key: 'auth.params.token_env', flag: '--token-env' },
  tokenFile: { key: 'auth.params.token_file', flag: '--token-file' },
  requireToken: { key: 'auth.requireTokenAtStart', flag: '--no-require-token' },
  caFile: { key: 'upstream.caFile', flag: '--ca-file' },
  certFile: { key: 'upstream.certFile', flag: '--cert-file' },
  keyFile: { key: 'upstream.keyFile', flag: '--key-file' },
  insecure: { key: 'upstream.insecure', flag: '--insecure' },
  logLevel: { key: 'log.level', flag: '--log-level' },
  allowedHosts: { key: 'server.allowedHosts', flag: '--allowed-hosts' },
  allowedOrigins: { key: 'server.allowedOrigins', flag: '--allowed-origins' },
};

/** commander option parser for repeatable flags. */
export const collect = (value: string, previous: string[] = []): string[] => [...previous, value];

/** The options every kvx-proxy command that builds a proxy or providers accepts. */
export function addConfigOptions(command: Command): Command {
  return command
    .option('-c, --config <file>', 'config file (kvx YAML or a kedro-vertexai vertexai.yml); repeat to layer files; env KVX_CONFIG', collect)
    .option('--upstream <url>', 'MLflow server URL (upstream.url)')
    .option('--host <address>', 'listen address (listen.host)')
    .option('--port <port>', 'listen port, 0 for a free one (listen.port)')
    .option('--allow-non-loopback', 'allow listening on a non-loopback address (listen.allowNonLoopback)')
    .option('--allowed-hosts <names>', 'comma-separated host names clients may address the proxy by, * for any (server.allowedHosts)')
    .option('--allowed-origins <origins>', 'comma-separated browser origins allowed to call the proxy, * for any (server.allowedOrigins)')
    .option('--admin-host <address>', 'admin listen address (admin.host)')
    .option('--admin-port <port>', 'admin port for /healthz, /readyz, /metrics (admin.port)')
    .option('--no-admin', 'do not open the admin listener (admin.enabled: false)')
    .addOption(new Option('--auth-provider <type>', 'header provider (auth.provider)').choices(AUTH_PROVIDER_TYPES))
    .option('--auth-header <name>', 'header the token goes in (auth.header)')
    .option('--auth-scheme <scheme>', 'scheme before the token, "" for none (auth.scheme)')
    .option('--auth-module <path>', 'custom provider module (auth.module)')
    .option('--client-id <id>', 'IAP OAuth client id, the token audience (auth.params.client_id)')
    .option('--service-account <email>', 'service account to impersonate (auth.params.service_account)')
    .option('--token-env <name>', 'environment variable holding a static token (auth.params.token_env)')
    .option('--token-file <path>', 'file holding a static token (auth.params.token_file)')
    .option('--param <key=value>', 'provider param (auth.params.<key>); repeatable', collect)
    .option('--no-require-token', 'start even when the first credentials fail (auth.requireTokenAtStart: false)')
    .option('--ca-file <path>', 'CA bundle for upstream TLS (upstream.caFile)')
    .option('--cert-file <path>', 'client certificate for mutual TLS (upstream.certFile)')
    .option('--key-file <path>', 'client key for mutual TLS (upstream.keyFile)')
    .option('--insecure', 'do not verify upstream TLS (upstream.insecure); debugging only')
    .addOption(new Option('--log-level <level>', 'log level (log.level)').choices(['debug', 'info', 'warn', 'error', 'silent']))
    .option('--debug', 'print stack traces for errors');
}

/** Reads the parsed flags of `addConfigOptions` into config layers and loads the config. */
export function loadConfigFromOptions(
  opts: Record<string, unknown>,
  io: CliIO,
  load: { requireUpstream?: boolean; checkProviders?: boolean } = {},
): LoadedConfig {
  const overrides: ConfigOverride[] = [];
  for (const [name, { key, flag }] of Object.entries(FLAG_KEYS)) {
    const value = opts[name];
    if (value === undefined) continue;
    // commander's --no-x flags default to true; only an explicit --no-x (false) is an override.
    if ((name === 'admin' || name === 'requireToken') && value === true) continue;
    overrides.push({ path: key, value, source: flag });
  }
  for (const pair of (opts['param'] as string[] | undefined) ?? []) {
    const eq = pair.indexOf('=');
    if (eq <= 0) {
      throw new ConfigError([{ path: `--param ${pair}`, message: 'must be key=value, e.g. --param client_id=1234.apps.googleusercontent.com' }]);
    }
    overrides.push({ path: `auth.params.${pair.slice(0, eq)}`, value: pair.slice(eq + 1), source: `--param ${pair.slice(0, eq)}` });
  }
  const files = (opts['config'] as string[] | undefined) ?? (io.env['KVX_CONFIG'] ? [io.env['KVX_CONFIG']] : []);
  return loadConfig({
    files,
    env: io.env,
    overrides,
    require: { upstream: load.requireUpstream ?? true },
    extraChecks: load.checkProviders === false ? undefined : (config) => planProviders(config, io.env).problems,
  });
}

/**
 * Prints an error the way every kvx CLI does and returns its exit code: 2 for configuration and usage
 * problems, 130 for an interrupt (128 + SIGINT), 1 for everything else. Stack traces only with --debug.
 */
export function reportError(err: unknown, io: CliIO, program: string, debug: boolean): number {
  if (err instanceof ConfigError) {
    io.stderr.write(`${program}: ${err.message}\n`);
    return 2;
  }
  if (err instanceof KvxError) {
    io.stderr.write(`${program}: ${err.message}\n`);
    if (err.hint) io.stderr.write(`  hint: ${err.hint}\n`);
    if (debug && err.stack) io.stderr.write(`${err.stack}\n`);
    if (err.code === 'KVX_INTERRUPTED') return 130;
    return err.code === 'KVX_USAGE' ? 2 : 1;
  }
  io.stderr.write(`${program}: ${errorMessage(err)}\n`);
  if (debug && err instanceof Error && err.stack) io.stderr.write(`${err.stack}\n`);
  return 1;
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

/**
 * Parses `argv` with `program` and turns the outcome into the exit code every kvx CLI uses: the code the
 * command set (0 by default), 2 for usage errors commander reports, and reportError's code for the rest.
 */
export async function runProgram(program: Command, argv: readonly string[], io: CliIO, name: string, commandCode: () => number): Promise<number> {
  let code: number;
  try {
    await program.parseAsync(['node', name, ...argv]);
    code = commandCode();
  } catch (err) {
    if (err instanceof CommanderError) code = err.exitCode === 0 ? 0 : 2;
    else code = reportError(err, io, name, argv.includes('--debug'));
  }
  process.exitCode = code;
  return code;
}
