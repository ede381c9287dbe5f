import { readFile } from 'node:fs/promises';
import { expect } from 'chai';
import { MlflowClient } from '../../src/mlflow/client.js';
import { startFakeMlflow } from '../fakes/mlflow/index.js';
import { FIXTURE, launchCli, onlyRun, tags, useHarness } from './launch-harness.js';
import type { CliResult, Harness } from './launch-harness.js';

const NOW = () => new Date(Date.UTC(2024, 4, 17, 8, 30, 5));
const JOB_ID = 'spaceflights-20240517083005';
const base = (h: Harness) => ['run', FIXTURE, '-c', h.config, '--param', 'dataset=companies-v2', '--poll-interval', '0.01'];

/** Far below the waits the tests set up (60 s and more), far above what an interrupted launch needs. */
const PROMPTLY_MS = 15_000;

async function until(what: string, condition: () => boolean): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** The launch's outcome, or a failure once PROMPTLY_MS has passed (the code before the fix slept on). */
async function endsPromptly(pending: Promise<CliResult>, started: number): Promise<CliResult> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`kvx-launch was still running ${PROMPTLY_MS} ms after the interrupt`)), PROMPTLY_MS - (Date.now() - started));
  });
  try {
    return await Promise.race([pending, late]);
  } finally {
    clearTimeout(timer);
  }
}

