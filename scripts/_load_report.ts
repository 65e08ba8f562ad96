/**
 * What scripts/load.ts measures and how it says it: connect times and their percentiles,
 * failures counted by reason, the server's memory, and the report as text or JSON.
 *
 * @module
 */

import { escapeText } from "../mod/log.ts";
import type { SessionCounters } from "./_load_session.ts";

/** A reason as it is counted and printed: escaped, and cut to this many characters. */
const REASON_MAX = 160;

/** Counts of messages, each escaped and cut so that a server's text cannot flood the report. */
export class Reasons {
  readonly #counts = new Map<string, number>();

  add(reason: unknown): void {
    let text = escapeText(reason instanceof Error ? reason.message : String(reason));
    if (text.length > REASON_MAX) text = `${text.slice(0, REASON_MAX - 3)}...`;
    this.#counts.set(text, (this.#counts.get(text) ?? 0) + 1);
  }

  get total(): number {
    let total = 0;
    for (const count of this.#counts.values()) total += count;
    return total;
  }

  /** Reason → count, most frequent first. */
  toJSON(): Record<string, number> {
    return Object.fromEntries([...this.#counts].sort((a, b) => b[1] - a[1]));
  }
}

/** Connect-time percentiles in ms (nearest rank), or null with no sample. */
export interface Percentiles {
  p50: number;
  p90: number;
  p99: number;
  max: number;
}

/** The nearest-rank percentiles of `samples` (ms), rounded to 0.1 ms. */
export function percentiles(samples: readonly number[]): Percentiles | null {
  if (samples.length === 0) return null;
  const sorted = [...samples].sort((a, b) => a - b);
  const rank = (p: number) => sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)]!;
  const round = (ms: number) => Math.round(ms * 10) / 10;
  return {
    p50: round(rank(50)),
    p90: round(rank(90)),
    p99: round(rank(99)),
    max: round(rank(100)),
  };
}

/** The sum of every session's counters. */
export function sumCounters(all: Iterable<SessionCounters>): SessionCounters {
  const sum: SessionCounters = {
    keepaliveSent: 0,
    keepaliveAnswered: 0,
    serverPings: 0,
    echoSent: 0,
    echoAnswered: 0,
  };
  for (const c of all) {
    for (const key of Object.keys(sum) as (keyof SessionCounters)[]) sum[key] += c[key];
  }
  return sum;
}

/** The server's memory, sampled three times. */
export interface RssReport {
  /** How it was measured, or why it was not. */
  source: string;
  pid: number | null;
  /** VmRSS in KiB before the first client, once all were up, and after the settle time. */
  beforeKiB: number | null;
  connectedKiB: number | null;
  settledKiB: number | null;
  /** (settled - before) / sessions up, KiB; null when unknown. */
  perSessionKiB: number | null;
}

/** Everything the run found, as `--json` prints it. */
export interface LoadReport {
  proto: string;
  remote: string;
  dir: string;
  runId: string;
  clients: number;
  certificates: { issued: number; seconds: number; names: string; sharedKey: boolean };
  fileLimit: { soft: number | null; hard: number | null; needed: number };
  connect: {
    up: number;
    failed: number;
    notStarted: number;
    seconds: number;
    handshakesPerSecond: number;
    rate: number;
    maxInFlight: number;
    /** CPU seconds the server (when its pid is known) and this tool used in the phase. */
    serverCpuSeconds: number | null;
    toolCpuSeconds: number | null;
    /** What the connect time spans. */
    measured: string;
    ms: Percentiles | null;
  };
  failures: Record<string, number>;
  hold: { seconds: number; stayedUp: number; dropped: Record<string, number> };
  traffic: SessionCounters & { udpDropped: number };
  server: {
    /** This run's sessions in `vpn status` after the settle time, by protocol. */
    sessions: number | null;
    byProtocol: Record<string, number>;
    statusError: string | null;
  };
  rss: RssReport;
  loadToolRssKiB: number;
  cleanup: { revoked: number } | { error: string } | null;
  stopped: string | null;
}

function mib(kib: number | null): string {
  return kib === null ? "?" : `${(kib / 1024).toFixed(1)} MiB`;
}

function seconds(value: number | null): string {
  return value === null ? "unknown" : `${value.toFixed(2)} s`;
}

function counts(reasons: Record<string, number>): string[] {
  return Object.entries(reasons).map(([reason, count]) => `    ${count} × ${reason}`);
}

/** The report as lines of text. */
export function reportText(r: LoadReport): string[] {
  const c = r.connect;
  const t = r.traffic;
  const lines = [
    `vpn load test: ${r.clients} clients, proto ${r.proto}, to ${r.remote} (run ${r.runId})`,
    `  certificates: ${r.certificates.issued} issued in ${r.certificates.seconds.toFixed(1)} s ` +
    `into ${r.dir} as ${r.certificates.names}` +
    (r.certificates.sharedKey
      ? "; one key pair shared by all (the server verifies each certificate, and each " +
        "proof of key possession, all the same)"
      : ""),
    `  sessions up: ${c.up} of ${r.clients}; ${r.hold.stayedUp} stayed up to the end ` +
    `(held ${r.hold.seconds.toFixed(1)} s)`,
    `  handshakes: ${c.handshakesPerSecond.toFixed(1)}/s over the connect phase of ` +
    `${c.seconds.toFixed(1)} s (started at ${c.rate}/s, at most ${c.maxInFlight} at once)`,
    `  CPU over the connect phase: server ${seconds(c.serverCpuSeconds)}` +
    (c.serverCpuSeconds !== null && c.up > 0
      ? ` (${((c.serverCpuSeconds * 1000) / c.up).toFixed(1)} ms per handshake)`
      : "") +
    `, this tool ${seconds(c.toolCpuSeconds)}`,
    c.ms === null
      ? "  connect time: no session came up"
      : `  connect time (${c.measured}): p50 ${c.ms.p50} ms, p90 ${c.ms.p90} ms, ` +
        `p99 ${c.ms.p99} ms, max ${c.ms.max} ms`,
    c.failed + c.notStarted === 0
      ? "  failures: none"
      : `  failures: ${c.failed} failed${c.notStarted ? `, ${c.notStarted} not started` : ""}`,
    ...counts(r.failures),
    ...(Object.keys(r.hold.dropped).length > 0
      ? ["  went down while held:", ...counts(r.hold.dropped)]
      : []),
    `  keepalive: ${t.keepaliveSent} pings sent, ${t.keepaliveAnswered} answered` +
    (r.proto.startsWith("openvpn") ? " (OpenVPN does not answer pings)" : "") +
    `; the server pinged ${t.serverPings} times`,
    `  echo: ${t.echoSent} ICMP echo requests to the server's tunnel address, ` +
    `${t.echoAnswered} replies` + (t.udpDropped ? `; ${t.udpDropped} datagrams dropped` : ""),
    r.server.sessions === null
      ? `  server sessions: unknown (${r.server.statusError})`
      : `  server sessions (vpn status after the settle time): ${r.server.sessions} of this run` +
        ` (${Object.entries(r.server.byProtocol).map(([p, n]) => `${p} ${n}`).join(", ")})`,
    r.rss.perSessionKiB === null && r.rss.beforeKiB === null
      ? `  server RSS: unknown (${r.rss.source})`
      : `  server RSS (${r.rss.source}): ${mib(r.rss.beforeKiB)} before, ` +
        `${mib(r.rss.connectedKiB)} with all up, ${mib(r.rss.settledKiB)} after the settle ` +
        `time` +
        (r.rss.perSessionKiB === null
          ? ""
          : `: ${r.rss.perSessionKiB.toFixed(1)} KiB per session (settled - before) / up`),
    `  load tool RSS: ${mib(r.loadToolRssKiB)}`,
  ];
  if (r.cleanup !== null) {
    lines.push(
      "error" in r.cleanup
        ? `  cleanup FAILED: ${r.cleanup.error}`
        : `  cleanup: ${r.cleanup.revoked} certificates revoked`,
    );
  }
  if (r.stopped !== null) lines.push(`  stopped early: ${r.stopped}`);
  return lines;
}
