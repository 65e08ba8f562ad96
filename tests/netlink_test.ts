/**
 * Unit tests of the rtnetlink message codec and the address parsing behind it: byte-level
 * checks of each request and decodes of hand-built replies. No root, no permissions. Header
 * integers are read little-endian, the host order of the machines this project runs on.
 */

import assert from "node:assert/strict";
import {
  align,
  type Attribute,
  decodeAddress,
  decodeLink,
  decodeRoute,
  decodeStatus,
  encodeAddressRequest,
  encodeDumpRequest,
  encodeGetLinkRequest,
  encodeMessage,
  encodeRouteRequest,
  encodeSetLinkRequest,
  formatIpAddress,
  IFA_ADDRESS,
  IFA_BROADCAST,
  IFA_LOCAL,
  IFF_UP,
  IFLA_IFNAME,
  IFLA_MTU,
  IFLA_NET_NS_FD,
  networkAddress,
  NLM_F_ACK,
  NLM_F_ACK_TLVS,
  NLM_F_CAPPED,
  NLM_F_CREATE,
  NLM_F_DUMP,
  NLM_F_EXCL,
  NLM_F_REQUEST,
  NLMSG_DONE,
  NLMSG_ERROR,
  NLMSGERR_ATTR_MSG,
  parseAttributes,
  parseCidr,
  parseIpAddress,
  parseMessages,
  RT_SCOPE_LINK,
  RT_SCOPE_NOWHERE,
  RT_SCOPE_UNIVERSE,
  RT_TABLE_MAIN,
  RTA_DST,
  RTA_GATEWAY,
  RTA_OIF,
  RTA_PRIORITY,
  RTA_TABLE,
  RTM_DELADDR,
  RTM_DELROUTE,
  RTM_GETADDR,
  RTM_GETLINK,
  RTM_GETROUTE,
  RTM_NEWADDR,
  RTM_NEWLINK,
  RTM_NEWROUTE,
  RTM_SETLINK,
  RTN_UNICAST,
  RTPROT_STATIC,
} from "../ffi/netlink_message.ts";

const u16 = (bytes: Uint8Array, offset: number) =>
  new DataView(bytes.buffer, bytes.byteOffset).getUint16(offset, true);
const u32 = (bytes: Uint8Array, offset: number) =>
  new DataView(bytes.buffer, bytes.byteOffset).getUint32(offset, true);
const i32 = (bytes: Uint8Array, offset: number) =>
  new DataView(bytes.buffer, bytes.byteOffset).getInt32(offset, true);

function u32Data(value: number): Uint8Array {
  const data = new Uint8Array(4);
  new DataView(data.buffer).setUint32(0, value, true);
  return data;
}

/** The attributes after a family header of `bodyLength` bytes, in order, as [type, data]. */
function attributesOf(message: Uint8Array, bodyLength: number): [number, number[]][] {
  const out: [number, number[]][] = [];
  for (let offset = 16 + bodyLength; offset < message.length;) {
    const length = u16(message, offset);
    out.push([u16(message, offset + 2), [...message.subarray(offset + 4, offset + length)]]);
    offset += align(length);
  }
  return out;
}

const REQUEST_ACK = NLM_F_REQUEST | NLM_F_ACK;
const CREATE = REQUEST_ACK | NLM_F_CREATE | NLM_F_EXCL;

// ---------------------------------------------------------------------------------------------
// Addresses and CIDRs

Deno.test("parseIpAddress() reads IPv4 and IPv6 text forms", () => {
  assert.deepEqual(parseIpAddress("10.8.0.1"), { family: 4, bytes: new Uint8Array([10, 8, 0, 1]) });
  const cases: [string, number[]][] = [
    ["::", [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]],
    ["::1", [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]],
    ["fd00::", [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]],
    ["FD00:9::1", [0xfd, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]],
    ["1:2:3:4:5:6:7:8", [0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0, 7, 0, 8]],
    ["::ffff:10.8.0.1", [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 8, 0, 1]],
  ];
  for (const [text, bytes] of cases) {
    assert.deepEqual(parseIpAddress(text), { family: 6, bytes: new Uint8Array(bytes) }, text);
  }
});

