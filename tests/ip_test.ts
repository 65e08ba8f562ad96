import {
  formatIPv4,
  formatIPv6,
  ipv4Destination,
  ipv4InCidr,
  ipv4Netmask,
  ipv4Source,
  IPV6_DESTINATION_OFFSET,
  IPV6_SOURCE_OFFSET,
  ipv6DestinationEquals,
  ipv6Equals,
  ipv6HostKey,
  ipv6SourceEquals,
  packetVersion,
  parseCidr,
  parseIPv4,
  parseIPv6,
} from "../mod/core/ip.ts";
import { assert, assertEquals, assertThrows } from "./_assert.ts";

Deno.test("parseIPv4() reads dotted quads as unsigned numbers", () => {
  assertEquals(parseIPv4("10.8.0.1"), 0x0a080001);
  assertEquals(parseIPv4("0.0.0.0"), 0);
  assertEquals(parseIPv4("255.255.255.255"), 0xffffffff);
});

Deno.test("parseIPv4() refuses malformed addresses with the reason", () => {
  assertThrows(() => parseIPv4("10.8.0"), TypeError, /"10\.8\.0": expected four numbers/);
  assertThrows(() => parseIPv4("10.8.0.256"), TypeError, /256 is greater than 255/);
  assertThrows(() => parseIPv4("10.08.0.1"), TypeError, /"08" has a leading zero/);
  assertThrows(() => parseIPv4("10.8.0.-1"), TypeError, /"-1" is not a number/);
  assertThrows(() => parseIPv4(" 10.8.0.1"), TypeError);
  assertThrows(() => parseIPv4(""), TypeError);
});

Deno.test("formatIPv4() writes dotted quads, also for addresses above 2^31", () => {
  assertEquals(formatIPv4(0x0a080001), "10.8.0.1");
  assertEquals(formatIPv4(0xc0a832ff), "192.168.50.255");
  assertEquals(formatIPv4(-1), "255.255.255.255");
});

Deno.test("parseIPv6() reads full, shortened and dotted-quad forms", () => {
  assertEquals(formatIPv6(parseIPv6("fd00:0:0:0:0:0:0:1")), "fd00::1");
  assertEquals(formatIPv6(parseIPv6("::")), "::");
  assertEquals(formatIPv6(parseIPv6("::1")), "::1");
  assertEquals(formatIPv6(parseIPv6("FD00::")), "fd00::");
  assertEquals(formatIPv6(parseIPv6("::ffff:10.8.0.1")), "::ffff:a08:1");
  assertEquals(parseIPv6("::ffff:10.8.0.1").slice(10), new Uint8Array([255, 255, 10, 8, 0, 1]));
});

Deno.test("parseIPv6() refuses malformed addresses", () => {
  for (
    const bad of [
      "1::2::3",
      "1:2:3:4:5:6:7",
      "1:2:3:4:5:6:7:8:9",
      "1:2:3:4:5:6:7:8::",
      "12345::",
      "fe80::1%eth0",
      ":1::2",
      "1.2.3.4::",
      "::1.2.3.256",
      "",
    ]
  ) {
    assertThrows(() => parseIPv6(bad), TypeError, /^Cannot parse IPv6 address/);
  }
});

Deno.test("formatIPv6() shortens the longest zero run and leaves single zeros", () => {
  assertEquals(formatIPv6(parseIPv6("1:0:0:2:0:0:0:3")), "1:0:0:2::3");
  assertEquals(formatIPv6(parseIPv6("1:0:2:3:4:5:6:7")), "1:0:2:3:4:5:6:7");
  assertEquals(formatIPv6(parseIPv6("0:0:1:0:0:2:0:0")), "::1:0:0:2:0:0");
});

Deno.test("parseCidr() returns family, canonical address, network and prefix", () => {
  assertEquals(parseCidr("10.8.0.5/24"), {
    family: 4,
    address: "10.8.0.5",
    network: "10.8.0.0",
    prefix: 24,
  });
  assertEquals(parseCidr("0.0.0.0/0"), {
    family: 4,
    address: "0.0.0.0",
    network: "0.0.0.0",
    prefix: 0,
  });
  assertEquals(parseCidr("192.168.50.7/32").network, "192.168.50.7");
  assertEquals(parseCidr("FD00:1:2:3::1/52"), {
    family: 6,
    address: "fd00:1:2:3::1",
    network: "fd00:1:2::",
    prefix: 52,
  });
  assertEquals(parseCidr("::/0").network, "::");
});

Deno.test("parseCidr() refuses a prefix too long for the family with a RangeError", () => {
  assertThrows(
    () => parseCidr("10.8.0.0/33"),
    RangeError,
    /^Cannot parse CIDR "10\.8\.0\.0\/33": prefix length must be at most 32$/,
  );
  assertThrows(() => parseCidr("fd00::/129"), RangeError, /must be at most 128$/);
});

