/**
 * End-to-end tests of `Netlink` (needs root): the calls run inside throwaway namespaces through
 * tests/helpers/netlink_probe.ts, and `ip -j` checks what the kernel made of them.
 *
 * The device is one end of a veth pair: this kernel has no dummy driver, and TUN devices
 * belong to the TUN binding's tests. The other end (d1) is up so that d0 has a carrier.
 */

import assert from "node:assert/strict";
import { denoScript, Netns, rootTest } from "./_netns.ts";

const PROBE = new URL("./helpers/netlink_probe.ts", import.meta.url).pathname;

interface ProbeError {
  name: string;
  message: string;
  code?: string;
  call?: string;
}

type ProbeResult = { ok: unknown } | { error: ProbeError };

/** Runs Netlink calls (`[method, ...args]`) inside `ns`, in order, and returns their results. */
async function probe(ns: Netns, ...calls: unknown[][]): Promise<ProbeResult[]> {
  const { stdout } = await ns.run(denoScript(PROBE, JSON.stringify(calls)));
  return JSON.parse(stdout) as ProbeResult[];
}

/** The value of a call that must have succeeded. */
function ok<T>(result: ProbeResult | undefined): T {
  assert.ok(
    result !== undefined && "ok" in result,
    `expected success, got ${JSON.stringify(result)}`,
  );
  return result.ok as T;
}

/** The error of a call that must have failed. */
function failed(result: ProbeResult | undefined): ProbeError {
  assert.ok(
    result !== undefined && "error" in result,
    `expected an error, got ${JSON.stringify(result)}`,
  );
  return result.error;
}

