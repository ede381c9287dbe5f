/**
 * `kvx-launch run --dry-run`: everything `run` would send, built by the same functions `run` uses, with nothing
 * created. The only calls are reads: a template download, and the MLflow experiment looked up by name.
 */
import type { LoadedConfig } from '../config/load.js';
import { experimentConsoleUrl } from '../vertex/experiment.js';
import type { CreateRequest } from '../vertex/request.js';
import { createRequest, jobRunLabels, planParameters, preparePlan, runStartTags, submittedTags } from './run.js';
import type { RunInput } from './run.js';
import { withSession } from './session.js';
import type { LaunchEnvironment } from './session.js';
import { EXPERIMENT_ID_LABEL, RUN_ID_LABEL, TAG } from './tags.js';

/** Stand-ins for what only exists once the run and the job do; each is explained in the report. */
export const PLACEHOLDER = {
  runId: '<mlflow-run-id>',
  experimentId: '<mlflow-experiment-id>',
  createId: '<create-id>',
  jobName: '<job-resource-name>',
  jobState: '<job-state>',
} as const;

const PLACEHOLDER_MEANING: Record<string, string> = {
  [PLACEHOLDER.runId]: 'the id of the MLflow run, created before the job',
  [PLACEHOLDER.experimentId]: 'the id of the MLflow experiment, created first',
  [PLACEHOLDER.createId]: 'a random id, so a create whose answer was lost finds its run',
  [PLACEHOLDER.jobName]: 'the job resource name as Vertex AI returns it, projects/<project number>/locations/<region>/pipelineJobs/<job id>',
  [PLACEHOLDER.jobState]: 'the state Vertex AI gives the new job (QUEUED or PENDING)',
};

export interface DryRunReport {
  dryRun: true;
  /** `POST <url>` of pipelineJobs.create. */
  create: string;
  /** Exactly what `run` sends, placeholders aside. */
  request: CreateRequest;
  mlflow: {
    trackingUri: string;
    /** `use` an active experiment, `restore` a deleted one, or `create` it. */
    experiment: { name: string; action: 'use' | 'restore' | 'create'; experimentId: string };
    run: { name: string; tags: Record<string, string>; userId?: string };
    /** Set on the run once the job exists. */
    tagsAfterSubmit: Record<string, string>;
    /** The job's labels that point at the run. */
    jobLabels: Record<string, string>;
    /** With --wait: the job is followed and its final state mirrored into the run. */
    follow: boolean;
  };
  vertexExperiment?: { name: string; consoleUrl: string; actions: string[] };
  placeholders: Record<string, string>;
  /** What was read leniently or ignored in the spec (also said on stderr). */
  warnings: string[];
  /** What adapting the kedro-vertexai spec changed; absent when it was not adapted. */
  adaptation?: { changes: string[]; warnings: string[] };
}

