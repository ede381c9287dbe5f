/**
 * Google's OAuth 2.0 token endpoint (POST /token): the JWT-bearer grant for service-account keys, checking
 * the assertion's RS256 signature against the registered key, its audience and lifetime, answering
 * {"id_token"} for a `target_audience` claim and {"access_token","expires_in"} for a `scope`; the
 * refresh-token grant a gcloud user login (authorized_user) and a desktop-client login use (with `audience`,
 * an ID token for that audience, as Google mints for IAP); and the authorization_code grant, checking the PKCE
 * verifier against the challenge. Also the authorization endpoint (GET /o/oauth2/v2/auth), where consent is
 * given at once as `consentAs` and the browser is redirected to the loopback redirect URI with a code, and the
 * revocation endpoint (POST /revoke). Errors in OAuth's shape {"error","error_description"}.
 */
import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { AccessTokenStore, GoogleIssuer, count, startFakeServer } from './google-common.js';
import type { FakeServer, Respond } from './google-common.js';
import { testKey, verifyJwt } from './jwt.js';
import type { SigningKey } from './jwt.js';

export const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';

export interface UserLogin {
  email: string;
  clientId: string;
  clientSecret: string;
  refreshToken: string;
  /** Scopes granted; a gcloud login's by default. */
  scope?: string;
}

export interface FakeOauthOptions {
  issuer?: GoogleIssuer;
  accessTokens?: AccessTokenStore;
  lifetimeSeconds?: number;
}

export interface DesktopClient {
  clientId: string;
  clientSecret: string;
}

/** What the authorization endpoint was asked, for asserting on the URL the login built. */
export interface AuthorizationRequest {
  params: Record<string, string>;
}

export interface FakeOauth extends FakeServer {
  /** The token endpoint URL (config auth.endpoints.oauthToken). */
  tokenUrl: string;
  /** The authorization endpoint URL (auth.endpoints.oauthAuthorize). */
  authorizeUrl: string;
  /** The revocation endpoint URL (auth.endpoints.oauthRevoke). */
  revokeUrl: string;
  /** Who consents at the authorization endpoint. */
  consentAs: string;
  authorizations: AuthorizationRequest[];
  /** Refresh tokens revoked at /revoke. */
  revoked: string[];
  /** Refresh grants by the `audience` they asked for ('' for none). */
  refreshAudiences: string[];
  addDesktopClient(client: DesktopClient): void;
  /** The refresh token stops working (revoked in the account's security settings, say). */
  revokeUser(refreshToken: string): void;
  /** Workspace session control: refreshing this token needs a new sign-in (invalid_rapt). */
  requireReauth(refreshToken: string): void;
  issuer: GoogleIssuer;
  accessTokens: AccessTokenStore;
  lifetimeSeconds: number;
  /** Target audiences ID tokens were asked for. */
  audiences: string[];
  addServiceAccount(email: string, key?: SigningKey): ServiceAccountKey;
  addUser(login: UserLogin): void;
}

export interface ServiceAccountKey {
  type: 'service_account';
  project_id: string;
  private_key_id: string;
  private_key: string;
  client_email: string;
  client_id: string;
  token_uri: string;
}

