/**
 * What Deno does not offer for the TCP socket under a `Deno.TlsConn`, which it gives no handle
 * to: the socket is found by its two addresses among the process's descriptors.
 *
 * - `shutdownTcp`: a `Deno.TlsConn` closed while its TLS handshake is pending is not closed at
 *   all; Deno's TLS stream (rustls-tokio-stream) keeps the socket in a task that waits for the
 *   handshake to finish, which a silent peer never does. The server's pre-auth timeout would then
 *   free nothing, and idle connections could pile up until file descriptors run out. Shutting
 *   the socket down makes the handshake task fail and drop it. `shutdown(2)` does not release
 *   the descriptor, so the number cannot be reused under Deno's feet.
 * - `setTcpNoDelay`: `Deno.TlsConn` has no `setNoDelay`, and its sockets keep Nagle's algorithm
 *   on, which holds back a small frame (a keepalive, a TCP ACK of the inner traffic) while
 *   earlier data is unacknowledged: up to a delayed-ACK timeout of added latency in a tunnel.
 *   `tcpNoDelay` reads the option back.
 *
 * @module
 */

import { check, libc } from "./libc.ts";
import { AF_INET, AF_INET6, IPPROTO_TCP, SHUT_RDWR, TCP_NODELAY } from "./constants.ts";
import { formatIpAddress, parseIpAddress } from "./netlink_message.ts";

/** One end of a TCP connection, as Deno reports it. */
export interface SocketAddress {
  hostname: string;
  port: number;
}

const sockaddr = new Uint8Array(128);
const sockaddrView = new DataView(sockaddr.buffer);
const length = new Uint32Array(1);

/** Formats the address in `sockaddr` as Deno would; undefined when it is not IP. */
function readAddress(): SocketAddress | undefined {
  const family = sockaddrView.getUint16(0, true);
  const port = sockaddrView.getUint16(2);
  if (family === AF_INET) return { hostname: canonical(sockaddr.subarray(4, 8)), port };
  if (family !== AF_INET6) return undefined;
  return { hostname: canonical(sockaddr.subarray(8, 24)), port };
}

/** One spelling per address: IPv4-mapped IPv6 (a dual-stack listener's IPv4 peer) as IPv4. */
function canonical(bytes: Uint8Array): string {
  const mapped = bytes.length === 16 && bytes.subarray(0, 10).every((b) => b === 0) &&
    bytes[10] === 0xff && bytes[11] === 0xff;
  return formatIpAddress(mapped ? bytes.subarray(12) : bytes);
}

function endOf(fd: number, call: "getsockname" | "getpeername"): SocketAddress | undefined {
  length[0] = sockaddr.length;
  if (libc()[call](fd, sockaddr, length) !== 0) return undefined;
  return readAddress();
}

function same(a: SocketAddress | undefined, b: SocketAddress): boolean {
  if (a === undefined || a.port !== b.port) return false;
  return a.hostname === canonical(parseIpAddress(b.hostname.replace(/^\[|\]$/g, "")).bytes);
}

/**
 * Shuts down the TCP socket of this process whose local and remote ends are `local` and
 * `remote`. Returns false when there is no such socket (it is already gone).
 */
export function shutdownTcp(local: SocketAddress, remote: SocketAddress): boolean {
  const fd = findTcp(local, remote);
  return fd !== undefined && libc().shutdown(fd, SHUT_RDWR) === 0;
}

const one = new Int32Array([1]);

/**
 * Turns Nagle's algorithm off (`TCP_NODELAY`) on the TCP socket of this process whose ends are
 * `local` and `remote`. Returns false when there is no such socket.
 */
export function setTcpNoDelay(local: SocketAddress, remote: SocketAddress): boolean {
  const fd = findTcp(local, remote);
  return fd !== undefined && libc().setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, one, 4) === 0;
}

/**
 * Whether Nagle's algorithm is off (`TCP_NODELAY`) on the TCP socket of this process whose ends
 * are `local` and `remote`, as `getsockopt` reads it. Throws when there is no such socket.
 */
export function tcpNoDelay(local: SocketAddress, remote: SocketAddress): boolean {
  const fd = findTcp(local, remote);
  if (fd === undefined) {
    throw new Error(
      `No TCP socket from ${local.hostname}:${local.port} to ${remote.hostname}:${remote.port} ` +
        `in this process`,
    );
  }
  const value = new Int32Array(1);
  const size = new Uint32Array([4]);
  check("getsockopt(TCP_NODELAY)", libc().getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, value, size));
  return value[0] !== 0;
}

function findTcp(local: SocketAddress, remote: SocketAddress): number | undefined {
  for (const entry of Deno.readDirSync("/proc/self/fd")) {
    const fd = Number(entry.name);
    if (!Number.isInteger(fd) || !same(endOf(fd, "getpeername"), remote)) continue;
    if (same(endOf(fd, "getsockname"), local)) return fd;
  }
  return undefined;
}
