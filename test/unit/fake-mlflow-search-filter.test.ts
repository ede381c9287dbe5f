import { expect } from 'chai';
import { MlflowError } from '../fakes/mlflow/protocol.js';
import { EXPERIMENT_FIELDS, RUN_FIELDS, compileFilter, compileRunOrder } from '../fakes/mlflow/search-filter.js';
import type { SearchFields } from '../fakes/mlflow/search-filter.js';
import { FakeMlflowStore } from '../fakes/mlflow/store.js';
import type { Experiment, Run, RunStatus } from '../fakes/mlflow/store.js';

// The fake's filters must select what MLflow's would (mlflow/utils/search_utils.py), or tests of clients that
// search (kvx-launch's lookup of a run by tag) prove nothing. Only behaviour MLflow shares is pinned here.

interface RunSpec {
  start: number;
  status?: RunStatus;
  user?: string;
  tags?: Record<string, string>;
  params?: Record<string, string>;
  metrics?: Record<string, number>;
}

function seed(store: FakeMlflowStore, specs: Record<string, RunSpec>): void {
  const exp = store.experiment('0');
  for (const [name, spec] of Object.entries(specs)) {
    const tags = Object.entries(spec.tags ?? {}).map(([key, value]) => ({ key, value }));
    const r = store.createRun(exp, { runName: name, userId: spec.user ?? 'me', startTime: spec.start, tags });
    for (const [key, value] of Object.entries(spec.params ?? {})) store.logParam(r, key, value);
    for (const [key, value] of Object.entries(spec.metrics ?? {})) store.logMetric(r, { key, value, timestamp: 1, step: 0 });
    if (spec.status !== undefined) r.info.status = spec.status;
  }
}

function refused<T>(filter: string, fields: SearchFields<T>, message: RegExp): void {
  expect(() => compileFilter(filter, fields), filter)
    .to.throw(MlflowError, message)
    .that.includes({ errorCode: 'INVALID_PARAMETER_VALUE', status: 400 });
}

