/**
 * The MLflow Python client's tracking workflow, as it goes over the wire (shared/reference/mlflow-client-traffic.md):
 * experiment, run, a parameter, a metric, a tag, a 300-metric batch, the run read back, an artifact uploaded,
 * listed and downloaded (the download streamed as ~255-byte HTTP chunks, as MLflow's server sends it), the run
 * finished, a metric history and a search. One keep-alive connection, requests one after another, the client's
 * own headers. Run as its own process; argv[2] is a JSON WorkflowSpec; prints a JSON WorkflowResult.
 */
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import { RUN_ID, logBatchBody } from './shapes.js';

export interface WorkflowSpec {
  /** Base URL of the candidate. */
  url: string;
  headers: Record<string, string>;
  artifactBytes: number;
  /** HTTP chunk size of the artifact download. */
  chunkBytes: number;
  iterations: number;
}

export interface WorkflowResult {
  /** Seconds per workflow, one per iteration. */
  seconds: number[];
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
const CLIENT_HEADERS = { 'user-agent': 'mlflow-python-client/2.12.2', accept: '*/*', 'accept-encoding': 'gzip, deflate', connection: 'keep-alive' };

function call(spec: WorkflowSpec, method: string, path: string, expect: number, body?: Buffer, json = true): Promise<number> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { ...CLIENT_HEADERS, ...spec.headers };
    if (body) {
      headers['content-length'] = String(body.length);
      headers['content-type'] = json ? 'application/json' : 'application/octet-stream';
    }
    const req = http.request(spec.url + path, { method, headers, agent }, (res) => {
      let received = 0;
      res.on('data', (chunk: Buffer) => (received += chunk.length));
      res.on('end', () => (res.statusCode === expect ? resolve(received) : reject(new Error(`${method} ${path} answered ${res.statusCode}`))));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

const body = (value: unknown): Buffer => Buffer.from(JSON.stringify(value));

async function workflow(spec: WorkflowSpec, artifact: Buffer, batch: Buffer): Promise<void> {
  const api = '/api/2.0/mlflow';
  const run = { run_uuid: RUN_ID, run_id: RUN_ID };
  await call(spec, 'GET', `${api}/experiments/get-by-name?experiment_name=bench`, 404);
  await call(spec, 'POST', `${api}/experiments/create`, 200, body({ name: 'bench' }));
  await call(spec, 'GET', `${api}/experiments/get?experiment_id=1`, 200);
  await call(spec, 'POST', `${api}/runs/create`, 200, body({ experiment_id: '1', user_id: 'bench', run_name: 'bench', start_time: Date.now(), tags: [{ key: 'mlflow.user', value: 'bench' }] }));
  await call(spec, 'POST', `${api}/runs/log-parameter`, 200, body({ ...run, key: 'lr', value: '0.01' }));
  await call(spec, 'POST', `${api}/runs/log-metric`, 200, body({ ...run, key: 'loss', value: 0.5, timestamp: Date.now(), step: 0 }));
  await call(spec, 'POST', `${api}/runs/set-tag`, 200, body({ ...run, key: 'stage', value: 'bench' }));
  await call(spec, 'POST', `${api}/runs/log-batch`, 200, batch);
  await call(spec, 'GET', `${api}/runs/get?run_uuid=${RUN_ID}&run_id=${RUN_ID}`, 200);
  const artifacts = `/api/2.0/mlflow-artifacts/artifacts/1/${RUN_ID}/artifacts/model/weights.bin`;
  await call(spec, 'PUT', artifacts, 200, artifact, false);
  await call(spec, 'GET', `/api/2.0/mlflow-artifacts/artifacts?path=${encodeURIComponent(`1/${RUN_ID}/artifacts/model`)}&bytes=${artifact.length}`, 200);
  // The query tells the stateless bench upstream what to send; MLflow knows it from the file.
  const got = await call(spec, 'GET', `${artifacts}?bytes=${artifact.length}&chunk_bytes=${spec.chunkBytes}`, 200);
  if (got !== artifact.length) throw new Error(`download: got ${got} of ${artifact.length} bytes`);
  await call(spec, 'POST', `${api}/runs/update`, 200, body({ ...run, status: 'FINISHED', end_time: Date.now() }));
  await call(spec, 'GET', `${api}/metrics/get-history?run_uuid=${RUN_ID}&metric_key=m1&run_id=${RUN_ID}&max_results=25000`, 200);
  await call(spec, 'POST', `${api}/runs/search`, 200, body({ experiment_ids: ['1'], run_view_type: 'ACTIVE_ONLY', filter: "tags.stage = 'bench'", max_results: 10, order_by: [] }));
}

async function main(): Promise<void> {
  const spec = JSON.parse(process.argv[2]!) as WorkflowSpec;
  const artifact = randomBytes(spec.artifactBytes);
  const batch = logBatchBody();
  const seconds: number[] = [];
  for (let i = 0; i < spec.iterations; i++) {
    const started = process.hrtime.bigint();
    await workflow(spec, artifact, batch);
    seconds.push(Number(process.hrtime.bigint() - started) / 1e9);
  }
  agent.destroy();
  const result: WorkflowResult = { seconds };
  process.stdout.write(JSON.stringify(result) + '\n');
}

main().catch((err: unknown) => {
  process.stderr.write(`workflow failed: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
