import net from 'node:net';
import type { Socket } from 'node:net';
import { Sweeper, coarseNow, sweepInterval, tick } from './clock.js';
import { BodyBatch, releaseNow, writeBodyChunk, writeHeadAndBody } from './body.js';
import { HeaderAccumulator, METHODS, ParserReader, SKIP_BODY, acquireParser, kOnBody, kOnHeaders, kOnHeadersComplete, kOnMessageComplete } from './llhttp.js';
import type { HeadersComplete, NativeParser, ParserError } from './llhttp.js';
import type { BodySink, LocationRewriter, ProxyRequest, RefusalKind } from '../engine.js';
import { clientResponseHead } from '../headers.js';
import { isHeader } from '../header-names.js';
import { ConnectionRegistry } from './connection-registry.js';
import type { Registered } from './connection-registry.js';

export type { BodySink, RefusalKind };

/**
 * The client side of the proxy: accepted sockets, requests parsed by llhttp, answers written straight to
 * the socket. Requests on one connection are answered strictly in order (pipelining); a request becomes
 * `active` (handed to the handler) once the ones before it are answered.
 */
export interface ClientListenerOptions {
  maxHeaderSize: number;
  /** Time to receive a request's headers, from the connection's start or its first byte after an answer. */
  headersTimeoutMs: number;
  /** Time to receive a whole request; 0 for none. */
  requestTimeoutMs: number;
  /** How long a connection may sit between requests. */
  keepAliveTimeoutMs: number;
  /** Socket inactivity while a request is under way, unless the request waits on upstream. */
  idleTimeoutMs: number;
  onRequest(request: ClientRequest): void;
  /** A request the parser refused, or a connection timed out; for the debug log. */
  onClientError(code: string): void;
  /** Answers for requests refused before they reach the handler (malformed, too large, too slow). */
  refusal(kind: RefusalKind): { status: string; body: string };
}

export type ResponseFraming = 'length' | 'chunked' | 'none';

const CONTINUE = 'HTTP/1.1 100 Continue\r\n\r\n';

/**
 * Answers whose head waits for its first body bytes, so that both leave in one write. The head goes out with
 * the first `write` or the `end`; one immediate per event-loop turn writes the heads still waiting, after every
 * read of the turn has been parsed. (A corked socket uncorked on the next tick split them: node runs the tick
 * queue after each of llhttp's callbacks, between the head and the body it parsed from the same read.)
 */
let waitingHeads: ClientRequest[] = [];
let headFlushScheduled = false;
const flushWaitingHeads = (): void => {
  const requests = waitingHeads;
  waitingHeads = [];
  headFlushScheduled = false;
  for (const request of requests) request.flushHead();
};

export class ClientRequest implements ProxyRequest {
  readonly method: string;
  readonly target: string;
  /** Flat [name, value, ...] list, as received (latin1 strings, the client's casing and order). */
  readonly rawHeaders: string[];
  readonly http10: boolean;
  readonly keepAlive: boolean;
  /** Declared Content-Length, or -1. */
  readonly contentLength: number;
  readonly chunked: boolean;
  readonly upgrade: boolean;
  readonly expectContinue: boolean;
  /** The Host header, and X-Request-Id if the client sent exactly one. */
  readonly host: string | undefined;
  readonly requestIdHeader: string | undefined;
  complete = false;
  /**
   * An upstream exchange was opened for this request (set by the wire engine's upstream side): once the request
   * is complete and until its answer starts, the client waits on upstream and is not idle by its own fault.
   */
  waitingOnUpstream = false;
  headersSent = false;
  finished = false;
  clientGone = false;
  /** Called once if the connection closes before the answer is complete. */
  onClientGone: (() => void) | undefined;
  private closeAfter = false;
  private framing: ResponseFraming = 'length';
  private sink: BodySink | undefined;
  private buffered: Buffer[] | undefined;
  private bodyFailure: string | undefined;
  private bodyFailureByClose = false;
  /** The status line and headers, until the first body bytes or the end take them along. */
  private head: string | undefined;

