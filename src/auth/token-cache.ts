import { CredentialsError, errorMessage } from '../errors.js';
import { silentLogger } from '../log/logger.js';
import type { Logger } from '../log/logger.js';
import { noAuthMetrics } from '../metrics/auth-metrics.js';
import type { AuthMetrics } from '../metrics/auth-metrics.js';
import { systemClock, unref } from './clock.js';
import type { Clock } from './clock.js';
import type { ProviderStatus } from './provider.js';
import { TokenFetchError, checkArrived, untilAborted } from './token.js';
import type { Token } from './token.js';

/**
 * The one token lifecycle every token-producing provider shares: expiry read from the token, eager
 * background refresh ahead of expiry, one in-flight fetch, failures never cached, bounded exponential
 * backoff. kedro-vertexai cached any answer (a failure included) for a fixed 59 minutes; this is the fix.
 */

export interface TokenCacheOptions {
  /** Name used in errors, logs and metrics labels (`google-iam`). */
  provider: string;
  fetch: (signal: AbortSignal) => Promise<Token>;
  /** Refresh this long before expiry (auth.refreshBeforeExpirySec). */
  refreshBeforeMs?: number;
  /** Up to this much extra lead, chosen at random per token (auth.refreshJitterSec). */
  jitterMs?: number;
  /** Refresh on timers without waiting for a request. Off for source credentials fetched on demand. */
  background?: boolean;
  /** Bounds of the exponential backoff after failed fetches. */
  backoffInitialMs?: number;
  backoffMaxMs?: number;
  /** One fetch taking longer than this counts as failed (auth.tokenFetchTimeoutMs). */
  fetchTimeoutMs?: number;
  /** What a request waits at most for a fetch (auth.tokenWaitMs); a refresh unanswered this long is overdue. */
  requestWaitMs?: number;
  /** Bounds of the backoff of refreshes after rejections, once the upstream rejects fresh tokens too. */
  rejectionBackoffInitialMs?: number;
  rejectionBackoffMaxMs?: number;
  /** What to check when the upstream rejects fresh tokens of `identity` with `status`, naming the config key. */
  rejectionHint?: (status: number, identity: string | undefined) => string;
  clock?: Clock;
  /** Uniform [0, 1); injectable so jitter is deterministic in tests. */
  random?: () => number;
  metrics?: AuthMetrics;
  logger?: Logger;
}

const DEFAULT_REFRESH_BEFORE_MS = 300_000;
const DEFAULT_JITTER_MS = 30_000;
const DEFAULT_BACKOFF_INITIAL_MS = 1_000;
const DEFAULT_BACKOFF_MAX_MS = 60_000;
export const DEFAULT_FETCH_TIMEOUT_MS = 30_000;
export const DEFAULT_REQUEST_WAIT_MS = 2_000;
/** Seconds growing to minutes: a misconfigured audience is not fixed in a second, nor left unprobed for an hour. */
const DEFAULT_REJECTION_BACKOFF_INITIAL_MS = 5_000;
const DEFAULT_REJECTION_BACKOFF_MAX_MS = 600_000;
/** A token this close to expiry is no longer handed out: it could expire on its way to the upstream. */
const MAX_SAFETY_MARGIN_MS = 10_000;
/** Google's clocks are right; a local clock this far off makes tokens look expired or not yet valid. */
const CLOCK_SKEW_WARN_MS = 60_000;

interface Held {
  token: Token;
  /** Last moment the token is handed out. */
  usableUntil: number;
  /** When the eager refresh is due. */
  refreshAt: number;
  /**
   * Fetched because its predecessor was rejected upstream, and no request with it accepted yet. Its rejection
   * then cannot be expiry: the upstream rejects fresh tokens.
   */
  unproven: boolean;
}

/** The upstream rejects fresh tokens: no replays, one rejection-driven refresh per backoff interval. */
interface Rejection {
  /** The fresh token last rejected; its further rejections are not counted again. */
  value: string;
  status: number;
  /** Fresh tokens rejected in a row. */
  streak: number;
  since: number;
  /** No rejection leads to a refresh before this time. */
  retryAt: number;
}

