import { KvxError } from '../errors.js';
import type { KvxErrorCode } from '../errors.js';

/**
 * The one reader of repeatable `key=value` flags (pipeline params, job labels, provider params). A key given
 * twice is an error naming the flag and the key, never a silent override: which of two values was meant cannot
 * be guessed. Every problem is reported at once.
 *
 * `code` says whose input it is: a flag that sets configuration is a usage error (exit 2); a launch input
 * (pipeline params, labels) fails with the rest of that input's checks (KVX_LAUNCH_INPUT, exit 1).
 */
export function parseKeyValues(values: readonly string[], flag: string, options: { placeholder: string; code: KvxErrorCode }): Map<string, string> {
  const out = new Map<string, string>();
  const problems: string[] = [];
  for (const pair of values) {
    const eq = pair.indexOf('=');
    const key = eq === -1 ? '' : pair.slice(0, eq).trim();
    if (key === '') {
      problems.push(`${flag} "${pair}" is malformed: write ${flag} ${options.placeholder}`);
      continue;
    }
    if (out.has(key)) problems.push(`${flag} ${key} is given more than once`);
    out.set(key, pair.slice(eq + 1));
  }
  if (problems.length > 0) throw new KvxError(options.code, problems.join('\n'));
  return out;
}
