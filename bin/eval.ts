/**
 * `deno task eval --checkpoint PATH`: measures a checkpoint's next-token cross-entropy
 * and perplexity on a text.
 *
 * The text is the corpus the checkpoint was trained on (as recorded in its sidecar)
 * unless `--corpus` names another. It is encoded with the checkpoint's tokenizer and cut
 * into consecutive, non-overlapping windows of the model's context length. Each window
 * predicts its tokens from the tokens before them inside the same window, so the first
 * positions of every window see little context, and the result is higher than a
 * sliding-window evaluation would give.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { type BackendName, selectBackend } from "../lib/backends.ts";
import type { BPETokenizer } from "../lib/bpe.ts";
import { loadCorpus } from "../lib/corpus.ts";
import type { GPT } from "../lib/gpt.ts";
import { setBackend } from "../lib/tensor.ts";
import { loadModel, splitTokens } from "../lib/train.ts";

/** A command-line argument or an input that cannot be used, reported as one line. */
export class EvalError extends Error {
  override name = "EvalError";
}

/** Parts of the token stream that can be evaluated. The trainer validates on the last 10%. */
export const SPLITS = ["all", "train", "val"] as const;
/** Name of a part of the token stream. */
export type SplitName = typeof SPLITS[number];

/** Parsed command-line arguments. */
export interface EvalCommand {
  help: boolean;
  /** Sidecar (.json) or weights (.safetensors) file of the checkpoint. */
  checkpoint: string;
  /** Text files or globs, or none for the corpus recorded in the checkpoint. */
  corpus: string[];
  split: SplitName;
  /** Windows per forward pass. */
  batchSize: number;
  /** Read only this many tokens from the start of the split, or all when null. */
  maxTokens: number | null;
  backend: BackendName;
  threads: number;
  /** Print one JSON object in place of the text report. */
  json: boolean;
}

/** Returns the `--help` text. */
export function helpText(): string {
  return [
    "Usage: deno task eval --checkpoint PATH [--corpus GLOB ...] [flags]",
    "",
    "Measures the mean next-token cross-entropy and the perplexity of a checkpoint on a text,",
    "over non-overlapping windows of the model's context length that cover the text.",
    "",
    "Flags:",
    "  --checkpoint PATH    checkpoint to evaluate: its .json sidecar or .safetensors file",
    "  --corpus GLOB        text file or glob, repeatable (default: the corpus the",
    "                       checkpoint was trained on, as recorded in its sidecar)",
    "  --split NAME         part of the token stream: all, train (the first 90%) or val",
    "                       (the last 10%, the trainer's validation split) (default: all)",
    "  --batch-size N       windows per forward pass (default: 8)",
    "  --max-tokens N       read only the first N tokens of the split (default: all)",
    "  --backend NAME       CPU kernels: wasm (SIMD) or js (the plain reference)",
    "                       (default: wasm)",
    "  --threads N          worker threads of the wasm backend (default: all cores)",
    "  --json               print the result as one JSON object",
    "  --help               print this help",
  ].join("\n");
}

function parsePositiveInteger(name: string, text: string): number {
  const value = Number(text);
  if (text.trim() === "" || !Number.isInteger(value) || value < 1) {
    throw new EvalError(`invalid --${name} "${text}": expected an integer >= 1`);
  }
  return value;
}

/** Parses the arguments. Throws `EvalError` on the first problem. */
export function parseEvalArgs(argv: string[]): EvalCommand {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      options: {
        checkpoint: { type: "string" },
        corpus: { type: "string", multiple: true },
        split: { type: "string" },
        "batch-size": { type: "string" },
        "max-tokens": { type: "string" },
        backend: { type: "string" },
        threads: { type: "string" },
        json: { type: "boolean" },
        help: { type: "boolean" },
      },
      strict: true,
      allowPositionals: false,
    });
  } catch (error) {
    throw new EvalError((error as Error).message.replace(/\. To specify a positional.*$/s, ""));
  }
  const values = parsed.values;
  const command: EvalCommand = {
    help: values.help === true,
    checkpoint: values.checkpoint ?? "",
    corpus: values.corpus ?? [],
    split: "all",
    batchSize: 8,
    maxTokens: null,
    backend: "wasm",
    threads: navigator.hardwareConcurrency,
    json: values.json === true,
  };
  if (command.help) return command;

  if (command.checkpoint === "") {
    throw new EvalError(
      "missing --checkpoint: pass a checkpoint such as runs/1/checkpoint_step1000.json",
    );
  }
  if (command.corpus.some((pattern) => pattern === "")) {
    throw new EvalError("missing value for --corpus");
  }
  if (values.split !== undefined) {
    if (!(SPLITS as readonly string[]).includes(values.split)) {
      throw new EvalError(
        `invalid --split "${values.split}": expected one of ${SPLITS.join(", ")}`,
      );
    }
    command.split = values.split as SplitName;
  }
  if (values["batch-size"] !== undefined) {
    command.batchSize = parsePositiveInteger("batch-size", values["batch-size"]);
  }
  if (values["max-tokens"] !== undefined) {
    command.maxTokens = parsePositiveInteger("max-tokens", values["max-tokens"]);
  }
  if (values.backend !== undefined) {
    if (values.backend !== "js" && values.backend !== "wasm") {
      throw new EvalError(`invalid --backend "${values.backend}": expected one of js, wasm`);
    }
    command.backend = values.backend;
  }
  if (values.threads !== undefined) {
    command.threads = parsePositiveInteger("threads", values.threads);
  }
  return command;
}

