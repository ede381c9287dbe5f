/**
 * Application Default Credentials as Google's client libraries find them, and the calls both Google
 * providers make. Discovery follows google-auth-library's order (GOOGLE_APPLICATION_CREDENTIALS, the gcloud
 * application-default login, the metadata server) but reads the environment and endpoints it is given,
 * so tests and private setups (a metadata proxy, a token endpoint behind a VPC-SC gateway) can point it
 * elsewhere. google-auth-library parses and refreshes the credential types whose endpoints it lets us
 * set (gcloud user logins, impersonated and external accounts); the service-account JWT-bearer grant is
 * done here because the library hard-codes Google's token URL for it.
 */
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import path from 'node:path';
import { sign } from 'node:crypto';
import { createRequire } from 'node:module';
import type * as GoogleAuthLibrary from 'google-auth-library';
import type { AuthClient, UserRefreshClient } from 'google-auth-library';
import { errorMessage } from '../errors.js';
import type { Logger } from '../log/logger.js';
import { TokenCache, TokenFetchError, accessToken, decodeJwtClaims, idToken } from './token-cache.js';
import type { Clock, Token } from './token-cache.js';

export const CLOUD_PLATFORM_SCOPE = 'https://www.googleapis.com/auth/cloud-platform';
const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
const DEFAULT_METADATA_HOST = '169.254.169.254';
/** Off GCP the metadata address is a black hole; do not make a laptop user wait long to learn that. */
const METADATA_PROBE_TIMEOUT_MS = 3_000;

export interface GoogleEndpoints {
  oauthToken: string;
  iamCredentials: string;
  /** host[:port] (or a URL) of the metadata server; empty for GCE_METADATA_HOST or the default. */
  metadataHost: string;
}

export const SETUP_HINT =
  'on a laptop run `gcloud auth application-default login`; on Vertex AI, GKE or a VM attach a service account ' +
  '(on GKE bind it with Workload Identity); elsewhere set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file';

/** Where the source credentials came from, for logs and `doctor`. Never holds secret material. */
export interface CredentialsInfo {
  kind: 'service_account' | 'authorized_user' | 'metadata' | 'impersonated_service_account' | 'external_account' | string;
  /** Plain words: "service-account key /etc/key.json", "gcloud user login (…/application_default_credentials.json)". */
  description: string;
  /** Whose credentials these are, when known before a token is fetched. */
  identity?: string;
}

export interface SourceCredentials {
  info: CredentialsInfo;
  /** An OAuth access token with the cloud-platform scope, cached until shortly before its expires_in. */
  accessToken(signal: AbortSignal): Promise<Token>;
  /** Forget the held access token (IAM answered 401 for it). */
  dropAccessToken(token: string): void;
  /** An ID token for `audience` minted by these credentials themselves, when the kind can. */
  idToken?(audience: string, signal: AbortSignal): Promise<Token>;
  close(): void;
}

export interface FindOptions {
  env: NodeJS.ProcessEnv;
  endpoints: GoogleEndpoints;
  logger: Logger;
  clock?: Clock;
  fetchTimeoutMs?: number;
}

/**
 * Application Default Credentials looked up once per provider and kept. A failed look-up is not kept: a user
 * who logs in or attaches a service account while the provider backs off is found on the next attempt.
 */
export class CredentialsLookup {
  private pending: Promise<SourceCredentials> | undefined;

  constructor(
    private readonly provider: string,
    private readonly options: FindOptions,
  ) {}

  get(): Promise<SourceCredentials> {
    return (this.pending ??= findCredentials(this.options).then(
      (source) => {
        this.options.logger.info('Google credentials found', { provider: this.provider, source: source.info.description, identity: source.info.identity });
        return source;
      },
      (err: unknown) => {
        this.pending = undefined;
        throw err;
      },
    ));
  }

  close(): void {
    this.pending?.then((s) => s.close()).catch(() => {});
  }
}

