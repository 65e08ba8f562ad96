/**
 * `nat: true` on the server: clients' packets that leave through any interface but the
 * tunnel get the server's address (masquerade), and the kernel forwards between the tunnel
 * and the other interfaces. On exit both go back to how they were.
 *
 * The masquerade is one nf_tables table per TUN name, `inet vpn_<tun>` (`ffi/nftables.ts`),
 * so that servers of other TUNs keep theirs and nothing else on the host is touched.
 * Forwarding is the per-namespace sysctl, turned on only where it was off and turned off again
 * only where it is still on: the host's own routing setup wins over ours.
 *
 * @module
 */

import type { ErrnoError } from "../../ffi/libc.ts";
import { natTableName, Nftables, parseSubnet } from "../../ffi/nftables.ts";

/** The sysctl files of forwarding, as `sysctl` names them and where /proc has them. */
const IPV4_FORWARDING = { name: "net.ipv4.ip_forward", path: "/proc/sys/net/ipv4/ip_forward" };
/**
 * Turning this on makes the host a router on every interface, which matters beyond NAT: an
 * interface with `accept_ra` 1 (the default) stops taking IPv6 Router Advertisements, so a
 * server whose own IPv6 address or default route came from SLAAC loses it when the last RA's
 * lifetime runs out. Such a host needs `net.ipv6.conf.<ifname>.accept_ra=2` (accept them even
 * when forwarding) before `nat: true` with a `subnet6`.
 */
const IPV6_FORWARDING = {
  name: "net.ipv6.conf.all.forwarding",
  path: "/proc/sys/net/ipv6/conf/all/forwarding",
};

type Sysctl = typeof IPV4_FORWARDING;

/** errno values that say what to tell the operator. */
const EPERM = 1;
const ENOENT = 2;
const EACCES = 13;
const EPROTONOSUPPORT = 93;
const EOPNOTSUPP = 95;

/**
 * The commands that do by hand what {@linkcode Nat.enable} does, for an operator who keeps
 * `nat: false` or whose server may not change the firewall: one `sysctl` per IP version and
 * the `nft` commands of the same table, quoted for a POSIX shell.
 */
export function natCommands(tunName: string, subnets: readonly string[]): string[] {
  const parsed = subnets.map((subnet) => ({ text: subnet, family: parseSubnet(subnet).family }));
  const table = `inet ${natTableName(tunName)}`;
  const sysctls = [IPV4_FORWARDING, ...parsed.some((s) => s.family === 6) ? [IPV6_FORWARDING] : []];
  return [
    ...sysctls.map((sysctl) => `sysctl -w ${sysctl.name}=1`),
    `nft add table ${table}`,
    `nft 'add chain ${table} postrouting { type nat hook postrouting priority srcnat; policy accept; }'`,
    ...parsed.map(({ text, family }) =>
      `nft 'add rule ${table} postrouting ip${
        family === 6 ? "6" : ""
      } saddr ${text} oifname != "${tunName}" masquerade'`
    ),
  ];
}

/** NAT and forwarding that this process turned on, until {@linkcode Nat.disable}. */
export class Nat {
  /** The nf_tables table, e.g. `vpn_tun0` (family inet). */
  readonly table: string;
  /** True when a table of that name was there before: left by a server that was killed. */
  readonly staleTableRemoved: boolean;
  /** The sysctls this turned from 0 to 1, e.g. `["net.ipv4.ip_forward"]`. */
  readonly forwardingTurnedOn: readonly string[];
  #nftables: Nftables | undefined;
  readonly #changed: Sysctl[];

  private constructor(
    nftables: Nftables,
    table: string,
    staleTableRemoved: boolean,
    changed: Sysctl[],
  ) {
    this.#nftables = nftables;
    this.table = table;
    this.staleTableRemoved = staleTableRemoved;
    this.#changed = changed;
    this.forwardingTurnedOn = changed.map((sysctl) => sysctl.name);
  }