/** Totals of one evaluation pass. */
export interface TokenEvaluation {
  /** Tokens whose prediction was scored: every token of the stream except the first. */
  tokens: number;
  /** Windows the stream was cut into. The last may be shorter than the context. */
  windows: number;
  /** Mean cross-entropy in nats per scored token. */
  crossEntropy: number;
}

/**
 * Evaluates `model` on `tokens`, cut into consecutive windows of its context length T.
 * Window k reads tokens `kT … kT+T-1` and predicts tokens `kT+1 … kT+T`, so every token
 * after the first is scored exactly once. A remainder shorter than T forms a last,
 * shorter window. Full windows go through the model `batchSize` at a time.
 * `onProgress` is called after each forward pass with the windows done so far.
 */
export function evaluateTokens(
  model: GPT,
  tokens: Int32Array,
  batchSize: number,
  onProgress?: (done: number, total: number) => void,
): TokenEvaluation {
  const T = model.config.contextLength;
  if (tokens.length < T + 1) {
    throw new EvalError(
      `${tokens.length} tokens are fewer than one window of ${T} tokens plus its last target`,
    );
  }
  const scored = tokens.length - 1;
  const fullWindows = Math.floor(scored / T);
  const remainder = scored - fullWindows * T;
  const windows = fullWindows + (remainder > 0 ? 1 : 0);

  // The sum is kept in float64, and each batch adds its mean times its token count.
  let totalNats = 0;
  for (let first = 0; first < fullWindows; first += batchSize) {
    const B = Math.min(batchSize, fullWindows - first);
    const inputs = new Int32Array(B * T);
    const targets = new Int32Array(B * T);
    for (let b = 0; b < B; b++) {
      const start = (first + b) * T;
      inputs.set(tokens.subarray(start, start + T), b * T);
      targets.set(tokens.subarray(start + 1, start + T + 1), b * T);
    }
    totalNats += model.evaluate(inputs, targets, B, T) * B * T;
    onProgress?.(first + B, windows);
  }
  if (remainder > 0) {
    const start = fullWindows * T;
    const inputs = tokens.slice(start, start + remainder);
    const targets = tokens.slice(start + 1, start + remainder + 1);
    totalNats += model.evaluate(inputs, targets, 1, remainder) * remainder;
    onProgress?.(windows, windows);
  }
  return { tokens: scored, windows, crossEntropy: totalNats / scored };
}

/** Returns how many characters (code points) the tokens decode to. */
export function countCharacters(tokenizer: BPETokenizer, tokens: Int32Array): number {
  const perToken = new Int32Array(tokenizer.vocabSize);
  for (let id = 0; id < perToken.length; id++) {
    perToken[id] = [...tokenizer.decode([id])].length;
  }
  let characters = 0;
  for (const id of tokens) characters += perToken[id];
  return characters;
}

/** Returns the corpus patterns recorded in a checkpoint's sidecar, or null when there are none. */
async function recordedCorpus(checkpoint: string): Promise<string[] | null> {
  const sidecarPath = checkpoint.endsWith(".safetensors")
    ? checkpoint.slice(0, -".safetensors".length) + ".json"
    : checkpoint;
  // NOTE: this parses the sidecar a second time after loadModel, which costs time for a
  // JSON checkpoint because its tensors are stored inline.
  const sidecar = JSON.parse(await Deno.readTextFile(sidecarPath));
  const corpus = sidecar?.meta?.corpus;
  const valid = Array.isArray(corpus) && corpus.length > 0 &&
    corpus.every((pattern) => typeof pattern === "string");
  return valid ? corpus : null;
}

/** Everything the report prints. */
export interface EvalReport extends TokenEvaluation {
  checkpoint: string;
  step: number;
  files: string[];
  split: SplitName;
  contextLength: number;
  perplexity: number;
  /** Characters (code points) that the scored tokens decode to. */
  characters: number;
  bitsPerCharacter: number;
}

