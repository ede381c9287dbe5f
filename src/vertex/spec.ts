import { readFile } from 'node:fs/promises';
import YAML from 'yaml';
import { KvxError, errorMessage } from '../errors.js';

/** KFP IR parameter types (PipelineSpec.ParameterType.ParameterTypeEnum). */
export type ParameterType = 'STRING' | 'NUMBER_INTEGER' | 'NUMBER_DOUBLE' | 'BOOLEAN' | 'LIST' | 'STRUCT';

export interface DeclaredParameter {
  name: string;
  type: ParameterType;
  defaultValue?: unknown;
  optional: boolean;
  description?: string;
}

/** The parts of a compiled pipeline (KFP IR PipelineSpec) kvx-launch reads; the rest is sent as is. */
export interface PipelineSpec {
  pipelineInfo: { name: string; description?: string; displayName?: string };
  root: { dag?: { tasks?: Record<string, Record<string, unknown>> }; inputDefinitions?: { parameters?: Record<string, Record<string, unknown>> } };
  components?: Record<string, unknown>;
  deploymentSpec?: Record<string, unknown>;
  schemaVersion: string;
  sdkVersion?: string;
  defaultPipelineRoot?: string;
  [key: string]: unknown;
}

export interface LoadedSpec {
  spec: PipelineSpec;
  /** Where it came from, for messages. */
  source: string;
  parameters: DeclaredParameter[];
}

/** Pre-2.1 IR names for the same types, still found in specs compiled by older KFP SDKs. */
const LEGACY_TYPES: Record<string, ParameterType> = { STRING: 'STRING', INT: 'NUMBER_INTEGER', DOUBLE: 'NUMBER_DOUBLE' };
const PARAMETER_TYPES: readonly ParameterType[] = ['STRING', 'NUMBER_INTEGER', 'NUMBER_DOUBLE', 'BOOLEAN', 'LIST', 'STRUCT'];

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

/** Parses YAML or JSON holding a KFP IR PipelineSpec (or a PipelineJob wrapping one under `pipelineSpec`). */
export function parseSpec(text: string, source: string): LoadedSpec {
  let docs: unknown[];
  try {
    docs = YAML.parseAllDocuments(text).map((d) => {
      if (d.errors.length > 0) throw d.errors[0]!;
      return d.toJS() as unknown;
    });
  } catch (err) {
    throw new KvxError('KVX_LAUNCH_INPUT', `pipeline spec ${source} is not valid YAML or JSON: ${errorMessage(err).split('\n')[0]}`);
  }
  let doc = docs[0];
  if (isObject(doc) && isObject(doc['pipelineSpec'])) doc = doc['pipelineSpec'];
  const problems: string[] = [];
  if (!isObject(doc)) {
    problems.push('the document is not a mapping');
  } else {
    if (!isObject(doc['pipelineInfo']) || typeof doc['pipelineInfo']['name'] !== 'string') problems.push('pipelineInfo.name is missing');
    if (!isObject(doc['root'])) problems.push('root is missing');
    if (typeof doc['schemaVersion'] !== 'string') problems.push('schemaVersion is missing');
    else if (!/^2\./.test(doc['schemaVersion'])) problems.push(`schemaVersion ${doc['schemaVersion']} is not a KFP v2 IR version (2.x)`);
    if (!isObject(doc['deploymentSpec'])) problems.push('deploymentSpec is missing');
  }
  if (problems.length > 0) {
    throw new KvxError('KVX_LAUNCH_INPUT', `pipeline spec ${source} is not a compiled KFP pipeline (KFP IR): ${problems.join('; ')}`, {
      hint: 'compile the pipeline first (`kedro vertexai compile -o pipeline.yaml`, or kfp.compiler.Compiler().compile) and pass that file',
    });
  }
  const spec = doc as PipelineSpec;
  return { spec, source, parameters: declaredParameters(spec, source) };
}

export function declaredParameters(spec: PipelineSpec, source: string): DeclaredParameter[] {
  const raw = spec.root.inputDefinitions?.parameters ?? {};
  const out: DeclaredParameter[] = [];
  for (const [name, def] of Object.entries(raw)) {
    const rawType = String(def['parameterType'] ?? def['type'] ?? '');
    const type = (PARAMETER_TYPES as readonly string[]).includes(rawType) ? (rawType as ParameterType) : LEGACY_TYPES[rawType];
    if (type === undefined) {
      throw new KvxError('KVX_LAUNCH_INPUT', `pipeline spec ${source}: parameter "${name}" has unknown type "${rawType}"`, {
        hint: `KFP IR parameter types are ${PARAMETER_TYPES.join(', ')}; recompile with a current KFP SDK`,
      });
    }
    const p: DeclaredParameter = { name, type, optional: def['isOptional'] === true || def['defaultValue'] !== undefined };
    if (def['defaultValue'] !== undefined) p.defaultValue = def['defaultValue'];
    if (typeof def['description'] === 'string') p.description = def['description'];
    out.push(p);
  }
  return out;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
