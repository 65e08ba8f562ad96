/**
 * End-to-end tests of `HostChanges` (needs root), each in a namespace standing for a client's
 * host: a veth link d0 (its peer d1 up, for carrier) with 10.77.0.1/24 and fd00:77::1/64 and
 * default routes via 10.77.0.254 and fd00:77::fe, and /etc/netns/NS/resolv.conf as its
 * resolv.conf. The calls run in tests/helpers/host_changes_probe.ts inside the namespace, so
 * that a client can be SIGKILLed and the next one's recovery seen. No packet is sent: the
 * server addresses are documentation ones (RFC 5737, RFC 3849) that only routes name.
 */

import assert from "node:assert/strict";
import { JsonLines, Netns, rootTest } from "./_netns.ts";
import { exitOf, kill } from "./_wait.ts";
import {
  failed,
  namespaceResolvConf,
  ok,
  PROBE,
  probe,
  type ProbeRequest,
  type ProbeResult,
  stateDir,
} from "./_host_changes.ts";
import { denoScript } from "./_netns.ts";

const RTPROT_VPN = 0x76;
const SERVER = "198.51.100.7";
const SERVER6 = "2001:db8:5::7";
const DNS = { servers: ["10.8.0.1"], domains: ["corp.example"] };
const ORIGINAL = "nameserver 192.0.2.53\n";

interface Route {
  destination: string;
  gateway?: string;
  ifindex?: number;
  protocol: number;
}

