/**
 * kvx-launch run --dry-run (issue 14): the exact pipelineJobs.create request and the MLflow actions, with nothing
 * created anywhere; and what it prints is what a real run of the same inputs then sends.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import { KvxError } from '../../src/errors.js';
import { MLFLOW_RUN_ID_PARAMETER } from '../../src/vertex/params.js';
import { loadSpecFile } from '../../src/vertex/spec.js';
import { kfpCorpusDir, sample, specFiles } from '../helpers/corpus.js';
import { FIXTURE, launchCli, onlyRun, tags, useHarness } from './launch-harness.js';
import type { Harness } from './launch-harness.js';
import type { DryRunReport } from '../../src/launch/dry-run.js';

const NOW = () => new Date(Date.UTC(2024, 4, 17, 8, 30, 5));
const JOB_ID = 'spaceflights-20240517083005';
const fixture = (name: string) => fileURLToPath(new URL(`../fixtures/kfp/${name}`, import.meta.url));

// What `--dry-run --json` prints is the report type itself: a field renamed in src cannot go unnoticed here.
type DryRun = DryRunReport;

/** The dry run's values with its placeholders replaced by what the real run got. */
function substitute<T>(value: T, actual: Record<string, string>): T {
  let text = JSON.stringify(value);
  for (const [placeholder, real] of Object.entries(actual)) text = text.split(placeholder).join(real);
  return JSON.parse(text) as T;
}

