/**
 * The server's side of the UDP data channel: one socket on the listen port for every client.
 *
 * Inbound (`#receive`): one awaited batch of datagrams; each is matched to its session by the
 * session id in its header, authenticated, decrypted and checked against the replay window.
 * Anything that fails is dropped and counted, with no reply and no allocation. An accepted
 * datagram (re)sets the client's UDP address, so NAT rebinding works and a forged source
 * cannot take a session over; on a wildcard address it also (re)sets the local address that
 * the client sent to, which replies leave from (see ffi/udp.ts on multi-homed hosts). DATA
 * joins the server's inbound batch, PING is answered.
 *
 * Outbound (`queue`, `flush`): packets for a client whose UDP path is alive are sealed into
 * pre-allocated slots and leave in one `sendmmsg` per batch.
 *
 * Keys are agreed in the TLS session (UDP_OFFER, UDP_ACCEPT) and replaced by the server after
 * `rekey_interval` seconds or 2^32 packets (REKEY, REKEY_ACK, REKEY_DONE), with both epochs
 * open during the change so that nothing in flight is lost.
 *
 * @module
 */

import { type CipherName, cryptoUnavailable } from "../../ffi/crypto.ts";
import {
  copySockAddr,
  formatSockAddr,
  newSockAddr,
  sameLocalAddr,
  sameSockAddr,
  type SockAddr,
  UdpSocket,
} from "../../ffi/udp.ts";
import {
  DatagramBatch,
  DatagramCrypto,
  datagramSession,
  DatagramSlots,
  DatagramType,
  deriveKeys,
  isDatagramType,
  KeyHalf,
  OVERHEAD,
  type RejectStats,
  REKEY_AFTER_PACKETS,
} from "./datagram.ts";
import { formatPeer } from "../core/ip.ts";
import type { TunnelSession } from "../core/session.ts";
import { BatchFailures, log } from "../log.ts";
import { encodeMessage, keyMaterial, type Rekey, UDP_CIPHERS, type UdpOffer } from "./messages.ts";
import { FrameType } from "./wire.ts";
import type { Channel } from "./channel.ts";

const logger = log("server");

const CIPHERS: readonly CipherName[] = UDP_CIPHERS;
const BATCH = 64;

/** What the UDP endpoint needs of a session. */
export interface UdpClient extends TunnelSession {
  readonly channel: Channel;
  /** The session's UDP state, once agreed. */
  udp: UdpState | undefined;
}

/** One client's UDP data channel on the server. */
export class UdpState {
  readonly crypto: DatagramCrypto;
  /**
   * The client's UDP address, learned from authenticated datagrams only, with the local
   * address they were sent to (replies leave from it).
   */
  readonly peer = newSockAddr();
  /** True while the client has been heard over UDP within the keepalive timeout. */
  alive = false;
  lastHeard = -Infinity;
  /** Datagram bytes accepted from the client and sent to it. */
  bytesIn = 0;
  bytesOut = 0;
  /** The server's half of a rekey in progress. */
  pending: { epoch: number; half: KeyHalf } | undefined;

  constructor(crypto: DatagramCrypto) {
    this.crypto = crypto;
  }
}

/** Counters of the UDP endpoint, every session's refusals included; they only grow. */
export interface UdpStats extends RejectStats {
  /** Datagrams accepted. */
  accepted: number;
  /** Rekeys completed (REKEY_DONE sent). */
  rekeyed: number;
  /** Datagrams dropped for naming no session of this server. */
  unknown: number;
}

/** The reasons a datagram is dropped, each a counter of {@linkcode UdpStats}. */
export type RejectReason = Exclude<keyof UdpStats, "accepted" | "rekeyed">;

/** How the log names each reason, in the order it lists them. */
export const REJECT_WORDS: Record<RejectReason, string> = {
  unknown: "for no session",
  malformed: "malformed",
  replayed: "replayed",
  forged: "failing authentication",
};

/** Receives each accepted DATA packet; `flush` ends a batch. */
export interface UdpSink {
  fromClient(client: TunnelSession, buffer: Uint8Array, start: number, end: number): void;
  flush(): void;
}

/**
 * Takes the datagrams on the port that are not ours: the OpenVPN protocol shares the port, and
 * its first bytes (opcode << 3 | key id, 0x18-0x5f) never look like our types (0x01-0x03,
 * 0x81-0x83).
 */
export interface ForeignDatagrams {
  /** One datagram; views into `datagram` are valid only until `endBatch`. */
  receive(datagram: Uint8Array, length: number, from: SockAddr): void;
  /** The batch of datagrams has ended and the router has flushed. */
  endBatch(): void;
}

