/**
 * What Deno does not offer for the TCP sockets of a `Deno.TlsListener` and its `Deno.TlsConn`s,
 * which it gives no handle to.
 *
 * - `shutdownTcp`: a `Deno.TlsConn` closed while its TLS handshake is pending is not closed at
 *   all (still so in Deno 2.9.6); Deno's TLS stream (rustls-tokio-stream) keeps the socket in a
 *   task that waits for the handshake to finish, which a silent peer never does. The server's
 *   pre-auth timeout would then free nothing, and idle connections could pile up until file
 *   descriptors run out. Aborting the socket makes the handshake task fail and drop it. This
 *   runs before AUTH, as often as anyone connects, so it must not cost a walk over the process's
 *   descriptors (milliseconds at thousands of them): the kernel aborts the socket by its two
 *   addresses (`SOCK_DESTROY`, as `ss -K` does; it needs CAP_NET_ADMIN, which the server has for
 *   its TUN, and a kernel with CONFIG_INET_DIAG_DESTROY). Only where that is refused is the
 *   socket found among the descriptors and shut down, which does not release the descriptor, so
 *   the number cannot be reused under Deno's feet.
 * - `setListenerNoDelay`: `Deno.TlsConn` has no `setNoDelay`, and its sockets keep Nagle's
 *   algorithm on, which holds back a small frame (a keepalive, a TCP ACK of the inner traffic)
 *   while earlier data is unacknowledged: up to a delayed-ACK timeout of added latency in a
 *   tunnel. Linux copies TCP_NODELAY from a listening socket to each socket it accepts, so one
 *   lookup of the listener at start covers every connection. `tcpNoDelay` reads the option back.
 * - `listenerIpv6Only`: Deno sets no `IPV6_V6ONLY` either way, so whether a listener on "::"
 *   also takes IPv4 clients is up to net.ipv6.bindv6only; this reads what the socket got.
 *
 * @module
 */

import { check, libc } from "./libc.ts";
import {
  AF_INET,
  AF_INET6,
  AF_NETLINK,
  ENOENT,
  IPPROTO_IPV6,
  IPPROTO_TCP,
  IPV6_V6ONLY,
  MSG_DONTWAIT,
  NETLINK_SOCK_DIAG,
  SHUT_RDWR,
  SO_ACCEPTCONN,
  SOCK_CLOEXEC,
  SOCK_DESTROY,
  SOCK_DIAG_BY_FAMILY,
  SOCK_RAW,
  SOL_SOCKET,
  TCP_NODELAY,
} from "./constants.ts";
import {
  formatIpAddress,
  NLM_F_ACK,
  NLM_F_REQUEST,
  NLMSG_ERROR,
  parseIpAddress,
} from "./netlink_message.ts";

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

/** One form per address: IPv4-mapped IPv6 (a dual-stack listener's IPv4 peer) as IPv4. */
function unmapped(bytes: Uint8Array): Uint8Array {
  const mapped = bytes.length === 16 && bytes.subarray(0, 10).every((b) => b === 0) &&
    bytes[10] === 0xff && bytes[11] === 0xff;
  return mapped ? bytes.subarray(12) : bytes;
}

function canonical(bytes: Uint8Array): string {
  return formatIpAddress(unmapped(bytes));
}

function endOf(fd: number, call: "getsockname" | "getpeername"): SocketAddress | undefined {
  length[0] = sockaddr.length;
  if (libc()[call](fd, sockaddr, length) !== 0) return undefined;
  return readAddress();
}

/** The address of `end` as 4 bytes (IPv4, also IPv4-mapped IPv6) or 16. */
function bytesOf(end: SocketAddress): Uint8Array {
  return unmapped(parseIpAddress(end.hostname.replace(/^\[|\]$/g, "")).bytes);
}

function same(a: SocketAddress | undefined, b: SocketAddress): boolean {
  if (a === undefined || a.port !== b.port) return false;
  return a.hostname === formatIpAddress(bytesOf(b));
}

/**
 * Ends the TCP socket of this process whose local and remote ends are `local` and `remote`:
 * aborted by the kernel (the peer gets a reset), else shut down. Returns false when there is no
 * such socket (it is already gone). Examines no descriptor where `SOCK_DESTROY` is allowed.
 */
export function shutdownTcp(local: SocketAddress, remote: SocketAddress): boolean {
  const destroyed = destroyTcp(local, remote);
  if (destroyed !== undefined) return destroyed;
  const fd = findTcp(local, remote);
  return fd !== undefined && libc().shutdown(fd, SHUT_RDWR) === 0;
}

// struct nlmsghdr (16 bytes) and struct inet_diag_req_v2 (56) of <linux/inet_diag.h>; the
// answer, a struct inet_diag_msg, holds the socket's cookie at bytes 60 to 68.
const request = new Uint8Array(72);
const requestView = new DataView(request.buffer);
const answer = new Uint8Array(1024);
const answerView = new DataView(answer.buffer);
const HOST_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
let diagFd = -1;
let sequence = 0;
let answerLength = 0;

/**
 * Asks the kernel to abort the TCP socket with these ends (SOCK_DESTROY over sock_diag): true
 * when it did, false when there is no such socket, undefined when the kernel refuses (no
 * CAP_NET_ADMIN, a kernel without CONFIG_INET_DIAG_DESTROY). The kernel finds the socket in its
 * connection hash, in constant time; the handshake task holding it sees the error and closes
 * the descriptor.
 */
