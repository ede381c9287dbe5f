/**
 * MLflow's search grammar for `runs/search` and `experiments/search`, the subset clients use: `filter` is
 * `identifier comparator value` clauses joined by AND (no OR, as in MLflow); `order_by` is `identifier [ASC|DESC]`.
 *
 * An identifier is `entity.key` (entity `tags`, `params`, `metrics`, `attributes` or one of MLflow's aliases) or a
 * bare attribute key; keys with other characters are quoted with backticks or double quotes. Values are quoted
 * strings or numbers; IN and NOT IN take a parenthesised list. Metrics and time attributes compare as numbers,
 * everything else as strings. An entity without the key never matches, whatever the comparator.
 */
import { invalid } from './protocol.js';
import type { MlflowError } from './protocol.js';
import { latestMetric } from './store.js';
import type { Experiment, Run } from './store.js';

export type Scalar = string | number;

export type EntityKind = 'tags' | 'params' | 'metrics' | 'attributes';

/** What a kind of entity can be searched by. */
export interface SearchFields<T> {
  /** Throws MLflow's error for an identifier this entity has no such field for. */
  validate(kind: EntityKind, key: string): void;
  /** The field's value, undefined when the entity does not have it. */
  value(entity: T, kind: EntityKind, key: string): Scalar | undefined;
}

const RUN_ATTRIBUTES = ['run_id', 'run_name', 'status', 'user_id', 'artifact_uri', 'start_time', 'end_time', 'created', 'Created', 'lifecycle_stage'];

const EXPERIMENT_ATTRIBUTES = ['name', 'creation_time', 'last_update_time', 'experiment_id'];

const invalidAttribute = (key: string, valid: readonly string[]): MlflowError =>
  invalid(`Invalid attribute key '${key}' specified. Valid keys are '${valid.join("', '")}'`);

function validateRunKey(kind: EntityKind, key: string): void {
  if (kind === 'attributes' && !RUN_ATTRIBUTES.includes(key)) throw invalidAttribute(key, RUN_ATTRIBUTES);
}

export const RUN_FIELDS: SearchFields<Run> = {
  validate: validateRunKey,
  value(r, kind, key) {
    switch (kind) {
      case 'tags':
        return r.tags.get(key);
      case 'params':
        return r.params.get(key);
      case 'metrics': {
        const history = r.metrics.get(key);
        // MLflow filters on the value it reports: the highest step's, not the last logged.
        return history === undefined ? undefined : latestMetric(history).value;
      }
      case 'attributes': {
        validateRunKey(kind, key);
        const k = key === 'created' || key === 'Created' ? 'start_time' : key;
        return (r.info as unknown as Record<string, Scalar | undefined>)[k];
      }
    }
  },
};

function validateExperimentKey(kind: EntityKind, key: string): void {
  if (kind === 'tags') return;
  if (kind !== 'attributes' || !EXPERIMENT_ATTRIBUTES.includes(key)) throw invalidAttribute(key, EXPERIMENT_ATTRIBUTES);
}

export const EXPERIMENT_FIELDS: SearchFields<Experiment> = {
  validate: validateExperimentKey,
  value(e, kind, key) {
    if (kind === 'tags') return e.tags.get(key);
    validateExperimentKey(kind, key);
    return (e as unknown as Record<string, Scalar>)[key];
  },
};

/** MLflow's entity names and their aliases (SearchUtils._VALID_IDENTIFIERS, without datasets). */
const ENTITY_ALIASES: Record<string, EntityKind> = {
  tag: 'tags',
  tags: 'tags',
  param: 'params',
  params: 'params',
  parameter: 'params',
  parameters: 'params',
  metric: 'metrics',
  metrics: 'metrics',
  attribute: 'attributes',
  attributes: 'attributes',
  attr: 'attributes',
  run: 'attributes',
};

