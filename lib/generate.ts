/**
 * Text generation with a key-value cache.
 *
 * A block's keys and values for position t depend only on the tokens at
 * positions 0 … t, so they stay valid while later tokens arrive. `KVCache`
 * stores them for every layer and runs each new token as a single row
 * through the blocks, attending to the stored keys and values. One token at
 * position t then costs O(C²) for the matrix products plus O(t·C) for the
 * attention, where re-running `model.forward` on the whole window costs
 * O(t·C²) + O(t²·C).
 *
 * When the sequence outgrows the context. The model has learned absolute
 * position embeddings (`wpe`) for positions 0 … contextLength − 1 only, so
 * the window of tokens fed to the model has to move. Moving it shifts every
 * token to a new position, and every cached key and value of layer 1
 * onwards then differs from what `model.forward` computes on the new window.
 * A rolling buffer that kept them would compute a different function.
 * `generate` therefore rebuilds the cache: when a new token would make the
 * window longer than the context, the window start moves forward by
 * `stride` tokens and the remaining window is encoded again from position 0.
 * With the default stride of 1 each token is predicted from the last
 * `contextLength` tokens, as `sample` in `lib/gpt.ts` does, but once the
 * context is full each token costs one whole-window encoding, about as much
 * as `cache: false`. A larger stride rebuilds once every `stride` tokens,
 * and each token is then predicted from between `contextLength − stride + 1`
 * and `contextLength` tokens.
 *
 * @example
 * ```ts
 * import { generate } from "./generate.ts";
 * import { GPT } from "./gpt.ts";
 * import { Random } from "./random.ts";
 * const model = new GPT({ vocabSize: 50, contextLength: 16, dModel: 32, layers: 2, heads: 4 });
 * const random = new Random(1);
 * const ids = generate(model, [1, 2, 3], { maxTokens: 20, temperature: 0.8, topK: 10, random });
 * ```
 *
 * @module
 */

import type { Backend } from "./backend.ts";
import type { GPT } from "./gpt.ts";
import { Random } from "./random.ts";
import { getBackend, noGrad } from "./tensor.ts";

// ---------------------------------------------------------------------------
// The cached forward pass.

/** Shapes of one model, read once from its config. */
interface Dimensions {
  /** V: vocabulary size. */
  vocab: number;
  /** T: context length, the most positions the cache holds. */
  context: number;
  /** C: channels of the residual stream. */
  channels: number;
  /** H: attention heads. */
  heads: number;
  /** D = C / H: channels per head. */
  headSize: number;
}

/**
 * Keys and values of every layer for the positions run so far, plus the
 * work buffers of one forward step. Running a token appends one position.
 *
 * Buffers come from the backend that is active when the cache is created
 * and go back to it in `dispose`. The model's weights must be readable by
 * that backend's kernels, which holds when the model was created under it.
 */
export class KVCache {
  /** The model whose keys and values are cached. */
  readonly model: GPT;
  /**
   * Keys per layer, laid out `[H, T, D]`: head h at position t starts at
   * `(h·T + t)·D`, so each head's keys are one dense `[T, D]` matrix.
   */
  readonly keys: Float32Array[];
  /** Values per layer, laid out as `keys`. */
  readonly values: Float32Array[];

  #length = 0;
  readonly #backend: Backend;
  readonly #dims: Dimensions;
  readonly #scale: number;

  // Work buffers of one step, reused by every step.
  /** The residual stream `[C]`. */
  readonly #x: Float32Array;
  /** LayerNorm output `[C]`. */
  readonly #normed: Float32Array;
  /** Query, key and value of the new position, side by side `[3C]`. */
  readonly #qkv: Float32Array;
  /** Attention scores, then weights, one row per head `[H, n]` for n cached positions. */
  readonly #scores: Float32Array;
  readonly #weights: Float32Array;
  /** Attention output, heads side by side `[C]`. */
  readonly #attended: Float32Array;
  /** Output of a projection into the residual stream `[C]`. */
  readonly #projected: Float32Array;
  /** MLP hidden layer before and after the GELU `[4C]`. */
  readonly #hidden: Float32Array;
  readonly #activated: Float32Array;
  /** Next-token logits `[V]`. */
  readonly #logits: Float32Array;
  /** LayerNorm statistics of the one row, which only a backward pass would read. */
  readonly #mean: Float32Array;
  readonly #rstd: Float32Array;

