/**
 * WebGPU benchmark: GEMM GFLOP/s and training-step time of `GpuTrainer` on
 * whatever adapter `navigator.gpu` finds, and optionally the CPU `js`
 * backend's step time on the same configuration for comparison.
 *
 * `deno task bench --webgpu` runs it with the defaults; `gpu/measure_gpu.sh`
 * runs the two configurations worth reporting on a machine with a real GPU.
 *
 * Usage: deno run --allow-read --allow-env gpu/bench.ts [flags] (see --help)
 *
 * @module
 */

import { parseArgs } from "node:util";
import { BENCH_CONFIG, timeTrainingSteps } from "../bin/bench.ts";
import { jsBackend } from "../lib/backend.ts";
import { GPT, type GPTConfig } from "../lib/gpt.ts";
import { namedParameters } from "../lib/nn.ts";
import { Random } from "../lib/random.ts";
import { requestGpu } from "./device.ts";
import { Kernels, Plan, STORAGE_USAGE, upload, viewOf } from "./kernels.ts";
import { GpuTrainer } from "./trainer.ts";

/** A model configuration with the batch size it is benchmarked at. */
interface BenchConfig {
  model: GPTConfig;
  batchSize: number;
}

/**
 * Configurations by name: `default` is the default training config (the one
 * `deno task bench` times on the CPU), `large` is d_model 512, 8 layers of 8
 * heads, context 256 and batch 32, and `tiny` runs in seconds on a software
 * adapter.
 */
const CONFIGS: Record<string, BenchConfig> = {
  tiny: {
    model: { vocabSize: 100, contextLength: 32, dModel: 32, layers: 2, heads: 2 },
    batchSize: 2,
  },
  default: { model: BENCH_CONFIG, batchSize: 8 },
  large: {
    model: { vocabSize: 1000, contextLength: 256, dModel: 512, layers: 8, heads: 8 },
    batchSize: 32,
  },
};

/** AdamW settings of every timed step, the same as `timeTrainingSteps` in bin/bench.ts uses. */
const STEP_OPTIONS = { lr: 3e-4, weightDecay: 0.1, clipGrad: 1 };

/** Wall-clock seconds that each GEMM measurement aims to run for. */
const GEMM_TARGET_SECONDS = 0.5;

const HELP = `Usage: deno run --allow-read --allow-env gpu/bench.ts [flags]

Prints the WebGPU adapter, GEMM GFLOP/s and the training-step time of the
GPU trainer; with --cpu-steps also the CPU js backend's step time.

Flags:
  --config NAME      tiny, default or large (default: default)
  --batch N          sequences per step (default: the config's, 8 for default, 32 for large)
  --steps N          timed GPU training steps (default: 5)
  --warmup N         untimed GPU steps before them (default: 2)
  --gemm LIST        comma-separated square GEMM sizes, or "none" (default: 256,512,1024)
  --cpu-steps N      timed CPU js-backend steps, 0 to skip (default: 0)
  --cpu-batch N      batch of the CPU steps; a smaller one is scaled up to --batch
                     by sequences and reported as an estimate (default: --batch)
  --help             print this help`;

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** Parses a flag value as an integer of at least `min`, or throws naming the flag. */
function integerFlag(name: string, value: string, min: number): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) {
    throw new RangeError(`invalid --${name} "${value}": expected an integer >= ${min}`);
  }
  return n;
}

/**
 * Times `C = op(A)·op(B)` for square `size` matrices with each transpose the
 * trainer uses, and returns GFLOP/s by variant. Each measurement records
 * enough dispatches into one plan to run for about `GEMM_TARGET_SECONDS`.
 */
async function benchGemm(
  device: GPUDevice,
  kernels: Kernels,
  size: number,
): Promise<Record<string, number>> {
  const random = new Random(size);
  const data = Float32Array.from({ length: size * size }, () => random.normal());
  const buffers = [0, 1, 2].map(() =>
    device.createBuffer({ size: size * size * 4, usage: STORAGE_USAGE })
  );
  const [a, b, c] = buffers.map((buffer) => viewOf(buffer));
  upload(device, a, data);
  upload(device, b, data);

  const variants = { "A·B": [false, false], "A·Bᵀ": [false, true], "Aᵀ·B": [true, false] };
  const result: Record<string, number> = {};
  try {
    for (const [label, [transA, transB]] of Object.entries(variants)) {
      const time = async (repeats: number) => {
        const plan = new Plan(device);
        for (let r = 0; r < repeats; r++) {
          kernels.matmul(plan, a, b, c, { m: size, n: size, k: size, transA, transB });
        }
        const started = performance.now();
        plan.submit();
        await device.queue.onSubmittedWorkDone();
        plan.destroy();
        return (performance.now() - started) / 1000;
      };
      const first = await time(1); // also compiles the pipeline on drivers that compile late
      const once = await time(1);
      const repeats = Math.max(
        1,
        Math.min(100, Math.round(GEMM_TARGET_SECONDS / Math.max(first, once))),
      );
      const seconds = await time(repeats);
      result[label] = (2 * size ** 3 * repeats) / seconds / 1e9;
    }
  } finally {
    for (const buffer of buffers) buffer.destroy();
  }
  return result;
}

/**
 * Times `steps` GPU training steps after `warmup` untimed ones. Returns the
 * median, min and max in milliseconds and the last step's loss.
 */