/** Finds Application Default Credentials; throws TokenFetchError with set-up help when there are none. */
export async function findCredentials(options: FindOptions): Promise<SourceCredentials> {
  const { env } = options;
  const explicit = env['GOOGLE_APPLICATION_CREDENTIALS'];
  if (explicit) {
    const json = readCredentialsFile(explicit, 'GOOGLE_APPLICATION_CREDENTIALS');
    return fromJson(json, explicit, options);
  }
  const wellKnown = wellKnownFile(env);
  const json = readIfPresent(wellKnown);
  if (json !== undefined) return fromJson(json, wellKnown, options);

  const metadata = new MetadataServer(options.endpoints.metadataHost, env);
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

/** The gcloud application-default credentials file for this environment. */
export function wellKnownFile(env: NodeJS.ProcessEnv): string {
  if (env['CLOUDSDK_CONFIG']) return path.join(env['CLOUDSDK_CONFIG'], 'application_default_credentials.json');
  if (process.platform === 'win32' && env['APPDATA']) return path.join(env['APPDATA'], 'gcloud', 'application_default_credentials.json');
  return path.join(env['HOME'] || homedir(), '.config', 'gcloud', 'application_default_credentials.json');
}

type Json = Record<string, unknown>;

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
  switch (json['type']) {
    case 'service_account':
      return serviceAccountKeyCredentials(json, file, options);
    case 'authorized_user':
      return userCredentials(json, file, options);
    case undefined:
      throw new TokenFetchError(`${file} has no "type"; expected a service-account key or an application-default login`, { hint: SETUP_HINT });
    default:
      return libraryCredentials(json, file, options);
  }
}

/** A TokenCache for an access token: fetched when asked for, kept until shortly before it expires. */
function accessTokenCache(name: string, fetch: (signal: AbortSignal) => Promise<Token>, options: FindOptions): TokenCache {
  const cacheOptions: ConstructorParameters<typeof TokenCache>[0] = {
    provider: name,
    fetch,
    background: false,
    backoffInitialMs: 0,
    backoffMaxMs: 0,
    // Failures surface (and are logged) through the provider's own cache.
  };
  if (options.clock) cacheOptions.clock = options.clock;
  if (options.fetchTimeoutMs !== undefined) cacheOptions.fetchTimeoutMs = options.fetchTimeoutMs;
  return new TokenCache(cacheOptions);
}

function withCache(info: CredentialsInfo, cache: TokenCache, extra: Partial<SourceCredentials> = {}): SourceCredentials {
  return {
    info,
    // The outer cache already backs off; this one only avoids fetching an access token per ID token.
    accessToken: () => cache.get().catch((err: unknown) => Promise.reject(unwrap(err))),
    dropAccessToken: (token) => cache.discard(token),
    close: () => cache.close(),
    ...extra,
  };
}

/** The inner cache wraps failures in CredentialsError; the outer one wants the plain cause and hint. */
function unwrap(err: unknown): unknown {
  if (err instanceof Error && 'provider' in err) {
    const message = err.message.replace(/^[^:]+: /, '');
    const hint = (err as { hint?: string }).hint;
    return new TokenFetchError(message, hint === undefined ? {} : { hint });
  }
  return err;
}

// ---------- service-account key ----------

function serviceAccountKeyCredentials(json: Json, file: string, options: FindOptions): SourceCredentials {
  const email = json['client_email'];
  const privateKey = json['private_key'];
  if (typeof email !== 'string' || typeof privateKey !== 'string') {
    throw new TokenFetchError(`${file} is a service-account key without client_email or private_key`, { hint: 'download a new JSON key for the service account' });
  }
  const key = { email, privateKey, keyId: typeof json['private_key_id'] === 'string' ? json['private_key_id'] : undefined };
  const tokenUrl = options.endpoints.oauthToken;
  const now = () => (options.clock ?? { now: Date.now }).now();
  const cache = accessTokenCache(
    'service-account key',
    async (signal) => {
      const answer = await jwtBearerGrant(key, tokenUrl, { scope: CLOUD_PLATFORM_SCOPE }, now(), signal);
      return accessToken(answer, now(), email);
    },
    options,
  );
  return withCache({ kind: 'service_account', description: `service-account key ${file}`, identity: email }, cache, {
    idToken: async (audience, signal) => {
      const answer = await jwtBearerGrant(key, tokenUrl, { target_audience: audience }, now(), signal);
      if (typeof answer['id_token'] !== 'string') throw new TokenFetchError(`the OAuth token endpoint ${tokenUrl} answered without an id_token`);
      return idToken(answer['id_token'], email);
    },
  });
}

