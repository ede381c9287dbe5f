import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import path from 'node:path';
import type * as Yaml from 'yaml';
import { ConfigError, errorMessage } from '../errors.js';
import type { ConfigProblem } from '../errors.js';
import { kedroConfDir } from './kedro-mlflow.js';
import { SCHEMA } from './schema.js';
import type { FieldSpec, Fields, KvxConfig } from './schema.js';
import { validateConfig } from './validate.js';
import { egressProblems } from './egress.js';
import { lazyRequire } from '../util/lazy-require.js';

/** One value set from the command line, named by the flag it came from so errors can point at it. */
export interface ConfigOverride {
  path: string;
  value: unknown;
  source: string;
}

export interface LoadOptions {
  /** Config files, later ones win. YAML or JSON; a kedro-vertexai vertexai.yml is recognised. */
  files?: readonly string[];
  env?: NodeJS.ProcessEnv;
  overrides?: readonly ConfigOverride[];
  /** Skip cross-field checks that need a complete config (e.g. upstream.url for `kvx-launch`). */
  require?: { upstream?: boolean };
  /**
   * More checks run on the layered config, so their problems are reported together with the config's own
   * (the CLIs pass provider param validation here; config does not know providers).
   */
  extraChecks?: (config: KvxConfig) => ConfigProblem[];
}

export interface LoadedConfig {
  config: KvxConfig;
  /** Where each non-default value came from: `file:<path>`, `env:<NAME>`, `flag:<--name>`. */
  sources: Map<string, string>;
  /**
   * The folder of the last config file (the working directory without one). Path keys (schema `path`,
   * `pathKeys`) are already absolute; this is for a custom provider's own relative params.
   */
  baseDir: string;
  /** The kedro env folder (conf/<env>) of the config files, where kedro-mlflow's mlflow.yml is looked for. */
  kedroConfDir?: string;
}

type Tree = Record<string, unknown>;

/**
 * Layers defaults → files → KVX_* environment → flags, then validates. Every problem found in any layer is
 * collected and thrown together as one ConfigError, so a user fixes their config in one pass.
 */
export function loadConfig(options: LoadOptions = {}): LoadedConfig {
  const problems: ConfigProblem[] = [];
  const sources = new Map<string, string>();
  const config = defaultsOf(SCHEMA) as unknown as KvxConfig;
  const env = options.env ?? process.env;
  let baseDir = process.cwd();

  for (const file of options.files ?? []) {
    const layer = readConfigFile(file, problems);
    if (layer === undefined) continue;
    baseDir = path.dirname(path.resolve(file));
    mergeLayer(config as unknown as Tree, layer, SCHEMA, '', `file:${file}`, sources, problems, baseDir);
  }

  // Paths from the environment and flags are the user's own words in a shell: relative to where they stand.
  const cwd = process.cwd();
  mergeEnv(config as unknown as Tree, env, sources, problems, cwd);

  for (const o of options.overrides ?? []) {
    if (o.path.startsWith('auth.params.')) {
      const auth = asTree((config as unknown as Tree)['auth']);
      const key = o.path.slice('auth.params.'.length);
      auth['params'] = { ...asTree(auth['params']), ...(resolvePaths(PARAMS_SPEC, { [key]: o.value }, cwd) as Tree) };
      sources.set(o.path, `flag:${o.source}`);
      continue;
    }
    const spec = specAt(o.path);
    if (spec === undefined) {
      problems.push({ path: o.source, message: `sets unknown key ${o.path}` });
      continue;
    }
    const value = coerce(o.value, spec, o.source, problems);
    if (value !== undefined) {
      setAt(config as unknown as Tree, o.path, resolvePaths(spec, value, cwd));
      sources.set(o.path, `flag:${o.source}`);
    }
  }

  problems.push(...validateConfig(config, { requireUpstream: options.require?.upstream ?? true }));
  problems.push(...egressProblems(config, env));
  if (options.extraChecks) problems.push(...options.extraChecks(config));
  if (problems.length > 0) throw new ConfigError(problems);
  const confDir = kedroConfDir(options.files ?? []);
  return { config, sources, baseDir, ...(confDir === undefined ? {} : { kedroConfDir: confDir }) };
}

function readConfigFile(file: string, problems: ConfigProblem[]): Tree | undefined {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    problems.push({ path: `--config ${file}`, message: `cannot read the file (${errnoText(err)}); check the path and permissions` });
    return undefined;
  }
  let doc: unknown;
  try {
    // Loaded on first use: about 25 ms of start-up that runs without a config file do not need.
    doc = (lazyRequire('yaml') as typeof Yaml).parse(text, { prettyErrors: true });
  } catch (err) {
    problems.push({ path: `--config ${file}`, message: `is not valid YAML or JSON: ${errorMessage(err).split('\n')[0]}` });
    return undefined;
  }
  if (doc === null || doc === undefined) return {};
  if (!isPlainObject(doc)) {
    problems.push({ path: `--config ${file}`, message: 'must hold a mapping of keys at the top level' });
    return undefined;
  }
  return isKedroVertexConfig(doc) ? fromKedroVertexConfig(doc, file, problems) : doc;
}

