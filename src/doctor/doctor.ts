import type { Dispatcher } from 'undici';
import { HeaderInjector } from '../auth/injector.js';
import type { ActiveProvider } from '../auth/injector.js';
import { planProviders } from '../auth/registry.js';
import type { ProviderPlan } from '../auth/registry.js';
import type { HeaderMap } from '../auth/provider.js';
import { decodeJwtClaims } from '../auth/jwt.js';
import { headerValue } from '../auth/provider.js';
import type { IdTokenClaims } from '../auth/jwt.js';
import { oneLine } from '../auth/google/http.js';
import { IAP_USER_ADVICE } from '../auth/google-oauth.js';
import type { CredentialsInfo } from '../auth/google/source.js';
import type { LoadedConfig } from '../config/load.js';
import { Egress } from '../config/egress.js';
import type { KvxConfig } from '../config/schema.js';
import { errorMessage } from '../errors.js';
import { silentLogger } from '../log/logger.js';
import type { Logger } from '../log/logger.js';
import { mlflowDispatcher, undiciRequest } from '../mlflow/client.js';
import { IAP_GENERATED_HEADER, IAP_ROLE } from '../proxy/iap.js';

/**
 * `kvx-proxy doctor`: walks the path a request takes (config → provider → credentials → token → upstream)
 * with the same config the proxy uses and says, step by step, what works and, when something does not,
 * the likely cause in plain words. It shows audience, email and expiry of the token, never the token.
 */

export type StepState = 'ok' | 'fail' | 'warn' | 'skip';

export interface DoctorStep {
  name: string;
  state: StepState;
  detail: string;
  /** Likely cause and fix, for steps that did not pass. */
  cause?: string;
}

export interface DoctorReport {
  ok: boolean;
  steps: DoctorStep[];
}

export interface DoctorOptions {
  env: NodeJS.ProcessEnv;
  logger?: Logger;
  /** Per upstream request. */
  timeoutMs?: number;
  /** The authenticated call; any cheap GET of the MLflow API. */
  apiPath?: string;
  now?: () => number;
}

export const DEFAULT_API_PATH = '/api/2.0/mlflow/experiments/search?max_results=1';
const CLOCK_SKEW_MS = 60_000;

export async function runDoctor(loaded: LoadedConfig, options: DoctorOptions): Promise<DoctorReport> {
  const steps: DoctorStep[] = [];
  const add = (step: DoctorStep) => steps.push(step);
  const now = options.now ?? Date.now;
  const { config } = loaded;

  const { plans, problems } = planProviders(config, options.env);
  if (problems.length > 0) {
    for (const p of problems) add({ name: 'config', state: 'fail', detail: `${p.path}: ${p.message}` });
    return finish(steps);
  }
  if (plans.length === 0) add({ name: 'provider', state: 'warn', detail: 'auth.provider is none: requests are forwarded without credentials' });
  for (const plan of plans) {
    add({ name: `provider ${plan.type}`, state: 'ok', detail: `selected because ${plan.reason}; sets ${plan.header}${plan.scheme ? ` (${plan.scheme} …)` : ''}` });
  }

  let egress: Egress;
  try {
    egress = Egress.fromConfig(config, options.env);
  } catch (err) {
    add({ name: 'egress', state: 'fail', detail: errorMessage(err) });
    return finish(steps);
  }
  if (egress.active) for (const step of egressSteps(config, egress)) add(step);
  else add({ name: 'egress', state: 'ok', detail: 'direct connections: no egress.proxy, HTTPS_PROXY or HTTP_PROXY, no egress.hostAliases' });

  let injector: HeaderInjector | undefined;
  try {
    injector = await HeaderInjector.create(plans, { config, logger: options.logger ?? silentLogger, baseDir: loaded.baseDir, env: options.env, egress });
  } catch (err) {
    add({ name: 'provider', state: 'fail', detail: errorMessage(err), ...hintOf(err) });
    await egress.close();
    return finish(steps);
  }

  const claimsByHeader = new Map<string, IdTokenClaims>();
  /** Set when a gcloud user login's own ID token is sent (Cloud Run IAM): an IAP rejecting it gets that advice. */
  const userOwnToken = { used: false };
  let headers: HeaderMap | undefined = {};
  try {
    for (const plan of plans) {
      if (!injector.active.some((a) => a.plan === plan)) add({ name: `provider ${plan.type}`, state: 'skip', detail: 'inContext() returned false: this provider does not apply' });
    }
    for (const active of injector.active) {
      const got = await checkProvider(active, add, now, userOwnToken);
      if (got === undefined) headers = undefined;
      else if (headers !== undefined) {
        Object.assign(headers, got.headers);
        if (got.claims) claimsByHeader.set(active.plan.header.toLowerCase(), got.claims);
      }
    }
    if (config.upstream.url === '') {
      add({ name: 'upstream', state: 'skip', detail: 'upstream.url is not set (--upstream): upstream checks skipped' });
    } else if (headers === undefined) {
      add({ name: 'upstream', state: 'skip', detail: 'no credentials, so the upstream checks would only show the rejection' });
    } else {
      await checkUpstream(loaded, egress, headers, claimsByHeader, plans, add, options, userOwnToken.used);
    }
  } finally {
    await injector.close();
    await egress.close();
  }
  return finish(steps);
}

