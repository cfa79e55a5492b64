/**
 * Loss curves of a training run as a standalone SVG image, and the reader of the
 * `metrics.jsonl` file that `train` in `lib/train.ts` writes.
 *
 * The image has two panels that share the step axis: the training loss (raw and
 * smoothed) and the validation loss on top, the learning rate below. Each series is
 * one `<polyline>` whose `id` and `data-series` attribute is `train-loss`,
 * `train-loss-smoothed`, `val-loss` or `lr`, so that scripts can read the points back.
 * The output depends only on the input: it contains no dates and no generated ids.
 *
 * @example
 * ```ts
 * import { readMetrics, renderLossPlot } from "./plot.ts";
 *
 * const records = await readMetrics("runs/1/metrics.jsonl");
 * await Deno.writeTextFile("runs/1/loss.svg", renderLossPlot(records, { title: "runs/1" }));
 * ```
 *
 * @module
 */

import type { MetricsRecord } from "./train.ts";

export type { MetricsRecord };

// ---------------------------------------------------------------------------
// Reading metrics.jsonl.

/** A metrics file that cannot be read or has a malformed line. */
export class MetricsError extends Error {
  override name = "MetricsError";
  /** The file that failed. */
  readonly path: string;
  /** 1-based number of the malformed line, or null when the whole file failed. */
  readonly line: number | null;

  constructor(path: string, line: number | null, detail: string) {
    super(line === null ? `${path}: ${detail}` : `${path}:${line}: ${detail}`);
    this.path = path;
    this.line = line;
  }
}

/** Numeric fields of a record other than `step`, which the reader checks on its own. */
const VALUE_FIELDS = ["trainLoss", "lr", "gradNorm", "tokensPerSecond", "elapsedSeconds"] as const;

/**
 * Reads a `metrics.jsonl` file: one JSON object per line, blank lines skipped.
 *
 * A resumed run appends to the file of the run it continues, so one step can appear
 * on several lines, and the last of them replaces the others. The records come back
 * sorted by step. JSON has no NaN, so the trainer's NaN and Infinity values are
 * stored as null, and this reader returns them as NaN. Of the fields, only `step`
 * and `trainLoss` are required, and a missing `lr`, `gradNorm`, `tokensPerSecond` or
 * `elapsedSeconds` is returned as NaN.
 *
 * Throws a `MetricsError` naming the file, and for a malformed line its number,
 * when the file cannot be read or a line is not such a record.
 */
export async function readMetrics(path: string): Promise<MetricsRecord[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) throw new MetricsError(path, null, "file not found");
    throw new MetricsError(path, null, `cannot read the file: ${(error as Error).message}`);
  }
  return parseMetrics(text, path);
}

/**
 * Parses the text of a `metrics.jsonl` file as `readMetrics` does. Error messages name
 * the text `source`.
 */
export function parseMetrics(text: string, source = "metrics.jsonl"): MetricsRecord[] {
  const byStep = new Map<number, MetricsRecord>();
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === "") continue;
    const record = parseRecord(line, source, i + 1);
    byStep.set(record.step, record);
  }
  return [...byStep.values()].sort((a, b) => a.step - b.step);
}

