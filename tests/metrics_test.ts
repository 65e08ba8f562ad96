import { assert, assertEquals, assertMatch, assertThrows } from "./_assert.ts";
import { parseExposition, valueOf } from "./_exposition.ts";
import { escapeLabel, METRICS_CONTENT_TYPE, MetricsServer, renderMetrics } from "../mod/metrics.ts";
import type { SessionStatus } from "../mod/core/session.ts";
import type { ServerStatus } from "../mod/server.ts";

const MEMORY: Deno.MemoryUsage = {
  rss: 50_000_000,
  heapTotal: 9_000_000,
  heapUsed: 7_000_000,
  external: 1_000,
};

function session(name: string, protocol: string, n: number): SessionStatus {
  return {
    name,
    serial: `0${n}`,
    protocol,
    cipher: "AES-256-GCM",
    peer: `172.30.1.2:${40000 + n}`,
    address: `10.99.0.${n + 1}`,
    connectedAt: "2026-01-01T00:00:00.000Z",
    lastHeardAt: "2026-01-01T00:01:00.000Z",
    bytesIn: 1000 * n,
    bytesOut: 2000 * n,
    packetsIn: 10 * n,
    packetsOut: 20 * n,
    dropped: n,
  };
}

/** A status with every kind of counter, and a client name that needs every escape. */
const STATUS: ServerStatus = {
  version: "0.12.0",
  pid: 4242,
  startedAt: "2026-01-01T00:00:00.000Z",
  uptimeSeconds: 3600,
  listeners: ["TLS 0.0.0.0:1194", "UDP 0.0.0.0:1194"],
  subnet: "10.99.0.0/24",
  subnet6: "none",
  tun: "vpn0",
  counters: {
    spoofed: 3,
    unroutable: 4,
    notIp: 5,
    linkLocal: 6,
    refused: 7,
    dropped: 8,
    badVnet: 9,
    udp_accepted: 1000,
    udp_rekeyed: 2,
    udp_unknown: 11,
    udp_malformed: 12,
    udp_replayed: 13,
    udp_forged: 14,
    openvpn_unwrapFailed: 15,
    openvpn_busy: 16,
    openvpn_dataForged: 17,
  },
  preAuth: 2,
  handshakes: { ok: 5, revoked: 1, "unknown-client": 2 },
  renegotiations: 4,
  // More than the live sessions' sums: sessions that ended count too.
  traffic: { packetsIn: 70, bytesIn: 7000, packetsOut: 130, bytesOut: 13000, dropped: 9 },
  sessions: [
    session("alice", "native/tls", 1),
    session('we"ird\\na\nme', "openvpn/udp", 2),
    session("carol", "openvpn/udp", 3),
  ],
};

Deno.test("renderMetrics() writes valid exposition format for every family", () => {
  const text = renderMetrics(STATUS, MEMORY);
  const parsed = parseExposition(text);
  for (const name of parsed.types.keys()) assert(name.startsWith("vpn_"), name);
  for (const [name, type] of parsed.types) {
    assertEquals(name.endsWith("_total"), type === "counter", `${name} is a ${type}`);
  }
  assertEquals(valueOf(parsed, "vpn_up_seconds"), 3600);
  assertEquals(valueOf(parsed, "vpn_start_time_seconds"), Date.parse(STATUS.startedAt) / 1000);
  assertEquals(valueOf(parsed, "vpn_info", { version: "0.12.0" }), 1);
  assertEquals(valueOf(parsed, "vpn_preauth_connections"), 2);
  assertEquals(valueOf(parsed, "vpn_renegotiations_total"), 4);
  assertEquals(valueOf(parsed, "vpn_process_resident_memory_bytes"), 50_000_000);
  assertEquals(valueOf(parsed, "vpn_process_heap_used_bytes"), 7_000_000);
});

