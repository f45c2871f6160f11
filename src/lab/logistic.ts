/**
 * Linear probes: L2-regularised logistic regression on standardised inputs, and the
 * difference-of-means direction baseline (as refusal_direction builds its directions).
 *
 * Logistic objective, minimised over weights w (on standardised inputs) and bias b:
 *
 *   L(w, b) = (1 / Σᵢ sᵢ) · Σᵢ sᵢ · [log(1 + e^{zᵢ}) − yᵢ zᵢ] + (λ / 2) · ‖w‖²,   zᵢ = b + w · x̃ᵢ,
 *   x̃ᵢⱼ = (xᵢⱼ − meanⱼ) / stdⱼ     (mean and population std of the training rows; std 0 → 1)
 *
 * sᵢ are sample weights (default 1; 'balanced' class weights multiply them by n / (2·n_class)).
 * The bias is not penalised. scikit-learn's `LogisticRegression(C)` on the same standardised rows
 * with unit weights is the same problem with λ = 1 / (C·n).
 *
 * Deterministic: no randomness, fixed loop order, single thread. Two solvers, both full-batch:
 * Newton (Cholesky of the (d+1)² Hessian; exact and fast when d is small) and L-BFGS (memory 10)
 * for large d, where one iteration costs two passes over X. Both use a weak-Wolfe line search
 * that costs O(n) per trial point, because the margins along a search direction are linear in the
 * step (z(θ + αp) = z(θ) + α·z_p), so only one O(n·d) pass per direction is needed.
 * X is never copied: standardisation is folded into the passes (z = X·(w/std) + b − mean·(w/std)).
 */
import { lwError } from '../errors.js';
import { foldStandardisation, sigmoid, type LinearModel } from '../probes/linear.js';
import { axpy, choleskyInPlace, choleskySolve, dot, type Matrix } from '../probes/matrix.js';

export interface LogisticOptions {
  /** λ in the objective above; must be > 0 (it keeps the optimum finite on separable data). Default 1e-3. */
  l2?: number;
  /** 'auto' picks Newton for d ≤ 128, L-BFGS above. Default 'auto'. */
  solver?: 'auto' | 'newton' | 'lbfgs';
  /** Stop when the largest gradient component is ≤ this. Default 1e-6. */
  tolerance?: number;
  /** Default 1000 (L-BFGS) / 100 (Newton). */
  maxIterations?: number;
  /** Per-row weights ≥ 0; default all 1. */
  sampleWeights?: ArrayLike<number>;
  /** 'balanced' weighs each class to half the total. Default 'none'. */
  classWeight?: 'none' | 'balanced';
}

export interface LogisticFit extends LinearModel {
  readonly solver: 'newton' | 'lbfgs';
  readonly iterations: number;
  /** Gradient tolerance met. */
  readonly converged: boolean;
  /** Objective value at the returned weights. */
  readonly loss: number;
  /** Largest absolute gradient component at the returned weights. */
  readonly gradientMaxAbs: number;
}

const NEWTON_MAX_D = 128;
const LBFGS_MEMORY = 10;
/** Recompute margins from scratch this often, so the z += α·z_p updates cannot drift. */
const MARGIN_REFRESH = 20;

/**
 * Per-feature mean and population standard deviation (two passes, float64). A feature with
 * zero spread gets std 1, so it standardises to 0 rather than dividing by zero.
 */
export function standardisation(x: Matrix): { mean: Float64Array; std: Float64Array } {
  const { rows: n, cols: d, data } = x;
  if (n === 0) throw lwError('LW_ERR_PROBE_FIT', 'no rows');
  const mean = new Float64Array(d);
  for (let i = 0; i < n; i++) {
    const o = i * d;
    for (let j = 0; j < d; j++) mean[j] += data[o + j];
  }
  for (let j = 0; j < d; j++) mean[j] /= n;
  const v = new Float64Array(d);
  for (let i = 0; i < n; i++) {
    const o = i * d;
    for (let j = 0; j < d; j++) {
      const c = data[o + j] - mean[j];
      v[j] += c * c;
    }
  }
  const std = new Float64Array(d);
  for (let j = 0; j < d; j++) {
    if (!Number.isFinite(mean[j]) || !Number.isFinite(v[j])) throw lwError('LW_ERR_PROBE_FIT', `feature ${j} has non-finite values`);
    const s = Math.sqrt(v[j] / n);
    std[j] = s > 0 ? s : 1;
  }
  return { mean, std };
}

