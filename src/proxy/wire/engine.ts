import type { Egress } from '../../config/egress.js';
import type { KvxConfig } from '../../config/schema.js';
import { upstreamTlsOptions } from '../../config/tls.js';
import type { ClientSide, Engine, EngineHooks, OutgoingRequest, UpstreamHandler, UpstreamSide } from '../engine.js';
import { BODY_EXPECTED, requestHeaderPlan, upstreamRequestHead } from '../headers.js';
import type { RequestHeaderPlan } from '../headers.js';
import { ClientListener } from './client-connection.js';
import type { ClientRequest } from './client-connection.js';
import { UpstreamPool } from './upstream-pool.js';
import type { UpstreamRequest } from './upstream-pool.js';

/**
 * The wire engine behind the port: llhttp on raw sockets on both sides. Its request and exchange objects
 * (ClientRequest, UpstreamRequest) are the port's objects themselves; this file only builds the request head
 * with its framing and ties the two sides together.
 */
export class WireEngine implements Engine {
  readonly name = 'wire';
  readonly clients: ClientSide;
  readonly upstream: WireUpstream;
  private readonly listener: ClientListener;

  constructor(config: KvxConfig, egress: Egress, hooks: EngineHooks) {
    const listener = (this.listener = new ClientListener({
      maxHeaderSize: config.server.maxHeaderSize,
      headersTimeoutMs: config.server.headersTimeoutMs,
      requestTimeoutMs: config.server.requestTimeoutMs,
      keepAliveTimeoutMs: config.server.keepAliveTimeoutMs,
      // Socket inactivity in either direction; long transfers are fine as long as bytes keep moving. A client
      // waiting on a slow upstream is not idle by its own fault: the upstream timeout answers it with a 504.
      idleTimeoutMs: config.upstream.idleTimeoutMs,
      onRequest: hooks.onRequest,
      onClientError: hooks.onClientError,
      refusal: hooks.refusal,
    }));
    this.clients = {
      server: listener.server,
      get connectionCount() {
        return listener.connections.size;
      },
      closeIdle: () => listener.closeIdle(),
      closeAll: () => listener.closeAll(),
      stop: () => listener.stop(),
    };
    this.upstream = new WireUpstream(config, egress);
  }
}

class WireUpstream implements UpstreamSide {
  private readonly pool: UpstreamPool;
  private readonly plan: RequestHeaderPlan;

  constructor(config: KvxConfig, egress: Egress) {
    const { upstream } = config;
    this.plan = requestHeaderPlan(config);
    const origin = new URL(new URL(upstream.url).origin);
    this.pool = new UpstreamPool({
      origin,
      egress: { proxy: egress.route(origin).proxy, lookup: egress.lookup },
      maxConnections: upstream.maxConnections,
      connectTimeoutMs: upstream.connectTimeoutMs,
      headersTimeoutMs: upstream.headersTimeoutMs,
      idleTimeoutMs: upstream.idleTimeoutMs,
      keepAliveTimeoutMs: 30_000,
      tls: upstreamTlsOptions(upstream),
    });
  }

  open(request: ClientRequest, handler: UpstreamHandler, outgoing: OutgoingRequest): UpstreamRequest {
    const body = outgoing.body;
    const framing =
      body.kind === 'buffer'
        ? `content-length: ${body.data.length}\r\n`
        : body.kind === 'stream'
          ? body.chunked
            ? 'transfer-encoding: chunked\r\n'
            : `content-length: ${request.contentLength}\r\n`
          : BODY_EXPECTED.has(request.method)
            ? 'content-length: 0\r\n'
            : '';
    const head = upstreamRequestHead(request.method, outgoing.upstreamPath, request.rawHeaders, this.plan, outgoing.injected, outgoing.injectedNames, outgoing.requestId, framing);
    request.waitingOnUpstream = true;
    return this.pool.request(handler, head, body, request.method === 'HEAD', outgoing.reuse);
  }

  destroy(): Promise<void> {
    return this.pool.destroy();
  }
}
