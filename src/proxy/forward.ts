import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import type { Dispatcher } from 'undici';
import type { HeaderInjector } from '../auth/injector.js';
import type { HeaderMap } from '../auth/provider.js';
import type { KvxConfig } from '../config/schema.js';
import { CLIENT_CREDENTIAL_HEADERS } from '../config/validate.js';
import { CredentialsError, errorMessage } from '../errors.js';
import type { Logger } from '../log/logger.js';
import { safePathForLog } from '../log/logger.js';
import { sendProxyError } from './errors.js';
import type { ProxyErrorKind } from './errors.js';
import { clientResponseHeaders, upstreamRequestHeaders } from './headers.js';
import type { RequestHeaderPlan } from './headers.js';
import type { ProxyMetrics } from './metrics.js';

export interface ForwarderOptions {
  config: KvxConfig;
  dispatcher: Dispatcher;
  injector: HeaderInjector;
  logger: Logger;
  metrics: ProxyMetrics;
}

/** Marks a dispatch we aborted on purpose so its error is not reported as an upstream failure. */
class ReplayRequested extends Error {}
class ClientGone extends Error {}

/**
 * Dot segments, raw or percent-encoded, also between encoded slashes or backslashes (`..%2f`, `%5c..`): an
 * upstream that decodes and normalises them could be walked out of its prefix.
 */
const DOT_SEGMENT = /(?:^|\/|\\|%2f|%5c)(?:\.|%2e){1,2}(?:\/|\\|%2f|%5c|\?|$)/i;
const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;
/**
 * Bodies up to this size are read whole before dispatch even when they cannot be replayed: undici sends a
 * buffer in one write, while a streamed body costs a stream pipeline per request (measured: a 25 KB log-batch
 * POST took about twice the CPU of a GET when streamed).
 */
const SMALL_BODY_BYTES = 64 * 1024;
const BODYLESS_RETRY_CODES = new Set(['UND_ERR_SOCKET', 'ECONNRESET', 'EPIPE']);

/**
 * The request path: checks the target, obtains credential headers, dispatches to upstream through undici
 * and streams the answer back with backpressure both ways. One Exchange per request carries the state.
 */
export class Forwarder {
  readonly inFlight = new Set<Exchange>();
  draining = false;
  /** Called after every request ends; the server uses it to finish a drain promptly. */
  onExchangeDone: (() => void) | undefined;
  /** Client sockets whose request is complete and waits on upstream for its answer. */
  private readonly awaiting = new WeakMap<Socket, Exchange>();
  private readonly headerPlan: RequestHeaderPlan;
  private readonly prefix: string;
  private readonly upstreamBase: string;
  private readonly retryStatuses: ReadonlySet<number>;
  private readonly replayMaxBytes: number;
  private readonly logRequests: boolean;
  private idCounter = 0;
  private readonly idPrefix = `${process.pid.toString(36)}-${Date.now().toString(36)}-`;

  constructor(readonly options: ForwarderOptions) {
    const { config } = options;
    const url = new URL(config.upstream.url);
    this.prefix = url.pathname.replace(/\/+$/, '');
    this.upstreamBase = url.origin + this.prefix;
    const preserved = new Set(config.headers.preserve.map((h) => h.toLowerCase()));
    this.headerPlan = {
      stripped: new Set(CLIENT_CREDENTIAL_HEADERS.filter((h) => !preserved.has(h))),
      upstreamHost: url.host,
    };
    this.retryStatuses = new Set(config.auth.retryOnStatus);
    this.replayMaxBytes = config.auth.replayMaxBodyBytes;
    this.logRequests = config.log.requests && options.logger.enabled('info');
  }

  readonly handle = (req: IncomingMessage, res: ServerResponse): void => {
    const exchange = new Exchange(this, req, res);
    this.inFlight.add(exchange);
    exchange.start();
  };

