/**
 * Block quantisation into onnxruntime's MatMulNBits layout: B is [N, blocks, blockSize*bits/8]
 * (row n = output feature), scales [N*blocks], no zero points (the op's defaults, 8 for 4-bit and
 * 128 for 8-bit, make the codes symmetric).
 */

export interface QuantizedMatrix {
  packed: Uint8Array;
  scales: Float32Array;
  blocksPerRow: number;
  blobSize: number;
}

/** Quantises rows of a row-major [rows, k] float matrix. */
export function quantizeRows(w: Float32Array, rows: number, k: number, bits: 4 | 8, blockSize: number): QuantizedMatrix {
  const blocksPerRow = Math.ceil(k / blockSize);
  const blobSize = (blockSize * bits) / 8;
  const packed = new Uint8Array(rows * blocksPerRow * blobSize);
  const scales = new Float32Array(rows * blocksPerRow);
  const zero = bits === 4 ? 8 : 128;
  const qmax = bits === 4 ? 15 : 255;
  for (let r = 0; r < rows; r++) {
    const rowOff = r * k;
    for (let b = 0; b < blocksPerRow; b++) {
      const start = b * blockSize;
      const end = Math.min(start + blockSize, k);
      // Q4_0-style: the largest-magnitude value maps to -8 exactly, using all 16 codes.
      let amax = 0;
      let signedMax = 0;
      for (let j = start; j < end; j++) {
        const v = w[rowOff + j];
        const a = Math.abs(v);
        if (a > amax) {
          amax = a;
          signedMax = v;
        }
      }
      const scale = bits === 4 ? signedMax / -8 : amax / 127;
      const inv = scale === 0 ? 0 : 1 / scale;
      const si = r * blocksPerRow + b;
      scales[si] = scale;
      const blob = si * blobSize;
      for (let j = 0; j < blockSize; j++) {
        const v = start + j < end ? w[rowOff + start + j] : 0;
        let q = Math.round(v * inv) + zero;
        q = q < 0 ? 0 : q > qmax ? qmax : q;
        if (bits === 8) packed[blob + j] = q;
        else if (j & 1) packed[blob + (j >> 1)] |= q << 4;
        else packed[blob + (j >> 1)] = q;
      }
    }
  }
  return { packed, scales, blocksPerRow, blobSize };
}

const halfScratch = new Float32Array(1);
const halfScratchBits = new Uint32Array(halfScratch.buffer);

/** Float32 to IEEE half bits, round to nearest even. */
export function floatToHalf(f: number): number {
  const bits = halfScratchBits;
  halfScratch[0] = f;
  const x = bits[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let h = mant >> shift;
    const rem = mant & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && h & 1)) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++;
  return sign | h;
}

export function toHalf(data: Float32Array): Uint16Array {
  const out = new Uint16Array(data.length);
  for (let i = 0; i < data.length; i++) out[i] = floatToHalf(data[i]);
  return out;
}

/** Row-major [rows, cols] → [cols, rows]. */
export function transpose(w: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const ro = r * cols;
    for (let c = 0; c < cols; c++) out[c * rows + r] = w[ro + c];
  }
  return out;
}
