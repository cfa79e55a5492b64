import assert from "node:assert/strict";
import { join } from "node:path";
import { argmax, generate, type GenerateOptions, KVCache, sampleToken } from "../lib/generate.ts";
import { GPT, type GPTConfig, sample } from "../lib/gpt.ts";
import { Random } from "../lib/random.ts";
import { train } from "../lib/train.ts";

// ---------------------------------------------------------------------------
// Helpers

const SMALL: GPTConfig = { vocabSize: 30, contextLength: 8, dModel: 16, layers: 2, heads: 2 };

/**
 * Returns a model whose every weight, LayerNorm gains and biases included,
 * is drawn from N(0, scale²). The default init (std 0.02, zero biases, unit
 * gains) gives almost uniform logits and attention, which would hide errors
 * in the bias, LayerNorm and attention paths.
 */
function spreadModel(config: GPTConfig = SMALL, seed = 7, scale = 0.5): GPT {
  const model = new GPT(config);
  const random = new Random(seed);
  for (const p of model.parameters()) {
    for (let i = 0; i < p.size; i++) p.data[i] = random.normal() * scale;
  }
  return model;
}

function forwardLogits(model: GPT, ids: number[]): Float32Array {
  return model.forward(Int32Array.from(ids), 1, ids.length).logits.data;
}

/** Asserts |actual − expected| <= 1e-5 · max(1, |expected|) element by element. */
function assertClose(actual: Float32Array, expected: Float32Array, label: string): void {
  assert.equal(actual.length, expected.length, `${label}: length`);
  for (let i = 0; i < actual.length; i++) {
    const tolerance = 1e-5 * Math.max(1, Math.abs(expected[i]));
    assert.ok(
      Math.abs(actual[i] - expected[i]) <= tolerance,
      `${label}: element ${i} is ${actual[i]}, expected ${expected[i]}`,
    );
  }
}

/** Counts the calls of `model.forward` made while `fn` runs. */
function countForwardCalls(model: GPT, fn: () => void): number {
  const original = model.forward;
  let calls = 0;
  model.forward = (...args) => {
    calls++;
    return original.apply(model, args);
  };
  try {
    fn();
  } finally {
    model.forward = original;
  }
  return calls;
}

// ---------------------------------------------------------------------------
// The cached forward pass

Deno.test("KVCache logits match model.forward at every position", () => {
  const model = spreadModel();
  const ids = [3, 17, 0, 29, 5, 5, 12, 8];
  for (const mode of ["fused", "reference"] as const) {
    model.attentionMode = mode;
    const full = forwardLogits(model, ids);
    const cache = new KVCache(model);
    const V = SMALL.vocabSize;
    ids.forEach((id, t) => {
      const logits = cache.forward(id);
      assertClose(logits, full.subarray(t * V, (t + 1) * V), `${mode} attention, position ${t}`);
    });
    assert.equal(cache.length, ids.length);
    cache.dispose();
  }
});

Deno.test("KVCache prefill matches the last row of forward", () => {
  const model = spreadModel();
  const V = SMALL.vocabSize;
  const cache = new KVCache(model);
  for (const ids of [[4], [9, 1, 22], [1, 2, 3, 4, 5, 6, 7, 8]]) {
    cache.clear();
    const logits = cache.prefill(ids);
    const full = forwardLogits(model, ids);
    assertClose(logits, full.subarray((ids.length - 1) * V), `prefill of ${ids.length} tokens`);
    assert.equal(cache.length, ids.length);
  }
});

Deno.test("KVCache with default init matches forward", () => {
  // Four heads of size 16 and a wider model than the other tests use.
  const config = { vocabSize: 50, contextLength: 12, dModel: 64, layers: 3, heads: 4 };
  const model = new GPT(config, { seed: 3 });
  const ids = [1, 49, 2, 2, 30, 0, 7, 11, 40, 3, 9, 25];
  const full = forwardLogits(model, ids);
  const cache = new KVCache(model);
  ids.forEach((id, t) => {
    assertClose(cache.forward(id), full.subarray(t * 50, (t + 1) * 50), `position ${t}`);
  });
});

