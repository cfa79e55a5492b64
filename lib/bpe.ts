/**
 * Byte-pair encoding over Unicode code points.
 *
 * The tokenizer reads text as one stream of code points, with no pre-tokenization and no word
 * splitting. A token may therefore contain spaces and newlines, and decoding is the plain
 * concatenation of token strings.
 *
 * Token ids:
 * - `UNKNOWN_ID` (0) stands for every code point that did not occur in the training text.
 *   `encode` maps each such code point to it, and `decode` turns it into U+FFFD. Text with unseen
 *   characters therefore comes back with one U+FFFD per unseen code point.
 * - 1 … A are the base alphabet: the distinct code points of the training text in ascending order.
 * - A + 1 onwards are the merges, in the order training learned them.
 *
 * Text is read as Unicode scalar values. A lone surrogate reads as U+FFFD, so no token contains a
 * lone surrogate and every decoded string is well-formed UTF-16.
 *
 * Training repeats one step. It counts every adjacent pair of tokens, including overlapping ones
 * (so "aaa" contains (a, a) twice), and picks the most frequent pair. Ties go to the pair with the
 * smaller left id, then the smaller right id. It then replaces the pair's occurrences, scanning left
 * to right, with a new token. Training stops after `merges` steps or when no pair occurs twice.
 * `trainReference` does exactly that by rescanning the text at each step. `BPETokenizer.train`
 * learns the same merges in the same order but counts pairs once and then updates the counts
 * incrementally.
 *
 * Encoding applies the merges in the order they were learned, each one left to right.
 * `encodeReference` rescans once per merge, and `BPETokenizer.encode` visits only the positions
 * where a mergeable pair occurs.
 *
 * @example
 * ```ts
 * import { BPETokenizer } from "./bpe.ts";
 *
 * const tokenizer = BPETokenizer.train("the cat sat on the mat", 10);
 * const ids = tokenizer.encode("the bat");
 * console.log(tokenizer.decode(ids)); // "the \uFFFDat", because "b" never occurred in training
 *
 * const copy = BPETokenizer.fromJSON(JSON.parse(JSON.stringify(tokenizer)));
 * console.log(copy.vocabSize === tokenizer.vocabSize); // true
 * ```
 *
 * @module
 */

/** Id of the reserved token for code points missing from the training text. */
export const UNKNOWN_ID = 0;

/** Id of the first alphabet token. The alphabet occupies ids 1 … A. */
const FIRST_ALPHABET_ID = 1;

/** Code point that `decode` emits for `UNKNOWN_ID` and that a lone surrogate is read as. */
export const REPLACEMENT_CHARACTER = 0xfffd;

/** Largest Unicode code point. */
const MAX_CODE_POINT = 0x10ffff;

/** Value of `format` in the JSON form of a tokenizer. */
export const BPE_FORMAT = "rinzler-bpe";

/** Version of the JSON form that this module writes and reads. */
export const BPE_VERSION = 1;

/** JSON form of a tokenizer, as returned by `toJSON` and accepted by `fromJSON`. */
export interface BPEJSON {
  /** Always `BPE_FORMAT`, which `fromJSON` checks. */
  format: typeof BPE_FORMAT;
  /** Always `BPE_VERSION`, which `fromJSON` checks. */
  version: typeof BPE_VERSION;
  /** Code points of the base alphabet in ascending order. Code point `alphabet[i]` has id `i + 1`. */
  alphabet: number[];
  /** Merged pairs in learning order. Merge `i` creates id `alphabet.length + 1 + i`. */
  merges: [number, number][];
}

/** Options of `BPETokenizer.train`. */
export interface TrainOptions {
  /** Called after each merge with the merges done so far and the `merges` requested. */
  onProgress?: (done: number, total: number) => void;
}

/** A byte-pair encoding tokenizer over Unicode code points. */
export class BPETokenizer {
  /** Code points of the base alphabet in ascending order. */
  readonly alphabet: readonly number[];
  /** Merged pairs `[left id, right id]` in learning order. */
  readonly merges: readonly (readonly [number, number])[];

  /** Alphabet id of each code point in the alphabet. */
  #idOfCodePoint: Map<number, number>;
  /** Decoded text of each token id. */
  #tokenTexts: string[];
  /** Merge rank of each merged pair, keyed by `left * vocabSize + right`. */
  #rankOfPair: Map<number, number>;

