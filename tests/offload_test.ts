import { assert, assertEquals } from "./_assert.ts";
import {
  checksumAdd,
  checksumFold,
  Coalescer,
  Segmenter,
  VNET_HDR_LEN,
} from "../mod/core/offload.ts";

/** A TCP or UDP packet (IPv4 or IPv6) with a correct checksum, or a GSO super-packet. */
function packet(version: 4 | 6, udp: boolean, payload: Uint8Array, flags = 0x18): Uint8Array {
  const ipHeader = version === 4 ? 20 : 40;
  const l4 = udp ? 8 : 20;
  const ip = new Uint8Array(ipHeader + l4 + payload.length);
  const view = new DataView(ip.buffer);
  if (version === 4) {
    ip[0] = 0x45;
    view.setUint16(2, ip.length);
    view.setUint16(4, 0x1234);
    ip[8] = 64;
    ip[9] = udp ? 17 : 6;
    ip.set([10, 8, 0, 1, 10, 8, 0, 2], 12);
    view.setUint16(10, ~checksumFold(checksumAdd(ip, 0, 20)) & 0xffff);
  } else {
    ip[0] = 0x60;
    view.setUint16(4, l4 + payload.length);
    ip[6] = udp ? 17 : 6;
    ip[7] = 64;
    ip.set([0xfd, 0, ...new Array(13).fill(0), 1, 0xfd, 0, ...new Array(13).fill(0), 2], 8);
  }
  if (udp) {
    view.setUint16(ipHeader, 4000);
    view.setUint16(ipHeader + 2, 5000);
    view.setUint16(ipHeader + 4, 8 + payload.length);
  } else {
    view.setUint16(ipHeader, 4000);
    view.setUint16(ipHeader + 2, 5000);
    view.setUint32(ipHeader + 4, 0xfffff000); // wraps during the test
    ip[ipHeader + 12] = 5 << 4;
    ip[ipHeader + 13] = flags;
  }
  ip.set(payload, ipHeader + l4);
  return ip;
}

/** True when the transport checksum of a plain packet verifies. */
function transportChecksumOk(ip: Uint8Array): boolean {
  const version = ip[0]! >> 4;
  const ipHeader = version === 4 ? (ip[0]! & 15) * 4 : 40;
  const protocol = version === 4 ? ip[9]! : ip[6]!;
  const length = ip.length - ipHeader;
  const pseudo = version === 4
    ? checksumAdd(ip, 12, 20, protocol + length)
    : checksumAdd(ip, 8, 40, protocol + length);
  return checksumFold(checksumAdd(ip, ipHeader, ip.length, pseudo)) === 0xffff;
}

function superPacket(version: 4 | 6, udp: boolean, payload: Uint8Array, mss: number): Uint8Array {
  const ip = packet(version, udp, payload);
  const ipHeader = version === 4 ? 20 : 40;
  const hdr = new Uint8Array(VNET_HDR_LEN);
  const view = new DataView(hdr.buffer);
  hdr[0] = 1; // NEEDS_CSUM
  hdr[1] = udp ? 5 : version === 4 ? 1 : 4;
  view.setUint16(2, ipHeader + (udp ? 8 : 20), true);
  view.setUint16(4, mss, true);
  view.setUint16(6, ipHeader, true);
  view.setUint16(8, udp ? 6 : 16, true);
  const out = new Uint8Array(VNET_HDR_LEN + ip.length);
  out.set(hdr);
  out.set(ip, VNET_HDR_LEN);
  return out;
}

function collect(
  segmenter: Segmenter,
  buf: Uint8Array,
  fromVnet: boolean,
  toVnet: boolean,
  maxIp = Infinity,
) {
  const out: Uint8Array[] = [];
  segmenter.convert(buf, buf.length, fromVnet, toVnet, maxIp, (p) => out.push(p.slice()));
  return out;
}

