import { Buffer } from 'node:buffer';
import type { HeaderMap, HeaderProvider, ProviderContext, ProviderStatus } from './provider.js';
import { authorizationValue } from './provider.js';
import { registerProviderType } from './registry.js';
import type { ProviderPlan } from './registry.js';
import { SecretSource } from './secret-source.js';

/**
 * A fixed bearer token (an MLflow token, a PAT for a gateway). Params: exactly one of `token`, `token_env`,
 * `token_file`. The header object is rebuilt only when the secret changes, so a request costs nothing.
 */
export class StaticTokenProvider implements HeaderProvider {
  readonly name = 'static';
  private headersValue: HeaderMap | undefined;
  private readonly source: SecretSource;

  constructor(plan: ProviderPlan, context: ProviderContext) {
    this.source = SecretSource.open(plan.params, 'token', {
      baseDir: context.baseDir,
      env: context.env,
      logger: context.logger,
      onChange: () => (this.headersValue = undefined),
    })!;
    this.header = context.header;
    this.scheme = context.scheme;
  }

  private readonly header: string;
  private readonly scheme: string;

  inContext(): boolean {
    return true;
  }

  requestHeaders(): HeaderMap {
    return (this.headersValue ??= Object.freeze({ [this.header]: authorizationValue(this.scheme, this.source.get(this.name)) }));
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

/**
 * HTTP Basic credentials, e.g. for MLflow's own basic-auth app. Params: `username`, and exactly one of
 * `password`, `password_env`, `password_file`. Defaults to the `Authorization` header even when auth.header
 * is Proxy-Authorization, because that is the split IAP-in-front-of-basic-auth needs.
 */
export class BasicAuthProvider implements HeaderProvider {
  readonly name = 'basic';
  private headersValue: HeaderMap | undefined;
  private readonly source: SecretSource;
  private readonly username: string;
  private readonly header: string;

  constructor(plan: ProviderPlan, context: ProviderContext) {
    this.username = String(plan.params['username']);
    this.header = context.header;
    this.source = SecretSource.open(plan.params, 'password', {
      baseDir: context.baseDir,
      env: context.env,
      logger: context.logger,
      onChange: () => (this.headersValue = undefined),
    })!;
  }

  inContext(): boolean {
    return true;
  }

  requestHeaders(): HeaderMap {
    if (this.headersValue === undefined) {
      const encoded = Buffer.from(`${this.username}:${this.source.get(this.name)}`, 'utf8').toString('base64');
      this.headersValue = Object.freeze({ [this.header]: `Basic ${encoded}` });
    }
    return this.headersValue;
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
