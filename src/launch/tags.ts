import { CREATE_ID_TAG } from '../mlflow/client.js';

/**
 * The MLflow tags kvx-launch writes. Their meanings are documented in docs/launcher.md and stay stable: a tag never
 * changes meaning during a run (kedro-vertexai's vertexai_run_id did).
 */
export const TAG = {
  /** The Vertex pipeline job id (last segment of its resource name; `{{$.pipeline_job_name}}` inside the pipeline). */
  jobName: 'vertexai_job_name',
  /** The job's full resource name, projects/<project>/locations/<region>/pipelineJobs/<id>, unique across projects and regions. */
  runId: 'vertexai_run_id',
  resourceName: 'vertexai_job_resource_name',
  consoleUrl: 'vertexai_job_console_url',
  project: 'vertexai_project',
  region: 'vertexai_region',
  pipelineName: 'vertexai_pipeline_name',
  /** Last state kvx-launch saw: SUBMITTING, SUBMISSION_FAILED, QUEUED ... SUCCEEDED, FAILED, CANCELLED. */
  jobState: 'vertexai_job_state',
  jobError: 'vertexai_job_error',
  lastTask: 'vertexai_last_task',
  failedTask: 'vertexai_failed_task',
  failedTaskError: 'vertexai_failed_task_error',
  /** The Vertex AI experiment the job was added to (vertex.experiment), and a console link to it. */
  vertexExperiment: 'vertexai_experiment',
  vertexExperimentUrl: 'vertexai_experiment_console_url',
  /** `pending` until the job's run context is in the experiment, then `linked`; `failed` when it cannot be. */
  vertexExperimentLink: 'vertexai_experiment_link',
  /** Why the link is pending or failed; empty once linked. */
  vertexExperimentLinkError: 'vertexai_experiment_link_error',
  /** Why kvx-launch ended the run itself (submission failed, interrupted, lost track of the job). */
  launchError: 'kvx_launch_error',
  /** Set by MlflowClient.createRun, so a create whose answer was lost finds its run (see the client). */
  createId: CREATE_ID_TAG,
  note: 'mlflow.note.content',
  sourceName: 'mlflow.source.name',
  sourceType: 'mlflow.source.type',
  user: 'mlflow.user',
} as const;

/** Label on the job carrying the MLflow run id, so `follow` and people can find the run from the job. */
export const RUN_ID_LABEL = 'mlflow_run_id';
export const EXPERIMENT_ID_LABEL = 'mlflow_experiment_id';

/** MLflow servers before 2.x limited tag values to 5000 characters; stay under that. */
export function tagValue(value: string): string {
  return value.length > 4900 ? `${value.slice(0, 4900)}… (truncated)` : value;
}
