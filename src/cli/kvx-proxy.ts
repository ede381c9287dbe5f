#!/usr/bin/env node
import { refuseUnrequestedInspector } from './inspector-guard.js';
import './require-node.js';
import './node-flags.js';
import { planProviders } from '../auth/registry.js';
import '../auth/index.js';
import { redactConfig } from '../config/redact.js';
import { ConfigError } from '../errors.js';
import { BatchedSink } from '../log/batched-sink.js';
import { Logger } from '../log/logger.js';
import { StreamSink } from '../log/stream-sink.js';
import { startProxy } from '../proxy/server.js';
import { doctorCommands } from './doctor.js';
import { execCommand } from './exec.js';
import { loginCommands } from './login.js';
import type { CommandFlags } from './flags.js';
import { loadConfigFromOptions } from './options.js';
import { EXIT, defaultIO, isMainModule, runCli } from './program.js';
import type { CliIO } from './program.js';

/**
 * kvx-proxy's entry point. Returns the exit code (and sets process.exitCode) rather than exiting, so tests
 * and the exec wrapper can call it in-process.
 */
export async function main(argv: readonly string[], io: CliIO = defaultIO()): Promise<number> {
  return runCli(
    {
      name: 'kvx-proxy',
      description: 'Authenticating reverse proxy for MLflow behind Google IAP, Cloud Run IAM or any auth layer',
      commands: [
        { id: 'kvx-proxy serve', isDefault: true, description: 'run the proxy until SIGTERM, SIGINT or SIGHUP', run: (flags) => serve(flags, io) },
        { id: 'kvx-proxy check-config', description: 'validate the configuration and print it with secrets redacted', run: (flags) => checkConfig(flags, io) },
        execCommand(io),
        ...doctorCommands(io),
        ...loginCommands(io),
      ],
    },
    argv,
    io,
  );
}

async function checkConfig(flags: CommandFlags, io: CliIO): Promise<number> {
  const loaded = loadConfigFromOptions(flags, io);
  const { plans, problems } = planProviders(loaded.config, io.env);
  if (problems.length > 0) throw new ConfigError(problems);
  const { default: YAML } = await import('yaml');
  io.stdout.write(YAML.stringify({ config: redactConfig(loaded.config), providers: plans.map((p) => ({ type: p.type, header: p.header, reason: p.reason })) }));
  io.stderr.write('kvx-proxy: configuration is valid\n');
  return EXIT.ok;
}

/** The signals that make `serve` drain and exit; SIGHUP is a closed terminal or session. */
const STOP_SIGNALS: readonly NodeJS.Signals[] = ['SIGTERM', 'SIGINT', 'SIGHUP'];

async function serve(opts: CommandFlags, io: CliIO): Promise<number> {
  const loaded = loadConfigFromOptions(opts, io);
  const level = loaded.config.log.level;
  // A log reader that goes away (`kvx-proxy | tee`, tee closed) stops the logs, not the proxy; stderr, if
  // anyone still reads it, is told once.
  const onLost = (err: NodeJS.ErrnoException) =>
    new Logger(level, new StreamSink(io.stderr)).warn('log output failed; no more log lines are written to it, the proxy keeps serving', {
      stream: 'stdout',
      code: err.code,
      error: err.message,
    });
  const logger = new Logger(level, new BatchedSink(io.stdout, onLost));
  refuseUnrequestedInspector();
  const proxy = await startProxy(loaded, { logger, env: io.env });
  return new Promise<number>((resolve) => {
    const stop = (signal: NodeJS.Signals) => {
      for (const s of STOP_SIGNALS) process.off(s, stop);
      logger.info('signal received; draining', { signal });
      proxy.close().then(
        () => resolve(0),
        () => resolve(1),
      );
    };
    for (const s of STOP_SIGNALS) process.on(s, stop);
  });
}

if (isMainModule(import.meta.url)) void main(process.argv.slice(2));
