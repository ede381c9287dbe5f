import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import { CommandFlags } from '../../src/cli/flags.js';
import { KvxError } from '../../src/errors.js';
import { checkJobId, checkLabels, makeJobId, networkResourceName, toLabelValue } from '../../src/vertex/naming.js';
import { convertParameters, convertValue } from '../../src/vertex/params.js';
import { loadSpecFile, parseSpec } from '../../src/vertex/spec.js';
import { thrown } from '../helpers/errors.js';

/** kvx-launch run's --param, read through the flag table. */
const parseParamFlags = (pairs: string[]) => new CommandFlags('kvx-launch run', { param: pairs }).pairs('--param');

const FIXTURE = fileURLToPath(new URL('../fixtures/kfp/spaceflights-pipeline.yaml', import.meta.url));

async function rejected(p: Promise<unknown>): Promise<KvxError> {
  try {
    await p;
  } catch (err) {
    expect(err).to.be.instanceOf(KvxError);
    return err as KvxError;
  }
  expect.fail('expected a rejection');
}

describe('vertex: KFP IR spec loading', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'kvx-spec-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('reads the compiled fixture and its declared parameters with types', async () => {
    const loaded = await loadSpecFile(FIXTURE);
    expect(loaded.spec.pipelineInfo.name).to.equal('spaceflights');
    const byName = Object.fromEntries(loaded.parameters.map((p) => [p.name, p]));
    expect(byName['dataset']).to.include({ type: 'STRING', optional: false });
    expect(byName['epochs']).to.include({ type: 'NUMBER_INTEGER', optional: true, defaultValue: 10 });
    expect(byName['learning_rate']!.type).to.equal('NUMBER_DOUBLE');
    expect(byName['use_gpu']!.type).to.equal('BOOLEAN');
    expect(byName['features']!.type).to.equal('LIST');
    expect(byName['model_options']).to.include({ type: 'STRUCT', optional: true });
  });

  it('accepts JSON and a PipelineJob wrapper, and maps pre-2.1 type names', () => {
    const spec = {
      pipelineSpec: {
        pipelineInfo: { name: 'p' },
        root: { inputDefinitions: { parameters: { n: { type: 'INT' }, x: { type: 'DOUBLE' } } } },
        deploymentSpec: {},
        schemaVersion: '2.0.0',
      },
      runtimeConfig: {},
    };
    const loaded = parseSpec(JSON.stringify(spec), 'job.json');
    expect(loaded.parameters.map((p) => p.type)).to.deep.equal(['NUMBER_INTEGER', 'NUMBER_DOUBLE']);
  });

  it('names the file and the fix for a missing, unparsable or non-KFP spec', async () => {
    const missing = await rejected(loadSpecFile(path.join(dir, 'nope.yaml')));
    expect(missing.message).to.match(/cannot read pipeline spec .*nope\.yaml: no such file/);
    expect(missing.hint).to.match(/kedro vertexai compile/);

    const broken = path.join(dir, 'broken.yaml');
    await writeFile(broken, 'a: [1, 2\n');
    expect((await rejected(loadSpecFile(broken))).message).to.match(/broken\.yaml is not valid YAML or JSON/);

    const notKfp = path.join(dir, 'deployment.yaml');
    await writeFile(notKfp, 'apiVersion: apps/v1\nkind: Deployment\n');
    const e = await rejected(loadSpecFile(notKfp));
    expect(e.message).to.match(/is not a compiled KFP pipeline \(KFP IR\): pipelineInfo\.name is missing; root is missing; schemaVersion is missing; deploymentSpec is missing/);
    expect(e.hint).to.match(/compile/);

    const v1 = parseSpec.bind(null, 'pipelineInfo: {name: p}\nroot: {}\ndeploymentSpec: {}\nschemaVersion: 1.0.0\n', 'old.yaml');
    expect(thrown(v1).message).to.match(/schemaVersion 1\.0\.0 is not a KFP v2 IR version/);
  });
});

