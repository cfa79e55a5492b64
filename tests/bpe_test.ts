import assert from "node:assert/strict";

import {
  BPE_FORMAT,
  BPE_VERSION,
  BPETokenizer,
  codePointsOf,
  encodeReference,
  trainReference,
  UNKNOWN_ID,
} from "../lib/bpe.ts";
import { ensureDefaultCorpus } from "../lib/corpus.ts";

const ENGLISH = "the cat sat on the mat. the cat ate the rat. that is that.\n".repeat(4);
const EMOJI = "👍🏽 ok 👍🏽 👩‍👩‍👧‍👦 family 👩‍👩‍👧‍👦 🇯🇵🇫🇷 flags 🇯🇵🇫🇷 🏳️‍🌈 🏳️‍🌈";
const CJK = "東京は日本の首都です。東京の人口は多い。日本語の文章、日本語の文章。";
const COMBINING =
  "e\u0301 e\u0301 cafe\u0301 n\u0303 n\u0303 a\u0308\u0304 a\u0308\u0304 Z\u0351\u0352\u0353";
const REPEATS = "aaaaaaaaaa bbbbbbbb abababab aaaa ba ba ba";

/** Texts on which fast and reference training and encoding are compared. */
const TEXTS: Record<string, string> = {
  english: ENGLISH,
  emoji: EMOJI,
  cjk: CJK,
  combining: COMBINING,
  repeats: REPEATS,
  mixed: `${ENGLISH}${EMOJI}\n${CJK}\n${COMBINING}\n${REPEATS}`,
  empty: "",
  single: "x",
};

/** Returns a pseudo-random text over a small alphabet, deterministic in `seed`. */
function randomText(seed: number, length: number, alphabet: string): string {
  const characters = [...alphabet];
  let state = seed;
  let text = "";
  for (let i = 0; i < length; i++) {
    state = (state * 1103515245 + 12345) % 2147483648;
    text += characters[state % characters.length];
  }
  return text;
}

Deno.test("train matches trainReference on fixed texts", () => {
  for (const [name, text] of Object.entries(TEXTS)) {
    const fast = BPETokenizer.train(text, 60);
    const reference = trainReference(text, 60);
    assert.deepEqual(fast.toJSON(), reference.toJSON(), `text "${name}"`);
  }
});

Deno.test("train matches trainReference on random texts", () => {
  for (let seed = 1; seed <= 20; seed++) {
    const text = randomText(seed, 400, seed % 2 === 0 ? "ab" : "abc d😀");
    const fast = BPETokenizer.train(text, 80);
    const reference = trainReference(text, 80);
    assert.deepEqual(fast.merges, reference.merges, `seed ${seed}`);
  }
});

Deno.test("train breaks count ties by smallest ids", () => {
  // (a, b), (c, d) and (d, a) each occur twice. The alphabet ids are " "=1, a=2, b=3, c=4, d=5,
  // so (a, b) = (2, 3) has the smallest left id and wins.
  const tokenizer = BPETokenizer.train("cdab cdab", 1);
  assert.deepEqual(tokenizer.alphabet, [..." abcd"].map((c) => c.codePointAt(0)));
  assert.deepEqual(tokenizer.merges, [[2, 3]]);
});

Deno.test("train counts overlapping pairs", () => {
  // "aaa" contains (a, a) twice, so it is merged although one merge replaces only one pair.
  const tokenizer = BPETokenizer.train("aaa", 5);
  assert.deepEqual(tokenizer.merges, [[1, 1]]);
  assert.deepEqual(tokenizer.encode("aaa"), [2, 1]);
});

Deno.test("train stops when no pair repeats", () => {
  const tokenizer = BPETokenizer.train("abcdef", 10);
  assert.equal(tokenizer.merges.length, 0);
  assert.equal(tokenizer.vocabSize, 7);
});

Deno.test("train reports progress per merge", () => {
  const calls: [number, number][] = [];
  BPETokenizer.train(ENGLISH, 5, { onProgress: (done, total) => calls.push([done, total]) });
  assert.deepEqual(calls, [[1, 5], [2, 5], [3, 5], [4, 5], [5, 5]]);
});

