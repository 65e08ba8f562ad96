/**
 * The VPN server: one TUN, one TLS listener, one session per authenticated client, and the
 * server as the gateway of a star.
 *
 * Outbound, server TUN → client (`#tunToClients`):
 *   1. one awaited batch read from the server TUN;
 *   2. route each IPv4 packet by destination to the session that owns that address;
 *   3. copy it into that session's send buffer (dropped and counted when full);
 *   4. after the batch, every session that got packets sends them in one TLS write.
 *
 * Inbound, client → server (`Session.#onFrame`):
 *   1. one TLS read; every complete frame in it is parsed in place;
 *   2. a packet whose source is not the session's address is dropped and counted;
 *   3. with `client_to_client`, a packet for another client goes straight to its session;
 *      everything else is collected for the TUN, where the host routes it (like OpenVPN);
 *   4. after the read, the collected packets go into the TUN in one batch.
 *
 * @module
 */

import { LinuxTun, type TunDevice } from "../ffi/tun.ts";
import { Netlink } from "../ffi/netlink.ts";
import { shutdownTcp } from "../ffi/socket.ts";
import { AddressPool } from "./address_pool.ts";
import { Channel } from "./channel.ts";
import type { ServerConfig } from "./config.ts";
import { acceptClient, refuse, sendPush, type ServerTrust } from "./handshake.ts";
import { ipv4Destination, ipv4Source, packetVersion, parseIPv4 } from "./ip.ts";
import { log } from "./log.ts";
import { ALPN, decodeBye, encodeMessage, type ErrorReason } from "./messages.ts";
import {
  AuthError,
  certificateNames,
  loadServerIdentity,
  readRevokedSerials,
  REGISTRY_FILE,
} from "./pki.ts";
import { FrameError, FrameType, MAX_PAYLOAD } from "./wire.ts";

const logger = log("server");

/** A connection must finish TLS and AUTH within this time (ms), or it is closed. */
const PRE_AUTH_TIMEOUT_MS = 10_000;
/** Connections still in their handshake at once; more are closed at accept. */
const MAX_PRE_AUTH = 64;
/** How often the client registry is checked for revocations (ms). */
const REVOCATION_POLL_MS = 1000;
/** Packets one TUN read returns at most. */
const BATCH = 64;

