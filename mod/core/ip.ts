/**
 * IP address helpers: text forms for configuration, and allocation-free readers of packet
 * headers for the packet path.
 *
 * IPv4 addresses are plain numbers (unsigned 32-bit, kept unsigned with `>>> 0`) so the packet
 * path can compare and key maps by them without allocating. IPv6 addresses are 16-byte arrays.
 *
 * @module
 */

/** A parsed CIDR block such as `10.8.0.0/24` or `fd00::/64`. */
export interface Cidr {
  /** 4 for IPv4, 6 for IPv6. */
  family: 4 | 6;
  /** The address as written, in canonical form (`10.8.0.5`, `fd00::1`). */
  address: string;
  /** The network address: `address` with the host bits cleared (`10.8.0.0`, `fd00::`). */
  network: string;
  /** The prefix length: 0 to 32 for IPv4, 0 to 128 for IPv6. */
  prefix: number;
}

/**
 * Parses a dotted-quad IPv4 address into an unsigned 32-bit number.
 *
 * Leading zeros are refused because some tools read them as octal.
 *
 * @example
 * ```ts
 * import { parseIPv4 } from "./ip.ts";
 * parseIPv4("10.8.0.1"); // 0x0a080001
 * ```
 * @throws {TypeError} when `text` is not a dotted-quad address.
 */
export function parseIPv4(text: string): number {
  const reason = ipv4Problem(text);
  if (reason !== undefined) {
    throw new TypeError(`Cannot parse IPv4 address "${text}": ${reason}`);
  }
  let value = 0;
  for (const part of text.split(".")) value = value * 256 + Number(part);
  return value;
}

/** Why `text` is not a dotted-quad IPv4 address, or undefined when it is one. */
function ipv4Problem(text: string): string | undefined {
  const parts = text.split(".");
  if (parts.length !== 4) return "expected four numbers separated by dots";
  for (const part of parts) {
    if (!/^[0-9]{1,3}$/.test(part)) return `"${part}" is not a number from 0 to 255`;
    if (part.length > 1 && part.startsWith("0")) return `"${part}" has a leading zero`;
    if (Number(part) > 255) return `${part} is greater than 255`;
  }
  return undefined;
}

/**
 * Formats an unsigned 32-bit number as a dotted-quad IPv4 address.
 *
 * @example
 * ```ts
 * import { formatIPv4 } from "./ip.ts";
 * formatIPv4(0x0a080001); // "10.8.0.1"
 * ```
 */
export function formatIPv4(address: number): string {
  return `${(address >>> 24) & 255}.${(address >>> 16) & 255}.${(address >>> 8) & 255}.${
    address & 255
  }`;
}

/**
 * Parses an IPv6 address (`fd00::1`, `::ffff:10.8.0.1`) into its 16 bytes.
 *
 * Zone indices (`fe80::1%eth0`) are refused: they name a link, which a route or a pool cannot
 * use.
 *
 * @throws {TypeError} when `text` is not an IPv6 address.
 */
export function parseIPv6(text: string): Uint8Array {
  const result = ipv6Bytes(text);
  if (typeof result === "string") {
    throw new TypeError(`Cannot parse IPv6 address "${text}": ${result}`);
  }
  return result;
}

/** The 16 bytes of an IPv6 address, or why `text` is not one. */
function ipv6Bytes(text: string): Uint8Array | string {
  const halves = text.split("::");
  if (halves.length > 2) return `"::" may appear only once`;
  const parts = halves.map((half) => half === "" ? [] : half.split(":"));
  // A dotted quad may stand for the last two groups (`::ffff:10.8.0.1`), and only there.
  const last = parts[parts.length - 1]!;
  const quad = last[last.length - 1];
  let dotted: number | undefined;
  if (quad !== undefined && quad.includes(".")) {
    const reason = ipv4Problem(quad);
    if (reason !== undefined) return reason;
    last.pop();
    dotted = parseIPv4(quad);
  }
  const words: number[][] = [];
  for (const groups of parts) {
    const bad = groups.find((group) => !/^[0-9a-fA-F]{1,4}$/.test(group));
    if (bad !== undefined) return `"${bad}" is not a group of 1 to 4 hex digits`;
    words.push(groups.map((group) => parseInt(group, 16)));
  }
  if (dotted !== undefined) words[words.length - 1]!.push(dotted >>> 16, dotted & 0xffff);
  const head = words[0]!;
  const tail = words[1] ?? [];
  const missing = 8 - head.length - tail.length;
  if (halves.length === 1 && missing !== 0) return `expected eight groups or "::"`;
  if (halves.length === 2 && missing < 1) return "too many groups";
  const all = [...head, ...new Array<number>(missing).fill(0), ...tail];
  const bytes = new Uint8Array(16);
  all.forEach((word, i) => {
    bytes[2 * i] = word >>> 8;
    bytes[2 * i + 1] = word & 255;
  });
  return bytes;
}