/** RFC 7523 JWT-bearer grant with a service-account key, as Google's libraries do it. */
async function jwtBearerGrant(
  key: { email: string; privateKey: string; keyId: string | undefined },
  tokenUrl: string,
  claims: Record<string, string>,
  nowMs: number,
  signal: AbortSignal,
): Promise<Json> {
  const iat = Math.floor(nowMs / 1000);
  const header = { alg: 'RS256', typ: 'JWT', ...(key.keyId ? { kid: key.keyId } : {}) };
  const payload = { iss: key.email, aud: tokenUrl, iat, exp: iat + 3600, ...claims };
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(payload))}`;
  let signature: string;
  try {
    signature = sign('RSA-SHA256', Buffer.from(input), key.privateKey).toString('base64url');
  } catch (err) {
    throw new TokenFetchError(`the service-account key for ${key.email} cannot sign (${errorMessage(err)})`, { hint: 'the private_key in the key file is damaged; download a new key' });
  }
  const body = new URLSearchParams({ grant_type: JWT_BEARER, assertion: `${input}.${signature}` });
  const answer = await googleCall('the OAuth token endpoint', tokenUrl, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: body.toString(),
    signal,
  });
  if (answer.status !== 200) {
    const err = googleError(answer);
    throw new TokenFetchError(`the OAuth token endpoint refused the service-account key of ${key.email}: ${err}`, {
      status: answer.status,
      hint: /timeframe|expired|future/i.test(err)
        ? 'check this machine\'s clock (NTP): Google accepts assertions only within minutes of its own time'
        : /invalid_grant|signature|not found|disabled/i.test(err)
          ? 'the key may have been deleted or the service account disabled; create a new key, or better use Workload Identity instead of key files'
          : 'retrying with backoff',
    });
  }
  return parseJson(answer, 'the OAuth token endpoint');
}

// ---------- gcloud user login ----------

function userCredentials(json: Json, file: string, options: FindOptions): SourceCredentials {
  let client: UserRefreshClient;
  try {
    client = new (googleAuthLibrary().UserRefreshClient)({ endpoints: { oauth2TokenUrl: options.endpoints.oauthToken } });
    client.fromJSON(json as Parameters<UserRefreshClient['fromJSON']>[0]);
  } catch (err) {
    throw new TokenFetchError(`${file} is not a usable gcloud login (${errorMessage(err)})`, { hint: 'rerun `gcloud auth application-default login`' });
  }
  const info: CredentialsInfo = { kind: 'authorized_user', description: `gcloud user login (${file})` };
  const cache = accessTokenCache('gcloud user login', async () => {
    try {
      // Our cache asks only when it needs a new token; keep the library from answering with its own copy.
      client.credentials = { refresh_token: json['refresh_token'] as string };
      const { token } = await client.getAccessToken();
      const expiry = client.credentials.expiry_date;
      if (!token || typeof expiry !== 'number') throw new TokenFetchError('the gcloud login refresh answered without an access token or expiry');
      const idt = client.credentials.id_token;
      const email = idt ? decodeJwtClaims(idt)?.email : undefined;
      if (typeof email === 'string') info.identity = email;
      const t: Token = { value: token, expiresAt: expiry };
      if (info.identity) t.identity = info.identity;
      return t;
    } catch (err) {
      if (err instanceof TokenFetchError) throw err;
      throw new TokenFetchError(`refreshing the gcloud user login failed: ${libraryError(err)}`, {
        hint: 'the login may have expired or been revoked; rerun `gcloud auth application-default login`',
      });
    }
  }, options);
  return withCache(info, cache);
}

// ---------- other credential files (impersonated, workload identity federation) ----------

function libraryCredentials(json: Json, file: string, options: FindOptions): SourceCredentials {
  const kind = String(json['type']);
  const info: CredentialsInfo = { kind, description: `${kind} credentials (${file})` };
  const url = json['service_account_impersonation_url'];
  if (typeof url === 'string') {
    const target = /serviceAccounts\/([^:/]+):/.exec(url)?.[1];
    if (target) info.identity = decodeURIComponent(target);
  }
  let client: AuthClient | undefined;
  const cache = accessTokenCache(kind, async () => {
    try {
      client ??= await new (googleAuthLibrary().GoogleAuth)({ credentials: json as never, scopes: [CLOUD_PLATFORM_SCOPE] }).getClient();
      const { token } = await client.getAccessToken();
      const expiry = client.credentials.expiry_date;
      if (!token || typeof expiry !== 'number') throw new TokenFetchError(`the ${kind} credentials gave no access token with an expiry`);
      return { value: token, expiresAt: expiry };
    } catch (err) {
      if (err instanceof TokenFetchError) throw err;
      throw new TokenFetchError(`getting an access token from the ${kind} credentials in ${file} failed: ${libraryError(err)}`, { hint: SETUP_HINT });
    }
  }, options);
  return withCache(info, cache);
}

// ---------- metadata server ----------

export class MetadataServer {
  readonly host: string;
  readonly explicit: boolean;
  private readonly base: string;

  constructor(configured: string, env: NodeJS.ProcessEnv) {
    const chosen = configured || env['GCE_METADATA_HOST'] || env['GCE_METADATA_IP'] || '';
    this.explicit = chosen !== '';
    this.host = chosen || DEFAULT_METADATA_HOST;
    const withScheme = /^https?:\/\//.test(this.host) ? this.host : `http://${this.host}`;
    this.base = `${withScheme.replace(/\/+$/, '')}/computeMetadata/v1/instance/service-accounts/default`;
  }

  async email(signal: AbortSignal): Promise<string> {
    const text = await this.get('email', signal);
    if (!/^[^@\s]+@[^@\s]+$/.test(text)) throw new TokenFetchError('the metadata server gave no service-account email');
    return text;
  }

  async accessToken(signal: AbortSignal): Promise<Json> {
    const text = await this.get('token', signal);
    try {
      return JSON.parse(text) as Json;
    } catch {
      throw new TokenFetchError('the metadata server answered the token request with something that is not JSON');
    }
  }

  /** format=full: without it the token carries no email, and IAP's audit log shows only a number. */
  async identity(audience: string, signal: AbortSignal): Promise<string> {
    return this.get(`identity?audience=${encodeURIComponent(audience)}&format=full`, signal);
  }

  private async get(what: string, signal: AbortSignal): Promise<string> {
    const answer = await googleCall(`the metadata server at ${this.host}`, `${this.base}/${what}`, { headers: { 'metadata-flavor': 'Google' }, signal });
    if (answer.headers.get('metadata-flavor') !== 'Google') {
      throw new TokenFetchError(`${this.host} answered without Metadata-Flavor: Google, so it is not a metadata server`, {
        hint: 'check auth.endpoints.metadataHost / GCE_METADATA_HOST',
      });
    }
    if (answer.status !== 200) {
      throw new TokenFetchError(`the metadata server at ${this.host} answered ${answer.status} for ${what.split('?')[0]}: ${oneLine(answer.text)}`, {
        status: answer.status,
        hint:
          answer.status === 404
            ? 'no service account is attached to this VM/pod; attach one (GKE: Workload Identity annotation on the Kubernetes service account)'
            : 'retrying with backoff',
      });
    }
    return answer.text.trim();
  }
}