for (const version of [4, 6] as const) {
  for (const udp of [false, true]) {
    const name = `${udp ? "UDP" : "TCP"}/IPv${version}`;
    Deno.test(`Segmenter.convert() splits a ${name} super-packet into plain packets with valid checksums`, () => {
      const payload = crypto.getRandomValues(new Uint8Array(10_000));
      const mss = 1300;
      const segments = collect(
        new Segmenter(),
        superPacket(version, udp, payload, mss),
        true,
        false,
      );
      assertEquals(segments.length, Math.ceil(payload.length / mss));
      const ipHeader = version === 4 ? 20 : 40;
      const l4 = udp ? 8 : 20;
      const joined: number[] = [];
      segments.forEach((segment, i) => {
        assert(transportChecksumOk(segment), `segment ${i} checksum`);
        if (version === 4) {
          assertEquals(checksumFold(checksumAdd(segment, 0, 20)), 0xffff, "IPv4 header checksum");
          assertEquals(new DataView(segment.buffer).getUint16(2), segment.length);
          assertEquals(new DataView(segment.buffer).getUint16(4), (0x1234 + i) & 0xffff);
        } else {
          assertEquals(new DataView(segment.buffer).getUint16(4), segment.length - 40);
        }
        if (!udp) {
          const seq = new DataView(segment.buffer).getUint32(ipHeader + 4);
          assertEquals(seq, (0xfffff000 + i * mss) >>> 0);
          const flags = segment[ipHeader + 13]!;
          assertEquals(flags & 0x08, i === segments.length - 1 ? 0x08 : 0, "PSH only on the last");
        } else {
          assertEquals(
            new DataView(segment.buffer).getUint16(ipHeader + 4),
            segment.length - ipHeader,
          );
        }
        joined.push(...segment.subarray(ipHeader + l4));
      });
      assertEquals(new Uint8Array(joined), payload);
    });

    Deno.test(`Segmenter.convert() cuts a ${name} super-packet to the MTU with partial checksums for a peer with offload`, () => {
      const payload = crypto.getRandomValues(new Uint8Array(6000));
      const segments = collect(
        new Segmenter(),
        superPacket(version, udp, payload, 1400),
        true,
        true,
        1400,
      );
      const ipHeader = version === 4 ? 20 : 40;
      // 6000 bytes at 1400 - 60 to 1400 - 28 bytes a segment: 5 segments in every family. An
      // empty result must fail here, not pass the loop below untested.
      assertEquals(segments.length, 5);
      for (const segment of segments) {
        assert(segment.length - VNET_HDR_LEN <= 1400, `${segment.length - VNET_HDR_LEN} bytes`);
        assertEquals(segment[0], 1, "NEEDS_CSUM");
        assertEquals(segment[1], 0, "no GSO");
        assertEquals(segment[6]! | (segment[7]! << 8), ipHeader, "csum_start");
        // Completing the partial checksum the way the peer's kernel would gives a valid packet.
        const plain = collect(new Segmenter(), segment, true, false)[0]!;
        assert(transportChecksumOk(plain));
      }
    });
  }
}

Deno.test("Segmenter.convert() completes the partial checksum of a single packet for a plain peer", () => {
  const ip = packet(4, false, new Uint8Array(100).fill(7));
  const withHeader = new Uint8Array(VNET_HDR_LEN + ip.length);
  withHeader.set(ip, VNET_HDR_LEN);
  withHeader[0] = 1;
  withHeader[6] = 20;
  withHeader[8] = 16;
  // The kernel leaves the pseudo-header sum in the checksum field.
  const pseudo = checksumFold(checksumAdd(ip, 12, 20, 6 + ip.length - 20));
  withHeader[VNET_HDR_LEN + 36] = pseudo >>> 8;
  withHeader[VNET_HDR_LEN + 37] = pseudo & 0xff;
  const [plain] = collect(new Segmenter(), withHeader, true, false);
  assertEquals(plain!.length, ip.length);
  assert(transportChecksumOk(plain!));
});

