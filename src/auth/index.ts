// Importing a provider module registers its type; this file is the one list of built-in providers.
import './static.js';
import './google-iam.js';
import './google-oauth.js';
import './custom.js';

export { HeaderInjector } from './injector.js';
export type { ActiveProvider } from './injector.js';
export { planProviders, registerProviderType, providerType, registeredProviderTypes } from './registry.js';
export type { ProviderPlan, ProviderType } from './registry.js';
export { RequestHeaderProvider, authorizationValue } from './provider.js';
export type { HeaderMap, HeaderProvider, ProviderContext, ProviderStatus } from './provider.js';
