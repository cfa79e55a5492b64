/**
 * The `wasm` backend: the kernels of `lib/wasm/kernels.as.ts`, compiled to
 * WebAssembly with 128-bit SIMD, on one shared `WebAssembly.Memory`.
 *
 * - `alloc` hands out `Float32Array` views into that memory from a
 *   size-class allocator (`lib/wasm/allocator.ts`). Kernels read such views
 *   in place. Any other `Float32Array` works too: it is copied into the
 *   memory before the kernel and its output copied back after, which is
 *   correct but slower.
 * - With `threads > 1`, worker threads (`lib/wasm/pool.ts`) instantiate the
 *   same module on the same memory. A large kernel call is cut into chunks
 *   (rows, columns, batch entries or heads), which the main thread and the
 *   workers claim until none is left. Every kernel returns only when its
 *   result is complete. `threads: 1` starts no worker.
 * - The module built with relaxed SIMD (fused multiply-add) is used where
 *   the runtime validates it, the plain SIMD build otherwise.
 *
 * Every kernel of the `Backend` interface runs in WebAssembly; none falls
 * back to the `js` reference.
 *
 * @module
 */

import type { AdamWStep, AttentionShape, Backend, MatmulOptions } from "./backend.ts";

export type { AdamWStep, AttentionShape, Backend, MatmulOptions } from "./backend.ts";
import { MAX_PAGES, SharedMemoryAllocator, sizeClass } from "./wasm/allocator.ts";
import { relaxedSimdBase64, simdBase64 } from "./wasm/kernels_wasm.ts";
import {
  canStartWorkers,
  KERNEL_NAMES,
  type KernelName,
  MAX_CHUNKS,
  WORKER_URL,
  WorkerPool,
} from "./wasm/pool.ts";

/** Options of `createWasmBackend`. */
export interface WasmBackendOptions {
  /**
   * Threads that run kernels, the main thread included: 1 starts no worker.
   * Default: `navigator.hardwareConcurrency`, at most 8, or 1 (with a
   * warning) where the process lacks the read permission that starting a
   * worker needs.
   */
  threads?: number;
  /**
   * Whether to load the relaxed-SIMD build (fused multiply-add) where the
   * runtime supports it. Default true. `false` loads the plain SIMD build,
   * whose products round after each multiply, for comparison and testing.
   */
  relaxedSimd?: boolean;
}

/** The `wasm` backend, with the resources it holds. */
export interface WasmBackend extends Backend {
  /** Threads that run kernels now, the main thread included. 1 after `close()`. */
  readonly threads: number;
  /** Whether the relaxed-SIMD build (fused multiply-add) was loaded. */
  readonly relaxedSimd: boolean;
  /** The shared memory that `alloc` hands out views of. */
  readonly memory: WebAssembly.Memory;
  /** Bytes in blocks handed out by `alloc` and not yet freed (rounded up to the size class). */
  readonly bytesInUse: number;
  /** Returns whether `array` is a view of this backend's memory, so kernels read it without a copy. */
  owns(array: Float32Array): boolean;
  /**
   * Stops the worker threads. The backend stays usable on the main thread
   * alone. The workers do not keep a process alive, so calling this is
   * optional before exit.
   */
  close(): Promise<void>;
}

type Kernel = (...args: number[]) => void;

/** Default thread cap: beyond it the model's small matrices gain little. */
const MAX_DEFAULT_THREADS = 8;
/**
 * A matmul below this many multiply-adds runs on one thread. On a 2-core AMD
 * EPYC, 64 × 64 × 128 took 32 µs on one thread and 20 µs on two, while at
 * half that size two threads were slower.
 */
const PARALLEL_MIN_MACS = 1 << 19;
/**
 * Row and element-wise kernels below this many elements run on one thread.
 * Same machine: LayerNorm of 1024 × 64 gained nothing from a second thread,
 * GELU of 1024 × 256 did.
 */
const PARALLEL_MIN_ELEMENTS = 1 << 17;
/**
 * Maximum number of chunks per thread of a parallel call. Threads claim
 * chunks one at a time, so a thread that starts late or is preempted delays
 * the call by about one chunk at most, and more chunks make that delay
 * shorter. On a 2-core AMD EPYC, 4 gave the best default training
 * step with another process busy, and 2 was about 1 ms faster when idle.
 */
