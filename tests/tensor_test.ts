/**
 * Gradient checks: every tensor operation's backward pass against central
 * finite differences of its forward pass.
 */

import assert from "node:assert/strict";
import { Random } from "../lib/random.ts";
import { causalMask, concatCols, embedding, noGrad, Tensor } from "../lib/tensor.ts";

const random = new Random(1234);

/** Returns a tensor of N(0, scale²) samples plus `offset` that records gradients. */
function randomTensor(shape: number[], scale = 1, offset = 0): Tensor {
  const size = shape.reduce((a, b) => a * b, 1);
  const values = Array.from({ length: size }, () => offset + scale * random.normal());
  return Tensor.from(values, shape, { requiresGrad: true });
}

/**
 * Checks the gradients of `f` with respect to each input against central
 * differences. `f` is reduced to a scalar through a fixed random weighting,
 * so every output element contributes a different amount.
 */
function gradCheck(
  name: string,
  inputs: Tensor[],
  f: (...xs: Tensor[]) => Tensor,
  { eps = 1e-2, tolerance = 2e-2 } = {},
): void {
  const output = f(...inputs);
  const weights = new Tensor(
    Float32Array.from({ length: output.size }, () => random.normal()),
    output.shape,
  );
  const objective = () => f(...inputs).mul(weights).sum().item();

  for (const x of inputs) x.grad = null;
  f(...inputs).mul(weights).sum().backward();

  inputs.forEach((x, n) => {
    if (!x.requiresGrad) return;
    const analytic = x.grad ?? new Float32Array(x.size);
    for (let i = 0; i < x.size; i++) {
      const saved = x.data[i];
      x.data[i] = saved + eps;
      const up = noGrad(objective);
      x.data[i] = saved - eps;
      const down = noGrad(objective);
      x.data[i] = saved;
      const numeric = (up - down) / (2 * eps);
      const error = Math.abs(analytic[i] - numeric);
      const scale = Math.max(1, Math.abs(numeric), Math.abs(analytic[i]));
      assert.ok(
        error <= tolerance * scale,
        `${name}: input ${n} element ${i}: analytic ${analytic[i]}, numeric ${numeric}`,
      );
    }
  });
}

Deno.test("add, same shape and bias broadcast", () => {
  gradCheck("add", [randomTensor([3, 4]), randomTensor([3, 4])], (a, b) => a.add(b));
  gradCheck("add bias", [randomTensor([2, 3, 4]), randomTensor([4])], (a, b) => a.add(b));
  gradCheck("add scalar", [randomTensor([2, 3])], (a) => a.add(2.5));
});

Deno.test("sub, same shape and bias broadcast", () => {
  gradCheck("sub", [randomTensor([3, 4]), randomTensor([3, 4])], (a, b) => a.sub(b));
  gradCheck("sub bias", [randomTensor([2, 3, 4]), randomTensor([3, 4])], (a, b) => a.sub(b));
  gradCheck("sub scalar", [randomTensor([5])], (a) => a.sub(1));
});

Deno.test("mul, same shape and bias broadcast", () => {
  gradCheck("mul", [randomTensor([3, 4]), randomTensor([3, 4])], (a, b) => a.mul(b));
  gradCheck("mul bias", [randomTensor([2, 3, 4]), randomTensor([4])], (a, b) => a.mul(b));
  gradCheck("mul scalar", [randomTensor([4])], (a) => a.mul(-3));
  gradCheck("neg", [randomTensor([4])], (a) => a.neg());
});

Deno.test("div, same shape and bias broadcast", () => {
  gradCheck("div", [randomTensor([3, 4]), randomTensor([3, 4], 0.3, 2)], (a, b) => a.div(b));
  gradCheck("div bias", [randomTensor([2, 3]), randomTensor([3], 0.3, -2)], (a, b) => a.div(b));
  gradCheck("div scalar", [randomTensor([4])], (a) => a.div(4));
});