function parseRecord(line: string, source: string, lineNumber: number): MetricsRecord {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch (error) {
    throw new MetricsError(source, lineNumber, `invalid JSON: ${(error as Error).message}`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new MetricsError(source, lineNumber, `expected a JSON object, got ${truncate(line)}`);
  }
  const object = value as Record<string, unknown>;

  const step = object.step;
  if (step === undefined) throw new MetricsError(source, lineNumber, `"step" is missing`);
  if (typeof step !== "number" || !Number.isInteger(step) || step < 0) {
    throw new MetricsError(
      source,
      lineNumber,
      `"step" must be a non-negative integer, got ${JSON.stringify(step)}`,
    );
  }
  if (!("trainLoss" in object)) {
    throw new MetricsError(source, lineNumber, `"trainLoss" is missing`);
  }

  const values = {} as Record<typeof VALUE_FIELDS[number], number>;
  for (const field of VALUE_FIELDS) {
    values[field] = readNumber(object, field, source, lineNumber);
  }
  const record: MetricsRecord = { step, ...values };
  if (object.valLoss !== undefined) {
    record.valLoss = readNumber(object, "valLoss", source, lineNumber);
  }
  return record;
}

/** Returns a field as a number: null or absent become NaN, anything else but a number throws. */
function readNumber(
  object: Record<string, unknown>,
  field: string,
  source: string,
  lineNumber: number,
): number {
  const value = object[field];
  if (value === undefined || value === null) return NaN;
  if (typeof value !== "number") {
    throw new MetricsError(
      source,
      lineNumber,
      `"${field}" must be a number or null, got ${truncate(JSON.stringify(value))}`,
    );
  }
  return value;
}

function truncate(text: string, length = 60): string {
  return text.length <= length ? text : `${text.slice(0, length)}…`;
}

// ---------------------------------------------------------------------------
// Axes: nice round ticks.

/** A linear axis: its domain and the tick values inside it. */
interface Axis {
  min: number;
  max: number;
  ticks: number[];
  /** Digits after the decimal point that the tick spacing needs. */
  decimals: number;
}

/** Rounds `x` to 1, 2 or 5 times a power of ten (Heckbert's "nice numbers"). */
function niceNumber(x: number, round: boolean): number {
  const exponent = Math.floor(Math.log10(x));
  const fraction = x / 10 ** exponent;
  // Rounding picks the closest mantissa, otherwise the smallest one at or above `fraction`.
  const mantissas = [1, 2, 5];
  const limits = round ? [1.5, 3, 7] : mantissas;
  for (let i = 0; i < mantissas.length; i++) {
    const fits = round ? fraction < limits[i] : fraction <= limits[i];
    if (fits) return mantissas[i] * 10 ** exponent;
  }
  return 10 * 10 ** exponent;
}

/**
 * Builds an axis over `[low, high]` with about `tickCount` ticks at round values. The
 * domain is widened by `margin` (a fraction of the range) and then to the outer ticks. Equal or missing bounds get a range around
 * them, so scaling never divides by zero.
 */
function niceAxis(
  low: number,
  high: number,
  tickCount: number,
  options: { integer?: boolean; fromZero?: boolean; margin?: number } = {},
): Axis {
  if (!Number.isFinite(low) || !Number.isFinite(high)) {
    low = 0;
    high = 1;
  }
  if (options.fromZero && low >= 0) low = 0;
  const magnitude = Math.max(Math.abs(low), Math.abs(high));
  if (high - low <= magnitude * 1e-9) {
    let pad = 1;
    if (!options.integer && magnitude > 0) pad = magnitude * 0.1;
    const nonNegative = low >= 0;
    low -= pad;
    high += pad;
    if (options.fromZero && nonNegative) low = 0;
  }

  // A margin keeps points off the frame unless rounding to the ticks already did.
  const margin = (high - low) * (options.margin ?? 0);
  low = options.fromZero && low >= 0 ? Math.max(0, low - margin) : low - margin;
  high += margin;

  let spacing = niceNumber(niceNumber(high - low, false) / Math.max(1, tickCount - 1), true);
  if (options.integer) spacing = Math.max(1, spacing);
  const decimals = Math.max(0, -Math.floor(Math.log10(spacing) + 1e-9));
  const first = Math.floor(low / spacing);
  const last = Math.ceil(high / spacing);
  const ticks: number[] = [];
  for (let k = first; k <= last; k++) ticks.push(Number((k * spacing).toFixed(decimals)));
  return { min: ticks[0], max: ticks[ticks.length - 1], ticks, decimals };
}

/** Formats a tick value with the digits its axis needs, in exponent form below 0.001. */
function formatTick(value: number, decimals: number): string {
  if (value === 0) return "0";
  if (decimals > 3) return value.toExponential();
  return value.toFixed(decimals);
}

// ---------------------------------------------------------------------------
// The plot.

/** Fields of a metrics record that the plot draws. Null, NaN and absent values are skipped. */
export interface LossPlotRecord {
  step: number;
  trainLoss?: number | null;
  valLoss?: number | null;
  lr?: number | null;
}

/** Options of `renderLossPlot`. */
export interface LossPlotOptions {
  /** Heading of the image, for example the run folder. Default "Training run". */
  title?: string;
  /** Smaller second heading line, for example the model size. None by default. */
  subtitle?: string;
  /**
   * Weight of the exponential moving average drawn over the training loss, in `[0, 1)`.
   * 0 turns the smoothed line off, and it is left out below 10 training-loss points.
   * Default 0.9.
   */
  smoothing?: number;
  /** Image width in pixels, at least 320. Default 800. */
  width?: number;
  /** Image height in pixels, at least 320. Default 520. */
  height?: number;
}

/** Minimum number of training-loss points for which the smoothed line is drawn. */
const SMOOTHING_MIN_POINTS = 10;

const COLORS = {
  train: "#9ecae1",
  smoothed: "#1f77b4",
  val: "#d62728",
  lr: "#2ca02c",
  axis: "#888888",
  grid: "#e6e6e6",
  text: "#222222",
  muted: "#666666",
};

interface Point {
  step: number;
  value: number;
}

/** A drawing area in pixels. */
interface Panel {
  left: number;
  top: number;
  width: number;
  height: number;
}

/**
 * Renders the training loss, validation loss and learning rate of `records` as a
 * standalone SVG document.
 *
 * Records may come in any order. When a step appears more than once, the last record
 * wins. Values that are null, NaN or infinite are skipped, so the lines join the
 * points on either side of them. Throws a RangeError on an invalid option.
 */
export function renderLossPlot(
  records: readonly LossPlotRecord[],
  options: LossPlotOptions = {},
): string {
  const title = options.title ?? "Training run";
  const smoothing = options.smoothing ?? 0.9;
  const width = options.width ?? 800;
  const height = options.height ?? 520;
  if (!(smoothing >= 0 && smoothing < 1)) {
    throw new RangeError(`smoothing must be in [0, 1), got ${smoothing}`);
  }
  if (!(width >= 320) || !(height >= 320)) {
    throw new RangeError(`width and height must be at least 320 pixels, got ${width} × ${height}`);
  }

  const rows = latestByStep(records);
  const train = seriesOf(rows, "trainLoss");
  const val = seriesOf(rows, "valLoss");
  const lr = seriesOf(rows, "lr");
  const smoothed = smoothing > 0 && train.length >= SMOOTHING_MIN_POINTS
    ? smooth(train, smoothing)
    : [];

  // Layout: heading, legend, loss panel, learning-rate panel, step axis.
  const hasSubtitle = options.subtitle !== undefined && options.subtitle !== "";
  const legendY = hasSubtitle ? 64 : 48;
  const plotTop = legendY + 20;
  const plotBottom = height - 52;
  const panelGap = 26;
  const left = 76;
  const plotWidth = width - left - 24;
  const lrHeight = Math.round((plotBottom - plotTop - panelGap) * 0.25);
  const lossPanel: Panel = {
    left,
    top: plotTop,
    width: plotWidth,
    height: plotBottom - plotTop - panelGap - lrHeight,
  };
  const lrPanel: Panel = { left, top: plotBottom - lrHeight, width: plotWidth, height: lrHeight };

  const plotted = [...train, ...val, ...lr];
  const steps = plotted.length > 0 ? plotted : rows.map((row) => ({ step: row.step, value: 0 }));
  const stepRange = extent(steps.map((p) => p.step));
  const stepAxis = niceAxis(
    stepRange.min,
    stepRange.max,
    Math.max(2, Math.floor(plotWidth / 100)),
    {
      integer: true,
    },
  );
  const lossRange = extent([...train, ...val].map((p) => p.value));
  const lossAxis = niceAxis(lossRange.min, lossRange.max, 6, { margin: 0.03 });
  const lrRange = extent(lr.map((p) => p.value));
  const lrAxis = niceAxis(lrRange.min, lrRange.max, 3, { fromZero: true, margin: 0.03 });

  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" ` +
      `viewBox="0 0 ${width} ${height}" role="img" aria-labelledby="plot-title plot-desc" ` +
      `font-family="sans-serif" font-size="12" fill="${COLORS.text}">`,
  );
  out.push(`<title id="plot-title">${escapeXml(title)}</title>`);
  out.push(
    `<desc id="plot-desc">${
      escapeXml(describe(title, train, val, lr, smoothed, smoothing))
    }</desc>`,
  );
  out.push(`<rect width="${width}" height="${height}" fill="#ffffff"/>`);
  out.push(
    `<text x="${width / 2}" y="24" text-anchor="middle" font-size="16" font-weight="bold">` +
      `${escapeXml(title)}</text>`,
  );
  if (hasSubtitle) {
    out.push(
      `<text x="${width / 2}" y="43" text-anchor="middle" fill="${COLORS.muted}">` +
        `${escapeXml(options.subtitle!)}</text>`,
    );
  }
  out.push(...legend(left, legendY, train, smoothed, smoothing, val, lr));

  // Loss panel.
  out.push(...grid(lossPanel, stepAxis, lossAxis, false));
  out.push(...yTitle("loss", lossPanel));
  if (train.length === 0 && val.length === 0) out.push(...note("no loss values", lossPanel));
  const lossX = (step: number) => scale(step, stepAxis, lossPanel.left, lossPanel.width);
  const lossY = (value: number) =>
    lossPanel.top + lossPanel.height - scale(value, lossAxis, 0, lossPanel.height);
  out.push(...series("train-loss", train, lossX, lossY, COLORS.train, 1));
  out.push(...series("train-loss-smoothed", smoothed, lossX, lossY, COLORS.smoothed, 1.75));
  out.push(...series("val-loss", val, lossX, lossY, COLORS.val, 1.5));
  out.push(...markers("val-loss", val, lossX, lossY, COLORS.val, 3));

  // Learning-rate panel and the shared step axis.
  out.push(...grid(lrPanel, stepAxis, lrAxis, true));
  out.push(...yTitle("learning rate", lrPanel));
  if (lr.length === 0) out.push(...note("no learning-rate values", lrPanel));
  const lrY = (value: number) =>
    lrPanel.top + lrPanel.height - scale(value, lrAxis, 0, lrPanel.height);
  out.push(...series("lr", lr, lossX, lrY, COLORS.lr, 1.5));
  out.push(
    `<text x="${left + plotWidth / 2}" y="${height - 12}" text-anchor="middle">step</text>`,
  );

  out.push("</svg>");
  return out.join("\n") + "\n";
}

