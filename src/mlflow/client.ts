import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type * as Undici from 'undici';
import type { Dispatcher } from 'undici';
import type { HeaderMap } from '../auth/provider.js';
import type { KvxConfig } from '../config/schema.js';
import { KvxError, errorMessage } from '../errors.js';
import type { Logger } from '../log/logger.js';
import { silentLogger } from '../log/logger.js';
import { RETRYABLE_STATUSES, backoffDelayMs, parseRetryAfter, sleep } from '../util/backoff.js';
import type { RetryPolicy } from '../util/backoff.js';
import { VERSION } from '../version.js';

/** Where request headers come from; a HeaderInjector fits, and so does a fixed map for tests. */
export interface HeaderSource {
  headers(): HeaderMap | Promise<HeaderMap>;
  /** Called with the headers a request carried when the server answered 401. */
  invalidate?(rejected: HeaderMap): Promise<void>;
}

export interface KeyValue {
  key: string;
  value: string;
}

export interface MlflowExperiment {
  experiment_id: string;
  name: string;
  artifact_location?: string;
  lifecycle_stage: 'active' | 'deleted';
  tags?: KeyValue[];
}

export type MlflowRunStatus = 'RUNNING' | 'SCHEDULED' | 'FINISHED' | 'FAILED' | 'KILLED';

export interface MlflowRunInfo {
  run_id: string;
  run_name?: string;
  experiment_id: string;
  status: MlflowRunStatus;
  start_time?: number;
  end_time?: number;
  artifact_uri?: string;
  lifecycle_stage: 'active' | 'deleted';
}

export interface MlflowRun {
  info: MlflowRunInfo;
  data: { tags?: KeyValue[]; params?: KeyValue[]; metrics?: { key: string; value: number; timestamp: number; step: number }[] };
}

/** An MLflow REST call the server answered with an error. `errorCode` is MLflow's (RESOURCE_DOES_NOT_EXIST, ...). */
export class MlflowApiError extends KvxError {
  constructor(
    readonly endpoint: string,
    readonly status: number,
    readonly errorCode: string,
    serverMessage: string,
    hint?: string,
  ) {
    super('KVX_MLFLOW_API', `MLflow ${endpoint} failed with ${status} ${errorCode}: ${serverMessage}`, hint === undefined ? {} : { hint });
  }
}

export interface MlflowClientOptions {
  /** The tracking server URL, optionally with a path prefix (https://host/mlflow). */
  trackingUri: string;
  headers?: HeaderSource;
  logger?: Logger;
  retry?: Partial<RetryPolicy>;
  /** Per-request limit for response headers and for pauses in the body. */
  timeoutMs?: number;
  dispatcher?: Dispatcher;
}

/** MLflow's own defaults (MLFLOW_HTTP_REQUEST_MAX_RETRIES and friends). */
export const MLFLOW_DEFAULT_RETRY: RetryPolicy = { maxRetries: 7, backoffFactorMs: 2000, jitterMs: 1000, maxDelayMs: 120_000 };

/**
 * Reads the MLflow client's retry environment variables, so a user who tuned them for `mlflow` gets the same
 * behaviour from kvx-launch.
 */
export function retryPolicyFromEnv(env: NodeJS.ProcessEnv): { retry: RetryPolicy; timeoutMs: number } {
  const num = (name: string, fallback: number): number => {
    const raw = env[name];
    if (raw === undefined || raw.trim() === '') return fallback;
    const n = Number(raw);
    if (!Number.isFinite(n) || n < 0) throw new KvxError('KVX_USAGE', `${name} must be a non-negative number, got "${raw}"`);
    return n;
  };
  return {
    retry: {
      maxRetries: Math.floor(num('MLFLOW_HTTP_REQUEST_MAX_RETRIES', MLFLOW_DEFAULT_RETRY.maxRetries)),
      backoffFactorMs: num('MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR', MLFLOW_DEFAULT_RETRY.backoffFactorMs / 1000) * 1000,
      jitterMs: num('MLFLOW_HTTP_REQUEST_BACKOFF_JITTER', MLFLOW_DEFAULT_RETRY.jitterMs / 1000) * 1000,
      maxDelayMs: MLFLOW_DEFAULT_RETRY.maxDelayMs,
    },
    timeoutMs: num('MLFLOW_HTTP_REQUEST_TIMEOUT', 120) * 1000,
  };
}

/** An undici dispatcher honouring the upstream.* TLS and connect settings the proxy uses too. */
export function mlflowDispatcher(config: KvxConfig): Dispatcher {
  const { upstream } = config;
  const connect: Record<string, unknown> = { timeout: upstream.connectTimeoutMs };
  if (upstream.caFile) connect['ca'] = readFileSync(upstream.caFile);
  if (upstream.certFile) connect['cert'] = readFileSync(upstream.certFile);
  if (upstream.keyFile) connect['key'] = readFileSync(upstream.keyFile);
  if (upstream.insecure) connect['rejectUnauthorized'] = false;
  return new (undici().Agent)({ connect, connections: 8 });
}

