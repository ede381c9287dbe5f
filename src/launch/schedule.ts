/**
 * `kvx-launch schedule create|list|delete`: Vertex AI schedules (projects.locations.schedules) of a compiled
 * pipeline. The job a schedule creates is the request `run` would submit (same plan, same buildCreateRequest), less
 * what belongs to one run: no job id (Vertex names each scheduled job) and no MLflow run, since no launcher is there
 * when the schedule fires. Each scheduled job gets its own MLflow run from the spec's start-run step.
 */
import { randomBytes } from 'node:crypto';
import type { LoadedConfig } from '../config/load.js';
import { KvxError } from '../errors.js';
import { isAdapted } from '../vertex/adapt.js';
import { MLFLOW_RUN_ID_PARAMETER } from '../vertex/params.js';
import { VertexApiError } from '../vertex/client.js';
import type { VertexClient, VertexSchedule } from '../vertex/client.js';
import { createRequest, planParameters, preparePlan } from './run.js';
import type { LaunchPlan, RunInput } from './run.js';
import { withSession } from './session.js';
import type { LaunchEnvironment } from './session.js';

/** The label that makes a repeated create find the schedule its first attempt made (see VertexClient.createSchedule). */
export const SCHEDULE_CREATE_LABEL = 'kvx_schedule_create_id';

export interface ScheduleTiming {
  cron: string;
  /** IANA time zone the cron is read in (`TZ=<zone>` prefix); UTC when absent. */
  timezone?: string;
  maxConcurrentRuns: string;
  maxRuns?: string;
  startTime?: string;
  endTime?: string;
  allowQueueing: boolean;
}

export interface ScheduleInput extends Pick<RunInput, 'source' | 'isTemplate' | 'params' | 'labels' | 'now' | 'inputArtifacts' | 'failurePolicy' | 'adapt' | 'confDir'> {
  /** The schedule's display name; default vertex.experimentName. */
  displayName?: string;
  timing: ScheduleTiming;
}

export interface ScheduleRequest {
  url: string;
  body: Record<string, unknown>;
}

const CRON_FIELD = /^[-*,/0-9a-zA-Z]+$/;

/** The schedule's time fields, checked here so a mistake names its flag before anything is sent. */
export function scheduleTiming(timing: ScheduleTiming, now: Date): Record<string, unknown> {
  const cron = timing.cron.trim();
  if (/^(CRON_)?TZ=/.test(cron)) throw new KvxError('KVX_USAGE', `--cron "${timing.cron}" carries a time zone: give the five fields in --cron and the zone in --timezone`);
  const fields = cron.split(/\s+/);
  if (fields.length !== 5 || !fields.every((f) => CRON_FIELD.test(f))) {
    throw new KvxError('KVX_USAGE', `--cron "${timing.cron}" is not a cron expression: it needs five fields (minute hour day-of-month month day-of-week), e.g. "0 6 * * 1"`);
  }
  const out: Record<string, unknown> = {};
  if (timing.timezone !== undefined) {
    try {
      new Intl.DateTimeFormat('en', { timeZone: timing.timezone });
    } catch {
      throw new KvxError('KVX_USAGE', `--timezone "${timing.timezone}" is not an IANA time zone (e.g. Europe/Amsterdam, Etc/UTC)`);
    }
    out['cron'] = `TZ=${timing.timezone} ${fields.join(' ')}`;
  } else out['cron'] = fields.join(' ');
  const count = (flag: string, value: string): string => {
    if (!/^\d{1,9}$/.test(value.trim()) || Number(value) < 1) throw new KvxError('KVX_USAGE', `${flag} must be a whole number of at least 1, got "${value}"`);
    return String(Number(value));
  };
  out['maxConcurrentRunCount'] = count('--max-concurrent-runs', timing.maxConcurrentRuns);
  if (timing.maxRuns !== undefined) out['maxRunCount'] = count('--max-runs', timing.maxRuns);
  if (timing.allowQueueing) out['allowQueueing'] = true;
  const time = (flag: string, value: string): string => {
    // An offset or Z is required: a time without one would be read in whatever zone this machine is in.
    if (!/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$/.test(value) || Number.isNaN(Date.parse(value))) {
      throw new KvxError('KVX_USAGE', `${flag} "${value}" is not an RFC 3339 time with a zone, e.g. 2027-01-31T06:00:00Z`);
    }
    return new Date(Date.parse(value)).toISOString();
  };
  if (timing.startTime !== undefined) out['startTime'] = time('--start-time', timing.startTime);
  if (timing.endTime !== undefined) {
    out['endTime'] = time('--end-time', timing.endTime);
    if (Date.parse(String(out['endTime'])) <= now.getTime()) throw new KvxError('KVX_USAGE', `--end-time ${timing.endTime} is in the past: the schedule would never run`);
    if (out['startTime'] !== undefined && Date.parse(String(out['endTime'])) <= Date.parse(String(out['startTime']))) {
      throw new KvxError('KVX_USAGE', `--end-time ${timing.endTime} is not after --start-time ${timing.startTime}`);
    }
  }
  return out;
}

