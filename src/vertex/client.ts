import type { CredentialsLookup } from '../auth/google/discovery.js';
import { KvxError, errorMessage } from '../errors.js';
import { sleep } from '../util/backoff.js';
import type { RetryPolicy } from '../util/backoff.js';
import { RestCore } from '../util/rest.js';
import type { RestCall, RestClientOptions, RestReply } from '../util/rest.js';
import { VERSION } from '../version.js';

/** Anything that yields Google request headers; google-auth-library's GoogleAuth and its clients fit. */
export interface GoogleHeaderSource {
  getRequestHeaders(url?: string): Promise<Headers | Record<string, string>>;
  /**
   * The API answered 401 to a call carrying `sent`: forget its access token, so the next headers carry a fresh one
   * (a token revoked or expired early, a clock that was off). Without it a 401 is final.
   */
  invalidate?(sent: Record<string, string>): Promise<void>;
}

/**
 * Application Default Credentials with the cloud-platform scope, as the Vertex AI SDK uses them, from kvx's own
 * look-up: the environment and `auth.endpoints` kvx-launch was given, and the source credentials its MLflow
 * provider mints tokens with, so MLflow and Vertex AI see one identity. The quota project goes along as
 * google-auth-library sends it.
 */
export function applicationDefaultCredentials(credentials: CredentialsLookup): GoogleHeaderSource {
  return {
    getRequestHeaders: async () => {
      const source = await credentials.get();
      const token = await source.accessToken();
      const headers: Record<string, string> = { authorization: `Bearer ${token.value}` };
      if (source.info.quotaProject !== undefined) headers['x-goog-user-project'] = source.info.quotaProject;
      return headers;
    },
    invalidate: async (sent) => {
      const bearer = /^Bearer\s+(\S+)$/i.exec(sent['authorization'] ?? '');
      if (bearer !== null) (await credentials.get()).dropAccessToken(bearer[1]!);
    },
  };
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
  /** Unique across the job (newer API versions); taskName repeats across sub-DAGs and loop iterations. */
  taskUniqueName?: string;
  execution?: { metadata?: Record<string, unknown>; [key: string]: unknown };
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

/** A Vertex AI Schedule (projects.locations.schedules) as the API returns it. */
export interface VertexSchedule {
  name: string;
  displayName?: string;
  cron?: string;
  state?: 'STATE_UNSPECIFIED' | 'ACTIVE' | 'PAUSED' | 'COMPLETED';
  maxConcurrentRunCount?: string;
  maxRunCount?: string;
  startedRunCount?: string;
  startTime?: string;
  endTime?: string;
  nextRunTime?: string;
  createTime?: string;
  allowQueueing?: boolean;
  createPipelineJobRequest?: { parent?: string; pipelineJob?: Record<string, unknown>; pipelineJobId?: string };
  lastScheduledRunResponse?: { scheduledRunTime?: string; runResponse?: string };
  [key: string]: unknown;
}

export const TERMINAL_STATES: ReadonlySet<string> = new Set(['PIPELINE_STATE_SUCCEEDED', 'PIPELINE_STATE_FAILED', 'PIPELINE_STATE_CANCELLED']);

/** `PIPELINE_STATE_RUNNING` → `RUNNING`, as people and kedro-vertexai say it. */
export function shortState(state: string | undefined): string {
  return (state ?? 'PIPELINE_STATE_UNSPECIFIED').replace(/^PIPELINE_STATE_/, '');
}

/** A Vertex AI API call Google answered with an error; `status` is Google's (PERMISSION_DENIED, ...). */
export class VertexApiError extends KvxError {
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

export interface VertexClientOptions extends RestClientOptions {
  projectId: string;
  region: string;
  /** API base URL; https://<region>-aiplatform.googleapis.com by default. */
  endpoint?: string;
  auth: GoogleHeaderSource;
}

const DEFAULT_RETRY: RetryPolicy = { maxRetries: 5, backoffFactorMs: 1000, jitterMs: 500, maxDelayMs: 60_000 };

/**
 * The PipelineJob and ML Metadata calls of the Vertex AI REST API (v1). Every call is safe to repeat: reads,
 * cancels, adding children, and creates under an id we choose, which a repeat finds taken (ALREADY_EXISTS).
 */
export class VertexClient {
  readonly endpoint: string;
  private readonly rest: RestCore;
  private sibling: VertexClient | undefined;

  /** `rest`, when given, is the core to use instead of one made from `options` (see `uninterrupted`). */
  constructor(
    private readonly options: VertexClientOptions,
    rest?: RestCore,
  ) {
    this.endpoint = (options.endpoint || `https://${options.region}-aiplatform.googleapis.com`).replace(/\/+$/, '');
    this.rest =
      rest ??
      new RestCore(options, {
        name: 'Vertex AI',
        retry: DEFAULT_RETRY,
        timeoutMs: 60_000,
        headers: async (operation) => ({ ...(await this.googleHeaders(operation)), 'x-goog-api-client': `kvx-launch/${VERSION}` }),
        ...(options.auth.invalidate === undefined ? {} : { refreshAfter401: (sent: Record<string, string>) => options.auth.invalidate!(sent) }),
        apiError: (operation, reply) => googleError(operation, reply, options.projectId),
        notJson: (operation, reply) => new VertexApiError(operation, reply.status, 'BAD_RESPONSE', 'the answer is not JSON', 'check vertex.endpoint'),
        unreachable: (operation, url, detail, cause) =>
          new KvxError('KVX_VERTEX_API', `cannot reach the Vertex AI API at ${new URL(url).origin} (${operation}): ${detail}`, {
            hint: 'check vertex.region and vertex.endpoint, and network access to Google APIs',
            cause,
          }),
      });
  }

  /**
   * This client for the calls made to leave a job in order after an interrupt (looking at it, cancelling it): the
   * interrupt does not cut them short, and once it has fired they retry only briefly.
   */
  uninterrupted(): VertexClient {
    return (this.sibling ??= new VertexClient(this.options, this.rest.uninterrupted()));
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

  /** Where `pipelineJobs.create` is sent (POST), for a dry run to show. */
  createPipelineJobUrl(jobId: string): string {
    return `${this.endpoint}/v1/${this.parent}/pipelineJobs?pipelineJobId=${encodeURIComponent(jobId)}`;
  }

  /**
   * Creates the job. Retrying is safe because the id is ours: when an attempt whose answer was lost did reach
   * Google, the job is there (a repeat gets ALREADY_EXISTS), and it is the result if it carries `ownerLabel`.
   */
  async createPipelineJob(jobId: string, body: Record<string, unknown>, ownerLabel: [string, string]): Promise<PipelineJob> {
    return this.call<PipelineJob>('POST', this.createPipelineJobUrl(jobId), 'pipelineJobs.create', body, {
      recover: async () => {
        let existing: PipelineJob;
        try {
          existing = await this.uninterrupted().getPipelineJob(jobId);
        } catch (err) {
          if (err instanceof VertexApiError && err.status === 'NOT_FOUND') return undefined;
          throw err;
        }
        return existing.labels?.[ownerLabel[0]] === ownerLabel[1] ? existing : undefined;
      },
    });
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

  /** Where `schedules.create` is sent (POST), for a dry run to show. */
  get schedulesUrl(): string {
    return `${this.endpoint}/v1/${this.parent}/schedules`;
  }

  /** A schedule id or a full resource name → the full resource name. */
  scheduleName(schedule: string): string {
    return schedule.startsWith('projects/') ? schedule : `${this.parent}/schedules/${schedule}`;
  }

  /**
   * Creates a schedule. Its id is the service's, so a repeat after a lost answer could make a second one: before
   * anything is sent again, the schedules of that display name are searched for `marker` (a label of the job the
   * schedule creates, unique to this call), and the one found is the result.
   */
  async createSchedule(body: Record<string, unknown>, marker: [string, string]): Promise<VertexSchedule> {
    return this.rest.call<VertexSchedule>({
      method: 'POST',
      url: this.schedulesUrl,
      label: 'schedules.create',
      body,
      idempotent: false,
      recover: async () => {
        const found = await this.uninterrupted().listSchedules(`display_name=${JSON.stringify(String(body['displayName']))}`);
        return found.find((s) => (s.createPipelineJobRequest?.pipelineJob?.['labels'] as Record<string, string> | undefined)?.[marker[0]] === marker[1]);
      },
    });
  }

  async getSchedule(schedule: string): Promise<VertexSchedule> {
    return this.call<VertexSchedule>('GET', `/v1/${this.scheduleName(schedule)}`, 'schedules.get');
  }

  /** Every schedule of the project and region (all pages, at most 50 of them), newest first as the API orders them. */
  async listSchedules(filter?: string): Promise<VertexSchedule[]> {
    const out: VertexSchedule[] = [];
    let token: string | undefined;
    for (let page = 0; page < 50; page++) {
      const query = new URLSearchParams({ pageSize: '100' });
      if (filter !== undefined) query.set('filter', filter);
      if (token !== undefined) query.set('pageToken', token);
      const reply = await this.call<{ schedules?: VertexSchedule[]; nextPageToken?: string }>('GET', `/v1/${this.parent}/schedules?${query}`, 'schedules.list');
      out.push(...(reply.schedules ?? []));
      token = reply.nextPageToken;
      if (!token) break;
    }
    return out;
  }

  /**
   * Deletes a schedule and waits for the deletion (a long-running operation) to finish. A repeat after a lost answer
   * finds the schedule gone, which is the result.
   */
  async deleteSchedule(schedule: string, options: { timeoutMs?: number; intervalMs?: number } = {}): Promise<void> {
    const name = this.scheduleName(schedule);
    let op = await this.rest.call<LongRunningOperation>({
      method: 'DELETE',
      url: `${this.endpoint}/v1/${name}`,
      label: 'schedules.delete',
      idempotent: false,
      recover: async () => {
        try {
          await this.uninterrupted().getSchedule(name);
          return undefined;
        } catch (err) {
          if (err instanceof VertexApiError && err.status === 'NOT_FOUND') return { name: '', done: true };
          throw err;
        }
      },
    });
    const deadline = Date.now() + (options.timeoutMs ?? 120_000);
    let interval = options.intervalMs ?? 500;
    while (op.done !== true && op.name !== '') {
      if (Date.now() > deadline) throw new KvxError('KVX_VERTEX_API', `the deletion of schedule ${name} has not finished; operation ${op.name} is still running`, { hint: 'check it later with `kvx-launch schedule list`' });
      // Ctrl-C stops the wait (the deletion goes on at Google's side; `schedule list` shows when it is done).
      await sleep(interval, this.options.interrupt);
      interval = Math.min(interval * 2, 5000);
      op = await this.getOperation(op.name);
    }
    if (op.error !== undefined) throw new VertexApiError('schedules.delete', 200, 'OPERATION_FAILED', op.error.message ?? 'the deletion failed');
  }

  /** Downloads a pipeline template (Artifact Registry `https://<region>-kfp.pkg.dev/...`) with the same credentials. */
  async fetchTemplate(uri: string): Promise<string> {
    return this.call<string>('GET', uri, 'template download', undefined, { raw: true });
  }

  private call<T>(method: 'GET' | 'POST' | 'DELETE', pathOrUrl: string, operation: string, body?: unknown, extra: Pick<RestCall<T>, 'raw' | 'recover'> = {}): Promise<T> {
    const url = /^https?:\/\//.test(pathOrUrl) ? pathOrUrl : `${this.endpoint}${pathOrUrl}`;
    return this.rest.call<T>({ method, url, label: operation, idempotent: true, ...(body === undefined ? {} : { body }), ...extra });
  }

  private async googleHeaders(operation: string): Promise<Record<string, string>> {
    let headers: Headers | Record<string, string>;
    try {
      headers = await this.options.auth.getRequestHeaders();
    } catch (err) {
      throw new KvxError('KVX_CREDENTIALS_UNAVAILABLE', `no Google credentials for Vertex AI ${operation}: ${errorMessage(err).split('\n')[0]}`, {
        hint: (err as { hint?: string }).hint ?? 'run `gcloud auth application-default login`, set GOOGLE_APPLICATION_CREDENTIALS, or run where a metadata server is available',
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

function googleError(operation: string, { status: httpStatus, text }: RestReply, projectId: string): VertexApiError {
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
