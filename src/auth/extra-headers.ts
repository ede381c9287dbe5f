/**
 * `auth.extraHeaders`: fixed headers added to every request next to whatever the providers set, e.g. an MLflow
 * workspace (X-MLFLOW-WORKSPACE) or a vendor's API key beside google-iam's Authorization. Each value is a literal,
 * an environment variable (read at start) or a file (re-read when it changes, like a rotated Kubernetes secret).
 * It is a provider like the others (the injector merges it, `/readyz` and `doctor` show it), planned from its
 * one config key rather than listed in auth.providers.
 */
import { HEADER_NAME, PROXY_OWNED_REQUEST_HEADERS } from '../config/validate.js';
import type { ConfigProblem } from '../errors.js';
import { CredentialsError } from '../errors.js';
import type { HeaderMap, HeaderProvider, ProviderContext, ProviderStatus } from './provider.js';
import { registerProviderType } from './registry.js';
import type { ProviderPlan } from './registry.js';
import { SecretSource } from './secret-source.js';

export const EXTRA_HEADERS_TYPE = 'extra-headers';
export const EXTRA_HEADERS_PATH = 'auth.extraHeaders';

/** Field-value characters (RFC 9110 §5.5): no CR, LF, NUL or other controls but tab. */
const HEADER_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;
const FORMS = ['value', 'env', 'file'] as const;

/** The problems of auth.extraHeaders, each with its key path; `taken` are headers other providers write. */
export function extraHeaderProblems(headers: Record<string, unknown>, env: NodeJS.ProcessEnv, taken: readonly { header: string; path: string }[]): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  const seen = new Map<string, string>();
  for (const [name, spec] of Object.entries(headers)) {
    const at = `${EXTRA_HEADERS_PATH}.${name}`;
    const lower = name.toLowerCase();
    if (!HEADER_NAME.test(name)) {
      problems.push({ path: at, message: `"${name}" is not a valid header name (letters, digits and !#$%&'*+-.^_\`|~ only)` });
      continue;
    }
    if (PROXY_OWNED_REQUEST_HEADERS.has(lower)) {
      problems.push({ path: at, message: `${name} is set by the proxy itself (hop-by-hop, framing, Host or request id) and cannot be an extra header` });
      continue;
    }
    const twin = seen.get(lower);
    if (twin !== undefined) problems.push({ path: at, message: `${name} is given twice (also as ${twin}); header names are case-insensitive` });
    seen.set(lower, name);
    const owner = taken.find((t) => t.header.toLowerCase() === lower);
    if (owner !== undefined) problems.push({ path: at, message: `${name} is already set by the provider at ${owner.path}; drop one of them` });
    problems.push(...valueProblems(spec, at, env));
  }
  return problems;
}

function valueProblems(spec: unknown, at: string, env: NodeJS.ProcessEnv): ConfigProblem[] {
  const usage = 'give a string, or a mapping with exactly one of value (a literal), env (an environment variable name) or file (a path)';
  if (typeof spec === 'string') return literalProblems(spec, at);
  if (typeof spec !== 'object' || spec === null || Array.isArray(spec)) return [{ path: at, message: usage }];
  const given = Object.keys(spec);
  const unknown = given.filter((k) => !(FORMS as readonly string[]).includes(k));
  if (unknown.length > 0) return [{ path: `${at}.${unknown[0]}`, message: `unknown key; ${usage}` }];
  if (given.length !== 1) return [{ path: at, message: given.length === 0 ? usage : `give exactly one of value, env or file; got ${given.join(' and ')}` }];
  const form = given[0]!;
  const raw = (spec as Record<string, unknown>)[form];
  if (typeof raw !== 'string' || raw === '') return [{ path: `${at}.${form}`, message: 'must be a non-empty string' }];
  if (form === 'value') return literalProblems(raw, `${at}.value`);
  if (form === 'env') {
    const value = env[raw];
    if (value === undefined || value === '') return [{ path: `${at}.env`, message: `environment variable ${raw} is not set or empty; export it or use file` }];
    if (!HEADER_VALUE.test(value)) return [{ path: `${at}.env`, message: `environment variable ${raw} holds a line break or control character, which no header value may contain` }];
  }
  return [];
}

function literalProblems(value: string, at: string): ConfigProblem[] {
  if (value === '') return [{ path: at, message: 'is empty; give the header value, or drop the header' }];
  if (!HEADER_VALUE.test(value)) return [{ path: at, message: 'holds a line break or control character, which no header value may contain' }];
  return [];
}

interface Entry {
  name: string;
  /** A literal, or where the value is read. */
  value: string | SecretSource;
}

export class ExtraHeadersProvider implements HeaderProvider {
  readonly name = EXTRA_HEADERS_TYPE;
  private readonly entries: Entry[] = [];
  /** Rebuilt only when a file changes, so a request costs a field read. */
  private headersValue: HeaderMap | undefined;

  constructor(plan: ProviderPlan, context: ProviderContext) {
    const options = { baseDir: context.baseDir, env: context.env, logger: context.logger, onChange: () => (this.headersValue = undefined) };
    for (const [name, spec] of Object.entries(plan.params)) {
      if (typeof spec === 'string') {
        this.entries.push({ name, value: spec });
        continue;
      }
      const form = spec as { value?: string; env?: string; file?: string };
      if (form.value !== undefined) this.entries.push({ name, value: form.value });
      else {
        const params = form.env !== undefined ? { [`${name}_env`]: form.env } : { [`${name}_file`]: form.file };
        this.entries.push({ name, value: SecretSource.open(params, name, options)! });
      }
    }
  }

  inContext(): boolean {
    return true;
  }

  requestHeaders(): HeaderMap {
    return (this.headersValue ??= this.build());
  }

  async start(): Promise<void> {
    this.build();
  }

  status(): ProviderStatus {
    const errors: string[] = [];
    let ready = true;
    for (const { name, value } of this.entries) {
      if (typeof value === 'string') continue;
      if (!value.available) ready = false;
      if (value.error) errors.push(`${name}: ${value.error}`);
    }
    const status: ProviderStatus = { ready };
    if (errors.length > 0) status.lastError = errors.join('; ');
    return status;
  }

  close(): void {
    for (const { value } of this.entries) if (typeof value !== 'string') value.close();
  }

  private build(): HeaderMap {
    const out: HeaderMap = {};
    for (const { name, value } of this.entries) {
      const text = typeof value === 'string' ? value : value.get(`${EXTRA_HEADERS_PATH}.${name}`);
      if (!HEADER_VALUE.test(text)) {
        throw new CredentialsError(EXTRA_HEADERS_TYPE, `the value read for ${EXTRA_HEADERS_PATH}.${name} holds a line break or control character, which no header value may contain`, {
          hint: 'write the value on one line',
        });
      }
      out[name] = text;
    }
    return Object.freeze(out);
  }
}

registerProviderType(EXTRA_HEADERS_TYPE, {
  validate: (plan, env) =>
    plan.path === EXTRA_HEADERS_PATH
      ? extraHeaderProblems(plan.params, env, plan.alongside ?? [])
      : [{ path: plan.path === 'auth' ? 'auth.provider' : `${plan.path}.type`, message: `${EXTRA_HEADERS_TYPE} is set with ${EXTRA_HEADERS_PATH}, not as a provider type` }],
  create: (plan, context) => new ExtraHeadersProvider(plan, context),
});
