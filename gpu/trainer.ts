/**
 * Trains the GPT of `lib/gpt.ts` on WebGPU with every tensor kept on the GPU.
 *
 * Parameters, gradients, AdamW moments and activations live in GPU buffers
 * laid out once per model shape. One training step is one submitted command
 * buffer: forward, fused cross-entropy, backward, gradient norm and clipping,
 * and AdamW. Only the loss and the gradient norm come back to the host; the
 * token ids are the only upload. The code reads like llm.c's `train_gpt2.c`:
 * each layer's forward pass is recorded in order, and its backward pass
 * mirrors it in reverse.
 *
 * Parameters use the Hugging Face GPT-2 names and layouts (`wte.weight`
 * `[V, C]`, `h.0.attn.c_attn.weight` `[C, 3C]`, …, untied `lm_head.weight`
 * `[V, C]`), so `readWeights` and `readOptimizerState` produce what the CPU
 * trainer saves, and a run can move between the two.
 *
 * @example
 * ```ts
 * import { requestGpu } from "./device.ts";
 * import { GpuTrainer } from "./trainer.ts";
 * import { GPT } from "../lib/gpt.ts";
 * import { namedParameters } from "../lib/nn.ts";
 * const config = { vocabSize: 40, contextLength: 8, dModel: 16, layers: 2, heads: 2 };
 * const weights = new Map(
 *   [...namedParameters(new GPT(config))].map(([name, p]) => [name, p.data]),
 * );
 * const trainer = await GpuTrainer.create(await requestGpu(), config, weights, {
 *   batchSize: 2,
 *   lr: 1e-3,
 * });
 * const inputs = new Int32Array(2 * 8); // B = 2 sequences of T = 8 token ids
 * const targets = new Int32Array(2 * 8);
 * const { loss, gradNorm } = await trainer.step(inputs, targets, 1e-3);
 * trainer.destroy();
 * ```
 *
 * @module
 */

import type { OptimizerConfig, OptimizerState, ScheduleConfig } from "../lib/optim.ts";
// Re-exported so that the documentation of this module is complete.
export type {
  GroupConfig,
  OptimizerConfig,
  OptimizerState,
  OptimizerType,
  ScheduleConfig,
  ScheduleType,
} from "../lib/optim.ts";
import type { Gpu } from "./device.ts";
import {
  ADAM_STEP_BYTES,
  alignUp,
  BufferPool,
  buildTokenIndex,
  checkErrors,
  download,
  downloadAll,
  type GpuView,
  Kernels,
  NORM_PARTIALS,
  Plan,
  slice,
  STAT_LOSS,
  STAT_NORM,
  STATS_LENGTH,
  upload,
  VIEW_ALIGNMENT,
  writeAdamStep,
} from "./kernels.ts";

/** LayerNorm epsilon of GPT-2. */
const LN_EPS = 1e-5;

/** Recorded plans kept per trainer. Sampling with a growing context records one per length. */
const MAX_CACHED_PLANS = 16;

/** The model's shape, the same fields as `GPTConfig` in lib/gpt.ts. */
export interface GpuModelConfig {
  /** V: number of distinct tokens. */
  vocabSize: number;
  /** Maximum sequence length T, the rows of `wpe.weight`. */
  contextLength: number;
  /** C: width of the residual stream. */
  dModel: number;
  /** Number of transformer blocks. */
  layers: number;
  /** H: attention heads per block, which must divide `dModel`. */
  heads: number;
}

/** Batch size and AdamW hyperparameters; the defaults are those of `AdamW` in lib/optim.ts. */
export interface GpuTrainerOptions {
  /** Sequences per step: B. */
  batchSize: number;
  /** Learning rate used when `step` gets none. */
  lr: number;
  /** Default 0.9. */
  beta1?: number;
  /** Default 0.999. */
  beta2?: number;
  /** Default 1e-8. */
  eps?: number;
  /** Decoupled weight decay of the parameters that `decay` selects (default 0.01). */
  weightDecay?: number;
  /** Maximum total L2 norm of the gradients, or null (the default) for no clipping. */
  clipGrad?: number | null;
  /**
   * Returns whether a parameter gets weight decay. The default is the rule
   * of `decayGroups` in lib/optim.ts: matrices decay, while embeddings,
   * biases and LayerNorm parameters do not.
   */
  decay?: (name: string) => boolean;
}

/** Loss and gradient norm of one training step. */
export interface StepResult {
  /** Mean cross-entropy of the batch, before the update. */
  loss: number;
  /** Total L2 norm of the gradients, before clipping. */
  gradNorm: number;
}

/** One parameter tensor inside the packed parameter buffer. */
interface TensorSlot {
  name: string;
  shape: number[];
  /** First element in the packed buffers, a multiple of `VIEW_ALIGNMENT`. */
  offset: number;
  length: number;
  decay: boolean;
}