  /** Allocates an empty cache for `model`. */
  constructor(model: GPT) {
    const { vocabSize, contextLength, dModel, heads, layers } = model.config;
    this.model = model;
    this.#backend = getBackend();
    this.#dims = {
      vocab: vocabSize,
      context: contextLength,
      channels: dModel,
      heads,
      headSize: dModel / heads,
    };
    this.#scale = 1 / Math.sqrt(dModel / heads);

    const alloc = (length: number) => this.#backend.alloc(length);
    this.keys = Array.from({ length: layers }, () => alloc(contextLength * dModel));
    this.values = Array.from({ length: layers }, () => alloc(contextLength * dModel));
    this.#x = alloc(dModel);
    this.#normed = alloc(dModel);
    this.#qkv = alloc(3 * dModel);
    this.#scores = alloc(heads * contextLength);
    this.#weights = alloc(heads * contextLength);
    this.#attended = alloc(dModel);
    this.#projected = alloc(dModel);
    this.#hidden = alloc(4 * dModel);
    this.#activated = alloc(4 * dModel);
    this.#logits = alloc(vocabSize);
    this.#mean = alloc(1);
    this.#rstd = alloc(1);
  }

  /** Number of positions cached, from 0 to the context length. */
  get length(): number {
    return this.#length;
  }

  /** Forgets every cached position, so the next token goes to position 0. */
  clear(): void {
    this.#length = 0;
  }

  /**
   * Runs `token` at the next position and returns its next-token logits
   * `[V]`. These equal the last row of `model.forward` on all the tokens
   * run since the last `clear`. The returned buffer is overwritten by the
   * next call. Throws a RangeError when the cache is full or the id is not
   * in the vocabulary.
   */
  forward(token: number): Float32Array {
    this.#step(token);
    this.#computeLogits();
    return this.#logits;
  }

  /**
   * Runs `tokens` one position after another and returns the logits of the
   * last one, as `forward` would. The language-model head runs for the last
   * position only, because `prefill` returns no other logits.
   */
  prefill(tokens: readonly number[]): Float32Array {
    if (tokens.length === 0) throw new RangeError("prefill needs at least one token");
    for (const token of tokens) this.#step(token);
    this.#computeLogits();
    return this.#logits;
  }

  /** Hands every buffer back to the backend. The cache cannot be used afterwards. */
  dispose(): void {
    const buffers = [
      ...this.keys,
      ...this.values,
      this.#x,
      this.#normed,
      this.#qkv,
      this.#scores,
      this.#weights,
      this.#attended,
      this.#projected,
      this.#hidden,
      this.#activated,
      this.#logits,
      this.#mean,
      this.#rstd,
    ];
    for (const buffer of buffers) this.#backend.free(buffer);
  }

  /** Runs one token through the blocks, leaving the final residual stream in `#x`. */
  #step(token: number): void {
    const { vocab, context, channels: C } = this.#dims;
    const position = this.#length;
    if (position >= context) {
      throw new RangeError(
        `the KV cache is full at the model's context length of ${context} positions: ` +
          "call clear() and run the window again",
      );
    }
    if (!(Number.isInteger(token) && token >= 0 && token < vocab)) {
      throw new RangeError(`token id ${token} is not in the vocabulary [0, ${vocab})`);
    }

    // Token embedding plus position embedding, as `model.forward` adds them.
    const wte = this.model.wte.weight.data;
    const wpe = this.model.wpe.weight.data;
    const x = this.#x;
    for (let c = 0; c < C; c++) x[c] = wte[token * C + c] + wpe[position * C + c];

    this.model.blocks.forEach((block, layer) => {
      // x + attn(ln_1(x))
      this.#layerNorm(x, block.ln1.weight.data, block.ln1.bias.data, block.ln1.eps);
      this.#linear(
        this.#normed,
        block.attn.cAttn.weight.data,
        block.attn.cAttn.bias?.data,
        this.#qkv,
        C,
        3 * C,
      );
      this.#storeKeyValue(layer, position);
      this.#attend(layer, position + 1);
      this.#linear(
        this.#attended,
        block.attn.cProj.weight.data,
        block.attn.cProj.bias?.data,
        this.#projected,
        C,
        C,
      );
      for (let c = 0; c < C; c++) x[c] += this.#projected[c];

      // x + mlp(ln_2(x))
      this.#layerNorm(x, block.ln2.weight.data, block.ln2.bias.data, block.ln2.eps);
      this.#linear(
        this.#normed,
        block.mlp.cFc.weight.data,
        block.mlp.cFc.bias?.data,
        this.#hidden,
        C,
        4 * C,
      );
      this.#backend.geluForward(this.#hidden, this.#activated, 4 * C);
      this.#linear(
        this.#activated,
        block.mlp.cProj.weight.data,
        block.mlp.cProj.bias?.data,
        this.#projected,
        4 * C,
        C,
      );
      for (let c = 0; c < C; c++) x[c] += this.#projected[c];
    });

    this.#length = position + 1;
  }

  /** Applies the final LayerNorm and the language-model head to `#x`. */
  #computeLogits(): void {
    const { vocab, channels } = this.#dims;
    const lnF = this.model.lnF;
    this.#layerNorm(this.#x, lnF.weight.data, lnF.bias.data, lnF.eps);
    // The head is stored [V, C], so it is used transposed: [1, C] · [V, C]ᵀ → [1, V].
    this.#backend.matmul(this.#normed, this.model.lmHead.data, this.#logits, {
      m: 1,
      n: vocab,
      k: channels,
      transB: true,
    });
  }

  /** Writes LayerNorm of the row `x` into `#normed`. */
  #layerNorm(x: Float32Array, gamma: Float32Array, beta: Float32Array, eps: number): void {
    const C = this.#dims.channels;
    this.#backend.layerNormForward(x, gamma, beta, this.#normed, this.#mean, this.#rstd, 1, C, eps);
  }

  /** Writes `input · weight + bias` for one row: `[1, inputs] · [inputs, outputs]`. */
  #linear(
    input: Float32Array,
    weight: Float32Array,
    bias: Float32Array | undefined,
    output: Float32Array,
    inputs: number,
    outputs: number,
  ): void {
    this.#backend.matmul(input, weight, output, { m: 1, n: outputs, k: inputs });
    if (bias !== undefined) { for (let j = 0; j < outputs; j++) output[j] += bias[j]; }
  }

  /** Copies the new position's key and value from `#qkv` into the layer's cache, head by head. */
  #storeKeyValue(layer: number, position: number): void {
    const { context: T, channels: C, heads: H, headSize: D } = this.#dims;
    const keys = this.keys[layer];
    const values = this.values[layer];
    for (let h = 0; h < H; h++) {
      const target = (h * T + position) * D;
      for (let d = 0; d < D; d++) {
        keys[target + d] = this.#qkv[C + h * D + d];
        values[target + d] = this.#qkv[2 * C + h * D + d];
      }
    }
  }

  /**
   * Attends from the new position's query to the first `n` cached positions
   * of every head, writing `[C]` into `#attended`. No mask is needed because
   * the cache contains no later positions.
   */
  #attend(layer: number, n: number): void {
    const { context: T, heads: H, headSize: D } = this.#dims;
    const backend = this.#backend;

    // Scores per head: q_h [1, D] · K_h [n, D]ᵀ → [1, n]. The query of head h
    // starts at h·D in `#qkv`, and its keys start at h·T·D in the cache.
    backend.matmul(this.#qkv, this.keys[layer], this.#scores, {
      m: 1,
      n,
      k: D,
      transB: true,
      batch: H,
      strideA: D,
      strideB: T * D,
      strideC: n,
    });
    for (let i = 0; i < H * n; i++) this.#scores[i] *= this.#scale;
    backend.softmaxForward(this.#scores, this.#weights, H, n);

    // Output per head: weights_h [1, n] · V_h [n, D] → [1, D], heads side by side.
    backend.matmul(this.#weights, this.values[layer], this.#attended, {
      m: 1,
      n: D,
      k: n,
      batch: H,
      strideA: n,
      strideB: T * D,
      strideC: D,
    });
  }
}

