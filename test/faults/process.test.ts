/**
 * Process-level faults: signals with work in flight, and files that change under a running proxy.
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { RawConnection } from '../helpers/raw-http.js';
import { request } from './support/client.js';
import { FAST_ENV, Harness } from './support/harness.js';
import { PROXY_CLI, pollUntil, spawnProxy } from './support/proxy-process.js';
import type { LogLine, ProxyProcess } from './support/proxy-process.js';
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

/**
 * Sends SIGUSR1, which makes a default Node open its inspector (127.0.0.1:9229, no authentication), and checks
 * that the process opened no listener and said nothing about a debugger, and still answers. The listener check
 * reads the process's own sockets, so it holds even when something else already listens on 9229 (then Node
 * would print "Starting inspector on 127.0.0.1:9229 failed", which the stderr check catches).
 * Started with --disable-sigusr1, Node keeps the signal blocked, so kvx's listener never sees it: no notice.
 */
async function expectSigusr1Refused(proxy: ProxyProcess, url: string, notice = true): Promise<void> {
  const before = proxy.listeningPorts().sort();
  proxy.signal('SIGUSR1');
  const opened = await pollUntil(
    () => ({ ports: proxy.alive ? proxy.listeningPorts().sort() : before, stderr: proxy.stderr }),
    (s) => s.ports.length !== before.length || /inspector|Debugger/i.test(s.stderr),
    1500,
  );
  expect(proxy.alive, `SIGUSR1 ended the process: ${JSON.stringify(proxy.exit)}\n${proxy.stderr}`).to.equal(true);
  expect(opened.ports, `listeners after SIGUSR1 (before: ${before.join(', ')}); stderr:\n${proxy.stderr}`).to.deep.equal(before);
  expect(proxy.stderr).to.not.match(/Debugger listening|Starting inspector/);
  if (notice) expect(proxy.stderr).to.include('SIGUSR1 ignored');
  // Nothing but kvx's own JSON log lines (on stderr under `exec`) may be there.
  else expect(proxy.stderr.split('\n').filter((line) => line !== '' && !line.startsWith('{"time":'))).to.deep.equal([]);
  const answer = await request(url, '/bytes/100');
  expect(answer.status).to.equal(200);
  expect(answer.body.length).to.equal(100);
}

