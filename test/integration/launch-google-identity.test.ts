/**
 * kvx-launch with a Google provider for MLflow: the MLflow tokens and the Vertex AI calls come from one
 * Application Default Credentials look-up, made with the environment and `auth.endpoints` kvx-launch was given.
 * The process environment points at a second metadata server with another identity, as a shell or a test runner
 * set up for something else would: nothing may come from it.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { CLIENT_ID, KEY_SA, TARGET_SA, startGoogleWorld } from '../fakes/google-world.js';
import type { GoogleWorld } from '../fakes/google-world.js';
import { startFakeMetadata } from '../fakes/google-metadata.js';
import type { FakeMetadata } from '../fakes/google-metadata.js';
import { iapGate } from '../fakes/iap-gate.js';
import type { IapGate } from '../fakes/iap-gate.js';
import { startFakeMlflow } from '../fakes/mlflow/index.js';
import type { FakeMlflow } from '../fakes/mlflow/index.js';
import { startFakeVertex } from '../fakes/vertex-api.js';
import type { FakeVertex } from '../fakes/vertex-api.js';
import { kfpCorpusDir } from '../helpers/corpus.js';
import { FIXTURE, PIPELINE_SA, launchCli } from './launch-harness.js';

const NOW = () => new Date(Date.UTC(2024, 4, 17, 8, 30, 5));
const STRANGER = 'someone-else@other-project.iam.gserviceaccount.com';
const PROCESS_ADC = ['GCE_METADATA_HOST', 'GCE_METADATA_IP', 'METADATA_SERVER_DETECTION', 'GOOGLE_APPLICATION_CREDENTIALS', 'CLOUDSDK_CONFIG', 'GOOGLE_CLOUD_PROJECT'] as const;

describe('kvx-launch: one Google identity for MLflow tokens and Vertex AI calls', () => {
  let world: GoogleWorld;
  let stranger: FakeMetadata;
  let vertex: FakeVertex;
  let gate: IapGate;
  let mlflow: FakeMlflow;
  let dir: string;
  let saved: Record<string, string | undefined>;

  before(async () => {
    world = await startGoogleWorld();
    // Same token store, so the fake Vertex accepts its tokens too and tells the two identities apart.
    stranger = await startFakeMetadata({ email: STRANGER, issuer: world.issuer, accessTokens: world.accessTokens });
    vertex = await startFakeVertex({ accessTokens: world.accessTokens, actAs: [PIPELINE_SA] });
    dir = await mkdtemp(path.join(tmpdir(), 'kvx-launch-identity-'));
    saved = Object.fromEntries(PROCESS_ADC.map((k) => [k, process.env[k]]));
    for (const k of PROCESS_ADC) delete process.env[k];
    process.env['GCE_METADATA_HOST'] = stranger.host;
    process.env['METADATA_SERVER_DETECTION'] = 'assume-present';
    process.env['CLOUDSDK_CONFIG'] = dir;
  });
  after(async () => {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    await Promise.all([world.close(), stranger.close(), vertex.close()]);
    await rm(dir, { recursive: true, force: true });
  });
  beforeEach(async () => {
    gate = iapGate({ issuer: world.issuer, audience: CLIENT_ID });
    mlflow = await startFakeMlflow({ gate });
    vertex.jobs.clear();
    vertex.requests.length = 0;
    vertex.afterAnswer = undefined;
  });
  afterEach(async () => {
    await mlflow.close();
  });

  async function configWith(name: string, auth: Record<string, unknown>): Promise<string> {
    const file = path.join(dir, name);
    await writeFile(
      file,
      JSON.stringify({
        project_id: 'my-project',
        region: 'europe-west4',
        run_config: {
          image: 'europe-west4-docker.pkg.dev/my-project/kedro/spaceflights:1.4.2',
          root: 'my-bucket/pipelines',
          experiment_name: 'spaceflights',
          service_account: PIPELINE_SA,
          network: { vpc: 'projects/123456789012/global/networks/ml-vpc' },
        },
        kvx: { upstream: { url: mlflow.url }, auth, vertex: { endpoint: vertex.url } },
      }),
    );
    return file;
  }

  const run = (config: string, env: NodeJS.ProcessEnv) =>
    launchCli({ env }, ['run', FIXTURE, '-c', config, '--param', 'dataset=companies-v2', '--wait', '--poll-interval', '0.01'], { deps: { now: NOW } });

  it('GOOGLE_APPLICATION_CREDENTIALS of the environment kvx-launch was given: MLflow ID tokens and Vertex calls are both the key\'s', async () => {
    const config = await configWith('key.json', {
      params: { client_id: CLIENT_ID },
      endpoints: { oauthToken: world.endpoints.oauthToken },
    });
    const res = await run(config, world.keyEnv());
    expect(res.code, res.stderr).to.equal(0);
    expect(gate.identities.length).to.be.greaterThan(0);
    expect(new Set(gate.identities)).to.deep.equal(new Set([KEY_SA]));
    expect(vertex.requests.length).to.be.greaterThan(1);
    expect(new Set(vertex.requests.map((r) => r.caller))).to.deep.equal(new Set([KEY_SA]));
    expect(stranger.counts['all'] ?? 0, 'the process environment\'s metadata server was asked').to.equal(0);
  });

  it('auth.endpoints.metadataHost: IAM is called and Vertex is called with one access token of that metadata server\'s account', async () => {
    const config = await configWith('metadata.json', {
      params: { client_id: CLIENT_ID, service_account: TARGET_SA },
      endpoints: { iamCredentials: world.endpoints.iamCredentials, metadataHost: world.metadata.host },
    });
    const before = world.metadata.counts['token'] ?? 0;
    const res = await run(config, world.noCredentialsEnv());
    expect(res.code, res.stderr).to.equal(0);
    expect(new Set(gate.identities)).to.deep.equal(new Set([TARGET_SA]));
    expect(world.iam.calls.map((c) => c.caller)).to.deep.equal([world.metadata.email]);
    expect(new Set(vertex.requests.map((r) => r.caller))).to.deep.equal(new Set([world.metadata.email]));
    expect((world.metadata.counts['token'] ?? 0) - before, 'one access token, shared by IAM and Vertex calls').to.equal(1);
    expect(stranger.counts['all'] ?? 0, 'the process environment\'s metadata server was asked').to.equal(0);
  });

  it('Vertex AI answers 401 mid-follow (its access token revoked): the token is dropped, a fresh one fetched, the call sent again, and the run ends with the pipeline\'s state', async () => {
    const config = await configWith('revoked.json', { params: { client_id: CLIENT_ID }, endpoints: { oauthToken: world.endpoints.oauthToken } });
    let revoked = false;
    vertex.afterAnswer = ({ method, path: called, status }) => {
      if (!revoked && method === 'GET' && /\/pipelineJobs\/[^/]+$/.test(called) && status === 200) {
        revoked = true;
        world.accessTokens.revokeAll();
      }
    };
    const res = await run(config, world.keyEnv());
    expect(res.code, res.stderr).to.equal(0);
    expect(revoked).to.equal(true);
    const gets = vertex.requests.filter((r) => r.method === 'GET');
    const rejected = gets.findIndex((r) => r.status === 401);
    expect(rejected, 'a GET was answered 401').to.be.greaterThan(0);
    expect(gets[rejected + 1], 'the call sent again, with a fresh token').to.include({ status: 200, caller: KEY_SA });
    expect(vertex.requests.filter((r) => r.status === 401)).to.have.length(1);
    const [mlflowRun] = [...mlflow.store.runs.values()];
    expect(mlflowRun!.info.status).to.equal('FINISHED');
  });

  it('no credentials in the environment kvx-launch was given: Vertex AI calls fail saying so, with the set-up hint', async () => {
    const config = await configWith('none.json', { params: { client_id: CLIENT_ID }, endpoints: { oauthToken: world.endpoints.oauthToken } });
    const res = await launchCli({ env: world.noCredentialsEnv() }, ['follow', 'spaceflights-20240517083005', '-c', config]);
    expect(res.code).to.equal(1);
    expect(res.stderr).to.include('no Google credentials for Vertex AI pipelineJobs.get: no Google credentials found');
    expect(res.stderr).to.include('hint: on a laptop run `gcloud auth application-default login`');
    expect(vertex.requests).to.deep.equal([]);
    expect(stranger.counts['all'] ?? 0).to.equal(0);
  });

  it('an adapted kedro-vertexai pipeline: run, then start-run and end-run as its steps run them, every MLflow call through the IAP gate with an ID token', async () => {
    const launcher = await configWith('launcher.json', { params: { client_id: CLIENT_ID }, endpoints: { oauthToken: world.endpoints.oauthToken } });
    // Inside a step: the vertexai.yml of the image, and the metadata server's account (the pipeline's service account).
    const step = await configWith('step.json', { params: { client_id: CLIENT_ID }, endpoints: { metadataHost: world.metadata.host } });
    const kedro = path.join(kfpCorpusDir(), 'kedro-vertexai-spaceflights.yaml');
    const launched = await launchCli({ env: world.keyEnv() }, ['run', kedro, '-c', launcher, '--param', 'dataset=companies', '--json'], { deps: { now: NOW } });
    expect(launched.code, launched.stderr).to.equal(0);
    const { runId, jobName } = JSON.parse(launched.stdout) as { runId: string; jobName: string };
    const output = path.join(dir, 'step-out', 'mlflow_run_id');
    const started = await launchCli({ env: world.noCredentialsEnv() }, ['start-run', '-c', step, '--run-id', runId, '--job-name', 'spaceflights-20240517083005', '--job-id', 'uuid-1', '--output', output]);
    expect(started.code, started.stderr).to.equal(0);
    const status = JSON.stringify({ state: 'SUCCEEDED', pipelineJobResourceName: jobName, pipelineTaskName: 'exit-handler-1' });
    const ended = await launchCli({ env: world.noCredentialsEnv() }, ['end-run', '-c', step, '--run-id', runId, '--job-name', 'spaceflights-20240517083005', '--job-resource-name', jobName, '--status', status]);
    expect(ended.code, ended.stderr).to.equal(0);
    expect([...mlflow.store.runs.keys()]).to.deep.equal([runId]);
    expect(mlflow.store.runs.get(runId)!.info.status).to.equal('FINISHED');
    expect(gate.rejected).to.deep.equal({});
    expect(new Set(gate.identities)).to.deep.equal(new Set([KEY_SA, world.metadata.email]));
    // end-run read the job (for the failed task) as the step's account.
    expect(vertex.requests.filter((r) => r.method === 'GET').map((r) => r.caller)).to.include(world.metadata.email);
  });
});
