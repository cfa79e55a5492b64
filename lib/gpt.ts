/**
 * The model: a GPT-2 style decoder-only transformer.
 *
 * Token and learned position embeddings, a stack of pre-LayerNorm blocks
 * (multi-head causal self-attention, then a 4× GELU MLP, each added back to
 * the residual stream), a final LayerNorm and the language-model head. The
 * loss is the mean cross-entropy of the next token. Parameter names and
 * layouts follow the Hugging Face GPT-2 checkpoints (`wte.weight`,
 * `h.0.attn.c_attn.weight` [C, 3C], …) with an untied `lm_head.weight` [V, C].
 *
 * Shapes: B batch, T sequence length, C channels (d_model), H heads,
 * D = C / H head size, V vocabulary size.
 *
 * @example
 * ```ts
 * import { GPT } from "./gpt.ts";
 * const model = new GPT({ vocabSize: 50, contextLength: 16, dModel: 32, layers: 2, heads: 4 });
 * const ids = new Int32Array(2 * 16); // B = 2, T = 16
 * const { loss } = model.forward(ids, 2, 16, ids);
 * loss!.backward();
 * ```
 *
 * @module
 */

import { Embedding, LayerNorm, Linear, type Module, Parameter } from "./nn.ts";
import { Random } from "./random.ts";
import { causalMask, noGrad, type Tensor } from "./tensor.ts";

/** The model's hyperparameters. */
export interface GPTConfig {
  /** V: number of distinct tokens. */
  vocabSize: number;
  /** Maximum sequence length T the position embedding covers. */
  contextLength: number;
  /** C: width of the residual stream. */
  dModel: number;
  /** Number of transformer blocks. */
  layers: number;
  /** H: attention heads per block; must divide `dModel`. */
  heads: number;
  /** Dropout probability on attention and MLP outputs during training (default 0). */
  dropout?: number;
}

/** Options that do not change the model's weights. */
export interface GPTOptions {
  /** Seed of the weight initialisation (default 0). */
  seed?: number;
  /**
   * `fused` (default) runs attention as one backend kernel; `reference`
   * spells it out with tensor ops (split heads, QKᵀ, mask, softmax, ·V).
   * Both compute the same values.
   */
  attention?: "fused" | "reference";
}

/** Checks a config and returns a description of the first problem, or null. */
export function validateConfig(config: GPTConfig): string | null {
  const positive: (keyof GPTConfig)[] = ["vocabSize", "contextLength", "dModel", "layers", "heads"];
  for (const key of positive) {
    const value = config[key];
    if (typeof value !== "number" || !Number.isInteger(value) || value <= 0) {
      return `${key} must be a positive integer, got ${value}`;
    }
  }
  if (config.dModel % config.heads !== 0) {
    return `heads (${config.heads}) must divide dModel (${config.dModel})`;
  }
  const dropout = config.dropout ?? 0;
  if (!(dropout >= 0 && dropout < 1)) return `dropout must be in [0, 1), got ${dropout}`;
  return null;
}

/** Multi-head causal self-attention: `c_attn` makes q, k, v; `c_proj` mixes the heads. */
export class CausalSelfAttention implements Module {
  /** Projection `[C, 3C]` of x to the concatenated q, k and v, named `<name>.c_attn`. */
  readonly cAttn: Linear;
  /** Output projection `[C, C]` into the residual stream, named `<name>.c_proj`. */
  readonly cProj: Linear;
  /** 1 where position i would attend to a later position j; built once. */
  private readonly mask: Uint8Array;

  /**
   * Builds both projections, drawing `c_proj`'s weights with standard deviation
   * `residualStd`, and the causal mask for `config.contextLength`.
   */
  constructor(
    private readonly config: GPTConfig,
    name: string,
    random: Random,
    residualStd: number,
  ) {
    const C = config.dModel;
    this.cAttn = new Linear(C, 3 * C, { name: `${name}.c_attn`, random });
    this.cProj = new Linear(C, C, { name: `${name}.c_proj`, random, std: residualStd });
    this.mask = causalMask(config.contextLength);
  }

  /** Returns the attention output `[B, T, C]` for `x` `[B, T, C]`, computed as `mode` selects. */
  forward(x: Tensor, mode: "fused" | "reference"): Tensor {
    const qkv = this.cAttn.forward(x); // [B, T, 3C]
    const y = mode === "fused" ? qkv.attention(this.config.heads) : this.spelledOut(qkv);
    return this.cProj.forward(y); // [B, T, C]
  }