function destroyTcp(local: SocketAddress, remote: SocketAddress): boolean | undefined {
  const source = bytesOf(local);
  const destination = bytesOf(remote);
  if (source.length !== destination.length) return undefined;
  if (diagFd < 0) diagFd = libc().socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  if (diagFd < 0) return undefined;
  request.fill(0);
  requestView.setUint32(0, request.length, HOST_LITTLE_ENDIAN); // nlmsg_len
  request[16] = source.length === 4 ? AF_INET : AF_INET6; // sdiag_family
  request[17] = IPPROTO_TCP; // sdiag_protocol
  requestView.setUint32(20, 0xffffffff, HOST_LITTLE_ENDIAN); // idiag_states: any
  requestView.setUint16(24, local.port); // idiag_sport, network order
  requestView.setUint16(26, remote.port); // idiag_dport
  request.set(source, 28); // idiag_src
  request.set(destination, 44); // idiag_dst
  request.fill(0xff, 64); // idiag_cookie: INET_DIAG_NOCOOKIE
  const found = exchange(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST);
  if (found === ENOENT) return false;
  if (found !== 0 || answerLength < 68) return undefined;
  // A lookup by ends falls back to the listener on the local port when no connection has them:
  // only the connection itself (the remote port in the answer) is aborted, named by its cookie.
  if (answerView.getUint16(22) !== remote.port) return false;
  request.set(answer.subarray(60, 68), 64);
  const destroyed = exchange(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK);
  return destroyed === 0 ? true : destroyed === ENOENT ? false : undefined;
}

/**
 * Sends `request` as a message of `type`; the kernel's answer is then in `answer`. Returns its
 * errno (0 for an ACK or data), undefined when no answer came.
 */
function exchange(type: number, flags: number): number | undefined {
  sequence = (sequence + 1) >>> 0;
  requestView.setUint16(4, type, HOST_LITTLE_ENDIAN); // nlmsg_type
  requestView.setUint16(6, flags, HOST_LITTLE_ENDIAN); // nlmsg_flags
  requestView.setUint32(8, sequence, HOST_LITTLE_ENDIAN); // nlmsg_seq
  if (libc().send(diagFd, request, request.length, 0) !== request.length) return undefined;
  // sock_diag answers inside send(); an answer to an earlier request that was given up on is
  // skipped by its sequence number.
  for (;;) {
    answerLength = libc().recv(diagFd, answer, answer.length, MSG_DONTWAIT);
    if (answerLength < 20) return undefined;
    if (answerView.getUint32(8, HOST_LITTLE_ENDIAN) !== sequence) continue;
    if (answerView.getUint16(4, HOST_LITTLE_ENDIAN) !== NLMSG_ERROR) return 0;
    return -answerView.getInt32(16, HOST_LITTLE_ENDIAN);
  }
}

const one = new Int32Array([1]);

/**
 * Turns Nagle's algorithm off (`TCP_NODELAY`) on the listening TCP socket of this process bound
 * to `local`, and so on every socket accepted from it from then on (Linux copies the option).
 * Returns false when there is no such socket.
 */
export function setListenerNoDelay(local: SocketAddress): boolean {
  const fd = findSocket((fd) => same(endOf(fd, "getsockname"), local) && accepts(fd));
  return fd !== undefined && libc().setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, one, 4) === 0;
}

const flag = new Int32Array(1);
const flagSize = new Uint32Array(1);

/**
 * Whether the listening TCP socket of this process bound to `local` takes IPv6 clients only
 * (`IPV6_V6ONLY`). Deno gives no way to set the option, so a listener on "::" follows
 * net.ipv6.bindv6only: where that is 1, IPv4 clients find nothing on the port, and the caller
 * listens on "0.0.0.0" beside it. False for an IPv4 socket, and when there is no such socket.
 * It walks the descriptors: call it once per listener, at start.
 */
export function listenerIpv6Only(local: SocketAddress): boolean {
  if (bytesOf(local).length !== 16) return false;
  const fd = findSocket((fd) => same(endOf(fd, "getsockname"), local) && accepts(fd));
  if (fd === undefined) return false;
  flagSize[0] = 4;
  return libc().getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, flag, flagSize) === 0 && flag[0] === 1;
}

/** Whether `fd` is a listening socket (SO_ACCEPTCONN): not the UDP socket on the same port. */
function accepts(fd: number): boolean {
  flagSize[0] = 4;
  return libc().getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, flag, flagSize) === 0 && flag[0] === 1;
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

/**
 * Descriptors examined by walks over `/proc/self/fd` since start (the listener's lookup, and a
 * connection's only where `SOCK_DESTROY` is refused), so that tests can bound them.
 */
export const descriptorWalks = { examined: 0 };

function findTcp(local: SocketAddress, remote: SocketAddress): number | undefined {
  return findSocket((fd) =>
    same(endOf(fd, "getpeername"), remote) && same(endOf(fd, "getsockname"), local)
  );
}

/** The first descriptor of this process that `matches`, walking all of them. */
function findSocket(matches: (fd: number) => boolean): number | undefined {
  for (const entry of Deno.readDirSync("/proc/self/fd")) {
    const fd = Number(entry.name);
    descriptorWalks.examined++;
    if (Number.isInteger(fd) && matches(fd)) return fd;
  }
  return undefined;
}
