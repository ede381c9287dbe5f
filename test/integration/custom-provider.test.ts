import { expect } from 'chai';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import YAML from 'yaml';
import * as FakeTimers from '@sinonjs/fake-timers';
import '../../src/auth/index.js';
import { HeaderInjector } from '../../src/auth/injector.js';
import { planProviders } from '../../src/auth/registry.js';
import { loadConfig } from '../../src/config/load.js';
import { CredentialsError, KvxError } from '../../src/errors.js';
import { cached } from '../../src/index.js';
import { capturingLogger } from '../fakes/google-world.js';

const FIXTURES = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'custom');
const fixture = (name: string) => path.join(FIXTURES, name);

describe('custom provider modules', () => {
  let dir: string;
  const injectors: HeaderInjector[] = [];
  before(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'kvx-custom-'));
  });
  afterEach(async () => {
    for (const i of injectors.splice(0)) await i.close();
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  function load(files: string[]) {
    const loaded = loadConfig({ files, env: {}, require: { upstream: false } });
    return { ...loaded, ...planProviders(loaded.config, {}) };
  }

  function kvxFile(auth: Record<string, unknown>): string {
    const file = path.join(dir, `kvx-${Math.random().toString(36).slice(2)}.yml`);
    writeFileSync(file, YAML.stringify({ auth }));
    return file;
  }

  async function injector(files: string[]) {
    const { config, baseDir, plans, problems } = load(files);
    expect(problems).to.deep.equal([]);
    const { logger, lines } = capturingLogger();
    const created = await HeaderInjector.create(plans, { config, logger, baseDir, env: {} });
    injectors.push(created);
    return { injector: created, plans, lines };
  }

  it('loads an ESM provider named in a vertexai.yml and gives it request_header_provider_params', async () => {
    const mod = (await import(pathToFileURL(fixture('my-auth-provider.mjs')).href)) as { fetches: number };
    const before = mod.fetches;
    const { injector: inj, plans, lines } = await injector([fixture('vertexai.yml')]);
    expect(plans).to.have.length(1);
    expect(plans[0]).to.include({ type: 'custom', module: fixture('my-auth-provider.mjs'), reason: 'auth.module is set' });
    expect(inj.active.map((a) => a.provider.name)).to.deep.equal(['MyAuthProvider']);
    const all = await Promise.all(Array.from({ length: 100 }, () => inj.headers()));
    expect(mod.fetches - before).to.equal(1);
    const expected = { 'X-My-Auth': `Token s3cr3t-info-${before + 1}` };
    for (const h of all) expect(h).to.deep.equal(expected);
    expect(await inj.headers()).to.deep.equal(expected);
    expect(mod.fetches - before).to.equal(1);
    for (const line of lines) expect(line).to.not.include('s3cr3t-info');
  });

  it('skips a provider whose inContext() says no', async () => {
    const file = kvxFile({ module: fixture('my-auth-provider.mjs'), params: { other: 'x' } });
    const { injector: inj, lines } = await injector([file]);
    expect(inj.active).to.have.length(0);
    expect(lines.some((l) => l.includes('not in context'))).to.equal(true);
  });

  it('loads a CommonJS class without the base class through a named export, answering synchronously', async () => {
    const file = kvxFile({ providers: [{ type: 'custom', module: fixture('plain-provider.cjs'), export: 'TeamHeaderProvider', params: { team: 'ml-platform' } }] });
    const { injector: inj } = await injector([file]);
    const headers = inj.headers();
    expect(headers).to.not.be.instanceOf(Promise);
    expect(headers).to.deep.equal({ 'X-Team': 'ml-platform' });
  });

  it('reports a module that does not exist at config time, naming the key', () => {
    const file = kvxFile({ module: 'nowhere/provider.mjs' });
    const { problems } = load([file]);
    expect(problems).to.deep.equal([{ path: 'auth.module', message: `${path.join(dir, 'nowhere/provider.mjs')} does not exist; paths are relative to the config file` }]);
  });

  async function createError(auth: Record<string, unknown>): Promise<KvxError> {
    const { config, baseDir, plans, problems } = load([kvxFile(auth)]);
    expect(problems).to.deep.equal([]);
    const err = await HeaderInjector.create(plans, { config, logger: capturingLogger().logger, baseDir, env: {} }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).to.be.instanceOf(KvxError);
    expect((err as KvxError).code).to.equal('KVX_PROVIDER_LOAD_FAILED');
    return err as KvxError;
  }

  it('names the path and export when the export is missing', async () => {
    const err = await createError({ module: fixture('plain-provider.cjs'), export: 'TeamProvider' });
    expect(err.message).to.equal(
      `auth.module: ${fixture('plain-provider.cjs')} has no export "TeamProvider" (it exports: TeamHeaderProvider, default); set auth.export to the export holding your provider class`,
    );
  });

  it('refuses an export that is not a class', async () => {
    const obj = await createError({ module: fixture('not-a-class.mjs') });
    expect(obj.message).to.equal(`auth.module: export "default" of ${fixture('not-a-class.mjs')} is an object, not a class; export a class extending RequestHeaderProvider from 'kvx'`);
    const arrow = await createError({ module: fixture('not-a-class.mjs'), export: 'arrow' });
    expect(arrow.message).to.include('export "arrow"');
    expect(arrow.message).to.include('is a function, not a class');
  });

  it('refuses a class without requestHeaders()', async () => {
    const err = await createError({ module: fixture('no-method.mjs') });
    expect(err.message).to.equal(
      `auth.module: class Incomplete (export "default" of ${fixture('no-method.mjs')}) has no requestHeaders() method; implement requestHeaders() returning the headers to add`,
    );
  });

  it('reports a module that fails to load', async () => {
    const file = path.join(dir, 'syntax-error.mjs');
    writeFileSync(file, 'export default class {\n');
    const err = await createError({ module: file });
    expect(err.message).to.match(new RegExp(`^auth\\.module: cannot load custom provider module ${file.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}: `));
  });

  it('turns a throwing or malformed requestHeaders() into CredentialsError naming the class', async () => {
    for (const [mode, message] of [
      ['throw', 'Broken: vault unreachable'],
      ['number', 'Broken: requestHeaders() returned a number for header "X-Count"; header values must be strings'],
      ['string', 'Broken: requestHeaders() returned a string; it must return an object of header names to string values'],
    ] as const) {
      const { injector: inj } = await injector([kvxFile({ module: fixture('broken-headers.mjs'), params: { mode } })]);
      const err = (await Promise.resolve()
        .then(() => inj.headers())
        .catch((e: unknown) => e)) as CredentialsError;
      expect(err).to.be.instanceOf(CredentialsError);
      expect(err.message).to.equal(message);
      expect(inj.status().ready).to.equal(false);
      const startErr = await inj.start().catch((e: unknown) => e);
      expect(startErr).to.be.instanceOf(CredentialsError);
    }
  });
});

