/**
 * The body of `pipelineJobs.create`, built the way the Vertex AI SDK builds it (`aiplatform.PipelineJob` and
 * `pipeline_utils.PipelineRuntimeConfigBuilder`), so what kvx-launch submits is what `PipelineJob(...).submit()`
 * would have submitted for the same inputs.
 */
import { KvxError } from '../errors.js';
import { checkJobId } from './naming.js';
import type { DeclaredParameter, LoadedSpec, PipelineSpec } from './spec.js';
import { isObject } from './spec.js';

export type FailurePolicy = 'PIPELINE_FAILURE_POLICY_FAIL_SLOW' | 'PIPELINE_FAILURE_POLICY_FAIL_FAST';

/** `slow`/`fast` (the SDK's words) or the API's enum names. */
export function failurePolicy(value: string, where = 'failure policy'): FailurePolicy {
  const v = value.trim();
  if (v === 'slow' || v === 'PIPELINE_FAILURE_POLICY_FAIL_SLOW') return 'PIPELINE_FAILURE_POLICY_FAIL_SLOW';
  if (v === 'fast' || v === 'PIPELINE_FAILURE_POLICY_FAIL_FAST') return 'PIPELINE_FAILURE_POLICY_FAIL_FAST';
  throw new KvxError('KVX_LAUNCH_INPUT', `${where} "${value}" is neither "slow" (PIPELINE_FAILURE_POLICY_FAIL_SLOW, the default: independent tasks go on after a failure) nor "fast" (PIPELINE_FAILURE_POLICY_FAIL_FAST: no new task starts after one failed)`);
}

export interface CreateRequestOptions {
  jobId: string;
  /** Defaults to the job id, as kedro-vertexai names jobs. */
  displayName?: string;
  /** gs:// location; when absent the spec's defaultPipelineRoot, then a PipelineJob file's gcsOutputDirectory. */
  pipelineRoot?: string;
  /** As the SDK's enable_caching: undefined keeps the compiled settings; true or false applies to every task. */
  enableCaching?: boolean;
  /** The template the spec was downloaded from (Artifact Registry or https): sent with the spec, as the SDK does. */
  templateUri?: string;
  labels?: Record<string, string>;
  serviceAccount?: string;
  network?: string;
  /** Root input artifact name → artifact id or `projects/.../metadataStores/default/artifacts/<id>`. */
  inputArtifacts?: Record<string, string>;
  failurePolicy?: string;
  /** Where the job runs, to check artifact resource names against. */
  projectId?: string;
  projectNumber?: string;
  region?: string;
}

export interface CreateRequest {
  pipelineJobId: string;
  pipelineJob: Record<string, unknown>;
}

/** A value of `runtimeConfig.parameters` (2.0.0 and older). */
export type LegacyValue = { stringValue: string } | { intValue: string } | { doubleValue: number };

const ARTIFACT_ID = /^[a-z0-9][a-z0-9-]{0,127}$/;
const ARTIFACT_NAME = /^projects\/([^/]+)\/locations\/([^/]+)\/metadataStores\/([^/]+)\/artifacts\/([^/]+)$/;

/**
 * `values` are the typed parameter values (convertParameters); a PipelineJob file's runtimeConfig values are
 * merged under them. Nothing here calls out; every problem is a KvxError before any request is made.
 */
