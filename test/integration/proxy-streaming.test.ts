import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { Readable } from 'node:stream';
import { expect } from 'chai';
import { bearerGate, startFakeMlflow } from '../fakes/mlflow/index.js';
import type { FakeMlflow } from '../fakes/mlflow/index.js';
import { spawnProxy } from '../faults/support/proxy-process.js';
import type { ProxyProcess } from '../faults/support/proxy-process.js';
import { startScriptedUpstream } from '../helpers/http.js';
import { startTestProxy } from '../helpers/proxy.js';

const TOKEN = 'stream-secret-token-77c1';
const MB = 1024 * 1024;

/** A deterministic pseudo-random body generated chunk by chunk, so the test never holds it whole either. */
function generatedBody(totalBytes: number, hash: ReturnType<typeof createHash>): Readable {
  let sent = 0;
  const block = randomBytes(MB);
  return new Readable({
    read() {
      if (sent >= totalBytes) return void this.push(null);
      const n = Math.min(block.length, totalBytes - sent);
      const chunk = block.subarray(0, n);
      block[sent % block.length]! ^= 0xff; // vary blocks so a repeated or dropped chunk changes the hash
      hash.update(chunk);
      sent += n;
      this.push(Buffer.from(chunk));
    },
  });
}

function peakRssMb(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = Number(/VmHWM:\s+(\d+)/.exec(status)?.[1]);
  return kb / 1024;
}

function currentRssMb(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1]) / 1024;
}

describe('proxy: streaming large artifacts (real proxy process)', function () {
  this.timeout(120_000);
  let mlflow: FakeMlflow;
  let proxy: ProxyProcess;

  before(async () => {
    mlflow = await startFakeMlflow({ gate: bearerGate(TOKEN) });
    proxy = await spawnProxy({
      args: ['--upstream', mlflow.url, '--auth-provider', 'static', '--token-env', 'MLFLOW_TOKEN_FOR_TEST', '--port', '0', '--admin-port', '0'],
      env: { MLFLOW_TOKEN_FOR_TEST: TOKEN },
      label: 'streaming',
    });
  });

  after(async () => {
    await proxy?.stop?.();
    await mlflow?.close();
  });

  it('moves a 200 MB artifact up and down byte-exact with bounded proxy memory', async () => {
    const pid = proxy.child.pid!;
    const baseline = currentRssMb(pid);
    const size = 200 * MB;
    const path = '/api/2.0/mlflow-artifacts/artifacts/0/run/artifacts/big.bin';

    const upHash = createHash('sha256');
    const putStatus = await new Promise<number>((resolve, reject) => {
      const req = http.request(`${proxy.url}${path}`, { method: 'PUT', agent: false, headers: { 'content-length': size, 'content-type': 'application/octet-stream' } }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      });
      req.on('error', reject);
      generatedBody(size, upHash).pipe(req);
    });
    expect(putStatus).to.equal(200);

    const downHash = createHash('sha256');
    let downBytes = 0;
    const getStatus = await new Promise<number>((resolve, reject) => {
      http
        .get(`${proxy.url}${path}`, { agent: false }, (res) => {
          res.on('data', (c: Buffer) => {
            downBytes += c.length;
            downHash.update(c);
          });
          res.on('end', () => resolve(res.statusCode ?? 0));
        })
        .on('error', reject);
    });
    expect(getStatus).to.equal(200);
    expect(downBytes).to.equal(size);
    expect(downHash.digest('hex')).to.equal(upHash.digest('hex'));

    // A proxy that buffered either body would grow by at least its size; a streaming one grows by what
    // V8 lets garbage buffers pile up before collecting them (external-memory GC pressure, 60-90 MB).
    const growth = peakRssMb(pid) - baseline;
    expect(growth, `proxy peak RSS grew by ${growth.toFixed(1)} MB for a ${size / MB} MB body`).to.be.lessThan(0.75 * (size / MB));
  });
});

describe('proxy: client disconnects', () => {
  it('cancels the upstream request when the client aborts mid-upload', async () => {
    let upstreamSawAbort: () => void = () => {};
    const aborted = new Promise<void>((resolve) => (upstreamSawAbort = resolve));
    let received = 0;
    const upstream = await startScriptedUpstream((req) => {
      req.on('data', (c: Buffer) => (received += c.length));
      req.on('close', () => {
        if (!req.complete) upstreamSawAbort();
      });
    });
    const proxy = await startTestProxy(upstream.url, { 'auth.provider': 'none' });
    try {
      const req = http.request(`${proxy.url}/api/2.0/mlflow-artifacts/artifacts/x`, { method: 'PUT', agent: false, headers: { 'content-length': 50 * MB } });
      req.on('error', () => {});
      req.write(Buffer.alloc(MB));
      await new Promise((r) => setTimeout(r, 100));
      req.destroy();
      await aborted;
      expect(received).to.be.greaterThan(0).and.lessThan(50 * MB);
      await waitFor(() => proxy.metrics.inFlight.get().then((m) => m.values[0]?.value === 0));
    } finally {
      await proxy.close(500);
      await upstream.close();
    }
  });

  it('cancels the upstream response when the client aborts mid-download', async () => {
    let upstreamClosed: () => void = () => {};
    const closed = new Promise<void>((resolve) => (upstreamClosed = resolve));
    const upstream = await startScriptedUpstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      const chunk = Buffer.alloc(64 * 1024);
      const timer = setInterval(() => res.write(chunk), 5);
      res.on('close', () => {
        clearInterval(timer);
        upstreamClosed();
      });
    });
    const proxy = await startTestProxy(upstream.url, { 'auth.provider': 'none' });
    try {
      await new Promise<void>((resolve, reject) => {
        const req = http.get(`${proxy.url}/artifact`, { agent: false }, (res) => {
          res.once('data', () => {
            req.destroy();
            resolve();
          });
        });
        req.on('error', (e) => (req.destroyed ? undefined : reject(e)));
      });
      await closed;
      const logged = proxy.logs.records().find((r) => r['msg'] === 'request' && r['path'] === '/artifact');
      await waitFor(() => proxy.logs.records().some((r) => r['msg'] === 'request' && r['path'] === '/artifact'));
      expect(logged === undefined || logged['status'] === 200 || logged['status'] === 499).to.equal(true);
    } finally {
      await proxy.close(500);
      await upstream.close();
    }
  });
});

async function waitFor(check: () => boolean | Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > until) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}
