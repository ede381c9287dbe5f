import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { expect } from 'chai';

const ROOT = join(import.meta.dirname, '..', '..');
const BIN = join(ROOT, 'dist', 'cli', 'kvx-proxy.js');

/** Prints, as kvx-proxy exits, the built-in modules it loaded. Passed with --import, so it runs in kvx's own process. */
const REPORT_MODULES = `data:text/javascript,${encodeURIComponent(
  "process.on('exit', () => process.stderr.write('MODULES ' + JSON.stringify(process.moduleLoadList.filter((m) => m.startsWith('NativeModule ')).map((m) => m.slice(13))) + '\\n'));",
)}`;

interface Run {
  modules: string[];
  answers: number[];
}

/** Starts the built kvx-proxy before `upstream`, sends `requests` GETs through it, stops it and reports what it loaded. */
async function runProxy(upstream: string, requests: number, extraArgs: string[] = []): Promise<Run> {
  const child: ChildProcess = spawn(
    process.execPath,
    ['--max-semi-space-size=8', '--disable-sigusr1', '--import', REPORT_MODULES, BIN, '--upstream', upstream, '--auth-provider', 'static', '--token-env', 'FOOTPRINT_TOKEN', '--port', '0', '--admin-port', '0', ...extraArgs],
    { env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', FOOTPRINT_TOKEN: 'footprint-test-token' }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  try {
    const url = await new Promise<string>((resolve, reject) => {
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        const listening = /"msg":"kvx-proxy listening","url":"([^"]+)"/.exec(out);
        if (listening) resolve(listening[1]!);
      });
      child.once('exit', (code) => reject(new Error(`kvx-proxy exited (${code}) before listening:\n${out}\n${err}`)));
    });
    const answers: number[] = [];
    for (let i = 0; i < requests; i++) answers.push((await fetch(`${url}/api/2.0/mlflow/experiments/get?experiment_id=${i}`)).status);
    child.kill('SIGTERM');
    await exited;
    const report = /^MODULES (.*)$/m.exec(err);
    if (!report) throw new Error(`kvx-proxy did not report its modules:\n${err}`);
    return { modules: JSON.parse(report[1]!) as string[], answers };
  } finally {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exited;
    }
  }
}

describe('kvx-proxy: what a plain set-up keeps resident', function () {
  this.timeout(20_000);
  let upstream: http.Server;
  let upstreamUrl: string;
  let sawToken = false;

  before(async () => {
    upstream = http.createServer((req, res) => {
      sawToken ||= req.headers.authorization === 'Bearer footprint-test-token';
      res.setHeader('content-type', 'application/json');
      res.end('{"experiment":{}}');
    });
    await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
    upstreamUrl = `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`;
  });
  after(() => new Promise<void>((resolve) => upstream.close(() => resolve())));

  // Loaded, the two hold 3.6 MB of an idle proxy's RSS on Node 24 (OpenSSL's state and code). A static credential
  // in front of plain http has no use for them.
  it('a static credential before a plain-http upstream forwards without loading crypto or tls', async () => {
    const run = await runProxy(upstreamUrl, 3);
    expect(run.answers).to.deep.equal([200, 200, 200]);
    expect(sawToken).to.equal(true);
    expect(run.modules).to.include('http');
    expect(run.modules.filter((m) => m === 'crypto' || m === 'tls' || m.startsWith('internal/tls/') || m.startsWith('internal/crypto/'))).to.deep.equal([]);
  });

  it('an https upstream loads tls when it first dials', async () => {
    // Refused at once: the dial is what matters here, and it happens for the first request.
    const run = await runProxy('https://127.0.0.1:9', 1);
    expect(run.answers).to.deep.equal([502]);
    expect(run.modules).to.include('tls');
  });
});
