import { assert, assertEquals, assertMatch, assertThrows } from "./_assert.ts";
import { randomSubnet6, Subnet6 } from "../mod/core/subnet6.ts";

Deno.test("Subnet6 gives the server host number 1 and a client the host number of its IPv4 address", () => {
  const subnet = new Subnet6("fd00:8::/64", 24);
  assertEquals(subnet.serverAddress, "fd00:8::1");
  assertEquals(subnet.address(5), "fd00:8::5");
  assertEquals(subnet.address(0x01020304), "fd00:8::102:304");
  assertEquals(new Subnet6("fd00:8::100/120", 24).address(254), "fd00:8::1fe");
  assert(subnet.contains("fd00:8::ffff:1"));
  assert(!subnet.contains("fd00:9::1"));
  assert(!subnet.contains("10.8.0.1"));
  assert(new Subnet6("fd00:8::100/120", 24).contains("fd00:8::1ff"));
  assert(!new Subnet6("fd00:8::100/120", 24).contains("fd00:8::200"));
});

Deno.test("Subnet6 refuses what a tunnel cannot hand out, naming the rule", () => {
  const refused = (cidr: string, ipv4Prefix = 24) =>
    assertThrows(() => new Subnet6(cidr, ipv4Prefix), RangeError).message;
  assertMatch(refused("fd00:8::/63"), /from \/64 to \/120/);
  assertMatch(refused("ff02::/64"), /multicast/);
  assertMatch(refused("fe80::/64"), /link-local/);
  assertMatch(refused("::/64"), /reserved/);
  assertMatch(refused("fd00:8::1/64"), /host bits are set/);
  assertMatch(refused("fd00:8::/120", 16), /fewer addresses than the IPv4 subnet \(\/16\)/);
  assertEquals(new Subnet6("fd00:8::/112", 16).subnet, "fd00:8::/112");
});

Deno.test("randomSubnet6() is a unique local /64 that Subnet6 takes, different each time", () => {
  const a = randomSubnet6();
  assertMatch(a, /^fd[0-9a-f]{2}:[0-9a-f:]+\/64$/);
  assertEquals(new Subnet6(a, 8).subnet, a);
  assert(a !== randomSubnet6());
});
