import type { Socket } from 'node:net';

/** Body chunks at least this large are freed as soon as they are written (see writeBodyChunk). */
const RELEASE_MIN_BYTES = 16 * 1024;

const release = (chunk: Buffer): void => {
  // ES2024's ArrayBuffer.prototype.transfer (Node 22+); the project's lib setting predates it.
  (chunk.buffer as ArrayBuffer & { transfer(length: number): ArrayBuffer }).transfer(0);
};

/**
 * Writes a chunk nothing will read again and frees its memory as soon as the socket is done with it, rather
 * than at V8's next garbage collection. Each chunk the parser hands over is a fresh native allocation;
 * left to the collector, the dead ones of a fast transfer held 70 MB or more of the process's heap at any time.
 * Detaching the chunk's own ArrayBuffer after the write completed frees it at once. Chunks sharing their memory
 * with other data are written plainly.
 */
function writeReleasing(socket: Socket, chunk: Buffer): boolean {
  if (releasable(chunk)) return socket.write(chunk, () => release(chunk));
  return socket.write(chunk);
}

/**
 * Writes one chunk of a body that nothing will read again, with chunked framing when `chunked`; false means
 * wait for 'drain'. Framing and data leave in one writev.
 */
export function writeBodyChunk(socket: Socket, chunk: Buffer, chunked: boolean): boolean {
  if (!chunked) return writeReleasing(socket, chunk);
  socket.cork();
  socket.write(chunk.length.toString(16) + '\r\n', 'latin1');
  writeReleasing(socket, chunk);
  const more = socket.write('\r\n', 'latin1');
  socket.uncork();
  return more;
}

/** A first chunk at most this large leaves in one buffer with the head (see writeHeadAndBody). */
const JOIN_MAX_BYTES = 4 * 1024;

/**
 * Writes a response head and the first chunk of its body. A small chunk is copied behind the head into one
 * buffer and sent with one plain write; a corked string and buffer go through the stream's writev path,
 * which cost about a tenth of the instructions kvx spends on a 1 KB GET (callgrind). A larger chunk is not
 * worth the copy.
 */
export function writeHeadAndBody(socket: Socket, head: string, chunk: Buffer, chunked: boolean): boolean {
  if (chunk.length > JOIN_MAX_BYTES) {
    socket.cork();
    socket.write(head, 'latin1');
    const more = writeBodyChunk(socket, chunk, chunked);
    socket.uncork();
    return more;
  }
  const prefix = chunked ? `${head}${chunk.length.toString(16)}\r\n` : head;
  const out = Buffer.allocUnsafe(prefix.length + chunk.length + (chunked ? 2 : 0));
  let at = out.write(prefix, 0, 'latin1');
  at += chunk.copy(out, at);
  if (chunked) out.write('\r\n', at, 'latin1');
  return socket.write(out);
}

/** Whether the chunk owns all of its memory and is worth freeing early. */
function releasable(chunk: Buffer): boolean {
  return chunk.length >= RELEASE_MIN_BYTES && ownsMemory(chunk);
}

const ownsMemory = (chunk: Buffer): boolean => chunk.byteOffset === 0 && chunk.buffer.byteLength === chunk.length;

/** Frees a chunk nothing will read again, now rather than at the next garbage collection (see writeBodyChunk). */
export function releaseNow(chunk: Buffer): void {
  if (releasable(chunk)) release(chunk);
}

/** Pieces smaller than this are gathered; larger ones are worth their own write and are not copied. */
const GATHER_MAX_PIECE = RELEASE_MIN_BYTES;
/** A batch is passed on once it holds this much, whatever the read still delivers. */
const BATCH_MAX_BYTES = 64 * 1024;

/**
 * Gathers the body pieces llhttp delivers during one parse of a read, so that they leave in one write with
 * one chunk frame. MLflow's server sends an artifact as HTTP chunks of about 255 bytes, some 250 of them per
 * 64 KiB read: written one by one they cost a system call and a chunk frame each (a writev per 255 bytes,
 * about 16 ms of CPU per MB, a third of node:http's speed). The owner calls `flush` at the end of every parse
 * (kOnExecute, or after `execute` returns) and before the message completes, so nothing waits for a timer
 * and what is held never exceeds one read. Small pieces are copied into one buffer (which, being large and
 * owning its memory, is freed as soon as it is written, see writeBodyChunk) and freed; a large piece goes on
 * as it is, after the smaller ones before it.
 */
export class BodyBatch {
  private readonly pieces: Buffer[] = [];
  private bytes = 0;

  constructor(private readonly deliver: (chunk: Buffer) => void) {}

  add(chunk: Buffer): void {
    if (chunk.length >= GATHER_MAX_PIECE) {
      this.flush();
      this.deliver(chunk);
      return;
    }
    this.pieces.push(chunk);
    this.bytes += chunk.length;
    if (this.bytes >= BATCH_MAX_BYTES) this.flush();
  }

  flush(): void {
    const pieces = this.pieces;
    if (pieces.length === 0) return;
    let chunk = pieces[0]!;
    if (pieces.length > 1) {
      chunk = Buffer.concat(pieces, this.bytes);
      // Each piece is its own native allocation; freed now, a fast download's dead pieces do not pile up
      // until the collector runs (peak RSS 88-95 MB over a 100 MB download in 255-byte chunks, 94-131 MB without).
      for (const piece of pieces) if (ownsMemory(piece)) release(piece);
    }
    pieces.length = 0;
    this.bytes = 0;
    this.deliver(chunk);
  }
}
