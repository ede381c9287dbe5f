import { isHeader } from '../header-names.js';
/**
 * A chunked response body, decoded in JavaScript straight from the socket's reads instead of by llhttp.
 *
 * llhttp hands every chunk's data to JavaScript through its own callback, with a fresh native Buffer each:
 * MLflow's server sends an artifact as ~255-byte chunks, about 4,000 per MB, and those callbacks and buffers
 * were most of kvx's CPU on such a download (3.4 ms per MB against nginx's 0.8). Here a read's chunks are
 * found by one scan and their data copied into one buffer per read, which the forwarder writes as one chunk
 * frame of its own.
 *
 * As strict as llhttp without its lenient flags where it matters: the size is hex digits with nothing
 * before or after them (no spaces), up to 2^53 - 1; every line ends in CRLF (no bare LF or CR); data is
 * followed by CRLF; trailer fields are `token ":" value` lines, bounded in total, and dropped (kvx forwards no
 * trailers, as before). Chunk extensions are checked for their characters only (visible, space, tab) and
 * bounded: they are dropped, never forwarded, so their inner syntax cannot reach anyone.
 */

/** Error codes as llhttp names the same faults, so the forwarder classifies them alike. */
export type ChunkedErrorCode = 'HPE_INVALID_CHUNK_SIZE' | 'HPE_STRICT' | 'HPE_CHUNK_EXTENSIONS_OVERFLOW' | 'HPE_INVALID_HEADER_TOKEN' | 'HPE_HEADER_OVERFLOW';

export class ChunkedError extends Error {
  constructor(
    readonly code: ChunkedErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'ChunkedError';
  }
}

/** A chunk's size line (the size and its extensions) longer than this is refused, as node bounds extensions. */
const MAX_SIZE_LINE_BYTES = 16 * 1024;
/** A chunk larger than a JavaScript number counts exactly is refused (llhttp's limit is 2^64 - 1). */
const MAX_CHUNK_BYTES = Number.MAX_SAFE_INTEGER;

const enum State {
  /** The first digit of a chunk size. */
  SizeStart,
  Size,
  Extension,
  /** The LF of the size line. */
  SizeLf,
  Data,
  DataCr,
  DataLf,
  /** After the last chunk: a trailer field, or the CR of the final empty line. */
  TrailerStart,
  Trailer,
  TrailerLf,
  FinalLf,
  Done,
}

const CR = 13;
const LF = 10;
const COLON = 58;

/** Hex digit values by byte; -1 for others. */
const HEX = new Int8Array(256).fill(-1);
for (let i = 0; i < 10; i++) HEX[48 + i] = i;
for (let i = 0; i < 6; i++) HEX[65 + i] = HEX[97 + i] = 10 + i;

/** RFC 9110 tchar, for trailer field names. */
const TOKEN = new Uint8Array(256);
for (const c of "!#$%&'*+-.^_`|~") TOKEN[c.charCodeAt(0)] = 1;
for (let i = 48; i < 58; i++) TOKEN[i] = 1;
for (let i = 65; i < 91; i++) TOKEN[i] = TOKEN[i + 32] = 1;

/** Bytes allowed in a chunk extension or a trailer value: SP, HTAB, VCHAR, obs-text. */
const TEXT = new Uint8Array(256);
TEXT[9] = TEXT[32] = 1;
for (let i = 33; i < 127; i++) TEXT[i] = 1;
for (let i = 128; i < 256; i++) TEXT[i] = 1;

/** Data ranges of the read being decoded, [start, end) pairs; reused from read to read. */
const ranges: number[] = [];

export class ChunkedDecoder {
  private state = State.SizeStart;
  /** Data bytes left in the current chunk, or the size being read. */
  private remaining = 0;
  private lineBytes = 0;
  private trailerBytes = 0;
  private trailerNameBytes = 0;
  private sawColon = false;
  /** Where in the last decoded read the message ended (after the final CRLF); valid once `done`. */
  end = 0;

  constructor(private readonly maxTrailerBytes: number) {}

  get done(): boolean {
    return this.state === State.Done;
  }

