/**
 * The IPv6 subnet of the VPN (`subnet6` in `server.yaml`) and how its addresses follow the IPv4
 * ones: the server takes host number 1, a client the host number of its IPv4 address
 * (10.8.0.5 → `fd00:8::5`), so that one pool serves both families and an address pair is
 * easy to read.
 *
 * @module
 */

import { formatIPv6, parseCidr, parseIPv6 } from "./ip.ts";

/** Shortest and longest prefix `subnet6` may have. */
export const SUBNET6_MIN_PREFIX = 64;
export const SUBNET6_MAX_PREFIX = 120;

/** An IPv6 VPN subnet. */
export class Subnet6 {
  /** The subnet in canonical form, such as `fd00:8::/64`. */
  readonly subnet: string;
  readonly prefix: number;
  /** The network address's 16 bytes. */
  readonly network: Uint8Array;
  /** The server's address, host number 1. */
  readonly serverAddress: string;

  /**
   * @param ipv4Prefix the IPv4 subnet's prefix: this one must hold as many addresses.
   * @throws {RangeError} naming the rule `cidr` breaks.
   */
  constructor(cidr: string, ipv4Prefix: number) {
    const parsed = parseCidr(cidr);
    const fail = (reason: string): never => {
      throw new RangeError(`Cannot use subnet6 "${cidr}": ${reason}`);
    };
    if (parsed.family !== 6) fail("it is not an IPv6 prefix such as fd00:8::/64");
    if (parsed.prefix < SUBNET6_MIN_PREFIX || parsed.prefix > SUBNET6_MAX_PREFIX) {
      fail(
        `the prefix length must be from /${SUBNET6_MIN_PREFIX} to /${SUBNET6_MAX_PREFIX}`,
      );
    }
    if (parsed.address !== parsed.network) {
      fail(`host bits are set (did you mean "${parsed.network}/${parsed.prefix}"?)`);
    }
    const network = parseIPv6(parsed.network);
    // Multicast (ff00::/8), link-local (fe80::/10), loopback and unspecified (inside ::/8) are
    // not addresses a tunnel hands out.
    if (network[0] === 0xff) fail("it is a multicast prefix; use a unicast one such as a ULA");
    if (network[0] === 0xfe && (network[1]! & 0xc0) === 0x80) {
      fail("it is link-local; use a global or unique local (fc00::/7) prefix");
    }
    if (network[0] === 0) fail("it is inside ::/8 (reserved); use a ULA such as fd00:8::/64");
    if (128 - parsed.prefix < 32 - ipv4Prefix) {
      fail(
        `a /${parsed.prefix} has fewer addresses than the IPv4 subnet (/${ipv4Prefix}); ` +
          `use a /${128 - (32 - ipv4Prefix)} or a shorter prefix`,
      );
    }
    this.subnet = `${parsed.network}/${parsed.prefix}`;
    this.prefix = parsed.prefix;
    this.network = network;
    this.serverAddress = this.address(1);
  }

  /** The address with host number `host` (below 2^32). */
  address(host: number): string {
    const bytes = this.network.slice();
    for (let i = 15, rest = host; i >= 12; i--, rest = Math.floor(rest / 256)) {
      bytes[i]! |= rest & 0xff;
    }
    return formatIPv6(bytes);
  }

  /** Whether `text` is an IPv6 address inside this subnet. */
  contains(text: string): boolean {
    let bytes;
    try {
      bytes = parseIPv6(text);
    } catch {
      return false;
    }
    for (let bit = 0; bit < this.prefix; bit += 8) {
      const mask = 0xff00 >> Math.min(8, this.prefix - bit) & 0xff;
      if ((bytes[bit / 8]! & mask) !== this.network[bit / 8]) return false;
    }
    return true;
  }
}

/** A random unique local /64 (RFC 4193: fd00::/8 and a 40-bit random global id). */
export function randomSubnet6(): string {
  const bytes = new Uint8Array(16);
  bytes[0] = 0xfd;
  crypto.getRandomValues(bytes.subarray(1, 8));
  return `${formatIPv6(bytes)}/64`;
}
