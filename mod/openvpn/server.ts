/**
 * The OpenVPN 2.x endpoints of `vpn serve`: UDP on the port our own datagrams use (the UDP
 * socket hands over every datagram whose first byte is not ours), and TCP on its own port.
 * Each client becomes an {@linkcode OpenVpnSession}; the router sees it as any other session.
 *
 * UDP, inbound (`receive`, once per datagram of a batch):
 *   1. P_DATA_V2: the peer id names the session; it opens the packet in place (the slot stays
 *      untouched until the batch ends) and the router gets the plaintext;
 *   2. control: tls-crypt first, so that a packet without the key costs one HMAC and nothing
 *      else; then by source address to its session, or, for a HARD_RESET, a new session within
 *      the handshake caps (per source host and in all).
 * UDP, outbound: sessions seal data into one batch of pre-allocated slots that leaves in one
 * `sendmmsg` when the router flushes; control packets go out one by one.
 *
 * TCP: one session per connection; every packet has a 2-byte length before it
 * (mod/openvpn/packet.ts `TcpFramer`); data and control go out through one double buffer per
 * connection, written once per batch.
 *
 * @module
 */

import {
  copySockAddr,
  formatSockAddr,
  newSockAddr,
  sameLocalAddr,
  sameSockAddr,
  type SockAddr,
  SOCKADDR_LEN,
  type UdpSocket,
} from "../../ffi/udp.ts";
import { listenerIpv6Only } from "../../ffi/socket.ts";
import { formatPeer, isUnspecified6, peerHost } from "../core/ip.ts";
import { PreAuthLimiter } from "../core/preauth.ts";
import type { Router } from "../core/router.ts";
import { BatchFailures, log } from "../log.ts";
import {
  DATA_V2_HEADER,
  DATA_V2_OVERHEAD,
  type DataCipher,
  type DataKey,
  dataPeerId,
  type DataStats,
} from "./data.ts";
import { MAX_TCP_PACKET, Opcode, OpenVpnPacketError, sameSessionId, TcpFramer } from "./packet.ts";
import {
  type OpenVpnContext,
  type OpenVpnLink,
  OpenVpnSession,
  type OpenVpnStats,
} from "./session.ts";
import type { TlsIdentity } from "./tls.ts";
import { TlsCrypt } from "./tls_crypt.ts";

const logger = log("server");

/**
 * Sessions still in their handshake at once, every source together; and as many TCP
 * connections that sent no HARD_RESET yet.
 */
const MAX_PENDING = 256;
/**
 * Of those, from one source (an IPv4 address, an IPv6 /64): a flood from one host keeps no one
 * else out (mod/core/preauth.ts).
 */
const MAX_PENDING_PER_HOST = 8;
/** The caps of both kinds of pending work above. */
const PENDING_CAPS = { perSource: MAX_PENDING_PER_HOST, total: MAX_PENDING };
/** Datagrams sealed before the batch leaves on its own. */
const BATCH = 64;
/** The largest peer id (0xFFFFFF means "none"). */
const MAX_PEER_ID = 0xfffffe;
/** A TCP connection must send its HARD_RESET within this time (ms). */
const FIRST_PACKET_MS = 10_000;
/** Bytes per direction of a TCP connection's double send buffer, at most. */
const TCP_SEND_BUFFER = 256 * 1024;
/** Bytes one TCP read takes at most. */
const TCP_READ = 64 * 1024;
/**
 * A TCP connection's buffers start at this size and double, up to the two above, while it is
 * busy; once a keepalive interval finds it quiet they go back (TcpLink.trim()).
 */
const TCP_MIN_BUFFER = 4 * 1024;
/** A send buffer with nothing to hold: an idle connection holds none. */
const NO_BUFFER = new Uint8Array(0);
/**
 * Where a TCP packet is sealed before it is copied behind its length: one for every connection,
 * since sealing and copying happen in one synchronous step.
 */
const tcpScratch = new Uint8Array(MAX_TCP_PACKET);
const tcpScratchTag = tcpScratch.subarray(DATA_V2_HEADER, DATA_V2_OVERHEAD);
const tcpScratchBody = tcpScratch.subarray(DATA_V2_OVERHEAD);

