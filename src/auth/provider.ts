import type { KvxConfig } from '../config/schema.js';
import type { Egress } from '../config/egress.js';
import type { Logger } from '../log/logger.js';
import type { AuthMetrics } from '../metrics/auth-metrics.js';
import type { CredentialsLookup } from './google/discovery.js';

/** Header name → value. Names are compared case-insensitively everywhere. */
export type HeaderMap = Record<string, string>;

export interface ProviderStatus {
  /** True when requestHeaders() can answer now without failing. */
  ready: boolean;
  /** Epoch milliseconds at which the held credential expires, when it expires. */
  expiresAt?: number;
  /** Last failure, already free of secrets. */
  lastError?: string;
  /** Who the credential is for (service-account email, user), when known; never the credential. */
  identity?: string;
  /** Set while the upstream rejects even freshly minted credentials: replays stopped, refreshes backed off. */
  upstreamRejects?: UpstreamRejects;
  /** How long the credential fetch under way has been running, when one is. */
  fetchPendingMs?: number;
}

export interface UpstreamRejects {
  /** The status the upstream answered (one of auth.retryOnStatus). */
  status: number;
  /** Epoch milliseconds of the first rejection of a fresh credential. */
  since: number;
  /** Fresh credentials rejected in a row. */
  rejectedCredentials: number;
  /** Epoch milliseconds before which no rejection leads to another refresh. */
  nextRefreshAt: number;
  /** What to check, naming the config key. */
  likelyCause: string;
}

/** How the caller of requestHeaders() can wait. */
export interface RequestHeaderOptions {
  /**
   * Longest wait for a credential being fetched; a provider that cannot answer within it rejects with
   * CredentialsError. Unset: wait for the fetch (the launcher, `doctor`).
   */
  waitMs?: number;
}

/**
 * What the proxy and the launcher call. `requestHeaders` may answer synchronously: a provider holding a fresh
 * credential returns it without a promise, which keeps the proxy's hot path free of microtask hops.
 */
export interface HeaderProvider {
  /** Shown in logs, metrics labels and error messages: the type (`google-iam`) or the custom class name. */
  readonly name: string;
  /** Whether the provider applies; asked once at start, as kedro-vertexai's `in_context`. */
  inContext(): boolean | Promise<boolean>;
  /** Headers to set on a request. Rejects (or throws) with CredentialsError when none can be produced. */
  requestHeaders(options?: RequestHeaderOptions): HeaderMap | Promise<HeaderMap>;
  /** Produce the first credential; rejects with the reason. Providers without state need not implement it. */
  start?(): Promise<void>;
  /**
   * The upstream rejected a request (401) that carried `rejected` (the headers it was sent with). If those
   * still hold this provider's current credential, forget it and fetch a fresh one; if the provider already
   * holds a different one (another request got there first), do nothing. Resolves when a fresh credential
   * is held, rejects when none could be had. Concurrent calls share one fetch.
   */
  invalidate?(rejected: HeaderMap, options?: RequestHeaderOptions): Promise<void>;
  /**
   * The upstream answered `status` (one of auth.retryOnStatus) to a request sent with `sent`. Returns whether a
   * refresh and replay may help: false while even this provider's freshly minted credential is rejected (not an
   * expiry problem), except once per backoff interval. Bookkeeping only: it fetches nothing.
   */
  rejected?(sent: HeaderMap, status: number): boolean;
  /** The upstream accepted a request sent with `sent`. Called only while `unconfirmed` is true. */
  accepted?(sent: HeaderMap): void;
  /** True while the provider wants to hear of accepted requests: its current credential is not yet known to work upstream. */
  readonly unconfirmed?: boolean;
  status?(): ProviderStatus;
  /** Stop timers and watchers. */
  close?(): void | Promise<void>;
}

/** What a provider gets besides its params. */
export interface ProviderContext {
  logger: Logger;
  /** The whole effective config, for providers that need endpoints or refresh settings. */
  config: KvxConfig;
  /** Header the provider's token goes in, after defaults (`Authorization`). */
  header: string;
  /** Scheme put before the token (`Bearer`), or '' for a bare value. */
  scheme: string;
  /** Directory relative paths in params are resolved against. */
  baseDir: string;
  /** Process environment; injectable for tests. */
  env: NodeJS.ProcessEnv;
  metrics: AuthMetrics;
  /**
   * Application Default Credentials the caller also uses for its own Google calls (kvx-launch's Vertex AI calls),
   * so a run has one Google identity. Owned by the caller; without it the Google providers look their own up.
   */
  googleCredentials?: CredentialsLookup;
  /** How outgoing calls reach the network (egress proxy, host aliases): Google endpoints go through egressFetch with it. */
  egress: Egress;
}

/**
 * The public base class for custom providers, the counterpart of kedro-vertexai's
 * `RequestHeaderProviderWithKedroContext`. Subclass it in your module, read `this.params`, and implement
 * `requestHeaders()`; override `inContext()` to opt out when your params are absent.
 */
export abstract class RequestHeaderProvider implements HeaderProvider {
  readonly params: Record<string, unknown>;
  protected readonly context: ProviderContext;

  constructor(params: Record<string, unknown>, context: ProviderContext) {
    this.params = params;
    this.context = context;
  }

  get name(): string {
    return this.constructor.name;
  }

  inContext(): boolean | Promise<boolean> {
    return true;
  }

  abstract requestHeaders(): HeaderMap | Promise<HeaderMap>;
}

/** Formats `<scheme> <token>` the way every token provider does. */
export function authorizationValue(scheme: string, token: string): string {
  return scheme ? `${scheme} ${token}` : token;
}

/** Case-insensitive header lookup. */
export function headerValue(headers: HeaderMap, name: string): string | undefined {
  const direct = headers[name];
  if (direct !== undefined) return direct;
  const lower = name.toLowerCase();
  for (const [key, value] of Object.entries(headers)) if (key.toLowerCase() === lower) return value;
  return undefined;
}
