/**
 * PrefixTable: longest-prefix match for IPv4 and IPv6, exact get, replace and delete, and bad
 * input; then seeded random tables checked against a brute-force scan of every route.
 */

import { PrefixTable } from "../mod/core/prefix_table.ts";
import { formatIPv6, IPV6_DESTINATION_OFFSET, parseIPv4, parseIPv6 } from "../mod/core/ip.ts";
import { assert, assertEquals, assertThrows } from "./_assert.ts";

/** An IPv6 header whose destination is `address`, behind 10 bytes of something else. */
function v6Packet(address: string): Uint8Array {
  const packet = new Uint8Array(10 + 40);
  packet[10] = 0x60;
  packet.set(parseIPv6(address), 10 + IPV6_DESTINATION_OFFSET);
  return packet;
}

const lookup6 = <T>(table: PrefixTable<T>, address: string) =>
  table.lookup6(v6Packet(address), 10 + IPV6_DESTINATION_OFFSET);

Deno.test("PrefixTable.lookup4() returns the value of the longest network holding the address", () => {
  const table = new PrefixTable<string>();
  table.add("192.168.0.0/16", "site");
  table.add("192.168.60.0/24", "branch");
  table.add("192.168.60.7/32", "host");
  assertEquals(table.lookup4(parseIPv4("192.168.60.7")), "host");
  assertEquals(table.lookup4(parseIPv4("192.168.60.8")), "branch");
  assertEquals(table.lookup4(parseIPv4("192.168.61.1")), "site");
  assertEquals(table.lookup4(parseIPv4("10.0.0.1")), undefined);
  table.add("0.0.0.0/0", "default");
  assertEquals(table.lookup4(parseIPv4("10.0.0.1")), "default");
  assertEquals(table.lookup4(parseIPv4("255.255.255.255")), "default");
  // Addresses above 2^31 as ipv4Destination gives them (unsigned) and as `|0` leaves them.
  table.add("200.0.0.0/8", "high");
  assertEquals(table.lookup4(parseIPv4("200.1.2.3")), "high");
  assertEquals(table.lookup4(parseIPv4("200.1.2.3") | 0), "high");
  assertEquals(table.size, 5);
});

Deno.test("PrefixTable.lookup6() matches the 16 bytes at an offset, longest network first", () => {
  const table = new PrefixTable<number>();
  table.add("fd00::/8", 1);
  table.add("fd00:1::/32", 2);
  table.add("fd00:1:0:5::/64", 3);
  table.add("fd00:1:0:5::9/128", 4);
  assertEquals(lookup6(table, "fd00:1:0:5::9"), 4);
  assertEquals(lookup6(table, "fd00:1:0:5::a"), 3);
  assertEquals(lookup6(table, "fd00:1:0:6::9"), 2);
  assertEquals(lookup6(table, "fdff::1"), 1);
  assertEquals(lookup6(table, "2001:db8::1"), undefined);
  table.add("::/0", 0);
  assertEquals(lookup6(table, "2001:db8::1"), 0);
});

Deno.test("PrefixTable keeps IPv4 and IPv6 apart", () => {
  const table = new PrefixTable<string>();
  table.add("0.0.0.0/0", "v4");
  assertEquals(lookup6(table, "::"), undefined);
  table.add("::/0", "v6");
  table.delete("0.0.0.0/0");
  assertEquals(table.lookup4(0), undefined);
  assertEquals(lookup6(table, "::"), "v6");
  // ::a08:1 has the bits of 10.8.0.1 at its end, and nothing to do with it.
  table.add("10.8.0.1/32", "v4 host");
  assertEquals(lookup6(table, "::a08:1"), "v6");
});

Deno.test("PrefixTable.add() of a network already there replaces its value", () => {
  const table = new PrefixTable<string>();
  table.add("10.9.0.0/24", "first");
  table.add("10.9.0.0/24", "second");
  assertEquals(table.size, 1);
  assertEquals(table.get("10.9.0.0/24"), "second");
  assertEquals(table.lookup4(parseIPv4("10.9.0.3")), "second");
});

