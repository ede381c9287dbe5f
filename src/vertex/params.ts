import { KvxError } from '../errors.js';
import type { DeclaredParameter, ParameterType } from './spec.js';

/** The parameter kvx-launch fills with the MLflow run id when a pipeline declares it. */
export const MLFLOW_RUN_ID_PARAMETER = 'mlflow_run_id';

const TYPE_NAMES: Record<ParameterType, string> = {
  STRING: 'string',
  NUMBER_INTEGER: 'integer',
  NUMBER_DOUBLE: 'double',
  BOOLEAN: 'boolean',
  LIST: 'list (JSON array)',
  STRUCT: 'struct (JSON object)',
  TASK_FINAL_STATUS: 'task final status',
  TASK_CONFIG: 'task config',
};

const SYSTEM_SET_WHY: Partial<Record<ParameterType, string>> = {
  TASK_FINAL_STATUS: 'the status of the tasks an exit handler guards',
  TASK_CONFIG: 'the configuration of the task that receives it',
};

/** One line per declared parameter, for error messages: `  epochs: integer (default 10)`. */
export function describeParameters(declared: readonly DeclaredParameter[]): string {
  if (declared.length === 0) return '  (the pipeline declares no parameters)';
  return declared
    .map((p) => {
      if (p.systemSet) return `  ${p.name}: ${TYPE_NAMES[p.type]} (set by Vertex AI at run time)`;
      const extra = p.defaultValue !== undefined ? ` (default ${JSON.stringify(p.defaultValue)})` : p.optional ? ' (optional)' : ' (required)';
      const allowed = p.literals !== undefined ? ` one of ${p.literals.map((l) => JSON.stringify(l)).join(', ')}` : '';
      return `  ${p.name}: ${TYPE_NAMES[p.type]}${allowed}${extra}`;
    })
    .join('\n');
}

export interface ConvertOptions {
  mlflowRunId?: string;
  source: string;
  /** Values that apply unless given: the runtimeConfig of a PipelineJob file. */
  preset?: Record<string, unknown>;
}

/**
 * Checks given values against the spec's declared inputs and converts each to its declared type; the result is
 * the preset values with the given ones over them. Every problem is reported at once, followed by the list of
 * declared parameters, so one attempt fixes them all.
 */
export function convertParameters(declared: readonly DeclaredParameter[], given: ReadonlyMap<string, string>, options: ConvertOptions): Record<string, unknown> {
  const byName = new Map(declared.map((p) => [p.name, p]));
  const problems: string[] = [];
  const values: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(options.preset ?? {})) {
    const p = byName.get(name);
    if (p === undefined) {
      problems.push(`the runtimeConfig of ${options.source} sets "${name}", which the pipeline does not declare`);
      continue;
    }
    if (value === null) continue;
    const why = p.systemSet ? 'it is set by Vertex AI at run time' : typeProblem(p, value);
    if (why !== undefined) problems.push(`the runtimeConfig of ${options.source} sets "${name}" to ${JSON.stringify(value)}: ${why}`);
    else values[name] = value;
  }
  for (const [name, raw] of given) {
    const p = byName.get(name);
    if (p === undefined) {
      problems.push(`unknown parameter "${name}"`);
      continue;
    }
    if (name === MLFLOW_RUN_ID_PARAMETER && options.mlflowRunId !== undefined) {
      problems.push(`parameter "${name}" is set by kvx-launch to the MLflow run it creates; remove --param ${name}`);
      continue;
    }
    if (p.systemSet) {
      problems.push(`parameter "${name}" (${TYPE_NAMES[p.type]}) is set by Vertex AI at run time to ${SYSTEM_SET_WHY[p.type] ?? 'a system value'}; remove --param ${name}`);
      continue;
    }
    const converted = convertValue(p.type, raw);
    if (!converted.ok) {
      problems.push(`parameter "${name}" must be ${TYPE_NAMES[p.type]}: ${converted.why}`);
      continue;
    }
    const notAllowed = literalProblem(p, converted.value);
    if (notAllowed !== undefined) problems.push(`parameter "${name}" ${notAllowed}`);
    else values[name] = converted.value;
  }
  if (options.mlflowRunId !== undefined && byName.has(MLFLOW_RUN_ID_PARAMETER)) {
    const p = byName.get(MLFLOW_RUN_ID_PARAMETER)!;
    if (p.type !== 'STRING') problems.push(`parameter "${MLFLOW_RUN_ID_PARAMETER}" is declared as ${TYPE_NAMES[p.type]}; kvx-launch passes the MLflow run id as a string`);
    else values[MLFLOW_RUN_ID_PARAMETER] = options.mlflowRunId;
  }
  for (const p of declared) {
    if (!p.optional && !(p.name in values) && !(p.name === MLFLOW_RUN_ID_PARAMETER && options.mlflowRunId !== undefined)) {
      problems.push(`required parameter "${p.name}" (${TYPE_NAMES[p.type]}) is missing: add --param ${p.name}=<value>`);
    }
  }
  if (problems.length > 0) {
    throw new KvxError('KVX_LAUNCH_INPUT', `pipeline parameters do not match ${options.source}:\n  - ${problems.join('\n  - ')}\ndeclared parameters:\n${describeParameters(declared)}`);
  }
  return values;
}

