/**
 * The tests' raw HTTP/1.1 client against a scripted loopback server that writes exact bytes: every framing, the
 * header lines as sent, interim answers, pipelining, malformed answers that must fail at once, closes and resets.
 */
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { expect } from 'chai';
import { RawConnection, RawHttpError, decodeChunked, exchange, parseResponses } from '../helpers/raw-http.js';

/** A server whose every connection runs `script`; records what each connection received and whether it saw EOF. */
class ScriptedServer {
  port = 0;
  readonly connections: { writes: Buffer[]; eof: boolean }[] = [];
  private readonly sockets = new Set<net.Socket>();
  private readonly server: net.Server;

  constructor(script: (socket: net.Socket, received: () => string) => void) {
    this.server = net.createServer({ allowHalfOpen: true }, (socket) => {
      const seen = { writes: [] as Buffer[], eof: false };
      this.connections.push(seen);
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
      socket.on('error', () => {});
      socket.on('data', (d: Buffer) => seen.writes.push(d));
      socket.on('end', () => (seen.eof = true));
      script(socket, () => Buffer.concat(seen.writes).toString('latin1'));
    });
  }

  async start(): Promise<this> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as AddressInfo).port;
    return this;
  }

  close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

const servers: ScriptedServer[] = [];
const connections: RawConnection[] = [];
const serve = (script: (socket: net.Socket, received: () => string) => void) => {
  const server = new ScriptedServer(script);
  servers.push(server);
  return server.start();
};
const connect = async (port: number, timeoutMs = 2000) => {
  const c = await RawConnection.open(port, { timeoutMs });
  connections.push(c);
  return c;
};
/** Answers each request head (a blank line) with the next of `answers`, byte by byte when `split`. */
const answering = (answers: (string | Buffer)[], split = false) => (socket: net.Socket, received: () => string) => {
  let answered = 0;
  socket.on('data', () => {
    while (answered < answers.length && received().split('\r\n\r\n').length - 1 > answered) {
      const a = Buffer.from(answers[answered++]!);
      if (split) for (let i = 0; i < a.length; i++) socket.write(a.subarray(i, i + 1));
      else socket.write(a);
    }
  });
};
const GET = 'GET / HTTP/1.1\r\nHost: x\r\n\r\n';

