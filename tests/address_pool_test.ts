import { AddressPool } from "../mod/core/address_pool.ts";
import { assertEquals, assertThrows } from "./_assert.ts";

Deno.test("AddressPool describes its subnet, server address and capacity", () => {
  const pool = new AddressPool("10.8.0.0/24");
  assertEquals(pool.subnet, "10.8.0.0/24");
  assertEquals(pool.serverAddress, "10.8.0.1");
  assertEquals(pool.prefix, 24);
  assertEquals(pool.netmask, "255.255.255.0");
  assertEquals(pool.size, 253);
  assertEquals(pool.inUse, 0);
});

Deno.test("AddressPool.allocate() returns the lowest free address", () => {
  const pool = new AddressPool("10.8.0.0/24");
  assertEquals(pool.allocate("alice"), "10.8.0.2");
  assertEquals(pool.allocate("bob"), "10.8.0.3");
  assertEquals(pool.allocate("carol"), "10.8.0.4");
  assertEquals(pool.inUse, 3);
});

Deno.test("AddressPool.release() frees an address for the next allocation", () => {
  const pool = new AddressPool("10.8.0.0/24");
  pool.allocate("alice");
  pool.allocate("bob");
  pool.allocate("carol");
  assertEquals(pool.release("10.8.0.3"), true);
  assertEquals(pool.release("10.8.0.3"), false);
  assertEquals(pool.ownerOf("10.8.0.3"), undefined);
  assertEquals(pool.addressOf("bob"), undefined);
  assertEquals(pool.inUse, 2);
  assertEquals(pool.allocate("dave"), "10.8.0.3");
  assertEquals(pool.allocate("erin"), "10.8.0.5");
});

Deno.test("AddressPool.release() ignores addresses the pool does not hand out", () => {
  const pool = new AddressPool("10.8.0.0/24");
  pool.allocate("alice");
  for (const address of ["10.8.0.0", "10.8.0.1", "10.8.0.255", "10.9.0.2", "nonsense"]) {
    assertEquals(pool.release(address), false);
  }
  assertEquals(pool.inUse, 1);
});

Deno.test("AddressPool.allocate() gives an owner that holds an address that same address", () => {
  const pool = new AddressPool("10.8.0.0/24");
  assertEquals(pool.allocate("alice"), "10.8.0.2");
  assertEquals(pool.allocate("bob"), "10.8.0.3");
  assertEquals(pool.allocate("alice"), "10.8.0.2");
  assertEquals(pool.allocate("alice", "10.8.0.50"), "10.8.0.2");
  assertEquals(pool.inUse, 2);
});

Deno.test("AddressPool.allocate() honours a free preferred address", () => {
  const pool = new AddressPool("10.8.0.0/24");
  assertEquals(pool.allocate("alice", "10.8.0.50"), "10.8.0.50");
  assertEquals(pool.ownerOf("10.8.0.50"), "alice");
  assertEquals(pool.addressOf("alice"), "10.8.0.50");
  assertEquals(pool.allocate("bob"), "10.8.0.2");
  assertEquals(pool.allocate("carol", "10.8.0.254"), "10.8.0.254");
});

Deno.test("AddressPool.allocate() ignores a preferred address that is taken or not a client's", () => {
  const pool = new AddressPool("10.8.0.0/24");
  pool.allocate("alice", "10.8.0.50");
  assertEquals(pool.allocate("bob", "10.8.0.50"), "10.8.0.2");
  assertEquals(pool.allocate("carol", "10.8.0.1"), "10.8.0.3");
  assertEquals(pool.allocate("dave", "10.8.0.0"), "10.8.0.4");
  assertEquals(pool.allocate("erin", "10.8.0.255"), "10.8.0.5");
  assertEquals(pool.allocate("frank", "10.8.1.7"), "10.8.0.6");
  assertEquals(pool.allocate("grace", "not an address"), "10.8.0.7");
});

Deno.test("AddressPool with a /30 gives exactly one client address", () => {
  const pool = new AddressPool("192.168.7.4/30");
  assertEquals(pool.serverAddress, "192.168.7.5");
  assertEquals(pool.size, 1);
  assertEquals(pool.allocate("alice"), "192.168.7.6");
  assertEquals(pool.allocate("bob"), undefined);
  assertEquals(pool.allocate("bob", "192.168.7.7"), undefined);
});

