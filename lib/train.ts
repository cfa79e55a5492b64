/**
 * The training loop: corpus to tokens, batches, steps, evaluation, samples,
 * checkpoints and metrics. `bin/train.ts` parses the command line into
 * `TrainOptions` and calls `train`; other programs can call it too.
 *
 * Everything a run depends on is explicit and saved in each checkpoint: the
 * weights, the optimizer moments and step counts, the schedule, both random
 * generators (batch sampling and dropout) and the tokenizer. A resumed run
 * therefore produces the same losses, bit for bit, as one that never stopped.
 *
 * @module
 */

import { dirname, join } from "node:path";
import { BPETokenizer } from "./bpe.ts";
import {
  CheckpointError,
  type CheckpointFormat,
  loadCheckpoint,
  saveCheckpoint,
  type StoredTensor,
} from "./checkpoint.ts";
import { defaultCorpusPath, ensureDefaultCorpus, loadCorpus } from "./corpus.ts";
import { generate } from "./generate.ts";
import { GPT, type GPTConfig } from "./gpt.ts";
import { namedParameters } from "./nn.ts";
import {
  Adam,
  AdamW,
  CosineWithWarmup,
  decayGroups,
  LinearWarmup,
  type Optimizer,
  type OptimizerState,
  RMSprop,
  SGD,
  SGDMomentum,
} from "./optim.ts";
import { Random } from "./random.ts";
import { getBackend, type Tensor } from "./tensor.ts";
import { requestGpu } from "../gpu/device.ts";
import { GpuTrainer } from "../gpu/trainer.ts";

/** Optimizers the trainer can build. */
export const OPTIMIZERS = ["adamw", "adam", "sgd", "momentum", "rmsprop"] as const;
/** Name of an optimizer the trainer can build. */
export type OptimizerName = typeof OPTIMIZERS[number];

/** Everything a training run is started with. */
export interface TrainOptions {
  /** Total optimizer steps of the run (a resumed run continues up to this count). */
  steps: number;
  /** Peak learning rate. */
  lr: number;
  /** Sequences per step (B). */
  batchSize: number;
  /** Tokens per sequence (T), also the model's context length. */
  context: number;
  /** Width of the residual stream (C). */
  dModel: number;
  /** Transformer blocks. */
  layers: number;
  /** Attention heads per block. */
  heads: number;
  /** BPE merges learned from the corpus; the vocabulary is the alphabet plus these. */
  vocabSize: number;
  /** Dropout probability during training. */
  dropout: number;
  /** Decoupled weight decay of the weight matrices (biases, LayerNorm and embeddings never decay). */
  weightDecay: number;
  /** Optimizer name. */
  optimizer: OptimizerName;
  /** Linear warmup steps. */
  warmupSteps: number;
  /** Cosine decay to 10% of `lr` after the warmup. */
  cosine: boolean;
  /** Maximum total gradient norm, or null for no clipping. */
  clipGrad: number | null;
  /** Corpus globs; empty for the default corpus. */
  corpus: string[];
  /** Seed of the initialisation, the batch sampler and dropout. */
  seed: number;
  /** Print a text sample every this many steps (0: never). */
  genEvery: number;
  /** Evaluate on the validation split every this many steps. */
  evalEvery: number;
  /** Batches per evaluation. */
  evalBatches: number;
  /** Save a checkpoint every this many steps (0: only at the end). */
  saveEvery: number;
  /** Checkpoint layout. */
  saveFormat: CheckpointFormat;
  /** Warn when smoothed validation loss exceeds training loss by this many percent. */
  divWarn: number;
  /** Stop when the gap exceeds this many percent, or null to never stop. */
  divCrit: number | null;
  /** Checkpoint to continue from, or null. */
  resume: string | null;
  /** Parent folder of the numbered run folders. */
  runDir: string;
}

/** Defaults of every option, the values `deno task train` uses. */
export const DEFAULTS: TrainOptions = {
  steps: 1000,
  lr: 3e-4,
  batchSize: 8,
  context: 128,
  dModel: 64,
  layers: 4,
  heads: 4,
  vocabSize: 500,
  dropout: 0,
  weightDecay: 0.1,
  optimizer: "adamw",
  warmupSteps: 0,
  cosine: false,
  clipGrad: 1.0,
  corpus: [],
  seed: 1337,
  genEvery: 200,
  evalEvery: 100,
  evalBatches: 8,
  saveEvery: 500,
  saveFormat: "safetensors",
  divWarn: 20,
  divCrit: null,
  resume: null,
  runDir: "runs",
};

