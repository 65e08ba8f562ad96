/**
 * VPN benchmark (root): this project against Debian's `openvpn` 2.6, in the same two network
 * namespaces, with the same iperf3 and ping commands, one after the other.
 *
 * Topology: a server namespace (172.31.250.1/24) and a client namespace (172.31.250.2/24) joined
 * by a veth pair. Each case brings up a tunnel (server 10.8.0.1, client 10.8.0.2), measures, and
 * tears it down:
 *
 *   1. `vpn` with data in the TLS session (`vpn connect --proto tcp`);
 *   2. `vpn` with the UDP data channel (`--proto udp`);
 *   3. `openvpn` over TCP (`proto tcp-server` / `tcp-client`);
 *   4. `openvpn` over UDP;
 *   5. Debian's `openvpn` client against `vpn serve` over TCP (`openvpn.tcp_port`);
 *   6. the same over UDP (`listen.port`).
 *
 * OpenVPN runs with `dev tun`, `topology subnet`, AES-256-GCM only, `disable-dco`, no
 * compression, and certificates made here with the `openssl` command line (EC P-256).
 *
 * Cases 5 and 6 put a second server under the same stock client as cases 3 and 4: the client
 * runs the profile `vpn client add --format ovpn` writes, with the command-line options that
 * make it the client of cases 3 and 4 on the data path (`--disable-dco`, `--data-ciphers
 * AES-256-GCM`, `--verb 1`). `vpn serve` then runs with `mtu: 1500`, OpenVPN's default
 * tun-mtu that cases 3 and 4 run with, so both servers carry the same packets (its own default,
 * 1400, would give OpenVPN's server 7 % more payload per packet). tls-crypt, which only the
 * profile has, wraps control packets alone. A second table compares the two servers under that
 * client: throughput, and server CPU per Mbit/s, each as `vpn serve` ÷ OpenVPN's server.
 *
 * Per case, client → server through the tunnel (iperf3 server bound to 10.8.0.1):
 * - iperf3 single TCP stream: median receiver rate of `--runs` runs of `--seconds` s;
 * - iperf3 `-P 4`: one run;
 * - ping (first, on the idle tunnel): average RTT of 200 pings 10 ms apart;
 * - CPU of the server and client VPN processes (utime + stime from /proc/PID/stat, every
 *   thread) during the single-stream runs, as % of one core;
 * - server CPU per Mbit/s: the server's CPU milliseconds in those runs ÷ the megabits iperf3
 *   received in them (the same as its CPU share ÷ the rate, without iperf3's start and stop).
 *
 * With `--floor`, one more case measures the RTT of `scripts/_rtt_floor.ts`, the smallest UDP
 * tunnel this runtime can run (one thread in one synchronous `poll`), against OpenVPN's over UDP:
 * the floor under this project's RTT.
 *
 * Usage: deno run -A scripts/bench.ts [--seconds N] [--runs N] [--floor]
 *
 * Exit codes: 0 done, 1 a case failed, 2 missing tools, not root or bad arguments. Processes,
 * namespaces and temporary directories are removed on every exit, SIGINT and SIGTERM included.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { checkPreconditions } from "./_preflight.ts";
import { waitFor } from "../tests/_vpn.ts";
import {
  clientConfig,
  makeOpenVpnPki,
  OPENVPN_TUN_MTU,
  type OpenVpnPki,
  PROFILE_OVERRIDES,
  serverConfig,
} from "./_bench_openvpn.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const FLOOR = new URL("./_rtt_floor.ts", import.meta.url).pathname;
const DENO = [Deno.execPath(), "run", "--allow-all", "--unstable-net"];

const SERVER_NS = `vpnbench-srv-${Deno.pid}`;
const CLIENT_NS = `vpnbench-cli-${Deno.pid}`;
const SERVER_LINK = "172.31.250.1";
const CLIENT_LINK = "172.31.250.2";
const SERVER_TUN = "10.8.0.1";
const CLIENT_TUN = "10.8.0.2";
const IPERF_PORT = "5201";
const PINGS = 200;

/** Each tool the benchmark runs, and the Debian package that provides it. */
const TOOLS: [string, string][] = [
  ["ip", "iproute2"],
  ["ss", "iproute2"],
  ["iperf3", "iperf3"],
  ["openvpn", "openvpn"],
  ["openssl", "openssl"],
  ["ping", "iputils-ping"],
];

// ---------------------------------------------------------------------------------------------
// Arguments and preconditions