function metadataCredentials(metadata: MetadataServer, email: string, options: FindOptions): SourceCredentials {
  const now = () => (options.clock ?? { now: Date.now }).now();
  const cache = accessTokenCache('metadata server', async (signal) => accessToken(await metadata.accessToken(signal), now(), email), options);
  return withCache({ kind: 'metadata', description: `metadata server ${metadata.host} (attached service account)`, identity: email }, cache, {
    idToken: async (audience, signal) => idToken(await metadata.identity(audience, signal), email),
  });
}

// ---------- HTTP ----------

export interface GoogleAnswer {
  status: number;
  text: string;
  headers: Headers;
}

/** One request to a Google endpoint. Redirects are never followed: a token must not travel elsewhere. */
export async function googleCall(what: string, url: string, init: RequestInit & { signal: AbortSignal }): Promise<GoogleAnswer> {
  let res: Response;
  try {
    res = await fetch(url, { ...init, redirect: 'manual' });
  } catch (err) {
    if (init.signal.aborted) throw init.signal.reason instanceof Error ? init.signal.reason : new TokenFetchError(`${what} did not answer in time`);
    throw new TokenFetchError(`cannot reach ${what} (${new URL(url).origin}): ${networkCause(err)}`, { hint: 'check network access (proxy, firewall, VPC Service Controls) to that endpoint' });
  }
  let text: string;
  try {
    text = await res.text();
  } catch (err) {
    throw new TokenFetchError(`${what} broke off its answer: ${networkCause(err)}`);
  }
  return { status: res.status, text, headers: res.headers };
}

function networkCause(err: unknown): string {
  const cause = (err as { cause?: { code?: string; message?: string } }).cause;
  return cause?.code ?? cause?.message ?? errorMessage(err);
}

export function parseJson(answer: GoogleAnswer, what: string): Json {
  try {
    const json = JSON.parse(answer.text) as unknown;
    if (typeof json === 'object' && json !== null && !Array.isArray(json)) return json as Json;
  } catch {
    // fall through
  }
  throw new TokenFetchError(`${what} answered ${answer.status} with something that is not JSON: ${oneLine(answer.text)}`, {
    hint: 'a proxy or captive portal may be in the way; check the endpoint URL',
  });
}

/** Google's error text from either of its shapes: {"error":{"code","message","status"}} or OAuth's. */
export function googleError(answer: GoogleAnswer): string {
  try {
    const json = JSON.parse(answer.text) as { error?: unknown; error_description?: unknown };
    if (typeof json.error === 'object' && json.error !== null) {
      const e = json.error as { status?: unknown; message?: unknown };
      return `${answer.status} ${typeof e.status === 'string' ? e.status + ' ' : ''}${typeof e.message === 'string' ? e.message : ''}`.trim();
    }
    if (typeof json.error === 'string') {
      return `${json.error}${typeof json.error_description === 'string' ? `: ${json.error_description}` : ''}`;
    }
  } catch {
    // not JSON
  }
  return `${answer.status} ${oneLine(answer.text)}`.trim();
}

