import type http from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Server, Socket } from 'node:net';
import { Readable } from 'node:stream';
import type { Client as UndiciClient, Dispatcher, Pool as UndiciPool } from 'undici';
import type { HeaderMap } from '../auth/provider.js';
import type { Egress } from '../config/egress.js';
import type { KvxConfig } from '../config/schema.js';
import { egressConnector } from '../net/egress-http.js';
import { upstreamTlsOptions } from '../config/tls.js';
import { lazyRequire } from '../util/lazy-require.js';
import { UpstreamError } from './engine.js';
import type { BodySink, ClientSide, Engine, EngineHooks, LocationRewriter, OutgoingBody, OutgoingRequest, ProxyRequest, RefusalKind, UpstreamExchange, UpstreamHandler, UpstreamSide } from './engine.js';
import { clientResponseHeaderList, requestHeaderPlan, upstreamRequestHeaderList } from './headers.js';
import { BodyBatch } from './wire/body.js';
import type { RequestHeaderPlan } from './headers.js';

/**
 * The node engine behind the port: node:http's server for clients and undici's Pool for upstream, public APIs
 * only. It is the fallback for a Node.js whose internal HTTP parser binding the wire engine cannot use (see
 * engine-select.ts), and costs about four times the CPU per request. Where it behaves differently from the wire
 * engine, docs/proxy.md ("Engines") lists it.
 */

/** Both loaded on first use: neither is needed when the wire engine runs (see server.ts on start-up cost). */
const nodeHttp = (): typeof http => lazyRequire('node:http') as typeof http;
function loadPool(): typeof UndiciPool {
  try {
    return lazyRequire('undici/lib/dispatcher/pool.js') as typeof UndiciPool;
  } catch {
    return (lazyRequire('undici') as { Pool: typeof UndiciPool }).Pool;
  }
}
function loadClient(): typeof UndiciClient {
  try {
    return lazyRequire('undici/lib/dispatcher/client.js') as typeof UndiciClient;
  } catch {
    return (lazyRequire('undici') as { Client: typeof UndiciClient }).Client;
  }
}

const CLIENT_CLOSED = 'the client closed its side before sending the whole body';

/** More request headers than this is an attack, not a client (the wire engine's limit). */
const MAX_HEADER_PAIRS = 500;

export class NodeEngine implements Engine {
  readonly name = 'node';
  readonly clients: NodeClients;
  readonly upstream: NodeUpstream;

  constructor(config: KvxConfig, egress: Egress, hooks: EngineHooks) {
    this.clients = new NodeClients(config, hooks);
    this.upstream = new NodeUpstream(config, egress);
  }
}

class NodeClients implements ClientSide {
  readonly server: Server;
  private readonly http: http.Server;
  private readonly sockets = new Set<Socket>();
  /** The request each connection is answering, for the idle timeout and errors the server reports per socket. */
  private readonly current = new WeakMap<Socket, NodeRequest>();
  /** Pipelined requests behind the current one, per connection. */
  private readonly waiting = new WeakMap<Socket, NodeRequest[]>();
  private readonly idleTimeoutMs: number;
  draining = false;

