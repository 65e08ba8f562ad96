/**
 * `vpn connect` applying what `vpn serve` pushes for a full tunnel, end to end in namespaces
 * (tests/_vpn.ts): the host route to the server via the client's old gateway, the split
 * default routes (IPv4, and IPv6 with `subnet6`) on the TUN, DNS in resolv.conf
 * (/etc/netns/NS/resolv.conf, which `ip netns exec` mounts on /etc/resolv.conf), and all of it
 * gone after SIGTERM; `--no-dns` leaves resolv.conf alone; after SIGKILL, the next start
 * undoes what the killed client left.
 *
 * The server is reached at SERVER, an address of the server namespace behind the client's
 * default gateway (172.30.1.1), so that the client needs a host route to keep reaching it.
 * Each client runs with /var/lib bound to a directory of the test: its record of host changes
 * (mod/system/host_changes.ts) stays out of the host's /var/lib.
 */

import { assert, assertEquals, assertMatch } from "./_assert.ts";
import { type Netns, rootTest } from "./_netns.ts";
import { mergeServerConfig } from "./_openvpn.ts";
import { Topology, type VpnProcess, waitFor } from "./_vpn.ts";

/** The server's address the client dials: on the server namespace's loopback, not on-link. */
const SERVER = "198.18.0.1";
/** An address "on the internet": on the server namespace's loopback too, off the VPN subnet. */
const INTERNET = "192.0.2.1";
const GATEWAY = "172.30.1.1";
const SUBNET6 = "fd00:8::/64";
/** The client namespace's resolv.conf before the client runs. */
const OLD_RESOLV_CONF = "# the client's own\nnameserver 172.30.1.53\nsearch home.example\n";

/** A route as `ip -j route show` prints it. */
interface Route {
  dst: string;
  dev?: string;
  gateway?: string;
}

async function routes(ns: Netns, family: 4 | 6): Promise<Route[]> {
  return JSON.parse((await ns.run(["ip", "-j", `-${family}`, "route", "show"])).stdout);
}

/** The full-tunnel lab: server namespace addresses, the client's default route, DNS config. */
async function fullTunnel(net: Topology): Promise<{ ns: Netns; resolvConf: string }> {
  const ns = net.clients[0]!;
  for (const address of [SERVER, INTERNET]) {
    await net.server.run(["ip", "addr", "add", `${address}/32`, "dev", "lo"]);
  }
  await ns.run(["ip", "route", "add", "default", "via", GATEWAY]);
  await mergeServerConfig(net, {
    subnet6: SUBNET6,
    "push.redirect_gateway": true,
    "push.dns": { servers: ["10.8.0.1"], domains: ["corp.example"] },
  });
  // Under `ip netns exec` /etc/resolv.conf is this file (or, were the host's a symlink, the
  // file it points to is): the client writes it in place and never the host's own.
  const resolvConf = `/etc/netns/${ns.name}/resolv.conf`;
  await Deno.mkdir(`/etc/netns/${ns.name}`, { recursive: true });
  await Deno.writeTextFile(resolvConf, OLD_RESOLV_CONF);
  return { ns, resolvConf };
}

/** Removes what {@linkcode fullTunnel} put in /etc/netns, and /etc/netns if it is empty. */
async function removeResolvConf(ns: Netns): Promise<void> {
  await Deno.remove(`/etc/netns/${ns.name}`, { recursive: true }).catch(() => {});
  await Deno.remove("/etc/netns").catch(() => {/* not empty: others' namespaces */});
}

/** Starts `vpn connect SERVER` in client namespace 0 (its host record in the topology's dir). */
function connect(net: Topology, profile: string, extra: string[] = []) {
  const argv = ["connect", `${SERVER}:1194`, "--profile", profile, "-v", ...extra];
  return net.spawn(net.clients[0]!, argv);
}

/** Waits for the client's TUN to carry 10.8.0.2; returns its name. */
async function tunnelUp(net: Topology, client: VpnProcess, server: VpnProcess): Promise<string> {
  try {
    await client.waitForLog(/connected: address 10\.8\.0\.2/);
    return await net.waitForAddress(net.clients[0]!, "10.8.0.2");
  } catch (error) {
    throw new Error(`${(error as Error).message}\nserver:\n${server.log}`);
  }
}

