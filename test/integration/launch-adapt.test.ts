import { existsSync, readFileSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { expect } from 'chai';
import { adaptSpec } from '../../src/vertex/adapt.js';
import { withCaching } from '../../src/vertex/request.js';
import { parseSpec } from '../../src/vertex/spec.js';
import type { PipelineSpec } from '../../src/vertex/spec.js';
import { readYaml } from '../../src/vertex/yaml.js';
import { kfpCorpusDir } from '../helpers/corpus.js';
import { FIXTURE, launchCli, onlyRun, tags, useHarness } from './launch-harness.js';
import type { Harness } from './launch-harness.js';

type Dict = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const KEDRO = path.join(kfpCorpusDir(), 'kedro-vertexai-spaceflights.yaml');
const NOW = () => new Date(Date.UTC(2024, 4, 17, 8, 30, 5));
const JOB_ID = 'spaceflights-20240517083005';
const UUID = '5f1c2a9e-7d44-4c1b-9a0e-2b8d3c4e5f60';

describe('kvx-launch adapt, and run with a kedro-vertexai spec', () => {
  const harness = useHarness();
  let h: Harness;
  let conf: string;
  let config: string;
  beforeEach(async () => {
    h = harness();
    // A kedro project's conf/base, holding vertexai.yml (the harness's) and, when a test writes one, mlflow.yml.
    conf = path.join(h.dir, 'project', 'conf', 'base');
    await rm(path.join(h.dir, 'project'), { recursive: true, force: true });
    await mkdir(conf, { recursive: true });
    config = path.join(conf, 'vertexai.yml');
    await writeFile(config, await readFile(h.config, 'utf8'));
  });
  const mlflowYml = (experiment: string, run?: string) =>
    writeFile(path.join(conf, 'mlflow.yml'), ['server:', '  mlflow_tracking_uri: null', 'tracking:', '  experiment:', `    name: ${experiment}`, ...(run ? ['  run:', `    name: ${run}`] : []), ''].join('\n'));
  const compiled = (): Dict => parseSpec(readFileSync(KEDRO, 'utf8'), KEDRO).spec as Dict;

  it('adapt writes the adapted spec, printing every change; adapting it again changes nothing and says so', async () => {
    const out = path.join(h.dir, 'adapted.yaml');
    const res = await launchCli(h, ['adapt', KEDRO, '-c', config, '-o', out]);
    expect(res.code, res.stderr).to.equal(0);
    const changes = res.stderr.split('\n').filter((l) => l.startsWith('kvx-launch: adapted: '));
    const expected = adaptSpec(compiled() as PipelineSpec);
    expect(changes.map((l) => l.slice('kvx-launch: adapted: '.length))).to.deep.equal(expected.changes);
    expect(readYaml(await readFile(out, 'utf8')).documents[0]).to.deep.equal(JSON.parse(JSON.stringify(expected.spec)));

    const again = path.join(h.dir, 'again.yaml');
    const second = await launchCli(h, ['adapt', out, '-c', config, '-o', again]);
    expect(second.code).to.equal(0);
    expect(second.stderr).to.include('adapted already; nothing changed');
    expect(second.stderr).to.not.include('adapted: ');
    expect(await readFile(again, 'utf8')).to.equal(await readFile(out, 'utf8'));
  });

  it('adapt takes the executable path and step config from flags', async () => {
    const res = await launchCli(h, ['adapt', KEDRO, '-c', config, '--proxy-path', '/opt/kvx/bin/kvx-proxy', '--step-config', 'conf/{env}/kvx.yml']);
    expect(res.code, res.stderr).to.equal(0);
    const spec = readYaml(res.stdout).documents[0] as Dict;
    expect(spec['deploymentSpec']['executors']['exec-train-model-node']['container']['command'].slice(3, 7)).to.deep.equal(['/opt/kvx/bin/kvx-proxy', 'exec', '--config', 'conf/base/kvx.yml']);
  });

  it('adapt refuses a spec that is not kedro-vertexai\'s, naming why', async () => {
    const res = await launchCli(h, ['adapt', FIXTURE, '-c', config, '-o', path.join(h.dir, 'x.yaml')]);
    expect(res.code).to.equal(1);
    expect(res.stderr).to.include('is not a kedro-vertexai pipeline');
  });

  it('run --dry-run shows the adapted request and the changes, creating nothing', async () => {
    const res = await launchCli(h, ['run', KEDRO, '-c', config, '--param', 'dataset=companies', '--dry-run', '--json'], { deps: { now: NOW } });
    expect(res.code, res.stderr).to.equal(0);
    const report = JSON.parse(res.stdout);
    const spec = report.request.pipelineJob.pipelineSpec;
    expect(spec.root.dag.tasks).to.have.keys('exit-handler-1', 'kvx-end-run');
    expect(spec.deploymentSpec.executors['exec-train-model-node'].container.command[3]).to.equal('kvx-proxy');
    expect(report.request.pipelineJob.runtimeConfig.parameterValues).to.deep.equal({ dataset: 'companies', mlflow_run_id: '<mlflow-run-id>' });
    expect(report.adaptation.changes).to.deep.equal(adaptSpec(compiled() as PipelineSpec).changes);
    expect(report.mlflow.tagsAfterSubmit).to.not.have.property('vertexai_run_id');
    expect(res.stderr).to.include('kvx-launch: adapted: exit task kvx-end-run added');
    expect(h.mlflow.store.runs.size).to.equal(0);
    expect(h.vertex.jobs.size).to.equal(0);
  });

  it('run of a spec adapted already submits it as it is, saying so, and still passes its run id', async () => {
    const out = path.join(h.dir, 'adapted.json');
    expect((await launchCli(h, ['adapt', KEDRO, '-c', config, '-o', out, '--json'])).code).to.equal(0);
    const res = await launchCli(h, ['run', out, '-c', config, '--param', 'dataset=companies', '--dry-run', '--json'], { deps: { now: NOW } });
    expect(res.code, res.stderr).to.equal(0);
    expect(res.stderr).to.include('adapted already; nothing changed');
    const report = JSON.parse(res.stdout);
    expect(report.adaptation.changes).to.deep.equal([]);
    expect(report.request.pipelineJob.pipelineSpec).to.deep.equal(JSON.parse(JSON.stringify(withCaching(JSON.parse(await readFile(out, 'utf8')) as PipelineSpec, false))));
    expect(report.request.pipelineJob.runtimeConfig.parameterValues).to.deep.equal({ dataset: 'companies', mlflow_run_id: '<mlflow-run-id>' });
    expect(report.mlflow.tagsAfterSubmit).to.not.have.property('vertexai_run_id');
  });

  it('run --no-adapt submits the spec as compiled and warns of the second run its start step makes', async () => {
    const res = await launchCli(h, ['run', KEDRO, '-c', config, '--param', 'dataset=companies', '--dry-run', '--json', '--no-adapt'], { deps: { now: NOW } });
    expect(res.code, res.stderr).to.equal(0);
    const report = JSON.parse(res.stdout);
    expect(report.request.pipelineJob.pipelineSpec).to.deep.equal(JSON.parse(JSON.stringify(withCaching(compiled() as PipelineSpec, false))));
    expect(report.request.pipelineJob.runtimeConfig.parameterValues).to.deep.equal({ dataset: 'companies' });
    expect(report).to.not.have.property('adaptation');
    expect(res.stderr).to.include('submitted with --no-adapt: its mlflow-start-run step makes a second MLflow run');
  });

  it('run submits the adapted spec with its run id as mlflow_run_id, in mlflow.yml\'s experiment under tracking.run.name, and says so', async () => {
    await mlflowYml('spaceflights-kedro', 'nightly');
    const res = await launchCli(h, ['run', KEDRO, '-c', config, '--param', 'dataset=companies'], { deps: { now: NOW } });
    expect(res.code, res.stderr).to.equal(0);
    expect(res.stderr).to.include('experiment "spaceflights-kedro" (tracking.experiment.name in');
    expect(res.stderr).to.include('not in "spaceflights" (run_config.experiment_name');
    const run = onlyRun(h);
    const experiment = h.mlflow.store.experiments.get(run.info.experiment_id)!;
    expect(experiment.name).to.equal('spaceflights-kedro');
    expect(run.info.run_name).to.equal('nightly');
    const job = h.vertex.jobs.get(JOB_ID)!;
    expect((job.body['runtimeConfig'] as Dict)['parameterValues']).to.deep.equal({ dataset: 'companies', mlflow_run_id: run.info.run_id });
    expect((job.spec['root'] as Dict)['dag']['tasks']).to.have.keys('exit-handler-1', 'kvx-end-run');
    // vertexai_run_id is written inside the pipeline (start-run, the hook), with the hook's value: not here.
    expect(tags(run)).to.not.have.property('vertexai_run_id');
    expect(tags(run)['vertexai_job_resource_name']).to.equal(job.body['name'] ?? `projects/${h.vertex.projectNumber}/locations/europe-west4/pipelineJobs/${JOB_ID}`);
    expect(tags(run)['vertexai_job_name']).to.equal(JOB_ID);
  });

  describe("mlflow.yml's server.mlflow_tracking_uri", () => {
    /** The project's vertexai.yml without kvx.upstream.url: where the MLflow server is named is the point. */
    const withoutUpstream = async () => {
      const text = await readFile(config, 'utf8');
      await writeFile(config, text.replace(/^ {2}upstream:\n {4}url: .*\n/m, ''));
      expect(await readFile(config, 'utf8')).to.not.include('upstream');
    };
    const trackingUri = (value: string, dir = conf) => writeFile(path.join(dir, 'mlflow.yml'), ['server:', `  mlflow_tracking_uri: ${value}`, 'tracking:', '  experiment:', '    name: spaceflights-kedro', ''].join('\n'));

    it('names the MLflow server of start-run and end-run when vertexai.yml and MLFLOW_TRACKING_URI do not', async () => {
      await withoutUpstream();
      await trackingUri(h.mlflow.url);
      const output = path.join(h.dir, 'out');
      const started = await launchCli(h, ['start-run', '-c', config, '--run-id', '', '--job-name', JOB_ID, '--job-id', UUID, '--output', output]);
      expect(started.code, started.stderr).to.equal(0);
      const run = onlyRun(h);
      expect(await readFile(output, 'utf8')).to.equal(run.info.run_id);
      expect(h.mlflow.store.experiments.get(run.info.experiment_id)!.name).to.equal('spaceflights-kedro');
      const ended = await launchCli(h, ['end-run', '-c', config, '--run-id', '', '--job-name', JOB_ID, '--status', JSON.stringify({ state: 'SUCCEEDED' })]);
      expect(ended.code, ended.stderr).to.equal(0);
      expect(run.info.status).to.equal('FINISHED');
    });

    it('MLFLOW_TRACKING_URI wins over it', async () => {
      await withoutUpstream();
      await trackingUri('http://127.0.0.1:9/never-called');
      const res = await launchCli(h, ['start-run', '-c', config, '--run-id', '', '--job-name', JOB_ID, '--output', path.join(h.dir, 'out')], { env: { MLFLOW_TRACKING_URI: h.mlflow.url } });
      expect(res.code, res.stderr).to.equal(0);
      expect(h.mlflow.store.runs.size).to.equal(1);
    });

    it("as ${oc.env:MLFLOW_TRACKING_URI,<url>} its default names the server, and run submits the adapted spec", async () => {
      await withoutUpstream();
      await trackingUri(`\${oc.env:MLFLOW_TRACKING_URI,${h.mlflow.url}}`);
      const res = await launchCli(h, ['run', KEDRO, '-c', config, '--param', 'dataset=companies'], { deps: { now: NOW } });
      expect(res.code, res.stderr).to.equal(0);
      expect(res.stderr).to.not.include('mlflow_tracking_uri');
      const run = onlyRun(h);
      expect(h.mlflow.store.experiments.get(run.info.experiment_id)!.name).to.equal('spaceflights-kedro');
      expect((h.vertex.jobs.get(JOB_ID)!.spec['root'] as Dict)['dag']['tasks']).to.have.keys('exit-handler-1', 'kvx-end-run');
    });

    it('fixed, makes run and adapt refuse the adapted pipeline, naming the file, the key and the fix; --no-adapt submits it', async () => {
      await withoutUpstream();
      await trackingUri(h.mlflow.url);
      const file = path.join(conf, 'mlflow.yml');
      for (const argv of [
        ['run', KEDRO, '-c', config, '--param', 'dataset=companies'],
        ['run', KEDRO, '-c', config, '--param', 'dataset=companies', '--dry-run'],
        ['adapt', KEDRO, '-c', config, '-o', path.join(h.dir, 'refused.yaml')],
      ]) {
        const res = await launchCli(h, argv, { deps: { now: NOW } });
        expect(res.code, `${argv.join(' ')}: ${res.stderr}`).to.equal(2);
        expect(res.stderr).to.include(`server.mlflow_tracking_uri in ${file}: "${h.mlflow.url}": kedro-mlflow calls mlflow.set_tracking_uri() with it in every step`);
        expect(res.stderr).to.include('set server.mlflow_tracking_uri to null').and.include('${oc.env:MLFLOW_TRACKING_URI,<its URL>}').and.include('"oc.env": oc.env');
      }
      expect(h.mlflow.store.runs.size).to.equal(0);
      expect(h.vertex.jobs.size).to.equal(0);
      expect(existsSync(path.join(h.dir, 'refused.yaml'))).to.equal(false);

      // Submitted as compiled, the steps use mlflow.yml's server themselves; so does the launcher.
      const untouched = await launchCli(h, ['run', KEDRO, '-c', config, '--param', 'dataset=companies', '--no-adapt'], { deps: { now: NOW } });
      expect(untouched.code, untouched.stderr).to.equal(0);
      expect(h.mlflow.store.runs.size).to.equal(1);
    });

    it("checks the mlflow.yml of the env the steps run with, over conf/base's", async () => {
      const prod = path.join(h.dir, 'project', 'conf', 'prod');
      await mkdir(prod, { recursive: true });
      await trackingUri('https://mlflow.example.com');
      await writeFile(path.join(prod, 'mlflow.yml'), 'server:\n  mlflow_tracking_uri: null\n');
      const spec = path.join(h.dir, 'prod.yaml');
      await writeFile(spec, readFileSync(KEDRO, 'utf8').replaceAll('-e base', '-e prod'));
      // The launcher's vertexai.yml is conf/base's; the steps read conf/prod/mlflow.yml, where it is null.
      const prodSteps = await launchCli(h, ['run', spec, '-c', config, '--param', 'dataset=companies', '--dry-run'], { deps: { now: NOW } });
      expect(prodSteps.code, prodSteps.stderr).to.equal(0);
      const baseSteps = await launchCli(h, ['run', KEDRO, '-c', config, '--param', 'dataset=companies', '--dry-run'], { deps: { now: NOW } });
      expect(baseSteps.code).to.equal(2);
      expect(baseSteps.stderr).to.include(path.join(conf, 'mlflow.yml'));
    });

    it('an interpolation kvx cannot resolve is a warning, not a refusal', async () => {
      await trackingUri('${globals:mlflow_uri}');
      const res = await launchCli(h, ['run', KEDRO, '-c', config, '--param', 'dataset=companies', '--dry-run'], { deps: { now: NOW } });
      expect(res.code, res.stderr).to.equal(0);
      expect(res.stderr).to.include('kvx-launch: warning: ').and.include('server.mlflow_tracking_uri "${globals:mlflow_uri}" is an interpolation kvx does not resolve');
    });
  });

  describe('the in-step commands', () => {
    const launched = async () => {
      const res = await launchCli(h, ['run', KEDRO, '-c', config, '--param', 'dataset=companies'], { deps: { now: NOW } });
      expect(res.code, res.stderr).to.equal(0);
      return onlyRun(h);
    };
    const startRun = (runId: string, output: string) =>
      launchCli(h, ['start-run', '-c', config, '--run-id', runId, '--job-name', JOB_ID, '--job-id', UUID, '--output', output]);

    it('start-run resumes the launcher\'s run: one run, its id in the output file, the hook\'s vertexai_run_id', async () => {
      const run = await launched();
      const output = path.join(h.dir, 'outputs', 'mlflow_run_id');
      const res = await startRun(run.info.run_id, output);
      expect(res.code, res.stderr).to.equal(0);
      expect(res.stderr).to.include(`MLflow run ${run.info.run_id} resumed`);
      expect(await readFile(output, 'utf8')).to.equal(run.info.run_id);
      expect(h.mlflow.store.runs.size).to.equal(1);
      // What kedro-vertexai's hook writes in every step: KEDRO_CONFIG_RUN_ID={{$.pipeline_job_uuid}}, KEDRO_CONFIG_JOB_NAME={{$.pipeline_job_name}}.
      expect(tags(run)).to.include({ vertexai_run_id: UUID, vertexai_job_name: JOB_ID });
    });

    it('start-run without the launcher\'s run creates one, once, in mlflow.yml\'s experiment', async () => {
      await mlflowYml('spaceflights-kedro', 'nightly');
      const output = path.join(h.dir, 'out1');
      const first = await startRun('', output);
      expect(first.code, first.stderr).to.equal(0);
      const retry = await startRun('', path.join(h.dir, 'out2'));
      expect(retry.code, retry.stderr).to.equal(0);
      const run = onlyRun(h);
      expect(await readFile(output, 'utf8')).to.equal(run.info.run_id);
      expect(await readFile(path.join(h.dir, 'out2'), 'utf8')).to.equal(run.info.run_id);
      expect(h.mlflow.store.experiments.get(run.info.experiment_id)!.name).to.equal('spaceflights-kedro');
      expect(run.info.run_name).to.equal('nightly');
      expect(retry.stderr).to.include('reused');
    });

    const resourceName = `projects/${'123456789012'}/locations/europe-west4/pipelineJobs/${JOB_ID}`;
    const status = (state: string, message?: string) =>
      JSON.stringify({ state, pipelineJobResourceName: resourceName, pipelineTaskName: 'exit-handler-1', ...(message ? { error: { code: 9, message } } : {}) });
    const endRun = (runId: string, state: string, message?: string) =>
      launchCli(h, ['end-run', '-c', config, '--run-id', runId, '--job-name', JOB_ID, '--job-resource-name', resourceName, '--status', status(state, message)]);
    /** Polls the fake job, as Vertex runs it, until the exit task has started (the pipeline's other tasks are done). */
    const untilExitTask = async () => {
      const token = h.metadata.accessTokens.issue('test@my-project.iam.gserviceaccount.com', 3600).access_token;
      for (let i = 0; i < 200; i++) {
        const reply = await fetch(`${h.vertex.url}/v1/projects/my-project/locations/europe-west4/pipelineJobs/${JOB_ID}`, { headers: { authorization: `Bearer ${token}` } });
        const job = (await reply.json()) as Dict;
        const exit = (job['jobDetail']?.['taskDetails'] ?? []).find((t: Dict) => t['taskName'] === 'kvx-end-run');
        if (exit !== undefined && exit['state'] === 'RUNNING') return job;
        if (['PIPELINE_STATE_SUCCEEDED', 'PIPELINE_STATE_FAILED'].includes(job['state'])) throw new Error(`job ended before its exit task ran: ${job['state']}`);
      }
      throw new Error('the exit task never started');
    };

    it('end-run records the failed task and its error from the job and ends the run FAILED; follow then keeps that end', async () => {
      h.vertex.nextOutcome = { failAt: 'train-model-node', error: 'KeyError: shuttles' };
      const run = await launched();
      const job = await untilExitTask();
      expect(job['state']).to.equal('PIPELINE_STATE_RUNNING');
      const res = await endRun(run.info.run_id, 'FAILED', 'The DAG failed because some tasks failed.');
      expect(res.code, res.stderr).to.equal(0);
      expect(res.stdout).to.include(`pipeline FAILED; MLflow run ${run.info.run_id} FAILED`);
      expect(run.info.status).to.equal('FAILED');
      expect(tags(run)).to.include({ vertexai_job_state: 'FAILED', vertexai_failed_task: 'train-model-node', vertexai_failed_task_error: 'KeyError: shuttles', vertexai_last_task: 'train-model-node' });
      const endTime = run.info.end_time;

      const followed = await launchCli(h, ['follow', JOB_ID, '-c', config, '--poll-interval', '0.01', '--json']);
      expect(followed.code).to.equal(1);
      expect(JSON.parse(followed.stdout)).to.include({ state: 'FAILED', runStatus: 'FAILED' });
      expect(run.info.end_time).to.equal(endTime);
      expect(tags(run)).to.include({ vertexai_failed_task: 'train-model-node', vertexai_failed_task_error: 'KeyError: shuttles' });
    });

    it('a step that exits 127 (an image without kvx) gets the likely cause in vertexai_failed_task_error', async () => {
      const vertexMessage = 'The replica workerpool0-0 exited with a non-zero status of 127. Termination reason: Error.';
      h.vertex.nextOutcome = { failAt: 'preprocess-companies-node', error: vertexMessage };
      const run = await launched();
      await untilExitTask();
      expect((await endRun(run.info.run_id, 'FAILED')).code).to.equal(0);
      expect(tags(run)['vertexai_failed_task']).to.equal('preprocess-companies-node');
      expect(tags(run)['vertexai_failed_task_error']).to.include(vertexMessage).and.include('may lack kvx-proxy or kvx-launch');
    });

    it('end-run of a pipeline that succeeded ends the run FINISHED; run again it keeps that end', async () => {
      const run = await launched();
      await untilExitTask();
      const res = await endRun(run.info.run_id, 'SUCCEEDED');
      expect(res.code, res.stderr).to.equal(0);
      expect(run.info.status).to.equal('FINISHED');
      expect(tags(run)).to.include({ vertexai_job_state: 'SUCCEEDED', vertexai_last_task: 'train-model-node' });
      expect(tags(run)).to.not.have.property('vertexai_failed_task');
      const retried = await endRun(run.info.run_id, 'SUCCEEDED');
      expect(retried.code).to.equal(0);
      expect(retried.stdout).to.include('kept');
    });

    it('end-run of a cancelled pipeline ends the run KILLED; without the launcher\'s run it finds the run start-run made', async () => {
      const output = path.join(h.dir, 'out');
      expect((await startRun('', output)).code).to.equal(0);
      const run = onlyRun(h);
      const res = await launchCli(h, ['end-run', '-c', config, '--run-id', '', '--job-name', JOB_ID, '--status', JSON.stringify({ state: 'CANCELLED' })]);
      expect(res.code, res.stderr).to.equal(0);
      expect(run.info.status).to.equal('KILLED');
      expect(tags(run)).to.include({ vertexai_job_state: 'CANCELLED' });
    });

    it('end-run refuses an unfilled placeholder and a status that is not final', async () => {
      const unfilled = await launchCli(h, ['end-run', '-c', config, '--run-id', 'x', '--status', "{{$.inputs.parameters['status']}}"]);
      expect(unfilled.code).to.equal(1);
      expect(unfilled.stderr).to.include('unfilled placeholder');
      const running = await launchCli(h, ['end-run', '-c', config, '--run-id', 'x', '--status', '{"state": "RUNNING"}']);
      expect(running.code).to.equal(1);
      expect(running.stderr).to.include('is not a final state');
    });
  });
});
