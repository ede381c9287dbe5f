import type { Server } from 'node:net';
import type { HeaderMap } from '../auth/provider.js';
import type { HeaderNameSet } from './header-names.js';

/**
 * The port between the request path (forward.ts) and an HTTP engine: what the forwarder needs from the client
 * side (a request, its body with backpressure, a way to answer) and from the upstream side (an exchange that
 * streams a request out and its answer back). Framing (Content-Length, chunked, trailers, connection reuse) and
 * the serialisation of headers are decided inside the engine: the forwarder hands over header lists and body
 * descriptions, never header lines. Two engines implement it: `wire` (llhttp on raw sockets, src/proxy/wire/)
 * and `node` (node:http's server and undici's Pool, src/proxy/node-engine.ts).
 *
 * Methods, not function-valued properties: the wire engine's own request and exchange objects implement the
 * port directly, so the port adds no object, closure or promise per request.
 */
export type EngineName = 'wire' | 'node';

/** The client's request body, delivered in order. */
export interface BodySink {
  data(chunk: Buffer): void;
  end(): void;
  /**
   * The body cannot be completed: malformed chunking, or `clientClosed` when the client ended the connection
   * part-way (an abandoned request, though the client may still read an answer).
   */
  error(reason: string, clientClosed: boolean): void;
}

/** Maps a Location header value from upstream to one for the client. */
export interface LocationRewriter {
  rewriteLocation(location: string, clientHost: string | undefined): string;
}

/** One client request and the means to answer it. */
export interface ProxyRequest {
  readonly method: string;
  readonly target: string;
  /** Flat [name, value, ...] list, as received (the client's casing and order where the engine keeps them). */
  readonly rawHeaders: readonly string[];
  readonly host: string | undefined;
  /** X-Request-Id if the client sent exactly one. */
  readonly requestIdHeader: string | undefined;
  /** An Upgrade or CONNECT request: refused by the forwarder, never forwarded. */
  readonly upgrade: boolean;
  /** Declared Content-Length, or -1. */
  readonly contentLength: number;
  readonly chunked: boolean;
  readonly hasBody: boolean;
  /** The whole request, body included, has been received. */
  readonly complete: boolean;
  readonly headersSent: boolean;
  readonly clientGone: boolean;
  /** Called once if the connection closes before the answer is complete. */
  onClientGone: (() => void) | undefined;
  /** Starts delivering the body (what arrived already first); answers `Expect: 100-continue`. */
  readBody(sink: BodySink): void;
  pauseBody(): void;
  resumeBody(): void;
  /**
   * Starts the answer with upstream's status and headers (a flat list as upstream sent them): hop-by-hop and
   * framing headers are dropped and the framing chosen here; Location values go through `rewriter`.
   */
  respond(status: number, reason: string, upstreamHeaders: readonly string[], rewriter: LocationRewriter): void;
  /** Writes answer body bytes; false means wait for `onDrain`. */
  write(chunk: Buffer): boolean;
  onDrain(callback: () => void): void;
  /** Completes the answer. */
  end(): void;
  /** Breaks the connection: how a client learns that an answer already under way is incomplete. */
  destroy(): void;
  /** The proxy's own complete answer (`headers` a flat list); no body goes out to a HEAD. */
  reply(status: number, reason: string, headers: readonly string[], body: Buffer): void;
}

/** What goes upstream as the request body; a stream's length is the client request's declared one. */
export type OutgoingBody = { kind: 'none' } | { kind: 'buffer'; data: Buffer } | { kind: 'stream'; chunked: boolean };

/**
 * Which connection a request may go on.
 * - `any`: an idle one if there is one. For requests that can be re-sent (idempotent, body held whole): if the
 *   server was closing the connection as the request went out, the re-send goes on a new connection.
 * - `trusted`: an idle one only while reuse is trusted. A request that cannot be re-sent fails when its reused
 *   connection turns out to be closing; once the server has been seen closing connections right after its
 *   answers (three times, with no reuse that worked in between) such requests get new
 *   connections, until a reused connection answers again.
 * - `new`: always a new connection (the re-send after a stale one).
 */
