import assert from "node:assert/strict";
import { join } from "node:path";
import {
  CHECKPOINT_FORMAT,
  type CheckpointData,
  CheckpointError,
  checkpointPaths,
  float32FromJson,
  formatFloat32Json,
  latestCheckpoint,
  loadCheckpoint,
  saveCheckpoint,
  type StoredTensor,
} from "../lib/checkpoint.ts";
import { decodeSafetensors, encodeSafetensors } from "../lib/safetensors.ts";

// ---------------------------------------------------------------------------
// Helpers

/** Deterministic 32-bit generator (an LCG), so that failures reproduce. */
function makeRandomBits(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state;
  };
}

/** Builds a float32 tensor from raw bit patterns, so NaN payloads survive. */
function tensorFromBits(shape: number[], bits: number[]): StoredTensor {
  return { shape, data: new Float32Array(new Uint32Array(bits).buffer) };
}

function bitsOf(data: Float32Array): number[] {
  return Array.from(new Uint32Array(data.buffer, data.byteOffset, data.length));
}

function randomTensor(shape: number[], next: () => number): StoredTensor {
  const count = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(count);
  for (let i = 0; i < count; i++) data[i] = (next() / 2 ** 32 - 0.5) * 0.04;
  return { shape, data };
}

/** Random bit patterns over the whole float32 range, NaN excluded. */
function randomNonNanBits(count: number, next: () => number): number[] {
  const bits: number[] = [];
  while (bits.length < count) {
    const candidate = next();
    const isNan = (candidate & 0x7f800000) === 0x7f800000 && (candidate & 0x007fffff) !== 0;
    if (!isNan) bits.push(candidate);
  }
  return bits;
}

/** NaNs with payloads, a signalling NaN, infinities, -0, subnormals, max, 0.1f, -1. */
const SPECIAL_BITS = [
  0x7fc00000,
  0x7fc00001,
  0xffc00000,
  0x7f800001,
  0x7f800000,
  0xff800000,
  0x80000000,
  0x00000001,
  0x007fffff,
  0x7f7fffff,
  0x3dcccccd,
  0xbf800000,
];

/**
 * Asserts equal names, shapes and bits. `ignoreOrder` is for JSON checkpoints,
 * where JSON.parse moves integer-like tensor names to the front.
 */
function assertTensorsBitEqual(
  actual: Map<string, StoredTensor>,
  expected: Map<string, StoredTensor>,
  { ignoreOrder = false } = {},
): void {
  if (ignoreOrder) {
    assert.deepEqual([...actual.keys()].sort(), [...expected.keys()].sort(), "tensor names differ");
  } else {
    assert.deepEqual([...actual.keys()], [...expected.keys()], "tensor names or order differ");
  }
  for (const [name, tensor] of expected) {
    const loaded = actual.get(name)!;
    assert.deepEqual(loaded.shape, tensor.shape, `shape of "${name}"`);
    assert.ok(loaded.data instanceof Float32Array, `"${name}" is not a Float32Array`);
    assert.deepEqual(bitsOf(loaded.data), bitsOf(tensor.data), `bits of "${name}"`);
  }
}

/** Asserts that `action` fails with a CheckpointError for `file` whose message contains each phrase. */
async function assertCheckpointError(
  action: () => unknown,
  file: string,
  ...phrases: string[]
): Promise<void> {
  let error: unknown = null;
  try {
    await action();
  } catch (caught) {
    error = caught;
  }
  assert.ok(error !== null, "expected a CheckpointError, but nothing was thrown");
  assert.ok(error instanceof CheckpointError, `expected a CheckpointError, got ${error}`);
  assert.equal(error.file, file);
  assert.ok(
    error.message.startsWith(`${file}: `),
    `message does not start with the file name: ${error.message}`,
  );
  for (const phrase of phrases) {
    assert.ok(
      error.message.includes(phrase),
      `message ${JSON.stringify(error.message)} lacks ${JSON.stringify(phrase)}`,
    );
  }
}

function sampleCheckpoint(step: number): CheckpointData {
  const next = makeRandomBits(step + 1);
  return {
    step,
    meta: {
      config: { vocabSize: 65, blockSize: 16, layers: 2, heads: 2, embedding: 8 },
      tokenizer: { kind: "char", vocab: ["\n", " ", "a", "é", "😀"] },
      optimizer: { name: "adamw", beta1: 0.9, beta2: 0.95, step },
      schedule: { warmup: 100, maxLr: 3e-4 },
      rng: { state: "12345678901234567890" },
      data: { epoch: 0, position: 4096 },
      args: ["--steps", "1000"],
      metrics: [{ step, loss: 2.25 }],
    },
    tensors: new Map([
      ["wte", randomTensor([16, 8], next)],
      ["blocks.0.ln1.bias", randomTensor([8], next)],
      ["adam.m.wte", randomTensor([16, 8], next)],
      ["special", tensorFromBits([3, 4], SPECIAL_BITS)],
      ["scalar", tensorFromBits([], [0x40490fdb])],
      ["empty", { shape: [0, 8], data: new Float32Array(0) }],
      ["7", randomTensor([2], next)],
    ]),
  };
}

