/** google-auth-library, for the credential kinds it parses and refreshes with endpoints we can set. */
import type * as GoogleAuthLibrary from 'google-auth-library';
import { errorMessage } from '../../errors.js';
import { lazyRequire } from '../../util/lazy-require.js';

/** google-auth-library takes about 50 ms to load; only credential files it parses need it, so it loads on first use. */
export function googleAuthLibrary(): typeof GoogleAuthLibrary {
  return lazyRequire('google-auth-library') as typeof GoogleAuthLibrary;
}

/** The OAuth error of a failed library call ({"error","error_description"}), else its message. */
export function libraryError(err: unknown): string {
  const data = (err as { response?: { data?: { error?: unknown; error_description?: unknown } } }).response?.data;
  if (data && typeof data.error === 'string') return `${data.error}${typeof data.error_description === 'string' ? `: ${data.error_description}` : ''}`;
  return errorMessage(err);
}
