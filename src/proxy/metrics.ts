import type * as PromClientModule from 'prom-client';
import type { Registry } from 'prom-client';
import { errorMessage } from '../errors.js';
import type { Logger } from '../log/logger.js';
import type { AuthMetrics } from '../metrics/auth-metrics.js';
import { lazyRequire } from '../util/lazy-require.js';

/** One of prom-client's default process collectors: registers its metrics on the registry it is given. */
type DefaultCollector = (registry: Registry, config: { prefix: string; eventLoopMonitoringPrecision: number }) => void;

/** The part of prom-client kvx uses. */
interface PromClient {
  Registry: typeof PromClientModule.Registry;
  Counter: typeof PromClientModule.Counter;
  Gauge: typeof PromClientModule.Gauge;
  defaultCollectors: DefaultCollector[];
}

/**
 * prom-client's own modules rather than its index: the index also loads its Pushgateway (node:http, https, tls,
 * zlib) and cluster aggregation, about 5 MB of RSS in every proxy for code kvx never calls. prom-client 15 has no
 * `exports` map, so these paths are its public layout; the metrics tests fail if a release moves them.
 *
 * The default process metrics are its collectors one by one, as its `collectDefaultMetrics` lists them, except the
 * CPU counters: prom-client's module for those loads @opentelemetry/api (51 modules, 8-15 ms on the event loop when
 * the metrics load in the proxy's first second, and about 1 MB that stays) to label exemplars kvx never turns on.
 * `processCpuCollector` registers the same three counters.
 */
function loadPromClient(): PromClient {
  const Counter = lazyRequire('prom-client/lib/counter') as PromClient['Counter'];
  const collectors: DefaultCollector[] = [
    processCpuCollector(Counter),
    lazyRequire('prom-client/lib/metrics/processStartTime') as DefaultCollector,
    lazyRequire('prom-client/lib/metrics/osMemoryHeap') as DefaultCollector,
    lazyRequire('prom-client/lib/metrics/processOpenFileDescriptors') as DefaultCollector,
    lazyRequire('prom-client/lib/metrics/processMaxFileDescriptors') as DefaultCollector,
    lazyRequire('prom-client/lib/metrics/eventLoopLag') as DefaultCollector,
    lazyRequire('prom-client/lib/metrics/processHandles') as DefaultCollector,
    lazyRequire('prom-client/lib/metrics/processRequests') as DefaultCollector,
    lazyRequire('prom-client/lib/metrics/heapSizeAndUsed') as DefaultCollector,
    lazyRequire('prom-client/lib/metrics/heapSpacesSizeAndUsed') as DefaultCollector,
    lazyRequire('prom-client/lib/metrics/version') as DefaultCollector,
    lazyRequire('prom-client/lib/metrics/gc') as DefaultCollector,
  ];
  // prom-client registers this one only where Node has process.getActiveResourcesInfo (every Node kvx runs on).
  if (typeof process.getActiveResourcesInfo === 'function') collectors.push(lazyRequire('prom-client/lib/metrics/processResources') as DefaultCollector);
  return {
    Registry: lazyRequire('prom-client/lib/registry') as PromClient['Registry'],
    Counter,
    Gauge: lazyRequire('prom-client/lib/gauge') as PromClient['Gauge'],
    defaultCollectors: collectors,
  };
}

/** process_cpu_{user,system}_seconds_total and process_cpu_seconds_total, as prom-client names and explains them. */
function processCpuCollector(Counter: PromClient['Counter']): DefaultCollector {
  return (registry, { prefix }) => {
    const registers = [registry];
    let last = process.cpuUsage();
    // Registered first, so collected first on every scrape: its one reading of the process's CPU time sets all three.
    new Counter({
      name: `${prefix}process_cpu_user_seconds_total`,
      help: 'Total user CPU time spent in seconds.',
      registers,
      collect() {
        const now = process.cpuUsage();
        const user = (now.user - last.user) / 1e6;
        const sys = (now.system - last.system) / 1e6;
        last = now;
        this.inc(user);
        system.inc(sys);
        total.inc(user + sys);
      },
    });
    const system = new Counter({ name: `${prefix}process_cpu_system_seconds_total`, help: 'Total system CPU time spent in seconds.', registers });
    const total = new Counter({ name: `${prefix}process_cpu_seconds_total`, help: 'Total user and system CPU time spent in seconds.', registers });
  };
}

