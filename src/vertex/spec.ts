import { readFile } from 'node:fs/promises';
import { KvxError, errorMessage } from '../errors.js';
import { YamlReadError, readYaml } from './yaml.js';

/** KFP IR parameter types (PipelineSpec.ParameterType.ParameterTypeEnum). */
export type ParameterType = 'STRING' | 'NUMBER_INTEGER' | 'NUMBER_DOUBLE' | 'BOOLEAN' | 'LIST' | 'STRUCT' | 'TASK_FINAL_STATUS' | 'TASK_CONFIG';

/**
 * Types whose values the system sets at run time: an exit handler's view of the tasks it guards
 * (`dsl.PipelineTaskFinalStatus`) and a task's own configuration (`dsl.TaskConfig`). Never asked from the caller.
 */
export const SYSTEM_PARAMETER_TYPES: ReadonlySet<ParameterType> = new Set(['TASK_FINAL_STATUS', 'TASK_CONFIG']);

/** Where a spec's runtime parameter values go in `runtimeConfig`: 2.0.0 and older take `parameters`. */
export type ParameterField = 'parameters' | 'parameterValues';

/** The pre-2.1 IR primitive types (`type:`), which is what `runtimeConfig.parameters` carries. */
export type LegacyType = 'STRING' | 'INT' | 'DOUBLE';

export interface DeclaredParameter {
  name: string;
  type: ParameterType;
  /** For 2.0.0 specs: the declared `type:`, which decides the `{stringValue|intValue|doubleValue}` field. */
  legacyType?: LegacyType;
  defaultValue?: unknown;
  optional: boolean;
  /** The allowed values (`typing.Literal` inputs, KFP 2.12+). */
  literals?: unknown[];
  /** Set by the system at run time (SYSTEM_PARAMETER_TYPES); not a caller's input. */
  systemSet: boolean;
  description?: string;
}

/** A root input artifact (`root.inputDefinitions.artifacts`), passed by id in `runtimeConfig.inputArtifacts`. */
export interface DeclaredArtifact {
  name: string;
  schemaTitle: string;
  optional: boolean;
  isList: boolean;
  description?: string;
}

/** The parts of a compiled pipeline (KFP IR PipelineSpec) kvx-launch reads; the rest is sent as is. */
export interface PipelineSpec {
  pipelineInfo: { name: string; description?: string; displayName?: string };
  root: {
    dag?: { tasks?: Record<string, Record<string, unknown>> };
    inputDefinitions?: { parameters?: Record<string, Record<string, unknown>>; artifacts?: Record<string, Record<string, unknown>> };
  };
  components?: Record<string, unknown>;
  deploymentSpec?: Record<string, unknown>;
  schemaVersion: string;
  sdkVersion?: string;
  defaultPipelineRoot?: string;
  [key: string]: unknown;
}

/** The `runtimeConfig` of a whole PipelineJob file, decoded; merged under the caller's values. */
export interface JobFileRuntimeConfig {
  gcsOutputDirectory?: string;
  /** Plain values: `{"intValue": "3"}` became 3, `{"stringValue": "x"}` became "x". */
  parameterValues: Record<string, unknown>;
  failurePolicy?: string;
}

export interface LoadedSpec {
  spec: PipelineSpec;
  /** Where it came from, for messages. */
  source: string;
  parameters: DeclaredParameter[];
  artifacts: DeclaredArtifact[];
  parameterField: ParameterField;
  /** Present when the file is a PipelineJob (`{pipelineSpec, runtimeConfig}`), as the KFP 1.x compiler wrote. */
  jobRuntimeConfig?: JobFileRuntimeConfig;
  /** What was read leniently or ignored, for the caller to print. */
  warnings: string[];
}

const PARAMETER_TYPES: readonly ParameterType[] = ['STRING', 'NUMBER_INTEGER', 'NUMBER_DOUBLE', 'BOOLEAN', 'LIST', 'STRUCT', 'TASK_FINAL_STATUS', 'TASK_CONFIG'];
const LEGACY_TYPES: Record<LegacyType, ParameterType> = { STRING: 'STRING', INT: 'NUMBER_INTEGER', DOUBLE: 'NUMBER_DOUBLE' };

