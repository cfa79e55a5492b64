import assert from "node:assert/strict";
import { GPT, type GPTConfig, pickToken, sample } from "../lib/gpt.ts";
import { namedParameters } from "../lib/nn.ts";
import { AdamW } from "../lib/optim.ts";
import { Random } from "../lib/random.ts";
import { decodeSafetensors } from "../lib/safetensors.ts";

const TINY: GPTConfig = { vocabSize: 11, contextLength: 5, dModel: 8, layers: 2, heads: 2 };

async function fixture(name: string) {
  const url = new URL(`./fixtures/gpt_tiny/${name}`, import.meta.url);
  return decodeSafetensors(await Deno.readFile(url), name).tensors;
}

Deno.test("GPT parameter names follow GPT-2", () => {
  const names = [...namedParameters(new GPT(TINY)).keys()];
  assert.deepEqual(names.slice(0, 2), ["wte.weight", "wpe.weight"]);
  assert.deepEqual(names.slice(2, 14), [
    "h.0.ln_1.weight",
    "h.0.ln_1.bias",
    "h.0.attn.c_attn.weight",
    "h.0.attn.c_attn.bias",
    "h.0.attn.c_proj.weight",
    "h.0.attn.c_proj.bias",
    "h.0.ln_2.weight",
    "h.0.ln_2.bias",
    "h.0.mlp.c_fc.weight",
    "h.0.mlp.c_fc.bias",
    "h.0.mlp.c_proj.weight",
    "h.0.mlp.c_proj.bias",
  ]);
  assert.deepEqual(names.slice(-3), ["ln_f.weight", "ln_f.bias", "lm_head.weight"]);
  const shapes = new Map([...namedParameters(new GPT(TINY))].map(([n, p]) => [n, p.shape]));
  assert.deepEqual(shapes.get("h.1.attn.c_attn.weight"), [8, 24]);
  assert.deepEqual(shapes.get("h.1.mlp.c_proj.weight"), [32, 8]);
  assert.deepEqual(shapes.get("lm_head.weight"), [11, 8]);
});

Deno.test("GPT loss and gradients match a float64 reference", async () => {
  const weights = await fixture("weights.safetensors");
  const tokens = await fixture("tokens.safetensors");
  const expected = await fixture("grads.safetensors");

  for (const attention of ["fused", "reference"] as const) {
    const model = new GPT(TINY, { attention });
    for (const [name, p] of namedParameters(model)) p.data.set(weights.get(name)!.data);
    const inputs = Int32Array.from(tokens.get("inputs")!.data);
    const targets = Int32Array.from(tokens.get("targets")!.data);

    const { loss } = model.forward(inputs, 2, 5, targets);
    assert.ok(
      Math.abs(loss!.item() - expected.get("loss")!.data[0]) < 1e-5,
      `${attention}: loss ${loss!.item()} vs ${expected.get("loss")!.data[0]}`,
    );
    loss!.backward();
    for (const [name, p] of namedParameters(model)) {
      const want = expected.get(name)!.data;
      let worst = 0;
      for (let i = 0; i < want.length; i++) {
        worst = Math.max(worst, Math.abs(p.grad![i] - want[i]) / Math.max(1e-3, Math.abs(want[i])));
      }
      assert.ok(worst < 2e-3, `${attention}: gradient of ${name} differs by ${worst} (relative)`);
    }
  }
});

Deno.test("GPT initial loss is near ln(V)", () => {
  const config = { vocabSize: 64, contextLength: 16, dModel: 32, layers: 2, heads: 4 };
  const model = new GPT(config, { seed: 1 });
  const random = new Random(2);
  const ids = Int32Array.from({ length: 4 * 16 }, () => random.int(64));
  const loss = model.evaluate(ids, ids, 4, 16);
  assert.ok(Math.abs(loss - Math.log(64)) < 0.1, `initial loss ${loss}, ln(64) = ${Math.log(64)}`);
});

Deno.test("GPT drives the loss on one batch near zero", () => {
  const config = { vocabSize: 16, contextLength: 8, dModel: 32, layers: 2, heads: 4 };
  const model = new GPT(config, { seed: 5 });
  const random = new Random(9);
  const B = 2;
  const T = 8;
  const ids = Int32Array.from({ length: B * T }, () => random.int(16));
  const targets = Int32Array.from({ length: B * T }, () => random.int(16));
  const optimizer = new AdamW(model.parameters(), { lr: 1e-2, weightDecay: 0 });

  let last = Infinity;
  for (let step = 0; step < 150; step++) {
    const { loss } = model.forward(ids, B, T, targets);
    last = loss!.item();
    loss!.backward();
    loss!.release();
    optimizer.step();
    optimizer.zeroGrad();
  }
  assert.ok(last < 0.05, `loss after 150 steps on one batch: ${last}`);
});

Deno.test("GPT rejects a sequence longer than the context", () => {
  const model = new GPT(TINY);
  assert.throws(() => model.forward(new Int32Array(6), 1, 6), /exceeds the context length 5/);
  assert.throws(() => new GPT({ ...TINY, heads: 3 }), /heads \(3\) must divide dModel \(8\)/);
});

Deno.test("sampling is seeded and greedy at temperature 0", () => {
  const model = new GPT(TINY, { seed: 4 });
  const a = sample(model, [1, 2], { maxTokens: 8, temperature: 1, random: new Random(3) });
  const b = sample(model, [1, 2], { maxTokens: 8, temperature: 1, random: new Random(3) });
  assert.deepEqual(a, b);
  assert.equal(a.length, 8);
  assert.equal(pickToken(Float32Array.of(0.1, 3, -1), 0, new Random(0)), 1);
});
