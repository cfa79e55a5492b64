/**
 * `deno task bench`: the benchmark behind the figures in BENCHMARKS.md.
 *
 * Sections, each of which can be run alone with `--only NAME`:
 * - `gemm`: matrix-product GFLOP/s per backend (runs `bin/bench_gemm.ts`).
 * - `step`: default-config training-step time (median and spread) and tokens
 *   per second, per backend and thread count.
 * - `memory`: peak resident memory of a default-config `train` run.
 * - `generate`: tokens per second with and without the KV cache
 *   (runs `bin/bench_generate.ts`).
 * - `numpy`: with `--numpy PATH`, runs that NumPy reference trainer's
 *   `bench` command in the same session, for a side-by-side figure.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { type Backend, jsBackend } from "../lib/backend.ts";
import { GPT, type GPTConfig } from "../lib/gpt.ts";
import { AdamW, decayGroups } from "../lib/optim.ts";
import { Random } from "../lib/random.ts";
import { setBackend } from "../lib/tensor.ts";
import { createWasmBackend } from "../lib/wasm.ts";

/** The default model configuration, with the vocabulary of about 1000 that reference figures use. */
export const BENCH_CONFIG: GPTConfig = {
  vocabSize: 1000,
  contextLength: 128,
  dModel: 64,
  layers: 4,
  heads: 4,
};

