import type { LookupFunction, Socket } from 'node:net';
import type tls from 'node:tls';
import type { EgressProxy } from '../../config/egress.js';
import { dial } from '../../net/connect-tunnel.js';
import type { DialError, DialRoute, DialTarget } from '../../net/connect-tunnel.js';
import { Sweeper, coarseNow, sweepInterval, tick } from './clock.js';
import { BodyBatch, releaseNow, writeBodyChunk } from './body.js';
import { ChunkedDecoder, ChunkedError, isPlainChunked } from './chunked.js';
import {
  HeaderAccumulator,
  PARSE_BODY,
  PAUSE_AFTER_HEADERS,
  ParserReader,
  SKIP_BODY,
  kOnBody,
  kOnHeaders,
  kOnHeadersComplete,
  kOnMessageBegin,
  kOnMessageComplete,
  acquireParser,
  resetParser,
} from './llhttp.js';
import type { HeadersComplete, NativeParser, ParserError } from './llhttp.js';
import { ConnectionRegistry } from './connection-registry.js';
import type { Registered } from './connection-registry.js';
import { UpstreamError } from '../engine.js';
import type { OutgoingBody, ReuseMode, UpstreamExchange, UpstreamHandler } from '../engine.js';
import { isHeader } from '../header-names.js';

export { UpstreamError };
export type { ReuseMode };
export type ResponseHandler = UpstreamHandler;

/**
 * Keep-alive HTTP/1.1 connections to the one upstream, one exchange at a time per connection. Responses
 * are parsed by llhttp; a connection goes back to the pool only when its response ended cleanly, its
 * request was sent whole, and nothing followed the response (bytes past a response's end would otherwise
 * be read as the start of the next caller's answer).
 */
export interface UpstreamPoolOptions {
  origin: URL;
  maxConnections: number;
  connectTimeoutMs: number;
  /**
   * From the request fully sent to the response headers, plus the time it waited for a connection when all
   * maxConnections were busy: how long kvx waits on upstream for an answer, the client's own upload excluded.
   */
  headersTimeoutMs: number;
  /** Silence in the middle of a response body. */
  idleTimeoutMs: number;
  /** How long an unused connection is kept; shortened by the server's own Keep-Alive: timeout hint. */
  keepAliveTimeoutMs: number;
  tls: tls.ConnectionOptions | undefined;
  /** The egress proxy to tunnel through and the host aliases (see config/egress.ts); direct by default. */
  egress?: { proxy: EgressProxy | undefined; lookup: LookupFunction | undefined };
}

/** Response headers larger than this are a malformed answer. */
const MAX_RESPONSE_HEADER_BYTES = 64 * 1024;
/** Reuse a connection only this long before the server's announced keep-alive timeout. */
const KEEP_ALIVE_MARGIN_MS = 2_000;
/** A server that closes a connection this soon after answering on it is closing after its answers. */
const EARLY_CLOSE_MS = 1_000;
/** Early closes, with no reuse that worked in between, after which reuse is no longer trusted (see ReuseMode). */
const DISTRUST_AFTER_CLOSES = 3;

export type RequestBody = OutgoingBody;

export class UpstreamRequest implements UpstreamExchange {
  connection: UpstreamConnection | undefined;
  responseStarted = false;
  done = false;
  /** The whole request, body included, has been written. */
  sent = false;
  sentAt = 0;
  /** When it started waiting for a connection, and how long it waited: both count against the headers timeout. */
  queuedAt = 0;
  queuedMs = 0;
  private pending: Buffer[] | undefined;
  private bodyEnded = false;
  private drainWaiter: (() => void) | undefined;
  /** A buffered body has left the process: its memory may be freed once it will not be re-sent. */
  bodyFlushed = false;
  private readonly bodyWritten = (err?: Error | null): void => {
    if (!err) this.bodyFlushed = true;
  };

  constructor(
    private readonly pool: UpstreamPool,
    readonly handler: ResponseHandler,
    readonly head: string,
    readonly body: RequestBody,
    /** The answer to a HEAD has no body whatever its headers say. */
    readonly expectsNoBody: boolean,
    readonly reuse: ReuseMode,
  ) {}

