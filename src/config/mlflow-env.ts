import { ConfigError } from '../errors.js';
import type { KvxConfig } from './schema.js';
import type { LoadedConfig } from './load.js';
import { upstreamUrlProblem } from './validate.js';

/**
 * The MLflow client's own variables, read so that a shell set up for `mlflow` is set up for kvx. They are the
 * lowest layer: anything configured wins over them.
 */

/**
 * MLFLOW_TRACKING_URI names the MLflow server when no upstream.url is configured (kvx-launch, `kvx-proxy exec`).
 * Returns whether it did; a URI that is not a usable server URL is a config error naming the variable.
 */
export function trackingUriFromEnv(loaded: LoadedConfig, env: NodeJS.ProcessEnv): boolean {
  const uri = env['MLFLOW_TRACKING_URI'] ?? '';
  if (loaded.config.upstream.url !== '' || uri === '') return false;
  const problem = upstreamUrlProblem(uri);
  if (problem) throw new ConfigError([{ path: 'MLFLOW_TRACKING_URI', message: `used as upstream.url because none is configured, but it ${problem}` }]);
  loaded.config.upstream.url = uri;
  loaded.sources.set('upstream.url', 'env:MLFLOW_TRACKING_URI');
  return true;
}

/**
 * MLFLOW_TRACKING_TOKEN is the bearer token when no header provider is chosen (kvx-launch; `kvx-proxy exec` takes
 * it away from its command instead, as the proxy authenticates).
 */
export function trackingTokenFromEnv(config: KvxConfig, env: NodeJS.ProcessEnv): void {
  const { auth } = config;
  const noneChosen = auth.provider === 'auto' && auth.providers.length === 0 && !auth.params['client_id'] && !auth.module;
  if (!noneChosen || !env['MLFLOW_TRACKING_TOKEN']) return;
  auth.provider = 'static';
  auth.params = { ...auth.params, token_env: 'MLFLOW_TRACKING_TOKEN' };
}
