/**
 * rtnetlink through an AF_NETLINK socket: bring links up and down, set their MTU, move them
 * between network namespaces, and add, remove and list addresses and routes, the way `ip link`,
 * `ip addr` and `ip route` do, without running them.
 *
 * Every request is one synchronous send() and recv() until the kernel's answer with the same
 * sequence number: rtnetlink handles a request inside the send() call, so the answer is
 * already queued when recv() runs, and SO_RCVTIMEO bounds the wait if it is not. The message
 * bytes are built and read in `netlink_message.ts`.
 *
 * @module
 */

import {
  AF_INET,
  AF_INET6,
  AF_NETLINK,
  EINTR,
  SO_RCVTIMEO,
  SOCK_CLOEXEC,
  SOCK_RAW,
  SOL_SOCKET,
} from "./constants.ts";
import { check, cString, errno, ErrnoError, libc } from "./libc.ts";
import {
  type AddressInfo,
  decodeAddress,
  decodeLink,
  decodeRoute,
  decodeStatus,
  encodeAddressRequest,
  encodeDumpRequest,
  encodeGetLinkRequest,
  encodeRouteGetRequest,
  encodeRouteRequest,
  encodeSetLinkRequest,
  type IpFamily,
  type LinkChange,
  type LinkInfo,
  NETLINK_CAP_ACK,
  NETLINK_EXT_ACK,
  NETLINK_ROUTE,
  type NetlinkMessage,
  NLM_F_DUMP_INTR,
  NLMSG_DONE,
  NLMSG_ERROR,
  parseMessages,
  type RouteInfo,
  type RouteSpec,
  RT_TABLE_MAIN,
  RTM_DELADDR,
  RTM_DELROUTE,
  RTM_GETADDR,
  RTM_GETROUTE,
  RTM_NEWADDR,
  RTM_NEWLINK,
  RTM_NEWROUTE,
  SOL_NETLINK,
} from "./netlink_message.ts";

export type { AddressInfo, IpFamily, LinkInfo, RouteInfo, RouteSpec };

/** <sys/socket.h> MSG_TRUNC: recv() returns the datagram's real length even when cut short. */
const MSG_TRUNC = 0x20;
/** How long one recv() waits for the kernel before the request fails with EAGAIN. */
const RECEIVE_TIMEOUT_SECONDS = 5;
/**
 * The receive buffer. The kernel fills each dump datagram up to the buffer size last seen by
 * recvmsg(), at most 32 KiB; twice that leaves room for one oversized single reply.
 */
const RECEIVE_BUFFER_BYTES = 65_536;
/** The most datagrams one answer may take: a dump of about a million routes. */
const MAX_READS_PER_ANSWER = 65_536;
/** How often a dump is repeated when a concurrent change interrupted it (NLM_F_DUMP_INTR). */
const DUMP_ATTEMPTS = 3;
/** The most sequence numbers one raw request may take: a batch of that many messages. */
const MAX_SEQS_PER_REQUEST = 4096;
/** How often a recv() interrupted by a signal is retried. */
const MAX_EINTR_RETRIES = 16;

/**
 * An rtnetlink socket (AF_NETLINK, NETLINK_ROUTE) in the network namespace of the calling
 * thread. Needs `--allow-ffi`, and CAP_NET_ADMIN for changes.
 *
 * A failed request throws an {@linkcode ErrnoError} whose `call` names the request and its
 * arguments (e.g. `RTM_NEWROUTE 192.168.50.0/24 dev 99`) and whose message carries the kernel's
 * own explanation where it gives one.
 *
 * @example Give a link an address and a route
 * ```ts ignore
 * import { Netlink } from "./netlink.ts";
 *
 * using netlink = Netlink.open();
 * const tun = netlink.linkIndex("tun0");
 * netlink.setMtu(tun, 1400);
 * netlink.setLinkUp(tun);
 * netlink.addAddress(tun, "10.8.0.1/24");
 * netlink.addRoute({ destination: "192.168.50.0/24", gateway: "10.8.0.2" });
 * ```
 */
export class Netlink implements Disposable {
  #fd: number;
  #seq = 0;
  readonly #buffer = new Uint8Array(RECEIVE_BUFFER_BYTES);

  private constructor(fd: number) {
    this.#fd = fd;
  }

