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
import { createHash, createHmac } from 'node:crypto';
import { count, startFakeServer } from './google-common.js';
import type { AccessTokenStore, FakeServer } from './google-common.js';
import { generateSigningKey, signJwt, verifyJwt } from './jwt.js';
import type { Claims, SigningKey } from './jwt.js';

export const TOKEN_EXCHANGE_GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange';
export const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
export const JWT_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:jwt';
export const ID_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:id_token';
export const AWS_TOKEN_TYPE = 'urn:ietf:params:aws:token-type:aws4_request';
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
  /**
   * An AWS provider instead of OIDC: the AWS access keys AWS's STS would know, each with the ARN its signed
   * GetCallerIdentity request answers for (the subject, as `google.subject=assertion.arn` maps it).
   */
  aws?: { accessKeys: Record<string, { secretAccessKey: string; arn: string }> };
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
    const accepted = provider.aws ? [AWS_TOKEN_TYPE] : [JWT_TOKEN_TYPE, ID_TOKEN_TYPE];
    if (!accepted.includes(subjectTokenType)) return fail(400, 'invalid_request', 'Invalid value for "subject_token_type".');
    const scope = form['scope'] ?? '';
    if (scope === '') return fail(400, 'invalid_scope', 'Scope(s) must be provided.');
    if (!scope.split(/\s+/).includes(CLOUD_PLATFORM)) return fail(400, 'invalid_scope', `Invalid scope: ${scope}`);
    const subjectToken = form['subject_token'] ?? '';
    if (subjectToken === '') return fail(400, 'invalid_request', 'The subject token is required.');
    if (provider.aws) {
      const arn = checkAwsRequest(subjectToken, audience, provider.aws.accessKeys);
      if ('reason' in arn) return fail(400, 'invalid_grant', arn.reason);
      const principal = principalOf(provider, arn.arn);
      self.exchanges.push({ audience, subjectTokenType, scope, principal });
      const issued = self.accessTokens.issue(principal, self.lifetimeSeconds, self.failure === 'expired');
      return respond(200, { access_token: issued.access_token, issued_token_type: ACCESS_TOKEN_TYPE, token_type: 'Bearer', expires_in: issued.expires_in });
    }
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

/**
 * What Google's STS does with an AWS subject token: the serialized, SigV4-signed GetCallerIdentity request, which
 * it sends to AWS. Here the signature is checked as AWS would, with the secret of the access key it names.
 */
function checkAwsRequest(subjectToken: string, audience: string, keys: Record<string, { secretAccessKey: string; arn: string }>): { arn: string } | { reason: string } {
  let request: { url?: unknown; method?: unknown; headers?: unknown };
  try {
    request = JSON.parse(decodeURIComponent(subjectToken)) as typeof request;
  } catch {
    return { reason: 'The subject token is not a serialized AWS GetCallerIdentity request.' };
  }
  if (typeof request.url !== 'string' || request.method !== 'POST' || !Array.isArray(request.headers)) return { reason: 'The AWS request must be a POST with url and headers.' };
  const url = new URL(request.url);
  const region = /^sts\.([a-z0-9-]+)\.amazonaws\.com$/.exec(url.host)?.[1];
  if (region === undefined || url.searchParams.get('Action') !== 'GetCallerIdentity') return { reason: 'The AWS request must be GetCallerIdentity at a regional STS endpoint.' };
  const headers = new Map<string, string>();
  for (const h of request.headers as { key?: unknown; value?: unknown }[]) headers.set(String(h.key).toLowerCase(), String(h.value));
  const target = headers.get('x-goog-cloud-target-resource');
  if (target !== audience && target !== `https:${audience}`) return { reason: 'The x-goog-cloud-target-resource header must name the workload identity pool provider.' };
  const auth = /^AWS4-HMAC-SHA256 Credential=([^/]+)\/(\d{8})\/([^/]+)\/sts\/aws4_request, SignedHeaders=([^,]+), Signature=([0-9a-f]{64})$/.exec(headers.get('authorization') ?? '');
  if (auth === null) return { reason: 'The AWS request carries no SigV4 authorization.' };
  const [, keyId, date, scopeRegion, signedHeaders, signature] = auth as unknown as [string, string, string, string, string, string];
  const key = keys[keyId];
  if (key === undefined) return { reason: 'AWS: The security token included in the request is invalid.' };
  const amzDate = headers.get('x-amz-date') ?? '';
  const at = Date.parse(amzDate.replace(/^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/, '$1-$2-$3T$4:$5:$6Z'));
  if (!Number.isFinite(at) || Math.abs(at - Date.now()) > 15 * 60_000 || !amzDate.startsWith(date) || scopeRegion !== region) return { reason: 'AWS: Signature expired or scoped to another date or region.' };
  const canonicalHeaders = signedHeaders.split(';').map((name) => `${name}:${headers.get(name) ?? ''}\n`).join('');
  const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');
  const canonical = ['POST', url.pathname, url.search.slice(1), canonicalHeaders, signedHeaders, sha256('')].join('\n');
  const toSign = ['AWS4-HMAC-SHA256', amzDate, `${date}/${region}/sts/aws4_request`, sha256(canonical)].join('\n');
  let signing: Buffer | string = `AWS4${key.secretAccessKey}`;
  for (const part of [date, region, 'sts', 'aws4_request']) signing = createHmac('sha256', signing).update(part).digest();
  if (createHmac('sha256', signing).update(toSign).digest('hex') !== signature) {
    return { reason: 'AWS: The request signature we calculated does not match the signature you provided.' };
  }
  return { arn: key.arn };
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
