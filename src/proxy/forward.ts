import { performance } from 'node:perf_hooks';
import type { HeaderInjector } from '../auth/injector.js';
import type { HeaderMap, RequestHeaderOptions } from '../auth/provider.js';
import type { KvxConfig } from '../config/schema.js';
import { CredentialsError, errorMessage } from '../errors.js';
import type { Logger } from '../log/logger.js';
import { safePathForLog } from '../log/logger.js';
import { sendProxyError } from './errors.js';
import type { ProxyErrorKind } from './errors.js';
import { HeaderNameSet, NO_HEADER_NAMES } from './header-names.js';
import { HostGuard } from './host-guard.js';
import { AuthAnswerReader } from './iap.js';
import type { GuardRefusal } from './host-guard.js';
import type { ProxyMetrics, ReplayResult } from './metrics.js';
import type { BodySink, LocationRewriter, OutgoingBody, OutgoingRequest, ProxyRequest, ReuseMode, UpstreamError, UpstreamExchange, UpstreamHandler, UpstreamSide } from './engine.js';
import { releaseNow } from './wire/body.js';

export interface ForwarderOptions {
  config: KvxConfig;
  upstream: UpstreamSide;
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
/**
 * Methods a request can be re-sent with after such an error: the idempotent ones of RFC 9110 §9.2.2 (the safe
 * methods, PUT and DELETE), plus the safe QUERY, PROPFIND, REPORT and SEARCH. nginx re-sends all but POST,
 * LOCK and PATCH. A request with any other method may have been processed: it is answered 502, never re-sent.
 */
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'QUERY', 'PROPFIND', 'REPORT', 'SEARCH']);
const NO_BODY: OutgoingBody = { kind: 'none' };
const CHUNKED_STREAM: OutgoingBody = { kind: 'stream', chunked: true };
const LENGTH_STREAM: OutgoingBody = { kind: 'stream', chunked: false };
const NO_HEADERS: HeaderMap = Object.freeze({});
/** While requests keep being refused for want of credentials, one line per this interval, with a count. */
const REFUSAL_LOG_INTERVAL_MS = 60_000;

/**
 * Refusals for want of credentials come in bursts (every request while the token endpoint is down): the first is
 * logged, the rest counted, with a line a minute while it lasts and one when credentials work again.
 */
class RefusalLog {
  /** A burst is under way; read on every request, so a plain field. */
  active = false;
  private refused = 0;
  private suppressed = 0;
  private since = 0;
  private lastLineAt = 0;

  constructor(private readonly logger: Logger) {}

  refuse(id: string, error: string): void {
    const now = Date.now();
    if (!this.active) {
      this.active = true;
      this.refused = 1;
      this.suppressed = 0;
      this.since = now;
      this.lastLineAt = now;
      this.logger.warn('credentials unavailable; request refused', {
        id,
        error,
        note: 'further refusals are counted and logged once a minute until credentials work again',
      });
      return;
    }
    this.refused++;
    if (now - this.lastLineAt < REFUSAL_LOG_INTERVAL_MS) {
      this.suppressed++;
      return;
    }
    this.logger.warn('credentials still unavailable; requests refused', { id, error, refused: this.refused, suppressed: this.suppressed, sinceMs: now - this.since });
    this.lastLineAt = now;
    this.suppressed = 0;
  }

  recovered(): void {
    this.active = false;
    this.logger.info('credentials available again', { refused: this.refused, suppressed: this.suppressed, durationMs: Date.now() - this.since });
  }
}

/**
 * The request path: checks the target, obtains credential headers, sends the request upstream and streams
 * the answer back with backpressure both ways. One Exchange per request carries the state.
 */
