import type * as DoctorModule from '../doctor/doctor.js';
import type * as PrintTokenModule from '../doctor/print-token.js';
import { Logger } from '../log/logger.js';
import { lazyRequire } from '../util/lazy-require.js';
import { loadConfigFromOptions } from './options.js';
import { EXIT } from './program.js';
import type { CliIO, CommandDef } from './program.js';

/**
 * `kvx-proxy doctor` and `kvx-proxy print-token`. Their modules (the doctor's HTTP client among them) load when
 * the command runs: every `serve` and `exec` would otherwise carry them in memory (with the login commands',
 * about 4.5 MB of RSS; lazyRequire: see login.ts).
 */
export function doctorCommands(io: CliIO): CommandDef[] {
  return [
    {
      id: 'kvx-proxy doctor',
      description: 'check step by step that credentials can be produced and the upstream accepts them; never prints a token',
      helpAfter: '\nExit status: 0 when every check passed, 1 when one failed, 2 for configuration errors.',
      async run(flags) {
        const loaded = loadConfigFromOptions(flags, io, { requireUpstream: false, checkProviders: false });
        // Provider logs would repeat what the report says; only errors reach stderr.
        const logger = new Logger('error', io.stderr, { component: 'kvx-proxy doctor' });
        const { formatReport, runDoctor } = lazyRequire('../doctor/doctor.js') as typeof DoctorModule;
        const report = await runDoctor(loaded, { env: io.env, logger, apiPath: flags.string('--api-path')!, timeoutMs: Number(flags.string('--timeout-ms')) || 15_000 });
        io.stdout.write(formatReport(report));
        return report.ok ? EXIT.ok : EXIT.failed;
      },
    },
    {
      id: 'kvx-proxy print-token',
      description: 'print a fresh header value (e.g. "Bearer eyJ…") from the configured providers, for scripts and curl',
      helpAfter: '\nExample: curl -H "Authorization: $(kvx-proxy print-token -c vertexai.yml)" https://mlflow.example.com/api/2.0/mlflow/experiments/search',
      async run(flags) {
        const loaded = loadConfigFromOptions(flags, io, { requireUpstream: false });
        const logger = new Logger('warn', io.stderr, { component: 'kvx-proxy print-token' });
        const { printToken } = lazyRequire('../doctor/print-token.js') as typeof PrintTokenModule;
        const options: Parameters<typeof printToken>[1] = { env: io.env, logger, tokenOnly: flags.switch('--token-only') };
        const header = flags.string('--header');
        if (header !== undefined) options.header = header;
        io.stdout.write(`${await printToken(loaded, options)}\n`);
        return EXIT.ok;
      },
    },
  ];
}
