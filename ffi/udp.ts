/**
 * A UDP socket through libc, received and sent in batches: the data channel's hot path.
 *
 * Receive path: the socket is non-blocking. `recv()` first takes what the kernel already holds
 * with one synchronous `recvmmsg(2)` (a whole batch per system call); only when the queue is
 * empty does it await one poll on a worker thread (ffi/readiness.ts), which `close()` wakes at
 * once. No FFI call is ever left pending on a closed socket. (Measured here: `Deno.listenDatagram`
 * receives at half the rate of this poll and drain.)
 *
 * Send path: synchronous `sendmmsg(2)` for a batch, `sendto(2)` for one datagram, both with
 * `MSG_DONTWAIT`: a full socket buffer drops the datagram, as a busy NIC would.
 *
 * Multi-homed hosts: a socket bound to a wildcard address ("0.0.0.0", "::") asks the kernel for
 * each datagram's local destination address (IP_PKTINFO, IPV6_RECVPKTINFO) and keeps it in the
 * datagram's address slot beside the peer; a reply sent to that slot names it as its source
 * (an IP_PKTINFO / IPV6_PKTINFO control message), so that it leaves from the address the peer
 * sent to, not from whichever one the route prefers, as OpenVPN's `--multihome` does. A peer
 * (a stock OpenVPN client among them) drops replies from any other address.
 *
 * No promise and no allocation per datagram: the caller owns slot buffers and address slots
 * and reuses them. The `struct mmsghdr` and `struct iovec` arrays that point at them are built
 * once per buffer set (cached by the identity of the `bufs` array) and only re-pointed when a
 * slot holds another buffer or address than last time.
 *
 * @module
 */

import { check, errno, ErrnoError, libc } from "./libc.ts";
import {
  AF_INET,
  AF_INET6,
  EAGAIN,
  EINTR,
  EINVAL,
  EIO,
  EMSGSIZE,
  IPPROTO_IPV6,
  IPV6_V6ONLY,
  MSG_DONTWAIT,
  MSG_TRUNC,
  SO_RCVBUF,
  SO_RCVBUFFORCE,
  SO_SNDBUF,
  SO_SNDBUFFORCE,
  SOCK_CLOEXEC,
  SOCK_DGRAM,
  SOCK_NONBLOCK,
  SOL_SOCKET,
} from "./constants.ts";
import { formatIpAddress, type IpAddress, parseIpAddress } from "./netlink_message.ts";
import { Readiness } from "./readiness.ts";

/**
 * A socket address slot: a `Uint8Array` of {@linkcode SOCKADDR_SLOT_LEN} bytes. Its first
 * {@linkcode SOCKADDR_LEN} hold a `struct sockaddr_in` (family 2) or `struct sockaddr_in6`
 * (family 10): the peer. The rest is the local address to send to that peer from, as a
 * wildcard-bound socket's `recv` found it (family 0 there: none, the route chooses): a u16
 * family (host order) at {@linkcode SOCKADDR_LEN}, then 2 zero bytes, then the address (4 or
 * 16 bytes, zero-padded to 16).
 */
export type SockAddr = Uint8Array;

/** Bytes of a {@linkcode SockAddr}'s peer address: `sizeof(struct sockaddr_in6)`. */
export const SOCKADDR_LEN = 28;

/** Size of a {@linkcode SockAddr} slot: the peer's address, then the local one. */
export const SOCKADDR_SLOT_LEN = SOCKADDR_LEN + 4 + 16;

/** Where a slot's local address starts (its family is at {@linkcode SOCKADDR_LEN}). */
const LOCAL_AT = SOCKADDR_LEN + 4;

/** The largest UDP payload over IPv4: 65535 - 20 (IP header) - 8 (UDP header). */
export const MAX_UDP_PAYLOAD = 65507;

/** Socket buffer size asked for in each direction; the kernel may grant less. */
export const SOCKET_BUFFER_BYTES = 4 * 1024 * 1024;

const SOCKADDR_IN_LEN = 16;
// struct mmsghdr { struct msghdr msg_hdr; unsigned int msg_len; } and struct iovec, x86_64 and
// aarch64: msghdr is { msg_name @0, msg_namelen @8, msg_iov @16, msg_iovlen @24,
// msg_control @32, msg_controllen @40, msg_flags @48 }, msg_len @56, padded to 64.
const MMSGHDR_LEN = 64;
const MSG_NAMELEN = 8;
const MSG_IOV = 16;
const MSG_IOVLEN = 24;
const MSG_CONTROL = 32;
const MSG_CONTROLLEN = 40;
const MSG_FLAGS = 48;
const MSG_LEN = 56;
const IOVEC_LEN = 16;
// UDP GSO: a control message at level SOL_UDP, type UDP_SEGMENT, carrying the segment size as
// a u16. CMSG_LEN(2) = 16 + 2; CMSG_SPACE(2) rounds that up to 8 bytes.
const SOL_UDP = 17;
const UDP_SEGMENT = 103;
const CMSG_LEN_U16 = 18;
// UDP GRO: the kernel reports the segment size of a joined read as an int at SOL_UDP, UDP_GRO.
const UDP_GRO = 104;
const CMSG_LEN_INT = 20;
/** CMSG_SPACE of a u16 or an int: the UDP_SEGMENT or UDP_GRO message. */
const CMSG_SPACE_INT = 24;
// The local address of a datagram: IPv4 `struct in_pktinfo { int ipi_ifindex; struct in_addr
// ipi_spec_dst; struct in_addr ipi_addr; }` at level SOL_IP (IPPROTO_IP), type IP_PKTINFO;
// IPv6 `struct in6_pktinfo { struct in6_addr ipi6_addr; int ipi6_ifindex; }` at IPPROTO_IPV6,
// type IPV6_PKTINFO (asked for with IPV6_RECVPKTINFO; on a dual-stack socket an IPv4 datagram
// reports it too, v4-mapped).
const SOL_IP = 0;
const IP_PKTINFO = 8;
const IPV6_RECVPKTINFO = 49;
const IPV6_PKTINFO = 50;
const CMSG_HDR = 16;
const PKTINFO_LEN = 12;
const PKTINFO6_LEN = 20;
/** CMSG_SPACE(sizeof(struct in6_pktinfo)), the larger of the two. */
const CMSG_SPACE_PKTINFO = 40;
/**
 * A control slot per mmsghdr: to send, UDP_SEGMENT at 0 and the packet info at
 * {@linkcode CMSG_SPACE_INT}, so that either or both form one run of control messages; to
 * receive, room for what the kernel writes (UDP_GRO and the packet info, in either order).
 */
