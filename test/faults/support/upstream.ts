/**
 * A scriptable upstream for fault cases: normal answers by default (behind a bearer check, so every normal
 * request also proves the token was injected), any misbehaviour on demand, a record of what arrived and
 * whether each request ended normally or was cancelled, and a way to drop its idle keep-alive connections
 * so the proxy's socket count can return to its baseline.
 */
import { createHash } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export interface UpstreamRequest {
  id: string;
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  bytes: number;
  sha256: string;
  /** The request body arrived whole. */
  complete: boolean;
  /** The answer was sent whole. */
  answered: boolean;
  /** The connection closed before the answer was sent whole. */
  cancelled: boolean;
}

/** Returns true when it handled the request itself. */
export type Behaviour = (req: http.IncomingMessage, res: http.ServerResponse, record: UpstreamRequest) => boolean | void;

export class ScriptedUpstream {
  readonly requests: UpstreamRequest[] = [];
  behaviour: Behaviour | undefined;
  /** Replaces the bearer check (an IAP-like gate); returns the rejection to send, or null to let the request through. */
  gate: ((req: http.IncomingMessage) => { status: number; body: string; headers?: Record<string, string> } | null) | undefined;
  url = '';
  port = 0;
  private readonly sockets = new Set<Socket>();
  private readonly busy = new Set<Socket>();
  private readonly server: http.Server;

  private constructor(public token: string) {
    this.server = http.createServer({ maxHeaderSize: 64 * 1024 }, (req, res) => this.handle(req, res));
    // No keep-alive timeout and no Keep-Alive hint: connections stay open until a case drops them.
    this.server.keepAliveTimeout = 0;
    this.server.headersTimeout = 0;
    this.server.requestTimeout = 0;
    this.server.on('connection', (socket: Socket) => {
      this.sockets.add(socket);
      socket.on('close', () => {
        this.sockets.delete(socket);
        this.busy.delete(socket);
      });
    });
  }

  static async start(token: string): Promise<ScriptedUpstream> {
    const upstream = new ScriptedUpstream(token);
    await new Promise<void>((resolve) => upstream.server.listen(0, '127.0.0.1', resolve));
    upstream.port = (upstream.server.address() as AddressInfo).port;
    upstream.url = `http://127.0.0.1:${upstream.port}`;
    return upstream;
  }

  get openConnections(): number {
    return this.sockets.size;
  }

  byId(id: string): UpstreamRequest[] {
    return this.requests.filter((r) => r.id === id);
  }

  /** Closes every connection not carrying a request, as a server's keep-alive timeout would. */
  dropIdle(): void {
    for (const s of this.sockets) if (!this.busy.has(s)) s.destroy();
  }

  /** Stops accepting: new connections are refused until listenAgain(). */
  async stopListening(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  async listenAgain(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(this.port, '127.0.0.1', resolve));
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const socket = req.socket;
    this.busy.add(socket);
    const record: UpstreamRequest = {
      id: String(req.headers['x-request-id'] ?? ''),
      method: req.method ?? '',
      url: req.url ?? '',
      headers: req.headers,
      bytes: 0,
      sha256: '',
      complete: false,
      answered: false,
      cancelled: false,
    };
    this.requests.push(record);
    const hash = createHash('sha256');
    req.on('data', (chunk: Buffer) => {
      record.bytes += chunk.length;
      hash.update(chunk);
    });
    req.on('end', () => {
      record.complete = true;
      record.sha256 = hash.digest('hex');
    });
    res.on('finish', () => {
      record.answered = true;
      this.busy.delete(socket);
    });
    res.on('close', () => {
      if (!record.answered) record.cancelled = true;
      this.busy.delete(socket);
    });
    if (this.behaviour?.(req, res, record) === true) return;
    this.normal(req, res, record);
  }

  private normal(req: http.IncomingMessage, res: http.ServerResponse, record: UpstreamRequest): void {
    const url = new URL(req.url ?? '/', 'http://upstream');
    if (this.gate) {
      const rejection = this.gate(req);
      if (rejection) {
        req.resume();
        res.writeHead(rejection.status, { 'content-type': 'text/plain', ...rejection.headers });
        res.end(rejection.body);
        return;
      }
    } else if (req.headers.authorization !== `Bearer ${this.token}`) {
      req.resume();
      return json(res, 401, { error_code: 'UNAUTHENTICATED', message: 'missing or invalid credentials' });
    }
    const bytesMatch = /^\/bytes\/(\d+)$/.exec(url.pathname);
    if (req.method === 'GET' && bytesMatch) {
      req.resume();
      return streamBytes(res, Number(bytesMatch[1]));
    }
    if (req.method === 'GET' && url.pathname === '/slow-bytes') {
      // Trickles a large body so a client can abort in the middle of it.
      req.resume();
      const total = Number(url.searchParams.get('total') ?? 10_000_000);
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': total });
      let sent = 0;
      const tick = setInterval(() => {
        if (res.destroyed) return clearInterval(tick);
        const n = Math.min(16_384, total - sent);
        res.write(pattern(sent, n));
        sent += n;
        if (sent >= total) {
          clearInterval(tick);
          res.end();
        }
      }, 5);
      res.on('close', () => clearInterval(tick));
      return;
    }
    // Everything else: consume the body, then say what arrived.
    req.on('end', () => json(res, 200, { method: req.method, path: url.pathname, bytes: record.bytes, sha256: record.sha256 }));
    req.resume();
  }
}

export function json(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

/** Deterministic bytes: offset-dependent, so a dropped or repeated chunk changes the hash. */
export function pattern(offset: number, length: number): Buffer {
  const buf = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i++) buf[i] = (offset + i) * 31 % 251;
  return buf;
}

function streamBytes(res: http.ServerResponse, total: number): void {
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': total });
  let sent = 0;
  const pump = () => {
    while (sent < total) {
      const n = Math.min(65_536, total - sent);
      const ok = res.write(pattern(sent, n));
      sent += n;
      if (!ok) return void res.once('drain', pump);
    }
    res.end();
  };
  pump();
}

export function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}
