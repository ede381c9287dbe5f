import { createHash } from 'node:crypto';
import { expect } from 'chai';
import { startFakeOauth } from '../fakes/google-oauth-token.js';
import type { FakeOauth } from '../fakes/google-oauth-token.js';
import { decodeJwt } from '../fakes/jwt.js';

const CLIENT = { clientId: '42-desktop.apps.googleusercontent.com', clientSecret: 'GOCSPX-x' };
const VERIFIER = 'v'.repeat(50);
const CHALLENGE = createHash('sha256').update(VERIFIER).digest('base64url');
const REDIRECT = 'http://127.0.0.1:45678/oauth2callback';

/** The fake authorization and token endpoints are as strict as Google's, so a login that passes them is right. */
describe('fake Google authorization endpoint and code grant', () => {
  let oauth: FakeOauth;
  beforeEach(async () => {
    oauth = await startFakeOauth();
    oauth.addDesktopClient(CLIENT);
  });
  afterEach(() => oauth.close());

  async function authorize(extra: Record<string, string> = {}): Promise<Response> {
    const query = new URLSearchParams({ client_id: CLIENT.clientId, redirect_uri: REDIRECT, response_type: 'code', scope: 'openid email', state: 'st', code_challenge: CHALLENGE, code_challenge_method: 'S256', ...extra });
    return fetch(`${oauth.authorizeUrl}?${query}`, { redirect: 'manual' });
  }
  async function codeFrom(res: Response): Promise<string> {
    const location = new URL(res.headers.get('location')!);
    expect(location.searchParams.get('state')).to.equal('st');
    return location.searchParams.get('code')!;
  }
  function redeem(code: string, extra: Record<string, string> = {}) {
    const body = new URLSearchParams({ grant_type: 'authorization_code', code, client_id: CLIENT.clientId, client_secret: CLIENT.clientSecret, redirect_uri: REDIRECT, code_verifier: VERIFIER, ...extra });
    return fetch(oauth.tokenUrl, { method: 'POST', body }).then(async (r) => ({ status: r.status, json: (await r.json()) as Record<string, string> }));
  }

  it('redirects to the loopback URI with a code and the state, redeemed once with the right verifier for a refresh token and an ID token', async () => {
    const code = await codeFrom(await authorize());
    const answer = await redeem(code);
    expect(answer.status).to.equal(200);
    expect(answer.json['refresh_token']).to.match(/^1\/\//);
    expect(decodeJwt(answer.json['id_token']!)!.payload).to.include({ aud: CLIENT.clientId, email: 'alice@example.com' });
    expect((await redeem(code)).json['error']).to.equal('invalid_grant');
  });

  it('refuses a wrong verifier, another redirect URI, an unknown client and a non-loopback redirect', async () => {
    expect((await redeem(await codeFrom(await authorize()), { code_verifier: 'w'.repeat(50) })).json).to.include({ error: 'invalid_grant', error_description: 'Invalid code verifier.' });
    expect((await redeem(await codeFrom(await authorize()), { redirect_uri: 'http://127.0.0.1:1/oauth2callback' })).json['error']).to.equal('redirect_uri_mismatch');
    expect((await redeem(await codeFrom(await authorize()), { client_secret: 'wrong' })).json['error']).to.equal('invalid_client');
    expect((await authorize({ client_id: 'nobody.apps.googleusercontent.com' })).status).to.equal(401);
    expect((await authorize({ redirect_uri: 'https://evil.example/cb' })).status).to.equal(400);
    const bad = new URL((await authorize({ code_challenge: 'short' })).headers.get('location')!);
    expect(bad.searchParams.get('error')).to.equal('invalid_request');
  });

  it('sends the refresh grant\'s ID token to `audience` when asked, and revokes', async () => {
    const { json } = await redeem(await codeFrom(await authorize()));
    const refresh = (extra: Record<string, string> = {}) =>
      fetch(oauth.tokenUrl, { method: 'POST', body: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: json['refresh_token']!, client_id: CLIENT.clientId, client_secret: CLIENT.clientSecret, ...extra }) }).then(
        async (r) => (await r.json()) as Record<string, string>,
      );
    expect(decodeJwt((await refresh({ audience: 'iap-client.apps.googleusercontent.com' }))['id_token']!)!.payload['aud']).to.equal('iap-client.apps.googleusercontent.com');
    expect(decodeJwt((await refresh())['id_token']!)!.payload['aud']).to.equal(CLIENT.clientId);
    expect((await fetch(oauth.revokeUrl, { method: 'POST', body: new URLSearchParams({ token: json['refresh_token']! }) })).status).to.equal(200);
    expect((await refresh())['error']).to.equal('invalid_grant');
    expect((await fetch(oauth.revokeUrl, { method: 'POST', body: new URLSearchParams({ token: json['refresh_token']! }) })).status).to.equal(400);
  });
});