  /**
   * Builds a tokenizer from its alphabet and merges.
   *
   * Throws an Error naming the first invalid entry: an alphabet that is not strictly ascending or
   * contains a non-scalar value, or a merge that refers to the unknown token, to itself or a later
   * merge, or repeats an earlier merge.
   */
  constructor(alphabet: readonly number[], merges: readonly (readonly [number, number])[]) {
    validateAlphabet(alphabet);
    validateMerges(merges, FIRST_ALPHABET_ID + alphabet.length);
    this.alphabet = Object.freeze([...alphabet]);
    this.merges = Object.freeze(
      merges.map(([left, right]) => Object.freeze([left, right] as const)),
    );

    this.#idOfCodePoint = new Map();
    this.#tokenTexts = [String.fromCodePoint(REPLACEMENT_CHARACTER)];
    for (const [index, codePoint] of this.alphabet.entries()) {
      this.#idOfCodePoint.set(codePoint, FIRST_ALPHABET_ID + index);
      this.#tokenTexts.push(String.fromCodePoint(codePoint));
    }

    this.#rankOfPair = new Map();
    const vocabSize = this.vocabSize;
    for (const [rank, [left, right]] of this.merges.entries()) {
      this.#rankOfPair.set(left * vocabSize + right, rank);
      this.#tokenTexts.push(this.#tokenTexts[left] + this.#tokenTexts[right]);
    }
  }

  /**
   * Learns up to `merges` merges from `text`, which also sets the base alphabet.
   *
   * Gives the same merges in the same order as `trainReference`, and stops early in the same
   * case: when no adjacent pair occurs at least twice.
   */
  static train(text: string, merges: number, options: TrainOptions = {}): BPETokenizer {
    validateMergeCount(merges);
    // Typed arrays keep a 10-million-character corpus to 4 bytes per position.
    const ids = codePointArray(text);
    const alphabet = [...new Set(ids)].sort((a, b) => a - b);
    const idOf = new Map(
      alphabet.map((codePoint, index) => [codePoint, FIRST_ALPHABET_ID + index]),
    );
    for (let i = 0; i < ids.length; i++) ids[i] = idOf.get(ids[i])!;
    const firstMergeId = FIRST_ALPHABET_ID + alphabet.length;
    const learned = learnMerges(ids, firstMergeId, merges, options.onProgress);
    freeNow(ids);
    return new BPETokenizer(alphabet, learned);
  }

  /**
   * Builds a tokenizer from the object that `toJSON` returns, for example after `JSON.parse`.
   * Throws an Error that names the invalid field when `json` is not such an object.
   */
  static fromJSON(json: unknown): BPETokenizer {
    const prefix = "Invalid BPE tokenizer JSON";
    if (typeof json !== "object" || json === null || Array.isArray(json)) {
      throw new Error(`${prefix}: expected an object, got ${describe(json)}`);
    }
    const { format, version, alphabet, merges } = json as Record<string, unknown>;
    if (format !== BPE_FORMAT) {
      throw new Error(`${prefix}: "format" must be "${BPE_FORMAT}", got ${describe(format)}`);
    }
    if (version !== BPE_VERSION) {
      throw new Error(
        `${prefix}: unsupported "version" ${describe(version)}, expected ${BPE_VERSION}`,
      );
    }
    if (!Array.isArray(alphabet)) {
      throw new Error(
        `${prefix}: "alphabet" must be an array of code points, got ${describe(alphabet)}`,
      );
    }
    if (!Array.isArray(merges)) {
      throw new Error(`${prefix}: "merges" must be an array of id pairs, got ${describe(merges)}`);
    }
    for (const [index, pair] of merges.entries()) {
      if (!Array.isArray(pair) || pair.length !== 2) {
        throw new Error(
          `${prefix}: merges[${index}] must be a pair [left, right], got ${describe(pair)}`,
        );
      }
    }
    try {
      return new BPETokenizer(alphabet, merges);
    } catch (error) {
      throw new Error(`${prefix}: ${(error as Error).message}`);
    }
  }

  /** Number of token ids: the unknown token, the alphabet and the merges. */
  get vocabSize(): number {
    return FIRST_ALPHABET_ID + this.alphabet.length + this.merges.length;
  }

  /** Returns the JSON form that `fromJSON` reads back. */
  toJSON(): BPEJSON {
    return {
      format: BPE_FORMAT,
      version: BPE_VERSION,
      alphabet: [...this.alphabet],
      merges: this.merges.map(([left, right]) => [left, right]),
    };
  }