/** Returns the records sorted by step, the last record of each step only. */
function latestByStep(records: readonly LossPlotRecord[]): LossPlotRecord[] {
  const byStep = new Map<number, LossPlotRecord>();
  for (const record of records) {
    if (Number.isFinite(record.step)) byStep.set(record.step, record);
  }
  return [...byStep.values()].sort((a, b) => a.step - b.step);
}

function seriesOf(rows: LossPlotRecord[], field: "trainLoss" | "valLoss" | "lr"): Point[] {
  const points: Point[] = [];
  for (const row of rows) {
    const value = row[field];
    if (typeof value === "number" && Number.isFinite(value)) points.push({ step: row.step, value });
  }
  return points;
}

/** Exponential moving average with the start-up bias divided out, as TensorBoard draws it. */
function smooth(points: Point[], weight: number): Point[] {
  let average = 0;
  return points.map((point, i) => {
    average = weight * average + (1 - weight) * point.value;
    return { step: point.step, value: average / (1 - weight ** (i + 1)) };
  });
}

/**
 * Returns the smallest and largest value, or NaN for none. A loop, because spreading a
 * long array into `Math.min` overflows the call stack.
 */
function extent(values: number[]): { min: number; max: number } {
  let min = NaN;
  let max = NaN;
  for (const value of values) {
    if (!(value >= min)) min = value;
    if (!(value <= max)) max = value;
  }
  return { min, max };
}

