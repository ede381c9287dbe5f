/**
 * Typed errors with stable codes, so callers (CLI, proxy, tests) branch on `code`, never on message text.
 * Messages never carry secrets: callers pass descriptions, not values.
 */
export type KvxErrorCode =
  | 'KVX_CONFIG_INVALID'
  | 'KVX_CREDENTIALS_UNAVAILABLE'
  | 'KVX_PROVIDER_LOAD_FAILED'
  | 'KVX_UPSTREAM_UNREACHABLE'
  | 'KVX_UPSTREAM_TIMEOUT'
  | 'KVX_UPSTREAM_BAD_RESPONSE'
  | 'KVX_MLFLOW_API'
  | 'KVX_VERTEX_API'
  | 'KVX_LAUNCH_INPUT'
  | 'KVX_USAGE'
  /** SIGINT/SIGTERM ended the work; the CLI exits 130. */
  | 'KVX_INTERRUPTED';

export class KvxError extends Error {
  readonly code: KvxErrorCode;
  /** A hint telling the user what to check or change; printed after the message. */
  readonly hint: string | undefined;

  constructor(code: KvxErrorCode, message: string, options: { hint?: string; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.hint = options.hint;
  }
}

export interface ConfigProblem {
  /** Dotted key path (`auth.params.client_id`) or the flag/env name the problem came from. */
  path: string;
  message: string;
}

export class ConfigError extends KvxError {
  readonly problems: readonly ConfigProblem[];

  constructor(problems: readonly ConfigProblem[]) {
    super('KVX_CONFIG_INVALID', formatProblems(problems));
    this.problems = problems;
  }
}

function formatProblems(problems: readonly ConfigProblem[]): string {
  const lines = problems.map((p) => `  ${p.path}: ${p.message}`);
  return `invalid configuration (${problems.length} problem${problems.length === 1 ? '' : 's'}):\n${lines.join('\n')}`;
}

/** Credentials could not be produced; the proxy answers 503 with Retry-After while this holds. */
export class CredentialsError extends KvxError {
  readonly provider: string;
  readonly retryAfterSeconds: number;

  constructor(provider: string, message: string, options: { hint?: string; cause?: unknown; retryAfterSeconds?: number } = {}) {
    super('KVX_CREDENTIALS_UNAVAILABLE', `${provider}: ${message}`, options);
    this.provider = provider;
    this.retryAfterSeconds = options.retryAfterSeconds ?? 5;
  }
}

export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
