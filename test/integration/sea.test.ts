/**
 * The standalone executable, built the way `npm run build:sea` builds it, run from a directory with no
 * node_modules and a PATH without node, as in a Python pipeline image.
 * KVX_SKIP_SEA_TEST=1 skips it (e.g. on a non-linux-x64 machine); .ci/run never sets it.
 */
import { execFileSync, spawn } from 'node:child_process';
import { copyFileSync, existsSync, linkSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import { bearerGate, startFakeMlflow } from '../fakes/mlflow/index.js';
import type { FakeMlflow } from '../fakes/mlflow/index.js';
import { pollUntil, spawnProxy } from '../faults/support/proxy-process.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const skipReason =
  process.env['KVX_SKIP_SEA_TEST'] === '1'
    ? 'KVX_SKIP_SEA_TEST=1'
    : process.platform !== 'linux' || process.arch !== 'x64'
      ? `the standalone build targets linux-x64, this is ${process.platform}-${process.arch}`
      : undefined;

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

describe('standalone executable (build-sea)', function () {
  this.timeout(120_000);
  let buildDir: string;
  let runDir: string;
  let bin: string;
  let env: NodeJS.ProcessEnv;
  let mlflow: FakeMlflow;
  const TOKEN = 'sea-test-token-91b';

  before(function () {
    if (skipReason) {
      console.log(`      skipped: ${skipReason}`);
      this.skip();
    }
    buildDir = mkdtempSync(path.join(tmpdir(), 'kvx-sea-build-'));
    execFileSync(process.execPath, [path.join(ROOT, 'scripts/build-sea.mjs'), '--out', buildDir], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });

    // A bare directory: the executable, its program-named links, a config, and a PATH holding only `true` and `sh`.
    runDir = mkdtempSync(path.join(tmpdir(), 'kvx-sea-run-'));
    bin = path.join(runDir, 'bin');
    mkdirSync(bin);
    copyFileSync(path.join(buildDir, 'kvx'), path.join(bin, 'kvx'));
    linkSync(path.join(bin, 'kvx'), path.join(bin, 'kvx-proxy'));
    if (existsSync(path.join(buildDir, 'kvx-launch'))) linkSync(path.join(bin, 'kvx'), path.join(bin, 'kvx-launch'));
    for (const tool of ['true', 'sh']) {
      const found = ['/usr/bin', '/bin'].map((d) => path.join(d, tool)).find((f) => existsSync(f));
      if (!found) throw new Error(`no ${tool} in /usr/bin or /bin`);
      symlinkSync(found, path.join(bin, tool));
    }
    env = { PATH: bin, HOME: runDir };
  });

  after(async () => {
    await mlflow?.close();
    if (buildDir) rmSync(buildDir, { recursive: true, force: true });
    if (runDir) rmSync(runDir, { recursive: true, force: true });
  });

  function run(program: string, args: string[], extraEnv: NodeJS.ProcessEnv = {}): Promise<Result> {
    return new Promise((resolve) => {
      const proc = spawn(path.join(bin, program), args, { cwd: runDir, env: { ...env, ...extraEnv }, stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      proc.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      proc.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      proc.on('close', (code) => resolve({ code, stdout, stderr }));
    });
  }

  it('runs where neither node nor node_modules can be found', () => {
    expect(existsSync(path.join(runDir, 'node_modules'))).to.equal(false);
    expect(existsSync(path.join(bin, 'node'))).to.equal(false);
    expect(statSync(path.join(bin, 'kvx')).size).to.be.greaterThan(10_000_000);
  });

  it('prints its version, as kvx-proxy and as kvx', async () => {
    const pkg = (await import('../../package.json', { with: { type: 'json' } })).default as { version: string };
    const proxy = await run('kvx-proxy', ['--version']);
    expect(proxy.code, proxy.stderr).to.equal(0);
    expect(proxy.stdout.trim()).to.equal(pkg.version);
    const kvx = await run('kvx', ['--version']);
    expect(kvx.stdout.trim()).to.equal(pkg.version);
    const unknown = await run('kvx', ['no-such-program']);
    expect(unknown.code).to.equal(2);
    expect(unknown.stderr).to.include('Programs: kvx-proxy');
  });

  it('includes kvx-launch when its CLI exists', async function () {
    if (!existsSync(path.join(ROOT, 'src/cli/kvx-launch.ts'))) this.skip();
    const launch = await run('kvx-launch', ['--version']);
    expect(launch.code, launch.stderr).to.equal(0);
    expect(launch.stdout.trim()).to.match(/^\d+\.\d+\.\d+/);
  });

  it('loads custom provider modules (ESM and CommonJS) from disk', async () => {
    writeFileSync(path.join(runDir, 'team-auth.mjs'), "export default class { name = 'team-esm'; inContext() { return true; } requestHeaders() { return { 'x-team': 'a' }; } }\n");
    writeFileSync(path.join(runDir, 'team-auth.cjs'), "module.exports = class { name = 'team-cjs'; inContext() { return true; } requestHeaders() { return { 'x-team': 'b' }; } };\n");
    for (const [file, name] of [['./team-auth.mjs', 'team-esm'], ['./team-auth.cjs', 'team-cjs']]) {
      const result = await run('kvx-proxy', ['exec', '--upstream', 'https://mlflow.example.com', '--auth-provider', 'custom', '--auth-module', file!, '--', 'true']);
      expect(result.code, result.stderr).to.equal(0);
      expect(result.stderr).to.include(`"providers":["${name}"]`);
    }
  });

  it('runs with the Node flags kvx ships with (package.json kvx.nodeFlags)', async () => {
    const { kvx } = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { kvx: { nodeFlags: string[] } };
    // A custom provider module sees the process it runs in; it reports the flags through the header it adds.
    writeFileSync(
      path.join(runDir, 'flags.mjs'),
      "export default class { name = 'flags:' + process.execArgv.join(','); inContext() { return true; } requestHeaders() { return {}; } }\n",
    );
    const result = await run('kvx-proxy', ['exec', '--upstream', 'https://mlflow.example.com', '--auth-provider', 'custom', '--auth-module', './flags.mjs', '--', 'true']);
    expect(result.code, result.stderr).to.equal(0);
    expect(kvx.nodeFlags).to.include('--max-semi-space-size=8');
    expect(result.stderr).to.include(`"providers":["flags:${kvx.nodeFlags.join(',')}"]`);
  });

  it('checks a config file', async () => {
    writeFileSync(path.join(runDir, 'kvx.yaml'), 'upstream:\n  url: https://mlflow.example.com\nauth:\n  provider: static\n  params:\n    token_env: SEA_TOKEN\n');
    const ok = await run('kvx-proxy', ['check-config', '--config', 'kvx.yaml'], { SEA_TOKEN: 'secret-value-not-printed' });
    expect(ok.code, ok.stderr).to.equal(0);
    expect(ok.stdout).to.include('url: https://mlflow.example.com');
    expect(ok.stdout).to.not.include('secret-value-not-printed');

    const bad = await run('kvx-proxy', ['check-config', '--config', 'kvx.yaml']);
    expect(bad.code).to.equal(2);
    expect(bad.stderr).to.include('auth.params.token_env: environment variable SEA_TOKEN is not set');
  });

  it('wraps a command with exec', async () => {
    const ok = await run('kvx-proxy', ['exec', '--upstream', 'https://mlflow.example.com', '--auth-provider', 'none', '--', 'true']);
    expect(ok.code, ok.stderr).to.equal(0);
    const code = await run('kvx', ['kvx-proxy', 'exec', '--upstream', 'https://mlflow.example.com', '--auth-provider', 'none', '--', 'sh', '-c', 'echo "$MLFLOW_TRACKING_URI"; exit 5']);
    expect(code.code, code.stderr).to.equal(5);
    expect(code.stdout.trim()).to.match(/^http:\/\/127\.0\.0\.1:\d+$/);
  });

  it('proxies MLflow requests with credentials', async () => {
    mlflow = await startFakeMlflow({ gate: bearerGate(TOKEN) });
    const script = 'exec kvx-proxy --upstream "$UPSTREAM" --port 0 --no-admin --auth-provider static --token-env SEA_TOKEN';
    const proc = spawn(path.join(bin, 'sh'), ['-c', script], { cwd: runDir, env: { ...env, UPSTREAM: mlflow.url, SEA_TOKEN: TOKEN }, stdio: ['ignore', 'pipe', 'pipe'] });
    try {
      const url = await new Promise<string>((resolve, reject) => {
        let out = '';
        proc.stdout.on('data', (d: Buffer) => {
          out += d.toString();
          const m = /"msg":"kvx-proxy listening"[^\n]*"url":"(http:\/\/[^"]+)"/.exec(out);
          if (m) resolve(m[1]!);
        });
        proc.on('exit', (code) => reject(new Error(`kvx-proxy exited with ${code} before listening: ${out}`)));
      });
      const res = await fetch(`${url}/api/2.0/mlflow/experiments/create`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ name: 'from-standalone' }),
      });
      expect(res.status).to.equal(200);
      expect(mlflow.requests.at(-1)?.headers.authorization).to.equal(`Bearer ${TOKEN}`);
    } finally {
      const exited = new Promise((resolve) => proc.once('exit', resolve));
      proc.kill('SIGTERM');
      expect(await exited).to.equal(0);
    }
  });

  it('never opens the Node inspector on SIGUSR1 (built with --disable-sigusr1), and keeps serving', async () => {
    mlflow ??= await startFakeMlflow({ gate: bearerGate(TOKEN) });
    const proxy = await spawnProxy({
      label: 'sea-sigusr1',
      command: [path.join(bin, 'kvx-proxy')],
      args: ['--upstream', mlflow.url, '--port', '0', '--admin-port', '0', '--auth-provider', 'static', '--token-env', 'SEA_TOKEN'],
      env: { PATH: bin, SEA_TOKEN: TOKEN },
    });
    try {
      // The listeners are read from the process's own sockets: something else on 9229 cannot hide an inspector.
      const before = proxy.listeningPorts().sort();
      proxy.signal('SIGUSR1');
      const after = await pollUntil(() => (proxy.alive ? proxy.listeningPorts().sort() : []), (p) => p.length !== before.length, 1500);
      expect(proxy.alive, `SIGUSR1 ended the process: ${JSON.stringify(proxy.exit)}`).to.equal(true);
      expect(after, proxy.stderr).to.deep.equal(before);
      expect(proxy.stderr).to.not.match(/Debugger listening|inspector/i);
      const res = await fetch(`${proxy.url}/api/2.0/mlflow/experiments/create`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ name: 'after-sigusr1' }),
      });
      expect(res.status).to.equal(200);
    } finally {
      expect(await proxy.stop()).to.deep.equal({ code: 0, signal: null });
    }
  });
});
