/**
 * Training checkpoints on disk.
 *
 * A checkpoint for step K lives in a run folder as a pair of files:
 * - `checkpoint_stepK.safetensors`: the tensors, see `lib/safetensors.ts`.
 * - `checkpoint_stepK.json`: the sidecar, which stores the trainer's state
 *   (`meta`) and the size and SHA-256 of the weights file.
 *
 * A sidecar looks like this:
 *
 * ```json
 * {
 *   "format": "rinzler-checkpoint",
 *   "version": 1,
 *   "step": 1200,
 *   "weights": { "file": "checkpoint_step1200.safetensors", "bytes": 4194336, "sha256": "9f…" },
 *   "meta": { "config": {}, "optimizer": {} }
 * }
 * ```
 *
 * A JSON checkpoint has no weights file. Its sidecar has `tensors` in place of
 * `weights`, mapping each name to `{ "shape": [...], "data": [...] }`, so that
 * any JSON reader can open it.
 *
 * Each file is written to a temporary file in the same folder, synced to disk
 * and renamed into place, weights first and sidecar last. A sidecar therefore
 * exists only once its weights are complete, and a process killed during a
 * save leaves every earlier checkpoint intact and loadable.
 *
 * @module
 */

import { basename, dirname, join } from "node:path";
import {
  CheckpointError,
  decodeSafetensors,
  elementCount,
  encodeSafetensors,
  type StoredTensor,
} from "./safetensors.ts";

export { CheckpointError, type StoredTensor };

/** Value of the sidecar's `format` field. */
export const CHECKPOINT_FORMAT = "rinzler-checkpoint";
/** Sidecar version written by this module and the only one it reads. */
export const CHECKPOINT_VERSION = 1;

/** State of a training run at one step. */
export interface CheckpointData {
  /** Optimizer step the state belongs to. A non-negative integer. */
  step: number;
  /**
   * Trainer state stored in the sidecar as JSON: config, tokenizer, optimizer
   * and schedule state, RNG state, data position, arguments, recent metrics.
   * `JSON.stringify` rules apply, so NaN and Infinity become null and
   * undefined values are dropped.
   */
  meta: Record<string, unknown>;
  /** Model parameters and optimizer moments, by name. */
  tensors: Map<string, StoredTensor>;
}

/** Storage format of a checkpoint's tensors. */
export type CheckpointFormat = "safetensors" | "json";

/** Options of `saveCheckpoint`. */
export interface SaveCheckpointOptions {
  /**
   * `"safetensors"` (default) writes a weights file next to the sidecar.
   * `"json"` writes the tensors into the sidecar as arrays of numbers.
   */
  format?: CheckpointFormat;
}

/** Paths of the two files of one checkpoint. */
export interface CheckpointPaths {
  sidecarPath: string;
  weightsPath: string;
}

/** Weights file record of a safetensors sidecar. */
interface WeightsRecord {
  /** File name, relative to the sidecar's folder. */
  file: string;
  /** File size in bytes. */
  bytes: number;
  /** Lowercase hex SHA-256 of the whole file. */
  sha256: string;
}

/**
 * A sidecar whose fields have been checked. The raw `tensors` object of a JSON
 * checkpoint is checked later, when it is converted.
 */
type ParsedSidecar =
  & { step: number; meta: Record<string, unknown> }
  & (
    | { format: "safetensors"; weights: WeightsRecord }
    | { format: "json"; inlineTensors: Record<string, unknown> }
  );

const SIDECAR_NAME = /^checkpoint_step(\d+)\.json$/;
const SHA256_HEX = /^[0-9a-f]{64}$/;
/** Maximum string length in V8 on 64-bit builds, in UTF-16 code units. */
const MAX_STRING_LENGTH = 2 ** 29 - 24;

/** Returns the sidecar and weights paths of the checkpoint for `step` in `dir`. */
export function checkpointPaths(dir: string, step: number): CheckpointPaths {
  if (!Number.isSafeInteger(step) || step < 0) {
    throw new RangeError(`checkpoint step must be a non-negative integer, got ${step}`);
  }
  return {
    sidecarPath: join(dir, `checkpoint_step${step}.json`),
    weightsPath: join(dir, `checkpoint_step${step}.safetensors`),
  };
}

