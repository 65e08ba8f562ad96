/**
 * Remote access end to end (issue 11): a full tunnel through a `nat: true` server to a namespace
 * that stands for the internet, pushed DNS and IPv6, for a stock OpenVPN client and for `vpn
 * connect`; a client with a fixed address and a network behind it, reached from the server and,
 * with `client_to_client`, from another client. Real namespaces, real TUNs, real `openvpn`.
 */

import { assert, assertEquals, assertMatch } from "./_assert.ts";
import { Netns, rootTest, transfer, veth } from "./_netns.ts";
import { addOvpnClient, mergeServerConfig, startOpenVpn, waitForTunnel } from "./_openvpn.ts";
import { Topology, type VpnProcess } from "./_vpn.ts";

/** The "internet": a namespace behind the server with no route back to the VPN or the clients. */
const INTERNET = "203.0.113.2";
/**
 * The server's public address, on its loopback link: the client reaches it through its
 * default gateway (the server's veth address), so a full tunnel needs a host route to it.
 */
const PUBLIC = "198.51.100.1";
const SUBNET6 = "fd00:77::/64";

interface FullTunnel {
  net: Topology;
  internet: Netns;
}

/** One client namespace whose default route is the server, and an internet behind the server. */
async function fullTunnelTopology(): Promise<FullTunnel & AsyncDisposable> {
  const net = await Topology.create(1, ["--host", PUBLIC]);
  const internet = await Netns.create("inet");
  try {
    await veth(net.server, "203.0.113.1/24", internet, `${INTERNET}/24`);
    await net.server.run(["ip", "addr", "add", `${PUBLIC}/32`, "dev", "lo"]);
    await net.clients[0]!.run(["ip", "route", "add", "default", "via", net.serverIp(0)]);
    await mergeServerConfig(net, {
      nat: true,
      subnet6: SUBNET6,
      "push.redirect_gateway": true,
      "push.dns": { servers: ["10.8.0.1"], domains: ["corp.example"] },
    });
  } catch (error) {
    await internet[Symbol.asyncDispose]();
    await net[Symbol.asyncDispose]();
    throw error;
  }
  return {
    net,
    internet,
    async [Symbol.asyncDispose]() {
      await internet[Symbol.asyncDispose]();
      await net[Symbol.asyncDispose]();
    },
  };
}

/** `ip route` of a namespace, IPv4 or IPv6, as "DEST dev DEV" lines. */
async function routes(ns: Netns, family: 4 | 6): Promise<string[]> {
  const out = (await ns.run(["ip", `-${family}`, "-j", "route", "show"])).stdout;
  return (JSON.parse(out) as { dst: string; dev: string; gateway?: string }[])
    .map((r) => `${r.dst}${r.gateway ? ` via ${r.gateway}` : ""} dev ${r.dev}`);
}

/** The client's veth: the one link of the namespace besides lo. */
async function link(ns: Netns): Promise<string> {
  const out = (await ns.run(["ip", "-j", "link", "show", "type", "veth"])).stdout;
  return (JSON.parse(out) as { ifname: string }[])[0]!.ifname;
}

async function forwarding(ns: Netns): Promise<string> {
  return (await ns.run(["cat", "/proc/sys/net/ipv4/ip_forward"])).stdout.trim();
}

/**
 * Checks what the full tunnel gives a client on TUN `tun`: routes (`v6Halves`, the IPv6 routes
 * that stand for a default one), NAT to the internet, IPv6.
 */
