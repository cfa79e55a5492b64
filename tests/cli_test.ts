import assert from "node:assert/strict";
import { join } from "node:path";
import { loadCheckpoint } from "../lib/checkpoint.ts";
import { ensureDefaultCorpus } from "../lib/corpus.ts";

const TRAIN = new URL("../bin/train.ts", import.meta.url).pathname;

async function realTextFile(): Promise<string> {
  const text = await Deno.readTextFile(await ensureDefaultCorpus());
  const dir = await Deno.makeTempDir({ prefix: "rinzler-cli-" });
  const path = join(dir, "sotu_head.txt");
  await Deno.writeTextFile(path, text.slice(0, 100_000));
  return path;
}

function trainCommand(args: string[]): Deno.Command {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-read", "--allow-write", "--allow-env", "--allow-run", TRAIN, ...args],
    stdout: "piped",
    stderr: "piped",
  });
}

const SMALL = [
  "--backend=js",
  "--context=16",
  "--d-model=16",
  "--layers=1",
  "--heads=2",
  "--vocab-size=30",
  "--batch-size=2",
  "--eval-batches=1",
  "--gen-every=0",
];

Deno.test("train CLI runs end to end", async () => {
  const corpus = await realTextFile();
  const runs = await Deno.makeTempDir();
  const output = await trainCommand([
    ...SMALL,
    "--steps=12",
    "--eval-every=6",
    `--corpus=${corpus}`,
    `--run-dir=${runs}`,
  ])
    .output();
  const stdout = new TextDecoder().decode(output.stdout);
  assert.equal(output.code, 0, new TextDecoder().decode(output.stderr));
  assert.match(stdout, /step 12\/12: train loss [\d.]+, validation loss [\d.]+/);
  assert.match(stdout, /done: step 12, validation loss [\d.]+ -> [\d.]+/);
  const checkpoint = join(runs, "1", "checkpoint_step12.json");
  assert.equal((await loadCheckpoint(checkpoint)).step, 12);
});

Deno.test("train CLI saves on SIGTERM, twice", async () => {
  const corpus = await realTextFile();
  const runs = await Deno.makeTempDir();
  const child = trainCommand([
    ...SMALL,
    "--steps=100000",
    "--eval-every=1000",
    `--corpus=${corpus}`,
    `--run-dir=${runs}`,
  ])
    .spawn();

  // Wait until training has started, then ask it to stop.
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let stdout = "";
  while (!stdout.includes("step 0: validation loss")) {
    const { value, done } = await reader.read();
    if (done) break;
    stdout += value;
  }
  await new Promise((resolve) => setTimeout(resolve, 300));
  child.kill("SIGTERM");

  // A second signal while the step finishes and the checkpoint is written must not break the save.
  while (!stdout.includes("received SIGTERM")) {
    const { value, done } = await reader.read();
    if (done) break;
    stdout += value;
  }
  try {
    child.kill("SIGTERM");
  } catch {
    // The process may already have exited.
  }
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    stdout += value;
  }
  const status = await child.status;
  await child.stderr.cancel();

  assert.equal(status.code, 0, stdout);
  const saved = stdout.match(/checkpoint saved: (\S+) \(resume with --resume/);
  assert.ok(saved, stdout);
  const checkpoint = await loadCheckpoint(saved[1]);
  assert.ok(checkpoint.step > 0, `checkpoint step ${checkpoint.step}`);
  assert.ok(checkpoint.step < 100000, `checkpoint step ${checkpoint.step}`);
});

Deno.test("train CLI rejects a corrupted checkpoint", async () => {
  const dir = await Deno.makeTempDir();
  const path = join(dir, "checkpoint_step5.json");
  await Deno.writeTextFile(path, '{"format": "rinzler-checkpoint", "version": 1, "step": 5');
  const output = await trainCommand(["--backend=js", `--resume=${path}`]).output();
  const stderr = new TextDecoder().decode(output.stderr);
  assert.equal(output.code, 1);
  assert.match(stderr, /^train: .*checkpoint_step5\.json/);
  assert.equal(stderr.trim().split("\n").length, 1, stderr);
});

Deno.test("train CLI rejects bad flags before any work", async () => {
  const output = await trainCommand(["--steps=0"]).output();
  const stderr = new TextDecoder().decode(output.stderr);
  assert.equal(output.code, 2);
  assert.equal(
    stderr.trim(),
    'train: invalid --steps "0": expected an integer >= 1. Run with --help for the list of flags.',
  );
});

Deno.test("train CLI reports a corpus glob that matches nothing", async () => {
  const output = await trainCommand(["--backend=js", "--corpus=/nonexistent/dir/*.txt"]).output();
  const stderr = new TextDecoder().decode(output.stderr);
  assert.equal(output.code, 1);
  assert.match(stderr, /^train: .*\/nonexistent\/dir\/\*\.txt/);
  assert.equal(stderr.trim().split("\n").length, 1, stderr);
});

Deno.test("train CLI reports text shorter than one context window", async () => {
  const dir = await Deno.makeTempDir();
  const path = join(dir, "short.txt");
  await Deno.writeTextFile(path, "Too short to train on.");
  const output = await trainCommand(["--backend=js", `--corpus=${path}`, `--run-dir=${dir}`])
    .output();
  const stderr = new TextDecoder().decode(output.stderr);
  assert.equal(output.code, 1);
  assert.match(
    stderr,
    /^train: the corpus has 22 characters, too few for one context window of 128 tokens; use a longer corpus or a smaller --context$/m,
  );
});
