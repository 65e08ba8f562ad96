/**
 * The core of the server: one TUN, the address pool, the table from tunnel addresses (and the
 * networks behind clients) to sessions, what each client is given (`ClientNetwork`),
 * anti-spoofing, `client_to_client`, revocation, certificate expiry and keepalive.
 * It drives every session through {@linkcode TunnelSession} and never knows which protocol a
 * session speaks: listeners (mod/native/listener.ts, mod/openvpn/server.ts) authenticate
 * clients, `admit` them here and feed their packets in.
 *
 * Outbound, server TUN → client (`#tunToClients`):
 *   1. one awaited batch read from the server TUN;
 *   2. route each packet by destination to the session that owns that address (IPv4, or IPv6
 *      with `subnet6`: one map lookup each), else to the session with a network behind it
 *      that holds the address (a longest-prefix match);
 *   3. hand it to the session as is when the session takes it so (same virtio-net encoding, no
 *      size limit), else cut to the session's `maxPacket` (mod/core/offload.ts); a full send
 *      buffer waits up to 2 ms for that session's write, then drops (counted), and after one
 *      such wait times out, the rest of the batch for that session drops at once, as does every
 *      later packet until its write moves again;
 *   4. after the batch (`flush`): the transports' batched sends (one `sendmmsg`), one write
 *      per session that got packets.
 *
 * Inbound, client → server (`fromClient`, fed by the protocols):
 *   1. one read or one batch of datagrams, every packet in it parsed in place;
 *   2. a packet whose source is neither the session's address nor in a network behind that
 *      client is dropped and counted;
 *   3. with `client_to_client`, a packet for another client goes straight out to it (step 3
 *      above); everything else is collected for the TUN, where the host routes it (like OpenVPN);
 *   4. after the read (`flush`), the collected packets go into the TUN in one batch.
 *
 * @module
 */

import type { TunDevice } from "../../ffi/tun.ts";
import type { ServerConfig } from "../config.ts";
import { BatchFailures, CounterLine, escapeText, log, RateLimit } from "../log.ts";
import { AuthError, type ClientSettings, readRegistrySerials, REGISTRY_FILE } from "../pki.ts";
import { AddressPool } from "./address_pool.ts";
import {
  ipv4Destination,
  ipv4Source,
  ipv6DestinationEquals,
  ipv6HostKey,
  ipv6SourceEquals,
  packetVersion,
  parseIPv4,
  parseIPv6,
  peerHost,
} from "./ip.ts";
import { PrefixTable } from "./prefix_table.ts";
import { Subnet6 } from "./subnet6.ts";
import { Coalescer, Segmenter, validVnetHeader, VNET_HDR_LEN } from "./offload.ts";
import { type Lease, writeLeases } from "./leases.ts";
import {
  addTraffic,
  type ClientNetwork,
  describeNetwork,
  newTraffic,
  type SessionStatus,
  type SessionTraffic,
  type TunnelSession,
} from "./session.ts";

const logger = log("server");

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
/** Longest the TUN loop waits for one session's write before that session drops (ms). */
const CONGESTION_WAIT_MS = 2;
/** One refusal line per reason and source address in this time (ms); the rest are counted. */
const REFUSAL_LOG_WINDOW_MS = 10_000;
/** Source addresses the refusal log tells apart; more share one line per reason. */
const REFUSAL_LOG_SOURCES = 1024;
/** How often the counters line goes out (ms), when a counter moved. */
const COUNTERS_EVERY_MS = 10_000;
/** The IPv6 header's length, and where its source and destination addresses start. */
const IPV6_HEADER = 40;
const IPV6_SOURCE = 8;
const IPV6_DESTINATION = 24;
/** Room for the largest packet a TUN read returns (a 64 KiB super-packet and its header). */
const MAX_TUN_PACKET = 65535 + VNET_HDR_LEN;

