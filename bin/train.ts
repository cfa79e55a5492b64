/**
 * `deno task train`: trains a GPT on a corpus and prints samples.
 *
 * Parses and validates the flags before any work starts, picks the compute
 * backend, and hands the rest to `train` in `lib/train.ts`.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { NO_ADAPTER_MESSAGE } from "../gpu/device.ts";
import { CheckpointError } from "../lib/checkpoint.ts";
import {
  DEFAULTS,
  type OptimizerName,
  OPTIMIZERS,
  train,
  TrainError,
  type TrainOptions,
} from "../lib/train.ts";
import { type BackendName, selectBackend } from "../lib/backends.ts";
import { setBackend } from "../lib/tensor.ts";

/** A command-line input that cannot be used; reported as one line with exit status 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

interface Flag {
  key: keyof TrainOptions | "backend" | "threads" | "webgpu";
  kind: "int" | "number" | "string" | "boolean" | "list";
  /** Lower bound and whether it is included. */
  min?: [number, boolean];
  max?: [number, boolean];
  unit?: string;
  help: string;
  choices?: readonly string[];
}

const FLAGS: Record<string, Flag> = {
  "steps": {
    key: "steps",
    kind: "int",
    min: [1, true],
    unit: "steps",
    help: "total optimizer steps of the run",
  },
  "lr": { key: "lr", kind: "number", min: [0, false], help: "peak learning rate" },
  "batch-size": {
    key: "batchSize",
    kind: "int",
    min: [1, true],
    unit: "sequences",
    help: "sequences per step",
  },
  "context": {
    key: "context",
    kind: "int",
    min: [1, true],
    unit: "tokens",
    help: "tokens per sequence and the model's context length",
  },
  "d-model": {
    key: "dModel",
    kind: "int",
    min: [1, true],
    unit: "channels",
    help: "width of the residual stream",
  },
  "layers": { key: "layers", kind: "int", min: [1, true], help: "transformer blocks" },
  "heads": {
    key: "heads",
    kind: "int",
    min: [1, true],
    help: "attention heads per block; must divide --d-model",
  },
  "vocab-size": {
    key: "vocabSize",
    kind: "int",
    min: [0, true],
    unit: "merges",
    help: "BPE merges learned from the corpus (the vocabulary is the alphabet plus these)",
  },
  "dropout": {
    key: "dropout",
    kind: "number",
    min: [0, true],
    max: [1, false],
    help: "dropout probability during training",
  },
  "weight-decay": {
    key: "weightDecay",
    kind: "number",
    min: [0, true],
    help: "decoupled weight decay of the weight matrices",
  },
  "optimizer": { key: "optimizer", kind: "string", choices: OPTIMIZERS, help: "optimizer" },
  "warmup-steps": {
    key: "warmupSteps",
    kind: "int",
    min: [0, true],
    unit: "steps",
    help: "linear warmup from 0 to --lr",
  },
  "cosine": {
    key: "cosine",
    kind: "boolean",
    help: "cosine decay to 10% of --lr after the warmup (needs --warmup-steps)",
  },
  "clip-grad": {
    key: "clipGrad",
    kind: "number",
    min: [0, false],
    help: "maximum total gradient norm",
  },
  "no-clip-grad": { key: "clipGrad", kind: "boolean", help: "turn gradient clipping off" },
  "corpus": {
    key: "corpus",
    kind: "list",
    help:
      "corpus file or glob, repeatable; quote globs (default: the State of the Union addresses in corpus/sotu.txt)",
  },
  "seed": {
    key: "seed",
    kind: "int",
    min: [0, true],
    help: "seed of initialisation, batches and dropout",
  },
  "gen-every": {
    key: "genEvery",
    kind: "int",
    min: [0, true],
    unit: "steps",
    help: "print a sample every N steps (0: never)",
  },
  "eval-every": {
    key: "evalEvery",
    kind: "int",
    min: [1, true],
    unit: "steps",
    help: "evaluate on the validation split every N steps",
  },
  "eval-batches": {
    key: "evalBatches",
    kind: "int",
    min: [1, true],
    unit: "batches",
    help: "batches per evaluation",
  },
  "save-every": {
    key: "saveEvery",
    kind: "int",
    min: [0, true],
    unit: "steps",
    help: "save a checkpoint every N steps (0: only at the end)",
  },
  "save-format": {
    key: "saveFormat",
    kind: "string",
    choices: ["safetensors", "json"],
    help: "checkpoint layout",
  },
  "div-warn": {
    key: "divWarn",
    kind: "number",
    min: [0, false],
    unit: "%",
    help: "warn when smoothed validation loss exceeds training loss by this much",
  },
  "div-crit": {
    key: "divCrit",
    kind: "number",
    min: [0, false],
    unit: "%",
    help: "stop and save when the gap exceeds this, in % (default: off)",
  },
  "resume": {
    key: "resume",
    kind: "string",
    help: "continue from a checkpoint (.json or .safetensors of the pair)",
  },
  "run-dir": { key: "runDir", kind: "string", help: "folder for the numbered run folders" },
  "backend": {
    key: "backend",
    kind: "string",
    choices: ["js", "wasm", "blas"],
    help:
      "CPU kernels: wasm (SIMD), js (the plain reference) or blas (system OpenBLAS; needs deno run --allow-ffi)",
  },
  "threads": {
    key: "threads",
    kind: "int",
    min: [1, true],
    help: "threads of the wasm and blas backends",
  },
  "webgpu": {
    key: "webgpu",
    kind: "boolean",
    help: "run the training step on the GPU through WebGPU",
  },
};

