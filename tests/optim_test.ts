import assert from "node:assert/strict";

import { type AdamWStep, jsBackend } from "../lib/backend.ts";
import {
  Adam,
  type AdamBackend,
  AdamW,
  adamwReference,
  clipGradNorm,
  CosineWithWarmup,
  cosineWithWarmupRate,
  decayGroups,
  gradNorm,
  LinearWarmup,
  linearWarmupRate,
  type Optimizer,
  type OptimizerConfig,
  type OptimizerParameter,
  type OptimizerState,
  type ParamsInput,
  RMSprop,
  SGD,
  SGDMomentum,
} from "../lib/optim.ts";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/** Creates a parameter with a gradient. */
function makeParam(name: string, values: number[], grad: number[]) {
  return { name, data: Float32Array.from(values), grad: Float32Array.from(grad) };
}

/** Creates a parameter whose gradient is null. */
function makeFrozenParam(name: string, values: number[]): OptimizerParameter {
  return { name, data: Float32Array.from(values), grad: null };
}

/** Bit patterns of a float32 array, so that comparisons are exact, including -0 and NaN. */
function bits(values: Float32Array): number[] {
  return Array.from(new Uint32Array(values.buffer, values.byteOffset, values.length));
}

function assertClose(actual: number, expected: number, tolerance: number, label: string) {
  assert.ok(
    Math.abs(actual - expected) <= tolerance,
    `${label}: got ${actual}, expected ${expected} within ${tolerance}`,
  );
}

// ---------------------------------------------------------------------------
// First three steps against the documented formulas, in float64
// ---------------------------------------------------------------------------

/** Initial values of the two parameters `a` (2 values) and `b` (1 value). */
const START_A = [0.5, -1.5];
const START_B = [2.0];

/** Fixed gradients for steps 1, 2 and 3, concatenated as [a0, a1, b0]. */
const FIXED_GRADS = [
  [0.1, -0.2, 0.3],
  [-0.4, 0.25, 0.05],
  [0.2, 0.2, -0.6],
];

/**
 * One documented update rule in float64: takes the parameters θ (all three
 * values concatenated), the gradient, the 1-based step t and a state object it
 * may keep between calls, and returns the new θ.
 */
type ExpectedRule = (
  theta: number[],
  grad: number[],
  t: number,
  state: Record<string, number[]>,
) => number[];

function expectedSgd(lr: number, weightDecay: number): ExpectedRule {
  return (theta, grad) => theta.map((p, i) => p - lr * (grad[i] + weightDecay * p));
}

function expectedSgdMomentum(
  lr: number,
  momentum: number,
  dampening: number,
  nesterov: boolean,
  weightDecay: number,
): ExpectedRule {
  return (theta, grad, t, state) => {
    const g = theta.map((p, i) => grad[i] + weightDecay * p);
    state.b = t === 1 ? [...g] : state.b.map((b, i) => momentum * b + (1 - dampening) * g[i]);
    const direction = nesterov ? g.map((gi, i) => gi + momentum * state.b[i]) : state.b;
    return theta.map((p, i) => p - lr * direction[i]);
  };
}

function expectedRmsprop(
  lr: number,
  alpha: number,
  eps: number,
  weightDecay: number,
  momentum: number,
  centered: boolean,
): ExpectedRule {
  return (theta, grad, _t, state) => {
    const g = theta.map((p, i) => grad[i] + weightDecay * p);
    state.v ??= g.map(() => 0);
    state.gAve ??= g.map(() => 0);
    state.b ??= g.map(() => 0);
    state.v = state.v.map((v, i) => alpha * v + (1 - alpha) * g[i] * g[i]);
    let vTilde = [...state.v];
    if (centered) {
      state.gAve = state.gAve.map((a, i) => a * alpha + (1 - alpha) * g[i]);
      vTilde = vTilde.map((v, i) => v - state.gAve[i] ** 2);
    }
    if (momentum > 0) {
      state.b = state.b.map((b, i) => momentum * b + g[i] / (Math.sqrt(vTilde[i]) + eps));
      return theta.map((p, i) => p - lr * state.b[i]);
    }
    return theta.map((p, i) => p - lr * g[i] / (Math.sqrt(vTilde[i]) + eps));
  };
}

function expectedAdam(
  lr: number,
  beta1: number,
  beta2: number,
  eps: number,
  weightDecay: number,
  decoupled: boolean,
): ExpectedRule {
  return (theta, grad, t, state) => {
    state.m ??= theta.map(() => 0);
    state.v ??= theta.map(() => 0);
    const decayed = decoupled ? theta.map((p) => p - lr * weightDecay * p) : theta;
    const g = decoupled ? grad : theta.map((p, i) => grad[i] + weightDecay * p);
    state.m = state.m.map((m, i) => beta1 * m + (1 - beta1) * g[i]);
    state.v = state.v.map((v, i) => beta2 * v + (1 - beta2) * g[i] * g[i]);
    return decayed.map((p, i) => {
      const mHat = state.m[i] / (1 - beta1 ** t);
      const vHat = state.v[i] / (1 - beta2 ** t);
      return p - lr * mHat / (Math.sqrt(vHat) + eps);
    });
  };
}

