/**
 * The kernel interface under the tensor rung.
 *
 * A backend is a small set of named kernels that work on row-major
 * `Float32Array`s, forward and backward in pairs. The tensor rung
 * (`lib/tensor.ts`) keeps the autograd bookkeeping and calls the active backend
 * for the heavy arithmetic. The `js` backend in this file is the reference:
 * plain loops written for reading, which every faster backend is tested
 * against, kernel by kernel.
 *
 * Conventions shared by every kernel:
 * - Arrays are row-major and densely packed. `rows × cols` means `cols` is the
 *   fastest-moving index.
 * - A kernel whose name ends in `Backward` adds into its gradient outputs
 *   (`dx += …`), because a tensor used twice receives gradient from both uses.
 * - No kernel allocates its outputs. The caller passes every buffer, and
 *   `alloc` hands out buffers the backend can work on without copies.
 *
 * @module
 */

/** Options of one matrix product `C (+)= op(A) · op(B)`. */
export interface MatmulOptions {
  /** Rows of `op(A)` and of `C`. */
  m: number;
  /** Columns of `op(B)` and of `C`. */
  n: number;
  /** Columns of `op(A)`, rows of `op(B)`: the summed dimension. */
  k: number;
  /** `A` is stored as `[k, m]` and used transposed. */
  transA?: boolean;
  /** `B` is stored as `[n, k]` and used transposed. */
  transB?: boolean;
  /** Add the product into `C` instead of overwriting it. */
  accumulate?: boolean;
  /**
   * Number of independent products. Each operand contains `batch` matrices back
   * to back; an operand whose `batch` stride is 0 is shared by all of them.
   */
  batch?: number;
  /** Elements between consecutive matrices of `A` (default `m * k`). */
  strideA?: number;
  /** Elements between consecutive matrices of `B` (default `k * n`). */
  strideB?: number;
  /** Elements between consecutive matrices of `C` (default `m * n`). */
  strideC?: number;
}

/** Sizes of one multi-head causal self-attention call. */
export interface AttentionShape {
  /** Batch size B. */
  batch: number;
  /** Sequence length T. */
  seqLen: number;
  /** Number of heads H. */
  heads: number;
  /** Size of one head, D = C / H. */
  headSize: number;
}

/** Hyperparameters of one AdamW update, after any schedule was applied. */
export interface AdamWStep {
  /** Learning rate γ of this step. */
  lr: number;
  /** Decay rate β₁ of the first moment. */
  beta1: number;
  /** Decay rate β₂ of the second moment. */
  beta2: number;
  /** Term ε added to the denominator `√v̂ + ε`. */
  eps: number;
  /** Weight decay λ, which `adamwUpdate` applies as `θ ← θ − γλθ` before the Adam step. */
  weightDecay: number;
  /** 1-based step count, for the bias corrections. */
  step: number;
}

/** The kernels a compute backend provides. */
export interface Backend {
  /** Short name used on the command line: `js`, `wasm`, `blas`. */
  readonly name: string;

  /** Returns a zero-filled buffer of `length` floats that this backend's kernels read without copying. */
  alloc(length: number): Float32Array;

  /**
   * Returns a buffer like `alloc` whose contents are unspecified (old values of a freed buffer),
   * for an output that the caller overwrites entirely before reading it. Skipping the zero fill
   * matters for the megabytes of activations that a training step allocates.
   */
  allocUninitialized(length: number): Float32Array;

  /** Hands a buffer from `alloc` or `allocUninitialized` back for reuse. Optional for backends that rely on the garbage collector. */
  free(buffer: Float32Array): void;

  /** Matrix product `C (+)= op(A) · op(B)`, optionally batched. */
  matmul(a: Float32Array, b: Float32Array, c: Float32Array, options: MatmulOptions): void;