describe('raw HTTP/1.1 client', () => {
  afterEach(async () => {
    for (const c of connections.splice(0)) c.destroy();
    for (const s of servers.splice(0)) await s.close();
  });

  it('reads a Content-Length answer with header names as sent, repeats in order, and the exact wire bytes', async () => {
    const answer = 'HTTP/1.1 200 OK\r\nX-Custom-Thing: a, b\r\nSet-Cookie: a=1\r\nset-cookie: b=2;  Path=/ \r\nContent-Length: 5\r\n\r\nhello';
    const server = await serve(answering([answer]));
    const c = await connect(server.port);
    c.write(GET);
    const r = await c.readResponse();
    expect([r.version, r.status, r.reason, r.framing]).to.deep.equal(['1.1', 200, 'OK', 'length']);
    expect(r.head).to.equal(answer.slice(0, answer.indexOf('\r\n\r\n')));
    expect(r.headers.map(([n]) => n)).to.deep.equal(['X-Custom-Thing', 'Set-Cookie', 'set-cookie', 'Content-Length']);
    expect(r.header('SET-COOKIE')).to.deep.equal(['a=1', 'b=2;  Path=/']);
    expect(r.value('x-custom-thing')).to.equal('a, b');
    expect(r.value('absent')).to.equal(undefined);
    expect(() => r.value('set-cookie')).to.throw(RawHttpError, /appears 2 times/);
    expect(r.text).to.equal('hello');
    expect(r.raw.toString('latin1')).to.equal(answer);
    expect(c.pending).to.equal('');
    expect(server.connections[0]!.writes.map((b) => b.toString('latin1')).join('')).to.equal(GET);
  });

  it('decodes a chunked answer delivered a byte at a time: extensions, frames and trailers', async () => {
    const answer = 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n1\r\n \r\nA \r\n0123456789\r\n0\r\nX-Trailer: t1\r\nX-Other: t2\r\n\r\n';
    const server = await serve(answering([answer, 'HTTP/1.1 204 No Content\r\n\r\n'], true));
    const c = await connect(server.port);
    c.write(GET + GET);
    const r = await c.readResponse();
    expect(r.framing).to.equal('chunked');
    expect(r.text).to.equal('hello 0123456789');
    expect(r.frames).to.equal(3);
    expect(r.trailers).to.deep.equal([
      ['X-Trailer', 't1'],
      ['X-Other', 't2'],
    ]);
    expect(r.raw.toString('latin1')).to.equal(answer);
    expect((await c.readResponse()).status).to.equal(204);
  });

  it('reads a close-delimited body up to the server closing, and says the server closed it', async () => {
    const body = Buffer.alloc(100_000, 7);
    const server = await serve((socket) => {
      socket.once('data', () => {
        socket.write('HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n');
        socket.write(body.subarray(0, 50_000));
        setTimeout(() => socket.end(body.subarray(50_000)), 20);
      });
    });
    const c = await connect(server.port);
    c.write(GET);
    const r = await c.readResponse();
    expect(r.framing).to.equal('close');
    expect(r.body.equals(body)).to.equal(true);
    const info = await c.closed;
    expect(info).to.include({ byServer: true, reset: false, error: undefined });
    expect(info.afterMs).to.be.above(0);
  });

  it('gives an answer to HEAD no body whatever its Content-Length, nor 1xx, 204 and 304; readFinal collects the interim ones', async () => {
    const server = await serve(
      answering([
        'HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n',
        'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok',
        'HTTP/1.1 204 No Content\r\nX-Kind: none\r\n\r\n',
        'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n',
        'HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlast',
      ]),
    );
    const c = await connect(server.port);
    c.write('HEAD / HTTP/1.1\r\nHost: x\r\n\r\n');
    const head = await c.readResponse('HEAD');
    expect([head.status, head.framing, head.body.length, head.value('content-length')]).to.deep.equal([200, 'none', 0, '11']);
    c.write(GET);
    const { interim, final } = await c.readFinal();
    expect(interim.map((r) => [r.status, r.framing])).to.deep.equal([
      [100, 'none'],
      [103, 'none'],
    ]);
    expect(interim[1]!.header('link')).to.deep.equal(['</x>; rel=preload']);
    expect([final.status, final.text]).to.deep.equal([201, 'ok']);
    c.write(GET + GET + GET);
    expect((await c.readResponse()).status).to.equal(204);
    expect((await c.readResponse()).status).to.equal(304);
    expect((await c.readResponse()).text).to.equal('last');
    expect(c.pending).to.equal('');
  });

  it('reads pipelined answers that arrive in one write in order, and leaves what follows them pending', async () => {
    const three = [1, 2, 3].map((n) => `HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n${n}`).join('') + 'HTTP/1.1 200 O';
    const server = await serve((socket) => socket.once('data', () => socket.write(three)));
    const c = await connect(server.port);
    c.write(GET + GET + GET);
    const texts = [(await c.readResponse()).text, (await c.readResponse()).text, (await c.readResponse()).text];
    expect(texts).to.deep.equal(['1', '2', '3']);
    expect(c.pending).to.equal('HTTP/1.1 200 O');
  });

  const malformed: Record<string, string> = {
    'bytes that are not a status line': 'SSH-2.0-OpenSSH_9.6\r\n',
    'a status code out of range': 'HTTP/1.1 600 Weird\r\nContent-Length: 0\r\n\r\n',
    'an unknown version': 'HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n',
    'a header line without a colon': 'HTTP/1.1 200 OK\r\nNoColon\r\n\r\n',
    'a space before the colon': 'HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n',
    'a folded header line': 'HTTP/1.1 200 OK\r\nX-A: 1\r\n  folded\r\nContent-Length: 0\r\n\r\n',
    'a control character in a value': 'HTTP/1.1 200 OK\r\nX-Bad: a\x01b\r\nContent-Length: 0\r\n\r\n',
    'a bare LF in the head': 'HTTP/1.1 200 OK\r\nX-A: 1\nX-B: 2\r\nContent-Length: 0\r\n\r\n',
    'both Transfer-Encoding and Content-Length': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n',
    'two Content-Lengths': 'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc',
    'a non-numeric Content-Length': 'HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\nabc',
    'Transfer-Encoding not ending in chunked': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n',
    'a bad chunk size': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n',
    'chunk data not followed by CRLF': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n',
    'a bad trailer line': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nnot a trailer\r\n\r\n',
    'stray bytes after a whole answer': 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA',
  };
  for (const [what, bytes] of Object.entries(malformed)) {
    it(`fails at once, with what arrived, on ${what}`, async () => {
      // The server keeps the connection open: a RawHttpError (not the timeout's plain Error) means it failed at once.
      const server = await serve((socket) => socket.once('data', () => socket.write(bytes)));
      const c = await connect(server.port, 10_000);
      c.write(GET + GET);
      // Stray bytes after a whole answer fail the next read; everything else fails the first.
      const err = await (async () => {
        await c.readResponse();
        await c.readResponse();
      })().then(
        () => undefined,
        (e: Error) => e,
      );
      expect(err).to.be.instanceOf(RawHttpError);
      expect(err!.message, 'the message quotes the bytes').to.match(/: ".+"$/s);
      expect(() => parseResponses(bytes), 'parseResponses agrees').to.throw(RawHttpError);
    });
  }

  it('accepts a status line without a reason phrase', () => {
    const [r] = parseResponses('HTTP/1.1 400\r\nContent-Length: 2\r\n\r\n{}');
    expect([r!.status, r!.reason, r!.text]).to.deep.equal([400, '', '{}']);
  });

  it('fails a read when the server closes inside an answer, and reports a reset as one', async () => {
    const server = await serve((socket) => socket.once('data', () => socket.end('HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc')));
    const c = await connect(server.port);
    c.write(GET);
    const err = await c.readResponse().then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err?.message).to.match(/connection closed first.*HTTP\/1\.1 200 OK.*abc/);
    expect((await c.closed).byServer).to.equal(true);

    const resetting = await serve((socket) => socket.once('data', () => socket.resetAndDestroy()));
    const d = await connect(resetting.port);
    d.write(GET);
    const info = await d.closed;
    expect(info).to.include({ byServer: true, reset: true, error: 'ECONNRESET' });
    expect(await d.closedByServer()).to.equal('');
  });

  it('fails a read that gets nothing within its timeout, naming the wait; this side closing is not the server closing', async () => {
    const server = await serve(() => {});
    const c = await connect(server.port, 100);
    c.write(GET);
    const err = await c.readResponse('PUT').then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err?.message).to.equal('response to PUT: nothing within 100 ms; unconsumed bytes ""');
    c.destroy();
    expect((await c.closed).byServer).to.equal(false);
  });

  it('writes a large body with backpressure and stops when the connection goes', async () => {
    let got = 0;
    const server = await serve((socket) => {
      socket.on('data', (d: Buffer) => {
        got += d.length;
        if (got >= 3_000_000) socket.destroy();
      });
    });
    const c = await connect(server.port);
    const sent = await c.writeRepeated(8_000_000_000, Buffer.alloc(1 << 20, 1));
    expect(sent).to.be.at.least(3_000_000).and.below(8_000_000_000);
    expect(server.connections[0]!.writes.length).to.be.above(0);
  });

  it('exchange: pieces with gaps arrive as separate writes, then EOF; the answers parse in order with HEAD honoured', async () => {
    const server = await serve((socket) => {
      socket.on('end', () => {
        socket.end('HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc');
      });
    });
    const r = await exchange(server.port, ['HEAD /a HTTP/1.1\r\n\r\n', 'GET /b ', 'HTTP/1.1\r\n\r\n'], { gapMs: 30, endAfterWrite: true, methods: ['HEAD'] });
    expect(server.connections[0]!.writes.map((b) => b.toString('latin1'))).to.deep.equal(['HEAD /a HTTP/1.1\r\n\r\n', 'GET /b ', 'HTTP/1.1\r\n\r\n']);
    expect(server.connections[0]!.eof).to.equal(true);
    expect(r.responses.map((x) => [x.status, x.text])).to.deep.equal([
      [200, ''],
      [200, 'abc'],
    ]);
    expect([r.closedByServer, r.reset, r.error]).to.deep.equal([true, false, undefined]);
    expect(r.closedAfterMs).to.be.above(0);
    expect(r.text).to.match(/^HTTP\/1\.1 200 OK\r\n/);
  });

  it('exchange: a server that keeps the connection ends the wait after waitMs, or idleMs of quiet; unfinished bytes do not parse', async () => {
    const server = await serve((socket) => socket.once('data', () => socket.write('HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc')));
    const timers = process.getActiveResourcesInfo().filter((k) => k === 'Timeout').length;
    const waited = await exchange(server.port, GET, { waitMs: 150 });
    expect([waited.closedByServer, waited.closedAfterMs, waited.text.endsWith('abc')]).to.deep.equal([false, undefined, true]);
    expect(() => waited.responses).to.throw(RawHttpError, /end inside response 1/);
    const quiet = await exchange(server.port, GET, { idleMs: 100, waitMs: 60_000 });
    expect(quiet.closedByServer).to.equal(false);
    expect(process.getActiveResourcesInfo().filter((k) => k === 'Timeout').length, 'timers left behind').to.be.at.most(timers);
  });

  it('decodeChunked: a whole body and where it ends, undefined while incomplete, an error when malformed', () => {
    const bytes = Buffer.from('PUT / HTTP/1.1\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\nNEXT');
    const start = bytes.indexOf('\r\n\r\n') + 4;
    const decoded = decodeChunked(bytes, start)!;
    expect([decoded.body.toString(), decoded.frames, bytes.subarray(decoded.end).toString()]).to.deep.equal(['abcde', 2, 'NEXT']);
    expect(decodeChunked(bytes.subarray(0, bytes.length - 8), start)).to.equal(undefined);
    expect(() => decodeChunked(Buffer.from('3\r\nabcd\r\n'))).to.throw(RawHttpError, /not followed by CRLF/);
  });
});