/** The server's UDP socket and the sessions that use it. */
export class ServerUdp {
  readonly stats: UdpStats = {
    accepted: 0,
    unknown: 0,
    malformed: 0,
    replayed: 0,
    forged: 0,
    rekeyed: 0,
  };
  readonly #socket: UdpSocket;
  readonly #sessions = new Map<number, UdpClient>();
  readonly #out: DatagramBatch;
  readonly #timeoutMs: number;
  readonly #rekeyMs: number;
  readonly #receiving: Promise<void>;
  /** Where datagrams that are not ours go; dropped as malformed without it. */
  foreign: ForeignDatagrams | undefined;

  private constructor(socket: UdpSocket, sink: UdpSink, timeoutMs: number, rekeyMs: number) {
    this.#socket = socket;
    this.#out = new DatagramBatch(socket, BATCH);
    this.#timeoutMs = timeoutMs;
    this.#rekeyMs = rekeyMs;
    this.#receiving = this.#receive(sink);
  }

  /**
   * Binds the UDP port, or says why not (returns a reason string): no libcrypto, or the port
   * is taken.
   */
  static open(
    host: string,
    port: number,
    sink: UdpSink,
    keepaliveTimeout: number,
    rekeyInterval: number,
  ): ServerUdp | string {
    const missing = cryptoUnavailable();
    if (missing !== undefined) return `no UDP data channel without libcrypto (${missing})`;
    const socket = UdpSocket.bind(host, port);
    // Joined reads where the kernel can (UDP GRO); `#receive` handles both kinds.
    socket.enableGro();
    return new ServerUdp(socket, sink, keepaliveTimeout * 1000, rekeyInterval * 1000);
  }

  /** The UDP port. */
  get port(): number {
    return this.#socket.port;
  }

  /** The socket, for the protocols that share the port to send on. */
  get socket(): UdpSocket {
    return this.#socket;
  }

