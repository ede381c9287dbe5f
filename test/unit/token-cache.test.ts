import { Egress } from '../../src/config/egress.js';
import { expect } from 'chai';
import * as FakeTimers from '@sinonjs/fake-timers';
import { CredentialsError } from '../../src/errors.js';
import { TokenCache } from '../../src/auth/token-cache.js';
import { LoginRequiredError, TokenFetchError, accessToken, idToken } from '../../src/auth/token.js';
import { TokenProvider } from '../../src/auth/token-provider.js';
import { decodeJwtClaims } from '../../src/auth/jwt.js';
import type { Clock } from '../../src/auth/clock.js';
import type { Token } from '../../src/auth/token.js';
import type { ProviderContext } from '../../src/auth/provider.js';
import type { KvxConfig } from '../../src/config/schema.js';
import { Logger, silentLogger } from '../../src/log/logger.js';

const START = Date.UTC(2025, 0, 1);

function fakeClock(): { clock: Clock; fake: FakeTimers.Clock } {
  const fake = FakeTimers.createClock(START);
  return {
    fake,
    clock: {
      now: () => fake.now,
      setTimeout: (fn, ms) => fake.setTimeout(fn, ms),
      clearTimeout: (h) => fake.clearTimeout(h as FakeTimers.TimerId),
    },
  };
}

/** A scripted token endpoint: each call answers with the next behaviour, tokens numbered. */
class Endpoint {
  calls = 0;
  lifetimeMs = 3_600_000;
  failWith: Error | undefined;
  hang = false;
  /** Calls answered only by release(): a token endpoint that is slow, then answers. */
  stall = false;
  private stalled: (() => void)[] = [];
  constructor(private readonly clock: Clock) {}
  release(): void {
    for (const answer of this.stalled.splice(0)) answer();
  }
  fetch = async (signal: AbortSignal): Promise<Token> => {
    this.calls += 1;
    await Promise.resolve();
    if (this.hang) return new Promise<Token>((_, reject) => signal.addEventListener('abort', () => reject(signal.reason)));
    if (this.stall) await new Promise<void>((resolve) => this.stalled.push(resolve));
    if (this.failWith) throw this.failWith;
    const now = this.clock.now();
    return { value: `tok-${this.calls}`, expiresAt: now + this.lifetimeMs, issuedAt: now, identity: 'sa@p.iam.gserviceaccount.com' };
  };
}

function cacheWith(endpoint: Endpoint, clock: Clock, extra: Partial<ConstructorParameters<typeof TokenCache>[0]> = {}) {
  const metrics = { fetches: [] as boolean[], expiries: [] as (number | undefined)[], rejecting: [] as boolean[] };
  const cache = new TokenCache({
    provider: 'google-iam',
    fetch: endpoint.fetch,
    clock,
    random: () => 0.5,
    refreshBeforeMs: 300_000,
    jitterMs: 0,
    metrics: {
      tokenFetch: (_p, ok) => metrics.fetches.push(ok),
      tokenExpiry: (_p, at) => metrics.expiries.push(at),
      upstreamRejecting: (_p, on) => metrics.rejecting.push(on),
    },
    ...extra,
  });
  return { cache, metrics };
}

