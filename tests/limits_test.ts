/**
 * ffi/limits.ts: the open-file limit as /proc/self/limits shows it, and raising the soft limit
 * to the hard one. The soft limit is first lowered from outside (util-linux `prlimit --pid`),
 * since Deno itself starts with both equal.
 */

import { assertEquals } from "./_assert.ts";
import { fileLimit, raiseFileLimit } from "../ffi/limits.ts";

/** Soft and hard "Max open files" of this process, as the kernel reports them. */
function procLimits(): { soft: number; hard: number } {
  const line = Deno.readTextFileSync("/proc/self/limits").split("\n")
    .find((l) => l.startsWith("Max open files"))!;
  const [soft, hard] = line.slice("Max open files".length).trim().split(/\s+/);
  const value = (text: string | undefined) => text === "unlimited" ? Infinity : Number(text);
  return { soft: value(soft), hard: value(hard) };
}

function hasPrlimit(): boolean {
  try {
    new Deno.Command("prlimit", { args: ["--version"], stdout: "null" }).outputSync();
    return true;
  } catch {
    return false;
  }
}

Deno.test("fileLimit() reads what /proc/self/limits shows", () => {
  assertEquals(fileLimit(), procLimits());
});

Deno.test({
  name: "raiseFileLimit() raises a lowered soft limit to the hard limit",
  ignore: Deno.build.os !== "linux" || !hasPrlimit(),
  fn() {
    const { hard } = fileLimit();
    const lowered = Math.min(256, hard);
    const set = new Deno.Command("prlimit", {
      args: ["--pid", String(Deno.pid), `--nofile=${lowered}:`],
    }).outputSync();
    assertEquals(set.code, 0, new TextDecoder().decode(set.stderr));
    assertEquals(procLimits().soft, lowered);
    assertEquals(raiseFileLimit(), { soft: hard, hard });
    assertEquals(procLimits(), { soft: hard, hard });
  },
});
