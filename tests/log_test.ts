/**
 * The server's operator-facing log without root: the rate limit of refusal lines, the counters
 * line, escaping of peer text and the one format of a peer's address as units; and, with an
 * in-process Server on 127.0.0.1 (tests/_lab.ts), that each kind of failed client is named at
 * the default level, and that packets dropped at a full TLS send buffer are counted for the
 * whole server.
 */

import { configureSync, type LogRecord } from "@logtape/logtape";
import { assert, assertEquals } from "./_assert.ts";
import { HOST, ipv4Packet, type Lab, SHORT_MS, waitFor, within, withLab } from "./_lab.ts";
import { RawClient, signedAuth } from "./_raw_client.ts";
import { encodeSockAddr, formatSockAddr, UdpSocket } from "../ffi/udp.ts";
import { ClientUdp } from "../mod/native/client_udp.ts";
import { KeyHalf } from "../mod/native/datagram.ts";
import { authenticate } from "../mod/native/handshake.ts";
import { formatPeer, peerHost } from "../mod/core/ip.ts";
import { CounterLine, escapeText, RateLimit } from "../mod/log.ts";
import { ALPN, encodeMessage } from "../mod/native/messages.ts";
import { initPki } from "../mod/pki.ts";
import { FrameType } from "../mod/native/wire.ts";

/** Every line the product logged, as `[LEVEL] message`, from the default level (info) up. */
const lines: string[] = [];
const render = (record: LogRecord) =>
  `[${record.level}] ${record.message.map((part) => String(part)).join("")}`;
configureSync({
  reset: true,
  sinks: { memory: (record) => lines.push(render(record)) },
  loggers: [
    { category: ["vpn"], lowestLevel: "info", sinks: ["memory"] },
    { category: ["logtape", "meta"], lowestLevel: "warning", sinks: [] },
  ],
});

// --- units -------------------------------------------------------------------------------

Deno.test("escapeText() escapes line breaks, control and bidi characters and the backslash, nothing else", () => {
  assertEquals(escapeText("evil\n[ERR] forged\r"), "evil\\u{a}[ERR] forged\\u{d}");
  assertEquals(
    escapeText("\x1b[31mred\u202egnp.exe\u2028"),
    "\\u{1b}[31mred\\u{202e}gnp.exe\\u{2028}",
  );
  assertEquals(escapeText("a\\u{a}"), "a\\u{5c}u{a}", "a literal escape cannot pass for one");
  assertEquals(escapeText('café "vpn/1" 名前: ok'), 'café "vpn/1" 名前: ok');
});

Deno.test("RateLimit lets one line per reason and source out every 10 s and counts the rest", () => {
  const limit = new RateLimit(10_000, 1024);
  assertEquals(limit.admit("not-tls", "192.0.2.1", 0), "");
  for (const at of [1, 5_000, 9_999]) {
    assertEquals(limit.admit("not-tls", "192.0.2.1", at), undefined);
  }
  // Another source, another reason: lines of their own at once.
  assertEquals(limit.admit("not-tls", "192.0.2.2", 9_999), "");
  assertEquals(limit.admit("timeout", "192.0.2.1", 9_999), "");
  assertEquals(
    limit.admit("not-tls", "192.0.2.1", 12_400),
    " (and 3 more like it in the last 12 s)",
  );
  assertEquals(limit.admit("not-tls", "192.0.2.1", 22_399), undefined, "a new window began");
  assertEquals(
    limit.admit("not-tls", "192.0.2.1", 22_400),
    " (and 1 more like it in the last 10 s)",
  );
  assertEquals(limit.admit("not-tls", "192.0.2.1", 40_000), "", "nothing was held back");
});

Deno.test("RateLimit beyond its table of sources shares one key per reason, and reuses keys whose window passed", () => {
  const limit = new RateLimit(10_000, 2);
  assertEquals(limit.admit("tls", "a", 0), "");
  assertEquals(limit.admit("tls", "b", 0), "");
  // The table is full: c and d share one key, so d is held back though it never had a line.
  assertEquals(limit.admit("tls", "c", 1), "");
  assertEquals(limit.admit("tls", "d", 2), undefined);
  assertEquals(limit.admit("timeout", "d", 3), "", "the shared keys are per reason");
  assertEquals(limit.admit("tls", "a", 4), undefined, "a keeps its own key");
  // a and b start new windows, so the table is still full of live keys for e.
  assertEquals(limit.admit("tls", "a", 10_000), " (and 1 more like it in the last 10 s)");
  assertEquals(limit.admit("tls", "b", 10_000), "");
  assertEquals(
    limit.admit("tls", "e", 10_001),
    " (and 1 more like it from any source in the last 10 s)",
  );
  // Once a and b are past their window, new sources take their places, although the shared
  // key's window is still open.
  assertEquals(limit.admit("tls", "f", 20_000), "");
  assertEquals(limit.admit("tls", "g", 20_000), "");
  assertEquals(limit.admit("tls", "g", 20_000), undefined);
  assertEquals(limit.admit("tls", "h", 20_000), undefined, "the table is full again: shared");
});

