import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import https from 'node:https';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import type { AddressInfo } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { expect } from 'chai';
import { main } from '../../src/cli/kvx-proxy.js';
import { VERSION } from '../../src/version.js';
import { request, startScriptedUpstream } from '../helpers/http.js';
import { startTestProxy } from '../helpers/proxy.js';

describe('proxy: admin endpoints', () => {
  it('serves /healthz, /readyz and /metrics on the admin port only', async () => {
    const upstream = await startScriptedUpstream((req, res) => res.end(req.url === '/metrics' ? 'mlflow-metrics' : '{}'));
    const proxy = await startTestProxy(upstream.url, { 'auth.provider': 'none' });
    try {
      await request(`${proxy.url}/api/2.0/mlflow/runs/get?run_id=1`);
      await request(`${proxy.url}/api/2.0/mlflow/runs/log-batch`, { method: 'POST', body: '{"a":1}' });
      expect((await request(`${proxy.url}/metrics`)).body, 'the proxy port forwards /metrics to MLflow').to.equal('mlflow-metrics');

      expect(JSON.parse((await request(`${proxy.adminUrl}/healthz`)).body)).to.deep.equal({ status: 'ok' });
      const ready = await request(`${proxy.adminUrl}/readyz`);
      expect(ready.status).to.equal(200);
      const metrics = (await request(`${proxy.adminUrl}/metrics`)).body;
      expect(metrics).to.contain('kvx_requests_total{method="GET",status_class="2xx"} 2');
      expect(metrics).to.contain('kvx_requests_total{method="POST",status_class="2xx"} 1');
      expect(metrics).to.match(/kvx_request_duration_seconds_count 3/);
      expect(metrics).to.contain('kvx_requests_in_flight 0');
      // The engine in use, in /metrics and the start-up line: the one KVX_SERVER_ENGINE names for the suite's second run.
      const engine = process.env['KVX_SERVER_ENGINE'] === 'node' ? 'node' : 'wire';
      expect(metrics).to.contain(`kvx_engine_info{engine="${engine}"} 1`);
      expect(proxy.logs.records().find((r) => r['msg'] === 'kvx-proxy listening')?.['engine']).to.equal(engine);
      expect(metrics).to.contain('kvx_request_body_bytes_total 7');
      expect(metrics).to.match(/kvx_response_body_bytes_total \d+/);
      expect((await request(`${proxy.adminUrl}/nope`)).status).to.equal(404);
    } finally {
      await proxy.close(500);
      await upstream.close();
    }
  });

  it('refuses a Host that is not a name of the admin listener (DNS rebinding would let a page read /readyz), as the proxy port does', async () => {
    const upstream = await startScriptedUpstream((req, res) => res.end('{}'));
    const proxy = await startTestProxy(upstream.url, { 'auth.provider': 'static', 'auth.params.token': 'admin-host-secret', 'server.allowedHosts': ['kvx-admin.internal'] });
    try {
      const port = new URL(proxy.adminUrl!).port;
      for (const path of ['/readyz', '/metrics', '/healthz']) {
        const refused = await request(`${proxy.adminUrl}${path}`, { headers: { host: `attacker.example:${port}` } });
        expect(refused.status, path).to.equal(421);
        expect(refused.body).to.include('server.allowedHosts');
        expect(refused.body).to.not.include('providers');
        expect(refused.body).to.not.include('admin-host-secret');
      }
      expect((await request(`${proxy.adminUrl}/readyz`, { headers: { host: `attacker.example:${port}`, 'x-forwarded-host': 'localhost' } })).status).to.equal(421);
      // What probes and scrapers send: an IP address (kubelet, Prometheus pod discovery), localhost, a listed name.
      for (const host of [`127.0.0.1:${port}`, `10.12.0.7:${port}`, `localhost:${port}`, `kvx-admin.internal:${port}`]) {
        expect((await request(`${proxy.adminUrl}/readyz`, { headers: { host } })).status, host).to.equal(200);
      }
    } finally {
      await proxy.close(500);
      await upstream.close();
    }
  });

  it('counts upstream errors by kind', async () => {
    const upstream = await startScriptedUpstream((req) => req.socket.destroy());
    const proxy = await startTestProxy(upstream.url, { 'auth.provider': 'none' });
    try {
      await request(`${proxy.url}/api/2.0/mlflow/runs/create`, { method: 'POST', body: '{}' });
      const metrics = (await request(`${proxy.adminUrl}/metrics`)).body;
      expect(metrics).to.contain('kvx_upstream_errors_total{kind="reset"} 1');
      expect(metrics).to.contain('kvx_requests_total{method="POST",status_class="5xx"} 1');
    } finally {
      await proxy.close(500);
      await upstream.close();
    }
  });
});

