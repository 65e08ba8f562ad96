/**
 * Fewer privileges end to end: `vpn serve` and `vpn connect` started as root in namespaces
 * become `nobody` once set up (read from /proc/PID/status: every thread's uid, one capability
 * left), and the server's later work still happens as that user: leases written, a route to
 * a client's network added and a revocation applied at a registry read, nat undone at exit.
 * The keys stay unreadable to nobody; `user: root` keeps root; an unknown user or a PKI that
 * nobody cannot reach fails before anything starts.
 */

import { assert, assertEquals, assertMatch } from "./_assert.ts";
import { rootTest, run } from "./_netns.ts";
import { Topology, waitFor } from "./_vpn.ts";

/** CAP_NET_ADMIN (12) alone, as /proc/PID/status prints a capability set. */
const NET_ADMIN_ONLY = "0000000000001000";

/** The lines of /proc/PID/status (or of one thread's, `task/TID/status`) by name. */
async function procStatus(path: string): Promise<Record<string, string>> {
  const fields: Record<string, string> = {};
  for (const line of (await Deno.readTextFile(path)).split("\n")) {
    const colon = line.indexOf(":");
    if (colon > 0) fields[line.slice(0, colon)] = line.slice(colon + 1).trim();
  }
  return fields;
}

/** Asserts that every thread of `pid` runs as nobody, and the process keeps CAP_NET_ADMIN alone. */
async function assertNobody(pid: number, log: string): Promise<void> {
  const main = await procStatus(`/proc/${pid}/status`);
  assertEquals(main.Uid, "65534\t65534\t65534\t65534", log);
  assertEquals(main.Gid, "65534\t65534\t65534\t65534", log);
  assertEquals(main.Groups, "65534", log);
  assertEquals(main.CapEff, NET_ADMIN_ONLY, log);
  assertEquals(main.CapPrm, NET_ADMIN_ONLY, log);
  assertEquals(main.CapInh, "0000000000000000", log);
  assertEquals(main.NoNewPrivs, "1", log);
  // Not dumpable since the switch: its private /proc files are root's, and other processes
  // of nobody may not trace it or read its memory.
  assertEquals((await Deno.stat(`/proc/${pid}/environ`)).uid, 0, log);
  let threads = 0;
  for await (const task of Deno.readDir(`/proc/${pid}/task`)) {
    const thread = await procStatus(`/proc/${pid}/task/${task.name}/status`);
    assertEquals(thread.Uid, "65534\t65534\t65534\t65534", `thread ${task.name}`);
    threads++;
  }
  assert(threads > 1, `Deno runs several threads, found ${threads}`);
}

/** Runs `argv` as nobody (group nogroup and no other); the exit code. */
async function asNobody(argv: string[]): Promise<number> {
  const setpriv = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"];
  return (await run([...setpriv, ...argv], true)).code;
}

rootTest(
  "vpn serve and connect give up root once set up, and the server still does its work",
  async () => {
    await using net = await Topology.create(1);
    await net.configure("nat: true\n");
    const server = await net.startServer();
    await server.waitForLog(
      /running as nobody \(uid 65534, gid 65534\), keeping CAP_NET_ADMIN alone/,
    );
    await assertNobody(server.child.pid, server.log);

    // The keys stay root's: nobody may read the registry through the directory, not a key.
    for (const key of ["ca.key", "server.key", "tls-crypt.key"]) {
      const info = await Deno.stat(`${net.dir}/${key}`);
      assertEquals([info.uid, info.mode! & 0o777], [0, 0o600], key);
      assert((await asNobody(["cat", `${net.dir}/${key}`])) !== 0, `nobody read ${key}`);
    }
    assertEquals(await asNobody(["cat", `${net.dir}/clients.json`]), 0);
    assertEquals((await Deno.stat(net.dir)).mode! & 0o777, 0o710);

    const client = net.connect(0, await net.addClient("alice"));
    await client.waitForLog(/running as nobody/);
    await assertNobody(client.child.pid, client.log);
    assert(await net.ping(net.clients[0]!, "10.8.0.1"), client.log);
    // The lease, written by the server as nobody in its own directory.
    const lease = await waitFor("alice's lease", async () => {
      const text = await Deno.readTextFile(`${net.dir}/state/leases.json`).catch(() => "");
      return text.includes("10.8.0.2") ? text : undefined;
    });
    assertMatch(lease, /"address": "10\.8\.0\.2"/);
    assertEquals((await Deno.stat(`${net.dir}/state/leases.json`)).uid, 65534);

    // The registry, rewritten by root's CLI, is read again by nobody: a new route to a network
    // behind alice goes into the kernel (CAP_NET_ADMIN), and then a revocation ends her session.
    await net.vpn(["client", "set", "alice", "--dir", net.dir, "--route", "192.168.90.0/24"]);
    await server.waitForLog(/route 192\.168\.90\.0\/24 dev vpn\d+: a network behind a client/);
    const route = await net.server.run(["ip", "route", "show", "192.168.90.0/24"]);
    assertMatch(route.stdout, /dev vpn\d+/);
    await net.vpn(["client", "revoke", "alice", "--dir", net.dir]);
    await server.waitForLog(/alice: certificate revoked, dropping its session/);

    // At exit nobody undoes nat: the table goes, forwarding is off again.
    assertEquals(await server.stop(), 0, server.log);
    assertMatch(server.log, /turned on net\.ipv4\.ip_forward/);
    const tables = await net.server.run(["nft", "list", "tables"]);
    assert(!/vpn_/.test(tables.stdout), tables.stdout);
    const forwarding = await net.server.run(["sysctl", "-n", "net.ipv4.ip_forward"]);
    assertEquals(forwarding.stdout.trim(), "0", server.log);
  },
);

rootTest(
  "user: root keeps root; an unknown user or an unreachable PKI fails before the TUN",
  async () => {
    await using net = await Topology.create(0);
    await net.configure("user: root\n");
    const root = await net.startServer();
    assertEquals((await procStatus(`/proc/${root.child.pid}/status`)).Uid, "0\t0\t0\t0");
    assert(!/running as/.test(root.log), root.log);
    assertEquals(await root.stop(), 0, root.log);

    await net.configure("user: no-such-user\n");
    const unknown = net.spawn(net.server, ["serve", "--dir", net.dir]);
    assertEquals(await unknown.exited(), 2, unknown.log);
    assertMatch(
      unknown.log,
      /user in .*server\.yaml: there is no user "no-such-user" on this host; create it \(useradd/,
    );

    // A PKI under a directory only root may pass (the test's own, 0700).
    const inner = `${net.dir}/inner`;
    await net.vpn(["init", "--dir", inner]);
    const locked = net.spawn(net.server, ["serve", "--dir", inner]);
    assertEquals(await locked.exited(), 2, locked.log);
    assertMatch(
      locked.log,
      new RegExp(
        `the user nobody cannot reach the PKI directory ${inner}: ${net.dir} is mode 0700`,
      ),
    );
    const links = await net.server.run(["ip", "-o", "link", "show"]);
    assert(!/vpn\d/.test(links.stdout), `a TUN was made: ${links.stdout}`);
  },
);
