// @ts-nocheck: AssemblyScript source (v128, f32, usize, load<T>), not a Deno module.
// deno-fmt-ignore-file: deno fmt drops the `@inline` decorators, which are not TypeScript.
// deno-lint-ignore-file
//
// Kernels of the `wasm` backend, written in AssemblyScript and compiled by
// `deno task build:wasm` into `lib/wasm/kernels_wasm.ts`.
//
// Conventions:
// - Every pointer is a byte address in the memory that the host imports as
//   `env.memory` (shared, so that worker threads run the same code on the
//   same bytes). Every count, leading dimension and stride is in floats.
// - Matrices are row-major. `ld*` is the distance in floats between two rows,
//   so a kernel can work on a sub-block of a larger matrix.
// - The module has no data segment and no globals that change, so any number
//   of instances can share one memory. The host leaves the first
//   `reservedBytes()` bytes to the module, calls `initialize()` once to fill
//   the constant table there, and passes each thread its own `scratch` area,
//   `scratchBytes(seqLen)` long.
// - The build compiles this file twice: with `--enable relaxed-simd`, where
//   `madd` is one fused `f32x4.relaxed_madd`, and without, where it is a
//   multiply and an add. `ASC_FEATURE_RELAXED_SIMD` selects at compile time.

// ---------------------------------------------------------------------------
// SIMD helpers

/** Returns `a · b + c` lane by lane, fused where the relaxed-SIMD build allows. */
@inline
function madd(a: v128, b: v128, c: v128): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) return f32x4.relaxed_madd(a, b, c);
  return f32x4.add(f32x4.mul(a, b), c);
}

/** Returns the sum of the four lanes of `v`. */
@inline
function sumLanes(v: v128): f32 {
  return f32x4.extract_lane(v, 0) + f32x4.extract_lane(v, 1) +
    (f32x4.extract_lane(v, 2) + f32x4.extract_lane(v, 3));
}

/** Returns the largest of the four lanes of `v` (NaN if any lane is NaN). */
@inline
function maxLanes(v: v128): f32 {
  return max(
    max(f32x4.extract_lane(v, 0), f32x4.extract_lane(v, 1)),
    max(f32x4.extract_lane(v, 2), f32x4.extract_lane(v, 3)),
  );
}

const GELU_SCALE: f32 = 0.7978845608028654; // √(2/π)
const GELU_CUBIC: f32 = 0.044715;

// Constant vectors come from a table in memory, not from `v128.const`:
// V8 in Deno 2.9.6 rebuilds a `v128.const` on every use inside a loop, which
// made `exp4` three times slower, and Binaryen folds any constant expression
// back into `v128.const`. A broadcast load from the table costs one load.
// The host reserves the bytes below `reservedBytes()`, and `initialize()`
// fills the table once per memory.

/** Start of the constant table: one f32 (or i32) per 4-byte slot. */
const TABLE: usize = 64;
/** End of the bytes this module uses below the host's allocations. */
const RESERVED_BYTES: usize = 256;

// Byte offsets of the constants within the table.
const K_EXP_MIN = 0;
const K_EXP_MAX = 4;
const K_LOG2E = 8;
const K_ROUND_MAGIC = 12;
const K_LN2_HI = 16;
const K_LN2_LO = 20;
const K_EXPONENT_BIAS = 24; // i32: 127 − ROUND_MAGIC_BITS
const K_TAYLOR7 = 28; // 1/7! … 1/2!, then 1 (twice: 1/1! and 1/0!)
const K_TAYLOR6 = 32;
const K_TAYLOR5 = 36;
const K_TAYLOR4 = 40;
const K_TAYLOR3 = 44;
const K_TAYLOR2 = 48;
const K_ONE = 52;
const K_GELU_SCALE = 56;
const K_GELU_CUBIC = 60;
const K_GELU_CUBIC3 = 64;
const K_MINUS_TWO = 68;

/** Returns the table constant at byte offset `slot`, in all four lanes. */
@inline
function constant(slot: usize): v128 {
  return v128.load32_splat(TABLE + slot);
}

/** Returns how many bytes at the bottom of the memory the host must leave to this module. */
export function reservedBytes(): usize {
  return RESERVED_BYTES;
}

/**
 * Sets `bytes` bytes from `dst` to zero with the bulk-memory `memory.fill`.
 * In Deno 2.9.6, filling 4 MB this way took about a tenth of the time of
 * `Float32Array.fill` on the same shared memory (measured on a 2-core AMD EPYC).
 */
export function zeroFill(dst: usize, bytes: usize): void {
  memory.fill(dst, 0, bytes);
}

/** Writes the constant table. Call once per memory, before any kernel. */
export function initialize(): void {
  store<f32>(TABLE + K_EXP_MIN, EXP_MIN);
  store<f32>(TABLE + K_EXP_MAX, EXP_MAX);
  store<f32>(TABLE + K_LOG2E, LOG2E);
  store<f32>(TABLE + K_ROUND_MAGIC, ROUND_MAGIC);
  store<f32>(TABLE + K_LN2_HI, LN2_HI);
  store<f32>(TABLE + K_LN2_LO, LN2_LO);
  store<i32>(TABLE + K_EXPONENT_BIAS, 127 - ROUND_MAGIC_BITS);
  store<f32>(TABLE + K_TAYLOR7, 1.0 / 5040.0);
  store<f32>(TABLE + K_TAYLOR6, 1.0 / 720.0);
  store<f32>(TABLE + K_TAYLOR5, 1.0 / 120.0);
  store<f32>(TABLE + K_TAYLOR4, 1.0 / 24.0);
  store<f32>(TABLE + K_TAYLOR3, 1.0 / 6.0);
  store<f32>(TABLE + K_TAYLOR2, 0.5);
  store<f32>(TABLE + K_ONE, 1.0);
  store<f32>(TABLE + K_GELU_SCALE, GELU_SCALE);
  store<f32>(TABLE + K_GELU_CUBIC, GELU_CUBIC);
  store<f32>(TABLE + K_GELU_CUBIC3, 3 * GELU_CUBIC);
  store<f32>(TABLE + K_MINUS_TWO, -2.0);
}

const LOG2E: f32 = 1.4426950408889634;
// ln 2 split in two: LN2_HI has few significant bits, so `n · LN2_HI` is
// exact for every exponent n the clamp below allows.
const LN2_HI: f32 = 0.693145751953125;
const LN2_LO: f32 = 1.428606765330187e-6;
// Below EXP_MIN the result would be subnormal. Those lanes return 0.
const EXP_MIN: f32 = -87.33654;
const EXP_MAX: f32 = 88.72283;
const ROUND_MAGIC: f32 = 12582912.0;
const ROUND_MAGIC_BITS: i32 = 0x4b400000;

