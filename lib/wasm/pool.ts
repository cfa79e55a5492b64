/**
 * The worker threads of the `wasm` backend and the control block they share
 * with the main thread.
 *
 * Each worker instantiates the kernel module on the backend's shared memory
 * and loops: wait for a job in its slot of the control block, call the
 * exported kernel with the job's arguments, mark the job done. The main
 * thread posts one job per worker, runs its own share, then waits for all of
 * them, so every kernel call returns only when the whole result is written.
 * Waiting is a short spin on `Atomics.load` followed by `Atomics.wait`.
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
  "layerNormForward",
  "layerNormBackward",
  "geluForward",
  "geluBackward",
  "adamwUpdate",
  "attentionForward",
  "attentionBackward",
] as const;

/** Name of a kernel the pool can run. */
export type KernelName = typeof KERNEL_NAMES[number];

// Layout of one worker's slot in the control block, in bytes.
/** Bytes per slot; a multiple of the cache line, so slots never share one. */
export const SLOT_BYTES = 2048;
/** Int32 fields at the start of each slot, as indices relative to the slot. */
export const FIELD = {
  /** Sequence number of the latest job, incremented by the main thread. */
  sequence: 0,
  /** Sequence number of the latest finished job, set by the worker. */
  done: 1,
  /** Index into KERNEL_NAMES, or STOP. */
  kernel: 2,
  /** 0 after a job that returned, 1 after one that threw. */
  failed: 3,
  /** Byte length of the UTF-8 error message. */
  messageLength: 4,
} as const;
/** Kernel index that makes a worker leave its loop and exit. */
export const STOP = -1;
/** Byte offset of the Float64 job arguments within a slot. */
export const ARGS_OFFSET = 64;
/** Most arguments of any kernel (sgemm has 17). */
export const MAX_ARGS = 24;
/** Byte offset and capacity of the error message within a slot. */
export const MESSAGE_OFFSET = ARGS_OFFSET + MAX_ARGS * 8;
export const MESSAGE_BYTES = SLOT_BYTES - MESSAGE_OFFSET;
/** Iterations of `Atomics.load` before a waiting thread blocks in `Atomics.wait`. */
export const SPIN_LIMIT = 20000;

/** The module each worker runs. */
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
  module: WebAssembly.Module;
  memory: WebAssembly.Memory;
  control: SharedArrayBuffer;
  /** Index of this worker's slot. */
  slot: number;
}

/** A fixed set of worker threads that run kernel exports on shared memory. */
export class WorkerPool {
  readonly #workers: Worker[];
  readonly #control: Int32Array;
  readonly #args: Float64Array[];
  readonly #messages: Uint8Array[];

  private constructor(workers: Worker[], control: SharedArrayBuffer) {
    this.#workers = workers;
    this.#control = new Int32Array(control);
    this.#args = workers.map((_, slot) =>
      new Float64Array(control, slot * SLOT_BYTES + ARGS_OFFSET, MAX_ARGS)
    );
    this.#messages = workers.map((_, slot) =>
      new Uint8Array(control, slot * SLOT_BYTES + MESSAGE_OFFSET, MESSAGE_BYTES)
    );
  }

  /** Starts `count` workers on `memory` and resolves once each has instantiated the module. */
  static async start(
    count: number,
    module: WebAssembly.Module,
    memory: WebAssembly.Memory,
  ): Promise<WorkerPool> {
    const control = new SharedArrayBuffer(Math.max(1, count) * SLOT_BYTES);
    const workers: Worker[] = [];
    const ready: Promise<void>[] = [];
    for (let slot = 0; slot < count; slot++) {
      const setup: WorkerSetup = { module, memory, control, slot };
      const worker = new Worker(WORKER_URL, {
        workerData: setup,
      });
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

  /** Posts a job to worker `slot`. Every posted job must be collected with `waitAll`. */
  post(slot: number, kernel: number, args: ArrayLike<number>): void {
    if (args.length > MAX_ARGS) {
      throw new RangeError(`a job has ${args.length} arguments; at most ${MAX_ARGS} fit a slot`);
    }
    const base = slot * (SLOT_BYTES / 4);
    const argv = this.#args[slot];
    for (let i = 0; i < args.length; i++) argv[i] = args[i];
    for (let i = args.length; i < MAX_ARGS; i++) argv[i] = 0;
    this.#control[base + FIELD.kernel] = kernel;
    Atomics.add(this.#control, base + FIELD.sequence, 1);
    Atomics.notify(this.#control, base + FIELD.sequence);
  }

  /**
   * Waits until the workers `[0, count)` have finished their latest jobs.
   * Throws after all have finished if any job threw.
   */
  waitAll(count: number): void {
    const control = this.#control;
    let failure: string | undefined;
    for (let slot = 0; slot < count; slot++) {
      const base = slot * (SLOT_BYTES / 4);
      const sequence = Atomics.load(control, base + FIELD.sequence);
      let spins = 0;
      for (;;) {
        const done = Atomics.load(control, base + FIELD.done);
        if (done === sequence) break;
        if (++spins < SPIN_LIMIT) continue;
        Atomics.wait(control, base + FIELD.done, done);
      }
      if (control[base + FIELD.failed] !== 0 && failure === undefined) {
        const length = control[base + FIELD.messageLength];
        const message = new TextDecoder().decode(this.#messages[slot].slice(0, length));
        const kernel = KERNEL_NAMES[control[base + FIELD.kernel]] ?? "unknown kernel";
        failure = `worker thread ${slot + 1} failed in ${kernel}: ${message}`;
      }
    }
    if (failure !== undefined) throw new Error(failure);
  }

  /** Stops every worker and resolves when all have exited. The pool is unusable afterwards. */
  async close(): Promise<void> {
    for (let slot = 0; slot < this.#workers.length; slot++) {
      const base = slot * (SLOT_BYTES / 4);
      this.#control[base + FIELD.kernel] = STOP;
      Atomics.add(this.#control, base + FIELD.sequence, 1);
      Atomics.notify(this.#control, base + FIELD.sequence);
    }
    const workers = this.#workers.splice(0);
    await Promise.all(workers.map((worker) => worker.terminate()));
  }
}