export function buildCreateRequest(loaded: LoadedSpec, values: Record<string, unknown>, options: CreateRequestOptions): CreateRequest {
  const pipelineJobId = checkJobId(options.jobId);
  const displayName = options.displayName ?? pipelineJobId;
  if ([...displayName].length > 128) {
    throw new KvxError('KVX_LAUNCH_INPUT', `display name "${displayName.slice(0, 40)}…" is ${[...displayName].length} characters; Vertex AI takes at most 128 (--display-name)`);
  }
  const job = loaded.jobRuntimeConfig;
  const root = options.pipelineRoot || loaded.spec.defaultPipelineRoot || job?.gcsOutputDirectory;
  if (!root) {
    throw new KvxError('KVX_LAUNCH_INPUT', `no pipeline root for ${loaded.source}: the spec has no defaultPipelineRoot`, {
      hint: 'set vertex.root (run_config.root in vertexai.yml, or --root) to a Cloud Storage path',
    });
  }

  const merged: Record<string, unknown> = { ...job?.parameterValues, ...values };
  const byName = new Map(loaded.parameters.map((p) => [p.name, p]));
  const encoded: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(merged)) {
    // The SDK drops None values; a parameter left out takes its default on the service side.
    if (value === null || value === undefined) continue;
    const p = byName.get(name);
    if (p === undefined) throw new KvxError('KVX_LAUNCH_INPUT', `The pipeline parameter ${name} is not found in the pipeline job input definitions of ${loaded.source}`);
    encoded[name] = loaded.parameterField === 'parameters' ? legacyValue(p, value, loaded.source) : value;
  }

  const runtimeConfig: Record<string, unknown> = { gcsOutputDirectory: root };
  if (Object.keys(encoded).length > 0) runtimeConfig[loaded.parameterField] = encoded;
  const artifacts = inputArtifacts(loaded, options);
  if (Object.keys(artifacts).length > 0) runtimeConfig['inputArtifacts'] = artifacts;
  const policy = options.failurePolicy ?? job?.failurePolicy;
  if (policy !== undefined && policy !== 'PIPELINE_FAILURE_POLICY_UNSPECIFIED') runtimeConfig['failurePolicy'] = failurePolicy(policy);

  const pipelineJob: Record<string, unknown> = {
    displayName,
    pipelineSpec: options.enableCaching === undefined ? loaded.spec : withCaching(loaded.spec, options.enableCaching),
  };
  if (options.labels !== undefined && Object.keys(options.labels).length > 0) pipelineJob['labels'] = { ...options.labels };
  pipelineJob['runtimeConfig'] = runtimeConfig;
  if (options.templateUri !== undefined) pipelineJob['templateUri'] = options.templateUri;
  if (options.serviceAccount) pipelineJob['serviceAccount'] = options.serviceAccount;
  if (options.network) pipelineJob['network'] = options.network;
  return { pipelineJobId, pipelineJob };
}

/**
 * 2.0.0 and older: by the declared `type:`, INT → intValue (int64, which JSON carries as a string), DOUBLE →
 * doubleValue, STRING → stringValue, with booleans, lists and structs as JSON text (the SDK's json.dumps).
 */
export function legacyValue(p: DeclaredParameter, value: unknown, source: string): LegacyValue {
  switch (p.legacyType) {
    case 'INT':
      if (!Number.isSafeInteger(value)) throw new KvxError('KVX_LAUNCH_INPUT', `parameter "${p.name}" of ${source} is INT; ${JSON.stringify(value)} is not a whole number`);
      return { intValue: String(value) };
    case 'DOUBLE':
      if (typeof value !== 'number' || !Number.isFinite(value)) throw new KvxError('KVX_LAUNCH_INPUT', `parameter "${p.name}" of ${source} is DOUBLE; ${JSON.stringify(value)} is not a number`);
      return { doubleValue: value };
    default:
      return { stringValue: typeof value === 'string' ? value : pythonJsonDumps(value) };
  }
}

/**
 * What Python's json.dumps writes (", " and ": " separators, non-ASCII escaped), so values match the SDK's. One
 * difference stays: JavaScript has no float type, so a whole number is written `1` where Python may write `1.0`.
 */
export function pythonJsonDumps(value: unknown): string {
  if (value === null || value === undefined) return 'null';
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  if (typeof value === 'number') return Number.isFinite(value) ? String(value) : Number.isNaN(value) ? 'NaN' : value > 0 ? 'Infinity' : '-Infinity';
  if (typeof value === 'string') return JSON.stringify(value).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  if (Array.isArray(value)) return `[${value.map(pythonJsonDumps).join(', ')}]`;
  if (typeof value === 'object') return `{${Object.entries(value).map(([k, v]) => `${pythonJsonDumps(k)}: ${pythonJsonDumps(v)}`).join(', ')}}`;
  return JSON.stringify(String(value));
}

