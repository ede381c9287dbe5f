/**
 * Security Token Service (`POST https://sts.googleapis.com/v1/token`) for Workload Identity Federation, as strict
 * as the real one about what a client sends: the token-exchange grant, an access-token requested_token_type, a
 * subject_token_type the provider takes, an audience naming a configured pool provider, a scope, and a subject
 * token the provider's issuer signed for one of its allowed audiences and that has not expired. Errors in OAuth's
 * shape {"error","error_description"}. The federated access token it answers with belongs to the principal://
 * identity of the token's subject, which the fake IAM Credentials checks like any member.
 *
 * Beside it, a stand-in for an external OIDC issuer: GitHub Actions' ID-token endpoint
 * (ACTIONS_ID_TOKEN_REQUEST_URL, `GET ?audience=…` with the request token as bearer, answering {"value": jwt}),
 * and the same issuer's tokens written to a file, as other CI systems and Kubernetes do.
 */
import { count, startFakeServer } from './google-common.js';
import type { FakeServer , AccessTokenStore} from './google-common.js';
import { generateSigningKey, signJwt, verifyJwt } from './jwt.js';
import type { Claims, SigningKey } from './jwt.js';

export const TOKEN_EXCHANGE_GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange';
export const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
export const JWT_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:jwt';
export const ID_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:id_token';
export const CLOUD_PLATFORM = 'https://www.googleapis.com/auth/cloud-platform';
export const GITHUB_ISSUER = 'https://token.actions.githubusercontent.com';

/** One workload identity pool provider: whose tokens it trusts and which audiences they may carry. */
export interface PoolProvider {
  projectNumber: string;
  pool: string;
  provider: string;
  issuer: OidcIssuer;
  /** Audiences the subject token may carry; by default the provider's own https://iam.googleapis.com/… name, as Google does. */
  allowedAudiences?: readonly string[];
}

export interface StsExchange {
  audience: string;
  subjectTokenType: string;
  scope: string;
  principal: string;
}

export interface FakeSts extends FakeServer {
  /** The token endpoint (an external_account file's token_url). */
  tokenUrl: string;
  accessTokens: AccessTokenStore;
  lifetimeSeconds: number;
  exchanges: StsExchange[];
  /** Every form field of the last request, for checks on what the client sent. */
  lastForm: Record<string, string> | undefined;
}

/** The STS audience of a pool provider: `//iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/providers/R`. */
export function providerAudience(p: Pick<PoolProvider, 'projectNumber' | 'pool' | 'provider'>): string {
  return `//iam.googleapis.com/projects/${p.projectNumber}/locations/global/workloadIdentityPools/${p.pool}/providers/${p.provider}`;
}

/** The principal a subject of a pool becomes (what IAM bindings name). */
export function principalOf(p: Pick<PoolProvider, 'projectNumber' | 'pool'>, subject: string): string {
  return `principal://iam.googleapis.com/projects/${p.projectNumber}/locations/global/workloadIdentityPools/${p.pool}/subject/${subject}`;
}

