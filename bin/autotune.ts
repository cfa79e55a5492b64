/**
 * `deno task autotune`: finds the fastest batch size, thread count and
 * backend for training on this machine.
 *
 * Times a short fixed run of the default model for every combination,
 * prints a table of tokens per second, and prints the `deno task train`
 * command of the fastest combination.
 *
 * @module
 */

import { parseArgs } from "node:util";
import type { Backend } from "../lib/backend.ts";
import { type BackendName, selectBackend } from "../lib/backends.ts";
import { requestGpu } from "../gpu/device.ts";
import { GpuTrainer } from "../gpu/trainer.ts";
import { GPT, type GPTConfig } from "../lib/gpt.ts";
import { namedParameters } from "../lib/nn.ts";
import { Random } from "../lib/random.ts";
import { BENCH_CONFIG, type StepTiming, timeTrainingSteps } from "./bench.ts";

const HELP = `Usage: deno task autotune [flags]

Times training steps of the default model (d_model 64, 4 layers, context 128)
for each combination of batch size, thread count and backend, then prints the
fastest 'deno task train' command.

Flags:
  --batch-sizes LIST  comma-separated batch sizes in sequences (default: 4,8,16,32)
  --threads LIST      comma-separated thread counts (default: 1,${navigator.hardwareConcurrency})
  --backends LIST     comma-separated CPU backends: wasm, js (default: wasm)
  --steps N           timed steps per combination, after 2 untimed ones (default: 5)
  --webgpu            also time each batch size on the GPU through WebGPU
  --help              print this help`;

class UsageError extends Error {}

function parseList(flag: string, text: string): number[] {
  const values = text.split(",").map((part) => Number(part.trim()));
  if (values.length === 0 || values.some((v) => !Number.isInteger(v) || v < 1)) {
    throw new UsageError(`invalid --${flag} "${text}": expected comma-separated integers >= 1`);
  }
  return values;
}

/** The parsed command line. */
export interface AutotuneCommand {
  help: boolean;
  batchSizes: number[];
  threads: number[];
  backends: BackendName[];
  steps: number;
  webgpu: boolean;
}

/** Parses the autotune flags; throws on the first invalid one. */
export function parseAutotuneArgs(argv: string[]): AutotuneCommand {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        "batch-sizes": { type: "string", default: "4,8,16,32" },
        threads: {
          type: "string",
          default: [...new Set([1, navigator.hardwareConcurrency])].join(","),
        },
        backends: { type: "string", default: "wasm" },
        steps: { type: "string", default: "5" },
        webgpu: { type: "boolean" },
        help: { type: "boolean" },
      },
    }));
  } catch (error) {
    throw new UsageError((error as Error).message.split("\n")[0]);
  }
  const backends = values.backends.split(",").map((b) => b.trim());
  for (const backend of backends) {
    if (backend !== "wasm" && backend !== "js" && backend !== "blas") {
      throw new UsageError(
        `invalid --backends "${values.backends}": expected wasm, js, blas or a list of them`,
      );
    }
  }
  const [steps] = parseList("steps", values.steps);
  return {
    help: values.help === true,
    batchSizes: parseList("batch-sizes", values["batch-sizes"]),
    threads: parseList("threads", values.threads),
    backends: backends as BackendName[],
    steps,
    webgpu: values.webgpu === true,
  };
}

/** Runs the command with `argv` and returns its exit status. */
/** Times AdamW training steps of a randomly initialised model on the GPU, after `warmup` untimed ones. */
async function timeGpuTrainingSteps(
  gpu: Awaited<ReturnType<typeof requestGpu>>,
  config: GPTConfig,
  batchSize: number,
  steps: number,
  warmup: number,
): Promise<StepTiming> {
  const model = new GPT(config, { seed: 0 });
  const weights = new Map([...namedParameters(model)].map(([name, p]) => [name, p.data]));
  const trainer = await GpuTrainer.create(gpu, config, weights, {
    batchSize,
    lr: 3e-4,
    clipGrad: 1,
  });
  const random = new Random(1);
  const length = batchSize * config.contextLength;
  const inputs = Int32Array.from({ length }, () => random.int(config.vocabSize));
  const targets = Int32Array.from({ length }, () => random.int(config.vocabSize));

  const times: number[] = [];
  for (let step = 0; step < warmup + steps; step++) {
    const started = performance.now();
    await trainer.step(inputs, targets);
    if (step >= warmup) times.push(performance.now() - started);
  }
  trainer.destroy();
  const sorted = [...times].sort((a, b) => a - b);
  const medianMs = sorted[sorted.length >> 1];
  return {
    times,
    medianMs,
    minMs: sorted[0],
    maxMs: sorted[sorted.length - 1],
    tokensPerSecond: batchSize * config.contextLength / (medianMs / 1000),
  };
}

export async function main(argv: string[] = Deno.args): Promise<number> {
  let command: AutotuneCommand;
  try {
    command = parseAutotuneArgs(argv);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`autotune: ${error.message}. Run with --help for the list of flags.`);
    return 2;
  }
  if (command.help) {
    console.log(HELP);
    return 0;
  }

  console.log("| backend | threads | batch | ms/step | tokens/s |");
  console.log("|---|---|---|---|---|");
  let best = { tokensPerSecond: 0, line: "" };
  for (const backendName of command.backends) {
    // The js backend runs on one thread only.
    const threadCounts = backendName === "js" ? [1] : command.threads;
    for (const threads of threadCounts) {
      const backend: Backend = await selectBackend(backendName, threads);
      for (const batchSize of command.batchSizes) {
        const timing = timeTrainingSteps(backend, BENCH_CONFIG, batchSize, command.steps, 2);
        console.log(
          `| ${backendName} | ${threads} | ${batchSize} | ${timing.medianMs.toFixed(1)} | ${
            Math.round(timing.tokensPerSecond)
          } |`,
        );
        if (timing.tokensPerSecond > best.tokensPerSecond) {
          best = {
            tokensPerSecond: timing.tokensPerSecond,
            line:
              `deno task train --backend ${backendName} --threads ${threads} --batch-size ${batchSize}`,
          };
        }
      }
      await (backend as { close?: () => Promise<void> }).close?.();
    }
  }
  if (command.webgpu) {
    const gpu = await requestGpu();
    console.error(`WebGPU adapter: ${gpu.adapterName}`);
    for (const batchSize of command.batchSizes) {
      const timing = await timeGpuTrainingSteps(gpu, BENCH_CONFIG, batchSize, command.steps, 2);
      console.log(
        `| webgpu | - | ${batchSize} | ${timing.medianMs.toFixed(1)} | ${
          Math.round(timing.tokensPerSecond)
        } |`,
      );
      if (timing.tokensPerSecond > best.tokensPerSecond) {
        best = {
          tokensPerSecond: timing.tokensPerSecond,
          line: `deno task train --webgpu --batch-size ${batchSize}`,
        };
      }
    }
    gpu.device.destroy();
  }

  console.log(`\nfastest: ${Math.round(best.tokensPerSecond)} tokens/s`);
  console.log(best.line);
  return 0;
}

if (import.meta.main) {
  Deno.exit(await main());
}
