/**
 * A fake MLflow tracking server (2.x REST API with `--serve-artifacts`) on 127.0.0.1:0.
 *
 * Faithful where clients can tell: paths, methods, query/body parameter names (run_id and run_uuid), response
 * shapes (empty repeated fields omitted, as MLflow's protobuf JSON does), error bodies
 * `{"error_code","message"}` with MLflow's status mapping, Content-Type checks on POST, artifact bodies streamed
 * to and from files (never buffered). A `gate` in front of every request plays the auth layer.
 */
import { createHash, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, mkdir, readdir, rename, rm, stat, unlink } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';

export interface GateResult {
  status: number;
  body?: string;
  headers?: Record<string, string>;
}

export type Gate = (req: http.IncomingMessage) => GateResult | null | Promise<GateResult | null>;

export interface RecordedRequest {
  method: string;
  /** Path with query, as received (before the base path is stripped). */
  path: string;
  headers: http.IncomingHttpHeaders;
  bodyBytes: number;
  /** 0 when the client went away before an answer was sent. */
  status: number;
}

export interface KeyValue {
  key: string;
  value: string;
}

export interface Metric {
  key: string;
  value: number;
  timestamp: number;
  step: number;
}

export interface Experiment {
  experiment_id: string;
  name: string;
  artifact_location: string;
  lifecycle_stage: 'active' | 'deleted';
  creation_time: number;
  last_update_time: number;
  tags: Map<string, string>;
}

export type RunStatus = 'RUNNING' | 'SCHEDULED' | 'FINISHED' | 'FAILED' | 'KILLED';

export interface Run {
  info: {
    run_id: string;
    run_name: string;
    experiment_id: string;
    user_id: string;
    status: RunStatus;
    start_time: number;
    end_time?: number;
    artifact_uri: string;
    lifecycle_stage: 'active' | 'deleted';
  };
  params: Map<string, string>;
  tags: Map<string, string>;
  /** Full history per key, in logging order. */
  metrics: Map<string, Metric[]>;
}

export interface LoggedModel {
  model_id: string;
  experiment_id: string;
  name: string;
  source_run_id?: string;
  creation_timestamp_ms: number;
  lifecycle_stage: 'active' | 'deleted';
}

export class FakeMlflowStore {
  readonly experiments = new Map<string, Experiment>();
  readonly runs = new Map<string, Run>();
  readonly loggedModels = new Map<string, LoggedModel>();
  private nextExperimentId = 1;

  constructor() {
    this.reset();
  }

  reset(): void {
    this.experiments.clear();
    this.runs.clear();
    this.loggedModels.clear();
    this.nextExperimentId = 1;
    const now = Date.now();
    // Every MLflow backend starts with the Default experiment, id 0.
    this.experiments.set('0', {
      experiment_id: '0',
      name: 'Default',
      artifact_location: 'mlflow-artifacts:/0',
      lifecycle_stage: 'active',
      creation_time: now,
      last_update_time: now,
      tags: new Map(),
    });
  }

  experimentByName(name: string): Experiment | undefined {
    for (const e of this.experiments.values()) if (e.name === name) return e;
    return undefined;
  }

  runsIn(experimentId: string): Run[] {
    return [...this.runs.values()].filter((r) => r.info.experiment_id === experimentId);
  }

  createExperiment(name: string, tags: KeyValue[] = [], artifactLocation?: string): Experiment {
    const id = String(this.nextExperimentId++);
    const now = Date.now();
    const exp: Experiment = {
      experiment_id: id,
      name,
      artifact_location: artifactLocation ?? `mlflow-artifacts:/${id}`,
      lifecycle_stage: 'active',
      creation_time: now,
      last_update_time: now,
      tags: new Map(tags.map((t) => [t.key, t.value])),
    };
    this.experiments.set(id, exp);
    return exp;
  }
}

/**
 * A fault on the reply to a REST call the server has carried out (`POST runs/create`): `drop` closes the
 * connection without an answer (a reply lost on the way), a status answers that status instead of the result
 * (a proxy's 502 after the server acted).
 */
export interface ReplyFault {
  method: string;
  /** The endpoint after /api/2.0/mlflow/, e.g. `runs/create`. */
  endpoint: string;
  fault: 'drop' | number;
}

export interface FakeMlflow {
  url: string;
  port: number;
  store: FakeMlflowStore;
  requests: RecordedRequest[];
  /** Used up in order: each applies once, to the next matching call. */
  replyFaults: ReplyFault[];
  /** Directory artifacts are stored in. */
  artifactRoot: string;
  reset(): Promise<void>;
  close(): Promise<void>;
}

export interface FakeMlflowOptions {
  gate?: Gate;
  /** Prefix the server is mounted under, e.g. '/mlflow'. */
  basePath?: string;
  version?: string;
}

/** MLflow's mapping of error codes to HTTP statuses (mlflow/protos/databricks.proto users). */
const ERROR_STATUS: Record<string, number> = {
  INVALID_PARAMETER_VALUE: 400,
  BAD_REQUEST: 400,
  MALFORMED_REQUEST: 400,
  INVALID_STATE: 400,
  RESOURCE_ALREADY_EXISTS: 400,
  RESOURCE_DOES_NOT_EXIST: 404,
  ENDPOINT_NOT_FOUND: 404,
  PERMISSION_DENIED: 403,
  UNAUTHENTICATED: 401,
  INTERNAL_ERROR: 500,
  TEMPORARILY_UNAVAILABLE: 503,
};

class MlflowError extends Error {
  constructor(
    readonly errorCode: string,
    message: string,
    readonly status = ERROR_STATUS[errorCode] ?? 500,
  ) {
    super(message);
  }
}

const missing = (name: string): MlflowError =>
  new MlflowError(
    'INVALID_PARAMETER_VALUE',
    `Missing value for required parameter '${name}'. See the API docs for more information about request parameters.`,
  );

const RUN_STATUSES: readonly RunStatus[] = ['RUNNING', 'SCHEDULED', 'FINISHED', 'FAILED', 'KILLED'];
const MAX_TAG_VALUE = 8000;
const MAX_PARAM_VALUE = 6000;
const MAX_ENTITY_KEY = 250;
const KEY_PATTERN = /^[/\w.\- ]*$/;
const ADJECTIVES = ['bright', 'calm', 'bold', 'clever', 'gentle', 'merry', 'quiet', 'swift'];
const NOUNS = ['fox', 'owl', 'hare', 'wren', 'lynx', 'crane', 'otter', 'finch'];

