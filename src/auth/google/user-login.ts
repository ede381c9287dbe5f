/** A gcloud application-default login (authorized_user): a refresh token google-auth-library redeems at auth.endpoints.oauthToken. */
import type { UserRefreshClient } from 'google-auth-library';
import { errorMessage } from '../../errors.js';
import { LoginRequiredError, TokenFetchError, idToken } from '../token.js';
import { decodeJwtClaims } from '../jwt.js';
import type { Token } from '../token.js';
import { egressTransporterOptions } from '../../net/egress-http.js';
import { holdingAccessToken } from './access-token.js';
import { googleAuthLibrary, libraryError } from './library.js';
import { refreshGrant } from './refresh-grant.js';
import type { CredentialsInfo, FindOptions, Json, SourceCredentials } from './source.js';

const RELOGIN = 'gcloud auth application-default login';

export function userLoginCredentials(json: Json, file: string, options: FindOptions): SourceCredentials {
  let client: UserRefreshClient;
  try {
    const transporterOptions = egressTransporterOptions(options.egress);
    client = new (googleAuthLibrary().UserRefreshClient)({ endpoints: { oauth2TokenUrl: options.endpoints.oauthToken }, ...(transporterOptions ? { transporterOptions } : {}) });
    client.fromJSON(json as Parameters<UserRefreshClient['fromJSON']>[0]);
  } catch (err) {
    throw new TokenFetchError(`${file} is not a usable gcloud login (${errorMessage(err)})`, { hint: `rerun \`${RELOGIN}\`` });
  }
  const info: CredentialsInfo = { kind: 'authorized_user', description: `gcloud user login (${file})` };
  // Google refused this file's refresh token: say so again without asking, until the file changes (the look-up
  // then makes new credentials from it).
  let refused: LoginRequiredError | undefined;
  const noteIdentity = (idt: string | null | undefined) => {
    const email = idt ? decodeJwtClaims(idt)?.email : undefined;
    if (typeof email === 'string') info.identity = email;
  };
  const source = holdingAccessToken(
    info,
    async () => {
      if (refused) throw refused;
      try {
        // The holder asks only when it needs a new token; keep the library from answering with its own copy.
        client.credentials = { refresh_token: json['refresh_token'] as string };
        const { token } = await client.getAccessToken();
        const expiry = client.credentials.expiry_date;
        if (!token || typeof expiry !== 'number') throw new TokenFetchError('the gcloud login refresh answered without an access token or expiry');
        noteIdentity(client.credentials.id_token);
        const t: Token = { value: token, expiresAt: expiry };
        if (info.identity) t.identity = info.identity;
        return t;
      } catch (err) {
        if (err instanceof TokenFetchError) throw err;
        const google = libraryError(err);
        if (/invalid_grant|invalid_rapt|rapt_required/.test(google)) {
          refused = new LoginRequiredError(`Google no longer accepts the gcloud user login in ${file} (Google: ${google}); run \`${RELOGIN}\` again`, {
            hint: `run \`${RELOGIN}\`; a running kvx picks the new login up without a restart`,
          });
          throw refused;
        }
        throw new TokenFetchError(`refreshing the gcloud user login failed: ${google}`, {
          hint: `the login may have expired or been revoked; rerun \`${RELOGIN}\``,
        });
      }
    },
    options,
  );
  source.ownIdToken = async (signal) => {
    if (refused) throw refused;
    const [clientId, clientSecret, refreshToken] = [json['client_id'], json['client_secret'], json['refresh_token']];
    if (typeof clientId !== 'string' || typeof clientSecret !== 'string' || typeof refreshToken !== 'string') {
      throw new TokenFetchError(`${file} is a gcloud login without client_id, client_secret or refresh_token`, { hint: `rerun \`${RELOGIN}\`` });
    }
    let answer: Json;
    try {
      answer = await refreshGrant({ egress: options.egress, tokenUrl: options.endpoints.oauthToken, clientId, clientSecret, refreshToken }, { what: `the gcloud user login in ${file}`, relogin: RELOGIN }, signal);
    } catch (err) {
      if (err instanceof LoginRequiredError) refused = err;
      throw err;
    }
    if (typeof answer['id_token'] !== 'string') {
      throw new TokenFetchError(`refreshing the gcloud user login in ${file} gave no ID token`, { hint: `the login lacks the openid scope; rerun \`${RELOGIN}\`` });
    }
    noteIdentity(answer['id_token']);
    return idToken(answer['id_token'], info.identity);
  };
  return source;
}
