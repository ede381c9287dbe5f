/**
 * Artifact transfer client, run as its own process: PUTs a body generated from one reused 1 MiB block
 * (from nowhere) or GETs one and drops it (to nowhere), `parallel` at once. Optionally reads slowly.
 * argv[2] is a JSON TransferSpec; prints a JSON TransferResult.
 */
import http from 'node:http';

export interface TransferSpec {
  /** Base URL of the candidate; the artifact path is appended. */
  url: string;
  mode: 'put' | 'get';
  bytes: number;
  parallel: number;
  headers: Record<string, string>;
  /** Client reads the download at most this fast (0: as fast as it can). */
  clientReadBps?: number;
  /** Upstream reads the upload at most this fast (0: as fast as it can). */
  upstreamReadBps?: number;
  /** Upstream sends the download as HTTP chunks of this many bytes, as MLflow's server does (0: 1 MiB writes, Content-Length). */
  chunkBytes?: number;
}

export interface TransferResult {
  bytes: number;
  seconds: number;
  mbPerSec: number;
}

const BLOCK = Buffer.alloc(1 << 20, 'kvx-bench-upload-');
const agent = new http.Agent({ keepAlive: false });

function one(spec: TransferSpec, index: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const query = spec.mode === 'get' ? `bytes=${spec.bytes}&chunk_bytes=${spec.chunkBytes ?? 0}` : `slow_read_bps=${spec.upstreamReadBps ?? 0}`;
    const url = new URL(`${spec.url}/api/2.0/mlflow-artifacts/artifacts/1/bench/artifacts/blob-${index}.bin?${query}`);
    const headers: Record<string, string> = { ...spec.headers };
    if (spec.mode === 'put') {
      headers['content-length'] = String(spec.bytes);
      headers['content-type'] = 'application/octet-stream';
    }
    const req = http.request(url, { method: spec.mode === 'put' ? 'PUT' : 'GET', headers, agent }, (res) => {
      let received = 0;
      const rate = spec.clientReadBps ?? 0;
      res.on('data', (chunk: Buffer) => {
        received += chunk.length;
        if (rate > 0) {
          res.pause();
          setTimeout(() => res.resume(), Math.ceil((chunk.length / rate) * 1000));
        }
      });
      res.on('end', () => {
        if (res.statusCode !== 200) return reject(new Error(`${spec.mode} answered ${res.statusCode}`));
        if (spec.mode === 'get' && received !== spec.bytes) return reject(new Error(`got ${received} of ${spec.bytes} bytes`));
        resolve(spec.mode === 'get' ? received : spec.bytes);
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    if (spec.mode === 'get') {
      req.end();
      return;
    }
    let left = spec.bytes;
    const pump = (): void => {
      while (left > 0) {
        const n = Math.min(left, BLOCK.length);
        left -= n;
        if (!req.write(n === BLOCK.length ? BLOCK : BLOCK.subarray(0, n))) {
          req.once('drain', pump);
          return;
        }
      }
      req.end();
    };
    pump();
  });
}

async function main(): Promise<void> {
  const spec = JSON.parse(process.argv[2]!) as TransferSpec;
  const started = process.hrtime.bigint();
  const sizes = await Promise.all(Array.from({ length: spec.parallel }, (_, i) => one(spec, i)));
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const bytes = sizes.reduce((a, b) => a + b, 0);
  const result: TransferResult = { bytes, seconds, mbPerSec: bytes / 1e6 / seconds };
  process.stdout.write(JSON.stringify(result) + '\n');
}

main().catch((err: unknown) => {
  process.stderr.write(`transfer failed: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
