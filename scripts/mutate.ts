/**
 * `deno task mutate [--only NAME,...] [--list] [--timeout SECONDS] [--no-baseline]`: applies
 * each mutation of scripts/mutations.ts to a fresh copy of the repository, runs the tests that
 * should catch it, and prints a table of what was caught and what survived.
 *
 * A mutation is caught when some of its tests fail, and survives when they all pass. One whose
 * tests run past `--timeout` is marked `hang`: a test should fail fast, not wait. A run that
 * reports no test at all (a missing file, a type error) is an `error`, never a catch.
 * First, unless `--no-baseline`, each set of tests runs once on the unchanged copy, since a
 * failure there would make every result meaningless. Needs root for the end-to-end tests,
 * like `deno task test`. Exits 1 unless every mutation was caught.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { type Mutation, MUTATIONS } from "./mutations.ts";

const ROOT = new URL("..", import.meta.url).pathname;

const HELP = `usage: deno task mutate [--only NAME,...] [--list] [--timeout SECONDS] [--no-baseline]

  --only NAMES     run only these mutations (comma-separated)
  --list           print the mutations and exit
  --timeout S      bound on one test run, in seconds (default 600)
  --no-baseline    skip running the tests on the unchanged code first`;

type Outcome = "caught" | "survived" | "hang" | "stale" | "error";

interface Result {
  mutation: Mutation;
  outcome: Outcome;
  seconds: number;
  detail: string;
}

/** Counts the exact occurrences of `find` in `text`. */
export function occurrences(text: string, find: string): number {
  let count = 0;
  for (let at = text.indexOf(find); at >= 0; at = text.indexOf(find, at + find.length)) count++;
  return count;
}

/** The files of the working tree that git tracks or would track: what a clean clone has, and more. */
async function sourceFiles(): Promise<string[]> {
  const out = await new Deno.Command("git", {
    args: ["ls-files", "--cached", "--others", "--exclude-standard", "-z"],
    cwd: ROOT,
    stdout: "piped",
  }).output();
  if (!out.success) throw new Error("git ls-files failed: run this inside the repository");
  const files = new TextDecoder().decode(out.stdout).split("\0").filter(Boolean);
  // Deleted but not yet committed files are still listed; skip them.
  return files.filter((file) => {
    try {
      return Deno.statSync(`${ROOT}${file}`).isFile;
    } catch {
      return false;
    }
  });
}

/** A fresh copy of the tree, node_modules included so that nothing is fetched. */
async function copyTree(files: string[]): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "vpn-mutate-" });
  for (const file of files) {
    const target = `${dir}/${file}`;
    await Deno.mkdir(target.slice(0, target.lastIndexOf("/")), { recursive: true });
    await Deno.copyFile(`${ROOT}${file}`, target);
  }
  const cp = await new Deno.Command("cp", { args: ["-a", `${ROOT}node_modules`, dir] }).output();
  if (!cp.success) throw new Error("cannot copy node_modules: run scripts/setup.sh first");
  return dir;
}

/** How a test run ended: its tests' counts from deno's summary, or why there is none. */
type Run =
  | { kind: "ran"; passed: number; failed: number; output: string }
  | { kind: "hang"; output: string }
  | { kind: "error"; output: string };

/**
 * Runs the tests of `mutation` in `dir`. Only deno's summary line counts: a run that loads
 * no test (a missing file, a type error) is an error, not a catch.
 */
async function runTests(
  dir: string,
  mutation: Pick<Mutation, "tests" | "filter">,
  timeoutMs: number,
): Promise<Run> {
  const args = ["test", "--allow-all", "--unstable-net", "--no-check=remote"];
  if (mutation.filter) args.push("--filter", mutation.filter);
  // setsid: the test run and every process it starts form one group, killed together.
  const child = new Deno.Command("setsid", {
    args: [Deno.execPath(), ...args, ...mutation.tests],
    cwd: dir,
    env: { CI: "true", NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      Deno.kill(-child.pid, "SIGKILL");
    } catch {
      child.kill("SIGKILL");
    }
  }, timeoutMs);
  const out = await child.output();
  clearTimeout(timer);
  const output = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  if (timedOut) return { kind: "hang", output };
  const summary = /^(?:ok|FAILED) \| (\d+) passed.*?\| (\d+) failed/m.exec(output);
  if (summary === null) return { kind: "error", output };
  return { kind: "ran", passed: Number(summary[1]), failed: Number(summary[2]), output };
}

/** The names of the tests that failed, from deno test's report. */
function failedTests(output: string): string {
  const names = [...output.matchAll(/^(.+?) \.\.\. FAILED/gm)].map((m) => m[1]!.trim());
  return [...new Set(names)].slice(0, 3).join("; ");
}

