/**
 * WGSL compute kernels for training a GPT on WebGPU, forward and backward in
 * pairs, and the `Kernels` class that records them into plans.
 *
 * The kernels follow the conventions of `lib/backend.ts` (row-major `f32`
 * arrays, LayerNorm with biased variance, GELU with the tanh approximation,
 * attention on a packed `qkv` `[B, T, 3C]`), and `tests/webgpu_test.ts`
 * checks each one against the `js` reference backend. Where a GPU kernel
 * overwrites its output in place instead of adding into it, its comment says
 * so.
 *
 * Every reduction runs in a fixed order inside one workgroup or one thread,
 * and no kernel uses atomics, so a plan gives bit-identical results on every
 * run on the same adapter.
 *
 * @example
 * ```ts
 * import { requestGpu } from "./device.ts";
 * import { download, Kernels, Plan, upload } from "./kernels.ts";
 * const { device } = await requestGpu();
 * const kernels = await Kernels.create(device);
 * const buffer = (n: number) => device.createBuffer({ size: n * 4, usage: STORAGE_USAGE });
 * // … create views, record `kernels.matmul(plan, a, b, c, { m, n, k })`, then:
 * // plan.submit(); const c = await download(device, cView);
 * ```
 *
 * @module
 */

import type { AttentionShape, MatmulOptions } from "../lib/backend.ts";
import { type Binding, type GpuView, type Plan, UniformWriter } from "./runtime.ts";

export * from "./runtime.ts";

/** Threads per workgroup of the elementwise kernels. */
const ELEMENT_THREADS = 256;
/** Threads per workgroup of the row kernels, which reduce one row per workgroup. */
const ROW_THREADS = 256;
/** Output tile of one GEMM workgroup, and its depth along the summed dimension. */
const TILE_M = 64;
const TILE_N = 64;
/** Workgroups of the first stage of the gradient-norm reduction. */
export const NORM_PARTIALS = 64;

/** Index of the mean loss in the statistics buffer. */
export const STAT_LOSS = 0;
/** Index of the gradient L2 norm, before clipping, in the statistics buffer. */
export const STAT_NORM = 1;
/** Index of the factor that clipping multiplies the gradients by (1 without clipping). */
export const STAT_CLIP = 2;
/** Elements of the statistics buffer. */
export const STATS_LENGTH = 4;

// ---------------------------------------------------------------------------
// WGSL pieces shared by several kernels.

/** Linear index of an elementwise thread in a grid that may span two dimensions. */
const ELEMENT_INDEX = /* wgsl */ `
fn elementIndex(id: vec3u, groups: vec3u) -> u32 {
  return id.x + id.y * groups.x * ${ELEMENT_THREADS}u;
}`;

/** Workgroup-wide sum and max over one value per thread, as a tree in a fixed order. */
const WORKGROUP_REDUCE = /* wgsl */ `
const ROW_THREADS = ${ROW_THREADS}u;
var<workgroup> reduceScratch: array<f32, ${ROW_THREADS}>;

fn workgroupSum(lane: u32, value: f32) -> f32 {
  reduceScratch[lane] = value;
  workgroupBarrier();
  for (var width = ROW_THREADS / 2u; width > 0u; width /= 2u) {
    if (lane < width) {
      reduceScratch[lane] += reduceScratch[lane + width];
    }
    workgroupBarrier();
  }
  let total = reduceScratch[0];
  workgroupBarrier();
  return total;
}

fn workgroupMax(lane: u32, value: f32) -> f32 {
  reduceScratch[lane] = value;
  workgroupBarrier();
  for (var width = ROW_THREADS / 2u; width > 0u; width /= 2u) {
    if (lane < width) {
      reduceScratch[lane] = max(reduceScratch[lane], reduceScratch[lane + width]);
    }
    workgroupBarrier();
  }
  let total = reduceScratch[0];
  workgroupBarrier();
  return total;
}`;

/** Row index of a row kernel's workgroup in a grid that may span two dimensions. */
const ROW_INDEX = /* wgsl */ `
fn rowIndex(group: vec3u, groups: vec3u) -> u32 {
  return group.x + group.y * groups.x;
}`;