/** Margins `bias + w · x̃` for every row (the logit for a logistic model). */
export function decisionFunction(model: LinearModel, x: Matrix): Float64Array {
  const d = model.weights.length;
  if (x.cols !== d) throw new RangeError(`decisionFunction: model has ${d} features, matrix ${x.cols}`);
  const { v, c } = foldStandardisation(model.weights, model.bias, model.mean, model.std);
  const out = new Float64Array(x.rows);
  for (let i = 0; i < x.rows; i++) out[i] = c + dot(x.data, i * d, v, 0, d);
  return out;
}

/** Logistic probabilities σ(margin) for every row. */
export function predictProbability(model: LinearModel, x: Matrix): Float64Array {
  const z = decisionFunction(model, x);
  for (let i = 0; i < z.length; i++) z[i] = sigmoid(z[i]);
  return z;
}

/**
 * Difference-of-means baseline: the unit vector along mean(positives) − mean(negatives), scored
 * from the midpoint of the two means. The score is the signed distance (in activation units)
 * along that direction, so 0 is the midpoint and positives score high; pick the deployed
 * threshold with `thresholdAtFpr` rather than using 0. Returned as a LinearModel with
 * mean = midpoint, std = 1, bias = 0.
 */
export function fitDiffMeans(x: Matrix, y: ArrayLike<number>): LinearModel {
  const { rows: n, cols: d, data } = x;
  checkLabels(y, n);
  const sumPos = new Float64Array(d);
  const sumNeg = new Float64Array(d);
  let nPos = 0;
  for (let i = 0; i < n; i++) {
    const acc = y[i] === 1 ? sumPos : sumNeg;
    if (y[i] === 1) nPos++;
    const o = i * d;
    for (let j = 0; j < d; j++) acc[j] += data[o + j];
  }
  const nNeg = n - nPos;
  if (nPos === 0 || nNeg === 0) throw lwError('LW_ERR_PROBE_FIT', `need both classes (positives ${nPos}, negatives ${nNeg})`);
  const mean = new Float64Array(d);
  const weights = new Float64Array(d);
  let norm2 = 0;
  for (let j = 0; j < d; j++) {
    const mp = sumPos[j] / nPos;
    const mn = sumNeg[j] / nNeg;
    mean[j] = (mp + mn) / 2;
    weights[j] = mp - mn;
    norm2 += weights[j] * weights[j];
  }
  const norm = Math.sqrt(norm2);
  if (!(norm > 0) || !Number.isFinite(norm)) throw lwError('LW_ERR_PROBE_FIT', 'class means are equal or non-finite');
  for (let j = 0; j < d; j++) weights[j] /= norm;
  return { mean, std: new Float64Array(d).fill(1), weights, bias: 0 };
}

/** Fit L2-regularised logistic regression (objective in the module comment). */
export function fitLogistic(x: Matrix, y: ArrayLike<number>, options: LogisticOptions = {}): LogisticFit {
  const { rows: n, cols: d } = x;
  checkLabels(y, n);
  const l2 = options.l2 ?? 1e-3;
  if (!(l2 > 0) || !Number.isFinite(l2)) throw new RangeError(`fitLogistic: l2 must be a positive finite number, got ${l2}`);
  const tolerance = options.tolerance ?? 1e-6;
  if (!(tolerance > 0)) throw new RangeError(`fitLogistic: tolerance must be > 0, got ${tolerance}`);
  const solver = options.solver === undefined || options.solver === 'auto' ? (d <= NEWTON_MAX_D ? 'newton' : 'lbfgs') : options.solver;
  const maxIterations = options.maxIterations ?? (solver === 'newton' ? 100 : 1000);

  const weights = rowWeights(y, n, options);
  const { mean, std } = standardisation(x);
  const problem = new Problem(x, y, weights, mean, std, l2);
  const result = solver === 'newton' ? problem.newton(maxIterations, tolerance) : problem.lbfgs(maxIterations, tolerance);
  const w = result.theta.slice(0, d);
  return {
    mean,
    std,
    weights: w,
    bias: result.theta[d],
    solver: result.solver,
    iterations: result.iterations,
    converged: result.gradientMaxAbs <= tolerance,
    loss: result.loss,
    gradientMaxAbs: result.gradientMaxAbs,
  };
}

function checkLabels(y: ArrayLike<number>, n: number): void {
  if (y.length !== n) throw lwError('LW_ERR_PROBE_FIT', `${n} rows but ${y.length} labels`);
  if (n === 0) throw lwError('LW_ERR_PROBE_FIT', 'no rows');
  for (let i = 0; i < n; i++) if (y[i] !== 0 && y[i] !== 1) throw lwError('LW_ERR_PROBE_FIT', `label ${i} is ${y[i]}, expected 0 or 1`);
}

