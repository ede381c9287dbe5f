/**
 * The tracking REST API: /api/2.0/mlflow/* (also served as /ajax-api/2.0, as MLflow's UI calls it) and MLflow 3's
 * logged models under /api/3.0/mlflow/*. Handlers read parameters from the JSON body or the query string (run_id
 * and its old name run_uuid), leave the rules to the store and answer MLflow's JSON shapes: protobuf JSON, so
 * repeated fields that are empty are left out.
 */
import type http from 'node:http';
import { MlflowError, invalid, list, missing, noEndpoint, notFound, omitEmpty, readJson } from './protocol.js';
import type { ByteCount } from './protocol.js';
import { EXPERIMENT_FIELDS, RUN_FIELDS, compileFilter, compileRunOrder } from './search-filter.js';
import { RUN_STATUSES, latestMetric, validateKey } from './store.js';
import type { Experiment, FakeMlflowStore, KeyValue, LifecycleStage, LoggedModel, Metric, Run, RunStatus } from './store.js';

interface ApiRequest {
  method: string;
  query: URLSearchParams;
  body: Record<string, unknown>;
  /** The part of the path a route takes as a parameter (a logged model's id). */
  rest: string;
}

interface Route {
  method: 'GET' | 'POST' | 'PATCH' | 'DELETE';
  handler: (req: ApiRequest) => unknown;
}

// ---------- parameters ----------

/** A parameter from the body, else from the query string. */
function str(req: ApiRequest, name: string): string | undefined {
  const fromBody = req.body[name];
  if (fromBody !== undefined && fromBody !== null) return String(fromBody);
  const fromQuery = req.query.get(name);
  return fromQuery === null ? undefined : fromQuery;
}

function required(req: ApiRequest, name: string): string {
  const v = str(req, name);
  if (v === undefined || v === '') throw missing(name);
  return v;
}

function runIdOf(req: ApiRequest): string {
  const id = str(req, 'run_id') ?? str(req, 'run_uuid');
  if (id === undefined || id === '') throw missing('run_id');
  return id;
}

function viewType(req: ApiRequest, name: string): (stage: LifecycleStage) => boolean {
  const v = str(req, name) ?? 'ACTIVE_ONLY';
  if (v === 'ACTIVE_ONLY' || v === '1') return (s) => s === 'active';
  if (v === 'DELETED_ONLY' || v === '2') return (s) => s === 'deleted';
  if (v === 'ALL' || v === '3') return () => true;
  throw invalid(`Invalid value ${v} for parameter '${name}'`);
}

/** One page of `items` under `field`, with MLflow's `max_results` bounds and an opaque `page_token`. */
function paged<T>(req: ApiRequest, field: string, items: T[], defaultMax: number, hardMax: number, toJson: (item: T) => unknown = (item) => item): Record<string, unknown> {
  const rawMax = str(req, 'max_results');
  const max = rawMax === undefined ? defaultMax : Number(rawMax);
  if (!Number.isInteger(max) || max < 1 || max > hardMax) {
    throw invalid(`Invalid value for parameter 'max_results' supplied. It must be at most ${hardMax}, but got value ${rawMax}`);
  }
  const token = str(req, 'page_token');
  let offset = 0;
  if (token !== undefined && token !== '') {
    try {
      offset = (JSON.parse(Buffer.from(token, 'base64').toString('utf8')) as { offset: number }).offset;
    } catch {
      throw invalid(`Invalid page token, could not base64-decode`);
    }
  }
  const page = items.slice(offset, offset + max).map(toJson);
  const next = offset + max < items.length ? Buffer.from(JSON.stringify({ offset: offset + max })).toString('base64') : undefined;
  return omitEmpty({ [field]: page, ...(next === undefined ? {} : { next_page_token: next }) });
}

// ---------- reply shapes ----------

const kv = (map: Map<string, string>): KeyValue[] => [...map].map(([key, value]) => ({ key, value }));

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

const latestMetrics = (r: Run): Metric[] => [...r.metrics.values()].map(latestMetric);

const runJson = (r: Run): Record<string, unknown> => ({
  info: runInfoJson(r),
  data: omitEmpty({ metrics: latestMetrics(r), params: kv(r.params), tags: kv(r.tags) }),
  inputs: {},
});

const loggedModelInfo = (m: LoggedModel): Record<string, unknown> => ({
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
});

