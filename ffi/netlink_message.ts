/**
 * rtnetlink messages as bytes: the request encoders and reply decoders behind `Netlink` in
 * `netlink.ts`, and the IPv4/IPv6 address and CIDR parsing they need. Everything here is a pure
 * function over `Uint8Array`, so it is tested byte for byte without root.
 *
 * Layouts (<linux/netlink.h>, <linux/rtnetlink.h>, <linux/if_link.h>, <linux/if_addr.h>): a
 * `struct nlmsghdr` (16 bytes), the family header `struct ifinfomsg` (16), `struct ifaddrmsg` (8)
 * or `struct rtmsg` (12), then `struct rtattr` attributes (4-byte header and payload), each
 * padded to NLA_ALIGNTO (4) bytes. Header integers are in host byte order, addresses in network
 * byte order.
 *
 * @example Encode a request and read its type back
 * ```ts
 * import { encodeRouteRequest, parseMessages, RTM_NEWROUTE } from "./netlink_message.ts";
 *
 * const request = encodeRouteRequest(RTM_NEWROUTE, 1, { destination: "10.0.0.0/8", ifindex: 2 });
 * console.log(parseMessages(request)[0]?.type === RTM_NEWROUTE); // true
 * ```
 *
 * @module
 */

import { AF_INET, AF_INET6 } from "./constants.ts";

/** <linux/netlink.h> NETLINK_ROUTE: the rtnetlink protocol of an AF_NETLINK socket. */
export const NETLINK_ROUTE = 0;
/** <linux/netlink.h> SOL_NETLINK socket options. */
export const SOL_NETLINK = 270;
export const NETLINK_CAP_ACK = 10;
export const NETLINK_EXT_ACK = 11;

/** <linux/netlink.h> nlmsg_flags of requests. */
export const NLM_F_REQUEST = 0x1;
export const NLM_F_ACK = 0x4;
export const NLM_F_DUMP = 0x300;
export const NLM_F_EXCL = 0x200;
export const NLM_F_CREATE = 0x400;
/** <linux/netlink.h> nlmsg_flags of replies. */
export const NLM_F_DUMP_INTR = 0x10;
export const NLM_F_CAPPED = 0x100;
export const NLM_F_ACK_TLVS = 0x200;

/** <linux/netlink.h> control message types and the extended-ACK attribute with the text. */
export const NLMSG_ERROR = 2;
export const NLMSG_DONE = 3;
export const NLMSGERR_ATTR_MSG = 1;

/** <linux/rtnetlink.h> message types. */
export const RTM_NEWLINK = 16;
export const RTM_GETLINK = 18;
export const RTM_SETLINK = 19;
export const RTM_NEWADDR = 20;
export const RTM_DELADDR = 21;
export const RTM_GETADDR = 22;
export const RTM_NEWROUTE = 24;
export const RTM_DELROUTE = 25;
export const RTM_GETROUTE = 26;

/** <linux/if_link.h> IFLA_* attributes and <linux/if.h> IFF_UP. */
export const IFLA_IFNAME = 3;
export const IFLA_MTU = 4;
export const IFLA_NET_NS_FD = 28;
export const IFF_UP = 0x1;

/** <linux/if_addr.h> IFA_* attributes. */
export const IFA_ADDRESS = 1;
export const IFA_LOCAL = 2;
export const IFA_BROADCAST = 4;

/** <linux/rtnetlink.h> RTA_* attributes and rtmsg field values. */
export const RTA_DST = 1;
export const RTA_OIF = 4;
export const RTA_GATEWAY = 5;
export const RTA_PRIORITY = 6;
export const RTA_PREFSRC = 7;
export const RTA_TABLE = 15;
export const RT_TABLE_MAIN = 254;
export const RTPROT_STATIC = 4;
/**
 * The rtm_protocol of the routes a vpn client adds outside its TUN (the host route to the
 * server), so that `ip route show proto 0x76` finds them and a removal matches only them.
 * <linux/rtnetlink.h> says values above RTPROT_STATIC are not interpreted by the kernel and
 * are for routing daemons; 0x76 (118) is in none of the assigned ones (iproute2's rt_protos:
 * 8-18, 42, 99, 186-192), and is "v" for vpn.
 */
export const RTPROT_VPN = 0x76;
export const RT_SCOPE_UNIVERSE = 0;
export const RT_SCOPE_LINK = 253;
export const RT_SCOPE_NOWHERE = 255;
export const RTN_UNICAST = 1;

