/**
 * Clients for the fault cases: a well-behaved one (node:http, one connection per request, closed after) and the
 * tests' raw HTTP/1.1 client, which writes exactly the bytes a case needs. Everything the proxy answers to
 * either goes to the transcript.
 */
import http from 'node:http';
import { exchange } from '../../helpers/raw-http.js';
import type { ExchangeOptions, Exchanged } from '../../helpers/raw-http.js';
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
export function mlflowError(answer: { status: number; text: string }): { error_code: string; message: string } {
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

/** Writes raw bytes to the proxy and collects its answers (see `exchange`); what came back goes to the transcript. */
export async function raw(port: number, pieces: readonly (string | Buffer)[] | string, options: ExchangeOptions = {}): Promise<Exchanged> {
  const result = await exchange(port, pieces, options);
  const first = typeof pieces === 'string' ? pieces : pieces[0];
  record('body', `raw ${first?.toString().slice(0, 40) ?? ''}`, result.text);
  return result;
}
