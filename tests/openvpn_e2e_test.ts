/**
 * Stock OpenVPN 2.6 clients against `vpn serve`, end to end: `openvpn --config NAME.ovpn` with a
 * profile from `vpn client add --format ovpn`, in namespaces joined by veth pairs
 * (tests/_vpn.ts), over UDP on 1194 and TCP on 1195. Every wait is bounded; every `openvpn`
 * is killed when its topology is disposed.
 */

import { assert, assertEquals, assertMatch } from "./_assert.ts";
import { type Netns, rootTest, run, transfer } from "./_netns.ts";
import {
  addOvpnClient,
  alongside,
  countUdp,
  inlineBlock,
  mergeServerConfig,
  occurrences,
  OPENVPN_UDP_PORT,
  type OvpnProto,
  replaceBlock,
  startOpenVpn,
  TUNNEL_UP,
  udpPackets,
  waitForTunnel,
  writeProfile,
} from "./_openvpn.ts";
import { Topology, type VpnProcess, waitFor } from "./_vpn.ts";

/** Bytes moved each way by the bulk transfers. */
const BULK = 20 << 20;

for (const proto of ["udp", "tcp"] as const satisfies OvpnProto[]) {
  rootTest(
    `openvpn ${proto}: a stock client gets 10.8.0.2, pings both ways and moves 20 MB each way intact`,
    async () => {
      await using net = await Topology.create(1);
      const server = await net.startServer();
      const client = startOpenVpn(net, 0, await addOvpnClient(net, "alice", proto));
      await waitForTunnel(client, server);
      await net.waitForAddress(net.clients[0]!, "10.8.0.2");
      await server.waitForLog(
        new RegExp(
          `alice connected from 172\\.30\\.1\\.2:\\d+ over openvpn/${proto}, ` +
            `cipher AES-256-GCM, address 10\\.8\\.0\\.2(, fd[0-9a-f:]+::2)?; client 2\\.6\\.\\d+ on linux`,
        ),
      );
      assert(await net.ping(net.clients[0]!, "10.8.0.1"), client.log);
      assert(await net.ping(net.server, "10.8.0.2"), server.log);
      await transfer(net.clients[0]!, net.server, "10.8.0.1", BULK);
      await transfer(net.server, net.clients[0]!, "10.8.0.2", BULK);
      assert(await net.ping(net.clients[0]!, "10.8.0.1"), "the tunnel is still up");
    },
  );
}

rootTest(
  "openvpn: a stock client and a vpn connect client share the pool and, with client_to_client, ping each other",
  async () => {
    await using net = await Topology.create(2);
    await mergeServerConfig(net, { client_to_client: true });
    const server = await net.startServer();
    const alice = startOpenVpn(net, 0, await addOvpnClient(net, "alice"));
    await waitForTunnel(alice, server);
    await net.waitForAddress(net.clients[0]!, "10.8.0.2");
    const bob = net.connect(1, await net.addClient("bob"));
    await net.waitForAddress(net.clients[1]!, "10.8.0.3");
    await server.waitForLog(/alice connected from .* over openvpn\/udp, .*address 10\.8\.0\.2/);
    await server.waitForLog(/bob connected from 172\.30\.2\.2:\d+, address 10\.8\.0\.3/);
    assert(await net.ping(net.clients[0]!, "10.8.0.3"), `${alice.log}\n${server.log}`);
    assert(await net.ping(net.clients[1]!, "10.8.0.2"), `${bob.log}\n${server.log}`);
  },
);

rootTest(
  "openvpn: a revoked stock client is dropped within 5 s with AUTH_FAILED and refused when it comes back",
  async () => {
    await using net = await Topology.create(1);
    const server = await net.startServer();
    const profile = await addOvpnClient(net, "mallory");
    const first = startOpenVpn(net, 0, profile);
    await waitForTunnel(first, server);
    // Both the drop and the client's AUTH_FAILED within 5 s of the command's start.
    const deadline = performance.now() + 5000;
    const left = () => Math.max(0, deadline - performance.now());
    await net.vpn(["client", "revoke", "mallory", "--dir", net.dir]);
    await server.waitForLog(
      /mallory \(10\.8\.0\.2, [^)]*\) disconnected: certificate revoked/,
      left(),
    );
    await alongside(first.waitForLog(/AUTH_FAILED/, left()), server);
    // AUTH_FAILED stops a stock client (no auth-retry in the profile) instead of reconnecting.
    await first.exited(10_000);
    const again = startOpenVpn(net, 0, profile);
    await alongside(again.waitForLog(/AUTH_FAILED/, 20_000), server);
    await again.exited(10_000);
    assert(!TUNNEL_UP.test(again.log), again.log);
    await server.waitForLog(/refused 172\.30\.1\.2:\d+: revoked: openvpn\/udp: .*revoked/);
    assertEquals(occurrences(server.log, /mallory connected/g), 1, server.log);
  },
);