  constructor(
    config: KvxConfig,
    private readonly hooks: EngineHooks,
  ) {
    const { server: s } = config;
    const requestTimeout = s.requestTimeoutMs;
    const shortest = Math.min(s.headersTimeoutMs, s.keepAliveTimeoutMs, config.upstream.idleTimeoutMs, requestTimeout > 0 ? requestTimeout : Infinity);
    const server = (this.http = nodeHttp().createServer({
      maxHeaderSize: s.maxHeaderSize,
      // node:http refuses a headers timeout longer than the request timeout.
      headersTimeout: requestTimeout > 0 ? Math.min(s.headersTimeoutMs, requestTimeout) : s.headersTimeoutMs,
      requestTimeout,
      keepAliveTimeout: s.keepAliveTimeoutMs,
      connectionsCheckingInterval: Math.min(1000, Math.max(10, Math.floor(shortest / 10))),
      // The Host check is the forwarder's (host-guard.ts), as on the wire engine, which accepts a request without one.
      requireHostHeader: false,
      joinDuplicateHeaders: false,
      insecureHTTPParser: false,
      noDelay: true,
    }));
    this.server = server;
    const idleTimeoutMs = (this.idleTimeoutMs = config.upstream.idleTimeoutMs);
    server.on('connection', (socket: Socket) => {
      this.sockets.add(socket);
      socket.once('close', () => this.sockets.delete(socket));
    });
    const onRequest = (req: IncomingMessage, res: ServerResponse): void => {
      if (req.rawHeaders.length > MAX_HEADER_PAIRS * 2) {
        hooks.onClientError('HPE_HEADER_OVERFLOW');
        this.refuseOn(req.socket, 'header_overflow');
        return;
      }
      if (Number(req.headers['content-length'] ?? 0) > Number.MAX_SAFE_INTEGER) {
        // Forwarded, a rounded length would make upstream frame a different body than the client sent.
        hooks.onClientError('content_length_too_large');
        this.refuseOn(req.socket, 'too_large');
        return;
      }
      // As the wire engine: no Date of the proxy's own (upstream's is forwarded).
      res.sendDate = false;
      const request = new NodeRequest(req, res, undefined, this);
      if (this.current.has(req.socket)) {
        // Pipelined: node:http hands over every request it parses; they are forwarded one at a time, as on the wire
        // engine, each once the answer before it is complete.
        let queue = this.waiting.get(req.socket);
        if (queue === undefined) this.waiting.set(req.socket, (queue = []));
        queue.push(request);
        return;
      }
      this.activate(request);
    };
    server.on('request', onRequest);
    // Answered when the forwarder reads the body (NodeRequest.readBody), as the wire engine does.
    server.on('checkContinue', onRequest);
    const refuseUpgrade = (req: IncomingMessage, socket: Socket): void => {
      hooks.onRequest(new NodeRequest(req, undefined, socket, this));
    };
    server.on('upgrade', refuseUpgrade);
    server.on('connect', refuseUpgrade);
    server.on('timeout', (socket: Socket) => {
      const request = this.current.get(socket);
      if (request !== undefined && request.waitingOnUpstreamNow) socket.setTimeout(idleTimeoutMs);
      else socket.destroy();
    });
    server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
      const code = err.code ?? 'socket_error';
      hooks.onClientError(code);
      const request = this.current.get(socket);
      const reset = code === 'ECONNRESET' || code === 'EPIPE';
      if (request !== undefined && !request.finished) {
        // A malformed body of a request under way, or its client gone mid-body: its exchange answers, as on the
        // wire engine, and the connection closes after that answer.
        request.closeAfter = true;
        if (reset || code === 'HPE_INVALID_EOF_STATE') request.bodyFailed(CLIENT_CLOSED, true);
        else request.bodyFailed(`malformed request body (${code})`, false);
        return;
      }
      if (reset || !socket.writable) {
        socket.destroy();
        return;
      }
      const kind: RefusalKind = code === 'HPE_HEADER_OVERFLOW' ? 'header_overflow' : code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 'timeout' : 'bad_request';
      this.refuseOn(socket, kind);
    });
  }

  /** A refusal written straight to the socket, which then closes (as the wire engine refuses). */
  refuseOn(socket: Socket, kind: RefusalKind): void {
    const { status, body } = this.hooks.refusal(kind);
    if (socket.writable) {
      socket.end(`HTTP/1.1 ${status}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nx-kvx-error: bad_request\r\nconnection: close\r\n\r\n${body}`, 'latin1');
    }
    socket.destroySoon();
  }

  private activate(request: NodeRequest): void {
    const socket = request.socket!;
    this.current.set(socket, request);
    // Socket inactivity while the request is under way; node:http resets it to its keep-alive timeout after the answer.
    socket.setTimeout(this.idleTimeoutMs);
    this.hooks.onRequest(request);
  }

  done(request: NodeRequest): void {
    const socket = request.socket;
    if (socket === undefined || this.current.get(socket) !== request) return;
    this.current.delete(socket);
    const queue = this.waiting.get(socket);
    let next: NodeRequest | undefined;
    while ((next = queue?.shift()) !== undefined && next.clientGone);
    if (next !== undefined) this.activate(next);
  }

  get connectionCount(): number {
    return this.sockets.size;
  }

  closeIdle(): void {
    this.draining = true;
    this.http.closeIdleConnections();
  }

  closeAll(): void {
    this.http.closeAllConnections();
    for (const socket of this.sockets) socket.destroy();
  }

  stop(): void {}
}

