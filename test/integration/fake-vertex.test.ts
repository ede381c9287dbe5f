/**
 * The fake Vertex AI API is as strict as the real one and no stricter, and the jobs it runs report task trees
 * shaped like a real job's (test/../shared/reference/vertex/pipeline-job-get-kedro-vertexai.json).
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import YAML from 'yaml';
import { AccessTokenStore } from '../fakes/google-common.js';
import { startFakeVertex } from '../fakes/vertex-api.js';
import type { FakeVertex, JobOutcome } from '../fakes/vertex-api.js';
import { sharedReferenceDir } from '../helpers/corpus.js';

const FIXTURES = fileURLToPath(new URL('../fixtures/kfp/', import.meta.url));
const spec = (name: string) => YAML.parseAllDocuments(readFileSync(path.join(FIXTURES, name), 'utf8'))[0]!.toJS() as Record<string, unknown>;
const REAL = JSON.parse(readFileSync(path.join(sharedReferenceDir(), 'vertex', 'pipeline-job-get-kedro-vertexai.json'), 'utf8')) as Record<string, unknown>;

type Json = Record<string, unknown>;
type Task = { taskId: string; parentTaskId?: string; taskName: string; state: string; execution?: { metadata: Json }; error?: { message: string } };

describe('fake Vertex AI API: as strict as the real one, no stricter', () => {
  let vertex: FakeVertex;
  let token: string;
  let seq = 0;
  before(async () => {
    const tokens = new AccessTokenStore();
    token = tokens.issue('caller@my-project.iam.gserviceaccount.com', 3600).access_token;
    vertex = await startFakeVertex({ accessTokens: tokens });
  });
  after(async () => {
    await vertex.close();
  });

  const parent = () => `${vertex.url}/v1/projects/my-project/locations/${vertex.region}/pipelineJobs`;
  async function create(body: Json, id = `job-${++seq}`, outcome?: JobOutcome): Promise<{ status: number; json: Json; id: string }> {
    vertex.nextOutcome = outcome;
    const res = await fetch(`${parent()}?pipelineJobId=${id}`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
    return { status: res.status, json: (await res.json()) as Json, id };
  }
  async function get(id: string): Promise<Json> {
    const res = await fetch(`${parent()}/${id}`, { headers: { authorization: `Bearer ${token}` } });
    return (await res.json()) as Json;
  }
  async function finished(id: string): Promise<Json> {
    for (let i = 0; i < 500; i++) {
      const job = await get(id);
      if (['PIPELINE_STATE_SUCCEEDED', 'PIPELINE_STATE_FAILED', 'PIPELINE_STATE_CANCELLED'].includes(String(job['state']))) return job;
    }
    throw new Error(`job ${id} did not finish in 500 polls`);
  }
  const message = (r: { json: Json }) => String((r.json['error'] as { message?: string } | undefined)?.message);
  const body = (pipelineSpec: Json, runtimeConfig: Json, extra: Json = {}): Json => ({ displayName: 'd', pipelineSpec, runtimeConfig: { gcsOutputDirectory: 'gs://my-bucket/r', ...runtimeConfig }, ...extra });

  it('accepts pipelineSpec together with templateUri, as the SDK sends a template', async () => {
    const uri = `${vertex.url}/kfp/my-project/repo/pkg/v1`;
    vertex.templates.set(uri, readFileSync(path.join(FIXTURES, 'multi-document.yaml'), 'utf8'));
    const both = await create(body(spec('multi-document.yaml'), {}, { templateUri: uri }));
    expect(both.status, message(both)).to.equal(200);
    expect(both.json['templateUri']).to.equal(uri);
    expect(both.json['templateMetadata']).to.have.property('version').that.matches(/^sha256:[0-9a-f]{64}$/);
    const only = await create({ displayName: 'd', templateUri: uri, runtimeConfig: { gcsOutputDirectory: 'gs://my-bucket/r' } });
    expect(only.status, message(only)).to.equal(200);
    const unknown = await create(body(spec('multi-document.yaml'), {}, { templateUri: `${vertex.url}/kfp/nope` }));
    expect(unknown.status).to.equal(404);
  });

  it('schemaVersion 2.0.0: parameters typed by type:, in runtimeConfig.parameters only', async () => {
    const s = spec('params-schema-2_0_0.yaml');
    const good = { epochs: { intValue: '3' }, learning_rate: { doubleValue: 0.5 }, name: { stringValue: 'n' }, flags: { stringValue: 'true' } };
    expect((await create(body(s, { parameters: good }))).status).to.equal(200);
    expect((await create(body(s, { parameters: { ...good, epochs: { intValue: 3 } } }))).status, 'int64 as a JSON number parses too').to.equal(200);
    const values = await create(body(s, { parameterValues: { epochs: 3, learning_rate: 0.5, name: 'n', flags: 'true' } }));
    expect(values.status).to.equal(400);
    expect(message(values)).to.match(/parameter_values is not supported for pipeline_spec\.schema_version 2\.0\.0/);
    const wrongField = await create(body(s, { parameters: { ...good, epochs: { stringValue: '3' } } }));
    expect(message(wrongField)).to.match(/epochs \(stringValue\) does not match its declared type INT/);
    const missing = await create(body(s, { parameters: { epochs: { intValue: '3' } } }));
    expect(message(missing)).to.match(/The pipeline parameter \w+ is required but no value was provided in runtime_config\.parameters/);
  });

  it('schemaVersion 2.1.0 with the old parameters field: created, and the job fails as it starts', async () => {
    const r = await create(body(spec('multi-document.yaml'), { parameters: { message: { stringValue: 'x' } } }));
    expect(r.status).to.equal(200);
    const job = await finished(r.id);
    expect(job['state']).to.equal('PIPELINE_STATE_FAILED');
    expect(job['error']).to.include({ code: 13 });
  });

  it('checks inputArtifacts against the spec and the metadata store', async () => {
    const s = spec('input-artifacts.yaml');
    vertex.artifacts.set('8884357589702467656', { schemaTitle: 'system.Model' });
    expect((await create(body(s, { inputArtifacts: { model: { artifactId: '8884357589702467656' } } }))).status).to.equal(200);
    expect(message(await create(body(s, {})))).to.match(/input artifact model is required/);
    expect(message(await create(body(s, { inputArtifacts: { model: { artifactId: '8884357589702467656' }, other: { artifactId: '1' } } })))).to.match(/input artifact other is not found/);
    expect((await create(body(s, { inputArtifacts: { model: { artifactId: '404' } } }))).status).to.equal(404);
    expect(message(await create(body(s, { inputArtifacts: { model: { artifactId: 'projects/1/locations/x/metadataStores/default/artifacts/8884357589702467656' } } })))).to.match(/must be an artifact id/);
  });

  it('ignores output-only fields a client sends, in jobs and in contexts', async () => {
    const r = await create(body(spec('multi-document.yaml'), {}, { name: 'projects/x/locations/y/pipelineJobs/other', createTime: '2000-01-01T00:00:00Z', state: 'PIPELINE_STATE_SUCCEEDED', jobDetail: {}, error: { code: 1 } }));
    expect(r.status, message(r)).to.equal(200);
    expect(r.json['state']).to.equal('PIPELINE_STATE_QUEUED');
    expect(r.json['name']).to.match(new RegExp(`/pipelineJobs/${r.id}$`));
    expect(r.json['createTime']).not.to.equal('2000-01-01T00:00:00Z');
    const ctx = await fetch(`${vertex.url}/v1/projects/my-project/locations/${vertex.region}/metadataStores/default/contexts?contextId=exp-output-only`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ schemaTitle: 'system.Experiment', schemaVersion: '0.0.1', parentContexts: ['projects/1/locations/x/metadataStores/default/contexts/p'], createTime: '2000-01-01T00:00:00Z' }),
    });
    expect(ctx.status).to.equal(200);
    expect(await ctx.json()).not.to.have.property('parentContexts');
  });

  it('accepts every service-account form Google issues, refuses what is not one', async () => {
    for (const sa of ['runner@my-project.iam.gserviceaccount.com', 'my-project@appspot.gserviceaccount.com', '123456789012-compute@developer.gserviceaccount.com', 'service-123456789012@gcp-sa-aiplatform.iam.gserviceaccount.com']) {
      const r = await create(body(spec('multi-document.yaml'), {}, { serviceAccount: sa }));
      expect(r.status, `${sa}: ${message(r)}`).to.equal(200);
    }
    expect((await create(body(spec('multi-document.yaml'), {}, { serviceAccount: 'someone@gmail.com' }))).status).to.equal(400);
  });

  it('labels and job ids to the API limits', async () => {
    const s = spec('multi-document.yaml');
    expect((await create(body(s, {}, { labels: { équipe: 'données', ['k'.repeat(64)]: 'v'.repeat(64) } }))).status).to.equal(200);
    expect((await create(body(s, {}, { labels: { k: 'v'.repeat(65) } }))).status).to.equal(400);
    expect((await create(body(s, {}), `a${'b'.repeat(126)}`)).status).to.equal(200);
    expect((await create(body(s, {}), `a${'b'.repeat(127)}`)).status).to.equal(400);
  });

  describe('jobs it runs report a task tree like a real one', () => {
    const nested = () => body(spec('nested-loop-condition.yaml'), {});

    it('root named after the job id, int64 ids, sub-DAG tasks under their DAG task, loop iterations', async () => {
      const r = await create(nested());
      const job = await finished(r.id);
      expect(job['state']).to.equal('PIPELINE_STATE_SUCCEEDED');
      const tasks = (job['jobDetail'] as { taskDetails: Task[] }).taskDetails;
      const root = tasks[0]!;
      expect(root.taskName).to.equal(r.id);
      expect(root).not.to.have.property('parentTaskId');
      for (const t of tasks) expect(t.taskId).to.match(/^-?\d{1,19}$/);
      expect(tasks.some((t) => t.taskId.startsWith('-'))).to.equal(true);
      const byId = new Map(tasks.map((t) => [t.taskId, t]));
      const parentName = (t: Task) => byId.get(t.parentTaskId!)?.taskName;
      expect(tasks.filter((t) => t.parentTaskId === root.taskId).map((t) => t.taskName)).to.deep.equal(['train', 'exit-handler-1', 'notify']);
      const iterations = tasks.filter((t) => t.taskName === 'for-loop-2' && parentName(t) === 'for-loop-2');
      expect(iterations.map((t) => t.execution!.metadata['iteration_index'])).to.deep.equal([0, 1, 2, 3]);
      expect(tasks.filter((t) => t.taskName === 'train')).to.have.length(5);
      expect(tasks.filter((t) => t.taskName === 'evaluate').every((t) => parentName(t) === 'condition-3')).to.equal(true);
    });

    it('untaken conditions are NOT_TRIGGERED and run nothing; cache hits are SKIPPED only where caching is on', async () => {
      const r = await create(nested(), undefined, { notTriggered: ['condition-3'], cached: ['train'] });
      const tasks = ((await finished(r.id))['jobDetail'] as { taskDetails: Task[] }).taskDetails;
      expect(tasks.filter((t) => t.taskName === 'condition-3').map((t) => t.state)).to.deep.equal(['NOT_TRIGGERED', 'NOT_TRIGGERED', 'NOT_TRIGGERED', 'NOT_TRIGGERED']);
      expect(tasks.filter((t) => t.taskName === 'evaluate')).to.have.length(0);
      expect(tasks.filter((t) => t.taskName === 'train').every((t) => t.state === 'SKIPPED')).to.equal(true);

      const off = nested();
      const pipelineSpec = off['pipelineSpec'] as { root: { dag: { tasks: Record<string, { cachingOptions?: unknown }> } } };
      pipelineSpec.root.dag.tasks['train']!.cachingOptions = { enableCache: false };
      const r2 = await create(off, undefined, { cached: ['train'] });
      const tasks2 = ((await finished(r2.id))['jobDetail'] as { taskDetails: Task[] }).taskDetails;
      expect(tasks2.find((t) => t.taskName === 'train')!.state, 'caching off: the task runs').to.equal('SUCCEEDED');
    });

    it('a failure inside a nested pipeline fails its DAGs and the job; the exit handler still runs', async () => {
      const r = await create(nested(), undefined, { failAt: 'exit-handler-1/train-loop/for-loop-2[iteration 2]/train', error: 'OOM' });
      const job = await finished(r.id);
      expect(job['state']).to.equal('PIPELINE_STATE_FAILED');
      const tasks = (job['jobDetail'] as { taskDetails: Task[] }).taskDetails;
      const failed = tasks.filter((t) => t.state === 'FAILED').map((t) => t.taskName);
      expect(failed).to.deep.equal([r.id, 'exit-handler-1', 'train-loop', 'for-loop-2', 'for-loop-2', 'train']);
      expect(tasks.find((t) => t.error?.message === 'OOM')!.taskName).to.equal('train');
      expect(tasks.find((t) => t.taskName === 'notify')!.state).to.equal('SUCCEEDED');
      expect(tasks.filter((t) => t.taskName === 'for-loop-2' && t.execution?.metadata['iteration_index'] === 3), 'nothing starts after the failure').to.have.length(0);
    });

    it('its answers have the fields and types of a real pipelineJobs.get, recursively', async () => {
      const r = await create(body(spec('multi-document.yaml'), {}, { serviceAccount: '123456789012-compute@developer.gserviceaccount.com' }));
      await finished(r.id);
      const fake = await get(r.id);
      // Fields a newer API answers that the 2023 job predates, and ones only a template job has.
      const newer = new Set(['taskUniqueName', 'templateUri', 'templateMetadata', 'labels.vertex-ai-pipelines-run-billing-id']);
      const problems: string[] = [];
      const compare = (real: unknown, ours: unknown, at: string): void => {
        const kind = (v: unknown) => (Array.isArray(v) ? 'array' : v === null ? 'null' : typeof v);
        if (kind(real) !== kind(ours)) {
          problems.push(`${at}: ${kind(ours)} where the real job has ${kind(real)}`);
          return;
        }
        if (Array.isArray(real) && Array.isArray(ours)) {
          if (real.length > 0) for (const [i, item] of ours.entries()) compare(real[Math.min(i, real.length - 1)], item, `${at}[${i}]`);
          return;
        }
        if (kind(real) !== 'object') return;
        const r = real as Json;
        for (const [k, v] of Object.entries(ours as Json)) {
          if (k in r) compare(r[k], v, at === '' ? k : `${at}.${k}`);
          else if (!newer.has(k) && !(at.endsWith('labels') && newer.has(`labels.${k}`)) && !at.startsWith('pipelineSpec') && !at.startsWith('runtimeConfig') && !at.startsWith('labels')) problems.push(`${at}.${k}: not in the real job`);
        }
      };
      const realTasks = (REAL['jobDetail'] as { taskDetails: Json[] }).taskDetails;
      const fakeTasks = (fake['jobDetail'] as { taskDetails: Json[] }).taskDetails;
      // Root against root, container tasks against a container task.
      compare(realTasks[0], fakeTasks[0], 'taskDetails[root]');
      for (const t of fakeTasks.slice(1)) compare(realTasks[1], t, 'taskDetails[task]');
      compare({ ...REAL, jobDetail: { ...(REAL['jobDetail'] as Json), taskDetails: [] } }, { ...fake, jobDetail: { ...(fake['jobDetail'] as Json), taskDetails: [] } }, '');
      expect(problems).to.deep.equal([]);
      // The fake produces the real job's fields where it knows them.
      for (const k of ['taskId', 'taskName', 'createTime', 'startTime', 'endTime', 'executorDetail', 'state', 'execution', 'parentTaskId', 'pipelineTaskStatus']) expect(fakeTasks[1], k).to.have.property(k);
      expect(fakeTasks[1]!['executorDetail']).to.have.nested.property('containerDetail.mainJob').that.matches(/^projects\/\d+\/locations\/[^/]+\/customJobs\/\d+$/);
    });
  });
});
