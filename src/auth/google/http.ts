/** The HTTP calls kvx makes to Google's token endpoints, and the error text it shows from their answers. */
import type { Egress } from '../../config/egress.js';
import { errorMessage } from '../../errors.js';
import { egressRequest, failedInAnswer } from '../../net/egress-http.js';
import type { PlainRequest } from '../../net/egress-http.js';
import { TokenFetchError } from '../token.js';
import type { Json } from './source.js';

export interface GoogleAnswer {
  status: number;
  text: string;
  /** A header of the answer by lower-case name. */
  header(name: string): string | undefined;
}

/**
 * One request to a Google endpoint, through the egress proxy `egress` names for it (`proxy: false` for the
 * metadata server, which is link-local). Redirects are never followed: a token must not travel elsewhere.
 */
export async function googleCall(what: string, url: string, init: PlainRequest, egress: Egress, options: { proxy?: boolean } = {}): Promise<GoogleAnswer> {
  try {
    return await egressRequest(egress, url, init, options);
  } catch (err) {
    if (init.signal.aborted) throw init.signal.reason instanceof Error ? init.signal.reason : new TokenFetchError(`${what} did not answer in time`);
    if (failedInAnswer(err)) throw new TokenFetchError(`${what} broke off its answer: ${networkCause(err)}`);
    throw new TokenFetchError(`cannot reach ${what} (${new URL(url).origin}): ${networkCause(err)}`, { hint: 'check network access (proxy, firewall, VPC Service Controls) to that endpoint' });
  }
}

function networkCause(err: unknown): string {
  const { code, cause } = err as { code?: unknown; cause?: { code?: string; message?: string } };
  return cause?.code ?? cause?.message ?? (typeof code === 'string' ? code : errorMessage(err));
}

export function parseJson(answer: GoogleAnswer, what: string): Json {
  try {
    const json = JSON.parse(answer.text) as unknown;
    if (typeof json === 'object' && json !== null && !Array.isArray(json)) return json as Json;
  } catch {
    // fall through
  }
  throw new TokenFetchError(`${what} answered ${answer.status} with something that is not JSON: ${oneLine(answer.text)}`, {
    hint: 'a proxy or captive portal may be in the way; check the endpoint URL',
  });
}

/** Google's error text from either of its shapes: {"error":{"code","message","status"}} or OAuth's. */
export function googleError(answer: GoogleAnswer): string {
  try {
    const json = JSON.parse(answer.text) as { error?: unknown; error_description?: unknown };
    if (typeof json.error === 'object' && json.error !== null) {
      const e = json.error as { status?: unknown; message?: unknown };
      return `${answer.status} ${typeof e.status === 'string' ? e.status + ' ' : ''}${typeof e.message === 'string' ? e.message : ''}`.trim();
    }
    if (typeof json.error === 'string') {
      return `${json.error}${typeof json.error_description === 'string' ? `: ${json.error_description}` : ''}`;
    }
  } catch {
    // not JSON
  }
  return `${answer.status} ${oneLine(answer.text)}`.trim();
}

/**
 * Credentials inside an unexpected answer (a token under a field name we do not read, a JWT, a ya29 access
 * token, a refresh token): these answers are echoed into errors, which reach logs and 503 bodies.
 */
const CREDENTIAL_FIELD = /("[^"]*(?:token|secret|key|assertion|password|credential)[^"]*"\s*:\s*)"[^"]*"/gi;
const CREDENTIAL_VALUE = /\beyJ[\w-]*\.[\w-]*(?:\.[\w-]*)?|\bya29\.[\w.-]+|\b1\/\/[\w-]{10,}/g;

/** Error text is shown to users: one line, bounded, never a whole HTML page, never a credential. */
export function oneLine(text: string, max = 200): string {
  const flat = text.replace(/\s+/g, ' ').trim().replace(CREDENTIAL_FIELD, '$1"[REDACTED]"').replace(CREDENTIAL_VALUE, '[REDACTED]');
  return flat.length > max ? `${flat.slice(0, max)}…` : flat;
}
