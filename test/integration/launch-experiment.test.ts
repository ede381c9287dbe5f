import { Egress } from '../../src/config/egress.js';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { expect } from 'chai';
import { CredentialsLookup } from '../../src/auth/google/discovery.js';
import { silentLogger } from '../../src/log/logger.js';
import { VertexApiError, VertexClient, applicationDefaultCredentials } from '../../src/vertex/client.js';
import { loadSpecFile } from '../../src/vertex/spec.js';
import { FIXTURE, launchCli, onlyRun, startHarness, useHarness, tags } from './launch-harness.js';
import type { Harness } from './launch-harness.js';

const at = (second: number) => () => new Date(Date.UTC(2024, 4, 17, 8, 30, second));
const JOB_ID = 'spaceflights-20240517083005';
const EXPERIMENT = 'spaceflights-exp';
const EXPERIMENT_URL = `https://console.cloud.google.com/vertex-ai/experiments/locations/europe-west4/experiments/${EXPERIMENT}?project=my-project`;
const deps = { now: at(5), experimentLinkIntervalMs: 10 };
const base = (h: Harness) => ['run', FIXTURE, '-c', h.config, '--param', 'dataset=companies-v2', '--poll-interval', '0.01'];
const STORE = '/v1/projects/my-project/locations/europe-west4/metadataStores/default';

/** Vertex calls as `METHOD path status`, with the job id and query kept: the order is part of the contract. */
const calls = (h: Harness) => h.vertex.requests.map((r) => `${r.method} ${r.path} ${r.status}`);

