/**
 * WebGPU kernels and the GPU trainer against the `js` reference backend.
 *
 * These tests need a WebGPU adapter, and Mesa's software renderer llvmpipe
 * is enough. Without an adapter they fail with the message of `requestGpu`
 * instead of being skipped. The sizes are tiny because llvmpipe runs at
 * about 1 GFLOP/s, and many of them are not multiples of the 64 × 64 GEMM
 * tile or of the 256-thread workgroups. The first run on a machine also
 * compiles every shader with LLVM (about 35 s on a 2-core x86-64 machine),
 * and llvmpipe caches the results in ~/.cache/mesa_shader_cache.
 *
 * Tolerances: the GPU computes in f32 and sums in a different order than the
 * reference, which computes in f64 from f32 inputs. Elementwise kernels agree
 * to about 1e-6 and reductions over a few hundred terms to about 1e-5, so
 * kernel checks use `|gpu − cpu| ≤ 1e-4 + 1e-4·|cpu|` unless a test states
 * otherwise.
 *
 * Run: deno test --allow-read --allow-env tests/webgpu_test.ts
 */

import assert from "node:assert/strict";
import { type AttentionShape, jsBackend } from "../lib/backend.ts";
import { GPT, type GPTConfig } from "../lib/gpt.ts";
import { noGrad } from "../lib/tensor.ts";
import { namedParameters } from "../lib/nn.ts";
import { AdamW, clipGradNorm, decayGroups, gradNorm } from "../lib/optim.ts";
import { Random } from "../lib/random.ts";
import { type Gpu, NO_ADAPTER_MESSAGE, requestGpu } from "../gpu/device.ts";
import {
  ADAM_STEP_BYTES,
  buildTokenIndex,
  download,
  type GemmOptions,
  type GpuView,
  Kernels,
  NORM_PARTIALS,
  Plan,
  STAT_CLIP,
  STAT_LOSS,
  STAT_NORM,
  STATS_LENGTH,
  STORAGE_USAGE,
  upload,
  viewOf,
  writeAdamStep,
} from "../gpu/kernels.ts";
import { GpuTrainer, type StepResult } from "../gpu/trainer.ts";

// ---------------------------------------------------------------------------
// Shared setup and helpers.

/** One device and one set of compiled kernels for the whole file. */
let setup: Promise<{ gpu: Gpu; kernels: Kernels }> | null = null;

function gpuKernels(): Promise<{ gpu: Gpu; kernels: Kernels }> {
  setup ??= (async () => {
    const gpu = await requestGpu();
    return { gpu, kernels: await Kernels.create(gpu.device) };
  })();
  return setup;
}

/**
 * Options of every GPU test. The device's `lost` promise and its buffers
 * outlive a single test by design, so the op and resource sanitizers, which
 * expect every test to finish its own async work, are off.
 */
const GPU_TEST = { sanitizeOps: false, sanitizeResources: false };

const random = new Random(20240601);

/** Returns `length` samples of N(0, scale²) + offset. */
function randomArray(length: number, scale = 1, offset = 0): Float32Array {
  return Float32Array.from({ length }, () => offset + scale * random.normal());
}

/** Returns `length` uniform token ids in `[0, vocab)`. */
function randomTokens(length: number, vocab: number): Int32Array {
  return Int32Array.from({ length }, () => random.int(vocab));
}

/** Buffers created by one test, destroyed together when the test ends. */
class TestBuffers {
  readonly #device: GPUDevice;
  readonly #buffers: GPUBuffer[] = [];

  constructor(device: GPUDevice) {
    this.#device = device;
  }

  /** Creates a buffer holding `data` and returns a view of all of it. */
  of(data: Float32Array | Int32Array | Uint32Array): GpuView {
    const buffer = this.#device.createBuffer({
      size: Math.max(data.length, 1) * 4,
      usage: STORAGE_USAGE,
    });
    this.#buffers.push(buffer);
    const view = viewOf(buffer, 0, data.length);
    upload(this.#device, view, data);
    return view;
  }

  /** Creates a zero-filled buffer of `length` elements. */
  zeros(length: number): GpuView {
    return this.of(new Float32Array(length));
  }

  destroy(): void {
    for (const buffer of this.#buffers) buffer.destroy();
  }
}

/** Records a plan with `record`, runs it and returns the contents of the views that `record` returned. */
async function runPlan(
  record: (plan: Plan, kernels: Kernels, buffers: TestBuffers) => GpuView[],
): Promise<Float32Array[]> {
  const { gpu, kernels } = await gpuKernels();
  const buffers = new TestBuffers(gpu.device);
  const plan = new Plan(gpu.device);
  try {
    const outputs = record(plan, kernels, buffers);
    gpu.device.pushErrorScope("validation");
    plan.submit();
    const results = await Promise.all(outputs.map((view) => download(gpu.device, view)));
    const error = await gpu.device.popErrorScope();
    assert.equal(error, null, `WebGPU validation error: ${error?.message}`);
    return results;
  } finally {
    plan.destroy();
    buffers.destroy();
  }
}

