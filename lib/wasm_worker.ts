/**
 * Worker thread of the `wasm` backend (started by `WorkerPool` in
 * `lib/wasm/pool.ts`): instantiates the kernel module on the shared memory,
 * then runs chunks of each call the main thread posts, until it reads STOP.
 *
 * @module
 */

import { parentPort, workerData } from "node:worker_threads";
import {
  ARGS_OFFSET,
  FIELD,
  KERNEL_NAMES,
  MAX_ARGS,
  MAX_CHUNKS,
  MAX_THREADS,
  MESSAGE_BYTES,
  MESSAGE_OFFSET,
  runChunks,
  SCRATCH_OFFSET,
  STOP,
  WORKER_SPIN_LIMIT,
  type WorkerSetup,
} from "./wasm/pool.ts";

function serve(setup: WorkerSetup): void {
  const instance = new WebAssembly.Instance(setup.module, { env: { memory: setup.memory } });
  const kernels = KERNEL_NAMES.map((name) => instance.exports[name] as (...args: number[]) => void);

  const control = new Int32Array(setup.control);
  const args = new Float64Array(setup.control, ARGS_OFFSET, MAX_CHUNKS * MAX_ARGS);
  const message = new Uint8Array(setup.control, MESSAGE_OFFSET, MESSAGE_BYTES);
  const argv: number[] = new Array(MAX_ARGS).fill(0);
  const scratchTable = new Float64Array(setup.control, SCRATCH_OFFSET, MAX_THREADS);
  const encoder = new TextEncoder();
  // The first worker to fail in a call writes the message the main thread throws.
  const reportError = (error: unknown) => {
    if (Atomics.compareExchange(control, FIELD.failed, 0, 1) !== 0) return;
    const { written } = encoder.encodeInto(String(error), message);
    Atomics.store(control, FIELD.messageLength, written);
  };

  parentPort!.postMessage("ready");

  let seen = Atomics.load(control, FIELD.sequence);
  for (;;) {
    let spins = 0;
    while (Atomics.load(control, FIELD.sequence) === seen) {
      if (++spins < WORKER_SPIN_LIMIT) continue;
      Atomics.wait(control, FIELD.sequence, seen);
    }
    seen = Atomics.load(control, FIELD.sequence);
    if (Atomics.load(control, FIELD.kernel) === STOP) return;
    runChunks(control, args, kernels, argv, scratchTable[setup.thread], reportError);
  }
}

serve(workerData as WorkerSetup);