/** One request on node:http; for Upgrade and CONNECT requests there is only the socket, to answer and close. */
class NodeRequest implements ProxyRequest {
  readonly method: string;
  readonly target: string;
  readonly rawHeaders: string[];
  readonly host: string | undefined;
  readonly requestIdHeader: string | undefined;
  readonly upgrade: boolean;
  readonly contentLength: number;
  readonly chunked: boolean;
  onClientGone: (() => void) | undefined;
  clientGone = false;
  finished = false;
  waitingOnUpstream = false;
  /** The connection cannot carry another request (its request's body broke): it closes after the answer. */
  closeAfter = false;
  private readonly expectContinue: boolean;
  private sink: BodySink | undefined;
  private bodyFailure: [string, boolean] | undefined;

  constructor(
    private readonly req: IncomingMessage,
    private readonly res: ServerResponse | undefined,
    private readonly rawSocket: Socket | undefined,
    private readonly clients: NodeClients,
  ) {
    this.method = req.method ?? 'GET';
    this.target = req.url ?? '';
    this.rawHeaders = req.rawHeaders;
    this.upgrade = res === undefined;
    const headers = req.headers;
    this.host = headers.host;
    let ids = 0;
    let id: string | undefined;
    for (let i = 0; i < req.rawHeaders.length; i += 2) {
      if (req.rawHeaders[i]!.length === 12 && req.rawHeaders[i]!.toLowerCase() === 'x-request-id') {
        ids++;
        id = req.rawHeaders[i + 1];
      }
    }
    this.requestIdHeader = ids === 1 ? id : undefined;
    const length = headers['content-length'];
    this.contentLength = length === undefined ? -1 : Number(length);
    this.chunked = headers['transfer-encoding'] !== undefined;
    this.expectContinue = (headers.expect ?? '').toLowerCase() === '100-continue' && req.httpVersionMinor >= 1 && req.httpVersionMajor === 1;
    if (res !== undefined) {
      res.once('close', () => {
        if (!res.writableFinished) this.gone();
      });
      req.once('close', () => {
        if (!req.complete) this.bodyFailed(CLIENT_CLOSED, true);
      });
    } else {
      rawSocket!.once('close', () => this.gone());
    }
  }

  get socket(): Socket | undefined {
    return this.rawSocket ?? this.req.socket;
  }

  get hasBody(): boolean {
    return this.chunked || this.contentLength > 0;
  }

  get complete(): boolean {
    // node:http hands a request over before it has seen its end, also when it declared no body.
    return this.upgrade || this.req.complete || !this.hasBody;
  }

  get headersSent(): boolean {
    return this.res?.headersSent ?? false;
  }

  /** @internal the idle timeout holds while this is true */
  get waitingOnUpstreamNow(): boolean {
    return this.waitingOnUpstream && !this.finished && this.complete && !this.headersSent;
  }

  private gone(): void {
    if (this.finished || this.clientGone) return;
    this.clientGone = true;
    this.clients.done(this);
    this.onClientGone?.();
  }

  /** @internal */
  bodyFailed(reason: string, clientClosed: boolean): void {
    if (this.bodyFailure !== undefined || this.req.complete) return;
    this.bodyFailure = [reason, clientClosed];
    this.sink?.error(reason, clientClosed);
  }

  readBody(sink: BodySink): void {
    this.sink = sink;
    const { req, res } = this;
    if (this.expectContinue && res !== undefined && !res.headersSent && !req.complete) res.writeContinue();
    if (this.bodyFailure !== undefined) {
      sink.error(this.bodyFailure[0], this.bodyFailure[1]);
      return;
    }
    // The pieces of one read go on together, as on the wire engine (see BodyBatch): node:http emits a 'data'
    // event per chunk of a chunked upload, and undici would send each with its own frame and write.
    const batch = new BodyBatch((chunk) => sink.data(chunk));
    let scheduled = false;
    const flush = (): void => {
      scheduled = false;
      if (this.bodyFailure === undefined) batch.flush();
    };
    req.on('data', (chunk: Buffer) => {
      batch.add(chunk);
      if (!scheduled) {
        // After the read: node:http's parser calls back into JavaScript per chunk, draining the tick queue each time.
        scheduled = true;
        setImmediate(flush);
      }
    });
    req.once('end', () => {
      batch.flush();
      sink.end();
    });
    // 'error' on a request is a body that cannot be completed; 'close' before 'end' reports it too (bodyFailed).
    req.on('error', (err: NodeJS.ErrnoException) => this.bodyFailed(err.code === 'ECONNRESET' ? CLIENT_CLOSED : `malformed request body (${err.code ?? err.message})`, err.code === 'ECONNRESET'));
  }