  /**
   * Whether the client has sent its whole request and waits on upstream. Then the client is not idle by
   * its own fault: upstream.headersTimeoutMs governs, and ends with a 504 rather than a dropped connection.
   */
  awaitingUpstream(socket: Socket): boolean {
    return this.awaiting.get(socket)?.waitingForAnswer === true;
  }

  markAwaiting(socket: Socket, exchange: Exchange, waiting: boolean): void {
    if (waiting) this.awaiting.set(socket, exchange);
    else if (this.awaiting.get(socket) === exchange) this.awaiting.delete(socket);
  }

  nextRequestId(incoming: string | string[] | undefined): string {
    if (typeof incoming === 'string' && REQUEST_ID.test(incoming)) return incoming;
    return this.idPrefix + (this.idCounter++).toString(36);
  }

  upstreamPath(target: string): string {
    return this.prefix + target;
  }

  rewriteLocation(location: string, clientHost: string | undefined): string {
    if (location.startsWith(this.upstreamBase)) {
      const rest = location.slice(this.upstreamBase.length);
      if (rest === '' || rest.startsWith('/') || rest.startsWith('?')) {
        return clientHost ? `http://${clientHost}${rest.startsWith('/') ? rest : '/' + rest}` : rest || '/';
      }
    }
    if (this.prefix && location.startsWith(this.prefix + '/')) return location.slice(this.prefix.length);
    return location;
  }

  get headers(): RequestHeaderPlan {
    return this.headerPlan;
  }

  get retryOn(): ReadonlySet<number> {
    return this.retryStatuses;
  }

  get replayLimit(): number {
    return this.replayMaxBytes;
  }

  get logsRequests(): boolean {
    return this.logRequests;
  }
}

class Exchange implements Dispatcher.DispatchHandler {
  private readonly started = performance.now();
  private requestId = '';
  private controller: Dispatcher.DispatchController | undefined;
  private injected: HeaderMap | undefined;
  private body: Buffer | IncomingMessage | null = null;
  private replayable = false;
  private replayed = false;
  private retriedStaleSocket = false;
  private responseStarted = false;
  private clientGone = false;
  private finished = false;
  private status = 0;
  private bytesIn = 0;
  private bytesOut = 0;
  private errorKind: string | undefined;
  private dispatched = false;

  constructor(
    private readonly forwarder: Forwarder,
    private readonly req: IncomingMessage,
    private readonly res: ServerResponse,
  ) {}

  get waitingForAnswer(): boolean {
    return this.dispatched && !this.responseStarted && !this.finished && this.req.complete;
  }

  start(): void {
    const { req, res, forwarder } = this;
    forwarder.options.metrics.inFlight.inc();
    res.on('close', this.onClientClose);
    this.requestId = forwarder.nextRequestId(req.headers['x-request-id']);
    if (forwarder.draining) res.shouldKeepAlive = false;

    const target = req.url ?? '';
    if (target.charCodeAt(0) !== 47 /* '/' */) {
      this.fail(
        'forbidden_target',
        target === '*' || target === ''
          ? 'request target must be a path'
          : 'absolute-form request targets are refused: kvx-proxy is a reverse proxy for one MLflow server, not a forward proxy; use it as the tracking URI',
      );
      return;
    }
    if (req.method === 'TRACE') {
      // An upstream that implements TRACE echoes the request, injected credentials included, back to the client.
      this.fail('method_not_allowed', 'TRACE is refused: it would echo the injected credentials back to the client');
      return;
    }
    const queryAt = target.indexOf('?');
    if (DOT_SEGMENT.test(queryAt === -1 ? target : target.slice(0, queryAt))) {
      this.fail('bad_request', 'request paths with "." or ".." segments are refused');
      return;
    }

    const hasBody = req.headers['content-length'] !== undefined ? req.headers['content-length'] !== '0' : req.headers['transfer-encoding'] !== undefined;
    if (hasBody) {
      const length = Number(req.headers['content-length']);
      const canReplay = forwarder.retryOn.size > 0 && forwarder.options.injector.canRefresh;
      if (Number.isFinite(length) && length <= (canReplay ? forwarder.replayLimit : SMALL_BODY_BYTES)) {
        this.replayable = canReplay;
        this.collectBody(length);
        return;
      }
      if (!Number.isFinite(length)) req.on('data', this.countChunk);
      else this.bytesIn = length;
      this.body = req;
    } else {
      this.replayable = true;
    }
    this.withCredentials();
  }

