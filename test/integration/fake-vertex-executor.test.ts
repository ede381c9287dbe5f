import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { AccessTokenStore } from '../fakes/google-common.js';
import { JobExecution, evaluateCondition } from '../fakes/vertex-executor.js';
import type { ExecutorOptions } from '../fakes/vertex-executor.js';
import { startFakeVertex } from '../fakes/vertex-api.js';
import { kfpCorpusDir, specFiles } from '../helpers/corpus.js';
import { loadSpecFile } from '../../src/vertex/spec.js';

type Dict = Record<string, unknown>;

/** A one-executor-per-task spec from `{task: {sh, deps?, inputs?, outputs?, exit?}}`. */
function spec(tasks: Record<string, { sh: string; deps?: string[]; inputs?: Dict; outputs?: string[]; exit?: boolean; env?: Dict[] }>, extra: { components?: Dict; rootTasks?: Dict; rootInputs?: Dict } = {}): Dict {
  const components: Dict = { ...extra.components };
  const executors: Dict = {};
  const dagTasks: Dict = {};
  for (const [name, t] of Object.entries(tasks)) {
    const inputDefs: Dict = {};
    for (const key of Object.keys(t.inputs ?? {})) inputDefs[key] = { parameterType: key === 'status' ? 'TASK_FINAL_STATUS' : 'STRING' };
    components[`comp-${name}`] = {
      executorLabel: `exec-${name}`,
      ...(Object.keys(inputDefs).length > 0 ? { inputDefinitions: { parameters: inputDefs } } : {}),
      ...(t.outputs ? { outputDefinitions: { parameters: Object.fromEntries(t.outputs.map((o) => [o, { parameterType: 'STRING' }])) } } : {}),
    };
    executors[`exec-${name}`] = { container: { image: 'local', command: ['/bin/sh', '-c'], args: [t.sh], ...(t.env ? { env: t.env } : {}) } };
    dagTasks[name] = {
      componentRef: { name: `comp-${name}` },
      taskInfo: { name },
      ...(t.deps ? { dependentTasks: t.deps } : {}),
      ...(t.inputs ? { inputs: { parameters: t.inputs } } : {}),
      ...(t.exit ? { triggerPolicy: { strategy: 'ALL_UPSTREAM_TASKS_COMPLETED' } } : {}),
    };
  }
  return {
    pipelineInfo: { name: 'local-test' },
    schemaVersion: '2.1.0',
    components,
    deploymentSpec: { executors },
    root: { dag: { tasks: extra.rootTasks ?? dagTasks }, ...(extra.rootInputs ? { inputDefinitions: { parameters: extra.rootInputs } } : {}) },
  };
}

const job = (values: Dict = {}) => ({ jobId: 'local-test-20261201120000', resourceName: 'projects/123456789012/locations/europe-west4/pipelineJobs/local-test-20261201120000', uuid: 'uuid-1234', pipelineRoot: 'gs://bucket/root', parameterValues: values });
const states = (e: JobExecution) => Object.fromEntries(e.tasks.map((t) => [t.taskUniqueName, t.state]));