interface FormulaCase {
  name: string;
  build: (params: ParamsInput) => Optimizer;
  expected: ExpectedRule;
}

const FORMULA_CASES: FormulaCase[] = [
  {
    name: "SGD with weight decay",
    build: (params) => new SGD(params, { lr: 0.1, weightDecay: 0.01 }),
    expected: expectedSgd(0.1, 0.01),
  },
  {
    name: "SGDMomentum with dampening",
    build: (params) =>
      new SGDMomentum(params, { lr: 0.1, momentum: 0.9, dampening: 0.1, weightDecay: 0.01 }),
    expected: expectedSgdMomentum(0.1, 0.9, 0.1, false, 0.01),
  },
  {
    name: "SGDMomentum Nesterov",
    build: (params) => new SGDMomentum(params, { lr: 0.1, momentum: 0.9, nesterov: true }),
    expected: expectedSgdMomentum(0.1, 0.9, 0, true, 0),
  },
  {
    name: "RMSprop defaults with weight decay",
    build: (params) => new RMSprop(params, { weightDecay: 0.01 }),
    expected: expectedRmsprop(1e-2, 0.99, 1e-8, 0.01, 0, false),
  },
  {
    name: "RMSprop centered with momentum",
    build: (params) => new RMSprop(params, { lr: 0.02, alpha: 0.9, momentum: 0.5, centered: true }),
    expected: expectedRmsprop(0.02, 0.9, 1e-8, 0, 0.5, true),
  },
  {
    name: "Adam with L2 weight decay",
    build: (params) => new Adam(params, { lr: 0.01, weightDecay: 0.1 }),
    expected: expectedAdam(0.01, 0.9, 0.999, 1e-8, 0.1, false),
  },
  {
    name: "AdamW with decoupled weight decay",
    build: (params) => new AdamW(params, { lr: 0.01, weightDecay: 0.1, beta2: 0.99 }),
    expected: expectedAdam(0.01, 0.9, 0.99, 1e-8, 0.1, true),
  },
];

for (const formulaCase of FORMULA_CASES) {
  Deno.test(`${formulaCase.name}: first three steps match formulas`, () => {
    const a = makeParam("a", START_A, [0, 0]);
    const b = makeParam("b", START_B, [0]);
    const optimizer = formulaCase.build([a, b]);
    let theta = [...START_A, ...START_B];
    const state: Record<string, number[]> = {};

    FIXED_GRADS.forEach((grad, index) => {
      a.grad.set(grad.slice(0, 2));
      b.grad.set(grad.slice(2));
      optimizer.step();
      theta = formulaCase.expected(theta, grad, index + 1, state);
      const actual = [...a.data, ...b.data];
      actual.forEach((value, i) => {
        assertClose(value, theta[i], 1e-6, `step ${index + 1}, value ${i}`);
      });
    });
  });
}

Deno.test("optimizer defaults follow PyTorch", () => {
  const params = () => [makeFrozenParam("w", [1])];
  assert.equal(new SGD(params()).lr, 1e-3);
  assert.equal(new SGDMomentum(params(), { momentum: 0.9 }).lr, 1e-3);
  assert.equal(new RMSprop(params()).lr, 1e-2);
  assert.equal(new Adam(params()).lr, 1e-3);
  assert.equal(new AdamW(params()).lr, 1e-3);
  assert.equal(new Adam(params()).paramGroups[0].weightDecay, 0);
  assert.equal(new AdamW(params()).paramGroups[0].weightDecay, 0.01);

  const adamHyper = (new AdamW(params()).stateDict().config as OptimizerConfig).hyper;
  assert.deepEqual(adamHyper, { beta1: 0.9, beta2: 0.999, eps: 1e-8 });
  const rmspropHyper = (new RMSprop(params()).stateDict().config as OptimizerConfig).hyper;
  assert.deepEqual(rmspropHyper, { alpha: 0.99, eps: 1e-8, momentum: 0, centered: false });
});

Deno.test("parameter with null grad is skipped", () => {
  const frozen = makeFrozenParam("frozen", [1, 2]);
  const live = makeParam("live", [1], [1]);
  const optimizer = new AdamW([frozen, live], { lr: 0.1 });
  optimizer.step();
  optimizer.step();

  assert.deepEqual([...frozen.data], [1, 2]);
  assert.notEqual(live.data[0], 1);
  const steps = (optimizer.stateDict().config as OptimizerConfig).steps;
  assert.equal(steps.frozen, 0);
  assert.equal(steps.live, 2);
});

// ---------------------------------------------------------------------------
// Convergence on a quadratic and on the Rosenbrock function
// ---------------------------------------------------------------------------

/** f(x, y) = ½(x − 1)² + 5(y + 2)², minimum at (1, −2). */
function quadraticGradient(x: Float32Array, grad: Float32Array) {
  grad[0] = x[0] - 1;
  grad[1] = 10 * (x[1] + 2);
}

/** f(x, y) = (1 − x)² + 100(y − x²)², minimum at (1, 1). */
function rosenbrockGradient(x: Float32Array, grad: Float32Array) {
  const [a, b] = x;
  grad[0] = -2 * (1 - a) - 400 * a * (b - a * a);
  grad[1] = 200 * (b - a * a);
}

