import { HeaderInjector } from '../auth/injector.js';
import { planProviders } from '../auth/registry.js';
import { headerValue } from '../auth/provider.js';
import type { LoadedConfig } from '../config/load.js';
import { ConfigError, KvxError } from '../errors.js';
import type { Logger } from '../log/logger.js';

export interface PrintTokenOptions {
  env: NodeJS.ProcessEnv;
  logger: Logger;
  /** Header whose value to print; auth.header (or the only provider's header) by default. */
  header?: string;
  /** Print the token without its scheme, as `gcloud auth print-identity-token` does. */
  tokenOnly?: boolean;
}

/**
 * A fresh header value from the configured providers, for scripts and curl:
 * `curl -H "Authorization: $(kvx-proxy print-token -c vertexai.yml)" https://mlflow.example.com/api/2.0/...`.
 */
export async function printToken(loaded: LoadedConfig, options: PrintTokenOptions): Promise<string> {
  const { config } = loaded;
  const { plans, problems } = planProviders(config, options.env);
  if (problems.length > 0) throw new ConfigError(problems);
  const injector = await HeaderInjector.create(plans, { config, logger: options.logger, baseDir: loaded.baseDir, env: options.env });
  try {
    if (injector.active.length === 0) throw new KvxError('KVX_USAGE', 'no header provider applies, so there is no token to print', { hint: 'check auth.params / auth.provider with `kvx-proxy doctor`' });
    await injector.start();
    const headers = await injector.headers();
    const name = options.header ?? (injector.active.length === 1 ? injector.active[0]!.plan.header : config.auth.header);
    const value = headerValue(headers, name);
    if (value === undefined) {
      throw new KvxError('KVX_USAGE', `no provider sets the ${name} header (they set: ${Object.keys(headers).join(', ') || 'nothing'})`, { hint: 'choose one with --header' });
    }
    if (!options.tokenOnly) return value;
    const plan = injector.active.find((a) => a.plan.header.toLowerCase() === name.toLowerCase())?.plan;
    const scheme = plan?.scheme ?? config.auth.scheme;
    return scheme && value.startsWith(`${scheme} `) ? value.slice(scheme.length + 1) : value;
  } finally {
    await injector.close();
  }
}
