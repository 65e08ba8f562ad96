/**
 * Load test of a running `vpn serve`: N protocol-level clients in this one process (no TUN
 * each), each with a certificate of its own, to see how the server scales: memory per idle
 * session, handshakes per second, connect-time percentiles.
 *
 *   1. issue N client certificates `load-<run id>-<i>` into the PKI at --dir, in one registry
 *      write, all for one key pair (`issueClients()` in mod/pki.ts);
 *   2. sample the server's RSS (/proc/PID/status VmRSS; --pid, or the pid `vpn status` gives);
 *   3. connect the clients at --rate per second, a bounded number in their handshake at once
 *      (below the server's caps: 64 native handshakes in all, 8 OpenVPN ones per host);
 *   4. hold every session --duration seconds: keepalive pings as the protocol wants, and an
 *      ICMP echo to the server's tunnel address every few seconds, whose replies are counted;
 *      RSS again once all are up and after --settle seconds, with `vpn status`;
 *   5. close every session cleanly (BYE, OpenVPN's EXIT), revoke the certificates with
 *      --cleanup, and report (text, or --json).
 *
 * The clients run the product's own protocol code: scripts/_load_native.ts (our protocol,
 * TLS or the UDP data channel) and scripts/_load_openvpn.ts (OpenVPN over UDP or TCP).
 *
 * Usage: deno task load --clients N [--proto tcp|udp|openvpn-udp|openvpn-tcp] [--dir DIR]
 *   [--remote HOST:PORT] [--duration S] [--rate R] [--pid PID] [--settle S] [--cleanup] [--json]
 *
 * Exit codes: 0 every client came up, 1 fewer did (the reasons are in the report), 2 bad
 * arguments or too low a file limit. Ctrl-C stops connecting or holding, closes the sessions
 * and reports; a second Ctrl-C exits at once.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { type FileLimit, raiseFileLimit } from "../ffi/limits.ts";
import { parseRemote } from "../mod/config.ts";
import { generateClientKey, issueClients, type IssuedClient, revokeSerials } from "../mod/pki.ts";
import { type Fleet, fleetFor, type LoadProto, PROTOS } from "./_load_fleet.ts";
import { type LoadReport, percentiles, Reasons, reportText, sumCounters } from "./_load_report.ts";
import {
  cpuSeconds,
  serverConfig,
  ServerProcess,
  serverSessions,
  serverStatus,
} from "./_load_server.ts";
import { CONNECT_TIMEOUT_MS, type LoadSession } from "./_load_session.ts";

const USAGE = "usage: deno task load --clients N [--proto tcp|udp|openvpn-udp|openvpn-tcp] " +
  "[--dir DIR] [--remote HOST:PORT] [--duration S] [--rate R] [--pid PID] [--settle S] " +
  "[--cleanup] [--json]";

/**
 * Handshakes in flight at once: the server's cap per source (8 in mod/native/listener.ts and
 * mod/openvpn/server.ts; a ninth from one source takes the place of its oldest). The server
 * frees a place when it admits a client, before its PUSH, so this end never counts fewer.
 */
const MAX_IN_FLIGHT = 8;
/** Descriptors beside one per session: Deno's own, the shared UDP socket, the control socket. */
const SPARE_FILES = 64;
/** How often every session is ticked (keepalive, echo). */
const TICK_MS = 1000;

/** The command line, checked. */
interface Options {
  clients: number;
  proto: LoadProto;
  dir: string;
  remote: { host: string; port: number };
  duration: number;
  rate: number;
  pid: number | undefined;
  settle: number;
  cleanup: boolean;
  json: boolean;
}

class UsageError extends Error {}

function number(value: string | undefined, flag: string, fallback: number, min: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isFinite(n) || n < min) {
    throw new UsageError(`${flag} must be a number of at least ${min}, not "${value}"`);
  }
  return n;
}

async function parseOptions(args: string[]): Promise<Options> {
  const { values } = parseArgs({
    args,
    options: {
      clients: { type: "string" },
      proto: { type: "string" },
      dir: { type: "string" },
      remote: { type: "string" },
      duration: { type: "string" },
      rate: { type: "string" },
      pid: { type: "string" },
      settle: { type: "string" },
      cleanup: { type: "boolean" },
      json: { type: "boolean" },
    },
  });
  if (values.clients === undefined) throw new UsageError("--clients N is required");
  const clients = number(values.clients, "--clients", 0, 1);
  if (!Number.isInteger(clients)) throw new UsageError("--clients must be a whole number");
  const proto = (values.proto ?? "tcp") as LoadProto;
  if (!PROTOS.includes(proto)) throw new UsageError(`--proto must be one of ${PROTOS.join(", ")}`);
  const dir = values.dir ?? "/etc/vpn";
  const pid = values.pid === undefined ? undefined : number(values.pid, "--pid", 0, 1);
  // OpenVPN over TCP has a port of its own: the default is server.yaml's.
  const config = await serverConfig(dir);
  const defaultPort = proto === "openvpn-tcp" ? config.openvpn.tcp_port : 1194;
  let remote;
  try {
    remote = parseRemote(values.remote ?? "127.0.0.1", defaultPort);
  } catch (error) {
    throw new UsageError(`--remote: ${(error as Error).message}`);
  }
  return {
    clients,
    proto,
    dir,
    remote,
    duration: number(values.duration, "--duration", 30, 0),
    rate: number(values.rate, "--rate", 50, 0.1),
    pid,
    settle: number(values.settle, "--settle", 10, 0),
    cleanup: values.cleanup === true,
    json: values.json === true,
  };
}

