/**
 * A coarse clock for timeouts. The hot path stamps connections with `coarseNow()` (a field read), and a
 * sweep timer per listener or pool compares stamps against deadlines, as node:http's connection checker
 * does: one timer for all connections instead of one or more per request.
 */
let now = Date.now();

export function coarseNow(): number {
  return now;
}

/** Refreshes the clock; called by every sweep and at events that start a measured span. */
export function tick(): number {
  now = Date.now();
  return now;
}

/** A sweep interval fine enough for the shortest timeout it checks (a tenth of it), between 10 ms and 1 s. */
export function sweepInterval(timeoutsMs: readonly number[]): number {
  const shortest = Math.min(...timeoutsMs.filter((t) => t > 0));
  return Number.isFinite(shortest) ? Math.min(1000, Math.max(10, Math.floor(shortest / 10))) : 1000;
}

export class Sweeper {
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly intervalMs: number,
    private readonly sweep: (now: number) => void,
  ) {}

  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => this.sweep(tick()), this.intervalMs);
    // Timeouts matter only while there is traffic; they must not keep a finished process alive.
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}
