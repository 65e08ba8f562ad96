/**
 * The VPN server: one TUN, one TLS listener and one UDP socket on the same port, one session
 * per authenticated client, and the server as the gateway of a star.
 *
 * Outbound, server TUN → client (`#tunToClients`):
 *   1. one awaited batch read from the server TUN;
 *   2. route each IPv4 packet by destination to the session that owns that address;
 *   3. seal it into the UDP batch when that client's UDP path is alive (mod/native/server_udp.ts),
 *      cut to the MTU where needed (mod/core/offload.ts), else copy it into the session's TLS send
 *      buffer; a full buffer waits up to 2 ms for that session's write, then drops (counted),
 *      and after one such wait times out, the rest of the batch for that session drops at once,
 *      as does every later packet until its write moves again;
 *   4. after the batch (`flush`): one `sendmmsg` for the UDP datagrams, one TLS write per
 *      session that got packets.
 *
 * Inbound, client → server (`fromClient`, fed by mod/native/session.ts for TLS frames and by
 * mod/native/server_udp.ts for datagrams):
 *   1. one TLS read or one batch of datagrams, every packet in it parsed in place;
 *   2. a packet whose source is not the session's address is dropped and counted;
 *   3. with `client_to_client`, a packet for another client goes straight out to it (step 3
 *      above); everything else is collected for the TUN, where the host routes it (like OpenVPN);
 *   4. after the read (`flush`), the collected packets go into the TUN in one batch.
 *
 * @module
 */

import { LinuxTun, type TunDevice } from "../ffi/tun.ts";
import { Netlink } from "../ffi/netlink.ts";
import { setListenerNoDelay, shutdownTcp } from "../ffi/socket.ts";
import { AddressPool } from "./core/address_pool.ts";
import { Channel } from "./native/channel.ts";
import type { ServerConfig } from "./config.ts";
import {
  acceptClient,
  type AuthenticatedClient,
  refuse,
  sendPush,
  type ServerTrust,
} from "./native/handshake.ts";
import { formatPeer, ipv4Destination, ipv4Source, packetVersion, peerHost } from "./core/ip.ts";
import { BatchFailures, CounterLine, escapeText, log, RateLimit } from "./log.ts";
import { ALPN } from "./native/messages.ts";
import { Coalescer, Segmenter, validVnetHeader, VNET_HDR_LEN } from "./core/offload.ts";
import { REJECT_REASONS, REJECT_WORDS, type RejectReason, ServerUdp } from "./native/server_udp.ts";
import { Session } from "./native/session.ts";
import {
  AuthError,
  certificateNames,
  loadServerIdentity,
  readRegistrySerials,
  REGISTRY_FILE,
} from "./pki.ts";
import { FrameError, MAX_PAYLOAD } from "./native/wire.ts";

const logger = log("server");

/** A connection must finish TLS and AUTH within this time (ms), or it is closed. */
const PRE_AUTH_TIMEOUT_MS = 10_000;
/** Connections still in their handshake at once; more are closed at accept. */
const MAX_PRE_AUTH = 64;
/** How often the client registry is checked for revocations (ms). */
const REVOCATION_POLL_MS = 1000;
/**
 * The coarsest clock of a file system's time stamps (ms): FAT keeps 2 s, ext4, xfs and tmpfs a
 * kernel tick. A registry written within this time of the last read is read again at each poll,
 * since a second write in the same tick would leave its size and mtime as they were.
 */
const REGISTRY_TICK_MS = 2000;
/** Packets one TUN read returns at most. */
const BATCH = 64;
/** Longest the TUN loop waits for one session's TLS write before that session drops (ms). */
const CONGESTION_WAIT_MS = 2;
/** One refusal line per reason and source address in this time (ms); the rest are counted. */
const REFUSAL_LOG_WINDOW_MS = 10_000;
/** Source addresses the refusal log tells apart; more share one line per reason. */
const REFUSAL_LOG_SOURCES = 1024;
/** How often the counters line goes out (ms), when a counter moved. */
const COUNTERS_EVERY_MS = 10_000;