export async function startFakeSts(options: { accessTokens: AccessTokenStore; providers: readonly PoolProvider[]; lifetimeSeconds?: number }): Promise<FakeSts> {
  const byAudience = new Map(options.providers.map((p) => [providerAudience(p), p]));
  const server = await startFakeServer((req, rawBody, respond) => {
    const fail = (status: number, error: string, description: string) => respond(status, { error, error_description: description });
    count(self, 'all');
    if (req.method !== 'POST' || new URL(req.url ?? '/', 'http://sts').pathname !== '/v1/token') return fail(404, 'not_found', 'The requested URL was not found on this server.');
    count(self, 'token');
    if (self.failure === 'error500') return fail(500, 'server_error', 'Internal error encountered.');
    if (!/^application\/x-www-form-urlencoded\b/i.test(req.headers['content-type'] ?? '')) {
      return fail(400, 'invalid_request', 'Invalid Content-Type; expected application/x-www-form-urlencoded.');
    }
    const form = Object.fromEntries(new URLSearchParams(rawBody));
    self.lastForm = form;
    if (form['grant_type'] !== TOKEN_EXCHANGE_GRANT) return fail(400, 'unsupported_grant_type', `Invalid grant_type: ${form['grant_type'] ?? ''}`);
    if (form['requested_token_type'] !== ACCESS_TOKEN_TYPE) return fail(400, 'invalid_request', 'Invalid value for "requested_token_type".');
    const audience = form['audience'] ?? '';
    const provider = byAudience.get(audience);
    if (provider === undefined) {
      return fail(400, 'invalid_target', 'The target service indicated by the "audience" parameters is invalid. This might either be because the pool or provider is disabled or deleted or because it doesn\'t exist.');
    }
    const subjectTokenType = form['subject_token_type'] ?? '';
    if (subjectTokenType !== JWT_TOKEN_TYPE && subjectTokenType !== ID_TOKEN_TYPE) return fail(400, 'invalid_request', 'Invalid value for "subject_token_type".');
    const scope = form['scope'] ?? '';
    if (scope === '') return fail(400, 'invalid_scope', 'Scope(s) must be provided.');
    if (!scope.split(/\s+/).includes(CLOUD_PLATFORM)) return fail(400, 'invalid_scope', `Invalid scope: ${scope}`);
    const subjectToken = form['subject_token'] ?? '';
    if (subjectToken === '') return fail(400, 'invalid_request', 'The subject token is required.');
    const allowed = provider.allowedAudiences ?? [`https:${audience}`];
    const checked = verifyJwt(subjectToken, { keys: provider.issuer.keys, issuer: provider.issuer.issuer, audience: allowed });
    if (!checked.ok) {
      const reason = checked.reason;
      return fail(
        400,
        'invalid_grant',
        reason === 'expired'
          ? 'The ID Token is expired.'
          : reason.startsWith('wrong audience')
            ? `The audience in ID Token [${JSON.stringify(decodeAud(subjectToken))}] does not match the expected audience ${allowed.join(',')}.`
            : `Invalid ID Token: ${reason}.`,
      );
    }
    const principal = principalOf(provider, String(checked.payload['sub']));
    self.exchanges.push({ audience, subjectTokenType, scope, principal });
    const issued = self.accessTokens.issue(principal, self.lifetimeSeconds, self.failure === 'expired');
    respond(200, { access_token: issued.access_token, issued_token_type: ACCESS_TOKEN_TYPE, token_type: 'Bearer', expires_in: issued.expires_in });
  });
  const self: FakeSts = Object.assign(server, {
    tokenUrl: `${server.url}/v1/token`,
    accessTokens: options.accessTokens,
    lifetimeSeconds: options.lifetimeSeconds ?? 3600,
    exchanges: [] as StsExchange[],
    lastForm: undefined,
  });
  return self;
}

function decodeAud(token: string): unknown {
  try {
    return (JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString('utf8')) as Claims)['aud'];
  } catch {
    return undefined;
  }
}

/** An external OIDC issuer (GitHub Actions, a Kubernetes cluster, GitLab): signs subject tokens. */
export class OidcIssuer {
  readonly keys: SigningKey[];
  constructor(
    readonly issuer: string = GITHUB_ISSUER,
    key: SigningKey = generateSigningKey('gh-oidc'),
  ) {
    this.keys = [key];
  }

  token(claims: { sub: string; aud: string; lifetimeSeconds?: number; expired?: boolean; extra?: Claims }): string {
    const now = Math.floor(Date.now() / 1000);
    const lifetime = claims.lifetimeSeconds ?? 300;
    const iat = claims.expired ? now - lifetime - 10 : now;
    return signJwt({ iss: this.issuer, sub: claims.sub, aud: claims.aud, iat, nbf: iat, exp: iat + lifetime, ...claims.extra }, this.keys[0]!);
  }
}

export interface FakeGithubOidc extends FakeServer {
  /** ACTIONS_ID_TOKEN_REQUEST_URL (without the audience, which the client appends). */
  requestUrl: string;
  /** ACTIONS_ID_TOKEN_REQUEST_TOKEN. */
  requestToken: string;
}

/** GitHub Actions' ID-token endpoint for one job (`repo:OWNER/REPO:ref:refs/heads/main`). */
export async function startFakeGithubOidc(issuer: OidcIssuer, subject: string): Promise<FakeGithubOidc> {
  const requestToken = `gh-request-${Math.random().toString(36).slice(2)}`;
  const server = await startFakeServer((req, _body, respond) => {
    count(self, 'all');
    const url = new URL(req.url ?? '/', 'http://gh');
    if (req.method !== 'GET' || url.pathname !== '/_apis/token') return respond(404, { message: 'Not Found' });
    if (req.headers.authorization !== `Bearer ${requestToken}`) return respond(401, { message: 'Unauthorized' });
    count(self, 'token');
    const audience = url.searchParams.get('audience') ?? 'https://github.com/OWNER';
    respond(200, { count: 1, value: issuer.token({ sub: subject, aud: audience, extra: { repository: subject.split(':')[1] } }) });
  });
  const self: FakeGithubOidc = Object.assign(server, { requestUrl: `${server.url}/_apis/token?api-version=2.0`, requestToken });
  return self;
}