/** Checks the host route, the split default routes on `tun` and the old default route. */
async function assertFullTunnel(ns: Netns, tun: string, log: string): Promise<void> {
  const v4 = await routes(ns, 4);
  const host = v4.find((r) => r.dst === SERVER);
  assertEquals(host?.gateway, GATEWAY, `the host route to the server: ${JSON.stringify(v4)}`);
  for (const dst of ["0.0.0.0/1", "128.0.0.0/1"]) {
    assertEquals(v4.find((r) => r.dst === dst)?.dev, tun, `${dst}: ${JSON.stringify(v4)}\n${log}`);
  }
  assertEquals(v4.find((r) => r.dst === "default")?.gateway, GATEWAY, "the old default stays");
  const v6 = await routes(ns, 6);
  for (const dst of ["::/1", "8000::/1"]) {
    assertEquals(v6.find((r) => r.dst === dst)?.dev, tun, `${dst}: ${JSON.stringify(v6)}\n${log}`);
  }
  const via = (await ns.run(["ip", "route", "get", INTERNET])).stdout;
  assertMatch(via, new RegExp(` dev ${tun} `), "traffic to the internet goes into the tunnel");
}

/** Checks that nothing of the full tunnel is left in `ns`, and no record of host changes. */
async function assertUndone(net: Topology, ns: Netns, log: string): Promise<void> {
  const v4 = await routes(ns, 4);
  const v6 = await routes(ns, 6);
  const left = [...v4, ...v6].filter((r) =>
    [SERVER, "0.0.0.0/1", "128.0.0.0/1", "::/1", "8000::/1"].includes(r.dst)
  );
  assertEquals(left, [], `routes left after the client ended:\n${log}`);
  assertEquals(v4.find((r) => r.dst === "default")?.gateway, GATEWAY, "the default route stays");
  const records = [...Deno.readDirSync(`${net.dir}/client-state`)].map((e) => e.name);
  assertEquals(records, [], "the record of host changes is removed on exit");
}

rootTest(
  "client full tunnel: host route, split defaults, IPv6 and DNS, all undone by SIGTERM",
  async () => {
    await using net = await Topology.create(1, ["--host", SERVER]);
    const { ns, resolvConf } = await fullTunnel(net);
    try {
      const server = await net.startServer();
      const client = connect(net, await net.addClient("alice"));
      const tun = await tunnelUp(net, client, server);
      assertMatch(
        client.log,
        /connected: address 10\.8\.0\.2\/24, IPv6 fd00:8::2\/64, .*, full tunnel, DNS 10\.8\.0\.1 \(corp\.example\)/,
      );
      await assertFullTunnel(ns, tun, client.log);
      // Putting the host route and resolv.conf back at exit needs root, so it keeps it.
      assertMatch(
        client.log,
        /keeps running as root: it changed a host route to the server and DNS, to put back/,
      );
      const status = await Deno.readTextFile(`/proc/${client.child.pid}/status`);
      assertMatch(status, /^Uid:\t0\t/m);
      // The session still runs over the host route: data goes through the split routes.
      assert(await net.ping(ns, INTERNET), `through the full tunnel:\n${client.log}`);
      assert(await net.ping(ns, "10.8.0.1"), client.log);
      const applied = await Deno.readTextFile(resolvConf);
      assertMatch(applied, /^nameserver 10\.8\.0\.1$/m, applied);
      assertMatch(applied, /^search corp\.example$/m, applied);
      assert(!applied.includes("172.30.1.53"), applied);

      assertEquals(await client.stop("SIGTERM"), 0, client.log);
      await assertUndone(net, ns, client.log);
      assertEquals(await Deno.readTextFile(resolvConf), OLD_RESOLV_CONF, client.log);
      assert(!/could not/.test(client.log), client.log);
    } finally {
      await removeResolvConf(ns);
    }
  },
);

rootTest(
  "client full tunnel: --no-dns leaves resolv.conf alone and still routes everything",
  async () => {
    await using net = await Topology.create(1, ["--host", SERVER]);
    const { ns, resolvConf } = await fullTunnel(net);
    try {
      const server = await net.startServer();
      const client = connect(net, await net.addClient("alice"), ["--no-dns"]);
      const tun = await tunnelUp(net, client, server);
      assertMatch(client.log, /DNS 10\.8\.0\.1 \(corp\.example\) not applied \(--no-dns\)/);
      await assertFullTunnel(ns, tun, client.log);
      assertEquals(await Deno.readTextFile(resolvConf), OLD_RESOLV_CONF, client.log);
      assertEquals(await client.stop("SIGTERM"), 0, client.log);
      await assertUndone(net, ns, client.log);
      assertEquals(await Deno.readTextFile(resolvConf), OLD_RESOLV_CONF, client.log);
    } finally {
      await removeResolvConf(ns);
    }
  },
);