  pauseBody(): void {
    this.req.pause();
  }

  resumeBody(): void {
    this.req.resume();
  }

  respond(status: number, reason: string, upstreamHeaders: readonly string[], rewriter: LocationRewriter): void {
    const { list } = clientResponseHeaderList(upstreamHeaders, rewriter, this.host);
    this.writeHead(status, reason, list);
  }

  private writeHead(status: number, reason: string, list: string[]): void {
    if (this.closeAfter || this.clients.draining) list.push('connection', 'close');
    this.res!.writeHead(status, reason, list);
  }

  write(chunk: Buffer): boolean {
    if (this.res === undefined || this.res.destroyed) return true;
    return this.res.write(chunk);
  }

  onDrain(callback: () => void): void {
    this.res!.once('drain', callback);
  }

  end(): void {
    if (this.finished) return;
    this.finished = true;
    this.clients.done(this);
    const res = this.res;
    if (res === undefined) return;
    res.end();
    if (!this.closeAfter && this.hasBody && !this.req.complete) {
      // A body left unread (a refused request): node:http reads and drops the rest after the answer, so the client
      // can send it whole and then read its answer; the connection is half-closed once the answer is out, as the
      // wire engine lingers for such a body (a Connection: close header would make node:http reset it instead).
      const socket = this.req.socket;
      res.once('finish', () => socket.end());
    } else if (this.closeAfter && !res.headersSent) this.req.socket.destroySoon();
  }

  destroy(): void {
    this.finished = true;
    this.clients.done(this);
    if (this.res !== undefined) this.res.destroy();
    else this.rawSocket?.destroy();
  }

  reply(status: number, reason: string, headers: readonly string[], body: Buffer): void {
    const socket = this.rawSocket;
    if (socket !== undefined) {
      // An Upgrade or CONNECT request: node:http has handed over the socket; nothing after it is HTTP.
      this.finished = true;
      let head = `HTTP/1.1 ${status} ${reason}\r\n`;
      for (let i = 0; i < headers.length; i += 2) head += `${headers[i]}: ${headers[i + 1]}\r\n`;
      if (socket.writable) socket.end(`${head}content-length: ${body.length}\r\nconnection: close\r\n\r\n${body.toString('latin1')}`, 'latin1');
      socket.destroySoon();
      return;
    }
    const list = [...headers, 'content-length', String(body.length)];
    this.writeHead(status, reason, list);
    if (this.method !== 'HEAD') this.res!.write(body);
    this.end();
  }
}

class NodeUpstream implements UpstreamSide {
  private readonly pool: Dispatcher;
  private readonly origin: string;
  private readonly clientOptions: UndiciClient.Options;
  private readonly plan: RequestHeaderPlan;
  private readonly timeouts: ExchangeTimeouts;

  constructor(config: KvxConfig, egress: Egress) {
    const { upstream } = config;
    this.plan = requestHeaderPlan(config);
    this.origin = new URL(upstream.url).origin;
    this.timeouts = { headersTimeoutMs: upstream.headersTimeoutMs, maxConnections: upstream.maxConnections };
    this.clientOptions = {
      pipelining: 1,
      // The egress proxy's CONNECT tunnel and host aliases, as the wire engine's dial makes them.
      connect: egressConnector(egress, { timeout: upstream.connectTimeoutMs, ...upstreamTlsOptions(upstream) }) ?? {},
      headersTimeout: upstream.headersTimeoutMs,
      bodyTimeout: upstream.idleTimeoutMs,
      keepAliveTimeout: 30_000,
      keepAliveMaxTimeout: 30_000,
      maxHeaderSize: 64 * 1024,
      strictContentLength: true,
    };
    const Pool = loadPool();
    this.pool = new Pool(this.origin, { ...this.clientOptions, connections: upstream.maxConnections });
  }

  open(request: NodeRequest, handler: UpstreamHandler, outgoing: OutgoingRequest): UpstreamExchange {
    request.waitingOnUpstream = true;
    if (outgoing.reuse !== 'new') return new NodeExchange(this.pool, request, handler, outgoing, this.plan, this.timeouts);
    // The re-send after a stale connection: the pool may hold other connections just as stale, so a connection
    // of its own, closed after its answer.
    const Client = loadClient();
    const client = new Client(this.origin, this.clientOptions);
    const exchange = new NodeExchange(client, request, handler, outgoing, this.plan, this.timeouts);
    client.close().catch(() => {});
    return exchange;
  }

