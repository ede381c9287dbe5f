/**
 * Idle keep-alive connections, run as its own process: opens `count` connections to the candidate, sends one
 * GET runs/get on each and reads its answer whole (a connection that has served a request, as a client's pool
 * holds it), then holds them all open and silent. Prints {"open": N} once every one is idle; on SIGTERM prints
 * {"stillOpen": K} (how many the candidate kept) and exits, closing them.
 * argv[2] is a JSON IdleSpec. Raw sockets, so the client itself stays small.
 */
import net from 'node:net';
import { RUN_ID } from './shapes.js';

export interface IdleSpec {
  /** Base URL of the candidate (http://127.0.0.1:PORT). */
  url: string;
  headers: Record<string, string>;
  count: number;
}

/** Connections opened at once: a burst of thousands of SYNs would overflow the listen backlog, which is not the shape measured. */
const OPENING_AT_ONCE = 100;

function openOne(port: number, request: Buffer, open: Set<net.Socket>): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let received = Buffer.alloc(0);
    let expected = -1;
    const onData = (data: Buffer): void => {
      received = Buffer.concat([received, data]);
      if (expected === -1) {
        const end = received.indexOf('\r\n\r\n');
        if (end === -1) return;
        const head = received.subarray(0, end).toString('latin1');
        if (!/^HTTP\/1\.1 200 /.test(head)) return fail(new Error(`answered ${head.split('\r\n')[0]}`));
        if (/\r\nconnection: *close/i.test(head)) return fail(new Error('the candidate closes the connection after the answer'));
        const length = /\r\ncontent-length: *(\d+)/i.exec(head);
        if (!length) return fail(new Error('answer without Content-Length'));
        expected = end + 4 + Number(length[1]);
      }
      if (received.length >= expected) {
        socket.off('data', onData);
        // Held from here on: anything more it sends is read and dropped.
        socket.on('data', () => {});
        resolve();
      }
    };
    const fail = (err: Error): void => {
      socket.destroy();
      reject(err);
    };
    socket.on('data', onData);
    socket.once('error', fail);
    socket.once('connect', () => {
      open.add(socket);
      socket.once('close', () => open.delete(socket));
      socket.write(request);
    });
  });
}

async function main(): Promise<void> {
  const spec = JSON.parse(process.argv[2]!) as IdleSpec;
  const url = new URL(spec.url);
  const port = Number(url.port);
  const headerLines = Object.entries(spec.headers).map(([k, v]) => `${k}: ${v}\r\n`).join('');
  const request = Buffer.from(`GET /api/2.0/mlflow/runs/get?run_id=${RUN_ID} HTTP/1.1\r\nhost: ${url.host}\r\n${headerLines}\r\n`, 'latin1');
  const open = new Set<net.Socket>();
  process.on('SIGTERM', () => {
    process.stdout.write(JSON.stringify({ stillOpen: open.size }) + '\n', () => {
      for (const socket of open) socket.destroy();
      process.exit(0);
    });
  });
  for (let started = 0; started < spec.count; started += OPENING_AT_ONCE) {
    const batch = Math.min(OPENING_AT_ONCE, spec.count - started);
    await Promise.all(Array.from({ length: batch }, () => openOne(port, request, open)));
  }
  process.stdout.write(JSON.stringify({ open: open.size }) + '\n');
  // Held until SIGTERM, and never longer than this if the bench is gone.
  setTimeout(() => process.exit(0), 300_000);
}

main().catch((err: unknown) => {
  process.stderr.write(`idle connections failed: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
