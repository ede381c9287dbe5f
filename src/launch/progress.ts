import type { PipelineJob } from '../vertex/client.js';
import { shortState } from '../vertex/client.js';
import { failedTaskNode, lastTaskNode, taskKey, taskTree } from '../vertex/tasks.js';
import type { TaskNode } from '../vertex/tasks.js';

/** What `follow` reports while it polls. */
export interface Progress {
  update(job: PipelineJob): void;
  note(message: string): void;
  /** Leave the display in a state where normal output can follow. */
  done(): void;
}

export const silentProgress: Progress = { update() {}, note() {}, done() {} };

/** The task that ran last: the most recently started one (ties: the one that ended last), with its path. */
export function lastTask(job: PipelineJob): TaskNode | undefined {
  return lastTaskNode(taskTree(job.jobDetail?.taskDetails));
}

/** The first task that failed (earliest end, inside the sub-DAGs that failed with it): the cause. */
export function failedTask(job: PipelineJob): TaskNode | undefined {
  return failedTaskNode(taskTree(job.jobDetail?.taskDetails));
}

/** One line per change: for logs and CI, where a redrawn display would be noise. */
export class LineProgress implements Progress {
  private jobState = '';
  private readonly taskStates = new Map<string, string>();

  constructor(
    private readonly out: NodeJS.WritableStream,
    private readonly jobId: string,
    private readonly clock: () => Date = () => new Date(),
  ) {}

  update(job: PipelineJob): void {
    const state = shortState(job.state);
    if (state !== this.jobState) {
      this.jobState = state;
      this.line(`job ${this.jobId} ${state}`);
    }
    for (const { task: t, path } of taskTree(job.jobDetail?.taskDetails).nodes) {
      const s = t.state ?? 'PENDING';
      const key = taskKey(t);
      if (this.taskStates.get(key) === s) continue;
      this.taskStates.set(key, s);
      const error = s === 'FAILED' && t.error?.message ? `: ${t.error.message}` : '';
      this.line(`task ${path} ${s}${error}`);
    }
  }

  note(message: string): void {
    this.line(message);
  }

  done(): void {}

  private line(text: string): void {
    this.out.write(`${this.clock().toISOString()} ${text}\n`);
  }
}

const SYMBOL: Record<string, string> = { SUCCEEDED: '✔', FAILED: '✘', RUNNING: '▶', CANCELLED: '■', SKIPPED: '–', NOT_TRIGGERED: '–' };

/** A block redrawn in place on a terminal: the job's state and one row per task. */
export class TtyProgress implements Progress {
  private drawn = 0;
  private last: PipelineJob | undefined;

  constructor(
    private readonly out: NodeJS.WritableStream,
    private readonly jobId: string,
  ) {}

  update(job: PipelineJob): void {
    this.last = job;
    this.redraw();
  }

  note(message: string): void {
    this.clear();
    this.out.write(`${message}\n`);
    this.redraw();
  }

  done(): void {
    this.drawn = 0;
  }

  private clear(): void {
    if (this.drawn > 0) this.out.write(`\x1b[${this.drawn}A\x1b[J`);
    this.drawn = 0;
  }

  private redraw(): void {
    if (this.last === undefined) return;
    this.clear();
    const lines = [`job ${this.jobId}: ${shortState(this.last.state)}`];
    // Nested tasks under their parent, indented.
    for (const { task: t, label, depth } of taskTree(this.last.jobDetail?.taskDetails).nodes) {
      const s = t.state ?? 'PENDING';
      lines.push(`  ${'  '.repeat(depth)}${SYMBOL[s] ?? '·'} ${label} ${s}`);
    }
    this.out.write(`${lines.join('\n')}\n`);
    this.drawn = lines.length;
  }
}

/** A live block on a terminal, one line per change otherwise. */
export function progressFor(out: NodeJS.WritableStream & { isTTY?: boolean }, jobId: string): Progress {
  return out.isTTY ? new TtyProgress(out, jobId) : new LineProgress(out, jobId);
}