function libraryError(err: unknown): string {
  const data = (err as { response?: { data?: { error?: unknown; error_description?: unknown } } }).response?.data;
  if (data && typeof data.error === 'string') return `${data.error}${typeof data.error_description === 'string' ? `: ${data.error_description}` : ''}`;
  return errorMessage(err);
}

/**
 * Credentials inside an unexpected answer (a token under a field name we do not read, a JWT, a ya29 access
 * token, a refresh token): these answers are echoed into errors, which reach logs and 503 bodies.
 */
const CREDENTIAL_FIELD = /("[^"]*(?:token|secret|key|assertion|password|credential)[^"]*"\s*:\s*)"[^"]*"/gi;
const CREDENTIAL_VALUE = /\beyJ[\w-]*\.[\w-]*(?:\.[\w-]*)?|\bya29\.[\w.-]+|\b1\/\/[\w-]{10,}/g;

/** Error text is shown to users: one line, bounded, never a whole HTML page, never a credential. */
export function oneLine(text: string, max = 200): string {
  const flat = text.replace(/\s+/g, ' ').trim().replace(CREDENTIAL_FIELD, '$1"[REDACTED]"').replace(CREDENTIAL_VALUE, '[REDACTED]');
  return flat.length > max ? `${flat.slice(0, max)}…` : flat;
}

function b64url(text: string): string {
  return Buffer.from(text, 'utf8').toString('base64url');
}

// ---------- params shared by the Google providers ----------

export const SERVICE_ACCOUNT_EMAIL = /^[a-z0-9][a-z0-9-]{4,28}[a-z0-9]@[a-z0-9-.:]+\.gserviceaccount\.com$/i;

/** `client_id` is the audience: the IAP OAuth client id, or a Cloud Run service URL for Cloud Run IAM. */
export function clientIdProblems(params: Record<string, unknown>, planPath: string, type: string): { path: string; message: string }[] {
  const value = params['client_id'];
  const at = `${planPath}.params.client_id`;
  if (value === undefined || value === null || value === '') {
    return [{ path: at, message: `required for ${type}: the OAuth client id of the IAP-protected app (the token's audience), e.g. 1234-abc.apps.googleusercontent.com` }];
  }
  if (typeof value !== 'string') return [{ path: at, message: `must be a string, got ${typeof value}` }];
  if (/\s/.test(value)) return [{ path: at, message: `"${value}" contains whitespace; copy the client id exactly from APIs & Services → Credentials` }];
  return [];
}

/**
 * What to check when the upstream rejects fresh ID tokens: the audience (IAP's OAuth client id) for 401, the
 * identity's IAP role for 403. `planPath` is where the provider's params live (`auth`, `auth.providers[1]`).
 */
export function upstreamRejectionHint(planPath: string, audience: string, status: number, identity: string | undefined): string {
  const key = `${planPath}.params.client_id`;
  const audienceCheck =
    `the token audience, ${key} = "${audience}" (kedro-vertexai: request_header_provider_params.client_id), is likely not the OAuth client id ` +
    "the upstream's IAP expects nor one of its programmatic clients: set it to IAP's client id (Security → Identity-Aware Proxy → the " +
    'backend service → ⋮ → Edit OAuth client, or gcloud iap settings get), or add it to the programmaticClients of the IAP settings';
  if (status !== 403) return audienceCheck;
  return (
    `${identity ?? 'the identity the token is for'} likely lacks IAP-secured Web App User (roles/iap.httpsResourceAccessor) on the app; ` +
    `grant it, or if the upstream answers 403 to tokens it does not accept at all: ${audienceCheck}`
  );
}

/** The audience the token must carry. */
export function audienceOf(token: Token, expected: string, what: string): Token {
  if (token.audience !== undefined && token.audience !== expected) {
    throw new TokenFetchError(`${what} returned a token for audience "${token.audience}" instead of "${expected}"`, {
      hint: 'the upstream would reject it; check auth.params.client_id and the endpoint configuration',
    });
  }
  return token;
}

/** google-auth-library takes about 50 ms to load; only credential files it parses need it, so it loads on first use. */
function googleAuthLibrary(): typeof GoogleAuthLibrary {
  return createRequire(import.meta.url)('google-auth-library') as typeof GoogleAuthLibrary;
}
