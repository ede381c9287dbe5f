import type { ProviderContext } from '../provider.js';
import { TokenProvider } from '../token-provider.js';
import type { TokenProviderOptions } from '../token-provider.js';
import { CredentialsLookup } from './discovery.js';
import type { CredentialsInfo } from './source.js';

/**
 * Base of the google-iam and google-oauth providers: tokens made from Application Default Credentials, the caller's
 * shared look-up (kvx-launch's, which its Vertex AI calls use too) or one of the provider's own.
 */
export abstract class GoogleTokenProvider extends TokenProvider {
  protected readonly credentials: CredentialsLookup;
  private readonly ownsCredentials: boolean;

  constructor(name: string, context: ProviderContext, options: TokenProviderOptions = {}) {
    super(name, context, options);
    const { auth } = context.config;
    this.ownsCredentials = context.googleCredentials === undefined;
    this.credentials =
      context.googleCredentials ?? new CredentialsLookup(name, { env: context.env, endpoints: auth.endpoints, logger: context.logger, fetchTimeoutMs: auth.tokenFetchTimeoutMs, egress: context.egress });
  }

  /** Where the source credentials come from; rejects with set-up help when there are none. */
  async credentialsInfo(): Promise<CredentialsInfo> {
    return (await this.credentials.get()).info;
  }

  override close(): void {
    super.close();
    if (this.ownsCredentials) this.credentials.close();
  }
}
