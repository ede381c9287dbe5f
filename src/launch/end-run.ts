/**
 * `kvx-launch end-run`: the exit task kvx adds to an adapted pipeline (src/vertex/adapt.ts). It runs after every
 * other task, whatever their outcome, with the pipeline's final status (a KFP TASK_FINAL_STATUS input), and
 * ends the job's MLflow run with it: the state, the failed task and its error, read from the job as `follow`
 * reads them (one code path: `endWithFinalState`). So a scheduled or console-started job ends its run with
 * nobody watching, and `run --wait` / `follow` find the run ended and keep it so.
 */
import type { LoadedConfig } from '../config/load.js';
import { KvxError, errorMessage } from '../errors.js';
import type { Logger } from '../log/logger.js';
import type { KeyValue, MlflowClient, MlflowRunStatus } from '../mlflow/client.js';
import type { PipelineJob, VertexClient } from '../vertex/client.js';
import { isObject } from '../vertex/spec.js';
import { endWithFinalState, runStatusFor } from './follow.js';
import { resolveExperiment } from './experiment.js';
import { refuseUnfilled, runsForJob, stepExperiment } from './start-run.js';
import { withSession } from './session.js';
import type { LaunchEnvironment } from './session.js';
import { TAG, tagValue } from './tags.js';

/** KFP's PipelineTaskFinalStatus as Vertex passes it (`{{$.inputs.parameters['status']}}`). */
export interface FinalStatus {
  state: string;
  pipelineJobResourceName?: string;
  pipelineTaskName?: string;
  error?: { code?: number; message?: string };
}

/** The final status JSON; its state as kvx names job states (SUCCEEDED, FAILED, CANCELLED). */
export function parseFinalStatus(text: string): FinalStatus {
  refuseUnfilled([['--status', text]]);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new KvxError('KVX_LAUNCH_INPUT', `--status is not JSON: ${text.slice(0, 200)}`, {
      hint: "pass the exit task's TASK_FINAL_STATUS input, {{$.inputs.parameters['status']}}",
    });
  }
  if (!isObject(value) || typeof value['state'] !== 'string') {
    throw new KvxError('KVX_LAUNCH_INPUT', '--status holds no "state": expected a KFP task final status ({"state": "SUCCEEDED", ...})');
  }
  const state = value['state'].replace(/^(PIPELINE_STATE_|TASK_STATE_)/, '').replace(/^CANCELED$/, 'CANCELLED').replace(/^CANCELLING$/, 'CANCELLED');
  const status: FinalStatus = { state };
  if (typeof value['pipelineJobResourceName'] === 'string') status.pipelineJobResourceName = value['pipelineJobResourceName'];
  if (typeof value['pipelineTaskName'] === 'string') status.pipelineTaskName = value['pipelineTaskName'];
  if (isObject(value['error'])) {
    const e = value['error'];
    status.error = { ...(typeof e['code'] === 'number' ? { code: e['code'] } : {}), ...(typeof e['message'] === 'string' ? { message: e['message'] } : {}) };
  }
  return status;
}

export interface EndRunInput {
  /** The launcher's run; empty when the job was started another way. */
  runId?: string;
  /** `{{$.pipeline_job_name}}`: finds the run start-run made when there is no launcher's run. */
  jobName?: string;
  /** `{{$.pipeline_job_resource_name}}`: the job read for the failed task and its error. */
  jobResourceName?: string;
  /** The TASK_FINAL_STATUS JSON. */
  status: string;
  experimentName: string;
}

export interface EndRunResult {
  runId: string;
  state: string;
  runStatus: MlflowRunStatus;
  /** The run already recorded a final state (nothing changed). */
  kept: boolean;
}