/** GELU with the tanh approximation, and its derivative. */
const GELU = /* wgsl */ `
const GELU_SCALE = 0.7978845608028654; // √(2/π)
const GELU_CUBIC = 0.044715;

// tanh is clamped because some drivers compute it from exp and return NaN
// for large arguments; tanh(±15) already rounds to ±1 in f32.
fn geluTanh(x: f32) -> f32 {
  return tanh(clamp(GELU_SCALE * (x + GELU_CUBIC * x * x * x), -15.0, 15.0));
}`;

// ---------------------------------------------------------------------------
// Kernel sources.

/**
 * Tiled GEMM `C (+)= alpha · op(A) · op(B)`, batched with two-level strides.
 *
 * A 16 × 16 workgroup computes a 64 × 64 tile of C, four rows by four
 * columns per thread, strided by 16 so that neighbouring threads touch
 * neighbouring addresses. Each step loads a 64 × 8 slice of op(A) and an
 * 8 × 64 slice of op(B) into workgroup memory, reading along the stored
 * rows whatever the transposition, and pads the shared rows to 65 floats to
 * spread the stores over memory banks. Elements outside the matrices load as
 * zero, so any size works.
 */
function matmulSource(transA: boolean, transB: boolean): string {
  return /* wgsl */ `
struct Params {
  m: u32, n: u32, k: u32,
  lda: u32, ldb: u32, ldc: u32,
  offsetA: u32, offsetB: u32, offsetC: u32,
  batchInner: u32,
  strideAOuter: u32, strideAInner: u32,
  strideBOuter: u32, strideBInner: u32,
  strideCOuter: u32, strideCInner: u32,
  alpha: f32,
  accumulate: u32,
}
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

const TRANS_A = ${transA};
const TRANS_B = ${transB};
const TILE_M = ${TILE_M}u;
const TILE_N = ${TILE_N}u;
// A depth of 16 made Mesa's llvmpipe (LLVM 15) take about 20 s to compile
// each variant; 8 takes about 4 s.
const TILE_K = 8u;
const ROW = 65u;
const THREADS = 256u;

// tileA[l * ROW + i] = op(A)[row0 + i, k0 + l]; tileB[l * ROW + j] = op(B)[k0 + l, col0 + j].
var<workgroup> tileA: array<f32, 520>;
var<workgroup> tileB: array<f32, 520>;

fn loadA(base: u32, i: u32, l: u32) -> f32 {
  if (i >= params.m || l >= params.k) {
    return 0.0;
  }
  if (TRANS_A) {
    return a[base + l * params.lda + i];
  }
  return a[base + i * params.lda + l];
}

fn loadB(base: u32, l: u32, j: u32) -> f32 {
  if (l >= params.k || j >= params.n) {
    return 0.0;
  }
  if (TRANS_B) {
    return b[base + j * params.ldb + l];
  }
  return b[base + l * params.ldb + j];
}

@compute @workgroup_size(16, 16)
fn main(
  @builtin(workgroup_id) group: vec3u,
  @builtin(local_invocation_id) local: vec3u,
  @builtin(local_invocation_index) lane: u32,
) {
  let outer = group.z / params.batchInner;
  let inner = group.z % params.batchInner;
  let baseA = params.offsetA + outer * params.strideAOuter + inner * params.strideAInner;
  let baseB = params.offsetB + outer * params.strideBOuter + inner * params.strideBInner;
  let baseC = params.offsetC + outer * params.strideCOuter + inner * params.strideCInner;
  let row0 = group.y * TILE_M;
  let col0 = group.x * TILE_N;

  var acc: array<f32, 16>;
  for (var k0 = 0u; k0 < params.k; k0 += TILE_K) {
    for (var e = lane; e < TILE_M * TILE_K; e += THREADS) {
      // Consecutive threads read consecutive addresses of the stored matrix.
      var i = e / TILE_K;
      var la = e % TILE_K;
      if (TRANS_A) {
        la = e / TILE_M;
        i = e % TILE_M;
      }
      tileA[la * ROW + i] = loadA(baseA, row0 + i, k0 + la);

      var lb = e / TILE_N;
      var j = e % TILE_N;
      if (TRANS_B) {
        j = e / TILE_K;
        lb = e % TILE_K;
      }
      tileB[lb * ROW + j] = loadB(baseB, k0 + lb, col0 + j);
    }
    workgroupBarrier();

    for (var l = 0u; l < TILE_K; l++) {
      var av: array<f32, 4>;
      var bv: array<f32, 4>;
      for (var r = 0u; r < 4u; r++) {
        av[r] = tileA[l * ROW + local.y + 16u * r];
        bv[r] = tileB[l * ROW + local.x + 16u * r];
      }
      for (var r = 0u; r < 4u; r++) {
        for (var s = 0u; s < 4u; s++) {
          acc[r * 4u + s] = fma(av[r], bv[s], acc[r * 4u + s]);
        }
      }
    }
    workgroupBarrier();
  }

  for (var r = 0u; r < 4u; r++) {
    for (var s = 0u; s < 4u; s++) {
      let i = row0 + local.y + 16u * r;
      let j = col0 + local.x + 16u * s;
      if (i < params.m && j < params.n) {
        let index = baseC + i * params.ldc + j;
        var value = params.alpha * acc[r * 4u + s];
        if (params.accumulate != 0u) {
          value += c[index];
        }
        c[index] = value;
      }
    }
  }
}`;
}

