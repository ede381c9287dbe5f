/**
 * Clients for the fault cases: a well-behaved one (node:http, one connection per request, closed after) and a
 * raw one that writes exactly the bytes a case needs. Everything the proxy answers goes to the transcript.
 */
import http from 'node:http';
import net from 'node:net';
import { record } from './transcript.js';

export interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  text: string;
}

export interface RequestOptions {
  method?: string;
  headers?: Record<string, string | number>;
  body?: Buffer | string;
  timeoutMs?: number;
  /** Keep the connection after the answer (the default closes it so socket counts settle). */
  agent?: http.Agent;
}

export function request(base: string, path: string, options: RequestOptions = {}): Promise<Answer> {
  const url = new URL(path, base);
  return new Promise<Answer>((resolve, reject) => {
    const req = http.request(
      {
        host: url.hostname,
        port: url.port,
        path: path,
        method: options.method ?? 'GET',
        headers: options.agent ? options.headers : { connection: 'close', ...options.headers },
        agent: options.agent ?? false,
        timeout: options.timeoutMs ?? 15_000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const body = Buffer.concat(chunks);
          const answer = { status: res.statusCode ?? 0, headers: res.headers, body, text: body.length < 1_000_000 ? body.toString('utf8') : '' };
          if (body.length < 256 * 1024) record('body', `${options.method ?? 'GET'} ${path}`, answer.text);
          resolve(answer);
        });
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no answer within ${options.timeoutMs ?? 15_000} ms`)));
    req.on('error', reject);
    req.end(options.body);
  });
}

/** The MLflow error shape every proxy-made error must have; returns the parsed body. */
export function mlflowError(answer: Answer): { error_code: string; message: string } {
  let parsed: unknown;
  try {
    parsed = JSON.parse(answer.text);
  } catch {
    throw new Error(`expected an MLflow error body, got ${answer.status} ${JSON.stringify(answer.text.slice(0, 200))}`);
  }
  const body = parsed as { error_code?: unknown; message?: unknown };
  if (typeof body.error_code !== 'string' || typeof body.message !== 'string') {
    throw new Error(`expected {"error_code","message"}, got ${answer.text.slice(0, 200)}`);
  }
  return body as { error_code: string; message: string };
}

export interface RawOptions {
  /** Write these pieces with `gapMs` between them (slowloris, split bodies). */
  gapMs?: number;
  /** Stop reading after this long even if the server keeps the connection open. */
  waitMs?: number;
  /** Half-close after writing (the server sees EOF). */
  endAfterWrite?: boolean;
}

export interface RawResult {
  data: Buffer;
  text: string;
  /** The server closed the connection (rather than our timer ending the wait). */
  closedByServer: boolean;
  error: string | undefined;
}

/** Writes raw bytes to the proxy and collects whatever comes back until the server closes or `waitMs` passes. */
export function raw(port: number, pieces: (string | Buffer)[] | string, options: RawOptions = {}): Promise<RawResult> {
  const parts = typeof pieces === 'string' ? [pieces] : pieces;
  return new Promise<RawResult>((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    let closedByServer = false;
    let error: string | undefined;
    let timer: NodeJS.Timeout | undefined;
    let writer: NodeJS.Timeout | undefined;
    const done = () => {
      clearTimeout(timer);
      clearTimeout(writer);
      socket.destroy();
      const data = Buffer.concat(chunks);
      const text = data.toString('latin1');
      record('body', `raw ${parts[0]?.toString().slice(0, 40) ?? ''}`, text);
      resolve({ data, text, closedByServer, error });
    };
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('end', () => {
      closedByServer = true;
      done();
    });
    socket.on('close', () => {
      closedByServer ||= error !== undefined;
      done();
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      error = err.code ?? err.message;
    });
    socket.on('connect', () => {
      let i = 0;
      const writeNext = () => {
        if (socket.destroyed) return;
        if (i >= parts.length) {
          if (options.endAfterWrite) socket.end();
          return;
        }
        socket.write(parts[i++]!);
        if (options.gapMs) writer = setTimeout(writeNext, options.gapMs);
        else writeNext();
      };
      writeNext();
      timer = setTimeout(done, options.waitMs ?? 5000);
    });
  });
}

/** Status codes of the HTTP/1.1 responses in a raw byte stream, in order. */
export function statusLines(text: string): number[] {
  // Not anchored to a line start: a pipelined answer follows the previous body directly.
  return [...text.matchAll(/HTTP\/1\.[01] (\d{3}) [A-Z][A-Za-z -]*\r\n/g)].map((m) => Number(m[1]));
}

/** Splits one raw response into status, headers and body (by Content-Length). */
export function parseRaw(text: string): { status: number; headers: Record<string, string>; body: string } | undefined {
  const end = text.indexOf('\r\n\r\n');
  if (end === -1) return undefined;
  const [statusLine, ...lines] = text.slice(0, end).split('\r\n');
  const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(statusLine ?? '')?.[1] ?? 0);
  const headers: Record<string, string> = {};
  for (const line of lines) {
    const colon = line.indexOf(':');
    headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  const length = Number(headers['content-length'] ?? 0);
  return { status, headers, body: text.slice(end + 4, end + 4 + length) };
}
