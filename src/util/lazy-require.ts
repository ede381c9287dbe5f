import { createRequire } from 'node:module';
import type * as Crypto from 'node:crypto';
import type * as Tls from 'node:tls';

/**
 * Loads a module when it is first needed rather than at start: each one kept off the start-up path saves
 * milliseconds that every exec-wrapped pipeline step pays. The one contract with the standalone build: it
 * (scripts/build-sea.mjs) rewrites every `lazyRequire('x')` call into `require('x')`, so esbuild bundles `x` and
 * still runs it only on first use. Call it with a string literal, nothing else.
 */
export const lazyRequire: (id: string) => unknown = createRequire(import.meta.url);

/*
 * OpenSSL's state and code cost resident memory once Node's crypto or tls module is loaded (an idle kvx-proxy on
 * Node 24 holds 3.6 MB more with both: 2.5 for tls, 1.1 for crypto), and a proxy with a static or basic credential
 * in front of a plain-http upstream needs neither. Every part of kvx reaches them through these, so loading one is a choice
 * made where it is used.
 */
export const nodeCrypto = (): typeof Crypto => lazyRequire('node:crypto') as typeof Crypto;
export const nodeTls = (): typeof Tls => lazyRequire('node:tls') as typeof Tls;
