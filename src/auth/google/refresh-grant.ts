import type { Egress } from '../../config/egress.js';
/**
 * The OAuth refresh-token grant, done here rather than by google-auth-library because the library cannot send
 * `audience` (how Google mints an ID token for IAP's client from a desktop client's refresh token) and keeps the
 * answer to itself; the ID token in the answer is what Cloud Run and IAP take.
 */
import { LoginRequiredError, TokenFetchError } from '../token.js';
import { googleCall, googleError, parseJson } from './http.js';
import type { Json } from './source.js';

export interface RefreshGrant {
  /** How the token endpoint is reached (egress proxy, host aliases). */
  egress: Egress;
  tokenUrl: string;
  clientId: string;
  clientSecret: string;
  refreshToken: string;
  /** Sent only when set: IAP's OAuth client id, for an ID token with that audience. */
  audience?: string;
}

/** What to tell the user when Google refuses the refresh token: which login to repeat. */
export interface RefreshAdvice {
  /** The login in plain words: "the kvx-proxy login of client …", "the gcloud user login (…)". */
  what: string;
  /** The command that makes a new one. */
  relogin: string;
}

/** Workspace session control: the user must sign in again, which is an invalid_grant like any other here. */
const REAUTH = /invalid_rapt|rapt_required/i;

export async function refreshGrant(grant: RefreshGrant, advice: RefreshAdvice, signal: AbortSignal): Promise<Json> {
  const form = new URLSearchParams({
    grant_type: 'refresh_token',
    client_id: grant.clientId,
    client_secret: grant.clientSecret,
    refresh_token: grant.refreshToken,
  });
  if (grant.audience !== undefined && grant.audience !== '') form.set('audience', grant.audience);
  const answer = await googleCall('the OAuth token endpoint', grant.tokenUrl, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: form.toString(),
    signal,
  }, grant.egress);
  if (answer.status === 200) return parseJson(answer, 'the OAuth token endpoint');
  const google = googleError(answer);
  if (/invalid_grant/.test(google) || REAUTH.test(google)) {
    const why = REAUTH.test(google) ? 'your organisation requires you to sign in again (Google session control)' : 'it was revoked, expired or replaced';
    throw new LoginRequiredError(`Google no longer accepts ${advice.what}: ${why} (Google: ${google}); run \`${advice.relogin}\` again`, {
      status: answer.status,
      hint: `run \`${advice.relogin}\`; a running proxy picks the new login up without a restart`,
    });
  }
  if (/invalid_client|unauthorized_client/.test(google)) {
    throw new TokenFetchError(`the OAuth token endpoint refused the OAuth client of ${advice.what} (Google: ${google})`, {
      status: answer.status,
      hint: 'check the OAuth client id and secret (a deleted or reset client needs new ones, and a new login)',
    });
  }
  if (/audience/i.test(google)) {
    throw new TokenFetchError(`the OAuth token endpoint would not mint an ID token for audience ${grant.audience ?? '(none)'} (Google: ${google})`, {
      status: answer.status,
      hint: 'check client_id (IAP\'s OAuth client id); the desktop client must be in the same project as IAP\'s',
    });
  }
  throw new TokenFetchError(`refreshing ${advice.what} failed: ${google}`, { status: answer.status, hint: 'retrying with backoff' });
}
