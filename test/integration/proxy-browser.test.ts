/**
 * Browsers on the same machine (issue 12, item 14). A page the user visits can reach the proxy on loopback in two
 * ways: DNS rebinding (its own name re-pointed at 127.0.0.1, so its requests carry `Host: attacker.example:5001`
 * and count as same-origin to the browser) and cross-site requests (a `text/plain` POST needs no CORS preflight).
 * Either would act as the user with the injected credential. Each case checks the answer, that nothing reached
 * upstream and that no credential was asked for; the MLflow UI's own requests and non-browser clients must pass.
 */
import { expect } from 'chai';
import { registerProviderType } from '../../src/auth/registry.js';
import type { HeaderMap, HeaderProvider } from '../../src/auth/provider.js';
import { request, startScriptedUpstream } from '../helpers/http.js';
import type { SimpleResponse } from '../helpers/http.js';
import { exchange } from '../helpers/raw-http.js';
import { startTestProxy } from '../helpers/proxy.js';
import type { TestProxy } from '../helpers/proxy.js';

const TOKEN = 'browser-test-token-6a1f9c';

/** Counts every credential the proxy asks for: a refused request must not cost one. */
class CountingProvider implements HeaderProvider {
  static calls = 0;
  readonly name = 'counting';
  inContext(): boolean {
    return true;
  }
  requestHeaders(): HeaderMap {
    CountingProvider.calls++;
    return { Authorization: `Bearer ${TOKEN}` };
  }
  status() {
    return { ready: true };
  }
}
registerProviderType('test-counting', { validate: () => [], create: () => new CountingProvider() });

interface Seen {
  method: string;
  url: string;
  auth: string | undefined;
  origin: string | undefined;
}

