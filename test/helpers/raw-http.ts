/**
 * The tests' one raw HTTP/1.1 client. It writes exactly the bytes a case gives it (pipelined, split, malformed)
 * over a real loopback socket, and reads the answers strictly, one after another: the status line, the header
 * lines with their case and repeats as sent, and the body framed by Content-Length, chunked (extensions and
 * trailers), the close of the connection, or nothing at all (1xx, 204, 304, answers to HEAD). Bytes that are not
 * HTTP fail at once with what arrived, rather than leave a wait to time out.
 *
 * Two ways in: `RawConnection` for a conversation (write, read an answer, write again), and `exchange` for a
 * one-shot (write everything, collect what comes until the server closes or a wait ends, parse afterwards).
 */
import net from 'node:net';
import { performance } from 'node:perf_hooks';

export type Framing = 'none' | 'length' | 'chunked' | 'close';
/** A header or trailer line: the name as received, the value without the whitespace around it. */
export type FieldLine = [name: string, value: string];

/** The bytes received are not a well-formed HTTP/1.1 response stream. */
export class RawHttpError extends Error {
  readonly code = 'RAW_HTTP_MALFORMED';
}

const EMPTY = Buffer.alloc(0);
// RFC 9110 §5.6.2 (token), §5.5 (field values: no control characters but HTAB), RFC 9112 §4 (status line; the
// reason may be missing altogether, as llhttp and browsers accept), §7.1 (chunk size, extensions).
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const FIELD_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;
const STATUS_LINE = /^HTTP\/(1\.[01]) ([1-5]\d\d)(?: ([\t\x20-\x7e\x80-\xff]*))?$/;
const CHUNK_SIZE = /^([0-9a-fA-F]{1,13})[\t ]*(?:;[\t\x20-\x7e\x80-\xff]*)?$/;
/** A head or chunk-size line longer than this without its CRLF is not going to end well. */
const MAX_LINE = 1024 * 1024;

const excerpt = (bytes: Buffer | string) => JSON.stringify((typeof bytes === 'string' ? bytes : bytes.toString('latin1', 0, 300)).slice(0, 300));
const malformed = (what: string, bytes: Buffer | string) => new RawHttpError(`${what}: ${excerpt(bytes)}`);

function fieldLine(line: string, kind: 'header' | 'trailer'): FieldLine {
  const colon = line.indexOf(':');
  const name = colon > 0 ? line.slice(0, colon) : '';
  // A space before the colon or a folded line (one starting with whitespace) fails here too (RFC 9112 §5.1, §5.2).
  if (!TOKEN.test(name)) throw malformed(`${kind} line is not "name: value" with a token name`, line);
  const value = line.slice(colon + 1).replace(/^[\t ]+|[\t ]+$/g, '');
  if (!FIELD_VALUE.test(value)) throw malformed(`${kind} ${name} has a control character in its value`, line);
  return [name, value];
}

/** Values of a field, its name compared case-insensitively. */
function valuesOf(fields: readonly FieldLine[], name: string): string[] {
  const wanted = name.toLowerCase();
  return fields.filter(([n]) => n.toLowerCase() === wanted).map(([, v]) => v);
}

/** One response as it came off the wire. */
export class RawResponse {
  constructor(
    readonly version: '1.0' | '1.1',
    readonly status: number,
    /** The reason phrase ('' when the status line has none). */
    readonly reason: string,
    /** Status line and header lines as received, without the blank line that ends them. */
    readonly head: string,
    /** Header lines in order, repeats kept. */
    readonly headers: readonly FieldLine[],
    readonly framing: Framing,
    readonly body: Buffer,
    /** Data chunks of a chunked body (the last, empty chunk not counted). */
    readonly frames: number,
    readonly trailers: readonly FieldLine[],
    private readonly wire: readonly Buffer[],
  ) {}

  /** The body as UTF-8 text. */
  get text(): string {
    return this.body.toString('utf8');
  }

  /** Every byte of this response as it arrived: head, framing and body. */
  get raw(): Buffer {
    return Buffer.concat(this.wire);
  }

  /** All values of a header, in order, the name compared case-insensitively. */
  header(name: string): string[] {
    return valuesOf(this.headers, name);
  }

  /** The value of a header that may appear once; undefined when absent, an error when repeated. */
  value(name: string): string | undefined {
    const values = this.header(name);
    if (values.length > 1) throw new RawHttpError(`header ${name} appears ${values.length} times in ${excerpt(this.head)}`);
    return values[0];
  }
}

