import { Option } from 'commander';
import type { ConfigOverride } from '../config/load.js';
import { specAt } from '../config/load.js';
import { KvxError } from '../errors.js';
import { parseKeyValues } from '../util/key-values.js';

/**
 * Every flag of both programs, declared once. From this table come each command's commander options (with
 * the config key in their help), the config overrides a command's flags make, what a command reads as its own
 * input, and the flag tables in docs/configuration.md and docs/launcher.md (`npx tsx scripts/config-reference.ts
 * --write`; test/unit/readme.test.ts checks them). A new flag is one entry here.
 */

export const COMMANDS = {
  'kvx-proxy': ['serve', 'check-config', 'exec', 'doctor', 'print-token', 'login', 'logout'],
  'kvx-launch': ['run', 'follow', 'start-run', 'end-run', 'adapt', 'schedule create', 'schedule list', 'schedule delete'],
} as const;

export type ProgramName = keyof typeof COMMANDS;
export type CommandId = { [P in ProgramName]: `${P} ${(typeof COMMANDS)[P][number]}` }[ProgramName];

export interface FlagSpec {
  /** `--name`. A `--no-name` switch turns off a setting that is on by default. */
  name: `--${string}`;
  short?: `-${string}`;
  /** Placeholder of the value, e.g. `<url>`; a flag without one is a switch. */
  value?: `<${string}>`;
  help: string;
  commands: readonly CommandId[];
  /** The config key the flag sets: to its value, to true for a switch, to false for a `--no-` switch. */
  key?: string;
  /** Repeatable `key=value` pairs, each setting `<map>.<key>`. */
  map?: 'auth.params';
  /** May be given more than once; the command reads a list. */
  repeatable?: boolean;
  default?: string;
  /** Allowed values; a flag setting a key with schema choices takes those. */
  choices?: readonly string[];
}

const PROXY: readonly CommandId[] = COMMANDS['kvx-proxy'].map((c) => `kvx-proxy ${c}` as const);
const LAUNCH: readonly CommandId[] = COMMANDS['kvx-launch'].map((c) => `kvx-launch ${c}` as const);
/** run and schedule create build the same pipelineJobs.create request from the same inputs. */
const SUBMIT: readonly CommandId[] = ['kvx-launch run', 'kvx-launch schedule create'];

