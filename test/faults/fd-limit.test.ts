/**
 * File descriptor exhaustion: the built proxy run under a low RLIMIT_NOFILE (prlimit, as `ulimit -n` sets it)
 * with more connections than it can hold, in its first second (when it loads prom-client) and once warm.
 */
import { expect } from 'chai';
import { RawConnection } from '../helpers/raw-http.js';
import { request } from './support/client.js';
import { FAST_ENV } from './support/harness.js';
import { pollUntil, spawnProxy } from './support/proxy-process.js';
import type { ProxyProcess } from './support/proxy-process.js';
import { makeSecret, record } from './support/transcript.js';
import { ScriptedUpstream } from './support/upstream.js';

const FD_LIMIT = 64;
const CLIENTS = 150;

interface Crowd {
  connections: RawConnection[];
  /** Connections closed by the proxy (not by release) before it answered anything. */
  closedUnanswered: () => number;
  answers: () => string[];
  release: () => Promise<void>;
}

/** Opens `count` connections at once; each sends `request` if given, else nothing. */
async function crowd(port: number, count: number, requestText?: string): Promise<Crowd> {
  let refused = 0;
  const opened = await Promise.all(
    Array.from({ length: count }, () =>
      RawConnection.open(port).then(
        (c) => {
          if (requestText) c.write(requestText);
          return c;
        },
        () => void refused++,
      ),
    ),
  );
  const connections = opened.filter((c) => c !== undefined);
  return {
    connections,
    closedUnanswered: () => refused + connections.filter((c) => c.closeInfo?.byServer && c.received === 0).length,
    answers: () => connections.map((c) => c.text).filter((t) => t !== ''),
    release: async () => {
      for (const c of connections) c.destroy();
      await new Promise((r) => setTimeout(r, 200));
    },
  };
}

