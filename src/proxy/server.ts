import { readFileSync } from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';
import type { AddressInfo, Socket } from 'node:net';
import type { Pool as UndiciPool } from 'undici';
import { HeaderInjector } from '../auth/injector.js';
import { planProviders } from '../auth/registry.js';
import '../auth/index.js';
import type { LoadedConfig } from '../config/load.js';
import type { KvxConfig } from '../config/schema.js';
import { ConfigError, CredentialsError, errorMessage } from '../errors.js';
import type { Logger } from '../log/logger.js';
import { silentLogger } from '../log/logger.js';
import { createAdminHandler } from './admin.js';
import { errorBody } from './errors.js';
import { Forwarder } from './forward.js';
import { ProxyMetrics } from './metrics.js';

/**
 * undici's entry point also loads fetch, WebSocket, caches and mocks: about 80 ms of every start, which an
 * exec-wrapped pipeline step pays each time. The proxy needs only Pool.
 */
function loadPool(): typeof UndiciPool {
  // Written as `createRequire(import.meta.url)(...)` each time: the standalone build rewrites exactly that form.
  try {
    return createRequire(import.meta.url)('undici/lib/dispatcher/pool.js') as typeof UndiciPool;
  } catch {
    return (createRequire(import.meta.url)('undici') as { Pool: typeof UndiciPool }).Pool;
  }
}
const Pool = loadPool();

export interface StartOptions {
  logger?: Logger;
  env?: NodeJS.ProcessEnv;
  /** Expose Node process metrics (off in tests that run many proxies in one process). */
  processMetrics?: boolean;
}

export interface RunningProxy {
  /** Base URL clients use, e.g. http://127.0.0.1:5001 */
  url: string;
  adminUrl: string | undefined;
  address: AddressInfo;
  injector: HeaderInjector;
  metrics: ProxyMetrics;
  /** Whether credentials can be produced and the proxy is not draining. */
  ready(): boolean;
  /**
   * Stop accepting, let in-flight requests finish for up to `deadlineMs` (server.shutdownTimeoutMs by
   * default), then cut what remains. Resolves with the number of requests that had to be cut.
   */
  close(deadlineMs?: number): Promise<number>;
}

/**
 * Builds providers, fetches the first credentials (unless told not to), and opens the proxy and admin
 * listeners. Throws ConfigError for config problems and CredentialsError when the first credentials fail.
 */
export async function startProxy(loaded: LoadedConfig, options: StartOptions = {}): Promise<RunningProxy> {
  const { config } = loaded;
  const logger = options.logger ?? silentLogger;
  const env = options.env ?? process.env;
  const { plans, problems } = planProviders(config, env);
  if (problems.length > 0) throw new ConfigError(problems);

  const metrics = new ProxyMetrics({ processMetrics: options.processMetrics ?? true });
  const injector = await HeaderInjector.create(plans, { config, logger, baseDir: loaded.baseDir, env, metrics });
  try {
    await startCredentials(injector, config, logger);
  } catch (err) {
    await injector.close();
    throw err;
  }

  const dispatcher = new Pool(new URL(config.upstream.url).origin, poolOptions(config));
  const forwarder = new Forwarder({ config, dispatcher, injector, logger, metrics });
  const server = createProxyServer(config, forwarder, logger);
  let admin: http.Server | undefined;
  try {
    await listen(server, config.listen.port, config.listen.host, 'listen');
    if (config.admin.enabled) {
      admin = http.createServer(createAdminHandler({ metrics, injector, isDraining: () => forwarder.draining }));
      await listen(admin, config.admin.port, config.admin.host, 'admin');
    }
  } catch (err) {
    server.close();
    admin?.close();
    await dispatcher.destroy();
    await injector.close();
    throw err;
  }

  const address = server.address() as AddressInfo;
  const adminAddress = admin?.address() as AddressInfo | undefined;
  const url = `http://${hostForUrl(address)}:${address.port}`;
  const adminUrl = adminAddress ? `http://${hostForUrl(adminAddress)}:${adminAddress.port}` : undefined;
  logger.info('kvx-proxy listening', {
    url,
    adminUrl,
    upstream: config.upstream.url,
    providers: injector.active.map((a) => a.provider.name),
  });
  if (!['127.0.0.1', '::1', 'localhost'].includes(config.listen.host) && !config.listen.host.startsWith('127.')) {
    logger.warn('listening on a non-loopback address: anyone who can reach this port gets authenticated MLflow access', { host: config.listen.host });
  }

  let closing: Promise<number> | undefined;
  const close = (deadlineMs = config.server.shutdownTimeoutMs): Promise<number> =>
    (closing ??= drain(server, admin, forwarder, dispatcher, injector, deadlineMs, logger));

  return {
    url,
    adminUrl,
    address,
    injector,
    metrics,
    ready: () => !forwarder.draining && injector.status().ready,
    close,
  };
}

