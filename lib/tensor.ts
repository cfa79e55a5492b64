/**
 * Tensor autograd: the scalar idea of `autograd.ts` lifted to whole arrays.
 *
 * A `Tensor` is a shape plus a row-major `Float32Array`. Each operation below
 * computes its output and, when gradients are being recorded, attaches a
 * backward closure that adds the output's gradient into its inputs'
 * gradients. `backward()` orders the graph once, in reverse topological
 * order, and runs those closures. The heavy arithmetic (matrix products,
 * softmax, LayerNorm, GELU, attention) goes through the active `Backend`, so
 * a faster backend changes the speed and never the computation shown here.
 *
 * @example
 * ```ts
 * import { Tensor } from "./tensor.ts";
 * const w = Tensor.from([1, 2, 3, 4], [2, 2], { requiresGrad: true });
 * const x = Tensor.from([1, 1], [1, 2]);
 * const loss = x.dot(w).sum();
 * loss.backward();
 * console.log(w.grad); // Float32Array [1, 1, 1, 1]
 * ```
 *
 * @module
 */

import { type Backend, jsBackend } from "./backend.ts";

// ---------------------------------------------------------------------------
// The active backend and the recording switch.

let backend: Backend = jsBackend;
let recording = true;

/** Sets the backend that runs the heavy kernels of every tensor created afterwards. */
export function setBackend(next: Backend): void {
  backend = next;
}

/** Returns the backend that runs the heavy kernels. */
export function getBackend(): Backend {
  return backend;
}

/**
 * Runs `fn` without recording a graph: inference, evaluation and sampling.
 * Tensors created inside have no backward closures and keep no inputs alive.
 */
export function noGrad<T>(fn: () => T): T {
  const previous = recording;
  recording = false;
  try {
    return fn();
  } finally {
    recording = previous;
  }
}

