/**
 * Places for connections in their handshake (before auth), shared fairly among their sources,
 * for both protocols: our TLS listener (mod/native/listener.ts) and OpenVPN's TCP connections
 * and handshakes (mod/openvpn/server.ts).
 *
 * A source is an IPv4 address, or an IPv6 /64: one host usually owns a whole /64, so its
 * addresses count as one ({@linkcode sourceKey}). Two caps hold at once:
 *
 * - per source: a newcomer from a source at its cap takes the place of that source's oldest
 *   connection. A source's newest attempt is the one most likely alive (a client that
 *   restarted, one behind a NAT with stale connections); refusing it instead would let
 *   idle connections lock their own source out until they time out. Either way the cost is
 *   one close, and no TLS work is done for the newcomer before the decision.
 * - in all: a newcomer at the total cap takes the place of the oldest connection of the
 *   noisiest source (most connections now; of equals, the one with the oldest). A newcomer
 *   whose own source has as many as the noisiest is refused: taking a place from an equal
 *   would make its source the noisiest, and pushing out others gains a flood nothing.
 *
 * Each decision is O(log n) in the number of sources (a heap of them by noisiness); a source
 * is kept only while it has connections, so memory follows the caps, not the history.
 *
 * @example
 * ```ts
 * import { PreAuthLimiter } from "./preauth.ts";
 * const limiter = new PreAuthLimiter<string>({ perSource: 2, total: 64 });
 * limiter.admit("192.0.2.7", "a"); // { verdict: "admitted" }
 * limiter.admit("192.0.2.7", "b"); // { verdict: "admitted" }
 * limiter.admit("192.0.2.7", "c"); // { verdict: "replaced", dropped: "a" }
 * limiter.release("b"); // "b" finished its handshake, or failed
 * ```
 *
 * @module
 */

import { parseIPv6, peerHost } from "./ip.ts";

/** The caps of a {@linkcode PreAuthLimiter}. */
export interface PreAuthCaps {
  /** Connections in their handshake from one source at once. */
  perSource: number;
  /** Connections in their handshake at once, every source together. */
  total: number;
}

/** What {@linkcode PreAuthLimiter.admit} did with a newcomer. */
export type Admission<T> =
  /** It has a place; nothing else changed. */
  | { readonly verdict: "admitted" }
  /** It has a place; its own source was at its cap, and `dropped`, its oldest, lost its own. */
  | { readonly verdict: "replaced"; readonly dropped: T }
  /** It has a place; the total was reached, and `dropped`, the noisiest's oldest, lost its own. */
  | { readonly verdict: "displaced"; readonly dropped: T }
  /** No place: the total was reached and its own source is as noisy as the noisiest. */
  | { readonly verdict: "refused" };

const ADMITTED = { verdict: "admitted" } as const;
const REFUSED = { verdict: "refused" } as const;

/** One connection's place: in its source's list, oldest first. */
interface Place<T> {
  readonly item: T;
  readonly source: Source<T>;
  /** Admission order across every source: smaller is older. */
  readonly order: number;
  prev: Place<T> | undefined;
  next: Place<T> | undefined;
}

/** A source with at least one place. */
interface Source<T> {
  readonly key: string;
  count: number;
  /** Its oldest place (never undefined while the source exists). */
  oldest: Place<T> | undefined;
  newest: Place<T> | undefined;
  /** Where it is in the heap. */
  at: number;
}

/** Admits connections in their handshake within per-source and total caps (module doc). */
export class PreAuthLimiter<T> {
  readonly caps: Readonly<PreAuthCaps>;
  readonly #places = new Map<T, Place<T>>();
  readonly #sources = new Map<string, Source<T>>();
  /** Sources, noisiest first: a binary heap under {@linkcode noisier}. */
  readonly #heap: Source<T>[] = [];
  #order = 0;

  /** @throws {RangeError} unless both caps are positive integers, `perSource` at most `total`. */
  constructor(caps: PreAuthCaps) {
    const { perSource, total } = caps;
    if (!Number.isInteger(perSource) || !Number.isInteger(total) || perSource < 1) {
      throw new RangeError(`Pre-auth caps must be positive integers, got ${perSource}/${total}`);
    }
    if (perSource > total) {
      throw new RangeError(`The per-source cap (${perSource}) exceeds the total (${total})`);
    }
    this.caps = { perSource, total };
  }

  /** Connections holding a place now. */
  get size(): number {
    return this.#places.size;
  }

  /** Sources holding a place now. */
  get sources(): number {
    return this.#sources.size;
  }

  /** Whether `item` holds a place. */
  has(item: T): boolean {
    return this.#places.has(item);
  }

