/**
 * The environment the wrapped command runs with. The MLflow client sends MLFLOW_TRACKING_TOKEN (as Bearer) or
 * MLFLOW_TRACKING_USERNAME/PASSWORD (as Basic) in Authorization, which would replace the header the proxy's
 * provider sets, so they are removed; the command reaches MLflow only through the proxy.
 */
export const MLFLOW_CREDENTIAL_ENV = ['MLFLOW_TRACKING_TOKEN', 'MLFLOW_TRACKING_USERNAME', 'MLFLOW_TRACKING_PASSWORD'] as const;

const PROXY_ENV = ['HTTP_PROXY', 'http_proxy', 'ALL_PROXY', 'all_proxy'] as const;

export interface ChildEnvironment {
  env: NodeJS.ProcessEnv;
  /** Names (never values) of variables removed, for the log. */
  removed: string[];
}

export function childEnvironment(parent: NodeJS.ProcessEnv, proxyUrl: string): ChildEnvironment {
  const env: NodeJS.ProcessEnv = { ...parent };
  const removed: string[] = [];
  for (const name of MLFLOW_CREDENTIAL_ENV) {
    if (name in env) {
      delete env[name];
      removed.push(name);
    }
  }
  env['MLFLOW_TRACKING_URI'] = proxyUrl;

  // With a corporate HTTP proxy configured, Python's requests would send the loopback URL through it unless
  // NO_PROXY names the host; add it rather than let MLflow calls leave the machine.
  if (PROXY_ENV.some((name) => env[name])) {
    const host = new URL(proxyUrl).hostname.replace(/^\[|\]$/g, '');
    for (const name of ['NO_PROXY', 'no_proxy']) {
      const entries = (env[name] ?? '').split(',').map((s) => s.trim()).filter((s) => s !== '');
      if (!entries.includes(host)) entries.push(host);
      env[name] = entries.join(',');
    }
  }
  return { env, removed };
}
