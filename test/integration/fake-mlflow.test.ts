import { createHash, randomBytes } from 'node:crypto';
import { expect } from 'chai';
import { basicGate, bearerGate, startFakeMlflow } from '../fakes/mlflow/index.js';
import type { FakeMlflow } from '../fakes/mlflow/index.js';

const TOKEN = 'fake-mlflow-test-token';
const auth = { authorization: `Bearer ${TOKEN}` };

async function call(server: FakeMlflow, method: string, path: string, body?: unknown, headers: Record<string, string> = auth): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(`${server.url}${path}`, {
    method,
    headers: body === undefined ? headers : { ...headers, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, json: text === '' ? {} : (JSON.parse(text) as Record<string, unknown>) };
}

const sha256 = (buf: Buffer | Uint8Array): string => createHash('sha256').update(buf).digest('hex');

describe('fake MLflow server', () => {
  let server: FakeMlflow;

  before(async () => {
    server = await startFakeMlflow({ gate: bearerGate(TOKEN) });
  });
  after(async () => {
    await server.close();
  });
  beforeEach(async () => {
    await server.reset();
  });

  it('serves the MLflow client tracking workflow with MLflow shapes', async () => {
    const missing = await call(server, 'GET', '/api/2.0/mlflow/experiments/get-by-name?experiment_name=wf');
    expect(missing.status).to.equal(404);
    expect(missing.json.error_code).to.equal('RESOURCE_DOES_NOT_EXIST');
    expect(missing.json.message).to.match(/Could not find experiment with name 'wf'/);

    const created = await call(server, 'POST', '/api/2.0/mlflow/experiments/create', { name: 'wf' });
    expect(created.status).to.equal(200);
    const expId = created.json.experiment_id as string;
    expect(expId).to.equal('1');

    const got = await call(server, 'GET', `/api/2.0/mlflow/experiments/get?experiment_id=${expId}`);
    expect((got.json.experiment as Record<string, unknown>).name).to.equal('wf');
    expect((got.json.experiment as Record<string, unknown>).lifecycle_stage).to.equal('active');

    const runRes = await call(server, 'POST', '/api/2.0/mlflow/runs/create', {
      experiment_id: expId,
      user_id: 'me',
      run_name: 'r1',
      start_time: 1000,
      tags: [{ key: 'team', value: 'ml' }],
    });
    const info = (runRes.json.run as { info: Record<string, unknown> }).info;
    const runId = info.run_id as string;
    expect(info.run_uuid).to.equal(runId);
    expect(info.status).to.equal('RUNNING');
    expect(info.lifecycle_stage).to.equal('active');
    expect(info.artifact_uri).to.equal(`mlflow-artifacts:/${expId}/${runId}/artifacts`);

    expect((await call(server, 'POST', '/api/2.0/mlflow/runs/log-parameter', { run_uuid: runId, run_id: runId, key: 'lr', value: '0.1' })).status).to.equal(200);
    expect((await call(server, 'POST', '/api/2.0/mlflow/runs/log-metric', { run_uuid: runId, run_id: runId, key: 'loss', value: 1.5, timestamp: 5, step: 0 })).status).to.equal(200);
    expect((await call(server, 'POST', '/api/2.0/mlflow/runs/set-tag', { run_uuid: runId, run_id: runId, key: 'stage', value: 'train' })).status).to.equal(200);
    const metrics = Array.from({ length: 300 }, (_, i) => ({ key: 'acc', value: i / 300, timestamp: 10 + i, step: i }));
    expect((await call(server, 'POST', '/api/2.0/mlflow/runs/log-batch', { run_id: runId, metrics, params: [{ key: 'bs', value: '32' }], tags: [] })).status).to.equal(200);

    const fetched = await call(server, 'GET', `/api/2.0/mlflow/runs/get?run_uuid=${runId}&run_id=${runId}`);
    const data = (fetched.json.run as { data: { params: unknown[]; tags: { key: string; value: string }[]; metrics: { key: string; value: number; step: number }[] } }).data;
    expect(data.params).to.deep.include({ key: 'lr', value: '0.1' });
    expect(data.params).to.deep.include({ key: 'bs', value: '32' });
    expect(data.tags).to.deep.include({ key: 'stage', value: 'train' });
    expect(data.tags).to.deep.include({ key: 'mlflow.runName', value: 'r1' });
    expect(data.metrics.find((m) => m.key === 'acc')).to.include({ step: 299 });

    const history = await call(server, 'GET', `/api/2.0/mlflow/metrics/get-history?run_uuid=${runId}&metric_key=acc&run_id=${runId}&max_results=25000`);
    expect((history.json.metrics as unknown[]).length).to.equal(300);

    const updated = await call(server, 'POST', '/api/2.0/mlflow/runs/update', { run_uuid: runId, run_id: runId, status: 'FINISHED', end_time: 2000 });
    expect(updated.json.run_info).to.include({ status: 'FINISHED', end_time: 2000, run_id: runId });

    const search = await call(server, 'POST', '/api/2.0/mlflow/runs/search', {
      experiment_ids: [expId],
      run_view_type: 'ACTIVE_ONLY',
      filter: "tags.stage = 'train' and attributes.status = 'FINISHED'",
      max_results: 10,
      order_by: ['attributes.start_time DESC'],
    });
    expect((search.json.runs as unknown[]).length).to.equal(1);
    const none = await call(server, 'POST', '/api/2.0/mlflow/runs/search', { experiment_ids: [expId], filter: "tags.stage = 'eval'" });
    expect(none.json).to.deep.equal({});
  });

  it('round-trips artifacts byte-exact and lists directories as MLflow does', async () => {
    const body = randomBytes(5 * 1024 * 1024 + 17);
    const base = '/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts';
    const put = await fetch(`${server.url}${base}/model/weights%20v1.bin`, { method: 'PUT', headers: auth, body });
    expect(put.status).to.equal(200);
    expect(await put.json()).to.deep.equal({});

    const listing = await call(server, 'GET', `/api/2.0/mlflow-artifacts/artifacts?path=${encodeURIComponent('1/abc/artifacts')}`);
    expect(listing.json).to.deep.equal({ files: [{ path: 'model', is_dir: true }] });
    const inner = await call(server, 'GET', `/api/2.0/mlflow-artifacts/artifacts?path=${encodeURIComponent('1/abc/artifacts/model')}`);
    expect(inner.json).to.deep.equal({ files: [{ path: 'weights v1.bin', is_dir: false, file_size: body.length }] });
    const ofFile = await call(server, 'GET', `/api/2.0/mlflow-artifacts/artifacts?path=${encodeURIComponent('1/abc/artifacts/model/weights v1.bin')}`);
    expect(ofFile.json).to.deep.equal({});

    const get = await fetch(`${server.url}${base}/model/weights%20v1.bin`, { headers: auth });
    expect(get.status).to.equal(200);
    expect(get.headers.get('content-length')).to.equal(String(body.length));
    expect(sha256(Buffer.from(await get.arrayBuffer()))).to.equal(sha256(body));

    const recorded = server.requests.find((r) => r.method === 'PUT');
    expect(recorded?.bodyBytes).to.equal(body.length);
    expect(recorded?.status).to.equal(200);

    expect((await fetch(`${server.url}${base}/model/weights%20v1.bin`, { method: 'DELETE', headers: auth })).status).to.equal(200);
    const gone = await call(server, 'GET', `${base}/model/weights%20v1.bin`);
    expect(gone.status).to.equal(404);
    expect(gone.json.error_code).to.equal('RESOURCE_DOES_NOT_EXIST');

    const traversal = await call(server, 'PUT', `${base}/..%2F..%2Fescape`, undefined);
    expect(traversal.status).to.equal(400);
    expect(traversal.json.error_code).to.equal('INVALID_PARAMETER_VALUE');
  });

  it('assembles multipart uploads from parts', async () => {
    const p = '1/abc/artifacts/big.bin';
    const create = await call(server, 'POST', `/api/2.0/mlflow-artifacts/mpu/create/${p}`, { path: p, num_parts: 2 });
    const creds = create.json.credentials as { part_number: number; url: string }[];
    expect(creds).to.have.length(2);
    const parts = [randomBytes(1000), randomBytes(333)];
    const etags = [];
    for (const [i, c] of creds.entries()) {
      const res = await fetch(c.url, { method: 'PUT', body: parts[i] });
      expect(res.status).to.equal(200);
      etags.push({ part_number: c.part_number, etag: res.headers.get('etag') });
    }
    const done = await call(server, 'POST', `/api/2.0/mlflow-artifacts/mpu/complete/${p}`, { path: p, upload_id: create.json.upload_id, parts: etags });
    expect(done.status).to.equal(200);
    const got = await fetch(`${server.url}/api/2.0/mlflow-artifacts/artifacts/${p}`, { headers: auth });
    expect(sha256(Buffer.from(await got.arrayBuffer()))).to.equal(sha256(Buffer.concat(parts)));

    const abortUnknown = await call(server, 'POST', `/api/2.0/mlflow-artifacts/mpu/abort/${p}`, { path: p, upload_id: 'nope' });
    expect(abortUnknown.status).to.equal(404);
  });

  it('answers validation errors with MLflow error codes and statuses', async () => {
    const noExp = await call(server, 'GET', '/api/2.0/mlflow/experiments/get');
    expect(noExp.status).to.equal(400);
    expect(noExp.json).to.deep.equal({
      error_code: 'INVALID_PARAMETER_VALUE',
      message: "Missing value for required parameter 'experiment_id'. See the API docs for more information about request parameters.",
    });
    expect((await call(server, 'GET', '/api/2.0/mlflow/experiments/get?experiment_id=99')).status).to.equal(404);
    expect((await call(server, 'GET', '/api/2.0/mlflow/runs/get?run_id=deadbeef')).json.error_code).to.equal('RESOURCE_DOES_NOT_EXIST');

    await call(server, 'POST', '/api/2.0/mlflow/experiments/create', { name: 'dup' });
    const dup = await call(server, 'POST', '/api/2.0/mlflow/experiments/create', { name: 'dup' });
    expect(dup.status).to.equal(400);
    expect(dup.json.error_code).to.equal('RESOURCE_ALREADY_EXISTS');

    const wrongType = await fetch(`${server.url}/api/2.0/mlflow/experiments/create`, { method: 'POST', headers: { ...auth, 'content-type': 'text/plain' }, body: '{"name":"x"}' });
    expect(wrongType.status).to.equal(400);

    const run = await call(server, 'POST', '/api/2.0/mlflow/runs/create', { experiment_id: '1' });
    const runId = ((run.json.run as { info: { run_id: string } }).info.run_id);
    await call(server, 'POST', '/api/2.0/mlflow/runs/log-parameter', { run_id: runId, key: 'p', value: 'a' });
    const changed = await call(server, 'POST', '/api/2.0/mlflow/runs/log-parameter', { run_id: runId, key: 'p', value: 'b' });
    expect(changed.status).to.equal(400);
    expect(changed.json.message).to.match(/Changing param values is not allowed/);
    const badStatus = await call(server, 'POST', '/api/2.0/mlflow/runs/update', { run_id: runId, status: 'DONE' });
    expect(badStatus.json.error_code).to.equal('INVALID_PARAMETER_VALUE');
    const badFilter = await call(server, 'POST', '/api/2.0/mlflow/runs/search', { experiment_ids: ['1'], filter: "attributes.colour = 'red'" });
    expect(badFilter.status).to.equal(400);
    const noTag = await call(server, 'POST', '/api/2.0/mlflow/runs/delete-tag', { run_id: runId, key: 'absent' });
    expect(noTag.status).to.equal(404);
    const unknown = await call(server, 'GET', '/api/2.0/mlflow/nope');
    expect(unknown.status).to.equal(404);
    expect(unknown.json.error_code).to.equal('ENDPOINT_NOT_FOUND');
  });

  it('keeps deleted experiments findable by name and restorable, and hides their runs', async () => {
    const id = (await call(server, 'POST', '/api/2.0/mlflow/experiments/create', { name: 'gone' })).json.experiment_id as string;
    await call(server, 'POST', '/api/2.0/mlflow/runs/create', { experiment_id: id });
    await call(server, 'POST', '/api/2.0/mlflow/experiments/delete', { experiment_id: id });
    const byName = await call(server, 'GET', '/api/2.0/mlflow/experiments/get-by-name?experiment_name=gone');
    expect((byName.json.experiment as Record<string, unknown>).lifecycle_stage).to.equal('deleted');
    const createRun = await call(server, 'POST', '/api/2.0/mlflow/runs/create', { experiment_id: id });
    expect(createRun.status).to.equal(400);
    const recreate = await call(server, 'POST', '/api/2.0/mlflow/experiments/create', { name: 'gone' });
    expect(recreate.json.message).to.match(/deleted state/);
    expect((await call(server, 'POST', '/api/2.0/mlflow/runs/search', { experiment_ids: [id] })).json).to.deep.equal({});
    await call(server, 'POST', '/api/2.0/mlflow/experiments/restore', { experiment_id: id });
    expect(((await call(server, 'POST', '/api/2.0/mlflow/runs/search', { experiment_ids: [id] })).json.runs as unknown[]).length).to.equal(1);
  });

  it('serves /ajax-api/2.0, /api/3.0, /health and /version', async () => {
    const ajax = await call(server, 'POST', '/ajax-api/2.0/mlflow/experiments/search', { max_results: 10 });
    expect((ajax.json.experiments as { name: string }[]).map((e) => e.name)).to.deep.equal(['Default']);
    const model = await call(server, 'POST', '/api/3.0/mlflow/logged-models', { experiment_id: '0', name: 'm' });
    const modelId = (model.json.model as { info: { model_id: string } }).info.model_id;
    const got = await call(server, 'GET', `/api/3.0/mlflow/logged-models/${modelId}`);
    expect((got.json.model as { info: { name: string } }).info.name).to.equal('m');
    const traces = await call(server, 'GET', '/api/3.0/mlflow/traces/whatever');
    expect(traces.status).to.equal(404);
    expect(traces.json.error_code).to.equal('ENDPOINT_NOT_FOUND');
    const health = await fetch(`${server.url}/health`, { headers: auth });
    expect(await health.text()).to.equal('OK');
    expect(await (await fetch(`${server.url}/version`, { headers: auth })).text()).to.equal('2.12.2');
  });

  it('gates every request and records it', async () => {
    const res = await fetch(`${server.url}/api/2.0/mlflow/experiments/get?experiment_id=0`);
    expect(res.status).to.equal(401);
    const wrong = await fetch(`${server.url}/api/2.0/mlflow/experiments/get?experiment_id=0`, { headers: { authorization: 'Bearer other' } });
    expect(wrong.status).to.equal(401);
    await wrong.text();
    await res.text();
    expect(server.requests.map((r) => r.status)).to.deep.equal([401, 401]);
    expect(server.requests[1]!.headers.authorization).to.equal('Bearer other');
    expect(server.requests[0]!.path).to.equal('/api/2.0/mlflow/experiments/get?experiment_id=0');
  });
});

describe('fake MLflow server options', () => {
  it('mounts under a base path and applies basic auth like MLflow\'s auth app', async () => {
    const server = await startFakeMlflow({ basePath: '/mlflow', gate: basicGate('admin', 'pw') });
    try {
      expect(server.url).to.match(/\/mlflow$/);
      const open = await fetch(`${server.url}/health`);
      expect(await open.text()).to.equal('OK');
      const denied = await fetch(`${server.url}/api/2.0/mlflow/experiments/get?experiment_id=0`, { headers: auth });
      expect(denied.status).to.equal(401);
      expect(denied.headers.get('www-authenticate')).to.equal('Basic realm="mlflow"');
      expect(denied.headers.get('content-type')).to.match(/^text\/plain/);
      await denied.text();
      const basic = { authorization: `Basic ${Buffer.from('admin:pw').toString('base64')}` };
      const ok = await call(server, 'GET', '/api/2.0/mlflow/experiments/get?experiment_id=0', undefined, basic);
      expect(ok.status).to.equal(200);
      const outside = await fetch(`http://127.0.0.1:${server.port}/api/2.0/mlflow/experiments/get?experiment_id=0`, { headers: basic });
      expect(outside.status).to.equal(404);
      await outside.text();
    } finally {
      await server.close();
    }
  });

  it('lets a gate script failures such as 503 with Retry-After', async () => {
    let failures = 1;
    const server = await startFakeMlflow({
      gate: () => (failures-- > 0 ? { status: 503, body: 'busy', headers: { 'retry-after': '1' } } : null),
    });
    try {
      const first = await fetch(`${server.url}/api/2.0/mlflow/experiments/get?experiment_id=0`);
      expect(first.status).to.equal(503);
      expect(first.headers.get('retry-after')).to.equal('1');
      await first.text();
      const second = await fetch(`${server.url}/api/2.0/mlflow/experiments/get?experiment_id=0`);
      expect(second.status).to.equal(200);
      await second.text();
    } finally {
      await server.close();
    }
  });
});
