import type { Command } from 'commander';
import { EXEC_EXIT, execWithProxy, prepareExecConfig } from '../exec/index.js';
import { Logger } from '../log/logger.js';
import { StreamSink } from '../log/stream-sink.js';
import { refuseUnrequestedInspector } from './inspector-guard.js';
import { addConfigOptions, defaultIO, loadConfigFromOptions } from './options.js';
import type { CliIO } from './options.js';

/**
 * `kvx-proxy exec [options] -- COMMAND [ARGS...]`: the sidecar for single-container steps. A Kedro step on
 * Vertex AI becomes `kvx-proxy exec --config conf/base/vertexai.yml -- kedro run ...`.
 *
 * `setExit` receives the exit code; by default it is stored where kvx-proxy's main() reads it.
 */
export function registerExecCommand(program: Command, io: CliIO = defaultIO(), setExit?: (code: number) => void): Command {
  const exit = setExit ?? ((code: number) => ((program as unknown as { kvxExitCode?: number }).kvxExitCode = code));
  // Options after COMMAND belong to COMMAND (`exec -- kedro run --pipeline x`, or without `--`).
  program.enablePositionalOptions();
  const command = program
    .command('exec')
    .description('run COMMAND with MLFLOW_TRACKING_URI pointing at a proxy started for it; exits with its exit code')
    .argument('<command>', 'program to run, found on PATH')
    .argument('[args...]', 'its arguments')
    .passThroughOptions()
    .addHelpText(
      'after',
      [
        '',
        'The proxy listens on a free loopback port and the command starts only once the first credentials are',
        'held. The command gets MLFLOW_TRACKING_URI=http://127.0.0.1:<port>, without MLFLOW_TRACKING_TOKEN,',
        'MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD. With no upstream configured, MLFLOW_TRACKING_URI',
        'as given to kvx-proxy names the MLflow server. SIGTERM, SIGINT, SIGHUP and SIGQUIT are passed on.',
        'Proxy logs go to stderr.',
        '',
        `Exit status: the command's own; 128+N if signal N ended it; ${EXEC_EXIT.proxyFailed} if the proxy could not become`,
        `ready (the command was not started); ${EXEC_EXIT.notExecutable} if the command cannot be run; ${EXEC_EXIT.notFound} if it was not found;`,
        '2 for configuration errors.',
        '',
        'Example: kvx-proxy exec --config conf/base/vertexai.yml -- kedro run --pipeline training',
      ].join('\n'),
    );
  addConfigOptions(command).action(async (cmd: string, args: string[], opts: Record<string, unknown>) => {
    const loaded = loadConfigFromOptions(opts, io, { requireUpstream: false });
    const notes = prepareExecConfig(loaded, io.env);
    // stdout belongs to the command: every proxy log line goes to stderr (written no more if it fails).
    const logger = new Logger(loaded.config.log.level, new StreamSink(io.stderr), { component: 'kvx-proxy' });
    refuseUnrequestedInspector();
    for (const note of notes) logger.info(note, { upstream: loaded.config.upstream.url });
    const result = await execWithProxy(loaded, cmd, args, { logger, env: io.env });
    if (result.message) io.stderr.write(`kvx-proxy exec: ${result.message}\n`);
    exit(result.code);
  });
  return command;
}