Deno.test("train rejects invalid merge counts", () => {
  assert.throws(() => BPETokenizer.train("abc", -1), RangeError);
  assert.throws(() => BPETokenizer.train("abc", 1.5), RangeError);
  assert.throws(() => trainReference("abc", Number.NaN), RangeError);
});

Deno.test("encode matches encodeReference", () => {
  const tokenizer = BPETokenizer.train(TEXTS.mixed, 120);
  const inputs = [
    ...Object.values(TEXTS),
    "unseen: Ω ∑ 😀 and seen: the cat",
    randomText(7, 500, "the cat😀東京"),
  ];
  for (const text of inputs) {
    assert.deepEqual(
      tokenizer.encode(text),
      encodeReference(tokenizer, text),
      JSON.stringify(text),
    );
  }
});

Deno.test("encode of training text uses last merge", () => {
  // Encoding the training text repeats the merges of training in the same order. The token of
  // the last merge occurred at least once then, and no later merge can consume it.
  const tokenizer = BPETokenizer.train(ENGLISH, 30);
  const ids = tokenizer.encode(ENGLISH);
  assert.equal(tokenizer.merges.length, 30);
  assert.ok(ids.includes(tokenizer.vocabSize - 1), "last merge used");
  assert.ok(!ids.includes(UNKNOWN_ID), "no unknown ids");
  assert.ok(ids.length < codePointsOf(ENGLISH).length);
});

Deno.test("round trip of seen text", () => {
  for (const [name, text] of Object.entries(TEXTS)) {
    const tokenizer = BPETokenizer.train(text, 50);
    assert.equal(tokenizer.decode(tokenizer.encode(text)), text, `text "${name}"`);
  }
});

Deno.test("round trip of emoji sequences", () => {
  const tokenizer = BPETokenizer.train(EMOJI, 40);
  for (const text of ["👩‍👩‍👧‍👦", "🇯🇵🇫🇷", "🏳️‍🌈", "👍🏽", EMOJI]) {
    assert.equal(tokenizer.decode(tokenizer.encode(text)), text);
  }
  // A flag is two regional indicators, each one a surrogate pair in UTF-16.
  for (const id of tokenizer.encode("🇯🇵")) {
    assert.ok(tokenizer.decode([id]).isWellFormed(), `token ${id}`);
  }
});

Deno.test("round trip of CJK and combining marks", () => {
  const tokenizer = BPETokenizer.train(`${CJK}${COMBINING}`, 40);
  assert.equal(tokenizer.decode(tokenizer.encode(CJK)), CJK);
  assert.equal(tokenizer.decode(tokenizer.encode(COMBINING)), COMBINING);
  assert.equal(tokenizer.decode(tokenizer.encode("e\u0301")), "e\u0301");
});

Deno.test("unseen characters decode to U+FFFD", () => {
  const tokenizer = BPETokenizer.train("the cat sat on the mat", 10);
  const ids = tokenizer.encode("the bat 😀!");
  assert.equal(ids.filter((id) => id === UNKNOWN_ID).length, 3);
  assert.equal(tokenizer.decode(ids), "the \uFFFDat \uFFFD\uFFFD");
});

Deno.test("lone surrogates read as U+FFFD", () => {
  const text = "a\uD800b\uDC00c\uD83D";
  assert.deepEqual(codePointsOf(text), [0x61, 0xfffd, 0x62, 0xfffd, 0x63, 0xfffd]);

  const tokenizer = BPETokenizer.train(text, 5);
  assert.ok(tokenizer.alphabet.includes(0xfffd));
  assert.equal(tokenizer.decode(tokenizer.encode(text)), "a\uFFFDb\uFFFDc\uFFFD");
  assert.deepEqual(tokenizer.toJSON(), trainReference(text, 5).toJSON());
  assert.deepEqual(tokenizer.encode(text), encodeReference(tokenizer, text));
});

Deno.test("no token decodes to a lone surrogate", () => {
  const tokenizer = BPETokenizer.train(TEXTS.mixed, 200);
  for (let id = 0; id < tokenizer.vocabSize; id++) {
    const text = tokenizer.decode([id]);
    assert.ok(text.length > 0, `token ${id} is empty`);
    assert.ok(text.isWellFormed(), `token ${id} ${JSON.stringify(text)} has a lone surrogate`);
  }
});

