/**
 * What token-producing providers report. An interface rather than prom-client objects so providers stay
 * independent of how (or whether) the host process exposes metrics; the proxy passes a Prometheus-backed one.
 */
export interface AuthMetrics {
  /** One token fetch finished, successfully or not. */
  tokenFetch(provider: string, ok: boolean): void;
  /** The held token for `provider` now expires at this epoch-ms time (undefined: none held). */
  tokenExpiry(provider: string, expiresAtMs: number | undefined): void;
  /** Whether the upstream now rejects even `provider`'s freshly minted tokens (replays stopped, refreshes backed off). */
  upstreamRejecting(provider: string, rejecting: boolean): void;
}

export const noAuthMetrics: AuthMetrics = {
  tokenFetch: () => {},
  tokenExpiry: () => {},
  upstreamRejecting: () => {},
};
