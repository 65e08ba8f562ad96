/**
 * `Server.status()`, `kill()` and `reload()`, what the control socket serves, through a real
 * server and native clients over loopback TLS with in-memory TUNs.
 */

import { assert, assertEquals, assertMatch, assertRejects } from "./_assert.ts";
import { ipv4Packet, takeFrom, waitFor, withLab } from "./_lab.ts";
import { ConfigError, serverConfigYaml } from "../mod/config.ts";
import { VERSION } from "../mod/version.ts";

Deno.test("Server.status() names the server and counts each session's packets and bytes each way", async () => {
  await withLab(async (lab) => {
    const alice = await lab.connected("alice");
    const up = ipv4Packet("10.8.0.2", "10.8.0.1", "up");
    const down = ipv4Packet("10.8.0.1", "10.8.0.2", "down, longer");
    for (let i = 0; i < 3; i++) {
      alice.tun.inject(up);
      assertEquals(await takeFrom(lab.serverTun), [up]);
    }
    lab.serverTun.inject(down);
    assertEquals(await takeFrom(alice.tun), [down]);
    const status = lab.server.status();
    assertEquals(status.version, VERSION);
    assertEquals(status.pid, Deno.pid);
    assertEquals(status.subnet, "10.8.0.0/24");
    assertEquals(status.tun, "server-tun");
    assert(status.listeners.some((l) => l.startsWith("TLS 127.0.0.1:")), status.listeners.join());
    assertEquals(status.handshakes.ok, 1);
    assertEquals(status.sessions.length, 1);
    const [row] = status.sessions;
    assertEquals(row!.name, "alice");
    assertEquals(row!.address, "10.8.0.2");
    assertMatch(row!.protocol, /^native\/(tls|udp)$/);
    assertMatch(row!.peer, /^127\.0\.0\.1:\d+$/);
    assertEquals([row!.packetsIn, row!.bytesIn], [3, 3 * up.length]);
    assertEquals([row!.packetsOut, row!.bytesOut], [1, down.length]);
    assert(Date.parse(row!.connectedAt) <= Date.now(), row!.connectedAt);
    assert(Date.parse(row!.lastHeardAt) >= Date.parse(row!.connectedAt) - 1000, row!.lastHeardAt);
    assertEquals(typeof status.counters.spoofed, "number");
  });
});

Deno.test("Server.kill() ends a session without revoking it: the address is freed and the client comes back", async () => {
  await withLab(async (lab) => {
    const alice = await lab.connected("alice");
    const up = ipv4Packet("10.8.0.2", "10.8.0.1", "before the kill");
    alice.tun.inject(up);
    assertEquals(await takeFrom(lab.serverTun), [up]);
    assertEquals(await lab.server.kill("nobody"), { killed: false, reconnects: false });
    const killed = await lab.server.kill("alice");
    assertEquals(killed.killed, true);
    assertEquals(killed.reconnects, true);
    assertEquals(lab.server.pool.inUse <= 1, true);
    // Told BYE, the client reconnects by itself, with its certificate still valid.
    await waitFor(() => lab.server.status().handshakes.ok === 2, 10_000, "alice is back");
    await waitFor(() => alice.client.connected, 5000, "alice's session is up again");
    const status = lab.server.status();
    assertEquals(status.sessions.map((s) => s.name), ["alice"]);
    // The new session starts from zero; the totals since start keep the old one's packet.
    assertEquals(status.sessions[0]!.packetsIn, 0);
    assertEquals([status.traffic.packetsIn, status.traffic.bytesIn], [1, up.length]);
  });
});

Deno.test("Server.reload() applies push, keepalive and log.level to new sessions and names what needs a restart", async () => {
  await withLab(async (lab) => {
    const next = structuredClone(lab.config);
    next.push.routes = ["192.168.77.0/24"];
    next.keepalive = { interval: 5, timeout: 30 };
    next.log.level = "debug";
    next.mtu = 1300;
    // The lab listens on port 0 (any), which a file cannot say: a port is a restart too.
    next.listen.port = 4444;
    await Deno.writeTextFile(`${lab.dir}/server.yaml`, serverConfigYaml(next));
    const result = await lab.server.reload();
    assertEquals(result.applied.sort(), ["keepalive", "log.level", "push"]);
    assertEquals(result.needRestart, ["listen", "mtu"]);
    const bob = await lab.connected("bob");
    const session = lab.server.router.sessions().find((s) => s.name === bob.name)!;
    assertEquals(session.network.routes, ["192.168.77.0/24"]);
    assertEquals(session.network.keepalive, { interval: 5, timeout: 30 });
    // A second reload of the same file changes nothing and still names the restart.
    assertEquals(await lab.server.reload(), { applied: [], needRestart: ["listen", "mtu"] });
    await Deno.writeTextFile(`${lab.dir}/server.yaml`, "mtu: 1\n");
    await assertRejects(() => lab.server.reload(), ConfigError, /mtu: 1 is not allowed/);
  });
});
