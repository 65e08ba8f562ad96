/**
 * The Internet checksums of mod/core/offload.ts against an oracle written another way: RFC 1071 over
 * a zero-padded copy read with `DataView.getUint16`, with the end-around carry taken at every
 * step, over pseudo-headers built as bytes (not added as numbers, as the product does). The
 * product's own `checksumAdd` never checks its own output here, so a bug it shares with the
 * code that wrote a checksum cannot hide.
 *
 * Odd lengths everywhere (payloads, segment sizes, start offsets): the odd trailing byte is
 * where a one's complement sum most easily goes wrong. Data comes from a seeded generator, so
 * a failure reproduces.
 */

import { assertEquals, assertGreater } from "./_assert.ts";
import { checksumAdd, checksumFold, Coalescer, Segmenter } from "../mod/core/offload.ts";

// --- the oracle --------------------------------------------------------------------------

/** RFC 1071: the one's complement sum of `bytes` (zero-padded to even) and `seed`, in 16 bits. */
function refSum(bytes: Uint8Array, seed = 0): number {
  const padded = new Uint8Array(bytes.length + (bytes.length & 1));
  padded.set(bytes);
  const view = new DataView(padded.buffer);
  let sum = seed;
  while (sum > 0xffff) sum -= 0xffff;
  for (let i = 0; i < padded.length; i += 2) {
    sum += view.getUint16(i);
    if (sum > 0xffff) sum -= 0xffff; // the end-around carry, taken at once
  }
  return sum;
}

/** The bytes of the TCP/UDP pseudo-header of a transport segment of `length` bytes. */
function pseudoHeaderBytes(ip: Uint8Array, protocol: number, length: number): Uint8Array {
  const version = ip[0]! >> 4;
  if (version === 4) {
    const p = new Uint8Array(12);
    p.set(ip.subarray(12, 20)); // source, destination
    p[9] = protocol;
    new DataView(p.buffer).setUint16(10, length);
    return p;
  }
  const p = new Uint8Array(40);
  p.set(ip.subarray(8, 40)); // source, destination
  new DataView(p.buffer).setUint32(32, length);
  p[39] = protocol;
  return p;
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

function u16(bytes: Uint8Array, at: number): number {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint16(at);
}

function setU16(bytes: Uint8Array, at: number, value: number): void {
  new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).setUint16(at, value);
}

/** What the checksum field of a plain IP packet's transport segment must hold. */
function expectedTransportChecksum(ip: Uint8Array): number {
  const l4 = ip[0]! >> 4 === 4 ? (ip[0]! & 15) * 4 : 40;
  const protocol = ip[0]! >> 4 === 4 ? ip[9]! : ip[6]!;
  const segment = ip.slice(l4);
  const at = protocol === 17 ? 6 : 16;
  setU16(segment, at, 0);
  const sum = ~refSum(concat(pseudoHeaderBytes(ip, protocol, segment.length), segment)) & 0xffff;
  return protocol === 17 && sum === 0 ? 0xffff : sum; // UDP: 0 would say "no checksum"
}

/** Checks both checksums of a plain IP packet, naming `what` in the failure. */
function assertChecksums(ip: Uint8Array, what: string): void {
  const version = ip[0]! >> 4;
  const l4 = version === 4 ? (ip[0]! & 15) * 4 : 40;
  const protocol = version === 4 ? ip[9]! : ip[6]!;
  if (version === 4) {
    const header = ip.slice(0, l4);
    setU16(header, 10, 0);
    assertEquals(u16(ip, 10), ~refSum(header) & 0xffff, `${what}: IPv4 header checksum`);
    assertEquals(refSum(ip.subarray(0, l4)), 0xffff, `${what}: IPv4 header sums to 0xffff`);
  }
  const at = l4 + (protocol === 17 ? 6 : 16);
  assertEquals(u16(ip, at), expectedTransportChecksum(ip), `${what}: transport checksum`);
  // The receiver's test: the segment with its pseudo-header and checksum sums to all ones.
  const pseudo = pseudoHeaderBytes(ip, protocol, ip.length - l4);
  assertEquals(refSum(concat(pseudo, ip.subarray(l4))), 0xffff, `${what}: sums to 0xffff`);
}