Deno.test("KVCache rejects positions past the context", () => {
  const model = spreadModel();
  const cache = new KVCache(model);
  cache.prefill([1, 2, 3, 4, 5, 6, 7, 8]);
  assert.throws(() => cache.forward(1), (error: Error) => {
    assert.ok(error instanceof RangeError);
    assert.match(error.message, /KV cache is full at the model's context length of 8 positions/);
    return true;
  });
});

Deno.test("KVCache rejects ids outside the vocabulary", () => {
  const cache = new KVCache(spreadModel());
  assert.throws(() => cache.forward(30), /token id 30 is not in the vocabulary \[0, 30\)/);
  assert.throws(() => cache.forward(-1), /token id -1 is not in the vocabulary/);
  assert.equal(cache.length, 0);
});

// ---------------------------------------------------------------------------
// Generation with and without the cache

Deno.test("generate greedy is the same with and without cache past the context", () => {
  const model = spreadModel();
  for (const prompt of [[1, 2, 3, 4, 5], [4], [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 11, 12]]) {
    const cached = generate(model, prompt, { maxTokens: 20, temperature: 0 });
    const uncached = generate(model, prompt, { maxTokens: 20, temperature: 0, cache: false });
    assert.equal(cached.length, 20);
    assert.deepEqual(cached, uncached, `prompt of ${prompt.length} tokens`);
  }
});

Deno.test("generate sampling is the same with and without cache for every stride", () => {
  // Sampled tokens vary far more than greedy ones on a random model, so the
  // windows after each slide hold many different tokens.
  const model = spreadModel();
  for (const stride of [1, 2, 3, 7, 8]) {
    const options = (cache: boolean): GenerateOptions => ({
      maxTokens: 30,
      temperature: 1,
      random: new Random(11),
      stride,
      cache,
    });
    const cached = generate(model, [5, 6, 7], options(true));
    const uncached = generate(model, [5, 6, 7], options(false));
    assert.deepEqual(cached, uncached, `stride ${stride}`);
    assert.ok(new Set(cached).size >= 5, `stride ${stride}: too few distinct tokens to be a test`);
  }
});

Deno.test("generate with cache never calls model.forward", () => {
  const model = spreadModel();
  const cachedCalls = countForwardCalls(model, () => {
    generate(model, [1, 2], { maxTokens: 20, temperature: 0 });
  });
  assert.equal(cachedCalls, 0);
  const uncachedCalls = countForwardCalls(model, () => {
    generate(model, [1, 2], { maxTokens: 20, temperature: 0, cache: false });
  });
  assert.equal(uncachedCalls, 20);
});

Deno.test("generate matches sample from lib/gpt.ts", () => {
  // The trainer's samples depend on this: the same seed gives the same text as before.
  const model = spreadModel();
  const ours = generate(model, [3], { maxTokens: 25, temperature: 0.8, random: new Random(4) });
  const theirs = sample(model, [3], { maxTokens: 25, temperature: 0.8, random: new Random(4) });
  assert.deepEqual(ours, theirs);
});

// ---------------------------------------------------------------------------
// Sampling options

Deno.test("generate topK 1 equals greedy", () => {
  const model = spreadModel();
  const greedy = generate(model, [1, 2, 3], { maxTokens: 20, temperature: 0 });
  const topK = generate(model, [1, 2, 3], {
    maxTokens: 20,
    temperature: 1.5,
    topK: 1,
    random: new Random(9),
  });
  assert.deepEqual(topK, greedy);
});

Deno.test("generate tiny topP equals greedy", () => {
  const model = spreadModel();
  const greedy = generate(model, [1, 2, 3], { maxTokens: 20, temperature: 0 });
  const topP = generate(model, [1, 2, 3], {
    maxTokens: 20,
    temperature: 1.5,
    topP: 1e-6,
    random: new Random(9),
  });
  assert.deepEqual(topP, greedy);
});

Deno.test("generate with a fixed seed repeats", () => {
  const model = new GPT(SMALL, { seed: 1 });
  const run = () => generate(model, [1], { maxTokens: 30, temperature: 1, random: new Random(42) });
  assert.deepEqual(run(), run());
});

Deno.test("generate with another seed differs", () => {
  // The default init gives near-uniform logits, so two seeds agree on all 30
  // tokens with probability about (1/30)^30.
  const model = new GPT(SMALL, { seed: 1 });
  const a = generate(model, [1], { maxTokens: 30, temperature: 1, random: new Random(1) });
  const b = generate(model, [1], { maxTokens: 30, temperature: 1, random: new Random(2) });
  assert.notDeepEqual(a, b);
});

Deno.test("generate streams each token to onToken", () => {
  const model = spreadModel();
  const streamed: number[] = [];
  const produced = generate(model, [1, 2], {
    maxTokens: 12,
    temperature: 1,
    random: new Random(3),
    onToken: (id) => streamed.push(id),
  });
  assert.deepEqual(streamed, produced);
});

Deno.test("generate with maxTokens 0 returns nothing", () => {
  const model = spreadModel();
  let calls = 0;
  const produced = generate(model, [1, 2], { maxTokens: 0, onToken: () => calls++ });
  assert.deepEqual(produced, []);
  assert.equal(calls, 0);
});

Deno.test("sampleToken topK draws only the K most likely", () => {
  const logits = Float32Array.from([0.1, 2.0, -1.0, 1.5, 0.3, 1.9]);
  const random = new Random(5);
  const seen = new Set<number>();
  for (let i = 0; i < 2000; i++) seen.add(sampleToken(logits, { topK: 3 }, random));
  assert.deepEqual([...seen].sort(), [1, 3, 5]);
});

Deno.test("sampleToken topP draws only the nucleus", () => {
  // Probabilities 0.5, 0.3, 0.15, 0.05 at temperature 1.
  const logits = Float32Array.from([0.5, 0.3, 0.15, 0.05].map(Math.log));
  const cases: [number, number[]][] = [
    [0.4, [0]],
    [0.7, [0, 1]],
    [0.8, [0, 1]],
    [0.85, [0, 1, 2]],
    [0.99, [0, 1, 2, 3]],
    [1, [0, 1, 2, 3]],
  ];
  for (const [topP, expected] of cases) {
    const random = new Random(6);
    const seen = new Set<number>();
    for (let i = 0; i < 2000; i++) seen.add(sampleToken(logits, { topP }, random));
    assert.deepEqual([...seen].sort(), expected, `topP ${topP}`);
  }
});

Deno.test("sampleToken applies topP after topK", () => {
  // After top-2 the probabilities are 0.625 and 0.375, so topP 0.6 keeps one token.
  const logits = Float32Array.from([0.5, 0.3, 0.15, 0.05].map(Math.log));
  const random = new Random(8);
  for (let i = 0; i < 200; i++) {
    assert.equal(sampleToken(logits, { topK: 2, topP: 0.6 }, random), 0);
  }
});

Deno.test("sampleToken greedy breaks ties toward the lower id", () => {
  const logits = Float32Array.from([1, 3, 0, 3]);
  assert.equal(argmax(logits), 1);
  assert.equal(sampleToken(logits, { temperature: 0 }, new Random(0)), 1);
  assert.equal(sampleToken(logits, { topK: 1 }, new Random(0)), 1);
});

Deno.test("generate rejects invalid options", () => {
  const model = spreadModel();
  const cases: [string, number[], Partial<GenerateOptions>, RegExp][] = [
    [
      "negative temperature",
      [1],
      { temperature: -0.5 },
      /^temperature must be a finite number >= 0 .*got -0\.5$/,
    ],
    ["NaN temperature", [1], { temperature: NaN }, /^temperature must be .*got NaN$/],
    ["topK 0", [1], { topK: 0 }, /^topK must be an integer >= 1, got 0$/],
    ["fractional topK", [1], { topK: 2.5 }, /^topK must be an integer >= 1, got 2\.5$/],
    ["topP 0", [1], { topP: 0 }, /^topP must be a number in \(0, 1\], got 0$/],
    ["topP above 1", [1], { topP: 1.5 }, /^topP must be a number in \(0, 1\], got 1\.5$/],
    ["negative maxTokens", [1], { maxTokens: -1 }, /^maxTokens must be an integer >= 0, got -1$/],
    [
      "fractional maxTokens",
      [1],
      { maxTokens: 1.5 },
      /^maxTokens must be an integer >= 0, got 1\.5$/,
    ],
    [
      "stride 0",
      [1],
      { stride: 0 },
      /^stride must be an integer from 1 to the context length 8, got 0$/,
    ],
    ["stride past the context", [1], { stride: 9 }, /^stride must be .* context length 8, got 9$/],
    ["empty prompt", [], {}, /^prompt must contain at least one token id/],
    [
      "prompt id past the vocabulary",
      [1, 30],
      {},
      /^prompt\[1\] is 30, not a token id in \[0, 30\)$/,
    ],
    ["negative prompt id", [-1], {}, /^prompt\[0\] is -1, not a token id/],
  ];
  for (const [name, prompt, overrides, message] of cases) {
    assert.throws(
      () => generate(model, prompt, { maxTokens: 5, ...overrides }),
      (error: Error) => {
        assert.ok(error instanceof RangeError, `${name}: expected a RangeError, got ${error}`);
        assert.match(error.message, message, name);
        return true;
      },
      name,
    );
  }
});

// ---------------------------------------------------------------------------
// The command line

const quietIO = { live: false, log() {}, progress() {} };
const script = new URL("../bin/generate.ts", import.meta.url).pathname;

/** Runs `bin/generate.ts` with read permission only and returns its exit code and output. */
async function runGenerate(args: string[]) {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-read", script, ...args],
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

/** Trains a tiny model for two steps in a temporary folder and returns its checkpoint sidecar. */
async function makeCheckpoint(dir: string): Promise<string> {
  const corpus = join(dir, "corpus.txt");
  const line = "the quick brown fox jumps over the lazy dog. hello world, hello model.\n";
  await Deno.writeTextFile(corpus, line.repeat(40));
  const result = await train(
    {
      corpus: [corpus],
      steps: 2,
      context: 16,
      dModel: 16,
      layers: 1,
      heads: 2,
      vocabSize: 20,
      batchSize: 2,
      evalBatches: 1,
      genEvery: 0,
      runDir: join(dir, "runs"),
    },
    quietIO,
  );
  assert.ok(result.checkpoint !== null, "training wrote no checkpoint");
  return result.checkpoint;
}

Deno.test("bin/generate streams text from a checkpoint", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const checkpoint = await makeCheckpoint(dir);
    const args = [
      "--checkpoint",
      checkpoint,
      "--prompt",
      "héllo 🙂",
      "--max-tokens",
      "10",
      "--seed",
      "1",
    ];
    const first = await runGenerate(args);
    assert.equal(first.code, 0, `stderr: ${first.stderr}`);
    assert.ok(first.stdout.startsWith("héllo 🙂"), `stdout: ${JSON.stringify(first.stdout)}`);
    assert.ok(first.stdout.length > "héllo 🙂\n".length, "no generated text");
    assert.match(
      first.stderr,
      /2 character\(s\) of the prompt are not in the tokenizer's alphabet/,
    );
    assert.match(first.stderr, /generated 10 tokens in/);

    const again = await runGenerate(args);
    assert.equal(again.stdout, first.stdout, "the same seed gave different text");
    const uncached = await runGenerate([...args, "--no-cache"]);
    assert.equal(uncached.code, 0, `stderr: ${uncached.stderr}`);
    assert.equal(uncached.stdout, first.stdout, "--no-cache gave different text");

    // A prompt longer than the context of 16 tokens, through the weights file.
    const weights = checkpoint.replace(/\.json$/, ".safetensors");
    const long = await runGenerate([
      "--checkpoint",
      weights,
      "--prompt",
      "hello world ".repeat(10),
      "--max-tokens",
      "40",
      "--temperature",
      "0",
      "--stride",
      "4",
    ]);
    assert.equal(long.code, 0, `stderr: ${long.stderr}`);
    assert.ok(long.stdout.startsWith("hello world ".repeat(10)));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("bin/generate reports a missing checkpoint in one line", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const missing = join(dir, "nothing_here.json");
    const result = await runGenerate(["--checkpoint", missing]);
    assert.notEqual(result.code, 0);
    assert.equal(result.stdout, "");
    const lines = result.stderr.trimEnd().split("\n");
    assert.equal(lines.length, 1, `stderr: ${result.stderr}`);
    assert.match(lines[0], /^generate: .*nothing_here\.json: file not found/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("bin/generate reports a corrupt checkpoint in one line", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const checkpoint = await makeCheckpoint(dir);
    const weights = checkpoint.replace(/\.json$/, ".safetensors");
    const bytes = await Deno.readFile(weights);
    bytes[bytes.length - 1] ^= 0xff;
    await Deno.writeFile(weights, bytes);

    const result = await runGenerate(["--checkpoint", checkpoint]);
    assert.equal(result.code, 1);
    const lines = result.stderr.trimEnd().split("\n");
    assert.equal(lines.length, 1, `stderr: ${result.stderr}`);
    assert.match(lines[0], /^generate: .*SHA-256 checksum mismatch/);

    const sidecar = JSON.parse(await Deno.readTextFile(checkpoint));
    sidecar.meta.tokenizer = { format: "something else" };
    await Deno.writeTextFile(checkpoint, JSON.stringify(sidecar));
    const broken = await runGenerate(["--checkpoint", checkpoint]);
    assert.equal(broken.code, 1);
    assert.equal(broken.stderr.trimEnd().split("\n").length, 1, `stderr: ${broken.stderr}`);
    assert.match(broken.stderr, /^generate: /);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("bin/generate rejects invalid flags in one line", async () => {
  const cases: [string[], RegExp][] = [
    [[], /missing --checkpoint PATH/],
    [
      ["--checkpoint", "x.json", "--temperature", "-1"],
      /invalid --temperature "-1": expected a number >= 0/,
    ],
    [["--checkpoint", "x.json", "--top-k", "0"], /invalid --top-k "0": expected an integer >= 1/],
    [
      ["--checkpoint", "x.json", "--top-p", "1.5"],
      /invalid --top-p "1\.5": expected a number in \(0, 1\]/,
    ],
    [
      ["--checkpoint", "x.json", "--max-tokens", "ten"],
      /invalid --max-tokens "ten": expected an integer >= 0/,
    ],
    [["--checkpoint", "x.json", "--seed", "-3"], /invalid --seed "-3"/],
    [
      ["--checkpoint", "x.json", "--prompt", ""],
      /invalid --prompt "": expected at least one character/,
    ],
    [["--checkpoint", "x.json", "--colour"], /Unknown option '--colour'/],
  ];
  for (const [args, message] of cases) {
    const result = await runGenerate(args);
    assert.equal(result.code, 2, `${args.join(" ")}: stderr ${result.stderr}`);
    const lines = result.stderr.trimEnd().split("\n");
    assert.equal(lines.length, 1, `${args.join(" ")}: stderr ${result.stderr}`);
    assert.match(lines[0], message, args.join(" "));
  }
});

Deno.test("bin/generate help lists every flag", async () => {
  const result = await runGenerate(["--help"]);
  assert.equal(result.code, 0);
  for (
    const flag of [
      "--checkpoint",
      "--prompt",
      "--max-tokens",
      "--temperature",
      "--top-k",
      "--top-p",
      "--stride",
      "--seed",
      "--no-cache",
      "--help",
    ]
  ) {
    assert.ok(result.stdout.includes(flag), `help does not mention ${flag}`);
  }
});