describe('fake MLflow search filters', () => {
  const store = new FakeMlflowStore();
  seed(store, {
    alpha: { start: 1000, status: 'FINISHED', tags: { stage: 'train', 'my tag': 'v', team: 'ML', ver: '1.0' }, params: { lr: '0.1' }, metrics: { loss: 1.5, n: 10, 'a.b': 1 } },
    beta: { start: 3000, user: 'you', tags: { stage: 'Train', ver: '1x0' }, params: { lr: '0.01' }, metrics: { loss: 0.5, n: 9 } },
    gamma: { start: 2000, status: 'FAILED', tags: { stage: 'eval' } },
  });
  const runs = [...store.runs.values()];
  const byName = (name: string): Run => runs.find((r) => r.info.run_name === name)!;
  const names = (filter: string): string[] => runs.filter(compileFilter(filter, RUN_FIELDS)).map((r) => r.info.run_name).sort();

  it('matches every run with an empty or blank filter', () => {
    expect(names('')).to.deep.equal(['alpha', 'beta', 'gamma']);
    expect(names('   ')).to.deep.equal(['alpha', 'beta', 'gamma']);
  });

  it('joins clauses with AND, in any case', () => {
    expect(names("metrics.loss > 1 and tags.stage = 'train'")).to.deep.equal(['alpha']);
    expect(names("metrics.loss > 0 AND params.lr = '0.01'")).to.deep.equal(['beta']);
    expect(names("tags.stage = 'train' And metrics.loss < 1")).to.deep.equal([]);
  });

  it('compares metrics as numbers with every comparator', () => {
    expect(names('metrics.n > 9'), '10 > 9 holds for numbers, not for strings').to.deep.equal(['alpha']);
    expect(names('metrics.loss >= 1.5')).to.deep.equal(['alpha']);
    expect(names('metrics.loss < 1.5')).to.deep.equal(['beta']);
    expect(names('metrics.loss <= 1.5')).to.deep.equal(['alpha', 'beta']);
    expect(names('metrics.loss = 0.5')).to.deep.equal(['beta']);
    expect(names('metrics.loss != 0.5')).to.deep.equal(['alpha']);
    expect(names('metrics.loss > -1')).to.deep.equal(['alpha', 'beta']);
    expect(names('metrics.loss > 1e0')).to.deep.equal(['alpha']);
  });

  it('filters a metric on the value MLflow reports for it: the highest step, not the last logged', () => {
    const own = new FakeMlflowStore();
    const r = own.createRun(own.experiment('0'), { runName: 'steps', userId: 'me', startTime: 1, tags: [] });
    own.logMetric(r, { key: 'acc', value: 0.9, timestamp: 2, step: 5 });
    own.logMetric(r, { key: 'acc', value: 0.1, timestamp: 3, step: 1 });
    expect(compileFilter('metrics.acc > 0.5', RUN_FIELDS)(r)).to.equal(true);
  });

  it('never matches a run without the key, not even with !=', () => {
    expect(names("tags.team != 'x'")).to.deep.equal(['alpha']);
    expect(names('metrics.loss != 99')).to.deep.equal(['alpha', 'beta']);
    expect(names("params.lr != '0.1'")).to.deep.equal(['beta']);
  });

  it("accepts MLflow's entity names and aliases, and a bare identifier as an attribute", () => {
    for (const entity of ['tag', 'tags']) expect(names(`${entity}.stage = 'eval'`), entity).to.deep.equal(['gamma']);
    for (const entity of ['param', 'params', 'parameter', 'parameters']) expect(names(`${entity}.lr = '0.1'`), entity).to.deep.equal(['alpha']);
    for (const entity of ['metric', 'metrics']) expect(names(`${entity}.loss < 1`), entity).to.deep.equal(['beta']);
    for (const entity of ['attribute', 'attributes', 'attr', 'run']) expect(names(`${entity}.status = 'FAILED'`), entity).to.deep.equal(['gamma']);
    expect(names("status = 'RUNNING'")).to.deep.equal(['beta']);
  });

  it('filters on run attributes, times as numbers, created as start_time', () => {
    expect(names("attributes.status != 'FINISHED'")).to.deep.equal(['beta', 'gamma']);
    expect(names("attributes.run_name = 'beta'")).to.deep.equal(['beta']);
    expect(names("attributes.user_id = 'you'")).to.deep.equal(['beta']);
    expect(names("attributes.lifecycle_stage = 'active'")).to.deep.equal(['alpha', 'beta', 'gamma']);
    expect(names('attributes.start_time > 1000')).to.deep.equal(['beta', 'gamma']);
    expect(names('attributes.start_time >= 1000 and attributes.start_time < 3000')).to.deep.equal(['alpha', 'gamma']);
    expect(names('created <= 2000')).to.deep.equal(['alpha', 'gamma']);
    expect(names('attributes.Created = 3000')).to.deep.equal(['beta']);
    expect(names('attributes.end_time > 0'), 'no run has ended').to.deep.equal([]);
  });

  it('selects run ids with IN and NOT IN lists', () => {
    const [a, b] = [byName('alpha').info.run_id, byName('beta').info.run_id];
    expect(names(`attributes.run_id IN ('${a}', '${b}')`)).to.deep.equal(['alpha', 'beta']);
    expect(names(`attributes.run_id in ('${a}')`)).to.deep.equal(['alpha']);
    expect(names(`attributes.run_id NOT IN ('${a}', '${b}')`)).to.deep.equal(['gamma']);
    expect(names(`run_id not in ('${b}')`)).to.deep.equal(['alpha', 'gamma']);
  });

  it('matches LIKE case-sensitively and ILIKE case-insensitively, with % and _ as the only wildcards', () => {
    expect(names("tags.stage LIKE 'tr%'")).to.deep.equal(['alpha']);
    expect(names("tags.stage ILIKE 'tr%'")).to.deep.equal(['alpha', 'beta']);
    expect(names("tags.stage like '%ai%'")).to.deep.equal(['alpha', 'beta']);
    expect(names("tags.stage LIKE '_rain'")).to.deep.equal(['alpha', 'beta']);
    expect(names("tags.stage LIKE 'rain'"), 'a pattern matches the whole value').to.deep.equal([]);
    expect(names("tags.ver LIKE '1.0'"), '. is a character, not a wildcard').to.deep.equal(['alpha']);
    expect(names("tags.ver LIKE '1_0'")).to.deep.equal(['alpha', 'beta']);
    expect(names("attributes.run_name ILIKE 'A%'")).to.deep.equal(['alpha']);
  });

  it('reads keys quoted with backticks or double quotes, keys with dots, and double-quoted values', () => {
    expect(names("tags.`my tag` = 'v'")).to.deep.equal(['alpha']);
    expect(names('tags."my tag" = "v"')).to.deep.equal(['alpha']);
    expect(names('metrics.a.b = 1'), 'the key is everything after the first dot').to.deep.equal(['alpha']);
    expect(names('metrics.`a.b` = 1')).to.deep.equal(['alpha']);
    expect(names("tags.mlflow.runName = 'gamma'")).to.deep.equal(['gamma']);
  });

  it('refuses what MLflow refuses, with INVALID_PARAMETER_VALUE', () => {
    refused("attributes.colour = 'red'", RUN_FIELDS, /Invalid attribute key 'colour' specified\. Valid keys are 'run_id', 'run_name', 'status'/);
    refused("foo.x = '1'", RUN_FIELDS, /invalid entity type 'foo'/);
    refused("tags.a = 'x' or tags.b = 'y'", RUN_FIELDS, /clauses must be joined with AND/);
    refused("tags.a = 'x' and", RUN_FIELDS, /dangling AND/);
    refused('tags.a', RUN_FIELDS, /expected a comparator/);
    refused('tags.a =', RUN_FIELDS, /expected a quoted string or a number as value/);
    refused('tags.a = bare', RUN_FIELDS, /expected a quoted string or a number as value/);
    refused("tags.a NOT LIKE 'x'", RUN_FIELDS, /expected IN after NOT/);
    refused("tags.a ~ 'x'", RUN_FIELDS, /Could not be parsed near position 6/);
    refused("tags.a = 'x';", RUN_FIELDS, /Could not be parsed/);
    refused("'x' = tags.a", RUN_FIELDS, /expected an identifier/);
    refused("attributes.run_id IN 'x'", RUN_FIELDS, /expected '\(' after IN/);
    refused("attributes.run_id IN ('x' 'y')", RUN_FIELDS, /expected ',' or '\)'/);
  });

  it('searches experiments by name, creation time and tags, and by nothing else', () => {
    const exps = new FakeMlflowStore();
    exps.experiment('0').creation_time = 0;
    exps.createExperiment('wf-train', [{ key: 'team', value: 'ml' }]).creation_time = 2000;
    exps.createExperiment('wf-eval').creation_time = 3000;
    const found = (filter: string): string[] =>
      [...exps.experiments.values()].filter(compileFilter(filter, EXPERIMENT_FIELDS)).map((e: Experiment) => e.name).sort();
    expect(found("name LIKE 'wf-%'")).to.deep.equal(['wf-eval', 'wf-train']);
    expect(found("attributes.name ILIKE 'WF-T%'")).to.deep.equal(['wf-train']);
    expect(found("name = 'Default'")).to.deep.equal(['Default']);
    expect(found("tags.team = 'ml'")).to.deep.equal(['wf-train']);
    expect(found('attributes.creation_time > 1000')).to.deep.equal(['wf-eval', 'wf-train']);
    expect(found("name != 'Default' and creation_time < 2500")).to.deep.equal(['wf-train']);
    refused('metrics.x > 1', EXPERIMENT_FIELDS, /Invalid attribute key 'x' specified\. Valid keys are 'name', 'creation_time'/);
    refused("params.x = 'y'", EXPERIMENT_FIELDS, /Invalid attribute key 'x'/);
    refused("attributes.status = 'RUNNING'", EXPERIMENT_FIELDS, /Invalid attribute key 'status'/);
  });
});

