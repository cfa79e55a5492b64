/**
 * Trains a multilayer perceptron built only from scalar `Value`s to separate
 * two interleaved half-moons, the demo of micrograd redone on this rung.
 *
 * ```sh
 * deno run bin/mlp.ts --steps 100 --seed 42
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { MLP, mulberry32, Value } from "../lib/autograd.ts";

/** One labelled point of a 2-D classification set. */
export interface Sample {
  x: [number, number];
  /** The class, as -1 or +1 so that `label · score > 0` means correct. */
  label: -1 | 1;
}

/**
 * Generates two interleaved half-moons, as scikit-learn's `make_moons` does.
 * The upper arc (label -1) is the unit half-circle from angle 0 to π. The lower
 * arc (label +1) is the same half-circle flipped and shifted by (1, 0.5).
 * Gaussian noise of standard deviation `noise` is added to both coordinates.
 *
 * @example
 * ```ts
 * import { mulberry32 } from "../lib/autograd.ts";
 *
 * const samples = makeMoons(100, 0.1, mulberry32(42));
 * ```
 */
export function makeMoons(count: number, noise: number, rng: () => number): Sample[] {
  const upperCount = Math.ceil(count / 2);
  const lowerCount = count - upperCount;
  const samples: Sample[] = [];

  for (let i = 0; i < upperCount; i++) {
    const angle = upperCount > 1 ? (Math.PI * i) / (upperCount - 1) : 0;
    const x: [number, number] = [Math.cos(angle), Math.sin(angle)];
    samples.push({ x, label: -1 });
  }
  for (let i = 0; i < lowerCount; i++) {
    const angle = lowerCount > 1 ? (Math.PI * i) / (lowerCount - 1) : 0;
    const x: [number, number] = [1 - Math.cos(angle), 0.5 - Math.sin(angle)];
    samples.push({ x, label: 1 });
  }

  for (const sample of samples) {
    sample.x[0] += noise * gaussian(rng);
    sample.x[1] += noise * gaussian(rng);
  }
  return samples;
}

/** Draws one standard normal number with the Box–Muller transform. */
function gaussian(rng: () => number): number {
  const u1 = 1 - rng(); // in (0, 1], so the logarithm is finite
  const u2 = rng();
  return Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
}

/** Settings of `trainMoons`. */
export interface TrainMoonsOptions {
  /** Full-batch SGD steps (default 100). */
  steps?: number;
  /** Seed of the data noise and the initial weights (default 42). */
  seed?: number;
  /** Number of points in the data set (default 100). */
  points?: number;
  /** Called after each step's forward pass with the 1-based step, loss and accuracy before the update. */
  onStep?: (step: number, loss: number, accuracy: number) => void;
}

/** Loss and accuracy of the trained model on the whole data set. */
export interface TrainMoonsResult {
  loss: number;
  /** Fraction of points whose score has the sign of their label, from 0 to 1. */
  accuracy: number;
}

/** Weight of the L2 penalty `Σ p²` added to the hinge loss. */
const L2_WEIGHT = 1e-4;

/**
 * Trains `MLP(2, [16, 16, 1])` with ReLU hidden layers on `makeMoons(points, 0.1)`.
 * The loss is the mean hinge loss `max(0, 1 − label · score)` plus an L2
 * penalty, and each step is one SGD update over the whole set with a learning
 * rate falling linearly from 1.0 to 0.1.
 *
 * @example
 * ```ts
 * const { accuracy } = trainMoons({ steps: 40, seed: 1 });
 * ```
 */
