/**
 * TUN micro-benchmark (root): packets per second through the read and write paths of
 * `ffi/tun.ts`, with and without offload.
 *
 * Two namespaces; a relay process in the first reads every packet from one TUN and writes it
 * into another TUN that lives in the second namespace (tests/helpers/tun_probe.ts `relay`).
 * iperf3 then pushes a TCP stream and a UDP flood through the pair. Each packet crosses one
 * TUN read and one TUN write, so the relay's packet rate is the rate of both paths together.
 *
 * Usage: deno run -A scripts/tun_bench.ts [seconds] (see USAGE). Every process it starts and
 * both namespaces are removed on every exit, SIGINT and SIGTERM included.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { checkPreconditions } from "./_preflight.ts";

const PROBE = new URL("../tests/helpers/tun_probe.ts", import.meta.url).pathname;

const USAGE = `usage: deno task bench:tun [seconds]
       deno run --allow-all scripts/tun_bench.ts [seconds]

Measures the TUN binding (ffi/tun.ts) alone: a relay process reads every packet from one TUN and
writes it into a second TUN in another network namespace, while iperf3 pushes a TCP stream, then a
UDP flood of 1400-byte datagrams, through the pair; first with plain TUNs, then with offload. For
each of the four runs it prints what iperf3 received (Gbit/s), the relay's packets per second
(reads and writes) and the largest packet read.

  seconds     length of each iperf3 run, a whole number from 1 to 3600 (default 5)
  -h, --help  print this and exit

Needs root, iproute2 (ip) and iperf3; scripts/setup.sh installs them. It creates the network
namespaces vpnb-a-PID and vpnb-b-PID; on every exit, also on Ctrl-C (SIGINT) or SIGTERM, it stops
the relay and every iperf3 it started and deletes both namespaces.

Exit codes: 0 done, 1 a run failed, 2 bad arguments, not root or a tool missing, 130 after SIGINT,
143 after SIGTERM.`;

/** Each tool the benchmark runs, and the Debian package that provides it. */
const TOOLS: [string, string][] = [["ip", "iproute2"], ["iperf3", "iperf3"]];

function usageError(message: string): never {
  console.error(`tun_bench: ${message}\n\n${USAGE}`);
  Deno.exit(2);
}

