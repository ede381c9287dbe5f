/**
 * HTTP/1.1 wire conformance of the proxy, engine-agnostic: clients are the tests' raw HTTP/1.1 client
 * (test/helpers/raw-http.ts) or node:http where that is the natural client; the upstream is a `net` listener
 * that hands each connection either to a node:http server or to a raw script. Every case asserts exact bytes,
 * headers and statuses, so the same file checks any engine behind `startProxy`.
 */
import http from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { expect } from 'chai';
import { startTestProxy } from '../helpers/proxy.js';
import { RawConnection } from '../helpers/raw-http.js';
import type { TestProxy } from '../helpers/proxy.js';

const TOKEN = 'wire-secret-token-5e21';
const env = { TEST_WIRE_TOKEN: TOKEN };
/** Guard for waits on the wire, so a missing answer fails with what arrived instead of a mocha timeout. */
const WAIT_MS = 2000;

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Deterministic binary bytes; `salt` makes distinct bodies. */
function pattern(length: number, salt = 0): Buffer {
  const out = Buffer.alloc(length);
  for (let i = 0; i < length; i++) out[i] = (i * 31 + salt * 7 + (i >> 8)) & 0xff;
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// node:http client (one connection per request) returning the body as bytes.
// ---------------------------------------------------------------------------------------------------------

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  rawHeaders: string[];
  body: Buffer;
}

function httpGet(url: string, headers: http.OutgoingHttpHeaders = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, rawHeaders: res.rawHeaders, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

// ---------------------------------------------------------------------------------------------------------
// Upstream: a `net` listener counting connections; each connection goes to node:http, or to `raw` when set.
// ---------------------------------------------------------------------------------------------------------

interface Seen {
  method: string;
  url: string;
  rawHeaders: string[];
  body: Buffer;
  /** Which upstream connection (1-based, in accept order) carried the request. */
  connection: number;
}

type Handler = (req: http.IncomingMessage, res: http.ServerResponse, body: Buffer) => void;
/** Writes a raw answer to the request whose head (request line and headers) just arrived. */
type RawHandler = (socket: net.Socket, head: string) => void;

const echo: Handler = (req, res) => {
  const body = JSON.stringify({ method: req.method, url: req.url });
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
};

function header(rawHeaders: readonly string[], name: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < rawHeaders.length; i += 2) if (rawHeaders[i]!.toLowerCase() === name) out.push(rawHeaders[i + 1]!);
  return out;
}

class Upstream {
  readonly requests: Seen[] = [];
  connections = 0;
  handler: Handler = echo;
  raw: RawHandler | undefined;
  url = '';
  private readonly sockets = new Set<net.Socket>();
  private readonly ids = new WeakMap<net.Socket, number>();
  private readonly httpServer: http.Server;
  private readonly listener: net.Server;

  private constructor() {
    this.httpServer = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const body = Buffer.concat(chunks);
        this.requests.push({ method: req.method!, url: req.url!, rawHeaders: req.rawHeaders, body, connection: this.ids.get(req.socket) ?? 0 });
        if (req.headers.authorization !== `Bearer ${TOKEN}`) {
          res.writeHead(401, { 'content-length': 0 });
          res.end();
          return;
        }
        this.handler(req, res, body);
      });
    });
    this.listener = net.createServer((socket) => {
      this.ids.set(socket, ++this.connections);
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
      socket.on('error', () => {});
      if (this.raw) this.scripted(socket, this.raw);
      else this.httpServer.emit('connection', socket);
    });
  }

  /** Parses bodyless requests off the connection and lets the script answer each one. */
  private scripted(socket: net.Socket, script: RawHandler): void {
    let buf = '';
    socket.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      let end: number;
      while ((end = buf.indexOf('\r\n\r\n')) !== -1) {
        const head = buf.slice(0, end);
        buf = buf.slice(end + 4);
        const [requestLine = '', ...lines] = head.split('\r\n');
        const [method = '', url = ''] = requestLine.split(' ');
        const rawHeaders = lines.flatMap((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 1).trim()]);
        this.requests.push({ method, url, rawHeaders, body: Buffer.alloc(0), connection: this.ids.get(socket) ?? 0 });
        script(socket, head);
      }
    });
  }

  static async start(): Promise<Upstream> {
    const upstream = new Upstream();
    await new Promise<void>((resolve) => upstream.listener.listen(0, '127.0.0.1', resolve));
    upstream.url = `http://127.0.0.1:${(upstream.listener.address() as AddressInfo).port}`;
    return upstream;
  }

  close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    return new Promise<void>((resolve) => this.listener.close(() => resolve()));
  }
}