/** The client host: the link, its addresses and default routes; returns d0's index. */
async function clientHost(ns: Netns): Promise<number> {
  await ns.run(["ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
  await ns.run(["ip", "link", "set", "d1", "up"]);
  await ns.run(["ip", "link", "set", "d0", "up"]);
  await ns.run(["ip", "addr", "add", "10.77.0.1/24", "dev", "d0"]);
  await ns.run(["ip", "addr", "add", "fd00:77::1/64", "dev", "d0", "nodad"]);
  await ns.run(["ip", "route", "add", "default", "via", "10.77.0.254"]);
  await ns.run(["ip", "-6", "route", "add", "default", "via", "fd00:77::fe"]);
  const [link] = JSON.parse((await ns.run(["ip", "-j", "link", "show", "d0"])).stdout);
  return link.ifindex as number;
}

/** The routes of our protocol in `ns`, as Netlink.listRoutes() reports them there. */
async function vpnRoutes(ns: Netns, stateDir: string): Promise<Route[]> {
  const { results } = await probe(ns, {
    dev: "unused",
    stateDir,
    calls: [["listRoutes", 4], ["listRoutes", 6]],
  });
  return results.flatMap((result) => ok<Route[]>(result))
    .filter((route) => route.protocol === RTPROT_VPN);
}

rootTest(
  "routeToServer() adds a host route via the current gateway; undo() removes it",
  async () => {
    await using ns = await Netns.create("hc");
    const d0 = await clientHost(ns);
    using state = stateDir();
    // An admin's host route to a second server: used as it is, and left at undo().
    await ns.run(["ip", "route", "add", "198.51.100.8/32", "via", "10.77.0.253"]);
    // A third whose lookup goes by a policy rule to another table, while the main table has a
    // different route to it: adding ours there fails, and that one is not replaced.
    await ns.run(["ip", "route", "add", "198.51.100.9/32", "via", "10.77.0.252"]);
    await ns.run(["ip", "route", "add", "198.51.100.9/32", "via", "10.77.0.251", "table", "100"]);
    await ns.run(["ip", "rule", "add", "to", "198.51.100.9", "lookup", "100"]);
    const { results } = await probe(ns, {
      dev: "tun7",
      stateDir: state.path,
      calls: [
        ["open"],
        ["routeToServer", SERVER],
        ["listRoutes", 4],
        ["routeGet", SERVER6],
        ["routeToServer", SERVER6],
        ["listRoutes"],
        ["routeToServer", "10.77.0.9"],
        ["routeToServer", "198.51.100.8"],
        ["routeToServer", "198.51.100.9"],
        ["routeToServer", SERVER],
        ["undo"],
        ["listRoutes", 4],
        ["listRoutes", 6],
      ],
    });
    assert.equal(ok(results[1]), `${SERVER}/32 via 10.77.0.254 dev d0 proto ${RTPROT_VPN}`);
    const route4 = ok<Route[]>(results[2]).find((r) => r.destination === `${SERVER}/32`);
    assert.deepEqual(route4, {
      destination: `${SERVER}/32`,
      gateway: "10.77.0.254",
      ifindex: d0,
      table: 254,
      protocol: RTPROT_VPN,
    });
    assert.deepEqual(ok(results[3]), { gateway: "fd00:77::fe", ifindex: d0, source: "fd00:77::1" });
    // Another server address replaces the first route: one host route at a time.
    assert.equal(ok(results[4]), `${SERVER6}/128 via fd00:77::fe dev d0 proto ${RTPROT_VPN}`);
    const routes = ok<Route[]>(results[5]);
    const route6 = routes.find((r) => r.destination === `${SERVER6}/128`);
    assert.deepEqual(
      [route6?.gateway, route6?.ifindex, route6?.protocol],
      ["fd00:77::fe", d0, RTPROT_VPN],
    );
    assert.ok(!routes.some((r) => r.destination === `${SERVER}/32`), "the first one is gone");
    assert.equal(ok(results[6]), null, "a server on the link's own network needs no route");
    assert.equal(
      ok(results[7]),
      "198.51.100.8/32 via 10.77.0.253 dev d0 proto 118 (there already, of proto 3: kept)",
    );
    assert.equal(
      failed(results[8]),
      "Cannot add the host route 198.51.100.9/32 via 10.77.0.251 dev d0 proto 118: a route to " +
        `198.51.100.9/32 exists already (via 10.77.0.252 dev ${d0}) and is not replaced`,
    );
    ok(results[9]);
    ok(results[10]);
    const left = [...ok<Route[]>(results[11]), ...ok<Route[]>(results[12])];
    assert.deepEqual(left.filter((r) => r.protocol === RTPROT_VPN), [], "undo() removed ours");
    const admins = left.filter((r) => r.destination.startsWith("198.51.100."));
    assert.deepEqual(admins.map((r) => `${r.destination} via ${r.gateway}`).sort(), [
      "198.51.100.8/32 via 10.77.0.253",
      "198.51.100.9/32 via 10.77.0.252",
    ], "the admin's routes stay");
  },
);

/** Starts a client (the probe with `hold`) in `ns`; resolves once its calls are done. */
async function startClient(ns: Netns, request: ProbeRequest) {
  // The log is not read here: a pipe nobody reads could fill and block the child.
  const child = ns.spawn(denoScript(PROBE, JSON.stringify({ ...request, hold: true })), {
    stderr: "null",
  });
  const event = await new JsonLines(child.stdout).next((e) => "results" in e, 30_000);
  return { child, results: event.results as ProbeResult[] };
}

rootTest(
  "a SIGKILLed client's host route and resolv.conf are undone by the next open()",
  async () => {
    await using ns = await Netns.create("hc");
    await clientHost(ns);
    using file = namespaceResolvConf(ns, ORIGINAL);
    using state = stateDir();
    const client = await startClient(ns, {
      dev: "tun7",
      stateDir: state.path,
      calls: [["open"], ["routeToServer", SERVER], ["setDns", "tun7", DNS, true]],
    });
    try {
      client.results.forEach((result) => ok(result));
      // While it runs, another client of the same TUN name in this namespace is refused.
      const { results: refused } = await probe(ns, {
        dev: "tun7",
        stateDir: state.path,
        calls: [["open"]],
      });
      assert.match(
        failed(refused[0]),
        new RegExp(`^Another vpn client \\(pid \\d+\\) uses the TUN name "tun7" in this network`),
      );
    } finally {
      kill(client.child);
      await exitOf(client.child, 5000, "the SIGKILLed client");
    }
    // What the kernel does not undo is still there...
    assert.equal((await vpnRoutes(ns, state.path)).length, 1);
    assert.match(Deno.readTextFileSync(file.path), /^# Written by the vpn client of tun7/);
    // ...until the next client of that TUN name starts here.
    const next = await probe(ns, {
      dev: "tun7",
      stateDir: state.path,
      calls: [["open"], ["undo"]],
    });
    next.results.forEach((result) => ok(result));
    assert.deepEqual(await vpnRoutes(ns, state.path), []);
    assert.equal(Deno.readTextFileSync(file.path), ORIGINAL);
    assert.match(
      next.log,
      new RegExp(
        `The vpn client \\d+ of tun7 was killed; removed the host route ${SERVER}/32 via ` +
          `10\\.77\\.0\\.254 dev \\d+ proto 118, put back /etc/resolv\\.conf`,
      ),
    );
    assert.deepEqual([...Deno.readDirSync(state.path)], []);
  },
);

rootTest("open() after a reboot puts resolv.conf back unless it was rewritten since", async () => {
  await using ns = await Netns.create("hc");
  await clientHost(ns);
  using file = namespaceResolvConf(ns, ORIGINAL);
  using state = stateDir();
  const crash = async (calls: unknown[][]) => {
    const client = await startClient(ns, { dev: "tun7", stateDir: state.path, calls });
    kill(client.child);
    await exitOf(client.child, 5000, "the SIGKILLed client");
    client.results.forEach((result) => ok(result));
    // The record as an earlier boot left it.
    const [entry] = [...Deno.readDirSync(state.path)];
    const path = `${state.path}/${entry!.name}`;
    const record = JSON.parse(Deno.readTextFileSync(path));
    Deno.writeTextFileSync(path, JSON.stringify({ ...record, bootId: "an-earlier-boot" }));
  };
  await crash([["open"], ["setDns", "tun7", DNS, false]]);
  const after = await probe(ns, { dev: "tun7", stateDir: state.path, calls: [["open"], ["undo"]] });
  after.results.forEach((result) => ok(result));
  assert.equal(Deno.readTextFileSync(file.path), ORIGINAL);
  assert.match(after.log, /of tun7 ran before the last boot; put back \/etc\/resolv\.conf/);

  await crash([["open"], ["setDns", "tun7", DNS, false]]);
  const rewritten = "# NetworkManager\nnameserver 192.0.2.99\n";
  Deno.writeTextFileSync(file.path, rewritten);
  const again = await probe(ns, { dev: "tun7", stateDir: state.path, calls: [["open"], ["undo"]] });
  again.results.forEach((result) => ok(result));
  assert.equal(Deno.readTextFileSync(file.path), rewritten, "someone else's file stays");
  assert.match(again.log, /\/etc\/resolv\.conf changed since the vpn client \d+ of tun7 wrote it/);
});
