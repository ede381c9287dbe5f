import { REDACTED } from '../log/logger.js';
import { redactUserinfo } from './egress.js';
import { SCHEMA } from './schema.js';
import type { Fields, KvxConfig } from './schema.js';

const DEFAULT_SECRET_KEYS = /token|secret|password|passwd|key|credential/i;
/** Params that name where a secret lives rather than holding it; showing them helps debugging. */
const SECRET_LOCATION_KEYS = /(_env|_file|Env|File)$|^(env|file)$/;

/** A copy of the config safe to print: secret values and secret-looking params replaced. */
export function redactConfig(config: KvxConfig): unknown {
  return redactTree(config as unknown as Record<string, unknown>, SCHEMA);
}

function redactTree(tree: Record<string, unknown>, spec: Fields): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(tree)) {
    const field = spec[key];
    if (field?.kind === 'object' && isObject(value)) out[key] = redactTree(value, field.fields);
    else if (field?.kind === 'map' && isObject(value)) out[key] = redactParams(value, field.secretKeys ?? DEFAULT_SECRET_KEYS);
    else if (field?.kind === 'list' && Array.isArray(value)) out[key] = value.map((item) => (isObject(item) ? redactTree(item, field.item) : item));
    // A URL's user info is a credential (egress.proxy: http://user:password@proxy:3128).
    else out[key] = typeof value === 'string' ? redactUserinfo(value) : value;
  }
  return out;
}

export function redactParams(params: Record<string, unknown>, secretKeys: RegExp = DEFAULT_SECRET_KEYS): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(params)) {
    if (isObject(value)) out[key] = redactParams(value, secretKeys);
    else out[key] = secretKeys.test(key) && !SECRET_LOCATION_KEYS.test(key) && key !== 'client_id' ? REDACTED : value;
  }
  return out;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