Deno.test("Segmenter.convert() passes packets through untouched when both sides agree", () => {
  const segmenter = new Segmenter();
  const big = superPacket(4, false, new Uint8Array(30_000), 1400);
  const same = collect(segmenter, big, true, true);
  assertEquals(same, [big], "a super-packet for a peer with offload over TLS");
  const plain = packet(4, true, new Uint8Array(10));
  assertEquals(collect(segmenter, plain, false, false), [plain]);
  const framed = collect(segmenter, plain, false, true)[0]!;
  assertEquals(framed.subarray(0, VNET_HDR_LEN), new Uint8Array(VNET_HDR_LEN), "a zero header");
  assertEquals(framed.subarray(VNET_HDR_LEN), plain);
});

Deno.test("Segmenter.convert() drops and counts what it cannot read", () => {
  const segmenter = new Segmenter();
  const short = new Uint8Array(VNET_HDR_LEN + 5);
  assertEquals(segmenter.convert(short, short.length, true, false, 1400, () => {}), 0);
  const wrong = superPacket(4, false, new Uint8Array(3000), 1400);
  wrong[VNET_HDR_LEN + 9] = 17; // says UDP, header says TCP GSO
  assertEquals(segmenter.convert(wrong, wrong.length, true, false, 1400, () => {}), 0);
  const unknown = superPacket(4, false, new Uint8Array(3000), 1400);
  unknown[1] = 3; // GSO_UDP (UFO), which the TUN never gets without asking
  assertEquals(segmenter.convert(unknown, unknown.length, true, false, 1400, () => {}), 0);
  assertEquals(segmenter.stats.malformed, 3);
});

function tcpSegment(seq: number, payload: Uint8Array, flags = 0x10, port = 5000): Uint8Array {
  const ip = packet(4, false, payload, flags);
  const view = new DataView(ip.buffer);
  view.setUint32(24, seq);
  view.setUint16(22, port);
  view.setUint16(36, 0);
  const pseudo = checksumAdd(ip, 12, 20, 6 + ip.length - 20);
  view.setUint16(36, ~checksumFold(checksumAdd(ip, 20, ip.length, pseudo)) & 0xffff);
  return ip;
}

function coalescer(slots?: number) {
  const out: Uint8Array[] = [];
  const c = new Coalescer((packets, count) => {
    for (let i = 0; i < count; i++) out.push(packets[i]!.slice());
  }, slots);
  return { c, out };
}

Deno.test("Coalescer joins consecutive segments of a flow into one GSO super-packet", () => {
  const { c, out } = coalescer();
  const data = crypto.getRandomValues(new Uint8Array(1360 * 5 + 100));
  for (let i = 0; i < 6; i++) {
    const chunk = data.subarray(i * 1360, Math.min((i + 1) * 1360, data.length));
    c.add(tcpSegment(1000 + i * 1360, chunk, i === 5 ? 0x18 : 0x10), false);
  }
  c.flush();
  const [joined, ...rest] = out;
  assertEquals(rest.length, 0);
  const header = new DataView(joined!.buffer);
  assertEquals(joined![0], 1, "NEEDS_CSUM");
  assertEquals(joined![1], 1, "GSO_TCPV4");
  assertEquals(header.getUint16(4, true), 1360, "gso_size");
  const ip = joined!.subarray(VNET_HDR_LEN);
  assertEquals(new DataView(ip.buffer, ip.byteOffset).getUint16(2), ip.length);
  assertEquals(checksumFold(checksumAdd(ip, 0, 20)), 0xffff, "IPv4 header checksum");
  assertEquals(ip.subarray(40), data);
  assertEquals(ip[33], 0x18, "the last segment's PSH");
  // What the kernel will make of it: segments with valid checksums and the same bytes.
  const segments = collect(new Segmenter(), joined!, true, false);
  assertEquals(segments.length, 6);
  for (const segment of segments) assert(transportChecksumOk(segment));
});