/** `out = a + b`, elementwise: the residual connection. */
const ADD = /* wgsl */ `
struct Params { length: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
${ELEMENT_INDEX}

@compute @workgroup_size(${ELEMENT_THREADS})
fn main(@builtin(global_invocation_id) id: vec3u, @builtin(num_workgroups) groups: vec3u) {
  let i = elementIndex(id, groups);
  if (i < params.length) {
    out[i] = a[i] + b[i];
  }
}`;

/** `x[r, j] += bias[j]` in place. */
const BIAS_ADD = /* wgsl */ `
struct Params { length: u32, cols: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
${ELEMENT_INDEX}

@compute @workgroup_size(${ELEMENT_THREADS})
fn main(@builtin(global_invocation_id) id: vec3u, @builtin(num_workgroups) groups: vec3u) {
  let i = elementIndex(id, groups);
  if (i < params.length) {
    x[i] += bias[i % params.cols];
  }
}`;

/**
 * `dbias[j] += Σ_r dy[r, j]`. A 32 × 8 workgroup owns 32 columns; its eight
 * thread rows each sum every eighth row, then one thread adds the eight
 * partial sums in order.
 */
const BIAS_BACKWARD = /* wgsl */ `
struct Params { rows: u32, cols: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> dbias: array<f32>;
var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(32, 8)
fn main(@builtin(workgroup_id) group: vec3u, @builtin(local_invocation_id) local: vec3u) {
  let col = group.x * 32u + local.x;
  var sum = 0.0;
  if (col < params.cols) {
    for (var r = local.y; r < params.rows; r += 8u) {
      sum += dy[r * params.cols + col];
    }
  }
  partial[local.y * 32u + local.x] = sum;
  workgroupBarrier();
  if (local.y == 0u && col < params.cols) {
    var total = 0.0;
    for (var y = 0u; y < 8u; y++) {
      total += partial[y * 32u + local.x];
    }
    dbias[col] += total;
  }
}`;

/** `out[b, t, :] = wte[token[b, t], :] + wpe[t, :]`. */
const EMBEDDING_FORWARD = /* wgsl */ `
struct Params { length: u32, channels: u32, seqLen: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> tokens: array<i32>;
@group(0) @binding(2) var<storage, read> wte: array<f32>;
@group(0) @binding(3) var<storage, read> wpe: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
${ELEMENT_INDEX}

@compute @workgroup_size(${ELEMENT_THREADS})
fn main(@builtin(global_invocation_id) id: vec3u, @builtin(num_workgroups) groups: vec3u) {
  let i = elementIndex(id, groups);
  if (i >= params.length) {
    return;
  }
  let row = i / params.channels;
  let c = i % params.channels;
  let token = u32(tokens[row]);
  let t = row % params.seqLen;
  out[i] = wte[token * params.channels + c] + wpe[t * params.channels + c];
}`;

/**
 * `dwte[v, c] += Σ dout[n, c]` over the positions n holding token v. One
 * thread per (v, c) walks the positions that `buildTokenIndex` sorted by
 * token, so the sum needs no atomics and has a fixed order.
 */