/** <sys/socket.h> AF_UNSPEC: a dump of every family. */
export const AF_UNSPEC = 0;

/** sizeof(struct nlmsghdr), sizeof(struct ifinfomsg), sizeof(struct ifaddrmsg), sizeof(struct rtmsg). */
export const NLMSG_HDRLEN = 16;
const IFINFOMSG_LEN = 16;
const IFADDRMSG_LEN = 8;
const RTMSG_LEN = 12;
/** sizeof(struct rtattr): rta_len and rta_type. */
const RTA_HDRLEN = 4;
/** NLA_TYPE_MASK: rta_type without NLA_F_NESTED and NLA_F_NET_BYTEORDER. */
const NLA_TYPE_MASK = 0x3fff;

/** Header integers travel in host byte order; DataView needs to be told which that is. */
const HOST_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** NLMSG_ALIGN() and RTA_ALIGN(): round up to 4 bytes. */
export function align(length: number): number {
  return (length + 3) & ~3;
}

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

// ---------------------------------------------------------------------------------------------
// IP addresses and CIDRs

/** An IP version. */
export type IpFamily = 4 | 6;

/** A parsed IP address. */
export interface IpAddress {
  /** 4 or 6. */
  family: IpFamily;
  /** The address in network byte order: 4 or 16 bytes. */
  bytes: Uint8Array<ArrayBuffer>;
}

/** A parsed CIDR: an address and a prefix length. Host bits are kept as written. */
export interface Cidr extends IpAddress {
  /** Prefix length, at most 32 (IPv4) or 128 (IPv6). */
  prefix: number;
}

/** The bytes of a dotted-quad IPv4 address, or why it is not one. */
function ipv4Bytes(text: string): Uint8Array<ArrayBuffer> | string {
  const parts = text.split(".");
  if (parts.length !== 4) return "expected four numbers separated by dots";
  const bytes = new Uint8Array(4);
  for (const [i, part] of parts.entries()) {
    // Leading zeros are refused: inet_aton() would read "010" as octal 8.
    if (!/^(0|[1-9][0-9]{0,2})$/.test(part) || Number(part) > 255) {
      return `"${part}" is not a number from 0 to 255`;
    }
    bytes[i] = Number(part);
  }
  return bytes;
}

/** The 16-bit groups of one side of "::", or why they are not groups. */
function ipv6Groups(part: string, last: boolean): number[] | string {
  if (part === "") return [];
  const pieces = part.split(":");
  const groups: number[] = [];
  for (const [i, piece] of pieces.entries()) {
    if (last && i === pieces.length - 1 && piece.includes(".")) {
      const v4 = ipv4Bytes(piece);
      if (typeof v4 === "string") return `embedded IPv4 address "${piece}": ${v4}`;
      groups.push((v4[0]! << 8) | v4[1]!, (v4[2]! << 8) | v4[3]!);
    } else if (/^[0-9a-fA-F]{1,4}$/.test(piece)) {
      groups.push(parseInt(piece, 16));
    } else {
      return `"${piece}" is not a group of 1 to 4 hex digits`;
    }
  }
  return groups;
}

/** The bytes of an IPv6 address in RFC 4291 text form, or why it is not one. */
function ipv6Bytes(text: string): Uint8Array<ArrayBuffer> | string {
  const halves = text.split("::");
  if (halves.length > 2) return 'at most one "::" is allowed';
  const head = ipv6Groups(halves[0]!, halves.length === 1);
  if (typeof head === "string") return head;
  const tail = halves.length === 2 ? ipv6Groups(halves[1]!, true) : [];
  if (typeof tail === "string") return tail;
  const zeros = 8 - head.length - tail.length;
  if (halves.length === 1 && zeros !== 0) return "expected 8 groups of hex digits";
  if (halves.length === 2 && zeros < 1) return 'too many groups around "::"';
  const groups = [...head, ...new Array<number>(zeros).fill(0), ...tail];
  const bytes = new Uint8Array(16);
  for (const [i, group] of groups.entries()) {
    bytes[2 * i] = group >> 8;
    bytes[2 * i + 1] = group & 0xff;
  }
  return bytes;
}

