/**
 * Optimizers, gradient clipping and learning-rate schedules.
 *
 * This rung only needs parameters that expose a name, their values and their
 * gradient (`OptimizerParameter`), so it can train anything that produces
 * gradients, not only the GPT in this repository.
 *
 * The update rules follow the algorithm boxes in the PyTorch 2.x
 * documentation of `torch.optim.SGD`, `RMSprop`, `Adam` and `AdamW` (the same
 * boxes as since PyTorch 1.10). The defaults are PyTorch 2.x's, where `SGD`
 * defaults to `lr = 1e-3` (PyTorch 1.x required it). Options PyTorch has and
 * this file lacks: `maximize`, `amsgrad`, and the `foreach`/`fused`/`capturable`
 * implementations.
 *
 * Arithmetic: parameters, gradients and moment buffers are `Float32Array`s.
 * Each element is computed in float64 (JavaScript numbers) from the stored
 * float32 values and rounded to float32 when it is stored. A buffer that is
 * updated and then used in the same step is read back after rounding, as if it
 * had been stored and loaded again.
 *
 * @module
 */

import type { AdamWStep, Backend } from "./backend.ts";

// ---------------------------------------------------------------------------
// Parameters and parameter groups
// ---------------------------------------------------------------------------

/**
 * A trainable tensor as the optimizers see it. A parameter whose `grad` is
 * null is skipped by `step()` and by gradient clipping.
 */
export interface OptimizerParameter {
  /** Unique name, used as the key prefix of its optimizer buffers. */
  name: string;
  /** Values, updated in place. */
  data: Float32Array;
  /** Gradient of the loss with respect to `data`, same length, or null. */
  grad: Float32Array | null;
}

/** Parameters that share a learning rate and a weight decay. */
export interface ParamGroup<P extends OptimizerParameter = OptimizerParameter> {
  /** Parameters of this group. A name may appear in only one group of an optimizer. */
  params: readonly P[];
  /** Learning rate of this group. Defaults to the optimizer's `lr`. */
  lr?: number;
  /** Weight decay of this group. Defaults to the optimizer's `weightDecay`. */
  weightDecay?: number;
}

/** Input of every optimizer constructor: a list of parameters or a list of parameter groups. */
export type ParamsInput = readonly OptimizerParameter[] | readonly ParamGroup[];

/**
 * A parameter group as stored in an optimizer.
 *
 * `lrScale` is the group's rate relative to the optimizer's base rate. It is
 * `groupLr / baseLr` at construction for a group that gave its own `lr`, and 1
 * otherwise. Setting the optimizer's `lr` to `x` sets this group's `lr` to
 * `x * lrScale`.
 */
export interface OptimizerGroup {
  /** Parameters of this group, in the order they were given. */
  readonly params: readonly OptimizerParameter[];
  /** Learning rate this group applies on the next step. */
  readonly lr: number;
  /** Ratio of this group's `lr` to the optimizer's base `lr`. */
  readonly lrScale: number;
  /** Weight decay λ of this group. */
  readonly weightDecay: number;
}

interface MutableGroup {
  params: readonly OptimizerParameter[];
  lr: number;
  lrScale: number;
  weightDecay: number;
}

/** A parameter that may carry its shape, as `decayGroups` needs. */
export interface ShapedParameter extends OptimizerParameter {
  /** Size of each dimension. Its product must equal `data.length`. */
  shape?: readonly number[];
}

/** Name suffixes of embedding tables, which `decayGroups` never decays. */
const EMBEDDING_SUFFIXES = ["wte.weight", "wpe.weight"];

/**
 * Splits parameters into a weight-decay group and a no-decay group, the rule
 * nanoGPT's `configure_optimizers` uses, plus an exception for embeddings.
 *
 * Rule "matrices decay, embeddings and vectors do not": a parameter is decayed
 * when its shape has at least two dimensions and its name is neither
 * `wte.weight`/`wpe.weight` nor ends in `.wte.weight`/`.wpe.weight`. Biases,
 * LayerNorm gains and shifts, embeddings and every other parameter with fewer
 * than two dimensions go to the no-decay group, whose weight decay is 0.
 *
 * Returns `[decay, noDecay]`. Neither group sets `lr`, so both use the
 * optimizer's rate. Either group may be empty.
 *
 * @throws Error when a parameter has no `shape` or its shape does not match
 * the length of its data.
 */
export function decayGroups<P extends ShapedParameter>(
  params: readonly P[],
  weightDecay: number,
): [ParamGroup<P>, ParamGroup<P>] {
  requireNonNegative("weightDecay", weightDecay);
  const decay: P[] = [];
  const noDecay: P[] = [];

  for (const param of params) {
    const shape = param.shape;
    if (shape === undefined) {
      throw new Error(
        `Parameter "${param.name}" has no shape; decayGroups needs every parameter's shape`,
      );
    }
    const size = shape.reduce((product, dimension) => product * dimension, 1);
    if (size !== param.data.length) {
      throw new Error(
        `Parameter "${param.name}" has shape [${shape.join(", ")}] (${size} values) ` +
          `but ${param.data.length} values of data`,
      );
    }

    const isEmbedding = EMBEDDING_SUFFIXES.some((suffix) =>
      param.name === suffix || param.name.endsWith(`.${suffix}`)
    );
    if (shape.length >= 2 && !isEmbedding) {
      decay.push(param);
    } else {
      noDecay.push(param);
    }
  }

  return [{ params: decay, weightDecay }, { params: noDecay, weightDecay: 0 }];
}

// ---------------------------------------------------------------------------
// Gradient norm and clipping
// ---------------------------------------------------------------------------

/** Returns the L2 norm of all gradients together, summed in float64. Null gradients count as absent. */
export function gradNorm(params: Iterable<OptimizerParameter>): number {
  let sumOfSquares = 0;
  for (const param of params) {
    const grad = param.grad;
    if (grad === null) continue;
    for (let i = 0; i < grad.length; i++) {
      sumOfSquares += grad[i] * grad[i];
    }
  }
  return Math.sqrt(sumOfSquares);
}

/**
 * Scales all gradients together so that their total L2 norm is at most
 * `maxNorm`, like PyTorch's `torch.nn.utils.clip_grad_norm_` (norm type 2).
 *
 * With `total = gradNorm(params)` and `coefficient = maxNorm / (total + 1e-6)`,
 * every gradient is multiplied by `coefficient` when it is below 1, and left
 * untouched otherwise. So gradients whose norm is at most `maxNorm − 1e-6`
 * never change, and `maxNorm = Infinity` only measures the norm. When `total`
 * is NaN or infinite the gradients are left untouched, unlike PyTorch, and the
 * caller can skip the step.
 *
 * Returns `total`, the norm before clipping.
 */