/** Which proxy each kind of call goes through, and the host aliases: the words of config/egress.ts's decision. */
function egressSteps(config: KvxConfig, egress: Egress): DoctorStep[] {
  const steps: DoctorStep[] = [];
  if (config.upstream.url !== '') steps.push({ name: 'egress upstream', state: 'ok', detail: `${new URL(config.upstream.url).origin} ${egress.describe(config.upstream.url)}` });
  const { oauthToken, iamCredentials } = config.auth.endpoints;
  for (const [what, url] of [
    ['OAuth token endpoint', oauthToken],
    ['IAM Credentials', iamCredentials],
  ] as const) {
    if (URL.canParse(url)) steps.push({ name: `egress ${what}`, state: 'ok', detail: `${new URL(url).origin} ${egress.describe(url)}` });
  }
  steps.push({ name: 'egress metadata server', state: 'ok', detail: 'directly: the metadata server is never proxied' });
  if (egress.hostAliases.size > 0) {
    steps.push({ name: 'egress host aliases', state: 'ok', detail: [...egress.hostAliases].map(([name, address]) => `${name} → ${address}`).join(', ') });
  }
  return steps;
}

function finish(steps: DoctorStep[]): DoctorReport {
  return { ok: steps.every((s) => s.state !== 'fail'), steps };
}

function optional(cause: string | undefined): { cause?: string } {
  return cause === undefined ? {} : { cause };
}

function hintOf(err: unknown): { cause?: string } {
  const hint = (err as { hint?: unknown } | undefined)?.hint;
  return typeof hint === 'string' && hint !== '' ? { cause: hint } : {};
}

interface ProviderResult {
  headers: HeaderMap;
  claims?: IdTokenClaims;
}

