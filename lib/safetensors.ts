/**
 * Reading and writing the safetensors format for float32 tensors.
 *
 * A safetensors file is:
 * 1. an 8-byte little-endian unsigned integer N,
 * 2. N bytes of UTF-8 JSON, the header, padded at the end with spaces,
 * 3. the data buffer: the raw little-endian bytes of every tensor.
 *
 * The header maps each tensor name to
 * `{ "dtype": "F32", "shape": [...], "data_offsets": [begin, end] }`, with
 * offsets in bytes relative to the start of the data buffer. The optional key
 * `"__metadata__"` maps to an object of string values. The format is specified
 * at https://github.com/huggingface/safetensors (README, "Format").
 *
 * Only the `F32` dtype is read and written, because every tensor in this
 * project is a `Float32Array`.
 *
 * @module
 */

/** A dense row-major float32 tensor as stored in checkpoints. */
export interface StoredTensor {
  /** Size of each dimension. An empty shape is a scalar with one element. */
  shape: number[];
  /** Elements in row-major order, `shape` product long. */
  data: Float32Array;
}

/** Contents of a decoded safetensors file. */
export interface DecodedSafetensors {
  /** Tensors in the order of their data offsets, which is the order the encoder wrote them. */
  tensors: Map<string, StoredTensor>;
  /** The `__metadata__` object of the header, or `{}` when the header has none. */
  metadata: Record<string, string>;
}

/**
 * Error for a checkpoint or safetensors file that cannot be read.
 *
 * The message starts with the file name, followed by what is wrong with it.
 */
export class CheckpointError extends Error {
  /** Path of the file that failed, or a description when the bytes came from elsewhere. */
  readonly file: string;

  /** Builds an error whose message is `<file>: <problem>`. `options.cause` keeps the underlying error. */
  constructor(file: string, problem: string, options?: ErrorOptions) {
    super(`${file}: ${problem}`, options);
    this.name = "CheckpointError";
    this.file = file;
  }
}

const HEADER_LENGTH_BYTES = 8;
/** Header and data start at multiples of this many bytes. */
const HEADER_ALIGNMENT = 8;
const METADATA_KEY = "__metadata__";
const F32_BYTES = 4;

const LITTLE_ENDIAN_HOST = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/**
 * Encodes float32 tensors and string metadata as a safetensors file.
 *
 * Tensors are laid out in the map's insertion order, with no gaps. The header
 * is padded with spaces so that the data buffer starts at a multiple of 8
 * bytes. Values are copied bit for bit, NaN payloads and negative zero
 * included.
 *
 * Throws a `RangeError` for a shape with a negative or fractional dimension,
 * or whose element count differs from the data length, and a `TypeError` for a
 * tensor named `__metadata__` or a metadata value that is not a string.
 */
export function encodeSafetensors(
  tensors: Map<string, StoredTensor>,
  metadata?: Record<string, string>,
): Uint8Array<ArrayBuffer> {
  const headerEntries: string[] = [];

  if (metadata !== undefined) {
    for (const [key, value] of Object.entries(metadata)) {
      if (typeof value !== "string") {
        throw new TypeError(
          `safetensors metadata value for "${key}" must be a string, got ${typeof value}`,
        );
      }
    }
    headerEntries.push(`${JSON.stringify(METADATA_KEY)}:${JSON.stringify(metadata)}`);
  }

  let dataBytes = 0;
  for (const [name, tensor] of tensors) {
    if (name === METADATA_KEY) {
      throw new TypeError(`tensor name "${METADATA_KEY}" is reserved for safetensors metadata`);
    }
    const count = elementCount(tensor.shape);
    if (count === null) {
      throw new RangeError(
        `tensor "${name}" has invalid shape ${JSON.stringify(tensor.shape)}; ` +
          "dimensions must be non-negative integers",
      );
    }
    if (count !== tensor.data.length) {
      throw new RangeError(
        `tensor "${name}" has shape ${JSON.stringify(tensor.shape)} (${count} elements) ` +
          `but ${tensor.data.length} data elements`,
      );
    }
    const begin = dataBytes;
    dataBytes += count * F32_BYTES;
    const info = { dtype: "F32", shape: tensor.shape, data_offsets: [begin, dataBytes] };
    headerEntries.push(`${JSON.stringify(name)}:${JSON.stringify(info)}`);
  }

  // The header is built by hand so that its keys keep insertion order. A JS
  // object would move integer-like names such as "0" to the front.
  const headerJson = new TextEncoder().encode(`{${headerEntries.join(",")}}`);
  const headerLength = Math.ceil(headerJson.length / HEADER_ALIGNMENT) * HEADER_ALIGNMENT;

  const bytes = new Uint8Array(HEADER_LENGTH_BYTES + headerLength + dataBytes);
  const view = new DataView(bytes.buffer);
  view.setBigUint64(0, BigInt(headerLength), true);
  bytes.set(headerJson, HEADER_LENGTH_BYTES);
  bytes.fill(0x20, HEADER_LENGTH_BYTES + headerJson.length, HEADER_LENGTH_BYTES + headerLength);

  let offset = HEADER_LENGTH_BYTES + headerLength;
  for (const tensor of tensors.values()) {
    writeFloat32LittleEndian(bytes, offset, tensor.data);
    offset += tensor.data.length * F32_BYTES;
  }
  return bytes;
}

