/**
 * A multi-homed server, end to end: `vpn serve` on a wildcard address ("0.0.0.0", the default,
 * or "::") whose clients dial an address that is not the one its route back to them prefers.
 * The server namespace has the service address on `lo` (198.51.100.1/32, 2001:db8::1/128) and
 * its link address on the veth to the client (172.30.1.1, fd00:30:1::1); the client routes the
 * service address via the link. Every reply over UDP must leave from the service address the
 * client sent to (IP_PKTINFO / IPV6_PKTINFO, as OpenVPN's `--multihome`): a stock OpenVPN
 * client drops any other ("Incoming packet rejected from ..."), and iptables counters in the
 * client namespace show which source each reply had. Every wait is bounded; the namespaces go
 * with the topology.
 */

import { assert, assertEquals } from "./_assert.ts";
import type { Netns } from "./_netns.ts";
import { rootTest } from "./_netns.ts";
import {
  alongside,
  mergeServerConfig,
  OPENVPN_UDP_PORT,
  startOpenVpn,
  waitForTunnel,
} from "./_openvpn.ts";
import { Topology } from "./_vpn.ts";

/** One address family's layout. */
interface Layout {
  /** How test names call it. */
  name: string;
  family: 4 | 6;
  /** The service address, on the server's `lo`, that clients dial. */
  service: string;
  /** Its prefix on `lo`. */
  prefix: number;
  /** `listen.host`. */
  listen: string;
  /** The server's address on the link: where the kernel's route would send replies from. */
  link: (net: Topology) => string;
  /** How a remote of this family is written: `HOST:PORT` or `[HOST]:PORT`. */
  remote: string;
}

const LAYOUTS: Layout[] = [
  {
    name: "ipv4",
    family: 4,
    service: "198.51.100.1",
    prefix: 32,
    listen: "0.0.0.0",
    link: (net) => net.serverIp(0),
    remote: `198.51.100.1:${OPENVPN_UDP_PORT}`,
  },
  // A dual-stack socket reports an IPv4 datagram's address v4-mapped, and replies with it.
  {
    name: 'ipv4 on "::"',
    family: 4,
    service: "198.51.100.1",
    prefix: 32,
    listen: "::",
    link: (net) => net.serverIp(0),
    remote: `198.51.100.1:${OPENVPN_UDP_PORT}`,
  },
  {
    name: "ipv6",
    family: 6,
    service: "2001:db8::1",
    prefix: 128,
    listen: "::",
    link: (net) => net.serverIp6(0),
    remote: `[2001:db8::1]:${OPENVPN_UDP_PORT}`,
  },
];

/** A topology of one client whose server also has `layout.service`, on `lo`. */
async function multihomed(layout: Layout): Promise<Topology> {
  const net = await Topology.create(1, ["--host", layout.service], { ipv6: layout.family === 6 });
  try {
    const ip = layout.family === 6 ? ["ip", "-6"] : ["ip"];
    await net.server.run([...ip, "addr", "add", `${layout.service}/${layout.prefix}`, "dev", "lo"]);
    const via = layout.link(net);
    await net.clients[0]!.run(
      layout.family === 6
        ? ["ip", "-6", "route", "add", `${layout.service}/128`, "via", via]
        : ["ip", "route", "add", "default", "via", via],
    );
    await mergeServerConfig(net, { "listen.host": layout.listen });
    await countReplies(net.clients[0]!, layout, [layout.service, via]);
    return net;
  } catch (error) {
    await net[Symbol.asyncDispose]();
    throw error;
  }
}

/** Counting rules (no target) for UDP from the server's port, one per source address. */
async function countReplies(ns: Netns, layout: Layout, sources: string[]): Promise<void> {
  const tables = layout.family === 6 ? "ip6tables" : "iptables";
  for (const source of sources) {
    const port = String(OPENVPN_UDP_PORT);
    await ns.run([tables, "-A", "INPUT", "-p", "udp", "-s", source, "--sport", port]);
  }
}

/** The UDP packets from the server's port that reached the client from `source`. */
async function repliesFrom(ns: Netns, layout: Layout, source: string): Promise<number> {
  const tables = layout.family === 6 ? "ip6tables" : "iptables";
  const { stdout } = await ns.run([tables, "-L", "INPUT", "-v", "-x", "-n"]);
  // ip6tables may print the source with its /128.
  const line = stdout.split("\n").find((l) => {
    const fields = l.trim().split(/\s+/);
    return (fields.includes(source) || fields.includes(`${source}/128`)) &&
      l.trimEnd().endsWith(`udp spt:${OPENVPN_UDP_PORT}`);
  });
  if (line === undefined) throw new Error(`no counting rule for ${source} in:\n${stdout}`);
  return Number(line.trim().split(/\s+/)[0]);
}

/** Every reply came from the service address; none from the link address. */
async function assertRepliesFromService(net: Topology, layout: Layout, log: string) {
  const ns = net.clients[0]!;
  const fromLink = await repliesFrom(ns, layout, layout.link(net));
  const fromService = await repliesFrom(ns, layout, layout.service);
  assertEquals(fromLink, 0, `replies from the link address ${layout.link(net)}:\n${log}`);
  assert(fromService > 0, `no reply from ${layout.service}:\n${log}`);
}

for (const layout of LAYOUTS) {
  rootTest(
    `multihome ${layout.name}: a stock openvpn client over UDP to ${layout.service} on lo gets a tunnel, every reply from ${layout.service}`,
    async () => {
      await using net = await multihomed(layout);
      const profile = `${net.dir}/alice.ovpn`;
      await net.vpn([
        "client",
        "add",
        "alice",
        "--format",
        "ovpn",
        "--proto",
        "udp",
        "--remote",
        layout.remote,
        "--dir",
        net.dir,
        "--out",
        profile,
      ]);
      const server = await net.startServer();
      const client = startOpenVpn(net, 0, profile);
      await waitForTunnel(client, server);
      await net.waitForAddress(net.clients[0]!, "10.8.0.2");
      assert(await net.ping(net.clients[0]!, "10.8.0.1"), `${client.log}\n${server.log}`);
      assert(await net.ping(net.server, "10.8.0.2"), `${client.log}\n${server.log}`);
      assert(!/Incoming packet rejected/.test(client.log), client.log);
      await assertRepliesFromService(net, layout, `${client.log}\n${server.log}`);
    },
  );

  rootTest(
    `multihome ${layout.name}: vpn connect ${layout.remote} --proto udp sends its data over UDP, every reply from ${layout.service}`,
    async () => {
      await using net = await multihomed(layout);
      const server = await net.startServer();
      const client = net.spawn(net.clients[0]!, [
        "connect",
        layout.remote,
        "--profile",
        await net.addClient("bob"),
        "--proto",
        "udp",
        "-v",
      ]);
      await alongside(alongside(net.waitForAddress(net.clients[0]!, "10.8.0.2"), client), server);
      const remote = layout.remote.replace(/[.[\]]/g, "\\$&");
      await alongside(client.waitForLog(new RegExp(`data goes over UDP to ${remote}`)), server);
      await server.waitForLog(/bob: data over UDP from /);
      assert(await net.ping(net.clients[0]!, "10.8.0.1"), `${client.log}\n${server.log}`);
      assert(await net.ping(net.server, "10.8.0.2"), `${client.log}\n${server.log}`);
      assert(!/data falls back to TLS/.test(client.log), client.log);
      await assertRepliesFromService(net, layout, `${client.log}\n${server.log}`);
    },
  );
}
