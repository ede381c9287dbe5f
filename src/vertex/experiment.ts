/**
 * Vertex AI experiments for pipeline jobs, done the way the Vertex AI SDK does for `PipelineJob.submit(experiment=)`:
 * the experiment is an ML Metadata context of schema `system.Experiment` in the project's default metadata store,
 * fetched or created before the job is submitted, and the job joins it by having its pipeline run context (which
 * Vertex creates once the job starts) added as a child of the experiment context.
 */
import { KvxError, errorMessage } from '../errors.js';
import type { Logger } from '../log/logger.js';
import { sleep } from '../util/backoff.js';
import { TERMINAL_STATES, VertexApiError, shortState } from './client.js';
import type { LongRunningOperation, MetadataContext, VertexClient } from './client.js';

export const EXPERIMENT_SCHEMA_TITLE = 'system.Experiment';
export const EXPERIMENT_SCHEMA_VERSION = '0.0.1';
/** Metadata key the SDK finds on TensorBoard experiments that CustomJobs create; those are not Vertex AI experiments. */
const TENSORBOARD_EXPERIMENT_KEY = 'tensorboard_link';

export interface VertexExperiment {
  /** The experiment name, which is its context id. */
  name: string;
  /** Full context resource name as Vertex reports it (it may name the project by number). */
  resourceName: string;
  consoleUrl: string;
  created: boolean;
}

export function experimentConsoleUrl(projectId: string, region: string, name: string): string {
  return `https://console.cloud.google.com/vertex-ai/experiments/locations/${encodeURIComponent(region)}/experiments/${encodeURIComponent(name)}?project=${encodeURIComponent(projectId)}`;
}

const PERMISSION_HINT =
  'Vertex AI experiments need aiplatform.metadataStores.get, aiplatform.contexts.get, aiplatform.contexts.create and ' +
  'aiplatform.contexts.addContextChildren, all in Vertex AI User (roles/aiplatform.user); or leave vertex.experiment empty (--experiment "") to skip the experiment';

/** Errors from the metadata API, said in terms of the experiment and with a hint that fits it. */
function experimentError(err: unknown, what: string, name: string): KvxError {
  if (err instanceof VertexApiError) {
    const hint = err.status === 'PERMISSION_DENIED' ? PERMISSION_HINT : err.hint;
    return new KvxError('KVX_VERTEX_API', `cannot ${what} Vertex AI experiment "${name}" (vertex.experiment): ${err.message}`, { ...(hint === undefined ? {} : { hint }), cause: err });
  }
  if (err instanceof KvxError) return err;
  return new KvxError('KVX_VERTEX_API', `cannot ${what} Vertex AI experiment "${name}": ${errorMessage(err)}`, { cause: err });
}

const isStatus = (err: unknown, status: string) => err instanceof VertexApiError && err.status === status;

function checkExperimentContext(context: MetadataContext, name: string): void {
  if (context.schemaTitle !== EXPERIMENT_SCHEMA_TITLE) {
    throw new KvxError(
      'KVX_LAUNCH_INPUT',
      `vertex.experiment "${name}" names an ML Metadata context of type ${context.schemaTitle ?? '(none)'}, not a Vertex AI experiment (${EXPERIMENT_SCHEMA_TITLE})`,
      { hint: 'choose another experiment name (--experiment): pipeline runs and experiments share one namespace' },
    );
  }
  if (context.metadata !== undefined && TENSORBOARD_EXPERIMENT_KEY in context.metadata) {
    throw new KvxError('KVX_LAUNCH_INPUT', `vertex.experiment "${name}" is a TensorBoard experiment made by a custom job and cannot hold pipeline runs`, {
      hint: 'choose another experiment name (--experiment)',
    });
  }
}

export interface ExperimentOptions {
  logger: Logger;
  description?: string;
  /** How long to wait for the default metadata store to be created, when the project has none yet. */
  storeTimeoutMs?: number;
}

/** Fetches the experiment, creating it (and the project's default metadata store) when missing. */
export async function getOrCreateExperiment(vertex: VertexClient, name: string, projectId: string, region: string, options: ExperimentOptions): Promise<VertexExperiment> {
  const found = (context: MetadataContext, created: boolean): VertexExperiment => {
    checkExperimentContext(context, name);
    return { name, resourceName: context.name || `${vertex.metadataStore}/contexts/${name}`, consoleUrl: experimentConsoleUrl(projectId, region, name), created };
  };
  try {
    return found(await vertex.getContext(name), false);
  } catch (err) {
    if (!isStatus(err, 'NOT_FOUND')) throw experimentError(err, 'read', name);
  }
  await ensureDefaultMetadataStore(vertex, options);
  const body: Record<string, unknown> = {
    displayName: name,
    schemaTitle: EXPERIMENT_SCHEMA_TITLE,
    schemaVersion: EXPERIMENT_SCHEMA_VERSION,
    metadata: { experiment_deleted: false },
  };
  if (options.description) body['description'] = options.description;
  try {
    const context = await vertex.createContext(name, body);
    options.logger.info('Vertex AI experiment created', { experiment: name });
    return found(context, true);
  } catch (err) {
    if (!isStatus(err, 'ALREADY_EXISTS')) throw experimentError(err, 'create', name);
  }
  // Someone else created it between our read and our create (or our create was retried after reaching Google).
  try {
    return found(await vertex.getContext(name), false);
  } catch (err) {
    throw experimentError(err, 'read', name);
  }
}

