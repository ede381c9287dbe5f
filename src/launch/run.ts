import { refuseProxyBypass } from '../config/kedro-mlflow.js';
import type { LoadedConfig } from '../config/load.js';
import type { KvxConfig } from '../config/schema.js';
import { KvxError, errorMessage } from '../errors.js';
import type { Logger } from '../log/logger.js';
import type { KeyValue, MlflowClient, MlflowRunStatus } from '../mlflow/client.js';
import { shortState } from '../vertex/client.js';
import type { PipelineJob, VertexClient } from '../vertex/client.js';
import { getOrCreateExperiment, linkJobToExperiment } from '../vertex/experiment.js';
import type { VertexExperiment } from '../vertex/experiment.js';
import { checkExperimentName, checkJobId, checkLabels, makeJobId, networkResourceName, toLabelValue } from '../vertex/naming.js';
import { convertParameters } from '../vertex/params.js';
import { declaredArtifacts, declaredParameters, loadSpecFile, parseSpec } from '../vertex/spec.js';
import { adaptSpec, isAdapted, isKedroVertexaiSpec } from '../vertex/adapt.js';
import type { AdaptSettings } from '../vertex/adapt.js';
import { stepExperiment } from './start-run.js';

import { buildCreateRequest } from '../vertex/request.js';
import type { CreateRequest } from '../vertex/request.js';
import type { LoadedSpec } from '../vertex/spec.js';
import { resolveExperiment } from './experiment.js';
import { recordExperimentLink } from './experiment-link.js';
import type { ExperimentResult } from './experiment-link.js';
import { endRunByLauncher, followWhileLinking, mirrorFinalState } from './follow.js';
import type { FollowOptions } from './follow.js';
import { silentProgress } from './progress.js';
import type { Progress } from './progress.js';
import { withSession } from './session.js';
import type { LaunchEnvironment, LaunchSession } from './session.js';
import { EXPERIMENT_ID_LABEL, RUN_ID_LABEL, TAG } from './tags.js';

/** Everything a submission needs, checked before any MLflow or Vertex state is created. */
export interface LaunchPlan {
  spec: LoadedSpec;
  templateUri?: string;
  params: ReadonlyMap<string, string>;
  experimentName: string;
  jobId: string;
  displayName: string;
  projectId: string;
  region: string;
  gcsOutputDirectory: string;
  serviceAccount: string;
  network: string;
  labels: Record<string, string>;
  enableCaching: boolean;
  userId?: string;
  /** Vertex AI experiment to add the job to (vertex.experiment); checked against Vertex's naming rule. */
  vertexExperiment?: string;
  /** Root input artifact name → artifact id or resource name. */
  inputArtifacts?: Record<string, string>;
  /** `fast` or `slow` (runtimeConfig.failurePolicy). */
  failurePolicy?: string;
  projectNumber?: string;
  /** The MLflow experiment of the run: kedro-mlflow's when mlflow.yml names one, else experimentName. */
  mlflowExperimentName: string;
  /** Name of the run: mlflow.yml's tracking.run.name, else the job id. */
  runName: string;
  /** The spec writes vertexai_run_id from inside (an adapted kedro-vertexai spec), so the launcher does not. */
  runIdInPipeline: boolean;
  /** What adapting the kedro-vertexai spec changed (src/vertex/adapt.ts); absent when it was not adapted. */
  adaptation?: { changes: string[]; warnings: string[] };
}

export interface PlanFlags {
  params: ReadonlyMap<string, string>;
  labels: Record<string, string>;
  jobId?: string;
  displayName?: string;
  templateUri?: string;
  userId?: string;
  inputArtifacts?: Record<string, string>;
  failurePolicy?: string;
  now: Date;
  /** kedro-mlflow's experiment and run name (mlflow.yml). */
  mlflowExperimentName?: string;
  runName?: string;
  adaptation?: { changes: string[]; warnings: string[] };
}