Deno.test("Coalescer keeps apart other flows, gaps, and anything not plain TCP data", () => {
  const { c, out } = coalescer();
  const payload = new Uint8Array(1000).fill(1);
  const packets = [
    tcpSegment(0, payload),
    tcpSegment(1000, payload, 0x10, 6000), // another flow
    tcpSegment(2000, payload), // not the next sequence number of the first flow
    tcpSegment(3000, payload, 0x11), // FIN
    packet(4, true, payload), // UDP
  ];
  for (const p of packets) c.add(p, false);
  c.flush();
  assertEquals(out.length, 5, "nothing joined");
  out.forEach((p, i) => {
    assertEquals(p.subarray(0, VNET_HDR_LEN), new Uint8Array(VNET_HDR_LEN), "a zero header");
    assertEquals(p.subarray(VNET_HDR_LEN), packets[i]);
  });
});

Deno.test("Coalescer keeps a lone segment's own virtio-net header", () => {
  const { c, out } = coalescer();
  const ip = tcpSegment(0, new Uint8Array(500));
  const withHeader = new Uint8Array(VNET_HDR_LEN + ip.length);
  withHeader.set([1, 0, 0, 0, 0, 0, 20, 0, 16, 0]);
  withHeader.set(ip, VNET_HDR_LEN);
  c.add(withHeader, true);
  c.flush();
  assertEquals(out, [withHeader]);
});

Deno.test("Coalescer writes early when a batch outgrows its slots, losing nothing", () => {
  const { c, out } = coalescer(4);
  const sent: Uint8Array[] = [];
  for (let i = 0; i < 10; i++) {
    const p = packet(4, true, new Uint8Array([i])); // UDP: nothing joins
    sent.push(p);
    c.add(p, false);
  }
  c.flush();
  assertEquals(out.map((p) => p.subarray(VNET_HDR_LEN)), sent);
});

// --- TCP over IPv6 ---------------------------------------------------------------------------
// Checked against a reference written apart from mod/core/offload.ts: RFC 1071 over bytes read
// with DataView, over the RFC 8200 pseudo-header built as bytes.

/** RFC 1071 over `bytes` zero-padded to even, the end-around carry taken at every step. */
function refSum(bytes: Uint8Array): number {
  const padded = new Uint8Array(bytes.length + (bytes.length & 1));
  padded.set(bytes);
  const view = new DataView(padded.buffer);
  let sum = 0;
  for (let i = 0; i < padded.length; i += 2) {
    sum += view.getUint16(i);
    if (sum > 0xffff) sum -= 0xffff;
  }
  return sum;
}

/** The IPv6 pseudo-header (RFC 8200 8.1) of the packet `ip` for TCP of `length` bytes. */
function pseudo6(ip: Uint8Array, length: number): Uint8Array {
  const p = new Uint8Array(40);
  p.set(ip.subarray(8, 40));
  new DataView(p.buffer).setUint32(32, length);
  p[39] = 6;
  return p;
}

/** Whether the TCP checksum of a plain TCP/IPv6 packet verifies by the reference. */
function tcp6ChecksumOk(ip: Uint8Array): boolean {
  const tcp = ip.subarray(40);
  const all = new Uint8Array(40 + tcp.length);
  all.set(pseudo6(ip, tcp.length));
  all.set(tcp, 40);
  return refSum(all) === 0xffff;
}

/** Writes the reference TCP checksum into a plain TCP/IPv6 packet. */
function setTcp6Checksum(ip: Uint8Array): void {
  const view = new DataView(ip.buffer, ip.byteOffset, ip.byteLength);
  view.setUint16(56, 0);
  const all = new Uint8Array(ip.length);
  all.set(pseudo6(ip, ip.length - 40));
  all.set(ip.subarray(40), 40);
  view.setUint16(56, ~refSum(all) & 0xffff);
}

