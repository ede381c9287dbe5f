import { PassThrough } from 'node:stream';
import { expect } from 'chai';
import { COMMANDS, CommandFlags, FLAGS, attributeOf, flagsOf } from '../../src/cli/flags.js';
import type { CommandId } from '../../src/cli/flags.js';
import { main as proxyMain } from '../../src/cli/kvx-proxy.js';
import { EXIT, exitCodeFor, reportError } from '../../src/cli/program.js';
import { specAt } from '../../src/config/load.js';
import { ConfigError, KvxError } from '../../src/errors.js';

const ALL: CommandId[] = Object.entries(COMMANDS).flatMap(([program, commands]) => commands.map((c) => `${program} ${c}` as CommandId));

function capture(): { io: { stdout: PassThrough; stderr: PassThrough; env: NodeJS.ProcessEnv }; err: () => string } {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let err = '';
  stdout.resume();
  stderr.on('data', (c: Buffer) => (err += c.toString()));
  return { io: { stdout, stderr, env: {} }, err: () => err };
}

describe('cli: the flag table', () => {
  it('sets only keys the config schema has', () => {
    for (const flag of FLAGS) {
      // A key inside a map (auth.params.client_id) is one of the map's free keys.
      const inMap = flag.key?.startsWith('auth.params.') === true;
      if (flag.key !== undefined) expect(specAt(inMap ? 'auth.params' : flag.key), `${flag.name} sets ${flag.key}`).to.not.equal(undefined);
      if (flag.map !== undefined) expect(specAt(flag.map)?.kind, `${flag.name} fills ${flag.map}`).to.equal('map');
    }
  });

  it('gives no command two flags with one name, short form or attribute', () => {
    for (const command of ALL) {
      const flags = flagsOf(command);
      expect(flags.length, command).to.be.greaterThan(0);
      for (const pick of [(f: (typeof flags)[number]) => f.name, (f: (typeof flags)[number]) => f.short, attributeOf]) {
        const values = flags.map(pick).filter((v) => v !== undefined);
        expect(new Set(values).size, `${command}: ${values.join(' ')}`).to.equal(values.length);
      }
    }
  });

  it('turns the flags of a command into the overrides of the keys they set, by program', () => {
    const launch = new CommandFlags('kvx-launch run', { project: 'p', serviceAccount: 'runner@p.iam.gserviceaccount.com', authParam: ['audience=a'], wait: true });
    expect(launch.overrides()).to.deep.equal([
      { path: 'vertex.projectId', value: 'p', source: '--project' },
      { path: 'auth.params.audience', value: 'a', source: '--auth-param audience' },
      { path: 'vertex.serviceAccount', value: 'runner@p.iam.gserviceaccount.com', source: '--service-account' },
    ]);
    const proxy = new CommandFlags('kvx-proxy serve', { serviceAccount: 'sa@p.iam.gserviceaccount.com', admin: true, requireToken: false });
    expect(proxy.overrides()).to.deep.equal([
      { path: 'auth.params.service_account', value: 'sa@p.iam.gserviceaccount.com', source: '--service-account' },
      { path: 'auth.requireTokenAtStart', value: false, source: '--no-require-token' },
    ]);
  });

  it('refuses to read a flag the command does not declare', () => {
    expect(() => new CommandFlags('kvx-launch follow', {}).string('--job-name')).to.throw('--job-name is not a flag of kvx-launch follow');
  });
});

describe('cli: exit codes', () => {
  it('maps errors to one set of codes for both programs; an interrupt is never a usage error', () => {
    expect(exitCodeFor(new ConfigError([{ path: 'a', message: 'b' }]))).to.equal(EXIT.usage);
    expect(exitCodeFor(new KvxError('KVX_USAGE', 'x'))).to.equal(EXIT.usage);
    expect(exitCodeFor(new KvxError('KVX_INTERRUPTED', 'x'))).to.equal(130);
    expect(exitCodeFor(new KvxError('KVX_MLFLOW_API', 'x'))).to.equal(EXIT.failed);
    expect(exitCodeFor(new Error('x'))).to.equal(EXIT.failed);
  });

  it('prints stack traces only with --debug', () => {
    const quiet = capture();
    reportError(new Error('boom'), quiet.io, 'kvx-proxy', false);
    expect(quiet.err()).to.equal('kvx-proxy: boom\n');
    const loud = capture();
    reportError(new KvxError('KVX_MLFLOW_API', 'boom', { hint: 'look' }), loud.io, 'kvx-proxy', true);
    expect(loud.err()).to.match(/^kvx-proxy: boom\n {2}hint: look\nKvxError: boom\n {4}at /);
  });

  it('main() returns the code and sets process.exitCode; it never exits the process', async () => {
    const exit = process.exit;
    process.exit = ((code?: number) => {
      throw new Error(`process.exit(${code}) called`);
    }) as typeof process.exit;
    try {
      const { io } = capture();
      expect(await proxyMain(['check-config', '--port', 'x'], io)).to.equal(2);
      expect(process.exitCode).to.equal(2);
      expect(await proxyMain(['--version'], io)).to.equal(0);
      expect(process.exitCode).to.equal(0);
    } finally {
      process.exit = exit;
      process.exitCode = undefined;
    }
  });
});