describe('vertex: parameter checking and conversion', () => {
  it('converts each declared type', () => {
    expect(convertValue('NUMBER_INTEGER', '42')).to.deep.equal({ ok: true, value: 42 });
    expect(convertValue('NUMBER_INTEGER', '-7')).to.deep.equal({ ok: true, value: -7 });
    expect(convertValue('NUMBER_INTEGER', '4.2').ok).to.equal(false);
    expect(convertValue('NUMBER_INTEGER', '99999999999999999999').ok).to.equal(false);
    expect(convertValue('NUMBER_DOUBLE', '1e-3')).to.deep.equal({ ok: true, value: 0.001 });
    expect(convertValue('NUMBER_DOUBLE', 'abc').ok).to.equal(false);
    expect(convertValue('NUMBER_DOUBLE', '').ok).to.equal(false);
    expect(convertValue('BOOLEAN', 'True')).to.deep.equal({ ok: true, value: true });
    expect(convertValue('BOOLEAN', '0')).to.deep.equal({ ok: true, value: false });
    expect(convertValue('BOOLEAN', 'yes please').ok).to.equal(false);
    expect(convertValue('LIST', '["a", 1]')).to.deep.equal({ ok: true, value: ['a', 1] });
    expect(convertValue('LIST', '{"a": 1}').ok).to.equal(false);
    expect(convertValue('STRUCT', '{"depth": 3}')).to.deep.equal({ ok: true, value: { depth: 3 } });
    expect(convertValue('STRUCT', '[1]').ok).to.equal(false);
    expect(convertValue('STRING', ' keep spaces ')).to.deep.equal({ ok: true, value: ' keep spaces ' });
  });

  it('checks given values against the fixture and fills mlflow_run_id', async () => {
    const { parameters } = await loadSpecFile(FIXTURE);
    const values = convertParameters(parameters, parseParamFlags(['dataset=companies-v2', 'epochs=20', 'learning_rate=0.5', 'use_gpu=true', 'features=["engines"]', 'model_options={"depth": 4}']), {
      mlflowRunId: 'abc123',
      source: 'fixture',
    });
    expect(values).to.deep.equal({
      dataset: 'companies-v2',
      epochs: 20,
      learning_rate: 0.5,
      use_gpu: true,
      features: ['engines'],
      model_options: { depth: 4 },
      mlflow_run_id: 'abc123',
    });
  });

  it('reports every problem at once with the declared parameters and their types', async () => {
    const { parameters } = await loadSpecFile(FIXTURE);
    const e = thrown(() => convertParameters(parameters, parseParamFlags(['epochs=many', 'colour=red', 'mlflow_run_id=x']), { mlflowRunId: 'r', source: 'pipeline.yaml' }));
    expect(e.code).to.equal('KVX_LAUNCH_INPUT');
    expect(e.message).to.include('pipeline parameters do not match pipeline.yaml');
    expect(e.message).to.include('parameter "epochs" must be integer: "many" is not a whole number');
    expect(e.message).to.include('unknown parameter "colour"');
    expect(e.message).to.include('parameter "mlflow_run_id" is set by kvx-launch');
    expect(e.message).to.include('required parameter "dataset" (string) is missing: add --param dataset=<value>');
    expect(e.message).to.include('declared parameters:');
    expect(e.message).to.include('  epochs: integer (default 10)');
    expect(e.message).to.include('  model_options: struct (JSON object) (optional)');
    expect(e.message).to.include('  dataset: string (required)');
  });

  it('rejects malformed and repeated --param flags', () => {
    expect(thrown(() => parseParamFlags(['novalue'])).message).to.match(/--param "novalue" is malformed: write --param name=value/);
    expect(thrown(() => parseParamFlags(['=x'])).message).to.match(/malformed/);
    expect(thrown(() => parseParamFlags(['a=1', 'a=2'])).message).to.match(/--param a is given more than once/);
    expect(parseParamFlags(['q=a=b']).get('q')).to.equal('a=b');
  });
});

describe('vertex: names, labels and networks', () => {
  const at = new Date(Date.UTC(2024, 0, 31, 23, 59, 58));

  it('makes kedro-vertexai style job ids valid for Vertex', () => {
    expect(makeJobId('spaceflights', at)).to.equal('spaceflights-20240131235958');
    expect(makeJobId('My_Experiment.v2', at)).to.equal('my-experiment-v2-20240131235958');
    expect(makeJobId('2024 Forecast', at)).to.equal('forecast-20240131235958');
    expect(makeJobId('exp-', at)).to.equal('exp-20240131235958');
    // pipelineJobId: "less than 128 characters".
    const long = makeJobId('a'.repeat(300), at);
    expect(long).to.have.length(127);
    expect(long).to.match(/^[a-z][-a-z0-9]{0,126}$/);
    expect(checkJobId('a'.repeat(127))).to.have.length(127);
    expect(thrown(() => checkJobId('a'.repeat(128))).message).to.match(/at most 127/);
    const e = thrown(() => makeJobId('2024_01', at));
    expect(e.message).to.match(/cannot make a Vertex AI job id from experiment name "2024_01"/);
    expect(e.hint).to.match(/--job-id/);
    expect(thrown(() => checkJobId('Bad_Id')).message).to.match(/--job-id "Bad_Id" is not a valid Vertex AI job id/);
  });

  it('checks labels against Google rules', () => {
    expect(checkLabels({ team: 'ml', cost_center: 42 }, 'x')).to.deep.equal({ team: 'ml', cost_center: '42' });
    const e = thrown(() => checkLabels({ Team: 'ml', env: 'Prod', ok: 'x'.repeat(64) }, 'vertex.labels'));
    expect(e.message).to.include('label key "Team"');
    expect(e.message).to.include('label env="Prod"');
    expect(e.message).to.include('invalid labels (vertex.labels)');
    const many = Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, 'v']));
    expect(thrown(() => checkLabels(many, 'x')).message).to.match(/65 labels given; a job takes at most 64/);
    expect(toLabelValue('ABC.def')).to.equal('abc_def');
  });

  it('builds the network resource name Vertex wants', () => {
    expect(networkResourceName('', 'p', '')).to.equal('');
    expect(networkResourceName('projects/123/global/networks/vpc', 'p', '')).to.equal('projects/123/global/networks/vpc');
    expect(networkResourceName('vpc', 'p', '456')).to.equal('projects/456/global/networks/vpc');
    expect(thrown(() => networkResourceName('vpc', 'my-project', '')).hint).to.match(/vertex\.projectNumber/);
    expect(thrown(() => networkResourceName('projects/my-project/global/networks/vpc', 'my-project', '')).message).to.match(/project number/);
    expect(thrown(() => networkResourceName('regions/x/subnetworks/y', 'p', '1')).message).to.match(/neither a VPC name/);
  });
});