/** Cross-checks config and flags; every missing input is reported at once, naming its key and flag. */
export function planLaunch(config: KvxConfig, spec: LoadedSpec, flags: PlanFlags): LaunchPlan {
  const v = config.vertex;
  const problems: string[] = [];
  if (!v.projectId) problems.push('vertex.projectId is required: set project_id in vertexai.yml, vertex.projectId, or --project');
  if (!v.region) problems.push('vertex.region is required: set region in vertexai.yml, vertex.region, or --region');
  if (!v.experimentName) problems.push('vertex.experimentName is required (the MLflow experiment and job id prefix): set run_config.experiment_name, or --experiment-name');
  // As the SDK: the caller's root, else the spec's default, else a PipelineJob file's output directory.
  const specRoot = spec.spec.defaultPipelineRoot || spec.jobRuntimeConfig?.gcsOutputDirectory;
  if (!v.root && !specRoot) problems.push('vertex.root is required (pipeline root, bucket/path): set run_config.root, or --root');
  if (problems.length > 0) throw new KvxError('KVX_LAUNCH_INPUT', `missing launch settings:\n  - ${problems.join('\n  - ')}`);

  const jobId = flags.jobId !== undefined ? checkJobId(flags.jobId) : makeJobId(v.experimentName, flags.now);
  const labels = checkLabels({ ...v.labels, ...flags.labels }, 'vertex.labels and --label');
  for (const reserved of [RUN_ID_LABEL, EXPERIMENT_ID_LABEL]) {
    if (reserved in labels) throw new KvxError('KVX_LAUNCH_INPUT', `label ${reserved} is set by kvx-launch; remove it from vertex.labels / --label`);
  }
  if (Object.keys(labels).length > 62) throw new KvxError('KVX_LAUNCH_INPUT', `${Object.keys(labels).length} labels given; kvx-launch adds 2 and a job takes at most 64`);
  const root = v.root ? (v.root.startsWith('gs://') ? v.root : `gs://${v.root.replace(/^\/+/, '')}`) : specRoot!;
  if (!/^gs:\/\/[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9](\/.*)?$/.test(root)) {
    throw new KvxError(
      'KVX_LAUNCH_INPUT',
      v.root
        ? `vertex.root "${v.root}" is not a Cloud Storage location: write bucket/path (gs:// is added)`
        : `the pipeline root "${root}" of ${spec.source} is not a Cloud Storage location: set vertex.root (run_config.root, --root) to bucket/path`,
    );
  }
  if (v.serviceAccount && !/^[^@\s]+@[^@\s]+$/.test(v.serviceAccount)) {
    throw new KvxError('KVX_LAUNCH_INPUT', `vertex.serviceAccount "${v.serviceAccount}" is not a service account email (name@project.iam.gserviceaccount.com)`);
  }

  const plan: LaunchPlan = {
    spec,
    params: flags.params,
    experimentName: v.experimentName,
    jobId,
    displayName: flags.displayName ?? jobId,
    projectId: v.projectId,
    region: v.region,
    gcsOutputDirectory: root,
    serviceAccount: v.serviceAccount,
    network: networkResourceName(v.network, v.projectId, v.projectNumber),
    labels,
    enableCaching: v.enableCaching,
    mlflowExperimentName: flags.mlflowExperimentName || v.experimentName,
    runName: flags.runName ?? jobId,
    runIdInPipeline: isAdapted(spec.spec),
  };
  if (flags.adaptation !== undefined) plan.adaptation = flags.adaptation;
  if (flags.templateUri !== undefined) plan.templateUri = flags.templateUri;
  if (flags.userId !== undefined) plan.userId = flags.userId;
  if (flags.inputArtifacts !== undefined) plan.inputArtifacts = flags.inputArtifacts;
  if (flags.failurePolicy !== undefined) plan.failurePolicy = flags.failurePolicy;
  if (v.projectNumber) plan.projectNumber = v.projectNumber;
  if (v.experiment) {
    plan.vertexExperiment = checkExperimentName(v.experiment);
    if (plan.vertexExperiment === jobId) {
      throw new KvxError('KVX_LAUNCH_INPUT', `vertex.experiment "${v.experiment}" equals the job id: the job's pipeline run context takes that id in the same metadata store`, {
        hint: 'use another --experiment or --job-id',
      });
    }
  }
  // Checked now, with a stand-in run id, so a bad --param or artifact fails before any run or job exists.
  const standIn = '0'.repeat(32);
  createRequest(plan, planParameters(plan, standIn), { [RUN_ID_LABEL]: standIn, [EXPERIMENT_ID_LABEL]: '0' });
  return plan;
}

export interface LaunchDeps {
  mlflow: MlflowClient;
  vertex: VertexClient;
  logger: Logger;
  progress: Progress;
}

