import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { expect } from 'chai';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/**
 * Runs in a fresh process, on the build: which modules the registry loads is the point, and this test process has
 * loaded prom-client's index through other suites. Prints what kvx registers, what was loaded when it did, and what
 * prom-client's own collectDefaultMetrics registers (loaded only after that).
 */
const SCRIPT = `
import { createRequire } from 'node:module';
import { ProxyMetrics } from './dist/proxy/metrics.js';
const require = createRequire(import.meta.url);
const registry = new ProxyMetrics({ processMetrics: true }).loadRegistry();
const loaded = Object.keys(require.cache);
const spin = Date.now() + 60;
while (Date.now() < spin);
const text = await registry.metrics();
const value = (name) => Number(new RegExp('^' + name + ' (\\\\S+)$', 'm').exec(text)?.[1]);
const prom = require('prom-client');
const theirs = new prom.Registry();
prom.collectDefaultMetrics({ register: theirs, prefix: 'kvx_' });
console.log(JSON.stringify({
  ours: registry.getMetricsAsArray().map((m) => m.name),
  theirs: theirs.getMetricsAsArray().map((m) => m.name),
  otelLoaded: loaded.some((p) => p.includes('@opentelemetry')),
  user: value('kvx_process_cpu_user_seconds_total'),
  system: value('kvx_process_cpu_system_seconds_total'),
  total: value('kvx_process_cpu_seconds_total'),
}));
`;

describe('process metrics', function () {
  this.timeout(20_000);
  let result: { ours: string[]; theirs: string[]; otelLoaded: boolean; user: number; system: number; total: number };

  before(async () => {
    const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', SCRIPT], { cwd: ROOT });
    result = JSON.parse(stdout) as typeof result;
  });

  it("registers every metric prom-client's collectDefaultMetrics does, under the same names", () => {
    expect(result.theirs.length).to.be.greaterThan(10);
    expect(result.ours).to.include.members(result.theirs);
  });

  it('does not load @opentelemetry/api (prom-client needs it only for exemplars, which kvx does not use)', () => {
    expect(result.otelLoaded).to.equal(false);
  });

  it('reports the CPU time spent, user plus system in the total, from one reading', () => {
    expect(result.user).to.be.greaterThan(0.03);
    expect(result.system).to.be.at.least(0);
    expect(result.total).to.be.closeTo(result.user + result.system, 1e-9);
  });
});
