#!/usr/bin/env node
import './inspector-guard.js';
import './require-node.js';
import os from 'node:os';
import { Command, Option } from 'commander';
import '../auth/index.js';
import { CredentialsLookup } from '../auth/google/discovery.js';
import { HeaderInjector } from '../auth/injector.js';
import { planProviders } from '../auth/registry.js';
import { loadConfig } from '../config/load.js';
import type { ConfigOverride, LoadedConfig } from '../config/load.js';
import { AUTH_PROVIDER_TYPES } from '../config/schema.js';
import { upstreamUrlProblem } from '../config/validate.js';
import { ConfigError, KvxError } from '../errors.js';
import { Logger } from '../log/logger.js';
import type { LogLevel } from '../log/logger.js';
import { endRunByLauncher, followJob, mirrorFinalState } from '../launch/follow.js';
import { LineProgress, TtyProgress, silentProgress } from '../launch/progress.js';
import type { Progress } from '../launch/progress.js';
import { finishExperimentLink, launch, planLaunch } from '../launch/run.js';
import type { ExperimentResult } from '../launch/run.js';
import { startRun } from '../launch/start-run.js';
import { RUN_ID_LABEL, TAG } from '../launch/tags.js';
import { MlflowClient, mlflowDispatcher, retryPolicyFromEnv } from '../mlflow/client.js';
import type { MlflowRun } from '../mlflow/client.js';
import { VERSION } from '../version.js';
import { VertexClient, applicationDefaultCredentials } from '../vertex/client.js';
import type { GoogleHeaderSource } from '../vertex/client.js';
import { parseParamFlags } from '../vertex/params.js';
import { loadSpecFile, parseSpec } from '../vertex/spec.js';
import type { LoadedSpec } from '../vertex/spec.js';
import { collect, defaultIO, isMainModule, runProgram } from './options.js';
import type { CliIO } from './options.js';

/** Seams for tests: Google credentials and an interrupt that stands in for SIGINT. */
export interface LaunchCliDeps {
  googleAuth?: GoogleHeaderSource;
  interrupt?: AbortSignal;
  now?: () => Date;
  /** First wait between looks for a job's pipeline run context when adding it to a Vertex AI experiment. */
  experimentLinkIntervalMs?: number;
}

/** Exit code when following was interrupted (128 + SIGINT). */
export const EXIT_INTERRUPTED = 130;


/**
 * kvx-launch's entry point. Exit codes: 0 success (with --wait / follow: the job SUCCEEDED), 1 failure (the job
 * failed or was cancelled, or an API error), 2 bad configuration or usage, 130 interrupted.
 */