describe('proxy: browsers on the same machine (Host and Origin checks)', () => {
  const seen: Seen[] = [];
  let upstream: Awaited<ReturnType<typeof startScriptedUpstream>>;
  let proxy: TestProxy;
  let port: number;

  before(async () => {
    upstream = await startScriptedUpstream((req, res) => {
      req.resume();
      req.on('end', () => {
        seen.push({ method: req.method ?? '', url: req.url ?? '', auth: req.headers.authorization, origin: req.headers.origin });
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end('{"ok":true}');
      });
    });
    proxy = await startTestProxy(upstream.url, { 'auth.provider': 'test-counting' });
    port = proxy.address.port;
  });

  after(async () => {
    await proxy.close(500);
    await upstream.close();
  });

  beforeEach(() => {
    seen.length = 0;
    CountingProvider.calls = 0;
  });

  const send = (path: string, headers: Record<string, string>, method = 'GET', body?: string): Promise<SimpleResponse> =>
    request(`http://127.0.0.1:${port}${path}`, { method, headers, body });

  /** The answer is the proxy's own refusal and the request went nowhere. */
  function expectRefused(res: SimpleResponse, status: number, kind: string): void {
    expect(res.status, res.body).to.equal(status);
    expect(res.headers['x-kvx-error']).to.equal(kind);
    expect(res.headers['content-type']).to.equal('application/json');
    const body = JSON.parse(res.body) as { error_code: string; message: string };
    expect(body.error_code).to.be.a('string');
    expect(body.message).to.match(/^kvx-proxy: /);
    expect(res.body).to.not.include(TOKEN);
    expect(seen, 'nothing may reach upstream').to.deep.equal([]);
    expect(CountingProvider.calls, 'no credential may be obtained for it').to.equal(0);
  }

  async function refusals(): Promise<Record<string, number>> {
    const metric = await proxy.metrics.registry.getSingleMetric('kvx_cross_site_refusals_total')?.get();
    return Object.fromEntries((metric?.values ?? []).map((v) => [String(v.labels['reason']), v.value]));
  }

  describe('DNS rebinding: a Host that is not the proxy', () => {
    it('refuses a read for attacker.example:<port> with 421, names the fix, and forwards nothing', async () => {
      const before = (await refusals())['host'] ?? 0;
      const res = await send('/api/2.0/mlflow/experiments/search?max_results=10', { host: `attacker.example:${port}` });
      expectRefused(res, 421, 'host_not_allowed');
      const message = (JSON.parse(res.body) as { message: string }).message;
      expect(message).to.include(`attacker.example:${port}`);
      expect(message).to.include('server.allowedHosts');
      expect((await refusals())['host']).to.equal(before + 1);
    });

    it('refuses a write (experiments/delete) on a rebound name, the same page origin sent along', async () => {
      const res = await send(
        '/api/2.0/mlflow/experiments/delete',
        { host: `attacker.example:${port}`, origin: `http://attacker.example:${port}`, 'sec-fetch-site': 'same-origin', 'content-type': 'text/plain' },
        'POST',
        '{"experiment_id":"1"}',
      );
      expectRefused(res, 421, 'host_not_allowed');
    });

    it('refuses names that only look like ours: a localhost prefix, a bare number, a bad port', async () => {
      for (const host of [`localhost.attacker.example:${port}`, `127.0.0.1.nip.io:${port}`, '2130706433', 'localhost:http', '[::1', 'evil.example']) {
        const res = await send('/api/2.0/mlflow/experiments/search', { host });
        expectRefused(res, 421, 'host_not_allowed');
      }
    });

    it('logs the refusal once at info with the fix, never the credential, and marks the request line', async () => {
      await send('/api/2.0/mlflow/runs/get?run_id=1', { host: 'rebind.attacker.example' });
      const records = proxy.logs.records();
      const line = records.find((r) => r['msg'] === 'request' && r['error'] === 'host_not_allowed' && r['path'] === '/api/2.0/mlflow/runs/get?run_id=1');
      expect(line?.['status']).to.equal(421);
      const notice = records.find((r) => r['level'] === 'info' && String(r['msg']).includes('Host'));
      expect(notice, proxy.logs.text()).to.not.equal(undefined);
      expect(String(notice!['hint'])).to.include('server.allowedHosts');
      expect(proxy.logs.text()).to.not.include(TOKEN);
    });

    it('refuses a request with two Host headers (RFC 9112) with 400', async () => {
      const raw = (await exchange(port, `GET /api/2.0/mlflow/experiments/search HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nHost: attacker.example\r\nConnection: close\r\n\r\n`, { idleMs: 500 })).text;
      expect(raw).to.match(/^HTTP\/1\.1 400 /);
      expect(raw).to.include('x-kvx-error: bad_request');
      expect(seen).to.deep.equal([]);
    });
  });

  describe('cross-site requests to an address of the proxy', () => {
    it('refuses the text/plain POST a foreign page can send without a preflight', async () => {
      const res = await send(
        '/api/2.0/mlflow/experiments/delete',
        { host: `127.0.0.1:${port}`, origin: 'https://evil.example', 'sec-fetch-site': 'cross-site', 'sec-fetch-mode': 'no-cors', 'content-type': 'text/plain' },
        'POST',
        '{"experiment_id":"1"}',
      );
      expectRefused(res, 403, 'origin_not_allowed');
      expect((JSON.parse(res.body) as { error_code: string }).error_code).to.equal('PERMISSION_DENIED');
      expect(res.body).to.include('server.allowedOrigins');
    });

    it('refuses a CORS preflight from a foreign origin instead of forwarding it', async () => {
      const res = await send('/api/2.0/mlflow/runs/create', {
        host: `localhost:${port}`,
        origin: 'https://evil.example',
        'access-control-request-method': 'POST',
        'access-control-request-headers': 'content-type',
        'sec-fetch-site': 'cross-site',
        'sec-fetch-mode': 'cors',
      }, 'OPTIONS');
      expectRefused(res, 403, 'origin_not_allowed');
    });

    it('refuses another local page (another port is another origin), Origin: null, and a second Origin', async () => {
      for (const origin of [`http://127.0.0.1:${port + 1}`, 'http://localhost:8888', 'null', `https://127.0.0.1:${port}.evil.example`]) {
        const res = await send('/api/2.0/mlflow/runs/update', { host: `127.0.0.1:${port}`, origin, 'content-type': 'text/plain' }, 'POST', '{}');
        expectRefused(res, 403, 'origin_not_allowed');
      }
      const raw = (
        await exchange(
          port,
          `POST /api/2.0/mlflow/runs/update HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nOrigin: http://127.0.0.1:${port}\r\nOrigin: https://evil.example\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}`,
          { idleMs: 500 },
        )
      ).text;
      expect(raw).to.match(/^HTTP\/1\.1 403 /);
      expect(seen).to.deep.equal([]);
    });

    it('refuses cross-site and same-site requests without Origin (no-cors GET, image, script, <object>, a POST navigation)', async () => {
      const cases: Record<string, string>[] = [
        { 'sec-fetch-site': 'cross-site', 'sec-fetch-mode': 'no-cors', 'sec-fetch-dest': 'image' },
        { 'sec-fetch-site': 'cross-site', 'sec-fetch-mode': 'no-cors', 'sec-fetch-dest': 'script' },
        { 'sec-fetch-site': 'cross-site', 'sec-fetch-mode': 'navigate', 'sec-fetch-dest': 'object' },
        { 'sec-fetch-site': 'same-site', 'sec-fetch-mode': 'no-cors', 'sec-fetch-dest': 'empty' },
      ];
      for (const headers of cases) {
        const res = await send('/api/2.0/mlflow/experiments/search', { host: `127.0.0.1:${port}`, ...headers });
        expectRefused(res, 403, 'cross_site_request');
      }
      const post = await send('/api/2.0/mlflow/experiments/delete', { host: `127.0.0.1:${port}`, 'sec-fetch-site': 'cross-site', 'sec-fetch-mode': 'navigate', 'sec-fetch-dest': 'document' }, 'POST', '{}');
      expectRefused(post, 403, 'cross_site_request');
      expect((await refusals())['fetch_site']).to.be.greaterThanOrEqual(5);
    });

    it('passes GET navigations from another site (a link to a run, MLflow\'s trace view framed in Jupyter): the page cannot read them', async () => {
      const link = await send('/', { host: `127.0.0.1:${port}`, 'sec-fetch-site': 'cross-site', 'sec-fetch-mode': 'navigate', 'sec-fetch-dest': 'document', 'sec-fetch-user': '?1' });
      const frame = await send('/static-files/lib/notebook-trace-renderer/index.html?trace_id=tr-1', {
        host: `localhost:${port}`,
        'sec-fetch-site': 'same-site',
        'sec-fetch-mode': 'navigate',
        'sec-fetch-dest': 'iframe',
      });
      expect([link.status, frame.status]).to.deep.equal([200, 200]);
      expect(seen).to.have.length(2);
    });
  });

  describe('what must keep working', () => {
    it('the MLflow UI served through the proxy: navigation, same-origin GET and POST (Origin sent)', async () => {
      const host = `127.0.0.1:${port}`;
      const nav = await send('/', { host, 'sec-fetch-site': 'none', 'sec-fetch-mode': 'navigate', 'sec-fetch-dest': 'document', 'sec-fetch-user': '?1' });
      const get = await send('/ajax-api/2.0/mlflow/experiments/search?max_results=25', { host, 'sec-fetch-site': 'same-origin', 'sec-fetch-mode': 'cors', 'sec-fetch-dest': 'empty' });
      const post = await send(
        '/ajax-api/2.0/mlflow/runs/search',
        { host, origin: `http://${host}`, 'sec-fetch-site': 'same-origin', 'sec-fetch-mode': 'cors', 'content-type': 'application/json' },
        'POST',
        '{"experiment_ids":["0"]}',
      );
      expect([nav.status, get.status, post.status]).to.deep.equal([200, 200, 200]);
      expect(seen.map((s) => `${s.method} ${s.url} ${s.auth}`)).to.deep.equal([
        `GET / Bearer ${TOKEN}`,
        `GET /ajax-api/2.0/mlflow/experiments/search?max_results=25 Bearer ${TOKEN}`,
        `POST /ajax-api/2.0/mlflow/runs/search Bearer ${TOKEN}`,
      ]);
    });

    it('the UI under every loopback name: localhost, *.localhost, [::1], a trailing dot, upper case', async () => {
      for (const host of [`localhost:${port}`, `mlflow.localhost:${port}`, `[::1]:${port}`, `localhost.:${port}`, `LOCALHOST:${port}`, 'localhost']) {
        const res = await send('/api/2.0/mlflow/runs/log-metric', { host, origin: `http://${host}`, 'sec-fetch-site': 'same-origin', 'content-type': 'application/json' }, 'POST', '{}');
        expect(res.status, `${host}: ${res.body}`).to.equal(200);
      }
      expect(seen).to.have.length(6);
    });

    it('a port-forwarded address (docker -p 8080:5001, kubectl port-forward): the Host port need not be the listen port', async () => {
      const res = await send('/api/2.0/mlflow/experiments/search', { host: '127.0.0.1:8080', origin: 'http://127.0.0.1:8080' }, 'POST', '{}');
      expect(res.status).to.equal(200);
    });

    it('clients that are not browsers: no Origin, no Sec-Fetch-*, no Host at all (HTTP/1.0)', async () => {
      const python = await send(
        '/api/2.0/mlflow/runs/log-batch',
        { host: `127.0.0.1:${port}`, 'user-agent': 'mlflow-python-client/3.1.0', 'content-type': 'application/json' },
        'POST',
        '{"run_id":"r"}',
      );
      expect(python.status).to.equal(200);
      const http10 = (await exchange(port, 'GET /health HTTP/1.0\r\n\r\n', { idleMs: 500 })).text;
      expect(http10).to.match(/^HTTP\/1\.1 200 /);
      expect(seen.map((s) => s.auth)).to.deep.equal([`Bearer ${TOKEN}`, `Bearer ${TOKEN}`]);
    });
  });
});

