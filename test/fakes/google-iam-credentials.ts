/**
 * IAM Service Account Credentials API, `generateIdToken` only: requires a valid access token (from the fake
 * OAuth endpoint or metadata server), checks that the caller may impersonate the account (the Token
 * Creator role, configurable), follows a delegation chain, and answers in Google's error shape
 * {"error": {"code", "message", "status"}}.
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

export interface FakeIam extends FakeServer {
  issuer: GoogleIssuer;
  accessTokens: AccessTokenStore;
  lifetimeSeconds: number;
  serviceAccounts: Record<string, string[]>;
  calls: GenerateIdTokenCall[];
  /** Answer every call with this Google error instead (e.g. 429 RESOURCE_EXHAUSTED). */
  forceError: { code: number; status: string; message: string } | undefined;
}

const ROUTE = /^\/v1\/projects\/-\/serviceAccounts\/([^/:]+):generateIdToken$/;

export async function startFakeIam(options: FakeIamOptions = {}): Promise<FakeIam> {
  const extra = {
    issuer: options.issuer ?? new GoogleIssuer(),
    accessTokens: options.accessTokens ?? new AccessTokenStore(),
    lifetimeSeconds: options.lifetimeSeconds ?? 3600,
    serviceAccounts: Object.fromEntries(Object.entries(options.serviceAccounts ?? {}).map(([k, v]) => [k, [...v]])),
    calls: [] as GenerateIdTokenCall[],
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
    count(self, 'generateIdToken');
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
    let body: GenerateIdTokenCall['body'];
    try {
      body = JSON.parse(rawBody || '{}') as GenerateIdTokenCall['body'];
    } catch {
      return error(400, 'INVALID_ARGUMENT', 'Invalid JSON payload received.');
    }
    const serviceAccount = decodeURIComponent(match[1]!);
    self.calls.push({ serviceAccount, caller: caller.email, body });
    if (typeof body.audience !== 'string' || body.audience === '') return error(400, 'INVALID_ARGUMENT', 'Audience must be specified.');
    const delegates = Array.isArray(body.delegates) ? body.delegates.map((d) => String(d).replace(/^projects\/-\/serviceAccounts\//, '')) : [];
    const chain = [...delegates, serviceAccount];
    let actor = caller.email;
    for (const account of chain) {
      const creators = self.serviceAccounts[account];
      if (creators === undefined) return error(404, 'NOT_FOUND', `Not found; Gaia id not found for email ${account}`);
      if (!creators.includes(actor)) {
        return error(403, 'PERMISSION_DENIED', "Permission 'iam.serviceAccounts.getOpenIdToken' denied on resource (or it may not exist).");
      }
      actor = account;
    }
    if (self.failure === 'garbage') return respond(200, { tokn: 'nope' });
    const token = self.issuer.idToken({
      audience: self.failure === 'wrong-audience' ? 'some-other-audience' : body.audience,
      email: serviceAccount,
      lifetimeSeconds: self.lifetimeSeconds,
      expired: self.failure === 'expired',
      extra: body.includeEmail === true ? {} : { email: undefined, email_verified: undefined },
    });
    respond(200, { token });
  });
  const self: FakeIam = Object.assign(server, extra);
  return self;
}
