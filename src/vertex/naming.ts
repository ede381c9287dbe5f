import { KvxError } from '../errors.js';

/** What Vertex AI accepts as a pipelineJobId: `[a-z][-a-z0-9]*`, fewer than 128 characters. */
export const JOB_ID_PATTERN = /^[a-z][-a-z0-9]{0,126}$/;
export const MAX_JOB_ID_LENGTH = 127;

/** `20240131235959` in UTC, the suffix kedro-vertexai gives job ids. */
export function utcStamp(date: Date): string {
  const pad = (n: number) => String(n).padStart(2, '0');
  return `${date.getUTCFullYear()}${pad(date.getUTCMonth() + 1)}${pad(date.getUTCDate())}${pad(date.getUTCHours())}${pad(date.getUTCMinutes())}${pad(date.getUTCSeconds())}`;
}

/**
 * `<experiment_name>-<UTC yyyymmddHHMMSS>` made valid for Vertex: lower case, runs of other characters become
 * one dash, leading characters up to the first letter dropped, and the prefix shortened so the whole id stays
 * under 128 characters.
 */
export function makeJobId(experimentName: string, now: Date): string {
  const suffix = `-${utcStamp(now)}`;
  let prefix = experimentName
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^[^a-z]+/, '');
  prefix = prefix.slice(0, MAX_JOB_ID_LENGTH - suffix.length).replace(/-+$/, '');
  if (prefix === '') {
    throw new KvxError('KVX_LAUNCH_INPUT', `cannot make a Vertex AI job id from experiment name "${experimentName}": it contains no letter (job ids match [a-z][-a-z0-9]* and are under 128 characters)`, {
      hint: 'set run_config.experiment_name (vertex.experimentName, --experiment-name) to a name with a letter, or give the id with --job-id',
    });
  }
  return prefix + suffix;
}

export function checkJobId(id: string, flag = '--job-id'): string {
  if (!JOB_ID_PATTERN.test(id)) {
    throw new KvxError('KVX_LAUNCH_INPUT', `${flag} "${id}" is not a valid Vertex AI job id: it must start with a lower-case letter and hold at most 127 lower-case letters, digits and dashes`);
  }
  return id;
}

/**
 * What Vertex ML Metadata accepts as a context id, which is what an experiment name is: 4 to 128 lower-case
 * letters, digits and dashes (CreateContextRequest.context_id). A leading dash is refused as well, so a name can
 * never be mistaken for a flag.
 */
export const EXPERIMENT_ID_PATTERN = /^[a-z0-9][-a-z0-9]{3,127}$/;

/** Checks a Vertex AI experiment name before anything is created; `where` names the config key and flag. */
export function checkExperimentName(name: string, where = 'vertex.experiment (run_config.experiment, --experiment)'): string {
  if (EXPERIMENT_ID_PATTERN.test(name)) return name;
  const suggestion = name
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 128);
  throw new KvxError(
    'KVX_LAUNCH_INPUT',
    `${where} "${name}" is not a valid Vertex AI experiment name: it must hold 4 to 128 lower-case letters, digits and dashes, and start with a letter or digit`,
    { hint: EXPERIMENT_ID_PATTERN.test(suggestion) ? `use "${suggestion}", or leave vertex.experiment empty to skip the Vertex AI experiment` : 'choose another name, or leave vertex.experiment empty to skip the Vertex AI experiment' },
  );
}

/**
 * Google's label rules as the PipelineJob API states them: keys and values up to 64 characters (code points) of
 * lower-case letters (international ones too: letters without case, like CJK, count), digits, `_` and `-`;
 * keys start with a letter.
 */
const LABEL_KEY = /^[\p{Ll}\p{Lo}][\p{Ll}\p{Lo}\p{N}_-]{0,63}$/u;
const LABEL_VALUE = /^[\p{Ll}\p{Lo}\p{N}_-]{0,64}$/u;
export const MAX_LABELS = 64;

/** Checks labels against Google's rules, naming each offender; returns them as strings. */
export function checkLabels(labels: Record<string, unknown>, where: string): Record<string, string> {
  const out: Record<string, string> = {};
  const problems: string[] = [];
  for (const [key, raw] of Object.entries(labels)) {
    const value = raw === null || raw === undefined ? '' : String(raw);
    if (!LABEL_KEY.test(key)) problems.push(`label key "${key}" must start with a lower-case letter and hold at most 64 lower-case letters, digits, _ and -`);
    if (!LABEL_VALUE.test(value)) problems.push(`label ${key}="${value}": values hold at most 64 lower-case letters, digits, _ and -`);
    out[key] = value;
  }
  if (Object.keys(out).length > MAX_LABELS) problems.push(`${Object.keys(out).length} labels given; a job takes at most ${MAX_LABELS}`);
  if (problems.length > 0) throw new KvxError('KVX_LAUNCH_INPUT', `invalid labels (${where}):\n  - ${problems.join('\n  - ')}`);
  return out;
}

/** Any string made into a valid label value (MLflow run ids from other backends may carry upper case). */
export function toLabelValue(value: string): string {
  return value.toLowerCase().replace(/[^a-z0-9_-]/g, '_').slice(0, 64);
}

/**
 * Vertex wants `projects/<project number>/global/networks/<vpc>`. A full name is used as given; a bare VPC name
 * needs the project number, which a project id does not reveal.
 */
export function networkResourceName(network: string, projectId: string, projectNumber: string): string {
  if (network === '') return '';
  if (/^projects\/[^/]+\/global\/networks\/[^/]+$/.test(network)) {
    const project = network.split('/')[1]!;
    if (!/^\d+$/.test(project)) {
      throw new KvxError('KVX_LAUNCH_INPUT', `vertex.network "${network}" names the project by id; Vertex AI needs the project number there`, {
        hint: `write projects/<project number>/global/networks/${network.split('/')[4]} (gcloud projects describe ${project} --format='value(projectNumber)')`,
      });
    }
    return network;
  }
  if (network.includes('/')) {
    throw new KvxError('KVX_LAUNCH_INPUT', `vertex.network "${network}" is neither a VPC name nor projects/<project number>/global/networks/<vpc>`);
  }
  const number = projectNumber || (/^\d+$/.test(projectId) ? projectId : '');
  if (number === '') {
    throw new KvxError('KVX_LAUNCH_INPUT', `vertex.network "${network}" is a bare VPC name and the project number is unknown`, {
      hint: `set vertex.projectNumber (--project-number), or give the full name projects/<project number>/global/networks/${network} (gcloud projects describe ${projectId || '<project>'} --format='value(projectNumber)')`,
    });
  }
  return `projects/${number}/global/networks/${network}`;
}
