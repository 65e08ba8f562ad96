/**
 * One authenticated client on the server: its TLS channel (control and, when UDP is not alive,
 * data), its keepalive, and its UDP state. Packets it receives go to the server's inbound
 * batch (`Server.fromClient`); the batch ends after each TLS read (`Server.flush`).
 *
 * @module
 */

import type { Channel } from "./channel.ts";
import { type AuthenticatedClient, refuse } from "./handshake.ts";
import { parseIPv4 } from "../core/ip.ts";
import { escapeText, log } from "../log.ts";
import {
  decodeBye,
  decodeRekey,
  decodeUdpOffer,
  encodeMessage,
  type ErrorReason,
} from "./messages.ts";
import type { Server } from "../server.ts";
import type { UdpState } from "./server_udp.ts";
import { FrameError, FrameType } from "./wire.ts";

const logger = log("server");

/** One authenticated client. */
export class Session {
  readonly channel: Channel;
  readonly name: string;
  readonly serial: string;
  /** The end of the certificate's validity: the session ends then (mod/server.ts). */
  readonly notAfter: Date;
  readonly address: string;
  readonly addressNumber: number;
  /** Set while the session is in the current batch's list of channels to flush. */
  touched = false;
  /** The server's TUN batch in which a wait for this session's full send buffer timed out. */
  stalledBatch = 0;
  /** The channel's `movedAt` when that wait timed out: no wait again until its write moves. */
  stalledAt = -1;
  /** The UDP data channel, once agreed (owned by `ServerUdp`). */
  udp: UdpState | undefined;
  /** Packets to and from this client start with a virtio-net header (both TUNs have offload). */
  readonly vnet: boolean;

  readonly #server: Server;
  readonly #peer: string;
  #keepalive: ReturnType<typeof setInterval> | undefined;
  #ended = false;

  constructor(
    server: Server,
    channel: Channel,
    client: AuthenticatedClient,
    address: string,
    vnet: boolean,
    peer: string,
  ) {
    this.vnet = vnet;
    this.#server = server;
    this.channel = channel;
    this.name = client.name;
    this.serial = client.serial;
    this.notAfter = client.notAfter;
    this.address = address;
    this.addressNumber = parseIPv4(address);
    this.#peer = peer;
  }

  /** Starts the read loop and the keepalive. */
  start(): void {
    const server = this.#server;
    const { interval, timeout } = server.config.keepalive;
    this.#keepalive = setInterval(() => {
      if (performance.now() - this.channel.lastReceived > timeout * 1000) {
        this.end("timeout", `no data for ${timeout} s`);
        return;
      }
      // A client that sends but never reads would hold its buffers and slow the TUN loop for good.
      if (this.channel.stuckFor > timeout * 1000) {
        this.end("timeout", `the client read nothing for ${timeout} s (TLS writes stuck)`);
        return;
      }
      this.channel.sendControl(FrameType.PING);
      server.udp?.tick(this);
    }, interval * 1000);
    this.channel.readFrames(
      (type, buffer, start, end) => this.#onFrame(type, buffer, start, end),
      () => server.flush(),
    ).then(
      () => this.end("closed", "connection closed by the client"),
      (error) => {
        if (error instanceof FrameError) this.end("protocol", error.message);
        else this.end("closed", `connection lost: ${error.message ?? error}`);
      },
    );
  }

  #onFrame(type: FrameType, buffer: Uint8Array, start: number, end: number): void {
    const server = this.#server;
    if (type === FrameType.DATA) {
      server.fromClient(this, buffer, start, end);
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
        if (server.udp) server.udp.accept(this, offer);
        else {this.channel.sendControl(
            FrameType.UDP_REFUSE,
            encodeMessage({ reason: server.udpOff }),
          );}
        return;
      }
      case FrameType.REKEY_ACK:
        server.udp?.rekeyAck(this, decodeRekey(payload, "REKEY_ACK"));
        return;
      default:
        throw new FrameError(`unexpected frame type ${type} after auth`);
    }
  }

  /**
   * Ends the session and frees its address. The client is told why: an ERROR for a problem,
   * a BYE for a shutdown, nothing when the connection is already gone (`closed`).
   */
  async end(reason: ErrorReason | "bye" | "closed", message: string): Promise<void> {
    if (this.#ended) return;
    this.#ended = true;
    clearInterval(this.#keepalive);
    const udp = this.udp;
    this.#server.forget(this);
    const { bytesIn, bytesOut, dropped } = this.channel.stats;
    logger.info(
      "{name} ({address}, {peer}) disconnected: {message}; TLS {bytesIn} bytes in, {bytesOut} out, " +
        "{dropped} dropped; UDP {udpIn} bytes in, {udpOut} out",
      {
        name: this.name,
        address: this.address,
        peer: this.#peer,
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