export class Forwarder implements LocationRewriter {
  /**
   * Exchanges started and not yet finished. A count, not a Set of them: a Set that each request entered and left
   * kept finished requests alive through V8's young collections (docs/design.md, "No per-request Map or Set").
   */
  inFlight = 0;
  /** Requests handed to the forwarder so far; tells the idle memory reducer whether traffic has stopped. */
  requestsStarted = 0;
  draining = false;
  /** Called after every request ends; the server uses it to finish a drain promptly. */
  onExchangeDone: (() => void) | undefined;
  private readonly prefix: string;
  private readonly upstreamBase: string;
  private readonly retryStatuses: ReadonlySet<number>;
  private readonly replayMaxBytes: number;
  private readonly logRequests: boolean;
  private readonly guard: HostGuard;
  /** Checks whose first refusal was logged at info; later ones go to debug (a page can send them in a loop). */
  private readonly refusalsLogged = new Set<string>();
  /** Some provider can refresh after a rejection (the injector's providers are fixed). */
  readonly refreshable: boolean;
  /** How requests wait for a token being fetched (auth.tokenWaitMs); one object for every request. */
  readonly credentialWait: RequestHeaderOptions;
  readonly refusals: RefusalLog;
  /** Reads upstream 401/403 answers: IAP's own (refresh, or a missing role) or MLflow's (passed through). */
  readonly authAnswers: AuthAnswerReader;
  private idCounter = 0;
  private lastInjected: HeaderMap | undefined;
  private lastInjectedNames: HeaderNameSet = NO_HEADER_NAMES;
  private readonly idPrefix = `${process.pid.toString(36)}-${Date.now().toString(36)}-`;

  constructor(readonly options: ForwarderOptions) {
    const { config } = options;
    const url = new URL(config.upstream.url);
    this.prefix = url.pathname.replace(/\/+$/, '');
    this.upstreamBase = url.origin + this.prefix;
    this.retryStatuses = new Set(config.auth.retryOnStatus);
    this.replayMaxBytes = config.auth.replayMaxBodyBytes;
    this.logRequests = config.log.requests && options.logger.enabled('info');
    this.guard = new HostGuard(config);
    this.refreshable = options.injector.canRefresh;
    this.credentialWait = Object.freeze({ waitMs: config.auth.tokenWaitMs });
    this.refusals = new RefusalLog(options.logger);
    this.authAnswers = new AuthAnswerReader(options.logger, url.origin);
  }

  /** The Host/Origin checks; a refusal is counted and logged here, and answered by the caller. */
  screen(req: ProxyRequest, requestId: string): GuardRefusal | undefined {
    const refusal = this.guard.check(req.method, req.host, req.rawHeaders);
    if (refusal === undefined) return undefined;
    const { metrics, logger } = this.options;
    metrics.crossSiteRefusal(refusal.reason);
    const fields = { id: requestId, [refusal.header]: refusal.value, hint: refusal.hint };
    const what = refusal.kind === 'host_not_allowed' ? 'Host is not a name of this proxy' : refusal.kind === 'bad_request' ? 'more than one Host header' : 'cross-site browser request';
    if (this.refusalsLogged.has(refusal.kind)) {
      logger.debug(`request refused: ${what}`, fields);
    } else {
      this.refusalsLogged.add(refusal.kind);
      logger.info(`request refused: ${what} (further ones are logged at debug)`, fields);
    }
    return refusal;
  }

  readonly handle = (req: ProxyRequest): void => {
    const exchange = new Exchange(this, req);
    this.requestsStarted++;
    this.inFlight++;
    exchange.start();
  };

