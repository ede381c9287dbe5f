import { expect } from 'chai';
import type http from 'node:http';
import { iapGate } from '../fakes/iap-gate.js';
import { signJwt, testKey, verifyJwt } from '../fakes/jwt.js';
import { CLIENT_ID, TARGET_SA, startGoogleWorld } from '../fakes/google-world.js';
import type { GoogleWorld } from '../fakes/google-world.js';

/** The fakes must be strict where Google is, or the provider tests prove nothing. */
describe('Google fakes', () => {
  let world: GoogleWorld;
  before(async () => {
    world = await startGoogleWorld();
  });
  after(() => world.close());

  it('metadata server: requires Metadata-Flavor, answers with it, refuses X-Forwarded-For', async () => {
    const url = `http://${world.metadata.host}/computeMetadata/v1/instance/service-accounts/default/email`;
    expect((await fetch(url)).status).to.equal(403);
    expect((await fetch(url, { headers: { 'metadata-flavor': 'Google', 'x-forwarded-for': '10.0.0.1' } })).status).to.equal(403);
    const ok = await fetch(url, { headers: { 'metadata-flavor': 'Google' } });
    expect(ok.headers.get('metadata-flavor')).to.equal('Google');
    expect(await ok.text()).to.equal(world.metadata.email);
    const noAudience = await fetch(url.replace('email', 'identity'), { headers: { 'metadata-flavor': 'Google' } });
    expect(noAudience.status).to.equal(400);
  });

  it('IAM Credentials: requires a valid access token and answers in Google\'s error shape', async () => {
    const url = `${world.iam.url}/v1/projects/-/serviceAccounts/${TARGET_SA}:generateIdToken`;
    const res = await fetch(url, { method: 'POST', body: JSON.stringify({ audience: CLIENT_ID }), headers: { authorization: 'Bearer ya29.made-up' } });
    expect(res.status).to.equal(401);
    expect(((await res.json()) as { error: { status: string } }).error.status).to.equal('UNAUTHENTICATED');
  });

  it('OAuth token endpoint: rejects an assertion signed by an unknown key', async () => {
    const assertion = signJwt({ iss: 'ci-runner@my-project.iam.gserviceaccount.com', aud: world.oauth.tokenUrl, iat: 1, exp: 2, target_audience: CLIENT_ID }, testKey(2));
    const res = await fetch(world.oauth.tokenUrl, {
      method: 'POST',
      body: new URLSearchParams({ grant_type: 'urn:ietf:params:oauth:grant-type:jwt-bearer', assertion }),
    });
    expect(res.status).to.equal(400);
    expect(await res.json()).to.deep.equal({ error: 'invalid_grant', error_description: 'Invalid JWT Signature.' });
  });

  it('IAP gate: signature, audience, issuer and expiry with no leeway, in Authorization or Proxy-Authorization', () => {
    const gate = iapGate({ issuer: world.issuer, audience: CLIENT_ID });
    const req = (headers: Record<string, string>) => ({ headers, url: '/api/2.0/mlflow/experiments/search' }) as unknown as http.IncomingMessage;
    const now = Math.floor(Date.now() / 1000);
    const good = world.issuer.idToken({ audience: CLIENT_ID, email: TARGET_SA, lifetimeSeconds: 60 });
    expect(gate(req({ authorization: `Bearer ${good}` }))).to.equal(null);
    expect(gate(req({ 'proxy-authorization': `Bearer ${good}` }))).to.equal(null);
    expect(gate(req({}))?.status).to.equal(401);
    const wrongAud = world.issuer.idToken({ audience: 'other', email: TARGET_SA, lifetimeSeconds: 60 });
    expect(gate(req({ authorization: `Bearer ${wrongAud}` }))?.body).to.include('Expected JWT to have audience');
    const expiringNow = signJwt({ iss: 'https://accounts.google.com', aud: CLIENT_ID, email: TARGET_SA, iat: now - 60, exp: now }, world.issuer.keys[0]!);
    expect(gate(req({ authorization: `Bearer ${expiringNow}` }))?.body).to.include('JWT has expired');
    const foreign = signJwt({ iss: 'https://accounts.google.com', aud: CLIENT_ID, iat: now, exp: now + 60 }, testKey(2), { kid: world.issuer.keys[0]!.kid });
    expect(gate(req({ authorization: `Bearer ${foreign}` }))?.status).to.equal(401);
    expect(gate.rejected).to.deep.include({ missing: 1, 'wrong audience': 1, expired: 1, 'invalid signature': 1 });
    expect(verifyJwt(good, { keys: world.issuer.keys, audience: CLIENT_ID, issuer: 'https://evil.example.com' })).to.deep.include({ ok: false });
  });
});