interface ConvergenceCase {
  name: string;
  build: (params: ParamsInput) => Optimizer;
  steps: number;
  /** Decay the rate linearly to 0 over the run, for methods whose step size does not shrink near the minimum. */
  decayLr: boolean;
  tolerance: number;
}

function minimise(
  gradient: (x: Float32Array, grad: Float32Array) => void,
  testCase: ConvergenceCase,
): Float32Array {
  const x = makeParam("x", [-1.2, 1], [0, 0]);
  const optimizer = testCase.build([x]);
  const baseLr = optimizer.lr;
  for (let step = 0; step < testCase.steps; step++) {
    if (testCase.decayLr) optimizer.lr = baseLr * (1 - step / testCase.steps);
    gradient(x.data, x.grad);
    optimizer.step();
  }
  return x.data;
}

const QUADRATIC_CASES: ConvergenceCase[] = [
  {
    name: "SGD",
    build: (p) => new SGD(p, { lr: 0.05 }),
    steps: 500,
    decayLr: false,
    tolerance: 1e-4,
  },
  {
    name: "SGDMomentum",
    build: (p) => new SGDMomentum(p, { lr: 0.02, momentum: 0.9 }),
    steps: 500,
    decayLr: false,
    tolerance: 1e-4,
  },
  {
    name: "SGDMomentum Nesterov",
    build: (p) => new SGDMomentum(p, { lr: 0.02, momentum: 0.9, nesterov: true }),
    steps: 500,
    decayLr: false,
    tolerance: 1e-4,
  },
  { name: "RMSprop", build: (p) => new RMSprop(p), steps: 2000, decayLr: true, tolerance: 1e-4 },
  {
    name: "RMSprop centered",
    build: (p) => new RMSprop(p, { momentum: 0.5, centered: true }),
    steps: 2000,
    decayLr: true,
    tolerance: 1e-4,
  },
  {
    name: "Adam",
    build: (p) => new Adam(p, { lr: 0.1 }),
    steps: 2000,
    decayLr: true,
    tolerance: 1e-4,
  },
  // Decoupled weight decay 0.01 pulls the minimum slightly toward 0.
  {
    name: "AdamW",
    build: (p) => new AdamW(p, { lr: 0.1 }),
    steps: 2000,
    decayLr: true,
    tolerance: 1e-2,
  },
];

const ROSENBROCK_CASES: ConvergenceCase[] = [
  { name: "SGD", build: (p) => new SGD(p), steps: 50_000, decayLr: false, tolerance: 1e-3 },
  {
    name: "SGDMomentum",
    build: (p) => new SGDMomentum(p, { momentum: 0.9 }),
    steps: 10_000,
    decayLr: false,
    tolerance: 1e-3,
  },
  {
    name: "SGDMomentum Nesterov",
    build: (p) => new SGDMomentum(p, { momentum: 0.9, nesterov: true }),
    steps: 10_000,
    decayLr: false,
    tolerance: 1e-3,
  },
  {
    name: "RMSprop",
    build: (p) => new RMSprop(p, { lr: 1e-3 }),
    steps: 10_000,
    decayLr: true,
    tolerance: 1e-3,
  },
  {
    name: "RMSprop centered",
    build: (p) => new RMSprop(p, { lr: 1e-3, momentum: 0.5, centered: true }),
    steps: 10_000,
    decayLr: true,
    tolerance: 1e-3,
  },
  {
    name: "Adam",
    build: (p) => new Adam(p, { lr: 0.02 }),
    steps: 10_000,
    decayLr: true,
    tolerance: 1e-3,
  },
  // Decoupled weight decay 0.01 pulls the minimum slightly toward 0.
  {
    name: "AdamW",
    build: (p) => new AdamW(p, { lr: 0.02 }),
    steps: 10_000,
    decayLr: true,
    tolerance: 1e-2,
  },
];

for (const testCase of QUADRATIC_CASES) {
  Deno.test(`${testCase.name} minimises a quadratic`, () => {
    const x = minimise(quadraticGradient, testCase);
    const distance = Math.hypot(x[0] - 1, x[1] + 2);
    assert.ok(distance < testCase.tolerance, `distance to (1, -2) is ${distance}`);
  });
}

for (const testCase of ROSENBROCK_CASES) {
  Deno.test(`${testCase.name} minimises Rosenbrock`, () => {
    const x = minimise(rosenbrockGradient, testCase);
    const distance = Math.hypot(x[0] - 1, x[1] - 1);
    assert.ok(distance < testCase.tolerance, `distance to (1, 1) is ${distance}`);
  });
}

// ---------------------------------------------------------------------------
// Gradient norm and clipping
// ---------------------------------------------------------------------------

Deno.test("gradNorm sums all gradients", () => {
  const params = [
    makeParam("a", [0, 0], [3, 4]),
    makeParam("b", [0], [12]),
    makeFrozenParam("c", [0]),
  ];
  assert.equal(gradNorm(params), 13);
});

