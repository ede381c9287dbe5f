/**
 * The fake's tracking data: experiments, runs and logged models, with MLflow's rules for what may be logged
 * (key names, value lengths, params that never change, all-or-nothing batches). Errors are thrown as MLflow
 * answers them; the routes only parse requests and shape replies.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { invalid, missing, notFound } from './protocol.js';
import type { MlflowError } from './protocol.js';

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

/** A metric's value as MLflow reports and filters it: its highest step's, the latest logged among equal steps. */
export function latestMetric(history: readonly Metric[]): Metric {
  return history.reduce((best, m) => (m.step > best.step || (m.step === best.step && m.timestamp >= best.timestamp) ? m : best));
}

export type LifecycleStage = 'active' | 'deleted';

export interface Experiment {
  experiment_id: string;
  name: string;
  artifact_location: string;
  lifecycle_stage: LifecycleStage;
  creation_time: number;
  last_update_time: number;
  tags: Map<string, string>;
}

export type RunStatus = 'RUNNING' | 'SCHEDULED' | 'FINISHED' | 'FAILED' | 'KILLED';

export const RUN_STATUSES: readonly RunStatus[] = ['RUNNING', 'SCHEDULED', 'FINISHED', 'FAILED', 'KILLED'];

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
    lifecycle_stage: LifecycleStage;
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
  lifecycle_stage: LifecycleStage;
}

export interface NewRun {
  /** `run_name`; when both it and an `mlflow.runName` tag are given they must agree. */
  runName: string | undefined;
  userId: string;
  startTime: number;
  /** Tags as sent, not yet validated. */
  tags: Record<string, unknown>[];
}

/** Entries of a `runs/log-batch` call as sent, not yet validated. */
export interface Batch {
  metrics: Record<string, unknown>[];
  params: Record<string, unknown>[];
  tags: Record<string, unknown>[];
}

const MAX_TAG_VALUE = 8000;
const MAX_PARAM_VALUE = 6000;
const MAX_ENTITY_KEY = 250;
const KEY_PATTERN = /^[/\w.\- ]*$/;
const BATCH_LIMITS = { metrics: 1000, params: 100, tags: 100 } as const;
const BATCH_TOTAL = 1000;
const ADJECTIVES = ['bright', 'calm', 'bold', 'clever', 'gentle', 'merry', 'quiet', 'swift'];
const NOUNS = ['fox', 'owl', 'hare', 'wren', 'lynx', 'crane', 'otter', 'finch'];

const tooLong = (what: string, text: string, limit: number): MlflowError =>
  invalid(`${what} '${text.slice(0, 40)}...' had length ${text.length}, which exceeded length limit of ${limit}`);

/** MLflow's rule for tag, param and metric keys (and experiment tag keys). */
export function validateKey(kind: 'Tag' | 'Param' | 'Metric', key: unknown): string {
  if (typeof key !== 'string' || key === '') throw missing('key');
  if (key.length > MAX_ENTITY_KEY) throw tooLong(kind, key, MAX_ENTITY_KEY);
  if (!KEY_PATTERN.test(key) || key.split('/').includes('..') || key.startsWith('/')) {
    throw invalid(
      `Invalid ${kind.toLowerCase()} name: '${key}'. Names may only contain alphanumerics, underscores (_), dashes (-), periods (.), spaces ( ), and slashes (/).`,
    );
  }
  return key;
}

function boundedValue(kind: 'Tag' | 'Param', value: unknown, limit: number): string {
  const v = value === undefined || value === null ? '' : String(value);
  if (v.length > limit) throw tooLong(`${kind} value`, v, limit);
  return v;
}

const randomName = (): string =>
  `${ADJECTIVES[randomBytes(1)[0]! % ADJECTIVES.length]}-${NOUNS[randomBytes(1)[0]! % NOUNS.length]}-${randomBytes(1)[0]! % 1000}`;

/** One tag write, in the order the server carried it out (to check that a tag never changes meaning). */
export interface TagWrite {
  runId: string;
  key: string;
  value: string;
  at: number;
}

export class FakeMlflowStore {
  readonly experiments = new Map<string, Experiment>();
  /** Every tag written to a run (run creation, set-tag, log-batch), in order. */
  readonly tagWrites: TagWrite[] = [];
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
    this.tagWrites.length = 0;
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

  experiment(id: string): Experiment {
    const exp = this.experiments.get(id);
    if (exp === undefined) throw notFound(`No Experiment with id=${id} exists`);
    return exp;
  }

  /** An experiment runs can be created in and tags set on. */
  activeExperiment(id: string): Experiment {
    const exp = this.experiment(id);
    if (exp.lifecycle_stage !== 'active') {
      throw invalid(`The experiment ${exp.experiment_id} must be in the 'active' state. Current state is deleted.`);
    }
    return exp;
  }

  /** Deleting or restoring an experiment takes its runs along, as MLflow's stores do. */
  setExperimentStage(exp: Experiment, stage: LifecycleStage): void {
    exp.lifecycle_stage = stage;
    exp.last_update_time = Date.now();
    for (const r of this.runsIn(exp.experiment_id)) r.info.lifecycle_stage = stage;
  }

  run(id: string): Run {
    const r = this.runs.get(id);
    if (r === undefined) throw notFound(`Run with id=${id} not found`);
    return r;
  }