async function checkProvider(active: ActiveProvider, add: (s: DoctorStep) => void, now: () => number, userOwnToken: { used: boolean }): Promise<ProviderResult | undefined> {
  const { plan, provider } = active;
  const describable = provider as { credentialsInfo?: () => Promise<CredentialsInfo> };
  let info: CredentialsInfo | undefined;
  if (typeof describable.credentialsInfo === 'function') {
    try {
      info = await describable.credentialsInfo();
    } catch (err) {
      add({ name: 'credentials', state: 'fail', detail: errorMessage(err), ...hintOf(err) });
      return undefined;
    }
  }

  let headers: HeaderMap;
  try {
    headers = await provider.requestHeaders();
  } catch (err) {
    if (info) add({ name: 'credentials', state: 'ok', detail: describeCredentials(info) });
    add({ name: `token (${provider.name})`, state: 'fail', detail: errorMessage(err), ...optional(tokenCause(err)) });
    return undefined;
  }
  // The identity of a gcloud login is known only once it has been used.
  if (typeof describable.credentialsInfo === 'function') info = await describable.credentialsInfo().catch(() => info);
  if (info) add({ name: 'credentials', state: 'ok', detail: describeCredentials(info) });

  const value = headerValue(headers, plan.header);
  const names = Object.keys(headers);
  if (value === undefined) {
    add({ name: `headers (${provider.name})`, state: names.length > 0 ? 'ok' : 'warn', detail: names.length > 0 ? `sets ${names.join(', ')}` : 'sets no header' });
    return { headers };
  }
  const raw = plan.scheme && value.startsWith(`${plan.scheme} `) ? value.slice(plan.scheme.length + 1) : value;
  const claims = decodeJwtClaims(raw);
  if (claims === undefined) {
    add({ name: `headers (${provider.name})`, state: 'ok', detail: `sets ${names.join(', ')} (not a JWT, so no audience or expiry to show)` });
    return { headers };
  }
  // google-oauth with a gcloud user login sends the login's own ID token (see google-oauth.ts): its audience is the
  // login's OAuth client, never client_id, and that is what Cloud Run IAM accepts.
  const ownToken = plan.type === 'google-oauth' && info?.kind === 'authorized_user';
  checkClaims(claims, plan, provider.name, add, now(), !ownToken);
  if (ownToken) {
    userOwnToken.used = true;
    add({
      name: 'identity',
      state: 'ok',
      detail:
        `the gcloud user login's own ID token (audience ${String(claims.aud)}, the login's OAuth client): Cloud Run IAM accepts it (grant ` +
        `${claims.email ?? 'the user'} roles/run.invoker); an IAP would not. ${IAP_USER_ADVICE}`,
    });
  }
  return { headers, claims };
}

function describeCredentials(info: CredentialsInfo): string {
  const user = info.kind === 'authorized_user' || info.kind === 'google-user';
  const whose = info.identity && !(info.kind === 'google-user') ? ` — ${user ? 'user' : 'service account'} ${info.identity}` : '';
  return `${info.description}${whose}`;
}

function checkClaims(claims: IdTokenClaims, plan: ProviderPlan, name: string, add: (s: DoctorStep) => void, now: number, audienceIsClientId = true): void {
  const aud = Array.isArray(claims.aud) ? claims.aud.join(', ') : String(claims.aud ?? '(none)');
  const exp = typeof claims.exp === 'number' ? claims.exp * 1000 : undefined;
  const parts = [`audience ${aud}`, `email ${claims.email ?? '(none)'}`];
  if (claims.iss) parts.push(`issuer ${claims.iss}`);
  if (exp !== undefined) parts.push(`expires ${new Date(exp).toISOString()} (in ${Math.round((exp - now) / 60_000)} min)`);
  const expected = audienceIsClientId && typeof plan.params['client_id'] === 'string' ? plan.params['client_id'] : undefined;
  if (expected !== undefined && !String(aud).split(', ').includes(expected)) {
    add({
      name: `token (${name})`,
      state: 'fail',
      detail: `minted, but ${parts.join('; ')}`,
      cause: `wrong audience: the token is for "${aud}" but auth.params.client_id is "${expected}"`,
    });
    return;
  }
  if (exp !== undefined && exp <= now) {
    add({ name: `token (${name})`, state: 'fail', detail: `minted, but already expired: ${parts.join('; ')}`, cause: clockCause() });
    return;
  }
  add({ name: `token (${name})`, state: 'ok', detail: `minted: ${parts.join('; ')}` });
  if (typeof claims.iat === 'number' && Math.abs(claims.iat * 1000 - now) > CLOCK_SKEW_MS) {
    const skew = Math.round((now - claims.iat * 1000) / 1000);
    add({
      name: 'clock',
      state: 'warn',
      detail: `this machine's clock is ${Math.abs(skew)} s ${skew > 0 ? 'ahead of' : 'behind'} the token issuer's`,
      cause: clockCause(),
    });
  }
}

function clockCause(): string {
  return 'clock skew: this machine\'s clock is off; IAP checks expiry with no leeway, so sync the clock (NTP, `timedatectl set-ntp true`)';
}

function tokenCause(err: unknown): string | undefined {
  return hintOf(err).cause;
}