function rowWeights(y: ArrayLike<number>, n: number, options: LogisticOptions): Float64Array {
  const s = new Float64Array(n);
  const sw = options.sampleWeights;
  if (sw !== undefined && sw.length !== n) throw lwError('LW_ERR_PROBE_FIT', `${n} rows but ${sw.length} sample weights`);
  for (let i = 0; i < n; i++) {
    const v = sw === undefined ? 1 : sw[i];
    if (!(v >= 0) || !Number.isFinite(v)) throw lwError('LW_ERR_PROBE_FIT', `sample weight ${i} is ${v}`);
    s[i] = v;
  }
  let pos = 0;
  let neg = 0;
  for (let i = 0; i < n; i++) {
    if (y[i] === 1) pos += s[i];
    else neg += s[i];
  }
  if (!(pos > 0) || !(neg > 0)) throw lwError('LW_ERR_PROBE_FIT', `need both classes with positive weight (positives ${pos}, negatives ${neg})`);
  if (options.classWeight === 'balanced') {
    let nPos = 0;
    for (let i = 0; i < n; i++) if (y[i] === 1) nPos++;
    const fPos = n / (2 * nPos);
    const fNeg = n / (2 * (n - nPos));
    for (let i = 0; i < n; i++) s[i] *= y[i] === 1 ? fPos : fNeg;
  }
  return s;
}

interface SolveResult {
  solver: 'newton' | 'lbfgs';
  theta: Float64Array;
  iterations: number;
  loss: number;
  gradientMaxAbs: number;
}

/** One logistic problem: data, weights and the O(n) / O(n·d) kernels the solvers share. */
class Problem {
  private readonly n: number;
  private readonly d: number;
  private readonly totalWeight: number;
  /** Scratch: raw-space coefficients of the current direction or point. */
  private readonly v: Float64Array;
  private readonly residual: Float64Array;

  constructor(
    private readonly x: Matrix,
    private readonly y: ArrayLike<number>,
    private readonly s: Float64Array,
    private readonly mean: Float64Array,
    private readonly std: Float64Array,
    private readonly l2: number,
  ) {
    this.n = x.rows;
    this.d = x.cols;
    let t = 0;
    for (let i = 0; i < this.n; i++) t += s[i];
    this.totalWeight = t;
    this.v = new Float64Array(this.d);
    this.residual = new Float64Array(this.n);
  }

  /** z = X̃·θ_w + θ_b for all rows, written into `out` (one O(n·d) pass). */
  margins(theta: Float64Array, out: Float64Array): void {
    const { d, v, mean, std } = this;
    let c = theta[d];
    for (let j = 0; j < d; j++) {
      v[j] = theta[j] / std[j];
      c -= mean[j] * v[j];
    }
    const data = this.x.data;
    for (let i = 0; i < this.n; i++) out[i] = c + dot(data, i * d, v, 0, d);
  }

  /** Objective at margins z and weights θ. */
  loss(z: Float64Array, theta: Float64Array): number {
    const { n, s, y } = this;
    let acc = 0;
    for (let i = 0; i < n; i++) {
      if (s[i] === 0) continue;
      const zi = z[i];
      acc += s[i] * (Math.max(zi, 0) + Math.log1p(Math.exp(-Math.abs(zi))) - y[i] * zi);
    }
    let w2 = 0;
    for (let j = 0; j < this.d; j++) w2 += theta[j] * theta[j];
    return acc / this.totalWeight + 0.5 * this.l2 * w2;
  }

  /** Gradient at margins z into g (length d+1); returns its largest absolute component. One O(n·d) pass. */
  gradient(z: Float64Array, theta: Float64Array, g: Float64Array): number {
    const { n, d, s, y, residual: r, mean, std } = this;
    let sumR = 0;
    for (let i = 0; i < n; i++) {
      r[i] = (s[i] * (sigmoid(z[i]) - y[i])) / this.totalWeight;
      sumR += r[i];
    }
    g.fill(0, 0, d);
    const data = this.x.data;
    for (let i = 0; i < n; i++) {
      if (r[i] !== 0) axpy(r[i], data, i * d, g, 0, d);
    }
    let maxAbs = Math.abs(sumR);
    for (let j = 0; j < d; j++) {
      g[j] = (g[j] - mean[j] * sumR) / std[j] + this.l2 * theta[j];
      const a = Math.abs(g[j]);
      if (a > maxAbs || Number.isNaN(a)) maxAbs = a;
    }
    g[d] = sumR;
    return maxAbs;
  }

