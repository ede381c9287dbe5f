import { KvxError, errorMessage } from '../errors.js';
import type { Logger } from '../log/logger.js';
import type { KeyValue, MlflowClient, MlflowRunStatus } from '../mlflow/client.js';
import { sleep } from '../util/backoff.js';
import { TERMINAL_STATES, VertexApiError, shortState } from '../vertex/client.js';
import type { PipelineJob, VertexClient } from '../vertex/client.js';
import { failedTask, lastTask } from './progress.js';
import type { Progress } from './progress.js';
import { TAG, tagValue } from './tags.js';

export interface FollowOptions {
  vertex: VertexClient;
  /** Job id or full resource name. */
  job: string;
  progress: Progress;
  logger: Logger;
  /** Aborting stops following (SIGINT). */
  signal?: AbortSignal;
  cancelOnInterrupt?: boolean;
  /** First poll interval; grows by half each quiet poll up to maxPollIntervalMs, and drops back on any change. */
  pollIntervalMs?: number;
  maxPollIntervalMs?: number;
  /** How long to wait for CANCELLED after asking for a cancel. */
  cancelWaitMs?: number;
}

export interface FollowResult {
  job: PipelineJob;
  /** SUCCEEDED, FAILED, CANCELLED, or the state at interruption. */
  state: string;
  terminal: boolean;
  interrupted: boolean;
  cancelRequested: boolean;
}

const MAX_CONSECUTIVE_POLL_FAILURES = 5;

/** Polls the job until it ends or the signal aborts. */
export async function followJob(options: FollowOptions): Promise<FollowResult> {
  const { vertex, progress, signal } = options;
  const min = options.pollIntervalMs ?? 5000;
  const max = Math.max(options.maxPollIntervalMs ?? 30_000, min);
  let interval = min;
  let failures = 0;
  let previous = '';
  let job: PipelineJob | undefined;

  for (;;) {
    if (signal?.aborted) break;
    try {
      job = await vertex.getPipelineJob(options.job);
      failures = 0;
    } catch (err) {
      if (signal?.aborted) break;
      if (err instanceof VertexApiError && err.httpStatus < 500 && err.httpStatus !== 429) throw err;
      failures++;
      if (failures >= MAX_CONSECUTIVE_POLL_FAILURES) throw err;
      options.logger.warn('polling the pipeline job failed; will retry', { job: options.job, error: errorMessage(err) });
    }
    if (job !== undefined) {
      progress.update(job);
      if (TERMINAL_STATES.has(job.state ?? '')) {
        return { job, state: shortState(job.state), terminal: true, interrupted: false, cancelRequested: false };
      }
      const fingerprint = JSON.stringify([job.state, (job.jobDetail?.taskDetails ?? []).map((t) => [t.taskId ?? t.taskName, t.state])]);
      interval = fingerprint === previous ? Math.min(interval * 1.5, max) : min;
      previous = fingerprint;
    }
    try {
      await sleep(interval, signal);
    } catch {
      break;
    }
  }

  // Interrupted: what follows leaves the job as asked, so the interrupt does not cut it short.
  const tidy = vertex.uninterrupted();
  if (job === undefined) job = await tidy.getPipelineJob(options.job);
  if (!options.cancelOnInterrupt) {
    progress.note(`stopped following; job ${job.name.split('/').pop()} keeps running (${shortState(job.state)})`);
    return { job, state: shortState(job.state), terminal: false, interrupted: true, cancelRequested: false };
  }
  progress.note(`interrupted: cancelling job ${job.name.split('/').pop()}`);
  await tidy.cancelPipelineJob(job.name);
  const deadline = Date.now() + (options.cancelWaitMs ?? 120_000);
  for (;;) {
    job = await tidy.getPipelineJob(job.name);
    progress.update(job);
    if (TERMINAL_STATES.has(job.state ?? '') || Date.now() >= deadline) break;
    await sleep(min);
  }
  return { job, state: shortState(job.state), terminal: TERMINAL_STATES.has(job.state ?? ''), interrupted: true, cancelRequested: true };
}

const RUN_STATUS: Record<string, MlflowRunStatus> = { SUCCEEDED: 'FINISHED', FAILED: 'FAILED', CANCELLED: 'KILLED' };

/** The tags that describe how the job ended: its state, the task that ran last, and the failed task with its error. */
export function finalStateTags(job: PipelineJob): KeyValue[] {
  const tags: KeyValue[] = [{ key: TAG.jobState, value: shortState(job.state) }];
  const last = lastTask(job);
  if (last !== undefined) tags.push({ key: TAG.lastTask, value: tagValue(last.path) });
  if (job.state === 'PIPELINE_STATE_FAILED') {
    const failed = failedTask(job);
    if (failed !== undefined) {
      tags.push({ key: TAG.failedTask, value: tagValue(failed.path) });
      tags.push({ key: TAG.failedTaskError, value: tagValue(failed.task.error?.message || '(Vertex AI gave no error message)') });
    }
  }
  if (job.error?.message) tags.push({ key: TAG.jobError, value: tagValue(job.error.message) });
  return tags;
}

/**
 * Ends the run with the job's real final state: SUCCEEDED → FINISHED, FAILED → FAILED, CANCELLED → KILLED.
 * Uninterrupted: once the end is known, an interrupt does not keep it from the run.
 */
export async function mirrorFinalState(client: MlflowClient, runId: string, job: PipelineJob): Promise<MlflowRunStatus> {
  const status = RUN_STATUS[shortState(job.state)];
  if (status === undefined) throw new KvxError('KVX_VERTEX_API', `job ${job.name} is not finished (${shortState(job.state)})`);
  const mlflow = client.uninterrupted();
  await mlflow.setTags(runId, finalStateTags(job));
  const end = job.endTime === undefined ? Number.NaN : Date.parse(job.endTime);
  await mlflow.updateRun(runId, { status, endTime: Number.isNaN(end) ? Date.now() : end });
  return status;
}

/**
 * Ends a run the launcher cannot see through (submission failed, interrupted, crashed): the reason goes in a tag
 * and in the run's note, so nobody has to guess why the run stopped. Uninterrupted, since it is what an interrupt
 * leads to. Never throws; returns what went wrong.
 */
export async function endRunByLauncher(
  client: MlflowClient,
  runId: string,
  status: MlflowRunStatus,
  reason: string,
  extraTags: KeyValue[],
  logger: Logger,
): Promise<string | undefined> {
  const mlflow = client.uninterrupted();
  const problems: string[] = [];
  try {
    await mlflow.setTags(runId, [
      ...extraTags,
      { key: TAG.launchError, value: tagValue(reason) },
      { key: TAG.note, value: tagValue(`**kvx-launch ended this run ${status}.**\n\n${reason}`) },
    ]);
  } catch (err) {
    problems.push(`tags: ${errorMessage(err)}`);
  }
  try {
    await mlflow.updateRun(runId, { status, endTime: Date.now() });
  } catch (err) {
    problems.push(`status: ${errorMessage(err)}`);
  }
  if (problems.length === 0) return undefined;
  const text = problems.join('; ');
  logger.error('could not end the MLflow run', { runId, error: text });
  return text;
}
