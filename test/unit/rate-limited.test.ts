import * as FakeTimers from '@sinonjs/fake-timers';
import { expect } from 'chai';
import { Logger } from '../../src/log/logger.js';
import { RateLimitedWarning } from '../../src/log/rate-limited.js';

describe('RateLimitedWarning', function () {
  let clock: FakeTimers.Clock;
  beforeEach(() => {
    clock = FakeTimers.install({ toFake: ['setTimeout', 'clearTimeout', 'Date'] });
  });
  afterEach(() => clock.uninstall());

  function collect(): { logger: Logger; lines: Record<string, unknown>[] } {
    const lines: Record<string, unknown>[] = [];
    return { logger: new Logger('info', { write: (l: string) => lines.push(JSON.parse(l) as Record<string, unknown>) }), lines };
  }

  it('logs the first at once and the rest as one line per interval, with their count', function () {
    const { logger, lines } = collect();
    const warning = new RateLimitedWarning(logger, 'dropped', 'dropped', 5000);
    for (let i = 0; i < 1000; i++) warning.report({ code: 'EMFILE', n: i });
    expect(lines).to.have.length(1);
    expect(lines[0]).to.include({ level: 'warn', msg: 'dropped', code: 'EMFILE', n: 0, dropped: 1 });
    clock.tick(5000);
    expect(lines).to.have.length(2);
    expect(lines[1]).to.include({ n: 999, dropped: 999, intervalMs: 5000 });
    // A storm that goes on gets a line per interval; a quiet interval ends it, and the next one logs at once.
    warning.report({ n: 1000 });
    clock.tick(5000);
    expect(lines.at(-1)).to.include({ n: 1000, dropped: 1 });
    clock.tick(5000);
    expect(lines).to.have.length(3);
    warning.report({ n: 1001 });
    expect(lines).to.have.length(4);
    expect(lines.at(-1)).to.include({ n: 1001, dropped: 1 });
    const total = lines.reduce((sum, l) => sum + Number(l['dropped']), 0);
    expect(total).to.equal(1002);
  });

  it('logs what is still counted when closed, and nothing after', function () {
    const { logger, lines } = collect();
    const warning = new RateLimitedWarning(logger, 'failed', 'failures', 5000);
    warning.report({});
    warning.report({});
    warning.report({});
    warning.close();
    expect(lines.map((l) => l['failures'])).to.deep.equal([1, 2]);
    clock.tick(20_000);
    expect(lines).to.have.length(2);
  });
});