Deno.test("clipGradNorm leaves small gradients untouched", () => {
  const a = makeParam("a", [0, 0], [3, 4]);
  const b = makeParam("b", [0], [12]);
  const before = [bits(a.grad), bits(b.grad)];

  const total = clipGradNorm([a, b], 20);

  assert.equal(total, 13);
  assert.deepEqual(bits(a.grad), before[0]);
  assert.deepEqual(bits(b.grad), before[1]);
});

Deno.test("clipGradNorm scales large gradients to limit", () => {
  const a = makeParam("a", [0, 0], [3, 4]);
  const b = makeParam("b", [0], [12]);

  const total = clipGradNorm([a, b], 6.5);

  assert.equal(total, 13);
  const coefficient = 6.5 / (13 + 1e-6);
  assertClose(a.grad[0], 3 * coefficient, 1e-6, "a[0]");
  assertClose(a.grad[1], 4 * coefficient, 1e-6, "a[1]");
  assertClose(b.grad[0], 12 * coefficient, 1e-6, "b[0]");
  assertClose(gradNorm([a, b]), 6.5, 1e-5, "norm after clipping");
});

Deno.test("clipGradNorm computes the norm in float64", () => {
  // Summing these 1e5 squares in float32 misses the exact norm by about 1.6e-5,
  // while float64 stays within 1e-12.
  const grad = new Float32Array(100_000).fill(3e-3);
  const param = { name: "p", data: new Float32Array(grad.length), grad };
  const expected = Math.sqrt(grad.length * Math.fround(3e-3) ** 2);
  assertClose(clipGradNorm([param], 10), expected, 1e-12, "total norm");
});

Deno.test("optimizer clipGradNorm covers all groups", () => {
  const a = makeParam("a", [0, 0], [3, 4]);
  const b = makeParam("b", [0], [12]);
  const optimizer = new SGD([{ params: [a] }, { params: [b], lr: 0.5 }], { lr: 0.1 });

  assert.equal(optimizer.clipGradNorm(1), 13);
  assertClose(gradNorm([a, b]), 1, 1e-6, "norm after clipping");
});

Deno.test("clipGradNorm with Infinity only measures", () => {
  const a = makeParam("a", [0, 0], [3, 4]);
  const before = bits(a.grad);
  assert.equal(clipGradNorm([a], Infinity), 5);
  assert.deepEqual(bits(a.grad), before);
});

Deno.test("clipGradNorm leaves non-finite gradients untouched", () => {
  const a = makeParam("a", [0, 0], [Number.POSITIVE_INFINITY, 4]);
  assert.equal(clipGradNorm([a], 1), Number.POSITIVE_INFINITY);
  assert.deepEqual([...a.grad], [Number.POSITIVE_INFINITY, 4]);
});

Deno.test("clipGradNorm rejects a negative limit", () => {
  assert.throws(() => clipGradNorm([makeParam("a", [0], [1])], -1), /maxNorm/);
});

Deno.test("zeroGrad fills gradients and keeps null", () => {
  const a = makeParam("a", [0, 0], [3, 4]);
  const frozen = makeFrozenParam("frozen", [0]);
  const optimizer = new AdamW([a, frozen]);
  optimizer.zeroGrad();
  assert.deepEqual([...a.grad], [0, 0]);
  assert.equal(frozen.grad, null);
});

// ---------------------------------------------------------------------------
// Save and restore
// ---------------------------------------------------------------------------

/** Three parameters. `c` gets no gradient on the first two steps, so its step count lags. */
function makeResumeParams(data?: Float32Array[]): OptimizerParameter[] {
  const params = [
    makeParam("h.0.attn.c_attn.weight", [0.3, -0.7, 1.1, 0.05], [0, 0, 0, 0]),
    makeParam("h.0.attn.c_attn.bias", [0.2, -0.1], [0, 0]),
    makeFrozenParam("c", [1.5]),
  ];
  data?.forEach((values, i) => params[i].data.set(values));
  return params;
}

/** Sets a parameter-dependent gradient, g = 2(x − 0.5) + x³, so the optimizer state evolves. */
function setResumeGradients(params: OptimizerParameter[], step: number) {
  for (const param of params) {
    if (param.name === "c" && step < 2) {
      param.grad = null;
      continue;
    }
    param.grad ??= new Float32Array(param.data.length);
    for (let i = 0; i < param.data.length; i++) {
      const x = param.data[i];
      param.grad[i] = 2 * (x - 0.5) + x * x * x;
    }
  }
}

function runSteps(optimizer: Optimizer, params: OptimizerParameter[], from: number, to: number) {
  for (let step = from; step < to; step++) {
    setResumeGradients(params, step);
    optimizer.step();
  }
}

