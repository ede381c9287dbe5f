import { randomUUID } from 'node:crypto';
import type { Dispatcher } from 'undici';
import type { HeaderMap } from '../auth/provider.js';
import type { KvxConfig } from '../config/schema.js';
import { KvxError } from '../errors.js';
import type { RetryPolicy } from '../util/backoff.js';
import { RestCore } from '../util/rest.js';
import type { RestClientOptions, RestReply } from '../util/rest.js';
import { upstreamTlsOptions } from '../config/tls.js';
import type { Egress } from '../config/egress.js';
import { egressDispatcher } from '../net/egress-http.js';

export { undiciRequest } from '../util/rest.js';

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

export interface MlflowClientOptions extends RestClientOptions {
  /** The tracking server URL, optionally with a path prefix (https://host/mlflow). */
  trackingUri: string;
  headers?: HeaderSource;
}

/**
 * The tag `createRun` puts a fresh id in, so a create whose answer was lost can be found instead of made twice
 * (MLflow has no client-chosen run ids).
 */
export const CREATE_ID_TAG = 'kvx_create_id';

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

/** An undici dispatcher honouring the upstream.* TLS and connect settings and the egress (proxy, host aliases) the proxy uses too. */
export function mlflowDispatcher(config: KvxConfig, egress: Egress): Dispatcher {
  const { upstream } = config;
  return egressDispatcher(egress, { connect: { timeout: upstream.connectTimeoutMs, ...upstreamTlsOptions(upstream) }, connections: 8 });
}

/**
 * A small MLflow REST client: the calls kvx-launch needs, with MLflow's retry behaviour where a repeat is safe
 * (408/429/5xx and connection failures, `Retry-After` honoured), one credential refresh on 401, and runs/create
 * made safe to retry by a client-chosen id tag.
 */
export class MlflowClient {
  readonly trackingUri: string;
  private readonly rest: RestCore;
  private sibling: MlflowClient | undefined;

  /** `rest`, when given, is the core to use instead of one made from `options` (see `uninterrupted`). */
  constructor(options: MlflowClientOptions, rest?: RestCore) {
    this.trackingUri = options.trackingUri.replace(/\/+$/, '');
    const headers = options.headers;
    this.rest =
      rest ??
      new RestCore(options, {
        name: 'MLflow',
        retry: MLFLOW_DEFAULT_RETRY,
        timeoutMs: 120_000,
        headers: async () => (headers === undefined ? {} : { ...(await headers.headers()) }),
        ...(headers?.invalidate === undefined ? {} : { refreshAfter401: (sent: HeaderMap) => headers.invalidate!(sent) }),
        apiError: apiError,
        notJson: (label, reply) => new MlflowApiError(label, reply.status, 'BAD_RESPONSE', `answer is not JSON: ${snippet(reply.text)}`, 'check upstream.url points at the MLflow server, including its path prefix'),
        unreachable: (label, _url, detail, cause) =>
          new KvxError('KVX_UPSTREAM_UNREACHABLE', `cannot reach MLflow at ${new URL(this.trackingUri).origin} (${label}): ${detail}`, {
            hint: 'check upstream.url (--tracking-uri, MLFLOW_TRACKING_URI) and that the server is up',
            cause,
          }),
      });
  }

