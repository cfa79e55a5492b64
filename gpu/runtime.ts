/**
 * The small runtime under the WebGPU kernels: views into buffers, a pool of
 * named buffers sized once, recorded plans of dispatches, uniform packing and
 * transfers between the host and the GPU.
 *
 * A `Plan` is the GPU analogue of an llm.c training step written out in
 * full: every dispatch with its pipeline, bind group and uniform values is
 * created once, when the plan is recorded, and running the plan only encodes
 * those dispatches into one command buffer. Nothing is allocated per op.
 *
 * @module
 */

/** Bytes of one `f32`, `i32` or `u32` element. */
const ELEMENT_BYTES = 4;

/**
 * Elements that every pool buffer and packed tensor starts on a multiple of.
 * 64 elements are 256 bytes, WebGPU's default `minStorageBufferOffsetAlignment`.
 */
export const VIEW_ALIGNMENT = 64;

/** A range of 4-byte elements inside a GPU buffer. `offset` and `length` count elements, not bytes. */
export interface GpuView {
  /** The buffer the range lies in. */
  buffer: GPUBuffer;
  /** First element of the range. */
  offset: number;
  /** Number of elements in the range. */
  length: number;
}

/** Usage of every pool buffer: bound as storage, written by the host and read back. */
export const STORAGE_USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC |
  GPUBufferUsage.COPY_DST;

/** Returns `n` rounded up to a multiple of `alignment`. */
export function alignUp(n: number, alignment: number): number {
  return Math.ceil(n / alignment) * alignment;
}

/** Returns a view of `length` elements of `buffer`, starting at element `offset`. */
export function viewOf(buffer: GPUBuffer, offset = 0, length?: number): GpuView {
  const capacity = buffer.size / ELEMENT_BYTES - offset;
  const size = length ?? capacity;
  if (!Number.isInteger(offset) || offset < 0 || size < 0 || size > capacity) {
    throw new RangeError(
      `invalid view: offset ${offset}, length ${size} in a buffer of ${buffer.size / 4} elements`,
    );
  }
  return { buffer, offset, length: size };
}

/** Returns the sub-range `[start, start + length)` of a view. */
export function slice(view: GpuView, start: number, length: number): GpuView {
  if (start < 0 || length < 0 || start + length > view.length) {
    throw new RangeError(
      `invalid slice [${start}, ${start + length}) of a view of ${view.length} elements`,
    );
  }
  return { buffer: view.buffer, offset: view.offset + start, length };
}

/** Returns the WebGPU binding of a view. WebGPU rejects an offset that is not 256-byte aligned. */
function bindingOf(view: GpuView): GPUBufferBinding {
  return {
    buffer: view.buffer,
    offset: view.offset * ELEMENT_BYTES,
    // A binding may not be empty, so an empty view binds one element.
    size: Math.max(view.length, 1) * ELEMENT_BYTES,
  };
}

// ---------------------------------------------------------------------------
// The buffer pool.

/**
 * GPU buffers by name, each created on first request and reused afterwards.
 * A trainer requests all of its buffers while it lays out a model shape, so a
 * training step allocates nothing.
 */
export class BufferPool {
  /** The device the buffers are created on. */
  readonly device: GPUDevice;
  readonly #buffers = new Map<string, GPUBuffer>();

  /** Creates an empty pool on `device`. */
  constructor(device: GPUDevice) {
    this.device = device;
  }

  /**
   * Returns a view of the first `length` elements of the buffer `name`,
   * creating the buffer on the first request.
   *
   * @throws RangeError when the buffer exists with fewer than `length` elements.
   */
  view(name: string, length: number): GpuView {
    if (!Number.isInteger(length) || length < 0) {
      throw new RangeError(`invalid length ${length} for buffer "${name}"`);
    }
    let buffer = this.#buffers.get(name);
    if (buffer === undefined) {
      const bytes = alignUp(Math.max(length, 1), VIEW_ALIGNMENT) * ELEMENT_BYTES;
      const limit = this.device.limits.maxBufferSize;
      if (bytes > limit) {
        throw new RangeError(
          `buffer "${name}" needs ${bytes} bytes but this adapter's maxBufferSize is ${limit}; ` +
            "use a smaller batch, context or model",
        );
      }
      buffer = this.device.createBuffer({ label: name, size: bytes, usage: STORAGE_USAGE });
      this.#buffers.set(name, buffer);
    } else if (length * ELEMENT_BYTES > buffer.size) {
      throw new RangeError(
        `buffer "${name}" contains ${buffer.size / ELEMENT_BYTES} elements, ${length} requested`,
      );
    }
    return { buffer, offset: 0, length };
  }

