import { GoogleAuth } from 'google-auth-library';
import { request } from 'undici';
import type { Dispatcher } from 'undici';
import { KvxError, errorMessage } from '../errors.js';
import type { Logger } from '../log/logger.js';
import { silentLogger } from '../log/logger.js';
import { RETRYABLE_STATUSES, backoffDelayMs, parseRetryAfter, sleep } from '../util/backoff.js';
import type { RetryPolicy } from '../util/backoff.js';
import { VERSION } from '../version.js';

export const CLOUD_PLATFORM_SCOPE = 'https://www.googleapis.com/auth/cloud-platform';

/** Anything that yields Google request headers; google-auth-library's GoogleAuth and its clients fit. */
export interface GoogleHeaderSource {
  getRequestHeaders(url?: string): Promise<Headers | Record<string, string>>;
}

/**
 * Application Default Credentials with the cloud-platform scope, as the Vertex AI SDK uses them. The project is
 * passed in because we know it; otherwise the library shells out to gcloud to guess it, which costs seconds.
 */
export function applicationDefaultCredentials(projectId: string): GoogleHeaderSource {
  return new GoogleAuth({ scopes: [CLOUD_PLATFORM_SCOPE], projectId });
}

export type PipelineState =
  | 'PIPELINE_STATE_UNSPECIFIED'
  | 'PIPELINE_STATE_QUEUED'
  | 'PIPELINE_STATE_PENDING'
  | 'PIPELINE_STATE_RUNNING'
  | 'PIPELINE_STATE_SUCCEEDED'
  | 'PIPELINE_STATE_FAILED'
  | 'PIPELINE_STATE_CANCELLING'
  | 'PIPELINE_STATE_CANCELLED'
  | 'PIPELINE_STATE_PAUSED';

export interface TaskDetail {
  taskId?: string;
  parentTaskId?: string;
  taskName: string;
  state?: string;
  createTime?: string;
  startTime?: string;
  endTime?: string;
  error?: { code?: number; message?: string };
}

export interface PipelineJob {
  name: string;
  displayName?: string;
  state?: PipelineState;
  createTime?: string;
  startTime?: string;
  endTime?: string;
  labels?: Record<string, string>;
  error?: { code?: number; message?: string };
  jobDetail?: { taskDetails?: TaskDetail[]; pipelineRunContext?: { name?: string } };
  [key: string]: unknown;
}

/** A Vertex ML Metadata context (an experiment, a pipeline run, ...). */
export interface MetadataContext {
  name: string;
  displayName?: string;
  description?: string;
  schemaTitle?: string;
  schemaVersion?: string;
  metadata?: Record<string, unknown>;
  parentContexts?: string[];
  [key: string]: unknown;
}

/** A google.longrunning.Operation, as Vertex returns for slow creates. */
export interface LongRunningOperation {
  name: string;
  done?: boolean;
  error?: { code?: number; message?: string };
  [key: string]: unknown;
}

export const TERMINAL_STATES: ReadonlySet<string> = new Set(['PIPELINE_STATE_SUCCEEDED', 'PIPELINE_STATE_FAILED', 'PIPELINE_STATE_CANCELLED']);

/** `PIPELINE_STATE_RUNNING` → `RUNNING`, as people and kedro-vertexai say it. */
export function shortState(state: string | undefined): string {
  return (state ?? 'PIPELINE_STATE_UNSPECIFIED').replace(/^PIPELINE_STATE_/, '');
}

/** A Vertex AI API call Google answered with an error; `status` is Google's (PERMISSION_DENIED, ...). */
export class VertexApiError extends KvxError {
  /** True when an earlier attempt of the same call failed in a way that may have reached Google. */
  retried = false;

  constructor(
    readonly operation: string,
    readonly httpStatus: number,
    readonly status: string,
    readonly googleMessage: string,
    hint?: string,
  ) {
    super('KVX_VERTEX_API', `Vertex AI ${operation} failed with ${httpStatus} ${status}: ${googleMessage}`, hint === undefined ? {} : { hint });
  }
}

export interface VertexClientOptions {
  projectId: string;
  region: string;
  /** API base URL; https://<region>-aiplatform.googleapis.com by default. */
  endpoint?: string;
  auth: GoogleHeaderSource;
  logger?: Logger;
  retry?: Partial<RetryPolicy>;
  timeoutMs?: number;
  dispatcher?: Dispatcher;
}

const DEFAULT_RETRY: RetryPolicy = { maxRetries: 5, backoffFactorMs: 1000, jitterMs: 500, maxDelayMs: 60_000 };

/** The PipelineJob calls of the Vertex AI REST API (v1). */
export class VertexClient {
  readonly endpoint: string;
  private readonly retry: RetryPolicy;
  private readonly logger: Logger;

