import { performance } from 'node:perf_hooks';
import type { HeaderInjector } from '../auth/injector.js';
import type { HeaderMap } from '../auth/provider.js';
import type { KvxConfig } from '../config/schema.js';
import { CLIENT_CREDENTIAL_HEADERS } from '../config/validate.js';
import { CredentialsError, errorMessage } from '../errors.js';
import type { Logger } from '../log/logger.js';
import { safePathForLog } from '../log/logger.js';
import { sendProxyError } from './errors.js';
import type { ProxyErrorKind } from './errors.js';
import { clientResponseHead, upstreamRequestHead } from './headers.js';
import type { RequestHeaderPlan } from './headers.js';
import type { ProxyMetrics } from './metrics.js';
import type { BodySink, ClientRequest } from './wire/client-connection.js';
import { releaseNow } from './wire/body.js';
import type { RequestBody, ResponseHandler, UpstreamError, UpstreamPool, UpstreamRequest } from './wire/upstream-pool.js';

export interface ForwarderOptions {
  config: KvxConfig;
  pool: UpstreamPool;
  injector: HeaderInjector;
  logger: Logger;
  metrics: ProxyMetrics;
}

/**
 * Dot segments, raw or percent-encoded, also between encoded slashes or backslashes (`..%2f`, `%5c..`): an
 * upstream that decodes and normalises them could be walked out of its prefix.
 */
const DOT_SEGMENT = /(?:^|\/|\\|%2f|%5c)(?:\.|%2e){1,2}(?:\/|\\|%2f|%5c|\?|$)/i;
const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;
/**
 * Bodies up to this size are read whole before dispatch even when they cannot be replayed: the head and a
 * buffered body leave in one write, where a streamed body costs a write and a callback per chunk.
 */
const SMALL_BODY_BYTES = 64 * 1024;
/** Errors before any response byte that mean a reused keep-alive connection was closed under the request. */
const STALE_SOCKET_CODES = new Set(['KVX_UPSTREAM_CLOSED', 'ECONNRESET', 'EPIPE']);
/** Methods whose requests carry a body by convention: sent with Content-Length: 0 when they have none (some front ends answer 411 otherwise). */
const BODY_EXPECTED = new Set(['POST', 'PUT', 'PATCH']);
const NO_BODY: RequestBody = { kind: 'none' };
const CHUNKED_STREAM: RequestBody = { kind: 'stream', chunked: true };
const LENGTH_STREAM: RequestBody = { kind: 'stream', chunked: false };

/**
 * The request path: checks the target, obtains credential headers, sends the request upstream and streams
 * the answer back with backpressure both ways. One Exchange per request carries the state.
 */
export class Forwarder {
  readonly inFlight = new Set<Exchange>();
  /** Requests handed to the forwarder so far; tells the idle memory reducer whether traffic has stopped. */
  requestsStarted = 0;
  draining = false;
  /** Called after every request ends; the server uses it to finish a drain promptly. */
  onExchangeDone: (() => void) | undefined;
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

  readonly handle = (req: ClientRequest): void => {
    const exchange = new Exchange(this, req);
    this.requestsStarted++;
    this.inFlight.add(exchange);
    exchange.start();
  };