export async function loadSpecFile(file: string): Promise<LoadedSpec> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    const code = (err as { code?: string }).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'it is a directory' : code === 'EACCES' ? 'permission denied' : errorMessage(err);
    throw new KvxError('KVX_LAUNCH_INPUT', `cannot read pipeline spec ${file}: ${why}`, {
      hint: 'pass the file written by `kedro vertexai compile` (pipeline.yaml) or a template URI',
    });
  }
  return parseSpec(text, file);
}

const isPipelineDoc = (d: unknown): boolean =>
  isObject(d) && (isObject(d['pipelineSpec']) || (isObject(d['pipelineInfo']) && isObject(d['root']) && isObject(d['deploymentSpec'])));

/**
 * Parses YAML (as PyYAML reads it) or JSON holding a KFP IR PipelineSpec, or a PipelineJob wrapping one under
 * `pipelineSpec`. In a multi-document file the pipeline document is used and the others are reported as ignored.
 */
export function parseSpec(text: string, source: string): LoadedSpec {
  let docs: unknown[];
  const warnings: string[] = [];
  try {
    const read = readYaml(text);
    docs = read.documents;
    for (const w of read.warnings) warnings.push(`${source}: ${w}`);
  } catch (err) {
    const why = err instanceof YamlReadError ? err.message : errorMessage(err).split('\n')[0];
    throw new KvxError('KVX_LAUNCH_INPUT', `pipeline spec ${source} is not valid YAML or JSON: ${why}`);
  }
  const present = docs.map((d, i) => ({ d, n: i + 1 })).filter(({ d }) => d !== null && d !== undefined);
  const pipelines = present.filter(({ d }) => isPipelineDoc(d));
  if (pipelines.length > 1) {
    throw new KvxError('KVX_LAUNCH_INPUT', `pipeline spec ${source} holds ${pipelines.length} pipeline documents (documents ${pipelines.map((p) => p.n).join(', ')}); kvx-launch submits one`, {
      hint: 'split the file, one compiled pipeline per file',
    });
  }
  const chosen = pipelines[0] ?? present[0];
  if (chosen !== undefined && present.length > 1) {
    for (const { d, n } of present) {
      if (n === chosen.n) continue;
      const keys = isObject(d) ? Object.keys(d) : [];
      const what = isObject(d) && isObject(d['platforms']) ? `a KFP platform spec (platforms: ${Object.keys(d['platforms']).join(', ')}), which Vertex AI does not use` : `not a pipeline spec${keys.length > 0 ? ` (keys: ${keys.slice(0, 5).join(', ')})` : ''}`;
      warnings.push(`${source}: document ${n} of ${docs.length} ignored: ${what}`);
    }
  }
  let doc = chosen?.d;
  let jobRuntimeConfig: JobFileRuntimeConfig | undefined;
  let runtimeRaw: unknown;
  if (isObject(doc) && isObject(doc['pipelineSpec'])) {
    runtimeRaw = doc['runtimeConfig'] ?? {};
    doc = doc['pipelineSpec'];
  }
  const problems: string[] = [];
  if (!isObject(doc)) {
    problems.push('the document is not a mapping');
  } else {
    if (!isObject(doc['pipelineInfo']) || typeof doc['pipelineInfo']['name'] !== 'string') problems.push('pipelineInfo.name is missing');
    if (!isObject(doc['root'])) problems.push('root is missing');
    if (typeof doc['schemaVersion'] !== 'string') problems.push('schemaVersion is missing');
    else if (parseVersion(doc['schemaVersion']) === undefined || parseVersion(doc['schemaVersion'])![0] !== 2) problems.push(`schemaVersion ${doc['schemaVersion']} is not a KFP v2 IR version (2.x)`);
    if (!isObject(doc['deploymentSpec'])) problems.push('deploymentSpec is missing');
  }
  if (problems.length > 0) {
    throw new KvxError('KVX_LAUNCH_INPUT', `pipeline spec ${source} is not a compiled KFP pipeline (KFP IR): ${problems.join('; ')}`, {
      hint: 'compile the pipeline first (`kedro vertexai compile -o pipeline.yaml`, or kfp.compiler.Compiler().compile) and pass that file',
    });
  }
  const spec = doc as PipelineSpec;
  const parameterField = parameterFieldFor(spec.schemaVersion);
  const parameters = declaredParameters(spec, source);
  if (runtimeRaw !== undefined) jobRuntimeConfig = decodeJobRuntimeConfig(runtimeRaw, source);
  const loaded: LoadedSpec = { spec, source, parameters, artifacts: declaredArtifacts(spec, source), parameterField, warnings };
  if (jobRuntimeConfig !== undefined) loaded.jobRuntimeConfig = jobRuntimeConfig;
  return loaded;
}