/** A chunked body decoded incrementally (RFC 9112 §7.1): fed bytes as they come, done after the trailer section. */
class ChunkedBody {
  readonly parts: Buffer[] = [];
  readonly trailers: FieldLine[] = [];
  frames = 0;
  done = false;
  private phase: 'size' | 'data' | 'crlf' | 'trailers' = 'size';
  private remaining = 0;

  /** Uses what it can of `buf` and returns how many bytes that was; the rest waits for more bytes. */
  consume(buf: Buffer): number {
    let pos = 0;
    while (!this.done) {
      if (this.phase === 'data') {
        const n = Math.min(this.remaining, buf.length - pos);
        this.parts.push(buf.subarray(pos, pos + n));
        pos += n;
        this.remaining -= n;
        if (this.remaining > 0) return pos;
        this.phase = 'crlf';
      } else if (this.phase === 'crlf') {
        if (buf.length - pos < 2) return pos;
        if (buf[pos] !== 13 || buf[pos + 1] !== 10) throw malformed('chunk data is not followed by CRLF', buf.subarray(pos));
        pos += 2;
        this.phase = 'size';
      } else {
        const lineEnd = buf.indexOf('\r\n', pos);
        if (lineEnd === -1) {
          if (buf.length - pos > MAX_LINE) throw malformed('chunk size or trailer line without an end', buf.subarray(pos));
          return pos;
        }
        const line = buf.toString('latin1', pos, lineEnd);
        pos = lineEnd + 2;
        if (this.phase === 'size') {
          const m = CHUNK_SIZE.exec(line);
          if (!m) throw malformed('bad chunk size line', line);
          this.remaining = parseInt(m[1]!, 16);
          if (this.remaining === 0) this.phase = 'trailers';
          else {
            this.frames++;
            this.phase = 'data';
          }
        } else if (line === '') this.done = true;
        else this.trailers.push(fieldLine(line, 'trailer'));
      }
    }
    return pos;
  }
}

/**
 * Decodes a whole chunked body that starts at `start` of `buf` (for a test's own server reading a chunked
 * request); undefined while incomplete, a RawHttpError when malformed.
 */
export function decodeChunked(buf: Buffer, start = 0): { body: Buffer; frames: number; trailers: FieldLine[]; end: number } | undefined {
  const chunked = new ChunkedBody();
  const used = chunked.consume(buf.subarray(start));
  return chunked.done ? { body: Buffer.concat(chunked.parts), frames: chunked.frames, trailers: chunked.trailers, end: start + used } : undefined;
}

/** The response being read: its head is in, its body may not be. */
interface Partial {
  version: '1.0' | '1.1';
  status: number;
  reason: string;
  head: string;
  headers: FieldLine[];
  framing: Framing;
  /** Body bytes still to come ('length'). */
  remaining: number;
  body: Buffer[];
  chunked: ChunkedBody | undefined;
  wire: Buffer[];
}

function startResponse(headBytes: Buffer, method: string): Partial {
  const head = headBytes.toString('latin1');
  const [statusLine = '', ...lines] = head.split('\r\n');
  const m = STATUS_LINE.exec(statusLine);
  if (!m) throw malformed('not a status line', head);
  for (const line of lines) if (/[\r\n]/.test(line)) throw malformed('a bare CR or LF in the head', head);
  const headers = lines.map((line) => fieldLine(line, 'header'));
  const status = Number(m[2]);
  const partial: Partial = { version: m[1] as '1.0' | '1.1', status, reason: m[3] ?? '', head, headers, framing: 'none', remaining: 0, body: [], chunked: undefined, wire: [] };
  // RFC 9112 §6.3: these never have a body, whatever their headers say.
  if (status < 200 || status === 204 || status === 304 || method === 'HEAD') return partial;
  const te = valuesOf(headers, 'transfer-encoding');
  const cl = valuesOf(headers, 'content-length');
  if (te.length > 0) {
    if (cl.length > 0) throw malformed('response has both Transfer-Encoding and Content-Length', head);
    if (!/(^|,)[\t ]*chunked[\t ]*$/i.test(te.join(','))) throw malformed('Transfer-Encoding whose last coding is not chunked', head);
    partial.framing = 'chunked';
    partial.chunked = new ChunkedBody();
  } else if (cl.length > 0) {
    if (cl.length > 1 || !/^\d{1,15}$/.test(cl[0]!) || Number(cl[0]) > Number.MAX_SAFE_INTEGER) throw malformed('bad Content-Length', head);
    partial.framing = 'length';
    partial.remaining = Number(cl[0]);
  } else partial.framing = 'close';
  return partial;
}