/** Returns the `--help` text: every flag with its default and unit. */
export function helpText(): string {
  const lines = [
    "Usage: deno task train [flags]",
    "",
    "Trains a GPT-2 style model on a text corpus, printing losses and samples.",
    "Each run writes its arguments, metrics.jsonl and checkpoints to runs/<N>/.",
    "",
    "Flags:",
  ];
  for (const [name, flag] of Object.entries(FLAGS)) {
    const value = flag.kind === "boolean"
      ? ""
      : flag.kind === "int" || flag.kind === "number"
      ? " N"
      : " VALUE";
    let fallback: unknown = flag.key in DEFAULTS
      ? DEFAULTS[flag.key as keyof TrainOptions]
      : undefined;
    if (name === "no-clip-grad" || name === "cosine" || name === "webgpu") fallback = "off";
    if (name === "resume") fallback = "none";
    if (name === "corpus" || name === "div-crit") fallback = undefined;
    if (name === "backend") fallback = "wasm";
    if (name === "threads") fallback = navigator.hardwareConcurrency;
    const defaultText = fallback === undefined
      ? ""
      : ` (default: ${fallback}${
        flag.unit && fallback !== "none" && fallback !== "off" ? ` ${flag.unit}` : ""
      })`;
    const choices = flag.choices ? ` [${flag.choices.join(", ")}]` : "";
    lines.push(`  --${(name + value).padEnd(20)} ${flag.help}${choices}${defaultText}`);
  }
  lines.push(`  ${"--help".padEnd(22)} print this help`);
  return lines.join("\n");
}

/** The parsed command line. */
export interface TrainCommand {
  help: boolean;
  /** Only the options given on the command line; the rest come from defaults or the resumed run. */
  options: Partial<TrainOptions>;
  backend: BackendName;
  threads: number;
  webgpu: boolean;
}

function describeRange(flag: Flag): string {
  const parts: string[] = [];
  if (flag.min) parts.push(flag.min[1] ? `>= ${flag.min[0]}` : `> ${flag.min[0]}`);
  if (flag.max) parts.push(flag.max[1] ? `<= ${flag.max[0]}` : `< ${flag.max[0]}`);
  return `${flag.kind === "int" ? "an integer" : "a number"}${
    parts.length ? " " + parts.join(" and ") : ""
  }`;
}

function parseNumber(name: string, flag: Flag, text: string): number {
  const value = Number(text);
  const ok = text.trim() !== "" && Number.isFinite(value) &&
    (flag.kind !== "int" || Number.isInteger(value)) &&
    (!flag.min || (flag.min[1] ? value >= flag.min[0] : value > flag.min[0])) &&
    (!flag.max || (flag.max[1] ? value <= flag.max[0] : value < flag.max[0]));
  if (!ok) throw new UsageError(`invalid --${name} "${text}": expected ${describeRange(flag)}`);
  return value;
}

/**
 * Rewrites `--flag -5` as `--flag=-5` for numeric flags, so that a negative
 * number reaches validation and gets the range message, instead of looking
 * like another flag to `parseArgs`.
 */
function joinNegativeValues(argv: string[]): string[] {
  const joined: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const flag = FLAGS[argv[i].replace(/^--/, "")];
    const numeric = flag !== undefined && (flag.kind === "int" || flag.kind === "number");
    if (argv[i].startsWith("--") && numeric && /^-[\d.]/.test(argv[i + 1] ?? "")) {
      joined.push(`${argv[i]}=${argv[i + 1]}`);
      i++;
    } else {
      joined.push(argv[i]);
    }
  }
  return joined;
}

