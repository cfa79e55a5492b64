/**
 * Rinzler: a GPT built from first principles in TypeScript, with no runtime
 * dependencies. Each rung of the ladder is usable on its own.
 *
 * 1. Scalar autograd: `Value`.
 * 2. Tensor autograd: `Tensor`, with the heavy kernels behind a `Backend`.
 * 3. Building blocks: `Parameter`, `Linear`, `LayerNorm`, `Embedding`.
 * 4. Optimizers: `SGD`, `SGDMomentum`, `RMSprop`, `Adam`, `AdamW`, schedules.
 * 5. Tokenizer: `BPETokenizer`, character-stream byte-pair encoding.
 * 6. Model: `GPT`, trained by `train` and sampled by `generate`.
 *
 * @example Scalar autograd
 * ```ts
 * import { Value } from "./mod.ts";
 * const x = new Value(3);
 * const y = x.mul(x).add(x); // x² + x
 * y.backward();
 * console.log(x.grad); // 7
 * ```
 *
 * @example Tensor autograd
 * ```ts
 * import { Tensor } from "./mod.ts";
 * const w = Tensor.from([1, 2, 3, 4], [2, 2], { requiresGrad: true });
 * const loss = Tensor.from([1, 1], [1, 2]).dot(w).sum();
 * loss.backward();
 * console.log(w.grad); // Float32Array [1, 1, 1, 1]
 * ```
 *
 * @example Building blocks, by name
 * ```ts
 * import { Linear, namedParameters, Random, Tensor } from "./mod.ts";
 * const layer = new Linear(4, 2, { name: "proj", random: new Random(0) });
 * const y = layer.forward(Tensor.zeros([3, 4])); // [3, 2]
 * console.log([...namedParameters(layer).keys()]); // ["proj.weight", "proj.bias"]
 * ```
 *
 * @example An optimizer with a schedule
 * ```ts
 * import { AdamW, CosineWithWarmup, Parameter } from "./mod.ts";
 * const w = new Parameter("w", [2]);
 * const optimizer = new CosineWithWarmup(new AdamW([w], { lr: 1e-2 }), { warmupSteps: 10, totalSteps: 100 });
 * w.grad = Float32Array.of(1, -1);
 * optimizer.step(); // rate 1e-3 at step 0 of the warmup
 * ```
 *
 * @example The tokenizer
 * ```ts
 * import { BPETokenizer } from "./mod.ts";
 * const tokenizer = BPETokenizer.train("low lower lowest 🙂", 5);
 * console.log(tokenizer.decode(tokenizer.encode("lowest 🙂"))); // "lowest 🙂"
 * ```
 *
 * @example A GPT, a few steps of AdamW and a sample
 * ```ts
 * import { AdamW, BPETokenizer, generate, GPT, Random } from "./mod.ts";
 * const text = "the quick brown fox jumps over the lazy dog. ".repeat(20);
 * const tokenizer = BPETokenizer.train(text, 20);
 * const ids = Int32Array.from(tokenizer.encode(text));
 * const model = new GPT({ vocabSize: tokenizer.vocabSize, contextLength: 16, dModel: 32, layers: 2, heads: 4 });
 * const optimizer = new AdamW(model.parameters(), { lr: 1e-2 });
 * for (let step = 0; step < 5; step++) {
 *   const { loss } = model.forward(ids.subarray(0, 16), 1, 16, ids.subarray(1, 17));
 *   loss!.backward();
 *   loss!.release();
 *   optimizer.step();
 *   optimizer.zeroGrad();
 * }
 * const next = generate(model, [ids[0]], { maxTokens: 10, temperature: 0.8, random: new Random(0) });
 * console.log(tokenizer.decode(next));
 * ```
 *
 * @module
 */

export { MLP, Value } from "./lib/autograd.ts";
export type { Activation, Layer, Neuron, Operand } from "./lib/autograd.ts";

export {
  causalMask,
  concatCols,
  embedding,
  getBackend,
  noGrad,
  setBackend,
  Tensor,
} from "./lib/tensor.ts";
export type { TensorOptions } from "./lib/tensor.ts";
export { jsBackend } from "./lib/backend.ts";
export type { AdamWStep, AttentionShape, Backend, MatmulOptions } from "./lib/backend.ts";
export { type BackendName, selectBackend } from "./lib/backends.ts";

export {
  countParameters,
  Embedding,
  LayerNorm,
  Linear,
  namedParameters,
  Parameter,
} from "./lib/nn.ts";
export type { LayerOptions, Module } from "./lib/nn.ts";

export {
  Adam,
  AdamW,
  clipGradNorm,
  CosineWithWarmup,
  cosineWithWarmupRate,
  decayGroups,
  gradNorm,
  LinearWarmup,
  linearWarmupRate,
  RMSprop,
  SGD,
  SGDMomentum,
} from "./lib/optim.ts";
export type {
  AdamBackend,
  AdamHyper,
  BaseOptimizer,
  GroupConfig,
  Hyperparameters,
  MomentumHyper,
  Optimizer,
  OptimizerConfig,
  OptimizerGroup,
  OptimizerParameter,
  OptimizerState,
  OptimizerType,
  ParamGroup,
  RMSpropHyper,
  Schedule,
  ScheduleConfig,
  ScheduleType,
  ShapedParameter,
  SteppedParameter,
} from "./lib/optim.ts";

export { BPE_FORMAT, BPE_VERSION, BPETokenizer } from "./lib/bpe.ts";
export type { BPEJSON } from "./lib/bpe.ts";

export { GPT, validateConfig } from "./lib/gpt.ts";
export type {
  Block,
  CausalSelfAttention,
  GPTConfig,
  GPTOptions,
  GPTOutput,
  MLP as GPTMLP,
} from "./lib/gpt.ts";
export { generate } from "./lib/generate.ts";
export type { GenerateOptions, SamplingOptions } from "./lib/generate.ts";

export { Random } from "./lib/random.ts";
export {
  CheckpointError,
  latestCheckpoint,
  loadCheckpoint,
  saveCheckpoint,
} from "./lib/checkpoint.ts";
export type {
  CheckpointData,
  CheckpointFormat,
  SaveCheckpointOptions,
  StoredTensor,
} from "./lib/checkpoint.ts";
export { loadModel, OPTIMIZERS, train, TrainError } from "./lib/train.ts";
export type {
  OptimizerName,
  TrainIO,
  TrainOptions,
  TrainResult,
  TrainRuntime,
} from "./lib/train.ts";
