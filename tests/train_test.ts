import assert from "node:assert/strict";
import { join } from "node:path";
import { helpText, parseTrainArgs } from "../bin/train.ts";
import { loadCheckpoint } from "../lib/checkpoint.ts";
import { ensureDefaultCorpus } from "../lib/corpus.ts";
import {
  DivergenceMonitor,
  type MetricsRecord,
  train,
  type TrainIO,
  type TrainOptions,
} from "../lib/train.ts";

/** Collects what a run prints. */
function captureIO(): TrainIO & { lines: string[] } {
  const lines: string[] = [];
  return {
    live: false,
    lines,
    log: (line) => lines.push(line),
    progress: (line) => lines.push(line),
  };
}

/** Writes the first 200,000 characters of the real default corpus to a temporary file. */
async function realTextFile(): Promise<string> {
  const corpus = await ensureDefaultCorpus();
  const text = await Deno.readTextFile(corpus);
  const dir = await Deno.makeTempDir({ prefix: "rinzler-train-" });
  const path = join(dir, "sotu_head.txt");
  await Deno.writeTextFile(path, text.slice(0, 200_000));
  return path;
}

/** Returns options for a model small enough to train in a test on the reference backend. */
function smallRun(corpus: string, runDir: string): Partial<TrainOptions> {
  return {
    corpus: [corpus],
    runDir,
    context: 32,
    dModel: 32,
    layers: 2,
    heads: 2,
    vocabSize: 60,
    batchSize: 4,
    evalBatches: 2,
    evalEvery: 10,
    genEvery: 0,
    lr: 3e-3,
  };
}

async function readMetrics(runDir: string): Promise<MetricsRecord[]> {
  const text = await Deno.readTextFile(join(runDir, "metrics.jsonl"));
  return text.trim().split("\n").map((line) => JSON.parse(line));
}

Deno.test("training on real text lowers the validation loss", async () => {
  const corpus = await realTextFile();
  const runs = await Deno.makeTempDir();
  const io = captureIO();
  const result = await train({ ...smallRun(corpus, runs), steps: 40, genEvery: 40 }, io);

  assert.equal(result.stoppedBy, "done");
  assert.equal(result.step, 40);
  assert.ok(
    result.finalValLoss < result.firstValLoss - 0.3,
    `validation loss went from ${result.firstValLoss} to ${result.finalValLoss}`,
  );

  const metrics = await readMetrics(result.runDir);
  assert.equal(metrics.length, 40);
  assert.deepEqual(metrics.map((m) => m.step), Array.from({ length: 40 }, (_, i) => i + 1));
  for (const key of ["trainLoss", "lr", "gradNorm", "tokensPerSecond", "elapsedSeconds"]) {
    assert.ok(
      metrics.every((m) => Number.isFinite(m[key as keyof MetricsRecord])),
      `metrics field ${key}`,
    );
  }
  assert.deepEqual(metrics.filter((m) => m.valLoss !== undefined).map((m) => m.step), [
    10,
    20,
    30,
    40,
  ]);
  const args = JSON.parse(await Deno.readTextFile(join(result.runDir, "args.json")));
  assert.equal(args.steps, 40);
  assert.equal(io.lines.filter((line) => line.startsWith("sample at step")).length, 1);
  assert.ok(io.lines.some((line) => line.startsWith("sample at step 40:")));
});

Deno.test("resume reproduces an uninterrupted run bit for bit", async () => {
  const corpus = await realTextFile();
  // A cosine schedule would differ here, because it stretches over each run's --steps.
  const options = { ...smallRun(corpus, await Deno.makeTempDir()), dropout: 0.1, warmupSteps: 5 };

  const straight = await train({ ...options, steps: 40 }, captureIO());
  const first = await train({ ...options, steps: 20 }, captureIO());
  const second = await train({ resume: first.checkpoint!, steps: 40 }, captureIO());
  assert.equal(second.runDir, first.runDir);

  const a = await readMetrics(straight.runDir);
  const b = await readMetrics(second.runDir);
  assert.equal(b.length, 40);
  assert.deepEqual(b.map((m) => m.trainLoss), a.map((m) => m.trainLoss));
  assert.deepEqual(b.map((m) => m.lr), a.map((m) => m.lr));

  const weightsA = (await loadCheckpoint(straight.checkpoint!)).tensors;
  const weightsB = (await loadCheckpoint(second.checkpoint!)).tensors;
  assert.deepEqual([...weightsB.keys()], [...weightsA.keys()]);
  for (const [name, tensor] of weightsA) {
    assert.deepEqual(
      new Uint8Array(weightsB.get(name)!.data.buffer),
      new Uint8Array(tensor.data.buffer),
      `tensor ${name} differs after resume`,
    );
  }
});

Deno.test("resume rejects changed settings", async () => {
  const corpus = await realTextFile();
  const first = await train(
    { ...smallRun(corpus, await Deno.makeTempDir()), steps: 4 },
    captureIO(),
  );
  await assert.rejects(
    () => train({ resume: first.checkpoint!, steps: 8, lr: 1e-3 }, captureIO()),
    /--lr cannot change when resuming: the run was started with --lr 0.003; drop --lr/,
  );
  await assert.rejects(
    () => train({ resume: first.checkpoint!, steps: 8, optimizer: "sgd" }, captureIO()),
    /--optimizer cannot change when resuming/,
  );
  await assert.rejects(
    () => train({ resume: first.checkpoint!, steps: 4 }, captureIO()),
    /the checkpoint is at step 4 and the run's total is 4; pass --steps above 4/,
  );
});