  constructor(
    private readonly connection: ClientConnection,
    method: string,
    target: string,
    rawHeaders: string[],
    versionMinor: number,
    keepAlive: boolean,
    upgrade: boolean,
  ) {
    this.method = method;
    this.target = target;
    this.rawHeaders = rawHeaders;
    this.http10 = versionMinor === 0;
    this.keepAlive = keepAlive && !upgrade;
    this.upgrade = upgrade;
    let contentLength = -1;
    let chunked = false;
    let expectContinue = false;
    let host: string | undefined;
    let requestId: string | undefined;
    let requestIds = 0;
    for (let i = 0; i < rawHeaders.length; i += 2) {
      const name = rawHeaders[i]!;
      // Switch on length first: most headers are rejected without lower-casing them.
      switch (name.length) {
        case 4:
          if (isHeader(name, 'host')) host = rawHeaders[i + 1];
          break;
        case 6:
          if (isHeader(name, 'expect') && rawHeaders[i + 1]!.toLowerCase() === '100-continue') expectContinue = true;
          break;
        case 12:
          if (isHeader(name, 'x-request-id')) {
            requestId = rawHeaders[i + 1];
            requestIds++;
          }
          break;
        case 14:
          // llhttp has already refused conflicting or malformed lengths.
          if (isHeader(name, 'content-length')) contentLength = Number(rawHeaders[i + 1]);
          break;
        case 17:
          if (isHeader(name, 'transfer-encoding')) chunked = true;
          break;
      }
    }
    this.contentLength = contentLength;
    this.chunked = chunked;
    this.expectContinue = expectContinue && !this.http10;
    this.host = host;
    this.requestIdHeader = requestIds === 1 ? requestId : undefined;
  }

  get hasBody(): boolean {
    return this.chunked || this.contentLength > 0;
  }

  /** Starts delivering the body (buffered chunks first). */
  readBody(sink: BodySink): void {
    this.sink = sink;
    if (this.connection.activeRequest === this && this.expectContinue && !this.complete && !this.headersSent) {
      this.connection.socket.write(CONTINUE, 'latin1');
    }
    const buffered = this.buffered;
    this.buffered = undefined;
    if (buffered) for (const chunk of buffered) sink.data(chunk);
    if (this.bodyFailure !== undefined) sink.error(this.bodyFailure, this.bodyFailureByClose);
    else if (this.complete) sink.end();
    this.connection.updateReading();
  }

  pauseBody(): void {
    this.connection.bodyPaused = true;
    this.connection.updateReading();
  }

  resumeBody(): void {
    this.connection.bodyPaused = false;
    this.connection.updateReading();
  }

  /** @internal parser events */
  receive(chunk: Buffer): void {
    if (this.sink) this.sink.data(chunk);
    // Answered without reading its body (refused before forwarding): nothing will read these bytes.
    else if (this.finished) releaseNow(chunk);
    else (this.buffered ??= []).push(chunk);
  }

  /** Frees body bytes held for a handler that answered without reading them. */
  private dropUnread(): void {
    const buffered = this.buffered;
    this.buffered = undefined;
    if (buffered) for (const chunk of buffered) releaseNow(chunk);
  }

  /** @internal */
  receiveEnd(): void {
    this.complete = true;
    this.sink?.end();
  }

  /** @internal */
  receiveFailure(reason: string, clientClosed: boolean): void {
    if (this.complete || this.bodyFailure !== undefined) return;
    this.bodyFailure = reason;
    this.bodyFailureByClose = clientClosed;
    this.sink?.error(reason, clientClosed);
  }

  /**
   * Prepares the status line and headers; they go out with the first body bytes, in one write.
   * `headerLines` is a block of `name: value\r\n` lines without framing or connection headers.
   */
  writeHead(status: number, reason: string, headerLines: string, framing: ResponseFraming): void {
    const connection = this.connection;
    // An unread body cannot be skipped safely on a kept connection, and an HTTP/1.0 client cannot take chunks.
    if (!this.keepAlive || !this.complete || connection.closing || (framing === 'chunked' && this.http10)) this.closeAfter = true;
    if (framing === 'chunked' && this.http10) framing = 'none';
    this.framing = framing;
    let head = `HTTP/1.1 ${status} ${reason}\r\n${headerLines}`;
    if (framing === 'chunked') head += 'transfer-encoding: chunked\r\n';
    if (this.closeAfter) head += 'connection: close\r\n';
    else if (this.http10) head += 'connection: keep-alive\r\n';
    this.headersSent = true;
    connection.lastActivity = coarseNow();
    if (connection.socket.destroyed) return;
    this.head = head + '\r\n';
    waitingHeads.push(this);
    if (!headFlushScheduled) {
      headFlushScheduled = true;
      setImmediate(flushWaitingHeads);
    }
  }

