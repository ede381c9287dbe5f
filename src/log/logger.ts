/**
 * One JSON object per line. Hand-rolled rather than a logging framework because the proxy writes a line per
 * request on its hot path, and because redaction must be impossible to forget: nothing here ever serialises
 * a header map; callers pass the fields they mean to log.
 */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error' | 'silent';

const LEVEL_RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 100 };

export interface LogSink {
  write(line: string): unknown;
}

export type LogFields = Record<string, unknown>;

export class Logger {
  private readonly rank: number;

  constructor(
    readonly level: LogLevel = 'info',
    private readonly sink: LogSink = process.stdout,
    private readonly base: LogFields = {},
  ) {
    this.rank = LEVEL_RANK[level];
  }

  child(fields: LogFields): Logger {
    return new Logger(this.level, this.sink, { ...this.base, ...fields });
  }

  enabled(level: LogLevel): boolean {
    return LEVEL_RANK[level] >= this.rank;
  }

  debug(msg: string, fields?: LogFields): void {
    if (this.rank <= 10) this.emit('debug', msg, fields);
  }

  info(msg: string, fields?: LogFields): void {
    if (this.rank <= 20) this.emit('info', msg, fields);
  }

  warn(msg: string, fields?: LogFields): void {
    if (this.rank <= 30) this.emit('warn', msg, fields);
  }

  error(msg: string, fields?: LogFields): void {
    if (this.rank <= 40) this.emit('error', msg, fields);
  }

  private emit(level: LogLevel, msg: string, fields?: LogFields): void {
    const record = { time: new Date().toISOString(), level, msg, ...this.base, ...fields };
    this.sink.write(JSON.stringify(record, errorReplacer) + '\n');
  }
}

function errorReplacer(_key: string, value: unknown): unknown {
  if (value instanceof Error) {
    const code = (value as { code?: unknown }).code;
    return code === undefined ? { message: value.message } : { message: value.message, code };
  }
  return value;
}

/** A logger that drops everything; for library use and tests that do not inspect logs. */
export const silentLogger = new Logger('silent');

export const REDACTED = '[REDACTED]';

/**
 * Removes the query's values for keys that look like secrets, so a path is safe to log.
 * MLflow puts no credentials in query strings, but signed artifact URLs and user tooling might.
 */
export function safePathForLog(url: string): string {
  const q = url.indexOf('?');
  if (q === -1) return url;
  const params = url.slice(q + 1).split('&').map((pair) => {
    const eq = pair.indexOf('=');
    const key = eq === -1 ? pair : pair.slice(0, eq);
    return SECRET_QUERY_KEY.test(key) ? `${key}=${REDACTED}` : pair;
  });
  return `${url.slice(0, q)}?${params.join('&')}`;
}

const SECRET_QUERY_KEY = /token|key|secret|sig|signature|password|auth|credential|code/i;
