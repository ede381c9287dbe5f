#!/usr/bin/env node
import './inspector-guard.js';
import './require-node.js';
import { writeFile } from 'node:fs/promises';
import os from 'node:os';
import type { LoadedConfig } from '../config/load.js';
import { kedroConfDir as confDirOf, refuseProxyBypass } from '../config/kedro-mlflow.js';
import { defaultUpstream, trackingTokenFromEnv } from '../config/mlflow-env.js';
import { ConfigError, KvxError } from '../errors.js';
import { describeDryRun, dryRunPipeline } from '../launch/dry-run.js';
import type { ExperimentResult } from '../launch/experiment-link.js';
import { followPipeline } from '../launch/follow.js';
import { progressFor } from '../launch/progress.js';
import { launchPipeline } from '../launch/run.js';
import type { RunInput } from '../launch/run.js';
import type { LaunchEnvironment } from '../launch/session.js';
import { createPipelineSchedule, deletePipelineSchedule, describeSchedules, listPipelineSchedules, scheduleDryRun } from '../launch/schedule.js';
import type { ScheduleInput } from '../launch/schedule.js';
import { startPipelineRun } from '../launch/start-run.js';
import { endPipelineRun } from '../launch/end-run.js';
import { adaptSpec, specText } from '../vertex/adapt.js';
import type { AdaptSettings } from '../vertex/adapt.js';
import { loadSpecFile } from '../vertex/spec.js';
import { applicationDefaultCredentials } from '../vertex/client.js';
import type { GoogleHeaderSource } from '../vertex/client.js';
import type { CommandFlags } from './flags.js';
import { loadConfigFromOptions } from './options.js';
import { EXIT, defaultIO, isMainModule, runCli } from './program.js';
import type { CliIO } from './program.js';

/** Seams for tests: Google credentials and an interrupt that stands in for SIGINT. */
export interface LaunchCliDeps {
  googleAuth?: GoogleHeaderSource;
  interrupt?: AbortSignal;
  now?: () => Date;
  /** First wait between looks for a job's pipeline run context when adding it to a Vertex AI experiment. */
  experimentLinkIntervalMs?: number;
}

/**
 * kvx-launch's entry point. Exit codes: 0 success (with --wait / follow: the job SUCCEEDED), 1 failure (the job
 * failed or was cancelled, or an API error), 2 bad configuration or usage, 130 interrupted.
 */
export async function main(argv: readonly string[], io: CliIO = defaultIO(), deps: LaunchCliDeps = {}): Promise<number> {
  return runCli(
    {
      name: 'kvx-launch',
      description: 'Submit Vertex AI pipeline jobs and tie each one to its MLflow run',
      groups: { schedule: 'create, list and delete Vertex AI schedules of a compiled pipeline' },
      commands: [
        {
          id: 'kvx-launch run',
          description: 'create the MLflow run, submit the compiled pipeline, tag the run (and with --wait, follow the job)',
          arguments: [{ name: '[spec]', help: 'compiled pipeline (KFP IR YAML/JSON from `kedro vertexai compile`), or a template URI https://<region>-kfp.pkg.dev/...' }],
          run: (flags, [spec]) => runCommand(flags, spec as string | undefined, io, deps),
        },
        {
          id: 'kvx-launch follow',
          description: 'follow a pipeline job and mirror its final state into its MLflow run',
          arguments: [{ name: '<job>', help: 'job id or projects/.../pipelineJobs/<id>' }],
          run: (flags, [job]) => followCommand(flags, job as string, io, deps),
        },
        {
          id: 'kvx-launch start-run',
          description: 'inside a pipeline step: resume MLFLOW_RUN_ID, or the run tagged with this job name, or create one',
          run: (flags) => startRunCommand(flags, io, deps),
        },
        {
          id: 'kvx-launch end-run',
          description: "inside a pipeline's exit task: end the job's MLflow run with the pipeline's final state, failed task and error",
          run: (flags) => endRunCommand(flags, io, deps),
        },
        {
          id: 'kvx-launch adapt',
          description: 'adapt a kedro-vertexai compiled spec for kvx (as run does) and write it, printing every change',
          arguments: [{ name: '<spec>', help: 'compiled pipeline from `kedro vertexai compile`' }],
          run: (flags, [spec]) => adaptCommand(flags, spec as string, io),
        },
        {
          id: 'kvx-launch schedule create',
          description: 'create a Vertex AI schedule that submits the pipeline on a cron; each job gets its MLflow run from its start-run step',
          arguments: [{ name: '[spec]', help: 'compiled pipeline (KFP IR YAML/JSON), or a template URI https://<region>-kfp.pkg.dev/...' }],
          run: (flags, [spec]) => scheduleCreateCommand(flags, spec as string | undefined, io, deps),
        },
        {
          id: 'kvx-launch schedule list',
          description: 'list the Vertex AI schedules of the project and region',
          run: (flags) => scheduleListCommand(flags, io, deps),
        },
        {
          id: 'kvx-launch schedule delete',
          description: 'delete a Vertex AI schedule, by id, resource name or display name',
          arguments: [{ name: '<schedule>', help: 'schedule id, projects/.../schedules/<id>, or a display name only one schedule has' }],
          run: (flags, [schedule]) => scheduleDeleteCommand(flags, schedule as string, io, deps),
        },
      ],
    },
    argv,
    io,
  );
}

