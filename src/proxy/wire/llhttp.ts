import type { Socket } from 'node:net';
import { lazyRequire } from '../../util/lazy-require.js';

/**
 * Node's own HTTP/1.1 parser (llhttp, in C++), the one node:http runs on. kvx parses both sides of every
 * exchange with it instead of going through node:http's server and undici's client: those cost about four
 * times the instructions per proxied request (see docs/design.md), while the parser itself,
 * and with it every strictness rule against request smuggling, stays Node's.
 *
 * `_http_common` is an internal module, so its shape is checked once at load: a Node release that changes
 * it fails at start with a clear message rather than mid-request.
 */
export interface NativeParser {
  initialize(type: number, resource: object, maxHeaderSize: number, lenient: number): void;
  execute(data: Buffer): number | ParserError;
  finish(): number | ParserError | undefined;
  consume(handle: object): void;
  unconsume(): void;
  /** A copy of the read being parsed; only inside kOnExecute on a consumed handle. */
  getCurrentBuffer(): Buffer;
  remove(): void;
  free(): void;
  close(): void;
  pause(): void;
  [callback: number]: unknown;
}

export interface ParserError extends Error {
  code: string;
  bytesParsed?: number;
}

interface HttpCommon {
  HTTPParser: (new () => NativeParser) & {
    REQUEST: number;
    RESPONSE: number;
    kOnMessageBegin: number;
    kOnHeaders: number;
    kOnHeadersComplete: number;
    kOnBody: number;
    kOnMessageComplete: number;
    kOnExecute: number;
    kLenientNone: number;
  };
  methods: readonly string[];
}

/** What a kOnHeadersComplete callback may return: go on, or expect no body (the answer to a HEAD). */
export const PARSE_BODY = 0;
export const SKIP_BODY = 1;

function loadHttpCommon(): HttpCommon {
  const common = lazyRequire('_http_common') as Partial<HttpCommon>;
  const parser = common.HTTPParser;
  if (
    typeof parser !== 'function' ||
    !Array.isArray(common.methods) ||
    typeof parser.kOnMessageBegin !== 'number' ||
    typeof parser.kOnHeadersComplete !== 'number' ||
    typeof parser.kOnBody !== 'number' ||
    typeof parser.kOnMessageComplete !== 'number' ||
    typeof parser.kOnExecute !== 'number' ||
    typeof parser.prototype.execute !== 'function' ||
    typeof parser.prototype.consume !== 'function' ||
    typeof parser.prototype.pause !== 'function' ||
    typeof parser.prototype.remove !== 'function' ||
    typeof parser.prototype.close !== 'function'
  ) {
    throw new Error(`this Node.js (${process.version}) has no usable HTTP parser binding; kvx-proxy needs Node.js 22.19 or later`);
  }
  return common as HttpCommon;
}

const common = loadHttpCommon();
export const HTTPParser = common.HTTPParser;

/**
 * Method names indexed by the number llhttp reports for them. `_http_common`'s `methods` is node's list of HTTP
 * methods without the gaps llhttp's enum has (RTSP methods sit between SOURCE and QUERY), so indexing it with
 * the enum turned QUERY into a missing entry; node:http itself uses an internal `allMethods` that is not
 * exported. llhttp is asked once, at load, which number it gives each name node lists.
 */
function methodTable(names: readonly string[]): string[] {
  const table: string[] = [];
  const parser = new HTTPParser();
  let reported: number;
  parser[HTTPParser.kOnHeadersComplete | 0] = (_major: number, _minor: number, _headers: unknown, method: number): number => {
    reported = method;
    return SKIP_BODY;
  };
  try {
    for (const name of names) {
      reported = -1;
      parser.initialize(HTTPParser.REQUEST, {}, 1024, HTTPParser.kLenientNone | 0);
      parser.execute(Buffer.from(`${name} ${name === 'CONNECT' ? 'host:1' : '/'} HTTP/1.1\r\n\r\n`, 'latin1'));
      if (reported >= 0) table[reported] = name;
    }
  } finally {
    (parser as unknown as { close(): void }).close();
  }
  if (table[1] !== 'GET' || table[3] !== 'POST') throw new Error(`this Node.js (${process.version}) reports HTTP methods in an unknown way; kvx-proxy needs Node.js 22.19 or later`);
  return table;
}

