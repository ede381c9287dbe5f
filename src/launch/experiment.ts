import type { Logger } from '../log/logger.js';
import { MlflowApiError } from '../mlflow/client.js';
import type { MlflowClient } from '../mlflow/client.js';

export interface ResolvedExperiment {
  experimentId: string;
  created: boolean;
  restored: boolean;
}

/** The experiment by name: created when missing, restored when deleted (a deleted name cannot be reused). */
export async function resolveExperiment(mlflow: MlflowClient, name: string, logger: Logger): Promise<ResolvedExperiment> {
  const existing = await mlflow.getExperimentByName(name);
  if (existing !== undefined) {
    if (existing.lifecycle_stage === 'deleted') {
      logger.warn('MLflow experiment was deleted; restoring it', { experiment: name, experimentId: existing.experiment_id });
      await mlflow.restoreExperiment(existing.experiment_id);
      return { experimentId: existing.experiment_id, created: false, restored: true };
    }
    return { experimentId: existing.experiment_id, created: false, restored: false };
  }
  try {
    return { experimentId: await mlflow.createExperiment(name), created: true, restored: false };
  } catch (err) {
    // Another launcher created it between our lookup and our create.
    if (err instanceof MlflowApiError && err.errorCode === 'RESOURCE_ALREADY_EXISTS') {
      const now = await mlflow.getExperimentByName(name);
      if (now !== undefined && now.lifecycle_stage === 'active') return { experimentId: now.experiment_id, created: false, restored: false };
    }
    throw err;
  }
}