// ---------- /api/2.0/mlflow ----------

type Handler = Route['handler'];

const get = (handler: Handler): Route => ({ method: 'GET', handler });
const post = (handler: Handler): Route => ({ method: 'POST', handler });
/** A POST that changes something and answers `{}`, as most of MLflow's do. */
const change = (act: (req: ApiRequest) => void): Route =>
  post((req) => {
    act(req);
    return {};
  });

function v2Routes(store: FakeMlflowStore): Record<string, Route> {
  const runStage = (stage: LifecycleStage): Route =>
    change((req) => {
      store.run(runIdOf(req)).info.lifecycle_stage = stage;
    });
  return {
    'experiments/get-by-name': get((req) => {
      const name = required(req, 'experiment_name');
      const exp = store.experimentByName(name);
      if (exp === undefined) throw notFound(`Could not find experiment with name '${name}'`);
      return { experiment: experimentJson(exp) };
    }),
    'experiments/create': post((req) => {
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
    }),
    'experiments/get': get((req) => ({ experiment: experimentJson(store.experiment(required(req, 'experiment_id'))) })),
    'experiments/search': post((req) => {
      const stageOk = viewType(req, 'view_type');
      const filter = compileFilter(str(req, 'filter') ?? '', EXPERIMENT_FIELDS);
      const found = [...store.experiments.values()]
        .filter((e) => stageOk(e.lifecycle_stage) && filter(e))
        .sort((a, b) => b.creation_time - a.creation_time || Number(b.experiment_id) - Number(a.experiment_id));
      return paged(req, 'experiments', found, 1000, 50000, experimentJson);
    }),
    'experiments/delete': change((req) => {
      const exp = store.experiment(required(req, 'experiment_id'));
      if (exp.experiment_id === '0') throw invalid("Cannot delete the default experiment '0'. This is an internally reserved experiment.");
      store.setExperimentStage(exp, 'deleted');
    }),
    'experiments/restore': change((req) => {
      const exp = store.experiment(required(req, 'experiment_id'));
      if (exp.lifecycle_stage !== 'deleted') throw invalid(`Cannot restore an active experiment. experiment_id=${exp.experiment_id}`);
      store.setExperimentStage(exp, 'active');
    }),
    'experiments/update': change((req) => {
      const exp = store.experiment(required(req, 'experiment_id'));
      const newName = str(req, 'new_name');
      if (newName === undefined || newName === '') return;
      if (store.experimentByName(newName) !== undefined) throw new MlflowError('RESOURCE_ALREADY_EXISTS', `Experiment '${newName}' already exists.`);
      exp.name = newName;
      exp.last_update_time = Date.now();
    }),
    'experiments/set-experiment-tag': change((req) => {
      const exp = store.activeExperiment(required(req, 'experiment_id'));
      exp.tags.set(validateKey('Tag', req.body.key), String(req.body.value ?? ''));
    }),
    'runs/create': post((req) => {
      const expId = str(req, 'experiment_id');
      const exp = store.activeExperiment(expId === undefined || expId === '' ? '0' : expId);
      const run = store.createRun(exp, {
        tags: list(req.body.tags, 'tags'),
        runName: str(req, 'run_name'),
        userId: str(req, 'user_id') ?? '',
        startTime: Number(str(req, 'start_time') ?? Date.now()),
      });
      return { run: runJson(run) };
    }),
    'runs/get': get((req) => ({ run: runJson(store.run(runIdOf(req))) })),
    'runs/update': post((req) => {
      const r = store.activeRun(runIdOf(req));
      const status = str(req, 'status');
      if (status !== undefined) {
        if (!RUN_STATUSES.includes(status as RunStatus)) {
          throw invalid(`Invalid value "${status}" for parameter 'status' supplied. Valid values are ${RUN_STATUSES.join(', ')}.`);
        }
        r.info.status = status as RunStatus;
      }
      const end = str(req, 'end_time');
      if (end !== undefined) r.info.end_time = Number(end);
      const name = str(req, 'run_name');
      if (name !== undefined && name !== '') store.setTag(r, 'mlflow.runName', name);
      return { run_info: runInfoJson(r) };
    }),
    'runs/delete': runStage('deleted'),
    'runs/restore': runStage('active'),
    'runs/search': post((req) => {
      const ids = req.body.experiment_ids;
      if (!Array.isArray(ids) || ids.length === 0) throw missing('experiment_ids');
      const stageOk = viewType(req, 'run_view_type');
      const filter = compileFilter(str(req, 'filter') ?? '', RUN_FIELDS);
      const order = compileRunOrder(list(req.body.order_by, 'order_by').map(String));
      const found = [...store.runs.values()]
        .filter((r) => ids.map(String).includes(r.info.experiment_id) && stageOk(r.info.lifecycle_stage) && filter(r))
        .sort(order);
      return paged(req, 'runs', found, 1000, 50000, runJson);
    }),
    'runs/log-metric': change((req) => store.logMetric(store.activeRun(runIdOf(req)), req.body)),
    'runs/log-parameter': change((req) => store.logParam(store.activeRun(runIdOf(req)), req.body.key, req.body.value)),
    'runs/set-tag': change((req) => store.setTag(store.activeRun(runIdOf(req)), req.body.key, req.body.value)),
    'runs/delete-tag': change((req) => {
      const r = store.activeRun(runIdOf(req));
      const key = required(req, 'key');
      if (!r.tags.has(key)) throw notFound(`No tag with name: ${key} in run with id ${r.info.run_id}`);
      r.tags.delete(key);
    }),
    'runs/log-batch': change((req) => {
      const r = store.activeRun(runIdOf(req));
      store.logBatch(r, {
        metrics: list(req.body.metrics, 'metrics'),
        params: list(req.body.params, 'params'),
        tags: list(req.body.tags, 'tags'),
      });
    }),
    'metrics/get-history': get((req) => {
      const r = store.run(runIdOf(req));
      const key = required(req, 'metric_key');
      return paged(req, 'metrics', r.metrics.get(key) ?? [], 25000, 25000);
    }),
  };
}

