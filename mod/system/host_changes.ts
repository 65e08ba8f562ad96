/**
 * What a Linux client changes outside its TUN, and how it is undone: the host route to the
 * server (so that the tunnel's own packets keep their old path once the default route goes
 * into the tunnel) and DNS (systemd-resolved or /etc/resolv.conf, see `dns.ts`).
 *
 * Each change is written to a state record before it is made: one JSON file per TUN name and
 * network namespace in the state directory (default /var/lib/vpn/client), replaced atomically.
 * The undo on exit reads nothing but that record. After SIGKILL no code runs: the TUN goes with
 * the process and the kernel removes every route through it (the split default too), but the
 * host route (through the old gateway's link) and a replaced /etc/resolv.conf stay until the
 * next start of a client of the same TUN name in the same network namespace, whose
 * {@linkcode HostChanges.open} finds the record of a process that is gone and undoes both. A
 * record of an earlier boot only has its resolv.conf put back: its routes went with the boot.
 *
 * @module
 */

import { cString, ErrnoError, libc } from "../../ffi/libc.ts";
import { Netlink } from "../../ffi/netlink.ts";
import {
  formatIpAddress,
  parseIpAddress,
  type RouteSpec,
  RTPROT_VPN,
} from "../../ffi/netlink_message.ts";
import { log } from "../log.ts";
import {
  backupResolvConf,
  checkDns,
  type DnsSettings,
  namespaceResolvConf,
  RESOLV_CONF,
  type ResolvConfBackup,
  resolvConfContent,
  resolvectl,
  resolvectlCommands,
  resolvedRuns,
  restoreResolvConf,
  writeResolvConf,
} from "./dns.ts";

export type { DnsSettings };

/** Where the records are kept unless the caller says otherwise. */
export const DEFAULT_STATE_DIR = "/var/lib/vpn/client";
/** A record is small (a route and at most one resolv.conf); anything larger is not ours. */
const MAX_RECORD_BYTES = 256 * 1024;

/** How DNS was applied, and what undoes it. */
type DnsRecord =
  | { mode: "resolved"; ifname: string }
  | { mode: "file"; path: string; written: string; backup: ResolvConfBackup };

/** The state record of one client: who wrote it, where, and what it changed. */
interface StateRecord {
  dev: string;
  pid: number;
  /** /proc/sys/kernel/random/boot_id: a record of an earlier boot has no routes left. */
  bootId: string;
  /** The inode of /proc/self/ns/net: which network namespace the changes are in. */
  netns: number;
  /** True when that is PID 1's namespace (the system's, where systemd-resolved serves). */
  initNetns: boolean;
  hostRoute?: RouteSpec;
  dns?: DnsRecord;
}

/** Options of {@linkcode HostChanges.open}. */
export interface HostChangesOptions {
  /** The directory of the state records; created with mode 0700. Default /var/lib/vpn/client. */
  stateDir?: string;
}

/**
 * The changes one client makes to its host outside the TUN, recorded so that they are undone
 * on exit, or after a crash at the next start.
 *
 * @example
 * ```ts ignore
 * const changes = HostChanges.open("tun0");
 * try {
 *   changes.routeToServer("203.0.113.7");
 *   changes.setDns("tun0", { servers: ["10.8.0.1"], domains: ["corp.example"] }, true);
 * } finally {
 *   changes.undo();
 * }
 * ```
 */
export class HostChanges {
  readonly #path: string;
  readonly #record: StateRecord;
  #done = false;

  private constructor(path: string, record: StateRecord) {
    this.#path = path;
    this.#record = record;
  }