/** One line of `metrics.jsonl`. */
export interface MetricsRecord {
  step: number;
  trainLoss: number;
  valLoss?: number;
  lr: number;
  gradNorm: number;
  tokensPerSecond: number;
  elapsedSeconds: number;
}

/** Outcome of a finished run: its folder, last checkpoint and losses. */
export interface TrainResult {
  /** Folder of this run, holding `metrics.jsonl`, the arguments and the checkpoints. */
  runDir: string;
  /** Last checkpoint written (its sidecar), or null. */
  checkpoint: string | null;
  /** Optimizer steps completed, including those of the run this one resumed. */
  step: number;
  /** Validation loss before the first step of this process. */
  firstValLoss: number;
  /** Validation loss at the end. */
  finalValLoss: number;
  /** Reason training stopped. */
  stoppedBy: "done" | "signal" | "divergence" | "nonfinite";
  /** Mean seconds per training step in this process. */
  secondsPerStep: number;
  /** The last sample printed. */
  sample: string;
}

/** Output channels of a run, replaceable in tests. */
export interface TrainIO {
  /** Log lines. */
  log(line: string): void;
  /** A progress line that may be overwritten by the next one (on a terminal). */
  progress(line: string): void;
  /** True when `progress` can redraw one line in place. */
  live: boolean;
}

/** Choices that change where a run computes, never what it computes; not saved with the run. */
export interface TrainRuntime {
  /** Run the whole training step on the GPU through WebGPU. */
  webgpu?: boolean;
}

/** An error in the user's input (corpus, checkpoint, options): reported as one line, never a stack trace. */
export class TrainError extends Error {
  /** Always `"TrainError"`. */
  override name = "TrainError";
}

/** Standard output on a terminal redraws the progress line; elsewhere it logs plain lines. */
export function consoleIO(): TrainIO {
  const live = Deno.stdout.isTerminal();
  const encoder = new TextEncoder();
  let open = false;
  return {
    live,
    log(line) {
      if (open) Deno.stdout.writeSync(encoder.encode("\n"));
      open = false;
      console.log(line);
    },
    progress(line) {
      if (live) {
        Deno.stdout.writeSync(encoder.encode(`\r\x1b[2K${line}`));
        open = true;
      } else {
        console.log(line);
      }
    },
  };
}

// ---------------------------------------------------------------------------
// Data: the token stream, its split and the batch sampler.

/** Tokens of the corpus split into a training and a validation part (the last 10%). */
export interface Dataset {
  train: Int32Array;
  val: Int32Array;
}

/** Splits tokens 90/10; each part must hold at least one context window plus the shifted target. */
export function splitTokens(tokens: Int32Array, context: number): Dataset {
  const cut = Math.floor(tokens.length * 0.9);
  const data = { train: tokens.subarray(0, cut), val: tokens.subarray(cut) };
  const needed = context + 1;
  if (data.val.length < needed) {
    throw new TrainError(
      `the corpus is too short: ${tokens.length} tokens give a validation split of ${data.val.length}, ` +
        `but one context window needs ${needed}; use a longer corpus or a smaller --context`,
    );
  }
  return data;
}

/**
 * Fills `inputs` and `targets` `[B, T]` with `B` windows at random offsets
 * of `tokens`; the targets are the inputs shifted by one token.
 */
export function sampleBatch(
  tokens: Int32Array,
  B: number,
  T: number,
  random: Random,
  inputs: Int32Array,
  targets: Int32Array,
): void {
  for (let b = 0; b < B; b++) {
    const start = random.int(tokens.length - T);
    inputs.set(tokens.subarray(start, start + T), b * T);
    targets.set(tokens.subarray(start + 1, start + T + 1), b * T);
  }
}

// ---------------------------------------------------------------------------
// The divergence monitor.

