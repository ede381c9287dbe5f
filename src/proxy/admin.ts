import type { IncomingMessage, RequestListener, ServerResponse } from 'node:http';
import type { HeaderInjector } from '../auth/injector.js';
import type { HostGuard } from './host-guard.js';
import type { ProxyMetrics } from './metrics.js';

/**
 * Health and metrics on their own listener: MLflow may serve /metrics itself, and a probe must never be
 * forwarded upstream with credentials attached.
 *
 * `hostGuard` refuses a Host that is not a name of the admin listener, as the proxy port does: /readyz names the
 * user's Google identity and its last error, which a web page could otherwise read by DNS rebinding. Probes and
 * scrapers address the listener by IP (kubelet, Prometheus's pod discovery) and pass.
 */
export function createAdminHandler(deps: { metrics: ProxyMetrics; injector: HeaderInjector; isDraining: () => boolean; hostGuard: HostGuard }): RequestListener {
  return (req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') return json(res, 405, { status: 'method not allowed' });
    const refusal = deps.hostGuard.check(req.method, req.headers.host, req.rawHeaders);
    if (refusal !== undefined) return json(res, refusal.kind === 'host_not_allowed' ? 421 : 400, { status: 'refused', reason: refusal.message });
    switch (path) {
      case '/healthz':
        return json(res, 200, { status: 'ok' });
      case '/readyz': {
        const status = deps.injector.status();
        const draining = deps.isDraining();
        const ready = status.ready && !draining;
        const now = Date.now();
        const providers = status.providers.map((p) => {
          const entry: Record<string, unknown> = { name: p.name, type: p.type, ready: p.ready };
          if (p.expiresAt !== undefined) entry['expiresInSeconds'] = Math.round((p.expiresAt - now) / 1000);
          if (p.identity !== undefined) entry['identity'] = p.identity;
          if (p.lastError !== undefined) entry['lastError'] = p.lastError;
          if (p.fetchPendingMs !== undefined) entry['fetchPendingSeconds'] = Math.round(p.fetchPendingMs / 100) / 10;
          const rejects = p.upstreamRejects;
          if (rejects !== undefined) {
            entry['upstreamRejects'] = {
              status: rejects.status,
              since: new Date(rejects.since).toISOString(),
              rejectedCredentials: rejects.rejectedCredentials,
              nextRefreshInSeconds: Math.max(0, Math.round((rejects.nextRefreshAt - now) / 1000)),
              likelyCause: rejects.likelyCause,
            };
          }
          return entry;
        });
        return json(res, ready ? 200 : 503, { status: ready ? 'ready' : draining ? 'draining' : 'not ready', providers });
      }
      case '/metrics': {
        const registry = deps.metrics.loadRegistry();
        if (!registry) return json(res, 503, { status: 'metrics unavailable', reason: deps.metrics.unavailableReason });
        registry.metrics().then(
          (text) => {
            res.writeHead(200, { 'content-type': registry.contentType });
            res.end(text);
          },
          () => json(res, 500, { status: 'metrics collection failed' }),
        );
        return;
      }
      default:
        return json(res, 404, { status: 'not found', paths: ['/healthz', '/readyz', '/metrics'] });
    }
  };
}

function json(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
  res.end(text);
}