const SOURCE6 = [0xfd, 0, 0, 8, ...new Array(11).fill(0), 2];
const DESTINATION6 = [0x20, 0x01, 0x0d, 0xb8, ...new Array(11).fill(0), 7];

/**
 * A TCP/IPv6 segment with the reference checksum: traffic class 0xb8 and flow label 0x12345
 * (so that a header rewrite that loses them shows), hop limit 61.
 */
function tcp6Segment(
  seq: number,
  payload: Uint8Array,
  flags = 0x10,
  change: (ip: Uint8Array) => void = () => {},
): Uint8Array {
  const ip = new Uint8Array(60 + payload.length);
  const view = new DataView(ip.buffer);
  view.setUint32(0, (6 << 28) | (0xb8 << 20) | 0x12345);
  view.setUint16(4, 20 + payload.length);
  ip[6] = 6;
  ip[7] = 61;
  ip.set(SOURCE6, 8);
  ip.set(DESTINATION6, 24);
  view.setUint16(40, 4000);
  view.setUint16(42, 443);
  view.setUint32(44, seq >>> 0);
  view.setUint32(48, 0x01020304); // ack
  ip[52] = 5 << 4;
  ip[53] = flags;
  view.setUint16(54, 501); // window
  ip.set(payload, 60);
  change(ip);
  setTcp6Checksum(ip);
  return ip;
}

/** A GSO_TCPV6 super-packet as a kernel with TSO6 writes it: the pseudo-header sum in place. */
function tcp6SuperPacket(payload: Uint8Array, mss: number, flags = 0x18, ecn = false) {
  const ip = tcp6Segment(0xfffff000, payload, flags);
  const view = new DataView(ip.buffer);
  view.setUint16(56, refSum(pseudo6(ip, ip.length - 40)));
  const out = new Uint8Array(VNET_HDR_LEN + ip.length);
  const hdr = new DataView(out.buffer);
  out[0] = 1; // NEEDS_CSUM
  out[1] = ecn ? 4 | 0x80 : 4; // GSO_TCPV6, with GSO_ECN when asked
  hdr.setUint16(2, 60, true);
  hdr.setUint16(4, mss, true);
  hdr.setUint16(6, 40, true);
  hdr.setUint16(8, 16, true);
  out.set(ip, VNET_HDR_LEN);
  return out;
}

Deno.test("Segmenter.convert() cuts a GSO_TCPV6 super-packet into segments the reference checksum accepts, IPv6 header kept", () => {
  const payload = crypto.getRandomValues(new Uint8Array(9001)); // a short, odd last segment
  const mss = 1220;
  const big = tcp6SuperPacket(payload, mss, 0x18 | 0x80 | 0x01, true); // PSH, CWR, FIN
  const segments = collect(new Segmenter(), big, true, false);
  assertEquals(segments.length, Math.ceil(payload.length / mss));
  const joined: number[] = [];
  segments.forEach((segment, i) => {
    const view = new DataView(segment.buffer);
    const last = i === segments.length - 1;
    assert(tcp6ChecksumOk(segment), `segment ${i}: TCP checksum`);
    assertEquals(segment.subarray(0, 4), big.subarray(VNET_HDR_LEN, VNET_HDR_LEN + 4), "class");
    assertEquals(view.getUint16(4), segment.length - 40, `segment ${i}: payload length`);
    assertEquals([segment[6], segment[7]], [6, 61], "next header, hop limit");
    assertEquals(segment.subarray(8, 40), big.subarray(VNET_HDR_LEN + 8, VNET_HDR_LEN + 40));
    assertEquals(view.getUint32(44), (0xfffff000 + i * mss) >>> 0, `segment ${i}: sequence`);
    const flags = segment[53]!;
    assertEquals(flags & 0x09, last ? 0x09 : 0, `segment ${i}: PSH and FIN only on the last`);
    assertEquals(flags & 0x80, i === 0 ? 0x80 : 0, `segment ${i}: CWR only on the first`);
    assertEquals(flags & 0x10, 0x10, `segment ${i}: ACK on all`);
    joined.push(...segment.subarray(60));
  });
  assertEquals(new Uint8Array(joined), payload);
});