const TOKEN =
  /\s*(?:(?<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")|(?<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)(?![\w.])|(?<op>!=|>=|<=|=|>|<)|(?<punct>[(),])|(?<ident>[A-Za-z_]\w*(?:\.(?:`[^`]*`|"[^"]*"|[\w.]+))?|`[^`]*`))/y;

interface Token {
  type: 'str' | 'num' | 'op' | 'punct' | 'ident';
  text: string;
}

function tokenize(filter: string): Token[] {
  const tokens: Token[] = [];
  let pos = 0;
  while (pos < filter.length) {
    if (/^\s*$/.test(filter.slice(pos))) break;
    TOKEN.lastIndex = pos;
    const m = TOKEN.exec(filter);
    if (m === null || m.groups === undefined) throw invalid(`Invalid filter '${filter}'. Could not be parsed near position ${pos}.`);
    const [type, text] = Object.entries(m.groups).find(([, v]) => v !== undefined) as [Token['type'], string];
    tokens.push({ type, text });
    pos = TOKEN.lastIndex;
  }
  return tokens;
}

const isValue = (t: Token | undefined): t is Token => t !== undefined && (t.type === 'str' || t.type === 'num');

const scalar = (t: Token): Scalar => (t.type === 'num' ? Number(t.text) : unquote(t.text));

function unquote(text: string): string {
  if ((text.startsWith("'") && text.endsWith("'")) || (text.startsWith('"') && text.endsWith('"')) || (text.startsWith('`') && text.endsWith('`'))) {
    return text.slice(1, -1).replace(/\\(.)/g, '$1');
  }
  return text;
}

function likeToRegExp(pattern: string, insensitive: boolean): RegExp {
  const body = pattern.replace(/[.*+?^${}()|[\]\\]/g, '\\$&').replace(/%/g, '.*').replace(/_/g, '.');
  return new RegExp(`^${body}$`, insensitive ? 'is' : 's');
}

/** The test one comparator applies to a field's value, built once per clause. */
function comparison(op: string, wanted: Scalar[]): (actual: Scalar) => boolean {
  const want = wanted[0]!;
  switch (op) {
    case '=':
      return (actual) => actual === want;
    case '!=':
      return (actual) => actual !== want;
    case '>':
      return (actual) => actual > want;
    case '>=':
      return (actual) => actual >= want;
    case '<':
      return (actual) => actual < want;
    case '<=':
      return (actual) => actual <= want;
    case 'LIKE':
    case 'ILIKE': {
      const pattern = likeToRegExp(String(want), op === 'ILIKE');
      return (actual) => pattern.test(String(actual));
    }
    case 'IN':
      return (actual) => wanted.includes(actual);
    default: // NOT IN: the parser yields no other comparator
      return (actual) => !wanted.includes(actual);
  }
}

export function compileFilter<T>(filter: string, fields: SearchFields<T>): (entity: T) => boolean {
  const tokens = tokenize(filter);
  if (tokens.length === 0) return () => true;
  const bad = (why: string): MlflowError => invalid(`Invalid filter '${filter}': ${why}`);
  const clauses: ((entity: T) => boolean)[] = [];
  let i = 0;
  while (i < tokens.length) {
    const ident = tokens[i++];
    if (ident?.type !== 'ident') throw bad('expected an identifier such as tags.name, params.name, metrics.name or attributes.status');
    const dot = ident.text.indexOf('.');
    let kind: EntityKind = 'attributes';
    let key = unquote(ident.text);
    if (dot !== -1 && !ident.text.startsWith('`')) {
      const prefix = ident.text.slice(0, dot);
      const alias = ENTITY_ALIASES[prefix];
      if (alias === undefined) throw bad(`invalid entity type '${prefix}'`);
      kind = alias;
      key = unquote(ident.text.slice(dot + 1));
    }
    let op = tokens[i++];
    if (op === undefined) throw bad('expected a comparator');
    let opText = op.text.toUpperCase();
    if (op.type === 'ident' && opText === 'NOT') {
      op = tokens[i++];
      if (op?.text.toUpperCase() !== 'IN') throw bad('expected IN after NOT');
      opText = 'NOT IN';
    } else if (op.type === 'ident' && !['LIKE', 'ILIKE', 'IN'].includes(opText)) {
      throw bad(`invalid comparator '${op.text}'`);
    } else if (op.type !== 'ident' && op.type !== 'op') {
      throw bad(`invalid comparator '${op.text}'`);
    }
    let values: Scalar[];
    if (opText === 'IN' || opText === 'NOT IN') {
      if (tokens[i++]?.text !== '(') throw bad(`expected '(' after ${opText}`);
      values = [];
      for (;;) {
        const v = tokens[i++];
        if (!isValue(v)) throw bad('expected a value list');
        values.push(scalar(v));
        const sep = tokens[i++];
        if (sep?.text === ')') break;
        if (sep?.text !== ',') throw bad("expected ',' or ')'");
      }
    } else {
      const v = tokens[i++];
      if (!isValue(v)) throw bad('expected a quoted string or a number as value');
      values = [scalar(v)];
    }
    const numeric = kind === 'metrics' || (kind === 'attributes' && /time|created/i.test(key));
    const test = comparison(opText, values.map((v) => (numeric ? Number(v) : String(v))));
    fields.validate(kind, key);
    clauses.push((entity) => {
      const raw = fields.value(entity, kind, key);
      return raw !== undefined && test(numeric ? Number(raw) : String(raw));
    });
    if (i < tokens.length) {
      const and = tokens[i++];
      if (and?.type !== 'ident' || and.text.toUpperCase() !== 'AND') throw bad('clauses must be joined with AND');
      if (i >= tokens.length) throw bad('dangling AND');
    }
  }
  return (entity) => clauses.every((c) => c(entity));
}

/**
 * `order_by` for runs. MLflow's order follows the given keys, then start_time DESC, then run_id; runs without a
 * key sort after those with it in either direction.
 */
export function compileRunOrder(orderBy: string[]): (a: Run, b: Run) => number {
  const keys = orderBy.map((clause) => {
    const m = /^\s*(?:(attributes?|metrics?|params?|tags?)\.)?`?([\w.]+)`?\s*(ASC|DESC)?\s*$/i.exec(clause);
    if (m === null) throw invalid(`Invalid order_by clause '${clause}'. Could not be parsed.`);
    const kind = ENTITY_ALIASES[(m[1] ?? 'attributes').toLowerCase()]!;
    return { kind, key: m[2]!, desc: (m[3] ?? 'ASC').toUpperCase() === 'DESC' };
  });
  keys.push({ kind: 'attributes', key: 'start_time', desc: true });
  return (a, b) => {
    for (const k of keys) {
      const va = RUN_FIELDS.value(a, k.kind, k.key);
      const vb = RUN_FIELDS.value(b, k.kind, k.key);
      if (va === vb) continue;
      if (va === undefined) return 1;
      if (vb === undefined) return -1;
      const cmp = va < vb ? -1 : 1;
      return k.desc ? -cmp : cmp;
    }
    return a.info.run_id < b.info.run_id ? -1 : 1;
  };
}
