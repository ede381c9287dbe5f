/**
 * Adapts a pipeline compiled by `kedro vertexai compile` so that kvx carries it: every container step runs behind
 * `kvx-proxy exec`, the `mlflow-start-run` step becomes `kvx-launch start-run` (one run: the launcher's, or one
 * made once by the step), and an exit handler ends the run with the pipeline's real state (`kvx-launch end-run`).
 *
 * A kedro-vertexai spec is recognised by its shape, not its names: executors running `/bin/bash -c "… kedro run
 * -e ENV …"`, and one running `kedro vertexai … mlflow-start --output OUT`. Adapting is idempotent (an adapted spec
 * is recognised and left as it is) and changes nothing else: images, resources, args, grouping, params and
 * caching options stay as compiled. Every change is listed, for the caller to print.
 */
import YAML from 'yaml';
import { KvxError } from '../errors.js';
import { MLFLOW_RUN_ID_PARAMETER } from './params.js';
import type { PipelineSpec } from './spec.js';
import { isObject } from './spec.js';

export interface AdaptSettings {
  /** kvx-proxy in the image: a name found on PATH, or an absolute path (adapt.proxyPath). */
  proxyPath: string;
  /** kvx-launch in the image (adapt.launchPath). */
  launchPath: string;
  /** The step config, relative to the image's working directory; `{env}` is the step's kedro env (adapt.stepConfig). */
  stepConfig: string;
}

export const DEFAULT_ADAPT_SETTINGS: AdaptSettings = { proxyPath: 'kvx-proxy', launchPath: 'kvx-launch', stepConfig: 'conf/{env}/vertexai.yml' };

export interface AdaptResult {
  spec: PipelineSpec;
  /** The spec has kedro-vertexai's shape (adapted already or not). */
  recognised: boolean;
  /** One line per change made; empty when there was nothing to do. */
  changes: string[];
  /** What was assumed, for the caller to print. */
  warnings: string[];
  /** The kedro envs (`kedro … -e ENV`) the steps run with, adapted already or not: whose mlflow.yml they read. */
  envs: string[];
}

/** The exit task kvx adds, and the names of what it is made of. */
export const EXIT_TASK = 'kvx-end-run';
const EXIT_COMPONENT = `comp-${EXIT_TASK}`;
const EXIT_EXECUTOR = `exec-${EXIT_TASK}`;
/** Input of the start and exit components carrying the launcher's run id (root input mlflow_run_id). */
export const LAUNCHER_RUN_INPUT = 'launcher_run_id';
const STATUS_INPUT = 'status';
/** How KFP names a sub-DAG's inputs fed from the enclosing scope. */
const CHANNEL = 'pipelinechannel--';

/**
 * Run in front of a kvx executable (`sh -c GUARD kvx-proxy exec …`): a clear message, instead of the runtime's
 * "executable file not found", when the image lacks it. Exit 127 is the shell's own "command not found".
 */
export const GUARD =
  'command -v "$0" >/dev/null 2>&1 || { echo "kvx: $0 is not in this image (PATH=$PATH): add the kvx executables to the image (kvx docs/launcher.md, Migrating from kedro-vertexai) or set adapt.proxyPath / adapt.launchPath" >&2; exit 127; }; exec "$0" "$@"';
const GUARD_SHELL = '/bin/sh';

function inlineGuard(executable: string): string {
  return `{ command -v ${executable} >/dev/null 2>&1 || { echo "kvx: ${executable} is not in this image (PATH=$PATH): add the kvx executables to the image (kvx docs/launcher.md, Migrating from kedro-vertexai) or set adapt.launchPath" >&2; exit 127; }; }`;
}

type Dict = Record<string, unknown>;

