import { expect } from 'chai';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { HeaderNameSet, isHeader } from '../../src/proxy/header-names.js';
import { clientResponseHead, requestHeaderPlan, upstreamRequestHead } from '../../src/proxy/headers.js';
import { writeHeadAndBody } from '../../src/proxy/wire/body.js';
import { loadConfig } from '../../src/config/load.js';

describe('HeaderNameSet: header names asked in the case they arrived in', () => {
  it('finds a name in any case and nothing else, whatever its length', () => {
    const long = `x-${'a'.repeat(70)}`;
    const longer = `x-${'a'.repeat(71)}`;
    const set = new HeaderNameSet(['Connection', 'te', 'x-request-id', long]);
    expect(set.size).to.equal(4);
    for (const name of ['connection', 'CONNECTION', 'Connection', 'TE', 'tE', 'X-Request-ID', long.toUpperCase()]) expect(set.has(name), name).to.equal(true);
    // Same lengths as listed names, other letters; and names longer than the length table, which share a slot.
    for (const name of ['connectiom', 'tf', 'x-request-ie', longer, `${long.slice(0, -1)}b`, '', 'keep-alive']) expect(set.has(name), name).to.equal(false);
  });

  it('is empty when built from nothing', () => {
    const set = new HeaderNameSet([]);
    expect(set.size).to.equal(0);
    expect(set.has('host')).to.equal(false);
  });

  it('isHeader compares by length, then as written, then lower-cased', () => {
    expect(isHeader('Content-Length', 'content-length')).to.equal(true);
    expect(isHeader('content-length', 'content-length')).to.equal(true);
    expect(isHeader('content-lengtx', 'content-length')).to.equal(false);
    expect(isHeader('content-lengthx', 'content-length')).to.equal(false);
  });
});

describe('header blocks built from raw header lists', () => {
  const rewriter = { rewriteLocation: (value: string) => `rewritten:${value}` };

  it('drops hop-by-hop, framing and credential headers from a request in any case, keeping the rest as sent', () => {
    const { config } = loadConfig({ env: {}, overrides: [{ path: 'upstream.url', value: 'http://127.0.0.1:5000', source: 'flag:--upstream' }] });
    const plan = requestHeaderPlan(config);
    const raw = [
      'HOST', 'client.example',
      'Authorization', 'Bearer client',
      'COOKIE', 'a=b',
      'Connection', 'Keep-Alive, X-Hop , ,Upgrade',
      'x-hop', 'dropped',
      'Keep-Alive', 'timeout=5',
      'Transfer-Encoding', 'chunked',
      'Content-Length', '3',
      'X-Custom', 'kept',
      'Accept', '*/*',
    ];
    const head = upstreamRequestHead('GET', '/api/x', raw, plan, { Authorization: 'Bearer injected' }, new HeaderNameSet(['Authorization']), 'id-1', 'content-length: 0\r\n');
    expect(head).to.equal(
      'GET /api/x HTTP/1.1\r\nhost: 127.0.0.1:5000\r\nX-Custom: kept\r\nAccept: */*\r\nAuthorization: Bearer injected\r\nx-request-id: id-1\r\ncontent-length: 0\r\n\r\n',
    );
  });

  it('drops hop-by-hop headers from an answer, including those its Connection header names, and finds its framing in any case', () => {
    const raw = ['Content-Type', 'application/json', 'CONTENT-LENGTH', '2', 'Connection', 'keep-alive, X-Upstream-Hop', 'X-UPSTREAM-HOP', 'x', 'Keep-Alive', 'timeout=5', 'LOCATION', '/next', 'Date', 'today'];
    const { lines, hasLength } = clientResponseHead(raw, rewriter, 'proxy:1');
    expect(hasLength).to.equal(true);
    expect(lines).to.equal('Content-Type: application/json\r\nCONTENT-LENGTH: 2\r\nLOCATION: rewritten:/next\r\nDate: today\r\n');
    const chunked = clientResponseHead(['Transfer-Encoding', 'chunked', 'Content-Length', '5'], rewriter, undefined);
    expect(chunked.hasLength, 'a chunked answer is not delimited by its Content-Length').to.equal(false);
  });
});

describe('writeHeadAndBody: a response head and its first body chunk', () => {
  let server: net.Server;
  let received: Promise<Buffer>;
  let client: net.Socket;

  beforeEach(async () => {
    server = net.createServer();
    received = new Promise((resolve) => {
      server.once('connection', (socket) => {
        const chunks: Buffer[] = [];
        socket.on('data', (c: Buffer) => chunks.push(c));
        socket.on('end', () => resolve(Buffer.concat(chunks)));
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    client = net.connect((server.address() as AddressInfo).port, '127.0.0.1');
    await new Promise((resolve) => client.once('connect', resolve));
  });

  afterEach(async () => {
    client.destroy();
    await new Promise((resolve) => server.close(resolve));
  });

  const head = 'HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n';

  for (const size of [1, 4096, 4097, 70_000]) {
    it(`sends a ${size}-byte chunk behind the head, with and without chunked framing`, async () => {
      // A large chunk is freed once written (nothing reads it again), so each write gets its own.
      writeHeadAndBody(client, head, Buffer.alloc(size, 'z'), false);
      writeHeadAndBody(client, 'H\r\n', Buffer.alloc(size, 'z'), true);
      client.end();
      expect((await received).toString('latin1')).to.equal(`${head}${'z'.repeat(size)}H\r\n${size.toString(16)}\r\n${'z'.repeat(size)}\r\n`);
    });
  }
});