/** kedro-vertexai's file has project_id/region/run_config at the top; kvx's own config has none of them. */
export function isKedroVertexConfig(doc: Tree): boolean {
  return 'run_config' in doc || ('project_id' in doc && 'region' in doc);
}

/**
 * Reads only the keys kvx understands from a vertexai.yml and ignores the rest, as kedro-vertexai does, so
 * the file is used unchanged. A top-level `kvx:` section (which kedro-vertexai ignores) holds kvx config.
 */
function fromKedroVertexConfig(doc: Tree, file: string, problems: ConfigProblem[]): Tree {
  const runConfig = asTree(doc['run_config']);
  const mlflow = asTree(runConfig['mlflow']);
  const network = asTree(runConfig['network']);
  const layer: Tree = isPlainObject(doc['kvx']) ? structuredClone(doc['kvx'] as Tree) : {};
  const vertex: Tree = asTree(layer['vertex']);
  const put = (key: string, value: unknown) => {
    if (value !== undefined && value !== null && vertex[key] === undefined) vertex[key] = String(value);
  };
  put('projectId', doc['project_id']);
  put('region', doc['region']);
  put('experimentName', runConfig['experiment_name']);
  put('root', runConfig['root']);
  put('serviceAccount', runConfig['service_account']);
  put('network', network['vpc']);
  put('experiment', runConfig['experiment']);
  if (Object.keys(vertex).length > 0) layer['vertex'] = vertex;

  const aliases = hostAliasesOf(network['host_aliases'], file, problems);
  if (Object.keys(aliases).length > 0) {
    const egress = asTree(layer['egress']);
    egress['hostAliases'] = { ...aliases, ...asTree(egress['hostAliases']) };
    layer['egress'] = egress;
  }

  const params = mlflow['request_header_provider_params'];
  if (isPlainObject(params)) {
    const auth = asTree(layer['auth']);
    auth['params'] = { ...(params as Tree), ...asTree(auth['params']) };
    layer['auth'] = auth;
  }
  return layer;
}

/**
 * kedro-vertexai's `host_aliases: [{ip, hostnames: [...]}]`, which it writes into the step's /etc/hosts, as
 * egress.hostAliases names: kvx resolves them itself, whatever the order of edits inside the step.
 */
function hostAliasesOf(value: unknown, file: string, problems: ConfigProblem[]): Tree {
  const out: Tree = {};
  if (value === undefined || value === null) return out;
  const at = 'run_config.network.host_aliases';
  if (!Array.isArray(value)) {
    problems.push({ path: at, message: `must be a list of {ip, hostnames} (in ${file})` });
    return out;
  }
  value.forEach((entry: unknown, i) => {
    const item = asTree(entry);
    const ip = item['ip'];
    const hostnames = item['hostnames'];
    if (typeof ip !== 'string' || isIP(ip.trim()) === 0) {
      problems.push({ path: `${at}[${i}].ip`, message: `${ip === undefined ? 'missing' : `"${String(ip)}" is not an IP address`}; give the address the hostnames resolve to (in ${file})` });
      return;
    }
    if (!Array.isArray(hostnames) || hostnames.length === 0 || !hostnames.every((h) => typeof h === 'string' && h.trim() !== '')) {
      problems.push({ path: `${at}[${i}].hostnames`, message: `must be a list of host names (in ${file})` });
      return;
    }
    for (const name of hostnames as string[]) out[name.trim()] = ip.trim();
  });
  return out;
}

function mergeLayer(
  target: Tree,
  layer: Tree,
  spec: Fields,
  prefix: string,
  source: string,
  sources: Map<string, string>,
  problems: ConfigProblem[],
  baseDir: string,
): void {
  for (const [key, value] of Object.entries(layer)) {
    const keyPath = prefix ? `${prefix}.${key}` : key;
    const field = spec[key];
    if (field === undefined) {
      problems.push({ path: keyPath, message: `unknown key${suggest(key, Object.keys(spec))} (in ${source.slice(5)})` });
      continue;
    }
    if (field.kind === 'object') {
      if (!isPlainObject(value)) {
        problems.push({ path: keyPath, message: `must be a mapping of ${Object.keys(field.fields).join(', ')}` });
        continue;
      }
      mergeLayer(asTree((target[key] ??= {})), value as Tree, field.fields, keyPath, source, sources, problems, baseDir);
      continue;
    }
    if (field.kind === 'list') {
      if (!Array.isArray(value)) {
        problems.push({ path: keyPath, message: 'must be a list' });
        continue;
      }
      target[key] = value.map((item, i) => listItem(item, field.item, `${keyPath}[${i}]`, problems, baseDir));
      sources.set(keyPath, source);
      continue;
    }
    const coerced = coerce(value, field, keyPath, problems);
    if (coerced === undefined) continue;
    const resolved = resolvePaths(field, coerced, baseDir);
    target[key] = field.kind === 'map' ? { ...asTree(target[key]), ...(resolved as Tree) } : resolved;
    sources.set(keyPath, source);
  }
}