async function benchGpuSteps(
  trainer: GpuTrainer,
  config: BenchConfig,
  steps: number,
  warmup: number,
): Promise<{ medianMs: number; minMs: number; maxMs: number; lastLoss: number }> {
  const random = new Random(1);
  const length = config.batchSize * config.model.contextLength;
  const tokens = () => Int32Array.from({ length }, () => random.int(config.model.vocabSize));
  const inputs = tokens();
  const targets = tokens();

  const times: number[] = [];
  let lastLoss = NaN;
  for (let step = 0; step < warmup + steps; step++) {
    const started = performance.now();
    const { loss } = await trainer.step(inputs, targets, STEP_OPTIONS.lr);
    if (step >= warmup) times.push(performance.now() - started);
    lastLoss = loss;
  }
  return {
    medianMs: median(times),
    minMs: Math.min(...times),
    maxMs: Math.max(...times),
    lastLoss,
  };
}

async function main(): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: Deno.args,
      options: {
        config: { type: "string", default: "default" },
        batch: { type: "string" },
        steps: { type: "string", default: "5" },
        warmup: { type: "string", default: "2" },
        gemm: { type: "string", default: "256,512,1024" },
        "cpu-steps": { type: "string", default: "0" },
        "cpu-batch": { type: "string" },
        help: { type: "boolean" },
      },
    }));
  } catch (error) {
    console.error(
      `gpu/bench: ${
        (error as Error).message.split("\n")[0]
      }. Run with --help for the list of flags.`,
    );
    return 2;
  }
  if (values.help) {
    console.log(HELP);
    return 0;
  }

  const preset = CONFIGS[values.config];
  if (preset === undefined) {
    console.error(
      `gpu/bench: invalid --config "${values.config}": expected one of ${
        Object.keys(CONFIGS).join(", ")
      }`,
    );
    return 2;
  }
  let config: BenchConfig;
  let steps: number, warmup: number, cpuSteps: number, cpuBatch: number, gemmSizes: number[];
  try {
    const batchSize = values.batch === undefined
      ? preset.batchSize
      : integerFlag("batch", values.batch, 1);
    config = { model: preset.model, batchSize };
    steps = integerFlag("steps", values.steps, 1);
    warmup = integerFlag("warmup", values.warmup, 0);
    cpuSteps = integerFlag("cpu-steps", values["cpu-steps"], 0);
    cpuBatch = values["cpu-batch"] === undefined
      ? batchSize
      : integerFlag("cpu-batch", values["cpu-batch"], 1);
    gemmSizes = values.gemm === "none"
      ? []
      : values.gemm.split(",").map((s) => integerFlag("gemm", s, 1));
  } catch (error) {
    console.error(`gpu/bench: ${(error as Error).message}`);
    return 2;
  }

  const gpu = await requestGpu();
  const { device } = gpu;
  console.log(`adapter: ${gpu.adapterName}`);
  console.log(`Deno ${Deno.version.deno}, ${navigator.hardwareConcurrency} CPU cores`);
  const kernels = await Kernels.create(device);

  if (gemmSizes.length > 0) {
    console.log("\n## WebGPU matrix products (GFLOP/s)\n");
    console.log("| size | A·B | A·Bᵀ | Aᵀ·B |");
    console.log("|---|---|---|---|");
    for (const size of gemmSizes) {
      const rates = await benchGemm(device, kernels, size);
      const cells = Object.values(rates).map((rate) => rate.toFixed(1));
      console.log(`| ${size} | ${cells.join(" | ")} |`);
    }
  }

  const { model: modelConfig, batchSize } = config;
  const { vocabSize, contextLength: T, dModel, layers, heads } = modelConfig;
  console.log(
    `\n## Training step (${values.config}): d_model ${dModel}, ${layers} layers, ${heads} heads, ` +
      `context ${T}, batch ${batchSize}, vocabulary ${vocabSize}, AdamW, clipping at 1\n`,
  );
  console.log("| path | median ms | min ms | max ms | tokens/s |");
  console.log("|---|---|---|---|---|");

  const model = new GPT(modelConfig, { seed: 0 });
  const weights = new Map([...namedParameters(model)].map(([name, p]) => [name, p.data]));
  const trainer = await GpuTrainer.create(gpu, modelConfig, weights, {
    batchSize,
    ...STEP_OPTIONS,
  });
  let bufferMiB = 0;
  try {
    const timing = await benchGpuSteps(trainer, config, steps, warmup);
    const tokensPerSecond = (batchSize * T) / (timing.medianMs / 1000);
    console.log(
      `| WebGPU | ${timing.medianMs.toFixed(1)} | ${timing.minMs.toFixed(1)} | ` +
        `${timing.maxMs.toFixed(1)} | ${Math.round(tokensPerSecond)} |`,
    );
    if (!Number.isFinite(timing.lastLoss)) {
      console.error(`gpu/bench: the last GPU step's loss is ${timing.lastLoss}`);
      return 1;
    }
    bufferMiB = trainer.bufferBytes / 2 ** 20;
  } finally {
    trainer.destroy();
  }

  if (cpuSteps > 0) {
    const cpu = timeTrainingSteps(jsBackend, modelConfig, cpuBatch, cpuSteps, cpuSteps > 1 ? 1 : 0);
    // Step time grows about linearly with the number of sequences, so a
    // smaller CPU batch is scaled up and its row is labelled an estimate.
    const scale = batchSize / cpuBatch;
    const label = scale === 1 ? "CPU js" : `CPU js, batch ${cpuBatch} × ${scale} (estimate)`;
    const ms = (value: number) => (value * scale).toFixed(1);
    console.log(
      `| ${label} | ${ms(cpu.medianMs)} | ${ms(cpu.minMs)} | ${ms(cpu.maxMs)} | ` +
        `${Math.round(cpu.tokensPerSecond)} |`,
    );
  }
  console.log(`\nGPU buffers of the trainer: ${bufferMiB.toFixed(0)} MiB`);
  device.destroy();
  return 0;
}

if (import.meta.main) {
  Deno.exit(await main());
}
