/**
 * undici clients that go where config/egress.ts says: kvx-launch's REST calls, doctor's upstream checks and every
 * Google endpoint (token, IAM Credentials, STS, OAuth; the metadata server never through a proxy). Tunnels use
 * kvx's own CONNECT client (connect-tunnel.ts) as undici's connector rather than undici's ProxyAgent, which
 * refuses requests carrying Proxy-Authorization: the header kvx puts IAP's token in when MLflow itself uses
 * basic auth, and which inside a tunnel goes to the upstream, not to the egress proxy.
 */
import type * as Http from 'node:http';
import type * as Https from 'node:https';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type * as Undici from 'undici';
import type { Dispatcher, buildConnector } from 'undici';
import type { Egress } from '../config/egress.js';
import { lazyRequire } from '../util/lazy-require.js';
import { dial } from './connect-tunnel.js';

export interface EgressDispatcherOptions {
  /** undici's connect options: `timeout` and the TLS settings for the target (ca, cert, key, rejectUnauthorized). */
  connect?: buildConnector.BuildOptions;
  connections?: number;
  /** false for the metadata server: never through a proxy (aliases still apply). */
  proxy?: boolean;
}

const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;

/** An undici Agent whose connections follow `egress`; with nothing configured, a plain Agent as before. */
export function egressDispatcher(egress: Egress, options: EgressDispatcherOptions = {}): Dispatcher {
  const { Agent } = lazyRequire('undici') as typeof Undici;
  const agentOptions: Undici.Agent.Options = {};
  if (options.connections !== undefined) agentOptions.connections = options.connections;
  const connect = egressConnector(egress, options.connect, options.proxy !== false);
  if (connect !== undefined) agentOptions.connect = connect;
  return new Agent(agentOptions);
}

/**
 * undici's `connect` option for a Pool or Agent (the node engine's upstream pool can take it too): the options as
 * given when nothing is configured, the same with the host aliases' lookup, or a connector that tunnels where
 * `egress` names a proxy. `proxy: false` never tunnels.
 */
export function egressConnector(egress: Egress, connect: buildConnector.BuildOptions | undefined, proxy = true): buildConnector.BuildOptions | buildConnector.connector | undefined {
  const withLookup = egress.lookup === undefined ? connect : { ...connect, lookup: egress.lookup };
  if (!egress.proxied || !proxy) return withLookup;
  const direct = (lazyRequire('undici') as typeof Undici).buildConnector(withLookup ?? {});
  const { timeout, lookup: _lookup, ...tlsOptions } = (connect ?? {}) as { timeout?: number; lookup?: unknown };
  const timeoutMs = timeout ?? DEFAULT_CONNECT_TIMEOUT_MS;
  return (opts, callback) => {
    const secure = opts.protocol === 'https:';
    const port = Number(opts.port) || (secure ? 443 : 80);
    const host = opts.hostname.replace(/^\[|\]$/g, '');
    const route = egress.route(`${opts.protocol}//${opts.hostname}:${port}`);
    if (route.proxy === undefined) return direct(opts, callback);
    const tls = { ...tlsOptions, ...(opts.servername ? { servername: opts.servername } : {}) };
    dial({ host, port, secure, tls }, { proxy: route.proxy, lookup: egress.lookup, timeoutMs }, (err, socket) => {
      if (err !== undefined || socket === undefined) return callback(err ?? new Error('no connection'), null);
      if (!secure) return callback(null, socket);
      whenSecure(socket as TLSSocket, timeoutMs, callback);
    });
    return undefined as unknown as Socket;
  };
}

/** undici wants the connection ready: a tunnelled TLS socket is handed over after its handshake. */
function whenSecure(socket: TLSSocket, timeoutMs: number, callback: buildConnector.Callback): void {
  const done = (err: Error | null): void => {
    clearTimeout(timer);
    socket.off('secureConnect', onSecure);
    socket.off('error', done);
    if (err === null) callback(null, socket);
    else {
      socket.destroy();
      callback(err, null);
    }
  };
  const onSecure = (): void => done(null);
  const timer = setTimeout(() => done(Object.assign(new Error(`TLS handshake through the egress proxy took longer than ${timeoutMs} ms`), { code: 'UND_ERR_CONNECT_TIMEOUT' })), timeoutMs);
  socket.once('secureConnect', onSecure);
  socket.once('error', done);
}

/** One dispatcher per egress and kind, for the Google calls of a process; closed with the egress. */
const googleDispatchers = new WeakMap<Egress, { proxied?: Dispatcher; direct?: Dispatcher }>();

/**
 * fetch() through undici with a dispatcher that follows `egress` (Node's own fetch when nothing is configured, for
 * callers that want a fetch: google-auth-library's transporter). `proxy: false` for the metadata server.
 */
