/**
 * `deno task compile`: builds the standalone `rinzler` executable from
 * `bin/rinzler.ts`.
 *
 * `deno compile` embeds a Deno runtime (`denort`) in the executable. It
 * downloads that runtime unless the `DENORT_BIN` environment variable names a
 * local copy, so on a machine without access to Deno's download server set
 * `DENORT_BIN`.
 *
 * @module
 */

/** Permissions the executable is compiled with, and why each is needed. */
export const PERMISSIONS = [
  "--allow-read", // corpora, checkpoints, metrics
  "--allow-write", // run folders, checkpoints, the default corpus, plots
  "--allow-env", // npm, when the default corpus is prepared
  "--allow-run=npm", // npm pack, when the default corpus is prepared
];

/** Returns the `deno compile` arguments that build `output`. */
export function compileArgs(output: string): string[] {
  const entry = new URL("./rinzler.ts", import.meta.url).pathname;
  // The wasm backend starts its worker threads from this file, which a static import does not reach.
  const worker = new URL("../lib/wasm_worker.ts", import.meta.url).pathname;
  return ["compile", ...PERMISSIONS, "--include", worker, "--output", output, entry];
}

async function main(argv: string[]): Promise<number> {
  const output = argv[0] ?? "rinzler";
  const version = Deno.version.deno;
  const runtime = Deno.env.get("DENORT_BIN");
  if (runtime === undefined) {
    console.error(
      "compile: DENORT_BIN is not set, so deno compile will download its denort runtime; " +
        `where that download is not reachable, set DENORT_BIN to a local denort binary of Deno ${version}`,
    );
  } else if (/(^|\/)deno(\.exe)?$/.test(runtime)) {
    console.error(
      `compile: DENORT_BIN is ${runtime}, the full deno binary, which builds an executable that runs as ` +
        "deno; set DENORT_BIN to the denort binary instead",
    );
    return 1;
  } else {
    console.error(`compile: using the runtime in DENORT_BIN (${runtime})`);
  }

  const command = new Deno.Command(Deno.execPath(), { args: compileArgs(output) });
  const status = await command.spawn().status;
  if (!status.success) {
    const hint = runtime === undefined
      ? `if the output above shows a failed download, set DENORT_BIN to the denort binary of Deno ${version} ` +
        "(the denort archive for this platform among the assets of Deno's release)"
      : `check that DENORT_BIN is the denort binary of Deno ${version}`;
    console.error(`compile: deno compile failed with exit code ${status.code}; ${hint}`);
    return 1;
  }
  console.error(`compile: wrote ${output}`);
  return 0;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
