/**
 * The IAM Service Account Credentials API (generateIdToken, generateAccessToken) at auth.endpoints.iamCredentials,
 * and what its refusals mean in plain words. Used by google-iam and by impersonated_service_account credentials.
 */
import type { Egress } from '../../config/egress.js';
import { TokenFetchError } from '../token.js';
import { googleCall, googleError } from './http.js';
import type { GoogleAnswer } from './http.js';
import type { CredentialsInfo } from './source.js';

const DELEGATE_PREFIX = 'projects/-/serviceAccounts/';

/** One call on `account` with the caller's access token. `delegates` are emails or full resource names. */
export function iamCredentialsCall(
  base: string,
  method: 'generateIdToken' | 'generateAccessToken',
  account: string,
  accessToken: string,
  body: Record<string, unknown>,
  delegates: readonly string[],
  signal: AbortSignal,
  egress: Egress,
): Promise<GoogleAnswer> {
  const payload = delegates.length > 0 ? { ...body, delegates: delegates.map((d) => (d.startsWith(DELEGATE_PREFIX) ? d : DELEGATE_PREFIX + d)) } : body;
  return googleCall('IAM Credentials', `${base.replace(/\/+$/, '')}/v1/${DELEGATE_PREFIX}${encodeURIComponent(account)}:${method}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${accessToken}`, 'content-type': 'application/json' },
    body: JSON.stringify(payload),
    signal,
  }, egress);
}

/** The IAM member string for whoever `info` is, for the gcloud command in a hint. */
export function memberOf(info: CredentialsInfo): string {
  const identity = info.identity;
  if (identity?.startsWith('principal://') || identity?.startsWith('principalSet://')) return identity;
  return info.kind === 'authorized_user' ? `user:${identity ?? 'YOU@example.com'}` : `serviceAccount:${identity ?? 'CALLER'}`;
}

export interface IamRefusalContext {
  /** The service account the call was on. */
  account: string;
  /** The caller: the source credentials. */
  caller: CredentialsInfo;
  /** `mint ID tokens for` or `get access tokens for`. */
  what: string;
  /** Where the account is configured, for the 404 hint. */
  accountKey: string;
  /** What to check on a 400. */
  badRequestHint: string;
}

/** A non-200 answer of IAM Credentials as a TokenFetchError naming the missing role, API or account. */
export function iamRefusal(answer: GoogleAnswer, context: IamRefusalContext): TokenFetchError {
  const google = googleError(answer);
  const { account, caller } = context;
  const who = caller.identity ?? `the identity of the ${caller.description}`;
  const status = answer.status;
  if (status === 403 && /SERVICE_DISABLED|has not been used|is disabled/i.test(google)) {
    return new TokenFetchError(`the IAM Service Account Credentials API is not enabled for the caller's project (Google: ${google})`, {
      status,
      hint: 'enable it: gcloud services enable iamcredentials.googleapis.com --project <project of the caller>',
    });
  }
  if (status === 403) {
    return new TokenFetchError(`${who} may not ${context.what} ${account}: the Service Account Token Creator role is missing (Google: ${google})`, {
      status,
      hint:
        `grant roles/iam.serviceAccountTokenCreator on ${account} to ${who}: gcloud iam service-accounts add-iam-policy-binding ${account} ` +
        `--member=${memberOf(caller)} --role=roles/iam.serviceAccountTokenCreator (takes effect within a few minutes)`,
    });
  }
  if (status === 404) {
    return new TokenFetchError(`service account ${account} does not exist (Google: ${google})`, {
      status,
      hint: `check ${context.accountKey}: spelling, project, or whether it was deleted`,
    });
  }
  if (status === 401) {
    return new TokenFetchError(`IAM Credentials rejected the source credentials (${caller.description}) (Google: ${google})`, {
      status,
      hint: caller.kind === 'authorized_user' ? 'rerun `gcloud auth application-default login`' : 'check that the credentials are still valid',
    });
  }
  if (status === 400) {
    return new TokenFetchError(`IAM Credentials refused the request for ${account} (Google: ${google})`, { status, hint: context.badRequestHint });
  }
  return new TokenFetchError(`IAM Credentials answered ${google}`, { status, hint: 'a transient Google error; retrying with backoff' });
}