export class TokenCache {
  readonly provider: string;
  private readonly fetchToken: (signal: AbortSignal) => Promise<Token>;
  private readonly refreshBeforeMs: number;
  private readonly jitterMs: number;
  private readonly background: boolean;
  private readonly backoffInitialMs: number;
  private readonly backoffMaxMs: number;
  private readonly fetchTimeoutMs: number;
  private readonly requestWaitMs: number;
  private readonly rejectionBackoffInitialMs: number;
  private readonly rejectionBackoffMaxMs: number;
  private readonly rejectionHint: (status: number, identity: string | undefined) => string;
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly metrics: AuthMetrics;
  private readonly logger: Logger;

  private held: Held | undefined;
  private inFlight: Promise<Token> | undefined;
  private inFlightAbort: AbortController | undefined;
  private inFlightStartedAt = 0;
  /** A rejection started or joined the fetch under way: the token it brings is unproven. */
  private inFlightAfterRejection = false;
  /** The bounded wait for the fetch under way, shared by every request waiting on it. */
  private inFlightWait: { deadline: number; promise: Promise<Token> } | undefined;
  /** Fires when the fetch under way may outlast the held token. */
  private nearEndTimer: unknown;
  /** The near-end warning was given; again only after a token arrived. */
  private nearEndWarned = false;
  private failures = 0;
  /** No fetch before this time (backoff); callers without a valid token are told to retry after it. */
  private nextAttemptAt = 0;
  private lastError: string | undefined;
  private lastHint: string | undefined;
  private rejection: Rejection | undefined;
  /** The fresh-token warning was given and no request has been accepted since: do not repeat it. */
  private rejectionWarned = false;
  private timer: unknown;
  private closed = false;

  constructor(options: TokenCacheOptions) {
    this.provider = options.provider;
    this.fetchToken = options.fetch;
    this.refreshBeforeMs = options.refreshBeforeMs ?? DEFAULT_REFRESH_BEFORE_MS;
    this.jitterMs = options.jitterMs ?? DEFAULT_JITTER_MS;
    this.background = options.background ?? true;
    this.backoffInitialMs = options.backoffInitialMs ?? DEFAULT_BACKOFF_INITIAL_MS;
    this.backoffMaxMs = Math.max(options.backoffMaxMs ?? DEFAULT_BACKOFF_MAX_MS, this.backoffInitialMs);
    this.fetchTimeoutMs = options.fetchTimeoutMs ?? DEFAULT_FETCH_TIMEOUT_MS;
    this.requestWaitMs = options.requestWaitMs ?? DEFAULT_REQUEST_WAIT_MS;
    this.rejectionBackoffInitialMs = options.rejectionBackoffInitialMs ?? DEFAULT_REJECTION_BACKOFF_INITIAL_MS;
    this.rejectionBackoffMaxMs = Math.max(options.rejectionBackoffMaxMs ?? DEFAULT_REJECTION_BACKOFF_MAX_MS, this.rejectionBackoffInitialMs);
    this.rejectionHint = options.rejectionHint ?? (() => 'check what the upstream expects of the credential (audience, identity, scopes) against this provider\'s settings');
    this.clock = options.clock ?? systemClock;
    this.random = options.random ?? Math.random;
    this.metrics = options.metrics ?? noAuthMetrics;
    this.logger = options.logger ?? silentLogger;
  }

  /**
   * The held token when it may still be used, without waiting. Also the safety net for a missed timer
   * (a laptop waking from sleep): a token past its refresh time starts a background refresh here.
   */
  peek(): Token | undefined {
    const held = this.held;
    if (held === undefined) return undefined;
    const now = this.clock.now();
    if (now >= held.usableUntil) return undefined;
    if (now >= held.refreshAt && this.inFlight === undefined && now >= this.nextAttemptAt && !this.closed) {
      this.refresh().catch(() => {});
    }
    return held.token;
  }

