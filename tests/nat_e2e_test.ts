/**
 * End-to-end tests of `Nat` (needs root), in three namespaces: `c` stands for a VPN client
 * behind the server's tunnel, `s` is the server and `i` the internet, which has no route back
 * to the tunnel's subnets. The tunnel is a veth pair whose server end is named like a TUN
 * (`vpnt0`): the rules match the name only. `Nat` runs inside `s` through
 * tests/helpers/nat_probe.ts, and a UDP echo in `i` answers with the source address it saw.
 */

import assert from "node:assert/strict";
import { denoScript, JsonLines, Netns, rootTest, run } from "./_netns.ts";
import { exitOf, kill } from "./_wait.ts";

const PROBE = new URL("./helpers/nat_probe.ts", import.meta.url).pathname;
const PORT = "7007";
const TUN = "vpnt0";
const SUBNETS = ["10.8.0.0/24", "fd00:8::/64"];
const INTERNET4 = "203.0.113.2";
const INTERNET6 = "2001:db8::2";
const SERVER4 = "203.0.113.1";
const SERVER6 = "2001:db8::1";
const FORWARDING = {
  v4: "/proc/sys/net/ipv4/ip_forward",
  v6: "/proc/sys/net/ipv6/conf/all/forwarding",
};

interface World {
  c: Netns;
  s: Netns;
  i: Netns;
}

/** `c` (10.8.0.2, fd00:8::2) ↔ `s` (vpnt0: 10.8.0.1, fd00:8::1; 203.0.113.1, 2001:db8::1) ↔ `i`. */
async function wire({ c, s, i }: World): Promise<void> {
  await run([
    "ip",
    "link",
    "add",
    TUN,
    "netns",
    s.name,
    "type",
    "veth",
    "peer",
    "cl0",
    "netns",
    c.name,
  ]);
  await run([
    "ip",
    "link",
    "add",
    "up0",
    "netns",
    s.name,
    "type",
    "veth",
    "peer",
    "in0",
    "netns",
    i.name,
  ]);
  const address = async (ns: Netns, dev: string, ...cidrs: string[]) => {
    // nodad: usable at once, not after IPv6 duplicate address detection.
    for (const cidr of cidrs) await ns.run(["ip", "addr", "add", cidr, "dev", dev, "nodad"]);
    await ns.run(["ip", "link", "set", dev, "up"]);
  };
  await address(c, "cl0", "10.8.0.2/24", "fd00:8::2/64");
  await address(s, TUN, "10.8.0.1/24", "fd00:8::1/64");
  await address(s, "up0", `${SERVER4}/24`, `${SERVER6}/64`);
  await address(i, "in0", `${INTERNET4}/24`, `${INTERNET6}/64`);
  // The client sends everything into the tunnel; `i` knows only its own network.
  await c.run(["ip", "route", "add", "default", "via", "10.8.0.1"]);
  await c.run(["ip", "-6", "route", "add", "default", "via", "fd00:8::1"]);
}

/** The three namespaces, wired, for the length of `body`. */
async function withWorld(body: (world: World) => Promise<void>): Promise<void> {
  await using c = await Netns.create("natc");
  await using s = await Netns.create("nats");
  await using i = await Netns.create("nati");
  const world = { c, s, i };
  await wire(world);
  const echo4 = i.spawn(denoScript(PROBE, "echo", INTERNET4, PORT));
  const echo6 = i.spawn(denoScript(PROBE, "echo", INTERNET6, PORT));
  try {
    await new JsonLines(echo4.stdout).next((e) => e.listening === true);
    await new JsonLines(echo6.stdout).next((e) => e.listening === true);
    await body(world);
  } finally {
    for (const echo of [echo4, echo6]) {
      kill(echo);
      await exitOf(echo, 5000, "the UDP echo");
      await echo.stderr.cancel();
    }
  }
}

/** The source address `i` saw for a datagram from `c`, or null when no answer came. */
async function ask(c: Netns, host: string): Promise<string | null> {
  const { stdout } = await c.run(denoScript(PROBE, "ask", host, PORT));
  return (JSON.parse(stdout) as { reply: string | null }).reply;
}

async function forwarding(s: Netns): Promise<{ v4: string; v6: string }> {
  const read = async (path: string) => (await s.run(["cat", path])).stdout.trim();
  return { v4: await read(FORWARDING.v4), v6: await read(FORWARDING.v6) };
}

async function tables(s: Netns): Promise<string[]> {
  const { stdout } = await s.run(denoScript(PROBE, "tables"));
  return (JSON.parse(stdout) as { tables: string[] }).tables;
}

/** A `nat_probe.ts hold` in `s`: NAT is on from `enabled` until `release()`. */
class Holder implements AsyncDisposable {
  readonly child: Deno.ChildProcess;
  readonly events: JsonLines;

  constructor(s: Netns, tun: string, subnets: string[]) {
    this.child = s.spawn(denoScript(PROBE, "hold", tun, ...subnets), { stdin: "piped" });
    this.events = new JsonLines(this.child.stdout);
  }

  async enabled(): Promise<Record<string, unknown>> {
    return await this.events.next((e) => e.enabled === true || e.error !== undefined, 30_000);
  }

  /** Lets the holder disable NAT and exit; returns its exit code. */
  async release(): Promise<number> {
    await this.child.stdin.close();
    await this.events.next((e) => e.disabled === true, 30_000);
    return (await exitOf(this.child, 10_000, "the NAT holder")).code;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    kill(this.child);
    await exitOf(this.child, 5000, "the NAT holder").catch(() => {});
    await this.child.stderr.cancel().catch(() => {});
  }
}

