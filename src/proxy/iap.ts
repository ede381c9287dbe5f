/**
 * What an upstream 401 or 403 says about the credentials, read the way Identity-Aware Proxy answers: IAP marks
 * its own answers with `X-Goog-IAP-Generated-Response: true`. Its 401 is a credential problem (missing, expired,
 * wrong audience) that a new token may fix; its 403 means the identity lacks IAP-secured Web App User, which no
 * token can fix. A 401/403 without the mark, once IAP is known to be in front (or answering with a Basic challenge,
 * as MLflow's basic-auth app does), is MLflow's own and goes back untouched. Anything else is left to
 * auth.retryOnStatus (Cloud Run IAM, other gateways). Only 401 and 403 answers are read, so the hot path pays
 * one status comparison.
 */
import type { HeaderMap } from '../auth/provider.js';
import { decodeJwtClaims } from '../auth/jwt.js';
import type { Logger } from '../log/logger.js';

export const IAP_GENERATED_HEADER = 'x-goog-iap-generated-response';
export const IAP_ROLE = 'roles/iap.httpsResourceAccessor';

/**
 * - `credentials`: IAP's 401: refresh once and replay.
 * - `iap_denied`: IAP's 403: the identity lacks the role; no refresh.
 * - `upstream_own`: MLflow's own 401/403 behind the auth layer; passed through, no refresh.
 * - `unknown`: not known to be IAP's nor MLflow's; auth.retryOnStatus decides.
 */
export type AuthAnswerKind = 'credentials' | 'iap_denied' | 'upstream_own' | 'unknown';

/** Identities whose IAP refusal was logged at warn; later refusals of them go to debug. Bounded. */
const WARNED_LIMIT = 64;

export class AuthAnswerReader {
  /** An answer of IAP came from this upstream, so IAP is in front of it. */
  iapInFront = false;
  private readonly warned = new Set<string>();

  constructor(
    private readonly logger: Logger,
    private readonly upstream: string,
  ) {}

  /** The kind of a 401 or 403 answer, from its raw header list ([name, value, ...]). */
  classify(status: number, headers: readonly string[]): AuthAnswerKind {
    let iap = false;
    let basicChallenge = false;
    for (let i = 0; i < headers.length; i += 2) {
      const name = headers[i]!.toLowerCase();
      if (name === IAP_GENERATED_HEADER) iap = headers[i + 1]!.trim().toLowerCase() === 'true';
      else if (name === 'www-authenticate' && /^\s*basic\b/i.test(headers[i + 1]!)) basicChallenge = true;
    }
    if (iap) {
      this.iapInFront = true;
      return status === 401 ? 'credentials' : 'iap_denied';
    }
    return this.iapInFront || basicChallenge ? 'upstream_own' : 'unknown';
  }

  /** IAP refused a request sent with `sent` for want of the role: say who lacks what, once per identity. */
  denied(sent: HeaderMap, requestId: string): void {
    const identity = identityIn(sent);
    const fields = {
      id: requestId,
      identity: identity ?? 'unknown (the token carries no email claim)',
      role: `IAP-secured Web App User (${IAP_ROLE})`,
      resource: `the IAP-secured resource in front of ${this.upstream}`,
      hint:
        `grant it: gcloud iap web add-iam-policy-binding --member=${memberOf(identity)} --role=${IAP_ROLE} ` +
        '(with --resource-type=backend-services --service=NAME for a load balancer, or --resource-type=app-engine); a new token cannot fix this, so none is fetched',
    };
    const message = 'IAP answered 403: the identity lacks the IAP-secured Web App User role';
    if (this.warned.has(fields.identity)) {
      this.logger.debug(message, fields);
      return;
    }
    if (this.warned.size >= WARNED_LIMIT) this.warned.clear();
    this.warned.add(fields.identity);
    this.logger.warn(message, fields);
  }
}

/** The email claim of the ID token in the credential headers IAP reads (Proxy-Authorization first, as IAP does). */
export function identityIn(sent: HeaderMap): string | undefined {
  let fromAuthorization: string | undefined;
  for (const name in sent) {
    const lower = name.toLowerCase();
    if (lower !== 'proxy-authorization' && lower !== 'authorization') continue;
    const value = sent[name]!;
    if (!/^bearer\s/i.test(value)) continue;
    const email = decodeJwtClaims(value.slice(7).trim())?.email;
    if (typeof email !== 'string') continue;
    if (lower === 'proxy-authorization') return email;
    fromAuthorization = email;
  }
  return fromAuthorization;
}

function memberOf(identity: string | undefined): string {
  if (identity === undefined) return 'serviceAccount:NAME@PROJECT.iam.gserviceaccount.com';
  return identity.endsWith('.gserviceaccount.com') ? `serviceAccount:${identity}` : `user:${identity}`;
}
