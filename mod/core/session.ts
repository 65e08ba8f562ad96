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