describe('TokenCache', () => {
  let fake: FakeTimers.Clock;
  let clock: Clock;
  let endpoint: Endpoint;
  let cache: TokenCache;
  let metrics: { fetches: boolean[]; expiries: (number | undefined)[]; rejecting: boolean[] };

  beforeEach(() => {
    ({ fake, clock } = fakeClock());
    endpoint = new Endpoint(clock);
    ({ cache, metrics } = cacheWith(endpoint, clock));
  });
  afterEach(() => cache.close());

  it('shares one fetch among 100 concurrent callers at start', async () => {
    const tokens = await Promise.all(Array.from({ length: 100 }, () => cache.get()));
    expect(endpoint.calls).to.equal(1);
    expect(new Set(tokens.map((t) => t.value))).to.deep.equal(new Set(['tok-1']));
    expect(metrics.fetches).to.deep.equal([true]);
    expect(metrics.expiries).to.deep.equal([START + 3_600_000]);
  });

  it('answers from the held token without fetching again', async () => {
    await cache.start();
    expect(cache.peek()?.value).to.equal('tok-1');
    await fake.tickAsync(30 * 60_000);
    expect((await cache.get()).value).to.equal('tok-1');
    expect(endpoint.calls).to.equal(1);
  });

  it('refreshes in the background refreshBefore ahead of the expiry the token states', async () => {
    endpoint.lifetimeMs = 1_800_000; // 30 minutes, not the 60 kedro-vertexai assumed
    await cache.start();
    await fake.tickAsync(1_800_000 - 300_000 - 1);
    expect(endpoint.calls).to.equal(1);
    await fake.tickAsync(2);
    expect(endpoint.calls).to.equal(2);
    expect(cache.peek()?.value).to.equal('tok-2');
    // and again for the new token, without any caller asking
    await fake.tickAsync(1_800_000 - 300_000);
    expect(endpoint.calls).to.equal(3);
  });

  it('adds jitter to the lead time', async () => {
    cache.close();
    ({ cache } = cacheWith(endpoint, clock, { jitterMs: 60_000, random: () => 0.5 }));
    await cache.start();
    await fake.tickAsync(3_600_000 - 300_000 - 30_000 - 1);
    expect(endpoint.calls).to.equal(1);
    await fake.tickAsync(2);
    expect(endpoint.calls).to.equal(2);
  });

  it('refreshes short-lived tokens at a fraction of their life, not continuously', async () => {
    endpoint.lifetimeMs = 30_000;
    await cache.start();
    // lead 300 s > lifetime: refresh 40-50% into the life (random 0.5 → at 45%, 13.5 s)
    await fake.tickAsync(13_499);
    expect(endpoint.calls).to.equal(1);
    await fake.tickAsync(2);
    expect(endpoint.calls).to.equal(2);
    await fake.tickAsync(5 * 30_000);
    expect(endpoint.calls).to.be.within(12, 14); // one every 13.5 s
    expect(cache.peek()).to.not.equal(undefined);
  });

  it('keeps using a still-valid token while refreshes fail, backing off exponentially within bounds', async () => {
    cache.close();
    ({ cache, metrics } = cacheWith(endpoint, clock, { backoffInitialMs: 1_000, backoffMaxMs: 8_000 }));
    await cache.start();
    endpoint.failWith = new TokenFetchError('IAM Credentials answered 503 UNAVAILABLE');
    await fake.tickAsync(3_300_000); // refresh due
    expect(endpoint.calls).to.equal(2);
    expect(cache.peek()?.value).to.equal('tok-1');
    expect(cache.status()).to.include({ ready: true, lastError: 'IAM Credentials answered 503 UNAVAILABLE' });
    const before = endpoint.calls;
    await fake.tickAsync(1_000); // 1 s
    await fake.tickAsync(2_000); // 2 s
    await fake.tickAsync(4_000); // 4 s
    await fake.tickAsync(8_000); // 8 s (bound)
    await fake.tickAsync(8_000); // 8 s again
    expect(endpoint.calls - before).to.equal(5);
    expect(metrics.fetches.filter((ok) => !ok)).to.have.length(6);
    endpoint.failWith = undefined;
    await fake.tickAsync(8_000);
    expect(cache.peek()?.value).to.equal(`tok-${endpoint.calls}`);
    expect(cache.status().lastError).to.equal(undefined);
  });

  it('rejects with CredentialsError once no valid token remains, then recovers', async () => {
    endpoint.lifetimeMs = 600_000;
    await cache.start();
    endpoint.failWith = new TokenFetchError('IAM Credentials answered 500', { hint: 'Google had an outage' });
    await fake.tickAsync(600_000);
    expect(cache.peek()).to.equal(undefined);
    const err = await cache.get().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).to.be.instanceOf(CredentialsError);
    const ce = err as CredentialsError;
    expect(ce.code).to.equal('KVX_CREDENTIALS_UNAVAILABLE');
    expect(ce.message).to.equal('google-iam: IAM Credentials answered 500');
    expect(ce.hint).to.equal('Google had an outage');
    expect(ce.retryAfterSeconds).to.be.at.least(1);
    expect(cache.status().ready).to.equal(false);
    await fake.tickAsync(61_000); // a background retry fails too, now with no token to fall back on
    expect(metrics.expiries.at(-1)).to.equal(undefined);
    endpoint.failWith = undefined;
    await fake.tickAsync(61_000); // the background retry fetches without any caller
    expect(cache.status().ready).to.equal(true);
    expect((await cache.get()).value).to.equal(`tok-${endpoint.calls}`);
  });

  it('never caches a failure: during backoff callers are told when to retry, after it a new fetch runs', async () => {
    cache.close();
    ({ cache } = cacheWith(endpoint, clock, { background: false, backoffInitialMs: 4_000 }));
    endpoint.failWith = new TokenFetchError('no Google credentials found');
    const results = await Promise.allSettled(Array.from({ length: 10 }, () => cache.get()));
    expect(endpoint.calls).to.equal(1);
    expect(results.every((r) => r.status === 'rejected')).to.equal(true);
    const during = await cache.get().catch((e: CredentialsError) => e);
    expect(endpoint.calls).to.equal(1);
    expect((during as CredentialsError).retryAfterSeconds).to.equal(4);
    endpoint.failWith = undefined;
    await fake.tickAsync(4_000);
    expect((await cache.get()).value).to.equal('tok-2');
  });

  it('a permanent failure (a login Google refused) is retried by requests only, after the first backoff step, never by its own timer', async () => {
    await cache.start();
    endpoint.failWith = new LoginRequiredError('Google no longer accepts the login; run `kvx-proxy login` again');
    await fake.tickAsync(3_600_000);
    // The scheduled refresh failed; nothing else ran in the hour after it, whatever the backoff would have done.
    const afterSchedule = endpoint.calls;
    await fake.tickAsync(3_600_000);
    expect(endpoint.calls).to.equal(afterSchedule);
    const err = (await cache.get().catch((e: unknown) => e)) as CredentialsError;
    expect(err.message).to.include('run `kvx-proxy login` again');
    expect(endpoint.calls).to.equal(afterSchedule + 1);
    // Requests keep finding out soon (1 s), so a new login is used at once; still no timer of its own.
    await fake.tickAsync(1_000);
    await cache.get().catch(() => {});
    expect(endpoint.calls).to.equal(afterSchedule + 2);
    await fake.tickAsync(600_000);
    expect(endpoint.calls).to.equal(afterSchedule + 2);
    endpoint.failWith = undefined;
    await fake.tickAsync(1_000);
    expect((await cache.get()).value).to.match(/^tok-/);
  });

  it('drops the in-flight promise after success and after failure', async () => {
    await cache.refresh();
    await cache.refresh();
    expect(endpoint.calls).to.equal(2);
    endpoint.failWith = new TokenFetchError('boom');
    await cache.refresh().catch(() => {});
    endpoint.failWith = undefined;
    expect((await cache.refresh()).value).to.equal('tok-4');
  });

  it('invalidate refreshes only when the rejected token is still the held one, sharing one fetch', async () => {
    await cache.start();
    await Promise.all([cache.invalidate('tok-1'), cache.invalidate('tok-1'), cache.invalidate('tok-1')]);
    expect(endpoint.calls).to.equal(2);
    expect(cache.peek()?.value).to.equal('tok-2');
    // a late 401 for the old token: a newer one is held, nothing to do
    await cache.invalidate('tok-1');
    expect(endpoint.calls).to.equal(2);
  });

  it('invalidate joins a background refresh already running', async () => {
    await cache.start();
    endpoint.hang = true;
    const bg = cache.refresh();
    const inv = cache.invalidate('tok-1');
    endpoint.hang = false;
    expect(endpoint.calls).to.equal(2);
    await fake.tickAsync(30_000); // the hung fetch times out
    await bg.catch(() => {});
    await inv.catch(() => {});
    expect(endpoint.calls).to.equal(2);
  });

  it('counts a fetch that hangs past the timeout as failed and tries again later', async () => {
    endpoint.hang = true;
    const first = cache.get().catch((e: unknown) => e);
    await fake.tickAsync(30_000);
    const err = (await first) as CredentialsError;
    expect(err).to.be.instanceOf(CredentialsError);
    expect(err.message).to.match(/timed out after 30000 ms/);
    endpoint.hang = false;
    await fake.tickAsync(2_000);
    expect(cache.peek()?.value).to.equal('tok-2');
  });

  it('rejects a token that is already expired on arrival and points at the clock', async () => {
    endpoint.lifetimeMs = -5_000;
    const err = (await cache.get().catch((e: unknown) => e)) as CredentialsError;
    expect(err.message).to.match(/already expired on arrival/);
    expect(err.hint).to.match(/clock/);
  });

  it('stops its timers on close', async () => {
    endpoint.lifetimeMs = 30_000;
    await cache.start();
    cache.close();
    await fake.tickAsync(10 * 30_000);
    expect(endpoint.calls).to.equal(1);
    expect(fake.countTimers()).to.equal(0);
  });

  it('reports status with identity and expiry', async () => {
    expect(cache.status()).to.deep.equal({ ready: false });
    await cache.start();
    expect(cache.status()).to.deep.equal({ ready: true, expiresAt: START + 3_600_000, identity: 'sa@p.iam.gserviceaccount.com' });
  });
});