/**
 * Decodes a safetensors file of float32 tensors.
 *
 * `source` names the file in error messages. Tensors are returned in the
 * order of their data offsets, and their data is copied out of `bytes`.
 *
 * Throws a `CheckpointError` for any of these problems:
 * - a file shorter than 8 bytes, or a header length past the end of the file,
 * - a header that is not a UTF-8 JSON object,
 * - a dtype other than `F32`, or a malformed shape or offset pair,
 * - a byte range whose size does not match the shape,
 * - byte ranges that overlap or leave gaps, or bytes after the last tensor.
 */
export function decodeSafetensors(
  bytes: Uint8Array,
  source = "safetensors data",
): DecodedSafetensors {
  const fail = (problem: string): never => {
    throw new CheckpointError(source, problem);
  };

  if (bytes.length < HEADER_LENGTH_BYTES) {
    fail(
      `file is ${bytes.length} bytes, shorter than the 8-byte header length field; ` +
        "it is truncated or not a safetensors file",
    );
  }

  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const declaredHeaderLength = view.getBigUint64(0, true);
  const available = bytes.length - HEADER_LENGTH_BYTES;
  if (declaredHeaderLength > BigInt(available)) {
    fail(
      `header length field says ${declaredHeaderLength} bytes, but only ${available} bytes ` +
        "follow it; the file is truncated or not a safetensors file",
    );
  }
  const headerLength = Number(declaredHeaderLength);
  const dataStart = HEADER_LENGTH_BYTES + headerLength;

  const header = parseHeader(bytes.subarray(HEADER_LENGTH_BYTES, dataStart), fail);
  const metadata = parseMetadata(header[METADATA_KEY], fail);

  const entries: { name: string; shape: number[]; begin: number; end: number }[] = [];
  for (const [name, info] of Object.entries(header)) {
    if (name === METADATA_KEY) continue;
    entries.push({ name, ...parseTensorInfo(name, info, fail) });
  }

  // Sorting by offset lets one pass find overlaps, gaps and trailing bytes.
  entries.sort((a, b) => a.begin - b.begin || a.end - b.end);
  const dataLength = bytes.length - dataStart;
  let expectedBegin = 0;
  for (const entry of entries) {
    if (entry.end > dataLength) {
      fail(
        `tensor "${entry.name}" data_offsets [${entry.begin}, ${entry.end}] run past the end ` +
          `of the ${dataLength}-byte data buffer; the file is truncated`,
      );
    }
    if (entry.begin < expectedBegin) {
      fail(
        `tensor "${entry.name}" data_offsets [${entry.begin}, ${entry.end}] overlap ` +
          `the previous tensor, which ends at byte ${expectedBegin}`,
      );
    }
    if (entry.begin > expectedBegin) {
      fail(
        `tensor "${entry.name}" starts at byte ${entry.begin} of the data buffer, ` +
          `leaving unused bytes after byte ${expectedBegin}`,
      );
    }
    expectedBegin = entry.end;
  }
  if (expectedBegin !== dataLength) {
    fail(
      `${dataLength - expectedBegin} trailing bytes after the last tensor; ` +
        `the header accounts for ${expectedBegin} of ${dataLength} data bytes`,
    );
  }

  const tensors = new Map<string, StoredTensor>();
  for (const entry of entries) {
    const data = readFloat32LittleEndian(
      bytes,
      dataStart + entry.begin,
      (entry.end - entry.begin) / F32_BYTES,
    );
    tensors.set(entry.name, { shape: entry.shape, data });
  }
  return { tensors, metadata };
}

