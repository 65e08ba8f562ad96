/**
 * What `vpn serve` tells its operator at the default log level, end to end: real `vpn serve`
 * and `vpn connect` processes (and small TLS scripts) in namespaces (tests/_vpn.ts). Every
 * client that fails is named with its reason and source, one line per reason and source every
 * 10 s; the counters of refused packets and connections go out every 10 s when they moved;
 * a peer is printed one way, IPv6 in brackets and an IPv4 client of a `::` listener as IPv4.
 *
 * The 10 s of the product's timers are written out here on purpose: a changed constant fails.
 */

import { assert, assertEquals, assertMatch } from "./_assert.ts";
import { denoScript, type Netns, rootTest } from "./_netns.ts";
import { Topology, type VpnProcess } from "./_vpn.ts";

/** When `line` was logged, from its own timestamp (logtape's date-time-tz), in ms. */
function loggedAt(line: string): number {
  const m = line.match(/^(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d\.\d{3}) ([+-]\d\d)(?::?(\d\d))?/);
  assert(m, `no timestamp in ${line}`);
  return Date.parse(`${m[1]}T${m[2]}${m[3]}:${m[4] ?? "00"}`);
}

/** The lines of `process`'s log that match `pattern`. */
function linesOf(process: VpnProcess, pattern: RegExp): string[] {
  return process.log.split("\n").filter((line) => pattern.test(line));
}

/** `vpn serve` at its default log level (no -v, no log.level), once it listens. */
async function serveDefault(net: Topology): Promise<VpnProcess> {
  const server = net.spawn(net.server, ["serve", "--dir", net.dir]);
  await server.waitForLog(/listening on/);
  return server;
}

/**
 * A script for a client namespace: `untrusted HOST CA_FILE` makes TLS connections that trust
 * CA_FILE and check the name HOST, 10 at once and then one every 500 ms until it is killed;
 * `once HOST CA_FILE` makes one; `idle HOST` opens a TCP connection, sends nothing, and says
 * when the server closed it.
 */
const SCRIPT = `
const [mode, host, caFile] = Deno.args;
if (mode === "idle") {
  const conn = await Deno.connect({ hostname: host, port: 1194 });
  console.log("connected");
  await conn.read(new Uint8Array(64)).catch(() => null);
  console.log("closed by the server");
} else {
  const ca = await Deno.readTextFile(caFile);
  for (let i = 1; ; i++) {
    const conn = await Deno.connectTls({ hostname: host, port: 1194, caCerts: [ca], alpnProtocols: ["vpn/1"] });
    await conn.handshake().catch(() => {});
    conn.close();
    console.log("attempt " + i);
    if (mode === "once") break;
    if (i >= 10) await new Promise((resolve) => setTimeout(resolve, 500));
  }
}
`;

/** Starts SCRIPT in `ns` with `args`. */
async function script(net: Topology, ns: Netns, args: string[]): Promise<VpnProcess> {
  const path = `${net.dir}/refusals.ts`;
  await Deno.writeTextFile(path, SCRIPT);
  return net.spawnCommand(ns, denoScript(path, ...args));
}