/** Counters of the server; they only grow. */
export interface ServerStats {
  /** IPv4 packets from a client whose source was not that client's address. */
  spoofed: number;
  /** IPv4 packets read from the TUN for an address no session owns. */
  unroutable: number;
  /**
   * Packets either way that are not IPv4 or too short for it: mostly the kernels' own IPv6
   * (router solicitations when a TUN comes up), which the tunnel does not carry.
   */
  notIpv4: number;
  /** Connections closed before auth: TLS failure, protocol error, timeout, or refusal. */
  refused: number;
  /** Packets for clients dropped because the session's TLS send buffer was full. */
  dropped: number;
  /** Packets from clients dropped for a virtio-net header no kernel writes (mod/core/offload.ts). */
  badVnet: number;
}

/** The counters of the periodic line, in its order, with their words. */
const COUNTERS = {
  spoofed: "spoofed",
  unroutable: "unroutable",
  notIpv4: "not IPv4",
  dropped: "dropped",
  badVnet: "bad virtio-net header",
  refused: "refused",
} as const satisfies Record<keyof ServerStats, string>;

/** What the server runs with. */
export interface ServerOptions {
  /** The PKI directory (ca.crt, server.crt, server.key, clients.json). */
  dir: string;
  /** The validated configuration. */
  config: ServerConfig;
  /** A TUN to use as is (tests); by default a Linux TUN is created and configured. */
  tun?: TunDevice;
}

/** The server of one VPN subnet. */
export class Server {
  readonly stats: ServerStats = {
    spoofed: 0,
    unroutable: 0,
    notIpv4: 0,
    refused: 0,
    dropped: 0,
    badVnet: 0,
  };
  readonly pool: AddressPool;
  /** Where the listener is bound. */
  readonly port: number;
  /** The UDP data channel, unless `listen.udp` is off or libcrypto is missing. */
  readonly udp: ServerUdp | undefined;
  /** Why there is no UDP data channel, told to clients that offer one. */
  readonly udpOff: string;

