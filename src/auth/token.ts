import { decodeJwtClaims } from './jwt.js';

/** A credential as fetched. `expiresAt` always comes from the answer (JWT `exp`, `expires_in`), never a guess. */
export interface Token {
  value: string;
  /** Epoch milliseconds. */
  expiresAt: number;
  /** Epoch milliseconds of the JWT `iat`, when the token says. */
  issuedAt?: number;
  /** Whose token it is (service-account or user email), when known. */
  identity?: string;
  audience?: string;
}

/**
 * What providers throw when a fetch fails for a reason they can explain. The message names the cause and
 * carries Google's own error text; it never contains a credential.
 */
export class TokenFetchError extends Error {
  readonly hint: string | undefined;
  /** HTTP status Google answered with, when it answered. */
  readonly status: number | undefined;
  /**
   * Retrying cannot help until the user acts (a refresh token Google refused): the token cache then schedules no
   * background retry, and only requests try again, which the provider answers without calling Google.
   */
  readonly permanent: boolean;

  constructor(message: string, options: { hint?: string; status?: number; cause?: unknown; permanent?: boolean } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'TokenFetchError';
    this.hint = options.hint;
    this.status = options.status;
    this.permanent = options.permanent ?? false;
  }
}

/**
 * A user login that Google no longer accepts (`invalid_grant`: revoked, expired, or a Workspace re-authentication
 * policy's `invalid_rapt`/`rapt_required`), or none stored: only a new `kvx-proxy login` helps.
 */
export class LoginRequiredError extends TokenFetchError {
  readonly code = 'KVX_LOGIN_REQUIRED';

  constructor(message: string, options: { hint?: string; status?: number; cause?: unknown } = {}) {
    super(message, { ...options, permanent: true });
    this.name = 'LoginRequiredError';
  }
}

/** A Token from an ID token, its expiry read from `exp`. Throws TokenFetchError when `exp` is missing. */
export function idToken(value: string, fallbackIdentity?: string): Token {
  const claims = decodeJwtClaims(value);
  if (claims === undefined) throw new TokenFetchError('the answer is not a JWT ID token');
  if (typeof claims.exp !== 'number') throw new TokenFetchError('the ID token has no exp claim');
  const token: Token = { value, expiresAt: claims.exp * 1000 };
  if (typeof claims.iat === 'number') token.issuedAt = claims.iat * 1000;
  const identity = typeof claims.email === 'string' ? claims.email : fallbackIdentity;
  if (identity !== undefined) token.identity = identity;
  const aud = Array.isArray(claims.aud) ? claims.aud[0] : claims.aud;
  if (typeof aud === 'string') token.audience = aud;
  return token;
}

/** A Token from an OAuth access-token answer, its expiry read from `expires_in` (seconds). */
export function accessToken(answer: { access_token?: unknown; expires_in?: unknown }, now: number, identity?: string): Token {
  if (typeof answer.access_token !== 'string' || answer.access_token === '') throw new TokenFetchError('the answer held no access_token');
  const expiresIn = Number(answer.expires_in);
  if (!Number.isFinite(expiresIn) || expiresIn <= 0) throw new TokenFetchError('the answer held no usable expires_in');
  const token: Token = { value: answer.access_token, expiresAt: now + expiresIn * 1000 };
  if (identity !== undefined) token.identity = identity;
  return token;
}

/**
 * Throws TokenFetchError unless what a fetch (any provider's, a custom one's too) returned is a token with an expiry
 * still ahead at `now`. An answer expired on arrival is nearly always a local clock running ahead, so it says so.
 * `what` names the token in the message ("token", "access token").
 */
export function checkArrived(token: Token, now: number, what: string): void {
  if (typeof token?.value !== 'string' || token.value === '') throw new TokenFetchError(`the answer held no ${what}`);
  if (!Number.isFinite(token.expiresAt)) throw new TokenFetchError(`the ${what} carries no expiry`);
  if (token.expiresAt <= now) {
    throw new TokenFetchError(
      `the ${what} was already expired on arrival (expires ${new Date(token.expiresAt).toISOString()}, local time ${new Date(now).toISOString()})`,
      { hint: 'check that this machine\'s clock is right (NTP); a clock running ahead makes every token look expired' },
    );
  }
}

/** Why `signal` aborted; a reason that is not an Error becomes a TokenFetchError saying `abortedMessage`. */
export function abortReason(signal: AbortSignal, abortedMessage: string): Error {
  return signal.reason instanceof Error ? signal.reason : new TokenFetchError(abortedMessage);
}

/** `fetch`, or the signal's reason once it aborts first: a fetch that ignores its signal is not waited for. */
export function untilAborted<T>(fetch: Promise<T>, signal: AbortSignal, abortedMessage: string): Promise<T> {
  if (signal.aborted) {
    fetch.catch(() => {});
    return Promise.reject(abortReason(signal, abortedMessage));
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(abortReason(signal, abortedMessage));
    signal.addEventListener('abort', onAbort, { once: true });
    fetch.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}