Deno.test("CounterLine says what moved since its last line and the totals, and nothing when nothing moved", () => {
  const words = { spoofed: "spoofed", notIpv4: "not IPv4", dropped: "dropped", refused: "refused" };
  const line = new CounterLine(words, 0);
  const counts = { spoofed: 0, notIpv4: 0, dropped: 0, refused: 0 };
  assertEquals(line.next(counts, 10_000), undefined);
  counts.spoofed = 3;
  counts.refused = 1;
  assertEquals(
    line.next(counts, 20_000),
    "in the last 20 s: 3 spoofed, 0 not IPv4, 0 dropped, 1 refused; " +
      "since start: 3 spoofed, 0 not IPv4, 0 dropped, 1 refused",
  );
  assertEquals(line.next(counts, 30_000), undefined);
  counts.dropped = 7;
  counts.spoofed = 5;
  counts.notIpv4 = 2;
  assertEquals(
    line.next(counts, 40_000),
    "in the last 20 s: 2 spoofed, 2 not IPv4, 7 dropped, 0 refused; " +
      "since start: 5 spoofed, 2 not IPv4, 7 dropped, 1 refused",
  );
});

Deno.test("formatPeer() prints IPv4 as a.b.c.d:port, IPv6 as [addr]:port and a v4-mapped address as IPv4", () => {
  assertEquals(formatPeer("10.0.0.2", 4000), "10.0.0.2:4000");
  assertEquals(formatPeer("fd00:30:1::2", 4000), "[fd00:30:1::2]:4000");
  assertEquals(formatPeer("::1", 1), "[::1]:1");
  assertEquals(formatPeer("::ffff:10.0.0.2", 4000), "10.0.0.2:4000");
  assertEquals(formatPeer("::FFFF:172.30.1.2", 5), "172.30.1.2:5");
  // Only the mapped prefix unmaps: an IPv6 address that merely ends in a dotted quad stays.
  assertEquals(formatPeer("64:ff9b::10.0.0.2", 5), "[64:ff9b::10.0.0.2]:5");
  assertEquals(peerHost("::ffff:10.0.0.2"), "10.0.0.2");
  assertEquals(peerHost("fd00::2"), "fd00::2");
  // A socket's own addresses, through the same function: as a dual-stack socket reports an
  // IPv4 peer, and with an IPv6 scope id.
  assertEquals(
    formatSockAddr(encodeSockAddr("127.0.0.1", 5, undefined, 6), formatPeer),
    "127.0.0.1:5",
  );
  const linkLocal = encodeSockAddr("fe80::1", 9);
  linkLocal[24] = 2;
  assertEquals(formatSockAddr(linkLocal, formatPeer), "[fe80::1%2]:9");
  assertEquals(formatSockAddr(encodeSockAddr("192.0.2.7", 80), formatPeer), "192.0.2.7:80");
});

Deno.test("ClientUdp names a server dialled by its v4-mapped address as the IPv4 address", () => {
  using server = UdpSocket.bind("127.0.0.1", 0);
  const serverHalf = new KeyHalf();
  const accept = {
    cipher: "aes-256-gcm",
    session: 1,
    random: serverHalf.random.toBase64(),
    share: serverHalf.share.toBase64(),
  };
  const sink = { fromServer() {}, flush() {} };
  // A mapped host makes an IPv6 socket, whose address for the server is the mapped one.
  using client = ClientUdp.open(
    accept,
    new KeyHalf(),
    "::ffff:127.0.0.1",
    server.port,
    sink,
    5000,
  );
  assertEquals(client.server, `127.0.0.1:${server.port}`);
});

// --- the in-process server ---------------------------------------------------------------

/** Waits for a logged line matching `pattern`; returns it. */
async function logged(pattern: RegExp, what: string): Promise<string> {
  await waitFor(() => lines.some((line) => pattern.test(line)), SHORT_MS, what);
  return lines.find((line) => pattern.test(line))!;
}

