/**
 * The retrying core under kvx-launch's REST clients (MLflow, Vertex AI): one attempt loop with one backoff,
 * `Retry-After` honoured and capped, waits and requests that an interrupt cuts short, and retries decided per call
 * by what a repeat would do. The clients say how to authenticate and how to read their service's errors.
 */
import type * as Undici from 'undici';
import type { Dispatcher } from 'undici';
import { KvxError, errorMessage } from '../errors.js';
import type { Logger } from '../log/logger.js';
import { silentLogger } from '../log/logger.js';
import { RETRYABLE_STATUSES, backoffDelayMs, parseRetryAfter, sleep } from './backoff.js';
import type { RetryPolicy } from './backoff.js';
import { VERSION } from '../version.js';
import { lazyRequire } from './lazy-require.js';

export interface RestReply {
  status: number;
  text: string;
}

export interface RestCall<T> {
  method: 'GET' | 'POST' | 'DELETE';
  url: string;
  /** Names the call in logs and errors: `POST runs/create`, `pipelineJobs.get`. */
  label: string;
  /** Sent as JSON. */
  body?: unknown;
  /** Any content type is accepted and the text is the result (a file download). */
  raw?: boolean;
  /**
   * True when a repeat does what one call does: reads, updates to given values, creates under an id the client
   * chose (a repeat is answered "already exists"). Such calls are retried after any retryable failure. Other calls
   * are retried only when the server cannot have acted on the failed attempt (no connection, 408, 429), or when
   * `recover` can tell what it did.
   */
  idempotent: boolean;
  /**
   * Finds what an attempt whose outcome is unknown (the reply lost, a 5xx, an interrupt) did: the call's result
   * when it was carried out, undefined when it was not. Asked before a call that is not idempotent is repeated,
   * and before any call that had such an attempt fails (so a create answered "already exists" returns what the
   * earlier attempt made). It should use the client's `uninterrupted()` calls, since it also runs after an interrupt.
   */
  recover?: () => Promise<T | undefined>;
}

/** What every REST client built on the core takes from its caller. */
export interface RestClientOptions {
  logger?: Logger;
  /** Over the service's defaults. */
  retry?: Partial<RetryPolicy>;
  /** Per attempt: the limit for the response headers and for each pause in the body. */
  timeoutMs?: number;
  dispatcher?: Dispatcher;
  /**
   * Aborted on SIGINT/SIGTERM. It cuts the current request or wait short with a KVX_INTERRUPTED error, and no call
   * starts after it, except through the client's `uninterrupted()` sibling.
   */
  interrupt?: AbortSignal;
}

/** What the client says about its service. */
export interface RestService {
  /** In log lines and messages: `MLflow`, `Vertex AI`. */
  name: string;
  retry: RetryPolicy;
  timeoutMs: number;
  /** Credentials and the service's fixed headers for one attempt. */
  headers(label: string): Promise<Record<string, string>>;
  /** After a 401, once per call: refreshes the credentials `sent` carried; the call is then sent again. */
  refreshAfter401?(sent: Record<string, string>): Promise<void>;
  /** The error for a final non-2xx answer. */
  apiError(label: string, reply: RestReply): Error;
  /** The error for a 2xx answer that is not JSON. */
  notJson(label: string, reply: RestReply): Error;
  /**
   * The error for a request that got no answer. `detail` is the network error's code and message, and why the
   * call was not sent again when that is why.
   */
  unreachable(label: string, url: string, detail: string, cause: unknown): Error;
}

/** Statuses that say the server did not act on the request, so any call may be sent again. */
const NOT_ACTED_STATUSES: ReadonlySet<number> = new Set([408, 429]);

/** Failures before the request left: the connection was never made, so any call may be sent again. */
const NOT_SENT_CODES: ReadonlySet<string> = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL', 'UND_ERR_CONNECT_TIMEOUT']);

/** What calls that run after an interrupt may spend: a few quick retries, no long waits. */
const AFTER_INTERRUPT: RetryPolicy = { maxRetries: 2, backoffFactorMs: 500, jitterMs: 250, maxDelayMs: 2000 };
const AFTER_INTERRUPT_TIMEOUT_MS = 15_000;

const USER_AGENT = `kvx-launch/${VERSION}`;

/** The code a network error carries, on itself or on its cause (undici wraps some). */
export function networkErrorCode(err: unknown): string | undefined {
  return (err as { code?: string }).code ?? (err as { cause?: { code?: string } }).cause?.code;
}