  /**
   * Encodes `text` into token ids. Each code point missing from the alphabet becomes
   * `UNKNOWN_ID`, which no merge contains.
   *
   * Gives the same ids as `encodeReference`. Merges apply in rank order: the positions of each
   * mergeable pair are collected in a list per rank, and the lists are processed from the lowest
   * rank up. A new token can only complete pairs of a higher rank, because every merge that
   * contains a token was learned after it.
   */
  encode(text: string): number[] {
    return [...this.encodeIds(text)];
  }

  /**
   * Encodes `text` into token ids like `encode`, as an `Int32Array`: 4 bytes per token, where a
   * `number[]` of a 10-million-character text takes twice that and a copy to convert.
   */
  encodeIds(text: string): Int32Array {
    const ids = codePointArray(text);
    for (let i = 0; i < ids.length; i++) ids[i] = this.#idOfCodePoint.get(ids[i]) ?? UNKNOWN_ID;
    if (ids.length < 2 || this.merges.length === 0) return ids;

    const vocabSize = this.vocabSize;
    const firstMergeId = FIRST_ALPHABET_ID + this.alphabet.length;
    const rankOfPair = this.#rankOfPair;
    const store = new PositionStore();
    const positionsByRank: (PositionList | undefined)[] = new Array(this.merges.length);
    const pendingRanks = new BinaryHeap<number>((a, b) => a < b);
    const events: PairEvents = {
      added(left, right, position) {
        const rank = rankOfPair.get(left * vocabSize + right);
        if (rank === undefined) return;
        let positions = positionsByRank[rank];
        if (positions === undefined) {
          positions = store.create();
          positionsByRank[rank] = positions;
          pendingRanks.push(rank);
        }
        store.push(positions, position);
      },
      removed() {},
    };

    // Allocate the list of each rank that occurs in the text at its final length. Pairs of
    // alphabet tokens occur only here, and pairs added by merges contain a merged token, so no
    // list filled here grows later.
    const initialCounts = new Int32Array(this.merges.length);
    for (let i = 0; i + 1 < ids.length; i++) {
      const rank = rankOfPair.get(ids[i] * vocabSize + ids[i + 1]);
      if (rank !== undefined) initialCounts[rank]++;
    }
    for (let rank = 0; rank < initialCounts.length; rank++) {
      if (initialCounts[rank] === 0) continue;
      positionsByRank[rank] = store.createWithCapacity(initialCounts[rank]);
      pendingRanks.push(rank);
    }

    const sequence = new TokenSequence(ids);
    for (let i = 0; i + 1 < ids.length; i++) events.added(ids[i], ids[i + 1], i);

    while (pendingRanks.size > 0) {
      const rank = pendingRanks.pop()!;
      const positions = positionsByRank[rank]!;
      positionsByRank[rank] = undefined;
      const [left, right] = this.merges[rank];
      const newId = firstMergeId + rank;
      store.forEach(positions, (position) => sequence.merge(position, left, right, newId, events));
      store.release(positions);
    }
    store.dispose();
    const tokens = sequence.compact();
    freeNow(ids);
    return tokens;
  }

  /** Decodes token ids into text. Throws a RangeError on an id outside `0 … vocabSize - 1`. */
  decode(ids: readonly number[]): string {
    const parts: string[] = new Array(ids.length);
    for (let i = 0; i < ids.length; i++) {
      const text = Number.isInteger(ids[i]) ? this.#tokenTexts[ids[i]] : undefined;
      if (text === undefined) {
        throw new RangeError(
          `Invalid token id ${ids[i]} at index ${i}: ids are integers from 0 to ${
            this.vocabSize - 1
          }`,
        );
      }
      parts[i] = text;
    }
    return parts.join("");
  }
}

/**
 * Learns up to `merges` merges from `text` by recounting all pairs at every step.
 *
 * This is the plain statement of the training algorithm, kept as the reference that
 * `BPETokenizer.train` is tested against. It takes time proportional to `merges × text.length`.
 */