/** Counters of the server; they only grow. */
export interface ServerStats {
  /**
   * Packets from a client whose source was neither that client's address nor inside a network
   * behind it.
   */
  spoofed: number;
  /** Packets read from the TUN for an address no session owns. */
  unroutable: number;
  /**
   * Packets either way that are neither IPv4 nor IPv6, or too short for their header; and IPv6
   * ones when the tunnel has no `subnet6` (the kernels' own router solicitations, mostly).
   */
  notIp: number;
  /**
   * IPv6 packets either way with a link-local source or a multicast or link-local destination:
   * each kernel's own neighbour discovery and MLD on its TUN, which stays on that link.
   */
  linkLocal: number;
  /** Connections closed before auth: TLS failure, protocol error, timeout, or refusal. */
  refused: number;
  /** Packets for clients dropped because the session's send buffer was full. */
  dropped: number;
  /** Packets from clients dropped for a virtio-net header no kernel writes (mod/core/offload.ts). */
  badVnet: number;
}

/** The counters of the periodic line, in its order, with their words. */
const COUNTERS = {
  spoofed: "spoofed",
  unroutable: "unroutable",
  notIp: "not IP",
  linkLocal: "IPv6 link-local",
  dropped: "dropped",
  badVnet: "bad virtio-net header",
  refused: "refused",
} as const satisfies Record<keyof ServerStats, string>;

/** Whom the server admits: its CA and the registry's serials, kept current by the router. */
export interface Trust {
  caPem: string;
  /** Serials of revoked client certificates. */
  revoked: Set<string>;
  /** Serials in the registry and not revoked: no other client certificate is admitted. */
  valid: Set<string>;
  /** What `vpn client set` gave each valid client, by serial. */
  settings: Map<string, ClientSettings>;
}

/** An authenticated client asking for a session. */
export interface Admission {
  name: string;
  serial: string;
  /** The address the client asks for (its last one), if any. */
  preferred?: string;
}

/** The router of one VPN subnet. */
export class Router {
  readonly stats: ServerStats = {
    spoofed: 0,
    unroutable: 0,
    notIp: 0,
    linkLocal: 0,
    refused: 0,
    dropped: 0,
    badVnet: 0,
  };
  /** Handshakes since start: `ok`, and each refusal reason. */
  readonly handshakes: Record<string, number> = {};
  /** OpenVPN renegotiations since start (our UDP rekeys are ServerUdp's). */
  renegotiations = 0;
  readonly pool: AddressPool;
  /** The IPv6 subnet, when the tunnel has IPv6. */
  readonly subnet6: Subnet6 | undefined;
  readonly config: ServerConfig;
  readonly trust: Trust;
  /** Whether the TUN's packets carry a virtio-net header (offload). */
  readonly vnet: boolean;