describe('proxy: HTTP/1.1 wire conformance', function () {
  this.timeout(10_000);
  let upstream: Upstream;
  let proxy: TestProxy;
  const clients: RawConnection[] = [];

  const connect = async (): Promise<RawConnection> => {
    const c = await RawConnection.open(proxy.address.port, { timeoutMs: WAIT_MS });
    clients.push(c);
    return c;
  };

  /**
   * Sends one ordinary request on a fresh connection and waits for its answer, then checks that it is the only
   * thing upstream ever received: anything forwarded earlier would have arrived before it.
   */
  const onlyBarrierReachedUpstream = async () => {
    const answer = await httpGet(`${proxy.url}/barrier`);
    expect(answer.status).to.equal(200);
    expect(upstream.requests.map((r) => `${r.method} ${r.url}`)).to.deep.equal(['GET /barrier']);
  };

  beforeEach(async () => {
    upstream = await Upstream.start();
    proxy = await startTestProxy(upstream.url, { 'auth.provider': 'static', 'auth.params.token_env': 'TEST_WIRE_TOKEN' }, env);
  });

  afterEach(async () => {
    for (const c of clients.splice(0)) c.destroy();
    await proxy?.close(500);
    await upstream?.close();
  });

  it('HEAD: status and the upstream Content-Length arrive with no body bytes, and the next request on the connection is answered', async () => {
    upstream.handler = (req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 11 });
      res.end(req.method === 'HEAD' ? undefined : 'hello world');
    };
    const c = await connect();
    c.write('HEAD /head HTTP/1.1\r\nHost: kvx\r\n\r\n');
    const head = await c.readResponse('HEAD');
    expect(head.status).to.equal(200);
    expect(head.header('content-length')).to.deep.equal(['11']);
    expect(head.header('transfer-encoding')).to.deep.equal([]);
    // Any body byte after the HEAD answer would sit in front of the next status line and fail its parse.
    c.write('GET /head HTTP/1.1\r\nHost: kvx\r\n\r\n');
    const get = await c.readResponse();
    expect(get.status).to.equal(200);
    expect(get.body.toString('latin1')).to.equal('hello world');
    expect(c.pending).to.equal('');
    expect(upstream.requests.map((r) => r.method)).to.deep.equal(['HEAD', 'GET']);
  });

  it('204 and 304 from upstream arrive with no body and no body framing, and the connection serves the next request', async () => {
    upstream.handler = (req, res) => {
      if (req.url === '/no-content') {
        res.writeHead(204, { 'x-kind': 'no-content' });
        res.end();
      } else if (req.url === '/not-modified') {
        res.writeHead(304, { etag: '"v1"', 'cache-control': 'max-age=60' });
        res.end();
      } else echo(req, res, Buffer.alloc(0));
    };
    const c = await connect();
    c.write('DELETE /no-content HTTP/1.1\r\nHost: kvx\r\n\r\n');
    const noContent = await c.readResponse();
    expect(noContent.status).to.equal(204);
    expect(noContent.header('x-kind')).to.deep.equal(['no-content']);
    expect(noContent.header('transfer-encoding'), '204 must not carry Transfer-Encoding').to.deep.equal([]);
    expect(noContent.header('content-length'), '204 must not carry Content-Length').to.deep.equal([]);

    c.write('GET /not-modified HTTP/1.1\r\nHost: kvx\r\nIf-None-Match: "v1"\r\n\r\n');
    const notModified = await c.readResponse();
    expect(notModified.status).to.equal(304);
    expect(notModified.header('etag')).to.deep.equal(['"v1"']);
    expect(notModified.header('transfer-encoding'), '304 must not carry Transfer-Encoding').to.deep.equal([]);

    c.write('GET /after HTTP/1.1\r\nHost: kvx\r\n\r\n');
    const after = await c.readResponse();
    expect(after.status).to.equal(200);
    expect(JSON.parse(after.body.toString())).to.deep.equal({ method: 'GET', url: '/after' });
    expect(c.pending).to.equal('');
  });

  it('a chunked upstream response written in delayed pieces reaches the client byte-exact and properly framed; the connection is reused after it', async () => {
    // Pieces that look like framing themselves: a naive relay that re-frames or scans would corrupt them.
    const pieces = [Buffer.from('0\r\n\r\n'), pattern(1), Buffer.from('HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc'), pattern(4096, 1), pattern(70_000, 2), Buffer.from('end')];
    const expected = Buffer.concat(pieces);
    upstream.handler = (req, res) => {
      if (req.url !== '/chunked') return echo(req, res, Buffer.alloc(0));
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'transfer-encoding': 'chunked' });
      let i = 0;
      const next = () => {
        if (i === pieces.length) return void res.end();
        res.write(pieces[i++]);
        setTimeout(next, 5);
      };
      next();
    };

    const viaHttp = await httpGet(`${proxy.url}/chunked`);
    expect(viaHttp.status).to.equal(200);
    expect(viaHttp.body.equals(expected), `node:http client got ${viaHttp.body.length} bytes, expected ${expected.length}`).to.equal(true);

    const c = await connect();
    c.write('GET /chunked HTTP/1.1\r\nHost: kvx\r\n\r\n');
    const answer = await c.readResponse();
    expect(answer.status).to.equal(200);
    expect(answer.framing).to.be.oneOf(['chunked', 'length']);
    expect(answer.body.equals(expected), `raw client got ${answer.body.length} bytes, expected ${expected.length}`).to.equal(true);
    c.write('GET /second HTTP/1.1\r\nHost: kvx\r\n\r\n');
    const second = await c.readResponse();
    expect(second.status).to.equal(200);
    expect(JSON.parse(second.body.toString())).to.deep.equal({ method: 'GET', url: '/second' });
  });

  it('a close-delimited upstream response (no Content-Length, not chunked) reaches the client whole and byte-exact', async () => {
    const first = pattern(10_000, 3);
    const second = Buffer.from('\r\n0\r\n\r\ntail of a close-delimited body');
    upstream.raw = (socket) => {
      socket.write('HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n');
      socket.write(first);
      setTimeout(() => socket.end(second), 10);
    };
    const expected = Buffer.concat([first, second]);

    const viaHttp = await httpGet(`${proxy.url}/close-delimited`);
    expect(viaHttp.status).to.equal(200);
    expect(viaHttp.body.equals(expected), `node:http client got ${viaHttp.body.length} bytes, expected ${expected.length}`).to.equal(true);

    const c = await connect();
    c.write('GET /close-delimited HTTP/1.1\r\nHost: kvx\r\n\r\n');
    const answer = await c.readResponse();
    expect(answer.status).to.equal(200);
    expect(answer.body.equals(expected), `raw client got ${answer.body.length} bytes, expected ${expected.length}`).to.equal(true);
    expect(upstream.requests.map((r) => r.url)).to.deep.equal(['/close-delimited', '/close-delimited']);
  });

  // The node:http + undici engine lost the leading chunks of such a body (a 'data' listener started the stream
  // flowing before undici read it) while the client got a normal answer.
  it('a chunked request body (chunk extension included) reaches upstream byte-exact, framed by chunked or Content-Length, never both', async () => {
    upstream.handler = (_req, res, body) => {
      const out = JSON.stringify({ bytes: body.length });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(out) });
      res.end(out);
    };
    const pieces = [Buffer.from('hello'), Buffer.from('0\r\n\r\nGET /inner HTTP/1.1\r\n\r\n'), pattern(3000, 4), pattern(1, 5)];
    const expected = Buffer.concat(pieces);
    const chunks = pieces.map((piece, i) => Buffer.concat([Buffer.from(`${piece.length.toString(16)}${i === 1 ? ';name=value' : ''}\r\n`), piece, Buffer.from('\r\n')]));
    const head = (path: string) => `POST ${path} HTTP/1.1\r\nHost: kvx\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n`;
    const c = await connect();

    // Head and whole body in one write, then head first and the chunks in delayed pieces.
    c.write(Buffer.concat([Buffer.from(head('/one-write')), ...chunks, Buffer.from('0\r\n\r\n')]));
    const first = await c.readResponse();
    c.write(head('/pieces'));
    for (const chunk of chunks) {
      await sleep(5);
      c.write(chunk);
    }
    c.write('0\r\n\r\n');
    const second = await c.readResponse();

    for (const answer of [first, second]) {
      expect(answer.status).to.equal(200);
      expect(JSON.parse(answer.body.toString())).to.deep.equal({ bytes: expected.length });
    }
    expect(upstream.requests.map((r) => `${r.method} ${r.url}`)).to.deep.equal(['POST /one-write', 'POST /pieces']);
    for (const seen of upstream.requests) {
      expect(seen.body.equals(expected), `${seen.url}: upstream got ${seen.body.length} bytes, expected ${expected.length}`).to.equal(true);
      const te = header(seen.rawHeaders, 'transfer-encoding');
      const cl = header(seen.rawHeaders, 'content-length');
      expect(te.length + cl.length, `${seen.url}: framing headers upstream saw: ${JSON.stringify({ te, cl })}`).to.equal(1);
      if (te.length > 0) expect(te).to.deep.equal(['chunked']);
      else expect(cl).to.deep.equal([String(expected.length)]);
    }
  });

  it('request smuggling: Content-Length with Transfer-Encoding, and two different Content-Lengths, each get 400 and nothing (nor a smuggled request) reaches upstream', async () => {
    const smuggledTe = '0\r\n\r\nGET /smuggled-te HTTP/1.1\r\nHost: kvx\r\n\r\n';
    const smuggledCl = 'hello' + 'GET /smuggled-cl HTTP/1.1\r\nHost: kvx\r\n\r\n';
    const attempts = [
      `POST /clte HTTP/1.1\r\nHost: kvx\r\nContent-Length: ${smuggledTe.length}\r\nTransfer-Encoding: chunked\r\n\r\n${smuggledTe}`,
      `POST /tecl HTTP/1.1\r\nHost: kvx\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n${smuggledTe}`,
      `POST /clcl HTTP/1.1\r\nHost: kvx\r\nContent-Length: 5\r\nContent-Length: ${smuggledCl.length}\r\n\r\n${smuggledCl}`,
    ];
    for (const attempt of attempts) {
      const c = await connect();
      c.write(attempt);
      const answer = await c.readResponse();
      expect(answer.status, attempt.split('\r\n')[0]).to.equal(400);
      const rest = await c.closedByServer();
      expect(rest, `${attempt.split('\r\n')[0]}: bytes after the 400`).to.equal('');
    }
    await onlyBarrierReachedUpstream();
  });

  it('a protocol upgrade (WebSocket) gets 501 not_implemented and a closed connection; nothing reaches upstream', async () => {
    const c = await connect();
    c.write('GET /ws HTTP/1.1\r\nHost: kvx\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n');
    const answer = await c.readResponse();
    expect(answer.status).to.equal(501);
    expect(answer.header('x-kvx-error')).to.deep.equal(['not_implemented']);
    expect(JSON.parse(answer.body.toString()).message).to.include('protocol upgrades are not supported');
    expect(await c.closedByServer()).to.equal('');
    await onlyBarrierReachedUpstream();
  });

  it('HTTP/1.0 without keep-alive: a complete answer without chunked framing, then the proxy closes the connection', async () => {
    const body = pattern(5000, 6);
    upstream.handler = (_req, res) => {
      // Chunked upstream: the proxy must not pass chunked framing to an HTTP/1.0 client.
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      res.write(body.subarray(0, 1000));
      res.end(body.subarray(1000));
    };
    const c = await connect();
    c.write('GET /http10 HTTP/1.0\r\n\r\n');
    const answer = await c.readResponse();
    expect(answer.status).to.equal(200);
    expect(answer.header('transfer-encoding'), 'chunked sent to an HTTP/1.0 client').to.deep.equal([]);
    expect(answer.body.equals(body), `got ${answer.body.length} bytes, expected ${body.length}`).to.equal(true);
    expect(await c.closedByServer()).to.equal('');
    expect(upstream.requests.map((r) => r.url)).to.deep.equal(['/http10']);
  });

  it('HTTP/1.0 with Connection: keep-alive: a complete answer without chunked framing (the connection may stay open or close)', async () => {
    const body = pattern(3000, 7);
    upstream.handler = (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      res.write(body.subarray(0, 10));
      res.end(body.subarray(10));
    };
    const c = await connect();
    c.write('GET /http10-ka HTTP/1.0\r\nHost: kvx\r\nConnection: keep-alive\r\n\r\n');
    const answer = await c.readResponse();
    expect(answer.status).to.equal(200);
    expect(answer.header('transfer-encoding'), 'chunked sent to an HTTP/1.0 client').to.deep.equal([]);
    expect(answer.body.equals(body), `got ${answer.body.length} bytes, expected ${body.length}`).to.equal(true);
  });

  it('Connection: close on an HTTP/1.1 request: a complete answer, then the proxy closes the connection', async () => {
    const c = await connect();
    c.write('GET /bye?x=1 HTTP/1.1\r\nHost: kvx\r\nConnection: close\r\n\r\n');
    const answer = await c.readResponse();
    expect(answer.status).to.equal(200);
    expect(JSON.parse(answer.body.toString())).to.deep.equal({ method: 'GET', url: '/bye?x=1' });
    expect(await c.closedByServer()).to.equal('');
  });

  it('Connection: close from a client that keeps its side open: once the answer is written the proxy closes its socket, without waiting for the client to close first', async () => {
    const c = await RawConnection.open(proxy.address.port, { timeoutMs: WAIT_MS, allowHalfOpen: true });
    clients.push(c);
    c.write('GET /bye HTTP/1.1\r\nHost: kvx\r\nConnection: close\r\n\r\n');
    expect((await c.readResponse()).status).to.equal(200);
    // The client said it sends nothing more and everything it sent was read: nothing is left to linger for.
    // A socket the proxy still held reads such bytes and drops them; a closed one answers them with a reset,
    // which this side learns at its next write.
    expect(await c.closedByServer(), 'bytes after the answer').to.equal('');
    let held = true;
    void c.closed.then(() => (held = false));
    for (let i = 0; i < 20 && held; i++) {
      c.write('x');
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(held, 'the proxy still held the connection 2 s after its answer').to.equal(false);
    expect((await c.closed).error).to.be.oneOf(['ECONNRESET', 'EPIPE']);
  });

  it('Connection: close with an answer larger than the socket buffers, read late: every byte arrives, then an orderly close', async () => {
    // After a Connection: close answer the proxy closes its socket at once, once the last write has been handed to
    // the kernel (or after the flush when it has not): a large answer to a reader that falls behind must still
    // arrive whole, and end in FIN, not a reset.
    const body = pattern(16 * 1024 * 1024, 3);
    upstream.handler = (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(body.length) });
      res.end(body);
    };
    const c = await connect();
    c.socket.pause();
    c.write('GET /big HTTP/1.1\r\nHost: kvx\r\nConnection: close\r\n\r\n');
    await new Promise((r) => setTimeout(r, 300));
    c.socket.resume();
    const answer = await c.readResponse();
    expect(answer.status).to.equal(200);
    expect(answer.body.equals(body), `got ${answer.body.length} bytes, expected ${body.length}`).to.equal(true);
    expect(await c.closedByServer()).to.equal('');
    expect((await c.closed).reset, 'the close was a reset').to.equal(false);
  });

  it('pipelined requests in one write, the last with a body and Connection: close: every answer arrives whole, then an orderly close', async () => {
    const c = await connect();
    const body = 'x'.repeat(3000);
    c.write(
      'GET /p1 HTTP/1.1\r\nHost: kvx\r\n\r\n' +
        'GET /p2 HTTP/1.1\r\nHost: kvx\r\n\r\n' +
        `POST /p3 HTTP/1.1\r\nHost: kvx\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`,
    );
    for (const url of ['/p1', '/p2', '/p3']) {
      const answer = await c.readResponse();
      expect(answer.status, url).to.equal(200);
      expect((JSON.parse(answer.body.toString()) as { url: string }).url).to.equal(url);
    }
    expect(await c.closedByServer()).to.equal('');
    expect((await c.closed).reset, 'the close was a reset').to.equal(false);
    expect(upstream.requests.map((r) => r.url)).to.deep.equal(['/p1', '/p2', '/p3']);
  });

  it('upstream Connection: close: the client gets the whole answer, keeps its connection, and the next request goes over a new upstream connection', async () => {
    upstream.handler = (req, res) => {
      const body = `answer for ${req.url}`;
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body), connection: 'close' });
      res.end(body);
    };
    const c = await connect();
    c.write('GET /one HTTP/1.1\r\nHost: kvx\r\n\r\n');
    const one = await c.readResponse();
    expect(one.status).to.equal(200);
    expect(one.body.toString()).to.equal('answer for /one');
    c.write('GET /two HTTP/1.1\r\nHost: kvx\r\n\r\n');
    const two = await c.readResponse();
    expect(two.status).to.equal(200);
    expect(two.body.toString()).to.equal('answer for /two');
    expect(c.ended, 'the client connection was closed').to.equal(false);
    expect(upstream.requests.map((r) => [r.url, r.connection])).to.deep.equal([
      ['/one', 1],
      ['/two', 2],
    ]);
    expect(upstream.connections).to.equal(2);
  });

  // The node:http + undici engine relayed the 103 through ServerResponse.writeHead, and the final answer then
  // could not be written: the client got nothing until upstream.idleTimeoutMs closed its connection.
  it('an interim 103 Early Hints from upstream does not replace the final answer: the client gets the 200 and its exact body', async () => {
    upstream.raw = (socket, head) => {
      const url = head.split(' ')[1]!;
      socket.write('HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n');
      setTimeout(() => {
        const body = `final for ${url}`;
        socket.write(`HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
      }, 10);
    };
    const c = await connect();
    c.write('GET /hints HTTP/1.1\r\nHost: kvx\r\n\r\n');
    const { interim, final } = await c.readFinal();
    // Relaying the 103 is optional; if relayed it must be the 103, bodyless.
    for (const r of interim) expect(r.status).to.equal(103);
    expect(final.status).to.equal(200);
    expect(final.body.toString()).to.equal('final for /hints');
    c.write('GET /after-hints HTTP/1.1\r\nHost: kvx\r\n\r\n');
    const next = await c.readFinal();
    expect(next.final.status).to.equal(200);
    expect(next.final.body.toString()).to.equal('final for /after-hints');
    expect(c.pending).to.equal('');
  });

  // An answer framed by Content-Length completes when its bytes are counted, without the parser's
  // message-complete callback; a 1xx after it on the same connection needs that callback again.
  it('an interim 103 on a connection whose last answer was framed by Content-Length: the final answer and the next complete', async () => {
    upstream.raw = (socket, head) => {
      const url = head.split(' ')[1]!;
      const body = `final for ${url}`;
      const final = `HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
      socket.write(url === '/hints' ? `HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n${final}` : final);
    };
    const c = await connect();
    for (const url of ['/plain', '/hints', '/after']) {
      c.write(`GET ${url} HTTP/1.1\r\nHost: kvx\r\n\r\n`);
      const { final } = await c.readFinal();
      expect(final.status, url).to.equal(200);
      expect(final.body.toString()).to.equal(`final for ${url}`);
    }
    expect(upstream.connections, 'one upstream connection carried all three').to.equal(1);
  });

  it('several Set-Cookie headers arrive as separate headers, and a custom header value with a comma arrives byte for byte', async () => {
    const cookies = ['a=1; Path=/', 'b=2; Path=/api; HttpOnly; Expires=Wed, 21 Oct 2037 07:28:00 GMT'];
    upstream.handler = (_req, res) => {
      res.setHeader('Set-Cookie', cookies);
      res.setHeader('X-Custom-Thing', 'a, b');
      res.setHeader('Content-Length', 2);
      res.end('ok');
    };
    const viaHttp = await httpGet(`${proxy.url}/cookies`);
    expect(viaHttp.status).to.equal(200);
    expect(viaHttp.headers['set-cookie']).to.deep.equal(cookies);
    expect(viaHttp.headers['x-custom-thing']).to.equal('a, b');
    expect(viaHttp.body.toString()).to.equal('ok');

    const c = await connect();
    c.write('GET /cookies HTTP/1.1\r\nHost: kvx\r\n\r\n');
    const answer = await c.readResponse();
    expect(answer.header('set-cookie')).to.deep.equal(cookies);
    expect(answer.header('x-custom-thing')).to.deep.equal(['a, b']);
    expect(answer.head).to.match(/\r\nx-custom-thing: a, b\r\n/i);
  });

  // HTTP says header names are case-insensitive, so this is a nicety, not conformance: the upstream's bytes pass as sent.
  it('response header names keep the case upstream sent (X-Custom-Thing)', async () => {
    upstream.handler = (_req, res) => {
      res.setHeader('X-Custom-Thing', 'a, b');
      res.setHeader('Content-Length', 2);
      res.end('ok');
    };
    const c = await connect();
    c.write('GET /case HTTP/1.1\r\nHost: kvx\r\n\r\n');
    const answer = await c.readResponse();
    expect(answer.head).to.include('\r\nX-Custom-Thing: a, b\r\n');
  });

  it('request header values reach upstream unchanged: repeated X-Multi headers in order, odd spacing and quoting, a 4 KB value', async () => {
    const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789-_.~!#$%&*+^`|\'"(),/:;<=>?@[]{} ';
    const big = Array.from({ length: 4096 }, (_, i) => alphabet[i % alphabet.length]).join('').replace(/ $/, 'x');
    const odd = 'a,  b ;q="x, y",,\tc';
    const c = await connect();
    c.write(`GET /headers HTTP/1.1\r\nHost: kvx\r\nX-Multi: one\r\nX-Other: between\r\nX-Multi: two, three\r\nX-Odd: ${odd}\r\nX-Big: ${big}\r\n\r\n`);
    const answer = await c.readResponse();
    expect(answer.status).to.equal(200);
    expect(upstream.requests).to.have.length(1);
    const seen = upstream.requests[0]!.rawHeaders;
    expect(header(seen, 'x-multi')).to.deep.equal(['one', 'two, three']);
    expect(header(seen, 'x-other')).to.deep.equal(['between']);
    expect(header(seen, 'x-odd')).to.deep.equal([odd]);
    expect(header(seen, 'x-big')).to.have.length(1);
    expect(header(seen, 'x-big')[0]).to.have.length(4096);
    expect(header(seen, 'x-big')[0]).to.equal(big);
  });

  it('a POST without a body reaches upstream with Content-Length: 0 (front ends such as Google\'s answer 411 without it); a GET gets no framing header', async () => {
    const c = await connect();
    c.write('POST /empty-post HTTP/1.1\r\nHost: kvx\r\n\r\nGET /plain-get HTTP/1.1\r\nHost: kvx\r\n\r\n');
    expect((await c.readResponse()).status).to.equal(200);
    expect((await c.readResponse()).status).to.equal(200);
    expect(upstream.requests.map((r) => r.url)).to.deep.equal(['/empty-post', '/plain-get']);
    const [post, get] = upstream.requests;
    expect(header(post!.rawHeaders, 'content-length')).to.deep.equal(['0']);
    expect(header(post!.rawHeaders, 'transfer-encoding')).to.deep.equal([]);
    expect(header(get!.rawHeaders, 'content-length')).to.deep.equal([]);
    expect(header(get!.rawHeaders, 'transfer-encoding')).to.deep.equal([]);
  });

  it('Expect: 100-continue: the client gets 100 Continue before sending the body, then the final answer; upstream gets the exact body and no Expect header', async () => {
    upstream.handler = (_req, res, body) => {
      const out = JSON.stringify({ bytes: body.length });
      res.writeHead(201, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(out) });
      res.end(out);
    };
    const body = pattern(20_000, 8);
    const c = await connect();
    c.write(`PUT /expect HTTP/1.1\r\nHost: kvx\r\nContent-Type: application/octet-stream\r\nContent-Length: ${body.length}\r\nExpect: 100-continue\r\n\r\n`);
    const cont = await c.readResponse('PUT');
    expect(cont.status).to.equal(100);
    expect(cont.head).to.match(/^HTTP\/1\.1 100 /);
    expect(c.pending, 'bytes after the 100 Continue before the body was sent').to.equal('');
    c.write(body);
    const final = await c.readResponse('PUT');
    expect(final.status).to.equal(201);
    expect(JSON.parse(final.body.toString())).to.deep.equal({ bytes: body.length });

    expect(upstream.requests).to.have.length(1);
    const seen = upstream.requests[0]!;
    expect(seen.body.equals(body), `upstream got ${seen.body.length} bytes, expected ${body.length}`).to.equal(true);
    expect(header(seen.rawHeaders, 'expect')).to.deep.equal([]);
  });

  it('keep-alive: 50 sequential requests on one client connection are all answered, in order, with their own bodies', async () => {
    upstream.handler = (req, res) => {
      const marker = new URL(req.url!, 'http://x').searchParams.get('n');
      const body = `marker-${marker}`;
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    };
    const c = await connect();
    const bodies: string[] = [];
    for (let i = 0; i < 50; i++) {
      c.write(`GET /seq?n=${i} HTTP/1.1\r\nHost: kvx\r\n\r\n`);
      const answer = await c.readResponse();
      expect(answer.status, `request ${i}`).to.equal(200);
      bodies.push(answer.body.toString());
    }
    expect(bodies).to.deep.equal(Array.from({ length: 50 }, (_, i) => `marker-${i}`));
    expect(upstream.requests.map((r) => r.url)).to.deep.equal(Array.from({ length: 50 }, (_, i) => `/seq?n=${i}`));
    expect(c.ended).to.equal(false);
  });

  it('a query string with unusual but valid characters reaches upstream byte for byte', async () => {
    const target = "/q?a=%20&b=|&c=[]&d=~!$'()*+,;=:@/?&e=%7C%5b%5D&f=&&g";
    const c = await connect();
    c.write(`GET ${target} HTTP/1.1\r\nHost: kvx\r\n\r\n`);
    const answer = await c.readResponse();
    expect(answer.status).to.equal(200);
    expect(upstream.requests.map((r) => r.url)).to.deep.equal([target]);
    expect(JSON.parse(answer.body.toString())).to.deep.equal({ method: 'GET', url: target });
  });

  it('a lower-case method (get) gets 400 from the proxy, the connection is closed, nothing reaches upstream', async () => {
    const c = await connect();
    c.write('get /lower HTTP/1.1\r\nHost: kvx\r\n\r\n');
    const answer = await c.readResponse();
    expect(answer.status).to.equal(400);
    expect(await c.closedByServer()).to.equal('');
    await onlyBarrierReachedUpstream();
  });
});