/** The config, with the MLflow client's own variables as the last fallback (src/config/mlflow-env.ts). */
function loadLaunchConfig(flags: CommandFlags, io: CliIO, needMlflow: boolean): LoadedConfig {
  const loaded = loadConfigFromOptions(flags, io, { requireUpstream: false, checkProviders: false });
  defaultUpstream(loaded, io.env);
  if (needMlflow && loaded.config.upstream.url === '') {
    throw new ConfigError([
      {
        path: 'upstream.url',
        message:
          "required: the MLflow tracking server (or a kvx-proxy in front of it), e.g. https://mlflow.example.com; flag --tracking-uri, env KVX_UPSTREAM_URL or MLFLOW_TRACKING_URI, or an http(s) server.mlflow_tracking_uri in kedro-mlflow's mlflow.yml beside the vertexai.yml",
      },
    ]);
  }
  trackingTokenFromEnv(loaded.config, io.env);
  return loaded;
}

/**
 * Runs `use` with SIGINT/SIGTERM (or the test's interrupt) wired to the environment's signal: it cuts the REST call
 * or wait in progress short and stops following; what the launcher then does to leave its run in order runs
 * briefly. A second signal gets Node's default behaviour.
 */
async function withInterrupt<T>(io: CliIO, deps: LaunchCliDeps, use: (environment: LaunchEnvironment) => Promise<T>): Promise<T> {
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
  const environment: LaunchEnvironment = {
    env: io.env,
    logs: io.stderr,
    signal: controller.signal,
    googleAuth: (google) => deps.googleAuth ?? applicationDefaultCredentials(google),
    progress: (jobId) => progressFor(io.stderr, jobId),
    // One line each, whatever the message holds, so every warning can be read (and grepped) on its own.
    warn: (message) => io.stderr.write(`kvx-launch: warning: ${message.replace(/\s*\n\s*/g, ' ')}\n`),
    info: (message) => io.stderr.write(`kvx-launch: ${message}\n`),
    ...(deps.experimentLinkIntervalMs === undefined ? {} : { experimentLinkIntervalMs: deps.experimentLinkIntervalMs }),
  };
  try {
    return await use(environment);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    deps.interrupt?.removeEventListener('abort', onTest);
  }
}

/** The experiment link did not happen: said on stderr, since the exit code stays that of the launch itself. */
function experimentWarning(experiment: ExperimentResult | undefined, jobId: string): string {
  if (experiment === undefined || experiment.link === 'linked') return '';
  const retry = experiment.link === 'pending' ? `; \`kvx-launch follow ${jobId}\` adds it once the job runs` : '';
  return `kvx-launch: warning: job ${jobId} was not added to Vertex AI experiment ${experiment.name} (${experiment.link}): ${experiment.reason ?? 'no reason given'}${retry}\n`;
}