/**
 * Reads responses off a byte stream, one call per response, keeping its place between calls so a large body
 * is not parsed again as more of it arrives. The method of the request a response answers decides only whether
 * it has a body (HEAD), so each call names it.
 */
export class ResponseParser {
  private buf = EMPTY;
  private more: Buffer[] = [];
  private current: Partial | undefined;
  private ended = false;
  private failure: RawHttpError | undefined;

  push(chunk: Buffer): void {
    if (chunk.length > 0) this.more.push(chunk);
  }

  /** The stream ended: a close-delimited body is complete, anything else unfinished stays so. */
  end(): void {
    this.ended = true;
  }

  /** No response begun and no byte waiting. */
  get idle(): boolean {
    return this.current === undefined && this.buf.length === 0 && this.more.length === 0;
  }

  /** The bytes not yet handed out as a response (those of one begun included). */
  unconsumed(): Buffer {
    return Buffer.concat([...(this.current?.wire ?? []), this.buf, ...this.more]);
  }

  /** The next whole response, or undefined until more bytes come; throws RawHttpError (then always) on bad bytes. */
  next(method = 'GET'): RawResponse | undefined {
    if (this.failure) throw this.failure;
    try {
      return this.step(method);
    } catch (err) {
      if (err instanceof RawHttpError) this.failure = err;
      throw err;
    }
  }

  private step(method: string): RawResponse | undefined {
    if (this.more.length > 0) {
      this.buf = Buffer.concat([this.buf, ...this.more]);
      this.more = [];
    }
    if (this.current === undefined) {
      const end = this.buf.indexOf('\r\n\r\n');
      if (end === -1) {
        // Stray bytes (a body where none belongs, say) fail now instead of waiting for a head that never comes.
        if (!'HTTP/1.'.startsWith(this.buf.toString('latin1', 0, 7))) throw malformed('not a status line', this.buf);
        if (this.buf.length > MAX_LINE) throw malformed('a response head without an end', this.buf);
        return undefined;
      }
      this.current = startResponse(this.buf.subarray(0, end), method);
      this.current.wire.push(this.buf.subarray(0, end + 4));
      this.buf = this.buf.subarray(end + 4);
    }
    const r = this.current;
    if (r.framing === 'length' || r.framing === 'close') {
      const n = r.framing === 'close' ? this.buf.length : Math.min(r.remaining, this.buf.length);
      if (n > 0) {
        const piece = this.buf.subarray(0, n);
        r.body.push(piece);
        r.wire.push(piece);
        this.buf = this.buf.subarray(n);
        r.remaining -= n;
      }
      if (r.framing === 'length' ? r.remaining > 0 : !this.ended) return undefined;
    } else if (r.chunked) {
      const used = r.chunked.consume(this.buf);
      r.wire.push(this.buf.subarray(0, used));
      this.buf = this.buf.subarray(used);
      if (!r.chunked.done) return undefined;
    }
    this.current = undefined;
    const body = r.chunked ? r.chunked.parts : r.body;
    return new RawResponse(r.version, r.status, r.reason, r.head, r.headers, r.framing, Buffer.concat(body), r.chunked?.frames ?? 0, r.chunked?.trailers ?? [], r.wire);
  }
}

/**
 * Every response in a complete byte stream (the server closed after them), strictly; `methods[i]` is the method
 * of the request the i-th answers (GET where not given). Throws RawHttpError on bad bytes or an unfinished one.
 */
export function parseResponses(bytes: Buffer | string, methods: readonly string[] = []): RawResponse[] {
  const parser = new ResponseParser();
  parser.push(typeof bytes === 'string' ? Buffer.from(bytes, 'latin1') : bytes);
  parser.end();
  const out: RawResponse[] = [];
  while (!parser.idle) {
    const r = parser.next(methods[out.length] ?? 'GET');
    if (!r) throw malformed(`the bytes end inside response ${out.length + 1}`, parser.unconsumed());
    out.push(r);
  }
  return out;
}

/** How a connection ended. */
export interface CloseInfo {
  /** The server ended it (FIN, reset, or a refusal), rather than this side. */
  byServer: boolean;
  /** The server reset the connection (ECONNRESET) rather than closing it in order. */
  reset: boolean;
  /** The socket's error code, if any. */
  error: string | undefined;
  /** Milliseconds from the connection's opening to its end (the server's FIN or error, else the close). */
  afterMs: number;
}

export interface ConnectionOptions {
  /** The longest a read or a wait for the close may take before it fails with what arrived (default 5000 ms). */
  timeoutMs?: number;
  /** Keep this side open after the server's FIN (node ends it by default). */
  allowHalfOpen?: boolean;
}