async function checkUpstream(
  loaded: LoadedConfig,
  egress: Egress,
  headers: HeaderMap,
  claims: Map<string, IdTokenClaims>,
  plans: readonly ProviderPlan[],
  add: (s: DoctorStep) => void,
  options: DoctorOptions,
  userOwnToken = false,
): Promise<void> {
  const causeOf = (answer: Answer) =>
    userOwnToken && answer.headers['x-goog-iap-generated-response'] !== undefined
      ? `IAP answered: a gcloud user login cannot get through IAP. ${IAP_USER_ADVICE}`
      : upstreamCause(answer, claims, plans, config.auth.header);
  const { config } = loaded;
  const base = config.upstream.url.replace(/\/+$/, '');
  let dispatcher: Dispatcher;
  try {
    dispatcher = mlflowDispatcher(config, egress);
  } catch (err) {
    add({ name: 'upstream', state: 'fail', detail: `cannot set up TLS for upstream: ${errorMessage(err)}`, cause: 'check upstream.caFile, upstream.certFile and upstream.keyFile' });
    return;
  }
  try {
    const health = await get(`${base}/health`, headers, dispatcher, options.timeoutMs ?? 15_000);
    if ('error' in health) {
      add({ name: 'upstream /health', state: 'fail', detail: health.error, cause: `cannot reach ${base}: check upstream.url, DNS, firewall or VPN` });
      return;
    }
    add({
      name: 'upstream /health',
      state: health.status === 200 ? 'ok' : 'fail',
      detail: `${health.status} ${oneLine(health.body, 120)}`,
      ...(health.status === 200 ? {} : { cause: causeOf(health) }),
    });
    const apiPath = options.apiPath ?? DEFAULT_API_PATH;
    const api = await get(`${base}${apiPath}`, headers, dispatcher, options.timeoutMs ?? 15_000);
    if ('error' in api) {
      add({ name: `upstream GET ${apiPath}`, state: 'fail', detail: api.error, cause: 'the upstream stopped answering between two requests' });
      return;
    }
    if (api.status === 200) {
      add({ name: `upstream GET ${apiPath}`, state: 'ok', detail: '200: authenticated MLflow API call works' });
    } else if (api.status !== 401 && api.status !== 403 && mlflowErrorCode(api.body) !== undefined) {
      // MLflow itself answered, so the credentials got through every auth layer in front of it.
      add({ name: `upstream GET ${apiPath}`, state: 'ok', detail: `credentials accepted; MLflow answered ${api.status} ${mlflowErrorCode(api.body)}` });
    } else {
      add({ name: `upstream GET ${apiPath}`, state: 'fail', detail: `${api.status} ${oneLine(api.body, 160)}`, cause: causeOf(api) });
    }
  } finally {
    await dispatcher.close().catch(() => {});
  }
}

function mlflowErrorCode(body: string): string | undefined {
  try {
    const json = JSON.parse(body) as { error_code?: unknown };
    return typeof json.error_code === 'string' ? json.error_code : undefined;
  } catch {
    return undefined;
  }
}