  /**
   * Opens and binds the socket (the kernel picks the port id), with SO_RCVTIMEO so that no
   * recv() blocks for ever, NETLINK_EXT_ACK for the kernel's error texts and NETLINK_CAP_ACK so
   * that an error does not echo the whole request back.
   *
   * `protocol` is NETLINK_ROUTE for the methods of this class; another netlink protocol (e.g.
   * NETLINK_NETFILTER, 12) is spoken through {@linkcode Netlink.request} alone.
   */
  static open(protocol: number = NETLINK_ROUTE): Netlink {
    const c = libc();
    const fd = check(
      `socket(AF_NETLINK, ${protocol === NETLINK_ROUTE ? "NETLINK_ROUTE" : protocol})`,
      c.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, protocol),
    );
    try {
      // struct timeval { time_t tv_sec; suseconds_t tv_usec; }
      const timeout = new BigInt64Array([BigInt(RECEIVE_TIMEOUT_SECONDS), 0n]);
      const timeoutBytes = new Uint8Array(timeout.buffer);
      check(
        "setsockopt(SO_RCVTIMEO)",
        c.setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, timeoutBytes, timeoutBytes.length),
      );
      const on = new Uint8Array(new Int32Array([1]).buffer);
      check("setsockopt(NETLINK_EXT_ACK)", c.setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, on, 4));
      check("setsockopt(NETLINK_CAP_ACK)", c.setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, on, 4));
      // struct sockaddr_nl { sa_family_t nl_family; unsigned short nl_pad; __u32 nl_pid;
      //                      __u32 nl_groups; }: port 0 lets the kernel choose, no groups.
      const address = new Uint8Array(12);
      new DataView(address.buffer).setUint16(0, AF_NETLINK, true);
      check("bind(AF_NETLINK)", c.bind(fd, address, address.length));
    } catch (error) {
      c.close(fd);
      throw error;
    }
    return new Netlink(fd);
  }

  /** Closes the socket; calling it again does nothing. */
  close(): void {
    if (this.#fd < 0) return;
    libc().close(this.#fd);
    this.#fd = -1;
  }

  /** Same as {@linkcode Netlink.close}. */
  [Symbol.dispose](): void {
    this.close();
  }

  /**
   * The index of the link named `name` in this thread's namespace.
   *
   * @throws {ErrnoError} `if_nametoindex("tun9") failed: ENODEV (errno 19)` when there is none.
   */
  linkIndex(name: string): number {
    const index = libc().if_nametoindex(cString(name));
    if (index === 0) {
      throw new ErrnoError(`if_nametoindex("${name}")`, errno(), `no link named "${name}"`);
    }
    return index;
  }

  /** Sets IFF_UP on link `ifindex`, like `ip link set DEV up`. */
  setLinkUp(ifindex: number): void {
    this.#setLink(`RTM_SETLINK dev ${ifindex} up`, ifindex, { up: true });
  }

  /** Clears IFF_UP on link `ifindex`, like `ip link set DEV down`. */
  setLinkDown(ifindex: number): void {
    this.#setLink(`RTM_SETLINK dev ${ifindex} down`, ifindex, { up: false });
  }

  /** Sets the MTU of link `ifindex`, like `ip link set DEV mtu MTU`. */
  setMtu(ifindex: number, mtu: number): void {
    this.#setLink(`RTM_SETLINK dev ${ifindex} mtu ${mtu}`, ifindex, { mtu });
  }

  /**
   * Moves link `ifindex` into the namespace that `netnsFd` refers to (an open fd of
   * /var/run/netns/NAME or /proc/PID/ns/net), like `ip link set DEV netns NAME`. The caller
   * keeps and closes the fd. The link leaves this namespace: its index here is gone.
   */
  setLinkNetns(ifindex: number, netnsFd: number): void {
    this.#setLink(`RTM_SETLINK dev ${ifindex} netns fd ${netnsFd}`, ifindex, { netnsFd });
  }

  /** The name, MTU and up state of link `ifindex`. */
  getLink(ifindex: number): LinkInfo {
    const call = `RTM_GETLINK dev ${ifindex}`;
    const reply = this.#exchange(call, (seq) => encodeGetLinkRequest(seq, ifindex))
      .find((message) => message.type === RTM_NEWLINK);
    if (reply === undefined) throw new Error(`${call}: the kernel acknowledged without a link`);
    return decodeLink(reply.payload);
  }

  /**
   * Adds `cidr` ("10.8.0.1/24", "fd00::1/64") to link `ifindex`, like `ip addr add`; for IPv4
   * with the broadcast address too.
   *
   * @throws {ErrnoError} EEXIST when the link already has that address.
   */
  addAddress(ifindex: number, cidr: string): void {
    this.#exchange(
      `RTM_NEWADDR ${cidr} dev ${ifindex}`,
      (seq) => encodeAddressRequest(RTM_NEWADDR, seq, ifindex, cidr),
    );
  }

  /**
   * Removes `cidr` from link `ifindex`, like `ip addr del`.
   *
   * @throws {ErrnoError} EADDRNOTAVAIL when the link does not have that address.
   */
  removeAddress(ifindex: number, cidr: string): void {
    this.#exchange(
      `RTM_DELADDR ${cidr} dev ${ifindex}`,
      (seq) => encodeAddressRequest(RTM_DELADDR, seq, ifindex, cidr),
    );
  }

  /**
   * Adds a static route to the main table, like `ip route add`.
   *
   * @throws {ErrnoError} EEXIST when the route exists, ENODEV for a missing link, ENETUNREACH
   * for a gateway that is not on a connected network.
   */
  addRoute(route: RouteSpec): void {
    this.#exchange(
      `RTM_NEWROUTE ${describeRoute(route)}`,
      (seq) => encodeRouteRequest(RTM_NEWROUTE, seq, route),
    );
  }

  /**
   * Removes a route from the main table, like `ip route del`: fields left out match any value.
   *
   * @throws {ErrnoError} ESRCH when no route matches.
   */
  removeRoute(route: RouteSpec): void {
    this.#exchange(
      `RTM_DELROUTE ${describeRoute(route)}`,
      (seq) => encodeRouteRequest(RTM_DELROUTE, seq, route),
    );
  }

  /** The IPv4 and IPv6 addresses of link `ifindex`, or of every link. */
  listAddresses(ifindex?: number): AddressInfo[] {
    return this.#dump("RTM_GETADDR dump", (seq) => encodeDumpRequest(RTM_GETADDR, seq))
      .flatMap((message) => message.type === RTM_NEWADDR ? [decodeAddress(message.payload)] : [])
      .filter((address): address is AddressInfo =>
        address !== undefined && (ifindex === undefined || address.ifindex === ifindex)
      );
  }

  /**
   * How the kernel would send a packet to the address `destination` now, like
   * `ip route get`: through which link, via which gateway (none when the address is on a
   * connected network), and from which source address.
   *
   * @throws {ErrnoError} ENETUNREACH when no route leads there.
   */
  routeGet(destination: string): RouteLookup {
    const call = `RTM_GETROUTE ${destination}`;
    const reply = this.#exchange(call, (seq) => encodeRouteGetRequest(seq, destination))
      .find((message) => message.type === RTM_NEWROUTE);
    const route = reply === undefined ? undefined : decodeRoute(reply.payload);
    if (route?.ifindex === undefined) {
      throw new Error(`${call}: the kernel answered without an output link`);
    }
    const lookup: RouteLookup = { ifindex: route.ifindex };
    if (route.gateway !== undefined) lookup.gateway = route.gateway;
    if (route.source !== undefined) lookup.source = route.source;
    return lookup;
  }

  /** The routes of the main table, of one IP version or both. */
  listRoutes(family?: IpFamily): RouteInfo[] {
    const af = family === 4 ? AF_INET : family === 6 ? AF_INET6 : undefined;
    return this.#dump(
      `RTM_GETROUTE dump${family ? ` IPv${family}` : ""}`,
      (seq) => encodeDumpRequest(RTM_GETROUTE, seq, af),
    )
      .flatMap((message) => message.type === RTM_NEWROUTE ? [decodeRoute(message.payload)] : [])
      .filter((route): route is RouteInfo => route !== undefined && route.table === RT_TABLE_MAIN);
  }

  /**
   * Sends the raw request `encode` builds, for a socket of any protocol: `encode` gets the
   * first of `seqs` fresh sequence numbers (e.g. an nfnetlink batch numbers its messages from
   * it) and the answer ends with the acknowledgement of the last of them. Returns the messages
   * answering any of them before that; the first error among them throws an
   * {@linkcode ErrnoError} naming `call`.
   */
  request(
    call: string,
    seqs: number,
    encode: (firstSeq: number) => Uint8Array<ArrayBuffer>,
  ): NetlinkMessage[] {
    if (!Number.isInteger(seqs) || seqs < 1 || seqs > MAX_SEQS_PER_REQUEST) {
      throw new RangeError(`${call}: seqs must be from 1 to ${MAX_SEQS_PER_REQUEST}, got ${seqs}`);
    }
    return this.#exchange(call, encode, seqs);
  }

  #setLink(call: string, ifindex: number, change: LinkChange): void {
    this.#exchange(call, (seq) => encodeSetLinkRequest(seq, ifindex, change));
  }

  /**
   * A dump, repeated when the kernel flags it NLM_F_DUMP_INTR: the table changed while it was
   * read, so the answer may miss or repeat entries.
   */
  #dump(call: string, encode: (seq: number) => Uint8Array<ArrayBuffer>): NetlinkMessage[] {
    for (let attempt = 1;; attempt++) {
      const replies = this.#exchange(call, encode);
      if (!replies.some((message) => message.flags & NLM_F_DUMP_INTR)) return replies;
      if (attempt === DUMP_ATTEMPTS) {
        throw new Error(`${call}: interrupted by concurrent changes ${DUMP_ATTEMPTS} times`);
      }
    }
  }

  /**
   * Sends the request `encode` builds for a fresh sequence number and returns the messages that
   * answer it, up to the NLMSG_ERROR that acknowledges it (NLMSG_ERROR with error 0) or the
   * NLMSG_DONE that ends a dump. A request of several messages (`seqs` > 1) is numbered from
   * `seq` on and answered by the acknowledgement of its last one. Messages with another
   * sequence number answer an earlier request that gave up and are dropped.
   */
  #exchange(
    call: string,
    encode: (seq: number) => Uint8Array<ArrayBuffer>,
    seqs = 1,
  ): NetlinkMessage[] {
    if (this.#fd < 0) throw new Error(`${call}: the netlink socket is closed`);
    const seq = (this.#seq + 1) >>> 0;
    this.#seq = (this.#seq + seqs) >>> 0;
    const request = encode(seq);
    check("send(netlink)", libc().send(this.#fd, request, request.length, 0), call);
    const replies: NetlinkMessage[] = [];
    for (let read = 0; read < MAX_READS_PER_ANSWER; read++) {
      for (const message of parseMessages(this.#buffer.subarray(0, this.#receive(call)))) {
        // Unsigned distance from the first number: the range may wrap past 2^32 - 1.
        const position = (message.seq - seq) >>> 0;
        if (position >= seqs) continue;
        if (message.type === NLMSG_ERROR || message.type === NLMSG_DONE) {
          const status = decodeStatus(message);
          if (status.errno !== 0) throw new ErrnoError(call, status.errno, status.detail);
          if (position === seqs - 1) return replies;
          continue;
        }
        // The next recv() reuses the buffer the payload points into.
        replies.push({ ...message, payload: message.payload.slice() });
      }
    }
    throw new Error(`${call}: no end of the answer after ${MAX_READS_PER_ANSWER} datagrams`);
  }

  /** Receives one datagram into the buffer and returns its length. */
  #receive(call: string): number {
    for (let attempt = 0;; attempt++) {
      const length = libc().recv(this.#fd, this.#buffer, this.#buffer.length, MSG_TRUNC);
      if (length > this.#buffer.length) {
        throw new Error(
          `${call}: a ${length}-byte netlink datagram overflows the ${this.#buffer.length}-byte buffer`,
        );
      }
      if (length >= 0) return length;
      const code = errno();
      if (code !== EINTR || attempt === MAX_EINTR_RETRIES) {
        throw new ErrnoError("recv(netlink)", code, call);
      }
    }
  }
}

/** The answer of {@linkcode Netlink.routeGet}. */
export interface RouteLookup {
  /** The next hop, when the destination is not on a connected network. */
  gateway?: string;
  /** The output link. */
  ifindex: number;
  /** The source address the kernel would pick (RTA_PREFSRC), when it names one. */
  source?: string;
}

/** A route in `ip route` words, for error messages: "192.168.78.0/24 via 10.9.0.2 dev 3". */
function describeRoute(route: RouteSpec): string {
  let text = route.destination;
  if (route.gateway !== undefined) text += ` via ${route.gateway}`;
  if (route.ifindex !== undefined) text += ` dev ${route.ifindex}`;
  if (route.metric !== undefined) text += ` metric ${route.metric}`;
  if (route.protocol !== undefined) text += ` proto ${route.protocol}`;
  return text;
}