// ---------- /api/3.0/mlflow ----------

function v3Routes(store: FakeMlflowStore): Record<string, Route> {
  return {
    'logged-models': post((req) => {
      const exp = store.experiment(required(req, 'experiment_id'));
      return { model: loggedModelInfo(store.createLoggedModel(exp, str(req, 'name'), str(req, 'source_run_id'))) };
    }),
    'logged-models/search': post((req) => {
      const ids = Array.isArray(req.body.experiment_ids) ? req.body.experiment_ids.map(String) : [];
      const found = [...store.loggedModels.values()].filter((m) => m.lifecycle_stage === 'active' && (ids.length === 0 || ids.includes(m.experiment_id)));
      return omitEmpty({ models: found.map(loggedModelInfo) });
    }),
  };
}

/** `logged-models/<id>`: GET and DELETE, the id in `rest`. */
function loggedModelById(store: FakeMlflowStore): Handler {
  return (req) => {
    const m = store.loggedModel(decodeURIComponent(req.rest));
    if (req.method === 'DELETE') {
      m.lifecycle_stage = 'deleted';
      return {};
    }
    return { model: loggedModelInfo(m) };
  };
}

/** Carries out one call to /api/<version>/mlflow/<endpoint> and gives the reply; `what` names the call in errors. */
export type TrackingApi = (
  req: http.IncomingMessage,
  version: '2.0' | '3.0',
  endpoint: string,
  query: URLSearchParams,
  count: ByteCount,
  what: string,
) => Promise<unknown>;

export function trackingApi(store: FakeMlflowStore): TrackingApi {
  const routes = { '2.0': v2Routes(store), '3.0': v3Routes(store) };
  const byId = loggedModelById(store);
  return async (req, version, endpoint, query, count, what) => {
    const method = req.method ?? 'GET';
    let route = routes[version][endpoint];
    let rest = '';
    const modelId = version === '3.0' ? /^logged-models\/([^/]+)$/.exec(endpoint) : null;
    if (modelId !== null && modelId[1] !== 'search' && (method === 'GET' || method === 'DELETE')) {
      route = { method, handler: byId };
      rest = modelId[1]!;
    }
    if (route === undefined) throw noEndpoint(what);
    if (method !== route.method) throw new MlflowError('ENDPOINT_NOT_FOUND', `The method ${method} is not allowed for ${what}; use ${route.method}`, 405);
    const body = await readJson(req, count, method);
    return route.handler({ method, query, body, rest });
  };
}