/**
 * Returns e^x lane by lane, within about 2 ulp of the correctly rounded value.
 *
 * x = n·ln 2 + r with |r| ≤ ln 2 / 2, so e^x = 2^n · e^r. The Taylor series of
 * e^r to degree 7 leaves a relative error below 0.347^8 / 8! ≈ 6e-9. The
 * factor 2^n is built in the exponent bits. Inputs below EXP_MIN (and −∞)
 * give 0, inputs above EXP_MAX give +∞, and NaN stays NaN.
 */
@inline
function exp4(x: v128): v128 {
  const tooSmall = f32x4.lt(x, constant(K_EXP_MIN));
  // pmax and pmin compile to single instructions, unlike max and min, and
  // with x first they pass NaN through.
  const clamped = f32x4.pmin(f32x4.pmax(x, constant(K_EXP_MIN)), constant(K_EXP_MAX));

  // Adding ROUND_MAGIC = 1.5 · 2^23 rounds x · log2(e) to the nearest integer
  // n, which then sits in the low mantissa bits of `shifted`.
  const magic = constant(K_ROUND_MAGIC);
  const shifted = madd(clamped, constant(K_LOG2E), magic);
  const n = f32x4.sub(shifted, magic);
  let r = f32x4.sub(clamped, f32x4.mul(n, constant(K_LN2_HI)));
  r = f32x4.sub(r, f32x4.mul(n, constant(K_LN2_LO)));

  const one = constant(K_ONE);
  let p = constant(K_TAYLOR7);
  p = madd(p, r, constant(K_TAYLOR6));
  p = madd(p, r, constant(K_TAYLOR5));
  p = madd(p, r, constant(K_TAYLOR4));
  p = madd(p, r, constant(K_TAYLOR3));
  p = madd(p, r, constant(K_TAYLOR2));
  p = madd(p, r, one);
  p = madd(p, r, one);

  // The bits of `shifted` are ROUND_MAGIC_BITS + n. n is at most 128 after
  // the clamp, and the biased exponent 127 + 128 = 255 encodes +∞.
  const exponent = i32x4.add(shifted, constant(K_EXPONENT_BIAS));
  const result = f32x4.mul(p, i32x4.shl(exponent, 23));
  return v128.andnot(result, tooSmall);
}

/** Returns e^x for one float, through the vector routine so both agree. */
@inline
function expScalar(x: f32): f32 {
  return f32x4.extract_lane(exp4(f32x4.splat(x)), 0);
}

/**
 * Returns ln x for x > 0, computed in f64: x = 2^e · m with m in [√½, √2),
 * and ln m = 2 atanh(s) with s = (m − 1) / (m + 1), |s| ≤ 0.172, summed to s^11.
 * Returns −∞ for 0, NaN for negative inputs and NaN, +∞ for +∞.
 */
function logScalar(x: f64): f64 {
  if (isNaN(x) || x < 0) return NaN;
  if (x == 0) return -Infinity;
  if (x == Infinity) return Infinity;

  let bits = reinterpret<u64>(x);
  let e: i32 = <i32> ((bits >> 52) & 0x7ff) - 1023;
  if (e == -1023) {
    // Subnormal: scale up by 2^54 first.
    bits = reinterpret<u64>(x * 18014398509481984.0);
    e = <i32> ((bits >> 52) & 0x7ff) - 1023 - 54;
  }
  let m = reinterpret<f64>((bits & 0x000fffffffffffff) | 0x3ff0000000000000);
  if (m > 1.4142135623730951) {
    m *= 0.5;
    e += 1;
  }

  const s = (m - 1) / (m + 1);
  const s2 = s * s;
  const series = 1 + s2 * (1.0 / 3 + s2 * (1.0 / 5 + s2 * (1.0 / 7 + s2 * (1.0 / 9 + s2 / 11))));
  return <f64> e * 0.6931471805599453 + 2 * s * series;
}

// ---------------------------------------------------------------------------
// Matrix product
//
// The classic blocked scheme. Each block of KC rows and NC columns of op(B)
// is copied ("packed") into scratch as panels of NR columns. Each block of MC
// rows of op(A) is packed as panels of MR rows. A register-blocked
// micro-kernel then multiplies one MR-row panel by one NR-column panel and
// keeps the MR × NR tile of C in 12 vector registers.
//
// Packing reads op(A) and op(B) in whatever layout they are stored, so the
// transposed cases need no copy of the whole operand. It pads the panels at
// the matrix edges with zeros, so the micro-kernel always runs the full tile.
//
// MR × NR = 6 × 8 uses 12 accumulators, 2 vectors of B and 1 broadcast of A,
// 15 of the 16 xmm registers that V8 allocates on x86-64. KC · NR floats of
// a B panel (8 KiB) stay in L1, MC · KC floats of packed A (96 KiB) in L2.

const MR = 6;
const NR = 8;
const KC = 256;
const MC = 96;
const NC = 1024;

// Scratch layout of one thread, in bytes from `scratch`.
const TILE_BYTES: usize = MR * NR * 4;
const A_PACK_OFFSET: usize = (TILE_BYTES + 63) & ~63; // the next cache line
const B_PACK_OFFSET: usize = A_PACK_OFFSET + MC * KC * 4;
const GEMM_SCRATCH_BYTES: usize = B_PACK_OFFSET + KC * NC * 4;

/**
 * Returns the bytes of scratch one thread needs: the GEMM packing buffers,
 * plus a `[seqLen, seqLen]` matrix for `attentionBackward` (pass 0 otherwise).
 */
export function scratchBytes(seqLen: i32): usize {
  return GEMM_SCRATCH_BYTES + <usize> seqLen * <usize> seqLen * 4;
}

/**
 * Transposes the 4 × 4 block of floats whose rows start at `src`, `rowBytes`
 * apart, and stores its columns as rows `dstBytes` apart from `dst`: column q
 * of the block becomes the four floats at `dst + q · dstBytes`.
 */
@inline
function transpose4(src: usize, rowBytes: usize, dst: usize, dstBytes: usize): void {
  const r0 = v128.load(src);
  const r1 = v128.load(src + rowBytes);
  const r2 = v128.load(src + 2 * rowBytes);
  const r3 = v128.load(src + 3 * rowBytes);
  const t0 = v128.shuffle<f32>(r0, r1, 0, 4, 1, 5);
  const t1 = v128.shuffle<f32>(r0, r1, 2, 6, 3, 7);
  const t2 = v128.shuffle<f32>(r2, r3, 0, 4, 1, 5);
  const t3 = v128.shuffle<f32>(r2, r3, 2, 6, 3, 7);
  v128.store(dst, v128.shuffle<f32>(t0, t2, 0, 1, 4, 5));
  v128.store(dst + dstBytes, v128.shuffle<f32>(t0, t2, 2, 3, 6, 7));
  v128.store(dst + 2 * dstBytes, v128.shuffle<f32>(t1, t3, 0, 1, 4, 5));
  v128.store(dst + 3 * dstBytes, v128.shuffle<f32>(t1, t3, 2, 3, 6, 7));
}

/**
 * Packs the `kb × nb` block of op(B) that starts at `b` into panels of NR
 * columns: panel j holds, for each of the kb rows, NR consecutive floats.
 * Columns past `nb` are zero.
 */
