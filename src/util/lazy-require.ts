import { createRequire } from 'node:module';

/**
 * Loads a module when it is first needed rather than at start: each one kept off the start-up path saves
 * milliseconds that every exec-wrapped pipeline step pays. The one contract with the standalone build: it
 * (scripts/build-sea.mjs) rewrites every `lazyRequire('x')` call into `require('x')`, so esbuild bundles `x` and
 * still runs it only on first use. Call it with a string literal, nothing else.
 */
export const lazyRequire: (id: string) => unknown = createRequire(import.meta.url);