const SHELL = /(?:^|\/)(?:ba|da|z)?sh$/;
const KEDRO_RUN = /\bkedro\s+run\b/;
/** One shell command (up to &&, ||, ;, | or a line end) that starts `kedro vertexai … mlflow-start`. */
const MLFLOW_START = /\bkedro\s+vertexai\b(?:(?!&&|\|\||[;|\n]).)*?\bmlflow-start\b(?:(?!&&|\|\||[;|\n]).)*/s;
const KEDRO_COMMAND = /\bkedro\b(?:(?!&&|\|\||[;|\n]).)*/gs;
const ENV_FLAG = /(?:^|\s)(?:-e|--env)(?:\s+|=)(['"]?)([\w.-]+)\1/;
/** `MLFLOW_TRACKING_URI=…` set in the step's own shell line (export or a command's inline variable). */
const INLINE_TRACKING_URI = /(?:^|[\s;&|(])(?:export\s+)?MLFLOW_TRACKING_URI=/;
const ALREADY_STARTED_BY_KVX = /\bstart-run\b.*--output\b/s;

/** The shell script a `sh -c SCRIPT` / `bash -c` container runs, wherever the compiler put it. */
function shellScript(container: Dict): string | undefined {
  const command = container['command'];
  if (!Array.isArray(command) || command.length < 2 || typeof command[0] !== 'string' || !SHELL.test(command[0]) || command[1] !== '-c') return undefined;
  if (command.length > 2) return typeof command[2] === 'string' ? command[2] : undefined;
  const args = container['args'];
  return Array.isArray(args) && typeof args[0] === 'string' ? args[0] : undefined;
}

/** The kedro env of a step: that of its `kedro run`, else of any `kedro … -e ENV` in it. */
function kedroEnv(script: string): string | undefined {
  let any: string | undefined;
  for (const m of script.matchAll(KEDRO_COMMAND)) {
    const env = ENV_FLAG.exec(m[0])?.[2];
    if (env === undefined) continue;
    if (KEDRO_RUN.test(m[0])) return env;
    any ??= env;
  }
  return any;
}

const basename = (p: string): string => p.slice(p.lastIndexOf('/') + 1);

/** Where `kvx-proxy exec` starts in a command already adapted, or -1. */
function proxyExecAt(command: readonly unknown[], settings: AdaptSettings): number {
  const names = new Set([settings.proxyPath, basename(settings.proxyPath), 'kvx-proxy']);
  return command.findIndex((c, i) => typeof c === 'string' && (names.has(c) || names.has(basename(c))) && command[i + 1] === 'exec');
}

export function stepConfigFor(settings: AdaptSettings, env: string): string {
  return settings.stepConfig.replace(/\{env\}/g, env);
}

/** Whether the spec has kedro-vertexai's shape: a container step running `kedro run` or `kedro vertexai … mlflow-start` through a shell. */
export function isKedroVertexaiSpec(spec: PipelineSpec, settings: AdaptSettings = DEFAULT_ADAPT_SETTINGS): boolean {
  for (const executor of Object.values(executorsOf(spec))) {
    const container = isObject(executor) && isObject(executor['container']) ? executor['container'] : undefined;
    if (container === undefined) continue;
    const command = Array.isArray(container['command']) ? container['command'] : [];
    const at = proxyExecAt(command, settings);
    // An adapted step: the original shell command follows `kvx-proxy exec … --`.
    const original = at >= 0 ? { ...container, command: command.slice(command.indexOf('--', at) + 1) } : container;
    const script = shellScript(original);
    if (script !== undefined && (KEDRO_RUN.test(script) || MLFLOW_START.test(script))) return true;
  }
  return false;
}

function executorsOf(spec: PipelineSpec): Dict {
  const deployment = spec.deploymentSpec;
  return isObject(deployment) && isObject(deployment['executors']) ? deployment['executors'] : {};
}

/**
 * Adapts a kedro-vertexai spec (see the module comment). A spec of another shape comes back unchanged with
 * `recognised: false`. A container without a command cannot be wrapped without guessing its image's entrypoint:
 * that is an error naming it.
 */
export function adaptSpec(input: PipelineSpec, settings: AdaptSettings = DEFAULT_ADAPT_SETTINGS): AdaptResult {
  if (!isKedroVertexaiSpec(input, settings)) return { spec: input, recognised: false, changes: [], warnings: [], envs: [] };
  const spec = structuredClone(input);
  const changes: string[] = [];
  const warnings: string[] = [];
  const problems: string[] = [];
  const executors = executorsOf(spec);
  const envCount = new Map<string, number>();
  const envs = new Set<string>();

  let startExecutor: string | undefined;
  let startEnv: string | undefined;
  let startAdapted = false;
  for (const [label, executor] of Object.entries(executors)) {
    if (!isObject(executor) || !isObject(executor['container'])) continue; // importers, resolvers: not steps
    const container = executor['container'];
    const command = container['command'];
    if (!Array.isArray(command) || command.length === 0) {
      problems.push(`executor ${label} (image ${String(container['image'] ?? '?')}) has no command, so it runs its image's entrypoint, which kvx cannot wrap without guessing it`);
      continue;
    }
    const script = shellScript(container);
    if (script !== undefined && (MLFLOW_START.test(script) || (ALREADY_STARTED_BY_KVX.test(script) && (script.includes(`${settings.launchPath} start-run`) || /kvx-launch\s+start-run\b/.test(script))))) {
      startExecutor = label;
      startEnv = kedroEnv(script) ?? /(?:--config|-c)\s+conf\/([\w.-]+)\//.exec(script)?.[1];
      if (startEnv !== undefined) envs.add(startEnv);
      const m = MLFLOW_START.exec(script);
      if (m === null) {
        startAdapted = true;
        continue;
      }
      const output = /--output(?:\s+|=)(\S+)/.exec(m[0])?.[1];
      if (output === undefined) {
        problems.push(`executor ${label} runs \`kedro vertexai mlflow-start\` without --output, so kvx cannot tell where the run id goes`);
        continue;
      }
      const env = startEnv ?? 'base';
      if (startEnv === undefined) warnings.push(`executor ${label}: no \`-e ENV\` in its kedro command; using ${stepConfigFor(settings, env)} (adapt.stepConfig)`);
      const startRun =
        `${inlineGuard(settings.launchPath)} && ${settings.launchPath} start-run --config ${stepConfigFor(settings, env)} ` +
        `--run-id "{{$.inputs.parameters['${LAUNCHER_RUN_INPUT}']}}" --job-name "{{$.pipeline_job_name}}" --job-id "{{$.pipeline_job_uuid}}" --output ${output}`;
      setScript(container, script.slice(0, m.index) + startRun + script.slice(m.index + m[0].length));
      changes.push(`executor ${label}: \`kedro vertexai mlflow-start\` replaced by \`${settings.launchPath} start-run\`, writing the run id to ${output} as before (it resumes the run kvx-launch run made, else finds or creates the job's run once)`);
      continue;
    }
    const at = proxyExecAt(command, settings);
    if (at >= 0) {
      // Adapted already: the original command follows `kvx-proxy exec … --`.
      const original = shellScript({ ...container, command: command.slice(command.indexOf('--', at) + 1) });
      const env = original === undefined ? undefined : kedroEnv(original);
      if (env !== undefined) envs.add(env);
      continue;
    }
    if (command[0] === GUARD_SHELL && command[2] === GUARD) continue; // kvx's exit task
    const env = script === undefined ? undefined : kedroEnv(script);
    if (env !== undefined) {
      envCount.set(env, (envCount.get(env) ?? 0) + 1);
      envs.add(env);
    }
    else warnings.push(`executor ${label}: no \`kedro … -e ENV\` in its command; its step config is ${stepConfigFor(settings, 'base')} (adapt.stepConfig)`);
    if (script !== undefined && INLINE_TRACKING_URI.test(script)) {
      warnings.push(`executor ${label}: its command sets MLFLOW_TRACKING_URI itself, over the one kvx-proxy exec gives it, so its MLflow calls do not go through the proxy; remove that assignment`);
    }
    const config = stepConfigFor(settings, env ?? 'base');
    container['command'] = [GUARD_SHELL, '-c', GUARD, settings.proxyPath, 'exec', '--config', config, '--', ...command];
    changes.push(`executor ${label}: runs behind the proxy: ${settings.proxyPath} exec --config ${config} -- ${command.join(' ')} (args unchanged)`);
  }
  if (problems.length > 0) {
    throw new KvxError('KVX_LAUNCH_INPUT', `cannot adapt the kedro-vertexai pipeline:\n  - ${problems.join('\n  - ')}`, {
      hint: 'give the container a command in the spec, or submit it as it is with --no-adapt',
    });
  }

  const env = startEnv ?? [...envCount.entries()].sort((a, b) => b[1] - a[1])[0]?.[0] ?? 'base';
  const root = spec.root as Dict;
  const rootTasks = isObject(root['dag']) && isObject(root['dag']['tasks']) ? root['dag']['tasks'] : undefined;
  if (rootTasks === undefined) throw new KvxError('KVX_LAUNCH_INPUT', 'cannot adapt the kedro-vertexai pipeline: root.dag.tasks is missing');

  if (startExecutor !== undefined && !startAdapted) feedLauncherRun(spec, rootTasks, startExecutor, changes, warnings);
  if (startExecutor === undefined) {
    // Without kedro-mlflow the steps keep no run: nothing for an exit task to end in the job.
    warnings.push('no `kedro vertexai mlflow-start` step (kedro-mlflow not installed?): no exit task added; kvx-launch run --wait or follow ends the launcher\'s run');
  } else if (rootTasks[EXIT_TASK] === undefined) {
    const image = imageOf(executors, startExecutor);
    addExitHandler(spec, rootTasks, { image, config: stepConfigFor(settings, env), launchPath: settings.launchPath }, changes, warnings);
  }
  return { spec, recognised: true, changes, warnings, envs: [...envs].sort() };
}

function setScript(container: Dict, script: string): void {
  const command = container['command'] as unknown[];
  if (command.length > 2) command[2] = script;
  else (container['args'] as unknown[])[0] = script;
}

function imageOf(executors: Dict, preferred: string | undefined): string {
  const containers = Object.entries(executors).filter(([, e]) => isObject(e) && isObject(e['container']));
  const chosen = containers.find(([label]) => label === preferred) ?? containers[0];
  return String(((chosen?.[1] as Dict)['container'] as Dict)['image'] ?? '');
}

/**
 * The launcher's run id reaches the start step: a root input `mlflow_run_id` (which kvx-launch run fills, and
 * which is empty in a job started another way) feeds the start task's `launcher_run_id`.
 */
function feedLauncherRun(spec: PipelineSpec, rootTasks: Dict, startExecutor: string, changes: string[], warnings: string[]): void {
  const components = (spec.components ??= {}) as Dict;
  const startComponents = Object.entries(components).filter(([, c]) => isObject(c) && c['executorLabel'] === startExecutor).map(([name]) => name);
  const startTasks = Object.entries(rootTasks).filter(([, t]) => isObject(t) && isObject(t['componentRef']) && startComponents.includes(String(t['componentRef']['name'])));
  if (startTasks.length === 0) {
    warnings.push(`executor ${startExecutor} runs no task of the pipeline's root; the launcher's run id is not passed to it`);
    return;
  }
  const rootInputs = ((spec.root.inputDefinitions ??= {}).parameters ??= {});
  if (rootInputs[MLFLOW_RUN_ID_PARAMETER] === undefined) {
    rootInputs[MLFLOW_RUN_ID_PARAMETER] = { defaultValue: '', isOptional: true, parameterType: 'STRING' };
    changes.push(`root input ${MLFLOW_RUN_ID_PARAMETER} added (STRING, default ""): kvx-launch run passes the MLflow run it made; a job started another way leaves it empty`);
  }
  for (const name of startComponents) {
    const component = components[name] as Dict;
    const inputs = ((component['inputDefinitions'] ??= {}) as Dict);
    const parameters = ((inputs['parameters'] ??= {}) as Dict);
    if (parameters[LAUNCHER_RUN_INPUT] !== undefined) continue;
    parameters[LAUNCHER_RUN_INPUT] = { isOptional: true, parameterType: 'STRING' };
    changes.push(`component ${name}: input ${LAUNCHER_RUN_INPUT} added`);
  }
  for (const [name, task] of startTasks) {
    const inputs = (((task as Dict)['inputs'] ??= {}) as Dict);
    const parameters = ((inputs['parameters'] ??= {}) as Dict);
    if (parameters[LAUNCHER_RUN_INPUT] !== undefined) continue;
    parameters[LAUNCHER_RUN_INPUT] = { componentInputParameter: MLFLOW_RUN_ID_PARAMETER };
    changes.push(`task ${name}: input ${LAUNCHER_RUN_INPUT} fed from root input ${MLFLOW_RUN_ID_PARAMETER}`);
  }
}

/**
 * What the KFP compiler makes of `with dsl.ExitHandler(exit_task):` around the whole pipeline (the corpus specs
 * kfp-pipeline_with_task_final_status.yaml and kfp-failing_pipeline_with_exit_handler.yaml): the root's tasks move
 * unchanged into a sub-DAG component whose inputs are `pipelinechannel--<root input>`, and the exit task depends
 * on that DAG with trigger policy ALL_UPSTREAM_TASKS_COMPLETED and takes its final status (TASK_FINAL_STATUS).
 */
function addExitHandler(spec: PipelineSpec, rootTasks: Dict, exit: { image: string; config: string; launchPath: string }, changes: string[], warnings: string[]): void {
  const root = spec.root as Dict;
  if (isObject(root['dag']) && root['dag']['outputs'] !== undefined) {
    warnings.push('the pipeline has outputs (root.dag.outputs); no exit task was added, so only kvx-launch run --wait or follow ends the run');
    return;
  }
  const components = (spec.components ??= {}) as Dict;
  let n = 1;
  while (components[`comp-exit-handler-${n}`] !== undefined || rootTasks[`exit-handler-${n}`] !== undefined) n++;
  const handler = `exit-handler-${n}`;
  const rootInputs = spec.root.inputDefinitions ?? {};
  const parameters = rootInputs.parameters ?? {};
  const artifacts = rootInputs.artifacts ?? {};
  const usedParameters = new Set<string>();
  const usedArtifacts = new Set<string>();
  const inner: Dict = {};
  for (const [name, task] of Object.entries(rootTasks)) inner[name] = toChannels(task, usedParameters, usedArtifacts);

  const channelInputs: Dict = {};
  const channelParameters: Dict = {};
  for (const p of [...usedParameters].sort()) {
    channelInputs[`${CHANNEL}${p}`] = { parameterType: (parameters[p] ?? {})['parameterType'] ?? 'STRING' };
    channelParameters[`${CHANNEL}${p}`] = { componentInputParameter: p };
  }
  const channelArtifactInputs: Dict = {};
  const channelArtifacts: Dict = {};
  for (const a of [...usedArtifacts].sort()) {
    const def = artifacts[a] ?? {};
    channelArtifactInputs[`${CHANNEL}${a}`] = { artifactType: def['artifactType'], ...(def['isArtifactList'] === true ? { isArtifactList: true } : {}) };
    channelArtifacts[`${CHANNEL}${a}`] = { componentInputArtifact: a };
  }
  const inputDefinitions: Dict = {};
  if (Object.keys(channelInputs).length > 0) inputDefinitions['parameters'] = channelInputs;
  if (Object.keys(channelArtifactInputs).length > 0) inputDefinitions['artifacts'] = channelArtifactInputs;
  components[`comp-${handler}`] = { dag: { tasks: inner }, ...(Object.keys(inputDefinitions).length > 0 ? { inputDefinitions } : {}) };

  const handlerInputs: Dict = {};
  if (Object.keys(channelParameters).length > 0) handlerInputs['parameters'] = channelParameters;
  if (Object.keys(channelArtifacts).length > 0) handlerInputs['artifacts'] = channelArtifacts;
  const exitParameters: Dict = { [STATUS_INPUT]: { taskFinalStatus: { producerTask: handler } } };
  const exitInputs: Dict = { [STATUS_INPUT]: { isOptional: true, parameterType: 'TASK_FINAL_STATUS' } };
  if (parameters[MLFLOW_RUN_ID_PARAMETER] !== undefined) {
    exitParameters[LAUNCHER_RUN_INPUT] = { componentInputParameter: MLFLOW_RUN_ID_PARAMETER };
    exitInputs[LAUNCHER_RUN_INPUT] = { isOptional: true, parameterType: 'STRING' };
  }
  components[EXIT_COMPONENT] = { executorLabel: EXIT_EXECUTOR, inputDefinitions: { parameters: exitInputs } };
  executorsOf(spec)[EXIT_EXECUTOR] = {
    container: {
      command: [
        GUARD_SHELL, '-c', GUARD, exit.launchPath, 'end-run', '--config', exit.config,
        ...(exitInputs[LAUNCHER_RUN_INPUT] === undefined ? [] : ['--run-id', `{{$.inputs.parameters['${LAUNCHER_RUN_INPUT}']}}`]),
        '--job-name', '{{$.pipeline_job_name}}', '--job-resource-name', '{{$.pipeline_job_resource_name}}',
        '--status', `{{$.inputs.parameters['${STATUS_INPUT}']}}`,
      ],
      image: exit.image,
    },
  };
  const moved = Object.keys(rootTasks);
  for (const name of moved) delete rootTasks[name];
  rootTasks[handler] = { componentRef: { name: `comp-${handler}` }, ...(Object.keys(handlerInputs).length > 0 ? { inputs: handlerInputs } : {}), taskInfo: { name: handler } };
  rootTasks[EXIT_TASK] = {
    // Never from a cache: a cached end would leave the run as it is.
    cachingOptions: { enableCache: false },
    componentRef: { name: EXIT_COMPONENT },
    dependentTasks: [handler],
    inputs: { parameters: exitParameters },
    taskInfo: { name: EXIT_TASK },
    triggerPolicy: { strategy: 'ALL_UPSTREAM_TASKS_COMPLETED' },
  };
  changes.push(`tasks ${moved.join(', ')}: moved unchanged into exit handler ${handler} (component comp-${handler}; root inputs passed as ${CHANNEL}<name>)`);
  changes.push(
    `exit task ${EXIT_TASK} added (image ${exit.image}): after every other task, whatever their outcome, \`${exit.launchPath} end-run\` records the pipeline's final state, the failed task and its error in the run and ends it`,
  );
}

/** A copy of a task with its references to root inputs made references to the sub-DAG's channel inputs. */
function toChannels(value: unknown, parameters: Set<string>, artifacts: Set<string>): unknown {
  if (Array.isArray(value)) return value.map((v) => toChannels(v, parameters, artifacts));
  if (!isObject(value)) return value;
  const out: Dict = {};
  for (const [key, v] of Object.entries(value)) {
    if (key === 'componentInputParameter' && typeof v === 'string') {
      parameters.add(v);
      out[key] = `${CHANNEL}${v}`;
    } else if (key === 'componentInputArtifact' && typeof v === 'string') {
      artifacts.add(v);
      out[key] = `${CHANNEL}${v}`;
    } else {
      out[key] = toChannels(v, parameters, artifacts);
    }
  }
  return out;
}

/**
 * Whether the spec's MLflow run is tied to the job from inside it (kvx's start-run step or exit task): then
 * `vertexai_run_id` is written there, with the value kedro-vertexai's hook writes ({{$.pipeline_job_uuid}}).
 */
export function isAdapted(spec: PipelineSpec): boolean {
  const tasks = isObject(spec.root['dag']) ? spec.root['dag']['tasks'] : undefined;
  if (isObject(tasks) && tasks[EXIT_TASK] !== undefined) return true;
  return Object.values(executorsOf(spec)).some((e) => {
    const container = isObject(e) && isObject(e['container']) ? e['container'] : undefined;
    const script = container === undefined ? undefined : shellScript(container);
    return script !== undefined && ALREADY_STARTED_BY_KVX.test(script) && /\bkvx-launch\b|\{\{\$\.pipeline_job_uuid\}\}/.test(script);
  });
}

/**
 * The spec as a file: JSON, or YAML that reads back the same with PyYAML (YAML 1.1: a string such as `yes` or
 * `0777` is quoted), as the KFP SDK and kedro-vertexai read it.
 */
export function specText(spec: PipelineSpec, json: boolean): string {
  if (json) return `${JSON.stringify(spec, null, 2)}\n`;
  const doc = new YAML.Document(spec, { version: '1.1' });
  // A plain `=` is YAML 1.1's value key, which PyYAML's SafeLoader refuses to construct; the yaml package writes it plain.
  YAML.visit(doc, {
    Scalar(_key, node) {
      if (node.value === '=') node.type = 'QUOTE_DOUBLE';
    },
  });
  return doc.toString({ lineWidth: 0 });
}