function listItem(item: unknown, spec: Fields, itemPath: string, problems: ConfigProblem[], baseDir: string): Tree {
  const out: Tree = { params: {} };
  if (!isPlainObject(item)) {
    problems.push({ path: itemPath, message: `must be a mapping of ${Object.keys(spec).join(', ')}` });
    return out;
  }
  for (const [key, value] of Object.entries(item as Tree)) {
    const field = spec[key];
    if (field === undefined) {
      problems.push({ path: `${itemPath}.${key}`, message: `unknown key${suggest(key, Object.keys(spec))}` });
      continue;
    }
    const coerced = coerce(value, field, `${itemPath}.${key}`, problems);
    if (coerced !== undefined) out[key] = resolvePaths(field, coerced, baseDir);
  }
  for (const [key, field] of Object.entries(spec)) {
    if (field.kind === 'string' && field.required && out[key] === undefined) problems.push({ path: `${itemPath}.${key}`, message: `required (${field.doc})` });
  }
  return out;
}

/** A value with the paths it holds made absolute against `dir` (see FieldSpec `path` and `pathKeys`). */
function resolvePaths(spec: FieldSpec, value: unknown, dir: string): unknown {
  if (spec.kind === 'string' && spec.path && typeof value === 'string' && value !== '') return path.resolve(dir, value);
  if (spec.kind === 'map' && spec.pathKeys && isPlainObject(value)) {
    const out: Tree = { ...value };
    for (const [key, v] of Object.entries(value)) if (spec.pathKeys.test(key) && typeof v === 'string' && v !== '') out[key] = path.resolve(dir, v);
    return out;
  }
  return value;
}

const PARAMS_SPEC = SCHEMA.auth.fields.params;

/** `upstream.connectTimeoutMs` ↔ `KVX_UPSTREAM_CONNECT_TIMEOUT_MS`; provider params as `KVX_AUTH_PARAMS_<KEY>`. */
export function envNameFor(keyPath: string): string {
  return 'KVX_' + keyPath.split('.').map((s) => s.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase()).join('_');
}

/** Environment variables kvx reads that are not config keys. */
const NON_KEY_ENV = new Set(['KVX_CONFIG', 'KVX_DEBUG']);
const PARAMS_ENV_PREFIX = 'KVX_AUTH_PARAMS_';

function mergeEnv(config: Tree, env: NodeJS.ProcessEnv, sources: Map<string, string>, problems: ConfigProblem[], cwd: string): void {
  const known = new Map<string, { path: string; spec: FieldSpec }>();
  for (const [keyPath, spec] of leaves(SCHEMA, '')) known.set(envNameFor(keyPath), { path: keyPath, spec });
  for (const [name, raw] of Object.entries(env)) {
    if (!name.startsWith('KVX_') || raw === undefined || NON_KEY_ENV.has(name)) continue;
    if (name.startsWith(PARAMS_ENV_PREFIX) && name.length > PARAMS_ENV_PREFIX.length) {
      const key = name.slice(PARAMS_ENV_PREFIX.length).toLowerCase();
      const auth = asTree(config['auth']);
      auth['params'] = { ...asTree(auth['params']), ...(resolvePaths(PARAMS_SPEC, { [key]: raw }, cwd) as Tree) };
      sources.set(`auth.params.${key}`, `env:${name}`);
      continue;
    }
    const entry = known.get(name);
    if (entry === undefined) {
      problems.push({ path: name, message: `unknown KVX_ environment variable${suggest(name, [...known.keys()])}; unset it or fix its name` });
      continue;
    }
    const value = coerce(raw, entry.spec, name, problems);
    if (value !== undefined) {
      setAt(config, entry.path, resolvePaths(entry.spec, value, cwd));
      sources.set(entry.path, `env:${name}`);
    }
  }
}