export function egressFetch(egress: Egress, url: string | URL, init: RequestInit, options: { proxy?: boolean } = {}): Promise<Response> {
  if (!egress.active) return fetch(url, init);
  const proxy = options.proxy !== false;
  let held = googleDispatchers.get(egress);
  if (held === undefined) googleDispatchers.set(egress, (held = {}));
  let dispatcher = proxy ? held.proxied : held.direct;
  if (dispatcher === undefined) {
    const made = egressDispatcher(egress, { proxy });
    if (proxy) held.proxied = made;
    else held.direct = made;
    egress.onClose(() => made.close());
    dispatcher = made;
  }
  const undici = lazyRequire('undici') as typeof Undici;
  return undici.fetch(url, { ...(init as Undici.RequestInit), dispatcher }) as unknown as Promise<Response>;
}

export interface PlainRequest {
  method?: string;
  headers?: Record<string, string>;
  body?: string;
  signal: AbortSignal;
}

/** An answer read whole: its status, its body as UTF-8 text, and a header by lower-case name. */
export interface PlainAnswer {
  status: number;
  text: string;
  header(name: string): string | undefined;
}

/** Token endpoints answer a few KB; more is not an answer to read into memory and echo into an error. */
export const MAX_ANSWER_BYTES = 1024 * 1024;

/**
 * One request, answered whole, as kvx's Google calls make it. With nothing configured it goes over node:http or
 * node:https: Node's own fetch would load its bundled undici, web streams and zlib for a few token calls an hour,
 * about 15 MB of RSS held by every proxy with a Google provider. With an egress proxy or host aliases it goes
 * through egressFetch. Redirects are never followed; `Error.code` or `cause.code` says why a request failed.
 */
export async function egressRequest(egress: Egress, url: string, init: PlainRequest, options: { proxy?: boolean } = {}): Promise<PlainAnswer> {
  if (egress.active) {
    const res = await egressFetch(egress, url, { ...init, redirect: 'manual' }, options);
    const text = await boundedText(res);
    return { status: res.status, text, header: (name) => res.headers.get(name) ?? undefined };
  }
  return directRequest(new URL(url), init);
}

function directRequest(target: URL, init: PlainRequest): Promise<PlainAnswer> {
  // Required, not imported: an ES import of node:http or node:https builds a facade that reads every export, and
  // their WebSocket getters load the very undici bundle this path exists to avoid.
  const { request } = target.protocol === 'https:' ? (lazyRequire('node:https') as typeof Https) : (lazyRequire('node:http') as typeof Http);
  return new Promise<PlainAnswer>((resolve, reject) => {
    const headers: Record<string, string | number> = { ...init.headers };
    if (init.body !== undefined) headers['content-length'] = Buffer.byteLength(init.body);
    const req = request(target, { method: init.method ?? 'GET', headers, signal: init.signal }, (res) => {
      const chunks: Buffer[] = [];
      let bytes = 0;
      res.on('data', (chunk: Buffer) => {
        bytes += chunk.length;
        if (bytes > MAX_ANSWER_BYTES) return req.destroy(tooLarge());
        chunks.push(chunk);
      });
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        resolve({ status: res.statusCode ?? 0, text, header: (name) => headerValue(res.headers[name]) });
      });
      res.on('error', (err) => reject(inAnswer(err)));
    });
    req.on('error', reject);
    req.end(init.body);
  });
}

/** The body of a fetch answer as text, read up to MAX_ANSWER_BYTES: beyond that the stream is cancelled, not held. */
async function boundedText(res: Response): Promise<string> {
  const chunks: Uint8Array[] = [];
  let bytes = 0;
  try {
    if (res.body !== null) {
      for await (const chunk of res.body as AsyncIterable<Uint8Array>) {
        bytes += chunk.length;
        if (bytes > MAX_ANSWER_BYTES) throw tooLarge();
        chunks.push(chunk);
      }
    }
  } catch (err) {
    throw inAnswer(err);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function headerValue(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value.join(', ') : value;
}

function tooLarge(): Error {
  return inAnswer(Object.assign(new Error(`the answer is larger than ${MAX_ANSWER_BYTES} bytes`), { code: 'KVX_ANSWER_TOO_LARGE' }));
}

/** Marks a failure after the status line arrived: the server was reached and broke off (or overran) its answer. */
function inAnswer(err: unknown): Error {
  const error = err instanceof Error ? err : new Error(String(err));
  return Object.assign(error, { inAnswer: true });
}

/** Whether egressRequest failed while reading an answer rather than reaching the server. */
export function failedInAnswer(err: unknown): boolean {
  return (err as { inAnswer?: unknown }).inAnswer === true;
}

/**
 * google-auth-library's transporter options (gaxios) sending its requests (token refresh, STS, impersonation) the
 * same way; undefined when nothing is configured, so the library keeps its own defaults.
 */
export function egressTransporterOptions(egress: Egress): { fetchImplementation: typeof fetch } | undefined {
  if (!egress.active) return undefined;
  return { fetchImplementation: ((url: string | URL, init?: RequestInit) => egressFetch(egress, url, init ?? {})) as typeof fetch };
}
