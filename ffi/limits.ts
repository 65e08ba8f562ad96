/**
 * The process's limit on open files (RLIMIT_NOFILE). Thousands of sessions take a descriptor
 * each (a TCP connection, or an OpenVPN client's UDP socket), far above the usual soft limit
 * of 1024; the soft limit may be raised up to the hard one without privilege.
 *
 * Deno's own CLI raises the soft limit to the hard one at start (seen with Deno 2.9: started
 * under `prlimit --nofile=1024:4096`, a script reads 4096 for both); this does it explicitly,
 * so that nothing depends on that, and says what the limits are.
 *
 * @module
 */

import { errno, ErrnoError } from "./libc.ts";

/** RLIMIT_NOFILE on Linux (x86_64 and aarch64 alike). */
const RLIMIT_NOFILE = 7;
/** RLIM_INFINITY: no limit. */
const RLIM_INFINITY = 0xffff_ffff_ffff_ffffn;

const symbols = {
  /** int getrlimit(int resource, struct rlimit *rlim) */
  getrlimit: { parameters: ["i32", "buffer"], result: "i32" },
  /** int setrlimit(int resource, const struct rlimit *rlim) */
  setrlimit: { parameters: ["i32", "buffer"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

let library: Deno.DynamicLibrary<typeof symbols>["symbols"] | undefined;

function limits(): Deno.DynamicLibrary<typeof symbols>["symbols"] {
  library ??= Deno.dlopen("libc.so.6", symbols).symbols;
  return library;
}

/** The soft and hard limit on open files; `Infinity` where there is none. */
export interface FileLimit {
  /** What the process may open now. */
  soft: number;
  /** How far the soft limit may be raised without privilege. */
  hard: number;
}

function toNumber(value: bigint): number {
  return value === RLIM_INFINITY ? Infinity : Number(value);
}

/** The limit on open files now. */
export function fileLimit(): FileLimit {
  // struct rlimit { rlim_t rlim_cur; rlim_t rlim_max; }: two u64.
  const rlimit = new BigUint64Array(2);
  if (limits().getrlimit(RLIMIT_NOFILE, rlimit) !== 0) {
    throw new ErrnoError("getrlimit(RLIMIT_NOFILE)", errno());
  }
  return { soft: toNumber(rlimit[0]!), hard: toNumber(rlimit[1]!) };
}

/**
 * Raises the soft limit on open files to the hard limit, and returns both as they then are.
 *
 * @throws {ErrnoError} when the kernel refuses (it caps the limit at `fs.nr_open`).
 * @example
 * ```ts
 * import { raiseFileLimit } from "./limits.ts";
 * const { soft } = raiseFileLimit(); // e.g. 524288
 * ```
 */
export function raiseFileLimit(): FileLimit {
  const rlimit = new BigUint64Array(2);
  if (limits().getrlimit(RLIMIT_NOFILE, rlimit) !== 0) {
    throw new ErrnoError("getrlimit(RLIMIT_NOFILE)", errno());
  }
  if (rlimit[0]! !== rlimit[1]!) {
    rlimit[0] = rlimit[1]!;
    if (limits().setrlimit(RLIMIT_NOFILE, rlimit) !== 0) {
      throw new ErrnoError(
        "setrlimit(RLIMIT_NOFILE)",
        errno(),
        `raising the soft limit to the hard limit ${rlimit[1]}`,
      );
    }
  }
  return fileLimit();
}
