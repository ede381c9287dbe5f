/**
 * kedro-mlflow's `conf/<env>/mlflow.yml`, the one place kvx finds and reads it, for what decides where a kedro
 * step's MLflow calls go and where it looks for its run:
 *
 * - `server.mlflow_tracking_uri`: kedro-mlflow calls `mlflow.set_tracking_uri()` with it in every step; when it is
 *   null it takes MLFLOW_TRACKING_URI from the environment (else `mlruns`). So a fixed value sends the step's calls
 *   past the `kvx-proxy exec` the step runs behind, and null (or `${oc.env:MLFLOW_TRACKING_URI}`) goes through it.
 *   An http(s) URL there (or the default of that interpolation) is also the MLflow server kvx uses when nothing
 *   else names one (src/config/mlflow-env.ts).
 * - `tracking.experiment.name`: the steps' kedro-mlflow sets it before resuming MLFLOW_RUN_ID, and MLflow refuses
 *   a run of another experiment, so the run kvx makes must be in it. `tracking.run.name` names the run
 *   (kedro-mlflow renames it to the pipeline's name otherwise).
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import type * as Yaml from 'yaml';
import { ConfigError, KvxError, errorMessage } from '../errors.js';
import { lazyRequire } from '../util/lazy-require.js';

export interface KedroMlflowSettings {
  /** tracking.experiment.name */
  experimentName?: string;
  /** tracking.run.name */
  runName?: string;
  /** server.mlflow_tracking_uri as written (absent when null or unset), and the file that set it. */
  trackingUri?: { value: string; file: string };
  /** The files read, base first. */
  files: string[];
  /** Values left alone (OmegaConf interpolations kvx cannot resolve). */
  warnings: string[];
}

/** The key, as kedro-mlflow's documentation and errors name it. */
export const TRACKING_URI_KEY = 'server.mlflow_tracking_uri';

type Dict = Record<string, unknown>;
const isDict = (value: unknown): value is Dict => typeof value === 'object' && value !== null && !Array.isArray(value);

/**
 * The settings of `mlflow.yml` in `confDir` (the folder of the vertexai.yml given, conf/<env>), over those of
 * `conf/base/mlflow.yml` as Kedro layers environments. Nothing when there is no such file.
 */
export function readKedroMlflow(confDir: string): KedroMlflowSettings {
  const out: KedroMlflowSettings = { files: [], warnings: [] };
  const own = path.join(confDir, 'mlflow.yml');
  const base = path.join(path.dirname(confDir), 'base', 'mlflow.yml');
  // Only in a Kedro layout (conf/<env>): elsewhere a sibling `base` folder is not the project's.
  const files = isKedroLayout(confDir) && path.basename(confDir) !== 'base' && existsSync(base) ? [base, own] : [own];
  for (const file of files) {
    if (!existsSync(file)) continue;
    let doc: unknown;
    try {
      // YAML 1.1 and a repeated key keeping its last value, as PyYAML (under OmegaConf) reads the file.
      doc = (lazyRequire('yaml') as typeof Yaml).parse(readFileSync(file, 'utf8'), { version: '1.1', uniqueKeys: false });
    } catch (err) {
      throw new KvxError('KVX_LAUNCH_INPUT', `cannot read kedro-mlflow's ${file}: ${errorMessage(err).split('\n')[0]}`, {
        hint: 'fix the file, or move it away if kedro-mlflow does not use it',
      });
    }
    out.files.push(file);
    const tracking = isDict(doc) && isDict(doc['tracking']) ? doc['tracking'] : {};
    const take = (section: string, key: 'experimentName' | 'runName', where: string) => {
      const value = isDict(tracking[section]) ? tracking[section]['name'] : undefined;
      if (typeof value !== 'string' || value.trim() === '') return;
      if (value.includes('${')) {
        out.warnings.push(`${file}: ${where} "${value}" is an interpolation kvx does not resolve; ignored`);
        return;
      }
      out[key] = value;
    };
    take('experiment', 'experimentName', 'tracking.experiment.name');
    take('run', 'runName', 'tracking.run.name');
    if (isDict(doc) && 'server' in doc) {
      // kedro's OmegaConfigLoader merges environments destructively by default: an env's `server` section replaces
      // conf/base's whole, so a URI set only there is gone (and a null overrides it).
      delete out.trackingUri;
      const value = isDict(doc['server']) ? doc['server']['mlflow_tracking_uri'] : undefined;
      if (value !== undefined && value !== null && String(value).trim() !== '') out.trackingUri = { value: String(value).trim(), file };
    }
  }
  return out;
}

/** conf/<env>: the folder's parent is the project's `conf`. */
function isKedroLayout(confDir: string): boolean {
  return path.basename(path.dirname(confDir)) === 'conf';
}

/**
 * The kedro env folder (conf/<env>) of the config files given: that of the last one named vertexai.yml, else of
 * the last file. Where mlflow.yml is looked for.
 */
export function kedroConfDir(files: readonly string[]): string | undefined {
  const chosen = [...files].reverse().find((f) => /(^|[/\\])vertexai\.ya?ml$/.test(f)) ?? files[files.length - 1];
  return chosen === undefined ? undefined : path.dirname(path.resolve(chosen));
}

/** `${oc.env:MLFLOW_TRACKING_URI}`, optionally with a default: `${oc.env:MLFLOW_TRACKING_URI,https://…}`. */
const FROM_ENV = /^\$\{\s*oc\.env\s*:\s*MLFLOW_TRACKING_URI\s*(?:,\s*(.*?)\s*)?\}$/s;