/** Asserts `|actual − expected| ≤ atol + rtol·|expected|` element by element, naming the worst one. */
function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  label: string,
  { atol = 1e-4, rtol = 1e-4 } = {},
): void {
  assert.equal(actual.length, expected.length, `${label}: length`);
  let worst = -1;
  let worstExcess = 0;
  for (let i = 0; i < expected.length; i++) {
    const error = Math.abs(actual[i] - expected[i]);
    const excess = error - (atol + rtol * Math.abs(expected[i]));
    if (!(excess <= 0) && (worst < 0 || !(excess <= worstExcess))) {
      worst = i;
      worstExcess = excess;
    }
  }
  if (worst >= 0) {
    assert.fail(
      `${label}: element ${worst} is ${actual[worst]}, expected ${expected[worst]} ` +
        `(atol ${atol}, rtol ${rtol})`,
    );
  }
}

// ---------------------------------------------------------------------------
// Device.

Deno.test("requestGpu names the adapter", GPU_TEST, async () => {
  const { gpu } = await gpuKernels();
  assert.equal(typeof gpu.adapterName, "string");
  assert.ok(gpu.adapterName.length > 0, "adapter name is empty");
});

Deno.test("requestGpu without navigator.gpu throws", async () => {
  // An own property on the navigator object hides the prototype's getter.
  Object.defineProperty(navigator, "gpu", { value: undefined, configurable: true });
  try {
    await assert.rejects(requestGpu(), (error: Error) => {
      assert.ok(error.message.startsWith(NO_ADAPTER_MESSAGE), error.message);
      assert.match(error.message, /navigator\.gpu is missing/);
      return true;
    });
  } finally {
    delete (navigator as { gpu?: unknown }).gpu;
  }
  assert.notEqual(navigator.gpu, undefined, "navigator.gpu was not restored");
});

// ---------------------------------------------------------------------------
// Matrix products.

/** Runs one GEMM on the GPU and through `jsBackend.matmul`, and compares. */
async function checkMatmul(options: GemmOptions, label: string): Promise<void> {
  const { m, n, k } = options;
  const batch = options.batch ?? 1;
  const strideA = options.strideA ?? m * k;
  const strideB = options.strideB ?? k * n;
  const a = randomArray(Math.max(strideA * (batch - 1) + m * k, m * k));
  const b = randomArray(Math.max(strideB * (batch - 1) + k * n, k * n));
  const c = randomArray(batch * m * n);

  const expected = c.slice();
  jsBackend.matmul(a, b, expected, options);
  const [actual] = await runPlan((plan, kernels, buffers) => {
    const out = buffers.of(c);
    kernels.matmul(plan, buffers.of(a), buffers.of(b), out, options);
    return [out];
  });
  assertClose(actual, expected, label, { atol: 1e-4 * Math.sqrt(k), rtol: 1e-4 });
}

Deno.test("matmul matches js for every transpose", GPU_TEST, async () => {
  // Sizes below, at and across the 64 × 64 × 8 tile.
  const sizes = [[1, 1, 1], [5, 7, 3], [64, 64, 16], [65, 33, 17], [70, 130, 20]];
  for (const [m, n, k] of sizes) {
    for (const transA of [false, true]) {
      for (const transB of [false, true]) {
        const label = `m ${m} n ${n} k ${k} transA ${transA} transB ${transB}`;
        await checkMatmul({ m, n, k, transA, transB }, label);
      }
    }
  }
});

Deno.test("matmul accumulates into C", GPU_TEST, async () => {
  await checkMatmul({ m: 19, n: 23, k: 37, accumulate: true }, "accumulate");
  await checkMatmul({ m: 19, n: 23, k: 37, transA: true, accumulate: true }, "accumulate transA");
});

Deno.test("matmul batches with a shared operand", GPU_TEST, async () => {
  await checkMatmul({ m: 9, n: 11, k: 13, batch: 3 }, "batch");
  await checkMatmul({ m: 9, n: 11, k: 13, batch: 3, strideB: 0, transB: true }, "shared B");
  await checkMatmul(
    { m: 9, n: 11, k: 13, batch: 2, strideA: 0, transA: true, accumulate: true },
    "shared A",
  );
});