const EMBEDDING_BACKWARD_TOKENS = /* wgsl */ `
struct Params { length: u32, channels: u32, vocab: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> dout: array<f32>;
@group(0) @binding(2) var<storage, read> tokenIndex: array<u32>;
@group(0) @binding(3) var<storage, read_write> dwte: array<f32>;
${ELEMENT_INDEX}

@compute @workgroup_size(${ELEMENT_THREADS})
fn main(@builtin(global_invocation_id) id: vec3u, @builtin(num_workgroups) groups: vec3u) {
  let i = elementIndex(id, groups);
  if (i >= params.length) {
    return;
  }
  let v = i / params.channels;
  let c = i % params.channels;
  let start = tokenIndex[v];
  let end = tokenIndex[v + 1u];
  if (start == end) {
    return;
  }
  var sum = 0.0;
  for (var p = start; p < end; p++) {
    let position = tokenIndex[params.vocab + 1u + p];
    sum += dout[position * params.channels + c];
  }
  dwte[i] += sum;
}`;

/** `dwpe[t, c] += Σ_b dout[b, t, c]`, one thread per (t, c). */
const EMBEDDING_BACKWARD_POSITIONS = /* wgsl */ `
struct Params { length: u32, channels: u32, seqLen: u32, batch: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> dout: array<f32>;
@group(0) @binding(2) var<storage, read_write> dwpe: array<f32>;
${ELEMENT_INDEX}

@compute @workgroup_size(${ELEMENT_THREADS})
fn main(@builtin(global_invocation_id) id: vec3u, @builtin(num_workgroups) groups: vec3u) {
  let i = elementIndex(id, groups);
  if (i >= params.length) {
    return;
  }
  let rowLength = params.seqLen * params.channels;
  var sum = 0.0;
  for (var b = 0u; b < params.batch; b++) {
    sum += dout[b * rowLength + i];
  }
  dwpe[i] += sum;
}`;

/** LayerNorm over each row, one workgroup per row; stores `mean` and `rstd` for the backward pass. */
const LAYER_NORM_FORWARD = /* wgsl */ `
struct Params { rows: u32, cols: u32, eps: f32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read_write> mean: array<f32>;
@group(0) @binding(6) var<storage, read_write> rstd: array<f32>;
${WORKGROUP_REDUCE}
${ROW_INDEX}

@compute @workgroup_size(${ROW_THREADS})
fn main(
  @builtin(workgroup_id) group: vec3u,
  @builtin(num_workgroups) groups: vec3u,
  @builtin(local_invocation_index) lane: u32,
) {
  let row = rowIndex(group, groups);
  if (row >= params.rows) {
    return;
  }
  let o = row * params.cols;
  let n = f32(params.cols);

  var sum = 0.0;
  for (var j = lane; j < params.cols; j += ROW_THREADS) {
    sum += x[o + j];
  }
  let mu = workgroupSum(lane, sum) / n;

  var squares = 0.0;
  for (var j = lane; j < params.cols; j += ROW_THREADS) {
    let d = x[o + j] - mu;
    squares += d * d;
  }
  let s = 1.0 / sqrt(workgroupSum(lane, squares) / n + params.eps);

  for (var j = lane; j < params.cols; j += ROW_THREADS) {
    y[o + j] = (x[o + j] - mu) * s * gamma[j] + beta[j];
  }
  if (lane == 0u) {
    mean[row] = mu;
    rstd[row] = s;
  }
}`;

/**
 * LayerNorm input gradient, one workgroup per row:
 * `dx += rstd · (g − mean(g) − x̂ · mean(g ⊙ x̂))` with `g = dy ⊙ γ`.
 */
const LAYER_NORM_BACKWARD = /* wgsl */ `
struct Params { rows: u32, cols: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> gamma: array<f32>;
@group(0) @binding(4) var<storage, read> mean: array<f32>;
@group(0) @binding(5) var<storage, read> rstd: array<f32>;
@group(0) @binding(6) var<storage, read_write> dx: array<f32>;
${WORKGROUP_REDUCE}
${ROW_INDEX}

@compute @workgroup_size(${ROW_THREADS})
fn main(
  @builtin(workgroup_id) group: vec3u,
  @builtin(num_workgroups) groups: vec3u,
  @builtin(local_invocation_index) lane: u32,
) {
  let row = rowIndex(group, groups);
  if (row >= params.rows) {
    return;
  }
  let o = row * params.cols;
  let n = f32(params.cols);
  let mu = mean[row];
  let s = rstd[row];

  var sumG = 0.0;
  var sumGX = 0.0;
  for (var j = lane; j < params.cols; j += ROW_THREADS) {
    let xhat = (x[o + j] - mu) * s;
    let g = dy[o + j] * gamma[j];
    sumG += g;
    sumGX += g * xhat;
  }
  let meanG = workgroupSum(lane, sumG) / n;
  let meanGX = workgroupSum(lane, sumGX) / n;

  for (var j = lane; j < params.cols; j += ROW_THREADS) {
    let xhat = (x[o + j] - mu) * s;
    dx[o + j] += s * (dy[o + j] * gamma[j] - meanG - xhat * meanGX);
  }
}`;