export interface LaunchOptions {
  wait: boolean;
  cancelOnInterrupt: boolean;
  signal?: AbortSignal;
  pollIntervalMs?: number;
  maxPollIntervalMs?: number;
  /** How long to wait for the job's pipeline run context before leaving the experiment link pending. */
  experimentLinkTimeoutMs?: number;
  /** First wait between looks for the run context (tests shorten it). */
  experimentLinkIntervalMs?: number;
}

export interface LaunchResult {
  jobId: string;
  jobName: string;
  consoleUrl: string;
  experimentId: string;
  runId: string;
  runUrl: string;
  /** With --wait: the job's final state (or its state when interrupted). */
  state?: string;
  runStatus?: MlflowRunStatus;
  interrupted?: boolean;
  /** With vertex.experiment: the experiment and whether the job made it in. */
  vertexExperiment?: ExperimentResult;
}

export const DEFAULT_EXPERIMENT_LINK_TIMEOUT_MS = 300_000;

/** The typed parameter values for a run: the PipelineJob file's under the caller's, plus the run id. */
export function planParameters(plan: LaunchPlan, mlflowRunId: string): Record<string, unknown> {
  const preset = plan.spec.jobRuntimeConfig?.parameterValues;
  return convertParameters(plan.spec.parameters, plan.params, { mlflowRunId, source: plan.spec.source, ...(preset === undefined ? {} : { preset }) });
}

/** The projects.locations.pipelineJobs.create request: caching off unless enabled, as kedro-vertexai runs. */
export function createRequest(plan: LaunchPlan, parameterValues: Record<string, unknown>, runLabels: Record<string, string>): CreateRequest {
  return buildCreateRequest(plan.spec, parameterValues, {
    jobId: plan.jobId,
    displayName: plan.displayName,
    pipelineRoot: plan.gcsOutputDirectory,
    ...(plan.enableCaching ? {} : { enableCaching: false }),
    ...(plan.templateUri === undefined ? {} : { templateUri: plan.templateUri }),
    labels: { ...plan.labels, ...runLabels },
    serviceAccount: plan.serviceAccount,
    network: plan.network,
    ...(plan.inputArtifacts === undefined ? {} : { inputArtifacts: plan.inputArtifacts }),
    ...(plan.failurePolicy === undefined ? {} : { failurePolicy: plan.failurePolicy }),
    projectId: plan.projectId,
    ...(plan.projectNumber === undefined ? {} : { projectNumber: plan.projectNumber }),
    region: plan.region,
  });
}

/** The tags the run is created with: where the job runs, `SUBMITTING`, and the Vertex AI experiment it joins. */
export function runStartTags(plan: LaunchPlan, consoleUrl: string, vertexExperiment: Pick<VertexExperiment, 'name' | 'consoleUrl'> | undefined): KeyValue[] {
  const tags: KeyValue[] = [
    { key: TAG.jobName, value: plan.jobId },
    { key: TAG.project, value: plan.projectId },
    { key: TAG.region, value: plan.region },
    { key: TAG.pipelineName, value: plan.spec.spec.pipelineInfo.name },
    { key: TAG.consoleUrl, value: consoleUrl },
    { key: TAG.jobState, value: 'SUBMITTING' },
    { key: TAG.sourceName, value: 'kvx-launch' },
    { key: TAG.sourceType, value: 'JOB' },
  ];
  if (plan.userId) tags.push({ key: TAG.user, value: plan.userId });
  if (vertexExperiment !== undefined) {
    tags.push(
      { key: TAG.vertexExperiment, value: vertexExperiment.name },
      { key: TAG.vertexExperimentUrl, value: vertexExperiment.consoleUrl },
      { key: TAG.vertexExperimentLink, value: 'pending' },
    );
  }
  return tags;
}

/** The tags set once the job exists: its resource name as Vertex returned it, and its first state. */
export function submittedTags(jobName: string, state: string, runIdInPipeline = false): KeyValue[] {
  return [
    ...(runIdInPipeline ? [] : [{ key: TAG.runId, value: jobName }]),
    { key: TAG.resourceName, value: jobName },
    { key: TAG.jobState, value: state },
  ];
}

/** The job's labels that point at its run. */
export function jobRunLabels(runId: string, experimentId: string): Record<typeof RUN_ID_LABEL | typeof EXPERIMENT_ID_LABEL, string> {
  return { [RUN_ID_LABEL]: toLabelValue(runId), [EXPERIMENT_ID_LABEL]: toLabelValue(experimentId) };
}