Deno.test("PrefixTable.get() is an exact match, not the longest one", () => {
  const table = new PrefixTable<string>();
  table.add("10.0.0.0/8", "wide");
  assertEquals(table.get("10.0.0.0/8"), "wide");
  assertEquals(table.get("10.1.0.0/16"), undefined);
  assertEquals(table.get("0.0.0.0/0"), undefined, "a node on the way holds no route");
  assertEquals(table.get("fd00::/8"), undefined);
});

Deno.test("PrefixTable.delete() removes one network, the shorter ones then match, an absent one is a no-op", () => {
  const table = new PrefixTable<string>();
  table.add("192.168.0.0/16", "site");
  table.add("192.168.60.0/24", "branch");
  table.delete("192.168.60.0/24");
  assertEquals(table.lookup4(parseIPv4("192.168.60.1")), "site");
  assertEquals(table.size, 1);
  table.delete("192.168.60.0/24");
  table.delete("192.168.0.0/17"); // on the path of a route, holding none
  table.delete("172.16.0.0/12"); // off every path
  table.delete("fd00::/8");
  assertEquals(table.size, 1);
  assertEquals(table.lookup4(parseIPv4("192.168.60.1")), "site");
  // A deleted longer route leaves its shorter parent; deleting the parent leaves the child.
  table.add("192.168.60.0/24", "branch");
  table.delete("192.168.0.0/16");
  assertEquals(table.lookup4(parseIPv4("192.168.60.1")), "branch");
  assertEquals(table.lookup4(parseIPv4("192.168.61.1")), undefined);
});

Deno.test("PrefixTable refuses what is not a canonical CIDR, saying what to write", () => {
  const table = new PrefixTable<string>();
  assertThrows(
    () => table.add("10.8.0.5/24", "x"),
    TypeError,
    /^Cannot use route "10\.8\.0\.5\/24": host bits are set; write "10\.8\.0\.0\/24"$/,
  );
  assertThrows(
    () => table.add("FD00:0::/64", "x"),
    TypeError,
    /^Cannot use route "FD00:0::\/64": it is not in canonical form; write "fd00::\/64"$/,
  );
  assertThrows(() => table.add("10.8.0.0/024", "x"), TypeError, /write "10\.8\.0\.0\/24"$/);
  assertThrows(() => table.add("10.8.0.0", "x"), TypeError, /^Cannot parse CIDR "10\.8\.0\.0"/);
  assertThrows(() => table.add("10.8.0.0/33", "x"), RangeError, /at most 32$/);
  assertThrows(() => table.delete("fd00::1/64"), TypeError, /write "fd00::\/64"$/);
  assertThrows(() => table.get("fd00::/129"), RangeError, /at most 128$/);
  assertEquals(table.size, 0);
});

/** A seeded xorshift32 giving numbers in [0, 2^32). */
function random(seed: number): () => number {
  let state = seed >>> 0 || 1;
  return () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return state >>> 0;
  };
}

interface Route {
  bytes: Uint8Array;
  prefix: number;
  value: number;
}

/** Whether the first `prefix` bits of `a` and `b` agree. */
function samePrefix(a: Uint8Array, b: Uint8Array, prefix: number): boolean {
  for (let bit = 0; bit < prefix; bit++) {
    const mask = 0x80 >> (bit & 7);
    if ((a[bit >> 3]! & mask) !== (b[bit >> 3]! & mask)) return false;
  }
  return true;
}

/** The reference: scan every route, keep the longest that holds `address`. */
function bruteForce(routes: Map<string, Route>, address: Uint8Array): number | undefined {
  let best: Route | undefined;
  for (const route of routes.values()) {
    if (route.bytes.length !== address.length) continue;
    if (!samePrefix(route.bytes, address, route.prefix)) continue;
    if (best === undefined || route.prefix > best.prefix) best = route;
  }
  return best?.value;
}