export const FLAGS: readonly FlagSpec[] = [
  { name: '--config', short: '-c', value: '<file>', help: 'config file (kvx YAML or a kedro-vertexai vertexai.yml), later ones layered over earlier; env KVX_CONFIG', commands: [...PROXY, ...LAUNCH], repeatable: true },

  // kvx-proxy: every command loads the same configuration.
  { name: '--upstream', value: '<url>', help: 'MLflow server URL', commands: PROXY, key: 'upstream.url' },
  { name: '--host', value: '<address>', help: 'listen address', commands: PROXY, key: 'listen.host' },
  { name: '--port', value: '<port>', help: 'listen port, 0 for a free one', commands: PROXY, key: 'listen.port' },
  { name: '--allow-non-loopback', help: 'allow listening on a non-loopback address', commands: PROXY, key: 'listen.allowNonLoopback' },
  { name: '--allowed-hosts', value: '<names>', help: 'comma-separated host names clients may address the proxy by, * for any', commands: PROXY, key: 'server.allowedHosts' },
  { name: '--engine', value: '<engine>', help: 'HTTP engine: auto, wire or node', commands: PROXY, key: 'server.engine' },
  { name: '--allowed-origins', value: '<origins>', help: 'comma-separated browser origins allowed to call the proxy, * for any', commands: PROXY, key: 'server.allowedOrigins' },
  { name: '--admin-host', value: '<address>', help: 'admin listen address', commands: PROXY, key: 'admin.host' },
  { name: '--admin-port', value: '<port>', help: 'admin port for /healthz, /readyz, /metrics', commands: PROXY, key: 'admin.port' },
  { name: '--no-admin', help: 'do not open the admin listener', commands: PROXY, key: 'admin.enabled' },
  { name: '--auth-provider', value: '<type>', help: 'header provider for MLflow requests', commands: [...PROXY, ...LAUNCH], key: 'auth.provider' },
  { name: '--auth-header', value: '<name>', help: 'header the token goes in', commands: PROXY, key: 'auth.header' },
  { name: '--auth-scheme', value: '<scheme>', help: 'scheme before the token, "" for none', commands: PROXY, key: 'auth.scheme' },
  { name: '--auth-module', value: '<path>', help: 'custom provider module', commands: PROXY, key: 'auth.module' },
  { name: '--client-id', value: '<id>', help: 'IAP OAuth client id, the token audience', commands: [...PROXY, ...LAUNCH], key: 'auth.params.client_id' },
  { name: '--service-account', value: '<email>', help: 'service account to impersonate', commands: PROXY, key: 'auth.params.service_account' },
  { name: '--token-env', value: '<name>', help: 'environment variable holding a static token', commands: PROXY, key: 'auth.params.token_env' },
  { name: '--token-file', value: '<path>', help: 'file holding a static token', commands: PROXY, key: 'auth.params.token_file' },
  { name: '--param', value: '<key=value>', help: 'provider param', commands: PROXY, map: 'auth.params' },
  { name: '--no-require-token', help: 'start even when the first credentials fail', commands: PROXY, key: 'auth.requireTokenAtStart' },
  { name: '--ca-file', value: '<path>', help: 'CA bundle for upstream TLS', commands: PROXY, key: 'upstream.caFile' },
  { name: '--cert-file', value: '<path>', help: 'client certificate for mutual TLS', commands: PROXY, key: 'upstream.certFile' },
  { name: '--key-file', value: '<path>', help: 'client key for mutual TLS', commands: PROXY, key: 'upstream.keyFile' },
  { name: '--insecure', help: 'do not verify upstream TLS; debugging only', commands: PROXY, key: 'upstream.insecure' },
  { name: '--api-path', value: '<path>', help: 'authenticated MLflow call to try', commands: ['kvx-proxy doctor'], default: '/api/2.0/mlflow/experiments/search?max_results=1' },
  { name: '--timeout-ms', value: '<ms>', help: 'time allowed for each upstream request', commands: ['kvx-proxy doctor'], default: '15000' },
  { name: '--token-only', help: 'print only the token, without the scheme (like gcloud auth print-identity-token)', commands: ['kvx-proxy print-token'] },
  { name: '--header', value: '<name>', help: 'header whose value to print (default: auth.header)', commands: ['kvx-proxy print-token'] },
  { name: '--oauth-client-id', value: '<id>', help: 'desktop OAuth client id of the google-user provider', commands: PROXY, key: 'auth.params.oauth_client_id' },
  { name: '--oauth-client-secret-file', value: '<path>', help: 'file holding that desktop client\'s secret', commands: PROXY, key: 'auth.params.oauth_client_secret_file' },
  { name: '--no-browser', help: 'print the sign-in URL instead of opening a browser', commands: ['kvx-proxy login'] },
  { name: '--login-timeout', value: '<seconds>', help: 'how long to wait for the browser to come back', commands: ['kvx-proxy login'], default: '300' },

  // kvx-launch: where the pipeline runs and where its MLflow run is.
  { name: '--project', value: '<id>', help: 'Google Cloud project', commands: LAUNCH, key: 'vertex.projectId' },
  { name: '--region', value: '<region>', help: 'Vertex AI region', commands: LAUNCH, key: 'vertex.region' },
  { name: '--vertex-endpoint', value: '<url>', help: 'Vertex AI API base URL', commands: LAUNCH, key: 'vertex.endpoint' },
  { name: '--tracking-uri', value: '<url>', help: 'MLflow server or a kvx-proxy in front of it; env MLFLOW_TRACKING_URI', commands: LAUNCH, key: 'upstream.url' },
  { name: '--auth-param', value: '<key=value>', help: 'MLflow header provider param', commands: LAUNCH, map: 'auth.params' },
  { name: '--template-uri', value: '<uri>', help: 'submit a pipeline template from Artifact Registry instead of a local spec', commands: SUBMIT },
  { name: '--param', short: '-p', value: '<name=value>', help: 'pipeline parameter, converted to its declared type', commands: SUBMIT, repeatable: true },
  { name: '--experiment-name', value: '<name>', help: 'MLflow experiment; for run also the job id prefix', commands: ['kvx-launch run', 'kvx-launch start-run', 'kvx-launch end-run', 'kvx-launch adapt', 'kvx-launch schedule create'], key: 'vertex.experimentName' },
  { name: '--job-id', value: '<id>', help: 'pipeline job id; default <experiment_name>-<UTC yyyymmddHHMMSS>', commands: ['kvx-launch run'] },
  { name: '--display-name', value: '<name>', help: 'job display name; default the job id', commands: ['kvx-launch run'] },
  { name: '--root', value: '<bucket/path>', help: 'pipeline root, without gs://', commands: SUBMIT, key: 'vertex.root' },
  { name: '--service-account', value: '<email>', help: 'service account the pipeline runs as', commands: SUBMIT, key: 'vertex.serviceAccount' },
  { name: '--network', value: '<vpc>', help: 'VPC name or projects/<number>/global/networks/<vpc>', commands: SUBMIT, key: 'vertex.network' },
  { name: '--project-number', value: '<number>', help: 'project number, for a bare --network name', commands: SUBMIT, key: 'vertex.projectNumber' },
  { name: '--artifact', value: '<name=id>', help: 'root input artifact of the pipeline, by Vertex ML Metadata artifact id or projects/.../metadataStores/default/artifacts/<id>', commands: SUBMIT, repeatable: true },
  { name: '--failure-policy', value: '<policy>', help: 'after a task fails, fast: start no new task; slow: let independent tasks finish (runtimeConfig.failurePolicy); default a job file\'s, else slow', commands: SUBMIT, choices: ['fast', 'slow'] },
  { name: '--label', short: '-l', value: '<key=value>', help: 'job label, added to vertex.labels', commands: SUBMIT, repeatable: true },
  { name: '--enable-caching', help: 'let Vertex reuse cached task results', commands: SUBMIT, key: 'vertex.enableCaching' },
  { name: '--experiment', value: '<name>', help: 'Vertex AI experiment to add the job to, created if missing; "" for none', commands: ['kvx-launch run'], key: 'vertex.experiment' },
  { name: '--dry-run', help: 'print the pipelineJobs.create request and the MLflow actions run would make, and create nothing', commands: ['kvx-launch run'] },
  { name: '--dry-run', help: 'print the schedules.create request, and create nothing', commands: ['kvx-launch schedule create'] },
  { name: '--cron', value: '<expression>', help: 'when the schedule starts a job: five cron fields, e.g. "0 6 * * 1"', commands: ['kvx-launch schedule create'] },
  { name: '--timezone', value: '<zone>', help: 'IANA time zone the cron is read in; default UTC', commands: ['kvx-launch schedule create'] },
  { name: '--display-name', value: '<name>', help: 'schedule display name (also its jobs\'); default the experiment name', commands: ['kvx-launch schedule create'] },
  { name: '--max-concurrent-runs', value: '<n>', help: 'jobs of the schedule that may run at once (maxConcurrentRunCount)', commands: ['kvx-launch schedule create'], default: '1' },
  { name: '--allow-queueing', help: 'queue a job due while --max-concurrent-runs run, instead of skipping it', commands: ['kvx-launch schedule create'] },
  { name: '--max-runs', value: '<n>', help: 'stop after starting this many jobs (maxRunCount); default no limit', commands: ['kvx-launch schedule create'] },
  { name: '--start-time', value: '<time>', help: 'first time a job may start, RFC 3339 with a zone; default now', commands: ['kvx-launch schedule create'] },
  { name: '--end-time', value: '<time>', help: 'no job starts after this time, RFC 3339 with a zone; default never', commands: ['kvx-launch schedule create'] },
  { name: '--wait', short: '-w', help: 'follow the job until it ends and mirror its final state into the run', commands: ['kvx-launch run'] },
  { name: '--run-id', value: '<id>', help: "MLflow run to mirror into; default the job's mlflow_run_id label", commands: ['kvx-launch follow'] },
  { name: '--cancel-on-interrupt', help: 'cancel the job when interrupted (run: with --wait)', commands: ['kvx-launch run', 'kvx-launch follow'] },
  { name: '--poll-interval', value: '<seconds>', help: 'first poll interval while following', commands: ['kvx-launch run', 'kvx-launch follow'], default: '5' },
  { name: '--experiment-link-timeout', value: '<seconds>', help: 'how long to wait for the job to start so it can join its Vertex AI experiment', commands: ['kvx-launch run', 'kvx-launch follow'], default: '300' },
  { name: '--job-name', value: '<name>', help: 'job id, e.g. {{$.pipeline_job_name}}; tagged vertexai_job_name and used to find the run on retries', commands: ['kvx-launch start-run'] },
  { name: '--job-id', value: '<id>', help: 'id of the job run, tagged vertexai_run_id: {{$.pipeline_job_uuid}} in an adapted kedro-vertexai spec (as its hook writes it), else e.g. {{$.pipeline_job_resource_name}}', commands: ['kvx-launch start-run'] },
  { name: '--output', short: '-o', value: '<file>', help: 'write the run id to this file (a KFP output path)', commands: ['kvx-launch start-run'] },
  { name: '--no-adapt', help: "submit a kedro-vertexai spec untouched, as compiled", commands: SUBMIT, key: 'adapt.enabled' },
  { name: '--proxy-path', value: '<path>', help: 'kvx-proxy inside the step image', commands: ['kvx-launch run', 'kvx-launch adapt', 'kvx-launch schedule create'], key: 'adapt.proxyPath' },
  { name: '--launch-path', value: '<path>', help: 'kvx-launch inside the step image', commands: ['kvx-launch run', 'kvx-launch adapt', 'kvx-launch schedule create'], key: 'adapt.launchPath' },
  { name: '--step-config', value: '<path>', help: "config the steps' kvx commands read, relative to the image's working directory; {env} is the step's kedro env", commands: ['kvx-launch run', 'kvx-launch adapt', 'kvx-launch schedule create'], key: 'adapt.stepConfig' },
  { name: '--output', short: '-o', value: '<file>', help: 'write the adapted spec here (YAML; JSON for a .json name); default stdout', commands: ['kvx-launch adapt'] },
  { name: '--run-id', value: '<id>', help: "the launcher's MLflow run, {{$.inputs.parameters['launcher_run_id']}}; empty: start-run finds or creates the job's run, end-run finds it", commands: ['kvx-launch start-run', 'kvx-launch end-run'] },
  { name: '--job-name', value: '<name>', help: 'job id, {{$.pipeline_job_name}}; finds the run start-run made when --run-id is empty', commands: ['kvx-launch end-run'] },
  { name: '--job-resource-name', value: '<name>', help: 'job resource name, {{$.pipeline_job_resource_name}}; the job read for the failed task and its error', commands: ['kvx-launch end-run'] },
  { name: '--status', value: '<json>', help: "the pipeline's final status, {{$.inputs.parameters['status']}} (KFP TASK_FINAL_STATUS)", commands: ['kvx-launch end-run'] },
  { name: '--json', help: 'print the result as JSON', commands: LAUNCH },

  { name: '--log-level', value: '<level>', help: 'log level; kvx-launch logs warnings and errors only unless it is set', commands: [...PROXY, ...LAUNCH], key: 'log.level' },
  { name: '--debug', help: 'print stack traces for errors', commands: [...PROXY, ...LAUNCH] },
];