/**
 * The schedules.create body: the timing, and as createPipelineJobRequest the job `run` would create from the same
 * plan, without its id and MLflow labels. `marker` is the create id label (a placeholder in a dry run).
 */
export function scheduleRequest(plan: LaunchPlan, vertex: Pick<VertexClient, 'parent' | 'schedulesUrl'>, displayName: string, timing: Record<string, unknown>, marker: string): ScheduleRequest {
  // An empty mlflow_run_id: each scheduled job's run is made by its start-run step, not given.
  const { pipelineJob } = createRequest({ ...plan, displayName }, planParameters(plan, ''), { [SCHEDULE_CREATE_LABEL]: marker });
  if ([...displayName].length > 128) throw new KvxError('KVX_USAGE', `--display-name "${displayName.slice(0, 40)}…" is ${[...displayName].length} characters; Vertex AI takes at most 128`);
  return {
    url: vertex.schedulesUrl,
    body: { displayName, ...timing, createPipelineJobRequest: { parent: vertex.parent, pipelineJob } },
  };
}

export interface ScheduleCreateResult {
  schedule: VertexSchedule;
  /** Said on stderr: what about the spec makes scheduled jobs differ from launched ones. */
  warnings: string[];
}

/** Warnings for a spec whose scheduled jobs would get no MLflow run of their own. */
function runWarnings(plan: LaunchPlan): string[] {
  const warnings: string[] = [];
  // An adapted spec declares it too, for the launcher's run; without one its start step creates the job's run.
  if (!isAdapted(plan.spec.spec) && plan.spec.parameters.some((p) => p.name === MLFLOW_RUN_ID_PARAMETER)) {
    warnings.push(`${plan.spec.source} takes its MLflow run as the ${MLFLOW_RUN_ID_PARAMETER} parameter; a schedule leaves it empty, so each scheduled job has a run only if a step of the pipeline creates one (kvx-launch start-run)`);
  }
  return warnings;
}

async function planSchedule(loaded: LoadedConfig, input: ScheduleInput, environment: LaunchEnvironment, use: (plan: LaunchPlan, vertex: VertexClient, timing: Record<string, unknown>, displayName: string) => Promise<ScheduleCreateResult | ScheduleRequest>) {
  const timing = scheduleTiming(input.timing, input.now);
  return withSession(loaded, environment, async (session) => {
    const vertex = session.vertex();
    const runInput: RunInput = {
      source: input.source,
      isTemplate: input.isTemplate,
      params: input.params,
      labels: input.labels,
      now: input.now,
      wait: false,
      cancelOnInterrupt: false,
      pollIntervalMs: 1000,
      experimentLinkTimeoutMs: 1000,
      ...(input.inputArtifacts === undefined ? {} : { inputArtifacts: input.inputArtifacts }),
      ...(input.failurePolicy === undefined ? {} : { failurePolicy: input.failurePolicy }),
      ...(input.adapt === undefined ? {} : { adapt: input.adapt }),
      ...(input.confDir === undefined ? {} : { confDir: input.confDir }),
    };
    const plan = await preparePlan(session, loaded.config, runInput, environment);
    if (plan.vertexExperiment !== undefined) environment.warn(`vertex.experiment (${plan.vertexExperiment}) applies to kvx-launch run only: scheduled jobs are not added to a Vertex AI experiment`);
    return use(plan, vertex, timing, input.displayName ?? plan.experimentName);
  });
}