Deno.test("AddressPool.allocate() returns undefined when exhausted, and recovers on release", () => {
  const pool = new AddressPool("10.8.0.0/26");
  const given = new Set<string>();
  for (let i = 0; i < pool.size; i++) given.add(pool.allocate(`client${i}`)!);
  assertEquals(given.size, 61);
  assertEquals([...given].at(-1), "10.8.0.62");
  assertEquals(pool.allocate("late"), undefined);
  pool.release("10.8.0.33");
  assertEquals(pool.allocate("late"), "10.8.0.33");
  assertEquals(pool.allocate("later"), undefined);
});

Deno.test("AddressPool over a /16 hands out all 65533 client addresses in order", () => {
  const pool = new AddressPool("10.8.0.0/16");
  assertEquals(pool.size, 65533);
  assertEquals(pool.netmask, "255.255.0.0");
  assertEquals(pool.allocate("first"), "10.8.0.2");
  for (let i = 1; i < pool.size - 1; i++) pool.allocate(`client${i}`);
  assertEquals(pool.allocate("last"), "10.8.255.254");
  assertEquals(pool.allocate("one too many"), undefined);
  assertEquals(pool.ownerOf("10.8.1.0"), "client254");
  pool.release("10.8.200.17");
  pool.release("10.8.3.3");
  assertEquals(pool.allocate("again"), "10.8.3.3");
  assertEquals(pool.allocate("and again"), "10.8.200.17");
});

