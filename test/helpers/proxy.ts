import { Writable } from 'node:stream';
import { loadConfig } from '../../src/config/load.js';
import type { ConfigOverride } from '../../src/config/load.js';
import { Logger } from '../../src/log/logger.js';
import { startProxy } from '../../src/proxy/server.js';
import type { RunningProxy } from '../../src/proxy/server.js';

/** Collects log lines so tests can assert on them (and on what they must never contain). */
export class LogCapture extends Writable {
  readonly lines: string[] = [];

  override _write(chunk: Buffer, _enc: BufferEncoding, done: () => void): void {
    for (const line of chunk.toString('utf8').split('\n')) if (line) this.lines.push(line);
    done();
  }

  records(): Record<string, unknown>[] {
    return this.lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  }

  text(): string {
    return this.lines.join('\n');
  }
}

export interface TestProxy extends RunningProxy {
  logs: LogCapture;
}

/**
 * An in-process proxy on 127.0.0.1:0 with its admin listener on another free port. `settings` are config
 * key paths (as flags would set them); `env` is the process environment the providers see. Raw-socket tests
 * address the proxy as `Host: kvx`, a name configured here as a user's own name for the proxy would be.
 */
export async function startTestProxy(upstream: string, settings: Record<string, unknown> = {}, env: NodeJS.ProcessEnv = {}): Promise<TestProxy> {
  const overrides: ConfigOverride[] = Object.entries({
    'upstream.url': upstream,
    'listen.port': 0,
    'admin.port': 0,
    'log.level': 'debug',
    'server.allowedHosts': ['kvx'],
    // The engine suites run once per engine (npm test): KVX_SERVER_ENGINE=node for the second run.
    ...(process.env['KVX_SERVER_ENGINE'] ? { 'server.engine': process.env['KVX_SERVER_ENGINE'] } : {}),
    ...settings,
  }).map(([path, value]) => ({ path, value, source: `test:${path}` }));
  const loaded = loadConfig({ env, overrides });
  const logs = new LogCapture();
  const proxy = await startProxy(loaded, { logger: new Logger(loaded.config.log.level, logs), env, processMetrics: false });
  return Object.assign(proxy, { logs });
}