function addressOrReason(text: string): IpAddress | string {
  const bytes = text.includes(":") ? ipv6Bytes(text) : ipv4Bytes(text);
  if (typeof bytes === "string") return bytes;
  return { family: bytes.length === 4 ? 4 : 6, bytes };
}

/**
 * Parses an IPv4 ("10.8.0.1") or IPv6 ("fd00::1", "::ffff:10.8.0.1") address.
 *
 * @example
 * ```ts
 * import { parseIpAddress } from "./netlink_message.ts";
 * console.log(parseIpAddress("10.8.0.1").bytes); // Uint8Array(4) [ 10, 8, 0, 1 ]
 * ```
 * @throws {TypeError} `Cannot parse IP address "10.8.0.256": "256" is not a number from 0 to 255`
 */
export function parseIpAddress(text: string): IpAddress {
  const address = addressOrReason(text);
  if (typeof address === "string") {
    throw new TypeError(`Cannot parse IP address "${text}": ${address}`);
  }
  return address;
}

/**
 * Parses a CIDR such as "10.8.0.1/24" or "fd00::/64". Host bits may be set: an interface
 * address is written that way.
 *
 * @example
 * ```ts
 * import { parseCidr } from "./netlink_message.ts";
 * console.log(parseCidr("fd00::1/64").prefix); // 64
 * ```
 * @throws {TypeError} `Cannot parse CIDR "10.8.0.0/33": prefix length must be at most 32`
 */
export function parseCidr(text: string): Cidr {
  const fail = (reason: string) => new TypeError(`Cannot parse CIDR "${text}": ${reason}`);
  const slash = text.indexOf("/");
  if (slash < 0) throw fail('missing "/" and prefix length');
  const prefixText = text.slice(slash + 1);
  if (!/^(0|[1-9][0-9]*)$/.test(prefixText)) {
    throw fail(`prefix length "${prefixText}" is not a decimal number`);
  }
  const address = addressOrReason(text.slice(0, slash));
  if (typeof address === "string") throw fail(address);
  const prefix = Number(prefixText);
  const max = address.bytes.length * 8;
  if (prefix > max) throw fail(`prefix length must be at most ${max}`);
  return { ...address, prefix };
}

/** The text form of a 4-byte (dotted quad) or 16-byte (RFC 5952) address. */
export function formatIpAddress(bytes: Uint8Array): string {
  if (bytes.length === 4) return bytes.join(".");
  if (bytes.length !== 16) {
    throw new RangeError(`An IP address has 4 or 16 bytes, got ${bytes.length}`);
  }
  const groups = Array.from({ length: 8 }, (_, i) => (bytes[2 * i]! << 8) | bytes[2 * i + 1]!);
  // RFC 5952 4.2: "::" replaces the longest run of two or more zero groups, the first if tied.
  let bestStart = -1;
  let bestLength = 1;
  for (let start = 0; start < 8;) {
    let end = start;
    while (end < 8 && groups[end] === 0) end++;
    if (end - start > bestLength) [bestStart, bestLength] = [start, end - start];
    start = end + 1;
  }
  const hex = (from: number, to: number) =>
    groups.slice(from, to).map((group) => group.toString(16)).join(":");
  // RFC 5952 5: an IPv4-mapped address ends in dotted-quad notation, as `ip` prints it.
  if (bestStart === 0 && bestLength === 5 && groups[5] === 0xffff) {
    return `::ffff:${bytes.subarray(12).join(".")}`;
  }
  if (bestStart < 0) return hex(0, 8);
  return `${hex(0, bestStart)}::${hex(bestStart + bestLength, 8)}`;
}

/** The network address of `bytes/prefix`: the host bits cleared. */
export function networkAddress(bytes: Uint8Array, prefix: number): Uint8Array<ArrayBuffer> {
  return bytes.map((byte, i) => byte & prefixMask(prefix, i));
}

/** The mask byte at byte position `i` of a `prefix`-bit netmask. */
function prefixMask(prefix: number, i: number): number {
  const bits = Math.min(Math.max(prefix - 8 * i, 0), 8);
  return (0xff00 >> bits) & 0xff;
}

// ---------------------------------------------------------------------------------------------
// Requests

