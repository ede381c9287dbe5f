import { expect } from 'chai';
import * as FakeTimers from '@sinonjs/fake-timers';
import { AccessTokenHolder } from '../../src/auth/google/access-token.js';
import { TokenFetchError } from '../../src/auth/token.js';
import type { Clock } from '../../src/auth/clock.js';
import type { Token } from '../../src/auth/token.js';

const START = Date.UTC(2025, 0, 1);
const HOUR = 3_600_000;

/** A scripted access-token endpoint: tokens numbered, answers released by hand or at once. */
class Endpoint {
  calls = 0;
  lifetimeMs = HOUR;
  failWith: Error | undefined;
  hang = false;
  ignoreSignal = false;
  signals: AbortSignal[] = [];
  constructor(private readonly clock: Clock) {}
  fetch = async (signal: AbortSignal): Promise<Token> => {
    this.calls += 1;
    this.signals.push(signal);
    await Promise.resolve();
    if (this.hang) {
      return new Promise<Token>((_, reject) => {
        if (!this.ignoreSignal) signal.addEventListener('abort', () => reject(signal.reason));
      });
    }
    if (this.failWith) throw this.failWith;
    return { value: `ya29.tok-${this.calls}`, expiresAt: this.clock.now() + this.lifetimeMs };
  };
}

describe('AccessTokenHolder', () => {
  let fake: FakeTimers.Clock;
  let clock: Clock;
  let endpoint: Endpoint;
  let holder: AccessTokenHolder;

  beforeEach(() => {
    fake = FakeTimers.createClock(START);
    clock = { now: () => fake.now, setTimeout: (fn, ms) => fake.setTimeout(fn, ms), clearTimeout: (h) => fake.clearTimeout(h as FakeTimers.TimerId) };
    endpoint = new Endpoint(clock);
    holder = new AccessTokenHolder(endpoint.fetch, { clock, fetchTimeoutMs: 10_000 });
  });
  afterEach(() => {
    holder.close();
  });

  it('shares one fetch among concurrent callers and keeps the token until 5 minutes before a 1 h expiry', async () => {
    const all = await Promise.all(Array.from({ length: 50 }, () => holder.get()));
    expect(endpoint.calls).to.equal(1);
    expect(new Set(all.map((t) => t.value))).to.deep.equal(new Set(['ya29.tok-1']));
    fake.tick(HOUR - 300_001);
    expect((await holder.get()).value).to.equal('ya29.tok-1');
    fake.tick(1);
    expect((await holder.get()).value).to.equal('ya29.tok-2');
    expect(endpoint.calls).to.equal(2);
  });

  it('keeps a short-lived token for 90% of its life', async () => {
    endpoint.lifetimeMs = 10_000;
    await holder.get();
    fake.tick(8_999);
    expect((await holder.get()).value).to.equal('ya29.tok-1');
    fake.tick(1);
    expect((await holder.get()).value).to.equal('ya29.tok-2');
  });

  it('passes the fetch\'s error through as raised, keeps nothing, and fetches again on the next call', async () => {
    const refused = new TokenFetchError('the OAuth token endpoint refused the service-account key of x: invalid_grant', { status: 400, hint: 'create a new key' });
    endpoint.failWith = refused;
    const errors = await Promise.all([holder.get(), holder.get()].map((p) => p.catch((e: unknown) => e)));
    expect(errors[0]).to.equal(refused);
    expect(errors[1]).to.equal(refused);
    expect(endpoint.calls).to.equal(1);
    endpoint.failWith = undefined;
    expect((await holder.get()).value).to.equal('ya29.tok-2');
  });

  it('drops only the token it is told about', async () => {
    const first = await holder.get();
    holder.drop('ya29.someone-elses');
    expect((await holder.get()).value).to.equal(first.value);
    holder.drop(first.value);
    expect((await holder.get()).value).to.equal('ya29.tok-2');
  });

  it('ends a fetch that hangs past the time limit, even one that ignores its signal, and tries again on the next call', async () => {
    endpoint.hang = true;
    endpoint.ignoreSignal = true;
    const pending = holder.get().catch((e: unknown) => e);
    await fake.tickAsync(10_000);
    const err = (await pending) as Error;
    expect(err).to.be.instanceOf(TokenFetchError);
    expect(err.message).to.equal('the access token request timed out after 10000 ms');
    expect(endpoint.signals[0]!.aborted).to.equal(true);
    endpoint.hang = false;
    expect((await holder.get()).value).to.equal('ya29.tok-2');
    expect(fake.countTimers(), 'the time limit of a settled fetch is cleared').to.equal(0);
  });

  it('a caller\'s signal ends its own wait, not the fetch others wait for', async () => {
    endpoint.hang = true;
    const mine = new AbortController();
    const waiting = holder.get(mine.signal).catch((e: unknown) => e);
    const other = holder.get();
    mine.abort(new Error('caller gave up'));
    expect(((await waiting) as Error).message).to.equal('caller gave up');
    expect(endpoint.signals[0]!.aborted).to.equal(false);
    holder.close();
    expect(((await other.catch((e: unknown) => e)) as Error).message).to.equal('the Google credentials were closed');
    expect(endpoint.signals[0]!.aborted, 'close aborts the fetch in flight').to.equal(true);
    expect(endpoint.calls).to.equal(1);
  });

  it('refuses a token already expired on arrival and points at the clock; keeps nothing', async () => {
    endpoint.lifetimeMs = -1;
    const err = (await holder.get().catch((e: unknown) => e)) as TokenFetchError;
    expect(err.message).to.match(/^the access token was already expired on arrival/);
    expect(err.hint).to.include('NTP');
    endpoint.lifetimeMs = HOUR;
    expect((await holder.get()).value).to.equal('ya29.tok-2');
  });

  it('after close: the held token is gone and nothing is fetched again', async () => {
    await holder.get();
    holder.close();
    const err = (await holder.get().catch((e: unknown) => e)) as Error;
    expect(err.message).to.equal('the Google credentials were closed');
    expect(endpoint.calls).to.equal(1);
  });
});