export function trainMoons(options: TrainMoonsOptions = {}): TrainMoonsResult {
  const steps = options.steps ?? 100;
  const seed = options.seed ?? 42;
  const points = options.points ?? 100;
  if (!Number.isInteger(steps) || steps < 0) {
    throw new RangeError(`trainMoons: steps must be a non-negative integer, got ${steps}`);
  }
  if (!Number.isInteger(points) || points < 2) {
    throw new RangeError(`trainMoons: points must be an integer of at least 2, got ${points}`);
  }

  const rng = mulberry32(seed);
  const samples = makeMoons(points, 0.1, rng);
  const model = new MLP(2, [16, 16, 1], rng);

  for (let step = 1; step <= steps; step++) {
    const { loss, accuracy } = evaluate(model, samples);

    model.zeroGrad();
    loss.backward();

    const learningRate = 1.0 - (0.9 * (step - 1)) / steps;
    for (const parameter of model.parameters()) {
      parameter.data -= learningRate * parameter.grad;
    }

    options.onStep?.(step, loss.data, accuracy);
  }

  const final = evaluate(model, samples);
  return { loss: final.loss.data, accuracy: final.accuracy };
}

/** Runs the model on every sample and returns the regularized hinge loss and the accuracy. */
function evaluate(model: MLP, samples: readonly Sample[]): { loss: Value; accuracy: number } {
  let hingeSum = new Value(0);
  let correct = 0;
  for (const sample of samples) {
    const [score] = model.forward(sample.x);
    hingeSum = hingeSum.add(score.mul(-sample.label).add(1).relu());
    if (sample.label * score.data > 0) correct++;
  }

  let squareSum = new Value(0);
  for (const parameter of model.parameters()) {
    squareSum = squareSum.add(parameter.mul(parameter));
  }

  const loss = hingeSum.div(samples.length).add(squareSum.mul(L2_WEIGHT));
  return { loss, accuracy: correct / samples.length };
}

// ---------------------------------------------------------------------------
// Command line.

const HELP = `Usage: deno run bin/mlp.ts [--steps N] [--seed N]

Trains a multilayer perceptron made only of scalar Values (2 inputs, two
hidden ReLU layers of 16, 1 output) to separate two interleaved half-moons of
100 points with Gaussian noise 0.1. It minimizes the mean hinge loss plus an
L2 penalty with full-batch SGD, prints the loss and accuracy every tenth of
the run, and ends with the training accuracy.

Options:
  --steps N   number of SGD steps, a positive integer (default 100)
  --seed N    integer seed of the data noise and the initial weights (default 42)
  -h, --help  print this help and exit`;

/** Parses an integer option, or prints a one-line error and exits with status 2. */
function parseInteger(name: string, text: string, minimum: number): number {
  const value = Number(text);
  if (text.trim() === "" || !Number.isSafeInteger(value) || value < minimum) {
    const expected = minimum > 0 ? "a positive integer" : "an integer";
    exitWithUsageError(`invalid --${name} "${text}": expected ${expected}`);
  }
  return value;
}

function exitWithUsageError(message: string): never {
  console.error(`mlp: ${message}. Run with --help for usage.`);
  Deno.exit(2);
}

function main(args: string[]): void {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        steps: { type: "string", default: "100" },
        seed: { type: "string", default: "42" },
        help: { type: "boolean", short: "h", default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (error) {
    // parseArgs raises a TypeError for an unknown option, a missing value or a positional argument.
    if (!(error instanceof TypeError)) throw error;
    exitWithUsageError(error.message.replace(/\.$/, ""));
  }

  if (values.help) {
    console.log(HELP);
    return;
  }

  const steps = parseInteger("steps", values.steps, 1);
  const seed = parseInteger("seed", values.seed, -Infinity);
  const logEvery = Math.max(1, Math.round(steps / 10));

  const start = performance.now();
  const result = trainMoons({
    steps,
    seed,
    onStep: (step, loss, accuracy) => {
      if (step % logEvery === 0 || step === 1) {
        const percent = (accuracy * 100).toFixed(1);
        console.log(`step ${step}/${steps}  loss ${loss.toFixed(4)}  accuracy ${percent}%`);
      }
    },
  });
  const seconds = (performance.now() - start) / 1000;

  console.log(
    `final: loss ${result.loss.toFixed(4)}  accuracy ${(result.accuracy * 100).toFixed(1)}%` +
      `  (${seconds.toFixed(1)} s)`,
  );
}

if (import.meta.main) {
  main(Deno.args);
}