Deno.test("renderMetrics() counts sessions by protocol, 0 for a protocol unused", () => {
  const parsed = parseExposition(renderMetrics(STATUS, MEMORY));
  assertEquals(valueOf(parsed, "vpn_sessions", { protocol: "native/tls" }), 1);
  assertEquals(valueOf(parsed, "vpn_sessions", { protocol: "openvpn/udp" }), 2);
  assertEquals(valueOf(parsed, "vpn_sessions", { protocol: "openvpn/tcp" }), 0);
  assertEquals(valueOf(parsed, "vpn_sessions", { protocol: "native/udp" }), 0);
});

Deno.test("renderMetrics() labels handshakes by result and reason", () => {
  const parsed = parseExposition(renderMetrics(STATUS, MEMORY));
  assertEquals(valueOf(parsed, "vpn_handshakes_total", { result: "ok" }), 5);
  assertEquals(
    valueOf(parsed, "vpn_handshakes_total", { result: "refused", reason: "unknown-client" }),
    2,
  );
  assertEquals(
    valueOf(parsed, "vpn_handshakes_total", { result: "refused", reason: "revoked" }),
    1,
  );
});

Deno.test("renderMetrics() makes each drop counter a reason, and the others their own", () => {
  const parsed = parseExposition(renderMetrics(STATUS, MEMORY));
  const reasons = Object.fromEntries(
    parsed.samples.filter((s) => s.name === "vpn_dropped_packets_total").map((s) => [
      s.labels.reason,
      s.value,
    ]),
  );
  assertEquals(reasons, {
    spoofed: 3,
    unroutable: 4,
    not_ip: 5,
    link_local: 6,
    queue_full: 8,
    bad_vnet: 9,
    udp_unknown: 11,
    udp_malformed: 12,
    udp_replayed: 13,
    udp_forged: 14,
    openvpn_unwrap_failed: 15,
    openvpn_busy: 16,
    openvpn_data_forged: 17,
  });
  assertEquals(valueOf(parsed, "vpn_refused_connections_total"), 7);
  assertEquals(valueOf(parsed, "vpn_udp_accepted_datagrams_total"), 1000);
});

Deno.test("renderMetrics() gives the traffic since start in counters and keeps per-session counters", () => {
  const parsed = parseExposition(renderMetrics(STATUS, MEMORY));
  assertEquals(parsed.types.get("vpn_received_bytes_total"), "counter");
  assertEquals(valueOf(parsed, "vpn_received_bytes_total"), 7000);
  assertEquals(valueOf(parsed, "vpn_sent_bytes_total"), 13000);
  assertEquals(valueOf(parsed, "vpn_received_packets_total"), 70);
  assertEquals(valueOf(parsed, "vpn_sent_packets_total"), 130);
  assertEquals(valueOf(parsed, "vpn_session_received_bytes_total", { name: "alice" }), 1000);
  assertEquals(valueOf(parsed, "vpn_session_sent_packets_total", { name: "carol" }), 60);
  assertEquals(valueOf(parsed, "vpn_session_dropped_packets_total", { name: "carol" }), 3);
  // The name comes back whole through the escapes.
  assertEquals(
    valueOf(parsed, "vpn_session_sent_bytes_total", { name: 'we"ird\\na\nme' }),
    4000,
  );
});

Deno.test("renderMetrics() with no session still declares every family", () => {
  const parsed = parseExposition(renderMetrics({ ...STATUS, sessions: [] }, MEMORY));
  assertEquals(valueOf(parsed, "vpn_sent_bytes_total"), 13000);
  assertEquals(parsed.types.get("vpn_session_sent_bytes_total"), "counter");
  assertEquals(valueOf(parsed, "vpn_session_sent_bytes_total"), undefined);
});

Deno.test("escapeLabel() escapes backslash, quote and line feed only", () => {
  assertEquals(escapeLabel('a\\b"c\nd\te'), 'a\\\\b\\"c\\nd\te');
});