function coerce(value: unknown, spec: FieldSpec, where: string, problems: ConfigProblem[]): unknown {
  const fail = (message: string) => {
    problems.push({ path: where, message });
    return undefined;
  };
  switch (spec.kind) {
    case 'string': {
      if (typeof value === 'number' || typeof value === 'boolean') value = String(value);
      if (typeof value !== 'string') return fail(`must be a string, got ${describe(value)}`);
      if (spec.choices && !spec.openChoices && !spec.choices.includes(value)) return fail(`must be one of ${spec.choices.join(', ')}; got "${value}"`);
      return value;
    }
    case 'int': {
      const n = typeof value === 'string' && value.trim() !== '' ? Number(value) : value;
      if (typeof n !== 'number' || !Number.isInteger(n)) return fail(`must be a whole number, got ${describe(value)}`);
      if (spec.min !== undefined && n < spec.min) return fail(`must be at least ${spec.min}, got ${n}`);
      if (spec.max !== undefined && n > spec.max) return fail(`must be at most ${spec.max}, got ${n}`);
      return n;
    }
    case 'bool': {
      if (typeof value === 'boolean') return value;
      if (typeof value === 'string') {
        const v = value.trim().toLowerCase();
        if (['true', '1', 'yes', 'on'].includes(v)) return true;
        if (['false', '0', 'no', 'off', ''].includes(v)) return false;
      }
      return fail(`must be true or false, got ${describe(value)}`);
    }
    case 'stringList': {
      const list = typeof value === 'string' ? splitList(value) : value;
      if (!Array.isArray(list) || !list.every((v) => typeof v === 'string')) return fail(`must be a list of strings, got ${describe(value)}`);
      return list;
    }
    case 'intList': {
      const list = typeof value === 'string' ? splitList(value).map(Number) : value;
      if (!Array.isArray(list) || !list.every((v) => Number.isInteger(v))) return fail(`must be a list of whole numbers, got ${describe(value)}`);
      return list;
    }
    case 'map':
      if (!isPlainObject(value)) return fail(`must be a mapping of keys to values, got ${describe(value)}`);
      return value;
    case 'object':
    case 'list':
      return fail('cannot be set from a single value');
  }
}

function splitList(value: string): string[] {
  return value
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'object') return 'a mapping';
  if (typeof value === 'string') return `"${value.length > 40 ? value.slice(0, 40) + '…' : value}"`;
  return `${typeof value} ${String(value)}`;
}

function defaultsOf(spec: Fields): Tree {
  const out: Tree = {};
  for (const [key, field] of Object.entries(spec)) {
    if (field.kind === 'object') out[key] = defaultsOf(field.fields);
    else if (field.kind === 'map') out[key] = {};
    else if (field.kind === 'list') out[key] = [];
    else if ('default' in field && field.default !== undefined) out[key] = Array.isArray(field.default) ? [...field.default] : field.default;
  }
  return out;
}

export function* leaves(spec: Fields, prefix: string): Generator<[string, FieldSpec]> {
  for (const [key, field] of Object.entries(spec)) {
    const keyPath = prefix ? `${prefix}.${key}` : key;
    if (field.kind === 'object') yield* leaves(field.fields, keyPath);
    else if (field.kind !== 'map' && field.kind !== 'list') yield [keyPath, field];
  }
}

export function specAt(keyPath: string): FieldSpec | undefined {
  let fields: Fields | undefined = SCHEMA;
  let spec: FieldSpec | undefined;
  for (const part of keyPath.split('.')) {
    spec = fields?.[part];
    if (spec === undefined) return undefined;
    fields = spec.kind === 'object' ? spec.fields : undefined;
  }
  return spec;
}

function setAt(tree: Tree, keyPath: string, value: unknown): void {
  const parts = keyPath.split('.');
  let node = tree;
  for (const part of parts.slice(0, -1)) node = asTree((node[part] ??= {}));
  node[parts[parts.length - 1]!] = value;
}

function asTree(value: unknown): Tree {
  return isPlainObject(value) ? (value as Tree) : {};
}

export function isPlainObject(value: unknown): value is Tree {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function errnoText(err: unknown): string {
  const code = (err as { code?: string }).code;
  if (code === 'ENOENT') return 'no such file';
  if (code === 'EACCES') return 'permission denied';
  if (code === 'EISDIR') return 'it is a directory';
  return code ?? errorMessage(err);
}

/** ` (did you mean "x"?)` for near misses, so a typo is a one-second fix. */
function suggest(word: string, candidates: readonly string[]): string {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const c of candidates) {
    const d = distance(word.toLowerCase(), c.toLowerCase());
    if (d < bestDistance) {
      best = c;
      bestDistance = d;
    }
  }
  const allowed = Math.max(2, Math.floor(word.length / 4));
  return best !== undefined && bestDistance <= allowed ? ` (did you mean "${best}"?)` : `; known keys: ${candidates.slice(0, 12).join(', ')}`;
}

function distance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const current = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = current;
    }
  }
  return row[b.length]!;
}
