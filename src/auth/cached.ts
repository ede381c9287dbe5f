import NodeCache from 'node-cache';

export interface CachedOptions {
  /** Seconds a result is kept. */
  ttl: number;
  /** Most results kept at once (one per instance and argument list); unlimited when unset. */
  maxKeys?: number;
}

export type CachedFunction<F extends (...args: never[]) => unknown> = F & {
  /** Forget every cached result, e.g. after the upstream rejected the token. */
  clear(): void;
};

/**
 * Caches a method's result for `ttl` seconds, per instance and arguments: the counterpart of
 * kedro-vertexai users' `@cached(TTLCache(1, ttl=3600))`. Works as a wrapper in plain JavaScript,
 *
 *     requestHeaders = cached({ ttl: 3000 })(async function () { ... })
 *
 * and as a TypeScript (standard) method decorator, `@cached({ ttl: 3000 })`. Unlike the Python recipe it
 * never caches a failure: a thrown error or rejected promise is forgotten at once, and concurrent calls
 * while a promise is pending share it.
 */
export function cached(options: CachedOptions) {
  if (!(typeof options?.ttl === 'number' && options.ttl > 0)) throw new TypeError('cached({ ttl }) needs ttl, a number of seconds above 0');
  return function wrap<F extends (...args: never[]) => unknown>(fn: F, _context?: unknown): CachedFunction<F> {
    if (typeof fn !== 'function') throw new TypeError('cached({ ttl }) wraps a function or method');
    const store = new NodeCache({ stdTTL: options.ttl, checkperiod: 0, useClones: false, maxKeys: options.maxKeys ?? -1 });
    const ids = new WeakMap<object, number>();
    let nextId = 0;
    const keyOf = (self: unknown, args: unknown[]): string => {
      let id = 0;
      if ((typeof self === 'object' || typeof self === 'function') && self !== null) {
        id = ids.get(self) ?? ++nextId;
        ids.set(self, id);
      }
      return `${id}:${args.length === 0 ? '' : JSON.stringify(args)}`;
    };
    const wrapped = function (this: unknown, ...args: unknown[]): unknown {
      const key = keyOf(this, args);
      const hit = store.get<{ value: unknown }>(key);
      if (hit !== undefined) return hit.value;
      const value = fn.apply(this, args as never[]);
      if (isThenable(value)) {
        const pending = Promise.resolve(value).catch((err: unknown) => {
          if (store.get<{ value: unknown }>(key)?.value === pending) store.del(key);
          throw err;
        });
        store.set(key, { value: pending });
        return pending;
      }
      store.set(key, { value });
      return value;
    } as unknown as CachedFunction<F>;
    wrapped.clear = () => store.flushAll();
    return wrapped;
  };
}

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return typeof (value as { then?: unknown } | null)?.then === 'function';
}