  nextRequestId(incoming: string | undefined): string {
    if (incoming !== undefined && REQUEST_ID.test(incoming)) return incoming;
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

/** Exported for the tests that prove finished exchanges are collected. */
export class Exchange implements ResponseHandler, BodySink {
  private readonly started = performance.now();
  private requestId = '';
  private upstream: UpstreamRequest | undefined;
  private injected: HeaderMap | undefined;
  private body: RequestBody = NO_BODY;
  private collected: Buffer[] | undefined;
  private replayable = false;
  private replayed = false;
  private retriedStaleSocket = false;
  private responseStarted = false;
  private finished = false;
  private status = 0;
  private bytesIn = 0;
  private bytesOut = 0;
  private errorKind: string | undefined;
  private waitingForClientDrain = false;
  private waitingForUpstreamDrain = false;

  constructor(
    private readonly forwarder: Forwarder,
    private readonly req: ClientRequest,
  ) {}

  start(): void {
    const { req, forwarder } = this;
    forwarder.options.metrics.inFlight.inc();
    req.onClientGone = this.onClientGone;
    this.requestId = forwarder.nextRequestId(req.requestIdHeader);

    if (req.upgrade) {
      if (req.method === 'CONNECT') this.fail('method_not_allowed', 'CONNECT is refused: kvx-proxy is a reverse proxy for one MLflow server, not a forward proxy');
      else this.fail('not_implemented', 'protocol upgrades are not supported; MLflow does not use them');
      return;
    }
    const target = req.target;
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

    if (req.hasBody) {
      const canReplay = forwarder.retryOn.size > 0 && forwarder.options.injector.canRefresh;
      if (!req.chunked && req.contentLength <= (canReplay ? forwarder.replayLimit : SMALL_BODY_BYTES)) {
        // Read whole: it can be re-sent after a 401, and a buffer goes out with the headers in one write.
        this.replayable = canReplay;
        this.collected = [];
        req.readBody(this);
        return;
      }
      // Streamed: held back until upstream is ready for it.
      this.body = req.chunked ? CHUNKED_STREAM : LENGTH_STREAM;
      req.pauseBody();
    } else {
      this.replayable = true;
    }
    this.withCredentials();
  }

  // BodySink: the client's body, collected or streamed.
  data(chunk: Buffer): void {
    this.bytesIn += chunk.length;
    if (this.collected !== undefined) {
      this.collected.push(chunk);
      return;
    }
    const upstream = this.upstream;
    if (upstream !== undefined && !upstream.write(chunk) && !this.waitingForUpstreamDrain) {
      this.waitingForUpstreamDrain = true;
      this.req.pauseBody();
      upstream.onDrain(this.upstreamDrained);
    }
  }

  private readonly upstreamDrained = (): void => {
    this.waitingForUpstreamDrain = false;
    this.req.resumeBody();
  };

  end(): void {
    const collected = this.collected;
    if (collected !== undefined) {
      this.collected = undefined;
      let data = collected[0]!;
      if (collected.length > 1) {
        data = Buffer.concat(collected);
        for (const chunk of collected) releaseNow(chunk);
      }
      this.body = { kind: 'buffer', data };
      this.withCredentials();
      return;
    }
    this.upstream?.end();
    this.req.waitingOnUpstream = !this.responseStarted;
  }

  error(reason: string, clientClosed: boolean): void {
    if (this.finished) return;
    this.upstream?.abort();
    const status = sendProxyError(this.req, 'bad_request', `the request body is incomplete: ${reason}`);
    // A client that hung up mid-body abandoned its request: it is counted as gone, whatever it may still read.
    this.finish(clientClosed ? 499 : status);
  }

  private withCredentials(): void {
    if (this.req.clientGone) return this.finish(499);
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
    const { req, forwarder } = this;
    if (req.clientGone || this.finished) return this.finish(499);
    const injected = this.injected!;
    const injectedLower = new Set<string>();
    for (const name in injected) injectedLower.add(name.toLowerCase());
    const body = this.body;
    const framing =
      body.kind === 'buffer'
        ? `content-length: ${body.data.length}\r\n`
        : body.kind === 'stream'
          ? body.chunked
            ? 'transfer-encoding: chunked\r\n'
            : `content-length: ${req.contentLength}\r\n`
          : BODY_EXPECTED.has(req.method)
            ? 'content-length: 0\r\n'
            : '';
    const head = upstreamRequestHead(req.method, forwarder.upstreamPath(req.target), req.rawHeaders, forwarder.headers, injected, injectedLower, this.requestId, framing);
    this.responseStarted = false;
    const streaming = body.kind === 'stream';
    req.waitingOnUpstream = !streaming || req.complete;
    this.upstream = forwarder.options.pool.request(this, head, body, req.method === 'HEAD');
    if (streaming && !this.upstream.done) {
      req.readBody(this);
      req.resumeBody();
    }
  }

  onResponseHead(status: number, reason: string, headers: string[]): void {
    const { req, forwarder } = this;
    if (this.replayable && !this.replayed && forwarder.retryOn.has(status) && forwarder.options.injector.canRefresh) {
      this.replayed = true;
      this.upstream!.abort();
      this.replay();
      return;
    }
    this.responseStarted = true;
    req.waitingOnUpstream = false;
    this.status = status;
    const { lines, hasLength } = clientResponseHead(headers, (location) => forwarder.rewriteLocation(location, req.host));
    const noBody = req.method === 'HEAD' || status === 204 || status === 304;
    req.writeHead(status, reason, lines, noBody ? 'none' : hasLength ? 'length' : 'chunked');
  }

  onResponseData(chunk: Buffer): void {
    this.bytesOut += chunk.length;
    if (!this.req.write(chunk) && !this.waitingForClientDrain) {
      this.waitingForClientDrain = true;
      this.upstream!.pause();
      this.req.onDrain(this.clientDrained);
    }
  }

  private readonly clientDrained = (): void => {
    this.waitingForClientDrain = false;
    this.upstream?.resume();
  };

  onResponseEnd(): void {
    this.req.end();
    this.finish(this.status);
  }

  onResponseError(err: UpstreamError): void {
    const { req, forwarder } = this;
    if (req.clientGone) {
      this.finish(499);
      return;
    }
    if (
      err.beforeResponse &&
      !this.retriedStaleSocket &&
      (req.method === 'GET' || req.method === 'HEAD') &&
      this.body.kind === 'none' &&
      STALE_SOCKET_CODES.has(err.code)
    ) {
      // A keep-alive socket closed by upstream just as the request went out: nothing was processed.
      this.retriedStaleSocket = true;
      this.dispatch();
      return;
    }
    const { kind, message } = classifyUpstreamError(err, forwarder.options.config);
    this.errorKind = kind;
    forwarder.options.metrics.upstreamError(kind);
    forwarder.options.logger.warn('upstream request failed', { id: this.requestId, kind, error: message });
    if (this.responseStarted) {
      // Status already sent; breaking the connection is how the client learns the body is incomplete.
      req.destroy();
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
        if (this.req.clientGone) return this.finish(499);
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

  private readonly onClientGone = (): void => {
    this.upstream?.abort();
    this.finish(499);
  };

  private fail(kind: ProxyErrorKind, message: string, extra: Record<string, string | number> = {}): void {
    if (this.finished) return;
    const status = sendProxyError(this.req, kind, message, extra);
    this.finish(status);
  }

  private finish(status: number): void {
    if (this.finished) return;
    this.finished = true;
    const { forwarder, req } = this;
    forwarder.inFlight.delete(this);
    req.waitingOnUpstream = false;
    // A buffered body can no longer be replayed; free it if the socket is done with it.
    if (this.body.kind === 'buffer' && this.upstream?.bodyFlushed === true) releaseNow(this.body.data);
    const { metrics, logger } = forwarder.options;
    metrics.inFlight.dec();
    const seconds = (performance.now() - this.started) / 1000;
    metrics.requestDone(req.method, status, seconds, this.bytesIn, this.bytesOut);
    if (forwarder.logsRequests) {
      // Serialised by hand: this line is written for every request. The id is either generated or checked
      // against REQUEST_ID and the method is an HTTP token, so neither needs escaping; the path does.
      let line =
        `,"id":"${this.requestId}","method":"${req.method}","path":${JSON.stringify(safePathForLog(req.target))}` +
        `,"status":${status},"bytesIn":${this.bytesIn},"bytesOut":${this.bytesOut},"durationMs":${Math.round(seconds * 1e6) / 1000}`;
      if (this.errorKind) line += `,"error":"${this.errorKind}"`;
      if (this.replayed) line += ',"replayed":true';
      logger.infoSerialized('request', line);
    }
    forwarder.onExchangeDone?.();
  }
}

type UpstreamErrorKind = 'connect_timeout' | 'headers_timeout' | 'body_timeout' | 'unreachable' | 'tls' | 'bad_response' | 'reset';

function classifyUpstreamError(err: UpstreamError, config: KvxConfig): { kind: UpstreamErrorKind; message: string } {
  const code = err.code;
  const upstream = config.upstream.url;
  switch (code) {
    case 'KVX_CONNECT_TIMEOUT':
      return { kind: 'connect_timeout', message: `connecting to ${upstream} took longer than upstream.connectTimeoutMs (${config.upstream.connectTimeoutMs} ms); check the network path to the server` };
    case 'KVX_HEADERS_TIMEOUT':
      return { kind: 'headers_timeout', message: `${upstream} sent no response within upstream.headersTimeoutMs (${config.upstream.headersTimeoutMs} ms)` };
    case 'KVX_BODY_TIMEOUT':
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
    case 'KVX_UPSTREAM_CLOSED':
      return {
        kind: 'reset',
        message: err.beforeResponse ? `${upstream} closed the connection before answering` : `${upstream} closed the connection in the middle of its answer`,
      };
    case 'HPE_INVALID_EOF_STATE':
      return { kind: 'bad_response', message: `${upstream} ended its answer before the body its headers announced` };
    default:
      if (code.startsWith('HPE_') || code === 'KVX_BAD_RESPONSE') return { kind: 'bad_response', message: `${upstream} sent a malformed HTTP response` };
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
