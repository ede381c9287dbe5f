import { readFileSync } from 'node:fs';
import type { ConnectionOptions } from 'node:tls';
import type { KvxConfig } from './schema.js';

/** The TLS settings for the upstream from upstream.caFile, certFile, keyFile and insecure: the proxy's and kvx-launch's. */
export function upstreamTlsOptions(upstream: KvxConfig['upstream']): ConnectionOptions {
  const tls: ConnectionOptions = {};
  if (upstream.caFile) tls.ca = readFileSync(upstream.caFile);
  if (upstream.certFile) tls.cert = readFileSync(upstream.certFile);
  if (upstream.keyFile) tls.key = readFileSync(upstream.keyFile);
  if (upstream.insecure) tls.rejectUnauthorized = false;
  return tls;
}