export async function main(argv: readonly string[], io: CliIO = defaultIO(), deps: LaunchCliDeps = {}): Promise<number> {
  let code = 0;
  const program = new Command('kvx-launch')
    .description('Submit Vertex AI pipeline jobs and tie each one to its MLflow run')
    .version(VERSION, '-V, --version')
    .showHelpAfterError('(run kvx-launch --help for usage)')
    .exitOverride()
    .configureOutput({ writeOut: (s) => io.stdout.write(s), writeErr: (s) => io.stderr.write(s) });

  addCommonOptions(
    program
      .command('run')
      .description('create the MLflow run, submit the compiled pipeline, tag the run (and with --wait, follow the job)')
      .argument('[spec]', 'compiled pipeline (KFP IR YAML/JSON from `kedro vertexai compile`), or a template URI https://<region>-kfp.pkg.dev/...')
      .option('--template-uri <uri>', 'submit a pipeline template from Artifact Registry instead of a local spec')
      .option('-p, --param <name=value>', 'pipeline parameter, converted to its declared type; repeatable', collect)
      .option('--experiment-name <name>', 'MLflow experiment and job id prefix (vertex.experimentName)')
      .option('--job-id <id>', 'pipeline job id; default <experiment_name>-<UTC yyyymmddHHMMSS>')
      .option('--display-name <name>', 'job display name; default the job id')
      .option('--root <bucket/path>', 'pipeline root, without gs:// (vertex.root)')
      .option('--service-account <email>', 'service account the pipeline runs as (vertex.serviceAccount)')
      .option('--network <vpc>', 'VPC name or projects/<number>/global/networks/<vpc> (vertex.network)')
      .option('--project-number <number>', 'project number, for a bare --network name (vertex.projectNumber)')
      .option('-l, --label <key=value>', 'job label; repeatable (vertex.labels)', collect)
      .option('--enable-caching', 'let Vertex reuse cached task results (vertex.enableCaching)')
      .option('--experiment <name>', 'Vertex AI experiment to add the job to, created if missing; "" for none (vertex.experiment)')
      .option('--experiment-link-timeout <seconds>', 'how long to wait for the job to start so it can join the experiment', '300')
      .option('-w, --wait', 'follow the job until it ends and mirror its final state into the run')
      .option('--cancel-on-interrupt', 'with --wait: cancel the job when interrupted')
      .option('--poll-interval <seconds>', 'first poll interval while following', '5')
      .option('--json', 'print the result as JSON'),
  ).action(async (specArg: string | undefined, opts: Record<string, unknown>) => {
    code = await runCommand(specArg, opts, io, deps);
  });

  addCommonOptions(
    program
      .command('follow')
      .description('follow a pipeline job and mirror its final state into its MLflow run')
      .argument('<job>', 'job id or projects/.../pipelineJobs/<id>')
      .option('--run-id <id>', `MLflow run to mirror into; default the job's ${RUN_ID_LABEL} label`)
      .option('--cancel-on-interrupt', 'cancel the job when interrupted')
      .option('--poll-interval <seconds>', 'first poll interval', '5')
      .option('--experiment-link-timeout <seconds>', 'how long to wait for the job to start when its run still has to join its Vertex AI experiment', '300')
      .option('--json', 'print the result as JSON'),
  ).action(async (job: string, opts: Record<string, unknown>) => {
    code = await followCommand(job, opts, io, deps);
  });

  addCommonOptions(
    program
      .command('start-run')
      .description('inside a pipeline step: resume MLFLOW_RUN_ID, or the run tagged with this job name, or create one')
      .option('--experiment-name <name>', 'experiment to create the run in (vertex.experimentName)')
      .option('--job-name <name>', 'job id, e.g. {{$.pipeline_job_name}}; tagged vertexai_job_name and used to find the run on retries')
      .option('--job-id <id>', 'job resource name, e.g. {{$.pipeline_job_resource_name}}; tagged vertexai_run_id')
      .option('-o, --output <file>', 'write the run id to this file (a KFP output path)')
      .option('--json', 'print the result as JSON'),
  ).action(async (opts: Record<string, unknown>) => {
    code = await startRunCommand(opts, io, deps);
  });

  return runProgram(program, argv, io, 'kvx-launch', () => code);
}

function addCommonOptions(command: Command): Command {
  return command
    .option('-c, --config <file>', 'vertexai.yml or kvx config; repeat to layer; env KVX_CONFIG', collect)
    .option('--project <id>', 'Google Cloud project (vertex.projectId)')
    .option('--region <region>', 'Vertex AI region (vertex.region)')
    .option('--vertex-endpoint <url>', 'Vertex AI API base URL (vertex.endpoint)')
    .option('--tracking-uri <url>', 'MLflow server or a kvx-proxy in front of it (upstream.url); env MLFLOW_TRACKING_URI')
    .addOption(new Option('--auth-provider <type>', 'MLflow header provider (auth.provider)').choices(AUTH_PROVIDER_TYPES))
    .option('--client-id <id>', 'IAP OAuth client id for MLflow tokens (auth.params.client_id)')
    .option('--auth-param <key=value>', 'MLflow header provider param (auth.params.<key>); repeatable', collect)
    .addOption(new Option('--log-level <level>', 'log level for the JSON logs on stderr (log.level)').choices(['debug', 'info', 'warn', 'error', 'silent']))
    .option('--debug', 'print stack traces for errors');
}

const FLAG_KEYS: Record<string, { key: string; flag: string }> = {
  project: { key: 'vertex.projectId', flag: '--project' },
  region: { key: 'vertex.region', flag: '--region' },
  vertexEndpoint: { key: 'vertex.endpoint', flag: '--vertex-endpoint' },
  trackingUri: { key: 'upstream.url', flag: '--tracking-uri' },
  authProvider: { key: 'auth.provider', flag: '--auth-provider' },
  clientId: { key: 'auth.params.client_id', flag: '--client-id' },
  logLevel: { key: 'log.level', flag: '--log-level' },
  experimentName: { key: 'vertex.experimentName', flag: '--experiment-name' },
  root: { key: 'vertex.root', flag: '--root' },
  serviceAccount: { key: 'vertex.serviceAccount', flag: '--service-account' },
  network: { key: 'vertex.network', flag: '--network' },
  projectNumber: { key: 'vertex.projectNumber', flag: '--project-number' },
  enableCaching: { key: 'vertex.enableCaching', flag: '--enable-caching' },
  experiment: { key: 'vertex.experiment', flag: '--experiment' },
};