rootTest(
  "openvpn: a stock client whose certificate comes from another CA is refused and gets no address",
  async () => {
    await using net = await Topology.create(1);
    await using other = await Topology.create(0);
    const server = await net.startServer();
    const foreign = await Deno.readTextFile(await addOvpnClient(other, "stranger"));
    // Our CA and tls-crypt key: the client trusts our server and gets past tls-crypt, so the
    // refusal can only come from the server's check of the client certificate.
    const mixed = replaceBlock(
      replaceBlock(foreign, "ca", await Deno.readTextFile(`${net.dir}/ca.crt`)),
      "tls-crypt",
      await Deno.readTextFile(`${net.dir}/tls-crypt.key`),
    );
    const client = startOpenVpn(net, 0, await writeProfile(`${net.dir}/mixed.ovpn`, mixed));
    await server.waitForLog(
      /refused 172\.30\.1\.2:\d+: tls: openvpn\/udp: TLS failed: .*certificate verify failed/,
    );
    // Time for a tunnel to come up, had the server let it through.
    await new Promise((resolve) => setTimeout(resolve, 2000));
    assert(/VERIFY OK: depth=0/.test(client.log), `it reached TLS: ${client.log}`);
    assert(!TUNNEL_UP.test(client.log), client.log);
    assert(!/stranger connected/.test(server.log), server.log);
    assertEquals(await tunAddresses(net.clients[0]!), [], "the client got no address");
  },
);

rootTest(
  "openvpn: a stock client with a wrong tls-crypt key gets no answer and never reaches TLS",
  async () => {
    await using net = await Topology.create(1);
    const ns = net.clients[0]!;
    const server = await net.startServer();
    const profile = await Deno.readTextFile(await addOvpnClient(net, "eve"));
    const keyFile = `${net.dir}/wrong-tls-crypt.key`;
    await run(["openvpn", "--genkey", "secret", keyFile]);
    const wrongKey = await Deno.readTextFile(keyFile);
    assert(wrongKey.trim() !== inlineBlock(profile, "tls-crypt"), "a different key");
    const path = await writeProfile(
      `${net.dir}/wrong.ovpn`,
      replaceBlock(profile, "tls-crypt", wrongKey),
    );
    await countUdp(ns, OPENVPN_UDP_PORT);
    const client = startOpenVpn(net, 0, path);
    // The stock client resends its HARD_RESET after 2 s: two packets sent, then a second more
    // for any answer to arrive.
    await waitFor("the client's second HARD_RESET", async () => {
      return (await udpPackets(ns, OPENVPN_UDP_PORT)).sent >= 2 || undefined;
    });
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const packets = await udpPackets(ns, OPENVPN_UDP_PORT);
    assertEquals(packets.received, 0, `the server answered: ${server.log}`);
    assert(!/Initial packet from/.test(client.log), client.log);
    assert(!TUNNEL_UP.test(client.log), client.log);
    // A packet that got past tls-crypt would start a session: a refusal, a TLS failure or a
    // connection in the log (it runs with -v), on any line but the first.
    const after = server.log.split("\n").filter((line) => !/listening on/.test(line));
    assert(!after.some((line) => /refused|TLS|connected|eve/.test(line)), server.log);
  },
);

/** IPv4 addresses on the TUN devices of `ns`. */
async function tunAddresses(ns: Netns): Promise<string[]> {
  const links = JSON.parse((await ns.run(["ip", "-j", "-4", "addr", "show"])).stdout) as {
    ifname: string;
    addr_info: { local: string }[];
  }[];
  return links.filter((l) => l.ifname.startsWith("tun")).flatMap((l) =>
    l.addr_info.map((a) => a.local)
  );
}

/** Pings 10.8.0.1 every 0.2 s, 100 times (20 s); ping's output. */
async function pingStream(ns: Netns): Promise<string> {
  const ping = ["ping", "-i", "0.2", "-c", "100", "-W", "2", "10.8.0.1"];
  return (await ns.run(ping, true, 40_000)).stdout;
}

/**
 * A UDP and a TCP stock client ping the server for 20 s while renegotiations happen every 6 s;
 * neither loses a ping, and the server renegotiates each at least twice.
 */
async function renegotiationTest(
  configure: (net: Topology) => Promise<void>,
  extra: string[],
): Promise<void> {
  await using net = await Topology.create(2);
  await configure(net);
  const server = await net.startServer();
  const clients: VpnProcess[] = [];
  for (const [i, proto] of (["udp", "tcp"] as const).entries()) {
    const name = `${proto}-client`;
    clients.push(startOpenVpn(net, i, await addOvpnClient(net, name, proto, i), { extra }));
  }
  for (const client of clients) await waitForTunnel(client, server);
  const pings = await Promise.all(net.clients.map(pingStream));
  for (const [i, ping] of pings.entries()) {
    const summary = /\d+ packets transmitted.*/.exec(ping)?.[0] ?? "no summary";
    assertMatch(
      summary,
      /^100 packets transmitted, 100 received, 0% packet loss/,
      `${ping.slice(-2000)}\nserver:\n${server.log}\nclient:\n${clients[i]!.log}`,
    );
  }
  for (const proto of ["udp", "tcp"]) {
    const renegotiated = new RegExp(`${proto}-client: renegotiated, key id \\d in use`, "g");
    assert(occurrences(server.log, renegotiated) >= 2, `${proto}:\n${server.log}`);
  }
}