/** `dgamma[j] += Σ_r dy ⊙ x̂` and `dbeta[j] += Σ_r dy`, column sums laid out like `BIAS_BACKWARD`. */
const LAYER_NORM_PARAMS_BACKWARD = /* wgsl */ `
struct Params { rows: u32, cols: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> mean: array<f32>;
@group(0) @binding(4) var<storage, read> rstd: array<f32>;
@group(0) @binding(5) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(6) var<storage, read_write> dbeta: array<f32>;
var<workgroup> partialGamma: array<f32, 256>;
var<workgroup> partialBeta: array<f32, 256>;

@compute @workgroup_size(32, 8)
fn main(@builtin(workgroup_id) group: vec3u, @builtin(local_invocation_id) local: vec3u) {
  let col = group.x * 32u + local.x;
  var sumGamma = 0.0;
  var sumBeta = 0.0;
  if (col < params.cols) {
    for (var r = local.y; r < params.rows; r += 8u) {
      let index = r * params.cols + col;
      let xhat = (x[index] - mean[r]) * rstd[r];
      sumGamma += dy[index] * xhat;
      sumBeta += dy[index];
    }
  }
  partialGamma[local.y * 32u + local.x] = sumGamma;
  partialBeta[local.y * 32u + local.x] = sumBeta;
  workgroupBarrier();
  if (local.y == 0u && col < params.cols) {
    var totalGamma = 0.0;
    var totalBeta = 0.0;
    for (var y = 0u; y < 8u; y++) {
      totalGamma += partialGamma[y * 32u + local.x];
      totalBeta += partialBeta[y * 32u + local.x];
    }
    dgamma[col] += totalGamma;
    dbeta[col] += totalBeta;
  }
}`;

/** `y = gelu(x)` with the tanh approximation. */
const GELU_FORWARD = /* wgsl */ `
struct Params { length: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
${ELEMENT_INDEX}
${GELU}

@compute @workgroup_size(${ELEMENT_THREADS})
fn main(@builtin(global_invocation_id) id: vec3u, @builtin(num_workgroups) groups: vec3u) {
  let i = elementIndex(id, groups);
  if (i < params.length) {
    let v = x[i];
    y[i] = 0.5 * v * (1.0 + geluTanh(v));
  }
}`;

/** `d = d · gelu'(x)` in place: turns the gradient of the GELU output into that of its input. */
const GELU_BACKWARD = /* wgsl */ `
struct Params { length: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> d: array<f32>;
${ELEMENT_INDEX}
${GELU}

@compute @workgroup_size(${ELEMENT_THREADS})
fn main(@builtin(global_invocation_id) id: vec3u, @builtin(num_workgroups) groups: vec3u) {
  let i = elementIndex(id, groups);
  if (i < params.length) {
    let v = x[i];
    let t = geluTanh(v);
    let inner = GELU_SCALE * (1.0 + 3.0 * GELU_CUBIC * v * v);
    d[i] *= 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * inner;
  }
}`;

/**
 * Softmax of each row in place. With `causalT` > 0, row r keeps only its
 * first `r % causalT + 1` entries and the rest become 0: the causal mask of
 * attention scores laid out `[B, H, T, T]`.
 */
const SOFTMAX_FORWARD = /* wgsl */ `
struct Params { rows: u32, cols: u32, causalT: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
${WORKGROUP_REDUCE}
${ROW_INDEX}

@compute @workgroup_size(${ROW_THREADS})
fn main(
  @builtin(workgroup_id) group: vec3u,
  @builtin(num_workgroups) groups: vec3u,
  @builtin(local_invocation_index) lane: u32,
) {
  let row = rowIndex(group, groups);
  if (row >= params.rows) {
    return;
  }
  let o = row * params.cols;
  var valid = params.cols;
  if (params.causalT > 0u) {
    valid = row % params.causalT + 1u;
  }

  var localMax = -3.4028235e38;
  for (var j = lane; j < valid; j += ROW_THREADS) {
    localMax = max(localMax, x[o + j]);
  }
  let rowMax = workgroupMax(lane, localMax);

  var sum = 0.0;
  for (var j = lane; j < valid; j += ROW_THREADS) {
    let e = exp(x[o + j] - rowMax);
    x[o + j] = e;
    sum += e;
  }
  let scale = 1.0 / workgroupSum(lane, sum);

  for (var j = lane; j < params.cols; j += ROW_THREADS) {
    if (j < valid) {
      x[o + j] *= scale;
    } else {
      x[o + j] = 0.0;
    }
  }
}`;