/**
 * Saves a checkpoint into `dir`, creating the folder if needed, and returns
 * the paths written. `weightsPath` is null for a JSON checkpoint.
 *
 * A save over an existing checkpoint of the same step replaces it, and a
 * process killed during that save leaves the step with no sidecar. A JSON
 * save also deletes that step's old weights file, which its sidecar no longer
 * refers to.
 *
 * Throws a `TypeError` or `RangeError` before writing anything when the step,
 * meta or a tensor is invalid.
 */
export async function saveCheckpoint(
  dir: string,
  data: CheckpointData,
  options: SaveCheckpointOptions = {},
): Promise<{ sidecarPath: string; weightsPath: string | null }> {
  const format = options.format ?? "safetensors";
  if (format !== "safetensors" && format !== "json") {
    throw new TypeError(`checkpoint format must be "safetensors" or "json", got "${format}"`);
  }
  const paths = checkpointPaths(dir, data.step);
  if (!isPlainObject(data.meta)) {
    throw new TypeError("checkpoint meta must be a plain object");
  }
  // Serializing meta first makes a value JSON cannot hold (a BigInt, a cycle)
  // fail before any file is written.
  const metaJson = JSON.stringify(data.meta, null, 2);

  if (format === "json") {
    const chunks = jsonSidecarChunks(data.step, metaJson, data.tensors);
    await Deno.mkdir(dir, { recursive: true });
    await writeFileAtomic(paths.sidecarPath, chunks);
    await removeIfPresent(paths.weightsPath);
    return { sidecarPath: paths.sidecarPath, weightsPath: null };
  }

  const weightsBytes = encodeSafetensors(data.tensors, {
    format: CHECKPOINT_FORMAT,
    step: String(data.step),
  });
  const weights: WeightsRecord = {
    file: basename(paths.weightsPath),
    bytes: weightsBytes.length,
    sha256: await sha256Hex(weightsBytes),
  };
  await Deno.mkdir(dir, { recursive: true });
  // An old sidecar of the same step would refer to the new weights until the
  // new sidecar replaces it. Deleting it first means a kill midway leaves this
  // step absent rather than failing its checksum.
  await removeIfPresent(paths.sidecarPath);
  await syncFolder(dir);
  await writeFileAtomic(paths.weightsPath, [weightsBytes]);

  const sidecar = [
    "{",
    `  "format": ${JSON.stringify(CHECKPOINT_FORMAT)},`,
    `  "version": ${CHECKPOINT_VERSION},`,
    `  "step": ${data.step},`,
    `  "weights": ${JSON.stringify(weights)},`,
    `  "meta": ${indentJson(metaJson)}`,
    "}",
    "",
  ].join("\n");
  await writeFileAtomic(paths.sidecarPath, [new TextEncoder().encode(sidecar)]);
  return paths;
}

/**
 * Loads a checkpoint from its sidecar, its weights file or a JSON checkpoint.
 *
 * Throws a `CheckpointError` naming the file and the problem when a file is
 * missing, the sidecar is not valid JSON or has the wrong format or version,
 * or the weights file has the wrong size, SHA-256 or content.
 */