const CHUNKS_PER_THREAD = 4;
/**
 * Minimum rows (or columns) of C in one matmul chunk. Every chunk packs the
 * whole operand that it shares with the others, so the thinner the chunk,
 * the larger the share of its time spent packing.
 */
const GEMM_MIN_CHUNK = 48;
/** Rows and columns of the GEMM micro-kernel tile, so that chunks cut at tile edges. */
const GEMM_MR = 6;
const GEMM_NR = 8;

function decodeBase64(text: string): Uint8Array<ArrayBuffer> {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** Returns the relaxed-SIMD build where allowed and accepted by this runtime, the plain SIMD build otherwise. */
function loadModule(allowRelaxed: boolean): { module: WebAssembly.Module; relaxedSimd: boolean } {
  const relaxed = decodeBase64(relaxedSimdBase64);
  if (allowRelaxed && WebAssembly.validate(relaxed)) {
    return { module: new WebAssembly.Module(relaxed), relaxedSimd: true };
  }
  const plain = decodeBase64(simdBase64);
  if (!WebAssembly.validate(plain)) {
    throw new Error(
      "wasm backend: this runtime does not support WebAssembly SIMD (128-bit); use the js backend",
    );
  }
  return { module: new WebAssembly.Module(plain), relaxedSimd: false };
}

function checkCount(value: number, name: string): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(`invalid ${name} ${value}: expected a non-negative integer`);
  }
}

/** A foreign array copied into the memory for one kernel call. */
interface StagedArray {
  array: Float32Array | Int32Array;
  offset: number;
  length: number;
  output: boolean;
}

/**
 * Creates the `wasm` backend. Resolves once every worker thread has
 * instantiated the kernels.
 */
export async function createWasmBackend(options: WasmBackendOptions = {}): Promise<WasmBackend> {
  let threads = options.threads ??
    Math.min(MAX_DEFAULT_THREADS, Math.max(1, navigator.hardwareConcurrency ?? 1));
  if (!Number.isSafeInteger(threads) || threads < 1) {
    throw new RangeError(`invalid threads ${threads}: expected a positive integer`);
  }
  if (threads > 1 && !canStartWorkers()) {
    const reason = `worker threads need read access to ${WORKER_URL.pathname}`;
    if (options.threads !== undefined) {
      throw new Error(`wasm backend: ${reason}; run with --allow-read, or pass threads: 1`);
    }
    console.warn(`wasm backend: running on 1 thread, because ${reason} (--allow-read)`);
    threads = 1;
  }

  const { module, relaxedSimd } = loadModule(options.relaxedSimd ?? true);
  const memory = new WebAssembly.Memory({ initial: 64, maximum: MAX_PAGES, shared: true });
  const instance = new WebAssembly.Instance(module, { env: { memory } });
  const pool = threads > 1 ? await WorkerPool.start(threads - 1, module, memory) : undefined;
  return new WasmBackendImpl(instance, memory, relaxedSimd, pool);
}

class WasmBackendImpl implements WasmBackend {
  readonly name = "wasm";
  readonly relaxedSimd: boolean;
  readonly memory: WebAssembly.Memory;

  readonly #allocator: SharedMemoryAllocator;
  readonly #kernels: Record<KernelName, Kernel>;
  /** The same kernels, in the order of KERNEL_NAMES. */
  readonly #kernelList: Kernel[];
  readonly #scratchBytes: (seqLen: number) => number;
  readonly #zeroFill: (address: number, bytes: number) => void;
  #pool: WorkerPool | undefined;
  /** One scratch block per thread, index 0 for the main thread. */
  #scratch: number[] = [];
  #scratchSize = 0;
  readonly #staged: StagedArray[] = [];

