/** Param checks and token checks shared by the google-iam and google-oauth providers. */
import { TokenFetchError } from '../token.js';
import type { Token } from '../token.js';

export const SERVICE_ACCOUNT_EMAIL = /^[a-z0-9][a-z0-9-]{4,28}[a-z0-9]@[a-z0-9-.:]+\.gserviceaccount\.com$/i;

/** `client_id` is the audience: the IAP OAuth client id, or a Cloud Run service URL for Cloud Run IAM. */
export function clientIdProblems(params: Record<string, unknown>, planPath: string, type: string): { path: string; message: string }[] {
  const value = params['client_id'];
  const at = `${planPath}.params.client_id`;
  if (value === undefined || value === null || value === '') {
    return [{ path: at, message: `required for ${type}: the OAuth client id of the IAP-protected app (the token's audience), e.g. 1234-abc.apps.googleusercontent.com` }];
  }
  if (typeof value !== 'string') return [{ path: at, message: `must be a string, got ${typeof value}` }];
  if (/\s/.test(value)) return [{ path: at, message: `"${value}" contains whitespace; copy the client id exactly from APIs & Services → Credentials` }];
  return [];
}

/**
 * What to check when the upstream rejects fresh ID tokens: the audience (IAP's OAuth client id) for 401, the
 * identity's IAP role for 403. `planPath` is where the provider's params live (`auth`, `auth.providers[1]`).
 */
export function upstreamRejectionHint(planPath: string, audience: string, status: number, identity: string | undefined): string {
  const key = `${planPath}.params.client_id`;
  const audienceCheck =
    `the token audience, ${key} = "${audience}" (kedro-vertexai: request_header_provider_params.client_id), is likely not the OAuth client id ` +
    "the upstream's IAP expects nor one of its programmatic clients: set it to IAP's client id (Security → Identity-Aware Proxy → the " +
    'backend service → ⋮ → Edit OAuth client, or gcloud iap settings get), or add it to the programmaticClients of the IAP settings';
  if (status !== 403) return audienceCheck;
  return (
    `${identity ?? 'the identity the token is for'} likely lacks IAP-secured Web App User (roles/iap.httpsResourceAccessor) on the app; ` +
    `grant it, or if the upstream answers 403 to tokens it does not accept at all: ${audienceCheck}`
  );
}

/** The audience the token must carry. */
export function audienceOf(token: Token, expected: string, what: string): Token {
  if (token.audience !== undefined && token.audience !== expected) {
    throw new TokenFetchError(`${what} returned a token for audience "${token.audience}" instead of "${expected}"`, {
      hint: 'the upstream would reject it; check auth.params.client_id and the endpoint configuration',
    });
  }
  return token;
}