  readonly #dir: string;
  readonly #tun: TunDevice;
  /** Live sessions by their tunnel address (u32) and by certificate serial. */
  readonly #byAddress = new Map<number, TunnelSession>();
  readonly #bySerial = new Map<string, TunnelSession>();
  /** Live sessions by the low 32 bits of their IPv6 address (the host number). */
  readonly #byAddress6 = new Map<number, TunnelSession>();
  /** The networks behind live clients, to their sessions. */
  readonly #sites = new PrefixTable<TunnelSession>();
  /** Each connected client's settings as its session got them, and as last announced. */
  readonly #applied = new Map<string, string>();
  readonly #announced = new Map<string, string>();
  /** What the sessions that ended moved, for the totals since start. */
  readonly #endedTraffic = newTraffic();
  /** When each live session was admitted (ms since the epoch), for `vpn status`. */
  readonly #connectedAt = new Map<TunnelSession, number>();
  /** Called after every read of the registry (the server keeps the sites' kernel routes). */
  readonly #registryListeners: (() => void)[] = [];
  /** When each client with a lease was last connected (ms since the epoch), by serial. */
  readonly #seen = new Map<string, number>();
  /** The leases changed since they were last written; the write in progress. */
  #leasesDirty = false;
  #leasesWrite: Promise<void> | undefined;
  #leasesFailing = false;
  /** The transports' batched sends, run at the end of every batch. */
  readonly #flushes: (() => void)[] = [];
  /** The registry's inode, size and mtime as last read whole and settled; unset: read it. */
  #registryStamp: string | undefined;
  /** The stamp of the registry that last failed to read, so that it is logged once. */
  #failedStamp: string | undefined;
  #revocationCheck: Promise<void> | undefined;
  readonly #timers: ReturnType<typeof setInterval>[];
  #keepaliveTimer: ReturnType<typeof setInterval>;
  /** The earliest certificate expiry among the sessions (ms); it may be of one that ended. */
  #nextExpiry = Infinity;
  readonly #counters = new CounterLine(COUNTERS);
  readonly #refusals = new RateLimit(REFUSAL_LOG_WINDOW_MS, REFUSAL_LOG_SOURCES);
  #stopped = false;
  readonly #done: Promise<void>;
  /** The inbound batch: packets for the TUN, and sessions to flush. */
  readonly #toTun: Uint8Array[] = [];
  #toTunCount = 0;
  readonly #touched: TunnelSession[] = [];
  /** Converts packets between the TUN's and each client's encoding (mod/core/offload.ts). */
  readonly #segmenter = new Segmenter();
  /** The session the segmenter is emitting for; set just before each `convert`. */
  #target: TunnelSession | undefined;
  /** With offload, joins inbound TCP segments into super-packets for the TUN (GRO). */
  readonly #coalescer: Coalescer | undefined;
  /** Numbers the TUN batches, from 1; see `TunnelSession.stalledBatch`. */
  #batch = 0;

