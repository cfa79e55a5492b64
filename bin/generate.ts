/**
 * `deno task generate`: continues a prompt with a trained model and streams
 * the text to standard output as the tokens are produced.
 *
 * The prompt is echoed first, then each new token's text as soon as it is
 * chosen. The tokenizer works on whole code points, so every token decodes
 * on its own and the stream never splits a character. Statistics and notes
 * go to standard error, so standard output holds only the text.
 *
 * Exit status: 0 on success, 1 when the checkpoint cannot be loaded, 2 for
 * an invalid command line. Each error is one line on standard error.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { UNKNOWN_ID } from "../lib/bpe.ts";
import { CheckpointError } from "../lib/checkpoint.ts";
import { generate, type GenerateOptions } from "../lib/generate.ts";
import type { GPT } from "../lib/gpt.ts";
import { Random } from "../lib/random.ts";
import { loadModel } from "../lib/train.ts";

/** An invalid command-line input, reported as one line with exit status 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** The parsed command line. */
export interface GenerateCommand {
  help: boolean;
  /** Sidecar (.json) or weights (.safetensors) path of the checkpoint. */
  checkpoint: string;
  prompt: string;
  maxTokens: number;
  temperature: number;
  /** Null when sampling from the whole vocabulary. */
  topK: number | null;
  topP: number;
  /** Null for the default of 1. The model's context length bounds it, checked after loading. */
  stride: number | null;
  seed: number;
  cache: boolean;
}

/** Defaults of the flags. */
export const DEFAULTS = {
  prompt: "\n",
  maxTokens: 200,
  temperature: 0.8,
  topP: 1,
  stride: 1,
  seed: 0,
} as const;

const HELP = `Usage: deno task generate --checkpoint PATH [flags]

Continues a prompt with a trained model and streams the text to standard output.

Flags:
  --checkpoint PATH   checkpoint to load: the .json sidecar or its .safetensors file (required)
  --prompt TEXT       text to continue (default: a newline)
  --max-tokens N      new tokens to generate (default: ${DEFAULTS.maxTokens} tokens)
  --temperature T     softmax temperature, >= 0; 0 always picks the most likely token
                      (default: ${DEFAULTS.temperature})
  --top-k K           sample only among the K most likely tokens, an integer >= 1
                      (default: off, the whole vocabulary)
  --top-p P           nucleus sampling: only the most likely tokens whose probabilities
                      first sum to P, in (0, 1] (default: ${DEFAULTS.topP}, off)
  --stride N          tokens the window moves when the text outgrows the model's context,
                      from 1 to the context length; larger is faster but sees less context
                      (default: ${DEFAULTS.stride} token)
  --seed S            seed of the sampling draws, an integer from 0 to 4294967295
                      (default: ${DEFAULTS.seed})
  --no-cache          recompute the whole window for each token instead of using the
                      KV cache: the same text, more slowly (default: cache on)
  --help              print this help`;

/** Returns the `--help` text: every flag with its default and unit. */
export function helpText(): string {
  return HELP;
}

/** Parses `text` as a number and checks it, or throws a UsageError that names the flag. */
function parseNumber(
  flag: string,
  text: string,
  expected: string,
  valid: (value: number) => boolean,
): number {
  const value = Number(text);
  if (text.trim() === "" || !Number.isFinite(value) || !valid(value)) {
    throw new UsageError(`invalid --${flag} "${text}": expected ${expected}`);
  }
  return value;
}

/** Flags that take a value. */
const VALUE_FLAGS = [
  "checkpoint",
  "prompt",
  "max-tokens",
  "temperature",
  "top-k",
  "top-p",
  "stride",
  "seed",
];

/**
 * Joins each value flag with the argument after it (`--flag=value`) unless
 * that argument starts with `--`. `parseArgs` would otherwise reject values
 * that start with a dash, such as `--temperature -1` or `--prompt "- item"`.
 */
function attachValues(argv: string[]): string[] {
  const joined: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i].startsWith("--") ? argv[i].slice(2) : "";
    const next = argv[i + 1];
    if (VALUE_FLAGS.includes(flag) && next !== undefined && !next.startsWith("--")) {
      joined.push(`${argv[i]}=${next}`);
      i++;
    } else {
      joined.push(argv[i]);
    }
  }
  return joined;
}

