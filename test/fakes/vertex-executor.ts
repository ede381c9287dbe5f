/**
 * The fake Vertex AI API's executor: runs a PipelineJob on this machine, as Vertex would in the cloud. It walks the
 * PipelineSpec IR's DAG (`root.dag.tasks`, sub-DAG components, loops, conditions), starts each task once the tasks
 * it depends on (`dependentTasks`, and the producers of its inputs) have ended, and runs each container executor's
 * `command` + `args` as a local process in `workingDir` (the image's working directory), with the container's `env`
 * and the placeholders Vertex fills:
 *
 *   {{$}} (the executor input JSON), {{$.inputs.parameters['x']}}, {{$.outputs.parameters['x'].output_file}} (a
 *   file read back as the task's output parameter, passed on through taskOutputParameter), input and output
 *   artifact `.path` / `.uri`, {{$.pipeline_job_name}}, {{$.pipeline_job_resource_name}}, {{$.pipeline_job_uuid}},
 *   {{$.pipeline_task_name}}, {{$.pipeline_task_uuid}}, {{$.pipeline_root}}.
 *
 * An importer executor yields its artifact (by URI) without running anything; other non-container executors fail.
 *
 * Like Vertex: after a failure no task starts whose upstream failed; with FAIL_FAST no new task starts at all;
 * tasks triggered on ALL_UPSTREAM_TASKS_COMPLETED (exit handlers) run whatever their upstream's outcome, and a
 * TASK_FINAL_STATUS input (`taskFinalStatus: {producerTask}`) receives `{state, error: {code, message},
 * pipelineJobResourceName, pipelineTaskName}` (what KFP's executor reads into PipelineTaskFinalStatus). Cancelling
 * kills the running processes (their process groups: SIGTERM, then SIGKILL), starts nothing new except exit
 * handlers, which see the state CANCELLED, and ends the job CANCELLED.
 *
 * An output directory is not created for the step: Vertex mounts the bucket, and a step that writes a file where
 * no directory exists fails, which kedro-vertexai's `mkdir -p $(dirname ...)` is there for.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { idGenerator } from './vertex-pipeline-run.js';
import type { FakeTask } from './vertex-pipeline-run.js';

type Dict = Record<string, unknown>;
const isDict = (v: unknown): v is Dict => typeof v === 'object' && v !== null && !Array.isArray(v);
const dict = (v: unknown): Dict => (isDict(v) ? v : {});

export interface ExecutorOptions {
  /** Where every container's process starts (the image's WORKDIR). */
  workingDir: string;
  /** The environment every container starts with (PATH, the metadata server its credentials come from, ...). */
  env: NodeJS.ProcessEnv;
  /**
   * Container paths the commands write to that are the container's own (`/etc/hosts`): each task gets a fresh
   * copy of the host file given here, and the path in its command is rewritten to it.
   */
  containerFiles?: Record<string, string>;
  /** A task running longer than this is killed and fails (default 60 s): a test never hangs on a step. */
  taskTimeoutMs?: number;
}

export interface JobIdentity {
  jobId: string;
  resourceName: string;
  uuid?: string;
  pipelineRoot: string;
  /** Root input values as the job's runtime config gives them (parameterValues, or legacy `parameters`). */
  parameterValues: Dict;
  failFast?: boolean;
}

export type ExecutionState = 'RUNNING' | 'SUCCEEDED' | 'FAILED' | 'CANCELLED';

/** What a task printed, kept for tests to look at (and to print when a test fails). */
export interface TaskLog {
  task: string;
  argv: string[];
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
}

interface Outcome {
  state: 'SUCCEEDED' | 'FAILED' | 'CANCELLED' | 'NOT_TRIGGERED' | 'NOT_RUN';
  parameters: Dict;
  artifacts: Dict;
  error?: { code: number; message: string };
  task?: FakeTask;
}

interface Scope {
  parameters: Dict;
  artifacts: Dict;
  parent: FakeTask;
  uniquePrefix: string;
}

const MAX_TASKS = 500;
const MAX_LOG = 64 * 1024;
const KILL_GRACE_MS = 3000;
const EXIT_STRATEGY = 'ALL_UPSTREAM_TASKS_COMPLETED';