export function trainReference(text: string, merges: number): BPETokenizer {
  validateMergeCount(merges);
  const codePoints = Array.from(text, scalarValueOf);
  const alphabet = [...new Set(codePoints)].sort((a, b) => a - b);
  const idOf = new Map(alphabet.map((codePoint, index) => [codePoint, FIRST_ALPHABET_ID + index]));
  let ids = codePoints.map((codePoint) => idOf.get(codePoint)!);
  const firstMergeId = FIRST_ALPHABET_ID + alphabet.length;

  const learned: [number, number][] = [];
  for (let step = 0; step < merges; step++) {
    let best: { left: number; right: number; count: number } | undefined;
    for (const pair of countPairs(ids).values()) {
      if (
        best === undefined ||
        pair.count > best.count ||
        (pair.count === best.count &&
          (pair.left < best.left || (pair.left === best.left && pair.right < best.right)))
      ) {
        best = pair;
      }
    }
    if (best === undefined || best.count < 2) break;
    ids = mergePair(ids, best.left, best.right, firstMergeId + step);
    learned.push([best.left, best.right]);
  }
  return new BPETokenizer(alphabet, learned);
}

/**
 * Encodes `text` by applying each merge of `tokenizer` in order, rescanning the ids once per merge.
 * This is the reference that `BPETokenizer.encode` is tested against.
 */
export function encodeReference(tokenizer: BPETokenizer, text: string): number[] {
  const idOf = new Map(
    tokenizer.alphabet.map((codePoint, index) => [codePoint, FIRST_ALPHABET_ID + index]),
  );
  let ids = Array.from(text, (character) => idOf.get(scalarValueOf(character)) ?? UNKNOWN_ID);
  const firstMergeId = FIRST_ALPHABET_ID + tokenizer.alphabet.length;
  for (const [rank, [left, right]] of tokenizer.merges.entries()) {
    ids = mergePair(ids, left, right, firstMergeId + rank);
  }
  return ids;
}

/**
 * Splits `text` into Unicode scalar values. A lone surrogate becomes U+FFFD, the same rule that
 * `TextEncoder` applies.
 */
export function codePointsOf(text: string): number[] {
  return [...codePointArray(text)];
}

/** Splits `text` into Unicode scalar values as `codePointsOf` does, into a typed array. */
function codePointArray(text: string): Int32Array<ArrayBuffer> {
  const codePoints = new Int32Array(text.length);
  let count = 0;
  for (let i = 0; i < text.length;) {
    const codePoint = text.codePointAt(i)!;
    i += codePoint > 0xffff ? 2 : 1;
    codePoints[count++] = isSurrogate(codePoint) ? REPLACEMENT_CHARACTER : codePoint;
  }
  // A surrogate pair is one scalar value, so only text with such pairs leaves a tail to drop.
  return count === codePoints.length ? codePoints : codePoints.slice(0, count);
}

/** Returns the scalar value of a one-code-point string, reading a lone surrogate as U+FFFD. */
function scalarValueOf(character: string): number {
  const codePoint = character.codePointAt(0)!;
  return isSurrogate(codePoint) ? REPLACEMENT_CHARACTER : codePoint;
}

function isSurrogate(codePoint: number): boolean {
  return codePoint >= 0xd800 && codePoint <= 0xdfff;
}

/** Counts the adjacent pairs of `ids`, overlapping ones included, keyed by `"left right"`. */
function countPairs(
  ids: readonly number[],
): Map<string, { left: number; right: number; count: number }> {
  const counts = new Map<string, { left: number; right: number; count: number }>();
  for (let i = 0; i + 1 < ids.length; i++) {
    const key = `${ids[i]} ${ids[i + 1]}`;
    const pair = counts.get(key);
    if (pair === undefined) counts.set(key, { left: ids[i], right: ids[i + 1], count: 1 });
    else pair.count++;
  }
  return counts;
}

/** Returns `ids` with each occurrence of `(left, right)`, scanned left to right, replaced by `newId`. */
function mergePair(ids: readonly number[], left: number, right: number, newId: number): number[] {
  const merged: number[] = [];
  for (let i = 0; i < ids.length; i++) {
    if (i + 1 < ids.length && ids[i] === left && ids[i + 1] === right) {
      merged.push(newId);
      i++;
    } else {
      merged.push(ids[i]);
    }
  }
  return merged;
}

/** Occurrence count and start positions of one adjacent pair during training. */
interface PairStats {
  left: number;
  right: number;
  /** Number of positions where the pair currently occurs. Always exact. */
  count: number;
  /**
   * Ascending positions where the pair occurred when it was counted. Entries go stale when a
   * merge changes either token, so every use checks the position again. Null for a pair of two
   * alphabet tokens, whose merge scans the whole sequence instead.
   */
  positions: PositionList | null;
}

