/**
 * Google's OAuth 2.0 token endpoint (POST /token): the JWT-bearer grant for service-account keys, checking
 * the assertion's RS256 signature against the registered key, its audience and lifetime, answering
 * {"id_token"} for a `target_audience` claim and {"access_token","expires_in"} for a `scope`; and the
 * refresh-token grant a gcloud user login (authorized_user) uses. Errors in OAuth's shape
 * {"error","error_description"}.
 */
import { writeFileSync } from 'node:fs';
import { AccessTokenStore, GoogleIssuer, count, startFakeServer } from './google-common.js';
import type { FakeServer } from './google-common.js';
import { testKey, verifyJwt } from './jwt.js';
import type { SigningKey } from './jwt.js';

export const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';

export interface UserLogin {
  email: string;
  clientId: string;
  clientSecret: string;
  refreshToken: string;
}

export interface FakeOauthOptions {
  issuer?: GoogleIssuer;
  accessTokens?: AccessTokenStore;
  lifetimeSeconds?: number;
}

export interface FakeOauth extends FakeServer {
  /** The token endpoint URL (config auth.endpoints.oauthToken). */
  tokenUrl: string;
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
  const server = await startFakeServer((req, rawBody, respond) => {
    const fail = (status: number, error: string, description: string) => respond(status, { error, error_description: description });
    count(self, 'all');
    if (req.method !== 'POST' || new URL(req.url ?? '/', 'http://oauth').pathname !== '/token') {
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
      const user = users.get(form.get('refresh_token') ?? '');
      if (user === undefined || user.clientId !== form.get('client_id') || user.clientSecret !== form.get('client_secret')) {
        return fail(400, 'invalid_grant', 'Token has been expired or revoked.');
      }
      const access = self.accessTokens.issue(user.email, self.lifetimeSeconds, self.failure === 'expired');
      const idToken = self.issuer.idToken({ audience: user.clientId, email: user.email, lifetimeSeconds: self.lifetimeSeconds });
      return respond(200, { ...access, id_token: idToken, scope: 'openid https://www.googleapis.com/auth/userinfo.email https://www.googleapis.com/auth/cloud-platform' });
    }
    fail(400, 'unsupported_grant_type', `Invalid grant_type: ${grant ?? ''}`);
  });
  const extra = {
    tokenUrl: `${server.url}/token`,
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
