import type { LoadedConfig } from '../config/load.js';
import { ConfigError, KvxError, errorMessage } from '../errors.js';
import type { Logger } from '../log/logger.js';
import type { KeyValue, MlflowClient, MlflowRun, MlflowRunStatus } from '../mlflow/client.js';
import { sleep } from '../util/backoff.js';
import { TERMINAL_STATES, VertexApiError, shortState } from '../vertex/client.js';
import type { PipelineJob, VertexClient } from '../vertex/client.js';
import { finishExperimentLink } from './experiment-link.js';
import type { ExperimentResult } from './experiment-link.js';
import { failedTask, lastTask } from './progress.js';
import type { Progress } from './progress.js';
import type { TaskNode } from '../vertex/tasks.js';
import { EXIT_TASK } from '../vertex/adapt.js';
import { withSession } from './session.js';
import type { LaunchEnvironment } from './session.js';
import { RUN_ID_LABEL, TAG, tagValue } from './tags.js';

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

/**
 * What `run --wait` and `follow` share: follows the job while the experiment link (when one is due) is made, and
 * tells the link when following ends, so it stops waiting for a run context that will not come. Returns once both
 * are done; when following fails, the link is settled first and the failure thrown. `link` decides whether its own
 * failure is one (`run`) or only a warning (`follow`).
 */
export async function followWhileLinking(
  options: FollowOptions,
  link?: (followEnded: AbortSignal) => Promise<ExperimentResult | undefined>,
): Promise<{ followed: FollowResult; experiment: ExperimentResult | undefined }> {
  const followEnded = new AbortController();
  const linking = link?.(followEnded.signal);
  linking?.catch(() => {}); // awaited below; this only keeps an early rejection from counting as unhandled
  let followed: FollowResult;
  try {
    followed = await followJob(options);
  } catch (err) {
    followEnded.abort();
    await linking?.catch(() => undefined);
    throw err;
  }
  followEnded.abort();
  const experiment = await linking;
  options.progress.done();
  return { followed, experiment };
}

const RUN_STATUS: Record<string, MlflowRunStatus> = { SUCCEEDED: 'FINISHED', FAILED: 'FAILED', CANCELLED: 'KILLED' };

/** The run status a final job state ends the run with: SUCCEEDED → FINISHED, FAILED → FAILED, CANCELLED → KILLED. */
export function runStatusFor(state: string): MlflowRunStatus | undefined {
  return RUN_STATUS[state];
}

/**
 * A task's name as kvx records it. In a pipeline kvx adapted (src/vertex/adapt.ts), the exit handler's DAG that
 * wraps the whole pipeline is left out of the path, so a task keeps the name it had before adapting.
 */