/**
 * Compares smoothed validation loss with smoothed training loss. The gap,
 * in percent of the training loss, above `warnPercent` is a warning and
 * above `criticalPercent` (when set) a reason to stop: the model is
 * memorising the training split instead of learning the language.
 */
export class DivergenceMonitor {
  /** Exponential moving average of the training loss (weight 0.1 per step). */
  smoothTrain = NaN;
  /** Exponential moving average of the validation loss (weight 0.3 per evaluation). */
  smoothVal = NaN;

  constructor(readonly warnPercent: number, readonly criticalPercent: number | null) {}

  addTrain(loss: number): void {
    this.smoothTrain = Number.isNaN(this.smoothTrain) ? loss : 0.9 * this.smoothTrain + 0.1 * loss;
  }

  /** Records an evaluation and returns whether the gap now calls for a warning or a stop. */
  addValidation(loss: number): "ok" | "warn" | "critical" {
    this.smoothVal = Number.isNaN(this.smoothVal) ? loss : 0.7 * this.smoothVal + 0.3 * loss;
    const gap = this.gapPercent();
    if (this.criticalPercent !== null && gap > this.criticalPercent) return "critical";
    if (gap > this.warnPercent) return "warn";
    return "ok";
  }

  /** `100 · (val − train) / train` of the smoothed losses; NaN before both are known. */
  gapPercent(): number {
    return 100 * (this.smoothVal - this.smoothTrain) / this.smoothTrain;
  }
}

// ---------------------------------------------------------------------------
// Optimizer and schedule.

function buildOptimizer(model: GPT, options: TrainOptions, steps: number): Optimizer {
  const params = model.parameters();
  const groups = decayGroups(params, options.weightDecay);
  const backend = getBackend();
  let optimizer: Optimizer;
  switch (options.optimizer) {
    case "adamw":
      optimizer = new AdamW(groups, { lr: options.lr, weightDecay: options.weightDecay, backend });
      break;
    case "adam":
      optimizer = new Adam(params, { lr: options.lr, backend });
      break;
    case "sgd":
      optimizer = new SGD(params, { lr: options.lr });
      break;
    case "momentum":
      optimizer = new SGDMomentum(params, { lr: options.lr, momentum: 0.9 });
      break;
    case "rmsprop":
      optimizer = new RMSprop(params, { lr: options.lr });
      break;
  }
  if (options.cosine) {
    return new CosineWithWarmup(optimizer, { warmupSteps: options.warmupSteps, totalSteps: steps });
  }
  if (options.warmupSteps > 0) {
    return new LinearWarmup(optimizer, { warmupSteps: options.warmupSteps });
  }
  return optimizer;
}

// ---------------------------------------------------------------------------
// Checkpoints.

/** Prefix of the optimizer's buffers in a checkpoint, kept apart from the weight names. */
export const OPTIMIZER_PREFIX = "optimizer.";

/** Returns the model architecture that a run with these options trains. */
function configOf(options: TrainOptions, vocabSize: number): GPTConfig {
  return {
    vocabSize,
    contextLength: options.context,
    dModel: options.dModel,
    layers: options.layers,
    heads: options.heads,
    dropout: options.dropout,
  };
}

/** Loads a model (and its tokenizer) from a checkpoint, for generation and evaluation. */
export async function loadModel(
  path: string,
): Promise<{ model: GPT; tokenizer: BPETokenizer; step: number }> {
  const checkpoint = await loadCheckpoint(path);
  const meta = checkpoint.meta as { config?: GPTConfig; tokenizer?: unknown };
  if (meta.config === undefined || meta.tokenizer === undefined) {
    throw new CheckpointError(
      checkpoint.sidecarPath,
      "the sidecar has no model config or tokenizer",
    );
  }
  let tokenizer: BPETokenizer;
  let model: GPT;
  try {
    tokenizer = BPETokenizer.fromJSON(meta.tokenizer);
    model = new GPT(meta.config);
  } catch (error) {
    throw new CheckpointError(checkpoint.sidecarPath, (error as Error).message);
  }
  restoreWeights(model, checkpoint.tensors, checkpoint.sidecarPath);
  return { model, tokenizer, step: checkpoint.step };
}

