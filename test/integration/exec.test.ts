/**
 * `kvx-proxy exec` run as a real process (signals must reach the wrapper, not mocha), wrapping small Node
 * scripts that stand in for a Kedro step.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import { bearerGate, startFakeMlflow } from '../fakes/mlflow/index.js';
import type { FakeMlflow } from '../fakes/mlflow/index.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CLI = path.join(ROOT, 'src/cli/kvx-proxy.ts');
/** tsx by its location: a step's working directory (a kedro project in a temp dir) has no node_modules to find it in. */
const TSX = import.meta.resolve('tsx');
const TOKEN = 'exec-test-token-7f3a';

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Starts `kvx-proxy exec <args>`; `onStdout` sees the command's output as it comes. */
function startExec(args: string[], env: NodeJS.ProcessEnv, onStdout?: (text: string, proc: ChildProcess) => void): { proc: ChildProcess; done: Promise<Run> } {
  const proc = spawn(process.execPath, ['--import', TSX, CLI, 'exec', ...args], {
    cwd: ROOT,
    env: { PATH: process.env['PATH'], HOME: process.env['HOME'], ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  proc.stdout!.on('data', (d: Buffer) => {
    stdout += d.toString();
    onStdout?.(stdout, proc);
  });
  proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<Run>((resolve) => proc.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })));
  return { proc, done };
}

/** `kvx-proxy exec <args>` run in `cwd` (a step runs in its image's working directory, the project). */
async function startExecIn(cwd: string, args: string[], env: NodeJS.ProcessEnv): Promise<Run> {
  const proc = spawn(process.execPath, ['--import', TSX, CLI, 'exec', ...args], {
    cwd,
    env: { PATH: process.env['PATH'], HOME: process.env['HOME'], ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  proc.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise<Run>((resolve) => proc.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })));
}

/** A Node one-liner as the wrapped command: `node -e <script>`. */
const nodeCommand = (script: string): string[] => [process.execPath, '-e', script];

