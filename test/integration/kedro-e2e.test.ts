/**
 * The Proof of issue 15: a kedro-vertexai pipeline, launched with kvx's real executables, runs on this machine and
 * gives exactly one MLflow run with every step's data.
 *
 * The fake Vertex AI API executes each task's container command (vertex-executor.ts) in a kedro project directory,
 * with `kvx-proxy`, `kvx-launch` (the built dist/ executables) and a stand-in `kedro` (test/fakes/kedro) on PATH and
 * the fake metadata server as the step's Google identity. The fake MLflow sits behind an IAP-like gate. No test
 * uses --wait: the run must end with the pipeline's real state with nobody watching.
 */
import { spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import YAML from 'yaml';
import { CLIENT_ID, startGoogleWorld } from '../fakes/google-world.js';
import type { GoogleWorld } from '../fakes/google-world.js';
import { iapGate } from '../fakes/iap-gate.js';
import type { IapGate } from '../fakes/iap-gate.js';
import { startFakeMlflow } from '../fakes/mlflow/index.js';
import type { FakeMlflow, Run } from '../fakes/mlflow/index.js';
import { startFakeVertex } from '../fakes/vertex-api.js';
import type { FakeJob, FakeVertex } from '../fakes/vertex-api.js';
import { kfpCorpusDir } from '../helpers/corpus.js';
import { startTestProxy } from '../helpers/proxy.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const SHARED_SPEC = path.join(kfpCorpusDir(), 'kedro-vertexai-spaceflights.yaml');
const PIPELINE_SA = 'pipelines@my-project.iam.gserviceaccount.com';
/** kedro-mlflow's experiment (conf/<env>/mlflow.yml), deliberately not run_config.experiment_name. */
const MLFLOW_EXPERIMENT = { base: 'spaceflights-tracking', prod: 'spaceflights-prod' } as const;
const NODES = ['preprocess_companies_node', 'train_model_node'];

type Dict = Record<string, unknown>;

interface World {
  google: GoogleWorld;
  mlflow: FakeMlflow;
  gate: IapGate;
  vertex: FakeVertex;
  project: string;
  bin: string;
  env: NodeJS.ProcessEnv;
}

function shim(dir: string, name: string, script: string): void {
  const file = path.join(dir, name);
  writeFileSync(file, `#!/bin/sh\nexec "${process.execPath}" "${script}" "$@"\n`);
  chmodSync(file, 0o755);
}

function writeConf(project: string, env: 'base' | 'prod', w: Pick<World, 'mlflow' | 'vertex'>, extra: Dict = {}, upstreamUrl = w.mlflow.url): void {
  const dir = path.join(project, 'conf', env);
  mkdirSync(dir, { recursive: true });
  const runConfig: Dict = {
    image: 'europe-west4-docker.pkg.dev/my-project/kedro/spaceflights:1.4.2',
    root: 'my-bucket/pipelines',
    experiment_name: 'spaceflights',
    service_account: PIPELINE_SA,
    mlflow: { request_header_provider_params: { client_id: CLIENT_ID } },
    ...extra,
  };
  const vertexai = { project_id: 'my-project', region: 'europe-west4', run_config: runConfig, kvx: { upstream: { url: upstreamUrl }, vertex: { endpoint: w.vertex.url } } };
  writeFileSync(path.join(dir, 'vertexai.yml'), YAML.stringify(vertexai));
  writeFileSync(path.join(dir, 'mlflow.yml'), YAML.stringify({ tracking: { experiment: { name: MLFLOW_EXPERIMENT[env] } } }));
}

async function startWorld(): Promise<World> {
  for (const exe of ['kvx-proxy', 'kvx-launch']) {
    if (!existsSync(path.join(ROOT, 'dist', 'cli', `${exe}.js`))) throw new Error(`dist/cli/${exe}.js is missing: run npm run build (npm test does)`);
  }
  const google = await startGoogleWorld();
  const gate = iapGate({ issuer: google.issuer, audience: CLIENT_ID });
  const mlflow = await startFakeMlflow({ gate });
  const project = mkdtempSync(path.join(tmpdir(), 'kvx-kedro-project-'));
  const bin = path.join(project, '.bin');
  mkdirSync(bin);
  shim(bin, 'kedro', path.join(ROOT, 'test', 'fakes', 'kedro', 'kedro.mjs'));
  shim(bin, 'kvx-proxy', path.join(ROOT, 'dist', 'cli', 'kvx-proxy.js'));
  shim(bin, 'kvx-launch', path.join(ROOT, 'dist', 'cli', 'kvx-launch.js'));
  const hosts = path.join(project, '.image-etc-hosts');
  writeFileSync(hosts, '127.0.0.1 localhost\n');
  // A step sees what a Vertex AI worker has: the metadata server as its identity, the image's PATH.
  const env: NodeJS.ProcessEnv = { ...google.metadataEnv(), CLOUDSDK_CONFIG: path.join(project, '.gcloud'), PATH: `${bin}:${process.env['PATH'] ?? '/usr/bin:/bin'}` };
  const vertex = await startFakeVertex({ accessTokens: google.accessTokens, actAs: [PIPELINE_SA], execute: { workingDir: project, env, containerFiles: { '/etc/hosts': hosts }, taskTimeoutMs: 60_000 } });
  const w: World = { google, mlflow, gate, vertex, project, bin, env };
  writeConf(project, 'base', w);
  writeConf(project, 'prod', w);
  return w;
}

/** Runs one of kvx's executables through its shim on PATH, as a user would. */
function kvx(w: World, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(path.join(w.bin, args[0]!), args.slice(1), { cwd: w.project, env: w.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

async function until<T>(what: string, probe: () => T | undefined, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** The job ended, every process of it gone. */
async function ended(w: World, jobId: string): Promise<FakeJob> {
  const job = await until(`job ${jobId}`, () => w.vertex.jobs.get(jobId));
  const execution = await until(`job ${jobId} to start`, () => job.execution);
  await execution.done;
  await until(`job ${jobId} to end`, () => (['PIPELINE_STATE_SUCCEEDED', 'PIPELINE_STATE_FAILED', 'PIPELINE_STATE_CANCELLED'].includes(job.state) ? job : undefined));
  return job;
}

function logsOf(job: FakeJob): string {
  return (job.execution?.logs ?? []).map((l) => `--- ${l.task} (exit ${l.code}${l.signal ? `, ${l.signal}` : ''})\n${l.stdout}${l.stderr}`).join('\n');
}

/** Variants of the shared spec, made the way kedro-vertexai would have compiled them. */
function variant(kind: 'grouped' | 'params' | 'host-aliases' | 'prod'): Dict {
  const spec = YAML.parse(readFileSync(SHARED_SPEC, 'utf8')) as Dict;
  const executors = (spec['deploymentSpec'] as { executors: Record<string, { container: { args: string[] } }> }).executors;
  const tasks = ((spec['root'] as Dict)['dag'] as { tasks: Record<string, Dict> }).tasks;
  const components = spec['components'] as Record<string, Dict>;
  const edit = (f: (arg: string) => string) => {
    for (const e of Object.values(executors)) e.container.args = e.container.args.map(f);
  };
  if (kind === 'grouped') {
    delete tasks['train-model-node'];
    delete executors['exec-train-model-node'];
    delete components['comp-train-model-node'];
    executors['exec-preprocess-companies-node']!.container.args = executors['exec-preprocess-companies-node']!.container.args.map((a) => a.replace('--nodes "preprocess_companies_node"', `--nodes "${NODES.join(',')}"`));
  } else if (kind === 'params') {
    (((spec['root'] as Dict)['inputDefinitions'] as Dict)['parameters'] as Dict)['epochs'] = { parameterType: 'NUMBER_INTEGER' };
    for (const name of ['preprocess-companies-node', 'train-model-node']) {
      ((components[`comp-${name}`]!['inputDefinitions'] as Dict)['parameters'] as Dict)['epochs'] = { parameterType: 'NUMBER_INTEGER' };
      ((tasks[name]!['inputs'] as Dict)['parameters'] as Dict)['epochs'] = { componentInputParameter: 'epochs' };
    }
    edit((a) => a.replace("--params dataset={{$.inputs.parameters['dataset']}}", "--params dataset={{$.inputs.parameters['dataset']}},epochs={{$.inputs.parameters['epochs']}}"));
  } else if (kind === 'host-aliases') {
    edit((a) => (a.includes('kedro run') ? `echo "127.0.0.1 mlflow.internal" >> /etc/hosts && ${a}` : a));
  } else {
    edit((a) => a.replaceAll('-e base', '-e prod'));
  }
  return spec;
}

function writeSpec(w: World, name: string, spec: Dict): string {
  const file = path.join(w.project, `${name}.json`);
  writeFileSync(file, JSON.stringify(spec));
  return file;
}

let launches = 0;
/** A job id of its own per launch: the tests start several jobs within one second. */
const jobId = () => `spaceflights-e2e-${process.pid}-${++launches}`;

/** `kvx-launch run` without --wait; returns what it printed (--json) once the job has ended. */
async function launch(w: World, spec: string, args: string[] = [], env: 'base' | 'prod' = 'base'): Promise<{ result: { jobId: string; jobName: string; runId: string }; job: FakeJob; stderr: string }> {
  const r = await kvx(w, ['kvx-launch', 'run', spec, '-c', path.join('conf', env, 'vertexai.yml'), '--param', 'dataset=companies-v2', '--job-id', jobId(), ...args, '--json']);
  expect(r.code, r.stderr).to.equal(0);
  const result = JSON.parse(r.stdout) as { jobId: string; jobName: string; runId: string };
  const job = await ended(w, result.jobId);
  return { result, job, stderr: r.stderr };
}

const runs = (w: World): Run[] => [...w.mlflow.store.runs.values()].filter((r) => r.info.lifecycle_stage === 'active');

function expectEveryCallAuthenticated(w: World): void {
  expect(w.gate.rejected, 'rejections at the gate').to.deep.equal({});
  expect(w.mlflow.requests.length).to.be.greaterThan(0);
  expect(w.gate.accepted, 'every MLflow call went through the gate with a valid token').to.equal(w.mlflow.requests.length);
  expect(new Set(w.gate.identities)).to.deep.equal(new Set([w.google.metadata.email]));
}

/** The two tags every writer sets kept one value each through the whole job. */
function expectStableTags(w: World, run: Run, job: FakeJob): void {
  // The adapted spec keeps kedro-vertexai's meaning of vertexai_run_id (the job UUID, as its hook writes it) for
  // every writer, so it never changes.
  for (const [key, want] of [['vertexai_job_name', job.id], ['vertexai_run_id', job.execution!.uuid]] as const) {
    const values = w.mlflow.store.tagWrites.filter((t) => t.runId === run.info.run_id && t.key === key).map((t) => t.value);
    expect(values.length, `${key} writes`).to.be.greaterThan(0);
    expect([...new Set(values)], `${key} over time`).to.deep.equal([want]);
    expect(run.tags.get(key)).to.equal(want);
  }
}

/** One run, in mlflow.yml's experiment, with every node's data. */
function theOneRun(w: World, env: 'base' | 'prod' = 'base', nodes = NODES): Run {
  const all = runs(w);
  expect(all.map((r) => `${r.info.run_id} ${r.info.run_name} ${r.info.status}`), 'MLflow runs').to.have.length(1);
  const run = all[0]!;
  expect(w.mlflow.store.experiment(run.info.experiment_id).name).to.equal(MLFLOW_EXPERIMENT[env]);
  for (const node of nodes) {
    expect(run.metrics.has(`${node}.score`), `${node}'s metric`).to.equal(true);
    expect(run.params.get(`${node}.env`)).to.equal(env);
  }
  expect(run.params.get('dataset')).to.equal('companies-v2');
  return run;
}

describe('kedro-vertexai pipeline end to end (issue 15 Proof)', function () {
  this.timeout(120_000);
  let w: World;
  before(async () => {
    w = await startWorld();
  });
  after(async () => {
    await w?.vertex.close();
    await w?.mlflow.close();
    await w?.google.close();
    if (w !== undefined) rmSync(w.project, { recursive: true, force: true });
  });
  beforeEach(async () => {
    await w.mlflow.reset();
    w.gate.rejected = {};
    w.gate.accepted = 0;
    w.gate.identities.length = 0;
    for (const f of ['fail-node', 'hang-node']) rmSync(path.join(w.project, f), { force: true });
  });
  afterEach(function () {
    if (this.currentTest?.state === 'failed') for (const job of w.vertex.jobs.values()) console.log(`job ${job.id} ${job.state}\n${logsOf(job)}`);
  });

  it('the shared spec: one run in mlflow.yml\'s experiment with every step\'s data, FINISHED with nobody watching', async () => {
    const { result, job } = await launch(w, SHARED_SPEC);
    expect(job.state, logsOf(job)).to.equal('PIPELINE_STATE_SUCCEEDED');
    const run = theOneRun(w);
    expect(run.info.run_id).to.equal(result.runId);
    expect(run.info.status).to.equal('FINISHED');
    expect(run.tags.get('vertexai_job_state')).to.equal('SUCCEEDED');
    expectStableTags(w, run, job);
    expectEveryCallAuthenticated(w);
  });

  it('a failing node: the run ends FAILED with the failed task and its error', async () => {
    writeFileSync(path.join(w.project, 'fail-node'), 'train_model_node');
    const { job } = await launch(w, SHARED_SPEC);
    expect(job.state).to.equal('PIPELINE_STATE_FAILED');
    const all = runs(w);
    expect(all).to.have.length(1);
    const run = all[0]!;
    expect(run.info.status).to.equal('FAILED');
    expect(run.tags.get('vertexai_failed_task')).to.equal('train-model-node');
    expect(run.tags.get('vertexai_failed_task_error')).to.include('non-zero status');
    expect(run.metrics.has('preprocess_companies_node.score')).to.equal(true);
    expectStableTags(w, run, job);
    expectEveryCallAuthenticated(w);
  });

  it('cancelled while a node runs: the step is killed and the run ends KILLED', async () => {
    writeFileSync(path.join(w.project, 'hang-node'), 'train_model_node');
    const r = await kvx(w, ['kvx-launch', 'run', SHARED_SPEC, '-c', 'conf/base/vertexai.yml', '--param', 'dataset=companies-v2', '--job-id', jobId(), '--json']);
    expect(r.code, r.stderr).to.equal(0);
    const { jobId: id } = JSON.parse(r.stdout) as { jobId: string };
    const job = await until('the job', () => w.vertex.jobs.get(id));
    const started = await until('train-model-node to start', () => (job.execution?.logs.some((l) => l.task.endsWith('train-model-node') && l.code === null) ? Date.now() : undefined));
    // The node is under way once the hook has tagged the run for it.
    await until('train_model_node to begin', () => w.mlflow.store.tagWrites.find((t) => t.key === 'vertexai_job_name' && t.at >= started));
    // As the console's Stop button: pipelineJobs.cancel, with nobody following the job.
    const token = w.google.accessTokens.issue(PIPELINE_SA, 600).access_token;
    const cancel = await fetch(`${w.vertex.url}/v1/projects/my-project/locations/europe-west4/pipelineJobs/${id}:cancel`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: '{}' });
    expect(cancel.status).to.equal(200);
    await ended(w, id);
    expect(job.state).to.equal('PIPELINE_STATE_CANCELLED');
    const all = runs(w);
    expect(all).to.have.length(1);
    expect(all[0]!.info.status).to.equal('KILLED');
    expectEveryCallAuthenticated(w);
  });

  for (const [kind, nodes] of [
    ['grouped', NODES],
    ['params', NODES],
    ['host-aliases', NODES],
  ] as const) {
    it(`variant ${kind}: one run with every node's data`, async () => {
      const args = kind === 'params' ? ['--param', 'epochs=20'] : [];
      const { job } = await launch(w, writeSpec(w, kind, variant(kind)), args);
      expect(job.state, logsOf(job)).to.equal('PIPELINE_STATE_SUCCEEDED');
      const run = theOneRun(w, 'base', nodes);
      if (kind === 'params') expect(run.params.get('epochs')).to.equal('20');
      if (kind === 'grouped') expect(job.tasks.filter((t) => t.kind === 'container').map((t) => t.taskName)).to.not.include('train-model-node');
      expect(run.info.status).to.equal('FINISHED');
      expectStableTags(w, run, job);
      expectEveryCallAuthenticated(w);
    });
  }

  it('host aliases in vertexai.yml: the launcher and every step reach MLflow by a name only kvx resolves', async () => {
    // mlflow.internal is in no resolver here: the name works only through run_config.network.host_aliases, which
    // kvx-launch and each step's kvx-proxy read from the same vertexai.yml, whatever the step does to /etc/hosts.
    const aliasUrl = `http://mlflow.internal:${new URL(w.mlflow.url).port}`;
    writeConf(w.project, 'base', w, { network: { host_aliases: [{ ip: '127.0.0.1', hostnames: ['mlflow.internal'] }] } }, aliasUrl);
    try {
      const { job } = await launch(w, writeSpec(w, 'aliases', variant('host-aliases')));
      expect(job.state, logsOf(job)).to.equal('PIPELINE_STATE_SUCCEEDED');
      const run = theOneRun(w, 'base');
      expect(run.info.status).to.equal('FINISHED');
      expectStableTags(w, run, job);
      expectEveryCallAuthenticated(w);
    } finally {
      writeConf(w.project, 'base', w);
    }
  });

  it('another env (-e prod): the step config and the experiment are conf/prod\'s', async () => {
    const { job } = await launch(w, writeSpec(w, 'prod', variant('prod')), [], 'prod');
    expect(job.state, logsOf(job)).to.equal('PIPELINE_STATE_SUCCEEDED');
    const run = theOneRun(w, 'prod');
    expect(run.info.status).to.equal('FINISHED');
    expectStableTags(w, run, job);
  });

  it('a spec already adapted (kvx-launch adapt) is run as it is and gives the same one run', async () => {
    const out = path.join(w.project, 'adapted.yaml');
    const adapted = await kvx(w, ['kvx-launch', 'adapt', SHARED_SPEC, '-o', out, '-c', 'conf/base/vertexai.yml']);
    expect(adapted.code, adapted.stderr).to.equal(0);
    const again = path.join(w.project, 'adapted-twice.yaml');
    expect((await kvx(w, ['kvx-launch', 'adapt', out, '-o', again, '-c', 'conf/base/vertexai.yml'])).code).to.equal(0);
    expect(YAML.parse(readFileSync(again, 'utf8'))).to.deep.equal(YAML.parse(readFileSync(out, 'utf8')));
    const { job } = await launch(w, out);
    expect(job.state, logsOf(job)).to.equal('PIPELINE_STATE_SUCCEEDED');
    const run = theOneRun(w);
    expect(run.info.status).to.equal('FINISHED');
    expectStableTags(w, run, job);
  });

  it('--no-adapt shows the issue: the spec as compiled gives two runs, the launcher\'s without data', async () => {
    // As with kedro-vertexai's settings.py hook: the steps reach MLflow with credentials, here through a kvx-proxy
    // the test runs, since nothing in the unadapted steps starts one.
    const proxy = await startTestProxy(w.mlflow.url, { 'auth.params.client_id': CLIENT_ID }, w.google.metadataEnv());
    w.env['MLFLOW_TRACKING_URI'] = proxy.url;
    try {
      const r = await kvx(w, ['kvx-launch', 'run', SHARED_SPEC, '-c', 'conf/base/vertexai.yml', '--param', 'dataset=companies-v2', '--job-id', jobId(), '--no-adapt', '--json']);
      expect(r.code, r.stderr).to.equal(0);
      expect(r.stderr).to.include('submitted with --no-adapt: its mlflow-start-run step makes a second MLflow run');
      const job = await ended(w, (JSON.parse(r.stdout) as { jobId: string }).jobId);
      expect(job.state, logsOf(job)).to.equal('PIPELINE_STATE_SUCCEEDED');
      const all = runs(w);
      expect(all).to.have.length(2);
      const launcher = all.find((run) => run.info.run_id === (JSON.parse(r.stdout) as { runId: string }).runId)!;
      const steps = all.find((run) => run !== launcher)!;
      expect(launcher.metrics.size).to.equal(0);
      for (const node of NODES) expect(steps.metrics.has(`${node}.score`)).to.equal(true);
      // kedro-vertexai's start step wrote its compile-time run name, then every node's hook the job UUID.
      const written = w.mlflow.store.tagWrites.filter((t) => t.runId === steps.info.run_id && t.key === 'vertexai_run_id').map((t) => t.value);
      expect(new Set(written).size).to.equal(2);
      // Nobody ends the launcher's run: it stays RUNNING without --wait.
      expect(launcher.info.status).to.equal('RUNNING');
    } finally {
      delete w.env['MLFLOW_TRACKING_URI'];
      await proxy.close();
    }
  });

  it('a schedule: each firing is a job with its own run, created by its start step, ended by its exit task', async () => {
    const r = await kvx(w, ['kvx-launch', 'schedule', 'create', SHARED_SPEC, '-c', 'conf/base/vertexai.yml', '--param', 'dataset=companies-v2', '--cron', '0 6 * * *', '--max-concurrent-runs', '2', '--json']);
    expect(r.code, r.stderr).to.equal(0);
    const id = (JSON.parse(r.stdout) as { name: string }).name.split('/').pop()!;
    expect(runs(w)).to.have.length(0);
    const first = w.vertex.fireSchedule(id, new Date('2026-12-02T06:00:00Z'));
    const second = w.vertex.fireSchedule(id, new Date('2026-12-03T06:00:00Z'));
    await Promise.all([ended(w, first.id), ended(w, second.id)]);
    expect([first.state, second.state], logsOf(first)).to.deep.equal(['PIPELINE_STATE_SUCCEEDED', 'PIPELINE_STATE_SUCCEEDED']);
    const all = runs(w);
    expect(all.map((run) => run.tags.get('vertexai_job_name')).sort()).to.deep.equal([first.id, second.id].sort());
    for (const run of all) {
      expect(w.mlflow.store.experiment(run.info.experiment_id).name).to.equal(MLFLOW_EXPERIMENT.base);
      expect(run.info.status).to.equal('FINISHED');
      for (const node of NODES) expect(run.metrics.has(`${node}.score`)).to.equal(true);
      expectStableTags(w, run, run.tags.get('vertexai_job_name') === first.id ? first : second);
    }
    expectEveryCallAuthenticated(w);
  });
});
