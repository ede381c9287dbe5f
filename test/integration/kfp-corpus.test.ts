/**
 * Every real compiled spec of the shared corpus (../shared/reference/kfp-specs, KFP 1.6 to 2.15 output and
 * kedro-vertexai's shape) and every spec of test/fixtures/kfp either becomes a create request the fake Vertex AI
 * API accepts, with values of the declared types in the field the spec's schema version takes, and runs to its
 * end; or kvx refuses it with a specific reason listed here. The outcome of each file is printed as a table.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import { KvxError } from '../../src/errors.js';
import { convertParameters } from '../../src/vertex/params.js';
import { buildCreateRequest } from '../../src/vertex/request.js';
import type { CreateRequest } from '../../src/vertex/request.js';
import { loadSpecFile } from '../../src/vertex/spec.js';
import type { LoadedSpec } from '../../src/vertex/spec.js';
import { AccessTokenStore } from '../fakes/google-common.js';
import { startFakeVertex } from '../fakes/vertex-api.js';
import type { FakeVertex } from '../fakes/vertex-api.js';
import { kfpCorpusDir, sample, specFiles } from '../helpers/corpus.js';

const CORPUS = kfpCorpusDir();
const FIXTURES = fileURLToPath(new URL('../fixtures/kfp/', import.meta.url));

/** Files kvx must refuse, and why. None of the corpus: every real compiled spec submits. */
const REFUSED: Record<string, RegExp> = {
  'refused-2_0_0-boolean.yaml': /parameter "verbose" is declared as "BOOLEAN", but schemaVersion 2\.0\.0 passes values in runtimeConfig\.parameters, which carry only STRING, INT and DOUBLE/,
};

/** The request carries each value in the field the schema version takes, with the declared type. */
function checkTypedValues(loaded: LoadedSpec, request: CreateRequest): string[] {
  const runtime = request.pipelineJob['runtimeConfig'] as Record<string, Record<string, unknown> | undefined>;
  const other = loaded.parameterField === 'parameters' ? 'parameterValues' : 'parameters';
  const problems: string[] = [];
  if (runtime[other] !== undefined) problems.push(`sent ${other}`);
  for (const [name, value] of Object.entries(runtime[loaded.parameterField] ?? {})) {
    const p = loaded.parameters.find((d) => d.name === name)!;
    if (loaded.parameterField === 'parameters') {
      const v = value as Record<string, unknown>;
      const ok = (p.legacyType === 'INT' && typeof v['intValue'] === 'string' && /^-?\d+$/.test(v['intValue'])) || (p.legacyType === 'DOUBLE' && typeof v['doubleValue'] === 'number') || (p.legacyType === 'STRING' && typeof v['stringValue'] === 'string');
      if (!ok || Object.keys(v).length !== 1) problems.push(`${name}: ${JSON.stringify(v)} for ${p.legacyType}`);
    } else {
      const ok =
        (p.type === 'STRING' && typeof value === 'string') ||
        (p.type === 'NUMBER_INTEGER' && Number.isInteger(value)) ||
        (p.type === 'NUMBER_DOUBLE' && typeof value === 'number') ||
        (p.type === 'BOOLEAN' && typeof value === 'boolean') ||
        (p.type === 'LIST' && Array.isArray(value)) ||
        (p.type === 'STRUCT' && typeof value === 'object' && value !== null && !Array.isArray(value));
      if (!ok) problems.push(`${name}: ${JSON.stringify(value)} for ${p.type}`);
    }
  }
  return problems;
}

interface Row {
  file: string;
  schema: string;
  field: string;
  sent: string;
  outcome: string;
}

