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

  /** The base fields, serialised once: `,"k":v,...` (empty without base fields). */
  private readonly baseJson: string;
  /** The last message infoSerialized wrote, and its JSON. */
  private serializedMsg = '';
  private serializedMsgJson = '""';

  constructor(
    readonly level: LogLevel = 'info',
    private readonly sink: LogSink = process.stdout,
    private readonly base: LogFields = {},
  ) {
    this.rank = LEVEL_RANK[level];
    this.baseJson = appendFields('', base);
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

  /**
   * For the proxy's per-request line: `fieldsJson` is already serialised as `,"key":value,...`. The caller
   * owns escaping, so only pass values it controls or has run through JSON.stringify.
   */
  infoSerialized(msg: string, fieldsJson: string): void {
    if (this.rank > 20) return;
    // The proxy calls this once per request, always with the same message.
    if (msg !== this.serializedMsg) {
      this.serializedMsg = msg;
      this.serializedMsgJson = JSON.stringify(msg);
    }
    this.sink.write(`{"time":"${isoNow()}","level":"info","msg":${this.serializedMsgJson}${this.baseJson}${fieldsJson}}\n`);
  }

  warn(msg: string, fields?: LogFields): void {
    if (this.rank <= 30) this.emit('warn', msg, fields);
  }

  error(msg: string, fields?: LogFields): void {
    if (this.rank <= 40) this.emit('error', msg, fields);
  }

  /**
   * Builds the line as a string rather than merging objects and stringifying them with a replacer: the proxy
   * writes one line per request, and the merge-and-replace form cost as many instructions as forwarding a
   * small request (measured with callgrind).
   */
  private emit(level: LogLevel, msg: string, fields?: LogFields): void {
    let line = `{"time":"${isoNow()}","level":"${level}","msg":${JSON.stringify(msg)}`;
    if (fields === undefined) line += this.baseJson;
    else if (this.baseJson === '') line = appendFields(line, fields);
    else line = appendFields(line, { ...this.base, ...fields });
    this.sink.write(line + '}\n');
  }
}

let lastMs = 0;
let lastIso = '';
function isoNow(): string {
  const now = Date.now();
  if (now !== lastMs) {
    lastMs = now;
    lastIso = new Date(now).toISOString();
  }
  return lastIso;
}

function appendFields(line: string, fields: LogFields): string {
  for (const key in fields) {
    const value = fields[key];
    if (value === undefined || typeof value === 'function' || typeof value === 'symbol') continue;
    line += `,${JSON.stringify(key)}:${toJson(value)}`;
  }
  return line;
}

function toJson(value: unknown): string {
  switch (typeof value) {
    case 'string':
      return JSON.stringify(value);
    case 'number':
      return Number.isFinite(value) ? String(value) : 'null';
    case 'boolean':
      return value ? 'true' : 'false';
    case 'bigint':
      return `"${value}"`;
    default:
      return JSON.stringify(value, errorReplacer) ?? 'null';
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
  // Most MLflow queries name no secret-like key; only those are taken apart.
  if (q === -1 || !SECRET_QUERY_KEY.test(url.slice(q + 1))) return url;
  const params = url.slice(q + 1).split('&').map((pair) => {
    const eq = pair.indexOf('=');
    const key = eq === -1 ? pair : pair.slice(0, eq);
    return SECRET_QUERY_KEY.test(key) ? `${key}=${REDACTED}` : pair;
  });
  return `${url.slice(0, q)}?${params.join('&')}`;
}

const SECRET_QUERY_KEY = /token|key|secret|sig|signature|password|auth|credential|code/i;