  /**
   * The lower-case names of the injected headers. Providers hand out the same map until their credential changes,
   * so the set for the last one is kept rather than built again for every request.
   */
  injectedNames(injected: HeaderMap): HeaderNameSet {
    if (injected !== this.lastInjected) {
      this.lastInjected = injected;
      this.lastInjectedNames = new HeaderNameSet(Object.keys(injected));
    }
    return this.lastInjectedNames;
  }

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

/**
 * The phases of an exchange. Each request moves forward through them; the arrows back are the two re-sends:
 *
 *   Checking ──► ReadingBody ──► Credentials ──► Upstream ──► Responding ──► Done
 *       └───────────────────────────►┘           │  ▲  ▲
 *                                                │  │  └── a stale keep-alive connection: sent again, once
 *                                                └► Refreshing (the credential was rejected: refreshed, replayed once)
 *
 * Any phase may end in Done: refused, failed, or the client gone. A streamed body (too large to read whole) is
 * paused in Checking and flows to upstream from Upstream on, also while the answer already streams back.
 */
export const Phase = { Checking: 0, ReadingBody: 1, Credentials: 2, Upstream: 3, Refreshing: 4, Responding: 5, Done: 6 } as const;
export type Phase = (typeof Phase)[keyof typeof Phase];

/** What became of the one replay an exchange may make after a rejected credential (kvx_auth_replays_total). */
type Replay = 'none' | 'sent' | 'counted';

/** Exported for the tests that prove finished exchanges are collected. */
export class Exchange implements UpstreamHandler, BodySink, OutgoingRequest {
  phase: Phase = Phase.Checking;
  private readonly started = performance.now();
  requestId = '';
  upstreamPath = '';
  injected: HeaderMap = NO_HEADERS;
  injectedNames: HeaderNameSet = NO_HEADER_NAMES;
  body: OutgoingBody = NO_BODY;
  reuse: ReuseMode = 'any';
  private upstream: UpstreamExchange | undefined;
  /** Body chunks while ReadingBody. */
  private collected: Buffer[] | undefined;
  /** The request can be sent again after a rejection: no body, or one held whole. */
  private replayable = false;
  private replay: Replay = 'none';
  private staleRetried = false;
  private status = 0;
  private bytesIn = 0;
  private bytesOut = 0;
  private errorKind: string | undefined;
  private waitingForClientDrain = false;
  private waitingForUpstreamDrain = false;