/**
 * A small MLflow REST client: the calls kvx-launch needs, with MLflow's retry behaviour (408/429/5xx and
 * connection failures, every method, `Retry-After` honoured) and one credential refresh on 401.
 */
export class MlflowClient {
  readonly trackingUri: string;
  private readonly retry: RetryPolicy;
  private readonly timeoutMs: number;
  private readonly logger: Logger;

  constructor(private readonly options: MlflowClientOptions) {
    this.trackingUri = options.trackingUri.replace(/\/+$/, '');
    this.retry = { ...MLFLOW_DEFAULT_RETRY, ...options.retry };
    this.timeoutMs = options.timeoutMs ?? 120_000;
    this.logger = options.logger ?? silentLogger;
  }

  /** The run's page in the MLflow UI. */
  runUrl(experimentId: string, runId: string): string {
    return `${this.trackingUri}/#/experiments/${encodeURIComponent(experimentId)}/runs/${encodeURIComponent(runId)}`;
  }

  async getExperimentByName(name: string): Promise<MlflowExperiment | undefined> {
    try {
      const res = await this.call<{ experiment: MlflowExperiment }>('GET', 'experiments/get-by-name', { experiment_name: name });
      return res.experiment;
    } catch (err) {
      if (err instanceof MlflowApiError && err.errorCode === 'RESOURCE_DOES_NOT_EXIST') return undefined;
      throw err;
    }
  }

  async createExperiment(name: string, tags: KeyValue[] = []): Promise<string> {
    const res = await this.call<{ experiment_id: string }>('POST', 'experiments/create', { name, tags });
    return res.experiment_id;
  }

  async restoreExperiment(experimentId: string): Promise<void> {
    await this.call('POST', 'experiments/restore', { experiment_id: experimentId });
  }

  async createRun(input: { experimentId: string; runName?: string; startTime?: number; tags?: KeyValue[]; userId?: string }): Promise<MlflowRun> {
    const body: Record<string, unknown> = {
      experiment_id: input.experimentId,
      start_time: input.startTime ?? Date.now(),
      tags: input.tags ?? [],
    };
    if (input.runName !== undefined) body['run_name'] = input.runName;
    if (input.userId !== undefined) body['user_id'] = input.userId;
    const res = await this.call<{ run: MlflowRun }>('POST', 'runs/create', body);
    return res.run;
  }

  async getRun(runId: string): Promise<MlflowRun> {
    const res = await this.call<{ run: MlflowRun }>('GET', 'runs/get', { run_id: runId, run_uuid: runId });
    return res.run;
  }

  async updateRun(runId: string, update: { status?: MlflowRunStatus; endTime?: number }): Promise<MlflowRunInfo> {
    const body: Record<string, unknown> = { run_id: runId, run_uuid: runId };
    if (update.status !== undefined) body['status'] = update.status;
    if (update.endTime !== undefined) body['end_time'] = update.endTime;
    const res = await this.call<{ run_info: MlflowRunInfo }>('POST', 'runs/update', body);
    return res.run_info;
  }

  async deleteRun(runId: string): Promise<void> {
    await this.call('POST', 'runs/delete', { run_id: runId });
  }

  async setTag(runId: string, key: string, value: string): Promise<void> {
    await this.call('POST', 'runs/set-tag', { run_id: runId, run_uuid: runId, key, value });
  }

  /** Tags in one request (MLflow takes at most 100 per batch; split above that). */
  async setTags(runId: string, tags: KeyValue[]): Promise<void> {
    for (let i = 0; i < tags.length; i += 100) {
      await this.call('POST', 'runs/log-batch', { run_id: runId, tags: tags.slice(i, i + 100), params: [], metrics: [] });
    }
  }

  async logParams(runId: string, params: KeyValue[]): Promise<void> {
    for (let i = 0; i < params.length; i += 100) {
      await this.call('POST', 'runs/log-batch', { run_id: runId, params: params.slice(i, i + 100), tags: [], metrics: [] });
    }
  }

  async searchRuns(input: { experimentIds: string[]; filter?: string; maxResults?: number; orderBy?: string[]; viewType?: 'ACTIVE_ONLY' | 'DELETED_ONLY' | 'ALL' }): Promise<MlflowRun[]> {
    const runs: MlflowRun[] = [];
    let pageToken: string | undefined;
    const max = input.maxResults ?? 1000;
    do {
      const body: Record<string, unknown> = {
        experiment_ids: input.experimentIds,
        filter: input.filter ?? '',
        run_view_type: input.viewType ?? 'ACTIVE_ONLY',
        max_results: Math.min(max - runs.length, 1000),
        order_by: input.orderBy ?? [],
      };
      if (pageToken !== undefined) body['page_token'] = pageToken;
      const res = await this.call<{ runs?: MlflowRun[]; next_page_token?: string }>('POST', 'runs/search', body);
      runs.push(...(res.runs ?? []));
      pageToken = res.next_page_token;
    } while (pageToken && runs.length < max);
    return runs;
  }