describe('KFP spec corpus: every real compiled spec submits as the SDK would, or is refused with a reason', () => {
  let vertex: FakeVertex;
  let token: string;
  const rows: Row[] = [];
  before(async () => {
    const tokens = new AccessTokenStore();
    token = tokens.issue('caller@my-project.iam.gserviceaccount.com', 3600).access_token;
    vertex = await startFakeVertex({ accessTokens: tokens });
  });
  after(async () => {
    await vertex.close();
    const cols: (keyof Row)[] = ['file', 'schema', 'field', 'sent', 'outcome'];
    const width = (c: keyof Row) => Math.max(c.length, ...rows.map((r) => r[c].length));
    const line = (r: Record<keyof Row, string>) => `| ${cols.map((c) => r[c].padEnd(width(c))).join(' | ')} |`;
    console.log(['', line({ file: 'file', schema: 'schema', field: 'field', sent: 'sent', outcome: 'outcome' }), `|${cols.map((c) => '-'.repeat(width(c) + 2)).join('|')}|`, ...rows.map(line), ''].join('\n'));
  });

  it('finds the corpus and the fixtures', () => {
    expect(specFiles(CORPUS).length).to.be.at.least(35);
    expect(specFiles(FIXTURES).length).to.be.at.least(9);
  });

  const files = [...specFiles(CORPUS).map((f) => ['corpus', f] as const), ...specFiles(FIXTURES).map((f) => ['fixture', f] as const)];
  for (const [where, file] of files) {
    const name = path.basename(file);
    it(`${where}: ${name}`, async () => {
      const row: Row = { file: `${where === 'fixture' ? 'fixtures/' : ''}${name}`, schema: '', field: '', sent: '', outcome: '' };
      rows.push(row);
      let loaded: LoadedSpec;
      let request: CreateRequest;
      try {
        loaded = await loadSpecFile(file);
        row.schema = loaded.spec.schemaVersion + (loaded.jobRuntimeConfig ? ' job file' : '');
        row.field = loaded.parameterField;
        const given = new Map(loaded.parameters.filter((p) => !p.systemSet && !p.optional && !(p.name in (loaded.jobRuntimeConfig?.parameterValues ?? {}))).map((p) => [p.name, sample(p)]));
        const values = convertParameters(loaded.parameters, given, { source: name, ...(loaded.jobRuntimeConfig ? { preset: loaded.jobRuntimeConfig.parameterValues } : {}) });
        const artifacts: Record<string, string> = {};
        for (const a of loaded.artifacts.filter((x) => !x.optional)) {
          const id = `corpus-${a.name.toLowerCase().replace(/[^a-z0-9]+/g, '-')}`;
          vertex.artifacts.set(id, { schemaTitle: a.schemaTitle });
          artifacts[a.name] = `projects/${vertex.projectNumber}/locations/${vertex.region}/metadataStores/default/artifacts/${id}`;
        }
        const jobId = `corpus-${name.toLowerCase().replace(/[^a-z0-9]+/g, '-')}`.slice(0, 100).replace(/-+$/, '');
        request = buildCreateRequest(loaded, values, {
          jobId,
          pipelineRoot: 'gs://kvx-corpus/root',
          enableCaching: false,
          labels: { suite: 'kfp-corpus' },
          inputArtifacts: artifacts,
          projectId: vertex.projectId,
          projectNumber: vertex.projectNumber,
          region: vertex.region,
        });
        const runtime = request.pipelineJob['runtimeConfig'] as Record<string, Record<string, unknown> | undefined>;
        row.sent = [`${Object.keys(runtime[loaded.parameterField] ?? {}).length} params`, ...(Object.keys(artifacts).length > 0 ? [`${Object.keys(artifacts).length} artifacts`] : []), ...(loaded.warnings.length > 0 ? [`${loaded.warnings.length} warnings`] : [])].join(', ');
      } catch (err) {
        if (!(err instanceof KvxError)) throw err;
        row.outcome = `refused: ${err.message.split(file).join(name).replace(/\s+/g, ' ').slice(0, 160)}`;
        const expected = REFUSED[name];
        expect(expected, `${name} was refused: ${err.message}`).to.not.equal(undefined);
        expect(err.message).to.match(expected!);
        return;
      }
      expect(REFUSED[name], `${name} should have been refused`).to.equal(undefined);
      expect(checkTypedValues(loaded, request)).to.deep.equal([]);

      const base = `${vertex.url}/v1/projects/${vertex.projectId}/locations/${vertex.region}/pipelineJobs`;
      const res = await fetch(`${base}?pipelineJobId=${request.pipelineJobId}`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify(request.pipelineJob) });
      const created = (await res.json()) as { error?: { message: string } };
      row.outcome = res.status === 200 ? 'accepted' : `FAKE REFUSED ${res.status}: ${created.error?.message}`;
      expect(res.status, created.error?.message).to.equal(200);
      let state = '';
      let tasks = 0;
      for (let i = 0; i < 2000 && !/SUCCEEDED|FAILED|CANCELLED/.test(state); i++) {
        const job = (await (await fetch(`${base}/${request.pipelineJobId}`, { headers: { authorization: `Bearer ${token}` } })).json()) as { state: string; jobDetail?: { taskDetails: unknown[] } };
        state = job.state;
        tasks = job.jobDetail?.taskDetails.length ?? 0;
      }
      row.outcome = `accepted, ran: ${state.replace('PIPELINE_STATE_', '')} (${tasks} tasks)`;
      expect(state).to.equal('PIPELINE_STATE_SUCCEEDED');
    });
  }
});
