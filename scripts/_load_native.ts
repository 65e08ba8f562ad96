/**
 * Load-test sessions of our protocol (PROTOCOL.md), built from the product's own pieces as
 * mod/native/client.ts uses them: the TLS connection and `Channel`, `authenticate()` for
 * HELLO / AUTH / PUSH, and for `--proto udp` the UDP data channel's keys and datagrams
 * (mod/native/datagram.ts). No TUN: each session keeps its own tunnel address and sends an
 * ICMP echo through the tunnel now and then (scripts/_load_session.ts).
 *
 * The UDP data channel: a real client has a socket of its own (mod/native/client_udp.ts, with
 * 64 slots of 64 KiB each way and a poll thread while it waits). Thousands of those would
 * measure the load tool, so all sessions share one socket here: the server tells datagrams
 * apart by the session id in their header, not by their source, and so does this end.
 *
 * @module
 */

import { encodeSockAddr, newSockAddr, type SockAddr, UdpSocket } from "../ffi/udp.ts";
import { Channel } from "../mod/native/channel.ts";
import {
  DatagramBatch,
  DatagramCrypto,
  datagramSession,
  DatagramSlots,
  DatagramType,
  deriveKeys,
  HEADER_LEN,
  KeyHalf,
  MAX_DATAGRAM,
} from "../mod/native/datagram.ts";
import { acceptedCrypto } from "../mod/native/client_udp.ts";
import { authenticate } from "../mod/native/handshake.ts";
import {
  ALPN,
  decodeBye,
  decodeError,
  decodeRekey,
  decodeUdpAccept,
  decodeUdpRefuse,
  encodeMessage,
  keyMaterial,
  type Push,
  type Rekey,
  UDP_CIPHERS,
  type UdpAccept,
} from "../mod/native/messages.ts";
import {
  FrameError,
  FrameType,
  HEADER_LEN as FRAME_HEADER,
  MAX_PAYLOAD,
} from "../mod/native/wire.ts";
import type { IssuedClient } from "../mod/pki.ts";
import { escapeText } from "../mod/log.ts";
import {
  CLOSE_WAIT_MS,
  Echo,
  type LoadSession,
  newCounters,
  Schedule,
  type SessionCounters,
  Steps,
} from "./_load_session.ts";

/** The smallest send buffer a `Channel` takes (one largest frame): sessions here send little. */
const SEND_BUFFER = FRAME_HEADER + MAX_PAYLOAD;
/** How often a UDP probe goes out until the server first answers over UDP. */
const PROBE_EVERY_MS = 200;
/** Slots of the shared socket's receive batch. */
const RECEIVE_SLOTS = 64;

/** Where the sessions of one run connect, and how. */
export interface NativeTarget {
  host: string;
  port: number;
  caPem: string;
  /** The name the server certificate is verified against (`serverIdentityName()`). */
  identity: string;
  /** Ask for the UDP data channel and use it for the echoes. */
  udp: boolean;
}

/** A session of the shared UDP socket: its keys, and where its datagrams go. */
interface UdpPeer {
  readonly crypto: DatagramCrypto;
  /** An authenticated datagram of this session, `payload[0, length)` valid during the call. */
  received(type: DatagramType, payload: Uint8Array, length: number): void;
}

/** The one UDP socket of every session of a run, to the server's UDP port. */
export class SharedUdp {
  /** Datagrams that named no session here, or did not open. */
  dropped = 0;
  readonly #socket: UdpSocket;
  readonly #server: SockAddr;
  readonly #out: DatagramBatch;
  readonly #peers = new Map<number, UdpPeer>();
  readonly #plain = new Uint8Array(MAX_DATAGRAM);
  readonly #receiving: Promise<void>;

  private constructor(socket: UdpSocket, server: SockAddr) {
    this.#socket = socket;
    this.#server = server;
    this.#out = new DatagramBatch(socket);
    this.#receiving = this.#receive();
  }