/**
 * Checks a segment for a peer with offload: a virtio-net header asking for the transport
 * checksum at `l4`, the folded pseudo-header sum (not complemented) in the field, and, once
 * completed as the receiving kernel does it (sum from csum_start, complement, store), valid
 * checksums.
 */
function assertPartial(segment: Uint8Array, l4: number, udp: boolean, what: string): void {
  const hdr = new DataView(segment.buffer, segment.byteOffset, 10);
  assertEquals([segment[0], segment[1]], [1, 0], `${what}: NEEDS_CSUM, no GSO`);
  assertEquals(hdr.getUint16(2, true), l4 + (udp ? 8 : 20), `${what}: hdr_len`);
  assertEquals(hdr.getUint16(6, true), l4, `${what}: csum_start`);
  assertEquals(hdr.getUint16(8, true), udp ? 6 : 16, `${what}: csum_offset`);
  const packet = segment.slice(10);
  const at = l4 + (udp ? 6 : 16);
  const pseudo = pseudoHeaderBytes(packet, udp ? 17 : 6, packet.length - l4);
  assertEquals(u16(packet, at), refSum(pseudo), `${what}: partial checksum`);
  setU16(packet, at, ~refSum(packet.subarray(l4)) & 0xffff);
  if (udp && u16(packet, at) === 0) setU16(packet, at, 0xffff);
  assertChecksums(packet, what);
}

/** A seeded xorshift32: the same bytes on every run. */
function random(seed: number): (n: number) => Uint8Array {
  let state = seed >>> 0 || 1;
  return (n) => {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      state ^= state << 13;
      state >>>= 0;
      state ^= state >>> 17;
      state ^= state << 5;
      state >>>= 0;
      out[i] = state & 0xff;
    }
    return out;
  };
}

// --- packets -----------------------------------------------------------------------------

/**
 * An IP packet of `version` carrying a TCP (20-byte header) or UDP segment with `payload`,
 * checksums written by the oracle. `ipOptions` adds 4-byte words of IPv4 options.
 */
function ipPacket(
  version: 4 | 6,
  udp: boolean,
  payload: Uint8Array,
  options: { flags?: number; seq?: number; ipOptions?: number } = {},
): Uint8Array {
  const ipHeader = version === 4 ? 20 + 4 * (options.ipOptions ?? 0) : 40;
  const l4 = udp ? 8 : 20;
  const ip = new Uint8Array(ipHeader + l4 + payload.length);
  const view = new DataView(ip.buffer);
  if (version === 4) {
    ip[0] = 0x40 | (ipHeader / 4);
    view.setUint16(2, ip.length);
    view.setUint16(4, 0xfffe); // the IDs of the segments wrap
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = udp ? 17 : 6;
    ip.set([10, 8, 0, 1, 10, 8, 0, 2], 12);
    for (let i = 20; i < ipHeader; i++) ip[i] = i === 20 ? 1 : 0xa5; // NOP, then noise
    setU16(ip, 10, ~refSum(ip.subarray(0, ipHeader)) & 0xffff);
  } else {
    ip[0] = 0x60;
    view.setUint16(4, l4 + payload.length);
    ip[6] = udp ? 17 : 6;
    ip[7] = 64;
    ip.set([0xfd, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0, 0, 0, 0, 0, 0, 0xff, 1], 8);
    ip.set([0xfd, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0, 0, 0, 0, 0, 0, 0xff, 2], 24);
  }
  view.setUint16(ipHeader, 40000);
  view.setUint16(ipHeader + 2, 5201);
  if (udp) {
    view.setUint16(ipHeader + 4, 8 + payload.length);
  } else {
    view.setUint32(ipHeader + 4, options.seq ?? 0xffffff00); // wraps during a split
    view.setUint32(ipHeader + 8, 0x01020304);
    ip[ipHeader + 12] = 5 << 4;
    ip[ipHeader + 13] = options.flags ?? 0x18; // ACK, PSH
    view.setUint16(ipHeader + 14, 0xfaf0);
  }
  ip.set(payload, ipHeader + l4);
  setU16(ip, ipHeader + (udp ? 6 : 16), expectedTransportChecksum(ip));
  return ip;
}