/** Root input artifacts checked against the spec: unknown names, bad references and missing required ones. */
function inputArtifacts(loaded: LoadedSpec, options: CreateRequestOptions): Record<string, { artifactId: string }> {
  const given = options.inputArtifacts ?? {};
  const declared = new Map(loaded.artifacts.map((a) => [a.name, a]));
  const problems: string[] = [];
  const out: Record<string, { artifactId: string }> = {};
  for (const [name, ref] of Object.entries(given)) {
    if (!declared.has(name)) {
      problems.push(`unknown input artifact "${name}"`);
      continue;
    }
    const id = artifactId(ref, options);
    if (typeof id !== 'string') problems.push(`input artifact ${name}=${ref}: ${id.why}`);
    else out[name] = { artifactId: id };
  }
  for (const a of loaded.artifacts) {
    if (!a.optional && !(a.name in given)) problems.push(`required input artifact "${a.name}" (${a.schemaTitle}) is missing: add --artifact ${a.name}=<artifact id or resource name>`);
  }
  if (problems.length > 0) {
    const list = loaded.artifacts.map((a) => `  ${a.name}: ${a.schemaTitle}${a.isList ? ' (list)' : ''}${a.optional ? ' (optional)' : ' (required)'}`).join('\n') || '  (the pipeline declares no input artifacts)';
    throw new KvxError('KVX_LAUNCH_INPUT', `input artifacts do not match ${loaded.source}:\n  - ${problems.join('\n  - ')}\ndeclared input artifacts:\n${list}`, {
      hint: 'an artifact is named by its Vertex ML Metadata id, or by projects/<project>/locations/<region>/metadataStores/default/artifacts/<id> in the same project and region as the job',
    });
  }
  return out;
}

/**
 * The API takes the id (the last part of the resource name); the artifact must be in the job's project, region
 * and default metadata store.
 */
function artifactId(ref: string, options: CreateRequestOptions): string | { why: string } {
  const m = ARTIFACT_NAME.exec(ref);
  if (m === null) return ARTIFACT_ID.test(ref) ? ref : { why: 'not an artifact id (lower-case letters, digits and dashes) nor projects/<project>/locations/<region>/metadataStores/default/artifacts/<id>' };
  const [, project, location, store, id] = m as unknown as [string, string, string, string, string];
  if (store !== 'default') return { why: `it is in metadata store "${store}"; pipelines read the default store` };
  if (options.region !== undefined && location !== options.region) return { why: `it is in ${location}; the job runs in ${options.region}` };
  const projects = [options.projectId, options.projectNumber].filter((p): p is string => !!p);
  // A project number is what Vertex writes in resource names; without ours known, any number may be it.
  const numberUnknown = options.projectNumber === undefined && /^\d+$/.test(project);
  if (projects.length > 0 && !projects.includes(project) && !numberUnknown) return { why: `it is in project ${project}; the job runs in ${projects.join(' / ')}` };
  if (!ARTIFACT_ID.test(id)) return { why: `"${id}" is not an artifact id` };
  return id;
}

/** What the SDK does for enable_caching (`_set_enable_caching_value`): every task of every DAG, on or off. */
export function withCaching(spec: PipelineSpec, enable: boolean): PipelineSpec {
  const copy = structuredClone(spec);
  const scopes: unknown[] = [copy.root, ...Object.values(copy.components ?? {})];
  for (const scope of scopes) {
    if (!isObject(scope) || !isObject(scope['dag'])) continue;
    const tasks = scope['dag']['tasks'];
    if (!isObject(tasks)) continue;
    for (const task of Object.values(tasks)) if (isObject(task)) task['cachingOptions'] = { enableCache: enable };
  }
  return copy;
}