/** A route as `addRoute()` and `removeRoute()` take it. */
export interface RouteSpec {
  /** Destination network with the host bits zero: "192.168.50.0/24", "fd00:1::/64", "0.0.0.0/0". */
  destination: string;
  /** Next hop, of the destination's family. Without one the route is on-link (scope link). */
  gateway?: string;
  /** Output interface index. */
  ifindex?: number;
  /** Route priority, `metric` in `ip route`; the kernel's default is 0 (IPv4) or 1024 (IPv6). */
  metric?: number;
  /**
   * rtm_protocol, `proto` in `ip route`: who added the route. A new route is RTPROT_STATIC
   * unless this says otherwise; a removal with it only matches a route of that protocol.
   */
  protocol?: number;
}

/** What one RTM_SETLINK request changes; fields left out stay as they are. */
export interface LinkChange {
  /** Sets (true) or clears (false) IFF_UP. */
  up?: boolean;
  /** The new MTU. */
  mtu?: number;
  /** An open fd of a network namespace (e.g. /var/run/netns/NAME) to move the link into. */
  netnsFd?: number;
}

/** One rtattr: its type and unpadded payload. */
export interface Attribute {
  /** rta_type. */
  type: number;
  /** The payload without header or padding. */
  data: Uint8Array;
}

function u32Attribute(type: number, value: number): Attribute {
  const data = new Uint8Array(4);
  view(data).setUint32(0, value, HOST_LITTLE_ENDIAN);
  return { type, data };
}

/** Throws a RangeError unless `value` fits an unsigned char field named `what`. */
function checkByte(what: string, value: number): number {
  if (!Number.isInteger(value) || value < 0 || value > 255) {
    throw new RangeError(`${what} must be an integer from 0 to 255, got ${value}`);
  }
  return value;
}

/** Throws a RangeError unless `value` fits the C integer `kind` of a field named `what`. */
function checkInteger(what: string, value: number, kind: "u32" | "i32"): number {
  const max = kind === "u32" ? 0xffffffff : 0x7fffffff;
  if (!Number.isInteger(value) || value < 0 || value > max) {
    throw new RangeError(`${what} must be an integer from 0 to ${max}, got ${value}`);
  }
  return value;
}

/**
 * A whole netlink message: `struct nlmsghdr`, the family header `body` padded to 4 bytes, then
 * each attribute with its `struct rtattr` header and padding. nlmsg_len counts the last
 * attribute's padding too, as iproute2's addattr_l() does. nlmsg_pid is 0: the kernel fills in
 * the sender's port.
 */
export function encodeMessage(
  type: number,
  flags: number,
  seq: number,
  body: Uint8Array,
  attributes: readonly Attribute[] = [],
): Uint8Array<ArrayBuffer> {
  let length = NLMSG_HDRLEN + align(body.length);
  for (const attribute of attributes) length += align(RTA_HDRLEN + attribute.data.length);
  const message = new Uint8Array(length);
  const header = view(message);
  header.setUint32(0, length, HOST_LITTLE_ENDIAN); // nlmsg_len
  header.setUint16(4, type, HOST_LITTLE_ENDIAN); // nlmsg_type
  header.setUint16(6, flags, HOST_LITTLE_ENDIAN); // nlmsg_flags
  header.setUint32(8, seq, HOST_LITTLE_ENDIAN); // nlmsg_seq
  message.set(body, NLMSG_HDRLEN);
  let offset = NLMSG_HDRLEN + align(body.length);
  for (const attribute of attributes) {
    header.setUint16(offset, RTA_HDRLEN + attribute.data.length, HOST_LITTLE_ENDIAN); // rta_len
    header.setUint16(offset + 2, attribute.type, HOST_LITTLE_ENDIAN); // rta_type
    message.set(attribute.data, offset + RTA_HDRLEN);
    offset += align(RTA_HDRLEN + attribute.data.length);
  }
  return message;
}

/** struct ifinfomsg { ifi_family, __ifi_pad, ifi_type, ifi_index, ifi_flags, ifi_change } */
function ifinfomsg(index: number, flags: number, change: number): Uint8Array {
  const body = new Uint8Array(IFINFOMSG_LEN);
  const fields = view(body);
  body[0] = AF_UNSPEC;
  fields.setInt32(4, checkInteger("ifindex", index, "i32"), HOST_LITTLE_ENDIAN);
  fields.setUint32(8, flags, HOST_LITTLE_ENDIAN);
  fields.setUint32(12, change, HOST_LITTLE_ENDIAN);
  return body;
}