/** A network error as one line: its code and message. */
export function networkErrorText(err: unknown): string {
  return [networkErrorCode(err), errorMessage(err)].filter(Boolean).join(': ');
}

export class RestCore {
  private readonly interruptible: boolean;
  private sibling: RestCore | undefined;

  private readonly retry: RetryPolicy;
  private readonly timeoutMs: number;
  private readonly logger: Logger;

  /**
   * `interruptible: false` is for the calls that leave things in order after an interrupt (ending a run,
   * cancelling a job): the interrupt does not cut them short, and once it has fired they retry only briefly, so
   * the program still ends promptly.
   */
  constructor(
    private readonly options: RestClientOptions,
    private readonly service: RestService,
    interruptible = true,
  ) {
    this.interruptible = interruptible;
    this.retry = { ...service.retry, ...options.retry };
    this.timeoutMs = options.timeoutMs ?? service.timeoutMs;
    this.logger = options.logger ?? silentLogger;
  }

  /** The same service, for calls an interrupt must not cut short. */
  uninterrupted(): RestCore {
    if (!this.interruptible) return this;
    return (this.sibling ??= new RestCore(this.options, this.service, false));
  }

  async call<T>(c: RestCall<T>): Promise<T> {
    const { logger } = this;
    const service = this.service.name;
    const name = `${service} ${c.label}`;
    // True while an attempt may have been carried out without our seeing the answer.
    let unknown = false;
    let refreshed = false;
    for (let attempt = 0; ; attempt++) {
      if (this.interruptible && this.interrupted()) throw this.interruptError(`before ${name}`);
      const sent = await this.service.headers(c.label);
      let reply: RestReply | undefined;
      let retryAfter: string | string[] | undefined;
      let networkError: unknown;
      try {
        const res = await this.send(c, sent);
        retryAfter = res.headers['retry-after'];
        reply = { status: res.statusCode, text: await res.body.text() };
      } catch (err) {
        networkError = err;
      }

      let failure: Failure;
      if (reply === undefined) {
        if (this.interruptible && this.interrupted()) return this.giveUp(c, true, this.interruptError(`during ${name}`));
        const code = networkErrorCode(networkError);
        failure = {
          acted: !NOT_SENT_CODES.has(code ?? ''),
          error: (notRepeated) =>
            this.service.unreachable(c.label, c.url, `${networkErrorText(networkError)}${notRepeated === undefined ? '' : `; not sent again: ${notRepeated}`}`, networkError),
          what: code ?? 'a network error',
          log: { error: networkErrorText(networkError) },
        };
      } else {
        if (reply.status === 401 && !refreshed && this.service.refreshAfter401 !== undefined) {
          refreshed = true;
          logger.info(`${service} answered 401; refreshing credentials and retrying once`, { call: c.label });
          await this.service.refreshAfter401(sent);
          attempt--;
          continue;
        }
        if (reply.status >= 200 && reply.status < 300) return this.parse(c, reply);
        const error = this.service.apiError(c.label, reply);
        if (!RETRYABLE_STATUSES.has(reply.status)) return this.giveUp(c, unknown, error);
        failure = { acted: !NOT_ACTED_STATUSES.has(reply.status), error: () => error, what: String(reply.status), log: { status: reply.status } };
      }

      unknown ||= failure.acted;
      if (failure.acted && !c.idempotent && c.recover === undefined) {
        return this.giveUp(c, unknown, failure.error('the server may have acted on it, and the call is not safe to repeat'));
      }
      const policy = this.policy();
      if (attempt >= policy.maxRetries) return this.giveUp(c, unknown, failure.error());
      const delay = backoffDelayMs(policy, attempt + 1, parseRetryAfter(retryAfter));
      logger.warn(reply === undefined ? `${service} request failed; retrying` : `${service} answered a retryable status; retrying`, {
        call: c.label,
        ...failure.log,
        delayMs: Math.round(delay),
      });
      try {
        await this.waitToRetry(delay);
      } catch {
        return this.giveUp(c, unknown, this.interruptError(`while waiting ${Math.round(delay / 1000)} s to retry ${name} after ${failure.what}`));
      }
      if (unknown && !c.idempotent && c.recover !== undefined) {
        const { found, known } = await this.recovered(c);
        if (found !== undefined) {
          logger.info(`${service} had carried out the call whose answer was lost; not sending it again`, { call: c.label });
          return found;
        }
        if (!known) throw failure.error('the server may have acted on it, and what it did could not be looked up');
        unknown = false;
      }
    }
  }

