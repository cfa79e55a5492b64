import assert from "node:assert/strict";
import denoConfig from "../deno.json" with { type: "json" };
import { compileArgs, PERMISSIONS } from "../bin/compile.ts";

const RINZLER = new URL("../bin/rinzler.ts", import.meta.url).pathname;

async function rinzler(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-read",
      "--allow-write",
      "--allow-env",
      "--allow-run=npm",
      RINZLER,
      ...args,
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
}

Deno.test("rinzler prints its version", async () => {
  const { code, stdout } = await rinzler(["--version"]);
  assert.equal(code, 0);
  assert.equal(stdout.trim(), `rinzler ${denoConfig.version}`);
});

Deno.test("rinzler dispatches to subcommands", async () => {
  const help = await rinzler(["train", "--help"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /^Usage: deno task train/);

  const invalid = await rinzler(["generate", "--max-tokens=-1", "--checkpoint=x.json"]);
  assert.notEqual(invalid.code, 0);
  assert.match(invalid.stderr, /max-tokens/);
  assert.equal(invalid.stderr.trim().split("\n").length, 1, invalid.stderr);
});

Deno.test("rinzler rejects an unknown command", async () => {
  const { code, stderr } = await rinzler(["serve"]);
  assert.equal(code, 2);
  assert.match(
    stderr,
    /^rinzler: unknown command "serve"; expected one of train, generate, eval, autotune, plot/,
  );
});

Deno.test("compile embeds the worker and the permissions", () => {
  const args = compileArgs("out/rinzler");
  assert.equal(args[0], "compile");
  for (const permission of PERMISSIONS) assert.ok(args.includes(permission), permission);
  assert.ok(args[args.indexOf("--include") + 1].endsWith("lib/wasm_worker.ts"));
  assert.ok(args[args.length - 1].endsWith("bin/rinzler.ts"));
  assert.equal(args[args.indexOf("--output") + 1], "out/rinzler");
});