async function assertFullTunnel(
  { net, internet }: FullTunnel,
  tun: string,
  client: VpnProcess,
  v6Halves: string[],
): Promise<void> {
  const ns = net.clients[0]!;
  const v4 = await routes(ns, 4);
  for (const half of ["0.0.0.0/1", "128.0.0.0/1"]) {
    assert(v4.some((r) => r.startsWith(half) && r.endsWith(`dev ${tun}`)), v4.join("\n"));
  }
  const v6 = await routes(ns, 6);
  for (const half of v6Halves) {
    assert(v6.some((r) => r.startsWith(half) && r.endsWith(`dev ${tun}`)), v6.join("\n"));
  }
  assertEquals(await forwarding(net.server), "1");
  // Only masquerading makes this work: the internet has no route to 10.8.0.0/24.
  assert(await net.ping(ns, INTERNET), client.log);
  assert(await net.ping(internet, "203.0.113.1"), "the internet side is up");
  // IPv6 inside the tunnel: ping6 and a TCPv6 transfer to the server's tunnel address.
  const ping6 = await ns.run(["ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", "fd00:77::1"], true);
  assertMatch(ping6.stdout, / 3 received/, client.log);
  await transfer(ns, net.server, "fd00:77::1", 4 << 20);
}

rootTest(
  "full tunnel: a stock OpenVPN client sends all traffic through a nat: true server, gets DNS and IPv6, and everything goes at exit",
  async () => {
    await using topology = await fullTunnelTopology();
    const { net } = topology;
    const ns = net.clients[0]!;
    assert(!await net.ping(ns, INTERNET, 1), "the internet is reachable without the tunnel");
    const before = await routes(ns, 4);
    const server = await net.startServer();
    const envFile = `${net.dir}/openvpn-env`;
    const upScript = `${net.dir}/up.sh`;
    await Deno.writeTextFile(upScript, `#!/bin/sh\nenv > ${envFile}\n`, { mode: 0o755 });
    const profile = `${net.dir}/olivia.ovpn`;
    await net.vpn([
      "client",
      "add",
      "olivia",
      "--format",
      "ovpn",
      "--remote",
      `${PUBLIC}:1194`,
      "--dir",
      net.dir,
      "--out",
      profile,
    ]);
    const client = startOpenVpn(net, 0, profile, {
      extra: ["--script-security", "2", "--up", upScript],
    });
    await waitForTunnel(client, server);
    const tun = await net.waitForAddress(ns, "10.8.0.2");
    const env = await Deno.readTextFile(envFile);
    assertMatch(env, /foreign_option_\d+=dhcp-option DNS 10\.8\.0\.1/);
    assertMatch(env, /foreign_option_\d+=dhcp-option DOMAIN corp\.example/);
    assertMatch(env, /ifconfig_ipv6_local=fd00:77::2/);
    // A 2.6 client announces the `dns` option and gets it too.
    assertMatch(client.log, /dns server 0 address 10\.8\.0\.1/);
    assert(
      (await routes(ns, 4)).includes(`${PUBLIC} via ${net.serverIp(0)} dev ${await link(ns)}`),
    );
    // OpenVPN 2.6's `redirect-gateway ipv6` routes the global unicast space and the ULAs.
    await assertFullTunnel(topology, tun, client, ["2000::/4", "3000::/4", "fc00::/7"]);
    assertEquals(await client.stop(), 0);
    assertEquals(await routes(ns, 4), before, "the client's routes are as before");
    assert(!await net.ping(ns, INTERNET, 1), "the internet is out of reach again");
    assertEquals(await server.stop(), 0);
    assertEquals(await forwarding(net.server), "0", "forwarding is off again");
  },
);