/**
 * RTM_SETLINK for link `ifindex`: IFF_UP through ifi_flags and ifi_change (only the bits in
 * ifi_change are touched), the MTU as IFLA_MTU, a namespace move as IFLA_NET_NS_FD.
 */
export function encodeSetLinkRequest(
  seq: number,
  ifindex: number,
  change: LinkChange,
): Uint8Array<ArrayBuffer> {
  const attributes: Attribute[] = [];
  if (change.mtu !== undefined) {
    attributes.push(u32Attribute(IFLA_MTU, checkInteger("MTU", change.mtu, "u32")));
  }
  if (change.netnsFd !== undefined) {
    const fd = checkInteger("netns fd", change.netnsFd, "i32");
    attributes.push(u32Attribute(IFLA_NET_NS_FD, fd));
  }
  const body = change.up === undefined
    ? ifinfomsg(ifindex, 0, 0)
    : ifinfomsg(ifindex, change.up ? IFF_UP : 0, IFF_UP);
  return encodeMessage(RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, seq, body, attributes);
}

/** RTM_GETLINK for the one link `ifindex`; the kernel answers with an RTM_NEWLINK. */
export function encodeGetLinkRequest(seq: number, ifindex: number): Uint8Array<ArrayBuffer> {
  return encodeMessage(RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK, seq, ifinfomsg(ifindex, 0, 0));
}

/**
 * RTM_NEWADDR (create, fail if it exists) or RTM_DELADDR for `cidr` on link `ifindex`. Like
 * `ip addr add`, it sends IFA_LOCAL and IFA_ADDRESS (equal: no point-to-point peer), and for
 * IPv4 also IFA_BROADCAST, the all-ones host address, except on /31 and /32 (RFC 3021) where
 * there is no broadcast address.
 */
export function encodeAddressRequest(
  type: typeof RTM_NEWADDR | typeof RTM_DELADDR,
  seq: number,
  ifindex: number,
  cidr: string,
): Uint8Array<ArrayBuffer> {
  const { family, bytes, prefix } = parseCidr(cidr);
  // struct ifaddrmsg { ifa_family, ifa_prefixlen, ifa_flags, ifa_scope, ifa_index }
  const body = new Uint8Array(IFADDRMSG_LEN);
  body[0] = family === 4 ? AF_INET : AF_INET6;
  body[1] = prefix;
  body[3] = RT_SCOPE_UNIVERSE;
  view(body).setUint32(4, checkInteger("ifindex", ifindex, "i32"), HOST_LITTLE_ENDIAN);
  const attributes: Attribute[] = [
    { type: IFA_LOCAL, data: bytes },
    { type: IFA_ADDRESS, data: bytes },
  ];
  if (family === 4 && prefix <= 30 && type === RTM_NEWADDR) {
    const broadcast = bytes.map((byte, i) => byte | (~prefixMask(prefix, i) & 0xff));
    attributes.push({ type: IFA_BROADCAST, data: broadcast });
  }
  const flags = NLM_F_REQUEST | NLM_F_ACK | (type === RTM_NEWADDR ? NLM_F_CREATE | NLM_F_EXCL : 0);
  return encodeMessage(type, flags, seq, body, attributes);
}

/**
 * RTM_NEWROUTE (create, fail if it exists) or RTM_DELROUTE for `route` in the main table.
 *
 * A new route is RTN_UNICAST, of `route.protocol` (default RTPROT_STATIC), scope link without
 * a gateway and universe with one (IPv6 ignores rtm_scope). A deletion, like `ip route del`,
 * leaves type 0 and scope RT_SCOPE_NOWHERE, which the kernel reads as "any", and the protocol
 * too unless `route.protocol` names one. RTA_DST is left out for a /0.
 *
 * @throws {TypeError} when the destination has host bits set or the gateway's family differs.
 */
