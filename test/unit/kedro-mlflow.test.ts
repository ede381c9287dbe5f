import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { readKedroMlflow } from '../../src/config/kedro-mlflow.js';

describe("kedro-mlflow's mlflow.yml (src/config/kedro-mlflow.ts)", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'kvx-kedro-mlflow-'));
    await mkdir(path.join(dir, 'conf', 'base'), { recursive: true });
    await mkdir(path.join(dir, 'conf', 'prod'), { recursive: true });
    await mkdir(path.join(dir, 'conf', 'dev'), { recursive: true });
    await writeFile(path.join(dir, 'conf', 'base', 'mlflow.yml'), 'tracking:\n  experiment:\n    name: base-exp\n  run:\n    name: base-run\n');
    await writeFile(path.join(dir, 'conf', 'prod', 'mlflow.yml'), 'tracking:\n  experiment:\n    name: prod-exp\n');
    await writeFile(path.join(dir, 'conf', 'dev', 'mlflow.yml'), 'tracking:\n  experiment:\n    name: ${oc.env:EXP}\n');
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('reads tracking.experiment.name and tracking.run.name of conf/base', () => {
    expect(readKedroMlflow(path.join(dir, 'conf', 'base'))).to.deep.include({ experimentName: 'base-exp', runName: 'base-run' });
  });

  it('layers an env over conf/base as Kedro does', () => {
    const prod = readKedroMlflow(path.join(dir, 'conf', 'prod'));
    expect(prod).to.deep.include({ experimentName: 'prod-exp', runName: 'base-run' });
    expect(prod.files.map((f) => path.relative(dir, f))).to.deep.equal([path.join('conf', 'base', 'mlflow.yml'), path.join('conf', 'prod', 'mlflow.yml')]);
  });

  it('leaves an interpolation it cannot resolve alone, saying so', () => {
    const dev = readKedroMlflow(path.join(dir, 'conf', 'dev'));
    expect(dev.experimentName).to.equal('base-exp');
    expect(dev.warnings.join('\n')).to.include('is an interpolation kvx does not resolve');
  });

  it('finds nothing where there is no mlflow.yml', () => {
    expect(readKedroMlflow(path.join(dir, 'nowhere'))).to.deep.equal({ files: [], warnings: [] });
  });
});