/** A logger keeping its lines, to count warnings. */
function capturingLogger(): { logger: Logger; lines: { level: string; msg: string; [k: string]: unknown }[] } {
  const lines: { level: string; msg: string }[] = [];
  return { logger: new Logger('debug', { write: (line: string) => lines.push(JSON.parse(line) as { level: string; msg: string }) }), lines };
}

describe('TokenCache: an upstream rejecting fresh tokens', () => {
  let fake: FakeTimers.Clock;
  let clock: Clock;
  let endpoint: Endpoint;
  let cache: TokenCache;
  let metrics: { fetches: boolean[]; expiries: (number | undefined)[]; rejecting: boolean[] };
  let lines: ReturnType<typeof capturingLogger>['lines'];

  beforeEach(() => {
    ({ fake, clock } = fakeClock());
    endpoint = new Endpoint(clock);
    const captured = capturingLogger();
    lines = captured.lines;
    ({ cache, metrics } = cacheWith(endpoint, clock, { logger: captured.logger, rejectionHint: (status) => `check auth.params.client_id (${status})` }));
  });
  afterEach(() => cache.close());

  /** What the forwarder does with one request the upstream rejects: refresh and replay when worth it. Returns the fetches it caused. */
  async function rejectedRequest(): Promise<number> {
    const before = endpoint.calls;
    const sent = cache.peek()!.value;
    if (!cache.rejected(sent, 401)) return 0;
    await cache.invalidate(sent, 2_000);
    // The replay, rejected too.
    cache.rejected(cache.peek()!.value, 401);
    return endpoint.calls - before;
  }

  const warnings = () => lines.filter((l) => l.level === 'warn');

  it('one refresh and replay, then refreshes spaced by a backoff from 5 s doubling to 10 min: 10 fetches in 30 minutes at one request a second', async () => {
    await cache.start();
    const fetchedAt: number[] = [];
    for (let second = 0; second < 1800; second++) {
      if ((await rejectedRequest()) > 0) fetchedAt.push((fake.now - START) / 1000);
      await fake.tickAsync(1_000);
    }
    // Before: one fetch per request, 1,800.
    expect(fetchedAt).to.deep.equal([0, 5, 15, 35, 75, 155, 315, 635, 1235]);
    expect(endpoint.calls).to.equal(1 + fetchedAt.length);
    expect(warnings().map((l) => l.msg), 'one warning for the whole episode').to.have.length(1);
    expect(warnings()[0]).to.include({ provider: 'google-iam', status: 401, likelyCause: 'check auth.params.client_id (401)' });
    expect(metrics.rejecting).to.include(true).and.not.include(false);
    const status = cache.status().upstreamRejects!;
    expect(status).to.include({ status: 401, rejectedCredentials: 9, since: START, likelyCause: 'check auth.params.client_id (401)' });
    expect(status.nextRefreshAt).to.be.above(fake.now);
  });

  it('a token accepted once is refreshed and replayed when rejected later (revoked, expired early)', async () => {
    await cache.start();
    expect(await rejectedRequest()).to.equal(1);
    cache.accepted(cache.peek()!.value);
    expect(cache.unconfirmed).to.equal(false);
    expect(await rejectedRequest(), 'a proven token gets its refresh').to.equal(1);
  });

  it('ends when a request with the held token is accepted: state, gauge and warning reset', async () => {
    await cache.start();
    await rejectedRequest();
    expect(cache.unconfirmed).to.equal(true);
    expect(cache.rejected(cache.peek()!.value, 401), 'no replay in the backoff interval').to.equal(false);
    cache.accepted('not-the-held-token');
    expect(cache.status().upstreamRejects).to.not.equal(undefined);
    cache.accepted(cache.peek()!.value);
    expect(cache.status().upstreamRejects).to.equal(undefined);
    expect(cache.unconfirmed).to.equal(false);
    expect(metrics.rejecting).to.deep.equal([true, false]);
    expect(lines.some((l) => l.level === 'info' && /accepts the token again/.test(l.msg))).to.equal(true);
    // A new episode warns again.
    await rejectedRequest();
    await rejectedRequest();
    expect(warnings()).to.have.length(2);
  });

  it('ends when the token is renewed on schedule; the next rejection gets its refresh and replay, without a second warning', async () => {
    endpoint.lifetimeMs = 600_000;
    await cache.start();
    await rejectedRequest();
    expect(cache.status().upstreamRejects).to.not.equal(undefined);
    const calls = endpoint.calls;
    await fake.tickAsync(600_000 - 300_000); // the background refresh, refreshBefore (300 s) ahead of expiry
    expect(endpoint.calls).to.equal(calls + 1);
    expect(cache.status().upstreamRejects).to.equal(undefined);
    expect(metrics.rejecting).to.deep.equal([true, false]);
    expect(await rejectedRequest()).to.equal(1);
    expect(cache.status().upstreamRejects?.rejectedCredentials).to.equal(1);
    expect(warnings(), 'still the same episode: no request was accepted').to.have.length(1);
  });

  it('counts a fresh token once however many requests it is rejected on', async () => {
    await cache.start();
    await rejectedRequest();
    const held = cache.peek()!.value;
    for (let i = 0; i < 100; i++) expect(cache.rejected(held, 401)).to.equal(false);
    expect(cache.status().upstreamRejects?.rejectedCredentials).to.equal(1);
    // A late rejection of the token before: a newer one is held, replaying with it may help.
    expect(cache.rejected('tok-1', 401)).to.equal(true);
  });

  it('one probe per backoff interval, however many requests are rejected when it is due', async () => {
    await cache.start();
    await rejectedRequest();
    await fake.tickAsync(5_000);
    const held = cache.peek()!.value;
    const answers = Array.from({ length: 50 }, () => cache.rejected(held, 401));
    expect(answers.filter(Boolean)).to.have.length(1);
  });
});

