/**
 * Unit tests of the rtnetlink codec's route lookup (RTM_GETROUTE for one address) and of the
 * route protocol (rtm_protocol) that tags a vpn client's host route. No root, no permissions.
 * Header integers are read little-endian, the host order of the machines this project runs on.
 */

import assert from "node:assert/strict";
import {
  decodeRoute,
  encodeMessage,
  encodeRouteGetRequest,
  encodeRouteRequest,
  NLM_F_ACK,
  NLM_F_REQUEST,
  parseAttributes,
  parseIpAddress,
  parseMessages,
  RT_TABLE_MAIN,
  RTA_DST,
  RTA_GATEWAY,
  RTA_OIF,
  RTA_PREFSRC,
  RTA_TABLE,
  RTM_DELROUTE,
  RTM_GETROUTE,
  RTM_NEWROUTE,
  RTN_UNICAST,
  RTPROT_STATIC,
  RTPROT_VPN,
} from "../ffi/netlink_message.ts";

const u16 = (bytes: Uint8Array, offset: number) =>
  new DataView(bytes.buffer, bytes.byteOffset).getUint16(offset, true);

function u32Data(value: number): Uint8Array {
  const data = new Uint8Array(4);
  new DataView(data.buffer).setUint32(0, value, true);
  return data;
}

Deno.test("encodeRouteGetRequest() asks for one IPv4 address with a /32 RTA_DST", () => {
  const message = encodeRouteGetRequest(7, "203.0.113.9");
  const [parsed] = parseMessages(message);
  assert.equal(parsed?.type, RTM_GETROUTE);
  assert.equal(parsed?.flags, NLM_F_REQUEST | NLM_F_ACK); // one answer, not a dump
  assert.equal(parsed?.seq, 7);
  // struct rtmsg: family AF_INET, dst_len 32, every other field 0 ("any")
  assert.deepEqual([...message.subarray(16, 28)], [2, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
  const attributes = parseAttributes(message.subarray(28));
  assert.deepEqual([...attributes.keys()], [RTA_DST]);
  assert.deepEqual([...attributes.get(RTA_DST)!], [203, 0, 113, 9]);
});

Deno.test("encodeRouteGetRequest() asks for an IPv6 address with a /128 and refuses a CIDR", () => {
  const message = encodeRouteGetRequest(1, "2001:db8::7");
  assert.deepEqual([message[16], message[17]], [10, 128]);
  assert.deepEqual(
    [...parseAttributes(message.subarray(28)).get(RTA_DST)!],
    [...parseIpAddress("2001:db8::7").bytes],
  );
  assert.throws(() => encodeRouteGetRequest(1, "10.0.0.0/8"), {
    name: "TypeError",
    message: /^Cannot parse IP address "10\.0\.0\.0\/8"/,
  });
});

Deno.test("encodeRouteRequest() tags a new route with the protocol given, static without", () => {
  const tagged = encodeRouteRequest(RTM_NEWROUTE, 1, {
    destination: "203.0.113.9/32",
    gateway: "10.77.0.254",
    protocol: RTPROT_VPN,
  });
  assert.equal(tagged[21], RTPROT_VPN); // rtm_protocol
  const plain = encodeRouteRequest(RTM_NEWROUTE, 1, { destination: "203.0.113.9/32" });
  assert.equal(plain[21], RTPROT_STATIC);
});

Deno.test("encodeRouteRequest() removes only routes of the protocol given, any without", () => {
  const tagged = encodeRouteRequest(RTM_DELROUTE, 1, {
    destination: "203.0.113.9/32",
    protocol: RTPROT_VPN,
  });
  assert.equal(u16(tagged, 4), RTM_DELROUTE);
  assert.equal(tagged[21], RTPROT_VPN);
  assert.equal(encodeRouteRequest(RTM_DELROUTE, 1, { destination: "203.0.113.9/32" })[21], 0);
  assert.throws(
    () => encodeRouteRequest(RTM_NEWROUTE, 1, { destination: "10.0.0.0/8", protocol: 256 }),
    { name: "RangeError", message: "protocol must be an integer from 0 to 255, got 256" },
  );
});

Deno.test("RTPROT_VPN lies above RTPROT_STATIC, where the kernel leaves values to daemons", () => {
  assert.equal(RTPROT_VPN, 0x76);
  assert.ok(RTPROT_VPN > RTPROT_STATIC);
});

Deno.test("decodeRoute() reads the protocol and RTA_PREFSRC of a route lookup's answer", () => {
  // What the kernel answers to RTM_GETROUTE: a cloned /32 with the output link and source.
  const body = new Uint8Array([2, 32, 0, 0, RT_TABLE_MAIN, 0, 0, RTN_UNICAST, 0, 2, 0, 0]);
  const datagram = encodeMessage(RTM_NEWROUTE, 0, 7, body, [
    { type: RTA_TABLE, data: u32Data(RT_TABLE_MAIN) },
    { type: RTA_DST, data: new Uint8Array([203, 0, 113, 9]) },
    { type: RTA_OIF, data: u32Data(4) },
    { type: RTA_PREFSRC, data: new Uint8Array([10, 77, 0, 1]) },
    { type: RTA_GATEWAY, data: new Uint8Array([10, 77, 0, 254]) },
  ]);
  assert.deepEqual(decodeRoute(parseMessages(datagram)[0]!.payload), {
    destination: "203.0.113.9/32",
    gateway: "10.77.0.254",
    ifindex: 4,
    table: RT_TABLE_MAIN,
    protocol: 0,
    source: "10.77.0.1",
  });
  body[5] = RTPROT_VPN;
  const tagged = encodeMessage(RTM_NEWROUTE, 0, 7, body, []);
  assert.equal(decodeRoute(parseMessages(tagged)[0]!.payload)?.protocol, RTPROT_VPN);
});