  constructor(
    private readonly forwarder: Forwarder,
    private readonly req: ProxyRequest,
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
    // Before any credential is obtained: a web page must not get one through a rebound name or a cross-site request.
    const refusal = forwarder.screen(req, this.requestId);
    if (refusal !== undefined) {
      this.errorKind = refusal.kind;
      this.fail(refusal.kind, refusal.message);
      return;
    }
    this.upstreamPath = forwarder.upstreamPath(target);

    if (req.hasBody) {
      // IAP's 401 is replayed whatever auth.retryOnStatus lists.
      const canReplay = forwarder.refreshable;
      if (!req.chunked && req.contentLength <= (canReplay ? forwarder.replayLimit : SMALL_BODY_BYTES)) {
        // Read whole: it can be re-sent after a 401, and a buffer goes out with the headers in one write.
        this.replayable = canReplay;
        this.collected = [];
        this.phase = Phase.ReadingBody;
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

  // BodySink: the client's body, collected while ReadingBody, streamed from Upstream on.
  data(chunk: Buffer): void {
    this.bytesIn += chunk.length;
    if (this.phase === Phase.ReadingBody) {
      this.collected!.push(chunk);
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
    if (this.phase === Phase.ReadingBody) {
      const collected = this.collected!;
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
  }

  error(reason: string, clientClosed: boolean): void {
    if (this.phase === Phase.Done) return;
    this.upstream?.abort();
    const status = sendProxyError(this.req, 'bad_request', `the request body is incomplete: ${reason}`);
    // A client that hung up mid-body abandoned its request: it is counted as gone, whatever it may still read.
    this.finish(clientClosed ? 499 : status);
  }

  private withCredentials(): void {
    this.phase = Phase.Credentials;
    if (this.req.clientGone) return this.finish(499);
    const { forwarder } = this;
    let headers: HeaderMap | Promise<HeaderMap>;
    try {
      headers = forwarder.options.injector.headers(forwarder.credentialWait);
    } catch (err) {
      return this.credentialsFailed(err);
    }
    if (headers instanceof Promise) {
      headers.then(
        (h) => {
          if (forwarder.refusals.active) forwarder.refusals.recovered();
          this.dispatch(h);
        },
        (err: unknown) => this.credentialsFailed(err),
      );
    } else {
      if (forwarder.refusals.active) forwarder.refusals.recovered();
      this.dispatch(headers);
    }
  }

  private credentialsFailed(err: unknown): void {
    if (this.phase === Phase.Done) return;
    const retryAfter = err instanceof CredentialsError ? err.retryAfterSeconds : 5;
    const hint = err instanceof CredentialsError && err.hint ? ` (${err.hint})` : '';
    this.errorKind = 'credentials';
    this.forwarder.refusals.refuse(this.requestId, errorMessage(err));
    this.fail('credentials_unavailable', `credentials unavailable: ${errorMessage(err)}${hint}`, { 'retry-after': retryAfter });
  }

  /** Sends the request upstream with these credentials (again, after a stale connection or a refresh). */
  private dispatch(injected: HeaderMap): void {
    const { req, forwarder } = this;
    if (req.clientGone || this.phase === Phase.Done) return this.finish(499);
    if (injected !== this.injected) {
      this.injected = injected;
      this.injectedNames = forwarder.injectedNames(injected);
    }
    const streaming = this.body.kind === 'stream';
    // A re-send after a stale connection goes on a new one: another reused one may be just as stale.
    this.reuse = this.staleRetried ? 'new' : streaming || !IDEMPOTENT.has(req.method) ? 'trusted' : 'any';
    this.phase = Phase.Upstream;
    const upstream = (this.upstream = forwarder.options.upstream.open(req, this, this));
    if (streaming && !upstream.done) {
      req.readBody(this);
      req.resumeBody();
    }
  }

  onResponseHead(status: number, reason: string, headers: string[]): void {
    const { req, forwarder } = this;
    const { injector } = forwarder.options;
    const kind = status === 401 || status === 403 ? forwarder.authAnswers.classify(status, headers) : 'unknown';
    if (kind === 'iap_denied') forwarder.authAnswers.denied(this.injected, this.requestId);
    if ((kind === 'credentials' || (kind === 'unknown' && forwarder.retryOn.has(status))) && forwarder.refreshable) {
      if (this.replay !== 'none') {
        this.countReplay('rejected_again');
        // The refreshed credential was rejected too: the providers learn that fresh credentials do not help.
        injector.rejected(this.injected, status);
      } else if (injector.rejected(this.injected, status)) {
        if (this.replayable) {
          this.replay = 'sent';
          this.phase = Phase.Refreshing;
          this.upstream!.abort();
          this.refreshAndReplay();
          return;
        }
        // This answer goes back as is (its body streamed); the next request gets a fresh credential.
        void injector.invalidate(this.injected);
      }
    } else {
      this.countReplay('success');
      if (injector.unconfirmed) injector.accepted(this.injected);
    }
    this.phase = Phase.Responding;
    this.status = status;
    req.respond(status, reason, headers, forwarder);
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
      !this.staleRetried &&
      IDEMPOTENT.has(req.method) &&
      this.body.kind !== 'stream' &&
      STALE_SOCKET_CODES.has(err.code)
    ) {
      // A keep-alive socket closed by upstream just as the request went out. Nothing of an answer came, and
      // the method makes a second copy harmless; a buffered body is still held whole.
      this.staleRetried = true;
      this.dispatch(this.injected);
      return;
    }
    const { kind, message } = classifyUpstreamError(err, forwarder.options.config);
    this.errorKind = kind;
    forwarder.options.metrics.upstreamError(kind);
    forwarder.options.logger.warn('upstream request failed', { id: this.requestId, kind, error: message });
    if (this.phase === Phase.Responding) {
      // Status already sent; breaking the connection is how the client learns the body is incomplete.
      req.destroy();
      this.finish(this.status);
      return;
    }
    this.fail(kindToProxyError(kind), message);
  }

  /** Refreshes the rejected credential and sends the request again; counted when the replay's answer arrives. */
  private refreshAndReplay(): void {
    const { forwarder } = this;
    const { injector, logger } = forwarder.options;
    injector.refresh(this.injected, forwarder.credentialWait).then(
      () => {
        if (this.req.clientGone || this.phase === Phase.Done) return this.finish(499);
        let next: HeaderMap | Promise<HeaderMap>;
        try {
          next = injector.headers(forwarder.credentialWait);
        } catch (err) {
          return this.replayRefreshFailed(err);
        }
        Promise.resolve(next).then(
          (headers) => {
            if (this.req.clientGone || this.phase === Phase.Done) return this.finish(499);
            logger.info('credentials refreshed after upstream rejection; replaying request', { id: this.requestId });
            this.dispatch(headers);
          },
          (err: unknown) => this.replayRefreshFailed(err),
        );
      },
      (err: unknown) => this.replayRefreshFailed(err),
    );
  }

  private replayRefreshFailed(err: unknown): void {
    this.countReplay('refresh_failed');
    this.credentialsFailed(err);
  }

  private countReplay(result: ReplayResult): void {
    if (this.replay !== 'sent') return;
    this.replay = 'counted';
    this.forwarder.options.metrics.replay(result);
  }

  private readonly onClientGone = (): void => {
    this.upstream?.abort();
    this.finish(499);
  };

  private fail(kind: ProxyErrorKind, message: string, extra: Record<string, string | number> = {}): void {
    if (this.phase === Phase.Done) return;
    const status = sendProxyError(this.req, kind, message, extra);
    this.finish(status);
  }

  private finish(status: number): void {
    if (this.phase === Phase.Done) return;
    const replayed = this.replay !== 'none';
    if (this.replay === 'sent') this.countReplay('no_answer');
    this.phase = Phase.Done;
    const { forwarder, req } = this;
    forwarder.inFlight--;
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
      if (replayed) line += ',"replayed":true';
      logger.infoSerialized('request', line);
    }
    forwarder.onExchangeDone?.();
  }
}

type UpstreamErrorKind = 'connect_timeout' | 'headers_timeout' | 'body_timeout' | 'unreachable' | 'tls' | 'bad_response' | 'reset' | 'egress_proxy';

function classifyUpstreamError(err: UpstreamError, config: KvxConfig): { kind: UpstreamErrorKind; message: string } {
  const code = err.code;
  const upstream = config.upstream.url;
  switch (code) {
    case 'KVX_CONNECT_TIMEOUT':
      return { kind: 'connect_timeout', message: `connecting to ${upstream} took longer than upstream.connectTimeoutMs (${config.upstream.connectTimeoutMs} ms); check the network path to the server` };
    case 'KVX_HEADERS_TIMEOUT':
      return { kind: 'headers_timeout', message: `${upstream} sent no response within upstream.headersTimeoutMs (${config.upstream.headersTimeoutMs} ms)` };
    case 'KVX_QUEUE_TIMEOUT':
      return {
        kind: 'headers_timeout',
        message: `no answer from ${upstream} within upstream.headersTimeoutMs (${config.upstream.headersTimeoutMs} ms): the request ${err.message}; raise upstream.maxConnections or check why answers are slow`,
      };
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
    case 'EPROTO': {
      // OpenSSL's failures during the handshake arrive as EPROTO with its reason in the message.
      if (!upstream.startsWith('https:')) return { kind: 'unreachable', message: `request to ${upstream} failed (${code})` };
      const reason = /SSL routines:[^:]*:([^:]+)/.exec(err.message)?.[1] ?? 'protocol error';
      const plainText = reason === 'wrong version number' || reason === 'packet length too long' || reason === 'http request';
      return {
        kind: 'tls',
        message: plainText
          ? `TLS with ${upstream} failed (${reason}): the server answered in plain text, not TLS; if it serves plain HTTP, use an http:// upstream.url`
          : `TLS with ${upstream} failed (${reason}); check the TLS versions and ciphers the server accepts, and upstream.caFile`,
      };
    }
    case 'KVX_BAD_STATUS':
      return { kind: 'bad_response', message: `${upstream} sent a malformed HTTP response (${err.message})` };
    case 'HPE_INVALID_EOF_STATE':
      return { kind: 'bad_response', message: `${upstream} ended its answer before the body its headers announced` };
    case 'KVX_EGRESS_PROXY_TIMEOUT':
      return { kind: 'connect_timeout', message: `${err.message} (${code})` };
    default:
      // The tunnel's messages name the proxy without its credentials and say what to check.
      if (code.startsWith('KVX_EGRESS_PROXY_')) return { kind: 'egress_proxy', message: `${err.message} (${code})` };
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
    case 'egress_proxy':
      return 'egress_proxy';
    default:
      return 'upstream_unreachable';
  }
}