/** Counters of the server; they only grow. */
export interface ServerStats {
  /** Packets from a client whose source was not that client's address. */
  spoofed: number;
  /** Packets read from the TUN for an address no session owns. */
  unroutable: number;
  /** Connections closed before auth: TLS failure, protocol error, timeout, or refusal. */
  refused: number;
}

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
  readonly stats: ServerStats = { spoofed: 0, unroutable: 0, refused: 0 };
  readonly pool: AddressPool;
  /** Where the listener is bound. */
  readonly port: number;

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
  #registryMtime = 0;
  #revocationTimer: ReturnType<typeof setInterval> | undefined;
  #revocationCheck: Promise<void> | undefined;
  #stopped = false;
  readonly #done: Promise<void>;

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
    this.#listener = listener;
    this.#trust = trust;
    this.port = listener.addr.port;
    this.#revocationTimer = setInterval(() => this.#checkRevocations(), REVOCATION_POLL_MS);
    this.#done = Promise.all([this.#acceptLoop(), this.#tunToClients()]).then(() => {});
  }

  /** Creates the TUN, listens, and serves until {@linkcode stop}. */
  static async start(options: ServerOptions): Promise<Server> {
    const { config, dir } = options;
    const identity = await loadServerIdentity(dir);
    const trust: ServerTrust = {
      caPem: identity.caPem,
      serverNames: new Set(certificateNames(identity.certPem)),
      revoked: await readRevokedSerials(dir),
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
      throw error;
    }
    const server = new Server(options, pool, tun, listener, trust);
    logger.info("listening on {host}:{port} (TLS), subnet {subnet}, TUN {tun}", {
      host: config.listen.host,
      port: server.port,
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

  /** Says goodbye to every client, closes the listener and the TUN. */
  async stop(reason = "server shutting down"): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    clearInterval(this.#revocationTimer);
    this.#listener.close();
    for (const drop of this.#preAuth) drop();
    await this.#revocationCheck;
    await Promise.all([...this.#bySerial.values()].map((s) => s.end("bye", reason)));
    this.#tun.close();
    await this.#done;
    logger.info("stopped: {reason}", { reason });
  }

  async #acceptLoop(): Promise<void> {
    try {
      for await (const conn of this.#listener) {
        if (this.#preAuth.size >= MAX_PRE_AUTH) {
          this.stats.refused++;
          conn.close();
          continue;
        }
        this.#handshake(conn);
      }
    } catch (error) {
      if (!this.#stopped) logger.error("listener failed: {error}", { error: String(error) });
    }
  }

  async #handshake(conn: Deno.TlsConn): Promise<void> {
    const peer = `${conn.remoteAddr.hostname}:${conn.remoteAddr.port}`;
    const channel = new Channel(conn);
    let tlsDone = false;
    const drop = () => {
      channel.close();
      // A TlsConn closed mid-handshake keeps its socket open (ffi/socket.ts says why).
      if (!tlsDone) shutdownTcp(conn.localAddr, conn.remoteAddr);
    };
    this.#preAuth.add(drop);
    const timer = setTimeout(drop, PRE_AUTH_TIMEOUT_MS);
    try {
      const { alpnProtocol } = await conn.handshake();
      tlsDone = true;
      if (alpnProtocol !== ALPN) throw new FrameError(`client offered no "${ALPN}" ALPN id`);
      logger.debug("TLS from {peer}", { peer });
      // A revocation made a moment ago must already count for this client.
      await this.#checkRevocations();
      const client = await acceptClient(channel, this.#trust);
      this.#admit(channel, client.name, client.serial, client.address, peer);
    } catch (error) {
      this.stats.refused++;
      if (error instanceof AuthError) {
        logger.warn("refused {peer}: {reason}: {message}", {
          peer,
          reason: error.reason,
          message: error.message,
        });
        await refuse(channel, error.reason, error.message);
      } else {
        logger.debug("dropped {peer} before auth: {error}", { peer, error: String(error) });
        if (error instanceof FrameError) await refuse(channel, "protocol", error.message);
      }
      drop();
    } finally {
      clearTimeout(timer);
      this.#preAuth.delete(drop);
    }
  }

  #admit(
    channel: Channel,
    name: string,
    serial: string,
    preferred: string | undefined,
    peer: string,
  ): void {
    if (this.#stopped) {
      channel.close();
      return;
    }
    const previous = this.#bySerial.get(serial);
    // The same certificate again replaces its old session and keeps the address.
    if (previous) previous.end("replaced", "the same certificate connected again");
    const address = this.pool.allocate(serial, previous?.address ?? preferred);
    if (address === undefined) {
      this.stats.refused++;
      logger.warn("refused {name} from {peer}: address pool exhausted", { name, peer });
      refuse(channel, "pool-exhausted", "address pool exhausted");
      return;
    }
    const session = new Session(this, channel, name, serial, address, peer);
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
    });
    logger.info("{name} connected from {peer}, address {address}", { name, peer, address });
    session.start();
  }

  /** Called by a session when it ends: frees its address unless a newer session has it. */
  forget(session: Session): void {
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

  /** The TUN, for sessions to write into. */
  get tun(): TunDevice {
    return this.#tun;
  }

  /** The session that owns a tunnel address, if any. */
  sessionFor(address: number): Session | undefined {
    return this.#byAddress.get(address);
  }

  async #tunToClients(): Promise<void> {
    const bufs = Array.from({ length: BATCH }, () => new Uint8Array(MAX_PAYLOAD));
    const sizes = new Array<number>(BATCH).fill(0);
    const touched: Session[] = [];
    try {
      for (let n; (n = await this.#tun.read(bufs, sizes)) > 0;) {
        for (let i = 0; i < n; i++) {
          const packet = bufs[i]!;
          const size = sizes[i]!;
          const session = size >= 20 && packetVersion(packet) === 4
            ? this.#byAddress.get(ipv4Destination(packet))
            : undefined;
          if (session === undefined) {
            this.stats.unroutable++;
            continue;
          }
          if (session.channel.queueData(packet, size) && !session.touched) {
            session.touched = true;
            touched.push(session);
          }
        }
        for (const session of touched) {
          session.touched = false;
          session.channel.flush();
        }
        touched.length = 0;
      }
    } catch (error) {
      if (!this.#stopped) logger.error("TUN read failed: {error}", { error: String(error) });
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
    try {
      const { mtime } = await Deno.stat(`${this.#dir}/${REGISTRY_FILE}`);
      const changed = mtime?.getTime() ?? 0;
      if (changed === this.#registryMtime) return;
      this.#registryMtime = changed;
      this.#trust.revoked = await readRevokedSerials(this.#dir);
    } catch (error) {
      logger.warn("cannot read the client registry: {error}", { error: String(error) });
      return;
    }
    for (const session of [...this.#bySerial.values()]) {
      if (this.#trust.revoked.has(session.serial)) {
        logger.warn("{name}: certificate revoked, dropping its session", { name: session.name });
        session.end("revoked", "certificate revoked");
      }
    }
  }
}

/** One authenticated client. */
class Session {
  readonly channel: Channel;
  readonly name: string;
  readonly serial: string;
  readonly address: string;
  readonly addressNumber: number;
  /** Set while the session is in the current TUN batch's list of sessions to flush. */
  touched = false;

  readonly #server: Server;
  readonly #peer: string;
  readonly #toTun: Uint8Array[] = [];
  #toTunCount = 0;
  readonly #forwarded: Session[] = [];
  #keepalive: ReturnType<typeof setInterval> | undefined;
  #ended = false;

  constructor(
    server: Server,
    channel: Channel,
    name: string,
    serial: string,
    address: string,
    peer: string,
  ) {
    this.#server = server;
    this.channel = channel;
    this.name = name;
    this.serial = serial;
    this.address = address;
    this.addressNumber = parseIPv4(address);
    this.#peer = peer;
  }

  /** Starts the read loop and the keepalive. */
  start(): void {
    const { interval, timeout } = this.#server.config.keepalive;
    this.#keepalive = setInterval(() => {
      if (performance.now() - this.channel.lastReceived > timeout * 1000) {
        this.end("timeout", `no data for ${timeout} s`);
      } else {
        this.channel.sendControl(FrameType.PING);
      }
    }, interval * 1000);
    this.channel.readFrames(
      (type, buffer, start, end) => this.#onFrame(type, buffer, start, end),
      () => this.#onBatch(),
    ).then(
      () => this.end("closed", "connection closed by the client"),
      (error) => {
        if (error instanceof FrameError) this.end("protocol", error.message);
        else this.end("closed", `connection lost: ${error.message ?? error}`);
      },
    );
  }

  #onFrame(type: FrameType, buffer: Uint8Array, start: number, end: number): void {
    if (type === FrameType.DATA) {
      this.#onPacket(buffer, start, end);
      return;
    }
    switch (type) {
      case FrameType.PING:
        this.channel.sendControl(FrameType.PONG, buffer.slice(start, end));
        return;
      case FrameType.PONG:
        return;
      case FrameType.BYE:
        this.end("closed", `client said goodbye: ${decodeBye(buffer.subarray(start, end)).reason}`);
        return;
      default:
        throw new FrameError(`unexpected frame type ${type} after auth`);
    }
  }

  #onPacket(buffer: Uint8Array, start: number, end: number): void {
    const server = this.#server;
    if (
      end - start < 20 || packetVersion(buffer, start) !== 4 ||
      ipv4Source(buffer, start) !== this.addressNumber
    ) {
      server.stats.spoofed++;
      return;
    }
    if (server.config.client_to_client) {
      const peer = server.sessionFor(ipv4Destination(buffer, start));
      if (peer !== undefined && peer !== this) {
        if (peer.channel.queueData(buffer.subarray(start, end), end - start) && !peer.touched) {
          peer.touched = true;
          this.#forwarded.push(peer);
        }
        return;
      }
    }
    this.#toTun[this.#toTunCount++] = buffer.subarray(start, end);
  }

  #onBatch(): void {
    if (this.#toTunCount > 0) {
      this.#server.tun.write(this.#toTun, this.#toTunCount);
      this.#toTunCount = 0;
    }
    for (const peer of this.#forwarded) {
      peer.touched = false;
      peer.channel.flush();
    }
    this.#forwarded.length = 0;
  }

  /**
   * Ends the session and frees its address. The client is told why: an ERROR for a problem,
   * a BYE for a shutdown, nothing when the connection is already gone (`closed`).
   */
  async end(reason: ErrorReason | "bye" | "closed", message: string): Promise<void> {
    if (this.#ended) return;
    this.#ended = true;
    clearInterval(this.#keepalive);
    this.#server.forget(this);
    const { bytesIn, bytesOut, dropped } = this.channel.stats;
    logger.info(
      "{name} ({address}, {peer}) disconnected: {message}; {bytesIn} bytes in, {bytesOut} out, {dropped} dropped",
      {
        name: this.name,
        address: this.address,
        peer: this.#peer,
        message,
        bytesIn,
        bytesOut,
        dropped,
      },
    );
    if (reason === "closed") this.channel.close();
    else if (reason === "bye") {
      await this.channel.closeWith(FrameType.BYE, encodeMessage({ reason: message }));
    } else await refuse(this.channel, reason, message);
  }
}

function createServerTun(config: ServerConfig, pool: AddressPool): TunDevice {
  const tun = LinuxTun.create({ name: config.dev });
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
