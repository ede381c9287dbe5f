import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { expect } from 'chai';
import { MlflowClient } from '../../src/mlflow/client.js';
import { FIXTURE, MLFLOW_TOKEN, launchCli, onlyRun, useHarness, tags } from './launch-harness.js';
import type { Harness } from './launch-harness.js';

const NOW = () => new Date(Date.UTC(2024, 4, 17, 8, 30, 5));
const JOB_ID = 'spaceflights-20240517083005';

describe('kvx-launch follow and start-run', () => {
  const harness = useHarness();
  let h: Harness;
  beforeEach(() => {
    h = harness();
  });

  const submit = async () => {
    const res = await launchCli(h, ['run', FIXTURE, '-c', h.config, '--param', 'dataset=x'], { deps: { now: NOW } });
    expect(res.code).to.equal(0);
    return onlyRun(h);
  };

  it('follow finds the run through the job label and mirrors a failure', async () => {
    h.vertex.nextOutcome = { failAt: 'create-model-input-table', error: 'KeyError: shuttles' };
    const run = await submit();
    const res = await launchCli(h, ['follow', JOB_ID, '-c', h.config, '--poll-interval', '0.01', '--json']);
    expect(res.code).to.equal(1);
    expect(JSON.parse(res.stdout)).to.include({ state: 'FAILED', runStatus: 'FAILED', runId: run.info.run_id });
    expect(run.info.status).to.equal('FAILED');
    expect(tags(run)).to.include({ vertexai_failed_task: 'create-model-input-table', vertexai_failed_task_error: 'KeyError: shuttles' });
  });

  it('follow exits 0 only for SUCCEEDED and accepts the full resource name', async () => {
    const run = await submit();
    const res = await launchCli(h, ['follow', `projects/my-project/locations/europe-west4/pipelineJobs/${JOB_ID}`, '-c', h.config, '--poll-interval', '0.01']);
    expect(res.code).to.equal(0);
    expect(run.info.status).to.equal('FINISHED');
    expect(res.stdout).to.include(`job ${JOB_ID} SUCCEEDED; MLflow run ${run.info.run_id} FINISHED`);
  });

  it('interrupting follow leaves the job and keeps its run RUNNING on purpose', async () => {
    h.vertex.nextOutcome = { stayRunning: true };
    const run = await submit();
    const interrupt = new AbortController();
    const pending = launchCli(h, ['follow', JOB_ID, '-c', h.config, '--poll-interval', '0.01'], { deps: { interrupt: interrupt.signal } });
    while ((h.vertex.jobs.get(JOB_ID)?.gets ?? 0) < 4) await new Promise((r) => setTimeout(r, 5));
    interrupt.abort();
    const res = await pending;
    expect(res.code).to.equal(130);
    expect(h.vertex.jobs.get(JOB_ID)!.cancelRequested).to.equal(false);
    expect(run.info.status).to.equal('RUNNING');
    expect(tags(run)['vertexai_job_state']).to.equal('RUNNING');
    expect(res.stderr).to.include('keeps running');
  });

  it('follow of an unknown job names the job and what to check', async () => {
    const res = await launchCli(h, ['follow', 'no-such-job', '-c', h.config]);
    expect(res.code).to.equal(1);
    expect(res.stderr).to.include('404 NOT_FOUND');
    expect(res.stderr).to.include('hint: check vertex.projectId, vertex.region and the job id');
  });

  it('start-run twice for the same job yields one run, and writes the run id', async () => {
    const out1 = path.join(h.dir, 'outputs', 'a', 'run_id');
    const out2 = path.join(h.dir, 'outputs', 'b', 'run_id');
    const resourceName = `projects/123456789012/locations/europe-west4/pipelineJobs/${JOB_ID}`;
    const args = ['start-run', '-c', h.config, '--job-name', JOB_ID, '--job-id', resourceName];
    const first = await launchCli(h, [...args, '--output', out1]);
    const second = await launchCli(h, [...args, '--output', out2, '--json']);
    expect(first.code).to.equal(0);
    expect(second.code).to.equal(0);
    const run = onlyRun(h);
    expect(await readFile(out1, 'utf8')).to.equal(run.info.run_id);
    expect(await readFile(out2, 'utf8')).to.equal(run.info.run_id);
    expect(JSON.parse(second.stdout)).to.include({ runId: run.info.run_id, how: 'reused' });
    expect(tags(run)).to.include({ vertexai_job_name: JOB_ID, vertexai_run_id: resourceName, vertexai_job_resource_name: resourceName });
  });

  it('start-run resumes MLFLOW_RUN_ID and rejects one the server does not have', async () => {
    const run = await submit();
    const res = await launchCli(h, ['start-run', '-c', h.config, '--job-name', JOB_ID], { env: { MLFLOW_RUN_ID: run.info.run_id } });
    expect(res.code).to.equal(0);
    expect(res.stdout.trim()).to.equal(run.info.run_id);
    expect(h.mlflow.store.runs.size).to.equal(1);
    const bad = await launchCli(h, ['start-run', '-c', h.config], { env: { MLFLOW_RUN_ID: 'f'.repeat(32) } });
    expect(bad.code).to.equal(1);
    expect(bad.stderr).to.include('MLFLOW_RUN_ID names run ffffffff');
  });

  it('start-run refuses an unfilled placeholder', async () => {
    const res = await launchCli(h, ['start-run', '-c', h.config, '--job-name', '{{$.pipeline_job_name}}']);
    expect(res.code).to.equal(1);
    expect(res.stderr).to.include('--job-name "{{$.pipeline_job_name}}" is an unfilled placeholder');
    expect(h.mlflow.store.runs.size).to.equal(0);
  });

  it('start-run keeps one run when two step retries race', async () => {
    const env = { TEST_MLFLOW_TOKEN: MLFLOW_TOKEN };
    const args = ['start-run', '-c', h.config, '--job-name', 'race-job-1', '--json'];
    const [a, b] = await Promise.all([launchCli(h, args, { env }), launchCli(h, args, { env })]);
    expect(a.code).to.equal(0);
    expect(b.code).to.equal(0);
    const active = [...h.mlflow.store.runs.values()].filter((r) => r.info.lifecycle_stage === 'active');
    expect(active).to.have.length(1);
    expect(JSON.parse(a.stdout).runId).to.equal(active[0]!.info.run_id);
    expect(JSON.parse(b.stdout).runId).to.equal(active[0]!.info.run_id);
  });
});

