import { readFileSync } from 'node:fs';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { expect } from 'chai';
import { finalStateTags } from '../../src/launch/follow.js';
import { LineProgress, TtyProgress } from '../../src/launch/progress.js';
import type { PipelineJob, TaskDetail } from '../../src/vertex/client.js';
import { failedTaskNode, lastTaskNode, taskDisplayName, taskTree } from '../../src/vertex/tasks.js';
import { sharedReferenceDir } from '../helpers/corpus.js';

const REAL = JSON.parse(readFileSync(path.join(sharedReferenceDir(), 'vertex', 'pipeline-job-get-kedro-vertexai.json'), 'utf8')) as PipelineJob;

let seq = 0;
const at = (s: number) => new Date(Date.UTC(2024, 0, 1, 0, 0, s)).toISOString();
function task(name: string, parent: TaskDetail | undefined, extra: Partial<TaskDetail> = {}): TaskDetail {
  seq++;
  const t: TaskDetail = { taskId: String(-1_000_000_000_000_000_000n + BigInt(seq)), taskName: name, state: 'SUCCEEDED', startTime: at(seq), endTime: at(seq + 100), ...extra };
  if (parent !== undefined) t.parentTaskId = parent.taskId!;
  return t;
}

/** The nested fixture's shape: train at the root and in every iteration of a loop inside a sub-pipeline. */
function nestedJob(): { tasks: TaskDetail[]; failing: TaskDetail } {
  const root = task('nested-training-20240101000000', undefined, { state: 'FAILED' });
  const topTrain = task('train', root);
  const sub = task('train-loop', root, { state: 'FAILED' });
  const loop = task('for-loop-2', sub, { state: 'FAILED' });
  const tasks = [root, topTrain, sub, loop];
  let failing: TaskDetail | undefined;
  for (let i = 0; i < 4; i++) {
    const it = task('for-loop-2', loop, { state: i === 3 ? 'FAILED' : 'SUCCEEDED' });
    const train = task('train', it, { state: i === 3 ? 'FAILED' : 'SUCCEEDED', ...(i === 3 ? { error: { code: 9, message: 'OOM' } } : {}) });
    if (i === 3) failing = train;
    tasks.push(it, train);
  }
  return { tasks, failing: failing! };
}

describe('vertex: task tree and task names', () => {
  it('reads the real job: its root is named after the job id, the six tasks sit under it by their names', () => {
    const tree = taskTree(REAL.jobDetail!.taskDetails);
    expect(tree.root?.taskName).to.equal('spaceflights-20230417084417');
    expect(tree.nodes.map((n) => [n.path, n.depth])).to.have.deep.members(
      ['evaluate-model-node', 'train-model-node', 'preprocess-shuttles-node', 'create-model-input-table-node', 'split-data-node', 'preprocess-companies-node'].map((n) => [n, 0]),
    );
    expect(lastTaskNode(tree)?.path).to.equal('evaluate-model-node');
  });

  it('names a nested task by its path, with the loop iteration in it', () => {
    const { tasks, failing } = nestedJob();
    const tree = taskTree(tasks);
    expect(tree.nodes.map((n) => n.path)).to.deep.equal([
      'train',
      'train-loop',
      'train-loop/for-loop-2',
      'train-loop/for-loop-2[iteration 0]',
      'train-loop/for-loop-2[iteration 0]/train',
      'train-loop/for-loop-2[iteration 1]',
      'train-loop/for-loop-2[iteration 1]/train',
      'train-loop/for-loop-2[iteration 2]',
      'train-loop/for-loop-2[iteration 2]/train',
      'train-loop/for-loop-2[iteration 3]',
      'train-loop/for-loop-2[iteration 3]/train',
    ]);
    expect(taskDisplayName(tree, failing)).to.equal('train-loop/for-loop-2[iteration 3]/train');
    // The cause, not the DAGs that failed because of it.
    expect(failedTaskNode(tree)?.task).to.equal(failing);
  });

  it('takes the iteration index from the execution when Vertex records it there', () => {
    const root = task('job', undefined);
    const loop = task('for-loop-1', root);
    const tasks = [root, loop, task('for-loop-1-iteration', loop, { execution: { metadata: { iteration_index: 7 } } })];
    expect(taskTree(tasks).nodes[1]!.path).to.equal('for-loop-1[iteration 7]');
  });

  it('a flat list without parent links (older answers) is shown as it is', () => {
    const tasks = [task('a', undefined), task('b', undefined)];
    const tree = taskTree(tasks);
    expect(tree.root).to.equal(undefined);
    expect(tree.nodes.map((n) => n.path)).to.deep.equal(['a', 'b']);
  });

  it('the tags of a failed nested job name the failed task by its path', () => {
    const { tasks } = nestedJob();
    const job: PipelineJob = { name: 'projects/1/locations/r/pipelineJobs/j', state: 'PIPELINE_STATE_FAILED', jobDetail: { taskDetails: tasks } };
    const tags = Object.fromEntries(finalStateTags(job).map((t) => [t.key, t.value]));
    expect(tags).to.include({ vertexai_failed_task: 'train-loop/for-loop-2[iteration 3]/train', vertexai_failed_task_error: 'OOM', vertexai_last_task: 'train-loop/for-loop-2[iteration 3]/train' });
  });

  it('progress: one line per task state by path; the terminal view indents tasks under their parent', () => {
    const { tasks } = nestedJob();
    const job: PipelineJob = { name: 'j', state: 'PIPELINE_STATE_RUNNING', jobDetail: { taskDetails: tasks } };
    const out = new PassThrough();
    let text = '';
    out.on('data', (c: Buffer) => (text += c.toString()));
    new LineProgress(out, 'j', () => new Date(0)).update(job);
    expect(text).to.include('task train SUCCEEDED\n');
    expect(text).to.include('task train-loop/for-loop-2[iteration 3]/train FAILED: OOM\n');
    // Each of the four `train` tasks in the loop gets its own line: same name, different tasks.
    expect(text.match(/task train-loop\/for-loop-2\[iteration \d\]\/train /g)).to.have.length(4);

    text = '';
    new TtyProgress(out, 'j').update(job);
    expect(text).to.include('\n  ✔ train SUCCEEDED\n  ✘ train-loop FAILED\n    ✘ for-loop-2 FAILED\n      ✔ for-loop-2[iteration 0] SUCCEEDED\n        ✔ train SUCCEEDED\n');
  });
});
