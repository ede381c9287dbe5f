#!/usr/bin/env node
import './require-node.js';
import { planProviders } from '../auth/registry.js';
import '../auth/index.js';
import { redactConfig } from '../config/redact.js';
import { ConfigError } from '../errors.js';
import { BatchedSink } from '../log/batched-sink.js';
import { Logger } from '../log/logger.js';
import { startProxy } from '../proxy/server.js';
import { doctorCommands } from './doctor.js';
import { execCommand } from './exec.js';
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
        { id: 'kvx-proxy serve', isDefault: true, description: 'run the proxy until SIGTERM/SIGINT', run: (flags) => serve(flags, io) },
        { id: 'kvx-proxy check-config', description: 'validate the configuration and print it with secrets redacted', run: (flags) => checkConfig(flags, io) },
        execCommand(io),
        ...doctorCommands(io),
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

async function serve(opts: CommandFlags, io: CliIO): Promise<number> {
  const loaded = loadConfigFromOptions(opts, io);
  const logger = new Logger(loaded.config.log.level, new BatchedSink(io.stdout));
  const proxy = await startProxy(loaded, { logger, env: io.env });
  return new Promise<number>((resolve) => {
    const stop = (signal: NodeJS.Signals) => {
      process.off('SIGTERM', stop);
      process.off('SIGINT', stop);
      logger.info('signal received; draining', { signal });
      proxy.close().then(
        () => resolve(0),
        () => resolve(1),
      );
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
  });
}

if (isMainModule(import.meta.url)) void main(process.argv.slice(2));
