/**
 * `kvx-proxy login` and `logout`: the desktop-app OAuth flow Google documents for programmatic access to IAP by
 * users. google-auth-library's OAuth2Client builds the authorization URL and the PKCE pair and redeems the code;
 * kvx adds the loopback listener, the browser, and the store.
 */
import { randomBytes } from 'node:crypto';
import type { DesktopClient } from '../google-user.js';
import { emailOf } from '../google-user.js';
import { egressTransporterOptions } from '../../net/egress-http.js';
import { googleAuthLibrary, libraryError } from './library.js';
import { googleCall, googleError } from './http.js';
import { LoginError, startCallbackListener } from './loopback.js';

export interface LoginOptions {
  /** Print the URL instead of opening a browser. */
  noBrowser: boolean;
  timeoutMs: number;
  /** Lines for the user (the URL, what happened); stderr in the CLI. */
  say: (line: string) => void;
  /** Opens the URL; resolves false when no browser could be started. */
  open: (url: string) => Promise<boolean>;
}

export interface LoginResult {
  email: string | undefined;
  /** Where the refresh token was stored. */
  where: string;
}

const SCOPES = ['openid', 'email'];

export async function login(client: DesktopClient, options: LoginOptions): Promise<LoginResult> {
  const { OAuth2Client, CodeChallengeMethod } = googleAuthLibrary();
  const state = randomBytes(32).toString('base64url');
  const listener = await startCallbackListener({ state, timeoutMs: options.timeoutMs });
  const transporterOptions = egressTransporterOptions(client.egress);
  try {
    const oauth = new OAuth2Client({
      clientId: client.clientId,
      clientSecret: client.clientSecret(),
      redirectUri: listener.redirectUri,
      endpoints: { oauth2AuthBaseUrl: client.endpoints.authorize, oauth2TokenUrl: client.endpoints.token },
      ...(transporterOptions ? { transporterOptions } : {}),
    });
    const { codeVerifier, codeChallenge } = await oauth.generateCodeVerifierAsync();
    const url = oauth.generateAuthUrl({
      access_type: 'offline',
      // A refresh token comes only with a consent given now; a login is asked for because the old one is gone.
      prompt: 'consent',
      scope: SCOPES,
      state,
      code_challenge: codeChallenge!,
      code_challenge_method: CodeChallengeMethod.S256,
    });
    const port = new URL(listener.redirectUri).port;
    const opened = options.noBrowser ? false : await options.open(url);
    options.say(opened ? 'Your browser has been opened to sign in with Google. If it did not open, visit:' : 'Sign in with Google by opening this URL in a browser on this machine:');
    options.say(`\n    ${url}\n`);
    options.say(`Waiting for the browser on ${listener.redirectUri.replace(/\/[^/]*$/, '')} (a browser on another machine reaches it with: ssh -L ${port}:127.0.0.1:${port} <this machine>)…`);
    const code = await listener.code;
    let tokens;
    try {
      ({ tokens } = await oauth.getToken({ code, codeVerifier: codeVerifier, redirect_uri: listener.redirectUri }));
    } catch (err) {
      throw new LoginError(`Google refused to redeem the sign-in code: ${libraryError(err)}`, 'check the desktop client id and secret (oauth_client_id, oauth_client_secret), then run `kvx-proxy login` again');
    }
    if (typeof tokens.refresh_token !== 'string' || tokens.refresh_token === '') {
      throw new LoginError('Google answered the sign-in without a refresh token', 'the OAuth client must be of type Desktop app; run `kvx-proxy login` again');
    }
    const email = emailOf(tokens.id_token ?? undefined);
    const stored: Parameters<DesktopClient['store']['write']>[0] = { refreshToken: tokens.refresh_token, clientId: client.clientId, savedAt: Date.now() };
    if (email !== undefined) stored.email = email;
    const where = await client.store.write(stored);
    return { email, where };
  } finally {
    await listener.close();
  }
}

export interface LogoutResult {
  /** There was a login to remove. */
  had: boolean;
  email?: string;
  /** Google revoked it, or already did not know it. */
  revoked: boolean;
  /** Why the revocation failed, when it did; the login was deleted here anyway. */
  revokeError?: string;
}

/**
 * Revokes the stored refresh token at Google, then deletes it here. The token goes in the POST body, not the URL
 * google-auth-library's revokeToken puts it in, so it cannot reach an error message through the URL.
 */
export async function logout(client: DesktopClient, signal: AbortSignal): Promise<LogoutResult> {
  const stored = await client.store.read();
  if (stored === undefined) return { had: false, revoked: false };
  const result: LogoutResult = { had: true, revoked: false };
  if (stored.email !== undefined) result.email = stored.email;
  try {
    const answer = await googleCall('the OAuth revocation endpoint', client.endpoints.revoke, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token: stored.refreshToken }).toString(),
      signal,
    }, client.egress);
    // invalid_token: Google no longer knows it (revoked or expired already), which is what logout wants.
    if (answer.status === 200 || (answer.status === 400 && /invalid_token/.test(answer.text))) result.revoked = true;
    else result.revokeError = googleError(answer);
  } catch (err) {
    result.revokeError = (err as Error).message;
  }
  await client.store.delete();
  return result;
}