Deno.test("Segmenter.convert() cuts a GSO_TCPV6 super-packet to the MTU with the reference's partial checksum for a peer with offload", () => {
  const payload = crypto.getRandomValues(new Uint8Array(5001));
  const segments = collect(new Segmenter(), tcp6SuperPacket(payload, 1440), true, true, 1280);
  assertEquals(segments.length, Math.ceil(payload.length / (1280 - 60)));
  for (const segment of segments) {
    const hdr = new DataView(segment.buffer, 0, VNET_HDR_LEN);
    const ip = segment.slice(VNET_HDR_LEN);
    assert(ip.length <= 1280, `${ip.length} bytes`);
    assertEquals([segment[0], segment[1]], [1, 0], "NEEDS_CSUM, no GSO");
    assertEquals([hdr.getUint16(2, true), hdr.getUint16(6, true)], [60, 40], "hdr_len, start");
    assertEquals(hdr.getUint16(8, true), 16, "csum_offset");
    assertEquals(new DataView(ip.buffer).getUint16(4), ip.length - 40, "payload length");
    // The field holds the pseudo-header sum; the receiving kernel completes it from byte 40.
    const view = new DataView(ip.buffer);
    assertEquals(view.getUint16(56), refSum(pseudo6(ip, ip.length - 40)), "partial checksum");
    view.setUint16(56, ~refSum(ip.subarray(40)) & 0xffff);
    assert(tcp6ChecksumOk(ip), "completed checksum");
  }
});

Deno.test("Segmenter.convert() drops and counts a TCPv6 super-packet with extension headers, or not TCP", () => {
  const segmenter = new Segmenter();
  const payload = new Uint8Array(4000);
  for (const nextHeader of [0, 43, 60]) { // hop-by-hop, routing, destination options
    const big = tcp6SuperPacket(payload, 1220);
    // An 8-byte extension header in front of the TCP header, the next header pointing to it.
    const withExtension = new Uint8Array(big.length + 8);
    withExtension.set(big.subarray(0, VNET_HDR_LEN + 40));
    withExtension.set(big.subarray(VNET_HDR_LEN + 40), VNET_HDR_LEN + 48);
    withExtension[VNET_HDR_LEN + 6] = nextHeader;
    withExtension[VNET_HDR_LEN + 40] = 6;
    const hdr = new DataView(withExtension.buffer);
    hdr.setUint16(2, 68, true);
    hdr.setUint16(6, 48, true);
    new DataView(withExtension.buffer, VNET_HDR_LEN).setUint16(4, big.length - VNET_HDR_LEN - 32);
    assertEquals(collect(segmenter, withExtension, true, false), [], `next header ${nextHeader}`);
  }
  const udp = tcp6SuperPacket(payload, 1220);
  udp[VNET_HDR_LEN + 6] = 17;
  assertEquals(collect(segmenter, udp, true, false), []);
  assertEquals(segmenter.stats.malformed, 4);
});

/** A Coalescer whose batches are copied out. */
function coalescer6() {
  const out: Uint8Array[] = [];
  const c = new Coalescer((packets, count) => {
    for (let i = 0; i < count; i++) out.push(packets[i]!.slice());
  });
  return { c, out };
}

