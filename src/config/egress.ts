/**
 * The one place that decides how kvx reaches a URL: through which egress proxy, if any (egress.proxy or
 * HTTPS_PROXY / HTTP_PROXY with NO_PROXY), and at which address for the names egress.hostAliases fixes. The wire
 * engine's upstream dial, the undici dispatchers of kvx-launch, doctor and every Google call ask it; none of them
 * reads the proxy variables itself.
 */
import dns from 'node:dns';
import net from 'node:net';
import type { LookupFunction } from 'node:net';
import { ConfigError } from '../errors.js';
import type { ConfigProblem } from '../errors.js';
import type { KvxConfig } from './schema.js';

export interface EgressProxy {
  /** http://host:port without the credentials: what logs, errors and doctor show. */
  readonly display: string;
  /** Without brackets for IPv6. */
  readonly host: string;
  readonly port: number;
  /** `Basic …` from the URL's user info, sent to the proxy only; never logged. */
  readonly authorization: string | undefined;
  /** Where it was configured: egress.proxy, HTTPS_PROXY, https_proxy, HTTP_PROXY or http_proxy. */
  readonly source: string;
  /** The URL with its credentials, for undici's ProxyAgent. */
  readonly url: string;
}

export interface EgressRoute {
  /** The proxy to tunnel through; undefined to connect directly. */
  proxy: EgressProxy | undefined;
  /** Why, in words, for doctor: `HTTPS_PROXY`, `NO_PROXY entry .corp`, `no proxy configured`. */
  reason: string;
}

interface NoProxyEntry {
  text: string;
  /** Lower case, without brackets, leading `*.`/`.` or trailing dot; `*` for every host. */
  host: string;
  /** 0 for any port. */
  port: number;
  /** `*.example.com`: subdomains only. */
  subdomainsOnly: boolean;
  /** For a CIDR entry: the range IP literals are matched against. */
  range: net.BlockList | undefined;
}

const DEFAULT_PORT: Record<string, number> = { 'http:': 80, 'https:': 443 };
const HOST_NAME = /^[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?)*$/;

/** `http://user:pw@host` → `http://[REDACTED]@host`: proxy URLs are shown in errors and config dumps. */
export function redactUserinfo(text: string): string {
  const withScheme = /^([a-z][a-z0-9+.-]*:\/\/)[^/@\s]*@/i;
  if (withScheme.test(text)) return text.replace(withScheme, '$1[REDACTED]@');
  // Without a scheme only user:password@ counts: name@domain is an email address (a service account).
  return text.replace(/^[^/@\s:]+:[^/@\s]*@/, '[REDACTED]@');
}

export class Egress {
  /** No proxy and no aliases: every connection made as Node makes it. */
  static readonly none = new Egress(undefined, undefined, [], '', new Map());

  /**
   * Whether anything is configured at all. When not, callers keep their plain connections (the proxy's start and
   * hot path, Node's own fetch) exactly as they were.
   */
  readonly active: boolean;
  /** A proxy is configured for at least one scheme. */
  readonly proxied: boolean;
  /** Resolves the egress.hostAliases names, everything else as Node would; undefined when there are none. */
  readonly lookup: LookupFunction | undefined;
  private readonly closers: (() => Promise<unknown>)[] = [];

  /** @internal use Egress.fromConfig */
  constructor(
    private readonly httpsProxy: EgressProxy | undefined,
    private readonly httpProxy: EgressProxy | undefined,
    private readonly noProxy: readonly NoProxyEntry[],
    private readonly noProxySource: string,
    readonly hostAliases: ReadonlyMap<string, string>,
  ) {
    this.proxied = httpsProxy !== undefined || httpProxy !== undefined;
    this.lookup = hostAliases.size > 0 ? aliasLookup(hostAliases) : undefined;
    this.active = this.proxied || this.lookup !== undefined;
  }

  /** From egress.* and, where those are empty, the proxy variables of `env`; a ConfigError names each bad key or variable. */
  static fromConfig(config: Pick<KvxConfig, 'egress'>, env: NodeJS.ProcessEnv): Egress {
    const { egress, problems } = build(config, env);
    if (problems.length > 0) throw new ConfigError(problems);
    return egress;
  }

