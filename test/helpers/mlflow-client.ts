import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import { expect } from 'chai';

/**
 * Replays what the MLflow 2.12 Python client sends for a tracking workflow (shared/reference/
 * mlflow-client-traffic.md): same paths, bodies, headers and urllib3-style retries on 5xx/429.
 * The Python client itself cannot be installed here, so this is its stand-in on the wire.
 */
export class MlflowClientEmulator {
  private readonly agent = new http.Agent({ keepAlive: true, maxSockets: 10 });
  readonly statuses: number[] = [];

  constructor(private readonly trackingUri: string) {}

  close(): void {
    this.agent.destroy();
  }

  async call(method: string, path: string, body?: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    for (let attempt = 0; ; attempt++) {
      const res = await this.send(method, path, payload, body === undefined ? {} : { 'content-type': 'application/json' });
      this.statuses.push(res.status);
      if ([429, 500, 502, 503, 504].includes(res.status) && attempt < 5) {
        await new Promise((r) => setTimeout(r, 50 * 2 ** attempt));
        continue;
      }
      const text = res.body.toString('utf8');
      return { status: res.status, json: text ? (JSON.parse(text) as Record<string, unknown>) : {} };
    }
  }

  async ok(method: string, path: string, body?: unknown): Promise<Record<string, unknown>> {
    const res = await this.call(method, path, body);
    expect(res.status, `${method} ${path}: ${JSON.stringify(res.json)}`).to.equal(200);
    return res.json;
  }

  send(method: string, path: string, body: Buffer | undefined, headers: Record<string, string> = {}): Promise<{ status: number; body: Buffer; headers: http.IncomingHttpHeaders }> {
    return new Promise((resolve, reject) => {
      const req = http.request(
        this.trackingUri + path,
        {
          method,
          agent: this.agent,
          headers: {
            'user-agent': 'mlflow-python-client/2.12.2',
            accept: '*/*',
            'accept-encoding': 'gzip, deflate',
            connection: 'keep-alive',
            ...(body ? { 'content-length': body.length } : {}),
            ...headers,
          },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks), headers: res.headers }));
          res.on('error', reject);
        },
      );
      req.on('error', reject);
      req.end(body);
    });
  }
}

export interface WorkflowResult {
  experimentId: string;
  runId: string;
  artifactSha256: string;
}

/** Experiment, run, params, a 300-metric batch, tags, an artifact up and down, search: the whole workflow. */
export async function runTrackingWorkflow(client: MlflowClientEmulator, options: { artifactBytes?: number; experimentName?: string } = {}): Promise<WorkflowResult> {
  const name = options.experimentName ?? `exp-${randomBytes(4).toString('hex')}`;
  const missing = await client.call('GET', `/api/2.0/mlflow/experiments/get-by-name?experiment_name=${encodeURIComponent(name)}`);
  expect(missing.status).to.equal(404);
  expect(missing.json['error_code']).to.equal('RESOURCE_DOES_NOT_EXIST');
  const { experiment_id: experimentId } = (await client.ok('POST', '/api/2.0/mlflow/experiments/create', { name })) as { experiment_id: string };
  await client.ok('GET', `/api/2.0/mlflow/experiments/get?experiment_id=${experimentId}`);
  const created = (await client.ok('POST', '/api/2.0/mlflow/runs/create', {
    experiment_id: experimentId,
    user_id: 'tester',
    run_name: 'workflow',
    start_time: Date.now(),
    tags: [{ key: 'mlflow.user', value: 'tester' }],
  })) as { run: { info: { run_id: string } } };
  const runId = created.run.info.run_id;
  await client.ok('POST', '/api/2.0/mlflow/runs/log-parameter', { run_uuid: runId, run_id: runId, key: 'lr', value: '0.01' });
  await client.ok('POST', '/api/2.0/mlflow/runs/log-metric', { run_uuid: runId, run_id: runId, key: 'loss', value: 0.5, timestamp: Date.now(), step: 0 });
  await client.ok('POST', '/api/2.0/mlflow/runs/set-tag', { run_uuid: runId, run_id: runId, key: 'stage', value: 'test' });
  const metrics = Array.from({ length: 300 }, (_, i) => ({ key: `m${i % 10}`, value: i / 3, timestamp: Date.now(), step: i }));
  await client.ok('POST', '/api/2.0/mlflow/runs/log-batch', { run_id: runId, metrics, params: [{ key: 'epochs', value: '30' }], tags: [{ key: 'batch', value: 'yes' }] });
  const run = (await client.ok('GET', `/api/2.0/mlflow/runs/get?run_uuid=${runId}&run_id=${runId}`)) as { run: { info: { artifact_uri: string } } };
  const artifactPath = run.run.info.artifact_uri.replace(/^mlflow-artifacts:/, '');

  const artifact = randomBytes(options.artifactBytes ?? 20 * 1024 * 1024);
  const sha = createHash('sha256').update(artifact).digest('hex');
  const put = await client.send('PUT', `/api/2.0/mlflow-artifacts/artifacts${artifactPath}/model/weights.bin`, artifact, { 'content-type': 'application/octet-stream' });
  expect(put.status, put.body.toString()).to.equal(200);
  const listing = await client.ok('GET', `/api/2.0/mlflow-artifacts/artifacts?path=${encodeURIComponent(`${artifactPath.slice(1)}/model`)}`);
  expect(listing['files']).to.deep.include({ path: 'weights.bin', is_dir: false, file_size: artifact.length });
  const got = await client.send('GET', `/api/2.0/mlflow-artifacts/artifacts${artifactPath}/model/weights.bin`, undefined);
  expect(got.status).to.equal(200);
  expect(createHash('sha256').update(got.body).digest('hex')).to.equal(sha);

  await client.ok('POST', '/api/2.0/mlflow/runs/update', { run_uuid: runId, run_id: runId, status: 'FINISHED', end_time: Date.now() });
  const history = (await client.ok('GET', `/api/2.0/mlflow/metrics/get-history?run_uuid=${runId}&metric_key=m1&run_id=${runId}&max_results=25000`)) as { metrics: unknown[] };
  expect(history.metrics).to.have.length(30);
  const search = (await client.ok('POST', '/api/2.0/mlflow/runs/search', {
    experiment_ids: [experimentId],
    run_view_type: 'ACTIVE_ONLY',
    filter: "tags.stage = 'test'",
    max_results: 10,
    order_by: [],
  })) as { runs: { info: { run_id: string; status: string } }[] };
  expect(search.runs.map((r) => r.info.run_id)).to.deep.equal([runId]);
  expect(search.runs[0]!.info.status).to.equal('FINISHED');
  return { experimentId, runId, artifactSha256: sha };
}
