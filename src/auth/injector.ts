import { CredentialsError, errorMessage } from '../errors.js';
import type { KvxConfig } from '../config/schema.js';
import { Egress } from '../config/egress.js';
import type { Logger } from '../log/logger.js';
import { noAuthMetrics } from '../metrics/auth-metrics.js';
import type { AuthMetrics } from '../metrics/auth-metrics.js';
import type { CredentialsLookup } from './google/discovery.js';
import type { HeaderMap, HeaderProvider, ProviderContext, ProviderStatus, RequestHeaderOptions } from './provider.js';
import { providerType } from './registry.js';
import type { ProviderPlan } from './registry.js';

export interface ActiveProvider {
  plan: ProviderPlan;
  provider: HeaderProvider;
}

/**
 * All providers that apply, combined: headers from each in configured order, later ones winning on a
 * name clash. This is the only object the proxy and the launcher talk to for credentials.
 */
export class HeaderInjector {
  private constructor(
    readonly active: readonly ActiveProvider[],
    private readonly logger: Logger,
    /** The egress made here when the caller gave none, closed with the injector. */
    private readonly ownEgress: Egress | undefined,
  ) {}

  static async create(
    plans: readonly ProviderPlan[],
    options: { config: KvxConfig; logger: Logger; baseDir: string; env?: NodeJS.ProcessEnv; metrics?: AuthMetrics; googleCredentials?: CredentialsLookup; egress?: Egress },
  ): Promise<HeaderInjector> {
    const active: ActiveProvider[] = [];
    const ownEgress = options.egress === undefined ? Egress.fromConfig(options.config, options.env ?? process.env) : undefined;
    const egress = options.egress ?? ownEgress!;
    for (const plan of plans) {
      const type = providerType(plan.type);
      if (type === undefined) throw new CredentialsError(plan.type, `unknown provider type "${plan.type}"`);
      const context: ProviderContext = {
        logger: options.logger.child({ provider: plan.type }),
        config: options.config,
        header: plan.header,
        scheme: plan.scheme,
        baseDir: options.baseDir,
        env: options.env ?? process.env,
        metrics: options.metrics ?? noAuthMetrics,
        egress,
      };
      if (options.googleCredentials !== undefined) context.googleCredentials = options.googleCredentials;
      const provider = await type.create(plan, context);
      if (await provider.inContext()) {
        active.push({ plan, provider });
      } else {
        options.logger.info('header provider not in context; skipped', { provider: provider.name });
        await provider.close?.();
      }
    }
    return new HeaderInjector(active, options.logger, ownEgress);
  }

  /** Fetch every provider's first credential, so a misconfiguration fails at start rather than on a request. */
  async start(): Promise<void> {
    await Promise.all(this.active.map(({ provider }) => provider.start?.()));
  }

  /**
   * Headers for one request. Synchronous whenever every provider holds a fresh credential, which is the
   * steady state; a promise only while some provider is fetching, which waits at most `options.waitMs`.
   */
  headers(options?: RequestHeaderOptions): HeaderMap | Promise<HeaderMap> {
    const active = this.active;
    if (active.length === 1) return active[0]!.provider.requestHeaders(options);
    // Providers hand out the same frozen map while their credential holds, so the merge of the last maps is
    // reused: with a token provider plus auth.extraHeaders, a request allocates nothing here.
    const last = this.lastParts;
    let results: (HeaderMap | Promise<HeaderMap>)[] | undefined;
    let pending = false;
    for (let i = 0; i < active.length; i++) {
      const r = active[i]!.provider.requestHeaders(options);
      if (results === undefined) {
        if (last !== undefined && r === last[i] && Object.isFrozen(r)) continue;
        results = last === undefined ? [] : last.slice(0, i);
      }
      if (r instanceof Promise) pending = true;
      results.push(r);
    }
    if (results === undefined) return this.lastMerged!;
    if (!pending) {
      const parts = results as HeaderMap[];
      const merged = Object.freeze(merge(parts));
      this.lastParts = parts;
      this.lastMerged = merged;
      return merged;
    }
    return Promise.all(results).then(merge);
  }

  private lastParts: HeaderMap[] | undefined;
  private lastMerged: HeaderMap | undefined;

  /** The upstream rejected a request sent with `rejected`: let every provider that can refresh decide. Never rejects. */
  async invalidate(rejected: HeaderMap): Promise<void> {
    try {
      await this.refresh(rejected);
    } catch (err) {
      this.logger.warn('credential refresh after upstream rejection failed', { error: errorMessage(err) });
    }
  }

  /**
   * invalidate() for a replay: rejects with the first provider's failure (CredentialsError), so the caller can
   * answer with it instead of replaying with the rejected credential; waits at most `options.waitMs`.
   */
  async refresh(rejected: HeaderMap, options?: RequestHeaderOptions): Promise<void> {
    const results = await Promise.allSettled(this.active.map(({ provider }) => provider.invalidate?.(rejected, options)));
    for (const r of results) if (r.status === 'rejected') throw r.reason;
  }

  /**
   * The upstream answered `status` (one of auth.retryOnStatus) to a request sent with `sent`: whether a refresh and
   * replay may help. Every provider hears of it; false when one says its fresh credential was rejected too.
   */
  rejected(sent: HeaderMap, status: number): boolean {
    let worth = true;
    for (const { provider } of this.active) if (provider.rejected?.(sent, status) === false) worth = false;
    return worth;
  }

  /** The upstream accepted a request sent with `sent`; worth calling only while `unconfirmed`. */
  accepted(sent: HeaderMap): void {
    for (const { provider } of this.active) provider.accepted?.(sent);
  }

  /** Whether some provider waits to hear that its current credential works upstream. Read on every answer. */
  get unconfirmed(): boolean {
    const active = this.active;
    for (let i = 0; i < active.length; i++) if (active[i]!.provider.unconfirmed === true) return true;
    return false;
  }

  get canRefresh(): boolean {
    return this.active.some(({ provider }) => provider.invalidate !== undefined);
  }

  status(): { ready: boolean; providers: (ProviderStatus & { name: string; type: string })[] } {
    const providers = this.active.map(({ plan, provider }) => ({ name: provider.name, type: plan.type, ...(provider.status?.() ?? { ready: true }) }));
    return { ready: providers.every((p) => p.ready), providers };
  }

  async close(): Promise<void> {
    await Promise.allSettled(this.active.map(({ provider }) => provider.close?.()));
    await this.ownEgress?.close();
  }
}

function merge(maps: HeaderMap[]): HeaderMap {
  const out: HeaderMap = {};
  const seen = new Map<string, string>();
  for (const map of maps) {
    for (const [name, value] of Object.entries(map)) {
      const lower = name.toLowerCase();
      const previous = seen.get(lower);
      if (previous !== undefined) delete out[previous];
      seen.set(lower, name);
      out[name] = value;
    }
  }
  return out;
}
