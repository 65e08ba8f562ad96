/**
 * A raw client for tests that play the attacker: it speaks the protocol itself, frame by frame
 * and datagram by datagram, with the product's own codecs (mod/native/wire.ts, mod/native/messages.ts,
 * mod/native/handshake.ts, mod/native/datagram.ts), so that a test can send what a real Client never would
 * and see exactly what the server answers, or that it answers nothing.
 *
 * Everything received is kept in arrays that the test polls with a bounded `waitFor`, so a
 * broken server makes a test fail with a message instead of hanging.
 *
 * @module
 */

import { HOST, SHORT_MS, waitFor, within } from "./_lab.ts";
import { encodeSockAddr, type SockAddr, UdpSocket } from "../ffi/udp.ts";
import { Channel } from "../mod/native/channel.ts";
import {
  DatagramCrypto,
  DatagramSlots,
  DatagramType,
  deriveKeys,
  HEADER_LEN as DATAGRAM_HEADER_LEN,
  KeyHalf,
} from "../mod/native/datagram.ts";
import { authenticate } from "../mod/native/handshake.ts";
import {
  ALPN,
  type Auth,
  decodeHello,
  decodeUdpAccept,
  encodeMessage,
  PROTOCOL_VERSION,
  type Push,
  type UdpAccept,
} from "../mod/native/messages.ts";
import { authChallenge, signChallenge } from "../mod/pki.ts";
import { FrameType, HEADER_LEN } from "../mod/native/wire.ts";

/** A frame as received: its type byte, a copy of its payload, and when it came. */
export interface Frame {
  type: number;
  payload: Uint8Array;
  /** `performance.now()` when the frame was read. */
  at: number;
}

/** A client certificate and its key, PEM. */
export interface ClientKeys {
  cert: string;
  key: string;
}

/** The bytes of a frame of any type and length, even ones the product's encoder refuses. */
export function rawFrame(type: number, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const frame = new Uint8Array(HEADER_LEN + payload.length);
  frame[0] = type;
  frame[1] = payload.length >>> 16;
  frame[2] = (payload.length >>> 8) & 0xff;
  frame[3] = payload.length & 0xff;
  frame.set(payload, HEADER_LEN);
  return frame;
}

/** An AUTH for `serverNonce`, signed with `keys` over a fresh client nonce and `serverName`. */
export async function signedAuth(
  keys: ClientKeys,
  serverNonce: Uint8Array,
  serverName: string,
): Promise<Auth> {
  const clientNonce = crypto.getRandomValues(new Uint8Array(32));
  const signature = await signChallenge(
    keys.key,
    authChallenge(serverNonce, clientNonce, serverName),
  );
  return {
    version: PROTOCOL_VERSION,
    cert: keys.cert,
    nonce: clientNonce.toBase64(),
    server_name: serverName,
    signature: signature.toBase64(),
  };
}

/** One TLS connection to the server, driven by the test. */
export class RawClient {
  readonly conn: Deno.TlsConn;
  /** Used for the handshake (mod/native/handshake.ts `authenticate`) and for reading frames. */
  readonly channel: Channel;
  /** Every frame received since reading started, in order. */
  readonly frames: Frame[] = [];
  /** Set once the server closed (or reset) the connection. */
  ended = false;
  /** `performance.now()` when the connection was seen to end. */
  endedAt = 0;
  /** The PUSH, once authenticated. */
  push: Push | undefined;
  #cursor = 0;
  #reading: Promise<void> | undefined;
  #writes: Promise<unknown> = Promise.resolve();

  private constructor(conn: Deno.TlsConn) {
    this.conn = conn;
    this.channel = new Channel(conn);
  }

  /** Connects with TLS (the profile's CA, ALPN `vpn/1`) and finishes the TLS handshake. */
  static async connect(port: number, ca: string): Promise<RawClient> {
    const conn = await within(
      Deno.connectTls({ hostname: HOST, port, caCerts: [ca], alpnProtocols: [ALPN] }),
      SHORT_MS,
      "TLS connect",
    );
    try {
      await within(conn.handshake(), SHORT_MS, "TLS handshake");
    } catch (error) {
      conn.close();
      throw error;
    }
    return new RawClient(conn);
  }

  /** Connects and authenticates as a real client would; resolves the PUSH. */
  static async authenticated(port: number, ca: string, keys: ClientKeys): Promise<RawClient> {
    const client = await RawClient.connect(port, ca);
    try {
      await client.authenticate(keys);
    } catch (error) {
      await client.close();
      throw error;
    }
    return client;
  }