/**
 * Formats 16 bytes as an IPv6 address in the canonical form of RFC 5952: lower case, no
 * leading zeros, the longest run of two or more zero groups shortened to `::`.
 */
export function formatIPv6(bytes: Uint8Array): string {
  const words: number[] = [];
  for (let i = 0; i < 16; i += 2) words.push((bytes[i]! << 8) | bytes[i + 1]!);
  let bestStart = -1;
  let bestLength = 1;
  for (let start = 0; start < 8;) {
    let end = start;
    while (end < 8 && words[end] === 0) end++;
    if (end - start > bestLength) {
      bestStart = start;
      bestLength = end - start;
    }
    start = end + 1;
  }
  const hex = (part: number[]) => part.map((word) => word.toString(16)).join(":");
  if (bestStart < 0) return hex(words);
  return `${hex(words.slice(0, bestStart))}::${hex(words.slice(bestStart + bestLength))}`;
}

/**
 * Parses a CIDR block (`10.8.0.0/24`, `fd00::/64`).
 *
 * The address may have host bits set; `network` gives the block's own address, so callers that
 * want a network address can compare the two.
 *
 * @example
 * ```ts
 * import { parseCidr } from "./ip.ts";
 * parseCidr("10.8.0.5/24"); // { family: 4, address: "10.8.0.5", network: "10.8.0.0", prefix: 24 }
 * ```
 * @throws {TypeError} when `text` is not ADDRESS/PREFIX.
 * @throws {RangeError} when the prefix length is too long for the address family.
 */
export function parseCidr(text: string): Cidr {
  const fail = (reason: string): never => {
    throw new TypeError(`Cannot parse CIDR "${text}": ${reason}`);
  };
  const tooLong = (bits: number): never => {
    throw new RangeError(`Cannot parse CIDR "${text}": prefix length must be at most ${bits}`);
  };
  const slash = text.indexOf("/");
  const prefixText = text.slice(slash + 1);
  if (slash < 0 || !/^[0-9]{1,3}$/.test(prefixText)) {
    fail(`expected an address, "/" and a prefix length`);
  }
  const addressText = text.slice(0, slash);
  const prefix = Number(prefixText);
  if (!addressText.includes(":")) {
    const reason = ipv4Problem(addressText);
    if (reason !== undefined) fail(reason);
    if (prefix > 32) tooLong(32);
    const address = parseIPv4(addressText);
    return {
      family: 4,
      address: formatIPv4(address),
      network: formatIPv4(address & ipv4Netmask(prefix)),
      prefix,
    };
  }
  const address = ipv6Bytes(addressText);
  if (typeof address === "string") return fail(address);
  if (prefix > 128) tooLong(128);
  const network = address.map((byte, i) => {
    const keep = Math.min(8, Math.max(0, prefix - 8 * i));
    return byte & (0xff00 >> keep);
  });
  return { family: 6, address: formatIPv6(address), network: formatIPv6(network), prefix };
}

/**
 * A peer's IP address as the log names it: an IPv4-mapped IPv6 address (how a socket bound to
 * `::` sees an IPv4 peer, `::ffff:10.0.0.2`) becomes the IPv4 address; any other is returned
 * as it is.
 */
export function peerHost(host: string): string {
  return /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i.exec(host)?.[1] ?? host;
}

/**
 * The one way a socket address is printed: `10.0.0.2:4000`, `[fd00::2]:4000`, and an
 * IPv4-mapped IPv6 address as the IPv4 address it maps ({@linkcode peerHost}).
 *
 * @example
 * ```ts
 * import { formatPeer } from "./ip.ts";
 * formatPeer("::ffff:10.0.0.2", 4000); // "10.0.0.2:4000"
 * formatPeer("fd00::2", 4000); // "[fd00::2]:4000"
 * ```
 */
export function formatPeer(host: string, port: number): string {
  const ip = peerHost(host);
  return ip.includes(":") ? `[${ip}]:${port}` : `${ip}:${port}`;
}

/**
 * The IPv4 netmask for a prefix length, as an unsigned 32-bit number (`24` gives
 * `0xffffff00`).
 */
export function ipv4Netmask(prefix: number): number {
  // A shift count of 32 is taken modulo 32 in JavaScript, so /0 needs its own case.
  return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
}