  /** A run that may be logged to or updated. */
  activeRun(id: string): Run {
    const r = this.run(id);
    if (r.info.lifecycle_stage !== 'active') {
      throw invalid(`The run ${id} must be in the 'active' state. Current state is ${r.info.lifecycle_stage}.`);
    }
    return r;
  }

  createRun(exp: Experiment, input: NewRun): Run {
    const nameTag = input.tags.find((t) => t.key === 'mlflow.runName')?.value;
    const runName = input.runName === '' ? undefined : input.runName;
    if (runName !== undefined && nameTag !== undefined && nameTag !== runName) {
      throw invalid(`Both 'run_name' argument and 'mlflow.runName' tag are specified, but with different values (run_name='${runName}', mlflow.runName='${String(nameTag)}').`);
    }
    const id = randomUUID().replaceAll('-', '');
    const name = runName ?? (nameTag !== undefined ? String(nameTag) : randomName());
    const r: Run = {
      info: {
        run_id: id,
        run_name: name,
        experiment_id: exp.experiment_id,
        user_id: input.userId,
        status: 'RUNNING',
        start_time: input.startTime,
        artifact_uri: `${exp.artifact_location}/${id}/artifacts`,
        lifecycle_stage: 'active',
      },
      params: new Map(),
      tags: new Map(),
      metrics: new Map(),
    };
    for (const t of input.tags) this.setTag(r, t.key, t.value);
    r.tags.set('mlflow.runName', name);
    this.runs.set(id, r);
    return r;
  }

  setTag(r: Run, key: unknown, value: unknown, record = true): void {
    const k = validateKey('Tag', key);
    const v = boundedValue('Tag', value, MAX_TAG_VALUE);
    r.tags.set(k, v);
    if (k === 'mlflow.runName') r.info.run_name = v;
    if (record) this.tagWrites.push({ runId: r.info.run_id, key: k, value: v, at: Date.now() });
  }

  logParam(r: Run, key: unknown, value: unknown): void {
    const k = validateKey('Param', key);
    const v = boundedValue('Param', value, MAX_PARAM_VALUE);
    const old = r.params.get(k);
    if (old !== undefined && old !== v) {
      throw invalid(
        `Changing param values is not allowed. Param with key='${k}' was already logged with value='${old}' for run ID='${r.info.run_id}'. Attempted logging new value '${v}'.`,
      );
    }
    r.params.set(k, v);
  }

  logMetric(r: Run, m: Record<string, unknown>): void {
    const k = validateKey('Metric', m.key);
    if (m.value === undefined || m.value === null) throw missing('value');
    if (m.timestamp === undefined || m.timestamp === null) throw missing('timestamp');
    const value = typeof m.value === 'string' ? Number(m.value) : m.value;
    if (typeof value !== 'number' || (Number.isNaN(value) && m.value !== 'NaN')) {
      throw invalid(`Got invalid value ${JSON.stringify(m.value)} for metric '${k}' (timestamp=${String(m.timestamp)}). Please specify value as a valid double (64-bit floating point)`);
    }
    const history = r.metrics.get(k) ?? [];
    history.push({ key: k, value, timestamp: Number(m.timestamp), step: Number(m.step ?? 0) });
    r.metrics.set(k, history);
  }

  /** MLflow's batch is all-or-nothing: everything is validated on a copy before the run changes. */
  logBatch(r: Run, batch: Batch): void {
    for (const what of ['metrics', 'params', 'tags'] as const) {
      const n = batch[what].length;
      const max = BATCH_LIMITS[what];
      if (n > max) throw invalid(`A batch logging request can contain at most ${max} ${what}. Got ${n} ${what}. Please split up ${what} across multiple requests and try again.`);
    }
    const total = batch.metrics.length + batch.params.length + batch.tags.length;
    if (total > BATCH_TOTAL) {
      throw invalid(`A batch logging request can contain at most ${BATCH_TOTAL} metrics, params, and tags in total. Got ${total}.`);
    }
    const probe: Run = {
      info: { ...r.info },
      params: new Map(r.params),
      tags: new Map(r.tags),
      metrics: new Map([...r.metrics].map(([k, v]) => [k, [...v]])),
    };
    for (const p of batch.params) this.logParam(probe, p.key, p.value);
    for (const m of batch.metrics) this.logMetric(probe, m);
    for (const t of batch.tags) this.setTag(probe, t.key, t.value, false);
    for (const t of batch.tags) this.tagWrites.push({ runId: r.info.run_id, key: String(t.key), value: String(t.value ?? ''), at: Date.now() });
    r.params = probe.params;
    r.tags = probe.tags;
    r.metrics = probe.metrics;
    r.info = probe.info;
  }

  createLoggedModel(exp: Experiment, name: string | undefined, sourceRunId: string | undefined): LoggedModel {
    const id = `m-${randomUUID().replaceAll('-', '')}`;
    const m: LoggedModel = {
      model_id: id,
      experiment_id: exp.experiment_id,
      name: name ?? id,
      creation_timestamp_ms: Date.now(),
      lifecycle_stage: 'active',
    };
    if (sourceRunId !== undefined && sourceRunId !== '') m.source_run_id = this.run(sourceRunId).info.run_id;
    this.loggedModels.set(id, m);
    return m;
  }

  /** A logged model that is not deleted. */
  loggedModel(id: string): LoggedModel {
    const m = this.loggedModels.get(id);
    if (m === undefined || m.lifecycle_stage === 'deleted') throw notFound(`Logged model with ID '${id}' not found.`);
    return m;
  }
}
