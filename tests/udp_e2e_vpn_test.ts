/**
 * The UDP data channel end to end: `vpn serve` and `vpn connect` in namespaces, with
 * netfilter rules in the client's namespace to count, drop and re-map its traffic.
 */

import { assert, assertEquals, assertGreater, assertMatch } from "./_assert.ts";
import { denoScript, type Netns, rootTest, transfer } from "./_netns.ts";
import { Topology, waitFor, withoutLibcrypto } from "./_vpn.ts";

/** Counts the client's outgoing traffic to the VPN port, per protocol, with iptables rules. */
async function countTraffic(ns: Netns): Promise<void> {
  for (const proto of ["udp", "tcp"]) {
    await ns.run(["iptables", "-A", "OUTPUT", "-p", proto, "--dport", "1194"]);
  }
}

async function trafficBytes(ns: Netns): Promise<{ udp: number; tcp: number }> {
  const { stdout } = await ns.run(["iptables", "-L", "OUTPUT", "-v", "-x", "-n"]);
  const bytes = (proto: string) => {
    const line = stdout.split("\n").find((l) =>
      l.trimEnd().endsWith(`${proto} dpt:1194`) && !l.includes("DROP")
    );
    return Number(line?.trim().split(/\s+/)[1] ?? NaN);
  };
  return { udp: bytes("udp"), tcp: bytes("tcp") };
}

const DROP_UDP = ["OUTPUT", "-p", "udp", "--dport", "1194", "-j", "DROP"];

rootTest("vpn --proto udp: ping and bulk data travel as UDP datagrams", async () => {
  await using net = await Topology.create(1);
  const client = net.clients[0]!;
  await countTraffic(client);
  const server = await net.startServer();
  const vpn = net.connect(0, await net.addClient("alice"), ["--proto", "udp"]);
  await vpn.waitForLog(/data goes over UDP to 172\.30\.1\.1:1194 \(aes-256-gcm\)/);
  assert(await net.ping(client, "10.8.0.1"), vpn.log);
  const before = await trafficBytes(client);
  await transfer(client, net.server, "10.8.0.1", 16 << 20);
  const after = await trafficBytes(client);
  assertGreater(after.udp - before.udp, 16 << 20);
  assert(after.tcp - before.tcp < 1 << 20, `TLS carried ${after.tcp - before.tcp} bytes`);
  await server.waitForLog(/alice: data over UDP from 172\.30\.1\.2:\d+/);
  assertEquals(await vpn.stop(), 0);
  await server.waitForLog(/alice .* disconnected: .* UDP \d+ bytes in, \d+ out/);
  const udpIn = Number(/UDP (\d+) bytes in/.exec(server.log)![1]);
  assertGreater(udpIn, 16 << 20, "the server counts the data it took over UDP");
});

rootTest("vpn --proto udp fails with a clear error when UDP is blocked", async () => {
  await using net = await Topology.create(1);
  await net.clients[0]!.run(["iptables", "-A", ...DROP_UDP]);
  await net.startServer();
  const vpn = net.connect(0, await net.addClient("alice"), ["--proto", "udp"]);
  assertEquals(await vpn.exited(), 1);
  assertMatch(
    vpn.log,
    /UDP to 172\.30\.1\.1:1194 got no answer within 2 s; with --proto udp the client stops/,
  );
});

rootTest("vpn auto: with UDP blocked, data goes over TLS", async () => {
  await using net = await Topology.create(1);
  const client = net.clients[0]!;
  await client.run(["iptables", "-A", ...DROP_UDP]);
  await countTraffic(client);
  await net.startServer();
  const vpn = net.connect(0, await net.addClient("alice"));
  await vpn.waitForLog(/got no answer within 2 s; data stays on TLS/);
  assert(await net.ping(client, "10.8.0.1"), vpn.log);
  const before = await trafficBytes(client);
  await transfer(client, net.server, "10.8.0.1", 4 << 20);
  const after = await trafficBytes(client);
  assertGreater(after.tcp - before.tcp, 4 << 20);
});

/** The client's UDP to and from the VPN port: both directions, so that each side's fallback counts. */
const DROP_UDP_IN = ["INPUT", "-p", "udp", "--sport", "1194", "-j", "DROP"];

