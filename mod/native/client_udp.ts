/**
 * The client's side of the UDP data channel, beside its TLS session.
 *
 * Outbound: packets read from the TUN are sealed into pre-allocated datagram slots and leave in
 * one `sendmmsg` per TUN batch (`queue`, `flush`). Inbound (`#receive`): one awaited batch of
 * datagrams; each is authenticated and decrypted, DATA goes to the client's packet sink (and so
 * to the TUN, in one batch), PONG marks the path alive. The client PINGs every keepalive interval; while answers come back the path
 * is `active` and carries the data, otherwise the data stays on (or falls back to) TLS.
 *
 * @module
 */

import {
  encodeSockAddr,
  formatSockAddr,
  newSockAddr,
  type SockAddr,
  UdpSocket,
} from "../../ffi/udp.ts";
import type { CipherName } from "../../ffi/crypto.ts";
import {
  DatagramBatch,
  DatagramCrypto,
  DatagramSlots,
  DatagramType,
  deriveKeys,
  type EpochKeys,
  KeyHalf,
  OVERHEAD,
} from "./datagram.ts";
import { formatPeer } from "../core/ip.ts";
import { BatchFailures, log } from "../log.ts";
import { keyMaterial, type Rekey, type UdpAccept } from "./messages.ts";

const logger = log("client");

/** Where the packets that arrive over UDP go; `flush` ends each batch. */
export interface PacketSink {
  fromServer(packet: Uint8Array): void;
  flush(): void;
}

/** How often a probe is sent while waiting for the first answer (ms). */
const PROBE_EVERY_MS = 200;

/** The client's UDP path to the server. */
export class ClientUdp implements Disposable {
  readonly crypto: DatagramCrypto;
  /** Where datagrams go, e.g. `10.0.0.1:1194`. */
  readonly server: string;
  /** Bytes of the authenticated datagrams received and of the datagrams sealed to send. */
  bytesIn = 0;
  bytesOut = 0;

  readonly #socket: UdpSocket;
  readonly #serverAddr: SockAddr;
  readonly #sink: PacketSink;
  readonly #out: DatagramBatch;
  readonly #ping = new Uint8Array(8);
  readonly #receiving: Promise<void>;
  #lastHeard = -Infinity;
  #active = false;
  #timeoutMs: number;
  #pending: EpochKeys | undefined;
  #wakeProbe: (() => void) | undefined;

  private constructor(
    socket: UdpSocket,
    serverAddr: SockAddr,
    crypto: DatagramCrypto,
    sink: PacketSink,
    timeoutMs: number,
  ) {
    this.#socket = socket;
    this.#out = new DatagramBatch(socket);
    this.#serverAddr = serverAddr;
    this.server = formatSockAddr(serverAddr, formatPeer);
    this.crypto = crypto;
    this.#sink = sink;
    this.#timeoutMs = timeoutMs;
    this.#receiving = this.#receive();
  }

  /**
   * Opens the path after the server's UDP_ACCEPT. `host` is the server's IP as the TLS
   * connection saw it; `half` is what this client sent in its UDP_OFFER.
   */
  static open(
    accept: UdpAccept,
    half: KeyHalf,
    host: string,
    port: number,
    sink: PacketSink,
    timeoutMs: number,
  ): ClientUdp {
    const ipv6 = host.includes(":");
    const socket = UdpSocket.bind(ipv6 ? "::" : "0.0.0.0", 0);
    // Joined reads where the kernel can (UDP GRO); `#receive` handles both kinds.
    socket.enableGro();
    try {
      const crypto = acceptedCrypto(accept, half);
      const serverAddr = encodeSockAddr(host, port, newSockAddr(), socket.family);
      return new ClientUdp(socket, serverAddr, crypto, sink, timeoutMs);
    } catch (error) {
      socket.close();
      throw error;
    }
  }

  /** True while the server has answered within the keepalive timeout: data goes here. */
  get active(): boolean {
    return this.#active;
  }

  /** Probes until the server answers or `ms` pass; true when the path works. */
  async probe(ms: number): Promise<boolean> {
    const deadline = performance.now() + ms;
    while (!this.#active && performance.now() < deadline) {
      this.#sendPing();
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(PROBE_EVERY_MS, deadline - performance.now()));
        this.#wakeProbe = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    this.#wakeProbe = undefined;
    return this.#active;
  }

  /** Keepalive tick: ping, and fall back to TLS when the server has gone quiet. */
  tick(): void {
    if (this.#active && performance.now() - this.#lastHeard > this.#timeoutMs) {
      this.#active = false;
      logger.warn("no answer over UDP from {server} for {seconds} s; data falls back to TLS", {
        server: this.server,
        seconds: this.#timeoutMs / 1000,
      });
    }
    this.#sendPing();
  }

