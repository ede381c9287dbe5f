import type { LoadedConfig } from '../config/load.js';
import { planProviders } from '../auth/registry.js';
import '../auth/index.js';
import { loadConfig } from '../config/load.js';
import { CommandFlags } from './flags.js';
import type { CommandId } from './flags.js';
import type { CliIO } from './program.js';

/**
 * Loads the config a command's flags point at: files from --config (else KVX_CONFIG), then KVX_* variables,
 * then the flags' overrides (src/cli/flags.ts). Plain parsed options are read as kvx-proxy's (`load.command`).
 */
export function loadConfigFromOptions(
  flags: CommandFlags | Readonly<Record<string, unknown>>,
  io: CliIO,
  load: { command?: CommandId; requireUpstream?: boolean; checkProviders?: boolean } = {},
): LoadedConfig {
  const parsed = flags instanceof CommandFlags ? flags : new CommandFlags(load.command ?? 'kvx-proxy serve', flags);
  const files = parsed.list('--config') ?? (io.env['KVX_CONFIG'] ? [io.env['KVX_CONFIG']] : []);
  return loadConfig({
    files,
    env: io.env,
    overrides: parsed.overrides(),
    require: { upstream: load.requireUpstream ?? true },
    extraChecks: load.checkProviders === false ? undefined : (config) => planProviders(config, io.env).problems,
  });
}
