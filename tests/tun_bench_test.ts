/**
 * `deno task bench:tun` (scripts/tun_bench.ts) as an operator meets it: `--help` and bad
 * arguments answer without creating anything, and SIGINT or SIGTERM in the middle of a run
 * leaves neither its namespaces nor any process it started. The script runs as the task runs
 * it, `deno run --allow-all scripts/tun_bench.ts`.
 */

import { assert, assertEquals, assertMatch } from "./_assert.ts";
import { rootTest, run } from "./_netns.ts";
import { waitFor } from "./_vpn.ts";
import { exitOf, kill, within } from "./_wait.ts";

const SCRIPT = new URL("../scripts/tun_bench.ts", import.meta.url).pathname;

/** A process seen inside the benchmark's namespaces; the start time tells a reused pid apart. */
interface Seen {
  pid: number;
  comm: string;
  start: string;
}

/** The process `pid` as /proc shows it, or undefined when it is gone (or a zombie). */
function inspect(pid: number): Seen | undefined {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    // The fields after the parenthesised command name: state is the first, start time the 20th.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    if (fields[0] === "Z") return undefined;
    const comm = Deno.readTextFileSync(`/proc/${pid}/comm`).trim();
    return { pid, comm, start: fields[19]! };
  } catch {
    return undefined;
  }
}

function stillRunning(seen: Seen): boolean {
  return inspect(seen.pid)?.start === seen.start;
}

async function netnsList(): Promise<string[]> {
  const { stdout } = await run(["ip", "netns", "list"]);
  return stdout.split("\n").map((line) => line.split(" ")[0]!).filter(Boolean);
}

/** One run of the benchmark; disposing it removes whatever the run may have left. */
class Bench implements AsyncDisposable {
  readonly child: Deno.ChildProcess;
  /** `vpnb-a-PID` and `vpnb-b-PID`, the names the script gives its namespaces. */
  readonly namespaces: [string, string];
  /** Every process seen inside those namespaces. */
  readonly seen: Seen[] = [];
  stdout = "";
  stderr = "";
  readonly #output: Promise<unknown>;

