/**
 * Building blocks: named parameters and the layers a transformer is made of.
 *
 * Every parameter carries the name it is saved under, so a model's weights
 * can be listed, saved and restored by name (`h.0.attn.c_attn.weight`).
 *
 * @example
 * ```ts
 * import { Linear, namedParameters } from "./nn.ts";
 * import { Random } from "./random.ts";
 * import { Tensor } from "./tensor.ts";
 * const layer = new Linear(4, 2, { name: "proj", random: new Random(0) });
 * const y = layer.forward(Tensor.zeros([3, 4])); // [3, 2]
 * console.log([...namedParameters(layer).keys()]); // ["proj.weight", "proj.bias"]
 * ```
 *
 * @module
 */

import type { Random } from "./random.ts";
import { embedding, sizeOf, Tensor } from "./tensor.ts";

/** A trainable tensor with the name it is saved under. */
export class Parameter extends Tensor {
  /** Dotted name, e.g. `h.0.mlp.c_fc.weight`. */
  readonly name: string;

  /** Creates a zero-filled parameter of the given shape. */
  constructor(name: string, shape: readonly number[]) {
    super(Tensor.zeros(shape).data, shape, { requiresGrad: true });
    this.name = name;
  }

  /** Fills the parameter with samples of N(0, std²). */
  initNormal(random: Random, std: number): this {
    for (let i = 0; i < this.size; i++) this.data[i] = random.normal() * std;
    return this;
  }

  /** Fills the parameter with one value. */
  initConstant(value: number): this {
    this.data.fill(value);
    return this;
  }
}

/** Anything that owns parameters. */
export interface Module {
  /** Returns the module's parameters in a fixed order. */
  parameters(): Parameter[];
}

/** Returns a module's parameters keyed by name, in the module's order. */
export function namedParameters(module: Module): Map<string, Parameter> {
  const named = new Map<string, Parameter>();
  for (const p of module.parameters()) {
    if (named.has(p.name)) throw new Error(`two parameters are named ${p.name}`);
    named.set(p.name, p);
  }
  return named;
}

/** Returns the total number of values in a module's parameters. */
export function countParameters(module: Module): number {
  return module.parameters().reduce((total, p) => total + sizeOf(p.shape), 0);
}

/** Options shared by the layers' constructors. */
export interface LayerOptions {
  /** Prefix of the parameter names. */
  name: string;
  /** Generator for the initial weights. */
  random: Random;
  /** Standard deviation of the initial weights (default 0.02, as in GPT-2). */
  std?: number;
}

/**
 * Fully connected layer `y = x · W + b` with `W` laid out `[in, out]`.
 * Accepts `[N, in]` or `[B, T, in]` input.
 */
export class Linear implements Module {
  /** Weight `W` `[in, out]`, named `<name>.weight`. */
  readonly weight: Parameter;
  /** Bias `b` `[out]`, named `<name>.bias`, or null when built with `bias: false`. */
  readonly bias: Parameter | null;

  /**
   * Builds `W` from N(0, std²) samples of `options.random` and, unless
   * `options.bias` is false, a zero bias.
   */
  constructor(inFeatures: number, outFeatures: number, options: LayerOptions & { bias?: boolean }) {
    this.weight = new Parameter(`${options.name}.weight`, [inFeatures, outFeatures])
      .initNormal(options.random, options.std ?? 0.02);
    this.bias = options.bias === false
      ? null
      : new Parameter(`${options.name}.bias`, [outFeatures]);
  }

  /** Returns `x · W + b` for `x` `[N, in]` or `[B, T, in]`. */
  forward(x: Tensor): Tensor {
    return this.bias === null ? x.dot(this.weight) : x.linear(this.weight, this.bias);
  }

  /** Returns `[weight, bias]`, or `[weight]` without a bias. */
  parameters(): Parameter[] {
    return this.bias === null ? [this.weight] : [this.weight, this.bias];
  }
}

/** Layer normalisation over the last axis, with a gain (init 1) and a bias (init 0). */
export class LayerNorm implements Module {
  /** Gain γ `[channels]`, named `<name>.weight`. */
  readonly weight: Parameter;
  /** Bias β `[channels]`, named `<name>.bias`. */
  readonly bias: Parameter;

  /** Builds the gain and bias for `channels` features. `eps` defaults to 1e-5. */
  constructor(channels: number, options: { name: string; eps?: number }) {
    this.weight = new Parameter(`${options.name}.weight`, [channels]).initConstant(1);
    this.bias = new Parameter(`${options.name}.bias`, [channels]);
    this.eps = options.eps ?? 1e-5;
  }

  /** Added to the variance before the square root. */
  readonly eps: number;

  /** Returns `(x − μ) / √(σ² + eps) · γ + β` over the last axis of `x` `[..., channels]`. */
  forward(x: Tensor): Tensor {
    return x.layerNorm(this.weight, this.bias, this.eps);
  }

  parameters(): Parameter[] {
    return [this.weight, this.bias];
  }
}

/** A lookup table `[count, channels]`: id → row. A row used twice in a batch gets both gradients. */
export class Embedding implements Module {
  /** Table `[count, channels]`, named `<name>.weight`. */
  readonly weight: Parameter;

  /** Builds the table from N(0, std²) samples of `options.random`. */
  constructor(count: number, channels: number, options: LayerOptions) {
    this.weight = new Parameter(`${options.name}.weight`, [count, channels])
      .initNormal(options.random, options.std ?? 0.02);
  }

  /** Gathers the rows of `ids`, laid out as `shape`; the result is `[...shape, channels]`. */
  forward(ids: Int32Array, shape: readonly number[]): Tensor {
    return embedding(this.weight, ids, shape);
  }

  parameters(): Parameter[] {
    return [this.weight];
  }
}
