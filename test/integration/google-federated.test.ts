/**
 * Federated and impersonated identities end to end against the fakes: external_account files (workload identity
 * federation: the file google-github-actions/auth writes, a file-sourced token, Azure's url-sourced JSON answer)
 * through a strict STS, the impersonation chain through IAM Credentials (generateAccessToken with delegates, then
 * generateIdToken), and impersonated_service_account ADC files for google-iam and google-oauth.
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { findCredentials } from '../../src/auth/google/discovery.js';
import type { GoogleTokenProvider } from '../../src/auth/google/provider.js';
import { TokenFetchError } from '../../src/auth/token.js';
import { decodeJwtClaims } from '../../src/auth/jwt.js';
import { Egress } from '../../src/config/egress.js';
import { loadConfig } from '../../src/config/load.js';
import { formatReport, runDoctor } from '../../src/doctor/doctor.js';
import { silentLogger } from '../../src/log/logger.js';
import { count, startFakeServer } from '../fakes/google-common.js';
import type { FakeServer } from '../fakes/google-common.js';
import { authorizedUserFile, writeCredentialsFile } from '../fakes/google-oauth-token.js';
import { startFakeAwsMetadata } from '../fakes/aws-metadata.js';
import { AWS_TOKEN_TYPE, CLOUD_PLATFORM, JWT_TOKEN_TYPE, OidcIssuer, TOKEN_EXCHANGE_GRANT, principalOf, providerAudience, startFakeGithubOidc, startFakeSts } from '../fakes/google-sts.js';
import type { FakeGithubOidc, FakeSts, PoolProvider } from '../fakes/google-sts.js';
import { CLIENT_ID, TARGET_SA, USER, capturingLogger, startGoogleWorld } from '../fakes/google-world.js';
import type { GoogleWorld } from '../fakes/google-world.js';
import { iapGate } from '../fakes/iap-gate.js';
import { startFakeMlflow } from '../fakes/mlflow/index.js';
import { request } from '../helpers/http.js';
import { startTestProxy } from '../helpers/proxy.js';
import { expectNoSecrets, injectorFor } from './google-helpers.js';

const CI_SA = 'ci-deployer@my-project.iam.gserviceaccount.com';
const HOP_SA = 'hop-account@my-project.iam.gserviceaccount.com';
const IMPERSONATED_SA = 'laptop-target@my-project.iam.gserviceaccount.com';
const SUBJECT = 'repo:acme/pipelines:ref:refs/heads/main';
const GOOGLE_STS = 'https://sts.googleapis.com/v1/token';
const GOOGLE_IAM = 'https://iamcredentials.googleapis.com';

describe('federated and impersonated Google identities', () => {
  let world: GoogleWorld;
  let github: PoolProvider;
  let azure: PoolProvider;
  let sts: FakeSts;
  let gh: FakeGithubOidc;
  let azureImds: FakeServer;
  let ghPrincipal: string;
  let azurePrincipal: string;

  beforeEach(async () => {
    world = await startGoogleWorld();
    github = { projectNumber: '123456789012', pool: 'ci-pool', provider: 'github', issuer: new OidcIssuer() };
    azure = { projectNumber: '123456789012', pool: 'ci-pool', provider: 'azure', issuer: new OidcIssuer('https://sts.windows.net/tenant-1/'), allowedAudiences: ['api://kvx-federation'] };
    sts = await startFakeSts({ accessTokens: world.accessTokens, providers: [github, azure] });
    gh = await startFakeGithubOidc(github.issuer, SUBJECT);
    azureImds = await startFakeServer((req, _body, respond) => {
      const url = new URL(req.url ?? '/', 'http://imds');
      if (req.headers['metadata'] !== 'True' || url.pathname !== '/metadata/identity/oauth2/token') return respond(400, { error: 'invalid_request', error_description: 'Required metadata header not specified' });
      count(azureImds, 'token');
      respond(200, { access_token: azure.issuer.token({ sub: 'azure-vm-object-id', aud: url.searchParams.get('resource') ?? '' }), token_type: 'Bearer' });
    });
    ghPrincipal = principalOf(github, SUBJECT);
    azurePrincipal = principalOf(azure, 'azure-vm-object-id');
    // Who may act as whom: the GitHub job impersonates CI_SA (workloadIdentityUser), which mints for TARGET_SA;
    // the laptop user reaches IMPERSONATED_SA through HOP_SA.
    world.iam.serviceAccounts[CI_SA] = [ghPrincipal];
    world.iam.serviceAccounts[TARGET_SA]!.push(CI_SA, ghPrincipal, azurePrincipal, IMPERSONATED_SA);
    world.iam.serviceAccounts[HOP_SA] = [USER.email];
    world.iam.serviceAccounts[IMPERSONATED_SA] = [HOP_SA];
  });
  afterEach(async () => {
    await Promise.all([sts.close(), gh.close(), azureImds.close()]);
    await world.close();
  });

  function credentialsEnv(file: string): NodeJS.ProcessEnv {
    return { ...world.noCredentialsEnv(), GOOGLE_APPLICATION_CREDENTIALS: file };
  }

  /** The file google-github-actions/auth writes for workload_identity_provider + service_account, with Google's URLs. */
  function githubActionsFile(): string {
    const audience = providerAudience(github);
    return writeCredentialsFile(path.join(world.dir, 'gha-creds-1a2b3c.json'), {
      type: 'external_account',
      audience,
      subject_token_type: JWT_TOKEN_TYPE,
      token_url: GOOGLE_STS,
      service_account_impersonation_url: `${GOOGLE_IAM}/v1/projects/-/serviceAccounts/${CI_SA}:generateAccessToken`,
      credential_source: {
        url: `${gh.requestUrl}&audience=${encodeURIComponent(`https:${audience}`)}`,
        headers: { Authorization: `Bearer ${gh.requestToken}` },
        format: { type: 'json', subject_token_field_name: 'value' },
      },
    });
  }

  function impersonatedFile(delegates: string[] = [HOP_SA]): string {
    return writeCredentialsFile(path.join(world.dir, 'adc-impersonated.json'), {
      type: 'impersonated_service_account',
      service_account_impersonation_url: `${GOOGLE_IAM}/v1/projects/-/serviceAccounts/${IMPERSONATED_SA}:generateAccessToken`,
      delegates,
      source_credentials: authorizedUserFile(USER),
    });
  }

  const search = (url: string) =>
    request(`${url}/api/2.0/mlflow/experiments/search`, { method: 'POST', body: '{"max_results":1}', headers: { 'content-type': 'application/json' } });
  const federationEndpoints = () => ({ sts: sts.tokenUrl, iamCredentials: world.endpoints.iamCredentials });

  it('GitHub Actions: the file google-github-actions/auth writes, behind the proxy and an IAP gate, with every Google URL from auth.endpoints', async () => {
    const gate = iapGate({ issuer: world.issuer, audience: CLIENT_ID, allowed: [TARGET_SA] });
    const mlflow = await startFakeMlflow({ gate });
    const proxy = await startTestProxy(
      mlflow.url,
      {
        'auth.endpoints.oauthToken': world.endpoints.oauthToken,
        'auth.endpoints.iamCredentials': world.endpoints.iamCredentials,
        'auth.endpoints.sts': sts.tokenUrl,
        'auth.params.client_id': CLIENT_ID,
        'auth.params.service_account': TARGET_SA,
      },
      credentialsEnv(githubActionsFile()),
    );
    try {
      for (let i = 0; i < 3; i++) expect((await search(proxy.url)).status).to.equal(200);
      expect(gate.identities).to.deep.equal([TARGET_SA, TARGET_SA, TARGET_SA]);
      expect(gh.counts['token']).to.equal(1);
      expect(sts.exchanges).to.deep.equal([{ audience: providerAudience(github), subjectTokenType: JWT_TOKEN_TYPE, scope: CLOUD_PLATFORM, principal: ghPrincipal }]);
      expect(sts.lastForm?.['grant_type']).to.equal(TOKEN_EXCHANGE_GRANT);
      // The chain: the federated principal gets CI_SA's access token, CI_SA mints the ID token for TARGET_SA.
      expect(world.iam.accessTokenCalls.map((c) => [c.caller, c.serviceAccount])).to.deep.equal([[ghPrincipal, CI_SA]]);
      expect(world.iam.accessTokenCalls[0]!.body.scope).to.deep.equal([CLOUD_PLATFORM]);
      expect(world.iam.calls.map((c) => [c.caller, c.serviceAccount, c.body.audience])).to.deep.equal([[CI_SA, TARGET_SA, CLIENT_ID]]);
      expectNoSecrets(proxy.logs.lines, [gh.requestToken, ...gate.tokens]);
      expect(proxy.logs.text()).to.include('workload identity federation, subject token from http://127.0.0.1');
    } finally {
      await proxy.close(500);
      await mlflow.close();
    }
  });

  it('doctor: the federation, the impersonated account, the token, and the upstream through IAP', async () => {
    const gate = iapGate({ issuer: world.issuer, audience: CLIENT_ID, allowed: [TARGET_SA] });
    const mlflow = await startFakeMlflow({ gate });
    try {
      const settings = {
        'upstream.url': mlflow.url,
        'auth.endpoints.oauthToken': world.endpoints.oauthToken,
        'auth.endpoints.iamCredentials': world.endpoints.iamCredentials,
        'auth.endpoints.sts': sts.tokenUrl,
        'auth.params.client_id': CLIENT_ID,
        'auth.params.service_account': TARGET_SA,
      };
      const loaded = loadConfig({ env: {}, overrides: Object.entries(settings).map(([p, value]) => ({ path: p, value, source: 'test' })) });
      const report = await runDoctor(loaded, { env: credentialsEnv(githubActionsFile()) });
      const out = formatReport(report);
      expect(report.ok, out).to.equal(true);
      expect(out).to.match(/\[OK {2}\] credentials: workload identity federation, subject token from http:\/\/127\.0\.0\.1:\d+ \(.*gha-creds-1a2b3c\.json\) — service account ci-deployer@my-project\.iam\.gserviceaccount\.com/);
      expect(out).to.include(`email ${TARGET_SA}`);
      expect(out).to.not.include(gh.requestToken);
    } finally {
      await mlflow.close();
    }
  });

  it('a file-sourced subject token without impersonation: the federated principal calls generateIdToken itself', async () => {
    const tokenFile = path.join(world.dir, 'oidc-token');
    writeFileSync(tokenFile, github.issuer.token({ sub: SUBJECT, aud: `https:${providerAudience(github)}` }));
    const file = writeCredentialsFile(path.join(world.dir, 'wif-file.json'), {
      type: 'external_account',
      audience: providerAudience(github),
      subject_token_type: JWT_TOKEN_TYPE,
      token_url: GOOGLE_STS,
      credential_source: { file: tokenFile },
    });
    const { logger } = capturingLogger();
    const { injector } = await injectorFor(world, credentialsEnv(file), { params: { client_id: CLIENT_ID, service_account: TARGET_SA }, endpoints: federationEndpoints() }, logger);
    try {
      const headers = await injector.headers();
      const claims = decodeJwtClaims(headers['Authorization']!.slice('Bearer '.length))!;
      expect([claims.email, claims.aud]).to.deep.equal([TARGET_SA, CLIENT_ID]);
      expect(world.iam.accessTokenCalls).to.deep.equal([]);
      expect(world.iam.calls.map((c) => c.caller)).to.deep.equal([ghPrincipal]);
    } finally {
      await injector.close();
    }
  });

  it('Azure: a url-sourced token from a JSON answer, with the headers the file names', async () => {
    const file = writeCredentialsFile(path.join(world.dir, 'wif-azure.json'), {
      type: 'external_account',
      audience: providerAudience(azure),
      subject_token_type: JWT_TOKEN_TYPE,
      token_url: sts.tokenUrl,
      credential_source: {
        url: `${azureImds.url}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=api://kvx-federation`,
        headers: { Metadata: 'True' },
        format: { type: 'json', subject_token_field_name: 'access_token' },
      },
    });
    const { injector } = await injectorFor(world, credentialsEnv(file), { params: { client_id: CLIENT_ID, service_account: TARGET_SA } }, silentLogger);
    try {
      await injector.start();
      expect(azureImds.counts['token']).to.equal(1);
      expect(world.iam.calls.map((c) => [c.caller, c.serviceAccount])).to.deep.equal([[azurePrincipal, TARGET_SA]]);
    } finally {
      await injector.close();
    }
  });

  it('AWS: the signed GetCallerIdentity request from the instance role (IMDSv2) is the subject token', async () => {
    const credentials = { accessKeyId: 'ASIAFAKEKEY1234567', secretAccessKey: 'fake-secret-access-key/abc', sessionToken: 'fake-session-token' };
    const arn = 'arn:aws:sts::111122223333:assumed-role/kvx-runner/i-0abc';
    const aws: PoolProvider = { projectNumber: '123456789012', pool: 'ci-pool', provider: 'aws', issuer: new OidcIssuer(), aws: { accessKeys: { [credentials.accessKeyId]: { secretAccessKey: credentials.secretAccessKey, arn } } } };
    const awsSts = await startFakeSts({ accessTokens: world.accessTokens, providers: [aws] });
    const imds = await startFakeAwsMetadata({ zone: 'eu-west-1b', role: 'kvx-runner', credentials });
    world.iam.serviceAccounts[TARGET_SA]!.push(principalOf(aws, arn));
    const file = writeCredentialsFile(path.join(world.dir, 'wif-aws.json'), {
      type: 'external_account',
      audience: providerAudience(aws),
      subject_token_type: AWS_TOKEN_TYPE,
      token_url: awsSts.tokenUrl,
      credential_source: {
        environment_id: 'aws1',
        region_url: `${imds.url}/latest/meta-data/placement/availability-zone`,
        url: `${imds.url}/latest/meta-data/iam/security-credentials`,
        regional_cred_verification_url: 'https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15',
        imdsv2_session_token_url: `${imds.url}/latest/api/token`,
      },
    });
    // google-auth-library reads AWS_* from the process environment before the metadata service.
    const saved = Object.entries(process.env).filter(([k]) => k.startsWith('AWS_'));
    for (const [k] of saved) delete process.env[k];
    const { injector } = await injectorFor(world, credentialsEnv(file), { params: { client_id: CLIENT_ID, service_account: TARGET_SA } }, silentLogger);
    try {
      // The fake checks the SigV4 signature as AWS would: a wrong secret is refused.
      const rightSecret = aws.aws!.accessKeys[credentials.accessKeyId]!.secretAccessKey;
      aws.aws!.accessKeys[credentials.accessKeyId]!.secretAccessKey = 'another-secret';
      const refused = await findCredentials({ env: credentialsEnv(file), endpoints: world.endpoints, logger: silentLogger, egress: Egress.none });
      const err = (await refused.accessToken(AbortSignal.timeout(5_000)).catch((e: unknown) => e)) as Error;
      refused.close();
      expect(err.message).to.include('The request signature we calculated does not match');
      aws.aws!.accessKeys[credentials.accessKeyId]!.secretAccessKey = rightSecret;
      await injector.start();
      expect(awsSts.exchanges.map((e) => [e.subjectTokenType, e.principal])).to.deep.equal([[AWS_TOKEN_TYPE, principalOf(aws, arn)]]);
      expect(world.iam.calls.map((c) => [c.caller, c.serviceAccount])).to.deep.equal([[principalOf(aws, arn), TARGET_SA]]);
      expect(imds.counts['credentials'], 'one read per look-up: the refused one and the provider').to.equal(2);
    } finally {
      await injector.close();
      await Promise.all([awsSts.close(), imds.close()]);
      for (const [k, v] of saved) process.env[k] = v;
    }
  });

  it('STS refusals reach the error with its reason and a hint naming the pool provider: a token for another audience, an expired one', async () => {
    const tokenFile = path.join(world.dir, 'oidc-token');
    const file = writeCredentialsFile(path.join(world.dir, 'wif-bad.json'), {
      type: 'external_account',
      audience: providerAudience(github),
      subject_token_type: JWT_TOKEN_TYPE,
      token_url: GOOGLE_STS,
      credential_source: { file: tokenFile },
    });
    for (const [token, reason] of [
      [github.issuer.token({ sub: SUBJECT, aud: 'https://github.com/acme' }), 'does not match the expected audience'],
      [github.issuer.token({ sub: SUBJECT, aud: `https:${providerAudience(github)}`, expired: true }), 'The ID Token is expired.'],
    ] as const) {
      writeFileSync(tokenFile, token);
      const source = await findCredentials({ env: credentialsEnv(file), endpoints: { ...world.endpoints, ...federationEndpoints() }, logger: silentLogger, egress: Egress.none });
      try {
        const err = (await source.accessToken(AbortSignal.timeout(5_000)).catch((e: unknown) => e)) as TokenFetchError;
        expect(err).to.be.instanceOf(TokenFetchError);
        expect(err.message).to.include('invalid_grant').and.include(reason);
        expect(err.hint).to.include(providerAudience(github));
      } finally {
        source.close();
      }
    }
    expect(sts.exchanges).to.deep.equal([]);
  });

  it('impersonated_service_account with a delegate: google-iam for the file\'s own target mints through the file\'s chain', async () => {
    const gate = iapGate({ issuer: world.issuer, audience: CLIENT_ID, allowed: [IMPERSONATED_SA] });
    const mlflow = await startFakeMlflow({ gate });
    const proxy = await startTestProxy(
      mlflow.url,
      {
        'auth.endpoints.oauthToken': world.endpoints.oauthToken,
        'auth.endpoints.iamCredentials': world.endpoints.iamCredentials,
        'auth.params.client_id': CLIENT_ID,
        'auth.params.service_account': IMPERSONATED_SA,
      },
      credentialsEnv(impersonatedFile()),
    );
    try {
      expect((await search(proxy.url)).status).to.equal(200);
      expect(gate.identities).to.deep.equal([IMPERSONATED_SA]);
      expect(world.iam.calls.map((c) => [c.caller, c.serviceAccount, c.body.delegates])).to.deep.equal([
        [USER.email, IMPERSONATED_SA, [`projects/-/serviceAccounts/${HOP_SA}`]],
      ]);
    } finally {
      await proxy.close(500);
      await mlflow.close();
    }
  });

  it('impersonated_service_account: google-iam for another account uses the impersonated account\'s access token (generateAccessToken with delegates)', async () => {
    const { injector } = await injectorFor(world, credentialsEnv(impersonatedFile()), { params: { client_id: CLIENT_ID, service_account: TARGET_SA } }, silentLogger);
    try {
      const claims = decodeJwtClaims((await injector.headers())['Authorization']!.slice('Bearer '.length))!;
      expect(claims.email).to.equal(TARGET_SA);
      expect(world.iam.accessTokenCalls.map((c) => [c.caller, c.serviceAccount, c.body.delegates, c.body.lifetime])).to.deep.equal([
        [USER.email, IMPERSONATED_SA, [`projects/-/serviceAccounts/${HOP_SA}`], '3600s'],
      ]);
      expect(world.iam.calls.map((c) => [c.caller, c.serviceAccount])).to.deep.equal([[IMPERSONATED_SA, TARGET_SA]]);
    } finally {
      await injector.close();
    }
  });

  it('google-oauth with an impersonated_service_account file mints the ID token for the impersonated account', async () => {
    const { logger, lines } = capturingLogger();
    const { injector, plans } = await injectorFor(world, credentialsEnv(impersonatedFile()), { params: { client_id: CLIENT_ID } }, logger);
    try {
      expect(plans.map((p) => p.type)).to.deep.equal(['google-oauth']);
      const value = (await injector.headers())['Authorization']!;
      const claims = decodeJwtClaims(value.slice('Bearer '.length))!;
      expect([claims.email, claims.aud]).to.deep.equal([IMPERSONATED_SA, CLIENT_ID]);
      expect(world.iam.calls.map((c) => [c.caller, c.serviceAccount, c.body.audience, c.body.includeEmail])).to.deep.equal([[USER.email, IMPERSONATED_SA, CLIENT_ID, true]]);
      const provider = injector.active[0]!.provider as GoogleTokenProvider;
      expect(await provider.credentialsInfo()).to.include({ kind: 'impersonated_service_account', identity: IMPERSONATED_SA });
      expectNoSecrets(lines, [value.slice('Bearer '.length), USER.refreshToken]);
    } finally {
      await injector.close();
    }
  });

  it('impersonated_service_account: the access token for Google APIs is the target\'s; a caller without Token Creator is told which role to grant to whom', async () => {
    const source = await findCredentials({ env: credentialsEnv(impersonatedFile([])), endpoints: world.endpoints, logger: silentLogger, egress: Egress.none });
    try {
      const err = (await source.accessToken(AbortSignal.timeout(5_000)).catch((e: unknown) => e)) as TokenFetchError;
      expect(err).to.be.instanceOf(TokenFetchError);
      expect(err.message).to.include(`may not get access tokens for ${IMPERSONATED_SA}`);
      expect(err.hint).to.include(`--member=user:${USER.email} --role=roles/iam.serviceAccountTokenCreator`);
    } finally {
      source.close();
    }
    const chained = await findCredentials({ env: credentialsEnv(impersonatedFile()), endpoints: world.endpoints, logger: silentLogger, egress: Egress.none });
    try {
      const token = await chained.accessToken(AbortSignal.timeout(5_000));
      expect(world.accessTokens.check(`Bearer ${token.value}`)).to.deep.equal({ email: IMPERSONATED_SA });
    } finally {
      chained.close();
    }
  });
});