async function startCredentials(injector: HeaderInjector, config: KvxConfig, logger: Logger): Promise<void> {
  const timeoutMs = config.auth.startupTimeoutMs;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new CredentialsError('startup', `no credentials within auth.startupTimeoutMs (${timeoutMs} ms)`)), timeoutMs);
  });
  try {
    await Promise.race([injector.start(), timeout]);
  } catch (err) {
    if (config.auth.requireTokenAtStart) throw err;
    logger.warn('first credentials failed; serving anyway because auth.requireTokenAtStart is false (requests get 503 until credentials work)', {
      error: errorMessage(err),
    });
  } finally {
    clearTimeout(timer);
  }
}

function poolOptions(config: KvxConfig): UndiciPool.Options {
  const { upstream } = config;
  const tls: Record<string, unknown> = {};
  if (upstream.caFile) tls['ca'] = readFileSync(upstream.caFile);
  if (upstream.certFile) tls['cert'] = readFileSync(upstream.certFile);
  if (upstream.keyFile) tls['key'] = readFileSync(upstream.keyFile);
  if (upstream.insecure) tls['rejectUnauthorized'] = false;
  return {
    connections: upstream.maxConnections,
    connect: { timeout: upstream.connectTimeoutMs, ...tls },
    headersTimeout: upstream.headersTimeoutMs,
    bodyTimeout: upstream.idleTimeoutMs,
    keepAliveTimeout: 30_000,
    // Undici subtracts this from the server's advertised keep-alive timeout before reusing a socket,
    // which avoids most races with a server closing an idle connection.
    keepAliveTimeoutThreshold: 2_000,
    pipelining: 1,
  };
}