describe('proxy: nothing of one message bleeds into the next (trailers, targets, status codes, methods)', function () {
  this.timeout(10_000);
  let upstream: Upstream;
  let proxy: TestProxy;
  const clients: RawConnection[] = [];

  const connect = async (): Promise<RawConnection> => {
    const c = await RawConnection.open(proxy.address.port, { timeoutMs: WAIT_MS });
    clients.push(c);
    return c;
  };
  /** `count` request or response header lines: more than 32 makes llhttp hand them over in batches. */
  const manyHeaders = (count: number) => Array.from({ length: count }, (_, i) => `X-Many-${i}: value-${i}\r\n`).join('');

  beforeEach(async () => {
    upstream = await Upstream.start();
    proxy = await startTestProxy(upstream.url, { 'auth.provider': 'static', 'auth.params.token_env': 'TEST_WIRE_TOKEN' }, env);
  });

  afterEach(async () => {
    for (const c of clients.splice(0)) c.destroy();
    await proxy?.close(500);
    await upstream?.close();
  });

  // The trailer and the first target used to stay in the header accumulator and join the next request whose
  // headers came in batches: upstream got `GET /first-target/second-target` carrying the first request's trailer.
  it('a chunked request with a trailer, then a request with 40 headers on the same connection: upstream gets the second target alone and no trailer', async () => {
    const c = await connect();
    c.write('POST /first-target HTTP/1.1\r\nHost: kvx\r\nTransfer-Encoding: chunked\r\nTrailer: X-Client-Trailer\r\n\r\n3\r\nabc\r\n0\r\nX-Client-Trailer: first-request-trailer\r\n\r\n');
    expect((await c.readResponse('POST')).status).to.equal(200);
    c.write(`GET /second-target HTTP/1.1\r\nHost: kvx\r\n${manyHeaders(40)}\r\n`);
    const second = await c.readResponse();
    expect(second.status).to.equal(200);
    expect(JSON.parse(second.body.toString())).to.deep.equal({ method: 'GET', url: '/second-target' });
    expect(upstream.requests.map((r) => `${r.method} ${r.url}`)).to.deep.equal(['POST /first-target', 'GET /second-target']);
    const seen = upstream.requests[1]!.rawHeaders;
    expect(header(seen, 'x-client-trailer')).to.deep.equal([]);
    expect(header(seen, 'x-many-0')).to.deep.equal(['value-0']);
    expect(header(seen, 'x-many-39')).to.deep.equal(['value-39']);
    expect(upstream.requests[0]!.body.toString()).to.equal('abc');
  });

  it("client A's response trailers never appear in client B's answer (40 headers) on the reused upstream connection", async () => {
    upstream.raw = (socket, head) => {
      if (head.startsWith('GET /a ')) {
        socket.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Upstream-Trailer\r\n\r\n2\r\nok\r\n0\r\nX-Upstream-Trailer: for-client-a\r\n\r\n');
      } else {
        socket.write(`HTTP/1.1 200 OK\r\n${manyHeaders(40)}Content-Length: 6\r\n\r\nfor-b!`);
      }
    };
    const a = await connect();
    a.write('GET /a HTTP/1.1\r\nHost: kvx\r\n\r\n');
    const answerA = await a.readResponse();
    expect(answerA.body.toString()).to.equal('ok');
    const b = await connect();
    b.write('GET /b HTTP/1.1\r\nHost: kvx\r\n\r\n');
    const answerB = await b.readResponse();
    expect(answerB.status).to.equal(200);
    expect(answerB.body.toString()).to.equal('for-b!');
    expect(answerB.header('x-upstream-trailer'), answerB.head).to.deep.equal([]);
    expect(answerB.header('x-many-0')).to.deep.equal(['value-0']);
    expect(answerB.header('x-many-39')).to.deep.equal(['value-39']);
    expect(upstream.connections, 'the upstream connection was reused').to.equal(1);
  });

  // A 1xx with a Content-Length had its "body" written to the client ahead of any status line, and every later
  // answer on that connection was off by one. A 1xx ends at its blank line (RFC 9112 §6.3); 000-099 and 600-999
  // are not HTTP status codes.
  for (const [status, label] of [
    ['150', 'an unknown 1xx'],
    ['199', 'an unknown 1xx'],
    ['104', 'an unknown 1xx'],
  ] as const) {
    it(`${label} (${status}) from upstream carrying a Content-Length: no byte of it reaches the client; the final answer follows it`, async () => {
      upstream.raw = (socket, head) => {
        const url = head.split(' ')[1]!;
        // Without a body of its own the 1xx ends at the blank line: what follows is the final answer.
        socket.write(`HTTP/1.1 ${status} Odd\r\nContent-Length: 5\r\n\r\n`);
        socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${url.length}\r\n\r\n${url}`);
      };
      const c = await connect();
      c.write(`GET /first HTTP/1.1\r\nHost: kvx\r\n\r\n`);
      const { final } = await c.readFinal();
      expect(final.status).to.equal(200);
      expect(final.body.toString()).to.equal('/first');
      c.write(`GET /second HTTP/1.1\r\nHost: kvx\r\n\r\n`);
      const next = await c.readFinal();
      expect(next.final.status).to.equal(200);
      expect(next.final.body.toString()).to.equal('/second');
      expect(c.pending).to.equal('');
    });
  }

  it('an unknown 1xx followed by body bytes: 502 upstream_bad_response, the bytes never reach the client, the next answer is its own', async () => {
    upstream.raw = (socket, head) => {
      if (head.startsWith('GET /odd ')) socket.write('HTTP/1.1 150 Odd\r\nContent-Length: 10\r\n\r\nraw-bytes!');
      else socket.write('HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext');
    };
    const c = await connect();
    c.write('GET /odd HTTP/1.1\r\nHost: kvx\r\n\r\n');
    const bad = await c.readResponse();
    expect(bad.status).to.equal(502);
    expect(bad.header('x-kvx-error')).to.deep.equal(['upstream_bad_response']);
    expect(bad.body.toString()).not.to.include('raw-bytes');
    c.write('GET /after HTTP/1.1\r\nHost: kvx\r\n\r\n');
    const after = await c.readResponse();
    expect(after.status).to.equal(200);
    expect(after.body.toString()).to.equal('next');
    expect(c.pending).to.equal('');
    expect(upstream.connections, 'the connection that sent the bad answer is not reused').to.equal(2);
  });

  for (const status of ['000', '099', '600', '999']) {
    it(`an invalid status code ${status} with a body: 502 upstream_bad_response, the connection is not reused, the next answer is its own`, async () => {
      upstream.raw = (socket, head) => {
        if (head.startsWith('GET /bad ')) socket.write(`HTTP/1.1 ${status} Weird\r\nContent-Length: 9\r\n\r\nraw-bytes`);
        else socket.write('HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext');
      };
      const c = await connect();
      c.write('GET /bad HTTP/1.1\r\nHost: kvx\r\n\r\n');
      const bad = await c.readResponse();
      expect(bad.status).to.equal(502);
      expect(bad.header('x-kvx-error')).to.deep.equal(['upstream_bad_response']);
      expect(bad.body.toString()).to.include('status').and.not.include('raw-bytes');
      c.write('GET /after HTTP/1.1\r\nHost: kvx\r\n\r\n');
      const after = await c.readResponse();
      expect(after.status).to.equal(200);
      expect(after.body.toString()).to.equal('next');
      expect(c.pending).to.equal('');
      expect(upstream.connections, 'the connection that sent the bad answer is not reused').to.equal(2);
    });
  }

  // A proxy-made error sent its JSON body after the head of an answer to HEAD: the client read it as the start of
  // the next answer.
  it('a proxy error answering a HEAD (upstream sent garbage) has no body; the next answer on the connection is its own', async () => {
    upstream.raw = (socket, head) => {
      if (head.startsWith('HEAD ')) socket.write('SSH-2.0-OpenSSH_9.6\r\n\r\n');
      else socket.write('HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext');
    };
    const c = await connect();
    c.write('HEAD /garbage HTTP/1.1\r\nHost: kvx\r\n\r\n');
    const bad = await c.readResponse('HEAD');
    expect(bad.status).to.equal(502);
    expect(bad.header('x-kvx-error')).to.deep.equal(['upstream_bad_response']);
    expect(Number(bad.header('content-length')[0])).to.be.above(0);
    c.write('GET /after HTTP/1.1\r\nHost: kvx\r\n\r\n');
    const after = await c.readResponse();
    expect(after.status).to.equal(200);
    expect(after.body.toString()).to.equal('next');
    expect(c.pending).to.equal('');
  });

  // The method table was node's short list indexed by llhttp's enum: QUERY (46) arrived upstream as UNKNOWN.
  it('every method node:http accepts (QUERY, PROPFIND, SEARCH, M-SEARCH...) reaches upstream as sent, except the refused CONNECT and TRACE', async () => {
    const methods = http.METHODS.filter((m) => m !== 'CONNECT' && m !== 'TRACE');
    expect(methods).to.include.members(['QUERY', 'PROPFIND', 'PROPPATCH', 'MKCOL', 'REPORT', 'SEARCH', 'M-SEARCH', 'PURGE']);
    const c = await connect();
    for (const method of methods) {
      c.write(`${method} /m/${method} HTTP/1.1\r\nHost: kvx\r\n\r\n`);
      const answer = await c.readResponse(method);
      expect(answer.status, method).to.equal(200);
    }
    expect(upstream.requests.map((r) => r.method)).to.deep.equal(methods);
    expect(upstream.requests.map((r) => r.url)).to.deep.equal(methods.map((m) => `/m/${m}`));
  });

  it('QUERY with a body reaches upstream as QUERY with the exact body', async () => {
    const c = await connect();
    c.write('QUERY /search HTTP/1.1\r\nHost: kvx\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{"q":"runs"}\n');
    const answer = await c.readResponse();
    expect(JSON.parse(answer.body.toString())).to.deep.equal({ method: 'QUERY', url: '/search' });
    expect(upstream.requests[0]!.body.toString()).to.equal('{"q":"runs"}\n');
  });

  // nginx drops them (underscores_in_headers off); WSGI servers such as MLflow's read `_` and `-` alike.
  it('request headers whose names contain "_" are dropped unless headers.allowUnderscores is set', async () => {
    const head = 'GET /underscores HTTP/1.1\r\nHost: kvx\r\nTransfer_Encoding: chunked\r\nX_Serverless_Authorization: client-secret\r\nX_Custom: custom\r\nX-Dashed: dashed\r\n\r\n';
    const c = await connect();
    c.write(head);
    expect((await c.readResponse()).status).to.equal(200);
    const seen = upstream.requests[0]!.rawHeaders;
    expect(seen.filter((_, i) => i % 2 === 0 && seen[i]!.includes('_')), 'underscored names forwarded').to.deep.equal([]);
    expect(header(seen, 'x-dashed')).to.deep.equal(['dashed']);

    const allowing = await startTestProxy(upstream.url, { 'auth.provider': 'static', 'auth.params.token_env': 'TEST_WIRE_TOKEN', 'headers.allowUnderscores': true }, env);
    try {
      const d = await RawConnection.open(allowing.address.port, { timeoutMs: WAIT_MS });
      clients.push(d);
      d.write(head);
      expect((await d.readResponse()).status).to.equal(200);
      const allowed = upstream.requests[1]!.rawHeaders;
      expect(header(allowed, 'x_custom')).to.deep.equal(['custom']);
      expect(header(allowed, 'x_serverless_authorization')).to.deep.equal(['client-secret']);
      expect(header(allowed, 'transfer_encoding')).to.deep.equal(['chunked']);
    } finally {
      await allowing.close(500);
    }
  });

  // Number('9007199254740993') is 9007199254740992: the length was forwarded rounded, so upstream would frame a
  // different body than the client sent.
  it('a Content-Length above 2^53 - 1 gets 413 naming the limit, the connection is closed, nothing reaches upstream', async () => {
    for (const length of ['9007199254740992', '9007199254740993', '1000000000000000000']) {
      const c = await connect();
      c.write(`PUT /huge HTTP/1.1\r\nHost: kvx\r\nContent-Length: ${length}\r\n\r\nsome bytes`);
      const answer = await c.readResponse('PUT');
      expect(answer.status, length).to.equal(413);
      expect(JSON.parse(answer.body.toString()).message).to.include('Content-Length').and.include('9007199254740991');
      await c.closedByServer();
    }
    expect(upstream.requests).to.deep.equal([]);
    // The largest exact length is forwarded as sent (the upstream script records the head; no answer is needed).
    upstream.raw = () => {};
    const c = await connect();
    c.write('PUT /largest HTTP/1.1\r\nHost: kvx\r\nContent-Length: 9007199254740991\r\n\r\nfirst bytes');
    for (let i = 0; i < 100 && upstream.requests.length === 0; i++) await sleep(10);
    expect(upstream.requests.map((r) => `${r.method} ${r.url}`)).to.deep.equal(['PUT /largest']);
    expect(header(upstream.requests[0]!.rawHeaders, 'content-length')).to.deep.equal(['9007199254740991']);
  });
});
