/**
 * A small seeded random-number generator whose whole state is one 32-bit
 * integer, so a run can save it in a checkpoint and continue the same
 * sequence after a resume. Rinzler never uses `Math.random`.
 *
 * @example
 * ```ts
 * import { Random } from "./random.ts";
 * const rng = new Random(42);
 * const x = rng.next(); // uniform in [0, 1)
 * const saved = rng.state;
 * const y = rng.normal();
 * rng.state = saved; // rng.normal() returns y again
 * ```
 *
 * @module
 */

/** Mulberry32: a 32-bit generator by Tommy Ettinger, fast and good enough for sampling and initialisation. */
export class Random {
  /** The generator's whole state; assign a saved value to continue its sequence. */
  state: number;

  /** Creates a generator from an integer seed. */
  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  /** Returns a uniform float in [0, 1). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** Returns a uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** Returns a standard normal sample (Box–Muller transform; uses two uniforms). */
  normal(): number {
    const u = 1 - this.next(); // in (0, 1], so the logarithm is finite
    const v = this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
}