/** What the OpenVPN endpoints run with. */
export interface OpenVpnServerOptions {
  router: Router;
  identity: TlsIdentity;
  /** The tls-crypt key (256 bytes). */
  tlsCryptKey: Uint8Array;
  ciphers: readonly DataCipher[];
  /** The shared UDP socket, when OpenVPN over UDP is on. */
  udp?: UdpSocket;
  /** Where to listen for OpenVPN over TCP, when it is on. */
  tcp?: { host: string; port: number };
}

/** The OpenVPN protocol's side of a server. */
export class OpenVpnServer {
  readonly stats: OpenVpnStats = {
    unwrapFailed: 0,
    replayed: 0,
    malformed: 0,
    unknown: 0,
    busy: 0,
  };
  readonly dataStats: DataStats = { malformed: 0, forged: 0, replayed: 0 };
  readonly #router: Router;
  readonly #ctx: OpenVpnContext;
  readonly #udp: UdpSocket | undefined;
  readonly #batch: DataBatch | undefined;
  /** The TCP listener, and one on "0.0.0.0" beside an IPv6-only one on "::". */
  readonly #listeners: Deno.Listener[];
  /** UDP sessions by their client's address (bytes as hex), and every session by peer id. */
  readonly #byAddress = new Map<string, OpenVpnSession>();
  readonly #byPeerId = new Map<number, OpenVpnSession>();
  /** Sessions in their handshake, within the caps per source and in all. */
  readonly #pending = new PreAuthLimiter<OpenVpnSession>(PENDING_CAPS);
  #nextPeerId = 0;
  /** Views of each receive slot at the tag and the ciphertext, made once per slot. */
  readonly #views = new WeakMap<ArrayBufferLike, { tag: Uint8Array; body: Uint8Array }>();
  /** TCP connections that have not sent their HARD_RESET yet, within the same caps. */
  readonly #silent = new PreAuthLimiter<Deno.Conn>(PENDING_CAPS);
  readonly #accepting: Promise<void>;
  #stopped = false;

  private constructor(options: OpenVpnServerOptions, listeners: Deno.Listener[]) {
    this.#router = options.router;
    this.#udp = options.udp;
    this.#listeners = listeners;
    const router = options.router;
    this.#ctx = {
      router,
      tlsCrypt: new TlsCrypt(options.tlsCryptKey, "server"),
      identity: options.identity,
      ciphers: options.ciphers,
      rekeyMs: router.config.rekey_interval * 1000,
      stats: this.stats,
      dataStats: this.dataStats,
      release: (session) => this.#release(session),
      admitted: (session) => this.#pending.release(session),
    };
    if (options.udp) {
      this.#batch = new DataBatch(options.udp, router.config.mtu + DATA_V2_OVERHEAD);
      router.onFlush(() => this.#batch!.flush());
    }
    this.#accepting = Promise.all(listeners.map((l) => this.#acceptLoop(l))).then(() => {});
  }

  /** Starts the endpoints; throws a clear error when the TCP port is taken. */
  static start(options: OpenVpnServerOptions): OpenVpnServer {
    const listeners: Deno.Listener[] = [];
    if (options.tcp) {
      const { host, port } = options.tcp;
      const first = listenTcp(host, port);
      listeners.push(first);
      // "::" takes IPv4 clients too, as the UDP socket does (ffi/udp.ts), also where
      // net.ipv6.bindv6only makes Deno's socket IPv6-only: then IPv4 gets a listener of its own.
      if (isUnspecified6(host) && listenerIpv6Only(first.addr as Deno.NetAddr)) {
        try {
          listeners.push(listenTcp("0.0.0.0", (first.addr as Deno.NetAddr).port));
        } catch (error) {
          first.close();
          throw error;
        }
      }
    }
    return new OpenVpnServer(options, listeners);
  }

