/**
 * Credential files google-auth-library parses and refreshes itself: impersonated service accounts and external
 * accounts (workload identity federation).
 */
import type { AuthClient } from 'google-auth-library';
import { TokenFetchError } from '../token.js';
import { egressTransporterOptions } from '../../net/egress-http.js';
import { holdingAccessToken } from './access-token.js';
import { googleAuthLibrary, libraryError } from './library.js';
import { CLOUD_PLATFORM_SCOPE, SETUP_HINT } from './source.js';
import type { CredentialsInfo, FindOptions, Json, SourceCredentials } from './source.js';

export function libraryCredentials(json: Json, file: string, options: FindOptions): SourceCredentials {
  const kind = String(json['type']);
  const info: CredentialsInfo = { kind, description: `${kind} credentials (${file})` };
  const url = json['service_account_impersonation_url'];
  if (typeof url === 'string') {
    const target = /serviceAccounts\/([^:/]+):/.exec(url)?.[1];
    if (target) info.identity = decodeURIComponent(target);
  }
  let client: AuthClient | undefined;
  return holdingAccessToken(
    info,
    async () => {
      try {
        client ??= throughEgress(await new (googleAuthLibrary().GoogleAuth)({ credentials: json as never, scopes: [CLOUD_PLATFORM_SCOPE] }).getClient(), options);
        const { token } = await client.getAccessToken();
        const expiry = client.credentials.expiry_date;
        if (!token || typeof expiry !== 'number') throw new TokenFetchError(`the ${kind} credentials gave no access token with an expiry`);
        return { value: token, expiresAt: expiry };
      } catch (err) {
        if (err instanceof TokenFetchError) throw err;
        throw new TokenFetchError(`getting an access token from the ${kind} credentials in ${file} failed: ${libraryError(err)}`, { hint: SETUP_HINT });
      }
    },
    options,
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
