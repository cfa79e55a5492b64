/**
 * The `blas` backend: matrix products by `cblas_sgemm` of the system's
 * OpenBLAS through `Deno.dlopen`; every other kernel is the `js` reference.
 *
 * Needs `--allow-ffi` and an installed OpenBLAS (Debian and Ubuntu:
 * `apt-get install libopenblas0`; macOS: `brew install openblas`).
 *
 * @module
 */

import { type Backend, jsBackend, type MatmulOptions } from "./backend.ts";

export type { AdamWStep, AttentionShape, Backend, MatmulOptions } from "./backend.ts";

/** Options of `createBlasBackend`. */
export interface BlasBackendOptions {
  /** Path or file name of the shared library to load first, before the usual OpenBLAS names. */
  library?: string;
  /**
   * Threads OpenBLAS may use, set through `openblas_set_num_threads` when
   * the library exports it. Default: OpenBLAS's own choice.
   */
  threads?: number;
}

/** The `blas` backend, with the library handle it holds. */
export interface BlasBackend extends Backend {
  /** The library path that loaded. */
  readonly library: string;
  /** Unloads the library. The backend must not be used afterwards. */
  close(): void;
}

/** File names and paths tried in order, after `options.library`. */
const LIBRARY_CANDIDATES: Record<string, string[]> = {
  linux: [
    "libopenblas.so.0",
    "libopenblas.so",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
  ],
  darwin: [
    "libopenblas.dylib",
    "/opt/homebrew/opt/openblas/lib/libopenblas.dylib",
    "/usr/local/opt/openblas/lib/libopenblas.dylib",
  ],
  windows: ["libopenblas.dll", "openblas.dll"],
};

const SYMBOLS = {
  cblas_sgemm: {
    parameters: [
      "i32", // order
      "i32", // transA
      "i32", // transB
      "i32", // M
      "i32", // N
      "i32", // K
      "f32", // alpha
      "buffer", // A
      "i32", // lda
      "buffer", // B
      "i32", // ldb
      "f32", // beta
      "buffer", // C
      "i32", // ldc
    ],
    result: "void",
  },
  openblas_set_num_threads: { parameters: ["i32"], result: "void", optional: true },
} as const;

// Constants of the CBLAS interface (cblas.h).
const CBLAS_ROW_MAJOR = 101;
const CBLAS_NO_TRANS = 111;
const CBLAS_TRANS = 112;

type BlasLibrary = Deno.DynamicLibrary<typeof SYMBOLS>;

/** Loads the first candidate library that opens, or throws naming every path tried. */
function openLibrary(preferred: string | undefined): { lib: BlasLibrary; path: string } {
  const candidates = [
    ...(preferred === undefined ? [] : [preferred]),
    ...(LIBRARY_CANDIDATES[Deno.build.os] ?? LIBRARY_CANDIDATES.linux),
  ];
  const failures: string[] = [];
  for (const path of candidates) {
    try {
      return { lib: Deno.dlopen(path, SYMBOLS), path };
    } catch (error) {
      if (
        error instanceof Deno.errors.NotCapable || error instanceof Deno.errors.PermissionDenied
      ) {
        throw new Error("blas backend: loading OpenBLAS needs the --allow-ffi permission", {
          cause: error,
        });
      }
      failures.push(`${path} (${error instanceof Error ? error.message : String(error)})`);
    }
  }
  throw new Error(
    "blas backend: OpenBLAS not found. Tried:\n  " + failures.join("\n  ") +
      "\nInstall it (Debian and Ubuntu: apt-get install libopenblas0; " +
      "macOS: brew install openblas) or pass the library path as options.library.",
  );
}

function checkCount(value: number, name: string): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(`invalid ${name} ${value}: expected a non-negative integer`);
  }
}

/** Creates the `blas` backend. Throws if OpenBLAS cannot be loaded. */
export function createBlasBackend(options: BlasBackendOptions = {}): BlasBackend {
  const { lib, path } = openLibrary(options.library);
  if (options.threads !== undefined) {
    checkCount(options.threads, "threads");
    lib.symbols.openblas_set_num_threads?.(options.threads);
  }
  const sgemm = lib.symbols.cblas_sgemm;

  const matmul = (a: Float32Array, b: Float32Array, c: Float32Array, o: MatmulOptions): void => {
    const { m, n, k } = o;
    const transA = o.transA ?? false;
    const transB = o.transB ?? false;
    const batch = o.batch ?? 1;
    const strideA = o.strideA ?? m * k;
    const strideB = o.strideB ?? k * n;
    const strideC = o.strideC ?? m * n;
    for (const [value, name] of [[m, "m"], [n, "n"], [k, "k"], [batch, "batch"]] as const) {
      checkCount(value, name);
    }
    if (batch === 0 || m === 0 || n === 0) return;

    const need = (array: Float32Array, stride: number, size: number, name: string) => {
      const length = size === 0 ? 0 : (batch - 1) * stride + size;
      if (array.length < length) {
        throw new RangeError(`${name} has ${array.length} elements, but matmul needs ${length}`);
      }
    };
    need(a, strideA, m * k, "matmul A");
    need(b, strideB, k * n, "matmul B");
    need(c, strideC, m * n, "matmul C");

    // BLAS rejects a leading dimension below 1, even for empty operands.
    const lda = Math.max(1, transA ? m : k);
    const ldb = Math.max(1, transB ? k : n);
    const beta = o.accumulate ? 1 : 0;
    for (let p = 0; p < batch; p++) {
      sgemm(
        CBLAS_ROW_MAJOR,
        transA ? CBLAS_TRANS : CBLAS_NO_TRANS,
        transB ? CBLAS_TRANS : CBLAS_NO_TRANS,
        m,
        n,
        k,
        1,
        a.subarray(p * strideA),
        lda,
        b.subarray(p * strideB),
        ldb,
        beta,
        c.subarray(p * strideC),
        n,
      );
    }
  };

  return {
    ...jsBackend,
    name: "blas",
    library: path,
    matmul,
    close: () => lib.close(),
  };
}