const RESUME_CASES: { name: string; build: (params: ParamsInput) => Optimizer }[] = [
  { name: "SGD", build: (p) => new SGD(p, { lr: 0.05, weightDecay: 0.01 }) },
  {
    name: "SGDMomentum",
    build: (p) => new SGDMomentum(p, { lr: 0.05, momentum: 0.9, dampening: 0.1 }),
  },
  {
    name: "SGDMomentum Nesterov",
    build: (p) => new SGDMomentum(p, { lr: 0.05, momentum: 0.9, nesterov: true }),
  },
  { name: "RMSprop", build: (p) => new RMSprop(p) },
  { name: "RMSprop centered", build: (p) => new RMSprop(p, { momentum: 0.5, centered: true }) },
  { name: "Adam", build: (p) => new Adam(p, { lr: 0.01, weightDecay: 0.1 }) },
  {
    name: "AdamW with groups",
    build: (p) => {
      const params = p as OptimizerParameter[];
      return new AdamW([{ params: params.slice(0, 2) }, { params: params.slice(2), lr: 0.02 }], {
        lr: 0.01,
      });
    },
  },
  {
    name: "LinearWarmup",
    build: (p) => new LinearWarmup(new AdamW(p, { lr: 0.01 }), { warmupSteps: 5 }),
  },
  {
    name: "CosineWithWarmup",
    build: (p) =>
      new CosineWithWarmup(new SGDMomentum(p, { lr: 0.05, momentum: 0.9 }), {
        warmupSteps: 3,
        totalSteps: 12,
      }),
  },
];

for (const resumeCase of RESUME_CASES) {
  Deno.test(`${resumeCase.name} resumes bit-identically`, () => {
    const original = makeResumeParams();
    const optimizer = resumeCase.build(original);
    runSteps(optimizer, original, 0, 5);

    // A checkpoint: JSON for the config, copies of the buffers and parameters.
    const saved = optimizer.stateDict();
    const json = JSON.stringify(saved.config);
    const savedData = original.map((param) => param.data.slice());

    runSteps(optimizer, original, 5, 10);

    const restored = makeResumeParams(savedData);
    const resumed = resumeCase.build(restored);
    resumed.loadStateDict({ config: JSON.parse(json), buffers: saved.buffers });
    runSteps(resumed, restored, 5, 10);

    original.forEach((param, i) => {
      assert.deepEqual(bits(restored[i].data), bits(param.data), `parameter ${param.name}`);
    });
    const finalState = optimizer.stateDict();
    const resumedState = resumed.stateDict();
    assert.deepEqual(resumedState.config, finalState.config);
    for (const [key, buffer] of finalState.buffers) {
      assert.deepEqual(bits(resumedState.buffers.get(key)!), bits(buffer), `buffer ${key}`);
    }
  });
}

Deno.test("state buffers are keyed by parameter name", () => {
  const optimizer = new AdamW(makeResumeParams());
  const keys = [...optimizer.stateDict().buffers.keys()].sort();
  assert.deepEqual(keys, [
    "c.exp_avg",
    "c.exp_avg_sq",
    "h.0.attn.c_attn.bias.exp_avg",
    "h.0.attn.c_attn.bias.exp_avg_sq",
    "h.0.attn.c_attn.weight.exp_avg",
    "h.0.attn.c_attn.weight.exp_avg_sq",
  ]);
});

Deno.test("stateDict buffers are copies", () => {
  const params = makeResumeParams();
  const optimizer = new AdamW(params);
  const saved = optimizer.stateDict();
  runSteps(optimizer, params, 0, 3);
  assert.deepEqual([...saved.buffers.get("c.exp_avg")!], [0]);
});

function savedAdamW(): { optimizer: AdamW; state: OptimizerState } {
  const params = makeResumeParams();
  const optimizer = new AdamW(params);
  runSteps(optimizer, params, 0, 3);
  return { optimizer, state: optimizer.stateDict() };
}

Deno.test("loadStateDict rejects a wrong buffer length", () => {
  const { optimizer, state } = savedAdamW();
  state.buffers.set("c.exp_avg", new Float32Array(2));
  assert.throws(
    () => optimizer.loadStateDict(state),
    /buffer "c\.exp_avg" has 2 values, expected 1/,
  );
});

Deno.test("loadStateDict rejects a missing buffer", () => {
  const { optimizer, state } = savedAdamW();
  state.buffers.delete("c.exp_avg_sq");
  assert.throws(() => optimizer.loadStateDict(state), /missing buffer "c\.exp_avg_sq"/);
});

Deno.test("loadStateDict rejects an unexpected buffer", () => {
  const { optimizer, state } = savedAdamW();
  state.buffers.set("c.momentum_buffer", new Float32Array(1));
  assert.throws(() => optimizer.loadStateDict(state), /unexpected buffer "c\.momentum_buffer"/);
});

Deno.test("loadStateDict rejects a renamed parameter", () => {
  const { state } = savedAdamW();
  const params = makeResumeParams();
  params[2].name = "d";
  const other = new AdamW(params);
  assert.throws(() => other.loadStateDict(state), /parameter "c" at position 2, expected "d"/);
});

Deno.test("loadStateDict rejects another optimizer type", () => {
  const { state } = savedAdamW();
  const adam = new Adam(makeResumeParams());
  assert.throws(() => adam.loadStateDict(state), /Cannot load AdamW optimizer state into a Adam/);
});

Deno.test("loadStateDict rejects a buffer layout change", () => {
  const params = makeResumeParams();
  const state = new RMSprop(params, { centered: true }).stateDict();
  const plain = new RMSprop(makeResumeParams());
  assert.throws(() => plain.loadStateDict(state), /unexpected buffer ".*grad_avg"/);
});

