import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { ADDED_ENV_MARKER, HEAP_GROWING_FLAG, forgetAddedEnv, missingNodeFlags, missingProcessEnv } from '../../src/cli/node-flags.js';

const ROOT = join(import.meta.dirname, '..', '..');
const BIN = join(ROOT, 'dist', 'cli', 'kvx-proxy.js');
const PKG = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { kvx: { nodeFlags: string[]; processEnv: Record<string, string> } }).kvx;
const SHIPPED = PKG.nodeFlags;

/** Starts the built kvx-proxy as `node <bin>` (what npm's bin link runs) and resolves with its command line once it listens. */
async function started(nodeArgs: string[], env: NodeJS.ProcessEnv = {}): Promise<{ child: ChildProcess; cmdline: string[] }> {
  const child = spawn(process.execPath, [...nodeArgs, BIN, '--upstream', 'http://127.0.0.1:9', '--auth-provider', 'static', '--token-env', 'NODE_FLAGS_TEST_TOKEN', '--port', '0', '--admin-port', '0'], {
    env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', NODE_FLAGS_TEST_TOKEN: 'node-flags-test-token', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('"kvx-proxy listening"')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`kvx-proxy exited (${code}) before listening:\n${out}\n${err}`)));
  });
  // execve keeps the pid: the process the parent started is the one that now runs with the flags.
  const cmdline = readFileSync(`/proc/${child.pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
  return { child, cmdline };
}

/** The environment the process was started with (what the C library read), not what its process.env holds now. */
const startEnvironment = (pid: number): string[] => readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').filter(Boolean);

/** Runs `kvx-proxy exec` as the npm bin; the wrapped command prints the two variables as it sees them. */
async function execSees(env: NodeJS.ProcessEnv): Promise<{ arenas: string | null; marker: string | null }> {
  const script = `console.log(JSON.stringify({ arenas: process.env.MALLOC_ARENA_MAX ?? null, marker: process.env.${ADDED_ENV_MARKER} ?? null }))`;
  const { stdout } = await promisify(execFile)(
    process.execPath,
    [BIN, 'exec', '--upstream', 'http://127.0.0.1:9', '--auth-provider', 'static', '--token-env', 'NODE_FLAGS_TEST_TOKEN', '--port', '0', '--', process.execPath, '-e', script],
    { env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', NODE_FLAGS_TEST_TOKEN: 'node-flags-test-token', ...env } },
  );
  return JSON.parse(stdout.trim().split('\n').pop()!) as { arenas: string | null; marker: string | null };
}

describe('kvx-proxy started as the npm bin: the Node flags kvx ships with', function () {
  this.timeout(20_000);
  const children: ChildProcess[] = [];
  afterEach(async () => {
    for (const child of children.splice(0)) {
      if (child.exitCode !== null || child.signalCode !== null) continue;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    }
  });

  it('names the flags that are missing, by option name whatever value or form the user gave', () => {
    const shipped = ['--max-semi-space-size=8', '--disable-sigusr1'];
    expect(missingNodeFlags(shipped, [], undefined)).to.deep.equal(shipped);
    expect(missingNodeFlags(shipped, ['--max-semi-space-size=16'], undefined)).to.deep.equal(['--disable-sigusr1']);
    expect(missingNodeFlags(shipped, ['--inspect'], ' --disable-sigusr1  --max-semi-space-size=4 ')).to.deep.equal([]);
    expect(missingNodeFlags(shipped, ['--max-semi-space-size', '32'], '')).to.deep.equal(['--disable-sigusr1']);
  });

  it('started without them, the same process (same pid) runs with them and keeps its own Node flags and arguments', async () => {
    const { child, cmdline } = await started(['--stack-size=900']);
    children.push(child);
    expect(cmdline.slice(1)).to.deep.equal([...SHIPPED, '--stack-size=900', BIN, '--upstream', 'http://127.0.0.1:9', '--auth-provider', 'static', '--token-env', 'NODE_FLAGS_TEST_TOKEN', '--port', '0', '--admin-port', '0']);
  });

  it('a flag the user set (NODE_OPTIONS or the command line) is kept as given; only the others are added', async () => {
    const viaEnv = await started([], { NODE_OPTIONS: '--max-semi-space-size=16' });
    children.push(viaEnv.child);
    expect(viaEnv.cmdline).to.include('--disable-sigusr1');
    expect(viaEnv.cmdline.filter((a) => a.startsWith('--max-semi-space-size'))).to.deep.equal([]);

    const given = await started([...SHIPPED, '--stack-size=900']);
    children.push(given.child);
    expect(given.cmdline.slice(1)).to.deep.equal([...SHIPPED, '--stack-size=900', BIN, '--upstream', 'http://127.0.0.1:9', '--auth-provider', 'static', '--token-env', 'NODE_FLAGS_TEST_TOKEN', '--port', '0', '--admin-port', '0']);
  });

  it('names the shipped variables the environment has no value for, and forgets only what a replacement added', () => {
    expect(missingProcessEnv({ MALLOC_ARENA_MAX: '1' }, {})).to.deep.equal({ MALLOC_ARENA_MAX: '1' });
    expect(missingProcessEnv({ MALLOC_ARENA_MAX: '1' }, { MALLOC_ARENA_MAX: '8' })).to.deep.equal({});
    expect(missingProcessEnv({ MALLOC_ARENA_MAX: '1' }, { MALLOC_ARENA_MAX: '' })).to.deep.equal({});
    const replaced: NodeJS.ProcessEnv = { MALLOC_ARENA_MAX: '1', HOME: '/home/u', [ADDED_ENV_MARKER]: 'MALLOC_ARENA_MAX' };
    expect(forgetAddedEnv(replaced)).to.equal(true);
    expect(replaced).to.deep.equal({ HOME: '/home/u' });
    const user: NodeJS.ProcessEnv = { MALLOC_ARENA_MAX: '4' };
    expect(forgetAddedEnv(user)).to.equal(false);
    expect(user).to.deep.equal({ MALLOC_ARENA_MAX: '4' });
  });

  it('started without the shipped environment, the same process starts with it, flags given or not', async () => {
    expect(PKG.processEnv).to.deep.equal({ MALLOC_ARENA_MAX: '1' });
    for (const nodeArgs of [[], [...SHIPPED]]) {
      const { child } = await started(nodeArgs);
      children.push(child);
      expect(startEnvironment(child.pid!)).to.include.members(['MALLOC_ARENA_MAX=1', `${ADDED_ENV_MARKER}=MALLOC_ARENA_MAX`]);
    }
  });

  it('a value the user set is kept, and what kvx added never reaches the commands it runs', async () => {
    const { child } = await started([...SHIPPED], { MALLOC_ARENA_MAX: '4' });
    children.push(child);
    const environment = startEnvironment(child.pid!);
    expect(environment).to.include('MALLOC_ARENA_MAX=4');
    expect(environment.filter((v) => v.startsWith(`${ADDED_ENV_MARKER}=`))).to.deep.equal([]);

    expect(await execSees({})).to.deep.equal({ arenas: null, marker: null });
    expect(await execSees({ MALLOC_ARENA_MAX: '4' })).to.deep.equal({ arenas: '4', marker: null });
  });
});

/** The old generation's growing factor V8 reports after one full collection in a fresh `node nodeArgs -e gc()`. */
async function growingFactor(nodeArgs: string[]): Promise<number | undefined> {
  const { stdout } = await promisify(execFile)(process.execPath, ['--expose-gc', '--trace-gc-verbose', ...nodeArgs, '-e', 'gc()'], { env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin' } });
  const factor = /\[HeapController\] factor ([\d.]+)/.exec(stdout)?.[1];
  return factor === undefined ? undefined : Number(factor);
}

describe('kvx-proxy limits how far V8 grows its old generation', function () {
  this.timeout(20_000);
  const NODE_FLAGS_MODULE = pathToFileURL(join(ROOT, 'dist', 'cli', 'node-flags.js')).href;

  before(async function () {
    // Node 22's V8 traces the factor it computed before applying the flag, so the trace cannot show the
    // setting there; the flag given on the command line tells which kind of V8 this is.
    if ((await growingFactor(['--heap-growing-percent=50'])) !== 1.5) this.skip();
  });

  it('fixes the factor at 1.5 as kvx-proxy loads, and keeps a factor the user gave', async () => {
    expect(HEAP_GROWING_FLAG).to.equal('--heap-growing-percent=50');
    expect(await growingFactor([])).to.not.equal(1.5);
    expect(await growingFactor(['--import', NODE_FLAGS_MODULE])).to.equal(1.5);
    expect(await growingFactor(['--heap-growing-percent=30', '--import', NODE_FLAGS_MODULE])).to.equal(1.3);
  });
});
