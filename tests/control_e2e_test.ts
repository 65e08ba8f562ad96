/**
 * The control socket end to end: `vpn serve` in a namespace with one native client and one
 * stock OpenVPN client, and the CLI (`vpn status`, `vpn client kill`, `vpn reload`) in the root
 * namespace, talking to it through a socket in the test's directory (`control.socket`). The
 * counters are checked against pings sent; a kill frees the address and the client comes back;
 * a reload applies to the next connection; other users, a second server, a stale socket and
 * malformed requests each get their answer.
 */

import { assert, assertEquals, assertGreater, assertMatch } from "./_assert.ts";
import { rootTest, run } from "./_netns.ts";
import { Topology } from "./_vpn.ts";
import { addOvpnClient, mergeServerConfig, startOpenVpn, waitForTunnel } from "./_openvpn.ts";
import { controlRequest } from "../mod/control/client.ts";
import type { ServerStatus } from "../mod/server.ts";
import { within } from "./_wait.ts";

/** Runs the CLI as `nobody` with capability `cap` (to read the Deno cache, or more). */
function asNobody(cap: string): string[] {
  return [
    "setpriv",
    "--reuid",
    "nobody",
    "--regid",
    "nogroup",
    "--clear-groups",
    "--inh-caps",
    `+${cap}`,
    "--ambient-caps",
    `+${cap}`,
  ];
}

const MAIN = new URL("../main.ts", import.meta.url).pathname;

/** One raw exchange on the socket: the lines written, and every line read until it closes. */
async function rawExchange(path: string, text: string, replies: number): Promise<string[]> {
  const conn = await Deno.connect({ transport: "unix", path });
  try {
    await conn.write(new TextEncoder().encode(text));
    const lines: string[] = [];
    let pending = "";
    const buffer = new Uint8Array(65536);
    const decoder = new TextDecoder();
    while (lines.length < replies) {
      const n = await within(conn.read(buffer), 5000, "a reply on the control socket");
      if (n === null) break;
      pending += decoder.decode(buffer.subarray(0, n));
      const parts = pending.split("\n");
      pending = parts.pop()!;
      lines.push(...parts);
    }
    return lines;
  } finally {
    conn.close();
  }
}

