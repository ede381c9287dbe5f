/**
 * The engine suites run once per engine: KVX_SERVER_ENGINE=node for the node engine's run (npm test, npm run
 * test:faults). A test of behaviour the node engine does not share, as listed in docs/proxy.md ("Engines"), runs
 * on the wire engine only and says why in its skip reason.
 */
export const ENGINE = process.env['KVX_SERVER_ENGINE'] === 'node' ? 'node' : 'wire';

/** `it` on the wire engine; a skipped test on the node engine, for a difference docs/proxy.md lists. */
export function wireOnly(_difference: string): Mocha.TestFunction | Mocha.PendingTestFunction {
  return ENGINE === 'node' ? it.skip : it;
}