/** Projects that never used Vertex metadata have no default store; the SDK creates it first, and so do we. */
async function ensureDefaultMetadataStore(vertex: VertexClient, options: ExperimentOptions): Promise<void> {
  try {
    await vertex.getMetadataStore();
    return;
  } catch (err) {
    if (!isStatus(err, 'NOT_FOUND')) throw experimentError(err, 'prepare the metadata store for', 'default');
  }
  let operation: LongRunningOperation;
  try {
    operation = await vertex.createDefaultMetadataStore();
  } catch (err) {
    if (isStatus(err, 'ALREADY_EXISTS')) return;
    throw experimentError(err, 'create the default metadata store for', 'default');
  }
  options.logger.info('creating the default Vertex ML Metadata store', { store: vertex.metadataStore });
  const deadline = Date.now() + (options.storeTimeoutMs ?? 120_000);
  let interval = 500;
  while (operation.done !== true) {
    if (Date.now() >= deadline) {
      throw new KvxError('KVX_VERTEX_API', `the default Vertex ML Metadata store was still being created after ${Math.round((options.storeTimeoutMs ?? 120_000) / 1000)} s (operation ${operation.name})`, {
        hint: 'run kvx-launch again in a minute; the store is created once per project and region',
      });
    }
    await sleep(Math.min(interval, Math.max(deadline - Date.now(), 0)));
    interval = Math.min(interval * 2, 5000);
    try {
      operation = await vertex.getOperation(operation.name);
    } catch (err) {
      throw experimentError(err, 'create the default metadata store for', 'default');
    }
  }
  if (operation.error !== undefined) {
    throw new KvxError('KVX_VERTEX_API', `creating the default Vertex ML Metadata store failed: ${operation.error.message ?? `code ${operation.error.code}`}`);
  }
}

export type ExperimentLinkState = 'linked' | 'pending' | 'failed';

export interface ExperimentLink {
  state: ExperimentLinkState;
  /** The pipeline run context that was (or would have been) added to the experiment. */
  runContext?: string;
  /** Why the link is pending or failed. */
  reason?: string;
}

export interface LinkOptions {
  logger: Logger;
  /** Give up (state `pending`) when the run context has not appeared by then. */
  timeoutMs: number;
  /** First wait between looks at the job; doubles up to maxIntervalMs. */
  intervalMs?: number;
  maxIntervalMs?: number;
  /** Aborting stops at once (`pending`). */
  signal?: AbortSignal;
  /** Aborting ends the current wait: one more look, then `pending` if still not linkable (the job was followed to its end elsewhere). */
  wake?: AbortSignal;
}

/**
 * Adds the job's pipeline run context to the experiment. Vertex creates that context asynchronously once the job
 * starts, so this polls the job with bounded backoff; unlike the SDK, which blocks until the job ends, it gives up
 * after `timeoutMs` and says so instead of failing the launch. Never throws.
 */
export async function linkJobToExperiment(vertex: VertexClient, experiment: VertexExperiment, job: string, options: LinkOptions): Promise<ExperimentLink> {
  const started = Date.now();
  const deadline = started + options.timeoutMs;
  const maxInterval = options.maxIntervalMs ?? 15_000;
  let interval = options.intervalMs ?? 1000;
  let lastState = 'UNKNOWN';
  let runContext: string | undefined;
  let woken = false;
  const stopSignal = options.wake === undefined ? options.signal : options.signal === undefined ? options.wake : AbortSignal.any([options.signal, options.wake]);

  for (;;) {
    try {
      const current = await vertex.getPipelineJob(job);
      lastState = shortState(current.state);
      runContext = current.jobDetail?.pipelineRunContext?.name || undefined;
      if (runContext !== undefined) {
        await vertex.addContextChildren(experiment.resourceName, [runContext]);
        options.logger.info('pipeline job added to the Vertex AI experiment', { experiment: experiment.name, runContext });
        return { state: 'linked', runContext };
      }
      if (TERMINAL_STATES.has(current.state ?? '')) {
        return { state: 'failed', reason: `the job ended ${lastState} before Vertex AI created its pipeline run context, so there is nothing to add to experiment "${experiment.name}"` };
      }
    } catch (err) {
      // The run context can show on the job a moment before the metadata store answers for it; and a call an
      // interrupt cut short leaves the link pending, below.
      if (!options.signal?.aborted && (!isStatus(err, 'NOT_FOUND') || runContext === undefined)) {
        const e = err instanceof VertexApiError && err.status === 'PERMISSION_DENIED' ? experimentError(err, 'add the job to', experiment.name) : err;
        const hint = e instanceof KvxError && e.hint ? ` (hint: ${e.hint})` : '';
        return { state: 'failed', ...(runContext === undefined ? {} : { runContext }), reason: `${errorMessage(e)}${hint}` };
      }
    }
    const pending = (): ExperimentLink => ({
      state: 'pending',
      ...(runContext === undefined ? {} : { runContext }),
      reason:
        runContext === undefined
          ? `Vertex AI had not created the job's pipeline run context after ${Math.round((Date.now() - started) / 1000)} s (job ${lastState})`
          : `the metadata store did not know the job's run context ${runContext} yet after ${Math.round((Date.now() - started) / 1000)} s`,
    });
    if (options.signal?.aborted || woken) return pending();
    const remaining = deadline - Date.now();
    if (remaining <= 0) return pending();
    try {
      await sleep(Math.min(interval, remaining), stopSignal);
    } catch {
      if (options.signal?.aborted) return pending();
      woken = true;
    }
    interval = Math.min(interval * 2, maxInterval);
  }
}