  /** @internal the pool assigned a connection */
  attach(connection: UpstreamConnection): void {
    this.connection = connection;
    const socket = connection.socket;
    const body = this.body;
    if (body.kind === 'buffer') {
      // Both as buffers: node copies every chunk of a writev into one block when any of them is a string.
      socket.cork();
      socket.write(Buffer.from(this.head, 'latin1'));
      socket.write(body.data, this.bodyWritten);
      socket.uncork();
      this.markSent();
    } else if (body.kind === 'none') {
      socket.write(this.head, 'latin1');
      this.markSent();
    } else {
      socket.write(this.head, 'latin1');
      const pending = this.pending;
      this.pending = undefined;
      if (pending) for (const chunk of pending) this.writeChunk(socket, chunk);
      if (this.bodyEnded) this.finishBody(socket);
      const waiter = this.drainWaiter;
      this.drainWaiter = undefined;
      if (waiter) {
        if (socket.writableNeedDrain) socket.once('drain', waiter);
        else waiter();
      }
    }
  }

  private markSent(): void {
    this.sent = true;
    this.sentAt = tick();
  }

  /** Streams body bytes; false means wait for `onDrain`. */
  write(chunk: Buffer): boolean {
    if (this.done) return true;
    const connection = this.connection;
    if (connection === undefined) {
      (this.pending ??= []).push(chunk);
      return false;
    }
    return this.writeChunk(connection.socket, chunk);
  }

  private writeChunk(socket: Socket, chunk: Buffer): boolean {
    return writeBodyChunk(socket, chunk, this.body.kind === 'stream' && this.body.chunked);
  }

  onDrain(callback: () => void): void {
    const connection = this.connection;
    if (connection === undefined) this.drainWaiter = callback;
    else connection.socket.once('drain', callback);
  }

  /** The streamed body is complete. */
  end(): void {
    this.bodyEnded = true;
    const connection = this.connection;
    if (connection !== undefined && !this.done) this.finishBody(connection.socket);
  }

  private finishBody(socket: Socket): void {
    if (this.body.kind === 'stream' && this.body.chunked) socket.write('0\r\n\r\n', 'latin1');
    this.markSent();
  }

  /** Response backpressure: stop reading from upstream until `resume`. */
  pause(): void {
    if (this.connection && !this.done) {
      this.connection.paused = true;
      this.connection.reader.set(false);
    }
  }

  resume(): void {
    if (this.connection && !this.done) {
      this.connection.paused = false;
      this.connection.lastActivity = coarseNow();
      this.connection.reader.set(true);
    }
  }

  /** Gives up on the exchange (the client went away, or the answer is not wanted): the connection is closed. */
  abort(): void {
    if (this.done) return;
    this.done = true;
    if (this.connection) this.connection.socket.destroy();
    else this.pool.dequeue(this);
  }

  /** @internal */
  fail(err: UpstreamError): void {
    if (this.done) return;
    this.done = true;
    this.handler.onResponseError(err);
  }
}

/** Exported for the tests that prove closed connections are collected. */
export class UpstreamConnection implements Registered {
  registryIndex = -1;
  readonly parser: NativeParser;
  request: UpstreamRequest | undefined;
  idleSince = 0;
  lastActivity = 0;
  /** Exchanges completed on this connection: above 0, the current request went on a reused connection. */
  exchanges = 0;
  keepAliveMs: number;
  paused = false;
  private keepAlive = true;
  private completed = false;
  /** Bytes arrived that belong to no request: never reuse. */
  private poisoned = false;
  private interim = false;
  private socketError: NodeJS.ErrnoException | undefined;
  private connectTimer: NodeJS.Timeout | undefined;
  private readonly headers = new HeaderAccumulator();
  /**
   * A chunked answer's body is read raw and decoded by ChunkedDecoder, not by llhttp (see chunked.ts):
   * `rawPending` from its headers until the parse stops after them, `chunked` while its body is read.
   */
  private rawPending = false;
  private chunked: ChunkedDecoder | undefined;
  /** The read passed to `execute` (sockets the parser does not consume), for the body after paused headers. */
  private executing: Buffer | undefined;
  /** The response body pieces of the read being parsed, passed on together (see BodyBatch). */
  private readonly body = new BodyBatch((chunk) => {
    const request = this.request;
    if (request !== undefined && !request.done) request.handler.onResponseData(chunk);
  });
  readonly reader: ParserReader;