  async destroy(): Promise<void> {
    await this.pool.destroy();
  }
}

interface ExchangeTimeouts {
  headersTimeoutMs: number;
  maxConnections: number;
}

/** One exchange through undici, its new handler API translated to the port's. */
class NodeExchange implements UpstreamExchange, Dispatcher.DispatchHandler {
  done = false;
  readonly bodyFlushed = false;
  private controller: Dispatcher.DispatchController | undefined;
  private responseStarted = false;
  private readonly stream: Readable | undefined;
  private drainWaiter: (() => void) | undefined;
  /**
   * undici delivers each chunk of a chunked answer on its own (MLflow sends artifacts as 255-byte chunks): the
   * pieces of one read are passed on together, after the read (see BodyBatch).
   */
  private readonly batch = new BodyBatch((chunk) => {
    if (!this.done) this.handler.onResponseData(chunk);
  });
  private flushScheduled = false;
  /**
   * upstream.headersTimeoutMs from the request handed over whole to its answer, the wait for a connection
   * included (undici's own headers timeout starts only once the request is written), as on the wire engine.
   */
  private headersTimer: NodeJS.Timeout | undefined;
  private handedOverAt = 0;

  constructor(
    pool: Dispatcher,
    request: NodeRequest,
    private readonly handler: UpstreamHandler,
    outgoing: OutgoingRequest,
    plan: RequestHeaderPlan,
    private readonly timeouts: ExchangeTimeouts,
  ) {
    const headers = upstreamRequestHeaderList(request.rawHeaders, plan, outgoing.injected as HeaderMap, outgoing.injectedNames, outgoing.requestId);
    const body: OutgoingBody = outgoing.body;
    let payload: Buffer | Readable | null = null;
    if (body.kind === 'buffer') payload = body.data;
    else if (body.kind === 'stream') {
      if (!body.chunked) headers.push('content-length', String(request.contentLength));
      payload = this.stream = new Readable({
        read: () => {
          const waiter = this.drainWaiter;
          this.drainWaiter = undefined;
          waiter?.();
        },
      });
    }
    pool.dispatch(
      {
        path: outgoing.upstreamPath,
        method: request.method as Dispatcher.HttpMethod,
        headers,
        body: payload,
        // The forwarder decides re-sends itself (after a stale connection); undici must not hold requests back for them.
        idempotent: false,
        blocking: false,
        reset: outgoing.reuse === 'new',
      },
      this,
    );
    if (body.kind !== 'stream') this.startHeadersTimer();
  }

  private startHeadersTimer(): void {
    this.handedOverAt = Date.now();
    this.headersTimer = setTimeout(this.headersTimedOut, this.timeouts.headersTimeoutMs);
  }

  private readonly headersTimedOut = (): void => {
    this.headersTimer = undefined;
    if (this.done || this.responseStarted) return;
    this.done = true;
    this.stream?.destroy();
    const queued = this.controller === undefined;
    this.controller?.abort(new UpstreamError('KVX_ABORTED', 'aborted', true));
    this.handler.onResponseError(
      queued
        ? new UpstreamError('KVX_QUEUE_TIMEOUT', `waited ${Date.now() - this.handedOverAt} ms for a connection: all upstream.maxConnections (${this.timeouts.maxConnections}) were busy`, true)
        : new UpstreamError('KVX_HEADERS_TIMEOUT', 'headers timeout', true),
    );
  };

  private settled(): void {
    this.done = true;
    clearTimeout(this.headersTimer);
    this.headersTimer = undefined;
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.controller = controller;
    if (this.done) controller.abort(new UpstreamError('KVX_ABORTED', 'aborted', true));
  }

  onResponseStart(controller: Dispatcher.DispatchController, statusCode: number, _headers: unknown, statusMessage?: string): void {
    if (this.done) return;
    // undici reports interim answers (103 Early Hints, other 1xx but 100) as response starts; the real one follows.
    if (statusCode >= 100 && statusCode < 200) return;
    if (statusCode < 100 || statusCode > 599) {
      this.settled();
      controller.abort(new UpstreamError('KVX_ABORTED', 'aborted', true));
      this.handler.onResponseError(new UpstreamError('KVX_BAD_STATUS', `upstream answered with status ${statusCode}, not an HTTP status code`, false));
      return;
    }
    this.responseStarted = true;
    clearTimeout(this.headersTimer);
    this.headersTimer = undefined;
    const raw = controller.rawHeaders;
    const list: string[] = [];
    if (Array.isArray(raw)) for (const item of raw) list.push(typeof item === 'string' ? item : item.toString('latin1'));
    this.handler.onResponseHead(statusCode, statusMessage ?? '', list);
  }

