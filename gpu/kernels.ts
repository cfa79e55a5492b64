/**
 * The compute kernels for training a GPT on WebGPU, forward and backward in
 * pairs, and the `Kernels` class that records them into plans. The WGSL
 * sources are in `wgsl.ts`, the runtime (views, buffer pool, plans) in
 * `runtime.ts`; this module re-exports both.
 *
 * The kernels follow the conventions of `lib/backend.ts` (row-major `f32`
 * arrays, LayerNorm with biased variance, GELU with the tanh approximation,
 * attention on a packed `qkv` `[B, T, 3C]`), and `tests/webgpu_test.ts`
 * checks each one against the `js` reference backend. A GPU kernel that
 * overwrites its output in place, where the reference adds into a separate
 * output, states this in its documentation.
 *
 * Every reduction runs in a fixed order inside one workgroup or one thread,
 * and no kernel uses atomics, so a plan gives bit-identical results on every
 * run on the same adapter.
 *
 * @example
 * ```ts
 * import { requestGpu } from "./device.ts";
 * import { download, Kernels, Plan, STORAGE_USAGE, upload, viewOf } from "./kernels.ts";
 * const { device } = await requestGpu();
 * const kernels = await Kernels.create(device);
 * const matrix = (values: number[]) => {
 *   const view = viewOf(device.createBuffer({ size: values.length * 4, usage: STORAGE_USAGE }));
 *   upload(device, view, Float32Array.from(values));
 *   return view;
 * };
 * const a = matrix([1, 2, 3, 4]); // [2, 2]
 * const b = matrix([5, 6, 7, 8]); // [2, 2]
 * const c = matrix([0, 0, 0, 0]);
 * const plan = new Plan(device);
 * kernels.matmul(plan, a, b, c, { m: 2, n: 2, k: 2 });
 * plan.submit();
 * console.log(await download(device, c)); // Float32Array [19, 22, 43, 50]
 * ```
 *
 * @module
 */

import type { AttentionShape, MatmulOptions } from "../lib/backend.ts";
import { type Binding, type GpuView, type Plan, UniformWriter } from "./runtime.ts";
import {
  ELEMENT_THREADS,
  KERNEL_SOURCES,
  type KernelName,
  NORM_PARTIALS,
  STATS_LENGTH,
  TILE_M,
  TILE_N,
} from "./wgsl.ts";

export * from "./runtime.ts";
export type { AttentionShape, MatmulOptions } from "../lib/backend.ts";
export {
  KERNEL_SOURCES,
  type KernelName,
  NORM_PARTIALS,
  STAT_CLIP,
  STAT_LOSS,
  STAT_NORM,
  STATS_LENGTH,
} from "./wgsl.ts";

// ---------------------------------------------------------------------------
// Host-side helpers.

/** Options of the GPU matrix product; extends the `js` backend's options with strides and offsets. */
export interface GemmOptions extends MatmulOptions {
  /** Elements between rows of A as stored (default: its stored column count). */
  lda?: number;
  /** Elements between rows of B as stored (default: its stored column count). */
  ldb?: number;
  /** Elements between rows of C (default `n`). */
  ldc?: number;
  /** First element of A inside its view (default 0). */
  offsetA?: number;
  /** First element of B inside its view (default 0). */
  offsetB?: number;
  /** First element of C inside its view (default 0). */
  offsetC?: number;
  /**
   * Splits the batch index p into `outer = p / batchInner` and
   * `inner = p % batchInner`, so matrix p of A starts at
   * `offsetA + outer · strideA + inner · strideAInner` (likewise for B and C).
   * Default 1, which leaves the plain strides of `MatmulOptions`.
   */
  batchInner?: number;
  /** Elements between the inner batch entries of A (default 0). */
  strideAInner?: number;
  /** Elements between the inner batch entries of B (default 0). */
  strideBInner?: number;
  /** Elements between the inner batch entries of C (default 0). */
  strideCInner?: number;
  /** Factor on the product: `C (+)= alpha · op(A) · op(B)` (default 1). */
  alpha?: number;
}

