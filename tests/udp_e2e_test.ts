/**
 * `UdpSocket` GSO sends on a real kernel, in a namespace the test makes and removes: the FFI
 * work runs in `tests/helpers/udp_gso_probe.ts` inside it.
 */

import { assertEquals } from "./_assert.ts";
import { denoScript, Netns, rootTest } from "./_netns.ts";

const PROBE = new URL("./helpers/udp_gso_probe.ts", import.meta.url).pathname;

async function probe(ns: Netns, count: number, size: number): Promise<Record<string, unknown>> {
  const out = await ns.run(denoScript(PROBE, String(count), String(size)));
  return JSON.parse(out.stdout.trim());
}

rootTest("UdpSocket.sendBatch() uses GSO, and falls back where the route refuses it", async () => {
  await using ns = await Netns.create("gso");
  assertEquals(await probe(ns, 40, 1400), {
    sent: 40,
    intact: 40,
    gso: true,
    offloaded: 40,
    sendErrors: 0,
  });
  // Segments larger than the path MTU: the kernel refuses the GSO send (EMSGSIZE); the socket
  // sends the same datagrams one a message, which IP fragments, and keeps doing so.
  await ns.run(["ip", "link", "set", "lo", "mtu", "1300"]);
  assertEquals(await probe(ns, 40, 1400), {
    sent: 40,
    intact: 40,
    gso: false,
    offloaded: 0,
    sendErrors: 0,
  });
});