/** Maps `value` from the axis domain onto `[start, start + length]`. */
function scale(value: number, axis: Axis, start: number, length: number): number {
  return start + (value - axis.min) / (axis.max - axis.min) * length;
}

function coordinate(value: number): string {
  return value.toFixed(2);
}

function series(
  name: string,
  points: Point[],
  x: (step: number) => number,
  y: (value: number) => number,
  color: string,
  strokeWidth: number,
): string[] {
  if (points.length === 0) return [];
  const list = points.map((p) => `${coordinate(x(p.step))},${coordinate(y(p.value))}`).join(" ");
  const lines = [
    `<polyline id="${name}" data-series="${name}" points="${list}" fill="none" ` +
    `stroke="${color}" stroke-width="${strokeWidth}" stroke-linejoin="round"/>`,
  ];
  // A polyline of one point draws nothing, so a lone point gets a marker.
  if (points.length === 1 && name !== "val-loss") {
    lines.push(...markers(name, points, x, y, color, 2.5));
  }
  return lines;
}

function markers(
  name: string,
  points: Point[],
  x: (step: number) => number,
  y: (value: number) => number,
  color: string,
  radius: number,
): string[] {
  if (points.length === 0) return [];
  return [
    `<g id="${name}-markers" data-series="${name}-markers" fill="${color}">`,
    ...points.map((p) =>
      `<circle cx="${coordinate(x(p.step))}" cy="${coordinate(y(p.value))}" r="${radius}"/>`
    ),
    "</g>",
  ];
}

