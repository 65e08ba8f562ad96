/**
 * Runs `HostChanges` calls inside whatever network namespace it is started in (tests start it
 * with `ip netns exec`, so /etc/resolv.conf is that namespace's /etc/netns/NS/resolv.conf)
 * and prints one JSON line, `{ "results": [...] }` with, per call, `{ ok: result }` or
 * `{ error: message }`.
 * A failing call does not stop the later ones. Logs go to stderr.
 *
 * Usage: `host_changes_probe.ts '{"dev": "tun7", "stateDir": "/tmp/x", "hold": false,
 * "calls": [["open"], ["routeToServer", "203.0.113.9"], ["listRoutes", 4], ["undo"]]}'`.
 * Besides the `HostChanges` methods (after `open`) there are `listRoutes` and `routeGet`
 * (Netlink's) and `resolvConf` (the file's text). With `hold`, the probe then waits to be killed, for at most
 * a minute, so that a test can SIGKILL a client that has made its changes.
 *
 * @module
 */

import { Netlink } from "../../ffi/netlink.ts";
import { setupLogging } from "../../mod/log.ts";
import { type DnsSettings, HostChanges } from "../../mod/system/host_changes.ts";

interface Request {
  dev: string;
  stateDir: string;
  hold?: boolean;
  calls: [string, ...unknown[]][];
}

const HOLD_MS = 60_000;

setupLogging("info");
const request = JSON.parse(Deno.args[0] ?? "{}") as Request;
let changes: HostChanges | undefined;
const opened = () => {
  if (changes === undefined) throw new Error("host_changes_probe: open first");
  return changes;
};

const calls: Record<string, (args: unknown[]) => unknown> = {
  open: () => void (changes = HostChanges.open(request.dev, { stateDir: request.stateDir })),
  routeToServer: ([server]) => opened().routeToServer(server as string),
  removeRouteToServer: () => opened().removeRouteToServer(),
  setDns: ([ifname, dns, defaultRoute]) =>
    opened().setDns(ifname as string, dns as DnsSettings, defaultRoute as boolean),
  clearDns: () => opened().clearDns(),
  undo: () => opened().undo(),
  listRoutes: ([family]) => {
    using netlink = Netlink.open();
    return netlink.listRoutes(family as 4 | 6);
  },
  routeGet: ([destination]) => {
    using netlink = Netlink.open();
    return netlink.routeGet(destination as string);
  },
  resolvConf: () => Deno.readTextFileSync("/etc/resolv.conf"),
};

const results = request.calls.map(([method, ...args]) => {
  const call = calls[method];
  if (call === undefined) throw new Error(`host_changes_probe: unknown call "${method}"`);
  try {
    return { ok: call(args) ?? null };
  } catch (error) {
    return { error: (error as Error).message };
  }
});
console.log(JSON.stringify({ results }));
if (request.hold) await new Promise((resolve) => setTimeout(resolve, HOLD_MS));