export class JobExecution {
  readonly tasks: FakeTask[] = [];
  readonly logs: TaskLog[] = [];
  state: ExecutionState = 'RUNNING';
  /** Container tasks that failed, first cause first. */
  readonly failed: FakeTask[] = [];
  readonly done: Promise<void>;
  readonly uuid: string;
  private cancelled = false;
  private anyFailure = false;
  private readonly running = new Map<ChildProcess, FakeTask>();
  private readonly exitTaskProcesses = new Set<ChildProcess>();
  private readonly nextId: () => string;
  private readonly dir: string;
  private readonly components: Dict;
  private readonly executors: Dict;

  constructor(
    private readonly spec: Dict,
    private readonly job: JobIdentity,
    private readonly options: ExecutorOptions,
    private readonly clock: () => string = () => new Date().toISOString(),
  ) {
    this.uuid = job.uuid ?? randomUUID();
    this.nextId = idGenerator(job.jobId);
    this.dir = mkdtempSync(path.join(tmpdir(), 'kvx-vertex-exec-'));
    this.components = dict(spec['components']);
    this.executors = dict(dict(spec['deploymentSpec'])['executors']);
    this.done = this.run();
  }

  /** Kills what runs (exit handlers excepted), starts nothing new but exit handlers; the job ends CANCELLED. */
  cancel(): void {
    if (this.cancelled || this.state !== 'RUNNING') return;
    this.cancelled = true;
    for (const [child] of this.running) if (!this.exitTaskProcesses.has(child)) killGroup(child);
  }

  get cancelling(): boolean {
    return this.cancelled && this.state === 'RUNNING';
  }

  private async run(): Promise<void> {
    const root = this.createTask(this.job.jobId, this.job.jobId, 'root', undefined);
    const rootDef = dict(this.spec['root']);
    const parameters = { ...defaults(rootDef), ...this.job.parameterValues };
    try {
      const outcome = await this.runDag(rootDef, { parameters, artifacts: {}, parent: root, uniquePrefix: '' });
      this.finish(root, outcome.state === 'FAILED' || this.anyFailure ? 'FAILED' : this.cancelled ? 'CANCELLED' : 'SUCCEEDED');
    } catch (err) {
      root.error = { code: 13, message: `fake executor: ${(err as Error).message}` };
      this.finish(root, 'FAILED');
    }
    this.state = root.state as ExecutionState;
    rmSync(this.dir, { recursive: true, force: true });
  }

  private createTask(name: string, uniqueName: string, kind: FakeTask['kind'], parent: FakeTask | undefined): FakeTask {
    if (this.tasks.length >= MAX_TASKS) throw new Error(`more than ${MAX_TASKS} tasks`);
    const now = this.clock();
    const t: FakeTask = { taskId: this.nextId(), taskName: name, taskUniqueName: uniqueName, kind, state: 'RUNNING', createTime: now, startTime: now, executionId: this.nextId().replace('-', ''), history: [{ updateTime: now, state: 'RUNNING' }] };
    if (parent !== undefined) t.parentTaskId = parent.taskId;
    if (kind === 'container') t.customJobId = this.nextId().replace('-', '');
    this.tasks.push(t);
    return t;
  }

  private finish(t: FakeTask, state: string, error?: { code: number; message: string }): void {
    const now = this.clock();
    t.state = state;
    t.endTime = now;
    t.history.push({ updateTime: now, state });
    if (error !== undefined) t.error = error;
  }