/**
 * Returns the index of token occurrences that the embedding backward kernel
 * reads: elements `[0, V]` are the start offsets of each token's run, and
 * element `V + 1 + p` is the p-th position when positions are sorted by
 * token, then by position. `out` is reused when given.
 *
 * @throws RangeError for a token id outside `[0, vocabSize)`.
 */
export function buildTokenIndex(
  tokens: Int32Array,
  vocabSize: number,
  out: Uint32Array = new Uint32Array(vocabSize + 1 + tokens.length),
): Uint32Array {
  if (out.length < vocabSize + 1 + tokens.length) {
    throw new RangeError(
      `token index needs ${vocabSize + 1 + tokens.length} elements, got ${out.length}`,
    );
  }
  out.fill(0, 0, vocabSize + 1);
  for (let p = 0; p < tokens.length; p++) {
    const token = tokens[p];
    if (!Number.isInteger(token) || token < 0 || token >= vocabSize) {
      throw new RangeError(`token id ${token} at position ${p} is outside [0, ${vocabSize})`);
    }
    out[token + 1]++;
  }
  for (let v = 0; v < vocabSize; v++) out[v + 1] += out[v];

  // Counting sort: a second cursor array keeps the start offsets intact.
  const cursor = out.slice(0, vocabSize);
  for (let p = 0; p < tokens.length; p++) {
    out[vocabSize + 1 + cursor[tokens[p]]++] = p;
  }
  return out;
}

/** One of the three GEMM operands. */
type Operand = "A" | "B" | "C";

/** The batch and stride options of one GEMM operand. */
type OperandLayout = Omit<GemmOptions, "m" | "n" | "k">;

/** Compiled kernels by device, so that each device compiles each kernel once. */
const compiledKernels = new WeakMap<GPUDevice, Promise<Kernels>>();

/** Throws when an operand of a kernel would reach past the end of its view. */
function requireFits(operand: string, view: GpuView, lastIndex: number): void {
  if (lastIndex >= view.length) {
    throw new RangeError(
      `${operand} reaches element ${lastIndex} of a view of ${view.length} elements`,
    );
  }
}

/** Throws unless `values` are all positive integers, naming the kernel. */
function requirePositive(kernel: string, values: Record<string, number>): void {
  for (const [name, value] of Object.entries(values)) {
    if (!Number.isInteger(value) || value <= 0) {
      throw new RangeError(`${kernel}: ${name} must be a positive integer, got ${value}`);
    }
  }
}

// ---------------------------------------------------------------------------
// The kernels, as methods that record dispatches into a plan.

/**
 * The compiled kernels of one device. Each method validates its sizes and
 * records one or more dispatches into a `Plan`; nothing runs until the plan
 * is submitted.
 */
export class Kernels {
  /** The device the pipelines were compiled for. */
  readonly device: GPUDevice;
  readonly #pipelines: Map<string, GPUComputePipeline>;

  private constructor(device: GPUDevice, pipelines: Map<string, GPUComputePipeline>) {
    this.device = device;
    this.#pipelines = pipelines;
  }

  /**
   * Returns the kernels of `device`, compiling every kernel in parallel on
   * the first call for that device. Later calls return the same instance.
   *
   * @throws Error naming the kernel whose WGSL failed to compile.
   */
  static create(device: GPUDevice): Promise<Kernels> {
    let kernels = compiledKernels.get(device);
    if (kernels === undefined) {
      kernels = Kernels.#compile(device);
      compiledKernels.set(device, kernels);
      // A failed compilation is not cached, so that a later call reports it again.
      kernels.catch(() => compiledKernels.delete(device));
    }
    return kernels;
  }