export const METHODS: readonly string[] = methodTable(common.methods);
export const kOnMessageBegin = HTTPParser.kOnMessageBegin | 0;
export const kOnHeaders = HTTPParser.kOnHeaders | 0;
export const kOnHeadersComplete = HTTPParser.kOnHeadersComplete | 0;
export const kOnBody = HTTPParser.kOnBody | 0;
export const kOnMessageComplete = HTTPParser.kOnMessageComplete | 0;
export const kOnExecute = HTTPParser.kOnExecute | 0;

/** The kOnHeadersComplete callback; `headers` and `url` are undefined when they came in kOnHeaders batches. */
export type HeadersComplete = (
  versionMajor: number,
  versionMinor: number,
  headers: string[] | undefined,
  method: number,
  url: string | undefined,
  statusCode: number,
  statusMessage: string,
  upgrade: boolean,
  shouldKeepAlive: boolean,
) => number;

/** A parser of its own, not from the pool (for checks at load). */
export function newParser(type: 'request' | 'response', maxHeaderSize: number): NativeParser {
  const parser = new HTTPParser();
  resetParser(parser, type, maxHeaderSize);
  return parser;
}

/** Makes a parser new again: its state, including a pause, is dropped; its callbacks stay. */
export function resetParser(parser: NativeParser, type: 'request' | 'response', maxHeaderSize: number): void {
  parser.initialize(type === 'request' ? HTTPParser.REQUEST : HTTPParser.RESPONSE, {}, maxHeaderSize, HTTPParser.kLenientNone | 0);
}

/**
 * What a kOnHeadersComplete callback returns to stop the parse right after the headers (llhttp's HPE_PAUSED):
 * `execute` (or kOnExecute) then reports an error with that code whose `bytesParsed` is where the body
 * starts. Undefined if this Node's parser does not behave so, checked once at load with a canned answer; the
 * caller then leaves bodies to llhttp.
 */
export const PAUSE_AFTER_HEADERS: number | undefined = (() => {
  const HPE_PAUSED = 21;
  const head = 'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n';
  const parser = newParser('response', 1024);
  let bodies = 0;
  parser[HTTPParser.kOnHeadersComplete | 0] = () => HPE_PAUSED;
  parser[HTTPParser.kOnBody | 0] = () => void bodies++;
  try {
    const result = parser.execute(Buffer.from(`${head}5\r\nhello\r\n0\r\n\r\n`, 'latin1'));
    const paused = typeof result === 'object' && result.code === 'HPE_PAUSED' && result.bytesParsed === head.length && bodies === 0;
    return paused ? HPE_PAUSED : undefined;
  } catch {
    return undefined;
  } finally {
    parser.close();
  }
})();

const CALLBACK_SLOTS = [kOnMessageBegin, kOnHeaders, kOnHeadersComplete, kOnBody, kOnMessageComplete, kOnExecute];

/**
 * Native parsers of closed and idle connections, kept for new ones as node:http keeps its FreeList: a parser
 * costs about 6.7 KB of native memory and its allocation and set-up are a part of every new connection's cost.
 * Bounded, so that thousands of connections falling idle at once do not leave thousands of parsers behind.
 */
const POOL_MAX = 128;
const pooled: NativeParser[] = [];

/** A parser ready to parse from the start: from the pool if one is there. */
export function acquireParser(type: 'request' | 'response', maxHeaderSize: number): NativeParser {
  const parser = pooled.pop() ?? new HTTPParser();
  resetParser(parser, type, maxHeaderSize);
  return parser;
}

/**
 * Returns a parser nothing will use again to the pool, or deletes it when the pool is full. A native parser is
 * a strong handle: until it is freed, it keeps the closures in its callback slots alive, and through them the
 * whole connection with its socket, requests and timers; the slots are emptied here. Only for a parser no
 * native call is running in (a timer, another socket's read): see `freeParser` otherwise.
 */
export function recycleParser(parser: NativeParser): void {
  for (const slot of CALLBACK_SLOTS) parser[slot] = null;
  parser.remove();
  if (pooled.length < POOL_MAX) {
    parser.free();
    pooled.push(parser);
  } else parser.close();
}

/**
 * Frees the native parser of a connection that has closed, as node:http's freeParser does. Its slots are
 * emptied at once; it goes back to the pool on a later turn, as node:http deletes it: a native read callback
 * still on the stack touches the parser after it called into JavaScript.
 */
export function freeParser(parser: NativeParser): void {
  for (const slot of CALLBACK_SLOTS) parser[slot] = null;
  setImmediate(recycleParser, parser);
}

/**
 * Headers arrive in batches of 32 pairs through kOnHeaders when there are many; kOnHeadersComplete then
 * gets `undefined` and the batches must be joined, as node:http does.
 */
