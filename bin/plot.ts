/**
 * `deno task plot runs/<N>`: draws a run's loss curves and learning rate from its
 * `metrics.jsonl` into an SVG image, `runs/<N>/loss.svg` unless `--out` names another file.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { join } from "node:path";
import { MetricsError, readMetrics, renderLossPlot } from "../lib/plot.ts";

/** A command-line argument or a run folder that cannot be used, reported as one line. */
export class PlotError extends Error {
  override name = "PlotError";
}

/** Returns the `--help` text. */
export function helpText(): string {
  return [
    "Usage: deno task plot RUN_FOLDER [--out FILE] [--title TEXT] [--smoothing W]",
    "",
    "Draws the training loss, validation loss and learning rate of a training run from",
    "RUN_FOLDER/metrics.jsonl into an SVG image, and prints the path of the image.",
    "",
    "Flags:",
    "  --out FILE       path of the SVG file to write (default: RUN_FOLDER/loss.svg)",
    "  --title TEXT     heading of the image (default: the run folder)",
    "  --smoothing W    weight of the moving average over the training loss, from 0 to",
    "                   below 1; 0 draws no smoothed line (default: 0.9)",
    "  --help           print this help",
  ].join("\n");
}

/** Parsed command-line arguments. */
export interface PlotCommand {
  help: boolean;
  runDir: string;
  out: string;
  title: string;
  smoothing: number;
}

/** Parses the arguments. Throws `PlotError` on the first problem. */
export function parsePlotArgs(argv: string[]): PlotCommand {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      options: {
        out: { type: "string" },
        title: { type: "string" },
        smoothing: { type: "string" },
        help: { type: "boolean" },
      },
      strict: true,
      allowPositionals: true,
    });
  } catch (error) {
    throw new PlotError((error as Error).message.replace(/\. To specify a positional.*$/s, ""));
  }
  const { values, positionals } = parsed;
  if (values.help) return { help: true, runDir: "", out: "", title: "", smoothing: 0 };

  if (positionals.length === 0) throw new PlotError("missing run folder: pass one such as runs/1");
  if (positionals.length > 1) {
    throw new PlotError(
      `expected one run folder, got ${positionals.length}: ${positionals.join(" ")}`,
    );
  }
  const runDir = positionals[0].replace(/(.)\/+$/, "$1");

  let smoothing = 0.9;
  if (values.smoothing !== undefined) {
    smoothing = Number(values.smoothing);
    if (values.smoothing.trim() === "" || !(smoothing >= 0 && smoothing < 1)) {
      throw new PlotError(
        `invalid --smoothing "${values.smoothing}": expected a number from 0 to below 1`,
      );
    }
  }
  if (values.out === "") throw new PlotError("missing value for --out");

  return {
    help: false,
    runDir,
    out: values.out ?? join(runDir, "loss.svg"),
    title: values.title ?? runDir,
    smoothing,
  };
}

/** Returns a one-line summary of the run's settings from its `args.json`, or undefined. */
async function describeRun(runDir: string): Promise<string | undefined> {
  let args: Record<string, unknown>;
  try {
    args = JSON.parse(await Deno.readTextFile(join(runDir, "args.json")));
  } catch {
    // The summary is optional: the plot needs only metrics.jsonl.
    return undefined;
  }
  const parts: string[] = [];
  const add = (key: string, label: string) => {
    const value = args[key];
    if (typeof value === "number" || typeof value === "string") parts.push(`${label} ${value}`);
  };
  add("layers", "layers");
  add("heads", "heads");
  add("dModel", "d_model");
  add("context", "context");
  add("batchSize", "batch");
  add("optimizer", "optimizer");
  add("lr", "lr");
  return parts.length > 0 ? parts.join(", ") : undefined;
}

/** Reads the run folder, writes the image and returns its path. */
export async function plotRun(command: PlotCommand): Promise<string> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(command.runDir);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new PlotError(`run folder not found: ${command.runDir}`);
    }
    throw new PlotError(`cannot read ${command.runDir}: ${(error as Error).message}`);
  }
  if (!info.isDirectory) {
    throw new PlotError(`${command.runDir} is not a folder; pass a run folder such as runs/1`);
  }

  const metricsPath = join(command.runDir, "metrics.jsonl");
  let records;
  try {
    records = await readMetrics(metricsPath);
  } catch (error) {
    if (error instanceof MetricsError && error.line === null && !(await exists(metricsPath))) {
      throw new PlotError(`${command.runDir} has no metrics.jsonl; is it a training run folder?`);
    }
    throw error;
  }
  if (records.length === 0) {
    throw new PlotError(
      `${metricsPath} has no records yet; the trainer adds one per completed step`,
    );
  }

  const svg = renderLossPlot(records, {
    title: command.title,
    subtitle: await describeRun(command.runDir),
    smoothing: command.smoothing,
  });
  try {
    await Deno.writeTextFile(command.out, svg);
  } catch (error) {
    throw new PlotError(`cannot write ${command.out}: ${(error as Error).message}`);
  }
  return command.out;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

/** Runs the command with `argv` and returns its exit status. */
export async function main(argv: string[] = Deno.args): Promise<number> {
  let command: PlotCommand;
  try {
    command = parsePlotArgs(argv);
  } catch (error) {
    console.error(`plot: ${(error as Error).message}. Run with --help for usage.`);
    return 2;
  }
  if (command.help) {
    console.log(helpText());
    return 0;
  }
  try {
    console.log(await plotRun(command));
    return 0;
  } catch (error) {
    // Every failure is reported as one line, including unexpected ones, so the user never
    // sees a stack trace.
    console.error(`plot: ${(error as Error).message}`);
    return 1;
  }
}

if (import.meta.main) {
  Deno.exit(await main());
}
