/**
 * Replace a file atomically: a reader sees the old bytes or the new ones, never half a file, and the
 * new bytes are on disk (fsync) before the rename. npm's own write-file-atomic does the temp file,
 * fsync, rename and cleanup; this module is the one place that chooses it.
 */
import writeFileAtomic from 'write-file-atomic';

/** write-file-atomic takes strings and Buffers: view a Uint8Array as a Buffer without copying. */
function asBuffer(data: string | Uint8Array): string | Buffer {
  return typeof data === 'string' ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

export function writeFileAtomicSync(path: string, data: string | Uint8Array): void {
  writeFileAtomic.sync(path, asBuffer(data));
}

export async function writeFileAtomicAsync(path: string, data: string | Uint8Array): Promise<void> {
  await writeFileAtomic(path, asBuffer(data));
}