const CMSG_SLOT = CMSG_SPACE_INT + CMSG_SPACE_PKTINFO;
/** Most control messages read of one datagram (the kernel writes 2 at most here). */
const MAX_CONTROL_MESSAGES = 8;
/** Most datagrams one GSO send carries (the kernel's UDP_MAX_SEGMENTS is 64 or 128). */
export const MAX_SEGMENTS = 64;
// A safety net only: close() wakes the poll through the eventfd.
const POLL_TIMEOUT_MS = 1000;

/** A zeroed {@linkcode SockAddr} (family 0: no address yet). */
export function newSockAddr(): SockAddr {
  // Its own ArrayBuffer keeps the bytes off the V8 heap, where no GC moves them (see MsgVec).
  return new Uint8Array(new ArrayBuffer(SOCKADDR_SLOT_LEN));
}

/** The `sa_family` of `addr` (host byte order, little-endian on every target of this code). */
function familyOf(addr: SockAddr): number {
  return addr[0]! | (addr[1]! << 8);
}

/** The `socklen_t` to pass with `addr`. */
function lengthOf(addr: SockAddr): number {
  return familyOf(addr) === AF_INET6 ? SOCKADDR_LEN : SOCKADDR_IN_LEN;
}

function checkSlot(addr: SockAddr): void {
  if (addr.length < SOCKADDR_SLOT_LEN) {
    throw new RangeError(
      `A socket address slot holds ${SOCKADDR_SLOT_LEN} bytes, got ${addr.length}; use newSockAddr()`,
    );
  }
}

/** Parses an IP literal, IPv6 optionally in brackets as in a URL ("[::1]"). */
function parseHost(host: string): IpAddress {
  const bracketed = host.startsWith("[") && host.endsWith("]");
  const address = parseIpAddress(bracketed ? host.slice(1, -1) : host);
  if (bracketed && address.family === 4) {
    throw new TypeError(`Cannot parse IP address "${host}": brackets are for IPv6 addresses`);
  }
  return address;
}

/** True for "0.0.0.0", "::" and "::ffff:0.0.0.0": every local address, not one. */
function isWildcard(addr: SockAddr): boolean {
  const v6 = familyOf(addr) === AF_INET6;
  const bytes = addr.subarray(v6 ? 8 : 4, v6 ? 24 : 8);
  const start = v6 && isV4Mapped(bytes) ? 12 : 0;
  for (let i = start; i < bytes.length; i++) if (bytes[i] !== 0) return false;
  return true;
}

function isV4Mapped(bytes: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (bytes[i] !== 0) return false;
  return bytes[10] === 0xff && bytes[11] === 0xff;
}

/**
 * Encodes `host:port` as a {@linkcode SockAddr}, into `out` when given.
 *
 * `family` is that of the socket that will use the address: an IPv4 host for an IPv6
 * (dual-stack) socket becomes v4-mapped ("::ffff:1.2.3.4"), the form in which such a socket
 * reports IPv4 peers, so that `sendTo` works and {@linkcode sameSockAddr} matches what `recv`
 * returned; a v4-mapped host for an IPv4 socket becomes plain IPv4. Without `family` the
 * host's own family is used.
 *
 * @example
 * ```ts
 * import { encodeSockAddr, formatSockAddr } from "./udp.ts";
 * console.log(formatSockAddr(encodeSockAddr("10.8.0.1", 1194, undefined, 6))); // [::ffff:10.8.0.1]:1194
 * ```
 * @throws {TypeError} when `host` is not an IP literal, or is IPv6 for an IPv4 socket
 * @throws {RangeError} when `port` is not an integer from 0 to 65535
 */
export function encodeSockAddr(
  host: string,
  port: number,
  out: SockAddr = newSockAddr(),
  family?: 4 | 6,
): SockAddr {
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new RangeError(`Cannot use port ${port} of "${host}": a port is an integer 0 to 65535`);
  }
  checkSlot(out);
  const address = parseHost(host);
  let bytes = address.bytes;
  let v6 = (family ?? address.family) === 6;
  if (v6 && bytes.length === 4) {
    bytes = new Uint8Array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ...bytes]);
  } else if (!v6 && bytes.length === 16) {
    if (!isV4Mapped(bytes)) {
      throw new TypeError(
        `Cannot reach "${host}" from an IPv4 socket; bind "::" to reach IPv6 peers`,
      );
    }
    bytes = bytes.subarray(12);
  }
  v6 = bytes.length === 16;
  out.fill(0);
  const view = new DataView(out.buffer, out.byteOffset, SOCKADDR_LEN);
  view.setUint16(0, v6 ? AF_INET6 : AF_INET, true);
  view.setUint16(2, port);
  out.set(bytes, v6 ? 8 : 4);
  return out;
}

