import { existsSync, statSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { CredentialsError, KvxError, errorMessage } from '../errors.js';
import type { ConfigProblem } from '../errors.js';
import type { HeaderMap, HeaderProvider, ProviderContext, ProviderStatus } from './provider.js';
import { registerProviderType } from './registry.js';
import type { ProviderPlan } from './registry.js';

export { cached } from './cached.js';
export type { CachedOptions, CachedFunction } from './cached.js';

/** What a custom module's export must be: a class built as `new Cls(params, context)`. */
export type ProviderClass = new (params: Record<string, unknown>, context: ProviderContext) => Partial<HeaderProvider> & {
  requestHeaders(): unknown;
};

/**
 * `custom`: a user's JavaScript module, ESM or CommonJS, exporting a provider class, the counterpart of a
 * kedro-vertexai RequestHeaderProviderWithKedroContext subclass. The class gets the configured params
 * (`this.params` when it extends RequestHeaderProvider), `inContext()` decides whether it applies, and
 * `requestHeaders()` (sync or async) returns the headers. This wrapper checks what the user code returns,
 * so a mistake there is a clear error naming the class rather than a broken request.
 */
export class CustomProvider implements HeaderProvider {
  readonly name: string;
  readonly invalidate?: (rejected: HeaderMap) => Promise<void>;
  private lastError: string | undefined;

  constructor(
    private readonly instance: InstanceType<ProviderClass>,
    className: string,
  ) {
    this.name = typeof instance.name === 'string' && instance.name !== '' ? instance.name : className;
    if (typeof instance.invalidate === 'function') {
      this.invalidate = async (rejected) => {
        await instance.invalidate!(rejected);
      };
    }
  }

  inContext(): boolean | Promise<boolean> {
    if (typeof this.instance.inContext !== 'function') return true;
    try {
      const answer = this.instance.inContext();
      return isThenable(answer) ? Promise.resolve(answer).then(Boolean, (err: unknown) => Promise.reject(this.contextError(err))) : Boolean(answer);
    } catch (err) {
      throw this.contextError(err);
    }
  }

  requestHeaders(): HeaderMap | Promise<HeaderMap> {
    let answer: unknown;
    try {
      answer = this.instance.requestHeaders();
    } catch (err) {
      throw this.failure(err);
    }
    if (isThenable(answer)) {
      return Promise.resolve(answer).then(
        (value) => this.checked(value),
        (err: unknown) => Promise.reject(this.failure(err)),
      );
    }
    return this.checked(answer);
  }

  /** Fail at start rather than on the first request: the instance's own start(), else one requestHeaders(). */
  async start(): Promise<void> {
    if (typeof this.instance.start === 'function') {
      try {
        await this.instance.start();
      } catch (err) {
        throw this.failure(err);
      }
      return;
    }
    await this.requestHeaders();
  }

  status(): ProviderStatus {
    if (typeof this.instance.status === 'function') return this.instance.status();
    const status: ProviderStatus = { ready: this.lastError === undefined };
    if (this.lastError !== undefined) status.lastError = this.lastError;
    return status;
  }

  async close(): Promise<void> {
    await this.instance.close?.();
  }

  private checked(value: unknown): HeaderMap {
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      throw this.failure(new Error(`requestHeaders() returned ${describe(value)}; it must return an object of header names to string values`));
    }
    for (const [name, v] of Object.entries(value)) {
      if (typeof v !== 'string') {
        throw this.failure(new Error(`requestHeaders() returned ${describe(v)} for header "${name}"; header values must be strings`));
      }
      if (!/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(name)) throw this.failure(new Error(`requestHeaders() returned an invalid header name "${name}"`));
      if (/[\r\n]/.test(v)) throw this.failure(new Error(`requestHeaders() returned a value with a line break for header "${name}"`));
    }
    this.lastError = undefined;
    return value as HeaderMap;
  }

  private failure(err: unknown): CredentialsError {
    if (err instanceof CredentialsError) {
      this.lastError = err.message;
      return err;
    }
    this.lastError = errorMessage(err);
    return new CredentialsError(this.name, this.lastError, { cause: err, hint: 'the error came from the custom provider module' });
  }

  private contextError(err: unknown): KvxError {
    return new KvxError('KVX_PROVIDER_LOAD_FAILED', `custom provider ${this.name}: inContext() failed: ${errorMessage(err)}`, { cause: err });
  }
}

