/**
 * What the core needs of one authenticated client, whichever protocol it speaks: its identity
 * and tunnel address, a way to queue packets and flush them once per batch, a keepalive hook
 * and a way to end it. Our protocol (mod/native/session.ts) and OpenVPN
 * (mod/openvpn/session.ts) each implement it; the router (mod/core/router.ts) knows nothing
 * else about them.
 *
 * @module
 */

/** Why a session ends; the protocol tells its client in its own words. */
export type EndReason =
  | "bye"
  | "closed"
  | "timeout"
  | "replaced"
  | "revoked"
  | "expired"
  | "protocol"
  | "pool-exhausted";

/** One authenticated client as the router sees it. */
export interface TunnelSession {
  /** The certificate's CN. */
  readonly name: string;
  /** The certificate's serial, lowercase hex: one session per serial. */
  readonly serial: string;
  /** The end of the certificate's validity: the session ends then. */
  readonly notAfter: Date;
  /** The tunnel address, dotted and as a u32. */
  readonly address: string;
  readonly addressNumber: number;
  /** What the client was given: its addresses, routes, DNS, and the networks behind it. */
  readonly network: ClientNetwork;
  /** The client's real address, as the log prints it: `10.99.0.2:40000`, `[fd00::2]:40000`. */
  readonly peer: string;
  /** The data cipher in use: `AES-256-GCM`, or `TLS` for packets inside our TLS session. */
  readonly cipher: string;
  /** Router state: the inner packets each way, counted as they pass the router. */
  readonly traffic: SessionTraffic;
  /** How it is carried, for the log: `native/tls`, `openvpn/udp`, `openvpn/tcp`. */
  readonly protocol: string;
  /** Packets to and from this client start with a virtio-net header. */
  readonly vnet: boolean;
  /**
   * The longest packet the client takes now, or `Infinity` when it takes super-packets as
   * they are: longer ones are cut to it by the router's segmenter.
   */
  readonly maxPacket: number;
  /** `performance.now()` when the client was last heard (any authenticated packet). */
  readonly lastReceived: number;
  /** Router state: whether the session is on the current batch's list to flush. */
  touched: boolean;
  /** Router state: the TUN batch in which a wait for this session's send buffer timed out. */
  stalledBatch: number;
  /** Router state: `movedAt` when that wait timed out; no wait again until it moves. */
  stalledAt: number;
  /** When the session's pending write last moved (`performance.now()`), for backpressure. */
  readonly movedAt: number;
  /** Queues one packet; false when there is no room (nothing counted). */
  offer(packet: Uint8Array, length: number): boolean;
  /** Queues one packet; false when there is no room, counted as dropped by the session. */
  queue(packet: Uint8Array, length: number): boolean;
  /** Resolves once the write in flight has finished, at once when there is none. */
  drained(): Promise<void>;
  /** Sends what was queued in this batch. */
  flush(): void;
  /** Called every keepalive interval: send a ping if the protocol needs one. */
  keepalive(): void;
  /** Ends the session (its address is freed through `Router.forget`); safe to call twice. */
  end(reason: EndReason, message: string): Promise<void>;
}

/**
 * What the router gives one client, in no protocol's words: each protocol pushes it in its own
 * form (mod/native/listener.ts, mod/openvpn/session.ts).
 */
export interface ClientNetwork {
  /** The client's IPv4 address, dotted and as a u32. */
  address: string;
  addressNumber: number;
  /** The VPN subnet's prefix length and netmask, and the server's address (the gateway). */
  prefix: number;
  netmask: string;
  gateway: string;
  /** The client's IPv6 address and its 16 bytes, when the tunnel has IPv6. */
  address6?: string;
  address6Bytes?: Uint8Array;
  /** `subnet6`'s prefix length and the server's IPv6 address, with `address6`. */
  prefix6?: number;
  gateway6?: string;
  /**
   * Networks the client routes into the tunnel: `push.routes`, and with `client_to_client` the
   * networks behind the other clients. The VPN subnets themselves are not listed.
   */
  routes: string[];
  /** Networks behind this client (`vpn client set NAME --route`): routed to it by the server. */
  sites: string[];
  /** Whether the client sends all its traffic into the tunnel. */
  redirectGateway: boolean;
  /** DNS servers and search domains; empty lists when the server pushes none. */
  dns: { servers: string[]; domains: string[] };
  /** The tunnel MTU and the keepalive, from `server.yaml`. */
  mtu: number;
  keepalive: { interval: number; timeout: number };
}

/**
 * A client's settings as one log line: `address 10.8.0.2, fd00:8::2, routes 192.168.50.0/24,
 * full tunnel, DNS 10.8.0.1, network behind it 192.168.60.0/24`.
 */
export function describeNetwork(network: ClientNetwork): string {
  const parts = [`address ${network.address}`];
  if (network.address6 !== undefined) parts[0] += `, ${network.address6}`;
  if (network.routes.length > 0) parts.push(`routes ${network.routes.join(", ")}`);
  if (network.redirectGateway) parts.push("full tunnel");
  if (network.dns.servers.length > 0) parts.push(`DNS ${network.dns.servers.join(", ")}`);
  if (network.sites.length > 0) parts.push(`networks behind it ${network.sites.join(", ")}`);
  return parts.join("; ");
}

/** A session's inner packets and their bytes, client → server (`In`) and back (`Out`). */
export interface SessionTraffic {
  packetsIn: number;
  bytesIn: number;
  packetsOut: number;
  bytesOut: number;
  /** Packets for the client dropped at its full send queue. */
  dropped: number;
}

/** A fresh {@linkcode SessionTraffic}, all zero. */
export function newTraffic(): SessionTraffic {
  return { packetsIn: 0, bytesIn: 0, packetsOut: 0, bytesOut: 0, dropped: 0 };
}

/** Adds each counter of `from` to `into`. */
export function addTraffic(into: SessionTraffic, from: SessionTraffic): void {
  into.packetsIn += from.packetsIn;
  into.bytesIn += from.bytesIn;
  into.packetsOut += from.packetsOut;
  into.bytesOut += from.bytesOut;
  into.dropped += from.dropped;
}

/** One session as `vpn status` shows it (PROTOCOL.md, control socket). */
export interface SessionStatus {
  name: string;
  serial: string;
  protocol: string;
  cipher: string;
  peer: string;
  address: string;
  address6?: string;
  /** ISO 8601. */
  connectedAt: string;
  lastHeardAt: string;
  bytesIn: number;
  bytesOut: number;
  packetsIn: number;
  packetsOut: number;
  dropped: number;
}