function packB(transB: bool, kb: i32, nb: i32, b: usize, ldb: i32, dst: usize): void {
  const rowBytes = <usize> ldb << 2;
  for (let j0 = 0; j0 < nb; j0 += NR) {
    const width = min(NR, nb - j0);
    if (!transB && width == NR) {
      // Row p of the panel is 8 contiguous floats of row p of B.
      let src = b + (<usize> j0 << 2);
      for (let p = 0; p < kb; p++) {
        v128.store(dst, v128.load(src));
        v128.store(dst, v128.load(src, 16), 16);
        src += rowBytes;
        dst += NR * 4;
      }
    } else if (transB && width == NR) {
      // B is stored [n, k]: column j of op(B) is row j of B, contiguous in p.
      // Four steps of p at a time, as two 4 × 4 transposes of rows j0 … j0 + 7.
      const src = b + <usize> j0 * rowBytes;
      let p = 0;
      for (; p + 4 <= kb; p += 4) {
        const at = src + (<usize> p << 2);
        transpose4(at, rowBytes, dst, NR * 4);
        transpose4(at + 4 * rowBytes, rowBytes, dst + 16, NR * 4);
        dst += 4 * NR * 4;
      }
      for (; p < kb; p++) {
        let col = src + (<usize> p << 2);
        for (let j = 0; j < NR; j++) {
          store<f32>(dst + (<usize> j << 2), load<f32>(col));
          col += rowBytes;
        }
        dst += NR * 4;
      }
    } else {
      // The last, partial panel.
      for (let p = 0; p < kb; p++) {
        for (let j = 0; j < NR; j++) {
          let value: f32 = 0;
          if (j < width) {
            const index = transB ? <usize> (j0 + j) * ldb + p : <usize> p * ldb + j0 + j;
            value = load<f32>(b + (index << 2));
          }
          store<f32>(dst, value);
          dst += 4;
        }
      }
    }
  }
}

/**
 * Packs the `mb × kb` block of op(A) that starts at `a` into panels of MR
 * rows: panel i holds, for each of the kb columns, MR consecutive floats.
 * Rows past `mb` are zero.
 */
function packA(transA: bool, mb: i32, kb: i32, a: usize, lda: i32, dst: usize): void {
  const rowBytes = <usize> lda << 2;
  for (let i0 = 0; i0 < mb; i0 += MR) {
    const height = min(MR, mb - i0);
    if (!transA && height == MR) {
      // Walk the MR rows of A side by side, four steps of p at a time: a 4 × 4
      // transpose of rows 0 … 3 and the pairs of rows 4 and 5.
      const src = a + <usize> i0 * rowBytes;
      let p = 0;
      for (; p + 4 <= kb; p += 4) {
        const at = src + (<usize> p << 2);
        transpose4(at, rowBytes, dst, MR * 4);
        const row4 = v128.load(at + 4 * rowBytes);
        const row5 = v128.load(at + 5 * rowBytes);
        const low = v128.shuffle<f32>(row4, row5, 0, 4, 1, 5);
        const high = v128.shuffle<f32>(row4, row5, 2, 6, 3, 7);
        v128.store64_lane(dst, low, 0, 16);
        v128.store64_lane(dst, low, 1, 16 + MR * 4);
        v128.store64_lane(dst, high, 0, 16 + 2 * MR * 4);
        v128.store64_lane(dst, high, 1, 16 + 3 * MR * 4);
        dst += 4 * MR * 4;
      }
      for (; p < kb; p++) {
        let row = src + (<usize> p << 2);
        for (let i = 0; i < MR; i++) {
          store<f32>(dst + (<usize> i << 2), load<f32>(row));
          row += rowBytes;
        }
        dst += MR * 4;
      }
    } else if (transA && height == MR) {
      // A is stored [k, m]: the MR floats of column p of op(A) are contiguous.
      let src = a + (<usize> i0 << 2);
      for (let p = 0; p < kb; p++) {
        v128.store(dst, v128.load(src));
        v128.store64_lane(dst, v128.load64_zero(src, 16), 0, 16);
        src += rowBytes;
        dst += MR * 4;
      }
    } else {
      for (let p = 0; p < kb; p++) {
        for (let i = 0; i < MR; i++) {
          let value: f32 = 0;
          if (i < height) {
            const index = transA ? <usize> p * lda + i0 + i : <usize> (i0 + i) * lda + p;
            value = load<f32>(a + (index << 2));
          }
          store<f32>(dst, value);
          dst += 4;
        }
      }
    }
  }
}

/** Stores `v` at `c`, or adds it to what is there. */
@inline
function storeOrAdd(c: usize, v: v128, overwrite: bool): void {
  if (overwrite) v128.store(c, v);
  else v128.store(c, f32x4.add(v128.load(c), v));
}

/**
 * Multiplies one packed MR-row panel of A by one packed NR-column panel of B
 * over `kb` steps and writes the top-left `height × width` of the MR × NR
 * result into C, overwriting or adding. Partial tiles go through `tile`.
 */
function microKernel(
  kb: i32,
  aPanel: usize,
  bPanel: usize,
  c: usize,
  ldc: i32,
  overwrite: bool,
  height: i32,
  width: i32,
  tile: usize,
): void {
  let c00 = f32x4.splat(0);
  let c01 = f32x4.splat(0);
  let c10 = f32x4.splat(0);
  let c11 = f32x4.splat(0);
  let c20 = f32x4.splat(0);
  let c21 = f32x4.splat(0);
  let c30 = f32x4.splat(0);
  let c31 = f32x4.splat(0);
  let c40 = f32x4.splat(0);
  let c41 = f32x4.splat(0);
  let c50 = f32x4.splat(0);
  let c51 = f32x4.splat(0);

  let ap = aPanel;
  let bp = bPanel;
  for (let p = 0; p < kb; p++) {
    const b0 = v128.load(bp);
    const b1 = v128.load(bp, 16);
    let a = v128.load32_splat(ap);
    c00 = madd(a, b0, c00);
    c01 = madd(a, b1, c01);
    a = v128.load32_splat(ap, 4);
    c10 = madd(a, b0, c10);
    c11 = madd(a, b1, c11);
    a = v128.load32_splat(ap, 8);
    c20 = madd(a, b0, c20);
    c21 = madd(a, b1, c21);
    a = v128.load32_splat(ap, 12);
    c30 = madd(a, b0, c30);
    c31 = madd(a, b1, c31);
    a = v128.load32_splat(ap, 16);
    c40 = madd(a, b0, c40);
    c41 = madd(a, b1, c41);
    a = v128.load32_splat(ap, 20);
    c50 = madd(a, b0, c50);
    c51 = madd(a, b1, c51);
    ap += MR * 4;
    bp += NR * 4;
  }

  if (height == MR && width == NR) {
    const rowBytes = <usize> ldc << 2;
    let row = c;
    storeOrAdd(row, c00, overwrite);
    storeOrAdd(row + 16, c01, overwrite);
    row += rowBytes;
    storeOrAdd(row, c10, overwrite);
    storeOrAdd(row + 16, c11, overwrite);
    row += rowBytes;
    storeOrAdd(row, c20, overwrite);
    storeOrAdd(row + 16, c21, overwrite);
    row += rowBytes;
    storeOrAdd(row, c30, overwrite);
    storeOrAdd(row + 16, c31, overwrite);
    row += rowBytes;
    storeOrAdd(row, c40, overwrite);
    storeOrAdd(row + 16, c41, overwrite);
    row += rowBytes;
    storeOrAdd(row, c50, overwrite);
    storeOrAdd(row + 16, c51, overwrite);
    return;
  }

  v128.store(tile, c00);
  v128.store(tile, c01, 16);
  v128.store(tile, c10, 32);
  v128.store(tile, c11, 48);
  v128.store(tile, c20, 64);
  v128.store(tile, c21, 80);
  v128.store(tile, c30, 96);
  v128.store(tile, c31, 112);
  v128.store(tile, c40, 128);
  v128.store(tile, c41, 144);
  v128.store(tile, c50, 160);
  v128.store(tile, c51, 176);
  for (let i = 0; i < height; i++) {
    for (let j = 0; j < width; j++) {
      const dst = c + ((<usize> i * ldc + j) << 2);
      const value = load<f32>(tile + ((<usize> i * NR + j) << 2));
      store<f32>(dst, overwrite ? value : load<f32>(dst) + value);
    }
  }
}

