/**
 * A service-account key file. The JWT-bearer grant is done here rather than by google-auth-library, which
 * hard-codes Google's token URL for it: kvx sends it to auth.endpoints.oauthToken.
 */
import type { Egress } from '../../config/egress.js';
import { errorMessage } from '../../errors.js';
import { nodeCrypto } from '../../util/lazy-require.js';
import { TokenFetchError, accessToken, idToken } from '../token.js';
import { holdingAccessToken } from './access-token.js';
import { googleCall, googleError, parseJson } from './http.js';
import { CLOUD_PLATFORM_SCOPE } from './source.js';
import type { FindOptions, Json, SourceCredentials } from './source.js';

const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';

interface Key {
  email: string;
  privateKey: string;
  keyId: string | undefined;
}

export function serviceAccountKeyCredentials(json: Json, file: string, options: FindOptions): SourceCredentials {
  const email = json['client_email'];
  const privateKey = json['private_key'];
  if (typeof email !== 'string' || typeof privateKey !== 'string') {
    throw new TokenFetchError(`${file} is a service-account key without client_email or private_key`, { hint: 'download a new JSON key for the service account' });
  }
  const key: Key = { email, privateKey, keyId: typeof json['private_key_id'] === 'string' ? json['private_key_id'] : undefined };
  const tokenUrl = options.endpoints.oauthToken;
  const now = () => (options.clock ?? { now: Date.now }).now();
  return holdingAccessToken(
    { kind: 'service_account', description: `service-account key ${file}`, identity: email },
    async (signal) => accessToken(await jwtBearerGrant(key, tokenUrl, { scope: CLOUD_PLATFORM_SCOPE }, now(), signal, options.egress), now(), email),
    options,
    {
      idToken: async (audience, signal) => {
        const answer = await jwtBearerGrant(key, tokenUrl, { target_audience: audience }, now(), signal, options.egress);
        if (typeof answer['id_token'] !== 'string') throw new TokenFetchError(`the OAuth token endpoint ${tokenUrl} answered without an id_token`);
        return idToken(answer['id_token'], email);
      },
    },
  );
}

/** RFC 7523 JWT-bearer grant with a service-account key, as Google's libraries do it. */
async function jwtBearerGrant(key: Key, tokenUrl: string, claims: Record<string, string>, nowMs: number, signal: AbortSignal, egress: Egress): Promise<Json> {
  const iat = Math.floor(nowMs / 1000);
  const header = { alg: 'RS256', typ: 'JWT', ...(key.keyId ? { kid: key.keyId } : {}) };
  const payload = { iss: key.email, aud: tokenUrl, iat, exp: iat + 3600, ...claims };
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(payload))}`;
  let signature: string;
  try {
    signature = nodeCrypto().sign('RSA-SHA256', Buffer.from(input), key.privateKey).toString('base64url');
  } catch (err) {
    throw new TokenFetchError(`the service-account key for ${key.email} cannot sign (${errorMessage(err)})`, { hint: 'the private_key in the key file is damaged; download a new key' });
  }
  const body = new URLSearchParams({ grant_type: JWT_BEARER, assertion: `${input}.${signature}` });
  const answer = await googleCall('the OAuth token endpoint', tokenUrl, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: body.toString(),
    signal,
  }, egress);
  if (answer.status !== 200) {
    const err = googleError(answer);
    throw new TokenFetchError(`the OAuth token endpoint refused the service-account key of ${key.email}: ${err}`, {
      status: answer.status,
      hint: /timeframe|expired|future/i.test(err)
        ? 'check this machine\'s clock (NTP): Google accepts assertions only within minutes of its own time'
        : /invalid_grant|signature|not found|disabled/i.test(err)
          ? 'the key may have been deleted or the service account disabled; create a new key, or better use Workload Identity instead of key files'
          : 'retrying with backoff',
    });
  }
  return parseJson(answer, 'the OAuth token endpoint');
}

function b64url(text: string): string {
  return Buffer.from(text, 'utf8').toString('base64url');
}