  /** Opens a socket for datagrams to `host` (an IP, as the TLS connection saw it) and `port`. */
  static open(host: string, port: number): SharedUdp {
    const socket = UdpSocket.bind(host.includes(":") ? "::" : "0.0.0.0", 0);
    try {
      // Many sessions' datagrams of one size come joined (the server sends GSO runs).
      socket.enableGro();
      return new SharedUdp(socket, encodeSockAddr(host, port, newSockAddr(), socket.family));
    } catch (error) {
      socket.close();
      throw error;
    }
  }

  add(peer: UdpPeer): void {
    this.#peers.set(peer.crypto.sessionId, peer);
  }

  remove(peer: UdpPeer): void {
    if (this.#peers.get(peer.crypto.sessionId) === peer) this.#peers.delete(peer.crypto.sessionId);
  }

  /** Seals `payload[0, length)` into the outgoing batch; false when the key may seal no more. */
  queue(crypto: DatagramCrypto, type: DatagramType, payload: Uint8Array, length: number): boolean {
    return this.#out.add(crypto, type, payload, length, this.#server);
  }

  /** Sends the outgoing batch. */
  flush(): void {
    this.#out.flush();
  }

  async #receive(): Promise<void> {
    const slots = new DatagramSlots(RECEIVE_SLOTS);
    const segments = new Array<number>(RECEIVE_SLOTS).fill(0);
    const open = (datagram: Uint8Array, length: number, body: Uint8Array) => {
      const peer = length >= HEADER_LEN ? this.#peers.get(datagramSession(datagram)) : undefined;
      const n = peer?.crypto.open(datagram, length, body, this.#plain) ?? -1;
      if (n < 0) this.dropped++;
      else peer!.received(peer!.crypto.type, this.#plain, n);
    };
    const socket = this.#socket;
    for (let n; (n = await socket.recv(slots.bufs, slots.sizes, slots.addrs, segments)) > 0;) {
      for (let i = 0; i < n; i++) slots.forEach(i, segments[i]!, open);
      // Answers to what the datagrams asked for (nothing yet) leave together.
      this.#out.flush();
    }
  }

  /** Closes the socket; waits for the receive loop. */
  async close(): Promise<void> {
    this.#socket.close();
    await this.#receiving;
  }
}

/** One client of our protocol. */
export class NativeLoadSession implements LoadSession, UdpPeer {
  readonly counters: SessionCounters = newCounters();
  ended: string | undefined;

  readonly #index: number;
  readonly #target: NativeTarget;
  readonly #client: IssuedClient;
  readonly #shared: (serverIp: string) => SharedUdp;
  /** The payload of this session's UDP pings. */
  readonly #ping = new Uint8Array(8);
  #channel: Channel | undefined;
  #reading: Promise<void> | undefined;
  #push: Push | undefined;
  #echo: Echo | undefined;
  #schedule: Schedule | undefined;
  #udp: SharedUdp | undefined;
  #crypto: DatagramCrypto | undefined;
  /** Resolves when the server first answers over UDP, rejects when UDP cannot be had. */
  #udpUp: PromiseWithResolvers<void> | undefined;
  #udpHalf: KeyHalf | undefined;
  #pendingKeys: ReturnType<typeof deriveKeys> | undefined;
  #closing = false;

  /**
   * `shared` gives the run's UDP socket to the server's IP as the TLS connection saw it,
   * opened by the first session that needs it.
   */
  constructor(
    index: number,
    target: NativeTarget,
    client: IssuedClient,
    shared: (serverIp: string) => SharedUdp,
  ) {
    this.#index = index;
    this.#target = target;
    this.#client = client;
    this.#shared = shared;
  }

  get crypto(): DatagramCrypto {
    return this.#crypto!;
  }

  async connect(signal: AbortSignal): Promise<void> {
    const steps = new Steps(signal);
    const { host, port, caPem, identity } = this.#target;
    const tcp = await steps.run("TCP connect", Deno.connect({ hostname: host, port, signal }));
    tcp.setNoDelay(true);
    const conn = await Deno.startTls(tcp, {
      hostname: identity,
      caCerts: [caPem],
      alpnProtocols: [ALPN],
    });
    const channel = new Channel(conn, SEND_BUFFER);
    this.#channel = channel;
    // A step that does not end by itself (a read the server never answers) ends with this.
    signal.addEventListener("abort", () => this.#push === undefined && channel.close(), {
      once: true,
    });
    try {
      const { alpnProtocol } = await steps.run("TLS handshake", conn.handshake());
      if (alpnProtocol !== ALPN) throw new FrameError(`the server chose no "${ALPN}" ALPN id`);
      const push = await steps.run(
        "AUTH",
        authenticate(channel, {
          certPem: this.#client.certPem,
          keyPem: this.#client.keyPem,
          serverName: identity,
          offload: false,
        }),
      );
      this.#echo = new Echo(push.address, push.gateway, this.#index);
      this.#schedule = new Schedule(push.keepalive.interval);
      if (this.#target.udp) this.#offerUdp(channel, conn.remoteAddr.hostname);
      this.#reading = this.#read(channel);
      if (this.#udpUp !== undefined) await steps.run("UDP", this.#udpUp.promise);
      this.#push = push;
    } catch (error) {
      channel.close();
      this.#leaveUdp();
      await this.#reading;
      throw error;
    }
  }

  tick(now: number): void {
    const channel = this.#channel;
    if (this.#push === undefined || channel === undefined || channel.closed) return;
    const schedule = this.#schedule!;
    const udp = this.#crypto === undefined ? undefined : this.#udp;
    if (schedule.keepaliveDue(now)) {
      channel.sendControl(FrameType.PING);
      this.counters.keepaliveSent++;
      // The real client pings over UDP too: that keeps the server's UDP path alive.
      if (udp?.queue(this.#crypto!, DatagramType.PING, this.#ping, this.#ping.length)) {
        this.counters.keepaliveSent++;
      }
    }
    if (schedule.echoDue(now)) {
      const echo = this.#echo!;
      echo.next();
      const sent = udp?.queue(this.#crypto!, DatagramType.DATA, echo.packet, echo.length) ||
        channel.queueData(echo.packet, echo.length);
      if (sent) this.counters.echoSent++;
      channel.flush();
    }
  }

  async close(): Promise<void> {
    this.#closing = true;
    const channel = this.#channel;
    if (channel !== undefined) {
      await channel.closeWith(
        FrameType.BYE,
        encodeMessage({ reason: "load test done" }),
        CLOSE_WAIT_MS,
      );
    }
    await this.#reading;
    this.#leaveUdp();
  }

  /** Asks for the UDP data channel (the server answers UDP_ACCEPT or UDP_REFUSE). */
  #offerUdp(channel: Channel, serverIp: string): void {
    this.#udpUp = Promise.withResolvers();
    // Awaited by connect() only: a rejection after a failed connect is nobody's business.
    this.#udpUp.promise.catch(() => {});
    this.#udpHalf = new KeyHalf();
    this.#udp = this.#shared(serverIp);
    channel.sendControl(
      FrameType.UDP_OFFER,
      encodeMessage({
        ciphers: [...UDP_CIPHERS],
        random: this.#udpHalf.random.toBase64(),
        share: this.#udpHalf.share.toBase64(),
      }),
    );
  }

  /** The server's UDP_ACCEPT: the keys of epoch 0, made as `vpn connect` makes them. */
  #startUdp(accept: UdpAccept): void {
    const half = this.#udpHalf;
    if (half === undefined || this.#crypto !== undefined) return;
    this.#crypto = acceptedCrypto(accept, half);
    this.#udp!.add(this);
    this.#probe();
  }

  /** Pings over UDP until the first answer, for at most the connect deadline. */
  #probe(): void {
    const up = this.#udpUp;
    const probe = () => {
      if (this.#channel?.closed !== false) up?.reject(new Error("connection closed"));
      else if (this.#udp!.queue(this.#crypto!, DatagramType.PING, this.#ping, this.#ping.length)) {
        this.#udp!.flush();
      }
    };
    probe();
    const timer = setInterval(probe, PROBE_EVERY_MS);
    up?.promise.then(() => clearInterval(timer), () => clearInterval(timer));
  }

  received(type: DatagramType, payload: Uint8Array, length: number): void {
    if (type === DatagramType.PONG) {
      if (this.#push === undefined) this.#udpUp?.resolve();
      else this.counters.keepaliveAnswered++;
    } else if (type === DatagramType.DATA) {
      if (this.#echo?.isReply(payload, 0, length)) this.counters.echoAnswered++;
    } else if (type === DatagramType.PING) {
      this.counters.serverPings++;
      // The server does not ping over UDP today; answer as the protocol says if it does.
      this.#udp!.queue(this.#crypto!, DatagramType.PONG, payload, length);
    }
  }

  /** The server's REKEY (as mod/native/client_udp.ts answers it): returns the REKEY_ACK. */
  #rekey(message: Rekey): Rekey {
    const half = new KeyHalf();
    const theirs = keyMaterial(message, "REKEY");
    const crypto = this.#crypto!;
    const keys = deriveKeys(
      half.random,
      theirs.random,
      crypto.sessionId,
      message.epoch,
      half.agree(theirs.share),
    );
    crypto.installReceive(keys);
    this.#pendingKeys = keys;
    return { epoch: message.epoch, random: half.random.toBase64(), share: half.share.toBase64() };
  }

  async #read(channel: Channel): Promise<void> {
    let ended: string | undefined;
    try {
      await channel.readFrames((type, buffer, start, end) => {
        switch (type) {
          case FrameType.DATA:
            if (this.#echo!.isReply(buffer, start, end)) this.counters.echoAnswered++;
            return;
          case FrameType.PING:
            this.counters.serverPings++;
            channel.sendControl(FrameType.PONG, buffer.slice(start, end));
            return;
          case FrameType.PONG:
            this.counters.keepaliveAnswered++;
            return;
          case FrameType.BYE:
            ended = `the server said goodbye: ${decodeBye(buffer.subarray(start, end)).reason}`;
            channel.close();
            return;
          case FrameType.ERROR: {
            const error = decodeError(buffer.subarray(start, end));
            ended = `the server ended the session (${error.reason}): ${error.message}`;
            channel.close();
            return;
          }
          case FrameType.UDP_ACCEPT:
            this.#startUdp(decodeUdpAccept(buffer.subarray(start, end)));
            return;
          case FrameType.UDP_REFUSE:
            this.#udpUp?.reject(
              new Error(`refused: ${decodeUdpRefuse(buffer.subarray(start, end)).reason}`),
            );
            return;
          case FrameType.REKEY:
            if (this.#crypto !== undefined) {
              const ack = this.#rekey(decodeRekey(buffer.subarray(start, end), "REKEY"));
              channel.sendControl(FrameType.REKEY_ACK, encodeMessage(ack));
            }
            return;
          case FrameType.REKEY_DONE: {
            const done = decodeRekey(buffer.subarray(start, end), "REKEY_DONE");
            if (this.#pendingKeys?.epoch === done.epoch) {
              this.#crypto!.installSend(this.#pendingKeys);
              this.#pendingKeys = undefined;
            }
            return;
          }
          default:
            throw new FrameError(`unexpected frame type ${type} after PUSH`);
        }
      }, () => {});
    } catch (error) {
      ended ??= `connection failed: ${(error as Error).message}`;
    } finally {
      channel.close();
      this.#udpUp?.reject(new Error(ended ?? "connection closed"));
    }
    if (!this.#closing && this.#push !== undefined) {
      this.ended = escapeText(ended ?? "the server closed the connection");
    }
  }

  #leaveUdp(): void {
    this.#udp?.remove(this);
    this.#crypto?.close();
  }
}
