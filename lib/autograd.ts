/**
 * The first rung: reverse-mode automatic differentiation on single numbers.
 *
 * Every `Value` stores one number, the gradient of the final output with
 * respect to it, and a link to the values it was computed from. Each operation
 * builds a new `Value` and a closure that applies the chain rule for that one
 * step. `backward()` orders the graph so that every node comes after all of its
 * users, then runs those closures from the output down. The design follows
 * Andrej Karpathy's micrograd.
 *
 * The second half of the file builds a multilayer perceptron (`Neuron`,
 * `Layer`, `MLP`) from nothing but `Value`s, which is slow but shows every
 * multiply and add that a tensor library later does in bulk.
 *
 * Numerics follow JavaScript: no operation throws on a bad input. `log` of 0 is
 * `-Infinity`, `log` of a negative number is `NaN`, `pow` of a negative base to
 * a fractional exponent is `NaN`, and such values propagate through the rest of
 * the forward and backward pass.
 *
 * @example
 * ```ts
 * import { Value } from "./autograd.ts";
 *
 * const a = new Value(2);
 * const b = new Value(-3);
 * const y = a.mul(b).add(a.pow(2)); // a·b + a² = -2
 * y.backward();
 * console.log(a.grad, b.grad); // b + 2a = 1, a = 2
 * ```
 *
 * @module
 */

/** A number accepted wherever a `Value` is: it becomes a constant leaf. */
export type Operand = Value | number;

/**
 * A scalar that records how it was computed, so that gradients can flow back
 * to its inputs.
 *
 * @example
 * ```ts
 * const x = new Value(0.5);
 * const y = x.tanh();
 * y.backward();
 * console.log(y.data, x.grad); // tanh(0.5), 1 - tanh(0.5)²
 * ```
 */
export class Value {
  /** The number computed in the forward pass. */
  data: number;
  /** ∂output/∂this, filled in by `backward()` on some output. */
  grad = 0;

  #children: readonly Value[] = [];
  #op = "";
  /** Adds this node's `grad`, times the local derivatives, into the children's `grad`. */
  #backward: () => void = () => {};

  /** Creates a leaf: a value with no inputs, such as a weight or a constant. */
  constructor(data: number) {
    this.data = data;
  }

  /** The values this one was computed from, or none for a leaf. */
  get children(): readonly Value[] {
    return this.#children;
  }

  /** The operation that produced this value, such as `"*"` or `"tanh"`, or `""` for a leaf. */
  get op(): string {
    return this.#op;
  }

