import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { readKedroMlflow } from '../config/kedro-mlflow.js';
import type { LoadedConfig } from '../config/load.js';
import { KvxError } from '../errors.js';
import type { Logger } from '../log/logger.js';
import { MlflowApiError } from '../mlflow/client.js';
import type { KeyValue, MlflowClient, MlflowRun } from '../mlflow/client.js';
import { resolveExperiment } from './experiment.js';
import { withSession } from './session.js';
import type { LaunchEnvironment } from './session.js';
import { TAG } from './tags.js';

export interface StartRunInput {
  /** The launcher's run (--run-id), else MLFLOW_RUN_ID: the run to resume. */
  resumeRunId?: string;
  experimentName: string;
  /** Name of a run it creates (mlflow.yml tracking.run.name); default the job name. */
  runName?: string;
  /** `{{$.pipeline_job_name}}`: the job id; the key that makes retries find the same run. */
  jobName?: string;
  /** `{{$.pipeline_job_resource_name}}` (or any id of the job run), stored as vertexai_run_id. */
  jobId?: string;
  output?: string;
}

export interface StartRunResult {
  runId: string;
  experimentId: string;
  /** created, resumed (MLFLOW_RUN_ID) or reused (found by job name). */
  how: 'created' | 'resumed' | 'reused';
}

