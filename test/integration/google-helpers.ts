import { Egress } from '../../src/config/egress.js';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { expect } from 'chai';
import '../../src/auth/index.js';
import { HeaderInjector } from '../../src/auth/injector.js';
import { planProviders } from '../../src/auth/registry.js';
import type { ProviderPlan } from '../../src/auth/registry.js';
import type { ProviderContext } from '../../src/auth/provider.js';
import { loadConfig } from '../../src/config/load.js';
import type { KvxConfig } from '../../src/config/schema.js';
import type { Logger } from '../../src/log/logger.js';
import type { GoogleWorld } from '../fakes/google-world.js';

let counter = 0;

/** Loads a kvx config (written as a file, as users do) whose Google endpoints point at the fakes. */
export function configFor(world: GoogleWorld, auth: Record<string, unknown>): { config: KvxConfig; baseDir: string } {
  const file = path.join(world.dir, `kvx-${++counter}.yml`);
  const endpoints = { oauthToken: world.endpoints.oauthToken, iamCredentials: world.endpoints.iamCredentials };
  writeFileSync(file, YAML.stringify({ auth: { ...auth, endpoints: { ...endpoints, ...(auth['endpoints'] as object) } } }));
  const loaded = loadConfig({ files: [file], env: {}, require: { upstream: false } });
  return { config: loaded.config, baseDir: loaded.baseDir };
}

export async function injectorFor(
  world: GoogleWorld,
  env: NodeJS.ProcessEnv,
  auth: Record<string, unknown>,
  logger: Logger,
): Promise<{ injector: HeaderInjector; plans: ProviderPlan[]; config: KvxConfig }> {
  const { config, baseDir } = configFor(world, auth);
  const { plans, problems } = planProviders(config, env);
  expect(problems).to.deep.equal([]);
  const injector = await HeaderInjector.create(plans, { config, logger, baseDir, env });
  return { injector, plans, config };
}

export function contextFor(config: KvxConfig, env: NodeJS.ProcessEnv, logger: Logger): ProviderContext {
  return {
    logger,
    config,
    header: config.auth.header,
    scheme: config.auth.scheme,
    baseDir: '/',
    env,
    metrics: { tokenFetch: () => {}, tokenExpiry: () => {}, upstreamRejecting: () => {} },
    egress: Egress.none,
  };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Every captured log line, checked for anything that looks like a credential. */
export function expectNoSecrets(lines: readonly string[], secrets: readonly string[]): void {
  expect(lines.length).to.be.greaterThan(0);
  for (const line of lines) {
    expect(line).to.not.match(/ya29\./);
    expect(line).to.not.match(/eyJ[\w-]{10,}\.[\w-]{10,}/);
    expect(line).to.not.include('PRIVATE KEY');
    for (const s of secrets) expect(line).to.not.include(s);
  }
}
