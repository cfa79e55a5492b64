/**
 * The worker threads of the `wasm` backend and the control block they share
 * with the main thread.
 *
 * A kernel call is cut into chunks, each an argument list for one call of a
 * kernel export. The main thread writes the chunks into the control block
 * and wakes the workers. Then every thread, the main thread included, claims
 * chunks by incrementing a shared counter and runs them until none is left.
 * Finally the main thread waits until every claimed chunk is done, so a
 * kernel call returns only when its whole result is written. A worker that
 * wakes late (on a busy machine) finds fewer chunks or none to claim, so it
 * delays the call by at most the time of one chunk. Waiting is a short spin on
 * `Atomics.load`, then `Atomics.wait`. A worker preempted in the middle of a
 * chunk makes the main thread wait for it, so after such a stall the main
 * thread runs the next calls alone for a while (see `WorkerPool.run`).
 *
 * The workers are `node:worker_threads` workers, not web `Worker`s, because
 * only the former can be `unref()`ed: in Deno 2.9.6 a live web `Worker`
 * (idle or blocked in `Atomics.wait`) keeps the process from exiting, even
 * after `terminate()` while it is blocked.
 *
 * @module
 */

import { Worker } from "node:worker_threads";

/** Exports of the kernel module that workers can run, by index. */
export const KERNEL_NAMES = [
  "sgemm",
  "softmaxForward",
  "softmaxBackward",
  "logSoftmaxForward",
  "logSoftmaxBackward",
  "crossEntropyForward",
  "crossEntropyBackward",
  "layerNormForward",
  "layerNormBackward",
  "add",
  "columnSum",
  "geluForward",
  "geluBackward",
  "adamwUpdate",
  "attentionForward",
  "attentionBackward",
] as const;

/** Name of a kernel the pool can run. */
export type KernelName = typeof KERNEL_NAMES[number];

/**
 * Position of the `scratch` argument of each kernel in KERNEL_NAMES, or -1.
 * Each thread puts its own scratch block there, whichever chunk it runs.
 */
export const SCRATCH_ARGUMENT: readonly number[] = KERNEL_NAMES.map((name) => {
  if (name === "sgemm") return 16;
  if (name === "attentionForward") return 8;
  if (name === "attentionBackward") return 9;
  return -1;
});

/**
 * Int32 fields of the control block, as indices. The three counters that
 * threads contend for sit on separate 64-byte cache lines.
 */
export const FIELD = {
  /** Sequence number of the latest call, incremented by the main thread to wake the workers. */
  sequence: 0,
  /** Index of the next chunk to claim. CLOSED between calls. */
  next: 16,
  /** Number of chunks finished in the current call. */
  done: 32,
  /** Index into KERNEL_NAMES, or STOP. */
  kernel: 48,
  /** Number of chunks in the current call. */
  chunks: 49,
  /** 1 once a chunk on a worker has thrown; the first such worker writes the message. */
  failed: 50,
  /** Byte length of the UTF-8 error message. */
  messageLength: 51,
} as const;
/** Value of `next` between calls: above any chunk count, so late claims find nothing. */
export const CLOSED: number = 1 << 30;
/** Kernel index that makes the workers leave their loops and exit. */
export const STOP: number = -1;
/** Most arguments of any kernel (sgemm has 17). */
export const MAX_ARGS = 24;
/** Most chunks of one call. */
export const MAX_CHUNKS = 64;
/** Byte offset of the chunk arguments, `MAX_CHUNKS × MAX_ARGS` float64s. */
export const ARGS_OFFSET = 256;
/** Most threads, the main thread included. */
export const MAX_THREADS = 64;
/** Byte offset of each thread's scratch address, `MAX_THREADS` float64s, index 0 for the main thread. */
export const SCRATCH_OFFSET: number = ARGS_OFFSET + MAX_CHUNKS * MAX_ARGS * 8;
/** Byte offset of the UTF-8 error message of a failed chunk. */
export const MESSAGE_OFFSET: number = SCRATCH_OFFSET + MAX_THREADS * 8;
/** Capacity of the error message in bytes; longer messages are cut. */
export const MESSAGE_BYTES = 1024;
const CONTROL_BYTES = MESSAGE_OFFSET + MESSAGE_BYTES;
/** Iterations of `Atomics.load` before the main thread, waiting for the last chunks, blocks in `Atomics.wait`. */
export const SPIN_LIMIT = 20000;
/**
 * Iterations of `Atomics.load` before an idle worker blocks in `Atomics.wait`,
 * a few microseconds. A spinning worker occupies a core, so when another
 * process competes for the cores, long spins take time from the main thread.
 * A worker that blocks and wakes late only claims fewer chunks. On a 2-core
 * AMD EPYC with a busy-looping process beside it, the default training step
 * on 2 threads took a median of about 54 ms with this limit and about 70 ms
 * with SPIN_LIMIT. On the quiet machine both took about 40 ms.
 */