/**
 * Softmax gradient in place, from the softmax output `y`:
 * `d = scale · y ⊙ (d − Σ d ⊙ y)`, and 0 beyond the causal mask.
 */
const SOFTMAX_BACKWARD = /* wgsl */ `
struct Params { rows: u32, cols: u32, causalT: u32, scale: f32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read_write> d: array<f32>;
${WORKGROUP_REDUCE}
${ROW_INDEX}

@compute @workgroup_size(${ROW_THREADS})
fn main(
  @builtin(workgroup_id) group: vec3u,
  @builtin(num_workgroups) groups: vec3u,
  @builtin(local_invocation_index) lane: u32,
) {
  let row = rowIndex(group, groups);
  if (row >= params.rows) {
    return;
  }
  let o = row * params.cols;
  var valid = params.cols;
  if (params.causalT > 0u) {
    valid = row % params.causalT + 1u;
  }

  var partialDot = 0.0;
  for (var j = lane; j < valid; j += ROW_THREADS) {
    partialDot += d[o + j] * y[o + j];
  }
  let rowDot = workgroupSum(lane, partialDot);

  for (var j = lane; j < params.cols; j += ROW_THREADS) {
    if (j < valid) {
      d[o + j] = params.scale * y[o + j] * (d[o + j] - rowDot);
    } else {
      d[o + j] = 0.0;
    }
  }
}`;

/**
 * Cross-entropy of each row of logits against its target, fused over the
 * vocabulary: `loss[r] = log Σ exp(x) − x[target]`. With `backward` set it
 * also overwrites the logits with their gradient,
 * `(softmax(x) − onehot(target)) · gradScale`, as llm.c does.
 */
const CROSS_ENTROPY = /* wgsl */ `
struct Params { rows: u32, vocab: u32, backward: u32, gradScale: f32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
@group(0) @binding(2) var<storage, read> targets: array<i32>;
@group(0) @binding(3) var<storage, read_write> losses: array<f32>;
${WORKGROUP_REDUCE}
${ROW_INDEX}

@compute @workgroup_size(${ROW_THREADS})
fn main(
  @builtin(workgroup_id) group: vec3u,
  @builtin(num_workgroups) groups: vec3u,
  @builtin(local_invocation_index) lane: u32,
) {
  let row = rowIndex(group, groups);
  if (row >= params.rows) {
    return;
  }
  let o = row * params.vocab;
  let targetIndex = u32(targets[row]);
  // Read before the barriers inside the reductions, so before any thread
  // overwrites the logits with gradients.
  let targetLogit = logits[o + targetIndex];

  var localMax = -3.4028235e38;
  for (var j = lane; j < params.vocab; j += ROW_THREADS) {
    localMax = max(localMax, logits[o + j]);
  }
  let rowMax = workgroupMax(lane, localMax);

  var sum = 0.0;
  for (var j = lane; j < params.vocab; j += ROW_THREADS) {
    sum += exp(logits[o + j] - rowMax);
  }
  let logSum = rowMax + log(workgroupSum(lane, sum));
  if (lane == 0u) {
    losses[row] = logSum - targetLogit;
  }

  if (params.backward != 0u) {
    for (var j = lane; j < params.vocab; j += ROW_THREADS) {
      let p = exp(logits[o + j] - logSum);
      logits[o + j] = (p - select(0.0, 1.0, j == targetIndex)) * params.gradScale;
    }
  }
}`;

/** `out[index] = scale · Σ values`, one workgroup: the mean loss. */
const SUM = /* wgsl */ `
struct Params { length: u32, index: u32, scale: f32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> values: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
${WORKGROUP_REDUCE}

@compute @workgroup_size(${ROW_THREADS})
fn main(@builtin(local_invocation_index) lane: u32) {
  var sum = 0.0;
  for (var i = lane; i < params.length; i += ROW_THREADS) {
    sum += values[i];
  }
  let total = workgroupSum(lane, sum);
  if (lane == 0u) {
    out[params.index] = params.scale * total;
  }
}`;

