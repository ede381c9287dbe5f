import type { Command } from 'commander';
import { formatReport, runDoctor } from '../doctor/doctor.js';
import { printToken } from '../doctor/print-token.js';
import { Logger } from '../log/logger.js';
import { addConfigOptions, defaultIO, loadConfigFromOptions } from './options.js';
import type { CliIO } from './options.js';

/**
 * `kvx-proxy doctor` and `kvx-proxy print-token`. `setExit` receives the exit code; by default it is
 * stored where kvx-proxy's main() reads it.
 */
export function registerDoctorCommands(program: Command, io: CliIO = defaultIO(), setExit?: (code: number) => void): void {
  const exit = setExit ?? ((code: number) => ((program as unknown as { kvxExitCode?: number }).kvxExitCode = code));

  addConfigOptions(
    program
      .command('doctor')
      .description('check step by step that credentials can be produced and the upstream accepts them; never prints a token')
      .option('--api-path <path>', 'authenticated MLflow call to try', '/api/2.0/mlflow/experiments/search?max_results=1')
      .option('--timeout-ms <ms>', 'time allowed for each upstream request', '15000')
      .addHelpText('after', '\nExit status: 0 when every check passed, 1 when one failed, 2 for configuration errors.'),
  ).action(async (opts: Record<string, unknown>) => {
    const loaded = loadConfigFromOptions(opts, io, { requireUpstream: false, checkProviders: false });
    // Provider logs would repeat what the report says; only errors reach stderr.
    const logger = new Logger('error', io.stderr, { component: 'kvx-proxy doctor' });
    const report = await runDoctor(loaded, { env: io.env, logger, apiPath: String(opts['apiPath']), timeoutMs: Number(opts['timeoutMs']) || 15_000 });
    io.stdout.write(formatReport(report));
    exit(report.ok ? 0 : 1);
  });

  addConfigOptions(
    program
      .command('print-token')
      .description('print a fresh header value (e.g. "Bearer eyJ…") from the configured providers, for scripts and curl')
      .option('--token-only', 'print only the token, without the scheme (like gcloud auth print-identity-token)')
      .option('--header <name>', 'header whose value to print (default: auth.header)')
      .addHelpText('after', '\nExample: curl -H "Authorization: $(kvx-proxy print-token -c vertexai.yml)" https://mlflow.example.com/api/2.0/mlflow/experiments/search'),
  ).action(async (opts: Record<string, unknown>) => {
    const loaded = loadConfigFromOptions(opts, io, { requireUpstream: false });
    const logger = new Logger('warn', io.stderr, { component: 'kvx-proxy print-token' });
    const options: Parameters<typeof printToken>[1] = { env: io.env, logger, tokenOnly: opts['tokenOnly'] === true };
    if (typeof opts['header'] === 'string') options.header = opts['header'];
    io.stdout.write(`${await printToken(loaded, options)}\n`);
    exit(0);
  });
}
