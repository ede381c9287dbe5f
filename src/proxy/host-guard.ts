import { isIP } from 'node:net';
import type { KvxConfig } from '../config/schema.js';
import type { ProxyErrorKind } from './errors.js';
import { isHeader } from './header-names.js';

/**
 * Keeps web pages the user visits from using the proxy's credentials (the checks Jupyter's and MLflow 3's own
 * servers make). Two ways in, both closed here, before a credential is obtained or a byte forwarded:
 *
 * - DNS rebinding: a page on attacker.example re-points its name at 127.0.0.1; its requests then reach the proxy as
 *   same-origin to the browser, with `Host: attacker.example:5001`. Only a Host that names the proxy passes: an IP
 *   address (a page can only have an IP origin by being served from that address, so no rebinding), `localhost`
 *   and `*.localhost` (resolved to loopback by browsers, never by public DNS), listen.host, and server.allowedHosts.
 *   The port is not compared: the name is what an attacker controls, and port forwarding (docker -p 8080:5001,
 *   kubectl port-forward, ssh -L) legitimately changes the port a browser sees.
 * - Cross-site requests to a real address of the proxy: a `text/plain` POST or a no-cors GET needs no CORS
 *   preflight, and an upstream that answers CORS with `*` would even let the page read the answer. A request with
 *   an `Origin` passes only when that origin is the proxy as addressed (scheme://<Host>) or listed in
 *   server.allowedOrigins; one without `Origin` but with `Sec-Fetch-Site: cross-site`/`same-site` passes only as a
 *   GET navigation, as in the Fetch Metadata resource isolation policy: a link to the MLflow UI opened from another
 *   page, or a frame such as MLflow's trace view in a Jupyter notebook. The page cannot read what a navigation
 *   loads; whether the UI may be framed is the upstream's X-Frame-Options (MLflow 3 sends SAMEORIGIN).
 *
 * Clients that are not browsers (the MLflow Python client, curl) send neither header and only meet the Host check.
 */
export interface GuardRefusal {
  kind: ProxyErrorKind;
  /** Metric label: which check refused. */
  reason: 'host' | 'origin' | 'fetch_site';
  message: string;
  hint: string;
  /** The header that was refused, as the log shows it. */
  header: 'host' | 'origin' | 'sec-fetch-site';
  value: string;
}