rootTest("vpn status, client kill and reload drive a running server", async () => {
  await using net = await Topology.create(2);
  const socket = `${net.dir}/control.sock`;
  await mergeServerConfig(net, { "control.socket": socket });
  const vpn = (args: string[], allowFail = false) =>
    net.vpn([...args, "--dir", net.dir], allowFail);
  // Without -v: log.level info, until the reload makes it debug.
  const server = net.spawn(net.server, ["serve", "--dir", net.dir]);
  await server.waitForLog(/listening on/);
  assertEquals((await Deno.lstat(socket)).mode! & 0o777, 0o600, "the socket's mode");

  const alice = net.connect(0, await net.addClient("alice"));
  await alice.waitForLog(/connected: address 10\.8\.0\.2\//, 20_000);
  const bob = startOpenVpn(net, 1, await addOvpnClient(net, "bob", "udp", 1));
  await waitForTunnel(bob, server);
  assert(await net.ping(net.clients[0]!, "10.8.0.1", 5), "alice pings the server");
  assert(await net.ping(net.clients[1]!, "10.8.0.1", 5), "bob pings the server");

  const status = JSON.parse((await vpn(["status", "--json"])).stdout) as ServerStatus;
  assertGreater(status.pid, 1);
  assertEquals(status.subnet, "10.8.0.0/24");
  assert(status.listeners.some((l) => l.startsWith("TLS ")), `listeners ${status.listeners}`);
  const a = status.sessions.find((s) => s.name === "alice");
  const b = status.sessions.find((s) => s.name === "bob");
  assert(a !== undefined && b !== undefined, `sessions ${JSON.stringify(status.sessions)}`);
  assertMatch(a.protocol, /^native\//);
  assertEquals(b.protocol, "openvpn/udp");
  assertEquals(a.address, "10.8.0.2");
  assertEquals(b.address, "10.8.0.3");
  assertMatch(a.peer, /^172\.30\.1\.2:\d+$/);
  assertMatch(b.peer, /^172\.30\.2\.2:\d+$/);
  for (const s of [a, b]) {
    // The pings and their replies, and whatever else the client sent (IPv6 router solicits).
    assert(s.packetsIn >= 5, `${s.name} packetsIn ${s.packetsIn} counts the 5 pings`);
    assert(s.packetsOut >= 5, `${s.name} packetsOut ${s.packetsOut} counts the 5 replies`);
    assert(s.bytesIn >= 5 * 84, `${s.name} bytesIn ${s.bytesIn}`);
    assert(Date.parse(s.lastHeardAt) >= Date.parse(s.connectedAt), `${s.name} times`);
  }

  const table = (await vpn(["status"])).stdout;
  assertMatch(table, /^vpn \S+, pid \d+, up /);
  assertMatch(table, /\n2 sessions\n/);
  assertMatch(table, /\nNAME\s+PROTO\s+CIPHER\s+PEER\s+ADDRESSES\s+SINCE\s+LAST-HEARD\s+IN/);
  assertMatch(table, /\nbob\s+openvpn\/udp\s+AES-256-GCM\s+172\.30\.2\.2:\d+\s+10\.8\.0\.3/);
  assertMatch(table, /\nalice\s+native\/\S+\s+\S+\s+172\.30\.1\.2:\d+\s+10\.8\.0\.2/);
  assert(!/control: status/.test(server.log), "status is logged at debug only");

  // reload: a pushed route and log.level, applied to the next connection.
  await mergeServerConfig(net, { "log.level": "debug", "push.routes": ["192.168.77.0/24"] });
  const reloaded = (await vpn(["reload"])).stdout;
  assertMatch(reloaded, /applied: .*push/);
  assertMatch(reloaded, /applied: .*log\.level/);
  await vpn(["status"]);
  await server.waitForLog(/control: status from uid 0/);

  // kill: the session ends at once and its address is free; the native client comes back.
  const killed = await controlRequest(socket, { cmd: "kill", name: "alice" }, 5000);
  assertEquals(killed, { killed: true, protocol: a.protocol, reconnects: true });
  const after = await controlRequest(socket, { cmd: "status" }, 5000) as ServerStatus;
  assertEquals(after.sessions.map((s) => s.name), ["bob"]);
  await alice.waitForLog(/ended by the operator[\s\S]*reconnecting in/);
  await alice.waitForLog(
    /connected: address 10\.8\.0\.2\/[^\n]*routes 192\.168\.77\.0\/24/,
    20_000,
  );
  const kill = await vpn(["client", "kill", "bob"]);
  assertMatch(
    kill.stdout,
    /ended the session of "bob" \(openvpn\/udp\); the client will reconnect/,
  );
  const none = await vpn(["client", "kill", "nobody-here"], true);
  assertEquals(none.code, 1);
  assertMatch(none.stderr, /"nobody-here" has no session/);

  // Malformed requests get an error line, and the connection goes on after one.
  const [bad, good] = await rawExchange(
    socket,
    'garbage\n{"v":1,"id":5,"cmd":"status"}\n',
    2,
  );
  assertMatch(bad!, /^\{"v":1,"id":null,"ok":false,"error":"the request is not JSON/);
  assertMatch(good!, /^\{"v":1,"id":5,"ok":true,"result":\{"version"/);
  const overlong = await rawExchange(socket, `${"x".repeat(70_000)}\n`, 2);
  assertEquals(overlong.length, 1, "an overlong line gets one answer, then the socket closes");
  assertMatch(overlong[0]!, /longer than 65536 bytes; closing/);

  // Another user: shut out by the socket's mode, and by SO_PEERCRED where the mode is passed.
  const cli = [Deno.execPath(), "run", "--allow-all", "--no-check", MAIN];
  const reader = await run(
    [...asNobody("dac_read_search"), ...cli, "status", "--dir", net.dir],
    true,
  );
  assertEquals(reader.code, 1, reader.stderr);
  assertMatch(
    reader.stderr,
    new RegExp(`permission denied: the control socket ${socket} is root's \\(mode 0600\\)`),
  );
  assertMatch(reader.stderr, /run this as root \(sudo\)/);
  const overrider = await run(
    [...asNobody("dac_override"), ...cli, "status", "--dir", net.dir],
    true,
  );
  assertEquals(overrider.code, 1, overrider.stderr);
  assertMatch(overrider.stderr, /uid 65534 may not use this control socket/);
  await server.waitForLog(/refused uid 65534/);

  // A second server on the same directory is refused by the first one's socket.
  const second = net.spawn(net.server, ["serve", "--dir", net.dir]);
  assertEquals(await second.exited(30_000), 1, second.log);
  assertMatch(
    second.log,
    new RegExp(`a server already runs on ${net.dir} \\(pid ${status.pid}, socket ${socket}\\)`),
  );

  // A server killed outright leaves its socket behind; the next one replaces it.
  await server.stop("SIGKILL");
  assert((await Deno.lstat(socket)).isSocket, "the killed server's socket is left");
  const gone = await vpn(["status"], true);
  assertMatch(gone.stderr, /no server runs on .*; start it with vpn serve --dir/);
  const third = net.spawn(net.server, ["serve", "--dir", net.dir]);
  await third.waitForLog(/listening on/);
  assertMatch(third.log, /replacing the stale control socket/);
  const fresh = JSON.parse((await vpn(["status", "--json"])).stdout) as ServerStatus;
  assert(fresh.pid !== status.pid, "the new server answers");
});