Deno.test("Coalescer joins consecutive TCPv6 segments into one GSO_TCPV6 super-packet the kernel can cut back", () => {
  const { c, out } = coalescer6();
  const size = 1220;
  const data = crypto.getRandomValues(new Uint8Array(size * 7 + 333));
  for (let i = 0; i < 8; i++) {
    const chunk = data.subarray(i * size, Math.min((i + 1) * size, data.length));
    c.add(tcp6Segment(0xffffe000 + i * size, chunk, i === 7 ? 0x18 : 0x10), false);
  }
  c.flush();
  assertEquals(out.length, 1, "one super-packet");
  const joined = out[0]!;
  const hdr = new DataView(joined.buffer, 0, VNET_HDR_LEN);
  assertEquals([joined[0], joined[1]], [1, 4], "NEEDS_CSUM, GSO_TCPV6");
  assertEquals(hdr.getUint16(2, true), 60, "hdr_len");
  assertEquals(hdr.getUint16(4, true), size, "gso_size");
  assertEquals([hdr.getUint16(6, true), hdr.getUint16(8, true)], [40, 16], "csum start, offset");
  const ip = joined.subarray(VNET_HDR_LEN);
  const view = new DataView(ip.buffer, ip.byteOffset);
  assertEquals(view.getUint16(4), ip.length - 40, "payload length");
  assertEquals(view.getUint16(56), refSum(pseudo6(ip, ip.length - 40)), "partial checksum");
  assertEquals(ip.subarray(0, 4), tcp6Segment(0, new Uint8Array(1)).subarray(0, 4), "class, flow");
  assertEquals(view.getUint32(44), 0xffffe000, "the first sequence number");
  assertEquals(ip[53], 0x18, "the last segment's PSH");
  assertEquals(ip.subarray(60), data);
  // What the kernel makes of it: the same segments, every checksum right.
  const segments = collect(new Segmenter(), joined, true, false);
  assertEquals(segments.length, 8);
  segments.forEach((segment, i) => assert(tcp6ChecksumOk(segment), `segment ${i}`));
  assertEquals(new Uint8Array(segments.flatMap((s) => [...s.subarray(60)])), data);
});

Deno.test("Coalescer joins TCPv6 segments that a peer with offload sent with partial checksums", () => {
  // The server's UDP path: the client's segmenter cut a super-packet to the MTU for a peer with
  // offload; the server joins the segments again for its TUN.
  const payload = crypto.getRandomValues(new Uint8Array(20_000));
  const segments = collect(new Segmenter(), tcp6SuperPacket(payload, 1440), true, true, 1280);
  const { c, out } = coalescer6();
  for (const segment of segments) c.add(segment, true);
  c.flush();
  assertEquals(out.length, 1);
  const plain = collect(new Segmenter(), out[0]!, true, false);
  assertEquals(plain.length, segments.length);
  plain.forEach((segment, i) => assert(tcp6ChecksumOk(segment), `segment ${i}`));
  assertEquals(new Uint8Array(plain.flatMap((s) => [...s.subarray(60)])), payload);
});

Deno.test("Coalescer keeps apart TCPv6 segments of other flows, classes, hop limits, gaps, flags and layouts", () => {
  const payload = new Uint8Array(1000).fill(3);
  const next = (i: number, change?: (ip: Uint8Array) => void, flags = 0x10) =>
    tcp6Segment(1000 * i, payload, flags, change);
  const cases: [string, Uint8Array][] = [
    ["another flow label", next(1, (ip) => ip[3] = 0x46)],
    ["another traffic class", next(1, (ip) => ip[1]! ^= 0x10)],
    ["another hop limit", next(1, (ip) => ip[7] = 60)],
    ["another destination", next(1, (ip) => ip[39] = 8)],
    ["another port", next(1, (ip) => ip[43] = 80)],
    ["another window", next(1, (ip) => ip[55] = 0)],
    ["another ack", next(1, (ip) => ip[51]! ^= 1)],
    ["another urgent pointer", next(1, (ip) => ip[59] = 1)],
    ["another ECN nonce bit", next(1, (ip) => ip[52]! |= 1)],
    ["a gap", next(2)],
    ["a FIN", next(1, undefined, 0x11)],
    ["no ACK", next(1, undefined, 0x08)],
    ["a payload length that is not the packet's", next(1, (ip) => ip[5]! -= 1)],
    ["an extension header", next(1, (ip) => ip[6] = 60)],
  ];
  for (const [what, second] of cases) {
    const { c, out } = coalescer6();
    const first = next(0);
    c.add(first, false);
    c.add(second, false);
    c.flush();
    assertEquals(out.length, 2, what);
    assertEquals(out.map((p) => p.subarray(VNET_HDR_LEN)), [first, second], what);
    assertEquals(out.map((p) => p[1]), [0, 0], `${what}: no GSO`);
  }
});

