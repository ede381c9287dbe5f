/**
 * Application Default Credentials as Google's client libraries find them: GOOGLE_APPLICATION_CREDENTIALS, the
 * gcloud application-default login, the metadata server. Unlike the libraries, the look-up reads the environment
 * and endpoints it is given, so tests and private setups (a metadata proxy, a token endpoint behind a VPC-SC
 * gateway) can point it elsewhere, and every Google call of one kvx process can share one look-up.
 */
import { readFileSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import path from 'node:path';
import { errorMessage } from '../../errors.js';
import { TokenFetchError } from '../token.js';
import type { Token } from '../token.js';
import { libraryCredentials } from './external.js';
import { impersonatedCredentials } from './impersonated.js';
import { MetadataServer, metadataCredentials } from './metadata.js';
import { serviceAccountKeyCredentials } from './service-account.js';
import { SETUP_HINT } from './source.js';
import type { FindOptions, Json, SourceCredentials } from './source.js';
import { userLoginCredentials } from './user-login.js';

/** Off GCP the metadata address is a black hole; do not make a laptop user wait long to learn that. */
const METADATA_PROBE_TIMEOUT_MS = 3_000;

/**
 * Application Default Credentials looked up once and kept, for one provider or for all Google calls of a
 * kvx-launch run. A failed look-up is not kept: a user who logs in or attaches a service account while the
 * provider backs off is found on the next attempt.
 */
export class CredentialsLookup {
  private pending: Promise<SourceCredentials> | undefined;
  /** The credentials file the kept look-up read (or would read), and its stamp then; undefined for none. */
  private file: { path: string; stamp: string } | undefined;

  /** `user` names who looks up (a provider type, `kvx-launch`) in the log line saying what was found. */
  constructor(
    private readonly user: string,
    private readonly options: FindOptions,
  ) {}

  /**
   * The credentials, looked up again when their file changed since: a new `gcloud auth application-default login`
   * (or a rotated key) reaches a running process. Callers ask only when they fetch a token, so the stat is cheap.
   */
  get(): Promise<SourceCredentials> {
    if (this.pending !== undefined && this.file !== undefined && fileStamp(this.file.path) !== this.file.stamp) {
      this.options.logger.info('Google credentials file changed; reading it again', { provider: this.user, file: this.file.path });
      const old = this.pending;
      this.pending = undefined;
      old.then((s) => s.close()).catch(() => {});
    }
    if (this.pending === undefined) {
      const path = credentialsFileOf(this.options.env);
      // Stamped before reading: a rewrite during the read shows as a change next time.
      this.file = path === undefined ? undefined : { path, stamp: fileStamp(path) };
    }
    return (this.pending ??= findCredentials(this.options).then(
      (source) => {
        this.options.logger.info('Google credentials found', { provider: this.user, source: source.info.description, identity: source.info.identity });
        return source;
      },
      (err: unknown) => {
        this.pending = undefined;
        throw err;
      },
    ));
  }

  /** The cloud-platform access token of these credentials, for Google APIs (Vertex AI). */
  async accessToken(signal?: AbortSignal): Promise<Token> {
    return (await this.get()).accessToken(signal);
  }

  close(): void {
    this.pending?.then((s) => s.close()).catch(() => {});
  }
}

/** Finds Application Default Credentials; throws TokenFetchError with set-up help when there are none. */
export async function findCredentials(options: FindOptions): Promise<SourceCredentials> {
  const source = await find(options);
  const quotaProject = options.env['GOOGLE_CLOUD_QUOTA_PROJECT'];
  if (quotaProject) source.info.quotaProject = quotaProject;
  return source;
}

async function find(options: FindOptions): Promise<SourceCredentials> {
  const { env } = options;
  const explicit = env['GOOGLE_APPLICATION_CREDENTIALS'];
  if (explicit) {
    const json = readCredentialsFile(explicit, 'GOOGLE_APPLICATION_CREDENTIALS');
    return fromJson(json, explicit, options);
  }
  const wellKnown = wellKnownFile(env);
  const json = readIfPresent(wellKnown);
  if (json !== undefined) return fromJson(json, wellKnown, options);

  const metadata = new MetadataServer(options.endpoints.metadataHost, env, options.egress);
  try {
    const email = await metadata.email(AbortSignal.timeout(metadata.explicit ? options.fetchTimeoutMs ?? 30_000 : METADATA_PROBE_TIMEOUT_MS));
    return metadataCredentials(metadata, email, options);
  } catch (err) {
    throw new TokenFetchError(
      `no Google credentials found: GOOGLE_APPLICATION_CREDENTIALS is not set, there is no gcloud application-default login at ${wellKnown}, ` +
        `and no metadata server answered at ${metadata.host} (${errorMessage(err)})`,
      { hint: SETUP_HINT, cause: err },
    );
  }
}

/** The file Application Default Credentials come from in this environment, when one is named or exists. */
function credentialsFileOf(env: NodeJS.ProcessEnv): string | undefined {
  return env['GOOGLE_APPLICATION_CREDENTIALS'] || wellKnownFile(env);
}

/** Identity, size and mtime: an atomic replace changes the inode, an in-place rewrite the size or mtime. */
function fileStamp(file: string): string {
  try {
    const st = statSync(file);
    return `${st.ino}:${st.size}:${st.mtimeMs}`;
  } catch {
    return 'absent';
  }
}

/** The gcloud application-default credentials file for this environment. */
export function wellKnownFile(env: NodeJS.ProcessEnv): string {
  if (env['CLOUDSDK_CONFIG']) return path.join(env['CLOUDSDK_CONFIG'], 'application_default_credentials.json');
  if (process.platform === 'win32' && env['APPDATA']) return path.join(env['APPDATA'], 'gcloud', 'application_default_credentials.json');
  return path.join(env['HOME'] || homedir(), '.config', 'gcloud', 'application_default_credentials.json');
}

function readCredentialsFile(file: string, source: string): Json {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new TokenFetchError(`${source} points at ${file}, which cannot be read (${(err as { code?: string }).code ?? errorMessage(err)})`, {
      hint: 'fix the path or unset the variable to use the gcloud login or the metadata server',
    });
  }
  return parseCredentials(text, file);
}

function readIfPresent(file: string): Json | undefined {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
  return parseCredentials(text, file);
}

function parseCredentials(text: string, file: string): Json {
  try {
    const json = JSON.parse(text) as unknown;
    if (typeof json === 'object' && json !== null && !Array.isArray(json)) return json as Json;
  } catch {
    // fall through
  }
  throw new TokenFetchError(`${file} is not a Google credentials JSON file`, { hint: 'download the key again or rerun `gcloud auth application-default login`' });
}

function fromJson(json: Json, file: string, options: FindOptions): SourceCredentials {
  const source = credentialsOfType(json, file, options);
  if (typeof json['quota_project_id'] === 'string' && json['quota_project_id'] !== '') source.info.quotaProject = json['quota_project_id'];
  return source;
}

function credentialsOfType(json: Json, file: string, options: FindOptions): SourceCredentials {
  switch (json['type']) {
    case 'service_account':
      return serviceAccountKeyCredentials(json, file, options);
    case 'authorized_user':
      return userLoginCredentials(json, file, options);
    case 'impersonated_service_account':
      return impersonatedCredentials(json, file, options, credentialsOfType);
    case undefined:
      throw new TokenFetchError(`${file} has no "type"; expected a service-account key or an application-default login`, { hint: SETUP_HINT });
    default:
      return libraryCredentials(json, file, options);
  }
}