interface ApiRequest {
  method: string;
  query: URLSearchParams;
  body: Record<string, unknown>;
  /** Remainder of the path after a route prefix that takes a path (artifacts, logged-models/<id>). */
  rest: string;
}

type Handler = (req: ApiRequest) => unknown | Promise<unknown>;

interface Route {
  method: 'GET' | 'POST' | 'PATCH' | 'DELETE';
  handler: Handler;
}

export async function startFakeMlflow(options: FakeMlflowOptions = {}): Promise<FakeMlflow> {
  const basePath = (options.basePath ?? '').replace(/\/+$/, '');
  const version = options.version ?? '2.12.2';
  const store = new FakeMlflowStore();
  const requests: RecordedRequest[] = [];
  const replyFaults: ReplyFault[] = [];
  const artifactRoot = await mkdtemp(path.join(tmpdir(), 'kvx-fake-mlflow-'));
  const uploads = new Map<string, { path: string; dir: string }>();
  let selfUrl = '';

  // ---------- helpers ----------
  const str = (req: ApiRequest, name: string): string | undefined => {
    const fromBody = req.body[name];
    if (fromBody !== undefined && fromBody !== null) return String(fromBody);
    const fromQuery = req.query.get(name);
    return fromQuery === null ? undefined : fromQuery;
  };
  const required = (req: ApiRequest, name: string): string => {
    const v = str(req, name);
    if (v === undefined || v === '') throw missing(name);
    return v;
  };
  const runIdOf = (req: ApiRequest): string => {
    const id = str(req, 'run_id') ?? str(req, 'run_uuid');
    if (id === undefined || id === '') throw missing('run_id');
    return id;
  };
  const experiment = (id: string): Experiment => {
    const exp = store.experiments.get(id);
    if (exp === undefined) throw new MlflowError('RESOURCE_DOES_NOT_EXIST', `No Experiment with id=${id} exists`);
    return exp;
  };
  const run = (id: string): Run => {
    const r = store.runs.get(id);
    if (r === undefined) throw new MlflowError('RESOURCE_DOES_NOT_EXIST', `Run with id=${id} not found`);
    return r;
  };
  const activeRun = (id: string): Run => {
    const r = run(id);
    if (r.info.lifecycle_stage !== 'active') {
      throw new MlflowError(
        'INVALID_PARAMETER_VALUE',
        `The run ${id} must be in the 'active' state. Current state is ${r.info.lifecycle_stage}.`,
      );
    }
    return r;
  };
  const validateKey = (kind: string, key: unknown): string => {
    if (typeof key !== 'string' || key === '') throw missing('key');
    if (key.length > MAX_ENTITY_KEY) {
      throw new MlflowError('INVALID_PARAMETER_VALUE', `${kind} '${key.slice(0, 40)}...' had length ${key.length}, which exceeded length limit of ${MAX_ENTITY_KEY}`);
    }
    if (!KEY_PATTERN.test(key) || key.split('/').includes('..') || key.startsWith('/')) {
      throw new MlflowError(
        'INVALID_PARAMETER_VALUE',
        `Invalid ${kind.toLowerCase()} name: '${key}'. Names may only contain alphanumerics, underscores (_), dashes (-), periods (.), spaces ( ), and slashes (/).`,
      );
    }
    return key;
  };
  const setTag = (r: Run, key: unknown, value: unknown): void => {
    const k = validateKey('Tag', key);
    const v = value === undefined || value === null ? '' : String(value);
    if (v.length > MAX_TAG_VALUE) {
      throw new MlflowError('INVALID_PARAMETER_VALUE', `Tag value '${v.slice(0, 40)}...' had length ${v.length}, which exceeded length limit of ${MAX_TAG_VALUE}`);
    }
    r.tags.set(k, v);
    if (k === 'mlflow.runName') r.info.run_name = v;
  };
  const logParam = (r: Run, key: unknown, value: unknown): void => {
    const k = validateKey('Param', key);
    const v = value === undefined || value === null ? '' : String(value);
    if (v.length > MAX_PARAM_VALUE) {
      throw new MlflowError('INVALID_PARAMETER_VALUE', `Param value '${v.slice(0, 40)}...' had length ${v.length}, which exceeded length limit of ${MAX_PARAM_VALUE}`);
    }
    const old = r.params.get(k);
    if (old !== undefined && old !== v) {
      throw new MlflowError(
        'INVALID_PARAMETER_VALUE',
        `Changing param values is not allowed. Param with key='${k}' was already logged with value='${old}' for run ID='${r.info.run_id}'. Attempted logging new value '${v}'.`,
      );
    }
    r.params.set(k, v);
  };
  const logMetric = (r: Run, m: Record<string, unknown>): void => {
    const k = validateKey('Metric', m.key);
    if (m.value === undefined || m.value === null) throw missing('value');
    if (m.timestamp === undefined || m.timestamp === null) throw missing('timestamp');
    const value = typeof m.value === 'string' ? Number(m.value) : m.value;
    if (typeof value !== 'number' || (Number.isNaN(value) && m.value !== 'NaN')) {
      throw new MlflowError('INVALID_PARAMETER_VALUE', `Got invalid value ${JSON.stringify(m.value)} for metric '${k}' (timestamp=${String(m.timestamp)}). Please specify value as a valid double (64-bit floating point)`);
    }
    const history = r.metrics.get(k) ?? [];
    history.push({ key: k, value, timestamp: Number(m.timestamp), step: Number(m.step ?? 0) });
    r.metrics.set(k, history);
  };
  const kv = (map: Map<string, string>): KeyValue[] => [...map].map(([key, value]) => ({ key, value }));
  const omitEmpty = <T extends Record<string, unknown>>(obj: T): T => {
    for (const [k, v] of Object.entries(obj)) if (Array.isArray(v) && v.length === 0) delete obj[k];
    return obj;
  };
  const experimentJson = (e: Experiment): Record<string, unknown> =>
    omitEmpty({
      experiment_id: e.experiment_id,
      name: e.name,
      artifact_location: e.artifact_location,
      lifecycle_stage: e.lifecycle_stage,
      last_update_time: e.last_update_time,
      creation_time: e.creation_time,
      tags: kv(e.tags),
    });
  const runInfoJson = (r: Run): Record<string, unknown> => {
    const { run_id, ...rest } = r.info;
    return { run_uuid: run_id, run_id, ...rest };
  };
  const latestMetrics = (r: Run): Metric[] =>
    [...r.metrics.values()].map((h) =>
      h.reduce((best, m) => (m.step > best.step || (m.step === best.step && m.timestamp >= best.timestamp) ? m : best)),
    );
  const runJson = (r: Run): Record<string, unknown> => ({
    info: runInfoJson(r),
    data: omitEmpty({ metrics: latestMetrics(r), params: kv(r.params), tags: kv(r.tags) }),
    inputs: {},
  });
  const list = (v: unknown, name: string): Record<string, unknown>[] => {
    if (v === undefined || v === null) return [];
    if (!Array.isArray(v)) throw new MlflowError('INVALID_PARAMETER_VALUE', `Invalid value for parameter '${name}': expected a list`);
    return v as Record<string, unknown>[];
  };
  const pageOf = <T>(items: T[], req: ApiRequest, defaultMax: number, hardMax: number): { page: T[]; next?: string } => {
    const rawMax = str(req, 'max_results');
    const max = rawMax === undefined ? defaultMax : Number(rawMax);
    if (!Number.isInteger(max) || max < 1 || max > hardMax) {
      throw new MlflowError('INVALID_PARAMETER_VALUE', `Invalid value for parameter 'max_results' supplied. It must be at most ${hardMax}, but got value ${rawMax}`);
    }
    const token = str(req, 'page_token');
    let offset = 0;
    if (token !== undefined && token !== '') {
      try {
        offset = (JSON.parse(Buffer.from(token, 'base64').toString('utf8')) as { offset: number }).offset;
      } catch {
        throw new MlflowError('INVALID_PARAMETER_VALUE', `Invalid page token, could not base64-decode`);
      }
    }
    const page = items.slice(offset, offset + max);
    const next = offset + max < items.length ? Buffer.from(JSON.stringify({ offset: offset + max })).toString('base64') : undefined;
    return next === undefined ? { page } : { page, next };
  };
  const viewType = (req: ApiRequest, name: string): (stage: string) => boolean => {
    const v = str(req, name) ?? 'ACTIVE_ONLY';
    if (v === 'ACTIVE_ONLY' || v === '1') return (s) => s === 'active';
    if (v === 'DELETED_ONLY' || v === '2') return (s) => s === 'deleted';
    if (v === 'ALL' || v === '3') return () => true;
    throw new MlflowError('INVALID_PARAMETER_VALUE', `Invalid value ${v} for parameter '${name}'`);
  };

  // ---------- REST handlers (shared by /api/2.0 and /ajax-api/2.0) ----------
  const mlflowRoutes: Record<string, Route> = {
    'experiments/get-by-name': {
      method: 'GET',
      handler: (req) => {
        const name = required(req, 'experiment_name');
        const exp = store.experimentByName(name);
        if (exp === undefined) throw new MlflowError('RESOURCE_DOES_NOT_EXIST', `Could not find experiment with name '${name}'`);
        return { experiment: experimentJson(exp) };
      },
    },
    'experiments/create': {
      method: 'POST',
      handler: (req) => {
        const name = required(req, 'name');
        const existing = store.experimentByName(name);
        if (existing !== undefined) {
          throw new MlflowError(
            'RESOURCE_ALREADY_EXISTS',
            existing.lifecycle_stage === 'deleted'
              ? `Experiment '${name}' already exists in deleted state. You can restore the experiment, or permanently delete the experiment to create a new one.`
              : `Experiment '${name}' already exists.`,
          );
        }
        const tags = list(req.body.tags, 'tags').map((t) => ({ key: validateKey('Tag', t.key), value: String(t.value ?? '') }));
        const location = str(req, 'artifact_location');
        return { experiment_id: store.createExperiment(name, tags, location === '' ? undefined : location).experiment_id };
      },
    },
    'experiments/get': {
      method: 'GET',
      handler: (req) => ({ experiment: experimentJson(experiment(required(req, 'experiment_id'))) }),
    },
    'experiments/search': {
      method: 'POST',
      handler: (req) => {
        const stageOk = viewType(req, 'view_type');
        const filter = compileFilter(str(req, 'filter') ?? '', experimentField, validateExperimentKey);
        const found = [...store.experiments.values()]
          .filter((e) => stageOk(e.lifecycle_stage) && filter(e))
          .sort((a, b) => b.creation_time - a.creation_time || Number(b.experiment_id) - Number(a.experiment_id));
        const { page, next } = pageOf(found, req, 1000, 50000);
        return omitEmpty({ experiments: page.map(experimentJson), ...(next === undefined ? {} : { next_page_token: next }) });
      },
    },
    'experiments/delete': {
      method: 'POST',
      handler: (req) => {
        const exp = experiment(required(req, 'experiment_id'));
        if (exp.experiment_id === '0') throw new MlflowError('INVALID_PARAMETER_VALUE', 'Cannot delete the default experiment \'0\'. This is an internally reserved experiment.');
        exp.lifecycle_stage = 'deleted';
        exp.last_update_time = Date.now();
        for (const r of store.runsIn(exp.experiment_id)) r.info.lifecycle_stage = 'deleted';
        return {};
      },
    },
    'experiments/restore': {
      method: 'POST',
      handler: (req) => {
        const exp = experiment(required(req, 'experiment_id'));
        if (exp.lifecycle_stage !== 'deleted') {
          throw new MlflowError('INVALID_PARAMETER_VALUE', `Cannot restore an active experiment. experiment_id=${exp.experiment_id}`);
        }
        exp.lifecycle_stage = 'active';
        exp.last_update_time = Date.now();
        for (const r of store.runsIn(exp.experiment_id)) r.info.lifecycle_stage = 'active';
        return {};
      },
    },
    'experiments/update': {
      method: 'POST',
      handler: (req) => {
        const exp = experiment(required(req, 'experiment_id'));
        const newName = str(req, 'new_name');
        if (newName !== undefined && newName !== '') {
          if (store.experimentByName(newName) !== undefined) throw new MlflowError('RESOURCE_ALREADY_EXISTS', `Experiment '${newName}' already exists.`);
          exp.name = newName;
          exp.last_update_time = Date.now();
        }
        return {};
      },
    },
    'experiments/set-experiment-tag': {
      method: 'POST',
      handler: (req) => {
        const exp = experiment(required(req, 'experiment_id'));
        if (exp.lifecycle_stage !== 'active') {
          throw new MlflowError('INVALID_PARAMETER_VALUE', `The experiment ${exp.experiment_id} must be in the 'active' state. Current state is deleted.`);
        }
        exp.tags.set(validateKey('Tag', req.body.key), String(req.body.value ?? ''));
        return {};
      },
    },
    'runs/create': {
      method: 'POST',
      handler: (req) => {
        const expId = str(req, 'experiment_id');
        const exp = experiment(expId === undefined || expId === '' ? '0' : expId);
        if (exp.lifecycle_stage !== 'active') {
          throw new MlflowError('INVALID_PARAMETER_VALUE', `The experiment ${exp.experiment_id} must be in the 'active' state. Current state is deleted.`);
        }
        const tags = list(req.body.tags, 'tags');
        const nameTag = tags.find((t) => t.key === 'mlflow.runName')?.value;
        const runName = str(req, 'run_name');
        if (runName !== undefined && runName !== '' && nameTag !== undefined && nameTag !== runName) {
          throw new MlflowError('INVALID_PARAMETER_VALUE', `Both 'run_name' argument and 'mlflow.runName' tag are specified, but with different values (run_name='${runName}', mlflow.runName='${String(nameTag)}').`);
        }
        const id = randomUUID().replaceAll('-', '');
        const name =
          runName !== undefined && runName !== ''
            ? runName
            : nameTag !== undefined
              ? String(nameTag)
              : `${ADJECTIVES[randomBytes(1)[0]! % ADJECTIVES.length]}-${NOUNS[randomBytes(1)[0]! % NOUNS.length]}-${randomBytes(1)[0]! % 1000}`;
        const r: Run = {
          info: {
            run_id: id,
            run_name: name,
            experiment_id: exp.experiment_id,
            user_id: str(req, 'user_id') ?? '',
            status: 'RUNNING',
            start_time: Number(str(req, 'start_time') ?? Date.now()),
            artifact_uri: `${exp.artifact_location}/${id}/artifacts`,
            lifecycle_stage: 'active',
          },
          params: new Map(),
          tags: new Map(),
          metrics: new Map(),
        };
        for (const t of tags) setTag(r, t.key, t.value);
        r.tags.set('mlflow.runName', name);
        store.runs.set(id, r);
        return { run: runJson(r) };
      },
    },
    'runs/get': {
      method: 'GET',
      handler: (req) => ({ run: runJson(run(runIdOf(req))) }),
    },
    'runs/update': {
      method: 'POST',
      handler: (req) => {
        const r = activeRun(runIdOf(req));
        const status = str(req, 'status');
        if (status !== undefined) {
          if (!RUN_STATUSES.includes(status as RunStatus)) {
            throw new MlflowError('INVALID_PARAMETER_VALUE', `Invalid value "${status}" for parameter 'status' supplied. Valid values are ${RUN_STATUSES.join(', ')}.`);
          }
          r.info.status = status as RunStatus;
        }
        const end = str(req, 'end_time');
        if (end !== undefined) r.info.end_time = Number(end);
        const name = str(req, 'run_name');
        if (name !== undefined && name !== '') setTag(r, 'mlflow.runName', name);
        return { run_info: runInfoJson(r) };
      },
    },
    'runs/delete': {
      method: 'POST',
      handler: (req) => {
        run(runIdOf(req)).info.lifecycle_stage = 'deleted';
        return {};
      },
    },
    'runs/restore': {
      method: 'POST',
      handler: (req) => {
        run(runIdOf(req)).info.lifecycle_stage = 'active';
        return {};
      },
    },
    'runs/search': {
      method: 'POST',
      handler: (req) => {
        const ids = req.body.experiment_ids;
        if (!Array.isArray(ids) || ids.length === 0) throw missing('experiment_ids');
        const stageOk = viewType(req, 'run_view_type');
        const filter = compileFilter(str(req, 'filter') ?? '', runField, validateRunKey);
        const order = list(req.body.order_by, 'order_by').map(String);
        const found = [...store.runs.values()]
          .filter((r) => ids.map(String).includes(r.info.experiment_id) && stageOk(r.info.lifecycle_stage) && filter(r))
          .sort(runComparator(order));
        const { page, next } = pageOf(found, req, 1000, 50000);
        return omitEmpty({ runs: page.map(runJson), ...(next === undefined ? {} : { next_page_token: next }) });
      },
    },
    'runs/log-metric': {
      method: 'POST',
      handler: (req) => {
        logMetric(activeRun(runIdOf(req)), req.body);
        return {};
      },
    },
    'runs/log-parameter': {
      method: 'POST',
      handler: (req) => {
        logParam(activeRun(runIdOf(req)), req.body.key, req.body.value);
        return {};
      },
    },
    'runs/set-tag': {
      method: 'POST',
      handler: (req) => {
        setTag(activeRun(runIdOf(req)), req.body.key, req.body.value);
        return {};
      },
    },
    'runs/delete-tag': {
      method: 'POST',
      handler: (req) => {
        const r = activeRun(runIdOf(req));
        const key = required(req, 'key');
        if (!r.tags.has(key)) throw new MlflowError('RESOURCE_DOES_NOT_EXIST', `No tag with name: ${key} in run with id ${r.info.run_id}`);
        r.tags.delete(key);
        return {};
      },
    },
    'runs/log-batch': {
      method: 'POST',
      handler: (req) => {
        const r = activeRun(runIdOf(req));
        const metrics = list(req.body.metrics, 'metrics');
        const params = list(req.body.params, 'params');
        const tags = list(req.body.tags, 'tags');
        const limits: [string, number, number][] = [['metrics', metrics.length, 1000], ['params', params.length, 100], ['tags', tags.length, 100]];
        for (const [what, n, max] of limits) {
          if (n > max) throw new MlflowError('INVALID_PARAMETER_VALUE', `A batch logging request can contain at most ${max} ${what}. Got ${n} ${what}. Please split up ${what} across multiple requests and try again.`);
        }
        if (metrics.length + params.length + tags.length > 1000) {
          throw new MlflowError('INVALID_PARAMETER_VALUE', `A batch logging request can contain at most 1000 metrics, params, and tags in total. Got ${metrics.length + params.length + tags.length}.`);
        }
        // Validate everything before applying anything: MLflow's batch is all-or-nothing.
        const probe: Run = { ...r, params: new Map(r.params), tags: new Map(r.tags), metrics: new Map([...r.metrics].map(([k, v]) => [k, [...v]])) };
        probe.info = { ...r.info };
        for (const p of params) logParam(probe, p.key, p.value);
        for (const m of metrics) logMetric(probe, m);
        for (const t of tags) setTag(probe, t.key, t.value);
        r.params = probe.params;
        r.tags = probe.tags;
        r.metrics = probe.metrics;
        r.info = probe.info;
        return {};
      },
    },
    'metrics/get-history': {
      method: 'GET',
      handler: (req) => {
        const r = run(runIdOf(req));
        const key = required(req, 'metric_key');
        const history = r.metrics.get(key) ?? [];
        const { page, next } = pageOf(history, req, 25000, 25000);
        return omitEmpty({ metrics: page, ...(next === undefined ? {} : { next_page_token: next }) });
      },
    },
  };
  // ---------- /api/3.0 (MLflow 3 logged models) ----------
  const loggedModelJson = (m: LoggedModel): Record<string, unknown> => ({
    model: {
      info: {
        model_id: m.model_id,
        experiment_id: m.experiment_id,
        name: m.name,
        artifact_uri: `mlflow-artifacts:/${m.experiment_id}/models/${m.model_id}/artifacts`,
        creation_timestamp_ms: m.creation_timestamp_ms,
        last_updated_timestamp_ms: m.creation_timestamp_ms,
        status: 'LOGGED_MODEL_PENDING',
        lifecycle_stage: m.lifecycle_stage,
        ...(m.source_run_id === undefined ? {} : { source_run_id: m.source_run_id }),
      },
      data: {},
    },
  });
  const v3Routes: Record<string, Route> = {
    'logged-models': {
      method: 'POST',
      handler: (req) => {
        const exp = experiment(required(req, 'experiment_id'));
        const id = `m-${randomUUID().replaceAll('-', '')}`;
        const m: LoggedModel = {
          model_id: id,
          experiment_id: exp.experiment_id,
          name: str(req, 'name') ?? id,
          creation_timestamp_ms: Date.now(),
          lifecycle_stage: 'active',
        };
        const sourceRun = str(req, 'source_run_id');
        if (sourceRun !== undefined && sourceRun !== '') m.source_run_id = run(sourceRun).info.run_id;
        store.loggedModels.set(id, m);
        return loggedModelJson(m);
      },
    },
    'logged-models/search': {
      method: 'POST',
      handler: (req) => {
        const ids = Array.isArray(req.body.experiment_ids) ? req.body.experiment_ids.map(String) : [];
        const found = [...store.loggedModels.values()].filter((m) => m.lifecycle_stage === 'active' && (ids.length === 0 || ids.includes(m.experiment_id)));
        return omitEmpty({ models: found.map((m) => loggedModelJson(m).model) });
      },
    },
  };
  const loggedModelById = (id: string, method: string): unknown => {
    const m = store.loggedModels.get(id);
    if (m === undefined || m.lifecycle_stage === 'deleted') throw new MlflowError('RESOURCE_DOES_NOT_EXIST', `Logged model with ID '${id}' not found.`);
    if (method === 'DELETE') {
      m.lifecycle_stage = 'deleted';
      return {};
    }
    return loggedModelJson(m);
  };

  // ---------- artifacts ----------
  const artifactPath = (raw: string): string => {
    let decoded: string;
    try {
      decoded = raw.split('/').map(decodeURIComponent).join('/');
    } catch {
      throw new MlflowError('INVALID_PARAMETER_VALUE', 'Invalid path');
    }
    const parts = decoded.split('/');
    if (decoded.startsWith('/') || decoded.includes('\\') || decoded.includes('\0') || parts.includes('..') || parts.includes('.')) {
      throw new MlflowError('INVALID_PARAMETER_VALUE', 'Invalid path');
    }
    return parts.filter((p) => p !== '').join('/');
  };
  const onDisk = (rel: string): string => path.join(artifactRoot, 'files', ...rel.split('/'));
  const mimeType = (p: string): string => {
    const ext = path.extname(p).toLowerCase();
    const types: Record<string, string> = {
      '.txt': 'text/plain',
      '.log': 'text/plain',
      '.json': 'application/json',
      '.yaml': 'text/yaml',
      '.yml': 'text/yaml',
      '.html': 'text/html',
      '.csv': 'text/csv',
      '.png': 'image/png',
    };
    return types[ext] ?? 'application/octet-stream';
  };

  async function putArtifact(req: http.IncomingMessage, res: http.ServerResponse, rel: string, counter: { bytes: number }): Promise<void> {
    if (rel === '') throw new MlflowError('INVALID_PARAMETER_VALUE', 'Invalid path');
    const target = onDisk(rel);
    try {
      await mkdir(path.dirname(target), { recursive: true });
    } catch {
      throw new MlflowError('INVALID_PARAMETER_VALUE', `Cannot write artifact '${rel}': a parent path is a file`);
    }
    const temp = `${target}.upload-${randomUUID()}`;
    req.on('data', (chunk: Buffer) => (counter.bytes += chunk.length));
    await pipeline(req, createWriteStream(temp));
    await rename(temp, target);
    json(res, 200, {});
  }

  async function getArtifact(res: http.ServerResponse, rel: string): Promise<void> {
    const file = onDisk(rel);
    const info = await stat(file).catch(() => undefined);
    if (info === undefined || !info.isFile()) throw new MlflowError('RESOURCE_DOES_NOT_EXIST', `File not found: ${rel}`);
    res.writeHead(200, {
      'content-type': mimeType(rel),
      'content-length': String(info.size),
      'content-disposition': `attachment; filename=${path.basename(rel)}`,
      'x-content-type-options': 'nosniff',
    });
    await pipeline(createReadStream(file), res);
  }

  async function listArtifacts(query: URLSearchParams): Promise<unknown> {
    const rel = artifactPath(query.get('path') ?? '');
    const dir = onDisk(rel);
    const info = await stat(dir).catch(() => undefined);
    if (info === undefined || !info.isDirectory()) return {};
    const entries = await readdir(dir, { withFileTypes: true });
    const files: Record<string, unknown>[] = [];
    for (const e of entries.sort((a, b) => a.name.localeCompare(b.name))) {
      if (e.name.includes('.upload-')) continue;
      if (e.isDirectory()) files.push({ path: e.name, is_dir: true });
      else files.push({ path: e.name, is_dir: false, file_size: (await stat(path.join(dir, e.name))).size });
    }
    return omitEmpty({ files });
  }

  async function deleteArtifact(rel: string): Promise<unknown> {
    const target = onDisk(rel);
    const info = await stat(target).catch(() => undefined);
    if (info === undefined) throw new MlflowError('RESOURCE_DOES_NOT_EXIST', `File not found: ${rel}`);
    await rm(target, { recursive: true, force: true });
    return {};
  }

  async function multipart(action: string, rel: string, body: Record<string, unknown>): Promise<unknown> {
    if (action === 'create') {
      const parts = Number(body.num_parts ?? 1);
      if (!Number.isInteger(parts) || parts < 1 || parts > 10000) throw new MlflowError('INVALID_PARAMETER_VALUE', `Invalid value for 'num_parts': ${String(body.num_parts)}`);
      const uploadId = randomUUID();
      const dir = path.join(artifactRoot, 'mpu', uploadId);
      await mkdir(dir, { recursive: true });
      uploads.set(uploadId, { path: rel, dir });
      const credentials = Array.from({ length: parts }, (_, i) => ({
        part_number: i + 1,
        url: `${selfUrl}/_fake-storage/mpu/${uploadId}/${i + 1}`,
        headers: {},
      }));
      return { upload_id: uploadId, credentials };
    }
    const uploadId = String(body.upload_id ?? '');
    const upload = uploads.get(uploadId);
    if (upload === undefined || upload.path !== rel) throw new MlflowError('RESOURCE_DOES_NOT_EXIST', `Upload ${uploadId} not found for path ${rel}`);
    if (action === 'abort') {
      uploads.delete(uploadId);
      await rm(upload.dir, { recursive: true, force: true });
      return {};
    }
    if (action === 'complete') {
      const parts = list(body.parts, 'parts').map((p) => Number(p.part_number)).sort((a, b) => a - b);
      if (parts.length === 0) throw missing('parts');
      const target = onDisk(rel);
      await mkdir(path.dirname(target), { recursive: true });
      const out = createWriteStream(target);
      for (const n of parts) {
        const partFile = path.join(upload.dir, String(n));
        if ((await stat(partFile).catch(() => undefined)) === undefined) {
          out.destroy();
          await unlink(target).catch(() => undefined);
          throw new MlflowError('INVALID_PARAMETER_VALUE', `Part ${n} of upload ${uploadId} was never uploaded`);
        }
        await pipeline(createReadStream(partFile), out, { end: false });
      }
      await new Promise<void>((resolve, reject) => out.end((err?: Error | null) => (err ? reject(err) : resolve())));
      uploads.delete(uploadId);
      await rm(upload.dir, { recursive: true, force: true });
      return {};
    }
    throw new MlflowError('ENDPOINT_NOT_FOUND', `No API endpoint for mpu/${action}`);
  }

  // ---------- dispatch ----------
  const json = (res: http.ServerResponse, status: number, body: unknown): void => {
    const text = JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(text)) });
    res.end(text);
  };

  async function readJson(req: http.IncomingMessage, counter: { bytes: number }, method: string): Promise<Record<string, unknown>> {
    const chunks: Buffer[] = [];
    for await (const chunk of req as AsyncIterable<Buffer>) {
      counter.bytes += chunk.length;
      chunks.push(chunk);
    }
    if (method === 'GET' || method === 'DELETE') return {};
    const text = Buffer.concat(chunks).toString('utf8');
    const ctype = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
    if (ctype !== 'application/json') {
      throw new MlflowError('INVALID_PARAMETER_VALUE', "Bad Request. Content-Type must be 'application/json'.");
    }
    if (text.trim() === '') return {};
    try {
      const parsed: unknown = JSON.parse(text);
      if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error('not an object');
      return parsed as Record<string, unknown>;
    } catch {
      throw new MlflowError('MALFORMED_REQUEST', `Malformed request: could not parse JSON body`);
    }
  }

  async function callRoute(req: http.IncomingMessage, route: Route | undefined, query: URLSearchParams, rest: string, counter: { bytes: number }, what: string): Promise<unknown> {
    if (route === undefined) throw new MlflowError('ENDPOINT_NOT_FOUND', `No API endpoint found for ${what}`);
    const method = req.method ?? 'GET';
    if (method !== route.method) {
      throw new MlflowError('ENDPOINT_NOT_FOUND', `The method ${method} is not allowed for ${what}; use ${route.method}`, 405);
    }
    const body = await readJson(req, counter, method);
    return route.handler({ method, query, body, rest });
  }

  async function handle(req: http.IncomingMessage, res: http.ServerResponse, counter: { bytes: number }): Promise<void> {
    const rawUrl = req.url ?? '/';
    const q = rawUrl.indexOf('?');
    const rawPath = q === -1 ? rawUrl : rawUrl.slice(0, q);
    const query = new URLSearchParams(q === -1 ? '' : rawUrl.slice(q + 1));
    const method = req.method ?? 'GET';

    if (basePath !== '' && rawPath !== basePath && !rawPath.startsWith(`${basePath}/`)) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('Not Found');
      return;
    }
    const p = rawPath.slice(basePath.length) || '/';

    if (p === '/health' && method === 'GET') {
      res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' }).end('OK');
      return;
    }
    if (p === '/version' && method === 'GET') {
      res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' }).end(version);
      return;
    }
    const fakeStorage = /^\/_fake-storage\/mpu\/([^/]+)\/(\d+)$/.exec(p);
    if (fakeStorage !== null && method === 'PUT') {
      const upload = uploads.get(fakeStorage[1]!);
      if (upload === undefined) {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('NoSuchUpload');
        return;
      }
      req.on('data', (chunk: Buffer) => (counter.bytes += chunk.length));
      await pipeline(req, createWriteStream(path.join(upload.dir, fakeStorage[2]!)));
      res.writeHead(200, { etag: `"${createHash('md5').update(fakeStorage[2]!).digest('hex')}"` }).end();
      return;
    }

    const api = /^\/(api|ajax-api)\/(2\.0|3\.0)\/(mlflow|mlflow-artifacts)(?:\/(.*))?$/.exec(p);
    if (api === null) {
      if (p === '/' && method === 'GET') {
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end('<!doctype html><title>MLflow</title><div id="root"></div>');
        return;
      }
      throw new MlflowError('ENDPOINT_NOT_FOUND', `No API endpoint found for ${method} ${p}`);
    }
    const [, , apiVersion, family, tail = ''] = api;

    if (family === 'mlflow-artifacts') {
      if (apiVersion !== '2.0') throw new MlflowError('ENDPOINT_NOT_FOUND', `No API endpoint found for ${method} ${p}`);
      if (tail === 'artifacts' && method === 'GET') {
        json(res, 200, await listArtifacts(query));
        return;
      }
      if (tail.startsWith('artifacts/')) {
        const rel = artifactPath(tail.slice('artifacts/'.length));
        if (method === 'PUT') return putArtifact(req, res, rel, counter);
        if (method === 'GET') return getArtifact(res, rel);
        if (method === 'DELETE') {
          json(res, 200, await deleteArtifact(rel));
          return;
        }
        throw new MlflowError('ENDPOINT_NOT_FOUND', `The method ${method} is not allowed for artifacts`, 405);
      }
      const mpu = /^mpu\/(create|complete|abort)\/(.+)$/.exec(tail);
      if (mpu !== null && method === 'POST') {
        const body = await readJson(req, counter, method);
        json(res, 200, await multipart(mpu[1]!, artifactPath(mpu[2]!), body));
        return;
      }
      throw new MlflowError('ENDPOINT_NOT_FOUND', `No API endpoint found for ${method} ${p}`);
    }

    if (apiVersion === '2.0') {
      const result = await callRoute(req, mlflowRoutes[tail], query, '', counter, `${method} ${p}`);
      const at = replyFaults.findIndex((f) => f.method === method && f.endpoint === tail);
      if (at !== -1) {
        const { fault } = replyFaults.splice(at, 1)[0]!;
        if (fault === 'drop') req.socket.destroy();
        else json(res, fault, { error_code: fault === 503 ? 'TEMPORARILY_UNAVAILABLE' : 'INTERNAL_ERROR', message: `fake reply fault ${fault}` });
        return;
      }
      json(res, 200, result);
      return;
    }
    const byId = /^logged-models\/([^/]+)$/.exec(tail);
    if (byId !== null && byId[1] !== 'search' && (method === 'GET' || method === 'DELETE')) {
      await readJson(req, counter, method);
      json(res, 200, loggedModelById(decodeURIComponent(byId[1]!), method));
      return;
    }
    json(res, 200, await callRoute(req, v3Routes[tail], query, '', counter, `${method} ${p}`));
  }

  const server = http.createServer((req, res) => {
    const counter = { bytes: 0 };
    const record: RecordedRequest = {
      method: req.method ?? '',
      path: req.url ?? '',
      headers: { ...req.headers },
      bodyBytes: 0,
      status: 0,
    };
    let recorded = false;
    const finish = (): void => {
      if (recorded) return;
      recorded = true;
      record.bodyBytes = counter.bytes;
      record.status = res.headersSent ? res.statusCode : 0;
      requests.push(record);
    };
    res.on('finish', finish);
    res.on('close', finish);

    void (async () => {
      try {
        // Presigned part URLs stand for cloud storage, which the tracking server's auth layer does not guard.
        const storage = (req.url ?? '').startsWith(`${basePath}/_fake-storage/`);
        const gated = options.gate === undefined || storage ? null : await options.gate(req);
        if (gated !== null) {
          req.on('data', (chunk: Buffer) => (counter.bytes += chunk.length));
          req.resume();
          const body = gated.body ?? '';
          res.writeHead(gated.status, { 'content-type': 'text/plain; charset=utf-8', 'content-length': String(Buffer.byteLength(body)), ...gated.headers });
          res.end(body);
          return;
        }
        await handle(req, res, counter);
      } catch (err) {
        if (res.headersSent) {
          res.destroy();
          return;
        }
        if (err instanceof MlflowError) {
          json(res, err.status, { error_code: err.errorCode, message: err.message });
        } else {
          json(res, 500, { error_code: 'INTERNAL_ERROR', message: `fake MLflow failed: ${(err as Error).message}` });
        }
        // A body the handler did not read (error before streaming) must not stall the socket.
        req.resume();
      }
    })();
  });

  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  selfUrl = `http://127.0.0.1:${port}${basePath}`;

  return {
    url: selfUrl,
    port,
    store,
    requests,
    replyFaults,
    artifactRoot,
    async reset() {
      store.reset();
      requests.length = 0;
      replyFaults.length = 0;
      uploads.clear();
      await rm(path.join(artifactRoot, 'files'), { recursive: true, force: true });
      await rm(path.join(artifactRoot, 'mpu'), { recursive: true, force: true });
    },
    async close() {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      await rm(artifactRoot, { recursive: true, force: true });
    },
  };
}

