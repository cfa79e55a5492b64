import assert from "node:assert/strict";
import { join } from "node:path";
import {
  type LossPlotRecord,
  MetricsError,
  parseMetrics,
  readMetrics,
  renderLossPlot,
} from "../lib/plot.ts";

// ---------------------------------------------------------------------------
// Helpers: a small SVG reader, enough for the elements renderLossPlot writes.

type Point = [number, number];

/** Returns the points of the polyline whose data-series is `name`, or null when there is none. */
function seriesPoints(svg: string, name: string): Point[] | null {
  const element = svg.match(new RegExp(`<polyline [^>]*data-series="${name}"[^>]*>`));
  if (element === null) return null;
  const points = element[0].match(/ points="([^"]*)"/);
  assert.ok(points, `polyline ${name} has no points attribute`);
  return points[1].trim().split(/\s+/).map((pair) => {
    const [x, y] = pair.split(",").map(Number);
    return [x, y];
  });
}

/** Returns the centers of the circles in the group whose data-series is `name`. */
function markerPoints(svg: string, name: string): Point[] {
  const group = svg.match(new RegExp(`<g [^>]*data-series="${name}"[^>]*>([\\s\\S]*?)</g>`));
  if (group === null) return [];
  return [...group[1].matchAll(/<circle cx="([^"]+)" cy="([^"]+)"/g)].map((m) => [
    Number(m[1]),
    Number(m[2]),
  ]);
}

/** Returns the value-axis tick labels: the loss axis first, then the learning-rate axis. */
function valueTickLabels(svg: string): string[][] {
  return [...svg.matchAll(/<g text-anchor="end"[^>]*>([\s\S]*?)<\/g>/g)].map((group) =>
    [...group[1].matchAll(/<text [^>]*>([^<]*)<\/text>/g)].map((m) => m[1])
  );
}

/**
 * Checks that every tag is closed in order, that attribute values are quoted and that
 * text and attribute values use `&` only in entities. Returns the problem, or null.
 */
