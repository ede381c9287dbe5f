/* global fetch, URLSearchParams, setTimeout */
/**
 * A stand-in `kedro` for the end-to-end tests: what kedro-mlflow and kedro-vertexai do inside a Vertex AI step,
 * against MLflow's REST API, without Python.
 *
 *   kedro run -e ENV --pipeline P --nodes "a,b" [--runner R] [--config F] [--params k=v,...]
 *     kedro-mlflow: reads conf/ENV/mlflow.yml (over conf/base/mlflow.yml), sets its experiment (get or create by
 *     name), resumes MLFLOW_RUN_ID (refusing a run of another experiment, as mlflow.start_run does) or starts a
 *     run, renames it to the pipeline (unless tracking.run.name is set); per node, kedro-vertexai's hook sets
 *     vertexai_run_id=KEDRO_CONFIG_RUN_ID and vertexai_job_name=KEDRO_CONFIG_JOB_NAME (unless
 *     DISABLE_HOOKS_FOR_PLUGINS names kedro-vertexai), and the node logs its params and a metric; the run ends
 *     FINISHED, or FAILED when a node fails (exit 1).
 *   kedro vertexai -e ENV initialize-job [--params=JSON]        checks the env exists
 *   kedro vertexai -e ENV mlflow-start --output OUT RUN_NAME    starts a run in mlflow.yml's experiment, tags
 *     vertexai_run_id=RUN_NAME, writes the run id to OUT (its directory must exist), and ends the run FINISHED at
 *     exit, as MLflow's atexit handler does.
 *
 * Failing and hanging on demand: KEDRO_FAIL_NODE, or a file `fail-node` in the working directory, names the node
 * that raises; KEDRO_HANG_NODE, or `hang-node`, the node that sleeps (until killed; at most 60 s).
 * Every MLflow call goes to MLFLOW_TRACKING_URI (or mlflow.yml's server.mlflow_tracking_uri), with
 * MLFLOW_TRACKING_TOKEN as a bearer token when set, as MLflow's client sends it.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';

const argv = process.argv.slice(2);

function fail(message, code = 1) {
  process.stderr.write(`kedro (stand-in): ${message}\n`);
  process.exit(code);
}

/** `-e ENV` / `--env ENV` / `--env=ENV`, and other `--flag value` / `--flag=value` options. */
function parseArgs(args) {
  const options = {};
  const positional = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === '-e') options.env = args[++i];
    else if (a.startsWith('--') && a.includes('=')) options[a.slice(2, a.indexOf('='))] = a.slice(a.indexOf('=') + 1);
    else if (a.startsWith('--')) options[a.slice(2)] = args[++i];
    else positional.push(a);
  }
  return { options, positional };
}

function readYaml(file) {
  return existsSync(file) ? (YAML.parse(readFileSync(file, 'utf8')) ?? {}) : {};
}

/** kedro's config loader: conf/base, then conf/ENV over it. */
function mlflowConfig(env) {
  if (!existsSync(path.join('conf', env))) fail(`no configuration environment "${env}" (conf/${env} does not exist)`);
  const base = readYaml(path.join('conf', 'base', 'mlflow.yml'));
  const own = env === 'base' ? {} : readYaml(path.join('conf', env, 'mlflow.yml'));
  const merged = { ...base, ...own };
  return {
    experiment: own.tracking?.experiment?.name ?? base.tracking?.experiment?.name ?? 'Default',
    runName: own.tracking?.run?.name ?? base.tracking?.run?.name,
    trackingUri: merged.server?.mlflow_tracking_uri ?? process.env.MLFLOW_TRACKING_URI,
  };
}