  /** A usable token: the held one, or the result of the (shared) fetch. Rejects with CredentialsError. */
  get(): Promise<Token> {
    const token = this.peek();
    if (token !== undefined) return Promise.resolve(token);
    if (this.inFlight !== undefined) return this.inFlight;
    const wait = this.nextAttemptAt - this.clock.now();
    if (wait > 0) return Promise.reject(this.unavailable(wait));
    return this.refresh();
  }

  /**
   * get() for a request, which waits at most `waitMs` from the start of the fetch: once a fetch has run that
   * long unanswered, requests without a usable token are refused at once rather than held until
   * auth.tokenFetchTimeoutMs. The fetch itself runs on; its token serves the requests after it.
   */
  acquire(waitMs: number): Promise<Token> {
    const token = this.peek();
    if (token !== undefined) return Promise.resolve(token);
    let flight = this.inFlight;
    if (flight === undefined) {
      const wait = this.nextAttemptAt - this.clock.now();
      if (wait > 0) return Promise.reject(this.unavailable(wait));
      flight = this.refresh();
    }
    return this.within(flight, waitMs);
  }

  /** Fetch now, or join the fetch already running. */
  refresh(): Promise<Token> {
    if (this.closed) return Promise.reject(new CredentialsError(this.provider, 'provider is closed'));
    if (this.inFlight !== undefined) return this.inFlight;
    const abort = new AbortController();
    const startedAt = this.clock.now();
    this.inFlightAbort = abort;
    this.inFlightStartedAt = startedAt;
    this.inFlightAfterRejection = false;
    this.inFlightWait = undefined;
    const flight = this.fetchOnce(abort, startedAt).finally(() => {
      // Dropped on success and failure alike: the next caller starts a fresh fetch.
      if (this.inFlight === flight) {
        this.inFlight = undefined;
        this.inFlightAbort = undefined;
        this.inFlightWait = undefined;
        this.clearNearEndTimer();
      }
    });
    // Every failure is logged by failed(); callers that wait get it through their own handlers.
    flight.catch(() => {});
    this.inFlight = flight;
    this.watchNearEnd(flight, startedAt);
    return flight;
  }

  /**
   * The upstream rejected `value`. If it is still the held token, refresh (joining a fetch already
   * running); if a newer token is held already, there is nothing to do. Backoff is respected, so a storm
   * of 401s while Google is failing does not become a storm of token requests. With `waitMs`, waits at most
   * that long from the start of the fetch, as acquire() does.
   */
  async invalidate(value: string | undefined, waitMs?: number): Promise<void> {
    const held = this.held;
    if (held !== undefined && value !== undefined && held.token.value !== value) return;
    let flight = this.inFlight;
    if (flight === undefined) {
      const wait = this.nextAttemptAt - this.clock.now();
      if (wait > 0) throw this.unavailable(wait);
      flight = this.refresh();
    }
    this.inFlightAfterRejection = true;
    await (waitMs === undefined ? flight : this.within(flight, waitMs));
  }

  /**
   * The upstream answered `status` to a request sent with `value`; returns whether refreshing and replaying may
   * help. It may not when the rejected token was itself fetched after a rejection and never accepted: a fresh
   * token rejected too means the upstream does not want these tokens at all (an IAP expecting another audience).
   * Then replays stop and rejections lead to a refresh once per backoff interval (seconds growing to minutes),
   * until a request is accepted or the token changes for another reason.
   */
  rejected(value: string, status: number): boolean {
    const held = this.held;
    if (held === undefined || held.token.value !== value) return true;
    const now = this.clock.now();
    const rejection = this.rejection;
    if (rejection !== undefined && rejection.value === value) {
      if (now < rejection.retryAt) return false;
      // This request probes with a fresh token; the others in the interval do not.
      rejection.retryAt = now + this.rejectionDelay(rejection.streak + 1);
      return true;
    }
    if (!held.unproven) return true;
    held.unproven = false;
    const streak = (rejection?.streak ?? 0) + 1;
    const delay = this.rejectionDelay(streak);
    this.rejection = { value, status, streak, since: rejection?.since ?? now, retryAt: now + delay };
    this.metrics.upstreamRejecting(this.provider, true);
    const fields = {
      provider: this.provider,
      status,
      ...(held.token.audience === undefined ? {} : { audience: held.token.audience }),
      ...(held.token.identity === undefined ? {} : { identity: held.token.identity }),
      likelyCause: this.rejectionHint(status, held.token.identity),
      refreshInMs: Math.round(delay),
    };
    if (this.rejectionWarned) {
      this.logger.debug('the upstream rejected a fresh token again', { ...fields, rejectedInARow: streak });
    } else {
      this.rejectionWarned = true;
      this.logger.warn(
        'the upstream rejects freshly minted tokens too, so expiry is not the cause: replays stopped, refreshes after rejections backed off',
        fields,
      );
    }
    return false;
  }

