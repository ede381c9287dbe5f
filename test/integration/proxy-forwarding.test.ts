import http from 'node:http';
import net from 'node:net';
import { expect } from 'chai';
import { startFakeMlflow, bearerGate } from '../fakes/mlflow/index.js';
import type { FakeMlflow } from '../fakes/mlflow/index.js';
import { MlflowClientEmulator, runTrackingWorkflow } from '../helpers/mlflow-client.js';
import { exchange } from '../helpers/raw-http.js';
import { startTestProxy } from '../helpers/proxy.js';
import type { TestProxy } from '../helpers/proxy.js';
import { closedPort, request, startScriptedUpstream } from '../helpers/http.js';

const TOKEN = 'static-secret-token-4f9a';
const env = { TEST_MLFLOW_TOKEN: TOKEN };

describe('proxy: forwarding to a protected MLflow', () => {
  let mlflow: FakeMlflow;
  let proxy: TestProxy;

  before(async () => {
    mlflow = await startFakeMlflow({ gate: bearerGate(TOKEN) });
    proxy = await startTestProxy(mlflow.url, { 'auth.provider': 'static', 'auth.params.token_env': 'TEST_MLFLOW_TOKEN' }, env);
  });

  after(async () => {
    await proxy.close(1000);
    await mlflow.close();
  });

  it('runs the MLflow client tracking workflow end to end, 20 MB artifact included', async () => {
    const client = new MlflowClientEmulator(proxy.url);
    try {
      await runTrackingWorkflow(client);
      expect(client.statuses.filter((s) => s === 401)).to.have.length(0);
    } finally {
      client.close();
    }
  });

  it('is refused by the gate without the proxy (the gate is real)', async () => {
    const res = await request(`${mlflow.url}/api/2.0/mlflow/experiments/search?max_results=1`);
    expect(res.status).to.equal(401);
  });

  it('replaces the client credential headers and drops hop-by-hop headers', async () => {
    mlflow.requests.length = 0;
    const res = await request(`${proxy.url}/version`, {
      headers: {
        authorization: 'Bearer client-supplied',
        cookie: 'session=abc',
        'x-serverless-authorization': 'Bearer other',
        connection: 'keep-alive, x-hop',
        'x-hop': 'drop me',
        'keep-alive': 'timeout=5',
        te: 'trailers',
        'x-custom': 'kept',
      },
    });
    expect(res.status).to.equal(200);
    const seen = mlflow.requests.at(-1)!;
    expect(seen.headers['authorization']).to.equal(`Bearer ${TOKEN}`);
    expect(seen.headers).to.not.have.property('cookie');
    expect(seen.headers).to.not.have.property('x-serverless-authorization');
    expect(seen.headers).to.not.have.property('x-hop');
    expect(seen.headers).to.not.have.property('keep-alive');
    expect(seen.headers).to.not.have.property('te');
    expect(seen.headers['x-custom']).to.equal('kept');
    expect(seen.headers['host']).to.equal(new URL(mlflow.url).host);
    expect(seen.headers['x-request-id']).to.be.a('string');
  });

  it('passes an incoming X-Request-Id through and logs it', async () => {
    mlflow.requests.length = 0;
    await request(`${proxy.url}/health`, { headers: { 'x-request-id': 'trace-123' } });
    expect(mlflow.requests.at(-1)!.headers['x-request-id']).to.equal('trace-123');
    expect(proxy.logs.records().some((r) => r['msg'] === 'request' && r['id'] === 'trace-123')).to.equal(true);
  });

  it('passes encoded paths and query strings through byte for byte', async () => {
    const upstream = await startScriptedUpstream((req, res) => res.end(JSON.stringify({ url: req.url })));
    const p = await startTestProxy(upstream.url, { 'auth.provider': 'static', 'auth.params.token_env': 'TEST_MLFLOW_TOKEN' }, env);
    try {
      for (const target of [
        '/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts/dir%2Fwith%20space/f%C3%A9.txt',
        '/api/2.0/mlflow-artifacts/artifacts?path=1%2Fabc%2Fartifacts&x=a+b&y=%26%3D',
        '/ajax-api/2.0/mlflow/runs/search?filter=tags.%22a%22%20%3D%20%27b%27',
        '/api/3.0/mlflow/traces/tr-1/info',
      ]) {
        const res = await request(p.url + target);
        expect(JSON.parse(res.body).url).to.equal(target);
      }
    } finally {
      await p.close(500);
      await upstream.close();
    }
  });

  it('sends Expect: 100-continue uploads with the injected header', async () => {
    mlflow.requests.length = 0;
    const body = Buffer.alloc(2 * 1024 * 1024, 7);
    const status = await new Promise<number>((resolve, reject) => {
      const req = http.request(`${proxy.url}/api/2.0/mlflow-artifacts/artifacts/0/expect/artifacts/big.bin`, {
        method: 'PUT',
        agent: false,
        headers: { expect: '100-continue', 'content-length': body.length, authorization: 'Bearer nope' },
      });
      req.on('continue', () => req.end(body));
      req.on('response', (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      });
      req.on('error', reject);
    });
    expect(status).to.equal(200);
    const seen = mlflow.requests.at(-1)!;
    expect(seen.headers['authorization']).to.equal(`Bearer ${TOKEN}`);
    expect(seen.headers).to.not.have.property('expect');
    expect(seen.bodyBytes).to.equal(body.length);
  });

  it('refuses absolute-form targets and CONNECT: never an open proxy', async () => {
    const absolute = (await exchange(proxy.address.port, 'GET http://example.com/secret HTTP/1.1\r\nHost: example.com\r\n\r\n', { idleMs: 500 })).text;
    expect(absolute).to.match(/^HTTP\/1\.1 400/);
    expect(absolute).to.contain('"error_code":"BAD_REQUEST"');
    expect(absolute).to.contain('not a forward proxy');
    const connect = (await exchange(proxy.address.port, 'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n', { idleMs: 500 })).text;
    expect(connect).to.match(/^HTTP\/1\.1 405/);
    expect(connect).to.contain('CONNECT is refused');
  });

  it('refuses dot-segment paths, raw or encoded', async () => {
    for (const target of ['/api/../admin', '/api/%2e%2e/admin', '/./x']) {
      const res = (await exchange(proxy.address.port, `GET ${target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`, { idleMs: 500 })).text;
      expect(res, target).to.match(/^HTTP\/1\.1 400/);
    }
  });

  it('answers 431 to oversized headers and keeps serving', async () => {
    const huge = 'x'.repeat(40 * 1024);
    const res = (await exchange(proxy.address.port, `GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ${huge}\r\n\r\n`, { idleMs: 500 })).text;
    expect(res).to.match(/^HTTP\/1\.1 431/);
    expect(res).to.contain('server.maxHeaderSize');
    expect((await request(`${proxy.url}/health`)).status).to.equal(200);
  });

  it('never leaks the token into logs', () => {
    expect(proxy.logs.lines.length).to.be.greaterThan(5);
    expect(proxy.logs.text()).to.not.contain(TOKEN);
  });
});