export type ReplayResult = 'success' | 'rejected_again' | 'refresh_failed' | 'no_answer';

const KNOWN_METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'OTHER'];
const METHOD_INDEX = new Map(KNOWN_METHODS.map((m, i) => [m, i]));
const STATUS_CLASSES = ['1xx', '2xx', '3xx', '4xx', '5xx', 'other'];
const BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];
/** Default process metrics start this long after the proxy is created, off the start-up path. */
const PROCESS_METRICS_DELAY_MS = 1000;
/** A failed load of prom-client (no file descriptor left, typically) is tried again after this, doubling... */
const LOAD_RETRY_FIRST_MS = 1000;
/** ...up to this. */
const LOAD_RETRY_MAX_MS = 60_000;

/**
 * One instance per proxy (tests run several in one process). The request path only bumps plain numbers;
 * prom-client (about 30-60 ms to load, paid by every exec-wrapped pipeline step) is loaded when /metrics
 * is first scraped or shortly after start, and its metrics read those numbers at collection time.
 */
export class ProxyMetrics implements AuthMetrics {
  /** Requests by method × status class, indexed method * STATUS_CLASSES.length + class. */
  private readonly requestCounts = new Float64Array(KNOWN_METHODS.length * STATUS_CLASSES.length);
  /** Non-cumulative bucket counts; the last slot is +Inf. */
  private readonly durationBuckets = new Float64Array(BUCKETS.length + 1);
  private durationSum = 0;
  private durationCount = 0;
  private inFlightCount = 0;
  private bytesInTotal = 0;
  private bytesOutTotal = 0;
  private readonly upstreamErrorCounts = new Map<string, number>();
  private readonly tokenFetchCounts = new Map<string, { provider: string; result: string; count: number }>();
  private readonly tokenExpiries = new Map<string, number | undefined>();
  private readonly replayCounts = new Map<string, number>();
  private readonly crossSiteRefusals = new Map<string, number>();
  private readonly upstreamRejectingProviders = new Map<string, boolean>();
  private readonly acceptErrorCounts = new Map<string, number>();
  private promRegistry: Registry | undefined;
  private readonly processMetrics: boolean;
  private readonly logger: Logger | undefined;
  /** Why prom-client could not be loaded yet, for /metrics to say. */
  private loadFailure: string | undefined;
  private retryDelayMs = LOAD_RETRY_FIRST_MS;
  private retryTimer: NodeJS.Timeout | undefined;

  /** The in-flight gauge: inc/dec for the forwarder, get() in prom-client's shape for callers that read it. */
  readonly inFlight = {
    inc: (): void => {
      this.inFlightCount++;
    },
    dec: (): void => {
      this.inFlightCount--;
    },
    get: async (): Promise<{ values: { value: number; labels: Record<string, string> }[] }> => ({ values: [{ value: this.inFlightCount, labels: {} }] }),
  };

  constructor(options: { processMetrics?: boolean; logger?: Logger } = {}) {
    this.processMetrics = options.processMetrics !== false;
    this.logger = options.logger;
    if (this.processMetrics) setTimeout(() => this.loadRegistry(), PROCESS_METRICS_DELAY_MS).unref();
  }

  /** The prom-client registry with every kvx metric (and process metrics unless turned off); built on first use. */
  get registry(): Registry {
    const registry = this.loadRegistry();
    if (!registry) throw new Error(this.loadFailure);
    return registry;
  }

  /**
   * The registry, or undefined while prom-client cannot be loaded. Loading reads files; a process at its
   * open-file limit (clients reconnecting to a restarted sidecar) cannot, and must not crash for it: the load
   * is tried again later, with each scrape and on a timer, and `unavailableReason` says why until it works.
   */
  loadRegistry(): Registry | undefined {
    if (this.promRegistry) return this.promRegistry;
    let prom: PromClient;
    try {
      prom = loadPromClient();
    } catch (err) {
      const first = this.loadFailure === undefined;
      const code = errnoCode(err);
      this.loadFailure = `prom-client could not be loaded (${code}: ${errorMessage(err)}); retrying`;
      if (first) this.logger?.warn('metrics unavailable: prom-client could not be loaded; retrying', { code, error: errorMessage(err) });
      if (!this.retryTimer) {
        this.retryTimer = setTimeout(() => {
          this.retryTimer = undefined;
          this.loadRegistry();
        }, this.retryDelayMs).unref();
        this.retryDelayMs = Math.min(this.retryDelayMs * 2, LOAD_RETRY_MAX_MS);
      }
      return undefined;
    }
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.promRegistry = this.buildRegistry(prom);
    if (this.loadFailure !== undefined) this.logger?.info('metrics available: prom-client loaded');
    this.loadFailure = undefined;
    return this.promRegistry;
  }

