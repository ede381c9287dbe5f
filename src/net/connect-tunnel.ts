/**
 * The one CONNECT client: opens the wire engine's upstream connections and, as undici's connector, those of kvx's
 * REST and Google clients, directly or through an egress proxy with an HTTP CONNECT tunnel, TLS then running end
 * to end inside it. Plain-http targets are tunnelled too rather than sent in absolute form, so requests,
 * keep-alive and errors are the same either way and only the socket differs (the proxy must allow CONNECT to the
 * target's port; squid's default allows only 443).
 */
import net from 'node:net';
import type { LookupFunction, Socket } from 'node:net';
import type tls from 'node:tls';
import { nodeTls } from '../util/lazy-require.js';
import type { EgressProxy } from '../config/egress.js';

export interface DialTarget {
  /** Name or IP address, without brackets: also the TLS server name checked against the certificate. */
  host: string;
  port: number;
  secure: boolean;
  tls: tls.ConnectionOptions | undefined;
}

export interface DialRoute {
  proxy: EgressProxy | undefined;
  /** egress.hostAliases; used for the proxy's host when tunnelling (the proxy resolves the target). */
  lookup: LookupFunction | undefined;
  /** The tunnel must be up (proxy connected and CONNECT answered) within this; TLS then has the pool's own timeout. */
  timeoutMs: number;
}

export type DialErrorCode =
  | 'KVX_EGRESS_PROXY_UNREACHABLE'
  | 'KVX_EGRESS_PROXY_TIMEOUT'
  /** 407: the proxy wants (other) credentials. */
  | 'KVX_EGRESS_PROXY_AUTH'
  /** Any other answer than 2xx to CONNECT. */
  | 'KVX_EGRESS_PROXY_REFUSED'
  | 'KVX_EGRESS_PROXY_CLOSED'
  | 'KVX_EGRESS_PROXY_BAD_RESPONSE';

export class DialError extends Error {
  constructor(
    readonly code: DialErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'DialError';
  }
}

/** Called once: with the socket to speak HTTP on (connecting, or already connected when tunnelled), or the error. */
export type DialCallback = (err: DialError | undefined, socket: Socket | undefined) => void;

/** Proxies answer CONNECT with a few headers; more than this is not a proxy's answer. */
const MAX_CONNECT_RESPONSE_BYTES = 16 * 1024;
const HEAD_END = Buffer.from('\r\n\r\n', 'latin1');

/**
 * Connects to `target`. Direct connections call back at once with the connecting socket, as net/tls.connect
 * return it; a tunnel calls back once the proxy has answered. Returns a function that gives up a dial in progress.
 */
export function dial(target: DialTarget, route: DialRoute, callback: DialCallback): () => void {
  const { proxy, lookup } = route;
  if (proxy === undefined) {
    callback(undefined, connectDirect(target, lookup));
    return noop;
  }
  return tunnel(target, proxy, route, callback);
}

function noop(): void {}

function connectDirect(target: DialTarget, lookup: LookupFunction | undefined): Socket {
  const { host, port } = target;
  // `lookup` only when aliases exist, so the plain connection is made exactly as before.
  const endpoint = lookup === undefined ? { host, port } : { host, port, lookup };
  if (!target.secure) return net.connect(endpoint);
  return nodeTls().connect({ ...endpoint, servername: net.isIP(host) ? undefined : host, ALPNProtocols: ['http/1.1'], ...target.tls });
}

