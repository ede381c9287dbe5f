import type http from 'node:http';
import type { AddressInfo, Server } from 'node:net';
import { HeaderInjector } from '../auth/injector.js';
import { planProviders } from '../auth/registry.js';
import '../auth/index.js';
import type { LoadedConfig } from '../config/load.js';
import type { KvxConfig } from '../config/schema.js';
import { ConfigError, CredentialsError, errorMessage } from '../errors.js';
import type { Logger } from '../log/logger.js';
import { silentLogger } from '../log/logger.js';
import { RateLimitedWarning } from '../log/rate-limited.js';
import { createAdminHandler } from './admin.js';
import { HostGuard } from './host-guard.js';
import { clientConnectionCap } from './fd-limit.js';
import { Forwarder } from './forward.js';
import { IdleMemoryReducer } from './idle-memory.js';
import { ProxyMetrics } from './metrics.js';
import { createEngine } from './engine-select.js';
import type { ClientSide, Engine, EngineHooks, RefusalKind } from './engine.js';
import { lazyRequire } from '../util/lazy-require.js';
import { Egress } from '../config/egress.js';
import { isLoopbackHost } from '../config/validate.js';
import { errorBody } from './errors.js';

/**
 * node:http for the admin listener, loaded as CommonJS: importing it as an ES module makes Node build a facade
 * that reads every export, and its lazy WebSocket export then loads Node's bundled undici, about 30 ms of every
 * start (paid by each exec-wrapped pipeline step).
 */
const { createServer: createHttpServer } = lazyRequire('node:http') as typeof http;

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

  const egress = Egress.fromConfig(config, env);
  const metrics = new ProxyMetrics({ processMetrics: options.processMetrics ?? true, logger });
  const injector = await HeaderInjector.create(plans, { config, logger, baseDir: loaded.baseDir, env, metrics, egress });
  try {
    await startCredentials(injector, config, logger);
  } catch (err) {
    await injector.close();
    await egress.close();
    throw err;
  }

  // The engine hands requests to the forwarder, which sends them through the engine's upstream side.
  const engine = await createEngine(config, egress, engineHooks(config, (request) => forwarder.handle(request), logger), logger).catch(async (err: unknown) => {
    await injector.close();
    await egress.close();
    throw err;
  });
  const forwarder = new Forwarder({ config, upstream: engine.upstream, injector, logger, metrics });
  metrics.engine = engine.name;
  const { clients: listener, upstream: pool } = engine;
  const server = listener.server;
  const reducer = new IdleMemoryReducer(
    {
      requestsStarted: () => forwarder.requestsStarted,
      openConnections: () => listener.connectionCount,
      busy: () => forwarder.inFlight > 0,
    },
    logger,
  );
  let admin: http.Server | undefined;
  try {
    await listen(server, config.listen.port, config.listen.host, 'listen');
    if (config.admin.enabled) {
      // The admin listener's own name, server.allowedHosts, and no Origin checks: it answers GETs only, without CORS.
      const hostGuard = new HostGuard({ listen: { ...config.listen, host: config.admin.host }, server: { ...config.server, allowedOrigins: ['*'] } });
      admin = createHttpServer(createAdminHandler({ metrics, injector, isDraining: () => forwarder.draining, hostGuard }));
      await listen(admin, config.admin.port, config.admin.host, 'admin');
    }
  } catch (err) {
    server.close();
    listener.stop();
    admin?.close();
    await pool.destroy();
    await injector.close();
    await egress.close();
    throw err;
  }

  const connectionLimits = watchAcceptFailures(listener, admin, config, metrics, logger);

  reducer.start();
  const address = server.address() as AddressInfo;
  const adminAddress = admin?.address() as AddressInfo | undefined;
  const url = `http://${hostForUrl(address)}:${address.port}`;
  const adminUrl = adminAddress ? `http://${hostForUrl(adminAddress)}:${adminAddress.port}` : undefined;
  logger.info('kvx-proxy listening', {
    url,
    adminUrl,
    upstream: config.upstream.url,
    ...(egress.active ? { upstreamEgress: egress.describe(config.upstream.url) } : {}),
    engine: engine.name,
    providers: injector.active.map((a) => a.provider.name),
    fdLimit: connectionLimits.fdLimit,
    maxClientConnections: connectionLimits.maxClientConnections,
  });
  if (!isLoopbackHost(config.listen.host)) {
    logger.warn('listening on a non-loopback address: anyone who can reach this port gets authenticated MLflow access', { host: config.listen.host });
  }

  let closing: Promise<number> | undefined;
  const close = (deadlineMs = config.server.shutdownTimeoutMs): Promise<number> => {
    reducer.stop();
    return (closing ??= drain(listener, admin, forwarder, pool, injector, deadlineMs, logger).finally(() => {
      connectionLimits.close();
      return egress.close();
    }));
  };

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

