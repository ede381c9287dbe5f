import { copyFileSync, mkdirSync, mkdtempSync, realpathSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { planProviders } from '../../src/auth/registry.js';
import { HeaderInjector } from '../../src/auth/index.js';
import { loadConfig } from '../../src/config/load.js';
import type { ConfigOverride, LoadOptions } from '../../src/config/load.js';
import { redactConfig } from '../../src/config/redact.js';
import { loadConfigFromOptions } from '../../src/cli/options.js';
import { ConfigError } from '../../src/errors.js';
import { silentLogger } from '../../src/log/logger.js';

const dir = mkdtempSync(path.join(tmpdir(), 'kvx-config-'));
function file(name: string, text: string): string {
  const p = path.join(dir, name);
  writeFileSync(p, text);
  return p;
}

function problems(options: LoadOptions): string[] {
  try {
    loadConfig(options);
  } catch (err) {
    expect(err).to.be.instanceOf(ConfigError);
    return (err as ConfigError).problems.map((p) => `${p.path}: ${p.message}`);
  }
  return [];
}

const flag = (p: string, value: unknown): ConfigOverride => ({ path: p, value, source: `--${p}` });

describe('config: layering', () => {
  it('layers defaults, file, KVX_* environment and flags, later winning', () => {
    const f = file('layers.yaml', 'upstream:\n  url: https://from-file.example\nlisten:\n  port: 7000\nlog:\n  level: warn\n');
    const { config, sources } = loadConfig({
      files: [f],
      env: { KVX_LISTEN_PORT: '7001', KVX_LOG_LEVEL: 'error' },
      overrides: [flag('listen.port', '7002')],
    });
    expect(config.upstream.url).to.equal('https://from-file.example');
    expect(config.listen.port).to.equal(7002);
    expect(config.log.level).to.equal('error');
    expect(config.listen.host).to.equal('127.0.0.1');
    expect(sources.get('listen.port')).to.equal('flag:--listen.port');
    expect(sources.get('log.level')).to.equal('env:KVX_LOG_LEVEL');
    expect(sources.get('upstream.url')).to.equal(`file:${f}`);
  });

  it('reads a kedro-vertexai vertexai.yml as-is, ignoring keys kvx does not use', () => {
    const f = file(
      'vertexai.yml',
      [
        'project_id: my-project',
        'region: europe-west4',
        'run_config:',
        '  image: gcr.io/my-project/kedro:latest',
        '  experiment_name: spaceflights',
        '  root: bucket/pipelines',
        '  service_account: pipelines@my-project.iam.gserviceaccount.com',
        '  network:',
        '    vpc: my-vpc',
        '  resources:',
        '    __default__: {cpu: "2"}',
        '  mlflow:',
        '    request_header_provider_params:',
        '      client_id: 1234-abc.apps.googleusercontent.com',
        '      service_account: sa@my-project.iam.gserviceaccount.com',
        '      my_auth_info: anything',
      ].join('\n'),
    );
    const { config } = loadConfig({ files: [f], env: {}, overrides: [flag('upstream.url', 'https://mlflow.example')] });
    expect(config.auth.params).to.deep.equal({
      client_id: '1234-abc.apps.googleusercontent.com',
      service_account: 'sa@my-project.iam.gserviceaccount.com',
      my_auth_info: 'anything',
    });
    expect(config.vertex).to.include({ projectId: 'my-project', region: 'europe-west4', experimentName: 'spaceflights', root: 'bucket/pipelines', network: 'my-vpc' });
    const { plans } = planProviders(config, {});
    expect(plans.map((p) => p.type)).to.deep.equal(['google-iam']);
  });

  it('takes kvx settings from a kvx: section of a vertexai.yml', () => {
    const f = file('vertexai-kvx.yml', 'project_id: p\nregion: r\nrun_config: {}\nkvx:\n  upstream:\n    url: https://mlflow.example\n  auth:\n    header: Proxy-Authorization\n');
    const { config } = loadConfig({ files: [f], env: {} });
    expect(config.upstream.url).to.equal('https://mlflow.example');
    expect(config.auth.header).to.equal('Proxy-Authorization');
  });

  it('selects providers as kedro-vertexai users expect', () => {
    const base = { env: {}, overrides: [flag('upstream.url', 'https://m.example')] };
    const plan = (params: Record<string, string>, extra: ConfigOverride[] = []) =>
      planProviders(loadConfig({ ...base, overrides: [...base.overrides, ...Object.entries(params).map(([k, v]) => flag(`auth.params.${k}`, v)), ...extra] }).config, {});
    expect(plan({ client_id: 'c', service_account: 's@p.iam.gserviceaccount.com' }).plans.map((p) => p.type)).to.deep.equal(['google-iam']);
    expect(plan({ client_id: 'c' }).plans.map((p) => p.type)).to.deep.equal(['google-oauth']);
    expect(plan({ client_id: 'c' }, [flag('auth.provider', 'google-iam')]).problems.map((p) => p.path)).to.include('auth.params.service_account');
    const none = plan({});
    expect(none.problems[0]!.path).to.equal('auth');
    expect(none.problems[0]!.message).to.contain('no header provider selected');
  });

  it('passes params from KVX_AUTH_PARAMS_* and --param-style overrides', () => {
    const { config } = loadConfig({ env: { KVX_AUTH_PARAMS_CLIENT_ID: 'from-env' }, overrides: [flag('upstream.url', 'https://m.example'), flag('auth.params.service_account', 'x@y.iam.gserviceaccount.com')] });
    expect(config.auth.params).to.deep.equal({ client_id: 'from-env', service_account: 'x@y.iam.gserviceaccount.com' });
  });
});

describe('config: every problem at once, each with its path and fix', () => {
  it('reports unknown keys with a suggestion, wrong types and cross-field conflicts together', () => {
    const f = file(
      'bad.yaml',
      ['upstream:', '  url: ftp://x', '  insecure: true', '  caFile: /nonexistent/ca.pem', '  conectTimeoutMs: 5', 'listen:', '  host: 0.0.0.0', '  port: 99999', 'log:', '  level: loud', 'extra: 1'].join('\n'),
    );
    const found = problems({ files: [f], env: { KVX_UPSTREAM_HEADERS_TIMEOUT_MS: 'soon', KVX_LISTEN_PROT: '1' } });
    const expected = [
      /^upstream\.conectTimeoutMs: unknown key \(did you mean "connectTimeoutMs"\?\)/,
      /^listen\.port: must be at most 65535, got 99999/,
      /^log\.level: must be one of debug, info, warn, error, silent; got "loud"/,
      /^extra: unknown key/,
      /^KVX_UPSTREAM_HEADERS_TIMEOUT_MS: must be a whole number, got "soon"/,
      /^KVX_LISTEN_PROT: unknown KVX_ environment variable \(did you mean "KVX_LISTEN_PORT"\?\)/,
      /^upstream\.url: must be http or https, got ftp/,
      /^listen\.host: "0\.0\.0\.0" is not a loopback address.*listen\.allowNonLoopback/,
      /^upstream\.insecure: cannot be combined with upstream\.caFile/,
      /^upstream\.caFile: cannot read \/nonexistent\/ca\.pem/,
    ];
    for (const pattern of expected) expect(found.some((p) => pattern.test(p)), `${pattern} in\n${found.join('\n')}`).to.equal(true);
    expect(found).to.have.length(expected.length);
  });

  it('requires an upstream and names the flag and env for it', () => {
    expect(problems({ env: {} })).to.deep.equal([
      'upstream.url: required: the MLflow server to forward to, e.g. https://mlflow.example.com (flag --upstream, env KVX_UPSTREAM_URL)',
    ]);
  });

  it('refuses credentials, queries and fragments in the upstream URL', () => {
    expect(problems({ env: {}, overrides: [flag('upstream.url', 'https://u:p@m.example')] })[0]).to.contain('must not contain credentials');
    expect(problems({ env: {}, overrides: [flag('upstream.url', 'https://m.example/?a=1')] })[0]).to.contain('must not have a query string');
    expect(problems({ env: {}, overrides: [flag('upstream.url', 'not a url')] })[0]).to.contain('is not a URL');
  });

  it('checks mutual TLS pairs, header names, preserve entries and retry statuses', () => {
    const cert = file('cert.pem', 'x');
    const found = problems({
      env: {},
      overrides: [
        flag('upstream.url', 'https://m.example'),
        flag('upstream.certFile', cert),
        flag('auth.header', 'Bad Header'),
        flag('headers.preserve', ['authorization', 'x-custom']),
        flag('auth.retryOnStatus', [401, 500]),
      ],
    });
    expect(found).to.include('upstream.keyFile: mutual TLS needs both upstream.certFile and upstream.keyFile');
    expect(found).to.include('auth.header: "Bad Header" is not a valid header name');
    expect(found.some((p) => p.startsWith('headers.preserve[1]: "x-custom" is not a credential header'))).to.equal(true);
    expect(found).to.include('auth.retryOnStatus[1]: 500 is not an authentication status; use 401, 403 or 407');
  });

  it('reads server.allowedHosts and server.allowedOrigins from env (commas) and flags, and refuses entries that are not names or origins', () => {
    const fromEnv = loadConfig({
      env: { KVX_UPSTREAM_URL: 'https://m.example', KVX_SERVER_ALLOWED_HOSTS: 'mlflow.internal, *.corp.example', KVX_SERVER_ALLOWED_ORIGINS: 'https://dash.corp.example' },
    }).config.server;
    expect(fromEnv.allowedHosts).to.deep.equal(['mlflow.internal', '*.corp.example']);
    expect(fromEnv.allowedOrigins).to.deep.equal(['https://dash.corp.example']);
    const io = { stdout: process.stdout, stderr: process.stderr, env: {} };
    const fromFlags = loadConfigFromOptions({ upstream: 'https://m.example', allowedHosts: '*', allowedOrigins: 'http://localhost:3000,*' }, io, { checkProviders: false }).config.server;
    expect(fromFlags.allowedHosts).to.deep.equal(['*']);
    expect(fromFlags.allowedOrigins).to.deep.equal(['http://localhost:3000', '*']);

    const found = problems({
      env: {},
      overrides: [
        flag('upstream.url', 'https://m.example'),
        flag('server.allowedHosts', ['ok.example', '10.0.0.1', '[::1]', 'http://mlflow.internal', 'mlflow.internal:5001', 'a*.example', '']),
        flag('server.allowedOrigins', ['https://ok.example', 'http://localhost:3000/', 'https://x.example:443', 'dash.example', 'https://dash.example/app', 'null', 'ftp://x.example']),
      ],
    });
    const hostProblems = found.filter((p) => p.startsWith('server.allowedHosts'));
    expect(hostProblems.map((p) => p.slice(0, p.indexOf(':')))).to.deep.equal(['server.allowedHosts[3]', 'server.allowedHosts[4]', 'server.allowedHosts[5]', 'server.allowedHosts[6]']);
    expect(hostProblems[0]).to.include('give a name without scheme or port, e.g. mlflow.internal');
    const originProblems = found.filter((p) => p.startsWith('server.allowedOrigins'));
    expect(originProblems.map((p) => p.slice(0, p.indexOf(':')))).to.deep.equal(['server.allowedOrigins[3]', 'server.allowedOrigins[4]', 'server.allowedOrigins[5]', 'server.allowedOrigins[6]']);
    expect(originProblems[0]).to.include('write scheme://host[:port] with no path');
  });

  it('refuses an upstream.caFile that is empty, not PEM, or holds a broken certificate', () => {
    const caProblem = (text: string, name: string) =>
      problems({ env: {}, overrides: [flag('upstream.url', 'https://m.example'), flag('upstream.caFile', file(name, text))] }).filter((p) => p.startsWith('upstream.caFile: '));
    expect(caProblem('', 'empty.pem')[0]).to.match(/empty\.pem is empty; it must hold the PEM certificates/);
    expect(caProblem('\n  \n', 'blank.pem')[0]).to.match(/blank\.pem is empty/);
    expect(caProblem('0\x82\x03\x1d0\x82\x02\x05\xa0\x03', 'ca.der')[0]).to.match(/ca\.der holds no PEM certificate \(-----BEGIN CERTIFICATE-----\); convert a DER file with: openssl x509 -inform der/);
    expect(caProblem('-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n', 'broken.pem')[0]).to.match(/certificate 1 of 1 in .*broken\.pem is not a valid PEM certificate/);
    // OpenSSL's trusted form, which node reads as a CA too, is accepted.
    expect(caProblem('-----BEGIN TRUSTED CERTIFICATE-----\nAAAA\n-----END TRUSTED CERTIFICATE-----\n', 'trusted.pem')).to.deep.equal([]);
  });

  it('reports unreadable and malformed files by path', () => {
    expect(problems({ files: [path.join(dir, 'missing.yaml')], env: {} })[0]).to.match(/^--config .*missing\.yaml: cannot read the file \(no such file\)/);
    expect(problems({ files: [file('broken.yaml', 'a: [1, 2\n')], env: {} })[0]).to.match(/is not valid YAML or JSON/);
    expect(problems({ files: [file('list.yaml', '- a\n- b\n')], env: {} })[0]).to.match(/must hold a mapping of keys at the top level/);
  });

  it('reports provider param problems together with config problems', () => {
    const found = problems({
      env: {},
      overrides: [flag('upstream.url', 'https://m.example'), flag('listen.port', -1), flag('auth.provider', 'static')],
      extraChecks: (config) => planProviders(config, {}).problems,
    });
    expect(found).to.include('--listen.port: must be at least 0, got -1');
    expect(found.some((p) => p.startsWith('auth.params.token: required: give exactly one of token, token_env'))).to.equal(true);
  });

  it('rejects unknown provider types naming the known ones', () => {
    const { config } = loadConfig({ env: {}, overrides: [flag('upstream.url', 'https://m.example'), flag('auth.provider', 'google-iap')] });
    const { problems: found } = planProviders(config, {});
    expect(found[0]!.path).to.equal('auth.provider');
    expect(found[0]!.message).to.contain('unknown provider type "google-iap"').and.contain('google-iam');
  });
});

describe('config: redaction', () => {
  it('hides secret params but keeps where secrets come from', () => {
    const { config } = loadConfig({
      env: {},
      overrides: [
        flag('upstream.url', 'https://m.example'),
        flag('auth.params.token', 'super-secret-value'),
        flag('auth.params.password_file', '/var/run/secret'),
        flag('auth.params.client_id', '1234.apps.googleusercontent.com'),
      ],
    });
    const text = JSON.stringify(redactConfig(config));
    expect(text).to.not.contain('super-secret-value');
    expect(text).to.contain('/var/run/secret');
    expect(text).to.contain('1234.apps.googleusercontent.com');
  });
});

describe('config: paths', () => {
  /** A project folder with conf/kvx.yaml, the shell standing in the project root. */
  function inProject<T>(run: (root: string) => T): T {
    const root = mkdtempSync(path.join(tmpdir(), 'kvx-paths-'));
    mkdirSync(path.join(root, 'conf'));
    const before = process.cwd();
    process.chdir(root);
    try {
      return run(realpathSync(root));
    } finally {
      process.chdir(before);
    }
  }

  it('resolves a flag or KVX_* path against the working directory, a file path against that file\'s folder', () => {
    inProject((root) => {
      writeFileSync(path.join(root, 'conf/kvx.yaml'), 'upstream: {url: "https://mlflow.example", certFile: cert.pem, keyFile: key.pem}\nauth: {params: {token_file: token.txt}}\n');
      for (const name of ['conf/cert.pem', 'conf/key.pem', 'client.pem']) writeFileSync(path.join(root, name), '');
      const fromFile = loadConfig({ files: ['conf/kvx.yaml'], require: { upstream: false } }).config;
      expect(fromFile.upstream.certFile).to.equal(path.join(root, 'conf/cert.pem'));
      expect(fromFile.upstream.keyFile).to.equal(path.join(root, 'conf/key.pem'));
      expect(fromFile.auth.params['token_file']).to.equal(path.join(root, 'conf/token.txt'));

      const { config } = loadConfig({
        files: ['conf/kvx.yaml'],
        env: { KVX_UPSTREAM_CERT_FILE: 'client.pem', KVX_UPSTREAM_KEY_FILE: '/dev/null', KVX_AUTH_PARAMS_PASSWORD_FILE: 'secrets/pw' },
        overrides: [flag('auth.module', 'prov.mjs'), flag('auth.params.token_file', 'here.txt')],
        require: { upstream: false },
      });
      expect(config.auth.module).to.equal(path.join(root, 'prov.mjs'));
      expect(config.auth.params['token_file']).to.equal(path.join(root, 'here.txt'));
      expect(config.auth.params['password_file']).to.equal(path.join(root, 'secrets/pw'));
      expect(config.upstream.certFile).to.equal(path.join(root, 'client.pem'));
      expect(config.upstream.keyFile).to.equal('/dev/null');
    });
  });

  it('checks and loads a custom module named by a flag from where the user stands (--config conf/kvx.yaml --auth-module prov.mjs)', async () => {
    const fixture = path.resolve('test/fixtures/custom/plain-provider.cjs');
    await inProject(async (root) => {
      writeFileSync(path.join(root, 'conf/kvx.yaml'), 'upstream: {url: "https://mlflow.example"}\nauth: {provider: custom}\n');
      copyFileSync(fixture, path.join(root, 'prov.cjs'));
      const loaded = loadConfig({ files: ['conf/kvx.yaml'], overrides: [flag('auth.module', 'prov.cjs'), flag('auth.export', 'TeamHeaderProvider')] });
      const { plans, problems: found } = planProviders(loaded.config, {});
      expect(found).to.deep.equal([]);
      // check-config said OK above; serving must load the same file.
      const injector = await HeaderInjector.create(plans, { config: loaded.config, logger: silentLogger, baseDir: loaded.baseDir, env: {} });
      expect(injector.active.map((a) => a.plan.type)).to.deep.equal(['custom']);
      await injector.close();
    });
  });
});