describe('proxy: configured names and origins', () => {
  let upstream: Awaited<ReturnType<typeof startScriptedUpstream>>;
  const proxies: TestProxy[] = [];

  before(async () => {
    upstream = await startScriptedUpstream((req, res) => {
      req.resume();
      req.on('end', () => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end('{}');
      });
    });
  });

  after(async () => {
    for (const p of proxies) await p.close(500);
    await upstream.close();
  });

  async function proxyWith(settings: Record<string, unknown>): Promise<TestProxy> {
    const p = await startTestProxy(upstream.url, { 'auth.provider': 'none', ...settings });
    proxies.push(p);
    return p;
  }

  const status = async (p: TestProxy, headers: Record<string, string>, method = 'GET'): Promise<number> =>
    (await request(`${p.url}/api/2.0/mlflow/experiments/search`, { method, headers, body: method === 'POST' ? '{}' : undefined })).status;

  it('server.allowedHosts: exact names and *.suffix patterns pass, near misses do not', async () => {
    const p = await proxyWith({ 'server.allowedHosts': ['mlflow.internal', '*.corp.example'] });
    expect(await status(p, { host: 'mlflow.internal:5001' })).to.equal(200);
    expect(await status(p, { host: 'MLflow.Internal' })).to.equal(200);
    expect(await status(p, { host: 'eu.mlflow.corp.example' })).to.equal(200);
    expect(await status(p, { host: 'corp.example' })).to.equal(421);
    expect(await status(p, { host: 'mlflow.internal.attacker.example' })).to.equal(421);
    expect(await status(p, { host: 'xcorp.example' })).to.equal(421);
  });

  it('server.allowedHosts "*" turns the Host check off (behind your own ingress); Origin is still checked', async () => {
    const p = await proxyWith({ 'server.allowedHosts': ['*'] });
    expect(await status(p, { host: 'attacker.example' })).to.equal(200);
    expect(await status(p, { host: 'mlflow.corp.example', origin: 'https://mlflow.corp.example' }, 'POST')).to.equal(200);
    expect(await status(p, { host: 'mlflow.corp.example', origin: 'https://evil.example' }, 'POST')).to.equal(403);
  });

  it('server.allowedOrigins: a listed origin may call cross-site, "*" turns the Origin and Sec-Fetch checks off', async () => {
    const listed = await proxyWith({ 'server.allowedOrigins': ['https://dashboard.corp.example', 'http://localhost:3000'] });
    const headers = { host: `127.0.0.1:${listed.address.port}`, 'sec-fetch-site': 'cross-site', 'sec-fetch-mode': 'cors' };
    expect(await status(listed, { ...headers, origin: 'https://dashboard.corp.example' }, 'POST')).to.equal(200);
    expect(await status(listed, { ...headers, origin: 'http://localhost:3000' }, 'OPTIONS')).to.equal(200);
    expect(await status(listed, { ...headers, origin: 'https://dashboard.corp.example.evil.example' }, 'POST')).to.equal(403);
    const any = await proxyWith({ 'server.allowedOrigins': ['*'] });
    const anyHost = `127.0.0.1:${any.address.port}`;
    expect(await status(any, { host: anyHost, origin: 'https://evil.example' }, 'POST')).to.equal(200);
    expect(await status(any, { host: anyHost, 'sec-fetch-site': 'cross-site', 'sec-fetch-mode': 'no-cors' })).to.equal(200);
    expect(await status(any, { host: 'attacker.example' }), 'the Host check stays on').to.equal(421);
  });

  it('behind a TLS front end that keeps Host: the https origin of the same name passes', async () => {
    const p = await proxyWith({ 'server.allowedHosts': ['mlflow.corp.example'] });
    expect(await status(p, { host: 'mlflow.corp.example', origin: 'https://mlflow.corp.example' }, 'POST')).to.equal(200);
    expect(await status(p, { host: 'mlflow.corp.example:443', origin: 'https://mlflow.corp.example' }, 'POST')).to.equal(200);
  });

  it('listening on ::1: the UI at http://[::1]:<port> works and a rebound name is refused, over IPv6', async () => {
    const p = await proxyWith({ 'listen.host': '::1' });
    expect(p.url).to.equal(`http://[::1]:${p.address.port}`);
    const host = `[::1]:${p.address.port}`;
    expect(await status(p, { host, origin: `http://${host}`, 'sec-fetch-site': 'same-origin' }, 'POST')).to.equal(200);
    expect(await status(p, { host: `attacker.example:${p.address.port}` })).to.equal(421);
    expect(await status(p, { host, origin: 'http://[::1]:1', 'sec-fetch-site': 'same-site' }, 'POST')).to.equal(403);
  });

  it('listening on a name (listen.host: localhost) accepts that name; an unspecified address accepts pod and node IPs', async () => {
    const named = await proxyWith({ 'listen.host': 'localhost' });
    expect(await status(named, { host: `localhost:${named.address.port}` })).to.equal(200);
    // 0.0.0.0 is not bound here (test traffic stays on loopback); a Host naming an IP address is what such a proxy
    // sees from pods and through NodePorts, and it cannot come from DNS rebinding.
    for (const host of ['10.12.0.7:5001', '0.0.0.0:5001', '[fd00::7]:5001', '[::ffff:10.0.0.1]']) {
      expect(await status(named, { host }), host).to.equal(200);
    }
  });
});