/** Parses and validates the trainer's arguments; throws `UsageError` on the first problem. */
export function parseTrainArgs(argv: string[]): TrainCommand {
  const parseOptions: Record<string, { type: "string" | "boolean"; multiple?: boolean }> = {
    help: { type: "boolean" },
  };
  for (const [name, flag] of Object.entries(FLAGS)) {
    parseOptions[name] = {
      type: flag.kind === "boolean" ? "boolean" : "string",
      multiple: flag.kind === "list",
    };
  }
  let parsed;
  try {
    parsed = parseArgs({
      args: joinNegativeValues(argv),
      options: parseOptions,
      strict: true,
      allowPositionals: false,
    });
  } catch (error) {
    const message = (error as Error).message;
    const ambiguous = message.match(/^Option '(--[\w-]+)' argument is ambiguous/);
    if (ambiguous) {
      throw new UsageError(
        `missing value for ${ambiguous[1]} (write a value that starts with a dash as ${
          ambiguous[1]
        }=VALUE)`,
      );
    }
    const missing = message.match(/^Option '(--[\w-]+)[^']*' argument missing/);
    if (missing) throw new UsageError(`missing value for ${missing[1]}`);
    throw new UsageError(message.split("\n")[0].replace(/\. To specify a positional.*$/, ""));
  }
  const values = parsed.values as Record<string, string | boolean | string[] | undefined>;
  const command: TrainCommand = {
    help: values.help === true,
    options: {},
    backend: "wasm",
    threads: navigator.hardwareConcurrency,
    webgpu: false,
  };
  const options = command.options as Record<string, unknown>;

  for (const [name, flag] of Object.entries(FLAGS)) {
    const raw = values[name];
    if (raw === undefined) continue;
    if (flag.kind === "boolean") {
      if (name === "no-clip-grad") options.clipGrad = null;
      else if (name === "webgpu") command.webgpu = true;
      else options[flag.key] = true;
      continue;
    }
    if (flag.kind === "list") {
      options[flag.key] = raw as string[];
      continue;
    }
    const text = raw as string;
    if (text.startsWith("--")) {
      throw new UsageError(`missing value for --${name} (got the flag ${text})`);
    }
    if (flag.kind === "string") {
      if (text === "") throw new UsageError(`missing value for --${name}`);
      if (flag.choices && !flag.choices.includes(text)) {
        throw new UsageError(
          `invalid --${name} "${text}": expected one of ${flag.choices.join(", ")}`,
        );
      }
      if (name === "backend") command.backend = text as BackendName;
      else options[flag.key] = text;
      continue;
    }
    const value = parseNumber(name, flag, text);
    if (name === "threads") command.threads = value;
    else options[flag.key] = value;
  }

  if (values["clip-grad"] !== undefined && values["no-clip-grad"]) {
    throw new UsageError("--clip-grad and --no-clip-grad cannot be used together");
  }
  if (options.cosine && options.warmupSteps === undefined) {
    throw new UsageError("--cosine needs --warmup-steps (use --warmup-steps 0 for no warmup)");
  }
  const dModel = (options.dModel as number | undefined) ?? DEFAULTS.dModel;
  const heads = (options.heads as number | undefined) ?? DEFAULTS.heads;
  if (!options.resume && dModel % heads !== 0) {
    throw new UsageError(`invalid --heads ${heads}: it must divide --d-model ${dModel}`);
  }
  if (options.optimizer !== undefined) options.optimizer = options.optimizer as OptimizerName;
  return command;
}

/** Runs the command with `argv` and returns its exit status. */
export async function main(argv: string[] = Deno.args): Promise<number> {
  let command: TrainCommand;
  try {
    command = parseTrainArgs(argv);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`train: ${error.message}. Run with --help for the list of flags.`);
    return 2;
  }
  if (command.help) {
    console.log(helpText());
    return 0;
  }

  try {
    setBackend(await selectBackend(command.backend, command.threads));
  } catch (error) {
    console.error(
      `train: the ${command.backend} backend is not available: ${(error as Error).message}`,
    );
    return 1;
  }

  try {
    const result = await train(command.options, undefined, { webgpu: command.webgpu });
    if (result.stoppedBy === "nonfinite") return 1;
    console.log(
      `done: step ${result.step}, validation loss ${result.firstValLoss.toFixed(4)} -> ${
        result.finalValLoss.toFixed(4)
      }, ${result.secondsPerStep.toFixed(3)} s per step, checkpoint ${result.checkpoint}`,
    );
    return 0;
  } catch (error) {
    if (
      error instanceof TrainError || error instanceof CheckpointError ||
      error instanceof Deno.errors.NotFound || error instanceof Deno.errors.NotCapable ||
      (error instanceof Error && error.message.startsWith(NO_ADAPTER_MESSAGE))
    ) {
      console.error(`train: ${error.message}`);
      return 1;
    }
    throw error;
  }
}

if (import.meta.main) {
  Deno.exit(await main());
}