/** First stage of the gradient norm: workgroup w writes the sum of squares of its share to `partials[w]`. */
const SUM_OF_SQUARES = /* wgsl */ `
struct Params { length: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> partials: array<f32>;
${WORKGROUP_REDUCE}

@compute @workgroup_size(${ROW_THREADS})
fn main(
  @builtin(workgroup_id) group: vec3u,
  @builtin(num_workgroups) groups: vec3u,
  @builtin(local_invocation_index) lane: u32,
) {
  var sum = 0.0;
  let stride = groups.x * ROW_THREADS;
  for (var i = group.x * ROW_THREADS + lane; i < params.length; i += stride) {
    let v = x[i];
    sum += v * v;
  }
  let total = workgroupSum(lane, sum);
  if (lane == 0u) {
    partials[group.x] = total;
  }
}`;

/**
 * Second stage of the gradient norm: sums the partials, stores the norm and
 * the clipping factor. Clipping follows torch.nn.utils.clip_grad_norm_: the
 * factor is \`maxNorm / (norm + 1e-6)\` when that is below 1. A norm that is
 * NaN or infinite leaves the factor at 1, as \`clipGradNorm\` in lib/optim.ts
 * does, so the caller sees the bad norm and can decide.
 */
const GRAD_NORM_FINISH = /* wgsl */ `
struct Params { count: u32, clip: u32, maxNorm: f32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> partials: array<f32>;
@group(0) @binding(2) var<storage, read_write> stats: array<f32>;
${WORKGROUP_REDUCE}

@compute @workgroup_size(${ROW_THREADS})
fn main(@builtin(local_invocation_index) lane: u32) {
  var sum = 0.0;
  for (var i = lane; i < params.count; i += ROW_THREADS) {
    sum += partials[i];
  }
  let total = workgroupSum(lane, sum);
  if (lane == 0u) {
    let norm = sqrt(total);
    // All exponent bits set means infinity or NaN; the bit test survives fast-math.
    let finite = (bitcast<u32>(norm) & 0x7f800000u) != 0x7f800000u;
    var factor = 1.0;
    if (params.clip != 0u && finite) {
      factor = min(1.0, params.maxNorm / (norm + 1e-6));
    }
    stats[${STAT_NORM}] = norm;
    stats[${STAT_CLIP}] = factor;
  }
}`;

/**
 * AdamW on one range of a parameter, with the gradient multiplied by the
 * clipping factor from the statistics buffer first:
 * `p −= lr·wd·p`, then `p −= lr · m̂ / (√v̂ + eps)`.
 */
const ADAMW = /* wgsl */ `
struct Step { lr: f32, beta1: f32, beta2: f32, eps: f32, correction1: f32, correction2: f32 }
struct Params { length: u32, weightDecay: f32 }
@group(0) @binding(0) var<uniform> hyper: Step;
@group(0) @binding(1) var<uniform> params: Params;
@group(0) @binding(2) var<storage, read_write> param: array<f32>;
@group(0) @binding(3) var<storage, read> grad: array<f32>;
@group(0) @binding(4) var<storage, read_write> m: array<f32>;
@group(0) @binding(5) var<storage, read_write> v: array<f32>;
@group(0) @binding(6) var<storage, read> stats: array<f32>;
${ELEMENT_INDEX}

@compute @workgroup_size(${ELEMENT_THREADS})
fn main(@builtin(global_invocation_id) id: vec3u, @builtin(num_workgroups) groups: vec3u) {
  let i = elementIndex(id, groups);
  if (i >= params.length) {
    return;
  }
  let g = grad[i] * stats[${STAT_CLIP}];
  let mi = hyper.beta1 * m[i] + (1.0 - hyper.beta1) * g;
  let vi = hyper.beta2 * v[i] + (1.0 - hyper.beta2) * g * g;
  m[i] = mi;
  v[i] = vi;
  let mHat = mi / hyper.correction1;
  let vHat = vi / hyper.correction2;
  var p = param[i];
  p -= hyper.lr * params.weightDecay * p;
  p -= hyper.lr * mHat / (sqrt(vHat) + hyper.eps);
  param[i] = p;
}`;