rootTest(
  "full tunnel: vpn connect sends all traffic through a nat: true server with IPv6, and its routes and DNS go at SIGTERM",
  async () => {
    await using topology = await fullTunnelTopology();
    const { net } = topology;
    const ns = net.clients[0]!;
    const resolvConf = `/etc/netns/${ns.name}/resolv.conf`;
    await Deno.mkdir(`/etc/netns/${ns.name}`, { recursive: true });
    try {
      await Deno.writeTextFile(resolvConf, "nameserver 192.0.2.53\n");
      const before = await routes(ns, 4);
      const server = await net.startServer();
      const client = net.spawn(ns, [
        "connect",
        `${PUBLIC}:1194`,
        "--profile",
        await net.addClient("victor"),
      ], ["env", `VPN_STATE_DIR=${net.dir}/state`]);
      await client.waitForLog(/connected: /);
      const tun = await net.waitForAddress(ns, "10.8.0.2");
      const hostRoute = `${PUBLIC} via ${net.serverIp(0)} dev ${await link(ns)}`;
      assert((await routes(ns, 4)).includes(hostRoute), (await routes(ns, 4)).join("\n"));
      const dns = await ns.run(["cat", "/etc/resolv.conf"]);
      assertMatch(dns.stdout, /nameserver 10\.8\.0\.1/);
      assertMatch(dns.stdout, /search corp\.example/);
      await assertFullTunnel(topology, tun, client, ["::/1", "8000::/1"]);
      assertEquals(await client.stop(), 0);
      assertEquals(await routes(ns, 4), before, "the host route is gone, the TUN's with it");
      assertEquals(await Deno.readTextFile(resolvConf), "nameserver 192.0.2.53\n");
      assertEquals(await server.stop(), 0);
      assertEquals(await forwarding(net.server), "0");
    } finally {
      await Deno.remove(`/etc/netns/${ns.name}`, { recursive: true });
    }
  },
);

rootTest(
  "sites: a client with a fixed address and a network behind it is reached from the server and, with client_to_client, from another client",
  async () => {
    await using net = await Topology.create(2);
    await mergeServerConfig(net, { client_to_client: true, subnet6: SUBNET6 });
    const branch = await net.addClient("branch");
    const laptop = await addOvpnClient(net, "laptop", "udp", 1);
    await net.vpn([
      "client",
      "set",
      "branch",
      "--address",
      "10.8.0.50",
      "--route",
      "192.168.60.0/24",
      "--dir",
      net.dir,
    ]);
    const listing = (await net.vpn(["client", "list", "--dir", net.dir])).stdout;
    assertMatch(listing, /branch.*10\.8\.0\.50.*192\.168\.60\.0\/24/);
    // The network behind the branch client: an address of its own host.
    const site = net.clients[0]!;
    await site.run(["ip", "addr", "add", "192.168.60.1/32", "dev", "lo"]);
    const server = await net.startServer();
    const branchClient = net.connect(0, branch);
    await net.waitForAddress(site, "10.8.0.50");
    await server.waitForLog(/route 192\.168\.60\.0\/24 dev \S+: a network behind a client/);
    assert(await net.ping(net.server, "192.168.60.1"), `${server.log}\n${branchClient.log}`);
    const other = startOpenVpn(net, 1, laptop);
    await waitForTunnel(other, server);
    await net.waitForAddress(net.clients[1]!, "10.8.0.2");
    assertMatch(other.log, /route 192\.168\.60\.0 255\.255\.255\.0/);
    assert(await net.ping(net.clients[1]!, "192.168.60.1"), other.log);
    // The fixed address stays the branch's: the next client gets .3, not .50.
  },
);

rootTest(
  "client set: a running server applies a new fixed address at the client's next connection, and says so",
  async () => {
    await using net = await Topology.create(1);
    const profile = await net.addClient("dana");
    const server = await net.startServer();
    const first = net.connect(0, profile);
    await net.waitForAddress(net.clients[0]!, "10.8.0.2");
    await net.vpn(["client", "set", "dana", "--address", "10.8.0.77", "--dir", net.dir]);
    await server.waitForLog(/dana: its settings changed in the registry; they apply at its next/);
    assertEquals(await first.stop(), 0);
    const second = net.connect(0, profile);
    await net.waitForAddress(net.clients[0]!, "10.8.0.77");
    await server.waitForLog(/dana: new settings from the registry applied: address 10\.8\.0\.77/);
    assert(await net.ping(net.clients[0]!, "10.8.0.1"), second.log);
  },
);
