/**
 * Measures matrix-product throughput (GFLOP/s, counting 2·m·n·k per product)
 * of the `js` backend and of the `wasm` backend with 1 and 2 threads, on
 * square sizes and on the shapes of the GPT's default configuration
 * (B·T = 1024 rows, C = 64, 3C = 192, 4C = 256, vocabulary about 1000).
 *
 * Each figure is the median of several samples; a sample repeats the product
 * for at least SAMPLE_MS milliseconds after one warm-up sample.
 *
 * Usage: deno run --allow-read --allow-env bin/bench_gemm.ts [--runs N] [--no-js] [--blas]
 *
 * `--blas` adds a column for OpenBLAS on one thread (`lib/blas.ts`), which
 * needs `--allow-ffi` and the library installed.
 *
 * @module
 */

import { type Backend, jsBackend, type MatmulOptions } from "../lib/backend.ts";
import { type BlasBackend, createBlasBackend } from "../lib/blas.ts";
import { createWasmBackend, type WasmBackend } from "../lib/wasm.ts";

const SAMPLE_MS = 100;

interface Case {
  label: string;
  options: MatmulOptions;
}

/** Names a layout the way BLAS does: N for a plain operand, T for a transposed one. */
function layout(options: MatmulOptions): string {
  return (options.transA ? "T" : "N") + (options.transB ? "T" : "N");
}

const SQUARE: Case[] = [64, 128, 256, 512, 1024].map((n) => ({
  label: `square ${n}`,
  options: { m: n, n, k: n },
}));

// Rows N = B·T = 1024, width C = 64, vocabulary V = 1000.
const MODEL: Case[] = [
  { label: "qkv x·W [1024×64]·[64×192]", options: { m: 1024, n: 192, k: 64 } },
  { label: "qkv x·Wᵀ [1024×64]·[192×64]ᵀ", options: { m: 1024, n: 192, k: 64, transB: true } },
  { label: "attn proj [1024×64]·[64×64]", options: { m: 1024, n: 64, k: 64 } },
  { label: "mlp fc [1024×64]·[64×256]", options: { m: 1024, n: 256, k: 64 } },
  { label: "mlp proj [1024×256]·[256×64]", options: { m: 1024, n: 64, k: 256 } },
  { label: "logits [1024×64]·[64×1000]", options: { m: 1024, n: 1000, k: 64 } },
  { label: "logits [1024×64]·[1000×64]ᵀ", options: { m: 1024, n: 1000, k: 64, transB: true } },
  { label: "dW qkv [1024×64]ᵀ·[1024×192]", options: { m: 64, n: 192, k: 1024, transA: true } },
  { label: "dx qkv [1024×192]·[64×192]ᵀ", options: { m: 1024, n: 64, k: 192, transB: true } },
  { label: "dW mlp [1024×256]ᵀ·[1024×64]", options: { m: 256, n: 64, k: 1024, transA: true } },
  { label: "dWte [1024×1000]ᵀ·[1024×64]", options: { m: 1000, n: 64, k: 1024, transA: true } },
  { label: "dx logits [1024×1000]·[1000×64]", options: { m: 1024, n: 64, k: 1000 } },
  {
    label: "scores 64×[64×16]·[64×16]ᵀ",
    options: { m: 64, n: 64, k: 16, transB: true, batch: 64 },
  },
];

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

/** Returns the median GFLOP/s of `backend` on one case. */
function measure(backend: Backend, options: MatmulOptions, runs: number): number {
  const { m, n, k } = options;
  const batch = options.batch ?? 1;
  const a = backend.alloc(batch * m * k);
  const b = backend.alloc(batch * k * n);
  const c = backend.alloc(batch * m * n);
  for (let i = 0; i < a.length; i++) a[i] = Math.sin(i);
  for (let i = 0; i < b.length; i++) b[i] = Math.cos(i);

  const flops = 2 * batch * m * n * k;
  const sample = (): number => {
    const start = performance.now();
    let reps = 0;
    let elapsed = 0;
    do {
      backend.matmul(a, b, c, options);
      reps++;
      elapsed = performance.now() - start;
    } while (elapsed < SAMPLE_MS);
    return (flops * reps) / (elapsed * 1e6);
  };

  sample(); // warm-up: lets V8 tier the kernel up to optimised code
  const rates: number[] = [];
  for (let run = 0; run < runs; run++) rates.push(sample());
  for (const buffer of [a, b, c]) backend.free(buffer);
  return median(rates);
}

function parseArgs(args: string[]): { runs: number; js: boolean; blas: boolean } {
  let runs = 5;
  let js = true;
  let blas = false;
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--runs") {
      runs = Number(args[++i]);
      if (!Number.isInteger(runs) || runs < 1) {
        throw new Error(`invalid --runs ${args[i]}: expected a positive integer`);
      }
    } else if (args[i] === "--no-js") {
      js = false;
    } else if (args[i] === "--blas") {
      blas = true;
    } else {
      throw new Error(
        `unknown argument ${args[i]}; usage: bench_gemm.ts [--runs N] [--no-js] [--blas]`,
      );
    }
  }
  return { runs, js, blas };
}

async function main(): Promise<void> {
  const { runs, js, blas } = parseArgs(Deno.args);
  const wasm1 = await createWasmBackend({ threads: 1 });
  const wasm2 = await createWasmBackend({ threads: 2 });
  const openblas: BlasBackend | undefined = blas ? createBlasBackend({ threads: 1 }) : undefined;
  const columns: [string, Backend | undefined][] = [
    ["js", js ? jsBackend : undefined],
    ["wasm×1", wasm1],
    ["wasm×2", wasm2],
  ];
  if (openblas !== undefined) columns.push(["blas×1", openblas]);

  console.log(
    `GEMM GFLOP/s, median of ${runs} samples of ≥ ${SAMPLE_MS} ms; Deno ${Deno.version.deno}, ` +
      `${navigator.hardwareConcurrency} logical CPUs, relaxed SIMD: ${wasm1.relaxedSimd}`,
  );
  const header = ["shape".padEnd(34), "layout", ...columns.map(([name]) => name.padStart(8))];
  console.log(header.join(" "));
  for (const { label, options } of [...SQUARE, ...MODEL]) {
    const cells = columns.map(([, backend]) =>
      backend === undefined ? "-" : measure(backend, options, runs).toFixed(1)
    );
    console.log(
      [label.padEnd(34), layout(options).padEnd(6), ...cells.map((cell) => cell.padStart(8))]
        .join(" "),
    );
  }

  await Promise.all([wasm1, wasm2].map((backend: WasmBackend) => backend.close()));
  openblas?.close();
}

if (import.meta.main) {
  await main();
}