  /** @internal writes the head if no body bytes took it along (see waitingHeads) */
  flushHead(): void {
    const head = this.head;
    if (head === undefined) return;
    this.head = undefined;
    const socket = this.connection.socket;
    if (!socket.destroyed) socket.write(head, 'latin1');
  }

  /** Upstream's answer: its headers as the client gets them, framed by Content-Length when upstream sent one. */
  respond(status: number, reason: string, upstreamHeaders: readonly string[], rewriter: LocationRewriter): void {
    const { lines, hasLength } = clientResponseHead(upstreamHeaders, rewriter, this.host);
    const noBody = this.method === 'HEAD' || status === 204 || status === 304;
    this.writeHead(status, reason, lines, noBody ? 'none' : hasLength ? 'length' : 'chunked');
  }

  /** The proxy's own answer, whole. */
  reply(status: number, reason: string, headers: readonly string[], body: Buffer): void {
    let lines = '';
    for (let i = 0; i < headers.length; i += 2) lines += `${headers[i]}: ${headers[i + 1]}\r\n`;
    this.writeHead(status, reason, `${lines}content-length: ${body.length}\r\n`, 'length');
    // The answer to a HEAD has no body: bytes written after it would be read as the start of the next answer.
    if (this.method !== 'HEAD') this.write(body);
    this.end();
  }

  /** Writes body bytes; false means wait for `onDrain`. */
  write(chunk: Buffer): boolean {
    const socket = this.connection.socket;
    this.connection.lastActivity = coarseNow();
    if (socket.destroyed) return true;
    const head = this.head;
    if (head === undefined) return writeBodyChunk(socket, chunk, this.framing === 'chunked');
    this.head = undefined;
    return writeHeadAndBody(socket, head, chunk, this.framing === 'chunked');
  }

  onDrain(callback: () => void): void {
    this.connection.socket.once('drain', callback);
  }

  /** Completes the answer; the connection moves on to the next request or closes. */
  end(): void {
    if (this.finished) return;
    this.finished = true;
    if (this.sink === undefined) this.dropUnread();
    const socket = this.connection.socket;
    if (!socket.destroyed) {
      const head = this.head;
      this.head = undefined;
      if (this.framing === 'chunked') socket.write(head === undefined ? '0\r\n\r\n' : head + '0\r\n\r\n', 'latin1');
      else if (head !== undefined) socket.write(head, 'latin1');
    }
    this.connection.answered(this, this.closeAfter);
  }

  /** Breaks the connection: how a client learns that an answer already under way is incomplete. */
  destroy(): void {
    this.finished = true;
    if (this.sink === undefined) this.dropUnread();
    this.connection.socket.destroy();
  }

  /** @internal */
  gone(): void {
    if (this.finished || this.clientGone) return;
    this.clientGone = true;
    this.onClientGone?.();
  }
}

type Phase = 'headers' | 'busy' | 'keepalive' | 'linger';

/**
 * After its last answer a connection is half-closed and whatever the client still sends is read and dropped
 * for up to this long: closing with unread bytes makes the kernel send a reset, and a reset can destroy the
 * answer before the client has read it (nginx's lingering close). The parser is paused meanwhile, so the bytes
 * land in the parser's one reused read buffer and go no further: lingering costs no memory however much the
 * client sends, and it is bounded in time as nginx's lingering_time bounds it.
 */
const LINGER_MS = 5_000;
/** More request headers than this is an attack, not a client: 431, as node:http answers such requests. */
const MAX_HEADER_PAIRS = 500;

/**
 * A connection idle this long between requests gives its parser back to the pool (see ParserReader.putAside):
 * thousands of idle keep-alive connections then hold no parser each, and the next request takes one again.
 */
const PARSER_IDLE_MS = 1_000;
/**
 * With more client connections than this holding a parser (thousands of keep-alive connections), a connection
 * gives its parser back as soon as it has answered and nothing more has arrived, not a second later: memory a
 * parser frees stays with the process (the allocator keeps it for the next one), so the peak held at once is
 * what counts. Below it, busy connections keep theirs between requests, which costs nothing per request: a
 * parser given back means the next request's first read goes through a Buffer and a parser is taken again.
 * Set above the 500 active connections the benchmark drives, below the 2,000 idle ones.
 */