/** A namespace with the veth pair d0 (under test, down) and d1 (up); returns d0's index. */
async function withLink(ns: Netns): Promise<number> {
  await ns.run(["ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
  await ns.run(["ip", "link", "set", "d1", "up"]);
  return ok<number>((await probe(ns, ["linkIndex", "d0"]))[0]);
}

async function ipJson<T>(ns: Netns, args: string[]): Promise<T> {
  return JSON.parse((await ns.run(["ip", "-j", ...args])).stdout) as T;
}

interface IpLink {
  ifindex: number;
  ifname: string;
  mtu: number;
  flags: string[];
  addr_info: { family: string; local: string; prefixlen: number; broadcast?: string }[];
}

interface IpRoute {
  dst: string;
  gateway?: string;
  dev: string;
  metric?: number;
}

interface Route {
  destination: string;
  gateway?: string;
  ifindex?: number;
  table: number;
  metric?: number;
}

/** A route in `ip route` words: "192.168.78.0/24 via 10.9.0.2 dev d0 metric 50". */
function routeText(destination: string, gateway: string | undefined, dev: string, metric?: number) {
  return `${destination}${gateway ? ` via ${gateway}` : ""} dev ${dev}${
    metric !== undefined ? ` metric ${metric}` : ""
  }`;
}

/** The main-table routes of one family as `ip -j route` sees them, sorted. */
async function ipRoutes(ns: Netns, family: 4 | 6): Promise<string[]> {
  const routes = await ipJson<IpRoute[]>(ns, [`-${family}`, "route", "show", "table", "main"]);
  const all = family === 4 ? "0.0.0.0/0" : "::/0";
  return routes.map((r) => routeText(r.dst === "default" ? all : r.dst, r.gateway, r.dev, r.metric))
    .sort();
}

/** The same routes as `listRoutes()` returned them, with link names from `ip link`. */
async function netlinkRoutes(ns: Netns, routes: Route[]): Promise<string[]> {
  const links = await ipJson<IpLink[]>(ns, ["link"]);
  const name = (index: number | undefined) =>
    links.find((link) => link.ifindex === index)?.ifname ?? "?";
  assert.ok(routes.every((route) => route.table === 254), "only main-table routes");
  return routes.map((r) => routeText(r.destination, r.gateway, name(r.ifindex), r.metric)).sort();
}

rootTest(
  "Netlink configures link state, MTU, addresses and routes as ip reports them",
  async () => {
    await using ns = await Netns.create("nl");
    const d0 = await withLink(ns);

    const [, , link, , , , , , addresses, routes4, routes6] = await probe(
      ns,
      ["setLinkUp", d0],
      ["setMtu", d0, 1400],
      ["getLink", d0],
      ["addAddress", d0, "10.9.0.1/24"],
      ["addAddress", d0, "fd00:9::1/64"],
      ["addRoute", { destination: "192.168.77.0/24", ifindex: d0 }],
      ["addRoute", { destination: "192.168.78.0/24", gateway: "10.9.0.2", metric: 50 }],
      ["addRoute", { destination: "fd00:77::/64", ifindex: d0 }],
      ["listAddresses", d0],
      ["listRoutes", 4],
      ["listRoutes", 6],
    ).then((results) => results.map(ok));
    assert.deepEqual(link, { index: d0, name: "d0", mtu: 1400, up: true });

    const [ip] = await ipJson<IpLink[]>(ns, ["addr", "show", "dev", "d0"]);
    assert.equal(ip?.mtu, 1400);
    assert.ok(ip?.flags.includes("UP"));
    const inet = ip?.addr_info.find((a) => a.family === "inet");
    assert.deepEqual([inet?.local, inet?.prefixlen, inet?.broadcast], [
      "10.9.0.1",
      24,
      "10.9.0.255",
    ]);
    const ipAddresses = ip?.addr_info.map((a) => `${a.local}/${a.prefixlen}`).sort();
    const ours = (addresses as { address: string; prefix: number; ifindex: number }[])
      .map((a) => `${a.address}/${a.prefix}`).sort();
    assert.deepEqual(ours, ipAddresses);
    assert.ok(ours.includes("10.9.0.1/24") && ours.includes("fd00:9::1/64"), ours.join(", "));

    const v4 = await netlinkRoutes(ns, routes4 as Route[]);
    const v6 = await netlinkRoutes(ns, routes6 as Route[]);
    assert.deepEqual(v4, await ipRoutes(ns, 4));
    assert.deepEqual(v6, await ipRoutes(ns, 6));
    assert.ok(v4.includes("192.168.77.0/24 dev d0"), v4.join(", "));
    assert.ok(v4.includes("192.168.78.0/24 via 10.9.0.2 dev d0 metric 50"), v4.join(", "));
    assert.ok(v6.includes("fd00:77::/64 dev d0 metric 1024"), v6.join(", "));
    const [scoped] = await ipJson<{ scope?: string; protocol: string }[]>(ns, [
      "route",
      "show",
      "192.168.77.0/24",
    ]);
    assert.deepEqual([scoped?.scope, scoped?.protocol], ["link", "static"]);

    const [, , , , , , afterAddresses, afterRoutes4, afterRoutes6, afterLink] = await probe(
      ns,
      ["removeRoute", { destination: "192.168.77.0/24", ifindex: d0 }],
      ["removeRoute", { destination: "192.168.78.0/24", gateway: "10.9.0.2", metric: 50 }],
      ["removeRoute", { destination: "fd00:77::/64", ifindex: d0 }],
      ["removeAddress", d0, "10.9.0.1/24"],
      ["removeAddress", d0, "fd00:9::1/64"],
      ["setLinkDown", d0],
      ["listAddresses", d0],
      ["listRoutes", 4],
      ["listRoutes", 6],
      ["getLink", d0],
    ).then((results) => results.map(ok));
    const left = (afterAddresses as { address: string }[]).map((a) => a.address);
    assert.ok(left.every((address) => address.startsWith("fe80:")), left.join(", "));
    assert.deepEqual(await netlinkRoutes(ns, afterRoutes4 as Route[]), []);
    assert.ok(
      !(await netlinkRoutes(ns, afterRoutes6 as Route[])).some((r) => r.startsWith("fd00:")),
    );
    assert.deepEqual(afterLink, { index: d0, name: "d0", mtu: 1400, up: false });
    assert.deepEqual(await ipRoutes(ns, 4), []);
    assert.ok(!(await ipRoutes(ns, 6)).some((r) => r.startsWith("fd00:")));
    const [ipAfter] = await ipJson<IpLink[]>(ns, ["addr", "show", "dev", "d0"]);
    assert.ok(!ipAfter?.flags.includes("UP"));
    assert.ok(ipAfter?.addr_info.every((a) => a.local.startsWith("fe80:")));
  },
);

rootTest("Netlink errors name the request and carry the kernel's errno", async () => {
  await using ns = await Netns.create("nl");
  const d0 = await withLink(ns);
  const results = await probe(
    ns,
    ["setLinkUp", d0],
    ["addRoute", { destination: "192.168.50.0/24", ifindex: 9999 }],
    ["addAddress", d0, "10.9.0.1/24"],
    ["addAddress", d0, "10.9.0.1/24"],
    ["removeRoute", { destination: "192.168.51.0/24" }],
    ["linkIndex", "nosuchlink"],
    ["addAddress", d0, "10.9.0.1/33"],
  );
  ok(results[0]);

  const missing = failed(results[1]);
  assert.equal(missing.name, "ErrnoError");
  assert.equal(missing.code, "ENODEV");
  assert.equal(missing.call, "RTM_NEWROUTE 192.168.50.0/24 dev 9999");
  assert.match(missing.message, /^RTM_NEWROUTE 192\.168\.50\.0\/24 dev 9999 failed: ENODEV/);

  ok(results[2]);
  const duplicate = failed(results[3]);
  assert.equal(duplicate.code, "EEXIST");
  assert.equal(duplicate.call, `RTM_NEWADDR 10.9.0.1/24 dev ${d0}`);

  assert.equal(failed(results[4]).code, "ESRCH");
  const noLink = failed(results[5]);
  assert.equal(noLink.code, "ENODEV");
  assert.match(noLink.message, /"nosuchlink"/);
  assert.deepEqual(failed(results[6]), {
    name: "TypeError",
    message: 'Cannot parse CIDR "10.9.0.1/33": prefix length must be at most 32',
  });
});

rootTest("Netlink.setLinkNetns() moves a link into another namespace", async () => {
  await using ns = await Netns.create("nl");
  await using target = await Netns.create("nl2");
  const d0 = await withLink(ns);

  const [moved, gone] = await probe(
    ns,
    ["setLinkNetnsPath", d0, `/var/run/netns/${target.name}`],
    ["linkIndex", "d0"],
  );
  ok(moved);
  assert.equal(failed(gone).code, "ENODEV");

  const [there] = await ipJson<IpLink[]>(target, ["link", "show", "d0"]);
  assert.equal(there?.ifname, "d0");
  assert.equal((await ns.run(["ip", "link", "show", "d0"], true)).code, 1);
  const index = ok<number>((await probe(target, ["linkIndex", "d0"]))[0]);
  assert.equal(index, there?.ifindex);
});
