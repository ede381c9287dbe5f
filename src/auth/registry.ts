import type { ConfigProblem } from '../errors.js';
import type { KvxConfig, ProviderConfig } from '../config/schema.js';
import type { HeaderProvider, ProviderContext } from './provider.js';

/** A provider as config resolved it: its type, merged params and the header it writes. */
export interface ProviderPlan {
  type: string;
  params: Record<string, unknown>;
  header: string;
  scheme: string;
  module?: string;
  export?: string;
  /** Config path this plan came from, for error messages (`auth`, `auth.providers[1]`). */
  path: string;
  /** Why this provider was chosen, for `doctor` and `check-config`. */
  reason: string;
  /** auth.extraHeaders only: the headers the other providers write, which it must not set too. */
  alongside?: { header: string; path: string }[];
}

export interface ProviderType {
  /** Problems with params, each with its full key path; empty when the params are usable. */
  validate(plan: ProviderPlan, env: NodeJS.ProcessEnv): ConfigProblem[];
  create(plan: ProviderPlan, context: ProviderContext): HeaderProvider | Promise<HeaderProvider>;
  /** Header and scheme the type uses when config names none (e.g. basic → Authorization: Basic). */
  defaults?: { header?: string; scheme?: string };
}

const types = new Map<string, ProviderType>();

export function registerProviderType(type: string, implementation: ProviderType): void {
  types.set(type, implementation);
}

export function providerType(type: string): ProviderType | undefined {
  return types.get(type);
}

export function registeredProviderTypes(): string[] {
  return [...types.keys()];
}

/**
 * Turns `auth` config into an ordered list of providers. With no explicit list, selection follows
 * kedro-vertexai's params: client_id + service_account → google-iam; client_id alone → google-oauth;
 * an explicit `auth.provider` wins; a custom module is added after and decides with inContext().
 */
export function planProviders(config: KvxConfig, env: NodeJS.ProcessEnv = process.env): { plans: ProviderPlan[]; problems: ConfigProblem[] } {
  const { auth } = config;
  const problems: ConfigProblem[] = [];
  const plans: ProviderPlan[] = [];
  const make = (pc: ProviderConfig, path: string, reason: string): ProviderPlan => {
    const defaults = types.get(pc.type)?.defaults;
    const plan: ProviderPlan = {
      type: pc.type,
      params: pc.params,
      header: pc.header ?? defaults?.header ?? auth.header,
      scheme: pc.scheme ?? defaults?.scheme ?? auth.scheme,
      path,
      reason,
    };
    if (pc.module !== undefined) plan.module = pc.module;
    if (pc.export !== undefined) plan.export = pc.export;
    return plan;
  };

  if (auth.providers.length > 0) {
    if (auth.provider !== 'auto') problems.push({ path: 'auth.provider', message: 'set either auth.provider or auth.providers, not both' });
    auth.providers.forEach((pc, i) => {
      plans.push(make({ ...pc, params: { ...auth.params, ...pc.params } }, `auth.providers[${i}]`, 'listed in auth.providers'));
    });
  } else if (auth.provider === 'none') {
    // Forwarding without credentials: useful against an open MLflow, or to test the proxy itself.
  } else if (auth.provider !== 'auto') {
    plans.push(make({ type: auth.provider, params: auth.params, module: auth.module, export: auth.export }, 'auth', `auth.provider is ${auth.provider}`));
  } else {
    const params = auth.params;
    if (has(params, 'client_id') && has(params, 'service_account')) {
      plans.push(make({ type: 'google-iam', params }, 'auth', 'auth.params has client_id and service_account'));
    } else if (has(params, 'client_id')) {
      plans.push(make({ type: 'google-oauth', params }, 'auth', 'auth.params has client_id (and no service_account)'));
    }
    if (auth.module) {
      plans.push(make({ type: 'custom', params, module: auth.module, export: auth.export }, 'auth', 'auth.module is set'));
    }
    if (plans.length === 0 && !hasExtraHeaders(auth.extraHeaders)) {
      problems.push({
        path: 'auth',
        message:
          'no header provider selected: set auth.params.client_id (and service_account for impersonation), ' +
          'auth.provider (static, basic, google-iam, google-oauth, google-user, custom), auth.module, or auth.provider: none to forward without credentials',
      });
    }
  }

  if (hasExtraHeaders(auth.extraHeaders)) {
    // Last, alongside whichever providers were chosen (none included); it refuses to set a header they set.
    const alongside = plans.filter((p) => p.type !== 'custom').map((p) => ({ header: p.header, path: p.path }));
    const names = Object.keys(auth.extraHeaders);
    plans.push({ type: 'extra-headers', params: auth.extraHeaders, header: names.join(', '), scheme: '', path: 'auth.extraHeaders', reason: `auth.extraHeaders sets ${names.join(', ')}`, alongside });
  }

  for (const plan of plans) {
    const type = types.get(plan.type);
    if (type === undefined) {
      const known = plan.path === 'auth' ? ['auto', 'none', ...registeredProviderTypes()] : registeredProviderTypes();
      problems.push({
        path: plan.path === 'auth' ? 'auth.provider' : `${plan.path}.type`,
        message: `unknown provider type "${plan.type}"; known: ${known.join(', ')}`,
      });
      continue;
    }
    problems.push(...type.validate(plan, env));
  }
  return { plans, problems };
}

function hasExtraHeaders(headers: Record<string, unknown>): boolean {
  return Object.keys(headers).length > 0;
}

function has(params: Record<string, unknown>, key: string): boolean {
  const value = params[key];
  return value !== undefined && value !== null && value !== '';
}
