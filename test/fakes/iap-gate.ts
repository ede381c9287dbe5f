/**
 * A gate for the fake MLflow server that checks Google ID tokens the way Identity-Aware Proxy does for
 * programmatic access: `Bearer <JWT>` in Authorization or Proxy-Authorization (or a configured header),
 * RS256 signature by Google's keys, audience = the IAP OAuth client id, issuer accounts.google.com, expiry
 * with no leeway. Its answers are IAP's: 401 for a missing, unverifiable, expired or wrong-audience token, 403
 * for an identity without IAP-secured Web App User, in IAP's plain-text wording, each with
 * `X-Goog-IAP-Generated-Response: true` (what lets a client tell them from the app's own 401/403).
 */
import type http from 'node:http';
import { GOOGLE_ISSUER } from './google-common.js';
import type { GoogleIssuer } from './google-common.js';
import { verifyJwt } from './jwt.js';
import type { Claims } from './jwt.js';

export interface IapGateOptions {
  issuer: GoogleIssuer;
  /** The IAP OAuth client id tokens must be minted for. */
  audience: string;
  /** Headers searched for the token, in order; IAP accepts Authorization and Proxy-Authorization. */
  headers?: readonly string[];
  /** Identities allowed through (IAP-secured Web App User); all when unset. 403 for others. */
  allowed?: readonly string[];
  /** Paths let through without a token (none by default, like IAP). */
  open?: (path: string) => boolean;
}

export interface IapGate {
  (req: http.IncomingMessage): { status: number; body: string; headers: Record<string, string> } | null;
  accepted: number;
  /** Rejections by reason (`expired`, `wrong audience ...`, `missing`). */
  rejected: Record<string, number>;
  /** Identities of accepted requests, in order. */
  identities: string[];
  /** Tokens accepted so far (to revoke one and see the proxy refresh). */
  tokens: Set<string>;
  /** Reject this token from now on, as if its key had been rotated out. */
  revoke(token: string): void;
}

export function iapGate(options: IapGateOptions): IapGate {
  const headers = (options.headers ?? ['authorization', 'proxy-authorization']).map((h) => h.toLowerCase());
  const reject = (reason: string, status = 401, text = `Invalid IAP credentials: ${reason}`) => {
    gate.rejected[reason] = (gate.rejected[reason] ?? 0) + 1;
    return { status, body: text, headers: { 'x-goog-iap-generated-response': 'true' } };
  };
  const gate = ((req: http.IncomingMessage) => {
    if (options.open?.((req.url ?? '/').split('?')[0]!)) return null;
    let token: string | undefined;
    for (const name of headers) {
      const value = req.headers[name];
      if (typeof value === 'string' && /^Bearer\s+\S/i.test(value)) {
        token = value.replace(/^Bearer\s+/i, '');
        break;
      }
    }
    if (token === undefined) return reject('missing', 401, 'Invalid IAP credentials: empty token');
    if (revoked.has(token)) return reject('revoked', 401, 'Invalid IAP credentials: Unable to verify JWT (key no longer valid)');
    const result = verifyJwt(token, {
      keys: options.issuer.keys.map((k) => ({ kid: k.kid, publicKey: k.publicKey })),
      audience: options.audience,
      issuer: GOOGLE_ISSUER,
      leewaySeconds: 0,
    });
    if (!result.ok) {
      const text = result.reason.startsWith('wrong audience')
        ? `Invalid IAP credentials: Expected JWT to have audience "${options.audience}"`
        : `Invalid IAP credentials: ${result.reason === 'expired' ? 'JWT has expired' : `Unable to verify JWT (${result.reason})`}`;
      return reject(result.reason.startsWith('wrong audience') ? 'wrong audience' : result.reason, 401, text);
    }
    const email = emailOf(result.payload);
    if (options.allowed !== undefined && !options.allowed.includes(email)) {
      return reject('not allowed', 403, 'You don\'t have access. Please contact your administrator.');
    }
    gate.accepted += 1;
    gate.identities.push(email);
    gate.tokens.add(token);
    return null;
  }) as IapGate;
  gate.accepted = 0;
  gate.rejected = {};
  gate.identities = [];
  gate.tokens = new Set();
  const revoked = new Set<string>();
  gate.revoke = (token: string) => revoked.add(token);
  return gate;
}

function emailOf(claims: Claims): string {
  return typeof claims['email'] === 'string' ? claims['email'] : String(claims['sub']);
}