/** Entry of the training queue: a pair and its count when the entry was queued. */
interface QueuedPair {
  stats: PairStats;
  count: number;
}

/** Returns whether queue entry `a` comes out before `b`: higher count, then smaller ids. */
function queuedBefore(a: QueuedPair, b: QueuedPair): boolean {
  if (a.count !== b.count) return a.count > b.count;
  if (a.stats.left !== b.stats.left) return a.stats.left < b.stats.left;
  return a.stats.right < b.stats.right;
}

/**
 * Learns up to `maxMerges` merges from alphabet ids, updating pair counts incrementally.
 *
 * Pairs are counted once. A merge at one position then changes at most five counts: the merged
 * pair and the pairs with the left and right neighbours lose one, and the two pairs with the new
 * token gain one. Only pairs that contain the new token are created, so each pair is created in
 * exactly one step, and its positions are appended in ascending order during that step.
 *
 * Pairs of two alphabet tokens exist from the start and hold almost every position of the text,
 * but only about a sixth of the merges pick one (171 of 1000 on the default corpus). So their
 * positions are not stored, and merging such a pair scans the sequence for its left token. On the
 * default corpus that saves 4 bytes per character and adds about 1 s to the 3 s of training
 * (measured on a 2-core AMD EPYC).
 *
 * The max-heap uses lazy deletion. Counts of existing pairs only go down, so a queued count is
 * never below the true count. A popped entry whose count is out of date is queued again with the
 * true count. The first popped entry whose count is current is therefore the most frequent pair.
 */
function learnMerges(
  ids: Int32Array,
  firstMergeId: number,
  maxMerges: number,
  onProgress?: (done: number, total: number) => void,
): [number, number][] {
  const keyBase = firstMergeId + maxMerges;
  const pairs = new Map<number, PairStats>();
  const store = new PositionStore();
  let created: PairStats[] = [];
  const events: PairEvents = {
    added(left, right, position) {
      const key = left * keyBase + right;
      let stats = pairs.get(key);
      if (stats === undefined) {
        stats = { left, right, count: 0, positions: store.create() };
        pairs.set(key, stats);
        created.push(stats);
      }
      stats.count++;
      if (stats.positions !== null) store.push(stats.positions, position);
    },
    removed(left, right) {
      pairs.get(left * keyBase + right)!.count--;
    },
  };

  for (let i = 0; i + 1 < ids.length; i++) {
    const key = ids[i] * keyBase + ids[i + 1];
    let stats = pairs.get(key);
    if (stats === undefined) {
      stats = { left: ids[i], right: ids[i + 1], count: 0, positions: null };
      pairs.set(key, stats);
      created.push(stats);
    }
    stats.count++;
  }
  const sequence = new TokenSequence(ids);
  const queue = new BinaryHeap<QueuedPair>(queuedBefore);
  // A pair whose count reached 0 never occurs again, because every pair created later contains a
  // newer token.
  const forget = (stats: PairStats) => {
    pairs.delete(stats.left * keyBase + stats.right);
    if (stats.positions !== null) store.release(stats.positions);
  };
  const enqueueCreated = () => {
    for (const stats of created) {
      if (stats.count > 0) queue.push({ stats, count: stats.count });
      else forget(stats);
    }
    created = [];
  };
  enqueueCreated();

  const learned: [number, number][] = [];
  for (let step = 0; step < maxMerges; step++) {
    const best = popMostFrequent(queue, forget);
    if (best === undefined || best.count < 2) break;

    const { left, right, positions } = best;
    const newId = firstMergeId + step;
    if (positions === null) {
      sequence.mergeEverywhere(left, right, newId, events);
    } else {
      store.forEach(positions, (position) => sequence.merge(position, left, right, newId, events));
    }
    if (best.count !== 0) {
      throw new Error(`BPE training invariant broken: pair (${left}, ${right}) still counted`);
    }
    forget(best);
    enqueueCreated();

    learned.push([left, right]);
    onProgress?.(step + 1, maxMerges);
  }
  store.dispose();
  return learned;
}

/**
 * Pops queue entries until one has a current count, and returns its pair. Passes each popped
 * pair whose count has reached 0 to `forget`.
 */