  /** The TCP port, when OpenVPN over TCP is on. */
  get tcpPort(): number | undefined {
    return (this.#listeners[0]?.addr as Deno.NetAddr | undefined)?.port;
  }

  /** Sessions in their handshake now. */
  get pendingCount(): number {
    return this.#pending.size;
  }

  /** Closes the TCP listener and every connection still in its handshake. */
  async stop(): Promise<void> {
    this.#stopped = true;
    for (const listener of this.#listeners) listener.close();
    await this.#accepting;
    for (const conn of this.#silent.items()) closeQuietly(conn);
    for (const session of [...this.#byPeerId.values()]) {
      if (!session.admitted) session.end("closed", "server stopping");
    }
  }

  // --- UDP -------------------------------------------------------------------------------

  /** One datagram from the shared UDP socket whose first byte is not ours. */
  receive(datagram: Uint8Array, length: number, from: SockAddr): void {
    if (this.#stopped) return;
    const opcode = datagram[0]! >> 3;
    if (opcode === Opcode.DATA_V2) {
      this.#udpData(datagram, length, from);
      return;
    }
    const unwrapped = this.#unwrap(datagram.subarray(0, length));
    if (unwrapped === undefined) return;
    const key = addressKey(from);
    let session = this.#byAddress.get(key);
    const { header, plain } = unwrapped;
    const isReset = opcode === Opcode.HARD_RESET_CLIENT_V2 && (header.byte0 & 7) === 0 &&
      !isZero(header.sessionId);
    if (session !== undefined && !sameSessionId(header.sessionId, session.remoteSessionId)) {
      // A client that restarted comes from the same address with a new session id.
      if (!isReset) {
        this.stats.malformed++;
        return;
      }
      if (!session.admitted) session.end("closed", "client started again");
      session = undefined;
    }
    if (session === undefined) {
      if (!isReset) {
        this.stats.unknown++;
        return;
      }
      const host = peerHost(formatSockAddr(from, (h) => h));
      session = this.#newSession(new UdpLink(this, from, host), header.sessionId, host);
      if (session === undefined) return;
      this.#byAddress.set(key, session);
    }
    session.receiveControl(header.byte0, header.packetId, header.time, plain);
  }

  /** The batch of datagrams ended; nothing is kept from it. */
  endBatch(): void {}

  #udpData(datagram: Uint8Array, length: number, from: SockAddr): void {
    if (length < DATA_V2_OVERHEAD) {
      this.dataStats.malformed++;
      return;
    }
    const session = this.#byPeerId.get(dataPeerId(datagram));
    const link = session?.link;
    if (session === undefined || !(link instanceof UdpLink)) {
      this.stats.unknown++;
      return;
    }
    const { tag, body } = this.#viewsOf(datagram);
    // Opened in place: the slot is not reused before the router's flush at the end of the batch.
    if (!session.receiveData(datagram, length, tag, body, body)) return;
    if (!sameSockAddr(link.address, from)) this.#float(session, link, from);
    // The client turned to another address of this host: answer from that one (ffi/udp.ts).
    else if (!sameLocalAddr(link.address, from)) link.moveTo(from);
  }

  /** A session's data authenticated from a new address: the client moved (NAT rebinding). */
  #float(session: OpenVpnSession, link: UdpLink, from: SockAddr): void {
    const old = addressKey(link.address);
    if (this.#byAddress.get(old) === session) this.#byAddress.delete(old);
    link.moveTo(from);
    this.#byAddress.set(addressKey(from), session);
    logger.info("{name}: UDP address changed to {peer}", { name: session.name, peer: link.peer });
  }

  #viewsOf(datagram: Uint8Array): { tag: Uint8Array; body: Uint8Array } {
    // A whole slot is the same buffer every batch; a GRO segment is a fresh view each time.
    if (datagram.byteOffset === 0 && datagram.length === datagram.buffer.byteLength) {
      let views = this.#views.get(datagram.buffer);
      if (views === undefined) {
        views = {
          tag: datagram.subarray(DATA_V2_HEADER, DATA_V2_OVERHEAD),
          body: datagram.subarray(DATA_V2_OVERHEAD),
        };
        this.#views.set(datagram.buffer, views);
      }
      return views;
    }
    return {
      tag: datagram.subarray(DATA_V2_HEADER, DATA_V2_OVERHEAD),
      body: datagram.subarray(DATA_V2_OVERHEAD),
    };
  }

  /** Seals `plain` for `to` into the UDP batch. */
  sealUdp(key: DataKey, plain: Uint8Array, length: number, to: SockAddr): boolean {
    return this.#batch!.add(key, plain, length, to);
  }

  flushUdp(): void {
    this.#batch!.flush();
  }

  sendUdp(packet: Uint8Array, to: SockAddr): void {
    this.#udp!.sendTo(packet, packet.length, to);
  }

  // --- sessions --------------------------------------------------------------------------

  /** tls-crypt: a packet that fails it is counted and dropped before anything else. */
  #unwrap(packet: Uint8Array): ReturnType<TlsCrypt["unwrap"]> {
    const unwrapped = this.#ctx.tlsCrypt.unwrap(packet);
    if (unwrapped === undefined) this.stats.unwrapFailed++;
    return unwrapped;
  }

  /** A new session for a HARD_RESET, within the caps; undefined (counted) when over them. */
  #newSession(link: OpenVpnLink, sessionId: Uint8Array, host: string): OpenVpnSession | undefined {
    const peerId = this.#allocatePeerId();
    if (peerId === undefined) {
      this.#busy(link, "every peer id is in use");
      return undefined;
    }
    // Its TLS starts only with start(), once it has a place.
    const session = new OpenVpnSession(this.#ctx, link, sessionId, peerId);
    const admission = this.#pending.admit(host, session);
    if (admission.verdict === "refused") {
      session.end("closed", "no place among the handshakes");
      this.#busy(
        link,
        `${MAX_PENDING} OpenVPN handshakes are in progress already, as many from this source ` +
          "as from any other",
      );
      return undefined;
    }
    if (admission.verdict !== "admitted") {
      const lost = admission.dropped;
      lost.end("closed", "its place went to a newer handshake");
      this.#lostPlace(lost.link.host, lost.link.peer, admission.verdict, "handshake");
    }
    this.#byPeerId.set(peerId, session);
    session.start();
    return session;
  }

  /**
   * Counts and logs (rate limited) a handshake, or a TCP connection that sent no reset yet,
   * that lost its place to a newcomer (mod/core/preauth.ts): one of its own source
   * (`replaced`), or, at the total cap, one of a quieter source (`displaced`).
   */
  #lostPlace(
    host: string,
    peer: string,
    verdict: "replaced" | "displaced",
    what: "handshake" | "connection",
  ): void {
    this.#router.stats.refused++;
    if (verdict === "replaced") {
      this.#router.logRefusal(
        host,
        peer,
        "busy-source",
        `replaced by a newer ${what} from the same source ` +
          `(${MAX_PENDING_PER_HOST} at most per source)`,
      );
      return;
    }
    this.stats.busy++;
    const total = what === "handshake"
      ? `${MAX_PENDING} OpenVPN handshakes are in progress`
      : `${MAX_PENDING} TCP connections sent no reset yet`;
    this.#router.logRefusal(
      host,
      peer,
      "busy",
      `${total}, the most of them from this source: its oldest made room for another source's`,
    );
  }

  /** Refuses a newcomer at a cap: counted, logged (rate limited), its link closed. */
  #busy(link: OpenVpnLink, detail: string): void {
    this.stats.busy++;
    this.#router.stats.refused++;
    this.#router.logRefusal(link.host, link.peer, "busy", detail);
    link.close();
  }

  #allocatePeerId(): number | undefined {
    for (let tries = 0; tries <= MAX_PEER_ID; tries++) {
      const id = this.#nextPeerId;
      this.#nextPeerId = id === MAX_PEER_ID ? 0 : id + 1;
      if (!this.#byPeerId.has(id)) return id;
    }
    return undefined;
  }

  /** A session authenticated (it leaves the handshake count) or ended (it leaves everything). */
  #release(session: OpenVpnSession): void {
    this.#pending.release(session);
    if (this.#byPeerId.get(session.peerId) === session) this.#byPeerId.delete(session.peerId);
    const link = session.link;
    if (link instanceof UdpLink) {
      const key = addressKey(link.address);
      if (this.#byAddress.get(key) === session) this.#byAddress.delete(key);
    }
  }

  // --- TCP -------------------------------------------------------------------------------

  async #acceptLoop(listener: Deno.Listener): Promise<void> {
    try {
      for await (const conn of listener) {
        (conn as Deno.TcpConn).setNoDelay(true);
        this.#serveTcp(conn);
      }
    } catch (error) {
      if (!this.#stopped) {
        logger.error("OpenVPN TCP listener failed: {error}", { error: String(error) });
      }
    }
  }

  async #serveTcp(conn: Deno.Conn): Promise<void> {
    const remote = conn.remoteAddr as Deno.NetAddr;
    const host = peerHost(remote.hostname);
    const peer = formatPeer(remote.hostname, remote.port);
    // Until its HARD_RESET makes a session (whose own hand window then runs), a connection is
    // one of the silent ones: bounded in number per source and in all, and in time. Its place
    // is settled first, so that one refused costs no buffers.
    if (!this.#placeSilent(conn, host, peer)) return;
    const link = new TcpLink(conn, peer, host);
    // Control packets stay under 1250 bytes; data packets are the tunnel's MTU and their header.
    const framer = new TcpFramer(Math.max(2048, this.#router.config.mtu + 2 * DATA_V2_OVERHEAD));
    const failures = new BatchFailures(logger, "OpenVPN TCP receive");
    let session: OpenVpnSession | undefined;
    // Quietly: the connection may have lost its place, and been closed, a moment ago.
    const timer = setTimeout(() => {
      if (session === undefined) closeQuietly(conn);
    }, FIRST_PACKET_MS);
    try {
      for (let bytes; (bytes = await link.read()) !== null;) {
        for (const packet of framer.push(bytes)) {
          let next: OpenVpnSession | undefined | null = session;
          try {
            next = this.#tcpPacket(session, link, host, packet);
          } catch (error) {
            failures.report(error);
          }
          if (next === null) return;
          if (next !== undefined) this.#silent.release(conn);
          session = next;
        }
        this.#router.flush();
      }
      session?.end("closed", "connection closed by the client");
    } catch (error) {
      if (error instanceof OpenVpnPacketError) {
        this.stats.malformed++;
        session?.end("protocol", error.message);
      } else session?.end("closed", `connection lost: ${(error as Error).message ?? error}`);
    } finally {
      clearTimeout(timer);
      this.#silent.release(conn);
      if (session === undefined) link.close();
    }
  }

  /**
   * Gives a new TCP connection its place among the silent ones, and closes the one it takes
   * the place of; false (counted, logged, the connection closed) when it gets none.
   */
  #placeSilent(conn: Deno.Conn, host: string, peer: string): boolean {
    const admission = this.#silent.admit(host, conn);
    if (admission.verdict === "admitted") return true;
    if (admission.verdict === "refused") {
      this.stats.busy++;
      this.#router.stats.refused++;
      this.#router.logRefusal(
        host,
        peer,
        "busy",
        `${MAX_PENDING} TCP connections sent no reset yet, as many from this source as from ` +
          "any other",
      );
      conn.close();
      return false;
    }
    const lost = admission.dropped;
    const { hostname, port } = lost.remoteAddr as Deno.NetAddr;
    // Its read fails, and its own serveTcp ends it; its timer may have closed it already.
    closeQuietly(lost);
    this.#lostPlace(
      peerHost(hostname),
      formatPeer(hostname, port),
      admission.verdict,
      "connection",
    );
    return true;
  }

  /** One packet of a TCP connection; the session it belongs to afterwards, null to hang up. */
  #tcpPacket(
    session: OpenVpnSession | undefined,
    link: TcpLink,
    host: string,
    packet: Uint8Array,
  ): OpenVpnSession | undefined | null {
    const opcode = packet[0]! >> 3;
    if (opcode === Opcode.DATA_V2) {
      if (session === undefined || packet.length < DATA_V2_OVERHEAD) {
        this.stats.unknown++;
        return session;
      }
      const body = packet.subarray(DATA_V2_OVERHEAD);
      session.receiveData(
        packet,
        packet.length,
        packet.subarray(DATA_V2_HEADER, DATA_V2_OVERHEAD),
        body,
        body,
      );
      return session;
    }
    const unwrapped = this.#unwrap(packet);
    if (unwrapped === undefined) return session ?? null;
    const { header, plain } = unwrapped;
    if (session === undefined) {
      if (
        opcode !== Opcode.HARD_RESET_CLIENT_V2 || (header.byte0 & 7) !== 0 ||
        isZero(header.sessionId)
      ) {
        this.stats.unknown++;
        return null;
      }
      session = this.#newSession(link, header.sessionId, host);
      if (session === undefined) return null;
    } else if (!sameSessionId(header.sessionId, session.remoteSessionId)) {
      this.stats.malformed++;
      return session;
    }
    session.receiveControl(header.byte0, header.packetId, header.time, plain);
    return session;
  }
}