function wellFormednessProblem(svg: string): string | null {
  const stack: string[] = [];
  const tag = /<(\/?)([A-Za-z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>/y;
  let text = "";
  let i = 0;
  while (i < svg.length) {
    if (svg[i] !== "<") {
      text += svg[i];
      i++;
      continue;
    }
    tag.lastIndex = i;
    const match = tag.exec(svg);
    if (match === null) return `malformed tag at offset ${i}: ${svg.slice(i, i + 40)}`;
    const [whole, closing, name, attributes, selfClosing] = match;
    if (/&(?!#\d+;|#x[\da-fA-F]+;|amp;|lt;|gt;|quot;|apos;)/.test(attributes + text)) {
      return `bare & near offset ${i}`;
    }
    text = "";
    if (closing) {
      const open = stack.pop();
      if (open !== name) return `</${name}> closes <${open}> at offset ${i}`;
    } else if (!selfClosing) {
      stack.push(name);
    }
    i += whole.length;
  }
  if (stack.length > 0) return `unclosed <${stack.join("> <")}>`;
  if (text.trim() !== "") return "text after the root element";
  return null;
}

function assertIncreasing(values: number[], label: string): void {
  for (let i = 1; i < values.length; i++) {
    assert.ok(
      values[i] > values[i - 1],
      `${label}: ${values[i]} at ${i} is not above ${values[i - 1]}`,
    );
  }
}

/** Builds 30 steps of a run: falling losses, validation every 10 steps and a learning-rate warmup. */
function sampleRecords(): LossPlotRecord[] {
  return Array.from({ length: 30 }, (_, i) => {
    const step = i + 1;
    const record: LossPlotRecord = {
      step,
      trainLoss: 5 - 0.1 * step,
      lr: 1e-3 * Math.min(1, step / 10),
    };
    if (step % 10 === 0) record.valLoss = 5.2 - 0.1 * step;
    return record;
  });
}

// ---------------------------------------------------------------------------
// renderLossPlot

Deno.test("renderLossPlot is well-formed SVG", () => {
  const svg = renderLossPlot(sampleRecords(), { title: "runs/1" });
  assert.ok(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"'));
  assert.equal(wellFormednessProblem(svg), null);
});

Deno.test("renderLossPlot series have one point per step in order", () => {
  const svg = renderLossPlot(sampleRecords());

  const train = seriesPoints(svg, "train-loss")!;
  assert.equal(train.length, 30);
  assertIncreasing(train.map((p) => p[0]), "train-loss x");
  // SVG y grows downwards, so a falling loss has rising y.
  assertIncreasing(train.map((p) => p[1]), "train-loss y");

  const val = seriesPoints(svg, "val-loss")!;
  assert.equal(val.length, 3);
  assertIncreasing(val.map((p) => p[0]), "val-loss x");
  assertIncreasing(val.map((p) => p[1]), "val-loss y");
  assert.deepEqual(markerPoints(svg, "val-loss-markers"), val);
  // The validation points sit at the x of the training points of the same steps.
  assert.deepEqual(val.map((p) => p[0]), [train[9][0], train[19][0], train[29][0]]);

  const lr = seriesPoints(svg, "lr")!;
  assert.equal(lr.length, 30);
  assertIncreasing(lr.map((p) => p[0]), "lr x");
  // A rising learning rate has falling y up to the end of the warmup, then stays flat.
  for (let i = 1; i < 10; i++) assert.ok(lr[i][1] < lr[i - 1][1], `lr y at ${i}`);
  for (let i = 10; i < 30; i++) assert.equal(lr[i][1], lr[9][1]);
});

Deno.test("renderLossPlot draws the smoothed train loss", () => {
  const svg = renderLossPlot(sampleRecords(), { smoothing: 0.5 });
  const smoothed = seriesPoints(svg, "train-loss-smoothed")!;
  const train = seriesPoints(svg, "train-loss")!;
  assert.equal(smoothed.length, train.length);
  assert.deepEqual(smoothed.map((p) => p[0]), train.map((p) => p[0]));
  // The first average is the first value, because the start-up bias is divided out.
  assert.equal(smoothed[0][1], train[0][1]);
  // A moving average of a falling line lags above it, which is a smaller y.
  assert.ok(smoothed[29][1] < train[29][1]);
  assert.match(svg, /train loss, smoothed \(EMA 0\.5\)/);
});

Deno.test("renderLossPlot smoothing 0 and few points draw no smoothed line", () => {
  assert.equal(
    seriesPoints(renderLossPlot(sampleRecords(), { smoothing: 0 }), "train-loss-smoothed"),
    null,
  );
  assert.equal(
    seriesPoints(renderLossPlot(sampleRecords().slice(0, 9)), "train-loss-smoothed"),
    null,
  );
  assert.notEqual(
    seriesPoints(renderLossPlot(sampleRecords().slice(0, 10)), "train-loss-smoothed"),
    null,
  );
});

Deno.test("renderLossPlot rejects invalid options", () => {
  assert.throws(() => renderLossPlot(sampleRecords(), { smoothing: 1 }), RangeError);
  assert.throws(() => renderLossPlot(sampleRecords(), { smoothing: -0.1 }), RangeError);
  assert.throws(() => renderLossPlot(sampleRecords(), { smoothing: NaN }), RangeError);
  assert.throws(() => renderLossPlot(sampleRecords(), { width: 100 }), RangeError);
});

Deno.test("renderLossPlot has titles, axis titles and a legend", () => {
  const svg = renderLossPlot(sampleRecords(), { title: "runs/7", subtitle: "layers 4" });
  assert.match(svg, /<title id="plot-title">runs\/7<\/title>/);
  assert.match(svg, /<desc id="plot-desc">Loss curves of runs\/7\. [^<]*<\/desc>/);
  assert.match(svg, /Validation loss at 3 steps: lowest 2\.2 at step 30/);
  assert.match(svg, />runs\/7<\/text>/);
  assert.match(svg, />layers 4<\/text>/);
  for (const title of ["step", "loss", "learning rate"]) {
    assert.match(svg, new RegExp(`>${title}</text>`), `axis title ${title}`);
  }
  const legend = svg.match(/<g id="legend">([\s\S]*?)<\/g>/)![1];
  for (const label of ["train loss", "validation loss", "learning rate"]) {
    assert.ok(legend.includes(`>${label}</text>`), `legend entry ${label}`);
  }
});

Deno.test("renderLossPlot ticks are round and evenly spaced", () => {
  const [lossLabels, lrLabels] = valueTickLabels(renderLossPlot(sampleRecords()));
  for (const labels of [lossLabels, lrLabels]) {
    assert.ok(labels.length >= 2, `${labels.length} tick labels`);
    const values = labels.map(Number);
    assert.ok(values.every(Number.isFinite), `labels ${labels}`);
    const spacing = values[1] - values[0];
    for (let i = 1; i < values.length; i++) {
      assert.ok(Math.abs(values[i] - values[i - 1] - spacing) < spacing * 1e-9, `labels ${labels}`);
    }
    // 1, 2 or 5 times a power of ten.
    const mantissa = spacing / 10 ** Math.floor(Math.log10(spacing) + 1e-9);
    assert.ok([1, 2, 5].some((m) => Math.abs(mantissa - m) < 1e-9), `spacing ${spacing}`);
  }
  assert.deepEqual(lrLabels, ["0", "0.001", "0.002"]);

  // Below 0.001 the labels switch to exponent form.
  const small = sampleRecords().map((r) => ({ ...r, lr: 3e-4 * r.step / 30 }));
  assert.deepEqual(valueTickLabels(renderLossPlot(small))[1], ["0", "2e-4", "4e-4"]);
});

Deno.test("renderLossPlot skips null and NaN values", () => {
  const records: LossPlotRecord[] = [
    { step: 1, trainLoss: 4, lr: 0.01, valLoss: null },
    { step: 2, trainLoss: null, lr: NaN },
    { step: 3, trainLoss: NaN, lr: 0.01, valLoss: 3.5 },
    { step: 4, trainLoss: 3, lr: Infinity },
    { step: 5, trainLoss: 2, lr: 0.005 },
  ];
  const svg = renderLossPlot(records);
  assert.equal(seriesPoints(svg, "train-loss")!.length, 3);
  assert.equal(seriesPoints(svg, "val-loss")!.length, 1);
  assert.equal(seriesPoints(svg, "lr")!.length, 3);
  assert.doesNotMatch(svg, /NaN|Infinity/);
  assert.equal(wellFormednessProblem(svg), null);
});

Deno.test("renderLossPlot handles one record", () => {
  const svg = renderLossPlot([{ step: 5, trainLoss: 3.2, lr: 1e-3, valLoss: 3.3 }]);
  assert.doesNotMatch(svg, /NaN|Infinity/);
  assert.equal(seriesPoints(svg, "train-loss")!.length, 1);
  // A polyline of one point is invisible, so each lone point also gets a marker.
  assert.equal(markerPoints(svg, "train-loss-markers").length, 1);
  assert.equal(markerPoints(svg, "val-loss-markers").length, 1);
  assert.equal(markerPoints(svg, "lr-markers").length, 1);
  assert.equal(wellFormednessProblem(svg), null);
});

Deno.test("renderLossPlot handles all-equal values", () => {
  const records = Array.from(
    { length: 12 },
    (_, i) => ({ step: i + 1, trainLoss: 2, lr: 0, valLoss: 2 }),
  );
  const svg = renderLossPlot(records);
  assert.doesNotMatch(svg, /NaN|Infinity/);
  const train = seriesPoints(svg, "train-loss")!;
  assert.equal(train.length, 12);
  assert.ok(train.every((p) => p[1] === train[0][1]));
  assert.equal(wellFormednessProblem(svg), null);
});

Deno.test("renderLossPlot handles no plottable values", () => {
  for (const records of [[], [{ step: 1, trainLoss: null, lr: null }]]) {
    const svg = renderLossPlot(records);
    assert.doesNotMatch(svg, /NaN|Infinity/);
    assert.equal(seriesPoints(svg, "train-loss"), null);
    assert.match(svg, /no loss values/);
    assert.match(svg, /no learning-rate values/);
    assert.equal(wellFormednessProblem(svg), null);
  }
});

Deno.test("renderLossPlot sorts steps and keeps the last duplicate", () => {
  const svg = renderLossPlot([
    { step: 3, trainLoss: 1, lr: 1 },
    { step: 1, trainLoss: 3, lr: 1 },
    { step: 2, trainLoss: 9, lr: 1 },
    { step: 2, trainLoss: 2, lr: 1 },
  ]);
  const train = seriesPoints(svg, "train-loss")!;
  assert.equal(train.length, 3);
  assertIncreasing(train.map((p) => p[0]), "x");
  assertIncreasing(train.map((p) => p[1]), "y");
});

Deno.test("renderLossPlot output is deterministic and escaped", () => {
  const title = `runs/<1> & "best"`;
  const first = renderLossPlot(sampleRecords(), { title });
  assert.equal(renderLossPlot(sampleRecords(), { title }), first);
  assert.ok(!first.includes(title));
  assert.ok(first.includes("runs/&#60;1&#62; &#38; &#34;best&#34;"));
  assert.equal(wellFormednessProblem(first), null);
});

// ---------------------------------------------------------------------------
// readMetrics

Deno.test("readMetrics lets a later line replace a step", async () => {
  const dir = await Deno.makeTempDir();
  const path = join(dir, "metrics.jsonl");
  const lines = [
    `{"step":1,"trainLoss":4,"lr":0.001,"gradNorm":1,"tokensPerSecond":10,"elapsedSeconds":1}`,
    `{"step":2,"trainLoss":3.5,"valLoss":3.6,"lr":0.001,"gradNorm":1,"tokensPerSecond":10,"elapsedSeconds":2}`,
    "",
    `{"step":3,"trainLoss":3,"lr":0.001,"gradNorm":1,"tokensPerSecond":10,"elapsedSeconds":3}`,
    "   ",
    // A run resumed from step 1 appends steps 2 and 3 again.
    `{"step":2,"trainLoss":3.4,"lr":0.002,"gradNorm":0.5,"tokensPerSecond":20,"elapsedSeconds":4}`,
    `{"step":3,"trainLoss":2.9,"valLoss":null,"lr":0.002,"gradNorm":0.5,"tokensPerSecond":20,"elapsedSeconds":5}\r`,
  ];
  await Deno.writeTextFile(path, lines.join("\n") + "\n");
  const records = await readMetrics(path);
  assert.deepEqual(records.map((r) => r.step), [1, 2, 3]);
  assert.deepEqual(records[1], {
    step: 2,
    trainLoss: 3.4,
    lr: 0.002,
    gradNorm: 0.5,
    tokensPerSecond: 20,
    elapsedSeconds: 4,
  });
  assert.equal(records[2].trainLoss, 2.9);
  assert.ok(Number.isNaN(records[2].valLoss));
  await Deno.remove(dir, { recursive: true });
});

Deno.test("readMetrics returns missing optional values as NaN", () => {
  const [record] = parseMetrics(`{"step":0,"trainLoss":null}`);
  assert.equal(record.step, 0);
  assert.ok(Number.isNaN(record.trainLoss));
  assert.ok(Number.isNaN(record.lr));
  assert.ok(Number.isNaN(record.gradNorm));
  assert.equal("valLoss" in record, false);
});

Deno.test("readMetrics of an empty file is empty", () => {
  assert.deepEqual(parseMetrics(""), []);
  assert.deepEqual(parseMetrics("\n\n  \n"), []);
});

Deno.test("readMetrics names the file and line of a malformed line", async () => {
  const dir = await Deno.makeTempDir();
  const path = join(dir, "metrics.jsonl");
  const good = `{"step":1,"trainLoss":4,"lr":0.001}`;
  const cases: [string, RegExp][] = [
    [`{"step":2,"trainLoss":`, /invalid JSON/],
    [`[1, 2]`, /expected a JSON object/],
    [`{"trainLoss":3}`, /"step" is missing/],
    [`{"step":-1,"trainLoss":3}`, /"step" must be a non-negative integer, got -1/],
    [`{"step":2.5,"trainLoss":3}`, /"step" must be a non-negative integer/],
    [`{"step":2}`, /"trainLoss" is missing/],
    [`{"step":2,"trainLoss":"3"}`, /"trainLoss" must be a number or null, got "3"/],
    [`{"step":2,"trainLoss":3,"valLoss":[]}`, /"valLoss" must be a number or null/],
  ];
  for (const [line, detail] of cases) {
    await Deno.writeTextFile(path, `${good}\n\n${line}\n${good}\n`);
    const error = await readMetrics(path).then(
      () => assert.fail(`no error for ${line}`),
      (error: unknown) => error,
    );
    assert.ok(error instanceof MetricsError, `${line}: ${error}`);
    assert.equal(error.path, path);
    assert.equal(error.line, 3);
    assert.ok(error.message.startsWith(`${path}:3: `), error.message);
    assert.match(error.message, detail);
  }
  await Deno.remove(dir, { recursive: true });
});

Deno.test("readMetrics reports a missing file", async () => {
  const path = join(await Deno.makeTempDir(), "metrics.jsonl");
  await assert.rejects(readMetrics(path), (error: unknown) => {
    assert.ok(error instanceof MetricsError);
    assert.equal(error.line, null);
    assert.equal(error.message, `${path}: file not found`);
    return true;
  });
});

// ---------------------------------------------------------------------------
// bin/plot.ts as a subprocess

async function runPlot(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const script = new URL("../bin/plot.ts", import.meta.url).pathname;
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-read", "--allow-write", script, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const decoder = new TextDecoder();
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
}

function assertOneLineError(result: { code: number; stderr: string }, pattern: RegExp): void {
  assert.notEqual(result.code, 0);
  const lines = result.stderr.trimEnd().split("\n");
  assert.equal(lines.length, 1, `stderr: ${result.stderr}`);
  assert.match(lines[0], /^plot: /);
  assert.match(lines[0], pattern);
}

Deno.test("bin/plot writes loss.svg into the run folder", async () => {
  const dir = await Deno.makeTempDir();
  const lines = sampleRecords().map((r) =>
    JSON.stringify({ ...r, gradNorm: 1, tokensPerSecond: 1, elapsedSeconds: 1 })
  );
  await Deno.writeTextFile(join(dir, "metrics.jsonl"), lines.join("\n") + "\n");
  await Deno.writeTextFile(join(dir, "args.json"), JSON.stringify({ layers: 2, dModel: 32 }));

  const result = await runPlot([dir + "/"]);
  assert.equal(result.code, 0, result.stderr);
  const path = join(dir, "loss.svg");
  assert.equal(result.stdout.trim(), path);
  const svg = await Deno.readTextFile(path);
  assert.equal(seriesPoints(svg, "train-loss")!.length, 30);
  assert.match(svg, />layers 2, d_model 32<\/text>/);
  assert.match(svg, new RegExp(`<title id="plot-title">${dir}</title>`));

  const out = join(dir, "custom.svg");
  const custom = await runPlot([dir, "--out", out, "--title", "mine", "--smoothing", "0"]);
  assert.equal(custom.code, 0, custom.stderr);
  assert.equal(custom.stdout.trim(), out);
  const customSvg = await Deno.readTextFile(out);
  assert.match(customSvg, /<title id="plot-title">mine<\/title>/);
  assert.equal(seriesPoints(customSvg, "train-loss-smoothed"), null);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("bin/plot --help prints usage", async () => {
  const result = await runPlot(["--help"]);
  assert.equal(result.code, 0);
  assert.match(result.stdout, /^Usage: deno task plot RUN_FOLDER/);
  assert.match(result.stdout, /--out FILE/);
});

Deno.test("bin/plot reports errors in one line", async () => {
  const dir = await Deno.makeTempDir();
  assertOneLineError(await runPlot([]), /missing run folder/);
  assertOneLineError(await runPlot([dir, "--bogus"]), /Unknown option '--bogus'/);
  assertOneLineError(await runPlot([dir, "--smoothing", "2"]), /invalid --smoothing "2"/);
  assertOneLineError(await runPlot([join(dir, "nope")]), /run folder not found: .*nope/);
  assertOneLineError(await runPlot([dir]), /has no metrics\.jsonl/);

  await Deno.writeTextFile(join(dir, "metrics.jsonl"), "\n");
  assertOneLineError(await runPlot([dir]), /metrics\.jsonl has no records yet/);

  await Deno.writeTextFile(join(dir, "metrics.jsonl"), `{"step":1,"trainLoss":3}\nnot json\n`);
  assertOneLineError(await runPlot([dir]), /metrics\.jsonl:2: invalid JSON/);

  const file = join(dir, "metrics.jsonl");
  assertOneLineError(await runPlot([file]), /is not a folder/);
  await Deno.writeTextFile(file, `{"step":1,"trainLoss":3}\n`);
  assertOneLineError(await runPlot([dir, "--out", join(dir, "missing", "x.svg")]), /cannot write/);
  await Deno.remove(dir, { recursive: true });
});