describe('TokenCache: requests wait a bounded time', () => {
  let fake: FakeTimers.Clock;
  let clock: Clock;
  let endpoint: Endpoint;
  let cache: TokenCache;
  let lines: ReturnType<typeof capturingLogger>['lines'];

  beforeEach(() => {
    ({ fake, clock } = fakeClock());
    endpoint = new Endpoint(clock);
    const captured = capturingLogger();
    lines = captured.lines;
    ({ cache } = cacheWith(endpoint, clock, { logger: captured.logger, requestWaitMs: 2_000 }));
  });
  afterEach(() => cache.close());

  it('without a usable token, callers wait for a hung fetch at most waitMs from its start, later callers not at all; the fetch runs on and serves the next callers', async () => {
    endpoint.stall = true;
    const settled: { at: number; error?: CredentialsError; value?: string }[] = [];
    const track = (p: Promise<Token>) =>
      p.then(
        (t) => settled.push({ at: fake.now - START, value: t.value }),
        (e: CredentialsError) => settled.push({ at: fake.now - START, error: e }),
      );
    const first = track(cache.acquire(2_000));
    await fake.tickAsync(1_500);
    const second = track(cache.acquire(2_000));
    await fake.tickAsync(600);
    await Promise.all([first, second]);
    expect(settled.map((s) => s.at), 'both answered at the deadline, 2 s after the fetch started').to.deep.equal([2_000, 2_000]);
    const err = settled[0]!.error!;
    expect(err).to.be.instanceOf(CredentialsError);
    expect(err.message).to.match(/unanswered for 2\.0 s/).and.include('auth.tokenWaitMs').and.include('auth.tokenFetchTimeoutMs');
    expect(err.retryAfterSeconds).to.equal(2);
    expect(fake.countTimers(), 'one timer for the fetch timeout, one shared deadline at most').to.be.at.most(2);
    const late = (await cache.acquire(2_000).catch((e: unknown) => e)) as CredentialsError;
    expect(late, 'refused at once').to.be.instanceOf(CredentialsError);
    expect(endpoint.calls, 'no second fetch while one runs').to.equal(1);
    expect(cache.status().fetchPendingMs).to.equal(2_100);
    endpoint.release();
    await fake.tickAsync(0);
    expect((await cache.acquire(2_000)).value).to.equal('tok-1');
    expect(cache.status().fetchPendingMs).to.equal(undefined);
  });

  it('get() (start, doctor, the launcher) still waits for the whole fetch', async () => {
    endpoint.stall = true;
    const token = cache.get();
    await fake.tickAsync(10_000);
    endpoint.release();
    expect((await token).value).to.equal('tok-1');
  });

  it('a refresh after a rejection waits at most waitMs too', async () => {
    await cache.start();
    endpoint.stall = true;
    const refused = cache.invalidate('tok-1', 2_000).catch((e: unknown) => e);
    await fake.tickAsync(2_000);
    expect(await refused).to.be.instanceOf(CredentialsError);
    endpoint.release();
  });

  it('warns once when a refresh is still unanswered as the held token ends, not again until a token arrived', async () => {
    endpoint.lifetimeMs = 100_000; // usable until 90 s, refreshed from 50 s
    await cache.start();
    endpoint.hang = true;
    await fake.tickAsync(100_000);
    const unanswered = () => lines.filter((l) => l.level === 'warn' && /unanswered/.test(l.msg));
    expect(unanswered()).to.have.length(1);
    expect(unanswered()[0]).to.include({ provider: 'google-iam', fetchTimeoutMs: 30_000 });
    // More hung attempts: the failures are logged, the near-end warning not repeated.
    await fake.tickAsync(120_000);
    expect(unanswered()).to.have.length(1);
    endpoint.hang = false;
    await fake.tickAsync(60_000);
    expect(cache.peek()).to.not.equal(undefined);
  });

  it('no near-end warning when the refresh answers in time, nor while the held token outlasts the fetch timeout', async () => {
    endpoint.lifetimeMs = 40_000; // refreshed at 18 s, usable until 36 s: a refresh could outlast it
    await cache.start();
    await fake.tickAsync(10 * 40_000);
    expect(endpoint.calls).to.be.at.least(10);
    endpoint.lifetimeMs = 3_600_000;
    await fake.tickAsync(40_000);
    endpoint.hang = true;
    await fake.tickAsync(3_600_000 - 300_000 + 1_000); // the hung refresh has 5 min of token left
    expect(lines.filter((l) => /unanswered/.test(l.msg))).to.deep.equal([]);
  });
});

