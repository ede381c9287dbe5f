import type { KvxConfig } from '../config/schema.js';
import { CLIENT_CREDENTIAL_HEADERS, PROXY_OWNED_REQUEST_HEADERS } from '../config/validate.js';
import type { LocationRewriter } from './engine.js';
import { HeaderNameSet, isHeader } from './header-names.js';

/** Content-Length is kept here: whether it describes the body is decided with the framing. */
const DROPPED_RESPONSE_HEADERS = new HeaderNameSet(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'proxy-authenticate']);

export interface RequestHeaderPlan {
  /** Names never forwarded from the client: the ones the proxy sets itself and the credential headers not preserved. */
  dropped: HeaderNameSet;
  upstreamHost: string;
  /**
   * Drop client headers whose names contain `_` (headers.allowUnderscores off), as nginx's underscores_in_headers
   * off does: CGI and WSGI servers map `-` to `_`, so `X_Serverless_Authorization` would reach MLflow as the
   * credential header kvx strips under its dashed name.
   */
  dropUnderscored: boolean;
}

/** Methods whose requests carry a body by convention: sent with Content-Length: 0 when they have none (some front ends answer 411 otherwise). */
export const BODY_EXPECTED: ReadonlySet<string> = new Set(['POST', 'PUT', 'PATCH']);

/** The header plan of a configuration. */
export function requestHeaderPlan(config: KvxConfig): RequestHeaderPlan {
  const preserved = new Set(config.headers.preserve.map((h) => h.toLowerCase()));
  return {
    dropped: new HeaderNameSet([...PROXY_OWNED_REQUEST_HEADERS, ...CLIENT_CREDENTIAL_HEADERS.filter((h) => !preserved.has(h))]),
    upstreamHost: new URL(config.upstream.url).host,
    dropUnderscored: !config.headers.allowUnderscores,
  };
}

/**
 * The tokens of every Connection header, more hop-by-hop headers named by the sender, leaving out those
 * `dropped` already: undefined for the usual `keep-alive` or `close`.
 */
function connectionTokens(raw: readonly string[], dropped: HeaderNameSet): HeaderNameSet | undefined {
  let tokens: string[] | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    if (!isHeader(raw[i]!, 'connection')) continue;
    const value = raw[i + 1]!;
    // Nearly always a single `keep-alive` or `close`: no list to split.
    for (const part of value.includes(',') ? value.split(',') : [value]) {
      const token = part.trim();
      if (token !== '' && !dropped.has(token)) (tokens ??= []).push(token);
    }
  }
  return tokens === undefined ? undefined : new HeaderNameSet(tokens);
}

/**
 * The header block of the upstream request, from the client's raw header list (its casing and order kept).
 * Headers in `injected` replace the client's copies; `framing` is the Content-Length or Transfer-Encoding
 * line for the body as it will be sent.
 */
export function upstreamRequestHead(
  method: string,
  path: string,
  raw: readonly string[],
  plan: RequestHeaderPlan,
  injected: Readonly<Record<string, string>>,
  injectedNames: HeaderNameSet,
  requestId: string,
  framing: string,
): string {
  let head = `${method} ${path} HTTP/1.1\r\nhost: ${plan.upstreamHost}\r\n`;
  const hopByHop = connectionTokens(raw, plan.dropped);
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (plan.dropped.has(name) || injectedNames.has(name)) continue;
    if (plan.dropUnderscored && name.includes('_')) continue;
    if (hopByHop?.has(name)) continue;
    head += `${name}: ${raw[i + 1]!}\r\n`;
  }
  for (const name in injected) head += `${name}: ${injected[name]!}\r\n`;
  return `${head}x-request-id: ${requestId}\r\n${framing}\r\n`;
}

export interface ClientResponseHead {
  /** `name: value\r\n` lines, without framing and connection headers. */
  lines: string;
  /** Upstream delimited the body by Content-Length (kept in `lines`). */
  hasLength: boolean;
}

/**
 * Response headers for the client: hop-by-hop ones dropped, and a Location that points at the upstream
 * rewritten to the proxy, so a client following it stays behind the proxy (and its credentials never
 * travel to where the redirect pointed).
 */
export function clientResponseHead(raw: readonly string[], rewriter: LocationRewriter, clientHost: string | undefined): ClientResponseHead {
  const hopByHop = connectionTokens(raw, DROPPED_RESPONSE_HEADERS);
  let lines = '';
  let hasLength = false;
  let chunked = false;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (DROPPED_RESPONSE_HEADERS.has(name) || hopByHop?.has(name)) {
      if (isHeader(name, 'transfer-encoding')) chunked = true;
      continue;
    }
    let value = raw[i + 1]!;
    if (isHeader(name, 'content-length')) hasLength = true;
    else if (isHeader(name, 'location')) value = rewriter.rewriteLocation(value, clientHost);
    lines += `${name}: ${value}\r\n`;
  }
  // llhttp refuses a response with both; this keeps the rule local all the same.
  return { lines, hasLength: hasLength && !chunked };
}

/**
 * The upstream request's headers as a flat [name, value, ...] list, for an engine whose client takes a list
 * (undici): the same selection as upstreamRequestHead, framing left to that client.
 */
export function upstreamRequestHeaderList(
  raw: readonly string[],
  plan: RequestHeaderPlan,
  injected: Readonly<Record<string, string>>,
  injectedNames: HeaderNameSet,
  requestId: string,
): string[] {
  const list = ['host', plan.upstreamHost];
  const hopByHop = connectionTokens(raw, plan.dropped);
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (plan.dropped.has(name) || injectedNames.has(name)) continue;
    if (plan.dropUnderscored && name.includes('_')) continue;
    if (hopByHop?.has(name)) continue;
    list.push(name, raw[i + 1]!);
  }
  for (const name in injected) list.push(name, injected[name]!);
  list.push('x-request-id', requestId);
  return list;
}

/** The client response's headers as a flat list (node:http's writeHead), the same selection as clientResponseHead. */
export function clientResponseHeaderList(raw: readonly string[], rewriter: LocationRewriter, clientHost: string | undefined): { list: string[]; hasLength: boolean } {
  const hopByHop = connectionTokens(raw, DROPPED_RESPONSE_HEADERS);
  const list: string[] = [];
  let hasLength = false;
  let chunked = false;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (DROPPED_RESPONSE_HEADERS.has(name) || hopByHop?.has(name)) {
      if (isHeader(name, 'transfer-encoding')) chunked = true;
      continue;
    }
    let value = raw[i + 1]!;
    if (isHeader(name, 'content-length')) hasLength = true;
    else if (isHeader(name, 'location')) value = rewriter.rewriteLocation(value, clientHost);
    list.push(name, value);
  }
  return { list, hasLength: hasLength && !chunked };
}