/**
 * Computes one matrix product `C (+)= op(A) · op(B)`, with C `[m, n]` and op(A)
 * `[m, k]`. A is stored `[m, k]`, or `[k, m]` when `transA`; B is stored
 * `[k, n]`, or `[n, k]` when `transB`. With `k == 0` the product is zero.
 */
function gemm(
  transA: bool,
  transB: bool,
  m: i32,
  n: i32,
  k: i32,
  a: usize,
  lda: i32,
  b: usize,
  ldb: i32,
  c: usize,
  ldc: i32,
  accumulate: bool,
  scratch: usize,
): void {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    if (!accumulate) {
      for (let i = 0; i < m; i++) memory.fill(c + ((<usize> i * ldc) << 2), 0, <usize> n << 2);
    }
    return;
  }

  const tile = scratch;
  const aPack = scratch + A_PACK_OFFSET;
  const bPack = scratch + B_PACK_OFFSET;
  for (let jc = 0; jc < n; jc += NC) {
    const nb = min(NC, n - jc);
    for (let pc = 0; pc < k; pc += KC) {
      const kb = min(KC, k - pc);
      const bBlock = transB ? <usize> jc * ldb + pc : <usize> pc * ldb + jc;
      packB(transB, kb, nb, b + (bBlock << 2), ldb, bPack);
      // The first pass over k overwrites C unless the caller accumulates.
      const overwrite = pc == 0 && !accumulate;

      for (let ic = 0; ic < m; ic += MC) {
        const mb = min(MC, m - ic);
        const aBlock = transA ? <usize> pc * lda + ic : <usize> ic * lda + pc;
        packA(transA, mb, kb, a + (aBlock << 2), lda, aPack);

        for (let jr = 0; jr < nb; jr += NR) {
          const width = min(NR, nb - jr);
          const bPanel = bPack + ((<usize> jr * kb) << 2);
          for (let ir = 0; ir < mb; ir += MR) {
            const height = min(MR, mb - ir);
            const aPanel = aPack + ((<usize> ir * kb) << 2);
            const cTile = c + ((<usize> (ic + ir) * ldc + jc + jr) << 2);
            microKernel(kb, aPanel, bPanel, cTile, ldc, overwrite, height, width, tile);
          }
        }
      }
    }
  }
}

/**
 * Computes a batch of matrix products: for p in [0, batch), `C_p (+)= op(A_p) · op(B_p)`
 * with `X_p` at `x + p · strideX` floats. A stride of 0 shares the operand
 * across the batch. See `gemm` for the layouts.
 */
export function sgemm(
  transA: i32,
  transB: i32,
  m: i32,
  n: i32,
  k: i32,
  a: usize,
  lda: i32,
  b: usize,
  ldb: i32,
  c: usize,
  ldc: i32,
  accumulate: i32,
  batch: i32,
  strideA: i32,
  strideB: i32,
  strideC: i32,
  scratch: usize,
): void {
  for (let p = 0; p < batch; p++) {
    gemm(
      transA != 0,
      transB != 0,
      m,
      n,
      k,
      a + ((<usize> p * strideA) << 2),
      lda,
      b + ((<usize> p * strideB) << 2),
      ldb,
      c + ((<usize> p * strideC) << 2),
      ldc,
      accumulate != 0,
      scratch,
    );
  }
}

// ---------------------------------------------------------------------------
// Row kernels: softmax, log-softmax, LayerNorm. `rows × cols`, row-major.

/**
 * Returns the largest of the `cols` floats at `x`. A NaN may be skipped, so
 * callers must let NaN reach the result another way (the exponentials do).
 */
function rowMax(x: usize, cols: i32): f32 {
  let j = 0;
  let best: f32 = -Infinity;
  if (cols >= 4) {
    let vmax = v128.load(x);
    // pmax is one instruction; max, which orders NaN and ±0, is several.
    for (j = 4; j + 4 <= cols; j += 4) vmax = f32x4.pmax(vmax, v128.load(x + (<usize> j << 2)));
    best = maxLanes(vmax);
  }
  for (; j < cols; j++) best = max(best, load<f32>(x + (<usize> j << 2)));
  return best;
}

/** Writes `y = e^(x − shift)` for one row and returns the sum of `y`. */
function rowExp(x: usize, y: usize, cols: i32, shift: f32): f32 {
  const vshift = f32x4.splat(shift);
  let vsum = f32x4.splat(0);
  let j = 0;
  for (; j + 4 <= cols; j += 4) {
    const offset = <usize> j << 2;
    const e = exp4(f32x4.sub(v128.load(x + offset), vshift));
    v128.store(y + offset, e);
    vsum = f32x4.add(vsum, e);
  }
  let sum = sumLanes(vsum);
  for (; j < cols; j++) {
    const offset = <usize> j << 2;
    const e = expScalar(load<f32>(x + offset) - shift);
    store<f32>(y + offset, e);
    sum += e;
  }
  return sum;
}

/** Returns the sum of `e^(x − shift)` over one row, writing nothing. */
function rowExpSum(x: usize, cols: i32, shift: f32): f32 {
  const vshift = f32x4.splat(shift);
  let vsum = f32x4.splat(0);
  let j = 0;
  for (; j + 4 <= cols; j += 4) {
    vsum = f32x4.add(vsum, exp4(f32x4.sub(v128.load(x + (<usize> j << 2)), vshift)));
  }
  let sum = sumLanes(vsum);
  for (; j < cols; j++) sum += expScalar(load<f32>(x + (<usize> j << 2)) - shift);
  return sum;
}

