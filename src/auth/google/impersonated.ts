/**
 * An impersonated_service_account credentials file (`gcloud auth application-default login
 * --impersonate-service-account=…`): source credentials (a gcloud login, a key, an external account) that act as
 * the target service account through IAM Credentials, with an optional delegation chain. Done here rather than by
 * google-auth-library, whose Impersonated client calls https://iamcredentials.googleapis.com whatever
 * auth.endpoints.iamCredentials says, and whose source login refreshes at Google's token URL rather than
 * auth.endpoints.oauthToken. The calls are the library's: generateAccessToken for the cloud-platform access token,
 * generateIdToken on the target (authenticated by the source) for ID tokens.
 */
import { TokenFetchError, idToken } from '../token.js';
import type { Token } from '../token.js';
import { holdingAccessToken } from './access-token.js';
import { oneLine, parseJson } from './http.js';
import type { GoogleAnswer } from './http.js';
import { iamCredentialsCall, iamRefusal } from './iam-credentials.js';
import { CLOUD_PLATFORM_SCOPE } from './source.js';
import type { FindOptions, Json, SourceCredentials } from './source.js';

/** The target's access token lives as long as Google's default; kvx refreshes it before it runs out. */
const ACCESS_TOKEN_LIFETIME = '3600s';
const TARGET = /\/serviceAccounts\/([^/:]+):(?:generateAccessToken|generateIdToken)$/;

export type SourceOf = (json: Json, file: string, options: FindOptions) => SourceCredentials;

export function impersonatedCredentials(json: Json, file: string, options: FindOptions, sourceOf: SourceOf): SourceCredentials {
  const url = json['service_account_impersonation_url'];
  const target = typeof url === 'string' ? TARGET.exec(url)?.[1] : undefined;
  if (target === undefined) {
    throw new TokenFetchError(`${file} is an impersonated_service_account file without a usable service_account_impersonation_url`, {
      hint: 'recreate it: gcloud auth application-default login --impersonate-service-account=SERVICE_ACCOUNT_EMAIL',
    });
  }
  const account = decodeURIComponent(target);
  const sourceJson = json['source_credentials'];
  if (typeof sourceJson !== 'object' || sourceJson === null || Array.isArray(sourceJson) || (sourceJson as Json)['type'] === 'impersonated_service_account') {
    throw new TokenFetchError(`${file} has no usable source_credentials (a gcloud login, a service-account key or an external account)`, {
      hint: 'recreate it: gcloud auth application-default login --impersonate-service-account=SERVICE_ACCOUNT_EMAIL',
    });
  }
  const delegatesJson = json['delegates'];
  const delegates = Array.isArray(delegatesJson) ? delegatesJson.map(String) : [];
  const source = sourceOf(sourceJson as Json, `${file} (source_credentials)`, options);
  const base = options.endpoints.iamCredentials;
  const refusalContext = (what: string) => ({
    account,
    caller: source.info,
    what,
    accountKey: `service_account_impersonation_url in ${file}`,
    badRequestHint: `check the delegates in ${file}`,
  });

  /** One call with the source's access token, again with a new one if IAM Credentials says it is no longer valid. */
  const call = async (method: 'generateIdToken' | 'generateAccessToken', body: Record<string, unknown>, signal: AbortSignal): Promise<GoogleAnswer> => {
    let access = await source.accessToken(signal);
    let answer = await iamCredentialsCall(base, method, account, access.value, body, delegates, signal, options.egress);
    if (answer.status === 401) {
      source.dropAccessToken(access.value);
      access = await source.accessToken(signal);
      answer = await iamCredentialsCall(base, method, account, access.value, body, delegates, signal, options.egress);
    }
    return answer;
  };

  const held = holdingAccessToken(
    {
      kind: 'impersonated_service_account',
      description: `service account ${account} impersonated by the ${source.info.description}`,
      identity: account,
    },
    async (signal): Promise<Token> => {
      const answer = await call('generateAccessToken', { scope: [CLOUD_PLATFORM_SCOPE], lifetime: ACCESS_TOKEN_LIFETIME }, signal);
      if (answer.status !== 200) throw iamRefusal(answer, refusalContext('get access tokens for'));
      const body = parseJson(answer, 'IAM Credentials');
      const expiresAt = typeof body['expireTime'] === 'string' ? Date.parse(body['expireTime']) : NaN;
      if (typeof body['accessToken'] !== 'string' || !Number.isFinite(expiresAt)) {
        throw new TokenFetchError(`IAM Credentials answered generateAccessToken without accessToken and expireTime: ${oneLine(answer.text)}`);
      }
      return { value: body['accessToken'], expiresAt, identity: account };
    },
    options,
    {
      idToken: async (audience, signal) => {
        const answer = await call('generateIdToken', { audience, includeEmail: true }, signal);
        if (answer.status !== 200) throw iamRefusal(answer, refusalContext('mint ID tokens for'));
        const body = parseJson(answer, 'IAM Credentials');
        if (typeof body['token'] !== 'string') throw new TokenFetchError(`IAM Credentials answered without a token: ${oneLine(answer.text)}`);
        return idToken(body['token'], account);
      },
    },
  );
  return {
    ...held,
    close: () => {
      held.close();
      source.close();
    },
  };
}