/** The refusal lines logged so far. */
function refusals(): string[] {
  return lines.filter((line) => line.startsWith("[warning] refused "));
}

/** A TLS client with `ca` and `alpn` whose handshake fails or succeeds; the result is ignored. */
async function tlsAttempt(lab: Lab, ca: string, alpn?: string[]): Promise<void> {
  const conn = await within(
    Deno.connectTls({
      hostname: HOST,
      port: lab.port,
      caCerts: [ca],
      ...(alpn && { alpnProtocols: alpn }),
    }),
    SHORT_MS,
    "TCP connect",
  );
  await within(conn.handshake().catch(() => {}), SHORT_MS, "the TLS handshake settles");
  conn.close();
}

/** A TCP client that sends `bytes` (none: it only connects) and closes. */
async function tcpAttempt(lab: Lab, bytes: Uint8Array): Promise<void> {
  const conn = await within(Deno.connect({ hostname: HOST, port: lab.port }), SHORT_MS, "connect");
  if (bytes.length > 0) await within(conn.write(bytes), SHORT_MS, "write");
  conn.close();
}

Deno.test("Server logs a refusal of each kind once at the default level, with its reason, the source and the escaped detail", async () => {
  await withLab(async (lab) => {
    lines.length = 0;
    const ca = await Deno.readTextFile(`${lab.dir}/ca.crt`);
    const other = await Deno.makeTempDir({ prefix: "vpn-log-test-" });
    try {
      await initPki(`${other}/pki`, { hosts: [HOST] });
      await tlsAttempt(lab, await Deno.readTextFile(`${other}/pki/ca.crt`), [ALPN]);
    } finally {
      await Deno.remove(other, { recursive: true });
    }
    await logged(
      /^\[warning\] refused 127\.0\.0\.1:\d+: server-certificate-rejected: the client trusts another CA: give it a profile made here by "vpn client add" \(TLS: received fatal alert: UnknownCA\)$/,
      "the refusal of a client that does not trust our CA",
    );

    await tcpAttempt(lab, new TextEncoder().encode("GET / HTTP/1.0\r\n\r\n"));
    await logged(
      /^\[warning\] refused 127\.0\.0\.1:\d+: not-tls: the client does not speak TLS \(received corrupt message of type InvalidContentType\)$/,
      "the refusal of a client that does not speak TLS",
    );

    await tcpAttempt(lab, new Uint8Array(0));
    await logged(
      /^\[warning\] refused 127\.0\.0\.1:\d+: closed: the client closed the connection before it authenticated/,
      "the refusal of a connection closed before TLS",
    );

    await tlsAttempt(lab, ca, ["h2"]);
    await logged(
      /^\[warning\] refused 127\.0\.0\.1:\d+: protocol: client offered no "vpn\/1" ALPN id \(TLS: peer doesn't support any known protocol\)$/,
      "the refusal of a client with another ALPN id",
    );

    // An AUTH naming a server that is not this one, with a name built to forge log lines.
    const raw = await RawClient.connect(lab.port, ca);
    try {
      const name = "evil\n[warning] alice connected\u202e";
      await raw.sendAuth(await signedAuth(await lab.issue("alice"), await raw.hello(), name));
      await raw.closed(SHORT_MS, "the server closes the connection after ERROR");
    } finally {
      await raw.close();
    }
    const forged = await logged(/bad-signature/, "the refusal of an AUTH for another name");
    assertEquals(
      forged.replace(/^\[warning\] refused 127\.0\.0\.1:\d+: /, ""),
      'bad-signature: client dialled "evil\\u{a}[warning] alice connected\\u{202e}", ' +
        "which is not a name of this server",
    );

    assertEquals(refusals().length, 5, refusals().join("\n"));
    assertEquals(lab.server.stats.refused, 5);
  });
});

Deno.test("Server holds back a second refusal for the same reason from the same address within 10 s", async () => {
  await withLab(async (lab) => {
    lines.length = 0;
    const ca = await Deno.readTextFile(`${lab.dir}/ca.crt`);
    await tlsAttempt(lab, ca);
    await logged(
      /^\[warning\] refused 127\.0\.0\.1:\d+: protocol: client offered no "vpn\/1" ALPN id$/,
      "the refusal of a client without ALPN",
    );
    await tlsAttempt(lab, ca, ["h2"]);
    await tlsAttempt(lab, ca);
    await waitFor(() => lab.server.stats.refused === 3, SHORT_MS, "three refusals");
    assertEquals(refusals().length, 1, refusals().join("\n"));
  });
});

Deno.test("Server logs a connection that a newer one of its source replaced at the cap of 8 handshakes per source", async () => {
  await withLab(async (lab) => {
    lines.length = 0;
    const idle: Deno.TcpConn[] = [];
    try {
      for (let i = 0; i < 9; i++) {
        idle.push(
          await within(Deno.connect({ hostname: HOST, port: lab.port }), SHORT_MS, "connect"),
        );
      }
      await logged(
        /^\[warning\] refused 127\.0\.0\.1:\d+: busy-source: replaced by a newer connection from the same source \(8 in their handshake at most per source\)$/,
        "the refusal of the oldest connection",
      );
      assertEquals(lab.server.stats.refused, 1);
    } finally {
      for (const conn of idle) conn.close();
    }
    await waitFor(() => lab.server.preAuthCount === 0, SHORT_MS, "the 8 connections leave");
  });
});

Deno.test("Server escapes a client's goodbye in the line that ends its session", async () => {
  await withLab(async (lab) => {
    lines.length = 0;
    const ca = await Deno.readTextFile(`${lab.dir}/ca.crt`);
    const raw = await RawClient.authenticated(lab.port, ca, await lab.issue("alice"));
    try {
      await raw.send(FrameType.BYE, encodeMessage({ reason: "bye\n[warning] forged" }));
      await raw.closed(SHORT_MS, "the server closes the session after BYE");
    } finally {
      await raw.close();
    }
    const line = await logged(/alice .* disconnected: /, "the end of alice's session");
    assert(line.includes("client said goodbye: bye\\u{a}[warning] forged; TLS"), line);
  });
});

/**
 * Runs `fill` (which puts packets for `address` somewhere) until the server drops one for a
 * client that authenticated as "slow" and then never reads; then ends that session. Returns
 * the session's own count of drops, from the line that ends it.
 */
async function dropsForSlowClient(
  lab: Lab,
  fill: (slowAddress: string) => Promise<() => void>,
): Promise<number> {
  const ca = await Deno.readTextFile(`${lab.dir}/ca.crt`);
  const keys = await lab.issue("slow");
  const raw = await RawClient.connect(lab.port, ca);
  try {
    const credentials = { certPem: keys.cert, keyPem: keys.key, serverName: HOST, offload: false };
    const push = await within(authenticate(raw.channel, credentials), SHORT_MS, "PUSH");
    const more = await fill(push.address);
    await waitFor(
      () => {
        more();
        return lab.server.stats.dropped > 0;
      },
      20_000,
      "the server drops a packet for the client that does not read",
    );
  } finally {
    await raw.close();
  }
  const line = await logged(/slow \(10\.8\.0\.2, .*\) disconnected: /, "the end of the session");
  await waitFor(() => lab.server.sessionCount <= 1, SHORT_MS, "the session is gone");
  const dropped = Number(/ (\d+) dropped;/.exec(line)?.[1]);
  assert(dropped > 0, line);
  return dropped;
}

Deno.test("Server counts packets from its TUN dropped at a full TLS send buffer, and keeps the count after the session ends", async () => {
  await withLab(async (lab) => {
    lines.length = 0;
    const dropped = await dropsForSlowClient(lab, (address) => {
      const packet = ipv4Packet("10.8.0.1", address, "x".repeat(60_000));
      return Promise.resolve(() => {
        for (let i = 0; i < 64; i++) lab.serverTun.inject(packet);
      });
    });
    // The session's count, at its end, is all the server had dropped by then (it was the only
    // session); the server's total keeps it, and may have grown since (a packet routed to the
    // session as it ended).
    assert(lab.server.stats.dropped >= dropped, `${lab.server.stats.dropped} < ${dropped}`);
  });
});

Deno.test("Server counts packets between clients (client_to_client) dropped at a full TLS send buffer", async () => {
  await withLab(async (lab) => {
    lines.length = 0;
    const dropped = await dropsForSlowClient(lab, async (address) => {
      const alice = await lab.connected("alice");
      const packet = ipv4Packet(alice.client.address!, address, "x".repeat(1300));
      return () => {
        for (let i = 0; i < 64; i++) alice.tun.inject(packet);
      };
    });
    assert(lab.server.stats.dropped >= dropped, `${lab.server.stats.dropped} < ${dropped}`);
  }, (config) => config.client_to_client = true);
});
