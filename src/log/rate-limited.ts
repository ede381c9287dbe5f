import type { LogFields, Logger } from './logger.js';

/**
 * A warning that can come thousands of times a second (each connection dropped at the open-file limit): the
 * first is logged at once, the ones after it are counted and logged as one line per interval, with the fields
 * of the latest and how many there were, so the log neither floods nor loses count.
 */
export class RateLimitedWarning {
  private pending = 0;
  private latest: LogFields | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly logger: Logger,
    private readonly msg: string,
    /** The field that carries the count, e.g. "dropped". */
    private readonly countField: string,
    private readonly intervalMs = 5000,
  ) {}

  report(fields: LogFields): void {
    if (this.timer === undefined) {
      this.logger.warn(this.msg, { ...fields, [this.countField]: 1 });
      this.startInterval();
      return;
    }
    this.pending++;
    this.latest = fields;
  }

  /** Logs what is still counted; for shutdown. */
  close(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.pending > 0) this.flush();
  }

  private startInterval(): void {
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (this.pending === 0) return;
      this.flush();
      this.startInterval();
    }, this.intervalMs);
    // Counted warnings must not keep a finished process alive.
    this.timer.unref();
  }

  private flush(): void {
    this.logger.warn(this.msg, { ...this.latest, [this.countField]: this.pending, intervalMs: this.intervalMs });
    this.pending = 0;
    this.latest = undefined;
  }
}