describe('proxy: upstream failures', () => {
  it('answers 502 in MLflow shape when upstream is down', async () => {
    const port = await closedPort();
    const proxy = await startTestProxy(`http://127.0.0.1:${port}`, { 'auth.provider': 'none' });
    try {
      const res = await request(`${proxy.url}/api/2.0/mlflow/experiments/search`);
      expect(res.status).to.equal(502);
      expect(res.headers['x-kvx-error']).to.equal('upstream_unreachable');
      const body = JSON.parse(res.body);
      expect(body.error_code).to.equal('TEMPORARILY_UNAVAILABLE');
      expect(body.message).to.contain('refused the connection').and.contain('upstream.url');
    } finally {
      await proxy.close(500);
    }
  });

  it('answers 504 when upstream sends no headers in time', async () => {
    const upstream = await startScriptedUpstream(() => {
      /* never answers */
    });
    const proxy = await startTestProxy(upstream.url, { 'auth.provider': 'none', 'upstream.headersTimeoutMs': 300 });
    try {
      const res = await request(`${proxy.url}/api/2.0/mlflow/runs/get?run_id=x`);
      expect(res.status).to.equal(504);
      expect(JSON.parse(res.body).message).to.contain('upstream.headersTimeoutMs');
    } finally {
      await proxy.close(500);
      await upstream.close();
    }
  });

  it('answers 502 when upstream resets the connection, and cuts a response broken mid-body', async () => {
    let mode: 'reset' | 'midbody' = 'reset';
    const upstream = await startScriptedUpstream((req, res) => {
      if (req.url === '/health') return void res.end('OK');
      if (mode === 'reset') {
        req.socket.destroy();
        return;
      }
      res.writeHead(200, { 'content-length': 1000 });
      res.write('x'.repeat(100));
      setTimeout(() => req.socket.destroy(), 20);
    });
    const proxy = await startTestProxy(upstream.url, { 'auth.provider': 'none' });
    try {
      const res = await request(`${proxy.url}/api/2.0/mlflow/runs/update`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } });
      expect(res.status).to.equal(502);
      mode = 'midbody';
      const err = await request(`${proxy.url}/get-artifact`).then(
        () => undefined,
        (e: Error) => e,
      );
      expect(err, 'a truncated body must surface as an error, not a short success').to.be.instanceOf(Error);
      const after = await request(`${proxy.url}/health`).catch(() => undefined);
      expect(after?.status).to.equal(200);
    } finally {
      await proxy.close(500);
      await upstream.close();
    }
  });

  it('does not follow redirects and rewrites a Location pointing at upstream', async () => {
    let hits = 0;
    const upstream = await startScriptedUpstream((req, res) => {
      hits++;
      if (req.url === '/mlflow/away') {
        res.writeHead(302, { location: 'https://elsewhere.example/steal' });
      } else {
        res.writeHead(301, { location: `http://127.0.0.1:${(req.socket.localPort ?? 0).toString()}/mlflow/moved?x=1` });
      }
      res.end();
    });
    const proxy = await startTestProxy(`${upstream.url}/mlflow`, { 'auth.provider': 'none' });
    try {
      const away = await request(`${proxy.url}/away`);
      expect(away.status).to.equal(302);
      expect(away.headers.location).to.equal('https://elsewhere.example/steal');
      const local = await request(`${proxy.url}/here`, { headers: { host: `127.0.0.1:${proxy.address.port}` } });
      expect(local.status).to.equal(301);
      expect(local.headers.location).to.equal(`http://127.0.0.1:${proxy.address.port}/moved?x=1`);
      expect(hits).to.equal(2);
    } finally {
      await proxy.close(500);
      await upstream.close();
    }
  });
});

describe('proxy: listening', () => {
  it('listens on loopback by default', async () => {
    const proxy = await startTestProxy('http://127.0.0.1:9', { 'auth.provider': 'none' });
    try {
      expect(proxy.address.address).to.equal('127.0.0.1');
      const socket = net.connect(proxy.address.port, '127.0.0.1');
      await new Promise((resolve) => socket.on('connect', resolve));
      socket.destroy();
    } finally {
      await proxy.close(500);
    }
  });

  it('reports a port in use as a config problem naming the key', async () => {
    const first = await startTestProxy('http://127.0.0.1:9', { 'auth.provider': 'none' });
    try {
      const err = await startTestProxy('http://127.0.0.1:9', { 'auth.provider': 'none', 'listen.port': first.address.port }).then(
        () => undefined,
        (e: Error) => e,
      );
      expect(err?.message).to.contain('listen.port').and.contain('already in use');
    } finally {
      await first.close(500);
    }
  });
});
