import type { Clock } from './clock.js';
import { authorizationValue, headerValue } from './provider.js';
import type { HeaderMap, HeaderProvider, ProviderContext, ProviderStatus, RequestHeaderOptions } from './provider.js';
import type { Token } from './token.js';
import { DEFAULT_FETCH_TIMEOUT_MS, DEFAULT_REQUEST_WAIT_MS, TokenCache } from './token-cache.js';
import type { TokenCacheOptions } from './token-cache.js';

export interface TokenProviderOptions {
  clock?: Clock;
  random?: () => number;
  backoffInitialMs?: number;
  backoffMaxMs?: number;
  rejectionBackoffInitialMs?: number;
  rejectionBackoffMaxMs?: number;
}

/**
 * Base for providers whose header is `<scheme> <token>` from a TokenCache. requestHeaders() answers
 * synchronously with a frozen object while a usable token is held, which is the proxy's hot path.
 */
export abstract class TokenProvider implements HeaderProvider {
  abstract readonly name: string;
  protected readonly header: string;
  protected readonly scheme: string;
  protected readonly cache: TokenCache;
  private headersFor: { value: string; headers: HeaderMap } | undefined;

  constructor(name: string, context: ProviderContext, options: TokenProviderOptions = {}) {
    this.header = context.header;
    this.scheme = context.scheme;
    const { auth } = context.config;
    const cacheOptions: TokenCacheOptions = {
      provider: name,
      fetch: (signal) => this.fetchToken(signal),
      refreshBeforeMs: auth.refreshBeforeExpirySec * 1000,
      jitterMs: auth.refreshJitterSec * 1000,
      fetchTimeoutMs: auth.tokenFetchTimeoutMs ?? DEFAULT_FETCH_TIMEOUT_MS,
      requestWaitMs: auth.tokenWaitMs ?? DEFAULT_REQUEST_WAIT_MS,
      // Read when needed: subclass fields (the audience) are set after this constructor.
      rejectionHint: (status, identity) => this.rejectionHint(status, identity),
      metrics: context.metrics,
      logger: context.logger,
    };
    if (options.clock) cacheOptions.clock = options.clock;
    if (options.random) cacheOptions.random = options.random;
    if (options.backoffInitialMs !== undefined) cacheOptions.backoffInitialMs = options.backoffInitialMs;
    if (options.backoffMaxMs !== undefined) cacheOptions.backoffMaxMs = options.backoffMaxMs;
    if (options.rejectionBackoffInitialMs !== undefined) cacheOptions.rejectionBackoffInitialMs = options.rejectionBackoffInitialMs;
    if (options.rejectionBackoffMaxMs !== undefined) cacheOptions.rejectionBackoffMaxMs = options.rejectionBackoffMaxMs;
    this.cache = new TokenCache(cacheOptions);
  }

  /** Fetch a new token. Throw TokenFetchError with a plain-words cause; never put the token in it. */
  protected abstract fetchToken(signal: AbortSignal): Promise<Token>;

  /** What to check when the upstream answers `status` even to fresh tokens of `identity`; names the config key. */
  protected rejectionHint(_status: number, _identity: string | undefined): string {
    return `the upstream does not accept ${this.name}'s tokens even when new: check what it expects (audience, identity) against this provider's params`;
  }

  inContext(): boolean | Promise<boolean> {
    return true;
  }

  requestHeaders(options?: RequestHeaderOptions): HeaderMap | Promise<HeaderMap> {
    const token = this.cache.peek();
    if (token !== undefined) return this.headersOf(token);
    const waitMs = options?.waitMs;
    return (waitMs === undefined ? this.cache.get() : this.cache.acquire(waitMs)).then((t) => this.headersOf(t));
  }

  /** A fresh token now, bypassing the held one (print-token, doctor). */
  async freshToken(): Promise<Token> {
    return this.cache.refresh();
  }

  /** The held or newly fetched token, for diagnostics. */
  token(): Promise<Token> {
    return this.cache.get();
  }

  start(): Promise<void> {
    return this.cache.start();
  }

  invalidate(rejected: HeaderMap, options?: RequestHeaderOptions): Promise<void> {
    const sent = this.tokenIn(rejected);
    if (sent === undefined) return Promise.resolve();
    return this.cache.invalidate(sent, options?.waitMs);
  }

  rejected(sent: HeaderMap, status: number): boolean {
    const value = this.tokenIn(sent);
    return value === undefined || this.cache.rejected(value, status);
  }

  accepted(sent: HeaderMap): void {
    const value = this.tokenIn(sent);
    if (value !== undefined) this.cache.accepted(value);
  }

  get unconfirmed(): boolean {
    return this.cache.unconfirmed;
  }

  status(): ProviderStatus {
    return this.cache.status();
  }

  close(): void {
    this.cache.close();
  }

  /** This provider's token in headers it produced, or undefined when they do not carry one. */
  private tokenIn(headers: HeaderMap): string | undefined {
    const value = headerValue(headers, this.header);
    if (value === undefined) return undefined;
    const prefix = this.scheme ? `${this.scheme} ` : '';
    if (prefix && !value.startsWith(prefix)) return undefined;
    return value.slice(prefix.length);
  }

  private headersOf(token: Token): HeaderMap {
    const cached = this.headersFor;
    if (cached !== undefined && cached.value === token.value) return cached.headers;
    const headers = Object.freeze({ [this.header]: authorizationValue(this.scheme, token.value) });
    this.headersFor = { value: token.value, headers };
    return headers;
  }
}