/** The flags `command` takes, in table order. */
export function flagsOf(command: CommandId): FlagSpec[] {
  return FLAGS.filter((f) => f.commands.includes(command));
}

/** The property commander stores a flag's value under: `--tracking-uri` → trackingUri, `--no-admin` → admin. */
export function attributeOf(flag: Pick<FlagSpec, 'name'>): string {
  return flag.name.replace(/^--(no-)?/, '').replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}

const negated = (flag: FlagSpec): boolean => flag.name.startsWith('--no-');
const takesList = (flag: FlagSpec): boolean => flag.repeatable === true || flag.map !== undefined;
const placeholder = (flag: FlagSpec): string => (flag.value ?? '').replace(/^<|>$/g, '');

function choicesOf(flag: FlagSpec): readonly string[] | undefined {
  if (flag.choices !== undefined) return flag.choices;
  const spec = flag.key === undefined ? undefined : specAt(flag.key);
  return spec?.kind === 'string' ? spec.choices : undefined;
}

/** What the flag sets, as the help and the docs say it: `upstream.url`, `admin.enabled: false`, `auth.params.<key>`. */
function setsOf(flag: FlagSpec): string | undefined {
  if (flag.map !== undefined) return `${flag.map}.<key>`;
  if (flag.key === undefined) return undefined;
  return negated(flag) ? `${flag.key}: false` : flag.key;
}