  /** The upstream accepted a request sent with `value`: it works, and any rejection state ends. */
  accepted(value: string): void {
    const held = this.held;
    if (held === undefined || held.token.value !== value) return;
    held.unproven = false;
    if (this.rejection !== undefined) {
      this.rejection = undefined;
      this.metrics.upstreamRejecting(this.provider, false);
    }
    if (this.rejectionWarned) {
      this.rejectionWarned = false;
      this.logger.info('the upstream accepts the token again', { provider: this.provider });
    }
  }

  /** True while accepted() matters: the held token is unproven, or the upstream has been rejecting fresh tokens. */
  get unconfirmed(): boolean {
    return this.rejectionWarned || this.rejection !== undefined || this.held?.unproven === true;
  }

  /** Forget `value` if it is the held token, so the next get() fetches; for tokens known to be revoked. */
  discard(value: string): void {
    if (this.held?.token.value === value) this.held = undefined;
  }

  /** The first fetch, so a misconfiguration surfaces at start. */
  async start(): Promise<void> {
    await this.get();
  }

  status(): ProviderStatus {
    const token = this.peek();
    const status: ProviderStatus = { ready: token !== undefined };
    const held = this.held;
    if (held !== undefined) {
      status.expiresAt = held.token.expiresAt;
      if (held.token.identity !== undefined) status.identity = held.token.identity;
    }
    if (this.lastError !== undefined) status.lastError = this.lastError;
    const rejection = this.rejection;
    if (rejection !== undefined) {
      status.upstreamRejects = {
        status: rejection.status,
        since: rejection.since,
        rejectedCredentials: rejection.streak,
        nextRefreshAt: rejection.retryAt,
        likelyCause: this.rejectionHint(rejection.status, held?.token.identity),
      };
    }
    if (this.inFlight !== undefined) status.fetchPendingMs = this.clock.now() - this.inFlightStartedAt;
    return status;
  }

  close(): void {
    this.closed = true;
    this.clearTimer();
    this.clearNearEndTimer();
    this.inFlightAbort?.abort();
  }

  /** `flight`, or a CredentialsError once it has run `waitMs` unanswered; one timer per fetch, not per caller. */
  private within(flight: Promise<Token>, waitMs: number): Promise<Token> {
    const deadline = this.inFlightStartedAt + waitMs;
    const shared = this.inFlightWait;
    if (shared !== undefined && shared.deadline === deadline) return shared.promise;
    const left = deadline - this.clock.now();
    if (left <= 0) return Promise.reject(this.overdue(waitMs));
    const promise = new Promise<Token>((resolve, reject) => {
      const timer = this.clock.setTimeout(() => reject(this.overdue(waitMs)), left);
      unref(timer);
      flight.then(
        (token) => {
          this.clock.clearTimeout(timer);
          resolve(token);
        },
        (err: unknown) => {
          this.clock.clearTimeout(timer);
          reject(err);
        },
      );
    });
    this.inFlightWait = { deadline, promise };
    return promise;
  }

