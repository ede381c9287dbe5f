/**
 * A finished request must be garbage at the next young-generation collection (a scavenge), not something the
 * scavenger copies and promotes into the old generation, where only a full collection frees it. A request
 * that outlives scavenges costs twice: every scavenge copies it, and the old generation fills with dead
 * requests until a mark-compact runs. The leak tests cannot see it (they count what a full collection
 * leaves), so this measures it as V8 reports it: kvx-proxy, from the build, runs in a child process with
 * --trace-gc-nvp, which prints what each scavenge promoted.
 *
 * The client and upstream are raw sockets that keep the proxy busy: with its event loop idle between
 * requests, the defect this guards against did not show (a Set that every exchange entered and left, and
 * one that every client connection did, kept the finished ones alive through scavenges).
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { expect } from 'chai';

const BIN = fileURLToPath(new URL('../../dist/cli/kvx-proxy.js', import.meta.url));

const TOKEN = 'young-gc-secret-token-5d1e';
const BODY = '{"run":{"info":{"run_id":"0123456789abcdef","status":"RUNNING"},"data":{"metrics":[],"params":[],"tags":[]}}}';
const ANSWER = `HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${BODY.length}\r\n\r\n${BODY}`;

/**
 * Answers every request it reads with ANSWER a millisecond later, keeping the connection open (requests carry
 * no body). The delay keeps many requests under way in the proxy at once, as a real server's latency does.
 */
function startRawUpstream(): Promise<net.Server> {
  const server = net.createServer((socket) => {
    let pending = '';
    socket.setNoDelay(true);
    socket.on('data', (data: Buffer) => {
      pending += data.toString('latin1');
      let end: number;
      let answers = '';
      while ((end = pending.indexOf('\r\n\r\n')) !== -1) {
        pending = pending.slice(end + 4);
        answers += ANSWER;
      }
      if (answers) setTimeout(() => socket.writable && socket.write(answers, 'latin1'), 1);
    });
    socket.on('error', () => {});
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

/** Sends `total` GETs over `connections` keep-alive sockets, one at a time on each. */
async function drive(port: number, connections: number, total: number): Promise<void> {
  const request = 'GET /api/2.0/mlflow/runs/get?run_id=0123456789abcdef HTTP/1.1\r\nHost: kvx\r\n\r\n';
  let sent = 0;
  const lane = (): Promise<void> =>
    new Promise((resolve, reject) => {
      const socket = net.connect(port, '127.0.0.1');
      socket.setNoDelay(true);
      let pending = '';
      const next = (): void => {
        if (sent >= total) {
          socket.end();
          return resolve();
        }
        sent++;
        socket.write(request, 'latin1');
      };
      socket.on('connect', next);
      socket.on('data', (data: Buffer) => {
        pending += data.toString('latin1');
        // Each answer is read by its own head: nothing assumes they are all the same length.
        for (;;) {
          const headEnd = pending.indexOf('\r\n\r\n');
          if (headEnd === -1) return;
          const head = pending.slice(0, headEnd);
          const length = /\r\ncontent-length: *(\d+)/i.exec(head);
          if (!head.startsWith('HTTP/1.1 200 ') || length === null) return reject(new Error(`unexpected answer: ${head}`));
          const end = headEnd + 4 + Number(length[1]);
          if (pending.length < end) return;
          pending = pending.slice(end);
          next();
        }
      });
      socket.on('error', reject);
    });
  await Promise.all(Array.from({ length: connections }, lane));
}

/** The proxy as a child process whose stdout carries V8's line per collection (and the proxy's start-up line). */
class TracedProxy {
  private out = '';
  readonly child: ChildProcess;

  constructor(upstreamUrl: string) {
    this.child = spawn(
      process.execPath,
      ['--trace-gc-nvp', BIN, '--upstream', upstreamUrl, '--auth-provider', 'static', '--token-env', 'YOUNG_GC_TOKEN', '--allowed-hosts', 'kvx', '--engine', 'wire', '--port', '0', '--admin-port', '0'],
      { env: { ...process.env, YOUNG_GC_TOKEN: TOKEN, KVX_LOG_REQUESTS: 'false' }, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    this.child.stdout!.on('data', (d: Buffer) => (this.out += d.toString('latin1')));
    this.child.stderr!.on('data', (d: Buffer) => (this.out += d.toString('latin1')));
  }

  async port(): Promise<number> {
    for (let i = 0; i < 200; i++) {
      const m = /"msg":"kvx-proxy listening","url":"http:\/\/127\.0\.0\.1:(\d+)"/.exec(this.out);
      if (m) return Number(m[1]);
      if (this.child.exitCode !== null) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`kvx-proxy did not start:\n${this.out}`);
  }

  /** Scavenges so far, and the bytes they promoted. */
  scavenges(): { count: number; promoted: number } {
    let count = 0;
    let promoted = 0;
    for (const line of this.out.split('\n')) {
      if (!line.includes(' gc=s ')) continue;
      count++;
      promoted += Number(/ promoted=(\d+)/.exec(line)?.[1] ?? 0);
    }
    return { count, promoted };
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = new Promise((r) => this.child.once('exit', r));
    this.child.kill('SIGTERM');
    await exited;
  }
}

describe('finished requests do not outlive young collections (wire engine)', function () {
  this.timeout(60_000);
  let upstream: net.Server;
  let proxy: TracedProxy;
  let port: number;

  before(async () => {
    upstream = await startRawUpstream();
    proxy = new TracedProxy(`http://127.0.0.1:${(upstream.address() as AddressInfo).port}`);
    port = await proxy.port();
  });

  after(async () => {
    await proxy?.stop();
    await new Promise<void>((resolve) => (upstream ? upstream.close(() => resolve()) : resolve()));
  });

  it('64 keep-alive connections: scavenges promote almost nothing', async () => {
    const total = 40_000;
    await drive(port, 64, 2_000); // warm-up: code, pools, parsers
    const before = proxy.scavenges();
    await drive(port, 64, total);
    await new Promise((r) => setTimeout(r, 100));
    const after = proxy.scavenges();
    const scavenges = after.count - before.count;
    const promoted = after.promoted - before.promoted;
    expect(scavenges, 'the load must be enough for scavenges to run').to.be.at.least(3);
    // Before the fix: about 630 bytes per request, the finished requests' objects promoted whole.
    expect(promoted / total, `${promoted} bytes promoted by ${scavenges} scavenges over ${total} requests`).to.be.below(50);
  });
});