  /**
   * `leases` are those `readLeases` found: each one still in time and of a valid certificate
   * keeps its address for its client.
   */
  constructor(
    config: ServerConfig,
    dir: string,
    tun: TunDevice,
    trust: Trust,
    leases: readonly Lease[] = [],
  ) {
    this.config = config;
    this.#dir = dir;
    this.#tun = tun;
    this.trust = trust;
    this.pool = new AddressPool(config.subnet);
    this.pool.setFixed(fixedAddresses(trust.settings));
    this.subnet6 = config.subnet6 === "none"
      ? undefined
      : new Subnet6(config.subnet6, this.pool.prefix);
    const oldest = Date.now() - config.lease_time * 1000;
    for (const lease of leases) {
      if (lease.seen < oldest || !trust.valid.has(lease.serial)) continue;
      if (this.pool.restore(lease.serial, lease.address)) this.#seen.set(lease.serial, lease.seen);
    }
    this.vnet = tun.vnetHdr;
    this.#coalescer = tun.vnetHdr ? new Coalescer((p, n) => tun.write(p, n)) : undefined;
    this.#timers = [
      setInterval(() => {
        this.checkRevocations();
        this.#endExpired();
        this.#saveLeases();
      }, REVOCATION_POLL_MS),
      setInterval(() => {
        const counts = this.#counters.next(this.stats);
        if (counts !== undefined) logger.info("counters {counts}", { counts });
      }, COUNTERS_EVERY_MS),
    ];
    this.#keepaliveTimer = setInterval(() => this.#keepalive(), config.keepalive.interval * 1000);
    this.#done = this.#tunToClients();
  }

  /**
   * Takes the settings of `next` that can change while sessions run: what is pushed (to
   * clients that connect from now on), keepalive, `client_to_client` and `lease_time`. Returns
   * the keys that changed.
   */
  reconfigure(next: ServerConfig): string[] {
    const config = this.config;
    const changed: string[] = [];
    const live = ["push", "keepalive", "client_to_client", "lease_time"] as const;
    for (const key of live) {
      if (JSON.stringify(config[key]) === JSON.stringify(next[key])) continue;
      changed.push(key);
      if (key === "keepalive" && config.keepalive.interval !== next.keepalive.interval) {
        clearInterval(this.#keepaliveTimer);
        this.#keepaliveTimer = setInterval(
          () => this.#keepalive(),
          next.keepalive.interval * 1000,
        );
      }
      Object.assign(config, { [key]: structuredClone(next[key]) });
    }
    return changed;
  }

  /** Resolves once the TUN loop has ended. */
  get done(): Promise<void> {
    return this.#done;
  }

  /** Number of sessions. */
  get sessionCount(): number {
    return this.#bySerial.size;
  }

  /** Every live session. */
  sessions(): TunnelSession[] {
    return [...this.#bySerial.values()];
  }

  /** Counts a handshake's outcome; reasons are our own words, a bounded set. */
  #countHandshake(result: string): void {
    this.handshakes[result] = (this.handshakes[result] ?? 0) + 1;
  }

  /** Every session's inner packets and bytes since start, the live ones' so far included. */
  totalTraffic(): SessionTraffic {
    const total = { ...this.#endedTraffic };
    for (const { traffic } of this.#bySerial.values()) addTraffic(total, traffic);
    return total;
  }

  /** Every live session as `vpn status` shows it. */
  sessionStatus(): SessionStatus[] {
    const now = Date.now();
    const monotonic = performance.now();
    return this.sessions().map((session) => {
      const { traffic, network } = session;
      return {
        name: session.name,
        serial: session.serial,
        protocol: session.protocol,
        cipher: session.cipher,
        peer: session.peer,
        address: network.address,
        ...(network.address6 !== undefined ? { address6: network.address6 } : {}),
        connectedAt: new Date(this.#connectedAt.get(session) ?? now).toISOString(),
        lastHeardAt: new Date(now - (monotonic - session.lastReceived)).toISOString(),
        ...traffic,
      };
    });
  }

  /** Runs `flush` at the end of every batch: a transport's batched sends. */
  onFlush(flush: () => void): void {
    this.#flushes.push(flush);
  }

  /**
   * Gives an authenticated client its address and makes its session with `create`. The same
   * certificate again replaces its old session and keeps the address. Throws an `AuthError` (revoked)
   * when the registry no longer lists the serial; undefined when the pool is exhausted
   * (logged here).
   */
  admit(
    client: Admission,
    peer: string,
    host: string,
    create: (network: ClientNetwork) => TunnelSession,
  ): TunnelSession | undefined {
    const { name, serial } = client;
    // The registry may have been read again while this client was verified against the older list.
    if (!this.trust.valid.has(serial)) {
      throw new AuthError(
        "revoked",
        `certificate ${serial} is revoked or not in the client registry`,
      );
    }
    const previous = this.#bySerial.get(serial);
    if (previous) previous.end("replaced", "the same certificate connected again");
    const address = this.pool.allocate(serial, previous?.address ?? client.preferred);
    if (address === undefined) {
      this.stats.refused++;
      this.#countHandshake("pool-exhausted");
      const more = this.#refusals.admit("pool-exhausted", host);
      if (more !== undefined) {
        logger.warn(
          "refused {name} from {peer}: address pool exhausted: {subnet} has no free client " +
            "address ({size} in use); a larger subnet in server.yaml makes room{more}",
          { name, peer, size: this.pool.size, subnet: this.config.subnet, more },
        );
      }
      return undefined;
    }
    const settings = this.trust.settings.get(serial) ?? { routes: [] };
    const network = this.#networkFor(name, serial, address, settings);
    const session = create(network);
    this.#connectedAt.set(session, Date.now());
    this.#countHandshake("ok");
    this.#byAddress.set(network.addressNumber, session);
    if (network.address6Bytes !== undefined) {
      this.#byAddress6.set(ipv6HostKey(network.address6Bytes, 0), session);
    }
    for (const site of network.sites) this.#sites.add(site, session);
    this.#bySerial.set(serial, session);
    this.#nextExpiry = Math.min(this.#nextExpiry, session.notAfter.getTime());
    this.#touchLease(serial);
    const text = JSON.stringify(settings);
    const before = this.#applied.get(serial);
    if (before !== undefined && before !== text) {
      logger.info("{name}: new settings from the registry applied: {network}", {
        name,
        network: describeNetwork(network),
      });
    }
    this.#applied.set(serial, text);
    this.#announced.set(serial, text);
    return session;
  }

  /** What `name` gets: its addresses, routes and DNS, from `server.yaml` and its settings. */
  #networkFor(
    name: string,
    serial: string,
    address: string,
    settings: ClientSettings,
  ): ClientNetwork {
    const { config, pool } = this;
    if (settings.address !== undefined && settings.address !== address) {
      logger.warn(
        "{name}: its fixed address {fixed} is still held by another client, which keeps it " +
          "until it disconnects; {name} gets {address} this time",
        { name, fixed: settings.address, address },
      );
    }
    const routes = [...config.push.routes];
    if (config.client_to_client) {
      for (const [other, theirs] of this.trust.settings) {
        if (other !== serial) routes.push(...theirs.routes.filter((r) => this.#carries(r)));
      }
    }
    const network: ClientNetwork = {
      address,
      addressNumber: parseIPv4(address),
      prefix: pool.prefix,
      netmask: pool.netmask,
      gateway: pool.serverAddress,
      routes,
      sites: settings.routes.filter((r) => this.#carries(r)),
      redirectGateway: settings.redirectGateway ?? config.push.redirect_gateway,
      dns: config.push.dns,
      mtu: config.mtu,
      keepalive: { interval: config.keepalive.interval, timeout: config.keepalive.timeout },
    };
    const subnet6 = this.subnet6;
    if (subnet6 === undefined) return network;
    const address6 = settings.address6 ?? subnet6.address(pool.hostNumber(address)!);
    const bytes = parseIPv6(address6);
    const holder = this.#byAddress6.get(ipv6HostKey(bytes, 0));
    if (holder !== undefined && holder.serial !== serial) {
      logger.warn("{name}: {address6} is held by {holder}; no IPv6 for {name} this time", {
        name,
        address6,
        holder: holder.name,
      });
      return network;
    }
    return {
      ...network,
      address6,
      address6Bytes: bytes,
      prefix6: subnet6.prefix,
      gateway6: subnet6.serverAddress,
    };
  }

  /** Whether the tunnel carries `cidr`'s family: IPv6 networks need `subnet6`. */
  #carries(cidr: string): boolean {
    return !cidr.includes(":") || this.subnet6 !== undefined;
  }

  /** Runs `listener` after every read of the client registry. */
  onRegistryRead(listener: () => void): void {
    this.#registryListeners.push(listener);
  }

  /** Called by a session when it ends: frees its address unless a newer session has it. */
  forget(session: TunnelSession): void {
    // Once per session: what it moved joins the totals of the sessions that ended.
    if (this.#connectedAt.delete(session)) addTraffic(this.#endedTraffic, session.traffic);
    if (this.#bySerial.get(session.serial) === session) {
      this.#bySerial.delete(session.serial);
      this.#touchLease(session.serial);
    }
    if (this.#byAddress.get(session.addressNumber) === session) {
      this.#byAddress.delete(session.addressNumber);
      this.pool.release(session.address);
    }
    const { address6Bytes, sites } = session.network;
    if (address6Bytes !== undefined) {
      const key = ipv6HostKey(address6Bytes, 0);
      if (this.#byAddress6.get(key) === session) this.#byAddress6.delete(key);
    }
    for (const site of sites) {
      if (this.#sites.get(site) === session) this.#sites.delete(site);
    }
  }

  /** Ends every session with `reason`, stops the timers and the TUN loop. */
  async stop(reason: string): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    for (const timer of this.#timers) clearInterval(timer);
    clearInterval(this.#keepaliveTimer);
    await this.#revocationCheck;
    await Promise.all(this.sessions().map((s) => s.end("bye", reason)));
    await this.#leasesWrite;
    this.#saveLeases();
    await this.#leasesWrite;
  }

  #touchLease(serial: string): void {
    this.#seen.set(serial, Date.now());
    this.#leasesDirty = true;
  }

  /**
   * Writes the leases when they changed, one write at a time: every client's last address,
   * live ones as seen now, none older than `lease_time`.
   */
  #saveLeases(): void {
    if (!this.#leasesDirty || this.#leasesWrite !== undefined) return;
    this.#leasesDirty = false;
    const now = Date.now();
    const oldest = now - this.config.lease_time * 1000;
    const leases: Lease[] = [];
    for (const [serial, address] of this.pool.lastAddresses()) {
      const seen = this.#bySerial.has(serial) ? now : this.#seen.get(serial) ?? 0;
      if (seen >= oldest && this.trust.valid.has(serial)) leases.push({ serial, address, seen });
      else this.#seen.delete(serial);
    }
    this.#leasesWrite = writeLeases(this.#dir, leases).then(() => {
      this.#leasesFailing = false;
    }, (error) => {
      this.#leasesDirty = true;
      // Said once, not at every retry.
      if (!this.#leasesFailing) {
        logger.warn("cannot write the leases: {error}", { error: String(error) });
      }
      this.#leasesFailing = true;
    }).finally(() => {
      this.#leasesWrite = undefined;
    });
  }

  /** Closes the TUN, which ends the TUN loop; after every transport stopped feeding packets. */
  async close(): Promise<void> {
    this.#tun.close();
    await this.#done;
  }

  get stopped(): boolean {
    return this.#stopped;
  }

  /**
   * Inbound: a packet from `session`'s client in `buffer[start, end)`, behind a virtio-net
   * header when the session has offload. Call {@linkcode flush} at the end of the batch.
   */
  fromClient(session: TunnelSession, buffer: Uint8Array, start: number, end: number): void {
    const ip = session.vnet ? start + VNET_HDR_LEN : start;
    const version = end - ip < 20 ? 0 : packetVersion(buffer, ip);
    let peer: TunnelSession | undefined;
    if (version === 4) {
      const source = ipv4Source(buffer, ip);
      if (source !== session.addressNumber && this.#sites.lookup4(source) !== session) {
        this.stats.spoofed++;
        return;
      }
      if (this.config.client_to_client) peer = this.#toAddress4(ipv4Destination(buffer, ip));
    } else if (version === 6 && end - ip >= IPV6_HEADER && this.subnet6 !== undefined) {
      const own = session.network.address6Bytes;
      if (
        !(own !== undefined && ipv6SourceEquals(buffer, ip, own)) &&
        this.#sites.lookup6(buffer, ip + IPV6_SOURCE) !== session
      ) {
        if (linkLocal(buffer, ip + IPV6_SOURCE)) this.stats.linkLocal++;
        else this.stats.spoofed++;
        return;
      }
      if (this.config.client_to_client) peer = this.#toAddress6(buffer, ip);
    } else {
      this.stats.notIp++;
      return;
    }
    // The client wrote this header, and our segmenter and kernel would cut the packet as it says.
    if (session.vnet && !validVnetHeader(buffer, start, end)) {
      this.stats.badVnet++;
      return;
    }
    session.traffic.packetsIn++;
    session.traffic.bytesIn += end - ip;
    const packet = buffer.subarray(start, end);
    if (peer !== undefined && peer !== session) {
      this.#toClient(peer, packet, packet.length, session.vnet);
      return;
    }
    if (this.#coalescer) this.#coalescer.add(packet, session.vnet);
    else this.#toTun[this.#toTunCount++] = packet;
  }

  /** The session an IPv4 destination belongs to: a client's address, or a network behind one. */
  #toAddress4(destination: number): TunnelSession | undefined {
    return this.#byAddress.get(destination) ?? this.#sites.lookup4(destination);
  }

  /** The session the IPv6 packet at `ip` is for, by its destination. */
  #toAddress6(buffer: Uint8Array, ip: number): TunnelSession | undefined {
    const session = this.#byAddress6.get(ipv6HostKey(buffer, ip + IPV6_DESTINATION));
    if (
      session !== undefined && ipv6DestinationEquals(buffer, ip, session.network.address6Bytes!)
    ) {
      return session;
    }
    return this.#sites.lookup6(buffer, ip + IPV6_DESTINATION);
  }

  /**
   * Outbound: a packet for `session`'s client, cut to what it takes; `fromVnet` says whether
   * it starts with a virtio-net header.
   */
  #toClient(session: TunnelSession, packet: Uint8Array, length: number, fromVnet: boolean): void {
    if (fromVnet === session.vnet && session.maxPacket === Infinity) {
      this.#queue(session, packet, length);
      return;
    }
    this.#target = session;
    this.#segmenter.convert(
      packet,
      length,
      fromVnet,
      session.vnet,
      session.maxPacket,
      this.#emit,
    );
  }

  #queue(session: TunnelSession, packet: Uint8Array, length: number): void {
    const traffic = session.traffic;
    if (session.queue(packet, length)) {
      this.#touch(session);
      traffic.packetsOut++;
      traffic.bytesOut += session.vnet ? length - VNET_HDR_LEN : length;
    } else {
      this.stats.dropped++;
      traffic.dropped++;
    }
  }

  readonly #emit = (packet: Uint8Array) => this.#queue(this.#target!, packet, packet.length);

  /** Puts `session` on the list of sessions to flush at the end of the batch. */
  #touch(session: TunnelSession): void {
    if (session.touched) return;
    session.touched = true;
    this.#touched.push(session);
  }

  /** Ends a batch: the TUN gets its packets, the transports their sends, each session a write. */
  flush(): void {
    this.#coalescer?.flush();
    if (this.#toTunCount > 0) {
      this.#tun.write(this.#toTun, this.#toTunCount);
      this.#toTunCount = 0;
    }
    for (const flush of this.#flushes) flush();
    for (const session of this.#touched) {
      session.touched = false;
      session.flush();
    }
    this.#touched.length = 0;
  }

  /**
   * Backpressure with a bound: waits for the write in flight of a session whose send buffer
   * is full, at most {@linkcode CONGESTION_WAIT_MS}, since every other session waits too. A fast
   * client then loses nothing (dropped super-packets cost TCP far more than the wait); a slow
   * one loses what does not fit, as behind any router. False when the wait timed out.
   */
  async #makeRoom(session: TunnelSession): Promise<boolean> {
    this.flush();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const drained = await Promise.race([
      session.drained().then(() => true),
      new Promise<boolean>((resolve) => timer = setTimeout(resolve, CONGESTION_WAIT_MS, false)),
    ]);
    clearTimeout(timer);
    return drained;
  }

  async #tunToClients(): Promise<void> {
    const bufs = Array.from({ length: BATCH }, () => new Uint8Array(MAX_TUN_PACKET));
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
    const ip = this.vnet ? VNET_HDR_LEN : 0;
    const batch = ++this.#batch;
    for (let i = 0; i < n; i++) {
      const packet = bufs[i]!;
      const size = sizes[i]!;
      const version = size < ip + 20 ? 0 : packetVersion(packet, ip);
      let session: TunnelSession | undefined;
      if (version === 4) session = this.#toAddress4(ipv4Destination(packet, ip));
      else if (version === 6 && size >= ip + IPV6_HEADER && this.subnet6 !== undefined) {
        if (linkScoped(packet, ip + IPV6_DESTINATION)) {
          this.stats.linkLocal++;
          continue;
        }
        session = this.#toAddress6(packet, ip);
      } else {
        this.stats.notIp++;
        continue;
      }
      if (session === undefined) {
        this.stats.unroutable++;
      } else if (this.vnet === session.vnet && session.maxPacket === Infinity) {
        // As is: a full send buffer waits a little for its write before it drops. A client
        // that reads slowly gets one wait per batch, one that stopped reading no more waits at
        // all (the others wait too).
        if (!session.offer(packet, size)) {
          if (
            session.stalledBatch !== batch && session.stalledAt !== session.movedAt &&
            !await this.#makeRoom(session)
          ) {
            session.stalledBatch = batch;
            session.stalledAt = session.movedAt;
          }
          if (!session.queue(packet, size)) {
            this.stats.dropped++;
            session.traffic.dropped++;
            continue;
          }
        }
        this.#touch(session);
        session.traffic.packetsOut++;
        session.traffic.bytesOut += size - ip;
      } else {
        this.#toClient(session, packet, size, this.vnet);
      }
    }
    this.flush();
  }

  /** Every keepalive interval: ends silent sessions, lets the others send their pings. */
  #keepalive(): void {
    const { timeout } = this.config.keepalive;
    const now = performance.now();
    for (const session of this.sessions()) {
      if (now - session.lastReceived > timeout * 1000) {
        session.end("timeout", `no data for ${timeout} s`);
      } else {
        session.keepalive();
      }
    }
  }

  /**
   * Logs a connection refused before auth, at most once per reason and source address in
   * {@linkcode REFUSAL_LOG_WINDOW_MS}: an operator sees every client that fails, and a client
   * that retries, or a scan, cannot flood the log. `host` is the source as the socket has it.
   */
  logRefusal(host: string, peer: string, reason: string, detail: string): void {
    this.#countHandshake(reason);
    const more = this.#refusals.admit(reason, peerHost(host));
    if (more === undefined) return;
    logger.warn("refused {peer}: {reason}: {detail}{more}", {
      peer,
      reason,
      detail: escapeText(detail),
      more,
    });
  }

  /**
   * Ends the sessions whose certificate has expired. Each second costs one comparison until
   * the earliest expiry comes (then one pass over the sessions, which finds the next), not a
   * pass over thousands of sessions.
   */
  #endExpired(): void {
    const now = Date.now();
    if (now < this.#nextExpiry) return;
    let next = Infinity;
    for (const session of this.sessions()) {
      const notAfter = session.notAfter.getTime();
      if (notAfter > now) {
        next = Math.min(next, notAfter);
        continue;
      }
      logger.warn("{name}: certificate expired, ending its session", { name: session.name });
      session.end("expired", `certificate expired at ${session.notAfter.toISOString()}`);
    }
    this.#nextExpiry = next;
  }

  /** Re-reads the revocation list if the registry changed; one check at a time. */
  checkRevocations(): Promise<void> {
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
      Object.assign(this.trust, await readRegistrySerials(this.#dir));
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
    this.pool.setFixed(fixedAddresses(this.trust.settings));
    for (const session of this.sessions()) {
      if (!this.trust.valid.has(session.serial)) {
        logger.warn("{name}: certificate revoked, dropping its session", { name: session.name });
        session.end("revoked", "certificate revoked");
        continue;
      }
      const text = JSON.stringify(this.trust.settings.get(session.serial) ?? { routes: [] });
      if (text !== this.#announced.get(session.serial)) {
        this.#announced.set(session.serial, text);
        logger.info(
          "{name}: its settings changed in the registry; they apply at its next connection",
          {
            name: session.name,
          },
        );
      }
    }
    for (const listener of this.#registryListeners) listener();
  }
}

/** Whether the IPv6 address at `at` is link-local (fe80::/10). */
function linkLocal(buffer: Uint8Array, at: number): boolean {
  return buffer[at] === 0xfe && (buffer[at + 1]! & 0xc0) === 0x80;
}

/** Whether the IPv6 address at `at` stays on its link: link-local, or multicast (ff00::/8). */
function linkScoped(buffer: Uint8Array, at: number): boolean {
  return buffer[at] === 0xff || linkLocal(buffer, at);
}

/** The fixed IPv4 addresses of `settings`, owner (serial) to address. */
function fixedAddresses(settings: ReadonlyMap<string, ClientSettings>): Map<string, string> {
  const fixed = new Map<string, string>();
  for (const [serial, { address }] of settings) {
    if (address !== undefined) fixed.set(serial, address);
  }
  return fixed;
}