Deno.test("matmul reads strided sub-matrices", GPU_TEST, async () => {
  // C[p] = alpha · A[p] · B[p] where A[p] and B[p] are blocks inside wider
  // rows, addressed with leading dimensions, offsets and two-level strides.
  const [m, n, k, outer, inner] = [6, 5, 7, 2, 3];
  const lda = 3 * k + 2;
  const ldb = 2 * n + 1;
  const a = randomArray(4 + outer * inner * m * lda);
  const b = randomArray(3 + outer * inner * k * ldb);
  const expected = new Float32Array(outer * inner * m * n);
  for (let p = 0; p < outer * inner; p++) {
    const o = Math.floor(p / inner);
    const i = p % inner;
    const baseA = 4 + o * inner * m * lda + i * k;
    const baseB = 3 + o * inner * k * ldb + i * n;
    for (let r = 0; r < m; r++) {
      for (let j = 0; j < n; j++) {
        let sum = 0;
        for (let l = 0; l < k; l++) sum += a[baseA + r * lda + l] * b[baseB + l * ldb + j];
        expected[p * m * n + r * n + j] = 0.5 * sum;
      }
    }
  }
  const [actual] = await runPlan((plan, kernels, buffers) => {
    const out = buffers.zeros(expected.length);
    kernels.matmul(plan, buffers.of(a), buffers.of(b), out, {
      m,
      n,
      k,
      alpha: 0.5,
      batch: outer * inner,
      batchInner: inner,
      lda,
      ldb,
      offsetA: 4,
      offsetB: 3,
      strideA: inner * m * lda,
      strideAInner: k,
      strideB: inner * k * ldb,
      strideBInner: n,
      strideC: inner * m * n,
      strideCInner: m * n,
    });
    return [out];
  });
  assertClose(actual, expected, "strided matmul");
});

Deno.test("matmul rejects an operand that overruns its view", GPU_TEST, async () => {
  const { gpu, kernels } = await gpuKernels();
  const buffers = new TestBuffers(gpu.device);
  const plan = new Plan(gpu.device);
  try {
    assert.throws(
      () =>
        kernels.matmul(plan, buffers.zeros(11), buffers.zeros(12), buffers.zeros(16), {
          m: 4,
          n: 4,
          k: 3,
        }),
      /matmul A reaches element 11 of a view of 11 elements/,
    );
  } finally {
    plan.destroy();
    buffers.destroy();
  }
});

// ---------------------------------------------------------------------------
// Elementwise kernels and embeddings.

Deno.test("add, biasAdd and biasBackward match loops", GPU_TEST, async () => {
  const [rows, cols] = [37, 300];
  const a = randomArray(rows * cols);
  const b = randomArray(rows * cols);
  const bias = randomArray(cols);
  const dbias = randomArray(cols);

  const [sum, biased, dbiasOut] = await runPlan((plan, kernels, buffers) => {
    const out = buffers.zeros(rows * cols);
    kernels.add(plan, buffers.of(a), buffers.of(b), out, rows * cols);
    const x = buffers.of(a);
    kernels.biasAdd(plan, x, buffers.of(bias), rows, cols);
    const db = buffers.of(dbias);
    kernels.biasBackward(plan, buffers.of(b), db, rows, cols);
    return [out, x, db];
  });

  assertClose(sum, a.map((v, i) => v + b[i]), "add");
  assertClose(biased, a.map((v, i) => v + bias[i % cols]), "biasAdd");
  const expected = Float32Array.from(dbias);
  for (let r = 0; r < rows; r++) for (let j = 0; j < cols; j++) expected[j] += b[r * cols + j];
  assertClose(dbiasOut, expected, "biasBackward");
});

Deno.test("kernels fold large grids into two dimensions", GPU_TEST, async () => {
  // Both sizes need more than 65 535 workgroups, the WebGPU default limit
  // per dimension, so the kernels must read the second grid dimension.
  const length = 65_536 * 256 + 300;
  const a = new Float32Array(length);
  const b = new Float32Array(length);
  for (let i = 0; i < length; i++) {
    a[i] = i % 1000;
    b[i] = (i % 7) - 3;
  }
  const [rows, cols] = [65_600, 3];
  const x = randomArray(rows * cols);

  const [sum, probs] = await runPlan((plan, kernels, buffers) => {
    const out = buffers.zeros(length);
    kernels.add(plan, buffers.of(a), buffers.of(b), out, length);
    const xView = buffers.of(x);
    kernels.softmaxForward(plan, xView, rows, cols);
    return [out, xView];
  });

  const expectedSum = new Float32Array(length);
  for (let i = 0; i < length; i++) expectedSum[i] = a[i] + b[i];
  assertClose(sum, expectedSum, "add");
  const expectedProbs = new Float32Array(rows * cols);
  jsBackend.softmaxForward(x, expectedProbs, rows, cols);
  assertClose(probs, expectedProbs, "softmax", { atol: 1e-6, rtol: 1e-4 });
});

Deno.test("buildTokenIndex sorts positions by token", () => {
  const index = buildTokenIndex(Int32Array.from([2, 0, 2, 1, 2]), 4);
  assert.deepEqual([...index.subarray(0, 5)], [0, 1, 2, 5, 5]);
  assert.deepEqual([...index.subarray(5)], [1, 3, 0, 2, 4]);
  assert.throws(() => buildTokenIndex(Int32Array.from([0, 4]), 4), /token id 4 at position 1/);
});