export async function endRun(deps: { mlflow: MlflowClient; vertex?: VertexClient; logger: Logger; env: NodeJS.ProcessEnv }, input: EndRunInput): Promise<EndRunResult> {
  const { mlflow, logger } = deps;
  refuseUnfilled([['--run-id', input.runId], ['--job-name', input.jobName], ['--job-resource-name', input.jobResourceName]]);
  const final = parseFinalStatus(input.status);
  if (runStatusFor(final.state) === undefined) {
    throw new KvxError('KVX_LAUNCH_INPUT', `--status state "${final.state}" is not a final state (SUCCEEDED, FAILED, CANCELLED)`);
  }
  const runId = await findRun(mlflow, input, deps.env, logger);
  const resourceName = input.jobResourceName || final.pipelineJobResourceName;
  let job: PipelineJob = { name: resourceName ?? input.jobName ?? '' };
  const extraTags: KeyValue[] = [];
  if (input.jobName) extraTags.push({ key: TAG.jobName, value: input.jobName });
  if (resourceName?.startsWith('projects/')) extraTags.push({ key: TAG.resourceName, value: resourceName });
  if (deps.vertex !== undefined && resourceName) {
    try {
      job = await deps.vertex.getPipelineJob(resourceName);
    } catch (err) {
      logger.warn('could not read the pipeline job for its failed task; recording the final status alone', { job: resourceName, error: errorMessage(err) });
    }
  }
  const seesFailure = (job.jobDetail?.taskDetails ?? []).some((t) => t.state === 'FAILED');
  if (final.state === 'FAILED' && !seesFailure) {
    // The job could not be read: the final status's own error is all there is.
    if (final.error?.message) extraTags.push({ key: TAG.failedTaskError, value: tagValue(final.error.message) });
    if (final.pipelineTaskName) extraTags.push({ key: TAG.failedTask, value: tagValue(final.pipelineTaskName) });
  }
  const end = await endWithFinalState(mlflow, runId, job, { state: final.state, endTime: Date.now(), extraTags, logger });
  return { runId, state: end.state, runStatus: end.status, kept: end.kept };
}

/** The launcher's run, else MLFLOW_RUN_ID, else the run start-run made for this job. */
async function findRun(mlflow: MlflowClient, input: EndRunInput, env: NodeJS.ProcessEnv, logger: Logger): Promise<string> {
  const given = input.runId || env['MLFLOW_RUN_ID'];
  if (given) return given;
  if (!input.jobName) throw new KvxError('KVX_LAUNCH_INPUT', 'no run to end: give --run-id, or --job-name to find the run start-run made for the job');
  if (!input.experimentName) throw new KvxError('KVX_LAUNCH_INPUT', 'no experiment to look for the run in: set run_config.experiment_name, or tracking.experiment.name in mlflow.yml');
  const { experimentId } = await resolveExperiment(mlflow, input.experimentName, logger);
  const [run] = await runsForJob(mlflow, experimentId, input.jobName);
  if (run === undefined) {
    throw new KvxError('KVX_LAUNCH_INPUT', `no MLflow run tagged ${TAG.jobName}=${input.jobName} in experiment ${input.experimentName}: the start step made none`, {
      hint: "see the pipeline's first task (start-run) for why",
    });
  }
  return run.info.run_id;
}

export interface EndPipelineRunInput extends Omit<EndRunInput, 'experimentName'> {
  confDir?: string;
}

/** `kvx-launch end-run` with its session: MLflow, and Vertex AI when project and region are configured. */
export async function endPipelineRun(loaded: LoadedConfig, input: EndPipelineRunInput, environment: LaunchEnvironment): Promise<EndRunResult> {
  return withSession(loaded, environment, async (session) => {
    const mlflow = await session.mlflow();
    const { experimentName } = stepExperiment(loaded.config.vertex.experimentName, input.confDir, environment);
    const { vertex: v } = loaded.config;
    const vertex = v.projectId && v.region ? session.vertex() : undefined;
    if (vertex === undefined) session.logger.warn('no vertex.projectId/region: the failed task is not read from the job');
    const { confDir: _confDir, ...rest } = input;
    return endRun({ mlflow, logger: session.logger, env: environment.env, ...(vertex === undefined ? {} : { vertex }) }, { ...rest, experimentName });
  });
}