/** The commander options of `command`, generated from the table. */
export function commanderOptions(command: CommandId): Option[] {
  return flagsOf(command).map((flag) => {
    const sets = setsOf(flag);
    const help = `${flag.help}${sets === undefined ? '' : ` (${sets})`}${takesList(flag) ? '; repeatable' : ''}`;
    const option = new Option(`${flag.short === undefined ? '' : `${flag.short}, `}${flag.name}${flag.value === undefined ? '' : ` ${flag.value}`}`, help);
    const choices = choicesOf(flag);
    if (choices !== undefined) option.choices(choices);
    if (takesList(flag)) option.argParser((value: string, previous: string[] | undefined) => [...(previous ?? []), value]);
    if (flag.default !== undefined) option.default(flag.default);
    return option;
  });
}

/**
 * One command's parsed flags, read through the table: config overrides, and the command's own inputs. Asking
 * for a flag the command does not declare is a programming error, so the table stays the only list.
 */
export class CommandFlags {
  constructor(
    readonly command: CommandId,
    private readonly opts: Readonly<Record<string, unknown>>,
  ) {}

  private flag(name: string): FlagSpec {
    const flag = FLAGS.find((f) => f.name === name && f.commands.includes(this.command));
    if (flag === undefined) throw new Error(`${name} is not a flag of ${this.command} (src/cli/flags.ts)`);
    return flag;
  }

