import type { LogSink } from './logger.js';

/** A stream log lines are written to; an EventEmitter (process.stdout, a file stream) reports its failures. */
export interface LogStream {
  write(chunk: Uint8Array | string): unknown;
  on?(event: 'error', listener: (err: Error) => void): unknown;
  readonly writableLength?: number;
}

/**
 * Tells `onLost` once when `stream` fails: its reader went away (EPIPE from `kvx-proxy | tee` with tee gone,
 * EIO from a closed terminal) or its disk is full. Without a listener that 'error' event ends the process,
 * and a proxy must not stop serving because nobody reads its logs. Write failures that throw instead (a
 * file on stdout is written synchronously) go to the returned function.
 */
export function watchLogStream(stream: LogStream, onLost: (err: NodeJS.ErrnoException) => void): (err: unknown) => void {
  let lost = false;
  const fail = (err: unknown): void => {
    if (lost) return;
    lost = true;
    onLost(err instanceof Error ? err : new Error(String(err)));
  };
  stream.on?.('error', fail);
  return fail;
}

/**
 * Writes each line at once (the exec wrapper's stderr, where lines must interleave with the command's own
 * output) and stops writing when the stream fails.
 */
export class StreamSink implements LogSink {
  private lost = false;
  private readonly fail: (err: unknown) => void;

  constructor(
    private readonly stream: LogStream,
    onLost: (err: NodeJS.ErrnoException) => void = () => {},
  ) {
    this.fail = watchLogStream(stream, (err) => {
      this.lost = true;
      onLost(err);
    });
  }

  write(line: string): void {
    if (this.lost) return;
    try {
      this.stream.write(line);
    } catch (err) {
      this.fail(err);
    }
  }
}