describe('fake MLflow run order_by', () => {
  const store = new FakeMlflowStore();
  seed(store, {
    alpha: { start: 1000, tags: { stage: 'b' }, metrics: { loss: 1.5 } },
    beta: { start: 3000, tags: { stage: 'a' }, metrics: { loss: 0.5 } },
    gamma: { start: 2000 },
  });
  const order = (orderBy: string[]): string[] => [...store.runs.values()].sort(compileRunOrder(orderBy)).map((r) => r.info.run_name);

  it('orders by start_time DESC when nothing is asked', () => {
    expect(order([])).to.deep.equal(['beta', 'gamma', 'alpha']);
  });

  it('orders by metrics, params, tags and attributes in either direction, ASC by default', () => {
    expect(order(['metrics.loss DESC'])).to.deep.equal(['alpha', 'beta', 'gamma']);
    expect(order(['metrics.loss'])).to.deep.equal(['beta', 'alpha', 'gamma']);
    expect(order(['metric.`loss` asc'])).to.deep.equal(['beta', 'alpha', 'gamma']);
    expect(order(['tags.stage ASC'])).to.deep.equal(['beta', 'alpha', 'gamma']);
    expect(order(['attributes.start_time ASC'])).to.deep.equal(['alpha', 'gamma', 'beta']);
    expect(order(['run_name DESC'])).to.deep.equal(['gamma', 'beta', 'alpha']);
  });

  it('puts runs without the key last in both directions, then falls back to start_time DESC', () => {
    expect(order(['metrics.loss DESC']).at(-1)).to.equal('gamma');
    expect(order(['metrics.loss ASC']).at(-1)).to.equal('gamma');
    expect(order(['params.none'])).to.deep.equal(['beta', 'gamma', 'alpha']);
  });

  it('breaks a full tie by run id', () => {
    const tied = new FakeMlflowStore();
    seed(tied, { one: { start: 5 }, two: { start: 5 }, three: { start: 5 } });
    const ids = [...tied.runs.values()].sort(compileRunOrder([])).map((r) => r.info.run_id);
    expect(ids).to.deep.equal([...ids].sort());
  });

  it('refuses a clause it cannot parse', () => {
    expect(() => compileRunOrder(['start_time sideways'])).to.throw(MlflowError, /Invalid order_by clause 'start_time sideways'/);
  });
});
