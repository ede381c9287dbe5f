import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import type { ConfigProblem } from '../errors.js';
import { CredentialsError, errorMessage } from '../errors.js';
import type { Logger } from '../log/logger.js';

/**
 * A secret given as exactly one of `<name>` (value), `<name>_env` (environment variable) or `<name>_file`.
 * A file is watched by polling its stat, so a rotated Kubernetes secret (an atomic symlink swap) or a
 * rewritten file is picked up without a restart; a file that turns unreadable keeps the last good value.
 */
export class SecretSource {
  private value: string | undefined;
  private fileStamp = '';
  private timer: NodeJS.Timeout | undefined;
  private lastError: string | undefined;

  private constructor(
    private readonly label: string,
    private readonly file: string | undefined,
    initial: string | undefined,
    private readonly logger: Logger,
    private readonly onChange: (value: string) => void,
  ) {
    this.value = initial;
  }

  static validate(params: Record<string, unknown>, name: string, planPath: string, env: NodeJS.ProcessEnv, required = true): ConfigProblem[] {
    const given = [name, `${name}_env`, `${name}_file`].filter((k) => params[k] !== undefined && params[k] !== '');
    const at = `${planPath}.params.${name}`;
    if (given.length === 0) {
      return required ? [{ path: at, message: `required: give exactly one of ${name}, ${name}_env (environment variable name) or ${name}_file (path)` }] : [];
    }
    if (given.length > 1) return [{ path: at, message: `give exactly one of ${name}, ${name}_env or ${name}_file; got ${given.join(' and ')}` }];
    const key = given[0]!;
    const raw = params[key];
    if (typeof raw !== 'string') return [{ path: `${planPath}.params.${key}`, message: 'must be a string' }];
    if (key.endsWith('_env') && (env[raw] === undefined || env[raw] === '')) {
      return [{ path: `${planPath}.params.${key}`, message: `environment variable ${raw} is not set or empty; export it or use ${name}_file` }];
    }
    return [];
  }

  /** Builds from validated params; `baseDir` resolves a relative `_file`. */
  static open(
    params: Record<string, unknown>,
    name: string,
    options: { baseDir: string; env: NodeJS.ProcessEnv; logger: Logger; onChange?: (value: string) => void; pollMs?: number },
  ): SecretSource | undefined {
    const onChange = options.onChange ?? (() => {});
    if (typeof params[name] === 'string' && params[name] !== '') {
      return new SecretSource(name, undefined, params[name] as string, options.logger, onChange);
    }
    const envName = params[`${name}_env`];
    if (typeof envName === 'string' && envName !== '') {
      return new SecretSource(`${name}_env ${envName}`, undefined, options.env[envName], options.logger, onChange);
    }
    const file = params[`${name}_file`];
    if (typeof file !== 'string' || file === '') return undefined;
    const source = new SecretSource(`${name}_file ${file}`, path.resolve(options.baseDir, file), undefined, options.logger, onChange);
    source.reload();
    source.timer = setInterval(() => source.reload(), options.pollMs ?? 1000);
    source.timer.unref();
    return source;
  }

  /** The current value; throws CredentialsError when the secret has never been readable. */
  get(provider: string): string {
    if (this.value === undefined || this.value === '') {
      throw new CredentialsError(provider, `${this.label} gave no value${this.lastError ? ` (${this.lastError})` : ''}`, {
        hint: 'check that the secret exists and is readable by the proxy',
      });
    }
    return this.value;
  }

  get available(): boolean {
    return this.value !== undefined && this.value !== '';
  }

  get error(): string | undefined {
    return this.lastError;
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
  }

  private reload(): void {
    const file = this.file!;
    try {
      const st = statSync(file);
      const stamp = `${st.ino}:${st.size}:${st.mtimeMs}`;
      if (stamp === this.fileStamp) return;
      const text = readFileSync(file, 'utf8').trim();
      const changed = this.value !== undefined && text !== this.value;
      this.fileStamp = stamp;
      this.value = text;
      if (this.lastError) this.logger.info('secret file readable again', { source: this.label });
      this.lastError = undefined;
      if (changed) {
        this.logger.info('secret file changed; using the new value', { source: this.label });
        this.onChange(text);
      }
    } catch (err) {
      const message = (err as { code?: string }).code ?? errorMessage(err);
      if (message !== this.lastError) {
        this.logger.warn(this.value ? 'secret file unreadable; keeping the last value read' : 'secret file unreadable', { source: this.label, error: message });
      }
      this.lastError = message;
    }
  }
}