export function encodeRouteRequest(
  type: typeof RTM_NEWROUTE | typeof RTM_DELROUTE,
  seq: number,
  route: RouteSpec,
): Uint8Array<ArrayBuffer> {
  const destination = parseCidr(route.destination);
  const network = networkAddress(destination.bytes, destination.prefix);
  if (!network.every((byte, i) => byte === destination.bytes[i])) {
    throw new TypeError(
      `Route destination "${route.destination}" has host bits set; the network is "${
        formatIpAddress(network)
      }/${destination.prefix}"`,
    );
  }
  const gateway = route.gateway === undefined ? undefined : parseIpAddress(route.gateway);
  if (gateway !== undefined && gateway.family !== destination.family) {
    throw new TypeError(
      `Route gateway "${route.gateway}" is not IPv${destination.family} like "${route.destination}"`,
    );
  }
  const adding = type === RTM_NEWROUTE;
  // struct rtmsg { rtm_family, rtm_dst_len, rtm_src_len, rtm_tos, rtm_table, rtm_protocol,
  //                rtm_scope, rtm_type, rtm_flags }
  const body = new Uint8Array(RTMSG_LEN);
  body[0] = destination.family === 4 ? AF_INET : AF_INET6;
  body[1] = destination.prefix;
  body[4] = RT_TABLE_MAIN;
  body[5] = route.protocol === undefined
    ? (adding ? RTPROT_STATIC : 0)
    : checkByte("protocol", route.protocol);
  body[6] = !adding ? RT_SCOPE_NOWHERE : gateway ? RT_SCOPE_UNIVERSE : RT_SCOPE_LINK;
  body[7] = adding ? RTN_UNICAST : 0;
  const attributes: Attribute[] = [];
  if (destination.prefix > 0) attributes.push({ type: RTA_DST, data: destination.bytes });
  if (gateway) attributes.push({ type: RTA_GATEWAY, data: gateway.bytes });
  if (route.ifindex !== undefined) {
    attributes.push(u32Attribute(RTA_OIF, checkInteger("ifindex", route.ifindex, "i32")));
  }
  if (route.metric !== undefined) {
    attributes.push(u32Attribute(RTA_PRIORITY, checkInteger("metric", route.metric, "u32")));
  }
  const flags = NLM_F_REQUEST | NLM_F_ACK | (adding ? NLM_F_CREATE | NLM_F_EXCL : 0);
  return encodeMessage(type, flags, seq, body, attributes);
}

/**
 * RTM_GETROUTE for the one address `destination`, like `ip route get`: the kernel answers
 * with an RTM_NEWROUTE that says how it would send a packet there now (RTA_OIF, RTA_GATEWAY
 * when through a gateway, RTA_PREFSRC for the source address it would pick).
 *
 * @throws {TypeError} when `destination` is not an IP address.
 */
export function encodeRouteGetRequest(seq: number, destination: string): Uint8Array<ArrayBuffer> {
  const address = parseIpAddress(destination);
  // struct rtmsg with only the family and a host prefix: every other field "any".
  const body = new Uint8Array(RTMSG_LEN);
  body[0] = address.family === 4 ? AF_INET : AF_INET6;
  body[1] = address.bytes.length * 8;
  return encodeMessage(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_ACK, seq, body, [
    { type: RTA_DST, data: address.bytes },
  ]);
}

/**
 * A dump request (NLM_F_DUMP) of every link, address or route of `family` (AF_UNSPEC: all).
 * The body is the family header of the requested type with only the family set.
 */
export function encodeDumpRequest(
  type: typeof RTM_GETLINK | typeof RTM_GETADDR | typeof RTM_GETROUTE,
  seq: number,
  family: typeof AF_UNSPEC | typeof AF_INET | typeof AF_INET6 = AF_UNSPEC,
): Uint8Array<ArrayBuffer> {
  const length = type === RTM_GETLINK
    ? IFINFOMSG_LEN
    : type === RTM_GETADDR
    ? IFADDRMSG_LEN
    : RTMSG_LEN;
  const body = new Uint8Array(length);
  body[0] = family;
  return encodeMessage(type, NLM_F_REQUEST | NLM_F_ACK | NLM_F_DUMP, seq, body);
}

// ---------------------------------------------------------------------------------------------
// Replies

/** One netlink message of a reply. */
export interface NetlinkMessage {
  /** nlmsg_type. */
  type: number;
  /** nlmsg_flags. */
  flags: number;
  /** nlmsg_seq: the request's sequence number. */
  seq: number;
  /** nlmsg_pid: 0 when the kernel sent it. */
  pid: number;
  /** The bytes after the header, up to nlmsg_len. */
  payload: Uint8Array;
}

/**
 * Splits one received datagram into its messages.
 *
 * @throws {Error} when an nlmsg_len runs past the datagram or is shorter than its header.
 */