  /** Every connection holding a place, in no promised order. */
  items(): IterableIterator<T> {
    return this.#places.keys();
  }

  /**
   * Decides on `item`, a newcomer from `host` (a socket's address as Deno gives it); a
   * connection it drops has lost its place already, and the caller ends it. `item` must hold
   * no place yet.
   */
  admit(host: string, item: T): Admission<T> {
    if (this.#places.has(item)) throw new Error("PreAuthLimiter.admit(): the item has a place");
    const key = sourceKey(host);
    const own = this.#sources.get(key);
    if (own !== undefined && own.count >= this.caps.perSource) {
      const dropped = own.oldest!.item;
      this.release(dropped);
      this.#add(key, item);
      return { verdict: "replaced", dropped };
    }
    if (this.#places.size >= this.caps.total) {
      const noisiest = this.#heap[0]!;
      if (own !== undefined && own.count >= noisiest.count) return REFUSED;
      const dropped = noisiest.oldest!.item;
      this.release(dropped);
      this.#add(key, item);
      return { verdict: "displaced", dropped };
    }
    this.#add(key, item);
    return ADMITTED;
  }

  /** `item` left its handshake (authenticated, failed, or closed); unknown items are ignored. */
  release(item: T): void {
    const place = this.#places.get(item);
    if (place === undefined) return;
    this.#places.delete(item);
    const source = place.source;
    if (place.prev === undefined) source.oldest = place.next;
    else place.prev.next = place.next;
    if (place.next === undefined) source.newest = place.prev;
    else place.next.prev = place.prev;
    source.count--;
    if (source.count === 0) {
      this.#sources.delete(source.key);
      this.#removeFromHeap(source);
    } else {
      // Fewer places, or a younger oldest one: it can only have become less noisy.
      this.#siftDown(source.at);
    }
  }

  #add(key: string, item: T): void {
    let source = this.#sources.get(key);
    if (source === undefined) {
      source = { key, count: 0, oldest: undefined, newest: undefined, at: this.#heap.length };
      this.#sources.set(key, source);
      this.#heap.push(source);
    }
    const place: Place<T> = {
      item,
      source,
      order: this.#order++,
      prev: source.newest,
      next: undefined,
    };
    if (source.newest === undefined) source.oldest = place;
    else source.newest.next = place;
    source.newest = place;
    source.count++;
    this.#places.set(item, place);
    this.#siftUp(source.at);
  }

  #removeFromHeap(source: Source<T>): void {
    const heap = this.#heap;
    const last = heap.pop()!;
    if (last === source) return;
    heap[source.at] = last;
    last.at = source.at;
    this.#siftUp(last.at);
    this.#siftDown(last.at);
  }

  #siftUp(at: number): void {
    const heap = this.#heap;
    const source = heap[at]!;
    while (at > 0) {
      const parentAt = (at - 1) >> 1;
      const parent = heap[parentAt]!;
      if (!noisier(source, parent)) break;
      heap[at] = parent;
      parent.at = at;
      at = parentAt;
    }
    heap[at] = source;
    source.at = at;
  }

  #siftDown(at: number): void {
    const heap = this.#heap;
    const source = heap[at]!;
    while (true) {
      let childAt = 2 * at + 1;
      if (childAt >= heap.length) break;
      const right = childAt + 1;
      if (right < heap.length && noisier(heap[right]!, heap[childAt]!)) childAt = right;
      const child = heap[childAt]!;
      if (!noisier(child, source)) break;
      heap[at] = child;
      child.at = at;
      at = childAt;
    }
    heap[at] = source;
    source.at = at;
  }
}

/** More places; of equals, the older oldest place. */
function noisier<T>(a: Source<T>, b: Source<T>): boolean {
  return a.count > b.count || (a.count === b.count && a.oldest!.order < b.oldest!.order);
}

/**
 * The source a connection from `host` counts against: an IPv4 address (an IPv4-mapped IPv6
 * one, `::ffff:192.0.2.7`, as the IPv4 address), or the /64 of an IPv6 address, as
 * `2001:db8:1:2::/64`. A host that is neither (a zone index, a name) is its own source.
 */
export function sourceKey(host: string): string {
  const ip = peerHost(host);
  if (!ip.includes(":")) return ip;
  let bytes: Uint8Array;
  try {
    bytes = parseIPv6(ip);
  } catch {
    return ip;
  }
  const groups: string[] = [];
  for (let i = 0; i < 8; i += 2) groups.push(((bytes[i]! << 8) | bytes[i + 1]!).toString(16));
  return `${groups.join(":")}::/64`;
}