describe('kvx-launch run --dry-run', () => {
  const harness = useHarness();
  let h: Harness;
  beforeEach(() => {
    h = harness();
  });
  const args = ['--param', 'dataset=companies-v2', '--param', 'epochs=20', '--param', 'features=["engines","crew"]', '--label', 'owner=ana'];
  const run = (spec: string, ...more: string[]) => launchCli(h, ['run', spec, '-c', h.config, '--poll-interval', '0.01', ...more], { deps: { now: NOW } });

  /** Nothing but reads reached the fakes: the experiment looked up by name, a template downloaded. */
  function expectNothingChanged(): void {
    expect(h.mlflow.requests.map((r) => `${r.method} ${r.path.split('?')[0]}`).filter((r) => r !== 'GET /api/2.0/mlflow/experiments/get-by-name')).to.deep.equal([]);
    expect(h.vertex.requests.filter((r) => r.method !== 'GET' || !r.path.startsWith('/kfp/'))).to.deep.equal([]);
    expect(h.mlflow.store.runs.size).to.equal(0);
    expect(h.mlflow.store.experimentByName('spaceflights')).to.equal(undefined);
    expect(h.vertex.jobs.size).to.equal(0);
    expect(h.vertex.contexts.size).to.equal(0);
  }

  it('--json prints the create request and the MLflow actions, creates nothing, and a real run then sends exactly that', async () => {
    const dry = await run(FIXTURE, ...args, '--dry-run', '--json');
    expect(dry.code, dry.stderr).to.equal(0);
    expect(dry.stderr).to.equal('');
    expectNothingChanged();
    expect(h.mlflow.requests.map((r) => `${r.method} ${r.path.split('?')[0]} ${r.status}`)).to.deep.equal(['GET /api/2.0/mlflow/experiments/get-by-name 404']);

    const report = JSON.parse(dry.stdout) as DryRun;
    expect(report.dryRun).to.equal(true);
    expect(report.create).to.equal(`POST ${h.vertex.url}/v1/projects/my-project/locations/europe-west4/pipelineJobs?pipelineJobId=${JOB_ID}`);
    expect(report.request.pipelineJobId).to.equal(JOB_ID);
    expect(Object.keys(report.request)).to.deep.equal(['pipelineJobId', 'pipelineJob']);
    expect(report.mlflow.experiment).to.deep.equal({ name: 'spaceflights', action: 'create', experimentId: '<mlflow-experiment-id>' });
    expect(report.mlflow.trackingUri).to.equal(h.mlflow.url);
    expect(report.mlflow.run.name).to.equal(JOB_ID);
    expect(report.mlflow.jobLabels).to.deep.equal({ mlflow_run_id: '<mlflow-run-id>', mlflow_experiment_id: '<mlflow-experiment-id>' });
    expect(report.mlflow.follow).to.equal(false);
    expect(Object.keys(report.placeholders)).to.include.members(['<mlflow-run-id>', '<mlflow-experiment-id>', '<job-resource-name>', '<job-state>', '<create-id>']);
    const runtime = report.request.pipelineJob['runtimeConfig'] as { parameterValues: Record<string, unknown> };
    expect(runtime.parameterValues['mlflow_run_id']).to.equal('<mlflow-run-id>');

    const real = await run(FIXTURE, ...args, '--json');
    expect(real.code, real.stderr).to.equal(0);
    const mlflowRun = onlyRun(h);
    const job = h.vertex.jobs.get(JOB_ID)!;
    const actual = {
      '<mlflow-run-id>': mlflowRun.info.run_id,
      '<mlflow-experiment-id>': mlflowRun.info.experiment_id,
      '<job-resource-name>': `projects/${h.vertex.projectNumber}/locations/europe-west4/pipelineJobs/${JOB_ID}`,
      '<job-state>': 'QUEUED',
      '<create-id>': tags(mlflowRun)['kvx_create_id']!,
    };
    // The body Vertex received is the dry run's, to the byte once the run id is known.
    expect(JSON.stringify(job.body)).to.equal(JSON.stringify(substitute(report.request.pipelineJob, actual)));
    expect(h.vertex.requests.find((r) => r.method === 'POST')!.path).to.equal(`/v1/projects/my-project/locations/europe-west4/pipelineJobs?pipelineJobId=${JOB_ID}`);
    // The run was created with the dry run's name and tags, and given its after-submit tags.
    expect(mlflowRun.info.run_name).to.equal(report.mlflow.run.name);
    // (mlflow.runName is the server's copy of the run name.)
    expect(tags(mlflowRun)).to.deep.equal(substitute({ ...report.mlflow.run.tags, 'mlflow.runName': report.mlflow.run.name, ...report.mlflow.tagsAfterSubmit }, actual));
    expect(job.body['labels']).to.include(substitute(report.mlflow.jobLabels, actual));
  });

  it('without --json: a summary, then the request as JSON', async () => {
    const dry = await run(FIXTURE, ...args, '--dry-run', '--wait');
    expect(dry.code, dry.stderr).to.equal(0);
    expectNothingChanged();
    expect(dry.stdout).to.match(/^dry run: nothing was created/);
    expect(dry.stdout).to.include('MLflow experiment spaceflights: does not exist; would be created');
    expect(dry.stdout).to.include(`create MLflow run ${JOB_ID} with tags:`);
    expect(dry.stdout).to.include(`    vertexai_job_name: ${JOB_ID}`);
    expect(dry.stdout).to.include('    vertexai_run_id: <job-resource-name>');
    expect(dry.stdout).to.include('follow the job (--wait)');
    expect(dry.stdout).to.include('  <mlflow-run-id>: ');
    const marker = 'pipelineJobs.create request:\n';
    const at = dry.stdout.indexOf(marker);
    expect(at).to.be.above(0);
    const request = JSON.parse(dry.stdout.slice(at + marker.length)) as DryRun['request'];
    const json = JSON.parse((await run(FIXTURE, ...args, '--dry-run', '--json')).stdout) as DryRun;
    expect(request).to.deep.equal(json.request);
  });

  it('an experiment that exists is used by id, a deleted one is to be restored; neither is changed', async () => {
    const exp = h.mlflow.store.createExperiment('spaceflights');
    const used = JSON.parse((await run(FIXTURE, ...args, '--dry-run', '--json')).stdout) as DryRun;
    expect(used.mlflow.experiment).to.deep.equal({ name: 'spaceflights', action: 'use', experimentId: exp.experiment_id });
    expect(used.mlflow.jobLabels['mlflow_experiment_id']).to.equal(exp.experiment_id);
    expect(used.placeholders).not.to.have.property('<mlflow-experiment-id>');
    exp.lifecycle_stage = 'deleted';
    const restored = JSON.parse((await run(FIXTURE, ...args, '--dry-run', '--json')).stdout) as DryRun;
    expect(restored.mlflow.experiment).to.deep.equal({ name: 'spaceflights', action: 'restore', experimentId: exp.experiment_id });
    expect(exp.lifecycle_stage).to.equal('deleted');
    expect(h.mlflow.requests.every((r) => r.method === 'GET')).to.equal(true);
    expect(h.mlflow.store.runs.size).to.equal(0);
  });

  it('a template is downloaded (a read) and shown as it would be sent: its spec with caching off, and its URI', async () => {
    const uri = `${h.vertex.url}/kfp/my-project/kfp-repo/spaceflights/v3`;
    h.vertex.templates.set(uri, await readFile(FIXTURE, 'utf8'));
    const dry = await launchCli(h, ['run', '--template-uri', uri, '-c', h.config, ...args, '--dry-run', '--json'], { deps: { now: NOW } });
    expect(dry.code, dry.stderr).to.equal(0);
    expectNothingChanged();
    expect(h.vertex.requests.map((r) => `${r.method} ${r.path} ${r.status}`)).to.deep.equal(['GET /kfp/my-project/kfp-repo/spaceflights/v3 200']);
    const report = JSON.parse(dry.stdout) as DryRun;
    const job = report.request.pipelineJob as { templateUri: string; pipelineSpec: { root: { dag: { tasks: Record<string, { cachingOptions?: unknown }> } } } };
    expect(job.templateUri).to.equal(uri);
    for (const task of Object.values(job.pipelineSpec.root.dag.tasks)) expect(task.cachingOptions).to.deep.equal({ enableCache: false });
  });

  it('with vertex.experiment: says what it would do there, and reads or creates no context', async () => {
    const report = JSON.parse((await run(FIXTURE, ...args, '--experiment', 'spaceflights-exp', '--dry-run', '--json')).stdout) as DryRun;
    expectNothingChanged();
    expect(report.vertexExperiment?.name).to.equal('spaceflights-exp');
    expect(report.vertexExperiment?.actions.join(' ')).to.include('addContextChildren');
    expect(report.mlflow.run.tags).to.include({ vertexai_experiment: 'spaceflights-exp', vertexai_experiment_link: 'pending' });
  });

  it('input artifacts, failure policy and a 2.0.0 spec appear in the request as they would be sent', async () => {
    const dry = await run(fixture('input-artifacts.yaml'), '--artifact', 'model=8884357589702467656', '--failure-policy', 'fast', '--dry-run', '--json');
    expect(dry.code, dry.stderr).to.equal(0);
    const report = JSON.parse(dry.stdout) as DryRun;
    expect(report.request.pipelineJob['runtimeConfig']).to.deep.include({ inputArtifacts: { model: { artifactId: '8884357589702467656' } }, failurePolicy: 'PIPELINE_FAILURE_POLICY_FAIL_FAST' });
    const legacy = JSON.parse((await run(fixture('params-schema-2_0_0.yaml'), '--param', 'epochs=12', '--param', 'learning_rate=0.25', '--param', 'name=n', '--param', 'flags=["a"]', '--dry-run', '--json')).stdout) as DryRun;
    expect((legacy.request.pipelineJob['runtimeConfig'] as { parameters: unknown }).parameters).to.deep.include({ epochs: { intValue: '12' } });
    expectNothingChanged();
  });

  it('refuses what a real run refuses, before any call, and prints the spec warnings', async () => {
    const missing = await run(fixture('input-artifacts.yaml'), '--dry-run', '--json');
    expect(missing.code).to.equal(1);
    expect(missing.stderr).to.include('required input artifact "model" (system.Model) is missing: add --artifact model=');
    expect(missing.stdout).to.equal('');
    expect(h.mlflow.requests).to.deep.equal([]);
    const warned = await run(fixture('multi-document.yaml'), '--dry-run', '--json');
    expect(warned.code, warned.stderr).to.equal(0);
    expect(warned.stderr).to.match(/^kvx-launch: warning: .*multi-document\.yaml: document 2 of 2 ignored/m);
    expect((JSON.parse(warned.stdout) as DryRun).warnings).to.have.length(1);
    expectNothingChanged();
  });

  describe('every spec of the corpus and the fixtures: the dry run is what the real run sends', () => {
    const files = [...specFiles(kfpCorpusDir()), ...specFiles(path.dirname(fixture('x')))];
    for (const file of files) {
      const name = path.basename(file);
      it(name, async () => {
        // The inputs a user would give: each required parameter and artifact.
        const specArgs: string[] = [];
        try {
          const loaded = await loadSpecFile(file);
          const preset = loaded.jobRuntimeConfig?.parameterValues ?? {};
          for (const p of loaded.parameters) if (!p.optional && !p.systemSet && p.name !== MLFLOW_RUN_ID_PARAMETER && !(p.name in preset)) specArgs.push('--param', `${p.name}=${sample(p)}`);
          for (const a of loaded.artifacts.filter((x) => !x.optional)) {
            const id = `art-${a.name.toLowerCase().replace(/[^a-z0-9]+/g, '-')}`;
            h.vertex.artifacts.set(id, { schemaTitle: a.schemaTitle });
            specArgs.push('--artifact', `${a.name}=${id}`);
          }
        } catch (err) {
          if (!(err instanceof KvxError)) throw err;
        }
        const jobId = `dry-${name.toLowerCase().replace(/[^a-z0-9]+/g, '-')}`.slice(0, 100).replace(/-+$/, '');
        const dry = await run(file, ...specArgs, '--job-id', jobId, '--dry-run', '--json');
        expectNothingChanged();
        const real = await run(file, ...specArgs, '--job-id', jobId, '--json');
        if (dry.code !== 0) {
          // Refused: for the same reason, and by the real run too, before anything exists.
          expect(dry.stdout).to.equal('');
          expect({ code: real.code, stderr: real.stderr }).to.deep.equal({ code: dry.code, stderr: dry.stderr });
          expect(h.vertex.jobs.size).to.equal(0);
          return;
        }
        expect(real.code, real.stderr).to.equal(0);
        const report = JSON.parse(dry.stdout) as DryRun;
        const mlflowRun = onlyRun(h);
        const actual = { '<mlflow-run-id>': mlflowRun.info.run_id, '<mlflow-experiment-id>': mlflowRun.info.experiment_id };
        expect(JSON.stringify(h.vertex.jobs.get(jobId)!.body)).to.equal(JSON.stringify(substitute(report.request.pipelineJob, actual)));
      });
    }
  });
});