rootTest(
  "vpn auto: UDP lost both ways mid-session moves both sides to TLS and comes back with the path",
  async () => {
    await using net = await Topology.create(1);
    const client = net.clients[0]!;
    await net.configure("keepalive:\n  interval: 1\n  timeout: 3\n");
    const server = await net.startServer();
    const vpn = net.connect(0, await net.addClient("alice"));
    await vpn.waitForLog(/data goes over UDP/);
    await client.run(["iptables", "-A", ...DROP_UDP]);
    await client.run(["iptables", "-A", ...DROP_UDP_IN]);
    await vpn.waitForLog(
      /no answer over UDP from 172\.30\.1\.1:1194 for 3 s; data falls back to TLS/,
    );
    await server.waitForLog(/alice: UDP silent for 3 s; its data goes over TLS/);
    assert(await net.ping(client, "10.8.0.1", 5), "the client's traffic continues over TLS");
    // From the server too: its requests, not only its replies, must now go over TLS.
    assert(await net.ping(net.server, "10.8.0.2", 5), `${server.log}\n${vpn.log}`);
    await client.run(["iptables", "-D", ...DROP_UDP]);
    await client.run(["iptables", "-D", ...DROP_UDP_IN]);
    await waitFor(
      "UDP again",
      () => (vpn.log.match(/data goes over UDP/g)?.length ?? 0) >= 2 || undefined,
    );
    await countTraffic(client);
    assert(await net.ping(client, "10.8.0.1", 5));
    const { udp } = await trafficBytes(client);
    assertGreater(udp, 5 * 84);
    assertMatch(server.log, /alice connected/);
    assert(!server.log.includes("disconnected"), "the session was never dropped");
  },
);

rootTest("vpn: a replayed datagram and a tampered one are dropped and counted", async () => {
  await using net = await Topology.create(1);
  const client = net.clients[0]!;
  const server = await net.startServer();
  const vpn = net.connect(0, await net.addClient("alice"), ["--proto", "udp"]);
  await vpn.waitForLog(/data goes over UDP/);
  const pcap = `${net.dir}/capture.pcap`;
  const capture = net.spawnCommand(client, [
    "tcpdump",
    "-i",
    "any",
    "-c",
    "1",
    "-w",
    pcap,
    "udp and dst port 1194 and greater 200",
  ]);
  // tcpdump says so on stderr once its capture is open: packets sent after that are seen.
  await capture.waitForLog(/listening on/, 10_000);
  await client.run(["ping", "-c", "2", "-s", "400", "-W", "2", "10.8.0.1"]);
  assertEquals(await capture.exited(10_000), 0, `tcpdump captured nothing: ${capture.log}`);
  const payload = udpPayload(await Deno.readFile(pcap));
  // A counter far ahead passes the replay window, so authentication has to catch it (the
  // header is authenticated data); the ciphertext is flipped too.
  const tampered = payload.slice();
  tampered[7]! ^= 0x01;
  tampered[tampered.length - 20]! ^= 0x40;
  const script = `${net.dir}/replay.ts`;
  await Deno.writeTextFile(
    script,
    `const s = Deno.listenDatagram({ transport: "udp", hostname: "0.0.0.0", port: 0 });
     const to = { transport: "udp" as const, hostname: "${net.serverIp(0)}", port: 1194 };
     await s.send(Uint8Array.fromHex("${payload.toHex()}"), to);
     await s.send(Uint8Array.fromHex("${tampered.toHex()}"), to);
     s.close();`,
  );
  await client.run(denoScript(script));
  await server.waitForLog(
    /UDP: dropped 2 datagrams \(1 replayed, 1 failing authentication\), 2 in all/,
  );
  assert(await net.ping(client, "10.8.0.1"), "the session goes on");
});

/** The UDP payload of the first packet in a pcap file (link type Linux cooked v1 or v2). */
function udpPayload(pcap: Uint8Array): Uint8Array {
  const view = new DataView(pcap.buffer, pcap.byteOffset);
  const linkType = view.getUint32(20, true);
  const captured = view.getUint32(24 + 8, true);
  const frame = pcap.subarray(40, 40 + captured);
  const linkHeader = linkType === 276 ? 20 : linkType === 113 ? 16 : 14;
  const ip = frame.subarray(linkHeader);
  const ihl = (ip[0]! & 0x0f) * 4;
  return ip.subarray(ihl + 8);
}

