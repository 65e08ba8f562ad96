/**
 * IPv6 as the transport, end to end: a server with `listen.host: "::"` takes clients over IPv6
 * and IPv4 at once, on every transport it has: our protocol with its data over UDP datagrams
 * and over TLS, and stock OpenVPN 2.6 clients over UDP and TCP whose profile's remote is the
 * server's IPv6 address. Namespaces joined by veth pairs with both families on each link
 * (tests/_vpn.ts, `ipv6`); every wait is bounded.
 */

import { assert, assertMatch } from "./_assert.ts";
import { rootTest, transfer } from "./_netns.ts";
import { alongside, mergeServerConfig, ovpnPort, startOpenVpn, waitForTunnel } from "./_openvpn.ts";
import { Topology } from "./_vpn.ts";

/** Bytes moved each way over the IPv6 path. */
const BULK = 8 << 20;

/** `[v6]:port`, as profiles and the command line write an IPv6 server. */
function bracketed(address: string, port: number): string {
  return `[${address}]:${port}`;
}

/** A regular expression matching `text` literally. */
function literal(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

// bindv6only 1: a socket on "::" that sets no IPV6_V6ONLY of its own takes IPv6 only.
for (const bindv6only of [0, 1]) {
  rootTest(
    `ipv6 transport: listen.host "::" (bindv6only ${bindv6only}) serves our clients over [v6] with UDP and with TLS, and one over IPv4, each with a tunnel`,
    async () => {
      await using net = await Topology.create(3, [], { ipv6: true });
      await mergeServerConfig(net, { "listen.host": "::" });
      await net.server.run(["sysctl", "-qw", `net.ipv6.bindv6only=${bindv6only}`]);
      const server = await net.startServer();
      const runs = [
        { proto: "udp", remote: bracketed(net.serverIp6(0), 1194), from: "[fd00:30:1::2]" },
        { proto: "tcp", remote: bracketed(net.serverIp6(1), 1194), from: "[fd00:30:2::2]" },
        { proto: "udp", remote: `${net.serverIp(2)}:1194`, from: "172.30.3.2" },
      ];
      const clients = [];
      for (const [i, { proto, remote }] of runs.entries()) {
        const profile = await net.addClient(`c${i}`);
        clients.push(net.spawn(net.clients[i]!, [
          "connect",
          remote,
          "--profile",
          profile,
          "--proto",
          proto,
          "-v",
        ]));
      }
      for (const [i, { proto, from }] of runs.entries()) {
        const client = clients[i]!;
        const address = `10.8.0.${i + 2}`;
        await alongside(alongside(net.waitForAddress(net.clients[i]!, address), client), server);
        // The peer as it dialled: IPv6 in brackets, IPv4 plain (not v4-mapped "::ffff:").
        await server.waitForLog(
          new RegExp(`c${i} connected from ${literal(from)}:\\d+, address ${literal(address)}`),
        );
        if (proto === "udp") {
          await client.waitForLog(
            new RegExp(`data goes over UDP to ${literal(runs[i]!.remote)}`),
          );
          await server.waitForLog(new RegExp(`c${i}: data over UDP from ${literal(from)}:\\d+`));
        }
        assert(await net.ping(net.clients[i]!, "10.8.0.1"), `${client.log}\n${server.log}`);
        assert(await net.ping(net.server, address), `${client.log}\n${server.log}`);
      }
      // Full-size packets as datagrams over IPv6, whose header is 20 bytes longer than IPv4's.
      await transfer(net.clients[0]!, net.server, "10.8.0.1", BULK);
      await transfer(net.server, net.clients[0]!, "10.8.0.2", BULK);
      assert(!/::ffff:/i.test(server.log), server.log);
    },
  );
}

for (const [proto, bindv6only] of [["udp", 0], ["tcp", 0], ["udp", 1], ["tcp", 1]] as const) {
  rootTest(
    `ipv6 transport: a "::" server (bindv6only ${bindv6only}) gives stock OpenVPN clients over ${proto} a tunnel, one with "remote <IPv6> PORT", one over IPv4`,
    async () => {
      await using net = await Topology.create(2, [], { ipv6: true });
      await mergeServerConfig(net, { "listen.host": "::" });
      await net.server.run(["sysctl", "-qw", `net.ipv6.bindv6only=${bindv6only}`]);
      const server = await net.startServer();
      const remotes = [
        bracketed(net.serverIp6(0), ovpnPort(proto)),
        `${net.serverIp(1)}:${ovpnPort(proto)}`,
      ];
      const froms = ["[fd00:30:1::2]", "172.30.2.2"];
      const openvpns = [];
      for (const [i, remote] of remotes.entries()) {
        const out = `${net.dir}/o${i}.ovpn`;
        await net.vpn([
          "client",
          "add",
          `o${i}`,
          "--format",
          "ovpn",
          "--proto",
          proto,
          "--remote",
          remote,
          "--dir",
          net.dir,
          "--out",
          out,
        ]);
        if (i === 0) {
          // OpenVPN takes an IPv6 remote bare, and picks the family from the address.
          assertMatch(
            await Deno.readTextFile(out),
            new RegExp(`^remote ${net.serverIp6(0)} ${ovpnPort(proto)}$`, "m"),
          );
        }
        openvpns.push(startOpenVpn(net, i, out));
      }
      for (const [i, client] of openvpns.entries()) {
        await waitForTunnel(client, server);
        const address = `10.8.0.${i + 2}`;
        await net.waitForAddress(net.clients[i]!, address);
        await server.waitForLog(
          new RegExp(`o${i} connected from ${literal(froms[i]!)}:\\d+ over openvpn/${proto}, `),
        );
        assert(await net.ping(net.clients[i]!, "10.8.0.1"), `${client.log}\n${server.log}`);
        assert(await net.ping(net.server, address), `${client.log}\n${server.log}`);
      }
      // Full-size packets over the IPv6 path, whose header is 20 bytes longer than IPv4's.
      await transfer(net.clients[0]!, net.server, "10.8.0.1", BULK);
      await transfer(net.server, net.clients[0]!, "10.8.0.2", BULK);
      assert(!/::ffff:/i.test(server.log), server.log);
    },
  );
}
