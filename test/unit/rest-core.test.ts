import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { PassThrough } from 'node:stream';
import { expect } from 'chai';
import { KvxError } from '../../src/errors.js';
import { Logger } from '../../src/log/logger.js';
import { backoffDelayMs, parseRetryAfter } from '../../src/util/backoff.js';
import { RestCore } from '../../src/util/rest.js';
import type { RestCall, RestClientOptions, RestService } from '../../src/util/rest.js';

type Answer = 'drop' | { status: number; body?: string; headers?: Record<string, string> };

/** A loopback server that answers from a script, one answer per request, then 200 `{"ok":true}`. */
async function scriptedServer(): Promise<{ url: string; script: Answer[]; hits: string[]; close(): Promise<void> }> {
  const script: Answer[] = [];
  const hits: string[] = [];
  const server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      hits.push(`${req.method} ${req.url}`);
      const answer = script.shift() ?? { status: 200, body: '{"ok":true}' };
      if (answer === 'drop') {
        req.socket.destroy();
        return;
      }
      res.writeHead(answer.status, { 'content-type': 'application/json', ...answer.headers }).end(answer.body ?? '{}');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    script,
    hits,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

class ApiError extends Error {
  constructor(readonly status: number) {
    super(`answered ${status}`);
  }
}

function service(over: Partial<RestService> = {}, refreshed?: string[]): RestService {
  return {
    name: 'Test',
    retry: { maxRetries: 3, backoffFactorMs: 1, jitterMs: 0, maxDelayMs: 50 },
    timeoutMs: 5000,
    headers: async () => ({ authorization: `Bearer ${refreshed?.length ? 'new' : 'old'}` }),
    refreshAfter401: async (sent) => {
      refreshed?.push(sent['authorization']!);
    },
    apiError: (_label, reply) => new ApiError(reply.status),
    notJson: () => new Error('not JSON'),
    unreachable: (label, _url, detail) => new Error(`unreachable (${label}): ${detail}`),
    ...over,
  };
}

function core(options: RestClientOptions & { refreshed?: string[] } = {}): RestCore {
  return new RestCore(options, service({}, options.refreshed));
}

const failure = (call: Promise<unknown>): Promise<Error> =>
  call.then(
    () => expect.fail('expected the call to fail'),
    (e: unknown) => e as Error,
  );

describe('REST core: what is retried, and what an interrupt does', () => {
  let server: Awaited<ReturnType<typeof scriptedServer>>;
  before(async () => {
    server = await scriptedServer();
  });
  after(async () => {
    await server.close();
  });
  beforeEach(() => {
    server.script.length = 0;
    server.hits.length = 0;
  });

  const call = (over: Partial<RestCall<{ ok?: boolean; found?: boolean }>>): RestCall<{ ok?: boolean; found?: boolean }> => ({
    method: 'POST',
    url: `${server.url}/thing`,
    label: 'POST thing',
    body: {},
    idempotent: false,
    ...over,
  });

  it('repeats an idempotent call after a 500 and after a lost reply', async () => {
    server.script.push({ status: 500 }, 'drop');
    expect(await core().call(call({ idempotent: true }))).to.deep.equal({ ok: true });
    expect(server.hits).to.have.length(3);
  });

  it('does not repeat a call that is not idempotent after a 500 or a lost reply', async () => {
    server.script.push({ status: 500 });
    expect(((await failure(core().call(call({})))) as ApiError).status).to.equal(500);
    server.script.push('drop');
    expect((await failure(core().call(call({})))).message).to.match(/^unreachable \(POST thing\): .*; not sent again: the server may have acted on it/);
    expect(server.hits).to.have.length(2);
  });

  it('repeats a call that is not idempotent after 429 and 408: the server did not act', async () => {
    server.script.push({ status: 429, headers: { 'retry-after': '0' } }, { status: 408 });
    expect(await core().call(call({}))).to.deep.equal({ ok: true });
    expect(server.hits).to.have.length(3);
  });

  it('repeats a call that is not idempotent when the connection was refused: nothing was sent', async () => {
    const closed = await scriptedServer();
    await closed.close();
    const lines = new PassThrough();
    let log = '';
    lines.on('data', (c: Buffer) => (log += c.toString()));
    const err = await failure(core({ logger: new Logger('warn', lines), retry: { maxRetries: 2, backoffFactorMs: 1, jitterMs: 0 } }).call(call({ url: `${closed.url}/thing` })));
    expect(err.message).to.match(/ECONNREFUSED/).and.not.to.include('not sent again');
    expect(log.match(/request failed; retrying/g)).to.have.length(2);
  });

  it('asks recover before repeating a call that is not idempotent, and returns what it found', async () => {
    server.script.push({ status: 502 });
    const looked: number[] = [];
    const result = await core().call(call({ recover: async () => (looked.push(server.hits.length), { found: true }) }));
    expect(result).to.deep.equal({ found: true });
    expect(looked).to.deep.equal([1]);
    expect(server.hits).to.have.length(1);
  });

  it('sends the call again when recover finds that the lost attempt did nothing', async () => {
    server.script.push('drop');
    expect(await core().call(call({ recover: async () => undefined }))).to.deep.equal({ ok: true });
    expect(server.hits).to.have.length(2);
  });

  it('does not send again when recover cannot look: the outcome is unknown', async () => {
    server.script.push('drop');
    const err = await failure(
      core().call(
        call({
          recover: async () => {
            throw new Error('search failed');
          },
        }),
      ),
    );
    expect(err.message).to.include('what it did could not be looked up');
    expect(server.hits).to.have.length(1);
  });

  it('returns what recover finds when an idempotent create is answered "already exists" after a lost reply', async () => {
    server.script.push('drop', { status: 409 });
    expect(await core().call(call({ idempotent: true, recover: async () => ({ found: true }) }))).to.deep.equal({ found: true });
    server.script.push({ status: 409 });
    // Without an earlier attempt of unknown outcome, "already exists" is someone else's.
    expect(((await failure(core().call(call({ idempotent: true, recover: async () => ({ found: true }) })))) as ApiError).status).to.equal(409);
  });

  it('refreshes credentials once on 401 and sends the call again, even one that is not idempotent', async () => {
    server.script.push({ status: 401 }, { status: 401 });
    const refreshed: string[] = [];
    expect(((await failure(core({ refreshed }).call(call({})))) as ApiError).status).to.equal(401);
    expect(refreshed).to.deep.equal(['Bearer old']);
    expect(server.hits).to.have.length(2);
  });

  it('after an interrupt makes no call, except through the uninterrupted sibling', async () => {
    const interrupt = new AbortController();
    interrupt.abort(new KvxError('KVX_INTERRUPTED', 'interrupted by SIGINT'));
    const rest = core({ interrupt: interrupt.signal });
    const err = await failure(rest.call(call({ idempotent: true })));
    expect(err).to.be.instanceOf(KvxError);
    expect((err as KvxError).code).to.equal('KVX_INTERRUPTED');
    expect(err.message).to.equal('interrupted by SIGINT before Test POST thing');
    expect(server.hits).to.have.length(0);
    expect(await rest.uninterrupted().call(call({ idempotent: true }))).to.deep.equal({ ok: true });
    expect(server.hits).to.have.length(1);
  });

  it('an interrupt during a wait to retry ends the call, and recover still gets to say what the lost attempt did', async () => {
    server.script.push({ status: 503, headers: { 'retry-after': '3600' } });
    const longWaits = service({ retry: { maxRetries: 3, backoffFactorMs: 1, jitterMs: 0, maxDelayMs: 3_600_000 } });
    const interruptDuringWait = async (c: RestCall<{ ok?: boolean; found?: boolean }>): Promise<{ ok?: boolean; found?: boolean }> => {
      server.script.push({ status: 503, headers: { 'retry-after': '3600' } });
      const interrupt = new AbortController();
      // The client logs the retry just before it starts to wait.
      const lines = new PassThrough();
      let waiting = false;
      lines.on('data', (chunk: Buffer) => (waiting ||= chunk.toString().includes('retrying')));
      const pending = new RestCore({ interrupt: interrupt.signal, logger: new Logger('warn', lines) }, longWaits).call(c);
      while (!waiting) await new Promise((r) => setTimeout(r, 5));
      interrupt.abort(new KvxError('KVX_INTERRUPTED', 'interrupted by SIGTERM'));
      return pending;
    };
    expect(await interruptDuringWait(call({ idempotent: true, recover: async () => ({ found: true }) }))).to.deep.equal({ found: true });
    expect((await failure(interruptDuringWait(call({ idempotent: true })))).message).to.equal('interrupted by SIGTERM while waiting 3600 s to retry Test POST thing after 503');
    expect(server.hits).to.have.length(2);
  });
});

describe('retry timing', () => {
  const policy = { maxRetries: 3, backoffFactorMs: 1000, jitterMs: 0, maxDelayMs: 120_000 };

  it('honours Retry-After up to the cap', () => {
    expect(backoffDelayMs(policy, 1, 30_000)).to.equal(30_000);
    expect(backoffDelayMs(policy, 1, 600_000)).to.equal(120_000);
    expect(backoffDelayMs(policy, 3)).to.equal(4000);
  });

  it('reads Retry-After as seconds or an HTTP date', () => {
    expect(parseRetryAfter('120')).to.equal(120_000);
    expect(parseRetryAfter(new Date(Date.UTC(2024, 0, 1, 0, 2)).toUTCString(), Date.UTC(2024, 0, 1))).to.equal(120_000);
    expect(parseRetryAfter('soon')).to.equal(undefined);
  });
});