rootTest(
  "openvpn: server-initiated renegotiation every 6 s loses no ping (UDP and TCP)",
  async () => {
    // The server looks at key ages on its keepalive tick: every 2 s here rather than every 10.
    await renegotiationTest(
      (net) =>
        mergeServerConfig(net, {
          rekey_interval: 6,
          "keepalive.interval": 2,
          "keepalive.timeout": 30,
        }),
      [],
    );
  },
);

rootTest(
  "openvpn: client-initiated renegotiation (--reneg-sec 6) loses no ping (UDP and TCP)",
  async () => {
    await renegotiationTest(() => Promise.resolve(), ["--reneg-sec", "6"]);
  },
);

for (const proto of ["udp", "tcp"] as const satisfies OvpnProto[]) {
  rootTest(
    `openvpn ${proto}: a stock client that exits frees its address at once for the next client`,
    async () => {
      await using net = await Topology.create(1);
      // One client address: bob can have it only once alice's session has let it go.
      await mergeServerConfig(net, { subnet: "10.8.0.0/30" });
      const server = await net.startServer();
      const alice = startOpenVpn(net, 0, await addOvpnClient(net, "alice", proto), {
        dev: "tun0",
      });
      await waitForTunnel(alice, server);
      await server.waitForLog(/alice connected from .*, address 10\.8\.0\.2/);
      const stopped = performance.now();
      alice.child.kill("SIGTERM");
      // Long before keepalive's 60 s: the EXIT (UDP) or the closed connection (TCP) says so.
      await server.waitForLog(/alice \(10\.8\.0\.2, [^)]*\) disconnected: /, 2500);
      const seconds = (performance.now() - stopped) / 1000;
      await alice.exited(10_000);
      const bob = startOpenVpn(net, 0, await addOvpnClient(net, "bob", proto), { dev: "tun1" });
      await waitForTunnel(bob, server);
      await server.waitForLog(/bob connected from .*, address 10\.8\.0\.2/);
      assert(await net.ping(net.clients[0]!, "10.8.0.1"), bob.log);
      assert(seconds < 2.5, `${seconds} s`);
    },
  );
}

rootTest(
  "openvpn: after a server restart a stock client comes back by itself with its old address, which it never asks for",
  async () => {
    await using net = await Topology.create(2);
    let server = await net.startServer();
    const alice = startOpenVpn(net, 0, await addOvpnClient(net, "alice", "udp", 0));
    await waitForTunnel(alice, server);
    await server.waitForLog(/alice connected from .*, address 10\.8\.0\.2/);
    const bob = startOpenVpn(net, 1, await addOvpnClient(net, "bob", "udp", 1));
    await waitForTunnel(bob, server);
    await server.waitForLog(/bob connected from .*, address 10\.8\.0\.3/);
    alice.child.kill("SIGTERM");
    await alice.exited(10_000);
    assertEquals(await server.stop(), 0, server.log);
    // bob was told RESTART and tries again; alice stays away, so 10.8.0.2 is the lowest free.
    server = await net.startServer();
    await server.waitForLog(/bob connected from .*, address 10\.8\.0\.3/, 60_000);
    await net.waitForAddress(net.clients[1]!, "10.8.0.3");
    assert(await net.ping(net.clients[1]!, "10.8.0.1"), bob.log);
  },
);

rootTest(
  "openvpn: a server with only CHACHA20-POLY1305 gets a stock client to use it",
  async () => {
    await using net = await Topology.create(1);
    // Issued before the change: the profile's `cipher` line names AES-256-GCM, so the cipher
    // the client uses can only come from the server's choice.
    const profile = await addOvpnClient(net, "alice");
    assertMatch(await Deno.readTextFile(profile), /^cipher AES-256-GCM$/m);
    await mergeServerConfig(net, { "openvpn.ciphers": ["CHACHA20-POLY1305"] });
    const server = await net.startServer();
    const client = startOpenVpn(net, 0, profile);
    await waitForTunnel(client, server);
    assertMatch(client.log, /Data Channel: cipher 'CHACHA20-POLY1305'/);
    await server.waitForLog(
      /alice connected from .* cipher CHACHA20-POLY1305, address 10\.8\.0\.2/,
    );
    assert(await net.ping(net.clients[0]!, "10.8.0.1"), client.log);
    assert(await net.ping(net.server, "10.8.0.2"), server.log);
  },
);