/** A TCP listener on `host:port`, or an error that says what to do when the port is taken. */
function listenTcp(host: string, port: number): Deno.Listener {
  try {
    return Deno.listen({ hostname: host, port, transport: "tcp" });
  } catch (error) {
    if (error instanceof Deno.errors.AddrInUse) {
      throw new Error(
        `Cannot listen for OpenVPN over TCP on ${formatPeer(host, port)}: the port is in ` +
          "use; stop the program holding it, choose another openvpn.tcp_port, or set " +
          "openvpn.tcp: false",
      );
    }
    throw error;
  }
}

/** Whether `host` is the IPv6 "any" address ("::", "[::]", "0::0", ...). */
/** The client's address and port, not the local address of the slot: one session a client. */
function addressKey(addr: SockAddr): string {
  return addr.subarray(0, SOCKADDR_LEN).toHex();
}

/** A send buffer's size for `bytes`: 4 KiB doubled as often as needed. */
function sendBufferFor(bytes: number): number {
  let size = TCP_MIN_BUFFER;
  while (size < bytes) size *= 2;
  return Math.min(TCP_SEND_BUFFER, size);
}

/** Closes `conn` unless it is closed already (by its timer, or when it lost its place). */
function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Closed already.
  }
}

/** An all-zero session id means "none" (OPENVPN.md 1.4): no session may have it. */
function isZero(id: Uint8Array): boolean {
  return id.every((b) => b === 0);
}