/** Returns the sum of `x ⊙ y` over `cols` floats. */
function rowDot(x: usize, y: usize, cols: i32): f32 {
  let vsum = f32x4.splat(0);
  let j = 0;
  for (; j + 4 <= cols; j += 4) {
    const offset = <usize> j << 2;
    vsum = madd(v128.load(x + offset), v128.load(y + offset), vsum);
  }
  let sum = sumLanes(vsum);
  for (; j < cols; j++) {
    const offset = <usize> j << 2;
    sum += load<f32>(x + offset) * load<f32>(y + offset);
  }
  return sum;
}

/** Multiplies `cols` floats at `x` by `factor` in place. */
function rowScale(x: usize, cols: i32, factor: f32): void {
  const vfactor = f32x4.splat(factor);
  let j = 0;
  for (; j + 4 <= cols; j += 4) {
    const offset = <usize> j << 2;
    v128.store(x + offset, f32x4.mul(v128.load(x + offset), vfactor));
  }
  for (; j < cols; j++) {
    const offset = <usize> j << 2;
    store<f32>(x + offset, load<f32>(x + offset) * factor);
  }
}

/** Softmax over each row of `x` into `y`. */
export function softmaxForward(x: usize, y: usize, rows: i32, cols: i32): void {
  const rowBytes = <usize> cols << 2;
  for (let r = 0; r < rows; r++) {
    const xr = x + <usize> r * rowBytes;
    const yr = y + <usize> r * rowBytes;
    const sum = rowExp(xr, yr, cols, rowMax(xr, cols));
    rowScale(yr, cols, 1 / sum);
  }
}

/** `dx += y ⊙ (dy − Σ dy ⊙ y)` for each row. */
export function softmaxBackward(y: usize, dy: usize, dx: usize, rows: i32, cols: i32): void {
  const rowBytes = <usize> cols << 2;
  for (let r = 0; r < rows; r++) {
    const base = <usize> r * rowBytes;
    const dot = rowDot(dy + base, y + base, cols);
    const vdot = f32x4.splat(dot);
    let j = 0;
    for (; j + 4 <= cols; j += 4) {
      const o = base + (<usize> j << 2);
      const g = f32x4.mul(v128.load(y + o), f32x4.sub(v128.load(dy + o), vdot));
      v128.store(dx + o, f32x4.add(v128.load(dx + o), g));
    }
    for (; j < cols; j++) {
      const o = base + (<usize> j << 2);
      store<f32>(dx + o, load<f32>(dx + o) + load<f32>(y + o) * (load<f32>(dy + o) - dot));
    }
  }
}

/** Log-softmax over each row: `y = x − max − ln Σ e^(x − max)`. `y` may be `x`. */
export function logSoftmaxForward(x: usize, y: usize, rows: i32, cols: i32): void {
  const rowBytes = <usize> cols << 2;
  for (let r = 0; r < rows; r++) {
    const xr = x + <usize> r * rowBytes;
    const yr = y + <usize> r * rowBytes;
    const rowMaximum = rowMax(xr, cols);
    const sum = rowExpSum(xr, cols, rowMaximum);
    const logSum = <f32> (<f64> rowMaximum + logScalar(<f64> sum));
    const vlogSum = f32x4.splat(logSum);
    let j = 0;
    for (; j + 4 <= cols; j += 4) {
      const o = <usize> j << 2;
      v128.store(yr + o, f32x4.sub(v128.load(xr + o), vlogSum));
    }
    for (; j < cols; j++) {
      const o = <usize> j << 2;
      store<f32>(yr + o, load<f32>(xr + o) - logSum);
    }
  }
}

/** `dx += dy − e^y · Σ dy` for each row, from the log-softmax output `y`. */
export function logSoftmaxBackward(y: usize, dy: usize, dx: usize, rows: i32, cols: i32): void {
  const rowBytes = <usize> cols << 2;
  for (let r = 0; r < rows; r++) {
    const base = <usize> r * rowBytes;
    let vsum = f32x4.splat(0);
    let j = 0;
    for (; j + 4 <= cols; j += 4) vsum = f32x4.add(vsum, v128.load(dy + base + (<usize> j << 2)));
    let sum = sumLanes(vsum);
    for (; j < cols; j++) sum += load<f32>(dy + base + (<usize> j << 2));

    const vtotal = f32x4.splat(sum);
    j = 0;
    for (; j + 4 <= cols; j += 4) {
      const o = base + (<usize> j << 2);
      const g = f32x4.sub(v128.load(dy + o), f32x4.mul(exp4(v128.load(y + o)), vtotal));
      v128.store(dx + o, f32x4.add(v128.load(dx + o), g));
    }
    for (; j < cols; j++) {
      const o = base + (<usize> j << 2);
      const g = load<f32>(dy + o) - expScalar(load<f32>(y + o)) * sum;
      store<f32>(dx + o, load<f32>(dx + o) + g);
    }
  }
}

/**
 * Softmax cross-entropy of each row against the class index `targets[r]`
 * (i32, in [0, cols)): writes `probs = softmax(logits)` and
 * `losses[r] = max + ln Σ e^(x − max) − x[targets[r]]`, the log-sum-exp in f64.
 */
export function crossEntropyForward(
  logits: usize,
  targets: usize,
  probs: usize,
  losses: usize,
  rows: i32,
  cols: i32,
): void {
  const rowBytes = <usize> cols << 2;
  for (let r = 0; r < rows; r++) {
    const xr = logits + <usize> r * rowBytes;
    const pr = probs + <usize> r * rowBytes;
    const rowMaximum = rowMax(xr, cols);
    const sum = rowExp(xr, pr, cols, rowMaximum);
    rowScale(pr, cols, 1 / sum);
    const target = <usize> load<i32>(targets + (<usize> r << 2));
    const logSum = <f64> rowMaximum + logScalar(<f64> sum);
    const loss = logSum - <f64> load<f32>(xr + (target << 2));
    store<f32>(losses + (<usize> r << 2), <f32> loss);
  }
}

/** `dlogits += scale · (probs − onehot(targets))` for each row. */
export function crossEntropyBackward(
  probs: usize,
  targets: usize,
  dlogits: usize,
  rows: i32,
  cols: i32,
  scale: f32,
): void {
  const rowBytes = <usize> cols << 2;
  const vscale = f32x4.splat(scale);
  for (let r = 0; r < rows; r++) {
    const pr = probs + <usize> r * rowBytes;
    const dr = dlogits + <usize> r * rowBytes;
    let j = 0;
    for (; j + 4 <= cols; j += 4) {
      const o = <usize> j << 2;
      v128.store(dr + o, madd(v128.load(pr + o), vscale, v128.load(dr + o)));
    }
    for (; j < cols; j++) {
      const o = <usize> j << 2;
      store<f32>(dr + o, load<f32>(dr + o) + scale * load<f32>(pr + o));
    }
    const at = dr + (<usize> load<i32>(targets + (<usize> r << 2)) << 2);
    store<f32>(at, load<f32>(at) - scale);
  }
}