/** Loads the checkpoint and the text, and evaluates. Throws on any unusable input. */
export async function runEval(
  command: EvalCommand,
  onProgress?: (done: number, total: number) => void,
): Promise<EvalReport> {
  const { model, tokenizer, step } = await loadModel(command.checkpoint);

  let patterns = command.corpus;
  const fromCheckpoint = patterns.length === 0;
  if (fromCheckpoint) {
    const recorded = await recordedCorpus(command.checkpoint);
    if (recorded === null) {
      throw new EvalError(
        `${command.checkpoint} does not record the corpus it was trained on; pass --corpus`,
      );
    }
    patterns = recorded;
  }
  let corpus;
  try {
    corpus = await loadCorpus(patterns);
  } catch (error) {
    const hint = fromCheckpoint
      ? ` (the corpus recorded in the checkpoint, relative to the folder training ran in; pass --corpus to use another)`
      : "";
    throw new EvalError(`${(error as Error).message}${hint}`);
  }

  const allTokens = Int32Array.from(tokenizer.encode(corpus.text));
  if (allTokens.length === 0) {
    throw new EvalError(`the text of ${corpus.files.join(", ")} is empty`);
  }
  // Context 0 because only the trainer's 90/10 cut is needed here. The window check follows.
  const { train, val } = splitTokens(allTokens, 0);
  let tokens: Int32Array = allTokens;
  if (command.split === "train") tokens = train;
  if (command.split === "val") tokens = val;
  if (command.maxTokens !== null) tokens = tokens.subarray(0, command.maxTokens);

  const T = model.config.contextLength;
  if (tokens.length < T + 1) {
    const needed = `one window of the model's context of ${T} tokens needs ${T + 1} tokens`;
    if (command.maxTokens !== null && command.maxTokens < T + 1) {
      throw new EvalError(`--max-tokens ${command.maxTokens} is too small: ${needed}`);
    }
    const source = command.split === "all" ? "the text" : `the ${command.split} split of the text`;
    throw new EvalError(
      `${source} of ${corpus.files.join(", ")} is too short: it has ${tokens.length} tokens, ` +
        `but ${needed}; pass a longer text with --corpus`,
    );
  }

  const result = evaluateTokens(model, tokens, command.batchSize, onProgress);
  const characters = countCharacters(tokenizer, tokens.subarray(1));
  return {
    checkpoint: command.checkpoint,
    step,
    files: corpus.files,
    split: command.split,
    contextLength: T,
    ...result,
    perplexity: Math.exp(result.crossEntropy),
    characters,
    bitsPerCharacter: result.crossEntropy * result.tokens / characters / Math.LN2,
  };
}

/** Returns the text report, one `name: value` line per figure. */
export function formatReport(report: EvalReport): string {
  const files = report.files.length === 1 ? report.files[0] : `${report.files.length} files`;
  return [
    `checkpoint: ${report.checkpoint} (step ${report.step})`,
    `text: ${files}, split ${report.split}, ${report.characters} characters scored`,
    `tokens: ${report.tokens} scored in ${report.windows} windows of up to ${report.contextLength}`,
    `cross-entropy: ${report.crossEntropy.toFixed(6)} nats per token`,
    `perplexity: ${report.perplexity.toPrecision(7)}`,
    `bits per character: ${report.bitsPerCharacter.toFixed(4)}`,
  ].join("\n");
}

/** Runs the command with `argv` and returns its exit status. */
export async function main(argv: string[] = Deno.args): Promise<number> {
  let command: EvalCommand;
  try {
    command = parseEvalArgs(argv);
  } catch (error) {
    console.error(`eval: ${(error as Error).message}. Run with --help for the list of flags.`);
    return 2;
  }
  if (command.help) {
    console.log(helpText());
    return 0;
  }

  const live = Deno.stderr.isTerminal();
  const encoder = new TextEncoder();
  const progress = (done: number, total: number) => {
    Deno.stderr.writeSync(encoder.encode(`\r\x1b[2Kevaluating: window ${done}/${total}`));
    if (done === total) Deno.stderr.writeSync(encoder.encode("\r\x1b[2K"));
  };
  try {
    setBackend(await selectBackend(command.backend, command.threads));
    const report = await runEval(command, live ? progress : undefined);
    console.log(command.json ? JSON.stringify(report) : formatReport(report));
    return 0;
  } catch (error) {
    // Every failure is reported as one line, including unexpected ones, so the user never
    // sees a stack trace.
    console.error(`eval: ${(error as Error).message}`);
    return 1;
  }
}

if (import.meta.main) {
  Deno.exit(await main());
}
