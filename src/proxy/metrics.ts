import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { AuthMetrics } from '../metrics/auth-metrics.js';

const KNOWN_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);
const STATUS_CLASSES = ['1xx', '2xx', '3xx', '4xx', '5xx'];

/**
 * One registry per proxy instance (tests run several in one process). Label children are resolved once
 * and cached: a prom-client label lookup per request is measurable at tens of thousands of requests a second.
 */
export class ProxyMetrics implements AuthMetrics {
  readonly registry = new Registry();
  private readonly requests: Counter<'method' | 'status_class'>;
  private readonly requestChildren = new Map<string, Counter.Internal>();
  private readonly duration: Histogram;
  readonly inFlight: Gauge;
  private readonly upstreamErrors: Counter<'kind'>;
  private readonly bytesIn: Counter;
  private readonly bytesOut: Counter;
  private readonly tokenFetches: Counter<'provider' | 'result'>;
  private readonly tokenExpiries = new Map<string, number | undefined>();
  private readonly replays: Counter<'result'>;

  constructor(options: { processMetrics?: boolean } = {}) {
    const registers = [this.registry];
    this.requests = new Counter({ name: 'kvx_requests_total', help: 'Proxied requests by method and response status class.', labelNames: ['method', 'status_class'], registers });
    this.duration = new Histogram({
      name: 'kvx_request_duration_seconds',
      help: 'Time from request arrival to the end of the response.',
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
      registers,
    });
    this.inFlight = new Gauge({ name: 'kvx_requests_in_flight', help: 'Requests being proxied now.', registers });
    this.upstreamErrors = new Counter({ name: 'kvx_upstream_errors_total', help: 'Requests that failed between proxy and upstream, by kind.', labelNames: ['kind'], registers });
    this.bytesIn = new Counter({ name: 'kvx_request_body_bytes_total', help: 'Request body bytes forwarded to upstream.', registers });
    this.bytesOut = new Counter({ name: 'kvx_response_body_bytes_total', help: 'Response body bytes sent to clients.', registers });
    this.tokenFetches = new Counter({ name: 'kvx_token_fetches_total', help: 'Credential fetches by provider and result.', labelNames: ['provider', 'result'], registers });
    const expiries = this.tokenExpiries;
    new Gauge({
      name: 'kvx_token_expiry_seconds',
      help: 'Seconds until the held credential expires, by provider (negative: expired).',
      labelNames: ['provider'],
      registers,
      collect() {
        this.reset();
        const now = Date.now();
        for (const [provider, at] of expiries) if (at !== undefined) this.set({ provider }, (at - now) / 1000);
      },
    });
    this.replays = new Counter({ name: 'kvx_auth_replays_total', help: 'Requests replayed after an upstream authentication rejection, by result.', labelNames: ['result'], registers });
    if (options.processMetrics !== false) collectDefaultMetrics({ register: this.registry, prefix: 'kvx_' });
  }

  requestDone(method: string, status: number, seconds: number, bytesIn: number, bytesOut: number): void {
    const m = KNOWN_METHODS.has(method) ? method : 'OTHER';
    const cls = STATUS_CLASSES[Math.floor(status / 100) - 1] ?? 'other';
    const key = m + cls;
    let child = this.requestChildren.get(key);
    if (child === undefined) {
      child = this.requests.labels(m, cls);
      this.requestChildren.set(key, child);
    }
    child.inc();
    this.duration.observe(seconds);
    if (bytesIn > 0) this.bytesIn.inc(bytesIn);
    if (bytesOut > 0) this.bytesOut.inc(bytesOut);
  }

  upstreamError(kind: string): void {
    this.upstreamErrors.labels(kind).inc();
  }

  replay(result: 'success' | 'rejected_again' | 'refresh_failed'): void {
    this.replays.labels(result).inc();
  }

  tokenFetch(provider: string, ok: boolean): void {
    this.tokenFetches.labels(provider, ok ? 'success' : 'failure').inc();
  }

  tokenExpiry(provider: string, expiresAtMs: number | undefined): void {
    this.tokenExpiries.set(provider, expiresAtMs);
  }
}