function restoreWeights(model: GPT, tensors: Map<string, StoredTensor>, source: string): void {
  for (const [name, param] of namedParameters(model)) {
    const stored = tensors.get(name);
    if (stored === undefined) throw new CheckpointError(source, `tensor ${name} is missing`);
    if (stored.shape.join(",") !== param.shape.join(",")) {
      throw new CheckpointError(
        source,
        `tensor ${name} has shape [${stored.shape}], the model needs [${param.shape}]`,
      );
    }
    param.data.set(stored.data);
  }
}

// ---------------------------------------------------------------------------
// The run.

const RECENT_METRICS = 50;

function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return "?";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h > 0 ? `${h}h${String(m).padStart(2, "0")}m` : `${m}m${String(s % 60).padStart(2, "0")}s`;
}

/** Returns the next free numbered folder under `parent` (`runs/1`, `runs/2`, …), created. */
export async function nextRunDir(parent: string): Promise<string> {
  await Deno.mkdir(parent, { recursive: true });
  let highest = 0;
  for await (const entry of Deno.readDir(parent)) {
    if (entry.isDirectory && /^\d+$/.test(entry.name)) {
      highest = Math.max(highest, Number(entry.name));
    }
  }
  for (let n = highest + 1;; n++) {
    const dir = join(parent, String(n));
    try {
      await Deno.mkdir(dir);
      return dir;
    } catch (error) {
      if (!(error instanceof Deno.errors.AlreadyExists)) throw error;
    }
  }
}

/** Options that a resumed run takes from its checkpoint, with their command-line flags. */
const FIXED_ON_RESUME: [keyof TrainOptions, string][] = [
  ["vocabSize", "--vocab-size"],
  ["optimizer", "--optimizer"],
  ["lr", "--lr"],
  ["weightDecay", "--weight-decay"],
  ["warmupSteps", "--warmup-steps"],
  ["cosine", "--cosine"],
  ["seed", "--seed"],
];

/**
 * Rejects a resume request that would silently differ from the saved run: a
 * changed tokenizer, optimizer or schedule setting, or a `steps` total the
 * run has already reached.
 */
function checkResumeRequest(
  request: Partial<TrainOptions>,
  saved: TrainOptions,
  step: number,
): void {
  for (const [key, flag] of FIXED_ON_RESUME) {
    if (request[key] !== undefined && request[key] !== saved[key]) {
      throw new TrainError(
        `${flag} cannot change when resuming: the run was started with ${flag} ${
          saved[key]
        }; drop ${flag}`,
      );
    }
  }
  const steps = request.steps ?? saved.steps;
  if (steps <= step) {
    throw new TrainError(
      `the checkpoint is at step ${step} and the run's total is ${steps}; pass --steps above ${step} to train further`,
    );
  }
}

/**
 * Removes what an interrupted process may have left in a resumed run's
 * folder: temporary files of an unfinished save, and metrics lines past the
 * checkpoint's step, which the resumed run writes again.
 */
async function prepareResumedRunDir(runDir: string, step: number): Promise<void> {
  for await (const entry of Deno.readDir(runDir)) {
    if (entry.isFile && /^checkpoint_step\d+\.(json|safetensors)\.tmp-/.test(entry.name)) {
      await Deno.remove(join(runDir, entry.name));
    }
  }
  const metricsPath = join(runDir, "metrics.jsonl");
  let text: string;
  try {
    text = await Deno.readTextFile(metricsPath);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return;
    throw error;
  }
  const kept = text.split("\n").filter((line) => {
    if (line.trim() === "") return false;
    try {
      return (JSON.parse(line) as MetricsRecord).step <= step;
    } catch {
      // A line cut short by a kill is dropped.
      return false;
    }
  });
  await Deno.writeTextFile(metricsPath, kept.map((line) => line + "\n").join(""));
}

/** Sets a flag on SIGINT or SIGTERM so the loop can stop between steps; returns the flag and a cleanup. */
function watchSignals(io: TrainIO): { stop: { requested: string | null }; dispose: () => void } {
  const stop = { requested: null as string | null };
  const listeners: [Deno.Signal, () => void][] = [];
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    const listener = () => {
      if (stop.requested === null) {
        io.log(`received ${signal}: finishing the current step, then saving a checkpoint`);
      }
      stop.requested = signal;
    };
    try {
      Deno.addSignalListener(signal, listener);
      listeners.push([signal, listener]);
    } catch {
      // Signals are not available on every platform (SIGTERM on Windows).
    }
  }
  return {
    stop,
    dispose: () =>
      listeners.forEach(([signal, listener]) => Deno.removeSignalListener(signal, listener)),
  };
}