export async function loadCheckpoint(
  path: string,
): Promise<CheckpointData & { sidecarPath: string }> {
  let sidecarPath: string;
  let requestedWeightsPath: string | null = null;
  if (path.endsWith(".safetensors")) {
    sidecarPath = path.slice(0, -".safetensors".length) + ".json";
    requestedWeightsPath = path;
  } else if (path.endsWith(".json")) {
    sidecarPath = path;
  } else {
    throw new CheckpointError(
      path,
      "not a checkpoint file; pass the .json sidecar or the .safetensors weights file",
    );
  }

  const sidecar = await readSidecar(sidecarPath, requestedWeightsPath);

  if (sidecar.format === "json") {
    if (requestedWeightsPath !== null) {
      throw new CheckpointError(
        requestedWeightsPath,
        `the sidecar ${sidecarPath} stores its tensors inline and does not use this file; ` +
          "load the .json file instead",
      );
    }
    const tensors = decodeInlineTensors(sidecar.inlineTensors, sidecarPath);
    return { step: sidecar.step, meta: sidecar.meta, tensors, sidecarPath };
  }

  const weights = sidecar.weights;
  const weightsPath = join(dirname(sidecarPath), weights.file);
  if (requestedWeightsPath !== null && basename(requestedWeightsPath) !== weights.file) {
    throw new CheckpointError(
      requestedWeightsPath,
      `the sidecar ${sidecarPath} refers to the weights file "${weights.file}", not this file`,
    );
  }

  await checkWeightsSize(weightsPath, weights, sidecarPath);
  let bytes: Uint8Array<ArrayBuffer>;
  try {
    bytes = await Deno.readFile(weightsPath);
  } catch (error) {
    throw fileReadError(weightsPath, error, `the sidecar ${sidecarPath} refers to it`);
  }
  // The size is checked again because the file may have changed since the stat.
  if (bytes.length !== weights.bytes) {
    throw weightsSizeError(weightsPath, bytes.length, weights.bytes, sidecarPath);
  }
  const actualSha256 = await sha256Hex(bytes);
  if (actualSha256 !== weights.sha256) {
    throw new CheckpointError(
      weightsPath,
      `SHA-256 checksum mismatch: the file hashes to ${actualSha256} but the sidecar ` +
        `${sidecarPath} records ${weights.sha256}; the file is corrupted or was replaced. ` +
        "Restore it or load an earlier checkpoint",
    );
  }

  const { tensors } = decodeSafetensors(bytes, weightsPath);
  return { step: sidecar.step, meta: sidecar.meta, tensors, sidecarPath };
}

/**
 * Returns the sidecar path of the highest-step checkpoint in `dir`, or null
 * when the folder is missing or contains no usable checkpoint.
 *
 * A checkpoint counts when its sidecar parses, has a supported format and
 * version, and its weights file exists with the recorded size. The SHA-256 is
 * not checked here, so that finding the latest checkpoint does not read every
 * weights file. Each skipped checkpoint is passed to `onSkip`, which logs it
 * with `console.warn` by default.
 */
export async function latestCheckpoint(
  dir: string,
  onSkip: (error: CheckpointError) => void = (error) =>
    console.warn(`skipping unusable checkpoint: ${error.message}`),
): Promise<string | null> {
  const candidates: { step: number; path: string }[] = [];
  try {
    for await (const entry of Deno.readDir(dir)) {
      const match = SIDECAR_NAME.exec(entry.name);
      if (match !== null && entry.isFile) {
        candidates.push({ step: Number(match[1]), path: join(dir, entry.name) });
      }
    }
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return null;
    throw error;
  }

  candidates.sort((a, b) => b.step - a.step);
  for (const candidate of candidates) {
    try {
      const sidecar = await readSidecar(candidate.path, null);
      if (sidecar.format === "safetensors") {
        const weightsPath = join(dirname(candidate.path), sidecar.weights.file);
        await checkWeightsSize(weightsPath, sidecar.weights, candidate.path);
      }
      return candidate.path;
    } catch (error) {
      if (!(error instanceof CheckpointError)) throw error;
      onSkip(error);
    }
  }
  return null;
}

/**
 * Formats one float32 value as JSON text for a JSON checkpoint.
 *
 * A finite value becomes a decimal of at most 9 significant digits that reads
 * back as the same float32, and values that need fewer digits get fewer
 * (`0.1` for 0.1f). Negative zero is written `-0.0`, which JavaScript and
 * Python both parse as negative zero, because `JSON.stringify(-0)` is `"0"`.
 * JSON numbers cannot express NaN or the infinities, so these become the
 * strings `"NaN"`, `"Infinity"` and `"-Infinity"`. Every NaN becomes `"NaN"`,
 * so its sign and payload bits are lost, and it reads back as the engine's
 * default NaN (0x7fc00000 in Deno 2.9 on x86-64). All other values round-trip
 * bit for bit.
 */
export function formatFloat32Json(value: number): string {
  if (Number.isNaN(value)) return '"NaN"';
  if (value === Infinity) return '"Infinity"';
  if (value === -Infinity) return '"-Infinity"';
  if (Object.is(value, -0)) return "-0.0";
  // Nine significant digits always identify a float32. Fewer digits keep
  // values such as 0.1f short: "0.1" in place of "0.10000000149011612". Most
  // trained weights need 7 to 9 digits, so the search starts at 6 and tries 1
  // to 5 only for values that 6 digits already identify.
  let digits = 6;
  while (digits < 9 && !identifiesFloat32(value, digits)) digits++;
  if (digits === 6) {
    digits = 1;
    while (!identifiesFloat32(value, digits)) digits++;
  }
  return JSON.stringify(Number(value.toPrecision(digits)));
}