  /** Why /metrics cannot answer yet; undefined once prom-client is loaded or before it was first tried. */
  get unavailableReason(): string | undefined {
    return this.loadFailure;
  }

  /** A connection the proxy could not take: `code` is accept()'s errno, EMFILE also when kvx refused it at its fd-derived cap. */
  acceptError(code: string): void {
    this.acceptErrorCounts.set(code, (this.acceptErrorCounts.get(code) ?? 0) + 1);
  }

  requestDone(method: string, status: number, seconds: number, bytesIn: number, bytesOut: number): void {
    const m = METHOD_INDEX.get(method) ?? 7;
    const cls = status >= 100 && status < 600 ? ((status / 100) | 0) - 1 : 5;
    this.requestCounts[m * STATUS_CLASSES.length + cls]!++;
    let b = 0;
    while (b < BUCKETS.length && seconds > BUCKETS[b]!) b++;
    this.durationBuckets[b]!++;
    this.durationSum += seconds;
    this.durationCount++;
    this.bytesInTotal += bytesIn;
    this.bytesOutTotal += bytesOut;
  }

  /** The HTTP engine serving (server.engine, after auto's choice), for kvx_engine_info. */
  engine: string | undefined;

  upstreamError(kind: string): void {
    this.upstreamErrorCounts.set(kind, (this.upstreamErrorCounts.get(kind) ?? 0) + 1);
  }

  /**
   * A replay's outcome, known when its answer arrives: `success` (not rejected again), `rejected_again`,
   * `refresh_failed` (no fresh credential, the client got 503) or `no_answer` (the replay got no answer: the
   * upstream failed or the client left).
   */
  replay(result: ReplayResult): void {
    this.replayCounts.set(result, (this.replayCounts.get(result) ?? 0) + 1);
  }

  /** A request refused by the Host/Origin checks (src/proxy/host-guard.ts). */
  crossSiteRefusal(reason: 'host' | 'origin' | 'fetch_site'): void {
    this.crossSiteRefusals.set(reason, (this.crossSiteRefusals.get(reason) ?? 0) + 1);
  }

  tokenFetch(provider: string, ok: boolean): void {
    const result = ok ? 'success' : 'failure';
    const key = `${provider}\n${result}`;
    const entry = this.tokenFetchCounts.get(key);
    if (entry) entry.count++;
    else this.tokenFetchCounts.set(key, { provider, result, count: 1 });
  }

  tokenExpiry(provider: string, expiresAtMs: number | undefined): void {
    this.tokenExpiries.set(provider, expiresAtMs);
  }

  upstreamRejecting(provider: string, rejecting: boolean): void {
    this.upstreamRejectingProviders.set(provider, rejecting);
  }