describe('fake Vertex executor', () => {
  let dir: string;
  let options: ExecutorOptions;
  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'kvx-exec-test-'));
    options = { workingDir: dir, env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin' }, taskTimeoutMs: 20_000 };
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('runs tasks in dependency order and passes output parameters on through taskOutputParameter', async () => {
    const s = spec({
      second: {
        sh: `echo "second got {{$.inputs.parameters['x']}}" >> order.txt && printf '%s+2' "{{$.inputs.parameters['x']}}" > "{{$.outputs.parameters['y'].output_file}}"`,
        inputs: { x: { taskOutputParameter: { producerTask: 'first', outputParameterKey: 'out' } } },
        outputs: ['y'],
      },
      first: { sh: `mkdir -p "$(dirname "{{$.outputs.parameters['out'].output_file}}")" && echo first >> order.txt && printf '%s' "{{$.inputs.parameters['seed']}}" > "{{$.outputs.parameters['out'].output_file}}"`, inputs: { seed: { componentInputParameter: 'seed' } }, outputs: ['out'] },
    }, { rootInputs: { seed: { parameterType: 'STRING' } } });
    // Output directories are not made for the step (second's write fails without mkdir): add it for second.
    (((s['deploymentSpec'] as Dict)['executors'] as Dict)['exec-second'] as { container: { args: string[] } }).container.args[0] = `mkdir -p "$(dirname "{{$.outputs.parameters['y'].output_file}}")" && ${(((s['deploymentSpec'] as Dict)['executors'] as Dict)['exec-second'] as { container: { args: string[] } }).container.args[0]}`;
    const e = new JobExecution(s, job({ seed: 'one' }), options);
    await e.done;
    expect(e.state, JSON.stringify(e.logs)).to.equal('SUCCEEDED');
    expect(states(e)).to.deep.equal({ 'local-test-20261201120000': 'SUCCEEDED', first: 'SUCCEEDED', second: 'SUCCEEDED' });
    expect(await readFile(path.join(dir, 'order.txt'), 'utf8')).to.equal('first\nsecond got one\n');
    await rm(path.join(dir, 'order.txt'));
  });

  it('fails a task that writes no output file, as a step without its output directory does', async () => {
    const e = new JobExecution(spec({ a: { sh: `echo x > "{{$.outputs.parameters['o'].output_file}}"`, outputs: ['o'] } }), job(), options);
    await e.done;
    expect(e.state).to.equal('FAILED');
    expect(e.failed.map((t) => t.taskName)).to.deep.equal(['a']);
    expect(e.failed[0]!.error!.message).to.match(/non-zero status of [12]/);
  });

  it('fills the job placeholders and the container env', async () => {
    const e = new JobExecution(
      spec({ a: { sh: 'mkdir -p "$(dirname "{{$.outputs.parameters[\'o\'].output_file}}")" && echo "{{$.pipeline_job_name}} {{$.pipeline_job_resource_name}} {{$.pipeline_job_uuid}} $FROM_ENV" > "{{$.outputs.parameters[\'o\'].output_file}}"', outputs: ['o'], env: [{ name: 'FROM_ENV', value: 'task {{$.pipeline_task_name}}' }] } }),
      job(),
      options,
    );
    await e.done;
    expect(e.state, JSON.stringify(e.logs)).to.equal('SUCCEEDED');
    expect(e.logs[0]!.argv[2]).to.include('local-test-20261201120000 projects/123456789012/locations/europe-west4/pipelineJobs/local-test-20261201120000 uuid-1234');
  });

  it('after a failure runs no downstream task, lets independent ones finish (FAIL_SLOW), and FAIL_FAST starts nothing new', async () => {
    const tasks = { bad: { sh: 'exit 3' }, after: { sh: 'true', deps: ['bad'] }, slow: { sh: 'sleep 0.3' }, afterSlow: { sh: 'true', deps: ['slow'] } };
    const slow = new JobExecution(spec(tasks), job(), options);
    await slow.done;
    expect(slow.state).to.equal('FAILED');
    expect(states(slow)).to.deep.equal({ 'local-test-20261201120000': 'FAILED', bad: 'FAILED', slow: 'SUCCEEDED', afterSlow: 'SUCCEEDED' });
    expect(slow.failed[0]!.error).to.deep.equal({ code: 9, message: 'The replica workerpool0-0 exited with a non-zero status of 3. Termination reason: Error.' });
    const fast = new JobExecution(spec(tasks), { ...job(), failFast: true }, options);
    await fast.done;
    expect(states(fast)).to.deep.equal({ 'local-test-20261201120000': 'FAILED', bad: 'FAILED', slow: 'SUCCEEDED' });
  });

  it('runs the exit handler after a failing sub-DAG and passes it the final status Vertex passes', async () => {
    const inner = spec({ failing: { sh: 'exit 1' }, fine: { sh: 'true' } });
    const innerDag = (inner['root'] as Dict)['dag'];
    const s = spec(
      { notify: { sh: `printf '%s' '{{$.inputs.parameters['status']}}' > status.json`, inputs: { status: { taskFinalStatus: { producerTask: 'exit-handler-1' } } }, exit: true, deps: ['exit-handler-1'] } },
      { components: { ...(inner['components'] as Dict), 'comp-exit-handler-1': { dag: innerDag } } },
    );
    ((s['deploymentSpec'] as Dict)['executors'] as Dict)['exec-failing'] = ((inner['deploymentSpec'] as Dict)['executors'] as Dict)['exec-failing'];
    ((s['deploymentSpec'] as Dict)['executors'] as Dict)['exec-fine'] = ((inner['deploymentSpec'] as Dict)['executors'] as Dict)['exec-fine'];
    ((s['root'] as Dict)['dag'] as { tasks: Dict }).tasks['exit-handler-1'] = { componentRef: { name: 'comp-exit-handler-1' }, taskInfo: { name: 'exit-handler-1' } };
    const e = new JobExecution(s, job(), options);
    await e.done;
    expect(e.state).to.equal('FAILED');
    expect(states(e)).to.include({ 'exit-handler-1': 'FAILED', 'exit-handler-1.failing': 'FAILED', 'exit-handler-1.fine': 'SUCCEEDED', notify: 'SUCCEEDED' });
    const status = JSON.parse(await readFile(path.join(dir, 'status.json'), 'utf8')) as Dict;
    expect(status).to.deep.equal({
      state: 'FAILED',
      error: { code: 9, message: 'The DAG failed because some tasks failed. The failed tasks are: [failing].' },
      pipelineJobResourceName: job().resourceName,
      pipelineTaskName: 'exit-handler-1',
    });
    const handler = e.tasks.find((t) => t.taskName === 'exit-handler-1')!;
    expect(e.tasks.find((t) => t.taskName === 'failing')!.parentTaskId).to.equal(handler.taskId);
  });

  it('cancelling kills the running step, starts nothing new but the exit handler, which sees CANCELLED', async () => {
    const s = spec({
      long: { sh: 'echo $$ > long.pid; sleep 30' },
      next: { sh: 'touch next-ran', deps: ['long'] },
      notify: { sh: `printf '%s' '{{$.inputs.parameters['status']}}' > cancelled.json`, inputs: { status: { taskFinalStatus: { producerTask: 'long' } } }, exit: true, deps: ['long'] },
    });
    const e = new JobExecution(s, job(), options);
    for (let i = 0; i < 200 && e.logs.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, 100));
    e.cancel();
    await e.done;
    expect(e.state).to.equal('CANCELLED');
    expect(states(e)).to.deep.equal({ 'local-test-20261201120000': 'CANCELLED', long: 'CANCELLED', notify: 'SUCCEEDED' });
    expect(JSON.parse(await readFile(path.join(dir, 'cancelled.json'), 'utf8'))).to.include({ state: 'CANCELLED', pipelineTaskName: 'long' });
    const pid = Number(await readFile(path.join(dir, 'long.pid'), 'utf8'));
    expect(() => process.kill(pid, 0)).to.throw();
  });

  it('evaluates the CEL conditions KFP writes', () => {
    const p = { 'pipelinechannel--flip-coin-Output': 'heads', 'pipelinechannel--n': '7' };
    expect(evaluateCondition("inputs.parameter_values['pipelinechannel--flip-coin-Output'] == 'heads'", p)).to.equal(true);
    expect(evaluateCondition("int(inputs.parameter_values['pipelinechannel--n']) > 5 && !(inputs.parameter_values['pipelinechannel--flip-coin-Output'] != 'heads')", p)).to.equal(true);
    expect(evaluateCondition("int(inputs.parameter_values['pipelinechannel--n']) <= 5", p)).to.equal(false);
    expect(() => evaluateCondition("size(inputs.parameter_values['x'])", p)).to.throw(/unsupported/);
  });

  it('runs loops and conditions: one iteration task per item, an untaken condition NOT_TRIGGERED', async () => {
    const s = spec({ body: { sh: 'echo "{{$.inputs.parameters[\'item\']}}" >> items.txt', inputs: { item: { componentInputParameter: 'pipelinechannel--loop-item' } } }, cond: { sh: 'touch cond-ran' } });
    const executors = s['deploymentSpec'];
    const components = s['components'] as Dict;
    components['comp-for-loop-1'] = { dag: { tasks: { body: { componentRef: { name: 'comp-body' }, taskInfo: { name: 'body' }, inputs: { parameters: { item: { componentInputParameter: 'pipelinechannel--loop-item' } } } } } } };
    components['comp-condition-2'] = { dag: { tasks: { cond: { componentRef: { name: 'comp-cond' }, taskInfo: { name: 'cond' } } } } };
    const looped: Dict = {
      ...s,
      deploymentSpec: executors,
      root: {
        inputDefinitions: { parameters: { side: { parameterType: 'STRING' } } },
        dag: {
          tasks: {
            'for-loop-1': { componentRef: { name: 'comp-for-loop-1' }, taskInfo: { name: 'for-loop-1' }, parameterIterator: { itemInput: 'pipelinechannel--loop-item', items: { raw: '["a", "b", "c"]' } } },
            'condition-2': { componentRef: { name: 'comp-condition-2' }, taskInfo: { name: 'condition-2' }, inputs: { parameters: { 'pipelinechannel--side': { componentInputParameter: 'side' } } }, triggerPolicy: { condition: "inputs.parameter_values['pipelinechannel--side'] == 'heads'" } },
          },
        },
      },
    };
    const e = new JobExecution(looped, job({ side: 'tails' }), options);
    await e.done;
    expect(e.state, JSON.stringify(e.logs)).to.equal('SUCCEEDED');
    expect((await readFile(path.join(dir, 'items.txt'), 'utf8')).split('\n').filter(Boolean).sort()).to.deep.equal(['a', 'b', 'c']);
    expect(e.tasks.filter((t) => t.kind === 'iteration').map((t) => t.iteration).sort()).to.deep.equal([0, 1, 2]);
    expect(states(e)['condition-2']).to.equal('NOT_TRIGGERED');
  });

  it('runs every corpus spec\'s DAG (nested pipelines, loops, conditions, exit handlers, importers) with its containers swapped for sh', async () => {
    // The corpus's own containers need Python images; each becomes a shell writing its declared outputs.
    const SAMPLE: Record<string, unknown> = { STRING: 'heads', NUMBER_INTEGER: 3, NUMBER_DOUBLE: 0.5, BOOLEAN: true, LIST: [{ A_a: '1', B_b: ['2', '3'] }, { A_a: '4', B_b: ['5'] }], STRUCT: { A_a: '1', B_b: ['2'] }, INT: 3, DOUBLE: 0.5 };
    const text = (v: unknown) => (typeof v === 'string' ? v : JSON.stringify(v));
    const seen: string[] = [];
    for (const file of specFiles(kfpCorpusDir())) {
      const spec = structuredClone((await loadSpecFile(file)).spec) as unknown as Dict;
      const components = Object.values((spec['components'] ?? {}) as Record<string, Dict>);
      for (const [label, e] of Object.entries(((spec['deploymentSpec'] as Dict)['executors'] ?? {}) as Record<string, Dict>)) {
        if (e['container'] === undefined) continue;
        const outputs = ((components.find((c) => c['executorLabel'] === label)?.['outputDefinitions'] as Dict | undefined)?.['parameters'] ?? {}) as Record<string, Dict>;
        const writes = Object.entries(outputs).map(([k, d]) => `f="{{$.outputs.parameters['${k}'].output_file}}"; mkdir -p "$(dirname "$f")" && printf '%s' '${text(SAMPLE[String(d['parameterType'] ?? d['type'])] ?? 'x')}' > "$f"`);
        e['container'] = { image: 'local', command: ['/bin/sh', '-c'], args: [writes.join(' && ') || 'true'] };
      }
      const values: Dict = {};
      for (const [k, d] of Object.entries((((spec['root'] as Dict)['inputDefinitions'] as Dict | undefined)?.['parameters'] ?? {}) as Record<string, Dict>)) {
        if (d['defaultValue'] === undefined) values[k] = SAMPLE[String(d['parameterType'] ?? d['type'])] ?? 'x';
      }
      const e = new JobExecution(spec, { ...job(values), jobId: 'corpus' }, options);
      await e.done;
      expect(e.state, `${path.basename(file)}: ${e.failed.map((t) => `${t.taskUniqueName}: ${t.error?.message}`).join('; ')}${e.tasks[0]?.error?.message ?? ''}`).to.equal('SUCCEEDED');
      seen.push(path.basename(file));
    }
    expect(seen).to.include.members(['kedro-vertexai-spaceflights.yaml', 'kfp-pipeline_with_loops_and_conditions.yaml', 'kfp-pipeline_with_importer.yaml', 'kfp-failing_pipeline_with_exit_handler.yaml']);
  });

  it('through the fake API: a created job runs, and GET shows its states and the failed task with its error', async () => {
    const accessTokens = new AccessTokenStore();
    const token = accessTokens.issue('runner@my-project.iam.gserviceaccount.com', 3600).access_token;
    const vertex = await startFakeVertex({ accessTokens, execute: options });
    try {
      const body = { displayName: 'x', pipelineSpec: spec({ ok: { sh: 'true' }, bad: { sh: 'exit 2', deps: ['ok'] } }), runtimeConfig: { gcsOutputDirectory: 'gs://bucket/root' } };
      const base = `${vertex.url}/v1/projects/my-project/locations/europe-west4/pipelineJobs`;
      const created = await fetch(`${base}?pipelineJobId=exec-job`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
      expect(created.status).to.equal(200);
      expect(((await created.json()) as Dict)['state']).to.equal('PIPELINE_STATE_QUEUED');
      await vertex.jobs.get('exec-job')!.execution?.done;
      for (let i = 0; i < 100 && vertex.jobs.get('exec-job')!.execution === undefined; i++) await new Promise((r) => setTimeout(r, 10));
      await vertex.jobs.get('exec-job')!.execution!.done;
      await new Promise((r) => setImmediate(r));
      const got = (await (await fetch(`${base}/exec-job`, { headers: { authorization: `Bearer ${token}` } })).json()) as { state: string; error: { message: string }; jobDetail: { taskDetails: { taskName: string; state: string; error?: { message: string } }[] } };
      expect(got.state).to.equal('PIPELINE_STATE_FAILED');
      expect(got.error.message).to.match(/^The DAG failed because some tasks failed. The failed tasks are: \[bad\]/);
      const byName = Object.fromEntries(got.jobDetail.taskDetails.map((t) => [t.taskName, t]));
      expect(byName['ok']!.state).to.equal('SUCCEEDED');
      expect(byName['bad']!.state).to.equal('FAILED');
      expect(byName['bad']!.error!.message).to.include('non-zero status of 2');
      expect(byName['exec-job']!.state).to.equal('FAILED');
    } finally {
      await vertex.close();
    }
  });
});