/**
 * A UDP client: its address on the shared socket, with the local address it sent to, which
 * replies leave from (a wildcard socket's slot holds both, see ffi/udp.ts).
 */
class UdpLink implements OpenVpnLink {
  readonly protocol = "openvpn/udp";
  readonly address = newSockAddr();
  readonly host: string;
  readonly movedAt = 0;
  #peer: string;
  readonly #server: OpenVpnServer;

  constructor(server: OpenVpnServer, from: SockAddr, host: string) {
    this.#server = server;
    copySockAddr(from, this.address);
    this.host = host;
    this.#peer = formatSockAddr(this.address, formatPeer);
  }

  get peer(): string {
    return this.#peer;
  }

  moveTo(from: SockAddr): void {
    copySockAddr(from, this.address);
    this.#peer = formatSockAddr(this.address, formatPeer);
  }

  sendControl(packet: Uint8Array): void {
    this.#server.sendUdp(packet, this.address);
  }

  sealData(key: DataKey, plain: Uint8Array, length: number): boolean {
    return this.#server.sealUdp(key, plain, length, this.address);
  }

  flush(): void {
    this.#server.flushUdp();
  }

  drained(): Promise<void> {
    return Promise.resolve();
  }

  trim(): void {}

  close(): void {}
}

/** Sealed P_DATA_V2 datagrams in pre-allocated slots, leaving together in one `sendmmsg`. */
class DataBatch {
  readonly #socket: UdpSocket;
  readonly #bufs: Uint8Array[];
  readonly #tags: Uint8Array[];
  readonly #bodies: Uint8Array[];
  readonly #sizes: number[];
  readonly #addrs: SockAddr[];
  #count = 0;

