// Importing a provider module registers its type; this file is the one list of built-in providers.
import './static.js';
import './google-iam.js';
import './google-oauth.js';
import './google-user.js';
import './custom.js';
import './extra-headers.js';
import { BUILT_IN_PROVIDER_TYPES } from '../config/schema.js';
import { providerType } from './registry.js';

// The schema names the built-in types for flags, docs and the chart; this keeps that list and the registry one.
const unregistered = BUILT_IN_PROVIDER_TYPES.filter((type) => providerType(type) === undefined);
if (unregistered.length > 0) throw new Error(`built-in provider types without an implementation: ${unregistered.join(', ')}`);

export { HeaderInjector } from './injector.js';
export type { ActiveProvider } from './injector.js';
export { planProviders, registerProviderType, providerType, registeredProviderTypes } from './registry.js';
export type { ProviderPlan, ProviderType } from './registry.js';
export { RequestHeaderProvider, authorizationValue } from './provider.js';
export type { HeaderMap, HeaderProvider, ProviderContext, ProviderStatus } from './provider.js';