  /**
   * One REST call. GET parameters go in the query string, everything else in a JSON body, as the MLflow
   * client sends them.
   */
  async call<T = Record<string, unknown>>(method: 'GET' | 'POST', endpoint: string, params: Record<string, unknown>): Promise<T> {
    let url = `${this.trackingUri}/api/2.0/mlflow/${endpoint}`;
    let body: string | undefined;
    if (method === 'GET') {
      const query = new URLSearchParams();
      for (const [k, v] of Object.entries(params)) if (v !== undefined) query.append(k, String(v));
      url += `?${query.toString()}`;
    } else {
      body = JSON.stringify(params);
    }
    const label = `${method} ${endpoint}`;
    let refreshed = false;
    for (let attempt = 0; ; attempt++) {
      const sent = await this.authHeaders();
      let status: number;
      let text: string;
      let retryAfter: string | string[] | undefined;
      try {
        const res = await undici().request(url, {
          method,
          headers: {
            ...sent,
            'user-agent': `kvx-launch/${VERSION}`,
            accept: 'application/json',
            ...(body === undefined ? {} : { 'content-type': 'application/json' }),
          },
          body,
          headersTimeout: this.timeoutMs,
          bodyTimeout: this.timeoutMs,
          ...(this.options.dispatcher === undefined ? {} : { dispatcher: this.options.dispatcher }),
        });
        status = res.statusCode;
        retryAfter = res.headers['retry-after'];
        text = await res.body.text();
      } catch (err) {
        if (attempt < this.retry.maxRetries) {
          const delay = backoffDelayMs(this.retry, attempt + 1);
          this.logger.warn('MLflow request failed; retrying', { endpoint: label, error: errorMessage(err), delayMs: Math.round(delay) });
          await sleep(delay);
          continue;
        }
        throw new KvxError('KVX_UPSTREAM_UNREACHABLE', `cannot reach MLflow at ${new URL(this.trackingUri).origin} (${label}): ${networkErrorText(err)}`, {
          hint: 'check upstream.url (--tracking-uri, MLFLOW_TRACKING_URI) and that the server is up',
          cause: err,
        });
      }

      if (status === 401 && !refreshed && this.options.headers?.invalidate !== undefined) {
        refreshed = true;
        this.logger.info('MLflow answered 401; refreshing credentials and retrying once', { endpoint: label });
        await this.options.headers.invalidate(sent);
        attempt--;
        continue;
      }
      if (RETRYABLE_STATUSES.has(status) && attempt < this.retry.maxRetries) {
        const delay = backoffDelayMs(this.retry, attempt + 1, parseRetryAfter(retryAfter));
        this.logger.warn('MLflow answered a retryable status; retrying', { endpoint: label, status, delayMs: Math.round(delay) });
        await sleep(delay);
        continue;
      }
      if (status >= 200 && status < 300) {
        if (text.trim() === '') return {} as T;
        try {
          return JSON.parse(text) as T;
        } catch {
          throw new MlflowApiError(label, status, 'BAD_RESPONSE', `answer is not JSON: ${snippet(text)}`, 'check upstream.url points at the MLflow server, including its path prefix');
        }
      }
      throw apiError(label, status, text);
    }
  }

  private async authHeaders(): Promise<HeaderMap> {
    if (this.options.headers === undefined) return {};
    return { ...(await this.options.headers.headers()) };
  }
}

function apiError(endpoint: string, status: number, text: string): MlflowApiError {
  let code = `HTTP_${status}`;
  let message = snippet(text) || '(empty body)';
  try {
    const parsed = JSON.parse(text) as { error_code?: unknown; message?: unknown };
    if (typeof parsed.error_code === 'string') code = parsed.error_code;
    if (typeof parsed.message === 'string') message = parsed.message;
  } catch {
    // Not MLflow's JSON: an auth layer, a load balancer or the wrong URL answered; its text is the message.
  }
  let hint: string | undefined;
  if (status === 401 || status === 403) {
    hint =
      'the server or the auth layer in front of it rejected kvx-launch\'s credentials: check auth.* (client_id is the IAP audience; ' +
      'the caller needs IAP-secured Web App User), or point upstream.url at a running kvx-proxy with auth.provider: none';
  } else if (code === 'ENDPOINT_NOT_FOUND' || (status === 404 && code.startsWith('HTTP_'))) {
    hint = 'check upstream.url points at the MLflow tracking server, including any path prefix such as /mlflow';
  }
  return new MlflowApiError(endpoint, status, code, message, hint);
}

function snippet(text: string): string {
  const oneLine = text.replace(/\s+/g, ' ').trim();
  return oneLine.length > 300 ? `${oneLine.slice(0, 300)}…` : oneLine;
}

function networkErrorText(err: unknown): string {
  const code = (err as { code?: string }).code;
  const cause = (err as { cause?: { code?: string } }).cause?.code;
  return [code ?? cause, errorMessage(err)].filter(Boolean).join(': ');
}

/**
 * undici loaded on first use: kvx-proxy imports this module for its doctor command, and undici's entry point
 * would add about 80 ms to every proxy start.
 */
/** undici's request(), for modules that share this lazy load. */
export function undiciRequest(): typeof Undici.request {
  return undici().request;
}

function undici(): typeof Undici {
  return createRequire(import.meta.url)('undici') as typeof Undici;
}
