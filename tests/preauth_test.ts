import { assert, assertEquals, assertThrows } from "./_assert.ts";
import { type Admission, PreAuthLimiter, sourceKey } from "../mod/core/preauth.ts";

/** Admits `count` items named `${prefix}${i}` from `host`; every one must get a place at once. */
function fill(limiter: PreAuthLimiter<string>, host: string, prefix: string, count: number) {
  for (let i = 0; i < count; i++) {
    assertEquals(limiter.admit(host, `${prefix}${i}`), { verdict: "admitted" }, `${prefix}${i}`);
  }
}

Deno.test("PreAuthLimiter.admit() at a source's cap of 8 gives the newcomer the place of that source's oldest, and leaves other sources alone", () => {
  const limiter = new PreAuthLimiter<string>({ perSource: 8, total: 64 });
  fill(limiter, "192.0.2.7", "a", 8);
  fill(limiter, "192.0.2.8", "b", 3);
  assertEquals(limiter.admit("192.0.2.7", "a8"), { verdict: "replaced", dropped: "a0" });
  assertEquals(limiter.admit("192.0.2.7", "a9"), { verdict: "replaced", dropped: "a1" });
  assert(!limiter.has("a0") && !limiter.has("a1") && limiter.has("a2") && limiter.has("a9"));
  assertEquals(limiter.size, 11);
  // Its oldest is the oldest still there: a2 left early, so a3 is next.
  limiter.release("a2");
  fill(limiter, "192.0.2.7", "c", 1);
  assertEquals(limiter.admit("192.0.2.7", "c1"), { verdict: "replaced", dropped: "a3" });
  fill(limiter, "192.0.2.8", "b3", 5);
  assertEquals(limiter.size, 16);
});

Deno.test("PreAuthLimiter.admit() at the total cap of 64 drops the oldest place of the noisiest source (of equals, the one with the oldest), and refuses a newcomer whose source is as noisy", () => {
  const limiter = new PreAuthLimiter<string>({ perSource: 8, total: 64 });
  // 10.0.0.1 to .7 with 8 places each, .8 with 7, .9 with 1: 64, in that order of age.
  for (let s = 1; s <= 7; s++) fill(limiter, `10.0.0.${s}`, `s${s}-`, 8);
  fill(limiter, "10.0.0.8", "s8-", 7);
  fill(limiter, "10.0.0.9", "s9-", 1);
  assertEquals(limiter.size, 64);
  // A new source: .1 to .7 have the most, and .1 the oldest place among them.
  assertEquals(limiter.admit("10.0.0.10", "s10-0"), { verdict: "displaced", dropped: "s1-0" });
  assertEquals(limiter.admit("10.0.0.10", "s10-1"), { verdict: "displaced", dropped: "s2-0" });
  // .8 has 7, fewer than .3: it may take a place too.
  assertEquals(limiter.admit("10.0.0.8", "s8-7"), { verdict: "displaced", dropped: "s3-0" });
  // At its own cap a source replaces its own oldest, total or not.
  assertEquals(limiter.admit("10.0.0.4", "s4-8"), { verdict: "replaced", dropped: "s4-0" });
  // .4 to .8 have 8; the oldest place among them is .4's s4-1 (older than s5-0).
  assertEquals(limiter.admit("10.0.0.1", "s1-8"), { verdict: "displaced", dropped: "s4-1" });
  // Now .1 has 8 again, and s1-1 is older than any place of .5 to .8.
  assertEquals(limiter.admit("10.0.0.9", "s9-1"), { verdict: "displaced", dropped: "s1-1" });
  assertEquals(limiter.size, 64);

  // Every source down to 7 at most, and .11 with 4 to fill the total again.
  for (let s = 5; s <= 8; s++) limiter.release(`s${s}-0`);
  fill(limiter, "10.0.0.11", "s11-", 4);
  assertEquals(limiter.size, 64);
  // .2 has 7, as many as any: refused, and nothing changes.
  assertEquals(limiter.admit("10.0.0.2", "s2-8"), { verdict: "refused" });
  assert(!limiter.has("s2-8"));
  assertEquals(limiter.size, 64);
  // .11 has 4: the oldest place of a source with 7 goes, .1's s1-2.
  assertEquals(limiter.admit("10.0.0.11", "s11-4"), { verdict: "displaced", dropped: "s1-2" });
});