Deno.test("parseCidr() refuses malformed text with a TypeError", () => {
  assertThrows(() => parseCidr("10.8.0.0"), TypeError, /expected an address, "\/" and a prefix/);
  assertThrows(() => parseCidr("10.8.0.0/"), TypeError);
  assertThrows(() => parseCidr("10.8.0.0/-1"), TypeError);
  assertThrows(() => parseCidr("10.8.0/24"), TypeError, /^Cannot parse CIDR "10\.8\.0\/24": /);
  assertThrows(() => parseCidr("fd00:::/64"), TypeError);
  assertThrows(() => parseCidr("/24"), TypeError);
});

Deno.test("ipv4Netmask() covers /0 to /32", () => {
  assertEquals(ipv4Netmask(0), 0);
  assertEquals(ipv4Netmask(1), 0x80000000);
  assertEquals(ipv4Netmask(24), 0xffffff00);
  assertEquals(ipv4Netmask(32), 0xffffffff);
});

Deno.test("ipv4InCidr() tells inside from outside, at the edges too", () => {
  const net = parseIPv4("10.8.0.0");
  assert(ipv4InCidr(parseIPv4("10.8.0.0"), net, 24));
  assert(ipv4InCidr(parseIPv4("10.8.0.255"), net, 24));
  assert(!ipv4InCidr(parseIPv4("10.8.1.0"), net, 24));
  assert(ipv4InCidr(parseIPv4("200.1.2.3"), net, 0));
  assert(ipv4InCidr(parseIPv4("255.255.255.255"), parseIPv4("255.255.255.0"), 24));
  assert(!ipv4InCidr(parseIPv4("10.8.0.2"), parseIPv4("10.8.0.1"), 32));
});

/** An IPv4 header from `source` to `destination`, behind `offset` bytes of something else. */
function ipv4Packet(source: string, destination: string, offset: number): Uint8Array {
  const buf = new Uint8Array(offset + 20);
  buf[offset] = 0x45;
  new DataView(buf.buffer).setUint32(offset + 12, parseIPv4(source));
  new DataView(buf.buffer).setUint32(offset + 16, parseIPv4(destination));
  return buf;
}

Deno.test("ipv4Source() and ipv4Destination() read unsigned addresses at an offset", () => {
  const packet = ipv4Packet("10.8.0.2", "192.168.50.255", 10);
  assertEquals(packetVersion(packet, 10), 4);
  assertEquals(ipv4Source(packet, 10), parseIPv4("10.8.0.2"));
  assertEquals(ipv4Destination(packet, 10), parseIPv4("192.168.50.255"));
  assertEquals(ipv4Destination(ipv4Packet("1.2.3.4", "255.255.255.255", 0)), 0xffffffff);
});

Deno.test("ipv6SourceEquals() and ipv6DestinationEquals() compare header addresses", () => {
  const packet = new Uint8Array(4 + 40);
  packet[4] = 0x60;
  packet.set(parseIPv6("fd00::2"), 4 + 8);
  packet.set(parseIPv6("fd00::1"), 4 + 24);
  assertEquals(packetVersion(packet, 4), 6);
  assert(ipv6SourceEquals(packet, 4, parseIPv6("fd00::2")));
  assert(!ipv6SourceEquals(packet, 4, parseIPv6("fd00::1")));
  assert(ipv6DestinationEquals(packet, 4, parseIPv6("fd00::1")));
  assert(!ipv6DestinationEquals(packet, 4, parseIPv6("fd00::3")));
});

Deno.test("IPV6_SOURCE_OFFSET and IPV6_DESTINATION_OFFSET are where RFC 8200 puts the addresses", () => {
  // Version/class/flow (4), payload length (2), next header (1), hop limit (1), then 16 + 16.
  assertEquals(IPV6_SOURCE_OFFSET, 4 + 2 + 1 + 1);
  assertEquals(IPV6_DESTINATION_OFFSET, IPV6_SOURCE_OFFSET + 16);
});

Deno.test("ipv6HostKey() is the address's low 32 bits, unsigned, at any offset", () => {
  const buf = new Uint8Array(3 + 16);
  buf.set(parseIPv6("fd00:1:2:3:4:5:a08:5"), 3);
  assertEquals(ipv6HostKey(buf, 3), 0x0a080005);
  buf.set(parseIPv6("fd00::ffff:fffe"), 3);
  assertEquals(ipv6HostKey(buf, 3), 0xfffffffe, "unsigned above 2^31");
  // Only the low 32 bits: the key is for a Map, and ipv6Equals confirms the whole address.
  buf.set(parseIPv6("fd99::ffff:fffe"), 3);
  assertEquals(ipv6HostKey(buf, 3), 0xfffffffe);
});

Deno.test("ipv6Equals() compares all 16 bytes at an offset", () => {
  const address = parseIPv6("fd00:1:2:3::9");
  const buf = new Uint8Array(5 + 16);
  buf.set(address, 5);
  assert(ipv6Equals(buf, 5, address));
  assert(!ipv6Equals(buf, 4, address));
  for (const i of [0, 7, 15]) {
    const other = address.slice();
    other[i]! ^= 1;
    assert(!ipv6Equals(buf, 5, other), `differs in byte ${i}`);
  }
});