export function clipGradNorm(params: Iterable<OptimizerParameter>, maxNorm: number): number {
  if (typeof maxNorm !== "number" || !(maxNorm >= 0)) {
    throw new RangeError(`Invalid maxNorm: ${maxNorm}; expected a number >= 0 or Infinity`);
  }
  const list = [...params];
  const total = gradNorm(list);
  if (!Number.isFinite(total)) return total;

  const coefficient = maxNorm / (total + 1e-6);
  if (coefficient < 1) {
    for (const param of list) {
      const grad = param.grad;
      if (grad === null) continue;
      for (let i = 0; i < grad.length; i++) {
        grad[i] *= coefficient;
      }
    }
  }
  return total;
}

// ---------------------------------------------------------------------------
// Optimizer interface and state
// ---------------------------------------------------------------------------

/** Names of the optimizers in this file, as stored in their state. */
export type OptimizerType = "SGD" | "SGDMomentum" | "RMSprop" | "Adam" | "AdamW";

/** Names of the schedules in this file, as stored in their state. */
export type ScheduleType = "LinearWarmup" | "CosineWithWarmup";

/** The JSON part of one parameter group's state. */
export interface GroupConfig {
  /** Names of the group's parameters, in order. */
  params: string[];
  /** Learning rate of the group when the state was taken. */
  lr: number;
  /** Ratio of the group's `lr` to the base `lr` (see `OptimizerGroup`). */
  lrScale: number;
  /** Weight decay λ of the group. */
  weightDecay: number;
}

/** The JSON part of an optimizer's state: hyperparameters and step counts. */
export interface OptimizerConfig {
  /** Class that wrote the state. Loading checks that it matches. */
  type: OptimizerType;
  /** Base learning rate. */
  lr: number;
  /** Hyperparameters other than the rates and weight decays, such as `beta1`. */
  hyper: Record<string, number | boolean>;
  /** Parameter groups, in the optimizer's order. */
  groups: GroupConfig[];
  /**
   * Updates applied to each parameter, keyed by name. Like PyTorch's
   * per-parameter `step`, it does not advance while a parameter's grad is null.
   */
  steps: Record<string, number>;
}

/** The JSON part of a schedule's state, wrapping its optimizer's. */
export interface ScheduleConfig {
  /** Class that wrote the state. Loading checks that it matches. */
  type: ScheduleType;
  /** Number of `step()` calls so far: the absolute step the next call applies. */
  step: number;
  /** Peak rate, reached at the end of the warmup. */
  baseLr: number;
  /** Steps of linear warmup. */
  warmupSteps: number;
  /** Present for `CosineWithWarmup` only. */
  totalSteps?: number;
  /** Present for `CosineWithWarmup` only. */
  floor?: number;
  /** State of the wrapped optimizer, itself possibly a schedule. */
  optimizer: OptimizerConfig | ScheduleConfig;
}

/**
 * A checkpointable optimizer state.
 *
 * `config` survives `JSON.stringify`/`JSON.parse` unchanged. `buffers`
 * contains copies of the moment buffers, keyed `<paramName>.<bufferName>`
 * (for example `h.0.attn.c_attn.weight.exp_avg`), so a checkpoint writer can
 * store them as float32 tensors under a prefix of its own.
 */
export interface OptimizerState {
  /** Hyperparameters, groups and step counts, safe to store as JSON. */
  config: OptimizerConfig | ScheduleConfig;
  /** Copies of the moment buffers, keyed `<paramName>.<bufferName>`. */
  buffers: Map<string, Float32Array>;
}

/** Interface shared by optimizers and schedules. */
export interface Optimizer {
  /** Updates every parameter whose `grad` is not null, once. */
  step(): void;
  /** Fills every gradient with zeros in place. Null gradients stay null, unlike PyTorch's default. */
  zeroGrad(): void;
  /** Clips all gradients of this optimizer together, as the standalone `clipGradNorm` does. */
  clipGradNorm(maxNorm: number): number;
  /** Base learning rate. Setting it rescales every group (see `OptimizerGroup`). */
  get lr(): number;
  /**
   * Sets the base learning rate. Throws a `RangeError` unless it is finite and >= 0.
   *
   * @ignore Hidden from the docs because `deno doc --lint` (Deno 2.9.6) requires a
   * return type on this setter, and the parser rejects one. The getter documents `lr`.
   */
  set lr(value: number);
  /** Returns a copy of the state that `loadStateDict` restores. */
  stateDict(): OptimizerState;
  /**
   * Restores a state from `stateDict()`, including hyperparameters, as PyTorch
   * does. Every name and length is checked before anything changes.
   *
   * @throws Error naming the first mismatch.
   */
  loadStateDict(state: OptimizerState): void;
}

/** Hyperparameters of an optimizer other than its rates and weight decays, by name. */
export type Hyperparameters = Record<string, number | boolean>;

/** A parameter that `step()` is about to update, with its gradient present. */
export type SteppedParameter = OptimizerParameter & { grad: Float32Array };

/**
 * The bookkeeping every optimizer shares: groups, base rate, per-parameter
 * step counts, moment buffers and their state. Subclasses define the update of
 * one parameter.
 */
export abstract class BaseOptimizer<H extends Hyperparameters> implements Optimizer {
  /** Name of the concrete optimizer, stored in its state. */
  abstract readonly type: OptimizerType;
  /** Current hyperparameters, replaced when a state is loaded. */
  protected hyper: H;
  /** Moment buffers, keyed `<paramName>.<bufferName>`. */
  protected readonly buffers: Map<string, Float32Array> = new Map<string, Float32Array>();
  readonly #groups: MutableGroup[];
  readonly #params: OptimizerParameter[];
  readonly #steps = new Map<string, number>();
  #lr: number;