Deno.test("resume drops metrics past the checkpoint", async () => {
  const corpus = await realTextFile();
  const first = await train({
    ...smallRun(corpus, await Deno.makeTempDir()),
    steps: 6,
    saveEvery: 3,
  }, captureIO());
  // As if the process had been killed after step 6 with its last checkpoint at step 3.
  const earlier = join(first.runDir, "checkpoint_step3.json");
  await Deno.writeTextFile(
    join(first.runDir, "checkpoint_step6.safetensors.tmp-left-over"),
    "partial",
  );
  const second = await train({ resume: earlier, steps: 6 }, captureIO());
  const metrics = await readMetrics(second.runDir);
  assert.deepEqual(metrics.map((m) => m.step), [1, 2, 3, 4, 5, 6]);
  const names = [...Deno.readDirSync(first.runDir)].map((entry) => entry.name);
  assert.ok(!names.some((name) => name.includes(".tmp-")), names.join(", "));
});

Deno.test("resume rejects a mismatched model", async () => {
  const corpus = await realTextFile();
  const first = await train(
    { ...smallRun(corpus, await Deno.makeTempDir()), steps: 2 },
    captureIO(),
  );
  await assert.rejects(
    () => train({ resume: first.checkpoint!, steps: 4, dModel: 64 }, captureIO()),
    /model config .* does not match/,
  );
});

Deno.test("a non-finite loss stops the run", async () => {
  const corpus = await realTextFile();
  const io = captureIO();
  const result = await train(
    {
      ...smallRun(corpus, await Deno.makeTempDir()),
      steps: 30,
      lr: 1e30,
      clipGrad: null,
      optimizer: "sgd",
    },
    io,
  );
  assert.equal(result.stoppedBy, "nonfinite");
  assert.ok(result.step < 30);
  assert.ok(
    io.lines.some((line) => /^stopped: the (training loss|gradient norm) became/.test(line)),
    io.lines.join("\n"),
  );
});

Deno.test("divergence monitor thresholds", () => {
  const monitor = new DivergenceMonitor(20, 50);
  monitor.addTrain(2);
  assert.equal(monitor.addValidation(2.2), "ok"); // 10% gap
  const warned = new DivergenceMonitor(20, 50);
  warned.addTrain(2);
  assert.equal(warned.addValidation(2.5), "warn"); // 25% gap
  const stopped = new DivergenceMonitor(20, 50);
  stopped.addTrain(2);
  assert.equal(stopped.addValidation(3.2), "critical"); // 60% gap
  const never = new DivergenceMonitor(20, null);
  never.addTrain(2);
  assert.equal(never.addValidation(10), "warn");
});

Deno.test("divergence over the critical gap stops and saves", async () => {
  const corpus = await realTextFile();
  const io = captureIO();
  // A negative gap threshold cannot be given on the command line, but it makes any run "diverge".
  const result = await train({
    ...smallRun(corpus, await Deno.makeTempDir()),
    steps: 30,
    divCrit: -1000,
  }, io);
  assert.equal(result.stoppedBy, "divergence");
  assert.equal(result.step, 10);
  assert.ok(result.checkpoint !== null);
  assert.ok(io.lines.some((line) => line.includes("over --div-crit")));
});

Deno.test("train flags parse with defaults and units", () => {
  const command = parseTrainArgs([
    "--steps",
    "5",
    "--corpus",
    "a.txt",
    "--corpus",
    "b/*.txt",
    "--no-clip-grad",
  ]);
  assert.equal(command.options.steps, 5);
  assert.deepEqual(command.options.corpus, ["a.txt", "b/*.txt"]);
  assert.equal(command.options.clipGrad, null);
  assert.equal(command.options.lr, undefined);
  const help = helpText();
  for (
    const flag of [
      "--steps",
      "--lr",
      "--batch-size",
      "--context",
      "--d-model",
      "--layers",
      "--vocab-size",
    ]
  ) {
    assert.ok(help.includes(flag), `help lists ${flag}`);
  }
  assert.match(help, /--steps N\s+total optimizer steps of the run \(default: 1000 steps\)/);
});

Deno.test("train flags reject bad input", () => {
  const cases: [string[], RegExp][] = [
    [["--stepz", "5"], /Unknown option '--stepz'/],
    [["--steps"], /missing value for --steps|argument missing/],
    [["--steps", "ten"], /invalid --steps "ten": expected an integer >= 1/],
    [["--steps", "0"], /invalid --steps "0": expected an integer >= 1/],
    [["--lr=-1"], /invalid --lr "-1": expected a number > 0/],
    [["--lr", "-1"], /invalid --lr "-1": expected a number > 0/],
    [["--steps", "-5"], /invalid --steps "-5": expected an integer >= 1/],
    [
      ["--resume", "-x"],
      /missing value for --resume \(write a value that starts with a dash as --resume=VALUE\)/,
    ],
    [["--dropout", "1"], /invalid --dropout "1": expected a number >= 0 and < 1/],
    [["--heads", "3"], /invalid --heads 3: it must divide --d-model 64/],
    [["--optimizer", "lion"], /invalid --optimizer "lion": expected one of adamw/],
    [["--cosine"], /--cosine needs --warmup-steps/],
    [["--clip-grad", "1", "--no-clip-grad"], /cannot be used together/],
    [["--batch-size", "2.5"], /invalid --batch-size "2.5": expected an integer >= 1/],
  ];
  for (const [argv, pattern] of cases) {
    assert.throws(() => parseTrainArgs(argv), pattern, argv.join(" "));
  }
});
