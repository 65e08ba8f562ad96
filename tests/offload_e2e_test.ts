/**
 * TUN offload end to end: bulk TCP transfers both ways through the VPN, with offload on both
 * sides and on one side only, over TLS and over UDP. The receiving kernel checks every
 * checksum of the segments this project cut from super-packets: a wrong one stalls the
 * transfer, a wrong byte changes the hash.
 */

import { assert } from "./_assert.ts";
import { rootTest, transfer } from "./_netns.ts";
import { Topology } from "./_vpn.ts";

const BYTES = 24 << 20;

const CASES: { name: string; server: string; client: string[]; udp: boolean }[] = [
  { name: "TLS, offload on both sides", server: "", client: ["--proto", "tcp"], udp: false },
  {
    name: "TLS, offload on the server only",
    server: "",
    client: ["--proto", "tcp", "--no-offload"],
    udp: false,
  },
  {
    name: "TLS, offload on the client only",
    server: "offload: false\n",
    client: ["--proto", "tcp"],
    udp: false,
  },
  { name: "UDP, offload on both sides", server: "", client: ["--proto", "udp"], udp: true },
  {
    name: "UDP, offload on the server only",
    server: "",
    client: ["--proto", "udp", "--no-offload"],
    udp: true,
  },
];

for (const c of CASES) {
  rootTest(`vpn offload: bulk data arrives intact both ways (${c.name})`, async () => {
    await using net = await Topology.create(1);
    await net.configure(c.server);
    const server = await net.startServer();
    const client = net.clients[0]!;
    const vpn = net.connect(0, await net.addClient("alice"), c.client);
    await net.waitForAddress(client, "10.8.0.2");
    if (c.udp) await vpn.waitForLog(/data goes over UDP/);
    await transfer(client, net.server, "10.8.0.1", BYTES);
    await transfer(net.server, client, "10.8.0.2", BYTES);
    assert(!server.log.includes("disconnected"), server.log);
    // A data path that failed (a receive loop ended by an error) shows here, even when the
    // transfer got through by some other path.
    assert(!server.log.includes("[ERR]"), server.log);
    assert(!vpn.log.includes("[ERR]"), vpn.log);
  });
}