// ---------------------------------------------------------------------------
// Sampling.

/** Settings that choose how the next token is drawn from the logits. */
export interface SamplingOptions {
  /** Softmax temperature. 0 picks the most likely token (greedy decoding). Default 1. */
  temperature?: number;
  /** Draw only among the `topK` most likely tokens (default: the whole vocabulary). */
  topK?: number;
  /**
   * Nucleus sampling: draw only among the most likely tokens whose
   * probabilities, after `topK`, first reach `topP` in total (default 1: all).
   */
  topP?: number;
}

/** Returns the index of the largest logit, the lowest such index on a tie. */
export function argmax(logits: Float32Array): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

/**
 * Draws a token id from `logits` `[V]`. Temperature 0 returns the argmax
 * and draws nothing. Otherwise the probabilities are softmax(logits /
 * temperature), filtered by `topK` and then by `topP` (the order of
 * `_get_logits_warper` in Hugging Face transformers), and one
 * `random.next()` picks among the remaining tokens. A `topK` above V keeps
 * every token. Without filters the draw is the one `pickToken` in
 * `lib/gpt.ts` makes from the same generator.
 */
export function sampleToken(
  logits: Float32Array,
  options: SamplingOptions,
  random: Random,
): number {
  const temperature = options.temperature ?? 1;
  if (temperature === 0) return argmax(logits);

  const V = logits.length;
  const max = logits[argmax(logits)];
  const weights = new Float64Array(V);
  for (let i = 0; i < V; i++) weights[i] = Math.exp((logits[i] - max) / temperature);

  const topK = Math.min(options.topK ?? V, V);
  const topP = options.topP ?? 1;
  let candidates = Array.from({ length: V }, (_, i) => i);
  if (topK < V || topP < 1) {
    // Most likely first. A tie puts the lower id first, as `argmax` does.
    candidates.sort((a, b) => weights[b] - weights[a] || a - b);
    let kept = topK;
    if (topP < 1) {
      let total = 0;
      for (let i = 0; i < topK; i++) total += weights[candidates[i]];
      let cumulative = 0;
      for (let i = 0; i < topK; i++) {
        cumulative += weights[candidates[i]];
        if (cumulative >= topP * total) {
          kept = i + 1;
          break;
        }
      }
    }
    candidates = candidates.slice(0, kept);
  }

  let total = 0;
  for (const id of candidates) total += weights[id];
  let r = random.next() * total;
  for (const id of candidates) {
    r -= weights[id];
    if (r < 0) return id;
  }
  return candidates[candidates.length - 1];
}