  static async #compile(device: GPUDevice): Promise<Kernels> {
    const entries = await Promise.all(
      Object.entries(KERNEL_SOURCES).map(async ([name, code]) => {
        const module = device.createShaderModule({ label: name, code });
        try {
          const pipeline = await device.createComputePipelineAsync({
            label: name,
            layout: "auto",
            compute: { module, entryPoint: "main" },
          });
          return [name, pipeline] as const;
        } catch (error) {
          const info = await module.getCompilationInfo();
          const messages = info.messages.map((m) => `${m.lineNum}:${m.linePos} ${m.message}`);
          throw new Error(
            `WGSL kernel "${name}" failed to compile: ${String(error)} ${messages.join("; ")}`,
          );
        }
      }),
    );
    return new Kernels(device, new Map(entries));
  }

  /** Returns the cached pipeline of a kernel. */
  pipeline(name: KernelName): GPUComputePipeline {
    const pipeline = this.#pipelines.get(name);
    if (pipeline === undefined) throw new Error(`no kernel named "${name}"`);
    return pipeline;
  }

  /** Returns a grid of `count` workgroups, folded into two dimensions when one is not enough. */
  grid(count: number): [number, number, number] {
    const max = this.device.limits.maxComputeWorkgroupsPerDimension;
    if (count <= max) return [count, 1, 1];
    const x = max;
    return [x, Math.ceil(count / x), 1];
  }

  #record(
    plan: Plan,
    name: KernelName,
    uniform: UniformWriter | null,
    bindings: Binding[],
    workgroups: [number, number, number],
  ): void {
    const all = uniform === null ? bindings : [plan.uniform(uniform.bytes()), ...bindings];
    plan.dispatch(name, this.pipeline(name), all, workgroups);
  }

  #elementwise(
    plan: Plan,
    name: KernelName,
    uniform: UniformWriter,
    bindings: Binding[],
    length: number,
  ): void {
    this.#record(plan, name, uniform, bindings, this.grid(Math.ceil(length / ELEMENT_THREADS)));
  }

  // -- matrix products ------------------------------------------------------

  /**
   * Records `C (+)= alpha · op(A) · op(B)` with the tiled GEMM, batched over
   * `options.batch` matrices. Transposed operands are read in place.
   */
  matmul(plan: Plan, a: GpuView, b: GpuView, c: GpuView, options: GemmOptions): void {
    const { m, n, k } = options;
    requirePositive("matmul", { m, n, k });
    const transA = options.transA ?? false;
    const transB = options.transB ?? false;
    const batch = options.batch ?? 1;
    const batchInner = options.batchInner ?? 1;
    requirePositive("matmul", { batch, batchInner });
    const lda = options.lda ?? (transA ? m : k);
    const ldb = options.ldb ?? (transB ? k : n);
    const ldc = options.ldc ?? n;
    const offsetA = options.offsetA ?? 0;
    const offsetB = options.offsetB ?? 0;
    const offsetC = options.offsetC ?? 0;
    const strideA = options.strideA ?? m * k;
    const strideB = options.strideB ?? k * n;
    const strideC = options.strideC ?? m * n;
    const strideAInner = options.strideAInner ?? 0;
    const strideBInner = options.strideBInner ?? 0;
    const strideCInner = options.strideCInner ?? 0;

    // The last element each operand touches, to reject layouts that overrun.
    const outerLast = Math.ceil(batch / batchInner) - 1;
    const innerLast = Math.min(batch, batchInner) - 1;
    const last = (
      offset: number,
      outer: number,
      inner: number,
      rows: number,
      cols: number,
      ld: number,
    ) => offset + outerLast * outer + innerLast * inner + (rows - 1) * ld + cols - 1;
    requireFits(
      "matmul A",
      a,
      last(offsetA, strideA, strideAInner, transA ? k : m, transA ? m : k, lda),
    );
    requireFits(
      "matmul B",
      b,
      last(offsetB, strideB, strideBInner, transB ? n : k, transB ? k : n, ldb),
    );
    requireFits("matmul C", c, last(offsetC, strideC, strideCInner, m, n, ldc));

    const uniform = new UniformWriter()
      .u32(m).u32(n).u32(k)
      .u32(lda).u32(ldb).u32(ldc)
      .u32(offsetA).u32(offsetB).u32(offsetC)
      .u32(batchInner)
      .u32(strideA).u32(strideAInner)
      .u32(strideB).u32(strideBInner)
      .u32(strideC).u32(strideCInner)
      .f32(options.alpha ?? 1)
      .u32(options.accumulate ? 1 : 0);
    const name = `matmul${transA ? "T" : "N"}${transB ? "T" : "N"}` as KernelName;
    const workgroups: [number, number, number] = [
      Math.ceil(n / TILE_N),
      Math.ceil(m / TILE_M),
      batch,
    ];
    this.#record(plan, name, uniform, [a, b, c], workgroups);
  }

  // -- elementwise ------------------------------------------------------------

  /** Records `out = a + b` over `length` elements. */
  add(plan: Plan, a: GpuView, b: GpuView, out: GpuView, length: number): void {
    requirePositive("add", { length });
    for (const [operand, view] of [["a", a], ["b", b], ["out", out]] as const) {
      requireFits(`add ${operand}`, view, length - 1);
    }
    this.#elementwise(plan, "add", new UniformWriter().u32(length), [a, b, out], length);
  }

  /** Records `x[r, j] += bias[j]` for `x` `[rows, cols]`, in place. */
  biasAdd(plan: Plan, x: GpuView, bias: GpuView, rows: number, cols: number): void {
    requirePositive("biasAdd", { rows, cols });
    requireFits("biasAdd x", x, rows * cols - 1);
    requireFits("biasAdd bias", bias, cols - 1);
    const uniform = new UniformWriter().u32(rows * cols).u32(cols);
    this.#elementwise(plan, "biasAdd", uniform, [x, bias], rows * cols);
  }

  /** Records `dbias[j] += Σ_r dy[r, j]`, the bias gradient of a linear layer. */
  biasBackward(plan: Plan, dy: GpuView, dbias: GpuView, rows: number, cols: number): void {
    requirePositive("biasBackward", { rows, cols });
    requireFits("biasBackward dy", dy, rows * cols - 1);
    requireFits("biasBackward dbias", dbias, cols - 1);
    const uniform = new UniformWriter().u32(rows).u32(cols);
    this.#record(plan, "biasBackward", uniform, [dy, dbias], [Math.ceil(cols / 32), 1, 1]);
  }

  /** Records `y = gelu(x)` over `length` elements. */
  geluForward(plan: Plan, x: GpuView, y: GpuView, length: number): void {
    requirePositive("geluForward", { length });
    requireFits("geluForward x", x, length - 1);
    requireFits("geluForward y", y, length - 1);
    this.#elementwise(plan, "geluForward", new UniformWriter().u32(length), [x, y], length);
  }

  /**
   * Records `d = d · gelu'(x)` in place. Unlike the `js` backend's
   * `geluBackward`, which adds into a separate `dx`, this overwrites the
   * output gradient with the input gradient.
   */
  geluBackward(plan: Plan, x: GpuView, d: GpuView, length: number): void {
    requirePositive("geluBackward", { length });
    requireFits("geluBackward x", x, length - 1);
    requireFits("geluBackward d", d, length - 1);
    this.#elementwise(plan, "geluBackward", new UniformWriter().u32(length), [x, d], length);
  }

  // -- embeddings ---------------------------------------------------------------

  /** Records `out[b, t] = wte[tokens[b, t]] + wpe[t]` for `batch × seqLen` tokens of width `channels`. */
  embeddingForward(
    plan: Plan,
    tokens: GpuView,
    wte: GpuView,
    wpe: GpuView,
    out: GpuView,
    shape: { batch: number; seqLen: number; channels: number },
  ): void {
    const { batch, seqLen, channels } = shape;
    requirePositive("embeddingForward", { batch, seqLen, channels });
    const length = batch * seqLen * channels;
    requireFits("embeddingForward tokens", tokens, batch * seqLen - 1);
    requireFits("embeddingForward wpe", wpe, seqLen * channels - 1);
    requireFits("embeddingForward out", out, length - 1);
    const uniform = new UniformWriter().u32(length).u32(channels).u32(seqLen);
    this.#elementwise(plan, "embeddingForward", uniform, [tokens, wte, wpe, out], length);
  }

  /**
   * Records the embedding backward pass: `dwte[v] += Σ dout[n]` over the
   * positions n of token v, read from a `buildTokenIndex` of the same
   * tokens, and `dwpe[t] += Σ_b dout[b, t]`.
   */
  embeddingBackward(
    plan: Plan,
    dout: GpuView,
    tokenIndex: GpuView,
    dwte: GpuView,
    dwpe: GpuView,
    shape: { batch: number; seqLen: number; channels: number; vocab: number },
  ): void {
    const { batch, seqLen, channels, vocab } = shape;
    requirePositive("embeddingBackward", { batch, seqLen, channels, vocab });
    requireFits("embeddingBackward dout", dout, batch * seqLen * channels - 1);
    requireFits("embeddingBackward tokenIndex", tokenIndex, vocab + batch * seqLen);
    requireFits("embeddingBackward dwte", dwte, vocab * channels - 1);
    requireFits("embeddingBackward dwpe", dwpe, seqLen * channels - 1);

    const tokenLength = vocab * channels;
    const tokenUniform = new UniformWriter().u32(tokenLength).u32(channels).u32(vocab);
    this.#elementwise(
      plan,
      "embeddingBackwardTokens",
      tokenUniform,
      [dout, tokenIndex, dwte],
      tokenLength,
    );

    const positionLength = seqLen * channels;
    const positionUniform = new UniformWriter()
      .u32(positionLength).u32(channels).u32(seqLen).u32(batch);
    this.#elementwise(
      plan,
      "embeddingBackwardPositions",
      positionUniform,
      [dout, dwpe],
      positionLength,
    );
  }

  // -- LayerNorm ------------------------------------------------------------------

  /** Records LayerNorm of each row of `x` `[rows, cols]`, as `Backend.layerNormForward`. */
  layerNormForward(
    plan: Plan,
    x: GpuView,
    gamma: GpuView,
    beta: GpuView,
    y: GpuView,
    mean: GpuView,
    rstd: GpuView,
    rows: number,
    cols: number,
    eps: number,
  ): void {
    requirePositive("layerNormForward", { rows, cols });
    requireFits("layerNormForward x", x, rows * cols - 1);
    requireFits("layerNormForward y", y, rows * cols - 1);
    requireFits("layerNormForward gamma", gamma, cols - 1);
    requireFits("layerNormForward beta", beta, cols - 1);
    requireFits("layerNormForward mean", mean, rows - 1);
    requireFits("layerNormForward rstd", rstd, rows - 1);
    const uniform = new UniformWriter().u32(rows).u32(cols).f32(eps);
    this.#record(
      plan,
      "layerNormForward",
      uniform,
      [x, gamma, beta, y, mean, rstd],
      this.grid(rows),
    );
  }

  /** Records the LayerNorm backward pass, adding into `dx`, `dgamma` and `dbeta` as `Backend.layerNormBackward`. */
  layerNormBackward(
    plan: Plan,
    dy: GpuView,
    x: GpuView,
    gamma: GpuView,
    mean: GpuView,
    rstd: GpuView,
    dx: GpuView,
    dgamma: GpuView,
    dbeta: GpuView,
    rows: number,
    cols: number,
  ): void {
    requirePositive("layerNormBackward", { rows, cols });
    for (const [operand, view] of [["dy", dy], ["x", x], ["dx", dx]] as const) {
      requireFits(`layerNormBackward ${operand}`, view, rows * cols - 1);
    }
    for (
      const [operand, view] of [["gamma", gamma], ["dgamma", dgamma], ["dbeta", dbeta]] as const
    ) {
      requireFits(`layerNormBackward ${operand}`, view, cols - 1);
    }
    requireFits("layerNormBackward mean", mean, rows - 1);
    requireFits("layerNormBackward rstd", rstd, rows - 1);
    const uniform = () => new UniformWriter().u32(rows).u32(cols);
    this.#record(
      plan,
      "layerNormBackward",
      uniform(),
      [dy, x, gamma, mean, rstd, dx],
      this.grid(rows),
    );
    this.#record(
      plan,
      "layerNormParamsBackward",
      uniform(),
      [dy, x, mean, rstd, dgamma, dbeta],
      [Math.ceil(cols / 32), 1, 1],
    );
  }

  // -- softmax and attention ----------------------------------------------------------

  /**
   * Records softmax of each row of `x` `[rows, cols]` in place. With
   * `causalT` > 0, row r keeps only its first `r % causalT + 1` entries and
   * the rest become 0.
   */
  softmaxForward(plan: Plan, x: GpuView, rows: number, cols: number, causalT = 0): void {
    requirePositive("softmaxForward", { rows, cols });
    requireFits("softmaxForward x", x, rows * cols - 1);
    const uniform = new UniformWriter().u32(rows).u32(cols).u32(causalT);
    this.#record(plan, "softmaxForward", uniform, [x], this.grid(rows));
  }

  /**
   * Records the softmax backward pass in place: `d = scale · y ⊙ (d − Σ d ⊙ y)`
   * from the softmax output `y`. Unlike the `js` backend's `softmaxBackward`,
   * which adds into a separate `dx`, this overwrites `d`.
   */
  softmaxBackward(
    plan: Plan,
    y: GpuView,
    d: GpuView,
    rows: number,
    cols: number,
    options: { scale?: number; causalT?: number } = {},
  ): void {
    requirePositive("softmaxBackward", { rows, cols });
    requireFits("softmaxBackward y", y, rows * cols - 1);
    requireFits("softmaxBackward d", d, rows * cols - 1);
    const uniform = new UniformWriter()
      .u32(rows).u32(cols).u32(options.causalT ?? 0).f32(options.scale ?? 1);
    this.#record(plan, "softmaxBackward", uniform, [y, d], this.grid(rows));
  }

  /**
   * Records causal self-attention as `Backend.attentionForward` in three
   * dispatches. A batched GEMM computes the scores `S = Q·Kᵀ/√D` into
   * `probs` `[B, H, T, T]`, reading q and k in place inside `qkv`. The causal
   * softmax then turns S into weights P in place. A second GEMM computes
   * `y = P·V` and writes each head's columns of `y` `[B, T, C]`.
   */
  attentionForward(
    plan: Plan,
    qkv: GpuView,
    y: GpuView,
    probs: GpuView,
    shape: AttentionShape,
  ): void {
    const { batch: B, seqLen: T, heads: H, headSize: D } = shape;
    requirePositive("attentionForward", { B, T, H, D });
    const C = H * D;
    const heads = this.#headLayout(shape);

    this.matmul(plan, qkv, qkv, probs, {
      m: T,
      n: T,
      k: D,
      transB: true,
      alpha: 1 / Math.sqrt(D),
      ...heads.q("A"),
      ...heads.k("B"),
      ...heads.probs("C"),
    });
    this.softmaxForward(plan, probs, B * H * T, T, T);
    this.matmul(plan, probs, qkv, y, {
      m: T,
      n: D,
      k: T,
      ...heads.probs("A"),
      ...heads.v("B"),
      ...heads.out("C", C),
    });
  }

  /**
   * Records the attention backward pass from the output gradient `dy` and
   * the stored `probs`. `dprobs` `[B, H, T, T]` is scratch space. With
   * `accumulate` the gradients add into `dqkv`, as `Backend.attentionBackward`
   * does; without it they overwrite it.
   */
  attentionBackward(
    plan: Plan,
    dy: GpuView,
    qkv: GpuView,
    probs: GpuView,
    dprobs: GpuView,
    dqkv: GpuView,
    shape: AttentionShape,
    accumulate: boolean,
  ): void {
    const { batch: B, seqLen: T, heads: H, headSize: D } = shape;
    requirePositive("attentionBackward", { B, T, H, D });
    const C = H * D;
    const heads = this.#headLayout(shape);

    // dP = dY · Vᵀ, then dV (+)= Pᵀ · dY.
    this.matmul(plan, dy, qkv, dprobs, {
      m: T,
      n: T,
      k: D,
      transB: true,
      ...heads.out("A", C),
      ...heads.v("B"),
      ...heads.probs("C"),
    });
    this.matmul(plan, probs, dy, dqkv, {
      m: T,
      n: D,
      k: T,
      transA: true,
      accumulate,
      ...heads.probs("A"),
      ...heads.out("B", C),
      ...heads.v("C"),
    });

    // dS = P ⊙ (dP − Σ dP ⊙ P) / √D, the gradient of the scaled scores.
    this.softmaxBackward(plan, probs, dprobs, B * H * T, T, {
      scale: 1 / Math.sqrt(D),
      causalT: T,
    });

    // dQ (+)= dS · K and dK (+)= dSᵀ · Q.
    this.matmul(plan, dprobs, qkv, dqkv, {
      m: T,
      n: D,
      k: T,
      accumulate,
      ...heads.probs("A"),
      ...heads.k("B"),
      ...heads.q("C"),
    });
    this.matmul(plan, dprobs, qkv, dqkv, {
      m: T,
      n: D,
      k: T,
      transA: true,
      accumulate,
      ...heads.probs("A"),
      ...heads.q("B"),
      ...heads.k("C"),
    });
  }

  /**
   * Returns GEMM operand layouts for one attention head per batch entry:
   * batch index p = b·H + h, so the outer stride steps over sequences and
   * the inner stride over heads.
   */
  #headLayout(shape: AttentionShape) {
    const { seqLen: T, heads: H, headSize: D } = shape;
    const C = H * D;
    const batch = shape.batch * H;
    const operand = (
      role: Operand,
      offset: number,
      ld: number,
      outer: number,
      inner: number,
    ): OperandLayout => {
      switch (role) {
        case "A":
          return {
            batch,
            batchInner: H,
            lda: ld,
            offsetA: offset,
            strideA: outer,
            strideAInner: inner,
          };
        case "B":
          return {
            batch,
            batchInner: H,
            ldb: ld,
            offsetB: offset,
            strideB: outer,
            strideBInner: inner,
          };
        case "C":
          return {
            batch,
            batchInner: H,
            ldc: ld,
            offsetC: offset,
            strideC: outer,
            strideCInner: inner,
          };
      }
    };
    // q, k and v of head h are D columns at h·D inside rows of 3C.
    const packed = (part: number) => (role: Operand) =>
      operand(role, part * C, 3 * C, T * 3 * C, D);
    return {
      q: packed(0),
      k: packed(1),
      v: packed(2),
      probs: (role: Operand) => operand(role, 0, T, H * T * T, T * T),
      out: (role: Operand, width: number) => operand(role, 0, width, T * width, D),
    };
  }

  // -- loss -------------------------------------------------------------------------------

  /**
   * Records the cross-entropy of each row of `logits` `[rows, vocab]`
   * against `targets` (i32) into `losses`. With `gradScale` (usually
   * 1 / rows for a mean loss) it also overwrites the logits with the
   * gradient of `gradScale · Σ losses`.
   */
  crossEntropy(
    plan: Plan,
    logits: GpuView,
    targets: GpuView,
    losses: GpuView,
    rows: number,
    vocab: number,
    gradScale: number | null,
  ): void {
    requirePositive("crossEntropy", { rows, vocab });
    requireFits("crossEntropy logits", logits, rows * vocab - 1);
    requireFits("crossEntropy targets", targets, rows - 1);
    requireFits("crossEntropy losses", losses, rows - 1);
    const uniform = new UniformWriter()
      .u32(rows).u32(vocab).u32(gradScale === null ? 0 : 1).f32(gradScale ?? 0);
    this.#record(plan, "crossEntropy", uniform, [logits, targets, losses], this.grid(rows));
  }

  /** Records `out[index] = scale · Σ values[0 .. length)` in one workgroup. */
  sum(plan: Plan, values: GpuView, length: number, out: GpuView, index: number, scale = 1): void {
    requirePositive("sum", { length });
    requireFits("sum values", values, length - 1);
    requireFits("sum out", out, index);
    const uniform = new UniformWriter().u32(length).u32(index).f32(scale);
    this.#record(plan, "sum", uniform, [values, out], [1, 1, 1]);
  }

  // -- gradient norm, clipping and AdamW ----------------------------------------------

  /**
   * Records the L2 norm of all `grads` views together into
   * `stats[STAT_NORM]`, and the clipping factor into `stats[STAT_CLIP]`: 1
   * when `maxNorm` is null, else `min(1, maxNorm / (norm + 1e-6))`.
   * `partials` needs `NORM_PARTIALS` elements per view.
   */
  gradNorm(
    plan: Plan,
    grads: GpuView[],
    partials: GpuView,
    stats: GpuView,
    maxNorm: number | null,
  ): void {
    requireFits("gradNorm partials", partials, grads.length * NORM_PARTIALS - 1);
    requireFits("gradNorm stats", stats, STATS_LENGTH - 1);
    grads.forEach((grad, index) => {
      const slot: GpuView = {
        buffer: partials.buffer,
        offset: partials.offset + index * NORM_PARTIALS,
        length: NORM_PARTIALS,
      };
      const uniform = new UniformWriter().u32(grad.length);
      this.#record(plan, "sumOfSquares", uniform, [grad, slot], [NORM_PARTIALS, 1, 1]);
    });
    const uniform = new UniformWriter()
      .u32(grads.length * NORM_PARTIALS).u32(maxNorm === null ? 0 : 1).f32(maxNorm ?? 0);
    this.#record(plan, "gradNormFinish", uniform, [partials, stats], [1, 1, 1]);
  }

  /**
   * Records one AdamW update of `param` as `Backend.adamwUpdate`, with the
   * gradient first multiplied by `stats[STAT_CLIP]`. `step` is a uniform
   * buffer written by `writeAdamStep` before each submit, so one recorded
   * plan serves every step.
   */
  adamw(
    plan: Plan,
    step: GPUBuffer,
    param: GpuView,
    grad: GpuView,
    m: GpuView,
    v: GpuView,
    stats: GpuView,
    weightDecay: number,
  ): void {
    const length = param.length;
    requirePositive("adamw", { length });
    for (const [operand, view] of [["grad", grad], ["m", m], ["v", v]] as const) {
      requireFits(`adamw ${operand}`, view, length - 1);
    }
    requireFits("adamw stats", stats, STATS_LENGTH - 1);
    const uniform = new UniformWriter().u32(length).f32(weightDecay);
    this.#record(
      plan,
      "adamw",
      null,
      [step, plan.uniform(uniform.bytes()), param, grad, m, v, stats],
      this.grid(Math.ceil(length / ELEMENT_THREADS)),
    );
  }
}

/** Bytes of the uniform buffer that `adamw` reads the per-step hyperparameters from. */
export const ADAM_STEP_BYTES = 32;

/**
 * Writes the per-step AdamW hyperparameters into `buffer`, with the bias
 * corrections `1 − β₁ᵗ` and `1 − β₂ᵗ` of the 1-based step `t`.
 */
export function writeAdamStep(
  device: GPUDevice,
  buffer: GPUBuffer,
  hyper: { lr: number; beta1: number; beta2: number; eps: number; step: number },
): void {
  const { lr, beta1, beta2, eps, step } = hyper;
  const values = new Float32Array([lr, beta1, beta2, eps, 1 - beta1 ** step, 1 - beta2 ** step]);
  const data = new Float32Array(ADAM_STEP_BYTES / 4);
  data.set(values);
  device.queue.writeBuffer(buffer, 0, data);
}