/** Returns whether `value` rounded to `digits` significant digits reads back as the same float32. */
function identifiesFloat32(value: number, digits: number): boolean {
  return Math.fround(Number(value.toPrecision(digits))) === value;
}

/**
 * Converts one parsed JSON value of a JSON checkpoint to a float32, or returns
 * null when it is neither a number nor one of the strings `"NaN"`,
 * `"Infinity"` and `"-Infinity"`.
 *
 * A number that is not exactly a float32 rounds to the nearest float32.
 */
export function float32FromJson(value: unknown): number | null {
  if (typeof value === "number") return Math.fround(value);
  switch (value) {
    case "NaN":
      return NaN;
    case "Infinity":
      return Infinity;
    case "-Infinity":
      return -Infinity;
    default:
      return null;
  }
}

function jsonSidecarChunks(
  step: number,
  metaJson: string,
  tensors: Map<string, StoredTensor>,
): Uint8Array[] {
  const encoder = new TextEncoder();
  const chunks = [
    encoder.encode(
      [
        "{",
        `  "format": ${JSON.stringify(CHECKPOINT_FORMAT)},`,
        `  "version": ${CHECKPOINT_VERSION},`,
        `  "step": ${step},`,
        `  "meta": ${indentJson(metaJson)},`,
        `  "tensors": {`,
      ].join("\n"),
    ),
  ];

  // Each tensor is encoded as its own chunk, so the sidecar is never one
  // string in memory. Data arrays stay on one line to keep the file scannable.
  let first = true;
  for (const [name, tensor] of tensors) {
    const count = elementCount(tensor.shape);
    if (count === null || count !== tensor.data.length) {
      throw new RangeError(
        `tensor "${name}" has shape ${JSON.stringify(tensor.shape)} ` +
          `but ${tensor.data.length} data elements`,
      );
    }
    const values = Array.from(tensor.data, formatFloat32Json);
    const line = `${first ? "" : ","}\n    ${JSON.stringify(name)}: ` +
      `{ "shape": ${JSON.stringify(tensor.shape)}, "data": [${values.join(", ")}] }`;
    chunks.push(encoder.encode(line));
    first = false;
  }
  chunks.push(encoder.encode(`${first ? "" : "\n  "}}\n}\n`));
  return chunks;
}

/** Indents every line after the first by two spaces, to nest pretty-printed JSON one level. */
function indentJson(json: string): string {
  return json.replaceAll("\n", "\n  ");
}