Deno.test("parseIpAddress() names the address and the reason it is refused", () => {
  const cases: [string, string][] = [
    ["10.8.0.256", '"256" is not a number from 0 to 255'],
    ["10.8.0.01", '"01" is not a number from 0 to 255'],
    ["10.8.0", "expected four numbers separated by dots"],
    ["", "expected four numbers separated by dots"],
    ["fd00::1::2", 'at most one "::" is allowed'],
    ["1:2:3:4:5:6:7", "expected 8 groups of hex digits"],
    ["1:2:3:4::5:6:7:8", 'too many groups around "::"'],
    ["fe80::1%eth0", '"1%eth0" is not a group of 1 to 4 hex digits'],
    ["12345::", '"12345" is not a group of 1 to 4 hex digits'],
    [
      "::ffff:10.8.0.300",
      'embedded IPv4 address "10.8.0.300": "300" is not a number from 0 to 255',
    ],
  ];
  for (const [text, reason] of cases) {
    assert.throws(() => parseIpAddress(text), {
      name: "TypeError",
      message: `Cannot parse IP address "${text}": ${reason}`,
    });
  }
});

Deno.test("parseCidr() keeps host bits and the prefix length", () => {
  assert.deepEqual(parseCidr("10.8.0.1/24"), {
    family: 4,
    bytes: new Uint8Array([10, 8, 0, 1]),
    prefix: 24,
  });
  assert.equal(parseCidr("fd00::1/64").prefix, 64);
  assert.equal(parseCidr("0.0.0.0/0").prefix, 0);
  assert.equal(parseCidr("::/128").prefix, 128);
});

Deno.test("parseCidr() names the CIDR and the reason it is refused", () => {
  const cases: [string, string][] = [
    ["10.8.0.0/33", "prefix length must be at most 32"],
    ["fd00::/129", "prefix length must be at most 128"],
    ["10.8.0.0", 'missing "/" and prefix length'],
    ["10.8.0.0/", 'prefix length "" is not a decimal number'],
    ["10.8.0.0/024", 'prefix length "024" is not a decimal number'],
    ["10.8.0.0/2x", 'prefix length "2x" is not a decimal number'],
    ["10.8.0/24", "expected four numbers separated by dots"],
  ];
  for (const [text, reason] of cases) {
    assert.throws(() => parseCidr(text), {
      name: "TypeError",
      message: `Cannot parse CIDR "${text}": ${reason}`,
    });
  }
});

Deno.test("formatIpAddress() writes RFC 5952 text that parseIpAddress() reads back", () => {
  const cases = [
    "10.8.0.1",
    "0.0.0.0",
    "::",
    "::1",
    "fd00::",
    "fd00:9::1",
    "2001:db8:0:1:1:1:1:1", // one zero group stays "0"
    "2001:0:0:1::1", // the longer run is compressed
    "2001:db8::1:0:0:1", // of two equal runs, the first
    "::ffff:10.8.0.1",
    "1:2:3:4:5:6:7:8",
  ];
  for (const text of cases) assert.equal(formatIpAddress(parseIpAddress(text).bytes), text);
  assert.equal(formatIpAddress(parseIpAddress("FD00:0000:0:0:0:0:0:0001").bytes), "fd00::1");
  assert.throws(() => formatIpAddress(new Uint8Array(5)), RangeError);
});

Deno.test("networkAddress() clears the host bits", () => {
  assert.deepEqual(
    networkAddress(new Uint8Array([10, 8, 200, 77]), 20),
    new Uint8Array([10, 8, 192, 0]),
  );
  assert.deepEqual(
    networkAddress(new Uint8Array([10, 8, 0, 1]), 32),
    new Uint8Array([10, 8, 0, 1]),
  );
  assert.deepEqual(networkAddress(new Uint8Array([10, 8, 0, 1]), 0), new Uint8Array(4));
  assert.equal(formatIpAddress(networkAddress(parseIpAddress("fd00:9::1").bytes, 64)), "fd00:9::");
});

// ---------------------------------------------------------------------------------------------
// Requests

