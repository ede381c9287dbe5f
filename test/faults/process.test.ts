/**
 * Process-level faults: signals with work in flight, and files that change under a running proxy.
 */
import { expect } from 'chai';
import { mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { request } from './support/client.js';
import { FAST_ENV, Harness } from './support/harness.js';
import { pollUntil, spawnProxy } from './support/proxy-process.js';
import { makeSecret } from './support/transcript.js';
import { ScriptedUpstream } from './support/upstream.js';

function connectOutcome(port: number): Promise<'connected' | string> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.on('connect', () => {
      s.destroy();
      resolve('connected');
    });
    s.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

describe('faults: process', function () {
  this.timeout(60_000);
  const cleanups: (() => Promise<unknown>)[] = [];
  afterEach(async () => {
    while (cleanups.length) await cleanups.pop()!().catch(() => {});
  });

  it('SIGTERM with requests in flight: they finish, new connections are refused, exit 0 within server.shutdownTimeoutMs', async () => {
    const h = await Harness.start({
      label: 'faults-sigterm',
      env: { KVX_SERVER_SHUTDOWN_TIMEOUT_MS: '8000', KVX_UPSTREAM_HEADERS_TIMEOUT_MS: '20000', KVX_UPSTREAM_IDLE_TIMEOUT_MS: '20000' },
    });
    cleanups.push(() => h.stop());
    const release: (() => void)[] = [];
    h.upstream.behaviour = (req, res) => {
      if (!req.url!.startsWith('/slow')) return false;
      req.resume();
      release.push(() => res.end(JSON.stringify({ path: req.url })));
      return true;
    };
    const t0 = Date.now();
    const events: string[] = [];
    const inFlight = Array.from({ length: 10 }, (_, i) =>
      request(h.url, `/slow/${i}`, i % 2 ? { method: 'POST', body: Buffer.alloc(200_000, i), headers: { 'content-type': 'application/octet-stream' } } : {}).catch((err: Error) => {
        events.push(`#${i} ${err.message} at ${Date.now() - t0}`);
        throw err;
      }),
    );
    await pollUntil(() => release.length, (n) => n === 10, 5000);
    // An idle keep-alive client too (one answered request, connection kept): it is let go at once.
    const idle = net.connect(h.proxy.port, '127.0.0.1');
    idle.on('error', () => {});
    const idleClosed = new Promise<void>((r) => idle.on('close', () => r()));
    const firstAnswer = new Promise<void>((r) => idle.once('data', () => r()));
    idle.write('GET /bytes/10 HTTP/1.1\r\nHost: kvx\r\n\r\n');
    await firstAnswer;
    await new Promise((r) => setTimeout(r, 50)); // let the server finish the answer and mark the connection idle

    events.push(`SIGTERM at ${Date.now() - t0}`);
    h.proxy.signal('SIGTERM');
    await h.proxy.waitForLog((l) => l.msg === 'shutting down: no new connections; waiting for in-flight requests');
    events.push(`drain logged at ${Date.now() - t0}`);
    expect(await connectOutcome(h.proxy.port), 'a new connection during the drain').to.equal('ECONNREFUSED');
    events.push(`refused at ${Date.now() - t0}`);
    const readyz = await request(h.proxy.adminUrl, '/readyz');
    expect(readyz.status).to.equal(503);
    expect(JSON.parse(readyz.text)).to.include({ status: 'draining' });
    events.push(`readyz at ${Date.now() - t0}`);
    await idleClosed;
    events.push(`idle closed at ${Date.now() - t0}`);
    expect(h.proxy.alive, 'exited while requests were in flight').to.equal(true);

    const releasedAt = Date.now();
    for (const r of release) r();
    const settled = await Promise.allSettled(inFlight);
    const broken = settled.flatMap((s, i) => (s.status === 'rejected' ? [`#${i}: ${String(s.reason)} after ${Date.now() - releasedAt} ms, exit ${JSON.stringify(h.proxy.exit)}`] : []));
    expect(broken, `${events.join('; ')} in-flight requests broken by the drain; proxy log:\n${h.proxy.stdout}`).to.deep.equal([]);
    const answers = settled.map((s) => (s as PromiseFulfilledResult<Awaited<(typeof inFlight)[number]>>).value);
    answers.forEach((a, i) => {
      expect(a.status).to.equal(200);
      expect(JSON.parse(a.text)).to.deep.equal({ path: `/slow/${i}` });
    });
    const exit = await h.proxy.exited;
    expect(exit).to.deep.equal({ code: 0, signal: null });
    const stopped = await h.proxy.waitForLog((l) => l.msg === 'kvx-proxy stopped');
    expect(stopped['cut']).to.equal(0);
  });

  it('SIGTERM during a 1 GB upload: cut when server.shutdownTimeoutMs ends, upstream request aborted, exit 0', async () => {
    const h = await Harness.start({ label: 'faults-sigterm-upload', env: { KVX_SERVER_SHUTDOWN_TIMEOUT_MS: '1000' } });
    cleanups.push(() => h.stop());
    const total = 1024 * 1024 * 1024;
    const id = 'upload-1g';
    const socket = net.connect(h.proxy.port, '127.0.0.1');
    const received: Buffer[] = [];
    socket.on('data', (c: Buffer) => received.push(c));
    socket.on('error', () => {});
    const closed = new Promise<void>((r) => socket.on('close', () => r()));
    await new Promise<void>((r) => socket.on('connect', () => r()));
    socket.write(`PUT /api/2.0/mlflow-artifacts/artifacts/1/run/artifacts/model.bin HTTP/1.1\r\nHost: kvx\r\nContent-Length: ${total}\r\nX-Request-Id: ${id}\r\n\r\n`);
    const chunk = Buffer.alloc(1024 * 1024, 0x5a);
    let sent = 0;
    let stop = false;
    const pump = () => {
      while (!stop && sent < total) {
        sent += chunk.length;
        if (!socket.write(chunk)) return void socket.once('drain', pump);
      }
    };
    pump();
    await pollUntil(() => h.upstream.byId(id)[0]?.bytes ?? 0, (b) => b > 50 * 1024 * 1024, 20_000);

    h.proxy.signal('SIGTERM');
    await closed;
    stop = true;
    const exit = await h.proxy.exited;
    expect(exit).to.deep.equal({ code: 0, signal: null });
    const upstreamSide = await pollUntil(() => h.upstream.byId(id)[0]!, (r) => r.cancelled, 3000);
    expect(upstreamSide.complete, 'the upload cannot have completed').to.equal(false);
    expect(upstreamSide.cancelled, 'upstream request must be aborted, not left hanging').to.equal(true);
    expect(upstreamSide.bytes).to.be.below(total);
    expect(Buffer.concat(received).toString('latin1'), 'no answer is invented for a cut upload').to.not.match(/^HTTP\/1\.1 2/);
    const cut = await h.proxy.waitForLog((l) => l.msg === 'shutdown deadline reached; cutting unfinished requests');
    expect(cut['cut']).to.equal(1);
  });

  it('SIGINT on an idle proxy exits 0 promptly', async () => {
    const h = await Harness.start({ label: 'faults-sigint' });
    cleanups.push(() => h.stop());
    h.proxy.signal('SIGINT');
    expect(await h.proxy.exited).to.deep.equal({ code: 0, signal: null });
  });

  it('the config file becoming unreadable or invalid while running changes nothing: config is read once at start', async () => {
    const token = makeSecret('config-token');
    const upstream = await ScriptedUpstream.start(token);
    cleanups.push(() => upstream.close());
    const proxy = await spawnProxy({
      label: 'faults-config-file',
      args: ['--port', '0', '--admin-port', '0'],
      configYaml: `upstream:\n  url: ${upstream.url}\nauth:\n  provider: static\n  params:\n    token_env: FAULTS_TOKEN\n`,
      env: { FAULTS_TOKEN: token, ...FAST_ENV },
    });
    cleanups.push(() => proxy.stop());
    const configFile = path.join(proxy.dir, 'kvx.yaml');
    const ok = async () => {
      const a = await request(proxy.url, '/bytes/1000');
      expect(a.status).to.equal(200);
      expect(a.body.length).to.equal(1000);
    };
    await ok();
    upstream.dropIdle();
    const base = await pollUntil(() => proxy.fds(), (f) => f.tcp.every((t) => t.state === 'LISTEN'), 3000);
    writeFileSync(configFile, 'upstream: [this is: not valid\n');
    await ok();
    rmSync(configFile);
    mkdirSync(configFile);
    await ok();
    rmSync(configFile, { recursive: true });
    await ok();
    expect(proxy.alive).to.equal(true);
    expect(proxy.logs.filter((l) => l.level === 'error')).to.deep.equal([]);
    upstream.dropIdle();
    const after = await pollUntil(() => proxy.fds(), (f) => f.total <= base.total && f.tcp.every((t) => t.state === 'LISTEN'), 3000);
    expect(after.total).to.be.at.most(base.total);
  });

  it('a token_file that becomes unreadable keeps its last value; a new value is picked up when it returns', async () => {
    const first = makeSecret('file-token-1');
    const second = makeSecret('file-token-2');
    const upstream = await ScriptedUpstream.start(first);
    cleanups.push(() => upstream.close());
    const dir = path.join(process.env['TMPDIR'] ?? '/tmp', `kvx-faults-token-${process.pid}-${Date.now()}`);
    mkdirSync(dir, { recursive: true });
    cleanups.push(async () => rmSync(dir, { recursive: true, force: true }));
    const tokenFile = path.join(dir, 'token');
    writeFileSync(tokenFile, first + '\n');
    const proxy = await spawnProxy({
      label: 'faults-token-file',
      args: ['--upstream', upstream.url, '--auth-provider', 'static', '--token-file', tokenFile, '--port', '0', '--admin-port', '0'],
      env: FAST_ENV,
    });
    cleanups.push(() => proxy.stop());
    const status = async () => (await request(proxy.url, '/bytes/10')).status;
    expect(await status()).to.equal(200);
    upstream.dropIdle();
    const base = await pollUntil(() => proxy.fds(), (f) => f.tcp.every((t) => t.state === 'LISTEN'), 3000);

    // Kubernetes swaps the symlink of a projected secret; here the file disappears, then turns into a directory.
    renameSync(tokenFile, tokenFile + '.gone');
    await proxy.waitForLog((l) => l.msg === 'secret file unreadable; keeping the last value read', 5000);
    expect(await status()).to.equal(200);
    mkdirSync(tokenFile);
    expect(await status()).to.equal(200);
    const readyz = await request(proxy.adminUrl, '/readyz');
    expect(readyz.status, 'the last value is still valid: ready').to.equal(200);

    rmSync(tokenFile, { recursive: true });
    upstream.token = second;
    writeFileSync(tokenFile, second + '\n');
    await proxy.waitForLog((l) => l.msg === 'secret file changed; using the new value', 5000);
    expect(await status()).to.equal(200);
    expect(proxy.alive).to.equal(true);
    upstream.dropIdle();
    const after = await pollUntil(() => proxy.fds(), (f) => f.total <= base.total && f.tcp.every((t) => t.state === 'LISTEN'), 3000);
    expect(after.total, 'the polled secret file leaks no descriptor').to.be.at.most(base.total);
  });
});
