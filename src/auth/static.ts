import { Buffer } from 'node:buffer';
import type { HeaderMap, HeaderProvider, ProviderContext, ProviderStatus } from './provider.js';
import { authorizationValue } from './provider.js';
import { registerProviderType } from './registry.js';
import type { ProviderPlan } from './registry.js';
import { SecretSource } from './secret-source.js';

/**
 * A provider whose header is made from one secret param (`<param>`, `<param>_env` or `<param>_file`). The header
 * object is rebuilt only when the secret changes, so a request costs nothing.
 */
abstract class SecretHeaderProvider implements HeaderProvider {
  abstract readonly name: string;
  protected readonly header: string;
  private headersValue: HeaderMap | undefined;
  private readonly source: SecretSource;

  constructor(plan: ProviderPlan, context: ProviderContext, param: string) {
    this.header = context.header;
    this.source = SecretSource.open(plan.params, param, {
      baseDir: context.baseDir,
      env: context.env,
      logger: context.logger,
      onChange: () => (this.headersValue = undefined),
    })!;
  }

  /** The header value for `secret`. */
  protected abstract valueFor(secret: string): string;

  inContext(): boolean {
    return true;
  }

  requestHeaders(): HeaderMap {
    return (this.headersValue ??= Object.freeze({ [this.header]: this.valueFor(this.source.get(this.name)) }));
  }

  async start(): Promise<void> {
    this.source.get(this.name);
  }

  status(): ProviderStatus {
    const status: ProviderStatus = { ready: this.source.available };
    if (this.source.error) status.lastError = this.source.error;
    return status;
  }

  close(): void {
    this.source.close();
  }
}

/** A fixed bearer token (an MLflow token, a PAT for a gateway). Params: exactly one of `token`, `token_env`, `token_file`. */
export class StaticTokenProvider extends SecretHeaderProvider {
  readonly name = 'static';
  private readonly scheme: string;

  constructor(plan: ProviderPlan, context: ProviderContext) {
    super(plan, context, 'token');
    this.scheme = context.scheme;
  }

  protected valueFor(token: string): string {
    return authorizationValue(this.scheme, token);
  }
}

/**
 * HTTP Basic credentials, e.g. for MLflow's own basic-auth app. Params: `username`, and exactly one of
 * `password`, `password_env`, `password_file`. Defaults to the `Authorization` header even when auth.header
 * is Proxy-Authorization, because that is the split IAP-in-front-of-basic-auth needs.
 */
export class BasicAuthProvider extends SecretHeaderProvider {
  readonly name = 'basic';
  private readonly username: string;

  constructor(plan: ProviderPlan, context: ProviderContext) {
    super(plan, context, 'password');
    this.username = String(plan.params['username']);
  }

  protected valueFor(password: string): string {
    return `Basic ${Buffer.from(`${this.username}:${password}`, 'utf8').toString('base64')}`;
  }
}

registerProviderType('static', {
  validate: (plan, env) => SecretSource.validate(plan.params, 'token', plan.path, env),
  create: (plan, context) => new StaticTokenProvider(plan, context),
});

registerProviderType('basic', {
  defaults: { header: 'Authorization', scheme: 'Basic' },
  validate: (plan, env) => {
    const problems = SecretSource.validate(plan.params, 'password', plan.path, env);
    const username = plan.params['username'];
    if (typeof username !== 'string' || username === '') {
      problems.unshift({ path: `${plan.path}.params.username`, message: 'required for the basic provider' });
    } else if (username.includes(':')) {
      problems.unshift({ path: `${plan.path}.params.username`, message: 'must not contain ":" (HTTP Basic cannot encode it)' });
    }
    return problems;
  },
  create: (plan, context) => new BasicAuthProvider(plan, context),
});
