/**
 * Who is at the other end of a Unix socket that `Deno.listen({ transport: "unix" })` accepted.
 *
 * Deno gives no handle to the socket of a `Deno.UnixConn`, and no `SO_PEERCRED`. The accepted
 * socket is found among this process's descriptors instead: a connected socket whose local
 * address is the listener's path (Linux gives an accepted socket the listener's address) and
 * which the caller has not identified yet. The caller identifies each connection right after its
 * `accept()` resolved and before it accepts the next, so exactly one such socket is new; where
 * that does not hold, the caller refuses the connection rather than guess. The walk costs
 * microseconds per descriptor: fine for an operator's control socket, not for a hot path.
 *
 * @module
 */

import { check, libc } from "./libc.ts";
import { SO_ACCEPTCONN, SOL_SOCKET } from "./constants.ts";

/** `AF_UNIX` of <sys/socket.h>. */
const AF_UNIX = 1;
/** `SO_PEERCRED` of <asm-generic/socket.h> (x86_64 and aarch64). */
const SO_PEERCRED = 17;

/** The process at the other end of a Unix socket, as the kernel saw it at `connect()`. */
export interface PeerCredentials {
  pid: number;
  uid: number;
  gid: number;
}

// struct sockaddr_un: sa_family_t sun_family; char sun_path[108].
const sockaddr = new Uint8Array(110);
const sockaddrLength = new Uint32Array(1);
const option = new Int32Array(3);
const optionLength = new Uint32Array(1);
const decoder = new TextDecoder();

/** The path a Unix socket is bound to; undefined for another family or an unnamed socket. */
function unixPath(fd: number): string | undefined {
  sockaddrLength[0] = sockaddr.length;
  if (libc().getsockname(fd, sockaddr, sockaddrLength) !== 0) return undefined;
  if (sockaddrLength[0]! <= 2 || (sockaddr[0]! | (sockaddr[1]! << 8)) !== AF_UNIX) {
    return undefined;
  }
  const path = sockaddr.subarray(2, sockaddrLength[0]);
  const end = path.indexOf(0);
  return decoder.decode(end < 0 ? path : path.subarray(0, end));
}

function listening(fd: number): boolean {
  optionLength[0] = 4;
  return libc().getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, option, optionLength) === 0 &&
    option[0] === 1;
}

/**
 * The connected sockets of this process accepted on the Unix socket at `path`, as
 * descriptor → socket inode: one socket may be open under several descriptors (the inode tells
 * them apart from distinct connections).
 */
export function acceptedUnixSockets(path: string): Map<number, string> {
  const found = new Map<number, string>();
  for (const entry of Deno.readDirSync("/proc/self/fd")) {
    const fd = Number(entry.name);
    if (!Number.isInteger(fd)) continue;
    let target: string;
    try {
      target = Deno.readLinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue; // closed while we walked
    }
    if (!target.startsWith("socket:")) continue;
    if (unixPath(fd) === path && !listening(fd)) found.set(fd, target);
  }
  return found;
}

/** `SO_PEERCRED` of the Unix socket `fd`. Throws an `ErrnoError` for a descriptor that is none. */
export function peerCredentials(fd: number): PeerCredentials {
  optionLength[0] = 12;
  check(
    "getsockopt(SO_PEERCRED)",
    libc().getsockopt(fd, SOL_SOCKET, SO_PEERCRED, option, optionLength),
  );
  return { pid: option[0]!, uid: option[1]! >>> 0, gid: option[2]! >>> 0 };
}