describe('TokenProvider', () => {
  class Fixed extends TokenProvider {
    readonly name = 'fixed';
    calls = 0;
    constructor(context: ProviderContext, clock: Clock) {
      super('fixed', context, { clock, random: () => 0 });
    }
    protected async fetchToken(): Promise<Token> {
      this.calls += 1;
      return { value: `t${this.calls}`, expiresAt: Date.now() + 3_600_000 };
    }
  }
  const context = (header = 'Proxy-Authorization'): ProviderContext => ({
    logger: silentLogger,
    config: { auth: { refreshBeforeExpirySec: 300, refreshJitterSec: 0, tokenFetchTimeoutMs: 30_000 } } as unknown as KvxConfig,
    header,
    scheme: 'Bearer',
    baseDir: '/',
    env: {},
    metrics: { tokenFetch: () => {}, tokenExpiry: () => {}, upstreamRejecting: () => {} },
    egress: Egress.none,
  });

  it('answers synchronously with one frozen header object while a token is held', async () => {
    const provider = new Fixed(context(), { now: () => Date.now(), setTimeout: () => undefined, clearTimeout: () => {} });
    const first = provider.requestHeaders();
    expect(first).to.be.instanceOf(Promise);
    expect(await first).to.deep.equal({ 'Proxy-Authorization': 'Bearer t1' });
    const again = provider.requestHeaders();
    expect(again).to.not.be.instanceOf(Promise);
    expect(Object.isFrozen(again)).to.equal(true);
    expect(provider.requestHeaders()).to.equal(again);
    provider.close();
  });

  it('invalidate compares the rejected header case-insensitively with the current value', async () => {
    const provider = new Fixed(context(), { now: () => Date.now(), setTimeout: () => undefined, clearTimeout: () => {} });
    await provider.start();
    await provider.invalidate({ 'proxy-authorization': 'Bearer other' });
    expect(provider.calls).to.equal(1);
    await provider.invalidate({ authorization: 'Bearer t1' });
    expect(provider.calls).to.equal(1);
    await provider.invalidate({ 'proxy-authorization': 'Bearer t1' });
    expect(provider.calls).to.equal(2);
    expect(provider.requestHeaders()).to.deep.equal({ 'Proxy-Authorization': 'Bearer t2' });
    provider.close();
  });
});

