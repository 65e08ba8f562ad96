/**
 * The router's IPv6 and per-client settings, through a real server and real native clients over
 * loopback TLS with in-memory TUNs: routing by IPv6 destination, IPv6 anti-spoofing, fixed
 * addresses, and networks behind a client (routed to it, accepted from it only, pushed to the
 * others with `client_to_client`).
 */

import { assert, assertEquals } from "./_assert.ts";
import { ipv4Packet, type Lab, takeFrom, withLab } from "./_lab.ts";
import { parseIPv6 } from "../mod/core/ip.ts";
import type { MemoryTun } from "../mod/core/memory_tun.ts";
import { type ClientSettings, setClientSettings } from "../mod/pki.ts";

const SUBNET6 = "fd00:8::/64";

/** An IPv6 packet (next header 59, "no next header") carrying `text`. */
function ipv6Packet(source: string, destination: string, text: string): Uint8Array {
  const payload = new TextEncoder().encode(text);
  const packet = new Uint8Array(40 + payload.length);
  packet[0] = 0x60;
  new DataView(packet.buffer).setUint16(4, payload.length);
  packet[6] = 59;
  packet[7] = 64;
  packet.set(parseIPv6(source), 8);
  packet.set(parseIPv6(destination), 24);
  packet.set(payload, 40);
  return packet;
}

/** Gives `name` (issued, not yet connected) `settings` and lets the server read them. */
async function set(lab: Lab, name: string, settings: ClientSettings): Promise<void> {
  await setClientSettings(lab.dir, name, () => settings);
  await lab.server.router.checkRevocations();
}

/** The IPv6 address the server gave `name`'s session. */
function address6(lab: Lab, name: string): string | undefined {
  return lab.server.router.sessions().find((s) => s.name === name)?.network.address6;
}

/** Injects `packet` into `tun` and checks that nothing comes out of `other` but `marker`. */
async function assertDropped(
  from: MemoryTun,
  packet: Uint8Array,
  to: MemoryTun,
  marker: Uint8Array,
): Promise<void> {
  from.inject(packet);
  from.inject(marker);
  assertEquals(await takeFrom(to), [marker], "the first packet was not dropped");
}

Deno.test("Router routes IPv6 by destination and drops an inner IPv6 source that is not the client's", async () => {
  await withLab(async (lab) => {
    const alice = await lab.connected("alice");
    assertEquals(address6(lab, "alice"), "fd00:8::2", "the host number of 10.8.0.2");
    const toAlice = ipv6Packet("fd00:8::1", "fd00:8::2", "down");
    lab.serverTun.inject(toAlice);
    assertEquals(await takeFrom(alice.tun), [toAlice]);
    const fromAlice = ipv6Packet("fd00:8::2", "2001:db8::1", "up");
    alice.tun.inject(fromAlice);
    assertEquals(await takeFrom(lab.serverTun), [fromAlice]);
    const spoofed = lab.server.stats.spoofed;
    await assertDropped(
      alice.tun,
      ipv6Packet("fd00:8::3", "2001:db8::1", "spoofed"),
      lab.serverTun,
      fromAlice,
    );
    assertEquals(lab.server.stats.spoofed, spoofed + 1);
    // Each kernel's own neighbour discovery stays on its link: counted apart, not as spoofed.
    const linkLocal = lab.server.stats.linkLocal;
    await assertDropped(
      alice.tun,
      ipv6Packet("fe80::1", "ff02::2", "router solicitation"),
      lab.serverTun,
      fromAlice,
    );
    lab.serverTun.inject(ipv6Packet("fe80::2", "ff02::1", "all nodes"));
    lab.serverTun.inject(ipv6Packet("fd00:8::1", "ff02::16", "MLD report"));
    lab.serverTun.inject(toAlice);
    assertEquals(await takeFrom(alice.tun), [toAlice]);
    assertEquals(lab.server.stats.linkLocal, linkLocal + 3);
    assertEquals(lab.server.stats.spoofed, spoofed + 1);
    // One differing bit above the 32-bit key is another address, not alice's.
    const unroutable = lab.server.stats.unroutable;
    lab.serverTun.inject(ipv6Packet("fd00:8::1", "fd00:8::1:0:0:2", "elsewhere"));
    lab.serverTun.inject(toAlice);
    assertEquals(await takeFrom(alice.tun), [toAlice]);
    assertEquals(lab.server.stats.unroutable, unroutable + 1);
  }, (config) => config.subnet6 = SUBNET6);
});

