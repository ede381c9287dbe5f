/**
 * kedro-mlflow's `conf/<env>/mlflow.yml`, read for what decides where a kedro step looks for its run: the steps'
 * kedro-mlflow calls `mlflow.set_experiment(tracking.experiment.name)` before resuming MLFLOW_RUN_ID, and MLflow
 * refuses a run of another experiment. So the run kvx makes must be in that experiment. `tracking.run.name`
 * names the run (kedro-mlflow renames it to the pipeline's name otherwise).
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { KvxError, errorMessage } from '../errors.js';
import { isObject } from '../vertex/spec.js';
import { readYaml } from '../vertex/yaml.js';

export interface KedroMlflowSettings {
  /** tracking.experiment.name */
  experimentName?: string;
  /** tracking.run.name */
  runName?: string;
  /** The files read, base first. */
  files: string[];
  /** Values left alone (OmegaConf interpolations kvx cannot resolve). */
  warnings: string[];
}

/**
 * The settings of `mlflow.yml` in `confDir` (the folder of the vertexai.yml given, conf/<env>), over those of
 * `conf/base/mlflow.yml` as Kedro layers environments. Nothing when there is no such file.
 */
export function readKedroMlflow(confDir: string): KedroMlflowSettings {
  const out: KedroMlflowSettings = { files: [], warnings: [] };
  const own = path.join(confDir, 'mlflow.yml');
  const base = path.join(path.dirname(confDir), 'base', 'mlflow.yml');
  // Only in a Kedro layout (conf/<env>): elsewhere a sibling `base` folder is not the project's.
  const layered = path.basename(path.dirname(confDir)) === 'conf' && path.basename(confDir) !== 'base';
  const files = layered && existsSync(base) ? [base, own] : [own];
  for (const file of files) {
    if (!existsSync(file)) continue;
    let doc: unknown;
    try {
      doc = readYaml(readFileSync(file, 'utf8')).documents[0];
    } catch (err) {
      throw new KvxError('KVX_LAUNCH_INPUT', `cannot read kedro-mlflow's ${file}: ${errorMessage(err).split('\n')[0]}`, {
        hint: 'fix the file, or move it away if kedro-mlflow does not use it',
      });
    }
    out.files.push(file);
    const tracking = isObject(doc) && isObject(doc['tracking']) ? doc['tracking'] : {};
    const take = (section: string, key: 'experimentName' | 'runName', where: string) => {
      const value = isObject(tracking[section]) ? tracking[section]['name'] : undefined;
      if (typeof value !== 'string' || value.trim() === '') return;
      if (value.includes('${')) {
        out.warnings.push(`${file}: ${where} "${value}" is an interpolation kvx does not resolve; ignored`);
        return;
      }
      out[key] = value;
    };
    take('experiment', 'experimentName', 'tracking.experiment.name');
    take('run', 'runName', 'tracking.run.name');
  }
  return out;
}