  /** How to reach `url`: the proxy for its scheme unless a no-proxy entry names its host. */
  route(url: string | URL): EgressRoute {
    const target = typeof url === 'string' ? new URL(url) : url;
    const proxy = target.protocol === 'https:' ? this.httpsProxy : target.protocol === 'http:' ? this.httpProxy : undefined;
    if (proxy === undefined) return { proxy: undefined, reason: 'no proxy configured' };
    const host = normalHost(target.hostname);
    const port = Number(target.port) || DEFAULT_PORT[target.protocol] || 0;
    const entry = this.noProxy.find((e) => bypasses(e, host, port));
    if (entry !== undefined) return { proxy: undefined, reason: `${this.noProxySource} entry ${entry.text}` };
    return { proxy, reason: proxy.source };
  }

  /** The address egress.hostAliases gives `host`, if any. */
  alias(host: string): string | undefined {
    return this.hostAliases.get(normalHost(host));
  }

  /** `doctor`'s words for how `url` is reached. */
  describe(url: string | URL): string {
    const target = typeof url === 'string' ? new URL(url) : url;
    const { proxy, reason } = this.route(target);
    const alias = this.alias(target.hostname);
    const via = proxy ? `through proxy ${proxy.display} (${reason}${proxy.authorization ? ', with credentials' : ''})` : `directly (${reason})`;
    return alias !== undefined && proxy === undefined ? `${via}, ${target.hostname} at ${alias} (egress.hostAliases)` : via;
  }

  /** @internal the clients made for this egress (undici dispatchers) close with it */
  onClose(close: () => Promise<unknown>): void {
    this.closers.push(close);
  }

  async close(): Promise<void> {
    await Promise.all(this.closers.splice(0).map((close) => close().catch(() => {})));
  }
}

/** Problems of egress.* and the proxy variables, for the config loader to report with the rest. */
export function egressProblems(config: Pick<KvxConfig, 'egress'>, env: NodeJS.ProcessEnv): ConfigProblem[] {
  return build(config, env).problems;
}

function build(config: Pick<KvxConfig, 'egress'>, env: NodeJS.ProcessEnv): { egress: Egress; problems: ConfigProblem[] } {
  const problems: ConfigProblem[] = [];
  const { proxy, noProxy, hostAliases } = config.egress;
  let httpsProxy: EgressProxy | undefined;
  let httpProxy: EgressProxy | undefined;
  let noProxyText: string[];
  let noProxySource: string;
  if (proxy !== '') {
    httpsProxy = httpProxy = parseProxy(proxy, 'egress.proxy', problems);
    noProxyText = noProxy;
    noProxySource = 'egress.noProxy';
  } else {
    const httpName = firstSet(env, ['http_proxy', 'HTTP_PROXY']);
    const httpsName = firstSet(env, ['https_proxy', 'HTTPS_PROXY']);
    httpProxy = httpName === undefined ? undefined : parseProxy(env[httpName]!, httpName, problems);
    httpsProxy = httpsName === undefined ? httpProxy : parseProxy(env[httpsName]!, httpsName, problems);
    const noProxyName = firstSet(env, ['no_proxy', 'NO_PROXY']);
    if (noProxy.length > 0 || noProxyName === undefined) {
      noProxyText = noProxy;
      noProxySource = 'egress.noProxy';
    } else {
      noProxyText = env[noProxyName]!.split(/[,\s]+/);
      noProxySource = noProxyName;
    }
  }
  const entries = noProxyText.flatMap((text, i) => {
    const entry = parseNoProxy(text.trim());
    if (entry === 'invalid') {
      problems.push({ path: noProxySource === 'egress.noProxy' ? `egress.noProxy[${i}]` : noProxySource, message: `"${text}" is not a host, .domain, *.domain, host:port, IP address or CIDR range` });
      return [];
    }
    return entry === undefined ? [] : [entry];
  });
  const aliases = parseAliases(hostAliases, problems);
  return { egress: new Egress(httpsProxy, httpProxy, entries, noProxySource, aliases), problems };
}

function firstSet(env: NodeJS.ProcessEnv, names: readonly string[]): string | undefined {
  return names.find((name) => (env[name] ?? '').trim() !== '');
}