function popMostFrequent(
  queue: BinaryHeap<QueuedPair>,
  forget: (stats: PairStats) => void,
): PairStats | undefined {
  while (queue.size > 0) {
    const { stats, count } = queue.pop()!;
    if (count === stats.count) return stats;
    if (stats.count > 0) queue.push({ stats, count: stats.count });
    else forget(stats);
  }
  return undefined;
}

/** Callbacks through which `TokenSequence.merge` reports each adjacent pair it destroys or creates. */
interface PairEvents {
  added(left: number, right: number, position: number): void;
  removed(left: number, right: number, position: number): void;
}

/**
 * A token sequence stored at its original positions. A merge writes the new token at the position
 * of the pair's first token and marks the second token's position, like every position inside a
 * merged token, with -1. The neighbours of a token are found by skipping -1 entries, which costs
 * at most the length of one token in code points. Two link arrays would make that constant time
 * at 8 bytes per code point of text. Position 0 is never marked, so it is always the first token.
 */
class TokenSequence {
  /** Token id at each position, or -1 where the position is inside an earlier token. */
  readonly tokens: Int32Array;

  /** Takes the positions of `ids`, which the sequence then owns and rewrites in place. */
  constructor(ids: Int32Array) {
    this.tokens = ids;
  }

  /** Returns the position of the token after the one at `position`, or -1 at the end. */
  next(position: number): number {
    const tokens = this.tokens;
    let after = position + 1;
    while (after < tokens.length && tokens[after] === -1) after++;
    return after < tokens.length ? after : -1;
  }

  /** Returns the position of the token before the one at `position`, or -1 at the start. */
  previous(position: number): number {
    const tokens = this.tokens;
    let before = position - 1;
    while (before >= 0 && tokens[before] === -1) before--;
    return before;
  }

  /**
   * Replaces the pair `(left, right)` that starts at `position` with `newId`, reporting the
   * changed adjacent pairs to `events`. Does nothing and returns false when the pair no longer
   * starts there.
   */
  merge(position: number, left: number, right: number, newId: number, events: PairEvents): boolean {
    const tokens = this.tokens;
    if (tokens[position] !== left) return false;
    const second = this.next(position);
    if (second < 0 || tokens[second] !== right) return false;
    const before = this.previous(position);
    const after = this.next(second);

    if (before >= 0) events.removed(tokens[before], left, before);
    if (after >= 0) events.removed(right, tokens[after], second);
    events.removed(left, right, position);

    tokens[position] = newId;
    tokens[second] = -1;

    if (before >= 0) events.added(tokens[before], newId, before);
    if (after >= 0) events.added(newId, tokens[after], position);
    return true;
  }

  /** Merges every occurrence of the pair (`left`, `right`), found by a scan in sequence order. */
  mergeEverywhere(left: number, right: number, newId: number, events: PairEvents): void {
    const tokens = this.tokens;
    for (let position = 0; position < tokens.length; position++) {
      if (tokens[position] === left) this.merge(position, left, right, newId, events);
    }
  }

  /**
   * Moves the token ids to the front of the positions, in sequence order, and returns a copy of
   * them. The sequence is unusable afterwards.
   */
  compact(): Int32Array {
    const tokens = this.tokens;
    let count = 0;
    for (let position = 0; position < tokens.length; position++) {
      if (tokens[position] !== -1) tokens[count++] = tokens[position];
    }
    // A copy, so that the positions array (one int per code point) can be freed.
    return tokens.slice(0, count);
  }
}

/**
 * Frees the memory of `array` now instead of at some later garbage collection, by detaching its
 * buffer, after which the array is empty. On a 10-million-character text, the arrays of training
 * and encoding take over 100 MB, which would otherwise stay allocated into the training run.
 */
function freeNow(array: Int32Array<ArrayBuffer>): void {
  array.buffer.transfer(0);
}

/** One list of positions in a `PositionStore`: a chain of blocks, appended at the tail. */
interface PositionList {
  /** Address of the first block, or -1 for a list without blocks. */
  head: number;
  /** Address of the block that the next position goes to, or -1. */
  tail: number;
  /** Positions already stored in the tail block. */
  tailUsed: number;
  /** Positions in the whole list. */
  length: number;
}

/**
 * Integers per page of a `PositionStore`: 32 MiB. glibc's malloc serves a request this large
 * (`DEFAULT_MMAP_THRESHOLD_MAX` on 64-bit systems) by its own `mmap`, which it unmaps when the
 * page is freed. Smaller pages can come from the heap that `brk` grows, which malloc keeps
 * after a free. Untouched memory of a page is not resident.
 */