function metricValue(text: string, name: string, labels: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${name}{`) && l.includes(labels));
  return line === undefined ? 0 : Number(line.slice(line.lastIndexOf(' ') + 1));
}

describe('faults: file descriptor limit', function () {
  this.timeout(60_000);
  const cleanups: (() => Promise<unknown>)[] = [];
  afterEach(async () => {
    while (cleanups.length) await cleanups.pop()!().catch(() => {});
  });

  async function start(label: string): Promise<{ proxy: ProxyProcess; upstream: ScriptedUpstream }> {
    const token = makeSecret(`${label}-token`);
    const upstream = await ScriptedUpstream.start(token);
    cleanups.push(() => upstream.close());
    const proxy = await spawnProxy({
      label,
      args: ['--upstream', upstream.url, '--auth-provider', 'static', '--token-env', 'FAULTS_TOKEN', '--port', '0', '--admin-port', '0'],
      // Silent connections are held as long as the case needs them.
      env: { FAULTS_TOKEN: token, KVX_SERVER_ALLOWED_HOSTS: 'kvx', ...FAST_ENV, KVX_SERVER_HEADERS_TIMEOUT_MS: '30000', KVX_UPSTREAM_IDLE_TIMEOUT_MS: '30000' },
      fdLimit: FD_LIMIT,
    });
    cleanups.push(() => proxy.stop());
    return { proxy, upstream };
  }

  it('clients reconnecting in the first second: the proxy keeps running, drops what it cannot hold, logs and counts it', async () => {
    const { proxy } = await start('faults-emfile-first-second');
    const clients = await crowd(proxy.port, CLIENTS);
    // prom-client is loaded about 1 s after start; hold the crowd well past that.
    await new Promise((r) => setTimeout(r, 2000));
    expect(proxy.alive, `the proxy exited: ${JSON.stringify(proxy.exit)}\n${proxy.stderr}`).to.equal(true);
    expect(clients.closedUnanswered(), 'connections beyond the limit are closed').to.be.greaterThan(0);
    await clients.release();

    const answer = await request(proxy.url, '/bytes/1000');
    expect(answer.status).to.equal(200);
    const page = await pollUntil(() => request(proxy.adminUrl, '/metrics'), (p) => p.status === 200, 5000);
    expect(page.status, page.text).to.equal(200);
    record('metrics', 'faults-emfile-first-second', page.text);
    const dropped = metricValue(page.text, 'kvx_accept_errors_total', 'code="EMFILE"');
    expect(dropped, 'kvx_accept_errors_total{code="EMFILE"}').to.equal(clients.closedUnanswered());
    const lines = proxy.logs.filter((l) => l.msg === 'new connections dropped: too many open files');
    expect(lines.length, 'logged, rate-limited').to.be.within(1, 2);
    expect(lines[0]).to.include({ level: 'warn', code: 'EMFILE', fdLimit: FD_LIMIT });
  });

  it('fds exhausted through the admin port while prom-client loads: /metrics answers 503 until it can load, then 200', async () => {
    const { proxy } = await start('faults-emfile-metrics-load');
    const clients = await crowd(proxy.adminPort, CLIENTS);
    await new Promise((r) => setTimeout(r, 2000));
    expect(proxy.alive, `the proxy exited: ${JSON.stringify(proxy.exit)}\n${proxy.stderr}`).to.equal(true);
    const failed = await proxy.waitForLog((l) => l.msg === 'metrics unavailable: prom-client could not be loaded; retrying', 3000);
    expect(failed).to.include({ level: 'warn', code: 'EMFILE' });

    // One descriptor free: the scrape's own connection takes it, and loading prom-client still finds none.
    const full = proxy.fds().total;
    clients.connections.find((c) => !c.socket.destroyed)!.destroy();
    await pollUntil(() => proxy.fds().total, (n) => n < full, 3000);
    const unavailable = await request(proxy.adminUrl, '/metrics');
    expect(unavailable.status, unavailable.text).to.equal(503);
    expect(JSON.parse(unavailable.text)).to.deep.include({ status: 'metrics unavailable' });
    expect(JSON.parse(unavailable.text).reason).to.match(/prom-client could not be loaded .*EMFILE/);

    await clients.release();
    const page = await request(proxy.adminUrl, '/metrics');
    expect(page.status, page.text).to.equal(200);
    expect(page.text).to.include('kvx_requests_total');
    expect(page.text).to.include('kvx_process_open_fds');
    expect((await request(proxy.url, '/bytes/10')).status).to.equal(200);
  });

  it('once warm: connections beyond the limit are dropped, logged (rate-limited) and counted; those taken are served', async () => {
    const { proxy, upstream } = await start('faults-emfile-warm');
    for (let i = 0; i < 3; i++) expect((await request(proxy.url, '/bytes/500')).status).to.equal(200);
    expect((await request(proxy.adminUrl, '/metrics')).status).to.equal(200);
    upstream.dropIdle();

    const clients = await crowd(proxy.port, CLIENTS, 'GET /bytes/100 HTTP/1.1\r\nHost: kvx\r\n\r\n');
    await pollUntil(() => clients.answers().length + clients.closedUnanswered(), (n) => n === CLIENTS, 10_000);
    const answers = clients.answers();
    expect(answers.length, 'some connections are served').to.be.greaterThan(0);
    for (const a of answers) expect(a, 'a connection the proxy took gets a real answer, not an EMFILE error').to.match(/^HTTP\/1\.1 200 /);
    expect(answers.length + clients.closedUnanswered()).to.equal(CLIENTS);
    expect(proxy.alive).to.equal(true);
    await clients.release();

    const first = await proxy.waitForLog((l) => l.msg === 'new connections dropped: too many open files', 3000);
    expect(first).to.include({ level: 'warn', code: 'EMFILE', fdLimit: FD_LIMIT });
    expect(String(first['hint'])).to.match(/ulimit -n/);
    // The rest of the burst is summed up in one line when the interval is over.
    await pollUntil(() => proxy.logs.filter((l) => l.msg === 'new connections dropped: too many open files').length, (n) => n >= 2, 8000);
    const lines = proxy.logs.filter((l) => l.msg === 'new connections dropped: too many open files');
    expect(lines).to.have.length(2);
    const logged = lines.reduce((sum, l) => sum + Number(l['dropped']), 0);
    expect(logged, 'the log lines account for every dropped connection').to.equal(clients.closedUnanswered());
    const page = await request(proxy.adminUrl, '/metrics');
    expect(metricValue(page.text, 'kvx_accept_errors_total', 'code="EMFILE"')).to.equal(clients.closedUnanswered());
    expect((await request(proxy.url, '/bytes/10')).status).to.equal(200);
  });
});
