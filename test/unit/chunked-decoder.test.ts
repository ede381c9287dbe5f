import { expect } from 'chai';
import { ChunkedDecoder, ChunkedError, isPlainChunked } from '../../src/proxy/wire/chunked.js';

const MAX_TRAILERS = 1024;

/** Decodes `wire` fed in the given pieces; returns the body, where the message ended in the last piece, and whether it did. */
function decode(pieces: Buffer[], maxTrailers = MAX_TRAILERS): { body: Buffer; done: boolean; end: number } {
  const decoder = new ChunkedDecoder(maxTrailers);
  const out: Buffer[] = [];
  for (const piece of pieces) {
    if (decoder.done) break;
    const body = decoder.decode(piece, 0);
    if (body) out.push(body);
  }
  return { body: Buffer.concat(out), done: decoder.done, end: decoder.end };
}

const frames = (...chunks: string[]): string => chunks.map((c) => `${Buffer.byteLength(c).toString(16)}\r\n${c}\r\n`).join('') + '0\r\n\r\n';

function failure(wire: string, maxTrailers = MAX_TRAILERS): ChunkedError {
  try {
    decode([Buffer.from(wire, 'latin1')], maxTrailers);
  } catch (err) {
    expect(err).to.be.instanceOf(ChunkedError);
    return err as ChunkedError;
  }
  expect.fail(`decoded without error: ${JSON.stringify(wire)}`);
}