Deno.test("failed loadStateDict changes nothing", () => {
  const { optimizer, state } = savedAdamW();
  const before = optimizer.stateDict();
  const fresh = new AdamW(makeResumeParams());
  const good = fresh.stateDict();
  good.buffers.set("c.exp_avg", new Float32Array(5));

  assert.throws(() => optimizer.loadStateDict(good));
  const after = optimizer.stateDict();
  assert.deepEqual(after.config, before.config);
  assert.deepEqual(bits(after.buffers.get("c.exp_avg")!), bits(state.buffers.get("c.exp_avg")!));
});

Deno.test("loadStateDict restores hyperparameters", () => {
  const saved = new AdamW(makeResumeParams(), { lr: 0.5, beta1: 0.8 }).stateDict();
  const optimizer = new AdamW(makeResumeParams());
  optimizer.loadStateDict(saved);
  assert.equal(optimizer.lr, 0.5);
  assert.equal(optimizer.paramGroups[0].lr, 0.5);
  assert.equal((optimizer.stateDict().config as OptimizerConfig).hyper.beta1, 0.8);
});

// ---------------------------------------------------------------------------
// Schedules
// ---------------------------------------------------------------------------

Deno.test("linearWarmupRate closed form", () => {
  assert.equal(linearWarmupRate(0, 2, 4), 0.5);
  assert.equal(linearWarmupRate(1, 2, 4), 1);
  assert.equal(linearWarmupRate(3, 2, 4), 2);
  assert.equal(linearWarmupRate(100, 2, 4), 2);
  assert.equal(linearWarmupRate(0, 2, 0), 2);
});

Deno.test("cosineWithWarmupRate closed form", () => {
  const [total, base, warmup, floor] = [110, 1, 10, 0.1];
  const rate = (step: number) => cosineWithWarmupRate(step, total, base, warmup, floor);
  assertClose(rate(0), 0.1, 1e-15, "step 0");
  assertClose(rate(4), 0.5, 1e-15, "step 4");
  assertClose(rate(9), 1, 1e-15, "last warmup step");
  assertClose(rate(10), 1, 1e-15, "first decay step");
  assertClose(rate(60), 0.55, 1e-15, "middle of decay");
  assertClose(rate(35), 0.1 + 0.45 * (1 + Math.SQRT1_2), 1e-15, "quarter of decay");
  assertClose(rate(109), 0.1 + 0.45 * (1 + Math.cos(Math.PI * 0.99)), 1e-15, "last step");
  assert.equal(rate(110), 0.1);
  assert.equal(rate(500), 0.1);
});

Deno.test("CosineWithWarmup default floor is 0.1 of base", () => {
  const schedule = new CosineWithWarmup(new SGD([makeParam("w", [0], [0])], { lr: 0.6 }), {
    warmupSteps: 2,
    totalSteps: 10,
  });
  assert.equal(schedule.baseLr, 0.6);
  assertClose(schedule.floor, 0.06, 1e-15, "floor");
});

Deno.test("LinearWarmup steps apply the scheduled rate", () => {
  const w = makeParam("w", [0], [1]);
  const sgd = new SGD([w], { lr: 0.5 });
  const schedule = new LinearWarmup(sgd, { warmupSteps: 4 });
  const expectedRates = [0.125, 0.25, 0.375, 0.5, 0.5, 0.5];
  let expectedValue = 0;

  expectedRates.forEach((rate, step) => {
    assert.equal(schedule.lr, rate, `rate before step ${step}`);
    schedule.step();
    assert.equal(sgd.lr, rate, `rate applied at step ${step}`);
    expectedValue -= rate;
    assertClose(w.data[0], expectedValue, 1e-6, `value after step ${step}`);
  });
  assert.equal(schedule.stepCount, 6);
});

Deno.test("CosineWithWarmup scales group rates", () => {
  const a = makeParam("a", [0], [1]);
  const b = makeParam("b", [0], [1]);
  const sgd = new SGD([{ params: [a] }, { params: [b], lr: 0.2 }], { lr: 0.1 });
  const schedule = new CosineWithWarmup(sgd, { warmupSteps: 2, totalSteps: 10 });
  schedule.step();
  assertClose(sgd.paramGroups[0].lr, 0.05, 1e-15, "group 0 rate");
  assertClose(sgd.paramGroups[1].lr, 0.1, 1e-15, "group 1 rate");
});

Deno.test("resumed schedule stretches to a new total", () => {
  const [base, warmup, floor] = [1, 10, 0.1];
  const params = [makeParam("w", [0], [0])];
  const schedule = new CosineWithWarmup(new SGD(params, { lr: base }), {
    warmupSteps: warmup,
    totalSteps: 110,
    floor,
  });
  for (let step = 0; step < 60; step++) schedule.step();
  const state = schedule.stateDict();

  const resumed = new CosineWithWarmup(new SGD([makeParam("w", [0], [0])], { lr: 3 }), {
    warmupSteps: 0,
    totalSteps: 1,
  });
  resumed.loadStateDict({
    config: JSON.parse(JSON.stringify(state.config)),
    buffers: state.buffers,
  });
  assert.equal(resumed.stepCount, 60);
  assertClose(resumed.lr, 0.55, 1e-15, "rate at step 60 with the old total");

  resumed.setTotalSteps(210);
  const stretched = floor + 0.5 * (base - floor) * (1 + Math.cos(Math.PI * 0.25));
  assertClose(resumed.lr, stretched, 1e-15, "rate at step 60 with total 210");
  assert.equal(resumed.lr, cosineWithWarmupRate(60, 210, base, warmup, floor));
  assert.equal(resumed.stateDict().config.type, "CosineWithWarmup");
  assert.equal(resumed.totalSteps, 210);
});

