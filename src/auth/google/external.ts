/**
 * Credential files google-auth-library parses and refreshes itself: external accounts (workload identity
 * federation: GitHub Actions, GitLab, Kubernetes, AWS, Azure; subject tokens from a file, a URL, AWS's metadata or an
 * executable) and the rarer kinds after them.
 */
import type { AuthClient } from 'google-auth-library';
import { TokenFetchError } from '../token.js';
import { egressTransporterOptions } from '../../net/egress-http.js';
import { holdingAccessToken } from './access-token.js';
import { googleAuthLibrary, libraryError } from './library.js';
import { CLOUD_PLATFORM_SCOPE, SETUP_HINT } from './source.js';
import type { CredentialsInfo, FindOptions, Json, SourceCredentials } from './source.js';

const GOOGLE_STS_ORIGIN = 'https://sts.googleapis.com';
const GOOGLE_IAM_CREDENTIALS_ORIGIN = 'https://iamcredentials.googleapis.com';
const GOOGLE_STS_TOKEN_URL = `${GOOGLE_STS_ORIGIN}/v1/token`;

export function libraryCredentials(json: Json, file: string, options: FindOptions): SourceCredentials {
  const kind = String(json['type']);
  const config = kind === 'external_account' ? withConfiguredEndpoints(json, options) : json;
  const info: CredentialsInfo = { kind, description: kind === 'external_account' ? `workload identity federation, ${subjectSource(json)} (${file})` : `${kind} credentials (${file})` };
  const url = config['service_account_impersonation_url'];
  if (typeof url === 'string') {
    const target = /serviceAccounts\/([^:/]+):/.exec(url)?.[1];
    if (target) info.identity = decodeURIComponent(target);
  }
  let client: AuthClient | undefined;
  return holdingAccessToken(
    info,
    async () => {
      try {
        client ??= throughEgress(await clientFor(config), options);
        const { token } = await client.getAccessToken();
        const expiry = client.credentials.expiry_date;
        if (!token || typeof expiry !== 'number') throw new TokenFetchError(`the ${kind} credentials gave no access token with an expiry`);
        return { value: token, expiresAt: expiry };
      } catch (err) {
        if (err instanceof TokenFetchError) throw err;
        throw new TokenFetchError(`getting an access token from the ${kind} credentials in ${file} failed: ${libraryError(err)}`, {
          hint: kind === 'external_account' ? federationHint(json) : SETUP_HINT,
        });
      }
    },
    options,
  );
}

/**
 * The library's client for the file's kind, built by its type-specific constructor: GoogleAuth's generic path
 * warns on stderr that the file is not validated, which is advice for files from others; this one is the
 * user's own Application Default Credentials, and its URLs are the configured endpoints.
 */
async function clientFor(config: Json): Promise<AuthClient> {
  const library = googleAuthLibrary();
  const options = { ...config, scopes: [CLOUD_PLATFORM_SCOPE] } as never;
  if (config['type'] === 'external_account') {
    const source = (config['credential_source'] ?? {}) as Json;
    if (typeof source['environment_id'] === 'string') return new library.AwsClient(options);
    if (typeof source['executable'] === 'object' && source['executable'] !== null) return new library.PluggableAuthClient(options);
    return new library.IdentityPoolClient(options);
  }
  if (config['type'] === library.EXTERNAL_ACCOUNT_AUTHORIZED_USER_TYPE) return new library.ExternalAccountAuthorizedUserClient(options);
  return new library.GoogleAuth({ credentials: config as never, scopes: [CLOUD_PLATFORM_SCOPE] }).getClient();
}

/**
 * Google's STS and IAM Credentials URLs in the file replaced by auth.endpoints.sts / iamCredentials when those are
 * set elsewhere (a private endpoint, a test), so every Google call of kvx goes where the config says. URLs the file
 * names that are not Google's defaults are left as written.
 */
function withConfiguredEndpoints(json: Json, options: FindOptions): Json {
  const out: Json = { ...json };
  const sts = options.endpoints.sts;
  const tokenUrl = typeof json['token_url'] === 'string' ? json['token_url'] : GOOGLE_STS_TOKEN_URL;
  if (sts && sts !== GOOGLE_STS_TOKEN_URL && originOf(tokenUrl) === GOOGLE_STS_ORIGIN) out['token_url'] = sts;
  const impersonation = json['service_account_impersonation_url'];
  const iam = options.endpoints.iamCredentials.replace(/\/+$/, '');
  if (typeof impersonation === 'string' && iam !== GOOGLE_IAM_CREDENTIALS_ORIGIN && originOf(impersonation) === GOOGLE_IAM_CREDENTIALS_ORIGIN) {
    out['service_account_impersonation_url'] = iam + new URL(impersonation).pathname;
  }
  return out;
}

function originOf(url: string): string | undefined {
  return URL.canParse(url) ? new URL(url).origin : undefined;
}

/** Where the subject token comes from, in plain words and without the secrets a file may hold (a request token). */
function subjectSource(json: Json): string {
  const source = json['credential_source'];
  if (typeof source !== 'object' || source === null) return json['subject_token_supplier'] ? 'subject token from code' : 'no credential_source';
  const s = source as Json;
  if (typeof s['environment_id'] === 'string' && s['environment_id'].startsWith('aws')) return 'subject token from AWS';
  if (typeof s['file'] === 'string') return `subject token file ${s['file']}`;
  if (typeof s['url'] === 'string') return `subject token from ${originOf(s['url']) ?? 'a URL'}`;
  if (typeof s['executable'] === 'object') return 'subject token from an executable';
  if (typeof s['certificate'] === 'object') return 'X.509 certificate';
  return 'unknown credential_source';
}

function federationHint(json: Json): string {
  const audience = typeof json['audience'] === 'string' ? json['audience'] : 'the audience';
  return (
    `check the workload identity pool provider ${audience} (its issuer, allowed audiences and attribute condition), that the subject token source ` +
    'still gives a valid token (a CI job\'s token lives minutes), and, with service_account_impersonation_url, that the principal holds ' +
    'roles/iam.workloadIdentityUser on that service account'
  );
}

/**
 * Sends the client's requests (STS, IAM Credentials, the source credentials' refresh) the way kvx's own Google
 * calls go. google-auth-library does not pass its transporter on everywhere: impersonated clients and their source
 * client are built without the client options, and an external account's STS exchange has a transporter of its
 * own; each of them is set here.
 */
function throughEgress(client: AuthClient, options: FindOptions): AuthClient {
  const transporter = egressTransporterOptions(options.egress);
  if (transporter === undefined) return client;
  type Parts = { transporter?: AuthClient['transporter']; sourceClient?: AuthClient; stsCredential?: { transporter?: AuthClient['transporter'] } };
  for (let c: Parts | undefined = client as Parts; c !== undefined; c = c.sourceClient as Parts | undefined) {
    for (const t of [c.transporter, c.stsCredential?.transporter]) if (t !== undefined) t.defaults.fetchImplementation = transporter.fetchImplementation;
  }
  return client;
}