const PORT = /^:\d{0,5}$/;
const ORIGIN = /^(https?):\/\/([^/?#]+)$/i;
/** Distinct Host values remembered as accepted, so the usual one or two cost a Set lookup per request. */
const ACCEPTED_MEMO_SIZE = 64;
const HOST_FIX = 'if you reach the proxy by this name, add it to server.allowedHosts (flag --allowed-hosts, env KVX_SERVER_ALLOWED_HOSTS)';
const ORIGIN_FIX = 'to let a page of your own call MLflow through the proxy, add its origin to server.allowedOrigins (flag --allowed-origins, env KVX_SERVER_ALLOWED_ORIGINS)';

export class HostGuard {
  private readonly anyHost: boolean;
  private readonly anyOrigin: boolean;
  /** Lower-case names without a trailing dot. */
  private readonly names = new Set<string>();
  /** `.corp.example` for a `*.corp.example` entry. */
  private readonly suffixes: string[] = [];
  /** Origins as browsers serialise them (URL.origin). */
  private readonly origins = new Set<string>();
  private readonly accepted = new Set<string>();

  constructor(config: Pick<KvxConfig, 'listen' | 'server'>) {
    const { allowedHosts, allowedOrigins } = config.server;
    this.anyHost = allowedHosts.includes('*');
    this.anyOrigin = allowedOrigins.includes('*');
    const listenName = normaliseName(config.listen.host);
    if (isIP(listenName) === 0 && listenName !== '') this.names.add(listenName);
    for (const entry of allowedHosts) {
      if (entry === '*') continue;
      const name = normaliseName(entry);
      if (name.startsWith('*.')) this.suffixes.push(name.slice(1));
      else this.names.add(name);
    }
    for (const entry of allowedOrigins) if (entry !== '*') this.origins.add(new URL(entry).origin);
  }

  /** Undefined when the request may proceed; otherwise why not. A request that passes allocates nothing else. */
  check(method: string, host: string | undefined, raw: readonly string[]): GuardRefusal | undefined {
    let hosts = 0;
    let origins = 0;
    let origin: string | undefined;
    let site: string | undefined;
    let mode: string | undefined;
    let dest: string | undefined;
    for (let i = 0; i < raw.length; i += 2) {
      const name = raw[i]!;
      // Switch on length first, as ClientRequest does: most headers are passed over without lower-casing them.
      switch (name.length) {
        case 4:
          if (isHeader(name, 'host')) hosts++;
          break;
        case 6:
          if (isHeader(name, 'origin')) {
            origin = raw[i + 1];
            origins++;
          }
          break;
        case 14: {
          if (isHeader(name, 'sec-fetch-site')) site = raw[i + 1];
          else if (isHeader(name, 'sec-fetch-mode')) mode = raw[i + 1];
          else if (isHeader(name, 'sec-fetch-dest')) dest = raw[i + 1];
          break;
        }
      }
    }
    if (hosts > 1) {
      return {
        kind: 'bad_request',
        reason: 'host',
        message: 'more than one Host header; a request names one host',
        hint: 'the client or a front end in between repeats Host',
        header: 'host',
        value: forDisplay(host ?? ''),
      };
    }
    // No Host (HTTP/1.0) names no host to rebind: browsers always send one.
    if (!this.anyHost && host !== undefined && host !== '' && !this.hostAllowed(host)) {
      const shown = forDisplay(host);
      return {
        kind: 'host_not_allowed',
        reason: 'host',
        message: `Host "${shown}" is not a name of this proxy (a web page may be trying to reach it by DNS rebinding); ${HOST_FIX}`,
        hint: HOST_FIX,
        header: 'host',
        value: shown,
      };
    }
    if (this.anyOrigin) return undefined;
    if (origin !== undefined) {
      if (origins === 1 && this.originAllowed(origin, host)) return undefined;
      const shown = origins === 1 ? forDisplay(origin) : 'more than one Origin';
      return {
        kind: 'origin_not_allowed',
        reason: 'origin',
        message: `cross-origin request from ${shown} refused: a web page of another origin may not use the proxy's credentials; ${ORIGIN_FIX}`,
        hint: ORIGIN_FIX,
        header: 'origin',
        value: shown,
      };
    }
    if ((site === 'cross-site' || site === 'same-site') && !(mode === 'navigate' && (method === 'GET' || method === 'HEAD') && dest !== 'object' && dest !== 'embed')) {
      return {
        kind: 'cross_site_request',
        reason: 'fetch_site',
        message: `cross-site browser request refused (Sec-Fetch-Site: ${site}): only the MLflow UI served by the proxy, pages opened from links elsewhere and clients that are not browsers may use it; ${ORIGIN_FIX}`,
        hint: ORIGIN_FIX,
        header: 'sec-fetch-site',
        value: site,
      };
    }
    return undefined;
  }

  private hostAllowed(host: string): boolean {
    if (this.accepted.has(host)) return true;
    if (!this.judgeHost(host)) return false;
    if (this.accepted.size < ACCEPTED_MEMO_SIZE) this.accepted.add(host);
    return true;
  }

  private judgeHost(host: string): boolean {
    let name: string;
    if (host.charCodeAt(0) === 91 /* [ */) {
      const close = host.indexOf(']');
      return close !== -1 && PORT.test(host.slice(close + 1) || ':') && isIP(host.slice(1, close)) === 6;
    }
    const colon = host.indexOf(':');
    if (colon === -1) {
      name = host;
    } else {
      // Two colons: an IPv6 address without brackets; malformed, but an address all the same.
      if (host.indexOf(':', colon + 1) !== -1) return isIP(host) === 6;
      if (!PORT.test(host.slice(colon))) return false;
      name = host.slice(0, colon);
    }
    name = normaliseName(name);
    if (name === '') return false;
    if (isIP(name) === 4) return true;
    if (name === 'localhost' || name.endsWith('.localhost')) return true;
    if (this.names.has(name)) return true;
    for (const suffix of this.suffixes) if (name.length > suffix.length && name.endsWith(suffix)) return true;
    return false;
  }

  private originAllowed(origin: string, host: string | undefined): boolean {
    // The common case, the UI's own POST: `http://` + the Host it was addressed by, compared without allocating.
    if (host !== undefined && origin.length === host.length + 7 && origin.startsWith('http://') && origin.endsWith(host)) return true;
    if (this.origins.has(origin)) return true;
    const match = ORIGIN.exec(origin);
    if (match === null) return false;
    const scheme = match[1]!.toLowerCase();
    const authority = match[2]!.toLowerCase();
    if (this.origins.has(`${scheme}://${authority}`)) return true;
    if (host === undefined) return false;
    // Same name as the Host (a TLS front end that keeps Host makes the origin https); a default port may be
    // spelt out in one and left out of the other.
    const hostLower = host.toLowerCase();
    const defaultPort = scheme === 'https' ? ':443' : ':80';
    return authority === hostLower || authority + defaultPort === hostLower || authority === hostLower + defaultPort;
  }
}

function normaliseName(name: string): string {
  const lower = name.toLowerCase();
  return lower.endsWith('.') ? lower.slice(0, -1) : lower;
}

/** Client-controlled text for an error message and the log: printable ASCII, bounded. */
function forDisplay(value: string): string {
  const printable = value.replace(/[^\x20-\x7e]/g, '?');
  return printable.length > 100 ? `${printable.slice(0, 100)}…` : printable;
}
