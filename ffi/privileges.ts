/**
 * Users and capabilities: who a user name is (`getpwnam_r`), and the one-way switch of this
 * process to that user keeping only CAP_NET_ADMIN (capabilities(7), credentials(7)).
 *
 * The calls are in the one libc symbol table (ffi/libc.ts). Deno runs many threads, and Linux
 * keeps credentials per thread. glibc's `setgroups`, `setresgid` and `setresuid` change every
 * thread of the process (nptl signals each to make the call), so no thread stays root. Capabilities are per thread and glibc does not spread
 * them: `PR_SET_KEEPCAPS` and `capset` here act on the calling thread alone, the JavaScript
 * thread, which is where every synchronous FFI call (netlink, nftables) runs. Every other
 * thread loses all capabilities with the switch; threads started later inherit the
 * JavaScript thread's CAP_NET_ADMIN.
 *
 * @module
 */

import { check, cString, errno, ErrnoError, libc } from "./libc.ts";

/** `CAP_NET_ADMIN` of <linux/capability.h>: routes, addresses, nftables, net sysctls. */
export const CAP_NET_ADMIN = 12;
/** `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set. */
const CAPABILITY_VERSION_3 = 0x20080522;
const PR_SET_KEEPCAPS = 8;
const PR_CAPBSET_DROP = 24;
const PR_SET_NO_NEW_PRIVS = 38;
/** `CAP_SETPCAP`: needed to shrink the bounding set. */
const CAP_SETPCAP = 8;
/** `CAP_LAST_CAP` of the kernels we run on is below this; dropping a higher one is EINVAL. */
const CAP_COUNT = 64;

/** A user of this host, as the name service has it. */
export interface UserEntry {
  name: string;
  uid: number;
  /** The user's primary group. */
  gid: number;
}

/** Looks `name` up (/etc/passwd, or whatever nsswitch.conf names); undefined if there is none. */
export function lookupUser(name: string): UserEntry | undefined {
  // struct passwd on LP64: pw_name, pw_passwd (pointers), pw_uid, pw_gid (u32), then pointers.
  const entry = new Uint8Array(48);
  const found = new BigUint64Array(1);
  for (let size = 4096; size <= 1 << 20; size *= 4) {
    const strings = new Uint8Array(size);
    const result = libc().getpwnam_r(cString(name), entry, strings, size, found);
    if (result === 34) continue; // ERANGE: a larger buffer for the strings
    if (result !== 0) throw new ErrnoError(`getpwnam_r(${name})`, result);
    if (found[0] === 0n) return undefined;
    const view = new DataView(entry.buffer);
    return { name, uid: view.getUint32(16, true), gid: view.getUint32(20, true) };
  }
  throw new ErrnoError(`getpwnam_r(${name})`, 34);
}

/** The calling thread's effective capabilities, as a bit mask (bit N is capability N). */
function effectiveCapabilities(): bigint {
  const header = new Uint32Array([CAPABILITY_VERSION_3, 0]);
  const data = new Uint32Array(6);
  check("capget", libc().capget(new Uint8Array(header.buffer), new Uint8Array(data.buffer)));
  return BigInt(data[0]!) | (BigInt(data[3]!) << 32n);
}

/**
 * Turns this process into `user` (its uid, its primary group and no other group) for good,
 * keeping `keep` (capability numbers) effective and permitted on the calling thread and
 * nothing inheritable. That thread also gets no_new_privs and, where it may shrink it (a
 * systemd unit's bounding set is small already), a bounding set of `keep`: a program it
 * starts cannot get more back, a set-user-ID one included. Checks the result: a switch that
 * did not happen throws.
 *
 * @throws {ErrnoError} when a call fails (EPERM: this process may not change its user).
 */
export function dropPrivileges(user: UserEntry, keep: readonly number[]): void {
  const c = libc();
  const wanted = keep.reduce((mask, cap) => mask | (1n << BigInt(cap)), 0n);
  const setpcap = (effectiveCapabilities() >> BigInt(CAP_SETPCAP)) & 1n;
  for (let cap = 0; setpcap && cap < CAP_COUNT; cap++) {
    if ((wanted >> BigInt(cap)) & 1n) continue;
    if (c.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) !== 0) {
      if (errno() === 22) break; // EINVAL: past the kernel's last capability
      throw new ErrnoError(`prctl(PR_CAPBSET_DROP, ${cap})`, errno());
    }
  }
  check("prctl(PR_SET_NO_NEW_PRIVS)", c.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
  check("prctl(PR_SET_KEEPCAPS)", c.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0));
  check("setgroups", c.setgroups(1, new Uint8Array(new Uint32Array([user.gid]).buffer)));
  check("setresgid", c.setresgid(user.gid, user.gid, user.gid));
  check("setresuid", c.setresuid(user.uid, user.uid, user.uid));
  // The switch kept the permitted set (KEEPCAPS) and emptied the effective one: raise `keep`.
  const low = Number(wanted & 0xffffffffn);
  const high = Number(wanted >> 32n);
  const header = new Uint32Array([CAPABILITY_VERSION_3, 0]);
  const data = new Uint32Array([low, low, 0, high, high, 0]);
  check("capset", c.capset(new Uint8Array(header.buffer), new Uint8Array(data.buffer)));
  check("prctl(PR_SET_KEEPCAPS, 0)", c.prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0));
  const now = effectiveCapabilities();
  if (Deno.uid() !== user.uid || Deno.gid() !== user.gid || now !== wanted) {
    throw new Error(
      `the switch to ${user.name} did not take: uid ${Deno.uid()}, gid ${Deno.gid()}, ` +
        `capabilities 0x${now.toString(16)}`,
    );
  }
}