  /** Answers a client's UDP_OFFER with UDP_ACCEPT and keys of epoch 0. */
  accept(client: UdpClient, offer: UdpOffer): void {
    const cipher = CIPHERS.find((c) => offer.ciphers.includes(c));
    if (cipher === undefined) {
      client.channel.sendControl(
        FrameType.UDP_REFUSE,
        encodeMessage({ reason: `no common cipher; this server has ${CIPHERS.join(", ")}` }),
      );
      return;
    }
    this.forget(client);
    let id: number;
    do id = crypto.getRandomValues(new Uint32Array(1))[0]!; while (this.#sessions.has(id));
    const half = new KeyHalf();
    const secret = half.agree(Uint8Array.fromBase64(offer.share));
    const state = new UdpState(new DatagramCrypto(id, cipher, false, this.stats));
    const keys = deriveKeys(Uint8Array.fromBase64(offer.random), half.random, id, 0, secret);
    state.crypto.installReceive(keys);
    state.crypto.installSend(keys);
    client.udp = state;
    this.#sessions.set(id, client);
    client.channel.sendControl(
      FrameType.UDP_ACCEPT,
      encodeMessage({
        cipher,
        session: id,
        random: half.random.toBase64(),
        share: half.share.toBase64(),
      }),
    );
  }

  /** Keepalive tick of one client: notices a silent path and starts a rekey when due. */
  tick(client: UdpClient): void {
    const state = client.udp;
    if (state === undefined) return;
    if (state.alive && performance.now() - state.lastHeard > this.#timeoutMs) {
      state.alive = false;
      logger.warn("{name}: UDP silent for {seconds} s; its data goes over TLS", {
        name: client.name,
        seconds: this.#timeoutMs / 1000,
      });
    }
    const keys = state.crypto;
    const due = keys.sent >= REKEY_AFTER_PACKETS ||
      performance.now() - keys.sendSince >= this.#rekeyMs;
    if (due && state.pending === undefined) {
      const half = new KeyHalf();
      state.pending = { epoch: keys.sendEpoch + 1, half };
      client.channel.sendControl(
        FrameType.REKEY,
        encodeMessage({
          epoch: state.pending.epoch,
          random: half.random.toBase64(),
          share: half.share.toBase64(),
        }),
      );
    }
  }

  /** The client's REKEY_ACK: both sides now hold the new keys; send with them. */
  rekeyAck(client: UdpClient, ack: Rekey): void {
    const state = client.udp;
    const pending = state?.pending;
    if (state === undefined || pending === undefined || ack.epoch !== pending.epoch) return;
    const theirs = keyMaterial(ack, "REKEY_ACK");
    const keys = deriveKeys(
      theirs.random,
      pending.half.random,
      state.crypto.sessionId,
      ack.epoch,
      pending.half.agree(theirs.share),
    );
    state.crypto.installReceive(keys);
    state.crypto.installSend(keys);
    state.pending = undefined;
    client.channel.sendControl(FrameType.REKEY_DONE, encodeMessage({ epoch: ack.epoch }));
    this.stats.rekeyed++;
    logger.debug("{name}: UDP keys of epoch {epoch} in use", {
      name: client.name,
      epoch: ack.epoch,
    });
  }

  /** Seals a packet for `client` into the batch; false when its UDP path is not alive. */
  queue(client: UdpClient, packet: Uint8Array, length: number): boolean {
    const state = client.udp;
    if (state === undefined || !state.alive) return false;
    if (!this.#out.add(state.crypto, DatagramType.DATA, packet, length, state.peer)) return false;
    state.bytesOut += length + OVERHEAD;
    return true;
  }

  /** Sends the batch of sealed datagrams. */
  flush(): void {
    this.#out.flush();
  }

  /** Drops a client's UDP state (its session ended, or it offered again). */
  forget(client: UdpClient): void {
    const state = client.udp;
    if (state === undefined) return;
    if (this.#sessions.get(state.crypto.sessionId) === client) {
      this.#sessions.delete(state.crypto.sessionId);
    }
    state.crypto.close();
    client.udp = undefined;
  }

  async #receive(sink: UdpSink): Promise<void> {
    const slots = new DatagramSlots(BATCH);
    const segments = new Array<number>(BATCH).fill(0);
    // A plaintext buffer per datagram of a batch: the sink keeps views of them until flush.
    const plain = slots.bufs.map((buf) => new Uint8Array(buf.length));
    let used = 0;
    const flush = () => {
      sink.flush();
      this.flush();
      this.foreign?.endBatch();
      used = 0;
    };
    let from = slots.addrs[0]!;
    const open = (datagram: Uint8Array, length: number, body: Uint8Array) => {
      if (used === plain.length) flush();
      if (this.#open(sink, datagram, length, body, plain[used]!, from)) used++;
    };
    const socket = this.#socket;
    const failures = new BatchFailures(logger, "UDP receive");
    try {
      for (let n; (n = await socket.recv(slots.bufs, slots.sizes, slots.addrs, segments)) > 0;) {
        try {
          for (let i = 0; i < n; i++) {
            from = slots.addrs[i]!;
            slots.forEach(i, segments[i]!, open);
          }
          flush();
        } catch (error) {
          // `used` stays: the sink may still hold views of those buffers until its next flush.
          failures.report(error);
        }
      }
    } catch (error) {
      logger.error("UDP receive failed: {error}", { error: String(error) });
    }
  }

  /**
   * Opens one datagram from `from` into `out` and acts on it. True when `out` went to the sink
   * (which may keep a view of it until flush).
   */
  #open(
    sink: UdpSink,
    datagram: Uint8Array,
    size: number,
    body: Uint8Array,
    out: Uint8Array,
    from: SockAddr,
  ): boolean {
    if (!isDatagramType(datagram[0]! & 0x7f)) {
      if (this.foreign !== undefined) this.foreign.receive(datagram, size, from);
      else this.stats.malformed++;
      return false;
    }
    if (size < OVERHEAD) {
      this.stats.malformed++;
      return false;
    }
    const client = this.#sessions.get(datagramSession(datagram));
    const state = client?.udp;
    if (state === undefined) {
      this.stats.unknown++;
      return false;
    }
    const length = state.crypto.open(datagram, size, body, out);
    if (length < 0) return false;
    this.stats.accepted++;
    state.bytesIn += size;
    this.#heard(client!, state, from);
    const type = state.crypto.type;
    if (type === DatagramType.DATA) {
      sink.fromClient(client!, out, 0, length);
      return true;
    }
    // The answer is sealed into the send batch at once, so `out` is free again.
    if (type === DatagramType.PING) {
      this.#out.add(state.crypto, DatagramType.PONG, out, length, state.peer);
    }
    return false;
  }

  #heard(client: UdpClient, state: UdpState, from: Uint8Array): void {
    state.lastHeard = performance.now();
    const moved = !sameSockAddr(state.peer, from);
    // The client may also have turned to another address of this host: answer from that one.
    if (moved || !sameLocalAddr(state.peer, from)) copySockAddr(from, state.peer);
    if (moved || !state.alive) {
      const message = state.alive
        ? "{name}: UDP address changed to {addr}"
        : "{name}: data over UDP from {addr}";
      logger.info(message, { name: client.name, addr: formatSockAddr(state.peer, formatPeer) });
    }
    state.alive = true;
  }

  /** Closes the socket and every session's keys. */
  async close(): Promise<void> {
    this.#socket.close();
    await this.#receiving;
    for (const client of [...this.#sessions.values()]) this.forget(client);
  }
}