describe('MLflow client retries and credential refresh', () => {
  it('retries 503 honouring Retry-After, refreshes once on 401, and reports MLflow errors with their code', async () => {
    const { startFakeMlflow } = await import('../fakes/mlflow/index.js');
    let token = 'old';
    let unavailable = 1;
    const server = await startFakeMlflow({
      gate: (req) => {
        if (req.headers.authorization !== 'Bearer new') return { status: 401, body: 'expired' };
        if (unavailable-- > 0) return { status: 503, body: 'busy', headers: { 'retry-after': '0' } };
        return null;
      },
    });
    try {
      const invalidated: string[] = [];
      const client = new MlflowClient({
        trackingUri: server.url,
        retry: { maxRetries: 3, backoffFactorMs: 1, jitterMs: 0 },
        headers: {
          headers: () => ({ authorization: `Bearer ${token}` }),
          invalidate: async (sent) => {
            invalidated.push(sent['authorization']!);
            token = 'new';
          },
        },
      });
      const id = await client.createExperiment('retry-exp');
      expect(id).to.equal('1');
      expect(invalidated).to.deep.equal(['Bearer old']);
      expect(server.requests.map((r) => r.status)).to.deep.equal([401, 503, 200]);
      try {
        await client.getRun('missing');
        expect.fail('expected an error');
      } catch (err) {
        expect((err as { code: string }).code).to.equal('KVX_MLFLOW_API');
        expect((err as Error).message).to.equal('MLflow GET runs/get failed with 404 RESOURCE_DOES_NOT_EXIST: Run with id=missing not found');
      }
    } finally {
      await server.close();
    }
  });
});
