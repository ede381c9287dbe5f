import { performance } from 'node:perf_hooks';
import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { Logger } from '../log/logger.js';

/**
 * Gives memory back once a burst is over. V8 grows its young generation with the allocation rate (to 128 MiB
 * by default, 16 MiB with the shipped --max-semi-space-size=8) and shrinks it only at a collection that finds
 * the rate low; a proxy that falls idle after a burst allocates next to nothing, so that collection never comes
 * and the memory stays resident (285 MB after a 500-connection burst), as do the objects of the connections that
 * closed since the last collection. Once no request has started and no client connection opened or closed for
 * IDLE_MS, and the heap has grown by GROWTH_BYTES since the last time, one memory-reducing collection (the one V8
 * runs under memory pressure) returns it. It runs at most once per idle spell, never while requests are under way.
 */
export const IDLE_MS = 5_000;
export const GROWTH_BYTES = 4 * 1024 * 1024;
const CHECK_MS = 1_000;

type GcFunction = (options: { type: 'major'; execution: 'sync'; flavor: 'last-resort' }) => void;

/**
 * V8's gc(), without exposing it to kvx's own context: the flag is set only while a throwaway context is made,
 * and only that context gets the function. Undefined if this V8 refuses (the proxy then simply does not reduce).
 */
function loadGc(): GcFunction | undefined {
  try {
    v8.setFlagsFromString('--expose-gc');
    const gc: unknown = runInNewContext('gc');
    return typeof gc === 'function' ? (gc as GcFunction) : undefined;
  } catch {
    return undefined;
  } finally {
    v8.setFlagsFromString('--no-expose-gc');
  }
}

export interface IdleSignals {
  /** Requests started so far. */
  requestsStarted(): number;
  /** Client connections open now. */
  openConnections(): number;
  /** Whether requests are under way (a long download starts no new request, but is not idle). */
  busy(): boolean;
}

const heapSize = (): number => v8.getHeapStatistics().total_heap_size;

export class IdleMemoryReducer {
  private timer: NodeJS.Timeout | undefined;
  private gc: GcFunction | undefined | null = null;
  private lastRequests = -1;
  private lastConnections = -1;
  private idleSince = 0;
  private reducedThisSpell = false;
  /**
   * The smallest heap seen after a reduction (or at start): growth is measured from here, not from the last
   * reduction, which may have run while many connections were open.
   */
  private settledHeap: number;

  constructor(
    private readonly signals: IdleSignals,
    private readonly logger: Logger,
    /** The heap's committed size; replaceable so the decision can be tested apart from V8's sizing. */
    private readonly heap: () => number = heapSize,
  ) {
    this.settledHeap = heap();
  }

  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => this.check(Date.now()), CHECK_MS);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** One periodic check (public for tests); returns whether it reduced. */
  check(now: number): boolean {
    const { signals } = this;
    const requests = signals.requestsStarted();
    const connections = signals.openConnections();
    if (requests !== this.lastRequests || connections !== this.lastConnections || signals.busy()) {
      this.lastRequests = requests;
      this.lastConnections = connections;
      this.idleSince = now;
      this.reducedThisSpell = false;
      return false;
    }
    if (this.reducedThisSpell || now - this.idleSince < IDLE_MS) return false;
    this.reducedThisSpell = true;
    const before = this.heap();
    if (before < this.settledHeap + GROWTH_BYTES) return false;
    if (this.gc === null) this.gc = loadGc();
    if (this.gc === undefined) return false;
    const rssBefore = process.memoryUsage.rss();
    const started = performance.now();
    this.gc({ type: 'major', execution: 'sync', flavor: 'last-resort' });
    const after = this.heap();
    this.settledHeap = Math.min(this.settledHeap, after);
    this.logger.debug('idle: returned memory after a burst', {
      gcMs: Math.round((performance.now() - started) * 10) / 10,
      heapBytesBefore: before,
      heapBytesAfter: after,
      rssBytesBefore: rssBefore,
      rssBytesAfter: process.memoryUsage.rss(),
    });
    return true;
  }
}