Deno.test("PreAuthLimiter.admit() lets a source take the place of a noisier one only while it is quieter: places even out", () => {
  const limiter = new PreAuthLimiter<string>({ perSource: 8, total: 16 });
  fill(limiter, "10.0.0.1", "a", 8);
  fill(limiter, "10.0.0.2", "b", 8);
  // A third source takes places from the two, one at a time from the noisier, while it has
  // fewer than the noisiest: it ends one above them, and is refused from then on.
  const verdicts: Admission<string>["verdict"][] = [];
  for (let i = 0; i < 10; i++) verdicts.push(limiter.admit("10.0.0.3", `c${i}`).verdict);
  assertEquals(verdicts, [...new Array(6).fill("displaced"), ...new Array(4).fill("refused")]);
  const counts = new Map<string, number>();
  for (const item of limiter.items()) counts.set(item[0]!, (counts.get(item[0]!) ?? 0) + 1);
  assertEquals([...counts.entries()].sort(), [["a", 5], ["b", 5], ["c", 6]]);
});

Deno.test("sourceKey() counts an IPv6 address by its /64 and an IPv4-mapped one as the IPv4 address", () => {
  assertEquals(sourceKey("192.0.2.7"), "192.0.2.7");
  assertEquals(sourceKey("::ffff:192.0.2.7"), "192.0.2.7");
  assertEquals(sourceKey("::FFFF:192.0.2.7"), "192.0.2.7");
  assertEquals(sourceKey("2001:db8:1:2::1"), "2001:db8:1:2::/64");
  assertEquals(sourceKey("2001:db8:1:2:ffff:ffff:ffff:ffff"), "2001:db8:1:2::/64");
  assertEquals(sourceKey("2001:0db8:0001:0002:0000:0000:0000:0009"), "2001:db8:1:2::/64");
  assertEquals(sourceKey("2001:db8:1:3::1"), "2001:db8:1:3::/64");
  assertEquals(sourceKey("::1"), "0:0:0:0::/64");
  // What is no address stays itself: it still counts, against itself alone.
  assertEquals(sourceKey("fe80::1%eth0"), "fe80::1%eth0");
});

Deno.test("PreAuthLimiter counts the addresses of one IPv6 /64 as one source, and ::ffff:a.b.c.d with a.b.c.d", () => {
  const limiter = new PreAuthLimiter<string>({ perSource: 8, total: 64 });
  for (let i = 0; i < 8; i++) {
    assertEquals(limiter.admit(`2001:db8:1:2::${i + 1}`, `v6-${i}`).verdict, "admitted");
  }
  assertEquals(limiter.admit("2001:db8:1:2:abcd::1", "v6-8"), {
    verdict: "replaced",
    dropped: "v6-0",
  });
  assertEquals(limiter.admit("2001:db8:1:3::1", "other").verdict, "admitted");
  fill(limiter, "192.0.2.7", "v4-", 4);
  for (let i = 4; i < 8; i++) {
    assertEquals(limiter.admit("::ffff:192.0.2.7", `v4-${i}`).verdict, "admitted");
  }
  assertEquals(limiter.admit("::ffff:192.0.2.7", "v4-8"), { verdict: "replaced", dropped: "v4-0" });
  assertEquals(limiter.admit("192.0.2.7", "v4-9"), { verdict: "replaced", dropped: "v4-1" });
  assertEquals(limiter.sources, 3);
});

Deno.test("PreAuthLimiter.release() frees a source's entry with its last place; unknown and twice-released items are ignored", () => {
  const limiter = new PreAuthLimiter<string>({ perSource: 8, total: 64 });
  fill(limiter, "192.0.2.7", "a", 3);
  fill(limiter, "2001:db8::1", "b", 2);
  assertEquals([limiter.size, limiter.sources], [5, 2]);
  limiter.release("b0");
  limiter.release("b0");
  limiter.release("never");
  assertEquals([limiter.size, limiter.sources], [4, 2]);
  limiter.release("b1");
  assertEquals([limiter.size, limiter.sources], [3, 1]);
  for (const item of ["a2", "a0", "a1"]) limiter.release(item);
  assertEquals([limiter.size, limiter.sources], [0, 0]);
  assertEquals([...limiter.items()], []);
  // A dropped item lost its place at once: its own release later changes nothing.
  fill(limiter, "192.0.2.7", "c", 8);
  assertEquals(limiter.admit("192.0.2.7", "c8"), { verdict: "replaced", dropped: "c0" });
  limiter.release("c0");
  assertEquals(limiter.size, 8);
});

