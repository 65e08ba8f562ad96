/**
 * The one libc symbol table, and the one place that turns a failed call into an error.
 *
 * Every symbol keeps its exact C name; the comment gives the C types. Calls that return
 * `ssize_t` are declared with an `i32` result: on x86_64 and aarch64 the low half of the
 * return register holds the whole value for counts up to 2 GiB and for -1, and an `i32`
 * result comes back as a plain number where an `isize` one would allocate a BigInt on every
 * packet.
 *
 * @module
 */

import { errnoName } from "./constants.ts";

const symbols = {
  /** int open(const char *pathname, int flags) */
  open: { parameters: ["buffer", "i32"], result: "i32" },
  /** int open(const char *pathname, int flags, mode_t mode): the form that creates */
  open_mode: { name: "open", parameters: ["buffer", "i32", "u32"], result: "i32" },
  /** int close(int fd) */
  close: { parameters: ["i32"], result: "i32" },
  /** int fchmod(int fd, mode_t mode) */
  fchmod: { parameters: ["i32", "u32"], result: "i32" },
  /** int fchown(int fd, uid_t owner, gid_t group) */
  fchown: { parameters: ["i32", "u32", "u32"], result: "i32" },
  /** int fsync(int fd) */
  fsync: { parameters: ["i32"], result: "i32" },
  /** int flock(int fd, int operation) */
  flock: { parameters: ["i32", "i32"], result: "i32" },
  /** ssize_t read(int fd, void *buf, size_t count) */
  read: { parameters: ["i32", "buffer", "usize"], result: "i32" },
  /** ssize_t write(int fd, const void *buf, size_t count) */
  write: { parameters: ["i32", "buffer", "usize"], result: "i32" },
  /** int ioctl(int fd, unsigned long request, void *argp) */
  ioctl: { parameters: ["i32", "u64", "buffer"], result: "i32" },
  /** int ioctl(int fd, unsigned long request, unsigned long arg): the integer form */
  ioctl_int: { name: "ioctl", parameters: ["i32", "u64", "u64"], result: "i32" },
  /** int poll(struct pollfd *fds, nfds_t nfds, int timeout): on a worker thread */
  poll_async: {
    name: "poll",
    parameters: ["buffer", "u64", "i32"],
    result: "i32",
    nonblocking: true,
  },
  /** int poll(struct pollfd *fds, nfds_t nfds, int timeout) */
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32" },
  /** int eventfd(unsigned int initval, int flags) */
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  /** int socket(int domain, int type, int protocol) */
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  /** int bind(int sockfd, const struct sockaddr *addr, socklen_t addrlen) */
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  /** int setsockopt(int sockfd, int level, int optname, const void *optval, socklen_t optlen) */
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  /** ssize_t send(int sockfd, const void *buf, size_t len, int flags) */
  send: { parameters: ["i32", "buffer", "usize", "i32"], result: "i32" },
  /** ssize_t recv(int sockfd, void *buf, size_t len, int flags) */
  recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "i32" },
  /** int getsockname(int sockfd, struct sockaddr *addr, socklen_t *addrlen) */
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  /** int getpeername(int sockfd, struct sockaddr *addr, socklen_t *addrlen) */
  getpeername: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  /** int shutdown(int sockfd, int how) */
  shutdown: { parameters: ["i32", "i32"], result: "i32" },
  /**
   * ssize_t sendto(int sockfd, const void *buf, size_t len, int flags,
   *                const struct sockaddr *dest_addr, socklen_t addrlen)
   */
  sendto: { parameters: ["i32", "buffer", "usize", "i32", "buffer", "u32"], result: "i32" },
  /**
   * int recvmmsg(int sockfd, struct mmsghdr *msgvec, unsigned int vlen, int flags,
   *              struct timespec *timeout): msgvec as a pointer so a call can start mid-array
   */
  recvmmsg: { parameters: ["i32", "pointer", "u32", "i32", "pointer"], result: "i32" },
  /** int sendmmsg(int sockfd, struct mmsghdr *msgvec, unsigned int vlen, int flags) */
  sendmmsg: { parameters: ["i32", "pointer", "u32", "i32"], result: "i32" },
  /** int getsockopt(int sockfd, int level, int optname, void *optval, socklen_t *optlen) */
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
  /** unsigned int if_nametoindex(const char *ifname) */
  if_nametoindex: { parameters: ["buffer"], result: "u32" },
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
  /** int *__errno_location(void) */
  __errno_location: { parameters: [], result: "pointer" },
} as const satisfies Deno.ForeignLibraryInterface;

/**
 * Deno types 64-bit parameters (`size_t`, `unsigned long`) as `bigint`, but takes plain numbers
 * for them at run time, at the same cost; a BigInt would be an allocation per packet.
 */
type NumberArgs<T> = {
  [K in keyof T]: T[K] extends (...args: infer A) => infer R
    ? (...args: { [I in keyof A]: A[I] extends bigint ? number | bigint : A[I] }) => R
    : T[K];
};

/** The typed libc symbols. */
export type Libc = NumberArgs<Deno.DynamicLibrary<typeof symbols>["symbols"]>;

let library: Libc | undefined;

/** The libc symbols, opened on first use so that importing this module needs no permission. */
export function libc(): Libc {
  library ??= Deno.dlopen("libc.so.6", symbols).symbols as Libc;
  return library;
}

/** A libc call failed; `errno` and `code` say why, `call` says which. */
export class ErrnoError extends Error {
  /** The errno value, e.g. 1. */
  readonly errno: number;
  /** The errno name, e.g. `EPERM`. */
  readonly code: string;
  /** The failed call, e.g. `ioctl(TUNSETIFF)`. */
  readonly call: string;

  constructor(call: string, errno: number, detail?: string) {
    const code = errnoName(errno);
    super(`${call} failed: ${code} (errno ${errno})${detail ? `: ${detail}` : ""}`);
    this.name = "ErrnoError";
    this.errno = errno;
    this.code = code;
    this.call = call;
  }
}

/** The calling thread's errno, read right after a synchronous call returned -1. */
export function errno(): number {
  const pointer = libc().__errno_location();
  return pointer === null ? 0 : new Deno.UnsafePointerView(pointer).getInt32(0);
}

/** Returns `result` when it is not negative, else throws an {@linkcode ErrnoError} for `call`. */
export function check(call: string, result: number, detail?: string): number {
  if (result < 0) throw new ErrnoError(call, errno(), detail);
  return result;
}

/** A NUL-terminated copy of `text` for a `const char *` parameter. */
export function cString(text: string): Uint8Array<ArrayBuffer> {
  const bytes = new TextEncoder().encode(text);
  const out = new Uint8Array(bytes.length + 1);
  out.set(bytes);
  return out;
}