describe('kvx-launch run: retries that cannot duplicate, waits that an interrupt ends', function () {
  this.timeout(30_000);
  const harness = useHarness();
  let h: Harness;
  beforeEach(() => {
    h = harness();
  });

  for (const fault of ['drop', 502] as const) {
    it(`creates exactly one MLflow run when the server made it but the reply was ${fault === 'drop' ? 'lost' : 'a 502'}`, async () => {
      h.mlflow.replyFaults.push({ method: 'POST', endpoint: 'runs/create', fault });
      const res = await launchCli(h, [...base(h), '--json'], { deps: { now: NOW } });
      const run = onlyRun(h);
      expect(res.code, res.stderr).to.equal(0);
      expect(run.info.status).to.equal('RUNNING');
      expect(tags(run)['kvx_create_id']).to.match(/^[0-9a-f-]{36}$/);
      expect(JSON.parse(res.stdout).runId).to.equal(run.info.run_id);
      expect(h.vertex.jobs.get(JOB_ID)!.body['labels']).to.include({ mlflow_run_id: run.info.run_id });
      // The lost create was not sent again: the search found the run it made.
      expect(h.mlflow.requests.filter((r) => r.path.endsWith('/runs/create'))).to.have.length(1);
    });
  }

  it('creates exactly one pipeline job when Vertex made it but the reply was lost', async () => {
    h.vertex.replyFaults.push({ method: 'POST', path: /\/pipelineJobs$/, fault: 'drop' });
    const res = await launchCli(h, [...base(h), '--json'], { deps: { now: NOW } });
    expect(res.code, res.stderr).to.equal(0);
    expect(h.vertex.jobs.size).to.equal(1);
    const run = onlyRun(h);
    expect(tags(run)['vertexai_run_id']).to.equal(`projects/123456789012/locations/europe-west4/pipelineJobs/${JOB_ID}`);
    expect(h.vertex.requests.filter((r) => r.method === 'POST' && r.path.includes('/pipelineJobs?')).map((r) => r.status)).to.deep.equal([0, 409]);
  });

  it('an interrupt cuts a 120 s Retry-After wait short: exit 130, no run, no job', async () => {
    const gated = await startFakeMlflowBehind429(h);
    try {
      const interrupt = new AbortController();
      const started = Date.now();
      const pending = launchCli(h, [...base(h), '--tracking-uri', gated.url], { deps: { now: NOW, interrupt: interrupt.signal } });
      await until('the 429', () => gated.requests.some((r) => r.status === 429));
      interrupt.abort();
      const res = await endsPromptly(pending, started);
      expect(res.code).to.equal(130);
      expect(res.stderr).to.match(/interrupted.*POST runs\/create/);
      expect(gated.store.runs.size).to.equal(0);
      expect(h.vertex.jobs.size).to.equal(0);
    } finally {
      await gated.close();
    }
  });

  it('a run made by a create whose answer was a 502 is found and ended KILLED when an interrupt ends the wait to retry', async () => {
    h.mlflow.replyFaults.push({ method: 'POST', endpoint: 'runs/create', fault: 502 });
    const interrupt = new AbortController();
    const started = Date.now();
    // A minute's wait before the retry, so the interrupt lands in it.
    const pending = launchCli(h, base(h), { env: { MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR: '60' }, deps: { now: NOW, interrupt: interrupt.signal } });
    await until('the 502', () => h.mlflow.requests.some((r) => r.status === 502));
    interrupt.abort();
    const res = await endsPromptly(pending, started);
    expect(res.code).to.equal(130);
    const run = onlyRun(h);
    expect(run.info.status).to.equal('KILLED');
    expect(tags(run)['kvx_launch_error']).to.include('Interrupted before the pipeline job was submitted');
    expect(res.stderr).to.include(`MLflow run ${run.info.run_id} was ended KILLED`);
    expect(h.vertex.jobs.size).to.equal(0);
  });

  it('an interrupt while a pipeline template download waits to retry exits 130, not as a bad template', async () => {
    const uri = `${h.vertex.url}/kfp/my-project/kfp-repo/spaceflights/v3`;
    h.vertex.templates.set(uri, await readFile(FIXTURE, 'utf8'));
    for (let i = 0; i < 5; i++) h.vertex.replyFaults.push({ method: 'GET', path: /^\/kfp\//, fault: 503 });
    const interrupt = new AbortController();
    const started = Date.now();
    const pending = launchCli(h, ['run', uri, '-c', h.config, '--param', 'dataset=x'], { deps: { now: NOW, interrupt: interrupt.signal } });
    await until('the 503', () => h.vertex.requests.some((r) => r.status === 503));
    interrupt.abort();
    const res = await endsPromptly(pending, started);
    expect(res.code, res.stderr).to.equal(130);
    expect(res.stderr).not.to.include('cannot download pipeline template');
    expect(h.mlflow.store.runs.size).to.equal(0);
    expect(h.vertex.jobs.size).to.equal(0);
  });
});

/** A second fake MLflow whose runs/create always answers 429 with a two-minute Retry-After. */
async function startFakeMlflowBehind429(h: Harness): Promise<Awaited<ReturnType<typeof startFakeMlflow>>> {
  return startFakeMlflow({
    gate: (req) => {
      if (req.headers.authorization !== `Bearer ${h.env['TEST_MLFLOW_TOKEN']}`) return { status: 401, body: 'no' };
      if (req.method === 'POST' && (req.url ?? '').endsWith('/runs/create')) return { status: 429, body: 'slow down', headers: { 'retry-after': '120' } };
      return null;
    },
  });
}

describe('MLflow client: what is retried depends on whether a repeat is safe', () => {
  let server: Awaited<ReturnType<typeof startFakeMlflow>>;
  let client: MlflowClient;
  let runId: string;
  before(async () => {
    server = await startFakeMlflow();
    client = new MlflowClient({ trackingUri: server.url, retry: { maxRetries: 3, backoffFactorMs: 1, jitterMs: 0 } });
  });
  after(async () => {
    await server.close();
  });
  beforeEach(async () => {
    await server.reset();
    runId = (await client.createRun({ experimentId: '0' })).info.run_id;
  });

  const logMetric = () => client.call('POST', 'runs/log-metric', { run_id: runId, key: 'loss', value: 0.5, timestamp: 1, step: 0 });
  const history = () => server.store.runs.get(runId)!.metrics.get('loss') ?? [];

  it('does not send a metric again after its reply was lost: the server may have logged it (it did)', async () => {
    server.replyFaults.push({ method: 'POST', endpoint: 'runs/log-metric', fault: 'drop' });
    const err = await logMetric().then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    expect(err?.message).to.match(/runs\/log-metric/);
    expect(history()).to.have.length(1);
    expect(server.requests.filter((r) => r.path.endsWith('/runs/log-metric'))).to.have.length(1);
  });

  it('does not send a metric again after a 502: the server may have logged it (it did)', async () => {
    server.replyFaults.push({ method: 'POST', endpoint: 'runs/log-metric', fault: 502 });
    const err = await logMetric().then(
      () => undefined,
      (e: unknown) => e as { status?: number },
    );
    expect(err?.status).to.equal(502);
    expect(history()).to.have.length(1);
  });

  it('updates a run again after a lost reply: the repeat does the same', async () => {
    server.replyFaults.push({ method: 'POST', endpoint: 'runs/update', fault: 'drop' });
    const info = await client.updateRun(runId, { status: 'FINISHED', endTime: 5 });
    expect(info.status).to.equal('FINISHED');
    expect(server.requests.filter((r) => r.path.endsWith('/runs/update')).map((r) => r.status)).to.deep.equal([0, 200]);
  });
});
