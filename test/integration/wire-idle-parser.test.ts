/**
 * Idle keep-alive connections hold no native parser (issue 17: memory per idle connection). A parser costs
 * about 6.7 KB of native memory, most of what an idle connection cost; once a connection has been idle for a
 * sweep or two it gives its parser back to the pool, and its next request takes one again.
 */
import type { AddressInfo } from 'node:net';
import { expect } from 'chai';
import { ClientListener } from '../../src/proxy/wire/client-connection.js';
import type { ClientConnection, ClientRequest } from '../../src/proxy/wire/client-connection.js';
import { RawConnection } from '../helpers/raw-http.js';

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
const holdsParser = (connection: ClientConnection): boolean => (connection as unknown as { parser: unknown }).parser !== undefined;

describe('wire: idle client connections give their parser back', function () {
  this.timeout(20_000);
  let listener: ClientListener;
  let port: number;
  const seen: string[] = [];

  before(async () => {
    listener = new ClientListener({
      maxHeaderSize: 16 * 1024,
      headersTimeoutMs: 30_000,
      requestTimeoutMs: 0,
      keepAliveTimeoutMs: 60_000,
      idleTimeoutMs: 60_000,
      onRequest(request: ClientRequest) {
        seen.push(request.target);
        const body = Buffer.from(`answer to ${request.target}`);
        request.readBody({
          data: () => {},
          end: () => {
            request.writeHead(200, 'OK', `content-length: ${body.length}\r\n`, 'length');
            request.write(body);
            request.end();
          },
          error: () => request.destroy(),
        });
      },
      onClientError: () => {},
      refusal: () => ({ status: '400 Bad Request', body: '{}' }),
    });
    await new Promise<void>((resolve) => listener.server.listen(0, '127.0.0.1', resolve));
    port = (listener.server.address() as AddressInfo).port;
  });

  after(async () => {
    listener.closeAll();
    listener.stop();
    await new Promise<void>((resolve) => listener.server.close(() => resolve()));
  });

  it('an idle connection holds no parser; its next requests (one, then pipelined with a body) are answered in order', async () => {
    const client = await RawConnection.open(port);
    try {
      client.write('GET /first HTTP/1.1\r\nHost: kvx\r\n\r\n');
      expect((await client.readResponse()).body.toString()).to.equal('answer to /first');
      const [connection] = [...listener.connections];
      expect(holdsParser(connection!), 'a parser while requests come').to.equal(true);

      // The sweep runs every second here; after one or two the connection counts as idle.
      await sleep(2_500);
      expect(holdsParser(connection!), 'a parser while idle').to.equal(false);

      client.write('GET /second HTTP/1.1\r\nHost: kvx\r\n\r\nPOST /third HTTP/1.1\r\nHost: kvx\r\nContent-Length: 5\r\n\r\nhello');
      expect((await client.readResponse()).body.toString()).to.equal('answer to /second');
      expect((await client.readResponse()).body.toString()).to.equal('answer to /third');
      expect(holdsParser(connection!), 'a parser again once requests come').to.equal(true);
      client.write('GET /fourth HTTP/1.1\r\nHost: kvx\r\n\r\n');
      expect((await client.readResponse()).body.toString()).to.equal('answer to /fourth');
      expect(seen).to.deep.equal(['/first', '/second', '/third', '/fourth']);
    } finally {
      client.destroy();
    }
  });

  it('a connection closed by its client while idle (no parser) is released', async () => {
    const client = await RawConnection.open(port);
    client.write('GET /once HTTP/1.1\r\nHost: kvx\r\n\r\n');
    await client.readResponse();
    const connection = [...listener.connections].find((c) => c.socket.remotePort === client.socket.localPort)!;
    await sleep(2_500);
    expect(holdsParser(connection)).to.equal(false);
    client.socket.end();
    for (let i = 0; i < 100 && listener.connections.has(connection); i++) await sleep(20);
    expect(listener.connections.has(connection), 'still listed after the client closed').to.equal(false);
  });
});
