/**
 * kvx-launch's command line as such: flags generated from the one flag table, one rule for repeated keys, and the
 * MLflow client's own variables as the last fallback.
 */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { expect } from 'chai';
import { flagsOf } from '../../src/cli/flags.js';
import { main as proxyMain } from '../../src/cli/kvx-proxy.js';
import { FIXTURE, MLFLOW_TOKEN, launchCli, onlyRun, useHarness } from './launch-harness.js';
import type { Harness } from './launch-harness.js';

async function proxyCli(argv: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; err: string }> {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let err = '';
  stdout.resume();
  stderr.on('data', (c: Buffer) => (err += c.toString()));
  const code = await proxyMain(argv, { stdout, stderr, env });
  process.exitCode = undefined;
  return { code, err };
}

describe('kvx-launch and kvx-proxy command lines', function () {
  this.timeout(20_000);
  const harness = useHarness();
  let h: Harness;
  beforeEach(() => {
    h = harness();
  });

  it('each command offers exactly the flags the table gives it, with the config key they set', async () => {
    for (const command of ['run', 'follow', 'start-run'] as const) {
      const res = await launchCli(h, [command, '--help']);
      expect(res.code).to.equal(0);
      const offered = [...res.stdout.matchAll(/^\s+(?:-\w, )?(--[a-z-]+)/gm)].map((m) => m[1]).filter((f) => f !== '--help');
      expect(offered.sort()).to.deep.equal(flagsOf(`kvx-launch ${command}`).map((f) => f.name).sort());
    }
    const run = await launchCli(h, ['run', '--help']);
    expect(run.stdout).to.match(/--service-account <email>\s+service account the pipeline runs as\s+\(vertex\.serviceAccount\)/);
    expect(run.stdout).to.match(/--auth-param <key=value>\s+MLflow header provider param\s+\(auth\.params\.<key>\); repeatable/);
  });

  it('a label key given twice is an input error naming the flag and the key; nothing is created', async () => {
    const res = await launchCli(h, ['run', FIXTURE, '-c', h.config, '--param', 'dataset=x', '--label', 'team=a', '--label', 'team=b']);
    expect(res.code).to.equal(1);
    expect(res.stderr).to.include('--label team is given more than once');
    expect(h.mlflow.store.runs.size).to.equal(0);
    expect(h.vertex.jobs.size).to.equal(0);
  });

  it('an --auth-param key given twice, or also set by --client-id, is a usage error naming both', async () => {
    const twice = await launchCli(h, ['start-run', '-c', h.config, '--auth-param', 'token_env=A', '--auth-param', 'token_env=B']);
    expect(twice.code).to.equal(2);
    expect(twice.stderr).to.include('--auth-param token_env is given more than once');
    const both = await launchCli(h, ['start-run', '-c', h.config, '--client-id', 'x.apps.googleusercontent.com', '--auth-param', 'client_id=y']);
    expect(both.code).to.equal(2);
    expect(both.stderr).to.include('--auth-param client_id sets auth.params.client_id, which --client-id sets too');
    const malformed = await launchCli(h, ['start-run', '-c', h.config, '--auth-param', 'novalue']);
    expect(malformed.code).to.equal(2);
    expect(malformed.stderr).to.include('--auth-param "novalue" is malformed: write --auth-param key=value');
    expect(h.mlflow.store.runs.size).to.equal(0);
  });

  it('kvx-proxy: a --param key given twice is a usage error, as in kvx-launch', async () => {
    const res = await proxyCli(['check-config', '--upstream', 'https://mlflow.example', '--auth-provider', 'static', '--param', 'token=a', '--param', 'token=b']);
    expect(res.code).to.equal(2);
    expect(res.err).to.include('--param token is given more than once');
    const both = await proxyCli(['check-config', '--upstream', 'https://mlflow.example', '--token-env', 'A', '--param', 'token_env=B']);
    expect(both.code).to.equal(2);
    expect(both.err).to.include('--param token_env sets auth.params.token_env, which --token-env sets too');
  });

  it('MLFLOW_TRACKING_URI and MLFLOW_TRACKING_TOKEN set up MLflow when the config names neither', async () => {
    const cfg = path.join(h.dir, 'no-mlflow.yml');
    await writeFile(cfg, 'project_id: my-project\nregion: europe-west4\nrun_config:\n  root: b/p\n  experiment_name: from-env\n');
    const res = await launchCli(h, ['start-run', '-c', cfg, '--json'], { env: { MLFLOW_TRACKING_URI: h.mlflow.url, MLFLOW_TRACKING_TOKEN: MLFLOW_TOKEN } });
    expect(res.code, res.stderr).to.equal(0);
    expect(JSON.parse(res.stdout)).to.include({ runId: onlyRun(h).info.run_id, how: 'created' });

    const bad = await launchCli(h, ['start-run', '-c', cfg], { env: { MLFLOW_TRACKING_URI: 'https://user:pw@mlflow.example.com' } });
    expect(bad.code).to.equal(2);
    expect(bad.stderr).to.include('MLFLOW_TRACKING_URI: used as upstream.url because none is configured, but it must not contain credentials');
  });

  it('a bad number of seconds is a usage error naming the flag', async () => {
    const res = await launchCli(h, ['follow', 'some-job', '-c', h.config, '--poll-interval', '0']);
    expect(res.code).to.equal(2);
    expect(res.stderr).to.include('--poll-interval must be a positive number of seconds, got "0"');
  });
});