Deno.test("encodeMessage() writes nlmsghdr and pads the body and every attribute to 4 bytes", () => {
  const attributes: Attribute[] = [
    { type: 3, data: new Uint8Array([1, 2, 3]) },
    { type: 4, data: new Uint8Array([9]) },
  ];
  const message = encodeMessage(
    0x1234,
    0x0305,
    0xdeadbeef,
    new Uint8Array([7, 7, 7, 7, 7]),
    attributes,
  );
  // 16 header + 8 (5-byte body padded) + 8 (4+3 padded) + 8 (4+1 padded)
  assert.equal(message.length, 40);
  assert.equal(u32(message, 0), 40); // nlmsg_len counts the last padding too
  assert.equal(u16(message, 4), 0x1234); // nlmsg_type
  assert.equal(u16(message, 6), 0x0305); // nlmsg_flags
  assert.equal(u32(message, 8), 0xdeadbeef); // nlmsg_seq
  assert.equal(u32(message, 12), 0); // nlmsg_pid
  assert.deepEqual([...message.subarray(16, 24)], [7, 7, 7, 7, 7, 0, 0, 0]);
  assert.deepEqual([...message.subarray(24, 32)], [7, 0, 3, 0, 1, 2, 3, 0]); // rta_len 7, type 3
  assert.deepEqual([...message.subarray(32, 40)], [5, 0, 4, 0, 9, 0, 0, 0]);
});

Deno.test("encodeSetLinkRequest() touches only IFF_UP through ifi_change", () => {
  for (const [up, flags] of [[true, IFF_UP], [false, 0]] as const) {
    const message = encodeSetLinkRequest(7, 3, { up });
    assert.equal(message.length, 32);
    assert.equal(u32(message, 0), 32);
    assert.equal(u16(message, 4), RTM_SETLINK);
    assert.equal(u16(message, 6), REQUEST_ACK);
    assert.equal(u32(message, 8), 7);
    assert.equal(message[16], 0); // ifi_family AF_UNSPEC
    assert.equal(i32(message, 20), 3); // ifi_index
    assert.equal(u32(message, 24), flags); // ifi_flags
    assert.equal(u32(message, 28), IFF_UP); // ifi_change
  }
});

Deno.test("encodeSetLinkRequest() sends the MTU as IFLA_MTU and a namespace as IFLA_NET_NS_FD", () => {
  const mtu = encodeSetLinkRequest(1, 3, { mtu: 1400 });
  assert.equal(u32(mtu, 0), 40);
  assert.equal(u32(mtu, 28), 0); // ifi_change: flags untouched
  assert.deepEqual(attributesOf(mtu, 16), [[IFLA_MTU, [...u32Data(1400)]]]);
  const netns = encodeSetLinkRequest(1, 3, { netnsFd: 9 });
  assert.deepEqual(attributesOf(netns, 16), [[IFLA_NET_NS_FD, [9, 0, 0, 0]]]);
});

Deno.test("encodeSetLinkRequest() refuses values that do not fit their C field", () => {
  assert.throws(() => encodeSetLinkRequest(1, -1, { up: true }), {
    name: "RangeError",
    message: "ifindex must be an integer from 0 to 2147483647, got -1",
  });
  assert.throws(() => encodeSetLinkRequest(1, 3, { mtu: 1400.5 }), RangeError);
  assert.throws(() => encodeSetLinkRequest(1, 3, { mtu: 2 ** 32 }), RangeError);
});

Deno.test("encodeGetLinkRequest() asks for one link by ifi_index", () => {
  const message = encodeGetLinkRequest(5, 42);
  assert.equal(u32(message, 0), 32);
  assert.equal(u16(message, 4), RTM_GETLINK);
  assert.equal(u16(message, 6), REQUEST_ACK);
  assert.equal(i32(message, 20), 42);
});