function createProxyServer(config: KvxConfig, forwarder: Forwarder, logger: Logger): http.Server {
  const server = http.createServer(
    {
      maxHeaderSize: config.server.maxHeaderSize,
      headersTimeout: config.server.headersTimeoutMs,
      requestTimeout: config.server.requestTimeoutMs,
      keepAliveTimeout: config.server.keepAliveTimeoutMs,
      // node:http checks the headers/request timeouts only this often (30 s by default), so a slowloris client
      // would otherwise hold its connection for up to 30 s past server.headersTimeoutMs.
      connectionsCheckingInterval: Math.min(30_000, Math.max(100, Math.floor(config.server.headersTimeoutMs / 10))),
      // Nagle's algorithm delays small MLflow answers by up to 40 ms on some stacks.
      noDelay: true,
    },
    forwarder.handle,
  );
  // Socket inactivity in either direction; long transfers are fine as long as bytes keep moving.
  server.timeout = config.upstream.idleTimeoutMs;
  server.on('timeout', (socket: Socket) => {
    // A client waiting for a slow upstream is not idle by its own fault: the upstream timeout answers it with a 504.
    if (!forwarder.awaitingUpstream(socket)) socket.destroy();
  });

  const refuseRaw = (socket: Socket, status: string, message: string) => {
    const body = errorBody('method_not_allowed', message);
    socket.end(`HTTP/1.1 ${status}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
  };
  server.on('connect', (_req, socket: Socket) => {
    refuseRaw(socket, '405 Method Not Allowed', 'CONNECT is refused: kvx-proxy is a reverse proxy for one MLflow server, not a forward proxy');
  });
  server.on('upgrade', (_req, socket: Socket) => {
    refuseRaw(socket, '501 Not Implemented', 'protocol upgrades are not supported; MLflow does not use them');
  });
  // Requests on each connection still owed an answer. Bytes after a complete request that fail to parse (a body
  // longer than its Content-Length) are answered with 400 after those answers, not instead of them: the
  // earlier request was forwarded, and its answer must not be lost.
  const owed = new WeakMap<Socket, Set<http.IncomingMessage>>();
  const afterAnswers = new WeakMap<Socket, () => void>();
  server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    const socket = req.socket;
    let pending = owed.get(socket);
    if (pending === undefined) owed.set(socket, (pending = new Set()));
    pending.add(req);
    res.once('close', () => {
      pending.delete(req);
      if (pending.size === 0) afterAnswers.get(socket)?.();
    });
  });
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
    if (err.code === 'ECONNRESET' || !socket.writable) {
      socket.destroy();
      return;
    }
    const pending = owed.get(socket);
    if (pending !== undefined && pending.size > 0 && [...pending].every((r) => r.complete) && !afterAnswers.has(socket)) {
      afterAnswers.set(socket, () => {
        if (socket.writable) answerClientError(err, socket);
        else socket.destroy();
      });
      return;
    }
    answerClientError(err, socket);
  });
  const answerClientError = (err: NodeJS.ErrnoException, socket: Socket) => {
    const [status, message] =
      err.code === 'HPE_HEADER_OVERFLOW'
        ? ['431 Request Header Fields Too Large', `request headers exceed server.maxHeaderSize (${config.server.maxHeaderSize} bytes)`]
        : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
          ? ['408 Request Timeout', 'the request was not received in time']
          : ['400 Bad Request', 'malformed HTTP request'];
    logger.debug('client error', { code: err.code });
    const body = JSON.stringify({ error_code: 'BAD_REQUEST', message: `kvx-proxy: ${message}` });
    socket.end(`HTTP/1.1 ${status}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
  };
  return server;
}

async function drain(
  server: http.Server,
  admin: http.Server | undefined,
  forwarder: Forwarder,
  dispatcher: UndiciPool,
  injector: HeaderInjector,
  deadlineMs: number,
  logger: Logger,
): Promise<number> {
  forwarder.draining = true;
  const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
  server.closeIdleConnections();
  logger.info('shutting down: no new connections; waiting for in-flight requests', { inFlight: forwarder.inFlight.size, deadlineMs });

  let cut = 0;
  if (forwarder.inFlight.size > 0) {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        cut = forwarder.inFlight.size;
        resolve();
      }, deadlineMs);
      forwarder.onExchangeDone = () => {
        server.closeIdleConnections();
        if (forwarder.inFlight.size === 0) {
          clearTimeout(timer);
          resolve();
        }
      };
    });
  }
  if (cut > 0) logger.warn('shutdown deadline reached; cutting unfinished requests', { cut });
  server.closeAllConnections();
  await stopped;
  await dispatcher.destroy().catch(() => {});
  admin?.closeAllConnections();
  await new Promise<void>((resolve) => (admin ? admin.close(() => resolve()) : resolve()));
  await injector.close();
  logger.info('kvx-proxy stopped', { cut });
  return cut;
}

function listen(server: http.Server, port: number, host: string, key: 'listen' | 'admin'): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) => {
      reject(
        err.code === 'EADDRINUSE'
          ? new ConfigError([{ path: `${key}.port`, message: `${host}:${port} is already in use; choose another port (0 picks a free one)` }])
          : err.code === 'EADDRNOTAVAIL'
            ? new ConfigError([{ path: `${key}.host`, message: `${host} is not an address of this machine` }])
            : err,
      );
    };
    server.once('error', onError);
    server.listen(port, host, () => {
      server.off('error', onError);
      resolve();
    });
  });
}

function hostForUrl(address: AddressInfo): string {
  return address.family === 'IPv6' ? `[${address.address}]` : address.address;
}
