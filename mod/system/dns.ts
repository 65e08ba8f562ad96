/**
 * DNS for a client's tunnel on Linux, the two ways a system takes it:
 *
 * - systemd-resolved, when it runs and /etc/resolv.conf leads to it: per-link servers and
 *   domains for the TUN, set with `resolvectl`. Its command line is resolved's documented
 *   interface for this (resolvectl(1); the D-Bus API behind it is what it calls), so shelling
 *   out here is the stable way, not a shortcut. resolved forgets a link's settings when the
 *   link goes away, so a killed client leaves nothing behind in resolved.
 * - otherwise /etc/resolv.conf itself: its content is replaced, the old content (or the
 *   symlink, or its absence) is kept by the caller as a backup, and put back on undo only if
 *   the file still holds what was written: someone who rewrote it since (NetworkManager, the
 *   admin) wins.
 *
 * @module
 */

import { parseIpAddress } from "../../ffi/netlink_message.ts";
import { isDomainName, MAX_DNS_DOMAINS, MAX_DNS_SERVERS } from "../config.ts";

/** The DNS settings pushed for a tunnel. */
export interface DnsSettings {
  /** Name servers, IPv4 or IPv6 literals, in order of preference. */
  servers: string[];
  /** Search domains (and, with systemd-resolved, the names routed to these servers). */
  domains: string[];
}

/** glibc's MAXNS: a resolver reads at most this many nameserver lines. */
const RESOLV_CONF_MAX_NAMESERVERS = 3;
/** A resolv.conf larger than this is not a resolver configuration: it is not backed up. */
const MAX_RESOLV_CONF_BYTES = 65_536;
/** How long one resolvectl call may take before it is sent SIGTERM, and SIGKILL after. */
const RESOLVECTL_TIMEOUT_SECONDS = 10;
const RESOLVECTL_KILL_AFTER_SECONDS = 2;

/**
 * Checks `dns` before any of it reaches a command line or a file: a server must be an IP
 * literal and a domain a DNS name (letters, digits, "-" and ".", at most 253 bytes), so that
 * nothing can add a line to resolv.conf or an option to resolvectl.
 *
 * @throws {TypeError} naming the bad entry.
 */
export function checkDns(dns: DnsSettings): void {
  if (dns.servers.length === 0) {
    throw new TypeError("DNS settings have no server: push.dns.servers needs at least one");
  }
  if (dns.servers.length > MAX_DNS_SERVERS || dns.domains.length > MAX_DNS_DOMAINS) {
    throw new TypeError(
      `DNS settings have ${dns.servers.length} servers and ${dns.domains.length} domains; ` +
        `at most ${MAX_DNS_SERVERS} servers and ${MAX_DNS_DOMAINS} domains are taken`,
    );
  }
  for (const server of dns.servers) {
    try {
      parseIpAddress(server);
    } catch (error) {
      throw new TypeError(`DNS server: ${(error as Error).message}`);
    }
  }
  for (const domain of dns.domains) {
    if (!isDomainName(domain)) {
      throw new TypeError(
        `DNS domain "${domain}" is not a DNS name (letters, digits, "-" and ".", at most 253 bytes)`,
      );
    }
  }
}

// ---------------------------------------------------------------------------------------------
// systemd-resolved

/** Where systemd-resolved's files are; tests give fixture paths. */
export interface ResolvedPaths {
  /** resolved's runtime directory, /run/systemd/resolve. */
  runDir: string;
  /** The system's resolver configuration, /etc/resolv.conf. */
  resolvConf: string;
}

const SYSTEM_PATHS: ResolvedPaths = {
  runDir: "/run/systemd/resolve",
  resolvConf: "/etc/resolv.conf",
};

/** resolved's stub listener address, which its stub-resolv.conf names. */
const RESOLVED_STUB = "127.0.0.53";

/**
 * Whether systemd-resolved runs and this system's lookups go through it: its runtime directory
 * holds its varlink socket (io.systemd.Resolve) or its stub-resolv.conf, and /etc/resolv.conf
 * is a symlink into that directory or names the stub listener 127.0.0.53. Where resolved runs
 * but resolv.conf bypasses it, per-link settings would change nothing, so the file is used.
 */
