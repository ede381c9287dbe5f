/**
 * The task tree of a PipelineJob (`jobDetail.taskDetails`), and names for its tasks that say which one is meant.
 *
 * `taskName` comes from the spec and repeats: the same component inside a sub-pipeline and at the root, every
 * iteration of a loop, both branches of a condition. Tasks point at their DAG task by `parentTaskId` (int64 ids
 * as strings); the root task is the pipeline itself, named after the job id. A task is named by its path below
 * the root: `train` at the top level, `train-loop/for-loop-2[iteration 3]/train` inside a loop of a
 * sub-pipeline.
 */
import type { TaskDetail } from './client.js';

export interface TaskNode {
  task: TaskDetail;
  parent?: TaskNode;
  children: TaskNode[];
  /** 0 for top-level tasks (children of the root task). */
  depth: number;
  /** For a loop iteration: its index (from the execution's metadata, else its position among its siblings). */
  iteration?: number;
  /** Unambiguous name: the path below the root. */
  path: string;
  /** Short name for a row under its parent: `train`, or `for-loop-2[iteration 3]`. */
  label: string;
}

export interface TaskTree {
  /** The pipeline's own task (no parent, the others under it), when the job reports one. */
  root?: TaskDetail;
  /** Every task but the root, parents before children, siblings in the order Vertex listed them. */
  nodes: TaskNode[];
}

const hasParent = (t: TaskDetail): boolean => t.parentTaskId !== undefined && t.parentTaskId !== '';

/** A stable key for a task across polls: its id, else its unique name, else its name. */
export function taskKey(t: TaskDetail): string {
  return t.taskId || t.taskUniqueName || t.taskName;
}

export function taskTree(taskDetails: readonly TaskDetail[] | undefined): TaskTree {
  const tasks = taskDetails ?? [];
  const byId = new Map<string, TaskDetail>();
  for (const t of tasks) if (t.taskId) byId.set(t.taskId, t);
  const childrenOf = new Map<string, TaskDetail[]>();
  const tops: TaskDetail[] = [];
  for (const t of tasks) {
    const parent = hasParent(t) ? byId.get(t.parentTaskId!) : undefined;
    if (parent === undefined) tops.push(t);
    else {
      const list = childrenOf.get(parent.taskId!) ?? [];
      list.push(t);
      childrenOf.set(parent.taskId!, list);
    }
  }
  // The root is the one parentless task the others hang from; a job without parent links is a flat list.
  const rootCandidates = tops.filter((t) => t.taskId !== undefined && childrenOf.has(t.taskId));
  const root = rootCandidates.length === 1 ? rootCandidates[0] : undefined;
  const nodes: TaskNode[] = [];
  const seen = new Set<TaskDetail>();
  const visit = (t: TaskDetail, parent: TaskNode | undefined, depth: number, iteration: number | undefined): void => {
    if (seen.has(t)) return; // a malformed answer with a cycle is shown once, not forever
    seen.add(t);
    const node: TaskNode = { task: t, children: [], depth, path: '', label: '' };
    if (parent !== undefined) node.parent = parent;
    if (iteration !== undefined) node.iteration = iteration;
    node.label = iteration === undefined ? t.taskName : `${parent?.task.taskName ?? t.taskName}[iteration ${iteration}]`;
    // An iteration stands in for its loop in the path: for-loop-2[iteration 3]/train, not for-loop-2/for-loop-2[...].
    const prefix = iteration !== undefined && parent !== undefined ? parent.parent?.path : parent?.path;
    node.path = prefix ? `${prefix}/${node.label}` : node.label;
    parent?.children.push(node);
    nodes.push(node);
    visitChildren(t, node, depth + 1);
  };
  const visitChildren = (t: TaskDetail, node: TaskNode | undefined, depth: number): void => {
    const kids = t.taskId === undefined ? [] : (childrenOf.get(t.taskId) ?? []);
    let ordinal = 0;
    for (const kid of kids) {
      const iteration = isIteration(kid, t) ? (iterationIndex(kid) ?? ordinal++) : undefined;
      visit(kid, node, depth, iteration);
    }
  };
  if (root !== undefined) seen.add(root);
  for (const t of tops) {
    if (t === root) visitChildren(root, undefined, 0);
    else visit(t, undefined, 0, undefined);
  }
  return root === undefined ? { nodes } : { root, nodes };
}

/** A loop's iterations are its children carrying its own name, or an iteration index in their execution. */
function isIteration(t: TaskDetail, parent: TaskDetail): boolean {
  return t.taskName === parent.taskName || iterationIndex(t) !== undefined;
}

function iterationIndex(t: TaskDetail): number | undefined {
  const v = t.execution?.metadata?.['iteration_index'];
  const n = typeof v === 'string' ? Number(v) : v;
  return typeof n === 'number' && Number.isInteger(n) && n >= 0 ? n : undefined;
}

/** The name a person can find the task by: its path below the root. */
export function taskDisplayName(tree: TaskTree, t: TaskDetail): string {
  return tree.nodes.find((n) => n.task === t)?.path ?? t.taskName;
}

const time = (s?: string): number => (s === undefined ? Number.NaN : Date.parse(s));

/** The task that ran last: the most recently started one (ties: the one that ended last). */
export function lastTaskNode(tree: TaskTree): TaskNode | undefined {
  let best: TaskNode | undefined;
  for (const n of tree.nodes) {
    if (Number.isNaN(time(n.task.startTime))) continue;
    if (best === undefined) {
      best = n;
      continue;
    }
    const ds = time(n.task.startTime) - time(best.task.startTime);
    const de = (time(n.task.endTime) || Infinity) - (time(best.task.endTime) || Infinity);
    if (ds > 0 || (ds === 0 && de > 0)) best = n;
  }
  return best;
}

/**
 * The task whose failure failed the job: a FAILED task none of whose children failed (a sub-DAG fails because
 * of a task inside it), the earliest to end.
 */
export function failedTaskNode(tree: TaskTree): TaskNode | undefined {
  const causes = tree.nodes.filter((n) => n.task.state === 'FAILED' && !n.children.some((c) => c.task.state === 'FAILED'));
  causes.sort((a, b) => (time(a.task.endTime) || Infinity) - (time(b.task.endTime) || Infinity));
  return causes[0];
}
