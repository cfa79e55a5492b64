import assert from "node:assert/strict";
import { join } from "node:path";
import { ensureDefaultCorpus } from "../lib/corpus.ts";
import { type MetricsRecord, train, type TrainIO, type TrainOptions } from "../lib/train.ts";

const quiet: TrainIO = { live: false, log() {}, progress() {} };

/** Losses of the GPU and CPU paths agree to this much (float32, different summation orders). */
const TOLERANCE = 2e-3;

async function smallRun(): Promise<Partial<TrainOptions>> {
  const text = await Deno.readTextFile(await ensureDefaultCorpus());
  const dir = await Deno.makeTempDir({ prefix: "rinzler-gpu-" });
  await Deno.writeTextFile(join(dir, "text.txt"), text.slice(0, 50_000));
  return {
    corpus: [join(dir, "text.txt")],
    runDir: join(dir, "runs"),
    context: 16,
    dModel: 16,
    layers: 1,
    heads: 2,
    vocabSize: 30,
    batchSize: 2,
    evalBatches: 1,
    evalEvery: 4,
    genEvery: 0,
    lr: 3e-3,
    warmupSteps: 2,
  };
}

async function trainLosses(runDir: string): Promise<number[]> {
  const text = await Deno.readTextFile(join(runDir, "metrics.jsonl"));
  return text.trim().split("\n").map((line) => (JSON.parse(line) as MetricsRecord).trainLoss);
}

function assertClose(actual: number[], expected: number[], label: string): void {
  assert.equal(actual.length, expected.length, `${label}: number of steps`);
  actual.forEach((value, i) => {
    assert.ok(
      Math.abs(value - expected[i]) < TOLERANCE,
      `${label}: step ${i + 1}: ${value} vs ${expected[i]}`,
    );
  });
}

Deno.test("WebGPU training matches the CPU", async () => {
  const options = await smallRun();
  const cpu = await train({ ...options, steps: 8 }, quiet);
  const gpu = await train({ ...options, steps: 8 }, quiet, { webgpu: true });
  assertClose(await trainLosses(gpu.runDir), await trainLosses(cpu.runDir), "GPU vs CPU");
  assert.ok(Math.abs(gpu.finalValLoss - cpu.finalValLoss) < TOLERANCE);
});

Deno.test("checkpoints move between GPU and CPU", async () => {
  const options = await smallRun();
  const straight = await train({ ...options, steps: 8 }, quiet);

  // GPU for 4 steps, then the CPU to 8.
  const gpuFirst = await train({ ...options, steps: 4 }, quiet, { webgpu: true });
  const cpuSecond = await train({ resume: gpuFirst.checkpoint!, steps: 8 }, quiet);
  assertClose(
    await trainLosses(cpuSecond.runDir),
    await trainLosses(straight.runDir),
    "GPU then CPU",
  );

  // The CPU for 4 steps, then the GPU to 8.
  const cpuFirst = await train({ ...options, steps: 4 }, quiet);
  const gpuSecond = await train({ resume: cpuFirst.checkpoint!, steps: 8 }, quiet, {
    webgpu: true,
  });
  assertClose(
    await trainLosses(gpuSecond.runDir),
    await trainLosses(straight.runDir),
    "CPU then GPU",
  );
});
