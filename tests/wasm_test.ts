/**
 * Tests the `wasm` backend against the `js` reference, kernel by kernel, on
 * seeded random inputs. The cases cover every transpose combination, shapes
 * that are no multiple of any tile size, one and two threads, the relaxed
 * and the plain SIMD builds, and arrays inside and outside the backend's
 * memory.
 *
 * Tolerances: a matmul element may differ from the reference by
 * 1e-5 · √(k + 1) · (Σ_l |a_il| |b_lj| + |c_ij| before the call), which
 * scales with the float32 rounding of a k-term sum. Other kernels use a
 * relative plus an absolute tolerance stated at each test.
 *
 * Run: deno test --allow-read --allow-env tests/wasm_test.ts
 * Add --allow-run to include the check that lib/wasm/kernels_wasm.ts is up
 * to date (it needs npx and the npm registry), and --allow-ffi to test the
 * `blas` backend where OpenBLAS is installed.
 */

import {
  type AttentionShape,
  type Backend,
  jsBackend,
  type MatmulOptions,
} from "../lib/backend.ts";
import { type BlasBackend, createBlasBackend } from "../lib/blas.ts";
import { createWasmBackend, type WasmBackend } from "../lib/wasm.ts";
import { simdBase64 } from "../lib/wasm/kernels_wasm.ts";
import { KERNEL_NAMES, WorkerPool } from "../lib/wasm/pool.ts";

// ---------------------------------------------------------------------------
// Helpers. The assertions are local because the standard library (on JSR) is
// not a dependency of this project.

function assert(condition: unknown, message = "assertion failed"): asserts condition {
  if (!condition) throw new Error(message);
}