  /** Runs the tasks of one DAG, each once its upstream has ended; resolves with the DAG's outcome and outputs. */
  private async runDag(component: Dict, scope: Scope): Promise<Outcome> {
    const dag = dict(component['dag']);
    const tasks = dict(dag['tasks']) as Record<string, Dict>;
    const results = new Map<string, Outcome>();
    const started = new Map<string, Promise<void>>();
    const upstreamOf = (t: Dict): string[] => {
      const deps = new Set<string>(Array.isArray(t['dependentTasks']) ? t['dependentTasks'].map(String) : []);
      for (const input of [...Object.values(dict(dict(t['inputs'])['parameters'])), ...Object.values(dict(dict(t['inputs'])['artifacts']))]) {
        const i = dict(input);
        for (const source of [i['taskOutputParameter'], i['taskOutputArtifact'], i['taskFinalStatus']]) {
          const producer = dict(source)['producerTask'];
          if (typeof producer === 'string') deps.add(producer);
        }
      }
      return [...deps].filter((d) => d in tasks);
    };
    for (;;) {
      let progressed = false;
      for (const [key, t] of Object.entries(tasks)) {
        if (started.has(key)) continue;
        const upstream = upstreamOf(t);
        if (!upstream.every((u) => results.has(u))) continue;
        const exitTask = dict(t['triggerPolicy'])['strategy'] === EXIT_STRATEGY;
        const upstreamOk = upstream.every((u) => results.get(u)!.state === 'SUCCEEDED');
        const blocked = !exitTask && (!upstreamOk || this.cancelled || (this.job.failFast === true && this.anyFailure));
        progressed = true;
        if (blocked) {
          started.set(key, Promise.resolve());
          results.set(key, { state: 'NOT_RUN', parameters: {}, artifacts: {} });
          continue;
        }
        started.set(
          key,
          this.runTask(key, t, scope, results).then((outcome) => {
            results.set(key, outcome);
          }),
        );
      }
      const pending = [...started.entries()].filter(([key]) => !results.has(key));
      if (pending.length === 0 && !progressed) break;
      if (pending.length > 0) await Promise.race(pending.map(([, p]) => p));
    }
    const outcomes = [...results.values()];
    const failedNames = [...results.entries()].filter(([, o]) => o.state === 'FAILED').map(([k, o]) => o.task?.taskName ?? k);
    const state: Outcome['state'] = failedNames.length > 0 ? 'FAILED' : outcomes.some((o) => o.state === 'CANCELLED') || this.cancelled ? 'CANCELLED' : 'SUCCEEDED';
    const out: Outcome = { state, parameters: {}, artifacts: {} };
    if (failedNames.length > 0) out.error = { code: 9, message: `The DAG failed because some tasks failed. The failed tasks are: [${failedNames.join(', ')}].` };
    for (const [name, def] of Object.entries(dict(dict(dag['outputs'])['parameters']))) {
      const from = dict(dict(def)['valueFromParameter']);
      const producer = results.get(String(from['producerSubtask']));
      if (producer !== undefined && from['outputParameterKey'] !== undefined) out.parameters[name] = producer.parameters[String(from['outputParameterKey'])];
    }
    for (const [name, def] of Object.entries(dict(dict(dag['outputs'])['artifacts']))) {
      const selector = dict((dict(def)['artifactSelectors'] as unknown[] | undefined)?.[0]);
      const producer = results.get(String(selector['producerSubtask']));
      if (producer !== undefined) out.artifacts[name] = producer.artifacts[String(selector['outputArtifactKey'])];
    }
    return out;
  }

  private async runTask(key: string, t: Dict, scope: Scope, results: Map<string, Outcome>): Promise<Outcome> {
    const name = typeof dict(t['taskInfo'])['name'] === 'string' ? String(dict(t['taskInfo'])['name']) : key;
    const uniqueName = scope.uniquePrefix === '' ? name : `${scope.uniquePrefix}.${name}`;
    const component = dict(this.components[String(dict(t['componentRef'])['name'])]);
    let inputs: { parameters: Dict; artifacts: Dict };
    try {
      inputs = this.resolveInputs(t, scope, results);
    } catch (err) {
      const task = this.createTask(name, uniqueName, 'container', scope.parent);
      const error = { code: 3, message: (err as Error).message };
      this.fail(task, error);
      return { state: 'FAILED', parameters: {}, artifacts: {}, error, task };
    }
    const condition = dict(t['triggerPolicy'])['condition'];
    if (typeof condition === 'string' && condition !== '') {
      let taken: boolean;
      try {
        taken = truthy(evaluateCondition(condition, inputs.parameters));
      } catch (err) {
        const task = this.createTask(name, uniqueName, 'dag', scope.parent);
        const error = { code: 3, message: `cannot evaluate the condition ${condition}: ${(err as Error).message}` };
        this.fail(task, error);
        return { state: 'FAILED', parameters: {}, artifacts: {}, error, task };
      }
      if (!taken) {
        const task = this.createTask(name, uniqueName, component['dag'] !== undefined ? 'dag' : 'container', scope.parent);
        this.finish(task, 'NOT_TRIGGERED');
        return { state: 'NOT_TRIGGERED', parameters: {}, artifacts: {}, task };
      }
    }
    const iterator = dict(t['parameterIterator']);
    if (Object.keys(iterator).length > 0) return this.runLoop(name, uniqueName, iterator, component, inputs, scope);
    if (component['dag'] !== undefined) {
      const task = this.createTask(name, uniqueName, 'dag', scope.parent);
      const outcome = await this.runDag(component, { ...inputs, parent: task, uniquePrefix: uniqueName });
      this.finish(task, outcome.state, outcome.error);
      return { ...outcome, task };
    }
    return this.runContainer(name, uniqueName, t, component, inputs, scope.parent);
  }