Deno.test("embedding forward and backward match loops", GPU_TEST, async () => {
  const [B, T, C, V] = [3, 5, 13, 11];
  const tokens = randomTokens(B * T, V);
  tokens[0] = tokens[7] = tokens[14] = 4; // one token at several positions
  const wte = randomArray(V * C);
  const wpe = randomArray(T * C);
  const dout = randomArray(B * T * C);
  const dwte0 = randomArray(V * C);
  const dwpe0 = randomArray(T * C);

  const [out, dwte, dwpe] = await runPlan((plan, kernels, buffers) => {
    const tokensView = buffers.of(tokens);
    const outView = buffers.zeros(B * T * C);
    const dwteView = buffers.of(dwte0);
    const dwpeView = buffers.of(dwpe0);
    const shape = { batch: B, seqLen: T, channels: C };
    kernels.embeddingForward(plan, tokensView, buffers.of(wte), buffers.of(wpe), outView, shape);
    const index = buffers.of(buildTokenIndex(tokens, V));
    kernels.embeddingBackward(plan, buffers.of(dout), index, dwteView, dwpeView, {
      ...shape,
      vocab: V,
    });
    return [outView, dwteView, dwpeView];
  });

  const expectedOut = new Float32Array(B * T * C);
  const expectedDwte = Float32Array.from(dwte0);
  const expectedDwpe = Float32Array.from(dwpe0);
  for (let n = 0; n < B * T; n++) {
    const t = n % T;
    for (let c = 0; c < C; c++) {
      expectedOut[n * C + c] = wte[tokens[n] * C + c] + wpe[t * C + c];
      expectedDwte[tokens[n] * C + c] += dout[n * C + c];
      expectedDwpe[t * C + c] += dout[n * C + c];
    }
  }
  assertClose(out, expectedOut, "embedding forward");
  assertClose(dwte, expectedDwte, "embedding backward wte");
  assertClose(dwpe, expectedDwpe, "embedding backward wpe");
});

Deno.test("gelu forward and backward match js", GPU_TEST, async () => {
  const length = 1000;
  const x = randomArray(length, 3);
  x[0] = 40; // large enough that an unclamped tanh could overflow
  x[1] = -40;
  const dy = randomArray(length);

  const [y, dx] = await runPlan((plan, kernels, buffers) => {
    const xView = buffers.of(x);
    const yView = buffers.zeros(length);
    const d = buffers.of(dy);
    kernels.geluForward(plan, xView, yView, length);
    kernels.geluBackward(plan, xView, d, length);
    return [yView, d];
  });

  const expectedY = new Float32Array(length);
  const expectedDx = new Float32Array(length);
  jsBackend.geluForward(x, expectedY, length);
  jsBackend.geluBackward(x, dy, expectedDx, length);
  assertClose(y, expectedY, "gelu forward", { atol: 1e-5, rtol: 1e-5 });
  assertClose(dx, expectedDx, "gelu backward", { atol: 1e-5, rtol: 1e-5 });
});

// ---------------------------------------------------------------------------
// LayerNorm, softmax, attention and the loss.

Deno.test("layerNorm forward and backward match js", GPU_TEST, async () => {
  // 300 columns need two passes of the 256-thread row loop.
  for (const [rows, cols] of [[13, 37], [4, 300]]) {
    const x = randomArray(rows * cols, 2, 0.5);
    const gamma = randomArray(cols, 0.5, 1);
    const beta = randomArray(cols, 0.5);
    const dy = randomArray(rows * cols);
    const dx0 = randomArray(rows * cols);
    const dgamma0 = randomArray(cols);
    const dbeta0 = randomArray(cols);

    const [y, mean, rstd, dx, dgamma, dbeta] = await runPlan((plan, kernels, buffers) => {
      const xView = buffers.of(x);
      const gammaView = buffers.of(gamma);
      const views = {
        y: buffers.zeros(rows * cols),
        mean: buffers.zeros(rows),
        rstd: buffers.zeros(rows),
        dx: buffers.of(dx0),
        dgamma: buffers.of(dgamma0),
        dbeta: buffers.of(dbeta0),
      };
      kernels.layerNormForward(
        plan,
        xView,
        gammaView,
        buffers.of(beta),
        views.y,
        views.mean,
        views.rstd,
        rows,
        cols,
        1e-5,
      );
      kernels.layerNormBackward(
        plan,
        buffers.of(dy),
        xView,
        gammaView,
        views.mean,
        views.rstd,
        views.dx,
        views.dgamma,
        views.dbeta,
        rows,
        cols,
      );
      return [views.y, views.mean, views.rstd, views.dx, views.dgamma, views.dbeta];
    });

    const expected = {
      y: new Float32Array(rows * cols),
      mean: new Float32Array(rows),
      rstd: new Float32Array(rows),
      dx: dx0.slice(),
      dgamma: dgamma0.slice(),
      dbeta: dbeta0.slice(),
    };
    jsBackend.layerNormForward(
      x,
      gamma,
      beta,
      expected.y,
      expected.mean,
      expected.rstd,
      rows,
      cols,
      1e-5,
    );
    jsBackend.layerNormBackward(
      dy,
      x,
      gamma,
      expected.mean,
      expected.rstd,
      expected.dx,
      expected.dgamma,
      expected.dbeta,
      rows,
      cols,
    );
    const size = `${rows} × ${cols}`;
    assertClose(y, expected.y, `layerNorm y ${size}`);
    assertClose(mean, expected.mean, `layerNorm mean ${size}`);
    assertClose(rstd, expected.rstd, `layerNorm rstd ${size}`);
    assertClose(dx, expected.dx, `layerNorm dx ${size}`);
    assertClose(dgamma, expected.dgamma, `layerNorm dgamma ${size}`);
    assertClose(dbeta, expected.dbeta, `layerNorm dbeta ${size}`);
  }
});

