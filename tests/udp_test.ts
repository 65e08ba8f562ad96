/**
 * `UdpSocket` over loopback: addresses, batches, GSO and GRO, truncation, closing. Every
 * receive is bounded (`recvWithin`, `within`), so a lost datagram fails the test instead of
 * hanging it; no test asserts how long something took.
 */

import {
  assert,
  assertEquals,
  assertGreater,
  assertMatch,
  assertRejects,
  assertThrows,
} from "./_assert.ts";
import { waitUntil, within } from "./_wait.ts";
import {
  copySockAddr,
  encodeSockAddr,
  formatSockAddr,
  localAddressOf,
  MAX_UDP_PAYLOAD,
  newSockAddr,
  readControl,
  sameLocalAddr,
  sameSockAddr,
  type SockAddr,
  SOCKADDR_LEN,
  SOCKADDR_SLOT_LEN,
  UdpError,
  UdpSocket,
  writePacketInfo,
} from "../ffi/udp.ts";

// ---------------------------------------------------------------------------------------------
// Socket addresses

Deno.test("encodeSockAddr() writes a sockaddr_in: family LE, port BE, address", () => {
  const addr = encodeSockAddr("10.8.0.1", 1194);
  assertEquals(addr.length, SOCKADDR_SLOT_LEN);
  assertEquals([...addr.subarray(0, 16)], [2, 0, 0x04, 0xaa, 10, 8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
});

Deno.test("encodeSockAddr() writes a sockaddr_in6 and takes brackets", () => {
  const addr = encodeSockAddr("[fd00::1]", 443);
  assertEquals([...addr.subarray(0, 8)], [10, 0, 0x01, 0xbb, 0, 0, 0, 0]);
  assertEquals(addr[8], 0xfd);
  assertEquals(addr[23], 1);
  assertEquals([...addr.subarray(24, 28)], [0, 0, 0, 0], "scope id");
  assert(sameSockAddr(addr, encodeSockAddr("fd00::1", 443)));
});

Deno.test("encodeSockAddr() maps IPv4 for an IPv6 socket and unmaps it for an IPv4 one", () => {
  const mapped = encodeSockAddr("127.0.0.1", 5, undefined, 6);
  assertEquals(formatSockAddr(mapped), "[::ffff:127.0.0.1]:5");
  assert(sameSockAddr(mapped, encodeSockAddr("::ffff:127.0.0.1", 5)));
  assertEquals(formatSockAddr(encodeSockAddr("::ffff:127.0.0.1", 5, undefined, 4)), "127.0.0.1:5");
  assertEquals(formatSockAddr(encodeSockAddr("::1", 5, undefined, 6)), "[::1]:5");
  assertThrows(() => encodeSockAddr("::1", 5, undefined, 4), TypeError, /bind "::"/);
});

Deno.test("encodeSockAddr() overwrites the slot it is given", () => {
  const slot = encodeSockAddr("fd00::ffff", 65535);
  const same = encodeSockAddr("1.2.3.4", 0, slot);
  assert(same === slot);
  assertEquals([...slot.subarray(8)], new Array(40).fill(0), "the rest, local address too");
  assertEquals(formatSockAddr(slot), "1.2.3.4:0");
});

Deno.test("encodeSockAddr() refuses host names, bad brackets, bad ports and short slots", () => {
  assertThrows(() => encodeSockAddr("localhost", 1), TypeError, /Cannot parse IP address/);
  assertThrows(() => encodeSockAddr("[1.2.3.4]", 1), TypeError, /brackets are for IPv6/);
  assertThrows(() => encodeSockAddr("1.2.3.4", 65536), RangeError, /integer 0 to 65535/);
  assertThrows(() => encodeSockAddr("1.2.3.4", 1.5), RangeError, /integer 0 to 65535/);
  assertThrows(() => encodeSockAddr("1.2.3.4", 1, new Uint8Array(28)), RangeError, /48 bytes/);
});

Deno.test("formatSockAddr() prints IPv4, IPv6 with scope, and unset slots", () => {
  assertEquals(formatSockAddr(encodeSockAddr("192.0.2.7", 80)), "192.0.2.7:80");
  assertEquals(formatSockAddr(encodeSockAddr("2001:db8::", 80)), "[2001:db8::]:80");
  const linkLocal = encodeSockAddr("fe80::1", 9);
  linkLocal[24] = 2;
  assertEquals(formatSockAddr(linkLocal), "[fe80::1%2]:9");
  assertEquals(formatSockAddr(newSockAddr()), "(address family 0)");
});

Deno.test("sameSockAddr() compares family, port and address only", () => {
  const a = encodeSockAddr("10.0.0.1", 1000);
  const b = encodeSockAddr("10.0.0.1", 1000);
  b[20] = 99; // bytes past a sockaddr_in are not part of it
  assert(sameSockAddr(a, b));
  assert(!sameSockAddr(a, encodeSockAddr("10.0.0.1", 1001)));
  assert(!sameSockAddr(a, encodeSockAddr("10.0.0.2", 1000)));
  assert(!sameSockAddr(a, encodeSockAddr("10.0.0.1", 1000, undefined, 6)));
  const v6 = encodeSockAddr("fd00::1", 1000);
  assert(!sameSockAddr(v6, encodeSockAddr("fd00::2", 1000)));
  const flow = encodeSockAddr("fd00::1", 1000);
  flow[4] = 1; // flow info
  assert(sameSockAddr(v6, flow));
});

Deno.test("copySockAddr() copies the peer and the local address", () => {
  const to = newSockAddr();
  const from = encodeSockAddr("fd00::9", 7);
  from.set([10, 0, 0, 0, 0x20, 0x01, 0x0d, 0xb8], SOCKADDR_LEN); // local 2001:db8::
  copySockAddr(from, to);
  assertEquals(formatSockAddr(to), "[fd00::9]:7");
  assertEquals(localAddressOf(to), "2001:db8::");
  assert(sameLocalAddr(from, to));
  copySockAddr(encodeSockAddr("fd00::9", 7), to);
  assertEquals(localAddressOf(to), undefined, "an encoded address has none");
  assert(!sameLocalAddr(from, to));
});

// ---------------------------------------------------------------------------------------------
// Packet info control messages (multi-homed hosts)

/** A control buffer as the kernel writes it: `cmsghdr`s, each padded to 8 bytes. */
function controlMessages(...messages: { level: number; type: number; data: number[] }[]) {
  const bytes = new Uint8Array(64);
  const view = new DataView(bytes.buffer);
  let at = 0;
  for (const { level, type, data } of messages) {
    view.setUint32(at, 16 + data.length, true); // cmsg_len, a size_t
    view.setInt32(at + 8, level, true);
    view.setInt32(at + 12, type, true);
    bytes.set(data, at + 16);
    at += (16 + data.length + 7) & ~7;
  }
  return { view, length: at };
}

const le32 = (n: number) => [n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, n >>> 24];
// IP_PKTINFO (SOL_IP 0, type 8): ipi_ifindex 3, ipi_spec_dst 198.51.100.1, ipi_addr 198.51.100.9.
const PKTINFO4 = { level: 0, type: 8, data: [...le32(3), 198, 51, 100, 1, 198, 51, 100, 9] };
// IPV6_PKTINFO (IPPROTO_IPV6 41, type 50): ipi6_addr 2001:db8::1, ipi6_ifindex 7.
const V6 = [0x20, 0x01, 0x0d, 0xb8, ...new Array(11).fill(0), 1];
const PKTINFO6 = { level: 41, type: 50, data: [...V6, ...le32(7)] };
// UDP_GRO (SOL_UDP 17, type 104): an int segment size.
const GRO = (size: number) => ({ level: 17, type: 104, data: le32(size) });

Deno.test("readControl() takes IP_PKTINFO's ipi_spec_dst and UDP_GRO's size, in either order", () => {
  for (const order of [[GRO(1400), PKTINFO4], [PKTINFO4, GRO(1400)]]) {
    const { view, length } = controlMessages(...order);
    const into = encodeSockAddr("10.0.0.2", 5000);
    assertEquals(readControl(view, 0, length, into), 1400);
    assertEquals(localAddressOf(into), "198.51.100.1");
    assertEquals([...into.subarray(SOCKADDR_LEN, SOCKADDR_LEN + 4)], [2, 0, 0, 0], "AF_INET");
    assertEquals(formatSockAddr(into), "10.0.0.2:5000", "the peer is untouched");
  }
});

Deno.test("readControl() takes IPV6_PKTINFO, v4-mapped too, and clears what a read lacks", () => {
  const into = newSockAddr();
  const six = controlMessages(PKTINFO6);
  assertEquals(readControl(six.view, 0, six.length, into), 0);
  assertEquals(localAddressOf(into), "2001:db8::1");
  const mapped = [...new Array(10).fill(0), 0xff, 0xff, 198, 51, 100, 1];
  const v4 = controlMessages({ level: 41, type: 50, data: [...mapped, ...le32(2)] });
  readControl(v4.view, 0, v4.length, into);
  assertEquals(localAddressOf(into), "::ffff:198.51.100.1");
  const gro = controlMessages(GRO(1200));
  assertEquals(readControl(gro.view, 0, gro.length, into), 1200);
  assertEquals(localAddressOf(into), undefined);
  assertEquals([...into.subarray(SOCKADDR_LEN)], new Array(20).fill(0));
});

Deno.test("readControl() stops at a malformed or cut message instead of reading past it", () => {
  const into = newSockAddr();
  const { view, length } = controlMessages(GRO(1000), PKTINFO4);
  // Cut inside the second message: only the first is whole.
  assertEquals(readControl(view, 0, length - 8, into), 1000);
  assertEquals(localAddressOf(into), undefined);
  // A cmsg_len below the header's size: trusted, the next "message" would start inside this
  // one (or, at 0, never move on).
  const inner = controlMessages(PKTINFO4);
  const nested = new Uint8Array(64);
  nested.set(new Uint8Array(inner.view.buffer, 0, inner.length), 8);
  const bad = new DataView(nested.buffer);
  for (const short of [8, 0]) {
    bad.setUint32(0, short, true);
    assertEquals(readControl(bad, 0, 8 + inner.length, into), 0);
    assertEquals(localAddressOf(into), undefined, `cmsg_len ${short}`);
  }
  // One that claims more than the buffer holds.
  view.setUint32(0, 200, true);
  assertEquals(readControl(view, 0, length, into), 0);
  assertEquals(readControl(view, 0, 0, into), 0, "no control messages at all");
});

Deno.test("writePacketInfo() writes IP_PKTINFO with ipi_spec_dst and IPV6_PKTINFO, ifindex 0", () => {
  const from = newSockAddr();
  const four = controlMessages(PKTINFO4);
  readControl(four.view, 0, four.length, from);
  const out = new Uint8Array(64).fill(0xee);
  assertEquals(writePacketInfo(out, 8, 4, from), 32, "CMSG_SPACE(12)");
  assertEquals([...out.subarray(0, 8)], new Array(8).fill(0xee), "nothing before `at`");
  assertEquals([...out.subarray(8, 40)], [
    ...[28, 0, 0, 0, 0, 0, 0, 0], // cmsg_len 16 + 12
    ...le32(0), // SOL_IP
    ...le32(8), // IP_PKTINFO
    ...le32(0), // ipi_ifindex: the route chooses
    ...[198, 51, 100, 1], // ipi_spec_dst: the source
    ...[0, 0, 0, 0], // ipi_addr
    ...[0, 0, 0, 0], // padding
  ]);
  assertEquals(out[40], 0xee, "nothing past its space");
  assertEquals(writePacketInfo(out, 0, 6, from), 0, "an IPv4 address for an IPv6 socket: none");

  const six = controlMessages(PKTINFO6);
  readControl(six.view, 0, six.length, from);
  assertEquals(writePacketInfo(out, 0, 6, from), 40, "CMSG_SPACE(20)");
  assertEquals([...out.subarray(0, 40)], [
    ...[36, 0, 0, 0, 0, 0, 0, 0], // cmsg_len 16 + 20
    ...le32(41), // IPPROTO_IPV6
    ...le32(50), // IPV6_PKTINFO
    ...V6, // ipi6_addr: the source
    ...le32(0), // ipi6_ifindex
    ...[0, 0, 0, 0], // padding
  ]);
  assertEquals(writePacketInfo(out, 0, 6, encodeSockAddr("::1", 1)), 0, "no local address");
});

// ---------------------------------------------------------------------------------------------
// Sockets over loopback

interface Slots {
  bufs: Uint8Array[];
  sizes: number[];
  addrs: SockAddr[];
}

function slots(count: number, size: number): Slots {
  return {
    bufs: Array.from({ length: count }, () => new Uint8Array(size)),
    sizes: new Array<number>(count).fill(0),
    addrs: Array.from({ length: count }, () => newSockAddr()),
  };
}

/** `socket.recv()` into `into`, or an error after 5 s (the socket's disposal ends the call). */
function recvWithin(socket: UdpSocket, into: Slots, segments?: number[]): Promise<number> {
  return within(
    socket.recv(into.bufs, into.sizes, into.addrs, segments),
    5000,
    `datagrams on UDP port ${socket.port}`,
  );
}

/**
 * Threads of this process blocked in a poll over two fds now: a `recv()` waiting on its socket
 * and its wake-up eventfd (ffi/readiness.ts). Reads /proc/self/task/N/syscall, whose first
 * fields are the syscall number and its arguments.
 */
function threadsInPoll(): number {
  const poll = Deno.build.arch === "x86_64" ? "7" : "73"; // poll; ppoll where there is no poll
  let count = 0;
  for (const task of Deno.readDirSync("/proc/self/task")) {
    let fields: string[];
    try {
      fields = Deno.readTextFileSync(`/proc/self/task/${task.name}/syscall`).split(" ");
    } catch {
      continue; // the thread ended between the listing and the read
    }
    if (fields[0] === poll && fields[2] === "0x2") count++;
  }
  return count;
}

/** The eventfds this process holds: fd number to its /proc fdinfo text. */
function eventfds(): Map<string, string> {
  const found = new Map<string, string>();
  for (const entry of Deno.readDirSync("/proc/self/fd")) {
    try {
      if (!Deno.readLinkSync(`/proc/self/fd/${entry.name}`).includes("[eventfd]")) continue;
      found.set(entry.name, Deno.readTextFileSync(`/proc/self/fdinfo/${entry.name}`));
    } catch {
      continue; // the fd was closed between the listing and the read (the listing's own fd)
    }
  }
  return found;
}

/** The counter of eventfd `fd` (fdinfo prints it in hex), or undefined once it is closed. */
function eventCount(fd: string): number | undefined {
  const info = eventfds().get(fd);
  const count = info === undefined ? undefined : /eventfd-count:\s*([0-9a-f]+)/.exec(info)?.[1];
  return count === undefined ? undefined : parseInt(count, 16);
}

/** The size of test datagram i: the edge cases first, then a spread. */
function sizeOf(i: number): number {
  const edges = [0, 1, 1472, MAX_UDP_PAYLOAD, 1400];
  return edges[i] ?? (i % 100 === 50 ? 9000 : (i * 37) % 1500);
}

function fill(buf: Uint8Array, i: number, size: number): void {
  for (let j = 0; j < size; j++) buf[j] = (i * 7 + j) & 0xff;
}

function intact(buf: Uint8Array, i: number, size: number): boolean {
  for (let j = 0; j < size; j++) if (buf[j] !== ((i * 7 + j) & 0xff)) return false;
  return true;
}

/**
 * Receives until `want` datagrams arrived, checking each in order against `sizeOf`/`fill` and
 * its source against `from`. Closes the socket after 5 s so that a lost datagram fails the test
 * rather than hanging it.
 */
async function receive(
  socket: UdpSocket,
  into: Slots,
  first: number,
  want: number,
  from: SockAddr,
): Promise<number> {
  const guard = setTimeout(() => socket.close(), 5000);
  let got = 0;
  try {
    while (got < want) {
      const n = await socket.recv(into.bufs, into.sizes, into.addrs);
      if (n === 0) break;
      for (let k = 0; k < n; k++) {
        const i = first + got + k;
        assertEquals(into.sizes[k], sizeOf(i), `size of datagram ${i}`);
        assert(intact(into.bufs[k]!, i, sizeOf(i)), `content of datagram ${i}`);
        assert(sameSockAddr(into.addrs[k]!, from), `source ${formatSockAddr(into.addrs[k]!)}`);
      }
      got += n;
    }
  } finally {
    clearTimeout(guard);
  }
  return got;
}

const ROUNDS = 10;
const PER_ROUND = 100;

Deno.test("UdpSocket.sendTo() delivers 1000 datagrams of 0 to 65507 bytes to recv() batches", async () => {
  using sender = UdpSocket.bind("127.0.0.1", 0);
  using receiver = UdpSocket.bind("127.0.0.1", 0);
  const to = encodeSockAddr("127.0.0.1", receiver.port);
  const from = encodeSockAddr("127.0.0.1", sender.port);
  const out = new Uint8Array(MAX_UDP_PAYLOAD);
  const into = slots(64, MAX_UDP_PAYLOAD);
  // Rounds small enough for the socket buffer: a datagram lost there would fail the test.
  for (let round = 0; round < ROUNDS; round++) {
    for (let k = 0; k < PER_ROUND; k++) {
      const i = round * PER_ROUND + k;
      fill(out, i, sizeOf(i));
      assert(sender.sendTo(out, sizeOf(i), to), `send ${i}`);
    }
    assertEquals(await receive(receiver, into, round * PER_ROUND, PER_ROUND, from), PER_ROUND);
  }
  assertEquals(sender.stats, {
    received: 0,
    sent: 1000,
    sendErrors: 0,
    truncated: 0,
    offloaded: 0,
  });
  assertEquals(receiver.stats.received, 1000);
  assertEquals(receiver.stats.truncated, 0);
});

Deno.test("UdpSocket.sendBatch() delivers 1000 datagrams over ::1 to recv() batches", async () => {
  using sender = UdpSocket.bind("::1", 0);
  using receiver = UdpSocket.bind("[::1]", 0);
  assertEquals(sender.family, 6);
  const to = encodeSockAddr("::1", receiver.port);
  const from = encodeSockAddr("::1", sender.port);
  const out = slots(PER_ROUND, MAX_UDP_PAYLOAD);
  const into = slots(64, MAX_UDP_PAYLOAD);
  for (let round = 0; round < ROUNDS; round++) {
    for (let k = 0; k < PER_ROUND; k++) {
      const i = round * PER_ROUND + k;
      fill(out.bufs[k]!, i, sizeOf(i));
      out.sizes[k] = sizeOf(i);
      copySockAddr(to, out.addrs[k]!);
    }
    assertEquals(sender.sendBatch(out.bufs, out.sizes, out.addrs, PER_ROUND), PER_ROUND);
    assertEquals(await receive(receiver, into, round * PER_ROUND, PER_ROUND, from), PER_ROUND);
  }
  assertEquals(sender.stats.sent, 1000);
  assertEquals(receiver.stats.received, 1000);
});

Deno.test("UdpSocket.sendBatch() sends part of a batch and reuses one address for all", async () => {
  using sender = UdpSocket.bind("127.0.0.1", 0);
  using receiver = UdpSocket.bind("127.0.0.1", 0);
  const to = encodeSockAddr("127.0.0.1", receiver.port);
  const out = slots(8, 1500);
  const addrs = new Array<SockAddr>(8).fill(to);
  for (let i = 0; i < 3; i++) {
    fill(out.bufs[i]!, i, sizeOf(i + 5));
    out.sizes[i] = sizeOf(i + 5);
  }
  assertEquals(sender.sendBatch(out.bufs, out.sizes, addrs, 3), 3);
  const into = slots(8, 1500);
  assertEquals(await recvWithin(receiver, into), 3);
  assertEquals(into.sizes.slice(0, 3), [sizeOf(5), sizeOf(6), sizeOf(7)]);
  assertEquals(sender.sendBatch(out.bufs, out.sizes, addrs, 0), 0);
});

for (const host of ["127.0.0.1", "::1"]) {
  Deno.test(`UdpSocket.sendBatch() sends runs of equal datagrams to one address with GSO (${host})`, async () => {
    using sender = UdpSocket.bind(host, 0);
    using receiver = UdpSocket.bind(host, 0);
    using other = UdpSocket.bind(host, 0);
    const to = encodeSockAddr(host, receiver.port);
    const elsewhere = encodeSockAddr(host, other.port);
    // 50 of 1400 bytes and one of 600 to `to` (one GSO message of MAX_SEGMENTS and one of the
    // rest), one to another socket, then 3 of unequal sizes to `to` again.
    const sizes = [...new Array<number>(50).fill(1400), 600, 1400, 900, 1400, 1000];
    const out = slots(sizes.length, 1500);
    sizes.forEach((size, i) => {
      fill(out.bufs[i]!, i, size);
      out.sizes[i] = size;
      copySockAddr(i === 51 ? elsewhere : to, out.addrs[i]!);
    });
    assertEquals(sender.sendBatch(out.bufs, out.sizes, out.addrs, sizes.length), sizes.length);
    assert(sender.segmentationOffload);
    assertEquals(sender.stats.offloaded, 51 + 2, "the two runs of one size went as GSO");
    const into = slots(64, 1500);
    const got: number[] = [];
    while (got.length < sizes.length - 1) {
      const n = await recvWithin(receiver, into);
      assert(n > 0, `recv() ended after ${got.length} datagrams`);
      for (let k = 0; k < n; k++) {
        const i = got.length < 51 ? got.length : got.length + 1; // datagram 51 went elsewhere
        assertEquals(into.sizes[k], sizes[i], `size of datagram ${i}`);
        assert(intact(into.bufs[k]!, i, sizes[i]!), `content of datagram ${i}`);
        got.push(i);
      }
    }
    assertEquals(await recvWithin(other, into), 1);
    assertEquals(into.sizes[0], 1400);
  });
}

// The last case: IPv4 datagrams into a dual-stack socket, as on a server bound to "::".
for (const [host, bound] of [["127.0.0.1", "127.0.0.1"], ["::1", "::1"], ["127.0.0.1", "::"]]) {
  Deno.test(`UdpSocket with GRO receives a GSO send as one read and its segment size (${host} to ${bound})`, async () => {
    using sender = UdpSocket.bind(host!, 0);
    using receiver = UdpSocket.bind(bound!, 0);
    assert(receiver.enableGro(), "this kernel takes UDP_GRO");
    const to = encodeSockAddr(host!, receiver.port);
    const sizes = [...new Array<number>(30).fill(1400), 600, 1000];
    const out = slots(sizes.length, 1500);
    sizes.forEach((size, i) => {
      fill(out.bufs[i]!, i, size);
      out.sizes[i] = size;
      copySockAddr(to, out.addrs[i]!);
    });
    assertEquals(sender.sendBatch(out.bufs, out.sizes, out.addrs, sizes.length), sizes.length);
    const into = slots(8, 65536);
    const segments = new Array<number>(8).fill(0);
    await assertRejects(
      () => recvWithin(receiver, into),
      Error,
      /GRO is on, so recv\(\) needs the segments array/,
    );
    const got: number[] = [];
    let joined = 0;
    while (got.length < sizes.length) {
      const n = await recvWithin(receiver, into, segments);
      assert(n > 0, `recv() ended after ${got.length} datagrams`);
      for (let k = 0; k < n; k++) {
        const size = into.sizes[k]!;
        const step = segments[k]! || size;
        if (segments[k]! > 0) joined++;
        for (let at = 0; at < size; at += step) {
          const i = got.length;
          const datagram = into.bufs[k]!.subarray(at, Math.min(at + step, size));
          assertEquals(datagram.length, sizes[i], `size of datagram ${i}`);
          assert(intact(datagram, i, sizes[i]!), `content of datagram ${i}`);
          got.push(i);
        }
      }
    }
    assertGreater(joined, 0, "at least one read joined several datagrams");
    assertEquals(receiver.stats.received, sizes.length);
  });
}

Deno.test("UdpSocket.sendBatch() skips a datagram the kernel refuses and sends the rest", async () => {
  using sender = UdpSocket.bind("127.0.0.1", 0);
  using receiver = UdpSocket.bind("127.0.0.1", 0);
  const to = encodeSockAddr("127.0.0.1", receiver.port);
  const out = slots(3, 10);
  out.sizes.fill(10);
  out.bufs[0]!.fill(1);
  out.bufs[2]!.fill(3);
  copySockAddr(to, out.addrs[0]!);
  encodeSockAddr("::1", receiver.port, out.addrs[1]!); // IPv6 on an IPv4 socket: EAFNOSUPPORT
  copySockAddr(to, out.addrs[2]!);
  assertEquals(sender.sendBatch(out.bufs, out.sizes, out.addrs, 3), 2);
  assertEquals(sender.stats.sendErrors, 1);
  assert(!sender.sendTo(out.bufs[1]!, 10, out.addrs[1]!));
  assertEquals(sender.stats.sendErrors, 2);
  const into = slots(4, 100);
  assertEquals(await recvWithin(receiver, into), 2);
  assertEquals([into.bufs[0]![0], into.bufs[1]![0]], [1, 3]);
});

/**
 * A datagram from a socket on 127.0.0.1 to `to` (an address of `lo` the kernel would not pick
 * as the source of a reply to 127.0.0.1), received on `server`; returns its slots.
 */
async function requestTo(server: UdpSocket, client: UdpSocket, to: string): Promise<Slots> {
  assert(client.sendTo(new Uint8Array([1, 2, 3]), 3, encodeSockAddr(to, server.port)));
  const into = slots(4, 1500);
  assertEquals(await recvWithin(server, into), 1);
  return into;
}

/** The sources of `count` datagrams that `client` receives. */
async function sourcesOf(client: UdpSocket, count: number): Promise<string[]> {
  const sources: string[] = [];
  const back = slots(8, 1500);
  while (sources.length < count) {
    const n = await recvWithin(client, back);
    for (let i = 0; i < n; i++) sources.push(formatSockAddr(back.addrs[i]!));
  }
  return sources;
}

for (const [host, local] of [["0.0.0.0", "127.0.0.2"], ["::", "::ffff:127.0.0.2"]] as const) {
  Deno.test(`UdpSocket on ${host} replies from the address a datagram came to (${local})`, async () => {
    using server = UdpSocket.bind(host, 0);
    using client = UdpSocket.bind("127.0.0.1", 0);
    assert(server.multihome);
    const into = await requestTo(server, client, "127.0.0.2");
    const peer = into.addrs[0]!;
    assertEquals(localAddressOf(peer), local);
    // Both send paths, and GSO (a run of equal datagrams) with the packet info after it.
    assert(server.sendTo(into.bufs[0]!, 3, peer));
    const run = slots(3, 100);
    for (let i = 0; i < 3; i++) copySockAddr(peer, run.addrs[i]!);
    run.sizes.fill(50);
    assertEquals(server.sendBatch(run.bufs, run.sizes, run.addrs, 3), 3);
    assertEquals(server.stats.offloaded, 3, "one GSO message, UDP_SEGMENT then the packet info");
    const from = `127.0.0.2:${server.port}`;
    assertEquals(await sourcesOf(client, 4), [from, from, from, from]);
    // Without a local address the route picks the source, as before.
    const plain = encodeSockAddr("127.0.0.1", client.port, undefined, server.family);
    assert(server.sendTo(into.bufs[0]!, 3, plain));
    assertEquals(await sourcesOf(client, 1), [`127.0.0.1:${server.port}`]);
  });
}

Deno.test("UdpSocket.sendBatch() keeps datagrams to one peer from two local addresses apart", async () => {
  using server = UdpSocket.bind("0.0.0.0", 0);
  using client = UdpSocket.bind("127.0.0.1", 0);
  const two = (await requestTo(server, client, "127.0.0.2")).addrs[0]!;
  const three = (await requestTo(server, client, "127.0.0.3")).addrs[0]!;
  assert(sameSockAddr(two, three) && !sameLocalAddr(two, three));
  // Equal sizes to one peer: GSO would join them into one message, with one source.
  const out = slots(4, 100);
  out.sizes.fill(60);
  [two, two, three, three].forEach((addr, i) => copySockAddr(addr, out.addrs[i]!));
  assertEquals(server.sendBatch(out.bufs, out.sizes, out.addrs, 4), 4);
  const sources = await sourcesOf(client, 4);
  assertEquals(
    sources.toSorted(),
    [two, two, three, three].map((a) => {
      return `${localAddressOf(a)}:${server.port}`;
    }),
  );
});

Deno.test("UdpSocket bound to one address reports no local address", async () => {
  using server = UdpSocket.bind("127.0.0.1", 0);
  using client = UdpSocket.bind("127.0.0.1", 0);
  assert(!server.multihome);
  const into = await requestTo(server, client, "127.0.0.1");
  into.addrs[0]!.fill(9, SOCKADDR_LEN); // left over from another use of the slot
  client.sendTo(new Uint8Array(1), 1, encodeSockAddr("127.0.0.1", server.port));
  assertEquals(await recvWithin(server, into), 1);
  assertEquals(localAddressOf(into.addrs[0]!), undefined);
  assert(server.sendTo(into.bufs[0]!, 1, into.addrs[0]!));
  assertEquals(await sourcesOf(client, 1), [`127.0.0.1:${server.port}`]);
});

Deno.test("UdpSocket on :: receives from an IPv4 socket and replies to the recorded address", async () => {
  using server = UdpSocket.bind("::", 0);
  using client = UdpSocket.bind("127.0.0.1", 0);
  assertEquals(server.family, 6);
  const request = new TextEncoder().encode("hello");
  assert(client.sendTo(request, request.length, encodeSockAddr("127.0.0.1", server.port)));
  const into = slots(4, 1500);
  assertEquals(await recvWithin(server, into), 1);
  const peer = into.addrs[0]!;
  assertEquals(formatSockAddr(peer), `[::ffff:127.0.0.1]:${client.port}`);
  assert(sameSockAddr(peer, encodeSockAddr("127.0.0.1", client.port, undefined, server.family)));
  assert(server.sendTo(into.bufs[0]!, into.sizes[0]!, peer));
  const back = slots(4, 1500);
  assertEquals(await recvWithin(client, back), 1);
  assertEquals(new TextDecoder().decode(back.bufs[0]!.subarray(0, back.sizes[0])), "hello");
  assertEquals(formatSockAddr(back.addrs[0]!), `127.0.0.1:${server.port}`);
});

Deno.test("UdpSocket.recv() drops datagrams larger than their buffer and counts them", async () => {
  using sender = UdpSocket.bind("127.0.0.1", 0);
  using receiver = UdpSocket.bind("127.0.0.1", 0);
  const to = encodeSockAddr("127.0.0.1", receiver.port);
  const out = new Uint8Array(200);
  for (const [size, mark] of [[50, 1], [200, 2], [60, 3], [150, 4], [101, 5], [100, 6]]) {
    out.fill(mark!);
    assert(sender.sendTo(out, size!, to));
  }
  const into = slots(8, 100);
  assertEquals(await recvWithin(receiver, into), 3);
  // The datagrams after a dropped one moved up into the free slots, with their sources.
  assertEquals(into.sizes.slice(0, 3), [50, 60, 100]);
  assertEquals([into.bufs[0]![49], into.bufs[1]![59], into.bufs[2]![99]], [1, 3, 6]);
  for (let i = 0; i < 3; i++) {
    assertEquals(formatSockAddr(into.addrs[i]!), `127.0.0.1:${sender.port}`);
  }
  assertEquals(receiver.stats.truncated, 3);
  assertEquals(receiver.stats.received, 3);
});

Deno.test("UdpSocket.recv() keeps polling when a batch held only truncated datagrams", async () => {
  using sender = UdpSocket.bind("127.0.0.1", 0);
  using receiver = UdpSocket.bind("127.0.0.1", 0);
  const to = encodeSockAddr("127.0.0.1", receiver.port);
  assert(sender.sendTo(new Uint8Array(20), 20, to));
  const into = slots(2, 10);
  const polling = threadsInPoll();
  const pending = recvWithin(receiver, into);
  // The 20-byte datagram is dropped, and recv() waits for the next one instead of returning.
  await waitUntil(() => receiver.stats.truncated === 1, 5000, "the 20-byte datagram is dropped");
  await waitUntil(() => threadsInPoll() > polling, 5000, "recv() polls again after dropping it");
  assert(sender.sendTo(new Uint8Array(5).fill(9), 5, to));
  assertEquals(await pending, 1);
  assertEquals(into.sizes[0], 5);
  assertEquals(into.bufs[0]![0], 9);
  assertEquals(receiver.stats.truncated, 1);
});

Deno.test("UdpSocket.close() wakes a recv() blocked in poll through its eventfd; it resolves 0", async () => {
  const before = eventfds();
  const socket = UdpSocket.bind("127.0.0.1", 0);
  const wake = [...eventfds().keys()].filter((fd) => !before.has(fd));
  assertEquals(wake.length, 1, "the socket has one eventfd, to wake its poll");
  const fd = wake[0]!;
  const inode = /ino:\s*(\d+)/.exec(eventfds().get(fd)!)![1];
  const into = slots(4, 1500);
  const polling = threadsInPoll();
  const pending = socket.recv(into.bufs, into.sizes, into.addrs);
  await waitUntil(() => threadsInPoll() > polling, 5000, "recv() blocks in poll()");
  assertEquals(eventCount(fd), 0);
  socket.close();
  socket.close();
  // What "at once" rests on: close() signals the eventfd the poll watches, so the poll
  // returns now rather than at its 1 s safety-net timeout.
  assertEquals(eventCount(fd), 1, "close() signalled the eventfd");
  assertEquals(await within(pending, 5000, "recv() after close()"), 0);
  // Released once the poll returned (a reused fd number is another file).
  const after = eventfds().get(fd);
  assert(after === undefined || !after.includes(`ino:\t${inode}\n`), "the eventfd is closed");
  assertEquals(await recvWithin(socket, into), 0);
  assert(!socket.sendTo(into.bufs[0]!, 1, encodeSockAddr("127.0.0.1", 9)));
  assertEquals(socket.sendBatch(into.bufs, into.sizes, into.addrs, 2), 0);
  assertEquals(socket.stats.sendErrors, 3);
});

Deno.test("UdpSocket.recv() refuses a second concurrent call", async () => {
  using socket = UdpSocket.bind("127.0.0.1", 0);
  const into = slots(1, 100);
  const pending = socket.recv(into.bufs, into.sizes, into.addrs);
  await assertRejects(() => recvWithin(socket, into), Error, /already in progress/);
  socket.close();
  assertEquals(await within(pending, 5000, "the first recv() after close()"), 0);
});

Deno.test("UdpSocket.bind() names the address in use and what to do", () => {
  using first = UdpSocket.bind("127.0.0.1", 0);
  assertThrows(
    () => UdpSocket.bind("127.0.0.1", first.port),
    UdpError,
    new RegExp(
      `Cannot bind UDP 127\\.0\\.0\\.1:${first.port}: the address is already in use.*ss -ulpn`,
    ),
  );
  // "::" takes IPv4 too, so it conflicts with the IPv4 socket's port.
  assertThrows(() => UdpSocket.bind("::", first.port), UdpError, /already in use/);
});

Deno.test("UdpSocket.bind() explains a foreign address and refuses host names", () => {
  assertThrows(() => UdpSocket.bind("192.0.2.1", 0), UdpError, /no interface of this host/);
  assertThrows(() => UdpSocket.bind("localhost", 0), TypeError, /Cannot parse IP address/);
});

/** Whether this process has CAP_NET_ADMIN (bit 12 of CapEff), which lifts the buffer limits. */
function hasNetAdmin(): boolean {
  const status = Deno.readTextFileSync("/proc/self/status");
  const effective = /^CapEff:\s*([0-9a-f]+)$/m.exec(status)![1]!;
  return (BigInt(`0x${effective}`) & (1n << 12n)) !== 0n;
}

Deno.test("UdpSocket.bind() gets 4 MiB socket buffers, or says what capped them", () => {
  using socket = UdpSocket.bind("0.0.0.0", 0);
  assertEquals(socket.family, 4);
  assert(socket.port > 0);
  // Which case applies is this machine's, not the socket's, to say: without CAP_NET_ADMIN the
  // kernel caps the buffers at net.core.rmem_max and wmem_max.
  const limit = (name: string) => Number(Deno.readTextFileSync(`/proc/sys/net/core/${name}`));
  const mib4 = 4 * 1024 * 1024;
  if (hasNetAdmin() || (limit("rmem_max") >= mib4 && limit("wmem_max") >= mib4)) {
    assertEquals(socket.bufferWarning, undefined);
    // The kernel reports twice what it granted.
    assert(socket.receiveBufferBytes >= 8 * 1024 * 1024, `${socket.receiveBufferBytes}`);
    assert(socket.sendBufferBytes >= 8 * 1024 * 1024, `${socket.sendBufferBytes}`);
  } else {
    assertMatch(socket.bufferWarning ?? "(none)", /net\.core\.rmem_max/);
  }
});

Deno.test("UdpSocket checks slot arrays before the kernel sees them", () => {
  using socket = UdpSocket.bind("127.0.0.1", 0);
  const to = encodeSockAddr("127.0.0.1", 9);
  const bufs = [new Uint8Array(10), new Uint8Array(10)];
  assertThrows(() => socket.sendTo(bufs[0]!, 11, to), RangeError, /11 bytes, its buffer holds 10/);
  assertThrows(() => socket.sendTo(bufs[0]!, 1, new Uint8Array(16)), RangeError, /newSockAddr/);
  assertThrows(() => socket.sendBatch(bufs, [1, 1], [to], 2), RangeError, /No address slot 1/);
  assertThrows(() => socket.sendBatch(bufs, [1, 20], [to, to], 2), RangeError, /Datagram 1/);
  assertThrows(() => socket.sendBatch(bufs, [1, 1], [to, to], 3), RangeError, /3 datagrams/);
  assertThrows(() => socket.sendBatch([], [], [], 1), RangeError, /0 buffers/);
});

/** Allocates and drops enough to run several garbage collections, moving what V8 may move. */
function churnHeap(): number {
  let keep = 0;
  for (let round = 0; round < 20; round++) {
    const junk: Uint8Array[] = [];
    for (let i = 0; i < 20000; i++) junk.push(new Uint8Array(40 + (i & 15)));
    const big = new Array(100000).fill(0).map((_, i) => ({ i }));
    keep += junk.length + big.length;
  }
  return keep;
}

Deno.test("UdpSocket keeps the kernel pointing at the caller's slots across GCs and swaps", async () => {
  using sender = UdpSocket.bind("127.0.0.1", 0);
  using receiver = UdpSocket.bind("127.0.0.1", 0);
  const to = encodeSockAddr("127.0.0.1", receiver.port);
  // Small arrays made with a length are the kind V8 may keep inside its heap.
  const into = {
    bufs: [new Uint8Array(48), new Uint8Array(48)],
    sizes: [0, 0],
    addrs: [new Uint8Array(SOCKADDR_SLOT_LEN), new Uint8Array(SOCKADDR_SLOT_LEN)],
  };
  const out = {
    bufs: [new Uint8Array(48)],
    sizes: [0],
    addrs: [new Uint8Array(SOCKADDR_SLOT_LEN)],
  };
  copySockAddr(to, out.addrs[0]!);
  for (let round = 0; round < 4; round++) {
    out.bufs[0]!.fill(round + 1);
    out.sizes[0] = 10 + round;
    assertEquals(sender.sendBatch(out.bufs, out.sizes, out.addrs, 1), 1);
    const got = receiver.recv(into.bufs, into.sizes, into.addrs);
    assertEquals(await within(got, 5000, `the datagram of round ${round}`), 1);
    assertEquals(into.sizes[0], 10 + round);
    assertEquals([...into.bufs[0]!.subarray(0, 10 + round)], new Array(10 + round).fill(round + 1));
    assertEquals(formatSockAddr(into.addrs[0]!), `127.0.0.1:${sender.port}`);
    into.addrs[0]!.fill(0);
    churnHeap();
    // Swapped slots are re-pointed: the kernel must write into the new ones.
    if (round === 1) {
      into.bufs[0] = new Uint8Array(48);
      into.addrs[0] = new Uint8Array(SOCKADDR_SLOT_LEN);
      out.bufs[0] = new Uint8Array(48);
    }
  }
});
