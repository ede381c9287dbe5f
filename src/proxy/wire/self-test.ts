import { HTTPParser, HeaderAccumulator, METHODS, PARSE_BODY, SKIP_BODY, kOnBody, kOnHeaders, kOnHeadersComplete, kOnMessageBegin, kOnMessageComplete } from './llhttp.js';
import type { HeadersComplete, NativeParser } from './llhttp.js';

/**
 * The wire engine's start-up self-test. The load-time guard in llhttp.ts proves that `_http_common`'s names
 * exist; this proves that they behave as the engine relies on: canned requests and responses (chunked, with
 * trailers, pipelined, a header block of more than 32 pairs that llhttp hands over in batches, a HEAD answer
 * whose body is skipped, a 1xx before its answer, a smuggling attempt) are fed through the parser in pieces that
 * split them across reads, and what the callbacks receive is compared with what the messages say. A Node that
 * reorders the headers-complete arguments, changes the batching, the skip-body return value or the strictness
 * fails here, at start, instead of mid-request. It takes well under a millisecond.
 */

interface Message {
  versionMinor: number;
  method: string;
  url: string;
  status: number;
  reason: string;
  keepAlive: boolean;
  upgrade: boolean;
  headers: string[];
  body: string;
  complete: boolean;
}

const MANY = 40;
const manyHeaders = Array.from({ length: MANY }, (_, i) => `X-H${i}: v${i}\r\n`).join('');

const REQUESTS =
  'POST /up?x=1 HTTP/1.1\r\nHost: kvx\r\nTransfer-Encoding: chunked\r\nX-Case: MiXed\r\n\r\n' +
  '5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n' +
  `GET /many HTTP/1.1\r\nHost: kvx\r\n${manyHeaders}\r\n` +
  'DELETE /last HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc';

const RESPONSES =
  'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Head: 1\r\n\r\n' +
  'HTTP/1.1 100 Continue\r\n\r\n' +
  'HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n' +
  'HTTP/1.1 404 Not Here\r\nConnection: close\r\nContent-Length: 2\r\n\r\nno';

/** A request with both framings: llhttp must refuse it (request smuggling). */
const SMUGGLED = 'POST / HTTP/1.1\r\nHost: kvx\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n';

export type ParserFactory = () => NativeParser;

/** Runs the self-test; returns what misbehaved, or undefined when the parser behaves as the engine expects. */
export function parserSelfTest(make: ParserFactory = () => new HTTPParser()): string | undefined {
  try {
    return checkRequests(make) ?? checkResponses(make) ?? checkStrictness(make);
  } catch (err) {
    return `the parser threw: ${err instanceof Error ? err.message : String(err)}`;
  }
}

function checkRequests(make: ParserFactory): string | undefined {
  const messages = parse(make, 'request', REQUESTS, [7, 60, 61, 140, 190, 300]);
  if (typeof messages === 'string') return messages;
  if (messages.length !== 3) return `${messages.length} requests parsed from 3 pipelined ones`;
  const [post, many, last] = messages as [Message, Message, Message];
  const manyExpected = ['Host', 'kvx'];
  for (let i = 0; i < MANY; i++) manyExpected.push(`X-H${i}`, `v${i}`);
  return (
    expect('chunked request', post, { method: 'POST', url: '/up?x=1', versionMinor: 1, keepAlive: true, upgrade: false, body: 'hello world', complete: true }) ??
    expectHeaders('chunked request', post.headers, ['Host', 'kvx', 'Transfer-Encoding', 'chunked', 'X-Case', 'MiXed']) ??
    expect('request after trailers', many, { method: 'GET', url: '/many', versionMinor: 1, keepAlive: true, body: '', complete: true }) ??
    expectHeaders(`request with ${MANY + 1} headers`, many.headers, manyExpected) ??
    expect('HTTP/1.0 request', last, { method: 'DELETE', url: '/last', versionMinor: 0, keepAlive: false, body: 'abc', complete: true }) ??
    expectHeaders('HTTP/1.0 request', last.headers, ['Content-Length', '3'])
  );
}