  private overdue(waitMs: number): CredentialsError {
    const pending = ((this.clock.now() - this.inFlightStartedAt) / 1000).toFixed(1);
    const previous = this.lastError === undefined ? '' : `; the previous attempt failed: ${this.lastError}`;
    return new CredentialsError(
      this.provider,
      `no usable token: the token request has been unanswered for ${pending} s (requests wait at most auth.tokenWaitMs, ${waitMs} ms; ` +
        `it is abandoned after auth.tokenFetchTimeoutMs, ${this.fetchTimeoutMs} ms)${previous}`,
      {
        retryAfterSeconds: Math.max(1, Math.ceil(waitMs / 1000)),
        hint: this.lastHint ?? 'check the network path to the token endpoint (metadata server, IAM Credentials, OAuth token endpoint)',
      },
    );
  }

  /**
   * A refresh that may outlast the held token (it runs until auth.tokenFetchTimeoutMs, the token ends sooner)
   * gets one warning if still unanswered once overdue or as the token ends, whichever is first: from then on
   * requests are refused until a token arrives.
   */
  private watchNearEnd(flight: Promise<Token>, startedAt: number): void {
    const held = this.held;
    if (held === undefined || this.nearEndWarned || startedAt >= held.usableUntil || held.usableUntil >= startedAt + this.fetchTimeoutMs) return;
    const at = Math.min(startedAt + this.requestWaitMs, held.usableUntil);
    this.nearEndTimer = this.clock.setTimeout(() => {
      this.nearEndTimer = undefined;
      if (this.inFlight !== flight || this.nearEndWarned || this.closed) return;
      this.nearEndWarned = true;
      const now = this.clock.now();
      this.logger.warn('token refresh still unanswered close to the end of the held token: requests will be refused with 503 from then until a token arrives', {
        provider: this.provider,
        pendingMs: now - startedAt,
        tokenUsableForMs: Math.max(0, Math.round(held.usableUntil - now)),
        fetchTimeoutMs: this.fetchTimeoutMs,
      });
    }, at - startedAt);
    unref(this.nearEndTimer);
  }

  private clearNearEndTimer(): void {
    if (this.nearEndTimer !== undefined) this.clock.clearTimeout(this.nearEndTimer);
    this.nearEndTimer = undefined;
  }

  private rejectionDelay(streak: number): number {
    return backoff(this.rejectionBackoffInitialMs, this.rejectionBackoffMaxMs, streak, this.random());
  }

  private async fetchOnce(abort: AbortController, startedAt: number): Promise<Token> {
    const timeout = this.clock.setTimeout(() => abort.abort(new TokenFetchError(`token request timed out after ${this.fetchTimeoutMs} ms`)), this.fetchTimeoutMs);
    unref(timeout);
    let token: Token;
    try {
      token = await untilAborted(this.fetchToken(abort.signal), abort.signal, 'token request aborted');
      checkArrived(token, this.clock.now(), 'token');
    } catch (err) {
      this.clock.clearTimeout(timeout);
      throw this.failed(err);
    }
    this.clock.clearTimeout(timeout);
    if (this.closed) throw new CredentialsError(this.provider, 'provider is closed');
    this.accept(token, startedAt, this.inFlightAfterRejection);
    return token;
  }

