import assert from "node:assert/strict";
import { join } from "node:path";
import { countCharacters, evaluateTokens, parseEvalArgs } from "../bin/eval.ts";
import { loadModel, train } from "../lib/train.ts";

// ---------------------------------------------------------------------------
// Helpers

const quiet = { live: false, log() {}, progress() {} };

/**
 * Builds about 3,000 characters of pseudo-random lowercase words, varied enough that 20
 * BPE merges leave over 2,000 tokens, so the 10% validation split contains 16-token windows.
 */
function sampleText(): string {
  const letters = "etaoinshrdlucmfwypvbgkqjxz";
  let state = 7;
  const next = (n: number) => {
    state = (state * 1103515245 + 12345) % 2147483648;
    return Math.floor(state / 65536) % n;
  };
  const lines: string[] = [];
  for (let line = 0; line < 60; line++) {
    const words: string[] = [];
    for (let w = 0; w < 10; w++) {
      let word = "";
      const length = 2 + next(6);
      for (let c = 0; c < length; c++) word += letters[next(next(2) === 0 ? 8 : 26)];
      words.push(word);
    }
    lines.push(words.join(" ") + ".");
  }
  return lines.join("\n");
}

interface TinyRun {
  dir: string;
  corpus: string;
  runDir: string;
  checkpoint: string;
}

let tinyRun: Promise<TinyRun> | null = null;

/** Trains a tiny model for 3 steps once and shares it between tests. */
function trainTinyModel(): Promise<TinyRun> {
  tinyRun ??= (async () => {
    const dir = await Deno.makeTempDir({ prefix: "rinzler_eval_" });
    const corpus = join(dir, "corpus.txt");
    await Deno.writeTextFile(corpus, sampleText());
    const result = await train({
      corpus: [corpus],
      steps: 3,
      context: 16,
      dModel: 16,
      layers: 1,
      heads: 2,
      vocabSize: 20,
      batchSize: 2,
      evalBatches: 1,
      genEvery: 0,
      runDir: join(dir, "runs"),
    }, quiet);
    assert.ok(result.checkpoint, "training saved no checkpoint");
    return { dir, corpus, runDir: result.runDir, checkpoint: result.checkpoint };
  })();
  return tinyRun;
}

interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

async function runScript(
  script: string,
  permissions: string[],
  args: string[],
): Promise<CommandResult> {
  const path = new URL(`../bin/${script}`, import.meta.url).pathname;
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", ...permissions, path, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const decoder = new TextDecoder();
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
}

/** Runs bin/eval.ts with the permissions of `deno task eval`, on the plain JS backend. */
function runEvalScript(args: string[]): Promise<CommandResult> {
  return runScript("eval.ts", ["--allow-read"], ["--backend", "js", ...args]);
}

/** Returns the number after `name: ` in the report. */
function reportValue(stdout: string, name: string): number {
  const match = stdout.match(new RegExp(`^${name}: ([-+\\d.e]+)`, "m"));
  assert.ok(match, `no "${name}:" line in:\n${stdout}`);
  return Number(match[1]);
}

function assertOneLineError(result: CommandResult, pattern: RegExp): void {
  assert.notEqual(result.code, 0);
  const lines = result.stderr.trimEnd().split("\n");
  assert.equal(lines.length, 1, `stderr: ${result.stderr}`);
  assert.match(lines[0], /^eval: /);
  assert.match(lines[0], pattern);
}

// ---------------------------------------------------------------------------
// evaluateTokens

Deno.test("evaluateTokens scores every token once", async () => {
  const { checkpoint } = await trainTinyModel();
  const { model, tokenizer } = await loadModel(checkpoint);
  const tokens = Int32Array.from(tokenizer.encode(sampleText())).subarray(0, 16 * 5 + 7);

  const result = evaluateTokens(model, tokens, 2);
  assert.equal(result.tokens, tokens.length - 1);
  assert.equal(result.windows, 6);

  // The same figure from one forward pass per window, weighted by window length.
  let nats = 0;
  for (let start = 0; start < tokens.length - 1; start += 16) {
    const length = Math.min(16, tokens.length - 1 - start);
    const inputs = tokens.slice(start, start + length);
    const targets = tokens.slice(start + 1, start + length + 1);
    nats += model.evaluate(inputs, targets, 1, length) * length;
  }
  assert.ok(Math.abs(result.crossEntropy - nats / result.tokens) < 1e-5);
});

Deno.test("evaluateTokens does not depend on the batch size", async () => {
  const { checkpoint } = await trainTinyModel();
  const { model, tokenizer } = await loadModel(checkpoint);
  const tokens = Int32Array.from(tokenizer.encode(sampleText()));
  const reference = evaluateTokens(model, tokens, 1).crossEntropy;
  for (const batchSize of [3, 1000]) {
    const { crossEntropy } = evaluateTokens(model, tokens, batchSize);
    assert.ok(Math.abs(crossEntropy - reference) < 1e-5, `batch ${batchSize}: ${crossEntropy}`);
  }
});

Deno.test("evaluateTokens rejects fewer than T + 1 tokens", async () => {
  const { checkpoint } = await trainTinyModel();
  const { model } = await loadModel(checkpoint);
  assert.throws(
    () => evaluateTokens(model, new Int32Array(16), 1),
    /16 tokens are fewer than one window/,
  );
  assert.equal(evaluateTokens(model, new Int32Array(17).fill(1), 1).tokens, 16);
});

Deno.test("countCharacters counts decoded code points", async () => {
  const { checkpoint } = await trainTinyModel();
  const { tokenizer } = await loadModel(checkpoint);
  const text = "the model reads é😀";
  // é and 😀 are not in the alphabet and decode to one U+FFFD each.
  assert.equal(
    countCharacters(tokenizer, Int32Array.from(tokenizer.encode(text))),
    [...text].length,
  );
});