Deno.test("a tensor used twice accumulates", () => {
  const a = Tensor.from([1, 2, 3], [3], { requiresGrad: true });
  a.mul(a).sum().backward();
  assert.deepEqual([...a.grad!], [2, 4, 6]);
  gradCheck("x·x + x", [randomTensor([3])], (x) => x.mul(x).add(x));
});

Deno.test("add of a tensor to itself", () => {
  gradCheck("x + x", [randomTensor([2, 3])], (x) => x.add(x));
});

Deno.test("backward frees intermediate gradients", () => {
  const x = randomTensor([2, 3]);
  const hidden = x.mul(x);
  const loss = hidden.add(x).sum();
  loss.backward();
  assert.equal(hidden.grad, null, "intermediate gradient");
  assert.notEqual(x.grad, null, "leaf gradient kept");
  assert.notEqual(loss.grad, null, "output gradient kept");
  loss.release();
});

Deno.test("dot, 2-D and 3-D by 2-D", () => {
  gradCheck("dot 2-D", [randomTensor([3, 5]), randomTensor([5, 4])], (a, b) => a.dot(b));
  gradCheck("dot 3-D", [randomTensor([2, 3, 5]), randomTensor([5, 4])], (a, b) => a.dot(b));
  gradCheck(
    "dot transposed",
    [randomTensor([2, 3, 5]), randomTensor([4, 5])],
    (a, b) => a.dot(b, true),
  );
});

Deno.test("dot values", () => {
  const a = Tensor.from([1, 2, 3, 4, 5, 6], [2, 3]);
  const b = Tensor.from([1, 0, 0, 1, 1, 1], [3, 2]);
  assert.deepEqual([...a.dot(b).data], [4, 5, 10, 11]);
  assert.deepEqual(a.dot(b).shape, [2, 2]);
  assert.throws(() => a.dot(a), /inner dimensions differ/);
});

Deno.test("linear, 2-D and 3-D", () => {
  gradCheck(
    "linear 2-D",
    [randomTensor([3, 5]), randomTensor([5, 4]), randomTensor([4])],
    (x, w, b) => x.linear(w, b),
  );
  gradCheck(
    "linear 3-D",
    [randomTensor([2, 3, 5]), randomTensor([5, 4]), randomTensor([4])],
    (x, w, b) => x.linear(w, b),
  );
});

Deno.test("linear equals dot plus bias", () => {
  const x = randomTensor([2, 7, 5]);
  const w = randomTensor([5, 6]);
  const b = randomTensor([6]);
  const fused = x.linear(w, b);
  const spelled = x.dot(w).add(b);
  assert.deepEqual(fused.shape, spelled.shape);
  for (let i = 0; i < fused.size; i++) {
    assert.ok(Math.abs(fused.data[i] - spelled.data[i]) < 1e-5, `element ${i}`);
  }
  assert.throws(() => x.linear(w, randomTensor([5])), /shapes do not match/);
  assert.throws(() => x.linear(randomTensor([4, 6]), b), /shapes do not match/);
});

Deno.test("bmm", () => {
  gradCheck("bmm", [randomTensor([3, 2, 4]), randomTensor([3, 4, 5])], (a, b) => a.bmm(b));
});

Deno.test("transposeLast2 and transpose", () => {
  const x = Tensor.from([1, 2, 3, 4, 5, 6], [2, 3]);
  assert.deepEqual([...x.transposeLast2().data], [1, 4, 2, 5, 3, 6]);
  assert.deepEqual(x.transposeLast2().shape, [3, 2]);
  gradCheck("transposeLast2", [randomTensor([2, 3, 4])], (a) => a.transposeLast2());
  gradCheck("transpose(1, 2)", [randomTensor([2, 3, 4, 2])], (a) => a.transpose(1, 2));
});