/**
 * `ip` behind a virtio-net header as a TUN with offload hands it over: GSO with `gsoSize`, and
 * a partial checksum (the pseudo-header sum, from the oracle) in the transport checksum field.
 */
function superPacket(ip: Uint8Array, gsoSize: number): Uint8Array {
  const version = ip[0]! >> 4;
  const l4 = version === 4 ? (ip[0]! & 15) * 4 : 40;
  const udp = (version === 4 ? ip[9] : ip[6]) === 17;
  const out = new Uint8Array(10 + ip.length);
  const hdr = new DataView(out.buffer);
  out[0] = 1; // NEEDS_CSUM
  out[1] = udp ? 5 : version === 4 ? 1 : 4; // GSO_UDP_L4, GSO_TCPV4, GSO_TCPV6
  hdr.setUint16(2, l4 + (udp ? 8 : 20), true);
  hdr.setUint16(4, gsoSize, true);
  hdr.setUint16(6, l4, true);
  hdr.setUint16(8, udp ? 6 : 16, true);
  out.set(ip, 10);
  const at = 10 + l4 + (udp ? 6 : 16);
  setU16(out, at, refSum(pseudoHeaderBytes(ip, udp ? 17 : 6, ip.length - l4)));
  return out;
}

function convert(buf: Uint8Array, toVnet: boolean, maxIp: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  const segmenter = new Segmenter();
  const count = segmenter.convert(buf, buf.length, true, toVnet, maxIp, (p) => out.push(p.slice()));
  assertEquals(count, out.length, "convert() returns how many it emitted");
  assertEquals(segmenter.stats.malformed, 0, "nothing dropped");
  return out;
}

const FAMILIES = [
  { version: 4, udp: false, name: "TCP/IPv4" },
  { version: 6, udp: false, name: "TCP/IPv6" },
  { version: 4, udp: true, name: "UDP/IPv4" },
  { version: 6, udp: true, name: "UDP/IPv6" },
] as const;

/** Payload lengths and segment sizes, most of them odd, and one 64 KiB packet. */
const SPLITS: { payload: number; gsoSize: number }[] = [
  { payload: 1, gsoSize: 1 },
  { payload: 3, gsoSize: 1 },
  { payload: 3, gsoSize: 2 },
  { payload: 1399, gsoSize: 3 },
  { payload: 1399, gsoSize: 1360 },
  { payload: 1401, gsoSize: 1400 },
  { payload: 1401, gsoSize: 7 },
  { payload: 4097, gsoSize: 1357 },
  { payload: 9001, gsoSize: 1399 },
  { payload: 9001, gsoSize: 1401 },
  { payload: 65535 - 60 - 20, gsoSize: 1401 },
];

// --- tests -------------------------------------------------------------------------------

Deno.test("checksumAdd() and checksumFold() give the RFC 1071 sum for odd and even lengths and offsets", () => {
  const next = random(1071);
  let cases = 0;
  for (const length of [0, 1, 2, 3, 4, 5, 39, 40, 1399, 1400, 1401, 65535]) {
    const data = next(length + 3);
    for (const start of [0, 1, 3]) {
      for (const seed of [0, 6 + length, 0x1fffe]) {
        const end = start + length;
        const expected = refSum(data.subarray(start, end), seed);
        const got = checksumFold(checksumAdd(data, start, end, seed));
        assertEquals(got, expected, `${length} bytes from ${start}, seed ${seed}`);
        cases++;
      }
    }
  }
  assertEquals(cases, 12 * 3 * 3);
});

