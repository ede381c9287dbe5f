import type { IncomingHttpHeaders } from 'node:http';

/**
 * Request headers that must not travel to upstream: hop-by-hop headers (RFC 9110 §7.6.1) and headers the
 * proxy sets itself. undici refuses several of these outright, so they are dropped before dispatch.
 * `expect` is answered by node:http with 100 Continue before the handler runs.
 */
const DROPPED_REQUEST_HEADERS = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'expect',
  'host',
  'http2-settings',
]);

const DROPPED_RESPONSE_HEADERS = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'proxy-authenticate']);

export interface RequestHeaderPlan {
  /** Lower-case names never forwarded from the client (credential headers not preserved). */
  stripped: ReadonlySet<string>;
  upstreamHost: string;
}

/**
 * Builds the flat [name, value, ...] list undici takes, from node's raw header list (which keeps the
 * client's casing and order). Headers in `injected` replace the client's copies.
 */
export function upstreamRequestHeaders(
  raw: readonly string[],
  plan: RequestHeaderPlan,
  injected: Readonly<Record<string, string>>,
  injectedLower: ReadonlySet<string>,
  requestId: string,
): string[] {
  const out: string[] = ['host', plan.upstreamHost];
  let connectionTokens: Set<string> | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]!.length === 10 && raw[i]!.toLowerCase() === 'connection') {
      connectionTokens = new Set(raw[i + 1]!.toLowerCase().split(',').map((t) => t.trim()));
    }
  }
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    const lower = name.toLowerCase();
    if (DROPPED_REQUEST_HEADERS.has(lower) || plan.stripped.has(lower) || injectedLower.has(lower)) continue;
    if (connectionTokens?.has(lower)) continue;
    if (lower === 'x-request-id') continue;
    out.push(name, raw[i + 1]!);
  }
  for (const name in injected) out.push(name, injected[name]!);
  out.push('x-request-id', requestId);
  return out;
}

/**
 * Response headers for the client: hop-by-hop ones dropped, and a Location that points at the upstream
 * rewritten to the proxy, so a client following it stays behind the proxy (and its credentials never
 * travel to where the redirect pointed).
 */
export function clientResponseHeaders(
  headers: IncomingHttpHeaders,
  rewriteLocation: (location: string) => string,
): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const name in headers) {
    const value = headers[name];
    if (value === undefined || DROPPED_RESPONSE_HEADERS.has(name)) continue;
    out[name] = name === 'location' && typeof value === 'string' ? rewriteLocation(value) : value;
  }
  const connection = headers['connection'];
  if (typeof connection === 'string') {
    for (const token of connection.split(',')) delete out[token.trim().toLowerCase()];
  }
  return out;
}