/** Every kernel by name; `Kernels.create` compiles them all once. */
const KERNEL_SOURCES: Record<string, string> = {
  matmulNN: matmulSource(false, false),
  matmulNT: matmulSource(false, true),
  matmulTN: matmulSource(true, false),
  matmulTT: matmulSource(true, true),
  add: ADD,
  biasAdd: BIAS_ADD,
  biasBackward: BIAS_BACKWARD,
  embeddingForward: EMBEDDING_FORWARD,
  embeddingBackwardTokens: EMBEDDING_BACKWARD_TOKENS,
  embeddingBackwardPositions: EMBEDDING_BACKWARD_POSITIONS,
  layerNormForward: LAYER_NORM_FORWARD,
  layerNormBackward: LAYER_NORM_BACKWARD,
  layerNormParamsBackward: LAYER_NORM_PARAMS_BACKWARD,
  geluForward: GELU_FORWARD,
  geluBackward: GELU_BACKWARD,
  softmaxForward: SOFTMAX_FORWARD,
  softmaxBackward: SOFTMAX_BACKWARD,
  crossEntropy: CROSS_ENTROPY,
  sum: SUM,
  sumOfSquares: SUM_OF_SQUARES,
  gradNormFinish: GRAD_NORM_FINISH,
  adamw: ADAMW,
};

/** Name of a kernel in `KERNEL_SOURCES`. */
export type KernelName = keyof typeof KERNEL_SOURCES;

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
  /** First element of A inside its view (default 0); likewise for B and C. */
  offsetA?: number;
  offsetB?: number;
  offsetC?: number;
  /**
   * Splits the batch index p into `outer = p / batchInner` and
   * `inner = p % batchInner`, so matrix p of A starts at
   * `offsetA + outer · strideA + inner · strideAInner` (likewise for B and C).
   * Default 1, which leaves the plain strides of `MatmulOptions`.
   */
  batchInner?: number;
  strideAInner?: number;
  strideBInner?: number;
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
  out = new Uint32Array(vocabSize + 1 + tokens.length),
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

/** Throws when an operand of a kernel would reach past the end of its view. */
function requireFits(what: string, view: GpuView, lastIndex: number): void {
  if (lastIndex >= view.length) {
    throw new RangeError(
      `${what} reaches element ${lastIndex} of a view of ${view.length} elements`,
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
  readonly device: GPUDevice;
  readonly #pipelines: Map<string, GPUComputePipeline>;

  private constructor(device: GPUDevice, pipelines: Map<string, GPUComputePipeline>) {
    this.device = device;
    this.#pipelines = pipelines;
  }

  /**
   * Compiles every kernel once, in parallel, and caches the pipelines by name.
   *
   * @throws Error naming the kernel whose WGSL failed to compile.
   */
  static async create(device: GPUDevice): Promise<Kernels> {
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
    for (const [what, view] of [["a", a], ["b", b], ["out", out]] as const) {
      requireFits(`add ${what}`, view, length - 1);
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
    for (const [what, view] of [["dy", dy], ["x", x], ["dx", dx]] as const) {
      requireFits(`layerNormBackward ${what}`, view, rows * cols - 1);
    }
    for (const [what, view] of [["gamma", gamma], ["dgamma", dgamma], ["dbeta", dbeta]] as const) {
      requireFits(`layerNormBackward ${what}`, view, cols - 1);
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
   * Records causal self-attention as `Backend.attentionForward`, built from
   * three kernels: scores `S = Q·Kᵀ/√D` by a batched GEMM that reads q and k
   * in place inside `qkv`, the causal softmax of S in place in `probs`
   * `[B, H, T, T]`, and `y = P·V` by a second GEMM that writes each head's
   * columns of `y` `[B, T, C]`.
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
      which: Operand,
      offset: number,
      ld: number,
      outer: number,
      inner: number,
    ): OperandLayout => {
      switch (which) {
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
    const packed = (part: number) => (which: Operand) =>
      operand(which, part * C, 3 * C, T * 3 * C, D);
    return {
      q: packed(0),
      k: packed(1),
      v: packed(2),
      probs: (which: Operand) => operand(which, 0, T, H * T * T, T * T),
      out: (which: Operand, width: number) => operand(which, 0, width, T * width, D),
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
    for (const [what, view] of [["grad", grad], ["m", m], ["v", v]] as const) {
      requireFits(`adamw ${what}`, view, length - 1);
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