/** The last non-empty line of an output, for a run that reported no tests. */
function lastLine(output: string): string {
  return output.trim().split("\n").at(-1)?.slice(0, 200) ?? "";
}

async function mutate(
  mutation: Mutation,
  files: string[],
  timeoutMs: number,
): Promise<Result> {
  const started = performance.now();
  const dir = await copyTree(files);
  try {
    const path = `${dir}/${mutation.file}`;
    const text = await Deno.readTextFile(path);
    const count = occurrences(text, mutation.find);
    if (count !== 1) {
      return {
        mutation,
        outcome: "stale",
        seconds: 0,
        detail: `its text occurs ${count} times in ${mutation.file}`,
      };
    }
    await Deno.writeTextFile(path, text.replace(mutation.find, () => mutation.replace));
    const run = await runTests(dir, mutation, timeoutMs);
    const seconds = (performance.now() - started) / 1000;
    if (run.kind === "hang") {
      return { mutation, outcome: "hang", seconds, detail: `ran past ${timeoutMs / 1000} s` };
    }
    if (run.kind === "error" || run.passed + run.failed === 0) {
      return { mutation, outcome: "error", seconds, detail: lastLine(run.output) };
    }
    if (run.failed === 0) return { mutation, outcome: "survived", seconds, detail: "" };
    return { mutation, outcome: "caught", seconds, detail: failedTests(run.output) };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Runs each distinct set of tests once on the unchanged code; throws if any fails. */
async function baseline(mutations: Mutation[], files: string[], timeoutMs: number) {
  const sets = new Map<string, Mutation>();
  for (const m of mutations) sets.set(`${m.tests.join(" ")}|${m.filter ?? ""}`, m);
  const dir = await copyTree(files);
  try {
    for (const m of sets.values()) {
      const what = m.tests.join(" ") + (m.filter ? ` --filter "${m.filter}"` : "");
      console.error(`baseline: ${what}`);
      const run = await runTests(dir, m, timeoutMs);
      if (run.kind !== "ran" || run.failed > 0 || run.passed === 0) {
        throw new Error(`the unchanged code fails ${what}:\n${run.output.slice(-4000)}`);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function table(results: Result[]): string {
  const rows = results.map((r) =>
    `| ${r.mutation.name} | ${r.mutation.breaks} | ${r.outcome} | ${r.seconds.toFixed(0)} | ${
      r.detail.replaceAll("|", "\\|")
    } |`
  );
  return [
    "| mutation | breaks | result | s | failing tests |",
    "| --- | --- | --- | --- | --- |",
    ...rows,
  ].join("\n");
}

async function main(args: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        only: { type: "string" },
        list: { type: "boolean", default: false },
        timeout: { type: "string", default: "600" },
        "no-baseline": { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
      strict: true,
    }));
  } catch (error) {
    console.error(`${(error as Error).message}\n\n${HELP}`);
    return 2;
  }
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const timeout = Number(values.timeout);
  if (!Number.isInteger(timeout) || timeout < 1) {
    console.error(`--timeout ${values.timeout}: must be a whole number of seconds`);
    return 2;
  }
  const only = values.only?.split(",").map((name) => name.trim()).filter(Boolean);
  const unknown = only?.filter((name) => !MUTATIONS.some((m) => m.name === name)) ?? [];
  if (unknown.length > 0) {
    console.error(`unknown mutation ${unknown.join(", ")}; --list shows them`);
    return 2;
  }
  const chosen = only ? MUTATIONS.filter((m) => only.includes(m.name)) : MUTATIONS;
  if (values.list) {
    for (const m of chosen) console.log(`${m.name.padEnd(28)} ${m.file.padEnd(20)} ${m.breaks}`);
    return 0;
  }
  const files = await sourceFiles();
  if (!values["no-baseline"]) await baseline(chosen, files, timeout * 1000);
  const results: Result[] = [];
  for (const mutation of chosen) {
    const result = await mutate(mutation, files, timeout * 1000);
    console.error(`${mutation.name}: ${result.outcome} (${result.seconds.toFixed(0)} s)`);
    results.push(result);
  }
  console.log(table(results));
  const count = (outcome: Outcome) => results.filter((r) => r.outcome === outcome).length;
  console.log(
    `\n${count("caught")} caught, ${count("survived")} survived, ${count("hang")} hung, ` +
      `${count("stale")} stale, ${count("error")} errors, of ${results.length}`,
  );
  return results.every((r) => r.outcome === "caught") ? 0 : 1;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