Deno.test("softmax and logSoftmax", () => {
  gradCheck("softmax", [randomTensor([3, 5])], (a) => a.softmax());
  gradCheck("logSoftmax", [randomTensor([3, 5])], (a) => a.logSoftmax());

  const big = Tensor.from([1000, 1001, 1002], [1, 3]);
  const p = big.softmax().data;
  assert.ok(p.every(Number.isFinite), `softmax of large logits is not finite: ${p}`);
  assert.ok(Math.abs(p[0] + p[1] + p[2] - 1) < 1e-6);
  const lp = big.logSoftmax().data;
  assert.ok(Math.abs(lp[2] - -0.40760596) < 1e-5, `logSoftmax of large logits: ${lp}`);
});

Deno.test("sum and mean, all and one axis", () => {
  const x = Tensor.from([1, 2, 3, 4, 5, 6], [2, 3]);
  assert.equal(x.sum().item(), 21);
  assert.deepEqual([...x.sum(0).data], [5, 7, 9]);
  assert.deepEqual([...x.mean(1).data], [2, 5]);
  assert.deepEqual(x.mean(-1).shape, [2]);
  gradCheck("sum", [randomTensor([2, 3])], (a) => a.sum());
  gradCheck("sum axis 1", [randomTensor([2, 3, 4])], (a) => a.sum(1));
  gradCheck("mean", [randomTensor([2, 3])], (a) => a.mean());
  gradCheck("mean axis 0", [randomTensor([2, 3, 4])], (a) => a.mean(0));
});

Deno.test("reshape, sliceCols, concatCols", () => {
  gradCheck("reshape", [randomTensor([2, 6])], (a) => a.reshape([3, 4]).mul(a.reshape([3, 4])));
  gradCheck("sliceCols", [randomTensor([3, 6])], (a) => a.sliceCols(1, 4));
  gradCheck(
    "concatCols",
    [randomTensor([2, 3, 2]), randomTensor([2, 3, 3])],
    (a, b) => concatCols([a, b]),
  );
  const x = Tensor.from([1, 2, 3, 4], [2, 2]);
  assert.deepEqual([...concatCols([x, x.sliceCols(1, 2)]).data], [1, 2, 2, 3, 4, 4]);
  assert.throws(() => x.reshape([3]), /cannot reshape/);
});

Deno.test("gelu and relu", () => {
  gradCheck("gelu", [randomTensor([4, 5], 2)], (a) => a.gelu());
  const x = Tensor.from([-1, 0.5, 2], [3]).gelu().data;
  // Reference values of the tanh approximation.
  assert.ok(Math.abs(x[0] - -0.15880801) < 1e-6, `gelu(-1) = ${x[0]}`);
  assert.ok(Math.abs(x[2] - 1.95459769) < 1e-6, `gelu(2) = ${x[2]}`);
  gradCheck(
    "relu",
    [Tensor.from([-1, 0.5, 2, -0.3], [4], { requiresGrad: true })],
    (a) => a.relu(),
  );
});

Deno.test("layerNorm", () => {
  gradCheck(
    "layerNorm",
    [randomTensor([2, 3, 6]), randomTensor([6], 0.5, 1), randomTensor([6])],
    (x, g, b) => x.layerNorm(g, b),
  );
  const y = Tensor.from([1, 2, 3, 4], [1, 4]).layerNorm(
    Tensor.from([1, 1, 1, 1], [4]),
    Tensor.from([0, 0, 0, 0], [4]),
  );
  assert.ok(Math.abs(y.mean().item()) < 1e-6);
  assert.ok(Math.abs(y.mul(y).mean().item() - 1) < 1e-4);
});

Deno.test("embedding gathers and accumulates repeats", () => {
  const weight = randomTensor([5, 3]);
  const ids = Int32Array.from([1, 3, 1, 1]);
  gradCheck("embedding", [weight], (w) => embedding(w, ids, [2, 2]));

  weight.grad = null;
  embedding(weight, ids, [4]).sum().backward();
  assert.deepEqual([...weight.grad!.subarray(3, 6)], [3, 3, 3]);
  assert.deepEqual([...weight.grad!.subarray(0, 3)], [0, 0, 0]);
  assert.throws(() => embedding(weight, Int32Array.from([5]), [1]), /outside \[0, 5\)/);
});