export const WORKER_SPIN_LIMIT = 2000;
/**
 * Milliseconds the main thread may wait for the workers' last chunks before
 * it counts the call as stalled. The largest chunk of a default training step
 * takes a few hundred microseconds (measured on this project's 2-core test
 * machine), while a worker whose core goes to another process loses
 * milliseconds.
 */
const STALL_MS = 0.3;
/** Milliseconds that the pool runs calls on the main thread alone after a first stall. */
const SOLO_MIN_MS = 5;
/** Maximum milliseconds of running alone, reached while stalls repeat. */
const SOLO_MAX_MS = 200;

/**
 * The module each worker runs.
 *
 * NOTE: `deno compile` must bundle it (`--include lib/wasm_worker.ts`).
 * Starting workers from a remote copy of this package (a `jsr:` import) is
 * untested. `threads: 1` starts no worker in either case.
 */
export const WORKER_URL = new URL("../wasm_worker.ts", import.meta.url);

/**
 * Returns whether this process may start workers from WORKER_URL: a local
 * worker module needs read permission on its file.
 */
export function canStartWorkers(): boolean {
  if (WORKER_URL.protocol !== "file:") return true;
  const path = decodeURIComponent(WORKER_URL.pathname);
  return Deno.permissions.querySync({ name: "read", path }).state === "granted";
}

/** Start-up data of one worker, sent by the main thread. */
export interface WorkerSetup {
  /** The compiled kernels. */
  module: WebAssembly.Module;
  /** The backend's shared memory. */
  memory: WebAssembly.Memory;
  /** The control block, with the layout of FIELD, ARGS_OFFSET, SCRATCH_OFFSET and MESSAGE_OFFSET. */
  control: SharedArrayBuffer;
  /** Index of this thread in the scratch table, from 1 (0 is the main thread). */
  thread: number;
}

/**
 * Claims and runs chunks of the current call until none is left, on the
 * workers and on the main thread alike. A chunk that throws is passed to
 * `onError` before it counts as done, and the others still run.
 */
export function runChunks(
  control: Int32Array,
  args: Float64Array,
  kernels: readonly ((...args: number[]) => void)[],
  argv: number[],
  scratch: number,
  onError: (error: unknown) => void,
): void {
  for (;;) {
    const chunk = Atomics.add(control, FIELD.next, 1);
    // The count and kernel are read after the claim: a successful claim
    // happens after the main thread wrote them for this call.
    if (chunk >= Atomics.load(control, FIELD.chunks)) return;
    const kernel = Atomics.load(control, FIELD.kernel);
    const base = chunk * MAX_ARGS;
    for (let i = 0; i < MAX_ARGS; i++) argv[i] = args[base + i];
    if (SCRATCH_ARGUMENT[kernel] >= 0) argv[SCRATCH_ARGUMENT[kernel]] = scratch;
    try {
      kernels[kernel].apply(null, argv);
    } catch (error) {
      onError(error);
    }
    Atomics.add(control, FIELD.done, 1);
    Atomics.notify(control, FIELD.done);
  }
}

/** A fixed set of worker threads that run kernel exports on shared memory. */
export class WorkerPool {
  readonly #workers: Worker[];
  readonly #control: Int32Array;
  readonly #args: Float64Array;
  readonly #message: Uint8Array;
  readonly #scratch: Float64Array;
  readonly #argv: number[] = new Array(MAX_ARGS).fill(0);
  /** Time (`performance.now()`) until which calls run on the main thread alone. */
  #soloUntil = 0;
  /** Length of the next solo period; doubles with each stall in a row. */
  #soloMs = SOLO_MIN_MS;

  private constructor(workers: Worker[], control: SharedArrayBuffer) {
    this.#workers = workers;
    this.#control = new Int32Array(control);
    this.#args = new Float64Array(control, ARGS_OFFSET, MAX_CHUNKS * MAX_ARGS);
    this.#message = new Uint8Array(control, MESSAGE_OFFSET, MESSAGE_BYTES);
    this.#scratch = new Float64Array(control, SCRATCH_OFFSET, MAX_THREADS);
  }

  /** Starts `count` workers on `memory` and resolves once each has instantiated the module. */
  static async start(
    count: number,
    module: WebAssembly.Module,
    memory: WebAssembly.Memory,
  ): Promise<WorkerPool> {
    if (count + 1 > MAX_THREADS) {
      throw new RangeError(`${count + 1} threads requested; at most ${MAX_THREADS} are supported`);
    }
    const control = new SharedArrayBuffer(CONTROL_BYTES);
    Atomics.store(new Int32Array(control), FIELD.next, CLOSED);
    const workers: Worker[] = [];
    const ready: Promise<void>[] = [];
    for (let thread = 1; thread <= count; thread++) {
      const setup: WorkerSetup = { module, memory, control, thread };
      const worker = new Worker(WORKER_URL, { workerData: setup });
      workers.push(worker);
      ready.push(
        new Promise<void>((resolve, reject) => {
          worker.once("message", () => resolve());
          worker.once("error", (error) => reject(error));
        }),
      );
    }
    try {
      await Promise.all(ready);
    } catch (error) {
      await Promise.all(workers.map((worker) => worker.terminate()));
      throw new Error(`wasm backend: a worker thread failed to start: ${error}`, { cause: error });
    }
    // An idle worker must not keep the process alive.
    for (const worker of workers) worker.unref();
    return new WorkerPool(workers, control);
  }

