import { assertEquals, assertThrows } from "./_assert.ts";
import { within } from "./_wait.ts";
import { decodeIfreqName, encodeIfreq, validateTunName } from "../ffi/tun.ts";
import { ErrnoError } from "../ffi/libc.ts";
import { errnoName } from "../ffi/constants.ts";
import { MemoryTun } from "../mod/core/memory_tun.ts";

Deno.test("validateTunName() accepts 15 bytes and refuses 16", () => {
  validateTunName("a".repeat(15));
  assertThrows(() => validateTunName("a".repeat(16)), RangeError, /16 bytes, at most 15/);
  assertThrows(() => validateTunName(""), RangeError, /empty/);
  assertThrows(() => validateTunName("a/b"), RangeError, /must not contain/);
});

Deno.test("encodeIfreq() puts the name first and ifr_flags at offset 16", () => {
  const ifreq = encodeIfreq("vpn%d", 0x1001);
  assertEquals(ifreq.length, 40);
  assertEquals(decodeIfreqName(ifreq), "vpn%d");
  assertEquals(ifreq[16], 0x01);
  assertEquals(ifreq[17], 0x10);
  assertEquals(ifreq[5], 0, "the name is NUL-terminated");
});

Deno.test("decodeIfreqName() stops at IFNAMSIZ when no NUL is present", () => {
  const ifreq = new Uint8Array(40).fill(0x61);
  assertEquals(decodeIfreqName(ifreq), "a".repeat(16));
});

Deno.test("ErrnoError names the call, the errno and its symbol", () => {
  const error = new ErrnoError("ioctl(TUNSETIFF)", 1);
  assertEquals(error.code, "EPERM");
  assertEquals(error.errno, 1);
  assertEquals(error.message, "ioctl(TUNSETIFF) failed: EPERM (errno 1)");
  assertEquals(errnoName(16), "EBUSY");
  assertEquals(errnoName(4242), "E#4242");
});

function packet(length: number, fill: number): Uint8Array {
  return new Uint8Array(length).fill(fill);
}

Deno.test("MemoryTun.read() returns injected packets in order, in batches", async () => {
  using tun = new MemoryTun({ batchSize: 2 });
  tun.inject(packet(20, 1));
  tun.inject(packet(30, 2));
  tun.inject(packet(40, 3));
  const bufs = [new Uint8Array(100), new Uint8Array(100), new Uint8Array(100)];
  const sizes = [0, 0, 0];
  assertEquals(await within(tun.read(bufs, sizes), 5000, "the first batch"), 2);
  assertEquals(sizes.slice(0, 2), [20, 30]);
  assertEquals(bufs[1]![0], 2);
  assertEquals(await within(tun.read(bufs, sizes), 5000, "the second batch"), 1);
  assertEquals(sizes[0], 40);
  assertEquals(tun.stats.readPackets, 3);
});

Deno.test("MemoryTun.read() waits for a packet and resolves 0 once closed", async () => {
  const tun = new MemoryTun();
  const bufs = [new Uint8Array(100)];
  const sizes = [0];
  const pending = tun.read(bufs, sizes);
  tun.inject(packet(10, 7));
  assertEquals(await within(pending, 5000, "read() after inject()"), 1);
  const closed = tun.read(bufs, sizes);
  tun.close();
  assertEquals(await within(closed, 5000, "read() after close()"), 0);
});

Deno.test("MemoryTun.write() keeps copies until taken and drops past its capacity", async () => {
  using tun = new MemoryTun({ capacity: 2 });
  const buf = packet(10, 5);
  assertEquals(tun.write([buf, buf, buf]), 2);
  buf.fill(0);
  const written = await within(tun.take(), 5000, "the written packets");
  assertEquals(written.length, 2);
  assertEquals(written[0]![0], 5, "a copy, not the caller's buffer");
  assertEquals(tun.dropped, 1);
  assertEquals(tun.stats.writeErrors, 1);
});

Deno.test("MemoryTun.inject() refuses packets past its capacity and after close", () => {
  const tun = new MemoryTun({ capacity: 1 });
  assertEquals(tun.inject(packet(1, 1)), true);
  assertEquals(tun.inject(packet(1, 1)), false);
  tun.close();
  assertEquals(tun.inject(packet(1, 1)), false);
  assertEquals(tun.dropped, 2);
});