export function parseMessages(datagram: Uint8Array): NetlinkMessage[] {
  const fields = view(datagram);
  const messages: NetlinkMessage[] = [];
  for (let offset = 0; offset + NLMSG_HDRLEN <= datagram.length;) {
    const length = fields.getUint32(offset, HOST_LITTLE_ENDIAN);
    if (length < NLMSG_HDRLEN || offset + length > datagram.length) {
      throw new Error(
        `Malformed netlink message at byte ${offset}: nlmsg_len ${length} in a ${datagram.length}-byte datagram`,
      );
    }
    messages.push({
      type: fields.getUint16(offset + 4, HOST_LITTLE_ENDIAN),
      flags: fields.getUint16(offset + 6, HOST_LITTLE_ENDIAN),
      seq: fields.getUint32(offset + 8, HOST_LITTLE_ENDIAN),
      pid: fields.getUint32(offset + 12, HOST_LITTLE_ENDIAN),
      payload: datagram.subarray(offset + NLMSG_HDRLEN, offset + length),
    });
    offset += align(length);
  }
  return messages;
}

/**
 * The attributes in `bytes`, by rta_type (flag bits masked off); a repeated type keeps the
 * last one.
 *
 * @throws {Error} when an rta_len is shorter than its header or runs past the end.
 */
export function parseAttributes(bytes: Uint8Array): Map<number, Uint8Array> {
  const fields = view(bytes);
  const attributes = new Map<number, Uint8Array>();
  for (let offset = 0; offset + RTA_HDRLEN <= bytes.length;) {
    const length = fields.getUint16(offset, HOST_LITTLE_ENDIAN);
    if (length < RTA_HDRLEN || offset + length > bytes.length) {
      throw new Error(`Malformed netlink attribute at byte ${offset}: rta_len ${length}`);
    }
    const type = fields.getUint16(offset + 2, HOST_LITTLE_ENDIAN) & NLA_TYPE_MASK;
    attributes.set(type, bytes.subarray(offset + RTA_HDRLEN, offset + length));
    offset += align(length);
  }
  return attributes;
}

function cStringAttribute(bytes: Uint8Array): string {
  const end = bytes.indexOf(0);
  return new TextDecoder().decode(end < 0 ? bytes : bytes.subarray(0, end));
}

function u32Of(bytes: Uint8Array | undefined): number | undefined {
  return bytes === undefined || bytes.length < 4
    ? undefined
    : view(bytes).getUint32(0, HOST_LITTLE_ENDIAN);
}

/** The outcome an NLMSG_ERROR or NLMSG_DONE message reports. */
export interface NetlinkStatus {
  /** 0 for success (an ACK), else the positive errno. */
  errno: number;
  /** The kernel's extended-ACK text (NLMSGERR_ATTR_MSG), e.g. "Nexthop device is not up". */
  detail?: string;
}

/**
 * Reads `struct nlmsgerr { int error; struct nlmsghdr msg; }` of an NLMSG_ERROR, or the
 * `int` of an NLMSG_DONE, and the extended-ACK text that follows when NLM_F_ACK_TLVS is set.
 * An NLMSG_ERROR echoes the request after `error`: just its header when NLM_F_CAPPED is set,
 * else the whole message.
 */
export function decodeStatus(message: NetlinkMessage): NetlinkStatus {
  const { payload, flags } = message;
  if (payload.length < 4) return { errno: 0 };
  const fields = view(payload);
  // `| 0` turns the -0 of an ACK into 0.
  const errno = -fields.getInt32(0, HOST_LITTLE_ENDIAN) | 0;
  if (!(flags & NLM_F_ACK_TLVS)) return { errno };
  let tlvs = 4;
  if (message.type === NLMSG_ERROR) {
    const echoed = payload.length >= 4 + NLMSG_HDRLEN ? fields.getUint32(4, HOST_LITTLE_ENDIAN) : 0;
    tlvs += flags & NLM_F_CAPPED ? NLMSG_HDRLEN : align(echoed);
  }
  const text = parseAttributes(payload.subarray(Math.min(tlvs, payload.length))).get(
    NLMSGERR_ATTR_MSG,
  );
  return text === undefined ? { errno } : { errno, detail: cStringAttribute(text) };
}

/** A link as `getLink()` reports it. */
export interface LinkInfo {
  /** ifi_index. */
  index: number;
  /** IFLA_IFNAME. */
  name: string;
  /** IFLA_MTU. */
  mtu: number;
  /** IFF_UP is set: administratively up. */
  up: boolean;
}

