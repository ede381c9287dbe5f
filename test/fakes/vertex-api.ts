/**
 * A fake Vertex AI API (v1 PipelineJobs) on 127.0.0.1:0. It authenticates bearer tokens against an
 * AccessTokenStore (the one the fake metadata server issues from), validates create requests the way the real
 * API rejects them (Google error JSON `{"error":{"code","message","status"}}`), stores jobs, and advances each
 * job one step per GET through scripted states, so tests are deterministic without timers. Jobs report a task tree
 * like a real one (see vertex-pipeline-run.ts).
 *
 * As strict as the real API and no stricter: `pipelineSpec` may come with `templateUri` (what the SDK sends for a
 * template); parameters of a schemaVersion 2.0.0 spec are typed by their `type:` and must come in
 * `runtimeConfig.parameters` as `{stringValue|intValue|doubleValue}`; `inputArtifacts` are checked against the
 * spec's root artifacts and the artifacts the test registered; output-only fields a client sends are ignored;
 * every service-account form Google issues is accepted.
 *
 * It also serves the ML Metadata calls behind Vertex AI experiments (the default metadata store, its contexts,
 * and addContextChildren), with the real API's id rules and errors. Like Vertex, it creates a job's pipeline run
 * context (`system.PipelineRun`, id = job id) only when the job starts running, and only then reports it in
 * `jobDetail.pipelineRunContext`.
 */
