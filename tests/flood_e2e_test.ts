/**
 * Fairness under a pre-auth flood, end to end: a real `vpn serve` in a namespace, one address
 * that holds 1,000 idle TCP connections to it (tests/helpers/idle_flood.ts, in a process of
 * its own with a raised file limit), and a real client from another address that must get in
 * meanwhile: `vpn connect` on our port, a stock `openvpn` on the OpenVPN TCP port. The caps
 * they rely on are mod/core/preauth.ts's: 8 connections in their handshake per source, and
 * 64 in all on our port, 256 on OpenVPN's.
 */

import { assert, assertGreater, assertMatch } from "./_assert.ts";
import { denoScript, rootTest } from "./_netns.ts";
import { addOvpnClient, OPENVPN_TCP_PORT, startOpenVpn, TUNNEL_UP } from "./_openvpn.ts";
import { Topology, type VpnProcess, waitFor } from "./_vpn.ts";
import type { ServerStatus } from "../mod/server.ts";

const FLOOD = new URL("./helpers/idle_flood.ts", import.meta.url).pathname;

/** What the flood helper printed last: `{opened, held, failed}`. */
function floodState(flood: VpnProcess): { opened: number; held: number; failed: number } {
  const lines = flood.log.trimEnd().split("\n");
  const last = lines.findLast((line) => line.startsWith("{"));
  return last === undefined ? { opened: 0, held: 0, failed: 0 } : JSON.parse(last);
}

/**
 * Starts the flood from client namespace 0 at `port` of the server, 500 connects a second, and
 * waits until it has opened 1,000 connections (those the server closed since included).
 */
async function flood(net: Topology, port: number): Promise<VpnProcess> {
  const flood = net.spawnCommand(net.clients[0]!, [
    "prlimit",
    "--nofile=4096:4096",
    ...denoScript(FLOOD, net.serverIp(0), String(port), "1000", "500"),
  ]);
  await waitFor("the flood's 1,000th connection", () => {
    if (floodState(flood).opened >= 1000) return true;
    // A helper that died says why in its output.
    if (flood.output.length > 0 && !flood.log.includes("{")) throw new Error(flood.log);
    return undefined;
  }, 30_000);
  return flood;
}

/** The server's status, through its control socket. */
async function status(net: Topology): Promise<ServerStatus> {
  const { stdout } = await net.vpn(["status", "--json", "--dir", net.dir]);
  return JSON.parse(stdout) as ServerStatus;
}

rootTest(
  "vpn serve under 1,000 idle TCP connections from one address: a client from another address gets its address within 10 s, and the flood's extra connections are refused per source",
  async () => {
    await using net = await Topology.create(2);
    const server = await net.startServer();
    const profile = await net.addClient("alice");
    const flooding = await flood(net, 1194);

    const alice = net.connect(1, profile);
    try {
      await net.waitForAddress(net.clients[1]!, "10.8.0.2", 10_000);
    } catch (error) {
      throw new Error(
        `${(error as Error).message}; the flood: ${JSON.stringify(floodState(flooding))}; ` +
          `client:\n${alice.log}\nserver:\n${server.log.slice(-4000)}`,
      );
    }

    // Still under the flood: the source holds its 8 places, no more.
    const now = await status(net);
    assert(now.preAuth <= 8, `${now.preAuth} connections in their handshake`);
    // Every connection of the flood past its source's 8 pushed out one of them.
    assertGreater(now.handshakes["busy-source"] ?? 0, 900, JSON.stringify(now.handshakes));
    assertGreater(now.counters.refused ?? 0, 900, JSON.stringify(now.counters));
    assertMatch(
      server.log,
      /refused 172\.30\.1\.2:\d+: busy-source: replaced by a newer connection from the same source \(8 in their handshake at most per source\)/,
    );
    assert(await net.ping(net.clients[1]!, "10.8.0.1"), alice.log);
  },
);

rootTest(
  "vpn serve under 1,000 idle TCP connections from one address to the OpenVPN TCP port: a stock openvpn client from another address gets its tunnel within 15 s",
  async () => {
    await using net = await Topology.create(2);
    const server = await net.startServer();
    const profile = await addOvpnClient(net, "bob", "tcp", 1);
    const flooding = await flood(net, OPENVPN_TCP_PORT);

    const bob = startOpenVpn(net, 1, profile);
    try {
      await bob.waitForLog(TUNNEL_UP, 15_000);
    } catch (error) {
      throw new Error(
        `${(error as Error).message}; the flood: ${JSON.stringify(floodState(flooding))}; ` +
          `server:\n${server.log.slice(-4000)}`,
      );
    }
    const now = await status(net);
    // The flood's 8 silent connections are no handshakes; bob's is over.
    assert(now.preAuth === 0, `${now.preAuth} OpenVPN handshakes in progress`);
    assertGreater(now.handshakes["busy-source"] ?? 0, 900, JSON.stringify(now.handshakes));
    assertMatch(
      server.log,
      /refused 172\.30\.1\.2:\d+: busy-source: replaced by a newer connection from the same source \(8 at most per source\)/,
    );
    assert(await net.ping(net.clients[1]!, "10.8.0.1"), bob.log);
  },
);