  private collectBody(length: number): void {
    const chunks: Buffer[] = [];
    const { req } = this;
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      this.body = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
      this.bytesIn = this.body.length;
      if (this.body.length !== length) {
        this.fail('bad_request', `request body has ${this.body.length} bytes but Content-Length says ${length}`);
        return;
      }
      this.withCredentials();
    });
  }

  private readonly countChunk = (chunk: Buffer): void => {
    this.bytesIn += chunk.length;
  };

  private withCredentials(): void {
    if (this.clientGone) return this.finish(499);
    let headers: HeaderMap | Promise<HeaderMap>;
    try {
      headers = this.forwarder.options.injector.headers();
    } catch (err) {
      return this.credentialsFailed(err);
    }
    if (headers instanceof Promise) {
      headers.then(
        (h) => {
          this.injected = h;
          this.dispatch();
        },
        (err: unknown) => this.credentialsFailed(err),
      );
    } else {
      this.injected = headers;
      this.dispatch();
    }
  }

  private credentialsFailed(err: unknown): void {
    const retryAfter = err instanceof CredentialsError ? err.retryAfterSeconds : 5;
    const hint = err instanceof CredentialsError && err.hint ? ` (${err.hint})` : '';
    this.errorKind = 'credentials';
    this.forwarder.options.logger.warn('credentials unavailable; request refused', { id: this.requestId, error: errorMessage(err) });
    this.fail('credentials_unavailable', `credentials unavailable: ${errorMessage(err)}${hint}`, { 'retry-after': retryAfter });
  }

  private dispatch(): void {
    if (this.clientGone) return this.finish(499);
    const { req, forwarder } = this;
    const injected = this.injected!;
    const injectedLower = new Set<string>();
    for (const name in injected) injectedLower.add(name.toLowerCase());
    const headers = upstreamRequestHeaders(req.rawHeaders, forwarder.headers, injected, injectedLower, this.requestId);
    this.responseStarted = false;
    this.dispatched = true;
    forwarder.markAwaiting(req.socket, this, true);
    forwarder.options.dispatcher.dispatch(
      {
        path: forwarder.upstreamPath(req.url!),
        method: req.method as Dispatcher.HttpMethod,
        headers,
        body: this.body,
        // Streams cannot be re-sent; undici must not retry them on a reset connection.
        idempotent: this.body === null || Buffer.isBuffer(this.body) ? req.method === 'GET' || req.method === 'HEAD' : false,
        blocking: false,
      },
      this,
    );
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.controller = controller;
    if (this.clientGone) controller.abort(new ClientGone('client closed the connection'));
  }

  onResponseStart(controller: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders): void {
    if (this.replayable && !this.replayed && this.forwarder.retryOn.has(statusCode) && this.forwarder.options.injector.canRefresh) {
      this.replayed = true;
      controller.abort(new ReplayRequested(`upstream answered ${statusCode}`));
      return;
    }
    this.responseStarted = true;
    this.status = statusCode;
    const host = this.req.headers.host;
    try {
      this.res.writeHead(
        statusCode,
        clientResponseHeaders(headers, (location) => this.forwarder.rewriteLocation(location, host)),
      );
    } catch (err) {
      this.errorKind = 'bad_response';
      this.forwarder.options.logger.warn('upstream response headers not forwardable', { id: this.requestId, error: errorMessage(err) });
      controller.abort(new ClientGone('bad upstream headers'));
      this.res.removeHeader('content-length');
      this.fail('upstream_bad_response', 'upstream sent response headers that cannot be forwarded');
    }
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    this.bytesOut += chunk.length;
    if (!this.res.write(chunk)) {
      controller.pause();
      this.res.once('drain', () => controller.resume());
    }
  }

  onResponseEnd(): void {
    this.res.end();
    this.finish(this.status);
  }

  onResponseError(_controller: Dispatcher.DispatchController, err: Error): void {
    if (err instanceof ReplayRequested) {
      this.replay();
      return;
    }
    if (this.clientGone || err instanceof ClientGone) {
      this.finish(this.finished ? this.status : 499);
      return;
    }
    if (
      !this.responseStarted &&
      !this.retriedStaleSocket &&
      (this.req.method === 'GET' || this.req.method === 'HEAD') &&
      this.body === null &&
      BODYLESS_RETRY_CODES.has((err as { code?: string }).code ?? '')
    ) {
      // A keep-alive socket closed by upstream just as the request went out: nothing was processed.
      this.retriedStaleSocket = true;
      this.dispatch();
      return;
    }
    const { kind, message } = classifyUpstreamError(err, this.forwarder.options.config);
    this.errorKind = kind;
    this.forwarder.options.metrics.upstreamError(kind);
    this.forwarder.options.logger.warn('upstream request failed', { id: this.requestId, kind, error: message });
    if (this.responseStarted) {
      // Status already sent; breaking the connection is how the client learns the body is incomplete.
      this.res.destroy();
      this.finish(this.status);
      return;
    }
    this.fail(kindToProxyError(kind), message);
  }

  private replay(): void {
    const { injector, metrics, logger } = this.forwarder.options;
    const rejected = this.injected!;
    injector.invalidate(rejected).then(
      () => {
        if (this.clientGone) return this.finish(499);
        let next: HeaderMap | Promise<HeaderMap>;
        try {
          next = injector.headers();
        } catch (err) {
          metrics.replay('refresh_failed');
          return this.credentialsFailed(err);
        }
        Promise.resolve(next).then(
          (headers) => {
            metrics.replay('success');
            logger.info('credentials refreshed after upstream rejection; replaying request', { id: this.requestId });
            this.injected = headers;
            this.dispatch();
          },
          (err: unknown) => {
            metrics.replay('refresh_failed');
            this.credentialsFailed(err);
          },
        );
      },
      (err: unknown) => {
        metrics.replay('refresh_failed');
        this.credentialsFailed(err);
      },
    );
  }

  private readonly onClientClose = (): void => {
    if (this.res.writableFinished) return;
    this.clientGone = true;
    if (this.controller) this.controller.abort(new ClientGone('client closed the connection'));
    // Nothing dispatched yet (waiting on credentials, the body or a pool slot): account for it now.
    else this.finish(499);
  };

  private fail(kind: ProxyErrorKind, message: string, extra: Record<string, string | number> = {}): void {
    // node:http calls the handler before it marks a bodyless request complete; only an unread body forces a close
    // (closing needlessly would also drop the answers to requests pipelined behind this one).
    const { headers } = this.req;
    const hasBody = headers['transfer-encoding'] !== undefined || (headers['content-length'] !== undefined && headers['content-length'] !== '0');
    const bodyUnread = hasBody && !this.req.complete;
    const status = sendProxyError(this.res, kind, message, bodyUnread ? { ...extra, connection: 'close' } : extra);
    this.finish(status);
  }

  private finish(status: number): void {
    if (this.finished) return;
    this.finished = true;
    const { forwarder, req } = this;
    forwarder.inFlight.delete(this);
    forwarder.markAwaiting(req.socket, this, false);
    const { metrics, logger } = forwarder.options;
    metrics.inFlight.dec();
    const seconds = (performance.now() - this.started) / 1000;
    metrics.requestDone(req.method ?? 'OTHER', status, seconds, this.bytesIn, this.bytesOut);
    if (forwarder.logsRequests) {
      // Serialised by hand: this line is written for every request. The id is either generated or checked
      // against REQUEST_ID and the method is an HTTP token, so neither needs escaping; the path does.
      let line =
        `,"id":"${this.requestId}","method":"${req.method}","path":${JSON.stringify(safePathForLog(req.url ?? ''))}` +
        `,"status":${status},"bytesIn":${this.bytesIn},"bytesOut":${this.bytesOut},"durationMs":${Math.round(seconds * 1e6) / 1000}`;
      if (this.errorKind) line += `,"error":"${this.errorKind}"`;
      if (this.replayed) line += ',"replayed":true';
      logger.infoSerialized('request', line);
    }
    forwarder.onExchangeDone?.();
  }
}

