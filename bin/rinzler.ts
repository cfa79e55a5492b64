/**
 * The `rinzler` command: one entry with a subcommand per tool, the file that
 * `deno task compile` builds into a standalone executable.
 *
 * @module
 */

import denoConfig from "../deno.json" with { type: "json" };
import { main as autotune } from "./autotune.ts";
import { main as evaluate } from "./eval.ts";
import { main as generate } from "./generate.ts";
import { main as plot } from "./plot.ts";
import { main as train } from "./train.ts";

const COMMANDS: Record<string, [(argv: string[]) => Promise<number>, string]> = {
  train: [train, "train a GPT on a corpus"],
  generate: [generate, "sample text from a checkpoint"],
  eval: [evaluate, "cross-entropy and perplexity of a checkpoint on a text"],
  autotune: [autotune, "find the fastest batch size, thread count and backend"],
  plot: [plot, "draw a run's losses and learning rate as SVG"],
};

/** Returns the top-level help text. */
export function helpText(): string {
  const lines = [
    `rinzler ${denoConfig.version}: a GPT built from first principles`,
    "",
    "Usage: rinzler <command> [flags]",
    "",
    "Commands:",
    ...Object.entries(COMMANDS).map(([name, [, help]]) => `  ${name.padEnd(10)} ${help}`),
    "",
    "Flags:",
    "  --version  print the version",
    "  --help     print this help",
    "",
    "Run 'rinzler <command> --help' for the flags of a command.",
  ];
  return lines.join("\n");
}

/** Runs the subcommand named by `argv[0]` and returns its exit status. */
export async function main(argv: string[] = Deno.args): Promise<number> {
  const [name, ...rest] = argv;
  if (name === "--version" || name === "-V") {
    console.log(`rinzler ${denoConfig.version}`);
    return 0;
  }
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    console.log(helpText());
    return name === undefined ? 2 : 0;
  }
  const command = COMMANDS[name];
  if (command === undefined) {
    console.error(
      `rinzler: unknown command "${name}"; expected one of ${Object.keys(COMMANDS).join(", ")}`,
    );
    return 2;
  }
  return await command[0](rest);
}

if (import.meta.main) {
  Deno.exit(await main());
}
