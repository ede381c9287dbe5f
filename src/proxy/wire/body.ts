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

/** Whether the chunk owns all of its memory and is worth freeing early. */
function releasable(chunk: Buffer): boolean {
  return chunk.length >= RELEASE_MIN_BYTES && chunk.byteOffset === 0 && chunk.buffer.byteLength === chunk.length;
}

/** Frees a chunk nothing will read again, now rather than at the next garbage collection (see writeBodyChunk). */
export function releaseNow(chunk: Buffer): void {
  if (releasable(chunk)) release(chunk);
}