Deno.test("causal mask and maskedFill", () => {
  const mask = causalMask(3);
  assert.deepEqual([...mask], [0, 1, 1, 0, 0, 1, 0, 0, 0]);
  const weights = Tensor.from(new Array(9).fill(0), [1, 3, 3]).maskedFill(mask, -Infinity)
    .softmax().data;
  assert.deepEqual([...weights].map((w) => +w.toFixed(4)), [
    1,
    0,
    0,
    0.5,
    0.5,
    0,
    0.3333,
    0.3333,
    0.3333,
  ]);
  gradCheck(
    "maskedFill softmax",
    [randomTensor([2, 3, 3])],
    (a) => a.maskedFill(mask, -Infinity).softmax(),
  );
});

Deno.test("nllLoss and crossEntropy", () => {
  const targets = Int32Array.from([0, 3, 2]);
  gradCheck("crossEntropy", [randomTensor([3, 4])], (a) => a.crossEntropy(targets));
  gradCheck("nllLoss", [randomTensor([3, 4])], (a) => a.nllLoss(targets));

  const uniform = Tensor.zeros([2, 8]).crossEntropy(Int32Array.from([1, 5]));
  assert.ok(Math.abs(uniform.item() - Math.log(8)) < 1e-6);
  assert.throws(() => Tensor.zeros([1, 4]).crossEntropy(Int32Array.from([4])), /outside/);
  assert.throws(() => Tensor.zeros([2, 4]).crossEntropy(Int32Array.from([1])), /1 targets/);
});

Deno.test("crossEntropy equals logSoftmax then nllLoss", () => {
  const targets = Int32Array.from([0, 3, 2, 3, 1, 0]);
  const fusedInput = randomTensor([2, 3, 4], 3);
  const spelledInput = Tensor.from(fusedInput.data, fusedInput.shape, { requiresGrad: true });
  const fused = fusedInput.crossEntropy(targets);
  const spelled = spelledInput.logSoftmax().nllLoss(targets);
  assert.ok(Math.abs(fused.item() - spelled.item()) < 1e-6);

  fused.backward();
  spelled.backward();
  for (let i = 0; i < fusedInput.size; i++) {
    const difference = Math.abs(fusedInput.grad![i] - spelledInput.grad![i]);
    assert.ok(difference < 1e-6, `gradient element ${i}`);
  }
});

Deno.test("fused attention", () => {
  gradCheck("attention", [randomTensor([2, 4, 3 * 6])], (qkv) => qkv.attention(2));
});

Deno.test("dropout scales kept values", () => {
  const x = Tensor.from(new Array(1000).fill(1), [1000], { requiresGrad: true });
  const draws = new Random(7);
  const y = x.dropout(0.25, () => draws.next());
  const kept = [...y.data].filter((v) => v !== 0);
  assert.ok(kept.every((v) => Math.abs(v - 4 / 3) < 1e-6));
  assert.ok(Math.abs(kept.length / 1000 - 0.75) < 0.05, `kept ${kept.length} of 1000`);
  y.sum().backward();
  assert.deepEqual([...x.grad!], [...y.data]);
  assert.equal(noGrad(() => x.dropout(0.5, () => draws.next())), x);
});

Deno.test("noGrad records no graph", () => {
  const w = randomTensor([3, 3]);
  const y = noGrad(() => w.dot(w).sum());
  assert.equal(y.requiresGrad, false);
  assert.throws(() => Tensor.zeros([2]).backward(), /scalar output/);
});

Deno.test("release keeps leaves", () => {
  const w = randomTensor([3, 3]);
  const loss = w.dot(w).gelu().sum();
  loss.backward();
  const grad = w.grad!.slice();
  loss.release();
  assert.deepEqual([...w.grad!], [...grad]);
  assert.equal(w.data.length, 9);
});