/** Returns the number of elements of a shape. */
export function sizeOf(shape: readonly number[]): number {
  let size = 1;
  for (const d of shape) size *= d;
  return size;
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

function describe(shape: readonly number[]): string {
  return `[${shape.join(", ")}]`;
}

/** Options for creating a leaf tensor. */
export interface TensorOptions {
  /** Record operations on this tensor so that `backward()` fills its `grad`. */
  requiresGrad?: boolean;
}

// ---------------------------------------------------------------------------
// The tensor and its graph bookkeeping.

/** An n-dimensional array of float32 values with an optional gradient. */
export class Tensor {
  /** Dimensions, outermost first. A scalar has shape `[]`. */
  readonly shape: readonly number[];
  /** Values, row-major. */
  readonly data: Float32Array;
  /**
   * Gradient of the last `backward()` output with respect to this tensor, same layout as `data`.
   * Kept for leaves (parameters, inputs). `backward()` frees the gradient of every intermediate
   * tensor once it has passed it on, and sets it back to null.
   */
  grad: Float32Array | null = null;
  /** Whether gradients flow into this tensor. */
  requiresGrad: boolean;

  /** Inputs of the operation that produced this tensor (empty for leaves). */
  private inputs: Tensor[] = [];
  /** Adds this tensor's `grad` into its inputs' gradients. */
  private backwardStep: (() => void) | null = null;
  /** False when `data` is borrowed from another tensor (a reshape view). */
  private ownsData = true;
  /** Buffers that the backward step needs (saved statistics, masks), freed with the node. */
  private scratch: Float32Array[] = [];

  /** Wraps existing values; `data.length` must match the shape. */
  constructor(data: Float32Array, shape: readonly number[], options: TensorOptions = {}) {
    if (data.length !== sizeOf(shape)) {
      throw new Error(
        `tensor data has ${data.length} values but shape ${describe(shape)} needs ${sizeOf(shape)}`,
      );
    }
    this.data = data;
    this.shape = [...shape];
    this.requiresGrad = options.requiresGrad ?? false;
  }

  /** Creates a tensor from numbers, copied into backend memory. */
  static from(
    values: ArrayLike<number>,
    shape: readonly number[],
    options?: TensorOptions,
  ): Tensor {
    const data = backend.alloc(values.length);
    data.set(values);
    return new Tensor(data, shape, options);
  }

  /** Creates a zero-filled tensor in backend memory. */
  static zeros(shape: readonly number[], options?: TensorOptions): Tensor {
    return new Tensor(backend.alloc(sizeOf(shape)), shape, options);
  }

  /** Number of elements. */
  get size(): number {
    return this.data.length;
  }

  /** Returns the value of a one-element tensor. */
  item(): number {
    if (this.size !== 1) {
      throw new Error(`item() needs a one-element tensor, got shape ${describe(this.shape)}`);
    }
    return this.data[0];
  }

  /** Returns the gradient buffer, allocating a zero-filled one on first use. */
  gradBuffer(): Float32Array {
    if (this.grad === null) this.grad = backend.alloc(this.size);
    return this.grad;
  }

  /** Sets the gradient to zeros (keeping the buffer). */
  zeroGrad(): void {
    this.grad?.fill(0);
  }

  /**
   * Builds the output of an operation. When recording and any input needs a
   * gradient, the output remembers its inputs and the backward step.
   */
  static result(
    data: Float32Array,
    shape: readonly number[],
    inputs: Tensor[],
    backwardStep: (out: Tensor) => void,
  ): Tensor {
    const out = new Tensor(data, shape);
    // The inputs are kept even without a graph so that `release()` finds every buffer.
    out.inputs = inputs;
    if (recording && inputs.some((t) => t.requiresGrad)) {
      out.requiresGrad = true;
      out.backwardStep = () => backwardStep(out);
    }
    return out;
  }

  /**
   * Back-propagates from this scalar: visits the graph once in reverse
   * topological order and adds each node's gradient into its inputs. Only
   * leaves and this output keep their gradients afterwards.
   */
  backward(): void {
    if (this.size !== 1) {
      throw new Error(`backward() needs a scalar output, got shape ${describe(this.shape)}`);
    }

    const order: Tensor[] = [];
    const visited = new Set<Tensor>();
    // Iterative depth-first search: a deep model would overflow the call stack.
    const stack: [Tensor, boolean][] = [[this, false]];
    while (stack.length > 0) {
      const [node, expanded] = stack.pop()!;
      if (expanded) {
        order.push(node);
        continue;
      }
      if (visited.has(node)) continue;
      visited.add(node);
      stack.push([node, true]);
      for (const input of node.inputs) {
        if (input.requiresGrad && !visited.has(input)) stack.push([input, false]);
      }
    }

    this.gradBuffer()[0] += 1;
    for (let i = order.length - 1; i >= 0; i--) {
      const node = order[i];
      node.backwardStep?.();
      // Every consumer of an intermediate node ran before it, so its gradient is complete and
      // already passed on. Freeing it now keeps a step's gradients from being alive all at once.
      if (node !== this && node.inputs.length > 0 && node.grad !== null) {
        backend.free(node.grad);
        node.grad = null;
      }
    }
  }

  /**
   * Returns every intermediate buffer of the graph below this tensor to the
   * backend and cuts the graph, so the next step reuses the memory. Leaves
   * (parameters, inputs) keep their data and gradients.
   */
  release(): void {
    const stack: Tensor[] = [this];
    const seen = new Set<Tensor>();
    while (stack.length > 0) {
      const node = stack.pop()!;
      if (seen.has(node) || node.inputs.length === 0) continue;
      seen.add(node);
      stack.push(...node.inputs);

      if (node.ownsData) backend.free(node.data);
      if (node.grad !== null) backend.free(node.grad);
      for (const buffer of node.scratch) backend.free(buffer);
      node.grad = null;
      node.inputs = [];
      node.scratch = [];
      node.backwardStep = null;
    }
  }

  // -------------------------------------------------------------------------
  // Elementwise arithmetic with a trailing-dimensions broadcast.
  //
  // The second operand may be a number, a tensor of the same shape, or a
  // tensor whose shape is a suffix of this one's, such as a bias [C] added to
  // [B, T, C]. Element i of the output then uses element i mod b.size.

  /** `this + other`. */
  add(other: Tensor | number): Tensor {
    if (typeof other !== "number" && sameShape(this.shape, other.shape)) {
      return addSameShape(this, other);
    }
    return elementwise(this, other, "add");
  }

  /** `this − other`. */
  sub(other: Tensor | number): Tensor {
    return elementwise(this, other, "sub");
  }

  /** `this ⊙ other`. */
  mul(other: Tensor | number): Tensor {
    return elementwise(this, other, "mul");
  }

  /** `this / other`. */
  div(other: Tensor | number): Tensor {
    return elementwise(this, other, "div");
  }

  /** `−this`. */
  neg(): Tensor {
    return this.mul(-1);
  }

  // -------------------------------------------------------------------------
  // Matrix products.

  /**
   * Matrix product with a 2-D right operand: `[M, K] · [K, N] → [M, N]`, or
   * `[B, T, K] · [K, N] → [B, T, N]` (the leading dimensions are flattened).
   * With `transposeOther`, `other` is stored `[N, K]` and used transposed,
   * as the language-model head does with its `[V, C]` weight.
   */
  dot(other: Tensor, transposeOther = false): Tensor {
    if (other.shape.length !== 2 || this.shape.length < 2) {
      throw new Error(
        `dot needs a 2-D or 3-D left operand and a 2-D right operand, got ${
          describe(this.shape)
        } and ${describe(other.shape)}`,
      );
    }
    const k = this.shape[this.shape.length - 1];
    const [rows, cols] = other.shape;
    const n = transposeOther ? rows : cols;
    if ((transposeOther ? cols : rows) !== k) {
      throw new Error(
        `dot: inner dimensions differ, ${describe(this.shape)} · ${describe(other.shape)}${
          transposeOther ? "ᵀ" : ""
        }`,
      );
    }
    const m = this.size / k;
    const shape = [...this.shape.slice(0, -1), n];
    const out = backend.allocUninitialized(m * n);
    backend.matmul(this.data, other.data, out, { m, n, k, transB: transposeOther });

    return Tensor.result(out, shape, [this, other], (result) => {
      const g = result.grad!;
      // dA = dC · Bᵀ (or dC · B when B was used transposed).
      if (this.requiresGrad) {
        backend.matmul(g, other.data, this.gradBuffer(), {
          m,
          n: k,
          k: n,
          transB: !transposeOther,
          accumulate: true,
        });
      }
      // dB = Aᵀ · dC, or (dC)ᵀ · A for the transposed layout.
      if (other.requiresGrad) {
        if (transposeOther) {
          backend.matmul(g, this.data, other.gradBuffer(), {
            m: n,
            n: k,
            k: m,
            transA: true,
            accumulate: true,
          });
        } else {
          backend.matmul(this.data, g, other.gradBuffer(), {
            m: k,
            n,
            k: m,
            transA: true,
            accumulate: true,
          });
        }
      }
    });
  }

  /**
   * Affine map `this · weight + bias` with `weight` `[K, N]` and `bias` `[N]`:
   * `[M, K] → [M, N]`, or `[B, T, K] → [B, T, N]`. It computes what
   * `this.dot(weight).add(bias)` computes, in one node: each output row
   * starts as a copy of the bias and the product is added onto it, so no
   * separate product buffer and gradient are allocated.
   */
  linear(weight: Tensor, bias: Tensor): Tensor {
    if (weight.shape.length !== 2 || this.shape.length < 2) {
      throw new Error(
        `linear needs a 2-D or 3-D input and a 2-D weight, got ${describe(this.shape)} and ${
          describe(weight.shape)
        }`,
      );
    }
    const [k, n] = weight.shape;
    if (this.shape[this.shape.length - 1] !== k || bias.size !== n) {
      throw new Error(
        `linear: shapes do not match, ${describe(this.shape)} · ${describe(weight.shape)} + ${
          describe(bias.shape)
        }`,
      );
    }
    const m = this.size / k;
    const out = backend.allocUninitialized(m * n);
    for (let row = 0; row < m; row++) out.set(bias.data, row * n);
    backend.matmul(this.data, weight.data, out, { m, n, k, accumulate: true });

    return Tensor.result(out, [...this.shape.slice(0, -1), n], [this, weight, bias], (result) => {
      const g = result.grad!;
      // dX = dY · Wᵀ and dW = Xᵀ · dY, as in `dot`.
      if (this.requiresGrad) {
        backend.matmul(g, weight.data, this.gradBuffer(), {
          m,
          n: k,
          k: n,
          transB: true,
          accumulate: true,
        });
      }
      if (weight.requiresGrad) {
        backend.matmul(this.data, g, weight.gradBuffer(), {
          m: k,
          n,
          k: m,
          transA: true,
          accumulate: true,
        });
      }
      // db = the column sums of dY.
      if (bias.requiresGrad) backend.columnSum(g, bias.gradBuffer(), m, n);
    });
  }

  /** Batched matrix product: `[P, M, K] · [P, K, N] → [P, M, N]`. */
  bmm(other: Tensor): Tensor {
    if (this.shape.length !== 3 || other.shape.length !== 3) {
      throw new Error(
        `bmm needs two 3-D tensors, got ${describe(this.shape)} and ${describe(other.shape)}`,
      );
    }
    const [batch, m, k] = this.shape;
    const [batch2, k2, n] = other.shape;
    if (batch !== batch2 || k !== k2) {
      throw new Error(
        `bmm: shapes do not match, ${describe(this.shape)} · ${describe(other.shape)}`,
      );
    }
    const out = backend.allocUninitialized(batch * m * n);
    backend.matmul(this.data, other.data, out, { m, n, k, batch });

    return Tensor.result(out, [batch, m, n], [this, other], (result) => {
      const g = result.grad!;
      if (this.requiresGrad) {
        backend.matmul(g, other.data, this.gradBuffer(), {
          m,
          n: k,
          k: n,
          batch,
          transB: true,
          accumulate: true,
          strideA: m * n,
          strideB: k * n,
          strideC: m * k,
        });
      }
      if (other.requiresGrad) {
        backend.matmul(this.data, g, other.gradBuffer(), {
          m: k,
          n,
          k: m,
          batch,
          transA: true,
          accumulate: true,
          strideA: m * k,
          strideB: m * n,
          strideC: k * n,
        });
      }
    });
  }

  // -------------------------------------------------------------------------
  // Shape operations.

  /** Returns the same values with another shape of the same size, sharing `data`. */
  reshape(shape: readonly number[]): Tensor {
    if (sizeOf(shape) !== this.size) {
      throw new Error(`cannot reshape ${describe(this.shape)} to ${describe(shape)}`);
    }
    const out = Tensor.result(this.data, shape, [this], (result) => {
      const g = result.grad!;
      const dx = this.gradBuffer();
      for (let i = 0; i < g.length; i++) dx[i] += g[i];
    });
    out.ownsData = false;
    return out;
  }

  /** Swaps two axes (negative axes count from the end); the values are copied. */
  transpose(axis0: number, axis1: number): Tensor {
    const rank = this.shape.length;
    const a0 = axis0 < 0 ? rank + axis0 : axis0;
    const a1 = axis1 < 0 ? rank + axis1 : axis1;
    const permutation = [...Array(rank).keys()];
    permutation[a0] = a1;
    permutation[a1] = a0;
    const shape = permutation.map((p) => this.shape[p]);
    const out = backend.allocUninitialized(this.size);
    permute(this.data, this.shape, permutation, out);

    return Tensor.result(out, shape, [this], (result) => {
      // A swap of two axes is its own inverse.
      const back = backend.allocUninitialized(this.size);
      permute(result.grad!, shape, permutation, back);
      const dx = this.gradBuffer();
      for (let i = 0; i < back.length; i++) dx[i] += back[i];
      backend.free(back);
    });
  }

  /** Swaps the last two axes: `[…, M, N] → […, N, M]`. */
  transposeLast2(): Tensor {
    return this.transpose(-2, -1);
  }

  /** Columns `start` (inclusive) to `end` (exclusive) of the last axis. */
  sliceCols(start: number, end: number): Tensor {
    const cols = this.shape[this.shape.length - 1];
    if (!(0 <= start && start < end && end <= cols)) {
      throw new Error(`sliceCols(${start}, ${end}) is out of range for ${cols} columns`);
    }
    const width = end - start;
    const rows = this.size / cols;
    const out = backend.allocUninitialized(rows * width);
    for (let r = 0; r < rows; r++) {
      out.set(this.data.subarray(r * cols + start, r * cols + end), r * width);
    }

    return Tensor.result(out, [...this.shape.slice(0, -1), width], [this], (result) => {
      const g = result.grad!;
      const dx = this.gradBuffer();
      for (let r = 0; r < rows; r++) {
        for (let j = 0; j < width; j++) dx[r * cols + start + j] += g[r * width + j];
      }
    });
  }

  // -------------------------------------------------------------------------
  // Reductions.

  /** Sum of all elements (shape `[]`), or along one axis (that axis removed). */
  sum(axis?: number): Tensor {
    return reduce(this, axis, false);
  }

  /** Mean of all elements (shape `[]`), or along one axis (that axis removed). */
  mean(axis?: number): Tensor {
    return reduce(this, axis, true);
  }

  // -------------------------------------------------------------------------
  // Nonlinearities and normalisation.

  /** GELU with the tanh approximation, elementwise. */
  gelu(): Tensor {
    const out = backend.allocUninitialized(this.size);
    backend.geluForward(this.data, out, this.size);
    return Tensor.result(out, this.shape, [this], (result) => {
      backend.geluBackward(this.data, result.grad!, this.gradBuffer(), this.size);
    });
  }

  /** Rectified linear unit, elementwise. */
  relu(): Tensor {
    const out = backend.alloc(this.size);
    for (let i = 0; i < this.size; i++) out[i] = this.data[i] > 0 ? this.data[i] : 0;
    return Tensor.result(out, this.shape, [this], (result) => {
      const g = result.grad!;
      const dx = this.gradBuffer();
      for (let i = 0; i < g.length; i++) if (this.data[i] > 0) dx[i] += g[i];
    });
  }

  /** Softmax over the last axis, numerically stable (the row maximum is subtracted first). */
  softmax(): Tensor {
    const cols = this.shape[this.shape.length - 1];
    const rows = this.size / cols;
    const out = backend.allocUninitialized(this.size);
    backend.softmaxForward(this.data, out, rows, cols);
    return Tensor.result(out, this.shape, [this], (result) => {
      backend.softmaxBackward(result.data, result.grad!, this.gradBuffer(), rows, cols);
    });
  }

  /** Log-softmax over the last axis, computed as `x − max − log Σ exp(x − max)`. */
  logSoftmax(): Tensor {
    const cols = this.shape[this.shape.length - 1];
    const rows = this.size / cols;
    const out = backend.allocUninitialized(this.size);
    backend.logSoftmaxForward(this.data, out, rows, cols);
    return Tensor.result(out, this.shape, [this], (result) => {
      backend.logSoftmaxBackward(result.data, result.grad!, this.gradBuffer(), rows, cols);
    });
  }

  /** LayerNorm over the last axis with gain `gamma` and bias `beta`, both `[C]`. */
  layerNorm(gamma: Tensor, beta: Tensor, eps = 1e-5): Tensor {
    const cols = this.shape[this.shape.length - 1];
    if (gamma.size !== cols || beta.size !== cols) {
      throw new Error(
        `layerNorm: gain and bias need ${cols} values for shape ${describe(this.shape)}`,
      );
    }
    const rows = this.size / cols;
    const out = backend.allocUninitialized(this.size);
    const mean = backend.allocUninitialized(rows);
    const rstd = backend.allocUninitialized(rows);
    backend.layerNormForward(this.data, gamma.data, beta.data, out, mean, rstd, rows, cols, eps);

    const result = Tensor.result(out, this.shape, [this, gamma, beta], (result) => {
      backend.layerNormBackward(
        result.grad!,
        this.data,
        gamma.data,
        mean,
        rstd,
        this.gradBuffer(),
        gamma.gradBuffer(),
        beta.gradBuffer(),
        rows,
        cols,
      );
    });
    result.scratch.push(mean, rstd);
    return result;
  }

  /**
   * Sets the elements where `mask` is 1 to `value` (e.g. −∞ before a
   * softmax). `mask` covers the last two axes `[M, N]` and repeats over the
   * leading ones. The gradient of a masked element is 0.
   */
  maskedFill(mask: Uint8Array, value: number): Tensor {
    const block = mask.length;
    if (this.size % block !== 0) {
      throw new Error(
        `maskedFill: a mask of ${block} values does not tile shape ${describe(this.shape)}`,
      );
    }
    const out = backend.alloc(this.size);
    for (let i = 0; i < this.size; i++) out[i] = mask[i % block] ? value : this.data[i];

    return Tensor.result(out, this.shape, [this], (result) => {
      const g = result.grad!;
      const dx = this.gradBuffer();
      for (let i = 0; i < g.length; i++) if (!mask[i % block]) dx[i] += g[i];
    });
  }

  /**
   * Mean negative log-likelihood of `targets` under log-probabilities
   * `[…, V]`: `−mean_i this[i, targets[i]]`. A scalar.
   */
  nllLoss(targets: Int32Array): Tensor {
    const vocab = this.shape[this.shape.length - 1];
    const rows = this.size / vocab;
    if (targets.length !== rows) {
      throw new Error(`nllLoss: ${targets.length} targets for ${rows} rows`);
    }
    let total = 0;
    for (let r = 0; r < rows; r++) {
      const t = targets[r];
      if (!(t >= 0 && t < vocab)) throw new Error(`nllLoss: target ${t} is outside [0, ${vocab})`);
      total -= this.data[r * vocab + t];
    }
    const out = backend.alloc(1);
    out[0] = total / rows;

    return Tensor.result(out, [], [this], (result) => {
      const g = result.grad![0] / rows;
      const dx = this.gradBuffer();
      for (let r = 0; r < rows; r++) dx[r * vocab + targets[r]] -= g;
    });
  }

  /**
   * Mean cross-entropy of `targets` under logits `[…, V]`: the same value as
   * `this.logSoftmax().nllLoss(targets)`, in one backend kernel that keeps
   * the probabilities `p`. The gradient of row i is `(p_i − onehot(targets[i])) / rows`.
   */
  crossEntropy(targets: Int32Array): Tensor {
    const vocab = this.shape[this.shape.length - 1];
    const rows = this.size / vocab;
    if (targets.length !== rows) {
      throw new Error(`crossEntropy: ${targets.length} targets for ${rows} rows`);
    }
    for (const t of targets) {
      if (!(t >= 0 && t < vocab)) {
        throw new Error(`crossEntropy: target ${t} is outside [0, ${vocab})`);
      }
    }
    const probs = backend.allocUninitialized(this.size);
    const losses = backend.allocUninitialized(rows);
    backend.crossEntropyForward(this.data, targets, probs, losses, rows, vocab);
    let total = 0;
    for (let r = 0; r < rows; r++) total += losses[r];
    const out = backend.alloc(1);
    out[0] = total / rows;

    const result = Tensor.result(out, [], [this], (result) => {
      const scale = result.grad![0] / rows;
      backend.crossEntropyBackward(probs, targets, this.gradBuffer(), rows, vocab, scale);
    });
    result.scratch.push(probs, losses);
    return result;
  }

  /**
   * Fused multi-head causal self-attention on packed `[B, T, 3C]` queries,
   * keys and values (heads contiguous inside each): returns `[B, T, C]`. It
   * computes the same as the step-by-step version in `lib/gpt.ts`, in one
   * backend kernel.
   */
  attention(heads: number): Tensor {
    if (this.shape.length !== 3 || this.shape[2] % (3 * heads) !== 0) {
      throw new Error(
        `attention needs [B, T, 3C] with C divisible by ${heads}, got ${describe(this.shape)}`,
      );
    }
    const [batch, seqLen, width] = this.shape;
    const channels = width / 3;
    const shape = { batch, seqLen, heads, headSize: channels / heads };
    const out = backend.allocUninitialized(batch * seqLen * channels);
    const probs = backend.allocUninitialized(batch * heads * seqLen * seqLen);
    backend.attentionForward(this.data, out, probs, shape);

    const result = Tensor.result(out, [batch, seqLen, channels], [this], (result) => {
      backend.attentionBackward(result.grad!, this.data, probs, this.gradBuffer(), shape);
    });
    result.scratch.push(probs);
    return result;
  }

  /**
   * Inverted dropout: zeroes each element with probability `p` and scales the
   * rest by 1 / (1 − p). The identity when `p` is 0 or no graph is recorded.
   */
  dropout(p: number, random: () => number): Tensor {
    if (p === 0 || !recording) return this;
    const keep = backend.alloc(this.size);
    const scale = 1 / (1 - p);
    for (let i = 0; i < this.size; i++) keep[i] = random() < p ? 0 : scale;
    const result = this.mul(new Tensor(keep, this.shape));
    result.scratch.push(keep);
    return result;
  }
}

// ---------------------------------------------------------------------------
// Operations on several tensors.

/** Concatenates tensors along the last axis; the leading dimensions must match. */
export function concatCols(tensors: Tensor[]): Tensor {
  if (tensors.length === 0) throw new Error("concatCols needs at least one tensor");
  const lead = tensors[0].shape.slice(0, -1);
  for (const t of tensors) {
    if (!sameShape(t.shape.slice(0, -1), lead)) {
      throw new Error(
        `concatCols: leading dimensions differ, ${
          tensors.map((x) => describe(x.shape)).join(" and ")
        }`,
      );
    }
  }
  const widths = tensors.map((t) => t.shape[t.shape.length - 1]);
  const cols = widths.reduce((a, b) => a + b, 0);
  const rows = sizeOf(lead);
  const out = backend.allocUninitialized(rows * cols);
  let offset = 0;
  tensors.forEach((t, i) => {
    const w = widths[i];
    for (let r = 0; r < rows; r++) out.set(t.data.subarray(r * w, (r + 1) * w), r * cols + offset);
    offset += w;
  });

  return Tensor.result(out, [...lead, cols], tensors, (result) => {
    const g = result.grad!;
    let start = 0;
    tensors.forEach((t, i) => {
      const w = widths[i];
      if (t.requiresGrad) {
        const dx = t.gradBuffer();
        for (let r = 0; r < rows; r++) {
          for (let j = 0; j < w; j++) dx[r * w + j] += g[r * cols + start + j];
        }
      }
      start += w;
    });
  });
}

/**
 * Embedding gather: row `ids[i]` of `weight` `[V, C]` for each id, giving
 * `[...shape, C]`. The backward pass scatter-adds, so a row used by several
 * positions receives the sum of their gradients.
 */
export function embedding(weight: Tensor, ids: Int32Array, shape: readonly number[]): Tensor {
  const [vocab, channels] = weight.shape;
  if (ids.length !== sizeOf(shape)) {
    throw new Error(`embedding: ${ids.length} ids do not fill shape ${describe(shape)}`);
  }
  const out = backend.allocUninitialized(ids.length * channels);
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (!(id >= 0 && id < vocab)) throw new Error(`embedding: id ${id} is outside [0, ${vocab})`);
    out.set(weight.data.subarray(id * channels, (id + 1) * channels), i * channels);
  }

  return Tensor.result(out, [...shape, channels], [weight], (result) => {
    const g = result.grad!;
    const dw = weight.gradBuffer();
    for (let i = 0; i < ids.length; i++) {
      const row = ids[i] * channels;
      for (let c = 0; c < channels; c++) dw[row + c] += g[i * channels + c];
    }
  });
}