const USAGE = "usage: deno run -A scripts/bench.ts [--seconds N] [--runs N] [--floor]";

function positiveInteger(name: string, value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 3600) {
    console.error(`bench: --${name} ${value}: must be a whole number from 1 to 3600\n${USAGE}`);
    Deno.exit(2);
  }
  return n;
}

function parseOptions(): Settings {
  try {
    const { values } = parseArgs({
      args: Deno.args,
      options: {
        seconds: { type: "string", default: "10" },
        runs: { type: "string", default: "3" },
        floor: { type: "boolean", default: false },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
    });
    if (values.help) {
      console.log(USAGE);
      Deno.exit(0);
    }
    return {
      seconds: positiveInteger("seconds", values.seconds),
      runs: positiveInteger("runs", values.runs),
      floor: values.floor,
    };
  } catch (error) {
    console.error(`bench: ${(error as Error).message}\n${USAGE}`);
    Deno.exit(2);
  }
}

// ---------------------------------------------------------------------------------------------
// Commands, processes and clean-up. Everything started or created is registered here first.

const processes = new Set<Proc>();
const namespaces: string[] = [];
const tempDirs: string[] = [];

/** Runs `cmd` to completion within `ms` (killed after that); throws when it fails. */
async function run(cmd: string[], ms = 30_000, allowFail = false): Promise<string> {
  const child = new Deno.Command(cmd[0]!, {
    args: cmd.slice(1),
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
  }, ms);
  const out = await child.output().finally(() => clearTimeout(timer));
  const stdout = new TextDecoder().decode(out.stdout);
  if (timedOut) throw new Error(`${cmd.join(" ")}: killed after ${ms} ms`);
  if (!out.success && !allowFail) {
    const stderr = new TextDecoder().decode(out.stderr);
    throw new Error(`${cmd.join(" ")} exited ${out.code}: ${stderr}${stdout}`.trim());
  }
  return stdout;
}

function inNs(ns: string, cmd: string[]): string[] {
  return ["ip", "netns", "exec", ns, ...cmd];
}

const LOG_LIMIT = 256 * 1024;

/**
 * A long-running process inside a namespace. `ip netns exec` execs the program, so the pid of
 * the spawned child is the program's own (deno, openvpn, iperf3).
 */
class Proc {
  readonly label: string;
  readonly child: Deno.ChildProcess;
  #log = "";
  #exit: Deno.CommandStatus | undefined;
  readonly #reading: Promise<void>;

  constructor(label: string, ns: string, cmd: string[]) {
    this.label = label;
    const argv = inNs(ns, cmd);
    this.child = new Deno.Command(argv[0]!, {
      args: argv.slice(1),
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    processes.add(this);
    this.child.status.then((status) => this.#exit = status);
    this.#reading = Promise.all([
      this.#collect(this.child.stdout),
      this.#collect(this.child.stderr),
    ])
      .then(() => {}, () => {});
  }

  async #collect(stream: ReadableStream<Uint8Array>): Promise<void> {
    for await (const text of stream.pipeThrough(new TextDecoderStream())) {
      this.#log += text;
      if (this.#log.length > LOG_LIMIT) this.#log = this.#log.slice(-LOG_LIMIT / 2);
    }
  }

  get pid(): number {
    return this.child.pid;
  }

  get log(): string {
    return this.#log;
  }

  /** Throws with the output when the process has ended. */
  assertAlive(): void {
    if (this.#exit !== undefined) {
      throw new Error(`${this.label} exited with ${this.#exit.code}; output:\n${this.tail()}`);
    }
  }

  tail(lines = 30): string {
    return this.#log.trimEnd().split("\n").slice(-lines).join("\n");
  }

  /** Waits (bounded) until the output matches `pattern`; fails early when the process ends. */
  async waitForLog(pattern: RegExp, ms: number): Promise<void> {
    try {
      await waitFor(`${this.label}: ${pattern}`, () => {
        if (pattern.test(this.#log)) return true;
        this.assertAlive();
        return undefined;
      }, ms);
    } catch (error) {
      if (this.#exit !== undefined) throw error;
      throw new Error(`${(error as Error).message}; output:\n${this.tail()}`);
    }
  }

  /** Waits up to `ms` for the process to end by itself, then stops it. */
  async exited(ms: number): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      this.child.status,
      new Promise((resolve) => timer = setTimeout(resolve, ms)),
    ]);
    clearTimeout(timer);
    await this.stop();
  }

  /** SIGTERM, then SIGKILL after `ms`; waits for the exit. */
  async stop(ms = 5_000): Promise<void> {
    if (this.#exit === undefined) {
      try {
        this.child.kill("SIGTERM");
      } catch { /* already gone */ }
      let timer: ReturnType<typeof setTimeout> | undefined;
      const done = await Promise.race([
        this.child.status.then(() => true),
        new Promise<false>((resolve) => timer = setTimeout(() => resolve(false), ms)),
      ]);
      clearTimeout(timer);
      if (!done) {
        try {
          this.child.kill("SIGKILL");
        } catch { /* already gone */ }
        await this.child.status;
      }
    }
    await this.#reading;
    processes.delete(this);
  }
}

let cleaning: Promise<void> | undefined;
/** Set by SIGINT or SIGTERM: the run stops and reports nothing more. */
let interrupted = false;

/** Stops every process, deletes the namespaces and temporary directories; runs once. */
function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    await Promise.all([...processes].map((p) => p.stop(3_000).catch(() => {})));
    for (const ns of namespaces) {
      // Anything still inside our namespaces was started by this script.
      const pids = await run(["ip", "netns", "pids", ns], 5_000, true).catch(() => "");
      for (const pid of pids.split(/\s+/).filter(Boolean).map(Number)) {
        try {
          Deno.kill(pid, "SIGKILL");
        } catch { /* already gone */ }
      }
      await run(["ip", "netns", "del", ns], 10_000, true).catch(() => {});
    }
    for (const dir of tempDirs) await Deno.remove(dir, { recursive: true }).catch(() => {});
  })();
  return cleaning;
}