Deno.test("setTotalSteps rejects total below warmup", () => {
  const schedule = new CosineWithWarmup(new SGD([makeParam("w", [0], [0])]), {
    warmupSteps: 10,
    totalSteps: 100,
  });
  assert.throws(() => schedule.setTotalSteps(5), /totalSteps: 5/);
});

Deno.test("schedule lr setter sets the base rate", () => {
  const schedule = new LinearWarmup(new SGD([makeParam("w", [0], [0])], { lr: 1 }), {
    warmupSteps: 4,
  });
  schedule.lr = 2;
  assert.equal(schedule.baseLr, 2);
  assert.equal(schedule.lr, 0.5);
});

// ---------------------------------------------------------------------------
// Parameter groups and decayGroups
// ---------------------------------------------------------------------------

Deno.test("param groups apply their own lr and weightDecay", () => {
  const a = makeParam("a", [1], [0.5]);
  const b = makeParam("b", [1], [0.5]);
  const sgd = new SGD([{ params: [a], lr: 0.1, weightDecay: 0.5 }, { params: [b] }], { lr: 0.01 });
  sgd.step();
  assertClose(a.data[0], 1 - 0.1 * (0.5 + 0.5 * 1), 1e-7, "group with its own rates");
  assertClose(b.data[0], 1 - 0.01 * 0.5, 1e-7, "group with the defaults");
});

Deno.test("lr setter scales group rates proportionally", () => {
  const a = makeParam("a", [1], [0.5]);
  const b = makeParam("b", [1], [0.5]);
  const sgd = new SGD([{ params: [a], lr: 0.1 }, { params: [b] }], { lr: 0.01 });
  assert.equal(sgd.paramGroups[0].lrScale, 10);

  sgd.lr = 0.02;
  assert.equal(sgd.lr, 0.02);
  assertClose(sgd.paramGroups[0].lr, 0.2, 1e-15, "group 0");
  assert.equal(sgd.paramGroups[1].lr, 0.02);

  sgd.lr = 0;
  assert.equal(sgd.paramGroups[0].lr, 0);
  sgd.lr = 0.01;
  assertClose(sgd.paramGroups[0].lr, 0.1, 1e-15, "group 0 after rate 0");
});

Deno.test("AdamW decays only the decay group", () => {
  const params = [
    { ...makeParam("h.0.mlp.c_fc.weight", [1, 2, 3, 4], [0, 0, 0, 0]), shape: [2, 2] },
    { ...makeParam("h.0.mlp.c_fc.bias", [1, 2], [0, 0]), shape: [2] },
  ];
  const optimizer = new AdamW(decayGroups(params, 0.1), { lr: 0.5 });
  optimizer.step();

  // With zero gradients the Adam step is 0, leaving only p ← p − lr·wd·p.
  const expected = [1, 2, 3, 4].map((p) => p - 0.5 * 0.1 * p);
  expected.forEach((value, i) => assertClose(params[0].data[i], value, 1e-7, `weight ${i}`));
  assert.deepEqual([...params[1].data], [1, 2]);
});

Deno.test("decayGroups splits matrices from the rest", () => {
  const shaped = (name: string, shape: number[]) => ({
    name,
    data: new Float32Array(shape.reduce((a, b) => a * b, 1)),
    grad: null,
    shape,
  });
  const params = [
    shaped("wte.weight", [10, 4]),
    shaped("transformer.wpe.weight", [8, 4]),
    shaped("h.0.attn.c_attn.weight", [4, 12]),
    shaped("h.0.attn.c_attn.bias", [12]),
    shaped("h.0.ln_1.weight", [4]),
    shaped("h.0.ln_1.bias", [4]),
    shaped("ln_f.weight", [4]),
    shaped("lm_head.weight", [10, 4]),
    shaped("conv.weight", [2, 2, 3]),
  ];

  const [decay, noDecay] = decayGroups(params, 0.1);

  assert.deepEqual(decay.params.map((p) => p.name), [
    "h.0.attn.c_attn.weight",
    "lm_head.weight",
    "conv.weight",
  ]);
  assert.deepEqual(noDecay.params.map((p) => p.name), [
    "wte.weight",
    "transformer.wpe.weight",
    "h.0.attn.c_attn.bias",
    "h.0.ln_1.weight",
    "h.0.ln_1.bias",
    "ln_f.weight",
  ]);
  assert.equal(decay.weightDecay, 0.1);
  assert.equal(noDecay.weightDecay, 0);
  assert.equal(decay.lr, undefined);
});