Deno.test("Coalescer joins TCPv6 segments with the same TCP options, and only those", () => {
  const payload = new Uint8Array(1012).fill(6);
  // A 32-byte TCP header: NOP, NOP, timestamps (kind 8, length 10, TSval, TSecr).
  const timestamps = (tsval: number) => (ip: Uint8Array) => {
    ip[52] = 8 << 4;
    ip.set([1, 1, 8, 10], 60);
    new DataView(ip.buffer).setUint32(64, tsval);
    new DataView(ip.buffer).setUint32(68, 77);
  };
  const data = payload.length - 12;
  for (const [what, second, joined] of [["the same", 1, true], ["other", 2, false]] as const) {
    const { c, out } = coalescer6();
    c.add(tcp6Segment(0, payload, 0x10, timestamps(1)), false);
    c.add(tcp6Segment(data, payload, 0x10, timestamps(second)), false);
    c.flush();
    assertEquals(out.length, joined ? 1 : 2, `${what} options`);
    if (joined) {
      assertEquals(new DataView(out[0]!.buffer).getUint16(2, true), 72, "hdr_len");
      const segments = collect(new Segmenter(), out[0]!, true, false);
      assertEquals(segments.length, 2);
      segments.forEach((segment, i) => assert(tcp6ChecksumOk(segment), `segment ${i}`));
    }
  }
});

Deno.test("Coalescer never joins TCP segments whose header is shorter than 20 bytes", () => {
  const payload = new Uint8Array(1000).fill(4);
  const short = (ip: Uint8Array) => ip[52] = 4 << 4; // a data offset of 16 bytes
  const { c, out } = coalescer6();
  // Read with the 16-byte header, the second would continue the first.
  c.add(tcp6Segment(0, payload, 0x10, short), false);
  c.add(tcp6Segment(1004, payload, 0x10, short), false);
  c.flush();
  assertEquals(out.map((p) => p[1]), [0, 0], "no GSO");
});

Deno.test("Coalescer never joins an IPv4 segment to an IPv6 run, even one built to mirror its bytes", () => {
  // An IPv4 segment with 40 bytes of TCP options has the 60 header bytes of a TCPv6 one. Built
  // so that every byte the IPv6 run compares is the same, only the version tells them apart.
  const payload = new Uint8Array(1000).fill(5);
  const length = 60 + payload.length;
  const mirror = (ip: Uint8Array) => {
    new DataView(ip.buffer).setUint32(0, (6 << 28) | length); // flow label = the v4 length
    ip[7] = 0; // hop limit = the v4 fragment offset
    ip[9] = 6; // source byte 1 = the v4 protocol
    ip[32] = 10 << 4; // destination byte 8 = the v4 TCP data offset (40 bytes)
    ip[33] = 0x10; // destination byte 9 = the v4 TCP flags (ACK)
  };
  const { c, out } = coalescer6();
  const first = tcp6Segment(0, payload, 0x10, mirror);
  c.add(first, false);
  const v4 = tcp6Segment(1000, payload, 0x10, mirror);
  v4[0] = 0x45;
  v4[6] = 0; // no fragment bits; the IPv6 run skips this byte (its next header)
  c.add(v4, false);
  c.flush();
  assertEquals(out.length, 2);
  assertEquals(out[1]!.subarray(VNET_HDR_LEN), v4);
});