/** One client connection to a loopback port: writes bytes as given, reads answers strictly, in order. */
export class RawConnection {
  /** The server ended or reset the connection, or it closed. */
  ended = false;
  /** How it ended, once the socket has closed. */
  closeInfo: CloseInfo | undefined;
  /** Resolves when the socket has closed, whoever closed it. */
  readonly closed: Promise<CloseInfo>;
  private readonly parser = new ResponseParser();
  private readonly chunks: Buffer[] = [];
  private receivedBytes = 0;
  private error: string | undefined;
  private serverEndedAt: number | undefined;
  private readonly openedAt = performance.now();
  private readonly waiters = new Set<() => void>();
  private readonly timeoutMs: number;

  private constructor(
    readonly socket: net.Socket,
    options: ConnectionOptions,
  ) {
    this.timeoutMs = options.timeoutMs ?? 5000;
    socket.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.receivedBytes += d.length;
      this.parser.push(d);
      this.notify();
    });
    const serverEnded = () => {
      this.serverEndedAt ??= performance.now();
      this.gone();
    };
    socket.on('end', serverEnded);
    socket.on('error', (err: NodeJS.ErrnoException) => {
      this.error = err.code ?? err.message;
      serverEnded();
    });
    this.closed = new Promise((resolve) => {
      socket.on('close', () => {
        const byServer = this.serverEndedAt !== undefined;
        this.closeInfo = { byServer, reset: this.error === 'ECONNRESET', error: this.error, afterMs: (this.serverEndedAt ?? performance.now()) - this.openedAt };
        this.gone();
        resolve(this.closeInfo);
      });
    });
  }

  /** Connects to 127.0.0.1:`port`; rejects when the connection cannot be made. */
  static open(port: number, options: ConnectionOptions = {}): Promise<RawConnection> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ port, host: '127.0.0.1', allowHalfOpen: options.allowHalfOpen ?? false });
      const connection = new RawConnection(socket, options);
      const refused = (err: Error) => reject(err);
      socket.once('error', refused);
      socket.once('connect', () => {
        socket.off('error', refused);
        resolve(connection);
      });
    });
  }

  write(data: string | Buffer): boolean {
    return this.socket.write(data);
  }

  /**
   * Writes `total` bytes made of `chunk` repeated, as fast as the server reads them; resolves with the bytes
   * written once all are, or once the connection is gone.
   */
  async writeRepeated(total: number, chunk: Buffer): Promise<number> {
    let sent = 0;
    while (sent < total && this.socket.writable) {
      const piece = total - sent >= chunk.length ? chunk : chunk.subarray(0, total - sent);
      sent += piece.length;
      if (!this.socket.write(piece)) {
        await new Promise<void>((resolve) => {
          const go = () => {
            this.socket.off('drain', go).off('close', go);
            resolve();
          };
          this.socket.on('drain', go).on('close', go);
        });
      }
    }
    return sent;
  }

  /** Half-closes: the server sees EOF. */
  end(): void {
    this.socket.end();
  }

  destroy(): void {
    this.socket.destroy();
  }

  /** Bytes received so far. */
  get received(): number {
    return this.receivedBytes;
  }

  /** Every byte received so far. */
  get data(): Buffer {
    return Buffer.concat(this.chunks);
  }

  /** Every byte received so far, as latin1 text. */
  get text(): string {
    return this.data.toString('latin1');
  }

  /** Bytes received and not yet read as a response. */
  get pending(): string {
    return this.parser.unconsumed().toString('latin1');
  }

  /** Waits until `bytes` bytes have arrived in all: true, or false when the connection ended first. */
  receivedAtLeast(bytes: number, timeoutMs = this.timeoutMs): Promise<boolean> {
    return this.until(`${bytes} bytes`, timeoutMs, () => (this.receivedBytes >= bytes ? true : this.ended ? false : undefined));
  }

  /** The next response on the connection, interim (1xx) ones included; `method` is its request's. */
  readResponse(method = 'GET', timeoutMs = this.timeoutMs): Promise<RawResponse> {
    return this.until(`response to ${method}`, timeoutMs, () => this.parser.next(method));
  }

  /** The next final response, with the interim ones that came before it. */
  async readFinal(method = 'GET', timeoutMs = this.timeoutMs): Promise<{ interim: RawResponse[]; final: RawResponse }> {
    const interim: RawResponse[] = [];
    for (;;) {
      const r = await this.readResponse(method, timeoutMs);
      if (r.status >= 200) return { interim, final: r };
      interim.push(r);
    }
  }

  /** Waits for the server to end the connection; returns whatever arrived and was not read as a response. */
  closedByServer(timeoutMs = this.timeoutMs): Promise<string> {
    return this.until('server close', timeoutMs, () => (this.ended ? this.pending : undefined));
  }

  private gone(): void {
    if (!this.ended) this.parser.end();
    this.ended = true;
    this.notify();
  }

  private notify(): void {
    for (const w of [...this.waiters]) w();
  }

  private until<T>(what: string, timeoutMs: number, ready: () => T | undefined): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const finish = (err: Error | undefined, value?: T) => {
        clearTimeout(timer);
        this.waiters.delete(check);
        if (err) reject(err);
        else resolve(value as T);
      };
      const check = () => {
        let value: T | undefined;
        try {
          value = ready();
        } catch (err) {
          return finish(err as Error);
        }
        if (value !== undefined) return finish(undefined, value);
        if (this.ended) finish(new Error(`${what}: connection closed first${this.error ? ` (${this.error})` : ''}; unconsumed bytes ${excerpt(this.pending)}`));
      };
      const timer = setTimeout(() => finish(new Error(`${what}: nothing within ${timeoutMs} ms; unconsumed bytes ${excerpt(this.pending)}`)), timeoutMs);
      this.waiters.add(check);
      check();
    });
  }
}

