import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { expect } from 'chai';
import { FIXTURE, MLFLOW_TOKEN, PIPELINE_SA, launchCli, onlyRun, startHarness, useHarness, tags } from './launch-harness.js';
import type { Harness } from './launch-harness.js';

const NOW = () => new Date(Date.UTC(2024, 4, 17, 8, 30, 5));
const JOB_ID = 'spaceflights-20240517083005';
const base = (h: Harness) => ['run', FIXTURE, '-c', h.config, '--param', 'dataset=companies-v2', '--poll-interval', '0.01'];

describe('kvx-launch run (end to end against the fakes)', () => {
  const harness = useHarness();
  let h: Harness;
  beforeEach(() => {
    h = harness();
  });

  it('creates exactly one run and one job that point at each other', async () => {
    const res = await launchCli(h, [...base(h), '--param', 'epochs=20', '--param', 'use_gpu=true', '--param', 'features=["engines","crew"]', '--json'], { deps: { now: NOW } });
    expect(res.stderr).to.equal('');
    expect(res.code).to.equal(0);

    const run = onlyRun(h);
    expect(h.vertex.jobs.size).to.equal(1);
    const job = h.vertex.jobs.get(JOB_ID)!;
    const runId = run.info.run_id;
    const resourceName = `projects/123456789012/locations/europe-west4/pipelineJobs/${JOB_ID}`;

    const out = JSON.parse(res.stdout) as Record<string, string>;
    expect(out).to.include({ jobId: JOB_ID, jobName: resourceName, runId, experimentId: run.info.experiment_id });
    expect(out['consoleUrl']).to.equal(`https://console.cloud.google.com/vertex-ai/locations/europe-west4/pipelines/runs/${JOB_ID}?project=my-project`);
    expect(out['runUrl']).to.equal(`${h.mlflow.url}/#/experiments/${run.info.experiment_id}/runs/${runId}`);

    expect(h.mlflow.store.experimentByName('spaceflights')?.experiment_id).to.equal(run.info.experiment_id);
    expect(run.info.status).to.equal('RUNNING');
    expect(run.info.run_name).to.equal(JOB_ID);
    expect(tags(run)).to.include({
      vertexai_job_name: JOB_ID,
      vertexai_run_id: resourceName,
      vertexai_job_resource_name: resourceName,
      vertexai_job_console_url: out['consoleUrl'],
      vertexai_project: 'my-project',
      vertexai_region: 'europe-west4',
      vertexai_pipeline_name: 'spaceflights',
      vertexai_job_state: 'QUEUED',
    });

    const body = job.body as { displayName: string; runtimeConfig: { gcsOutputDirectory: string; parameterValues: Record<string, unknown> }; labels: Record<string, string>; serviceAccount: string; network: string; pipelineSpec: { root: { dag: { tasks: Record<string, { cachingOptions: unknown }> } } } };
    expect(body.displayName).to.equal(JOB_ID);
    expect(body.runtimeConfig.gcsOutputDirectory).to.equal('gs://my-bucket/pipelines');
    expect(body.runtimeConfig.parameterValues).to.deep.equal({ dataset: 'companies-v2', epochs: 20, use_gpu: true, features: ['engines', 'crew'], mlflow_run_id: runId });
    expect(body.labels).to.deep.equal({ team: 'ml-platform', mlflow_run_id: runId, mlflow_experiment_id: run.info.experiment_id });
    expect(body.serviceAccount).to.equal(PIPELINE_SA);
    expect(body.network).to.equal('projects/123456789012/global/networks/ml-vpc');
    for (const task of Object.values(body.pipelineSpec.root.dag.tasks)) expect(task.cachingOptions).to.deep.equal({ enableCache: false });

    // Every MLflow call carried the gate's token; Vertex calls carried a metadata-server access token.
    expect(h.mlflow.requests.every((r) => r.headers.authorization === `Bearer ${MLFLOW_TOKEN}`)).to.equal(true);
    expect(h.mlflow.requests.map((r) => `${r.method} ${r.path.split('?')[0]} ${r.status}`)).to.deep.equal([
      'GET /api/2.0/mlflow/experiments/get-by-name 404',
      'POST /api/2.0/mlflow/experiments/create 200',
      'POST /api/2.0/mlflow/runs/create 200',
      'POST /api/2.0/mlflow/runs/log-batch 200',
    ]);
    expect(h.vertex.requests.map((r) => `${r.method} ${r.status}`)).to.deep.equal(['POST 200']);
    expect(h.vertex.requests[0]!.path).to.equal(`/v1/projects/my-project/locations/europe-west4/pipelineJobs?pipelineJobId=${JOB_ID}`);
  });

  it('prints the job id, console link and run link for people', async () => {
    const res = await launchCli(h, base(h), { deps: { now: NOW } });
    expect(res.code).to.equal(0);
    const run = onlyRun(h);
    expect(res.stdout).to.include(`submitted pipeline job ${JOB_ID}`);
    expect(res.stdout).to.include('console:    https://console.cloud.google.com/vertex-ai/locations/europe-west4/pipelines/runs/');
    expect(res.stdout).to.include(`MLflow run: ${run.info.run_id}`);
    expect(res.stdout).not.to.include(MLFLOW_TOKEN);
  });

  it('run --wait mirrors SUCCEEDED as FINISHED with the last task and end time', async () => {
    const res = await launchCli(h, [...base(h), '--wait'], { deps: { now: NOW } });
    expect(res.code).to.equal(0);
    const run = onlyRun(h);
    const job = h.vertex.jobs.get(JOB_ID)!;
    expect(job.state).to.equal('PIPELINE_STATE_SUCCEEDED');
    expect(run.info.status).to.equal('FINISHED');
    expect(run.info.end_time).to.equal(Date.parse(job.endTime!));
    expect(tags(run)).to.include({ vertexai_job_state: 'SUCCEEDED', vertexai_last_task: 'evaluate-model' });
    expect(tags(run)).not.to.have.property('vertexai_failed_task');
    expect(res.stderr).to.match(/job spaceflights-20240517083005 RUNNING/);
    expect(res.stderr).to.match(/task train-model SUCCEEDED/);
    expect(res.stdout).to.include('job state:  SUCCEEDED (MLflow run FINISHED)');
  });

  it('run --wait on a job failing at a task ends the run FAILED with that task and its error tagged', async () => {
    h.vertex.nextOutcome = { failAt: 'train-model', error: 'ValueError: learning rate must be positive' };
    const res = await launchCli(h, [...base(h), '--wait', '--json'], { deps: { now: NOW } });
    expect(res.code).to.equal(1);
    const run = onlyRun(h);
    expect(run.info.status).to.equal('FAILED');
    expect(run.info.end_time).to.be.a('number');
    expect(tags(run)).to.include({
      vertexai_job_state: 'FAILED',
      vertexai_last_task: 'train-model',
      vertexai_failed_task: 'train-model',
      vertexai_failed_task_error: 'ValueError: learning rate must be positive',
    });
    expect(tags(run)['vertexai_job_error']).to.match(/The failed tasks are: \[train-model\]/);
    expect(JSON.parse(res.stdout)).to.include({ state: 'FAILED', runStatus: 'FAILED' });
  });

  it('a submission rejected by the API ends the run FAILED with Google\'s message recorded', async () => {
    h.vertex.failNextCreate = { code: 403, status: 'PERMISSION_DENIED', message: "Permission 'aiplatform.pipelineJobs.create' denied on resource '//aiplatform.googleapis.com/projects/my-project/locations/europe-west4' (or it may not exist)." };
    const res = await launchCli(h, base(h), { deps: { now: NOW } });
    expect(res.code).to.equal(1);
    expect(h.vertex.jobs.size).to.equal(0);
    const run = onlyRun(h);
    expect(run.info.status).to.equal('FAILED');
    expect(run.info.end_time).to.be.a('number');
    expect(tags(run)['vertexai_job_state']).to.equal('SUBMISSION_FAILED');
    expect(tags(run)['kvx_launch_error']).to.include("Permission 'aiplatform.pipelineJobs.create' denied");
    expect(tags(run)['mlflow.note.content']).to.include('kvx-launch ended this run FAILED');
    expect(res.stderr).to.include('Vertex AI pipelineJobs.create failed with 403 PERMISSION_DENIED');
    expect(res.stderr).to.include(`MLflow run ${run.info.run_id} was ended FAILED`);
    expect(res.stderr).to.match(/hint: the caller needs Vertex AI User \(roles\/aiplatform\.user\)/);
  });

  it('an API that is not enabled gets the enable hint', async () => {
    h.vertex.failNextCreate = {
      code: 403,
      status: 'PERMISSION_DENIED',
      message: 'Vertex AI API has not been used in project 123456789012 before or it is disabled. Enable it by visiting the console then retry.',
    };
    const res = await launchCli(h, base(h), { deps: { now: NOW } });
    expect(res.code).to.equal(1);
    expect(res.stderr).to.include('hint: enable the API: gcloud services enable aiplatform.googleapis.com --project my-project');
    expect(onlyRun(h).info.status).to.equal('FAILED');
  });

  it('a service account the caller cannot act as is rejected by the API and explained', async () => {
    const res = await launchCli(h, [...base(h), '--service-account', 'other-runner@my-project.iam.gserviceaccount.com'], { deps: { now: NOW } });
    expect(res.code).to.equal(1);
    expect(res.stderr).to.include('iam.serviceAccounts.actAs');
    expect(res.stderr).to.include('Service Account User (roles/iam.serviceAccountUser)');
    expect(onlyRun(h).info.status).to.equal('FAILED');
  });

  it('submits an Artifact Registry template by URI after checking parameters against it', async () => {
    const uri = `${h.vertex.url}/kfp/my-project/kfp-repo/spaceflights/v3`;
    h.vertex.templates.set(uri, await readFile(FIXTURE, 'utf8'));
    const bad = await launchCli(h, ['run', uri, '-c', h.config, '--param', 'epochs=1.5'], { deps: { now: NOW } });
    expect(bad.code).to.equal(1);
    expect(bad.stderr).to.include('parameter "epochs" must be integer');
    expect(h.mlflow.store.runs.size).to.equal(0);
    const res = await launchCli(h, ['run', uri, '-c', h.config, '--param', 'dataset=x', '--param', 'epochs=3'], { deps: { now: NOW } });
    expect(res.code).to.equal(0);
    const body = h.vertex.jobs.get(JOB_ID)!.body as { templateUri: string; pipelineSpec: { root: { dag: { tasks: Record<string, { cachingOptions?: unknown }> } } }; runtimeConfig: { parameterValues: Record<string, unknown> } };
    expect(body.templateUri).to.equal(uri);
    // As the SDK: the downloaded template with kvx's changes (caching off) goes with its URI, so the changes hold.
    const tasks = Object.values(body.pipelineSpec.root.dag.tasks);
    expect(tasks).to.have.length.above(0);
    for (const task of tasks) expect(task.cachingOptions).to.deep.equal({ enableCache: false });
    expect(body.runtimeConfig.parameterValues).to.include({ epochs: 3, mlflow_run_id: onlyRun(h).info.run_id });
  });

  it('restores a deleted experiment and reuses it', async () => {
    const exp = h.mlflow.store.createExperiment('spaceflights');
    exp.lifecycle_stage = 'deleted';
    const res = await launchCli(h, base(h), { deps: { now: NOW } });
    expect(res.code).to.equal(0);
    expect(exp.lifecycle_stage).to.equal('active');
    expect(onlyRun(h).info.experiment_id).to.equal(exp.experiment_id);
  });

  it('interrupting run --wait leaves the job running and ends the run KILLED with the reason', async () => {
    h.vertex.nextOutcome = { stayRunning: true };
    const interrupt = new AbortController();
    const pending = launchCli(h, [...base(h), '--wait'], { deps: { now: NOW, interrupt: interrupt.signal } });
    while ((h.vertex.jobs.get(JOB_ID)?.gets ?? 0) < 3) await new Promise((r) => setTimeout(r, 5));
    interrupt.abort();
    const res = await pending;
    expect(res.code).to.equal(130);
    const job = h.vertex.jobs.get(JOB_ID)!;
    expect(job.cancelRequested).to.equal(false);
    expect(job.state).to.equal('PIPELINE_STATE_RUNNING');
    const run = onlyRun(h);
    expect(run.info.status).to.equal('KILLED');
    expect(tags(run)['vertexai_job_state']).to.equal('RUNNING');
    expect(tags(run)['kvx_launch_error']).to.include(`kvx-launch follow ${JOB_ID}`);
  });

  it('with --cancel-on-interrupt an interrupted run --wait cancels the job and mirrors CANCELLED as KILLED', async () => {
    h.vertex.nextOutcome = { stayRunning: true };
    const interrupt = new AbortController();
    const pending = launchCli(h, [...base(h), '--wait', '--cancel-on-interrupt'], { deps: { now: NOW, interrupt: interrupt.signal } });
    while ((h.vertex.jobs.get(JOB_ID)?.gets ?? 0) < 3) await new Promise((r) => setTimeout(r, 5));
    interrupt.abort();
    const res = await pending;
    expect(res.code).to.equal(130);
    const job = h.vertex.jobs.get(JOB_ID)!;
    expect(job.cancelRequested).to.equal(true);
    expect(job.state).to.equal('PIPELINE_STATE_CANCELLED');
    const run = onlyRun(h);
    expect(run.info.status).to.equal('KILLED');
    expect(tags(run)).to.include({ vertexai_job_state: 'CANCELLED', vertexai_last_task: 'preprocess-companies' });
  });
});

