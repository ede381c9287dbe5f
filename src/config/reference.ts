import { envNameFor } from './load.js';
import { SCHEMA } from './schema.js';
import type { FieldSpec, Fields } from './schema.js';

/**
 * The configuration reference table (docs/configuration.md), generated from the schema so the two cannot drift
 * (test/unit/readme.test.ts compares them; `npx tsx scripts/config-reference.ts --write` refreshes it).
 */
export function configReferenceMarkdown(): string {
  const rows = ['| key | default | environment | meaning |', '| --- | --- | --- | --- |'];
  for (const [key, spec] of allKeys(SCHEMA, '')) {
    rows.push(`| \`${key}\` | ${defaultCell(spec)} | ${envCell(key, spec)} | ${docOf(spec).replace(/\|/g, '\\|')} |`);
  }
  return rows.join('\n');
}

function* allKeys(spec: Fields, prefix: string): Generator<[string, FieldSpec]> {
  for (const [key, field] of Object.entries(spec)) {
    const path = prefix ? `${prefix}.${key}` : key;
    if (field.kind === 'object') yield* allKeys(field.fields, path);
    else yield [path, field];
  }
}

function envCell(key: string, spec: FieldSpec): string {
  if (key === 'auth.params') return '`KVX_AUTH_PARAMS_<KEY>`';
  if (spec.kind === 'map' || spec.kind === 'list') return '';
  return `\`${envNameFor(key)}\``;
}

function defaultCell(spec: FieldSpec): string {
  switch (spec.kind) {
    case 'map':
      return '`{}`';
    case 'list':
      return '`[]`';
    case 'object':
      return '';
    default: {
      const value = 'default' in spec ? spec.default : undefined;
      if (value === undefined || value === '') return '';
      return `\`${Array.isArray(value) ? `[${value.join(', ')}]` : String(value)}\``;
    }
  }
}

function docOf(spec: FieldSpec): string {
  const doc = spec.doc ?? '';
  if (spec.kind === 'string' && spec.choices) return `${doc} One of: ${spec.choices.join(', ')}.`;
  if (spec.kind === 'list') return `${doc} Item keys: ${Object.keys(spec.item).join(', ')}.`;
  return doc;
}