Deno.test("PreAuthLimiter keeps no entry of 100,000 sources that came and went, and at most its caps under churn", () => {
  const limiter = new PreAuthLimiter<number>({ perSource: 8, total: 64 });
  const held: number[] = [];
  for (let i = 0; i < 100_000; i++) {
    const host = i % 3 === 0
      ? `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`
      : `2001:db8:${(i >> 16).toString(16)}:${(i & 0xffff).toString(16)}::1`;
    const admission = limiter.admit(host, i);
    if (admission.verdict !== "refused") held.push(i);
    // Handshakes end out of order, the oldest of a random few first.
    if (held.length > 40) limiter.release(held.splice((i * 7919) % held.length, 1)[0]!);
    assert(limiter.size <= 64 && limiter.sources <= limiter.size);
  }
  for (const item of held) limiter.release(item);
  assertEquals([limiter.size, limiter.sources], [0, 0]);
});

/**
 * The rules written the slow way, to check the heap against: the noisiest source found by a
 * pass over every place.
 */
class SlowLimiter {
  /** Places in admission order: [source, item]. */
  readonly places: [string, number][] = [];
  constructor(readonly perSource: number, readonly total: number) {}

  admit(source: string, item: number): Admission<number> {
    const own = this.places.filter(([s]) => s === source);
    if (own.length >= this.perSource) {
      const dropped = own[0]![1];
      this.release(dropped);
      this.places.push([source, item]);
      return { verdict: "replaced", dropped };
    }
    if (this.places.length >= this.total) {
      const counts = new Map<string, number>();
      for (const [s] of this.places) counts.set(s, (counts.get(s) ?? 0) + 1);
      const most = Math.max(...counts.values());
      if (own.length >= most) return { verdict: "refused" };
      // The first place of a source with the most is the oldest among theirs.
      const dropped = this.places.find(([s]) => counts.get(s) === most)![1];
      this.release(dropped);
      this.places.push([source, item]);
      return { verdict: "displaced", dropped };
    }
    this.places.push([source, item]);
    return { verdict: "admitted" };
  }

  release(item: number): void {
    const at = this.places.findIndex(([, i]) => i === item);
    if (at >= 0) this.places.splice(at, 1);
  }
}

Deno.test("PreAuthLimiter decides as the rules written the slow way do, over 20,000 random admissions and releases", () => {
  let seed = 12345;
  const random = (n: number) => {
    seed = (seed * 1103515245 + 12345) >>> 0; // a fixed LCG: the same run every time
    return (seed >>> 8) % n;
  };
  for (const [perSource, total, hosts] of [[8, 64, 20], [3, 10, 6], [1, 5, 9], [8, 8, 3]]) {
    const fast = new PreAuthLimiter<number>({ perSource: perSource!, total: total! });
    const slow = new SlowLimiter(perSource!, total!);
    for (let i = 0; i < 5_000; i++) {
      if (random(3) === 0 && slow.places.length > 0) {
        const item = slow.places[random(slow.places.length)]![1];
        fast.release(item);
        slow.release(item);
        continue;
      }
      const host = `10.0.0.${random(hosts!)}`;
      assertEquals(fast.admit(host, i), slow.admit(host, i), `step ${i} (${perSource}/${total})`);
      assertEquals(fast.size, slow.places.length);
    }
  }
});

Deno.test("PreAuthLimiter refuses caps that are not positive integers or a per-source cap over the total, and a second admit() of one item", () => {
  assertThrows(() => new PreAuthLimiter({ perSource: 0, total: 64 }), RangeError);
  assertThrows(() => new PreAuthLimiter({ perSource: 8.5, total: 64 }), RangeError);
  assertThrows(
    () => new PreAuthLimiter({ perSource: 9, total: 8 }),
    RangeError,
    /exceeds the total/,
  );
  const limiter = new PreAuthLimiter<string>({ perSource: 8, total: 64 });
  limiter.admit("192.0.2.7", "a");
  assertThrows(() => limiter.admit("192.0.2.8", "a"), Error, /has a place/);
});
