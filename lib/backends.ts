/**
 * Picks a compute backend by name, as the command-line tools do.
 *
 * @module
 */

import { type Backend, jsBackend } from "./backend.ts";

/** Names accepted by `selectBackend`. */
export type BackendName = "js" | "wasm" | "blas";

/**
 * Returns the named backend. `js` is the plain reference. `wasm` runs the
 * SIMD kernels on `threads` threads (1 runs on the calling thread only).
 * `blas` calls the system's OpenBLAS `cblas_sgemm` through FFI, so it needs
 * `--allow-ffi` and the library installed.
 */
export async function selectBackend(name: BackendName, threads = 1): Promise<Backend> {
  if (name === "js") return jsBackend;
  if (name === "blas") {
    const { createBlasBackend } = await import("./blas.ts");
    return createBlasBackend({ threads });
  }
  const { createWasmBackend } = await import("./wasm.ts");
  return await createWasmBackend({ threads });
}