// ---------------------------------------------------------------------------
// Generation.

/** Options of `generate`. */
export interface GenerateOptions extends SamplingOptions {
  /** Number of new tokens to produce, an integer >= 0. */
  maxTokens: number;
  /** Generator for the draws. Each sampled token takes one `next()`. Default: `new Random(0)`. */
  random?: Random;
  /** Called with each new token id as soon as it is chosen, for streaming. */
  onToken?: (id: number) => void;
  /**
   * Run each new token through a `KVCache` (default true). With false each
   * token re-runs `model.forward` on the whole window: the same logits, more
   * slowly, for comparison.
   */
  cache?: boolean;
  /**
   * Tokens the window start moves forward when the sequence outgrows the
   * context, from 1 (default: always the last `contextLength` tokens) to
   * the context length. See the module documentation.
   */
  stride?: number;
}

/** Throws a RangeError naming the first invalid option, with its valid range. */
function validateOptions(model: GPT, prompt: readonly number[], options: GenerateOptions): void {
  const { vocabSize: V, contextLength: T } = model.config;
  const { maxTokens, temperature, topK, topP, stride } = options;

  if (!(typeof maxTokens === "number" && Number.isInteger(maxTokens) && maxTokens >= 0)) {
    throw new RangeError(`maxTokens must be an integer >= 0, got ${maxTokens}`);
  }
  if (temperature !== undefined && !(Number.isFinite(temperature) && temperature >= 0)) {
    throw new RangeError(
      `temperature must be a finite number >= 0 (0 picks the most likely token), got ${temperature}`,
    );
  }
  if (topK !== undefined && !(Number.isInteger(topK) && topK >= 1)) {
    throw new RangeError(`topK must be an integer >= 1, got ${topK}`);
  }
  if (topP !== undefined && !(typeof topP === "number" && topP > 0 && topP <= 1)) {
    throw new RangeError(`topP must be a number in (0, 1], got ${topP}`);
  }
  if (stride !== undefined && !(Number.isInteger(stride) && stride >= 1 && stride <= T)) {
    throw new RangeError(
      `stride must be an integer from 1 to the context length ${T}, got ${stride}`,
    );
  }
  if (prompt.length === 0) {
    throw new RangeError("prompt must contain at least one token id, got an empty prompt");
  }
  prompt.forEach((id, i) => {
    if (!(Number.isInteger(id) && id >= 0 && id < V)) {
      throw new RangeError(`prompt[${i}] is ${id}, not a token id in [0, ${V})`);
    }
  });
}

