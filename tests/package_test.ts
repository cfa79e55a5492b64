import assert from "node:assert/strict";
import { join } from "node:path";

const MOD = new URL("../mod.ts", import.meta.url).href;

const PROGRAM = `import { AdamW, BPETokenizer, generate, GPT, Random } from "rinzler";

const text = "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife. ".repeat(8);
const tokenizer = BPETokenizer.train(text, 30);
const ids = Int32Array.from(tokenizer.encode(text));
const model = new GPT({ vocabSize: tokenizer.vocabSize, contextLength: 16, dModel: 16, layers: 1, heads: 2 });
const optimizer = new AdamW(model.parameters(), { lr: 1e-2 });
const losses: number[] = [];
for (let step = 0; step < 20; step++) {
  const { loss } = model.forward(ids.subarray(0, 16), 1, 16, ids.subarray(1, 17));
  losses.push(loss!.item());
  loss!.backward();
  loss!.release();
  optimizer.step();
  optimizer.zeroGrad();
}
const sample = generate(model, [ids[0]], { maxTokens: 8, temperature: 0.8, random: new Random(1) });
console.log(JSON.stringify({ first: losses[0], last: losses[19], sample: tokenizer.decode(sample) }));
`;

Deno.test("package imports from a scratch project", async () => {
  // A user's project in its own folder, importing the package through its import map.
  const dir = await Deno.makeTempDir({ prefix: "rinzler-user-" });
  await Deno.writeTextFile(join(dir, "deno.json"), JSON.stringify({ imports: { rinzler: MOD } }));
  await Deno.writeTextFile(join(dir, "main.ts"), PROGRAM);

  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-read", "main.ts"],
    cwd: dir,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(output.stderr);
  assert.equal(output.code, 0, stderr);

  const result = JSON.parse(new TextDecoder().decode(output.stdout));
  assert.ok(result.last < result.first, `loss went from ${result.first} to ${result.last}`);
  assert.equal(typeof result.sample, "string");
  assert.ok(result.sample.length > 0);
  await Deno.remove(dir, { recursive: true });
});
