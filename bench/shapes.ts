/** MLflow-shaped payloads for the benchmark: a runs/get answer (~1 KB) and a log-batch body (~25 KB). */

export const RUN_ID = '4f6c3e1a9b2d4c8e8f0a1b2c3d4e5f60';

/** A runs/get answer as MLflow 2.x sends it, padded with realistic params and tags to about 1 KiB. */
export function runGetBody(): Buffer {
  const run = {
    run: {
      info: {
        run_uuid: RUN_ID,
        run_id: RUN_ID,
        experiment_id: '1',
        run_name: 'kedro-vertexai-training-20240611',
        user_id: 'pipeline-runner@example-project.iam.gserviceaccount.com',
        status: 'RUNNING',
        start_time: 1718101234567,
        artifact_uri: `mlflow-artifacts:/1/${RUN_ID}/artifacts`,
        lifecycle_stage: 'active',
      },
      data: {
        metrics: [
          { key: 'loss', value: 0.0423, timestamp: 1718101299999, step: 120 },
          { key: 'accuracy', value: 0.9812, timestamp: 1718101299999, step: 120 },
        ],
        params: [
          { key: 'learning_rate', value: '0.001' },
          { key: 'batch_size', value: '256' },
          { key: 'model', value: 'gradient_boosting' },
        ],
        tags: [
          { key: 'mlflow.source.name', value: 'kedro run --pipeline training' },
          { key: 'vertexai_job_name', value: 'training-pipeline-20240611093412' },
          { key: 'vertexai_run_id', value: 'projects/123456789/locations/europe-west1/pipelineJobs/training-20240611' },
        ],
      },
      inputs: {},
    },
  };
  let text = JSON.stringify(run);
  const pad = 1024 - text.length;
  if (pad > 0) {
    run.run.data.tags.push({ key: 'note', value: 'x'.repeat(Math.max(0, pad - 30)) });
    text = JSON.stringify(run);
  }
  return Buffer.from(text);
}

/** A runs/log-batch body of about 25 KB: the 300-metric batches kedro pipelines send. */
export function logBatchBody(targetBytes = 25_000): Buffer {
  const metrics: { key: string; value: number; timestamp: number; step: number }[] = [];
  let size = 40;
  for (let i = 0; size < targetBytes; i++) {
    const m = { key: `val_metric_${i % 12}`, value: Math.round(Math.sin(i) * 1e6) / 1e6, timestamp: 1718101234567 + i, step: i };
    size += JSON.stringify(m).length + 1;
    metrics.push(m);
  }
  return Buffer.from(JSON.stringify({ run_id: RUN_ID, metrics, params: [], tags: [] }));
}

/**
 * The credential every candidate sends: opaque, but as long as the ID token the Google candidate's fakes mint
 * (google-fakes.ts prints that length, and a note says when they differ). IAP traffic carries tokens of this size,
 * and with equal header bytes "cached Google token within 3% of static" measures the token cache, not the extra
 * 800 bytes a 35-byte static token used to save on every request.
 */
const ID_TOKEN_LENGTH = 853;
export const TOKEN = `bench-static-token-${'0123456789abcdef'.repeat(Math.ceil(ID_TOKEN_LENGTH / 16))}`.slice(0, ID_TOKEN_LENGTH);