Deno.test("AddressPool refuses subnets it cannot serve", () => {
  assertThrows(() => new AddressPool("10.8.0.0/31"), RangeError, /at most 30 \(a \/30 has two/);
  assertThrows(() => new AddressPool("10.8.0.0/32"), RangeError, /at most 30/);
  assertThrows(() => new AddressPool("10.0.0.0/7"), RangeError, /at least 8/);
  assertThrows(
    () => new AddressPool("10.8.0.1/24"),
    RangeError,
    /^Cannot use subnet "10\.8\.0\.1\/24": host bits are set \(did you mean "10\.8\.0\.0\/24"\?\)$/,
  );
  assertThrows(() => new AddressPool("fd00::/64"), TypeError, /must be IPv4/);
  assertThrows(() => new AddressPool("10.8.0.0"), TypeError, /Cannot parse CIDR/);
});

Deno.test("AddressPool.allocate() gives a returning owner its last address when asked", () => {
  const pool = new AddressPool("10.8.0.0/24");
  pool.allocate("alice");
  assertEquals(pool.allocate("bob"), "10.8.0.3");
  pool.allocate("carol");
  pool.release("10.8.0.2");
  pool.release("10.8.0.3");
  // Bob comes back first and asks for his .3, although .2 is the lowest free address.
  assertEquals(pool.allocate("bob", "10.8.0.3"), "10.8.0.3");
});

Deno.test("AddressPool.allocate() never gives an owner another owner's former address it asks for", () => {
  const pool = new AddressPool("10.8.0.0/29");
  assertEquals(pool.allocate("alice"), "10.8.0.2");
  // Carol asks back the .6 she had before a restart, then is away (reconnecting): .6 is hers.
  assertEquals(pool.allocate("carol", "10.8.0.6"), "10.8.0.6");
  pool.release("10.8.0.6");
  assertEquals(pool.allocate("mallory", "10.8.0.6"), "10.8.0.3");
  assertEquals(pool.allocate("carol", "10.8.0.6"), "10.8.0.6");
  // Once another owner has held an address, the earlier one can no longer ask for it.
  pool.release("10.8.0.6");
  assertEquals(pool.allocate("bob"), "10.8.0.4");
  assertEquals(pool.allocate("dave"), "10.8.0.5");
  assertEquals(pool.allocate("erin"), "10.8.0.6");
  pool.release("10.8.0.5");
  pool.release("10.8.0.6");
  assertEquals(pool.allocate("carol", "10.8.0.6"), "10.8.0.5");
  assertEquals(pool.allocate("erin", "10.8.0.6"), "10.8.0.6");
});

Deno.test("AddressPool.allocate(): an address is bound to one last owner, an owner to one address", () => {
  const pool = new AddressPool("10.8.0.0/24");
  assertEquals(pool.allocate("alice", "10.8.0.9"), "10.8.0.9");
  pool.release("10.8.0.9");
  assertEquals(pool.allocate("alice", "10.8.0.20"), "10.8.0.20");
  pool.release("10.8.0.20");
  // Alice moved on to .20: .9 is nobody's now, and .20 hers.
  assertEquals(pool.allocate("bob", "10.8.0.9"), "10.8.0.9");
  assertEquals(pool.allocate("carol", "10.8.0.20"), "10.8.0.2");
  assertEquals(pool.allocate("alice", "10.8.0.20"), "10.8.0.20");
});

Deno.test("AddressPool.allocate() gives a returning owner its last address without asking, while it is free", () => {
  const pool = new AddressPool("10.8.0.0/24");
  pool.allocate("alice");
  pool.allocate("bob");
  pool.release("10.8.0.2");
  assertEquals(pool.allocate("alice"), "10.8.0.2");
  pool.release("10.8.0.2");
  assertEquals(pool.allocate("carol"), "10.8.0.2", "a newcomer takes the lowest free one");
  assertEquals(pool.allocate("alice"), "10.8.0.4", "taken: alice gets the lowest free");
});

Deno.test("AddressPool.restore() binds a lease without holding it; it refuses another owner's or a foreign address", () => {
  const pool = new AddressPool("10.8.0.0/24");
  assertEquals(pool.restore("alice", "10.8.0.50"), true);
  assertEquals(pool.inUse, 0);
  assertEquals(pool.restore("bob", "10.8.0.50"), false, "bound to alice");
  assertEquals(pool.restore("bob", "10.9.0.5"), false, "not in the subnet");
  assertEquals(pool.restore("bob", "10.8.0.1"), false, "the server's");
  assertEquals(
    pool.allocate("bob", "10.8.0.50"),
    "10.8.0.2",
    "alice's lease is not bob's to ask for",
  );
  assertEquals(pool.allocate("alice"), "10.8.0.50");
  assertEquals(pool.restore("carol", "10.8.0.2"), false, "held");
  assertEquals(
    new Map(pool.lastAddresses()),
    new Map([["alice", "10.8.0.50"], ["bob", "10.8.0.2"]]),
  );
});

Deno.test("AddressPool.setFixed(): a fixed address goes to its owner only, also when free", () => {
  const pool = new AddressPool("10.8.0.0/29");
  pool.setFixed(new Map([["branch", "10.8.0.2"]]));
  assertEquals(pool.allocate("alice"), "10.8.0.3", "the free fixed address is skipped");
  assertEquals(pool.allocate("bob", "10.8.0.2"), "10.8.0.4", "asking for it does not help");
  assertEquals(pool.allocate("branch"), "10.8.0.2");
  pool.release("10.8.0.2");
  assertEquals(pool.allocate("carol"), "10.8.0.5", "released, it stays kept for its owner");
  assertEquals(pool.hostNumber("10.8.0.5"), 5);
  assertEquals(pool.restore("dave", "10.8.0.2"), false, "a lease cannot take it either");
});

Deno.test("AddressPool.setFixed(): a new fixed address held by another stays theirs until released", () => {
  const pool = new AddressPool("10.8.0.0/29");
  assertEquals(pool.allocate("alice"), "10.8.0.2");
  pool.setFixed(new Map([["branch", "10.8.0.2"]]));
  assertEquals(pool.allocate("branch"), "10.8.0.3", "held by alice: branch gets another this time");
  pool.release("10.8.0.3");
  pool.release("10.8.0.2");
  assertEquals(pool.allocate("alice"), "10.8.0.3", "alice's old address is branch's now");
  assertEquals(pool.allocate("branch"), "10.8.0.2");
  pool.setFixed(new Map());
  pool.release("10.8.0.2");
  assertEquals(pool.allocate("erin"), "10.8.0.2", "no longer fixed: free for anyone");
});