export class HeaderAccumulator {
  headers: string[] = [];
  url = '';

  add(headers: string[], url: string): void {
    for (let i = 0; i < headers.length; i++) this.headers.push(headers[i]!);
    this.url += url;
  }

  take(headers: string[] | undefined, url: string | undefined): [string[], string] {
    const h = headers ?? this.headers;
    const u = url ?? this.url;
    if (headers === undefined) this.headers = [];
    if (url === undefined) this.url = '';
    return [h, u];
  }

  /**
   * Called when a message completes. Trailers arrive through kOnHeaders after the body, together with the
   * message's target (llhttp keeps it until the next message begins); left here they would join the next
   * message whose headers come in batches. kvx forwards no trailers on either side: they are dropped, as
   * node:http's own parser state is reset at message completion.
   */
  reset(): void {
    if (this.headers.length !== 0) this.headers = [];
    this.url = '';
  }
}

interface StreamHandle {
  readStart(): number;
  readStop(): number;
  _consumed?: boolean;
}

/**
 * Reading for a parser: on a plain TCP socket the parser consumes the socket's handle, as node:http's server
 * does, so reads land in one reused native buffer and go through llhttp without a JavaScript Buffer or a
 * 'data' event each. A fresh 64 KiB buffer per read is what made V8 run a full mark-compact every 200 ms
 * ("external memory pressure") under a 25 KB POST load, and it was most of the tail latency. TLS sockets are
 * read the ordinary way.
 */
export class ParserReader {
  private readonly handle: StreamHandle | undefined;
  /** The parser reads the handle now (not detached). */
  private consumed = false;
  private reading = true;
  private released = false;

  constructor(
    private readonly socket: Socket,
    /** Undefined while put aside (see `putAside`). */
    private parser: NativeParser | undefined,
    private readonly onExecute: (result: number | ParserError) => void,
    onData: (data: Buffer) => void,
  ) {
    const handle = (socket as unknown as { _handle?: StreamHandle & { isStreamBase?: boolean } })._handle;
    // A TLSSocket's handle carries ciphertext. `encrypted` is the mark its constructor sets; testing it rather
    // than instanceof keeps the tls module unloaded for plain-http upstreams.
    if ((socket as Socket & { encrypted?: boolean }).encrypted !== true && handle?.isStreamBase === true && handle._consumed !== true) {
      parser![kOnExecute] = onExecute;
      this.handle = handle;
      this.attach();
    }
    // Consumed, the socket still gets EOF and errors, and must flow for 'end' to be emitted; reads reach
    // `onData` only when the parser does not consume the handle (TLS, or detached).
    socket.on('data', onData);
  }

  /** From here on reads arrive at `onData` as Buffers instead of going through the parser (a body read raw). */
  detach(): void {
    if (!this.consumed) return;
    this.consumed = false;
    this.handle!._consumed = false;
    this.parser!.unconsume();
  }

  /** Hands the reads back to the parser, as at the start. */
  attach(): void {
    const handle = this.handle;
    const parser = this.parser;
    if (handle === undefined || parser === undefined || this.consumed || this.released || this.socket.destroyed) return;
    this.consumed = true;
    handle._consumed = true;
    parser.consume(handle);
  }

  /**
   * An idle connection gives its parser back to the pool; its next read arrives at `onData`, which takes one
   * again with `takeBack`. Only from a timer, never from within a parse.
   */
  putAside(): void {
    const parser = this.parser;
    if (parser === undefined || this.released) return;
    this.detach();
    this.parser = undefined;
    recycleParser(parser);
  }

  /** A parser again for a connection whose parser was put aside; it reads the handle from the next read on. */
  takeBack(parser: NativeParser): void {
    this.parser = parser;
    if (this.handle !== undefined) {
      parser[kOnExecute] = this.onExecute;
      this.attach();
    }
  }

  set(on: boolean): void {
    if (on === this.reading) return;
    this.reading = on;
    if (this.socket.destroyed) return;
    if (this.handle !== undefined) {
      if (on) this.handle.readStart();
      else this.handle.readStop();
    } else if (on) this.socket.resume();
    else this.socket.pause();
  }

  /** Once the socket has closed: hands the handle back and frees the parser (see freeParser). */
  release(): void {
    if (this.released) return;
    this.released = true;
    const parser = this.parser;
    if (parser === undefined) return;
    if (this.consumed) {
      try {
        parser.unconsume();
      } catch {
        // The handle is already closed.
      }
    }
    freeParser(parser);
  }
}

