import { assert, assertEquals } from "./_assert.ts";
import { ReplayWindow, WINDOW } from "../mod/core/replay.ts";

/** check() and accept() must agree; returns accept()'s answer. */
function take(window: ReplayWindow, counter: number): boolean {
  const fresh = window.check(counter);
  const accepted = window.accept(counter);
  assertEquals(accepted, fresh, `check(${counter}) and accept(${counter}) disagree`);
  return accepted;
}

Deno.test("ReplayWindow accepts the first packet 0 and rejects its duplicate", () => {
  const window = new ReplayWindow();
  assert(take(window, 0));
  assert(!take(window, 0));
  assert(take(window, 1));
  assert(!take(window, 1));
  assert(!take(window, 0));
});

Deno.test("ReplayWindow.check() records nothing", () => {
  const window = new ReplayWindow();
  assert(window.check(7));
  assert(window.check(7));
  assert(window.accept(7));
  assert(!window.check(7));
});

Deno.test("ReplayWindow accepts out-of-order packets inside the window once", () => {
  const window = new ReplayWindow();
  for (const counter of [10, 3, 7, 0, 100, 50, 99, 101]) {
    assert(take(window, counter), `${counter}`);
  }
  for (const counter of [10, 3, 7, 0, 100, 50, 99, 101]) {
    assert(!take(window, counter), `${counter}`);
  }
  assert(take(window, 51));
});

Deno.test("ReplayWindow keeps exactly 2048 counters ending at the highest (PROTOCOL.md)", () => {
  // The number itself is the promise: a literal here, so that a changed WINDOW fails.
  assertEquals(WINDOW, 2048);
  for (const highest of [7_048, 7_079, 2_047, 2 ** 40 + 17]) {
    const window = new ReplayWindow();
    assert(take(window, highest));
    assert(take(window, highest - 2047), `${highest}: the oldest counter still inside`);
    assert(!take(window, highest - 2048), `${highest}: the first counter outside`);
  }
});

Deno.test("ReplayWindow keeps exactly WINDOW counters ending at the highest", () => {
  for (const highest of [WINDOW + 5_000, WINDOW + 5_000 + 31, WINDOW - 1, 2 ** 40 + 17]) {
    const window = new ReplayWindow();
    assert(take(window, highest));
    assert(!take(window, highest - WINDOW), `${highest}: highest - WINDOW`);
    assert(take(window, highest - WINDOW + 1), `${highest}: highest - WINDOW + 1`);
    assert(!take(window, highest - WINDOW + 1));
  }
});

Deno.test("ReplayWindow clears old bits when it jumps ahead", () => {
  const window = new ReplayWindow();
  let highest = 4095;
  for (let counter = 0; counter <= highest; counter++) assert(take(window, counter));
  // Jumps of exactly one ring (128 blocks of 32), just under, just over, and far beyond: the
  // bits left at the same ring positions must not make the new counters look seen.
  for (const jump of [4096, 4096 - 32, 4096 + 1, 10 ** 9]) {
    highest += jump;
    assert(take(window, highest), `jump ${jump}`);
    for (let back = 1; back < WINDOW; back++) {
      assert(window.check(highest - back), `jump ${jump}: ${highest - back} looks seen`);
    }
    // Fill the window again, so that the next jump lands on a ring full of set bits.
    for (let back = 1; back < WINDOW; back++) assert(take(window, highest - back));
  }
});

Deno.test("ReplayWindow handles counters near 2^53 - 1 and rejects bad ones", () => {
  const top = Number.MAX_SAFE_INTEGER;
  const window = new ReplayWindow();
  assert(take(window, top - 3000));
  assert(take(window, top - 1));
  assert(!take(window, top - 3000)); // now outside the window
  assert(take(window, top - WINDOW));
  assert(!take(window, top - WINDOW - 1));
  assert(take(window, top));
  assert(!take(window, top));
  assert(take(window, top - 2));
  for (const bad of [top + 1, -1, 1.5, Number.NaN, Infinity]) assert(!take(window, bad), `${bad}`);
});

Deno.test("ReplayWindow.reset() forgets every counter", () => {
  const window = new ReplayWindow();
  assert(take(window, 1_000_000));
  window.reset();
  assert(take(window, 0));
  assert(take(window, 1_000_000));
});

/** mulberry32: a small seeded generator, so that a failure reproduces. */
function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = Math.imul(state ^ (state >>> 15), 1 | state);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

Deno.test("ReplayWindow agrees with a Set-based model on random traffic", () => {
  const next = random(0x5eed);
  const window = new ReplayWindow();
  const seen = new Set<number>();
  let highest = -1;
  for (let step = 0; step < 200_000; step++) {
    const roll = next();
    const base = Math.max(highest, 0);
    let counter: number;
    if (roll < 0.5) counter = base + 1 + Math.floor(next() * 40); // mostly in order
    else if (roll < 0.8) counter = base - Math.floor(next() * (WINDOW + 64)); // late, near the edge
    else if (roll < 0.95) counter = base - Math.floor(next() * 64); // recent: many duplicates
    else counter = base + Math.floor(next() * 20_000); // a jump ahead
    if (counter < 0) continue;
    const expected = !seen.has(counter) && (highest < 0 || highest - counter < WINDOW);
    assertEquals(take(window, counter), expected, `step ${step}: counter ${counter}`);
    if (expected) {
      seen.add(counter);
      highest = Math.max(highest, counter);
    }
  }
});