/**
 * LayerNorm of each row with biased variance (two passes over the row):
 * `y = (x − μ) · rstd · γ + β` with `rstd = 1 / √(σ² + eps)`; writes μ to
 * `mean[r]` and rstd to `rstd[r]`.
 */
export function layerNormForward(
  x: usize,
  gamma: usize,
  beta: usize,
  y: usize,
  mean: usize,
  rstd: usize,
  rows: i32,
  cols: i32,
  eps: f32,
): void {
  const rowBytes = <usize> cols << 2;
  for (let r = 0; r < rows; r++) {
    const xr = x + <usize> r * rowBytes;
    const yr = y + <usize> r * rowBytes;

    let vsum = f32x4.splat(0);
    let j = 0;
    for (; j + 4 <= cols; j += 4) vsum = f32x4.add(vsum, v128.load(xr + (<usize> j << 2)));
    let sum = sumLanes(vsum);
    for (; j < cols; j++) sum += load<f32>(xr + (<usize> j << 2));
    const mu = sum / <f32> cols;

    const vmu = f32x4.splat(mu);
    let vsq = f32x4.splat(0);
    j = 0;
    for (; j + 4 <= cols; j += 4) {
      const d = f32x4.sub(v128.load(xr + (<usize> j << 2)), vmu);
      vsq = madd(d, d, vsq);
    }
    let sq = sumLanes(vsq);
    for (; j < cols; j++) {
      const d = load<f32>(xr + (<usize> j << 2)) - mu;
      sq += d * d;
    }
    const s = <f32> (1 / Math.sqrt(<f64> (sq / <f32> cols) + <f64> eps));

    const vs = f32x4.splat(s);
    j = 0;
    for (; j + 4 <= cols; j += 4) {
      const o = <usize> j << 2;
      const xhat = f32x4.mul(f32x4.sub(v128.load(xr + o), vmu), vs);
      v128.store(yr + o, madd(xhat, v128.load(gamma + o), v128.load(beta + o)));
    }
    for (; j < cols; j++) {
      const o = <usize> j << 2;
      const xhat = (load<f32>(xr + o) - mu) * s;
      store<f32>(yr + o, xhat * load<f32>(gamma + o) + load<f32>(beta + o));
    }
    store<f32>(mean + (<usize> r << 2), mu);
    store<f32>(rstd + (<usize> r << 2), s);
  }
}

/**
 * Adds the LayerNorm gradients into `dx`, `dgamma` and `dbeta`. With
 * x̂ = (x − μ) · rstd and g = dy ⊙ γ:
 * `dx += rstd · (g − mean(g) − x̂ · mean(g ⊙ x̂))`, `dγ += Σ dy ⊙ x̂`, `dβ += Σ dy`.
 */
export function layerNormBackward(
  dy: usize,
  x: usize,
  gamma: usize,
  mean: usize,
  rstd: usize,
  dx: usize,
  dgamma: usize,
  dbeta: usize,
  rows: i32,
  cols: i32,
): void {
  const rowBytes = <usize> cols << 2;
  for (let r = 0; r < rows; r++) {
    const base = <usize> r * rowBytes;
    const mu = load<f32>(mean + (<usize> r << 2));
    const s = load<f32>(rstd + (<usize> r << 2));
    const vmu = f32x4.splat(mu);
    const vs = f32x4.splat(s);

    // First pass: the two row means, and the parameter gradients.
    let vmeanG = f32x4.splat(0);
    let vmeanGX = f32x4.splat(0);
    let j = 0;
    for (; j + 4 <= cols; j += 4) {
      const o = <usize> j << 2;
      const d = v128.load(dy + base + o);
      const xhat = f32x4.mul(f32x4.sub(v128.load(x + base + o), vmu), vs);
      const g = f32x4.mul(d, v128.load(gamma + o));
      vmeanG = f32x4.add(vmeanG, g);
      vmeanGX = madd(g, xhat, vmeanGX);
      v128.store(dgamma + o, madd(d, xhat, v128.load(dgamma + o)));
      v128.store(dbeta + o, f32x4.add(v128.load(dbeta + o), d));
    }
    let meanG = sumLanes(vmeanG);
    let meanGX = sumLanes(vmeanGX);
    for (; j < cols; j++) {
      const o = <usize> j << 2;
      const d = load<f32>(dy + base + o);
      const xhat = (load<f32>(x + base + o) - mu) * s;
      const g = d * load<f32>(gamma + o);
      meanG += g;
      meanGX += g * xhat;
      store<f32>(dgamma + o, load<f32>(dgamma + o) + d * xhat);
      store<f32>(dbeta + o, load<f32>(dbeta + o) + d);
    }
    meanG /= <f32> cols;
    meanGX /= <f32> cols;

    // Second pass: dx.
    const vmeanG2 = f32x4.splat(meanG);
    const vmeanGX2 = f32x4.splat(meanGX);
    j = 0;
    for (; j + 4 <= cols; j += 4) {
      const o = <usize> j << 2;
      const xhat = f32x4.mul(f32x4.sub(v128.load(x + base + o), vmu), vs);
      const g = f32x4.mul(v128.load(dy + base + o), v128.load(gamma + o));
      const inner = f32x4.sub(f32x4.sub(g, vmeanG2), f32x4.mul(xhat, vmeanGX2));
      v128.store(dx + base + o, madd(inner, vs, v128.load(dx + base + o)));
    }
    for (; j < cols; j++) {
      const o = <usize> j << 2;
      const xhat = (load<f32>(x + base + o) - mu) * s;
      const g = load<f32>(dy + base + o) * load<f32>(gamma + o);
      store<f32>(dx + base + o, load<f32>(dx + base + o) + s * (g - meanG - xhat * meanGX));
    }
  }
}

// ---------------------------------------------------------------------------
// GELU, tanh approximation.
//
// 0.5 · (1 + tanh(u)) equals the logistic function σ(2u), so
// gelu(x) = x · σ(2u) = x / (1 + e^(−2u)) with u = √(2/π) · (x + 0.044715 x³).
// This form has no cancellation for large negative x, where 1 + tanh(u) → 0.
// For the derivative, 1 − tanh²(u) = 4 σ(2u) (1 − σ(2u)).


/** Returns e^(−2u) for x, the one exponential both GELU kernels need. */
@inline
function geluExp(x: v128): v128 {
  const x2 = f32x4.mul(x, x);
  const inner = madd(x2, constant(K_GELU_CUBIC), constant(K_ONE));
  const u = f32x4.mul(f32x4.mul(x, constant(K_GELU_SCALE)), inner);
  return exp4(f32x4.mul(u, constant(K_MINUS_TWO)));
}

/** Returns gelu(x) = x · σ(2u) = x / (1 + e^(−2u)). */
@inline
function gelu(x: v128): v128 {
  return f32x4.div(x, f32x4.add(constant(K_ONE), geluExp(x)));
}

