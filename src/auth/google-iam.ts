import type { ConfigProblem } from '../errors.js';
import type { ProviderContext } from './provider.js';
import { registerProviderType } from './registry.js';
import type { ProviderPlan } from './registry.js';
import { oneLine, parseJson } from './google/http.js';
import type { GoogleAnswer } from './google/http.js';
import { iamCredentialsCall, iamRefusal } from './google/iam-credentials.js';
import { SERVICE_ACCOUNT_EMAIL, audienceOf, clientIdProblems, upstreamRejectionHint } from './google/params.js';
import { GoogleTokenProvider } from './google/provider.js';
import type { CredentialsInfo } from './google/source.js';
import { TokenFetchError, idToken } from './token.js';
import type { Token } from './token.js';
import type { TokenProviderOptions } from './token-provider.js';

/**
 * `google-iam`: an ID token for a service account, minted by IAM Credentials `generateIdToken` on behalf of
 * whoever Application Default Credentials say we are (a gcloud user, the VM's or pod's service account, a
 * key). kedro-vertexai's MLFlowGoogleIAMRequestHeaderProvider, with a real token lifecycle.
 */
export class GoogleIamProvider extends GoogleTokenProvider {
  readonly name = 'google-iam';
  readonly audience: string;
  readonly serviceAccount: string;
  private readonly delegates: string[];
  private readonly planPath: string;

  constructor(
    plan: ProviderPlan,
    private readonly context: ProviderContext,
    options: TokenProviderOptions = {},
  ) {
    super('google-iam', context, options);
    this.audience = String(plan.params['client_id']);
    this.serviceAccount = String(plan.params['service_account']);
    this.delegates = delegatesOf(plan.params['delegates']);
    this.planPath = plan.path;
  }

  protected async fetchToken(signal: AbortSignal): Promise<Token> {
    const source = await this.credentials.get();
    if (source.info.kind === 'impersonated_service_account' && source.info.identity === this.serviceAccount && source.idToken !== undefined && this.delegates.length === 0) {
      // The credentials file impersonates this very account: its own chain mints the token, as gcloud does,
      // rather than the account impersonating itself (which needs Token Creator on itself).
      return audienceOf(await source.idToken(this.audience, signal), this.audience, 'IAM Credentials');
    }
    let access = await source.accessToken(signal);
    let answer = await this.generateIdToken(access.value, signal);
    if (answer.status === 401) {
      // The access token was revoked or expired early; one retry with a new one.
      source.dropAccessToken(access.value);
      access = await source.accessToken(signal);
      answer = await this.generateIdToken(access.value, signal);
    }
    if (answer.status !== 200) throw this.explain(answer, source.info);
    const json = parseJson(answer, 'IAM Credentials');
    if (typeof json['token'] !== 'string') throw new TokenFetchError(`IAM Credentials answered without a token: ${oneLine(answer.text)}`);
    return audienceOf(idToken(json['token'], this.serviceAccount), this.audience, 'IAM Credentials');
  }

  protected override rejectionHint(status: number, identity: string | undefined): string {
    return upstreamRejectionHint(this.planPath, this.audience, status, identity ?? this.serviceAccount);
  }

  private generateIdToken(accessToken: string, signal: AbortSignal): Promise<GoogleAnswer> {
    const base = this.context.config.auth.endpoints.iamCredentials;
    return iamCredentialsCall(base, 'generateIdToken', this.serviceAccount, accessToken, { audience: this.audience, includeEmail: true }, this.delegates, signal, this.context.egress);
  }

  private explain(answer: GoogleAnswer, info: CredentialsInfo): TokenFetchError {
    return iamRefusal(answer, {
      account: this.serviceAccount,
      caller: info,
      what: 'mint ID tokens for',
      accountKey: 'auth.params.service_account (request_header_provider_params.service_account)',
      badRequestHint: 'check auth.params.client_id (the audience) and auth.params.delegates',
    });
  }
}

function delegatesOf(value: unknown): string[] {
  if (Array.isArray(value)) return value.map(String);
  if (typeof value === 'string' && value.trim() !== '') return value.split(',').map((s) => s.trim()).filter(Boolean);
  return [];
}

export function validateGoogleIam(plan: ProviderPlan): ConfigProblem[] {
  const problems = clientIdProblems(plan.params, plan.path, 'google-iam');
  const sa = plan.params['service_account'];
  const at = `${plan.path}.params.service_account`;
  if (sa === undefined || sa === null || sa === '') {
    problems.push({ path: at, message: 'required for google-iam: the email of the service account to mint ID tokens for, e.g. mlflow-client@my-project.iam.gserviceaccount.com' });
  } else if (typeof sa !== 'string' || !SERVICE_ACCOUNT_EMAIL.test(sa)) {
    problems.push({ path: at, message: `"${String(sa)}" is not a service-account email (name@project.iam.gserviceaccount.com)` });
  }
  const delegates = plan.params['delegates'];
  if (delegates !== undefined && delegates !== null && delegates !== '') {
    if (!Array.isArray(delegates) && typeof delegates !== 'string') {
      problems.push({ path: `${plan.path}.params.delegates`, message: 'must be a list of service-account emails (or a comma-separated string)' });
    } else {
      delegatesOf(delegates).forEach((d, i) => {
        if (!SERVICE_ACCOUNT_EMAIL.test(d)) problems.push({ path: `${plan.path}.params.delegates[${i}]`, message: `"${d}" is not a service-account email` });
      });
    }
  }
  return problems;
}

registerProviderType('google-iam', {
  validate: (plan) => validateGoogleIam(plan),
  create: (plan, context) => new GoogleIamProvider(plan, context),
});
