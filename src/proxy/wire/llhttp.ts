import { createRequire } from 'node:module';

/**
 * Node's own HTTP/1.1 parser (llhttp, in C++), the one node:http runs on. kvx parses both sides of every
 * exchange with it instead of going through node:http's server and undici's client: those cost about four
 * times the instructions per proxied request (see the README's design section), while the parser itself,
 * and with it every strictness rule against request smuggling, stays Node's.
 *
 * `_http_common` is an internal module, so its shape is checked once at load: a Node release that changes
 * it fails at start with a clear message rather than mid-request.
 */
export interface NativeParser {
  initialize(type: number, resource: object, maxHeaderSize: number, lenient: number): void;
  execute(data: Buffer): number | ParserError;
  finish(): number | ParserError | undefined;
  [callback: number]: unknown;
}

export interface ParserError extends Error {
  code: string;
  bytesParsed?: number;
}

interface HttpCommon {
  HTTPParser: (new () => NativeParser) & {
    REQUEST: number;
    RESPONSE: number;
    kOnMessageBegin: number;
    kOnHeaders: number;
    kOnHeadersComplete: number;
    kOnBody: number;
    kOnMessageComplete: number;
    kLenientNone: number;
  };
  methods: readonly string[];
}

function loadHttpCommon(): HttpCommon {
  // Written as `createRequire(import.meta.url)(...)`: the standalone build rewrites exactly that form.
  const common = createRequire(import.meta.url)('_http_common') as Partial<HttpCommon>;
  const parser = common.HTTPParser;
  if (
    typeof parser !== 'function' ||
    !Array.isArray(common.methods) ||
    typeof parser.kOnMessageBegin !== 'number' ||
    typeof parser.kOnHeadersComplete !== 'number' ||
    typeof parser.kOnBody !== 'number' ||
    typeof parser.kOnMessageComplete !== 'number' ||
    typeof parser.prototype.execute !== 'function'
  ) {
    throw new Error(`this Node.js (${process.version}) has no usable HTTP parser binding; kvx-proxy needs Node.js 22.19 or later`);
  }
  return common as HttpCommon;
}

const common = loadHttpCommon();
export const HTTPParser = common.HTTPParser;
export const METHODS = common.methods;
export const kOnMessageBegin = HTTPParser.kOnMessageBegin | 0;
export const kOnHeaders = HTTPParser.kOnHeaders | 0;
export const kOnHeadersComplete = HTTPParser.kOnHeadersComplete | 0;
export const kOnBody = HTTPParser.kOnBody | 0;
export const kOnMessageComplete = HTTPParser.kOnMessageComplete | 0;

/** What a kOnHeadersComplete callback may return: go on, or expect no body (the answer to a HEAD). */
export const PARSE_BODY = 0;
export const SKIP_BODY = 1;

export function newParser(type: 'request' | 'response', maxHeaderSize: number): NativeParser {
  const parser = new HTTPParser();
  parser.initialize(type === 'request' ? HTTPParser.REQUEST : HTTPParser.RESPONSE, {}, maxHeaderSize, HTTPParser.kLenientNone | 0);
  return parser;
}

/**
 * Headers arrive in batches of 32 pairs through kOnHeaders when there are many; kOnHeadersComplete then
 * gets `undefined` and the batches must be joined, as node:http does.
 */
export class HeaderAccumulator {
  headers: string[] = [];
  url = '';

  add(headers: string[], url: string): void {
    for (let i = 0; i < headers.length; i++) this.headers.push(headers[i]!);
    this.url += url;
  }

  take(headers: string[] | undefined, url: string | undefined): [string[], string] {
    const h = headers ?? this.headers;
    const u = url ?? this.url;
    if (headers === undefined) this.headers = [];
    if (url === undefined) this.url = '';
    return [h, u];
  }
}
