/**
 * The VPN addresses handed to clients, one per client, from the server's subnet.
 *
 * @module
 */

import { formatIPv4, ipv4Netmask, parseCidr, parseIPv4 } from "./ip.ts";

/**
 * Hands out the host addresses of an IPv4 subnet to clients.
 *
 * The first host address (`10.8.0.1` in `10.8.0.0/24`) belongs to the server; the network and
 * broadcast addresses are never handed out. A client that reconnects under the same owner name
 * gets its old address back while it still holds it, and may ask for it back after it let it go
 * as long as nobody else has held it since: an address is bound to its last owner.
 *
 * Lookups are O(1) maps. Free addresses are tracked in a bitmap of one bit per client address
 * (8 KiB for a /16), searched a 32-bit word at a time from the lowest word that may have a free
 * bit, so allocation stays cheap even for large subnets.
 *
 * @example
 * ```ts
 * import { AddressPool } from "./address_pool.ts";
 * const pool = new AddressPool("10.8.0.0/24");
 * pool.allocate("alice"); // "10.8.0.2"
 * pool.allocate("bob"); // "10.8.0.3"
 * pool.allocate("alice"); // "10.8.0.2" again
 * ```
 */
export class AddressPool {
  /** The subnet in canonical form, such as `10.8.0.0/24`. */
  readonly subnet: string;
  /** The server's own address: the first host address of the subnet. */
  readonly serverAddress: string;
  /** The subnet's prefix length. */
  readonly prefix: number;
  /** The subnet mask in dotted form, such as `255.255.255.0`. */
  readonly netmask: string;
  /** How many addresses clients can hold: all host addresses but the server's. */
  readonly size: number;

  /** The first client address (the one after the server's), as a number. */
  readonly #first: number;
  /** Bit i is set while client address `#first + i` is held. */
  readonly #used: Uint32Array;
  /** Every word of `#used` below this index is full. */
  #firstFreeWord = 0;
  /** Owner of each held address, keyed by the address's index from `#first`. */
  readonly #owners = new Map<number, string>();
  /** Index of the address each owner holds. */
  readonly #indexes = new Map<string, number>();
  /**
   * The last owner of each address given out, held or not, and the other way round: one entry
   * per address at most, so the pool's size bounds them however often clients come and go.
   */
  readonly #lastOwners = new Map<number, string>();
  readonly #lastIndexes = new Map<string, number>();
  /**
   * Fixed addresses (`vpn client set NAME --address`), by index and by owner: their bits stay
   * set in `#used` while they are free, so that nobody else is given one.
   */
  #fixedOwners = new Map<number, string>();
  #fixedIndexes = new Map<string, number>();

  /**
   * Creates an empty pool over `cidr`.
   *
   * @throws {TypeError} when `cidr` is not an IPv4 CIDR block.
   * @throws {RangeError} when the prefix length is outside 8 to 30, or host bits are set.
   */
  constructor(cidr: string) {
    const parsed = parseCidr(cidr);
    if (parsed.family !== 4) {
      throw new TypeError(`Cannot use subnet "${cidr}": the VPN subnet must be IPv4`);
    }
    if (parsed.prefix > 30) {
      throw new RangeError(
        `Cannot use subnet "${cidr}": prefix length must be at most 30 ` +
          `(a /30 has two host addresses: the server's and one client's)`,
      );
    }
    // Below /8 the bitmap alone would take megabytes, for more clients than a server can hold.
    if (parsed.prefix < 8) {
      throw new RangeError(`Cannot use subnet "${cidr}": prefix length must be at least 8`);
    }
    if (parsed.address !== parsed.network) {
      throw new RangeError(
        `Cannot use subnet "${cidr}": host bits are set (did you mean ` +
          `"${parsed.network}/${parsed.prefix}"?)`,
      );
    }
    const network = parseIPv4(parsed.network);
    this.subnet = `${parsed.network}/${parsed.prefix}`;
    this.prefix = parsed.prefix;
    this.netmask = formatIPv4(ipv4Netmask(parsed.prefix));
    this.serverAddress = formatIPv4(network + 1);
    this.#first = network + 2;
    // All addresses less network, broadcast and server.
    this.size = 2 ** (32 - parsed.prefix) - 3;
    this.#used = new Uint32Array(Math.ceil(this.size / 32));
  }

  /** How many addresses clients hold now. */
  get inUse(): number {
    return this.#owners.size;
  }

