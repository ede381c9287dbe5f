import { accessSync, constants, readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import type { ConfigProblem } from '../errors.js';
import { nodeCrypto } from '../util/lazy-require.js';
import type { KvxConfig } from './schema.js';

/** Headers a client may carry its own credentials in; dropped unless listed in headers.preserve. */
export const CLIENT_CREDENTIAL_HEADERS = ['authorization', 'proxy-authorization', 'x-serverless-authorization', 'cookie'] as const;

/** A header field name (RFC 9110 §5.1: a token). */
export const HEADER_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/**
 * Request headers the proxy owns and never forwards from a client: hop-by-hop headers (RFC 9110 §7.6.1), the
 * framing and Host it sets itself, Expect, which it answers itself, and its request id. The engines drop them;
 * no provider may set them either, as that would break or smuggle the request.
 */
export const PROXY_OWNED_REQUEST_HEADERS: ReadonlySet<string> = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'content-length',
  'upgrade',
  'expect',
  'host',
  'http2-settings',
  'x-request-id',
]);
/** `*`, or a DNS name optionally led by `*.`, optionally with the root's trailing dot. */
const ALLOWED_HOST = /^(?:\*|(?:\*\.)?[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?)$/;

/** Cross-field rules that a single key's type cannot express. */
export function validateConfig(config: KvxConfig, options: { requireUpstream: boolean }): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  const add = (path: string, message: string) => problems.push({ path, message });

  const { upstream, listen, admin, auth } = config;
  if (upstream.url === '') {
    if (options.requireUpstream) add('upstream.url', 'required: the MLflow server to forward to, e.g. https://mlflow.example.com (flag --upstream, env KVX_UPSTREAM_URL)');
  } else {
    const problem = upstreamUrlProblem(upstream.url);
    if (problem) add('upstream.url', problem);
  }

  if (!listen.allowNonLoopback) {
    if (!isLoopbackHost(listen.host)) {
      add('listen.host', `"${listen.host}" is not a loopback address; anyone who reaches it gets authenticated MLflow access. Set listen.allowNonLoopback: true (--allow-non-loopback) to accept that`);
    }
    if (admin.enabled && !isLoopbackHost(admin.host)) {
      add('admin.host', `"${admin.host}" is not a loopback address; set listen.allowNonLoopback: true to expose health and metrics`);
    }
  }
  if (admin.enabled && admin.port !== 0 && admin.port === listen.port && admin.host === listen.host) {
    add('admin.port', `must differ from listen.port (${listen.port}): MLflow paths and admin paths are served on separate listeners`);
  }

  if (upstream.insecure && upstream.caFile) {
    add('upstream.insecure', 'cannot be combined with upstream.caFile: either verify against the CA bundle or (for debugging only) not at all');
  }
  if (Boolean(upstream.certFile) !== Boolean(upstream.keyFile)) {
    add(upstream.certFile ? 'upstream.keyFile' : 'upstream.certFile', 'mutual TLS needs both upstream.certFile and upstream.keyFile');
  }
  for (const key of ['caFile', 'certFile', 'keyFile'] as const) {
    const file = upstream[key];
    if (file && !readable(file)) add(`upstream.${key}`, `cannot read ${file}; check the path and permissions`);
    else if (key === 'caFile' && file) {
      const problem = caBundleProblem(file);
      if (problem) add('upstream.caFile', problem);
    }
  }
  if ((upstream.caFile || upstream.certFile) && upstream.url.startsWith('http:')) {
    add('upstream.url', 'TLS files are set but the upstream is plain http; use an https:// URL');
  }

  if (!HEADER_NAME.test(auth.header)) add('auth.header', `"${auth.header}" is not a valid header name`);
  auth.providers.forEach((p, i) => {
    if (p.header !== undefined && !HEADER_NAME.test(p.header)) add(`auth.providers[${i}].header`, `"${p.header}" is not a valid header name`);
  });
  const known = new Set<string>(CLIENT_CREDENTIAL_HEADERS);
  config.headers.preserve.forEach((h, i) => {
    if (!known.has(h.toLowerCase())) {
      add(`headers.preserve[${i}]`, `"${h}" is not a credential header; only ${CLIENT_CREDENTIAL_HEADERS.join(', ')} are dropped, every other header is forwarded already`);
    }
  });
  auth.retryOnStatus.forEach((s, i) => {
    if (s !== 401 && s !== 403 && s !== 407) add(`auth.retryOnStatus[${i}]`, `${s} is not an authentication status; use 401, 403 or 407`);
  });
  config.server.allowedHosts.forEach((h, i) => {
    if (!ALLOWED_HOST.test(h) && isIP(h.replace(/^\[|\]$/g, '')) === 0) {
      add(`server.allowedHosts[${i}]`, `"${h}" is not a host name; give a name without scheme or port, e.g. mlflow.internal, *.corp.example, or * for any (IP addresses are always accepted)`);
    }
  });
  config.server.allowedOrigins.forEach((o, i) => {
    const problem = originProblem(o);
    if (problem) add(`server.allowedOrigins[${i}]`, problem);
  });
  if (auth.provider === 'custom' && !auth.module) add('auth.module', 'required when auth.provider is custom: the path of your provider module');

  if (config.vertex.endpoint) {
    const problem = httpUrlProblem(config.vertex.endpoint);
    if (problem) add('vertex.endpoint', problem);
  }
  for (const key of ['iamCredentials', 'oauthToken', 'sts'] as const) {
    const problem = httpUrlProblem(auth.endpoints[key]);
    if (problem) add(`auth.endpoints.${key}`, problem);
  }
  return problems;
}

