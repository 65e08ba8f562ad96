/**
 * Users and capabilities: who a user name is (`getpwnam_r`), and the one-way switch of this
 * process to that user keeping only CAP_NET_ADMIN (capabilities(7), credentials(7)).
 *
 * Deno runs many threads, and Linux keeps credentials per thread. glibc's `setgroups`,
 * `setresgid` and `setresuid` change every thread of the process (nptl signals each to make
 * the call), so no thread stays root. Capabilities are per thread and glibc does not spread
 * them: `PR_SET_KEEPCAPS` and `capset` here act on the calling thread alone, the JavaScript
 * thread, which is where every synchronous FFI call (netlink, nftables) runs. Every other
 * thread loses all capabilities with the switch; threads started later inherit the
 * JavaScript thread's CAP_NET_ADMIN.
 *
 * @module
 */

import { cString, errno, ErrnoError } from "./libc.ts";

const symbols = {
  /**
   * int getpwnam_r(const char *name, struct passwd *pwd, char *buf, size_t buflen,
   *                struct passwd **result)
   */
  getpwnam_r: { parameters: ["buffer", "buffer", "buffer", "usize", "buffer"], result: "i32" },
  /** int setgroups(size_t size, const gid_t *list) */
  setgroups: { parameters: ["usize", "buffer"], result: "i32" },
  /** int setresgid(gid_t rgid, gid_t egid, gid_t sgid) */
  setresgid: { parameters: ["u32", "u32", "u32"], result: "i32" },
  /** int setresuid(uid_t ruid, uid_t euid, uid_t suid) */
  setresuid: { parameters: ["u32", "u32", "u32"], result: "i32" },
  /** int prctl(int option, unsigned long arg2, unsigned long arg3, ...) */
  prctl: { parameters: ["i32", "u64", "u64", "u64", "u64"], result: "i32" },
  /** int capget(cap_user_header_t hdrp, cap_user_data_t datap) */
  capget: { parameters: ["buffer", "buffer"], result: "i32" },
  /** int capset(cap_user_header_t hdrp, const cap_user_data_t datap) */
  capset: { parameters: ["buffer", "buffer"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

let library: Deno.DynamicLibrary<typeof symbols>["symbols"] | undefined;

function lib(): Deno.DynamicLibrary<typeof symbols>["symbols"] {
  library ??= Deno.dlopen("libc.so.6", symbols).symbols;
  return library;
}

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
    const result = lib().getpwnam_r(cString(name), entry, strings, BigInt(size), found);
    if (result === 34) continue; // ERANGE: a larger buffer for the strings
    if (result !== 0) throw new ErrnoError(`getpwnam_r(${name})`, result);
    if (found[0] === 0n) return undefined;
    const view = new DataView(entry.buffer);
    return { name, uid: view.getUint32(16, true), gid: view.getUint32(20, true) };
  }
  throw new ErrnoError(`getpwnam_r(${name})`, 34);
}

/** The calling thread's capability sets, as bit masks (bit N is capability N). */
export function capabilities(): { effective: bigint; permitted: bigint } {
  const header = new Uint32Array([CAPABILITY_VERSION_3, 0]);
  const data = new Uint32Array(6);
  if (lib().capget(new Uint8Array(header.buffer), new Uint8Array(data.buffer)) !== 0) {
    throw new ErrnoError("capget", errno());
  }
  const join = (low: number, high: number) => BigInt(low) | (BigInt(high) << 32n);
  return { effective: join(data[0]!, data[3]!), permitted: join(data[1]!, data[4]!) };
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
  const c = lib();
  const call = (what: string, result: number) => {
    if (result !== 0) throw new ErrnoError(what, errno());
  };
  const wanted = keep.reduce((mask, cap) => mask | (1n << BigInt(cap)), 0n);
  const setpcap = (capabilities().effective >> BigInt(CAP_SETPCAP)) & 1n;
  for (let cap = 0; setpcap && cap < CAP_COUNT; cap++) {
    if ((wanted >> BigInt(cap)) & 1n) continue;
    if (c.prctl(PR_CAPBSET_DROP, BigInt(cap), 0n, 0n, 0n) !== 0) {
      if (errno() === 22) break; // EINVAL: past the kernel's last capability
      throw new ErrnoError(`prctl(PR_CAPBSET_DROP, ${cap})`, errno());
    }
  }
  call("prctl(PR_SET_NO_NEW_PRIVS)", c.prctl(PR_SET_NO_NEW_PRIVS, 1n, 0n, 0n, 0n));
  call("prctl(PR_SET_KEEPCAPS)", c.prctl(PR_SET_KEEPCAPS, 1n, 0n, 0n, 0n));
  call("setgroups", c.setgroups(1n, new Uint8Array(new Uint32Array([user.gid]).buffer)));
  call("setresgid", c.setresgid(user.gid, user.gid, user.gid));
  call("setresuid", c.setresuid(user.uid, user.uid, user.uid));
  // The switch kept the permitted set (KEEPCAPS) and emptied the effective one: raise `keep`.
  const low = Number(wanted & 0xffffffffn);
  const high = Number(wanted >> 32n);
  const header = new Uint32Array([CAPABILITY_VERSION_3, 0]);
  const data = new Uint32Array([low, low, 0, high, high, 0]);
  call("capset", c.capset(new Uint8Array(header.buffer), new Uint8Array(data.buffer)));
  call("prctl(PR_SET_KEEPCAPS, 0)", c.prctl(PR_SET_KEEPCAPS, 0n, 0n, 0n, 0n));
  const now = capabilities();
  if (Deno.uid() !== user.uid || Deno.gid() !== user.gid || now.effective !== wanted) {
    throw new Error(
      `the switch to ${user.name} did not take: uid ${Deno.uid()}, gid ${Deno.gid()}, ` +
        `capabilities 0x${now.effective.toString(16)}`,
    );
  }
}
