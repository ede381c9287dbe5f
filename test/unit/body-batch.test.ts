import { expect } from 'chai';
import { BodyBatch } from '../../src/proxy/wire/body.js';

/** A buffer owning its own memory, as llhttp hands each body piece over. */
const owned = (length: number, fill: number): Buffer => {
  const b = Buffer.from(new ArrayBuffer(length));
  b.fill(fill);
  return b;
};

describe('BodyBatch: the body pieces of one read, passed on together', () => {
  let delivered: Buffer[];
  let batch: BodyBatch;

  beforeEach(() => {
    delivered = [];
    batch = new BodyBatch((chunk) => delivered.push(Buffer.from(chunk)));
  });

  it('passes small pieces on as one buffer at flush, in order, and nothing before', () => {
    for (let i = 0; i < 200; i++) batch.add(owned(255, i));
    expect(delivered).to.have.length(0);
    batch.flush();
    expect(delivered).to.have.length(1);
    expect(delivered[0]!.length).to.equal(200 * 255);
    for (let i = 0; i < 200; i++) expect(delivered[0]![i * 255], `piece ${i}`).to.equal(i);
    batch.flush();
    expect(delivered, 'an empty flush delivers nothing').to.have.length(1);
  });

  it('frees the pieces it copied (each is its own allocation, nothing reads it again)', () => {
    const pieces = [owned(255, 1), owned(255, 2)];
    for (const p of pieces) batch.add(p);
    batch.flush();
    for (const p of pieces) expect(p.buffer.byteLength, 'detached').to.equal(0);
    expect(delivered[0]!.equals(Buffer.concat([Buffer.alloc(255, 1), Buffer.alloc(255, 2)]))).to.equal(true);
  });

  it('passes a lone piece on as it is, without a copy', () => {
    const seen: Buffer[] = [];
    const lone = new BodyBatch((chunk) => seen.push(chunk));
    const piece = owned(300, 7);
    lone.add(piece);
    lone.flush();
    expect(seen[0]).to.equal(piece);
  });

  it('sends a large piece on its own, after the small ones before it, and keeps the ones after for the flush', () => {
    batch.add(owned(100, 1));
    batch.add(owned(100, 2));
    batch.add(owned(32 * 1024, 3));
    expect(delivered.map((b) => [b.length, b[0]])).to.deep.equal([
      [200, 1],
      [32 * 1024, 3],
    ]);
    batch.add(owned(100, 4));
    batch.flush();
    expect(delivered.map((b) => [b.length, b[0]])).to.deep.equal([
      [200, 1],
      [32 * 1024, 3],
      [100, 4],
    ]);
  });

  it('passes a batch on once it holds 64 KiB, without waiting for the flush', () => {
    for (let i = 0; i < 16; i++) batch.add(owned(4096, i));
    expect(delivered).to.have.length(1);
    expect(delivered[0]!.length).to.equal(64 * 1024);
    batch.add(owned(10, 99));
    batch.flush();
    expect(delivered.map((b) => b.length)).to.deep.equal([64 * 1024, 10]);
  });
});