  /**
   * Builds the parameter groups and zeroes every step count. Throws a
   * `RangeError` for a negative or non-finite `lr` or `weightDecay`, and an
   * `Error` for invalid groups, such as an empty list or a name that appears twice.
   */
  protected constructor(params: ParamsInput, lr: number, weightDecay: number, hyper: H) {
    requireNonNegative("lr", lr);
    requireNonNegative("weightDecay", weightDecay);
    this.#lr = lr;
    this.hyper = hyper;
    this.#groups = buildGroups(params, lr, weightDecay);
    this.#params = this.#groups.flatMap((group) => [...group.params]);
    for (const param of this.#params) this.#steps.set(param.name, 0);
  }

  /** Validates hyperparameters, at construction and when a state is loaded. */
  protected abstract validateHyper(hyper: H): void;

  /** Applies the update rule to one parameter. `step` is its 1-based update count. */
  protected abstract updateParameter(
    param: SteppedParameter,
    group: OptimizerGroup,
    step: number,
  ): void;

  /** Allocates one zero-filled buffer per parameter for each name. */
  protected allocateBuffers(
    names: readonly string[],
    alloc: (length: number) => Float32Array = (length) => new Float32Array(length),
  ): void {
    for (const param of this.#params) {
      for (const name of names) {
        this.buffers.set(`${param.name}.${name}`, alloc(param.data.length));
      }
    }
  }

  /** Returns the buffer `name` of a parameter. */
  protected buffer(param: OptimizerParameter, name: string): Float32Array {
    const buffer = this.buffers.get(`${param.name}.${name}`);
    if (buffer === undefined) {
      throw new Error(`Optimizer has no buffer "${param.name}.${name}"`);
    }
    return buffer;
  }

  /** Parameter groups of this optimizer, in order. */
  get paramGroups(): readonly OptimizerGroup[] {
    return this.#groups;
  }

  /** Base learning rate. Each group applies `lr * lrScale`. */
  get lr(): number {
    return this.#lr;
  }

  /**
   * Sets the base rate to `value` and each group's rate to `value * lrScale`.
   * Throws a `RangeError` unless `value` is finite and >= 0.
   */
  set lr(value: number) {
    requireNonNegative("lr", value);
    this.#lr = value;
    for (const group of this.#groups) {
      group.lr = value * group.lrScale;
    }
  }

  /**
   * Updates every parameter whose `grad` is not null and advances its step
   * count. Throws an `Error` when a gradient's length differs from its parameter's.
   */
  step(): void {
    for (const group of this.#groups) {
      for (const param of group.params) {
        const grad = param.grad;
        if (grad === null) continue;
        if (grad.length !== param.data.length) {
          throw new Error(
            `Parameter "${param.name}" has ${param.data.length} values but its gradient has ${grad.length}`,
          );
        }
        const step = (this.#steps.get(param.name) ?? 0) + 1;
        this.#steps.set(param.name, step);
        this.updateParameter({ name: param.name, data: param.data, grad }, group, step);
      }
    }
  }

  /** Fills every gradient with zeros in place. Null gradients stay null. */
  zeroGrad(): void {
    for (const param of this.#params) param.grad?.fill(0);
  }

  /** Clips the gradients of all groups together and returns their norm before clipping. */
  clipGradNorm(maxNorm: number): number {
    return clipGradNorm(this.#params, maxNorm);
  }

  /** Returns the base rate, groups, hyperparameters, step counts and copies of the buffers. */
  stateDict(): OptimizerState {
    const config: OptimizerConfig = {
      type: this.type,
      lr: this.#lr,
      hyper: { ...this.hyper },
      groups: this.#groups.map((group) => ({
        params: group.params.map((param) => param.name),
        lr: group.lr,
        lrScale: group.lrScale,
        weightDecay: group.weightDecay,
      })),
      steps: Object.fromEntries(
        this.#params.map((param) => [param.name, this.#steps.get(param.name) ?? 0]),
      ),
    };
    const buffers = new Map<string, Float32Array>();
    for (const [key, buffer] of this.buffers) buffers.set(key, buffer.slice());
    return { config, buffers };
  }

  /**
   * Restores a state from `stateDict()`. Every type, name, count, length and
   * hyperparameter is checked before anything changes.
   *
   * @throws Error naming the first mismatch.
   */
  loadStateDict(state: OptimizerState): void {
    const config = state.config;
    if (config.type !== this.type) {
      throw new Error(`Cannot load ${config.type} optimizer state into a ${this.type} optimizer`);
    }
    const saved = config as OptimizerConfig;
    requireNonNegative("lr in the optimizer state", saved.lr);
    this.#validateGroups(saved.groups);
    const hyper = this.#validateSavedHyper(saved.hyper);
    this.#validateSteps(saved.steps);
    this.#validateBuffers(state.buffers);

    // Everything matched, so the state can now be applied.
    this.#lr = saved.lr;
    this.hyper = hyper;
    this.#groups.forEach((group, index) => {
      group.lr = saved.groups[index].lr;
      group.lrScale = saved.groups[index].lrScale;
      group.weightDecay = saved.groups[index].weightDecay;
    });
    for (const param of this.#params) this.#steps.set(param.name, saved.steps[param.name]);
    for (const [key, buffer] of this.buffers) buffer.set(state.buffers.get(key)!);
  }

