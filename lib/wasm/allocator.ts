/**
 * A size-class allocator over one shared `WebAssembly.Memory`.
 *
 * Blocks are carved from the end of the used region (bump allocation) and,
 * once freed, kept on a free list per size class. A training step that
 * allocates and frees the same shapes every step therefore reuses the same
 * blocks and the memory stops growing after the first step. Freed blocks are
 * never merged or returned to the system.
 *
 * Growing a shared memory never detaches existing views: they keep pointing
 * at the same bytes, and `memory.buffer` returns a new, longer
 * `SharedArrayBuffer`. The allocator remembers every buffer object it has
 * seen so that it can tell views of this memory from other arrays.
 *
 * @module
 */

const PAGE_BYTES = 65536;
/** wasm32 addresses 2^16 pages of 64 KiB: 4 GiB. */
export const MAX_PAGES = 65536;
/** Block alignment and smallest block: one cache line. */
const ALIGN = 64;
/** Blocks up to this size come in multiples of ALIGN; larger ones in steps of 1/4 of a power of two. */
const LINEAR_CLASS_LIMIT = 4096;

/** Returns the block size used for a request of `bytes` bytes. */
export function sizeClass(bytes: number): number {
  if (bytes <= LINEAR_CLASS_LIMIT) return Math.max(ALIGN, Math.ceil(bytes / ALIGN) * ALIGN);
  // Four classes per power of two, so a block wastes less than 25 %.
  const quarter = 2 ** (Math.floor(Math.log2(bytes - 1)) - 2);
  return Math.ceil(bytes / quarter) * quarter;
}

/** Size-class allocator of byte ranges in a shared `WebAssembly.Memory`. */
export class SharedMemoryAllocator {
  /** The memory the blocks are carved from. */
  readonly memory: WebAssembly.Memory;
  #top: number;
  readonly #freeLists = new Map<number, number[]>();
  /** Block size of every live block, by byte offset. */
  readonly #live = new Map<number, number>();
  readonly #buffers = new WeakSet<ArrayBufferLike>();
  #bytesInUse = 0;

  /** `start` is the first byte the allocator may hand out; bytes below it stay reserved. */
  constructor(memory: WebAssembly.Memory, start: number) {
    this.memory = memory;
    this.#top = Math.ceil(start / ALIGN) * ALIGN;
    this.#buffers.add(memory.buffer);
  }

  /** Bytes in live blocks, counted by block size. */
  get bytesInUse(): number {
    return this.#bytesInUse;
  }

  /** Bytes of the memory, used or not. */
  get bytesReserved(): number {
    return this.memory.buffer.byteLength;
  }

  /** Returns whether `array` is a view of this memory. */
  owns(array: ArrayBufferView): boolean {
    return this.#buffers.has(array.buffer);
  }

  /** Returns the byte offset of a block of at least `bytes` bytes; the contents are undefined. */
  allocate(bytes: number): number {
    if (!Number.isSafeInteger(bytes) || bytes < 0) {
      throw new RangeError(`invalid allocation size ${bytes}: expected a non-negative integer`);
    }
    const size = sizeClass(bytes);
    const offset = this.#freeLists.get(size)?.pop() ?? this.#carve(size);
    this.#live.set(offset, size);
    this.#bytesInUse += size;
    return offset;
  }

  /** Returns the block at `offset` to its free list. Throws for an offset that is not a live block. */
  release(offset: number): void {
    const size = this.#live.get(offset);
    if (size === undefined) {
      throw new Error(
        `cannot free the block at byte ${offset}: it is not a live allocation (freed twice, or a subarray)`,
      );
    }
    this.#live.delete(offset);
    this.#bytesInUse -= size;
    let list = this.#freeLists.get(size);
    if (list === undefined) {
      list = [];
      this.#freeLists.set(size, list);
    }
    list.push(offset);
  }

  /** Returns a `Float32Array` view of `length` floats at byte `offset`. */
  view(offset: number, length: number): Float32Array {
    return new Float32Array(this.memory.buffer, offset, length);
  }

  /** Takes a new block from the end of the used region, growing the memory when needed. */
  #carve(size: number): number {
    const offset = this.#top;
    const end = offset + size;
    const available = this.memory.buffer.byteLength;
    if (end > available) {
      const needed = Math.ceil((end - available) / PAGE_BYTES);
      const current = available / PAGE_BYTES;
      // Grow by at least a quarter of the current size, so that a run of
      // small allocations does not grow the memory page by page.
      const grow = Math.min(Math.max(needed, Math.ceil(current / 4)), MAX_PAGES - current);
      if (grow < needed) {
        throw new RangeError(
          `wasm memory exhausted: a block of ${size} bytes needs ${end} bytes, ` +
            `above the wasm32 limit of ${MAX_PAGES * PAGE_BYTES} bytes ` +
            `(${this.#bytesInUse} bytes are in live blocks)`,
        );
      }
      this.memory.grow(grow);
      this.#buffers.add(this.memory.buffer);
    }
    this.#top = end;
    return offset;
  }
}
