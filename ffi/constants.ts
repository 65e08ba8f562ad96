/**
 * Linux constants (x86_64 and aarch64 share these values) used by the bindings in `ffi/`.
 *
 * @module
 */

/** open(2) flags. */
export const O_RDONLY = 0x0;
export const O_WRONLY = 0x1;
export const O_RDWR = 0x2;
export const O_CREAT = 0x40;
export const O_EXCL = 0x80;
/** The one open(2) flag used here whose value differs between x86_64 and aarch64. */
export const O_NOFOLLOW = Deno.build.arch === "aarch64" ? 0x8000 : 0x20000;
export const O_NONBLOCK = 0x800;
export const O_CLOEXEC = 0x80000;

/** flock(2) operations. */
export const LOCK_EX = 2;
export const LOCK_NB = 4;

/** poll(2) events. */
export const POLLIN = 0x1;
export const POLLERR = 0x8;
export const POLLHUP = 0x10;
export const POLLNVAL = 0x20;

/** eventfd(2) flags. */
export const EFD_NONBLOCK = 0x800;
export const EFD_CLOEXEC = 0x80000;

/** socket(2) domains, types and options. */
export const AF_INET = 2;
export const AF_INET6 = 10;
export const AF_NETLINK = 16;
export const SOCK_DGRAM = 2;
export const SOCK_RAW = 3;
export const SOCK_NONBLOCK = 0x800;
export const SOCK_CLOEXEC = 0x80000;
export const SOL_SOCKET = 1;
export const SO_SNDBUF = 7;
export const SO_RCVBUF = 8;
export const SO_RCVTIMEO = 20;
export const MSG_DONTWAIT = 0x40;
export const MSG_TRUNC = 0x20;
export const SO_SNDBUFFORCE = 32;
export const SO_RCVBUFFORCE = 33;
export const SO_ACCEPTCONN = 30;
export const IPPROTO_IPV6 = 41;
export const IPV6_V6ONLY = 26;
export const SHUT_RDWR = 2;
export const IPPROTO_TCP = 6;
export const TCP_NODELAY = 1;

/** <linux/sock_diag.h>: the netlink family and the requests that find and abort a socket. */
export const NETLINK_SOCK_DIAG = 4;
export const SOCK_DIAG_BY_FAMILY = 20;
export const SOCK_DESTROY = 21;

/** <linux/if_tun.h> ioctls and flags. */
export const TUNSETIFF = 0x400454ca;
export const TUNSETOFFLOAD = 0x400454d0;
export const TUNSETVNETHDRSZ = 0x400454d8;
export const IFF_TUN = 0x0001;
export const IFF_NO_PI = 0x1000;
export const IFF_VNET_HDR = 0x4000;
export const TUN_F_CSUM = 0x01;
export const TUN_F_TSO4 = 0x02;
export const TUN_F_TSO6 = 0x04;
export const TUN_F_TSO_ECN = 0x08;
export const TUN_F_USO4 = 0x20;
export const TUN_F_USO6 = 0x40;

/** <linux/if.h> IFNAMSIZ: interface names are at most 15 bytes and a NUL. */
export const IFNAMSIZ = 16;

/** errno values this code reacts to by number. */
export const ENOENT = 2;
export const EINTR = 4;
export const EIO = 5;
export const EAGAIN = 11;
export const EINVAL = 22;
export const EMSGSIZE = 90;

const ERRNO_NAMES: Record<number, string> = {
  1: "EPERM",
  2: "ENOENT",
  3: "ESRCH",
  4: "EINTR",
  5: "EIO",
  6: "ENXIO",
  7: "E2BIG",
  9: "EBADF",
  11: "EAGAIN",
  12: "ENOMEM",
  13: "EACCES",
  14: "EFAULT",
  16: "EBUSY",
  17: "EEXIST",
  19: "ENODEV",
  22: "EINVAL",
  23: "ENFILE",
  24: "EMFILE",
  25: "ENOTTY",
  28: "ENOSPC",
  34: "ERANGE",
  61: "ENODATA",
  90: "EMSGSIZE",
  92: "ENOPROTOOPT",
  93: "EPROTONOSUPPORT",
  95: "EOPNOTSUPP",
  97: "EAFNOSUPPORT",
  98: "EADDRINUSE",
  99: "EADDRNOTAVAIL",
  100: "ENETDOWN",
  101: "ENETUNREACH",
  105: "ENOBUFS",
  110: "ETIMEDOUT",
  111: "ECONNREFUSED",
  113: "EHOSTUNREACH",
};

/** The symbolic name of an errno value, e.g. `errnoName(1) === "EPERM"`. */
export function errnoName(errno: number): string {
  return ERRNO_NAMES[errno] ?? `E#${errno}`;
}