function loadLaunchConfig(opts: Record<string, unknown>, io: CliIO, needMlflow: boolean): LoadedConfig {
  const overrides: ConfigOverride[] = [];
  for (const [name, { key, flag }] of Object.entries(FLAG_KEYS)) {
    if (opts[name] !== undefined) overrides.push({ path: key, value: opts[name], source: flag });
  }
  for (const pair of (opts['authParam'] as string[] | undefined) ?? []) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new ConfigError([{ path: `--auth-param ${pair}`, message: 'must be key=value, e.g. --auth-param client_id=1234.apps.googleusercontent.com' }]);
    overrides.push({ path: `auth.params.${pair.slice(0, eq)}`, value: pair.slice(eq + 1), source: `--auth-param ${pair.slice(0, eq)}` });
  }
  const files = (opts['config'] as string[] | undefined) ?? (io.env['KVX_CONFIG'] ? [io.env['KVX_CONFIG']] : []);
  const loaded = loadConfig({ files, env: io.env, overrides, require: { upstream: false } });
  const { config } = loaded;
  // The MLflow client's own variables work too, so a shell set up for `mlflow` is set up for kvx-launch.
  if (config.upstream.url === '' && io.env['MLFLOW_TRACKING_URI']) {
    const uri = io.env['MLFLOW_TRACKING_URI'];
    const problem = upstreamUrlProblem(uri);
    if (problem) throw new ConfigError([{ path: 'MLFLOW_TRACKING_URI', message: problem }]);
    config.upstream.url = uri;
    loaded.sources.set('upstream.url', 'env:MLFLOW_TRACKING_URI');
  }
  if (needMlflow && config.upstream.url === '') {
    throw new ConfigError([{ path: 'upstream.url', message: 'required: the MLflow tracking server (or a kvx-proxy in front of it), e.g. https://mlflow.example.com; flag --tracking-uri, env KVX_UPSTREAM_URL or MLFLOW_TRACKING_URI' }]);
  }
  const auth = config.auth;
  const noAuthChosen = auth.provider === 'auto' && auth.providers.length === 0 && !auth.params['client_id'] && !auth.module;
  if (noAuthChosen && io.env['MLFLOW_TRACKING_TOKEN']) {
    auth.provider = 'static';
    auth.params = { ...auth.params, token_env: 'MLFLOW_TRACKING_TOKEN' };
  }
  return loaded;
}

interface Clients {
  mlflow?: MlflowClient;
  injector?: HeaderInjector;
  /** The one Google look-up of the run: the MLflow provider's source credentials and the Vertex AI calls'. */
  google: CredentialsLookup;
  logger: Logger;
  close(): Promise<void>;
}

async function mlflowClient(loaded: LoadedConfig, io: CliIO, interrupt: AbortSignal): Promise<Clients> {
  const level: LogLevel = loaded.sources.has('log.level') ? loaded.config.log.level : 'warn';
  const logger = new Logger(level, io.stderr, { program: 'kvx-launch' });
  const { auth } = loaded.config;
  const google = new CredentialsLookup('kvx-launch', { env: io.env, endpoints: auth.endpoints, logger, fetchTimeoutMs: auth.tokenFetchTimeoutMs });
  if (loaded.config.upstream.url === '') return { google, logger, close: async () => google.close() };
  const { plans, problems } = planProviders(loaded.config, io.env);
  if (problems.length > 0) throw new ConfigError(problems);
  const injector = await HeaderInjector.create(plans, { config: loaded.config, logger, baseDir: loaded.baseDir, env: io.env, googleCredentials: google });
  const dispatcher = mlflowDispatcher(loaded.config);
  const { retry, timeoutMs } = retryPolicyFromEnv(io.env);
  const mlflow = new MlflowClient({ trackingUri: loaded.config.upstream.url, headers: injector, logger, retry, timeoutMs, dispatcher, interrupt });
  return {
    mlflow,
    injector,
    google,
    logger,
    close: async () => {
      await injector.close();
      google.close();
      await dispatcher.close();
    },
  };
}