/** `schedule create --dry-run`: the request, built and checked, sent nowhere. */
export async function scheduleDryRun(loaded: LoadedConfig, input: ScheduleInput, environment: LaunchEnvironment): Promise<ScheduleRequest> {
  return (await planSchedule(loaded, input, environment, async (plan, vertex, timing, displayName) => scheduleRequest(plan, vertex, displayName, timing, '<create-id>'))) as ScheduleRequest;
}

export async function createPipelineSchedule(loaded: LoadedConfig, input: ScheduleInput, environment: LaunchEnvironment): Promise<ScheduleCreateResult> {
  return (await planSchedule(loaded, input, environment, async (plan, vertex, timing, displayName) => {
    const marker = randomBytes(8).toString('hex');
    const { body } = scheduleRequest(plan, vertex, displayName, timing, marker);
    const schedule = await vertex.createSchedule(body, [SCHEDULE_CREATE_LABEL, marker]);
    return { schedule, warnings: runWarnings(plan) };
  })) as ScheduleCreateResult;
}

export async function listPipelineSchedules(loaded: LoadedConfig, environment: LaunchEnvironment): Promise<VertexSchedule[]> {
  return withSession(loaded, environment, async (session) => session.vertex().listSchedules());
}

/**
 * Deletes one schedule, named by its id, its resource name, or its display name when exactly one schedule has it.
 * Returns the schedule that was deleted.
 */
export async function deletePipelineSchedule(loaded: LoadedConfig, which: string, environment: LaunchEnvironment): Promise<VertexSchedule> {
  return withSession(loaded, environment, async (session) => {
    const vertex = session.vertex();
    const where = `${loaded.config.vertex.projectId}/${loaded.config.vertex.region}`;
    let schedule: VertexSchedule;
    if (/^\d+$/.test(which) || which.startsWith('projects/')) {
      try {
        schedule = await vertex.getSchedule(which);
      } catch (err) {
        if (err instanceof VertexApiError && err.status === 'NOT_FOUND') {
          throw new KvxError('KVX_LAUNCH_INPUT', `no schedule ${which} in ${where}`, { hint: '`kvx-launch schedule list` shows the schedules of the project and region' });
        }
        throw err;
      }
    } else {
      const named = await vertex.listSchedules(`display_name=${JSON.stringify(which)}`);
      if (named.length === 0) throw new KvxError('KVX_LAUNCH_INPUT', `no schedule named "${which}" in ${where}`, { hint: '`kvx-launch schedule list` shows the schedules, by id and display name' });
      if (named.length > 1) {
        throw new KvxError('KVX_LAUNCH_INPUT', `${named.length} schedules are named "${which}" in ${where}: ${named.map((s) => s.name.split('/').pop()).join(', ')}`, { hint: 'delete one by its id: kvx-launch schedule delete <id>' });
      }
      schedule = named[0]!;
    }
    await vertex.deleteSchedule(schedule.name);
    return schedule;
  });
}

/** One line per schedule, for people: id, state, cron, next run, runs started, display name. */
export function describeSchedules(schedules: readonly VertexSchedule[]): string {
  if (schedules.length === 0) return 'no schedules\n';
  const rows = schedules.map((s) => [s.name.split('/').pop() ?? s.name, s.state ?? '', s.cron ?? '', s.nextRunTime ?? '-', s.startedRunCount ?? '0', s.displayName ?? '']);
  const head = ['ID', 'STATE', 'CRON', 'NEXT RUN', 'RUNS', 'DISPLAY NAME'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  return [head, ...rows].map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')).join('\n') + '\n';
}
