/**
 * The client's own behaviour end to end, with `vpn connect` (and `vpn serve` where there is
 * one) in namespaces (tests/_vpn.ts): a stop while it connects or waits to reconnect, what it
 * says about `proto tcp`, its byte counts, and what its refusals tell the user to do. One test
 * runs in process against a fake TLS server (no root): only a fake sends a hostile message.
 */

import { assert, assertEquals, assertMatch } from "./_assert.ts";
import { type Netns, rootTest } from "./_netns.ts";
import { Topology, type VpnProcess, waitFor } from "./_vpn.ts";
import { within } from "./_wait.ts";
import { Client, ClientError } from "../mod/native/client.ts";
import { MemoryTun } from "../mod/core/memory_tun.ts";
import { ALPN, encodeMessage, PROTOCOL_VERSION } from "../mod/native/messages.ts";
import { initPki, issueClient } from "../mod/pki.ts";
import { encodeFrame, FrameType } from "../mod/native/wire.ts";

/** The TUN devices in `ns`. */
async function tuns(ns: Netns): Promise<string[]> {
  const links = JSON.parse((await ns.run(["ip", "-j", "-d", "link", "show"])).stdout);
  return links
    .filter((l: { linkinfo?: { info_kind?: string } }) => l.linkinfo?.info_kind === "tun")
    .map((l: { ifname: string }) => l.ifname);
}

/**
 * Sends `signal` to a client that has its TUN and is not connected, and checks that it ends
 * with 0 and without its TUN; returns how long it took (ms).
 */
async function stopWhileUnconnected(
  ns: Netns,
  client: VpnProcess,
  signal: Deno.Signal,
): Promise<number> {
  assertEquals((await tuns(ns)).length, 1, `the client has its TUN: ${client.log}`);
  const start = performance.now();
  // Bounded well past the 10 s connect timeout, so that waiting it out shows as the time taken.
  const code = await client.stop(signal, 20_000);
  const ms = performance.now() - start;
  assertEquals(code, 0, client.log);
  assertEquals(await tuns(ns), [], "the TUN is gone");
  return ms;
}

/** Packets the server namespace's INPUT chain dropped for TCP port 1194. */
async function droppedSyns(server: Netns): Promise<number> {
  const rules = (await server.run(["iptables", "-nvxL", "INPUT"])).stdout;
  return Number(/^\s*(\d+)\s+\d+\s+DROP\s.*dpt:1194/m.exec(rules)?.[1] ?? 0);
}

rootTest("client: SIGINT or SIGTERM while it connects or backs off ends it at once", async () => {
  await using net = await Topology.create(1);
  const profile = await net.addClient("alice");
  const ns = net.clients[0]!;

  // The server's address drops SYNs: the TCP connect itself is pending.
  const drop = ["INPUT", "-p", "tcp", "--dport", "1194", "--syn", "-j", "DROP"];
  await net.server.run(["iptables", "-A", ...drop]);
  const dialling = net.connect(0, profile);
  await waitFor("the client's SYN", async () => (await droppedSyns(net.server)) > 0 || undefined);
  const ms = await stopWhileUnconnected(ns, dialling, "SIGINT");
  assert(ms < 8000, `SIGINT during the TCP connect took ${ms} ms, the connect timeout is 10 s`);
  assert(!/timed out/.test(dialling.log), dialling.log);
  await net.server.run(["iptables", "-D", ...drop]);

  // The server accepts TCP and never answers TLS: the TLS handshake is pending.
  const silent = net.spawnCommand(net.server, [
    Deno.execPath(),
    "eval",
    `const held = [];
     for await (const conn of Deno.listen({ hostname: "${net.serverIp(0)}", port: 1194 })) {
       held.push(conn);
       console.log("accepted");
     }`,
  ]);
  const handshaking = net.connect(0, profile);
  await silent.waitForLog(/accepted/);
  const tlsMs = await stopWhileUnconnected(ns, handshaking, "SIGTERM");
  assert(tlsMs < 8000, `SIGTERM during the TLS handshake took ${tlsMs} ms, its timeout is 10 s`);
  assert(!/timed out/.test(handshaking.log), handshaking.log);
  await silent.stop("SIGKILL");

  // Nothing listens: every attempt is refused at once, and the client sleeps 1, 2, 4 s ...
  const waiting = net.connect(0, profile);
  const delay = await waitFor("the fourth backoff", () => {
    const delays = [...waiting.log.matchAll(/reconnecting in ([\d.]+) s/g)];
    return delays.length >= 4 ? Number(delays[3]![1]) : undefined;
  }, 30_000);
  const sleepMs = await stopWhileUnconnected(ns, waiting, "SIGINT");
  // The fourth sleep is 6-8 s (backoff_test.ts): ending it takes far less.
  assert(sleepMs < delay * 1000 - 1000, `SIGINT in a ${delay} s backoff took ${sleepMs} ms`);
  assertEquals(waiting.log.match(/connection to .* failed/g)?.length, 4, waiting.log);
});