function checkResponses(make: ParserFactory): string | undefined {
  // The first answers a HEAD: its Content-Length announces no bytes here; a 1xx ends at its blank line.
  const messages = parse(make, 'response', RESPONSES, [3, 30, 51, 77, 110, 150], (index) => (index <= 1 ? SKIP_BODY : PARSE_BODY));
  if (typeof messages === 'string') return messages;
  if (messages.length !== 4) return `${messages.length} responses parsed from 4 (a HEAD answer, a 100, a chunked one, a close)`;
  const [head, interim, chunked, close] = messages as [Message, Message, Message, Message];
  return (
    expect('answer to HEAD', head, { status: 200, reason: 'OK', keepAlive: true, body: '', complete: true }) ??
    expectHeaders('answer to HEAD', head.headers, ['Content-Length', '5', 'X-Head', '1']) ??
    expect('100 Continue', interim, { status: 100, reason: 'Continue', body: '', complete: true }) ??
    expect('chunked response', chunked, { status: 201, reason: 'Created', versionMinor: 1, keepAlive: true, body: 'abc', complete: true }) ??
    expect('response with Connection: close', close, { status: 404, reason: 'Not Here', keepAlive: false, body: 'no', complete: true })
  );
}

function checkStrictness(make: ParserFactory): string | undefined {
  const parser = make();
  try {
    parser.initialize(HTTPParser.REQUEST, {}, 16 * 1024, HTTPParser.kLenientNone | 0);
    parser[kOnHeadersComplete] = () => PARSE_BODY;
    const result = parser.execute(Buffer.from(SMUGGLED, 'latin1'));
    if (typeof result === 'number') return 'a request with both Content-Length and Transfer-Encoding was accepted';
    if (typeof result.code !== 'string' || !result.code.startsWith('HPE_')) return `a refused request gave no HPE_ error code (${String(result.code)})`;
    return undefined;
  } finally {
    parser.close();
  }
}

/** Feeds `text` in pieces cut at `cuts`; returns the messages as the engine would see them, or what went wrong. */
function parse(make: ParserFactory, type: 'request' | 'response', text: string, cuts: number[], onHeaders?: (index: number) => number): Message[] | string {
  const parser = make();
  const messages: Message[] = [];
  const accumulator = new HeaderAccumulator();
  let current: Message | undefined;
  let began = 0;
  try {
    parser.initialize(type === 'request' ? HTTPParser.REQUEST : HTTPParser.RESPONSE, {}, 16 * 1024, HTTPParser.kLenientNone | 0);
    parser[kOnMessageBegin] = () => {
      began++;
    };
    parser[kOnHeaders] = (headers: string[], url: string) => accumulator.add(headers, url);
    const onHeadersComplete: HeadersComplete = (_major, minor, rawHeaders, method, url, status, reason, upgrade, keepAlive) => {
      const [headers, target] = accumulator.take(rawHeaders, url);
      current = {
        versionMinor: minor,
        method: type === 'request' ? (METHODS[method] ?? `#${String(method)}`) : '',
        url: type === 'request' ? target : '',
        status: type === 'response' ? status : 0,
        reason: type === 'response' ? reason : '',
        keepAlive,
        upgrade,
        headers,
        body: '',
        complete: false,
      };
      messages.push(current);
      return onHeaders ? onHeaders(messages.length - 1) : PARSE_BODY;
    };
    parser[kOnHeadersComplete] = onHeadersComplete;
    parser[kOnBody] = (chunk: Buffer) => {
      if (!Buffer.isBuffer(chunk)) throw new Error('body callback received no Buffer');
      if (current) current.body += chunk.toString('latin1');
    };
    parser[kOnMessageComplete] = () => {
      accumulator.reset();
      if (current) current.complete = true;
      current = undefined;
    };
    const data = Buffer.from(text, 'latin1');
    let from = 0;
    for (const to of [...cuts, data.length]) {
      const piece = data.subarray(from, to);
      from = to;
      const result = parser.execute(piece);
      if (typeof result !== 'number') return `the canned ${type}s were refused (${result.code})`;
      if (result !== piece.length) return `execute consumed ${result} of ${piece.length} bytes`;
    }
    if (began !== messages.length) return `${began} message starts for ${messages.length} headers-complete callbacks`;
    return messages;
  } finally {
    parser.close();
  }
}

function expect(what: string, message: Message, expected: Partial<Message>): string | undefined {
  for (const key of Object.keys(expected) as (keyof Message)[]) {
    if (message[key] !== expected[key]) return `${what}: ${key} is ${JSON.stringify(message[key])}, expected ${JSON.stringify(expected[key])}`;
  }
  return undefined;
}

function expectHeaders(what: string, headers: unknown, expected: string[]): string | undefined {
  if (!Array.isArray(headers)) return `${what}: headers are not a list`;
  if (headers.length !== expected.length) return `${what}: ${headers.length / 2} header pairs, expected ${expected.length / 2}`;
  for (let i = 0; i < expected.length; i++) {
    if (headers[i] !== expected[i]) return `${what}: header item ${i} is ${JSON.stringify(headers[i])}, expected ${JSON.stringify(expected[i])}`;
  }
  return undefined;
}
