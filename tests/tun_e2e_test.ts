/**
 * End-to-end tests of the TUN binding on real devices, each in namespaces it creates and
 * removes. The FFI work runs in `tests/helpers/tun_probe.ts` inside the namespace.
 */

import { assert, assertEquals, assertGreater, assertMatch } from "./_assert.ts";
import { denoScript, JsonLines, Netns, rootTest, transfer } from "./_netns.ts";
import { exitOf, kill } from "./_wait.ts";

const PROBE = new URL("./helpers/tun_probe.ts", import.meta.url).pathname;

async function probe(ns: Netns, ...args: string[]): Promise<Record<string, unknown>> {
  const { stdout } = await ns.run(denoScript(PROBE, ...args));
  return JSON.parse(stdout.trim().split("\n").at(-1)!);
}

rootTest("LinuxTun.create() names the device from a pattern and removes it on close", async () => {
  await using ns = await Netns.create("tun");
  const created = await probe(ns, "create", "vpn%d");
  assertEquals(created.name, "vpn0");
  assertEquals(created.vnetHdr, false);
  const links = await ns.run(["ip", "-j", "link", "show"]);
  assert(!links.stdout.includes('"vpn0"'), "the interface is gone once the fd is closed");
});

rootTest("LinuxTun.create() with offload reports what the kernel took", async () => {
  await using ns = await Netns.create("tun");
  const created = await probe(ns, "create", "vpnoff0", "offload");
  assertEquals(created.vnetHdr, true);
  const offloads = created.offloads as Record<string, boolean>;
  assert(offloads.csum && offloads.tso4 && offloads.tso6, JSON.stringify(offloads));
});

rootTest("LinuxTun.create() refuses a name over 15 bytes before any ioctl", async () => {
  await using ns = await Netns.create("tun");
  const created = await probe(ns, "create", "a-name-too-long-for-linux");
  assertEquals(created.type, "RangeError");
  assertMatch(String(created.error), /25 bytes, at most 15/);
});

rootTest(
  "LinuxTun.create() without CAP_NET_ADMIN says it needs root or CAP_NET_ADMIN",
  async () => {
    await using ns = await Netns.create("tun");
    const dropped = ["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin"];
    const { stdout } = await ns.run([...dropped, ...denoScript(PROBE, "create", "vpn%d")]);
    const created = JSON.parse(stdout.trim());
    assertEquals(created.type, "TunError");
    assertMatch(created.error, /needs root or CAP_NET_ADMIN/);
  },
);

rootTest(
  "LinuxTun.create() without /dev/net/tun names the missing device and the fix",
  async () => {
    await using ns = await Netns.create("tun");
    // A private mount namespace with an empty /dev/net: the host's device stays untouched.
    const script = `mount -t tmpfs none /dev/net && exec "$@"`;
    const { stdout } = await ns.run([
      "unshare",
      "--mount",
      "--propagation",
      "private",
      "sh",
      "-c",
      script,
      "sh",
      ...denoScript(PROBE, "create", "vpn%d"),
    ]);
    const created = JSON.parse(stdout.trim());
    assertEquals(created.type, "TunError");
    assertMatch(created.error, /\/dev\/net\/tun is missing; load the module \(modprobe tun\)/);
  },
);

rootTest(
  "a ping routed into the TUN is read from it, and the reply written back answers it",
  async () => {
    await using ns = await Netns.create("tun");
    const child = ns.spawn(denoScript(PROBE, "responder"), { stdin: "piped" });
    const events = new JsonLines(child.stdout);
    try {
      const ready = await events.next((e) => e.ready === true);
      // What the probe set through netlink, read back through netlink...
      assertEquals((ready.link as Record<string, unknown>).mtu, 1400);
      assertEquals((ready.link as Record<string, unknown>).up, true);
      assert(JSON.stringify(ready.addresses).includes('"10.77.0.1"'), JSON.stringify(ready));
      assert(JSON.stringify(ready.routes).includes('"10.78.0.0/24"'), JSON.stringify(ready));
      // ...and through the kernel's own tool.
      const link = JSON.parse((await ns.run(["ip", "-j", "addr", "show", "vpnt0"])).stdout)[0];
      assertEquals(link.mtu, 1400);
      assert(link.flags.includes("UP"), JSON.stringify(link.flags));
      assertEquals(link.addr_info[0].local, "10.77.0.1");
      assertEquals(link.addr_info[0].prefixlen, 24);
      const routes = JSON.parse(
        (await ns.run(["ip", "-j", "route", "show", "dev", "vpnt0"])).stdout,
      );
      assert(routes.some((r: { dst: string }) => r.dst === "10.78.0.0/24"), JSON.stringify(routes));

      const ping = await ns.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.78.0.5"], true);
      assertEquals(ping.code, 0, ping.stdout + ping.stderr);
      assertMatch(ping.stdout, /3 packets transmitted, 3 received/);
      const request = await events.next((e) => e.echoRequest !== undefined);
      assertEquals(request.echoRequest, "10.78.0.5");
      assertEquals(request.length, 84);

      // Closing stdin ends the responder, which then reports its TUN's counters.
      await child.stdin.close();
      const { stats } = await events.next((e) => e.stats !== undefined);
      const counted = stats as { readPackets: number; writtenPackets: number; writeErrors: number };
      // Exactly the three replies went through write(); the kernel may have sent more than
      // the three requests into the TUN (IPv6 router solicitations), never fewer.
      assertEquals([counted.writtenPackets, counted.writeErrors], [3, 0], JSON.stringify(stats));
      assert(counted.readPackets >= 3, JSON.stringify(stats));
      assertEquals(events.seen.filter((e) => e.echoRequest !== undefined).length, 3);
      assertEquals((await exitOf(child, 10_000, "the responder")).code, 0);
    } finally {
      kill(child);
      await exitOf(child, 5000, "the responder");
    }
  },
);

rootTest(
  "with offload, a TCP stream relayed between two TUNs is read as super-packets and arrives intact",
  async () => {
    await using a = await Netns.create("ofa");
    await using b = await Netns.create("ofb");
    const relay = a.spawn(denoScript(PROBE, "relay", b.name), { stdin: "piped" });
    const relayEvents = new JsonLines(relay.stdout);
    try {
      await relayEvents.next((e) => e.ready === true);
      await b.run(["ip", "addr", "add", "10.79.0.2/24", "dev", "vpnrb"]);
      await b.run(["ip", "link", "set", "vpnrb", "up"]);

      await transfer(a, b, "10.79.0.2", 32 << 20);
      // Closing stdin ends the relay, which then reports what it read.
      await relay.stdin.close();
      const stats = await relayEvents.next((e) => e.largestRead !== undefined);
      assertEquals((await exitOf(relay, 10_000, "the relay")).code, 0);
      assertGreater(stats.largestRead as number, 1500);
    } finally {
      kill(relay);
      await exitOf(relay, 5000, "the relay");
    }
  },
);

rootTest("a process whose TUN is closed exits without waiting on a pending read", async () => {
  await using ns = await Netns.create("tun");
  // The responder blocks in read() until stdin closes; it must then exit by itself.
  const child = ns.spawn(denoScript(PROBE, "responder"), { stdin: "piped" });
  const events = new JsonLines(child.stdout);
  try {
    await events.next((e) => e.ready === true);
    await child.stdin.close();
    const status = await exitOf(child, 10_000, "the responder, whose TUN was closed,");
    assertEquals(status.code, 0);
  } finally {
    kill(child);
    await exitOf(child, 5000, "the responder");
  }
});