Deno.test("softmax forward and backward match js", GPU_TEST, async () => {
  const [rows, cols] = [7, 300];
  const x = randomArray(rows * cols, 3);
  const dy = randomArray(rows * cols);

  const [y, dx] = await runPlan((plan, kernels, buffers) => {
    const yView = buffers.of(x);
    const d = buffers.of(dy);
    kernels.softmaxForward(plan, yView, rows, cols);
    kernels.softmaxBackward(plan, yView, d, rows, cols);
    return [yView, d];
  });

  const expectedY = new Float32Array(rows * cols);
  const expectedDx = new Float32Array(rows * cols);
  jsBackend.softmaxForward(x, expectedY, rows, cols);
  jsBackend.softmaxBackward(expectedY, dy, expectedDx, rows, cols);
  assertClose(y, expectedY, "softmax forward", { atol: 1e-6, rtol: 1e-4 });
  assertClose(dx, expectedDx, "softmax backward", { atol: 1e-6, rtol: 1e-4 });
});

Deno.test("causal softmax masks later columns", GPU_TEST, async () => {
  const [rows, T] = [10, 5]; // two blocks of T rows
  const x = randomArray(rows * T, 2);
  const [y] = await runPlan((plan, kernels, buffers) => {
    const view = buffers.of(x);
    kernels.softmaxForward(plan, view, rows, T, T);
    return [view];
  });

  for (let r = 0; r < rows; r++) {
    const valid = (r % T) + 1;
    const expected = new Float32Array(T);
    jsBackend.softmaxForward(x.subarray(r * T, r * T + valid), expected, 1, valid);
    assertClose(y.subarray(r * T, (r + 1) * T), expected, `causal softmax row ${r}`);
  }
});

Deno.test("attention forward and backward match js", GPU_TEST, async () => {
  // T = 70 spans two GEMM tiles; D = 5 and C = 15 are no multiples of anything.
  for (
    const shape of [
      { batch: 2, seqLen: 7, heads: 3, headSize: 5 },
      { batch: 1, seqLen: 70, heads: 2, headSize: 4 },
    ] satisfies AttentionShape[]
  ) {
    const { batch: B, seqLen: T, heads: H, headSize: D } = shape;
    const C = H * D;
    const qkv = randomArray(B * T * 3 * C);
    const dy = randomArray(B * T * C);
    const dqkv0 = randomArray(B * T * 3 * C);

    const [y, probs, dqkv] = await runPlan((plan, kernels, buffers) => {
      const qkvView = buffers.of(qkv);
      const yView = buffers.zeros(B * T * C);
      const probsView = buffers.zeros(B * H * T * T);
      const dqkvView = buffers.of(dqkv0);
      kernels.attentionForward(plan, qkvView, yView, probsView, shape);
      kernels.attentionBackward(
        plan,
        buffers.of(dy),
        qkvView,
        probsView,
        buffers.zeros(B * H * T * T),
        dqkvView,
        shape,
        true,
      );
      return [yView, probsView, dqkvView];
    });

    const expectedY = new Float32Array(B * T * C);
    const expectedProbs = new Float32Array(B * H * T * T);
    const expectedDqkv = dqkv0.slice();
    jsBackend.attentionForward(qkv, expectedY, expectedProbs, shape);
    jsBackend.attentionBackward(dy, qkv, expectedProbs, expectedDqkv, shape);
    const label = `B ${B} T ${T} H ${H} D ${D}`;
    assertClose(probs, expectedProbs, `attention probs ${label}`);
    assertClose(y, expectedY, `attention y ${label}`);
    assertClose(dqkv, expectedDqkv, `attention dqkv ${label}`);
  }
});