function vertexClient(loaded: LoadedConfig, clients: Clients, deps: LaunchCliDeps, interrupt: AbortSignal): VertexClient {
  const v = loaded.config.vertex;
  const problems = [];
  if (!v.projectId) problems.push({ path: 'vertex.projectId', message: 'required: set project_id in vertexai.yml, vertex.projectId, or --project' });
  if (!v.region) problems.push({ path: 'vertex.region', message: 'required: set region in vertexai.yml, vertex.region, or --region' });
  if (problems.length > 0) throw new ConfigError(problems);
  const auth = deps.googleAuth ?? applicationDefaultCredentials(clients.google);
  return new VertexClient({ projectId: v.projectId, region: v.region, endpoint: v.endpoint, auth, logger: clients.logger, interrupt });
}

function progressFor(io: CliIO, jobId: string): Progress {
  const out = io.stderr as NodeJS.WritableStream & { isTTY?: boolean };
  return out.isTTY ? new TtyProgress(out, jobId) : new LineProgress(out, jobId);
}

/**
 * SIGINT/SIGTERM (or the test's interrupt) cut the REST call or wait in progress short and stop following; what
 * the launcher then does to leave its run in order runs briefly. A second signal gets Node's default behaviour.
 */
function interruptSignal(deps: LaunchCliDeps): { signal: AbortSignal; dispose(): void } {
  const controller = new AbortController();
  const onSignal = (sig: NodeJS.Signals) => {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    controller.abort(new KvxError('KVX_INTERRUPTED', `interrupted by ${sig}`));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const onTest = () => controller.abort(new KvxError('KVX_INTERRUPTED', 'interrupted'));
  deps.interrupt?.addEventListener('abort', onTest, { once: true });
  if (deps.interrupt?.aborted) onTest();
  return {
    signal: controller.signal,
    dispose: () => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      deps.interrupt?.removeEventListener('abort', onTest);
    },
  };
}

function pollMs(opts: Record<string, unknown>): number {
  return secondsFlag(opts, 'pollInterval', '--poll-interval', '5');
}

function secondsFlag(opts: Record<string, unknown>, name: string, flag: string, fallback: string): number {
  const raw = String(opts[name] ?? fallback);
  const n = Number(raw);
  if (!Number.isFinite(n) || n <= 0) throw new KvxError('KVX_USAGE', `${flag} must be a positive number of seconds, got "${raw}"`);
  return n * 1000;
}

/** The experiment link did not happen: said on stderr, since the exit code stays that of the launch itself. */
function experimentWarning(experiment: ExperimentResult | undefined, jobId: string): string {
  if (experiment === undefined || experiment.link === 'linked') return '';
  const retry = experiment.link === 'pending' ? `; \`kvx-launch follow ${jobId}\` adds it once the job runs` : '';
  return `kvx-launch: warning: job ${jobId} was not added to Vertex AI experiment ${experiment.name} (${experiment.link}): ${experiment.reason ?? 'no reason given'}${retry}\n`;
}

function keyValues(pairs: readonly string[], flag: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const pair of pairs) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new KvxError('KVX_LAUNCH_INPUT', `${flag} "${pair}" is malformed: write ${flag} key=value`);
    out[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return out;
}