// ---------------------------------------------------------------------------------------------
// Topology

async function createTopology(): Promise<void> {
  for (const ns of [SERVER_NS, CLIENT_NS]) {
    namespaces.push(ns);
    await run(["ip", "netns", "add", ns]);
    await run(inNs(ns, ["ip", "link", "set", "lo", "up"]));
  }
  const serverEnd = `vbs${Deno.pid}`;
  const clientEnd = `vbc${Deno.pid}`;
  await run([
    "ip",
    "link",
    "add",
    serverEnd,
    "netns",
    SERVER_NS,
    "type",
    "veth",
    "peer",
    clientEnd,
    "netns",
    CLIENT_NS,
  ]);
  await run(inNs(SERVER_NS, ["ip", "addr", "add", `${SERVER_LINK}/24`, "dev", serverEnd]));
  await run(inNs(CLIENT_NS, ["ip", "addr", "add", `${CLIENT_LINK}/24`, "dev", clientEnd]));
  await run(inNs(SERVER_NS, ["ip", "link", "set", serverEnd, "up"]));
  await run(inNs(CLIENT_NS, ["ip", "link", "set", clientEnd, "up"]));
}

/** Waits until `address` is on an interface of namespace `ns`; returns the interface name. */
function waitForAddress(ns: string, address: string, ms: number, alive: Proc[]): Promise<string> {
  return waitFor(`${address} in ${ns}`, async () => {
    for (const p of alive) p.assertAlive();
    const links = JSON.parse(await run(inNs(ns, ["ip", "-j", "-4", "addr", "show"]))) as {
      ifname: string;
      addr_info: { local: string }[];
    }[];
    return links.find((l) => l.addr_info.some((a) => a.local === address))?.ifname;
  }, ms);
}

// ---------------------------------------------------------------------------------------------
// Measurements

let clockTicks = 100;

/** utime + stime of a whole process (every thread), in seconds. */
async function cpuSeconds(pid: number): Promise<number> {
  const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
  // Fields after "(comm)": state is field 3, utime field 14, stime field 15.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / clockTicks;
}

async function processName(pid: number): Promise<string> {
  return (await Deno.readTextFile(`/proc/${pid}/comm`)).trim();
}

interface IperfResult {
  bitsPerSecond: number;
  /** Bytes the receiver got over the test. */
  bytes: number;
}

/**
 * One iperf3 test from the client namespace to `address`, against a one-off server (`-1`)
 * started for it: a server that still drains the previous test (data queued in a TCP tunnel)
 * would refuse the next one. `around` brackets the client run alone (for CPU sampling).
 */