/**
 * Resolves the experiment, creates the run, submits the job, tags the run, and with `wait` follows the job and
 * mirrors its end into the run. From the moment the run exists, every way out of this function leaves it
 * either RUNNING with a live job behind it, or ended with the reason recorded.
 */
export async function launch(deps: LaunchDeps, plan: LaunchPlan, options: LaunchOptions): Promise<LaunchResult> {
  const { mlflow, vertex, logger } = deps;
  // Before any MLflow run or job exists, so a missing permission or a name taken by another kind of context
  // stops the launch with nothing to clean up (as the SDK validates the experiment before creating the job).
  const vertexExperiment =
    plan.vertexExperiment === undefined ? undefined : await getOrCreateExperiment(vertex, plan.vertexExperiment, plan.projectId, plan.region, { logger });
  const experiment = await resolveExperiment(mlflow, plan.mlflowExperimentName, logger);
  const consoleUrl = vertex.consoleUrl(plan.jobId);
  const jobName = vertex.jobName(plan.jobId);
  const run = await mlflow.createRun({
    experimentId: experiment.experimentId,
    runName: plan.runName,
    tags: runStartTags(plan, consoleUrl, vertexExperiment),
    ...(plan.userId ? { userId: plan.userId } : {}),
  });
  const runId = run.info.run_id;
  const result: LaunchResult = { jobId: plan.jobId, jobName, consoleUrl, experimentId: experiment.experimentId, runId, runUrl: mlflow.runUrl(experiment.experimentId, runId) };
  logger.info('MLflow run created', { runId, experimentId: experiment.experimentId });

  let job: PipelineJob;
  try {
    options.signal?.throwIfAborted();
    const runLabels = jobRunLabels(runId, experiment.experimentId);
    const request = createRequest(plan, planParameters(plan, runId), runLabels);
    job = await deps.vertex.createPipelineJob(request.pipelineJobId, request.pipelineJob, [RUN_ID_LABEL, runLabels[RUN_ID_LABEL]]);
  } catch (err) {
    const interrupted = options.signal?.aborted === true;
    const reason = interrupted
      ? 'Interrupted before the pipeline job was submitted; no job exists.'
      : `Submitting the Vertex AI pipeline job ${plan.jobId} failed; no job exists.\n\n${errorMessage(err)}${err instanceof KvxError && err.hint ? `\n\nHint: ${err.hint}` : ''}`;
    const endProblem = await endRunByLauncher(mlflow, runId, interrupted ? 'KILLED' : 'FAILED', reason, [{ key: TAG.jobState, value: 'SUBMISSION_FAILED' }], logger);
    throw withRunNote(err, runId, interrupted ? 'KILLED' : 'FAILED', endProblem);
  }

  try {
    // Uninterrupted: a job that exists is recorded on its run, whatever happens next.
    await mlflow.uninterrupted().setTags(runId, submittedTags(job.name, shortState(job.state), plan.runIdInPipeline));
    result.jobName = job.name;
    const linkOptions = (signal: AbortSignal | undefined, wake?: AbortSignal): Parameters<typeof linkJobToExperiment>[3] => ({
      logger,
      timeoutMs: options.experimentLinkTimeoutMs ?? DEFAULT_EXPERIMENT_LINK_TIMEOUT_MS,
      ...(options.experimentLinkIntervalMs === undefined ? {} : { intervalMs: options.experimentLinkIntervalMs }),
      ...(signal === undefined ? {} : { signal }),
      ...(wake === undefined ? {} : { wake }),
    });
    if (!options.wait) {
      if (vertexExperiment !== undefined) {
        const link = await linkJobToExperiment(vertex, vertexExperiment, job.name, linkOptions(options.signal));
        result.vertexExperiment = await recordExperimentLink(mlflow, runId, vertexExperiment, link);
      }
      return result;
    }

    const followOptions: FollowOptions = {
      vertex,
      job: job.name,
      progress: deps.progress,
      logger,
      cancelOnInterrupt: options.cancelOnInterrupt,
    };
    if (options.signal !== undefined) followOptions.signal = options.signal;
    if (options.pollIntervalMs !== undefined) followOptions.pollIntervalMs = options.pollIntervalMs;
    if (options.maxPollIntervalMs !== undefined) followOptions.maxPollIntervalMs = options.maxPollIntervalMs;
    // The link is made while the job is followed: its run context appears once the job starts running.
    // Recorded on the run as soon as it is known, so the run shows `linked` while the job still runs.
    const link =
      vertexExperiment === undefined
        ? undefined
        : (followEnded: AbortSignal) =>
            linkJobToExperiment(vertex, vertexExperiment, job.name, linkOptions(options.signal, followEnded)).then((made) => recordExperimentLink(mlflow, runId, vertexExperiment, made));
    const { followed, experiment } = await followWhileLinking(followOptions, link);
    if (experiment !== undefined) result.vertexExperiment = experiment;
    result.state = followed.state;
    result.interrupted = followed.interrupted;
    if (followed.terminal) {
      result.runStatus = await mirrorFinalState(mlflow, runId, followed.job);
      return result;
    }
    // Interrupted `run --wait` without cancel: the job goes on, but this launcher's run does not stay RUNNING;
    // `kvx-launch follow` later mirrors the real end over it.
    const reason =
      `kvx-launch run --wait was interrupted while the job was ${followed.state}; the job ${followed.cancelRequested ? 'was asked to cancel' : 'keeps running'}. ` +
      `Run \`kvx-launch follow ${plan.jobId}\` to mirror its final state into this run.`;
    const endProblem = await endRunByLauncher(mlflow, runId, 'KILLED', reason, [{ key: TAG.jobState, value: followed.state }], logger);
    if (endProblem) throw new KvxError('KVX_MLFLOW_API', `could not end MLflow run ${runId}: ${endProblem}`);
    result.runStatus = 'KILLED';
    return result;
  } catch (err) {
    // A launcher failure (or an interrupt) after the job exists: record it on the run and end the run, so it never
    // stays RUNNING because of us. The job itself is left alone; `follow` can mirror its real end later.
    const status = options.signal?.aborted === true ? 'KILLED' : 'FAILED';
    const reason = `kvx-launch ${status === 'KILLED' ? 'was interrupted' : 'failed'} after submitting job ${plan.jobId}: ${errorMessage(err)}. The job was not cancelled; run \`kvx-launch follow ${plan.jobId}\` to mirror its final state.`;
    const jobTags = [...(plan.runIdInPipeline ? [] : [{ key: TAG.runId, value: jobName }]), { key: TAG.resourceName, value: jobName }];
    const endProblem = await endRunByLauncher(mlflow, runId, status, reason, jobTags, logger);
    throw withRunNote(err, runId, status, endProblem);
  }
}

