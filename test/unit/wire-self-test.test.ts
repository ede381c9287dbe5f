import { expect } from 'chai';
import { HTTPParser, kOnHeaders, kOnHeadersComplete } from '../../src/proxy/wire/llhttp.js';
import type { NativeParser } from '../../src/proxy/wire/llhttp.js';
import { parserSelfTest } from '../../src/proxy/wire/self-test.js';
import { chooseEngine } from '../../src/proxy/engine-select.js';
import { Logger } from '../../src/log/logger.js';
import { LogCapture } from '../helpers/proxy.js';

type Callback = (...args: unknown[]) => unknown;

/**
 * A parser double: the real llhttp parser, with the callbacks kvx installs rewritten on their way in, as a Node
 * release that changed the binding's behaviour (not its names) would present them.
 */
function misbehaving(rewrite: (slot: number, callback: Callback) => Callback): () => NativeParser {
  return () =>
    new Proxy(new HTTPParser(), {
      set(target, key, value: unknown) {
        const slot = typeof key === 'string' && /^\d+$/.test(key) ? Number(key) : -1;
        (target as unknown as Record<PropertyKey, unknown>)[key] = slot >= 0 && typeof value === 'function' ? rewrite(slot, value as Callback) : value;
        return true;
      },
      get(target, key) {
        const value = (target as unknown as Record<PropertyKey, unknown>)[key];
        return typeof value === 'function' ? (value as Callback).bind(target) : value;
      },
    }) as NativeParser;
}

describe('wire engine: the start-up self-test of HTTPParser', () => {
  it('passes on the Node.js running the tests', () => {
    expect(parserSelfTest()).to.equal(undefined);
  });

  it('fails when the headers-complete arguments come reordered (method and url swapped)', () => {
    const double = misbehaving((slot, cb) =>
      slot === kOnHeadersComplete ? (major, minor, headers, method, url, ...rest) => cb(major, minor, headers, url, method, ...rest) : cb,
    );
    expect(parserSelfTest(double)).to.match(/chunked request: method is/);
  });

  it('fails when the version arguments are swapped', () => {
    const double = misbehaving((slot, cb) => (slot === kOnHeadersComplete ? (major, minor, ...rest) => cb(minor, major, ...rest) : cb));
    expect(parserSelfTest(double)).to.match(/versionMinor is 1, expected 0/);
  });

  it('fails when header batches (more than 32 pairs) are not delivered through kOnHeaders', () => {
    const double = misbehaving((slot, cb) => (slot === kOnHeaders ? () => undefined : cb));
    // The target of a request whose headers came in batches comes with the batches, as the headers do.
    expect(parserSelfTest(double)).to.match(/request after trailers: url is ""|request with 41 headers/);
  });

  it('fails when the skip-body return value is ignored (the answer to a HEAD read as having a body)', () => {
    const double = misbehaving((slot, cb) => (slot === kOnHeadersComplete ? (...args) => (cb(...args), 0) : cb));
    expect(parserSelfTest(double)).to.be.a('string');
  });

  it('fails when the parser throws', () => {
    const double = (): NativeParser => {
      throw new Error('no binding');
    };
    expect(parserSelfTest(double)).to.match(/the parser threw: no binding/);
  });

  it('auto falls back to the node engine with one warning naming the Node.js version; wire refuses to start', async () => {
    const logs = new LogCapture();
    const logger = new Logger('info', logs);
    const failing = () => Promise.resolve('method is "/up?x=1"');
    expect(await chooseEngine('auto', logger, failing)).to.equal('node');
    const warnings = logs.records().filter((r) => r['level'] === 'warn');
    expect(warnings).to.have.length(1);
    expect(String(warnings[0]!['msg'])).to.include(process.version);
    await chooseEngine('wire', logger, failing).then(
      () => expect.fail('wire must not start'),
      (err: Error) => expect(err.message).to.include('server.engine'),
    );
    expect(await chooseEngine('auto', logger, () => Promise.resolve(undefined))).to.equal('wire');
    expect(await chooseEngine('node', logger, failing)).to.equal('node');
  });
});