  /**
   * Masquerades packets from `subnets` (CIDRs, v4 and/or v6) that leave through any
   * interface but `tunName`, and turns forwarding on (v4, and v6 when a v6 subnet is given),
   * remembering what was there. First removes a table left by a killed server of the same
   * TUN name: the new table replaces it in one nf_tables transaction.
   *
   * @throws {Error} saying what failed (no permission, no nf_tables in the kernel, a sysctl
   * that cannot be written) and the commands to set the same up by hand; nothing is left
   * changed then.
   */
  static enable(tunName: string, subnets: string[]): Nat {
    const manual = natCommands(tunName, subnets); // validates both before anything changes
    const table = natTableName(tunName);
    let nftables: Nftables;
    let stale: boolean;
    try {
      nftables = Nftables.open();
    } catch (error) {
      throw natError("cannot open an nf_tables netlink socket", error, manual);
    }
    try {
      stale = nftables.tableExists(table);
      nftables.installMasquerade(tunName, subnets);
    } catch (error) {
      nftables.close();
      throw natError(`cannot set up the masquerade table inet ${table}`, error, manual);
    }
    const wanted = [IPV4_FORWARDING];
    if (subnets.some((subnet) => parseSubnet(subnet).family === 6)) wanted.push(IPV6_FORWARDING);
    const changed: Sysctl[] = [];
    try {
      for (const sysctl of wanted) {
        if (readSysctl(sysctl) !== "0") continue;
        writeSysctl(sysctl, "1");
        changed.push(sysctl);
      }
    } catch (error) {
      // Leaves nothing behind: the table without forwarding would only mislead.
      let cleanup = "";
      try {
        new Nat(nftables, table, stale, changed).disable();
      } catch (undo) {
        cleanup = `; and then ${(undo as Error).message}`;
      }
      throw natError(`cannot turn on forwarding${cleanup}`, error, manual);
    }
    return new Nat(nftables, table, stale, changed);
  }

  /**
   * Removes the table and puts forwarding back as it was; idempotent. A sysctl is set back to
   * 0 only while it is still 1 (whoever changed it since owns it now) and while no other
   * server's `vpn_*` table is left in this namespace: that server forwards too, and a sysctl
   * left on is a smaller harm than its clients cut off. Every step is tried; the error after
   * names each that failed.
   */
  disable(): void {
    const nftables = this.#nftables;
    if (nftables === undefined) return;
    this.#nftables = undefined;
    const failures: string[] = [];
    let othersForward = false;
    try {
      nftables.deleteTable(this.table);
      othersForward = nftables.listTables().some((name) => name.startsWith(natTableName("")));
    } catch (error) {
      failures.push(`deleting table inet ${this.table}: ${(error as Error).message}`);
    } finally {
      nftables.close();
    }
    for (const sysctl of othersForward ? [] : this.#changed) {
      try {
        if (readSysctl(sysctl) === "1") writeSysctl(sysctl, "0");
      } catch (error) {
        failures.push(`setting ${sysctl.name} back to 0: ${(error as Error).message}`);
      }
    }
    if (failures.length > 0) throw new Error(`NAT cleanup failed: ${failures.join("; ")}`);
  }
}

function readSysctl(sysctl: Sysctl): string {
  try {
    return Deno.readTextFileSync(sysctl.path).trim();
  } catch (error) {
    throw new Error(`cannot read ${sysctl.path} (${sysctl.name}): ${(error as Error).message}`);
  }
}

function writeSysctl(sysctl: Sysctl, value: string): void {
  try {
    Deno.writeTextFileSync(sysctl.path, `${value}\n`);
  } catch (error) {
    throw new Error(
      `cannot write ${value} to ${sysctl.path} (${sysctl.name}): ${(error as Error).message}`,
    );
  }
}

/** An Error for `what` failed: why, in operator words, and the commands to do it by hand. */
function natError(what: string, cause: unknown, manual: string[]): Error {
  const errno = (cause as Partial<ErrnoError>).errno;
  const why = errno === EPERM || errno === EACCES
    ? "no permission: the server needs root or CAP_NET_ADMIN (and write access to /proc/sys)"
    : errno === EPROTONOSUPPORT || errno === EOPNOTSUPP
    ? "this kernel has no nf_tables (CONFIG_NF_TABLES, or the nf_tables module is not loaded)"
    : errno === ENOENT
    ? "this kernel lacks NAT in nf_tables (CONFIG_NFT_NAT, CONFIG_NFT_MASQ, CONFIG_NF_TABLES_INET; modules nft_chain_nat and nft_masq)"
    : undefined;
  const detail = (cause as Error).message;
  return new Error(
    `nat: true: ${what}: ${why ? `${why} (${detail})` : detail}. ` +
      `Set it up by hand and set nat: false, with: ${manual.join(" && ")}`,
    { cause },
  );
}
