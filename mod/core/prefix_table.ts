/**
 * Longest-prefix match from IPv4 and IPv6 networks to values (the sessions that own networks
 * behind clients, say), for the packet path: a lookup walks a binary trie kept in typed arrays,
 * one bit of the address a step, and allocates nothing.
 *
 * Sized for tens to a few thousand routes: a route costs at most one node per prefix bit
 * (9 bytes each, plus a slot in the values array), shared with every route of the same
 * leading bits, and a deleted route gives back the nodes no other route uses. A lookup takes
 * at most 32 steps for IPv4 and 128 for IPv6, and stops at the first bit no route continues.
 *
 * @example
 * ```ts
 * import { PrefixTable } from "./prefix_table.ts";
 * import { parseIPv4 } from "./ip.ts";
 * const table = new PrefixTable<string>();
 * table.add("192.168.0.0/16", "site");
 * table.add("192.168.60.0/24", "branch");
 * table.lookup4(parseIPv4("192.168.60.7")); // "branch"
 * table.lookup4(parseIPv4("192.168.1.1")); // "site"
 * ```
 *
 * @module
 */

import { parseCidr, parseIPv4, parseIPv6 } from "./ip.ts";

/** The roots of the two tries; no node ever points to them, so 0 can mean "no child". */
const ROOT4 = 0;
const ROOT6 = 1;
const NONE = 0;
/** Nodes the arrays hold at first; they double when full. */
const INITIAL_NODES = 64;

/**
 * A table of IPv4 and IPv6 networks, each with a value, answering which value the most
 * specific network holding an address has.
 */
export class PrefixTable<T> {
  /** Children of node n at `2n` (bit 0) and `2n + 1` (bit 1); {@linkcode NONE} when absent. */
  #children = new Int32Array(2 * INITIAL_NODES);
  /** 1 where a node ends a route: its value is in `#values`. */
  #hasValue = new Uint8Array(INITIAL_NODES);
  /** The value of node n at n; one entry per node, so that V8 keeps the array dense. */
  readonly #values: (T | undefined)[] = [undefined, undefined];
  /** Nodes in use or freed, the two roots included. */
  #nodes = 2;
  /** Nodes given back by `delete`, taken again before the arrays grow. */
  readonly #free: number[] = [];
  #size = 0;
  /** The nodes from a root to a route, for `delete` to prune on the way back. */
  readonly #path = new Int32Array(129);

  /** How many routes the table holds. */
  get size(): number {
    return this.#size;
  }