/**
 * Returns gelu'(x) = σ + 2x · σ (1 − σ) · u' with σ = σ(2u) and
 * u' = √(2/π) (1 + 3 · 0.044715 x²). σ (1 − σ) is computed as e · σ² with
 * e = e^(−2u), because 1 − σ loses all its digits where σ rounds to 1.
 */
@inline
function geluSlope(x: v128): v128 {
  const e = geluExp(x);
  const one = constant(K_ONE);
  const sigma = f32x4.div(one, f32x4.add(one, e));
  const x2 = f32x4.mul(x, x);
  const du = f32x4.mul(
    constant(K_GELU_SCALE),
    madd(x2, constant(K_GELU_CUBIC3), one),
  );
  // Where e overflows to +∞, σ is 0 and e · σ² would be ∞ · 0: the limit is 0.
  const spread = f32x4.mul(f32x4.mul(e, sigma), sigma);
  const finiteSpread = v128.andnot(spread, f32x4.eq(sigma, f32x4.splat(0)));
  return madd(f32x4.mul(f32x4.add(x, x), finiteSpread), du, sigma);
}

/** `out = x + y` over `length` floats; `out` may be `x` or `y`. */
export function add(x: usize, y: usize, out: usize, length: i32): void {
  let i = 0;
  for (; i + 4 <= length; i += 4) {
    const o = <usize> i << 2;
    v128.store(out + o, f32x4.add(v128.load(x + o), v128.load(y + o)));
  }
  for (; i < length; i++) {
    const o = <usize> i << 2;
    store<f32>(out + o, load<f32>(x + o) + load<f32>(y + o));
  }
}

/**
 * Adds the column sums of `x` (`rows` rows of `cols` floats, `stride` floats
 * apart) into `out`: `out[j] += Σ_r x[r, j]`, in row order like the reference.
 */
export function columnSum(x: usize, out: usize, rows: i32, cols: i32, stride: i32): void {
  const rowBytes = <usize> stride << 2;
  for (let r = 0; r < rows; r++) {
    const row = x + <usize> r * rowBytes;
    let j = 0;
    for (; j + 4 <= cols; j += 4) {
      const o = <usize> j << 2;
      v128.store(out + o, f32x4.add(v128.load(out + o), v128.load(row + o)));
    }
    for (; j < cols; j++) {
      const o = <usize> j << 2;
      store<f32>(out + o, load<f32>(out + o) + load<f32>(row + o));
    }
  }
}

/** `y = gelu(x)` over `length` floats. */
export function geluForward(x: usize, y: usize, length: i32): void {
  let i = 0;
  for (; i + 4 <= length; i += 4) {
    const o = <usize> i << 2;
    const v = v128.load(x + o);
    v128.store(y + o, gelu(v));
  }
  for (; i < length; i++) {
    const o = <usize> i << 2;
    const v = f32x4.splat(load<f32>(x + o));
    store<f32>(y + o, f32x4.extract_lane(gelu(v), 0));
  }
}

/** `dx += dy · gelu'(x)` over `length` floats. */
export function geluBackward(x: usize, dy: usize, dx: usize, length: i32): void {
  let i = 0;
  for (; i + 4 <= length; i += 4) {
    const o = <usize> i << 2;
    const slope = geluSlope(v128.load(x + o));
    v128.store(dx + o, madd(v128.load(dy + o), slope, v128.load(dx + o)));
  }
  for (; i < length; i++) {
    const o = <usize> i << 2;
    const slope = f32x4.extract_lane(geluSlope(f32x4.splat(load<f32>(x + o))), 0);
    store<f32>(dx + o, load<f32>(dx + o) + load<f32>(dy + o) * slope);
  }
}

// ---------------------------------------------------------------------------
// AdamW

/**
 * Applies one AdamW step to `length` parameters, in the order of the
 * reference: m and v first, then the decay `p −= decay · p` with
 * `decay = lr · weightDecay`, then `p −= lr · m̂ / (√v̂ + eps)`. The caller
 * computes `oneMinusBeta1 = 1 − β1`, `oneMinusBeta2 = 1 − β2`, `decay` and
 * the bias corrections `correction1 = 1 − β1^step`, `correction2 = 1 − β2^step` in f64.
 */
export function adamwUpdate(
  param: usize,
  grad: usize,
  m: usize,
  v: usize,
  length: i32,
  lr: f32,
  beta1: f32,
  oneMinusBeta1: f32,
  beta2: f32,
  oneMinusBeta2: f32,
  eps: f32,
  decay: f32,
  correction1: f32,
  correction2: f32,
): void {
  const vb1 = f32x4.splat(beta1);
  const vc1 = f32x4.splat(oneMinusBeta1);
  const vb2 = f32x4.splat(beta2);
  const vc2 = f32x4.splat(oneMinusBeta2);
  const vlr = f32x4.splat(lr);
  const vdecay = f32x4.splat(decay);
  const veps = f32x4.splat(eps);
  const vcorr1 = f32x4.splat(correction1);
  const vcorr2 = f32x4.splat(correction2);

  let i = 0;
  for (; i + 4 <= length; i += 4) {
    const o = <usize> i << 2;
    const g = v128.load(grad + o);
    const mi = f32x4.add(f32x4.mul(vb1, v128.load(m + o)), f32x4.mul(vc1, g));
    const vi = f32x4.add(f32x4.mul(vb2, v128.load(v + o)), f32x4.mul(f32x4.mul(vc2, g), g));
    v128.store(m + o, mi);
    v128.store(v + o, vi);
    const mHat = f32x4.div(mi, vcorr1);
    const vHat = f32x4.div(vi, vcorr2);
    let p = v128.load(param + o);
    p = f32x4.sub(p, f32x4.mul(vdecay, p));
    p = f32x4.sub(p, f32x4.div(f32x4.mul(vlr, mHat), f32x4.add(f32x4.sqrt(vHat), veps)));
    v128.store(param + o, p);
  }
  for (; i < length; i++) {
    const o = <usize> i << 2;
    const g = load<f32>(grad + o);
    const mi = beta1 * load<f32>(m + o) + oneMinusBeta1 * g;
    const vi = beta2 * load<f32>(v + o) + oneMinusBeta2 * g * g;
    store<f32>(m + o, mi);
    store<f32>(v + o, vi);
    let p = load<f32>(param + o);
    p = p - decay * p;
    p = p - lr * (mi / correction1) / (Mathf.sqrt(vi / correction2) + eps);
    store<f32>(param + o, p);
  }
}

// ---------------------------------------------------------------------------
// Causal self-attention, one (batch, head) pair at a time, through `gemm`.
//
// For one head, Q, K and V are `[T, D]` matrices inside `qkv` `[B, T, 3C]`
// with row stride 3C, and the output is a `[T, D]` matrix inside `y`
// `[B, T, C]` with row stride C. The scores matrix P `[T, T]` is lower
// triangular, so the products run over blocks of ROW_BLOCK query rows and
// stop at the diagonal. The block of rows [t0, t0 + rows) needs keys
// [0, t0 + rows) only, so the forward pass costs about T² · D · (1 + ROW_BLOCK / T)
// multiply-adds per head instead of 2 T² · D.