async function readSidecar(
  sidecarPath: string,
  requestedWeightsPath: string | null,
): Promise<ParsedSidecar> {
  let bytes: Uint8Array<ArrayBuffer>;
  try {
    bytes = await Deno.readFile(sidecarPath);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound && requestedWeightsPath !== null) {
      const weightsExists = await Deno.stat(requestedWeightsPath).then(() => true, () => false);
      if (!weightsExists) throw fileReadError(requestedWeightsPath, error, null);
      throw new CheckpointError(
        sidecarPath,
        `sidecar not found for the weights file ${requestedWeightsPath}. ` +
          "The save may have been interrupted before the sidecar was written; " +
          "load an earlier checkpoint",
        { cause: error },
      );
    }
    throw fileReadError(sidecarPath, error, null);
  }

  if (bytes.length === 0) {
    throw new CheckpointError(
      sidecarPath,
      "sidecar is empty; it was truncated. Load an earlier checkpoint",
    );
  }
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch (error) {
    // V8 limits a string to 2^29 - 24 UTF-16 code units on 64-bit builds, so
    // a JSON checkpoint of more than about 40 million values (an estimate at
    // about 12 bytes per value) cannot be read.
    const problem = bytes.length > MAX_STRING_LENGTH
      ? `sidecar of ${bytes.length} bytes is too large to read as one string. ` +
        'Save checkpoints of this size with format "safetensors"'
      : "sidecar is not valid UTF-8; it is corrupted. Load an earlier checkpoint";
    throw new CheckpointError(sidecarPath, problem, { cause: error });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new CheckpointError(
      sidecarPath,
      `sidecar is not valid JSON (${(error as Error).message}); ` +
        "it is truncated or corrupted. Load an earlier checkpoint",
      { cause: error },
    );
  }
  if (!isPlainObject(parsed)) {
    throw new CheckpointError(sidecarPath, "sidecar must contain a JSON object");
  }

  const { format, version, step, meta, weights, tensors } = parsed;
  if (format !== CHECKPOINT_FORMAT) {
    throw new CheckpointError(
      sidecarPath,
      `not a Rinzler checkpoint: "format" is ${JSON.stringify(format)}, ` +
        `expected "${CHECKPOINT_FORMAT}"`,
    );
  }
  if (version !== CHECKPOINT_VERSION) {
    const upgrade = typeof version === "number" && version > CHECKPOINT_VERSION
      ? "; it was written by a newer Rinzler, so upgrade to load it"
      : "";
    throw new CheckpointError(
      sidecarPath,
      `unsupported checkpoint version ${JSON.stringify(version)}; ` +
        `this build reads version ${CHECKPOINT_VERSION}${upgrade}`,
    );
  }
  if (typeof step !== "number" || !Number.isSafeInteger(step) || step < 0) {
    throw new CheckpointError(
      sidecarPath,
      `"step" must be a non-negative integer, got ${JSON.stringify(step)}`,
    );
  }
  if (!isPlainObject(meta)) {
    throw new CheckpointError(sidecarPath, `"meta" must be a JSON object`);
  }
  if ((weights === undefined) === (tensors === undefined)) {
    throw new CheckpointError(
      sidecarPath,
      `sidecar must have exactly one of "weights" (a weights file) or "tensors" (inline data)`,
    );
  }
  if (tensors !== undefined) {
    if (!isPlainObject(tensors)) {
      throw new CheckpointError(sidecarPath, `"tensors" must be a JSON object`);
    }
    return { step, meta, format: "json", inlineTensors: tensors };
  }
  return { step, meta, format: "safetensors", weights: parseWeightsRecord(weights, sidecarPath) };
}

function parseWeightsRecord(value: unknown, sidecarPath: string): WeightsRecord {
  if (!isPlainObject(value)) {
    throw new CheckpointError(sidecarPath, `"weights" must be a JSON object`);
  }
  const { file, bytes, sha256 } = value;
  if (
    typeof file !== "string" || file === "" || file === "." || file === ".." ||
    file.includes("/") || file.includes("\\")
  ) {
    throw new CheckpointError(
      sidecarPath,
      `"weights.file" must be a file name in the sidecar's folder, got ${JSON.stringify(file)}`,
    );
  }
  if (typeof bytes !== "number" || !Number.isSafeInteger(bytes) || bytes < 0) {
    throw new CheckpointError(
      sidecarPath,
      `"weights.bytes" must be a non-negative integer, got ${JSON.stringify(bytes)}`,
    );
  }
  if (typeof sha256 !== "string" || !SHA256_HEX.test(sha256)) {
    throw new CheckpointError(
      sidecarPath,
      `"weights.sha256" must be 64 lowercase hex digits, got ${JSON.stringify(sha256)}`,
    );
  }
  return { file, bytes, sha256 };
}

async function checkWeightsSize(
  weightsPath: string,
  weights: WeightsRecord,
  sidecarPath: string,
): Promise<void> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(weightsPath);
  } catch (error) {
    throw fileReadError(weightsPath, error, `the sidecar ${sidecarPath} refers to it`);
  }
  if (!info.isFile) {
    throw new CheckpointError(weightsPath, "weights path is not a regular file");
  }
  if (info.size !== weights.bytes) {
    throw weightsSizeError(weightsPath, info.size, weights.bytes, sidecarPath);
  }
}

function weightsSizeError(
  weightsPath: string,
  actual: number,
  expected: number,
  sidecarPath: string,
): CheckpointError {
  const state = actual < expected ? "truncated" : "larger than recorded";
  return new CheckpointError(
    weightsPath,
    `size mismatch: the file is ${actual} bytes but the sidecar ${sidecarPath} records ` +
      `${expected} bytes, so it is ${state}. Restore it or load an earlier checkpoint`,
  );
}