function parseVersion(v: string): [number, number, number] | undefined {
  const m = /^(\d+)\.(\d+)(?:\.(\d+))?$/.exec(v.trim());
  return m === null ? undefined : [Number(m[1]), Number(m[2]), Number(m[3] ?? 0)];
}

/** As the Vertex AI SDK decides (PipelineRuntimeConfigBuilder): `parameterValues` for schemaVersion > 2.0.0. */
export function parameterFieldFor(schemaVersion: string): ParameterField {
  const [major, minor, patch] = parseVersion(schemaVersion) ?? [2, 1, 0];
  return major > 2 || (major === 2 && (minor > 0 || patch > 0)) ? 'parameterValues' : 'parameters';
}

export function declaredParameters(spec: PipelineSpec, source: string): DeclaredParameter[] {
  const raw = spec.root.inputDefinitions?.parameters ?? {};
  const legacy = parameterFieldFor(spec.schemaVersion) === 'parameters';
  const out: DeclaredParameter[] = [];
  const problems: string[] = [];
  for (const [name, def] of Object.entries(raw)) {
    if (!isObject(def)) {
      problems.push(`parameter "${name}" is not a mapping`);
      continue;
    }
    const rawType = String(def['parameterType'] ?? def['type'] ?? '');
    let type: ParameterType | undefined;
    let legacyType: LegacyType | undefined;
    if (legacy) {
      // The SDK maps only these to {stringValue|intValue|doubleValue}; anything else has no 2.0.0 runtime form.
      if (rawType in LEGACY_TYPES) {
        legacyType = rawType as LegacyType;
        type = LEGACY_TYPES[legacyType];
      } else {
        problems.push(
          `parameter "${name}" is declared as "${rawType}", but schemaVersion ${spec.schemaVersion} passes values in runtimeConfig.parameters, which carry only STRING, INT and DOUBLE (KFP 1.x declares booleans, lists and dicts as STRING)`,
        );
        continue;
      }
    } else {
      type = (PARAMETER_TYPES as readonly string[]).includes(rawType) ? (rawType as ParameterType) : rawType in LEGACY_TYPES ? LEGACY_TYPES[rawType as LegacyType] : undefined;
      if (type === undefined) {
        problems.push(`parameter "${name}" has unknown type "${rawType}" (KFP IR parameter types are ${PARAMETER_TYPES.join(', ')})`);
        continue;
      }
    }
    const systemSet = SYSTEM_PARAMETER_TYPES.has(type);
    const p: DeclaredParameter = { name, type, optional: systemSet || def['isOptional'] === true || def['defaultValue'] !== undefined, systemSet };
    if (legacyType !== undefined) p.legacyType = legacyType;
    if (def['defaultValue'] !== undefined) p.defaultValue = def['defaultValue'];
    if (def['literals'] !== undefined) {
      if (!Array.isArray(def['literals'])) problems.push(`parameter "${name}": literals must be a list of allowed values`);
      else p.literals = def['literals'];
    }
    if (typeof def['description'] === 'string') p.description = def['description'];
    out.push(p);
  }
  if (problems.length > 0) {
    throw new KvxError('KVX_LAUNCH_INPUT', `pipeline spec ${source} declares parameters kvx-launch cannot pass:\n  - ${problems.join('\n  - ')}`, {
      hint: 'check root.inputDefinitions.parameters; recompiling with the KFP SDK that wrote the rest of the spec gives consistent declarations',
    });
  }
  return out;
}

