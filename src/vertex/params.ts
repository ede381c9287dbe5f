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
};

/** One line per declared parameter, for error messages: `  epochs: integer (default 10)`. */
export function describeParameters(declared: readonly DeclaredParameter[]): string {
  if (declared.length === 0) return '  (the pipeline declares no parameters)';
  return declared
    .map((p) => {
      const extra = p.defaultValue !== undefined ? ` (default ${JSON.stringify(p.defaultValue)})` : p.optional ? ' (optional)' : ' (required)';
      return `  ${p.name}: ${TYPE_NAMES[p.type]}${extra}`;
    })
    .join('\n');
}

/**
 * Checks given values against the spec's declared inputs and converts each to its declared type. Every problem
 * is reported at once, followed by the list of declared parameters, so one attempt fixes them all.
 */
export function convertParameters(
  declared: readonly DeclaredParameter[],
  given: ReadonlyMap<string, string>,
  options: { mlflowRunId?: string; source: string },
): Record<string, unknown> {
  const byName = new Map(declared.map((p) => [p.name, p]));
  const problems: string[] = [];
  const values: Record<string, unknown> = {};
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
    const converted = convertValue(p.type, raw);
    if (converted.ok) values[name] = converted.value;
    else problems.push(`parameter "${name}" must be ${TYPE_NAMES[p.type]}: ${converted.why}`);
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

type Converted = { ok: true; value: unknown } | { ok: false; why: string };

export function convertValue(type: ParameterType, raw: string): Converted {
  const text = raw.trim();
  switch (type) {
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