/** Wraps a failed read or stat in a CheckpointError. `referrer` names the file that refers to `path`. */
function fileReadError(path: string, error: unknown, referrer: string | null): CheckpointError {
  const suffix = referrer === null ? "" : ` (${referrer})`;
  if (error instanceof Deno.errors.NotFound) {
    return new CheckpointError(path, `file not found${suffix}`, { cause: error });
  }
  if (error instanceof Deno.errors.IsADirectory) {
    return new CheckpointError(path, `is a directory, expected a checkpoint file${suffix}`, {
      cause: error,
    });
  }
  return new CheckpointError(path, `could not be read: ${(error as Error).message}${suffix}`, {
    cause: error,
  });
}

function decodeInlineTensors(
  raw: Record<string, unknown>,
  sidecarPath: string,
): Map<string, StoredTensor> {
  // NOTE: JSON.parse puts integer-like keys ("0", "12") first in ascending
  // order, so tensors with such names do not keep their saved order.
  const tensors = new Map<string, StoredTensor>();
  for (const [name, entry] of Object.entries(raw)) {
    if (!isPlainObject(entry)) {
      throw new CheckpointError(sidecarPath, `tensor "${name}" must be a JSON object`);
    }
    const { shape, data } = entry;
    const count = Array.isArray(shape) ? elementCount(shape) : null;
    if (count === null) {
      throw new CheckpointError(
        sidecarPath,
        `tensor "${name}" has invalid shape ${JSON.stringify(shape)}; ` +
          "expected an array of non-negative integers",
      );
    }
    if (!Array.isArray(data)) {
      throw new CheckpointError(sidecarPath, `tensor "${name}" "data" must be an array`);
    }
    if (data.length !== count) {
      throw new CheckpointError(
        sidecarPath,
        `tensor "${name}" has ${data.length} data values but shape ` +
          `${JSON.stringify(shape)} needs ${count}; the file is corrupted or was edited`,
      );
    }

    const values = new Float32Array(count);
    for (let i = 0; i < count; i++) {
      const value = float32FromJson(data[i]);
      if (value === null) {
        throw new CheckpointError(
          sidecarPath,
          `tensor "${name}" data[${i}] is ${JSON.stringify(data[i])}; expected a number ` +
            `or one of "NaN", "Infinity", "-Infinity"`,
        );
      }
      values[i] = value;
    }
    tensors.set(name, { shape: shape as number[], data: values });
  }
  return tensors;
}

/**
 * Writes `chunks` to `path` so that `path` is either the old file or the
 * complete new one, even if the process is killed midway.
 *
 * The data goes to a temporary file in the same folder (so the rename stays
 * on one file system), which is synced before it is renamed over `path`. The
 * folder is synced afterwards so the rename itself survives a power loss.
 */
async function writeFileAtomic(path: string, chunks: Iterable<Uint8Array>): Promise<void> {
  // NOTE: a process killed before the rename leaves this temporary file
  // behind. Loading ignores it, but nothing deletes it.
  const temporaryPath = `${path}.tmp-${crypto.randomUUID()}`;
  try {
    const file = await Deno.open(temporaryPath, { write: true, createNew: true });
    try {
      for (const chunk of chunks) await writeAll(file, chunk);
      await file.sync();
    } finally {
      file.close();
    }
    await Deno.rename(temporaryPath, path);
  } catch (error) {
    await Deno.remove(temporaryPath).catch(() => {});
    throw error;
  }
  await syncFolder(dirname(path));
}

async function removeIfPresent(path: string): Promise<void> {
  try {
    await Deno.remove(path);
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let written = 0;
  while (written < bytes.length) {
    written += await file.write(bytes.subarray(written));
  }
}

async function syncFolder(folder: string): Promise<void> {
  // Windows cannot open a folder as a file. The rename is still atomic there,
  // so only the extra durability step is skipped.
  if (Deno.build.os === "windows") return;
  const handle = await Deno.open(folder, { read: true });
  try {
    await handle.sync();
  } finally {
    handle.close();
  }
}

async function sha256Hex(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