type UpstreamErrorKind = 'connect_timeout' | 'headers_timeout' | 'body_timeout' | 'unreachable' | 'tls' | 'bad_response' | 'reset';

function classifyUpstreamError(err: Error, config: KvxConfig): { kind: UpstreamErrorKind; message: string } {
  const code = (err as { code?: string }).code ?? '';
  const upstream = config.upstream.url;
  switch (code) {
    case 'UND_ERR_CONNECT_TIMEOUT':
      return { kind: 'connect_timeout', message: `connecting to ${upstream} took longer than upstream.connectTimeoutMs (${config.upstream.connectTimeoutMs} ms); check the network path to the server` };
    case 'UND_ERR_HEADERS_TIMEOUT':
      return { kind: 'headers_timeout', message: `${upstream} sent no response within upstream.headersTimeoutMs (${config.upstream.headersTimeoutMs} ms)` };
    case 'UND_ERR_BODY_TIMEOUT':
      return { kind: 'body_timeout', message: `${upstream} stalled for longer than upstream.idleTimeoutMs (${config.upstream.idleTimeoutMs} ms)` };
    case 'ECONNREFUSED':
      return { kind: 'unreachable', message: `${upstream} refused the connection; check upstream.url and that the MLflow server is running` };
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return { kind: 'unreachable', message: `cannot resolve the host of ${upstream}; check upstream.url and DNS` };
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return { kind: 'unreachable', message: `no network route to ${upstream}` };
    case 'ECONNRESET':
    case 'EPIPE':
    case 'UND_ERR_SOCKET':
    case 'UND_ERR_CLOSED':
      return { kind: 'reset', message: `${upstream} closed the connection before answering` };
    case 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH':
      return { kind: 'bad_response', message: `${upstream} sent a body that does not match its Content-Length` };
    default:
      // undici's HTTPParserError usually carries no code (its llhttp error table is keyed by name), so match the name too.
      if (code.startsWith('HPE_') || code === 'UND_ERR_INFO' || err.name === 'HTTPParserError') return { kind: 'bad_response', message: `${upstream} sent a malformed HTTP response` };
      if (code.startsWith('ERR_TLS') || code.startsWith('ERR_SSL') || code.includes('CERT') || code === 'UNABLE_TO_VERIFY_LEAF_SIGNATURE') {
        return { kind: 'tls', message: `TLS with ${upstream} failed (${code}); check upstream.caFile, or the server's certificate` };
      }
      return { kind: 'unreachable', message: `request to ${upstream} failed (${code || errorMessage(err)})` };
  }
}

function kindToProxyError(kind: UpstreamErrorKind): ProxyErrorKind {
  switch (kind) {
    case 'connect_timeout':
    case 'headers_timeout':
    case 'body_timeout':
      return 'upstream_timeout';
    case 'tls':
      return 'upstream_tls';
    case 'bad_response':
      return 'upstream_bad_response';
    default:
      return 'upstream_unreachable';
  }
}
