/**
 * One scripted upstream plus one real kvx-proxy process, with the check every fault case ends with: the
 * proxy still serves normal traffic, and once clients and upstream have let go of their connections it holds
 * no more file descriptors or sockets than before the case.
 */
import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { request } from './client.js';
import { pollUntil, spawnProxy } from './proxy-process.js';
import type { FdSnapshot, ProxyProcess, SpawnOptions } from './proxy-process.js';
import { makeSecret, record } from './transcript.js';
import { ScriptedUpstream, sha256 } from './upstream.js';

/** Short limits so stalled cases end in about a second. */
export const FAST_ENV: Record<string, string> = {
  KVX_UPSTREAM_CONNECT_TIMEOUT_MS: '1000',
  KVX_UPSTREAM_HEADERS_TIMEOUT_MS: '1500',
  KVX_UPSTREAM_IDLE_TIMEOUT_MS: '1500',
  KVX_SERVER_HEADERS_TIMEOUT_MS: '1500',
  KVX_SERVER_SHUTDOWN_TIMEOUT_MS: '5000',
};

export interface HarnessOptions {
  /** Extra CLI args (after the upstream/auth/port flags). */
  args?: string[];
  env?: Record<string, string>;
  configYaml?: string;
  /** Replace the default static-token flags entirely. */
  authArgs?: string[];
  label?: string;
  /** IAP-like check in the upstream instead of the static bearer token. */
  gate?: ScriptedUpstream['gate'];
  /**
   * Ports of servers the proxy talks to on its own (Google token endpoints). Its keep-alive connections
   * to them come and go, so they are counted apart: at most `maxBackground` may be open at rest.
   */
  backgroundPorts?: number[];
  maxBackground?: number;
}

export class Harness {
  baseline: FdSnapshot | undefined;

  private constructor(
    readonly upstream: ScriptedUpstream,
    readonly proxy: ProxyProcess,
    readonly token: string,
    private readonly background: ReadonlySet<number> = new Set(),
    private readonly maxBackground = 4,
  ) {}

  static async start(options: HarnessOptions = {}): Promise<Harness> {
    const token = makeSecret('static-token');
    const upstream = await ScriptedUpstream.start(token);
    upstream.gate = options.gate;
    const spawnOptions: SpawnOptions = {
      args: [
        '--upstream',
        upstream.url,
        ...(options.authArgs ?? ['--auth-provider', 'static', '--token-env', 'FAULTS_TOKEN']),
        '--port',
        '0',
        '--admin-port',
        '0',
        ...(options.args ?? []),
      ],
      // Raw requests in the cases say `Host: kvx`: a name configured for the proxy, as a user's own would be.
      env: { FAULTS_TOKEN: token, KVX_SERVER_ALLOWED_HOSTS: 'kvx', ...FAST_ENV, ...options.env },
      label: options.label ?? 'faults',
    };
    if (options.configYaml !== undefined) spawnOptions.configYaml = options.configYaml;
    let proxy: ProxyProcess;
    try {
      proxy = await spawnProxy(spawnOptions);
    } catch (err) {
      await upstream.close();
      throw err;
    }
    const harness = new Harness(upstream, proxy, token, new Set(options.backgroundPorts ?? []), options.maxBackground);
    await harness.settleBaseline();
    return harness;
  }

  get url(): string {
    return this.proxy.url;
  }

  /**
   * Warms every path normal traffic uses (lazy module loads, the upstream pool), lets connections close and
   * records what the process holds at rest.
   */
  async settleBaseline(): Promise<FdSnapshot> {
    await this.normalTraffic();
    this.baseline = await this.settle();
    return this.baseline;
  }

  /** A GET with a body, an upload and a metrics scrape; each answer checked byte for byte. */
  async normalTraffic(rounds = 2): Promise<void> {
    for (let i = 0; i < rounds; i++) {
      const down = await request(this.url, '/bytes/70000');
      expect(down.status, `normal GET after the case: ${down.text.slice(0, 200)}`).to.equal(200);
      expect(down.body.length).to.equal(70_000);
      const payload = randomBytes(50_000);
      const up = await request(this.url, '/upload', { method: 'POST', body: payload, headers: { 'content-type': 'application/octet-stream' } });
      expect(up.status, `normal POST after the case: ${up.text.slice(0, 200)}`).to.equal(200);
      expect(JSON.parse(up.text)).to.include({ bytes: payload.length, sha256: sha256(payload) });
    }
    await this.metrics();
  }

  async metrics(): Promise<string> {
    const page = await request(this.proxy.adminUrl, '/metrics');
    expect(page.status).to.equal(200);
    record('metrics', 'faults', page.text);
    return page.text;
  }

  /** A metric's value from the proxy's /metrics (sum over label sets that contain `labels`). */
  async metric(name: string, labels: Record<string, string> = {}): Promise<number> {
    const text = await this.metrics();
    let sum = 0;
    for (const line of text.split('\n')) {
      if (!line.startsWith(name + '{') && !line.startsWith(name + ' ')) continue;
      const labelText = line.startsWith(name + '{') ? line.slice(name.length + 1, line.indexOf('}')) : '';
      if (Object.entries(labels).every(([k, v]) => labelText.includes(`${k}="${v}"`))) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
    }
    return sum;
  }

  /** Drops upstream's idle connections and waits until the proxy holds no more than its baseline. */
  async settle(timeoutMs = 5000): Promise<FdSnapshot> {
    this.upstream.dropIdle();
    const limit = this.baseline ? this.baseline.total - this.backgroundOf(this.baseline).length : Infinity;
    return pollUntil(
      () => this.proxy.fds(),
      (s) => s.total - this.backgroundOf(s).length <= limit && this.foreground(s).length === 0,
      timeoutMs,
    );
  }

  /** Connections to the background servers (Google endpoints). */
  backgroundOf(s: FdSnapshot): FdSnapshot['tcp'] {
    return s.tcp.filter((t) => t.state !== 'LISTEN' && this.background.has(t.remotePort));
  }

  private foreground(s: FdSnapshot): FdSnapshot['tcp'] {
    return s.tcp.filter((t) => t.state !== 'LISTEN' && !this.background.has(t.remotePort));
  }

  /**
   * The check each case ends with. Normal requests get normal answers; afterwards, with clients gone and the
   * upstream's idle connections dropped, the fd count is back to the baseline and only listeners remain.
   */
  async assertHealthy(context: string): Promise<void> {
    this.upstream.behaviour = undefined;
    expect(this.proxy.alive, `${context}: proxy process exited: ${JSON.stringify(this.proxy.exit)}\n${this.proxy.stderr}`).to.equal(true);
    await this.normalTraffic(1);
    const after = await this.settle();
    const base = this.baseline!;
    const open = this.foreground(after);
    expect(open, `${context}: TCP connections left open: ${JSON.stringify(open)}`).to.deep.equal([]);
    const background = this.backgroundOf(after);
    expect(background.length, `${context}: connections to token endpoints piling up: ${JSON.stringify(background)}`).to.be.at.most(this.maxBackground);
    const fds = after.total - background.length;
    const baseFds = base.total - this.backgroundOf(base).length;
    expect(fds, `${context}: open fds ${fds} vs baseline ${baseFds} (token-endpoint connections excluded)`).to.be.at.most(baseFds);
  }

  async stop(): Promise<void> {
    await this.proxy.stop();
    await this.upstream.close();
  }
}