rootTest(
  "vpn serve, default level: a failing client is logged with its reason and source; one line " +
    "per reason and source every 10 s, the next one counting those held back",
  async () => {
    await using net = await Topology.create(2);
    await using other = await Topology.create(0);
    const server = await serveDefault(net);
    const foreign = await other.addClient("stranger");

    // A profile from another `vpn init`: the client refuses our certificate, and the server
    // says so although it logs at info.
    const stranger = net.connect(0, foreign);
    assertEquals(await stranger.exited(), 1, stranger.log);
    const untrusted =
      /\[WRN\] vpn·server: refused 172\.30\.1\.2:\d+: server-certificate-rejected: /;
    await server.waitForLog(
      /\[WRN\] vpn·server: refused 172\.30\.1\.2:\d+: server-certificate-rejected: the client trusts another CA: give it a profile made here by "vpn client add" \(TLS: received fatal alert: UnknownCA\)\n/,
    );
    // The same client again and again: held back for 10 s, then one line that counts them.
    const burst = await script(net, net.clients[0]!, [
      "untrusted",
      net.serverIp(0),
      `${other.dir}/ca.crt`,
    ]);
    // A connection that never starts TLS, from the other client: refused after 10 s.
    const idle = await script(net, net.clients[1]!, ["idle", net.serverIp(1)]);
    // Its 10 s start when it has connected (a script can take seconds to start on a busy VM).
    await idle.waitForLog(/^connected$/m, 20_000);

    // The same reason from another source has a line of its own at once: a client dialling an
    // address that server.crt does not name.
    const show = await net.server.run(["ip", "-j", "addr", "show", "to", net.serverIp(1)]);
    const [link] = JSON.parse(show.stdout);
    await net.server.run(["ip", "addr", "add", "172.30.2.3/24", "dev", link.ifname]);
    // (`vpn connect` checks the CA's identity name instead; a TLS client that checks the
    // address it dialled, as an OpenVPN client does, says BadCertificate.)
    const once = await script(net, net.clients[1]!, ["once", "172.30.2.3", `${net.dir}/ca.crt`]);
    await once.waitForLog(/attempt 1\n/);
    await server.waitForLog(
      /refused 172\.30\.2\.2:\d+: server-certificate-rejected: the client dialled a name or address that server\.crt does not name .*\(TLS: received fatal alert: BadCertificate\)\n/,
    );
    // Another reason from the first source, too: a revoked certificate.
    const profile = await net.addClient("mallory");
    await net.vpn(["client", "revoke", "mallory", "--dir", net.dir]);
    const mallory = net.connect(0, profile);
    assertEquals(await mallory.exited(), 1, mallory.log);
    await server.waitForLog(
      /\[WRN\] vpn·server: refused 172\.30\.1\.2:\d+: revoked: certificate [0-9a-f]+ has been revoked\n/,
    );

    await server.waitForLog(
      /\[WRN\] vpn·server: refused 172\.30\.2\.2:\d+: timeout: no TLS handshake and AUTH within 10 s\n/,
      20_000,
    );
    await idle.waitForLog(/closed by the server/);
    const counted =
      /refused 172\.30\.1\.2:\d+: server-certificate-rejected: .* \(and (\d+) more like it in the last (\d+) s\)\n/;
    await server.waitForLog(counted, 20_000);
    const lines = linesOf(server, untrusted);
    assertEquals(lines.length, 2, server.log);
    const [, held, seconds] = counted.exec(server.log)!;
    const attempts = Math.max(
      ...[...burst.log.matchAll(/attempt (\d+)\n/g)].map((m) => Number(m[1])),
    );
    // The burst's first 10 came within the window; all but the one that made the line were
    // held back, and none was counted twice.
    assert(Number(held) >= 10 && Number(held) < attempts, `${held} held of ${attempts}`);
    // Since the line before: the window of 10 s, and the wait for the attempt that ended it.
    assert(Number(seconds) >= 10 && Number(seconds) <= 15, `in the last ${seconds} s`);
    const gap = loggedAt(lines[1]!) - loggedAt(lines[0]!);
    assert(gap >= 9_900, `the second line came ${gap} ms after the first`);
    assertEquals(linesOf(server, /vpn·server: refused 172\.30\.1\.2:\d+: revoked: /).length, 1);
  },
);

