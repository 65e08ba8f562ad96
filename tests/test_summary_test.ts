import { assertEquals } from "./_assert.ts";
import { testSummary } from "../scripts/test_summary.ts";
import { rootTest, underCi } from "./_netns.ts";

Deno.test("testSummary() reads passed, failed and ignored from Deno's summary line", () => {
  assertEquals(testSummary("a ... ok\nok | 263 passed | 0 failed (1m31s)\n"), {
    passed: 263,
    failed: 0,
    skipped: 0,
  });
  assertEquals(testSummary("FAILED | 11 passed (3 steps) | 1 failed | 2 ignored (5s)"), {
    passed: 11,
    failed: 1,
    skipped: 2,
  });
  assertEquals(testSummary("ok | 5 passed | 0 failed | 1 ignored | 7 filtered out (1s)"), {
    passed: 5,
    failed: 0,
    skipped: 1,
  });
});

Deno.test("testSummary() takes the last summary line and finds none in other output", () => {
  const two = "ok | 1 passed | 0 failed (1s)\nFAILED | 2 passed | 3 failed (1s)\n";
  assertEquals(testSummary(two), { passed: 2, failed: 3, skipped: 0 });
  assertEquals(testSummary("error: Module not found\n"), undefined);
  assertEquals(testSummary("a test named ok | 3 passed ... ok\n"), undefined);
});

Deno.test("underCi() takes any true-ish CI value, and not empty, 0, false, no or off", () => {
  for (const value of ["true", "1", "yes", "TRUE", "on", "github"]) {
    assertEquals(underCi(value), true, value);
  }
  for (const value of [undefined, "", "0", "false", "False", "no", "off"]) {
    assertEquals(underCi(value), false, String(value));
  }
});

const PROBE = new URL("./helpers/root_probe.ts", import.meta.url).pathname;

/** Runs the probe's one root test where /dev/net/tun is hidden; returns .ci/run's last line. */
async function probeWithoutTun(ci: string | undefined): Promise<string> {
  const summary = new URL("../scripts/test_summary.ts", import.meta.url).pathname;
  // CI is set (or unset) inside, since this very test runs under CI=true there.
  const script = `${ci === undefined ? "unset CI" : `export CI=${ci}`} && ` +
    `mount -t tmpfs none /dev/net && "$0" test --allow-all "$1" 2>&1 | "$0" run "$2"`;
  const args = ["--mount", "--propagation", "private", "sh", "-c", script];
  const out = await new Deno.Command("unshare", {
    args: [...args, Deno.execPath(), PROBE, summary],
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(60_000),
  }).output();
  return new TextDecoder().decode(out.stdout).trim().split("\n").at(-1) ?? "";
}

rootTest(
  "a root test that cannot run is skipped, and counted, locally, and fails under CI",
  async () => {
    assertEquals(await probeWithoutTun(undefined), "0 passed, 0 failed, 1 skipped");
    assertEquals(await probeWithoutTun("0"), "0 passed, 0 failed, 1 skipped");
    assertEquals(await probeWithoutTun("1"), "0 passed, 1 failed, 0 skipped");
    assertEquals(await probeWithoutTun("yes"), "0 passed, 1 failed, 0 skipped");
  },
);