interface Answer {
  url: string;
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

async function get(url: string, headers: HeaderMap, dispatcher: Dispatcher, timeoutMs: number): Promise<Answer | { error: string }> {
  try {
    const res = await undiciRequest()(url, { method: 'GET', headers: { accept: 'application/json', ...headers }, dispatcher, signal: AbortSignal.timeout(timeoutMs) });
    const body = await res.body.text();
    return { url, status: res.statusCode, headers: res.headers, body: body.slice(0, 2000) };
  } catch (err) {
    const cause = (err as { cause?: { code?: string; message?: string } }).cause;
    const code = cause?.code ?? (err as { code?: string }).code;
    // The egress proxy's refusals say what to fix in their message.
    const egress = code?.startsWith('KVX_EGRESS_PROXY_') ? `: ${cause?.code === code ? cause.message : errorMessage(err)}` : '';
    return { error: `no answer from ${new URL(url).origin}: ${code ?? errorMessage(err)}${egress}` };
  }
}

/** Reads a rejection the way someone who has debugged IAP a few times would. */
export function upstreamCause(answer: Answer, claims: Map<string, IdTokenClaims>, plans: readonly ProviderPlan[], authHeader: string): string {
  // IAP marks its own answers; the body test is for answers relayed by something that drops the header.
  const fromIap = String(answer.headers[IAP_GENERATED_HEADER] ?? '').toLowerCase() === 'true' || /Invalid IAP credentials/.test(answer.body);
  const challenge = String(answer.headers['www-authenticate'] ?? '');
  const location = String(answer.headers['location'] ?? '');
  const hasBasic = plans.some((p) => p.type === 'basic');
  if (answer.status >= 300 && answer.status < 400 && /accounts\.google\.com/.test(location)) {
    return 'IAP sent the request to the Google sign-in page: it found no token it accepts. The token must be in Authorization or Proxy-Authorization (auth.header) and be an ID token, not an access token';
  }
  if (fromIap && answer.status === 401) {
    const said = `IAP says: "${iapReason(answer.body)}"`;
    if (/audience/i.test(answer.body)) {
      return `${said}: wrong client id / audience: auth.params.client_id must be the OAuth client id of this IAP-protected resource (Security → Identity-Aware Proxy → the resource → Edit OAuth client), not another app's`;
    }
    if (/empty token|missing/i.test(answer.body)) {
      return `${said}: IAP found no token: it reads Authorization and Proxy-Authorization only, and auth.header is ${authHeader}`;
    }
    if (/expired|future|iat|exp\b/i.test(answer.body)) return `${said}: ${clockCause()}`;
    return (
      `${said}: either client_id is not this resource's IAP OAuth client id, or IAP programmatic access is not allowed ` +
      "for that client (add it to the resource's programmatic clients allowlist: gcloud iap settings set with programmaticClients)"
    );
  }
  if (fromIap && answer.status === 403) {
    const email = [...claims.values()].map((c) => c.email).find(Boolean);
    return (
      `the token is valid but ${email ?? 'its identity'} is not allowed through IAP (IAP says: "${iapReason(answer.body)}"): grant it the IAP-secured Web App User role ` +
      `(${IAP_ROLE}) on the IAP-secured resource in front of ${new URL(answer.url).origin}; a new token cannot fix this`
    );
  }
  if (answer.status === 401 && /^Basic/i.test(challenge)) {
    return hasBasic
      ? 'MLflow\'s basic-auth rejected the username or password of the basic provider'
      : authHeader.toLowerCase() === 'authorization'
        ? 'the request passed the auth layer but MLflow itself uses basic auth: put the IAP token in Proxy-Authorization (auth.header: Proxy-Authorization) and add a basic provider for Authorization'
        : 'MLflow itself uses basic auth: add a basic provider (auth.providers) for the Authorization header';
  }
  if (answer.status === 401 || answer.status === 403) {
    return (
      'the upstream (not IAP: its answer lacks X-Goog-IAP-Generated-Response) rejected the credentials; check that the token audience is what it expects ' +
      '(Cloud Run IAM: the service URL or a custom audience). For Cloud Run IAM without IAP whose Authorization header must carry something else, ' +
      'send the ID token in X-Serverless-Authorization (auth.header)'
    );
  }
  if (answer.status === 404) return 'the upstream answered 404: check that upstream.url is the MLflow server, including its path prefix (https://host/mlflow)';
  if (answer.status >= 500) return 'the upstream (or a load balancer in front of it) failed; check the MLflow server\'s logs';
  return `unexpected answer ${answer.status}`;
}

/** IAP's reason, from its plain-text body ("Invalid IAP credentials: JWT has expired"): one line, no credential. */
function iapReason(body: string): string {
  const text = oneLine(body.replace(/<[^>]*>/g, ' '), 160);
  return text.replace(/^Invalid IAP credentials:\s*/i, '') || '(no reason given)';
}

const MARK: Record<StepState, string> = { ok: 'OK  ', fail: 'FAIL', warn: 'WARN', skip: 'SKIP' };

export function formatReport(report: DoctorReport): string {
  const lines: string[] = [];
  for (const step of report.steps) {
    lines.push(`[${MARK[step.state]}] ${step.name}: ${step.detail}`);
    if (step.cause && step.state !== 'ok') lines.push(`       likely cause: ${step.cause}`);
  }
  const failed = report.steps.filter((s) => s.state === 'fail').length;
  lines.push(failed === 0 ? 'All checks passed.' : `${failed} check${failed === 1 ? '' : 's'} failed.`);
  return lines.join('\n') + '\n';
}