/** Sleeps `ms`, or less when `signal` ends first. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  if (ms <= 0 || signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

/** Progress, on stderr: stdout carries the report alone. */
function progress(text: string): void {
  console.error(`load: ${text}`);
}

async function run(options: Options): Promise<number> {
  const { clients: n, proto } = options;
  let limit: FileLimit | undefined;
  try {
    limit = raiseFileLimit();
  } catch (error) {
    progress(`could not raise the open-file limit: ${(error as Error).message}`);
  }
  const needed = n + SPARE_FILES;
  if (limit !== undefined && needed > limit.soft) {
    console.error(
      `load: --clients ${n} needs about ${needed} open files (one per session), but this ` +
        `process may open ${limit.soft} (hard limit ${limit.hard}); raise the hard limit ` +
        `(ulimit -Hn ${needed}, or run under prlimit --nofile=${needed}:${needed}) or lower ` +
        `--clients`,
    );
    return 2;
  }

  const stop = new AbortController();
  const onInterrupt = () => {
    if (stop.signal.aborted) Deno.exit(130);
    progress("Ctrl-C: stopping (again to exit at once)");
    stop.abort(new Error("stopped by Ctrl-C"));
  };
  Deno.addSignalListener("SIGINT", onInterrupt);

  const runId = `${Date.now().toString(36)}${crypto.getRandomValues(new Uint8Array(2)).toHex()}`;
  const names = Array.from({ length: n }, (_, i) => `load-${runId}-${i}`);
  let issued: IssuedClient[] = [];
  const remote = `${options.remote.host}:${options.remote.port}`;
  let cleanup: LoadReport["cleanup"] = null;
  const fleetBox: { fleet?: Fleet } = {};
  try {
    const issueStart = performance.now();
    progress(`issuing ${n} certificates into ${options.dir}`);
    issued = await issueClients(options.dir, names, {
      keyPem: await generateClientKey(),
      format: proto.startsWith("openvpn") ? "ovpn" : "vpn",
    });
    const issueSeconds = (performance.now() - issueStart) / 1000;
    const fleet = await fleetFor(options, issued[0]!.caPem);
    fleetBox.fleet = fleet;

    const rss = new ServerProcess(options.pid, await serverStatus(options.dir));
    if (rss.fileLimit !== undefined && rss.fileLimit < needed) {
      progress(
        `the server (pid ${rss.pid}) may open only ${rss.fileLimit} files: sessions past about ` +
          `${rss.fileLimit - SPARE_FILES} fail there; start it under prlimit --nofile=` +
          `${needed}:${needed}`,
      );
    }
    rss.sample("beforeKiB");

    const up = new Set<LoadSession>();
    const ticker = setInterval(() => {
      const now = performance.now();
      for (const session of up) session.tick(now);
      fleet.flush();
    }, TICK_MS);
    let report: LoadReport;
    try {
      progress(`connecting ${n} ${proto} clients to ${remote} at ${options.rate}/s`);
      const cpuStart = { server: rss.cpu(), tool: cpuSeconds("self") };
      const { sessions, times, failures, seconds: connectSeconds } = await connectAll(
        fleet,
        issued,
        options.rate,
        stop.signal,
        up,
      );
      const cpu = {
        server: used(cpuStart.server, rss.cpu()),
        tool: used(cpuStart.tool, cpuSeconds("self")),
      };
      rss.sample("connectedKiB");
      if (!stop.signal.aborted) {
        progress(
          `${up.size} of ${n} up in ${connectSeconds.toFixed(1)} s; holding for ` +
            `${Math.max(options.duration, options.settle)} s`,
        );
      }

      const holdStart = performance.now();
      await sleep(options.settle * 1000, stop.signal);
      rss.sample("settledKiB");
      const status = await serverStatus(options.dir);
      await sleep(holdStart + options.duration * 1000 - performance.now(), stop.signal);
      const holdSeconds = (performance.now() - holdStart) / 1000;

      const dropped = new Reasons();
      for (const session of up) if (session.ended !== undefined) dropped.add(session.ended);
      const stayedUp = up.size - dropped.total;
      report = {
        proto,
        remote,
        dir: options.dir,
        runId,
        clients: n,
        certificates: {
          issued: issued.length,
          seconds: hundredths(issueSeconds),
          names: `load-${runId}-0..${n - 1}`,
          sharedKey: true,
        },
        fileLimit: { soft: limit?.soft ?? null, hard: limit?.hard ?? null, needed },
        connect: {
          up: up.size,
          failed: failures.total,
          notStarted: n - sessions.length,
          seconds: hundredths(connectSeconds),
          handshakesPerSecond: hundredths(connectSeconds > 0 ? up.size / connectSeconds : 0),
          rate: options.rate,
          maxInFlight: MAX_IN_FLIGHT,
          serverCpuSeconds: cpu.server,
          toolCpuSeconds: cpu.tool,
          measured: proto === "udp"
            ? "TCP connect to the first answer over UDP"
            : proto.startsWith("openvpn")
            ? "first packet to PUSH_REPLY"
            : "TCP connect to PUSH",
          ms: percentiles(times),
        },
        failures: failures.toJSON(),
        hold: { seconds: hundredths(holdSeconds), stayedUp, dropped: dropped.toJSON() },
        traffic: { ...sumCounters(sessions.map((s) => s.counters)), udpDropped: fleet.dropped },
        server: serverSessions(status, runId),
        rss: rss.report(up.size),
        loadToolRssKiB: Math.round(Deno.memoryUsage().rss / 1024),
        cleanup: null,
        stopped: stop.signal.aborted ? (stop.signal.reason as Error).message : null,
      };
    } finally {
      clearInterval(ticker);
      progress(`closing ${up.size} sessions`);
      await Promise.all([...up].map((session) => session.close()));
    }
    if (options.cleanup) {
      cleanup = await revoke(options.dir, issued);
      issued = [];
    }
    report.cleanup = cleanup;
    console.log(options.json ? JSON.stringify(report, null, 2) : reportText(report).join("\n"));
    return report.connect.up < n ? 1 : 0;
  } finally {
    await fleetBox.fleet?.close();
    // A run that failed before its report still takes back what it issued.
    if (options.cleanup && issued.length > 0) await revoke(options.dir, issued);
    Deno.removeSignalListener("SIGINT", onInterrupt);
  }
}