Deno.test("crossEntropy matches js logSoftmax", GPU_TEST, async () => {
  const [rows, vocab] = [9, 300];
  const logits = randomArray(rows * vocab, 3);
  const targets = randomTokens(rows, vocab);
  const gradScale = 1 / rows;

  const [losses, evalLosses, dlogits, stats] = await runPlan((plan, kernels, buffers) => {
    const targetsView = buffers.of(targets);
    const trainLogits = buffers.of(logits);
    const trainLosses = buffers.zeros(rows);
    const evalView = buffers.zeros(rows);
    const statsView = buffers.zeros(STATS_LENGTH);
    kernels.crossEntropy(plan, buffers.of(logits), targetsView, evalView, rows, vocab, null);
    kernels.crossEntropy(plan, trainLogits, targetsView, trainLosses, rows, vocab, gradScale);
    kernels.sum(plan, trainLosses, rows, statsView, STAT_LOSS, 1 / rows);
    return [trainLosses, evalView, trainLogits, statsView];
  });

  // loss[r] = −logSoftmax(x)[target]; d loss / dx = softmax − onehot.
  const logProbs = new Float32Array(rows * vocab);
  jsBackend.logSoftmaxForward(logits, logProbs, rows, vocab);
  const dLogProbs = new Float32Array(rows * vocab);
  const expectedLosses = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    expectedLosses[r] = -logProbs[r * vocab + targets[r]];
    dLogProbs[r * vocab + targets[r]] = -gradScale;
  }
  const expectedDlogits = new Float32Array(rows * vocab);
  jsBackend.logSoftmaxBackward(logProbs, dLogProbs, expectedDlogits, rows, vocab);
  const meanLoss = expectedLosses.reduce((a, b) => a + b, 0) / rows;

  assertClose(losses, expectedLosses, "losses");
  assertClose(evalLosses, expectedLosses, "losses without backward");
  assertClose(dlogits, expectedDlogits, "dlogits", { atol: 1e-6, rtol: 1e-4 });
  assertClose([stats[STAT_LOSS]], [meanLoss], "mean loss");
});

// ---------------------------------------------------------------------------
// Gradient norm, clipping and AdamW.

Deno.test("gradNorm sums all views and clips", GPU_TEST, async () => {
  // 70 000 elements give every one of the 64 partial workgroups several rows.
  const grads = [randomArray(70_000, 0.01), randomArray(5), randomArray(300)];
  const norm = Math.sqrt(grads.reduce((s, g) => s + g.reduce((t, v) => t + v * v, 0), 0));

  for (const maxNorm of [null, norm / 2, norm * 2]) {
    const [stats] = await runPlan((plan, kernels, buffers) => {
      const statsView = buffers.zeros(STATS_LENGTH);
      const partials = buffers.zeros(grads.length * NORM_PARTIALS);
      kernels.gradNorm(plan, grads.map((g) => buffers.of(g)), partials, statsView, maxNorm);
      return [statsView];
    });
    const expectedClip = maxNorm === null ? 1 : Math.min(1, maxNorm / (norm + 1e-6));
    assertClose([stats[STAT_NORM]], [norm], `norm with maxNorm ${maxNorm}`, { rtol: 1e-5 });
    assertClose([stats[STAT_CLIP]], [expectedClip], `clip factor with maxNorm ${maxNorm}`, {
      rtol: 1e-5,
    });
  }
});

Deno.test("adamw matches js over three steps", GPU_TEST, async () => {
  const length = 1000;
  const param = randomArray(length);
  const grads = [randomArray(length), randomArray(length), randomArray(length, 1e-3)];
  const hyper = { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1 };
  const clip = 0.5;

  const expected = {
    param: param.slice(),
    m: new Float32Array(length),
    v: new Float32Array(length),
  };
  grads.forEach((grad, index) => {
    const clipped = grad.map((g) => g * clip);
    jsBackend.adamwUpdate(expected.param, clipped, expected.m, expected.v, {
      ...hyper,
      step: index + 1,
    });
  });

  const { gpu, kernels } = await gpuKernels();
  const { device } = gpu;
  const buffers = new TestBuffers(device);
  const plan = new Plan(device);
  const stepBuffer = device.createBuffer({
    size: ADAM_STEP_BYTES,
    usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
  });
  try {
    const views = {
      param: buffers.of(param),
      grad: buffers.zeros(length),
      m: buffers.zeros(length),
      v: buffers.zeros(length),
      stats: buffers.of(new Float32Array([0, 0, clip, 0])),
    };
    kernels.adamw(
      plan,
      stepBuffer,
      views.param,
      views.grad,
      views.m,
      views.v,
      views.stats,
      hyper.weightDecay,
    );
    for (let step = 1; step <= grads.length; step++) {
      upload(device, views.grad, grads[step - 1]);
      writeAdamStep(device, stepBuffer, { ...hyper, step });
      plan.submit();
    }
    assertClose(await download(device, views.param), expected.param, "param", {
      atol: 1e-6,
      rtol: 1e-5,
    });
    assertClose(await download(device, views.m), expected.m, "exp_avg", { atol: 1e-7 });
    assertClose(await download(device, views.v), expected.v, "exp_avg_sq", { atol: 1e-8 });
  } finally {
    plan.destroy();
    buffers.destroy();
    stepBuffer.destroy();
  }
});

// ---------------------------------------------------------------------------
// The trainer against the CPU GPT of lib/gpt.ts.

const TINY: GPTConfig = { vocabSize: 40, contextLength: 8, dModel: 16, layers: 2, heads: 2 };
const BATCH = 2;

/**
 * Returns a tiny GPT whose biases and LayerNorm parameters are perturbed away
 * from their 0 and 1 initial values, so that errors in their gradients show.
 */
function tinyModel(seed: number): GPT {
  const model = new GPT(TINY, { seed });
  for (const param of model.parameters()) {
    if (param.shape.length === 1) {
      for (let i = 0; i < param.size; i++) param.data[i] += 0.1 * random.normal();
    }
  }
  return model;
}