  /** Number of worker threads. */
  get size(): number {
    return this.#workers.length;
  }

  /** Sets the scratch block of thread `thread` (0 for the main thread) for later calls. */
  setScratch(thread: number, address: number): void {
    this.#scratch[thread] = address;
  }

  /**
   * Runs `kernels[kernel]` once per argument list in `chunks`, on the workers
   * and on this thread, and returns when all are done. Throws the first error
   * of any chunk after all are done.
   *
   * A call in which this thread waits more than STALL_MS (and longer than it
   * worked) for the workers' last chunks counts as stalled: a worker was most
   * likely preempted in the middle of a chunk. The calls of the next
   * SOLO_MIN_MS, doubling up to SOLO_MAX_MS while stalls repeat, then run on
   * this thread alone. So on a machine busy with other work the pool degrades
   * toward the speed of one thread instead of waiting for a core. The chunks
   * are the same either way, so the results are too.
   */
  run(
    kernel: number,
    chunks: readonly number[][],
    kernels: readonly ((...args: number[]) => void)[],
  ): void {
    if (chunks.length > MAX_CHUNKS) {
      throw new RangeError(`a call has ${chunks.length} chunks; at most ${MAX_CHUNKS} fit`);
    }
    for (const chunk of chunks) {
      if (chunk.length > MAX_ARGS) {
        throw new RangeError(`a chunk has ${chunk.length} arguments; at most ${MAX_ARGS} fit`);
      }
    }
    const started = performance.now();
    if (started < this.#soloUntil) {
      this.#runAlone(kernel, chunks, kernels);
      return;
    }

    const control = this.#control;
    for (let c = 0; c < chunks.length; c++) {
      const chunk = chunks[c];
      const base = c * MAX_ARGS;
      for (let i = 0; i < MAX_ARGS; i++) this.#args[base + i] = i < chunk.length ? chunk[i] : 0;
    }
    Atomics.store(control, FIELD.kernel, kernel);
    Atomics.store(control, FIELD.chunks, chunks.length);
    Atomics.store(control, FIELD.failed, 0);
    Atomics.store(control, FIELD.done, 0);
    Atomics.store(control, FIELD.next, 0);
    Atomics.add(control, FIELD.sequence, 1);
    Atomics.notify(control, FIELD.sequence);

    let failure: unknown;
    const scratch = this.#scratch[0];
    runChunks(control, this.#args, kernels, this.#argv, scratch, (error) => failure ??= error);

    const worked = performance.now();
    let spins = 0;
    for (;;) {
      const done = Atomics.load(control, FIELD.done);
      if (done === chunks.length) break;
      if (++spins < SPIN_LIMIT) continue;
      Atomics.wait(control, FIELD.done, done);
    }
    Atomics.store(control, FIELD.next, CLOSED);
    const finished = performance.now();
    const waited = finished - worked;
    if (waited > STALL_MS && waited > worked - started) {
      this.#soloUntil = finished + this.#soloMs;
      this.#soloMs = Math.min(SOLO_MAX_MS, 2 * this.#soloMs);
    } else {
      this.#soloMs = SOLO_MIN_MS;
    }

    if (failure !== undefined) throw failure;
    if (Atomics.load(control, FIELD.failed) !== 0) {
      const length = Atomics.load(control, FIELD.messageLength);
      const message = new TextDecoder().decode(this.#message.slice(0, length));
      throw new Error(`a worker thread failed in ${KERNEL_NAMES[kernel]}: ${message}`);
    }
  }

  /** Runs every chunk on this thread, with its scratch block; throws the first error after all ran. */
  #runAlone(
    kernel: number,
    chunks: readonly number[][],
    kernels: readonly ((...args: number[]) => void)[],
  ): void {
    const argv = this.#argv;
    const scratchArgument = SCRATCH_ARGUMENT[kernel];
    let failure: unknown;
    for (const chunk of chunks) {
      for (let i = 0; i < MAX_ARGS; i++) argv[i] = i < chunk.length ? chunk[i] : 0;
      if (scratchArgument >= 0) argv[scratchArgument] = this.#scratch[0];
      try {
        kernels[kernel].apply(null, argv);
      } catch (error) {
        failure ??= error;
      }
    }
    if (failure !== undefined) throw failure;
  }

  /** Stops every worker and resolves when all have exited. The pool is unusable afterwards. */
  async close(): Promise<void> {
    Atomics.store(this.#control, FIELD.kernel, STOP);
    Atomics.add(this.#control, FIELD.sequence, 1);
    Atomics.notify(this.#control, FIELD.sequence);
    const workers = this.#workers.splice(0);
    await Promise.all(workers.map((worker) => worker.terminate()));
  }
}