const PLACEHOLDER = /\{\{\s*\$\./;

/** Refuses a `{{$.…}}` placeholder Vertex did not fill (the command was run outside a pipeline step). */
export function refuseUnfilled(values: readonly (readonly [string, string | undefined])[]): void {
  for (const [flag, value] of values) {
    if (value !== undefined && PLACEHOLDER.test(value)) {
      throw new KvxError('KVX_LAUNCH_INPUT', `${flag} "${value}" is an unfilled placeholder`, {
        hint: 'Vertex fills {{$.pipeline_job_name}} only inside a pipeline step; outside one, pass the real job id',
      });
    }
  }
}

/**
 * The in-pipeline counterpart of kedro-vertexai's mlflow-start-run step, made idempotent: a retried step finds
 * the run it created before instead of making another.
 */
export async function startRun(mlflow: MlflowClient, input: StartRunInput, logger: Logger): Promise<StartRunResult> {
  refuseUnfilled([['--job-name', input.jobName], ['--job-id', input.jobId], ['--run-id', input.resumeRunId]]);
  if (input.jobName !== undefined && input.jobName.trim() === '') throw new KvxError('KVX_LAUNCH_INPUT', '--job-name is empty');

  let result: StartRunResult;
  if (input.resumeRunId) {
    let run: MlflowRun;
    try {
      run = await mlflow.getRun(input.resumeRunId);
    } catch (err) {
      if (err instanceof MlflowApiError && err.errorCode === 'RESOURCE_DOES_NOT_EXIST') {
        throw new KvxError('KVX_LAUNCH_INPUT', `--run-id / MLFLOW_RUN_ID names run ${input.resumeRunId}, which the MLflow server does not have`, {
          hint: 'leave both empty to create a run, or check that the tracking URI is the server the run was created on',
        });
      }
      throw err;
    }
    result = { runId: run.info.run_id, experimentId: run.info.experiment_id, how: 'resumed' };
  } else {
    if (!input.experimentName) {
      throw new KvxError('KVX_LAUNCH_INPUT', 'no run to resume and no experiment to create one in', {
        hint: 'set MLFLOW_RUN_ID, or the experiment: run_config.experiment_name, vertex.experimentName, --experiment-name',
      });
    }
    const { experimentId } = await resolveExperiment(mlflow, input.experimentName, logger);
    const existing = input.jobName ? await runsForJob(mlflow, experimentId, input.jobName) : [];
    if (existing.length > 0) {
      result = { runId: existing[0]!.info.run_id, experimentId, how: 'reused' };
    } else {
      const tags: KeyValue[] = [{ key: TAG.sourceName, value: 'kvx-launch start-run' }, { key: TAG.sourceType, value: 'JOB' }];
      if (input.jobName) tags.push({ key: TAG.jobName, value: input.jobName });
      const runName = input.runName ?? input.jobName;
      const created = await mlflow.createRun({ experimentId, tags, ...(runName ? { runName } : {}) });
      result = { runId: created.info.run_id, experimentId, how: 'created' };
      if (input.jobName) {
        // Two retries of the same step may both have found nothing and created a run: the oldest wins, the
        // others are deleted, so the job keeps exactly one run.
        const all = await runsForJob(mlflow, experimentId, input.jobName);
        const winner = all[0];
        if (winner !== undefined && winner.info.run_id !== created.info.run_id) {
          logger.info('another step created the run for this job first; using it', { runId: winner.info.run_id });
          await mlflow.deleteRun(created.info.run_id);
          result = { runId: winner.info.run_id, experimentId, how: 'reused' };
        }
      }
    }
  }

  const tags: KeyValue[] = [];
  if (input.jobName) tags.push({ key: TAG.jobName, value: input.jobName });
  if (input.jobId) {
    tags.push({ key: TAG.runId, value: input.jobId });
    if (input.jobId.startsWith('projects/')) tags.push({ key: TAG.resourceName, value: input.jobId });
  }
  if (tags.length > 0) await mlflow.setTags(result.runId, tags);
  if (input.output) {
    await mkdir(path.dirname(path.resolve(input.output)), { recursive: true });
    await writeFile(input.output, result.runId);
  }
  return result;
}

export interface StartPipelineRunInput extends Pick<StartRunInput, 'jobName' | 'jobId' | 'output'> {
  /** --run-id: the launcher's run; empty when the job was started another way. */
  runId?: string;
  /** Folder of the vertexai.yml given (conf/<env>), where kedro-mlflow's mlflow.yml is looked for. */
  confDir?: string;
}

/**
 * `kvx-launch start-run`: resumes --run-id (the launcher's run) or MLFLOW_RUN_ID; else finds or creates the job's
 * run in the experiment the steps use (see `stepExperiment`).
 */
export async function startPipelineRun(loaded: LoadedConfig, input: StartPipelineRunInput, environment: LaunchEnvironment): Promise<StartRunResult> {
  return withSession(loaded, environment, async (session) => {
    const mlflow = await session.mlflow();
    const resumeRunId = input.runId || environment.env['MLFLOW_RUN_ID'];
    const { experimentName, runName } = stepExperiment(loaded.config.vertex.experimentName, input.confDir, environment);
    const { jobName, jobId, output } = input;
    return startRun(
      mlflow,
      { experimentName, ...(runName === undefined ? {} : { runName }), ...(jobName === undefined ? {} : { jobName }), ...(jobId === undefined ? {} : { jobId }), ...(output === undefined ? {} : { output }), ...(resumeRunId ? { resumeRunId } : {}) },
      session.logger,
    );
  });
}

/**
 * The MLflow experiment and run name of a kedro pipeline's run: kedro-mlflow's (conf/<env>/mlflow.yml beside the
 * vertexai.yml), where the steps look for the run, else vertex.experimentName. Says so when the two differ.
 */
export function stepExperiment(configured: string, confDir: string | undefined, environment: Pick<LaunchEnvironment, 'warn'>): { experimentName: string; runName?: string } {
  if (confDir === undefined) return { experimentName: configured };
  const kedro = readKedroMlflow(confDir);
  for (const w of kedro.warnings) environment.warn(w);
  const file = kedro.files[kedro.files.length - 1];
  if (kedro.experimentName !== undefined && configured !== '' && kedro.experimentName !== configured) {
    environment.warn(
      `the MLflow run is made in experiment "${kedro.experimentName}" (tracking.experiment.name in ${file}), where the kedro steps look for it, not in "${configured}" (run_config.experiment_name, which still prefixes the job id)`,
    );
  }
  return { experimentName: kedro.experimentName ?? configured, ...(kedro.runName === undefined ? {} : { runName: kedro.runName }) };
}

/** Runs tagged with this job name, oldest first. */
export async function runsForJob(mlflow: MlflowClient, experimentId: string, jobName: string): Promise<MlflowRun[]> {
  const quoted = jobName.replace(/\\/g, '\\\\').replace(/'/g, "\\'");
  const runs = await mlflow.searchRuns({
    experimentIds: [experimentId],
    filter: `tags.${TAG.jobName} = '${quoted}'`,
    orderBy: ['attributes.start_time ASC'],
    maxResults: 50,
  });
  return runs.sort((a, b) => (a.info.start_time ?? 0) - (b.info.start_time ?? 0) || (a.info.run_id < b.info.run_id ? -1 : 1));
}