  private raw(name: string): unknown {
    return this.opts[attributeOf(this.flag(name))];
  }

  string(name: string): string | undefined {
    const value = this.raw(name);
    return value === undefined ? undefined : String(value);
  }

  /** The string flags that were given, under the names of the command's input: `{ jobId: '--job-id' }`. */
  given<K extends string>(names: Record<K, string>): Partial<Record<K, string>> {
    const out: Partial<Record<K, string>> = {};
    for (const [field, name] of Object.entries(names) as [K, string][]) {
      const value = this.string(name);
      if (value !== undefined) out[field] = value;
    }
    return out;
  }

  switch(name: string): boolean {
    return this.raw(name) === true;
  }

  list(name: string): string[] | undefined {
    return this.raw(name) as string[] | undefined;
  }

  /** A positive number of seconds, in milliseconds. */
  milliseconds(name: string): number {
    const raw = this.string(name) ?? '';
    const n = Number(raw);
    if (raw.trim() === '' || !Number.isFinite(n) || n <= 0) throw new KvxError('KVX_USAGE', `${name} must be a positive number of seconds, got "${raw}"`);
    return n * 1000;
  }

  /** A repeatable key=value input of the command (kvx-launch's pipeline params and labels). */
  pairs(name: string): Map<string, string> {
    return parseKeyValues(this.list(name) ?? [], name, { placeholder: placeholder(this.flag(name)), code: 'KVX_LAUNCH_INPUT' });
  }

  /**
   * The config layer the flags make. A key set twice on the command line (`--client-id` and `--param
   * client_id=...`, or one key=value repeated) is a usage error naming both, as with any repeated key.
   */
  overrides(): ConfigOverride[] {
    const overrides: ConfigOverride[] = [];
    const problems: string[] = [];
    const setBy = new Map<string, string>();
    const add = (path: string, value: unknown, source: string) => {
      const earlier = setBy.get(path);
      if (earlier !== undefined) problems.push(`${source} sets ${path}, which ${earlier} sets too: give it once`);
      setBy.set(path, source);
      overrides.push({ path, value, source });
    };
    for (const flag of flagsOf(this.command)) {
      const value = this.opts[attributeOf(flag)];
      if (value === undefined) continue;
      if (flag.map !== undefined) {
        const pairs = parseKeyValues(value as string[], flag.name, { placeholder: placeholder(flag), code: 'KVX_USAGE' });
        for (const [key, v] of pairs) add(`${flag.map}.${key}`, v, `${flag.name} ${key}`);
      } else if (flag.key !== undefined) {
        // commander gives a --no-x switch the value true unless it was given.
        if (negated(flag) && value !== false) continue;
        add(flag.key, value, flag.name);
      }
    }
    if (problems.length > 0) throw new KvxError('KVX_USAGE', problems.join('\n'));
    return overrides;
  }
}

/**
 * The flag table of one program in Markdown, for the docs: every flag, the commands that take it, what it
 * sets, and its help.
 */
export function flagReferenceMarkdown(program: ProgramName): string {
  const all = COMMANDS[program].map((c) => `${program} ${c}` as CommandId);
  const rows = ['| flag | commands | sets | meaning |', '| --- | --- | --- | --- |'];
  for (const flag of FLAGS) {
    const commands = all.filter((c) => flag.commands.includes(c));
    if (commands.length === 0) continue;
    const name = `${flag.short === undefined ? '' : `${flag.short}, `}${flag.name}${flag.value === undefined ? '' : ` ${flag.value}`}`;
    const where = commands.length === all.length ? 'all' : commands.map((c) => c.slice(program.length + 1)).join(', ');
    const sets = setsOf(flag);
    const choices = choicesOf(flag);
    const notes = [
      takesList(flag) ? 'Repeatable.' : '',
      choices === undefined ? '' : `One of: ${choices.join(', ')}.`,
      flag.default === undefined ? '' : `Default ${flag.default}.`,
    ].filter((n) => n !== '');
    const meaning = [`${flag.help.charAt(0).toUpperCase()}${flag.help.slice(1)}.`, ...notes].join(' ');
    const cell = meaning.replace(/\|/g, '\\|').replace(/</g, '&lt;');
    rows.push(`| \`${name}\` | ${where} | ${sets === undefined ? '' : `\`${sets}\``} | ${cell} |`);
  }
  return rows.join('\n');
}