  /**
   * Weak-Wolfe line search along p from θ, using margins z (at θ) and zp (of p): every trial
   * point costs O(n + d). Near the optimum the objective changes by less than its rounding error,
   * so the sufficient-decrease test on f alone would stall L-BFGS at a gradient of ~1e-9; there the
   * search accepts Hager–Zhang's approximate Wolfe conditions, which test only the slope.
   * Returns the accepted step, or 0 when no step can be shown to decrease the objective.
   */
  lineSearch(theta: Float64Array, p: Float64Array, z: Float64Array, zp: Float64Array, f0: number, slope0: number, alpha0: number): { alpha: number; f: number } {
    const c1 = 1e-4;
    const c2 = 0.9;
    const fNoise = 1e-12 * Math.abs(f0);
    const { n, d, s, y, l2 } = this;
    let wp = 0;
    let pp = 0;
    let w2 = 0;
    for (let j = 0; j < d; j++) {
      wp += theta[j] * p[j];
      pp += p[j] * p[j];
      w2 += theta[j] * theta[j];
    }
    const phi = (a: number): { f: number; slope: number } => {
      let acc = 0;
      let sl = 0;
      for (let i = 0; i < n; i++) {
        if (s[i] === 0) continue;
        const zi = z[i] + a * zp[i];
        acc += s[i] * (Math.max(zi, 0) + Math.log1p(Math.exp(-Math.abs(zi))) - y[i] * zi);
        sl += s[i] * (sigmoid(zi) - y[i]) * zp[i];
      }
      return {
        f: acc / this.totalWeight + 0.5 * l2 * (w2 + 2 * a * wp + a * a * pp),
        slope: sl / this.totalWeight + l2 * (wp + a * pp),
      };
    };
    let lo = 0;
    let hi = Infinity;
    let alpha = alpha0;
    for (let k = 0; k < 60; k++) {
      const t = phi(alpha);
      const armijo = t.f <= f0 + c1 * alpha * slope0;
      const approximate = t.f <= f0 + fNoise && t.slope <= (2 * c1 - 1) * slope0;
      if (!armijo && !approximate) hi = alpha;
      else if (t.slope < c2 * slope0) lo = alpha;
      else return { alpha, f: t.f };
      alpha = hi < Infinity ? (lo + hi) / 2 : 2 * lo;
    }
    return lo > 0 ? { alpha: lo, f: phi(lo).f } : { alpha: 0, f: f0 };
  }

  lbfgs(maxIterations: number, tolerance: number): SolveResult {
    const { n, d } = this;
    const m = d + 1;
    const theta = this.initialTheta();
    const z = new Float64Array(n);
    const zp = new Float64Array(n);
    const g = new Float64Array(m);
    const gPrev = new Float64Array(m);
    const p = new Float64Array(m);
    const sHist: Float64Array[] = [];
    const yHist: Float64Array[] = [];
    const rho: number[] = [];
    const alphaBuf = new Float64Array(LBFGS_MEMORY);
    for (let k = 0; k < LBFGS_MEMORY; k++) {
      sHist.push(new Float64Array(m));
      yHist.push(new Float64Array(m));
      rho.push(0);
    }
    let stored = 0;
    let head = 0; // next slot to write

    this.margins(theta, z);
    let f = this.loss(z, theta);
    let gmax = this.gradient(z, theta, g);
    let it = 0;
    while (it < maxIterations && gmax > tolerance) {
      it++;
      // Two-loop recursion: p = −H·g.
      for (let j = 0; j < m; j++) p[j] = -g[j];
      for (let k = 0; k < stored; k++) {
        const slot = (head - 1 - k + LBFGS_MEMORY) % LBFGS_MEMORY;
        const a = rho[slot] * dot(sHist[slot], 0, p, 0, m);
        alphaBuf[slot] = a;
        const yy = yHist[slot];
        for (let j = 0; j < m; j++) p[j] -= a * yy[j];
      }
      if (stored > 0) {
        const last = (head - 1 + LBFGS_MEMORY) % LBFGS_MEMORY;
        const gamma = 1 / (rho[last] * dot(yHist[last], 0, yHist[last], 0, m));
        for (let j = 0; j < m; j++) p[j] *= gamma;
      }
      for (let k = stored - 1; k >= 0; k--) {
        const slot = (head - 1 - k + LBFGS_MEMORY) % LBFGS_MEMORY;
        const b = rho[slot] * dot(yHist[slot], 0, p, 0, m);
        const ss = sHist[slot];
        const coef = alphaBuf[slot] - b;
        for (let j = 0; j < m; j++) p[j] += coef * ss[j];
      }
      let slope = dot(g, 0, p, 0, m);
      if (!(slope < 0)) {
        // Not a descent direction (numerical trouble): restart from steepest descent.
        stored = 0;
        for (let j = 0; j < m; j++) p[j] = -g[j];
        slope = -dot(g, 0, g, 0, m);
      }
      this.marginsOfDirection(p, zp);
      const alpha0 = stored === 0 ? Math.min(1, 1 / Math.sqrt(-slope)) : 1;
      const ls = this.lineSearch(theta, p, z, zp, f, slope, alpha0);
      if (ls.alpha === 0) break; // no decrease possible at float precision
      const sNew = sHist[head];
      const yNew = yHist[head];
      for (let j = 0; j < m; j++) {
        sNew[j] = ls.alpha * p[j];
        theta[j] += sNew[j];
      }
      if (it % MARGIN_REFRESH === 0) this.margins(theta, z);
      else for (let i = 0; i < n; i++) z[i] += ls.alpha * zp[i];
      f = this.loss(z, theta);
      gPrev.set(g);
      gmax = this.gradient(z, theta, g);
      for (let j = 0; j < m; j++) yNew[j] = g[j] - gPrev[j];
      const sy = dot(sNew, 0, yNew, 0, m);
      // The objective is strictly convex, so sy > 0 except at float noise; skip such pairs.
      if (sy > 1e-300) {
        rho[head] = 1 / sy;
        head = (head + 1) % LBFGS_MEMORY;
        stored = Math.min(stored + 1, LBFGS_MEMORY);
      } else if (stored === LBFGS_MEMORY) {
        stored--; // the skipped pair overwrote the oldest slot (head), which is no longer valid
      }
    }
    this.margins(theta, z);
    f = this.loss(z, theta);
    gmax = this.gradient(z, theta, g);
    return { solver: 'lbfgs', theta, iterations: it, loss: f, gradientMaxAbs: gmax };
  }