/** Returns copies of a model's parameters by name. */
function weightsOf(model: GPT): Map<string, Float32Array> {
  return new Map([...namedParameters(model)].map(([name, param]) => [name, param.data.slice()]));
}

/** Returns random inputs and targets for one batch of `B` × `T` tokens. */
function randomBatch(B: number, T: number): { inputs: Int32Array; targets: Int32Array } {
  return {
    inputs: randomTokens(B * T, TINY.vocabSize),
    targets: randomTokens(B * T, TINY.vocabSize),
  };
}

/** Runs one CPU training step with the autograd GPT and the AdamW of lib/. */
function cpuStep(
  model: GPT,
  optimizer: AdamW,
  batch: { inputs: Int32Array; targets: Int32Array },
  clip: number | null,
): StepResult {
  const T = batch.inputs.length / BATCH;
  optimizer.zeroGrad();
  const { loss } = model.forward(batch.inputs, BATCH, T, batch.targets);
  const value = loss!.item();
  loss!.backward();
  const params = model.parameters();
  const norm = clip === null ? gradNorm(params) : clipGradNorm(params, clip);
  optimizer.step();
  return { loss: value, gradNorm: norm };
}

/**
 * AdamW settings of the trainer tests. The clipping threshold lies inside the
 * range of gradient norms the tiny model produces, so some steps are clipped.
 */
const HYPER = { lr: 1e-2, weightDecay: 0.1 };
const CLIP = 1.0;

/**
 * Tolerances of GPU against CPU training. On llvmpipe, losses agreed to
 * 1e-6, norms to 3e-7 relative and weights after four steps to 1.2e-5.
 * AdamW's normalised update magnifies rounding in gradients near zero, so
 * the weight tolerance is the widest.
 */
const LOSS_ATOL = 1e-5;
const NORM_RTOL = 1e-5;
const WEIGHT_ATOL = 1e-4;

/** Creates a GPU trainer for `model`'s current weights with the test settings. */
async function trainerFor(model: GPT): Promise<GpuTrainer> {
  const { gpu } = await gpuKernels();
  return await GpuTrainer.create(gpu, TINY, weightsOf(model), {
    batchSize: BATCH,
    ...HYPER,
    clipGrad: CLIP,
  });
}

/** Creates the CPU optimizer that matches `trainerFor`. */
function optimizerFor(model: GPT): AdamW {
  return new AdamW(decayGroups(model.parameters(), HYPER.weightDecay), HYPER);
}

/** Asserts that one GPU step and one CPU step gave the same loss and norm. */
function assertSameStep(actual: StepResult, expected: StepResult, label: string): void {
  assertClose([actual.loss], [expected.loss], `${label} loss`, { atol: LOSS_ATOL, rtol: 0 });
  assertClose([actual.gradNorm], [expected.gradNorm], `${label} gradient norm`, {
    atol: 0,
    rtol: NORM_RTOL,
  });
}

/** Asserts that the trainer's weights equal the model's. */
async function assertSameWeights(trainer: GpuTrainer, model: GPT, label: string): Promise<void> {
  const weights = await trainer.readWeights();
  assert.deepEqual([...weights.keys()], [...namedParameters(model).keys()], `${label} names`);
  for (const [name, param] of namedParameters(model)) {
    assertClose(weights.get(name)!, param.data, `${label} ${name}`, { atol: WEIGHT_ATOL, rtol: 0 });
  }
}

Deno.test("GpuTrainer steps match the CPU GPT", GPU_TEST, async () => {
  const model = tinyModel(1);
  const trainer = await trainerFor(model);
  const optimizer = optimizerFor(model);
  try {
    // Full and shorter sequences: T = 5 and 3 leave rows of wpe without gradient.
    const lengths = [8, 5, 8, 3];
    let clipped = 0;
    for (const [step, T] of lengths.entries()) {
      const batch = randomBatch(BATCH, T);
      const expected = cpuStep(model, optimizer, batch, CLIP);
      const actual = await trainer.step(batch.inputs, batch.targets, HYPER.lr);
      assertSameStep(actual, expected, `step ${step} (T ${T})`);
      if (expected.gradNorm > CLIP) clipped++;
    }
    assert.ok(clipped > 0, "no step was clipped, so clipping went untested");
    assert.equal(trainer.stepCount, lengths.length);
    await assertSameWeights(trainer, model, "after four steps");
  } finally {
    trainer.destroy();
  }
});