/** Decodes the payload of an RTM_NEWLINK. */
export function decodeLink(payload: Uint8Array): LinkInfo {
  if (payload.length < IFINFOMSG_LEN) {
    throw new Error(`RTM_NEWLINK of ${payload.length} bytes is too short`);
  }
  const fields = view(payload);
  const attributes = parseAttributes(payload.subarray(IFINFOMSG_LEN));
  const name = attributes.get(IFLA_IFNAME);
  return {
    index: fields.getInt32(4, HOST_LITTLE_ENDIAN),
    name: name === undefined ? "" : cStringAttribute(name),
    mtu: u32Of(attributes.get(IFLA_MTU)) ?? 0,
    up: (fields.getUint32(8, HOST_LITTLE_ENDIAN) & IFF_UP) !== 0,
  };
}

/** An interface address as `listAddresses()` reports it. */
export interface AddressInfo {
  /** ifa_index. */
  ifindex: number;
  /** 4 or 6. */
  family: IpFamily;
  /** The address in text form, e.g. "10.8.0.1" or "fd00::1". */
  address: string;
  /** ifa_prefixlen. */
  prefix: number;
}

function familyOf(byte: number | undefined): IpFamily | undefined {
  return byte === AF_INET ? 4 : byte === AF_INET6 ? 6 : undefined;
}

/**
 * Decodes the payload of an RTM_NEWADDR; undefined for families other than IPv4 and IPv6. The
 * address is IFA_LOCAL where present: on a point-to-point link IFA_ADDRESS is the peer.
 */
export function decodeAddress(payload: Uint8Array): AddressInfo | undefined {
  if (payload.length < IFADDRMSG_LEN) {
    throw new Error(`RTM_NEWADDR of ${payload.length} bytes is too short`);
  }
  const family = familyOf(payload[0]);
  if (family === undefined) return undefined;
  const attributes = parseAttributes(payload.subarray(IFADDRMSG_LEN));
  const address = attributes.get(IFA_LOCAL) ?? attributes.get(IFA_ADDRESS);
  if (address === undefined) return undefined;
  return {
    ifindex: view(payload).getUint32(4, HOST_LITTLE_ENDIAN),
    family,
    address: formatIpAddress(address),
    prefix: payload[1]!,
  };
}

/** A route as `listRoutes()` reports it. */
export interface RouteInfo {
  /** The destination network, e.g. "192.168.50.0/24" or "::/0". */
  destination: string;
  /** RTA_GATEWAY, when the route has one next hop through a gateway. */
  gateway?: string;
  /** RTA_OIF, when the route has one output interface. */
  ifindex?: number;
  /** RTA_TABLE (or rtm_table), e.g. 254 for main. */
  table: number;
  /** RTA_PRIORITY. */
  metric?: number;
  /** rtm_protocol: RTPROT_KERNEL (2) for a connected network, RTPROT_STATIC (4), ... */
  protocol: number;
  /** RTA_PREFSRC: the source address the kernel prefers for this route, when it names one. */
  source?: string;
}

/** Decodes the payload of an RTM_NEWROUTE; undefined for families other than IPv4 and IPv6. */
export function decodeRoute(payload: Uint8Array): RouteInfo | undefined {
  if (payload.length < RTMSG_LEN) {
    throw new Error(`RTM_NEWROUTE of ${payload.length} bytes is too short`);
  }
  const family = familyOf(payload[0]);
  if (family === undefined) return undefined;
  const attributes = parseAttributes(payload.subarray(RTMSG_LEN));
  const destination = attributes.get(RTA_DST) ?? new Uint8Array(family === 4 ? 4 : 16);
  const route: RouteInfo = {
    destination: `${formatIpAddress(destination)}/${payload[1]}`,
    table: u32Of(attributes.get(RTA_TABLE)) ?? payload[4]!,
    protocol: payload[5]!,
  };
  const gateway = attributes.get(RTA_GATEWAY);
  if (gateway !== undefined) route.gateway = formatIpAddress(gateway);
  const ifindex = u32Of(attributes.get(RTA_OIF));
  if (ifindex !== undefined) route.ifindex = ifindex;
  const metric = u32Of(attributes.get(RTA_PRIORITY));
  if (metric !== undefined) route.metric = metric;
  const source = attributes.get(RTA_PREFSRC);
  if (source !== undefined) route.source = formatIpAddress(source);
  return route;
}