export type TrackingUriKind =
  /** A fixed http(s) URL: the steps call it directly. */
  | { kind: 'url'; url: string }
  /** Read from MLFLOW_TRACKING_URI (what kvx-proxy exec sets); `fallback` is the interpolation's http(s) default. */
  | { kind: 'env'; fallback?: string }
  /** Another interpolation, which kvx cannot resolve. */
  | { kind: 'interpolation' }
  /** A path, `file:`, `databricks`, …: not an MLflow server kvx can stand in front of. */
  | { kind: 'other' };

export function classifyTrackingUri(value: string): TrackingUriKind {
  const env = FROM_ENV.exec(value);
  if (env !== null) {
    const fallback = env[1]?.replace(/^(['"])(.*)\1$/s, '$2');
    return fallback !== undefined && isHttpUrl(fallback) ? { kind: 'env', fallback } : { kind: 'env' };
  }
  if (value.includes('${')) return { kind: 'interpolation' };
  return isHttpUrl(value) ? { kind: 'url', url: value } : { kind: 'other' };
}

const isHttpUrl = (value: string): boolean => /^https?:\/\/[^\s]+$/i.test(value) && URL.canParse(value);

/**
 * The MLflow server mlflow.yml names for kvx when nothing else does: a fixed http(s) URL, or the default of
 * `${oc.env:MLFLOW_TRACKING_URI,<url>}`.
 */
export function kedroMlflowServer(settings: KedroMlflowSettings): { url: string; file: string } | undefined {
  if (settings.trackingUri === undefined) return undefined;
  const kind = classifyTrackingUri(settings.trackingUri.value);
  const url = kind.kind === 'url' ? kind.url : kind.kind === 'env' ? kind.fallback : undefined;
  return url === undefined ? undefined : { url, file: settings.trackingUri.file };
}

/** The fix, in the words of kedro-mlflow's own template and of kedro's OmegaConfigLoader. */
export const TRACKING_URI_FIX =
  `set ${TRACKING_URI_KEY} to null (kedro-mlflow then uses MLFLOW_TRACKING_URI, which kvx-proxy exec points at the proxy) and name the server ` +
  'as kvx.upstream.url in vertexai.yml; or, to keep it in mlflow.yml, write ${oc.env:MLFLOW_TRACKING_URI,<its URL>} and register the ' +
  'oc.env resolver in settings.py (CONFIG_LOADER_ARGS = {"custom_resolvers": {"oc.env": oc.env}}, from omegaconf.resolvers import oc): ' +
  "kedro's OmegaConfigLoader resolves oc.env only in credentials";

/**
 * Why the steps of a kedro env would not go through the kvx-proxy they run behind: mlflow.yml's tracking URI is
 * fixed (kedro-mlflow sets it over the MLFLOW_TRACKING_URI the proxy gives), or an interpolation kvx cannot read.
 * `fatal` when kvx knows the steps bypass it; a warning when it cannot tell.
 */
export interface ProxyBypass {
  file: string;
  value: string;
  fatal: boolean;
  /** What happens and the fix, to follow `<file> server.mlflow_tracking_uri "<value>"`. */
  reason: string;
}

export function proxyBypass(settings: KedroMlflowSettings): ProxyBypass | undefined {
  const uri = settings.trackingUri;
  if (uri === undefined) return undefined;
  const kind = classifyTrackingUri(uri.value);
  if (kind.kind === 'env') return undefined;
  if (kind.kind === 'interpolation') {
    return { ...uri, fatal: false, reason: `is an interpolation kvx does not resolve: the steps go through kvx-proxy only if it resolves to MLFLOW_TRACKING_URI; if not, ${TRACKING_URI_FIX}` };
  }
  const goes = kind.kind === 'url' ? 'straight to that server, past the kvx-proxy each step runs behind (so without its credentials)' : 'to that store, not to the MLflow server behind the kvx-proxy each step runs behind';
  return { ...uri, fatal: true, reason: `kedro-mlflow calls mlflow.set_tracking_uri() with it in every step, so their MLflow calls would go ${goes}; ${TRACKING_URI_FIX}` };
}

/**
 * The mlflow.yml bypasses of the kedro envs an adapted pipeline's steps run with: conf/<env> beside `confDir`
 * (the vertexai.yml's folder) in a Kedro layout, else `confDir` alone. One per file.
 */
export function stepProxyBypasses(confDir: string, envs: readonly string[]): ProxyBypass[] {
  const dirs = isKedroLayout(confDir) && envs.length > 0 ? [...new Set(envs)].map((env) => path.join(path.dirname(confDir), env)) : [confDir];
  const found = new Map<string, ProxyBypass>();
  for (const dir of dirs) {
    const bypass = proxyBypass(readKedroMlflow(dir));
    if (bypass !== undefined && !found.has(bypass.file)) found.set(bypass.file, bypass);
  }
  return [...found.values()];
}

/**
 * Refuses an adapted pipeline whose steps would go around kvx-proxy (a fixed tracking URI in their mlflow.yml),
 * naming the file, the key and the fix; warns of one kvx cannot tell.
 */
export function refuseProxyBypass(confDir: string | undefined, envs: readonly string[], warn: (message: string) => void): void {
  if (confDir === undefined) return;
  const bypasses = stepProxyBypasses(confDir, envs);
  for (const b of bypasses.filter((x) => !x.fatal)) warn(`${b.file}: ${TRACKING_URI_KEY} "${b.value}" ${b.reason}`);
  const fatal = bypasses.filter((b) => b.fatal);
  if (fatal.length > 0) throw new ConfigError(fatal.map((b) => ({ path: `${TRACKING_URI_KEY} in ${b.file}`, message: `"${b.value}": ${b.reason}` })));
}
