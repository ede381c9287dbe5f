/**
 * Shared set-up for the kvx-launch end-to-end tests: the fake MLflow behind a bearer gate, the fake metadata
 * server that Application Default Credentials reach through GCE_METADATA_HOST (in the environment kvx-launch is
 * given), and the fake Vertex AI API that accepts the access tokens that metadata server issues.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { main } from '../../src/cli/kvx-launch.js';
import type { LaunchCliDeps } from '../../src/cli/kvx-launch.js';
import { startFakeMetadata } from '../fakes/google-metadata.js';
import type { FakeMetadata } from '../fakes/google-metadata.js';
import { bearerGate, startFakeMlflow } from '../fakes/mlflow/index.js';
import type { FakeMlflow, Run } from '../fakes/mlflow/index.js';
import { startFakeVertex } from '../fakes/vertex-api.js';
import type { FakeVertex } from '../fakes/vertex-api.js';

export const MLFLOW_TOKEN = 'launch-test-mlflow-token';
export const FIXTURE = fileURLToPath(new URL('../fixtures/kfp/spaceflights-pipeline.yaml', import.meta.url));
export const PIPELINE_SA = 'pipelines@my-project.iam.gserviceaccount.com';

export interface Harness {
  mlflow: FakeMlflow;
  vertex: FakeVertex;
  metadata: FakeMetadata;
  dir: string;
  config: string;
  env: NodeJS.ProcessEnv;
  /** Forget every run, job, experiment context, denied permission and recorded request. */
  reset(): Promise<void>;
  close(): Promise<void>;
}

/**
 * One harness for a describe block, reset before each test: `const harness = useHarness();` then
 * `harness()` inside tests.
 */
export function useHarness(): () => Harness {
  let h: Harness | undefined;
  before(async () => {
    h = await startHarness();
  });
  after(async () => {
    await h?.close();
  });
  beforeEach(async () => {
    await h!.reset();
  });
  return () => h!;
}

export async function startHarness(): Promise<Harness> {
  const metadata = await startFakeMetadata();
  const vertex = await startFakeVertex({ accessTokens: metadata.accessTokens, actAs: [PIPELINE_SA] });
  const mlflow = await startFakeMlflow({ gate: bearerGate(MLFLOW_TOKEN) });
  const dir = await mkdtemp(path.join(tmpdir(), 'kvx-launch-'));

  const config = path.join(dir, 'vertexai.yml');
  await writeFile(
    config,
    [
      'project_id: my-project',
      'region: europe-west4',
      'run_config:',
      '  image: europe-west4-docker.pkg.dev/my-project/kedro/spaceflights:1.4.2',
      '  root: my-bucket/pipelines',
      '  experiment_name: spaceflights',
      `  service_account: ${PIPELINE_SA}`,
      '  network:',
      '    vpc: projects/123456789012/global/networks/ml-vpc',
      '  grouping: {cls: kedro_vertexai.grouping.IdentityNodeGrouper}',
      '  mlflow:',
      '    request_header_provider_params: {}',
      'kvx:',
      '  upstream:',
      `    url: ${mlflow.url}`,
      '  auth:',
      '    provider: static',
      '    params: {token_env: TEST_MLFLOW_TOKEN}',
      '  vertex:',
      `    endpoint: ${vertex.url}`,
      '    labels: {team: ml-platform}',
      '',
    ].join('\n'),
  );
  const env: NodeJS.ProcessEnv = {
    // Application Default Credentials: no key file, no gcloud login (an empty CLOUDSDK_CONFIG), the fake metadata server.
    GCE_METADATA_HOST: metadata.host,
    CLOUDSDK_CONFIG: dir,
    TEST_MLFLOW_TOKEN: MLFLOW_TOKEN,
    MLFLOW_HTTP_REQUEST_MAX_RETRIES: '2',
    MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR: '0.01',
    MLFLOW_HTTP_REQUEST_BACKOFF_JITTER: '0',
  };
  return {
    mlflow,
    vertex,
    metadata,
    dir,
    config,
    env,
    async reset() {
      await mlflow.reset();
      vertex.jobs.clear();
      vertex.schedules.clear();
      vertex.contexts.clear();
      vertex.artifacts.clear();
      vertex.templates.clear();
      vertex.denied.clear();
      vertex.metadataStoreExists = true;
      vertex.requests.length = 0;
      vertex.replyFaults.length = 0;
    },
    async close() {
      await Promise.all([mlflow.close(), vertex.close(), metadata.close()]);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export async function launchCli(h: Pick<Harness, 'env'>, argv: string[], options: { env?: NodeJS.ProcessEnv; deps?: LaunchCliDeps } = {}): Promise<CliResult> {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = '';
  let err = '';
  stdout.on('data', (c: Buffer) => (out += c.toString()));
  stderr.on('data', (c: Buffer) => (err += c.toString()));
  const code = await main(argv, { stdout, stderr, env: { ...h.env, ...options.env } }, options.deps);
  process.exitCode = undefined;
  return { code, stdout: out, stderr: err };
}

export function tags(run: Run): Record<string, string> {
  return Object.fromEntries(run.tags);
}

export function onlyRun(h: Harness): Run {
  const runs = [...h.mlflow.store.runs.values()];
  if (runs.length !== 1) throw new Error(`expected exactly one MLflow run, found ${runs.length}`);
  return runs[0]!;
}