async function iperf(
  address: string,
  seconds: number,
  streams: number,
  around: { before?: () => Promise<void>; after?: () => Promise<void> } = {},
): Promise<IperfResult> {
  const server = await iperfServer(address);
  try {
    const args = ["iperf3", "-c", address, "-p", IPERF_PORT, "-t", String(seconds), "-J"];
    args.push("--connect-timeout", "5000");
    if (streams > 1) args.push("-P", String(streams));
    await around.before?.();
    const out = await run(inNs(CLIENT_NS, args), seconds * 1000 + 30_000, true);
    await around.after?.();
    let report: {
      error?: string;
      end?: { sum_received?: { bits_per_second?: number; bytes?: number } };
    };
    try {
      report = JSON.parse(out);
    } catch {
      throw new Error(`iperf3 printed no JSON report: ${out.slice(0, 500)}`);
    }
    const bps = report.end?.sum_received?.bits_per_second;
    const bytes = report.end?.sum_received?.bytes;
    if (report.error !== undefined || bps === undefined || bytes === undefined) {
      throw new Error(`iperf3 -c ${address}: ${report.error ?? "no receiver rate in the report"}`);
    }
    return { bitsPerSecond: bps, bytes };
  } finally {
    // The one-off server exits by itself once the test is over; give it a few seconds.
    await server.exited(10_000);
  }
}