const PAGE_INTS = 1 << 23;
/** Largest block capacity, a power of two small enough that a block always fits in one page. */
const MAX_BLOCK = 1 << 16;
/** Smallest block capacity. */
const MIN_BLOCK = 4;
/** Integers in front of each block's positions: its capacity and the address of the next block. */
const BLOCK_HEADER = 2;

/**
 * Position lists of many pairs in a few large pages of 32-bit integers. Training creates about
 * 200,000 pairs on a 10-million-character text, and a typed array per pair costs far more than
 * its positions in object headers and malloc fragmentation.
 *
 * A list is a chain of blocks whose capacities are powers of two. Appending to a full tail block
 * adds a block of twice its capacity, up to MAX_BLOCK, so nothing is ever copied. A block of
 * capacity c takes c + 2 integers at an address `page · PAGE_INTS + offset`. Blocks of a released
 * list go to a free list per capacity and are reused by later lists. Pages are never returned.
 */
class PositionStore {
  readonly #pages: Int32Array<ArrayBuffer>[] = [];
  /** Next free offset in the last page. */
  #top = PAGE_INTS;
  /** Free block addresses by log2 of the capacity. */
  readonly #free: number[][] = Array.from({ length: 31 - Math.clz32(MAX_BLOCK) + 1 }, () => []);

  /** Frees every page now. The store and its lists are unusable afterwards. */
  dispose(): void {
    for (const page of this.#pages) freeNow(page);
    this.#pages.length = 0;
  }

  /** Returns an empty list. */
  create(): PositionList {
    return { head: -1, tail: -1, tailUsed: 0, length: 0 };
  }

  /** Returns an empty list whose blocks hold exactly `capacity` positions, for lists of known length. */
  createWithCapacity(capacity: number): PositionList {
    const list = this.create();
    // Blocks of MAX_BLOCK while more remains, then one block per set bit of the rest, largest first.
    let rest = capacity;
    let previous = -1;
    while (rest > 0) {
      const size = rest >= MAX_BLOCK ? MAX_BLOCK : 1 << (31 - Math.clz32(rest));
      const block = this.#allocate(size);
      if (previous < 0) list.head = block;
      else this.#setNext(previous, block);
      previous = block;
      rest -= size;
    }
    list.tail = list.head;
    return list;
  }

  /** Appends `value` to `list`. */
  push(list: PositionList, value: number): void {
    if (list.tail < 0) {
      list.head = list.tail = this.#allocate(MIN_BLOCK);
    } else if (list.tailUsed === this.#capacity(list.tail)) {
      let next = this.#next(list.tail);
      if (next < 0) {
        next = this.#allocate(Math.min(MAX_BLOCK, 2 * this.#capacity(list.tail)));
        this.#setNext(list.tail, next);
      }
      list.tail = next;
      list.tailUsed = 0;
    }
    const page = this.#pages[Math.floor(list.tail / PAGE_INTS)];
    page[list.tail % PAGE_INTS + BLOCK_HEADER + list.tailUsed] = value;
    list.tailUsed++;
    list.length++;
  }

  /**
   * Calls `visit` with each position of `list` in order. Pushing to other lists meanwhile is
   * allowed, and pushing to `list` itself is not.
   */
  forEach(list: PositionList, visit: (position: number) => void): void {
    let rest = list.length;
    for (let block = list.head; rest > 0; block = this.#next(block)) {
      const page = this.#pages[Math.floor(block / PAGE_INTS)];
      const start = block % PAGE_INTS + BLOCK_HEADER;
      const count = Math.min(rest, page[start - BLOCK_HEADER]);
      for (let k = 0; k < count; k++) visit(page[start + k]);
      rest -= count;
    }
  }

  /** Returns the blocks of `list` for reuse and empties it. */
  release(list: PositionList): void {
    for (let block = list.head; block >= 0;) {
      const next = this.#next(block);
      this.#free[31 - Math.clz32(this.#capacity(block))].push(block);
      block = next;
    }
    list.head = list.tail = -1;
    list.tailUsed = list.length = 0;
  }

  /** Returns the address of a block of `capacity` (a power of two up to MAX_BLOCK) without a next block. */
  #allocate(capacity: number): number {
    let block = this.#free[31 - Math.clz32(capacity)].pop();
    if (block === undefined) {
      if (this.#top + BLOCK_HEADER + capacity > PAGE_INTS) {
        this.#pages.push(new Int32Array(PAGE_INTS));
        this.#top = 0;
      }
      block = (this.#pages.length - 1) * PAGE_INTS + this.#top;
      this.#top += BLOCK_HEADER + capacity;
    }
    const page = this.#pages[Math.floor(block / PAGE_INTS)];
    page[block % PAGE_INTS] = capacity;
    page[block % PAGE_INTS + 1] = -1;
    return block;
  }

  #capacity(block: number): number {
    return this.#pages[Math.floor(block / PAGE_INTS)][block % PAGE_INTS];
  }

