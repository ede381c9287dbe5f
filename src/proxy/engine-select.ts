import type { KvxConfig } from '../config/schema.js';
import { errorMessage } from '../errors.js';
import type { Logger } from '../log/logger.js';
import type { Engine, EngineHooks } from './engine.js';

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

/** The wire engine, once its self-test has passed. */
export async function createEngine(config: KvxConfig, hooks: EngineHooks, _logger: Logger): Promise<Engine> {
  const failed = await wireEngineProblem();
  if (failed !== undefined) throw new Error(`the wire engine's self-test failed on Node.js ${process.version} (${failed})`);
  const { WireEngine } = await import('./wire/engine.js');
  return new WireEngine(config, hooks);
}