rootTest(
  "client full tunnel: after SIGKILL, the next start undoes the host route and DNS left behind",
  async () => {
    await using net = await Topology.create(1, ["--host", SERVER]);
    const { ns, resolvConf } = await fullTunnel(net);
    try {
      const server = await net.startServer();
      const profile = await net.addClient("alice");
      const killed = connect(net, profile);
      await tunnelUp(net, killed, server);
      await killed.stop("SIGKILL");
      // The TUN went with the process, and its routes with it; the host route and DNS did not.
      const left = await routes(ns, 4);
      assert(left.some((r) => r.dst === SERVER), `the host route is left: ${JSON.stringify(left)}`);
      assertMatch(await Deno.readTextFile(resolvConf), /^nameserver 10\.8\.0\.1$/m);

      // Started again with --no-dns: it undoes the killed client's DNS and sets none of its own.
      const next = connect(net, profile, ["--no-dns"]);
      const tun = await tunnelUp(net, next, server);
      assertEquals(await Deno.readTextFile(resolvConf), OLD_RESOLV_CONF, next.log);
      await assertFullTunnel(ns, tun, next.log);
      assertEquals(await next.stop("SIGTERM"), 0, next.log);
      await assertUndone(net, ns, next.log);
    } finally {
      await removeResolvConf(ns);
    }
  },
);

rootTest(
  "client full tunnel: a reconnect to a server pushing less removes the full tunnel, then changes and clears DNS",
  async () => {
    await using net = await Topology.create(1, ["--host", SERVER]);
    const { ns, resolvConf } = await fullTunnel(net);
    try {
      let server = await net.startServer();
      const client = connect(net, await net.addClient("alice"));
      await assertFullTunnel(ns, await tunnelUp(net, client, server), client.log);
      /** Restarts the server with `settings` and waits for the client's `n`th session. */
      const restart = async (settings: Record<string, unknown>, n: number) => {
        await server.stop();
        await mergeServerConfig(net, settings);
        server = await net.startServer();
        await waitFor(
          `session ${n} of the client`,
          () =>
            (client.log.match(/connected: address 10\.8\.0\.2/g)?.length ?? 0) >= n || undefined,
          20_000,
        );
      };

      await restart({
        "push.redirect_gateway": false,
        "push.dns.servers": ["10.8.0.53"],
        "push.dns.domains": [],
      }, 2);
      const v4 = await routes(ns, 4);
      const v6 = await routes(ns, 6);
      const left = [...v4, ...v6].filter((r) =>
        [SERVER, "0.0.0.0/1", "128.0.0.0/1", "::/1", "8000::/1"].includes(r.dst)
      );
      assertEquals(left, [], `the full tunnel is gone after a PUSH without it:\n${client.log}`);
      assert(await net.ping(ns, "10.8.0.1"), client.log);
      const changed = await Deno.readTextFile(resolvConf);
      assertMatch(changed, /^nameserver 10\.8\.0\.53$/m, changed);
      assert(!/10\.8\.0\.1$|corp\.example|^search/m.test(changed), changed);

      await restart({ "push.dns.servers": [] }, 3);
      assertEquals(await Deno.readTextFile(resolvConf), OLD_RESOLV_CONF, client.log);
      assertEquals(await client.stop("SIGTERM"), 0, client.log);
      await assertUndone(net, ns, client.log);
      assert(!/could not/.test(client.log), client.log);
    } finally {
      await removeResolvConf(ns);
    }
  },
);

rootTest(
  "client full tunnel: a route or DNS that cannot be applied is a warning, and the tunnel stays up",
  async () => {
    await using net = await Topology.create(1, ["--host", SERVER]);
    const { ns, resolvConf } = await fullTunnel(net);
    // The host route to SERVER comes first, so a pushed route to the same /32 cannot be added;
    // a resolv.conf larger than any resolver's is not replaced.
    await mergeServerConfig(net, { "push.routes": [`${SERVER}/32`] });
    const huge = `${
      "# a comment that makes this file too large to be a resolv.conf\n".repeat(1200)
    }`;
    await Deno.writeTextFile(resolvConf, huge);
    try {
      const server = await net.startServer();
      const client = connect(net, await net.addClient("alice"));
      const tun = await tunnelUp(net, client, server);
      assertMatch(
        client.log,
        /WRN\] vpn·client: could not add the route to 198\.18\.0\.1\/32 through the tunnel: .*EEXIST.*; the tunnel stays up without it/,
      );
      assertMatch(
        client.log,
        /WRN\] vpn·client: could not apply the pushed DNS servers 10\.8\.0\.1: .*; the tunnel stays up without them/,
      );
      await assertFullTunnel(ns, tun, client.log);
      assert(await net.ping(ns, "10.8.0.1"), client.log);
      assert(await net.ping(ns, INTERNET), client.log);
      assertEquals(await Deno.readTextFile(resolvConf), huge);
      assertEquals(await client.stop("SIGTERM"), 0, client.log);
      await assertUndone(net, ns, client.log);
      assertEquals(await Deno.readTextFile(resolvConf), huge);
    } finally {
      await removeResolvConf(ns);
    }
  },
);
