/**
 * Body pieces the parser delivers within one read leave the proxy in one write, with one chunk frame (issue 12,
 * item 15). MLflow's server streams an artifact as ~255-byte HTTP chunks; a proxy that writes each one on its
 * own makes a system call per 255 bytes. These cases count what reaches the far socket: chunk frames on the
 * wire, and the proxy's own write dispatches (`_writeGeneric`, where every write or writev of a net.Socket goes
 * to the kernel), and check the bytes arrive whole and in order, with backpressure and with the final 0-chunk.
 */
import http from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { expect } from 'chai';
import { HTTPParser, kOnBody } from '../../src/proxy/wire/llhttp.js';
import { startTestProxy } from '../helpers/proxy.js';
import { RawConnection, decodeChunked } from '../helpers/raw-http.js';
import type { TestProxy } from '../helpers/proxy.js';

const TOKEN = 'coalescing-secret-token-90ab';
const PIECE = 255;
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Deterministic bytes: piece `index` differs from its neighbours, so a dropped or reordered piece changes the body. */
function piece(index: number): Buffer {
  const out = Buffer.alloc(PIECE);
  for (let i = 0; i < PIECE; i++) out[i] = (index * 131 + i * 7 + (index >> 8)) & 0xff;
  return out;
}

function expectedBody(pieces: number, first = 0): Buffer {
  return Buffer.concat(Array.from({ length: pieces }, (_, i) => piece(first + i)));
}

/** `pieces` chunk frames of 255 bytes each, from piece `first` on. */
function chunkFrames(pieces: number, first = 0): Buffer {
  return Buffer.concat(Array.from({ length: pieces }, (_, i) => Buffer.concat([Buffer.from(`${PIECE.toString(16)}\r\n`), piece(first + i), Buffer.from('\r\n')])));
}

/** A whole chunked request body: the frames and the last chunk. */
const chunkedUpload = (pieces: number, first = 0): Buffer => Buffer.concat([chunkFrames(pieces, first), Buffer.from('0\r\n\r\n')]);

/**
 * Counts the write dispatches of the proxy's sockets: those whose local port is `localPort` (the proxy's
 * listener) or whose remote port is `remotePort` (the upstream), as the test chooses.
 */
class WriteCounter {
  count = 0;
  /** The most bytes the socket held in user space at a write: what the proxy buffered beyond the kernel. */
  maxBuffered = 0;
  private readonly original = net.Socket.prototype._writeGeneric;

  constructor(match: (socket: net.Socket) => boolean) {
    const original = this.original;
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const counter = this;
    net.Socket.prototype._writeGeneric = function (this: net.Socket, ...args: Parameters<typeof original>) {
      if (match(this)) {
        counter.count++;
        counter.maxBuffered = Math.max(counter.maxBuffered, this.writableLength);
      }
      return original.apply(this, args);
    };
  }

  restore(): void {
    net.Socket.prototype._writeGeneric = this.original;
  }
}

declare module 'node:net' {
  interface Socket {
    _writeGeneric(writev: boolean, data: unknown, encoding: string, cb: (err?: Error | null) => void): void;
  }
}

/**
 * Reads one 200 response with a chunked body and no trailers; `slow` pauses reading now and then (a client
 * slower than the proxy).
 */
async function chunkedResponse(client: RawConnection, slow = false): Promise<{ head: string; body: Buffer; frames: number }> {
  let resume: NodeJS.Timeout | undefined;
  const pauser = slow
    ? setInterval(() => {
        client.socket.pause();
        resume = setTimeout(() => client.socket.resume(), 40);
      }, 90)
    : undefined;
  try {
    const answer = await client.readResponse('GET', 30_000);
    expect(answer.head).to.match(/^HTTP\/1\.1 200 /);
    expect(answer.head.toLowerCase()).to.include('transfer-encoding: chunked');
    expect(answer.trailers, 'the last chunk ends the body').to.deep.equal([]);
    return { head: answer.head, body: answer.body, frames: answer.frames };
  } finally {
    clearInterval(pauser);
    clearTimeout(resume);
    client.socket.resume();
  }
}