function tunnel(target: DialTarget, proxy: EgressProxy, route: DialRoute, callback: DialCallback): () => void {
  const authority = `${net.isIP(target.host) === 6 ? `[${target.host}]` : target.host}:${target.port}`;
  const raw = net.connect(route.lookup === undefined ? { host: proxy.host, port: proxy.port } : { host: proxy.host, port: proxy.port, lookup: route.lookup });
  let received: Buffer = Buffer.alloc(0);
  let settled = false;

  const finish = (err: DialError | undefined, socket: Socket | undefined): void => {
    if (settled) return;
    settled = true;
    clearTimeout(timer);
    raw.off('connect', onConnect);
    raw.off('data', onData);
    raw.off('error', onError);
    raw.off('end', onEnd);
    raw.off('close', onEnd);
    if (err !== undefined) raw.destroy();
    callback(err, socket);
  };
  const fail = (code: DialErrorCode, message: string) => finish(new DialError(code, message), undefined);

  const timer = setTimeout(
    () => fail('KVX_EGRESS_PROXY_TIMEOUT', `the egress proxy ${proxy.display} (${proxy.source}) did not open a tunnel to ${authority} within upstream.connectTimeoutMs (${route.timeoutMs} ms)`),
    route.timeoutMs,
  );
  const onConnect = (): void => {
    raw.setNoDelay(true);
    let head = `CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n`;
    if (proxy.authorization !== undefined) head += `Proxy-Authorization: ${proxy.authorization}\r\n`;
    raw.write(`${head}\r\n`, 'latin1');
  };
  const onData = (chunk: Buffer): void => {
    received = received.length === 0 ? chunk : Buffer.concat([received, chunk]);
    const end = received.indexOf(HEAD_END);
    if (end === -1) {
      if (received.length > MAX_CONNECT_RESPONSE_BYTES) fail('KVX_EGRESS_PROXY_BAD_RESPONSE', `the egress proxy ${proxy.display} answered CONNECT with more than ${MAX_CONNECT_RESPONSE_BYTES} bytes of headers`);
      return;
    }
    const statusLine = received.toString('latin1', 0, received.indexOf('\r\n'));
    const match = /^HTTP\/1\.[01] (\d{3})(?: (.*))?$/.exec(statusLine);
    if (match === null) {
      fail('KVX_EGRESS_PROXY_BAD_RESPONSE', `the egress proxy ${proxy.display} answered CONNECT with something that is not HTTP`);
      return;
    }
    const status = Number(match[1]);
    const reason = (match[2] ?? '').slice(0, 80);
    if (status === 407) {
      const hint = proxy.authorization === undefined ? `give them as http://user:password@host:port in ${proxy.source}` : `check the user name and password in ${proxy.source}`;
      fail('KVX_EGRESS_PROXY_AUTH', `the egress proxy ${proxy.display} wants credentials (407 ${reason}); ${hint}`);
      return;
    }
    if (status < 200 || status > 299) {
      fail('KVX_EGRESS_PROXY_REFUSED', `the egress proxy ${proxy.display} refused CONNECT to ${authority} (${status} ${reason}); have it allowed at the proxy, or list the host in NO_PROXY / egress.noProxy if it is reachable directly`);
      return;
    }
    // Neither TLS nor HTTP/1.1 servers speak first: bytes past the answer belong to no exchange.
    if (received.length > end + HEAD_END.length) {
      fail('KVX_EGRESS_PROXY_BAD_RESPONSE', `the egress proxy ${proxy.display} sent bytes after its CONNECT answer, before the upstream was asked anything`);
      return;
    }
    if (!target.secure) {
      finish(undefined, raw);
      return;
    }
    const { host } = target;
    finish(undefined, nodeTls().connect({ socket: raw, host, servername: net.isIP(host) ? undefined : host, ALPNProtocols: ['http/1.1'], ...target.tls }));
  };
  const onError = (err: NodeJS.ErrnoException): void =>
    fail('KVX_EGRESS_PROXY_UNREACHABLE', `cannot reach the egress proxy ${proxy.display} (${proxy.source}): ${err.code ?? err.message}`);
  const onEnd = (): void => fail('KVX_EGRESS_PROXY_CLOSED', `the egress proxy ${proxy.display} closed the connection before answering CONNECT to ${authority}`);

  raw.once('connect', onConnect);
  raw.on('data', onData);
  raw.on('error', onError);
  raw.once('end', onEnd);
  raw.once('close', onEnd);
  return () => {
    if (!settled) {
      settled = true;
      clearTimeout(timer);
      raw.destroy();
    }
  };
}
