/**
 * Where `kvx-proxy login` keeps a user's refresh token: the OS keychain (macOS Keychain, Windows Credential
 * Manager, the Secret Service on Linux) through @napi-rs/keyring, else a 0600 file in a 0700 directory under the
 * user's config directory, one entry per OAuth client. The keychain binding is native and optional: missing,
 * broken, or without a keychain to talk to (headless Linux, CI), the file is used instead.
 */
import { chmodSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import path from 'node:path';
import { errorMessage } from '../../errors.js';
import { lazyRequire, nodeCrypto } from '../../util/lazy-require.js';
import { TokenFetchError } from '../token.js';

/** What a login leaves behind. Only `refreshToken` is secret; the rest is shown by `doctor`. */
export interface StoredLogin {
  refreshToken: string;
  /** The desktop OAuth client the refresh token belongs to. */
  clientId: string;
  email?: string;
  /** Epoch milliseconds of the login. */
  savedAt: number;
}

/** The part of @napi-rs/keyring used here, so tests can hand in one. */
export interface Keyring {
  AsyncEntry: new (service: string, account: string) => {
    getPassword(): Promise<string | null | undefined>;
    setPassword(password: string): Promise<void>;
    deleteCredential(): Promise<boolean>;
  };
}

export type StoreKind = 'auto' | 'file';
export const STORE_KINDS: readonly StoreKind[] = ['auto', 'file'];

export interface LoginStoreOptions {
  clientId: string;
  env: NodeJS.ProcessEnv;
  /** `file` never tries the keychain. */
  kind?: StoreKind;
  /** The keychain binding; @napi-rs/keyring loaded on first use by default. */
  keyring?: () => Keyring;
  platform?: NodeJS.Platform;
}

const SERVICE = 'kvx-proxy google-user';

/** The user's config directory for kvx, as each platform's conventions have it. */
export function kvxConfigDir(env: NodeJS.ProcessEnv, platform: NodeJS.Platform = process.platform): string {
  const home = env['HOME'] || env['USERPROFILE'] || homedir();
  if (platform === 'win32') return path.join(env['APPDATA'] || path.join(home, 'AppData', 'Roaming'), 'kvx');
  if (platform === 'darwin') return path.join(home, 'Library', 'Application Support', 'kvx');
  return path.join(env['XDG_CONFIG_HOME'] || path.join(home, '.config'), 'kvx');
}

export class LoginStore {
  readonly clientId: string;
  readonly file: string;
  private readonly kind: StoreKind;
  private readonly loadKeyring: () => Keyring;
  /** Set once the keychain failed; the reason, for `doctor`. */
  private keychainProblem: string | undefined;
  /** Where the last read or write found or put the login. */
  private lastPlace: 'keychain' | 'file' | undefined;

  constructor(options: LoginStoreOptions) {
    this.clientId = options.clientId;
    this.kind = options.kind ?? 'auto';
    this.loadKeyring = options.keyring ?? (() => lazyRequire('@napi-rs/keyring') as Keyring);
    // One file per client; the id is made safe as a file name rather than trusted as one.
    const name = options.clientId.replace(/[^A-Za-z0-9._-]/g, '_');
    this.file = path.join(kvxConfigDir(options.env, options.platform), 'google-user', `${name}.json`);
  }

  /** Where the login is (or would be) kept, in plain words. */
  where(): string {
    if (this.lastPlace === 'keychain') return `the OS keychain (service "${SERVICE}", account ${this.clientId})`;
    const why = this.kind === 'file' ? '' : this.keychainProblem ? ` (no usable OS keychain: ${this.keychainProblem})` : '';
    return `${this.file}${why}`;
  }

  /** The stored login, read afresh: another `kvx-proxy login` may have replaced it. */
  async read(): Promise<StoredLogin | undefined> {
    const fromKeychain = await this.keychain(async (entry) => entry.getPassword());
    if (typeof fromKeychain === 'string' && fromKeychain !== '') {
      this.lastPlace = 'keychain';
      return this.parse(fromKeychain, 'the OS keychain entry');
    }
    let text: string;
    try {
      text = readFileSync(this.file, 'utf8');
    } catch (err) {
      if ((err as { code?: string }).code === 'ENOENT') return undefined;
      throw new TokenFetchError(`the stored login ${this.file} cannot be read (${(err as { code?: string }).code ?? errorMessage(err)})`, {
        hint: 'fix its permissions, or run `kvx-proxy login` again',
      });
    }
    this.lastPlace = 'file';
    return this.parse(text, this.file);
  }

  /** Stores `login` in the keychain, else the file; returns where. The other place is cleared, so one login is kept. */
  async write(login: StoredLogin): Promise<string> {
    const text = JSON.stringify({ refresh_token: login.refreshToken, client_id: login.clientId, email: login.email, saved_at: new Date(login.savedAt).toISOString() });
    const inKeychain = await this.keychain(async (entry) => {
      await entry.setPassword(text);
      return true;
    });
    if (inKeychain === true) {
      this.lastPlace = 'keychain';
      rmSync(this.file, { force: true });
      return this.where();
    }
    this.writeFile(text);
    this.lastPlace = 'file';
    return this.where();
  }

  /** Deletes the login wherever it is; true when there was one. */
  async delete(): Promise<boolean> {
    const fromKeychain = await this.keychain(async (entry) => entry.deleteCredential());
    let fromFile = false;
    try {
      statSync(this.file);
      fromFile = true;
    } catch {
      // none
    }
    rmSync(this.file, { force: true });
    this.lastPlace = undefined;
    return fromKeychain === true || fromFile;
  }

  /** `use` on this client's keychain entry; undefined when there is no usable keychain (remembered, with why). */
  private async keychain<T>(use: (entry: InstanceType<Keyring['AsyncEntry']>) => Promise<T>): Promise<T | undefined> {
    if (this.kind === 'file' || this.keychainProblem !== undefined) return undefined;
    try {
      return await use(new (this.loadKeyring().AsyncEntry)(SERVICE, this.clientId));
    } catch (err) {
      this.keychainProblem = oneLineOf(err);
      return undefined;
    }
  }

  private writeFile(text: string): void {
    const dir = path.dirname(this.file);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    // mkdir's mode applies only to directories it creates, and the umask narrows it anyway.
    chmodSync(dir, 0o700);
    const temp = `${this.file}.${nodeCrypto().randomBytes(6).toString('hex')}.tmp`;
    try {
      // Created 0600 and renamed into place: a reader sees the old login or the new one, never half of one.
      writeFileSync(temp, text, { mode: 0o600, flag: 'wx' });
      renameSync(temp, this.file);
    } catch (err) {
      rmSync(temp, { force: true });
      throw new TokenFetchError(`cannot store the login in ${this.file} (${(err as { code?: string }).code ?? errorMessage(err)})`, {
        hint: 'check that the config directory is writable (XDG_CONFIG_HOME, ~/.config)',
      });
    }
  }

  private parse(text: string, where: string): StoredLogin {
    let json: Record<string, unknown> | undefined;
    try {
      const parsed = JSON.parse(text) as unknown;
      if (typeof parsed === 'object' && parsed !== null) json = parsed as Record<string, unknown>;
    } catch {
      // below
    }
    const refreshToken = json?.['refresh_token'];
    if (json === undefined || typeof refreshToken !== 'string' || refreshToken === '') {
      throw new TokenFetchError(`${where} holds no usable kvx-proxy login`, { hint: 'run `kvx-proxy login` again' });
    }
    const login: StoredLogin = { refreshToken, clientId: typeof json['client_id'] === 'string' ? json['client_id'] : this.clientId, savedAt: Date.parse(String(json['saved_at'])) || 0 };
    if (typeof json['email'] === 'string') login.email = json['email'];
    return login;
  }
}

function oneLineOf(err: unknown): string {
  return errorMessage(err).replace(/\s+/g, ' ').slice(0, 160);
}