  /**
   * Opens the record of client `dev` (TUN name) and first undoes what a killed client of the
   * same dev in this network namespace left behind (host routes, DNS).
   *
   * @throws {Error} when a live process holds the record (another vpn client uses this TUN
   * name here), or when what a killed client left cannot be undone.
   */
  static open(dev: string, options: HostChangesOptions = {}): HostChanges {
    if (!/^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,14}$/.test(dev)) {
      throw new TypeError(
        `TUN name "${dev}" is not an interface name (1 to 15 letters, digits, "_", "-" or ".")`,
      );
    }
    const stateDir = options.stateDir ?? DEFAULT_STATE_DIR;
    Deno.mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    Deno.chmodSync(stateDir, 0o700);
    const netns = namespaceInode("/proc/self/ns/net");
    const record: StateRecord = {
      dev,
      pid: Deno.pid,
      bootId: Deno.readTextFileSync("/proc/sys/kernel/random/boot_id").trim(),
      netns,
      initNetns: isInitNamespace(netns),
    };
    const path = `${stateDir}/${dev}@netns-${netns}.json`;
    const left = readRecord(path);
    if (left !== undefined) {
      const sameBoot = left.bootId === record.bootId;
      if (sameBoot && (left.pid === Deno.pid || processExists(left.pid))) {
        throw new Error(
          `Another vpn client (pid ${left.pid}) uses the TUN name "${dev}" in this network ` +
            `namespace (its record is ${path}); stop it first, or give this client another dev`,
        );
      }
      recover(path, left, sameBoot);
    }
    const changes = new HostChanges(path, record);
    changes.#save();
    return changes;
  }

  /**
   * Adds a host route to `server` (IP literal) via the gateway the kernel uses for it now;
   * recorded; returns a description for logs, or undefined when the server is on-link.
   *
   * @throws {Error} saying what failed; nothing is left recorded then.
   */
  routeToServer(server: string): string | undefined {
    this.#live();
    const address = parseIpAddress(server);
    // In the kernel's text form, as listRoutes() gives it back: "2001:DB8::07" is "2001:db8::7".
    const destination = `${formatIpAddress(address.bytes)}/${address.bytes.length * 8}`;
    if (this.#record.hostRoute?.destination === destination) {
      return `${describe(this.#record.hostRoute)} (kept)`;
    }
    this.removeRouteToServer();
    using netlink = Netlink.open();
    const lookup = netlink.routeGet(server);
    const tun = libc().if_nametoindex(cString(this.#record.dev));
    if (tun !== 0 && lookup.ifindex === tun) {
      throw new Error(
        `Cannot add a host route to the server ${server}: the kernel sends it through ` +
          `${this.#record.dev} itself; the full-tunnel routes must go first`,
      );
    }
    if (lookup.gateway === undefined) return undefined;
    const route: RouteSpec = {
      destination,
      gateway: lookup.gateway,
      ifindex: lookup.ifindex,
      protocol: RTPROT_VPN,
    };
    const ifname = netlink.getLink(lookup.ifindex).name;
    const text = `${destination} via ${lookup.gateway} dev ${ifname} proto ${RTPROT_VPN}`;
    this.#record.hostRoute = route;
    this.#save();
    try {
      netlink.addRoute(route);
      return text;
    } catch (error) {
      if (!(error instanceof ErrnoError && error.code === "EEXIST")) {
        this.#forgetRoute();
        throw new Error(`Cannot add the host route ${text}: ${(error as Error).message}`);
      }
    }
    // A route to the server is there already: ours if it is the one this would add.
    const there = netlink.listRoutes(address.family)
      .filter((r) => r.destination === destination);
    const same = there.find((r) => r.gateway === route.gateway && r.ifindex === route.ifindex);
    if (same?.protocol === RTPROT_VPN) return `${text} (there already: left by a vpn client)`;
    this.#forgetRoute();
    if (same !== undefined) return `${text} (there already, of proto ${same.protocol}: kept)`;
    const other = there.map((r) => `via ${r.gateway ?? "(on-link)"} dev ${r.ifindex}`).join(", ");
    throw new Error(
      `Cannot add the host route ${text}: a route to ${destination} exists already ` +
        `(${other}) and is not replaced`,
    );
  }

  /** Removes the host route to the server, if one is recorded. */
  removeRouteToServer(): void {
    this.#live();
    const route = this.#record.hostRoute;
    if (route === undefined) return;
    using netlink = Netlink.open();
    removeRoute(netlink, route);
    this.#forgetRoute();
  }

  /**
   * Applies DNS for link `ifname`: systemd-resolved when it runs, else /etc/resolv.conf with a
   * backup; `defaultRoute` = all names go to these servers (full tunnel). Recorded. Returns
   * how, for the log.
   *
   * @throws {Error} saying what failed; what was applied is undone then.
   */
  setDns(ifname: string, dns: DnsSettings, defaultRoute: boolean): string {
    this.#live();
    checkDns(dns);
    this.clearDns();
    const servers = dns.servers.join(" ");
    const domains = dns.domains.length > 0 ? `, domains ${dns.domains.join(" ")}` : "";
    // resolved manages the links of its own namespace: a client in another one uses its file.
    if (this.#record.initNetns && resolvedRuns()) {
      this.#record.dns = { mode: "resolved", ifname };
      this.#save();
      try {
        for (const args of resolvectlCommands(ifname, dns, defaultRoute)) resolvectl(args);
      } catch (error) {
        this.#try(() => this.clearDns());
        throw error;
      }
      const scope = defaultRoute ? "all names" : "names under its domains";
      return `systemd-resolved: ${ifname} has DNS ${servers}${domains}, for ${scope}`;
    }
    // In another namespace, only the file `ip netns exec` mounted for it, written in place.
    const path = this.#record.initNetns ? RESOLV_CONF : namespaceResolvConf();
    const backup = backupResolvConf(path);
    const written = resolvConfContent(this.#record.dev, dns);
    this.#record.dns = { mode: "file", path, written, backup };
    this.#save();
    try {
      writeResolvConf(path, written, backup);
    } catch (error) {
      delete this.#record.dns;
      this.#save();
      throw new Error(`Cannot write ${path}: ${(error as Error).message}`);
    }
    return `${path} replaced (the old one comes back on exit): DNS ${servers}${domains}`;
  }

  /** Undoes {@linkcode HostChanges.setDns}, if it applied anything. */
  clearDns(): void {
    this.#live();
    const dns = this.#record.dns;
    if (dns === undefined) return;
    undoDns(dns, this.#record);
    delete this.#record.dns;
    this.#save();
  }

  /**
   * Undoes everything recorded; idempotent. Called on exit. Where a part fails, the others are
   * still undone and the record is kept, for the next start to try again.
   *
   * @throws {Error} naming every part that failed.
   */
  undo(): void {
    if (this.#done) return;
    const errors = [
      this.#try(() => this.removeRouteToServer()),
      this.#try(() => this.clearDns()),
    ].filter((error) => error !== undefined);
    if (errors.length > 0) {
      throw new Error(`Cannot undo the host changes of ${this.#record.dev}: ${errors.join("; ")}`);
    }
    try {
      Deno.removeSync(this.#path);
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
    this.#done = true;
  }

  #try(part: () => void): string | undefined {
    try {
      part();
      return undefined;
    } catch (error) {
      return (error as Error).message;
    }
  }

  #forgetRoute(): void {
    delete this.#record.hostRoute;
    this.#save();
  }

  #live(): void {
    if (this.#done) throw new Error(`The host changes of ${this.#record.dev} were undone already`);
  }

  /** Writes the record to a temporary file, flushes it and renames it over the old one. */
  #save(): void {
    const temporary = `${this.#path}.tmp`;
    const options = { write: true, create: true, truncate: true, mode: 0o600 };
    {
      using file = Deno.openSync(temporary, options);
      const bytes = new TextEncoder().encode(JSON.stringify(this.#record));
      for (let at = 0; at < bytes.length;) at += file.writeSync(bytes.subarray(at));
      // Flushed before the rename: after a power cut the record is the old one or the new one.
      file.syncSync();
    }
    Deno.renameSync(temporary, this.#path);
  }
}

/** The inode of a namespace file: equal inodes, same namespace. */
function namespaceInode(path: string): number {
  const inode = Deno.statSync(path).ino;
  if (inode === null) throw new Error(`stat(${path}) gave no inode`);
  return inode;
}

function isInitNamespace(netns: number): boolean {
  try {
    return namespaceInode("/proc/1/ns/net") === netns;
  } catch {
    // Without the right to look at PID 1 this is not the system's own client.
    return false;
  }
}

function processExists(pid: number): boolean {
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}

/** The record at `path`, or undefined when there is none. */
function readRecord(path: string): StateRecord | undefined {
  let bytes: Uint8Array;
  try {
    bytes = Deno.readFileSync(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return undefined;
    throw error;
  }
  const fix = `remove it if no vpn client of that TUN name runs`;
  if (bytes.length > MAX_RECORD_BYTES) {
    throw new Error(`The host-changes record ${path} has ${bytes.length} bytes; ${fix}`);
  }
  let record: StateRecord;
  try {
    record = JSON.parse(new TextDecoder().decode(bytes));
  } catch (error) {
    throw new Error(`The host-changes record ${path} is not JSON (${error}); ${fix}`);
  }
  if (typeof record?.pid !== "number" || typeof record.bootId !== "string") {
    throw new Error(`The host-changes record ${path} has no pid and boot id; ${fix}`);
  }
  return record;
}

/** Undoes what the killed client of `record` left, then removes the record. */
function recover(path: string, record: StateRecord, sameBoot: boolean): void {
  const logger = log("client");
  const done: string[] = [];
  if (record.hostRoute !== undefined && sameBoot) {
    using netlink = Netlink.open();
    removeRoute(netlink, record.hostRoute);
    done.push(`removed the host route ${describe(record.hostRoute)}`);
  }
  if (record.dns !== undefined) {
    const restored = undoDns(record.dns, record);
    if (record.dns.mode === "resolved") {
      done.push(`systemd-resolved dropped the DNS of ${record.dns.ifname} with the link`);
    } else if (restored) {
      done.push(`put back ${record.dns.path}`);
    }
  }
  Deno.removeSync(path);
  const when = sameBoot ? "was killed" : "ran before the last boot";
  logger.warn("The vpn client {pid} of {dev} {when}; {what}", {
    pid: record.pid,
    dev: record.dev,
    when,
    what: done.length > 0 ? done.join(", ") : "it left nothing to undo",
  });
}

/** Removes `route`; one that is gone already (with its link, or by hand) is fine. */
function removeRoute(netlink: Netlink, route: RouteSpec): void {
  try {
    netlink.removeRoute(route);
  } catch (error) {
    if (error instanceof ErrnoError && (error.code === "ESRCH" || error.code === "ENODEV")) return;
    throw new Error(`Cannot remove the host route ${describe(route)}: ${(error as Error).message}`);
  }
}

/**
 * Undoes `dns`; returns false when resolv.conf was rewritten by someone else since and is left
 * as it is (logged), or when resolved had nothing left to revert.
 */
function undoDns(dns: DnsRecord, record: StateRecord): boolean {
  if (dns.mode === "resolved") {
    // resolved forgets a link that went away: only a link still there has settings to drop.
    if (libc().if_nametoindex(cString(dns.ifname)) === 0) return false;
    resolvectl(["revert", dns.ifname]);
    return true;
  }
  if (restoreResolvConf(dns.path, dns.written, dns.backup)) return true;
  log("client").warn(
    "{path} changed since the vpn client {pid} of {dev} wrote it; it is left as it is now",
    { path: dns.path, pid: record.pid, dev: record.dev },
  );
  return false;
}

function describe(route: RouteSpec): string {
  return `${route.destination} via ${route.gateway} dev ${route.ifindex} proto ${route.protocol}`;
}
