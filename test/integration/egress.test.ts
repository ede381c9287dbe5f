/**
 * Egress proxies and host aliases, end to end: the wire engine's upstream (http and https) tunnelled through a
 * real CONNECT proxy on loopback, Google endpoints and kvx-launch's MLflow calls through it, NO_PROXY bypasses,
 * the proxy's refusals as 502s with a code, upstreams reached only by an alias name, and no credential in a log.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import type http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import net from 'node:net';
import type { AddressInfo, Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { expect } from 'chai';
import YAML from 'yaml';
import { main } from '../../src/cli/kvx-proxy.js';
import { libraryCredentials } from '../../src/auth/google/external.js';
import { silentLogger } from '../../src/log/logger.js';
import { Egress } from '../../src/config/egress.js';
import { loadConfig } from '../../src/config/load.js';
import type { KvxError } from '../../src/errors.js';
import { MlflowClient, mlflowDispatcher } from '../../src/mlflow/client.js';
import { startConnectProxy } from '../fakes/connect-proxy.js';
import type { FakeConnectProxy } from '../fakes/connect-proxy.js';
import { CLIENT_ID, TARGET_SA, capturingLogger, startGoogleWorld } from '../fakes/google-world.js';
import type { GoogleWorld } from '../fakes/google-world.js';
import { startFakeMlflow } from '../fakes/mlflow/index.js';
import { iapGate } from '../fakes/iap-gate.js';
import { closedPort, request, startScriptedUpstream } from '../helpers/http.js';
import { startTestProxy } from '../helpers/proxy.js';
import { expectNoSecrets, injectorFor } from './google-helpers.js';
import { FIXTURE, launchCli, onlyRun, useHarness } from './launch-harness.js';

const PASSWORD = 's3cr@t-proxy-pw';
const BASIC = Buffer.from(`kvx:${PASSWORD}`).toString('base64');
const PROXY_USERINFO = `kvx:${encodeURIComponent(PASSWORD)}`;

function withCredentials(proxy: FakeConnectProxy): string {
  return `http://${PROXY_USERINFO}@127.0.0.1:${proxy.port}`;
}

describe('egress proxy: the wire engine upstream', () => {
  let proxy: FakeConnectProxy;
  let upstream: Awaited<ReturnType<typeof startScriptedUpstream>>;
  const seen: http.IncomingHttpHeaders[] = [];

  beforeEach(async () => {
    proxy = await startConnectProxy();
    upstream = await startScriptedUpstream((req, res) => {
      seen.push(req.headers);
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ path: req.url }));
    });
    seen.length = 0;
  });
  afterEach(async () => {
    await upstream.close();
    await proxy.close();
  });

  it('tunnels an http upstream through HTTP_PROXY with CONNECT and keeps the tunnel alive between requests', async () => {
    const kvx = await startTestProxy(upstream.url, { 'auth.provider': 'static', 'auth.params.token': 'upstream-token' }, { HTTP_PROXY: proxy.url });
    try {
      for (let i = 0; i < 3; i++) {
        const res = await request(`${kvx.url}/api/2.0/mlflow/experiments/get?i=${i}`);
        expect(res.status).to.equal(200);
        expect(JSON.parse(res.body)).to.deep.equal({ path: `/api/2.0/mlflow/experiments/get?i=${i}` });
      }
      expect(proxy.connects).to.deep.equal([{ authority: `127.0.0.1:${upstream.port}`, authorization: undefined, status: 200 }]);
      expect(proxy.forwarded, 'never absolute-form').to.deep.equal([]);
      expect(seen.map((h) => h['authorization'])).to.deep.equal(['Bearer upstream-token', 'Bearer upstream-token', 'Bearer upstream-token']);
      const listening = kvx.logs.records().find((r) => r['msg'] === 'kvx-proxy listening');
      expect(listening?.['upstreamEgress']).to.equal(`through proxy ${proxy.url} (HTTP_PROXY)`);
    } finally {
      await kvx.close(500);
    }
  });

  it('connects directly to a host NO_PROXY names', async () => {
    const kvx = await startTestProxy(upstream.url, { 'auth.provider': 'none' }, { HTTP_PROXY: proxy.url, NO_PROXY: 'localhost,127.0.0.0/8' });
    try {
      expect((await request(`${kvx.url}/health`)).status).to.equal(200);
      expect(proxy.connects).to.deep.equal([]);
    } finally {
      await kvx.close(500);
    }
  });

  it('answers 502 egress_proxy with a code when the proxy wants credentials, refuses, closes or is down, and logs no credential', async () => {
    const guarded = await startConnectProxy({ user: 'kvx', password: PASSWORD });
    const down = await closedPort();
    const cases: { env: NodeJS.ProcessEnv; before?: () => void; code: string }[] = [
      { env: { HTTP_PROXY: guarded.url }, code: 'KVX_EGRESS_PROXY_AUTH' },
      { env: { HTTP_PROXY: `http://kvx:wrong-${encodeURIComponent(PASSWORD)}@127.0.0.1:${guarded.port}` }, code: 'KVX_EGRESS_PROXY_AUTH' },
      { env: { HTTP_PROXY: withCredentials(guarded) }, before: () => (guarded.mode = 'refuse'), code: 'KVX_EGRESS_PROXY_REFUSED' },
      { env: { HTTP_PROXY: proxy.url }, before: () => (proxy.mode = 'close'), code: 'KVX_EGRESS_PROXY_CLOSED' },
      { env: { HTTP_PROXY: `http://${PROXY_USERINFO}@127.0.0.1:${down}` }, code: 'KVX_EGRESS_PROXY_UNREACHABLE' },
    ];
    try {
      for (const c of cases) {
        c.before?.();
        const kvx = await startTestProxy(upstream.url, { 'auth.provider': 'none' }, c.env);
        try {
          const res = await request(`${kvx.url}/api/2.0/mlflow/runs/get?run_id=1`);
          expect(res.status, c.code).to.equal(502);
          expect(res.headers['x-kvx-error']).to.equal('egress_proxy');
          const body = JSON.parse(res.body) as { error_code: string; message: string };
          expect(body.error_code).to.equal('TEMPORARILY_UNAVAILABLE');
          expect(body.message).to.contain(c.code).and.contain(`127.0.0.1:`);
          expect(res.body).to.not.contain(PASSWORD).and.not.contain(encodeURIComponent(PASSWORD)).and.not.contain(BASIC);
          const metrics = (await request(`${kvx.adminUrl}/metrics`)).body;
          expect(metrics).to.contain('kvx_upstream_errors_total{kind="egress_proxy"} 1');
          for (const line of kvx.logs.lines) expect(line).to.not.contain(encodeURIComponent(PASSWORD)).and.not.contain(PASSWORD).and.not.contain(BASIC);
        } finally {
          await kvx.close(500);
        }
      }
      expect(seen, 'nothing reached the upstream').to.deep.equal([]);
      expect(guarded.connects.map((c) => c.status)).to.deep.equal([407, 407, 403]);
    } finally {
      await guarded.close();
    }
  });
});

describe('egress proxy: a proxy that never answers CONNECT', () => {
  it('gives up after upstream.connectTimeoutMs with a 504 and closes the connection to the proxy', async () => {
    const held = new Set<Socket>();
    let closed = 0;
    const silent = net.createServer((socket) => {
      held.add(socket);
      // Reads (and ignores) the CONNECT, so the client's close is seen.
      socket.resume();
      socket.on('error', () => {});
      socket.once('close', () => closed++);
    });
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const silentPort = (silent.address() as AddressInfo).port;
    const kvx = await startTestProxy('http://127.0.0.1:9', { 'auth.provider': 'none', 'upstream.connectTimeoutMs': 200 }, { HTTP_PROXY: `127.0.0.1:${silentPort}` });
    try {
      const res = await request(`${kvx.url}/health`);
      expect(res.status).to.equal(504);
      expect(res.headers['x-kvx-error']).to.equal('upstream_timeout');
      expect(JSON.parse(res.body).message).to.contain('KVX_EGRESS_PROXY_TIMEOUT').and.contain('upstream.connectTimeoutMs (200 ms)');
      await new Promise((r) => setTimeout(r, 50));
      expect(closed).to.equal(held.size).and.equal(1);
    } finally {
      await kvx.close(500);
      for (const socket of held) socket.destroy();
      silent.close();
    }
  });
});

describe('egress proxy and host aliases: an https upstream by name', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'kvx-egress-tls-'));
  const pem = (name: string) => path.join(dir, name);
  let server: https.Server;
  let port: number;
  let proxy: FakeConnectProxy;
  const sni: (string | false | null)[] = [];

  before(async function () {
    this.timeout(20_000);
    const openssl = (...args: string[]) => execFileSync('openssl', args, { stdio: 'ignore' });
    openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=kvx egress test CA', '-keyout', pem('ca.key'), '-out', pem('ca.pem'));
    openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=mlflow.internal', '-keyout', pem('server.key'), '-out', pem('server.csr'));
    writeFileSync(pem('server.ext'), 'subjectAltName=DNS:mlflow.internal\n');
    openssl('x509', '-req', '-in', pem('server.csr'), '-CA', pem('ca.pem'), '-CAkey', pem('ca.key'), '-CAcreateserial', '-days', '2', '-extfile', pem('server.ext'), '-out', pem('server.pem'));
    server = https.createServer({ key: readFileSync(pem('server.key')), cert: readFileSync(pem('server.pem')) }, (req, res) => {
      sni.push((req.socket as TLSSocket).servername);
      res.end(`secure ${req.headers.host}`);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as AddressInfo).port;
  });
  after(() => {
    server.closeAllConnections();
    server.close();
  });
  beforeEach(async () => {
    proxy = await startConnectProxy({ user: 'kvx', password: PASSWORD });
    sni.length = 0;
  });
  afterEach(() => proxy.close());

  it('reaches mlflow.internal only through egress.hostAliases, checking the certificate against the name', async () => {
    const kvx = await startTestProxy(`https://mlflow.internal:${port}`, {
      'auth.provider': 'none',
      'upstream.caFile': pem('ca.pem'),
      'egress.hostAliases': { 'mlflow.internal': '127.0.0.1', 'wrong.internal': '127.0.0.1' },
    });
    try {
      const res = await request(`${kvx.url}/health`);
      expect(res.status).to.equal(200);
      expect(res.body).to.equal(`secure mlflow.internal:${port}`);
      expect(sni).to.deep.equal(['mlflow.internal']);
    } finally {
      await kvx.close(500);
    }
    // The same address under a name the certificate does not carry: TLS checks the name, not the address.
    const wrong = await startTestProxy(`https://wrong.internal:${port}`, { 'auth.provider': 'none', 'upstream.caFile': pem('ca.pem'), 'egress.hostAliases': { 'wrong.internal': '127.0.0.1' } });
    try {
      const res = await request(`${wrong.url}/health`);
      expect(res.status).to.equal(502);
      expect(res.headers['x-kvx-error']).to.equal('upstream_tls');
    } finally {
      await wrong.close(500);
    }
  });

  it('tunnels TLS end to end through HTTPS_PROXY with Proxy-Authorization, the proxy resolving the name', async () => {
    proxy.resolve['mlflow.internal'] = '127.0.0.1';
    const kvx = await startTestProxy(`https://mlflow.internal:${port}`, { 'auth.provider': 'none', 'upstream.caFile': pem('ca.pem') }, { HTTPS_PROXY: withCredentials(proxy) });
    try {
      for (let i = 0; i < 2; i++) expect((await request(`${kvx.url}/health`)).body).to.equal(`secure mlflow.internal:${port}`);
      expect(proxy.connects).to.deep.equal([{ authority: `mlflow.internal:${port}`, authorization: `Basic ${BASIC}`, status: 200 }]);
      expect(sni).to.deep.equal(['mlflow.internal', 'mlflow.internal']);
      const text = kvx.logs.text();
      expect(text).to.contain(`through proxy http://127.0.0.1:${proxy.port} (HTTPS_PROXY, with credentials)`);
      expect(text).to.not.contain(PASSWORD).and.not.contain(encodeURIComponent(PASSWORD)).and.not.contain(BASIC);
    } finally {
      await kvx.close(500);
    }
  });
});

describe('egress proxy: Google endpoints', () => {
  let world: GoogleWorld;
  let proxy: FakeConnectProxy;
  const closers: (() => Promise<void>)[] = [];
  const port = (url: string) => new URL(url).port;

  beforeEach(async () => {
    world = await startGoogleWorld();
    proxy = await startConnectProxy({ user: 'kvx', password: PASSWORD });
  });
  afterEach(async () => {
    for (const close of closers.splice(0)) await close();
    await proxy.close();
    await world.close();
  });

  async function idToken(env: NodeJS.ProcessEnv): Promise<{ lines: string[] }> {
    const { logger, lines } = capturingLogger();
    const { injector } = await injectorFor(world, env, { params: { client_id: CLIENT_ID, service_account: TARGET_SA } }, logger);
    closers.push(() => injector.close());
    await injector.start();
    const headers = await injector.headers();
    expect(headers['Authorization']).to.match(/^Bearer eyJ/);
    return { lines };
  }

  it('sends the token endpoint and IAM Credentials calls through the proxy (service-account key)', async () => {
    const { lines } = await idToken({ ...world.keyEnv(), HTTP_PROXY: withCredentials(proxy) });
    expect(proxy.connects.map((c) => c.authority.split(':')[1])).to.have.members([port(world.endpoints.oauthToken), port(world.endpoints.iamCredentials)]);
    expect(proxy.connects.every((c) => c.authorization === `Basic ${BASIC}` && c.status === 200)).to.equal(true);
    expectNoSecrets(lines, [PASSWORD, encodeURIComponent(PASSWORD), BASIC]);
  });

  it("sends google-auth-library's refresh of a gcloud login through the proxy too", async () => {
    await idToken({ ...world.userEnv(), HTTP_PROXY: withCredentials(proxy) });
    expect(proxy.connects.map((c) => c.authority.split(':')[1])).to.include(port(world.endpoints.oauthToken)).and.include(port(world.endpoints.iamCredentials));
  });

  it('never sends the metadata server through the proxy', async () => {
    await idToken({ ...world.metadataEnv(), HTTP_PROXY: withCredentials(proxy) });
    const ports = proxy.connects.map((c) => c.authority.split(':')[1]);
    expect(ports).to.deep.equal([port(world.endpoints.iamCredentials)]);
    expect(world.metadata.counts['token']).to.equal(1);
  });

  it('a proxy refusing Google is a credentials error that names the code and the fix', async () => {
    proxy.mode = 'refuse';
    const { logger, lines } = capturingLogger();
    const { injector } = await injectorFor(world, { ...world.keyEnv(), HTTP_PROXY: withCredentials(proxy) }, { params: { client_id: CLIENT_ID, service_account: TARGET_SA } }, logger);
    closers.push(() => injector.close());
    const error = await injector.start().then(
      () => undefined,
      (err: unknown) => err as Error,
    );
    expect(error?.message).to.contain('KVX_EGRESS_PROXY_REFUSED');
    expectNoSecrets(lines, [PASSWORD, encodeURIComponent(PASSWORD), BASIC]);
  });
});

describe('egress proxy: kvx-launch and doctor', () => {
  let proxy: FakeConnectProxy;
  beforeEach(async () => {
    proxy = await startConnectProxy();
  });
  afterEach(() => proxy.close());

  it("kvx-launch's MLflow calls go through the tunnel, Proxy-Authorization included (for the upstream, not the egress proxy)", async () => {
    const received: (string | undefined)[] = [];
    const upstream = await startScriptedUpstream((req, res) => {
      received.push(req.headers['proxy-authorization'] as string | undefined);
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ experiment: { experiment_id: '7', name: 'e', lifecycle_stage: 'active' } }));
    });
    const { config } = loadConfig({ env: {}, overrides: [{ path: 'upstream.url', value: upstream.url, source: '--upstream' }] });
    const egress = Egress.fromConfig(config, { HTTP_PROXY: proxy.url });
    const dispatcher = mlflowDispatcher(config, egress);
    try {
      const client = new MlflowClient({ trackingUri: upstream.url, dispatcher, headers: { headers: () => ({ 'Proxy-Authorization': 'Bearer iap-token' }) }, retry: { maxRetries: 0 } });
      expect((await client.getExperimentByName('e'))?.experiment_id).to.equal('7');
      expect(received).to.deep.equal(['Bearer iap-token']);
      expect(proxy.connects).to.deep.equal([{ authority: `127.0.0.1:${upstream.port}`, authorization: undefined, status: 200 }]);

      proxy.mode = 'refuse';
      const refused = new MlflowClient({ trackingUri: `http://127.0.0.1:${await closedPort()}`, dispatcher, retry: { maxRetries: 0 } });
      const error = await refused.getExperimentByName('e').then(
        () => undefined,
        (err: unknown) => err as KvxError,
      );
      expect(error?.code).to.equal('KVX_UPSTREAM_UNREACHABLE');
      expect(error?.message).to.contain('KVX_EGRESS_PROXY_REFUSED');
    } finally {
      await dispatcher.close();
      await egress.close();
      await upstream.close();
    }
  });

  it('doctor says which proxy each call takes and checks the IAP upstream through it', async function () {
    this.timeout(20_000);
    const world = await startGoogleWorld();
    const mlflow = await startFakeMlflow({ gate: iapGate({ issuer: world.issuer, audience: CLIENT_ID }) });
    try {
      const file = path.join(world.dir, 'kvx.yml');
      writeFileSync(
        file,
        YAML.stringify({
          upstream: { url: mlflow.url },
          auth: { params: { client_id: CLIENT_ID, service_account: TARGET_SA }, endpoints: { oauthToken: world.endpoints.oauthToken, iamCredentials: world.endpoints.iamCredentials } },
          egress: { hostAliases: { 'mlflow.internal': '10.0.0.5' } },
        }),
      );
      const out = new Sink();
      const code = await main(['doctor', '-c', file], { stdout: out, stderr: new Sink(), env: { ...world.metadataEnv(), HTTP_PROXY: proxy.url, NO_PROXY: `127.0.0.1:${new URL(world.endpoints.oauthToken).port}` } });
      expect(out.text, out.text).to.contain('All checks passed.');
      expect(code).to.equal(0);
      expect(out.text).to.contain(`[OK  ] egress upstream: ${mlflow.url} through proxy ${proxy.url} (HTTP_PROXY)`);
      expect(out.text).to.contain(`[OK  ] egress OAuth token endpoint: ${new URL(world.endpoints.oauthToken).origin} directly (NO_PROXY entry 127.0.0.1:`);
      expect(out.text).to.contain(`[OK  ] egress IAM Credentials: ${world.endpoints.iamCredentials.replace(/\/$/, '')} through proxy`);
      expect(out.text).to.contain('[OK  ] egress metadata server: directly: the metadata server is never proxied');
      expect(out.text).to.contain('[OK  ] egress host aliases: mlflow.internal → 10.0.0.5');
      const ports = proxy.connects.map((c) => c.authority.split(':')[1]);
      expect(ports).to.include(new URL(mlflow.url).port).and.include(new URL(world.endpoints.iamCredentials).port);

      writeFileSync(file, YAML.stringify({ upstream: { url: mlflow.url }, auth: { provider: 'none' } }));
      const plain = new Sink();
      await main(['doctor', '-c', file], { stdout: plain, stderr: new Sink(), env: world.metadataEnv() });
      expect(plain.text).to.contain('[OK  ] egress: direct connections: no egress.proxy, HTTPS_PROXY or HTTP_PROXY');
    } finally {
      await mlflow.close();
      await world.close();
      process.exitCode = undefined;
    }
  });
});

describe('egress proxy: kvx-launch run end to end', () => {
  const harness = useHarness();
  let proxy: FakeConnectProxy;
  beforeEach(async () => {
    proxy = await startConnectProxy({ user: 'kvx', password: PASSWORD });
  });
  afterEach(() => proxy.close());

  it('sends its Vertex AI and MLflow calls through HTTP_PROXY, the metadata server directly', async () => {
    const h = harness();
    const res = await launchCli(h, ['run', FIXTURE, '-c', h.config, '--param', 'dataset=companies-v2', '--poll-interval', '0.01'], { env: { HTTP_PROXY: withCredentials(proxy) } });
    expect(res.code, res.stderr).to.equal(0);
    onlyRun(h);
    const ports = new Set(proxy.connects.map((c) => c.authority.split(':')[1]));
    expect([...ports]).to.have.members([new URL(h.vertex.url).port, new URL(h.mlflow.url).port]);
    expect(proxy.connects.every((c) => c.status === 200)).to.equal(true);
    expect(res.stdout + res.stderr).to.not.contain(PASSWORD).and.not.contain(BASIC);
  });
});

class Sink extends Writable {
  text = '';
  override _write(chunk: Buffer, _enc: string, done: () => void): void {
    this.text += chunk.toString();
    done();
  }
}

describe('egress proxy: credential files google-auth-library refreshes', () => {
  let proxy: FakeConnectProxy;
  let dir: string;
  beforeEach(async () => {
    proxy = await startConnectProxy();
    // Every CONNECT is refused: the calls only have to be seen going through the proxy, never anywhere else.
    proxy.mode = 'refuse';
    dir = mkdtempSync(path.join(tmpdir(), 'kvx-egress-gal-'));
  });
  afterEach(() => proxy.close());

  async function attempt(json: Record<string, unknown>): Promise<string> {
    const egress = Egress.fromConfig({ egress: { proxy: '', noProxy: [], hostAliases: {} } }, { HTTP_PROXY: proxy.url });
    const source = libraryCredentials(json, 'adc.json', { env: {}, endpoints: { oauthToken: '', iamCredentials: '', metadataHost: '' }, logger: silentLogger, egress, fetchTimeoutMs: 5000 });
    try {
      return await source.accessToken().then(
        () => 'no error',
        (err: unknown) => (err as Error).message,
      );
    } finally {
      source.close();
      await egress.close();
    }
  }

  it('sends the STS exchange of an external_account (workload identity federation) and the impersonation chain through the proxy', async () => {
    const closed = await closedPort();
    const subject = path.join(dir, 'subject-token');
    writeFileSync(subject, 'header.payload.signature');
    const external = {
      type: 'external_account',
      audience: '//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/pool/providers/github',
      subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
      token_url: `http://127.0.0.1:${closed}/v1/token`,
      credential_source: { file: subject },
    };
    expect(await attempt(external)).to.contain('external_account');
    // google-auth-library retries after a network error; every attempt goes through the proxy.
    expect(proxy.connects.length).to.be.greaterThan(0);
    expect(new Set(proxy.connects.map((c) => c.authority))).to.deep.equal(new Set([`127.0.0.1:${closed}`]));

    proxy.connects.length = 0;
    const impersonated = {
      type: 'impersonated_service_account',
      service_account_impersonation_url: `http://127.0.0.1:${closed}/v1/projects/-/serviceAccounts/${TARGET_SA}:generateAccessToken`,
      source_credentials: external,
    };
    expect(await attempt(impersonated)).to.contain('impersonated_service_account');
    expect(proxy.connects.length, 'the source credentials refresh through the proxy too').to.be.greaterThan(0);
    expect(new Set(proxy.connects.map((c) => c.authority))).to.deep.equal(new Set([`127.0.0.1:${closed}`]));
  });
});