  #validateGroups(groups: GroupConfig[]): void {
    if (!Array.isArray(groups) || groups.length !== this.#groups.length) {
      throw new Error(
        `Optimizer state has ${groups?.length} parameter groups, expected ${this.#groups.length}`,
      );
    }
    groups.forEach((saved, index) => {
      const expected = this.#groups[index].params.map((param) => param.name);
      const names = saved.params;
      if (!Array.isArray(names) || names.length !== expected.length) {
        throw new Error(
          `Optimizer state group ${index} has ${names?.length} parameters, expected ${expected.length}`,
        );
      }
      names.forEach((name, position) => {
        if (name !== expected[position]) {
          throw new Error(
            `Optimizer state group ${index} has parameter "${name}" at position ${position}, ` +
              `expected "${expected[position]}"`,
          );
        }
      });
      requireNonNegative(`lr of group ${index} in the optimizer state`, saved.lr);
      requireNonNegative(`lrScale of group ${index} in the optimizer state`, saved.lrScale);
      requireNonNegative(
        `weightDecay of group ${index} in the optimizer state`,
        saved.weightDecay,
      );
    });
  }

  #validateSavedHyper(saved: Record<string, number | boolean>): H {
    if (typeof saved !== "object" || saved === null) {
      throw new Error("Optimizer state has no hyperparameters object");
    }
    const expectedKeys = Object.keys(this.hyper).sort();
    const savedKeys = Object.keys(saved).sort();
    if (expectedKeys.join(",") !== savedKeys.join(",")) {
      throw new Error(
        `Optimizer state has hyperparameters [${savedKeys.join(", ")}], ` +
          `expected [${expectedKeys.join(", ")}]`,
      );
    }
    for (const key of expectedKeys) {
      if (typeof saved[key] !== typeof this.hyper[key]) {
        throw new Error(
          `Optimizer state hyperparameter "${key}" is a ${typeof saved[key]}, ` +
            `expected a ${typeof this.hyper[key]}`,
        );
      }
    }
    const hyper = { ...saved } as H;
    this.validateHyper(hyper);
    return hyper;
  }

  #validateSteps(steps: Record<string, number>): void {
    if (typeof steps !== "object" || steps === null) {
      throw new Error("Optimizer state has no per-parameter step counts");
    }
    for (const param of this.#params) {
      const step = Object.hasOwn(steps, param.name) ? steps[param.name] : undefined;
      if (!Number.isInteger(step) || (step as number) < 0) {
        throw new Error(
          `Optimizer state has step count ${step} for parameter "${param.name}", ` +
            `expected an integer >= 0`,
        );
      }
    }
    const known = new Set(this.#params.map((param) => param.name));
    for (const name of Object.keys(steps)) {
      if (!known.has(name)) {
        throw new Error(`Optimizer state has a step count for unknown parameter "${name}"`);
      }
    }
  }

  #validateBuffers(buffers: Map<string, Float32Array>): void {
    if (!(buffers instanceof Map)) {
      throw new Error("Optimizer state buffers must be a Map<string, Float32Array>");
    }
    for (const [key, buffer] of this.buffers) {
      const saved = buffers.get(key);
      if (saved === undefined) {
        throw new Error(`Optimizer state is missing buffer "${key}"`);
      }
      if (!(saved instanceof Float32Array) || saved.length !== buffer.length) {
        throw new Error(
          `Optimizer state buffer "${key}" has ${saved.length} values, expected ${buffer.length}`,
        );
      }
    }
    for (const key of buffers.keys()) {
      if (!this.buffers.has(key)) {
        throw new Error(
          `Optimizer state has unexpected buffer "${key}"; ` +
            `the optimizer was built with different parameters or options`,
        );
      }
    }
  }
}

/** Turns a parameter list or group list into groups with resolved rates and weight decays. */
function buildGroups(params: ParamsInput, lr: number, weightDecay: number): MutableGroup[] {
  if (params.length === 0) {
    throw new Error("Optimizer received an empty parameter list");
  }
  const groups: readonly ParamGroup[] = "params" in params[0]
    ? params as readonly ParamGroup[]
    : [{ params: params as readonly OptimizerParameter[] }];

  const names = new Set<string>();
  const result = groups.map((group, index): MutableGroup => {
    if (!Array.isArray(group.params)) {
      throw new Error(
        `Parameter group ${index} has no params array; pass either parameters or groups`,
      );
    }
    for (const param of group.params) {
      if (names.has(param.name)) {
        throw new Error(
          `Parameter "${param.name}" appears twice; names must be unique across all groups`,
        );
      }
      names.add(param.name);
    }

    const groupWeightDecay = group.weightDecay ?? weightDecay;
    requireNonNegative(`weightDecay of group ${index}`, groupWeightDecay);
    if (group.lr === undefined) {
      return { params: group.params, lr, lrScale: 1, weightDecay: groupWeightDecay };
    }
    requireNonNegative(`lr of group ${index}`, group.lr);
    if (lr === 0 && group.lr !== 0) {
      throw new Error(
        `Group ${index} sets lr ${group.lr} but the base lr is 0, so its scale is undefined; ` +
          `pass a nonzero base lr`,
      );
    }
    const lrScale = group.lr === lr ? 1 : group.lr / lr;
    return { params: group.params, lr: group.lr, lrScale, weightDecay: groupWeightDecay };
  });

  if (names.size === 0) {
    throw new Error("Optimizer received parameter groups without any parameters");
  }
  return result;
}

function requireNonNegative(name: string, value: number): void {
  if (typeof value !== "number" || !Number.isFinite(value) || value < 0) {
    throw new RangeError(`Invalid ${name}: ${value}; expected a finite number >= 0`);
  }
}

function requireUnitInterval(name: string, value: number): void {
  if (typeof value !== "number" || !(value >= 0 && value < 1)) {
    throw new RangeError(`Invalid ${name}: ${value}; expected a number in [0, 1)`);
  }
}

// ---------------------------------------------------------------------------
// SGD
// ---------------------------------------------------------------------------

/** Options of `SGD`. Defaults are PyTorch 2.x's. */
export interface SGDOptions {
  /** Learning rate γ. Default 1e-3. */
  lr?: number;
  /** L2 penalty λ, added to the gradient. Default 0. */
  weightDecay?: number;
}

/**
 * Stochastic gradient descent: `g ← g + λθ`, then `θ ← θ − γg`.
 * It keeps no buffers.
 */
export class SGD extends BaseOptimizer<Record<string, never>> {
  /** Always `"SGD"`. */
  readonly type: OptimizerType = "SGD";

  /** Builds the optimizer. Throws a `RangeError` for a negative `lr` or `weightDecay`. */
  constructor(params: ParamsInput, options: SGDOptions = {}) {
    super(params, options.lr ?? 1e-3, options.weightDecay ?? 0, {});
  }

  /** Accepts any state, because SGD has no hyperparameters beyond its rates. */
  protected validateHyper(): void {}

  /** Applies `θ ← θ − γ(g + λθ)` to one parameter. */
  protected updateParameter(param: SteppedParameter, group: OptimizerGroup): void {
    const { data, grad } = param;
    const { lr, weightDecay } = group;
    for (let i = 0; i < data.length; i++) {
      const g = grad[i] + weightDecay * data[i];
      data[i] = data[i] - lr * g;
    }
  }
}

/** Options of `SGDMomentum`. Defaults are PyTorch 2.x's, except `momentum`, which is required. */
export interface SGDMomentumOptions {
  /** Learning rate γ. Default 1e-3. */
  lr?: number;
  /** Momentum factor μ ≥ 0. PyTorch defaults to 0, which is plain `SGD`, so it is required here. */
  momentum: number;
  /** Dampening τ. Default 0. */
  dampening?: number;
  /** Nesterov momentum. Needs `momentum > 0` and `dampening == 0`. Default false. */
  nesterov?: boolean;
  /** L2 penalty λ, added to the gradient. Default 0. */
  weightDecay?: number;
}