/** Loads `modulePath` and returns its provider class, or throws KVX_PROVIDER_LOAD_FAILED naming path and export. */
export async function loadProviderClass(modulePath: string, exportName: string, where = 'auth.module'): Promise<{ cls: ProviderClass; className: string }> {
  const fail = (message: string, cause?: unknown) =>
    new KvxError('KVX_PROVIDER_LOAD_FAILED', `${where}: ${message}`, cause === undefined ? {} : { cause, hint: 'fix the module or the path in the config' });
  let ns: Record<string, unknown>;
  try {
    ns = (await import(pathToFileURL(modulePath).href)) as Record<string, unknown>;
  } catch (err) {
    throw fail(`cannot load custom provider module ${modulePath}: ${errorMessage(err).split('\n')[0]}`, err);
  }
  let candidate = ns[exportName];
  const cjs = ns['default'];
  if (candidate === undefined && exportName !== 'default' && typeof cjs === 'object' && cjs !== null) {
    candidate = (cjs as Record<string, unknown>)[exportName];
  }
  // A transpiled CommonJS module (`exports.default = Cls`) arrives as { default: { default: Cls } }.
  if (exportName === 'default' && typeof candidate === 'object' && candidate !== null && typeof (candidate as { default?: unknown }).default === 'function') {
    candidate = (candidate as { default: unknown }).default;
  }
  if (candidate === undefined) {
    const names = Object.keys(ns).filter((k) => k !== 'module.exports');
    throw fail(`${modulePath} has no export "${exportName}"${names.length ? ` (it exports: ${names.join(', ')})` : ''}; set auth.export to the export holding your provider class`);
  }
  if (typeof candidate !== 'function' || candidate.prototype === undefined) {
    throw fail(`export "${exportName}" of ${modulePath} is ${describe(candidate)}, not a class; export a class extending RequestHeaderProvider from 'kvx'`);
  }
  const className = (candidate as { name?: string }).name || exportName;
  return { cls: candidate as ProviderClass, className };
}

export async function createCustomProvider(plan: ProviderPlan, context: ProviderContext): Promise<CustomProvider> {
  const where = plan.path === 'auth' ? 'auth.module' : `${plan.path}.module`;
  const modulePath = path.resolve(context.baseDir, plan.module ?? '');
  const { cls, className } = await loadProviderClass(modulePath, plan.export ?? 'default', where);
  let instance: InstanceType<ProviderClass>;
  try {
    instance = new cls({ ...plan.params }, context);
  } catch (err) {
    throw new KvxError('KVX_PROVIDER_LOAD_FAILED', `${where}: constructing ${className} from ${modulePath} failed: ${errorMessage(err)}`, { cause: err });
  }
  // Checked on the instance: `requestHeaders = cached(...)(...)` is a class field, not a prototype method.
  if (typeof instance?.requestHeaders !== 'function') {
    throw new KvxError(
      'KVX_PROVIDER_LOAD_FAILED',
      `${where}: class ${className} (export "${plan.export ?? 'default'}" of ${modulePath}) has no requestHeaders() method; implement requestHeaders() returning the headers to add`,
    );
  }
  return new CustomProvider(instance, className);
}

export function validateCustom(plan: ProviderPlan): ConfigProblem[] {
  const where = plan.path === 'auth' ? 'auth.module' : `${plan.path}.module`;
  if (!plan.module) return [{ path: where, message: 'required for the custom provider: the path of your provider module (.js, .mjs or .cjs)' }];
  const file = path.resolve(plan.module);
  if (!existsSync(file)) return [{ path: where, message: `${file} does not exist; paths are relative to the config file` }];
  if (!statSync(file).isFile()) return [{ path: where, message: `${file} is not a file` }];
  const exportName = plan.export ?? 'default';
  if (!/^[A-Za-z_$][\w$]*$/.test(exportName)) {
    return [{ path: plan.path === 'auth' ? 'auth.export' : `${plan.path}.export`, message: `"${exportName}" is not a valid export name` }];
  }
  return [];
}

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return typeof (value as { then?: unknown } | null)?.then === 'function';
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'undefined';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'function') return 'a function';
  return typeof value === 'object' ? 'an object' : `a ${typeof value}`;
}

registerProviderType('custom', {
  validate: (plan) => validateCustom(plan),
  create: (plan, context) => createCustomProvider(plan, context),
});