  /** Creates the output node of one operation. The caller then sets its `#backward`. */
  static #node(data: number, op: string, children: readonly Value[]): Value {
    const out = new Value(data);
    out.#op = op;
    out.#children = children;
    return out;
  }

  /** Wraps a plain number as a constant leaf and passes a `Value` through unchanged. */
  static #lift(operand: Operand): Value {
    return operand instanceof Value ? operand : new Value(operand);
  }

  /**
   * Returns `this + other`.
   *
   * @example
   * ```ts
   * new Value(2).add(3).data; // 5
   * ```
   */
  add(other: Operand): Value {
    const that = Value.#lift(other);
    const out = Value.#node(this.data + that.data, "+", [this, that]);
    out.#backward = () => {
      // ∂(a + b)/∂a = 1, ∂(a + b)/∂b = 1
      this.grad += out.grad;
      that.grad += out.grad;
    };
    return out;
  }

  /**
   * Returns `this - other`.
   *
   * @example
   * ```ts
   * new Value(2).sub(3).data; // -1
   * ```
   */
  sub(other: Operand): Value {
    const that = Value.#lift(other);
    const out = Value.#node(this.data - that.data, "-", [this, that]);
    out.#backward = () => {
      // ∂(a − b)/∂a = 1, ∂(a − b)/∂b = −1
      this.grad += out.grad;
      that.grad -= out.grad;
    };
    return out;
  }

  /**
   * Returns `this * other`.
   *
   * @example
   * ```ts
   * new Value(2).mul(3).data; // 6
   * ```
   */
  mul(other: Operand): Value {
    const that = Value.#lift(other);
    const out = Value.#node(this.data * that.data, "*", [this, that]);
    out.#backward = () => {
      // ∂(a·b)/∂a = b, ∂(a·b)/∂b = a
      this.grad += that.data * out.grad;
      that.grad += this.data * out.grad;
    };
    return out;
  }

  /**
   * Returns `this / other`. Division by 0 gives `±Infinity` or `NaN`, as in JavaScript.
   *
   * @example
   * ```ts
   * new Value(3).div(2).data; // 1.5
   * ```
   */
  div(other: Operand): Value {
    const that = Value.#lift(other);
    const out = Value.#node(this.data / that.data, "/", [this, that]);
    out.#backward = () => {
      // ∂(a/b)/∂a = 1/b, ∂(a/b)/∂b = −a/b²
      this.grad += out.grad / that.data;
      that.grad += (-this.data / (that.data * that.data)) * out.grad;
    };
    return out;
  }

  /**
   * Returns `this ** exponent` for a constant exponent. A negative base with a
   * fractional exponent gives `NaN`, and the derivative at a base of 0 with an
   * exponent below 1 is infinite, as `Math.pow` computes them.
   *
   * @example
   * ```ts
   * new Value(3).pow(2).data; // 9
   * ```
   */
  pow(exponent: number): Value {
    const out = Value.#node(this.data ** exponent, `**${exponent}`, [this]);
    out.#backward = () => {
      // ∂(xⁿ)/∂x = n·xⁿ⁻¹
      this.grad += exponent * this.data ** (exponent - 1) * out.grad;
    };
    return out;
  }

  /**
   * Returns `-this`.
   *
   * @example
   * ```ts
   * new Value(2).neg().data; // -2
   * ```
   */
  neg(): Value {
    const out = Value.#node(-this.data, "neg", [this]);
    out.#backward = () => {
      // ∂(−x)/∂x = −1
      this.grad -= out.grad;
    };
    return out;
  }

  /**
   * Returns `max(0, this)`. The derivative at exactly 0 is taken as 0.
   *
   * @example
   * ```ts
   * new Value(-2).relu().data; // 0
   * ```
   */
  relu(): Value {
    const out = Value.#node(this.data > 0 ? this.data : 0, "relu", [this]);
    out.#backward = () => {
      // ∂relu(x)/∂x = 1 where x > 0, else 0
      this.grad += (this.data > 0 ? 1 : 0) * out.grad;
    };
    return out;
  }

  /**
   * Returns the hyperbolic tangent of `this`.
   *
   * @example
   * ```ts
   * new Value(0).tanh().data; // 0
   * ```
   */
  tanh(): Value {
    const t = Math.tanh(this.data);
    const out = Value.#node(t, "tanh", [this]);
    out.#backward = () => {
      // ∂tanh(x)/∂x = 1 − tanh²(x)
      this.grad += (1 - t * t) * out.grad;
    };
    return out;
  }

  /**
   * Returns `e ** this`.
   *
   * @example
   * ```ts
   * new Value(0).exp().data; // 1
   * ```
   */
  exp(): Value {
    const out = Value.#node(Math.exp(this.data), "exp", [this]);
    out.#backward = () => {
      // ∂eˣ/∂x = eˣ
      this.grad += out.data * out.grad;
    };
    return out;
  }

  /**
   * Returns the natural logarithm of `this`: `-Infinity` at 0 and `NaN` below 0,
   * as `Math.log` gives. The derivative `1/x` is applied in either case.
   *
   * @example
   * ```ts
   * new Value(Math.E).log().data; // 1
   * ```
   */
  log(): Value {
    const out = Value.#node(Math.log(this.data), "log", [this]);
    out.#backward = () => {
      // ∂ln(x)/∂x = 1/x
      this.grad += out.grad / this.data;
    };
    return out;
  }

  /**
   * Computes ∂this/∂v for every value `v` this one depends on and adds it into `v.grad`.
   *
   * Calling it again, on this output or another one sharing the same inputs,
   * behaves as in PyTorch. Leaves (values made with `new Value`, such as weights)
   * accumulate, so two calls give them twice the gradient, and a training loop
   * zeroes them before each step. Every computed node, including this output,
   * is reset first, so its `grad` always contains the result of the latest call.
   *
   * @example
   * ```ts
   * const w = new Value(3);
   * const loss = w.mul(w); // w²
   * loss.backward();
   * console.log(w.grad); // 2w = 6
   * ```
   */
  backward(): void {
    const order = this.#topologicalOrder();

    for (const node of order) {
      if (node.#children.length > 0) node.grad = 0;
    }
    this.grad += 1;

    // Reverse topological order: a node's grad is complete before it is passed on.
    for (let i = order.length - 1; i >= 0; i--) {
      order[i].#backward();
    }
  }

  /**
   * Returns every value this one depends on, itself last, each after all of its children.
   * The depth-first search keeps an explicit stack because a long chain of
   * operations would overflow the call stack of a recursive one.
   */
  #topologicalOrder(): Value[] {
    const order: Value[] = [];
    const visited = new Set<Value>();
    const stack: { node: Value; expanded: boolean }[] = [{ node: this, expanded: false }];

    while (stack.length > 0) {
      const entry = stack.pop()!;
      if (entry.expanded) {
        order.push(entry.node);
        continue;
      }
      if (visited.has(entry.node)) continue;
      visited.add(entry.node);

      // Revisit this node once all of its children have been emitted.
      stack.push({ node: entry.node, expanded: true });
      for (const child of entry.node.#children) {
        if (!visited.has(child)) stack.push({ node: child, expanded: false });
      }
    }
    return order;
  }

  /** Returns a short description, such as `Value(data=6, grad=1)`. */
  toString(): string {
    return `Value(data=${this.data}, grad=${this.grad})`;
  }
}