function mlflow(trackingUri) {
  if (!trackingUri || !/^https?:\/\//.test(trackingUri)) fail(`no MLflow tracking server: MLFLOW_TRACKING_URI is "${trackingUri ?? ''}"`);
  const base = trackingUri.replace(/\/+$/, '');
  const headers = { 'content-type': 'application/json' };
  if (process.env.MLFLOW_TRACKING_TOKEN) headers.authorization = `Bearer ${process.env.MLFLOW_TRACKING_TOKEN}`;
  return async (method, endpoint, body) => {
    const url = `${base}/api/2.0/mlflow/${endpoint}`;
    const res = await fetch(method === 'GET' && body ? `${url}?${new URLSearchParams(body)}` : url, { method, headers, ...(method === 'GET' ? {} : { body: JSON.stringify(body ?? {}) }) });
    const text = await res.text();
    let json;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    return { status: res.status, json, text };
  };
}

async function ok(reply, what) {
  const r = await reply;
  if (r.status !== 200) fail(`MLflow ${what} failed: ${r.status} ${r.text.slice(0, 300)}`);
  return r.json;
}

/** mlflow.set_experiment: by name, created when missing; a deleted one is refused. */
async function setExperiment(call, name) {
  const got = await call('GET', 'experiments/get-by-name', { experiment_name: name });
  if (got.status === 200) {
    if (got.json.experiment.lifecycle_stage === 'deleted') fail(`Cannot set a deleted experiment '${name}' as the active experiment.`);
    return got.json.experiment.experiment_id;
  }
  if (got.json?.error_code !== 'RESOURCE_DOES_NOT_EXIST') fail(`MLflow experiments/get-by-name failed: ${got.status} ${got.text.slice(0, 300)}`);
  return (await ok(call('POST', 'experiments/create', { name }), 'experiments/create')).experiment_id;
}

const now = () => Date.now();

async function setTags(call, runId, tags) {
  for (const [key, value] of Object.entries(tags)) await ok(call('POST', 'runs/set-tag', { run_id: runId, key, value }), `runs/set-tag ${key}`);
}

function nodeNamed(kind, envName) {
  if (process.env[envName]) return process.env[envName];
  return existsSync(kind) ? readFileSync(kind, 'utf8').trim() : undefined;
}

async function kedroRun(options) {
  const env = options.env ?? 'local';
  const config = mlflowConfig(env);
  const call = mlflow(config.trackingUri);
  const experimentId = await setExperiment(call, config.experiment);
  const pipeline = options.pipeline ?? '__default__';
  const runName = config.runName ?? pipeline;
  const resume = process.env.MLFLOW_RUN_ID;
  let runId;
  if (resume) {
    const got = await call('GET', 'runs/get', { run_id: resume });
    if (got.status !== 200) fail(`Run '${resume}' not found (${got.status} ${got.text.slice(0, 200)})`);
    if (got.json.run.info.experiment_id !== experimentId) {
      fail(`mlflow.exceptions.MlflowException: Cannot start run with ID ${resume} because active run ID does not match environment run ID. Make sure --experiment-name or --experiment-id matches experiment set with set_experiment(), or just use command-line arguments`);
    }
    runId = resume;
    await ok(call('POST', 'runs/update', { run_id: runId, status: 'RUNNING', run_name: runName }), 'runs/update');
  } else {
    runId = (await ok(call('POST', 'runs/create', { experiment_id: experimentId, start_time: now(), run_name: runName, tags: [] }), 'runs/create')).run.info.run_id;
  }
  const hooks = !(process.env.DISABLE_HOOKS_FOR_PLUGINS ?? '').split(',').map((s) => s.trim()).includes('kedro-vertexai');
  const params = Object.fromEntries(
    (options.params ?? '')
      .split(',')
      .filter((kv) => kv.includes('='))
      .map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]),
  );
  const nodes = (options.nodes ?? 'all').split(',').map((n) => n.trim()).filter(Boolean);
  const failing = nodeNamed('fail-node', 'KEDRO_FAIL_NODE');
  const hanging = nodeNamed('hang-node', 'KEDRO_HANG_NODE');
  for (const node of nodes) {
    if (hooks) await setTags(call, runId, { vertexai_run_id: process.env.KEDRO_CONFIG_RUN_ID ?? '', vertexai_job_name: process.env.KEDRO_CONFIG_JOB_NAME ?? '' });
    if (hanging === node) await new Promise((resolve) => setTimeout(resolve, 60_000));
    if (failing === node) {
      await ok(call('POST', 'runs/update', { run_id: runId, status: 'FAILED', end_time: now() }), 'runs/update');
      fail(`node ${node} failed: ValueError: failing on demand`);
    }
    await ok(
      call('POST', 'runs/log-batch', {
        run_id: runId,
        params: [...Object.entries(params).map(([key, value]) => ({ key, value })), { key: `${node}.env`, value: env }],
        metrics: [{ key: `${node}.score`, value: node.length, timestamp: now(), step: 0 }],
      }),
      'runs/log-batch',
    );
  }
  await ok(call('POST', 'runs/update', { run_id: runId, status: 'FINISHED', end_time: now() }), 'runs/update');
  process.stdout.write(`kedro run: pipeline ${pipeline}, nodes ${nodes.join(', ')} done in MLflow run ${runId}\n`);
}

async function mlflowStart(options, positional) {
  const env = options.env ?? 'local';
  const config = mlflowConfig(env);
  const call = mlflow(config.trackingUri);
  const experimentId = await setExperiment(call, config.experiment);
  const runName = positional[0];
  if (!options.output) fail('mlflow-start needs --output');
  const run = (await ok(call('POST', 'runs/create', { experiment_id: experimentId, start_time: now(), tags: [] }), 'runs/create')).run;
  await setTags(call, run.info.run_id, { vertexai_run_id: runName ?? '' });
  try {
    writeFileSync(options.output, run.info.run_id);
  } catch (err) {
    fail(`cannot write ${options.output}: ${err.message}`);
  }
  await ok(call('POST', 'runs/update', { run_id: run.info.run_id, status: 'FINISHED', end_time: now() }), 'runs/update');
}

const { options, positional } = parseArgs(argv);
const [command, sub] = positional;
try {
  if (command === 'run') await kedroRun(options);
  else if (command === 'vertexai' && sub === 'initialize-job') mlflowConfig(options.env ?? 'local');
  else if (command === 'vertexai' && sub === 'mlflow-start') await mlflowStart(options, positional.slice(2));
  else fail(`unknown command: kedro ${argv.join(' ')}`, 2);
} catch (err) {
  fail(err.stack ?? String(err));
}