  private send(c: RestCall<unknown>, sent: Record<string, string>): Promise<Dispatcher.ResponseData> {
    const timeoutMs = this.interrupted() ? Math.min(this.timeoutMs, AFTER_INTERRUPT_TIMEOUT_MS) : this.timeoutMs;
    const signal = this.interruptible ? this.options.interrupt : undefined;
    return undici().request(c.url, {
      method: c.method,
      headers: {
        ...sent,
        'user-agent': USER_AGENT,
        accept: c.raw === true ? '*/*' : 'application/json',
        ...(c.body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      body: c.body === undefined ? undefined : JSON.stringify(c.body),
      headersTimeout: timeoutMs,
      bodyTimeout: timeoutMs,
      ...(signal === undefined ? {} : { signal }),
      ...(this.options.dispatcher === undefined ? {} : { dispatcher: this.options.dispatcher }),
    });
  }

  private parse<T>(c: RestCall<T>, reply: RestReply): T {
    if (c.raw === true) return reply.text as T;
    if (reply.text.trim() === '') return {} as T;
    try {
      return JSON.parse(reply.text) as T;
    } catch {
      throw this.service.notJson(c.label, reply);
    }
  }

  /** Rejects when the interrupt cuts the wait short; an uninterruptible call's wait is only shortened by it. */
  private async waitToRetry(delayMs: number): Promise<void> {
    const { interrupt } = this.options;
    if (this.interruptible) return sleep(delayMs, interrupt);
    if (interrupt === undefined || interrupt.aborted) return sleep(delayMs);
    return sleep(delayMs, interrupt).catch(() => sleep(Math.min(delayMs, AFTER_INTERRUPT.maxDelayMs)));
  }

  /** `recover`'s answer; when looking fails, that is logged and `known` is false. */
  private async recovered<T>(c: RestCall<T>): Promise<{ found: T | undefined; known: boolean }> {
    try {
      return { found: await c.recover!(), known: true };
    } catch (err) {
      this.logger.warn(`${this.service.name} may have carried out a call whose answer was lost, and looking for its result failed`, {
        call: c.label,
        error: errorMessage(err),
      });
      return { found: undefined, known: false };
    }
  }

  /** Fails the call, unless an attempt whose outcome is unknown turns out to have done what it was meant to. */
  private async giveUp<T>(c: RestCall<T>, unknown: boolean, err: Error): Promise<T> {
    if (unknown && c.recover !== undefined) {
      const { found } = await this.recovered(c);
      if (found !== undefined) return found;
    }
    throw err;
  }

  private policy(): RetryPolicy {
    const p = this.retry;
    if (!this.interrupted()) return p;
    return {
      maxRetries: Math.min(p.maxRetries, AFTER_INTERRUPT.maxRetries),
      backoffFactorMs: Math.min(p.backoffFactorMs, AFTER_INTERRUPT.backoffFactorMs),
      jitterMs: Math.min(p.jitterMs, AFTER_INTERRUPT.jitterMs),
      maxDelayMs: Math.min(p.maxDelayMs, AFTER_INTERRUPT.maxDelayMs),
    };
  }

  private interrupted(): boolean {
    return this.options.interrupt?.aborted === true;
  }

  /** `interrupted by SIGINT while waiting 120 s to retry MLflow POST runs/create after 429`. */
  private interruptError(context: string): KvxError {
    const reason: unknown = this.options.interrupt?.reason;
    const what = reason instanceof KvxError ? reason.message : 'interrupted';
    return new KvxError('KVX_INTERRUPTED', `${what} ${context}`, { cause: reason });
  }
}

/** One failed attempt, as the retry decision sees it. */
interface Failure {
  /** The server may have acted on the request. */
  acted: boolean;
  /** The call's error if it ends here; `notRepeated` says why it was not sent again. */
  error(notRepeated?: string): Error;
  /** For messages: `429`, `ECONNRESET`. */
  what: string;
  log: Record<string, unknown>;
}

/** undici's request(), for modules that share the core's lazy load of undici. */
export function undiciRequest(): typeof Undici.request {
  return undici().request;
}

/**
 * undici loaded on first use: kvx-proxy imports the MLflow client for its doctor command, and undici's entry point
 * would add about 80 ms to every proxy start.
 */
function undici(): typeof Undici {
  return lazyRequire('undici') as typeof Undici;
}
