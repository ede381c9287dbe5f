import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { Egress, egressProblems } from '../../src/config/egress.js';
import { loadConfig } from '../../src/config/load.js';
import { redactConfig } from '../../src/config/redact.js';
import { ConfigError } from '../../src/errors.js';

const PROXY = 'http://proxy.corp:3128';

function egress(env: NodeJS.ProcessEnv, settings: { proxy?: string; noProxy?: string[]; hostAliases?: Record<string, unknown> } = {}): Egress {
  return Egress.fromConfig({ egress: { proxy: settings.proxy ?? '', noProxy: settings.noProxy ?? [], hostAliases: settings.hostAliases ?? {} } }, env);
}

function via(e: Egress, url: string): string | undefined {
  return e.route(url).proxy?.display;
}

describe('egress: which proxy for which URL', () => {
  it('takes HTTPS_PROXY for https and HTTP_PROXY for http, lower case first, as undici does', () => {
    const both = egress({ HTTPS_PROXY: PROXY, http_proxy: 'http://plain:8080', HTTP_PROXY: 'http://ignored:1' });
    expect(via(both, 'https://oauth2.googleapis.com/token')).to.equal(PROXY);
    expect(via(both, 'http://mlflow.corp:5000/')).to.equal('http://plain:8080');
    expect(both.route('https://x.example').reason).to.equal('HTTPS_PROXY');
    const lower = egress({ https_proxy: 'http://lower:1', HTTPS_PROXY: 'http://upper:2' });
    expect(via(lower, 'https://x.example')).to.equal('http://lower:1');
    expect(via(lower, 'http://x.example'), 'no HTTP_PROXY: http goes direct').to.equal(undefined);
  });

  it('sends https through HTTP_PROXY when no HTTPS_PROXY is set, and connects directly without any', () => {
    expect(via(egress({ HTTP_PROXY: PROXY }), 'https://iamcredentials.googleapis.com')).to.equal(PROXY);
    const none = egress({});
    expect(none.active).to.equal(false);
    expect(none.route('https://x.example')).to.deep.equal({ proxy: undefined, reason: 'no proxy configured' });
  });

  it('bypasses NO_PROXY hosts, domains, subdomain wildcards, ports, IPs, CIDR ranges and *', () => {
    const e = egress({ HTTPS_PROXY: PROXY, HTTP_PROXY: PROXY, NO_PROXY: 'exact.host, .corp.example internal.example,*.sub.example,api.example:8443,10.1.2.3,192.168.0.0/16,[::1]:443,fd00::/8' });
    const direct = (url: string) => expect(via(e, url), url).to.equal(undefined);
    const proxied = (url: string) => expect(via(e, url), url).to.equal(PROXY);
    direct('https://exact.host/');
    direct('https://EXACT.HOST./');
    proxied('https://sub.exact.hostx/');
    direct('https://corp.example/');
    direct('https://a.b.corp.example/');
    direct('https://internal.example/');
    direct('https://x.internal.example/');
    proxied('https://notinternal.example/');
    direct('https://a.sub.example/');
    proxied('https://sub.example/');
    direct('https://api.example:8443/');
    proxied('https://api.example/');
    direct('http://10.1.2.3:5000/');
    direct('http://192.168.7.9/');
    proxied('http://192.169.0.1/');
    direct('https://[::1]/');
    proxied('http://[::1]/');
    direct('https://[fd00::5]/');
    expect(e.route('https://a.corp.example').reason).to.equal('NO_PROXY entry .corp.example');
    expect(via(egress({ HTTPS_PROXY: PROXY, no_proxy: '*' }), 'https://anything.example')).to.equal(undefined);
    expect(via(egress({ HTTPS_PROXY: PROXY, no_proxy: '*:443' }), 'https://anything.example:8443')).to.equal(PROXY);
  });

  it('lets egress.proxy override the variables (NO_PROXY included) and egress.noProxy replace NO_PROXY', () => {
    const configured = egress({ HTTPS_PROXY: 'http://env:1', NO_PROXY: 'skip.example' }, { proxy: PROXY });
    expect(via(configured, 'https://skip.example')).to.equal(PROXY);
    expect(via(configured, 'http://plain.example')).to.equal(PROXY);
    expect(configured.route('https://x').reason).to.equal('egress.proxy');
    const replaced = egress({ HTTPS_PROXY: PROXY, NO_PROXY: 'skip.example' }, { noProxy: ['other.example'] });
    expect(via(replaced, 'https://skip.example')).to.equal(PROXY);
    expect(replaced.route('https://other.example').reason).to.equal('egress.noProxy entry other.example');
  });

  it('reads credentials from the URL (percent-decoded), a scheme-less host:port as http', () => {
    const e = egress({ HTTPS_PROXY: 'kvx:p%40ss@proxy.corp:3128' });
    const proxy = e.route('https://x.example').proxy!;
    expect(proxy.display).to.equal('http://proxy.corp:3128');
    expect(proxy.authorization).to.equal(`Basic ${Buffer.from('kvx:p@ss').toString('base64')}`);
    expect(e.describe('https://x.example')).to.equal('through proxy http://proxy.corp:3128 (HTTPS_PROXY, with credentials)');
    expect(egress({ HTTPS_PROXY: 'http://proxy.corp' }).route('https://x').proxy!.port).to.equal(80);
  });

  it('refuses bad proxy URLs naming the key or variable, without showing the password', () => {
    const problems = egressProblems(
      { egress: { proxy: '', noProxy: ['ok.example', 'bad host'], hostAliases: {} } },
      { HTTPS_PROXY: 'socks5://me:hunter2@proxy:1080', HTTP_PROXY: 'https://me:hunter2@proxy:443' },
    );
    expect(problems.map((p) => p.path)).to.deep.equal(['HTTP_PROXY', 'HTTPS_PROXY', 'egress.noProxy[1]']);
    expect(problems[0]!.message).to.contain('https:// proxies').and.contain('[REDACTED]@proxy');
    expect(problems[1]!.message).to.contain('socks5 proxies are not supported');
    for (const p of problems) expect(p.message).to.not.contain('hunter2');
    expect(() => egress({}, { proxy: 'http://proxy:3128/path' })).to.throw(ConfigError, /egress\.proxy: .*path/);
    expect(() => egress({}, { proxy: 'http://[bad' })).to.throw(ConfigError, /egress\.proxy: .*not a proxy URL/);
  });

  it('loadConfig reports a bad proxy variable with the other problems', () => {
    expect(() => loadConfig({ env: { HTTPS_PROXY: 'ftp://proxy:21' }, require: { upstream: false } })).to.throw(ConfigError, /HTTPS_PROXY: .*ftp proxies/);
  });
});

