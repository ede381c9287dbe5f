import { ConfigError } from '../errors.js';
import type { KvxConfig } from './schema.js';
import type { LoadedConfig } from './load.js';
import { TRACKING_URI_KEY, kedroMlflowServer, readKedroMlflow } from './kedro-mlflow.js';
import { upstreamUrlProblem } from './validate.js';

/**
 * The MLflow client's own variables, read so that a shell set up for `mlflow` is set up for kvx. They are the
 * lowest layer: anything configured wins over them.
 */

/**
 * The MLflow server when no upstream.url is configured (kvx-launch, `kvx-proxy exec`): MLFLOW_TRACKING_URI, else
 * kedro-mlflow's `server.mlflow_tracking_uri` in the mlflow.yml beside the vertexai.yml given, when it is an
 * http(s) URL (or `${oc.env:MLFLOW_TRACKING_URI,<url>}`'s default). Returns where it came from, for the caller
 * to say; a value that is not a usable server URL is a config error naming it.
 */
export function defaultUpstream(loaded: LoadedConfig, env: NodeJS.ProcessEnv): string | undefined {
  if (loaded.config.upstream.url !== '') return undefined;
  const uri = env['MLFLOW_TRACKING_URI'] ?? '';
  if (uri !== '') {
    const problem = upstreamUrlProblem(uri);
    if (problem) throw new ConfigError([{ path: 'MLFLOW_TRACKING_URI', message: `used as upstream.url because none is configured, but it ${problem}` }]);
    loaded.config.upstream.url = uri;
    loaded.sources.set('upstream.url', 'env:MLFLOW_TRACKING_URI');
    return 'MLFLOW_TRACKING_URI';
  }
  if (loaded.kedroConfDir === undefined) return undefined;
  const server = kedroMlflowServer(readKedroMlflow(loaded.kedroConfDir));
  if (server === undefined) return undefined;
  const where = `${TRACKING_URI_KEY} in ${server.file}`;
  const problem = upstreamUrlProblem(server.url);
  if (problem) throw new ConfigError([{ path: where, message: `used as upstream.url because none is configured, but it ${problem}` }]);
  loaded.config.upstream.url = server.url;
  loaded.sources.set('upstream.url', `file:${server.file}`);
  return where;
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
