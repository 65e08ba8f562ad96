/**
 * Runs `Netlink` calls inside whatever network namespace it is started in (the e2e test starts
 * it with `ip netns exec`) and prints one JSON line: an array with, per call, `{ ok: result }`
 * or `{ error: { name, message, code?, call? } }`. A failing call does not stop the later ones.
 *
 * Usage: `netlink_probe.ts '[["linkIndex", "d0"], ["setMtu", 2, 1400]]'`. Besides the
 * `Netlink` methods there is `["setLinkNetnsPath", ifindex, "/var/run/netns/NAME"]`, which
 * opens the namespace file for `setLinkNetns()` and closes it after.
 *
 * @module
 */

import { O_CLOEXEC } from "../../ffi/constants.ts";
import { check, cString, ErrnoError, libc } from "../../ffi/libc.ts";
import { Netlink, type RouteSpec } from "../../ffi/netlink.ts";

type Call = (netlink: Netlink, args: unknown[]) => unknown;

const int = (value: unknown) => value as number;
const text = (value: unknown) => value as string;

const calls: Record<string, Call> = {
  linkIndex: (n, [name]) => n.linkIndex(text(name)),
  getLink: (n, [ifindex]) => n.getLink(int(ifindex)),
  setLinkUp: (n, [ifindex]) => n.setLinkUp(int(ifindex)),
  setLinkDown: (n, [ifindex]) => n.setLinkDown(int(ifindex)),
  setMtu: (n, [ifindex, mtu]) => n.setMtu(int(ifindex), int(mtu)),
  addAddress: (n, [ifindex, cidr]) => n.addAddress(int(ifindex), text(cidr)),
  removeAddress: (n, [ifindex, cidr]) => n.removeAddress(int(ifindex), text(cidr)),
  addRoute: (n, [route]) => n.addRoute(route as RouteSpec),
  removeRoute: (n, [route]) => n.removeRoute(route as RouteSpec),
  listAddresses: (n, [ifindex]) =>
    n.listAddresses(ifindex === undefined ? undefined : int(ifindex)),
  listRoutes: (n, [family]) => n.listRoutes(family === undefined ? undefined : (family as 4 | 6)),
  setLinkNetnsPath: (n, [ifindex, path]) => {
    // O_RDONLY is 0: a namespace file is only opened to name the namespace.
    const fd = check(`open(${text(path)})`, libc().open(cString(text(path)), O_CLOEXEC));
    try {
      n.setLinkNetns(int(ifindex), fd);
    } finally {
      libc().close(fd);
    }
  },
};

const requests = JSON.parse(Deno.args[0] ?? "[]") as [string, ...unknown[]][];
using netlink = Netlink.open();
const results = requests.map(([method, ...args]) => {
  const call = calls[method];
  if (call === undefined) throw new Error(`netlink_probe: unknown call "${method}"`);
  try {
    return { ok: call(netlink, args) ?? null };
  } catch (error) {
    if (error instanceof ErrnoError) {
      return {
        error: { name: error.name, message: error.message, code: error.code, call: error.call },
      };
    }
    const { name, message } = error as Error;
    return { error: { name, message } };
  }
});
console.log(JSON.stringify(results));