  /** Softmax over the last axis of `x` `[rows, cols]`, numerically stable. */
  softmaxForward(x: Float32Array, y: Float32Array, rows: number, cols: number): void;
  /** `dx += y ⊙ (dy − Σ dy ⊙ y)` row by row, from the softmax output `y`. */
  softmaxBackward(
    y: Float32Array,
    dy: Float32Array,
    dx: Float32Array,
    rows: number,
    cols: number,
  ): void;

  /** Log-softmax over the last axis: `y = x − max − log Σ exp(x − max)`. */
  logSoftmaxForward(x: Float32Array, y: Float32Array, rows: number, cols: number): void;
  /** `dx += dy − softmax(x) · Σ dy`, from the log-softmax output `y`. */
  logSoftmaxBackward(
    y: Float32Array,
    dy: Float32Array,
    dx: Float32Array,
    rows: number,
    cols: number,
  ): void;

  /**
   * Softmax cross-entropy of each row of `logits` `[rows, cols]` against the
   * class index `targets[r]`, which must lie in `[0, cols)`. Writes
   * `probs = softmax(logits)` for the backward pass and the row's loss
   * `losses[r] = −log probs[r, targets[r]]`, computed as
   * `max + log Σ exp(logits − max) − logits[r, targets[r]]`.
   */
  crossEntropyForward(
    logits: Float32Array,
    targets: Int32Array,
    probs: Float32Array,
    losses: Float32Array,
    rows: number,
    cols: number,
  ): void;
  /**
   * Adds `scale · (probs − onehot(targets))` into `dlogits` row by row: the
   * gradient of `scale · Σ_r losses[r]`, so `scale = 1 / rows` for the mean.
   */
  crossEntropyBackward(
    probs: Float32Array,
    targets: Int32Array,
    dlogits: Float32Array,
    rows: number,
    cols: number,
    scale: number,
  ): void;

  /**
   * LayerNorm over the last axis with biased variance: `y = (x − μ) / √(σ² + eps) · γ + β`.
   * Writes the per-row `mean` and reciprocal standard deviation `rstd` for the backward pass.
   */
  layerNormForward(
    x: Float32Array,
    gamma: Float32Array,
    beta: Float32Array,
    y: Float32Array,
    mean: Float32Array,
    rstd: Float32Array,
    rows: number,
    cols: number,
    eps: number,
  ): void;
  /** Adds the gradients of LayerNorm into `dx`, `dgamma` and `dbeta`. */
  layerNormBackward(
    dy: Float32Array,
    x: Float32Array,
    gamma: Float32Array,
    mean: Float32Array,
    rstd: Float32Array,
    dx: Float32Array,
    dgamma: Float32Array,
    dbeta: Float32Array,
    rows: number,
    cols: number,
  ): void;

  /** Writes `out = x + y` over `length` floats. `out` may be `x` or `y`, to add in place. */
  add(x: Float32Array, y: Float32Array, out: Float32Array, length: number): void;

  /**
   * Adds the column sums of `x` `[rows, cols]` into `out` `[cols]`:
   * `out[j] += Σ_r x[r, j]`, summed in row order. The gradient of a bias added to every row.
   */
  columnSum(x: Float32Array, out: Float32Array, rows: number, cols: number): void;

  /** GELU, tanh approximation: `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`. */
  geluForward(x: Float32Array, y: Float32Array, length: number): void;
  /** Adds `dy · gelu'(x)` into `dx`. */
  geluBackward(x: Float32Array, dy: Float32Array, dx: Float32Array, length: number): void;

  /**
   * Fused causal self-attention. `qkv` is `[B, T, 3C]` with q, k and v side by
   * side and heads contiguous inside each; `y` is `[B, T, C]`. `probs`
   * `[B, H, T, T]` keeps the attention weights for the backward pass.
   */
  attentionForward(
    qkv: Float32Array,
    y: Float32Array,
    probs: Float32Array,
    shape: AttentionShape,
  ): void;
  /** Adds the gradient of the attention output `dy` into `dqkv`. */
  attentionBackward(
    dy: Float32Array,
    qkv: Float32Array,
    probs: Float32Array,
    dqkv: Float32Array,
    shape: AttentionShape,
  ): void;