  constructor(socket: UdpSocket, size: number) {
    this.#socket = socket;
    this.#bufs = Array.from({ length: BATCH }, () => new Uint8Array(size));
    this.#tags = this.#bufs.map((b) => b.subarray(DATA_V2_HEADER, DATA_V2_OVERHEAD));
    this.#bodies = this.#bufs.map((b) => b.subarray(DATA_V2_OVERHEAD));
    this.#sizes = new Array<number>(BATCH).fill(0);
    this.#addrs = Array.from({ length: BATCH }, () => newSockAddr());
  }

  add(key: DataKey, plain: Uint8Array, length: number, to: SockAddr): boolean {
    if (length + DATA_V2_OVERHEAD > this.#bufs[0]!.length) return false;
    if (this.#count === BATCH) this.flush();
    const i = this.#count;
    const size = key.seal(plain, length, this.#bufs[i]!, this.#tags[i]!, this.#bodies[i]!);
    if (size === 0) return false;
    this.#sizes[i] = size;
    this.#addrs[i] = to;
    this.#count++;
    return true;
  }

  flush(): void {
    if (this.#count === 0) return;
    this.#socket.sendBatch(this.#bufs, this.#sizes, this.#addrs, this.#count);
    this.#count = 0;
  }
}

/**
 * A TCP client: its connection, with a double send buffer written once per batch. Its buffers
 * grow while it is busy and go back once it is quiet, so that an idle connection holds a 4 KiB
 * read buffer and nothing else.
 */
class TcpLink implements OpenVpnLink {
  readonly protocol = "openvpn/tcp";
  readonly peer: string;
  readonly host: string;
  movedAt = 0;
  readonly #conn: Deno.Conn;
  #filling = NO_BUFFER;
  #spare = NO_BUFFER;
  #filled = 0;
  /** The most bytes the send buffer held since the last trim(). */
  #sendPeak = 0;
  #writing = false;
  #closing = false;
  #closed = false;
  readonly #waiters: (() => void)[] = [];
  #readBuffer = new Uint8Array(TCP_MIN_BUFFER);
  /** Whether the last read filled the read buffer: the next one gets twice the room. */
  #readFilled = false;
  /** The largest read since the last trim(). */
  #readPeak = 0;

  constructor(conn: Deno.Conn, peer: string, host: string) {
    this.#conn = conn;
    this.peer = peer;
    this.host = host;
  }

  /** The next bytes from the client, null at the end: a view valid until the next read. */
  async read(): Promise<Uint8Array | null> {
    if (this.#readFilled && this.#readBuffer.length < TCP_READ) {
      this.#readBuffer = new Uint8Array(this.#readBuffer.length * 2);
    }
    const buffer = this.#readBuffer;
    const count = await this.#conn.read(buffer);
    if (count === null) return null;
    this.#readFilled = count === buffer.length;
    if (count > this.#readPeak) this.#readPeak = count;
    return buffer.subarray(0, count);
  }

  /**
   * Gives back what a burst grew, once per keepalive interval: the read buffer unless a read
   * since the last call needed more than its first size (it takes effect at the next read),
   * the send buffers when nothing is being written (the filling one kept at what the interval
   * needed).
   */
  trim(): void {
    if (this.#readPeak < TCP_MIN_BUFFER && this.#readBuffer.length > TCP_MIN_BUFFER) {
      this.#readBuffer = new Uint8Array(TCP_MIN_BUFFER);
      this.#readFilled = false;
    }
    this.#readPeak = 0;
    if (!this.#writing && this.#filled === 0) {
      this.#spare = NO_BUFFER;
      const size = this.#sendPeak === 0 ? 0 : sendBufferFor(this.#sendPeak);
      if (size !== this.#filling.length) {
        this.#filling = size === 0 ? NO_BUFFER : new Uint8Array(size);
      }
    }
    this.#sendPeak = 0;
  }

  #append(packet: Uint8Array, length: number): boolean {
    const end = this.#filled + 2 + length;
    if (this.#closed || end > TCP_SEND_BUFFER) return false;
    if (end > this.#filling.length) {
      const grown = new Uint8Array(sendBufferFor(end));
      grown.set(this.#filling.subarray(0, this.#filled));
      this.#filling = grown;
    }
    const at = this.#filled;
    this.#filling[at] = length >> 8;
    this.#filling[at + 1] = length & 0xff;
    this.#filling.set(packet.subarray(0, length), at + 2);
    this.#filled = end;
    if (end > this.#sendPeak) this.#sendPeak = end;
    return true;
  }

  sendControl(packet: Uint8Array): void {
    // A control packet that finds no room is lost like a datagram; the reliability layer resends.
    this.#append(packet, packet.length);
    this.flush();
  }

  sealData(key: DataKey, plain: Uint8Array, length: number): boolean {
    if (this.#closed || this.#filled + 2 + length + DATA_V2_OVERHEAD > TCP_SEND_BUFFER) {
      return false;
    }
    const size = key.seal(plain, length, tcpScratch, tcpScratchTag, tcpScratchBody);
    return size > 0 && this.#append(tcpScratch, size);
  }

  flush(): void {
    if (this.#writing || this.#filled === 0 || this.#closed) return;
    this.#writing = true;
    this.movedAt = performance.now();
    this.#writeLoop().catch(() => this.#shut());
  }

  async #writeLoop(): Promise<void> {
    while (this.#filled > 0 && !this.#closed) {
      const out = this.#filling;
      const length = this.#filled;
      this.#filling = this.#spare;
      this.#spare = out;
      this.#filled = 0;
      for (let at = 0; at < length;) {
        at += await this.#conn.write(out.subarray(at, length));
        this.movedAt = performance.now();
      }
    }
    this.#writing = false;
    for (const wake of this.#waiters.splice(0)) wake();
    if (this.#closing) this.#shut();
  }

  drained(): Promise<void> {
    if (!this.#writing) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** Closes once what is queued has been written (a goodbye must reach the client). */
  close(): void {
    this.#closing = true;
    if (!this.#writing) this.#shut();
  }

  #shut(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const wake of this.#waiters.splice(0)) wake();
    try {
      this.#conn.close();
    } catch {
      // Closed already by the read side.
    }
  }
}