/**
 * Connections the proxy cannot take are logged (rate-limited) and counted, never fatal. Client connections are
 * capped below the open-file limit (see clientConnectionCap), so at the limit Node drops them with a 'drop'
 * event instead of libuv closing them unseen. An accept() error Node does report (EMFILE when libuv has no
 * reserve descriptor left, ENFILE, ENOBUFS...) arrives as the server's 'error' event, which without a listener
 * would end the process.
 */
function watchAcceptFailures(
  listener: ClientSide,
  admin: http.Server | undefined,
  config: KvxConfig,
  metrics: ProxyMetrics,
  logger: Logger,
): { fdLimit: number | undefined; maxClientConnections: number | undefined; close: () => void } {
  const server = listener.server;
  const limits = clientConnectionCap(config.upstream.maxConnections);
  const hint = "raise the open-file limit: ulimit -n, systemd's LimitNOFILE, or the container runtime's nofile ulimit";
  const dropped = new RateLimitedWarning(logger, 'new connections dropped: too many open files', 'dropped');
  if (limits) {
    server.maxConnections = limits.cap;
    server.on('drop', () => {
      metrics.acceptError('EMFILE');
      dropped.report({ code: 'EMFILE', connections: listener.connectionCount, maxClientConnections: limits.cap, fdLimit: limits.fdLimit, hint });
    });
  }
  const failures = new Map<string, RateLimitedWarning>();
  const onError = (which: 'listen' | 'admin') => (err: NodeJS.ErrnoException) => {
    const code = err.code ?? 'unknown';
    metrics.acceptError(code);
    let warning = failures.get(code);
    if (!warning) failures.set(code, (warning = new RateLimitedWarning(logger, 'accepting a connection failed', 'failures')));
    warning.report({ listener: which, code, error: err.message, ...(code === 'EMFILE' || code === 'ENFILE' ? { hint } : {}) });
  };
  server.on('error', onError('listen'));
  admin?.on('error', onError('admin'));
  return {
    fdLimit: limits?.fdLimit,
    maxClientConnections: limits?.cap,
    close: () => {
      dropped.close();
      for (const warning of failures.values()) warning.close();
    },
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

function engineHooks(config: KvxConfig, onRequest: EngineHooks['onRequest'], logger: Logger): EngineHooks {
  const refusal = (kind: RefusalKind): { status: string; body: string } => {
    const [status, message] =
      kind === 'header_overflow'
        ? ['431 Request Header Fields Too Large', `request headers exceed server.maxHeaderSize (${config.server.maxHeaderSize} bytes) or number more than 500`]
        : kind === 'timeout'
          ? ['408 Request Timeout', 'the request was not received in time']
          : kind === 'too_large'
            ? ['413 Content Too Large', `the request's Content-Length exceeds ${Number.MAX_SAFE_INTEGER} bytes (2^53 - 1), the largest length kvx-proxy forwards exactly`]
            : ['400 Bad Request', 'malformed HTTP request'];
    return { status, body: errorBody('bad_request', message) };
  };
  return {
    onRequest,
    onClientError: (code) => logger.debug('client error', { code }),
    refusal,
  };
}

async function drain(
  listener: ClientSide,
  admin: http.Server | undefined,
  forwarder: Forwarder,
  pool: Engine['upstream'],
  injector: HeaderInjector,
  deadlineMs: number,
  logger: Logger,
): Promise<number> {
  forwarder.draining = true;
  const server = listener.server;
  const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
  listener.closeIdle();
  logger.info('shutting down: no new connections; waiting for in-flight requests', { inFlight: forwarder.inFlight, deadlineMs });

  let cut = 0;
  if (forwarder.inFlight > 0) {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        cut = forwarder.inFlight;
        resolve();
      }, deadlineMs);
      forwarder.onExchangeDone = () => {
        listener.closeIdle();
        if (forwarder.inFlight === 0) {
          clearTimeout(timer);
          resolve();
        }
      };
    });
  }
  if (cut > 0) logger.warn('shutdown deadline reached; cutting unfinished requests', { cut });
  listener.closeAll();
  await stopped;
  listener.stop();
  await pool.destroy().catch(() => {});
  admin?.closeAllConnections();
  await new Promise<void>((resolve) => (admin ? admin.close(() => resolve()) : resolve()));
  await injector.close();
  logger.info('kvx-proxy stopped', { cut });
  return cut;
}

function listen(server: Server, port: number, host: string, key: 'listen' | 'admin'): Promise<void> {
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