describe('egress: host aliases', () => {
  it('resolves alias names itself and every other name through the system', async () => {
    const e = egress({}, { hostAliases: { 'MLflow.Internal': '127.0.0.1', 'v6.internal': '::1' } });
    expect(e.active).to.equal(true);
    expect(e.alias('mlflow.internal.')).to.equal('127.0.0.1');
    const lookup = (host: string, all: boolean) =>
      new Promise<unknown>((resolve, reject) => e.lookup!(host, { all }, (err, address, family) => (err ? reject(err) : resolve(all ? address : [address, family]))));
    expect(await lookup('mlflow.internal', false)).to.deep.equal(['127.0.0.1', 4]);
    expect(await lookup('v6.internal', true)).to.deep.equal([{ address: '::1', family: 6 }]);
    expect(await lookup('localhost', false)).to.have.length(2);
  });

  it('refuses an address that is not an IP and a key that is not a host name, naming the key', () => {
    const problems = egressProblems({ egress: { proxy: '', noProxy: [], hostAliases: { 'mlflow.internal': '10.0.0.300', '10.0.0.1': '10.0.0.2', 'ok.internal': 5 } } }, {});
    expect(problems.map((p) => p.path)).to.deep.equal(['egress.hostAliases.mlflow.internal', 'egress.hostAliases.10.0.0.1', 'egress.hostAliases.ok.internal']);
    expect(problems[0]!.message).to.contain('"10.0.0.300" is not an IP address');
  });

  it("fills egress.hostAliases from vertexai.yml's run_config.network.host_aliases; kvx's own section wins", () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'kvx-egress-'));
    const file = path.join(dir, 'vertexai.yml');
    writeFileSync(
      file,
      [
        'project_id: p',
        'region: europe-west4',
        'run_config:',
        '  image: img',
        '  experiment_name: e',
        '  network:',
        '    vpc: my-vpc',
        '    host_aliases:',
        '      - ip: 10.0.0.5',
        '        hostnames: [mlflow.internal, tracking.internal]',
        '      - ip: 10.0.0.6',
        '        hostnames: [other.internal]',
        'kvx:',
        '  egress:',
        '    hostAliases:',
        '      other.internal: 10.9.9.9',
      ].join('\n'),
    );
    const { config } = loadConfig({ files: [file], env: {}, require: { upstream: false } });
    expect(config.egress.hostAliases).to.deep.equal({ 'mlflow.internal': '10.0.0.5', 'tracking.internal': '10.0.0.5', 'other.internal': '10.9.9.9' });
    expect(config.vertex.network).to.equal('my-vpc');

    writeFileSync(file, ['project_id: p', 'region: r', 'run_config:', '  network:', '    host_aliases:', '      - ip: not-an-ip', '        hostnames: [a.internal]', '      - ip: 10.0.0.1'].join('\n'));
    let error: unknown;
    try {
      loadConfig({ files: [file], env: {}, require: { upstream: false } });
    } catch (err) {
      error = err;
    }
    expect(error).to.be.instanceOf(ConfigError);
    expect((error as ConfigError).problems.map((p) => p.path)).to.deep.equal(['run_config.network.host_aliases[0].ip', 'run_config.network.host_aliases[1].hostnames']);
  });
});

describe('egress: config dumps', () => {
  it('redact the credentials of a proxy URL and keep e-mail addresses', () => {
    const { config } = loadConfig({
      env: {},
      require: { upstream: false },
      overrides: [
        { path: 'egress.proxy', value: 'http://kvx:hunter2@proxy.corp:3128', source: '--egress-proxy' },
        { path: 'vertex.serviceAccount', value: 'pipelines@p.iam.gserviceaccount.com', source: '--service-account' },
      ],
    });
    const dump = JSON.stringify(redactConfig(config));
    expect(dump).to.not.contain('hunter2');
    expect(dump).to.contain('http://[REDACTED]@proxy.corp:3128');
    expect(dump).to.contain('pipelines@p.iam.gserviceaccount.com');
  });
});