rootTest("nat: masquerades the client subnets while enabled, and undoes it all", async () => {
  await withWorld(async ({ c, s }) => {
    assert.deepEqual(await forwarding(s), { v4: "0", v6: "0" });
    assert.equal(await ask(c, INTERNET4), null, "no forwarding: nothing gets through");
    // Forwarding alone is not enough: `i` has no route back to the client's address.
    await s.run(["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]);
    assert.equal(await ask(c, INTERNET4), null, "forwarding without NAT: no answer");
    assert.equal(await ask(c, INTERNET6), null, "forwarding without NAT (IPv6): no answer");
    await s.run(["sysctl", "-qw", "net.ipv4.ip_forward=0", "net.ipv6.conf.all.forwarding=0"]);

    await using holder = new Holder(s, TUN, SUBNETS);
    const enabled = await holder.enabled();
    assert.deepEqual(enabled, {
      enabled: true,
      table: "vpn_vpnt0",
      staleTableRemoved: false,
      forwardingTurnedOn: ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"],
    });
    assert.deepEqual(await forwarding(s), { v4: "1", v6: "1" });
    assert.deepEqual(await tables(s), ["vpn_vpnt0"]);
    assert.equal(await ask(c, INTERNET4), SERVER4, "i sees the server's address");
    assert.equal(await ask(c, INTERNET6), SERVER6, "i sees the server's IPv6 address");

    assert.equal(await holder.release(), 0);
    assert.deepEqual(await tables(s), []);
    assert.deepEqual(await forwarding(s), { v4: "0", v6: "0" });
    assert.equal(await ask(c, INTERNET4), null, "after disable: nothing gets through");
  });
});

rootTest("nat: the next enable replaces the table of a killed server", async () => {
  await withWorld(async ({ c, s }) => {
    {
      await using killed = new Holder(s, TUN, ["10.8.0.0/24"]);
      assert.equal((await killed.enabled()).enabled, true);
      kill(killed.child, "SIGKILL");
      await exitOf(killed.child, 5000, "the killed NAT holder");
    }
    assert.deepEqual(await tables(s), ["vpn_vpnt0"], "SIGKILL left the table behind");
    assert.deepEqual(await forwarding(s), { v4: "1", v6: "0" }, "and forwarding on");

    // Other IPv4 subnets than the killed server's: its rule must not survive the replacement.
    await using next = new Holder(s, TUN, ["10.9.0.0/24", "fd00:8::/64"]);
    assert.deepEqual(await next.enabled(), {
      enabled: true,
      table: "vpn_vpnt0",
      staleTableRemoved: true,
      // IPv4 forwarding was on already: the killed server's, but nothing tells this one.
      forwardingTurnedOn: ["net.ipv6.conf.all.forwarding"],
    });
    assert.deepEqual(await tables(s), ["vpn_vpnt0"]);
    assert.equal(await ask(c, INTERNET4), null, "the killed server's 10.8.0.0/24 rule is gone");
    assert.equal(await ask(c, INTERNET6), SERVER6, "the new table has the new subnets");
    assert.equal(await next.release(), 0);
    assert.deepEqual(await tables(s), []);
    assert.deepEqual(await forwarding(s), { v4: "1", v6: "0" }, "only what it turned on");
  });
});

rootTest("nat: two servers of different TUNs keep their own tables and forwarding", async () => {
  await withWorld(async ({ c, s }) => {
    await using first = new Holder(s, TUN, ["10.8.0.0/24"]);
    assert.deepEqual((await first.enabled()).forwardingTurnedOn, ["net.ipv4.ip_forward"]);
    await using second = new Holder(s, "vpnt1", ["10.9.0.0/24"]);
    assert.deepEqual((await second.enabled()).forwardingTurnedOn, []);
    assert.deepEqual((await tables(s)).sort(), ["vpn_vpnt0", "vpn_vpnt1"]);

    // The first to stop leaves forwarding on: the other server still forwards.
    assert.equal(await first.release(), 0);
    assert.deepEqual(await tables(s), ["vpn_vpnt1"]);
    assert.equal((await forwarding(s)).v4, "1");
    assert.equal(await second.release(), 0);
    assert.deepEqual(await tables(s), []);
    assert.equal(await ask(c, INTERNET4), null);
  });
});

rootTest(
  "nat: without CAP_NET_ADMIN, enable fails saying why and what to run by hand",
  async () => {
    await using s = await Netns.create("natp");
    const { code, stdout } = await s.run(
      [
        "setpriv",
        "--bounding-set=-net_admin",
        "--inh-caps=-net_admin",
        ...denoScript(PROBE, "hold", TUN, ...SUBNETS),
      ],
      true,
    );
    assert.equal(code, 1);
    const { error } = JSON.parse(stdout) as { error: string };
    assert.match(error, /no permission: the server needs root or CAP_NET_ADMIN/);
    assert.match(error, /EPERM/);
    assert.match(error, /sysctl -w net\.ipv4\.ip_forward=1/);
    assert.match(
      error,
      /nft 'add rule inet vpn_vpnt0 postrouting ip saddr 10\.8\.0\.0\/24 oifname != "vpnt0" masquerade'/,
    );
    assert.equal((await s.run(["cat", FORWARDING.v4])).stdout.trim(), "0", "nothing changed");
  },
);