/** Hyperparameters of `SGDMomentum` as stored in its state. */
export type MomentumHyper = { momentum: number; dampening: number; nesterov: boolean };

/**
 * SGD with momentum, as `torch.optim.SGD` with `momentum > 0`:
 *
 * ```
 * g ← g + λθ
 * b ← g on the first step, else μb + (1 − τ)g
 * g ← g + μb with Nesterov, else b
 * θ ← θ − γg
 * ```
 *
 * Buffer: `momentum_buffer`.
 */
export class SGDMomentum extends BaseOptimizer<MomentumHyper> {
  /** Always `"SGDMomentum"`. */
  readonly type: OptimizerType = "SGDMomentum";

  /**
   * Builds the optimizer and its zero-filled `momentum_buffer`s. Throws a
   * `RangeError` for the hyperparameters that `validateHyper` rejects.
   */
  constructor(params: ParamsInput, options: SGDMomentumOptions) {
    super(params, options.lr ?? 1e-3, options.weightDecay ?? 0, {
      momentum: options.momentum,
      dampening: options.dampening ?? 0,
      nesterov: options.nesterov ?? false,
    });
    this.validateHyper(this.hyper);
    this.allocateBuffers(["momentum_buffer"]);
  }

  /**
   * Throws a `RangeError` for a negative or non-finite `momentum`, a non-finite
   * `dampening`, or `nesterov` without `momentum > 0` and `dampening == 0`.
   */
  protected validateHyper(hyper: MomentumHyper): void {
    requireNonNegative("momentum", hyper.momentum);
    if (typeof hyper.dampening !== "number" || !Number.isFinite(hyper.dampening)) {
      throw new RangeError(`Invalid dampening: ${hyper.dampening}; expected a finite number`);
    }
    if (hyper.nesterov && (hyper.momentum <= 0 || hyper.dampening !== 0)) {
      throw new RangeError(
        `Nesterov momentum requires momentum > 0 and dampening 0, ` +
          `got momentum ${hyper.momentum} and dampening ${hyper.dampening}`,
      );
    }
  }

  /** Updates the momentum buffer, then the parameter. `step` 1 copies the gradient into the buffer. */
  protected updateParameter(
    param: SteppedParameter,
    group: OptimizerGroup,
    step: number,
  ): void {
    const { data, grad } = param;
    const { lr, weightDecay } = group;
    const { momentum, dampening, nesterov } = this.hyper;
    const buffer = this.buffer(param, "momentum_buffer");

    for (let i = 0; i < data.length; i++) {
      const g = grad[i] + weightDecay * data[i];
      buffer[i] = step === 1 ? g : momentum * buffer[i] + (1 - dampening) * g;
      const direction = nesterov ? g + momentum * buffer[i] : buffer[i];
      data[i] = data[i] - lr * direction;
    }
  }
}

// ---------------------------------------------------------------------------
// RMSprop
// ---------------------------------------------------------------------------

/** Options of `RMSprop`. Defaults are PyTorch 2.x's. */
export interface RMSpropOptions {
  /** Learning rate γ. Default 1e-2. */
  lr?: number;
  /** Smoothing constant α of the squared-gradient average. Default 0.99. */
  alpha?: number;
  /** Term added to the denominator. Default 1e-8. */
  eps?: number;
  /** L2 penalty λ, added to the gradient. Default 0. */
  weightDecay?: number;
  /** Momentum factor μ. Default 0. */
  momentum?: number;
  /** Divide by an estimate of the gradient's variance instead of its second moment. Default false. */
  centered?: boolean;
}

/** Hyperparameters of `RMSprop` as stored in its state. */
export type RMSpropHyper = { alpha: number; eps: number; momentum: number; centered: boolean };

/**
 * RMSprop as `torch.optim.RMSprop`:
 *
 * ```
 * g ← g + λθ
 * v ← αv + (1 − α)g²
 * ṽ ← v, or v − ḡ² with ḡ ← αḡ + (1 − α)g when centered
 * b ← μb + g / (√ṽ + ε), θ ← θ − γb    when μ > 0
 * θ ← θ − γg / (√ṽ + ε)                otherwise
 * ```
 *
 * Buffers: `square_avg`, plus `momentum_buffer` when μ > 0 and `grad_avg` when
 * centered.
 */
export class RMSprop extends BaseOptimizer<RMSpropHyper> {
  /** Always `"RMSprop"`. */
  readonly type: OptimizerType = "RMSprop";

  /**
   * Builds the optimizer and its zero-filled buffers. Throws a `RangeError`
   * for a negative or non-finite `alpha`, `eps` or `momentum`.
   */
  constructor(params: ParamsInput, options: RMSpropOptions = {}) {
    super(params, options.lr ?? 1e-2, options.weightDecay ?? 0, {
      alpha: options.alpha ?? 0.99,
      eps: options.eps ?? 1e-8,
      momentum: options.momentum ?? 0,
      centered: options.centered ?? false,
    });
    this.validateHyper(this.hyper);
    const names = ["square_avg"];
    if (this.hyper.momentum > 0) names.push("momentum_buffer");
    if (this.hyper.centered) names.push("grad_avg");
    this.allocateBuffers(names);
  }

  /** Throws a `RangeError` for a negative or non-finite `alpha`, `eps` or `momentum`. */
  protected validateHyper(hyper: RMSpropHyper): void {
    requireNonNegative("alpha", hyper.alpha);
    requireNonNegative("eps", hyper.eps);
    requireNonNegative("momentum", hyper.momentum);
  }

