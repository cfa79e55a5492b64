/**
 * Measures generation speed with and without the KV cache.
 *
 * Builds a randomly initialised model at the trainer's default size
 * (vocabulary 600, context 128, d_model 64, 4 layers, 4 heads), then times
 * `generate` from a one-token prompt for 128 and 512 new tokens, with the
 * cache on and off. 512 tokens run past the context, where the window slides
 * (see `lib/generate.ts`), so the stride-1 rows show the cost of re-encoding
 * the window for every token and the stride-64 rows what a larger stride
 * saves. Runs on the plain TypeScript backend (`js`) on one thread.
 *
 * Usage: deno run bin/bench_generate.ts
 *
 * @module
 */

import { generate } from "../lib/generate.ts";
import { GPT, type GPTConfig } from "../lib/gpt.ts";
import { Random } from "../lib/random.ts";
import { getBackend } from "../lib/tensor.ts";

const CONFIG: GPTConfig = { vocabSize: 600, contextLength: 128, dModel: 64, layers: 4, heads: 4 };
const LENGTHS = [128, 512];
const STRIDES = [1, 64];

/** Returns the seconds one `generate` call takes. */
function time(model: GPT, maxTokens: number, cache: boolean, stride: number): number {
  const started = performance.now();
  generate(model, [1], { maxTokens, temperature: 0.8, random: new Random(0), cache, stride });
  return (performance.now() - started) / 1000;
}

function main(): void {
  const model = new GPT(CONFIG, { seed: 0 });
  const { vocabSize, contextLength, dModel, layers, heads } = CONFIG;
  console.log(
    `model: vocabulary ${vocabSize}, context ${contextLength}, d_model ${dModel}, ${layers} layers, ` +
      `${heads} heads, random weights; backend ${getBackend().name}; Deno ${Deno.version.deno}`,
  );

  // Warm-up, so that the first timed run is not also compiling the kernels.
  time(model, 32, true, 1);
  time(model, 32, false, 1);

  console.log("");
  console.log("new tokens  stride  cache   seconds   tokens/s  speed-up");
  for (const length of LENGTHS) {
    for (const stride of STRIDES) {
      // Below the context length the window never slides, so the stride changes nothing.
      if (stride !== 1 && length <= contextLength) continue;
      const off = time(model, length, false, stride);
      const on = time(model, length, true, stride);
      const row = (cache: string, seconds: number, speedUp: string) =>
        console.log(
          `${String(length).padStart(10)}  ${String(stride).padStart(6)}  ${cache.padEnd(5)}  ` +
            `${seconds.toFixed(3).padStart(8)}  ${(length / seconds).toFixed(1).padStart(9)}  ${
              speedUp.padStart(8)
            }`,
        );
      row("off", off, "");
      row("on", on, `${(off / on).toFixed(1)}×`);
    }
  }
}

if (import.meta.main) {
  main();
}