  /**
   * Gives `owner` an address and returns it, or undefined when every address is taken.
   *
   * An owner that already holds an address gets that same one. Otherwise `preferred` is
   * honoured when it is a free client address of this pool whose last owner was `owner`, or
   * that nobody has held since the pool was made (a client asking back the address it had
   * before a server restart); it comes from the client, so anything else (another owner's
   * former address too) is ignored rather than refused, and the lowest free address is given.
   * Without `preferred`, an owner gets its last address (held before, or restored from a lease)
   * while it is free.
   */
  allocate(owner: string, preferred?: string): string | undefined {
    const held = this.#indexes.get(owner);
    if (held !== undefined) return formatIPv4(this.#first + held);
    const fixed = this.#fixedIndexes.get(owner);
    let index = fixed ??
      (preferred === undefined ? this.#lastIndexes.get(owner) : this.#indexOf(preferred));
    if (
      index === undefined || this.#owners.has(index) ||
      (this.#fixedOwners.get(index) ?? owner) !== owner ||
      (fixed === undefined && (this.#lastOwners.get(index) ?? owner) !== owner)
    ) {
      index = this.#lowestFree();
    }
    if (index === undefined) return undefined;
    this.#used[index >>> 5]! |= 1 << (index & 31);
    this.#owners.set(index, owner);
    this.#indexes.set(owner, index);
    this.#bind(index, owner);
    return formatIPv4(this.#first + index);
  }

  /** Makes `owner` the last owner of the address at `index`, and of no other. */
  #bind(index: number, owner: string): void {
    const before = this.#lastIndexes.get(owner);
    if (before !== undefined) this.#lastOwners.delete(before);
    const previous = this.#lastOwners.get(index);
    if (previous !== undefined) this.#lastIndexes.delete(previous);
    this.#lastOwners.set(index, owner);
    this.#lastIndexes.set(owner, index);
  }

  /**
   * Binds `address` to `owner` as its last owner without holding it, as a lease read back
   * after a restart: `owner` then gets it while it is free. False (nothing changed) when it is
   * not a client address of this pool, or is held, or bound to another owner already.
   */
  restore(owner: string, address: string): boolean {
    const index = this.#indexOf(address);
    if (index === undefined || this.#owners.has(index)) return false;
    if ((this.#fixedOwners.get(index) ?? owner) !== owner) return false;
    const last = this.#lastOwners.get(index);
    if (last !== undefined && last !== owner) return false;
    this.#bind(index, owner);
    return true;
  }

  /** The address each owner held last (or holds), as `[owner, address]`. */
  *lastAddresses(): Iterable<[owner: string, address: string]> {
    for (const [owner, index] of this.#lastIndexes) {
      yield [owner, formatIPv4(this.#first + index)];
    }
  }

  /** Frees `address` for reuse. Returns false when it was not held. */
  release(address: string): boolean {
    const index = this.#indexOf(address);
    if (index === undefined) return false;
    const owner = this.#owners.get(index);
    if (owner === undefined) return false;
    this.#owners.delete(index);
    this.#indexes.delete(owner);
    if (!this.#fixedOwners.has(index)) this.#free(index);
    return true;
  }

  /**
   * Makes `fixed` (owner → address) the fixed addresses, replacing the earlier ones: each is
   * given to its owner only. One held by someone else stays theirs until they release it.
   * Addresses outside the pool are left out; the registry's checks keep them in.
   */
  setFixed(fixed: ReadonlyMap<string, string>): void {
    for (const index of this.#fixedOwners.keys()) {
      if (!this.#owners.has(index)) this.#free(index);
    }
    this.#fixedOwners = new Map();
    this.#fixedIndexes = new Map();
    for (const [owner, address] of fixed) {
      const index = this.#indexOf(address);
      if (index === undefined || this.#fixedOwners.has(index)) continue;
      this.#fixedOwners.set(index, owner);
      this.#fixedIndexes.set(owner, index);
      this.#used[index >>> 5]! |= 1 << (index & 31);
    }
  }

  /** Clears the bit of `index`. */
  #free(index: number): void {
    this.#used[index >>> 5]! &= ~(1 << (index & 31));
    this.#firstFreeWord = Math.min(this.#firstFreeWord, index >>> 5);
  }

  /** The owner holding `address`, or undefined when nobody does. */
  ownerOf(address: string): string | undefined {
    const index = this.#indexOf(address);
    return index === undefined ? undefined : this.#owners.get(index);
  }

  /** The address `owner` holds, or undefined when it holds none. */
  addressOf(owner: string): string | undefined {
    const index = this.#indexes.get(owner);
    return index === undefined ? undefined : formatIPv4(this.#first + index);
  }

  /** The host number of `address` in the subnet (the server's is 1), or undefined. */
  hostNumber(address: string): number | undefined {
    const index = this.#indexOf(address);
    return index === undefined ? undefined : index + 2;
  }

  /** The index of a client address of this pool, or undefined for any other text. */
  #indexOf(address: string): number | undefined {
    let value: number;
    try {
      value = parseIPv4(address);
    } catch {
      return undefined;
    }
    const index = value - this.#first;
    return index >= 0 && index < this.size ? index : undefined;
  }

  /** The index of the lowest free address, or undefined when all are held. */
  #lowestFree(): number | undefined {
    const used = this.#used;
    for (let word = this.#firstFreeWord; word < used.length; word++) {
      const bits = used[word]!;
      if (bits === 0xffffffff) continue;
      this.#firstFreeWord = word;
      // `~bits & (bits + 1)` isolates the lowest clear bit.
      const index = word * 32 + 31 - Math.clz32(~bits & (bits + 1));
      return index < this.size ? index : undefined;
    }
    this.#firstFreeWord = used.length;
    return undefined;
  }
}