export interface ExchangeOptions {
  /** Write the pieces with this many ms between them (slowloris, split bodies). */
  gapMs?: number;
  /** Stop after this long even if the server keeps the connection open (default 5000 ms). */
  waitMs?: number;
  /** Stop once the server has been quiet this long. */
  idleMs?: number;
  /** Half-close after the last piece (the server sees EOF). */
  endAfterWrite?: boolean;
  /** The methods of the requests the responses answer, in order (GET where not given): HEAD's has no body. */
  methods?: readonly string[];
}

/** What one exchange got back. */
export class Exchanged {
  private parsed: RawResponse[] | undefined;

  constructor(
    /** Every byte the server wrote. */
    readonly data: Buffer,
    /** The server closed or reset the connection before the wait ended. */
    readonly closedByServer: boolean,
    /** The socket's error code (ECONNRESET for a reset), if any. */
    readonly error: string | undefined,
    /** Milliseconds from the connection's opening to the server's close, if it closed. */
    readonly closedAfterMs: number | undefined,
    private readonly methods: readonly string[],
  ) {}

  /** The bytes as latin1 text. */
  get text(): string {
    return this.data.toString('latin1');
  }

  /** The server reset the connection. */
  get reset(): boolean {
    return this.error === 'ECONNRESET';
  }

  /** The status codes of the responses, in order (interim ones included). */
  get statuses(): number[] {
    return this.responses.map((r) => r.status);
  }

  /** The responses, in order; throws RawHttpError if the bytes are not whole, well-formed responses. */
  get responses(): RawResponse[] {
    this.parsed ??= parseResponses(this.data, this.methods);
    return this.parsed;
  }
}

/** Writes `pieces` to 127.0.0.1:`port` and collects what comes back until the server closes or a wait ends. */
export async function exchange(port: number, pieces: string | Buffer | readonly (string | Buffer)[], options: ExchangeOptions = {}): Promise<Exchanged> {
  const parts = typeof pieces === 'string' || Buffer.isBuffer(pieces) ? [pieces] : pieces;
  const c = await RawConnection.open(port);
  let waitTimer: NodeJS.Timeout | undefined;
  let idleTimer: NodeJS.Timeout | undefined;
  let gapTimer: NodeJS.Timeout | undefined;
  const waited = new Promise<void>((resolve) => {
    waitTimer = setTimeout(resolve, options.waitMs ?? 5000);
    if (options.idleMs !== undefined) {
      const idleMs = options.idleMs;
      const arm = () => {
        clearTimeout(idleTimer);
        idleTimer = setTimeout(resolve, idleMs);
      };
      c.socket.on('data', arm);
      arm();
    }
  });
  let i = 0;
  const writeNext = () => {
    if (!c.socket.writable) return;
    if (i >= parts.length) {
      if (options.endAfterWrite) c.end();
      return;
    }
    c.write(parts[i++]!);
    if (options.gapMs) gapTimer = setTimeout(writeNext, options.gapMs);
    else writeNext();
  };
  writeNext();
  await Promise.race([c.closed, waited]);
  clearTimeout(waitTimer);
  clearTimeout(idleTimer);
  clearTimeout(gapTimer);
  // Whether the server had ended it when the wait ended; what follows is this side letting go.
  const byServer = c.ended;
  c.destroy();
  const end = await c.closed;
  return new Exchanged(c.data, byServer, end.error, byServer ? end.afterMs : undefined, options.methods ?? []);
}