/** Draws a panel's frame, grid lines and value ticks, and the step ticks when `stepLabels`. */
function grid(panel: Panel, stepAxis: Axis, valueAxis: Axis, stepLabels: boolean): string[] {
  const { left, top, width, height } = panel;
  const bottom = top + height;
  const lines: string[] = [`<g stroke="${COLORS.grid}" stroke-width="1">`];
  for (const tick of stepAxis.ticks) {
    const x = coordinate(scale(tick, stepAxis, left, width));
    lines.push(`<line x1="${x}" y1="${top}" x2="${x}" y2="${bottom}"/>`);
  }
  for (const tick of valueAxis.ticks) {
    const y = coordinate(bottom - scale(tick, valueAxis, 0, height));
    lines.push(`<line x1="${left}" y1="${y}" x2="${left + width}" y2="${y}"/>`);
  }
  lines.push("</g>");
  lines.push(
    `<rect x="${left}" y="${top}" width="${width}" height="${height}" fill="none" ` +
      `stroke="${COLORS.axis}"/>`,
  );

  lines.push(`<g text-anchor="end" fill="${COLORS.muted}">`);
  for (const tick of valueAxis.ticks) {
    const y = coordinate(bottom - scale(tick, valueAxis, 0, height) + 4);
    lines.push(`<text x="${left - 6}" y="${y}">${formatTick(tick, valueAxis.decimals)}</text>`);
  }
  lines.push("</g>");

  if (stepLabels) {
    lines.push(`<g text-anchor="middle" fill="${COLORS.muted}">`);
    for (const tick of stepAxis.ticks) {
      const x = coordinate(scale(tick, stepAxis, left, width));
      lines.push(`<text x="${x}" y="${bottom + 17}">${formatTick(tick, 0)}</text>`);
    }
    lines.push("</g>");
  }
  return lines;
}