Deno.test("Router with client_to_client forwards IPv6 between clients", async () => {
  await withLab(async (lab) => {
    const alice = await lab.connected("alice");
    const bob = await lab.connected("bob");
    const packet = ipv6Packet(address6(lab, "alice")!, address6(lab, "bob")!, "hi bob");
    alice.tun.inject(packet);
    assertEquals(await takeFrom(bob.tun), [packet]);
  }, (config) => {
    config.subnet6 = SUBNET6;
    config.client_to_client = true;
  });
});

Deno.test("Router gives a client its fixed addresses and nobody else, and a network behind it is its own", async () => {
  await withLab(async (lab) => {
    const branchKeys = await lab.issue("branch");
    await set(lab, "branch", {
      address: "10.8.0.50",
      address6: "fd00:8::50",
      routes: ["192.168.60.0/24", "fd00:60::/64"],
    });
    const alice = await lab.connected("alice");
    const branch = await lab.connected("branch", branchKeys);
    assertEquals(branch.client.address, "10.8.0.50");
    assertEquals(address6(lab, "branch"), "fd00:8::50");
    const session = lab.server.router.sessions().find((s) => s.name === "branch")!;
    assertEquals(session.network.sites, ["192.168.60.0/24", "fd00:60::/64"]);
    // To the network behind the branch: routed to the branch, v4 and v6.
    for (
      const packet of [
        ipv4Packet("10.8.0.1", "192.168.60.7", "to the site"),
        ipv6Packet("fd00:8::1", "fd00:60::7", "to the site"),
      ]
    ) {
      lab.serverTun.inject(packet);
      assertEquals(await takeFrom(branch.tun), [packet]);
    }
    // From it: accepted from the branch, spoofed from anyone else.
    const fromSite = ipv4Packet("192.168.60.7", "10.8.0.1", "from the site");
    branch.tun.inject(fromSite);
    assertEquals(await takeFrom(lab.serverTun), [fromSite]);
    const fromSite6 = ipv6Packet("fd00:60::7", "fd00:8::1", "from the site");
    branch.tun.inject(fromSite6);
    assertEquals(await takeFrom(lab.serverTun), [fromSite6]);
    const spoofed = lab.server.stats.spoofed;
    const marker = ipv4Packet("10.8.0.2", "10.8.0.1", "alice's own");
    await assertDropped(
      alice.tun,
      ipv4Packet("192.168.60.7", "10.8.0.1", "x"),
      lab.serverTun,
      marker,
    );
    await assertDropped(
      alice.tun,
      ipv6Packet("fd00:60::7", "fd00:8::1", "x"),
      lab.serverTun,
      marker,
    );
    assertEquals(lab.server.stats.spoofed, spoofed + 2);
    // Newcomers never get the fixed address, even while the branch is away.
    await lab.stopClient(branch);
    const carol = await lab.connected("carol");
    assert(carol.client.address !== "10.8.0.50", carol.client.address);
  }, (config) => config.subnet6 = SUBNET6);
});

Deno.test("Router with client_to_client pushes the networks behind a client to the others and forwards to them", async () => {
  await withLab(async (lab) => {
    const branchKeys = await lab.issue("branch");
    await set(lab, "branch", { routes: ["192.168.60.0/24"] });
    const alice = await lab.connected("alice");
    const branch = await lab.connected("branch", branchKeys);
    const sessions = lab.server.router.sessions();
    assertEquals(sessions.find((s) => s.name === "alice")!.network.routes, ["192.168.60.0/24"]);
    assertEquals(sessions.find((s) => s.name === "branch")!.network.routes, []);
    const packet = ipv4Packet("10.8.0.2", "192.168.60.9", "to the branch's network");
    alice.tun.inject(packet);
    assertEquals(await takeFrom(branch.tun), [packet]);
  }, (config) => config.client_to_client = true);
});

Deno.test("Router: a client's own --redirect-gateway or --no-redirect-gateway wins over push.redirect_gateway", async () => {
  for (const server of [false, true]) {
    await withLab(async (lab) => {
      const keys = await lab.issue("own");
      await set(lab, "own", { routes: [], redirectGateway: !server });
      await lab.connected("own", keys);
      await lab.connected("default");
      const full = (name: string) =>
        lab.server.router.sessions().find((s) => s.name === name)!.network.redirectGateway;
      assertEquals([full("own"), full("default")], [!server, server]);
    }, (config) => config.push.redirect_gateway = server);
  }
});