const EAGER_RETURN_ABOVE = 768;
/** Client connections holding a parser now. */
let holdingParsers = 0;
/** Connections to give their parser back once the parse they answered from has unwound (one immediate for all). */
let returning: ClientConnection[] = [];
const returnParsers = (): void => {
  const connections = returning;
  returning = [];
  for (const connection of connections) connection.putParserAside();
};

export class ClientConnection implements Registered {
  registryIndex = -1;
  /** Undefined while the connection is idle and its parser put aside. */
  private parser: NativeParser | undefined;
  /** The parser callbacks, bound to each parser this connection takes. */
  private readonly callbacks: [unknown, unknown, unknown, unknown];
  /** Whether the parser calls back when a message completes (not for a request without a body). */
  private messageCompleteSet = true;
  /** Requests parsed and not yet answered; the first is active. */
  readonly queue: ClientRequest[] = [];
  activeRequest: ClientRequest | undefined;
  /** The request whose head or body the parser is reading. */
  private receiving: ClientRequest | undefined;
  bodyPaused = false;
  closing = false;
  private stopped = false;
  private pendingRefusal: Exclude<RefusalKind, 'timeout'> | undefined;
  private phase: Phase = 'headers';
  private phaseStarted: number;
  lastActivity: number;
  private readonly headers = new HeaderAccumulator();
  /** The request body pieces of the read being parsed, passed on together (see BodyBatch). */
  private readonly body = new BodyBatch((chunk) => this.receiving?.receive(chunk));
  private readonly reader: ParserReader;

  constructor(
    readonly socket: Socket,
    private readonly listener: ClientListener,
  ) {
    this.phaseStarted = this.lastActivity = tick();
    const parser = (this.parser = acquireParser('request', listener.options.maxHeaderSize));
    holdingParsers++;
    const onHeaders = (headers: string[], url: string) => this.headers.add(headers, url);
    const onHeadersComplete: HeadersComplete = (_major, minor, rawHeaders, method, url, _status, _reason, upgrade, keepAlive) => {
      const [headers, target] = this.headers.take(rawHeaders, url);
      if (this.stopped) {
        this.callOnMessageComplete(true);
        return SKIP_BODY;
      }
      if (headers.length > MAX_HEADER_PAIRS * 2) {
        this.callOnMessageComplete(true);
        this.parseFailed(Object.assign(new Error('too many headers'), { code: 'HPE_HEADER_OVERFLOW' }));
        return SKIP_BODY;
      }
      const request = new ClientRequest(this, METHODS[method] ?? 'UNKNOWN', target, headers, minor, keepAlive, upgrade);
      if (request.contentLength > Number.MAX_SAFE_INTEGER) {
        // llhttp frames lengths up to 2^64 - 1, but a JavaScript number holds them exactly only up to 2^53 - 1:
        // forwarded, a rounded length would make upstream frame a different body than the client sent.
        this.stopped = true;
        this.callOnMessageComplete(true);
        this.listener.options.onClientError('content_length_too_large');
        this.pendingRefusal = 'too_large';
        return SKIP_BODY;
      }
      this.receiving = request;
      this.queue.push(request);
      this.phase = 'busy';
      if (upgrade) {
        // Nothing after an upgrade request is HTTP; the answer refuses it and closes.
        request.complete = true;
        this.stopped = true;
      } else if (!request.hasBody) {
        // No body: llhttp completes the message right after its headers. Completed here instead, with the
        // message-complete callback unset for it: a call from C++ into JavaScript fewer for every GET.
        this.headers.reset();
        this.receiving = undefined;
        request.receiveEnd();
        this.callOnMessageComplete(false);
        return 0;
      }
      this.callOnMessageComplete(true);
      return 0;
    };
    const onBody = (chunk: Buffer) => this.body.add(chunk);
    const onMessageComplete = () => {
      this.body.flush();
      this.headers.reset();
      const request = this.receiving;
      this.receiving = undefined;
      request?.receiveEnd();
    };
    this.callbacks = [onHeaders, onHeadersComplete, onBody, onMessageComplete];
    this.bind(parser);
    socket.setNoDelay(true);
    this.reader = new ParserReader(socket, parser, this.afterRead, this.onData);
    socket.on('end', this.onEnd);
    socket.on('error', this.onError);
    socket.on('close', this.onClose);
  }

  private bind(parser: NativeParser): void {
    const [onHeaders, onHeadersComplete, onBody, onMessageComplete] = this.callbacks;
    parser[kOnHeaders] = onHeaders;
    parser[kOnHeadersComplete] = onHeadersComplete;
    parser[kOnBody] = onBody;
    parser[kOnMessageComplete] = onMessageComplete;
    this.messageCompleteSet = true;
  }