  constructor(
    readonly socket: Socket,
    private readonly pool: UpstreamPool,
    secure: boolean,
  ) {
    this.keepAliveMs = pool.options.keepAliveTimeoutMs;
    const parser = (this.parser = acquireParser('response', MAX_RESPONSE_HEADER_BYTES));
    parser[kOnMessageBegin] = this.onStrayMessage;
    parser[kOnHeaders] = (headers: string[], url: string) => this.headers.add(headers, url);
    const onHeadersComplete: HeadersComplete = (_major, _minor, rawHeaders, _method, url, status, reason, _upgrade, keepAlive) => {
      const [headers] = this.headers.take(rawHeaders, url);
      const request = this.request;
      if (request === undefined || request.done) {
        this.poisoned = true;
        this.callOnMessageComplete(true);
        return PARSE_BODY;
      }
      if (status < 200) {
        if (status === 101) {
          this.fail(new UpstreamError('KVX_BAD_RESPONSE', 'upstream switched protocols unasked', false));
          return SKIP_BODY;
        }
        if (status < 100) {
          this.fail(new UpstreamError('KVX_BAD_STATUS', `upstream answered with status ${status}, not an HTTP status code`, false));
          return SKIP_BODY;
        }
        // 100 Continue, 103 Early Hints, any other 1xx: informational, the real answer follows. A 1xx ends at
        // its blank line whatever its headers say (RFC 9112 §6.3); llhttp would read a Content-Length body
        // for 104-199, and those bytes belong to no answer.
        this.interim = true;
        this.callOnMessageComplete(true);
        return SKIP_BODY;
      }
      if (status > 599) {
        this.fail(new UpstreamError('KVX_BAD_STATUS', `upstream answered with status ${status}, not an HTTP status code`, false));
        return SKIP_BODY;
      }
      this.keepAlive = keepAlive;
      if (keepAlive) this.readKeepAliveHint(headers);
      request.responseStarted = true;
      this.lastActivity = coarseNow();
      // Decided before the handler runs: it may abort the exchange, and the headers are all it may look at.
      const pause = PAUSE_AFTER_HEADERS;
      const raw = pause !== undefined && !request.expectsNoBody && status !== 204 && status !== 304 && isPlainChunked(headers);
      // An answer framed by one Content-Length is complete when that many bytes arrived: kOnBody says so,
      // and the parser's message-complete callback is unset for it (a call into JavaScript fewer per answer).
      const length = request.expectsNoBody || status === 204 || status === 304 || raw ? -1 : answerLength(headers);
      this.bodyLeft = length > 0 ? length : 0;
      this.callOnMessageComplete(this.bodyLeft === 0);
      request.handler.onResponseHead(status, reason, headers);
      if (request.expectsNoBody) return SKIP_BODY;
      if (raw) {
        this.rawPending = true;
        return pause;
      }
      return PARSE_BODY;
    };
    parser[kOnHeadersComplete] = onHeadersComplete;
    parser[kOnBody] = (chunk: Buffer) => {
      const request = this.request;
      if (request === undefined || request.done) return;
      this.body.add(chunk);
      if (this.bodyLeft === 0) return;
      this.bodyLeft -= chunk.length;
      if (this.bodyLeft === 0) this.onMessageComplete();
    };
    parser[kOnMessageComplete] = this.onMessageComplete;

    socket.setNoDelay(true);
    // A plain socket out of a tunnel is connected already; TLS inside one still has its handshake ahead.
    if (secure || socket.connecting) {
      this.connectTimer = setTimeout(() => {
        this.fail(new UpstreamError('KVX_CONNECT_TIMEOUT', 'connect timeout', true));
      }, pool.options.connectTimeoutMs);
      socket.once(secure ? 'secureConnect' : 'connect', () => {
        clearTimeout(this.connectTimer);
        this.connectTimer = undefined;
      });
    }
    this.reader = new ParserReader(socket, parser, this.afterRead, this.onData);
    socket.on('end', this.onEnd);
    socket.on('error', (err: NodeJS.ErrnoException) => {
      if (this.request === undefined && this.socketError === undefined) this.closedWhileIdle();
      this.socketError ??= err;
    });
    socket.on('close', this.onClose);
  }