describe('kvx-launch run: bad input never leaves state behind', () => {
  let h: Harness;
  before(async () => {
    h = await startHarness();
  });
  after(async () => {
    await h.close();
  });
  afterEach(() => {
    // Nothing was created on either side by any of these.
    expect(h.mlflow.store.runs.size).to.equal(0);
    expect(h.vertex.jobs.size).to.equal(0);
  });

  it('an unknown or mistyped parameter lists the declared parameters', async () => {
    const res = await launchCli(h, [...base(h), '--param', 'epochs=ten', '--param', 'colour=red']);
    expect(res.code).to.equal(1);
    expect(res.stderr).to.include('parameter "epochs" must be integer: "ten" is not a whole number');
    expect(res.stderr).to.include('unknown parameter "colour"');
    expect(res.stderr).to.include('  learning_rate: double (default 0.01)');
  });

  it('a missing required parameter is named with the flag to add', async () => {
    const res = await launchCli(h, ['run', FIXTURE, '-c', h.config]);
    expect(res.code).to.equal(1);
    expect(res.stderr).to.include('required parameter "dataset" (string) is missing: add --param dataset=<value>');
  });

  it('a malformed --param is named', async () => {
    const res = await launchCli(h, [...base(h), '--param', 'epochs']);
    expect(res.code).to.equal(1);
    expect(res.stderr).to.include('--param "epochs" is malformed: write --param name=value');
  });

  it('a missing or non-KFP spec is named', async () => {
    const missing = await launchCli(h, ['run', path.join(h.dir, 'missing.yaml'), '-c', h.config]);
    expect(missing.code).to.equal(1);
    expect(missing.stderr).to.match(/cannot read pipeline spec .*missing\.yaml: no such file/);
    const notKfp = path.join(h.dir, 'values.yaml');
    await writeFile(notKfp, 'replicaCount: 2\n');
    const res = await launchCli(h, ['run', notKfp, '-c', h.config]);
    expect(res.code).to.equal(1);
    expect(res.stderr).to.include('is not a compiled KFP pipeline (KFP IR)');
  });

  it('no spec at all is a usage error', async () => {
    const res = await launchCli(h, ['run', '-c', h.config]);
    expect(res.code).to.equal(2);
    expect(res.stderr).to.include('no pipeline given');
  });

  it('missing project and region are reported together', async () => {
    const cfg = path.join(h.dir, 'bare.yml');
    await writeFile(cfg, `upstream:\n  url: ${h.mlflow.url}\nauth:\n  provider: static\n  params: {token_env: TEST_MLFLOW_TOKEN}\n`);
    const res = await launchCli(h, ['run', FIXTURE, '-c', cfg, '--param', 'dataset=x']);
    expect(res.code).to.equal(2);
    expect(res.stderr).to.include('vertex.projectId: required');
    expect(res.stderr).to.include('vertex.region: required');
  });

  it('an experiment name that cannot make a job id is explained', async () => {
    const res = await launchCli(h, [...base(h), '--experiment-name', '2024_01']);
    expect(res.code).to.equal(1);
    expect(res.stderr).to.include('cannot make a Vertex AI job id from experiment name "2024_01"');
  });

  it('a bare VPC name without a project number is explained', async () => {
    const res = await launchCli(h, [...base(h), '--network', 'ml-vpc']);
    expect(res.code).to.equal(1);
    expect(res.stderr).to.include('vertex.network "ml-vpc" is a bare VPC name');
    expect(res.stderr).to.include('--project-number');
  });

  it('invalid labels are named', async () => {
    const res = await launchCli(h, [...base(h), '--label', 'Owner=Me']);
    expect(res.code).to.equal(1);
    expect(res.stderr).to.include('label key "Owner"');
  });

  it('a missing tracking URI is a config error naming the flag and env', async () => {
    const cfg = path.join(h.dir, 'no-mlflow.yml');
    await writeFile(cfg, 'project_id: my-project\nregion: europe-west4\nrun_config:\n  root: b/p\n  experiment_name: e\n');
    const res = await launchCli(h, ['run', FIXTURE, '-c', cfg, '--param', 'dataset=x']);
    expect(res.code).to.equal(2);
    expect(res.stderr).to.include('upstream.url: required');
    expect(res.stderr).to.include('MLFLOW_TRACKING_URI');
  });

  it('--cancel-on-interrupt without --wait is a usage error', async () => {
    const res = await launchCli(h, [...base(h), '--cancel-on-interrupt']);
    expect(res.code).to.equal(2);
  });

  it('MLflow credentials the server rejects stop before any job is submitted', async () => {
    const res = await launchCli(h, base(h), { env: { TEST_MLFLOW_TOKEN: 'wrong-token' } });
    expect(res.code).to.equal(1);
    expect(res.stderr).to.include('failed with 401');
    expect(res.stderr).not.to.include('wrong-token');
  });
});
