import { expect } from 'chai';
import { EventEmitter } from 'node:events';
import { BatchedSink } from '../../src/log/batched-sink.js';
import { StreamSink } from '../../src/log/stream-sink.js';

/** A stream whose reader went away: the write is taken, the failure comes as an 'error' event (as a pipe's EPIPE). */
class BrokenPipe extends EventEmitter {
  writes = 0;
  write(): boolean {
    this.writes++;
    const err = Object.assign(new Error('write EPIPE'), { code: 'EPIPE' });
    process.nextTick(() => this.emit('error', err));
    return false;
  }
}

class Collector {
  readonly writes: string[] = [];
  write(chunk: Uint8Array | string): boolean {
    this.writes.push(typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8'));
    return true;
  }
  get text(): string {
    return this.writes.join('');
  }
}

const line = (i: number, pad = 0) => `{"n":${i},"pad":"${'x'.repeat(pad)}"}\n`;

describe('BatchedSink', function () {
  it('holds lines back and writes them in order, in one write, within 50 ms', async function () {
    const target = new Collector();
    const sink = new BatchedSink(target);
    for (let i = 0; i < 100; i++) sink.write(line(i));
    expect(target.writes).to.have.length(0);
    await new Promise((r) => setTimeout(r, 80));
    expect(target.writes).to.have.length(1);
    expect(target.text).to.equal(Array.from({ length: 100 }, (_, i) => line(i)).join(''));
  });

  it('writes as soon as 64 KiB are waiting, and keeps every byte of multi-byte text', function () {
    const target = new Collector();
    const sink = new BatchedSink(target);
    const expected: string[] = [];
    // 1,000 lines of about 300 bytes, some with 2-, 3- and 4-byte characters.
    for (let i = 0; i < 1000; i++) {
      const text = line(i, 250) + (i % 3 === 0 ? `{"μ":"漢字🙂"}\n` : '');
      expected.push(text);
      sink.write(text);
    }
    expect(target.writes.length).to.be.within(3, 6);
    for (const w of target.writes.slice(0, -1)) expect(Buffer.byteLength(w)).to.be.at.least(64 * 1024);
    sink.flush();
    expect(target.text).to.equal(expected.join(''));
  });

  it('writes a line longer than a batch on its own, after the lines before it', function () {
    const target = new Collector();
    const sink = new BatchedSink(target);
    sink.write(line(1));
    const long = line(2, 200_000);
    sink.write(long);
    sink.write(line(3));
    sink.flush();
    expect(target.writes).to.deep.equal([line(1), long, line(3)]);
  });

  it('does not reuse a batch the stream may still hold', function () {
    const held: Uint8Array[] = [];
    const sink = new BatchedSink({ write: (chunk: Uint8Array | string) => held.push(chunk as Uint8Array) });
    sink.write(line(1));
    sink.flush();
    sink.write(line(2));
    sink.flush();
    expect(held.map((b) => Buffer.from(b).toString())).to.deep.equal([line(1), line(2)]);
  });

  it('reuses its buffer only when the stream reports nothing left to write', function () {
    const texts: string[] = [];
    const chunks: Buffer[] = [];
    let writableLength = 0;
    const sink = new BatchedSink({
      write(chunk: Uint8Array | string) {
        texts.push(Buffer.from(chunk as Uint8Array).toString());
        chunks.push(chunk as Buffer);
      },
      get writableLength() {
        return writableLength;
      },
    });
    const flushLine = (i: number) => {
      sink.write(line(i));
      sink.flush();
    };
    flushLine(1);
    flushLine(2);
    expect(chunks[0]!.buffer).to.equal(chunks[1]!.buffer);
    writableLength = 100;
    flushLine(3);
    flushLine(4);
    expect(chunks[2]!.buffer).not.to.equal(chunks[3]!.buffer);
    expect(texts).to.deep.equal([line(1), line(2), line(3), line(4)]);
  });

  it('stops writing to a stream that failed with an error event, and says so once', async function () {
    const stream = new BrokenPipe();
    const lost: string[] = [];
    const sink = new BatchedSink(stream, (err) => lost.push(String(err.code)));
    sink.write(line(1));
    sink.flush();
    await new Promise((r) => setImmediate(r));
    for (let i = 0; i < 1000; i++) sink.write(line(i, 100));
    sink.flush();
    sink.write(line(2, 200_000));
    expect(stream.writes).to.equal(1);
    expect(lost).to.deep.equal(['EPIPE']);
  });

  it('stops writing to a stream whose write throws (a file on stdout with its disk full)', function () {
    let writes = 0;
    const lost: string[] = [];
    const sink = new BatchedSink(
      {
        write() {
          writes++;
          throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
        },
      },
      (err) => lost.push(String(err.code)),
    );
    sink.write(line(1));
    expect(() => sink.flush()).to.not.throw();
    sink.write(line(2));
    sink.flush();
    expect(writes).to.equal(1);
    expect(lost).to.deep.equal(['ENOSPC']);
  });
});

describe('StreamSink', function () {
  it('writes each line at once and none after the stream failed', async function () {
    const stream = new BrokenPipe();
    const lost: string[] = [];
    const sink = new StreamSink(stream, (err) => lost.push(String(err.code)));
    sink.write(line(1));
    expect(stream.writes).to.equal(1);
    await new Promise((r) => setImmediate(r));
    sink.write(line(2));
    sink.write(line(3));
    expect(stream.writes).to.equal(1);
    expect(lost).to.deep.equal(['EPIPE']);
  });
});