  /** Runs the client side of the handshake (mod/native/handshake.ts), then reads frames. */
  async authenticate(keys: ClientKeys, serverName = HOST): Promise<Push> {
    const credentials = { certPem: keys.cert, keyPem: keys.key, serverName, offload: false };
    this.push = await within(authenticate(this.channel, credentials), SHORT_MS, "PUSH");
    this.#startReading();
    return this.push;
  }

  /** Reads the server's HELLO (the first frame), then reads frames; resolves its nonce. */
  async hello(): Promise<Uint8Array> {
    const frame = await within(this.channel.readFrame(), SHORT_MS, "HELLO");
    if (frame?.type !== FrameType.HELLO) {
      throw new Error(`expected HELLO, got ${frame === null ? "the end" : `type ${frame.type}`}`);
    }
    this.#startReading();
    return Uint8Array.fromBase64(decodeHello(frame.payload).nonce);
  }

  #startReading(): void {
    this.#reading ??= (async () => {
      try {
        for (let frame; (frame = await this.channel.readFrame()) !== null;) {
          this.frames.push({ ...frame, at: performance.now() });
        }
      } catch {
        // A reset ends the connection as an EOF does.
      }
      this.ended = true;
      this.endedAt = performance.now();
    })();
  }

  /** The next frame not yet taken, or null once the connection has ended; bounded. */
  async next(ms: number, what: string): Promise<Frame | null> {
    await waitFor(() => this.frames.length > this.#cursor || this.ended, ms, what);
    return this.frames[this.#cursor++] ?? null;
  }

  /**
   * Takes frames until one of `type` that `match` accepts (others are skipped); throws if the
   * connection ends first. Bounded.
   */
  async until(
    type: number,
    ms: number,
    what: string,
    match: (frame: Frame) => boolean = () => true,
  ): Promise<Frame> {
    let found: Frame | undefined;
    await waitFor(
      () => {
        while (found === undefined && this.#cursor < this.frames.length) {
          const frame = this.frames[this.#cursor++]!;
          if (frame.type === type && match(frame)) found = frame;
        }
        return found !== undefined || this.ended;
      },
      ms,
      what,
    );
    if (found === undefined) throw new Error(`the connection ended before ${what}`);
    return found;
  }

  /** Waits until the server has closed the connection; bounded. */
  async closed(ms: number, what: string): Promise<void> {
    await waitFor(() => this.ended, ms, what);
  }

  /** Writes `bytes` whole, after every earlier write. */
  write(bytes: Uint8Array): Promise<void> {
    const write = this.#writes.then(async () => {
      for (let at = 0; at < bytes.length;) at += await this.conn.write(bytes.subarray(at));
    });
    this.#writes = write.catch(() => {});
    return within(write, SHORT_MS, "a write to the server");
  }

  /** Sends one frame (any type, any length). */
  send(type: number, payload: Uint8Array = new Uint8Array(0)): Promise<void> {
    return this.write(rawFrame(type, payload));
  }

  /** Sends AUTH with exactly these fields. */
  sendAuth(auth: Auth): Promise<void> {
    return this.send(FrameType.AUTH, encodeMessage(auth));
  }

  /** Sends a PING with 8 random bytes and takes frames up to its PONG: the session lives. */
  async ping(ms = SHORT_MS): Promise<void> {
    const payload = crypto.getRandomValues(new Uint8Array(8));
    await this.send(FrameType.PING, payload);
    await this.until(
      FrameType.PONG,
      ms,
      "the PONG of a PING over TLS",
      (frame) => frame.payload.toHex() === payload.toHex(),
    );
  }

  /** Asks for the UDP data channel (AES-256-GCM) and opens it on a socket of 127.0.0.1. */
  async offerUdp(): Promise<RawUdp> {
    const half = new KeyHalf();
    await this.send(
      FrameType.UDP_OFFER,
      encodeMessage({
        ciphers: ["aes-256-gcm"],
        random: half.random.toBase64(),
        share: half.share.toBase64(),
      }),
    );
    const frame = await this.until(FrameType.UDP_ACCEPT, SHORT_MS, "UDP_ACCEPT");
    return RawUdp.open(decodeUdpAccept(frame.payload), half, this.conn.remoteAddr.port);
  }

  /** Closes the connection and waits (bounded) for the read loop to end. */
  async close(): Promise<void> {
    this.channel.close();
    if (this.#reading) await within(this.#reading, SHORT_MS, "the raw client's read loop ends");
  }
}

/** A datagram as received, and what it opened to under the client's keys (if it did). */
export interface Received {
  bytes: Uint8Array;
  /** Undefined when the datagram did not open. */
  type?: number;
  payload?: Uint8Array;
}

/** Every datagram a UDP socket receives, kept in order, until {@linkcode close}. */
export class Inbox {
  readonly socket: UdpSocket;
  readonly received: Uint8Array[] = [];
  readonly #done: Promise<void>;

  constructor(socket: UdpSocket, each: (datagram: Uint8Array) => void = () => {}) {
    this.socket = socket;
    const slots = new DatagramSlots(8);
    this.#done = (async () => {
      for (let n; (n = await socket.recv(slots.bufs, slots.sizes, slots.addrs)) > 0;) {
        for (let i = 0; i < n; i++) {
          const datagram = slots.bufs[i]!.slice(0, slots.sizes[i]!);
          this.received.push(datagram);
          each(datagram);
        }
      }
    })();
  }

  /** Closes the socket and waits (bounded) for the receive loop to end. */
  async close(): Promise<void> {
    this.socket.close();
    await within(this.#done, SHORT_MS, "the UDP receive loop ends");
  }
}

