/**
 * The Prometheus endpoint: `GET /metrics` on `metrics.listen` renders the server's status in
 * the text exposition format 0.0.4 (https://prometheus.io/docs/instrumenting/exposition_formats/).
 *
 * Names follow Prometheus' conventions: a `vpn_` prefix, base units (bytes, seconds) in the
 * name, `_total` on counters. The tunnel's totals count ended sessions too; the per-session
 * counters carry the session's `name` (one series per connected client: bounded by the subnet,
 * and what an operator asks first, "who is moving the bytes").
 *
 * The few lines of the format are written here rather than with `prom-client`: its metrics are
 * objects the program updates (`inc`, `set`), while ours are a snapshot taken at each scrape,
 * and it would bring three packages (`@opentelemetry/api` the largest) for what is a loop of
 * string joins.
 *
 * @module
 */

import type { SessionStatus, SessionTraffic } from "./core/session.ts";
import { log } from "./log.ts";
import type { ServerStatus } from "./server.ts";

const logger = log("metrics");

/** The media type of the text format, as Prometheus asks for it. */
export const METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/** The path served; any other is 404. */
const PATH = "/metrics";

/** The protocols a session speaks: each gets a `vpn_sessions` sample, 0 included. */
const PROTOCOLS = ["native/tls", "native/udp", "openvpn/udp", "openvpn/tcp"];

/**
 * Counters of `ServerStatus.counters` that are not dropped packets, each with its own metric;
 * every other key is a drop reason of `vpn_dropped_packets_total`.
 */
const NOT_DROPS: Record<string, [name: string, help: string]> = {
  refused: ["vpn_refused_connections_total", "Connections closed before auth."],
  udp_accepted: ["vpn_udp_accepted_datagrams_total", "UDP data datagrams accepted."],
};

/** Counted in `vpn_renegotiations_total` already. */
const COUNTED_ELSEWHERE = new Set(["udp_rekeyed"]);

/** Drop reasons whose counter's name would read wrongly as a label. */
const REASON_WORDS: Record<string, string> = { dropped: "queue_full" };

type MetricType = "counter" | "gauge";
type Labels = Record<string, string>;

/** One metric family: its HELP and TYPE lines, then its samples. */
class Exposition {
  readonly #lines: string[] = [];
  /** The family the next samples belong to. */
  #name = "";

  family(name: string, type: MetricType, help: string): this {
    this.#lines.push(`# HELP ${name} ${escapeHelp(help)}`, `# TYPE ${name} ${type}`);
    this.#name = name;
    return this;
  }

  sample(value: number, labels: Labels = {}): this {
    const pairs = Object.entries(labels).map(([key, text]) => `${key}="${escapeLabel(text)}"`);
    const set = pairs.length === 0 ? "" : `{${pairs.join(",")}}`;
    this.#lines.push(`${this.#name}${set} ${formatValue(value)}`);
    return this;
  }

  /** The whole text; the format ends every line, the last one too, with `\n`. */
  text(): string {
    return this.#lines.join("\n") + "\n";
  }
}

/**
 * The metrics of `status` and the process's `memory`, in the text exposition format 0.0.4.
 *
 * @example
 * ```ts
 * const text = renderMetrics(server.status(), Deno.memoryUsage());
 * ```
 */
export function renderMetrics(status: ServerStatus, memory: Deno.MemoryUsage): string {
  const out = new Exposition();
  out.family("vpn_info", "gauge", "The server's version; always 1.")
    .sample(1, { version: status.version });
  out.family("vpn_start_time_seconds", "gauge", "When the server started, in Unix seconds.")
    .sample(Date.parse(status.startedAt) / 1000);
  out.family("vpn_up_seconds", "gauge", "Seconds since the server started.")
    .sample(status.uptimeSeconds);

  const byProtocol = new Map(PROTOCOLS.map((protocol) => [protocol, 0]));
  for (const session of status.sessions) {
    byProtocol.set(session.protocol, (byProtocol.get(session.protocol) ?? 0) + 1);
  }
  out.family("vpn_sessions", "gauge", "Authenticated sessions now, by protocol.");
  for (const [protocol, count] of byProtocol) out.sample(count, { protocol });
  out.family("vpn_preauth_connections", "gauge", "Connections in their handshake now.")
    .sample(status.preAuth);

  out.family("vpn_handshakes_total", "counter", "Handshakes since start, by outcome.");
  for (const [key, count] of Object.entries(status.handshakes)) {
    out.sample(count, key === "ok" ? { result: "ok" } : { result: "refused", reason: key });
  }
  out.family("vpn_renegotiations_total", "counter", "Data key renegotiations since start.")
    .sample(status.renegotiations);

  out.family("vpn_dropped_packets_total", "counter", "Packets dropped since start, by reason.");
  for (const [key, count] of Object.entries(status.counters)) {
    if (key in NOT_DROPS || COUNTED_ELSEWHERE.has(key)) continue;
    out.sample(count, { reason: REASON_WORDS[key] ?? snakeCase(key) });
  }
  for (const [key, [name, help]] of Object.entries(NOT_DROPS)) {
    const count = status.counters[key];
    if (count !== undefined) out.family(name, "counter", help).sample(count);
  }

  traffic(out, status.traffic, status.sessions);

  out.family("vpn_process_resident_memory_bytes", "gauge", "Resident set size of the process.")
    .sample(memory.rss);
  out.family("vpn_process_heap_total_bytes", "gauge", "JavaScript heap allocated.")
    .sample(memory.heapTotal);
  out.family("vpn_process_heap_used_bytes", "gauge", "JavaScript heap in use.")
    .sample(memory.heapUsed);
  out.family("vpn_process_external_memory_bytes", "gauge", "Memory of buffers outside the heap.")
    .sample(memory.external);
  return out.text();
}

