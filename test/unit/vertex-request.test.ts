import { readFileSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { expect } from 'chai';
import { checkLabels } from '../../src/vertex/naming.js';
import { CommandFlags } from '../../src/cli/flags.js';
import { convertParameters, describeParameters } from '../../src/vertex/params.js';
import { buildCreateRequest, failurePolicy, pythonJsonDumps } from '../../src/vertex/request.js';
import { parseSpec } from '../../src/vertex/spec.js';
import type { LoadedSpec } from '../../src/vertex/spec.js';
import { kfpCorpusDir } from '../helpers/corpus.js';
import { thrown } from '../helpers/errors.js';

const parseParamFlags = (pairs: string[]) => new CommandFlags('kvx-launch run', { param: pairs }).pairs('--param');

const FIXTURES = new URL('../fixtures/kfp/', import.meta.url);
const CORPUS = pathToFileURL(`${kfpCorpusDir()}/`);
const load = (name: string, base = FIXTURES): LoadedSpec => parseSpec(readFileSync(fileURLToPath(new URL(name, base)), 'utf8'), name);

const base = { jobId: 'job-1', pipelineRoot: 'gs://bucket/root' };
const values = (spec: LoadedSpec, params: string[], mlflowRunId?: string) =>
  convertParameters(spec.parameters, parseParamFlags(params), {
    source: spec.source,
    ...(mlflowRunId === undefined ? {} : { mlflowRunId }),
    ...(spec.jobRuntimeConfig === undefined ? {} : { preset: spec.jobRuntimeConfig.parameterValues }),
  });

describe('vertex: the pipelineJobs.create request, as the Vertex AI SDK builds it', () => {
  it('schemaVersion 2.0.0: runtimeConfig.parameters typed by the declared type:, ints as strings', () => {
    const spec = load('params-schema-2_0_0.yaml');
    expect(spec.parameterField).to.equal('parameters');
    const v = values(spec, ['epochs=12', 'learning_rate=0.25', 'name=ünïcode', 'flags={"fast": true}']);
    const { pipelineJobId, pipelineJob } = buildCreateRequest(spec, v, base);
    expect(pipelineJobId).to.equal('job-1');
    expect(pipelineJob['runtimeConfig']).to.deep.equal({
      gcsOutputDirectory: 'gs://bucket/root',
      parameters: { epochs: { intValue: '12' }, learning_rate: { doubleValue: 0.25 }, name: { stringValue: 'ünïcode' }, flags: { stringValue: '{"fast": true}' } },
    });
    expect(pipelineJob).not.to.have.nested.property('runtimeConfig.parameterValues');
  });

  it('2.0.0 STRING parameters get booleans, lists and structs as JSON text written as Python json.dumps writes it', () => {
    const spec = load('params-schema-2_0_0.yaml');
    const { pipelineJob } = buildCreateRequest(spec, { flags: { a: [1, true, null], 'é': 'x' }, name: false }, base);
    expect((pipelineJob['runtimeConfig'] as { parameters: unknown }).parameters).to.deep.equal({
      flags: { stringValue: '{"a": [1, true, null], "\\u00e9": "x"}' },
      name: { stringValue: 'false' },
    });
    expect(pythonJsonDumps(['a', { b: 1.5 }])).to.equal('["a", {"b": 1.5}]');
    expect(pythonJsonDumps('\u007f\u{1f600}')).to.equal('"\\u007f\\ud83d\\ude00"');
  });

  it('2.0.0 specs: a declared type the old runtime cannot carry is refused, naming the parameter', () => {
    const text = readFileSync(fileURLToPath(new URL('params-schema-2_0_0.yaml', FIXTURES)), 'utf8').replace('      flags:\n        type: STRING\n      learning_rate', '      flags:\n        parameterType: BOOLEAN\n      learning_rate');
    const e = thrown(() => parseSpec(text, 'mixed.yaml'));
    expect(e.message).to.include('parameter "flags" is declared as "BOOLEAN", but schemaVersion 2.0.0 passes values in runtimeConfig.parameters');
  });

  it('schemaVersion 2.1.0: runtimeConfig.parameterValues with plain JSON values of the declared types', () => {
    const spec = load('kfp-parallel_and_nested_nested_pipeline_opt_inputs_parent_level_compiled.yaml', CORPUS);
    expect(spec.parameterField).to.equal('parameterValues');
    const { pipelineJob } = buildCreateRequest(spec, values(spec, ['inputBool=true', 'inputInt=42', 'inputStr=x']), base);
    expect(pipelineJob['runtimeConfig']).to.deep.equal({ gcsOutputDirectory: 'gs://bucket/root', parameterValues: { inputBool: true, inputInt: 42, inputStr: 'x' } });
  });

  it('caching: off on every task of every DAG when disabled, the compiled settings when left alone', () => {
    const spec = load('nested-loop-condition.yaml');
    const off = buildCreateRequest(spec, {}, { ...base, enableCaching: false }).pipelineJob['pipelineSpec'] as LoadedSpec['spec'];
    const scopes = [off.root, ...Object.values(off.components ?? {})] as { dag?: { tasks: Record<string, { cachingOptions?: unknown }> } }[];
    let count = 0;
    for (const scope of scopes) for (const t of Object.values(scope.dag?.tasks ?? {})) {
      expect(t.cachingOptions).to.deep.equal({ enableCache: false });
      count++;
    }
    expect(count).to.equal(8);
    expect(buildCreateRequest(spec, {}, base).pipelineJob['pipelineSpec']).to.equal(spec.spec);
    expect((spec.spec.root.dag!.tasks!['train']!['cachingOptions'] as { enableCache: boolean }).enableCache, 'the loaded spec is not changed').to.equal(true);
  });

  it('a template: the downloaded spec with kvx changes, plus templateUri', () => {
    const spec = load('params-schema-2_0_0.yaml');
    const uri = 'https://europe-west4-kfp.pkg.dev/p/repo/pkg/v1';
    const { pipelineJob } = buildCreateRequest(spec, { epochs: 1, learning_rate: 1, name: 'n', flags: '' }, { ...base, enableCaching: false, templateUri: uri });
    expect(pipelineJob['templateUri']).to.equal(uri);
    expect((pipelineJob['pipelineSpec'] as LoadedSpec['spec']).root.dag!.tasks!['train']!['cachingOptions']).to.deep.equal({ enableCache: false });
  });

  it('a PipelineJob file: its runtimeConfig values and output directory under the caller\'s', () => {
    const spec = load('jobjson-runtime-defaults.json');
    expect(spec.jobRuntimeConfig).to.deep.equal({ gcsOutputDirectory: 'gs://job-file-bucket/root', parameterValues: { epochs: 7, learning_rate: 0.01, dataset: 'companies' } });
    const v = values(spec, ['epochs=9']);
    const fromFile = buildCreateRequest(spec, v, { jobId: 'job-1' });
    expect(fromFile.pipelineJob['runtimeConfig']).to.deep.equal({
      gcsOutputDirectory: 'gs://job-file-bucket/root',
      parameters: { epochs: { intValue: '9' }, learning_rate: { doubleValue: 0.01 }, dataset: { stringValue: 'companies' } },
    });
    expect((buildCreateRequest(spec, v, base).pipelineJob['runtimeConfig'] as { gcsOutputDirectory: string }).gcsOutputDirectory).to.equal('gs://bucket/root');

    const kfp18 = load('kfp18-jobjson-two_step_pipeline.json', CORPUS);
    expect(kfp18.parameterField).to.equal('parameterValues');
    expect(values(kfp18, [])).to.deep.equal({ text: 'Hello KFP!' });
  });

  it('a PipelineJob file value of the wrong type or for no declared parameter is named', () => {
    const text = readFileSync(fileURLToPath(new URL('kfp18-jobjson-two_step_pipeline.json', CORPUS)), 'utf8');
    const job = JSON.parse(text) as { runtimeConfig: { parameterValues: Record<string, unknown> } };
    job.runtimeConfig.parameterValues = { text: 3, other: 'x' };
    const spec = parseSpec(JSON.stringify(job), 'job.json');
    const e = thrown(() => values(spec, []));
    expect(e.message).to.include('the runtimeConfig of job.json sets "text" to 3: it must be string');
    expect(e.message).to.include('the runtimeConfig of job.json sets "other", which the pipeline does not declare');
  });

  it('root input artifacts: by id or resource name into inputArtifacts, checked against the spec', () => {
    const spec = load('input-artifacts.yaml');
    expect(spec.artifacts).to.deep.equal([
      { name: 'baseline', schemaTitle: 'system.Metrics', optional: true, isList: false },
      { name: 'model', schemaTitle: 'system.Model', optional: false, isList: false },
    ]);
    const where = { projectId: 'my-project', projectNumber: '123456789012', region: 'europe-west4' };
    const { pipelineJob } = buildCreateRequest(spec, {}, { ...base, ...where, inputArtifacts: { model: '8884357589702467656', baseline: 'projects/123456789012/locations/europe-west4/metadataStores/default/artifacts/baseline-v2' } });
    expect((pipelineJob['runtimeConfig'] as { inputArtifacts: unknown }).inputArtifacts).to.deep.equal({ model: { artifactId: '8884357589702467656' }, baseline: { artifactId: 'baseline-v2' } });

    const missing = thrown(() => buildCreateRequest(spec, {}, { ...base, ...where }));
    expect(missing.message).to.include('required input artifact "model" (system.Model) is missing: add --artifact model=<artifact id or resource name>');
    expect(missing.message).to.include('declared input artifacts:\n  baseline: system.Metrics (optional)\n  model: system.Model (required)');

    const wrong = thrown(() =>
      buildCreateRequest(spec, {}, { ...base, ...where, inputArtifacts: { model: 'projects/123456789012/locations/us-central1/metadataStores/default/artifacts/m', modle: 'x', baseline: 'Not An Id' } }),
    );
    expect(wrong.message).to.include('input artifact model=projects/123456789012/locations/us-central1/metadataStores/default/artifacts/m: it is in us-central1; the job runs in europe-west4');
    expect(wrong.message).to.include('unknown input artifact "modle"');
    expect(wrong.message).to.include('input artifact baseline=Not An Id: not an artifact id');
    expect(thrown(() => buildCreateRequest(spec, {}, { ...base, ...where, inputArtifacts: { model: 'projects/other/locations/europe-west4/metadataStores/default/artifacts/m' } })).message).to.include('it is in project other');
  });

  it('literals: a value outside the allowed ones is named with them; an integer default written 2.0 is an integer', () => {
    const spec = load('literals-and-system-inputs.yaml');
    const replicas = spec.parameters.find((p) => p.name === 'replicas')!;
    expect(replicas).to.include({ type: 'NUMBER_INTEGER', defaultValue: 2 });
    expect(Number.isInteger(replicas.defaultValue)).to.equal(true);
    expect(values(spec, ['accelerator=nvidia-l4', 'replicas=4'])).to.deep.equal({ accelerator: 'nvidia-l4', replicas: 4 });
    const e = thrown(() => values(spec, ['accelerator=tpu-v5', 'replicas=3']));
    expect(e.message).to.include('parameter "accelerator" must be one of "nvidia-l4", "nvidia-a100-80gb"; got "tpu-v5"');
    expect(e.message).to.include('parameter "replicas" must be one of 1, 2, 4; got 3');
    expect(describeParameters(spec.parameters)).to.include('  replicas: integer one of 1, 2, 4 (default 2)');
  });

  it('TASK_FINAL_STATUS and TASK_CONFIG are current types the system sets: never asked for, refused from the caller', () => {
    const spec = load('literals-and-system-inputs.yaml');
    const status = spec.parameters.find((p) => p.name === 'status')!;
    expect(status).to.include({ type: 'TASK_FINAL_STATUS', systemSet: true, optional: true });
    expect(values(spec, ['accelerator=nvidia-l4'])).to.deep.equal({ accelerator: 'nvidia-l4' });
    const e = thrown(() => values(spec, ['accelerator=nvidia-l4', 'status={}']));
    expect(e.message).to.include('parameter "status" (task final status) is set by Vertex AI at run time');
    expect(describeParameters(spec.parameters)).to.include('  status: task final status (set by Vertex AI at run time)');
    const config = parseSpec(
      'pipelineInfo: {name: c}\nschemaVersion: 2.1.0\ndeploymentSpec: {}\nroot:\n  inputDefinitions:\n    parameters:\n      cfg: {parameterType: TASK_CONFIG}\n',
      'c.yaml',
    );
    expect(config.parameters[0]).to.include({ type: 'TASK_CONFIG', systemSet: true });
    const unknown = thrown(() => parseSpec('pipelineInfo: {name: c}\nschemaVersion: 2.1.0\ndeploymentSpec: {}\nroot:\n  inputDefinitions:\n    parameters:\n      x: {parameterType: NUMBER_COMPLEX}\n', 'u.yaml'));
    expect(unknown.message).to.include('parameter "x" has unknown type "NUMBER_COMPLEX"');
    expect(unknown.hint).not.to.match(/recompile with a current KFP SDK/);
  });

  it('failure policy: slow or fast, as the SDK spells it, into runtimeConfig.failurePolicy; a job file may set it', () => {
    const spec = load('multi-document.yaml');
    expect((buildCreateRequest(spec, {}, { ...base, failurePolicy: 'fast' }).pipelineJob['runtimeConfig'] as { failurePolicy: string }).failurePolicy).to.equal('PIPELINE_FAILURE_POLICY_FAIL_FAST');
    expect(failurePolicy('PIPELINE_FAILURE_POLICY_FAIL_SLOW')).to.equal('PIPELINE_FAILURE_POLICY_FAIL_SLOW');
    expect(buildCreateRequest(spec, {}, base).pipelineJob['runtimeConfig']).not.to.have.property('failurePolicy');
    expect(thrown(() => failurePolicy('quick', '--failure-policy')).message).to.match(/--failure-policy "quick" is neither "slow" .* nor "fast"/);
    const job = parseSpec(JSON.stringify({ pipelineSpec: spec.spec, runtimeConfig: { failurePolicy: 'PIPELINE_FAILURE_POLICY_FAIL_FAST' } }), 'job.json');
    expect((buildCreateRequest(job, {}, base).pipelineJob['runtimeConfig'] as { failurePolicy: string }).failurePolicy).to.equal('PIPELINE_FAILURE_POLICY_FAIL_FAST');
    expect((buildCreateRequest(job, {}, { ...base, failurePolicy: 'slow' }).pipelineJob['runtimeConfig'] as { failurePolicy: string }).failurePolicy).to.equal('PIPELINE_FAILURE_POLICY_FAIL_SLOW');
  });

  it('the whole body: fields the SDK sends and nothing else', () => {
    const spec = load('multi-document.yaml');
    const request = buildCreateRequest(spec, { message: 'hello' }, {
      jobId: 'with-platform-spec-20240517083005',
      displayName: 'nightly',
      pipelineRoot: 'gs://bucket/root',
      enableCaching: false,
      labels: { team: 'ml' },
      serviceAccount: 'runner@my-project.iam.gserviceaccount.com',
      network: 'projects/1/global/networks/vpc',
    });
    expect(Object.keys(request)).to.deep.equal(['pipelineJobId', 'pipelineJob']);
    expect(Object.keys(request.pipelineJob)).to.deep.equal(['displayName', 'pipelineSpec', 'labels', 'runtimeConfig', 'serviceAccount', 'network']);
    expect(request.pipelineJob['runtimeConfig']).to.deep.equal({ gcsOutputDirectory: 'gs://bucket/root', parameterValues: { message: 'hello' } });
    expect(thrown(() => buildCreateRequest(spec, {}, { jobId: 'j' })).message).to.match(/no pipeline root for multi-document\.yaml/);
    expect(thrown(() => buildCreateRequest(spec, {}, { ...base, displayName: 'x'.repeat(129) })).message).to.match(/129 characters; Vertex AI takes at most 128/);
  });
});

describe('vertex: labels to the API\'s own limits', () => {
  it('takes 64 characters and international lower-case letters, and no more', () => {
    const long = 'k'.repeat(64);
    expect(checkLabels({ [long]: 'v'.repeat(64), équipe: 'données', 部署: '資料', a_1: '' }, 'x')).to.include({ [long]: 'v'.repeat(64), équipe: 'données' });
    const e = thrown(() => checkLabels({ ['k'.repeat(65)]: 'v'.repeat(65), Équipe: 'x', '1abc': 'x', 'a.b': 'x' }, 'vertex.labels'));
    expect(e.message).to.include(`label key "${'k'.repeat(65)}"`);
    expect(e.message).to.include(`label ${'k'.repeat(65)}="${'v'.repeat(65)}": values hold at most 64`);
    expect(e.message).to.include('label key "Équipe"');
    expect(e.message).to.include('label key "1abc"');
    expect(e.message).to.include('label key "a.b"');
  });
});
