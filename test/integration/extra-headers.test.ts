/**
 * auth.extraHeaders: fixed headers next to the providers' (google-iam's Authorization plus a workspace and an API
 * key), from literals, the environment (read at start) and files (re-read when they change); names checked, values
 * never logged and redacted when the config is printed.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import '../../src/auth/index.js';
import { planProviders } from '../../src/auth/registry.js';
import { HeaderInjector } from '../../src/auth/injector.js';
import { loadConfig } from '../../src/config/load.js';
import { redactConfig } from '../../src/config/redact.js';
import { silentLogger } from '../../src/log/logger.js';
import { CLIENT_ID, TARGET_SA, startGoogleWorld } from '../fakes/google-world.js';
import type { GoogleWorld } from '../fakes/google-world.js';
import { iapGate } from '../fakes/iap-gate.js';
import { startFakeMlflow } from '../fakes/mlflow/index.js';
import type { FakeMlflow } from '../fakes/mlflow/index.js';
import { request } from '../helpers/http.js';
import { startTestProxy } from '../helpers/proxy.js';
import { sleep } from './google-helpers.js';

const API_KEY = 'vendor-key-3f9a1c77';
const ROTATED_KEY = 'vendor-key-rotated-88b2';

function problemsOf(extraHeaders: Record<string, unknown>, env: NodeJS.ProcessEnv = {}, auth: Record<string, unknown> = { provider: 'none' }) {
  const loaded = loadConfig({
    env: {},
    overrides: [
      ...Object.entries(auth).map(([k, v]) => ({ path: `auth.${k}`, value: v, source: 'test' })),
      { path: 'auth.extraHeaders', value: extraHeaders, source: 'test' },
    ],
    require: { upstream: false },
  });
  return planProviders(loaded.config, env).problems;
}

describe('auth.extraHeaders', () => {
  it('refuses bad names, reserved names, a header a provider sets, twins, empty or multi-line values and unset variables, naming the key', () => {
    const problems = problemsOf({ 'Bad Name': 'x', Host: 'evil', 'Transfer-Encoding': 'chunked', 'X-A': 'a', 'x-a': 'b', 'X-Empty': '', 'X-Split': 'a\r\nInjected: 1', 'X-Env': { env: 'NOT_SET' }, 'X-Two': { env: 'A', file: 'b' }, 'X-Odd': { literal: 'x' } });
    expect(problems.map((p) => p.path)).to.deep.equal([
      'auth.extraHeaders.Bad Name',
      'auth.extraHeaders.Host',
      'auth.extraHeaders.Transfer-Encoding',
      'auth.extraHeaders.x-a',
      'auth.extraHeaders.X-Empty',
      'auth.extraHeaders.X-Split',
      'auth.extraHeaders.X-Env.env',
      'auth.extraHeaders.X-Two',
      'auth.extraHeaders.X-Odd.literal',
    ]);
    expect(JSON.stringify(problems)).to.not.include('Injected');
    const clash = problemsOf({ authorization: 'Bearer x' }, {}, { 'params.client_id': CLIENT_ID, 'params.service_account': TARGET_SA });
    expect(clash).to.deep.equal([{ path: 'auth.extraHeaders.authorization', message: 'authorization is already set by the provider at auth; drop one of them' }]);
    expect(problemsOf({ 'X-Env': { env: 'SET' } }, { SET: 'v' })).to.deep.equal([]);
  });

  it('is not a provider type of its own: auth.providers may not name it', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'kvx-extra-'));
    const file = path.join(dir, 'kvx.yml');
    writeFileSync(file, 'auth:\n  providers:\n    - type: extra-headers\n      params: { X-A: a }\n');
    const loaded = loadConfig({ files: [file], env: {}, require: { upstream: false } });
    rmSync(dir, { recursive: true, force: true });
    expect(planProviders(loaded.config, {}).problems).to.deep.equal([{ path: 'auth.providers[0].type', message: 'extra-headers is set with auth.extraHeaders, not as a provider type' }]);
  });

  it('redacts literal values when printed and shows where the others come from', () => {
    const loaded = loadConfig({
      env: {},
      overrides: [{ path: 'auth.extraHeaders', value: { 'X-MLFLOW-WORKSPACE': 'team-a', 'X-Api-Key': { value: API_KEY }, 'X-From-Env': { env: 'VENDOR' }, 'X-From-File': { file: '/run/key' } }, source: 'test' }],
      require: { upstream: false },
    });
    const printed = JSON.stringify(redactConfig(loaded.config));
    expect(printed).to.not.include(API_KEY).and.not.include('team-a');
    expect(printed).to.include('"X-From-Env":{"env":"VENDOR"}').and.include('"X-From-File":{"file":"/run/key"}');
  });

  describe('through the proxy, with google-iam', () => {
    let world: GoogleWorld;
    let mlflow: FakeMlflow;
    let dir: string;

    beforeEach(async () => {
      world = await startGoogleWorld();
      mlflow = await startFakeMlflow({ gate: iapGate({ issuer: world.issuer, audience: CLIENT_ID }) });
      dir = mkdtempSync(path.join(tmpdir(), 'kvx-extra-'));
    });
    afterEach(async () => {
      await mlflow.close();
      await world.close();
      rmSync(dir, { recursive: true, force: true });
    });

    it('adds literal, env and file headers beside Authorization, replaces client copies, re-reads the file when it changes, never logs a value', async () => {
      const keyFile = path.join(dir, 'api-key');
      writeFileSync(keyFile, `${API_KEY}\n`);
      const proxy = await startTestProxy(
        mlflow.url,
        {
          'auth.endpoints.oauthToken': world.endpoints.oauthToken,
          'auth.endpoints.iamCredentials': world.endpoints.iamCredentials,
          'auth.params.client_id': CLIENT_ID,
          'auth.params.service_account': TARGET_SA,
          'auth.extraHeaders': { 'X-MLFLOW-WORKSPACE': 'team-a', 'X-Tenant': { env: 'TENANT' }, 'X-Api-Key': { file: keyFile } },
        },
        { ...world.metadataEnv(), TENANT: 'acme' },
      );
      try {
        const send = () =>
          request(`${proxy.url}/api/2.0/mlflow/experiments/search`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json', 'x-api-key': 'client-supplied' } });
        expect((await send()).status).to.equal(200);
        expect((await send()).status).to.equal(200);
        const seen = mlflow.requests.slice(-2).map((r) => [r.headers['x-mlflow-workspace'], r.headers['x-tenant'], r.headers['x-api-key'], typeof r.headers['authorization']]);
        expect(seen).to.deep.equal([
          ['team-a', 'acme', API_KEY, 'string'],
          ['team-a', 'acme', API_KEY, 'string'],
        ]);
        writeFileSync(keyFile, `${ROTATED_KEY}\n`);
        let latest: unknown;
        for (let i = 0; i < 40 && latest !== ROTATED_KEY; i++) {
          await sleep(100);
          await send();
          latest = mlflow.requests.at(-1)!.headers['x-api-key'];
        }
        expect(latest).to.equal(ROTATED_KEY);
        const ready = JSON.parse((await request(`${proxy.adminUrl}/readyz`)).body) as { providers: { type: string; ready: boolean }[] };
        expect(ready.providers.map((p) => [p.type, p.ready])).to.deep.equal([
          ['google-iam', true],
          ['extra-headers', true],
        ]);
        for (const line of proxy.logs.lines) expect(line).to.not.include(API_KEY).and.not.include(ROTATED_KEY).and.not.include('acme');
      } finally {
        await proxy.close(500);
      }
    });

    it('alone (auth.provider none), and a file that turns unreadable keeps its last value', async () => {
      const keyFile = path.join(dir, 'api-key');
      writeFileSync(keyFile, API_KEY);
      const loaded = loadConfig({ env: {}, overrides: [{ path: 'auth.provider', value: 'none', source: 'test' }, { path: 'auth.extraHeaders', value: { 'X-Api-Key': { file: 'api-key' } }, source: 'test' }], require: { upstream: false } });
      const { plans, problems } = planProviders(loaded.config, {});
      expect(problems).to.deep.equal([]);
      const injector = await HeaderInjector.create(plans, { config: loaded.config, logger: silentLogger, baseDir: dir, env: {} });
      try {
        await injector.start();
        expect(await injector.headers()).to.deep.equal({ 'X-Api-Key': API_KEY });
        rmSync(keyFile);
        await sleep(1200);
        expect(await injector.headers()).to.deep.equal({ 'X-Api-Key': API_KEY });
        expect(injector.status().providers[0]!.lastError).to.equal('X-Api-Key: ENOENT');
      } finally {
        await injector.close();
      }
    });
  });
});