async function runCommand(specArg: string | undefined, opts: Record<string, unknown>, io: CliIO, deps: LaunchCliDeps): Promise<number> {
  const templateFlag = opts['templateUri'] as string | undefined;
  if (specArg !== undefined && templateFlag !== undefined) throw new KvxError('KVX_USAGE', 'give either a spec file or --template-uri, not both');
  const source = templateFlag ?? specArg;
  if (source === undefined) {
    throw new KvxError('KVX_USAGE', 'no pipeline given: pass the compiled spec (kvx-launch run pipeline.yaml) or --template-uri https://<region>-kfp.pkg.dev/...');
  }
  const isTemplate = /^https?:\/\//.test(source);
  if (templateFlag !== undefined && !isTemplate) throw new KvxError('KVX_USAGE', `--template-uri "${templateFlag}" is not an https:// URI`);
  if (opts['cancelOnInterrupt'] && !opts['wait']) throw new KvxError('KVX_USAGE', '--cancel-on-interrupt needs --wait');
  const params = parseParamFlags((opts['param'] as string[] | undefined) ?? []);
  const labels = keyValues((opts['label'] as string[] | undefined) ?? [], '--label');
  const pollIntervalMs = pollMs(opts);
  const experimentLinkTimeoutMs = secondsFlag(opts, 'experimentLinkTimeout', '--experiment-link-timeout', '300');

  const loaded = loadLaunchConfig(opts, io, true);
  const { signal, dispose } = interruptSignal(deps);
  let clients: Clients | undefined;
  try {
    clients = await mlflowClient(loaded, io, signal);
    const vertex = vertexClient(loaded, clients, deps, signal);
    let spec: LoadedSpec;
    if (isTemplate) {
      const text = await vertex.fetchTemplate(source).catch((err: unknown) => {
        throw new KvxError('KVX_LAUNCH_INPUT', `cannot download pipeline template ${source}: ${err instanceof Error ? err.message : String(err)}`, {
          hint: 'check the URI (https://<region>-kfp.pkg.dev/<project>/<repo>/<package>/<tag or sha256:...>) and that you can read the repository (Artifact Registry Reader)',
        });
      });
      spec = parseSpec(text, source);
    } else {
      spec = await loadSpecFile(source);
    }
    const flags: Parameters<typeof planLaunch>[2] = { params, labels, now: (deps.now ?? (() => new Date()))(), userId: safeUser() };
    if (opts['jobId'] !== undefined) flags.jobId = String(opts['jobId']);
    if (opts['displayName'] !== undefined) flags.displayName = String(opts['displayName']);
    if (isTemplate) flags.templateUri = source;
    const plan = planLaunch(loaded.config, spec, flags);

    await clients.injector!.start();
    const wait = opts['wait'] === true;
    // Progress goes to stderr, so --json output on stdout stays clean.
    const progress = wait ? progressFor(io, plan.jobId) : silentProgress;
    const result = await launch(
      { mlflow: clients.mlflow!, vertex, logger: clients.logger, progress },
      plan,
      { wait, cancelOnInterrupt: opts['cancelOnInterrupt'] === true, signal, pollIntervalMs, experimentLinkTimeoutMs, ...(deps.experimentLinkIntervalMs === undefined ? {} : { experimentLinkIntervalMs: deps.experimentLinkIntervalMs }) },
    );
    io.stderr.write(experimentWarning(result.vertexExperiment, result.jobId));
    if (opts['json']) {
      io.stdout.write(`${JSON.stringify(result)}\n`);
    } else {
      io.stdout.write(
        `submitted pipeline job ${result.jobId}\n` +
          `  job:        ${result.jobName}\n` +
          `  console:    ${result.consoleUrl}\n` +
          `  MLflow run: ${result.runId}\n` +
          `  run page:   ${result.runUrl}\n` +
          (result.vertexExperiment !== undefined ? `  experiment: ${result.vertexExperiment.name} (${result.vertexExperiment.link}) ${result.vertexExperiment.consoleUrl}\n` : '') +
          (result.state !== undefined ? `  job state:  ${result.state}${result.runStatus ? ` (MLflow run ${result.runStatus})` : ''}\n` : ''),
      );
    }
    if (result.interrupted) return EXIT_INTERRUPTED;
    if (!wait) return 0;
    return result.state === 'SUCCEEDED' ? 0 : 1;
  } finally {
    dispose();
    await clients?.close();
  }
}

