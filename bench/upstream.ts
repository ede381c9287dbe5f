/**
 * The benchmark's MLflow stand-in. It must never be the bottleneck, so every answer is a buffer built at
 * start and the handler does the least it can: compare one header, pick a route by a prefix, write.
 * Started as its own process by bench/run.ts; prints {"port": N} on stdout once listening.
 */
import http from 'node:http';
import { runGetBody } from './shapes.js';

const token = process.env['BENCH_TOKEN'] ?? '';
const expected = `Bearer ${token}`;
/** The Google candidate sends an ID token minted by the fakes: a JWT, which always starts with "eyJ". */
const acceptJwt = process.env['BENCH_ACCEPT_JWT'] === '1';
const authorized = (value: string | undefined): boolean =>
  value === expected || (acceptJwt && value !== undefined && value.startsWith('Bearer eyJ') && value.length > 100);

const RUN_GET = runGetBody();
const JSON_HEADERS = (length: number) => ['content-type', 'application/json', 'content-length', String(length)];
const RUN_GET_HEADERS = JSON_HEADERS(RUN_GET.length);
const EMPTY = Buffer.from('{}');
const EMPTY_HEADERS = JSON_HEADERS(EMPTY.length);
const UNAUTHORIZED = Buffer.from('{"error_code":"UNAUTHENTICATED","message":"missing or wrong credentials"}');
const UNAUTHORIZED_HEADERS = JSON_HEADERS(UNAUTHORIZED.length);
const NOT_FOUND = Buffer.from('{"error_code":"ENDPOINT_NOT_FOUND","message":"no such endpoint"}');
const NOT_FOUND_HEADERS = JSON_HEADERS(NOT_FOUND.length);
/** Artifact downloads are cut from one 1 MiB block. */
const BLOCK = Buffer.alloc(1 << 20, 'kvx-bench-artifact-');

const ARTIFACTS = '/api/2.0/mlflow-artifacts/artifacts/';

function send(res: http.ServerResponse, status: number, headers: string[], body: Buffer): void {
  res.writeHead(status, headers);
  res.end(body);
}

/** Reads and drops a request body; `bytesPerSec` > 0 reads it slowly (a congested upstream). */
function drain(req: http.IncomingMessage, bytesPerSec: number, done: (bytes: number) => void): void {
  let bytes = 0;
  req.on('data', (chunk: Buffer) => {
    bytes += chunk.length;
    if (bytesPerSec > 0) {
      req.pause();
      setTimeout(() => req.resume(), Math.ceil((chunk.length / bytesPerSec) * 1000));
    }
  });
  req.on('end', () => done(bytes));
}

/** Streams `total` bytes with backpressure. */
function stream(res: http.ServerResponse, total: number): void {
  res.writeHead(200, ['content-type', 'application/octet-stream', 'content-length', String(total)]);
  let left = total;
  const pump = (): void => {
    while (left > 0) {
      const n = Math.min(left, BLOCK.length);
      left -= n;
      const more = res.write(n === BLOCK.length ? BLOCK : BLOCK.subarray(0, n));
      if (!more) {
        res.once('drain', pump);
        return;
      }
    }
    res.end();
  };
  pump();
}

function queryNumber(url: string, key: string): number {
  const at = url.indexOf(key + '=');
  if (at === -1) return 0;
  return Number.parseInt(url.slice(at + key.length + 1), 10) || 0;
}

const server = http.createServer({ keepAliveTimeout: 120_000, noDelay: true }, (req, res) => {
  if (!authorized(req.headers.authorization)) {
    req.resume();
    send(res, 401, UNAUTHORIZED_HEADERS, UNAUTHORIZED);
    return;
  }
  const url = req.url!;
  if (url.startsWith('/api/2.0/mlflow/runs/get')) {
    send(res, 200, RUN_GET_HEADERS, RUN_GET);
  } else if (url.startsWith('/api/2.0/mlflow/runs/log-batch')) {
    drain(req, 0, () => send(res, 200, EMPTY_HEADERS, EMPTY));
  } else if (url.startsWith(ARTIFACTS) && req.method === 'PUT') {
    drain(req, queryNumber(url, 'slow_read_bps'), () => send(res, 200, EMPTY_HEADERS, EMPTY));
  } else if (url.startsWith(ARTIFACTS) && req.method === 'GET') {
    stream(res, queryNumber(url, 'bytes'));
  } else {
    req.resume();
    send(res, 404, NOT_FOUND_HEADERS, NOT_FOUND);
  }
});
server.keepAliveTimeout = 120_000;
server.listen(0, '127.0.0.1', () => {
  const address = server.address();
  process.stdout.write(JSON.stringify({ port: typeof address === 'object' && address ? address.port : 0 }) + '\n');
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
