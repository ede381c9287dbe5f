import type { PipelineJob, TaskDetail } from '../vertex/client.js';
import { shortState } from '../vertex/client.js';

/** What `follow` reports while it polls. */
export interface Progress {
  update(job: PipelineJob): void;
  note(message: string): void;
  /** Leave the display in a state where normal output can follow. */
  done(): void;
}

export const silentProgress: Progress = { update() {}, note() {}, done() {} };

/** Tasks people care about: everything but the pipeline's root DAG entry. */
export function pipelineTasks(job: PipelineJob): TaskDetail[] {
  const tasks = job.jobDetail?.taskDetails ?? [];
  const hasChildren = tasks.some((t) => t.parentTaskId !== undefined && t.parentTaskId !== '');
  return hasChildren ? tasks.filter((t) => t.parentTaskId !== undefined && t.parentTaskId !== '') : tasks;
}

const time = (s?: string): number => (s === undefined ? Number.NaN : Date.parse(s));

/** The task that ran last: the most recently started one (ties: the one that ended last). */
export function lastTask(job: PipelineJob): TaskDetail | undefined {
  let best: TaskDetail | undefined;
  for (const t of pipelineTasks(job)) {
    if (Number.isNaN(time(t.startTime))) continue;
    if (best === undefined) {
      best = t;
      continue;
    }
    const ds = time(t.startTime) - time(best.startTime);
    const de = (time(t.endTime) || Infinity) - (time(best.endTime) || Infinity);
    if (ds > 0 || (ds === 0 && de > 0)) best = t;
  }
  return best;
}

/** The first task that failed (earliest end): the cause, not the tasks that failed because of it. */
export function failedTask(job: PipelineJob): TaskDetail | undefined {
  const failed = pipelineTasks(job).filter((t) => t.state === 'FAILED');
  failed.sort((a, b) => (time(a.endTime) || Infinity) - (time(b.endTime) || Infinity));
  return failed[0];
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
    for (const t of pipelineTasks(job)) {
      const s = t.state ?? 'PENDING';
      if (this.taskStates.get(t.taskName) === s) continue;
      this.taskStates.set(t.taskName, s);
      const error = s === 'FAILED' && t.error?.message ? `: ${t.error.message}` : '';
      this.line(`task ${t.taskName} ${s}${error}`);
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
    for (const t of pipelineTasks(this.last)) {
      const s = t.state ?? 'PENDING';
      lines.push(`  ${SYMBOL[s] ?? '·'} ${t.taskName} ${s}`);
    }
    this.out.write(`${lines.join('\n')}\n`);
    this.drawn = lines.length;
  }
}

/** A live block on a terminal, one line per change otherwise. */
export function progressFor(out: NodeJS.WritableStream & { isTTY?: boolean }, jobId: string): Progress {
  return out.isTTY ? new TtyProgress(out, jobId) : new LineProgress(out, jobId);
}