/** Step times of one configuration. */
export interface StepTiming {
  /** Milliseconds of each timed step, in order. */
  times: number[];
  medianMs: number;
  minMs: number;
  maxMs: number;
  tokensPerSecond: number;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/**
 * Times full training steps (forward, backward, clipping, AdamW) of a
 * randomly initialised model on random tokens, after `warmup` untimed steps.
 */
export function timeTrainingSteps(
  backend: Backend,
  config: GPTConfig,
  batchSize: number,
  steps: number,
  warmup = 3,
): StepTiming {
  setBackend(backend);
  const model = new GPT(config, { seed: 0 });
  const optimizer = new AdamW(decayGroups(model.parameters(), 0.1), { lr: 3e-4, backend });
  const random = new Random(1);
  const T = config.contextLength;
  const inputs = Int32Array.from({ length: batchSize * T }, () => random.int(config.vocabSize));
  const targets = Int32Array.from({ length: batchSize * T }, () => random.int(config.vocabSize));

  const times: number[] = [];
  for (let step = 0; step < warmup + steps; step++) {
    const started = performance.now();
    const { loss } = model.forward(inputs, batchSize, T, targets);
    loss!.backward();
    loss!.release();
    optimizer.clipGradNorm(1);
    optimizer.step();
    optimizer.zeroGrad();
    if (step >= warmup) times.push(performance.now() - started);
  }
  for (const p of model.parameters()) {
    backend.free(p.data);
    if (p.grad !== null) backend.free(p.grad);
  }
  const medianMs = median(times);
  return {
    times,
    medianMs,
    minMs: Math.min(...times),
    maxMs: Math.max(...times),
    tokensPerSecond: batchSize * T / (medianMs / 1000),
  };
}

async function runScript(args: string[]): Promise<void> {
  const status = await new Deno.Command(Deno.execPath(), {
    args,
    stdout: "inherit",
    stderr: "inherit",
  }).spawn().status;
  if (!status.success) {
    throw new Error(`deno ${args.join(" ")} failed with exit code ${status.code}`);
  }
}

/**
 * Runs `deno task train` for `steps` steps in a child process under GNU
 * time and returns its peak resident memory in MiB (GNU time's `%M`).
 */
async function peakTrainingMemory(steps: number): Promise<number> {
  const runDir = await Deno.makeTempDir({ prefix: "rinzler-bench-" });
  const args = [
    "-f",
    "%M",
    Deno.execPath(),
    "run",
    "--allow-read",
    "--allow-write",
    "--allow-env",
    "--allow-run",
    new URL("./train.ts", import.meta.url).pathname,
    `--steps=${steps}`,
    "--gen-every=0",
    "--vocab-size=1000",
    `--run-dir=${runDir}`,
  ];
  let output;
  try {
    output = await new Deno.Command("/usr/bin/time", { args, stdout: "null", stderr: "piped" })
      .output();
  } catch (error) {
    throw new Error(
      `could not run /usr/bin/time (install GNU time for the memory figure): ${error}`,
    );
  } finally {
    await Deno.remove(runDir, { recursive: true });
  }
  const stderr = new TextDecoder().decode(output.stderr).trim().split("\n");
  if (!output.success) {
    throw new Error(`the training run for the memory figure failed: ${stderr.join(" ")}`);
  }
  return Number(stderr[stderr.length - 1]) / 1024;
}

const HELP = `Usage: deno task bench [flags]

Measures matrix products, training steps, memory and generation speed.

Flags:
  --only NAME      run one section: gemm, step, memory, generate, numpy (default: all but numpy)
  --steps N        timed training steps per configuration (default: 20)
  --numpy PATH     also run a NumPy GPT trainer's "bench" command (python3 PATH bench)
  --webgpu         also run the WebGPU benchmark (gpu/bench.ts)
  --help           print this help`;

async function main(): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: Deno.args,
      options: {
        only: { type: "string" },
        steps: { type: "string", default: "20" },
        numpy: { type: "string" },
        webgpu: { type: "boolean" },
        help: { type: "boolean" },
      },
    }));
  } catch (error) {
    console.error(
      `bench: ${(error as Error).message.split("\n")[0]}. Run with --help for the list of flags.`,
    );
    return 2;
  }
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const sections = ["gemm", "step", "memory", "generate", "numpy"];
  if (values.only !== undefined && !sections.includes(values.only)) {
    console.error(`bench: invalid --only "${values.only}": expected one of ${sections.join(", ")}`);
    return 2;
  }
  const steps = Number(values.steps);
  if (!Number.isInteger(steps) || steps < 1) {
    console.error(`bench: invalid --steps "${values.steps}": expected an integer >= 1`);
    return 2;
  }
  const selected = (name: string) =>
    values.only === undefined ? name !== "numpy" || !!values.numpy : values.only === name;
  const here = (file: string) => new URL(file, import.meta.url).pathname;

  console.log(
    `machine: ${navigator.hardwareConcurrency} cores, Deno ${Deno.version.deno}, V8 ${Deno.version.v8}`,
  );

  if (selected("gemm")) {
    console.log("\n## Matrix products (GFLOP/s)\n");
    await runScript(["run", "--allow-read", "--allow-env", here("./bench_gemm.ts")]);
  }

  if (selected("step")) {
    const { contextLength: T, dModel, layers, heads, vocabSize } = BENCH_CONFIG;
    console.log(
      `\n## Training step: d_model ${dModel}, ${layers} layers, ${heads} heads, context ${T}, batch 8, vocabulary ${vocabSize}, AdamW\n`,
    );
    console.log("| backend | threads | median ms | min ms | max ms | tokens/s |");
    console.log("|---|---|---|---|---|---|");
    const rows: [string, number, () => Promise<Backend>][] = [
      ["js", 1, () => Promise.resolve(jsBackend)],
      ["wasm", 1, () => createWasmBackend({ threads: 1 })],
      ["wasm", 2, () => createWasmBackend({ threads: 2 })],
    ];
    for (const [name, threads, make] of rows) {
      const backend = await make();
      const timing = timeTrainingSteps(
        backend,
        BENCH_CONFIG,
        8,
        name === "js" ? Math.min(steps, 5) : steps,
      );
      console.log(
        `| ${name} | ${threads} | ${timing.medianMs.toFixed(1)} | ${timing.minMs.toFixed(1)} | ${
          timing.maxMs.toFixed(1)
        } | ${Math.round(timing.tokensPerSecond)} |`,
      );
      await (backend as { close?: () => Promise<void> }).close?.();
    }
  }

  if (selected("memory")) {
    console.log("\n## Peak memory of `deno task train --steps 50 --vocab-size 1000`\n");
    console.log(`peak resident memory: ${(await peakTrainingMemory(50)).toFixed(0)} MiB`);
  }

  if (selected("generate")) {
    console.log("\n## Generation (tokens/s)\n");
    await runScript(["run", "--allow-read", "--allow-env", here("./bench_generate.ts")]);
  }

  if (selected("numpy") && values.numpy) {
    console.log(`\n## NumPy reference trainer: python3 ${values.numpy} bench\n`);
    const status = await new Deno.Command("python3", { args: [values.numpy, "bench"] }).spawn()
      .status;
    if (!status.success) {
      console.error(`bench: the NumPy trainer failed with exit code ${status.code}`);
    }
  }

  if (values.webgpu) {
    console.log("\n## WebGPU\n");
    await runScript(["run", "--allow-read", "--allow-env", here("../gpu/bench.ts")]);
  }
  return 0;
}

if (import.meta.main) {
  Deno.exit(await main());
}
