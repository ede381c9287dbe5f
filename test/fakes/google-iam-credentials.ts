/**
 * IAM Service Account Credentials API, `generateIdToken` and `generateAccessToken`: requires a valid access token
 * (from the fake OAuth endpoint, metadata server or STS), checks that the caller may impersonate the account (the
 * Token Creator role, configurable; a federated principal:// identity counts like any member), follows a
 * delegation chain, and answers in Google's error shape {"error": {"code", "message", "status"}}.
 */
import { AccessTokenStore, GoogleIssuer, count, startFakeServer } from './google-common.js';
import type { FakeServer } from './google-common.js';

export interface FakeIamOptions {
  issuer?: GoogleIssuer;
  accessTokens?: AccessTokenStore;
  lifetimeSeconds?: number;
  /** Service accounts that exist, each with the identities holding Token Creator on it. */
  serviceAccounts?: Record<string, readonly string[]>;
}

export interface GenerateIdTokenCall {
  serviceAccount: string;
  caller: string;
  body: { audience?: unknown; includeEmail?: unknown; delegates?: unknown };
}

export interface GenerateAccessTokenCall {
  serviceAccount: string;
  caller: string;
  body: { scope?: unknown; delegates?: unknown; lifetime?: unknown };
}

export interface FakeIam extends FakeServer {
  issuer: GoogleIssuer;
  accessTokens: AccessTokenStore;
  lifetimeSeconds: number;
  serviceAccounts: Record<string, string[]>;
  calls: GenerateIdTokenCall[];
  accessTokenCalls: GenerateAccessTokenCall[];
  /** Answer every call with this Google error instead (e.g. 429 RESOURCE_EXHAUSTED). */
  forceError: { code: number; status: string; message: string } | undefined;
}

const ROUTE = /^\/v1\/projects\/-\/serviceAccounts\/([^/:]+):(generateIdToken|generateAccessToken)$/;
/** Google refuses longer lifetimes unless an organisation policy allows up to 12 h. */
const MAX_LIFETIME_SECONDS = 3600;

export async function startFakeIam(options: FakeIamOptions = {}): Promise<FakeIam> {
  const extra = {
    issuer: options.issuer ?? new GoogleIssuer(),
    accessTokens: options.accessTokens ?? new AccessTokenStore(),
    lifetimeSeconds: options.lifetimeSeconds ?? 3600,
    serviceAccounts: Object.fromEntries(Object.entries(options.serviceAccounts ?? {}).map(([k, v]) => [k, [...v]])),
    calls: [] as GenerateIdTokenCall[],
    accessTokenCalls: [] as GenerateAccessTokenCall[],
    forceError: undefined as FakeIam['forceError'],
  };
  const server = await startFakeServer((req, rawBody, respond) => {
    const error = (code: number, status: string, message: string) => respond(code, { error: { code, message, status } });
    count(self, 'all');
    const match = ROUTE.exec(new URL(req.url ?? '/', 'http://iam').pathname);
    if (req.method !== 'POST' || match === null) {
      error(404, 'NOT_FOUND', 'The requested URL was not found on this server.');
      return;
    }
    const method = match[2]!;
    count(self, method);
    if (self.failure === 'error500') return error(500, 'INTERNAL', 'Internal error encountered.');
    if (self.forceError) return error(self.forceError.code, self.forceError.status, self.forceError.message);
    const caller = self.accessTokens.check(req.headers.authorization);
    if ('reason' in caller) {
      return error(
        401,
        'UNAUTHENTICATED',
        'Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.',
      );
    }
    let body: Record<string, unknown>;
    try {
      body = JSON.parse(rawBody || '{}') as Record<string, unknown>;
    } catch {
      return error(400, 'INVALID_ARGUMENT', 'Invalid JSON payload received.');
    }
    const serviceAccount = decodeURIComponent(match[1]!);
    if (method === 'generateIdToken') self.calls.push({ serviceAccount, caller: caller.email, body });
    else self.accessTokenCalls.push({ serviceAccount, caller: caller.email, body });
    if (method === 'generateIdToken' && (typeof body['audience'] !== 'string' || body['audience'] === '')) return error(400, 'INVALID_ARGUMENT', 'Audience must be specified.');
    if (method === 'generateAccessToken') {
      const scope = body['scope'];
      if (!Array.isArray(scope) || scope.length === 0 || !scope.every((x) => typeof x === 'string' && x !== '')) {
        return error(400, 'INVALID_ARGUMENT', 'Scope must be specified.');
      }
      const lifetime = body['lifetime'];
      if (lifetime !== undefined && (typeof lifetime !== 'string' || !/^\d+(\.\d+)?s$/.test(lifetime) || parseFloat(lifetime) > MAX_LIFETIME_SECONDS)) {
        return error(400, 'INVALID_ARGUMENT', `The lifetime ${String(lifetime)} is invalid or exceeds ${MAX_LIFETIME_SECONDS}s.`);
      }
    }
    const delegates = Array.isArray(body['delegates']) ? body['delegates'].map((d) => String(d)) : [];
    if (delegates.some((d) => !d.startsWith('projects/-/serviceAccounts/'))) {
      return error(400, 'INVALID_ARGUMENT', 'Delegates must be of the form projects/-/serviceAccounts/{ACCOUNT_EMAIL_OR_UNIQUEID}.');
    }
    const chain = [...delegates.map((d) => d.slice('projects/-/serviceAccounts/'.length)), serviceAccount];
    let actor = caller.email;
    for (const account of chain) {
      const creators = self.serviceAccounts[account];
      if (creators === undefined) return error(404, 'NOT_FOUND', `Not found; Gaia id not found for email ${account}`);
      if (!creators.includes(actor)) {
        const permission = method === 'generateIdToken' ? 'iam.serviceAccounts.getOpenIdToken' : 'iam.serviceAccounts.getAccessToken';
        return error(403, 'PERMISSION_DENIED', `Permission '${permission}' denied on resource (or it may not exist).`);
      }
      actor = account;
    }
    if (self.failure === 'garbage') return respond(200, { tokn: 'nope' });
    if (method === 'generateAccessToken') {
      const seconds = typeof body['lifetime'] === 'string' ? Math.floor(parseFloat(body['lifetime'])) : MAX_LIFETIME_SECONDS;
      const issued = self.accessTokens.issue(serviceAccount, Math.min(seconds, self.lifetimeSeconds), self.failure === 'expired');
      return respond(200, { accessToken: issued.access_token, expireTime: new Date(Date.now() + issued.expires_in * 1000).toISOString() });
    }
    const token = self.issuer.idToken({
      audience: self.failure === 'wrong-audience' ? 'some-other-audience' : (body['audience'] as string),
      email: serviceAccount,
      lifetimeSeconds: self.lifetimeSeconds,
      expired: self.failure === 'expired',
      extra: body['includeEmail'] === true ? {} : { email: undefined, email_verified: undefined },
    });
    respond(200, { token });
  });
  const self: FakeIam = Object.assign(server, extra);
  return self;
}