describe('cached({ ttl })', () => {
  let clock: ReturnType<typeof FakeTimers.install> | undefined;
  afterEach(() => clock?.uninstall());

  it('keeps a result for ttl seconds per instance, then asks again', () => {
    clock = FakeTimers.install({ toFake: ['Date'] });
    let calls = 0;
    class P {
      constructor(readonly id: string) {}
      headers = cached({ ttl: 60 })(function (this: P) {
        calls += 1;
        return { 'X-Id': `${this.id}-${calls}` };
      });
    }
    const a = new P('a');
    const b = new P('b');
    expect(a.headers()).to.deep.equal({ 'X-Id': 'a-1' });
    expect(a.headers()).to.deep.equal({ 'X-Id': 'a-1' });
    expect(b.headers()).to.deep.equal({ 'X-Id': 'b-2' });
    clock.tick(61_000);
    expect(a.headers()).to.deep.equal({ 'X-Id': 'a-3' });
    a.headers.clear();
    expect(a.headers()).to.deep.equal({ 'X-Id': 'a-4' });
  });

  it('never caches a failure and shares a pending promise', async () => {
    let calls = 0;
    let fail = true;
    const get = cached({ ttl: 3600 })(async () => {
      calls += 1;
      await Promise.resolve();
      if (fail) throw new Error('down');
      return 'ok';
    });
    const results = await Promise.allSettled([get(), get(), get()]);
    expect(results.map((r) => r.status)).to.deep.equal(['rejected', 'rejected', 'rejected']);
    expect(calls).to.equal(1);
    fail = false;
    expect(await get()).to.equal('ok');
    expect(await get()).to.equal('ok');
    expect(calls).to.equal(2);
  });

  it('works as a TypeScript method decorator and refuses a bad ttl', () => {
    let calls = 0;
    class D {
      @cached({ ttl: 10 })
      value(): number {
        calls += 1;
        return calls;
      }
    }
    const d = new D();
    expect([d.value(), d.value()]).to.deep.equal([1, 1]);
    expect(() => cached({ ttl: 0 })).to.throw(TypeError, /ttl/);
  });
});
