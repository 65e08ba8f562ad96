/**
 * `/metrics` end to end: a real `vpn serve` with `metrics.listen` in its server.yaml and a real
 * `vpn connect` client, in namespaces (tests/_vpn.ts). Every scrape is read with the strict
 * exposition reader (tests/_exposition.ts); the counters move with the pings through the
 * tunnel; the endpoint is on the address given only; a taken port stops `vpn serve` with an
 * error that names it and the fix.
 */

import { assert, assertEquals, assertGreater, assertMatch } from "./_assert.ts";
import { type Exposition, parseExposition, valueOf } from "./_exposition.ts";
import { type Netns, rootTest } from "./_netns.ts";
import { Topology } from "./_vpn.ts";

const LISTEN = "127.0.0.1:9194";
const URL = `http://${LISTEN}/metrics`;

/** Scrapes `url` from inside `ns` with curl and reads it; fails on any HTTP error. */
async function scrape(ns: Netns, url = URL): Promise<Exposition> {
  const result = await ns.run(["curl", "-sS", "--fail", "--max-time", "5", url]);
  return parseExposition(result.stdout);
}

/** The sum of `name` over every sample whose labels include `labels`. */
function total(exposition: Exposition, name: string, labels: Record<string, string> = {}): number {
  return exposition.samples
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((sum, s) => sum + s.value, 0);
}

rootTest(
  "vpn serve with metrics.listen: /metrics parses, and its counters move with tunnel traffic",
  async () => {
    await using net = await Topology.create(1);
    await net.configure(`metrics:\n  listen: "${LISTEN}"\n`);
    const server = await net.startServer();
    await server.waitForLog(/metrics on http:\/\/127\.0\.0\.1:9194\/metrics/);
    const serverNs = net.server;

    const before = await scrape(serverNs);
    assertEquals(total(before, "vpn_sessions"), 0);
    assertEquals(valueOf(before, "vpn_handshakes_total", { result: "ok" }), undefined);
    assertGreater(valueOf(before, "vpn_process_resident_memory_bytes")!, 10_000_000);
    assertGreater(valueOf(before, "vpn_start_time_seconds")!, Date.now() / 1000 - 600);

    const client = net.clients[0]!;
    const vpn = net.connect(0, await net.addClient("alice"));
    await net.waitForAddress(client, "10.8.0.2");
    assert(await net.ping(client, "10.8.0.1", 5), vpn.log);

    const first = await scrape(serverNs);
    assertEquals(total(first, "vpn_sessions"), 1);
    assertEquals(valueOf(first, "vpn_handshakes_total", { result: "ok" }), 1);
    const alice = { name: "alice" };
    const packetsIn = valueOf(first, "vpn_session_received_packets_total", alice)!;
    const bytesIn = valueOf(first, "vpn_session_received_bytes_total", alice)!;
    const packetsOut = valueOf(first, "vpn_session_sent_packets_total", alice)!;
    // Five echo requests in, five replies out, of 84 bytes each (20 IP + 8 ICMP + 56 data).
    assert(packetsIn >= 5 && packetsOut >= 5, `in ${packetsIn}, out ${packetsOut}`);
    assert(bytesIn >= 5 * 84, `${bytesIn} bytes in`);
    // alice's is the only session yet: the totals since start are hers.
    assertEquals(valueOf(first, "vpn_received_packets_total"), packetsIn);

    assert(await net.ping(client, "10.8.0.1", 5), vpn.log);
    const second = await scrape(serverNs);
    const packetsIn2 = valueOf(second, "vpn_session_received_packets_total", alice)!;
    assert(packetsIn2 >= packetsIn + 5, `${packetsIn} then ${packetsIn2}`);
    assert(valueOf(second, "vpn_session_sent_bytes_total", alice)! >= 10 * 84);
    assert(valueOf(second, "vpn_up_seconds")! >= valueOf(first, "vpn_up_seconds")!);

    // Bound to 127.0.0.1 only: the client's side of the link reaches the VPN port, not this.
    const outside = await client.run(
      ["curl", "-sS", "--max-time", "3", `http://${net.serverIp(0)}:9194/metrics`],
      true,
    );
    assert(outside.code !== 0, `scraped from outside: ${outside.stdout}`);
    // And /metrics only.
    const other = await serverNs.run(
      ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:9194/"],
    );
    assertEquals(other.stdout, "404");
  },
);

rootTest("vpn serve with metrics.listen on a taken port fails naming the port", async () => {
  await using net = await Topology.create(0);
  await net.configure(`metrics:\n  listen: "${LISTEN}"\n`);
  const holder = net.spawnCommand(net.server, [
    Deno.execPath(),
    "eval",
    "Deno.listen({ hostname: '127.0.0.1', port: 9194 }); console.log('bound'); " +
    "await new Promise((resolve) => setTimeout(resolve, 60_000));",
  ]);
  await holder.waitForLog(/bound/);
  const server = net.spawn(net.server, ["serve", "--dir", net.dir]);
  const code = await server.exited(30_000);
  assert(code !== 0, server.log);
  assertMatch(
    server.log,
    /metrics\.listen 127\.0\.0\.1:9194: port 9194 is in use by another process; stop it, or set metrics\.listen in server\.yaml to a free port/,
  );
});