rootTest("client: --proto tcp, or proto: tcp in the profile, says data goes over TLS", async () => {
  await using net = await Topology.create(1);
  await net.startServer();
  const profile = await net.addClient("alice");
  const tcpProfile = `${net.dir}/alice-tcp.yaml`;
  const text = await Deno.readTextFile(profile);
  assertMatch(text, /^proto: auto$/m);
  await Deno.writeTextFile(tcpProfile, text.replace(/^proto: auto$/m, "proto: tcp"), {
    mode: 0o600,
  });
  for (const [path, extra] of [[profile, ["--proto", "tcp"]], [tcpProfile, []]] as const) {
    const client = net.connect(0, path, [...extra]);
    await client.waitForLog(/data goes over TLS to 172\.30\.1\.1:1194 \(proto tcp\)/);
    // Long enough for a UDP probe to have been answered, were one sent.
    assert(await net.ping(net.clients[0]!, "10.8.0.1"), client.log);
    assertEquals(await client.stop("SIGINT"), 0, client.log);
    assert(!/over UDP/.test(client.log), client.log);
    assertMatch(client.log, /totals of 1 session\(s\): TLS [1-9]\d* bytes in, .*; UDP 0 bytes in/);
  }
});

/** The byte counts of one "session:" or "totals" line. */
function traffic(match: RegExpExecArray) {
  const [tlsIn, tlsOut, dropped, udpIn, udpOut] = match.slice(-5).map(Number);
  return { tlsIn: tlsIn!, tlsOut: tlsOut!, dropped: dropped!, udpIn: udpIn!, udpOut: udpOut! };
}

const COUNTS =
  "TLS (\\d+) bytes in, (\\d+) out, (\\d+) packets dropped; UDP (\\d+) bytes in, (\\d+) out";

rootTest("client: each session's line and the exit line count UDP bytes both ways", async () => {
  await using net = await Topology.create(1);
  let server = await net.startServer();
  const ns = net.clients[0]!;
  const client = net.connect(0, await net.addClient("alice"), ["--proto", "udp"]);
  const count = 20;
  const size = 1200;
  // ICMP echoes of `size` bytes of data: 28 bytes of headers more in each IP packet.
  const pings = async () => {
    const result = await ns.run(
      ["ping", "-c", String(count), "-s", String(size), "-i", "0.05", "-W", "2", "10.8.0.1"],
      true,
    );
    assertMatch(result.stdout, new RegExp(` ${count} received`), result.stdout);
  };
  await client.waitForLog(/data goes over UDP/);
  await pings();
  // A second session: the server restarts, the client comes back by itself.
  await server.stop("SIGKILL");
  server = await net.startServer();
  await server.waitForLog(/alice connected from/, 30_000);
  await waitFor("UDP in the second session", () => {
    return (client.log.match(/data goes over UDP/g)?.length ?? 0) >= 2 || undefined;
  });
  await pings();
  assertEquals(await client.stop("SIGINT"), 0, client.log);

  const sessions = [...client.log.matchAll(new RegExp(`session: ${COUNTS}`, "g"))].map(traffic);
  assertEquals(sessions.length, 2, client.log);
  const line = new RegExp(`totals of (\\d+) session\\(s\\): ${COUNTS}`).exec(client.log);
  assert(line, client.log);
  assertEquals(line[1], "2", client.log);
  const totals = traffic(line);
  const ipBytes = count * (size + 28);
  for (const session of sessions) {
    assert(session.udpOut >= ipBytes, `UDP out ${session.udpOut} < ${ipBytes}: ${client.log}`);
    assert(session.udpIn >= ipBytes, `UDP in ${session.udpIn} < ${ipBytes}: ${client.log}`);
    // The echoes went over UDP: TLS carried only the handshake and keepalives.
    assert(session.tlsOut < ipBytes, `TLS out ${session.tlsOut}: ${client.log}`);
  }
  const [a, b] = sessions as [typeof totals, typeof totals];
  assertEquals(totals, {
    tlsIn: a.tlsIn + b.tlsIn,
    tlsOut: a.tlsOut + b.tlsOut,
    dropped: a.dropped + b.dropped,
    udpIn: a.udpIn + b.udpIn,
    udpOut: a.udpOut + b.udpOut,
  });
});