export function resolvedRuns(paths: ResolvedPaths = SYSTEM_PATHS): boolean {
  const exists = (path: string) => {
    try {
      Deno.statSync(path);
      return true;
    } catch {
      return false;
    }
  };
  if (
    !exists(`${paths.runDir}/io.systemd.Resolve`) && !exists(`${paths.runDir}/stub-resolv.conf`)
  ) return false;
  try {
    const target = Deno.realPathSync(paths.resolvConf);
    if (target.startsWith(`${Deno.realPathSync(paths.runDir)}/`)) return true;
    const text = readBounded(paths.resolvConf);
    return text.split("\n").some((line) =>
      line.trim().split(/\s+/).join(" ") === `nameserver ${RESOLVED_STUB}`
    );
  } catch {
    return false;
  }
}

/**
 * The resolvectl command lines (without "resolvectl") that give link `ifname` the servers and
 * domains of `dns`; with `defaultRoute`, the routing domain "~." sends every name to them
 * (full tunnel), and without it only names under the domains do.
 */
export function resolvectlCommands(
  ifname: string,
  dns: DnsSettings,
  defaultRoute: boolean,
): string[][] {
  const domains = defaultRoute ? [...dns.domains, "~."] : dns.domains;
  const commands = [["dns", ifname, ...dns.servers]];
  if (domains.length > 0) commands.push(["domain", ifname, ...domains]);
  commands.push(["default-route", ifname, defaultRoute ? "yes" : "no"]);
  return commands;
}

/**
 * Runs `resolvectl ARGS`, bounded by coreutils' timeout(1): this runs synchronously (the
 * caller's API is synchronous, and the calls are few, at connect and exit), so the wait cannot
 * be bounded from this process's event loop.
 *
 * @throws {Error} with resolvectl's own message when it fails or takes too long.
 */