/** curl and Python's requests take `host:port` without a scheme as http://; so does kvx. */
function parseProxy(raw: string, source: string, problems: ConfigProblem[]): EgressProxy | undefined {
  const text = raw.trim();
  const shown = redactUserinfo(text);
  const fail = (message: string): undefined => {
    problems.push({ path: source, message });
    return undefined;
  };
  let url: URL;
  try {
    url = new URL(/^[a-z][a-z0-9+.-]*:\/\//i.test(text) ? text : `http://${text}`);
  } catch {
    return fail(`"${shown}" is not a proxy URL; write http://[user:password@]host:port`);
  }
  if (url.protocol === 'https:') {
    return fail(`"${shown}": https:// proxies (TLS to the proxy itself) are not supported; give the proxy's http:// address (CONNECT still carries TLS end to end)`);
  }
  if (url.protocol !== 'http:') return fail(`"${shown}": ${url.protocol.slice(0, -1)} proxies are not supported; give an http:// proxy (CONNECT)`);
  if (url.hostname === '') return fail(`"${shown}" names no proxy host; write http://host:port`);
  if ((url.pathname !== '/' && url.pathname !== '') || url.search || url.hash) return fail(`"${shown}" has a path or query; a proxy URL is http://[user:password@]host:port only`);
  let authorization: string | undefined;
  if (url.username || url.password) {
    try {
      authorization = `Basic ${Buffer.from(`${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`).toString('base64')}`;
    } catch {
      return fail(`"${shown}": the user name or password is not valid percent-encoding; encode special characters (@ as %40, : as %3A)`);
    }
  }
  const host = url.hostname.replace(/^\[|\]$/g, '');
  const port = Number(url.port) || 80;
  return { display: `http://${url.hostname}:${port}`, host, port, authorization, source, url: url.href };
}

function parseNoProxy(text: string): NoProxyEntry | 'invalid' | undefined {
  if (text === '') return undefined;
  let host = text;
  let port = 0;
  const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(text);
  const hostPort = /^([^:]+):(\d+)$/.exec(text);
  if (bracketed) {
    host = bracketed[1]!;
    port = Number(bracketed[2] ?? 0);
  } else if (hostPort) {
    host = hostPort[1]!;
    port = Number(hostPort[2]);
  }
  if (port > 65535) return 'invalid';
  const cidr = /^([0-9a-f.:]+)\/(\d{1,3})$/i.exec(host);
  if (cidr) {
    const family = net.isIP(cidr[1]!);
    const prefix = Number(cidr[2]);
    if (family === 0 || prefix > (family === 4 ? 32 : 128)) return 'invalid';
    const range = new net.BlockList();
    range.addSubnet(cidr[1]!, prefix, family === 4 ? 'ipv4' : 'ipv6');
    return { text, host: cidr[1]!.toLowerCase(), port, subdomainsOnly: false, range };
  }
  if (host === '*') return { text, host, port, subdomainsOnly: false, range: undefined };
  const subdomainsOnly = host.startsWith('*.');
  const bare = normalHost(host.replace(/^\*?\./, ''));
  if (net.isIP(bare) === 0 && !HOST_NAME.test(bare)) return 'invalid';
  return { text, host: bare, port, subdomainsOnly, range: undefined };
}

function bypasses(entry: NoProxyEntry, host: string, port: number): boolean {
  if (entry.port !== 0 && entry.port !== port) return false;
  if (entry.host === '*') return true;
  if (entry.range !== undefined) {
    const family = net.isIP(host);
    return family !== 0 && entry.range.check(host, family === 4 ? 'ipv4' : 'ipv6');
  }
  if (host === entry.host) return !entry.subdomainsOnly;
  return host.endsWith(`.${entry.host}`);
}

function normalHost(host: string): string {
  const bare = host.replace(/^\[|\]$/g, '').toLowerCase();
  return bare.length > 1 && bare.endsWith('.') ? bare.slice(0, -1) : bare;
}

function parseAliases(map: Record<string, unknown>, problems: ConfigProblem[]): Map<string, string> {
  const aliases = new Map<string, string>();
  for (const [name, value] of Object.entries(map)) {
    const at = `egress.hostAliases.${name}`;
    const host = normalHost(name);
    if (net.isIP(host) !== 0 || !HOST_NAME.test(host)) {
      problems.push({ path: at, message: `"${name}" is not a host name; the keys are names (mlflow.internal), the values their IP addresses` });
      continue;
    }
    if (typeof value !== 'string' || net.isIP(value.trim()) === 0) {
      problems.push({ path: at, message: `${typeof value === 'string' ? `"${value}"` : String(value)} is not an IP address; give the address ${name} should resolve to, e.g. 10.0.0.5` });
      continue;
    }
    aliases.set(host, value.trim());
  }
  return aliases;
}

/** A `lookup` for net.connect and undici: alias names from the map, every other name through the system resolver. */
function aliasLookup(aliases: ReadonlyMap<string, string>): LookupFunction {
  return (hostname, options, callback) => {
    const address = aliases.get(normalHost(hostname));
    if (address === undefined) {
      dns.lookup(hostname, options, callback);
      return;
    }
    const family = net.isIP(address);
    if (options.all === true) process.nextTick(callback, null, [{ address, family }]);
    else process.nextTick(callback, null, address, family);
  };
}