  /** Computes what the fused kernel computes, one tensor op at a time. */
  private spelledOut(qkv: Tensor): Tensor {
    const [B, T] = qkv.shape;
    const C = this.config.dModel;
    const H = this.config.heads;
    const D = C / H;

    // [B, T, C] → [B, T, H, D] → [B, H, T, D] → [B·H, T, D]
    const heads = (t: Tensor) => t.reshape([B, T, H, D]).transpose(1, 2).reshape([B * H, T, D]);
    const q = heads(qkv.sliceCols(0, C));
    const k = heads(qkv.sliceCols(C, 2 * C));
    const v = heads(qkv.sliceCols(2 * C, 3 * C));

    // Scaled dot-product scores [B·H, T, T]; the top-left T×T corner of the mask applies.
    const scores = q.bmm(k.transposeLast2()).mul(1 / Math.sqrt(D));
    const mask = T === this.config.contextLength ? this.mask : causalMask(T);
    const weights = scores.maskedFill(mask, -Infinity).softmax();
    const y = weights.bmm(v); // [B·H, T, D]

    // [B·H, T, D] → [B, H, T, D] → [B, T, H, D] → [B, T, C]
    return y.reshape([B, H, T, D]).transpose(1, 2).reshape([B, T, C]);
  }

  parameters(): Parameter[] {
    return [...this.cAttn.parameters(), ...this.cProj.parameters()];
  }
}

/** Position-wise feed-forward network: C → 4C → GELU → C. */
export class MLP implements Module {
  /** Expansion `[C, 4C]`, named `<name>.c_fc`. */
  readonly cFc: Linear;
  /** Projection `[4C, C]` back into the residual stream, named `<name>.c_proj`. */
  readonly cProj: Linear;

  /** Builds both layers, drawing `c_proj`'s weights with standard deviation `residualStd`. */
  constructor(config: GPTConfig, name: string, random: Random, residualStd: number) {
    const C = config.dModel;
    this.cFc = new Linear(C, 4 * C, { name: `${name}.c_fc`, random });
    this.cProj = new Linear(4 * C, C, { name: `${name}.c_proj`, random, std: residualStd });
  }

  /** Returns `c_proj(gelu(c_fc(x)))` for `x` `[B, T, C]`. */
  forward(x: Tensor): Tensor {
    return this.cProj.forward(this.cFc.forward(x).gelu());
  }

  parameters(): Parameter[] {
    return [...this.cFc.parameters(), ...this.cProj.parameters()];
  }
}

/** One pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)). */
export class Block implements Module {
  /** LayerNorm before attention, `h.<index>.ln_1`. */
  readonly ln1: LayerNorm;
  /** Self-attention, `h.<index>.attn`. */
  readonly attn: CausalSelfAttention;
  /** LayerNorm before the MLP, `h.<index>.ln_2`. */
  readonly ln2: LayerNorm;
  /** Feed-forward network, `h.<index>.mlp`. */
  readonly mlp: MLP;

  /** Builds block `index`, with parameter names starting `h.<index>.`. */
  constructor(config: GPTConfig, index: number, random: Random) {
    const name = `h.${index}`;
    // GPT-2 scales the init of the projections into the residual stream by
    // 1/√(2·layers), because each block adds to the stream twice.
    const residualStd = 0.02 / Math.sqrt(2 * config.layers);
    this.ln1 = new LayerNorm(config.dModel, { name: `${name}.ln_1` });
    this.attn = new CausalSelfAttention(config, `${name}.attn`, random, residualStd);
    this.ln2 = new LayerNorm(config.dModel, { name: `${name}.ln_2` });
    this.mlp = new MLP(config, `${name}.mlp`, random, residualStd);
  }

  /**
   * Returns the block's output `[B, T, C]` for `x` `[B, T, C]`. Dropout with
   * probability `dropout` applies to each branch before it is added, with masks drawn from `random`.
   */
  forward(x: Tensor, mode: "fused" | "reference", dropout: number, random: Random): Tensor {
    const noise = () => random.next();
    x = x.add(this.attn.forward(this.ln1.forward(x), mode).dropout(dropout, noise));
    x = x.add(this.mlp.forward(this.ln2.forward(x)).dropout(dropout, noise));
    return x;
  }

  parameters(): Parameter[] {
    return [
      ...this.ln1.parameters(),
      ...this.attn.parameters(),
      ...this.ln2.parameters(),
      ...this.mlp.parameters(),
    ];
  }
}

/** Result of `GPT.forward`: logits and, with targets, the loss. */
export interface GPTOutput {
  /** Next-token logits `[B, T, V]`. */
  logits: Tensor;
  /** Mean cross-entropy against the targets, when targets were given. */
  loss: Tensor | null;
}

/** A GPT-2 style language model. */
export class GPT implements Module {
  /** Hyperparameters, with `dropout` filled in (default 0). */
  readonly config: GPTConfig;
  /** Token embedding `[V, C]`, `wte.weight`. */
  readonly wte: Embedding;
  /** Learned position embedding `[T, C]`, `wpe.weight`. */
  readonly wpe: Embedding;
  /** Transformer blocks `h.0` to `h.<layers − 1>`, applied in order. */
  readonly blocks: Block[];
  /** Final LayerNorm `ln_f`, applied before the head. */
  readonly lnF: LayerNorm;
  /** Language-model head `[V, C]`, `lm_head.weight`, separate from `wte`. */
  readonly lmHead: Parameter;
  /** Attention implementation: one fused kernel, or spelled out with tensor ops. */
  attentionMode: "fused" | "reference";
  /** Generator for dropout masks; its state is part of a run's state. */
  readonly dropoutRandom: Random;