  onResponseData(_controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.done) return;
    this.batch.add(chunk);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      process.nextTick(this.flush);
    }
  }

  private readonly flush = (): void => {
    this.flushScheduled = false;
    if (!this.done) this.batch.flush();
  };

  onResponseEnd(): void {
    if (this.done) return;
    this.batch.flush();
    this.settled();
    this.handler.onResponseEnd();
  }

  onResponseError(_controller: Dispatcher.DispatchController, err: Error): void {
    this.stream?.destroy();
    if (this.done) return;
    this.settled();
    this.handler.onResponseError(translate(err, !this.responseStarted));
  }

  write(chunk: Buffer): boolean {
    if (this.done || this.stream === undefined) return true;
    return this.stream.push(chunk);
  }

  onDrain(callback: () => void): void {
    this.drainWaiter = callback;
  }

  end(): void {
    if (this.done || this.stream === undefined) return;
    this.stream.push(null);
    this.startHeadersTimer();
  }

  pause(): void {
    this.controller?.pause();
  }

  resume(): void {
    this.controller?.resume();
  }

  abort(): void {
    if (this.done) return;
    this.settled();
    this.controller?.abort(new UpstreamError('KVX_ABORTED', 'aborted', !this.responseStarted));
    this.stream?.destroy();
  }
}

/** undici's errors as the port's codes, so that one classification (forward.ts) serves both engines. */
function translate(err: Error, beforeResponse: boolean): UpstreamError {
  const code = (err as { code?: string }).code ?? '';
  const cause = (err as { cause?: { code?: string; message?: string } }).cause;
  switch (code) {
    case 'UND_ERR_CONNECT_TIMEOUT':
      return new UpstreamError('KVX_CONNECT_TIMEOUT', 'connect timeout', true);
    case 'UND_ERR_HEADERS_TIMEOUT':
      return new UpstreamError('KVX_HEADERS_TIMEOUT', 'headers timeout', true);
    case 'UND_ERR_BODY_TIMEOUT':
      return new UpstreamError('KVX_BODY_TIMEOUT', 'body timeout', false);
    case 'UND_ERR_SOCKET':
    case 'UND_ERR_CLOSED':
    case 'UND_ERR_DESTROYED':
      // A 100 Continue nobody asked for, or a 101 to a request that asked for no upgrade.
      if (/^bad (response|upgrade)$/.test(err.message)) return new UpstreamError('KVX_BAD_RESPONSE', `upstream sent an unexpected answer (${err.message})`, beforeResponse);
      if (cause?.code && cause.code !== 'UND_ERR_SOCKET' && /^E[A-Z]+$/.test(cause.code) && cause.code !== 'ECONNRESET') return new UpstreamError(cause.code, cause.message ?? err.message, beforeResponse);
      return new UpstreamError('KVX_UPSTREAM_CLOSED', beforeResponse ? 'closed before answering' : 'closed mid-response', beforeResponse);
    case 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH':
      // undici also reports conflicting Content-Lengths this way, not only a body cut short.
      return new UpstreamError('KVX_BAD_RESPONSE', err.message, beforeResponse);
    case 'UND_ERR_INFO':
    case 'UND_ERR_NOT_SUPPORTED':
      return new UpstreamError('KVX_BAD_RESPONSE', err.message, beforeResponse);
  }
  // OpenSSL's handshake failures: the wire engine's TLS sockets report them as EPROTO with the reason in the message.
  if (code.startsWith('ERR_SSL_') && /SSL routines/.test(err.message)) return new UpstreamError('EPROTO', err.message, true);
  if (err.name === 'HTTPParserError' || code.startsWith('HPE_')) return new UpstreamError(code.startsWith('HPE_') ? code : 'KVX_BAD_RESPONSE', `malformed response (${code || err.message})`, beforeResponse);
  if (/invalid status code|status code/i.test(err.message) && code === '') return new UpstreamError('KVX_BAD_STATUS', err.message, beforeResponse);
  return new UpstreamError(code || 'KVX_BAD_RESPONSE', err.message, beforeResponse);
}
