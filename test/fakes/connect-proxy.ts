/**
 * A corporate egress proxy on loopback: answers CONNECT by opening a TCP connection to the named host and
 * relaying bytes both ways, as squid does. It checks Proxy-Authorization (Basic) when given credentials,
 * answers 407 without them, refuses targets a test names (403), can close connections unanswered, and counts
 * every CONNECT and every absolute-form request (which kvx must never send: it tunnels).
 */
import http from 'node:http';
import net from 'node:net';
import type { AddressInfo, Socket } from 'node:net';

export interface ConnectRecord {
  /** host:port as the client asked for it. */
  authority: string;
  /** The Proxy-Authorization header sent, if any. */
  authorization: string | undefined;
  /** What the proxy answered: 200, 403, 407, or 0 for closed unanswered. */
  status: number;
}

export interface FakeConnectProxy {
  /** http://127.0.0.1:<port> */
  url: string;
  port: number;
  connects: ConnectRecord[];
  /** Requests that were not CONNECT (absolute-form forwarding), by target. */
  forwarded: string[];
  /** Tunnels currently open. */
  readonly openTunnels: number;
  /** What the proxy does with the next CONNECTs. */
  mode: 'relay' | 'refuse' | 'close';
  /** Where the proxy itself resolves names (its own DNS): name → address. */
  resolve: Record<string, string>;
  close(): Promise<void>;
}

export async function startConnectProxy(options: { user?: string; password?: string } = {}): Promise<FakeConnectProxy> {
  const expected = options.user === undefined ? undefined : `Basic ${Buffer.from(`${options.user}:${options.password ?? ''}`).toString('base64')}`;
  const sockets = new Set<Socket>();
  let open = 0;
  const server = http.createServer((req, res) => {
    proxy.forwarded.push(req.url ?? '');
    res.writeHead(400, { 'content-type': 'text/plain', connection: 'close' });
    res.end('this proxy only tunnels');
  });
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  server.on('connect', (req: http.IncomingMessage, client: Socket, head: Buffer) => {
    const authority = req.url ?? '';
    const authorization = req.headers['proxy-authorization'];
    const record: ConnectRecord = { authority, authorization, status: 0 };
    proxy.connects.push(record);
    client.on('error', () => {});
    const answer = (status: number, reason: string, extra = '') => {
      record.status = status;
      client.end(`HTTP/1.1 ${status} ${reason}\r\n${extra}content-length: 0\r\nconnection: close\r\n\r\n`);
    };
    if (proxy.mode === 'close') {
      client.destroy();
      return;
    }
    if (expected !== undefined && authorization !== expected) {
      answer(407, 'Proxy Authentication Required', 'proxy-authenticate: Basic realm="corp"\r\n');
      return;
    }
    if (proxy.mode === 'refuse') {
      answer(403, 'Forbidden');
      return;
    }
    const match = /^\[?([^\]]+?)\]?:(\d+)$/.exec(authority);
    if (!match) {
      answer(400, 'Bad Request');
      return;
    }
    const host = proxy.resolve[match[1]!] ?? match[1]!;
    const upstream = net.connect({ host, port: Number(match[2]) });
    sockets.add(upstream);
    upstream.once('close', () => sockets.delete(upstream));
    upstream.on('error', () => {
      if (record.status === 0) answer(502, 'Bad Gateway');
      else client.destroy();
    });
    upstream.once('connect', () => {
      record.status = 200;
      open++;
      client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      if (head.length > 0) upstream.write(head);
      client.pipe(upstream);
      upstream.pipe(client);
      let closed = false;
      const done = () => {
        if (closed) return;
        closed = true;
        open--;
        client.destroy();
        upstream.destroy();
      };
      client.once('close', done);
      upstream.once('close', done);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  const proxy: FakeConnectProxy = {
    url: `http://127.0.0.1:${port}`,
    port,
    connects: [],
    forwarded: [],
    get openTunnels() {
      return open;
    },
    mode: 'relay',
    resolve: {},
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  return proxy;
}