  /**
   * Adds the network `cidr` (canonical: `10.8.0.0/24`, `fd00:1::/64`) with `value`, replacing
   * the value of the same network if it is already there.
   *
   * @throws {TypeError} when `cidr` is not a CIDR block, or not in canonical form (host bits
   *   set, or an IPv6 address not written as RFC 5952 has it); the message gives that form.
   * @throws {RangeError} when the prefix length is too long for the address family.
   */
  add(cidr: string, value: T): void {
    const { family, bytes, prefix } = this.#parse(cidr);
    let node = family === 4 ? ROOT4 : ROOT6;
    for (let bit = 0; bit < prefix; bit++) {
      const slot = 2 * node + ((bytes[bit >> 3]! >> (7 - (bit & 7))) & 1);
      let next = this.#children[slot]!;
      if (next === NONE) {
        next = this.#newNode();
        // `#newNode` may have grown the array: write into the current one.
        this.#children[slot] = next;
      }
      node = next;
    }
    if (this.#hasValue[node] === 0) this.#size++;
    this.#hasValue[node] = 1;
    this.#values[node] = value;
  }

  /**
   * Removes the network `cidr` (canonical, as for {@linkcode add}); a network that is not
   * there is left alone.
   *
   * @throws {TypeError | RangeError} as {@linkcode add} does for bad input.
   */
  delete(cidr: string): void {
    const { family, bytes, prefix } = this.#parse(cidr);
    const path = this.#path;
    let node = family === 4 ? ROOT4 : ROOT6;
    path[0] = node;
    for (let bit = 0; bit < prefix; bit++) {
      node = this.#children[2 * node + ((bytes[bit >> 3]! >> (7 - (bit & 7))) & 1)]!;
      if (node === NONE) return;
      path[bit + 1] = node;
    }
    if (this.#hasValue[node] === 0) return;
    this.#hasValue[node] = 0;
    this.#values[node] = undefined;
    this.#size--;
    // Give back the nodes that now lead to no route, from the bottom up.
    for (let depth = prefix; depth > 0; depth--) {
      const leaf = path[depth]!;
      if (
        this.#hasValue[leaf] !== 0 || this.#children[2 * leaf] !== NONE ||
        this.#children[2 * leaf + 1] !== NONE
      ) {
        break;
      }
      const parent = path[depth - 1]!;
      const side = this.#children[2 * parent] === leaf ? 0 : 1;
      this.#children[2 * parent + side] = NONE;
      this.#free.push(leaf);
    }
  }

  /**
   * The value of the network `cidr` itself (canonical, as for {@linkcode add}), not of a
   * shorter one that holds it; undefined when that network is not in the table.
   */
  get(cidr: string): T | undefined {
    const { family, bytes, prefix } = this.#parse(cidr);
    let node = family === 4 ? ROOT4 : ROOT6;
    for (let bit = 0; bit < prefix; bit++) {
      node = this.#children[2 * node + ((bytes[bit >> 3]! >> (7 - (bit & 7))) & 1)]!;
      if (node === NONE) return undefined;
    }
    return this.#hasValue[node] === 0 ? undefined : this.#values[node];
  }

  /**
   * The value of the longest network that holds the IPv4 address `address` (an unsigned or
   * signed 32-bit number, as `ipv4Destination` gives it), or undefined when none does.
   */
  lookup4(address: number): T | undefined {
    const children = this.#children;
    const hasValue = this.#hasValue;
    let node = ROOT4;
    let best = hasValue[ROOT4] === 0 ? -1 : ROOT4;
    for (let bit = 31; bit >= 0; bit--) {
      node = children[2 * node + ((address >>> bit) & 1)]!;
      if (node === NONE) break;
      if (hasValue[node] !== 0) best = node;
    }
    return best < 0 ? undefined : this.#values[best];
  }

  /**
   * The value of the longest network that holds the IPv6 address at `buffer[at, at+16)` (as
   * in a packet header: `at` is the header's start plus `IPV6_DESTINATION_OFFSET`), or
   * undefined when none does. The caller checks that the buffer holds the 16 bytes.
   */
  lookup6(buffer: Uint8Array, at: number): T | undefined {
    const children = this.#children;
    const hasValue = this.#hasValue;
    let node = ROOT6;
    let best = hasValue[ROOT6] === 0 ? -1 : ROOT6;
    for (let i = 0; i < 16; i++) {
      const byte = buffer[at + i]!;
      for (let bit = 7; bit >= 0; bit--) {
        node = children[2 * node + ((byte >> bit) & 1)]!;
        if (node === NONE) return best < 0 ? undefined : this.#values[best];
        if (hasValue[node] !== 0) best = node;
      }
    }
    return best < 0 ? undefined : this.#values[best];
  }

  /** A node with no children and no value: a freed one, else a new one (growing the arrays). */
  #newNode(): number {
    const reused = this.#free.pop();
    if (reused !== undefined) return reused;
    if (this.#nodes === this.#hasValue.length) {
      const children = new Int32Array(this.#children.length * 2);
      children.set(this.#children);
      this.#children = children;
      const hasValue = new Uint8Array(this.#hasValue.length * 2);
      hasValue.set(this.#hasValue);
      this.#hasValue = hasValue;
    }
    this.#values.push(undefined);
    return this.#nodes++;
  }

  /** The family, network bytes and prefix of a canonical CIDR; throws on anything else. */
  #parse(cidr: string): { family: 4 | 6; bytes: Uint8Array; prefix: number } {
    const parsed = parseCidr(cidr);
    const canonical = `${parsed.network}/${parsed.prefix}`;
    if (cidr !== canonical) {
      const why = parsed.address === parsed.network
        ? "it is not in canonical form"
        : "host bits are set";
      throw new TypeError(`Cannot use route "${cidr}": ${why}; write "${canonical}"`);
    }
    if (parsed.family === 6) {
      return { family: 6, bytes: parseIPv6(parsed.network), prefix: parsed.prefix };
    }
    const address = parseIPv4(parsed.network);
    const bytes = new Uint8Array([address >>> 24, address >>> 16, address >>> 8, address]);
    return { family: 4, bytes, prefix: parsed.prefix };
  }
}