Deno.test("decode rejects invalid ids", () => {
  const tokenizer = BPETokenizer.train("abab", 1);
  assert.throws(() => tokenizer.decode([tokenizer.vocabSize]), RangeError);
  assert.throws(() => tokenizer.decode([-1]), RangeError);
  assert.throws(() => tokenizer.decode([1.5]), RangeError);
});

Deno.test("JSON round trip", () => {
  const tokenizer = BPETokenizer.train(TEXTS.mixed, 100);
  const json = JSON.parse(JSON.stringify(tokenizer));
  assert.equal(json.format, BPE_FORMAT);
  assert.equal(json.version, BPE_VERSION);

  const loaded = BPETokenizer.fromJSON(json);
  assert.equal(loaded.vocabSize, tokenizer.vocabSize);
  assert.deepEqual(loaded.toJSON(), tokenizer.toJSON());
  assert.deepEqual(loaded.encode(TEXTS.mixed), tokenizer.encode(TEXTS.mixed));
});

Deno.test("fromJSON rejects malformed input", () => {
  const valid = BPETokenizer.train("abab cdcd", 2).toJSON();
  const cases: [string, unknown, RegExp][] = [
    ["null", null, /expected an object/],
    ["array", [], /expected an object/],
    ["wrong format", { ...valid, format: "gpt2" }, /"format" must be "rinzler-bpe"/],
    ["wrong version", { ...valid, version: 2 }, /unsupported "version" 2/],
    ["missing alphabet", { ...valid, alphabet: undefined }, /"alphabet" must be an array/],
    ["missing merges", { ...valid, merges: "x" }, /"merges" must be an array/],
    ["negative code point", { ...valid, alphabet: [-1, 97] }, /alphabet\[0\]/],
    ["surrogate code point", { ...valid, alphabet: [97, 0xd800] }, /alphabet\[1\]/],
    ["too large code point", { ...valid, alphabet: [0x110000] }, /alphabet\[0\]/],
    ["unsorted alphabet", { ...valid, alphabet: [98, 97, 99, 100, 32] }, /strictly ascending/],
    ["duplicate code point", { ...valid, alphabet: [32, 97, 97, 99, 100] }, /strictly ascending/],
    ["merge not a pair", { ...valid, merges: [[1, 2, 3]] }, /merges\[0\] must be a pair/],
    ["merge of unknown", { ...valid, merges: [[0, 1]] }, /merges\[0\] contains 0/],
    ["merge of itself", { ...valid, merges: [[1, 6]] }, /merges\[0\] contains 6/],
    ["merge of a string", { ...valid, merges: [["1", 2]] }, /merges\[0\] contains "1"/],
    ["repeated merge", { ...valid, merges: [[2, 3], [2, 3]] }, /merges\[1\] repeats merges\[0\]/],
  ];
  for (const [name, json, message] of cases) {
    assert.throws(() => BPETokenizer.fromJSON(json), message, name);
  }
});

Deno.test("whole corpus trains 1000 merges", async () => {
  const path = await ensureDefaultCorpus();
  const text = await Deno.readTextFile(path);

  let start = performance.now();
  const tokenizer = BPETokenizer.train(text, 1000);
  const trainSeconds = (performance.now() - start) / 1000;

  start = performance.now();
  const ids = tokenizer.encode(text);
  const encodeSeconds = (performance.now() - start) / 1000;

  const characters = codePointsOf(text).length;
  console.log(
    `${path}: ${characters} code points, 1000 merges in ${trainSeconds.toFixed(1)} s, ` +
      `encode in ${encodeSeconds.toFixed(1)} s, ${(ids.length / characters).toFixed(3)} tokens ` +
      `per code point`,
  );
  assert.equal(tokenizer.merges.length, 1000);
  assert.ok(trainSeconds < 60, `training took ${trainSeconds} s`);
  assert.equal(tokenizer.decode(ids), text);

  const slice = text.slice(1_000_000, 1_050_000);
  assert.equal(tokenizer.decode(tokenizer.encode(slice)), slice);
  assert.deepEqual(tokenizer.encode(slice), encodeReference(tokenizer, slice));
});