describe('proxy: body pieces of one read leave in one write (MLflow-shaped streams)', function () {
  this.timeout(60_000);
  const env = { TEST_COALESCE_TOKEN: TOKEN };
  let upstream: http.Server;
  let upstreamPort: number;
  let proxy: TestProxy;
  let proxyPort: number;
  /** Pieces the upstream has written of the download under way. */
  let upstreamProgress = 0;
  /** Request bodies the upstream received, in order. */
  const uploads: Buffer[] = [];
  let counter: WriteCounter | undefined;

  before(async () => {
    // Like MLflow's server: one HTTP chunk per 255-byte piece (node's http frames each res.write), written in
    // bursts as fast as the proxy reads them.
    upstream = http.createServer((req, res) => {
      expect(req.headers.authorization).to.equal(`Bearer ${TOKEN}`);
      if (req.method === 'PUT') {
        const parts: Buffer[] = [];
        req.on('data', (chunk: Buffer) => parts.push(chunk));
        req.on('end', () => {
          uploads.push(Buffer.concat(parts));
          res.writeHead(200, { 'content-type': 'application/json' });
          res.write('{}');
          res.end();
        });
        return;
      }
      const pieces = Number(new URL(req.url!, 'http://x').searchParams.get('pieces'));
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      let next = 0;
      upstreamProgress = 0;
      const pump = (): void => {
        for (let burst = 0; next < pieces && burst < 400; burst++) {
          const more = res.write(piece(next++));
          upstreamProgress = next;
          if (!more) {
            res.once('drain', pump);
            return;
          }
        }
        if (next < pieces) setImmediate(pump);
        else res.end();
      };
      pump();
    });
    await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
    upstreamPort = (upstream.address() as AddressInfo).port;
    proxy = await startTestProxy(`http://127.0.0.1:${upstreamPort}`, { 'auth.provider': 'static', 'auth.params.token_env': 'TEST_COALESCE_TOKEN' }, env);
    proxyPort = Number(new URL(proxy.url).port);
  });

  afterEach(() => {
    counter?.restore();
    counter = undefined;
  });

  after(async () => {
    await proxy?.close();
    await new Promise<void>((resolve) => (upstream ? upstream.close(() => resolve()) : resolve()));
  });

  const askFor = (client: RawConnection, pieces: number) =>
    client.write(`GET /api/2.0/mlflow-artifacts/artifacts/1/run/artifacts/model.bin?pieces=${pieces} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`);
  const download = async (client: RawConnection, pieces: number) => {
    askFor(client, pieces);
    return chunkedResponse(client);
  };

  it('writes a download of 4,000 chunks of 255 bytes in about one write per read, not one per chunk', async () => {
    const pieces = 4000;
    const client = await RawConnection.open(proxyPort);
    const clientPort = client.socket.localPort;
    counter = new WriteCounter((s) => s.localPort === proxyPort && s.remotePort === clientPort);
    try {
      const { body, frames } = await download(client, pieces);
      expect(body.equals(expectedBody(pieces)), 'the body arrives whole and in order').to.equal(true);
      // About 1 MB crosses in 64 KiB reads: some 20 of them, however the kernel splits the stream.
      expect(frames, 'chunk frames sent to the client').to.be.at.most(pieces / 20);
      expect(counter.count, 'writes to the client socket').to.be.at.most(pieces / 20);
      expect(counter.count).to.be.at.least(1);

      // The upstream's last chunk ended the answer and nothing else: the connection carries the next request.
      const again = await download(client, 3);
      expect(again.body.equals(expectedBody(3))).to.equal(true);
    } finally {
      client.destroy();
    }
  });

  it('decodes a chunked download per read, not per chunk: llhttp\'s body callback never sees its 4,000 chunks', async () => {
    // Every llhttp parser created from here on counts the calls of its body callback (one per chunk, each
    // with a fresh native Buffer: most of the proxy's CPU on this shape while llhttp decoded the body).
    const slot = kOnBody;
    let bodyCalls = 0;
    const proto = HTTPParser.prototype as unknown as Record<number, unknown>;
    Object.defineProperty(proto, slot, {
      configurable: true,
      set(this: Record<number, unknown>, fn: unknown) {
        const counted =
          typeof fn === 'function'
            ? function (this: unknown, ...args: unknown[]) {
                bodyCalls++;
                return (fn as (...a: unknown[]) => unknown).apply(this, args);
              }
            : fn;
        Object.defineProperty(this, slot, { value: counted, writable: true, configurable: true, enumerable: true });
      },
    });
    let own: TestProxy | undefined;
    let client: RawConnection | undefined;
    try {
      own = await startTestProxy(`http://127.0.0.1:${upstreamPort}`, { 'auth.provider': 'static', 'auth.params.token_env': 'TEST_COALESCE_TOKEN' }, env);
      client = await RawConnection.open(Number(new URL(own.url).port));
      const pieces = 4000;
      const { body } = await download(client, pieces);
      expect(body.equals(expectedBody(pieces)), 'the body arrives whole and in order').to.equal(true);
      expect(bodyCalls, 'llhttp body callbacks during the download').to.be.at.most(pieces / 20);
      // The connection goes back to llhttp for the next answer, which is decoded the same way.
      const again = await download(client, 3);
      expect(again.body.equals(expectedBody(3))).to.equal(true);
    } finally {
      delete proto[slot];
      client?.destroy();
      await own?.close();
    }
  });

  it('writes a small answer\'s head and body to the client in one write', async () => {
    // The upstream's head and 1 KB body arrive in one read; llhttp reports them in separate callbacks.
    const body = Buffer.alloc(1024, 'r');
    const small = http.createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length });
      res.end(body);
    });
    await new Promise<void>((resolve) => small.listen(0, '127.0.0.1', resolve));
    let own: TestProxy | undefined;
    let client: RawConnection | undefined;
    try {
      own = await startTestProxy(`http://127.0.0.1:${(small.address() as AddressInfo).port}`, { 'auth.provider': 'static', 'auth.params.token_env': 'TEST_COALESCE_TOKEN' }, env);
      const port = Number(new URL(own.url).port);
      client = await RawConnection.open(port);
      const clientPort = client.socket.localPort;
      for (let i = 0; i < 5; i++) {
        counter?.restore();
        counter = new WriteCounter((socket) => socket.localPort === port && socket.remotePort === clientPort);
        client.write('GET /api/2.0/mlflow/runs/get?run_id=1 HTTP/1.1\r\nHost: kvx\r\n\r\n');
        const answer = await client.readResponse('GET', 10_000);
        expect(answer.head).to.match(/^HTTP\/1\.1 200 /);
        expect(answer.body.equals(body)).to.equal(true);
        expect(counter.count, `writes to the client for answer ${i + 1}`).to.equal(1);
      }
    } finally {
      client?.destroy();
      await own?.close();
      await new Promise<void>((resolve) => small.close(() => resolve()));
    }
  });

  it('keeps backpressure and order when the client reads slowly', async () => {
    const pieces = 100_000; // 25 MB: more than the sockets' kernel buffers hold (about 9 MB here)
    const client = await RawConnection.open(proxyPort);
    const clientPort = client.socket.localPort;
    counter = new WriteCounter((s) => s.localPort === proxyPort && s.remotePort === clientPort);
    try {
      // Not reading at all for a second: the proxy must stop reading the upstream rather than buffer the rest.
      client.socket.pause();
      askFor(client, pieces);
      await sleep(1000);
      const sentWhileClientStalled = upstreamProgress;
      client.socket.resume();
      const { body, frames } = await chunkedResponse(client, true);
      expect(sentWhileClientStalled, 'pieces the upstream could send while the client read nothing').to.be.below(pieces);
      expect(counter.maxBuffered, 'bytes the proxy held for the client').to.be.below(1 << 20);
      expect(body.length).to.equal(pieces * PIECE);
      expect(body.equals(expectedBody(pieces)), 'the body arrives whole and in order').to.equal(true);
      expect(frames).to.be.at.most(pieces / 20);
      expect(counter.count).to.be.at.most(pieces / 20);
    } finally {
      client.destroy();
    }
  });

  it('forwards a chunked upload of 3,000 tiny chunks in about one write per read', async () => {
    const pieces = 3000;
    // A raw upstream that records the request's body frames as they arrived and answers once it is whole.
    let received: { body: Buffer; frames: number } | undefined;
    const raw = net.createServer((socket) => {
      let data = Buffer.alloc(0);
      socket.on('data', (chunk: Buffer) => {
        data = Buffer.concat([data, chunk]);
        const headEnd = data.indexOf('\r\n\r\n');
        if (headEnd === -1 || received) return;
        expect(data.subarray(0, headEnd).toString('latin1').toLowerCase()).to.include('transfer-encoding: chunked');
        const decoded = decodeChunked(data, headEnd + 4);
        if (!decoded) return;
        received = decoded;
        socket.end('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}');
      });
    });
    await new Promise<void>((resolve) => raw.listen(0, '127.0.0.1', resolve));
    const rawPort = (raw.address() as AddressInfo).port;
    const uploadProxy = await startTestProxy(`http://127.0.0.1:${rawPort}`, { 'auth.provider': 'static', 'auth.params.token_env': 'TEST_COALESCE_TOKEN' }, env);
    counter = new WriteCounter((s) => s.remotePort === rawPort);
    const client = await RawConnection.open(uploadProxy.address.port);
    try {
      client.write(`PUT /api/2.0/mlflow-artifacts/artifacts/1/run/artifacts/up.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n`);
      // In a few large writes, as a client's socket sends a stream of small chunks when it is not held back.
      for (let i = 0; i < pieces; i += 1000) client.write(chunkFrames(Math.min(1000, pieces - i), i));
      client.write('0\r\n\r\n');
      const deadline = Date.now() + 20_000;
      while (received === undefined && Date.now() < deadline) await sleep(20);
      expect(received, 'the upstream got the whole body').to.not.equal(undefined);
      expect(received!.body.equals(expectedBody(pieces)), 'the body arrives whole and in order').to.equal(true);
      expect(received!.frames, 'chunk frames sent upstream').to.be.at.most(pieces / 20);
      expect(counter.count, 'writes to the upstream socket').to.be.at.most(pieces / 20);
    } finally {
      client.destroy();
      await uploadProxy.close();
      await new Promise<void>((resolve) => raw.close(() => resolve()));
    }
  });

  it('keeps the bodies of pipelined chunked uploads apart: each request gets its own pieces, none of the next', async () => {
    uploads.length = 0;
    const client = await RawConnection.open(proxyPort);
    try {
      const put = (name: string, first: number) =>
        Buffer.concat([Buffer.from(`PUT /api/2.0/mlflow-artifacts/artifacts/1/run/artifacts/${name} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n`), chunkedUpload(500, first)]);
      // Both requests in one write: the second's head and pieces arrive in the read that ends the first.
      client.write(Buffer.concat([put('a.bin', 0), put('b.bin', 500)]));
      await chunkedResponse(client);
      await chunkedResponse(client);
      expect(uploads).to.have.length(2);
      expect(uploads[0]!.equals(expectedBody(500, 0)), 'the first body, and only it').to.equal(true);
      expect(uploads[1]!.equals(expectedBody(500, 500)), 'the second body, and only it').to.equal(true);
    } finally {
      client.destroy();
    }
  });
});