Deno.test("encodeAddressRequest() sends IFA_LOCAL, IFA_ADDRESS and IFA_BROADCAST for IPv4", () => {
  const message = encodeAddressRequest(RTM_NEWADDR, 9, 3, "10.8.0.1/24");
  assert.equal(u32(message, 0), 16 + 8 + 3 * 8);
  assert.equal(u16(message, 4), RTM_NEWADDR);
  assert.equal(u16(message, 6), CREATE);
  assert.equal(u32(message, 8), 9);
  // struct ifaddrmsg: family AF_INET, prefix 24, flags 0, scope universe, index 3
  assert.deepEqual([...message.subarray(16, 24)], [2, 24, 0, RT_SCOPE_UNIVERSE, 3, 0, 0, 0]);
  assert.deepEqual(attributesOf(message, 8), [
    [IFA_LOCAL, [10, 8, 0, 1]],
    [IFA_ADDRESS, [10, 8, 0, 1]],
    [IFA_BROADCAST, [10, 8, 0, 255]],
  ]);
  const wide = encodeAddressRequest(RTM_NEWADDR, 9, 3, "172.16.5.9/12");
  assert.deepEqual(attributesOf(wide, 8)[2], [IFA_BROADCAST, [172, 31, 255, 255]]);
});

Deno.test("encodeAddressRequest() leaves out the broadcast address on /31, /32 and deletion", () => {
  for (const cidr of ["10.8.0.0/31", "10.8.0.1/32"]) {
    const types = attributesOf(encodeAddressRequest(RTM_NEWADDR, 1, 3, cidr), 8).map(([type]) =>
      type
    );
    assert.deepEqual(types, [IFA_LOCAL, IFA_ADDRESS], cidr);
  }
  const deletion = encodeAddressRequest(RTM_DELADDR, 1, 3, "10.8.0.1/24");
  assert.equal(u16(deletion, 4), RTM_DELADDR);
  assert.equal(u16(deletion, 6), REQUEST_ACK);
  assert.deepEqual(attributesOf(deletion, 8).map(([type]) => type), [IFA_LOCAL, IFA_ADDRESS]);
});

Deno.test("encodeAddressRequest() sends 16-byte IPv6 addresses", () => {
  const message = encodeAddressRequest(RTM_NEWADDR, 1, 3, "fd00::1/64");
  assert.equal(u32(message, 0), 16 + 8 + 2 * 20);
  assert.equal(message[16], 10); // AF_INET6
  assert.equal(message[17], 64);
  const address = [...parseIpAddress("fd00::1").bytes];
  assert.deepEqual(attributesOf(message, 8), [[IFA_LOCAL, address], [IFA_ADDRESS, address]]);
});

Deno.test("encodeAddressRequest() refuses an unparsable CIDR", () => {
  assert.throws(() => encodeAddressRequest(RTM_NEWADDR, 1, 3, "10.8.0.0/33"), {
    name: "TypeError",
    message: 'Cannot parse CIDR "10.8.0.0/33": prefix length must be at most 32',
  });
});

Deno.test("encodeRouteRequest() aligns attributes to 4 bytes", () => {
  const message = encodeRouteRequest(RTM_NEWROUTE, 4, {
    destination: "fd00:1::/64",
    ifindex: 3,
    metric: 100,
  });
  // 16 header + 12 rtmsg + 20 RTA_DST + 8 RTA_OIF + 8 RTA_PRIORITY
  assert.equal(message.length, 64);
  assert.equal(u32(message, 0), 64);
  assert.equal(u16(message, 28), 20); // rta_len of RTA_DST
  assert.equal(u16(message, 48), 8); // the next attribute starts right after, on a 4-byte boundary
  assert.deepEqual(attributesOf(message, 12), [
    [RTA_DST, [...parseIpAddress("fd00:1::").bytes]],
    [RTA_OIF, [3, 0, 0, 0]],
    [RTA_PRIORITY, [100, 0, 0, 0]],
  ]);
});

Deno.test("encodeRouteRequest() adds a static unicast route, scope link without a gateway", () => {
  const message = encodeRouteRequest(RTM_NEWROUTE, 4, {
    destination: "192.168.50.0/24",
    ifindex: 3,
  });
  assert.equal(u16(message, 4), RTM_NEWROUTE);
  assert.equal(u16(message, 6), CREATE);
  // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
  assert.deepEqual(
    [...message.subarray(16, 28)],
    [2, 24, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_LINK, RTN_UNICAST, 0, 0, 0, 0],
  );
  assert.deepEqual(attributesOf(message, 12), [[RTA_DST, [192, 168, 50, 0]], [RTA_OIF, [
    3,
    0,
    0,
    0,
  ]]]);
});