  private async runLoop(name: string, uniqueName: string, iterator: Dict, component: Dict, inputs: { parameters: Dict; artifacts: Dict }, scope: Scope): Promise<Outcome> {
    const loop = this.createTask(name, uniqueName, 'loop', scope.parent);
    const items = dict(iterator['items']);
    let list: unknown = typeof items['raw'] === 'string' ? JSON.parse(items['raw']) : inputs.parameters[String(items['inputParameter'])];
    if (typeof list === 'string') list = JSON.parse(list);
    if (!Array.isArray(list)) {
      const error = { code: 3, message: `loop ${name}: the items are not a list` };
      this.fail(loop, error);
      return { state: 'FAILED', parameters: {}, artifacts: {}, error, task: loop };
    }
    loop.iterationCount = list.length;
    const runs = list.map(async (item, i) => {
      const it = this.createTask(name, `${uniqueName}.iteration-${i}`, 'iteration', loop);
      it.iteration = i;
      const outcome = await this.runDag(component, { parameters: { ...inputs.parameters, [String(iterator['itemInput'])]: item }, artifacts: inputs.artifacts, parent: it, uniquePrefix: `${uniqueName}.iteration-${i}` });
      this.finish(it, outcome.state, outcome.error);
      return outcome;
    });
    const outcomes = await Promise.all(runs);
    const state = outcomes.some((o) => o.state === 'FAILED') ? 'FAILED' : outcomes.some((o) => o.state === 'CANCELLED') ? 'CANCELLED' : 'SUCCEEDED';
    const error = state === 'FAILED' ? { code: 9, message: `The DAG failed because some tasks failed. The failed tasks are: [${name}].` } : undefined;
    this.finish(loop, state, error);
    return { state, parameters: {}, artifacts: {}, task: loop, ...(error === undefined ? {} : { error }) };
  }

  private resolveInputs(t: Dict, scope: Scope, results: Map<string, Outcome>): { parameters: Dict; artifacts: Dict } {
    const parameters: Dict = {};
    const artifacts: Dict = {};
    for (const [name, raw] of Object.entries(dict(dict(t['inputs'])['parameters']))) {
      const spec = dict(raw);
      let value: unknown;
      if (spec['componentInputParameter'] !== undefined) value = scope.parameters[String(spec['componentInputParameter'])];
      else if (spec['taskOutputParameter'] !== undefined) {
        const from = dict(spec['taskOutputParameter']);
        value = results.get(String(from['producerTask']))?.parameters[String(from['outputParameterKey'])];
      } else if (spec['runtimeValue'] !== undefined) value = dict(spec['runtimeValue'])['constant'];
      else if (spec['taskFinalStatus'] !== undefined) {
        const producer = String(dict(spec['taskFinalStatus'])['producerTask']);
        const outcome = results.get(producer);
        const state = outcome?.state === 'SUCCEEDED' || outcome?.state === 'NOT_TRIGGERED' ? 'SUCCEEDED' : outcome?.state === 'CANCELLED' || this.cancelled ? 'CANCELLED' : 'FAILED';
        value = { state, error: outcome?.error ?? (state === 'CANCELLED' ? { code: 1, message: 'CANCELLED' } : {}), pipelineJobResourceName: this.job.resourceName, pipelineTaskName: outcome?.task?.taskName ?? producer };
      } else throw new Error(`input ${name}: no source the fake executor knows (${Object.keys(spec).join(', ')})`);
      const selector = spec['parameterExpressionSelector'];
      if (typeof selector === 'string' && value !== undefined) value = select(selector, value);
      if (value !== undefined) parameters[name] = value;
    }
    for (const [name, raw] of Object.entries(dict(dict(t['inputs'])['artifacts']))) {
      const spec = dict(raw);
      if (spec['componentInputArtifact'] !== undefined) artifacts[name] = scope.artifacts[String(spec['componentInputArtifact'])];
      else if (spec['taskOutputArtifact'] !== undefined) {
        const from = dict(spec['taskOutputArtifact']);
        artifacts[name] = results.get(String(from['producerTask']))?.artifacts[String(from['outputArtifactKey'])];
      }
    }
    return { parameters, artifacts };
  }