// ---------------------------------------------------------------------------
// Command line

Deno.test("parseEvalArgs reads flags and defaults", () => {
  const command = parseEvalArgs([
    "--checkpoint",
    "runs/1/checkpoint_step3.json",
    "--corpus",
    "a.txt",
    "--corpus",
    "b/*.txt",
    "--max-tokens",
    "100",
  ]);
  assert.equal(command.checkpoint, "runs/1/checkpoint_step3.json");
  assert.deepEqual(command.corpus, ["a.txt", "b/*.txt"]);
  assert.equal(command.maxTokens, 100);
  assert.equal(command.batchSize, 8);
  assert.equal(command.split, "all");
  assert.equal(command.backend, "wasm");
  assert.throws(() => parseEvalArgs([]), /missing --checkpoint/);
  assert.throws(
    () => parseEvalArgs(["--checkpoint", "x.json", "--batch-size", "0"]),
    /invalid --batch-size "0"/,
  );
  assert.throws(
    () => parseEvalArgs(["--checkpoint", "x.json", "--split", "test"]),
    /invalid --split "test"/,
  );
  assert.equal(parseEvalArgs(["--help"]).help, true);
});

Deno.test("bin/eval prints cross-entropy and perplexity", async () => {
  const { checkpoint } = await trainTinyModel();
  const { model } = await loadModel(checkpoint);
  const result = await runEvalScript(["--checkpoint", checkpoint]);
  assert.equal(result.code, 0, result.stderr);

  const crossEntropy = reportValue(result.stdout, "cross-entropy");
  const perplexity = reportValue(result.stdout, "perplexity");
  assert.ok(Math.abs(perplexity - Math.exp(crossEntropy)) < 1e-4 * perplexity, result.stdout);
  // Three steps barely move the initial weights, which predict all tokens about equally.
  const uniform = Math.log(model.config.vocabSize);
  assert.ok(
    Math.abs(crossEntropy - uniform) < 0.3,
    `cross-entropy ${crossEntropy}, ln V ${uniform}`,
  );
  assert.ok(reportValue(result.stdout, "tokens") > 100);
  assert.ok(reportValue(result.stdout, "bits per character") > 0);
  assert.match(result.stdout, /^checkpoint: .*checkpoint_step3\.json \(step 3\)$/m);
});

Deno.test("bin/eval --json, --max-tokens and --split", async () => {
  const { checkpoint, corpus } = await trainTinyModel();
  const full = await runEvalScript(["--checkpoint", checkpoint, "--json"]);
  assert.equal(full.code, 0, full.stderr);
  const report = JSON.parse(full.stdout);
  assert.equal(report.step, 3);
  assert.deepEqual(report.files, [corpus]);
  assert.equal(report.perplexity, Math.exp(report.crossEntropy));
  assert.ok(
    Math.abs(
      report.bitsPerCharacter - report.crossEntropy * report.tokens / report.characters / Math.LN2,
    ) < 1e-12,
  );

  const limited = JSON.parse(
    (await runEvalScript([
      "--checkpoint",
      checkpoint,
      "--json",
      "--max-tokens",
      "40",
      "--corpus",
      corpus,
    ])).stdout,
  );
  assert.equal(limited.tokens, 39);
  assert.equal(limited.windows, 3);

  const val = JSON.parse(
    (await runEvalScript(["--checkpoint", checkpoint, "--json", "--split", "val"])).stdout,
  );
  const trainSplit = JSON.parse(
    (await runEvalScript(["--checkpoint", checkpoint, "--json", "--split", "train"])).stdout,
  );
  // The two splits together contain every token, and each loses its first token as a target.
  assert.equal(val.tokens + trainSplit.tokens, report.tokens - 1);
  assert.ok(val.tokens < trainSplit.tokens);
});

Deno.test("bin/eval reports errors in one line", async () => {
  const { checkpoint, dir } = await trainTinyModel();
  const short = join(dir, "short.txt");
  await Deno.writeTextFile(short, "the model");

  assertOneLineError(
    await runEvalScript(["--checkpoint", checkpoint, "--corpus", short]),
    /too short: it has \d+ tokens/,
  );
  assertOneLineError(
    await runEvalScript(["--checkpoint", checkpoint, "--max-tokens", "5"]),
    /--max-tokens 5 is too small/,
  );
  assertOneLineError(await runEvalScript([]), /missing --checkpoint/);
  assertOneLineError(
    await runEvalScript(["--checkpoint", join(dir, "missing.json")]),
    /missing\.json/,
  );
  assertOneLineError(
    await runEvalScript(["--checkpoint", checkpoint, "--corpus", join(dir, "none*.txt")]),
    /No files match the corpus pattern/,
  );
});

Deno.test("bin/eval --help prints usage", async () => {
  const result = await runEvalScript(["--help"]);
  assert.equal(result.code, 0);
  assert.match(result.stdout, /^Usage: deno task eval --checkpoint PATH/);
});

Deno.test("bin/plot draws the tiny run", async () => {
  const { runDir } = await trainTinyModel();
  const result = await runScript("plot.ts", ["--allow-read", "--allow-write"], [runDir]);
  assert.equal(result.code, 0, result.stderr);
  const path = join(runDir, "loss.svg");
  assert.equal(result.stdout.trim(), path);
  const svg = await Deno.readTextFile(path);
  assert.match(svg, /<polyline id="train-loss" data-series="train-loss" points="[^"]+"/);
  assert.match(svg, /data-series="val-loss"/);
  assert.match(svg, /data-series="lr"/);
  await Deno.remove((await trainTinyModel()).dir, { recursive: true });
});