Deno.test("encodeRouteRequest() gives a route through a gateway scope universe", () => {
  const message = encodeRouteRequest(RTM_NEWROUTE, 4, {
    destination: "192.168.78.0/24",
    gateway: "10.9.0.2",
  });
  assert.equal(message[22], RT_SCOPE_UNIVERSE);
  assert.deepEqual(attributesOf(message, 12), [
    [RTA_DST, [192, 168, 78, 0]],
    [RTA_GATEWAY, [10, 9, 0, 2]],
  ]);
});

Deno.test("encodeRouteRequest() leaves out RTA_DST for a default route", () => {
  const message = encodeRouteRequest(RTM_NEWROUTE, 4, { destination: "0.0.0.0/0", ifindex: 3 });
  assert.equal(message[17], 0); // rtm_dst_len
  assert.deepEqual(attributesOf(message, 12), [[RTA_OIF, [3, 0, 0, 0]]]);
});

Deno.test("encodeRouteRequest() deletes with protocol and type 'any' and scope nowhere", () => {
  const message = encodeRouteRequest(RTM_DELROUTE, 4, { destination: "192.168.50.0/24" });
  assert.equal(u16(message, 4), RTM_DELROUTE);
  assert.equal(u16(message, 6), REQUEST_ACK);
  assert.deepEqual(
    [...message.subarray(16, 28)],
    [2, 24, 0, 0, RT_TABLE_MAIN, 0, RT_SCOPE_NOWHERE, 0, 0, 0, 0, 0],
  );
});

Deno.test("encodeRouteRequest() refuses host bits and a gateway of the other family", () => {
  assert.throws(() => encodeRouteRequest(RTM_NEWROUTE, 1, { destination: "192.168.50.1/24" }), {
    name: "TypeError",
    message:
      'Route destination "192.168.50.1/24" has host bits set; the network is "192.168.50.0/24"',
  });
  assert.throws(
    () => encodeRouteRequest(RTM_NEWROUTE, 1, { destination: "fd00:1::/64", gateway: "10.9.0.2" }),
    { name: "TypeError", message: 'Route gateway "10.9.0.2" is not IPv6 like "fd00:1::/64"' },
  );
  assert.throws(
    () => encodeRouteRequest(RTM_NEWROUTE, 1, { destination: "10.0.0.0/8", metric: -1 }),
    RangeError,
  );
});

Deno.test("encodeDumpRequest() sets NLM_F_DUMP and the family header of the type", () => {
  const cases: [typeof RTM_GETLINK | typeof RTM_GETADDR | typeof RTM_GETROUTE, number][] = [
    [RTM_GETLINK, 16],
    [RTM_GETADDR, 8],
    [RTM_GETROUTE, 12],
  ];
  for (const [type, bodyLength] of cases) {
    const message = encodeDumpRequest(type, 11, 10);
    assert.equal(u32(message, 0), 16 + bodyLength);
    assert.equal(u16(message, 4), type);
    assert.equal(u16(message, 6), REQUEST_ACK | NLM_F_DUMP);
    assert.equal(message[16], 10); // the family byte
  }
  assert.equal(encodeDumpRequest(RTM_GETROUTE, 1)[16], 0); // AF_UNSPEC by default
});

// ---------------------------------------------------------------------------------------------
// Replies

Deno.test("parseMessages() splits a datagram at each padded nlmsg_len", () => {
  const first = encodeMessage(RTM_NEWADDR, 2, 7, new Uint8Array(8), [
    { type: IFA_LOCAL, data: new Uint8Array([1, 2, 3]) },
  ]);
  const second = encodeMessage(NLMSG_DONE, 2, 7, new Uint8Array(4));
  const datagram = new Uint8Array([...first, ...second]);
  const messages = parseMessages(datagram);
  assert.deepEqual(messages.map(({ type, flags, seq, pid }) => [type, flags, seq, pid]), [
    [RTM_NEWADDR, 2, 7, 0],
    [NLMSG_DONE, 2, 7, 0],
  ]);
  assert.equal(messages[0]!.payload.length, first.length - 16);
});