  #next(block: number): number {
    return this.#pages[Math.floor(block / PAGE_INTS)][block % PAGE_INTS + 1];
  }

  #setNext(block: number, next: number): void {
    this.#pages[Math.floor(block / PAGE_INTS)][block % PAGE_INTS + 1] = next;
  }
}

/** Binary heap whose `pop` returns the item that comes first under `before`. */
class BinaryHeap<T> {
  #items: T[] = [];
  #before: (a: T, b: T) => boolean;

  constructor(before: (a: T, b: T) => boolean) {
    this.#before = before;
  }

  get size(): number {
    return this.#items.length;
  }

  push(item: T): void {
    const items = this.#items;
    items.push(item);
    let child = items.length - 1;
    while (child > 0) {
      const parent = (child - 1) >> 1;
      if (!this.#before(items[child], items[parent])) break;
      [items[child], items[parent]] = [items[parent], items[child]];
      child = parent;
    }
  }

  pop(): T | undefined {
    const items = this.#items;
    if (items.length === 0) return undefined;
    const top = items[0];
    const last = items.pop()!;
    if (items.length > 0) {
      items[0] = last;
      let parent = 0;
      while (true) {
        const left = 2 * parent + 1;
        const right = left + 1;
        let first = parent;
        if (left < items.length && this.#before(items[left], items[first])) first = left;
        if (right < items.length && this.#before(items[right], items[first])) first = right;
        if (first === parent) break;
        [items[parent], items[first]] = [items[first], items[parent]];
        parent = first;
      }
    }
    return top;
  }
}

function validateMergeCount(merges: number): void {
  if (!Number.isInteger(merges) || merges < 0) {
    throw new RangeError(`Invalid merge count ${merges}: expected a non-negative integer`);
  }
}

function validateAlphabet(alphabet: readonly unknown[]): void {
  for (const [index, codePoint] of alphabet.entries()) {
    if (
      typeof codePoint !== "number" || !Number.isInteger(codePoint) || codePoint < 0 ||
      codePoint > MAX_CODE_POINT || isSurrogate(codePoint)
    ) {
      throw new Error(
        `alphabet[${index}] is ${describe(codePoint)}, expected a Unicode scalar value ` +
          `(an integer from 0 to 0x10FFFF, excluding surrogates 0xD800-0xDFFF)`,
      );
    }
    if (index > 0 && codePoint <= (alphabet[index - 1] as number)) {
      throw new Error(
        `alphabet[${index}] is ${codePoint} after ${alphabet[index - 1]}: ` +
          `code points must be strictly ascending`,
      );
    }
  }
}

function validateMerges(merges: readonly (readonly unknown[])[], firstMergeId: number): void {
  const seen = new Map<string, number>();
  for (const [index, pair] of merges.entries()) {
    const newId = firstMergeId + index;
    for (const id of pair) {
      if (
        typeof id !== "number" || !Number.isInteger(id) || id < FIRST_ALPHABET_ID || id >= newId
      ) {
        throw new Error(
          `merges[${index}] contains ${describe(id)}, expected an integer id from ` +
            `${FIRST_ALPHABET_ID} to ${
              newId - 1
            } (alphabet or earlier merges, not the unknown token)`,
        );
      }
    }
    const key = `${pair[0]} ${pair[1]}`;
    const earlier = seen.get(key);
    if (earlier !== undefined) {
      throw new Error(`merges[${index}] repeats merges[${earlier}] [${pair[0]}, ${pair[1]}]`);
    }
    seen.set(key, index);
  }
}

/** Describes a value for an error message: JSON where possible, else its type. */
function describe(value: unknown): string {
  if (value === undefined) return "undefined";
  try {
    const json = JSON.stringify(value);
    return json.length > 60 ? `${json.slice(0, 57)}...` : json;
  } catch {
    return typeof value;
  }
}
