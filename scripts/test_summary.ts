/**
 * Reads `deno test` output on stdin and prints CI's closing line, `N passed, N failed, N
 * skipped`, from Deno's last summary line (`ok | 12 passed (3 steps) | 0 failed | 2 ignored
 * (2s)`). Exits 1 when there is no summary line or a test failed, so that a run that never
 * got to its tests cannot pass.
 *
 * @module
 */

/** The counts of Deno's last summary line in `output`, or undefined when it has none. */
export function testSummary(
  output: string,
): { passed: number; failed: number; skipped: number } | undefined {
  const lines = output.split("\n").filter((line) => /^(ok|FAILED) \| \d+ passed/.test(line));
  const last = lines.at(-1);
  if (last === undefined) return undefined;
  const count = (word: string) => Number(new RegExp(`\\| (\\d+) ${word}`).exec(last)?.[1] ?? 0);
  return { passed: count("passed"), failed: count("failed"), skipped: count("ignored") };
}

if (import.meta.main) {
  const output = await new Response(Deno.stdin.readable).text();
  const summary = testSummary(output); // read with NO_COLOR=1
  if (summary === undefined) {
    console.log("0 passed, 1 failed, 0 skipped");
    Deno.exit(1);
  }
  console.log(`${summary.passed} passed, ${summary.failed} failed, ${summary.skipped} skipped`);
  Deno.exit(summary.failed === 0 && summary.passed > 0 ? 0 : 1);
}
