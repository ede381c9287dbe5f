/**
 * The access token a source credential holds. The providers' TokenCache does the lifecycle of what they hand out
 * (backoff, background refresh, metrics); this only keeps google-iam from fetching an access token per ID token,
 * and lets kvx-launch's Vertex calls use the token its MLflow provider already holds.
 */
import { systemClock, unref } from '../clock.js';
import type { Clock } from '../clock.js';
import { TokenFetchError, abortReason, checkArrived, untilAborted } from '../token.js';
import type { Token } from '../token.js';
import { DEFAULT_FETCH_TIMEOUT_MS } from '../token-cache.js';
import type { CredentialsInfo, FindOptions, SourceCredentials } from './source.js';

const ABORTED = 'the access token request was aborted';
/** Google's client libraries refresh this long before expiry, so a token is not sent out as it runs out. */
const MAX_EXPIRY_MARGIN_MS = 300_000;

/**
 * One access token, fetched when asked for and kept until shortly before it expires. Callers asking while a fetch
 * runs share it; the fetch is forgotten once it settles, with a token or an error alike, as google-auth-library
 * does, so a failure is never kept. Errors reach the caller as the fetch raised them.
 */
export class AccessTokenHolder {
  private readonly clock: Clock;
  private readonly fetchTimeoutMs: number;
  private held: { token: Token; usableUntil: number } | undefined;
  private inFlight: Promise<Token> | undefined;
  private inFlightAbort: AbortController | undefined;
  private closed = false;

  constructor(
    private readonly fetchToken: (signal: AbortSignal) => Promise<Token>,
    options: { clock?: Clock; fetchTimeoutMs?: number } = {},
  ) {
    this.clock = options.clock ?? systemClock;
    this.fetchTimeoutMs = options.fetchTimeoutMs ?? DEFAULT_FETCH_TIMEOUT_MS;
  }

  /** The held token while usable, else the running fetch or a new one; `signal` ends only this caller's wait. */
  get(signal?: AbortSignal): Promise<Token> {
    const held = this.held;
    if (held !== undefined && this.clock.now() < held.usableUntil) return Promise.resolve(held.token);
    if (signal?.aborted) return Promise.reject(abortReason(signal, ABORTED));
    const flight = this.inFlight ?? this.fetch();
    return signal === undefined ? flight : untilAborted(flight, signal, ABORTED);
  }

  /** Forget `value` if it is the held token (a Google API rejected it). */
  drop(value: string): void {
    if (this.held?.token.value === value) this.held = undefined;
  }

  close(): void {
    this.closed = true;
    this.held = undefined;
    this.inFlightAbort?.abort(closedError());
  }

  private fetch(): Promise<Token> {
    if (this.closed) return Promise.reject(closedError());
    const abort = new AbortController();
    const startedAt = this.clock.now();
    const timer = this.clock.setTimeout(() => abort.abort(new TokenFetchError(`the access token request timed out after ${this.fetchTimeoutMs} ms`)), this.fetchTimeoutMs);
    unref(timer);
    const flight = untilAborted(this.fetchToken(abort.signal), abort.signal, ABORTED)
      .then((token) => {
        this.keep(token, startedAt);
        return token;
      })
      .finally(() => {
        this.clock.clearTimeout(timer);
        if (this.inFlight === flight) {
          this.inFlight = undefined;
          this.inFlightAbort = undefined;
        }
      });
    this.inFlight = flight;
    this.inFlightAbort = abort;
    return flight;
  }

  private keep(token: Token, startedAt: number): void {
    const now = this.clock.now();
    checkArrived(token, now, 'access token');
    if (this.closed) throw closedError();
    // Lifetime measured from when we asked, so a slow answer does not stretch it; short-lived tokens keep 90% of it.
    const lifetime = token.expiresAt - Math.min(startedAt, now);
    this.held = { token, usableUntil: token.expiresAt - Math.min(MAX_EXPIRY_MARGIN_MS, lifetime * 0.1) };
  }
}

/** Source credentials whose access token `fetch` gets, held by an AccessTokenHolder. */
export function holdingAccessToken(
  info: CredentialsInfo,
  fetch: (signal: AbortSignal) => Promise<Token>,
  options: Pick<FindOptions, 'clock' | 'fetchTimeoutMs'>,
  extra: Pick<SourceCredentials, 'idToken'> = {},
): SourceCredentials {
  const holderOptions: { clock?: Clock; fetchTimeoutMs?: number } = {};
  if (options.clock) holderOptions.clock = options.clock;
  if (options.fetchTimeoutMs !== undefined) holderOptions.fetchTimeoutMs = options.fetchTimeoutMs;
  const holder = new AccessTokenHolder(fetch, holderOptions);
  return {
    info,
    accessToken: (signal) => holder.get(signal),
    dropAccessToken: (token) => holder.drop(token),
    close: () => holder.close(),
    ...extra,
  };
}

function closedError(): TokenFetchError {
  return new TokenFetchError('the Google credentials were closed');
}