rootTest(
  'vpn serve on "::" prints an IPv6 client as [addr]:port and an IPv4 one as a.b.c.d:port, ' +
    "never ::ffff:",
  async () => {
    await using net = await Topology.create(1, [], { ipv6: true });
    await using other = await Topology.create(0);
    await net.configure('listen:\n  host: "::"\n');
    const server = await serveDefault(net);
    assertMatch(server.log, /listening on \[::\]:1194 /);
    const client = net.clients[0]!;

    const alice = net.spawn(client, [
      "connect",
      "[fd00:30:1::1]:1194",
      "--profile",
      await net.addClient("alice"),
    ]);
    await server.waitForLog(
      /alice connected from \[fd00:30:1::2\]:\d+, address 10\.8\.0\.2(, fd[0-9a-f:]+::2)?\n/,
    );
    await server.waitForLog(/alice: data over UDP from \[fd00:30:1::2\]:\d+\n/);
    const carol = net.connect(0, await net.addClient("carol"));
    await server.waitForLog(/carol connected from 172\.30\.1\.2:\d+, address 10\.8\.0\.3\n/);
    await server.waitForLog(/carol: data over UDP from 172\.30\.1\.2:\d+\n/);
    assertEquals(await carol.stop(), 0, carol.log);
    await server.waitForLog(/carol \(10\.8\.0\.3, 172\.30\.1\.2:\d+\) disconnected: /);
    assertEquals(await alice.stop(), 0, alice.log);
    await server.waitForLog(/alice \(10\.8\.0\.2, \[fd00:30:1::2\]:\d+\) disconnected: /);

    // Refusals the same way, and an address in either form is one source each.
    const foreign = await other.addClient("stranger");
    const overIpv6 = net.spawn(client, ["connect", "[fd00:30:1::1]:1194", "--profile", foreign]);
    assertEquals(await overIpv6.exited(), 1, overIpv6.log);
    await server.waitForLog(/refused \[fd00:30:1::2\]:\d+: server-certificate-rejected: /);
    const overIpv4 = net.connect(0, foreign);
    assertEquals(await overIpv4.exited(), 1, overIpv4.log);
    await server.waitForLog(/refused 172\.30\.1\.2:\d+: server-certificate-rejected: /);
    assert(!server.log.includes("::ffff:"), server.log);
  },
);

rootTest(
  "vpn serve, default level: every 10 s that a counter moved, a line with the spoofed and " +
    "unroutable packets since the last line and in all",
  async () => {
    await using net = await Topology.create(1);
    const client = net.clients[0]!;
    // Without IPv6 the TUNs carry only the test's packets (no router solicitations), so every
    // count below is exact.
    for (const ns of [net.server, client]) {
      await ns.run(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
      await ns.run(["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
    }
    const server = await serveDefault(net);
    net.connect(0, await net.addClient("alice"));
    const dev = await net.waitForAddress(client, "10.8.0.2");
    // A second address on the client's TUN: packets from it are not the client's to send.
    await client.run(["ip", "addr", "add", "10.8.0.99/32", "dev", dev]);
    const spoof = (count: number) =>
      client.run([
        "ping",
        "-c",
        String(count),
        "-i",
        "0.2",
        "-W",
        "1",
        "-I",
        "10.8.0.99",
        "10.8.0.1",
      ], true);

    await spoof(3);
    const counters = /\[INF\] vpn·server: counters in the last (\d+) s: (.*)\n/g;
    await server.waitForLog(/counters in the last/, 15_000);
    const [first] = [...server.log.matchAll(counters)];
    assertEquals(
      first![2],
      "3 spoofed, 0 unroutable, 0 not IP, 0 IPv6 link-local, 0 dropped, 0 bad virtio-net header, 0 refused; since start: 3 spoofed, 0 unroutable, 0 not IP, 0 IPv6 link-local, 0 dropped, 0 bad virtio-net header, 0 refused",
    );
    assertEquals(Number(first![1]) % 10, 0, first![0]);

    // The next 10 s start now: two more spoofed packets, and two from the server's side for an
    // address no client has.
    await spoof(2);
    await net.server.run(["ping", "-c", "2", "-i", "0.2", "-W", "1", "10.8.0.77"], true);
    await server.waitForLog(/counters in the last 10 s: .* since start: 5 spoofed/, 15_000);
    const all = [...server.log.matchAll(counters)];
    assertEquals(all.length, 2, server.log);
    assertEquals(
      all[1]![2],
      "2 spoofed, 2 unroutable, 0 not IP, 0 IPv6 link-local, 0 dropped, 0 bad virtio-net header, 0 refused; since start: 5 spoofed, 2 unroutable, 0 not IP, 0 IPv6 link-local, 0 dropped, 0 bad virtio-net header, 0 refused",
    );
  },
);