  /**
   * This client for the calls that leave a run in order after an interrupt (ending it, recording why): the
   * interrupt does not cut them short, and once it has fired they retry only briefly.
   */
  uninterrupted(): MlflowClient {
    return (this.sibling ??= new MlflowClient({ trackingUri: this.trackingUri }, this.rest.uninterrupted()));
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

  /** Names are unique, so a repeat is answered RESOURCE_ALREADY_EXISTS; after a lost answer the name finds it. */
  async createExperiment(name: string, tags: KeyValue[] = []): Promise<string> {
    const res = await this.request<{ experiment_id: string }>('POST', 'experiments/create', { name, tags }, true, async () => {
      const made = await this.uninterrupted().getExperimentByName(name);
      return made?.lifecycle_stage === 'active' ? { experiment_id: made.experiment_id } : undefined;
    });
    return res.experiment_id;
  }

  /** A repeat is refused (the experiment is active by then); after a lost answer the experiment's stage tells. */
  async restoreExperiment(experimentId: string): Promise<void> {
    await this.request('POST', 'experiments/restore', { experiment_id: experimentId }, true, async () => {
      const res = await this.uninterrupted().call<{ experiment: MlflowExperiment }>('GET', 'experiments/get', { experiment_id: experimentId });
      return res.experiment.lifecycle_stage === 'active' ? {} : undefined;
    });
  }

  /**
   * MLflow chooses run ids, so a repeated create would make a second run. The run is tagged with a fresh
   * `kvx_create_id`; when an attempt's outcome is unknown (the answer lost, a 5xx, an interrupt), the experiment is
   * searched for that tag before anything is sent again, and a run found there is the result.
   */
  async createRun(input: { experimentId: string; runName?: string; startTime?: number; tags?: KeyValue[]; userId?: string }): Promise<MlflowRun> {
    const createId = randomUUID();
    const body: Record<string, unknown> = {
      experiment_id: input.experimentId,
      start_time: input.startTime ?? Date.now(),
      tags: [...(input.tags ?? []), { key: CREATE_ID_TAG, value: createId }],
    };
    if (input.runName !== undefined) body['run_name'] = input.runName;
    if (input.userId !== undefined) body['user_id'] = input.userId;
    const res = await this.request<{ run: MlflowRun }>('POST', 'runs/create', body, false, async () => {
      const [made] = await this.uninterrupted().searchRuns({ experimentIds: [input.experimentId], filter: `tags.${CREATE_ID_TAG} = '${createId}'`, maxResults: 1 });
      return made === undefined ? undefined : { run: made };
    });
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
    const res = await this.request<{ run_info: MlflowRunInfo }>('POST', 'runs/update', body, true);
    return res.run_info;
  }

  async deleteRun(runId: string): Promise<void> {
    await this.request('POST', 'runs/delete', { run_id: runId }, true);
  }

  /** Tags in one request (MLflow takes at most 100 per batch; split above that). */
  async setTags(runId: string, tags: KeyValue[]): Promise<void> {
    for (let i = 0; i < tags.length; i += 100) {
      await this.request('POST', 'runs/log-batch', { run_id: runId, tags: tags.slice(i, i + 100), params: [], metrics: [] }, true);
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
      const res = await this.request<{ runs?: MlflowRun[]; next_page_token?: string }>('POST', 'runs/search', body, true);
      runs.push(...(res.runs ?? []));
      pageToken = res.next_page_token;
    } while (pageToken && runs.length < max);
    return runs;
  }

  /**
   * One REST call. GET parameters go in the query string, everything else in a JSON body, as the MLflow client
   * sends them. A GET is retried after any retryable failure; a POST, which may not be safe to repeat (log-metric
   * would log twice), only when MLflow cannot have acted on it, unless `idempotent` says a repeat is harmless.
   */
  async call<T = Record<string, unknown>>(method: 'GET' | 'POST', endpoint: string, params: Record<string, unknown>, how: { idempotent?: boolean } = {}): Promise<T> {
    return this.request<T>(method, endpoint, params, how.idempotent ?? method === 'GET');
  }

  private request<T>(method: 'GET' | 'POST', endpoint: string, params: Record<string, unknown>, idempotent: boolean, recover?: () => Promise<T | undefined>): Promise<T> {
    let url = `${this.trackingUri}/api/2.0/mlflow/${endpoint}`;
    let body: Record<string, unknown> | undefined;
    if (method === 'GET') {
      const query = new URLSearchParams();
      for (const [k, v] of Object.entries(params)) if (v !== undefined) query.append(k, String(v));
      url += `?${query.toString()}`;
    } else {
      body = params;
    }
    return this.rest.call<T>({ method, url, label: `${method} ${endpoint}`, idempotent, ...(body === undefined ? {} : { body }), ...(recover === undefined ? {} : { recover }) });
  }
}

function apiError(endpoint: string, { status, text }: RestReply): MlflowApiError {
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