/**
 * Formats a {@linkcode SockAddr} for messages: "1.2.3.4:5", "[::1]:5", "[fe80::1%2]:5" (with
 * the scope id when one is set), "(address family 0)" for an unset one. `format` joins the
 * address and the port; the VPN's log passes its own (mod/core/ip.ts `formatPeer`), which also
 * prints a v4-mapped address as IPv4, where this layer keeps the socket's exact view.
 */
export function formatSockAddr(
  addr: SockAddr,
  format = (host: string, port: number) =>
    host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`,
): string {
  const family = familyOf(addr);
  const port = (addr[2]! << 8) | addr[3]!;
  if (family === AF_INET) return format(addr.subarray(4, 8).join("."), port);
  if (family !== AF_INET6) return `(address family ${family})`;
  const scope = new DataView(addr.buffer, addr.byteOffset, SOCKADDR_LEN).getUint32(24, true);
  return format(`${formatIpAddress(addr.subarray(8, 24))}${scope ? `%${scope}` : ""}`, port);
}

/**
 * True when `a` and `b` hold the same family, port and address. IPv6 flow info and scope id are
 * not compared (a peer is its address and port). Allocates nothing: it runs per datagram.
 */
export function sameSockAddr(a: SockAddr, b: SockAddr): boolean {
  // Family and port are bytes 0-3 of both layouts.
  if (a[0] !== b[0] || a[1] !== b[1] || a[2] !== b[2] || a[3] !== b[3]) return false;
  const v6 = familyOf(a) === AF_INET6;
  const end = v6 ? 24 : 8;
  for (let i = v6 ? 8 : 4; i < end; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * True when `a` and `b` name the same local address to reply from (or both none). Allocates
 * nothing.
 */
export function sameLocalAddr(a: SockAddr, b: SockAddr): boolean {
  for (let i = SOCKADDR_LEN; i < SOCKADDR_SLOT_LEN; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Copies the slot `from`, peer and local address, into the slot `to`. Allocates nothing. */
export function copySockAddr(from: SockAddr, to: SockAddr): void {
  for (let i = 0; i < SOCKADDR_SLOT_LEN; i++) to[i] = from[i]!;
}

/**
 * The local address that `recv` found the slot's datagram sent to, which replies leave from
 * ("198.51.100.1", "2001:db8::1", "::ffff:10.0.0.1" on a dual-stack socket); undefined when
 * it holds none (a socket bound to one address, or an address made by `encodeSockAddr`).
 */
export function localAddressOf(addr: SockAddr): string | undefined {
  const family = addr[SOCKADDR_LEN]! | (addr[SOCKADDR_LEN + 1]! << 8);
  if (family === AF_INET) return addr.subarray(LOCAL_AT, LOCAL_AT + 4).join(".");
  if (family === AF_INET6) return formatIpAddress(addr.subarray(LOCAL_AT, LOCAL_AT + 16));
  return undefined;
}

/**
 * Writes a packet info control message (IP_PKTINFO for `family` 4, IPV6_PKTINFO for 6) at
 * `at` of `bytes` naming the local address of slot `addr` as the source, interface 0 (the
 * route chooses it). Returns its CMSG_SPACE, or 0 (nothing written) when the slot holds no
 * local address of that family. Allocates nothing: it runs per sent message.
 */
export function writePacketInfo(
  bytes: Uint8Array,
  at: number,
  family: 4 | 6,
  addr: SockAddr,
): number {
  const local = addr[SOCKADDR_LEN]! | (addr[SOCKADDR_LEN + 1]! << 8);
  if (local !== (family === 6 ? AF_INET6 : AF_INET)) return 0;
  const v6 = family === 6;
  const length = CMSG_HDR + (v6 ? PKTINFO6_LEN : PKTINFO_LEN);
  const space = v6 ? CMSG_SPACE_PKTINFO : CMSG_HDR + 16;
  bytes.fill(0, at, at + space);
  // struct cmsghdr { size_t cmsg_len; int cmsg_level; int cmsg_type; }, little-endian.
  bytes[at] = length;
  bytes[at + 8] = v6 ? IPPROTO_IPV6 : SOL_IP;
  bytes[at + 12] = v6 ? IPV6_PKTINFO : IP_PKTINFO;
  // IPv4: ipi_spec_dst (after ipi_ifindex) is the source; ipi_addr stays 0. IPv6: ipi6_addr.
  const to = at + CMSG_HDR + (v6 ? 0 : 4);
  const n = v6 ? 16 : 4;
  for (let i = 0; i < n; i++) bytes[to + i] = addr[LOCAL_AT + i]!;
  return space;
}

/**
 * Reads the control messages the kernel wrote for one received datagram, `length` bytes at
 * `at` of `view`: stores the local address of a packet info message (IP_PKTINFO's
 * ipi_spec_dst, IPV6_PKTINFO's ipi6_addr) into slot `into` (or clears it when there is none)
 * and returns the segment size of a UDP_GRO message, or 0: one datagram. Allocates nothing.
 */
export function readControl(view: DataView, at: number, length: number, into: SockAddr): number {
  into.fill(0, SOCKADDR_LEN, SOCKADDR_SLOT_LEN);
  let segment = 0;
  // Each message is at least a header long, so this loop ends within length / 16 turns; and
  // within MAX_CONTROL_MESSAGES whatever `length` says.
  for (let off = 0, turn = 0; off + CMSG_HDR <= length && turn < MAX_CONTROL_MESSAGES; turn++) {
    // cmsg_len is a size_t; the high half of a length that fits the slot is 0.
    const size = view.getUint32(at + off, true);
    if (size < CMSG_HDR || off + size > length) break;
    const level = view.getInt32(at + off + 8, true);
    const type = view.getInt32(at + off + 12, true);
    const data = at + off + CMSG_HDR;
    if (level === SOL_UDP && type === UDP_GRO && size >= CMSG_LEN_INT) {
      segment = view.getInt32(data, true);
    } else if (level === SOL_IP && type === IP_PKTINFO && size >= CMSG_HDR + PKTINFO_LEN) {
      into[SOCKADDR_LEN] = AF_INET;
      for (let i = 0; i < 4; i++) into[LOCAL_AT + i] = view.getUint8(data + 4 + i);
    } else if (
      level === IPPROTO_IPV6 && type === IPV6_PKTINFO && size >= CMSG_HDR + PKTINFO6_LEN
    ) {
      into[SOCKADDR_LEN] = AF_INET6;
      for (let i = 0; i < 16; i++) into[LOCAL_AT + i] = view.getUint8(data + i);
    }
    off += (size + 7) & ~7; // CMSG_ALIGN
  }
  return segment;
}

/** Counters of one socket; they only grow. */
export interface UdpStats {
  /** Datagrams returned by `recv()`; a GRO read counts every datagram it joined. */
  received: number;
  /** Datagrams the kernel accepted from `sendTo()` and `sendBatch()`. */
  sent: number;
  /** Datagrams dropped on send: socket buffer full, no route, refused, or socket closed. */
  sendErrors: number;
  /** Datagrams dropped on receive because they were larger than their slot buffer. */
  truncated: number;
  /** Datagrams of `sent` that left in UDP GSO messages, several datagrams to a message. */
  offloaded: number;
}

/** A UDP socket could not be bound; `message` says why and what to do. */
export class UdpError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "UdpError";
  }
}

/** A pointer's address as a bigint; 0 for a zero-length buffer. */
function addressOf(bytes: Uint8Array): bigint {
  // Reading `.buffer` moves a small typed array that V8 keeps inside its heap (where a GC may
  // move it) to memory of its own for good (JSTypedArray::GetBuffer); an ArrayBuffer's memory
  // never moves after that, so the address stays valid as long as the array lives.
  void bytes.buffer;
  return Deno.UnsafePointer.value(Deno.UnsafePointer.of(bytes));
}

/**
 * `struct mmsghdr[size]`, then `struct iovec[size]`, then a control slot of
 * {@linkcode CMSG_SLOT} bytes per mmsghdr (`UDP_SEGMENT` and packet info to send, `UDP_GRO`
 * and packet info as received), for one caller's buffer set on a socket of `family`. iovec i
 * points at `bufs[i]`. To receive, mmsghdr i takes iovec i and `addrs[i]`; to send,
 * {@linkcode MsgVec.group} lets one mmsghdr carry a run of iovecs as one GSO send. It keeps
 * references to the buffers and addresses it points at, so that they live at least as long as
 * the pointers.
 */
class MsgVec {
  readonly size: number;
  readonly family: 4 | 6;
  readonly view: DataView;
  readonly #bytes: Uint8Array;
  /** `&msgvec[i]`, made once so that a call starting mid-array allocates nothing. */
  readonly pointers: Deno.PointerObject[] = [];
  /** After {@linkcode group}: how many datagrams mmsghdr i carries. */
  readonly counts: number[];
  readonly #bufs: (Uint8Array | undefined)[];
  readonly #addrs: (SockAddr | undefined)[];
  /** The addresses of `addrs[i]`, of iovec i and of control slot i, as written. */
  readonly #addrPointers: bigint[];
  readonly #iovPointers: bigint[] = [];
  readonly #cmsgPointers: bigint[] = [];
  /** `&control[i]` + {@linkcode CMSG_SPACE_INT}: the packet info alone. */
  readonly #infoPointers: bigint[] = [];
  /** Whether `point` asked for control messages, so that `control` reads them. */
  #control = false;

  constructor(size: number, family: 4 | 6) {
    this.size = size;
    this.family = family;
    const bytes = new Uint8Array(new ArrayBuffer(size * (MMSGHDR_LEN + IOVEC_LEN + CMSG_SLOT)));
    // The arrays keep the memory alive as long as the pointers into it.
    this.#bytes = bytes;
    this.view = new DataView(bytes.buffer);
    const base = addressOf(bytes);
    this.#bufs = new Array<undefined>(size);
    this.#addrs = new Array<undefined>(size);
    this.#addrPointers = new Array<bigint>(size).fill(0n);
    this.counts = new Array<number>(size).fill(0);
    for (let i = 0; i < size; i++) {
      const at = i * MMSGHDR_LEN;
      this.#iovPointers.push(base + BigInt(size * MMSGHDR_LEN + i * IOVEC_LEN));
      const cmsg = this.#cmsgAt(i);
      this.#cmsgPointers.push(base + BigInt(cmsg));
      this.#infoPointers.push(base + BigInt(cmsg + CMSG_SPACE_INT));
      // struct cmsghdr { size_t cmsg_len; int cmsg_level; int cmsg_type; } + a u16 segment size.
      this.view.setUint32(cmsg, CMSG_LEN_U16, true);
      this.view.setInt32(cmsg + 8, SOL_UDP, true);
      this.view.setInt32(cmsg + 12, UDP_SEGMENT, true);
      this.view.setBigUint64(at + MSG_IOV, this.#iovPointers[i]!, true);
      this.view.setBigUint64(at + MSG_IOVLEN, 1n, true);
      this.pointers.push(Deno.UnsafePointer.create(base + BigInt(at))!);
    }
  }

  #iovAt(i: number): number {
    return this.size * MMSGHDR_LEN + i * IOVEC_LEN;
  }

  /**
   * Points iovec i at `bufs[i]` and remembers the address of `addrs[i]` where they changed,
   * for slots 0..count, and sets iovec i's length: `lengths[i]` when given, else the whole
   * buffer. Checks run on every call: a wrong pointer or length here is memory corruption, not
   * an exception.
   */
  #slots(bufs: Uint8Array[], addrs: SockAddr[], count: number, lengths?: number[]): void {
    const view = this.view;
    for (let i = 0; i < count; i++) {
      const buf = bufs[i]!;
      const addr = addrs[i];
      if (addr === undefined) {
        throw new RangeError(`No address slot ${i}: addrs needs one slot per buffer`);
      }
      checkSlot(addr);
      const iov = this.#iovAt(i);
      if (buf !== this.#bufs[i]) {
        view.setBigUint64(iov, addressOf(buf), true);
        this.#bufs[i] = buf;
      }
      if (addr !== this.#addrs[i]) {
        this.#addrPointers[i] = addressOf(addr);
        this.#addrs[i] = addr;
      }
      // A detached buffer has length 0, so a stale pointer is never written through.
      let length = buf.length;
      if (lengths !== undefined) {
        const size = lengths[i]!;
        if (!(size >= 0 && size <= length)) {
          throw new RangeError(`Datagram ${i} is ${size} bytes, its buffer holds ${length}`);
        }
        length = size;
      }
      // iov_len is a size_t: the high half stays 0 from the start, the low half takes the
      // length without the BigInt a 64-bit write would allocate.
      view.setUint32(iov + 8, length, true);
    }
  }

  /**
   * To receive: mmsghdr i takes all of `bufs[i]`, an address of up to
   * {@linkcode SOCKADDR_LEN} bytes into `addrs[i]` and, with `control` (GRO or packet info
   * on), control messages into control slot i (msg_namelen and msg_controllen are in-out: the
   * kernel lowers them, so this runs before every call).
   */
  point(bufs: Uint8Array[], addrs: SockAddr[], count: number, control: boolean): void {
    this.#slots(bufs, addrs, count);
    this.#control = control;
    for (let i = 0; i < count; i++) {
      const at = i * MMSGHDR_LEN;
      this.view.setBigUint64(at, this.#addrPointers[i]!, true);
      this.view.setUint32(at + MSG_NAMELEN, SOCKADDR_LEN, true);
      this.view.setBigUint64(at + MSG_CONTROL, control ? this.#cmsgPointers[i]! : 0n, true);
      this.view.setUint32(at + MSG_CONTROLLEN, control ? CMSG_SLOT : 0, true);
    }
  }

  /**
   * After a receive: stores the local address of read i into `into` (none without packet
   * info) and returns its GRO segment size, or 0: one datagram.
   */
  control(i: number, into: SockAddr): number {
    if (!this.#control) {
      into.fill(0, SOCKADDR_LEN, SOCKADDR_SLOT_LEN);
      return 0;
    }
    const length = this.view.getUint32(i * MMSGHDR_LEN + MSG_CONTROLLEN, true);
    return readControl(this.view, this.#cmsgAt(i), Math.min(length, CMSG_SLOT), into);
  }

  /**
   * To send datagrams `from..count` (datagram i is `bufs[i][0..lengths[i])` to `addrs[i]`):
   * writes mmsghdr 0, 1, ... and returns how many. With `gso`, a run of datagrams to one
   * address, all of the first one's size but a shorter last, up to {@linkcode MAX_SEGMENTS}
   * and {@linkcode MAX_UDP_PAYLOAD} bytes, is one mmsghdr with a `UDP_SEGMENT` control message:
   * the kernel takes it through its stack as one packet and cuts it late (UDP GSO). With
   * `pktinfo`, a message to a slot that holds a local address names it as the source.
   */
  group(
    bufs: Uint8Array[],
    addrs: SockAddr[],
    from: number,
    count: number,
    lengths: number[],
    gso: boolean,
    pktinfo: boolean,
  ): number {
    this.#slots(bufs, addrs, count, lengths);
    const view = this.view;
    let messages = 0;
    for (let first = from; first < count;) {
      const size = lengths[first]!;
      const addr = addrs[first]!;
      let n = 1;
      if (gso && size > 0) {
        for (let total = size; first + n < count && n < MAX_SEGMENTS;) {
          const next = lengths[first + n]!;
          if (next === 0 || next > size || total + next > MAX_UDP_PAYLOAD) break;
          const to = addrs[first + n]!;
          // One message has one source: a run also shares the local address.
          if (to !== addr && !(sameSockAddr(to, addr) && (!pktinfo || sameLocalAddr(to, addr)))) {
            break;
          }
          total += next;
          n++;
          if (next < size) break; // only the last may be shorter
        }
      }
      const at = messages * MMSGHDR_LEN;
      view.setBigUint64(at, this.#addrPointers[first]!, true);
      view.setUint32(at + MSG_NAMELEN, lengthOf(addr), true);
      view.setBigUint64(at + MSG_IOV, this.#iovPointers[first]!, true);
      view.setUint32(at + MSG_IOVLEN, n, true);
      const cmsg = this.#cmsgAt(messages);
      const info = pktinfo
        ? writePacketInfo(this.#bytes, cmsg + CMSG_SPACE_INT, this.family, addr)
        : 0;
      if (n > 1) {
        // UDP_SEGMENT, and the packet info right after it when there is one.
        view.setBigUint64(at + MSG_CONTROL, this.#cmsgPointers[messages]!, true);
        view.setUint32(at + MSG_CONTROLLEN, CMSG_SPACE_INT + info, true);
        view.setUint16(cmsg + CMSG_HDR, size, true);
      } else if (info > 0) {
        view.setBigUint64(at + MSG_CONTROL, this.#infoPointers[messages]!, true);
        view.setUint32(at + MSG_CONTROLLEN, info, true);
      } else {
        view.setBigUint64(at + MSG_CONTROL, 0n, true);
        view.setUint32(at + MSG_CONTROLLEN, 0, true);
      }
      this.counts[messages++] = n;
      first += n;
    }
    return messages;
  }

  #cmsgAt(i: number): number {
    return this.size * (MMSGHDR_LEN + IOVEC_LEN) + i * CMSG_SLOT;
  }
}

/** A UDP socket (`SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC`) with batch receive and send. */
export class UdpSocket implements Disposable {
  /** 4 for an IPv4 socket; 6 for an IPv6 one, dual-stack, whose IPv4 peers are v4-mapped. */
  readonly family: 4 | 6;
  /** The bound port: the one asked for, or the one the kernel chose for port 0. */
  readonly port: number;
  /** Receive buffer the kernel granted, as `getsockopt(SO_RCVBUF)` says (twice the payload). */
  readonly receiveBufferBytes: number;
  /** Send buffer the kernel granted, as `getsockopt(SO_SNDBUF)` says (twice the payload). */
  readonly sendBufferBytes: number;
  /**
   * Set when the kernel granted smaller buffers than {@linkcode SOCKET_BUFFER_BYTES}: a
   * message saying so and how to raise the limit, for the caller to log. Small buffers drop
   * bursts at high rates.
   */
  readonly bufferWarning: string | undefined;
  readonly stats: UdpStats = { received: 0, sent: 0, sendErrors: 0, truncated: 0, offloaded: 0 };

  readonly #fd: number;
  readonly #ready: Readiness;
  #receiving = false;
  #gso = true;
  #gro = false;
  readonly #multihome: boolean;
  readonly #name: string;
  /** A one-datagram batch, for `sendTo` of a reply that names its source. */
  readonly #one = {
    bufs: [new Uint8Array(0)] as Uint8Array[],
    sizes: [0],
    addrs: [newSockAddr()],
  };
  readonly #recvVecs = new WeakMap<Uint8Array[], MsgVec>();
  readonly #sendVecs = new WeakMap<Uint8Array[], MsgVec>();

  private constructor(
    fd: number,
    ready: Readiness,
    family: 4 | 6,
    port: number,
    name: string,
    multihome: boolean,
  ) {
    this.#fd = fd;
    this.#ready = ready;
    this.family = family;
    this.port = port;
    this.#name = name;
    this.#multihome = multihome;
    this.receiveBufferBytes = getIntOption(fd, SO_RCVBUF);
    this.sendBufferBytes = getIntOption(fd, SO_SNDBUF);
    // The kernel doubles what it grants, for its bookkeeping overhead.
    const wanted = 2 * SOCKET_BUFFER_BYTES;
    this.bufferWarning = this.receiveBufferBytes < wanted || this.sendBufferBytes < wanted
      ? `UDP ${name}: the kernel granted socket buffers of ${this.receiveBufferBytes / 2} ` +
        `(receive) and ${this.sendBufferBytes / 2} (send) bytes, less than the ` +
        `${SOCKET_BUFFER_BYTES} asked for; bursts may drop. Raise the limits ` +
        `(sysctl -w net.core.rmem_max=${SOCKET_BUFFER_BYTES} net.core.wmem_max=${SOCKET_BUFFER_BYTES}) ` +
        `or run with CAP_NET_ADMIN`
      : undefined;
  }

  /**
   * Binds `host:port` (port 0: one the kernel chooses, see {@linkcode UdpSocket.port}).
   * An IPv4 host makes an IPv4 socket; an IPv6 host an IPv6 one that also takes IPv4 ("::" is
   * every address of both families). A wildcard address turns on packet info (see
   * {@linkcode UdpSocket.multihome}).
   *
   * @example
   * ```ts
   * import { UdpSocket } from "./udp.ts";
   * using socket = UdpSocket.bind("127.0.0.1", 0);
   * console.log(socket.port > 0); // true
   * ```
   * @throws {UdpError} when the address is in use, not local, or the port privileged
   * @throws {TypeError} when `host` is not an IP literal
   */
  static bind(host: string, port: number): UdpSocket {
    const address = encodeSockAddr(host, port);
    const v6 = familyOf(address) === AF_INET6;
    const name = formatSockAddr(address);
    const c = libc();
    const fd = c.socket(v6 ? AF_INET6 : AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) throw bindError(name, port, "socket", errno());
    try {
      // Dual-stack whatever net.ipv6.bindv6only says: "::" must take IPv4 clients too.
      if (v6) setIntOption(fd, IPPROTO_IPV6, IPV6_V6ONLY, 0, "IPV6_V6ONLY");
      growBuffer(fd, SO_RCVBUFFORCE, SO_RCVBUF, "SO_RCVBUF");
      growBuffer(fd, SO_SNDBUFFORCE, SO_SNDBUF, "SO_SNDBUF");
      if (c.bind(fd, address, lengthOf(address)) < 0) throw bindError(name, port, "bind", errno());
      // On a wildcard address the kernel would pick each reply's source by its route: ask it
      // where each datagram went instead, to reply from there (a socket bound to one address
      // always sends from it). A dual-stack socket reports IPv4 ones v4-mapped.
      const multihome = isWildcard(address);
      if (multihome && v6) setIntOption(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, 1, "IPV6_RECVPKTINFO");
      if (multihome && !v6) setIntOption(fd, SOL_IP, IP_PKTINFO, 1, "IP_PKTINFO");
      const local = newSockAddr();
      const length = new Uint32Array([SOCKADDR_LEN]);
      check("getsockname", c.getsockname(fd, local, length));
      const boundPort = (local[2]! << 8) | local[3]!;
      const family = v6 ? 6 : 4;
      return new UdpSocket(
        fd,
        new Readiness(fd),
        family,
        boundPort,
        formatSockAddr(local),
        multihome,
      );
    } catch (error) {
      c.close(fd);
      throw error;
    }
  }

  /**
   * Waits for datagrams and receives up to `bufs.length`: datagram i into `bufs[i]`, its length
   * into `sizes[i]`, its source into `addrs[i]` (on a dual-stack socket IPv4 sources arrive
   * v4-mapped) with, on a {@linkcode UdpSocket.multihome} socket, the local address it was
   * sent to: a reply to that slot leaves from there. Datagrams larger than their buffer are dropped and counted in
   * `stats.truncated`. Resolves the count, or 0 once the socket is closed.
   *
   * After {@linkcode enableGro}, `segments` is required: `segments[i]` is the size of the
   * datagrams the kernel joined into read i (all of it but a shorter last), 0 for a read of one
   * datagram.
   *
   * The structs pointing at the slots are cached per `bufs` array: pass the same arrays every
   * time. Replacing an element is allowed (its slot is re-pointed on the next call).
   */
  async recv(
    bufs: Uint8Array[],
    sizes: number[],
    addrs: SockAddr[],
    segments?: number[],
  ): Promise<number> {
    if (this.#receiving) throw new Error(`UDP ${this.#name}: recv() is already in progress`);
    if (this.#gro && segments === undefined) {
      throw new Error(`UDP ${this.#name}: GRO is on, so recv() needs the segments array`);
    }
    const vec = vecFor(this.#recvVecs, bufs, this.family);
    this.#receiving = true;
    try {
      while (!this.#ready.closed) {
        const count = this.#drain(vec, bufs, sizes, addrs, segments);
        if (count > 0) return count;
        if (!await this.#ready.wait(POLL_TIMEOUT_MS)) break;
      }
      return 0;
    } finally {
      this.#receiving = false;
    }
  }

  /**
   * Lets the kernel join consecutive datagrams from one peer, all of one size but a shorter
   * last, into one read (UDP GRO): `recv` then returns them in one slot and gives their size
   * in `segments`. A joined read is up to 64 KiB: smaller slots drop it as truncated. False, and
   * nothing changes, when the kernel refuses.
   */
  enableGro(): boolean {
    const on = new Int32Array([1]);
    if (libc().setsockopt(this.#fd, SOL_UDP, UDP_GRO, on, 4) !== 0) return false;
    this.#gro = true;
    return true;
  }

  /** One `recvmmsg` of what the kernel holds, truncated datagrams dropped; 0 when empty. */
  #drain(
    vec: MsgVec,
    bufs: Uint8Array[],
    sizes: number[],
    addrs: SockAddr[],
    segments: number[] | undefined,
  ): number {
    let retried = false;
    for (;;) {
      // Before every call: the kernel lowered msg_namelen and msg_controllen of the slots it
      // filled last time (msg_len and msg_flags it only writes).
      vec.point(bufs, addrs, vec.size, this.#gro || this.#multihome);
      const n = libc().recvmmsg(this.#fd, vec.pointers[0]!, vec.size, MSG_DONTWAIT, null);
      if (n < 0) {
        const code = errno();
        if (code === EAGAIN) return 0;
        if (code === EINTR) continue;
        // errno comes from a second FFI call and may not be this call's (see LinuxTun's
        // drain): only an error that repeats at once is the kernel's.
        if (!retried) {
          retried = true;
          continue;
        }
        throw new ErrnoError(`recvmmsg(UDP ${this.#name})`, code);
      }
      retried = false;
      const kept = this.#collect(vec, n, bufs, sizes, addrs, segments);
      // Only truncated datagrams: the queue may hold more, so look again before polling.
      if (kept > 0) return kept;
    }
  }

  /**
   * Lengths of the `n` reads, with their GRO segment sizes when `segments` is given, truncated
   * reads dropped and the rest moved up.
   */
  #collect(
    vec: MsgVec,
    n: number,
    bufs: Uint8Array[],
    sizes: number[],
    addrs: SockAddr[],
    segments: number[] | undefined,
  ): number {
    const view = vec.view;
    let kept = 0;
    for (let i = 0; i < n; i++) {
      const at = i * MMSGHDR_LEN;
      const length = view.getUint32(at + MSG_LEN, true);
      if ((view.getInt32(at + MSG_FLAGS, true) & MSG_TRUNC) !== 0) {
        this.stats.truncated++;
        continue;
      }
      if (kept !== i) {
        // Rare (only after a truncated datagram), so the subarray allocation does not matter.
        const to = bufs[kept]!;
        if (length > to.length) { // slots of unequal sizes: it would not have fit there
          this.stats.truncated++;
          continue;
        }
        to.set(bufs[i]!.subarray(0, length));
        copySockAddr(addrs[i]!, addrs[kept]!);
      }
      const segment = vec.control(i, addrs[kept]!);
      this.stats.received += segment > 0 ? Math.ceil(length / segment) : 1;
      if (segments !== undefined) segments[kept] = segment;
      sizes[kept++] = length;
    }
    return kept;
  }

  /**
   * Sends one datagram, `buf[0..length)`, to `addr` now (from its local address, when the slot
   * holds one and the socket is {@linkcode UdpSocket.multihome}). Returns false, and counts it
   * in `stats.sendErrors`, when the kernel refuses it: socket buffer full (it drops, as a NIC
   * would), no route, or the socket closed.
   */
  sendTo(buf: Uint8Array, length: number, addr: SockAddr): boolean {
    if (!(length >= 0 && length <= buf.length)) {
      throw new RangeError(`Datagram is ${length} bytes, its buffer holds ${buf.length}`);
    }
    checkSlot(addr);
    if (this.#multihome && addr[SOCKADDR_LEN] !== 0) {
      // sendto(2) takes no control message: a batch of one does.
      const one = this.#one;
      one.bufs[0] = buf;
      one.sizes[0] = length;
      one.addrs[0] = addr;
      return this.sendBatch(one.bufs, one.sizes, one.addrs, 1) === 1;
    }
    const n = this.#ready.closed
      ? -1
      : libc().sendto(this.#fd, buf, length, MSG_DONTWAIT, addr, lengthOf(addr));
    if (n === length) {
      this.stats.sent++;
      return true;
    }
    this.stats.sendErrors++;
    return false;
  }

  /**
   * Sends `bufs[0..count)`, datagram i being `bufs[i][0..sizes[i])` to `addrs[i]`, in as few
   * `sendmmsg` calls as the kernel allows (one when all go). A datagram the kernel refuses is
   * skipped; once the socket buffer is full the rest of the batch is dropped. Returns how many
   * the kernel accepted; the others count in `stats.sendErrors`.
   *
   * The structs pointing at the slots are cached per `bufs` array, as for `recv()`.
   */
  sendBatch(bufs: Uint8Array[], sizes: number[], addrs: SockAddr[], count: number): number {
    if (!(Number.isInteger(count) && count >= 0 && count <= bufs.length)) {
      throw new RangeError(`Cannot send ${count} datagrams from ${bufs.length} buffers`);
    }
    if (count === 0) return 0;
    if (this.#ready.closed) {
      this.stats.sendErrors += count;
      return 0;
    }
    const vec = vecFor(this.#sendVecs, bufs, this.family);
    const sendmmsg = libc().sendmmsg;
    let sent = 0;
    let done = 0;
    sending: while (done < count) {
      const messages = vec.group(bufs, addrs, done, count, sizes, this.#gso, this.#multihome);
      for (let next = 0; next < messages;) {
        const n = sendmmsg(this.#fd, vec.pointers[next]!, messages - next, MSG_DONTWAIT);
        if (n > 0) {
          for (const end = next + n; next < end; next++) {
            const carried = vec.counts[next]!;
            sent += carried;
            done += carried;
            if (carried > 1) this.stats.offloaded += carried;
          }
          continue;
        }
        // The kernel reports an error only for the first message of a call; that one failed.
        const code = errno();
        if (code === EINTR) continue;
        if (code === EAGAIN) break sending;
        if (vec.counts[next]! > 1 && (code === EMSGSIZE || code === EINVAL || code === EIO)) {
          // This route or device takes no UDP GSO (EMSGSIZE: a segment over the path MTU;
          // EINVAL: too many segments for this kernel; EIO: no checksum offload): send one
          // datagram per message from now on.
          this.#gso = false;
          continue sending;
        }
        done += vec.counts[next++]!;
      }
    }
    this.stats.sent += sent;
    this.stats.sendErrors += count - sent;
    return sent;
  }

  /**
   * True when the socket is bound to a wildcard address and so reports each datagram's local
   * address in its slot, and replies from it (IP_PKTINFO, IPV6_PKTINFO); false when bound to
   * one address, which is always the source.
   */
  get multihome(): boolean {
    return this.#multihome;
  }

  /** True while sends may use UDP GSO; false once the kernel refused it on this socket. */
  get segmentationOffload(): boolean {
    return this.#gso;
  }

  /**
   * Closes the socket. A pending `recv()` is woken and resolves 0; the fds are released once
   * its poll has returned. Safe to call twice.
   */
  close(): void {
    this.#ready.close(() => libc().close(this.#fd));
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** The cached structs for `bufs`, built on first use or when the array changed length. */
function vecFor(cache: WeakMap<Uint8Array[], MsgVec>, bufs: Uint8Array[], family: 4 | 6): MsgVec {
  let vec = cache.get(bufs);
  if (vec === undefined || vec.size !== bufs.length) {
    if (bufs.length === 0) throw new RangeError("A batch needs at least one buffer");
    vec = new MsgVec(bufs.length, family);
    cache.set(bufs, vec);
  }
  return vec;
}

function setIntOption(fd: number, level: number, option: number, value: number, name: string) {
  check(`setsockopt(${name})`, libc().setsockopt(fd, level, option, new Int32Array([value]), 4));
}

function getIntOption(fd: number, option: number): number {
  const value = new Int32Array(1);
  const length = new Uint32Array([4]);
  check("getsockopt", libc().getsockopt(fd, SOL_SOCKET, option, value, length));
  return value[0]!;
}

/**
 * Asks for {@linkcode SOCKET_BUFFER_BYTES}. The FORCE option (CAP_NET_ADMIN) goes past
 * net.core.rmem_max/wmem_max; without the capability it fails and the plain option is capped
 * at those limits, which the constructor reports in `bufferWarning`.
 */
function growBuffer(fd: number, force: number, plain: number, name: string): void {
  const value = new Int32Array([SOCKET_BUFFER_BYTES]);
  if (libc().setsockopt(fd, SOL_SOCKET, force, value, 4) === 0) return;
  check(`setsockopt(${name})`, libc().setsockopt(fd, SOL_SOCKET, plain, value, 4));
}

function bindError(name: string, port: number, call: string, code: number): Error {
  const cause = new ErrnoError(`${call}(UDP ${name})`, code);
  const because = (why: string) => new UdpError(`Cannot bind UDP ${name}: ${why}`, { cause });
  switch (cause.code) {
    case "EADDRINUSE":
      return because(
        `the address is already in use; stop the process holding it (ss -ulpn 'sport = :${port}' shows it) or choose another port`,
      );
    case "EACCES":
      return because(
        "ports below 1024 need root or CAP_NET_BIND_SERVICE; choose a port from 1024 up",
      );
    case "EADDRNOTAVAIL":
      return because(
        'no interface of this host has that address; bind "0.0.0.0", "::" or an address of this host',
      );
    case "EAFNOSUPPORT":
      return because('IPv6 is disabled on this host; bind an IPv4 address such as "0.0.0.0"');
  }
  return cause;
}