export type ReuseMode = 'any' | 'trusted' | 'new';

/** The request the forwarder wants sent; the engine builds the head, with the configured header plan. */
export interface OutgoingRequest {
  /** Upstream path (prefix included). */
  readonly upstreamPath: string;
  /** Credential headers; they replace the client's copies. */
  readonly injected: HeaderMap;
  /** The names of `injected`. */
  readonly injectedNames: HeaderNameSet;
  readonly requestId: string;
  readonly body: OutgoingBody;
  readonly reuse: ReuseMode;
}

export type UpstreamErrorCode =
  | 'KVX_CONNECT_TIMEOUT'
  | 'KVX_HEADERS_TIMEOUT'
  /** The headers timeout passed while the request waited for a connection (all maxConnections busy). */
  | 'KVX_QUEUE_TIMEOUT'
  | 'KVX_BODY_TIMEOUT'
  /** The connection closed, or was reset, before the response was complete. */
  | 'KVX_UPSTREAM_CLOSED'
  | 'KVX_BAD_RESPONSE'
  /** A status code outside 100-599. */
  | 'KVX_BAD_STATUS';

export class UpstreamError extends Error {
  constructor(
    /** One of UpstreamErrorCode, a socket errno code (ECONNREFUSED, ...), a TLS code or an llhttp HPE_ code. */
    readonly code: string,
    message: string,
    /** Nothing of the response was received: the request may not have been processed. */
    readonly beforeResponse: boolean,
  ) {
    super(message);
    this.name = 'UpstreamError';
  }
}

/** Receives one exchange's answer. */
export interface UpstreamHandler {
  onResponseHead(status: number, reason: string, headers: string[]): void;
  onResponseData(chunk: Buffer): void;
  onResponseEnd(): void;
  onResponseError(err: UpstreamError): void;
}

/** One request under way to upstream. */
export interface UpstreamExchange {
  /** Answered, failed or aborted: nothing more will be delivered. */
  readonly done: boolean;
  /** A buffered body has left the process: its memory may be freed once it will not be re-sent. */
  readonly bodyFlushed: boolean;
  /** Streams body bytes; false means wait for `onDrain`. */
  write(chunk: Buffer): boolean;
  onDrain(callback: () => void): void;
  /** The streamed body is complete. */
  end(): void;
  /** Response backpressure. */
  pause(): void;
  resume(): void;
  /** Gives up on the exchange; its connection is not reused. */
  abort(): void;
}

export interface UpstreamSide {
  /**
   * Opens an exchange for `request`. From here until its answer starts, a client that has sent its whole
   * request waits on upstream, not idle by its own fault: the engine holds back its client idle timeout.
   */
  open(request: ProxyRequest, handler: UpstreamHandler, outgoing: OutgoingRequest): UpstreamExchange;
  destroy(): Promise<void>;
}

export interface ClientSide {
  /** The listening server (node:net or node:http), for listen, close and the accept-failure events. */
  readonly server: Server;
  readonly connectionCount: number;
  /** Closes connections that are between requests; busy ones close after their current answer. */
  closeIdle(): void;
  closeAll(): void;
  /** Stops the engine's timers once the server has closed. */
  stop(): void;
}

export interface Engine {
  readonly name: EngineName;
  readonly clients: ClientSide;
  readonly upstream: UpstreamSide;
}

/** Requests refused before they reach the forwarder: malformed, headers too large, too slow, a length too large to forward exactly. */
export type RefusalKind = 'bad_request' | 'header_overflow' | 'timeout' | 'too_large';

export interface EngineHooks {
  onRequest(request: ProxyRequest): void;
  /** A request the parser refused, or a connection timed out; for the debug log. */
  onClientError(code: string): void;
  /** Answers for requests refused before they reach the forwarder. */
  refusal(kind: RefusalKind): { status: string; body: string };
}