  constructor(
    instance: WebAssembly.Instance,
    memory: WebAssembly.Memory,
    relaxedSimd: boolean,
    pool: WorkerPool | undefined,
  ) {
    this.memory = memory;
    this.relaxedSimd = relaxedSimd;
    const exports = instance.exports;
    // The module keeps a constant table at the bottom of the memory.
    (exports.initialize as () => void)();
    const reserved = (exports.reservedBytes as () => number)();
    this.#allocator = new SharedMemoryAllocator(memory, reserved);
    this.#kernels = Object.fromEntries(
      KERNEL_NAMES.map((name) => [name, exports[name] as Kernel]),
    ) as Record<KernelName, Kernel>;
    this.#kernelList = KERNEL_NAMES.map((name) => this.#kernels[name]);
    this.#scratchBytes = exports.scratchBytes as (seqLen: number) => number;
    this.#zeroFill = exports.zeroFill as (address: number, bytes: number) => void;
    this.#pool = pool;
    this.#ensureScratch(0);
  }

  get threads(): number {
    return 1 + (this.#pool?.size ?? 0);
  }

  get bytesInUse(): number {
    return this.#allocator.bytesInUse - sizeClass(this.#scratchSize) * this.#scratch.length;
  }

  owns(array: Float32Array): boolean {
    return this.#allocator.owns(array);
  }

  async close(): Promise<void> {
    const pool = this.#pool;
    this.#pool = undefined;
    await pool?.close();
  }

  // -------------------------------------------------------------------------
  // Memory

  alloc(length: number): Float32Array {
    checkCount(length, "length");
    const offset = this.#allocator.allocate(length * 4);
    // Not `view.fill(0)`: on a shared buffer that is about ten times slower.
    this.#zeroFill(offset, length * 4);
    return this.#allocator.view(offset, length);
  }

  allocUninitialized(length: number): Float32Array {
    checkCount(length, "length");
    return this.#allocator.view(this.#allocator.allocate(length * 4), length);
  }

  free(buffer: Float32Array): void {
    // Arrays from elsewhere belong to the garbage collector, as in the js backend.
    if (!this.#allocator.owns(buffer)) return;
    this.#allocator.release(buffer.byteOffset);
  }

  /** Makes every thread's scratch block at least `scratchBytes(seqLen)` long. */
  #ensureScratch(seqLen: number): void {
    const bytes = this.#scratchBytes(seqLen);
    if (bytes <= this.#scratchSize && this.#scratch.length === this.threads) return;
    for (const offset of this.#scratch) this.#allocator.release(offset);
    const size = Math.max(bytes, this.#scratchSize);
    this.#scratch = Array.from({ length: this.threads }, () => this.#allocator.allocate(size));
    this.#scratchSize = size;
    this.#scratch.forEach((address, thread) => this.#pool?.setScratch(thread, address));
  }

  /**
   * Returns the byte address of `array` for a kernel that reads (and, with
   * `output`, writes) its first `length` floats. Copies an array from
   * outside the memory into a temporary block, released by `#release`.
   */
  #pointer(
    array: Float32Array | Int32Array,
    length: number,
    name: string,
    output: boolean,
  ): number {
    if (array.length < length) {
      throw new RangeError(
        `${name} has ${array.length} elements, but the kernel needs at least ${length}`,
      );
    }
    if (this.#allocator.owns(array)) return array.byteOffset;

    for (const staged of this.#staged) {
      if (staged.array === array && staged.length >= length) {
        staged.output ||= output;
        return staged.offset;
      }
    }
    const offset = this.#allocator.allocate(length * 4);
    this.#stagedView(array, offset, length).set(array.subarray(0, length));
    this.#staged.push({ array, offset, length, output });
    return offset;
  }

  /** Returns a view of `length` elements at byte `offset`, of the element type of `like`. */
  #stagedView(like: Float32Array | Int32Array, offset: number, length: number) {
    return like instanceof Int32Array
      ? new Int32Array(this.memory.buffer, offset, length)
      : this.#allocator.view(offset, length);
  }

  /** Copies the outputs of staged arrays back and releases their blocks. */
  #release(): void {
    if (this.#staged.length === 0) return;
    for (const staged of this.#staged) {
      if (staged.output) {
        staged.array.set(this.#stagedView(staged.array, staged.offset, staged.length));
      }
      this.#allocator.release(staged.offset);
    }
    this.#staged.length = 0;
  }

  /** Drops staged arrays without copying back, after a kernel failed. */
  #discardStaged(): void {
    for (const staged of this.#staged) this.#allocator.release(staged.offset);
    this.#staged.length = 0;
  }

  // -------------------------------------------------------------------------
  // Thread dispatch

  /**
   * Returns how many chunks to cut `work` units into: 1 below `minWork` or
   * without workers, else up to CHUNKS_PER_THREAD per thread, each at least
   * `minWork / 2`.
   */
  #chunksFor(work: number, minWork: number): number {
    if (this.#pool === undefined || work < minWork) return 1;
    const maxParts = Math.min(MAX_CHUNKS, this.threads * CHUNKS_PER_THREAD);
    return Math.max(1, Math.min(maxParts, Math.floor(work / (minWork / 2))));
  }

  /**
   * Returns how many parts to cut `size` rows or columns of a matmul into.
   * The count is a multiple of the thread count, so each thread gets an equal
   * share, and parts keep at least GEMM_MIN_CHUNK rows where the size allows
   * two or more.
   */
  #evenParts(size: number): number {
    const fit = Math.floor(size / GEMM_MIN_CHUNK);
    return Math.max(this.threads, fit - fit % this.threads);
  }

  /**
   * Runs `kernel` once per argument list in `chunks` and returns when all are
   * done: on the calling thread alone for one chunk, else on every thread.
   */
  #runChunks(kernel: KernelName, chunks: number[][]): void {
    if (chunks.length === 1 || this.#pool === undefined) {
      const fn = this.#kernels[kernel];
      for (const chunk of chunks) fn(...chunk);
      return;
    }
    this.#pool.run(KERNEL_NAMES.indexOf(kernel), chunks, this.#kernelList);
  }

  /**
   * Runs a kernel whose work splits along one axis of `units` units (rows or
   * elements). `unitBytes[i]` is how far argument i moves per unit, and 0 or
   * a missing entry marks an argument that all parts share. `countArg` is the
   * argument that contains the number of units.
   */
  #runSplit(
    kernel: KernelName,
    args: number[],
    units: number,
    unitElements: number,
    unitBytes: readonly number[],
    countArg: number,
  ): void {
    const parts = this.#chunksFor(units * unitElements, PARALLEL_MIN_ELEMENTS);
    if (parts === 1) {
      this.#kernels[kernel](...args);
      return;
    }
    // Cut at multiples of 4 units so each part starts on a 16-byte boundary.
    const step = Math.ceil(units / parts / 4) * 4;
    const jobs: number[][] = [];
    for (let start = 0; start < units; start += step) {
      const job = args.map((value, i) => value + (unitBytes[i] ?? 0) * start);
      job[countArg] = Math.min(step, units - start);
      jobs.push(job);
    }
    this.#runChunks(kernel, jobs);
  }

  // -------------------------------------------------------------------------
  // Kernels

  matmul(a: Float32Array, b: Float32Array, c: Float32Array, options: MatmulOptions): void {
    const { m, n, k } = options;
    const transA = options.transA ?? false;
    const transB = options.transB ?? false;
    const accumulate = options.accumulate ?? false;
    const batch = options.batch ?? 1;
    const strideA = options.strideA ?? m * k;
    const strideB = options.strideB ?? k * n;
    const strideC = options.strideC ?? m * n;
    checkCount(m, "m");
    checkCount(n, "n");
    checkCount(k, "k");
    checkCount(batch, "batch");
    checkCount(strideA, "strideA");
    checkCount(strideB, "strideB");
    checkCount(strideC, "strideC");
    if (batch === 0 || m === 0 || n === 0) return;

    const extent = (stride: number, size: number) => size === 0 ? 0 : (batch - 1) * stride + size;
    try {
      const pa = this.#pointer(a, extent(strideA, m * k), "matmul A", false);
      const pb = this.#pointer(b, extent(strideB, k * n), "matmul B", false);
      const pc = this.#pointer(c, extent(strideC, m * n), "matmul C", true);
      this.#matmulPointers(pa, pb, pc, m, n, k, transA, transB, accumulate, batch, [
        strideA,
        strideB,
        strideC,
      ]);
    } catch (error) {
      this.#discardStaged();
      throw error;
    }
    this.#release();
  }

  #matmulPointers(
    pa: number,
    pb: number,
    pc: number,
    m: number,
    n: number,
    k: number,
    transA: boolean,
    transB: boolean,
    accumulate: boolean,
    batch: number,
    strides: [number, number, number],
  ): void {
    const [strideA, strideB, strideC] = strides;
    const lda = transA ? m : k;
    const ldb = transB ? k : n;
    const job = (
      a: number,
      b: number,
      c: number,
      rows: number,
      cols: number,
      count: number,
    ) => [
      transA ? 1 : 0,
      transB ? 1 : 0,
      rows,
      cols,
      k,
      a,
      lda,
      b,
      ldb,
      c,
      n,
      accumulate ? 1 : 0,
      count,
      strideA,
      strideB,
      strideC,
      // Replaced by each thread's own scratch block when the call runs in chunks.
      this.#scratch[0],
    ];

    // Threads may only split C where their parts cannot overlap: separate
    // matrices of the batch, or rows or columns of a C shared by the batch.
    const disjoint = strideC === 0 || strideC >= m * n;
    let parts = disjoint ? this.#chunksFor(batch * m * n * k, PARALLEL_MIN_MACS) : 1;
    const jobs: number[][] = [];
    if (parts > 1 && batch >= parts && strideC !== 0) {
      const step = Math.ceil(batch / parts);
      for (let p = 0; p < batch; p += step) {
        const count = Math.min(step, batch - p);
        const at = (base: number, stride: number) => base + p * stride * 4;
        jobs.push(
          job(at(pa, strideA), at(pb, strideB), at(pc, strideC), m, n, count),
        );
      }
    } else if (parts > 1 && m >= n) {
      parts = Math.min(parts, this.#evenParts(m));
      const step = Math.ceil(m / parts / GEMM_MR) * GEMM_MR;
      for (let i = 0; i < m; i += step) {
        const a = pa + i * (transA ? 1 : lda) * 4;
        jobs.push(job(a, pb, pc + i * n * 4, Math.min(step, m - i), n, batch));
      }
    } else if (parts > 1) {
      parts = Math.min(parts, this.#evenParts(n));
      const step = Math.ceil(n / parts / GEMM_NR) * GEMM_NR;
      for (let j = 0; j < n; j += step) {
        const b = pb + j * (transB ? ldb : 1) * 4;
        jobs.push(job(pa, b, pc + j * 4, m, Math.min(step, n - j), batch));
      }
    } else {
      jobs.push(job(pa, pb, pc, m, n, batch));
    }
    this.#runChunks("sgemm", jobs);
  }

  softmaxForward(x: Float32Array, y: Float32Array, rows: number, cols: number): void {
    this.#rowKernel("softmaxForward", [x, y], [false, true], rows, cols);
  }

  softmaxBackward(
    y: Float32Array,
    dy: Float32Array,
    dx: Float32Array,
    rows: number,
    cols: number,
  ): void {
    this.#rowKernel("softmaxBackward", [y, dy, dx], [false, false, true], rows, cols);
  }

  logSoftmaxForward(x: Float32Array, y: Float32Array, rows: number, cols: number): void {
    this.#rowKernel("logSoftmaxForward", [x, y], [false, true], rows, cols);
  }

  logSoftmaxBackward(
    y: Float32Array,
    dy: Float32Array,
    dx: Float32Array,
    rows: number,
    cols: number,
  ): void {
    this.#rowKernel("logSoftmaxBackward", [y, dy, dx], [false, false, true], rows, cols);
  }

  crossEntropyForward(
    logits: Float32Array,
    targets: Int32Array,
    probs: Float32Array,
    losses: Float32Array,
    rows: number,
    cols: number,
  ): void {
    checkCount(rows, "rows");
    checkCount(cols, "cols");
    const size = rows * cols;
    try {
      const args = [
        this.#pointer(logits, size, "crossEntropyForward logits", false),
        this.#pointer(targets, rows, "crossEntropyForward targets", false),
        this.#pointer(probs, size, "crossEntropyForward probs", true),
        this.#pointer(losses, rows, "crossEntropyForward losses", true),
        rows,
        cols,
      ];
      const rowBytes = cols * 4;
      this.#runSplit("crossEntropyForward", args, rows, cols, [rowBytes, 4, rowBytes, 4], 4);
    } catch (error) {
      this.#discardStaged();
      throw error;
    }
    this.#release();
  }

  crossEntropyBackward(
    probs: Float32Array,
    targets: Int32Array,
    dlogits: Float32Array,
    rows: number,
    cols: number,
    scale: number,
  ): void {
    checkCount(rows, "rows");
    checkCount(cols, "cols");
    const size = rows * cols;
    try {
      const args = [
        this.#pointer(probs, size, "crossEntropyBackward probs", false),
        this.#pointer(targets, rows, "crossEntropyBackward targets", false),
        this.#pointer(dlogits, size, "crossEntropyBackward dlogits", true),
        rows,
        cols,
        scale,
      ];
      const rowBytes = cols * 4;
      this.#runSplit("crossEntropyBackward", args, rows, cols, [rowBytes, 4, rowBytes], 3);
    } catch (error) {
      this.#discardStaged();
      throw error;
    }
    this.#release();
  }

  /** Runs a kernel whose arguments are `rows × cols` arrays, then `rows` and `cols`. */
  #rowKernel(
    kernel: KernelName,
    arrays: Float32Array[],
    outputs: boolean[],
    rows: number,
    cols: number,
  ): void {
    checkCount(rows, "rows");
    checkCount(cols, "cols");
    const size = rows * cols;
    try {
      const pointers = arrays.map((array, i) =>
        this.#pointer(array, size, `${kernel} argument ${i + 1}`, outputs[i])
      );
      const unitBytes = [...pointers.map(() => cols * 4), 0, 0];
      this.#runSplit(kernel, [...pointers, rows, cols], rows, cols, unitBytes, pointers.length);
    } catch (error) {
      this.#discardStaged();
      throw error;
    }
    this.#release();
  }

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
  ): void {
    checkCount(rows, "rows");
    checkCount(cols, "cols");
    const size = rows * cols;
    try {
      const args = [
        this.#pointer(x, size, "layerNormForward x", false),
        this.#pointer(gamma, cols, "layerNormForward gamma", false),
        this.#pointer(beta, cols, "layerNormForward beta", false),
        this.#pointer(y, size, "layerNormForward y", true),
        this.#pointer(mean, rows, "layerNormForward mean", true),
        this.#pointer(rstd, rows, "layerNormForward rstd", true),
        rows,
        cols,
        eps,
      ];
      const rowBytes = cols * 4;
      this.#runSplit("layerNormForward", args, rows, cols, [rowBytes, 0, 0, rowBytes, 4, 4], 6);
    } catch (error) {
      this.#discardStaged();
      throw error;
    }
    this.#release();
  }

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
  ): void {
    checkCount(rows, "rows");
    checkCount(cols, "cols");
    const size = rows * cols;
    try {
      // One thread: every row adds into the same dgamma and dbeta.
      this.#kernels.layerNormBackward(
        this.#pointer(dy, size, "layerNormBackward dy", false),
        this.#pointer(x, size, "layerNormBackward x", false),
        this.#pointer(gamma, cols, "layerNormBackward gamma", false),
        this.#pointer(mean, rows, "layerNormBackward mean", false),
        this.#pointer(rstd, rows, "layerNormBackward rstd", false),
        this.#pointer(dx, size, "layerNormBackward dx", true),
        this.#pointer(dgamma, cols, "layerNormBackward dgamma", true),
        this.#pointer(dbeta, cols, "layerNormBackward dbeta", true),
        rows,
        cols,
      );
    } catch (error) {
      this.#discardStaged();
      throw error;
    }
    this.#release();
  }

  add(x: Float32Array, y: Float32Array, out: Float32Array, length: number): void {
    this.#elementwise("add", [x, y, out], [false, false, true], length);
  }

  columnSum(x: Float32Array, out: Float32Array, rows: number, cols: number): void {
    checkCount(rows, "rows");
    checkCount(cols, "cols");
    try {
      // One thread: the sums of a training step's bias gradients take tens of
      // microseconds, and threads that split the columns read every row each.
      this.#kernels.columnSum(
        this.#pointer(x, rows * cols, "columnSum x", false),
        this.#pointer(out, cols, "columnSum out", true),
        rows,
        cols,
        cols,
      );
    } catch (error) {
      this.#discardStaged();
      throw error;
    }
    this.#release();
  }

  geluForward(x: Float32Array, y: Float32Array, length: number): void {
    this.#elementwise("geluForward", [x, y], [false, true], length);
  }

  geluBackward(x: Float32Array, dy: Float32Array, dx: Float32Array, length: number): void {
    this.#elementwise("geluBackward", [x, dy, dx], [false, false, true], length);
  }

  /** Runs a kernel whose arguments are arrays of `length` floats, then `length`. */
  #elementwise(
    kernel: KernelName,
    arrays: Float32Array[],
    outputs: boolean[],
    length: number,
  ): void {
    checkCount(length, "length");
    try {
      const pointers = arrays.map((array, i) =>
        this.#pointer(array, length, `${kernel} argument ${i + 1}`, outputs[i])
      );
      const unitBytes = [...pointers.map(() => 4), 0];
      this.#runSplit(kernel, [...pointers, length], length, 1, unitBytes, pointers.length);
    } catch (error) {
      this.#discardStaged();
      throw error;
    }
    this.#release();
  }

  adamwUpdate(
    param: Float32Array,
    grad: Float32Array,
    m: Float32Array,
    v: Float32Array,
    hyper: AdamWStep,
  ): void {
    const { lr, beta1, beta2, eps, weightDecay, step } = hyper;
    const length = param.length;
    try {
      const args = [
        this.#pointer(param, length, "adamwUpdate param", true),
        this.#pointer(grad, length, "adamwUpdate grad", false),
        this.#pointer(m, length, "adamwUpdate m", true),
        this.#pointer(v, length, "adamwUpdate v", true),
        length,
        lr,
        beta1,
        1 - beta1,
        beta2,
        1 - beta2,
        eps,
        lr * weightDecay,
        1 - beta1 ** step,
        1 - beta2 ** step,
      ];
      const unitBytes = [4, 4, 4, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
      this.#runSplit("adamwUpdate", args, length, 1, unitBytes, 4);
    } catch (error) {
      this.#discardStaged();
      throw error;
    }
    this.#release();
  }

  attentionForward(
    qkv: Float32Array,
    y: Float32Array,
    probs: Float32Array,
    shape: AttentionShape,
  ): void {
    const { batch: B, seqLen: T, heads: H, headSize: D } = shape;
    this.#checkShape(shape);
    const C = H * D;
    try {
      const pq = this.#pointer(qkv, B * T * 3 * C, "attentionForward qkv", false);
      const py = this.#pointer(y, B * T * C, "attentionForward y", true);
      const pp = this.#pointer(probs, B * H * T * T, "attentionForward probs", true);
      this.#runAttention(B * H, T * T * D, (start, end, scratch) => [
        pq,
        py,
        pp,
        T,
        H,
        D,
        start,
        end,
        scratch,
      ], "attentionForward");
    } catch (error) {
      this.#discardStaged();
      throw error;
    }
    this.#release();
  }

  attentionBackward(
    dy: Float32Array,
    qkv: Float32Array,
    probs: Float32Array,
    dqkv: Float32Array,
    shape: AttentionShape,
  ): void {
    const { batch: B, seqLen: T, heads: H, headSize: D } = shape;
    this.#checkShape(shape);
    const C = H * D;
    this.#ensureScratch(T);
    try {
      const pdy = this.#pointer(dy, B * T * C, "attentionBackward dy", false);
      const pq = this.#pointer(qkv, B * T * 3 * C, "attentionBackward qkv", false);
      const pp = this.#pointer(probs, B * H * T * T, "attentionBackward probs", false);
      const pdq = this.#pointer(dqkv, B * T * 3 * C, "attentionBackward dqkv", true);
      this.#runAttention(B * H, 2 * T * T * D, (start, end, scratch) => [
        pdy,
        pq,
        pp,
        pdq,
        T,
        H,
        D,
        start,
        end,
        scratch,
      ], "attentionBackward");
    } catch (error) {
      this.#discardStaged();
      throw error;
    }
    this.#release();
  }

  #checkShape(shape: AttentionShape): void {
    checkCount(shape.batch, "batch");
    checkCount(shape.seqLen, "seqLen");
    checkCount(shape.heads, "heads");
    checkCount(shape.headSize, "headSize");
  }

  /** Splits the (batch, head) pairs `[0, pairs)` among the threads; `pairWork` is multiply-adds per pair. */
  #runAttention(
    pairs: number,
    pairWork: number,
    args: (start: number, end: number, scratch: number) => number[],
    kernel: KernelName,
  ): void {
    if (pairs === 0) return;
    const parts = Math.min(pairs, this.#chunksFor(pairs * pairWork, PARALLEL_MIN_MACS));
    const step = Math.ceil(pairs / parts);
    const jobs: number[][] = [];
    for (let start = 0; start < pairs; start += step) {
      jobs.push(args(start, Math.min(pairs, start + step), this.#scratch[0]));
    }
    this.#runChunks(kernel, jobs);
  }
}