  /** Total bytes of all buffers in the pool. */
  get bytes(): number {
    let total = 0;
    for (const buffer of this.#buffers.values()) total += buffer.size;
    return total;
  }

  /** Destroys every buffer of the pool. */
  destroy(): void {
    for (const buffer of this.#buffers.values()) buffer.destroy();
    this.#buffers.clear();
  }
}

// ---------------------------------------------------------------------------
// Uniforms.

/**
 * Packs the values of a WGSL uniform struct whose members are all 4-byte
 * scalars (`u32` or `f32`), in declaration order. The size is padded to
 * 16 bytes, as the uniform address space requires.
 */
export class UniformWriter {
  readonly #values: { type: "u32" | "f32"; value: number }[] = [];

  /** Appends a `u32` member. */
  u32(value: number): this {
    if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
      throw new RangeError(`uniform value ${value} is not a u32`);
    }
    this.#values.push({ type: "u32", value });
    return this;
  }

  /** Appends an `f32` member. */
  f32(value: number): this {
    this.#values.push({ type: "f32", value });
    return this;
  }

  /** Returns the packed bytes. */
  bytes(): ArrayBuffer {
    const data = new ArrayBuffer(alignUp(Math.max(this.#values.length, 1) * 4, 16));
    const view = new DataView(data);
    this.#values.forEach(({ type, value }, index) => {
      if (type === "u32") view.setUint32(index * 4, value, true);
      else view.setFloat32(index * 4, value, true);
    });
    return data;
  }
}

// ---------------------------------------------------------------------------
// Plans.

/** One recorded command: a compute dispatch or a buffer fill with zeros. */
type PlanCommand =
  | {
    kind: "dispatch";
    label: string;
    pipeline: GPUComputePipeline;
    bindGroup: GPUBindGroup;
    workgroups: [number, number, number];
  }
  | { kind: "clear"; view: GpuView };

/** A resource bound to a kernel: a storage view or a whole uniform buffer. */
export type Binding = GpuView | GPUBuffer;

/**
 * A recorded sequence of dispatches. Recording creates each dispatch's bind
 * group and uniform buffer once; `encode` only replays them. Dispatches in
 * one compute pass run in order, and WebGPU makes each dispatch's writes
 * visible to the next, so a plan needs no explicit barriers.
 */
export class Plan {
  /** The device the plan's dispatches run on. */
  readonly device: GPUDevice;
  readonly #commands: PlanCommand[] = [];
  readonly #uniforms: GPUBuffer[] = [];

  /** Creates an empty plan on `device`. */
  constructor(device: GPUDevice) {
    this.device = device;
  }

  /** Number of recorded commands. */
  get length(): number {
    return this.#commands.length;
  }

  /** Returns a uniform buffer holding `data` that lives as long as the plan. */
  uniform(data: ArrayBuffer): GPUBuffer {
    const buffer = this.device.createBuffer({
      size: data.byteLength,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
    this.device.queue.writeBuffer(buffer, 0, data);
    this.#uniforms.push(buffer);
    return buffer;
  }

  /** Records a dispatch of `pipeline` over `workgroups`, binding `bindings` to 0, 1, 2, … of group 0. */
  dispatch(
    label: string,
    pipeline: GPUComputePipeline,
    bindings: Binding[],
    workgroups: [number, number, number],
  ): void {
    const maxGroups = this.device.limits.maxComputeWorkgroupsPerDimension;
    if (workgroups.some((count) => count > maxGroups)) {
      throw new RangeError(
        `${label}: ${workgroups.join(" × ")} workgroups exceed this adapter's limit of ` +
          `${maxGroups} per dimension`,
      );
    }
    if (workgroups.some((count) => count === 0)) return;
    const maxBinding = this.device.limits.maxStorageBufferBindingSize;
    for (const resource of bindings) {
      if (!(resource instanceof GPUBuffer) && resource.length * ELEMENT_BYTES > maxBinding) {
        throw new RangeError(
          `${label}: a binding of ${resource.length * ELEMENT_BYTES} bytes exceeds this ` +
            `adapter's maxStorageBufferBindingSize of ${maxBinding}; use a smaller batch or context`,
        );
      }
    }

    const bindGroup = this.device.createBindGroup({
      label,
      layout: pipeline.getBindGroupLayout(0),
      entries: bindings.map((resource, binding) => ({
        binding,
        resource: resource instanceof GPUBuffer ? { buffer: resource } : bindingOf(resource),
      })),
    });
    this.#commands.push({ kind: "dispatch", label, pipeline, bindGroup, workgroups });
  }

  /** Records filling a view with zeros. */
  clear(view: GpuView): void {
    if (view.length > 0) this.#commands.push({ kind: "clear", view });
  }

  /** Encodes every recorded command, in order, into `encoder`. */
  encode(encoder: GPUCommandEncoder): void {
    let pass: GPUComputePassEncoder | null = null;
    for (const command of this.#commands) {
      if (command.kind === "clear") {
        pass?.end();
        pass = null;
        const { view } = command;
        encoder.clearBuffer(view.buffer, view.offset * ELEMENT_BYTES, view.length * ELEMENT_BYTES);
        continue;
      }
      pass ??= encoder.beginComputePass();
      pass.setPipeline(command.pipeline);
      pass.setBindGroup(0, command.bindGroup);
      pass.dispatchWorkgroups(...command.workgroups);
    }
    pass?.end();
  }

  /** Encodes the plan into its own command buffer and submits it. */
  submit(): void {
    const encoder = this.device.createCommandEncoder();
    this.encode(encoder);
    this.device.queue.submit([encoder.finish()]);
  }

  /** Destroys the plan's uniform buffers. */
  destroy(): void {
    for (const buffer of this.#uniforms) buffer.destroy();
    this.#uniforms.length = 0;
    this.#commands.length = 0;
  }
}

// ---------------------------------------------------------------------------
// Errors and transfers.

/**
 * Runs `fn` inside WebGPU validation and out-of-memory error scopes and
 * throws the first error either scope caught, prefixed with `operation`.
 */
export async function checkErrors<T>(
  device: GPUDevice,
  operation: string,
  fn: () => T | Promise<T>,
): Promise<T> {
  device.pushErrorScope("out-of-memory");
  device.pushErrorScope("validation");
  let outcome: { ok: true; value: T } | { ok: false; error: unknown };
  try {
    outcome = { ok: true, value: await fn() };
  } catch (error) {
    outcome = { ok: false, error };
  }

  // The scopes must be popped even when fn threw, and a GPU error explains
  // more than the host-side failure it usually causes.
  const validation = await device.popErrorScope();
  const memory = await device.popErrorScope();
  const gpuError = validation ?? memory;
  if (gpuError !== null) throw new Error(`${operation} failed on the GPU: ${gpuError.message}`);
  if (!outcome.ok) throw outcome.error;
  return outcome.value;
}

/** Copies `data` into the start of `view`. */
export function upload(
  device: GPUDevice,
  view: GpuView,
  data: Float32Array | Int32Array | Uint32Array,
): void {
  if (data.length > view.length) {
    throw new RangeError(`cannot upload ${data.length} elements into a view of ${view.length}`);
  }
  // A typed array's dataOffset and size count elements; the cast only widens
  // the ArrayBufferLike typing, since writeBuffer copies the data at once.
  device.queue.writeBuffer(
    view.buffer,
    view.offset * ELEMENT_BYTES,
    data as ArrayBufferView<ArrayBuffer>,
    0,
    data.length,
  );
}

/**
 * Reads views back to the host after all submitted work finished. One
 * staging buffer and one map operation serve all views together.
 */
export async function downloadAll(device: GPUDevice, views: GpuView[]): Promise<Float32Array[]> {
  const offsets: number[] = [];
  let total = 0;
  for (const view of views) {
    offsets.push(total);
    total += alignUp(view.length, VIEW_ALIGNMENT);
  }
  const staging = device.createBuffer({
    size: Math.max(total, 1) * ELEMENT_BYTES,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  try {
    const encoder = device.createCommandEncoder();
    views.forEach((view, index) => {
      if (view.length === 0) return;
      encoder.copyBufferToBuffer(
        view.buffer,
        view.offset * ELEMENT_BYTES,
        staging,
        offsets[index] * ELEMENT_BYTES,
        view.length * ELEMENT_BYTES,
      );
    });
    device.queue.submit([encoder.finish()]);
    await staging.mapAsync(GPUMapMode.READ);
    const mapped = new Float32Array(staging.getMappedRange());
    const result = views.map((view, index) =>
      mapped.slice(offsets[index], offsets[index] + view.length)
    );
    staging.unmap();
    return result;
  } finally {
    staging.destroy();
  }
}

/** Reads one view back to the host. */
export async function download(device: GPUDevice, view: GpuView): Promise<Float32Array> {
  const [data] = await downloadAll(device, [view]);
  return data;
}