// ---------- search filters ----------

type Scalar = string | number;
type FieldGetter<T> = (entity: T, kind: string, key: string) => Scalar | undefined;

const ATTRIBUTE_KEYS = ['run_id', 'run_name', 'status', 'user_id', 'artifact_uri', 'start_time', 'end_time', 'created', 'Created', 'lifecycle_stage'];

function validateRunKey(kind: string, key: string): void {
  if (kind === 'attributes' && !ATTRIBUTE_KEYS.includes(key)) {
    throw new MlflowError('INVALID_PARAMETER_VALUE', `Invalid attribute key '${key}' specified. Valid keys are '${ATTRIBUTE_KEYS.join("', '")}'`);
  }
}

const EXPERIMENT_KEYS = ['name', 'creation_time', 'last_update_time', 'experiment_id'];

function validateExperimentKey(kind: string, key: string): void {
  if (kind === 'tags') return;
  if (kind !== 'attributes' || !EXPERIMENT_KEYS.includes(key)) {
    throw new MlflowError('INVALID_PARAMETER_VALUE', `Invalid attribute key '${key}' specified. Valid keys are '${EXPERIMENT_KEYS.join("', '")}'`);
  }
}

function runField(r: Run, kind: string, key: string): Scalar | undefined {
  switch (kind) {
    case 'tags':
      return r.tags.get(key);
    case 'params':
      return r.params.get(key);
    case 'metrics': {
      const history = r.metrics.get(key);
      return history === undefined ? undefined : history[history.length - 1]!.value;
    }
    case 'attributes': {
      if (!ATTRIBUTE_KEYS.includes(key)) {
        throw new MlflowError('INVALID_PARAMETER_VALUE', `Invalid attribute key '${key}' specified. Valid keys are '${ATTRIBUTE_KEYS.join("', '")}'`);
      }
      const k = key === 'created' || key === 'Created' ? 'start_time' : key;
      return (r.info as unknown as Record<string, Scalar | undefined>)[k];
    }
    default:
      throw new MlflowError('INVALID_PARAMETER_VALUE', `Invalid entity type '${kind}'. Valid values are ['metric', 'parameter', 'tag', 'attribute', 'dataset']`);
  }
}