/**
 * Trains a GPT, printing through `io`. Options missing from `request` take
 * their defaults, or, when resuming, the values the checkpoint's run was
 * started with.
 */
export async function train(
  request: Partial<TrainOptions>,
  io: TrainIO = consoleIO(),
  runtime: TrainRuntime = {},
): Promise<TrainResult> {
  // 1. Resume state, if any: the checkpoint fixes the model, tokenizer and run folder.
  let resumed: Awaited<ReturnType<typeof loadCheckpoint>> | null = null;
  if (request.resume) {
    resumed = await loadCheckpoint(request.resume);
  }
  const meta = (resumed?.meta ?? {}) as ResumeMeta;
  if (resumed !== null) {
    for (const key of ["config", "tokenizer", "optimizer", "random", "args"] as const) {
      if (meta[key] === undefined) {
        throw new CheckpointError(
          resumed.sidecarPath,
          `the sidecar has no "${key}" entry, so it cannot resume training; a checkpoint written by the trainer has one`,
        );
      }
    }
  }
  if (resumed !== null) checkResumeRequest(request, meta.args!, resumed.step);
  const options: TrainOptions = { ...DEFAULTS, ...(meta.args ?? {}), ...request };
  options.resume = request.resume ?? null;

  // 2. Corpus and tokenizer.
  let patterns = options.corpus;
  if (patterns.length === 0) {
    patterns = meta.corpus ?? [];
  }
  if (patterns.length === 0) {
    patterns = [await ensureDefaultCorpus()];
  }
  let corpus;
  try {
    corpus = await loadCorpus(patterns);
  } catch (error) {
    if (patterns.length === 1 && patterns[0] === defaultCorpusPath) throw error;
    throw new TrainError((error as Error).message);
  }
  io.log(
    `corpus: ${corpus.files.length} file(s), ${
      corpus.text.length.toLocaleString("en-US")
    } characters`,
  );
  if (corpus.text.length < options.context + 1) {
    throw new TrainError(
      `the corpus has ${corpus.text.length} characters, too few for one context window of ${options.context} tokens; ` +
        "use a longer corpus or a smaller --context",
    );
  }

  let tokenizer: BPETokenizer;
  if (resumed !== null) {
    try {
      tokenizer = BPETokenizer.fromJSON(meta.tokenizer);
    } catch (error) {
      throw new CheckpointError(resumed.sidecarPath, (error as Error).message);
    }
  } else {
    const started = performance.now();
    tokenizer = BPETokenizer.train(corpus.text, options.vocabSize);
    io.log(
      `tokenizer: ${tokenizer.merges.length} merges, vocabulary ${tokenizer.vocabSize}, trained in ${
        ((performance.now() - started) / 1000).toFixed(1)
      } s`,
    );
  }
  const tokens = tokenizer.encodeIds(corpus.text);
  const data = splitTokens(tokens, options.context);
  io.log(
    `tokens: ${tokens.length.toLocaleString("en-US")} (${
      (corpus.text.length / tokens.length).toFixed(2)
    } characters each), ` +
      `train ${data.train.length.toLocaleString("en-US")}, validation ${
        data.val.length.toLocaleString("en-US")
      }`,
  );

  // 3. Model and optimizer.
  const config = configOf(options, tokenizer.vocabSize);
  if (meta.config !== undefined) {
    const saved = JSON.stringify(meta.config);
    if (saved !== JSON.stringify(config)) {
      throw new CheckpointError(
        resumed!.sidecarPath,
        `the checkpoint's model config ${saved} does not match the requested ${
          JSON.stringify(config)
        }; drop the model flags to use the checkpoint's`,
      );
    }
  }
  const model = new GPT(config, { seed: options.seed });
  const optimizer = buildOptimizer(model, options, options.steps);
  const batchRandom = new Random(options.seed);
  let step = 0;
  let runDir: string;
  const recent: MetricsRecord[] = [];

  if (resumed !== null) {
    restoreWeights(model, resumed.tensors, resumed.sidecarPath);
    const buffers = new Map<string, Float32Array>();
    for (const [name, tensor] of resumed.tensors) {
      if (name.startsWith(OPTIMIZER_PREFIX)) {
        buffers.set(name.slice(OPTIMIZER_PREFIX.length), tensor.data);
      }
    }
    try {
      optimizer.loadStateDict({ config: meta.optimizer as OptimizerState["config"], buffers });
    } catch (error) {
      throw new CheckpointError(
        resumed.sidecarPath,
        `the optimizer state does not fit: ${(error as Error).message}`,
      );
    }
    if (optimizer instanceof CosineWithWarmup) {
      optimizer.setTotalSteps(Math.max(options.steps, options.warmupSteps));
    }
    batchRandom.state = meta.random!.batch;
    model.dropoutRandom.state = meta.random!.dropout;
    step = resumed.step;
    recent.push(...(meta.metrics ?? []));
    runDir = dirname(resumed.sidecarPath);
    io.log(`resumed from ${resumed.sidecarPath} at step ${step}`);
  } else {
    runDir = await nextRunDir(options.runDir);
  }

  const parameterCount = model.parameters().reduce((n, p) => n + p.size, 0);
  io.log(
    `model: ${options.layers} layers, ${options.heads} heads, d_model ${options.dModel}, context ${options.context}, ` +
      `vocabulary ${config.vocabSize}, ${parameterCount.toLocaleString("en-US")} parameters, ${
        runtime.webgpu ? "WebGPU" : `backend ${getBackend().name}`
      }`,
  );
  io.log(`run folder: ${runDir}`);
  await Deno.writeTextFile(
    join(runDir, step === 0 ? "args.json" : `args_resume_step${step}.json`),
    JSON.stringify({ ...options, corpus: patterns }, null, 2) + "\n",
  );
  if (resumed !== null) await prepareResumedRunDir(runDir, step);
  const metricsFile = await Deno.open(join(runDir, "metrics.jsonl"), {
    append: true,
    create: true,
  });

  // 4. Buffers reused by every step.
  const B = options.batchSize;
  const T = options.context;
  const inputs = new Int32Array(B * T);
  const targets = new Int32Array(B * T);

  // On the GPU the weights and moments live in GPU buffers for the whole run.
  // They come back to `model` and `optimizer` only for checkpoints and samples.
  let gpuTrainer: GpuTrainer | null = null;
  let gpuDevice: GPUDevice | null = null;
  if (runtime.webgpu) {
    if (options.optimizer !== "adamw" || options.dropout !== 0) {
      throw new TrainError(
        "--webgpu trains with AdamW and no dropout; drop --optimizer and --dropout",
      );
    }
    const gpu = await requestGpu();
    gpuDevice = gpu.device;
    io.log(`WebGPU adapter: ${gpu.adapterName}`);
    gpuTrainer = await GpuTrainer.create(
      gpu,
      config,
      new Map([...namedParameters(model)].map(([n, p]) => [n, p.data])),
      {
        batchSize: B,
        lr: options.lr,
        weightDecay: options.weightDecay,
        clipGrad: options.clipGrad,
      },
    );
    gpuTrainer.writeOptimizerState(optimizer.stateDict());
  }

  /** Copies the GPU's weights and AdamW moments back into `model` and `optimizer`. */
  const syncFromGpu = async (): Promise<void> => {
    if (gpuTrainer === null) return;
    const params = namedParameters(model);
    for (const [name, values] of await gpuTrainer.readWeights()) params.get(name)!.data.set(values);
    const gpuState = await gpuTrainer.readOptimizerState();
    const state = optimizer.stateDict();
    if ("optimizer" in state.config) {
      // A schedule wraps the AdamW state; its step count is the run's step.
      optimizer.loadStateDict({
        config: { ...state.config, step, optimizer: gpuState.config },
        buffers: gpuState.buffers,
      });
    } else {
      optimizer.loadStateDict(gpuState);
    }
  };

  /** The learning rate of the step about to run, from the schedule's pure function of the step. */
  const rateNow = (): number => {
    if (optimizer instanceof CosineWithWarmup || optimizer instanceof LinearWarmup) {
      return optimizer.rateAt(step);
    }
    return optimizer.lr;
  };

  const evaluate = async (): Promise<number> => {
    // The same batches every time, from their own generator, so evaluation never shifts the training sequence.
    const random = new Random(options.seed ^ 0x7a1d);
    const x = new Int32Array(B * T);
    const y = new Int32Array(B * T);
    let total = 0;
    for (let i = 0; i < options.evalBatches; i++) {
      sampleBatch(data.val, B, T, random, x, y);
      total += gpuTrainer === null ? model.evaluate(x, y, B, T) : await gpuTrainer.evaluate(x, y);
    }
    return total / options.evalBatches;
  };

  const sampleText = async (): Promise<string> => {
    await syncFromGpu();
    const prompt = tokenizer.encode("The");
    const ids = generate(model, prompt, {
      maxTokens: 64,
      temperature: 0.8,
      random: new Random(options.seed + step),
    });
    return tokenizer.decode([...prompt, ...ids]);
  };

  let lastCheckpoint: string | null = null;
  const save = async (): Promise<string> => {
    await syncFromGpu();
    const tensors = new Map<string, StoredTensor>();
    for (const [name, p] of namedParameters(model)) {
      tensors.set(name, { shape: [...p.shape], data: p.data });
    }
    const state = optimizer.stateDict();
    for (const [name, buffer] of state.buffers) {
      tensors.set(OPTIMIZER_PREFIX + name, { shape: [buffer.length], data: buffer });
    }
    const resumeMeta: ResumeMeta = {
      config,
      tokenizer: tokenizer.toJSON(),
      optimizer: state.config,
      random: { batch: batchRandom.state, dropout: model.dropoutRandom.state },
      data: {
        sampler: "uniform random windows",
        seed: options.seed,
        trainTokens: data.train.length,
      },
      corpus: patterns,
      args: options,
      metrics: recent.slice(-RECENT_METRICS),
    };
    const { sidecarPath } = await saveCheckpoint(
      runDir,
      { step, meta: { ...resumeMeta }, tensors },
      {
        format: options.saveFormat,
      },
    );
    lastCheckpoint = sidecarPath;
    return sidecarPath;
  };

  // 5. The loop.
  const { stop, dispose } = watchSignals(io);
  let stoppedBy: TrainResult["stoppedBy"] = "done";
  let firstValLoss = NaN;
  let lastValLoss = NaN;
  let sample = "";
  const monitor = new DivergenceMonitor(options.divWarn, options.divCrit);
  const started = performance.now();
  let stepsThisRun = 0;
  let stepSeconds = 0;

  try {
    firstValLoss = lastValLoss = await evaluate();
    io.log(`step ${step}: validation loss ${firstValLoss.toFixed(4)}`);

    while (step < options.steps) {
      const t0 = performance.now();
      sampleBatch(data.train, B, T, batchRandom, inputs, targets);
      let lossValue: number;
      let gradNorm: number;
      const lr = rateNow();
      let loss: Tensor | null = null;
      if (gpuTrainer !== null) {
        ({ loss: lossValue, gradNorm } = await gpuTrainer.step(inputs, targets, lr));
      } else {
        loss = model.forward(inputs, B, T, targets).loss!;
        lossValue = loss.item();
        gradNorm = 0;
      }
      if (!Number.isFinite(lossValue)) {
        loss?.release();
        stoppedBy = "nonfinite";
        io.log(
          `stopped: the training loss became ${lossValue} at step ${step + 1}; ` +
            (lastCheckpoint ?? "no checkpoint was saved in this process") +
            (lastCheckpoint ? " is the last good checkpoint" : "") +
            `; try a lower --lr or keep --clip-grad on`,
        );
        break;
      }
      if (loss !== null) {
        loss.backward();
        loss.release();
        gradNorm = optimizer.clipGradNorm(options.clipGrad ?? Infinity);
      }
      if (!Number.isFinite(gradNorm)) {
        stoppedBy = "nonfinite";
        io.log(
          `stopped: the gradient norm became ${gradNorm} at step ${step + 1}; ` +
            (lastCheckpoint
              ? `${lastCheckpoint} is the last good checkpoint`
              : "no checkpoint was saved in this process") +
            `; try a lower --lr or keep --clip-grad on`,
        );
        break;
      }
      if (loss !== null) {
        optimizer.step();
        optimizer.zeroGrad();
      }
      step++;
      stepsThisRun++;
      const seconds = (performance.now() - t0) / 1000;
      stepSeconds += seconds;

      const record: MetricsRecord = {
        step,
        trainLoss: lossValue,
        lr,
        gradNorm,
        tokensPerSecond: Math.round(B * T / seconds),
        elapsedSeconds: +((performance.now() - started) / 1000).toFixed(3),
      };
      monitor.addTrain(lossValue);

      if (step % options.evalEvery === 0 || step === options.steps) {
        lastValLoss = record.valLoss = await evaluate();
        const verdict = monitor.addValidation(lastValLoss);
        const gap = monitor.gapPercent();
        io.log(
          `step ${step}/${options.steps}: train loss ${lossValue.toFixed(4)}, validation loss ${
            lastValLoss.toFixed(4)
          }, ` +
            `lr ${lr.toExponential(2)}, grad norm ${
              gradNorm.toFixed(3)
            }, ${record.tokensPerSecond} tokens/s`,
        );
        if (verdict === "critical") {
          io.log(
            `stopped: smoothed validation loss is ${
              gap.toFixed(1)
            }% above training loss, over --div-crit ${options.divCrit}%`,
          );
          stoppedBy = "divergence";
        } else if (verdict === "warn") {
          io.log(
            `warning: smoothed validation loss is ${
              gap.toFixed(1)
            }% above training loss (--div-warn ${options.divWarn}%): the model may be overfitting`,
          );
        }
      } else {
        const remaining = (stepSeconds / stepsThisRun) * (options.steps - step);
        const line =
          `step ${step}/${options.steps}  loss ${lossValue.toFixed(4)}  val ${
            lastValLoss.toFixed(4)
          }  ` +
          `lr ${lr.toExponential(2)}  norm ${
            gradNorm.toFixed(3)
          }  ${record.tokensPerSecond} tok/s  ETA ${formatDuration(remaining)}`;
        if (io.live || step % 10 === 0) io.progress(line);
      }

      recent.push(record);
      if (recent.length > RECENT_METRICS) recent.shift();
      await metricsFile.write(new TextEncoder().encode(JSON.stringify(record) + "\n"));

      if (options.genEvery > 0 && step % options.genEvery === 0) {
        sample = await sampleText();
        io.log(`sample at step ${step}:\n${sample}\n`);
      }
      if (stoppedBy === "divergence") {
        io.log(`checkpoint saved: ${await save()}`);
        break;
      }
      if (stop.requested !== null) {
        stoppedBy = "signal";
        io.log(`checkpoint saved: ${await save()} (resume with --resume ${lastCheckpoint})`);
        break;
      }
      if (options.saveEvery > 0 && step % options.saveEvery === 0 && step < options.steps) {
        io.log(`checkpoint saved: ${await save()}`);
      }
    }

    if (stoppedBy === "done") {
      io.log(`checkpoint saved: ${await save()}`);
      if (options.genEvery > 0 && step % options.genEvery !== 0) {
        sample = await sampleText();
        io.log(`sample at step ${step}:\n${sample}\n`);
      }
    }
  } finally {
    dispose();
    metricsFile.close();
    gpuTrainer?.destroy();
    gpuDevice?.destroy();
  }

  return {
    runDir,
    checkpoint: lastCheckpoint,
    step,
    firstValLoss,
    finalValLoss: lastValLoss,
    stoppedBy,
    secondsPerStep: stepsThisRun > 0 ? stepSeconds / stepsThisRun : NaN,
    sample,
  };
}

/** Trainer state in a checkpoint's sidecar, besides the tensors. */
interface ResumeMeta {
  config?: GPTConfig;
  tokenizer?: unknown;
  optimizer?: unknown;
  random?: { batch: number; dropout: number };
  data?: { sampler: string; seed: number; trainTokens: number };
  corpus?: string[];
  args?: TrainOptions;
  metrics?: MetricsRecord[];
}
