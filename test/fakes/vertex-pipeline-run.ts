/**
 * How the fake Vertex AI API runs a pipeline job: the task tree a real job reports in `jobDetail.taskDetails`,
 * advanced one event per poll so tests are deterministic without timers.
 *
 * Like a real job (see ../../../shared/reference/vertex/pipeline-job-get-kedro-vertexai.json): the root task is
 * named after the job id and has no parent; int64 task ids are strings, often negative; tasks of sub-DAGs (nested
 * pipelines, conditions, loops) point at their DAG task by `parentTaskId`; a loop has one child task per
 * iteration, carrying the loop's name and `execution.metadata.iteration_index`; a condition that is not taken is
 * `NOT_TRIGGERED` and runs nothing; a task with caching on and a cache hit is `SKIPPED`. After a failure no new
 * task starts except those triggered on ALL_UPSTREAM_TASKS_COMPLETED (exit handlers).
 *
 * Task paths (`outer/for-loop-2[iteration 1]/train`) name tasks in outcomes (`failAt`, `notTriggered`, `cached`).
 */

export interface JobOutcome {
  /** The task that fails: its name (any scope) or its path. */
  failAt?: string;
  error?: string;
  /** Stop advancing once a container task is running (for interrupt tests). */
  stayRunning?: boolean;
  /** Never leave QUEUED (no capacity): the job never starts, so it never gets a pipeline run context. */
  stayQueued?: boolean;
  /** Condition tasks (name or path) whose condition is false. */
  notTriggered?: string[];
  /** Container tasks (name or path) that hit the cache; only tasks with cachingOptions.enableCache true do. */
  cached?: string[];
  /** Iterations of a loop whose items are not given in the spec (default 2). */
  iterations?: number;
  /** Report no taskUniqueName, as older API versions did. */
  omitTaskUniqueName?: boolean;
}

type Kind = 'root' | 'container' | 'dag' | 'loop' | 'iteration';

export interface RunNode {
  name: string;
  path: string;
  uniqueName: string;
  kind: Kind;
  children: RunNode[];
  parent?: RunNode;
  iteration?: number;
  iterationCount?: number;
  /** Set when the task does not run: NOT_TRIGGERED (condition false) or SKIPPED (cache hit). */
  skip?: 'NOT_TRIGGERED' | 'SKIPPED';
  /** Runs after upstream failures (exit handler). */
  afterFailure: boolean;
  task?: FakeTask;
}

export interface FakeTask {
  taskId: string;
  parentTaskId?: string;
  taskName: string;
  taskUniqueName: string;
  kind: Kind;
  state: string;
  createTime: string;
  startTime?: string;
  endTime?: string;
  error?: { code: number; message: string };
  executionId: string;
  customJobId?: string;
  iteration?: number;
  iterationCount?: number;
  history: { updateTime: string; state: string }[];
}

type RunEvent = { kind: 'start' | 'end' | 'skip'; node: RunNode };

const MAX_NODES = 2000;
const MAX_ITERATIONS = 10;