Deno.test("checksumAdd() counts the odd trailing byte as the high byte of a zero-padded word", () => {
  assertEquals(checksumAdd(new Uint8Array([0xab]), 0, 1), 0xab00);
  assertEquals(checksumAdd(new Uint8Array([0x12, 0x34, 0x56]), 0, 3), 0x1234 + 0x5600);
  assertEquals(checksumAdd(new Uint8Array([0x12, 0x34, 0x56, 0x78]), 1, 4), 0x3456 + 0x7800);
  assertEquals(checksumAdd(new Uint8Array([0xff, 0xff, 0xff]), 0, 3, 7), 7 + 0xffff + 0xff00);
});

Deno.test("checksumFold() adds carries until 16 bits remain", () => {
  assertEquals(checksumFold(0), 0);
  assertEquals(checksumFold(0xffff), 0xffff);
  assertEquals(checksumFold(0x10000), 0x0001);
  // One fold of these still leaves a carry: 0xffff + 1 and 0xffff + 0xffff.
  assertEquals(checksumFold(0x1ffff), 0x0001);
  assertEquals(checksumFold(0xffffffff), 0xffff);
  assertEquals(checksumFold(0x7fffffff), 0x7fff);
  // The largest sum checksumAdd() makes of 64 KiB: 32768 words of 0xffff.
  assertEquals(checksumFold(32768 * 0xffff), 0xffff);
});

for (const { version, udp, name } of FAMILIES) {
  Deno.test(`Segmenter.convert() writes the checksums of the oracle when it splits ${name} for a peer without offload`, () => {
    const next = random(version * 100 + (udp ? 17 : 6));
    let checked = 0;
    for (const { payload, gsoSize } of SPLITS) {
      const data = next(payload);
      const ip = ipPacket(version, udp, data);
      const segments = convert(superPacket(ip, gsoSize), false, 65535);
      assertEquals(segments.length, Math.ceil(payload / gsoSize), `${payload}/${gsoSize}: count`);
      const headers = (version === 4 ? 20 : 40) + (udp ? 8 : 20);
      let joined = 0;
      segments.forEach((segment, i) => {
        const what = `${payload} bytes cut at ${gsoSize}, segment ${i}`;
        assertEquals(segment.length, headers + Math.min(gsoSize, payload - i * gsoSize), what);
        assertChecksums(segment, what);
        assertEquals(
          segment.subarray(headers),
          data.subarray(joined, joined + segment.length - headers),
        );
        joined += segment.length - headers;
        checked++;
      });
      assertEquals(joined, payload, `${payload}/${gsoSize}: every byte`);
    }
    assertEquals(checked, 743, "the segments of every split");
  });

  Deno.test(`Segmenter.convert() cuts ${name} to an odd MTU with the oracle's partial checksum for a peer with offload`, () => {
    const next = random(version * 1000 + (udp ? 17 : 6));
    const headers = (version === 4 ? 20 : 40) + (udp ? 8 : 20);
    let checked = 0;
    for (const maxIp of [1399, 1401, 577]) {
      const mss = maxIp - headers;
      // Last segments of 1 and 3 bytes, odd full ones, and a 64 KiB packet.
      for (const payload of [mss + 1, 2 * mss + 3, 1399, 1401, 5001, 65535 - 60 - 20]) {
        const ip = ipPacket(version, udp, next(payload));
        const segments = convert(superPacket(ip, 65535), true, maxIp);
        assertEquals(segments.length, Math.ceil(payload / mss), `${payload} at MTU ${maxIp}`);
        segments.forEach((segment, i) => {
          const what = `${payload} bytes at MTU ${maxIp}, segment ${i}`;
          assertPartial(segment, headers - (udp ? 8 : 20), udp, what);
          assertEquals(segment.length - 10, headers + Math.min(mss, payload - i * mss), what);
          checked++;
        });
      }
    }
    assertGreater(checked, 3 * 6);
  });

  Deno.test(`Segmenter.convert() completes the partial checksum of one ${name} packet of odd length for a plain peer`, () => {
    const next = random(version * 7 + (udp ? 1 : 0));
    for (const payload of [1, 3, 1399, 1401]) {
      const ip = ipPacket(version, udp, next(payload));
      const single = superPacket(ip, 0);
      single[1] = 0; // GSO_NONE: one packet, only the checksum left to do
      const [plain, ...more] = convert(single, false, 1400);
      assertEquals(more.length, 0);
      assertEquals(plain!.length, ip.length);
      assertChecksums(plain!, `${payload} bytes`);
      assertEquals(plain, ip, "the packet the oracle wrote, byte for byte");
    }
  });
}