/** The length of each iperf3 run in seconds; exits on `--help` or a bad argument. */
function parseSeconds(): number {
  let parsed;
  try {
    parsed = parseArgs({
      args: Deno.args,
      options: { help: { type: "boolean", short: "h" } },
      allowPositionals: true,
      strict: true,
    });
  } catch (error) {
    usageError((error as Error).message);
  }
  if (parsed.values.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  if (parsed.positionals.length > 1) {
    usageError(`one argument expected, got ${parsed.positionals.length}`);
  }
  const text = parsed.positionals[0] ?? "5";
  const seconds = Number(text);
  // iperf3 reads -t as a whole number, and 0 would make it run for ever.
  if (!/^\d+$/.test(text) || seconds < 1 || seconds > 3600) {
    usageError(`${JSON.stringify(text)}: seconds must be a whole number from 1 to 3600`);
  }
  return seconds;
}

// ---------------------------------------------------------------------------------------------
// Processes and clean-up. Every child is registered as it starts, so that clean-up finds it.

const nsA = `vpnb-a-${Deno.pid}`;
const nsB = `vpnb-b-${Deno.pid}`;
const processes = new Set<Deno.ChildProcess>();
let stopping = false;
let cleaning: Promise<void> | undefined;

/**
 * Starts `cmd`. `ip netns exec` execs the program, so the child's pid is the program's own
 * (iperf3, the relay's deno). Once clean-up has begun, only its own commands may start: the run
 * is over, and a child started then could outlive it.
 */
function spawn(cmd: string[], options: Deno.CommandOptions, forCleanup = false): Deno.ChildProcess {
  if (stopping && !forCleanup) throw new Error("interrupted");
  const child = new Deno.Command(cmd[0]!, { args: cmd.slice(1), ...options }).spawn();
  processes.add(child);
  child.status.then(() => processes.delete(child));
  return child;
}

/** Runs `cmd` to completion within `ms` (killed after that); throws when it fails. */
async function run(cmd: string[], ms = 30_000, allowFail = false, forCleanup = false) {
  const child = spawn(cmd, { stdin: "null", stdout: "piped", stderr: "piped" }, forCleanup);
  const timer = setTimeout(() => kill(child, "SIGKILL"), ms);
  const out = await child.output().finally(() => clearTimeout(timer));
  if (!out.success && !allowFail) {
    const stderr = new TextDecoder().decode(out.stderr).trim();
    throw new Error(`${cmd.join(" ")} exited ${out.signal ?? out.code}: ${stderr}`);
  }
  return new TextDecoder().decode(out.stdout);
}

function kill(child: Deno.ChildProcess, signal: Deno.Signal): void {
  try {
    child.kill(signal);
  } catch { /* already gone */ }
}

/** Stops every child (SIGTERM, SIGKILL after 3 s) and deletes both namespaces; runs once. */
function cleanup(): Promise<void> {
  stopping = true;
  cleaning ??= (async () => {
    await Promise.all([...processes].map(async (child) => {
      kill(child, "SIGTERM");
      const timer = setTimeout(() => kill(child, "SIGKILL"), 3_000);
      await child.status.finally(() => clearTimeout(timer));
    }));
    for (const ns of [nsA, nsB]) {
      // Anything still inside our namespaces was started by this script.
      const pids = await run(["ip", "netns", "pids", ns], 5_000, true, true).catch(() => "");
      for (const pid of pids.split(/\s+/).filter(Boolean)) {
        try {
          Deno.kill(Number(pid), "SIGKILL");
        } catch { /* already gone */ }
      }
      await run(["ip", "netns", "del", ns], 10_000, true, true).catch(() => {});
    }
  })();
  return cleaning;
}

// ---------------------------------------------------------------------------------------------
// Measurement

interface Row {
  mode: string;
  traffic: string;
  gbits: number;
  pps: number;
  largest: number;
}

async function measure(seconds: number, offload: boolean, udp: boolean): Promise<Row> {
  const deno = [Deno.execPath(), "run", "--allow-all", PROBE];
  const relay = spawn(
    ["ip", "netns", "exec", nsA, ...deno, "relay", nsB, offload ? "offload" : "plain"],
    { stdin: "piped", stdout: "piped" },
  );
  const lines = relay.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  const nextLine = async () => {
    while (!buffered.includes("\n")) {
      const { value, done } = await lines.read();
      if (done) throw new Error("relay ended early");
      buffered += value;
    }
    const line = buffered.slice(0, buffered.indexOf("\n"));
    buffered = buffered.slice(line.length + 1);
    return JSON.parse(line);
  };
  await nextLine(); // ready
  await run(["ip", "-n", nsB, "addr", "add", "10.79.0.2/24", "dev", "vpnrb"]);
  await run(["ip", "-n", nsB, "link", "set", "vpnrb", "up"]);
  const server = spawn(
    ["ip", "netns", "exec", nsB, "iperf3", "-s", "-1", "-B", "10.79.0.2"],
    { stdout: "null", stderr: "null" },
  );
  await new Promise((resolve) => setTimeout(resolve, 500));
  const args = ["-c", "10.79.0.2", "-t", String(seconds), "-J"];
  if (udp) args.push("-u", "-b", "0", "-l", "1400");
  // Without the relay, iperf3 would wait out its whole run on a dead link.
  const result = JSON.parse(
    await Promise.race([
      run(["ip", "netns", "exec", nsA, "iperf3", ...args], seconds * 1000 + 30_000),
      relay.status.then((status) => {
        throw new Error(`relay exited ${status.signal ?? status.code} during the iperf3 run`);
      }),
    ]),
  );
  await server.status;
  await relay.stdin.close();
  const stats = await nextLine();
  await relay.status;
  const end = result.end;
  const bits = end.sum_received.bits_per_second; // what arrived, not what was offered
  const packets = stats.a.readPackets + stats.b.readPackets;
  return {
    mode: offload ? "offload" : "plain",
    traffic: udp ? "UDP 1400 B" : "TCP stream",
    gbits: bits / 1e9,
    pps: packets / stats.seconds,
    largest: stats.largestRead,
  };
}

async function main(seconds: number): Promise<void> {
  await run(["ip", "netns", "add", nsA]);
  await run(["ip", "netns", "add", nsB]);
  const rows: Row[] = [];
  for (const offload of [false, true]) {
    for (const udp of [false, true]) rows.push(await measure(seconds, offload, udp));
  }
  console.log(
    "| TUN mode | traffic | iperf3 received Gbit/s | relay packets/s (read+write) | largest read |",
  );
  console.log("|---|---|---|---|---|");
  for (const r of rows) {
    console.log(
      `| ${r.mode} | ${r.traffic} | ${r.gbits.toFixed(2)} | ${Math.round(r.pps)} | ${r.largest} |`,
    );
  }
}

if (import.meta.main) {
  const seconds = parseSeconds();
  checkPreconditions("tun_bench", TOOLS);
  /** Set by SIGINT or SIGTERM: the exit code, 128 + the signal's number. */
  let signalled: number | undefined;
  const onSignal = (code: number) => async () => {
    // A Ctrl-C reaches this process twice under `deno task`, which forwards it.
    if (signalled !== undefined) return;
    signalled = code;
    console.error("tun_bench: interrupted; cleaning up");
    await cleanup();
    Deno.exit(signalled);
  };
  Deno.addSignalListener("SIGINT", onSignal(130));
  Deno.addSignalListener("SIGTERM", onSignal(143));
  let code = 0;
  try {
    await main(seconds);
  } catch (error) {
    code = 1;
    // Once interrupted, a failure is the clean-up stopping the run, not news.
    if (signalled === undefined) console.error(`tun_bench: ${(error as Error).message}`);
  } finally {
    await cleanup();
  }
  Deno.exit(signalled ?? code);
}
