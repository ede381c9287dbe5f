import { KvxError, errorMessage } from '../errors.js';
import type { Logger } from '../log/logger.js';
import type { MlflowClient, MlflowRun } from '../mlflow/client.js';
import type { VertexClient } from '../vertex/client.js';
import { getOrCreateExperiment, linkJobToExperiment } from '../vertex/experiment.js';
import type { ExperimentLink, VertexExperiment } from '../vertex/experiment.js';
import { TAG, tagValue } from './tags.js';

/** The Vertex AI experiment a launched job joins (vertex.experiment), and whether it made it in. */
export interface ExperimentResult {
  name: string;
  consoleUrl: string;
  created: boolean;
  link: ExperimentLink['state'];
  reason?: string;
}

/**
 * Puts the link's outcome on the run (also after an interrupt, which leaves it `pending`); the launch goes on
 * whatever it is (re-running would submit a second job).
 */
export async function recordExperimentLink(mlflow: MlflowClient, runId: string, experiment: Pick<VertexExperiment, 'name' | 'consoleUrl'> & { created?: boolean }, link: ExperimentLink): Promise<ExperimentResult> {
  await mlflow.uninterrupted().setTags(runId, [
    { key: TAG.vertexExperimentLink, value: link.state },
    { key: TAG.vertexExperimentLinkError, value: link.state === 'linked' ? '' : tagValue(link.reason ?? '') },
  ]);
  return {
    name: experiment.name,
    consoleUrl: experiment.consoleUrl,
    created: experiment.created ?? false,
    link: link.state,
    ...(link.reason === undefined ? {} : { reason: link.reason }),
  };
}

/**
 * For `follow`: a run whose job did not make it into its Vertex AI experiment at launch (the job had not started)
 * gets another chance. The experiment comes from the run's tags, so no config is needed. Never throws for the
 * link itself; MLflow errors while recording propagate.
 */
export async function finishExperimentLink(
  deps: { mlflow: MlflowClient; vertex: VertexClient; logger: Logger },
  run: MlflowRun,
  job: string,
  where: { projectId: string; region: string },
  options: { timeoutMs: number; intervalMs?: number; signal?: AbortSignal; wake?: AbortSignal },
): Promise<ExperimentResult | undefined> {
  const tags = new Map((run.data.tags ?? []).map((t) => [t.key, t.value]));
  const name = tags.get(TAG.vertexExperiment);
  if (!name || tags.get(TAG.vertexExperimentLink) === 'linked') return undefined;
  let experiment: VertexExperiment;
  try {
    experiment = await getOrCreateExperiment(deps.vertex, name, where.projectId, where.region, { logger: deps.logger });
  } catch (err) {
    // Interrupted: the link stays as it was, for the next follow.
    if (options.signal?.aborted === true) return undefined;
    const reason = `${errorMessage(err)}${err instanceof KvxError && err.hint ? ` (hint: ${err.hint})` : ''}`;
    return recordExperimentLink(deps.mlflow, run.info.run_id, { name, consoleUrl: tags.get(TAG.vertexExperimentUrl) ?? '' }, { state: 'failed', reason });
  }
  const link = await linkJobToExperiment(deps.vertex, experiment, job, {
    logger: deps.logger,
    timeoutMs: options.timeoutMs,
    ...(options.intervalMs === undefined ? {} : { intervalMs: options.intervalMs }),
    ...(options.signal === undefined ? {} : { signal: options.signal }),
    ...(options.wake === undefined ? {} : { wake: options.wake }),
  });
  return recordExperimentLink(deps.mlflow, run.info.run_id, experiment, link);
}