export async function dryRunPipeline(loaded: LoadedConfig, input: RunInput, environment: LaunchEnvironment): Promise<DryRunReport> {
  return withSession(loaded, environment, async (session) => {
    const vertex = session.vertex();
    const plan = await preparePlan(session, loaded.config, input, environment);
    const existing = await (await session.mlflow()).getExperimentByName(plan.mlflowExperimentName);
    const experiment: DryRunReport['mlflow']['experiment'] =
      existing === undefined
        ? { name: plan.mlflowExperimentName, action: 'create', experimentId: PLACEHOLDER.experimentId }
        : { name: plan.mlflowExperimentName, action: existing.lifecycle_stage === 'deleted' ? 'restore' : 'use', experimentId: existing.experiment_id };
    // Label values are made label-safe; a placeholder is left as it is, to be seen.
    const jobLabels = { ...jobRunLabels(PLACEHOLDER.runId, experiment.experimentId), [RUN_ID_LABEL]: PLACEHOLDER.runId };
    if (existing === undefined) jobLabels[EXPERIMENT_ID_LABEL] = PLACEHOLDER.experimentId;
    const request = createRequest(plan, planParameters(plan, PLACEHOLDER.runId), jobLabels);

    const vertexExperiment = plan.vertexExperiment === undefined ? undefined : { name: plan.vertexExperiment, consoleUrl: experimentConsoleUrl(plan.projectId, plan.region, plan.vertexExperiment) };
    const tags = Object.fromEntries([...runStartTags(plan, vertex.consoleUrl(plan.jobId), vertexExperiment), { key: TAG.createId, value: PLACEHOLDER.createId }].map((t) => [t.key, t.value]));
    const report: DryRunReport = {
      dryRun: true,
      create: `POST ${vertex.createPipelineJobUrl(plan.jobId)}`,
      request,
      mlflow: {
        trackingUri: loaded.config.upstream.url,
        experiment,
        run: { name: plan.runName, tags, ...(plan.userId ? { userId: plan.userId } : {}) },
        tagsAfterSubmit: Object.fromEntries(submittedTags(PLACEHOLDER.jobName, PLACEHOLDER.jobState, plan.runIdInPipeline).map((t) => [t.key, t.value])),
        jobLabels,
        follow: input.wait,
      },
      placeholders: placeholdersIn(JSON.stringify([request, tags, jobLabels])),
      warnings: plan.spec.warnings,
      ...(plan.adaptation === undefined ? {} : { adaptation: plan.adaptation }),
    };
    if (vertexExperiment !== undefined) {
      report.vertexExperiment = {
        ...vertexExperiment,
        actions: [
          `before the run and the job: read ML Metadata context ${vertex.metadataStore}/contexts/${vertexExperiment.name}, or create it (system.Experiment), with the default metadata store if the project has none`,
          "once the job runs: addContextChildren with the job's pipeline run context",
        ],
      };
    }
    return report;
  });
}

/** The placeholders the report uses, with their meanings. */
function placeholdersIn(text: string): Record<string, string> {
  const always: string[] = [PLACEHOLDER.jobName, PLACEHOLDER.jobState];
  return Object.fromEntries(Object.entries(PLACEHOLDER_MEANING).filter(([p]) => always.includes(p) || text.includes(p)));
}

/** The report for people: what would happen, in order, then the request as JSON. */
export function describeDryRun(report: DryRunReport): string {
  const { mlflow } = report;
  const lines = [`dry run: nothing was created; \`kvx-launch run\` would:`];
  if (report.adaptation !== undefined) {
    lines.push(
      report.adaptation.changes.length === 0 ? '  submit the kedro-vertexai pipeline as it is (adapted already)' : '  adapt the kedro-vertexai pipeline (--no-adapt: submit it untouched):',
      ...report.adaptation.changes.map((c) => `    ${c}`),
    );
  }
  const { experiment } = mlflow;
  const state =
    experiment.action === 'create'
      ? 'does not exist; would be created'
      : experiment.action === 'restore'
        ? `id ${experiment.experimentId}, deleted; would be restored`
        : `id ${experiment.experimentId}, exists`;
  lines.push(`  MLflow experiment ${experiment.name}: ${state} (${mlflow.trackingUri})`);
  if (report.vertexExperiment !== undefined) lines.push(`  Vertex AI experiment ${report.vertexExperiment.name}:`, ...report.vertexExperiment.actions.map((a) => `    ${a}`));
  lines.push(`  create MLflow run ${mlflow.run.name} with tags:`, ...Object.entries(mlflow.run.tags).map(([k, v]) => `    ${k}: ${v}`));
  lines.push(`  submit pipeline job ${report.request.pipelineJobId}: ${report.create}`);
  lines.push(`    runtimeConfig: ${JSON.stringify(report.request.pipelineJob['runtimeConfig'])}`);
  lines.push(`    labels linking it to the run: ${Object.entries(mlflow.jobLabels).map(([k, v]) => `${k}=${v}`).join(', ')}`);
  lines.push('  then tag the run:', ...Object.entries(mlflow.tagsAfterSubmit).map(([k, v]) => `    ${k}: ${v}`));
  if (mlflow.follow) lines.push('  follow the job (--wait) and end the run with its final state');
  lines.push('placeholders:', ...Object.entries(report.placeholders).map(([p, meaning]) => `  ${p}: ${meaning}`));
  lines.push('pipelineJobs.create request:', JSON.stringify(report.request, null, 2));
  return `${lines.join('\n')}\n`;
}