  private accept(token: Token, startedAt: number, afterRejection: boolean): void {
    const now = this.clock.now();
    if (token.issuedAt !== undefined && Math.abs(token.issuedAt - now) > CLOCK_SKEW_WARN_MS) {
      this.logger.warn('local clock differs from the token issuer\'s clock; tokens may be rejected early or late', {
        provider: this.provider,
        skewSeconds: Math.round((now - token.issuedAt) / 1000),
      });
    }
    // Lifetime as seen from here: measured from when we asked, so a slow answer does not stretch it.
    const lifetime = token.expiresAt - Math.min(startedAt, now);
    const margin = Math.min(MAX_SAFETY_MARGIN_MS, lifetime * 0.1);
    let lead = this.refreshBeforeMs + this.random() * this.jitterMs;
    if (lead > lifetime / 2) {
      // Short-lived tokens (tests, some private issuers): the configured lead would refresh at once and
      // forever; refresh between 40% and 50% into the token's life instead.
      lead = lifetime * (0.5 + 0.1 * this.random());
    }
    this.held = { token, usableUntil: token.expiresAt - margin, refreshAt: token.expiresAt - lead, unproven: afterRejection };
    if (!afterRejection && this.rejection !== undefined) {
      // A token renewed on schedule, not after a rejection: its rejection gets one refresh and replay again.
      this.rejection = undefined;
      this.metrics.upstreamRejecting(this.provider, false);
    }
    this.failures = 0;
    this.nextAttemptAt = 0;
    this.nearEndWarned = false;
    if (this.lastError !== undefined) this.logger.info('token fetch recovered', { provider: this.provider });
    this.lastError = undefined;
    this.lastHint = undefined;
    this.metrics.tokenFetch(this.provider, true);
    this.metrics.tokenExpiry(this.provider, token.expiresAt);
    this.logger.debug('token fetched', {
      provider: this.provider,
      expiresAt: new Date(token.expiresAt).toISOString(),
      refreshAt: new Date(this.held.refreshAt).toISOString(),
    });
    this.schedule(this.held.refreshAt);
  }

  private failed(err: unknown): CredentialsError {
    const now = this.clock.now();
    // Permanent: the provider answers again without asking Google, so requests may retry soon (and find a new
    // login at once), but no timer keeps retrying for nobody and the same failure is not warned of again.
    const permanent = err instanceof TokenFetchError && err.permanent;
    this.failures = permanent ? 1 : this.failures + 1;
    const delay = backoff(this.backoffInitialMs, this.backoffMaxMs, this.failures, this.random());
    this.nextAttemptAt = now + delay;
    const reason = err instanceof Error && err.name === 'AbortError' ? 'token request aborted' : errorMessage(err);
    const repeated = permanent && reason === this.lastError;
    this.lastError = reason;
    this.lastHint = err instanceof TokenFetchError || err instanceof CredentialsError ? err.hint : undefined;
    if (this.closed) return new CredentialsError(this.provider, 'provider is closed');
    this.metrics.tokenFetch(this.provider, false);
    const held = this.held;
    const stillValid = held !== undefined && now < held.usableUntil;
    if (!stillValid) this.metrics.tokenExpiry(this.provider, undefined);
    (repeated ? this.logger.debug : this.logger.warn).call(this.logger, stillValid ? 'token refresh failed; still using the current token' : 'token fetch failed; no valid token held', {
      provider: this.provider,
      error: reason,
      failures: this.failures,
      retryInMs: Math.round(delay),
      ...(permanent ? { retry: 'on the next request only' } : {}),
      ...(stillValid ? { tokenExpiresAt: new Date(held.token.expiresAt).toISOString() } : {}),
    });
    if (!permanent) this.schedule(this.nextAttemptAt);
    return this.unavailable(delay);
  }

  private unavailable(waitMs: number): CredentialsError {
    const options: { hint?: string; retryAfterSeconds: number } = { retryAfterSeconds: Math.max(1, Math.ceil(waitMs / 1000)) };
    if (this.lastHint !== undefined) options.hint = this.lastHint;
    return new CredentialsError(this.provider, this.lastError ?? 'no token available', options);
  }

  private schedule(at: number): void {
    if (!this.background || this.closed) return;
    this.clearTimer();
    const delay = Math.max(0, at - this.clock.now());
    this.timer = this.clock.setTimeout(() => {
      this.timer = undefined;
      this.refresh().catch(() => {});
    }, delay);
    unref(this.timer);
  }

  private clearTimer(): void {
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer);
    this.timer = undefined;
  }
}

/**
 * The wait after the `n`th failure in a row: doubling from `initialMs` up to `maxMs`, ±20% so a fleet of proxies
 * that failed together does not retry together. `random` is uniform [0, 1).
 */
function backoff(initialMs: number, maxMs: number, n: number, random: number): number {
  const base = Math.min(maxMs, initialMs * 2 ** Math.min(n - 1, 30));
  return Math.min(maxMs, Math.max(initialMs, base * (0.8 + 0.4 * random)));
}