Deno.test("parseExposition() refuses what the format does not allow", () => {
  const good = "# HELP vpn_x X.\n# TYPE vpn_x gauge\nvpn_x 1\n";
  parseExposition(good);
  const bad: [string, RegExp][] = [
    ["vpn_x 1\n", /before its TYPE/],
    ['# HELP vpn_x X.\n# TYPE vpn_x gauge\nvpn_x{a="b\\q"} 1\n', /bad escape/],
    ['# HELP vpn_x X.\n# TYPE vpn_x gauge\nvpn_x{a="b} 1\n', /not closed/],
    ['# HELP vpn_x X.\n# TYPE vpn_x gauge\nvpn_x{1a="b"} 1\n', /bad label name/],
    ["# HELP vpn_x X.\n# TYPE vpn_x gauge\nvpn_x one\n", /bad value/],
    ["# HELP vpn_x X.\n# TYPE vpn_x gauge\nvpn_x 1\nvpn_x 2\n", /same series/],
    ["# HELP vpn_x X.\n# TYPE vpn_x gauge\nvpn_x 1\n# TYPE vpn_x gauge\n", /TYPE after/],
    ["# HELP vpn_x X.\n# TYPE vpn_x counter\nvpn_x -1\n", /negative counter/],
    [good + '# HELP vpn_y Y.\n# TYPE vpn_y gauge\nvpn_y 1\nvpn_x{a="b"} 1\n', /appears again/],
    ["# HELP vpn_x X.\n# TYPE vpn_x gauge\nvpn_x 1", /line feed/],
    ["# HELP vpn-x X.\n", /bad metric name/],
  ];
  for (const [text, why] of bad) {
    const error = assertThrows(() => parseExposition(text), Error);
    assertMatch(error.message, why, JSON.stringify(text));
  }
});

Deno.test("MetricsServer serves GET and HEAD on /metrics only", async () => {
  await using server = MetricsServer.start({ hostname: "127.0.0.1", port: 0 }, () => STATUS);
  const base = `http://127.0.0.1:${server.addr.port}`;
  const get = await fetch(`${base}/metrics`);
  assertEquals(get.status, 200);
  assertEquals(get.headers.get("content-type"), METRICS_CONTENT_TYPE);
  const parsed = parseExposition(await get.text());
  assertEquals(valueOf(parsed, "vpn_renegotiations_total"), 4);
  assert(valueOf(parsed, "vpn_process_resident_memory_bytes")! > 1_000_000);

  const head = await fetch(`${base}/metrics`, { method: "HEAD" });
  assertEquals(head.status, 200);
  assertEquals(await head.text(), "");

  const post = await fetch(`${base}/metrics`, { method: "POST", body: "x" });
  assertEquals(post.status, 405);
  assertEquals(post.headers.get("allow"), "GET, HEAD");
  await post.body?.cancel();

  for (const path of ["/", "/metrics/", "/status"]) {
    const other = await fetch(`${base}${path}`);
    assertEquals(other.status, 404, path);
    await other.body?.cancel();
  }
});

Deno.test("MetricsServer answers 500 when the status cannot be read", async () => {
  await using server = MetricsServer.start({ hostname: "127.0.0.1", port: 0 }, () => {
    throw new Error("router gone");
  });
  const response = await fetch(`http://127.0.0.1:${server.addr.port}/metrics`);
  assertEquals(response.status, 500);
  await response.body?.cancel();
});

Deno.test("MetricsServer.start() on a taken port names the port and the fix", () => {
  using taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = taken.addr;
  const error = assertThrows(
    () => MetricsServer.start({ hostname: "127.0.0.1", port }, () => STATUS),
    Error,
  );
  assertEquals(
    error.message,
    `metrics.listen 127.0.0.1:${port}: port ${port} is in use by another process; stop it, ` +
      "or set metrics.listen in server.yaml to a free port",
  );
});

Deno.test("MetricsServer.start() on an address not of this host says so", () => {
  assertThrows(
    () => MetricsServer.start({ hostname: "192.0.2.1", port: 9194 }, () => STATUS),
    Error,
    /192\.0\.2\.1 is not an address of this host/,
  );
});