Deno.test("parseMessages() refuses an nlmsg_len past the datagram", () => {
  const message = encodeMessage(NLMSG_DONE, 0, 1, new Uint8Array(4));
  assert.throws(() => parseMessages(message.subarray(0, 18)), {
    message: "Malformed netlink message at byte 0: nlmsg_len 20 in a 18-byte datagram",
  });
  assert.deepEqual(parseMessages(new Uint8Array(0)), []);
});

Deno.test("parseAttributes() masks NLA_F_NESTED and refuses a short rta_len", () => {
  const bytes = new Uint8Array([8, 0, 0x03, 0x80, 1, 2, 3, 4]); // type 3 | NLA_F_NESTED
  assert.deepEqual([...parseAttributes(bytes)], [[3, new Uint8Array([1, 2, 3, 4])]]);
  assert.throws(() => parseAttributes(new Uint8Array([2, 0, 1, 0])), {
    message: "Malformed netlink attribute at byte 0: rta_len 2",
  });
});

/** An NLMSG_ERROR as the kernel builds it: error, the echoed request, then extended-ACK TLVs. */
function errorMessage(error: number, flags: number, echoed: Uint8Array, text?: string): Uint8Array {
  const body = new Uint8Array(4 + echoed.length);
  new DataView(body.buffer).setInt32(0, error, true);
  body.set(echoed, 4);
  const attributes = text === undefined
    ? []
    : [{ type: NLMSGERR_ATTR_MSG, data: new TextEncoder().encode(`${text}\0`) }];
  return encodeMessage(NLMSG_ERROR, flags, 5, body, attributes);
}

Deno.test("decodeStatus() reads errno and the extended-ACK text of a capped NLMSG_ERROR", () => {
  const request = encodeAddressRequest(RTM_NEWADDR, 5, 3, "10.9.0.1/24");
  const datagram = errorMessage(
    -17,
    NLM_F_CAPPED | NLM_F_ACK_TLVS,
    request.subarray(0, 16),
    "ipv4: Address already assigned",
  );
  const [message] = parseMessages(datagram);
  assert.deepEqual(decodeStatus(message!), { errno: 17, detail: "ipv4: Address already assigned" });
});

Deno.test("decodeStatus() skips a whole echoed request before the extended-ACK text", () => {
  const request = encodeRouteRequest(RTM_NEWROUTE, 5, {
    destination: "192.168.50.0/24",
    ifindex: 99,
  });
  const datagram = errorMessage(-19, NLM_F_ACK_TLVS, request, "Device not found");
  assert.deepEqual(decodeStatus(parseMessages(datagram)[0]!), {
    errno: 19,
    detail: "Device not found",
  });
});

Deno.test("decodeStatus() reads an ACK as errno 0 and the int of NLMSG_DONE", () => {
  const ack = errorMessage(0, NLM_F_CAPPED, new Uint8Array(16));
  assert.deepEqual(decodeStatus(parseMessages(ack)[0]!), { errno: 0 });
  const done = encodeMessage(NLMSG_DONE, 2, 5, new Uint8Array(4));
  assert.deepEqual(decodeStatus(parseMessages(done)[0]!), { errno: 0 });
  const failed = encodeMessage(NLMSG_DONE, 2, 5, new Uint8Array([0xf0, 0xff, 0xff, 0xff])); // -16
  assert.deepEqual(decodeStatus(parseMessages(failed)[0]!), { errno: 16 });
});