export function upstreamUrlProblem(raw: string): string | undefined {
  const basic = httpUrlProblem(raw);
  if (basic) return basic;
  const url = new URL(raw);
  if (url.username || url.password) return 'must not contain credentials; use auth.provider basic or static instead';
  if (url.search || url.hash) return 'must not have a query string or fragment; give the server root or its path prefix';
  return undefined;
}

function originProblem(raw: string): string | undefined {
  if (raw === '*' || (/^https?:\/\/[^/?#@\s]+\/?$/i.test(raw) && URL.canParse(raw))) return undefined;
  return `"${raw}" is not an origin; write scheme://host[:port] with no path, as the browser's address bar shows it, e.g. https://dashboard.example.com or http://localhost:3000, or * for any`;
}

function httpUrlProblem(raw: string): string | undefined {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return `"${raw}" is not a URL; write it as https://host[:port][/path]`;
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return `must be http or https, got ${url.protocol.replace(':', '')}`;
  return undefined;
}

export function isLoopbackHost(host: string): boolean {
  if (host === 'localhost') return true;
  const bare = host.replace(/^\[|\]$/g, '');
  if (isIP(bare) === 4) return bare.startsWith('127.');
  if (isIP(bare) === 6) return bare === '::1' || bare.startsWith('::ffff:127.');
  return false;
}

/** The PEM labels OpenSSL reads as a CA certificate; only plain CERTIFICATE blocks are checked further. */
const PEM_CERTIFICATE = /-----BEGIN ((?:TRUSTED |X509 )?CERTIFICATE)-----[^-]*-----END \1-----/g;

/**
 * Node takes any bytes as `ca` without a word and then trusts nothing: an empty or DER file would only show up
 * as a certificate error on every request. Every PEM certificate in the bundle must parse.
 */
function caBundleProblem(file: string): string | undefined {
  const text = readFileSync(file, 'latin1');
  if (text.trim() === '') return `${file} is empty; it must hold the PEM certificates (-----BEGIN CERTIFICATE-----) of the CAs to trust`;
  const blocks = [...text.matchAll(PEM_CERTIFICATE)];
  if (blocks.length === 0) {
    return `${file} holds no PEM certificate (-----BEGIN CERTIFICATE-----); convert a DER file with: openssl x509 -inform der -in ca.der -out ca.pem`;
  }
  for (const [i, block] of blocks.entries()) {
    if (block[1] !== 'CERTIFICATE') continue;
    try {
      new (nodeCrypto().X509Certificate)(block[0]);
    } catch (err) {
      return `certificate ${i + 1} of ${blocks.length} in ${file} is not a valid PEM certificate (${(err as Error).message})`;
    }
  }
  return undefined;
}

function readable(file: string): boolean {
  try {
    accessSync(file, constants.R_OK);
    return true;
  } catch {
    return false;
  }
}