/**
 * `a + b` for two tensors of one shape, such as a residual connection, in
 * the backend's `add` kernel. The gradient of each input is the output's.
 */
function addSameShape(a: Tensor, b: Tensor): Tensor {
  const out = backend.allocUninitialized(a.size);
  backend.add(a.data, b.data, out, a.size);

  return Tensor.result(out, a.shape, [a, b], (result) => {
    const g = result.grad!;
    if (a.requiresGrad) {
      const da = a.gradBuffer();
      backend.add(da, g, da, a.size);
    }
    if (b.requiresGrad) {
      const db = b.gradBuffer();
      backend.add(db, g, db, b.size);
    }
  });
}

/** Returns the causal mask `[T, T]`: 1 above the diagonal, where a position would see the future. */
export function causalMask(seqLen: number): Uint8Array {
  const mask = new Uint8Array(seqLen * seqLen);
  for (let i = 0; i < seqLen; i++) {
    for (let j = i + 1; j < seqLen; j++) mask[i * seqLen + j] = 1;
  }
  return mask;
}

// ---------------------------------------------------------------------------
// Kernels that need no backend: broadcasting arithmetic, reductions, permutes.

type Arithmetic = "add" | "sub" | "mul" | "div";

function elementwise(a: Tensor, other: Tensor | number, op: Arithmetic): Tensor {
  const b = typeof other === "number" ? new Tensor(Float32Array.of(other), []) : other;
  const suffix = a.shape.slice(a.shape.length - b.shape.length);
  if (!sameShape(suffix, b.shape)) {
    throw new Error(
      `${op}: shape ${describe(b.shape)} does not broadcast onto ${describe(a.shape)}`,
    );
  }
  const x = a.data;
  const y = b.data;
  const n = x.length;
  const m = y.length;
  const out = backend.allocUninitialized(n);
  // The output is n / m blocks of m elements, and block element j uses y[j].
  // Nested loops rather than an index modulo m, which costs an integer division per element.
  for (let start = 0; start < n; start += m) {
    switch (op) {
      case "add":
        for (let j = 0; j < m; j++) out[start + j] = x[start + j] + y[j];
        break;
      case "sub":
        for (let j = 0; j < m; j++) out[start + j] = x[start + j] - y[j];
        break;
      case "mul":
        for (let j = 0; j < m; j++) out[start + j] = x[start + j] * y[j];
        break;
      case "div":
        for (let j = 0; j < m; j++) out[start + j] = x[start + j] / y[j];
        break;
    }
  }

  return Tensor.result(out, a.shape, [a, b], (result) => {
    const g = result.grad!;
    // d(a op b)/da and d(a op b)/db, summed over the broadcast positions of b.
    if (a.requiresGrad) {
      const da = a.gradBuffer();
      for (let start = 0; start < n; start += m) {
        switch (op) {
          case "add":
          case "sub":
            for (let j = 0; j < m; j++) da[start + j] += g[start + j];
            break;
          case "mul":
            for (let j = 0; j < m; j++) da[start + j] += g[start + j] * y[j];
            break;
          case "div":
            for (let j = 0; j < m; j++) da[start + j] += g[start + j] / y[j];
            break;
        }
      }
    }
    if (b.requiresGrad) {
      const db = b.gradBuffer();
      for (let start = 0; start < n; start += m) {
        switch (op) {
          case "add":
            for (let j = 0; j < m; j++) db[j] += g[start + j];
            break;
          case "sub":
            for (let j = 0; j < m; j++) db[j] -= g[start + j];
            break;
          case "mul":
            for (let j = 0; j < m; j++) db[j] += g[start + j] * x[start + j];
            break;
          case "div":
            for (let j = 0; j < m; j++) db[j] -= g[start + j] * x[start + j] / (y[j] * y[j]);
            break;
        }
      }
    }
  });
}