/** Starts a one-off iperf3 server bound to `address` in the server namespace; waits until it listens. */
async function iperfServer(address: string): Promise<Proc> {
  const server = new Proc("iperf3 -s", SERVER_NS, [
    "iperf3",
    "-s",
    "-1",
    "-B",
    address,
    "-p",
    IPERF_PORT,
  ]);
  try {
    await waitFor(`iperf3 listening on ${address}:${IPERF_PORT}`, async () => {
      server.assertAlive();
      const listening = await run(inNs(SERVER_NS, ["ss", "-Htln"]));
      return listening.includes(`${address}:${IPERF_PORT}`) ? true : undefined;
    }, 10_000);
  } catch (error) {
    await server.stop();
    throw error;
  }
  return server;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

const mbit = (bps: number) => bps / 1e6;

type Mode = "TLS/TCP" | "UDP";

/** Whose program runs an end of the tunnel: this project's (`deno`) or Debian's `openvpn`. */
type Tool = "vpn" | "openvpn";

interface Row {
  mode: Mode;
  client: Tool;
  server: Tool;
  single: number;
  parallel: number;
  rtt: number;
  cpuServer: number;
  cpuClient: number;
  /** Server CPU milliseconds per megabit received in the single-stream runs. */
  serverCpuPerMbit: number;
}

interface Settings {
  seconds: number;
  runs: number;
  /** Also measure the RTT floor of `_rtt_floor.ts`. */
  floor: boolean;
}

/** The program name in /proc/PID/comm of each tool's process. */
const PROGRAM: Record<Tool, string> = { vpn: "deno", openvpn: "openvpn" };

/** "openvpn client -> vpn serve (UDP)": a case of the stock client, by server. */
function stockLabel(mode: Mode, server: Tool): string {
  const transport = mode === "UDP" ? "UDP" : "TCP";
  return `openvpn client -> ${server === "vpn" ? "vpn serve" : "openvpn server"} (${transport})`;
}

/** "vpn UDP" for a tool against itself, else as {@linkcode stockLabel} says. */
function caseLabel(mode: Mode, client: Tool, server: Tool): string {
  return client === server ? `${client} ${mode}` : stockLabel(mode, server);
}

/** Measures the tunnel that `vpnServer` and `vpnClient` hold up (10.8.0.2 → 10.8.0.1). */
async function measureTunnel(
  mode: Mode,
  tools: { client: Tool; server: Tool },
  vpnServer: Proc,
  vpnClient: Proc,
  settings: Settings,
): Promise<Row> {
  const label = caseLabel(mode, tools.client, tools.server);
  const names = [await processName(vpnServer.pid), await processName(vpnClient.pid)];
  const expected = [PROGRAM[tools.server], PROGRAM[tools.client]];
  if (names.some((n, i) => n !== expected[i])) {
    throw new Error(
      `${label}: the VPN processes are ${names.join(", ")}, not ${expected.join(", ")}`,
    );
  }
  await waitFor(`${label}: ping ${SERVER_TUN} through the tunnel`, async () => {
    vpnServer.assertAlive();
    vpnClient.assertAlive();
    const out = await run(
      inNs(CLIENT_NS, ["ping", "-c", "1", "-W", "1", "-q", SERVER_TUN]),
      5_000,
      true,
    );
    return / 0% packet loss/.test(out) ? true : undefined;
  }, 20_000);

  // RTT first, on an idle tunnel: right after a bulk test a TCP tunnel may still drain its
  // socket buffers, and the pings would measure that queue.
  const rtt = await pingRtt(SERVER_TUN);
  console.error(`  ${label}: RTT ${rtt.toFixed(3)} ms`);
  const singles: number[] = [];
  let cpuServer = 0;
  let cpuClient = 0;
  let wall = 0;
  let megabits = 0;
  for (let i = 0; i < settings.runs; i++) {
    let s0 = 0, c0 = 0, t0 = 0;
    const result = await iperf(SERVER_TUN, settings.seconds, 1, {
      before: async () => {
        s0 = await cpuSeconds(vpnServer.pid);
        c0 = await cpuSeconds(vpnClient.pid);
        t0 = performance.now();
      },
      after: async () => {
        wall += (performance.now() - t0) / 1000;
        cpuServer += (await cpuSeconds(vpnServer.pid)) - s0;
        cpuClient += (await cpuSeconds(vpnClient.pid)) - c0;
      },
    });
    singles.push(result.bitsPerSecond);
    megabits += result.bytes * 8 / 1e6;
    console.error(
      `  ${label}: single stream, run ${i + 1}/${settings.runs}: ${
        mbit(result.bitsPerSecond).toFixed(0)
      } Mbit/s`,
    );
  }
  const parallel = await iperf(SERVER_TUN, settings.seconds, 4);
  console.error(`  ${label}: -P 4: ${mbit(parallel.bitsPerSecond).toFixed(0)} Mbit/s`);
  vpnServer.assertAlive();
  vpnClient.assertAlive();
  return {
    mode,
    ...tools,
    single: mbit(median(singles)),
    parallel: mbit(parallel.bitsPerSecond),
    rtt,
    cpuServer: 100 * cpuServer / wall,
    cpuClient: 100 * cpuClient / wall,
    serverCpuPerMbit: 1000 * cpuServer / megabits,
  };
}

/** Average RTT in ms of 200 pings 10 ms apart from the client namespace. */
async function pingRtt(address: string): Promise<number> {
  const out = await run(
    inNs(CLIENT_NS, ["ping", "-c", String(PINGS), "-i", "0.01", "-q", "-w", "30", address]),
    40_000,
    true,
  );
  const match = out.match(/= [\d.]+\/([\d.]+)\/[\d.]+\/[\d.]+ ms/);
  if (!match) throw new Error(`ping ${address}: no RTT summary in: ${out}`);
  const loss = out.match(/([\d.]+)% packet loss/)?.[1];
  if (loss !== undefined && Number(loss) > 0) console.error(`  ping: ${loss}% packet loss`);
  return Number(match[1]);
}

// ---------------------------------------------------------------------------------------------
// The cases

async function ourVpn(
  proto: "tcp" | "udp",
  dir: string,
  profile: string,
  settings: Settings,
): Promise<Row> {
  const server = new Proc("vpn serve", SERVER_NS, [...DENO, MAIN, "serve", "--dir", dir]);
  let client: Proc | undefined;
  try {
    await server.waitForLog(/listening on/, 30_000);
    client = new Proc(`vpn connect --proto ${proto}`, CLIENT_NS, [
      ...DENO,
      MAIN,
      "connect",
      `${SERVER_LINK}:1194`,
      "--profile",
      profile,
      "--proto",
      proto,
    ]);
    await waitForAddress(CLIENT_NS, CLIENT_TUN, 30_000, [server, client]);
    if (proto === "udp") await client.waitForLog(/data goes over UDP/, 30_000);
    return await measureTunnel(
      proto === "tcp" ? "TLS/TCP" : "UDP",
      { client: "vpn", server: "vpn" },
      server,
      client,
      settings,
    );
  } catch (error) {
    throw new Error(
      `${(error as Error).message}\n--- vpn serve ---\n${server.tail()}\n--- vpn connect ---\n${
        client?.tail() ?? ""
      }`,
    );
  } finally {
    await client?.stop();
    await server.stop();
  }
}

async function openVpn(
  proto: "tcp" | "udp",
  dir: string,
  pki: OpenVpnPki,
  settings: Settings,
): Promise<Row> {
  const serverConf = `${dir}/server-${proto}.conf`;
  const clientConf = `${dir}/client-${proto}.conf`;
  await Deno.writeTextFile(serverConf, serverConfig(pki, proto));
  await Deno.writeTextFile(clientConf, clientConfig(pki, proto));
  const server = new Proc(`openvpn server ${proto}`, SERVER_NS, [
    "openvpn",
    "--config",
    serverConf,
  ]);
  let client: Proc | undefined;
  try {
    await waitForAddress(SERVER_NS, SERVER_TUN, 30_000, [server]);
    client = new Proc(`openvpn client ${proto}`, CLIENT_NS, ["openvpn", "--config", clientConf]);
    await client.waitForLog(/Initialization Sequence Completed/, 30_000);
    await waitForAddress(CLIENT_NS, CLIENT_TUN, 10_000, [server, client]);
    return await measureTunnel(
      proto === "tcp" ? "TLS/TCP" : "UDP",
      { client: "openvpn", server: "openvpn" },
      server,
      client,
      settings,
    );
  } catch (error) {
    throw new Error(
      `${(error as Error).message}\n--- openvpn server ---\n${server.tail()}\n` +
        `--- openvpn client ---\n${client?.tail() ?? ""}`,
    );
  } finally {
    await client?.stop();
    await server.stop();
  }
}

/**
 * Debian's `openvpn` client, on the profile `vpn client add --format ovpn` wrote, against
 * `vpn serve` with `serverConfig` (cases 5 and 6).
 */
async function stockClientToVpn(
  proto: "tcp" | "udp",
  dir: string,
  serverConfig: string,
  profile: string,
  settings: Settings,
): Promise<Row> {
  const server = new Proc("vpn serve", SERVER_NS, [
    ...DENO,
    MAIN,
    "serve",
    "--dir",
    dir,
    "--config",
    serverConfig,
  ]);
  let client: Proc | undefined;
  try {
    await server.waitForLog(/listening on/, 30_000);
    client = new Proc(`openvpn client ${proto}`, CLIENT_NS, [
      "openvpn",
      "--config",
      profile,
      ...PROFILE_OVERRIDES,
    ]);
    await client.waitForLog(/Initialization Sequence Completed/, 30_000);
    await waitForAddress(CLIENT_NS, CLIENT_TUN, 10_000, [server, client]);
    return await measureTunnel(
      proto === "tcp" ? "TLS/TCP" : "UDP",
      { client: "openvpn", server: "vpn" },
      server,
      client,
      settings,
    );
  } catch (error) {
    throw new Error(
      `${(error as Error).message}\n--- vpn serve ---\n${server.tail()}\n` +
        `--- openvpn client ---\n${client?.tail() ?? ""}`,
    );
  } finally {
    await client?.stop();
    await server.stop();
  }
}

/**
 * Writes `DIR/bench-stock.yaml`, the server.yaml of `vpn init` with OpenVPN's default tun-mtu,
 * for cases 5 and 6; returns its path.
 */
async function writeStockServerConfig(dir: string): Promise<string> {
  const text = await Deno.readTextFile(`${dir}/server.yaml`);
  const line = /^mtu: \d+$/m;
  if (!line.test(text)) throw new Error(`${dir}/server.yaml has no top-level "mtu: N" line`);
  const path = `${dir}/bench-stock.yaml`;
  await Deno.writeTextFile(path, text.replace(line, `mtu: ${OPENVPN_TUN_MTU}`));
  return path;
}

/** RTT in ms of the minimal synchronous tunnel of `_rtt_floor.ts`, one end per namespace. */
async function floorRtt(): Promise<number> {
  const server = new Proc("floor server", SERVER_NS, [...DENO, FLOOR, "10.8.0.1/24", CLIENT_LINK]);
  const client = new Proc("floor client", CLIENT_NS, [...DENO, FLOOR, "10.8.0.2/24", SERVER_LINK]);
  try {
    await server.waitForLog(/^ready/m, 30_000);
    await client.waitForLog(/^ready/m, 30_000);
    return await pingRtt(SERVER_TUN);
  } catch (error) {
    throw new Error(
      `${(error as Error).message}\n--- floor server ---\n${server.tail()}\n` +
        `--- floor client ---\n${client.tail()}`,
    );
  } finally {
    await client.stop();
    await server.stop();
  }
}

// ---------------------------------------------------------------------------------------------
// Report

/** `header` and `lines` as a Markdown table, each column as wide as its widest cell. */
function markdown(header: string[], lines: string[][]): string {
  const all = [header, header.map(() => "---"), ...lines];
  const widths = header.map((_, i) => Math.max(...all.map((l) => l[i]!.length)));
  return all.map((l) =>
    "| " +
    l.map((cell, i) => cell === "---" ? "-".repeat(widths[i]!) : cell.padEnd(widths[i]!))
      .join(" | ") +
    " |"
  ).join("\n");
}

const ratio = (a: number, b: number | undefined) =>
  b === undefined || b === 0 ? "n/a" : (a / b).toFixed(2);

const MODES: Mode[] = ["TLS/TCP", "UDP"];

/** Each tool against itself (cases 1 to 4), this project as a ratio of OpenVPN. */
function table(rows: Row[]): string {
  const header = [
    "mode",
    "tool",
    "single stream Mbit/s",
    "-P 4 Mbit/s",
    "RTT ms",
    "CPU % server",
    "CPU % client",
    "single ÷ OpenVPN",
    "-P 4 ÷ OpenVPN",
    "RTT ÷ OpenVPN",
  ];
  const lines: string[][] = [];
  const find = (mode: Mode, tool: Tool) =>
    rows.find((r) => r.mode === mode && r.client === tool && r.server === tool);
  for (const mode of MODES) {
    const reference = find(mode, "openvpn");
    for (const tool of ["vpn", "openvpn"] as Tool[]) {
      const row = find(mode, tool);
      if (!row) {
        lines.push([mode, tool, "failed", "", "", "", "", "", "", ""]);
        continue;
      }
      const ours = tool === "vpn";
      lines.push([
        mode,
        tool,
        row.single.toFixed(0),
        row.parallel.toFixed(0),
        row.rtt.toFixed(3),
        row.cpuServer.toFixed(0),
        row.cpuClient.toFixed(0),
        ours ? ratio(row.single, reference?.single) : "",
        ours ? ratio(row.parallel, reference?.parallel) : "",
        ours ? ratio(row.rtt, reference?.rtt) : "",
      ]);
    }
  }
  return markdown(header, lines);
}

/**
 * The stock `openvpn` client against both servers (cases 5 and 6 beside 4 and 3), `vpn serve`
 * as a ratio of OpenVPN's server: the same throughput means the client is the limit, and the
 * CPU per Mbit/s says which server does the same work for less.
 */
function stockClientTable(rows: Row[]): string {
  const header = [
    "case",
    "single stream Mbit/s",
    "-P 4 Mbit/s",
    "RTT ms",
    "CPU % server",
    "CPU % client",
    "server CPU ms/Mbit",
    "single ÷ OpenVPN server",
    "server CPU/Mbit ÷ OpenVPN server",
  ];
  const lines: string[][] = [];
  const find = (mode: Mode, server: Tool) =>
    rows.find((r) => r.mode === mode && r.client === "openvpn" && r.server === server);
  for (const mode of [...MODES].reverse()) {
    const reference = find(mode, "openvpn");
    for (const server of ["vpn", "openvpn"] as Tool[]) {
      const label = stockLabel(mode, server);
      const row = find(mode, server);
      if (!row) {
        lines.push([label, "failed", "", "", "", "", "", "", ""]);
        continue;
      }
      const ours = server === "vpn";
      lines.push([
        label,
        row.single.toFixed(0),
        row.parallel.toFixed(0),
        row.rtt.toFixed(3),
        row.cpuServer.toFixed(0),
        row.cpuClient.toFixed(0),
        row.serverCpuPerMbit.toFixed(3),
        ours ? ratio(row.single, reference?.single) : "",
        ours ? ratio(row.serverCpuPerMbit, reference?.serverCpuPerMbit) : "",
      ]);
    }
  }
  return markdown(header, lines);
}

// ---------------------------------------------------------------------------------------------
// Main

async function main(settings: Settings): Promise<number> {
  clockTicks = Number((await run(["getconf", "CLK_TCK"], 5_000, true)).trim()) || 100;
  const openvpnVersion = (await run(["openvpn", "--version"], 5_000, true)).split(" ")[1];
  const iperfVersion = (await run(["iperf3", "--version"], 5_000, true)).split(" ")[1];
  const cpus = navigator.hardwareConcurrency;
  console.log(
    `vpn benchmark: ${settings.runs} × ${settings.seconds} s single stream, 1 × ${settings.seconds}` +
      ` s -P 4, ${PINGS} pings; Deno ${Deno.version.deno}, OpenVPN ${openvpnVersion}, iperf3 ` +
      `${iperfVersion}, kernel ${Deno.osRelease()}, ${cpus} CPUs\n`,
  );

  const work = await Deno.makeTempDir({ prefix: "vpn-bench-" });
  tempDirs.push(work);
  await createTopology();

  console.error("bare veth: one single-stream run");
  const bare = await iperf(SERVER_LINK, settings.seconds, 1);

  const ours = `${work}/vpn`;
  await run([...DENO, MAIN, "init", "--dir", ours, "--host", SERVER_LINK]);
  const profile = `${ours}/bench.yaml`;
  await run([...DENO, MAIN, "client", "add", "bench", "--dir", ours, "--out", profile]);
  const ovpnDir = `${work}/openvpn`;
  await Deno.mkdir(ovpnDir);
  const pki = await makeOpenVpnPki(ovpnDir, (cmd) => run(cmd));
  // One OpenVPN profile per transport, each to the port `vpn serve` takes it on (the remote
  // and port are those `client add` picks from server.yaml and the server certificate).
  const ovpnProfile = async (proto: "tcp" | "udp") => {
    const out = `${ours}/bench-${proto}.ovpn`;
    const name = `bench-${proto}`;
    const args = ["client", "add", name, "--dir", ours, "--format", "ovpn", "--proto", proto];
    await run([...DENO, MAIN, ...args, "--out", out]);
    return out;
  };
  const stockProfiles = { tcp: await ovpnProfile("tcp"), udp: await ovpnProfile("udp") };
  const stockConfig = await writeStockServerConfig(ours);
  const stock = (proto: "tcp" | "udp") =>
    stockClientToVpn(proto, ours, stockConfig, stockProfiles[proto], settings);

  const cases: [string, () => Promise<Row>][] = [
    ["vpn TLS/TCP", () => ourVpn("tcp", ours, profile, settings)],
    ["vpn UDP", () => ourVpn("udp", ours, profile, settings)],
    ["openvpn TLS/TCP", () => openVpn("tcp", ovpnDir, pki, settings)],
    ["openvpn UDP", () => openVpn("udp", ovpnDir, pki, settings)],
    [stockLabel("TLS/TCP", "vpn"), () => stock("tcp")],
    [stockLabel("UDP", "vpn"), () => stock("udp")],
  ];
  const rows: Row[] = [];
  let failures = 0;
  for (const [name, measure] of cases) {
    if (interrupted) break;
    console.error(name);
    try {
      rows.push(await measure());
    } catch (error) {
      if (interrupted) break;
      failures++;
      console.error(`bench: ${name} failed: ${(error as Error).message}`);
    }
  }

  let floor: number | undefined;
  if (settings.floor && !interrupted) {
    console.error("minimal synchronous UDP tunnel (scripts/_rtt_floor.ts)");
    try {
      floor = await floorRtt();
    } catch (error) {
      if (!interrupted) {
        failures++;
        console.error(`bench: the floor case failed: ${(error as Error).message}`);
      }
    }
  }

  if (interrupted) return 130;
  console.log(table(rows));
  console.log(
    `\nThe same openvpn client against both servers (vpn serve with mtu: ${OPENVPN_TUN_MTU}):\n`,
  );
  console.log(stockClientTable(rows));
  if (floor !== undefined) {
    const reference = rows.find((r) =>
      r.mode === "UDP" && r.client === "openvpn" && r.server === "openvpn"
    )?.rtt;
    const ratio = reference ? ` (${(floor / reference).toFixed(2)} × OpenVPN over UDP)` : "";
    console.log(`\nminimal synchronous UDP tunnel, RTT: ${floor.toFixed(3)} ms${ratio}`);
  }
  console.log(
    `\nbare veth, iperf3 single TCP stream (one run): ${
      mbit(bare.bitsPerSecond).toFixed(0)
    } Mbit/s`,
  );
  return failures > 0 ? 1 : 0;
}

if (import.meta.main) {
  const settings = parseOptions();
  checkPreconditions("bench", TOOLS);
  const onSignal = async () => {
    interrupted = true;
    console.error("bench: interrupted; cleaning up");
    await cleanup();
    Deno.exit(130);
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  let code = 1;
  try {
    code = await main(settings);
  } catch (error) {
    if (!interrupted) console.error(`bench: ${(error as Error).message}`);
  } finally {
    await cleanup();
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
  }
  Deno.exit(code);
}
