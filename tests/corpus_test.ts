import assert from "node:assert/strict";
import { relative } from "node:path";

import {
  defaultCorpusPath,
  ensureDefaultCorpus,
  expandGlob,
  formatSotu,
  loadCorpus,
  parseSotu,
  type SotuAddress,
} from "../lib/corpus.ts";

/** Creates a temporary directory tree from `files` (path → contents) and returns its path. */
async function makeTree(files: Record<string, string | Uint8Array>): Promise<string> {
  const root = await Deno.makeTempDir({ prefix: "rinzler-corpus-test-" });
  for (const [path, contents] of Object.entries(files)) {
    const full = `${root}/${path}`;
    await Deno.mkdir(full.slice(0, full.lastIndexOf("/")), { recursive: true });
    if (typeof contents === "string") await Deno.writeTextFile(full, contents);
    else await Deno.writeFile(full, contents);
  }
  return root;
}

const TREE = {
  "b.txt": "bee",
  "a.txt": "ay",
  "c.md": "see",
  "a1.txt": "ay one",
  ".hidden.txt": "hidden",
  "sub/d.txt": "dee",
  "sub/deeper/e.txt": "ee",
  ".git/f.txt": "ignored",
};

Deno.test("expandGlob star stays in one directory", async () => {
  const root = await makeTree(TREE);
  try {
    assert.deepEqual(await expandGlob(`${root}/*.txt`), [
      `${root}/a.txt`,
      `${root}/a1.txt`,
      `${root}/b.txt`,
    ]);
    assert.deepEqual(await expandGlob(`${root}/*/*.txt`), [`${root}/sub/d.txt`]);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("expandGlob question mark matches one character", async () => {
  const root = await makeTree(TREE);
  try {
    assert.deepEqual(await expandGlob(`${root}/?.txt`), [`${root}/a.txt`, `${root}/b.txt`]);
    assert.deepEqual(await expandGlob(`${root}/a??.txt`), []);
    assert.deepEqual(await expandGlob(`${root}/a?.txt`), [`${root}/a1.txt`]);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("expandGlob double star recurses", async () => {
  const root = await makeTree(TREE);
  try {
    assert.deepEqual(await expandGlob(`${root}/**/*.txt`), [
      `${root}/a.txt`,
      `${root}/a1.txt`,
      `${root}/b.txt`,
      `${root}/sub/d.txt`,
      `${root}/sub/deeper/e.txt`,
    ]);
    assert.deepEqual(await expandGlob(`${root}/sub/**`), [
      `${root}/sub/d.txt`,
      `${root}/sub/deeper/e.txt`,
    ]);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("expandGlob hidden names need a dot", async () => {
  const root = await makeTree(TREE);
  try {
    assert.deepEqual(await expandGlob(`${root}/.*.txt`), [`${root}/.hidden.txt`]);
    assert.deepEqual(await expandGlob(`${root}/.git/*.txt`), [`${root}/.git/f.txt`]);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("expandGlob treats brackets literally", async () => {
  const root = await makeTree({ "[x]-1.txt": "x", "x-1.txt": "y" });
  try {
    assert.deepEqual(await expandGlob(`${root}/[x]-*.txt`), [`${root}/[x]-1.txt`]);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("expandGlob keeps relative paths relative", async () => {
  const root = await makeTree(TREE);
  try {
    const relativeRoot = relative(Deno.cwd(), root);
    assert.deepEqual(await expandGlob(`${relativeRoot}/?.txt`), [
      `${relativeRoot}/a.txt`,
      `${relativeRoot}/b.txt`,
    ]);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("loadCorpus joins files with newlines", async () => {
  const root = await makeTree(TREE);
  try {
    const corpus = await loadCorpus([`${root}/?.txt`, `${root}/*.md`]);
    assert.deepEqual(corpus.files, [`${root}/a.txt`, `${root}/b.txt`, `${root}/c.md`]);
    assert.equal(corpus.text, "ay\nbee\nsee");
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("loadCorpus reads each file once", async () => {
  const root = await makeTree(TREE);
  try {
    const corpus = await loadCorpus([`${root}/b.txt`, `${root}/*.txt`]);
    assert.deepEqual(corpus.files, [`${root}/b.txt`, `${root}/a.txt`, `${root}/a1.txt`]);
    assert.equal(corpus.text, "bee\nay\nay one");
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("loadCorpus rejects unmatched patterns", async () => {
  const root = await makeTree(TREE);
  try {
    await assert.rejects(loadCorpus([`${root}/*.csv`]), /No files match the corpus pattern/);
    await assert.rejects(loadCorpus([`${root}/nope/**/*.txt`]), /No files match/);
    await assert.rejects(loadCorpus([`${root}/missing.txt`]), /Corpus file not found/);
    await assert.rejects(loadCorpus([`${root}/a.txt`, `${root}/*.csv`]), /\*\.csv/);
    await assert.rejects(loadCorpus([]), /No corpus files given/);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("loadCorpus rejects directories and bad UTF-8", async () => {
  const root = await makeTree({ "bad.txt": new Uint8Array([0x61, 0xff, 0x62]), "dir/a.txt": "a" });
  try {
    await assert.rejects(loadCorpus([`${root}/dir`]), /is a directory/);
    await assert.rejects(loadCorpus([`${root}/bad.txt`]), /bad\.txt.*not valid UTF-8/);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("formatSotu orders addresses chronologically", () => {
  const addresses: SotuAddress[] = [
    { year: 1953, president: "Dwight D Eisenhower", text: "Second." },
    { year: 1952, president: "Harry S Truman", text: "Earlier." },
    { year: 1953, president: "Harry S Truman", text: "First." },
  ];
  const text = formatSotu(addresses);
  assert.equal(
    text,
    "Harry S Truman, 1952\nEarlier.\n\nHarry S Truman, 1953\nFirst.\n\n" +
      "Dwight D Eisenhower, 1953\nSecond.\n",
  );
  assert.deepEqual(parseSotu(text).map((a) => a.text), ["Earlier.", "First.", "Second."]);
});

Deno.test("formatSotu rejects line breaks", () => {
  assert.throws(
    () => formatSotu([{ year: 1800, president: "John Adams", text: "a\nb" }]),
    /1800 address by John Adams contains a line break/,
  );
});

Deno.test("parseSotu rejects malformed blocks", () => {
  assert.throws(() => parseSotu("No header\ntext\n"), /block 1/);
  assert.throws(() => parseSotu("A B, 1800\none\ntwo\n"), /block 1/);
  assert.throws(() => parseSotu("A B, 1800\none\n\nC D, 18\ntwo\n"), /block 2/);
});

Deno.test("default corpus holds every address", async () => {
  const path = await ensureDefaultCorpus();
  assert.equal(path, defaultCorpusPath);
  const addresses = parseSotu(await Deno.readTextFile(path));

  assert.equal(addresses.length, 233);
  assert.equal(`${addresses[0].president}, ${addresses[0].year}`, "George Washington, 1790");
  assert.equal(`${addresses.at(-1)!.president}, ${addresses.at(-1)!.year}`, "Joseph R Biden, 2021");
  for (let i = 1; i < addresses.length; i++) {
    assert.ok(addresses[i - 1].year <= addresses[i].year, `address ${i} out of order`);
  }
  const in1953 = addresses.filter((a) => a.year === 1953).map((a) => a.president);
  assert.deepEqual(in1953, ["Harry S Truman", "Dwight D Eisenhower"]);
  assert.ok(addresses.every((a) => a.text.length > 1000), "every address has its text");
});

Deno.test("ensureDefaultCorpus rebuilds the same file", async () => {
  const root = await Deno.makeTempDir({ prefix: "rinzler-corpus-test-" });
  try {
    const path = `${root}/nested/sotu.txt`;
    assert.equal(await ensureDefaultCorpus({ path }), path);
    const built = await Deno.readTextFile(path);
    assert.equal(built, await Deno.readTextFile(await ensureDefaultCorpus()));

    // An existing file is kept as it is unless `force` is set.
    await Deno.writeTextFile(path, "stale");
    await ensureDefaultCorpus({ path });
    assert.equal(await Deno.readTextFile(path), "stale");
    await ensureDefaultCorpus({ path, force: true });
    assert.equal(await Deno.readTextFile(path), built);

    const leftovers = [...Deno.readDirSync(`${root}/nested`)].map((entry) => entry.name);
    assert.deepEqual(leftovers, ["sotu.txt"]);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
