// The package's public API: what a custom provider module and programmatic users import from 'kvx'.
export { RequestHeaderProvider } from './auth/provider.js';
export type { HeaderMap, HeaderProvider, ProviderContext, ProviderStatus } from './auth/provider.js';
export { cached } from './auth/cached.js';
export type { CachedOptions, CachedFunction } from './auth/cached.js';
export { KvxError, ConfigError, CredentialsError } from './errors.js';
export type { KvxErrorCode, ConfigProblem } from './errors.js';