  private fail(task: FakeTask, error: { code: number; message: string }): void {
    this.finish(task, 'FAILED', error);
    this.anyFailure = true;
    this.failed.push(task);
  }

  private async runContainer(name: string, uniqueName: string, t: Dict, component: Dict, inputs: { parameters: Dict; artifacts: Dict }, parent: FakeTask): Promise<Outcome> {
    const task = this.createTask(name, uniqueName, 'container', parent);
    const executor = dict(this.executors[String(component['executorLabel'])]);
    const container = dict(executor['container']);
    if (isDict(executor['importer'])) return this.runImporter(task, executor['importer'], component, inputs.parameters);
    const fail = (message: string, code = 9): Outcome => {
      const error = { code, message };
      this.fail(task, error);
      return { state: 'FAILED', parameters: {}, artifacts: {}, error, task };
    };
    if (Object.keys(container).length === 0) return fail(`the fake executor runs container executors only; ${String(component['executorLabel'])} is not one`, 12);
    const taskDir = path.join(this.dir, uniqueName.replace(/[^\w.-]/g, '_'));
    mkdirSync(taskDir, { recursive: true });
    const parameters = { ...defaults(component), ...inputs.parameters };
    const outputFiles: Record<string, string> = {};
    for (const key of Object.keys(dict(dict(component['outputDefinitions'])['parameters']))) outputFiles[key] = path.join(taskDir, 'outputs', key);
    const outputArtifacts: Dict = {};
    for (const key of Object.keys(dict(dict(component['outputDefinitions'])['artifacts']))) {
      const p = path.join(taskDir, 'artifacts', key);
      mkdirSync(path.dirname(p), { recursive: true });
      outputArtifacts[key] = { path: p, uri: `${this.job.pipelineRoot.replace(/\/+$/, '')}/${this.job.jobId}/${uniqueName}/${key}` };
    }
    const files: Record<string, string> = {};
    for (const [inside, host] of Object.entries(this.options.containerFiles ?? {})) {
      const copy = path.join(taskDir, 'container', inside.replace(/^\/+/, '').replace(/\//g, '_'));
      mkdirSync(path.dirname(copy), { recursive: true });
      let text = '';
      try {
        text = readFileSync(host, 'utf8');
      } catch {
        // the image has no such file: the step starts with an empty one
      }
      writeFileSync(copy, text);
      files[inside] = copy;
    }
    const fill = (text: string): string => {
      let out = text.replace(/\{\{\$(\.[^}]*)?\}\}/g, (whole, expr: string | undefined) => placeholder(whole, expr ?? '', { parameters, artifacts: inputs.artifacts, outputFiles, outputArtifacts, job: this.job, uuid: this.uuid, task }));
      for (const [inside, copy] of Object.entries(files)) out = out.split(inside).join(copy);
      return out;
    };
    let argv: string[];
    const env: NodeJS.ProcessEnv = { ...this.options.env };
    try {
      argv = [...((container['command'] as unknown[] | undefined) ?? []), ...((container['args'] as unknown[] | undefined) ?? [])].map((a) => fill(String(a)));
      for (const e of (container['env'] as unknown[] | undefined) ?? []) env[String(dict(e)['name'])] = fill(String(dict(e)['value'] ?? ''));
    } catch (err) {
      return fail((err as Error).message, 3);
    }
    if (argv.length === 0) return fail(`container of ${name} has no command: the fake executor does not run an image's entrypoint`, 3);
    if (this.cancelled && dict(t['triggerPolicy'])['strategy'] !== EXIT_STRATEGY) {
      this.finish(task, 'CANCELLED');
      return { state: 'CANCELLED', parameters: {}, artifacts: {}, task };
    }
    const log: TaskLog = { task: uniqueName, argv, code: null, signal: null, stdout: '', stderr: '' };
    this.logs.push(log);
    const result = await this.spawn(argv, env, log, task, dict(t['triggerPolicy'])['strategy'] === EXIT_STRATEGY);
    if (result === 'cancelled') {
      this.finish(task, 'CANCELLED');
      return { state: 'CANCELLED', parameters: {}, artifacts: {}, task };
    }
    if (result !== 0) return fail(result === 'timeout' ? `The task ran longer than the fake's ${this.options.taskTimeoutMs ?? 60_000} ms and was killed.` : `The replica workerpool0-0 exited with a non-zero status of ${result}. Termination reason: Error.`);
    const outputs: Dict = {};
    const types = dict(dict(component['outputDefinitions'])['parameters']);
    for (const [key, file] of Object.entries(outputFiles)) {
      let text: string;
      try {
        text = readFileSync(file, 'utf8');
      } catch {
        return fail(`Failed to read output parameter ${key}: the task wrote no file at its output_file.`);
      }
      try {
        outputs[key] = typed(String(dict(types[key])['parameterType'] ?? 'STRING'), text);
      } catch {
        return fail(`Output parameter ${key}: "${text.slice(0, 60)}" is not a ${String(dict(types[key])['parameterType'])}.`);
      }
    }
    this.finish(task, 'SUCCEEDED');
    return { state: 'SUCCEEDED', parameters: outputs, artifacts: outputArtifacts, task };
  }

  /** An importer makes its output artifact from a URI (a constant or a runtime parameter); nothing runs. */
  private runImporter(task: FakeTask, importer: Dict, component: Dict, parameters: Dict): Outcome {
    const from = dict(importer['artifactUri']);
    const uri = from['constant'] ?? parameters[String(from['runtimeParameter'])];
    if (typeof uri !== 'string' || uri === '') {
      const error = { code: 3, message: `importer ${task.taskName}: no artifact URI (${JSON.stringify(from)})` };
      this.fail(task, error);
      return { state: 'FAILED', parameters: {}, artifacts: {}, error, task };
    }
    const artifacts: Dict = {};
    for (const key of Object.keys(dict(dict(component['outputDefinitions'])['artifacts']))) artifacts[key] = { uri, path: uri.replace(/^gs:\/\//, '/gcs/') };
    this.finish(task, 'SUCCEEDED');
    return { state: 'SUCCEEDED', parameters: {}, artifacts, task };
  }

  private spawn(argv: string[], env: NodeJS.ProcessEnv, log: TaskLog, task: FakeTask, exitTask: boolean): Promise<number | 'cancelled' | 'timeout'> {
    return new Promise((resolve) => {
      let child: ChildProcess;
      try {
        child = spawn(argv[0]!, argv.slice(1), { cwd: this.options.workingDir, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
      } catch (err) {
        log.stderr = (err as Error).message;
        resolve(127);
        return;
      }
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        killGroup(child);
      }, this.options.taskTimeoutMs ?? 60_000);
      this.running.set(child, task);
      if (exitTask) this.exitTaskProcesses.add(child);
      child.stdout!.on('data', (c: Buffer) => (log.stdout = (log.stdout + c.toString()).slice(-MAX_LOG)));
      child.stderr!.on('data', (c: Buffer) => (log.stderr = (log.stderr + c.toString()).slice(-MAX_LOG)));
      child.on('error', (err) => {
        log.stderr += `\n${err.message}`;
      });
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        this.running.delete(child);
        this.exitTaskProcesses.delete(child);
        log.code = code;
        log.signal = signal;
        if (timedOut) resolve('timeout');
        else if (this.cancelled && !exitTask && (signal !== null || code !== 0)) resolve('cancelled');
        else resolve(code ?? 128);
      });
    });
  }
}

/** SIGTERM to the process group (bash, the wrapper, the step), then SIGKILL if it is still there. */
function killGroup(child: ChildProcess): void {
  const signal = (s: NodeJS.Signals) => {
    try {
      process.kill(-child.pid!, s);
    } catch {
      // already gone
    }
  };
  signal('SIGTERM');
  const timer = setTimeout(() => signal('SIGKILL'), KILL_GRACE_MS);
  timer.unref();
  child.once('close', () => clearTimeout(timer));
}

function defaults(component: Dict): Dict {
  const out: Dict = {};
  for (const [name, def] of Object.entries(dict(dict(component['inputDefinitions'])['parameters']))) {
    if (dict(def)['defaultValue'] !== undefined) out[name] = dict(def)['defaultValue'];
  }
  return out;
}

/** A root value as the runtime config carries it: plain (parameterValues) or `{stringValue|intValue|doubleValue}`. */
export function rootValues(runtimeConfig: Dict): Dict {
  const out: Dict = { ...dict(runtimeConfig['parameterValues']) };
  for (const [name, v] of Object.entries(dict(runtimeConfig['parameters']))) {
    const value = dict(v);
    out[name] = 'intValue' in value ? Number(value['intValue']) : 'doubleValue' in value ? Number(value['doubleValue']) : value['stringValue'];
  }
  return out;
}

/** How Vertex writes a parameter into a command: strings as they are, everything else as JSON. */
function render(value: unknown): string {
  return typeof value === 'string' ? value : JSON.stringify(value);
}

function typed(type: string, text: string): unknown {
  switch (type) {
    case 'STRING':
      return text;
    case 'NUMBER_INTEGER':
    case 'NUMBER_DOUBLE': {
      const n = Number(text.trim());
      if (text.trim() === '' || !Number.isFinite(n)) throw new Error('not a number');
      return n;
    }
    case 'BOOLEAN':
      if (!['true', 'false'].includes(text.trim().toLowerCase())) throw new Error('not a boolean');
      return text.trim().toLowerCase() === 'true';
    default:
      return JSON.parse(text) as unknown;
  }
}

interface PlaceholderContext {
  parameters: Dict;
  artifacts: Dict;
  outputFiles: Record<string, string>;
  outputArtifacts: Dict;
  job: JobIdentity;
  uuid: string;
  task: FakeTask;
}

function placeholder(whole: string, expr: string, c: PlaceholderContext): string {
  if (expr === '') {
    return JSON.stringify({
      inputs: { parameterValues: c.parameters, artifacts: Object.fromEntries(Object.entries(c.artifacts).map(([k, a]) => [k, { artifacts: [{ uri: dict(a)['uri'], metadata: {} }] }])) },
      outputs: {
        parameters: Object.fromEntries(Object.entries(c.outputFiles).map(([k, f]) => [k, { outputFile: f }])),
        artifacts: Object.fromEntries(Object.entries(c.outputArtifacts).map(([k, a]) => [k, { artifacts: [{ uri: dict(a)['uri'], metadata: {} }] }])),
        outputFile: path.join(path.dirname(Object.values(c.outputFiles)[0] ?? path.join(tmpdir(), 'x')), 'executor_output.json'),
      },
    });
  }
  const simple: Record<string, string> = {
    '.pipeline_job_name': c.job.jobId,
    '.pipeline_job_resource_name': c.job.resourceName,
    '.pipeline_job_uuid': c.uuid,
    '.pipeline_task_name': c.task.taskName,
    '.pipeline_task_uuid': c.task.taskId,
    '.pipeline_root': c.job.pipelineRoot,
  };
  if (expr in simple) return simple[expr]!;
  const m = /^\.(inputs|outputs)\.(parameters|artifacts)\['([^']+)'\](?:\.(output_file|path|uri))?$/.exec(expr);
  if (m !== null) {
    const [, side, kind, name, field] = m as unknown as [string, string, string, string, string | undefined];
    if (side === 'inputs' && kind === 'parameters' && field === undefined) {
      if (!(name in c.parameters)) throw new Error(`${whole}: the task has no input parameter ${name}`);
      return render(c.parameters[name]);
    }
    if (side === 'outputs' && kind === 'parameters' && field === 'output_file') {
      if (!(name in c.outputFiles)) throw new Error(`${whole}: the component declares no output parameter ${name}`);
      return c.outputFiles[name]!;
    }
    if (kind === 'artifacts' && (field === 'path' || field === 'uri')) {
      const a = dict((side === 'inputs' ? c.artifacts : c.outputArtifacts)[name]);
      if (a[field] === undefined) throw new Error(`${whole}: no ${side === 'inputs' ? 'input' : 'output'} artifact ${name}`);
      return String(a[field]);
    }
  }
  throw new Error(`${whole}: a placeholder the fake executor does not fill`);
}