  /** Sets or unsets the parser's message-complete callback for the message whose headers just completed. */
  private callOnMessageComplete(call: boolean): void {
    if (call === this.messageCompleteSet || this.parser === undefined) return;
    this.messageCompleteSet = call;
    this.parser[kOnMessageComplete] = call ? this.callbacks[3] : undefined;
  }

  private readonly onData = (data: Buffer): void => {
    if (this.stopped) {
      this.lastActivity = coarseNow();
      releaseNow(data);
      return;
    }
    let parser = this.parser;
    if (parser === undefined) {
      // The first read after an idle spell (see PARSER_IDLE_MS): this one is parsed here, the next by the parser reading the handle.
      parser = this.parser = acquireParser('request', this.listener.options.maxHeaderSize);
      holdingParsers++;
      this.bind(parser);
      this.reader.takeBack(parser);
    }
    this.afterRead(parser.execute(data));
  };

  private readonly afterRead = (result: number | ParserError): void => {
    this.lastActivity = coarseNow();
    this.body.flush();
    if (this.phase === 'linger') return;
    if (this.phase === 'keepalive') {
      this.phase = 'headers';
      this.phaseStarted = tick();
    }
    if (typeof result !== 'number' && !this.stopped) this.parseFailed(result);
    this.next();
    this.updateReading();
  };

  private parseFailed(err: ParserError): void {
    this.stopped = true;
    this.listener.options.onClientError(err.code);
    this.receiving?.receiveFailure(`malformed request body (${err.code})`, false);
    this.receiving = undefined;
    this.pendingRefusal = err.code === 'HPE_HEADER_OVERFLOW' ? 'header_overflow' : 'bad_request';
  }

  private readonly onEnd = (): void => {
    if (this.phase === 'linger') {
      this.socket.destroy();
      return;
    }
    if (!this.stopped && this.parser !== undefined) {
      const result = this.parser.finish();
      if (result instanceof Error) this.listener.options.onClientError(result.code);
    }
    this.receiving?.receiveFailure('the client closed its side before sending the whole body', true);
    this.receiving = undefined;
    this.stopped = true;
    this.closing = true;
    if (this.queue.length === 0) this.finishConnection();
  };

  private readonly onError = (err: NodeJS.ErrnoException): void => {
    this.listener.options.onClientError(err.code ?? 'socket_error');
  };

  private readonly onClose = (): void => {
    this.listener.connections.delete(this);
    if (this.parser !== undefined) {
      this.parser = undefined;
      holdingParsers--;
    }
    this.reader.release();
    this.stopped = true;
    for (const request of this.queue) request.gone();
    this.queue.length = 0;
    this.activeRequest = undefined;
  };

  /** Hands the next request to the handler, or answers a refusal owed after the earlier answers. */
  private next(): void {
    if (this.activeRequest !== undefined) return;
    const request = this.queue[0];
    if (request !== undefined) {
      this.activeRequest = request;
      this.listener.options.onRequest(request);
      return;
    }
    if (this.pendingRefusal !== undefined) {
      const kind = this.pendingRefusal;
      this.pendingRefusal = undefined;
      this.refuse(kind);
    }
  }

  /** Called by a request once its answer is written. */
  answered(request: ClientRequest, close: boolean): void {
    if (this.queue[0] === request) this.queue.shift();
    if (this.activeRequest === request) this.activeRequest = undefined;
    if (close || (this.closing && this.queue.length === 0)) {
      // The client said it sends nothing more (Connection: close, or HTTP/1.0) and all it sent was read: there is
      // nothing to linger for, and the socket closes once the answer is flushed, as nginx and node:http close it.
      const clientDone = !request.keepAlive && !request.upgrade && request.complete && !this.stopped && this.queue.length === 0;
      this.closing = true;
      this.stopped = true;
      this.finishConnection(clientDone);
      return;
    }
    if (this.queue.length === 0 && this.receiving === undefined) {
      this.phase = this.pendingRefusal ? 'busy' : 'keepalive';
      this.phaseStarted = tick();
      if (this.phase === 'keepalive' && holdingParsers > EAGER_RETURN_ABOVE) {
        if (returning.length === 0) setImmediate(returnParsers);
        returning.push(this);
      }
    }
    this.next();
    this.updateReading();
  }

