/**
 * Worker thread of the `wasm` backend (started by `WorkerPool` in
 * `lib/wasm/pool.ts`): instantiates the kernel module on the shared memory
 * and runs the jobs posted to its slot of the control block until it reads STOP.
 *
 * @module
 */

import { parentPort, workerData } from "node:worker_threads";
import {
  ARGS_OFFSET,
  FIELD,
  KERNEL_NAMES,
  MAX_ARGS,
  MESSAGE_BYTES,
  MESSAGE_OFFSET,
  SLOT_BYTES,
  SPIN_LIMIT,
  STOP,
  type WorkerSetup,
} from "./wasm/pool.ts";

type Kernel = (...args: number[]) => void;

function serve(setup: WorkerSetup): void {
  const instance = new WebAssembly.Instance(setup.module, { env: { memory: setup.memory } });
  const kernels = KERNEL_NAMES.map((name) => instance.exports[name] as Kernel);

  const control = new Int32Array(setup.control);
  const base = setup.slot * (SLOT_BYTES / 4);
  const args = new Float64Array(setup.control, setup.slot * SLOT_BYTES + ARGS_OFFSET, MAX_ARGS);
  const message = new Uint8Array(
    setup.control,
    setup.slot * SLOT_BYTES + MESSAGE_OFFSET,
    MESSAGE_BYTES,
  );
  const argv: number[] = new Array(MAX_ARGS).fill(0);
  const encoder = new TextEncoder();

  parentPort!.postMessage("ready");

  let seen = Atomics.load(control, base + FIELD.sequence);
  for (;;) {
    let spins = 0;
    while (Atomics.load(control, base + FIELD.sequence) === seen) {
      if (++spins < SPIN_LIMIT) continue;
      Atomics.wait(control, base + FIELD.sequence, seen);
    }
    seen = Atomics.load(control, base + FIELD.sequence);

    const kernel = control[base + FIELD.kernel];
    if (kernel === STOP) return;

    control[base + FIELD.failed] = 0;
    try {
      for (let i = 0; i < MAX_ARGS; i++) argv[i] = args[i];
      kernels[kernel].apply(null, argv);
    } catch (error) {
      const { written } = encoder.encodeInto(String(error), message);
      control[base + FIELD.messageLength] = written;
      control[base + FIELD.failed] = 1;
    }
    Atomics.store(control, base + FIELD.done, seen);
    Atomics.notify(control, base + FIELD.done);
  }
}

serve(workerData as WorkerSetup);