function recordedPath(job: PipelineJob, node: TaskNode): string {
  const adapted = (job.jobDetail?.taskDetails ?? []).some((t) => t.taskName === EXIT_TASK);
  return adapted ? node.path.replace(/^exit-handler-\d+\//, '') : node.path;
}

/**
 * Vertex reports a step's exit status, not what it printed: a step of an adapted pipeline that exits 127 (what the
 * guard in front of kvx's executables exits with when the image lacks them, and the shell's "command not found")
 * gets the likely cause said in the error kvx records.
 */
function explained(job: PipelineJob, message: string): string {
  const adapted = (job.jobDetail?.taskDetails ?? []).some((t) => t.taskName === EXIT_TASK);
  if (!adapted || !/\b(?:status|code) (?:of )?127\b/.test(message)) return message;
  return `${message} (exit status 127: a command was not found; the step's image may lack kvx-proxy or kvx-launch, which the adapted pipeline runs: see Migrating from kedro-vertexai in kvx's docs/launcher.md)`;
}

/**
 * The tags that describe how the job ended: its state, the task that ran last, and the failed task with its error.
 * `state` is the job's final state when the job does not show it yet (the exit task runs before the job ends);
 * kvx's exit task itself is never the last or the failed task.
 */
export function finalStateTags(job: PipelineJob, state: string = shortState(job.state)): KeyValue[] {
  const tags: KeyValue[] = [{ key: TAG.jobState, value: state }];
  const tasks = (job.jobDetail?.taskDetails ?? []).filter((t) => t.taskName !== EXIT_TASK);
  const view: PipelineJob = { ...job, jobDetail: { ...job.jobDetail, taskDetails: tasks } };
  const last = lastTask(view);
  if (last !== undefined) tags.push({ key: TAG.lastTask, value: tagValue(recordedPath(job, last)) });
  if (state === 'FAILED') {
    const failed = failedTask(view);
    if (failed !== undefined) {
      tags.push({ key: TAG.failedTask, value: tagValue(recordedPath(job, failed)) });
      tags.push({ key: TAG.failedTaskError, value: tagValue(explained(job, failed.task.error?.message || '(Vertex AI gave no error message)')) });
    }
  }
  if (job.error?.message) tags.push({ key: TAG.jobError, value: tagValue(job.error.message) });
  return tags;
}

export interface FinalEnd {
  status: MlflowRunStatus;
  /** The run already recorded a final state (the exit task, or an earlier follow), which was kept. */
  kept: boolean;
  /** The final state the run records. */
  state: string;
}

/**
 * Ends the run with the pipeline's final state, once: whoever records a final state first (kvx's exit task inside
 * the pipeline, `run --wait`, `follow`) decides, and a later writer keeps it rather than end the run a second
 * time. An end that is not a final state (an interrupted `run --wait`, a launcher that lost track) is replaced.
 * Uninterrupted: once the end is known, an interrupt does not keep it from the run.
 */
export async function endWithFinalState(
  client: MlflowClient,
  runId: string,
  job: PipelineJob,
  options: { state?: string; endTime?: number; extraTags?: KeyValue[]; logger?: Logger } = {},
): Promise<FinalEnd> {
  const state = options.state ?? shortState(job.state);
  const status = RUN_STATUS[state];
  if (status === undefined) throw new KvxError('KVX_VERTEX_API', `job ${job.name} is not finished (${state})`);
  const mlflow = client.uninterrupted();
  const run = await mlflow.getRun(runId);
  const recorded = run.data.tags?.find((t) => t.key === TAG.jobState)?.value;
  if (recorded !== undefined && RUN_STATUS[recorded] !== undefined && run.info.status === RUN_STATUS[recorded]) {
    if (recorded !== state) options.logger?.warn('the run already records another final state; kept', { runId, recorded, seen: state });
    return { status: run.info.status, kept: true, state: recorded };
  }
  await mlflow.setTags(runId, [...finalStateTags(job, state), ...(options.extraTags ?? [])]);
  const end = options.endTime ?? (job.endTime === undefined ? Number.NaN : Date.parse(job.endTime));
  await mlflow.updateRun(runId, { status, endTime: Number.isNaN(end) ? Date.now() : end });
  return { status, kept: false, state };
}

/** Ends the run with the job's real final state (see `endWithFinalState`). */
export async function mirrorFinalState(client: MlflowClient, runId: string, job: PipelineJob): Promise<MlflowRunStatus> {
  return (await endWithFinalState(client, runId, job)).status;
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

export interface FollowInput {
  /** Job id or projects/.../pipelineJobs/<id>. */
  job: string;
  /** MLflow run to mirror into; default the job's mlflow_run_id label. */
  runId?: string;
  cancelOnInterrupt: boolean;
  pollIntervalMs: number;
  /** How long to wait for the job to start when its run still has to join its Vertex AI experiment. */
  experimentLinkTimeoutMs: number;
}

/** What `kvx-launch follow` prints (as is, with --json). */
export interface FollowReport {
  jobId: string;
  jobName: string;
  state: string;
  runId: string | null;
  runStatus: string | null;
  interrupted: boolean;
  vertexExperiment?: ExperimentResult;
}

/**
 * `kvx-launch follow`: follows a job submitted earlier and mirrors its end into its MLflow run (from the job's
 * label, or `input.runId`); a run that did not join its Vertex AI experiment at launch joins it now. Without a
 * run, the job is only followed. Interrupted, the run stays RUNNING on purpose: the job still runs, and following
 * again later finishes the mirror. `terminal` tells whether the job had ended.
 */
export async function followPipeline(loaded: LoadedConfig, input: FollowInput, environment: LaunchEnvironment): Promise<{ report: FollowReport; terminal: boolean }> {
  return withSession(loaded, environment, async (session) => {
    const { logger } = session;
    const vertex = session.vertex();
    const first = await vertex.getPipelineJob(input.job);
    const runId = input.runId ?? first.labels?.[RUN_ID_LABEL];
    if (runId !== undefined && !session.hasMlflow) {
      throw new ConfigError([{ path: 'upstream.url', message: `job carries MLflow run ${runId}; set the tracking server to mirror its state (--tracking-uri, MLFLOW_TRACKING_URI)` }]);
    }
    let mlflow: MlflowClient | undefined;
    let run: MlflowRun | undefined;
    if (runId !== undefined) {
      mlflow = await session.mlflow();
      run = await mlflow.getRun(runId);
    }
    const jobId = first.name.split('/').pop()!;
    const progress = environment.progress(jobId);
    if (runId === undefined) progress.note(`job ${jobId} has no ${RUN_ID_LABEL} label and no --run-id was given: following without MLflow`);
    const link =
      mlflow === undefined || run === undefined
        ? undefined
        : (followEnded: AbortSignal) =>
            finishExperimentLink({ mlflow: mlflow, vertex, logger }, run, first.name, loaded.config.vertex, {
              timeoutMs: input.experimentLinkTimeoutMs,
              signal: environment.signal,
              wake: followEnded,
              ...(environment.experimentLinkIntervalMs === undefined ? {} : { intervalMs: environment.experimentLinkIntervalMs }),
            }).catch((err: unknown) => {
              logger.warn('could not record the Vertex AI experiment link on the run', { runId, error: errorMessage(err) });
              return undefined;
            });
    let outcome: Awaited<ReturnType<typeof followWhileLinking>>;
    try {
      outcome = await followWhileLinking(
        { vertex, job: first.name, progress, logger, signal: environment.signal, cancelOnInterrupt: input.cancelOnInterrupt, pollIntervalMs: input.pollIntervalMs },
        link,
      );
    } catch (err) {
      if (mlflow !== undefined) {
        const reason = `kvx-launch follow lost track of job ${jobId}: ${errorMessage(err)}. The job was not cancelled; run \`kvx-launch follow ${jobId}\` again to mirror its final state.`;
        await endRunByLauncher(mlflow, runId!, 'FAILED', reason, [], logger);
      }
      throw err;
    }
    const { followed, experiment } = outcome;
    let runStatus: string | undefined;
    if (followed.terminal && mlflow !== undefined) {
      runStatus = await mirrorFinalState(mlflow, runId!, followed.job);
    } else if (followed.interrupted && mlflow !== undefined) {
      // On purpose: the job still runs, so its run stays RUNNING; following again later finishes the mirror.
      await mlflow.uninterrupted().setTags(runId!, [{ key: TAG.jobState, value: followed.state }]);
    }
    const report: FollowReport = {
      jobId,
      jobName: followed.job.name,
      state: followed.state,
      runId: runId ?? null,
      runStatus: runStatus ?? null,
      interrupted: followed.interrupted,
      ...(experiment === undefined ? {} : { vertexExperiment: experiment }),
    };
    return { report, terminal: followed.terminal };
  });
}