function reduce(x: Tensor, axis: number | undefined, average: boolean): Tensor {
  // View the shape as [outer, length, inner] around the reduced axis.
  const rank = x.shape.length;
  let a = -1;
  if (axis !== undefined) a = axis < 0 ? rank + axis : axis;
  if (axis !== undefined && !(a >= 0 && a < rank)) {
    throw new Error(`axis ${axis} is out of range for shape ${describe(x.shape)}`);
  }
  const length = a < 0 ? x.size : x.shape[a];
  const inner = a < 0 ? 1 : sizeOf(x.shape.slice(a + 1));
  const outer = x.size / (length * inner);
  const shape = a < 0 ? [] : x.shape.filter((_, i) => i !== a);
  const scale = average ? 1 / length : 1;

  const out = backend.alloc(outer * inner);
  for (let o = 0; o < outer; o++) {
    for (let l = 0; l < length; l++) {
      const base = (o * length + l) * inner;
      for (let i = 0; i < inner; i++) out[o * inner + i] += x.data[base + i];
    }
  }
  for (let i = 0; i < out.length; i++) out[i] *= scale;

  return Tensor.result(out, shape, [x], (result) => {
    const g = result.grad!;
    const dx = x.gradBuffer();
    for (let o = 0; o < outer; o++) {
      for (let l = 0; l < length; l++) {
        const base = (o * length + l) * inner;
        for (let i = 0; i < inner; i++) dx[base + i] += g[o * inner + i] * scale;
      }
    }
  });
}

/** Writes `x` with its axes reordered by `permutation` into `out`. */
function permute(
  x: Float32Array,
  shape: readonly number[],
  permutation: number[],
  out: Float32Array,
): void {
  const rank = shape.length;
  const strides = new Array<number>(rank);
  let stride = 1;
  for (let i = rank - 1; i >= 0; i--) {
    strides[i] = stride;
    stride *= shape[i];
  }
  const outShape = permutation.map((p) => shape[p]);
  const inStrides = permutation.map((p) => strides[p]);
  const index = new Array<number>(rank).fill(0);
  let source = 0;
  for (let o = 0; o < out.length; o++) {
    out[o] = x[source];
    // Advance the output index like an odometer, tracking the source offset.
    for (let d = rank - 1; d >= 0; d--) {
      index[d]++;
      source += inStrides[d];
      if (index[d] < outShape[d]) break;
      source -= inStrides[d] * outShape[d];
      index[d] = 0;
    }
  }
}