function yTitle(text: string, panel: Panel): string[] {
  const x = 16;
  const y = coordinate(panel.top + panel.height / 2);
  return [
    `<text x="${x}" y="${y}" text-anchor="middle" transform="rotate(-90 ${x} ${y})">` +
    `${text}</text>`,
  ];
}

function note(text: string, panel: Panel): string[] {
  const x = coordinate(panel.left + panel.width / 2);
  const y = coordinate(panel.top + panel.height / 2);
  return [`<text x="${x}" y="${y}" text-anchor="middle" fill="${COLORS.muted}">${text}</text>`];
}

function legend(
  left: number,
  y: number,
  train: Point[],
  smoothed: Point[],
  smoothing: number,
  val: Point[],
  lr: Point[],
): string[] {
  const entries: { label: string; color: string; width: number; marker: boolean }[] = [];
  if (train.length > 0) {
    entries.push({ label: "train loss", color: COLORS.train, width: 2, marker: false });
  }
  if (smoothed.length > 0) {
    entries.push({
      label: `train loss, smoothed (EMA ${smoothing})`,
      color: COLORS.smoothed,
      width: 2,
      marker: false,
    });
  }
  if (val.length > 0) {
    entries.push({ label: "validation loss", color: COLORS.val, width: 1.5, marker: true });
  }
  if (lr.length > 0) {
    entries.push({ label: "learning rate", color: COLORS.lr, width: 2, marker: false });
  }
  if (entries.length === 0) return [];

  const lines = [`<g id="legend">`];
  let x = left;
  for (const entry of entries) {
    lines.push(
      `<line x1="${x}" y1="${y - 4}" x2="${x + 22}" y2="${y - 4}" stroke="${entry.color}" ` +
        `stroke-width="${entry.width}"/>`,
    );
    if (entry.marker) {
      lines.push(`<circle cx="${x + 11}" cy="${y - 4}" r="3" fill="${entry.color}"/>`);
    }
    lines.push(`<text x="${x + 28}" y="${y}">${escapeXml(entry.label)}</text>`);
    // Estimated label width: about 6.5 pixels per character at 12 px sans-serif.
    x += 28 + Math.ceil(entry.label.length * 6.5) + 22;
  }
  lines.push("</g>");
  return lines;
}

/** Writes the text of `<desc>`: what the image shows, with the key numbers. */
function describe(
  title: string,
  train: Point[],
  val: Point[],
  lr: Point[],
  smoothed: Point[],
  smoothing: number,
): string {
  const number = (value: number) => String(Number(value.toPrecision(4)));
  const sentences = [`Loss curves of ${title}.`];
  if (train.length > 0) {
    const first = train[0];
    const last = train[train.length - 1];
    sentences.push(
      `Training loss at ${train.length} steps from ${first.step} to ${last.step}: ` +
        `${number(first.value)} at the start, ${number(last.value)} at the end.`,
    );
  } else {
    sentences.push("No training loss values.");
  }
  if (smoothed.length > 0) {
    sentences.push(
      `The darker line is its exponential moving average with weight ${smoothing}.`,
    );
  }
  if (val.length > 0) {
    const best = val.reduce((a, b) => (b.value < a.value ? b : a));
    const last = val[val.length - 1];
    sentences.push(
      `Validation loss at ${val.length} steps: lowest ${
        number(best.value)
      } at step ${best.step}, ` +
        `last ${number(last.value)} at step ${last.step}.`,
    );
  }
  if (lr.length > 0) {
    const range = extent(lr.map((p) => p.value));
    sentences.push(
      `Learning rate from ${number(range.min)} to ${number(range.max)}, ` +
        `drawn in the lower panel.`,
    );
  }
  return sentences.join(" ");
}

function escapeXml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}