  private readKeepAliveHint(headers: string[]): void {
    for (let i = 0; i < headers.length; i += 2) {
      if (isHeader(headers[i]!, 'keep-alive')) {
        const match = /timeout=(\d+)/i.exec(headers[i + 1]!);
        if (match) this.keepAliveMs = Math.min(this.pool.options.keepAliveTimeoutMs, Math.max(0, Number(match[1]) * 1000 - KEEP_ALIVE_MARGIN_MS));
      }
    }
  }

  /** Bytes of a Content-Length body still to come, when its end is told by counting them (see onHeadersComplete). */
  private bodyLeft = 0;
  /** Whether the parser calls onMessageComplete (not for an answer whose length is counted). */
  private messageCompleteSet = true;

  private readonly onMessageComplete = (): void => {
    this.body.flush();
    this.headers.reset();
    if (this.interim) {
      this.interim = false;
      return;
    }
    const request = this.request;
    if (request === undefined || request.done) return;
    request.done = true;
    this.completed = true;
    this.parser[kOnMessageBegin] = this.onStrayMessage;
    request.handler.onResponseEnd();
  };

  private callOnMessageComplete(call: boolean): void {
    if (call === this.messageCompleteSet) return;
    this.messageCompleteSet = call;
    this.parser[kOnMessageComplete] = call ? this.onMessageComplete : undefined;
  }

  /**
   * A message that began while no request waited for one: bytes past an answer's end, or from a connection
   * at rest. The parser calls this only while it is set, from an answer's end until the next request goes
   * out (see `expectAnswer`): a call from C++ into JavaScript for every answer cost about 3 % of a small
   * GET's instructions (callgrind).
   */
  private readonly onStrayMessage = (): void => {
    if (this.request === undefined || this.request.done) this.poisoned = true;
  };

  /** @internal a request goes out on this connection: the message that begins next is its answer */
  expectAnswer(request: UpstreamRequest): void {
    this.request = request;
    this.parser[kOnMessageBegin] = undefined;
  }

  private readonly onData = (data: Buffer): void => {
    if (this.chunked !== undefined) return this.readRaw(data, 0);
    if (this.request === undefined) return void this.socket.destroy();
    this.executing = data;
    const result = this.parser.execute(data);
    this.executing = undefined;
    this.afterRead(result);
  };

  private readonly afterRead = (result: number | ParserError): void => {
    this.lastActivity = coarseNow();
    this.body.flush();
    if (this.request === undefined) {
      // An idle connection has nothing to say; whatever it sent cannot be trusted as the next answer.
      this.socket.destroy();
      return;
    }
    if (typeof result !== 'number') {
      if (this.rawPending && result.code === 'HPE_PAUSED') {
        // The parse stopped after a chunked answer's headers: the rest of this read, and the reads after
        // it, are its body, read raw until it ends.
        this.rawPending = false;
        this.reader.detach();
        this.chunked = new ChunkedDecoder(MAX_RESPONSE_HEADER_BYTES);
        this.readRaw(this.executing ?? this.parser.getCurrentBuffer(), result.bytesParsed ?? 0);
        return;
      }
      this.fail(parserFailure(result, this.request));
      return;
    }
    if (this.completed) this.settle();
  };

