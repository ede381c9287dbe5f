import { TRACKING_URI_KEY, proxyBypass, readKedroMlflow } from '../config/kedro-mlflow.js';
import type { ProxyBypass } from '../config/kedro-mlflow.js';
import { EXEC_EXIT, execWithProxy, prepareExecConfig } from '../exec/index.js';
import { Logger } from '../log/logger.js';
import { StreamSink } from '../log/stream-sink.js';
import { refuseUnrequestedInspector } from './inspector-guard.js';
import { loadConfigFromOptions } from './options.js';
import type { CliIO, CommandDef } from './program.js';

/**
 * `kvx-proxy exec [options] -- COMMAND [ARGS...]`: the sidecar for single-container steps. A Kedro step on
 * Vertex AI becomes `kvx-proxy exec --config conf/base/vertexai.yml -- kedro run ...`. Exits with the command's code.
 */
export function execCommand(io: CliIO): CommandDef {
  return {
    id: 'kvx-proxy exec',
    description: 'run COMMAND with MLFLOW_TRACKING_URI pointing at a proxy started for it; exits with its exit code',
    arguments: [
      { name: '<command>', help: 'program to run, found on PATH' },
      { name: '[args...]', help: 'its arguments' },
    ],
    // Options after COMMAND belong to COMMAND (`exec -- kedro run --pipeline x`, or without `--`).
    passThroughOptions: true,
    helpAfter: [
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
    async run(flags, [cmd, args]) {
      const loaded = loadConfigFromOptions(flags, io, { requireUpstream: false });
      const notes = prepareExecConfig(loaded, io.env);
      // stdout belongs to the command: every proxy log line goes to stderr (written no more if it fails).
      const logger = new Logger(loaded.config.log.level, new StreamSink(io.stderr), { component: 'kvx-proxy' });
      refuseUnrequestedInspector();
      for (const note of notes) logger.info(note, { upstream: loaded.config.upstream.url });
      const bypass = kedroStepBypass(loaded.kedroConfDir);
      if (bypass !== undefined) logger.warn(`a kedro command here would not use this proxy: ${bypass.file}: ${TRACKING_URI_KEY} "${bypass.value}" ${bypass.reason}`);
      const result = await execWithProxy(loaded, cmd as string, (args as string[] | undefined) ?? [], { logger, env: io.env });
      if (result.message) io.stderr.write(`kvx-proxy exec: ${result.message}\n`);
      return result.code;
    },
  };
}

/** Said in the step's log, where a failing kedro step is looked into; the command may not be kedro, so not refused. */
function kedroStepBypass(confDir: string | undefined): ProxyBypass | undefined {
  if (confDir === undefined) return undefined;
  try {
    return proxyBypass(readKedroMlflow(confDir));
  } catch {
    return undefined; // an unreadable mlflow.yml is kedro's to report
  }
}