  private buildRegistry(prom: PromClient): Registry {
    const registry = new prom.Registry();
    const registers = [registry];
    const requestCounts = this.requestCounts;
    const inFlightNow = () => this.inFlightCount;
    const tokenFetches = this.tokenFetchCounts;
    const expiries = this.tokenExpiries;
    const rejecting = this.upstreamRejectingProviders;
    new prom.Counter({
      name: 'kvx_requests_total',
      help: 'Proxied requests by method and response status class.',
      labelNames: ['method', 'status_class'],
      registers,
      collect() {
        this.reset();
        requestCounts.forEach((count, i) => {
          if (count > 0) this.inc({ method: KNOWN_METHODS[(i / STATUS_CLASSES.length) | 0]!, status_class: STATUS_CLASSES[i % STATUS_CLASSES.length]! }, count);
        });
      },
    });
    registry.registerMetric(durationHistogram(this) as unknown as Parameters<Registry['registerMetric']>[0]);
    const engineNow = () => this.engine;
    new prom.Gauge({
      name: 'kvx_engine_info',
      help: 'The HTTP engine serving requests (server.engine; auto resolved): wire or node.',
      labelNames: ['engine'],
      registers,
      collect() {
        this.reset();
        const engine = engineNow();
        if (engine !== undefined) this.set({ engine }, 1);
      },
    });
    new prom.Gauge({
      name: 'kvx_requests_in_flight',
      help: 'Requests being proxied now.',
      registers,
      collect() {
        this.set(inFlightNow());
      },
    });
    const labelledCounter = (name: string, help: string, label: string, counts: Map<string, number>) =>
      new prom.Counter({
        name,
        help,
        labelNames: [label],
        registers,
        collect() {
          this.reset();
          for (const [value, count] of counts) this.inc({ [label]: value }, count);
        },
      });
    labelledCounter('kvx_upstream_errors_total', 'Requests that failed between proxy and upstream, by kind.', 'kind', this.upstreamErrorCounts);
    for (const [name, help, read] of [
      ['kvx_request_body_bytes_total', 'Request body bytes forwarded to upstream.', () => this.bytesInTotal],
      ['kvx_response_body_bytes_total', 'Response body bytes sent to clients.', () => this.bytesOutTotal],
    ] as const) {
      new prom.Counter({
        name,
        help,
        registers,
        collect() {
          this.reset();
          this.inc(read());
        },
      });
    }
    new prom.Counter({
      name: 'kvx_token_fetches_total',
      help: 'Credential fetches by provider and result.',
      labelNames: ['provider', 'result'],
      registers,
      collect() {
        this.reset();
        for (const { provider, result, count } of tokenFetches.values()) this.inc({ provider, result }, count);
      },
    });
    new prom.Gauge({
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
    labelledCounter(
      'kvx_cross_site_refusals_total',
      'Requests refused before forwarding because their Host is not a name of the proxy (reason host) or they come from another site (origin, fetch_site).',
      'reason',
      this.crossSiteRefusals,
    );
    labelledCounter(
      'kvx_auth_replays_total',
      'Requests replayed after an upstream authentication rejection, by the replay\'s outcome (success: not rejected again).',
      'result',
      this.replayCounts,
    );
    new prom.Gauge({
      name: 'kvx_auth_upstream_rejecting',
      help: '1 while the upstream rejects even freshly minted tokens of the provider (replays stopped, refreshes backed off).',
      labelNames: ['provider'],
      registers,
      collect() {
        this.reset();
        for (const [provider, on] of rejecting) this.set({ provider }, on ? 1 : 0);
      },
    });
    labelledCounter(
      'kvx_accept_errors_total',
      'Client connections the proxy could not take, by error code (EMFILE: at the open-file limit).',
      'code',
      this.acceptErrorCounts,
    );
    if (this.processMetrics) {
      for (const collect of prom.defaultCollectors) collect(registry, { prefix: 'kvx_', eventLoopMonitoringPrecision: 10 });
    }
    return registry;
  }

  /** Histogram state for the registry's collector. */
  durationSnapshot(): { buckets: Float64Array; sum: number; count: number } {
    return { buckets: this.durationBuckets, sum: this.durationSum, count: this.durationCount };
  }
}

/**
 * kvx_request_duration_seconds as a registry collector reading the forwarder's plain bucket counts
 * (prom-client's Histogram can only be fed one observation at a time).
 */
function durationHistogram(metrics: ProxyMetrics) {
  const name = 'kvx_request_duration_seconds';
  const help = 'Time from request arrival to the end of the response.';
  return {
    name,
    help,
    type: 'histogram',
    aggregator: 'sum',
    reset(): void {},
    async get() {
      const { buckets, sum, count } = metrics.durationSnapshot();
      const values: { labels: Record<string, string | number>; value: number; metricName: string }[] = [];
      let cumulative = 0;
      BUCKETS.forEach((le, i) => {
        cumulative += buckets[i]!;
        values.push({ labels: { le }, value: cumulative, metricName: `${name}_bucket` });
      });
      values.push({ labels: { le: '+Inf' }, value: count, metricName: `${name}_bucket` });
      values.push({ labels: {}, value: sum, metricName: `${name}_sum` });
      values.push({ labels: {}, value: count, metricName: `${name}_count` });
      return { name, help, type: 'histogram', aggregator: 'sum', values };
    },
  };
}

/**
 * The errno behind a failed module load. Node reports a package.json it could not read as
 * ERR_INVALID_PACKAGE_CONFIG, with the errno only in the message ("too many open files").
 */
function errnoCode(err: unknown): string {
  const code = (err as { code?: unknown } | undefined)?.code;
  if (typeof code === 'string' && /^E[A-Z]+$/.test(code)) return code;
  if (/too many open files/i.test(errorMessage(err))) return 'EMFILE';
  return typeof code === 'string' ? code : 'unknown';
}