Deno.test("decayGroups rejects a missing shape", () => {
  assert.throws(() => decayGroups([makeFrozenParam("w", [1, 2])], 0.1), /"w" has no shape/);
});

Deno.test("decayGroups rejects a mismatched shape", () => {
  const param = { ...makeFrozenParam("w", [1, 2]), shape: [3, 2] };
  assert.throws(() => decayGroups([param], 0.1), /shape \[3, 2\] \(6 values\) but 2 values/);
});

// ---------------------------------------------------------------------------
// Input validation
// ---------------------------------------------------------------------------

Deno.test("optimizer rejects duplicate parameter names", () => {
  const params = [makeFrozenParam("w", [1]), makeFrozenParam("w", [2])];
  assert.throws(() => new SGD(params), /"w" appears twice/);
});

Deno.test("optimizer rejects an empty parameter list", () => {
  assert.throws(() => new SGD([]), /empty parameter list/);
});

Deno.test("optimizer rejects a gradient length mismatch", () => {
  const sgd = new SGD([makeParam("w", [1, 2], [1])]);
  assert.throws(() => sgd.step(), /"w" has 2 values but its gradient has 1/);
});

Deno.test("optimizer rejects invalid hyperparameters", () => {
  const params = () => [makeFrozenParam("w", [1])];
  assert.throws(() => new SGD(params(), { lr: -1 }), /Invalid lr: -1/);
  assert.throws(() => new Adam(params(), { beta1: 1 }), /Invalid beta1: 1/);
  assert.throws(() => new RMSprop(params(), { eps: Number.NaN }), /Invalid eps/);
  assert.throws(
    () => new SGDMomentum(params(), { momentum: 0.9, dampening: 0.1, nesterov: true }),
    /Nesterov momentum requires/,
  );
  assert.throws(
    () => new SGD([{ params: params(), lr: 0.1 }], { lr: 0 }),
    /base lr is 0/,
  );
});

// ---------------------------------------------------------------------------
// Backend path
// ---------------------------------------------------------------------------

/** Returns a backend with only the kernels Adam uses, which records each call and runs the reference loop. */
function recordingBackend(): AdamBackend & { calls: AdamWStep[]; allocations: number } {
  const backend = {
    calls: [] as AdamWStep[],
    allocations: 0,
    alloc(length: number) {
      backend.allocations += 1;
      return new Float32Array(length);
    },
    adamwUpdate(
      param: Float32Array,
      grad: Float32Array,
      m: Float32Array,
      v: Float32Array,
      hyper: AdamWStep,
    ) {
      backend.calls.push({ ...hyper });
      adamwReference(param, grad, m, v, hyper);
    },
  };
  return backend;
}

Deno.test("AdamW runs backend.adamwUpdate when given", () => {
  const backend = recordingBackend();
  const withBackend = makeResumeParams();
  const plain = makeResumeParams();
  const fast = new AdamW(withBackend, { lr: 0.01, backend });
  const reference = new AdamW(plain, { lr: 0.01 });

  runSteps(fast, withBackend, 0, 3);
  runSteps(reference, plain, 0, 3);

  plain.forEach((param, i) => {
    assert.deepEqual(bits(withBackend[i].data), bits(param.data), `parameter ${param.name}`);
  });
  assert.equal(backend.allocations, 6);
  // Two parameters update on steps 0 and 1, and all three on step 2, where c takes its first step.
  assert.deepEqual(backend.calls.map((call) => call.step), [1, 1, 2, 2, 3, 3, 1]);
  assert.ok(backend.calls.every((call) => call.weightDecay === 0.01 && call.lr === 0.01));
});

Deno.test("Adam uses the backend only without weight decay", () => {
  const backend = recordingBackend();
  const a = makeParam("a", [1, 2], [0.1, 0.2]);
  const b = makeParam("b", [3], [0.3]);
  const adam = new Adam([{ params: [a] }, { params: [b], weightDecay: 0.1 }], { backend });

  adam.step();

  assert.equal(backend.calls.length, 1);
  assert.equal(backend.calls[0].weightDecay, 0);
  assert.equal(backend.calls[0].step, 1);
});

Deno.test("AdamW with jsBackend matches the plain loop", () => {
  const withBackend = makeResumeParams();
  const plain = makeResumeParams();
  const fast = new AdamW(withBackend, { lr: 0.01, backend: jsBackend });
  const reference = new AdamW(plain, { lr: 0.01 });

  runSteps(fast, withBackend, 0, 6);
  runSteps(reference, plain, 0, 6);

  plain.forEach((param, i) => {
    assert.deepEqual(bits(withBackend[i].data), bits(param.data), `parameter ${param.name}`);
  });
});

Deno.test("Adam with jsBackend matches the plain loop", () => {
  const withBackend = makeResumeParams();
  const plain = makeResumeParams();
  const fast = new Adam(withBackend, { lr: 0.01, backend: jsBackend });
  const reference = new Adam(plain, { lr: 0.01 });

  runSteps(fast, withBackend, 0, 6);
  runSteps(reference, plain, 0, 6);

  plain.forEach((param, i) => {
    assert.deepEqual(bits(withBackend[i].data), bits(param.data), `parameter ${param.name}`);
  });
});