  /**
   * Decodes `data` from `start`, returning the body bytes it held in one new buffer (undefined if none).
   * Throws a ChunkedError on malformed framing. Once the message has ended (`done`), `end` is where; the
   * bytes after it belong to no answer and are not read.
   */
  decode(data: Buffer, start: number): Buffer | undefined {
    const length = data.length;
    let at = start;
    let total = 0;
    ranges.length = 0;
    let state = this.state;
    let remaining = this.remaining;
    while (at < length && state !== State.Done) {
      switch (state) {
        case State.Data: {
          const take = Math.min(remaining, length - at);
          ranges.push(at, at + take);
          total += take;
          at += take;
          remaining -= take;
          if (remaining === 0) state = State.DataCr;
          break;
        }
        case State.SizeStart: {
          const digit = HEX[data[at]!]!;
          if (digit < 0) throw new ChunkedError('HPE_INVALID_CHUNK_SIZE', 'invalid character in chunk size');
          remaining = digit;
          this.lineBytes = 1;
          state = State.Size;
          at++;
          break;
        }
        case State.Size: {
          const c = data[at]!;
          const digit = HEX[c]!;
          if (digit >= 0) {
            if (remaining > (MAX_CHUNK_BYTES - digit) / 16) throw new ChunkedError('HPE_INVALID_CHUNK_SIZE', 'chunk size overflow');
            remaining = remaining * 16 + digit;
            this.lineBytes++;
            at++;
          } else if (c === CR) {
            state = State.SizeLf;
            at++;
          } else if (c === 59 /* ';' */) {
            state = State.Extension;
            this.lineBytes++;
            at++;
          } else throw new ChunkedError('HPE_INVALID_CHUNK_SIZE', 'invalid character in chunk size');
          break;
        }
        case State.Extension: {
          // Scanned in one run up to the CR; extensions are ignored (RFC 9112 §7.1.1) and not forwarded.
          let i = at;
          while (i < length && TEXT[data[i]!] === 1) i++;
          this.lineBytes += i - at;
          if (this.lineBytes > MAX_SIZE_LINE_BYTES) throw new ChunkedError('HPE_CHUNK_EXTENSIONS_OVERFLOW', 'chunk extensions too long');
          at = i;
          if (at < length) {
            if (data[at] !== CR) throw new ChunkedError('HPE_STRICT', 'invalid character in chunk extensions');
            state = State.SizeLf;
            at++;
          }
          break;
        }
        case State.SizeLf:
          if (data[at] !== LF) throw new ChunkedError('HPE_STRICT', 'expected LF after chunk size');
          at++;
          state = remaining === 0 ? State.TrailerStart : State.Data;
          break;
        case State.DataCr:
          if (data[at] !== CR) throw new ChunkedError('HPE_STRICT', 'expected CRLF after chunk data');
          at++;
          state = State.DataLf;
          break;
        case State.DataLf:
          if (data[at] !== LF) throw new ChunkedError('HPE_STRICT', 'expected LF after chunk data');
          at++;
          state = State.SizeStart;
          break;
        case State.TrailerStart: {
          const c = data[at]!;
          if (c === CR) {
            state = State.FinalLf;
            at++;
            break;
          }
          if (TOKEN[c] !== 1) throw new ChunkedError('HPE_INVALID_HEADER_TOKEN', 'invalid trailer field name');
          this.trailerNameBytes = 0;
          this.sawColon = false;
          state = State.Trailer;
          break;
        }
        case State.Trailer: {
          const c = data[at]!;
          if (++this.trailerBytes > this.maxTrailerBytes) throw new ChunkedError('HPE_HEADER_OVERFLOW', 'trailers too large');
          at++;
          if (!this.sawColon) {
            if (c === COLON && this.trailerNameBytes > 0) this.sawColon = true;
            else if (TOKEN[c] === 1) this.trailerNameBytes++;
            else throw new ChunkedError('HPE_INVALID_HEADER_TOKEN', 'invalid trailer field name');
          } else if (c === CR) state = State.TrailerLf;
          else if (TEXT[c] !== 1) throw new ChunkedError('HPE_STRICT', 'invalid character in trailer value');
          break;
        }
        case State.TrailerLf:
          if (data[at] !== LF) throw new ChunkedError('HPE_STRICT', 'expected LF after trailer field');
          at++;
          state = State.TrailerStart;
          break;
        case State.FinalLf:
          if (data[at] !== LF) throw new ChunkedError('HPE_STRICT', 'expected LF after the last chunk');
          at++;
          state = State.Done;
          this.end = at;
          break;
      }
    }
    this.state = state;
    this.remaining = remaining;
    if (total === 0) return undefined;
    // One buffer of the exact size, owning its memory: the writer frees it as soon as it is written.
    const out = Buffer.allocUnsafeSlow(total);
    let offset = 0;
    for (let i = 0; i < ranges.length; i += 2) {
      offset += data.copy(out, offset, ranges[i]!, ranges[i + 1]!);
    }
    return out;
  }
}

/**
 * Whether a response's framing is exactly `Transfer-Encoding: chunked` (one such header, nothing else in it):
 * the case decoded here. Anything rarer (several codings, several headers) stays with llhttp.
 */
export function isPlainChunked(headers: readonly string[]): boolean {
  let found = false;
  for (let i = 0; i < headers.length; i += 2) {
    const name = headers[i]!;
    if (!isHeader(name, 'transfer-encoding')) continue;
    if (found) return false;
    found = true;
    if (headers[i + 1]!.trim().toLowerCase() !== 'chunked') return false;
  }
  return found;
}
