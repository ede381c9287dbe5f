import { expect } from 'chai';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import YAML from 'yaml';
import { main } from '../../src/cli/kvx-proxy.js';
import { basicGate, startFakeMlflow } from '../fakes/mlflow/index.js';
import type { FakeMlflow, Gate } from '../fakes/mlflow/index.js';
import { iapGate } from '../fakes/iap-gate.js';
import { verifyJwt } from '../fakes/jwt.js';
import { CLIENT_ID, TARGET_SA, startGoogleWorld } from '../fakes/google-world.js';
import type { GoogleWorld } from '../fakes/google-world.js';

class Sink extends Writable {
  text = '';
  override _write(chunk: Buffer, _enc: string, done: () => void): void {
    this.text += chunk.toString();
    done();
  }
}

describe('kvx-proxy doctor and print-token', () => {
  let world: GoogleWorld;
  let mlflow: FakeMlflow | undefined;
  beforeEach(async () => {
    world = await startGoogleWorld();
  });
  afterEach(async () => {
    await mlflow?.close();
    mlflow = undefined;
    await world.close();
    process.exitCode = undefined;
  });

  function configFile(extra: Record<string, unknown> = {}, auth: Record<string, unknown> = {}): string {
    const file = path.join(world.dir, `kvx-${Math.random().toString(36).slice(2)}.yml`);
    const config = {
      ...(mlflow ? { upstream: { url: mlflow.url } } : {}),
      auth: {
        params: { client_id: CLIENT_ID, service_account: TARGET_SA },
        endpoints: { oauthToken: world.endpoints.oauthToken, iamCredentials: world.endpoints.iamCredentials },
        ...auth,
      },
      ...extra,
    };
    writeFileSync(file, YAML.stringify(config));
    return file;
  }

  async function run(argv: string[], env: NodeJS.ProcessEnv = world.metadataEnv()) {
    const stdout = new Sink();
    const stderr = new Sink();
    const code = await main(argv, { stdout, stderr, env });
    return { code, out: stdout.text, err: stderr.text };
  }

  const noToken = (text: string) => expect(text).to.not.match(/eyJ[\w-]{10,}\.[\w-]{10,}/);

  it('walks the whole path and passes against an IAP-protected MLflow', async () => {
    mlflow = await startFakeMlflow({ gate: iapGate({ issuer: world.issuer, audience: CLIENT_ID }) });
    const { code, out } = await run(['doctor', '-c', configFile()]);
    expect(out).to.include('[OK  ] provider google-iam: selected because auth.params has client_id and service_account; sets Authorization (Bearer …)');
    expect(out).to.include(`[OK  ] credentials: metadata server ${world.metadata.host} (attached service account) — service account ${world.metadata.email}`);
    expect(out).to.include(`[OK  ] token (google-iam): minted: audience ${CLIENT_ID}; email ${TARGET_SA}; issuer https://accounts.google.com; expires `);
    expect(out).to.include('[OK  ] upstream /health: 200');
    expect(out).to.match(/\[OK {2}\] upstream GET \/api\/2\.0\/mlflow\/experiments\/search\?max_results=1: (200|credentials accepted)/);
    expect(out).to.include('All checks passed.');
    expect(code).to.equal(0);
    noToken(out);
  });

  it('names a wrong client id when IAP rejects the audience', async () => {
    mlflow = await startFakeMlflow({ gate: iapGate({ issuer: world.issuer, audience: 'another-client.apps.googleusercontent.com' }) });
    const { code, out } = await run(['doctor', '-c', configFile()]);
    expect(code).to.equal(1);
    expect(out).to.include('[FAIL] upstream /health: 401 Invalid IAP credentials: Expected JWT to have audience');
    expect(out).to.include(`likely cause: IAP says: "Expected JWT to have audience "another-client.apps.googleusercontent.com"": wrong client id / audience`);
    noToken(out);
  });

  it("quotes IAP's reason when it finds no token: the header IAP does not read", async () => {
    mlflow = await startFakeMlflow({ gate: iapGate({ issuer: world.issuer, audience: CLIENT_ID }) });
    const { code, out } = await run(['doctor', '-c', configFile({}, { header: 'X-Serverless-Authorization' })]);
    expect(code).to.equal(1);
    expect(out).to.include(
      'likely cause: IAP says: "empty token": IAP found no token: it reads Authorization and Proxy-Authorization only, and auth.header is X-Serverless-Authorization',
    );
  });

  it('names IAP access for an identity IAP does not let through', async () => {
    mlflow = await startFakeMlflow({ gate: iapGate({ issuer: world.issuer, audience: CLIENT_ID, allowed: ['someone-else@example.com'] }) });
    const { code, out } = await run(['doctor', '-c', configFile()]);
    expect(code).to.equal(1);
    expect(out).to.include(`likely cause: the token is valid but ${TARGET_SA} is not allowed through IAP`);
    expect(out).to.include(`(roles/iap.httpsResourceAccessor) on the IAP-secured resource in front of ${mlflow.url}; a new token cannot fix this`);
    expect(out).to.include('IAP says: "You don\'t have access. Please contact your administrator."');
  });

  it('explains a basic-auth MLflow behind IAP needing Proxy-Authorization', async () => {
    const iap = iapGate({ issuer: world.issuer, audience: CLIENT_ID });
    const basic = basicGate('admin', 'pw');
    const gate: Gate = (req) => iap(req) ?? basic(req);
    mlflow = await startFakeMlflow({ gate });
    const { code, out } = await run(['doctor', '-c', configFile()]);
    expect(code).to.equal(1);
    expect(out).to.include('[OK  ] upstream /health: 200'); // MLflow's basic-auth app leaves /health open
    expect(out).to.match(/\[FAIL\] upstream GET \/api\/2\.0\/mlflow\/experiments\/search\?max_results=1: 401/);
    expect(out).to.include('put the IAP token in Proxy-Authorization (auth.header: Proxy-Authorization) and add a basic provider');
  });

  it('names the missing Token Creator role', async () => {
    world.iam.serviceAccounts[TARGET_SA] = [];
    mlflow = await startFakeMlflow({ gate: iapGate({ issuer: world.issuer, audience: CLIENT_ID }) });
    const { code, out } = await run(['doctor', '-c', configFile()]);
    expect(code).to.equal(1);
    expect(out).to.include(`[FAIL] token (google-iam): google-iam: ${world.metadata.email} may not mint ID tokens for ${TARGET_SA}`);
    expect(out).to.include('likely cause: grant roles/iam.serviceAccountTokenCreator');
    expect(out).to.include('[SKIP] upstream');
  });

  it('says how to set up credentials when there are none', async () => {
    const { code, out } = await run(['doctor', '-c', configFile()], world.noCredentialsEnv());
    expect(code).to.equal(1);
    expect(out).to.include('[FAIL] credentials: no Google credentials found');
    expect(out).to.include('gcloud auth application-default login');
  });

  it('reports provider param problems as failed steps', async () => {
    const { code, out } = await run(['doctor', '-c', configFile({}, { params: { client_id: CLIENT_ID, service_account: 'not-an-email' } })]);
    expect(code).to.equal(1);
    expect(out).to.include('[FAIL] config: auth.params.service_account: "not-an-email" is not a service-account email');
  });

  it('print-token prints a fresh header value, or only the token', async () => {
    const file = configFile();
    const full = await run(['print-token', '-c', file]);
    expect(full.code).to.equal(0);
    expect(full.out).to.match(/^Bearer eyJ[\w-]+\.[\w-]+\.[\w-]+\n$/);
    const only = await run(['print-token', '-c', file, '--token-only']);
    expect(only.code).to.equal(0);
    const token = only.out.trim();
    expect(verifyJwt(token, { keys: world.issuer.keys, audience: CLIENT_ID }).ok).to.equal(true);
    expect(full.err + only.err).to.not.include(token);
    expect(world.iam.counts['generateIdToken']).to.equal(2);
  });

  it('print-token fails with the reason and a non-zero exit', async () => {
    world.iam.serviceAccounts[TARGET_SA] = [];
    const { code, out, err } = await run(['print-token', '-c', configFile()]);
    expect(code).to.equal(1);
    expect(out).to.equal('');
    expect(err).to.include('Token Creator role is missing');
    expect(err).to.include('hint: grant roles/iam.serviceAccountTokenCreator');
  });
});
