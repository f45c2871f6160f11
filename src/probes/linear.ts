/** The linear score a probe file stores, and the two pieces of arithmetic the scorer needs at run time. */

/** A fitted linear score: `bias + Σⱼ weightsⱼ · (xⱼ − meanⱼ) / stdⱼ`. */
export interface LinearModel {
  readonly mean: Float64Array;
  readonly std: Float64Array;
  readonly weights: Float64Array;
  readonly bias: number;
}

/** Numerically stable logistic function. */
export function sigmoid(z: number): number {
  if (z >= 0) return 1 / (1 + Math.exp(-z));
  const e = Math.exp(z);
  return e / (1 + e);
}

/**
 * Fold standardisation into raw-space coefficients: `bias + w·(x−mean)/std = c + v·x` with
 * v = w/std and c = bias − Σ meanⱼ vⱼ. One dot product per row on the hot path.
 */
export function foldStandardisation(
  weights: ArrayLike<number>,
  bias: number,
  mean: ArrayLike<number>,
  std: ArrayLike<number>,
): { v: Float64Array; c: number } {
  const d = weights.length;
  const v = new Float64Array(d);
  let c = bias;
  for (let j = 0; j < d; j++) {
    v[j] = weights[j] / std[j];
    c -= mean[j] * v[j];
  }
  return { v, c };
}