/** The node command of `npm run <script>` (what follows the build step), as [flags..., entry]. */
function npmScriptNodeArgs(script: string): string[] {
  const pkg = JSON.parse(readFileSync(path.join(path.dirname(PROXY_CLI), '../../package.json'), 'utf8')) as { scripts: Record<string, string> };
  const command = pkg.scripts[script]!.split('&&').at(-1)!.trim().split(/\s+/);
  expect(command[0], `npm run ${script} runs node`).to.equal('node');
  return command.slice(1).map((a) => (a.startsWith('dist/') ? path.join(path.dirname(PROXY_CLI), '../..', a) : a));
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
    const idle = await RawConnection.open(h.proxy.port);
    idle.write('GET /bytes/10 HTTP/1.1\r\nHost: kvx\r\n\r\n');
    await idle.readResponse();
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
    await idle.closed;
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

  it('SIGTERM during an 8 GB upload: cut when server.shutdownTimeoutMs ends, upstream request aborted, exit 0', async () => {
    const h = await Harness.start({ label: 'faults-sigterm-upload', env: { KVX_SERVER_SHUTDOWN_TIMEOUT_MS: '1000' } });
    cleanups.push(() => h.stop());
    // Larger than loopback carries in the 1 s deadline: at the wire engine's 1.4 GB/s a 1 GB upload could finish
    // before the deadline and leave nothing to cut.
    const total = 8 * 1024 * 1024 * 1024;
    const id = 'upload-8g';
    const upload = await RawConnection.open(h.proxy.port);
    upload.write(`PUT /api/2.0/mlflow-artifacts/artifacts/1/run/artifacts/model.bin HTTP/1.1\r\nHost: kvx\r\nContent-Length: ${total}\r\nX-Request-Id: ${id}\r\n\r\n`);
    // Until the connection is cut.
    void upload.writeRepeated(total, Buffer.alloc(1024 * 1024, 0x5a));
    await pollUntil(() => h.upstream.byId(id)[0]?.bytes ?? 0, (b) => b > 50 * 1024 * 1024, 20_000);

    h.proxy.signal('SIGTERM');
    await upload.closed;
    const exit = await h.proxy.exited;
    expect(exit).to.deep.equal({ code: 0, signal: null });
    const upstreamSide = await pollUntil(() => h.upstream.byId(id)[0]!, (r) => r.cancelled, 3000);
    expect(upstreamSide.complete, 'the upload cannot have completed').to.equal(false);
    expect(upstreamSide.cancelled, 'upstream request must be aborted, not left hanging').to.equal(true);
    expect(upstreamSide.bytes).to.be.below(total);
    expect(upload.text, 'no answer is invented for a cut upload').to.not.match(/^HTTP\/1\.1 2/);
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

  describe('SIGUSR1 never opens the Node inspector', () => {
    it('the npm bin (dist/cli/kvx-proxy.js started by plain node, as its #!/usr/bin/env node line does): it gives itself --disable-sigusr1', async () => {
      const h = await Harness.start({ label: 'faults-sigusr1-bin' });
      cleanups.push(() => h.stop());
      expect(readFileSync(`/proc/${h.proxy.child.pid}/cmdline`, 'utf8').split('\0'), 'the command line after the re-exec').to.include('--disable-sigusr1');
      await expectSigusr1Refused(h.proxy, h.url, false);
      h.proxy.signal('SIGUSR1');
      await new Promise((r) => setTimeout(r, 300));
      expect(h.proxy.alive).to.equal(true);
      await h.assertHealthy('after SIGUSR1');
    });

    it('kvx-proxy running without the flag (imported by another script, so it does not re-exec): its guard ignores SIGUSR1, with one notice', async () => {
      // What a Node without process.execve (Windows) or a program embedding kvx-proxy's main() relies on.
      const upstream = await ScriptedUpstream.start(makeSecret('guard-token'));
      cleanups.push(() => upstream.close());
      const script = `const { main } = await import(${JSON.stringify(pathToFileURL(PROXY_CLI).href)}); await main(process.argv.slice(1));`;
      const proxy = await spawnProxy({
        label: 'faults-sigusr1-guard',
        command: [process.execPath, '--input-type=module', '-e', script, '--'],
        args: ['--upstream', upstream.url, '--auth-provider', 'static', '--token-env', 'FAULTS_TOKEN', '--port', '0', '--admin-port', '0'],
        env: { FAULTS_TOKEN: upstream.token, ...FAST_ENV },
      });
      cleanups.push(() => proxy.stop());
      await expectSigusr1Refused(proxy, proxy.url);
      // A second one is ignored as quietly: one notice per process.
      proxy.signal('SIGUSR1');
      await new Promise((r) => setTimeout(r, 300));
      expect(proxy.alive).to.equal(true);
      expect(proxy.stderr.match(/SIGUSR1 ignored/g)).to.have.length(1);
    });

    it('npm run proxy (its node command and flags, from package.json)', async () => {
      const args = npmScriptNodeArgs('proxy');
      const upstream = await ScriptedUpstream.start(makeSecret('npm-script-token'));
      cleanups.push(() => upstream.close());
      const proxy = await spawnProxy({
        label: 'faults-sigusr1-npm-script',
        command: [process.execPath, ...args],
        args: ['--upstream', upstream.url, '--auth-provider', 'static', '--token-env', 'FAULTS_TOKEN', '--port', '0', '--admin-port', '0'],
        env: { FAULTS_TOKEN: upstream.token, ...FAST_ENV },
      });
      cleanups.push(() => proxy.stop());
      expect(args, 'the script starts node with --disable-sigusr1').to.include('--disable-sigusr1');
      await expectSigusr1Refused(proxy, proxy.url, false);
    });

    it('kvx-proxy exec: the wrapper holding the proxy refuses it, and the command runs on', async () => {
      const upstream = await ScriptedUpstream.start(makeSecret('exec-token'));
      cleanups.push(() => upstream.close());
      const proxy = await spawnProxy({
        label: 'faults-sigusr1-exec',
        args: ['exec', '--upstream', upstream.url, '--auth-provider', 'static', '--token-env', 'FAULTS_TOKEN', '--', process.execPath, '-e', 'setInterval(() => {}, 1000)'],
        env: { FAULTS_TOKEN: upstream.token, ...FAST_ENV },
        logStream: 'stderr',
      });
      cleanups.push(() => proxy.stop());
      await proxy.waitForLog((l) => l.msg === 'starting command');
      // Started as the npm bin, the wrapper runs with --disable-sigusr1 (see the first case).
      await expectSigusr1Refused(proxy, proxy.url, false);
    });

    it('a SIGUSR1 that opened the inspector before kvx could refuse it (during Node\'s start-up) makes kvx exit', async () => {
      // The window is real but a few ms wide; here the process opens its inspector itself the way SIGUSR1 does,
      // then loads the CLI. --inspect-port=0: on a free port, so nothing else on 9229 gets in the way.
      const script = [
        "import inspector from 'node:inspector';",
        "process.kill(process.pid, 'SIGUSR1');",
        'while (!inspector.url()) await new Promise((r) => setTimeout(r, 5));',
        "process.stderr.write('inspector open at ' + inspector.url() + '\\n');",
        `await import(${JSON.stringify(pathToFileURL(PROXY_CLI).href)});`,
        "process.stderr.write('still running after the import\\n');",
      ].join('\n');
      const child = spawn(process.execPath, ['--inspect-port=0', '--input-type=module', '-e', script, '--', '--version'], { stdio: ['ignore', 'pipe', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const exit = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
      expect(stderr, 'the inspector opened first').to.include('inspector open at ws://');
      expect(stderr).to.not.include('still running after the import');
      expect(stderr).to.include('the Node.js inspector was opened');
      expect(exit).to.deep.equal({ code: 1, signal: null });
    });
  });

  it('SIGHUP with a request in flight drains as SIGTERM does: the request finishes, new connections are refused, exit 0', async () => {
    const h = await Harness.start({ label: 'faults-sighup', env: { KVX_SERVER_SHUTDOWN_TIMEOUT_MS: '8000', KVX_UPSTREAM_HEADERS_TIMEOUT_MS: '20000' } });
    cleanups.push(() => h.stop());
    const release: (() => void)[] = [];
    h.upstream.behaviour = (req, res) => {
      if (!req.url!.startsWith('/slow')) return false;
      req.resume();
      release.push(() => res.end(JSON.stringify({ path: req.url })));
      return true;
    };
    const inFlight = request(h.url, '/slow/hup');
    await pollUntil(() => release.length, (n) => n === 1, 5000);
    h.proxy.signal('SIGHUP');
    const drain = await h.proxy.waitForLog((l) => l.msg === 'signal received; draining');
    expect(drain['signal']).to.equal('SIGHUP');
    await h.proxy.waitForLog((l) => l.msg === 'shutting down: no new connections; waiting for in-flight requests');
    expect(await connectOutcome(h.proxy.port), 'a new connection during the drain').to.equal('ECONNREFUSED');
    expect(h.proxy.alive, `exited with a request in flight: ${JSON.stringify(h.proxy.exit)}`).to.equal(true);
    release[0]!();
    const answer = await inFlight;
    expect(answer.status).to.equal(200);
    expect(JSON.parse(answer.text)).to.deep.equal({ path: '/slow/hup' });
    expect(await h.proxy.exited).to.deep.equal({ code: 0, signal: null });
    expect((await h.proxy.waitForLog((l) => l.msg === 'kvx-proxy stopped'))['cut']).to.equal(0);
  });

  it('kvx-proxy exec passes SIGHUP to the command and keeps proxying for it until it exits', async () => {
    const upstream = await ScriptedUpstream.start(makeSecret('exec-hup-token'));
    cleanups.push(() => upstream.close());
    // The command answers SIGHUP by calling MLflow through the proxy, then exits with a code of its own.
    const command = [
      "process.on('SIGHUP', async () => {",
      "  const r = await fetch(process.env.MLFLOW_TRACKING_URI + '/bytes/64');",
      "  process.stderr.write(`command got SIGHUP; proxy answered ${r.status}\\n`);",
      '  process.exit(r.status === 200 ? 7 : 8);',
      '});',
      'setInterval(() => {}, 1000);',
    ].join('\n');
    const proxy = await spawnProxy({
      label: 'faults-exec-sighup',
      args: ['exec', '--upstream', upstream.url, '--auth-provider', 'static', '--token-env', 'FAULTS_TOKEN', '--', process.execPath, '-e', command],
      env: { FAULTS_TOKEN: upstream.token, ...FAST_ENV },
      logStream: 'stderr',
      ready: (l) => l.msg === 'starting command',
    });
    cleanups.push(() => proxy.stop());
    await new Promise((r) => setTimeout(r, 300)); // the command's SIGHUP listener is in place
    proxy.signal('SIGHUP');
    expect(await proxy.exited).to.deep.equal({ code: 7, signal: null });
    expect(proxy.stderr).to.include('command got SIGHUP; proxy answered 200');
    expect(proxy.logs.find((l) => l.msg === 'forwarding signal to the command')).to.include({ signal: 'SIGHUP' });
  });

  it('a log reader that goes away (a closed pipe on stdout, as `kvx-proxy | tee` with tee gone) does not stop the proxy', async () => {
    const token = makeSecret('epipe-token');
    const upstream = await ScriptedUpstream.start(token);
    cleanups.push(() => upstream.close());
    const proxy = await spawnProxy({
      label: 'faults-epipe',
      args: ['--upstream', upstream.url, '--auth-provider', 'static', '--token-env', 'FAULTS_TOKEN', '--port', '0', '--admin-port', '0'],
      env: { FAULTS_TOKEN: token, ...FAST_ENV },
      stdout: 'fifo',
    });
    cleanups.push(() => proxy.stop());
    expect((await request(proxy.url, '/bytes/10')).status).to.equal(200);
    await proxy.waitForLog((l) => l.msg === 'request');

    proxy.closeStdout();
    // Each request logs a line; the batch written after the reader left meets EPIPE.
    for (let i = 0; i < 20; i++) {
      const answer = await request(proxy.url, `/bytes/${1000 + i}`);
      expect(answer.status, `request ${i} after the log reader left`).to.equal(200);
      expect(answer.body.length).to.equal(1000 + i);
      await new Promise((r) => setTimeout(r, 20));
    }
    await pollUntil(() => proxy.stderr, (s) => s.includes('"msg":"log output failed'), 3000);
    for (let i = 0; i < 20; i++) expect((await request(proxy.url, '/bytes/10')).status).to.equal(200);
    await new Promise((r) => setTimeout(r, 200));
    expect(proxy.alive, `the proxy exited: ${JSON.stringify(proxy.exit)}\n${proxy.stderr}`).to.equal(true);
    const notices = proxy.stderr.split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l) as LogLine);
    expect(notices, 'one line on stderr saying so, nothing else').to.have.length(1);
    expect(notices[0]).to.include({ level: 'warn', stream: 'stdout', code: 'EPIPE' });
    expect((await request(proxy.adminUrl, '/readyz')).status).to.equal(200);
    expect(await proxy.stop()).to.deep.equal({ code: 0, signal: null });
  });
});