  /** Reads while there is room: the active body is not paused and no pipelined request waits its turn. */
  updateReading(): void {
    this.reader.set(this.phase === 'linger' || (!this.stopped && !this.bodyPaused && this.queue.length <= 1));
  }

  private refuse(kind: RefusalKind): void {
    const { status, body } = this.listener.options.refusal(kind);
    this.stopped = true;
    this.closing = true;
    const socket = this.socket;
    if (!socket.writable) {
      socket.destroy();
      return;
    }
    socket.write(`HTTP/1.1 ${status}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nx-kvx-error: bad_request\r\nconnection: close\r\n\r\n${body}`, 'latin1');
    this.finishConnection();
  }

  /** Sends FIN after the answers written so far, then lingers (see LINGER_MS) unless `clientDone`. */
  private finishConnection(clientDone = false): void {
    if (this.phase === 'linger') return;
    this.stopped = true;
    this.phase = 'linger';
    this.phaseStarted = tick();
    // Whatever still arrives is dropped unparsed (see LINGER_MS).
    this.parser?.pause();
    const socket = this.socket;
    if (socket.readableEnded || clientDone) {
      // With every answer byte handed to the kernel, closing at once sends them and then FIN, as nginx closes such
      // a connection; ending first would cost a shutdown call and its completion callback per connection.
      if (socket.writableLength === 0) socket.destroy();
      else socket.destroySoon();
      return;
    }
    socket.end();
    this.updateReading();
  }

  /** @internal gives the parser back while the connection waits for its next request (see PARSER_IDLE_MS) */
  putParserAside(): void {
    if (this.parser === undefined || this.phase !== 'keepalive' || !this.idle || this.stopped || this.socket.destroyed) return;
    this.parser = undefined;
    holdingParsers--;
    this.reader.putAside();
  }

  /** Whether the connection is between requests and can be closed without losing anything. */
  get idle(): boolean {
    return this.queue.length === 0 && this.receiving === undefined;
  }

  sweep(now: number): void {
    const { options } = this.listener;
    if (this.phase === 'linger') {
      if (now - this.phaseStarted >= LINGER_MS) this.socket.destroy();
      return;
    }
    if (this.phase === 'keepalive') {
      if (now - this.phaseStarted >= options.keepAliveTimeoutMs) this.socket.destroy();
      else if (now - this.phaseStarted >= PARSER_IDLE_MS) this.putParserAside();
      return;
    }
    if (this.phase === 'headers') {
      if (now - this.phaseStarted >= options.headersTimeoutMs && this.queue.length === 0) {
        options.onClientError('headers_timeout');
        this.refuse('timeout');
      }
      return;
    }
    const receiving = this.receiving;
    if (receiving !== undefined && options.requestTimeoutMs > 0 && now - this.phaseStarted >= options.requestTimeoutMs) {
      options.onClientError('request_timeout');
      if (!receiving.headersSent && this.queue[0] === receiving) {
        receiving.receiveFailure('request timeout', false);
        this.refuse('timeout');
      } else this.socket.destroy();
      return;
    }
    const active = this.activeRequest;
    const waitingOnUpstream = active !== undefined && active.waitingOnUpstream && active.complete && !active.headersSent;
    if (now - this.lastActivity >= options.idleTimeoutMs && !waitingOnUpstream) this.socket.destroy();
  }
}

export class ClientListener {
  readonly server: net.Server;
  readonly connections = new ConnectionRegistry<ClientConnection>();
  private readonly sweeper: Sweeper;

  constructor(readonly options: ClientListenerOptions) {
    this.server = net.createServer({ allowHalfOpen: true, noDelay: true }, (socket) => {
      const connection = new ClientConnection(socket, this);
      this.connections.add(connection);
    });
    this.sweeper = new Sweeper(
      sweepInterval([options.headersTimeoutMs, options.requestTimeoutMs, options.keepAliveTimeoutMs, options.idleTimeoutMs]),
      (now) => {
        this.connections.forEach((connection) => connection.sweep(now));
      },
    );
    this.sweeper.start();
  }

  /** Closes connections that are between requests; busy ones close after their current answer. */
  closeIdle(): void {
    this.connections.forEach((connection) => {
      connection.closing = true;
      if (connection.idle) connection.socket.destroy();
    });
  }

  closeAll(): void {
    this.connections.forEach((connection) => connection.socket.destroy());
  }

  stop(): void {
    this.sweeper.stop();
  }
}