/** Rewrites an error message of `parseArgs` as one line. */
function describeParseError(message: string): string {
  const flag = message.match(/^Option '(--[\w-]+)/)?.[1];
  if (flag !== undefined && /argument (missing|is ambiguous)/.test(message)) {
    return `missing value for ${flag}; to pass a value that starts with --, write ${flag}=VALUE`;
  }
  // Node's messages end with advice about positional arguments that does not apply here.
  return message.replace(/\. To specify .*$/s, "").replace(/\s+/g, " ");
}

/** Parses and validates the arguments, throwing a UsageError on the first problem. */
export function parseGenerateArgs(argv: string[]): GenerateCommand {
  let parsed;
  try {
    parsed = parseArgs({
      args: attachValues(argv),
      strict: true,
      allowPositionals: false,
      options: {
        "checkpoint": { type: "string" },
        "prompt": { type: "string" },
        "max-tokens": { type: "string" },
        "temperature": { type: "string" },
        "top-k": { type: "string" },
        "top-p": { type: "string" },
        "stride": { type: "string" },
        "seed": { type: "string" },
        "no-cache": { type: "boolean" },
        "help": { type: "boolean" },
      },
    });
  } catch (error) {
    throw new UsageError(describeParseError((error as Error).message));
  }
  const values = parsed.values;
  const isInteger = Number.isInteger;

  const command: GenerateCommand = {
    help: values.help === true,
    checkpoint: values.checkpoint ?? "",
    prompt: values.prompt ?? DEFAULTS.prompt,
    maxTokens: DEFAULTS.maxTokens,
    temperature: DEFAULTS.temperature,
    topK: null,
    topP: DEFAULTS.topP,
    stride: null,
    seed: DEFAULTS.seed,
    cache: values["no-cache"] !== true,
  };
  if (command.help) return command;

  if (values.checkpoint === undefined || values.checkpoint === "") {
    throw new UsageError(
      "missing --checkpoint PATH: pass the .json or .safetensors file of a checkpoint",
    );
  }
  if (command.prompt === "") {
    throw new UsageError('invalid --prompt "": expected at least one character');
  }
  if (values["max-tokens"] !== undefined) {
    command.maxTokens = parseNumber(
      "max-tokens",
      values["max-tokens"],
      "an integer >= 0",
      (v) => isInteger(v) && v >= 0,
    );
  }
  if (values.temperature !== undefined) {
    command.temperature = parseNumber(
      "temperature",
      values.temperature,
      "a number >= 0",
      (v) => v >= 0,
    );
  }
  if (values["top-k"] !== undefined) {
    command.topK = parseNumber(
      "top-k",
      values["top-k"],
      "an integer >= 1",
      (v) => isInteger(v) && v >= 1,
    );
  }
  if (values["top-p"] !== undefined) {
    command.topP = parseNumber(
      "top-p",
      values["top-p"],
      "a number in (0, 1]",
      (v) => v > 0 && v <= 1,
    );
  }
  if (values.stride !== undefined) {
    command.stride = parseNumber(
      "stride",
      values.stride,
      "an integer >= 1",
      (v) => isInteger(v) && v >= 1,
    );
  }
  if (values.seed !== undefined) {
    command.seed = parseNumber(
      "seed",
      values.seed,
      "an integer from 0 to 4294967295",
      (v) => isInteger(v) && v >= 0 && v <= 0xffffffff,
    );
  }
  return command;
}

/** Writes all of `bytes` to standard output; `writeSync` may write fewer bytes than it was given. */
function writeOut(bytes: Uint8Array): void {
  let written = 0;
  while (written < bytes.length) written += Deno.stdout.writeSync(bytes.subarray(written));
}

/** Loads the checkpoint, turning every failure into one CheckpointError line. */
async function load(path: string) {
  try {
    return await loadModel(path);
  } catch (error) {
    if (error instanceof CheckpointError) throw error;
    // The tokenizer and the model config throw plain Errors for invalid sidecar contents.
    throw new CheckpointError(
      path,
      `invalid model config or tokenizer: ${(error as Error).message}`,
      {
        cause: error,
      },
    );
  }
}

/** Checks the options that depend on the model, throwing a UsageError that names the flag. */
function checkAgainstModel(command: GenerateCommand, model: GPT): void {
  const context = model.config.contextLength;
  if (command.stride !== null && command.stride > context) {
    throw new UsageError(
      `invalid --stride ${command.stride}: expected an integer from 1 to the model's context length ${context}`,
    );
  }
}

/** Runs the command with `argv` and returns its exit status. */
export async function main(argv: string[] = Deno.args): Promise<number> {
  let command: GenerateCommand;
  try {
    command = parseGenerateArgs(argv);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`generate: ${error.message}. Run with --help for the list of flags.`);
    return 2;
  }
  if (command.help) {
    console.log(helpText());
    return 0;
  }

  let loaded;
  try {
    loaded = await load(command.checkpoint);
  } catch (error) {
    if (!(error instanceof CheckpointError)) throw error;
    console.error(`generate: ${error.message}`);
    return 1;
  }
  const { model, tokenizer } = loaded;
  try {
    checkAgainstModel(command, model);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`generate: ${error.message}`);
    return 2;
  }

  const prompt = tokenizer.encode(command.prompt);
  const unknown = prompt.filter((id) => id === UNKNOWN_ID).length;
  if (unknown > 0) {
    console.error(
      `note: ${unknown} character(s) of the prompt are not in the tokenizer's alphabet; ` +
        "the model reads each as the unknown token",
    );
  }

  const encoder = new TextEncoder();
  const options: GenerateOptions = {
    maxTokens: command.maxTokens,
    temperature: command.temperature,
    topP: command.topP,
    random: new Random(command.seed),
    cache: command.cache,
    onToken: (id) => writeOut(encoder.encode(tokenizer.decode([id]))),
  };
  if (command.topK !== null) options.topK = command.topK;
  if (command.stride !== null) options.stride = command.stride;

  const started = performance.now();
  let produced: number[];
  try {
    writeOut(encoder.encode(command.prompt));
    produced = generate(model, prompt, options);
    const last = produced.length > 0 ? tokenizer.decode(produced.slice(-1)) : command.prompt;
    if (!last.endsWith("\n")) writeOut(encoder.encode("\n"));
  } catch (error) {
    // The reader of a pipe (`| head`) may close it early, and the text it read is complete.
    if (error instanceof Deno.errors.BrokenPipe) return 0;
    throw error;
  }

  const seconds = (performance.now() - started) / 1000;
  console.error(
    `generated ${produced.length} tokens in ${seconds.toFixed(2)} s ` +
      `(${(produced.length / seconds).toFixed(1)} tokens/s, KV cache ${
        command.cache ? "on" : "off"
      })`,
  );
  return 0;
}

if (import.meta.main) {
  Deno.exit(await main());
}