/** The activations of one transformer block that its backward pass reads. */
interface BlockActivations {
  ln1: GpuView;
  ln1Mean: GpuView;
  ln1Rstd: GpuView;
  qkv: GpuView;
  /** Attention weights `[B, H, T, T]`. */
  probs: GpuView;
  /** Attention output before `attn.c_proj`. */
  atty: GpuView;
  /** Residual stream after the attention branch. */
  res1: GpuView;
  ln2: GpuView;
  ln2Mean: GpuView;
  ln2Rstd: GpuView;
  /** MLP pre-activation `[N, 4C]`. */
  fc: GpuView;
  gelu: GpuView;
  /** Residual stream after the MLP branch: the block's output. */
  res2: GpuView;
}

/** Returns the parameter names and shapes of a GPT, in the order of `GPT.parameters()`. */
export function gptParameterShapes(config: GpuModelConfig): [string, number[]][] {
  const { vocabSize: V, contextLength: T, dModel: C } = config;
  const shapes: [string, number[]][] = [["wte.weight", [V, C]], ["wpe.weight", [T, C]]];
  for (let l = 0; l < config.layers; l++) {
    const h = `h.${l}`;
    shapes.push(
      [`${h}.ln_1.weight`, [C]],
      [`${h}.ln_1.bias`, [C]],
      [`${h}.attn.c_attn.weight`, [C, 3 * C]],
      [`${h}.attn.c_attn.bias`, [3 * C]],
      [`${h}.attn.c_proj.weight`, [C, C]],
      [`${h}.attn.c_proj.bias`, [C]],
      [`${h}.ln_2.weight`, [C]],
      [`${h}.ln_2.bias`, [C]],
      [`${h}.mlp.c_fc.weight`, [C, 4 * C]],
      [`${h}.mlp.c_fc.bias`, [4 * C]],
      [`${h}.mlp.c_proj.weight`, [4 * C, C]],
      [`${h}.mlp.c_proj.bias`, [C]],
    );
  }
  shapes.push(["ln_f.weight", [C]], ["ln_f.bias", [C]], ["lm_head.weight", [V, C]]);
  return shapes;
}

/** Returns the default weight-decay rule: two or more dimensions, and not an embedding table. */
function defaultDecay(shapes: Map<string, number[]>): (name: string) => boolean {
  return (name) => {
    const embedding = ["wte.weight", "wpe.weight"].some((suffix) =>
      name === suffix || name.endsWith(`.${suffix}`)
    );
    return (shapes.get(name)?.length ?? 0) >= 2 && !embedding;
  };
}

/** Throws unless every field of `values` is a positive integer. */
function requirePositiveIntegers(context: string, values: Record<string, number>): void {
  for (const [name, value] of Object.entries(values)) {
    if (!Number.isInteger(value) || value <= 0) {
      throw new RangeError(`${context}: ${name} must be a positive integer, got ${value}`);
    }
  }
}

/** A GPT training loop on one WebGPU device. */
export class GpuTrainer {
  /** The model's shape. */
  readonly config: GpuModelConfig;
  /** Name of the adapter the trainer runs on. */
  readonly adapterName: string;
  /** The device that contains every buffer of the trainer. */
  readonly device: GPUDevice;
  /** The compiled kernels the trainer records its plans from. */
  readonly kernels: Kernels;

