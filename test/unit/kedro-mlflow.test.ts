import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { classifyTrackingUri, kedroConfDir, kedroMlflowServer, proxyBypass, readKedroMlflow, refuseProxyBypass, stepProxyBypasses } from '../../src/config/kedro-mlflow.js';
import { defaultUpstream } from '../../src/config/mlflow-env.js';
import { loadConfig } from '../../src/config/load.js';
import { ConfigError } from '../../src/errors.js';

describe("kedro-mlflow's mlflow.yml (src/config/kedro-mlflow.ts)", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'kvx-kedro-mlflow-'));
    await mkdir(path.join(dir, 'conf', 'base'), { recursive: true });
    await mkdir(path.join(dir, 'conf', 'prod'), { recursive: true });
    await mkdir(path.join(dir, 'conf', 'dev'), { recursive: true });
    await writeFile(path.join(dir, 'conf', 'base', 'mlflow.yml'), 'tracking:\n  experiment:\n    name: base-exp\n  run:\n    name: base-run\n');
    await writeFile(path.join(dir, 'conf', 'prod', 'mlflow.yml'), 'tracking:\n  experiment:\n    name: prod-exp\n');
    await writeFile(path.join(dir, 'conf', 'dev', 'mlflow.yml'), 'tracking:\n  experiment:\n    name: ${oc.env:EXP}\n');
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('reads tracking.experiment.name and tracking.run.name of conf/base', () => {
    expect(readKedroMlflow(path.join(dir, 'conf', 'base'))).to.deep.include({ experimentName: 'base-exp', runName: 'base-run' });
  });

  it('layers an env over conf/base as Kedro does', () => {
    const prod = readKedroMlflow(path.join(dir, 'conf', 'prod'));
    expect(prod).to.deep.include({ experimentName: 'prod-exp', runName: 'base-run' });
    expect(prod.files.map((f) => path.relative(dir, f))).to.deep.equal([path.join('conf', 'base', 'mlflow.yml'), path.join('conf', 'prod', 'mlflow.yml')]);
  });

  it('leaves an interpolation it cannot resolve alone, saying so', () => {
    const dev = readKedroMlflow(path.join(dir, 'conf', 'dev'));
    expect(dev.experimentName).to.equal('base-exp');
    expect(dev.warnings.join('\n')).to.include('is an interpolation kvx does not resolve');
  });

  it('finds nothing where there is no mlflow.yml', () => {
    expect(readKedroMlflow(path.join(dir, 'nowhere'))).to.deep.equal({ files: [], warnings: [] });
  });

  describe('server.mlflow_tracking_uri', () => {
    let project: string;
    const write = (env: string, text: string) => writeFile(path.join(project, 'conf', env, 'mlflow.yml'), text);
    before(async () => {
      project = path.join(dir, 'uri');
      for (const env of ['base', 'prod', 'dev', 'local', 'test']) await mkdir(path.join(project, 'conf', env), { recursive: true });
      await writeFile(path.join(project, 'conf', 'prod', 'vertexai.yml'), 'project_id: p\nregion: europe-west4\nrun_config:\n  experiment_name: e\n');
      await write('base', 'server:\n  mlflow_tracking_uri: https://mlflow.example.com\n');
      await write('prod', 'tracking:\n  experiment:\n    name: prod-exp\n');
      await write('dev', 'server:\n  mlflow_tracking_uri: null\n');
      await write('test', 'server:\n  credentials: mlflow_creds\n');
      await write('local', 'server:\n  mlflow_tracking_uri: ${oc.env:MLFLOW_TRACKING_URI, "http://127.0.0.1:5000"}\n');
    });
    const conf = (env: string) => path.join(project, 'conf', env);

    it('is read as written, layered over conf/base; an explicit null overrides a URL of conf/base', () => {
      expect(readKedroMlflow(conf('prod')).trackingUri).to.deep.equal({ value: 'https://mlflow.example.com', file: path.join(conf('base'), 'mlflow.yml') });
      expect(readKedroMlflow(conf('dev'))).to.not.have.property('trackingUri');
      // An env's server section replaces conf/base's whole (kedro's default, destructive merge).
      expect(readKedroMlflow(conf('test'))).to.not.have.property('trackingUri');
      expect(readKedroMlflow(conf('local')).trackingUri?.value).to.equal('${oc.env:MLFLOW_TRACKING_URI, "http://127.0.0.1:5000"}');
    });

    it('is classified as kedro-mlflow uses it: a URL, MLFLOW_TRACKING_URI (with its default), another interpolation, or a store', () => {
      expect(classifyTrackingUri('https://mlflow.example.com/prefix')).to.deep.equal({ kind: 'url', url: 'https://mlflow.example.com/prefix' });
      expect(classifyTrackingUri('${oc.env:MLFLOW_TRACKING_URI}')).to.deep.equal({ kind: 'env' });
      expect(classifyTrackingUri("${oc.env:MLFLOW_TRACKING_URI,'https://m.example.com'}")).to.deep.equal({ kind: 'env', fallback: 'https://m.example.com' });
      expect(classifyTrackingUri('${oc.env:MLFLOW_TRACKING_URI,mlruns}')).to.deep.equal({ kind: 'env' });
      expect(classifyTrackingUri('${oc.env:MY_MLFLOW}')).to.deep.equal({ kind: 'interpolation' });
      expect(classifyTrackingUri('${globals:mlflow_uri}')).to.deep.equal({ kind: 'interpolation' });
      for (const store of ['mlruns', 'file:///tmp/mlruns', 'databricks', 'http://']) expect(classifyTrackingUri(store), store).to.deep.equal({ kind: 'other' });
    });

    it('names the server for kvx when it is an http(s) URL or the default of ${oc.env:MLFLOW_TRACKING_URI,…}', () => {
      expect(kedroMlflowServer(readKedroMlflow(conf('prod')))).to.deep.equal({ url: 'https://mlflow.example.com', file: path.join(conf('base'), 'mlflow.yml') });
      expect(kedroMlflowServer(readKedroMlflow(conf('local')))?.url).to.equal('http://127.0.0.1:5000');
      expect(kedroMlflowServer(readKedroMlflow(conf('dev')))).to.equal(undefined);
      expect(kedroMlflowServer({ files: [], warnings: [], trackingUri: { value: 'mlruns', file: 'f' } })).to.equal(undefined);
    });

    it('a fixed value makes the steps bypass the proxy (fatal); MLFLOW_TRACKING_URI does not; an unknown interpolation is a warning', () => {
      expect(proxyBypass(readKedroMlflow(conf('prod')))).to.include({ fatal: true, value: 'https://mlflow.example.com' });
      expect(proxyBypass({ files: [], warnings: [], trackingUri: { value: 'mlruns', file: 'f' } })).to.include({ fatal: true });
      expect(proxyBypass(readKedroMlflow(conf('local')))).to.equal(undefined);
      expect(proxyBypass(readKedroMlflow(conf('dev')))).to.equal(undefined);
      expect(proxyBypass({ files: [], warnings: [], trackingUri: { value: '${globals:uri}', file: 'f' } })).to.include({ fatal: false });
    });

    it("checks the steps' envs beside the vertexai.yml's folder, once per file, and refuses naming file, key and fix", () => {
      expect(stepProxyBypasses(conf('dev'), ['dev', 'local'])).to.deep.equal([]);
      const found = stepProxyBypasses(conf('dev'), ['prod', 'base', 'dev']);
      expect(found.map((b) => b.file)).to.deep.equal([path.join(conf('base'), 'mlflow.yml')]);
      const warnings: string[] = [];
      let error: unknown;
      try {
        refuseProxyBypass(conf('dev'), ['prod'], (w) => warnings.push(w));
      } catch (err) {
        error = err;
      }
      expect(error).to.be.instanceOf(ConfigError);
      expect((error as ConfigError).problems[0]!.path).to.equal(`server.mlflow_tracking_uri in ${path.join(conf('base'), 'mlflow.yml')}`);
      expect((error as ConfigError).message).to.include('set server.mlflow_tracking_uri to null');
      expect(() => refuseProxyBypass(undefined, ['prod'], () => {})).to.not.throw();
    });

    it('the env folder is that of the last vertexai.yml given, else of the last file', () => {
      expect(kedroConfDir(['/p/conf/base/vertexai.yml', '/p/kvx.yaml'])).to.equal('/p/conf/base');
      expect(kedroConfDir(['/p/conf/base/kvx.yaml'])).to.equal('/p/conf/base');
      expect(kedroConfDir([])).to.equal(undefined);
    });

    describe('as the default upstream (src/config/mlflow-env.ts)', () => {
      const loaded = (env: NodeJS.ProcessEnv = {}) => loadConfig({ files: [path.join(conf('prod'), 'vertexai.yml')], env, require: { upstream: false } });

      it('after upstream.url and MLFLOW_TRACKING_URI', () => {
        const fromFile = loaded();
        expect(defaultUpstream(fromFile, {})).to.equal(`server.mlflow_tracking_uri in ${path.join(conf('base'), 'mlflow.yml')}`);
        expect(fromFile.config.upstream.url).to.equal('https://mlflow.example.com');
        expect(fromFile.sources.get('upstream.url')).to.equal(`file:${path.join(conf('base'), 'mlflow.yml')}`);

        const fromEnv = loaded();
        expect(defaultUpstream(fromEnv, { MLFLOW_TRACKING_URI: 'https://env.example.com' })).to.equal('MLFLOW_TRACKING_URI');
        expect(fromEnv.config.upstream.url).to.equal('https://env.example.com');

        const configured = loaded({ KVX_UPSTREAM_URL: 'https://kvx.example.com' });
        expect(defaultUpstream(configured, { MLFLOW_TRACKING_URI: 'https://env.example.com' })).to.equal(undefined);
        expect(configured.config.upstream.url).to.equal('https://kvx.example.com');
      });

      it('a URL there that kvx cannot use is a config error naming it', async () => {
        await write('prod', 'server:\n  mlflow_tracking_uri: https://user:secret@mlflow.example.com\n');
        try {
          expect(() => defaultUpstream(loaded(), {})).to.throw(ConfigError, `server.mlflow_tracking_uri in ${path.join(conf('prod'), 'mlflow.yml')}: used as upstream.url`);
        } finally {
          await write('prod', 'tracking:\n  experiment:\n    name: prod-exp\n');
        }
      });
    });
  });
});
