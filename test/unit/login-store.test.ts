import { mkdtempSync, readFileSync, rmSync, statSync, existsSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { LoginStore, kvxConfigDir } from '../../src/auth/google/login-store.js';
import type { Keyring } from '../../src/auth/google/login-store.js';

/** An in-memory keychain standing in for the OS one; `failSet` imitates a keychain that refuses writes (headless Linux). */
function memoryKeyring(options: { failSet?: boolean } = {}): { keyring: () => Keyring; entries: Map<string, string> } {
  const entries = new Map<string, string>();
  class AsyncEntry {
    constructor(
      private readonly service: string,
      private readonly account: string,
    ) {}
    private get key(): string {
      return `${this.service}/${this.account}`;
    }
    async getPassword(): Promise<string | null> {
      return entries.get(this.key) ?? null;
    }
    async setPassword(password: string): Promise<void> {
      if (options.failSet) throw new Error("Couldn't access platform storage: AccessDenied");
      entries.set(this.key, password);
    }
    async deleteCredential(): Promise<boolean> {
      return entries.delete(this.key);
    }
  }
  return { keyring: () => ({ AsyncEntry }), entries };
}

const CLIENT_A = '111-desktop.apps.googleusercontent.com';
const CLIENT_B = '222-desktop.apps.googleusercontent.com';
const login = (refreshToken: string, clientId = CLIENT_A) => ({ refreshToken, clientId, email: 'alice@example.com', savedAt: Date.parse('2026-12-01T12:00:00Z') });

describe('google-user login store', () => {
  let dir: string;
  let env: NodeJS.ProcessEnv;
  beforeEach(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'kvx-store-'));
    env = { HOME: path.join(dir, 'home'), XDG_CONFIG_HOME: path.join(dir, 'xdg') };
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('keeps one 0600 file per client in a 0700 directory under XDG_CONFIG_HOME, written atomically', async () => {
    const a = new LoginStore({ clientId: CLIENT_A, env, kind: 'file' });
    const b = new LoginStore({ clientId: CLIENT_B, env, kind: 'file' });
    await a.write(login('1//token-a'));
    await b.write(login('1//token-b', CLIENT_B));
    expect(a.file).to.equal(path.join(dir, 'xdg', 'kvx', 'google-user', `${CLIENT_A}.json`));
    expect(a.file).to.not.equal(b.file);
    expect(statSync(a.file).mode & 0o777).to.equal(0o600);
    expect(statSync(path.dirname(a.file)).mode & 0o777).to.equal(0o700);
    expect((await a.read())?.refreshToken).to.equal('1//token-a');
    expect((await b.read())?.refreshToken).to.equal('1//token-b');
    await a.write(login('1//token-a2'));
    expect((await a.read())).to.deep.include({ refreshToken: '1//token-a2', email: 'alice@example.com' });
    // No temporary file is left behind by the write-and-rename.
    expect(readdirSync(path.dirname(a.file)).sort()).to.deep.equal([`${CLIENT_A}.json`, `${CLIENT_B}.json`]);
    expect(await a.delete()).to.equal(true);
    expect(await a.read()).to.equal(undefined);
    expect((await b.read())?.refreshToken).to.equal('1//token-b');
  });

  it('uses the OS keychain when there is one, with no file', async () => {
    const { keyring, entries } = memoryKeyring();
    const store = new LoginStore({ clientId: CLIENT_A, env, keyring });
    const where = await store.write(login('1//in-keychain'));
    expect(where).to.include('OS keychain');
    expect(existsSync(store.file)).to.equal(false);
    expect([...entries.keys()]).to.deep.equal([`kvx-proxy google-user/${CLIENT_A}`]);
    expect((await new LoginStore({ clientId: CLIENT_A, env, keyring }).read())?.refreshToken).to.equal('1//in-keychain');
    expect(await store.delete()).to.equal(true);
    expect(entries.size).to.equal(0);
  });

  it('falls back to the file when the keychain module cannot load or refuses writes, and says why', async () => {
    const broken = new LoginStore({
      clientId: CLIENT_A,
      env,
      keyring: () => {
        throw new Error('Cannot find module @napi-rs/keyring-linux-x64-gnu');
      },
    });
    const where = await broken.write(login('1//in-file'));
    expect(where).to.include(broken.file).and.include('no usable OS keychain: Cannot find module');
    expect(statSync(broken.file).mode & 0o777).to.equal(0o600);
    const refusing = new LoginStore({ clientId: CLIENT_A, env, keyring: memoryKeyring({ failSet: true }).keyring });
    expect((await refusing.read())?.refreshToken).to.equal('1//in-file');
    await refusing.write(login('1//in-file-2'));
    expect(readFileSync(refusing.file, 'utf8')).to.include('1//in-file-2');
    expect(refusing.where()).to.include('AccessDenied');
  });

  it('names the platform config directories', () => {
    expect(kvxConfigDir({ HOME: '/home/a' }, 'linux')).to.equal('/home/a/.config/kvx');
    expect(kvxConfigDir({ HOME: '/home/a', XDG_CONFIG_HOME: '/x' }, 'linux')).to.equal('/x/kvx');
    expect(kvxConfigDir({ HOME: '/Users/a' }, 'darwin')).to.equal('/Users/a/Library/Application Support/kvx');
    expect(kvxConfigDir({ HOME: 'C:\\Users\\a', APPDATA: 'C:\\Users\\a\\AppData\\Roaming' }, 'win32')).to.equal(path.join('C:\\Users\\a\\AppData\\Roaming', 'kvx'));
  });

  it('refuses a stored entry without a refresh token with a relogin hint', async () => {
    const { keyring, entries } = memoryKeyring();
    entries.set(`kvx-proxy google-user/${CLIENT_A}`, '{"client_id":"x"}');
    const err = (await new LoginStore({ clientId: CLIENT_A, env, keyring }).read().catch((e: unknown) => e)) as { message: string; hint: string };
    expect(err.message).to.include('holds no usable kvx-proxy login');
    expect(err.hint).to.include('kvx-proxy login');
  });
});