type Dict = Record<string, unknown>;
const isDict = (v: unknown): v is Dict => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Deterministic int64 ids (splitmix64), rendered as signed decimal strings like Vertex's. */
export function idGenerator(seedText: string): () => string {
  let seed = 0n;
  for (const c of seedText) seed = BigInt.asUintN(64, seed * 131n + BigInt(c.codePointAt(0)!));
  return () => {
    seed = BigInt.asUintN(64, seed + 0x9e3779b97f4a7c15n);
    let z = seed;
    z = BigInt.asUintN(64, (z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n);
    z = BigInt.asUintN(64, (z ^ (z >> 27n)) * 0x94d049bb133111ebn);
    z = z ^ (z >> 31n);
    return BigInt.asIntN(64, z).toString();
  };
}

const matches = (list: string[] | undefined, node: { name: string; path: string }) => list !== undefined && (list.includes(node.name) || list.includes(node.path));

/** Task names of a DAG in dependency order (dependencies first, then as listed). */
function dependencyOrder(tasks: Record<string, Dict>): string[] {
  const order: string[] = [];
  const visit = (name: string, seen: Set<string>) => {
    if (order.includes(name) || seen.has(name) || tasks[name] === undefined) return;
    seen.add(name);
    const deps = tasks[name]!['dependentTasks'];
    for (const dep of Array.isArray(deps) ? deps : []) visit(String(dep), seen);
    order.push(name);
  };
  for (const name of Object.keys(tasks)) visit(name, new Set());
  return order;
}

/** The run tree of a spec: what the job will do, before it starts. */
export function planRun(spec: Dict, jobId: string, outcome: JobOutcome): RunNode {
  const components = isDict(spec['components']) ? spec['components'] : {};
  const root: RunNode = { name: jobId, path: '', uniqueName: jobId, kind: 'root', children: [], afterFailure: false };
  let count = 0;
  const children = (dag: unknown, parent: RunNode): RunNode[] => {
    const tasks = isDict(dag) && isDict(dag['tasks']) ? (dag['tasks'] as Record<string, Dict>) : {};
    const out: RunNode[] = [];
    for (const key of dependencyOrder(tasks)) {
      if (++count > MAX_NODES) break;
      const t = tasks[key]!;
      const info = isDict(t['taskInfo']) ? t['taskInfo'] : {};
      const name = typeof info['name'] === 'string' ? info['name'] : key;
      const ref = isDict(t['componentRef']) ? String(t['componentRef']['name']) : '';
      const component = isDict(components[ref]) ? (components[ref] as Dict) : {};
      const trigger = isDict(t['triggerPolicy']) ? t['triggerPolicy'] : {};
      const path = parent.kind === 'root' ? name : `${parent.path}/${name}`;
      const uniqueName = parent.kind === 'root' ? name : `${parent.uniqueName}.${name}`;
      const node: RunNode = { name, path, uniqueName, kind: 'container', children: [], parent, afterFailure: trigger['strategy'] === 'ALL_UPSTREAM_TASKS_COMPLETED' };
      out.push(node);
      if (typeof trigger['condition'] === 'string' && matches(outcome.notTriggered, node)) {
        node.kind = component['dag'] !== undefined ? 'dag' : 'container';
        node.skip = 'NOT_TRIGGERED';
        continue;
      }
      if (t['parameterIterator'] !== undefined || t['artifactIterator'] !== undefined) {
        node.kind = 'loop';
        node.iterationCount = Math.min(iterationsOf(t, outcome), MAX_ITERATIONS);
        for (let i = 0; i < node.iterationCount; i++) {
          const it: RunNode = { name, path: `${path}[iteration ${i}]`, uniqueName: `${uniqueName}.iteration-${i}`, kind: 'iteration', children: [], parent: node, iteration: i, afterFailure: node.afterFailure };
          it.children = children(component['dag'], it);
          node.children.push(it);
        }
        continue;
      }
      if (component['dag'] !== undefined) {
        node.kind = 'dag';
        node.children = children(component['dag'], node);
        continue;
      }
      const caching = isDict(t['cachingOptions']) ? t['cachingOptions'] : {};
      if (caching['enableCache'] === true && matches(outcome.cached, node)) node.skip = 'SKIPPED';
    }
    return out;
  };
  root.children = children(isDict(spec['root']) ? spec['root']['dag'] : undefined, root);
  return root;
}

function iterationsOf(task: Dict, outcome: JobOutcome): number {
  const iterator = isDict(task['parameterIterator']) ? task['parameterIterator'] : {};
  const items = isDict(iterator['items']) ? iterator['items'] : {};
  if (typeof items['raw'] === 'string') {
    try {
      const list = JSON.parse(items['raw']) as unknown;
      if (Array.isArray(list)) return list.length;
    } catch {
      // not JSON: fall through to the outcome's count
    }
  }
  return outcome.iterations ?? 2;
}

/** Events in execution order: a DAG starts, its children run one after the other, it ends. */
export function runEvents(root: RunNode): RunEvent[] {
  const events: RunEvent[] = [];
  const walk = (node: RunNode) => {
    if (node.skip !== undefined) {
      events.push({ kind: 'skip', node });
      return;
    }
    events.push({ kind: 'start', node });
    for (const c of node.children) walk(c);
    events.push({ kind: 'end', node });
  };
  walk(root);
  return events;
}

export interface RunState {
  root: RunNode;
  events: RunEvent[];
  cursor: number;
  tasks: FakeTask[];
  failed: FakeTask[];
  nextId: () => string;
}

export function startRun(spec: Dict, jobId: string, outcome: JobOutcome): RunState {
  const root = planRun(spec, jobId, outcome);
  return { root, events: runEvents(root), cursor: 0, tasks: [], failed: [], nextId: idGenerator(jobId) };
}

const digits = (id: string) => id.replace('-', '');

function createTask(run: RunState, node: RunNode, state: string, now: string): FakeTask {
  const t: FakeTask = {
    taskId: run.nextId(),
    taskName: node.name,
    taskUniqueName: node.uniqueName,
    kind: node.kind,
    state,
    createTime: now,
    executionId: digits(run.nextId()),
    history: [{ updateTime: now, state }],
  };
  const parent = node.parent?.task;
  if (parent !== undefined) t.parentTaskId = parent.taskId;
  if (node.iteration !== undefined) t.iteration = node.iteration;
  if (node.iterationCount !== undefined) t.iterationCount = node.iterationCount;
  if (state === 'RUNNING') t.startTime = now;
  if (node.kind === 'container' && state === 'RUNNING') t.customJobId = digits(run.nextId());
  node.task = t;
  run.tasks.push(t);
  return t;
}

function setState(t: FakeTask, state: string, now: string): void {
  t.state = state;
  t.history.push({ updateTime: now, state });
  if (['SUCCEEDED', 'FAILED', 'CANCELLED', 'SKIPPED', 'NOT_TRIGGERED'].includes(state)) t.endTime = now;
}

const underFailure = (node: RunNode): boolean => {
  for (let n: RunNode | undefined = node; n !== undefined; n = n.parent) if (n.task?.state === 'FAILED') return true;
  return false;
};

const runsAfterFailure = (node: RunNode): boolean => {
  for (let n: RunNode | undefined = node; n !== undefined && n.kind !== 'root'; n = n.parent) if (n.afterFailure) return true;
  return false;
};

/**
 * One step. Returns `running` while events remain, else the job's end. The first step creates the root task;
 * a failing container task fails its enclosing DAGs at once (not the root, which ends with the job).
 */
export function stepRun(run: RunState, outcome: JobOutcome, now: string, failureMessage: (task: FakeTask) => string): 'running' | 'succeeded' | 'failed' {
  if (outcome.stayRunning && run.tasks.some((t) => t.kind === 'container' && t.state === 'RUNNING')) return 'running';
  for (;;) {
    const event = run.events[run.cursor++];
    if (event === undefined) return run.failed.length > 0 ? 'failed' : 'succeeded';
    const { node } = event;
    // After a failure only exit-handler work goes on; the rest of the plan never starts.
    if (run.failed.length > 0 && node.kind !== 'root' && (!runsAfterFailure(node) || (event.kind === 'end' && node.task === undefined))) continue;
    if (node.kind !== 'root' && event.kind === 'start' && underFailure(node.parent!)) continue;
    if (event.kind === 'skip') {
      const t = createTask(run, node, node.skip!, now);
      t.endTime = now;
      return 'running';
    }
    if (event.kind === 'start') {
      createTask(run, node, 'RUNNING', now);
      return 'running';
    }
    const t = node.task;
    if (t === undefined || t.state !== 'RUNNING') continue;
    if (node.kind === 'root') {
      setState(t, run.failed.length > 0 ? 'FAILED' : 'SUCCEEDED', now);
      return run.failed.length > 0 ? 'failed' : 'succeeded';
    }
    if (node.kind === 'container' && run.failed.length === 0 && matches(outcome.failAt === undefined ? undefined : [outcome.failAt], node)) {
      setState(t, 'FAILED', now);
      t.error = { code: 9, message: failureMessage(t) };
      run.failed.push(t);
      for (let p = node.parent; p !== undefined && p.kind !== 'root'; p = p.parent) {
        if (p.task !== undefined && p.task.state === 'RUNNING') {
          setState(p.task, 'FAILED', now);
          p.task.error = { code: 9, message: `The DAG failed because some tasks failed. The failed tasks are: [${node.name}].` };
        }
      }
      return 'running';
    }
    setState(t, 'SUCCEEDED', now);
    return 'running';
  }
}

/** Cancelling: whatever runs or waits is cancelled. */
export function cancelRun(run: RunState, now: string): void {
  for (const t of run.tasks) if (t.state === 'RUNNING' || t.state === 'PENDING') setState(t, 'CANCELLED', now);
}

const SCHEMA: Record<Kind, string> = { root: 'system.Run', container: 'system.ContainerExecution', dag: 'system.DagExecution', loop: 'system.DagExecution', iteration: 'system.DagExecution' };
const EXECUTION_STATE: Record<string, string> = { RUNNING: 'RUNNING', SUCCEEDED: 'COMPLETE', FAILED: 'FAILED', CANCELLED: 'CANCELLED', SKIPPED: 'CACHED' };

/** A task as `pipelineJobs.get` shows it. */
export function taskJson(t: FakeTask, where: { projectNumber: string; region: string }, updateTime: string, outcome: JobOutcome): Record<string, unknown> {
  const out: Record<string, unknown> = { taskId: t.taskId, taskName: t.taskName };
  if (!outcome.omitTaskUniqueName) out['taskUniqueName'] = t.taskUniqueName;
  out['createTime'] = t.createTime;
  if (t.startTime !== undefined) out['startTime'] = t.startTime;
  if (t.endTime !== undefined) out['endTime'] = t.endTime;
  out['executorDetail'] = t.customJobId === undefined ? {} : { containerDetail: { mainJob: `projects/${where.projectNumber}/locations/${where.region}/customJobs/${t.customJobId}` } };
  out['state'] = t.state;
  if (t.state !== 'NOT_TRIGGERED') {
    const metadata: Record<string, unknown> = {};
    if (t.iteration !== undefined) metadata['iteration_index'] = t.iteration;
    if (t.iterationCount !== undefined) metadata['iteration_count'] = t.iterationCount;
    out['execution'] = {
      name: `projects/${where.projectNumber}/locations/${where.region}/metadataStores/default/executions/${t.executionId}`,
      displayName: t.taskName,
      instanceSchemaTitle: SCHEMA[t.kind],
      state: EXECUTION_STATE[t.state] ?? 'NEW',
      etag: String(Date.parse(updateTime)),
      createTime: t.createTime,
      updateTime,
      schemaTitle: SCHEMA[t.kind],
      schemaVersion: '0.0.1',
      metadata,
    };
  }
  if (t.parentTaskId !== undefined) out['parentTaskId'] = t.parentTaskId;
  out['pipelineTaskStatus'] = t.history.map((h) => ({ ...h }));
  if (t.error !== undefined) out['error'] = { ...t.error };
  return out;
}
