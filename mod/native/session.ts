/**
 * One client of our own protocol on the server: its TLS channel (control and, when UDP is not
 * alive, data) and its UDP state. It is the router's {@linkcode TunnelSession}: packets it
 * receives go to the router's inbound batch (`Router.fromClient`); the batch ends after each
 * TLS read (`Router.flush`).
 *
 * @module
 */

import type { Router } from "../core/router.ts";
import {
  type ClientNetwork,
  type EndReason,
  newTraffic,
  type TunnelSession,
} from "../core/session.ts";
import { escapeText, log } from "../log.ts";
import type { Channel } from "./channel.ts";
import { type AuthenticatedClient, refuse } from "./handshake.ts";
import { decodeBye, decodeRekey, decodeUdpOffer, encodeMessage } from "./messages.ts";
import type { ServerUdp, UdpState } from "./server_udp.ts";
import { FrameError, FrameType } from "./wire.ts";

const logger = log("server");

/** One authenticated client of our protocol. */
export class NativeSession implements TunnelSession {
  readonly channel: Channel;
  readonly name: string;
  readonly serial: string;
  readonly notAfter: Date;
  readonly address: string;
  readonly addressNumber: number;
  readonly network: ClientNetwork;
  touched = false;
  stalledBatch = 0;
  stalledAt = -1;
  /** The UDP data channel, once agreed (owned by `ServerUdp`). */
  udp: UdpState | undefined;
  readonly vnet: boolean;

  readonly #router: Router;
  readonly #udp: ServerUdp | undefined;
  /** Why there is no UDP data channel, told to a client that offers one. */
  readonly #udpOff: string;
  readonly peer: string;
  readonly traffic = newTraffic();
  #ended = false;

  constructor(
    router: Router,
    udp: ServerUdp | string,
    channel: Channel,
    client: AuthenticatedClient,
    network: ClientNetwork,
    vnet: boolean,
    peer: string,
  ) {
    this.vnet = vnet;
    this.#router = router;
    this.#udp = typeof udp === "string" ? undefined : udp;
    this.#udpOff = typeof udp === "string" ? udp : "";
    this.channel = channel;
    this.name = client.name;
    this.serial = client.serial;
    this.notAfter = client.notAfter;
    this.network = network;
    this.address = network.address;
    this.addressNumber = network.addressNumber;
    this.peer = peer;
  }

  get cipher(): string {
    return this.udp?.alive ? this.udp.crypto.cipher.toUpperCase() : "TLS";
  }

  get protocol(): string {
    return this.udp?.alive ? "native/udp" : "native/tls";
  }

  /** Over UDP, packets are cut to the MTU; TLS frames carry super-packets whole. */
  get maxPacket(): number {
    return this.udp?.alive ? this.#router.config.mtu : Infinity;
  }

  get lastReceived(): number {
    return this.channel.lastReceived;
  }

  get movedAt(): number {
    return this.channel.movedAt;
  }

  offer(packet: Uint8Array, length: number): boolean {
    return this.#sealUdp(packet, length) || this.channel.offerData(packet, length);
  }

  queue(packet: Uint8Array, length: number): boolean {
    return this.#sealUdp(packet, length) || this.channel.queueData(packet, length);
  }

  /** Over UDP when that path is alive; a key past its usage limit seals nothing (TLS then). */
  #sealUdp(packet: Uint8Array, length: number): boolean {
    return this.udp?.alive === true && this.#udp !== undefined &&
      this.#udp.queue(this, packet, length);
  }

  drained(): Promise<void> {
    return this.channel.drained();
  }

  flush(): void {
    this.channel.flush();
  }

  keepalive(): void {
    const { timeout } = this.#router.config.keepalive;
    // A client that sends but never reads would hold its buffers and slow the TUN loop for good.
    if (this.channel.stuckFor > timeout * 1000) {
      this.end("timeout", `the client read nothing for ${timeout} s (TLS writes stuck)`);
      return;
    }
    this.channel.sendControl(FrameType.PING);
    this.channel.trim();
    this.#udp?.tick(this);
  }

  /** Starts the read loop. */
  start(): void {
    const router = this.#router;
    this.channel.readFrames(
      (type, buffer, start, end) => this.#onFrame(type, buffer, start, end),
      () => router.flush(),
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
      this.#router.fromClient(this, buffer, start, end);
      return;
    }
    const payload = buffer.subarray(start, end);
    switch (type) {
      case FrameType.PING:
        this.channel.sendControl(FrameType.PONG, payload.slice());
        return;
      case FrameType.PONG:
        return;
      case FrameType.BYE:
        this.end("closed", `client said goodbye: ${decodeBye(payload).reason}`);
        return;
      case FrameType.UDP_OFFER: {
        const offer = decodeUdpOffer(payload);
        if (this.#udp) this.#udp.accept(this, offer);
        else {
          this.channel.sendControl(FrameType.UDP_REFUSE, encodeMessage({ reason: this.#udpOff }));
        }
        return;
      }
      case FrameType.REKEY_ACK:
        this.#udp?.rekeyAck(this, decodeRekey(payload, "REKEY_ACK"));
        return;
      default:
        throw new FrameError(`unexpected frame type ${type} after auth`);
    }
  }

  /**
   * Ends the session and frees its address. The client is told why: an ERROR for a problem,
   * a BYE for a shutdown, nothing when the connection is already gone (`closed`).
   */
  async end(reason: EndReason, message: string): Promise<void> {
    if (this.#ended) return;
    this.#ended = true;
    const udp = this.udp;
    this.#udp?.forget(this);
    this.#router.forget(this);
    const { bytesIn, bytesOut, dropped } = this.channel.stats;
    logger.info(
      "{name} ({address}, {peer}) disconnected: {message}; TLS {bytesIn} bytes in, {bytesOut} out, " +
        "{dropped} dropped; UDP {udpIn} bytes in, {udpOut} out",
      {
        name: this.name,
        address: this.address,
        peer: this.peer,
        // A client's goodbye carries its own words.
        message: escapeText(message),
        bytesIn,
        bytesOut,
        dropped,
        udpIn: udp?.bytesIn ?? 0,
        udpOut: udp?.bytesOut ?? 0,
      },
    );
    if (reason === "closed") this.channel.close();
    else if (reason === "bye") {
      await this.channel.closeWith(FrameType.BYE, encodeMessage({ reason: message }));
    } else await refuse(this.channel, reason, message);
  }
}