  /** Updates the running averages, then the parameter, as in the class formulas. */
  protected updateParameter(param: SteppedParameter, group: OptimizerGroup): void {
    const { data, grad } = param;
    const { lr, weightDecay } = group;
    const { alpha, eps, momentum, centered } = this.hyper;
    const squareAvg = this.buffer(param, "square_avg");
    const momentumBuffer = momentum > 0 ? this.buffer(param, "momentum_buffer") : null;
    const gradAvg = centered ? this.buffer(param, "grad_avg") : null;

    for (let i = 0; i < data.length; i++) {
      const g = grad[i] + weightDecay * data[i];
      squareAvg[i] = alpha * squareAvg[i] + (1 - alpha) * g * g;

      let variance = squareAvg[i];
      if (gradAvg !== null) {
        gradAvg[i] = alpha * gradAvg[i] + (1 - alpha) * g;
        // Float32 rounding can push v − ḡ² slightly below 0, which would make
        // the square root NaN, so it is clamped at 0. PyTorch does not clamp.
        variance = Math.max(0, variance - gradAvg[i] * gradAvg[i]);
      }
      const denominator = Math.sqrt(variance) + eps;

      if (momentumBuffer !== null) {
        momentumBuffer[i] = momentum * momentumBuffer[i] + g / denominator;
        data[i] = data[i] - lr * momentumBuffer[i];
      } else {
        data[i] = data[i] - lr * g / denominator;
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Adam and AdamW
// ---------------------------------------------------------------------------

/** The part of a `Backend` that Adam and AdamW use. Any full `Backend` fits. */
export type AdamBackend = Pick<Backend, "adamwUpdate" | "alloc">;

/** Options of `Adam` and `AdamW`. Defaults are PyTorch 2.x's. */
export interface AdamOptions {
  /** Learning rate γ. Default 1e-3. */
  lr?: number;
  /** Decay rate β₁ of the first moment. Default 0.9. */
  beta1?: number;
  /** Decay rate β₂ of the second moment. Default 0.999. */
  beta2?: number;
  /** Term added to the denominator. Default 1e-8. */
  eps?: number;
  /** Weight decay λ. Default 0 for `Adam` (an L2 penalty), 0.01 for `AdamW` (decoupled). */
  weightDecay?: number;
  /**
   * Kernels to run the update with. Without one, the plain loop of
   * `adamwReference` runs. The moment buffers are allocated with `backend.alloc`.
   */
  backend?: AdamBackend;
}

/** Hyperparameters of `Adam` and `AdamW` as stored in their state. */
export type AdamHyper = { beta1: number; beta2: number; eps: number };

/**
 * Applies one Adam update in plain TypeScript, the reference that backends are tested against.
 *
 * ```
 * g ← g + λθ                         (coupled: Adam's L2 penalty)
 * θ ← θ − γλθ                        (decoupled: AdamW)
 * m ← β₁m + (1 − β₁)g
 * v ← β₂v + (1 − β₂)g²
 * θ ← θ − γ · (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε)
 * ```
 *
 * Both decay forms use θ from before this step. The coupled term is skipped
 * when λ is 0, as in PyTorch. The decoupled θ is stored in float32 before the
 * Adam step, as PyTorch's in-place updates and `jsBackend.adamwUpdate` do.
 * `m` and `v` are read back after rounding to float32.
 */
function adamUpdate(
  param: Float32Array,
  grad: Float32Array,
  m: Float32Array,
  v: Float32Array,
  hyper: AdamWStep,
  decay: "coupled" | "decoupled",
): void {
  const { lr, beta1, beta2, eps, weightDecay, step } = hyper;
  const biasCorrection1 = 1 - beta1 ** step;
  const biasCorrection2 = 1 - beta2 ** step;

  for (let i = 0; i < param.length; i++) {
    let g = grad[i];
    if (decay === "coupled" && weightDecay !== 0) {
      g += weightDecay * param[i];
    }
    if (decay === "decoupled") {
      param[i] = param[i] - lr * weightDecay * param[i];
    }

    m[i] = beta1 * m[i] + (1 - beta1) * g;
    v[i] = beta2 * v[i] + (1 - beta2) * g * g;
    const mHat = m[i] / biasCorrection1;
    const vHat = v[i] / biasCorrection2;
    param[i] = param[i] - lr * mHat / (Math.sqrt(vHat) + eps);
  }
}

/**
 * Computes `Backend.adamwUpdate` in plain TypeScript: decoupled weight decay
 * `θ ← θ − γλθ`, then the Adam step (the formulas are on `adamUpdate` above).
 * It has the same signature, so a backend can delegate to it.
 */
export function adamwReference(
  param: Float32Array,
  grad: Float32Array,
  m: Float32Array,
  v: Float32Array,
  hyper: AdamWStep,
): void {
  adamUpdate(param, grad, m, v, hyper, "decoupled");
}

function validateAdamHyper(hyper: AdamHyper): void {
  requireUnitInterval("beta1", hyper.beta1);
  requireUnitInterval("beta2", hyper.beta2);
  requireNonNegative("eps", hyper.eps);
}

/**
 * Adam as `torch.optim.Adam` (without `amsgrad`). Its weight decay is an L2
 * penalty added to the gradient, so it passes through the moment estimates.
 *
 * With a `backend`, groups whose weight decay is 0 run `backend.adamwUpdate`,
 * and groups with weight decay keep the plain loop, because the backend kernel
 * only decouples decay.
 *
 * Buffers: `exp_avg` (m) and `exp_avg_sq` (v).
 */
export class Adam extends BaseOptimizer<AdamHyper> {
  /** Always `"Adam"`. */
  readonly type: OptimizerType = "Adam";
  /** Kernels for the update, or undefined for the plain loop. */
  protected readonly backend: AdamBackend | undefined;

  /**
   * Builds the optimizer and its zero-filled `exp_avg` and `exp_avg_sq`
   * buffers. Throws a `RangeError` unless `beta1` and `beta2` are in [0, 1)
   * and `eps` is finite and >= 0.
   */
  constructor(params: ParamsInput, options: AdamOptions = {}) {
    super(params, options.lr ?? 1e-3, options.weightDecay ?? 0, {
      beta1: options.beta1 ?? 0.9,
      beta2: options.beta2 ?? 0.999,
      eps: options.eps ?? 1e-8,
    });
    this.validateHyper(this.hyper);
    this.backend = options.backend;
    this.allocateBuffers(["exp_avg", "exp_avg_sq"], options.backend?.alloc.bind(options.backend));
  }

  /** Throws a `RangeError` unless `beta1` and `beta2` are in [0, 1) and `eps` is finite and >= 0. */
  protected validateHyper(hyper: AdamHyper): void {
    validateAdamHyper(hyper);
  }

  /** Applies one Adam step with an L2 penalty, on the backend when the group's weight decay is 0. */
  protected updateParameter(
    param: SteppedParameter,
    group: OptimizerGroup,
    step: number,
  ): void {
    const hyper: AdamWStep = { ...this.hyper, lr: group.lr, weightDecay: group.weightDecay, step };
    const m = this.buffer(param, "exp_avg");
    const v = this.buffer(param, "exp_avg_sq");
    if (this.backend !== undefined && group.weightDecay === 0) {
      this.backend.adamwUpdate(param.data, param.grad, m, v, hyper);
    } else {
      adamUpdate(param.data, param.grad, m, v, hyper, "coupled");
    }
  }
}

/**
 * AdamW as `torch.optim.AdamW`: decoupled weight decay `θ ← θ − γλθ`, then the
 * Adam step on the raw gradient. Default weight decay 0.01.
 *
 * With a `backend`, every update runs `backend.adamwUpdate`.
 *
 * Buffers: `exp_avg` (m) and `exp_avg_sq` (v).
 */
export class AdamW extends Adam {
  /** Always `"AdamW"`. */
  override readonly type: OptimizerType = "AdamW";

  /**
   * Builds the optimizer and its zero-filled `exp_avg` and `exp_avg_sq`
   * buffers, with weight decay 0.01 unless `options` sets one. Throws a
   * `RangeError` unless `beta1` and `beta2` are in [0, 1) and `eps` is finite
   * and >= 0.
   */
  constructor(params: ParamsInput, options: AdamOptions = {}) {
    super(params, { ...options, weightDecay: options.weightDecay ?? 0.01 });
  }

  /** Applies decoupled weight decay and one Adam step, on the backend when there is one. */
  protected override updateParameter(
    param: SteppedParameter,
    group: OptimizerGroup,
    step: number,
  ): void {
    const hyper: AdamWStep = { ...this.hyper, lr: group.lr, weightDecay: group.weightDecay, step };
    const m = this.buffer(param, "exp_avg");
    const v = this.buffer(param, "exp_avg_sq");
    if (this.backend !== undefined) {
      this.backend.adamwUpdate(param.data, param.grad, m, v, hyper);
    } else {
      adamwReference(param.data, param.grad, m, v, hyper);
    }
  }
}

// ---------------------------------------------------------------------------
// Learning-rate schedules
// ---------------------------------------------------------------------------

/**
 * Returns the linear-warmup rate at 0-based `step`:
 * `baseLr · min(1, (step + 1) / warmupSteps)`, and `baseLr` when `warmupSteps`
 * is 0. Step 0 therefore uses `baseLr / warmupSteps`, never 0, and step
 * `warmupSteps − 1` is the first to use the full `baseLr`.
 */
export function linearWarmupRate(step: number, baseLr: number, warmupSteps: number): number {
  if (step < warmupSteps) return baseLr * (step + 1) / warmupSteps;
  return baseLr;
}

/**
 * Returns the warmup-then-cosine rate at 0-based `step`.
 *
 * - `step < warmupSteps`: `linearWarmupRate(step, baseLr, warmupSteps)`.
 * - `warmupSteps ≤ step < totalSteps`: with
 *   `progress = (step − warmupSteps) / (totalSteps − warmupSteps)`,
 *   `floor + ½ (baseLr − floor)(1 + cos(π · progress))`. So step `warmupSteps`
 *   uses `baseLr`, and the rate would reach `floor` at step `totalSteps`, one
 *   past the last step of a `totalSteps`-step run (nanoGPT's `get_lr` with
 *   `lr_decay_iters = totalSteps`).
 * - `step ≥ totalSteps`: `floor`.
 */
export function cosineWithWarmupRate(
  step: number,
  totalSteps: number,
  baseLr: number,
  warmupSteps: number,
  floor: number,
): number {
  if (step < warmupSteps) return linearWarmupRate(step, baseLr, warmupSteps);
  if (step >= totalSteps) return floor;
  const progress = (step - warmupSteps) / (totalSteps - warmupSteps);
  return floor + 0.5 * (baseLr - floor) * (1 + Math.cos(Math.PI * progress));
}

function requireStepCount(name: string, value: number): void {
  if (!Number.isInteger(value) || value < 0) {
    throw new RangeError(`Invalid ${name}: ${value}; expected an integer >= 0`);
  }
}

/**
 * An optimizer wrapper that sets the wrapped optimizer's rate before each step.
 *
 * `lr` reads the rate that the next `step()` applies. Setting `lr` sets the
 * schedule's base (peak) rate. `zeroGrad` and `clipGradNorm` pass through.
 */
export abstract class Schedule implements Optimizer {
  /** Name of the concrete schedule, stored in its state. */
  abstract readonly type: ScheduleType;
  /** The wrapped optimizer, whose rate this schedule sets before each step. */
  readonly optimizer: Optimizer;
  #step = 0;
  #baseLr: number;
  #warmupSteps: number;

  /**
   * Wraps `optimizer` at step 0. Throws a `RangeError` unless `warmupSteps` is
   * an integer >= 0 and `baseLr` is finite and >= 0.
   */
  protected constructor(optimizer: Optimizer, warmupSteps: number, baseLr: number) {
    requireStepCount("warmupSteps", warmupSteps);
    requireNonNegative("baseLr", baseLr);
    this.optimizer = optimizer;
    this.#warmupSteps = warmupSteps;
    this.#baseLr = baseLr;
  }

  /** Returns the rate at 0-based absolute `step`. */
  abstract rateAt(step: number): number;

  /** Adds the schedule's own fields to its state. */
  protected abstract extraConfig(): Partial<ScheduleConfig>;

  /** Validates and applies the schedule's own fields from a loaded state. */
  protected abstract loadExtraConfig(config: ScheduleConfig): () => void;

  /** Number of `step()` calls so far, which is the absolute step the next call applies. */
  get stepCount(): number {
    return this.#step;
  }

  /** Peak rate, reached at the end of the warmup. */
  get baseLr(): number {
    return this.#baseLr;
  }

  /** Steps of linear warmup. */
  get warmupSteps(): number {
    return this.#warmupSteps;
  }

  /** Rate that the next `step()` applies, `rateAt(stepCount)`. */
  get lr(): number {
    return this.rateAt(this.#step);
  }

  /** Sets the base (peak) rate. Throws a `RangeError` unless it is finite and >= 0. */
  set lr(value: number) {
    requireNonNegative("lr", value);
    this.#baseLr = value;
  }

  /** Sets the wrapped optimizer's rate to `rateAt(stepCount)`, steps it, and advances the count. */
  step(): void {
    this.optimizer.lr = this.rateAt(this.#step);
    this.optimizer.step();
    this.#step += 1;
  }

  /** Fills the wrapped optimizer's gradients with zeros. */
  zeroGrad(): void {
    this.optimizer.zeroGrad();
  }

  /** Clips the wrapped optimizer's gradients and returns their norm before clipping. */
  clipGradNorm(maxNorm: number): number {
    return this.optimizer.clipGradNorm(maxNorm);
  }

  /** Returns the schedule's fields wrapped around the optimizer's state, with the optimizer's buffers. */
  stateDict(): OptimizerState {
    const inner = this.optimizer.stateDict();
    const config: ScheduleConfig = {
      type: this.type,
      step: this.#step,
      baseLr: this.#baseLr,
      warmupSteps: this.#warmupSteps,
      ...this.extraConfig(),
      optimizer: inner.config,
    };
    return { config, buffers: inner.buffers };
  }

  /**
   * Restores a state from `stateDict()`, the wrapped optimizer's included.
   * Nothing changes unless every field is valid.
   *
   * @throws Error naming the first mismatch.
   */
  loadStateDict(state: OptimizerState): void {
    const config = state.config as ScheduleConfig;
    if (config.type !== this.type) {
      throw new Error(`Cannot load ${config.type} state into a ${this.type} schedule`);
    }
    requireStepCount("step in the schedule state", config.step);
    requireNonNegative("baseLr in the schedule state", config.baseLr);
    requireStepCount("warmupSteps in the schedule state", config.warmupSteps);
    const applyExtra = this.loadExtraConfig(config);
    if (typeof config.optimizer !== "object" || config.optimizer === null) {
      throw new Error("Schedule state has no optimizer state");
    }

    // The wrapped optimizer validates everything before it changes anything.
    this.optimizer.loadStateDict({ config: config.optimizer, buffers: state.buffers });
    this.#step = config.step;
    this.#baseLr = config.baseLr;
    this.#warmupSteps = config.warmupSteps;
    applyExtra();
  }
}

/** Options of `LinearWarmup`. */
export interface LinearWarmupOptions {
  /** Steps over which the rate rises to the base rate. */
  warmupSteps: number;
  /** Peak rate. Defaults to the wrapped optimizer's `lr` at construction. */
  baseLr?: number;
}

/**
 * Linear warmup to a constant rate: step `s` (0-based) uses
 * `baseLr · min(1, (s + 1) / warmupSteps)`. See `linearWarmupRate`.
 */
export class LinearWarmup extends Schedule {
  /** Always `"LinearWarmup"`. */
  readonly type: ScheduleType = "LinearWarmup";

  /**
   * Wraps `optimizer` at step 0. Throws a `RangeError` unless `warmupSteps` is
   * an integer >= 0 and the base rate is finite and >= 0.
   */
  constructor(optimizer: Optimizer, options: LinearWarmupOptions) {
    super(optimizer, options.warmupSteps, options.baseLr ?? optimizer.lr);
  }

  /** Returns `linearWarmupRate(step, baseLr, warmupSteps)` for 0-based `step`. */
  rateAt(step: number): number {
    return linearWarmupRate(step, this.baseLr, this.warmupSteps);
  }

  /** Returns no fields, because the base state covers this schedule. */
  protected extraConfig(): Partial<ScheduleConfig> {
    return {};
  }

  /** Returns a no-op, because this schedule has no fields of its own. */
  protected loadExtraConfig(): () => void {
    return () => {};
  }
}

/** Options of `CosineWithWarmup`. */
export interface CosineWithWarmupOptions {
  /** Steps of linear warmup. */
  warmupSteps: number;
  /** Step at which the rate reaches `floor`, usually the length of the run. */
  totalSteps: number;
  /** Peak rate. Defaults to the wrapped optimizer's `lr` at construction. */
  baseLr?: number;
  /** Final rate, an absolute value. Defaults to `0.1 · baseLr`. */
  floor?: number;
}

/**
 * Linear warmup, then cosine decay from the base rate to a floor. See
 * `cosineWithWarmupRate` for the exact rate at each step.
 *
 * To resume a run with a longer budget, load its state and then call
 * `setTotalSteps`: the decay stretches over the new total from the resumed
 * step on.
 */
export class CosineWithWarmup extends Schedule {
  /** Always `"CosineWithWarmup"`. */
  readonly type: ScheduleType = "CosineWithWarmup";
  #totalSteps: number;
  #floor: number;

  /**
   * Wraps `optimizer` at step 0. Throws a `RangeError` unless `warmupSteps` and
   * `totalSteps` are integers with `0 <= warmupSteps <= totalSteps`, and the
   * base rate and floor are finite and >= 0.
   */
  constructor(optimizer: Optimizer, options: CosineWithWarmupOptions) {
    const baseLr = options.baseLr ?? optimizer.lr;
    super(optimizer, options.warmupSteps, baseLr);
    const floor = options.floor ?? 0.1 * baseLr;
    requireNonNegative("floor", floor);
    this.#validateTotal(options.totalSteps, options.warmupSteps);
    this.#totalSteps = options.totalSteps;
    this.#floor = floor;
  }

  /** Step at which the rate reaches `floor`. */
  get totalSteps(): number {
    return this.#totalSteps;
  }

  /** Final rate, an absolute value. */
  get floor(): number {
    return this.#floor;
  }

  /** Sets the step at which the decay reaches the floor. It must be at least `warmupSteps`. */
  setTotalSteps(totalSteps: number): void {
    this.#validateTotal(totalSteps, this.warmupSteps);
    this.#totalSteps = totalSteps;
  }

  /** Returns `cosineWithWarmupRate` at 0-based `step` with this schedule's fields. */
  rateAt(step: number): number {
    return cosineWithWarmupRate(
      step,
      this.#totalSteps,
      this.baseLr,
      this.warmupSteps,
      this.#floor,
    );
  }

  /** Returns `totalSteps` and `floor`. */
  protected extraConfig(): Partial<ScheduleConfig> {
    return { totalSteps: this.#totalSteps, floor: this.#floor };
  }

  /**
   * Checks `totalSteps` and `floor` from a loaded state and returns the
   * function that applies them. Throws a `RangeError` for an invalid value.
   */
  protected loadExtraConfig(config: ScheduleConfig): () => void {
    const { totalSteps, floor } = config;
    this.#validateTotal(totalSteps as number, config.warmupSteps);
    requireNonNegative("floor in the schedule state", floor as number);
    return () => {
      this.#totalSteps = totalSteps as number;
      this.#floor = floor as number;
    };
  }

  #validateTotal(totalSteps: number, warmupSteps: number): void {
    requireStepCount("totalSteps", totalSteps);
    if (totalSteps < warmupSteps) {
      throw new RangeError(
        `Invalid totalSteps: ${totalSteps}; expected at least warmupSteps (${warmupSteps})`,
      );
    }
  }
}
