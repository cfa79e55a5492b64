/**
 * Picks a compute backend by name, as the command-line tools do.
 *
 * @module
 */

import { type Backend, jsBackend } from "./backend.ts";

/** Names accepted by `selectBackend`. */
export type BackendName = "js" | "wasm";

/**
 * Returns the named backend: `js`, the plain reference, or `wasm`, the SIMD
 * kernels with `threads` worker threads (1 runs on the calling thread only).
 */
export async function selectBackend(name: BackendName, threads = 1): Promise<Backend> {
  if (name === "js") return jsBackend;
  const { createWasmBackend } = await import("./wasm.ts");
  return await createWasmBackend({ threads });
}
