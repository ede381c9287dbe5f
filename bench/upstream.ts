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
const ARTIFACT_LISTING = '/api/2.0/mlflow-artifacts/artifacts?';

/**
 * The rest of the MLflow client's tracking workflow (bench/workflow.ts), with answers shaped as MLflow 2.x
 * sends them. Stateless: the bench times the proxies, not a tracking store.
 */
const json = (value: unknown): Buffer => Buffer.from(JSON.stringify(value));
const RUN_INFO = (JSON.parse(RUN_GET.toString()) as { run: { info: unknown } }).run.info;
const WORKFLOW = new Map<string, { status: number; body: Buffer }>(Object.entries({
  '/api/2.0/mlflow/experiments/get-by-name': {
    status: 404,
    body: json({ error_code: 'RESOURCE_DOES_NOT_EXIST', message: "Could not find experiment with name 'bench'" }),
  },
  '/api/2.0/mlflow/experiments/create': { status: 200, body: json({ experiment_id: '1' }) },
  '/api/2.0/mlflow/experiments/get': {
    status: 200,
    body: json({ experiment: { experiment_id: '1', name: 'bench', artifact_location: 'mlflow-artifacts:/1', lifecycle_stage: 'active', creation_time: 1718101234567, last_update_time: 1718101234567 } }),
  },
  '/api/2.0/mlflow/runs/create': { status: 200, body: RUN_GET },
  '/api/2.0/mlflow/runs/log-parameter': { status: 200, body: EMPTY },
  '/api/2.0/mlflow/runs/log-metric': { status: 200, body: EMPTY },
  '/api/2.0/mlflow/runs/set-tag': { status: 200, body: EMPTY },
  '/api/2.0/mlflow/runs/update': { status: 200, body: json({ run_info: { ...(RUN_INFO as object), status: 'FINISHED', end_time: 1718101299999 } }) },
  '/api/2.0/mlflow/metrics/get-history': {
    status: 200,
    body: json({ metrics: Array.from({ length: 30 }, (_, i) => ({ key: 'm1', value: i / 3, timestamp: 1718101234567 + i, step: i })) }),
  },
  '/api/2.0/mlflow/runs/search': { status: 200, body: json({ runs: [(JSON.parse(RUN_GET.toString()) as { run: unknown }).run] }) },
}));

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

/**
 * How MLflow's server streams an artifact: each piece of the file as its own HTTP chunk, about 255 bytes for
 * binary data (its tracking server iterates the file line by line; see shared/reference). The frames are built
 * once, about 64 KiB of them per block, and written raw, so producing them costs this process next to nothing.
 */
const chunkBlocks = new Map<number, { block: Buffer; perBlock: number }>();
function chunkFrames(chunkBytes: number, count: number): Buffer {
  const frame = Buffer.concat([Buffer.from(`${chunkBytes.toString(16)}\r\n`, 'latin1'), BLOCK.subarray(0, chunkBytes), Buffer.from('\r\n', 'latin1')]);
  return Buffer.concat(Array.from({ length: count }, () => frame));
}

function streamChunked(res: http.ServerResponse, total: number, chunkBytes: number): void {
  let cached = chunkBlocks.get(chunkBytes);
  if (cached === undefined) {
    const perBlock = Math.max(1, Math.floor((64 * 1024) / (chunkBytes + 8)));
    cached = { block: chunkFrames(chunkBytes, perBlock), perBlock };
    chunkBlocks.set(chunkBytes, cached);
  }
  const { block, perBlock } = cached;
  res.writeHead(200, ['content-type', 'application/octet-stream', 'transfer-encoding', 'chunked']);
  // The frames are already in the bytes: node must not frame them again (nor add its own last chunk).
  res.chunkedEncoding = false;
  let left = total;
  const pump = (): void => {
    while (left >= perBlock * chunkBytes) {
      left -= perBlock * chunkBytes;
      if (!res.write(block)) {
        res.once('drain', pump);
        return;
      }
    }
    const whole = Math.floor(left / chunkBytes);
    const rest = left - whole * chunkBytes;
    const tail = [block.subarray(0, whole * (block.length / perBlock))];
    if (rest > 0) tail.push(Buffer.from(`${rest.toString(16)}\r\n`, 'latin1'), BLOCK.subarray(0, rest), Buffer.from('\r\n', 'latin1'));
    tail.push(Buffer.from('0\r\n\r\n', 'latin1'));
    left = 0;
    res.end(Buffer.concat(tail));
  };
  pump();
}

function pathOf(url: string): string {
  const at = url.indexOf('?');
  return at === -1 ? url : url.slice(0, at);
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
    const chunkBytes = queryNumber(url, 'chunk_bytes');
    if (chunkBytes > 0) streamChunked(res, queryNumber(url, 'bytes'), chunkBytes);
    else stream(res, queryNumber(url, 'bytes'));
  } else if (url.startsWith(ARTIFACT_LISTING)) {
    const body = json({ files: [{ path: 'weights.bin', is_dir: false, file_size: queryNumber(url, 'bytes') }] });
    send(res, 200, JSON_HEADERS(body.length), body);
  } else if (WORKFLOW.has(pathOf(url))) {
    const answer = WORKFLOW.get(pathOf(url))!;
    drain(req, 0, () => send(res, answer.status, JSON_HEADERS(answer.body.length), answer.body));
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