describe('proxy: graceful shutdown', () => {
  it('finishes a request in flight, refuses new connections, then stops', async () => {
    let release: () => void = () => {};
    const upstream = await startScriptedUpstream((req, res) => {
      if (req.url === '/slow') release = () => res.end('done');
      else res.end('fast');
    });
    const proxy = await startTestProxy(upstream.url, { 'auth.provider': 'none' });
    const inFlight = request(`${proxy.url}/slow`);
    await new Promise((r) => setTimeout(r, 100));
    const closing = proxy.close(5000);
    await new Promise((r) => setTimeout(r, 50));
    const refused = await request(`${proxy.url}/fast`).then(
      () => 'answered',
      (e: NodeJS.ErrnoException) => e.code,
    );
    expect(refused).to.equal('ECONNREFUSED');
    release();
    expect((await inFlight).body).to.equal('done');
    expect(await closing).to.equal(0);
    await upstream.close();
  });

  it('cuts requests still running at the deadline', async () => {
    const upstream = await startScriptedUpstream(() => {
      /* never answers */
    });
    const proxy = await startTestProxy(upstream.url, { 'auth.provider': 'none' });
    const inFlight = request(`${proxy.url}/stuck`).catch((e: Error) => e);
    await new Promise((r) => setTimeout(r, 100));
    expect(await proxy.close(200)).to.equal(1);
    expect(await inFlight).to.be.instanceOf(Error);
    await upstream.close();
  });
});

describe('proxy: upstream TLS', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'kvx-tls-'));
  const pem = (name: string) => path.join(dir, name);
  let server: https.Server;
  let url: string;
  let sawClientCert = false;

  before(async function () {
    this.timeout(20_000);
    const openssl = (...args: string[]) => execFileSync('openssl', args, { stdio: 'ignore' });
    openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=kvx test CA', '-keyout', pem('ca.key'), '-out', pem('ca.pem'));
    for (const [name, cn] of [
      ['server', '127.0.0.1'],
      ['client', 'kvx client'],
    ] as const) {
      openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', `/CN=${cn}`, '-keyout', pem(`${name}.key`), '-out', pem(`${name}.csr`));
      const ext = pem(`${name}.ext`);
      execFileSync('sh', ['-c', `printf 'subjectAltName=IP:127.0.0.1\\n' > ${ext}`]);
      openssl('x509', '-req', '-in', pem(`${name}.csr`), '-CA', pem('ca.pem'), '-CAkey', pem('ca.key'), '-CAcreateserial', '-days', '2', '-extfile', ext, '-out', pem(`${name}.pem`));
    }
    server = https.createServer(
      { key: readFileSync(pem('server.key')), cert: readFileSync(pem('server.pem')), ca: readFileSync(pem('ca.pem')), requestCert: true, rejectUnauthorized: false },
      (req, res) => {
        sawClientCert = (req.socket as TLSSocket).authorized;
        res.end('secure');
      },
    );
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    url = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  after(() => server.close());

  it('verifies the upstream certificate by default and explains a failure', async () => {
    const proxy = await startTestProxy(url, { 'auth.provider': 'none' });
    try {
      const res = await request(`${proxy.url}/health`);
      expect(res.status).to.equal(502);
      expect(res.headers['x-kvx-error']).to.equal('upstream_tls');
      expect(JSON.parse(res.body).message).to.contain('upstream.caFile');
    } finally {
      await proxy.close(500);
    }
  });

  it('trusts a CA bundle and presents a client certificate for mutual TLS', async () => {
    const proxy = await startTestProxy(url, {
      'auth.provider': 'none',
      'upstream.caFile': pem('ca.pem'),
      'upstream.certFile': pem('client.pem'),
      'upstream.keyFile': pem('client.key'),
    });
    try {
      const res = await request(`${proxy.url}/health`);
      expect(res.body).to.equal('secure');
      expect(sawClientCert).to.equal(true);
    } finally {
      await proxy.close(500);
    }
  });

  it('an https:// upstream.url on a server speaking plain HTTP: 502 upstream_tls saying so, with the http:// fix', async () => {
    const plain = http.createServer((_req, res) => res.end('plain'));
    await new Promise<void>((resolve) => plain.listen(0, '127.0.0.1', resolve));
    const plainUrl = `https://127.0.0.1:${(plain.address() as AddressInfo).port}`;
    const proxy = await startTestProxy(plainUrl, { 'auth.provider': 'none' });
    try {
      const res = await request(`${proxy.url}/health`);
      expect(res.status).to.equal(502);
      expect(res.headers['x-kvx-error']).to.equal('upstream_tls');
      const message = (JSON.parse(res.body) as { message: string }).message;
      expect(message).to.contain('plain text, not TLS').and.contain('http:// upstream.url').and.not.contain('SSL routines');
    } finally {
      await proxy.close(500);
      plain.closeAllConnections();
      await new Promise<void>((resolve) => plain.close(() => resolve()));
    }
  });

  it('skips verification only when upstream.insecure is set', async () => {
    const proxy = await startTestProxy(url, { 'auth.provider': 'none', 'upstream.insecure': true });
    try {
      expect((await request(`${proxy.url}/health`)).body).to.equal('secure');
    } finally {
      await proxy.close(500);
    }
  });
});

