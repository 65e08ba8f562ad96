/**
 * Runs inside a test's network namespace: sends one batch of equal datagrams over loopback
 * with `UdpSocket.sendBatch()` and prints one JSON line: what arrived intact, and the sender's
 * GSO state and counters. The test sets the loopback MTU below the datagram size, so that the
 * kernel refuses the GSO send and the socket has to fall back.
 *
 * Usage: udp_gso_probe.ts COUNT SIZE
 *
 * @module
 */

import { encodeSockAddr, newSockAddr, UdpSocket } from "../../ffi/udp.ts";

const [count, size] = Deno.args.map(Number) as [number, number];
using sender = UdpSocket.bind("127.0.0.1", 0);
using receiver = UdpSocket.bind("127.0.0.1", 0);
const to = encodeSockAddr("127.0.0.1", receiver.port);
const bufs = Array.from({ length: count }, (_, i) => new Uint8Array(size).fill(i + 1));
const sent = sender.sendBatch(bufs, new Array<number>(count).fill(size), bufs.map(() => to), count);

const into = Array.from({ length: count }, () => new Uint8Array(size + 1));
const sizes = new Array<number>(count).fill(0);
const addrs = Array.from({ length: count }, () => newSockAddr());
let intact = 0;
const guard = setTimeout(() => receiver.close(), 5000);
while (intact < sent) {
  const n = await receiver.recv(into, sizes, addrs);
  if (n === 0) break;
  for (let k = 0; k < n; k++) {
    const first = into[k]![0]!;
    if (sizes[k] === size && into[k]!.subarray(0, size).every((b) => b === first)) intact++;
  }
}
clearTimeout(guard);
console.log(JSON.stringify({
  sent,
  intact,
  gso: sender.segmentationOffload,
  offloaded: sender.stats.offloaded,
  sendErrors: sender.stats.sendErrors,
}));
