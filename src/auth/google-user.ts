import type { Egress } from '../config/egress.js';
import type { ConfigProblem } from '../errors.js';
import { decodeJwtClaims } from './jwt.js';
import { LoginStore, STORE_KINDS } from './google/login-store.js';
import type { StoreKind, StoredLogin } from './google/login-store.js';
import { refreshGrant } from './google/refresh-grant.js';
import type { CredentialsInfo } from './google/source.js';
import type { ProviderContext } from './provider.js';
import { registerProviderType } from './registry.js';
import type { ProviderPlan } from './registry.js';
import { SecretSource } from './secret-source.js';
import { LoginRequiredError, TokenFetchError, idToken } from './token.js';
import type { Token } from './token.js';
import { TokenProvider } from './token-provider.js';
import type { TokenProviderOptions } from './token-provider.js';

/** The organisation's desktop OAuth client and the endpoints of Google's OAuth flow, as `login`, `logout` and the provider use them. */
export interface DesktopClient {
  clientId: string;
  /** Google calls it not secret for installed apps; kvx still never logs or prints it. */
  clientSecret: () => string;
  /** IAP's OAuth client id, sent as `audience` when set; unset, the token is for the desktop client itself. */
  audience: string | undefined;
  endpoints: { authorize: string; token: string; revoke: string };
  store: LoginStore;
  /** How Google's OAuth endpoints are reached (egress proxy, host aliases). */
  egress: Egress;
  close(): void;
}

export const RELOGIN = 'kvx-proxy login';

export function desktopClientOf(plan: ProviderPlan, context: Pick<ProviderContext, 'config' | 'env' | 'baseDir' | 'logger' | 'egress'>): DesktopClient {
  const clientId = String(plan.params['oauth_client_id']);
  const secret = SecretSource.open(plan.params, 'oauth_client_secret', { baseDir: context.baseDir, env: context.env, logger: context.logger })!;
  const audience = typeof plan.params['client_id'] === 'string' && plan.params['client_id'] !== '' ? plan.params['client_id'] : undefined;
  const { endpoints } = context.config.auth;
  return {
    clientId,
    clientSecret: () => secret.get('google-user'),
    audience,
    endpoints: { authorize: endpoints.oauthAuthorize, token: endpoints.oauthToken, revoke: endpoints.oauthRevoke },
    egress: context.egress,
    store: new LoginStore({ clientId, env: context.env, kind: (plan.params['login_store'] as StoreKind | undefined) ?? 'auto' }),
    close: () => secret.close(),
  };
}

/**
 * `google-user`: ID tokens for IAP (or Cloud Run) from the refresh token `kvx-proxy login` stored for the user,
 * through the organisation's desktop OAuth client. The stored login is read again before each refresh, so a new
 * `kvx-proxy login` reaches a running proxy; a refresh token Google refused is not sent to Google again.
 */
export class GoogleUserProvider extends TokenProvider {
  readonly name = 'google-user';
  readonly client: DesktopClient;
  private readonly planPath: string;
  /** The refresh token Google answered invalid_grant to, and that answer: repeated, not re-asked, until a new login. */
  private refused: { refreshToken: string; error: LoginRequiredError } | undefined;

  constructor(plan: ProviderPlan, context: ProviderContext, options: TokenProviderOptions = {}) {
    super('google-user', context, options);
    this.client = desktopClientOf(plan, context);
    this.planPath = plan.path;
  }

  protected override rejectionHint(status: number, identity: string | undefined): string {
    const audience =
      this.client.audience === undefined
        ? `the token's audience is the desktop client ${this.client.clientId} (${this.planPath}.params.oauth_client_id): add it to IAP's programmatic clients ` +
          `(gcloud iap settings set with programmaticClients), or set ${this.planPath}.params.client_id to IAP's OAuth client id`
        : `${this.planPath}.params.client_id = "${this.client.audience}" is likely not IAP's OAuth client id, or the desktop client is not in IAP's project`;
    if (status !== 403) return audience;
    return `${identity ?? 'the logged-in user'} likely lacks IAP-secured Web App User (roles/iap.httpsResourceAccessor) on the app; grant it, or: ${audience}`;
  }