/** What the connect phase found. */
interface ConnectPhase {
  /** Every session started. */
  sessions: LoadSession[];
  /** The connect times of those that came up (ms). */
  times: number[];
  failures: Reasons;
  /** From the first connect to the last one that ended. */
  seconds: number;
}

/**
 * Connects a session per issued client, starting them at `rate` per second with at most
 * {@linkcode MAX_IN_FLIGHT} in their handshake; each one up joins `up` at once (the ticker
 * keeps it alive from then on). Ends when every attempt has ended, or early at `stop`.
 */
async function connectAll(
  fleet: Fleet,
  issued: IssuedClient[],
  rate: number,
  stop: AbortSignal,
  up: Set<LoadSession>,
): Promise<ConnectPhase> {
  const phase: ConnectPhase = { sessions: [], times: [], failures: new Reasons(), seconds: 0 };
  const start = performance.now();
  let lastDone = start;
  const inFlight = new Set<Promise<void>>();
  for (let i = 0; i < issued.length && !stop.aborted; i++) {
    await sleep(start + (i * 1000) / rate - performance.now(), stop);
    while (inFlight.size >= MAX_IN_FLIGHT) await Promise.race(inFlight);
    if (stop.aborted) break;
    const session = fleet.session(i, issued[i]!);
    phase.sessions.push(session);
    const deadline = new AbortController();
    const timer = setTimeout(
      () => deadline.abort(new Error(`timed out after ${CONNECT_TIMEOUT_MS / 1000} s`)),
      CONNECT_TIMEOUT_MS,
    );
    const started = performance.now();
    const attempt: Promise<void> = session.connect(AbortSignal.any([stop, deadline.signal]))
      .then(() => {
        phase.times.push(performance.now() - started);
        up.add(session);
      }, (error) => phase.failures.add(error))
      .finally(() => {
        clearTimeout(timer);
        inFlight.delete(attempt);
        lastDone = performance.now();
      });
    inFlight.add(attempt);
  }
  await Promise.all(inFlight);
  phase.seconds = (lastDone - start) / 1000;
  return phase;
}

/** CPU seconds between two readings, null when either is missing. */
function used(before: number | undefined, after: number | undefined): number | null {
  return before === undefined || after === undefined ? null : hundredths(after - before);
}

/** `value` rounded to 0.01, for the report. */
function hundredths(value: number): number {
  return Math.round(value * 100) / 100;
}

async function revoke(dir: string, issued: IssuedClient[]): Promise<LoadReport["cleanup"]> {
  try {
    const revoked = await revokeSerials(dir, issued.map((client) => client.serial));
    progress(`revoked ${revoked.length} certificates`);
    return { revoked: revoked.length };
  } catch (error) {
    progress(`could not revoke this run's certificates: ${(error as Error).message}`);
    return { error: (error as Error).message };
  }
}

if (import.meta.main) {
  let options: Options;
  try {
    options = await parseOptions(Deno.args);
  } catch (error) {
    console.error(`load: ${(error as Error).message}\n${USAGE}`);
    Deno.exit(2);
  }
  Deno.exit(await run(options));
}