Deno.test("GpuTrainer evaluate and logits match the CPU GPT", GPU_TEST, async () => {
  const model = tinyModel(2);
  const trainer = await trainerFor(model);
  try {
    for (const T of [8, 5]) {
      const batch = randomBatch(BATCH, T);
      const expected = model.evaluate(batch.inputs, batch.targets, BATCH, T);
      const actual = await trainer.evaluate(batch.inputs, batch.targets);
      assertClose([actual], [expected], `evaluate T ${T}`, { atol: LOSS_ATOL, rtol: 0 });
    }

    const V = TINY.vocabSize;
    for (const [B, T] of [[2, 8], [1, 8], [2, 3], [1, 1]]) {
      const inputs = randomTokens(B * T, V);
      const cpu = noGrad(() => model.forward(inputs, B, T).logits.data);
      const expected = new Float32Array(B * V);
      for (let b = 0; b < B; b++) {
        const last = (b * T + T - 1) * V;
        expected.set(cpu.subarray(last, last + V), b * V);
      }
      assertClose(await trainer.logits(inputs, B, T), expected, `logits B ${B} T ${T}`);
    }
  } finally {
    trainer.destroy();
  }
});

Deno.test("GpuTrainer optimizer state resumes on the CPU", GPU_TEST, async () => {
  const model = tinyModel(3);
  const trainer = await trainerFor(model);
  const batches = [randomBatch(BATCH, 8), randomBatch(BATCH, 8), randomBatch(BATCH, 8)];
  try {
    await trainer.step(batches[0].inputs, batches[0].targets, HYPER.lr);
    await trainer.step(batches[1].inputs, batches[1].targets, HYPER.lr);

    // Resume the run on the CPU from the GPU's weights and moments.
    const weights = await trainer.readWeights();
    for (const [name, param] of namedParameters(model)) param.data.set(weights.get(name)!);
    const optimizer = optimizerFor(model);
    optimizer.loadStateDict(await trainer.readOptimizerState());

    const expected = cpuStep(model, optimizer, batches[2], CLIP);
    const actual = await trainer.step(batches[2].inputs, batches[2].targets, HYPER.lr);
    assertSameStep(actual, expected, "step after the move");
    await assertSameWeights(trainer, model, "after the move");
  } finally {
    trainer.destroy();
  }
});

Deno.test("GpuTrainer resumes a CPU optimizer state", GPU_TEST, async () => {
  const model = tinyModel(4);
  const optimizer = optimizerFor(model);
  const batches = [randomBatch(BATCH, 8), randomBatch(BATCH, 8), randomBatch(BATCH, 8)];
  cpuStep(model, optimizer, batches[0], CLIP);
  cpuStep(model, optimizer, batches[1], CLIP);

  const trainer = await trainerFor(model);
  try {
    trainer.writeOptimizerState(optimizer.stateDict());
    assert.equal(trainer.stepCount, 2);
    const expected = cpuStep(model, optimizer, batches[2], CLIP);
    const actual = await trainer.step(batches[2].inputs, batches[2].targets, HYPER.lr);
    assertSameStep(actual, expected, "step after the move");
    await assertSameWeights(trainer, model, "after the move");
  } finally {
    trainer.destroy();
  }
});

Deno.test("GpuTrainer steps are deterministic", GPU_TEST, async () => {
  const model = tinyModel(5);
  const batch = randomBatch(BATCH, 8);
  const results: StepResult[] = [];
  const weights: Map<string, Float32Array>[] = [];
  for (let run = 0; run < 2; run++) {
    const trainer = await trainerFor(model);
    try {
      results.push(await trainer.step(batch.inputs, batch.targets, HYPER.lr));
      weights.push(await trainer.readWeights());
    } finally {
      trainer.destroy();
    }
  }
  assert.deepEqual(results[1], results[0]);
  assert.deepEqual(weights[1], weights[0]);
});

Deno.test("GpuTrainer rejects invalid weights and inputs", GPU_TEST, async () => {
  const { gpu } = await gpuKernels();
  const options = { batchSize: BATCH, lr: 1e-3 };
  const model = tinyModel(6);

  const missing = weightsOf(model);
  missing.delete("h.1.ln_2.bias");
  await assert.rejects(
    GpuTrainer.create(gpu, TINY, missing, options),
    /weights are missing "h\.1\.ln_2\.bias"/,
  );

  const resized = weightsOf(model);
  resized.set("wpe.weight", new Float32Array(3));
  await assert.rejects(
    GpuTrainer.create(gpu, TINY, resized, options),
    /weight "wpe\.weight" has 3 values, expected 128/,
  );

  const extra = weightsOf(model);
  extra.set("h.0.attn.bias", new Float32Array(1));
  await assert.rejects(
    GpuTrainer.create(gpu, TINY, extra, options),
    /unknown weight "h\.0\.attn\.bias"/,
  );

  await assert.rejects(
    GpuTrainer.create(gpu, { ...TINY, heads: 3 }, weightsOf(model), options),
    /heads \(3\) must divide dModel \(16\)/,
  );

  const trainer = await trainerFor(model);
  try {
    const { inputs, targets } = randomBatch(BATCH, 8);
    inputs[3] = TINY.vocabSize;
    await assert.rejects(trainer.step(inputs, targets), /input token id 40 at position 3/);
    await assert.rejects(
      trainer.step(new Int32Array(2 * 9), new Int32Array(2 * 9)),
      /expected 2 × T token ids with 1 ≤ T ≤ 8, got 18/,
    );
    assert.equal(trainer.stepCount, 0);
  } finally {
    trainer.destroy();
  }
});