/** `parseJson(string_value)["key"]`, the selector KFP writes for loop item fields. */
function select(selector: string, value: unknown): unknown {
  const m = /^parseJson\(string_value\)\["([^"]+)"\]$/.exec(selector.trim());
  if (m === null) throw new Error(`parameterExpressionSelector ${selector} is not one the fake executor knows`);
  const parsed = typeof value === 'string' ? (JSON.parse(value) as unknown) : value;
  return dict(parsed)[m[1]!];
}

function truthy(v: unknown): boolean {
  if (typeof v === 'boolean') return v;
  throw new Error(`the condition gives ${JSON.stringify(v)}, not a boolean`);
}

/**
 * The part of CEL KFP conditions use: `inputs.parameter_values['x']`, string, number and boolean literals,
 * int()/double()/string(), comparisons, `!`, `&&`, `||` and parentheses.
 */
export function evaluateCondition(expression: string, parameters: Dict): unknown {
  const tokens = expression.match(/\s*(inputs\.parameter_values\[\s*'(?:[^'\\]|\\.)*'\s*\]|'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?|==|!=|<=|>=|&&|\|\||[<>!()]|int|double|string|true|false)\s*/gy);
  if (tokens === null || tokens.join('').length !== expression.length) throw new Error('unsupported expression');
  const list = tokens.map((t) => t.trim());
  let i = 0;
  const peek = () => list[i];
  const next = () => list[i++];
  const primary = (): unknown => {
    const t = next();
    if (t === undefined) throw new Error('unexpected end');
    if (t === '(') {
      const v = or();
      if (next() !== ')') throw new Error('missing )');
      return v;
    }
    if (t === '!') return !truthy(primary());
    if (t === 'int' || t === 'double' || t === 'string') {
      if (next() !== '(') throw new Error(`${t} needs (`);
      const v = or();
      if (next() !== ')') throw new Error('missing )');
      if (t === 'string') return render(v);
      const n = Number(v);
      if (!Number.isFinite(n)) throw new Error(`${t}(${JSON.stringify(v)})`);
      return t === 'int' ? Math.trunc(n) : n;
    }
    if (t === 'true' || t === 'false') return t === 'true';
    if (t.startsWith('inputs.')) {
      const name = /'((?:[^'\\]|\\.)*)'/.exec(t)![1]!;
      if (!(name in parameters)) throw new Error(`no input ${name}`);
      return parameters[name];
    }
    if (t.startsWith("'") || t.startsWith('"')) return t.slice(1, -1).replace(/\\(.)/g, '$1');
    return Number(t);
  };
  const comparison = (): unknown => {
    const left = primary();
    const op = peek();
    if (op === undefined || !['==', '!=', '<', '>', '<=', '>='].includes(op)) return left;
    next();
    const right = primary();
    switch (op) {
      case '==':
        return JSON.stringify(left) === JSON.stringify(right);
      case '!=':
        return JSON.stringify(left) !== JSON.stringify(right);
      case '<':
        return (left as number) < (right as number);
      case '>':
        return (left as number) > (right as number);
      case '<=':
        return (left as number) <= (right as number);
      default:
        return (left as number) >= (right as number);
    }
  };
  const and = (): unknown => {
    let v = comparison();
    while (peek() === '&&') {
      next();
      const r = comparison();
      v = truthy(v) && truthy(r);
    }
    return v;
  };
  const or = (): unknown => {
    let v = and();
    while (peek() === '||') {
      next();
      const r = and();
      v = truthy(v) || truthy(r);
    }
    return v;
  };
  const value = or();
  if (i !== list.length) throw new Error(`unexpected ${list[i]}`);
  return value;
}