async function followCommand(job: string, opts: Record<string, unknown>, io: CliIO, deps: LaunchCliDeps): Promise<number> {
  const pollIntervalMs = pollMs(opts);
  const experimentLinkTimeoutMs = secondsFlag(opts, 'experimentLinkTimeout', '--experiment-link-timeout', '300');
  const loaded = loadLaunchConfig(opts, io, opts['runId'] !== undefined);
  const { signal, dispose } = interruptSignal(deps);
  let clients: Clients | undefined;
  try {
    clients = await mlflowClient(loaded, io, signal);
    const { logger } = clients;
    const vertex = vertexClient(loaded, clients, deps, signal);
    const first = await vertex.getPipelineJob(job);
    const runId = (opts['runId'] as string | undefined) ?? first.labels?.[RUN_ID_LABEL];
    const mlflow = runId === undefined ? undefined : clients.mlflow;
    if (runId !== undefined && mlflow === undefined) {
      throw new ConfigError([{ path: 'upstream.url', message: `job carries MLflow run ${runId}; set the tracking server to mirror its state (--tracking-uri, MLFLOW_TRACKING_URI)` }]);
    }
    let run: MlflowRun | undefined;
    if (mlflow !== undefined) {
      await clients.injector!.start();
      run = await mlflow.getRun(runId!);
    }
    const jobId = first.name.split('/').pop()!;
    // A job that had not started when it was launched joins its Vertex AI experiment now, while it is followed.
    const followEnded = new AbortController();
    const linking =
      run === undefined
        ? undefined
        : finishExperimentLink({ mlflow: mlflow!, vertex, logger: clients.logger }, run, first.name, loaded.config.vertex, {
            timeoutMs: experimentLinkTimeoutMs,
            signal,
            wake: followEnded.signal,
            ...(deps.experimentLinkIntervalMs === undefined ? {} : { intervalMs: deps.experimentLinkIntervalMs }),
          }).catch((err: unknown) => {
            logger.warn('could not record the Vertex AI experiment link on the run', { runId, error: err instanceof Error ? err.message : String(err) });
            return undefined;
          });
    const progress = progressFor(io, jobId);
    if (runId === undefined) progress.note(`job ${jobId} has no ${RUN_ID_LABEL} label and no --run-id was given: following without MLflow`);
    let followed;
    try {
      followed = await followJob({ vertex, job: first.name, progress, logger: clients.logger, signal, cancelOnInterrupt: opts['cancelOnInterrupt'] === true, pollIntervalMs });
    } catch (err) {
      followEnded.abort();
      await linking;
      if (mlflow !== undefined) {
        const reason = `kvx-launch follow lost track of job ${jobId}: ${err instanceof Error ? err.message : String(err)}. The job was not cancelled; run \`kvx-launch follow ${jobId}\` again to mirror its final state.`;
        await endRunByLauncher(mlflow, runId!, 'FAILED', reason, [], clients.logger);
      }
      throw err;
    }
    followEnded.abort();
    const experiment = await linking;
    progress.done();
    io.stderr.write(experimentWarning(experiment, jobId));
    let runStatus: string | undefined;
    if (followed.terminal && mlflow !== undefined) {
      runStatus = await mirrorFinalState(mlflow, runId!, followed.job);
    } else if (followed.interrupted && mlflow !== undefined) {
      // On purpose: the job still runs, so its run stays RUNNING; following again later finishes the mirror.
      await mlflow.uninterrupted().setTags(runId!, [{ key: TAG.jobState, value: followed.state }]);
    }
    const result = {
      jobId,
      jobName: followed.job.name,
      state: followed.state,
      runId: runId ?? null,
      runStatus: runStatus ?? null,
      interrupted: followed.interrupted,
      ...(experiment === undefined ? {} : { vertexExperiment: experiment }),
    };
    if (opts['json']) io.stdout.write(`${JSON.stringify(result)}\n`);
    else io.stdout.write(`job ${jobId} ${followed.state}${runStatus ? `; MLflow run ${runId} ${runStatus}` : ''}${followed.interrupted && !followed.terminal ? ' (still running; not mirrored)' : ''}\n`);
    if (followed.interrupted && !followed.terminal) return EXIT_INTERRUPTED;
    return followed.state === 'SUCCEEDED' ? 0 : 1;
  } finally {
    dispose();
    await clients?.close();
  }
}

async function startRunCommand(opts: Record<string, unknown>, io: CliIO, deps: LaunchCliDeps): Promise<number> {
  const loaded = loadLaunchConfig(opts, io, true);
  const { signal, dispose } = interruptSignal(deps);
  let clients: Clients | undefined;
  try {
    clients = await mlflowClient(loaded, io, signal);
    await clients.injector!.start();
    const input: Parameters<typeof startRun>[1] = { experimentName: loaded.config.vertex.experimentName };
    if (io.env['MLFLOW_RUN_ID']) input.resumeRunId = io.env['MLFLOW_RUN_ID'];
    if (opts['jobName'] !== undefined) input.jobName = String(opts['jobName']);
    if (opts['jobId'] !== undefined) input.jobId = String(opts['jobId']);
    if (opts['output'] !== undefined) input.output = String(opts['output']);
    const result = await startRun(clients.mlflow!, input, clients.logger);
    if (opts['json']) io.stdout.write(`${JSON.stringify(result)}\n`);
    else io.stdout.write(`${result.runId}\n`);
    io.stderr.write(`kvx-launch: MLflow run ${result.runId} ${result.how} in experiment ${result.experimentId}\n`);
    return 0;
  } finally {
    dispose();
    await clients?.close();
  }
}

function safeUser(): string | undefined {
  try {
    return os.userInfo().username;
  } catch {
    return undefined;
  }
}

if (isMainModule(import.meta.url)) void main(process.argv.slice(2));