  /** Seals one packet into the outgoing batch; false when the key may seal no more. */
  queue(packet: Uint8Array, length: number): boolean {
    if (!this.#out.add(this.crypto, DatagramType.DATA, packet, length, this.#serverAddr)) {
      return false;
    }
    this.bytesOut += length + OVERHEAD;
    return true;
  }

  /** Sends the outgoing batch. */
  flush(): void {
    this.#out.flush();
  }

  /** The server's REKEY: installs the next epoch's receiving key, returns the REKEY_ACK. */
  rekey(message: Rekey): Rekey {
    const half = new KeyHalf();
    const theirs = keyMaterial(message, "REKEY");
    const keys = deriveKeys(
      half.random,
      theirs.random,
      this.crypto.sessionId,
      message.epoch,
      half.agree(theirs.share),
    );
    this.crypto.installReceive(keys);
    this.#pending = keys;
    return { epoch: message.epoch, random: half.random.toBase64(), share: half.share.toBase64() };
  }

  /** The server's REKEY_DONE: the server can open the new epoch, so send with it. */
  rekeyDone(message: Rekey): void {
    if (this.#pending?.epoch !== message.epoch) return;
    this.crypto.installSend(this.#pending);
    this.#pending = undefined;
    logger.debug("UDP keys of epoch {epoch} in use", { epoch: message.epoch });
  }

  #sendPing(): void {
    crypto.getRandomValues(this.#ping);
    if (this.#out.add(this.crypto, DatagramType.PING, this.#ping, 8, this.#serverAddr)) {
      this.bytesOut += 8 + OVERHEAD;
    }
    this.#out.flush();
  }

  async #receive(): Promise<void> {
    const slots = new DatagramSlots(64);
    const segments = new Array<number>(64).fill(0);
    // A plaintext buffer per datagram of a batch: the sink keeps views of them until flush.
    const plain = slots.bufs.map(() => new Uint8Array(slots.bufs[0]!.length));
    let used = 0;
    const open = (datagram: Uint8Array, length: number, body: Uint8Array) => {
      if (used === plain.length) {
        this.#sink.flush();
        used = 0;
      }
      if (this.#open(datagram, length, body, plain[used]!)) used++;
    };
    const socket = this.#socket;
    const failures = new BatchFailures(logger, "UDP receive");
    try {
      for (let n; (n = await socket.recv(slots.bufs, slots.sizes, slots.addrs, segments)) > 0;) {
        try {
          for (let i = 0; i < n; i++) slots.forEach(i, segments[i]!, open);
          this.#sink.flush();
          used = 0;
        } catch (error) {
          // `used` stays: the sink may still hold views of those buffers until its next flush.
          failures.report(error);
        }
      }
    } catch (error) {
      logger.error("UDP receive failed: {error}", { error: String(error) });
    }
  }

  /** Opens one datagram into `out`; true when `out` went to the sink (kept until flush). */
  #open(datagram: Uint8Array, size: number, body: Uint8Array, out: Uint8Array): boolean {
    const length = this.crypto.open(datagram, size, body, out);
    if (length < 0) return false;
    this.bytesIn += size;
    this.#heard();
    if (this.crypto.type !== DatagramType.DATA) return false;
    this.#sink.fromServer(out.subarray(0, length));
    return true;
  }

  #heard(): void {
    this.#lastHeard = performance.now();
    if (this.#active) return;
    this.#active = true;
    this.#wakeProbe?.();
    logger.info("data goes over UDP to {server} ({cipher})", {
      server: this.server,
      cipher: this.crypto.cipher,
    });
  }

  /** Closes the socket and frees the keys. Safe to call twice. */
  async close(): Promise<void> {
    this.#socket.close();
    await this.#receiving;
    this.crypto.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * A client's datagram keys after the server's UDP_ACCEPT: epoch 0, from `half` (what its
 * UDP_OFFER sent) and the server's share, for both directions.
 */
export function acceptedCrypto(accept: UdpAccept, half: KeyHalf): DatagramCrypto {
  const crypto = new DatagramCrypto(accept.session, accept.cipher as CipherName, true);
  const keys = deriveKeys(
    half.random,
    Uint8Array.fromBase64(accept.random),
    accept.session,
    0,
    half.agree(Uint8Array.fromBase64(accept.share)),
  );
  crypto.installReceive(keys);
  crypto.installSend(keys);
  return crypto;
}
