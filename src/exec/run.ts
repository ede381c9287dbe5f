import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { constants } from 'node:os';
import type { LoadedConfig } from '../config/load.js';
import { defaultUpstream } from '../config/mlflow-env.js';
import { ConfigError, KvxError, errorMessage } from '../errors.js';
import type { Logger } from '../log/logger.js';
import { startProxy } from '../proxy/server.js';
import type { RunningProxy } from '../proxy/server.js';
import { childEnvironment } from './child-env.js';

/**
 * Exit codes of `kvx-proxy exec` when the command itself did not decide one. 125-127 follow the convention of
 * wrappers such as `env`, `timeout` and `docker run`, so a pipeline step's exit code tells whose failure it was.
 */
export const EXEC_EXIT = {
  /** The proxy could not become ready (no credentials, port not available); the command was not started. */
  proxyFailed: 125,
  /** The command exists but could not be executed (permissions, not a program). */
  notExecutable: 126,
  /** The command was not found on PATH. */
  notFound: 127,
} as const;

/** Signals passed on to the command; a terminal's Ctrl-C, Kubernetes' and Vertex AI's stop, a closed session. */
export const FORWARDED_SIGNALS: readonly NodeJS.Signals[] = ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGQUIT'];

export interface ExecOptions {
  logger: Logger;
  /** Environment of the proxy's providers and the base of the command's environment. */
  env: NodeJS.ProcessEnv;
  /** Where signals arrive; `process` outside tests. */
  signals?: NodeJS.EventEmitter;
  /** The command's stdio; inherited so its stdout stays its own. */
  stdio?: 'inherit' | 'ignore';
}

export interface ExecResult {
  code: number;
  /** Why kvx chose the code, when the command did not exit on its own; printed by the CLI. */
  message?: string;
}

/**
 * Adapts a loaded config to running beside one command: a free loopback port (unless --host/--port say
 * otherwise), no admin listener unless one was asked for, first credentials required before the command starts,
 * and the upstream taken from MLFLOW_TRACKING_URI or mlflow.yml when the config names none (`defaultUpstream`).
 */
export function prepareExecConfig(loaded: LoadedConfig, env: NodeJS.ProcessEnv): string[] {
  const { config, sources } = loaded;
  const notes: string[] = [];
  const fromFlag = (key: string) => sources.get(key)?.startsWith('flag:') ?? false;
  if (!fromFlag('listen.host')) config.listen.host = '127.0.0.1';
  if (!fromFlag('listen.port')) config.listen.port = 0;
  if (!sources.has('admin.port') && !sources.has('admin.host')) config.admin.enabled = false;
  config.auth.requireTokenAtStart = true;

  const upstreamFrom = defaultUpstream(loaded, env);
  if (upstreamFrom !== undefined) notes.push(`upstream taken from ${upstreamFrom}`);
  if (config.upstream.url === '') {
    throw new ConfigError([
      {
        path: 'upstream.url',
        message:
          "required: the MLflow server to forward to (config upstream.url, flag --upstream, env KVX_UPSTREAM_URL, MLFLOW_TRACKING_URI set to the real server, or an http(s) server.mlflow_tracking_uri in kedro-mlflow's mlflow.yml beside the vertexai.yml)",
      },
    ]);
  }
  return notes;
}

/**
 * Starts the proxy, runs `command` with MLFLOW_TRACKING_URI pointing at it once the first credentials are held,
 * forwards stop signals, and drains the proxy when the command ends. Resolves with the exit code to use: the
 * command's own, 128+N when a signal N ended it, or one of EXEC_EXIT. Throws ConfigError for config problems.
 */
export async function execWithProxy(loaded: LoadedConfig, command: string, args: readonly string[], options: ExecOptions): Promise<ExecResult> {
  const { logger, env } = options;
  const signals = options.signals ?? process;
  let child: ChildProcess | undefined;
  let stopSignal: NodeJS.Signals | undefined;

  const onSignal = (signal: NodeJS.Signals) => {
    if (child && child.exitCode === null && child.signalCode === null) {
      logger.info('forwarding signal to the command', { signal, pid: child.pid });
      child.kill(signal);
    } else if (!child) {
      stopSignal ??= signal;
      logger.info('signal received before the command started; it will not be started', { signal });
    }
  };
  for (const signal of FORWARDED_SIGNALS) signals.on(signal, onSignal);
  const removeHandlers = () => {
    for (const signal of FORWARDED_SIGNALS) signals.off(signal, onSignal);
  };

  let proxy: RunningProxy;
  try {
    proxy = await startProxy(loaded, { logger, env, processMetrics: false });
  } catch (err) {
    removeHandlers();
    if (err instanceof ConfigError) throw err;
    const hint = err instanceof KvxError && err.hint ? ` (${err.hint})` : '';
    return { code: EXEC_EXIT.proxyFailed, message: `the proxy could not become ready, so ${command} was not started: ${errorMessage(err)}${hint}` };
  }

  try {
    if (stopSignal) return { code: 128 + signalNumber(stopSignal), message: `${stopSignal} arrived while the proxy was starting; ${command} was not started` };
    if (!proxy.ready()) {
      return { code: EXEC_EXIT.proxyFailed, message: `the proxy started without usable credentials, so ${command} was not started` };
    }

    const { env: childEnv, removed } = childEnvironment(env, proxy.url);
    if (removed.length > 0) logger.info('removed MLflow credentials from the command environment; the proxy authenticates instead', { removed });
    logger.info('starting command', { command, mlflowTrackingUri: proxy.url });

    const spawned = await spawnCommand(command, args, childEnv, options.stdio ?? 'inherit');
    if ('error' in spawned) return spawned.error;
    child = spawned.child;
    child.on('error', (err) => logger.warn('command process error', { error: errorMessage(err) }));
    // A signal that arrived while the process was being created is passed on now.
    if (stopSignal) child.kill(stopSignal);

    const { code, signal } = await spawned.exited;
    if (signal) {
      logger.info('command ended by a signal', { command, signal });
      return { code: 128 + signalNumber(signal) };
    }
    logger.info('command exited', { command, code });
    return { code: code ?? 1 };
  } finally {
    removeHandlers();
    const cut = await proxy.close();
    if (cut > 0) logger.warn('requests still in flight when the command ended were cut', { cut });
  }
}

async function spawnCommand(
  command: string,
  args: readonly string[],
  env: NodeJS.ProcessEnv,
  stdio: 'inherit' | 'ignore',
): Promise<{ child: ChildProcess; exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }> } | { error: ExecResult }> {
  let child: ChildProcess;
  try {
    child = spawn(command, args, { env, stdio });
  } catch (err) {
    // spawn throws, rather than emitting 'error', for failures such as ELOOP or E2BIG.
    return { error: { code: EXEC_EXIT.notExecutable, message: `cannot run ${command}: ${(err as NodeJS.ErrnoException).code ?? errorMessage(err)}` } };
  }
  // Listen for the exit before anything else can run, so even an instant exit is seen.
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
  return new Promise((resolve) => {
    child.once('spawn', () => resolve({ child, exited }));
    child.once('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') {
        resolve({ error: { code: EXEC_EXIT.notFound, message: `command not found: ${command} (check the name and PATH)` } });
      } else {
        resolve({ error: { code: EXEC_EXIT.notExecutable, message: `cannot run ${command}: ${err.code ?? errorMessage(err)}` } });
      }
    });
  });
}

function signalNumber(signal: NodeJS.Signals): number {
  return constants.signals[signal] ?? 0;
}
