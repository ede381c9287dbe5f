import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { DEFAULT_ADAPT_SETTINGS, EXIT_TASK, GUARD, adaptSpec, isAdapted, isKedroVertexaiSpec, specText } from '../../src/vertex/adapt.js';
import { withCaching } from '../../src/vertex/request.js';
import { parseSpec } from '../../src/vertex/spec.js';
import type { PipelineSpec } from '../../src/vertex/spec.js';
import { readYaml } from '../../src/vertex/yaml.js';
import { kfpCorpusDir, specFiles } from '../helpers/corpus.js';

type Dict = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const CORPUS = kfpCorpusDir();
const KEDRO = path.join(CORPUS, 'kedro-vertexai-spaceflights.yaml');
const load = (file: string): PipelineSpec => parseSpec(readFileSync(file, 'utf8'), file).spec;
const kedro = (): Dict => load(KEDRO) as Dict;
const executors = (spec: Dict): Dict => spec['deploymentSpec']['executors'];
const NODE_EXECUTORS = ['exec-preprocess-companies-node', 'exec-train-model-node'];
const hasBash = spawnSync('bash', ['-c', 'true']).status === 0;

describe('adapting a kedro-vertexai spec (src/vertex/adapt.ts)', () => {
  it('recognises the compiled spec by its shape, and no spec of the KFP corpus besides it', () => {
    expect(isKedroVertexaiSpec(load(KEDRO))).to.equal(true);
    const others = specFiles(CORPUS).filter((f) => f !== KEDRO);
    expect(others.length).to.be.greaterThan(10);
    for (const file of others) {
      const spec = load(file);
      const result = adaptSpec(spec);
      expect(result.recognised, path.basename(file)).to.equal(false);
      expect(result.changes).to.deep.equal([]);
      expect(result.spec).to.deep.equal(load(file));
    }
  });

  it('puts every node step behind kvx-proxy exec with its env\'s vertexai.yml, args, image and resources untouched', () => {
    const original = kedro();
    const { spec, changes } = adaptSpec(original as PipelineSpec) as { spec: Dict; changes: string[] };
    for (const label of NODE_EXECUTORS) {
      const before = executors(original)[label]['container'];
      const after = executors(spec)[label]['container'];
      expect(after['command']).to.deep.equal(['/bin/sh', '-c', GUARD, 'kvx-proxy', 'exec', '--config', 'conf/base/vertexai.yml', '--', ...before['command']]);
      expect(after['args']).to.deep.equal(before['args']);
      expect(after['image']).to.equal(before['image']);
      expect(after['resources']).to.deep.equal(before['resources']);
      expect(changes.some((c) => c.startsWith(`executor ${label}: runs behind the proxy`))).to.equal(true);
    }
  });

  it('makes the start step kvx-launch start-run, writing the run id to the same output file and taking the launcher\'s run', () => {
    const original = kedro();
    const { spec } = adaptSpec(original as PipelineSpec) as { spec: Dict };
    const script: string = executors(spec)['exec-mlflow-start-run']['container']['args'][0];
    const out = "{{$.outputs.parameters['mlflow_run_id'].output_file}}";
    expect(script).to.not.include('mlflow-start');
    expect(script).to.match(/^mkdir -p \$\(dirname \{\{\$\.outputs\.parameters\['mlflow_run_id'\]\.output_file\}\}\) && kedro vertexai -e base initialize-job /);
    expect(script).to.include(
      `kvx-launch start-run --config conf/base/vertexai.yml --run-id "{{$.inputs.parameters['launcher_run_id']}}" --job-name "{{$.pipeline_job_name}}" --job-id "{{$.pipeline_job_uuid}}" --output ${out}`,
    );
    expect(executors(spec)['exec-mlflow-start-run']['container']['command']).to.deep.equal(['/bin/bash', '-c']);
    // The launcher's run id reaches it through a root input kvx-launch run fills.
    expect(spec['root']['inputDefinitions']['parameters']['mlflow_run_id']).to.deep.equal({ defaultValue: '', isOptional: true, parameterType: 'STRING' });
    expect(spec['root']['inputDefinitions']['parameters']['dataset']).to.deep.equal({ parameterType: 'STRING' });
    const inner = spec['components']['comp-exit-handler-1']['dag']['tasks'];
    expect(inner['mlflow-start-run']['inputs']['parameters']['launcher_run_id']).to.deep.equal({ componentInputParameter: 'pipelinechannel--mlflow_run_id' });
    expect(spec['components']['comp-mlflow-start-run']['outputDefinitions']).to.deep.equal(original['components']['comp-mlflow-start-run']['outputDefinitions']);
  });

  it('adds an exit handler with the IR the KFP compiler writes (corpus kfp-pipeline_with_task_final_status.yaml)', () => {
    const corpus = load(path.join(CORPUS, 'kfp-pipeline_with_task_final_status.yaml')) as Dict;
    const failing = load(path.join(CORPUS, 'kfp-failing_pipeline_with_exit_handler.yaml')) as Dict;
    const original = kedro();
    const { spec } = adaptSpec(original as PipelineSpec) as { spec: Dict };
    const rootTasks = spec['root']['dag']['tasks'];
    expect(Object.keys(rootTasks).sort()).to.deep.equal(['exit-handler-1', EXIT_TASK]);
    const exit = rootTasks[EXIT_TASK];
    const kfpExit = corpus['root']['dag']['tasks']['exit-op'];
    expect(exit['triggerPolicy']).to.deep.equal(kfpExit['triggerPolicy']);
    expect(exit['triggerPolicy']).to.deep.equal(failing['root']['dag']['tasks']['print-op']['triggerPolicy']);
    expect(exit['dependentTasks']).to.deep.equal(kfpExit['dependentTasks']);
    expect(exit['inputs']['parameters']['status']).to.deep.equal(kfpExit['inputs']['parameters']['status']);
    expect(spec['components']['comp-kvx-end-run']['inputDefinitions']['parameters']['status']).to.deep.equal(corpus['components']['comp-exit-op']['inputDefinitions']['parameters']['status']);
    // The handler task: as KFP writes it, no caching options, inputs as pipelinechannel--<root input>.
    const handler = rootTasks['exit-handler-1'];
    const kfpHandler = corpus['root']['dag']['tasks']['exit-handler-1'];
    expect(Object.keys(handler).sort()).to.deep.equal(Object.keys(kfpHandler).sort());
    expect(handler['inputs']['parameters']['pipelinechannel--dataset']).to.deep.equal({ componentInputParameter: 'dataset' });
    expect(spec['components']['comp-exit-handler-1']['inputDefinitions']['parameters']['pipelinechannel--dataset']).to.deep.equal(
      { parameterType: 'STRING' },
      'as the corpus declares pipelinechannel--message',
    );
    // The tasks inside are the compiled ones, with their root-input references renamed and nothing else.
    const inner = spec['components']['comp-exit-handler-1']['dag']['tasks'];
    const originalTasks = original['root']['dag']['tasks'];
    expect(Object.keys(inner)).to.deep.equal(Object.keys(originalTasks));
    for (const name of ['preprocess-companies-node', 'train-model-node']) {
      const expected = structuredClone(originalTasks[name]);
      expected['inputs']['parameters']['dataset'] = { componentInputParameter: 'pipelinechannel--dataset' };
      expect(inner[name]).to.deep.equal(expected);
    }
    // The exit task's command: kvx-launch end-run with the status and the job's placeholders.
    expect(executors(spec)['exec-kvx-end-run']['container']['command'].slice(3)).to.deep.equal([
      'kvx-launch', 'end-run', '--config', 'conf/base/vertexai.yml', '--run-id', "{{$.inputs.parameters['launcher_run_id']}}",
      '--job-name', '{{$.pipeline_job_name}}', '--job-resource-name', '{{$.pipeline_job_resource_name}}', '--status', "{{$.inputs.parameters['status']}}",
    ]);
    expect(executors(spec)['exec-kvx-end-run']['container']['image']).to.equal(executors(original)['exec-mlflow-start-run']['container']['image']);
    expect(exit['cachingOptions']).to.deep.equal({ enableCache: false });
  });

  it('keeps the caching choice: caching off reaches every task, inside the exit handler too', () => {
    const { spec } = adaptSpec(load(KEDRO)) as { spec: Dict };
    const off = withCaching(spec as PipelineSpec, false) as Dict;
    const all = [...Object.values(off['root']['dag']['tasks']), ...Object.values(off['components']['comp-exit-handler-1']['dag']['tasks'])] as Dict[];
    expect(all).to.have.length(5);
    for (const task of all) expect(task['cachingOptions']).to.deep.equal({ enableCache: false });
  });

  it('is idempotent: adapting an adapted spec changes nothing and says so', () => {
    const once = adaptSpec(load(KEDRO));
    expect(once.changes.length).to.be.greaterThan(5);
    expect(isAdapted(once.spec)).to.equal(true);
    expect(isAdapted(load(KEDRO))).to.equal(false);
    const twice = adaptSpec(structuredClone(once.spec));
    expect(twice.recognised).to.equal(true);
    expect(twice.changes).to.deep.equal([]);
    expect(twice.warnings).to.deep.equal([]);
    expect(twice.spec).to.deep.equal(once.spec);
    // Whose mlflow.yml the steps read, adapted or not.
    expect(once.envs).to.deep.equal(['base']);
    expect(twice.envs).to.deep.equal(['base']);
  });

  it('writes YAML that reads back the same as PyYAML reads it', () => {
    const { spec } = adaptSpec(load(KEDRO));
    const back = readYaml(specText(spec, false)).documents[0];
    expect(back).to.deep.equal(JSON.parse(JSON.stringify(spec)));
    expect(JSON.parse(specText(spec, true))).to.deep.equal(JSON.parse(JSON.stringify(spec)));
  });

  const hasPyYaml = spawnSync('python3', ['-c', 'import yaml'], { stdio: 'ignore' }).status === 0;
  it('writes YAML that PyYAML itself reads back the same (when python3 with PyYAML is on this machine)', function () {
    if (!hasPyYaml) this.skip();
    const { spec } = adaptSpec(load(KEDRO));
    // Strings YAML 1.1 would read as something else unless quoted.
    const tricky = ['yes', 'No', 'on', '0777', '08', '1:30', '1_000', '1e5', '.inf', '~', 'null', '2024-05-17', '=', "{{$.inputs.parameters['x']}}", '- a', 'a: b', '#c', ''];
    const doc = { ...spec, kvxTricky: tricky };
    const pyJson = (text: string) =>
      JSON.parse(execFileSync('python3', ['-c', 'import sys, json, yaml; print(json.dumps(yaml.safe_load(sys.stdin.read())))'], { input: text, encoding: 'utf8' }));
    expect(pyJson(specText(doc as PipelineSpec, false))).to.deep.equal(JSON.parse(JSON.stringify(doc)));
  });

  it('handles grouped nodes, params, host aliases and another env', () => {
    const spec = kedro();
    const exec = executors(spec);
    const node = exec['exec-train-model-node']['container'];
    node['args'][0] = `echo "10.1.2.3 mlflow.internal" >> /etc/hosts && ${node['args'][0]}`
      .replace(/-e base/g, '-e prod')
      .replace('--nodes "train_model_node"', '--nodes "train_model_node,evaluate_model_node"')
      .replace('--params dataset=', '--params epochs=3,dataset=');
    const start = exec['exec-mlflow-start-run']['container'];
    start['args'][0] = start['args'][0].replace(/-e base/g, '-e prod');
    const before = structuredClone(node);
    const { spec: out, changes, envs } = adaptSpec(spec as PipelineSpec) as { spec: Dict; changes: string[]; envs: string[] };
    expect(envs).to.deep.equal(['base', 'prod']);
    expect(adaptSpec(structuredClone(out) as PipelineSpec).envs).to.deep.equal(['base', 'prod']);
    const after = executors(out)['exec-train-model-node']['container'];
    expect(after['args']).to.deep.equal(before['args']);
    expect(after['args'][0]).to.match(/^echo "10\.1\.2\.3 mlflow\.internal" >> \/etc\/hosts && /);
    expect(after['command'].slice(3, 8)).to.deep.equal(['kvx-proxy', 'exec', '--config', 'conf/prod/vertexai.yml', '--']);
    // The other node stays in base.
    expect(executors(out)['exec-preprocess-companies-node']['container']['command'][6]).to.equal('conf/base/vertexai.yml');
    expect(executors(out)['exec-mlflow-start-run']['container']['args'][0]).to.include('start-run --config conf/prod/vertexai.yml');
    expect(executors(out)['exec-kvx-end-run']['container']['command']).to.include('conf/prod/vertexai.yml');
    expect(changes.join('\n')).to.include('conf/prod/vertexai.yml');
  });

  it('takes the executable paths and the step config from the settings', () => {
    const { spec } = adaptSpec(load(KEDRO), { proxyPath: '/opt/kvx/kvx-proxy', launchPath: '/opt/kvx/kvx-launch', stepConfig: 'settings/{env}/kvx.yml' }) as { spec: Dict };
    expect(executors(spec)['exec-train-model-node']['container']['command'].slice(3, 7)).to.deep.equal(['/opt/kvx/kvx-proxy', 'exec', '--config', 'settings/base/kvx.yml']);
    expect(executors(spec)['exec-mlflow-start-run']['container']['args'][0]).to.include('/opt/kvx/kvx-launch start-run --config settings/base/kvx.yml');
    expect(executors(spec)['exec-kvx-end-run']['container']['command'][3]).to.equal('/opt/kvx/kvx-launch');
    const again = adaptSpec(structuredClone(spec) as PipelineSpec, { proxyPath: '/opt/kvx/kvx-proxy', launchPath: '/opt/kvx/kvx-launch', stepConfig: 'settings/{env}/kvx.yml' });
    expect(again.changes).to.deep.equal([]);
  });

  it('reports a container without a command by its executor instead of guessing its entrypoint', () => {
    const spec = kedro();
    delete executors(spec)['exec-preprocess-companies-node']['container']['command'];
    expect(() => adaptSpec(spec as PipelineSpec)).to.throw(/executor exec-preprocess-companies-node \(image [^)]+\) has no command/);
  });

  it('leaves executors that are not containers alone', () => {
    const spec = kedro();
    executors(spec)['exec-importer'] = { importer: { artifactUri: { constant: 'gs://b/x' }, typeSchema: { schemaTitle: 'system.Dataset' } } };
    const { spec: out } = adaptSpec(spec as PipelineSpec) as { spec: Dict };
    expect(executors(out)['exec-importer']).to.deep.equal(executors(spec)['exec-importer']);
  });

  it('warns, naming the executor, when a step sets MLFLOW_TRACKING_URI over the proxy\'s', () => {
    expect(adaptSpec(load(KEDRO)).warnings.join('\n')).to.not.include('MLFLOW_TRACKING_URI');
    const spec = kedro();
    const node = executors(spec)['exec-train-model-node']['container'];
    node['args'][0] = node['args'][0].replace('MLFLOW_RUN_ID=', 'MLFLOW_TRACKING_URI=https://mlflow.example.com MLFLOW_RUN_ID=');
    const { warnings } = adaptSpec(spec as PipelineSpec);
    expect(warnings.join('\n')).to.include('executor exec-train-model-node: its command sets MLFLOW_TRACKING_URI itself');
  });

  it('warns, naming the executor, when a step names no kedro env', () => {
    const spec = kedro();
    const node = executors(spec)['exec-preprocess-companies-node']['container'];
    node['args'][0] = node['args'][0].replace(/ -e base/g, '');
    const { warnings, spec: out } = adaptSpec(spec as PipelineSpec) as { spec: Dict; warnings: string[] };
    expect(warnings.join('\n')).to.include('executor exec-preprocess-companies-node: no `kedro … -e ENV`');
    expect(executors(out)['exec-preprocess-companies-node']['container']['command'][6]).to.equal('conf/base/vertexai.yml');
  });

  it('the guard runs the kvx executable when the image has it, and says so and exits 127 when not', function () {
    const present = execFileSync('/bin/sh', ['-c', GUARD, 'echo', 'ran', 'with', 'args']).toString();
    expect(present).to.equal('ran with args\n');
    const missing = spawnSync('/bin/sh', ['-c', GUARD, 'kvx-proxy', 'exec', '--', 'true'], { env: { PATH: '/nonexistent' } });
    expect(missing.status).to.equal(127);
    expect(missing.stderr.toString()).to.include('kvx: kvx-proxy is not in this image');
    if (!hasBash) this.skip();
    const { spec } = adaptSpec(load(KEDRO)) as { spec: Dict };
    const script: string = executors(spec)['exec-mlflow-start-run']['container']['args'][0];
    // The start step's own guard: kedro stands in as `true`; kvx-launch is missing.
    const filled = script.replace(/\{\{\$\.outputs\.parameters\['mlflow_run_id'\]\.output_file\}\}/g, '/tmp/kvx-adapt-test/out').replace(/kedro vertexai -e base initialize-job --params='[^']*'/, 'true');
    const start = spawnSync('bash', ['-c', filled], { env: { PATH: '/usr/bin:/bin' } });
    expect(start.status).to.equal(127);
    expect(start.stderr.toString()).to.include('kvx: kvx-launch is not in this image');
    expect(DEFAULT_ADAPT_SETTINGS.launchPath).to.equal('kvx-launch');
  });

  it('a pipeline without kedro-mlflow (no start step) gets its steps behind the proxy and no exit task, with a warning', () => {
    const spec = kedro();
    delete executors(spec)['exec-mlflow-start-run'];
    delete spec['components']['comp-mlflow-start-run'];
    const tasks = spec['root']['dag']['tasks'];
    delete tasks['mlflow-start-run'];
    for (const t of Object.values(tasks) as Dict[]) {
      delete t['inputs']['parameters']['mlflow_run_id'];
      t['dependentTasks'] = (t['dependentTasks'] as string[]).filter((d) => d !== 'mlflow-start-run');
    }
    const { spec: out, warnings, recognised } = adaptSpec(spec as PipelineSpec) as { spec: Dict; warnings: string[]; recognised: boolean };
    expect(recognised).to.equal(true);
    expect(out['root']['dag']['tasks']).to.have.keys('preprocess-companies-node', 'train-model-node');
    expect(out['root']['inputDefinitions']['parameters']).to.not.have.property('mlflow_run_id');
    expect(executors(out)['exec-train-model-node']['container']['command'][3]).to.equal('kvx-proxy');
    expect(warnings.join('\n')).to.include('no exit task added');
  });
});