export function resolvectl(args: string[]): void {
  const command = `resolvectl ${args.join(" ")}`;
  let output: Deno.CommandOutput;
  try {
    output = new Deno.Command("timeout", {
      args: [
        `--kill-after=${RESOLVECTL_KILL_AFTER_SECONDS}`,
        String(RESOLVECTL_TIMEOUT_SECONDS),
        "resolvectl",
        ...args,
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).outputSync();
  } catch (error) {
    throw new Error(`${command}: cannot run timeout(1) from coreutils: ${error}`);
  }
  if (output.success) return;
  const said = new TextDecoder().decode(output.stderr).trim();
  // timeout(1): 124 when the command timed out, 137 when it had to be killed, 127 not found.
  const why = output.code === 124 || output.code === 137
    ? `no answer within ${RESOLVECTL_TIMEOUT_SECONDS} s`
    : output.code === 127
    ? "resolvectl is not installed"
    : `exit code ${output.code}${said ? `: ${said}` : ""}`;
  throw new Error(`${command} failed: ${why}`);
}

// ---------------------------------------------------------------------------------------------
// /etc/resolv.conf

/** What /etc/resolv.conf was before the client replaced it. */
export type ResolvConfBackup =
  | { kind: "file"; content: string }
  | { kind: "symlink"; target: string }
  | { kind: "missing" };

/** The path the client replaces when systemd-resolved does not run. */
export const RESOLV_CONF = "/etc/resolv.conf";

function readBounded(path: string): string {
  const bytes = Deno.readFileSync(path);
  if (bytes.length > MAX_RESOLV_CONF_BYTES) {
    throw new Error(
      `${path} has ${bytes.length} bytes, more than a resolver configuration ` +
        `(${MAX_RESOLV_CONF_BYTES}); it is left alone`,
    );
  }
  return new TextDecoder().decode(bytes);
}

/**
 * The resolv.conf of a network namespace other than the host's: the file `ip netns exec`
 * bind-mounted over `path` (or over the file a symlink at `path` points to) from
 * /etc/netns/NAME/resolv.conf. Without such a mount the file is the host's, shared by every
 * namespace, and is not ours to change.
 *
 * @throws {Error} saying what to create when there is no mount.
 */
export function namespaceResolvConf(
  path: string = RESOLV_CONF,
  mountinfo = "/proc/self/mountinfo",
): string {
  let real = path;
  try {
    real = Deno.realPathSync(path);
  } catch { /* missing: no mount either */ }
  // Field 5 of each line is the mount point, with space, tab, newline and backslash in octal.
  const mounted = Deno.readTextFileSync(mountinfo).split("\n").some((line) =>
    line.split(" ")[4]?.replace(
      /\\([0-7]{3})/g,
      (_, octal) => String.fromCharCode(parseInt(octal, 8)),
    ) ===
      real
  );
  if (!mounted) {
    throw new Error(
      `${path} is the host's: this network namespace has no resolv.conf of its own; create ` +
        `/etc/netns/NAME/resolv.conf for it (ip netns exec mounts it over ${path}), or use --no-dns`,
    );
  }
  return real;
}

/** What `path` is now, to be put back by {@linkcode restoreResolvConf}. */
export function backupResolvConf(path: string = RESOLV_CONF): ResolvConfBackup {
  let info: Deno.FileInfo;
  try {
    info = Deno.lstatSync(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return { kind: "missing" };
    throw error;
  }
  if (info.isSymlink) return { kind: "symlink", target: Deno.readLinkSync(path) };
  if (!info.isFile) throw new Error(`${path} is neither a file nor a symlink; it is left alone`);
  return { kind: "file", content: readBounded(path) };
}

/**
 * The resolv.conf that sends lookups to `dns`: a header naming vpn and TUN `dev`, then
 * `nameserver` lines (glibc reads the first three) and one `search` line.
 */
export function resolvConfContent(dev: string, dns: DnsSettings): string {
  const lines = [
    `# Written by the vpn client of ${dev} (pid ${Deno.pid}); the previous content is`,
    "# put back when it exits, or at its next start after a crash.",
    ...dns.servers.slice(0, RESOLV_CONF_MAX_NAMESERVERS).map((server) => `nameserver ${server}`),
  ];
  if (dns.domains.length > 0) lines.push(`search ${dns.domains.join(" ")}`);
  return `${lines.join("\n")}\n`;
}

/**
 * Makes `path` hold `content`. A regular file is truncated and written in place, never
 * renamed over: under `ip netns exec` /etc/resolv.conf is a bind mount of
 * /etc/netns/NS/resolv.conf, and rename() onto a mount point fails with EBUSY (a reader may
 * see the file half written for a moment; it retries). A symlink (to resolved's or
 * NetworkManager's file) is replaced by a file of its own, atomically by rename, so that the
 * file it points to, which its owner rewrites, is not touched.
 */
export function writeResolvConf(path: string, content: string, backup: ResolvConfBackup): void {
  if (backup.kind === "symlink") {
    const temporary = `${path}.vpn-${Deno.pid}`;
    removeIfThere(temporary);
    Deno.writeTextFileSync(temporary, content, { mode: 0o644 });
    try {
      Deno.renameSync(temporary, path);
    } catch (error) {
      removeIfThere(temporary);
      throw error;
    }
    return;
  }
  Deno.writeTextFileSync(path, content, { mode: 0o644 });
}

/**
 * Puts `backup` back at `path` if it still holds `written`; returns false, changing nothing,
 * when it does not (someone rewrote or replaced it since, and their version stays).
 */
export function restoreResolvConf(
  path: string,
  written: string,
  backup: ResolvConfBackup,
): boolean {
  let current: ResolvConfBackup;
  try {
    current = backupResolvConf(path);
  } catch {
    return false;
  }
  if (current.kind !== "file" || current.content !== written) return false;
  if (backup.kind === "file") {
    Deno.writeTextFileSync(path, backup.content);
  } else if (backup.kind === "symlink") {
    // A symlink cannot be written in place: a new one is renamed over the file.
    const temporary = `${path}.vpn-${Deno.pid}`;
    removeIfThere(temporary);
    Deno.symlinkSync(backup.target, temporary);
    Deno.renameSync(temporary, path);
  } else {
    Deno.removeSync(path);
  }
  return true;
}

/** Removes `path` (a temporary left by a killed process) unless it is not there. */
function removeIfThere(path: string): void {
  try {
    Deno.removeSync(path);
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
}