function experimentField(e: Experiment, kind: string, key: string): Scalar | undefined {
  if (kind === 'tags') return e.tags.get(key);
  validateExperimentKey(kind, key);
  return (e as unknown as Record<string, Scalar>)[key];
}

const TOKEN =
  /\s*(?:(?<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")|(?<num>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)(?![\w.])|(?<op>!=|>=|<=|=|>|<)|(?<punct>[(),])|(?<ident>[A-Za-z_]\w*(?:\.(?:`[^`]*`|"[^"]*"|[\w.]+))?|`[^`]*`))/y;

interface Token {
  type: 'str' | 'num' | 'op' | 'punct' | 'ident';
  text: string;
}

function tokenize(filter: string): Token[] {
  const tokens: Token[] = [];
  TOKEN.lastIndex = 0;
  let pos = 0;
  while (pos < filter.length) {
    if (/^\s*$/.test(filter.slice(pos))) break;
    TOKEN.lastIndex = pos;
    const m = TOKEN.exec(filter);
    if (m === null || m.groups === undefined) {
      throw new MlflowError('INVALID_PARAMETER_VALUE', `Invalid filter '${filter}'. Could not be parsed near position ${pos}.`);
    }
    const [type, text] = Object.entries(m.groups).find(([, v]) => v !== undefined) as [Token['type'], string];
    tokens.push({ type, text });
    pos = TOKEN.lastIndex;
  }
  return tokens;
}

function unquote(text: string): string {
  if ((text.startsWith("'") && text.endsWith("'")) || (text.startsWith('"') && text.endsWith('"')) || (text.startsWith('`') && text.endsWith('`'))) {
    return text.slice(1, -1).replace(/\\(.)/g, '$1');
  }
  return text;
}

const ENTITY_ALIASES: Record<string, string> = {
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

function likeToRegExp(pattern: string, insensitive: boolean): RegExp {
  const body = pattern.replace(/[.*+?^${}()|[\]\\]/g, '\\$&').replace(/%/g, '.*').replace(/_/g, '.');
  return new RegExp(`^${body}$`, insensitive ? 'is' : 's');
}

/** MLflow's search grammar, the subset clients use: `ident op value` clauses joined by AND. */
function compileFilter<T>(filter: string, field: FieldGetter<T>, validate: (kind: string, key: string) => void): (entity: T) => boolean {
  const tokens = tokenize(filter);
  if (tokens.length === 0) return () => true;
  const bad = (why: string): MlflowError => new MlflowError('INVALID_PARAMETER_VALUE', `Invalid filter '${filter}': ${why}`);
  const clauses: ((entity: T) => boolean)[] = [];
  let i = 0;
  while (i < tokens.length) {
    const ident = tokens[i++];
    if (ident?.type !== 'ident') throw bad('expected an identifier such as tags.name, params.name, metrics.name or attributes.status');
    const dot = ident.text.indexOf('.');
    let kind = 'attributes';
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
        if (v === undefined || (v.type !== 'str' && v.type !== 'num')) throw bad('expected a value list');
        values.push(v.type === 'num' ? Number(v.text) : unquote(v.text));
        const sep = tokens[i++];
        if (sep?.text === ')') break;
        if (sep?.text !== ',') throw bad("expected ',' or ')'");
      }
    } else {
      const v = tokens[i++];
      if (v === undefined || (v.type !== 'str' && v.type !== 'num')) throw bad('expected a quoted string or a number as value');
      values = [v.type === 'num' ? Number(v.text) : unquote(v.text)];
    }
    const numeric = kind === 'metrics' || (kind === 'attributes' && /time|created/i.test(key));
    const wanted = values.map((v) => (numeric ? Number(v) : String(v)));
    const want = wanted[0]!;
    validate(kind, key);
    clauses.push((entity) => {
      const raw = field(entity, kind, key);
      if (raw === undefined) return false;
      const actual = numeric ? Number(raw) : String(raw);
      switch (opText) {
        case '=':
          return actual === want;
        case '!=':
          return actual !== want;
        case '>':
          return actual > want;
        case '>=':
          return actual >= want;
        case '<':
          return actual < want;
        case '<=':
          return actual <= want;
        case 'LIKE':
          return likeToRegExp(String(want), false).test(String(actual));
        case 'ILIKE':
          return likeToRegExp(String(want), true).test(String(actual));
        case 'IN':
          return wanted.includes(actual);
        case 'NOT IN':
          return !wanted.includes(actual);
        default:
          throw bad(`invalid comparator '${opText}'`);
      }
    });
    if (i < tokens.length) {
      const and = tokens[i++];
      if (and?.type !== 'ident' || and.text.toUpperCase() !== 'AND') throw bad('clauses must be joined with AND');
      if (i >= tokens.length) throw bad('dangling AND');
    }
  }
  return (entity) => clauses.every((c) => c(entity));
}

function runComparator(orderBy: string[]): (a: Run, b: Run) => number {
  const keys = orderBy.map((clause) => {
    const m = /^\s*(?:(attributes?|metrics?|params?|tags?)\.)?`?([\w.]+)`?\s*(ASC|DESC)?\s*$/i.exec(clause);
    if (m === null) throw new MlflowError('INVALID_PARAMETER_VALUE', `Invalid order_by clause '${clause}'. Could not be parsed.`);
    const kind = ENTITY_ALIASES[(m[1] ?? 'attributes').toLowerCase()]!;
    return { kind, key: m[2]!, desc: (m[3] ?? 'ASC').toUpperCase() === 'DESC' };
  });
  keys.push({ kind: 'attributes', key: 'start_time', desc: true });
  return (a, b) => {
    for (const k of keys) {
      const va = runField(a, k.kind, k.key);
      const vb = runField(b, k.kind, k.key);
      if (va === vb) continue;
      if (va === undefined) return 1;
      if (vb === undefined) return -1;
      const cmp = va < vb ? -1 : 1;
      return k.desc ? -cmp : cmp;
    }
    return a.info.run_id < b.info.run_id ? -1 : 1;
  };
}

// ---------- gates ----------

function safeEqual(a: string, b: string): boolean {
  const ab = Buffer.from(a);
  const bb = Buffer.from(b);
  return ab.length === bb.length && timingSafeEqual(ab, bb);
}

/** Accepts only `<header>: Bearer <token>`; 401 otherwise, like a token-checking front end. */
export function bearerGate(token: string, header = 'authorization'): Gate {
  const name = header.toLowerCase();
  return (req) => {
    const value = req.headers[name];
    if (typeof value === 'string' && safeEqual(value, `Bearer ${token}`)) return null;
    return {
      status: 401,
      body: value === undefined ? `Missing ${header} header` : `Invalid ${header} credentials`,
      headers: { 'www-authenticate': 'Bearer realm="fake-mlflow"' },
    };
  };
}

/** MLflow's basic-auth app: 401 plain text with a Basic challenge, /health left open. */
export function basicGate(user: string, password: string): Gate {
  const expected = `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
  return (req) => {
    const p = (req.url ?? '').split('?')[0]!;
    if (p === '/health' || p.endsWith('/health') || p.startsWith('/static-files/') || p === '/favicon.ico') return null;
    const value = req.headers.authorization;
    if (typeof value === 'string' && safeEqual(value, expected)) return null;
    return {
      status: 401,
      body: 'You are not authenticated. Please see https://www.mlflow.org/docs/latest/auth/index.html#authenticating-to-mlflow on how to authenticate.',
      headers: { 'www-authenticate': 'Basic realm="mlflow"' },
    };
  };
}