export interface RunInput {
  /** A compiled spec file, or (`isTemplate`) a template URI https://<region>-kfp.pkg.dev/... */
  source: string;
  isTemplate: boolean;
  params: ReadonlyMap<string, string>;
  /** Added to vertex.labels. */
  labels: Record<string, string>;
  jobId?: string;
  displayName?: string;
  now: Date;
  userId?: string;
  wait: boolean;
  cancelOnInterrupt: boolean;
  pollIntervalMs: number;
  experimentLinkTimeoutMs: number;
  /** Root input artifact name → artifact id or resource name (--artifact). */
  inputArtifacts?: Record<string, string>;
  /** `fast` or `slow` (--failure-policy). */
  failurePolicy?: string;
  /** Adapt a kedro-vertexai spec with these settings; undefined: submit it untouched (--no-adapt). */
  adapt?: AdaptSettings;
  /** Folder of the vertexai.yml given (conf/<env>), where kedro-mlflow's mlflow.yml is looked for. */
  confDir?: string;
}

/**
 * Reads the pipeline (a file, or a template downloaded with the caller's credentials), says on stderr what was
 * read leniently or ignored, and checks every input against the config. Nothing is created.
 */
export async function preparePlan(session: LaunchSession, config: KvxConfig, input: RunInput, environment: Pick<LaunchEnvironment, 'warn' | 'info'>): Promise<LaunchPlan> {
  let spec = input.isTemplate ? parseSpec(await downloadTemplate(session.vertex(), input.source), input.source) : await loadSpecFile(input.source);
  for (const warning of spec.warnings) environment.warn(warning);
  const flags: PlanFlags = { params: input.params, labels: input.labels, now: input.now };
  if (input.adapt !== undefined) {
    const adapted = adaptLoadedSpec(spec, input.adapt);
    spec = adapted.spec;
    if (adapted.adaptation !== undefined) {
      // The steps' kedro-mlflow must send their calls through the kvx-proxy they now run behind.
      refuseProxyBypass(input.confDir, adapted.adaptation.envs, environment.warn);
      flags.adaptation = { changes: adapted.adaptation.changes, warnings: adapted.adaptation.warnings };
      for (const warning of adapted.adaptation.warnings) environment.warn(`${spec.source}: ${warning}`);
      if (adapted.adaptation.changes.length === 0) environment.info?.(`${spec.source}: adapted already; nothing changed`);
      for (const change of adapted.adaptation.changes) environment.info?.(`adapted: ${change}`);
    }
  } else if (isKedroVertexaiSpec(spec.spec) && !isAdapted(spec.spec)) {
    environment.warn(
      `${spec.source} is a kedro-vertexai pipeline submitted with --no-adapt: its mlflow-start-run step makes a second MLflow run beside kvx-launch's, and its steps do not run behind kvx-proxy`,
    );
  }
  const kedro = stepExperiment(config.vertex.experimentName, input.confDir, environment);
  flags.mlflowExperimentName = kedro.experimentName;
  if (kedro.runName !== undefined) flags.runName = kedro.runName;
  if (input.userId !== undefined) flags.userId = input.userId;
  if (input.jobId !== undefined) flags.jobId = input.jobId;
  if (input.displayName !== undefined) flags.displayName = input.displayName;
  if (input.isTemplate) flags.templateUri = input.source;
  if (input.inputArtifacts !== undefined) flags.inputArtifacts = input.inputArtifacts;
  if (input.failurePolicy !== undefined) flags.failurePolicy = input.failurePolicy;
  return planLaunch(config, spec, flags);
}