/** Returns the element count of a shape, or null when a dimension is not a non-negative integer. */
export function elementCount(shape: readonly unknown[]): number | null {
  let count = 1;
  for (const dimension of shape) {
    if (typeof dimension !== "number" || !Number.isSafeInteger(dimension) || dimension < 0) {
      return null;
    }
    count *= dimension;
  }
  return Number.isSafeInteger(count) ? count : null;
}

function parseHeader(
  headerBytes: Uint8Array,
  fail: (problem: string) => never,
): Record<string, unknown> {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(headerBytes);
  } catch {
    return fail("header is not valid UTF-8; the file is corrupted or not a safetensors file");
  }

  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (error) {
    return fail(
      `header is not valid JSON (${(error as Error).message}); ` +
        "the file is corrupted or not a safetensors file",
    );
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    return fail(`header must be a JSON object, got ${describeJsonValue(header)}`);
  }
  return header as Record<string, unknown>;
}

function parseMetadata(
  value: unknown,
  fail: (problem: string) => never,
): Record<string, string> {
  if (value === undefined) return {};
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return fail(`"${METADATA_KEY}" must be a JSON object, got ${describeJsonValue(value)}`);
  }
  const metadata: Record<string, string> = {};
  for (const [key, entry] of Object.entries(value)) {
    if (typeof entry !== "string") {
      return fail(
        `"${METADATA_KEY}" value for "${key}" must be a string, got ${describeJsonValue(entry)}`,
      );
    }
    metadata[key] = entry;
  }
  return metadata;
}

function parseTensorInfo(
  name: string,
  info: unknown,
  fail: (problem: string) => never,
): { shape: number[]; begin: number; end: number } {
  if (typeof info !== "object" || info === null || Array.isArray(info)) {
    return fail(
      `header entry for tensor "${name}" must be an object, got ${describeJsonValue(info)}`,
    );
  }
  const { dtype, shape, data_offsets: offsets } = info as Record<string, unknown>;

  if (dtype !== "F32") {
    return fail(
      `tensor "${name}" has unsupported dtype ${JSON.stringify(dtype)}; only F32 is supported`,
    );
  }

  const count = Array.isArray(shape) ? elementCount(shape) : null;
  if (count === null) {
    return fail(
      `tensor "${name}" has invalid shape ${JSON.stringify(shape)}; ` +
        "expected an array of non-negative integers",
    );
  }

  if (
    !Array.isArray(offsets) || offsets.length !== 2 ||
    !offsets.every((offset) => Number.isSafeInteger(offset) && offset >= 0)
  ) {
    return fail(
      `tensor "${name}" has invalid data_offsets ${JSON.stringify(offsets)}; ` +
        "expected [begin, end] as non-negative integers",
    );
  }
  const [begin, end] = offsets as number[];
  if (end < begin) {
    return fail(`tensor "${name}" has data_offsets [${begin}, ${end}] with end before begin`);
  }
  if (end - begin !== count * F32_BYTES) {
    return fail(
      `tensor "${name}" has shape ${JSON.stringify(shape)} (${count} F32 elements, ` +
        `${count * F32_BYTES} bytes) but data_offsets [${begin}, ${end}] span ${end - begin} bytes`,
    );
  }
  return { shape: shape as number[], begin, end };
}

function describeJsonValue(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  if (typeof value === "string") return `the string ${JSON.stringify(value)}`;
  if (typeof value === "object") return "an object";
  return `${typeof value} ${String(value)}`;
}

function writeFloat32LittleEndian(target: Uint8Array, offset: number, data: Float32Array): void {
  if (LITTLE_ENDIAN_HOST) {
    target.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), offset);
    return;
  }
  // On a big-endian host, copying the raw bits through a Uint32 view keeps
  // NaN payloads, which a float read and write could change.
  const bits = new Uint32Array(data.buffer, data.byteOffset, data.length);
  const view = new DataView(target.buffer, target.byteOffset + offset, data.byteLength);
  for (let i = 0; i < bits.length; i++) view.setUint32(i * F32_BYTES, bits[i], true);
}

function readFloat32LittleEndian(source: Uint8Array, offset: number, length: number): Float32Array {
  const data = new Float32Array(length);
  if (LITTLE_ENDIAN_HOST) {
    new Uint8Array(data.buffer).set(source.subarray(offset, offset + length * F32_BYTES));
    return data;
  }
  const bits = new Uint32Array(data.buffer);
  const view = new DataView(source.buffer, source.byteOffset + offset, length * F32_BYTES);
  for (let i = 0; i < length; i++) bits[i] = view.getUint32(i * F32_BYTES, true);
  return data;
}
