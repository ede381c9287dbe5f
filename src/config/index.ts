export { loadConfig, envNameFor, isKedroVertexConfig } from './load.js';
export type { ConfigOverride, LoadOptions, LoadedConfig } from './load.js';
export { SCHEMA } from './schema.js';
export type { KvxConfig, ProviderConfig, FieldSpec } from './schema.js';
export { redactConfig, redactParams } from './redact.js';
export { CLIENT_CREDENTIAL_HEADERS, isLoopbackHost } from './validate.js';