/** `kvx-launch run`: prepares the plan (see `preparePlan`) and launches it (see `launch`). */
export async function launchPipeline(loaded: LoadedConfig, input: RunInput, environment: LaunchEnvironment): Promise<LaunchResult> {
  return withSession(loaded, environment, async (session) => {
    const vertex = session.vertex();
    const plan = await preparePlan(session, loaded.config, input, environment);

    const mlflow = await session.mlflow();
    // Progress goes to stderr, so --json output on stdout stays clean.
    const progress = input.wait ? environment.progress(plan.jobId) : silentProgress;
    return launch({ mlflow, vertex, logger: session.logger, progress }, plan, {
      wait: input.wait,
      cancelOnInterrupt: input.cancelOnInterrupt,
      signal: environment.signal,
      pollIntervalMs: input.pollIntervalMs,
      experimentLinkTimeoutMs: input.experimentLinkTimeoutMs,
      ...(environment.experimentLinkIntervalMs === undefined ? {} : { experimentLinkIntervalMs: environment.experimentLinkIntervalMs }),
    });
  });
}

/** A loaded spec adapted (src/vertex/adapt.ts) when it is kedro-vertexai's, with its declarations read again. */
export function adaptLoadedSpec(spec: LoadedSpec, settings: AdaptSettings): { spec: LoadedSpec; adaptation?: { changes: string[]; warnings: string[]; envs: string[] } } {
  const result = adaptSpec(spec.spec, settings);
  if (!result.recognised) return { spec };
  const adapted: LoadedSpec = { ...spec, spec: result.spec, parameters: declaredParameters(result.spec, spec.source), artifacts: declaredArtifacts(result.spec, spec.source) };
  return { spec: adapted, adaptation: { changes: result.changes, warnings: result.warnings, envs: result.envs } };
}

async function downloadTemplate(vertex: VertexClient, uri: string): Promise<string> {
  try {
    return await vertex.fetchTemplate(uri);
  } catch (err) {
    // An interrupt stays one (exit 130), not a bad template.
    if (err instanceof KvxError && err.code === 'KVX_INTERRUPTED') throw err;
    throw new KvxError('KVX_LAUNCH_INPUT', `cannot download pipeline template ${uri}: ${errorMessage(err)}`, {
      hint: 'check the URI (https://<region>-kfp.pkg.dev/<project>/<repo>/<package>/<tag or sha256:...>) and that you can read the repository (Artifact Registry Reader)',
    });
  }
}

function withRunNote(err: unknown, runId: string, status: string, endProblem: string | undefined): KvxError {
  const note = endProblem === undefined ? `MLflow run ${runId} was ended ${status} with this error recorded` : `MLflow run ${runId} could not be ended (${endProblem}); end it by hand`;
  const code = err instanceof KvxError ? err.code : 'KVX_LAUNCH_INPUT';
  const hint = err instanceof KvxError ? err.hint : undefined;
  return new KvxError(code, `${errorMessage(err)}\n${note}`, { ...(hint === undefined ? {} : { hint }), cause: err });
}