function assertEquals(actual: unknown, expected: unknown, message = ""): void {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${message ? message + ": " : ""}got ${a}, expected ${e}`);
}

function assertThrows(
  fn: () => unknown,
  errorClass: abstract new (...args: never[]) => Error,
  includes: string,
): void {
  try {
    fn();
  } catch (error) {
    assert(error instanceof errorClass, `expected ${errorClass.name}, got ${error}`);
    assert(error.message.includes(includes), `expected "${includes}" in "${error.message}"`);
    return;
  }
  throw new Error(`expected ${errorClass.name} with "${includes}", but nothing was thrown`);
}

/**
 * Returns a seeded generator of floats in [0, 1): a 32-bit linear
 * congruential generator with the multiplier and increment of Numerical
 * Recipes. Weak, but enough to make test inputs reproducible.
 */
function makeRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state / 4294967296;
  };
}

function randomArray(length: number, random: () => number, scale = 1): Float32Array {
  const array = new Float32Array(length);
  for (let i = 0; i < length; i++) array[i] = (random() * 2 - 1) * scale;
  return array;
}

/** Copies `source` into the memory of `backend` when `inside`, else into a plain array. */
function place(backend: Backend, source: Float32Array, inside: boolean): Float32Array {
  const array = inside ? backend.alloc(source.length) : new Float32Array(source.length);
  array.set(source);
  return array;
}

/**
 * Asserts `|actual − expected| ≤ tolerance[i]` element by element, and
 * reports the first element out of tolerance.
 */
function assertClose(
  actual: Float32Array,
  expected: Float32Array,
  tolerance: (i: number) => number,
  label: string,
): void {
  assertEquals(actual.length, expected.length, `${label}: length`);
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i];
    const e = expected[i];
    if (Object.is(a, e) || (Number.isNaN(a) && Number.isNaN(e))) continue;
    const error = Math.abs(a - e);
    if (!(error <= tolerance(i))) {
      throw new Error(
        `${label}: element ${i} is ${a}, expected ${e} (error ${error}, tolerance ${tolerance(i)})`,
      );
    }
  }
}

/** Tolerance `atol + rtol · |expected|`. */
function relative(expected: Float32Array, rtol: number, atol: number): (i: number) => number {
  return (i) => atol + rtol * Math.abs(expected[i]);
}

/** The backends under test, created once for the whole file. */
interface Variant {
  label: string;
  backend: WasmBackend;
}

const variants: Variant[] = [
  { label: "relaxed, 1 thread", backend: await createWasmBackend({ threads: 1 }) },
  { label: "relaxed, 2 threads", backend: await createWasmBackend({ threads: 2 }) },
  {
    label: "plain SIMD, 1 thread",
    backend: await createWasmBackend({ threads: 1, relaxedSimd: false }),
  },
];
/** Whether array placement inside and outside the memory is both tried. */
const PLACEMENTS = [true, false];

// ---------------------------------------------------------------------------
// Matrix product

const SIZES = [1, 3, 17, 64, 65, 127];

function absolute(array: Float32Array): Float32Array {
  return array.map(Math.abs);
}

/** Runs one matmul on `backend` and on the reference and compares C. */
function checkMatmul(
  backend: Backend,
  options: MatmulOptions,
  inside: boolean,
  random: () => number,
  label: string,
): void {
  const batch = options.batch ?? 1;
  const { m, n, k } = options;
  const strideA = options.strideA ?? m * k;
  const strideB = options.strideB ?? k * n;
  const strideC = options.strideC ?? m * n;
  const extent = (stride: number, size: number) => (batch - 1) * stride + size;

  const a = randomArray(extent(strideA, m * k), random);
  const b = randomArray(extent(strideB, k * n), random);
  const c0 = randomArray(extent(strideC, m * n), random);

  const expected = c0.slice();
  jsBackend.matmul(a, b, expected, options);
  // Bound for the rounding error: the same product on absolute values.
  const magnitude = absolute(c0);
  jsBackend.matmul(absolute(a), absolute(b), magnitude, { ...options, accumulate: true });
  const scale = 1e-5 * Math.sqrt(k + 1);

  const wa = place(backend, a, inside);
  const wb = place(backend, b, inside);
  const wc = place(backend, c0, inside);
  backend.matmul(wa, wb, wc, options);
  assertClose(wc, expected, (i) => scale * magnitude[i] + 1e-30, label);
  for (const array of [wa, wb, wc]) backend.free(array);
}

for (const { label, backend } of variants) {
  Deno.test(`wasm matmul all layouts and odd sizes, ${label}`, () => {
    const random = makeRandom(1);
    for (const transA of [false, true]) {
      for (const transB of [false, true]) {
        for (const m of SIZES) {
          for (const n of SIZES) {
            for (const k of SIZES) {
              const inside = (m + n + k) % 2 === 0;
              const options = { m, n, k, transA, transB };
              const name = `${label} ${JSON.stringify(options)} inside=${inside}`;
              checkMatmul(backend, options, inside, random, name);
            }
          }
        }
      }
    }
  });

  Deno.test(`wasm matmul across block edges, ${label}`, () => {
    // KC = 256, MC = 96 and NC = 1024 in the kernels: cross each once.
    const random = makeRandom(2);
    const shapes = [
      { m: 97, n: 33, k: 257 },
      { m: 193, n: 20, k: 513 },
      { m: 7, n: 1030, k: 40 },
      { m: 100, n: 130, k: 300 },
    ];
    for (const shape of shapes) {
      for (const transA of [false, true]) {
        for (const transB of [false, true]) {
          for (const inside of PLACEMENTS) {
            const options = { ...shape, transA, transB };
            checkMatmul(backend, options, inside, random, `${label} ${JSON.stringify(options)}`);
          }
        }
      }
    }
  });

  Deno.test(`wasm matmul accumulate, ${label}`, () => {
    const random = makeRandom(3);
    for (const [m, n, k] of [[3, 17, 65], [64, 65, 127], [1, 1, 1], [127, 64, 3]]) {
      for (const transA of [false, true]) {
        for (const transB of [false, true]) {
          for (const inside of PLACEMENTS) {
            const options = { m, n, k, transA, transB, accumulate: true };
            checkMatmul(backend, options, inside, random, `${label} ${JSON.stringify(options)}`);
          }
        }
      }
    }
  });

  Deno.test(`wasm matmul batched with strides, ${label}`, () => {
    const random = makeRandom(4);
    const cases: MatmulOptions[] = [
      { m: 17, n: 9, k: 5, batch: 3 },
      { m: 17, n: 9, k: 5, batch: 4, transA: true, accumulate: true },
      // Padded strides: gaps between the matrices must stay untouched.
      { m: 5, n: 7, k: 3, batch: 3, strideA: 20, strideB: 25, strideC: 40, transB: true },
      // A shared by the batch (stride 0), as in a linear layer over many matrices.
      { m: 8, n: 13, k: 65, batch: 5, strideA: 0, transA: true, transB: true },
      // C shared by the batch with accumulate: the sum of the products.
      { m: 6, n: 10, k: 7, batch: 4, strideC: 0, accumulate: true },
      // Large enough to split the batch between threads.
      { m: 64, n: 64, k: 64, batch: 6, transB: true },
      { m: 64, n: 48, k: 100, batch: 3, strideB: 0 },
      { m: 64, n: 48, k: 100, batch: 3, strideC: 0, accumulate: true },
      { m: 3, n: 3, k: 3, batch: 0 },
    ];
    for (const options of cases) {
      for (const inside of PLACEMENTS) {
        const batch = Math.max(1, options.batch ?? 1);
        checkMatmul(
          backend,
          { ...options, batch },
          inside,
          random,
          `${label} ${JSON.stringify(options)}`,
        );
      }
    }
  });

  Deno.test(`wasm matmul with k = 0, ${label}`, () => {
    const c = backend.alloc(6).fill(5);
    backend.matmul(backend.alloc(0), backend.alloc(0), c, { m: 2, n: 3, k: 0, accumulate: true });
    assertEquals(Array.from(c), [5, 5, 5, 5, 5, 5]);
    backend.matmul(backend.alloc(0), backend.alloc(0), c, { m: 2, n: 3, k: 0 });
    assertEquals(Array.from(c), [0, 0, 0, 0, 0, 0]);
  });
}

// ---------------------------------------------------------------------------
// Row kernels

// The last shape is large enough to be split between threads.
const ROW_SHAPES: [number, number][] = [
  [1, 1],
  [3, 5],
  [17, 64],
  [7, 1000],
  [300, 131],
  [200, 1003],
];

/**
 * Makes a `rows × cols` input with a wide spread and, from 3 columns up, one
 * −∞ per row and a NaN in row 1 (which turns that whole row into NaN).
 */
function logits(rows: number, cols: number, random: () => number): Float32Array {
  const x = randomArray(rows * cols, random, 8);
  if (cols < 3) return x;
  for (let r = 0; r < rows; r++) x[r * cols + (r % cols)] = -Infinity;
  if (rows >= 2) x[2 * cols - 1] = NaN;
  return x;
}

for (const { label, backend } of variants) {
  Deno.test(`wasm softmax forward and backward, ${label}`, () => {
    const random = makeRandom(10);
    for (const [rows, cols] of ROW_SHAPES) {
      for (const inside of PLACEMENTS) {
        const name = `${label} ${rows}×${cols} inside=${inside}`;
        const x = logits(rows, cols, random);
        const expected = new Float32Array(rows * cols);
        jsBackend.softmaxForward(x, expected, rows, cols);
        const y = place(backend, new Float32Array(rows * cols), inside);
        backend.softmaxForward(place(backend, x, inside), y, rows, cols);
        assertClose(y, expected, relative(expected, 1e-5, 1e-7), `softmaxForward ${name}`);

        const dy = randomArray(rows * cols, random);
        const dx0 = randomArray(rows * cols, random);
        const dxExpected = dx0.slice();
        jsBackend.softmaxBackward(expected, dy, dxExpected, rows, cols);
        const dx = place(backend, dx0, inside);
        backend.softmaxBackward(
          place(backend, expected, inside),
          place(backend, dy, inside),
          dx,
          rows,
          cols,
        );
        assertClose(dx, dxExpected, relative(dxExpected, 1e-5, 1e-6), `softmaxBackward ${name}`);
      }
    }
  });

  Deno.test(`wasm log-softmax forward and backward, ${label}`, () => {
    const random = makeRandom(11);
    for (const [rows, cols] of ROW_SHAPES) {
      for (const inside of PLACEMENTS) {
        const name = `${label} ${rows}×${cols} inside=${inside}`;
        const x = logits(rows, cols, random);
        const expected = new Float32Array(rows * cols);
        jsBackend.logSoftmaxForward(x, expected, rows, cols);
        const y = place(backend, new Float32Array(rows * cols), inside);
        backend.logSoftmaxForward(place(backend, x, inside), y, rows, cols);
        assertClose(y, expected, relative(expected, 1e-6, 1e-5), `logSoftmaxForward ${name}`);

        const dy = randomArray(rows * cols, random);
        const dx0 = randomArray(rows * cols, random);
        const dxExpected = dx0.slice();
        jsBackend.logSoftmaxBackward(expected, dy, dxExpected, rows, cols);
        const dx = place(backend, dx0, inside);
        backend.logSoftmaxBackward(
          place(backend, expected, inside),
          place(backend, dy, inside),
          dx,
          rows,
          cols,
        );
        const tolerance = 1e-5 * Math.sqrt(cols);
        assertClose(
          dx,
          dxExpected,
          relative(dxExpected, tolerance, tolerance),
          `logSoftmaxBackward ${name}`,
        );
      }
    }
  });

  Deno.test(`wasm cross-entropy forward and backward, ${label}`, () => {
    const random = makeRandom(14);
    for (const [rows, cols] of ROW_SHAPES) {
      for (const inside of PLACEMENTS) {
        const name = `${label} ${rows}×${cols} inside=${inside}`;
        // Finite logits: a target at −∞ would make the loss +∞ on purpose.
        const x = randomArray(rows * cols, random, 8);
        const targets = Int32Array.from({ length: rows }, () => Math.floor(random() * cols));
        const probs = new Float32Array(rows * cols);
        const losses = new Float32Array(rows);
        jsBackend.crossEntropyForward(x, targets, probs, losses, rows, cols);
        const wprobs = place(backend, new Float32Array(rows * cols), inside);
        const wlosses = place(backend, new Float32Array(rows), inside);
        backend.crossEntropyForward(
          place(backend, x, inside),
          targets,
          wprobs,
          wlosses,
          rows,
          cols,
        );
        assertClose(
          wprobs,
          probs,
          relative(probs, 1e-5, 1e-7),
          `crossEntropyForward probs ${name}`,
        );
        assertClose(wlosses, losses, relative(losses, 1e-5, 1e-5), `crossEntropyForward ${name}`);

        const scale = 1 / rows;
        const dx0 = randomArray(rows * cols, random);
        const dx = dx0.slice();
        jsBackend.crossEntropyBackward(probs, targets, dx, rows, cols, scale);
        const wdx = place(backend, dx0, inside);
        backend.crossEntropyBackward(
          place(backend, probs, inside),
          targets,
          wdx,
          rows,
          cols,
          scale,
        );
        assertClose(wdx, dx, relative(dx, 1e-6, 1e-7), `crossEntropyBackward ${name}`);
      }
    }
  });

  Deno.test(`wasm cross-entropy reads targets inside the memory, ${label}`, () => {
    const random = makeRandom(15);
    const [rows, cols] = [37, 21];
    const x = randomArray(rows * cols, random, 4);
    const targets = Int32Array.from({ length: rows }, (_, r) => (r * 7) % cols);
    const probs = new Float32Array(rows * cols);
    const losses = new Float32Array(rows);
    jsBackend.crossEntropyForward(x, targets, probs, losses, rows, cols);
    // An Int32Array view of the backend's memory is passed without a copy.
    const block = backend.alloc(rows);
    const inside = new Int32Array(block.buffer, block.byteOffset, rows);
    inside.set(targets);
    const wlosses = backend.alloc(rows);
    backend.crossEntropyForward(
      place(backend, x, true),
      inside,
      backend.alloc(x.length),
      wlosses,
      rows,
      cols,
    );
    assertClose(wlosses, losses, relative(losses, 1e-5, 1e-5), label);
  });

  Deno.test(`wasm log-softmax in place, ${label}`, () => {
    const random = makeRandom(12);
    const x = randomArray(5 * 33, random, 4);
    const expected = new Float32Array(x.length);
    jsBackend.logSoftmaxForward(x, expected, 5, 33);
    const y = place(backend, x, true);
    backend.logSoftmaxForward(y, y, 5, 33);
    assertClose(y, expected, relative(expected, 1e-6, 1e-5), label);
  });

  Deno.test(`wasm layerNorm forward and backward, ${label}`, () => {
    const random = makeRandom(13);
    for (const [rows, cols] of [...ROW_SHAPES, [2048, 96] as [number, number]]) {
      for (const inside of PLACEMENTS) {
        const name = `${label} ${rows}×${cols} inside=${inside}`;
        const x = randomArray(rows * cols, random, 3);
        for (let i = 0; i < x.length; i++) x[i] += 0.5; // a mean away from zero
        const gamma = randomArray(cols, random);
        const beta = randomArray(cols, random);
        const eps = 1e-5;

        const y = new Float32Array(rows * cols);
        const mean = new Float32Array(rows);
        const rstd = new Float32Array(rows);
        jsBackend.layerNormForward(x, gamma, beta, y, mean, rstd, rows, cols, eps);

        const wy = place(backend, new Float32Array(rows * cols), inside);
        const wmean = place(backend, new Float32Array(rows), inside);
        const wrstd = place(backend, new Float32Array(rows), inside);
        backend.layerNormForward(
          place(backend, x, inside),
          place(backend, gamma, inside),
          place(backend, beta, inside),
          wy,
          wmean,
          wrstd,
          rows,
          cols,
          eps,
        );
        assertClose(wy, y, relative(y, 2e-5, 2e-5), `layerNormForward y ${name}`);
        assertClose(wmean, mean, relative(mean, 1e-5, 1e-6), `layerNormForward mean ${name}`);
        assertClose(wrstd, rstd, relative(rstd, 1e-5, 0), `layerNormForward rstd ${name}`);

        const dy = randomArray(rows * cols, random);
        const dx0 = randomArray(rows * cols, random);
        const dgamma0 = randomArray(cols, random);
        const dbeta0 = randomArray(cols, random);
        const dx = dx0.slice();
        const dgamma = dgamma0.slice();
        const dbeta = dbeta0.slice();
        jsBackend.layerNormBackward(dy, x, gamma, mean, rstd, dx, dgamma, dbeta, rows, cols);

        const wdx = place(backend, dx0, inside);
        const wdgamma = place(backend, dgamma0, inside);
        const wdbeta = place(backend, dbeta0, inside);
        backend.layerNormBackward(
          place(backend, dy, inside),
          place(backend, x, inside),
          place(backend, gamma, inside),
          place(backend, mean, inside),
          place(backend, rstd, inside),
          wdx,
          wdgamma,
          wdbeta,
          rows,
          cols,
        );
        // dgamma and dbeta are sums over the rows.
        const rowSum = 1e-5 * Math.sqrt(rows);
        assertClose(wdx, dx, relative(dx, 1e-4, 1e-4), `layerNormBackward dx ${name}`);
        assertClose(
          wdgamma,
          dgamma,
          relative(dgamma, rowSum, rowSum),
          `layerNormBackward dgamma ${name}`,
        );
        assertClose(
          wdbeta,
          dbeta,
          relative(dbeta, rowSum, rowSum),
          `layerNormBackward dbeta ${name}`,
        );
      }
    }
  });
}

// ---------------------------------------------------------------------------
// Element-wise kernels

for (const { label, backend } of variants) {
  Deno.test(`wasm gelu forward and backward, ${label}`, () => {
    const random = makeRandom(20);
    for (const length of [1, 3, 17, 1000, 200003]) {
      for (const inside of PLACEMENTS) {
        const name = `${label} length ${length} inside=${inside}`;
        // Wide range, to reach both tails of tanh.
        const x = randomArray(length, random, 12);
        const y = new Float32Array(length);
        jsBackend.geluForward(x, y, length);
        const wy = place(backend, new Float32Array(length), inside);
        backend.geluForward(place(backend, x, inside), wy, length);
        assertClose(wy, y, relative(y, 1e-5, 1e-6), `geluForward ${name}`);

        const dy = randomArray(length, random);
        const dx0 = randomArray(length, random);
        const dx = dx0.slice();
        jsBackend.geluBackward(x, dy, dx, length);
        const wdx = place(backend, dx0, inside);
        backend.geluBackward(place(backend, x, inside), place(backend, dy, inside), wdx, length);
        // dx0 and dy · gelu'(x) may cancel: the tolerance scales with both terms.
        const terms = (i: number) =>
          Math.abs(dx0[i]) + Math.abs(dy[i]) * (Math.abs(dx[i] - dx0[i]) / Math.abs(dy[i]) + 1);
        assertClose(wdx, dx, (i) => 1e-6 * terms(i), `geluBackward ${name}`);
      }
    }
  });

  Deno.test(`wasm add matches reference, ${label}`, () => {
    const random = makeRandom(22);
    for (const length of [1, 3, 17, 1000, 200003]) {
      for (const inside of PLACEMENTS) {
        const name = `${label} length ${length} inside=${inside}`;
        const x = randomArray(length, random);
        const y = randomArray(length, random);
        const expected = new Float32Array(length);
        jsBackend.add(x, y, expected, length);
        const out = place(backend, new Float32Array(length), inside);
        backend.add(place(backend, x, inside), place(backend, y, inside), out, length);
        // One rounding of an exact sum: the same bits as the reference.
        assertClose(out, expected, () => 0, `add ${name}`);

        // In place, as the backward pass of a sum accumulates a gradient.
        const accumulated = place(backend, x, inside);
        backend.add(accumulated, place(backend, y, inside), accumulated, length);
        assertClose(accumulated, expected, () => 0, `add in place ${name}`);
      }
    }
  });

  Deno.test(`wasm columnSum matches reference, ${label}`, () => {
    const random = makeRandom(23);
    for (const [rows, cols] of [...ROW_SHAPES, [1024, 256] as [number, number]]) {
      for (const inside of PLACEMENTS) {
        const name = `${label} ${rows}×${cols} inside=${inside}`;
        const x = randomArray(rows * cols, random);
        const out0 = randomArray(cols, random);
        const expected = out0.slice();
        jsBackend.columnSum(x, expected, rows, cols);
        const out = place(backend, out0, inside);
        backend.columnSum(place(backend, x, inside), out, rows, cols);
        // Both add in row order with a rounding per add: the same bits as the reference.
        assertClose(out, expected, () => 0, `columnSum ${name}`);
      }
    }
  });

  Deno.test(`wasm adamw update, ${label}`, () => {
    const random = makeRandom(21);
    for (const length of [1, 5, 1003, 150001]) {
      for (const step of [1, 10]) {
        for (const inside of PLACEMENTS) {
          const name = `${label} length ${length} step ${step} inside=${inside}`;
          const hyper = { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, step };
          const param = randomArray(length, random);
          const grad = randomArray(length, random);
          const m = randomArray(length, random, 0.1);
          const v = randomArray(length, random, 0.01).map(Math.abs);

          const [p1, m1, v1] = [param.slice(), m.slice(), v.slice()];
          jsBackend.adamwUpdate(p1, grad, m1, v1, hyper);
          const [p2, m2, v2] = [
            place(backend, param, inside),
            place(backend, m, inside),
            place(backend, v, inside),
          ];
          backend.adamwUpdate(p2, place(backend, grad, inside), m2, v2, hyper);
          // m and v are sums of two terms: the tolerance scales with the terms.
          const mTerms = (i: number) =>
            hyper.beta1 * Math.abs(m[i]) + (1 - hyper.beta1) * Math.abs(grad[i]);
          const vTerms = (i: number) => hyper.beta2 * v[i] + (1 - hyper.beta2) * grad[i] ** 2;
          assertClose(m2, m1, (i) => 1e-6 * mTerms(i), `adamw m ${name}`);
          assertClose(v2, v1, (i) => 1e-6 * vTerms(i), `adamw v ${name}`);
          // The update itself is at most about lr, so compare it at 1e-4 of lr.
          assertClose(p2, p1, relative(p1, 1e-6, 1e-4 * hyper.lr), `adamw param ${name}`);
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------
// Attention

const ATTENTION_SHAPES: AttentionShape[] = [
  { batch: 1, seqLen: 1, heads: 1, headSize: 1 },
  { batch: 2, seqLen: 5, heads: 3, headSize: 4 },
  { batch: 1, seqLen: 49, heads: 2, headSize: 3 },
  { batch: 2, seqLen: 65, heads: 2, headSize: 16 },
  { batch: 2, seqLen: 100, heads: 4, headSize: 16 },
];

for (const { label, backend } of variants) {
  Deno.test(`wasm attention forward and backward, ${label}`, () => {
    const random = makeRandom(30);
    for (const shape of ATTENTION_SHAPES) {
      for (const inside of PLACEMENTS) {
        const { batch: B, seqLen: T, heads: H, headSize: D } = shape;
        const C = H * D;
        const name = `${label} ${JSON.stringify(shape)} inside=${inside}`;
        const qkv = randomArray(B * T * 3 * C, random, 2);
        const y = new Float32Array(B * T * C);
        const probs = new Float32Array(B * H * T * T);
        jsBackend.attentionForward(qkv, y, probs, shape);

        const wy = place(backend, new Float32Array(y.length), inside);
        // Poison the outputs: every element must be written.
        const wprobs = place(backend, new Float32Array(probs.length).fill(NaN), inside);
        wy.fill(NaN);
        backend.attentionForward(place(backend, qkv, inside), wy, wprobs, shape);
        assertClose(wprobs, probs, relative(probs, 1e-5, 1e-6), `attentionForward probs ${name}`);
        assertClose(wy, y, relative(y, 1e-4, 1e-5), `attentionForward y ${name}`);

        const dy = randomArray(y.length, random);
        const dqkv0 = randomArray(qkv.length, random);
        const dqkv = dqkv0.slice();
        jsBackend.attentionBackward(dy, qkv, probs, dqkv, shape);
        const wdqkv = place(backend, dqkv0, inside);
        backend.attentionBackward(
          place(backend, dy, inside),
          place(backend, qkv, inside),
          place(backend, probs, inside),
          wdqkv,
          shape,
        );
        const tolerance = 1e-5 * Math.sqrt(T * D);
        assertClose(wdqkv, dqkv, relative(dqkv, tolerance, tolerance), `attentionBackward ${name}`);
      }
    }
  });
}

// ---------------------------------------------------------------------------
// Thread count

Deno.test("wasm results do not depend on thread count", () => {
  // Chunks cut at tile and vector boundaries, so every element is computed
  // by the same sequence of operations on one thread or two.
  const [one, two] = [variants[0].backend, variants[1].backend];
  const random = makeRandom(35);
  const a = randomArray(300 * 200, random);
  const b = randomArray(200 * 170, random);
  const products = [one, two].map((backend) => {
    const c = backend.alloc(300 * 170);
    backend.matmul(place(backend, a, true), place(backend, b, true), c, {
      m: 300,
      n: 170,
      k: 200,
      transB: true,
    });
    return c;
  });
  assertEquals(Array.from(products[1]), Array.from(products[0]), "matmul");

  const shape = { batch: 2, seqLen: 100, heads: 4, headSize: 16 };
  const qkv = randomArray(2 * 100 * 3 * 64, random);
  const dy = randomArray(2 * 100 * 64, random);
  const gradients = [one, two].map((backend) => {
    const probs = backend.alloc(2 * 4 * 100 * 100);
    const dqkv = backend.alloc(qkv.length);
    backend.attentionForward(place(backend, qkv, true), backend.alloc(dy.length), probs, shape);
    backend.attentionBackward(
      place(backend, dy, true),
      place(backend, qkv, true),
      probs,
      dqkv,
      shape,
    );
    return dqkv;
  });
  assertEquals(Array.from(gradients[1]), Array.from(gradients[0]), "attention gradient");
});

// ---------------------------------------------------------------------------
// Memory and argument checks

Deno.test("wasm alloc returns zeroed views and reuses freed blocks", async () => {
  const backend = await createWasmBackend({ threads: 1 });
  const first = backend.alloc(1000);
  assert(backend.owns(first));
  first.fill(7);
  const offset = first.byteOffset;
  backend.free(first);
  const second = backend.alloc(1000);
  assertEquals(second.byteOffset, offset, "same size class, same block");
  assert(second.every((value) => value === 0), "reused block is zeroed");
  backend.free(second);
  assertEquals(backend.bytesInUse, 0);
  await backend.close();
});

Deno.test("wasm allocUninitialized skips the zero fill", async () => {
  const backend = await createWasmBackend({ threads: 1 });
  const first = backend.alloc(1000);
  first.fill(7);
  const offset = first.byteOffset;
  backend.free(first);
  const second = backend.allocUninitialized(1000);
  assert(backend.owns(second));
  assertEquals(second.length, 1000, "length");
  assertEquals(second.byteOffset, offset, "same size class, same block");
  assertEquals(second[999], 7, "the old contents stay");
  backend.free(second);
  assertEquals(backend.bytesInUse, 0);
  await backend.close();
});

Deno.test("wasm alloc steady state does not grow memory", async () => {
  const backend = await createWasmBackend({ threads: 1 });
  const step = () => {
    const buffers = [1024 * 64, 1024 * 192, 1000 * 1024, 17, 5].map((n) => backend.alloc(n));
    for (const buffer of buffers) backend.free(buffer);
  };
  step();
  const bytes = backend.memory.buffer.byteLength;
  for (let i = 0; i < 10; i++) step();
  assertEquals(backend.memory.buffer.byteLength, bytes);
  await backend.close();
});

Deno.test("wasm views survive memory growth", async () => {
  const backend = await createWasmBackend({ threads: 1 });
  const early = backend.alloc(16);
  early.set(Array.from({ length: 16 }, (_, i) => i));
  const before = backend.memory.buffer.byteLength;
  const big = backend.alloc(64 * 1024 * 1024 / 4);
  assert(backend.memory.buffer.byteLength > before, "memory grew");
  assertEquals(early.length, 16);
  assertEquals(early[15], 15);
  assert(backend.owns(early), "a view from before the growth is still recognised");

  // Kernels read the early view in place.
  const out = backend.alloc(16);
  backend.geluForward(early, out, 16);
  const expected = new Float32Array(16);
  jsBackend.geluForward(early, expected, 16);
  assertClose(out, expected, relative(expected, 1e-5, 1e-6), "gelu after growth");
  backend.free(big);
  await backend.close();
});

Deno.test("wasm free rejects double free and ignores foreign arrays", async () => {
  const backend = await createWasmBackend({ threads: 1 });
  const buffer = backend.alloc(8);
  backend.free(buffer);
  assertThrows(() => backend.free(buffer), Error, "not a live allocation");
  backend.free(new Float32Array(8));
  await backend.close();
});

Deno.test("wasm kernels reject undersized arrays", async () => {
  const backend = await createWasmBackend({ threads: 1 });
  assertThrows(
    () =>
      backend.matmul(backend.alloc(5), backend.alloc(6), backend.alloc(4), { m: 2, n: 2, k: 3 }),
    RangeError,
    "matmul A has 5 elements",
  );
  assertThrows(
    () => backend.softmaxForward(new Float32Array(6), new Float32Array(5), 2, 3),
    RangeError,
    "softmaxForward argument 2",
  );
  assertThrows(
    () =>
      backend.matmul(backend.alloc(4), backend.alloc(4), backend.alloc(4), { m: -2, n: 2, k: 2 }),
    RangeError,
    "invalid m -2",
  );
  await backend.close();
});

Deno.test("wasm subarray views are read in place", async () => {
  const backend = await createWasmBackend({ threads: 1 });
  const random = makeRandom(40);
  const whole = backend.alloc(100);
  whole.set(randomArray(100, random));
  const x = whole.subarray(10, 40);
  const y = whole.subarray(50, 80);
  assert(backend.owns(x));
  backend.softmaxForward(x, y, 5, 6);
  const expected = new Float32Array(30);
  jsBackend.softmaxForward(x, expected, 5, 6);
  assertClose(y, expected, relative(expected, 1e-5, 1e-7), "softmax on subarrays");
  await backend.close();
});

Deno.test("wasm backend reports its configuration", async () => {
  const backend = await createWasmBackend({ threads: 2 });
  assertEquals(backend.name, "wasm");
  assertEquals(backend.threads, 2);
  await backend.close();
  assertEquals(backend.threads, 1);
  // Still usable on the main thread alone.
  const c = backend.alloc(4);
  backend.matmul(new Float32Array([1, 2, 3, 4]), new Float32Array([1, 0, 0, 1]), c, {
    m: 2,
    n: 2,
    k: 2,
  });
  assertEquals(Array.from(c), [1, 2, 3, 4]);
});

Deno.test("wasm rejects invalid thread counts", async () => {
  for (const threads of [0, -1, 1.5]) {
    let error: unknown;
    try {
      await createWasmBackend({ threads });
    } catch (caught) {
      error = caught;
    }
    assert(error instanceof RangeError, `threads ${threads} rejected`);
  }
});

Deno.test("wasm pool reports kernel errors and recovers", async () => {
  const bytes = Uint8Array.from(atob(simdBase64), (char) => char.charCodeAt(0));
  const module = new WebAssembly.Module(bytes);
  const memory = new WebAssembly.Memory({ initial: 16, maximum: 1024, shared: true });
  const instance = new WebAssembly.Instance(module, { env: { memory } });
  (instance.exports.initialize as () => void)();
  const kernels = KERNEL_NAMES.map((name) => instance.exports[name] as (...args: number[]) => void);
  const gelu = KERNEL_NAMES.indexOf("geluForward");
  const pool = await WorkerPool.start(1, module, memory);
  try {
    // Every chunk reads past the end of the 1 MiB memory, so each one traps.
    const outOfBounds = [0, 1, 2, 3].map(() => [1 << 19, 1 << 19, 1 << 20]);
    let error: unknown;
    try {
      pool.run(gelu, outOfBounds, kernels);
    } catch (caught) {
      error = caught;
    }
    assert(error instanceof Error, `expected an error, got ${error}`);
    assert(/out of bounds/.test(error.message), error.message);

    // The next call runs normally.
    const x = new Float32Array(memory.buffer, 4096, 64).fill(1);
    const y = new Float32Array(memory.buffer, 8192, 64);
    pool.run(gelu, [[4096, 8192, 32], [4096 + 128, 8192 + 128, 32]], kernels);
    const expected = new Float32Array(64);
    jsBackend.geluForward(x, expected, 64);
    assertClose(y, expected, relative(expected, 1e-5, 1e-6), "gelu after a failed call");
  } finally {
    await pool.close();
  }
});

// ---------------------------------------------------------------------------
// Generated module

const canRun = (await Deno.permissions.query({ name: "run" })).state === "granted";

Deno.test({
  name: "wasm kernels_wasm.ts matches its source",
  ignore: !canRun,
  async fn() {
    const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
      args: ["task", "build:wasm", "--check"],
    }).output();
    const output = new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr);
    assertEquals(code, 0, `deno task build:wasm --check failed:\n${output}`);
  },
});

Deno.test({
  name: "wasm workers let the process exit",
  ignore: !canRun,
  async fn() {
    // A program that never calls close(): its idle workers must not keep it alive.
    const program = `
      import { createWasmBackend } from ${
      JSON.stringify(new URL("../lib/wasm.ts", import.meta.url).href)
    };
      const backend = await createWasmBackend({ threads: 2 });
      const a = backend.alloc(256 * 256).fill(1);
      const c = backend.alloc(256 * 256);
      backend.matmul(a, a, c, { m: 256, n: 256, k: 256 });
      console.log(c[0]);
    `;
    const { code, stdout } = await new Deno.Command(Deno.execPath(), {
      args: ["eval", program],
      signal: AbortSignal.timeout(60_000),
    }).output();
    assertEquals(code, 0, "exit code");
    assertEquals(new TextDecoder().decode(stdout).trim(), "256");
  },
});

// ---------------------------------------------------------------------------
// The blas backend, where OpenBLAS and --allow-ffi are available

const canLoadFfi = (await Deno.permissions.query({ name: "ffi" })).state === "granted";
let blas: BlasBackend | undefined;
if (canLoadFfi) {
  try {
    blas = createBlasBackend({ threads: 1 });
  } catch (error) {
    console.warn(`blas tests skipped: ${error instanceof Error ? error.message : error}`);
  }
} else {
  console.warn("blas tests skipped: they need --allow-ffi");
}

Deno.test({
  name: "blas matmul all layouts, batch and accumulate",
  ignore: blas === undefined,
  fn() {
    const random = makeRandom(50);
    for (const transA of [false, true]) {
      for (const transB of [false, true]) {
        for (const [m, n, k] of [[1, 1, 1], [3, 17, 65], [64, 65, 127], [5, 4, 0]]) {
          const options = { m, n, k, transA, transB };
          checkMatmul(blas!, options, false, random, `blas ${JSON.stringify(options)}`);
          const batched = { ...options, batch: 3, accumulate: true, strideB: 0 };
          checkMatmul(blas!, batched, false, random, `blas ${JSON.stringify(batched)}`);
        }
      }
    }
    blas!.close();
  },
});

// The backends above hold worker threads; stop them once every test ran.
Deno.test("wasm close the shared backends", async () => {
  for (const { backend } of variants) await backend.close();
});