  /**
   * One AdamW update over a whole parameter with decoupled weight decay
   * (Loshchilov and Hutter; the update rule of `torch.optim.AdamW`):
   * `p −= lr · wd · p`, then `p −= lr · m̂ / (√v̂ + eps)`.
   */
  adamwUpdate(
    param: Float32Array,
    grad: Float32Array,
    m: Float32Array,
    v: Float32Array,
    hyper: AdamWStep,
  ): void;
}

// ---------------------------------------------------------------------------
// The reference backend: plain TypeScript loops, written to be read.

const GELU_SCALE = Math.sqrt(2 / Math.PI);

/** Returns the element index of `op(M)[row, col]` for a matrix stored as `[rows, cols]` or transposed. */
function at(trans: boolean, row: number, col: number, rows: number, cols: number): number {
  return trans ? col * rows + row : row * cols + col;
}

/**
 * The reference backend. Every kernel is a direct transcription of its
 * formula; the faster backends must agree with it.
 */
export const jsBackend: Backend = {
  name: "js",

  alloc(length: number): Float32Array {
    return new Float32Array(length);
  },

  allocUninitialized(length: number): Float32Array {
    return new Float32Array(length);
  },

  free(_buffer: Float32Array): void {},

  matmul(a, b, c, options) {
    const { m, n, k } = options;
    const transA = options.transA ?? false;
    const transB = options.transB ?? false;
    const batch = options.batch ?? 1;
    const strideA = options.strideA ?? m * k;
    const strideB = options.strideB ?? k * n;
    const strideC = options.strideC ?? m * n;

    for (let p = 0; p < batch; p++) {
      const offA = p * strideA;
      const offB = p * strideB;
      const offC = p * strideC;
      if (!options.accumulate) c.fill(0, offC, offC + m * n);

      for (let i = 0; i < m; i++) {
        const row = offC + i * n;
        if (!transB) {
          // Row i of C gathers the rows of B, weighted by row i of op(A).
          for (let l = 0; l < k; l++) {
            const weight = a[offA + at(transA, i, l, m, k)];
            const from = offB + l * n;
            for (let j = 0; j < n; j++) c[row + j] += weight * b[from + j];
          }
        } else {
          // With B stored [n, k], C[i, j] is the dot product of two rows.
          for (let j = 0; j < n; j++) {
            const from = offB + j * k;
            let sum = 0;
            for (let l = 0; l < k; l++) sum += a[offA + at(transA, i, l, m, k)] * b[from + l];
            c[row + j] += sum;
          }
        }
      }
    }
  },

  softmaxForward(x, y, rows, cols) {
    for (let r = 0; r < rows; r++) {
      const o = r * cols;
      let max = -Infinity;
      for (let j = 0; j < cols; j++) max = Math.max(max, x[o + j]);
      let sum = 0;
      for (let j = 0; j < cols; j++) {
        const e = Math.exp(x[o + j] - max);
        y[o + j] = e;
        sum += e;
      }
      for (let j = 0; j < cols; j++) y[o + j] /= sum;
    }
  },

  softmaxBackward(y, dy, dx, rows, cols) {
    for (let r = 0; r < rows; r++) {
      const o = r * cols;
      let dot = 0;
      for (let j = 0; j < cols; j++) dot += dy[o + j] * y[o + j];
      for (let j = 0; j < cols; j++) dx[o + j] += y[o + j] * (dy[o + j] - dot);
    }
  },

  logSoftmaxForward(x, y, rows, cols) {
    for (let r = 0; r < rows; r++) {
      const o = r * cols;
      let max = -Infinity;
      for (let j = 0; j < cols; j++) max = Math.max(max, x[o + j]);
      let sum = 0;
      for (let j = 0; j < cols; j++) sum += Math.exp(x[o + j] - max);
      const logSum = max + Math.log(sum);
      for (let j = 0; j < cols; j++) y[o + j] = x[o + j] - logSum;
    }
  },

  logSoftmaxBackward(y, dy, dx, rows, cols) {
    for (let r = 0; r < rows; r++) {
      const o = r * cols;
      let sum = 0;
      for (let j = 0; j < cols; j++) sum += dy[o + j];
      for (let j = 0; j < cols; j++) dx[o + j] += dy[o + j] - Math.exp(y[o + j]) * sum;
    }
  },

  crossEntropyForward(logits, targets, probs, losses, rows, cols) {
    for (let r = 0; r < rows; r++) {
      const o = r * cols;
      let max = -Infinity;
      for (let j = 0; j < cols; j++) max = Math.max(max, logits[o + j]);
      let sum = 0;
      for (let j = 0; j < cols; j++) {
        const e = Math.exp(logits[o + j] - max);
        probs[o + j] = e;
        sum += e;
      }
      for (let j = 0; j < cols; j++) probs[o + j] /= sum;
      // From the log-sum-exp, not from the rounded probability, which may be 0.
      losses[r] = max + Math.log(sum) - logits[o + targets[r]];
    }
  },

  crossEntropyBackward(probs, targets, dlogits, rows, cols, scale) {
    for (let r = 0; r < rows; r++) {
      const o = r * cols;
      for (let j = 0; j < cols; j++) dlogits[o + j] += scale * probs[o + j];
      dlogits[o + targets[r]] -= scale;
    }
  },

  layerNormForward(x, gamma, beta, y, mean, rstd, rows, cols, eps) {
    for (let r = 0; r < rows; r++) {
      const o = r * cols;
      let mu = 0;
      for (let j = 0; j < cols; j++) mu += x[o + j];
      mu /= cols;
      let variance = 0;
      for (let j = 0; j < cols; j++) variance += (x[o + j] - mu) ** 2;
      variance /= cols;
      const s = 1 / Math.sqrt(variance + eps);
      for (let j = 0; j < cols; j++) y[o + j] = (x[o + j] - mu) * s * gamma[j] + beta[j];
      mean[r] = mu;
      rstd[r] = s;
    }
  },

  layerNormBackward(dy, x, gamma, mean, rstd, dx, dgamma, dbeta, rows, cols) {
    // With x̂ = (x − μ)·rstd and g = dy ⊙ γ:
    // dx = rstd · (g − mean(g) − x̂ · mean(g ⊙ x̂)).
    for (let r = 0; r < rows; r++) {
      const o = r * cols;
      const mu = mean[r];
      const s = rstd[r];
      let meanG = 0;
      let meanGX = 0;
      for (let j = 0; j < cols; j++) {
        const xhat = (x[o + j] - mu) * s;
        const g = dy[o + j] * gamma[j];
        meanG += g;
        meanGX += g * xhat;
        dgamma[j] += dy[o + j] * xhat;
        dbeta[j] += dy[o + j];
      }
      meanG /= cols;
      meanGX /= cols;
      for (let j = 0; j < cols; j++) {
        const xhat = (x[o + j] - mu) * s;
        dx[o + j] += s * (dy[o + j] * gamma[j] - meanG - xhat * meanGX);
      }
    }
  },

  add(x, y, out, length) {
    for (let i = 0; i < length; i++) out[i] = x[i] + y[i];
  },

  columnSum(x, out, rows, cols) {
    for (let r = 0; r < rows; r++) {
      for (let j = 0; j < cols; j++) out[j] += x[r * cols + j];
    }
  },

  geluForward(x, y, length) {
    for (let i = 0; i < length; i++) {
      const v = x[i];
      y[i] = 0.5 * v * (1 + Math.tanh(GELU_SCALE * (v + 0.044715 * v * v * v)));
    }
  },

  geluBackward(x, dy, dx, length) {
    for (let i = 0; i < length; i++) {
      const v = x[i];
      const t = Math.tanh(GELU_SCALE * (v + 0.044715 * v * v * v));
      const dInner = GELU_SCALE * (1 + 3 * 0.044715 * v * v);
      dx[i] += dy[i] * (0.5 * (1 + t) + 0.5 * v * (1 - t * t) * dInner);
    }
  },

  attentionForward(qkv, y, probs, shape) {
    const { batch, seqLen: T, heads, headSize: D } = shape;
    const C = heads * D;
    const scale = 1 / Math.sqrt(D);

    for (let b = 0; b < batch; b++) {
      for (let h = 0; h < heads; h++) {
        for (let t = 0; t < T; t++) {
          const q = (b * T + t) * 3 * C + h * D;
          const row = ((b * heads + h) * T + t) * T;

          // Scores against keys 0..t; later keys are masked (weight 0).
          let max = -Infinity;
          for (let s = 0; s <= t; s++) {
            const key = (b * T + s) * 3 * C + C + h * D;
            let dot = 0;
            for (let d = 0; d < D; d++) dot += qkv[q + d] * qkv[key + d];
            probs[row + s] = dot * scale;
            max = Math.max(max, dot * scale);
          }
          let sum = 0;
          for (let s = 0; s <= t; s++) {
            const e = Math.exp(probs[row + s] - max);
            probs[row + s] = e;
            sum += e;
          }
          for (let s = 0; s <= t; s++) probs[row + s] /= sum;
          for (let s = t + 1; s < T; s++) probs[row + s] = 0;

          // Weighted sum of the values.
          const out = (b * T + t) * C + h * D;
          for (let d = 0; d < D; d++) y[out + d] = 0;
          for (let s = 0; s <= t; s++) {
            const value = (b * T + s) * 3 * C + 2 * C + h * D;
            const p = probs[row + s];
            for (let d = 0; d < D; d++) y[out + d] += p * qkv[value + d];
          }
        }
      }
    }
  },

  attentionBackward(dy, qkv, probs, dqkv, shape) {
    const { batch, seqLen: T, heads, headSize: D } = shape;
    const C = heads * D;
    const scale = 1 / Math.sqrt(D);
    const dprobs = new Float64Array(T);

    for (let b = 0; b < batch; b++) {
      for (let h = 0; h < heads; h++) {
        for (let t = 0; t < T; t++) {
          const q = (b * T + t) * 3 * C + h * D;
          const out = (b * T + t) * C + h * D;
          const row = ((b * heads + h) * T + t) * T;

          // Through the weighted sum: dp[s] = dy · v[s], dv[s] += p[s] · dy.
          let dot = 0;
          for (let s = 0; s <= t; s++) {
            const value = (b * T + s) * 3 * C + 2 * C + h * D;
            let dp = 0;
            for (let d = 0; d < D; d++) {
              dp += dy[out + d] * qkv[value + d];
              dqkv[value + d] += probs[row + s] * dy[out + d];
            }
            dprobs[s] = dp;
            dot += dp * probs[row + s];
          }

          // Through the softmax and the scaled dot product.
          for (let s = 0; s <= t; s++) {
            const dscore = probs[row + s] * (dprobs[s] - dot) * scale;
            const key = (b * T + s) * 3 * C + C + h * D;
            for (let d = 0; d < D; d++) {
              dqkv[q + d] += dscore * qkv[key + d];
              dqkv[key + d] += dscore * qkv[q + d];
            }
          }
        }
      }
    }
  },

  adamwUpdate(param, grad, m, v, hyper) {
    const { lr, beta1, beta2, eps, weightDecay, step } = hyper;
    const correction1 = 1 - beta1 ** step;
    const correction2 = 1 - beta2 ** step;
    for (let i = 0; i < param.length; i++) {
      const g = grad[i];
      m[i] = beta1 * m[i] + (1 - beta1) * g;
      v[i] = beta2 * v[i] + (1 - beta2) * g * g;
      const mHat = m[i] / correction1;
      const vHat = v[i] / correction2;
      param[i] = param[i] - lr * weightDecay * param[i];
      param[i] = param[i] - lr * mHat / (Math.sqrt(vHat) + eps);
    }
  },
};