/** The client's UDP path, sealed and opened exactly as mod/native/client_udp.ts does. */
export class RawUdp {
  readonly socket: UdpSocket;
  readonly crypto: DatagramCrypto;
  readonly sessionId: number;
  /** The server's UDP address. */
  readonly server: SockAddr;
  /** Every datagram received on {@linkcode socket}, opened where it opens. */
  readonly received: Received[] = [];
  readonly #inbox: Inbox;

  private constructor(socket: UdpSocket, crypto: DatagramCrypto, port: number) {
    this.socket = socket;
    this.crypto = crypto;
    this.sessionId = crypto.sessionId;
    this.server = encodeSockAddr(HOST, port);
    this.#inbox = new Inbox(socket, (bytes) => this.received.push(this.unseal(bytes)));
  }

  /** Keys of epoch 0 from the UDP_ACCEPT and this client's half of the offer. */
  static open(accept: UdpAccept, half: KeyHalf, port: number): RawUdp {
    const crypto = new DatagramCrypto(accept.session, "aes-256-gcm", true);
    const secret = half.agree(Uint8Array.fromBase64(accept.share));
    const keys = deriveKeys(
      half.random,
      Uint8Array.fromBase64(accept.random),
      accept.session,
      0,
      secret,
    );
    crypto.installReceive(keys);
    crypto.installSend(keys);
    return new RawUdp(UdpSocket.bind(HOST, 0), crypto, port);
  }

  /** A fresh datagram sealed with the client's key (the next counter). */
  seal(type: DatagramType, payload: Uint8Array): Uint8Array {
    const slots = new DatagramSlots(1, DATAGRAM_HEADER_LEN + payload.length + 16);
    const size = this.crypto.seal(type, payload, payload.length, slots.bufs[0]!, slots.bodies[0]!);
    if (size === 0) throw new Error("the client key seals nothing more");
    return slots.bufs[0]!.slice(0, size);
  }

  /** Opens a datagram from the server with the client's key (each one once: replay window). */
  unseal(bytes: Uint8Array): Received {
    const out = new Uint8Array(bytes.length);
    const n = this.crypto.open(bytes, bytes.length, bytes.subarray(DATAGRAM_HEADER_LEN), out);
    return n < 0 ? { bytes } : { bytes, type: this.crypto.type, payload: out.slice(0, n) };
  }

  /** Sends `datagram` to the server from {@linkcode socket}, or from `via`. */
  send(datagram: Uint8Array, via: UdpSocket = this.socket): void {
    if (!via.sendTo(datagram, datagram.length, this.server)) throw new Error("sendto failed");
  }

  /** Sends a PING and waits for its PONG; returns the PING datagram (for replays). */
  async ping(ms = SHORT_MS): Promise<Uint8Array> {
    const payload = crypto.getRandomValues(new Uint8Array(8));
    const datagram = this.seal(DatagramType.PING, payload);
    this.send(datagram);
    await waitFor(
      () =>
        this.received.some((r) =>
          r.type === DatagramType.PONG && r.payload?.toHex() === payload.toHex()
        ),
      ms,
      "the PONG of a PING over UDP",
    );
    return datagram;
  }

  /** Closes the socket and frees the keys. */
  async close(): Promise<void> {
    await this.#inbox.close();
    this.crypto.close();
  }
}
