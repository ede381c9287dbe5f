/**
 * kvx-launch run with the specs users bring (issue 14): each case end to end against the fake Vertex AI API,
 * which is as strict as the real one.
 */
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import YAML from 'yaml';
import { kfpCorpusDir } from '../helpers/corpus.js';
import { launchCli, onlyRun, tags, useHarness } from './launch-harness.js';
import type { Harness } from './launch-harness.js';

const NOW = () => new Date(Date.UTC(2024, 4, 17, 8, 30, 5));
const JOB_ID = 'spaceflights-20240517083005';
const fixture = (name: string) => fileURLToPath(new URL(`../fixtures/kfp/${name}`, import.meta.url));
const corpus = (name: string) => path.join(kfpCorpusDir(), name);

type Runtime = { gcsOutputDirectory: string; parameters?: Record<string, unknown>; parameterValues?: Record<string, unknown> };

describe('kvx-launch run: the specs users bring', () => {
  const harness = useHarness();
  let h: Harness;
  beforeEach(() => {
    h = harness();
  });
  const run = (spec: string, ...args: string[]) => launchCli(h, ['run', spec, '-c', h.config, '--poll-interval', '0.01', ...args], { deps: { now: NOW } });
  const runtime = () => h.vertex.jobs.get(JOB_ID)!.body['runtimeConfig'] as Runtime;

  it('schemaVersion 2.0.0 (KFP 1.x): values go in runtimeConfig.parameters by declared type, ints as strings', async () => {
    const res = await run(fixture('params-schema-2_0_0.yaml'), '--param', 'epochs=12', '--param', 'learning_rate=0.25', '--param', 'name=n', '--param', 'flags=["a"]', '--wait');
    expect(res.code, res.stderr).to.equal(0);
    expect(runtime().parameters).to.deep.equal({ epochs: { intValue: '12' }, learning_rate: { doubleValue: 0.25 }, name: { stringValue: 'n' }, flags: { stringValue: '["a"]' } });
    expect(runtime()).not.to.have.property('parameterValues');
    expect(onlyRun(h).info.status).to.equal('FINISHED');
  });

  it('a corpus 2.0.0 spec (KFP 1.6) submits and runs', async () => {
    const res = await run(corpus('kfp-hello_world_schema_2_0_0.yaml'), '--param', 'text=hi', '--wait');
    expect(res.code, res.stderr).to.equal(0);
    expect(runtime().parameters).to.deep.equal({ text: { stringValue: 'hi' } });
  });

  it('a whole PipelineJob file: its runtimeConfig defaults apply under --param, its output directory when no root is set', async () => {
    const noRoot = path.join(h.dir, 'no-root.yml');
    await writeFile(noRoot, (await readFile(h.config, 'utf8')).replace('  root: my-bucket/pipelines\n', ''));
    const res = await launchCli(h, ['run', fixture('jobjson-runtime-defaults.json'), '-c', noRoot, '--param', 'epochs=9'], { deps: { now: NOW } });
    expect(res.code, res.stderr).to.equal(0);
    expect(runtime()).to.deep.equal({
      gcsOutputDirectory: 'gs://job-file-bucket/root',
      parameters: { epochs: { intValue: '9' }, learning_rate: { doubleValue: 0.01 }, dataset: { stringValue: 'companies' } },
    });
  });

  it('the KFP 1.8 PipelineJob file of the corpus runs without --param: its default comes from the file', async () => {
    const res = await run(corpus('kfp18-jobjson-two_step_pipeline.json'));
    expect(res.code, res.stderr).to.equal(0);
    expect(runtime().parameterValues).to.deep.equal({ text: 'Hello KFP!' });
  });

  it('a hand-edited spec that PyYAML reads loads with the values PyYAML reads', async () => {
    const res = await run(fixture('pyyaml-only.yaml'));
    expect(res.code, res.stderr).to.equal(0);
    const expected = JSON.parse(await readFile(fixture('pyyaml-only.pyyaml.json'), 'utf8')) as { deploymentSpec: unknown };
    expect((h.vertex.jobs.get(JOB_ID)!.body['pipelineSpec'] as { deploymentSpec: unknown }).deploymentSpec).to.deep.equal(expected.deploymentSpec);
  });

  it('a multi-document file with the platform spec first: the pipeline document is used', async () => {
    const [first, second] = (await readFile(fixture('multi-document.yaml'), 'utf8')).split('\n---\n') as [string, string];
    const swapped = path.join(h.dir, 'platform-first.yaml');
    await writeFile(swapped, `${second}\n---\n${first}`);
    const res = await run(swapped);
    expect(res.code, res.stderr).to.equal(0);
    expect((h.vertex.jobs.get(JOB_ID)!.body['pipelineSpec'] as { pipelineInfo: { name: string } }).pipelineInfo.name).to.equal('with-platform-spec');
  });

  it('a spec that needs root input artifacts is refused before anything is created, listing what it needs', async () => {
    const res = await run(fixture('input-artifacts.yaml'));
    expect(res.code).to.equal(1);
    expect(res.stderr).to.include('required input artifact "model" (system.Model) is missing');
    expect(res.stderr).to.include('  model: system.Model (required)');
    expect(h.mlflow.store.runs.size).to.equal(0);
    expect(h.vertex.jobs.size).to.equal(0);
  });

  it('--artifact passes root input artifacts by id or resource name into runtimeConfig.inputArtifacts', async () => {
    h.vertex.artifacts.set('8884357589702467656', { schemaTitle: 'system.Model' });
    h.vertex.artifacts.set('baseline-3', { schemaTitle: 'system.Metrics' });
    const res = await run(
      fixture('input-artifacts.yaml'),
      '--artifact',
      'model=projects/123456789012/locations/europe-west4/metadataStores/default/artifacts/8884357589702467656',
      '--artifact',
      'baseline=baseline-3',
      '--wait',
    );
    expect(res.code, res.stderr).to.equal(0);
    expect(runtime()).to.deep.include({ inputArtifacts: { model: { artifactId: '8884357589702467656' }, baseline: { artifactId: 'baseline-3' } } });
    expect(onlyRun(h).info.status).to.equal('FINISHED');
  });

  it('an --artifact the spec does not declare, or one in another region, is refused before anything is created', async () => {
    const res = await run(fixture('input-artifacts.yaml'), '--artifact', 'model=projects/my-project/locations/us-central1/metadataStores/default/artifacts/m1', '--artifact', 'scaler=s1');
    expect(res.code).to.equal(1);
    expect(res.stderr).to.include('unknown input artifact "scaler"');
    expect(res.stderr).to.include('it is in us-central1; the job runs in europe-west4');
    expect(res.stderr).to.include('  baseline: system.Metrics (optional)');
    expect(h.mlflow.store.runs.size).to.equal(0);
    expect(h.vertex.requests).to.deep.equal([]);
  });

  it('--failure-policy fast|slow goes in runtimeConfig.failurePolicy, as the SDK sends it', async () => {
    const fast = await run(fixture('multi-document.yaml'), '--failure-policy', 'fast');
    expect(fast.code, fast.stderr).to.equal(0);
    expect(runtime()).to.deep.include({ failurePolicy: 'PIPELINE_FAILURE_POLICY_FAIL_FAST' });
    const slow = await run(fixture('multi-document.yaml'), '--failure-policy', 'slow', '--job-id', 'slow-one');
    expect(slow.code, slow.stderr).to.equal(0);
    expect(h.vertex.jobs.get('slow-one')!.body['runtimeConfig']).to.deep.include({ failurePolicy: 'PIPELINE_FAILURE_POLICY_FAIL_SLOW' });
    const bad = await run(fixture('multi-document.yaml'), '--failure-policy', 'quick', '--job-id', 'bad-one');
    expect(bad.code).to.equal(2);
    expect(bad.stderr).to.include("argument 'quick' is invalid. Allowed choices are fast, slow");
    expect(h.vertex.jobs.has('bad-one')).to.equal(false);
  });

  it('prints what was read leniently or ignored on stderr, one line each naming the file', async () => {
    const repaired = await run(fixture('pyyaml-only.yaml'));
    expect(repaired.code, repaired.stderr).to.equal(0);
    const repairs = repaired.stderr.split('\n').filter((l) => l.includes('quoted string'));
    expect(repairs).to.have.length.above(0);
    for (const line of repairs) expect(line).to.match(/^kvx-launch: warning: .*pyyaml-only\.yaml: line \d+: a quoted string continues/);
    const multi = await run(fixture('multi-document.yaml'), '--job-id', 'multi-one');
    expect(multi.code, multi.stderr).to.equal(0);
    expect(multi.stderr).to.match(/^kvx-launch: warning: .*multi-document\.yaml: document 2 of 2 ignored: a KFP platform spec/m);
  });

  it('a template given by --template-uri is sent with its spec, caching off', async () => {
    const uri = `${h.vertex.url}/kfp/my-project/kfp-repo/nested/v1`;
    h.vertex.templates.set(uri, await readFile(fixture('nested-loop-condition.yaml'), 'utf8'));
    const res = await launchCli(h, ['run', '--template-uri', uri, '-c', h.config], { deps: { now: NOW } });
    expect(res.code, res.stderr).to.equal(0);
    const body = h.vertex.jobs.get(JOB_ID)!.body as { templateUri: string; pipelineSpec: { root: { dag: { tasks: Record<string, { cachingOptions?: unknown }> } }; components: Record<string, { dag?: { tasks: Record<string, { cachingOptions?: unknown }> } }> } };
    expect(body.templateUri).to.equal(uri);
    // Every task of every DAG, the sub-DAGs' too, as the SDK's enable_caching=False does.
    const dags = [body.pipelineSpec.root, ...Object.values(body.pipelineSpec.components)].filter((c) => c.dag !== undefined);
    expect(dags).to.have.length.above(1);
    for (const dag of dags) for (const task of Object.values(dag.dag!.tasks)) expect(task.cachingOptions).to.deep.equal({ enableCache: false });
    expect(h.vertex.requests.map((r) => `${r.method} ${r.path.split('?')[0]}`)).to.deep.equal([
      'GET /kfp/my-project/kfp-repo/nested/v1',
      'POST /v1/projects/my-project/locations/europe-west4/pipelineJobs',
    ]);
  });

  it('a template URI with --enable-caching is sent with its spec as compiled', async () => {
    const uri = `${h.vertex.url}/kfp/my-project/kfp-repo/nested/v1`;
    const text = await readFile(fixture('nested-loop-condition.yaml'), 'utf8');
    h.vertex.templates.set(uri, text);
    const res = await launchCli(h, ['run', uri, '-c', h.config, '--enable-caching', '--json'], { deps: { now: NOW } });
    expect(res.code, res.stderr).to.equal(0);
    const job = h.vertex.jobs.get(JOB_ID)!;
    expect(job.body['templateUri']).to.equal(uri);
    expect(job.body['pipelineSpec']).to.deep.equal(YAML.parse(text));
    expect(job.spec).to.deep.equal(YAML.parse(text));
  });

  it('a failure inside a nested pipeline names the failed task by its path', async () => {
    h.vertex.nextOutcome = { failAt: 'exit-handler-1/train-loop/for-loop-2[iteration 2]/train', error: 'CUDA out of memory' };
    const res = await run(fixture('nested-loop-condition.yaml'), '--wait');
    expect(res.code).to.equal(1);
    expect(tags(onlyRun(h))).to.include({
      vertexai_job_state: 'FAILED',
      vertexai_failed_task: 'exit-handler-1/train-loop/for-loop-2[iteration 2]/train',
      vertexai_failed_task_error: 'CUDA out of memory',
      vertexai_last_task: 'notify',
    });
    expect(res.stderr).to.include('task exit-handler-1/train-loop/for-loop-2[iteration 2]/train FAILED: CUDA out of memory');
    expect(res.stderr).to.include('task exit-handler-1/train-loop/for-loop-2[iteration 1]/train SUCCEEDED');
  });

  it('TASK_FINAL_STATUS inputs are set by the system: not asked for, and the spec runs', async () => {
    const res = await run(fixture('literals-and-system-inputs.yaml'), '--param', 'accelerator=nvidia-l4', '--param', 'replicas=4');
    expect(res.code, res.stderr).to.equal(0);
    expect(runtime().parameterValues).to.deep.equal({ accelerator: 'nvidia-l4', replicas: 4 });
  });

  it('a value outside a parameter\'s literals is refused before anything is created', async () => {
    // Without the system-set root input, so only the literals are in question.
    const text = (await readFile(fixture('literals-and-system-inputs.yaml'), 'utf8')).replaceAll('      status:\n        isOptional: true\n        parameterType: TASK_FINAL_STATUS\n', '');
    const literalsOnly = path.join(h.dir, 'literals-only.yaml');
    await writeFile(literalsOnly, text);
    expect(text).not.to.include('      status:\n        isOptional: true\n        parameterType: TASK_FINAL_STATUS');
    const res = await run(literalsOnly, '--param', 'accelerator=tpu-v5');
    expect(res.code).to.equal(1);
    expect(res.stderr).to.include('parameter "accelerator" must be one of "nvidia-l4", "nvidia-a100-80gb"; got "tpu-v5"');
    expect(h.mlflow.store.runs.size).to.equal(0);
  });

  it('labels as the API takes them: international lower-case letters and 64 characters', async () => {
    const res = await run(fixture('multi-document.yaml'), '--label', 'équipe=données', '--label', `k${'x'.repeat(63)}=${'v'.repeat(64)}`);
    expect(res.code, res.stderr).to.equal(0);
    expect(h.vertex.jobs.get(JOB_ID)!.body['labels']).to.include({ équipe: 'données' });
  });

  it('a job id of 128 characters is refused before anything is created (the API takes fewer than 128)', async () => {
    const res = await run(fixture('multi-document.yaml'), '--job-id', `a${'b'.repeat(127)}`);
    expect(res.code).to.equal(1);
    expect(res.stderr).to.include('is not a valid Vertex AI job id');
    expect(h.mlflow.store.runs.size).to.equal(0);
  });
});