  readonly #config: ServerConfig;
  readonly #dir: string;
  readonly #tun: TunDevice;
  readonly #listener: Deno.TlsListener;
  readonly #trust: ServerTrust;
  /** Live sessions by their tunnel address (u32) and by certificate serial. */
  readonly #byAddress = new Map<number, Session>();
  readonly #bySerial = new Map<string, Session>();
  /** Connections still in their handshake, each with its way to be dropped. */
  readonly #preAuth = new Set<() => void>();
  /** The registry's inode, size and mtime as last read whole and settled; unset: read it. */
  #registryStamp: string | undefined;
  /** The stamp of the registry that last failed to read, so that it is logged once. */
  #failedStamp: string | undefined;
  #revocationTimer: ReturnType<typeof setInterval> | undefined;
  readonly #countersTimer: ReturnType<typeof setInterval>;
  readonly #counters = new CounterLine(COUNTERS);
  readonly #refusals = new RateLimit(REFUSAL_LOG_WINDOW_MS, REFUSAL_LOG_SOURCES);
  #revocationCheck: Promise<void> | undefined;
  readonly #reportedRejects = Object.fromEntries(
    REJECT_REASONS.map((reason) => [reason, 0]),
  ) as Record<RejectReason, number>;
  #stopped = false;
  readonly #done: Promise<void>;
  /** The inbound batch: packets for the TUN, and sessions with TLS frames to flush. */
  readonly #toTun: Uint8Array[] = [];
  #toTunCount = 0;
  readonly #touched: Session[] = [];
  /** Whether the TUN's packets carry a virtio-net header (offload). */
  readonly #vnet: boolean;
  /** Converts packets between the TUN's and each client's encoding (mod/core/offload.ts). */
  readonly #segmenter = new Segmenter();
  /** The session the segmenter is emitting for; set just before each `convert`. */
  #target: Session | undefined;
  /** With offload, joins inbound TCP segments into super-packets for the TUN (GRO). */
  readonly #coalescer: Coalescer | undefined;
  /** Numbers the TUN batches, from 1; see `Session.stalledBatch`. */
  #batch = 0;

  private constructor(
    options: ServerOptions,
    pool: AddressPool,
    tun: TunDevice,
    listener: Deno.TlsListener,
    trust: ServerTrust,
  ) {
    this.#config = options.config;
    this.#dir = options.dir;
    this.pool = pool;
    this.#tun = tun;
    this.#vnet = tun.vnetHdr;
    this.#coalescer = tun.vnetHdr ? new Coalescer((p, n) => tun.write(p, n)) : undefined;
    this.#listener = listener;
    this.#trust = trust;
    this.port = listener.addr.port;
    const { listen, keepalive, rekey_interval } = options.config;
    const udp = listen.udp
      ? ServerUdp.open(listen.host, this.port, this, keepalive.timeout, rekey_interval)
      : "UDP is off on this server (listen.udp: false)";
    this.udp = typeof udp === "string" ? undefined : udp;
    this.udpOff = typeof udp === "string" ? udp : "";
    if (listen.udp && this.udp === undefined) {
      logger.warn("{why}; clients use TLS only", { why: udp });
    }
    this.#revocationTimer = setInterval(() => {
      this.#checkRevocations();
      this.#endExpired();
      this.#reportRejects();
    }, REVOCATION_POLL_MS);
    this.#countersTimer = setInterval(() => {
      const counts = this.#counters.next(this.stats);
      if (counts !== undefined) logger.info("counters {counts}", { counts });
    }, COUNTERS_EVERY_MS);
    this.#done = Promise.all([this.#acceptLoop(), this.#tunToClients()]).then(() => {});
  }

  /** Creates the TUN, listens, and serves until {@linkcode stop}. */
  static async start(options: ServerOptions): Promise<Server> {
    const { config, dir } = options;
    const identity = await loadServerIdentity(dir);
    const trust: ServerTrust = {
      caPem: identity.caPem,
      serverNames: new Set(certificateNames(identity.certPem)),
      ...(await readRegistrySerials(dir)),
    };
    const pool = new AddressPool(config.subnet);
    const tun = options.tun ?? createServerTun(config, pool);
    let listener: Deno.TlsListener;
    try {
      listener = Deno.listenTls({
        hostname: config.listen.host,
        port: config.listen.port,
        cert: identity.certPem,
        key: identity.keyPem,
        alpnProtocols: [ALPN],
      });
    } catch (error) {
      tun.close();
      if (error instanceof Deno.errors.AddrInUse) {
        const address = formatPeer(config.listen.host, config.listen.port);
        throw new Error(
          `Cannot listen on ${address}: the port is in use; ` +
            `stop the program holding it or choose another listen.port`,
        );
      }
      throw error;
    }
    let server: Server;
    try {
      server = new Server(options, pool, tun, listener, trust);
    } catch (error) {
      listener.close();
      tun.close();
      throw error;
    }
    logger.info("listening on {address} ({transports}), subnet {subnet}, TUN {tun}", {
      address: formatPeer(config.listen.host, server.port),
      transports: server.udp ? "TLS and UDP" : "TLS",
      subnet: config.subnet,
      tun: tun.name,
    });
    return server;
  }

  /** Resolves once the server has stopped. */
  get done(): Promise<void> {
    return this.#done;
  }

  /** Number of authenticated sessions. */
  get sessionCount(): number {
    return this.#bySerial.size;
  }

  /** Number of connections in their handshake now (TLS or AUTH pending), at most 64. */
  get preAuthCount(): number {
    return this.#preAuth.size;
  }

  /** Says goodbye to every client, closes the listener and the TUN. */
  async stop(reason = "server shutting down"): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    clearInterval(this.#revocationTimer);
    clearInterval(this.#countersTimer);
    this.#listener.close();
    for (const drop of this.#preAuth) drop();
    await this.#revocationCheck;
    await Promise.all([...this.#bySerial.values()].map((s) => s.end("bye", reason)));
    await this.udp?.close();
    this.#tun.close();
    await this.#done;
    logger.info("stopped: {reason}", { reason });
  }

  async #acceptLoop(): Promise<void> {
    // Every accepted socket inherits TCP_NODELAY from the listener: no connection needs a
    // lookup of its socket for it (ffi/socket.ts).
    setListenerNoDelay(this.#listener.addr);
    try {
      for await (const conn of this.#listener) {
        if (this.#preAuth.size >= MAX_PRE_AUTH) {
          this.stats.refused++;
          const { hostname, port } = conn.remoteAddr;
          this.#logRefusal(
            hostname,
            formatPeer(hostname, port),
            "busy",
            `${MAX_PRE_AUTH} connections are in their handshake already`,
          );
          conn.close();
          // Its TLS handshake is pending, so close() alone leaves the socket open (ffi/socket.ts).
          shutdownTcp(conn.localAddr, conn.remoteAddr);
          continue;
        }
        this.#handshake(conn);
      }
    } catch (error) {
      if (!this.#stopped) logger.error("listener failed: {error}", { error: String(error) });
    }
  }

  async #handshake(conn: Deno.TlsConn): Promise<void> {
    const { hostname } = conn.remoteAddr;
    const peer = formatPeer(hostname, conn.remoteAddr.port);
    const channel = new Channel(conn);
    let tlsDone = false;
    let timedOut = false;
    const drop = () => {
      channel.close();
      // A TlsConn closed mid-handshake keeps its socket open (ffi/socket.ts says why).
      if (!tlsDone) shutdownTcp(conn.localAddr, conn.remoteAddr);
    };
    const expire = () => {
      timedOut = true;
      drop();
    };
    this.#preAuth.add(drop);
    const timer = setTimeout(expire, PRE_AUTH_TIMEOUT_MS);
    try {
      const { alpnProtocol } = await conn.handshake();
      tlsDone = true;
      if (alpnProtocol !== ALPN) throw new FrameError(`client offered no "${ALPN}" ALPN id`);
      logger.debug("TLS from {peer}", { peer });
      // A revocation made a moment ago must already count for this client.
      await this.#checkRevocations();
      const client = await acceptClient(channel, this.#trust);
      this.#admit(channel, client, hostname, peer);
    } catch (error) {
      this.stats.refused++;
      // At stop, every pending handshake is dropped: that is no client's failure.
      if (!this.#stopped) this.#logRefusal(hostname, peer, ...refusal(error, timedOut));
      if (error instanceof AuthError) await refuse(channel, error.reason, error.message);
      else if (error instanceof FrameError) await refuse(channel, "protocol", error.message);
      drop();
    } finally {
      clearTimeout(timer);
      this.#preAuth.delete(drop);
    }
  }

  #admit(channel: Channel, client: AuthenticatedClient, host: string, peer: string): void {
    const { name, serial } = client;
    if (this.#stopped) {
      channel.close();
      return;
    }
    // The registry may have been read again while this AUTH was verified against the older list.
    if (!this.#trust.valid.has(serial)) {
      throw new AuthError(
        "revoked",
        `certificate ${serial} is revoked or not in the client registry`,
      );
    }
    const previous = this.#bySerial.get(serial);
    // The same certificate again replaces its old session and keeps the address.
    if (previous) previous.end("replaced", "the same certificate connected again");
    const address = this.pool.allocate(serial, previous?.address ?? client.address);
    if (address === undefined) {
      this.stats.refused++;
      const more = this.#refusals.admit("pool-exhausted", host);
      if (more !== undefined) {
        logger.warn(
          "refused {name} from {peer}: address pool exhausted: {subnet} has no free client " +
            "address ({size} in use); a larger subnet in server.yaml makes room{more}",
          { name, peer, size: this.pool.size, subnet: this.#config.subnet, more },
        );
      }
      refuse(channel, "pool-exhausted", "address pool exhausted");
      return;
    }
    // Frames carry virtio-net headers when both TUNs have them (mod/core/offload.ts).
    const vnet = client.offload && this.#vnet;
    const session = new Session(this, channel, client, address, vnet, peer);
    this.#byAddress.set(session.addressNumber, session);
    this.#bySerial.set(serial, session);
    const { config } = this;
    sendPush(channel, {
      address,
      prefix: this.pool.prefix,
      gateway: this.pool.serverAddress,
      routes: config.push.routes,
      mtu: config.mtu,
      keepalive: { interval: config.keepalive.interval, timeout: config.keepalive.timeout },
      ...(vnet ? { offload: true } : {}),
    });
    logger.info("{name} connected from {peer}, address {address}", { name, peer, address });
    session.start();
  }

  /** Called by a session when it ends: frees its address unless a newer session has it. */
  forget(session: Session): void {
    this.udp?.forget(session);
    if (this.#bySerial.get(session.serial) === session) this.#bySerial.delete(session.serial);
    if (this.#byAddress.get(session.addressNumber) === session) {
      this.#byAddress.delete(session.addressNumber);
      this.pool.release(session.address);
    }
  }

  /** The configuration in force. */
  get config(): ServerConfig {
    return this.#config;
  }

  /**
   * Inbound: a packet from `session`'s client (a TLS frame or a datagram), in
   * `buffer[start, end)`, behind a virtio-net header when the session has offload. Call
   * {@linkcode flush} at the end of the batch.
   */
  fromClient(session: Session, buffer: Uint8Array, start: number, end: number): void {
    const ip = session.vnet ? start + VNET_HDR_LEN : start;
    if (end - ip < 20 || packetVersion(buffer, ip) !== 4) {
      this.stats.notIpv4++;
      return;
    }
    if (ipv4Source(buffer, ip) !== session.addressNumber) {
      this.stats.spoofed++;
      return;
    }
    // The client wrote this header, and our segmenter and kernel would cut the packet as it says.
    if (session.vnet && !validVnetHeader(buffer, start, end)) {
      this.stats.badVnet++;
      return;
    }
    const packet = buffer.subarray(start, end);
    if (this.#config.client_to_client) {
      const peer = this.#byAddress.get(ipv4Destination(buffer, ip));
      if (peer !== undefined && peer !== session) {
        this.#toClient(peer, packet, packet.length, session.vnet);
        return;
      }
    }
    if (this.#coalescer) this.#coalescer.add(packet, session.vnet);
    else this.#toTun[this.#toTunCount++] = packet;
  }

  /**
   * Outbound: a packet for `session`'s client, over UDP when that path is alive, else TLS;
   * `fromVnet` says whether it starts with a virtio-net header.
   */
  #toClient(session: Session, packet: Uint8Array, length: number, fromVnet: boolean): void {
    if (session.udp?.alive && this.udp) {
      this.#target = session;
      this.#segmenter.convert(
        packet,
        length,
        fromVnet,
        session.vnet,
        this.#config.mtu,
        this.#emitUdp,
      );
    } else if (fromVnet === session.vnet) {
      this.#queueTls(session, packet, length);
    } else {
      this.#target = session;
      this.#segmenter.convert(packet, length, fromVnet, session.vnet, Infinity, this.#emitTls);
    }
  }

  #queueTls(session: Session, packet: Uint8Array, length: number): void {
    if (session.channel.queueData(packet, length)) this.#touch(session);
    else this.stats.dropped++;
  }

  /** Puts `session` on the list of channels to flush at the end of the batch. */
  #touch(session: Session): void {
    if (session.touched) return;
    session.touched = true;
    this.#touched.push(session);
  }

  readonly #emitUdp = (packet: Uint8Array) => {
    // A key past its usage limit seals nothing; TLS carries the packet instead.
    if (!this.udp!.queue(this.#target!, packet, packet.length)) {
      this.#queueTls(this.#target!, packet, packet.length);
    }
  };

  readonly #emitTls = (packet: Uint8Array) => this.#queueTls(this.#target!, packet, packet.length);

  /** Ends a batch: the TUN gets its packets, UDP its datagrams, each touched session a write. */
  flush(): void {
    this.#coalescer?.flush();
    if (this.#toTunCount > 0) {
      this.#tun.write(this.#toTun, this.#toTunCount);
      this.#toTunCount = 0;
    }
    this.udp?.flush();
    for (const session of this.#touched) {
      session.touched = false;
      session.channel.flush();
    }
    this.#touched.length = 0;
  }

  /**
   * Backpressure with a bound: waits for the write in flight of a session whose send buffer
   * is full, at most {@linkcode CONGESTION_WAIT_MS}, since every other session waits too. A fast
   * client then loses nothing (dropped super-packets cost TCP far more than the wait); a slow
   * one loses what does not fit, as behind any router. False when the wait timed out.
   */
  async #makeRoom(session: Session): Promise<boolean> {
    this.flush();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const drained = await Promise.race([
      session.channel.drained().then(() => true),
      new Promise<boolean>((resolve) => timer = setTimeout(resolve, CONGESTION_WAIT_MS, false)),
    ]);
    clearTimeout(timer);
    return drained;
  }

  async #tunToClients(): Promise<void> {
    const bufs = Array.from({ length: BATCH }, () => new Uint8Array(MAX_PAYLOAD));
    const sizes = new Array<number>(BATCH).fill(0);
    const failures = new BatchFailures(logger, "TUN to clients");
    try {
      for (let n; (n = await this.#tun.read(bufs, sizes)) > 0;) {
        try {
          await this.#route(bufs, sizes, n);
        } catch (error) {
          failures.report(error);
        }
      }
    } catch (error) {
      if (!this.#stopped) logger.error("TUN read failed: {error}", { error: String(error) });
    }
  }

  /** Sends one batch read from the TUN to the clients the packets are for. */
  async #route(bufs: Uint8Array[], sizes: number[], n: number): Promise<void> {
    const ip = this.#vnet ? VNET_HDR_LEN : 0;
    const batch = ++this.#batch;
    for (let i = 0; i < n; i++) {
      const packet = bufs[i]!;
      const size = sizes[i]!;
      if (size < ip + 20 || packetVersion(packet, ip) !== 4) {
        this.stats.notIpv4++;
        continue;
      }
      const session = this.#byAddress.get(ipv4Destination(packet, ip));
      if (session === undefined) {
        this.stats.unroutable++;
      } else if (!session.udp?.alive && this.#vnet === session.vnet) {
        // TLS as is: a full send buffer waits a little for its write before it drops. A client
        // that reads slowly gets one wait per batch, one that stopped reading no more waits at
        // all (the others wait too).
        const { channel } = session;
        if (!channel.offerData(packet, size)) {
          if (
            session.stalledBatch !== batch && session.stalledAt !== channel.movedAt &&
            !await this.#makeRoom(session)
          ) {
            session.stalledBatch = batch;
            session.stalledAt = channel.movedAt;
          }
          if (!channel.queueData(packet, size)) {
            this.stats.dropped++;
            continue;
          }
        }
        this.#touch(session);
      } else {
        this.#toClient(session, packet, size, this.#vnet);
      }
    }
    this.flush();
  }

  /** Says, at most once a second, how many datagrams were dropped since the last time, and why. */
  #reportRejects(): void {
    const stats = this.udp?.stats;
    if (stats === undefined) return;
    const last = this.#reportedRejects;
    const reasons = REJECT_REASONS.map((reason) => [reason, stats[reason] - last[reason]] as const)
      .filter(([, count]) => count > 0);
    if (reasons.length === 0) return;
    const total = REJECT_REASONS.reduce((sum, reason) => sum + stats[reason], 0);
    logger.info("UDP: dropped {count} datagrams ({reasons}), {total} in all", {
      count: reasons.reduce((sum, [, count]) => sum + count, 0),
      reasons: reasons.map(([reason, count]) => `${count} ${REJECT_WORDS[reason]}`).join(", "),
      total,
    });
    for (const reason of REJECT_REASONS) last[reason] = stats[reason];
  }

  /**
   * Logs a connection refused before auth, at most once per reason and source address in
   * {@linkcode REFUSAL_LOG_WINDOW_MS}: an operator sees every client that fails, and a client
   * that retries, or a scan, cannot flood the log. `host` is the source as the socket has it.
   */
  #logRefusal(host: string, peer: string, reason: string, detail: string): void {
    const more = this.#refusals.admit(reason, peerHost(host));
    if (more === undefined) return;
    logger.warn("refused {peer}: {reason}: {detail}{more}", {
      peer,
      reason,
      detail: escapeText(detail),
      more,
    });
  }

  /** Ends each session whose certificate has expired: a certificate's validity bounds it. */
  #endExpired(): void {
    const now = Date.now();
    for (const session of [...this.#bySerial.values()]) {
      if (session.notAfter.getTime() > now) continue;
      logger.warn("{name}: certificate expired, ending its session", { name: session.name });
      session.end("expired", `certificate expired at ${session.notAfter.toISOString()}`);
    }
  }

  /** Re-reads the revocation list if the registry changed; one check at a time. */
  #checkRevocations(): Promise<void> {
    this.#revocationCheck ??= this.#reloadRevocations().finally(() => {
      this.#revocationCheck = undefined;
    });
    return this.#revocationCheck;
  }

  async #reloadRevocations(): Promise<void> {
    let stamp = "missing";
    try {
      const { ino, size, mtime } = await Deno.stat(`${this.#dir}/${REGISTRY_FILE}`);
      const modified = mtime?.getTime() ?? 0;
      stamp = `${ino} ${size} ${modified}`;
      if (stamp === this.#registryStamp) return;
      Object.assign(this.#trust, await readRegistrySerials(this.#dir));
      this.#registryStamp = Date.now() - modified > REGISTRY_TICK_MS ? stamp : undefined;
    } catch (error) {
      // Nothing is taken as read, so the next poll reads it again; said again once it changed.
      if (stamp !== this.#failedStamp) {
        logger.warn("cannot read the client registry: {error}", { error: String(error) });
      }
      this.#failedStamp = stamp;
      return;
    }
    if (this.#failedStamp !== undefined) {
      logger.info("read the client registry again");
      this.#failedStamp = undefined;
    }
    for (const session of [...this.#bySerial.values()]) {
      if (!this.#trust.valid.has(session.serial)) {
        logger.warn("{name}: certificate revoked, dropping its session", { name: session.name });
        session.end("revoked", "certificate revoked");
      }
    }
  }
}

/** What fixes what a TLS client's alert about this server's certificate says. */
const CERTIFICATE_ALERTS = new Map([
  ["UnknownCA", 'the client trusts another CA: give it a profile made here by "vpn client add"'],
  [
    "BadCertificate",
    "the client dialled a name or address that server.crt does not name (those given to " +
    '"vpn init --host"), or cannot use the certificate',
  ],
  [
    "CertificateExpired",
    "server.crt is outside its validity period by the client's clock; check both clocks",
  ],
]);

/**
 * The reason a connection was refused before auth, a short fixed word that keys the refusal
 * log's rate limit, and what to say about it. A TLS error's text comes from rustls and may
 * name what the peer sent: it goes into the detail, escaped by the caller, never into the
 * reason.
 */
function refusal(error: unknown, timedOut: boolean): [reason: string, detail: string] {
  if (timedOut) {
    return ["timeout", `no TLS handshake and AUTH within ${PRE_AUTH_TIMEOUT_MS / 1000} s`];
  }
  if (error instanceof AuthError) return [error.reason, error.message];
  if (error instanceof FrameError) return ["protocol", error.message];
  const message = error instanceof Error ? error.message : String(error);
  if (
    error instanceof Deno.errors.UnexpectedEof || error instanceof Deno.errors.ConnectionReset ||
    error instanceof Deno.errors.BrokenPipe
  ) {
    return ["closed", `the client closed the connection before it authenticated (${message})`];
  }
  const alert = /^received fatal alert: (\w+)$/.exec(message)?.[1];
  if (alert !== undefined && (alert === "UnknownCA" || alert.includes("Certificate"))) {
    const why = CERTIFICATE_ALERTS.get(alert) ?? "the client does not accept server.crt";
    return ["server-certificate-rejected", `${why} (TLS: ${message})`];
  }
  if (message === "peer doesn't support any known protocol") {
    return ["protocol", `client offered no "${ALPN}" ALPN id (TLS: ${message})`];
  }
  if (message.startsWith("received corrupt message")) {
    return ["not-tls", `the client does not speak TLS (${message})`];
  }
  return ["tls", `TLS handshake failed: ${message}`];
}

function createServerTun(config: ServerConfig, pool: AddressPool): TunDevice {
  const tun = LinuxTun.create({ name: config.dev, offload: config.offload });
  try {
    using nl = Netlink.open();
    const index = nl.linkIndex(tun.name);
    nl.setMtu(index, config.mtu);
    nl.addAddress(index, `${pool.serverAddress}/${pool.prefix}`);
    nl.setLinkUp(index);
  } catch (error) {
    tun.close();
    throw error;
  }
  return tun;
}