  constructor(private readonly options: VertexClientOptions) {
    this.endpoint = (options.endpoint || `https://${options.region}-aiplatform.googleapis.com`).replace(/\/+$/, '');
    this.retry = { ...DEFAULT_RETRY, ...options.retry };
    this.logger = options.logger ?? silentLogger;
  }

  get parent(): string {
    return `projects/${this.options.projectId}/locations/${this.options.region}`;
  }

  /** A job id or a full resource name → the full resource name. */
  jobName(job: string): string {
    return job.startsWith('projects/') ? job : `${this.parent}/pipelineJobs/${job}`;
  }

  consoleUrl(jobId: string): string {
    const id = jobId.split('/').pop()!;
    return `https://console.cloud.google.com/vertex-ai/locations/${encodeURIComponent(this.options.region)}/pipelines/runs/${encodeURIComponent(id)}?project=${encodeURIComponent(this.options.projectId)}`;
  }

  /**
   * Creates the job. Retrying a create is safe because the id is ours: when an earlier attempt did reach
   * Google, the retry gets ALREADY_EXISTS, and the existing job is returned if it carries `ownerLabel`.
   */
  async createPipelineJob(jobId: string, body: Record<string, unknown>, ownerLabel: [string, string]): Promise<PipelineJob> {
    try {
      return await this.call<PipelineJob>('POST', `/v1/${this.parent}/pipelineJobs?pipelineJobId=${encodeURIComponent(jobId)}`, 'pipelineJobs.create', body);
    } catch (err) {
      if (err instanceof VertexApiError && err.status === 'ALREADY_EXISTS' && err.retried) {
        const existing = await this.getPipelineJob(jobId);
        if (existing.labels?.[ownerLabel[0]] === ownerLabel[1]) return existing;
      }
      throw err;
    }
  }

  async getPipelineJob(job: string): Promise<PipelineJob> {
    return this.call<PipelineJob>('GET', `/v1/${this.jobName(job)}`, 'pipelineJobs.get');
  }

  async cancelPipelineJob(job: string): Promise<void> {
    await this.call('POST', `/v1/${this.jobName(job)}:cancel`, 'pipelineJobs.cancel', {});
  }

  /** The project's default ML Metadata store, where experiments and pipeline run contexts live. */
  get metadataStore(): string {
    return `${this.parent}/metadataStores/default`;
  }

  async getMetadataStore(): Promise<Record<string, unknown>> {
    return this.call('GET', `/v1/${this.metadataStore}`, 'metadataStores.get');
  }

  async createDefaultMetadataStore(): Promise<LongRunningOperation> {
    return this.call('POST', `/v1/${this.parent}/metadataStores?metadataStoreId=default`, 'metadataStores.create', {});
  }

  async getOperation(name: string): Promise<LongRunningOperation> {
    return this.call('GET', `/v1/${name}`, 'operations.get');
  }

  async getContext(contextId: string): Promise<MetadataContext> {
    return this.call('GET', `/v1/${this.metadataStore}/contexts/${encodeURIComponent(contextId)}`, 'metadataStores.contexts.get');
  }

  async createContext(contextId: string, body: Record<string, unknown>): Promise<MetadataContext> {
    return this.call('POST', `/v1/${this.metadataStore}/contexts?contextId=${encodeURIComponent(contextId)}`, 'metadataStores.contexts.create', body);
  }

  /** Makes `children` (full context resource names) children of `context`; adding an existing child is a no-op. */
  async addContextChildren(context: string, children: string[]): Promise<void> {
    await this.call('POST', `/v1/${context}:addContextChildren`, 'metadataStores.contexts.addContextChildren', { childContexts: children });
  }

  /** Downloads a pipeline template (Artifact Registry `https://<region>-kfp.pkg.dev/...`) with the same credentials. */
  async fetchTemplate(uri: string): Promise<string> {
    return this.call<string>('GET', uri, 'template download', undefined, true);
  }