/** Why a plain (JSON) value does not fit the parameter, or undefined when it does. */
function typeProblem(p: DeclaredParameter, value: unknown): string | undefined {
  // 2.0.0 STRING parameters take anything: the SDK sends booleans, lists and dicts as JSON text.
  if (p.legacyType === 'STRING') return undefined;
  const ok =
    (p.type === 'STRING' && typeof value === 'string') ||
    (p.type === 'NUMBER_INTEGER' && Number.isSafeInteger(value)) ||
    (p.type === 'NUMBER_DOUBLE' && typeof value === 'number' && Number.isFinite(value)) ||
    (p.type === 'BOOLEAN' && typeof value === 'boolean') ||
    (p.type === 'LIST' && Array.isArray(value)) ||
    (p.type === 'STRUCT' && typeof value === 'object' && value !== null && !Array.isArray(value));
  return ok ? literalProblem(p, value) : `it must be ${TYPE_NAMES[p.type]}`;
}

/** KFP `literals`: the value must be one of them (numbers compare by value, so 7 matches 7.0). */
function literalProblem(p: DeclaredParameter, value: unknown): string | undefined {
  if (p.literals === undefined) return undefined;
  const same = (a: unknown) => (typeof a === 'number' && typeof value === 'number' ? a === value : JSON.stringify(a) === JSON.stringify(value));
  if (p.literals.some(same)) return undefined;
  return `must be one of ${p.literals.map((l) => JSON.stringify(l)).join(', ')}; got ${JSON.stringify(value)}`;
}

type Converted = { ok: true; value: unknown } | { ok: false; why: string };

export function convertValue(type: ParameterType, raw: string): Converted {
  const text = raw.trim();
  switch (type) {
    case 'TASK_FINAL_STATUS':
    case 'TASK_CONFIG':
      return { ok: false, why: 'it is set by Vertex AI at run time' };
    case 'STRING':
      return { ok: true, value: raw };
    case 'NUMBER_INTEGER': {
      if (!/^[-+]?\d+$/.test(text)) return { ok: false, why: `"${raw}" is not a whole number` };
      const n = Number(text);
      if (!Number.isSafeInteger(n)) return { ok: false, why: `${text} is too large to pass exactly` };
      return { ok: true, value: n };
    }
    case 'NUMBER_DOUBLE': {
      const n = text === '' ? Number.NaN : Number(text);
      if (!Number.isFinite(n)) return { ok: false, why: `"${raw}" is not a finite number` };
      return { ok: true, value: n };
    }
    case 'BOOLEAN': {
      const v = text.toLowerCase();
      if (v === 'true' || v === '1') return { ok: true, value: true };
      if (v === 'false' || v === '0') return { ok: true, value: false };
      return { ok: false, why: `"${raw}" is not true or false` };
    }
    case 'LIST':
    case 'STRUCT': {
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch {
        return { ok: false, why: `"${raw}" is not valid JSON, e.g. ${type === 'LIST' ? '\'["a", 1]\'' : '\'{"key": "value"}\''}` };
      }
      const isList = Array.isArray(parsed);
      const isStruct = typeof parsed === 'object' && parsed !== null && !isList;
      if (type === 'LIST' && !isList) return { ok: false, why: `"${raw}" is JSON but not an array` };
      if (type === 'STRUCT' && !isStruct) return { ok: false, why: `"${raw}" is JSON but not an object` };
      return { ok: true, value: parsed };
    }
  }
}