Deno.test("decodeAddress() reads an RTM_NEWADDR dump message, IFA_LOCAL before the peer", () => {
  // 10.8.0.1 peer 10.8.0.2/32 on ifindex 7: IFA_ADDRESS is the peer on point-to-point links.
  const body = new Uint8Array([2, 32, 0x80, 0, 7, 0, 0, 0]);
  const datagram = encodeMessage(RTM_NEWADDR, 2, 1, body, [
    { type: IFA_ADDRESS, data: new Uint8Array([10, 8, 0, 2]) },
    { type: IFA_LOCAL, data: new Uint8Array([10, 8, 0, 1]) },
    { type: 3, data: new TextEncoder().encode("tun0\0") }, // IFA_LABEL
  ]);
  assert.deepEqual(decodeAddress(parseMessages(datagram)[0]!.payload), {
    ifindex: 7,
    family: 4,
    address: "10.8.0.1",
    prefix: 32,
  });
  const v6 = encodeMessage(RTM_NEWADDR, 2, 1, new Uint8Array([10, 64, 0, 0, 7, 0, 0, 0]), [
    { type: IFA_ADDRESS, data: parseIpAddress("fd00:9::1").bytes },
  ]);
  assert.deepEqual(decodeAddress(parseMessages(v6)[0]!.payload), {
    ifindex: 7,
    family: 6,
    address: "fd00:9::1",
    prefix: 64,
  });
});

Deno.test("decodeAddress() skips families other than IPv4 and IPv6", () => {
  assert.equal(decodeAddress(new Uint8Array([17, 0, 0, 0, 1, 0, 0, 0])), undefined);
});

Deno.test("decodeRoute() reads an RTM_NEWROUTE dump message", () => {
  const body = new Uint8Array([
    2,
    24,
    0,
    0,
    RT_TABLE_MAIN,
    RTPROT_STATIC,
    0,
    RTN_UNICAST,
    0,
    0,
    0,
    0,
  ]);
  const datagram = encodeMessage(RTM_NEWROUTE, 2, 1, body, [
    { type: RTA_TABLE, data: u32Data(RT_TABLE_MAIN) },
    { type: RTA_DST, data: new Uint8Array([192, 168, 78, 0]) },
    { type: RTA_PRIORITY, data: u32Data(50) },
    { type: RTA_GATEWAY, data: new Uint8Array([10, 9, 0, 2]) },
    { type: RTA_OIF, data: u32Data(3) },
  ]);
  assert.deepEqual(decodeRoute(parseMessages(datagram)[0]!.payload), {
    destination: "192.168.78.0/24",
    gateway: "10.9.0.2",
    ifindex: 3,
    table: RT_TABLE_MAIN,
    metric: 50,
    protocol: RTPROT_STATIC,
  });
});

Deno.test("decodeRoute() reads a default route without RTA_DST and a table above 255", () => {
  const body = new Uint8Array([10, 0, 0, 0, 252, 0, 0, RTN_UNICAST, 0, 0, 0, 0]); // RT_TABLE_COMPAT
  const datagram = encodeMessage(RTM_NEWROUTE, 2, 1, body, [{
    type: RTA_TABLE,
    data: u32Data(1000),
  }]);
  assert.deepEqual(decodeRoute(parseMessages(datagram)[0]!.payload), {
    destination: "::/0",
    table: 1000,
    protocol: 0,
  });
  assert.equal(decodeRoute(new Uint8Array([7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])), undefined); // AF_BRIDGE
});

Deno.test("decodeLink() reads the index, name, MTU and IFF_UP of an RTM_NEWLINK", () => {
  const body = new Uint8Array(16);
  new DataView(body.buffer).setInt32(4, 12, true);
  new DataView(body.buffer).setUint32(8, 0x1003, true); // IFF_UP | IFF_BROADCAST | IFF_MULTICAST
  const datagram = encodeMessage(RTM_NEWLINK, 0, 1, body, [
    { type: IFLA_IFNAME, data: new TextEncoder().encode("tun0\0") },
    { type: IFLA_MTU, data: u32Data(1400) },
  ]);
  assert.deepEqual(decodeLink(parseMessages(datagram)[0]!.payload), {
    index: 12,
    name: "tun0",
    mtu: 1400,
    up: true,
  });
  assert.throws(() => decodeLink(new Uint8Array(8)), {
    message: "RTM_NEWLINK of 8 bytes is too short",
  });
});