describe('kvx-proxy CLI', () => {
  const run = async (argv: string[], env: NodeJS.ProcessEnv = {}) => {
    const stdout = new PassThrough();
    const stderr = new PassThrough();
    let out = '';
    let err = '';
    stdout.on('data', (d: Buffer) => (out += d.toString()));
    stderr.on('data', (d: Buffer) => (err += d.toString()));
    const code = await main(argv, { stdout, stderr, env });
    process.exitCode = 0;
    return { code, out, err };
  };

  it('prints its version, matching package.json', async () => {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
    expect(VERSION).to.equal(pkg.version);
    const { code, out } = await run(['--version']);
    expect(code).to.equal(0);
    expect(out.trim()).to.equal(VERSION);
  });

  it('check-config prints the effective config with secrets redacted and exits 0', async () => {
    const { code, out, err } = await run(['check-config', '--upstream', 'https://mlflow.example', '--auth-provider', 'static', '--param', 'token=top-secret-value']);
    expect(code).to.equal(0);
    expect(out).to.contain('url: https://mlflow.example');
    expect(out).to.contain('reason: auth.provider is static');
    expect(out).to.not.contain('top-secret-value');
    expect(err).to.contain('configuration is valid');
  });

  it('exits 2 listing every problem', async () => {
    const { code, err } = await run(['check-config', '--port', 'x', '--auth-provider', 'static'], { KVX_NOPE: '1' });
    expect(code).to.equal(2);
    expect(err).to.contain('--port: must be a whole number');
    expect(err).to.contain('KVX_NOPE: unknown KVX_ environment variable');
    expect(err).to.contain('upstream.url: required');
    expect(err).to.contain('auth.params.token: required');
  });

  it('exits 2 for a malformed --param and an unknown flag', async () => {
    expect((await run(['check-config', '--param', 'novalue'])).code).to.equal(2);
    const unknown = await run(['check-config', '--upstreem', 'x']);
    expect(unknown.code).to.equal(2);
    expect(unknown.err).to.contain("unknown option '--upstreem'");
  });

  it('exits 1 with the reason when the first credentials cannot be had', async () => {
    const { code, err } = await run(['serve', '--upstream', 'http://127.0.0.1:9', '--auth-provider', 'static', '--token-file', '/nonexistent/token', '--port', '0', '--no-admin']);
    expect(code).to.equal(1);
    expect(err).to.contain('static').and.contain('token_file');
  });
});

describe('proxy: pool reuse', () => {
  it('reuses upstream connections across requests', async () => {
    const sockets = new Set<unknown>();
    const upstream = await startScriptedUpstream((req, res) => {
      sockets.add(req.socket);
      res.end('{}');
    });
    const proxy = await startTestProxy(upstream.url, { 'auth.provider': 'none' });
    try {
      const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
      for (let i = 0; i < 20; i++) await request(`${proxy.url}/api/2.0/mlflow/runs/get?run_id=${i}`, { agent });
      agent.destroy();
      expect(sockets.size).to.equal(1);
    } finally {
      await proxy.close(500);
      await upstream.close();
    }
  });
});