  private async call<T>(method: 'GET' | 'POST', pathOrUrl: string, operation: string, body?: unknown, raw = false): Promise<T> {
    const url = /^https?:\/\//.test(pathOrUrl) ? pathOrUrl : `${this.endpoint}${pathOrUrl}`;
    let retried = false;
    for (let attempt = 0; ; attempt++) {
      const headers = await this.googleHeaders(operation);
      let status: number;
      let text: string;
      let retryAfter: string | string[] | undefined;
      try {
        const res = await request(url, {
          method,
          headers: {
            ...headers,
            'user-agent': `kvx-launch/${VERSION}`,
            'x-goog-api-client': `kvx-launch/${VERSION}`,
            accept: raw ? '*/*' : 'application/json',
            ...(body === undefined ? {} : { 'content-type': 'application/json' }),
          },
          body: body === undefined ? undefined : JSON.stringify(body),
          headersTimeout: this.options.timeoutMs ?? 60_000,
          bodyTimeout: this.options.timeoutMs ?? 60_000,
          ...(this.options.dispatcher === undefined ? {} : { dispatcher: this.options.dispatcher }),
        });
        status = res.statusCode;
        retryAfter = res.headers['retry-after'];
        text = await res.body.text();
      } catch (err) {
        if (attempt < this.retry.maxRetries) {
          retried = true;
          await sleep(backoffDelayMs(this.retry, attempt + 1));
          continue;
        }
        throw new KvxError('KVX_VERTEX_API', `cannot reach the Vertex AI API at ${new URL(url).origin} (${operation}): ${errorMessage(err)}`, {
          hint: 'check vertex.region and vertex.endpoint, and network access to Google APIs',
          cause: err,
        });
      }
      if (RETRYABLE_STATUSES.has(status) && attempt < this.retry.maxRetries) {
        retried = true;
        const delay = backoffDelayMs(this.retry, attempt + 1, parseRetryAfter(retryAfter));
        this.logger.warn('Vertex AI answered a retryable status; retrying', { operation, status, delayMs: Math.round(delay) });
        await sleep(delay);
        continue;
      }
      if (status >= 200 && status < 300) {
        if (raw) return text as T;
        try {
          return (text.trim() === '' ? {} : JSON.parse(text)) as T;
        } catch {
          throw new VertexApiError(operation, status, 'BAD_RESPONSE', 'the answer is not JSON', 'check vertex.endpoint');
        }
      }
      const error = googleError(operation, status, text, this.options.projectId);
      error.retried = retried;
      throw error;
    }
  }

  private async googleHeaders(operation: string): Promise<Record<string, string>> {
    let headers: Headers | Record<string, string>;
    try {
      headers = await this.options.auth.getRequestHeaders();
    } catch (err) {
      throw new KvxError('KVX_CREDENTIALS_UNAVAILABLE', `no Google credentials for Vertex AI ${operation}: ${errorMessage(err).split('\n')[0]}`, {
        hint: 'run `gcloud auth application-default login`, set GOOGLE_APPLICATION_CREDENTIALS, or run where a metadata server is available',
      });
    }
    if (typeof (headers as Headers).forEach === 'function') {
      const out: Record<string, string> = {};
      (headers as Headers).forEach((v, k) => (out[k] = v));
      return out;
    }
    return { ...(headers as Record<string, string>) };
  }
}

function googleError(operation: string, httpStatus: number, text: string, projectId: string): VertexApiError {
  let status = `HTTP_${httpStatus}`;
  let message = text.replace(/\s+/g, ' ').trim().slice(0, 300) || '(empty body)';
  try {
    const parsed = JSON.parse(text) as { error?: { status?: string; message?: string } };
    if (typeof parsed.error?.status === 'string') status = parsed.error.status;
    if (typeof parsed.error?.message === 'string') message = parsed.error.message;
  } catch {
    // Not Google's error JSON (a proxy or the wrong endpoint answered); the text is the message.
  }
  return new VertexApiError(operation, httpStatus, status, message, hintFor(status, message, projectId));
}

function hintFor(status: string, message: string, projectId: string): string | undefined {
  if (/SERVICE_DISABLED|has not been used|is disabled/i.test(message)) {
    return `enable the API: gcloud services enable aiplatform.googleapis.com --project ${projectId}`;
  }
  if (/network/i.test(message)) {
    return 'vertex.network must be projects/<project number>/global/networks/<vpc>, and that VPC must be peered with Vertex AI (private services access)';
  }
  if (/serviceAccount|service account|actAs/i.test(message) && (status === 'PERMISSION_DENIED' || status === 'INVALID_ARGUMENT')) {
    return 'the caller needs Service Account User (roles/iam.serviceAccountUser) on the pipeline\'s service account (vertex.serviceAccount), and that account must exist';
  }
  switch (status) {
    case 'PERMISSION_DENIED':
      return `the caller needs Vertex AI User (roles/aiplatform.user) on project ${projectId}, and Service Account User on the pipeline's service account`;
    case 'UNAUTHENTICATED':
      return 'Application Default Credentials were rejected: run `gcloud auth application-default login` or check GOOGLE_APPLICATION_CREDENTIALS';
    case 'NOT_FOUND':
      return 'check vertex.projectId, vertex.region and the job id';
    case 'ALREADY_EXISTS':
      return 'a job with this id exists already; wait a second and retry, or pass another --job-id';
    case 'INVALID_ARGUMENT':
      return 'Vertex AI rejected the request body; the message names the field';
    default:
      return undefined;
  }
}