const ROW_BLOCK = 48;

/**
 * Computes forward attention for the heads `[pairStart, pairEnd)` of the flattened
 * (batch, head) index `b · heads + h`. Writes `probs` `[B, H, T, T]` (zero
 * above the diagonal) and the head's columns of `y`.
 */
export function attentionForward(
  qkv: usize,
  y: usize,
  probs: usize,
  seqLen: i32,
  heads: i32,
  headSize: i32,
  pairStart: i32,
  pairEnd: i32,
  scratch: usize,
): void {
  const T = seqLen;
  const D = headSize;
  const C = heads * D;
  const scale = <f32> (1 / Math.sqrt(<f64> D));

  for (let pair = pairStart; pair < pairEnd; pair++) {
    const b = pair / heads;
    const h = pair % heads;
    const q = qkv + ((<usize> b * T * 3 * C + <usize> h * D) << 2);
    const k = q + (<usize> C << 2);
    const v = q + (<usize> (2 * C) << 2);
    const out = y + ((<usize> b * T * C + <usize> h * D) << 2);
    const p = probs + ((<usize> pair * T * T) << 2);

    for (let t0 = 0; t0 < T; t0 += ROW_BLOCK) {
      const rows = min(ROW_BLOCK, T - t0);
      const keys = t0 + rows;
      const pBlock = p + ((<usize> t0 * T) << 2);

      // Scores S = Q Kᵀ for these rows and keys [0, keys).
      gemm(
        false,
        true,
        rows,
        keys,
        D,
        q + ((<usize> t0 * 3 * C) << 2),
        3 * C,
        k,
        3 * C,
        pBlock,
        T,
        false,
        scratch,
      );

      // Causal softmax of each row, scaled by 1/√D; zero for keys after t.
      for (let i = 0; i < rows; i++) {
        const t = t0 + i;
        const row = pBlock + ((<usize> i * T) << 2);
        rowScale(row, t + 1, scale);
        const sum = rowExp(row, row, t + 1, rowMax(row, t + 1));
        rowScale(row, t + 1, 1 / sum);
        memory.fill(row + (<usize> (t + 1) << 2), 0, <usize> (T - t - 1) << 2);
      }

      // Y = P V over the same keys.
      gemm(
        false,
        false,
        rows,
        D,
        keys,
        pBlock,
        T,
        v,
        3 * C,
        out + ((<usize> t0 * C) << 2),
        C,
        false,
        scratch,
      );
    }
  }
}

/**
 * Adds the attention gradients of the heads `[pairStart, pairEnd)` into `dqkv`.
 * Needs `scratchBytes(seqLen)` of scratch for the `[T, T]` score gradient.
 *
 * With dP = dY Vᵀ and dS = P ⊙ (dP − rowsum(dP ⊙ P)) / √D:
 * dQ += dS K, dK += dSᵀ Q, dV += Pᵀ dY.
 */
export function attentionBackward(
  dy: usize,
  qkv: usize,
  probs: usize,
  dqkv: usize,
  seqLen: i32,
  heads: i32,
  headSize: i32,
  pairStart: i32,
  pairEnd: i32,
  scratch: usize,
): void {
  const T = seqLen;
  const D = headSize;
  const C = heads * D;
  const ld3 = 3 * C;
  const scale = <f32> (1 / Math.sqrt(<f64> D));
  const dScores = scratch + GEMM_SCRATCH_BYTES;

  for (let pair = pairStart; pair < pairEnd; pair++) {
    const b = pair / heads;
    const h = pair % heads;
    const headOffset = (<usize> b * T * ld3 + <usize> h * D) << 2;
    const q = qkv + headOffset;
    const k = q + (<usize> C << 2);
    const v = q + (<usize> (2 * C) << 2);
    const dq = dqkv + headOffset;
    const dk = dq + (<usize> C << 2);
    const dv = dq + (<usize> (2 * C) << 2);
    const dOut = dy + ((<usize> b * T * C + <usize> h * D) << 2);
    const p = probs + ((<usize> pair * T * T) << 2);

    // Query rows: dS for rows [t0, t0 + rows), keys [0, t0 + rows), then dQ.
    for (let t0 = 0; t0 < T; t0 += ROW_BLOCK) {
      const rows = min(ROW_BLOCK, T - t0);
      const keys = t0 + rows;
      const dsBlock = dScores + ((<usize> t0 * T) << 2);
      gemm(
        false,
        true,
        rows,
        keys,
        D,
        dOut + ((<usize> t0 * C) << 2),
        C,
        v,
        ld3,
        dsBlock,
        T,
        false,
        scratch,
      );

      for (let i = 0; i < rows; i++) {
        const t = t0 + i;
        const dsRow = dsBlock + ((<usize> i * T) << 2);
        const pRow = p + ((<usize> t * T) << 2);
        const dot = rowDot(dsRow, pRow, t + 1);
        const vdot = f32x4.splat(dot);
        const vscale = f32x4.splat(scale);
        let s = 0;
        for (; s + 4 <= t + 1; s += 4) {
          const o = <usize> s << 2;
          const ds = f32x4.mul(
            f32x4.mul(v128.load(pRow + o), f32x4.sub(v128.load(dsRow + o), vdot)),
            vscale,
          );
          v128.store(dsRow + o, ds);
        }
        for (; s <= t; s++) {
          const o = <usize> s << 2;
          store<f32>(dsRow + o, load<f32>(pRow + o) * (load<f32>(dsRow + o) - dot) * scale);
        }
        // Keys after t within this block are read by the dK product below.
        memory.fill(dsRow + (<usize> (t + 1) << 2), 0, <usize> (keys - t - 1) << 2);
      }

      gemm(
        false,
        false,
        rows,
        D,
        keys,
        dsBlock,
        T,
        k,
        ld3,
        dq + ((<usize> t0 * ld3) << 2),
        ld3,
        true,
        scratch,
      );
    }

    // Key rows [s0, s0 + rows): only queries t ≥ s0 attend to them.
    for (let s0 = 0; s0 < T; s0 += ROW_BLOCK) {
      const rows = min(ROW_BLOCK, T - s0);
      const queries = T - s0;
      const corner = (<usize> s0 * T + s0) << 2;
      gemm(
        true,
        false,
        rows,
        D,
        queries,
        dScores + corner,
        T,
        q + ((<usize> s0 * ld3) << 2),
        ld3,
        dk + ((<usize> s0 * ld3) << 2),
        ld3,
        true,
        scratch,
      );
      gemm(
        true,
        false,
        rows,
        D,
        queries,
        p + corner,
        T,
        dOut + ((<usize> s0 * C) << 2),
        C,
        dv + ((<usize> s0 * ld3) << 2),
        ld3,
        true,
        scratch,
      );
    }
  }
}
