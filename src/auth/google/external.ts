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
 * calls go. GoogleAuth builds impersonated clients and their source client without passing its client options
 * on, so the transporters are set on the clients it made.
 */
function throughEgress(client: AuthClient, options: FindOptions): AuthClient {
  const transporter = egressTransporterOptions(options.egress);
  if (transporter === undefined) return client;
  for (let c: AuthClient | undefined = client; c !== undefined; c = (c as { sourceClient?: AuthClient }).sourceClient) {
    c.transporter.defaults.fetchImplementation = transporter.fetchImplementation;
  }
  return client;
}
