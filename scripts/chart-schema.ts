/**
 * Keeps the Helm chart's `config` schema identical to kvx's own config schema, so `helm install` rejects an
 * unknown or mistyped config key with the same rules the proxy applies at start.
 *
 *   npx tsx scripts/chart-schema.ts          rewrite charts/kvx-proxy/values.schema.json
 *   npx tsx scripts/chart-schema.ts --check  exit 1 when the file is out of date
 */
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { SCHEMA } from '../src/config/schema.js';
import type { FieldSpec, Fields } from '../src/config/schema.js';

/** Keys the chart sets itself (the pod's listen and admin addresses); users set `ports` instead. */
export const CHART_OWNED_CONFIG_KEYS = ['listen', 'admin'] as const;

export const VALUES_SCHEMA_PATH = fileURLToPath(new URL('../charts/kvx-proxy/values.schema.json', import.meta.url));

type JsonSchema = Record<string, unknown>;

export function configJsonSchema(): JsonSchema {
  const fields = Object.fromEntries(Object.entries(SCHEMA).filter(([key]) => !(CHART_OWNED_CONFIG_KEYS as readonly string[]).includes(key)));
  return {
    ...objectSchema(fields),
    description: 'kvx configuration rendered into the ConfigMap (listen and admin are set by the chart from `ports`).',
  };
}

function objectSchema(fields: Fields, required: string[] = []): JsonSchema {
  const schema: JsonSchema = {
    type: 'object',
    additionalProperties: false,
    properties: Object.fromEntries(Object.entries(fields).map(([key, spec]) => [key, fieldSchema(spec)])),
  };
  if (required.length > 0) schema['required'] = required;
  return schema;
}

function fieldSchema(spec: FieldSpec): JsonSchema {
  const described = (schema: JsonSchema): JsonSchema => (spec.doc ? { ...schema, description: spec.doc } : schema);
  switch (spec.kind) {
    case 'string':
      return described(spec.choices ? { type: 'string', enum: [...spec.choices] } : { type: 'string' });
    case 'int': {
      const schema: JsonSchema = { type: 'integer' };
      if (spec.min !== undefined) schema['minimum'] = spec.min;
      if (spec.max !== undefined) schema['maximum'] = spec.max;
      return described(schema);
    }
    case 'bool':
      return described({ type: 'boolean' });
    case 'stringList':
      return described({ type: 'array', items: { type: 'string' } });
    case 'intList':
      return described({ type: 'array', items: { type: 'integer' } });
    case 'map':
      return described({ type: 'object' });
    case 'object':
      return described(objectSchema(spec.fields));
    case 'list':
      return described({
        type: 'array',
        items: objectSchema(
          spec.item,
          Object.entries(spec.item).flatMap(([key, field]) => (field.kind === 'string' && field.required ? [key] : [])),
        ),
      });
  }
}

export function renderValuesSchema(current: string): string {
  const schema = JSON.parse(current) as { properties: Record<string, unknown> };
  schema.properties['config'] = configJsonSchema();
  return JSON.stringify(schema, null, 2) + '\n';
}

function main(argv: string[]): number {
  const current = readFileSync(VALUES_SCHEMA_PATH, 'utf8');
  const wanted = renderValuesSchema(current);
  if (argv.includes('--check')) {
    if (current === wanted) return 0;
    process.stderr.write(`${path.relative(process.cwd(), VALUES_SCHEMA_PATH)} is out of date with src/config/schema.ts; run: npx tsx scripts/chart-schema.ts\n`);
    return 1;
  }
  if (current !== wanted) writeFileSync(VALUES_SCHEMA_PATH, wanted);
  return 0;
}

if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exitCode = main(process.argv.slice(2));
}