describe('kvx-proxy exec', function () {
  this.timeout(30_000);
  let mlflow: FakeMlflow;
  let dir: string;
  let baseEnv: NodeJS.ProcessEnv;

  before(async () => {
    mlflow = await startFakeMlflow({ gate: bearerGate(TOKEN) });
    dir = mkdtempSync(path.join(tmpdir(), 'kvx-exec-'));
    baseEnv = { KVX_UPSTREAM_URL: mlflow.url, KVX_AUTH_PROVIDER: 'static', KVX_AUTH_PARAMS_TOKEN_ENV: 'EXEC_TEST_TOKEN', EXEC_TEST_TOKEN: TOKEN };
  });
  after(async () => {
    await mlflow.close();
    rmSync(dir, { recursive: true, force: true });
  });
  beforeEach(async () => {
    await mlflow.reset();
  });

  it('passes the command exit code through', async () => {
    for (const code of [0, 3, 42]) {
      const run = await startExec(['--', ...nodeCommand(`process.exit(${code})`)], baseEnv).done;
      expect(run.code, run.stderr).to.equal(code);
    }
  });

  it('gives the command MLFLOW_TRACKING_URI of the proxy and no MLflow credentials; stdout stays the command’s', async () => {
    const script = `process.stdout.write(JSON.stringify({
      uri: process.env.MLFLOW_TRACKING_URI,
      token: process.env.MLFLOW_TRACKING_TOKEN ?? null,
      user: process.env.MLFLOW_TRACKING_USERNAME ?? null,
      password: process.env.MLFLOW_TRACKING_PASSWORD ?? null,
      keep: process.env.KEEP_ME ?? null,
      noProxy: process.env.NO_PROXY ?? null,
    }))`;
    const run = await startExec(['--', ...nodeCommand(script)], {
      ...baseEnv,
      MLFLOW_TRACKING_TOKEN: 'client-token-that-must-not-travel',
      MLFLOW_TRACKING_USERNAME: 'alice',
      MLFLOW_TRACKING_PASSWORD: 'client-password-that-must-not-travel',
      MLFLOW_TRACKING_URI: 'https://ignored-because-upstream-is-configured.example',
      KEEP_ME: 'kept',
      HTTP_PROXY: 'http://corporate-proxy.invalid:3128',
    }).done;
    expect(run.code, run.stderr).to.equal(0);
    const seen = JSON.parse(run.stdout) as Record<string, string | null>;
    expect(seen['uri']).to.match(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(seen['uri']).to.not.equal(mlflow.url);
    expect(seen).to.deep.include({ token: null, user: null, password: null, keep: 'kept', noProxy: '127.0.0.1' });
    // Proxy logs are JSON lines on stderr, and name removed variables, never their values.
    expect(run.stderr).to.include('"removed":["MLFLOW_TRACKING_TOKEN","MLFLOW_TRACKING_USERNAME","MLFLOW_TRACKING_PASSWORD"]');
    expect(run.stderr).to.not.include('must-not-travel');
    expect(run.stderr).to.not.include(TOKEN);
  });

  it('authenticates the command’s MLflow calls, replacing any credentials it sends itself', async () => {
    const script = `(async () => {
      const base = process.env.MLFLOW_TRACKING_URI;
      const post = (p, body) => fetch(base + p, { method: 'POST', headers: { 'content-type': 'application/json', authorization: 'Bearer forged' }, body: JSON.stringify(body) });
      const created = await post('/api/2.0/mlflow/experiments/create', { name: 'kedro-step' });
      const { experiment_id } = await created.json();
      const run = await (await post('/api/2.0/mlflow/runs/create', { experiment_id, start_time: Date.now() })).json();
      const logged = await post('/api/2.0/mlflow/runs/log-metric', { run_id: run.run.info.run_id, key: 'loss', value: 0.5, timestamp: Date.now(), step: 1 });
      process.stdout.write(JSON.stringify({ created: created.status, logged: logged.status, runId: run.run.info.run_id }));
    })().catch((e) => { console.error(e); process.exit(9); });`;
    const run = await startExec(['--', ...nodeCommand(script)], baseEnv).done;
    expect(run.code, run.stderr).to.equal(0);
    const out = JSON.parse(run.stdout) as { created: number; logged: number; runId: string };
    expect(out).to.include({ created: 200, logged: 200 });
    expect(mlflow.requests.map((r) => [r.path, r.status])).to.deep.equal([
      ['/api/2.0/mlflow/experiments/create', 200],
      ['/api/2.0/mlflow/runs/create', 200],
      ['/api/2.0/mlflow/runs/log-metric', 200],
    ]);
    expect(mlflow.requests.every((r) => r.headers.authorization === `Bearer ${TOKEN}`)).to.equal(true);
  });

  it('takes the upstream from MLFLOW_TRACKING_URI when none is configured', async () => {
    const env: NodeJS.ProcessEnv = { ...baseEnv, MLFLOW_TRACKING_URI: mlflow.url };
    delete env['KVX_UPSTREAM_URL'];
    const script = `fetch(process.env.MLFLOW_TRACKING_URI + '/api/2.0/mlflow/experiments/get-by-name?experiment_name=x').then((r) => process.exit(r.status === 404 ? 0 : 1))`;
    const run = await startExec(['--', ...nodeCommand(script)], env).done;
    expect(run.code, run.stderr).to.equal(0);
    expect(run.stderr).to.include('upstream taken from MLFLOW_TRACKING_URI');
    expect(mlflow.requests).to.have.length(1);
  });

  describe("with a kedro project's conf/<env>/vertexai.yml and no upstream configured", () => {
    const project = () => path.join(dir, 'project');
    const prod = () => path.join(project(), 'conf', 'prod');
    before(() => {
      mkdirSync(prod(), { recursive: true });
      mkdirSync(path.join(project(), 'conf', 'base'), { recursive: true });
      // kedro-vertexai's file as the step's config (what adapting puts in every step): no kvx section.
      writeFileSync(path.join(prod(), 'vertexai.yml'), 'project_id: my-project\nregion: europe-west4\nrun_config:\n  image: x\n  experiment_name: e\n');
    });
    const env = (): NodeJS.ProcessEnv => {
      const e = { ...baseEnv };
      delete e['KVX_UPSTREAM_URL'];
      return e;
    };
    const script = `fetch(process.env.MLFLOW_TRACKING_URI + '/api/2.0/mlflow/experiments/get-by-name?experiment_name=x').then((r) => process.exit(r.status === 404 ? 0 : 1))`;

    it("takes the upstream from mlflow.yml's server.mlflow_tracking_uri (conf/base's under conf/prod's), warning that a kedro step would not use the proxy", async () => {
      writeFileSync(path.join(project(), 'conf', 'base', 'mlflow.yml'), `server:\n  mlflow_tracking_uri: ${mlflow.url}\n`);
      rmSync(path.join(prod(), 'mlflow.yml'), { force: true });
      const before = mlflow.requests.length;
      const run = await startExecIn(project(), ['--config', 'conf/prod/vertexai.yml', '--', ...nodeCommand(script)], env());
      expect(run.code, run.stderr).to.equal(0);
      expect(run.stderr).to.include(`upstream taken from server.mlflow_tracking_uri in ${path.join(project(), 'conf', 'base', 'mlflow.yml')}`);
      expect(run.stderr).to.include('a kedro command here would not use this proxy').and.include('set server.mlflow_tracking_uri to null');
      expect(mlflow.requests.length - before).to.equal(1);
    });

    it('takes it from ${oc.env:MLFLOW_TRACKING_URI,<url>}, which sends kedro through the proxy: no warning', async () => {
      writeFileSync(path.join(prod(), 'mlflow.yml'), `server:\n  mlflow_tracking_uri: \${oc.env:MLFLOW_TRACKING_URI,${mlflow.url}}\n`);
      const run = await startExecIn(project(), ['--config', 'conf/prod/vertexai.yml', '--', ...nodeCommand(script)], env());
      expect(run.code, run.stderr).to.equal(0);
      expect(run.stderr).to.include(`upstream taken from server.mlflow_tracking_uri in ${path.join(prod(), 'mlflow.yml')}`);
      expect(run.stderr).to.not.include('would not use this proxy');
    });

    it('a null there (over a URL of conf/base) names no server: the usual error, exit 2', async () => {
      writeFileSync(path.join(prod(), 'mlflow.yml'), 'server:\n  mlflow_tracking_uri: null\n');
      const run = await startExecIn(project(), ['--config', 'conf/prod/vertexai.yml', '--', ...nodeCommand(script)], env());
      expect(run.code).to.equal(2);
      expect(run.stderr).to.include('upstream.url').and.include('mlflow.yml');
    });
  });

  it('forwards SIGTERM to the command and exits with its code', async () => {
    const script = `process.on('SIGTERM', () => { process.stdout.write('got SIGTERM\\n'); process.exit(0); }); process.stdout.write('ready\\n'); setInterval(() => {}, 1000);`;
    let sent = false;
    const { done } = startExec(['--', ...nodeCommand(script)], baseEnv, (out, proc) => {
      if (!sent && out.includes('ready\n')) {
        sent = true;
        proc.kill('SIGTERM');
      }
    });
    const run = await done;
    expect(run.stdout).to.equal('ready\ngot SIGTERM\n');
    expect(run.code, run.stderr).to.equal(0);
    expect(run.stderr).to.include('"msg":"forwarding signal to the command","component":"kvx-proxy","signal":"SIGTERM"');
  });

  it('exits 128+N when signal N ends the command (SIGINT → 130, SIGTERM → 143)', async () => {
    for (const [signal, expected] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
      const script = `process.stdout.write('ready\\n'); setInterval(() => {}, 1000);`;
      let sent = false;
      const { done } = startExec(['--', ...nodeCommand(script)], baseEnv, (out, proc) => {
        if (!sent && out.includes('ready\n')) {
          sent = true;
          proc.kill(signal);
        }
      });
      const run = await done;
      expect(run.code, `${signal}: ${run.stderr}`).to.equal(expected);
      expect(run.signal).to.equal(null);
    }
  });

  it('does not start the command when the proxy cannot get a token', async () => {
    const marker = path.join(dir, 'started');
    const env: NodeJS.ProcessEnv = { ...baseEnv, KVX_AUTH_PARAMS_TOKEN_FILE: path.join(dir, 'no-such-token'), KVX_AUTH_STARTUP_TIMEOUT_MS: '2000' };
    delete env['KVX_AUTH_PARAMS_TOKEN_ENV'];
    const run = await startExec(['--', ...nodeCommand(`require('fs').writeFileSync(${JSON.stringify(marker)}, 'x')`)], env).done;
    expect(run.code).to.equal(125);
    expect(existsSync(marker)).to.equal(false);
    expect(run.stderr).to.match(/kvx-proxy exec: the proxy could not become ready, so \S+ was not started: static: token_file .*no-such-token gave no value/);
    expect(mlflow.requests).to.have.length(0);
  });

  it('reports configuration errors with exit 2 and starts nothing', async () => {
    const env = { ...baseEnv, KVX_UPSTREAM_URL: 'ftp://mlflow.example.com' };
    const run = await startExec(['--', 'true'], env).done;
    expect(run.code).to.equal(2);
    expect(run.stderr).to.include('upstream.url: must be http or https');
  });

  it('names a missing command and exits 127; one that cannot run exits 126', async () => {
    const missing = await startExec(['--', 'kvx-no-such-command-xyz'], baseEnv).done;
    expect(missing.code).to.equal(127);
    expect(missing.stderr).to.include('command not found: kvx-no-such-command-xyz');

    const notExecutable = path.join(dir, 'not-executable.sh');
    writeFileSync(notExecutable, '#!/bin/sh\nexit 0\n', { mode: 0o644 });
    const denied = await startExec(['--', notExecutable], baseEnv).done;
    expect(denied.code).to.equal(126);
    expect(denied.stderr).to.include(`cannot run ${notExecutable}: EACCES`);
  });

  it('passes options after the command to the command, with or without --', async () => {
    const script = `process.stdout.write(JSON.stringify(process.argv.slice(1)))`;
    const withDashes = await startExec(['--', process.execPath, '-e', script, '--', '--pipeline', 'training', '--port', '1'], baseEnv).done;
    expect(JSON.parse(withDashes.stdout)).to.deep.equal(['--pipeline', 'training', '--port', '1']);
    const withoutDashes = await startExec(['--log-level', 'warn', process.execPath, '-e', script, '--', '--config', 'x.yml'], baseEnv).done;
    expect(withoutDashes.code, withoutDashes.stderr).to.equal(0);
    expect(JSON.parse(withoutDashes.stdout)).to.deep.equal(['--config', 'x.yml']);
    expect(withoutDashes.stderr).to.equal('');
  });
});