Deno.test("Segmenter.convert() writes the oracle's IPv4 header checksum with IPv4 options and wrapping IDs", () => {
  const data = random(24)(3001);
  const ip = ipPacket(4, false, data, { ipOptions: 1 });
  const segments = convert(superPacket(ip, 999), false, 65535);
  assertEquals(segments.length, 4);
  segments.forEach((segment, i) => {
    assertEquals(segment[0], 0x46, "IHL 6 kept");
    assertEquals(u16(segment, 4), (0xfffe + i) & 0xffff, "the ID counts up and wraps");
    assertChecksums(segment, `segment ${i}`);
  });
});

Deno.test("Segmenter.convert() writes correct checksums for random sizes and data (seeded)", () => {
  const next = random(20240601);
  const pick = (n: number) => {
    const [high, low] = next(2);
    return ((high! << 8) | low!) % n;
  };
  let checked = 0;
  let whole = 0;
  for (let round = 0; round < 400; round++) {
    const { version, udp, name } = FAMILIES[round % 4]!;
    const headers = (version === 4 ? 20 : 40) + (udp ? 8 : 20);
    const payload = 1 + pick(20000);
    const gsoSize = 1 + pick(1500);
    // Rounds 0-3 of every 8 for a peer without offload (over TLS, then at the MTU over UDP),
    // 4-7 for a peer with offload over UDP.
    const toVnet = round % 8 >= 4;
    const ip = ipPacket(version, udp, next(payload), { seq: pick(65536) * 65536 });
    const maxIp = round % 8 < 2 ? 65535 : 1400;
    const input = superPacket(ip, gsoSize);
    const segments = convert(input, toVnet, maxIp);
    if (toVnet && ip.length <= maxIp) {
      // A super-packet that fits travels whole: the peer's kernel segments it.
      assertEquals(segments, [input], `round ${round}: passed whole`);
      whole++;
      continue;
    }
    const mss = Math.min(gsoSize, maxIp - headers);
    assertEquals(segments.length, Math.ceil(payload / mss), `round ${round}: count`);
    for (const segment of segments) {
      const what = `round ${round}: ${name}, ${payload} bytes cut at ${mss}, offload ${toVnet}`;
      if (toVnet) assertPartial(segment, headers - (udp ? 8 : 20), udp, what);
      else assertChecksums(segment, what);
      checked++;
    }
  }
  assertGreater(checked, 4000);
  assertGreater(whole, 0);
});

Deno.test("Coalescer writes the oracle's IPv4 header checksum and partial checksum on an odd-length join", () => {
  const data = random(3)(1360 * 4 + 101);
  const out: Uint8Array[] = [];
  const coalescer = new Coalescer((packets, count) => {
    for (let i = 0; i < count; i++) out.push(packets[i]!.slice());
  });
  for (let i = 0; i < 5; i++) {
    const chunk = data.subarray(i * 1360, Math.min((i + 1) * 1360, data.length));
    coalescer.add(ipPacket(4, false, chunk, { seq: 1000 + i * 1360, flags: 0x10 }), false);
  }
  coalescer.flush();
  assertEquals(out.length, 1, "one super-packet");
  const ip = out[0]!.subarray(10);
  assertEquals(ip.length, 40 + data.length);
  const header = ip.slice(0, 20);
  setU16(header, 10, 0);
  assertEquals(u16(ip, 10), ~refSum(header) & 0xffff, "IPv4 header checksum");
  assertEquals(u16(ip, 36), refSum(pseudoHeaderBytes(ip, 6, ip.length - 20)), "partial checksum");
});