  /**
   * Builds the model with weights drawn from a generator seeded with
   * `options.seed`. Throws an `Error` for a config that `validateConfig` rejects.
   */
  constructor(config: GPTConfig, options: GPTOptions = {}) {
    const problem = validateConfig(config);
    if (problem !== null) throw new Error(`invalid model config: ${problem}`);
    this.config = { ...config, dropout: config.dropout ?? 0 };
    this.attentionMode = options.attention ?? "fused";

    const random = new Random(options.seed ?? 0);
    const { vocabSize: V, contextLength: T, dModel: C } = config;
    this.wte = new Embedding(V, C, { name: "wte", random });
    this.wpe = new Embedding(T, C, { name: "wpe", random });
    this.blocks = Array.from({ length: config.layers }, (_, i) => new Block(config, i, random));
    this.lnF = new LayerNorm(C, { name: "ln_f" });
    this.lmHead = new Parameter("lm_head.weight", [V, C]).initNormal(random, 0.02);
    this.dropoutRandom = new Random((options.seed ?? 0) ^ 0x5eed);
  }

  /**
   * Runs the model on token ids `[B, T]` (row-major). With `targets` `[B, T]`
   * it also returns the mean next-token cross-entropy.
   */
  forward(ids: Int32Array, B: number, T: number, targets?: Int32Array): GPTOutput {
    if (T > this.config.contextLength) {
      throw new Error(
        `sequence length ${T} exceeds the context length ${this.config.contextLength}`,
      );
    }
    if (ids.length !== B * T) throw new Error(`expected ${B * T} token ids, got ${ids.length}`);

    const positions = new Int32Array(T).map((_, t) => t);
    const tokens = this.wte.forward(ids, [B, T]); // [B, T, C]
    const place = this.wpe.forward(positions, [T]); // [T, C], broadcast over B
    let x = tokens.add(place);

    const dropout = this.config.dropout ?? 0;
    for (const block of this.blocks) {
      x = block.forward(x, this.attentionMode, dropout, this.dropoutRandom);
    }

    x = this.lnF.forward(x);
    const logits = x.dot(this.lmHead, true); // [B, T, C] · [V, C]ᵀ → [B, T, V]
    const loss = targets === undefined ? null : logits.crossEntropy(targets);
    return { logits, loss };
  }

  /** Returns the mean cross-entropy of `targets` without recording a graph. */
  evaluate(ids: Int32Array, targets: Int32Array, B: number, T: number): number {
    return noGrad(() => {
      const { loss } = this.forward(ids, B, T, targets);
      const value = loss!.item();
      loss!.release();
      return value;
    });
  }

  parameters(): Parameter[] {
    return [
      ...this.wte.parameters(),
      ...this.wpe.parameters(),
      ...this.blocks.flatMap((b) => b.parameters()),
      ...this.lnF.parameters(),
      this.lmHead,
    ];
  }
}

/** Options of `sample`. */
export interface SampleOptions {
  /** Number of tokens to produce. */
  maxTokens: number;
  /** Softmax temperature; 0 picks the most likely token (greedy). Default 1. */
  temperature?: number;
  /** Generator for the draws. */
  random: Random;
}

/**
 * Produces `maxTokens` tokens after `prompt`, one at a time, feeding the last
 * `contextLength` tokens back in for each. Returns only the new tokens.
 */
export function sample(model: GPT, prompt: number[], options: SampleOptions): number[] {
  const temperature = options.temperature ?? 1;
  const context = [...prompt];
  const produced: number[] = [];
  const V = model.config.vocabSize;

  for (let n = 0; n < options.maxTokens; n++) {
    const window = context.slice(-model.config.contextLength);
    const T = window.length;
    const next = noGrad(() => {
      const { logits } = model.forward(Int32Array.from(window), 1, T);
      const last = logits.data.slice((T - 1) * V, T * V);
      logits.release();
      return pickToken(last, temperature, options.random);
    });
    context.push(next);
    produced.push(next);
  }
  return produced;
}

/** Draws a token id from logits scaled by 1/temperature; temperature 0 is the argmax. */
export function pickToken(logits: Float32Array, temperature: number, random: Random): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  if (temperature === 0) return best;

  const max = logits[best];
  const weights = new Float64Array(logits.length);
  let total = 0;
  for (let i = 0; i < logits.length; i++) {
    weights[i] = Math.exp((logits[i] - max) / temperature);
    total += weights[i];
  }
  let r = random.next() * total;
  for (let i = 0; i < weights.length; i++) {
    r -= weights[i];
    if (r < 0) return i;
  }
  return weights.length - 1;
}