export async function startFakeOauth(options: FakeOauthOptions = {}): Promise<FakeOauth> {
  const accounts = new Map<string, SigningKey>();
  const users = new Map<string, UserLogin>();
  const desktopClients = new Map<string, DesktopClient>();
  const codes = new Map<string, { clientId: string; redirectUri: string; challenge: string | undefined; method: string; email: string; expiresAt: number }>();
  const reauth = new Set<string>();
  const server = await startFakeServer((req, rawBody, respond) => {
    const fail = (status: number, error: string, description: string) => respond(status, { error, error_description: description });
    count(self, 'all');
    const url = new URL(req.url ?? '/', 'http://oauth');
    if (req.method === 'GET' && url.pathname === '/o/oauth2/v2/auth') return authorize(url, respond);
    if (req.method === 'POST' && url.pathname === '/revoke') {
      count(self, 'revoke');
      // Google takes the token in the form body or in the query string.
      const token = new URLSearchParams(rawBody).get('token') ?? url.searchParams.get('token') ?? '';
      if (!users.has(token)) return fail(400, 'invalid_token', 'Token expired or revoked');
      users.delete(token);
      self.revoked.push(token);
      return respond(200, {});
    }
    if (req.method !== 'POST' || url.pathname !== '/token') {
      fail(404, 'not_found', 'unknown path');
      return;
    }
    count(self, 'token');
    if (self.failure === 'error500') return fail(500, 'internal_failure', 'Backend Error');
    if (self.failure === 'garbage') return respond(200, '<!doctype html><title>proxy login</title>');
    const form = new URLSearchParams(rawBody);
    const grant = form.get('grant_type');
    if (grant === JWT_BEARER) {
      const assertion = form.get('assertion') ?? '';
      const unverified = verifyJwt(assertion, { keys: [...accounts.values()].map((k) => ({ kid: k.kid, publicKey: k.publicKey })) });
      if (!unverified.ok) {
        return fail(400, 'invalid_grant', unverified.reason === 'expired' ? 'Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.' : 'Invalid JWT Signature.');
      }
      const claims = unverified.payload;
      const email = String(claims['iss']);
      if (!accounts.has(email) || accounts.get(email)!.kid !== verifyKidOf(assertion)) return fail(400, 'invalid_grant', 'Invalid JWT Signature.');
      if (claims['aud'] !== self.tokenUrl) return fail(400, 'invalid_grant', 'Invalid JWT: Failed audience check.');
      const iat = Number(claims['iat']);
      const exp = Number(claims['exp']);
      if (!(exp - iat <= 3600) || Math.abs(iat - Date.now() / 1000) > 300) {
        return fail(400, 'invalid_grant', 'Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.');
      }
      const audience = claims['target_audience'];
      if (typeof audience === 'string' && audience !== '') {
        self.audiences.push(audience);
        const idToken = self.issuer.idToken({
          audience: self.failure === 'wrong-audience' ? 'some-other-audience' : audience,
          email,
          lifetimeSeconds: self.lifetimeSeconds,
          expired: self.failure === 'expired',
        });
        return respond(200, { id_token: idToken });
      }
      if (typeof claims['scope'] !== 'string' || claims['scope'] === '') return fail(400, 'invalid_scope', 'Invalid oauth scope or ID token audience provided.');
      return respond(200, self.accessTokens.issue(email, self.lifetimeSeconds, self.failure === 'expired'));
    }
    if (grant === 'refresh_token') {
      count(self, 'refresh');
      const refreshToken = form.get('refresh_token') ?? '';
      const user = users.get(refreshToken);
      if (user !== undefined && (user.clientId !== form.get('client_id') || user.clientSecret !== form.get('client_secret'))) {
        return fail(401, 'invalid_client', 'Unauthorized');
      }
      if (user === undefined) return fail(400, 'invalid_grant', 'Token has been expired or revoked.');
      if (reauth.has(refreshToken)) {
        return respond(400, { error: 'invalid_grant', error_description: 'reauth related error (invalid_rapt)', error_uri: 'https://support.google.com/a/answer/9368756', error_subtype: 'invalid_rapt' });
      }
      const audience = form.get('audience') ?? '';
      self.refreshAudiences.push(audience);
      const access = self.accessTokens.issue(user.email, self.lifetimeSeconds, self.failure === 'expired');
      const idToken = self.issuer.idToken({ audience: audience || user.clientId, email: user.email, lifetimeSeconds: self.lifetimeSeconds, expired: self.failure === 'expired' });
      return respond(200, { ...access, id_token: idToken, scope: user.scope ?? 'openid https://www.googleapis.com/auth/userinfo.email https://www.googleapis.com/auth/cloud-platform' });
    }
    if (grant === 'authorization_code') {
      count(self, 'code');
      const issued = codes.get(form.get('code') ?? '');
      const client = desktopClients.get(form.get('client_id') ?? '');
      if (client === undefined) return fail(401, 'invalid_client', 'The OAuth client was not found.');
      if (client.clientSecret !== form.get('client_secret')) return fail(401, 'invalid_client', 'Unauthorized');
      if (issued === undefined || issued.expiresAt < Date.now() || issued.clientId !== client.clientId) return fail(400, 'invalid_grant', 'Malformed auth code.');
      // A code is redeemed once, right or wrong, as at Google.
      codes.delete(form.get('code')!);
      if (form.get('redirect_uri') !== issued.redirectUri) return fail(400, 'redirect_uri_mismatch', 'Bad Request');
      if (issued.challenge !== undefined) {
        const verifier = form.get('code_verifier') ?? '';
        if (verifier === '') return fail(400, 'invalid_grant', 'Missing code verifier.');
        const expected = issued.method === 'S256' ? createHash('sha256').update(verifier).digest('base64url') : verifier;
        if (expected !== issued.challenge) return fail(400, 'invalid_grant', 'Invalid code verifier.');
      }
      const refreshToken = `1//fake-${randomBytes(24).toString('base64url')}`;
      users.set(refreshToken, { email: issued.email, clientId: client.clientId, clientSecret: client.clientSecret, refreshToken, scope: 'openid https://www.googleapis.com/auth/userinfo.email' });
      const access = self.accessTokens.issue(issued.email, self.lifetimeSeconds);
      const idToken = self.issuer.idToken({ audience: client.clientId, email: issued.email, lifetimeSeconds: self.lifetimeSeconds });
      return respond(200, { ...access, refresh_token: refreshToken, id_token: idToken, scope: 'openid https://www.googleapis.com/auth/userinfo.email', token_type: 'Bearer' });
    }
    fail(400, 'unsupported_grant_type', `Invalid grant_type: ${grant ?? ''}`);
  });
  /** Consent given at once; the errors Google shows as a page (no redirect) are 400s, the others go back to the client. */
  function authorize(url: URL, respond: Respond): void {
    count(self, 'authorize');
    const params = Object.fromEntries(url.searchParams);
    self.authorizations.push({ params });
    const client = desktopClients.get(params['client_id'] ?? '');
    if (client === undefined) return respond(401, 'Access blocked: Authorization Error. Error 401: invalid_client. The OAuth client was not found.');
    const redirect = params['redirect_uri'] ?? '';
    let target: URL;
    try {
      target = new URL(redirect);
    } catch {
      return respond(400, 'Error 400: invalid_request. Missing required parameter: redirect_uri');
    }
    // Desktop clients may redirect to any port of a loopback address over http, nothing else.
    if (target.protocol !== 'http:' || !['127.0.0.1', '[::1]', 'localhost'].includes(target.hostname)) {
      return respond(400, `Error 400: redirect_uri_mismatch. You can't sign in to this app because it doesn't comply with Google's OAuth 2.0 policy (redirect_uri=${redirect}).`);
    }
    const back = (query: Record<string, string>) => {
      for (const [k, v] of Object.entries(query)) target.searchParams.set(k, v);
      if (params['state'] !== undefined) target.searchParams.set('state', params['state']);
      respond(302, '', { location: target.toString() });
    };
    if (params['response_type'] !== 'code') return back({ error: 'unsupported_response_type' });
    const scopes = (params['scope'] ?? '').split(' ').filter(Boolean);
    if (scopes.length === 0) return back({ error: 'invalid_request', error_description: 'Missing required parameter: scope' });
    const challenge = params['code_challenge'];
    const method = params['code_challenge_method'] ?? 'plain';
    if (challenge !== undefined && (!/^[A-Za-z0-9._~-]{43,128}$/.test(challenge) || !['S256', 'plain'].includes(method))) {
      return back({ error: 'invalid_request', error_description: 'Invalid code_challenge or code_challenge_method' });
    }
    const code = `4/fake-${randomBytes(16).toString('base64url')}`;
    codes.set(code, { clientId: client.clientId, redirectUri: redirect, challenge, method, email: self.consentAs, expiresAt: Date.now() + 600_000 });
    back({ code, scope: scopes.map((s) => (s === 'email' ? 'https://www.googleapis.com/auth/userinfo.email' : s)).join(' ') });
  }

  const extra = {
    tokenUrl: `${server.url}/token`,
    authorizeUrl: `${server.url}/o/oauth2/v2/auth`,
    revokeUrl: `${server.url}/revoke`,
    consentAs: 'alice@example.com',
    authorizations: [] as AuthorizationRequest[],
    revoked: [] as string[],
    refreshAudiences: [] as string[],
    addDesktopClient(client: DesktopClient) {
      desktopClients.set(client.clientId, client);
    },
    revokeUser(refreshToken: string) {
      users.delete(refreshToken);
    },
    requireReauth(refreshToken: string) {
      reauth.add(refreshToken);
    },
    issuer: options.issuer ?? new GoogleIssuer(),
    accessTokens: options.accessTokens ?? new AccessTokenStore(),
    lifetimeSeconds: options.lifetimeSeconds ?? 3600,
    audiences: [] as string[],
    addServiceAccount(email: string, key: SigningKey = testKey(1)): ServiceAccountKey {
      accounts.set(email, key);
      return {
        type: 'service_account',
        project_id: 'my-project',
        private_key_id: key.kid,
        private_key: key.privatePem,
        client_email: email,
        client_id: '109876543210987654321',
        token_uri: `${server.url}/token`,
      };
    },
    addUser(login: UserLogin) {
      users.set(login.refreshToken, login);
    },
  };
  const self: FakeOauth = Object.assign(server, extra);
  return self;
}

function verifyKidOf(assertion: string): string | undefined {
  try {
    return (JSON.parse(Buffer.from(assertion.split('.')[0]!, 'base64url').toString('utf8')) as { kid?: string }).kid;
  } catch {
    return undefined;
  }
}

/** Writes a credentials JSON (service-account key or authorized_user) for GOOGLE_APPLICATION_CREDENTIALS. */
export function writeCredentialsFile(file: string, content: object): string {
  writeFileSync(file, JSON.stringify(content, null, 2), { mode: 0o600 });
  return file;
}

export function authorizedUserFile(login: UserLogin): object {
  return { type: 'authorized_user', client_id: login.clientId, client_secret: login.clientSecret, refresh_token: login.refreshToken };
}