  constructor(args: string[]) {
    this.child = new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-all", SCRIPT, ...args],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.namespaces = [`vpnb-a-${this.child.pid}`, `vpnb-b-${this.child.pid}`];
    const collect = async (stream: ReadableStream<Uint8Array>, into: "stdout" | "stderr") => {
      for await (const text of stream.pipeThrough(new TextDecoderStream())) this[into] += text;
    };
    this.#output = Promise.all([
      collect(this.child.stdout, "stdout"),
      collect(this.child.stderr, "stderr"),
    ]);
  }

  /** The processes inside each of the benchmark's namespaces now, each remembered in `seen`. */
  async processes(): Promise<Seen[][]> {
    const found: Seen[][] = [];
    for (const ns of this.namespaces) {
      const { stdout } = await run(["ip", "netns", "pids", ns], true);
      const procs = stdout.split("\n").filter(Boolean).map((pid) => inspect(Number(pid)));
      found.push(procs.filter((proc) => proc !== undefined));
    }
    for (const proc of found.flat()) {
      if (!this.seen.some((s) => s.pid === proc.pid && s.start === proc.start)) {
        this.seen.push(proc);
      }
    }
    return found;
  }

  /**
   * Waits (bounded) for the exit and the end of the output, checking the namespace list all
   * along: true in `created` when either of the script's namespaces showed up meanwhile.
   */
  async exit(ms: number): Promise<{ status: Deno.CommandStatus; created: boolean }> {
    let exited: Deno.CommandStatus | undefined;
    this.child.status.then((status) => exited = status);
    let created = false;
    await waitFor("the benchmark exits", async () => {
      const names = await netnsList();
      created ||= this.namespaces.some((ns) => names.includes(ns));
      return exited;
    }, ms);
    await within(this.#output, 10_000, "the end of the benchmark's output");
    return { status: exited!, created };
  }

  async [Symbol.asyncDispose](): Promise<void> {
    kill(this.child);
    await exitOf(this.child, 10_000, "the benchmark").catch(() => {});
    for (const proc of this.seen) {
      if (!stillRunning(proc)) continue;
      try {
        Deno.kill(proc.pid, "SIGKILL");
      } catch { /* gone meanwhile */ }
    }
    for (const ns of this.namespaces) {
      const { stdout } = await run(["ip", "netns", "pids", ns], true);
      for (const pid of stdout.split("\n").filter(Boolean)) {
        try {
          Deno.kill(Number(pid), "SIGKILL");
        } catch { /* gone meanwhile */ }
      }
      await run(["ip", "netns", "del", ns], true);
    }
    await within(this.#output, 10_000, "the end of the benchmark's output").catch(() => {});
  }
}

Deno.test("bench:tun --help and -h print the usage, exit 0 and create no namespace", async () => {
  for (const flag of ["--help", "-h"]) {
    const before = (await netnsList()).filter((ns) => ns.startsWith("vpnb-"));
    await using bench = new Bench([flag]);
    const { status, created } = await bench.exit(30_000);
    assertEquals(status.code, 0, `${flag}: ${bench.stderr}`);
    assertEquals(created, false, `${flag} created a namespace`);
    assertMatch(bench.stdout, /^usage: deno task bench:tun \[seconds\]/);
    for (const topic of [/relay process/, /iperf3/, /seconds +length of each iperf3 run/]) {
      assertMatch(bench.stdout, topic);
    }
    assertMatch(bench.stdout, /Needs root, iproute2 \(ip\) and iperf3/);
    assertMatch(bench.stdout, /130 after SIGINT/);
    assertEquals(bench.stderr, "");
    const after = (await netnsList()).filter((ns) => ns.startsWith("vpnb-"));
    assertEquals(after, before);
  }
});

Deno.test("bench:tun with a bad argument prints the usage to stderr and exits 2", async () => {
  const cases: [string[], RegExp][] = [
    [["0"], /"0": seconds must be a whole number from 1 to 3600/],
    [["3601"], /"3601": seconds must be a whole number from 1 to 3600/],
    [["1.5"], /"1\.5": seconds must be a whole number/],
    [["ten"], /"ten": seconds must be a whole number/],
    [["--frobnicate"], /Unknown option '--frobnicate'/],
    [["5", "6"], /one argument expected, got 2/],
  ];
  for (const [args, message] of cases) {
    await using bench = new Bench(args);
    const { status, created } = await bench.exit(30_000);
    assertEquals(status.code, 2, `${args.join(" ")}: ${bench.stderr}`);
    assertEquals(created, false, `${args.join(" ")} created a namespace`);
    assertMatch(bench.stderr, message);
    assertMatch(bench.stderr, /usage: deno task bench:tun \[seconds\]/);
    assertEquals(bench.stdout, "");
  }
});

for (const [signal, code] of [["SIGINT", 130], ["SIGTERM", 143]] as const) {
  rootTest(
    `bench:tun stopped by ${signal} mid-run removes its namespaces, relay and iperf3 processes and exits ${code}`,
    async () => {
      await using bench = new Bench(["3600"]);
      // The busiest moment: the relay runs in the first namespace, the iperf3 client beside it,
      // and the iperf3 server in the second.
      await waitFor("the relay and both iperf3 processes", async () => {
        const [inA, inB] = await bench.processes();
        const iperf3 = (procs: Seen[]) => procs.some((proc) => proc.comm === "iperf3");
        const relay = inA!.some((proc) => proc.comm === "deno");
        return (relay && iperf3(inA!) && iperf3(inB!)) || undefined;
      }, 60_000);

      bench.child.kill(signal);
      const { status } = await bench.exit(30_000);
      // The script's own exit code, not death by the signal (which Deno also reports as 128 + n).
      assertEquals(status.signal, null, `the script died of ${status.signal}: ${bench.stderr}`);
      assertEquals(status.code, code, bench.stderr);
      assertMatch(bench.stderr, /tun_bench: interrupted; cleaning up/);
      assert(!bench.stdout.includes("| TUN mode"), "an interrupted run prints no table");

      const names = await netnsList();
      for (const ns of bench.namespaces) assert(!names.includes(ns), `${ns} is still there`);
      const left = bench.seen.filter(stillRunning);
      assertEquals(left, [], `still running: ${JSON.stringify(left)}`);
    },
  );
}
