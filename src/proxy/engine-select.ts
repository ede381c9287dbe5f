import type { Egress } from '../config/egress.js';
import type { KvxConfig } from '../config/schema.js';
import { ConfigError, errorMessage } from '../errors.js';
import type { Logger } from '../log/logger.js';
import type { Engine, EngineHooks, EngineName } from './engine.js';

/**
 * Whether the wire engine can run on this Node.js: its modules load (the guard in llhttp.ts) and the parser
 * behaves as it relies on (wire/self-test.ts). Returns what failed, or undefined. Loaded on demand, so that a
 * Node whose `_http_common` is gone still starts, on the node engine.
 */
export async function wireEngineProblem(): Promise<string | undefined> {
  try {
    const { parserSelfTest } = await import('./wire/self-test.js');
    return parserSelfTest();
  } catch (err) {
    return errorMessage(err);
  }
}

/** The engine server.engine names; `auto` is wire when its self-test passes, node otherwise (with one warning). */
export async function chooseEngine(setting: KvxConfig['server']['engine'], logger: Logger, problem: () => Promise<string | undefined> = wireEngineProblem): Promise<EngineName> {
  if (setting === 'node') return 'node';
  const failed = await problem();
  if (failed === undefined) return 'wire';
  if (setting === 'wire') {
    throw new ConfigError([
      { path: 'server.engine', message: `the wire engine's self-test failed on Node.js ${process.version} (${failed}); set server.engine to node (or auto, which falls back to it)` },
    ]);
  }
  logger.warn(`the wire engine's self-test failed on Node.js ${process.version}; using the node engine (node:http and undici)`, { error: failed, nodeVersion: process.version });
  return 'node';
}

/** `egress` decides how the upstream is reached (an egress proxy's CONNECT tunnel, host aliases). */
export async function createEngine(config: KvxConfig, egress: Egress, hooks: EngineHooks, logger: Logger): Promise<Engine> {
  const name = await chooseEngine(config.server.engine, logger);
  if (name === 'wire') {
    const { WireEngine } = await import('./wire/engine.js');
    return new WireEngine(config, egress, hooks);
  }
  const { NodeEngine } = await import('./node-engine.js');
  return new NodeEngine(config, egress, hooks);
}