export function declaredArtifacts(spec: PipelineSpec, source: string): DeclaredArtifact[] {
  const raw = spec.root.inputDefinitions?.artifacts ?? {};
  if (!isObject(raw)) throw new KvxError('KVX_LAUNCH_INPUT', `pipeline spec ${source}: root.inputDefinitions.artifacts is not a mapping`);
  return Object.entries(raw).map(([name, def]) => {
    const d = isObject(def) ? def : {};
    const type = isObject(d['artifactType']) ? d['artifactType'] : {};
    const a: DeclaredArtifact = {
      name,
      schemaTitle: typeof type['schemaTitle'] === 'string' ? type['schemaTitle'] : 'system.Artifact',
      optional: d['isOptional'] === true,
      isList: d['isArtifactList'] === true,
    };
    if (typeof d['description'] === 'string') a.description = d['description'];
    return a;
  });
}

/**
 * A PipelineJob file's runtimeConfig as the SDK reads it (`_parse_runtime_parameters`): `parameterValues` when
 * present, else `parameters` decoded from `{intValue|doubleValue|stringValue}`.
 */
function decodeJobRuntimeConfig(raw: unknown, source: string): JobFileRuntimeConfig {
  if (!isObject(raw)) throw new KvxError('KVX_LAUNCH_INPUT', `pipeline job file ${source}: runtimeConfig is not a mapping`);
  const out: JobFileRuntimeConfig = { parameterValues: {} };
  const problems: string[] = [];
  if (raw['gcsOutputDirectory'] !== undefined) {
    if (typeof raw['gcsOutputDirectory'] !== 'string') problems.push('runtimeConfig.gcsOutputDirectory is not a string');
    else out.gcsOutputDirectory = raw['gcsOutputDirectory'];
  }
  if (raw['failurePolicy'] !== undefined) out.failurePolicy = String(raw['failurePolicy']);
  const values = raw['parameterValues'];
  const legacy = raw['parameters'];
  if (values !== undefined && values !== null) {
    if (!isObject(values)) problems.push('runtimeConfig.parameterValues is not a mapping');
    else out.parameterValues = { ...values };
  } else if (legacy !== undefined && legacy !== null) {
    if (!isObject(legacy)) problems.push('runtimeConfig.parameters is not a mapping');
    else {
      for (const [name, v] of Object.entries(legacy)) {
        if (isObject(v) && v['intValue'] !== undefined) {
          const n = Number(v['intValue']);
          if (!Number.isSafeInteger(n)) problems.push(`runtimeConfig.parameters.${name}.intValue "${String(v['intValue'])}" is not an integer`);
          else out.parameterValues[name] = n;
        } else if (isObject(v) && v['doubleValue'] !== undefined) {
          const n = Number(v['doubleValue']);
          if (!Number.isFinite(n)) problems.push(`runtimeConfig.parameters.${name}.doubleValue is not a number`);
          else out.parameterValues[name] = n;
        } else if (isObject(v) && v['stringValue'] !== undefined) {
          out.parameterValues[name] = String(v['stringValue']);
        } else {
          problems.push(`runtimeConfig.parameters.${name} holds none of intValue, doubleValue, stringValue`);
        }
      }
    }
  }
  if (problems.length > 0) throw new KvxError('KVX_LAUNCH_INPUT', `pipeline job file ${source}:\n  - ${problems.join('\n  - ')}`);
  return out;
}

export function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