/** Inner IP traffic: client to server is "received". */
const TRAFFIC: [key: "bytesIn" | "bytesOut" | "packetsIn" | "packetsOut", what: string][] = [
  ["bytesIn", "received_bytes"],
  ["bytesOut", "sent_bytes"],
  ["packetsIn", "received_packets"],
  ["packetsOut", "sent_packets"],
];

/** The totals since start, then each live session's own counters. */
function traffic(out: Exposition, total: SessionTraffic, sessions: SessionStatus[]): void {
  for (const [key, what] of TRAFFIC) {
    const words = what.replace("_", " ");
    out.family(`vpn_${what}_total`, "counter", `Tunnel ${words} of every session since start.`)
      .sample(total[key]);
  }
  for (const [key, what] of TRAFFIC) {
    out.family(
      `vpn_session_${what}_total`,
      "counter",
      `Tunnel ${what.replace("_", " ")} by session.`,
    );
    for (const session of sessions) {
      out.sample(session[key], { name: session.name, protocol: session.protocol });
    }
  }
  out.family(
    "vpn_session_dropped_packets_total",
    "counter",
    "Packets for a session dropped at its full queue.",
  );
  for (const session of sessions) {
    out.sample(session.dropped, { name: session.name, protocol: session.protocol });
  }
}

/** `unwrapFailed` → `unwrap_failed`, `openvpn_dataForged` → `openvpn_data_forged`. */
function snakeCase(key: string): string {
  return key.replace(/[A-Z]/g, (letter) => `_${letter.toLowerCase()}`);
}

/** A label value: backslash, double quote and line feed escaped. */
export function escapeLabel(text: string): string {
  return text.replace(/[\\"\n]/g, (c) => c === "\n" ? "\\n" : `\\${c}`);
}

/** HELP text: backslash and line feed escaped. */
function escapeHelp(text: string): string {
  return text.replace(/[\\\n]/g, (c) => c === "\n" ? "\\n" : "\\\\");
}

/** A sample value as Go's ParseFloat reads it: `+Inf`, `-Inf` and `NaN` spelled so. */
function formatValue(value: number): string {
  if (Number.isNaN(value)) return "NaN";
  if (value === Infinity) return "+Inf";
  if (value === -Infinity) return "-Inf";
  return String(value);
}

/** The address `/metrics` is served on. */
export interface MetricsListen {
  hostname: string;
  port: number;
}

/** The HTTP server of `/metrics`. */
export class MetricsServer {
  readonly #server: Deno.HttpServer<Deno.NetAddr>;

  private constructor(server: Deno.HttpServer<Deno.NetAddr>) {
    this.#server = server;
  }

  /**
   * Serves `/metrics` on `listen` only (GET and HEAD; 405 for other methods, 404 for other
   * paths), calling `collect` at each scrape.
   *
   * @throws {Error} naming the address and the fix when it is taken or not on this host.
   */
  static start(listen: MetricsListen, collect: () => ServerStatus): MetricsServer {
    const where = formatAddress(listen);
    let server: Deno.HttpServer<Deno.NetAddr>;
    try {
      server = Deno.serve({
        hostname: listen.hostname,
        port: listen.port,
        onListen: () => logger.info("metrics on http://{where}/metrics", { where }),
      }, (request) => respond(request, collect));
    } catch (error) {
      if (error instanceof Deno.errors.AddrInUse) {
        throw new Error(
          `metrics.listen ${where}: port ${listen.port} is in use by another process; stop it, ` +
            `or set metrics.listen in server.yaml to a free port`,
        );
      }
      if (error instanceof Deno.errors.AddrNotAvailable) {
        throw new Error(
          `metrics.listen ${where}: ${listen.hostname} is not an address of this host; set ` +
            `metrics.listen in server.yaml to one of its addresses, e.g. 127.0.0.1:${listen.port}`,
        );
      }
      throw error;
    }
    return new MetricsServer(server);
  }

  /** The address bound, its port resolved when `listen.port` was 0. */
  get addr(): Deno.NetAddr {
    return this.#server.addr;
  }

  /** Stops listening and ends the scrapes under way. */
  async stop(): Promise<void> {
    await this.#server.shutdown();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}

/** One request: the metrics, or why not. */
function respond(request: Request, collect: () => ServerStatus): Response {
  if (new URL(request.url).pathname !== PATH) {
    return new Response("not found: the metrics are at /metrics\n", { status: 404 });
  }
  if (request.method !== "GET" && request.method !== "HEAD") {
    return new Response("method not allowed\n", { status: 405, headers: { allow: "GET, HEAD" } });
  }
  let text: string;
  try {
    text = renderMetrics(collect(), Deno.memoryUsage());
  } catch (error) {
    logger.error("metrics: the status could not be read: {error}", { error });
    return new Response("the status could not be read\n", { status: 500 });
  }
  return new Response(request.method === "HEAD" ? null : text, {
    headers: { "content-type": METRICS_CONTENT_TYPE },
  });
}

/** `127.0.0.1:9194`, `[::1]:9194`. */
function formatAddress(listen: MetricsListen): string {
  return listen.hostname.includes(":")
    ? `[${listen.hostname}]:${listen.port}`
    : `${listen.hostname}:${listen.port}`;
}