  readonly #options: Required<Omit<GpuTrainerOptions, "decay" | "clipGrad">> & {
    clipGrad: number | null;
  };
  readonly #pool: BufferPool;
  readonly #slots: TensorSlot[];
  readonly #slotByName: Map<string, TensorSlot>;
  readonly #plans = new Map<string, Plan>();

  // Packed parameters, gradients and AdamW moments, one buffer each.
  readonly #params: GpuView;
  readonly #grads: GpuView;
  readonly #m: GpuView;
  readonly #v: GpuView;

  // Inputs of a step.
  readonly #tokens: GpuView;
  readonly #targets: GpuView;
  readonly #tokenIndex: GpuView;
  readonly #tokenIndexHost: Uint32Array;

  // Activations, largest batch and context.
  readonly #encoded: GpuView;
  readonly #blocks: BlockActivations[];
  readonly #proj: GpuView;
  readonly #lnf: GpuView;
  readonly #lnfMean: GpuView;
  readonly #lnfRstd: GpuView;
  readonly #logits: GpuView;
  readonly #losses: GpuView;

  // Activation gradients, shared by all blocks as in llm.c.
  readonly #dres: GpuView;
  readonly #dln: GpuView;
  readonly #datty: GpuView;
  readonly #dqkv: GpuView;
  readonly #dprobs: GpuView;
  readonly #dfc: GpuView;

  // Reductions and the optimizer.
  readonly #stats: GpuView;
  readonly #normChunks: GpuView[];
  readonly #partials: GpuView;
  readonly #adamStep: GPUBuffer;
  readonly #statsStaging: GPUBuffer;

  #stepCount = 0;
  #lastLr: number;
  #busy = false;

  private constructor(
    gpu: Gpu,
    kernels: Kernels,
    config: GpuModelConfig,
    options: GpuTrainerOptions,
  ) {
    this.config = { ...config };
    this.adapterName = gpu.adapterName;
    this.device = gpu.device;
    this.kernels = kernels;
    this.#options = {
      batchSize: options.batchSize,
      lr: options.lr,
      beta1: options.beta1 ?? 0.9,
      beta2: options.beta2 ?? 0.999,
      eps: options.eps ?? 1e-8,
      weightDecay: options.weightDecay ?? 0.01,
      clipGrad: options.clipGrad ?? null,
    };
    this.#lastLr = options.lr;

    const { vocabSize: V, contextLength: T, dModel: C, heads: H } = config;
    const B = options.batchSize;
    const N = B * T;
    const pool = new BufferPool(this.device);
    this.#pool = pool;

    // A shape too large for the adapter throws part way through the layout,
    // so the buffers created until then are freed before rethrowing.
    try {
      // Parameters: every tensor starts on a 256-byte boundary so that it can
      // be bound on its own.
      const shapes = gptParameterShapes(config);
      const decay = options.decay ?? defaultDecay(new Map(shapes));
      let offset = 0;
      this.#slots = shapes.map(([name, shape]) => {
        const length = shape.reduce((a, b) => a * b, 1);
        const slot = { name, shape, offset, length, decay: decay(name) };
        offset = alignUp(offset + length, VIEW_ALIGNMENT);
        return slot;
      });
      this.#slotByName = new Map(this.#slots.map((slot) => [slot.name, slot]));
      this.#params = pool.view("params", offset);
      this.#grads = pool.view("grads", offset);
      this.#m = pool.view("exp_avg", offset);
      this.#v = pool.view("exp_avg_sq", offset);

      this.#tokens = pool.view("tokens", N);
      this.#targets = pool.view("targets", N);
      this.#tokenIndexHost = new Uint32Array(V + 1 + N);
      this.#tokenIndex = pool.view("tokenIndex", V + 1 + N);

      this.#encoded = pool.view("encoded", N * C);
      this.#blocks = Array.from({ length: config.layers }, (_, l) => {
        const view = (name: string, length: number) => pool.view(`h.${l}.${name}`, length);
        return {
          ln1: view("ln1", N * C),
          ln1Mean: view("ln1Mean", N),
          ln1Rstd: view("ln1Rstd", N),
          qkv: view("qkv", N * 3 * C),
          probs: view("probs", B * H * T * T),
          atty: view("atty", N * C),
          res1: view("res1", N * C),
          ln2: view("ln2", N * C),
          ln2Mean: view("ln2Mean", N),
          ln2Rstd: view("ln2Rstd", N),
          fc: view("fc", N * 4 * C),
          gelu: view("gelu", N * 4 * C),
          res2: view("res2", N * C),
        };
      });
      this.#proj = pool.view("proj", N * C);
      this.#lnf = pool.view("lnf", N * C);
      this.#lnfMean = pool.view("lnfMean", N);
      this.#lnfRstd = pool.view("lnfRstd", N);
      this.#logits = pool.view("logits", N * V);
      this.#losses = pool.view("losses", N);

      this.#dres = pool.view("dres", N * C);
      this.#dln = pool.view("dln", N * C);
      this.#datty = pool.view("datty", N * C);
      this.#dqkv = pool.view("dqkv", N * 3 * C);
      this.#dprobs = pool.view("dprobs", B * H * T * T);
      this.#dfc = pool.view("dfc", N * 4 * C);

      // The gradient norm reads the packed gradients in chunks no larger than
      // one storage binding may be.
      const maxChunk =
        Math.floor(this.device.limits.maxStorageBufferBindingSize / 4 / VIEW_ALIGNMENT) *
        VIEW_ALIGNMENT;
      this.#normChunks = [];
      for (let start = 0; start < offset; start += maxChunk) {
        this.#normChunks.push(slice(this.#grads, start, Math.min(maxChunk, offset - start)));
      }
      this.#partials = pool.view("normPartials", this.#normChunks.length * NORM_PARTIALS);
      this.#stats = pool.view("stats", STATS_LENGTH);
    } catch (error) {
      pool.destroy();
      throw error;
    }
    this.#adamStep = this.device.createBuffer({
      label: "adamStep",
      size: ADAM_STEP_BYTES,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
    this.#statsStaging = this.device.createBuffer({
      label: "statsStaging",
      size: STATS_LENGTH * 4,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
  }

  /**
   * Lays out the buffers of one model shape on the GPU and uploads `weights`,
   * which must contain exactly the parameters of `gptParameterShapes(config)`.
   *
   * @throws RangeError for an invalid config or option, Error for a missing,
   * unknown or wrongly sized weight, or when the adapter's limits are too
   * small for the shape.
   */
  static async create(
    gpu: Gpu,
    config: GpuModelConfig,
    weights: Map<string, Float32Array>,
    options: GpuTrainerOptions,
  ): Promise<GpuTrainer> {
    const { vocabSize, contextLength, dModel, layers, heads } = config;
    requirePositiveIntegers("GPU model config", {
      vocabSize,
      contextLength,
      dModel,
      layers,
      heads,
    });
    if (dModel % heads !== 0) {
      throw new RangeError(`heads (${heads}) must divide dModel (${dModel})`);
    }
    requirePositiveIntegers("GPU trainer options", { batchSize: options.batchSize });
    validateHyperparameters(options);

    const kernels = await Kernels.create(gpu.device);
    return await checkErrors(gpu.device, "laying out the GPU trainer", () => {
      const trainer = new GpuTrainer(gpu, kernels, config, options);
      try {
        trainer.#writeWeights(weights);
      } catch (error) {
        trainer.destroy();
        throw error;
      }
      return trainer;
    });
  }

  /** Number of AdamW steps taken so far, including those of a restored optimizer state. */
  get stepCount(): number {
    return this.#stepCount;
  }

  /** Bytes of all GPU buffers the trainer laid out. */
  get bufferBytes(): number {
    return this.#pool.bytes;
  }

  /**
   * Runs one training step on `inputs` and `targets`, B × T token ids in
   * row-major order with B = `batchSize` and T = `inputs.length / B` at most
   * `contextLength`, and updates the parameters with AdamW at rate `lr`.
   * Returns the loss before the update and the gradient norm before clipping.
   */
  async step(
    inputs: Int32Array,
    targets: Int32Array,
    lr: number = this.#options.lr,
  ): Promise<StepResult> {
    if (!(Number.isFinite(lr) && lr >= 0)) {
      throw new RangeError(`invalid learning rate ${lr}; expected a finite number >= 0`);
    }
    const T = this.#sequenceLength(inputs, targets);
    const B = this.#options.batchSize;
    this.#uploadBatch(inputs, targets, true);

    const { beta1, beta2, eps } = this.#options;
    const step = this.#stepCount + 1;
    writeAdamStep(this.device, this.#adamStep, { lr, beta1, beta2, eps, step });
    const stats = await this.#runForStats("train", B, T);
    this.#stepCount = step;
    this.#lastLr = lr;
    return { loss: stats[STAT_LOSS], gradNorm: stats[STAT_NORM] };
  }

  /** Returns the mean cross-entropy of `targets`, shaped like `step`'s inputs, without updating anything. */
  async evaluate(inputs: Int32Array, targets: Int32Array): Promise<number> {
    const T = this.#sequenceLength(inputs, targets);
    this.#uploadBatch(inputs, targets, false);
    const stats = await this.#runForStats("evaluate", this.#options.batchSize, T);
    return stats[STAT_LOSS];
  }

  /**
   * Returns the logits `[B, V]` of the last position of each of the B
   * sequences in `inputs` (B × T token ids, B ≤ `batchSize`, T ≤
   * `contextLength`), for sampling the next token.
   */
  async logits(inputs: Int32Array, B: number, T: number): Promise<Float32Array> {
    requirePositiveIntegers("logits", { B, T });
    if (B > this.#options.batchSize || T > this.config.contextLength) {
      throw new RangeError(
        `logits of ${B} × ${T} tokens exceed the trainer's batch ${this.#options.batchSize} ` +
          `× context ${this.config.contextLength}`,
      );
    }
    if (inputs.length !== B * T) {
      throw new RangeError(`expected ${B * T} token ids, got ${inputs.length}`);
    }
    this.#checkTokens(inputs, "input");
    upload(this.device, this.#tokens, inputs);

    const V = this.config.vocabSize;
    return await this.#exclusive(async () => {
      const plan = this.#plan("logits", B, T);
      return await checkErrors(this.device, "computing logits", async () => {
        plan.submit();
        return await download(this.device, slice(this.#logits, 0, B * V));
      });
    });
  }

  /** Returns a copy of every parameter, keyed by its Hugging Face GPT-2 name. */
  async readWeights(): Promise<Map<string, Float32Array>> {
    const packed = await this.#exclusive(() => download(this.device, this.#params));
    return new Map(
      this.#slots.map((slot) => [slot.name, packed.slice(slot.offset, slot.offset + slot.length)]),
    );
  }

  /**
   * Returns the AdamW state in the format of `AdamW.stateDict()` in
   * lib/optim.ts: moments keyed `<name>.exp_avg` and `<name>.exp_avg_sq`,
   * one step count per parameter, and two groups (decayed parameters with
   * `weightDecay`, the others with 0) in the order `decayGroups` produces.
   * A CPU `AdamW` built on `decayGroups(model.parameters(), weightDecay)`
   * loads it with `loadStateDict`.
   */
  async readOptimizerState(): Promise<OptimizerState> {
    const [m, v] = await this.#exclusive(() => downloadAll(this.device, [this.#m, this.#v]));
    const buffers = new Map<string, Float32Array>();
    for (const slot of this.#slots) {
      const end = slot.offset + slot.length;
      buffers.set(`${slot.name}.exp_avg`, m.slice(slot.offset, end));
      buffers.set(`${slot.name}.exp_avg_sq`, v.slice(slot.offset, end));
    }

    const { beta1, beta2, eps, weightDecay } = this.#options;
    const lr = this.#lastLr;
    const names = (decay: boolean) =>
      this.#slots.filter((slot) => slot.decay === decay).map((slot) => slot.name);
    const config: OptimizerConfig = {
      type: "AdamW",
      lr,
      hyper: { beta1, beta2, eps },
      groups: [
        { params: names(true), lr, lrScale: 1, weightDecay },
        { params: names(false), lr, lrScale: 1, weightDecay: 0 },
      ],
      steps: Object.fromEntries(this.#slots.map((slot) => [slot.name, this.#stepCount])),
    };
    return { config, buffers };
  }

  /**
   * Restores the moments and the step count from an AdamW state, such as
   * one that `AdamW.stateDict()` or `readOptimizerState` returned. A
   * schedule's state is unwrapped to its optimizer's. The hyperparameters
   * stay those of this trainer's options, and the learning rate is the one
   * passed to each `step`.
   *
   * @throws Error when the state is not AdamW's, when its parameters differ
   * from this model's, or when its step counts differ between parameters.
   */
  writeOptimizerState(state: OptimizerState): void {
    let config: OptimizerConfig | ScheduleConfig = state.config;
    while ("optimizer" in config) config = config.optimizer;
    if (config.type !== "AdamW") {
      throw new Error(`cannot load ${config.type} optimizer state into the GPU AdamW trainer`);
    }

    let step: number | null = null;
    for (const slot of this.#slots) {
      const count = config.steps[slot.name];
      if (!Number.isInteger(count) || count < 0) {
        throw new Error(`optimizer state has step count ${count} for parameter "${slot.name}"`);
      }
      if (step !== null && count !== step) {
        throw new Error(
          `optimizer state has step count ${count} for "${slot.name}" but ${step} for others; ` +
            "the GPU trainer keeps one step count for all parameters",
        );
      }
      step = count;
    }

    const expected = new Set<string>();
    const m = new Float32Array(this.#m.length);
    const v = new Float32Array(this.#v.length);
    for (const slot of this.#slots) {
      for (const [suffix, target] of [["exp_avg", m], ["exp_avg_sq", v]] as const) {
        const key = `${slot.name}.${suffix}`;
        expected.add(key);
        const values = state.buffers.get(key);
        if (values === undefined) throw new Error(`optimizer state is missing buffer "${key}"`);
        if (values.length !== slot.length) {
          throw new Error(
            `optimizer state buffer "${key}" has ${values.length} values, expected ${slot.length}`,
          );
        }
        target.set(values, slot.offset);
      }
    }
    for (const key of state.buffers.keys()) {
      if (!expected.has(key)) throw new Error(`optimizer state has unknown buffer "${key}"`);
    }

    upload(this.device, this.#m, m);
    upload(this.device, this.#v, v);
    this.#stepCount = step ?? 0;
  }

  /** Frees every GPU buffer of the trainer. The device stays open. */
  destroy(): void {
    for (const plan of this.#plans.values()) plan.destroy();
    this.#plans.clear();
    this.#pool.destroy();
    this.#adamStep.destroy();
    this.#statsStaging.destroy();
  }

  // -------------------------------------------------------------------------
  // Host-side helpers.

  #writeWeights(weights: Map<string, Float32Array>): void {
    const packed = new Float32Array(this.#params.length);
    for (const slot of this.#slots) {
      const values = weights.get(slot.name);
      if (values === undefined) throw new Error(`weights are missing "${slot.name}"`);
      if (values.length !== slot.length) {
        throw new Error(
          `weight "${slot.name}" has ${values.length} values, expected ${slot.length} ` +
            `for shape [${slot.shape.join(", ")}]`,
        );
      }
      packed.set(values, slot.offset);
    }
    for (const name of weights.keys()) {
      if (!this.#slotByName.has(name)) {
        throw new Error(`unknown weight "${name}": this GPT config has no such parameter`);
      }
    }
    upload(this.device, this.#params, packed);
  }

  /** Returns T for a step or evaluation batch, after checking both arrays. */
  #sequenceLength(inputs: Int32Array, targets: Int32Array): number {
    const B = this.#options.batchSize;
    const T = inputs.length / B;
    if (!Number.isInteger(T) || T < 1 || T > this.config.contextLength) {
      throw new RangeError(
        `expected ${B} × T token ids with 1 ≤ T ≤ ${this.config.contextLength}, ` +
          `got ${inputs.length}`,
      );
    }
    if (targets.length !== inputs.length) {
      throw new RangeError(`expected ${inputs.length} targets, got ${targets.length}`);
    }
    return T;
  }

  #checkTokens(tokens: Int32Array, role: "input" | "target"): void {
    const V = this.config.vocabSize;
    for (let i = 0; i < tokens.length; i++) {
      if (!(tokens[i] >= 0 && tokens[i] < V)) {
        throw new RangeError(`${role} token id ${tokens[i]} at position ${i} is outside [0, ${V})`);
      }
    }
  }

  #uploadBatch(inputs: Int32Array, targets: Int32Array, training: boolean): void {
    this.#checkTokens(inputs, "input");
    this.#checkTokens(targets, "target");
    upload(this.device, this.#tokens, inputs);
    upload(this.device, this.#targets, targets);
    if (training) {
      const index = buildTokenIndex(inputs, this.config.vocabSize, this.#tokenIndexHost);
      upload(
        this.device,
        this.#tokenIndex,
        index.subarray(0, this.config.vocabSize + 1 + inputs.length),
      );
    }
  }

  /** Runs `fn` unless another call of this trainer is still running, because mapping one staging buffer twice fails. */
  async #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#busy) {
      throw new Error("GpuTrainer calls must not overlap; await each call before the next");
    }
    this.#busy = true;
    try {
      return await fn();
    } finally {
      this.#busy = false;
    }
  }

  /** Submits the plan of `kind` and reads the statistics buffer back. */
  #runForStats(kind: "train" | "evaluate", B: number, T: number): Promise<Float32Array> {
    return this.#exclusive(() => {
      const plan = this.#plan(kind, B, T);
      return checkErrors(
        this.device,
        kind === "train" ? "training step" : "evaluation",
        async () => {
          const encoder = this.device.createCommandEncoder();
          plan.encode(encoder);
          encoder.copyBufferToBuffer(
            this.#stats.buffer,
            this.#stats.offset * 4,
            this.#statsStaging,
            0,
            STATS_LENGTH * 4,
          );
          this.device.queue.submit([encoder.finish()]);
          await this.#statsStaging.mapAsync(GPUMapMode.READ);
          const stats = new Float32Array(this.#statsStaging.getMappedRange()).slice();
          this.#statsStaging.unmap();
          return stats;
        },
      );
    });
  }

  /** Returns the recorded plan of `kind` for B × T tokens, recording it on first use. */
  #plan(kind: "train" | "evaluate" | "logits", B: number, T: number): Plan {
    const key = `${kind} ${B}×${T}`;
    let plan = this.#plans.get(key);
    if (plan !== undefined) {
      // Reinsert so that the map's order is least recently used first.
      this.#plans.delete(key);
      this.#plans.set(key, plan);
      return plan;
    }

    plan = new Plan(this.device);
    this.#recordForward(plan, B, T);
    if (kind === "logits") {
      this.#recordLastLogits(plan, B, T);
    } else {
      this.#recordLoss(plan, B * T, kind === "train");
    }
    if (kind === "train") {
      this.#recordBackward(plan, B, T);
      this.#recordUpdate(plan);
    }

    this.#plans.set(key, plan);
    if (this.#plans.size > MAX_CACHED_PLANS) {
      const [oldestKey, oldest] = this.#plans.entries().next().value!;
      oldest.destroy();
      this.#plans.delete(oldestKey);
    }
    return plan;
  }

  /** Returns the view of a parameter, or of its gradient with `of = this.#grads`. */
  #tensor(name: string, of: GpuView = this.#params): GpuView {
    const slot = this.#slotByName.get(name);
    if (slot === undefined) throw new Error(`no parameter named "${name}"`);
    return slice(of, slot.offset, slot.length);
  }

  // -------------------------------------------------------------------------
  // The model, forward and backward.

  /** Records `out = x · W + b` for `x` `[rows, inDim]` and `W` `[inDim, outDim]` (Conv1D layout). */
  #linearForward(
    plan: Plan,
    x: GpuView,
    weight: string,
    out: GpuView,
    rows: number,
    inDim: number,
    outDim: number,
  ): void {
    this.kernels.matmul(plan, x, this.#tensor(`${weight}.weight`), out, {
      m: rows,
      n: outDim,
      k: inDim,
    });
    this.kernels.biasAdd(plan, out, this.#tensor(`${weight}.bias`), rows, outDim);
  }

  /** Records the backward pass of `#linearForward`: `dW += xᵀ·dout`, `db += Σ dout`, `dx = dout·Wᵀ`. */
  #linearBackward(
    plan: Plan,
    dout: GpuView,
    x: GpuView,
    weight: string,
    dx: GpuView,
    rows: number,
    inDim: number,
    outDim: number,
  ): void {
    const { kernels } = this;
    const dweight = this.#tensor(`${weight}.weight`, this.#grads);
    kernels.matmul(plan, x, dout, dweight, {
      m: inDim,
      n: outDim,
      k: rows,
      transA: true,
      accumulate: true,
    });
    kernels.biasBackward(plan, dout, this.#tensor(`${weight}.bias`, this.#grads), rows, outDim);
    kernels.matmul(plan, dout, this.#tensor(`${weight}.weight`), dx, {
      m: rows,
      n: inDim,
      k: outDim,
      transB: true,
    });
  }

  /** Records the forward pass of B × T tokens up to and including the final LayerNorm. */
  #recordForward(plan: Plan, B: number, T: number): void {
    const { kernels } = this;
    const { dModel: C, heads: H } = this.config;
    const N = B * T;
    const rows = (view: GpuView, width: number) => slice(view, 0, N * width);
    const attention = { batch: B, seqLen: T, heads: H, headSize: C / H };

    kernels.embeddingForward(
      plan,
      slice(this.#tokens, 0, N),
      this.#tensor("wte.weight"),
      this.#tensor("wpe.weight"),
      rows(this.#encoded, C),
      { batch: B, seqLen: T, channels: C },
    );

    this.#blocks.forEach((block, l) => {
      const h = `h.${l}`;
      const x = rows(l === 0 ? this.#encoded : this.#blocks[l - 1].res2, C);
      const ln1 = rows(block.ln1, C);
      const qkv = rows(block.qkv, 3 * C);
      const atty = rows(block.atty, C);
      const res1 = rows(block.res1, C);
      const ln2 = rows(block.ln2, C);
      const fc = rows(block.fc, 4 * C);
      const gelu = rows(block.gelu, 4 * C);
      const proj = rows(this.#proj, C);

      // x + attn(ln_1(x))
      kernels.layerNormForward(
        plan,
        x,
        this.#tensor(`${h}.ln_1.weight`),
        this.#tensor(`${h}.ln_1.bias`),
        ln1,
        block.ln1Mean,
        block.ln1Rstd,
        N,
        C,
        LN_EPS,
      );
      this.#linearForward(plan, ln1, `${h}.attn.c_attn`, qkv, N, C, 3 * C);
      kernels.attentionForward(plan, qkv, atty, rows(block.probs, H * T), attention);
      this.#linearForward(plan, atty, `${h}.attn.c_proj`, proj, N, C, C);
      kernels.add(plan, x, proj, res1, N * C);

      // res1 + mlp(ln_2(res1))
      kernels.layerNormForward(
        plan,
        res1,
        this.#tensor(`${h}.ln_2.weight`),
        this.#tensor(`${h}.ln_2.bias`),
        ln2,
        block.ln2Mean,
        block.ln2Rstd,
        N,
        C,
        LN_EPS,
      );
      this.#linearForward(plan, ln2, `${h}.mlp.c_fc`, fc, N, C, 4 * C);
      kernels.geluForward(plan, fc, gelu, N * 4 * C);
      this.#linearForward(plan, gelu, `${h}.mlp.c_proj`, proj, N, 4 * C, C);
      kernels.add(plan, res1, proj, rows(block.res2, C), N * C);
    });

    kernels.layerNormForward(
      plan,
      rows(this.#lastResidual(), C),
      this.#tensor("ln_f.weight"),
      this.#tensor("ln_f.bias"),
      rows(this.#lnf, C),
      this.#lnfMean,
      this.#lnfRstd,
      N,
      C,
      LN_EPS,
    );
  }

  #lastResidual(): GpuView {
    return this.#blocks.length === 0 ? this.#encoded : this.#blocks[this.#blocks.length - 1].res2;
  }

  /**
   * Records the logits of all N rows and their mean cross-entropy into the
   * statistics buffer. For training, the fused kernel leaves the gradient of
   * the mean loss in the logits buffer.
   */
  #recordLoss(plan: Plan, N: number, training: boolean): void {
    const { vocabSize: V, dModel: C } = this.config;
    const logits = slice(this.#logits, 0, N * V);
    this.kernels.matmul(plan, slice(this.#lnf, 0, N * C), this.#tensor("lm_head.weight"), logits, {
      m: N,
      n: V,
      k: C,
      transB: true,
    });
    this.kernels.crossEntropy(
      plan,
      logits,
      slice(this.#targets, 0, N),
      this.#losses,
      N,
      V,
      training ? 1 / N : null,
    );
    this.kernels.sum(plan, this.#losses, N, this.#stats, STAT_LOSS, 1 / N);
  }

  /** Records the logits `[B, V]` of the last of T positions of each sequence. */
  #recordLastLogits(plan: Plan, B: number, T: number): void {
    const { vocabSize: V, dModel: C } = this.config;
    this.kernels.matmul(plan, this.#lnf, this.#tensor("lm_head.weight"), this.#logits, {
      m: 1,
      n: V,
      k: C,
      transB: true,
      batch: B,
      offsetA: (T - 1) * C,
      strideA: T * C,
      strideB: 0,
      strideC: V,
    });
  }

  /** Records the backward pass, from the logits gradient left by `#recordLoss` to every parameter gradient. */
  #recordBackward(plan: Plan, B: number, T: number): void {
    const { kernels } = this;
    const { dModel: C, heads: H, vocabSize: V } = this.config;
    const N = B * T;
    const rows = (view: GpuView, width: number) => slice(view, 0, N * width);
    const attention = { batch: B, seqLen: T, heads: H, headSize: C / H };
    const grad = (name: string) => this.#tensor(name, this.#grads);
    const dres = rows(this.#dres, C);
    const dln = rows(this.#dln, C);
    const datty = rows(this.#datty, C);
    const dqkv = rows(this.#dqkv, 3 * C);
    const dfc = rows(this.#dfc, 4 * C);

    plan.clear(this.#grads);
    plan.clear(dres);

    // logits = lnf · lm_headᵀ, then ln_f.
    const dlogits = slice(this.#logits, 0, N * V);
    const lnf = rows(this.#lnf, C);
    kernels.matmul(plan, dlogits, lnf, grad("lm_head.weight"), {
      m: V,
      n: C,
      k: N,
      transA: true,
      accumulate: true,
    });
    kernels.matmul(plan, dlogits, this.#tensor("lm_head.weight"), dln, { m: N, n: C, k: V });
    kernels.layerNormBackward(
      plan,
      dln,
      rows(this.#lastResidual(), C),
      this.#tensor("ln_f.weight"),
      this.#lnfMean,
      this.#lnfRstd,
      dres,
      grad("ln_f.weight"),
      grad("ln_f.bias"),
      N,
      C,
    );

    // dres is the gradient of the residual stream. Each block's backward
    // pass turns it from that of the block's output into that of its input.
    for (let l = this.#blocks.length - 1; l >= 0; l--) {
      const h = `h.${l}`;
      const block = this.#blocks[l];
      const x = rows(l === 0 ? this.#encoded : this.#blocks[l - 1].res2, C);

      // res2 = res1 + mlp(ln_2(res1))
      this.#linearBackward(
        plan,
        dres,
        rows(block.gelu, 4 * C),
        `${h}.mlp.c_proj`,
        dfc,
        N,
        4 * C,
        C,
      );
      kernels.geluBackward(plan, rows(block.fc, 4 * C), dfc, N * 4 * C);
      this.#linearBackward(plan, dfc, rows(block.ln2, C), `${h}.mlp.c_fc`, dln, N, C, 4 * C);
      kernels.layerNormBackward(
        plan,
        dln,
        rows(block.res1, C),
        this.#tensor(`${h}.ln_2.weight`),
        block.ln2Mean,
        block.ln2Rstd,
        dres,
        grad(`${h}.ln_2.weight`),
        grad(`${h}.ln_2.bias`),
        N,
        C,
      );

      // res1 = x + attn(ln_1(x))
      this.#linearBackward(plan, dres, rows(block.atty, C), `${h}.attn.c_proj`, datty, N, C, C);
      kernels.attentionBackward(
        plan,
        datty,
        rows(block.qkv, 3 * C),
        rows(block.probs, H * T),
        rows(this.#dprobs, H * T),
        dqkv,
        attention,
        false,
      );
      this.#linearBackward(plan, dqkv, rows(block.ln1, C), `${h}.attn.c_attn`, dln, N, C, 3 * C);
      kernels.layerNormBackward(
        plan,
        dln,
        x,
        this.#tensor(`${h}.ln_1.weight`),
        block.ln1Mean,
        block.ln1Rstd,
        dres,
        grad(`${h}.ln_1.weight`),
        grad(`${h}.ln_1.bias`),
        N,
        C,
      );
    }

    kernels.embeddingBackward(
      plan,
      dres,
      this.#tokenIndex,
      grad("wte.weight"),
      grad("wpe.weight"),
      { batch: B, seqLen: T, channels: C, vocab: V },
    );
  }

  /** Records the gradient norm, the clipping factor and one AdamW update per parameter. */
  #recordUpdate(plan: Plan): void {
    const { kernels } = this;
    kernels.gradNorm(plan, this.#normChunks, this.#partials, this.#stats, this.#options.clipGrad);

    // A parameter larger than one storage binding is updated in chunks.
    const maxChunk =
      Math.floor(this.device.limits.maxStorageBufferBindingSize / 4 / VIEW_ALIGNMENT) *
      VIEW_ALIGNMENT;
    for (const slot of this.#slots) {
      const weightDecay = slot.decay ? this.#options.weightDecay : 0;
      for (let start = 0; start < slot.length; start += maxChunk) {
        const length = Math.min(maxChunk, slot.length - start);
        const part = (of: GpuView) => slice(of, slot.offset + start, length);
        kernels.adamw(
          plan,
          this.#adamStep,
          part(this.#params),
          part(this.#grads),
          part(this.#m),
          part(this.#v),
          this.#stats,
          weightDecay,
        );
      }
    }
  }
}

/** Throws a RangeError for an out-of-range AdamW hyperparameter. */
function validateHyperparameters(options: GpuTrainerOptions): void {
  const nonNegative: [string, number | undefined][] = [
    ["lr", options.lr],
    ["eps", options.eps],
    ["weightDecay", options.weightDecay],
  ];
  for (const [name, value] of nonNegative) {
    if (value !== undefined && !(Number.isFinite(value) && value >= 0)) {
      throw new RangeError(`invalid ${name} ${value}; expected a finite number >= 0`);
    }
  }
  for (const [name, value] of [["beta1", options.beta1], ["beta2", options.beta2]] as const) {
    if (value !== undefined && !(value >= 0 && value < 1)) {
      throw new RangeError(`invalid ${name} ${value}; expected a number in [0, 1)`);
    }
  }
  const clip = options.clipGrad;
  if (clip !== undefined && clip !== null && !(Number.isFinite(clip) && clip >= 0)) {
    throw new RangeError(`invalid clipGrad ${clip}; expected a finite number >= 0 or null`);
  }
}