describe('kvx-launch run --experiment (Vertex AI experiments, end to end against the fakes)', () => {
  const harness = useHarness();
  let h: Harness;
  beforeEach(() => {
    h = harness();
  });

  it('creates the missing experiment before the run and the job exist, then adds the job to it', async () => {
    const res = await launchCli(h, [...base(h), '--experiment', EXPERIMENT, '--json'], { deps });
    expect(res.stderr).to.equal('');
    expect(res.code).to.equal(0);

    const experiment = h.vertex.contexts.get(EXPERIMENT)!;
    expect(experiment).to.include({ displayName: EXPERIMENT, schemaTitle: 'system.Experiment', schemaVersion: '0.0.1' });
    expect(experiment.metadata).to.deep.equal({ experiment_deleted: false });
    expect(h.vertex.contexts.get(JOB_ID)).to.include({ schemaTitle: 'system.PipelineRun' });
    expect(h.vertex.contexts.get(JOB_ID)!.parents).to.deep.equal([EXPERIMENT]);

    expect(calls(h)).to.deep.equal([
      `GET ${STORE}/contexts/${EXPERIMENT} 404`,
      `GET ${STORE} 200`,
      `POST ${STORE}/contexts?contextId=${EXPERIMENT} 200`,
      `POST /v1/projects/my-project/locations/europe-west4/pipelineJobs?pipelineJobId=${JOB_ID} 200`,
      `GET /v1/projects/123456789012/locations/europe-west4/pipelineJobs/${JOB_ID} 200`,
      `POST /v1/projects/123456789012/locations/europe-west4/metadataStores/default/contexts/${EXPERIMENT}:addContextChildren 200`,
    ]);

    const run = onlyRun(h);
    expect(run.info.status).to.equal('RUNNING');
    expect(tags(run)).to.include({
      vertexai_experiment: EXPERIMENT,
      vertexai_experiment_console_url: EXPERIMENT_URL,
      vertexai_experiment_link: 'linked',
      vertexai_experiment_link_error: '',
      vertexai_job_name: JOB_ID,
    });
    const out = JSON.parse(res.stdout) as { vertexExperiment: Record<string, unknown> };
    expect(out.vertexExperiment).to.deep.equal({ name: EXPERIMENT, consoleUrl: EXPERIMENT_URL, created: true, link: 'linked' });
  });

  it('reuses an existing experiment (from run_config.experiment in vertexai.yml) for every later job', async () => {
    h.vertex.contexts.set(EXPERIMENT, {
      id: EXPERIMENT,
      displayName: EXPERIMENT,
      description: 'made in the console',
      schemaTitle: 'system.Experiment',
      schemaVersion: '0.0.1',
      metadata: { experiment_deleted: false, backing_tensorboard_resource: 'projects/123456789012/locations/europe-west4/tensorboards/42' },
      parents: [],
      createTime: '2024-01-01T00:00:00Z',
    });
    const config = path.join(h.dir, 'with-experiment.yml');
    const text = await readFile(h.config, 'utf8');
    await writeFile(config, text.replace('  experiment_name: spaceflights\n', `  experiment_name: spaceflights\n  experiment: ${EXPERIMENT}\n`));
    const args = ['run', FIXTURE, '-c', config, '--param', 'dataset=companies-v2'];

    const first = await launchCli(h, args, { deps });
    const second = await launchCli(h, args, { deps: { ...deps, now: at(6) } });
    expect([first.code, second.code, first.stderr, second.stderr]).to.deep.equal([0, 0, '', '']);
    expect(first.stdout).to.include(`experiment: ${EXPERIMENT} (linked) ${EXPERIMENT_URL}`);

    expect(h.vertex.requests.filter((r) => r.method === 'POST' && r.path.includes('/contexts?'))).to.have.length(0);
    expect(h.vertex.contexts.get(EXPERIMENT)!.metadata).to.have.property('backing_tensorboard_resource');
    expect(h.vertex.contexts.get(JOB_ID)!.parents).to.deep.equal([EXPERIMENT]);
    expect(h.vertex.contexts.get('spaceflights-20240517083006')!.parents).to.deep.equal([EXPERIMENT]);
    const runs = [...h.mlflow.store.runs.values()];
    expect(runs.map((r) => tags(r)['vertexai_experiment_link'])).to.deep.equal(['linked', 'linked']);
  });

  it('run --wait adds the job while following it and still mirrors the final state', async () => {
    const res = await launchCli(h, [...base(h), '--experiment', EXPERIMENT, '--wait'], { deps });
    expect(res.code).to.equal(0);
    const run = onlyRun(h);
    expect(run.info.status).to.equal('FINISHED');
    expect(tags(run)).to.include({ vertexai_experiment_link: 'linked', vertexai_job_state: 'SUCCEEDED' });
    expect(h.vertex.contexts.get(JOB_ID)!.parents).to.deep.equal([EXPERIMENT]);
    expect(res.stderr).not.to.include('warning');
  });

  it('creates the project\'s default metadata store first when it has none', async () => {
    h.vertex.metadataStoreExists = false;
    const res = await launchCli(h, [...base(h), '--experiment', EXPERIMENT], { deps });
    expect(res.code).to.equal(0);
    expect(res.stderr).to.equal('');
    expect(calls(h).slice(0, 3)).to.deep.equal([`GET ${STORE}/contexts/${EXPERIMENT} 404`, `GET ${STORE} 404`, 'POST /v1/projects/my-project/locations/europe-west4/metadataStores?metadataStoreId=default 200']);
    expect(calls(h).filter((c) => c.includes('/operations/'))).to.have.length.greaterThan(0);
    expect(h.vertex.contexts.get(JOB_ID)!.parents).to.deep.equal([EXPERIMENT]);
    expect(tags(onlyRun(h))['vertexai_experiment_link']).to.equal('linked');
  });

  it('rejects an invalid experiment name, naming the key, the flag and the rule, before anything is created', async () => {
    for (const name of ['Spaceflights_Exp', 'abc', '-leading-dash', 'x'.repeat(129)]) {
      const res = await launchCli(h, [...base(h), '--experiment', name], { deps });
      expect(res.code, name).to.equal(1);
      expect(res.stderr).to.include(`vertex.experiment (run_config.experiment, --experiment) "${name}" is not a valid Vertex AI experiment name`);
      expect(res.stderr).to.include('4 to 128 lower-case letters, digits and dashes');
    }
    const res = await launchCli(h, [...base(h), '--experiment', 'Spaceflights_Exp'], { deps });
    expect(res.stderr).to.include('hint: use "spaceflights-exp"');
    expect(h.vertex.requests).to.deep.equal([]);
    expect(h.mlflow.requests).to.deep.equal([]);
    expect(h.mlflow.store.runs.size).to.equal(0);
  });

  it('refuses a name that belongs to another kind of metadata context', async () => {
    h.vertex.contexts.set(EXPERIMENT, { id: EXPERIMENT, displayName: EXPERIMENT, schemaTitle: 'system.PipelineRun', schemaVersion: '0.0.1', metadata: {}, parents: [], createTime: '2024-01-01T00:00:00Z' });
    const res = await launchCli(h, [...base(h), '--experiment', EXPERIMENT], { deps });
    expect(res.code).to.equal(1);
    expect(res.stderr).to.include(`vertex.experiment "${EXPERIMENT}" names an ML Metadata context of type system.PipelineRun, not a Vertex AI experiment`);
    expect(h.vertex.jobs.size).to.equal(0);
    expect(h.mlflow.store.runs.size).to.equal(0);
  });

  for (const permission of ['aiplatform.contexts.get', 'aiplatform.contexts.create']) {
    it(`stops with a clear message and nothing created when the caller lacks ${permission}`, async () => {
      h.vertex.denied.add(permission);
      const res = await launchCli(h, [...base(h), '--experiment', EXPERIMENT], { deps });
      expect(res.code).to.equal(1);
      expect(res.stderr).to.match(new RegExp(`cannot (read|create) Vertex AI experiment "${EXPERIMENT}" \\(vertex\\.experiment\\): Vertex AI metadataStores\\.contexts\\.(get|create) failed with 403 PERMISSION_DENIED: Permission '${permission.replace(/\./g, '\\.')}' denied`));
      expect(res.stderr).to.include('hint: Vertex AI experiments need aiplatform.metadataStores.get, aiplatform.contexts.get, aiplatform.contexts.create and aiplatform.contexts.addContextChildren');
      expect(res.stderr).to.include('--experiment ""');
      expect(h.vertex.jobs.size).to.equal(0);
      expect(h.mlflow.store.runs.size).to.equal(0);
      expect(h.vertex.contexts.size).to.equal(0);
    });
  }

  it('a job that cannot be added (addContextChildren denied) keeps running; the run says why and the exit code stays 0', async () => {
    h.vertex.denied.add('aiplatform.contexts.addContextChildren');
    const res = await launchCli(h, [...base(h), '--experiment', EXPERIMENT], { deps });
    expect(res.code).to.equal(0);
    expect(h.vertex.jobs.size).to.equal(1);
    const run = onlyRun(h);
    expect(run.info.status).to.equal('RUNNING');
    expect(tags(run)['vertexai_experiment_link']).to.equal('failed');
    expect(tags(run)['vertexai_experiment_link_error']).to.include("Permission 'aiplatform.contexts.addContextChildren' denied");
    expect(res.stderr).to.include(`kvx-launch: warning: job ${JOB_ID} was not added to Vertex AI experiment ${EXPERIMENT} (failed)`);
    expect(h.vertex.contexts.get(JOB_ID)!.parents).to.deep.equal([]);
  });

  it('leaves the link pending when the job never starts within the bound, and `follow` finishes it later', async () => {
    h.vertex.nextOutcome = { stayQueued: true };
    const res = await launchCli(h, [...base(h), '--experiment', EXPERIMENT, '--experiment-link-timeout', '0.2', '--json'], { deps });
    expect(res.code).to.equal(0);
    expect(res.stderr).to.match(/kvx-launch: warning: job spaceflights-20240517083005 was not added to Vertex AI experiment spaceflights-exp \(pending\): Vertex AI had not created the job's pipeline run context after \d+ s \(job QUEUED\)/);
    expect(res.stderr).to.include(`\`kvx-launch follow ${JOB_ID}\` adds it once the job runs`);
    let run = onlyRun(h);
    expect(run.info.status).to.equal('RUNNING');
    expect(tags(run)).to.include({ vertexai_experiment: EXPERIMENT, vertexai_experiment_link: 'pending' });
    expect(tags(run)['vertexai_experiment_link_error']).to.match(/had not created the job's pipeline run context/);
    expect((JSON.parse(res.stdout) as { vertexExperiment: { link: string } }).vertexExperiment.link).to.equal('pending');
    expect(h.vertex.requests.filter((r) => r.path.endsWith(':addContextChildren'))).to.have.length(0);

    // Capacity frees up: the job starts, and following it adds it to the experiment named on the run.
    h.vertex.jobs.get(JOB_ID)!.outcome = {};
    const followed = await launchCli(h, ['follow', JOB_ID, '-c', h.config, '--poll-interval', '0.01', '--json'], { deps });
    expect(followed.code).to.equal(0);
    run = onlyRun(h);
    expect(run.info.status).to.equal('FINISHED');
    expect(tags(run)).to.include({ vertexai_experiment_link: 'linked', vertexai_experiment_link_error: '' });
    expect(h.vertex.contexts.get(JOB_ID)!.parents).to.deep.equal([EXPERIMENT]);
    expect((JSON.parse(followed.stdout) as { vertexExperiment: { link: string } }).vertexExperiment.link).to.equal('linked');
  });

  it('marks the link failed when the job ends without ever running', async () => {
    h.vertex.nextOutcome = { stayQueued: true };
    const res = await launchCli(h, [...base(h), '--experiment', EXPERIMENT, '--experiment-link-timeout', '0.05'], { deps });
    expect(res.code).to.equal(0);
    const job = h.vertex.jobs.get(JOB_ID)!;
    job.state = 'PIPELINE_STATE_CANCELLED';
    job.endTime = new Date().toISOString();
    const followed = await launchCli(h, ['follow', JOB_ID, '-c', h.config, '--poll-interval', '0.01'], { deps });
    expect(followed.code).to.equal(1);
    const run = onlyRun(h);
    expect(run.info.status).to.equal('KILLED');
    expect(tags(run)['vertexai_experiment_link']).to.equal('failed');
    expect(tags(run)['vertexai_experiment_link_error']).to.equal(`the job ended CANCELLED before Vertex AI created its pipeline run context, so there is nothing to add to experiment "${EXPERIMENT}"`);
    expect(followed.stderr).to.include(`was not added to Vertex AI experiment ${EXPERIMENT} (failed)`);
  });

  it('--experiment "" turns off an experiment set in the config', async () => {
    const config = path.join(h.dir, 'with-experiment-off.yml');
    const text = await readFile(h.config, 'utf8');
    await writeFile(config, text.replace('  experiment_name: spaceflights\n', `  experiment_name: spaceflights\n  experiment: ${EXPERIMENT}\n`));
    const res = await launchCli(h, ['run', FIXTURE, '-c', config, '--param', 'dataset=companies-v2', '--experiment', ''], { deps });
    expect(res.code).to.equal(0);
    expect(res.stderr).to.equal('');
    expect(h.vertex.requests.map((r) => r.method)).to.deep.equal(['POST']);
    expect(tags(onlyRun(h))).not.to.have.property('vertexai_experiment');
  });
});

describe('fake Vertex AI metadata API (as strict as Vertex)', () => {
  let h: Harness;
  let vertex: VertexClient;
  let google: CredentialsLookup;
  before(async () => {
    h = await startHarness();
    google = new CredentialsLookup('test', { env: h.env, endpoints: { oauthToken: '', iamCredentials: '', metadataHost: '' }, logger: silentLogger, egress: Egress.none });
    vertex = new VertexClient({ projectId: 'my-project', region: 'europe-west4', endpoint: h.vertex.url, auth: applicationDefaultCredentials(google), retry: { maxRetries: 0 } });
  });
  after(async () => {
    google.close();
    await h.close();
  });

  const rejection = async (call: Promise<unknown>): Promise<VertexApiError> => {
    const err = await call.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).to.be.instanceOf(VertexApiError);
    return err as VertexApiError;
  };
  const experimentBody = { displayName: 'x', schemaTitle: 'system.Experiment', schemaVersion: '0.0.1', metadata: { experiment_deleted: false } };

  it('checks context ids and schemas, and answers ALREADY_EXISTS for a second create', async () => {
    for (const id of ['abc', 'Upper-case', 'under_score', 'a'.repeat(129)]) {
      expect((await rejection(vertex.createContext(id, experimentBody))).status, id).to.equal('INVALID_ARGUMENT');
    }
    expect((await rejection(vertex.createContext('fake-check', { ...experimentBody, schemaTitle: 'my.Unregistered' }))).googleMessage).to.include('not registered');
    expect((await rejection(vertex.createContext('fake-check', { displayName: 'x' }))).googleMessage).to.include('schema_title is required');
    expect((await rejection(vertex.createContext('fake-check', { ...experimentBody, schemaVersion: 'latest' }))).status).to.equal('INVALID_ARGUMENT');
    const created = await vertex.createContext('fake-check', experimentBody);
    expect(created.name).to.equal('projects/123456789012/locations/europe-west4/metadataStores/default/contexts/fake-check');
    const again = await rejection(vertex.createContext('fake-check', experimentBody));
    expect([again.httpStatus, again.status]).to.deep.equal([409, 'ALREADY_EXISTS']);
    expect((await rejection(vertex.getContext('no-such-context'))).status).to.equal('NOT_FOUND');
  });

  it('knows a job\'s run context only once the job runs, and refuses unknown or malformed children', async () => {
    await vertex.createContext('fake-parent', experimentBody);
    const parent = h.vertex.contextName('fake-parent');
    const body = { displayName: 'fake-job', runtimeConfig: { gcsOutputDirectory: 'gs://my-bucket/x', parameterValues: { dataset: 'd', mlflow_run_id: 'r' } }, pipelineSpec: (await loadSpecFile(FIXTURE)).spec };
    const job = await vertex.createPipelineJob('fake-job-1', body, ['x', 'y']);
    expect(job.jobDetail?.pipelineRunContext).to.equal(undefined);
    const early = await rejection(vertex.addContextChildren(parent, [h.vertex.contextName('fake-job-1')]));
    expect([early.httpStatus, early.status]).to.deep.equal([404, 'NOT_FOUND']);
    const running = await vertex.getPipelineJob('fake-job-1');
    expect(running.state).to.equal('PIPELINE_STATE_RUNNING');
    expect(running.jobDetail?.pipelineRunContext?.name).to.equal(h.vertex.contextName('fake-job-1'));
    await vertex.addContextChildren(parent, [running.jobDetail!.pipelineRunContext!.name!]);
    await vertex.addContextChildren(parent, [running.jobDetail!.pipelineRunContext!.name!]);
    expect(h.vertex.contexts.get('fake-job-1')!.parents).to.deep.equal(['fake-parent']);
    expect((await rejection(vertex.addContextChildren(parent, ['contexts/fake-job-1']))).status).to.equal('INVALID_ARGUMENT');
    expect((await rejection(vertex.addContextChildren(parent, [parent]))).status).to.equal('INVALID_ARGUMENT');
    expect((await rejection(vertex.addContextChildren(h.vertex.contextName('fake-missing'), [parent]))).status).to.equal('NOT_FOUND');
  });
});