// ---------------------------------------------------------------------------
// A multilayer perceptron made of Values.

/**
 * Returns a seeded generator of uniform numbers in [0, 1). It is the
 * mulberry32 generator, with 32 bits of state, which is fast and good enough
 * for initial weights and toy data but not for cryptography.
 *
 * @example
 * ```ts
 * const rng = mulberry32(42);
 * rng(); // the same number on every run
 * ```
 */
export function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The nonlinearity a neuron applies to `w·x + b`, where `"linear"` means none. */
export type Activation = "relu" | "tanh" | "linear";

/**
 * One unit: `activation(w·x + b)`, with weights drawn uniformly from [-1, 1)
 * and the bias starting at 0.
 *
 * @example
 * ```ts
 * const neuron = new Neuron(2, mulberry32(1), "tanh");
 * const y = neuron.forward([0.5, -1]);
 * ```
 */
export class Neuron {
  /** One weight per input. */
  readonly weights: Value[];
  /** Bias `b`, starting at 0. */
  readonly bias: Value;
  /** Nonlinearity applied to `w·x + b`. */
  readonly activation: Activation;

  /** Creates a neuron with `inputs` weights drawn from `rng`. */
  constructor(inputs: number, rng: () => number, activation: Activation = "relu") {
    this.weights = Array.from({ length: inputs }, () => new Value(rng() * 2 - 1));
    this.bias = new Value(0);
    this.activation = activation;
  }

  /** Computes `activation(w·x + b)` for one input vector of the neuron's width. */
  forward(x: readonly Operand[]): Value {
    if (x.length !== this.weights.length) {
      throw new RangeError(
        `Neuron expected ${this.weights.length} inputs, got ${x.length}`,
      );
    }

    let sum = this.bias;
    for (let i = 0; i < x.length; i++) {
      sum = sum.add(this.weights[i].mul(x[i]));
    }

    switch (this.activation) {
      case "relu":
        return sum.relu();
      case "tanh":
        return sum.tanh();
      case "linear":
        return sum;
    }
  }

  /** Returns the weights followed by the bias. */
  parameters(): Value[] {
    return [...this.weights, this.bias];
  }
}

/**
 * A fully connected layer: `outputs` neurons that all read the same inputs.
 *
 * @example
 * ```ts
 * const layer = new Layer(3, 4, mulberry32(1));
 * const ys = layer.forward([1, 2, 3]); // 4 Values
 * ```
 */
export class Layer {
  /** Neurons in output order, all reading the same inputs. */
  readonly neurons: Neuron[];

  /** Creates `outputs` neurons of `inputs` weights each, drawn in order from `rng`. */
  constructor(inputs: number, outputs: number, rng: () => number, activation: Activation = "relu") {
    this.neurons = Array.from({ length: outputs }, () => new Neuron(inputs, rng, activation));
  }

  /** Computes every neuron's output for one input vector. */
  forward(x: readonly Operand[]): Value[] {
    return this.neurons.map((neuron) => neuron.forward(x));
  }

  /** Returns the parameters of every neuron, neuron by neuron. */
  parameters(): Value[] {
    return this.neurons.flatMap((neuron) => neuron.parameters());
  }
}

/**
 * A multilayer perceptron. Hidden layers apply `activation` and the last layer
 * is linear, so its outputs are raw scores for a loss to interpret.
 *
 * @example
 * ```ts
 * const model = new MLP(2, [16, 16, 1], mulberry32(42));
 * const [score] = model.forward([0.3, -0.7]);
 * score.backward();
 * model.zeroGrad();
 * ```
 */
export class MLP {
  /** Layers from input to output. Only the last one is linear. */
  readonly layers: Layer[];

  /**
   * Creates layers of the given `sizes`, the first reading `inputs` numbers.
   * For example, `new MLP(2, [16, 16, 1], rng)` maps 2 inputs through two hidden
   * layers of 16 to 1 output.
   */
  constructor(
    inputs: number,
    sizes: readonly number[],
    rng: () => number,
    activation: Activation = "relu",
  ) {
    if (sizes.length === 0) {
      throw new RangeError("MLP needs at least one layer size, got []");
    }
    const widths = [inputs, ...sizes];
    this.layers = sizes.map((size, i) => {
      const isLast = i === sizes.length - 1;
      return new Layer(widths[i], size, rng, isLast ? "linear" : activation);
    });
  }

  /** Runs one input vector through every layer and returns the last layer's outputs. */
  forward(x: readonly Operand[]): Value[] {
    let activations: readonly Operand[] = x;
    for (const layer of this.layers) {
      activations = layer.forward(activations);
    }
    return activations as Value[];
  }

  /** Returns every weight and bias, layer by layer. */
  parameters(): Value[] {
    return this.layers.flatMap((layer) => layer.parameters());
  }

  /** Sets the gradient of every parameter to 0, as needed before each training step. */
  zeroGrad(): void {
    for (const parameter of this.parameters()) parameter.grad = 0;
  }
}