describe('ChunkedDecoder: a chunked body decoded from raw reads', () => {
  it('decodes chunks, uppercase and lowercase sizes, into the body, and says where the message ended', () => {
    const wire = Buffer.from(`${frames('hello', ' ', 'world')}`.replace('1\r\n \r\n', '0001\r\n \r\n') + 'NEXT', 'latin1');
    const { body, done, end } = decode([wire]);
    expect(body.toString()).to.equal('hello world');
    expect(done).to.equal(true);
    expect(wire.subarray(end).toString()).to.equal('NEXT');
    const big = 'x'.repeat(0xabc);
    expect(decode([Buffer.from(`ABC\r\n${big}\r\n0\r\n\r\n`)]).body.toString()).to.equal(big);
  });

  it('gives the same body however the reads split the stream, down to one byte at a time', () => {
    const data = Array.from({ length: 40 }, (_, i) => String.fromCharCode(65 + (i % 26)).repeat(i * 7 + 1));
    const wire = Buffer.from(frames(...data).replace('\r\n0\r\n', '\r\n0;last=yes\r\nX-Trailer: t\r\n'), 'latin1');
    for (const size of [1, 2, 3, 5, 7, 64, 255, wire.length]) {
      const pieces: Buffer[] = [];
      for (let at = 0; at < wire.length; at += size) pieces.push(wire.subarray(at, at + size));
      const { body, done } = decode(pieces);
      expect(done, `split every ${size}`).to.equal(true);
      expect(body.toString(), `split every ${size}`).to.equal(data.join(''));
    }
  });

  it('ignores chunk extensions and drops trailer fields: only the data is the body', () => {
    const wire = '5;name=value;q="a b"\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-Other:\t2\r\n\r\n';
    const { body, done } = decode([Buffer.from(wire)]);
    expect(body.toString()).to.equal('hello');
    expect(done).to.equal(true);
  });

  it('returns each read\'s data as one buffer of its own (the writer frees it once written)', () => {
    const decoder = new ChunkedDecoder(MAX_TRAILERS);
    const out = decoder.decode(Buffer.from(frames(...Array.from({ length: 100 }, () => 'y'.repeat(255)))), 0)!;
    expect(out.length).to.equal(25_500);
    expect(out.byteOffset).to.equal(0);
    expect(out.buffer.byteLength).to.equal(out.length);
    expect(decoder.done).to.equal(true);
  });

  it('starts at the given offset (the body after the headers in the same read)', () => {
    const head = 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n';
    const decoder = new ChunkedDecoder(MAX_TRAILERS);
    const body = decoder.decode(Buffer.from(head + frames('abc')), head.length);
    expect(body!.toString()).to.equal('abc');
    expect(decoder.done).to.equal(true);
  });

  it('refuses malformed framing as llhttp does, with its error codes', () => {
    expect(failure('x\r\nhello\r\n0\r\n\r\n').code, 'not hex').to.equal('HPE_INVALID_CHUNK_SIZE');
    expect(failure(' 5\r\nhello\r\n0\r\n\r\n').code, 'space before the size').to.equal('HPE_INVALID_CHUNK_SIZE');
    expect(failure('5 \r\nhello\r\n0\r\n\r\n').code, 'space after the size').to.equal('HPE_INVALID_CHUNK_SIZE');
    expect(failure('-5\r\nhello\r\n0\r\n\r\n').code, 'negative').to.equal('HPE_INVALID_CHUNK_SIZE');
    expect(failure('20000000000000\r\n').code, 'above 2^53 - 1').to.equal('HPE_INVALID_CHUNK_SIZE');
    expect(failure('5\nhello\r\n0\r\n\r\n').code, 'bare LF after the size').to.equal('HPE_INVALID_CHUNK_SIZE');
    expect(failure('5\r\rhello\r\n0\r\n\r\n').code, 'CR CR after the size').to.equal('HPE_STRICT');
    expect(failure('5\r\nhelloX\r\n0\r\n\r\n').code, 'more data than the size').to.equal('HPE_STRICT');
    expect(failure('5\r\nhello\n0\r\n\r\n').code, 'bare LF after the data').to.equal('HPE_STRICT');
    expect(failure('5;a\nb\r\nhello\r\n0\r\n\r\n').code, 'LF inside an extension').to.equal('HPE_STRICT');
    expect(failure('5;a\0b\r\nhello\r\n0\r\n\r\n').code, 'NUL inside an extension').to.equal('HPE_STRICT');
    expect(failure(`5;${'e'.repeat(17_000)}\r\nhello\r\n0\r\n\r\n`).code, 'unbounded extensions').to.equal('HPE_CHUNK_EXTENSIONS_OVERFLOW');
    expect(failure('0\r\nBad Name: x\r\n\r\n').code, 'space in a trailer name').to.equal('HPE_INVALID_HEADER_TOKEN');
    expect(failure('0\r\n: x\r\n\r\n').code, 'empty trailer name').to.equal('HPE_INVALID_HEADER_TOKEN');
    expect(failure('0\r\nX-A: 1\n\r\n').code, 'bare LF after a trailer').to.equal('HPE_STRICT');
    expect(failure('0\r\nX-A: \x01\r\n\r\n').code, 'control character in a trailer').to.equal('HPE_STRICT');
    expect(failure('0\r\n\rX').code, 'no LF after the last chunk').to.equal('HPE_STRICT');
    expect(failure(`0\r\nX-Big: ${'v'.repeat(200)}\r\n\r\n`, 100).code, 'trailers over the limit').to.equal('HPE_HEADER_OVERFLOW');
  });

  it('is not done while the last chunk or its final CRLF is missing', () => {
    for (const cut of ['5\r\nhel', '5\r\nhello\r\n', '5\r\nhello\r\n0\r\n', '5\r\nhello\r\n0\r\nX-A: 1\r\n', '5\r\nhello\r\n0\r\n\r']) {
      expect(decode([Buffer.from(cut)]).done, JSON.stringify(cut)).to.equal(false);
    }
  });
});

describe('isPlainChunked: which answers kvx decodes itself', () => {
  it('is exactly one Transfer-Encoding: chunked, in any case and with surrounding spaces', () => {
    expect(isPlainChunked(['Content-Type', 'x', 'Transfer-Encoding', 'chunked'])).to.equal(true);
    expect(isPlainChunked(['transfer-encoding', ' Chunked '])).to.equal(true);
  });

  it('leaves every other framing to llhttp', () => {
    expect(isPlainChunked(['Content-Length', '5'])).to.equal(false);
    expect(isPlainChunked(['Transfer-Encoding', 'gzip, chunked'])).to.equal(false);
    expect(isPlainChunked(['Transfer-Encoding', 'chunked', 'Transfer-Encoding', 'chunked'])).to.equal(false);
    expect(isPlainChunked(['Transfer-Encoding', 'gzip'])).to.equal(false);
    expect(isPlainChunked([])).to.equal(false);
  });
});