async function runCommand(flags: CommandFlags, specArg: string | undefined, io: CliIO, deps: LaunchCliDeps): Promise<number> {
  const templateFlag = flags.string('--template-uri');
  if (specArg !== undefined && templateFlag !== undefined) throw new KvxError('KVX_USAGE', 'give either a spec file or --template-uri, not both');
  const source = templateFlag ?? specArg;
  if (source === undefined) {
    throw new KvxError('KVX_USAGE', 'no pipeline given: pass the compiled spec (kvx-launch run pipeline.yaml) or --template-uri https://<region>-kfp.pkg.dev/...');
  }
  const isTemplate = /^https?:\/\//.test(source);
  if (templateFlag !== undefined && !isTemplate) throw new KvxError('KVX_USAGE', `--template-uri "${templateFlag}" is not an https:// URI`);
  const wait = flags.switch('--wait');
  if (flags.switch('--cancel-on-interrupt') && !wait) throw new KvxError('KVX_USAGE', '--cancel-on-interrupt needs --wait');
  const userId = safeUser();
  const input: RunInput = {
    ...flags.given({ jobId: '--job-id', displayName: '--display-name' }),
    ...(userId === undefined ? {} : { userId }),
    source,
    isTemplate,
    params: flags.pairs('--param'),
    labels: Object.fromEntries(flags.pairs('--label')),
    inputArtifacts: Object.fromEntries(flags.pairs('--artifact')),
    ...flags.given({ failurePolicy: '--failure-policy' }),
    now: (deps.now ?? (() => new Date()))(),
    wait,
    cancelOnInterrupt: flags.switch('--cancel-on-interrupt'),
    pollIntervalMs: flags.milliseconds('--poll-interval'),
    experimentLinkTimeoutMs: flags.milliseconds('--experiment-link-timeout'),
  };
  const loaded = loadLaunchConfig(flags, io, true);
  if (loaded.config.adapt.enabled) input.adapt = adaptSettings(loaded);
  const confDir = kedroConfDir(flags, io);
  if (confDir !== undefined) input.confDir = confDir;
  if (flags.switch('--dry-run')) {
    const report = await withInterrupt(io, deps, (environment) => dryRunPipeline(loaded, input, environment));
    io.stdout.write(flags.switch('--json') ? `${JSON.stringify(report)}\n` : describeDryRun(report));
    return EXIT.ok;
  }
  const result = await withInterrupt(io, deps, (environment) => launchPipeline(loaded, input, environment));
  io.stderr.write(experimentWarning(result.vertexExperiment, result.jobId));
  if (flags.switch('--json')) {
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
  if (result.interrupted) return EXIT.interrupted;
  if (!wait) return EXIT.ok;
  return result.state === 'SUCCEEDED' ? EXIT.ok : EXIT.failed;
}

async function followCommand(flags: CommandFlags, job: string, io: CliIO, deps: LaunchCliDeps): Promise<number> {
  const input = {
    job,
    ...flags.given({ runId: '--run-id' }),
    cancelOnInterrupt: flags.switch('--cancel-on-interrupt'),
    pollIntervalMs: flags.milliseconds('--poll-interval'),
    experimentLinkTimeoutMs: flags.milliseconds('--experiment-link-timeout'),
  };
  const loaded = loadLaunchConfig(flags, io, input.runId !== undefined);
  const { report, terminal } = await withInterrupt(io, deps, (environment) => followPipeline(loaded, input, environment));
  io.stderr.write(experimentWarning(report.vertexExperiment, report.jobId));
  const stillRunning = report.interrupted && !terminal;
  if (flags.switch('--json')) io.stdout.write(`${JSON.stringify(report)}\n`);
  else io.stdout.write(`job ${report.jobId} ${report.state}${report.runStatus ? `; MLflow run ${report.runId} ${report.runStatus}` : ''}${stillRunning ? ' (still running; not mirrored)' : ''}\n`);
  if (stillRunning) return EXIT.interrupted;
  return report.state === 'SUCCEEDED' ? EXIT.ok : EXIT.failed;
}

async function startRunCommand(flags: CommandFlags, io: CliIO, deps: LaunchCliDeps): Promise<number> {
  const confDir = kedroConfDir(flags, io);
  const input = { ...flags.given({ jobName: '--job-name', jobId: '--job-id', output: '--output', runId: '--run-id' }), ...(confDir === undefined ? {} : { confDir }) };
  const loaded = loadLaunchConfig(flags, io, true);
  const result = await withInterrupt(io, deps, (environment) => startPipelineRun(loaded, input, environment));
  if (flags.switch('--json')) io.stdout.write(`${JSON.stringify(result)}\n`);
  else io.stdout.write(`${result.runId}\n`);
  io.stderr.write(`kvx-launch: MLflow run ${result.runId} ${result.how} in experiment ${result.experimentId}\n`);
  return EXIT.ok;
}

async function scheduleCreateCommand(flags: CommandFlags, specArg: string | undefined, io: CliIO, deps: LaunchCliDeps): Promise<number> {
  const templateFlag = flags.string('--template-uri');
  if (specArg !== undefined && templateFlag !== undefined) throw new KvxError('KVX_USAGE', 'give either a spec file or --template-uri, not both');
  const source = templateFlag ?? specArg;
  if (source === undefined) throw new KvxError('KVX_USAGE', 'no pipeline given: pass the compiled spec (kvx-launch schedule create pipeline.yaml --cron "0 6 * * *")');
  const cron = flags.string('--cron');
  if (cron === undefined) throw new KvxError('KVX_USAGE', 'schedule create needs --cron, e.g. --cron "0 6 * * 1" (06:00 UTC every Monday; --timezone for another zone)');
  const input: ScheduleInput = {
    source,
    isTemplate: /^https?:\/\//.test(source),
    params: flags.pairs('--param'),
    labels: Object.fromEntries(flags.pairs('--label')),
    inputArtifacts: Object.fromEntries(flags.pairs('--artifact')),
    ...flags.given({ failurePolicy: '--failure-policy', displayName: '--display-name' }),
    now: (deps.now ?? (() => new Date()))(),
    timing: {
      cron,
      maxConcurrentRuns: flags.string('--max-concurrent-runs') ?? '1',
      allowQueueing: flags.switch('--allow-queueing'),
      ...flags.given({ timezone: '--timezone', maxRuns: '--max-runs', startTime: '--start-time', endTime: '--end-time' }),
    },
  };
  const loaded = loadLaunchConfig(flags, io, false);
  // Adapted as run adapts it, so each scheduled job gets its run from the start step and ends it in the exit task.
  if (loaded.config.adapt.enabled) input.adapt = adaptSettings(loaded);
  const confDir = kedroConfDir(flags, io);
  if (confDir !== undefined) input.confDir = confDir;
  if (flags.switch('--dry-run')) {
    const request = await withInterrupt(io, deps, (environment) => scheduleDryRun(loaded, input, environment));
    io.stdout.write(flags.switch('--json') ? `${JSON.stringify(request)}\n` : `POST ${request.url}\n${JSON.stringify(request.body, null, 2)}\n`);
    return EXIT.ok;
  }
  const { schedule, warnings } = await withInterrupt(io, deps, (environment) => createPipelineSchedule(loaded, input, environment));
  for (const w of warnings) io.stderr.write(`kvx-launch: warning: ${w}\n`);
  if (flags.switch('--json')) io.stdout.write(`${JSON.stringify(schedule)}\n`);
  else {
    io.stdout.write(
      `created schedule ${schedule.name.split('/').pop()}\n` +
        `  schedule:   ${schedule.name}\n` +
        `  name:       ${schedule.displayName ?? ''}\n` +
        `  cron:       ${schedule.cron ?? ''}\n` +
        `  state:      ${schedule.state ?? ''}\n` +
        (schedule.nextRunTime ? `  next run:   ${schedule.nextRunTime}\n` : ''),
    );
  }
  return EXIT.ok;
}

async function scheduleListCommand(flags: CommandFlags, io: CliIO, deps: LaunchCliDeps): Promise<number> {
  const loaded = loadLaunchConfig(flags, io, false);
  const schedules = await withInterrupt(io, deps, (environment) => listPipelineSchedules(loaded, environment));
  io.stdout.write(flags.switch('--json') ? `${JSON.stringify(schedules)}\n` : describeSchedules(schedules));
  return EXIT.ok;
}

async function scheduleDeleteCommand(flags: CommandFlags, which: string, io: CliIO, deps: LaunchCliDeps): Promise<number> {
  if (which.trim() === '') throw new KvxError('KVX_USAGE', 'name the schedule to delete: its id, resource name or display name');
  const loaded = loadLaunchConfig(flags, io, false);
  const deleted = await withInterrupt(io, deps, (environment) => deletePipelineSchedule(loaded, which, environment));
  if (flags.switch('--json')) io.stdout.write(`${JSON.stringify({ deleted: deleted.name, displayName: deleted.displayName })}\n`);
  else io.stdout.write(`deleted schedule ${deleted.name} (${deleted.displayName ?? ''})\n`);
  return EXIT.ok;
}

async function endRunCommand(flags: CommandFlags, io: CliIO, deps: LaunchCliDeps): Promise<number> {
  const status = flags.string('--status');
  if (status === undefined) throw new KvxError('KVX_USAGE', "--status is required: the exit task's TASK_FINAL_STATUS input, {{$.inputs.parameters['status']}}");
  const confDir = kedroConfDir(flags, io);
  const input = { status, ...flags.given({ runId: '--run-id', jobName: '--job-name', jobResourceName: '--job-resource-name' }), ...(confDir === undefined ? {} : { confDir }) };
  const loaded = loadLaunchConfig(flags, io, true);
  const result = await withInterrupt(io, deps, (environment) => endPipelineRun(loaded, input, environment));
  if (flags.switch('--json')) io.stdout.write(`${JSON.stringify(result)}\n`);
  else io.stdout.write(`pipeline ${result.state}; MLflow run ${result.runId} ${result.runStatus}${result.kept ? ' (already ended with it; kept)' : ''}\n`);
  return EXIT.ok;
}

async function adaptCommand(flags: CommandFlags, source: string, io: CliIO): Promise<number> {
  const loaded = loadConfigFromOptions(flags, io, { requireUpstream: false, checkProviders: false });
  const spec = await loadSpecFile(source);
  for (const warning of spec.warnings) io.stderr.write(`kvx-launch: warning: ${warning}\n`);
  const result = adaptSpec(spec.spec, adaptSettings(loaded));
  if (!result.recognised) {
    throw new KvxError('KVX_LAUNCH_INPUT', `${source} is not a kedro-vertexai pipeline: no container step runs \`kedro run\` or \`kedro vertexai mlflow-start\` through a shell; nothing to adapt`, {
      hint: 'kvx-launch run submits any other KFP pipeline as it is',
    });
  }
  for (const warning of result.warnings) io.stderr.write(`kvx-launch: warning: ${source}: ${warning}\n`);
  refuseProxyBypass(kedroConfDir(flags, io), result.envs, (message) => io.stderr.write(`kvx-launch: warning: ${message}\n`));
  printAdaptation(io, source, result.changes);
  const output = flags.string('--output');
  if (flags.switch('--json') && (output === undefined || output === '-')) throw new KvxError('KVX_USAGE', '--json prints the changes on stdout, where the spec goes without -o: give -o FILE');
  const text = specText(result.spec, output?.endsWith('.json') === true);
  if (output === undefined || output === '-') io.stdout.write(text);
  else await writeFile(output, text);
  if (flags.switch('--json')) io.stdout.write(`${JSON.stringify({ output, changes: result.changes, warnings: result.warnings })}\n`);
  return EXIT.ok;
}

function printAdaptation(io: CliIO, source: string, changes: readonly string[]): void {
  // The same lines as run prints (src/launch/run.ts preparePlan).
  if (changes.length === 0) io.stderr.write(`kvx-launch: ${source}: adapted already; nothing changed\n`);
  for (const change of changes) io.stderr.write(`kvx-launch: adapted: ${change}\n`);
}

function adaptSettings(loaded: LoadedConfig): AdaptSettings {
  const { proxyPath, launchPath, stepConfig } = loaded.config.adapt;
  return { proxyPath, launchPath, stepConfig };
}

/** The folder of the vertexai.yml given (conf/<env>), as config loading finds it (src/config/kedro-mlflow.ts). */
function kedroConfDir(flags: CommandFlags, io: CliIO): string | undefined {
  return confDirOf(flags.list('--config') ?? (io.env['KVX_CONFIG'] ? [io.env['KVX_CONFIG']] : []));
}

function safeUser(): string | undefined {
  try {
    return os.userInfo().username;
  } catch {
    return undefined;
  }
}

if (isMainModule(import.meta.url)) void main(process.argv.slice(2));
