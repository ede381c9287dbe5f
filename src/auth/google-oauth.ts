import type { ConfigProblem } from '../errors.js';
import type { ProviderContext } from './provider.js';
import { registerProviderType } from './registry.js';
import type { ProviderPlan } from './registry.js';
import { audienceOf, clientIdProblems, upstreamRejectionHint } from './google/params.js';
import { GoogleTokenProvider } from './google/provider.js';
import type { CredentialsInfo } from './google/source.js';
import { TokenFetchError } from './token.js';
import type { Token } from './token.js';
import type { TokenProviderOptions } from './token-provider.js';

/**
 * `google-oauth`: an ID token for the caller's own identity with audience `client_id`, from a
 * service-account key (JWT-bearer grant with target_audience), the metadata server (Vertex AI, GKE with
 * Workload Identity, Cloud Run, VMs) or an impersonated_service_account file (IAM Credentials generateIdToken on
 * the impersonated account). kedro-vertexai's MLFlowGoogleOAuthCredentialsProvider. With a gcloud user login and a
 * Cloud Run `client_id` (not an OAuth client id), the login's own ID token, which Cloud Run IAM accepts.
 */
export class GoogleOauthProvider extends GoogleTokenProvider {
  readonly name = 'google-oauth';
  readonly audience: string;
  private readonly planPath: string;

  constructor(plan: ProviderPlan, context: ProviderContext, options: TokenProviderOptions = {}) {
    super('google-oauth', context, options);
    this.audience = String(plan.params['client_id']);
    this.planPath = plan.path;
  }

  protected override rejectionHint(status: number, identity: string | undefined): string {
    return upstreamRejectionHint(this.planPath, this.audience, status, identity);
  }

  protected async fetchToken(signal: AbortSignal): Promise<Token> {
    const source = await this.credentials.get();
    if (source.idToken === undefined) {
      // A user login's own ID token, for Cloud Run IAM; never for IAP, which accepts only its own client id.
      if (source.ownIdToken !== undefined && !isOauthClientId(this.audience)) return source.ownIdToken(signal);
      throw cannotMint(source.info, this.audience);
    }
    return audienceOf(await source.idToken(this.audience, signal), this.audience, source.info.description);
  }
}

/** IAP audiences are OAuth client ids; Cloud Run's are service URLs or custom audiences. */
export function isOauthClientId(audience: string): boolean {
  return /\.apps\.googleusercontent\.com$/.test(audience);
}

/** What to use instead of a gcloud user login for IAP: the one place the advice is worded, for the error and `doctor`. */
export const IAP_USER_ADVICE =
  'IAP accepts only ID tokens for its own OAuth client, which a gcloud login cannot mint: use `kvx-proxy login` (auth.provider: google-user with ' +
  "your organisation's desktop OAuth client), or impersonation: use google-iam, adding service_account (a service account you hold the Token Creator " +
  'role on) next to client_id in auth.params / request_header_provider_params; or set GOOGLE_APPLICATION_CREDENTIALS to a service-account key';

function cannotMint(info: CredentialsInfo, audience: string): TokenFetchError {
  if (info.kind === 'authorized_user') {
    return new TokenFetchError(
      `Application Default Credentials are a gcloud user login (${info.description}), which cannot mint ID tokens for audience ${audience}` +
        ' (an IAP OAuth client id; for Cloud Run IAM set client_id to the service URL, and the login\'s own ID token is sent)',
      { hint: IAP_USER_ADVICE },
    );
  }
  const target = info.identity ? ` with service_account: ${info.identity}` : '';
  return new TokenFetchError(`${info.description} cannot mint ID tokens for an audience directly`, {
    hint: `use google-iam${target} instead, which asks IAM Credentials for the token`,
  });
}

export function validateGoogleOauth(plan: ProviderPlan): ConfigProblem[] {
  return clientIdProblems(plan.params, plan.path, 'google-oauth');
}

registerProviderType('google-oauth', {
  validate: (plan) => validateGoogleOauth(plan),
  create: (plan, context) => new GoogleOauthProvider(plan, context),
});