rootTest("client: revoked, replaced and foreign profiles exit 1 saying what to do", async () => {
  await using net = await Topology.create(2);
  await using other = await Topology.create(0);
  await net.startServer();
  const ask =
    "ask the server's operator for a new profile \\(`vpn client add mallory` on the server\\)";

  // Revoked while connected, then refused at once.
  const mallory = await net.addClient("mallory");
  const revoked = net.connect(0, mallory);
  await net.waitForAddress(net.clients[0]!, "10.8.0.2");
  await net.vpn(["client", "revoke", "mallory", "--dir", net.dir]);
  assertEquals(await revoked.exited(10_000), 1, revoked.log);
  const wasRevoked = `This profile's certificate was revoked on the server: ${ask}\\.`;
  assertMatch(
    revoked.log,
    new RegExp(`the server refused this client: certificate revoked\\. ${wasRevoked}`),
  );
  const again = net.connect(0, mallory);
  assertEquals(await again.exited(), 1, again.log);
  assertMatch(
    again.log,
    new RegExp(`refused this client: certificate [0-9a-f]+ has been revoked\\. ${wasRevoked}`),
  );

  // The same profile from a second machine takes the session over.
  const shared = await net.addClient("laptop");
  const first = net.connect(0, shared);
  await net.waitForAddress(net.clients[0]!, "10.8.0.2");
  const second = net.connect(1, shared);
  assertEquals(await first.exited(), 1, first.log);
  assertMatch(
    first.log,
    new RegExp(
      "refused this client: the same certificate connected again\\. Another device connected " +
        "with this same profile and took this session over: give each device its own profile " +
        "\\(`vpn client add` with a name per device, on the server\\)\\.",
    ),
  );
  await net.waitForAddress(net.clients[1]!, "10.8.0.2");
  assert(!/refused/.test(second.log), second.log);

  // A certificate from another CA (with this server's CA, so that TLS passes).
  const foreign = await Deno.readTextFile(await other.addClient("stranger"));
  const ours = await Deno.readTextFile(`${net.dir}/ca.crt`);
  const mixed = `${net.dir}/mixed.yaml`;
  await Deno.writeTextFile(
    mixed,
    foreign.replace(
      /ca: \|[\s\S]*?-----END CERTIFICATE-----\n/,
      `ca: |\n${ours.replace(/^/gm, "  ")}\n`,
    ),
    { mode: 0o600 },
  );
  const stranger = net.connect(0, mixed);
  assertEquals(await stranger.exited(), 1, stranger.log);
  assertMatch(
    stranger.log,
    /certificate is not signed by this server's CA\. The profile's certificate is from another server's CA: get a profile from this server \(`vpn client add stranger` on it\)\./,
  );
});

/**
 * A stand-in server on 127.0.0.1 with the server certificate of a fresh PKI in `dir` (choosing
 * `alpn` when given), and a client of it with alice's profile and an in-memory TUN.
 */
async function standIn(dir: string, alpn?: string) {
  await initPki(dir, { hosts: ["127.0.0.1"] });
  const issued = await issueClient(dir, "alice");
  const listener = Deno.listenTls({
    hostname: "127.0.0.1",
    port: 0,
    cert: await Deno.readTextFile(`${dir}/server.crt`),
    key: await Deno.readTextFile(`${dir}/server.key`),
    ...(alpn ? { alpnProtocols: [alpn] } : {}),
  });
  const port = listener.addr.port;
  const client = new Client({
    profile: {
      remote: `127.0.0.1:${port}`,
      ca: issued.caPem,
      cert: issued.certPem,
      key: issued.keyPem,
      proto: "auto",
      dev: "vpn%d",
    },
    host: "127.0.0.1",
    port,
    tun: new MemoryTun({ name: "alice-tun" }),
  });
  return { listener, client };
}

/** The stand-in server's HELLO on `conn`. */
async function hello(conn: Deno.Conn): Promise<void> {
  const nonce = crypto.getRandomValues(new Uint8Array(32)).toBase64();
  await conn.write(
    encodeFrame(FrameType.HELLO, encodeMessage({ version: PROTOCOL_VERSION, nonce })),
  );
}

Deno.test("client: a refusal quotes the server's message with control characters escaped", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vpn-client-test-" });
  try {
    // A server that says HELLO and refuses at once, with a message that would forge a log line.
    const { listener: tls, client } = await standIn(dir, ALPN);
    using listener = tls;
    const serving = (async () => {
      using conn = await listener.accept();
      await hello(conn);
      const message = "gone\n2026-01-01 [ERR] vpn·client: forged\u202e";
      await conn.write(encodeFrame(FrameType.ERROR, encodeMessage({ reason: "revoked", message })));
      // Until the client hangs up: its AUTH, then the end.
      while (await conn.read(new Uint8Array(4096)) !== null);
    })();
    const error = await within(client.run().then(() => undefined, (e) => e), 5000, "run() ends");
    assert(error instanceof ClientError, String(error));
    assertEquals(
      error.message,
      "the server refused this client: gone\\u{a}2026-01-01 [ERR] vpn·client: forged\\u{202e}. " +
        "This profile's certificate was revoked on the server: ask the server's operator for a " +
        "new profile (`vpn client add alice` on the server).",
    );
    await within(serving, 5000, "the client hangs up");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("client: a server that chooses no vpn/1 ALPN id never gets an AUTH", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vpn-client-test-" });
  try {
    // This server's certificate is right, but it speaks no vpn/1; it says HELLO all the same.
    const { listener: tls, client } = await standIn(dir);
    using listener = tls;
    const serving = (async () => {
      using conn = await listener.accept();
      await hello(conn);
      let received = 0;
      const buf = new Uint8Array(4096);
      for (let n; (n = await conn.read(buf).catch(() => null)) !== null;) received += n;
      return received;
    })();
    const running = client.run();
    const received = await within(serving, 5000, "the client hangs up");
    assertEquals(received, 0, "the client sent an AUTH to a server without vpn/1");
    await client.stop();
    await within(running, 5000, "run() ends");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