  /** A read of a chunked answer's body (see `chunked`), from `offset`. */
  private readRaw(data: Buffer, offset: number): void {
    this.lastActivity = coarseNow();
    const request = this.request;
    const decoder = this.chunked!;
    if (request === undefined || request.done) {
      this.socket.destroy();
      return;
    }
    let body: Buffer | undefined;
    try {
      body = decoder.decode(data, offset);
    } catch (err) {
      const code = err instanceof ChunkedError ? err.code : 'KVX_BAD_RESPONSE';
      this.fail(new UpstreamError(code, `malformed response (${code})`, false));
      return;
    }
    // Bytes past the answer's end belong to no request: the connection is not reused.
    if (decoder.done && decoder.end < data.length) this.poisoned = true;
    // The read's data is copied out: its memory goes now, not at the next collection.
    releaseNow(data);
    if (body !== undefined) request.handler.onResponseData(body);
    if (!decoder.done) return;
    this.chunked = undefined;
    this.headers.reset();
    resetParser(this.parser, 'response', MAX_RESPONSE_HEADER_BYTES);
    this.reader.attach();
    if (request.done) return;
    request.done = true;
    this.completed = true;
    this.parser[kOnMessageBegin] = this.onStrayMessage;
    request.handler.onResponseEnd();
    this.settle();
  }

  /** After a complete response: back to the pool if that is safe, closed otherwise. */
  private settle(): void {
    this.completed = false;
    const request = this.request!;
    if (this.poisoned || !this.keepAlive || !request.sent || this.socket.destroyed) {
      this.socket.destroy();
      return;
    }
    if (this.exchanges++ > 0) this.pool.reuseWorked();
    this.request = undefined;
    // The answer may have ended while its client was slow; the next one must be read.
    this.paused = false;
    this.reader.set(true);
    this.pool.release(this);
  }

  private readonly onEnd = (): void => {
    const request = this.request;
    if (request === undefined) this.closedWhileIdle();
    else if (!request.done) {
      if (this.chunked !== undefined || this.rawPending) {
        // As llhttp reports a chunked body cut short.
        this.fail(new UpstreamError('HPE_INVALID_EOF_STATE', 'malformed response (HPE_INVALID_EOF_STATE)', false));
      } else {
        // A response delimited by the connection's end completes here.
        const result = this.parser.finish();
        if (result instanceof Error) this.fail(parserFailure(result as ParserError, request));
      }
    }
    this.socket.destroy();
  };

  /** The server ended or reset the connection while it waited in the pool. */
  private closedWhileIdle(): void {
    if (this.exchanges > 0 && tick() - this.idleSince < EARLY_CLOSE_MS) this.pool.closedAfterAnswer();
  }

  private readonly onClose = (): void => {
    clearTimeout(this.connectTimer);
    this.reader.release();
    this.pool.remove(this);
    const request = this.request;
    if (request !== undefined && !request.done) {
      const err = this.socketError;
      const beforeResponse = !request.responseStarted;
      // The server closed the connection it had answered on, just as this request went out on it.
      if (beforeResponse && this.exchanges > 0) this.pool.closedAfterAnswer();
      request.fail(
        err?.code
          ? new UpstreamError(err.code, err.message, beforeResponse)
          : new UpstreamError('KVX_UPSTREAM_CLOSED', beforeResponse ? 'closed before answering' : 'closed mid-response', beforeResponse),
      );
    }
  };

  fail(err: UpstreamError): void {
    const request = this.request;
    this.socket.destroy();
    request?.fail(err);
  }

  sweep(now: number): boolean {
    const request = this.request;
    const { options } = this.pool;
    if (request === undefined) return now - this.idleSince >= this.keepAliveMs;
    if (request.done) return false;
    if (!request.responseStarted) {
      if (request.sent && now - request.sentAt + request.queuedMs >= options.headersTimeoutMs) {
        this.fail(new UpstreamError('KVX_HEADERS_TIMEOUT', 'headers timeout', true));
      }
    } else if (!this.paused && now - this.lastActivity >= options.idleTimeoutMs) {
      this.fail(new UpstreamError('KVX_BODY_TIMEOUT', 'body timeout', false));
    }
    return false;
  }
}

/**
 * The length of an answer's body when one Content-Length frames it (no Transfer-Encoding, which would take
 * precedence, and no second Content-Length, which llhttp refuses unless equal), else -1.
 */