  newton(maxIterations: number, tolerance: number): SolveResult {
    const { n, d, s, mean, std } = this;
    const m = d + 1;
    const theta = this.initialTheta();
    const z = new Float64Array(n);
    const zp = new Float64Array(n);
    const g = new Float64Array(m);
    const h = new Float64Array(m * m);
    const row = new Float64Array(m);
    const data = this.x.data;
    this.margins(theta, z);
    let f = this.loss(z, theta);
    let gmax = this.gradient(z, theta, g);
    let it = 0;
    while (it < maxIterations && gmax > tolerance) {
      it++;
      // Hessian: X̃ᵀ diag(sᵢ pᵢ (1 − pᵢ) / Σs) X̃ over [x̃, 1], plus λ on the weight block.
      h.fill(0);
      for (let i = 0; i < n; i++) {
        const pi = sigmoid(z[i]);
        const wi = (s[i] * pi * (1 - pi)) / this.totalWeight;
        if (wi === 0) continue;
        const o = i * d;
        for (let j = 0; j < d; j++) row[j] = (data[o + j] - mean[j]) / std[j];
        row[d] = 1;
        for (let a = 0; a < m; a++) {
          const ra = wi * row[a];
          const base = a * m;
          for (let b = 0; b <= a; b++) h[base + b] += ra * row[b];
        }
      }
      for (let j = 0; j < d; j++) h[j * m + j] += this.l2;
      if (!choleskyInPlace(h, m)) {
        // Only the bias block can be singular (every probability saturated): L-BFGS copes.
        return this.lbfgs(Math.max(maxIterations, 1000), tolerance);
      }
      const step = choleskySolve(h, m, g);
      for (let j = 0; j < m; j++) step[j] = -step[j];
      const slope = dot(g, 0, step, 0, m);
      this.marginsOfDirection(step, zp);
      const ls = this.lineSearch(theta, step, z, zp, f, slope, 1);
      if (ls.alpha === 0) break;
      for (let j = 0; j < m; j++) theta[j] += ls.alpha * step[j];
      this.margins(theta, z);
      f = this.loss(z, theta);
      gmax = this.gradient(z, theta, g);
    }
    return { solver: 'newton', theta, iterations: it, loss: f, gradientMaxAbs: gmax };
  }

  /** Margins of a direction: X̃·p_w + p_b. */
  private marginsOfDirection(p: Float64Array, out: Float64Array): void {
    this.margins(p, out);
  }

  /** w = 0, b = weighted log-odds of the positive class: the optimum when all weights are zero. */
  private initialTheta(): Float64Array {
    const theta = new Float64Array(this.d + 1);
    let pos = 0;
    for (let i = 0; i < this.n; i++) if (this.y[i] === 1) pos += this.s[i];
    theta[this.d] = Math.log(pos / (this.totalWeight - pos));
    return theta;
  }
}
