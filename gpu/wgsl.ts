/**
 * WGSL sources of the training kernels, one compute shader per kernel.
 *
 * Each source declares its uniform struct `Params` (all members 4-byte
 * scalars) at binding 0 and its storage buffers after it, in the order in
 * which `Kernels` in `kernels.ts` binds them. Every kernel's entry point is
 * `main`.
 *
 * @module
 */

/** Threads per workgroup of the elementwise kernels. */
export const ELEMENT_THREADS = 256;
/** Threads per workgroup of the row kernels, which reduce one row per workgroup. */
export const ROW_THREADS = 256;
/** Rows of C that one GEMM workgroup computes. */
export const TILE_M = 64;
/** Columns of C that one GEMM workgroup computes. */
export const TILE_N = 64;
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

// The clamp keeps a driver that computes tanh from exp from overflowing to
// NaN for large arguments. tanh(±15) already rounds to ±1 in f32.
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
 * 8 × 64 slice of op(B) into workgroup memory. The loads run along the
 * stored rows whatever the transposition, and the shared rows are padded to
 * 65 floats to spread the stores over memory banks. Elements outside the
 * matrices load as zero, so any size works.
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
// A depth of 16 made Mesa's llvmpipe (LLVM 15, on a 2-core x86-64 machine)
// take about 20 s to compile each variant, and 8 takes about 4 s.
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
 * `dbias[j] += Σ_r dy[r, j]`. A 32 × 8 workgroup owns 32 columns. Each of
 * its eight thread rows sums every eighth row, then one thread adds the
 * eight partial sums in order.
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

/** LayerNorm over each row, one workgroup per row, which also stores `mean` and `rstd` for the backward pass. */
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
 * the clipping factor. Clipping follows `clipGradNorm` in lib/optim.ts: the
 * factor is `maxNorm / (norm + 1e-6)` when that is below 1. A norm that is
 * NaN or infinite leaves the factor at 1, so the caller sees the bad norm and
 * can decide.
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
    // All exponent bits set means infinity or NaN. Unlike a comparison, the
    // bit test cannot be removed by fast-math optimisations.
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

/** Name of a compute kernel. Each has one WGSL source and one cached pipeline. */
export type KernelName =
  | "matmulNN"
  | "matmulNT"
  | "matmulTN"
  | "matmulTT"
  | "add"
  | "biasAdd"
  | "biasBackward"
  | "embeddingForward"
  | "embeddingBackwardTokens"
  | "embeddingBackwardPositions"
  | "layerNormForward"
  | "layerNormBackward"
  | "layerNormParamsBackward"
  | "geluForward"
  | "geluBackward"
  | "softmaxForward"
  | "softmaxBackward"
  | "crossEntropy"
  | "sum"
  | "sumOfSquares"
  | "gradNormFinish"
  | "adamw";

/**
 * The WGSL source of every kernel by name; `Kernels.create` compiles them all
 * once. The matmul variants differ in which operands they read transposed.
 */
export const KERNEL_SOURCES: Readonly<Record<KernelName, string>> = {
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