function answerLength(headers: readonly string[]): number {
  let length = -1;
  for (let i = 0; i < headers.length; i += 2) {
    const name = headers[i]!;
    if (isHeader(name, 'transfer-encoding')) return -1;
    if (isHeader(name, 'content-length')) {
      if (length !== -1) return -1;
      length = Number(headers[i + 1]);
    }
  }
  return Number.isSafeInteger(length) ? length : -1;
}

function parserFailure(err: ParserError, request: UpstreamRequest): UpstreamError {
  return new UpstreamError(err.code || 'KVX_BAD_RESPONSE', `malformed response (${err.code})`, !request.responseStarted);
}

export class UpstreamPool {
  private readonly idle: UpstreamConnection[] = [];
  private readonly waiting: UpstreamRequest[] = [];
  private readonly all = new ConnectionRegistry<UpstreamConnection>();
  private readonly sweeper: Sweeper;
  private readonly target: DialTarget;
  private readonly route: DialRoute;
  private readonly secure: boolean;
  /** Connections being opened (a tunnel waits for the proxy's answer): they count against maxConnections. */
  private dialing = 0;
  /** Tunnels being set up, each with the request it is for. */
  private readonly pendingDials = new Map<UpstreamRequest, () => void>();
  private closed = false;
  /** Early closes since a reused connection last carried a whole exchange (see ReuseMode). */
  private closesAfterAnswer = 0;

  constructor(readonly options: UpstreamPoolOptions) {
    const { origin } = options;
    this.secure = origin.protocol === 'https:';
    this.target = {
      host: origin.hostname.startsWith('[') ? origin.hostname.slice(1, -1) : origin.hostname,
      port: Number(origin.port) || (this.secure ? 443 : 80),
      secure: this.secure,
      tls: options.tls,
    };
    this.route = { proxy: options.egress?.proxy, lookup: options.egress?.lookup, timeoutMs: options.connectTimeoutMs };
    this.sweeper = new Sweeper(sweepInterval([options.headersTimeoutMs, options.idleTimeoutMs, options.keepAliveTimeoutMs]), (now) => {
      this.all.forEach((connection) => {
        if (connection.sweep(now)) connection.socket.destroy();
      });
      this.sweepWaiting(now);
    });
    this.sweeper.start();
  }

  /**
   * Sends a request on an idle connection, a new one, or when one frees up. A request that may not reuse a
   * connection (see ReuseMode) gets a new one, an idle connection closed to make room when all
   * upstream.maxConnections are open.
   */
  request(handler: ResponseHandler, head: string, body: RequestBody, expectsNoBody: boolean, reuse: ReuseMode): UpstreamRequest {
    const request = new UpstreamRequest(this, handler, head, body, expectsNoBody, reuse);
    if (this.closed) {
      request.fail(new UpstreamError('KVX_UPSTREAM_CLOSED', 'the proxy is shutting down', true));
      return request;
    }
    const mayReuse = this.mayReuse(request);
    const connection = mayReuse ? this.idle.pop() : undefined;
    if (connection !== undefined) this.assign(connection, request);
    else if (this.all.size + this.dialing < this.options.maxConnections) this.connect(request);
    else if (!mayReuse && this.idle.length > 0) {
      this.retire(this.idle.shift()!);
      this.connect(request);
    } else {
      request.queuedAt = tick();
      this.waiting.push(request);
    }
    return request;
  }

  /** The next waiting request that has time left, if any; those whose headers timeout passed fail. */
  private nextWaiting(): UpstreamRequest | undefined {
    if (this.waiting.length === 0) return undefined;
    this.sweepWaiting(tick());
    return this.waiting.shift();
  }

  /** Requests wait in arrival order, so the expired ones are at the front. */
  private sweepWaiting(now: number): void {
    const { headersTimeoutMs, maxConnections } = this.options;
    let request: UpstreamRequest | undefined;
    while ((request = this.waiting[0]) !== undefined && now - request.queuedAt >= headersTimeoutMs) {
      this.waiting.shift();
      request.fail(new UpstreamError('KVX_QUEUE_TIMEOUT', `waited ${now - request.queuedAt} ms for a connection: all upstream.maxConnections (${maxConnections}) were busy`, true));
    }
  }

