import type { LogSink } from './logger.js';

/** Sinks holding unwritten lines; flushed synchronously if the process exits before their next turn. */
const unflushed = new Set<BatchedSink>();
let exitHook = false;

/**
 * Collects log lines written during one event-loop turn and hands them to the underlying stream in a
 * single write. A busy proxy logs a line per request; stdout is usually a pipe, and one write syscall per
 * line (each waking the log collector) costs about as much CPU as forwarding a small request. Lines keep
 * their order and are out within the same turn of the event loop.
 */
export class BatchedSink implements LogSink {
  private pending = '';

  constructor(private readonly target: { write(chunk: string): unknown }) {
    if (!exitHook) {
      exitHook = true;
      process.once('exit', () => {
        for (const sink of unflushed) sink.flush();
      });
    }
  }

  write(line: string): void {
    if (this.pending === '') {
      unflushed.add(this);
      setImmediate(this.flush);
    }
    this.pending += line;
  }

  readonly flush = (): void => {
    if (this.pending === '') return;
    const text = this.pending;
    this.pending = '';
    unflushed.delete(this);
    this.target.write(text);
  };
}