async function readJson(path: string): Promise<Record<string, unknown>> {
  return JSON.parse(await Deno.readTextFile(path));
}

async function sha256Hex(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

/** Replaces a weights file and updates its sidecar's size and checksum to match. */
async function replaceWeights(
  sidecarPath: string,
  weightsPath: string,
  bytes: Uint8Array<ArrayBuffer>,
): Promise<void> {
  await Deno.writeFile(weightsPath, bytes);
  const sidecar = await readJson(sidecarPath);
  sidecar.weights = {
    ...(sidecar.weights as object),
    bytes: bytes.length,
    sha256: await sha256Hex(bytes),
  };
  await Deno.writeTextFile(sidecarPath, JSON.stringify(sidecar));
}

/** Builds a safetensors file from a header string and a zero-filled data buffer. */
function rawSafetensors(header: string, dataBytes: number): Uint8Array<ArrayBuffer> {
  const headerBytes = new TextEncoder().encode(header);
  const bytes = new Uint8Array(8 + headerBytes.length + dataBytes);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  bytes.set(headerBytes, 8);
  return bytes;
}

// ---------------------------------------------------------------------------
// Safetensors encoding

Deno.test("safetensors round trip is bit-exact", () => {
  const next = makeRandomBits(7);
  const tensors = new Map<string, StoredTensor>([
    ["special", tensorFromBits([12], SPECIAL_BITS)],
    ["random", tensorFromBits([10, 100], randomNonNanBits(1000, next))],
    ["scalar", tensorFromBits([], [0x3f800000])],
    ["empty", { shape: [3, 0], data: new Float32Array(0) }],
    ["0", tensorFromBits([1], [0x40000000])],
  ]);
  const metadata = { format: "pt", note: "ünïcode" };

  const decoded = decodeSafetensors(encodeSafetensors(tensors, metadata), "round-trip");

  assertTensorsBitEqual(decoded.tensors, tensors);
  assert.deepEqual(decoded.metadata, metadata);
});

Deno.test("safetensors header is padded and ordered", () => {
  const tensors = new Map<string, StoredTensor>([
    ["b", tensorFromBits([3], [1, 2, 3])],
    ["a", tensorFromBits([1], [4])],
    ["0", tensorFromBits([2], [5, 6])],
  ]);
  const bytes = encodeSafetensors(tensors, { k: "v" });
  const headerLength = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  const headerText = new TextDecoder().decode(bytes.subarray(8, 8 + headerLength));

  assert.equal((8 + headerLength) % 8, 0, "data buffer does not start at a multiple of 8");
  assert.match(headerText, /^\{.*\} *$/);
  assert.equal(bytes.length, 8 + headerLength + 6 * 4);
  assert.ok(
    headerText.indexOf('"b"') < headerText.indexOf('"a"') &&
      headerText.indexOf('"a"') < headerText.indexOf('"0"'),
    `header keys are not in insertion order: ${headerText}`,
  );
  const header = JSON.parse(headerText);
  assert.deepEqual(header.__metadata__, { k: "v" });
  assert.deepEqual(header.b, { dtype: "F32", shape: [3], data_offsets: [0, 12] });
  assert.deepEqual(header.a, { dtype: "F32", shape: [1], data_offsets: [12, 16] });
  assert.deepEqual(header["0"], { dtype: "F32", shape: [2], data_offsets: [16, 24] });
  assert.deepEqual([...decodeSafetensors(bytes).tensors.keys()], ["b", "a", "0"]);
});

Deno.test("safetensors encoder rejects invalid input", () => {
  assert.throws(
    () => encodeSafetensors(new Map([["w", { shape: [2, 3], data: new Float32Array(5) }]])),
    (error: Error) => error instanceof RangeError && error.message.includes('"w"'),
  );
  assert.throws(
    () => encodeSafetensors(new Map([["w", { shape: [-1], data: new Float32Array(0) }]])),
    RangeError,
  );
  assert.throws(
    () => encodeSafetensors(new Map([["__metadata__", tensorFromBits([1], [0])]])),
    TypeError,
  );
  assert.throws(
    () => encodeSafetensors(new Map(), { step: 3 } as unknown as Record<string, string>),
    TypeError,
  );
});

Deno.test("safetensors decoder rejects malformed files", async (t) => {
  const source = "runs/x/model.safetensors";
  const valid = encodeSafetensors(new Map([["w", tensorFromBits([2], [1, 2])]]));
  const cases: { name: string; bytes: Uint8Array; phrases: string[] }[] = [
    {
      name: "file shorter than 8 bytes",
      bytes: new Uint8Array([1, 2, 3]),
      phrases: ["3 bytes", "shorter than the 8-byte header length"],
    },
    {
      // A zip file's magic read as a header length is about 67 million bytes.
      name: "wrong magic",
      bytes: new Uint8Array([0x50, 0x4b, 0x03, 0x04, 0, 0, 0, 0, 1, 2, 3, 4]),
      phrases: ["header length field says 67324752 bytes", "only 4 bytes follow"],
    },
    {
      name: "header length beyond the file",
      bytes: valid.slice(0, 20),
      phrases: ["header length field says", "truncated"],
    },
    {
      name: "header not JSON",
      bytes: rawSafetensors('{"w": {"dtype": "F32", ', 0),
      phrases: ["header is not valid JSON"],
    },
    {
      name: "header not UTF-8",
      bytes: rawSafetensors("\xff", 0).fill(0xff, 8),
      phrases: ["header is not valid UTF-8"],
    },
    {
      name: "header not an object",
      bytes: rawSafetensors("[1, 2]", 0),
      phrases: ["header must be a JSON object, got an array"],
    },
    {
      name: "unsupported dtype",
      bytes: rawSafetensors('{"w":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}', 4),
      phrases: ['tensor "w" has unsupported dtype "F16"', "only F32"],
    },
    {
      name: "shape and offsets disagree",
      bytes: rawSafetensors('{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}', 8),
      phrases: ['tensor "w" has shape [3]', "span 8 bytes"],
    },
    {
      name: "invalid shape",
      bytes: rawSafetensors('{"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}', 8),
      phrases: ['tensor "w" has invalid shape [-2]'],
    },
    {
      name: "invalid offsets",
      bytes: rawSafetensors('{"w":{"dtype":"F32","shape":[2],"data_offsets":[8]}}', 8),
      phrases: ['tensor "w" has invalid data_offsets [8]'],
    },
    {
      name: "offsets out of range",
      bytes: rawSafetensors('{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', 4),
      phrases: ['tensor "w" data_offsets [0, 8]', "past the end of the 4-byte data buffer"],
    },
    {
      name: "overlapping offsets",
      bytes: rawSafetensors(
        '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},' +
          '"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}',
        12,
      ),
      phrases: ['tensor "b"', "overlap the previous tensor, which ends at byte 8"],
    },
    {
      name: "gap between tensors",
      bytes: rawSafetensors(
        '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},' +
          '"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}',
        12,
      ),
      phrases: ['tensor "b" starts at byte 8', "unused bytes after byte 4"],
    },
    {
      name: "trailing bytes",
      bytes: rawSafetensors('{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', 12),
      phrases: ["8 trailing bytes after the last tensor"],
    },
    {
      name: "metadata value not a string",
      bytes: rawSafetensors('{"__metadata__":{"step":3}}', 0),
      phrases: ['"__metadata__" value for "step" must be a string'],
    },
  ];

  for (const testCase of cases) {
    await t.step(testCase.name, async () => {
      await assertCheckpointError(
        () => decodeSafetensors(testCase.bytes, source),
        source,
        ...testCase.phrases,
      );
    });
  }
});

Deno.test("safetensors decoder names unnamed bytes", async () => {
  await assertCheckpointError(() => decodeSafetensors(new Uint8Array(2)), "safetensors data");
});

// ---------------------------------------------------------------------------
// Python interoperability

/**
 * Python writer of a safetensors file from `[[name, { shape, bits }], ...]`,
 * where `bits` are the uint32 bit patterns of the float32 values. The spec is
 * a list because JSON.parse would move integer-like object keys to the front. It writes no
 * header padding, which the format allows, so the data buffer starts at an
 * unaligned offset.
 */
const PYTHON_WRITER = `
import json, struct, sys
import numpy as np

path, spec = sys.argv[1], json.loads(sys.argv[2])
header = {"__metadata__": {"writer": "numpy"}}
blobs = []
offset = 0
for name, tensor in spec:
    array = np.array(tensor["bits"], dtype="<u4").view("<f4").reshape(tensor["shape"])
    blob = array.tobytes()
    header[name] = {"dtype": "F32", "shape": tensor["shape"], "data_offsets": [offset, offset + len(blob)]}
    blobs.append(blob)
    offset += len(blob)
header_bytes = json.dumps(header).encode("utf-8")
with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(header_bytes)))
    f.write(header_bytes)
    for blob in blobs:
        f.write(blob)
`;

/**
 * Python reader that prints `{ metadata, dataStart, tensors }` as JSON, where
 * `tensors` lists `{ name, shape, bits }` in header order.
 */
const PYTHON_READER = `
import json, struct, sys
import numpy as np

with open(sys.argv[1], "rb") as f:
    data = f.read()
(header_length,) = struct.unpack("<Q", data[:8])
header = json.loads(data[8:8 + header_length].decode("utf-8"))
start = 8 + header_length
result = {"metadata": header.pop("__metadata__", {}), "tensors": [], "dataStart": start}
end_of_data = start
for name, info in header.items():
    assert info["dtype"] == "F32", info["dtype"]
    begin, end = info["data_offsets"]
    array = np.frombuffer(data[start + begin:start + end], dtype="<f4").reshape(info["shape"])
    bits = array.view("<u4").ravel().tolist()
    result["tensors"].append({"name": name, "shape": list(array.shape), "bits": bits})
    end_of_data = max(end_of_data, start + end)
assert end_of_data == len(data), "trailing bytes"
print(json.dumps(result))
`;

/** Tensors of `tests/fixtures/numpy_written.safetensors`, which PYTHON_WRITER wrote from this spec. */
const NUMPY_FIXTURE_SPEC: [string, { shape: number[]; bits: number[] }][] = [
  ["wte", {
    shape: [2, 3],
    bits: [0x3f000000, 0xbfa00000, 0x40400000, 0x3dcccccd, 0x1, 0x80000000],
  }],
  ["special", { shape: [4], bits: [0x7fc00001, 0x7f800000, 0xff800000, 0x7f7fffff] }],
  ["scale", { shape: [], bits: [0x40f00000] }],
  ["empty", { shape: [0, 4], bits: [] }],
  ["10", { shape: [1], bits: [0x3f800000] }],
];
const NUMPY_FIXTURE = new URL("./fixtures/numpy_written.safetensors", import.meta.url);

function fixtureTensors(): Map<string, StoredTensor> {
  return new Map(
    NUMPY_FIXTURE_SPEC.map(([name, t]) => [name, tensorFromBits(t.shape, t.bits)]),
  );
}

Deno.test("decoder reads the numpy-written fixture", async () => {
  const bytes = await Deno.readFile(NUMPY_FIXTURE);
  const decoded = decodeSafetensors(bytes, NUMPY_FIXTURE.pathname);

  assertTensorsBitEqual(decoded.tensors, fixtureTensors());
  assert.deepEqual(decoded.metadata, { writer: "numpy" });
});

/** Returns why Python interop cannot run here, or null when python3 imports numpy. */
async function findPythonProblem(): Promise<string | null> {
  try {
    const result = await new Deno.Command("python3", {
      args: ["-c", "import numpy"],
      stdout: "null",
      stderr: "piped",
    }).output();
    if (result.success) return null;
    return `python3 cannot import numpy: ${new TextDecoder().decode(result.stderr).trim()}`;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return "python3 was not found on PATH";
    return `python3 could not be started: ${(error as Error).message}`;
  }
}

async function runPython(script: string, args: string[]): Promise<string> {
  const result = await new Deno.Command("python3", {
    args: ["-c", script, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(result.stderr);
  assert.ok(result.success, `python3 exited with code ${result.code}: ${stderr}`);
  return new TextDecoder().decode(result.stdout);
}

const pythonProblem = await findPythonProblem();
if (pythonProblem !== null) {
  console.warn(`Skipping the Python interop tests: ${pythonProblem}`);
}

Deno.test({
  name: "numpy reads our safetensors",
  ignore: pythonProblem !== null,
  fn: async () => {
    const next = makeRandomBits(11);
    const tensors = new Map<string, StoredTensor>([
      ["special", tensorFromBits([3, 4], SPECIAL_BITS)],
      ["random", tensorFromBits([4, 5, 6], randomNonNanBits(120, next))],
      ["scalar", tensorFromBits([], [0xc0490fdb])],
      ["empty", { shape: [0], data: new Float32Array(0) }],
      ["3", tensorFromBits([2], [0x3f800000, 0x40000000])],
    ]);
    const dir = await Deno.makeTempDir();
    const path = join(dir, "ours.safetensors");
    await Deno.writeFile(path, encodeSafetensors(tensors, { writer: "rinzler" }));

    const result = JSON.parse(await runPython(PYTHON_READER, [path]));

    assert.deepEqual(result.metadata, { writer: "rinzler" });
    assert.equal(result.dataStart % 8, 0, "data buffer is not 8-byte aligned");
    const read: { name: string; shape: number[]; bits: number[] }[] = result.tensors;
    assert.deepEqual(read.map((entry) => entry.name), [...tensors.keys()]);
    for (const entry of read) {
      const tensor = tensors.get(entry.name)!;
      assert.deepEqual(entry.shape, tensor.shape, `shape of "${entry.name}"`);
      assert.deepEqual(entry.bits, bitsOf(tensor.data), `bits of "${entry.name}"`);
    }
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test({
  name: "decoder reads numpy safetensors",
  ignore: pythonProblem !== null,
  fn: async () => {
    const dir = await Deno.makeTempDir();
    const path = join(dir, "numpy.safetensors");

    await runPython(PYTHON_WRITER, [path, JSON.stringify(NUMPY_FIXTURE_SPEC)]);
    const bytes = await Deno.readFile(path);
    const decoded = decodeSafetensors(bytes, path);

    assertTensorsBitEqual(decoded.tensors, fixtureTensors());
    assert.deepEqual(decoded.metadata, { writer: "numpy" });
    assert.deepEqual(bytes, await Deno.readFile(NUMPY_FIXTURE), "fixture is out of date");
    await Deno.remove(dir, { recursive: true });
  },
});

// ---------------------------------------------------------------------------
// Checkpoints

Deno.test("checkpointPaths names the pair", () => {
  const paths = checkpointPaths("runs/a", 250);

  assert.equal(paths.sidecarPath, join("runs/a", "checkpoint_step250.json"));
  assert.equal(paths.weightsPath, join("runs/a", "checkpoint_step250.safetensors"));
  assert.throws(() => checkpointPaths("runs/a", -1), RangeError);
  assert.throws(() => checkpointPaths("runs/a", 1.5), RangeError);
});

Deno.test("safetensors checkpoint round trip is bit-exact", async () => {
  const dir = await Deno.makeTempDir();
  const data = sampleCheckpoint(120);

  const written = await saveCheckpoint(dir, data);

  const paths = checkpointPaths(dir, 120);
  assert.deepEqual(written, paths);
  const sidecar = await readJson(paths.sidecarPath);
  assert.deepEqual(Object.keys(sidecar), ["format", "version", "step", "weights", "meta"]);
  assert.equal(sidecar.format, CHECKPOINT_FORMAT);
  assert.equal(sidecar.version, 1);
  assert.equal(sidecar.step, 120);
  const weightsBytes = await Deno.readFile(paths.weightsPath);
  assert.deepEqual(sidecar.weights, {
    file: "checkpoint_step120.safetensors",
    bytes: weightsBytes.length,
    sha256: await sha256Hex(weightsBytes),
  });
  assert.deepEqual(sidecar.meta, data.meta);

  for (const path of [paths.sidecarPath, paths.weightsPath]) {
    const loaded = await loadCheckpoint(path);
    assert.equal(loaded.step, 120, `step loaded from ${path}`);
    assert.equal(loaded.sidecarPath, paths.sidecarPath);
    assert.deepEqual(loaded.meta, data.meta, `meta loaded from ${path}`);
    assertTensorsBitEqual(loaded.tensors, data.tensors);
  }
  assert.deepEqual(
    [...Deno.readDirSync(dir)].map((entry) => entry.name).sort(),
    ["checkpoint_step120.json", "checkpoint_step120.safetensors"],
    "temporary files were left behind",
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("json checkpoint round trip is bit-exact", async () => {
  const dir = await Deno.makeTempDir();
  const next = makeRandomBits(3);
  const nonNanSpecial = SPECIAL_BITS.filter((bits) =>
    !Number.isNaN(tensorFromBits([1], [bits]).data[0])
  );
  const data: CheckpointData = {
    step: 5,
    meta: { config: { layers: 1 }, note: "readable" },
    tensors: new Map([
      ["special", tensorFromBits([nonNanSpecial.length], nonNanSpecial)],
      ["random", tensorFromBits([50, 100], randomNonNanBits(5000, next))],
      ["point_one", tensorFromBits([1], [0x3dcccccd])],
      ["scalar", tensorFromBits([], [0x40490fdb])],
      ["empty", { shape: [0], data: new Float32Array(0) }],
    ]),
  };

  const written = await saveCheckpoint(dir, data, { format: "json" });

  const paths = checkpointPaths(dir, 5);
  assert.deepEqual(written, { sidecarPath: paths.sidecarPath, weightsPath: null });
  await assert.rejects(Deno.stat(paths.weightsPath), Deno.errors.NotFound);
  const sidecar = await readJson(paths.sidecarPath);
  assert.deepEqual(Object.keys(sidecar), ["format", "version", "step", "meta", "tensors"]);
  const inline = sidecar.tensors as Record<string, { shape: number[]; data: unknown[] }>;
  assert.deepEqual(inline.point_one, { shape: [1], data: [0.1] });
  assert.deepEqual(inline.special.data.slice(0, 3), ["Infinity", "-Infinity", -0]);

  const loaded = await loadCheckpoint(paths.sidecarPath);
  assert.equal(loaded.step, 5);
  assert.deepEqual(loaded.meta, data.meta);
  assertTensorsBitEqual(loaded.tensors, data.tensors);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("json checkpoint stores NaN as a string", async () => {
  const dir = await Deno.makeTempDir();
  const data: CheckpointData = {
    step: 1,
    meta: {},
    tensors: new Map([["w", tensorFromBits([2], [0x7fc00001, 0x3f800000])]]),
  };

  await saveCheckpoint(dir, data, { format: "json" });

  const sidecarPath = checkpointPaths(dir, 1).sidecarPath;
  const sidecar = await readJson(sidecarPath);
  assert.deepEqual((sidecar.tensors as Record<string, unknown>).w, {
    shape: [2],
    data: ["NaN", 1],
  });
  const loaded = await loadCheckpoint(sidecarPath);
  const values = loaded.tensors.get("w")!.data;
  assert.ok(Number.isNaN(values[0]), `expected NaN, got ${values[0]}`);
  assert.equal(values[1], 1);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("float32 JSON encoding is short and exact", () => {
  assert.equal(formatFloat32Json(Math.fround(0.1)), "0.1");
  assert.equal(formatFloat32Json(1.5), "1.5");
  assert.equal(formatFloat32Json(-0), "-0.0");
  assert.equal(formatFloat32Json(NaN), '"NaN"');
  assert.equal(formatFloat32Json(Infinity), '"Infinity"');
  assert.equal(formatFloat32Json(-Infinity), '"-Infinity"');
  const maxFloat32 = tensorFromBits([1], [0x7f7fffff]).data[0];
  assert.equal(formatFloat32Json(maxFloat32), "3.4028235e+38");
  const minSubnormal = tensorFromBits([1], [0x00000001]).data[0];
  assert.equal(formatFloat32Json(minSubnormal), "1e-45");
  assert.ok(Object.is(float32FromJson(-0), -0));
  assert.equal(float32FromJson(0.1), Math.fround(0.1));
  assert.equal(float32FromJson("nan"), null);
  assert.equal(float32FromJson(null), null);
});

Deno.test("json save removes the same step's weights file", async () => {
  const dir = await Deno.makeTempDir();
  const paths = checkpointPaths(dir, 9);
  const data = sampleCheckpoint(9);
  // JSON keeps NaN but not its payload bits, so the NaN tensor is left out.
  data.tensors.delete("special");
  await saveCheckpoint(dir, data);

  await saveCheckpoint(dir, data, { format: "json" });

  await assert.rejects(Deno.stat(paths.weightsPath), Deno.errors.NotFound);
  const loaded = await loadCheckpoint(paths.sidecarPath);
  assertTensorsBitEqual(loaded.tensors, data.tensors, { ignoreOrder: true });
  await Deno.remove(dir, { recursive: true });
});

Deno.test("save replaces the same step", async () => {
  const dir = await Deno.makeTempDir();
  const first = sampleCheckpoint(4);
  const second = sampleCheckpoint(5);
  second.step = 4;

  await saveCheckpoint(dir, first);
  await saveCheckpoint(dir, second);

  const loaded = await loadCheckpoint(checkpointPaths(dir, 4).sidecarPath);
  assert.deepEqual(loaded.meta, second.meta);
  assertTensorsBitEqual(loaded.tensors, second.tensors);
  assert.deepEqual(
    [...Deno.readDirSync(dir)].map((entry) => entry.name).sort(),
    ["checkpoint_step4.json", "checkpoint_step4.safetensors"],
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("saveCheckpoint rejects invalid input before writing", async () => {
  const dir = join(await Deno.makeTempDir(), "run");
  const badShape: CheckpointData = {
    step: 1,
    meta: {},
    tensors: new Map([["w", { shape: [2, 2], data: new Float32Array(3) }]]),
  };

  await assert.rejects(saveCheckpoint(dir, badShape), RangeError);
  await assert.rejects(saveCheckpoint(dir, badShape, { format: "json" }), RangeError);
  await assert.rejects(
    saveCheckpoint(dir, { ...sampleCheckpoint(1), meta: { seed: 1n } }),
    TypeError,
  );
  await assert.rejects(saveCheckpoint(dir, sampleCheckpoint(-1)), RangeError);

  await assert.rejects(Deno.stat(dir), Deno.errors.NotFound, "a failed save created the folder");
  await Deno.remove(join(dir, ".."), { recursive: true });
});

Deno.test("loadCheckpoint rejects damaged checkpoints", async (t) => {
  const dir = await Deno.makeTempDir();
  const data = sampleCheckpoint(40);

  /** Saves a fresh checkpoint in its own folder and returns its paths. */
  async function fresh(name: string): Promise<{ sidecarPath: string; weightsPath: string }> {
    const folder = join(dir, name);
    await saveCheckpoint(folder, data);
    return checkpointPaths(folder, 40);
  }

  await t.step("not a checkpoint file name", async () => {
    const path = join(dir, "model.bin");
    await assertCheckpointError(() => loadCheckpoint(path), path, "not a checkpoint file");
  });

  await t.step("missing sidecar", async () => {
    const path = join(dir, "checkpoint_step1.json");
    await assertCheckpointError(() => loadCheckpoint(path), path, "file not found");
  });

  await t.step("missing sidecar of a weights file", async () => {
    const { sidecarPath, weightsPath } = await fresh("no-sidecar");
    await Deno.remove(sidecarPath);
    await assertCheckpointError(
      () => loadCheckpoint(weightsPath),
      sidecarPath,
      `sidecar not found for the weights file ${weightsPath}`,
      "load an earlier checkpoint",
    );
  });

  await t.step("sidecar is a directory", async () => {
    const path = join(dir, "folder.json");
    await Deno.mkdir(path);
    await assertCheckpointError(() => loadCheckpoint(path), path, "is a directory");
  });

  await t.step("empty sidecar", async () => {
    const { sidecarPath } = await fresh("empty-sidecar");
    await Deno.writeTextFile(sidecarPath, "");
    await assertCheckpointError(() => loadCheckpoint(sidecarPath), sidecarPath, "sidecar is empty");
  });

  await t.step("truncated sidecar JSON", async () => {
    const { sidecarPath } = await fresh("truncated-sidecar");
    const text = await Deno.readTextFile(sidecarPath);
    await Deno.writeTextFile(sidecarPath, text.slice(0, text.length / 2));
    await assertCheckpointError(
      () => loadCheckpoint(sidecarPath),
      sidecarPath,
      "sidecar is not valid JSON",
      "truncated or corrupted",
    );
  });

  await t.step("sidecar not UTF-8", async () => {
    const { sidecarPath } = await fresh("latin1-sidecar");
    await Deno.writeFile(sidecarPath, new Uint8Array([0x7b, 0xff, 0x7d]));
    await assertCheckpointError(
      () => loadCheckpoint(sidecarPath),
      sidecarPath,
      "sidecar is not valid UTF-8",
    );
  });

  await t.step("sidecar not an object", async () => {
    const { sidecarPath } = await fresh("array-sidecar");
    await Deno.writeTextFile(sidecarPath, "[]");
    await assertCheckpointError(
      () => loadCheckpoint(sidecarPath),
      sidecarPath,
      "sidecar must contain a JSON object",
    );
  });

  await t.step("wrong format name", async () => {
    const { sidecarPath } = await fresh("wrong-format");
    const sidecar = await readJson(sidecarPath);
    await Deno.writeTextFile(sidecarPath, JSON.stringify({ ...sidecar, format: "other" }));
    await assertCheckpointError(
      () => loadCheckpoint(sidecarPath),
      sidecarPath,
      'not a Rinzler checkpoint: "format" is "other"',
    );
  });

  await t.step("unsupported version", async () => {
    const { sidecarPath } = await fresh("version-2");
    const sidecar = await readJson(sidecarPath);
    await Deno.writeTextFile(sidecarPath, JSON.stringify({ ...sidecar, version: 2 }));
    await assertCheckpointError(
      () => loadCheckpoint(sidecarPath),
      sidecarPath,
      "unsupported checkpoint version 2",
      "reads version 1",
      "upgrade",
    );
  });

  await t.step("invalid weights record", async () => {
    const { sidecarPath } = await fresh("bad-record");
    const sidecar = await readJson(sidecarPath);
    const weights = { ...(sidecar.weights as object), file: "../elsewhere.safetensors" };
    await Deno.writeTextFile(sidecarPath, JSON.stringify({ ...sidecar, weights }));
    await assertCheckpointError(
      () => loadCheckpoint(sidecarPath),
      sidecarPath,
      '"weights.file" must be a file name',
    );
  });

  await t.step("missing weights file", async () => {
    const { sidecarPath, weightsPath } = await fresh("no-weights");
    await Deno.remove(weightsPath);
    await assertCheckpointError(
      () => loadCheckpoint(sidecarPath),
      weightsPath,
      "file not found",
      `the sidecar ${sidecarPath} refers to it`,
    );
  });

  await t.step("truncated weights file", async () => {
    const { sidecarPath, weightsPath } = await fresh("truncated-weights");
    const bytes = await Deno.readFile(weightsPath);
    await Deno.writeFile(weightsPath, bytes.slice(0, bytes.length - 4));
    await assertCheckpointError(
      () => loadCheckpoint(sidecarPath),
      weightsPath,
      `size mismatch: the file is ${bytes.length - 4} bytes`,
      `records ${bytes.length} bytes, so it is truncated`,
    );
  });

  await t.step("weights file larger than recorded", async () => {
    const { weightsPath } = await fresh("long-weights");
    const bytes = await Deno.readFile(weightsPath);
    await Deno.writeFile(weightsPath, new Uint8Array([...bytes, 0, 0, 0, 0]));
    await assertCheckpointError(
      () => loadCheckpoint(weightsPath),
      weightsPath,
      "size mismatch",
      "larger than recorded",
    );
  });

  await t.step("one flipped byte fails the checksum", async () => {
    const { sidecarPath, weightsPath } = await fresh("flipped-byte");
    const bytes = await Deno.readFile(weightsPath);
    bytes[bytes.length - 10] ^= 0x01;
    await Deno.writeFile(weightsPath, bytes);
    await assertCheckpointError(
      () => loadCheckpoint(sidecarPath),
      weightsPath,
      "SHA-256 checksum mismatch",
      `the sidecar ${sidecarPath} records`,
    );
  });

  await t.step("weights with a wrong magic number", async () => {
    const { sidecarPath, weightsPath } = await fresh("wrong-magic");
    const bytes = await Deno.readFile(weightsPath);
    bytes.set([0x50, 0x4b, 0x03, 0x04, 0xff, 0xff, 0xff, 0xff], 0);
    await replaceWeights(sidecarPath, weightsPath, bytes);
    await assertCheckpointError(
      () => loadCheckpoint(sidecarPath),
      weightsPath,
      "header length field says",
      "not a safetensors file",
    );
  });

  await t.step("weights header not JSON", async () => {
    const { sidecarPath, weightsPath } = await fresh("bad-header");
    const bytes = await Deno.readFile(weightsPath);
    bytes[8] = "[".charCodeAt(0);
    bytes[9] = "}".charCodeAt(0);
    await replaceWeights(sidecarPath, weightsPath, bytes);
    await assertCheckpointError(
      () => loadCheckpoint(sidecarPath),
      weightsPath,
      "header is not valid JSON",
    );
  });

  await t.step("weights data truncated with a matching sidecar", async () => {
    const { sidecarPath, weightsPath } = await fresh("short-data");
    const bytes = await Deno.readFile(weightsPath);
    await replaceWeights(sidecarPath, weightsPath, bytes.slice(0, bytes.length - 4));
    await assertCheckpointError(
      () => loadCheckpoint(sidecarPath),
      weightsPath,
      "run past the end",
      "the file is truncated",
    );
  });

  await t.step("weights file from another checkpoint", async () => {
    const { sidecarPath } = await fresh("other-weights");
    const otherPath = join(dir, "other-weights", "renamed.safetensors");
    await Deno.copyFile(sidecarPath, join(dir, "other-weights", "renamed.json"));
    await Deno.writeFile(otherPath, new Uint8Array(8));
    await assertCheckpointError(
      () => loadCheckpoint(otherPath),
      otherPath,
      'refers to the weights file "checkpoint_step40.safetensors", not this file',
    );
  });

  await t.step("json tensor data length does not match its shape", async () => {
    const folder = join(dir, "json-length");
    await saveCheckpoint(folder, data, { format: "json" });
    const sidecarPath = checkpointPaths(folder, 40).sidecarPath;
    const sidecar = await readJson(sidecarPath);
    const inline = sidecar.tensors as Record<string, { shape: number[]; data: unknown[] }>;
    inline.wte.data.pop();
    await Deno.writeTextFile(sidecarPath, JSON.stringify(sidecar));
    await assertCheckpointError(
      () => loadCheckpoint(sidecarPath),
      sidecarPath,
      'tensor "wte" has 127 data values but shape [16,8] needs 128',
    );
  });

  await t.step("json tensor value not a number", async () => {
    const folder = join(dir, "json-value");
    await saveCheckpoint(folder, data, { format: "json" });
    const sidecarPath = checkpointPaths(folder, 40).sidecarPath;
    const sidecar = await readJson(sidecarPath);
    const inline = sidecar.tensors as Record<string, { shape: number[]; data: unknown[] }>;
    inline.wte.data[3] = "nan";
    await Deno.writeTextFile(sidecarPath, JSON.stringify(sidecar));
    await assertCheckpointError(
      () => loadCheckpoint(sidecarPath),
      sidecarPath,
      'tensor "wte" data[3] is "nan"',
    );
  });

  await t.step("json checkpoint loaded through a weights path", async () => {
    const folder = join(dir, "json-via-weights");
    await saveCheckpoint(folder, data, { format: "json" });
    const { sidecarPath, weightsPath } = checkpointPaths(folder, 40);
    await Deno.writeFile(weightsPath, new Uint8Array(8));
    await assertCheckpointError(
      () => loadCheckpoint(weightsPath),
      weightsPath,
      `the sidecar ${sidecarPath} stores its tensors inline`,
    );
  });

  await Deno.remove(dir, { recursive: true });
});

Deno.test("interrupted save leaves previous checkpoint loadable", async () => {
  const dir = await Deno.makeTempDir();
  const previous = sampleCheckpoint(100);
  await saveCheckpoint(dir, previous);
  const next = checkpointPaths(dir, 200);
  const full = encodeSafetensors(sampleCheckpoint(200).tensors);

  // Killed while writing the weights: only a partial temporary file exists.
  await Deno.writeFile(`${next.weightsPath}.tmp-1234`, full.slice(0, 100));
  const latestAfterWeightsKill = await latestCheckpoint(dir);
  // Killed after the weights rename, while writing the sidecar.
  await Deno.writeFile(next.weightsPath, full);
  await Deno.writeTextFile(`${next.sidecarPath}.tmp-5678`, '{"format": "rinzler-checkp');
  const latestAfterSidecarKill = await latestCheckpoint(dir);

  const previousPath = checkpointPaths(dir, 100).sidecarPath;
  assert.equal(latestAfterWeightsKill, previousPath);
  assert.equal(latestAfterSidecarKill, previousPath);
  const loaded = await loadCheckpoint(previousPath);
  assert.equal(loaded.step, 100);
  assert.deepEqual(loaded.meta, previous.meta);
  assertTensorsBitEqual(loaded.tensors, previous.tensors);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("latestCheckpoint picks highest usable step", async () => {
  const root = await Deno.makeTempDir();
  const dir = join(root, "run");
  assert.equal(await latestCheckpoint(dir), null, "missing folder");
  await Deno.mkdir(dir);
  assert.equal(await latestCheckpoint(dir), null, "empty folder");

  for (const step of [2, 9, 10]) await saveCheckpoint(dir, sampleCheckpoint(step));
  await saveCheckpoint(dir, sampleCheckpoint(3), { format: "json" });
  assert.equal(await latestCheckpoint(dir), checkpointPaths(dir, 10).sidecarPath);

  // Step 11 has a corrupted sidecar and step 12 lost its weights file.
  await Deno.writeTextFile(checkpointPaths(dir, 11).sidecarPath, "{");
  await saveCheckpoint(dir, sampleCheckpoint(12));
  await Deno.remove(checkpointPaths(dir, 12).weightsPath);
  const skipped: string[] = [];

  const latest = await latestCheckpoint(dir, (error) => skipped.push(error.file));

  assert.equal(latest, checkpointPaths(dir, 10).sidecarPath);
  assert.deepEqual(skipped, [
    checkpointPaths(dir, 12).weightsPath,
    checkpointPaths(dir, 11).sidecarPath,
  ]);
  await saveCheckpoint(dir, sampleCheckpoint(20), { format: "json" });
  assert.equal(await latestCheckpoint(dir, () => {}), checkpointPaths(dir, 20).sidecarPath);
  await Deno.remove(root, { recursive: true });
});