describe('token helpers', () => {
  const jwt = (claims: object) => `e30.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.sig`;

  it('reads expiry, issue time, email and audience from an ID token', () => {
    const t = idToken(jwt({ exp: 2000, iat: 1000, email: 'a@b.c', aud: 'cid' }));
    expect(t).to.deep.include({ expiresAt: 2_000_000, issuedAt: 1_000_000, identity: 'a@b.c', audience: 'cid' });
  });

  it('refuses an ID token without exp and a non-JWT', () => {
    expect(() => idToken(jwt({ iat: 1 }))).to.throw(TokenFetchError, /no exp/);
    expect(() => idToken('garbage')).to.throw(TokenFetchError, /not a JWT/);
    expect(decodeJwtClaims('a.b.c')).to.equal(undefined);
  });

  it('reads expires_in of an access token', () => {
    expect(accessToken({ access_token: 'ya29.x', expires_in: 3599 }, 1000)).to.deep.equal({ value: 'ya29.x', expiresAt: 3_600_000 });
    expect(() => accessToken({ access_token: 'ya29.x' }, 0)).to.throw(/expires_in/);
  });
});

describe('TokenCache on real time', () => {
  it('keeps a valid token at hand across several short lifetimes', async () => {
    let calls = 0;
    const cache = new TokenCache({
      provider: 'real',
      fetch: async () => {
        calls += 1;
        await new Promise((r) => setTimeout(r, 5));
        return { value: `r${calls}`, expiresAt: Date.now() + 400 };
      },
    });
    try {
      await cache.start();
      const deadline = Date.now() + 1_500;
      let misses = 0;
      while (Date.now() < deadline) {
        const token = await cache.get();
        if (token.expiresAt <= Date.now()) misses += 1;
        await new Promise((r) => setTimeout(r, 10));
      }
      expect(misses).to.equal(0);
      expect(calls).to.be.at.least(4);
    } finally {
      cache.close();
    }
  });
});
