/**
 * Replay protection for the UDP data channel, after wireguard-go's `replay` package.
 *
 * A ring of 32-bit blocks holds one bit per counter. Moving forward clears only the blocks
 * the window slides over, so a packet costs O(1) and nothing is allocated. Counters are plain
 * numbers (< 2^53): block and bit indices then come from exact division and `& 31` (ToInt32
 * is exact modulo 2^32 for integers), where a BigInt would allocate per packet.
 *
 * @module
 */

/** How many counters, ending at the highest one seen, can still be accepted. */
export const WINDOW = 2048;

const BLOCK_BITS = 32;
// The window spans at most WINDOW / BLOCK_BITS + 1 blocks (65) when it does not start on a
// block boundary; the next power of two lets `& RING_MASK` pick a block. Blocks beyond the
// window hold stale bits that the distance check ignores.
const RING_BLOCKS = 128;
const RING_MASK = RING_BLOCKS - 1;

/**
 * A sliding window over 64-bit packet counters (as safe integers).
 *
 * Run {@linkcode ReplayWindow.check} before decrypting, to drop replays and stale packets
 * cheaply, and {@linkcode ReplayWindow.accept} after the packet authenticated, so that a forged
 * packet cannot move the window.
 *
 * @example
 * ```ts
 * const replay = new ReplayWindow();
 * replay.accept(5); // true
 * replay.check(5); // false: a replay
 * replay.check(4); // true: late, but inside the window
 * ```
 */
export class ReplayWindow {
  readonly #ring = new Uint32Array(RING_BLOCKS);
  /** The highest counter accepted; -1 before the first. */
  #highest = -1;

  /**
   * true when `counter` has not been accepted yet and lies inside the window. Records
   * nothing.
   */
  check(counter: number): boolean {
    if (!Number.isSafeInteger(counter) || counter < 0) return false;
    if (counter > this.#highest) return true;
    if (this.#highest - counter >= WINDOW) return false;
    const block = this.#ring[Math.floor(counter / BLOCK_BITS) & RING_MASK]!;
    return (block & (1 << (counter & 31))) === 0;
  }

  /**
   * Records `counter` as seen, sliding the window forward when it is the highest so far.
   * Returns false, recording nothing, when {@linkcode ReplayWindow.check} would: a replay
   * that raced its original through decryption.
   */
  accept(counter: number): boolean {
    if (!this.check(counter)) return false;
    const block = Math.floor(counter / BLOCK_BITS);
    if (counter > this.#highest) {
      // Clear the blocks between the old highest and this one; a jump of a whole ring or more
      // clears every block once. Math.floor(-1 / 32) is -1, so the first packet starts at 0.
      const current = Math.floor(this.#highest / BLOCK_BITS);
      const steps = Math.min(block - current, RING_BLOCKS);
      for (let i = 1; i <= steps; i++) this.#ring[(current + i) & RING_MASK] = 0;
      this.#highest = counter;
    }
    this.#ring[block & RING_MASK]! |= 1 << (counter & 31);
    return true;
  }

  /** Forgets every counter, as for a new key. */
  reset(): void {
    this.#ring.fill(0);
    this.#highest = -1;
  }
}
