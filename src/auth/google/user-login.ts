/** A gcloud application-default login (authorized_user): a refresh token google-auth-library redeems at auth.endpoints.oauthToken. */
import type { UserRefreshClient } from 'google-auth-library';
import { errorMessage } from '../../errors.js';
import { TokenFetchError } from '../token.js';
import { decodeJwtClaims } from '../jwt.js';
import type { Token } from '../token.js';
import { egressTransporterOptions } from '../../net/egress-http.js';
import { holdingAccessToken } from './access-token.js';
import { googleAuthLibrary, libraryError } from './library.js';
import type { CredentialsInfo, FindOptions, Json, SourceCredentials } from './source.js';

export function userLoginCredentials(json: Json, file: string, options: FindOptions): SourceCredentials {
  let client: UserRefreshClient;
  try {
    const transporterOptions = egressTransporterOptions(options.egress);
    client = new (googleAuthLibrary().UserRefreshClient)({ endpoints: { oauth2TokenUrl: options.endpoints.oauthToken }, ...(transporterOptions ? { transporterOptions } : {}) });
    client.fromJSON(json as Parameters<UserRefreshClient['fromJSON']>[0]);
  } catch (err) {
    throw new TokenFetchError(`${file} is not a usable gcloud login (${errorMessage(err)})`, { hint: 'rerun `gcloud auth application-default login`' });
  }
  const info: CredentialsInfo = { kind: 'authorized_user', description: `gcloud user login (${file})` };
  return holdingAccessToken(
    info,
    async () => {
      try {
        // The holder asks only when it needs a new token; keep the library from answering with its own copy.
        client.credentials = { refresh_token: json['refresh_token'] as string };
        const { token } = await client.getAccessToken();
        const expiry = client.credentials.expiry_date;
        if (!token || typeof expiry !== 'number') throw new TokenFetchError('the gcloud login refresh answered without an access token or expiry');
        const idt = client.credentials.id_token;
        const email = idt ? decodeJwtClaims(idt)?.email : undefined;
        if (typeof email === 'string') info.identity = email;
        const t: Token = { value: token, expiresAt: expiry };
        if (info.identity) t.identity = info.identity;
        return t;
      } catch (err) {
        if (err instanceof TokenFetchError) throw err;
        throw new TokenFetchError(`refreshing the gcloud user login failed: ${libraryError(err)}`, {
          hint: 'the login may have expired or been revoked; rerun `gcloud auth application-default login`',
        });
      }
    },
    options,
  );
}