import { createHash, randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import YAML from 'yaml';
import type { AccessTokenStore } from './google-common.js';
import { JobExecution, rootValues } from './vertex-executor.js';
import type { ExecutorOptions } from './vertex-executor.js';
import { cancelRun, startRun, stepRun, taskJson } from './vertex-pipeline-run.js';
import type { FakeTask, JobOutcome, RunState } from './vertex-pipeline-run.js';

export interface GoogleErrorSpec {
  code: number;
  status: string;
  message: string;
}

export type { JobOutcome } from './vertex-pipeline-run.js';

export interface FakeContext {
  id: string;
  displayName: string;
  description?: string;
  schemaTitle: string;
  schemaVersion: string;
  metadata: Record<string, unknown>;
  /** Context ids (in the default store) of the parents. */
  parents: string[];
  createTime: string;
}

export type { FakeTask } from './vertex-pipeline-run.js';

export interface FakeJob {
  id: string;
  body: Record<string, unknown>;
  /** The spec the job runs (the body's, or the template's when only templateUri was sent). */
  spec: Record<string, unknown>;
  state: string;
  outcome: JobOutcome;
  run: RunState;
  step: number;
  /** The tasks created so far, in creation order; the first is the root. */
  tasks: FakeTask[];
  createTime: string;
  startTime?: string;
  endTime?: string;
  error?: { code: number; message: string };
  /** Why the job fails as it starts (a runtime config Vertex takes but cannot run). */
  startFailure?: { code: number; message: string };
  cancelRequested: boolean;
  gets: number;
  /** With `execute`: the local run of the job's containers. */
  execution?: JobExecution;
  /** The schedule that created the job, when one did. */
  schedule?: string;
}

/** A Vertex AI Schedule (projects.locations.schedules) as stored: the body as sent, plus the output fields. */
export interface FakeSchedule {
  id: string;
  body: Record<string, unknown>;
  state: 'ACTIVE' | 'PAUSED' | 'COMPLETED';
  createTime: string;
  updateTime: string;
  startedRunCount: number;
  /** Jobs the schedule created, in order. */
  jobs: string[];
  lastScheduledRunResponse?: { scheduledRunTime: string; runResponse: string };
}

export interface FakeVertexOptions {
  region?: string;
  projectId?: string;
  projectNumber?: string;
  accessTokens: AccessTokenStore;
  /** Service accounts the caller may act as; others get PERMISSION_DENIED (iam.serviceAccounts.actAs). */
  actAs?: string[];
  /**
   * Run every created job on this machine (vertex-executor.ts): its containers' commands run as local processes
   * and GET shows the real states. Without it jobs advance through scripted states, one step per GET.
   */
  execute?: ExecutorOptions;
}

/**
 * A fault on the reply to a call the fake has carried out: `drop` closes the connection without an answer (a reply
 * lost on the way), a status answers that status instead of the result (a front end's 503 after the API acted).
 */
export interface VertexReplyFault {
  method: string;
  /** Matched against the path (without the query), e.g. /pipelineJobs$/ for pipelineJobs.create. */
  path: RegExp;
  fault: 'drop' | number;
}

export interface FakeVertex {
  url: string;
  port: number;
  region: string;
  projectId: string;
  projectNumber: string;
  jobs: Map<string, FakeJob>;
  /** Every call, with whose access token it carried (undefined when none was accepted). */
  requests: { method: string; path: string; status: number; caller: string | undefined }[];
  /** Used up in order: each applies once, to the next matching call that succeeds. */
  replyFaults: VertexReplyFault[];
  /** Called after each call is answered as the API answered it (not a reply fault), e.g. to revoke tokens mid-run. */
  afterAnswer: ((call: { method: string; path: string; status: number }) => void) | undefined;
  /** Outcome applied to the next created job (then cleared). */
  nextOutcome: JobOutcome | undefined;
  /** Error answered to the next create (then cleared), e.g. PERMISSION_DENIED or SERVICE_DISABLED. */
  failNextCreate: GoogleErrorSpec | undefined;
  /** Pipeline templates served at `${url}/kfp/...`, by full URI. */
  templates: Map<string, string>;
  /** ML Metadata artifacts of the default store, by id, that jobs may take as input artifacts. */
  artifacts: Map<string, { schemaTitle: string }>;
  /** Contexts of the default metadata store, by id. */
  contexts: Map<string, FakeContext>;
  /** Whether the project's default metadata store exists (a project that never used Vertex metadata has none). */
  metadataStoreExists: boolean;
  /** IAM permissions the caller lacks, e.g. `aiplatform.contexts.create`: those calls get PERMISSION_DENIED. */
  denied: Set<string>;
  /** Full resource name of a context in the default store. */
  contextName(id: string): string;
  /** Schedules by id. */
  schedules: Map<string, FakeSchedule>;
  /**
   * What the scheduler does when a schedule's time comes: creates a job from its createPipelineJobRequest, as
   * that request would (the job id is the pipeline's name and the UTC time, as Vertex names scheduled runs).
   * Refused for a schedule that is not ACTIVE, and once maxRunCount runs were started.
   */
  fireSchedule(id: string, at?: Date): FakeJob;
  close(): Promise<void>;
}

/** pipeline_job_id: `[a-z][-a-z0-9]*`, "less than 128 characters". */
const JOB_ID = /^[a-z][-a-z0-9]{0,126}$/;
/** Labels: up to 64 code points of lower-case (international) letters, digits, `_`, `-`; keys start with a letter. */
const LABEL_KEY = /^[\p{Ll}\p{Lo}][\p{Ll}\p{Lo}\p{N}_-]{0,63}$/u;
const LABEL_VALUE = /^[\p{Ll}\p{Lo}\p{N}_-]{0,64}$/u;
const NETWORK = /^projects\/(\d+)\/global\/networks\/[a-z]([-a-z0-9]{0,61}[a-z0-9])?$/;
/**
 * Service accounts as Google issues them: user-managed (`name@project.iam.gserviceaccount.com`, domain-scoped
 * projects included), App Engine default (`project-id@appspot.gserviceaccount.com`), Compute Engine default
 * (`<number>-compute@developer.gserviceaccount.com`) and Google-managed agents (`service-<number>@gcp-sa-*.iam...`).
 */
const EMAIL = /^(?:[a-z][-a-z0-9]{4,28}[a-z0-9]@[a-z][-a-z0-9.:]*[a-z0-9]\.iam\.gserviceaccount\.com|[a-z][-a-z0-9.:]{4,61}[a-z0-9]@appspot\.gserviceaccount\.com|\d+-compute@developer\.gserviceaccount\.com|service-\d+@gcp-sa-[a-z0-9-]+\.iam\.gserviceaccount\.com)$/;

class GoogleError extends Error {
  constructor(
    readonly code: number,
    readonly status: string,
    message: string,
  ) {
    super(message);
  }
}

const invalid = (message: string) => new GoogleError(400, 'INVALID_ARGUMENT', message);

/** CreateContextRequest.context_id: 4-128 characters of [a-z0-9-]. */
const CONTEXT_ID = /^[a-z0-9-]{4,128}$/;
/** System schemas registered in every metadata store. */
const SYSTEM_SCHEMAS = new Set(['system.Experiment', 'system.ExperimentRun', 'system.PipelineRun', 'system.Pipeline', 'system.Run']);
const MAX_PARENT_CONTEXTS = 10;

export async function startFakeVertex(options: FakeVertexOptions): Promise<FakeVertex> {
  const region = options.region ?? 'europe-west4';
  const projectId = options.projectId ?? 'my-project';
  const projectNumber = options.projectNumber ?? '123456789012';
  let url = '';

  const fake: FakeVertex = {
    url: '',
    port: 0,
    region,
    projectId,
    projectNumber,
    jobs: new Map(),
    requests: [],
    replyFaults: [],
    afterAnswer: undefined,
    nextOutcome: undefined,
    failNextCreate: undefined,
    templates: new Map(),
    artifacts: new Map(),
    contexts: new Map(),
    metadataStoreExists: true,
    denied: new Set(),
    contextName: (id: string) => `projects/${projectNumber}/locations/${region}/metadataStores/default/contexts/${id}`,
    schedules: new Map(),
    fireSchedule: () => {
      throw new Error('not started');
    },
    close: async () => {},
  };
  let operationSeq = 0;
  const operations = new Map<string, { polls: number; response?: Record<string, unknown> }>();

  const jobName = (id: string) => `projects/${projectNumber}/locations/${region}/pipelineJobs/${id}`;
  const iso = (job: FakeJob, step: number) => new Date(Date.parse(job.createTime) + step * 1000).toISOString();

  function checkParent(project: string, location: string, permission: string): void {
    if (project !== projectId && project !== projectNumber) {
      throw new GoogleError(403, 'PERMISSION_DENIED', `Permission '${permission}' denied on resource '//aiplatform.googleapis.com/projects/${project}/locations/${location}' (or it may not exist).`);
    }
    if (location !== region) {
      throw invalid(`Location ${location} does not match the endpoint's location ${region}; use https://${location}-aiplatform.googleapis.com.`);
    }
  }

  /** A template's pipeline document (a multi-document file also holds a platform spec). */
  function templateSpec(uri: string): Record<string, unknown> {
    const text = fake.templates.get(uri);
    if (text === undefined) throw new GoogleError(404, 'NOT_FOUND', `Template ${uri} not found or not accessible.`);
    const docs = YAML.parseAllDocuments(text).map((d) => d.toJS() as unknown);
    const doc = docs.find((d) => isDict(d) && (isDict(d['pipelineSpec']) || isDict(d['pipelineInfo'])));
    if (!isDict(doc)) throw invalid(`Template ${uri} does not hold a pipeline spec.`);
    return isDict(doc['pipelineSpec']) ? doc['pipelineSpec'] : doc;
  }

  /** The spec the job runs: the one sent, which with templateUri is the template as the caller changed it. */
  function specOf(body: Record<string, unknown>): Record<string, unknown> {
    const spec = body['pipelineSpec'];
    const template = body['templateUri'];
    if (template !== undefined && typeof template !== 'string') throw invalid('template_uri must be a string.');
    if (typeof template === 'string') templateSpec(template);
    if (spec === undefined && typeof template === 'string') return templateSpec(template);
    if (!isDict(spec)) throw invalid('Either pipeline_spec or template_uri must be set.');
    const info = spec['pipelineInfo'] as { name?: unknown } | undefined;
    if (typeof info?.name !== 'string' || !/^[a-z0-9][a-z0-9-]{0,127}$/.test(info.name)) {
      throw invalid('pipeline_spec.pipeline_info.name must match the regular expression "[a-z0-9][a-z0-9-]{0,127}".');
    }
    if (typeof spec['schemaVersion'] !== 'string' || typeof spec['root'] !== 'object' || typeof spec['deploymentSpec'] !== 'object') {
      throw invalid('Invalid pipeline_spec: schema_version, root and deployment_spec are required.');
    }
    return spec;
  }

  /**
   * Parameter values by the spec's schema version: 2.0.0 and older take runtime_config.parameters, typed by the
   * declared `type:`; later ones take parameter_values. Returns why a 2.1.0+ job cannot run, when it was given the
   * old field (Vertex accepts it and the job fails).
   */
  function checkParameters(spec: Record<string, unknown>, runtime: Record<string, unknown>): { code: number; message: string } | undefined {
    const version = String(spec['schemaVersion']);
    const legacy = atMost200(version);
    const root = spec['root'] as { inputDefinitions?: { parameters?: Record<string, Record<string, unknown>> } };
    const declared = root.inputDefinitions?.parameters ?? {};
    const values = runtime['parameterValues'];
    const parameters = runtime['parameters'];
    const given = (v: unknown): v is Record<string, unknown> => isDict(v) && Object.keys(v).length > 0;
    if (given(values) && given(parameters)) throw invalid('Only one of runtime_config.parameters and runtime_config.parameter_values can be set.');
    if (values !== undefined && !isDict(values)) throw invalid('runtime_config.parameter_values must be a map.');
    if (parameters !== undefined && !isDict(parameters)) throw invalid('runtime_config.parameters must be a map.');
    const required = (def: Record<string, unknown>) => def['isOptional'] !== true && def['defaultValue'] === undefined && !SYSTEM_TYPES.has(String(def['parameterType'] ?? def['type']));
    if (legacy) {
      if (given(values)) {
        throw invalid(`runtime_config.parameter_values is not supported for pipeline_spec.schema_version ${version}; pipelines of schema version 2.0.0 or lower take runtime_config.parameters.`);
      }
      const ps = (parameters ?? {}) as Record<string, unknown>;
      for (const [name, value] of Object.entries(ps)) {
        const def = declared[name];
        if (def === undefined) throw invalid(`The pipeline parameter ${name} is not found in the pipeline job input definitions.`);
        const type = String(def['type'] ?? def['parameterType']);
        const v = isDict(value) ? value : {};
        const fields = Object.keys(v).filter((k) => ['stringValue', 'intValue', 'doubleValue'].includes(k));
        if (fields.length !== 1) throw invalid(`runtime_config.parameters.${name} must set exactly one of string_value, int_value, double_value.`);
        const ok =
          (type === 'STRING' && typeof v['stringValue'] === 'string') ||
          (type === 'INT' && (Number.isSafeInteger(v['intValue']) || (typeof v['intValue'] === 'string' && /^-?\d{1,19}$/.test(v['intValue'])))) ||
          (type === 'DOUBLE' && (typeof v['doubleValue'] === 'number' || (typeof v['doubleValue'] === 'string' && Number.isFinite(Number(v['doubleValue'])))));
        if (!ok) throw invalid(`The value of pipeline parameter ${name} (${fields[0]}) does not match its declared type ${type}.`);
      }
      for (const [name, def] of Object.entries(declared)) {
        if (required(def) && !(name in ps)) throw invalid(`The pipeline parameter ${name} is required but no value was provided in runtime_config.parameters.`);
      }
      return undefined;
    }
    const vs = (values ?? {}) as Record<string, unknown>;
    for (const [name, value] of Object.entries(vs)) {
      const def = declared[name];
      if (def === undefined) throw invalid(`The pipeline parameter ${name} is not found in the pipeline job input definitions.`);
      const type = String(def['parameterType'] ?? def['type']);
      const ok =
        SYSTEM_TYPES.has(type) ||
        ((type === 'STRING') && typeof value === 'string') ||
        ((type === 'NUMBER_INTEGER' || type === 'INT') && typeof value === 'number' && Number.isInteger(value)) ||
        ((type === 'NUMBER_DOUBLE' || type === 'DOUBLE') && typeof value === 'number') ||
        (type === 'BOOLEAN' && typeof value === 'boolean') ||
        (type === 'LIST' && Array.isArray(value)) ||
        (type === 'STRUCT' && isDict(value));
      if (!ok) throw invalid(`The value of pipeline parameter ${name} has type ${jsonType(value)}, which does not match its declared type ${type}.`);
    }
    const old = given(parameters);
    for (const [name, def] of Object.entries(declared)) {
      if (!old && required(def) && !(name in vs)) throw invalid(`The pipeline parameter ${name} is required but no value was provided in runtime_config.parameter_values.`);
    }
    // Accepted, but the job's runtime config and its spec disagree: the job fails as it starts.
    return old ? { code: 13, message: `Internal error: runtime_config.parameters cannot be resolved against pipeline_spec.schema_version ${version}, which takes runtime_config.parameter_values.` } : undefined;
  }

  function checkInputArtifacts(spec: Record<string, unknown>, runtime: Record<string, unknown>): void {
    const root = spec['root'] as { inputDefinitions?: { artifacts?: Record<string, Record<string, unknown>> } };
    const declared = root.inputDefinitions?.artifacts ?? {};
    const given = runtime['inputArtifacts'] ?? {};
    if (!isDict(given)) throw invalid('runtime_config.input_artifacts must be a map.');
    for (const [name, value] of Object.entries(given)) {
      if (declared[name] === undefined) throw invalid(`The input artifact ${name} is not found in the pipeline job input definitions.`);
      const id = isDict(value) ? value['artifactId'] : undefined;
      if (typeof id !== 'string' || id === '') throw invalid(`runtime_config.input_artifacts.${name}.artifact_id must be set.`);
      if (id.includes('/')) throw invalid(`runtime_config.input_artifacts.${name}.artifact_id "${id}" must be an artifact id, not a resource name.`);
      if (!fake.artifacts.has(id)) throw new GoogleError(404, 'NOT_FOUND', `Artifact projects/${projectNumber}/locations/${region}/metadataStores/default/artifacts/${id} is not found.`);
    }
    for (const [name, def] of Object.entries(declared)) {
      if (def['isOptional'] !== true && !(name in given)) throw invalid(`The input artifact ${name} is required but no artifact was provided in runtime_config.input_artifacts.`);
    }
  }

  /** Output-only fields a client sends (name, state, createTime, jobDetail, ...) are ignored, as Google does. */
  function validateCreate(id: string | null, body: Record<string, unknown>): { spec: Record<string, unknown>; startFailure?: { code: number; message: string } } {
    if (id !== null && !JOB_ID.test(id)) {
      throw invalid(`Invalid pipeline job id "${id}": it must match the regular expression "[a-z][-a-z0-9]{0,127}" and be less than 128 characters.`);
    }
    if (id !== null && fake.jobs.has(id)) throw new GoogleError(409, 'ALREADY_EXISTS', `PipelineJob ${jobName(id)} already exists.`);
    const displayName = body['displayName'];
    if (displayName !== undefined && (typeof displayName !== 'string' || [...displayName].length > 128)) throw invalid('display_name must be a string of at most 128 characters.');
    const spec = specOf(body);
    const runtime = body['runtimeConfig'] ?? {};
    if (!isDict(runtime)) throw invalid('runtime_config must be a message.');
    const out = runtime['gcsOutputDirectory'];
    if (out === undefined && typeof spec['defaultPipelineRoot'] !== 'string') {
      throw invalid('runtime_config.gcs_output_directory must be set when the pipeline spec has no default pipeline root.');
    }
    if (out !== undefined && (typeof out !== 'string' || !/^gs:\/\/[a-z0-9][-a-z0-9_.]+[a-z0-9](\/.*)?$/.test(out))) {
      throw invalid(`runtime_config.gcs_output_directory "${String(out)}" must be a Cloud Storage path starting with gs://.`);
    }
    const startFailure = checkParameters(spec, runtime);
    checkInputArtifacts(spec, runtime);
    const policy = runtime['failurePolicy'];
    if (policy !== undefined && !['PIPELINE_FAILURE_POLICY_UNSPECIFIED', 'PIPELINE_FAILURE_POLICY_FAIL_SLOW', 'PIPELINE_FAILURE_POLICY_FAIL_FAST'].includes(String(policy))) {
      throw invalid(`Invalid value at 'pipeline_job.runtime_config.failure_policy' (type.googleapis.com/google.cloud.aiplatform.v1.PipelineFailurePolicy), "${String(policy)}"`);
    }
    const sa = body['serviceAccount'];
    if (sa !== undefined) {
      if (typeof sa !== 'string' || !EMAIL.test(sa)) throw invalid(`Service account "${String(sa)}" is not a valid service account email.`);
      if (options.actAs !== undefined && !options.actAs.includes(sa)) {
        throw new GoogleError(403, 'PERMISSION_DENIED', `The caller does not have permission iam.serviceAccounts.actAs on service account ${sa}.`);
      }
    }
    const network = body['network'];
    if (network !== undefined) {
      const m = typeof network === 'string' ? NETWORK.exec(network) : null;
      if (m === null) throw invalid(`Invalid network "${String(network)}": the network must be of the form projects/{project_number}/global/networks/{network_name}.`);
    }
    const labels = body['labels'];
    if (labels !== undefined) {
      if (!isDict(labels)) throw invalid('labels must be a map.');
      const entries = Object.entries(labels);
      if (entries.length > 64) throw invalid(`At most 64 labels are allowed; got ${entries.length}.`);
      for (const [k, v] of entries) {
        if (!LABEL_KEY.test(k)) throw invalid(`Invalid label key "${k}": keys must start with a lowercase letter and contain only lowercase letters, digits, underscores and dashes, at most 64 characters.`);
        if (typeof v !== 'string' || !LABEL_VALUE.test(v)) throw invalid(`Invalid label value "${String(v)}" for key "${k}": values contain only lowercase letters, digits, underscores and dashes, at most 64 characters.`);
      }
    }
    return startFailure === undefined ? { spec } : { spec, startFailure };
  }

  function createJob(id: string | null, body: Record<string, unknown>, schedule?: string): FakeJob {
    const { spec, startFailure } = validateCreate(id, body);
    const jobId = id ?? `pipeline-${Date.now()}`;
    const outcome = fake.nextOutcome ?? {};
    const run = startRun(spec, jobId, outcome);
    const job: FakeJob = {
      id: jobId,
      body,
      spec,
      state: 'PIPELINE_STATE_QUEUED',
      outcome,
      run,
      step: 0,
      tasks: run.tasks,
      createTime: new Date().toISOString(),
      cancelRequested: false,
      gets: 0,
    };
    if (schedule !== undefined) job.schedule = schedule;
    if (startFailure !== undefined) job.startFailure = startFailure;
    fake.nextOutcome = undefined;
    fake.jobs.set(jobId, job);
    // The create is answered with the job QUEUED; it starts right after.
    if (options.execute !== undefined) setImmediate(() => execute(job, options.execute!));
    return job;
  }

  /**
   * QUEUED → RUNNING, with the job's Vertex ML Metadata context (as Vertex creates it when the job starts), or
   * FAILED at once when the job was set to fail to start. False when it did not start.
   */
  function startJob(job: FakeJob, now: string): boolean {
    job.startTime = now;
    if (job.startFailure !== undefined) {
      job.state = 'PIPELINE_STATE_FAILED';
      job.endTime = now;
      job.error = { ...job.startFailure };
      return false;
    }
    if (fake.metadataStoreExists && !fake.contexts.has(job.id)) {
      fake.contexts.set(job.id, { id: job.id, displayName: job.id, schemaTitle: 'system.PipelineRun', schemaVersion: '0.0.1', metadata: {}, parents: [], createTime: now });
    }
    job.state = 'PIPELINE_STATE_RUNNING';
    return true;
  }

  /** Runs the job's containers locally; its state and tasks follow the run. */
  function execute(job: FakeJob, executor: ExecutorOptions): void {
    const now = new Date().toISOString();
    job.startTime = now;
    if (job.cancelRequested) {
      job.state = 'PIPELINE_STATE_CANCELLED';
      job.endTime = now;
      job.error = { code: 1, message: 'CANCELLED' };
      return;
    }
    if (!startJob(job, now)) return;
    const runtime = (job.body['runtimeConfig'] ?? {}) as Record<string, unknown>;
    const execution = new JobExecution(job.spec, {
      jobId: job.id,
      resourceName: jobName(job.id),
      uuid: randomUUID(),
      pipelineRoot: String(runtime['gcsOutputDirectory'] ?? job.spec['defaultPipelineRoot'] ?? ''),
      parameterValues: rootValues(runtime),
      failFast: runtime['failurePolicy'] === 'PIPELINE_FAILURE_POLICY_FAIL_FAST',
    }, executor);
    job.execution = execution;
    job.tasks = execution.tasks;
    void execution.done.then(() => {
      job.endTime = new Date().toISOString();
      if (execution.state === 'CANCELLED' || (job.cancelRequested && execution.state !== 'FAILED')) {
        job.state = 'PIPELINE_STATE_CANCELLED';
        job.error = { code: 1, message: 'CANCELLED' };
      } else if (execution.state === 'SUCCEEDED') {
        job.state = 'PIPELINE_STATE_SUCCEEDED';
      } else {
        job.state = 'PIPELINE_STATE_FAILED';
        const failed = execution.failed.map((t) => t.taskName).join(', ');
        job.error = {
          code: 9,
          message: `The DAG failed because some tasks failed. The failed tasks are: [${failed}].; Job (project_id = ${projectId}, job_id = ${job.id}) is failed due to the above error.; Failed to handle the job: {project_number = ${projectNumber}, job_id = ${job.id}}`,
        };
      }
    });
  }

  // ---------- schedules (projects.locations.schedules) ----------

  const scheduleName = (id: string) => `projects/${projectNumber}/locations/${region}/schedules/${id}`;

  function checkSchedule(body: Record<string, unknown>): void {
    const displayName = body['displayName'];
    if (typeof displayName !== 'string' || displayName === '') throw invalid('schedule.display_name is required.');
    if ([...displayName].length > 128) throw invalid('schedule.display_name must be at most 128 characters.');
    const cron = body['cron'];
    if (typeof cron !== 'string' || cron.trim() === '') throw invalid('schedule.cron is required.');
    checkCron(cron);
    const max = body['maxConcurrentRunCount'];
    if (max === undefined) throw invalid('schedule.max_concurrent_run_count is required.');
    if (!positiveInt64(max)) throw invalid(`schedule.max_concurrent_run_count must be greater than 0; got ${JSON.stringify(max)}.`);
    const maxRuns = body['maxRunCount'];
    if (maxRuns !== undefined && !positiveInt64(maxRuns)) throw invalid(`schedule.max_run_count must be greater than 0; got ${JSON.stringify(maxRuns)}.`);
    for (const field of ['startTime', 'endTime'] as const) {
      const v = body[field];
      if (v !== undefined && (typeof v !== 'string' || !RFC3339.test(v) || Number.isNaN(Date.parse(v)))) {
        throw invalid(`Invalid value at 'schedule.${field === 'startTime' ? 'start_time' : 'end_time'}' (type.googleapis.com/google.protobuf.Timestamp), "${String(v)}"`);
      }
    }
    if (typeof body['startTime'] === 'string' && typeof body['endTime'] === 'string' && Date.parse(body['endTime']) <= Date.parse(body['startTime'])) {
      throw invalid('schedule.end_time must be after schedule.start_time.');
    }
    if (typeof body['endTime'] === 'string' && Date.parse(body['endTime']) <= Date.now()) throw invalid('schedule.end_time must be in the future.');
    if (body['allowQueueing'] !== undefined && typeof body['allowQueueing'] !== 'boolean') throw invalid('schedule.allow_queueing must be a boolean.');
    const request = body['createPipelineJobRequest'];
    if (!isDict(request)) throw invalid('One of schedule.create_pipeline_job_request, ... must be set.');
    const parent = request['parent'];
    const m = typeof parent === 'string' ? /^projects\/([^/]+)\/locations\/([^/]+)$/.exec(parent) : null;
    if (m === null) throw invalid('schedule.create_pipeline_job_request.parent is required (format: projects/{project}/locations/{location}).');
    checkParent(m[1]!, m[2]!, 'aiplatform.pipelineJobs.create');
    if (!isDict(request['pipelineJob'])) throw invalid('schedule.create_pipeline_job_request.pipeline_job is required.');
    // The job the schedule would create is checked now, as Vertex validates it when the schedule is made.
    const jobId = request['pipelineJobId'];
    validateCreate(typeof jobId === 'string' ? jobId : null, request['pipelineJob']);
  }

  function scheduleJson(s: FakeSchedule): Record<string, unknown> {
    const out: Record<string, unknown> = { name: scheduleName(s.id), ...s.body, state: s.state, createTime: s.createTime, updateTime: s.updateTime };
    out['startTime'] = s.body['startTime'] ?? s.createTime;
    out['startedRunCount'] = String(s.startedRunCount);
    out['maxConcurrentRunCount'] = String(s.body['maxConcurrentRunCount']);
    if (s.body['maxRunCount'] !== undefined) out['maxRunCount'] = String(s.body['maxRunCount']);
    if (s.state === 'ACTIVE') out['nextRunTime'] = nextMinute(new Date(Math.max(Date.now(), Date.parse(String(out['startTime'])))));
    if (s.lastScheduledRunResponse !== undefined) out['lastScheduledRunResponse'] = { ...s.lastScheduledRunResponse };
    return out;
  }

  let scheduleSeq = 0;
  async function handleSchedules(req: http.IncomingMessage, u: URL, method: string, body: string): Promise<{ status: number; json: unknown } | undefined> {
    const collection = /^\/v1\/projects\/([^/]+)\/locations\/([^/]+)\/schedules$/.exec(u.pathname);
    if (collection !== null && method === 'POST') {
      checkParent(collection[1]!, collection[2]!, 'aiplatform.schedules.create');
      allow('aiplatform.schedules.create', `projects/${collection[1]}/locations/${collection[2]}`);
      const parsed = jsonBody(req, body);
      checkSchedule(parsed);
      const id = String(BigInt.asUintN(63, BigInt(Date.now()) * 1000n + BigInt(++scheduleSeq)));
      const now = new Date().toISOString();
      // Output-only fields are ignored, as Google ignores them.
      const kept = Object.fromEntries(Object.entries(parsed).filter(([k]) => !['name', 'state', 'createTime', 'updateTime', 'nextRunTime', 'startedRunCount', 'lastPauseTime', 'lastResumeTime', 'lastScheduledRunResponse', 'catchUp'].includes(k)));
      const s: FakeSchedule = { id, body: kept, state: 'ACTIVE', createTime: now, updateTime: now, startedRunCount: 0, jobs: [] };
      fake.schedules.set(id, s);
      return { status: 200, json: scheduleJson(s) };
    }
    if (collection !== null && method === 'GET') {
      checkParent(collection[1]!, collection[2]!, 'aiplatform.schedules.list');
      allow('aiplatform.schedules.list', `projects/${collection[1]}/locations/${collection[2]}`);
      const match = scheduleFilter(u.searchParams.get('filter') ?? '');
      const all = [...fake.schedules.values()].filter(match).sort((a, b) => (a.createTime < b.createTime ? 1 : a.createTime > b.createTime ? -1 : a.id < b.id ? 1 : -1));
      const rawSize = u.searchParams.get('pageSize');
      const size = rawSize === null ? 100 : Number(rawSize);
      if (!Number.isInteger(size) || size < 0) throw invalid(`Invalid page size ${rawSize}.`);
      const pageSize = size === 0 ? 100 : Math.min(size, 100);
      const token = u.searchParams.get('pageToken');
      const offset = token === null || token === '' ? 0 : Number(Buffer.from(token, 'base64url').toString('utf8').replace(/^offset:/, ''));
      if (!Number.isInteger(offset) || offset < 0) throw invalid('Invalid page token.');
      const page = all.slice(offset, offset + pageSize);
      const out: Record<string, unknown> = {};
      if (page.length > 0) out['schedules'] = page.map(scheduleJson);
      if (offset + pageSize < all.length) out['nextPageToken'] = Buffer.from(`offset:${offset + pageSize}`).toString('base64url');
      return { status: 200, json: out };
    }
    const one = /^\/v1\/projects\/([^/]+)\/locations\/([^/]+)\/schedules\/([^/:]+)$/.exec(u.pathname);
    if (one !== null && (method === 'GET' || method === 'DELETE')) {
      const permission = method === 'GET' ? 'aiplatform.schedules.get' : 'aiplatform.schedules.delete';
      checkParent(one[1]!, one[2]!, permission);
      allow(permission, scheduleName(one[3]!));
      const s = fake.schedules.get(one[3]!);
      if (s === undefined) throw new GoogleError(404, 'NOT_FOUND', `Schedule ${scheduleName(one[3]!)} is not found.`);
      if (method === 'GET') return { status: 200, json: scheduleJson(s) };
      fake.schedules.delete(s.id);
      const op = `projects/${projectNumber}/locations/${region}/operations/${++operationSeq}`;
      operations.set(op, { polls: 0, response: { '@type': 'type.googleapis.com/google.protobuf.Empty' } });
      return { status: 200, json: { name: op, metadata: { '@type': 'type.googleapis.com/google.cloud.aiplatform.v1.DeleteOperationMetadata', genericMetadata: { createTime: new Date().toISOString() } }, done: false } };
    }
    return undefined;
  }

  fake.fireSchedule = (id: string, at: Date = new Date()): FakeJob => {
    const s = fake.schedules.get(id);
    if (s === undefined) throw new Error(`no schedule ${id}`);
    if (s.state !== 'ACTIVE') throw new Error(`schedule ${id} is ${s.state}: it starts no run`);
    if (typeof s.body['startTime'] === 'string' && at.getTime() < Date.parse(s.body['startTime'])) throw new Error(`schedule ${id} starts at ${String(s.body['startTime'])}`);
    if (typeof s.body['endTime'] === 'string' && at.getTime() >= Date.parse(s.body['endTime'])) throw new Error(`schedule ${id} ended at ${String(s.body['endTime'])}`);
    const active = s.jobs.filter((j) => !['PIPELINE_STATE_SUCCEEDED', 'PIPELINE_STATE_FAILED', 'PIPELINE_STATE_CANCELLED'].includes(fake.jobs.get(j)?.state ?? '')).length;
    if (active >= Number(s.body['maxConcurrentRunCount']) && s.body['allowQueueing'] !== true) throw new Error(`schedule ${id} already has ${active} runs going (maxConcurrentRunCount): this run is skipped`);
    const request = s.body['createPipelineJobRequest'] as Record<string, unknown>;
    const pipelineJob = structuredClone(request['pipelineJob']) as Record<string, unknown>;
    const spec = specOf(pipelineJob);
    const base = String((spec['pipelineInfo'] as { name?: unknown }).name).slice(0, 100);
    let jobId = typeof request['pipelineJobId'] === 'string' ? request['pipelineJobId'] : `${base}-${stamp(at)}`;
    for (let n = 2; fake.jobs.has(jobId) && typeof request['pipelineJobId'] !== 'string'; n++) jobId = `${base}-${stamp(at)}-${n}`;
    const job = createJob(jobId, pipelineJob, scheduleName(id));
    s.jobs.push(jobId);
    s.startedRunCount++;
    s.lastScheduledRunResponse = { scheduledRunTime: at.toISOString(), runResponse: jobName(jobId) };
    s.updateTime = new Date().toISOString();
    if (s.body['maxRunCount'] !== undefined && s.startedRunCount >= Number(s.body['maxRunCount'])) s.state = 'COMPLETED';
    return job;
  };

  /** One step: QUEUED → RUNNING (the root task) → one task event per step → the job's end. */
  function advance(job: FakeJob): void {
    if (['PIPELINE_STATE_SUCCEEDED', 'PIPELINE_STATE_FAILED', 'PIPELINE_STATE_CANCELLED'].includes(job.state)) return;
    job.step++;
    const now = iso(job, job.step);
    if (job.state === 'PIPELINE_STATE_CANCELLING') {
      cancelRun(job.run, now);
      job.state = 'PIPELINE_STATE_CANCELLED';
      job.endTime = now;
      job.error = { code: 1, message: 'CANCELLED' };
      return;
    }
    if (job.state === 'PIPELINE_STATE_QUEUED') {
      if (job.outcome.stayQueued) {
        job.step--;
        return;
      }
      if (!startJob(job, now)) return;
    }
    const before = job.run.cursor;
    const result = stepRun(job.run, job.outcome, now, () => job.outcome.error ?? 'The replica workerpool0-0 exited with a non-zero status of 1.');
    if (result === 'running' && job.run.cursor === before) job.step--; // held (stayRunning): nothing changed
    if (result === 'running') return;
    job.endTime = now;
    if (result === 'succeeded') {
      job.state = 'PIPELINE_STATE_SUCCEEDED';
      return;
    }
    job.state = 'PIPELINE_STATE_FAILED';
    const failed = job.run.failed.map((t) => t.taskName).join(', ');
    job.error = {
      code: 9,
      message: `The DAG failed because some tasks failed. The failed tasks are: [${failed}].; Job (project_id = ${projectId}, job_id = ${job.id}) is failed due to the above error.; Failed to handle the job: {project_number = ${projectNumber}, job_id = ${job.id}}`,
    };
  }

  function jobJson(job: FakeJob): Record<string, unknown> {
    const updateTime = iso(job, job.step);
    const out: Record<string, unknown> = {
      name: jobName(job.id),
      displayName: job.body['displayName'] ?? job.id,
      createTime: job.createTime,
      updateTime,
      state: job.state,
      runtimeConfig: job.body['runtimeConfig'],
      labels: { ...(job.body['labels'] as Record<string, string> | undefined), 'vertex-ai-pipelines-run-billing-id': '8437716493264371712' },
    };
    out['pipelineSpec'] = job.spec;
    if (job.body['templateUri'] !== undefined) {
      out['templateUri'] = job.body['templateUri'];
      out['templateMetadata'] = { version: `sha256:${createHash('sha256').update(fake.templates.get(String(job.body['templateUri'])) ?? '').digest('hex')}` };
    }
    if (job.body['serviceAccount'] !== undefined) out['serviceAccount'] = job.body['serviceAccount'];
    if (job.body['network'] !== undefined) out['network'] = job.body['network'];
    if (job.startTime) out['startTime'] = job.startTime;
    if (job.endTime) out['endTime'] = job.endTime;
    if (job.error) out['error'] = job.error;
    if (job.tasks.length > 0) {
      out['jobDetail'] = {
        pipelineContext: { name: `projects/${projectNumber}/locations/${region}/metadataStores/default/contexts/${String((job.spec['pipelineInfo'] as { name?: string } | undefined)?.name ?? 'pipeline')}` },
        ...(fake.contexts.get(job.id)?.schemaTitle === 'system.PipelineRun' ? { pipelineRunContext: contextJson(fake.contexts.get(job.id)!) } : {}),
        taskDetails: job.tasks.map((t) => taskJson(t, { projectNumber, region }, updateTime, job.outcome)),
      };
    }
    return out;
  }

  function contextJson(c: FakeContext): Record<string, unknown> {
    const out: Record<string, unknown> = {
      name: fake.contextName(c.id),
      displayName: c.displayName,
      etag: String(c.parents.length + 1),
      createTime: c.createTime,
      updateTime: c.createTime,
      schemaTitle: c.schemaTitle,
      schemaVersion: c.schemaVersion,
      metadata: c.metadata,
    };
    if (c.description !== undefined) out['description'] = c.description;
    if (c.parents.length > 0) out['parentContexts'] = c.parents.map((p) => fake.contextName(p));
    return out;
  }

  function allow(permission: string, resource: string): void {
    if (fake.denied.has(permission)) {
      throw new GoogleError(403, 'PERMISSION_DENIED', `Permission '${permission}' denied on resource '//aiplatform.googleapis.com/${resource}' (or it may not exist).`);
    }
  }

  function jsonBody(req: http.IncomingMessage, body: string): Record<string, unknown> {
    if ((req.headers['content-type'] ?? '').split(';')[0] !== 'application/json') throw invalid('Content-Type must be application/json.');
    let parsed: unknown;
    try {
      parsed = JSON.parse(body);
    } catch {
      throw invalid('Invalid JSON payload received.');
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw invalid('Invalid JSON payload received. Expected an object.');
    return parsed as Record<string, unknown>;
  }

  /** The default store, or NOT_FOUND as Vertex answers for a store that does not exist. */
  function store(project: string, location: string, id: string, permission: string): string {
    checkParent(project, location, permission);
    const name = `projects/${projectNumber}/locations/${region}/metadataStores/${id}`;
    allow(permission, name);
    if (id !== 'default' || !fake.metadataStoreExists) throw new GoogleError(404, 'NOT_FOUND', `MetadataStore ${name} is not found.`);
    return name;
  }

  /** A context resource name in a request → its id in the default store, or INVALID_ARGUMENT. */
  function contextIdOf(name: unknown): string {
    const m = typeof name === 'string' ? /^projects\/([^/]+)\/locations\/([^/]+)\/metadataStores\/([^/]+)\/contexts\/([^/]+)$/.exec(name) : null;
    if (m === null || (m[1] !== projectId && m[1] !== projectNumber) || m[2] !== region || m[3] !== 'default') {
      throw invalid(`Invalid child context name "${String(name)}": expected projects/{project}/locations/${region}/metadataStores/default/contexts/{context}.`);
    }
    return m[4]!;
  }

  function handleMetadata(req: http.IncomingMessage, u: URL, method: string, body: string): { status: number; json: unknown } | undefined {
    const base = '^/v1/projects/([^/]+)/locations/([^/]+)';
    let m = new RegExp(`${base}/metadataStores$`).exec(u.pathname);
    if (m !== null && method === 'POST') {
      checkParent(m[1]!, m[2]!, 'aiplatform.metadataStores.create');
      allow('aiplatform.metadataStores.create', `projects/${m[1]}/locations/${m[2]}`);
      jsonBody(req, body);
      const id = u.searchParams.get('metadataStoreId') ?? 'default';
      if (id !== 'default') throw invalid('The fake only knows the default metadata store.');
      if (fake.metadataStoreExists) throw new GoogleError(409, 'ALREADY_EXISTS', `MetadataStore projects/${projectNumber}/locations/${region}/metadataStores/default already exists.`);
      const op = `projects/${projectNumber}/locations/${region}/operations/${++operationSeq}`;
      operations.set(op, { polls: 0 });
      return { status: 200, json: { name: op, metadata: { '@type': 'type.googleapis.com/google.cloud.aiplatform.v1.CreateMetadataStoreOperationMetadata' } } };
    }
    m = new RegExp(`${base}/operations/([^/]+)$`).exec(u.pathname);
    if (m !== null && method === 'GET') {
      checkParent(m[1]!, m[2]!, 'aiplatform.operations.get');
      const name = `projects/${projectNumber}/locations/${region}/operations/${m[3]}`;
      const op = operations.get(name);
      if (op === undefined) throw new GoogleError(404, 'NOT_FOUND', `Operation ${name} is not found.`);
      // The create answered not-done; the store exists from the first look at the operation on.
      op.polls++;
      if (op.response !== undefined) return { status: 200, json: { name, done: true, response: op.response } };
      fake.metadataStoreExists = true;
      return { status: 200, json: { name, done: true, response: { '@type': 'type.googleapis.com/google.cloud.aiplatform.v1.MetadataStore', name: `projects/${projectNumber}/locations/${region}/metadataStores/default` } } };
    }
    m = new RegExp(`${base}/metadataStores/([^/]+)$`).exec(u.pathname);
    if (m !== null && method === 'GET') {
      const name = store(m[1]!, m[2]!, m[3]!, 'aiplatform.metadataStores.get');
      return { status: 200, json: { name, createTime: '2024-01-01T00:00:00Z', state: {} } };
    }
    m = new RegExp(`${base}/metadataStores/([^/]+)/contexts$`).exec(u.pathname);
    if (m !== null && method === 'POST') {
      store(m[1]!, m[2]!, m[3]!, 'aiplatform.contexts.create');
      const parsed = jsonBody(req, body);
      const id = u.searchParams.get('contextId') ?? `ctx-${++operationSeq}`;
      if (!CONTEXT_ID.test(id)) throw invalid(`Invalid context id "${id}": it must be 4-128 characters of [a-z0-9-].`);
      const title = parsed['schemaTitle'];
      const version = parsed['schemaVersion'];
      if (typeof title !== 'string' || title === '') throw invalid('context.schema_title is required.');
      if (!SYSTEM_SCHEMAS.has(title)) throw invalid(`Schema ${title} is not registered in MetadataStore default.`);
      if (typeof version !== 'string' || !/^\d+\.\d+\.\d+$/.test(version)) throw invalid(`context.schema_version "${String(version)}" must be a version like 0.0.1.`);
      const displayName = parsed['displayName'];
      if (displayName !== undefined && (typeof displayName !== 'string' || displayName.length > 128)) throw invalid('context.display_name must be a string of at most 128 characters.');
      const metadata = parsed['metadata'] ?? {};
      if (typeof metadata !== 'object' || metadata === null || Array.isArray(metadata)) throw invalid('context.metadata must be a struct.');
      // parentContexts is output only: ignored, as Google ignores output-only fields (children join by AddContextChildren).
      if (fake.contexts.has(id)) throw new GoogleError(409, 'ALREADY_EXISTS', `Context ${fake.contextName(id)} already exists.`);
      const c: FakeContext = { id, displayName: typeof displayName === 'string' ? displayName : id, schemaTitle: title, schemaVersion: version, metadata: metadata as Record<string, unknown>, parents: [], createTime: new Date().toISOString() };
      if (typeof parsed['description'] === 'string') c.description = parsed['description'];
      fake.contexts.set(id, c);
      return { status: 200, json: contextJson(c) };
    }
    m = new RegExp(`${base}/metadataStores/([^/]+)/contexts/([^/:]+)(:addContextChildren)?$`).exec(u.pathname);
    if (m !== null) {
      const add = m[5] !== undefined;
      if ((add && method !== 'POST') || (!add && method !== 'GET')) return undefined;
      store(m[1]!, m[2]!, m[3]!, add ? 'aiplatform.contexts.addContextChildren' : 'aiplatform.contexts.get');
      const id = decodeURIComponent(m[4]!);
      const parent = fake.contexts.get(id);
      if (parent === undefined) throw new GoogleError(404, 'NOT_FOUND', `Context ${fake.contextName(id)} is not found.`);
      if (!add) return { status: 200, json: contextJson(parent) };
      const parsed = jsonBody(req, body);
      const children = parsed['childContexts'] ?? [];
      if (!Array.isArray(children)) throw invalid('child_contexts must be a list of context names.');
      const childIds = children.map(contextIdOf);
      for (const childId of childIds) {
        const child = fake.contexts.get(childId);
        if (child === undefined) throw new GoogleError(404, 'NOT_FOUND', `Context ${fake.contextName(childId)} is not found.`);
        if (childId === id) throw invalid(`Context ${fake.contextName(id)} cannot be its own child.`);
        if (parent.parents.includes(childId)) throw invalid(`Adding ${fake.contextName(childId)} as a child of ${fake.contextName(id)} would create a cycle.`);
        if (!child.parents.includes(id) && child.parents.length >= MAX_PARENT_CONTEXTS) throw invalid(`Context ${fake.contextName(childId)} already has ${MAX_PARENT_CONTEXTS} parent contexts.`);
      }
      for (const childId of childIds) {
        const child = fake.contexts.get(childId)!;
        if (!child.parents.includes(id)) child.parents.push(id);
      }
      return { status: 200, json: {} };
    }
    return undefined;
  }

  async function handle(req: http.IncomingMessage, body: string, who: ReturnType<AccessTokenStore['check']>): Promise<{ status: number; json?: unknown; text?: string }> {
    const u = new URL(req.url ?? '/', 'http://vertex');
    const method = req.method ?? 'GET';
    if ('reason' in who) {
      throw new GoogleError(
        401,
        'UNAUTHENTICATED',
        req.headers.authorization === undefined
          ? 'Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or other valid authentication credential.'
          : 'Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.',
      );
    }
    if (u.pathname.startsWith('/kfp/') && method === 'GET') {
      const text = fake.templates.get(`${url}${u.pathname}`);
      if (text === undefined) throw new GoogleError(404, 'NOT_FOUND', 'Requested entity was not found.');
      return { status: 200, text };
    }
    if (u.pathname.includes('/metadataStores') || u.pathname.includes('/operations/')) {
      const answer = handleMetadata(req, u, method, body);
      if (answer !== undefined) return answer;
    }
    const collection = /^\/v1\/projects\/([^/]+)\/locations\/([^/]+)\/pipelineJobs$/.exec(u.pathname);
    if (collection !== null && method === 'POST') {
      checkParent(collection[1]!, collection[2]!, 'aiplatform.pipelineJobs.create');
      if (fake.failNextCreate !== undefined) {
        const f = fake.failNextCreate;
        fake.failNextCreate = undefined;
        throw new GoogleError(f.code, f.status, f.message);
      }
      if ((req.headers['content-type'] ?? '').split(';')[0] !== 'application/json') throw invalid('Content-Type must be application/json.');
      let parsed: unknown;
      try {
        parsed = JSON.parse(body);
      } catch {
        throw invalid('Invalid JSON payload received.');
      }
      if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw invalid('Invalid JSON payload received. Expected an object.');
      const id = u.searchParams.get('pipelineJobId');
      const job = createJob(id, parsed as Record<string, unknown>);
      return { status: 200, json: jobJson(job) };
    }
    const scheduleAnswer = await handleSchedules(req, u, method, body);
    if (scheduleAnswer !== undefined) return scheduleAnswer;
    const one = /^\/v1\/projects\/([^/]+)\/locations\/([^/]+)\/pipelineJobs\/([^/:]+)(:cancel)?$/.exec(u.pathname);
    if (one !== null) {
      const cancel = one[4] !== undefined;
      checkParent(one[1]!, one[2]!, cancel ? 'aiplatform.pipelineJobs.cancel' : 'aiplatform.pipelineJobs.get');
      const job = fake.jobs.get(one[3]!);
      if (job === undefined) throw new GoogleError(404, 'NOT_FOUND', `The PipelineJob "${jobName(one[3]!)}" does not exist.`);
      if (cancel && method === 'POST') {
        if (['PIPELINE_STATE_SUCCEEDED', 'PIPELINE_STATE_FAILED', 'PIPELINE_STATE_CANCELLED'].includes(job.state)) {
          throw new GoogleError(400, 'FAILED_PRECONDITION', `Cannot cancel pipeline job ${jobName(job.id)} because it is in ${job.state} state.`);
        }
        job.cancelRequested = true;
        job.state = 'PIPELINE_STATE_CANCELLING';
        job.execution?.cancel();
        return { status: 200, json: {} };
      }
      if (!cancel && method === 'GET') {
        job.gets++;
        if (options.execute === undefined) advance(job);
        return { status: 200, json: jobJson(job) };
      }
    }
    throw new GoogleError(404, 'NOT_FOUND', `The requested URL ${u.pathname} was not found on this server.`);
  }

  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const who = options.accessTokens.check(req.headers.authorization);
      const caller = 'email' in who ? who.email : undefined;
      void handle(req, Buffer.concat(chunks).toString('utf8'), who).then(
        (r) => {
          const pathname = (req.url ?? '').split('?')[0]!;
          const at = fake.replyFaults.findIndex((f) => f.method === req.method && f.path.test(pathname));
          if (at !== -1) {
            const { fault } = fake.replyFaults.splice(at, 1)[0]!;
            fake.requests.push({ method: req.method ?? '', path: req.url ?? '', status: fault === 'drop' ? 0 : fault, caller });
            if (fault === 'drop') req.socket.destroy();
            else res.writeHead(fault, { 'content-type': 'application/json; charset=UTF-8' }).end(JSON.stringify({ error: { code: fault, message: 'fake reply fault', status: 'UNAVAILABLE' } }));
            return;
          }
          fake.requests.push({ method: req.method ?? '', path: req.url ?? '', status: r.status, caller });
          if (r.text !== undefined) res.writeHead(r.status, { 'content-type': 'application/octet-stream' }).end(r.text);
          else res.writeHead(r.status, { 'content-type': 'application/json; charset=UTF-8' }).end(JSON.stringify(r.json));
          fake.afterAnswer?.({ method: req.method ?? '', path: pathname, status: r.status });
        },
        (err: unknown) => {
          const e = err instanceof GoogleError ? err : new GoogleError(500, 'INTERNAL', `fake failure: ${(err as Error).message}`);
          fake.requests.push({ method: req.method ?? '', path: req.url ?? '', status: e.code, caller });
          res.writeHead(e.code, { 'content-type': 'application/json; charset=UTF-8' }).end(JSON.stringify({ error: { code: e.code, message: e.message, status: e.status } }));
        },
      );
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  fake.port = (server.address() as AddressInfo).port;
  url = `http://127.0.0.1:${fake.port}`;
  fake.url = url;
  fake.close = async () => {
    // Every local run is cancelled and waited for: no step outlives the fake.
    for (const job of fake.jobs.values()) job.execution?.cancel();
    await Promise.all([...fake.jobs.values()].map((job) => job.execution?.done));
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
  };
  return fake;
}

const SYSTEM_TYPES: ReadonlySet<string> = new Set(['TASK_FINAL_STATUS', 'TASK_CONFIG']);

const RFC3339 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/;

/** An int64 field as JSON carries it (a number or a decimal string), above 0. */
function positiveInt64(v: unknown): boolean {
  if (typeof v === 'number') return Number.isSafeInteger(v) && v > 0;
  return typeof v === 'string' && /^\d{1,19}$/.test(v) && BigInt(v) > 0n;
}

const CRON_FIELDS: readonly [string, number, number][] = [
  ['minute', 0, 59],
  ['hour', 0, 23],
  ['day of month', 1, 31],
  ['month', 1, 12],
  ['day of week', 0, 7],
];
const NAMES: Record<string, string> = { jan: '1', feb: '2', mar: '3', apr: '4', may: '5', jun: '6', jul: '7', aug: '8', sep: '9', oct: '10', nov: '11', dec: '12', sun: '0', mon: '1', tue: '2', wed: '3', thu: '4', fri: '5', sat: '6' };

/** Five cron fields (numbers, ranges, steps, lists, names), optionally after `TZ=<zone>` or `CRON_TZ=<zone>`. */
function checkCron(cron: string): void {
  let text = cron.trim();
  const tz = /^(?:CRON_TZ|TZ)=(\S+)\s+/.exec(text);
  if (tz !== null) {
    try {
      new Intl.DateTimeFormat('en', { timeZone: tz[1]! });
    } catch {
      throw new GoogleError(400, 'INVALID_ARGUMENT', `Invalid cron "${cron}": unknown time zone ${tz[1]}.`);
    }
    text = text.slice(tz[0].length);
  }
  const fields = text.split(/\s+/);
  if (fields.length !== 5) throw new GoogleError(400, 'INVALID_ARGUMENT', `Invalid cron "${cron}": expected 5 fields, got ${fields.length}.`);
  fields.forEach((field, i) => {
    const [what, lo, hi] = CRON_FIELDS[i]!;
    for (const part of field.split(',')) {
      const m = /^(\*|[a-z0-9]+(?:-[a-z0-9]+)?)(?:\/(\d+))?$/i.exec(part);
      if (m === null) throw new GoogleError(400, 'INVALID_ARGUMENT', `Invalid cron "${cron}": bad ${what} field "${field}".`);
      if (m[1] === '*') continue;
      for (const n of m[1]!.split('-')) {
        const v = Number(NAMES[n.toLowerCase()] ?? n);
        if (!Number.isInteger(v) || v < lo || v > hi) throw new GoogleError(400, 'INVALID_ARGUMENT', `Invalid cron "${cron}": ${what} ${n} is outside ${lo}-${hi}.`);
      }
    }
  });
}

/** `display_name="x"`, `state=ACTIVE`, joined by AND: the part of the list filter the fake knows; others are refused. */
function scheduleFilter(filter: string): (s: FakeSchedule) => boolean {
  if (filter.trim() === '') return () => true;
  const tests = filter.split(/\s+AND\s+/).map((term) => {
    const m = /^\s*(display_name|state)\s*(=|!=)\s*(?:"((?:[^"\\]|\\.)*)"|(\w+))\s*$/.exec(term);
    if (m === null) throw new GoogleError(400, 'INVALID_ARGUMENT', `Unsupported filter "${filter}".`);
    const value = (m[3] ?? m[4]!).replace(/\\(.)/g, '$1');
    const get = (s: FakeSchedule) => (m[1] === 'state' ? s.state : String(s.body['displayName']));
    return m[2] === '=' ? (s: FakeSchedule) => get(s) === value : (s: FakeSchedule) => get(s) !== value;
  });
  return (s) => tests.every((t) => t(s));
}

function nextMinute(from: Date): string {
  return new Date(Math.floor(from.getTime() / 60_000) * 60_000 + 60_000).toISOString();
}

function stamp(d: Date): string {
  return d.toISOString().replace(/[-:T]/g, '').slice(0, 14);
}

function isDict(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** schemaVersion ≤ 2.0.0, compared as versions (what decides the runtime config's parameter field). */
function atMost200(version: string): boolean {
  const [major = 0, minor = 0, patch = 0] = version.split('.').map((n) => Number(n));
  return major < 2 || (major === 2 && minor === 0 && patch === 0);
}

function jsonType(v: unknown): string {
  if (Array.isArray(v)) return 'list';
  if (v === null) return 'null';
  if (typeof v === 'object') return 'struct';
  return typeof v;
}