/** Returns the logits of the last position of `window`, from `model.forward`. */
function lastLogits(model: GPT, window: readonly number[]): Float32Array {
  const V = model.config.vocabSize;
  const T = window.length;
  return noGrad(() => {
    const { logits } = model.forward(Int32Array.from(window), 1, T);
    const last = logits.data.slice((T - 1) * V, T * V);
    logits.release();
    return last;
  });
}

/**
 * Produces `options.maxTokens` new token ids after `prompt` and returns
 * them (without the prompt). Throws a RangeError for an invalid option, an
 * empty prompt or a prompt id outside the vocabulary.
 */
export function generate(
  model: GPT,
  prompt: readonly number[],
  options: GenerateOptions,
): number[] {
  validateOptions(model, prompt, options);
  const produced: number[] = [];
  if (options.maxTokens === 0) return produced;

  const T = model.config.contextLength;
  const stride = options.stride ?? 1;
  const random = options.random ?? new Random(0);
  const tokens = [...prompt];
  const cache = options.cache === false ? null : new KVCache(model);

  try {
    // The window is tokens[start …], and it never contains more than T tokens.
    let start = Math.max(0, tokens.length - T);
    let logits = cache === null
      ? lastLogits(model, tokens.slice(start))
      : cache.prefill(tokens.slice(start));

    for (;;) {
      const next = sampleToken(logits, options, random);
      tokens.push(next);
      produced.push(next);
      options.onToken?.(next);
      if (produced.length === options.maxTokens) break;

      const outgrown = tokens.length - start > T;
      if (outgrown) start += stride;
      if (cache === null) {
        logits = lastLogits(model, tokens.slice(start));
      } else if (outgrown) {
        // Every token of the moved window has a new position: encode it again.
        cache.clear();
        logits = cache.prefill(tokens.slice(start));
      } else {
        logits = cache.forward(next);
      }
    }
  } finally {
    cache?.dispose();
  }
  return produced;
}
