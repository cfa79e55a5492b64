import assert from "node:assert/strict";
import { type Backend, jsBackend } from "../lib/backend.ts";
import { GPT } from "../lib/gpt.ts";
import { AdamW, decayGroups } from "../lib/optim.ts";
import { Random } from "../lib/random.ts";
import { setBackend } from "../lib/tensor.ts";
import { createWasmBackend } from "../lib/wasm.ts";

/** Losses of different backends agree to this much over a few float32 steps. */
const TOLERANCE = 1e-4;

/** Trains a small GPT for a few AdamW steps on `backend` and returns each step's loss. */
function trainLosses(backend: Backend): number[] {
  setBackend(backend);
  try {
    const config = { vocabSize: 50, contextLength: 16, dModel: 32, layers: 2, heads: 4 };
    const model = new GPT(config, { seed: 3 });
    const optimizer = new AdamW(decayGroups(model.parameters(), 0.1), { lr: 3e-3, backend });
    const random = new Random(4);
    const B = 4;
    const T = 16;
    const inputs = Int32Array.from({ length: B * T }, () => random.int(50));
    const targets = Int32Array.from({ length: B * T }, () => random.int(50));

    const losses: number[] = [];
    for (let step = 0; step < 6; step++) {
      const { loss } = model.forward(inputs, B, T, targets);
      losses.push(loss!.item());
      loss!.backward();
      loss!.release();
      optimizer.clipGradNorm(1);
      optimizer.step();
      optimizer.zeroGrad();
    }
    return losses;
  } finally {
    setBackend(jsBackend);
  }
}

Deno.test("training losses agree across backends", async () => {
  const reference = trainLosses(jsBackend);
  assert.ok(reference[5] < reference[0] - 0.1, `the js losses did not fall: ${reference}`);

  for (const threads of [1, 2]) {
    const wasm = await createWasmBackend({ threads });
    const losses = trainLosses(wasm);
    await wasm.close();
    losses.forEach((loss, step) => {
      assert.ok(
        Math.abs(loss - reference[step]) < TOLERANCE,
        `wasm with ${threads} thread(s), step ${step}: ${loss} vs js ${reference[step]}`,
      );
    });
  }
});