  private mayReuse(request: UpstreamRequest): boolean {
    return request.reuse === 'any' || (request.reuse === 'trusted' && this.closesAfterAnswer < DISTRUST_AFTER_CLOSES);
  }

  /** @internal the server closed a connection right after answering on it */
  closedAfterAnswer(): void {
    this.closesAfterAnswer++;
  }

  /** @internal a reused connection carried a whole exchange */
  reuseWorked(): void {
    this.closesAfterAnswer = 0;
  }

  /** Closes a connection and frees its slot at once, for a request that must have a new connection. */
  private retire(connection: UpstreamConnection): void {
    this.all.delete(connection);
    connection.socket.destroy();
  }

  private assign(connection: UpstreamConnection, request: UpstreamRequest): void {
    if (request.queuedAt !== 0) request.queuedMs = tick() - request.queuedAt;
    connection.expectAnswer(request);
    connection.lastActivity = coarseNow();
    request.attach(connection);
  }

  /**
   * Opens a connection for `request`. A direct one is there at once; a tunnel's once the egress proxy answered,
   * by when the request may have been given up (the connection then serves the next one).
   */
  private connect(request: UpstreamRequest): void {
    this.dialing++;
    let dialed = false;
    const onDialed = (err: DialError | undefined, socket: Socket | undefined): void => {
      dialed = true;
      this.dialing--;
      this.pendingDials.delete(request);
      if (err !== undefined || socket === undefined) {
        request.fail(new UpstreamError(err?.code ?? 'KVX_UPSTREAM_CLOSED', err?.message ?? 'no connection', true));
        this.dialFailed();
        return;
      }
      const connection = new UpstreamConnection(socket, this, this.secure);
      this.all.add(connection);
      if (this.closed) socket.destroy();
      else if (request.done) this.release(connection);
      else this.assign(connection, request);
    };
    const cancel = dial(this.target, this.route, onDialed);
    if (!dialed) this.pendingDials.set(request, cancel);
  }

  /** A slot opened by a failed tunnel goes to the next waiting request, as one a closed connection frees does. */
  private dialFailed(): void {
    const next = this.closed ? undefined : this.nextWaiting();
    if (next !== undefined) this.connect(next);
  }

  /** @internal a connection finished an exchange cleanly */
  release(connection: UpstreamConnection): void {
    const next = this.nextWaiting();
    if (next !== undefined) {
      if (!this.mayReuse(next)) {
        this.retire(connection);
        this.connect(next);
      } else this.assign(connection, next);
      return;
    }
    connection.idleSince = tick();
    this.idle.push(connection);
  }

  /** @internal a connection closed */
  remove(connection: UpstreamConnection): void {
    if (!this.all.delete(connection)) return;
    const at = this.idle.indexOf(connection);
    if (at !== -1) this.idle.splice(at, 1);
    const next = this.closed ? undefined : this.nextWaiting();
    if (next === undefined) return;
    // The answers to expired requests may have let a pipelined request take the freed slot already.
    if (this.all.size + this.dialing < this.options.maxConnections) this.connect(next);
    else this.waiting.unshift(next);
  }

  /** @internal a waiting request was given up */
  dequeue(request: UpstreamRequest): void {
    const at = this.waiting.indexOf(request);
    if (at !== -1) this.waiting.splice(at, 1);
  }

  async destroy(): Promise<void> {
    this.closed = true;
    this.sweeper.stop();
    for (const [request, cancel] of this.pendingDials) {
      cancel();
      request.fail(new UpstreamError('KVX_UPSTREAM_CLOSED', 'the proxy is shutting down', true));
    }
    this.pendingDials.clear();
    for (const request of this.waiting.splice(0)) request.fail(new UpstreamError('KVX_UPSTREAM_CLOSED', 'the proxy is shutting down', true));
    const closing = [...this.all].map((c) => new Promise<void>((resolve) => (c.socket.destroyed ? resolve() : c.socket.once('close', () => resolve()))));
    this.all.forEach((connection) => connection.socket.destroy());
    await Promise.all(closing);
  }
}