/**
 * Whether an IPv4 address lies inside the block `network/prefix`. All three are numbers so the
 * packet path can ask without allocating.
 *
 * @example
 * ```ts
 * import { ipv4InCidr, parseIPv4 } from "./ip.ts";
 * ipv4InCidr(parseIPv4("10.8.0.7"), parseIPv4("10.8.0.0"), 24); // true
 * ```
 */
export function ipv4InCidr(address: number, network: number, prefix: number): boolean {
  const mask = ipv4Netmask(prefix);
  return ((address & mask) >>> 0) === ((network & mask) >>> 0);
}

/**
 * The IP version of the packet that starts at `offset`: 4, 6, or anything else for a packet
 * that is neither. The caller checks that the buffer holds at least one byte there.
 */
export function packetVersion(buf: Uint8Array, offset = 0): number {
  return buf[offset]! >>> 4;
}

/** Reads 4 bytes at `at` as an unsigned big-endian number. */
function readU32(buf: Uint8Array, at: number): number {
  return ((buf[at]! << 24) | (buf[at + 1]! << 16) | (buf[at + 2]! << 8) | buf[at + 3]!) >>> 0;
}

/**
 * The source address of the IPv4 packet at `offset`, as an unsigned 32-bit number. The caller
 * checks that the buffer holds the 20-byte header.
 */
export function ipv4Source(buf: Uint8Array, offset = 0): number {
  return readU32(buf, offset + 12);
}

/**
 * The destination address of the IPv4 packet at `offset`, as an unsigned 32-bit number. The
 * caller checks that the buffer holds the 20-byte header.
 */
export function ipv4Destination(buf: Uint8Array, offset = 0): number {
  return readU32(buf, offset + 16);
}

/** Where the source address starts in an IPv6 header. */
export const IPV6_SOURCE_OFFSET = 8;
/** Where the destination address starts in an IPv6 header. */
export const IPV6_DESTINATION_OFFSET = 24;

/**
 * A number key for the IPv6 address at `buf[at, at+16)`: its low 32 bits, unsigned. Addresses
 * in one /96 or longer subnet get distinct keys, so a Map from this key finds a tunnel address
 * without allocating; the caller confirms the whole address with {@linkcode ipv6Equals}. The
 * caller checks that the buffer holds the 16 bytes.
 *
 * @example
 * ```ts
 * import { IPV6_DESTINATION_OFFSET, ipv6HostKey, parseIPv6 } from "./ip.ts";
 * const packet = new Uint8Array(40);
 * packet.set(parseIPv6("fd00::a08:5"), IPV6_DESTINATION_OFFSET);
 * ipv6HostKey(packet, IPV6_DESTINATION_OFFSET); // 0x0a080005
 * ```
 */
export function ipv6HostKey(buf: Uint8Array, at: number): number {
  return readU32(buf, at + 12);
}

/**
 * Whether the 16 bytes at `buf[at]` equal `address` (16 bytes, from {@linkcode parseIPv6}).
 * The caller checks that the buffer holds them.
 *
 * @example
 * ```ts
 * import { IPV6_SOURCE_OFFSET, ipv6Equals, parseIPv6 } from "./ip.ts";
 * const packet = new Uint8Array(40);
 * packet.set(parseIPv6("fd00::2"), IPV6_SOURCE_OFFSET);
 * ipv6Equals(packet, IPV6_SOURCE_OFFSET, parseIPv6("fd00::2")); // true
 * ```
 */
export function ipv6Equals(buf: Uint8Array, at: number, address: Uint8Array): boolean {
  for (let i = 0; i < 16; i++) {
    if (buf[at + i] !== address[i]) return false;
  }
  return true;
}

/**
 * Whether the source address of the IPv6 packet at `offset` equals `address` (16 bytes, from
 * {@linkcode parseIPv6}). The caller checks that the buffer holds the 40-byte header.
 */
export function ipv6SourceEquals(buf: Uint8Array, offset: number, address: Uint8Array): boolean {
  return ipv6Equals(buf, offset + IPV6_SOURCE_OFFSET, address);
}

/**
 * Whether the destination address of the IPv6 packet at `offset` equals `address` (16 bytes,
 * from {@linkcode parseIPv6}). The caller checks that the buffer holds the 40-byte header.
 */
export function ipv6DestinationEquals(
  buf: Uint8Array,
  offset: number,
  address: Uint8Array,
): boolean {
  return ipv6Equals(buf, offset + IPV6_DESTINATION_OFFSET, address);
}

/** Whether `host` is an IPv6 "any" address (`::`, `[::]`, `0:0::0`): a dual-stack bind. */
export function isUnspecified6(host: string): boolean {
  const bare = host.replace(/^\[|\]$/g, "");
  return bare.includes(":") && /^[0:]+$/.test(bare);
}