  /** The login in use, for `doctor`: who, since when, where it is kept. Rejects with LoginRequiredError when there is none. */
  async credentialsInfo(): Promise<CredentialsInfo> {
    const login = await this.storedLogin();
    const info: CredentialsInfo = {
      kind: 'google-user',
      description:
        `kvx-proxy login${login.email ? ` of ${login.email}` : ''}${login.savedAt ? ` on ${new Date(login.savedAt).toISOString()}` : ''} ` +
        `with OAuth client ${this.client.clientId}, kept in ${this.client.store.where()}; it lasts until revoked (\`kvx-proxy logout\`) ` +
        'or until Google asks for a new sign-in (session control), then run `kvx-proxy login` again',
    };
    if (login.email) info.identity = login.email;
    return info;
  }

  protected async fetchToken(signal: AbortSignal): Promise<Token> {
    const login = await this.storedLogin();
    const refused = this.refused;
    if (refused !== undefined && refused.refreshToken === login.refreshToken) throw refused.error;
    let answer;
    try {
      answer = await refreshGrant(
        { egress: this.client.egress, tokenUrl: this.client.endpoints.token, clientId: this.client.clientId, clientSecret: this.client.clientSecret(), refreshToken: login.refreshToken, ...(this.client.audience ? { audience: this.client.audience } : {}) },
        { what: `the kvx-proxy login${login.email ? ` of ${login.email}` : ''}`, relogin: RELOGIN },
        signal,
      );
    } catch (err) {
      if (err instanceof LoginRequiredError) this.refused = { refreshToken: login.refreshToken, error: err };
      throw err;
    }
    this.refused = undefined;
    if (typeof answer['id_token'] !== 'string') {
      throw new TokenFetchError('the OAuth token endpoint answered the refresh without an id_token', { hint: 'the login must include the openid scope: run `kvx-proxy login` again' });
    }
    const token = idToken(answer['id_token'], login.email);
    const expected = this.client.audience ?? this.client.clientId;
    if (token.audience !== undefined && token.audience !== expected) {
      throw new TokenFetchError(`the OAuth token endpoint returned an ID token for audience "${token.audience}" instead of "${expected}"`, {
        hint: `check ${this.planPath}.params.client_id and ${this.planPath}.params.oauth_client_id`,
      });
    }
    return token;
  }

  override close(): void {
    super.close();
    this.client.close();
  }

  private async storedLogin(): Promise<StoredLogin> {
    const login = await this.client.store.read();
    if (login === undefined) {
      throw new LoginRequiredError(`no kvx-proxy login is stored for OAuth client ${this.client.clientId} (looked in ${this.client.store.where()})`, {
        hint: `run \`${RELOGIN}\` (it opens a browser; --no-browser prints the URL); a running proxy picks the login up without a restart`,
      });
    }
    return login;
  }
}

/** The email an ID token names, if any. */
export function emailOf(idTokenValue: string | undefined): string | undefined {
  const email = idTokenValue === undefined ? undefined : decodeJwtClaims(idTokenValue)?.email;
  return typeof email === 'string' ? email : undefined;
}

export function validateGoogleUser(plan: ProviderPlan, env: NodeJS.ProcessEnv): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  const id = plan.params['oauth_client_id'];
  const at = `${plan.path}.params.oauth_client_id`;
  if (id === undefined || id === null || id === '') {
    problems.push({ path: at, message: 'required for google-user: the OAuth client id of your organisation\'s desktop app client, e.g. 1234-abc.apps.googleusercontent.com (see docs/providers.md)' });
  } else if (typeof id !== 'string' || /\s/.test(id)) {
    problems.push({ path: at, message: 'must be the client id as APIs & Services → Credentials shows it, without whitespace' });
  }
  problems.push(...SecretSource.validate(plan.params, 'oauth_client_secret', plan.path, env));
  const audience = plan.params['client_id'];
  if (audience !== undefined && audience !== null && audience !== '' && (typeof audience !== 'string' || /\s/.test(audience))) {
    problems.push({ path: `${plan.path}.params.client_id`, message: 'must be IAP\'s OAuth client id, without whitespace (or unset, for a desktop client on IAP\'s programmatic clients list)' });
  }
  const store = plan.params['login_store'];
  if (store !== undefined && !STORE_KINDS.includes(store as StoreKind)) {
    problems.push({ path: `${plan.path}.params.login_store`, message: `must be one of ${STORE_KINDS.join(', ')} (file: never the OS keychain)` });
  }
  return problems;
}

registerProviderType('google-user', {
  validate: (plan, env) => validateGoogleUser(plan, env),
  create: (plan, context) => new GoogleUserProvider(plan, context),
});
