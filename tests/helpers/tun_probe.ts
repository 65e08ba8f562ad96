/**
 * Runs inside a test's network namespace and drives a real TUN through `ffi/`, printing one
 * JSON line per event for the test to read. Modes:
 *
 * - `create NAME [offload]`: create, report `{name, vnetHdr, offloads}` or `{error}`, close.
 * - `responder`: create `vpnt0` (10.77.0.1/24, MTU 1400, up, route 10.78.0.0/24 into it), then
 *   answer each ICMP echo request read from it and report it; ends when stdin closes.
 * - `relay NETNS [plain]`: create two TUNs (with offload unless `plain`), move the second into
 *   NETNS, configure the first (10.79.0.1/24), then copy packets between them until stdin
 *   closes and report the largest read and the counts.
 *
 * @module
 */

import { LinuxTun, MAX_PACKET, type TunDevice } from "../../ffi/tun.ts";
import { Netlink } from "../../ffi/netlink.ts";
import { check, cString, libc } from "../../ffi/libc.ts";
import { O_CLOEXEC } from "../../ffi/constants.ts";

function report(event: Record<string, unknown>): void {
  console.log(JSON.stringify(event));
}

/** Resolves when stdin reaches end of file: the test's signal to finish. */
async function stdinClosed(): Promise<void> {
  for await (const _ of Deno.stdin.readable) { /* discard */ }
}

function batch(size: number): { bufs: Uint8Array[]; sizes: number[] } {
  return {
    bufs: Array.from({ length: 64 }, () => new Uint8Array(size)),
    sizes: new Array<number>(64).fill(0),
  };
}

function checksum(bytes: Uint8Array, start: number, end: number): number {
  let sum = 0;
  for (let i = start; i < end; i += 2) sum += (bytes[i]! << 8) | (bytes[i + 1] ?? 0);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/** Turns an IPv4 ICMP echo request into its reply in place; false for anything else. */
function echoReply(packet: Uint8Array, length: number): boolean {
  const ihl = (packet[0]! & 0x0f) * 4;
  if (packet[0]! >> 4 !== 4 || packet[9] !== 1 || packet[ihl] !== 8) return false;
  const view = new DataView(packet.buffer, packet.byteOffset, length);
  const source = view.getUint32(12);
  view.setUint32(12, view.getUint32(16));
  view.setUint32(16, source);
  packet[ihl] = 0; // echo reply
  view.setUint16(ihl + 2, 0);
  view.setUint16(ihl + 2, checksum(packet, ihl, length));
  return true;
}

async function responder(): Promise<void> {
  using tun = LinuxTun.create({ name: "vpnt0" });
  using nl = Netlink.open();
  const index = nl.linkIndex(tun.name);
  nl.setMtu(index, 1400);
  nl.addAddress(index, "10.77.0.1/24");
  nl.setLinkUp(index);
  nl.addRoute({ destination: "10.78.0.0/24", ifindex: index });
  report({
    ready: true,
    name: tun.name,
    index,
    link: nl.getLink(index),
    addresses: nl.listAddresses(index),
    routes: nl.listRoutes(4).filter((route) => route.ifindex === index),
  });
  const { bufs, sizes } = batch(2048);
  const done = stdinClosed().then(() => tun.close());
  for (let n; (n = await tun.read(bufs, sizes)) > 0;) {
    for (let i = 0; i < n; i++) {
      const packet = bufs[i]!;
      const destination = packet.subarray(16, 20).join(".");
      if (!echoReply(packet, sizes[i]!)) continue;
      report({ echoRequest: destination, length: sizes[i] });
      tun.write([packet.subarray(0, sizes[i])]);
    }
  }
  await done;
  report({ stats: tun.stats });
}

interface Flow {
  /** The largest packet read. */
  largest: number;
  /** Bytes read, headers included. */
  bytes: number;
}

async function pump(from: TunDevice, to: TunDevice, flow: Flow): Promise<void> {
  const { bufs, sizes } = batch(MAX_PACKET);
  const views: Uint8Array[] = new Array(64);
  for (let n; (n = await from.read(bufs, sizes)) > 0;) {
    for (let i = 0; i < n; i++) {
      views[i] = bufs[i]!.subarray(0, sizes[i]);
      if (sizes[i]! > flow.largest) flow.largest = sizes[i]!;
      flow.bytes += sizes[i]!;
    }
    to.write(views, n);
  }
}

async function relay(netns: string, offload: boolean): Promise<void> {
  using a = LinuxTun.create({ name: "vpnra", offload });
  using b = LinuxTun.create({ name: "vpnrb", offload });
  using nl = Netlink.open();
  const nsFd = check("open(netns)", libc().open(cString(`/var/run/netns/${netns}`), O_CLOEXEC));
  try {
    nl.setLinkNetns(nl.linkIndex(b.name), nsFd);
  } finally {
    libc().close(nsFd);
  }
  const index = nl.linkIndex(a.name);
  nl.addAddress(index, "10.79.0.1/24");
  nl.setLinkUp(index);
  report({ ready: true, offloads: a.offloads });
  const flow: Flow = { largest: 0, bytes: 0 };
  const started = performance.now();
  const pumps = Promise.all([pump(a, b, flow), pump(b, a, flow)]);
  await stdinClosed();
  const seconds = (performance.now() - started) / 1000;
  a.close();
  b.close();
  await pumps;
  report({ largestRead: flow.largest, bytes: flow.bytes, seconds, a: a.stats, b: b.stats });
}

function create(name: string, offload: boolean): void {
  try {
    using tun = LinuxTun.create({ name, offload });
    report({ name: tun.name, vnetHdr: tun.vnetHdr, offloads: tun.offloads });
  } catch (error) {
    report({ error: String(error), type: (error as Error).name });
  }
}

const [mode, arg, flag] = Deno.args;
if (mode === "create") create(arg!, flag === "offload");
else if (mode === "responder") await responder();
else if (mode === "relay") await relay(arg!, flag !== "plain");
else throw new Error(`tun_probe: unknown mode "${mode}"`);