/** A canonical CIDR and its network bytes from random bits; few leading patterns, so routes nest. */
function randomRoute(
  next: () => number,
  family: 4 | 6,
): { cidr: string; bytes: Uint8Array; prefix: number } {
  const length = family === 4 ? 4 : 16;
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) bytes[i] = next() & (i < 2 ? 0x11 : 0xff);
  const prefix = next() % (8 * length + 1);
  for (let bit = prefix; bit < 8 * length; bit++) bytes[bit >> 3]! &= ~(0x80 >> (bit & 7));
  if (family === 4) {
    return { cidr: `${[...bytes].join(".")}/${prefix}`, bytes, prefix };
  }
  return { cidr: `${formatIPv6(bytes)}/${prefix}`, bytes, prefix };
}

/**
 * A random address: inside `network/prefix` (random host bits) when `network` is given, else
 * near the routes (the same few leading patterns).
 */
function randomAddress(next: () => number, family: 4 | 6, network?: Uint8Array, prefix = 0) {
  const bytes = new Uint8Array(family === 4 ? 4 : 16);
  for (let i = 0; i < bytes.length; i++) bytes[i] = next() & (i < 2 ? 0x11 : 0xff);
  if (network === undefined) return bytes;
  for (let bit = 0; bit < prefix; bit++) {
    const mask = 0x80 >> (bit & 7);
    bytes[bit >> 3] = (bytes[bit >> 3]! & ~mask) | (network[bit >> 3]! & mask);
  }
  return bytes;
}

for (const family of [4, 6] as const) {
  Deno.test(`PrefixTable agrees with a brute-force scan over random IPv${family} adds and deletes (seeded)`, () => {
    const next = random(family === 4 ? 0xc0ffee : 0xbadf00d);
    const table = new PrefixTable<number>();
    const routes = new Map<string, Route>();
    let checked = 0;
    for (let round = 0; round < 2000; round++) {
      const { cidr, bytes, prefix } = randomRoute(next, family);
      if (next() % 3 === 0) {
        table.delete(cidr);
        routes.delete(cidr);
      } else {
        table.add(cidr, round);
        routes.set(cidr, { bytes, prefix, value: round });
      }
      assertEquals(table.size, routes.size, `size after round ${round}`);
      for (let probe = 0; probe < 4; probe++) {
        // Half the probes inside this round's network (added or deleted), half anywhere near.
        const address = probe < 2
          ? randomAddress(next, family, bytes, prefix)
          : randomAddress(next, family);
        const expected = bruteForce(routes, address);
        const got = family === 4
          ? table.lookup4(new DataView(address.buffer).getUint32(0))
          : table.lookup6(address, 0);
        assertEquals(got, expected, `round ${round}: ${address.join(".")}`);
        checked++;
      }
      assertEquals(table.get(cidr), routes.get(cidr)?.value, `get ${cidr}`);
    }
    assertEquals(checked, 8000);
    // Emptied, the table answers nothing.
    for (const cidr of [...routes.keys()]) table.delete(cidr);
    assertEquals(table.size, 0);
    assertEquals(family === 4 ? table.lookup4(0) : table.lookup6(new Uint8Array(16), 0), undefined);
  });
}

Deno.test("PrefixTable.delete() gives its nodes back: add and delete churn does not grow the table", () => {
  const table = new PrefixTable<number>();
  table.add("fd00::/8", 0);
  const before = Deno.memoryUsage().external;
  // 20,000 host routes, each alone at a time: kept nodes would take over 30 MB.
  for (let i = 1; i <= 20_000; i++) {
    const cidr = `fd00::${i.toString(16)}/128`;
    table.add(cidr, i);
    assertEquals(lookup6(table, `fd00::${i.toString(16)}`), i);
    table.delete(cidr);
  }
  const grown = Deno.memoryUsage().external - before;
  assert(grown < 4_000_000, `the node arrays grew by ${grown} bytes`);
  assertEquals(table.size, 1);
  assertEquals(lookup6(table, "fd00::1"), 0);
});