rootTest("vpn: a rekey during a sustained ping loses nothing", async () => {
  await using net = await Topology.create(1);
  await net.configure("keepalive:\n  interval: 1\n  timeout: 5\nrekey_interval: 1\n");
  const server = await net.startServer();
  const vpn = net.connect(0, await net.addClient("alice"), ["--proto", "udp"]);
  await vpn.waitForLog(/data goes over UDP/);
  const ping = await net.clients[0]!.run(
    ["ping", "-c", "60", "-i", "0.1", "-W", "2", "10.8.0.1"],
    true,
  );
  assertMatch(ping.stdout, /60 packets transmitted, 60 received, 0% packet loss/);
  await server.waitForLog(/alice: UDP keys of epoch 3 in use/);
});

rootTest("vpn: the client's UDP source port changing mid-session keeps the session", async () => {
  await using net = await Topology.create(1);
  const client = net.clients[0]!;
  const server = await net.startServer();
  const vpn = net.connect(0, await net.addClient("alice"), ["--proto", "udp"]);
  await vpn.waitForLog(/data goes over UDP/);
  assert(await net.ping(client, "10.8.0.1"));
  // A NAT in front of the client starts mapping its datagrams to another port.
  await client.run([
    "iptables",
    "-t",
    "nat",
    "-A",
    "POSTROUTING",
    "-p",
    "udp",
    "--dport",
    "1194",
    "-j",
    "SNAT",
    "--to-source",
    "172.30.1.2:40000",
  ]);
  await client.run(["conntrack", "-F"]);
  assert(await net.ping(client, "10.8.0.1", 5), vpn.log);
  await server.waitForLog(/alice: UDP address changed to 172\.30\.1\.2:40000/);
  assert(!server.log.includes("disconnected"), server.log);
});

rootTest("vpn without libcrypto warns and carries data over TLS", async () => {
  await using net = await Topology.create(2);
  const server = await net.startServer([], withoutLibcrypto());
  assertMatch(server.log, /no UDP data channel without libcrypto \(.*\); clients use TLS only/);
  assertMatch(server.log, /listening on 0\.0\.0\.0:1194 \(TLS\)/);
  const auto = net.connect(0, await net.addClient("alice"));
  await auto.waitForLog(/the server refused UDP: no UDP data channel without libcrypto/);
  assert(await net.ping(net.clients[0]!, "10.8.0.1"), auto.log);
  await server.stop();

  // And a client without libcrypto, against a server with it.
  const full = await net.startServer();
  const bare = net.connect(1, await net.addClient("bob"), [], withoutLibcrypto());
  await bare.waitForLog(/no UDP data channel without libcrypto .*; data stays on TLS/);
  assert(await net.ping(net.clients[1]!, "10.8.0.1"), bare.log);
  assert(!/bob: data over UDP/.test(full.log), full.log);
});

rootTest(
  "vpn --cipher chacha20-poly1305: the UDP data channel uses ChaCha20-Poly1305",
  async () => {
    await using net = await Topology.create(1);
    await net.startServer();
    const vpn = net.connect(0, await net.addClient("alice"), [
      "--proto",
      "udp",
      "--cipher",
      "chacha20-poly1305",
    ]);
    await vpn.waitForLog(/data goes over UDP to 172\.30\.1\.1:1194 \(chacha20-poly1305\)/);
    await transfer(net.clients[0]!, net.server, "10.8.0.1", 8 << 20);
  },
);

rootTest("vpn with listen.udp: false keeps every client on TLS and says why", async () => {
  await using net = await Topology.create(1);
  const client = net.clients[0]!;
  // OpenVPN over UDP would open the port again (mod/server.ts).
  await net.configure("listen:\n  udp: false\nopenvpn:\n  udp: false\n  tcp: false\n");
  const server = await net.startServer();
  assertMatch(server.log, /listening on 0\.0\.0\.0:1194 \(TLS\)/);
  const vpn = net.connect(0, await net.addClient("alice"));
  await vpn.waitForLog(
    /the server refused UDP: UDP is off on this server \(listen\.udp: false\); data stays on TLS/,
  );
  const ping = await client.run(["ping", "-c", "1", "-W", "1", "10.8.0.1"], true);
  assertEquals(ping.code, 0, "the tunnel works over TLS");
  const strict = net.connect(0, net.dir + "/alice.yaml", ["--proto", "udp", "--dev", "vpnx%d"]);
  assertEquals(await strict.exited(), 1);
  assertMatch(strict.log, /the server refused UDP: UDP is off on this server/);
});
