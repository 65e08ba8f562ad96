/**
 * The UDP data channel's datagrams and keys (PROTOCOL.md, "UDP data channel").
 *
 * A datagram is a 13-byte header, then the AEAD ciphertext and its 16-byte tag:
 *
 *   byte 0      type (low 7 bits) | key phase (bit 7)
 *   bytes 1-4   session id, u32 big-endian
 *   bytes 5-12  packet counter, u64 big-endian
 *
 * The header is the AEAD's associated data, and the nonce is a 4-byte salt of the key followed
 * by the counter, so nothing but these three fields travels in clear. Keys come from HKDF-SHA256
 * over random material that both sides sent inside the authenticated TLS session and an X25519
 * secret of ephemeral keys made for that epoch alone (so one leaked TLS session secret or epoch
 * key opens no other epoch); one key and salt per direction and per epoch. The key phase bit tells which of the two live epochs sealed
 * a datagram, so that a rekey loses nothing in flight.
 *
 * @module
 */

import { createPublicKey, diffieHellman, generateKeyPairSync, hkdfSync } from "node:crypto";
import { Aead, type CipherName, KEY_LEN, NONCE_LEN, TAG_LEN } from "../../ffi/crypto.ts";
import { MAX_UDP_PAYLOAD, newSockAddr, type SockAddr, type UdpSocket } from "../../ffi/udp.ts";
import { ReplayWindow } from "../core/replay.ts";
import { FrameError } from "./wire.ts";

/** Datagram types. */
export const DatagramType = {
  /** One IP packet. */
  DATA: 1,
  /** A probe or keepalive; answered with PONG carrying the same payload. */
  PING: 2,
  /** The answer to a PING. */
  PONG: 3,
} as const;

/** One of {@linkcode DatagramType}. */
export type DatagramType = typeof DatagramType[keyof typeof DatagramType];

/** Whether `type` (a first byte without its key phase bit) is one of ours. */
export function isDatagramType(type: number): boolean {
  return type >= DatagramType.DATA && type <= DatagramType.PONG;
}

/** Bytes before the ciphertext. */
export const HEADER_LEN = 13;
/** Bytes a datagram adds to the packet it carries. */
export const OVERHEAD = HEADER_LEN + TAG_LEN;
/** Packets one key may seal before a rekey is due; the AEAD limits are far above it. */
export const REKEY_AFTER_PACKETS = 2 ** 32;
/** Past this many packets without a finished rekey, a key seals nothing more. */
export const REJECT_AFTER_PACKETS = 2 ** 32 + 2 ** 24;

const SALT_LEN = NONCE_LEN - 8;
const HKDF_SALT = new TextEncoder().encode("vpn udp v1");

/** Key material of one epoch: both directions, as HKDF derives it. */
export interface EpochKeys {
  epoch: number;
  clientToServer: { key: Uint8Array; salt: Uint8Array };
  serverToClient: { key: Uint8Array; salt: Uint8Array };
}

/**
 * One side's half of an epoch's keys: 32 random bytes and an ephemeral X25519 key, both sent
 * (as `random` and `share`) inside TLS; the private key never leaves this object.
 */
export class KeyHalf {
  readonly random: Uint8Array = crypto.getRandomValues(new Uint8Array(32));
  /** The X25519 public key, 32 bytes. */
  readonly share: Uint8Array;
  readonly #key = generateKeyPairSync("x25519");

  constructor() {
    this.share = Uint8Array.fromBase64(this.#key.publicKey.export({ format: "jwk" }).x!, {
      alphabet: "base64url",
    });
  }

  /**
   * The 32-byte secret shared with the peer's `share`.
   *
   * @throws {FrameError} for a share that is not an X25519 public key, or a low-order point
   *   (which would give every pair the same, all-zero secret).
   */
  agree(share: Uint8Array): Uint8Array {
    if (share.length !== 32) throw new FrameError("key share must be 32 bytes");
    try {
      const x = share.toBase64({ alphabet: "base64url", omitPadding: true });
      const publicKey = createPublicKey({ key: { kty: "OKP", crv: "X25519", x }, format: "jwk" });
      return new Uint8Array(diffieHellman({ privateKey: this.#key.privateKey, publicKey }));
    } catch {
      throw new FrameError("key share is not a usable X25519 public key");
    }
  }
}

/**
 * Derives the keys of `epoch` from both sides' random material (32 bytes each) and the X25519
 * `secret` of their key shares for this epoch.
 */
export function deriveKeys(
  clientRandom: Uint8Array,
  serverRandom: Uint8Array,
  sessionId: number,
  epoch: number,
  secret: Uint8Array,
): EpochKeys {
  const ikm = new Uint8Array(clientRandom.length + serverRandom.length + secret.length);
  ikm.set(clientRandom);
  ikm.set(serverRandom, clientRandom.length);
  ikm.set(secret, clientRandom.length + serverRandom.length);
  const info = new TextEncoder().encode(`keys ${sessionId >>> 0} ${epoch}`);
  const okm = new Uint8Array(hkdfSync("sha256", ikm, HKDF_SALT, info, 2 * (KEY_LEN + SALT_LEN)));
  const part = (at: number) => ({
    key: okm.slice(at, at + KEY_LEN),
    salt: okm.slice(at + KEY_LEN, at + KEY_LEN + SALT_LEN),
  });
  return { epoch, clientToServer: part(0), serverToClient: part(KEY_LEN + SALT_LEN) };
}

/** Reads the session id of a datagram (at least {@linkcode HEADER_LEN} bytes). */
export function datagramSession(datagram: Uint8Array): number {
  return ((datagram[1]! << 24) | (datagram[2]! << 16) | (datagram[3]! << 8) | datagram[4]!) >>> 0;
}

/** Reads the counter of a datagram as a number (counters stay below 2^53). */
export function datagramCounter(datagram: Uint8Array): number {
  const high =
    ((datagram[5]! << 24) | (datagram[6]! << 16) | (datagram[7]! << 8) | datagram[8]!) >>> 0;
  const low =
    ((datagram[9]! << 24) | (datagram[10]! << 16) | (datagram[11]! << 8) | datagram[12]!) >>> 0;
  return high * 2 ** 32 + low;
}

/** Writes a datagram header. */
export function writeHeader(
  datagram: Uint8Array,
  type: DatagramType,
  phase: number,
  sessionId: number,
  counter: number,
): void {
  datagram[0] = type | (phase << 7);
  datagram[1] = sessionId >>> 24;
  datagram[2] = (sessionId >>> 16) & 0xff;
  datagram[3] = (sessionId >>> 8) & 0xff;
  datagram[4] = sessionId & 0xff;
  const high = Math.floor(counter / 2 ** 32);
  const low = counter >>> 0;
  datagram[5] = high >>> 24;
  datagram[6] = (high >>> 16) & 0xff;
  datagram[7] = (high >>> 8) & 0xff;
  datagram[8] = high & 0xff;
  datagram[9] = low >>> 24;
  datagram[10] = (low >>> 16) & 0xff;
  datagram[11] = (low >>> 8) & 0xff;
  datagram[12] = low & 0xff;
}

/** The largest datagram: a UDP payload can be no longer. */
export const MAX_DATAGRAM = 65535;

/**
 * Pre-allocated datagrams for one batch, sent or received: buffers, their bodies (views that
 * start at the ciphertext), lengths and peer addresses, so that no packet allocates.
 */
export class DatagramSlots {
  readonly bufs: Uint8Array[];
  readonly bodies: Uint8Array[];
  readonly sizes: number[];
  readonly addrs: SockAddr[];
  /** Slots in use, for a batch being filled. */
  count = 0;

  constructor(slots: number, size = MAX_DATAGRAM) {
    this.bufs = Array.from({ length: slots }, () => new Uint8Array(size));
    this.bodies = this.bufs.map((buf) => buf.subarray(HEADER_LEN));
    this.sizes = new Array<number>(slots).fill(0);
    this.addrs = Array.from({ length: slots }, () => newSockAddr());
  }

  /**
   * Passes each datagram of received slot `i` to `each`: the whole slot, or for a GRO read
   * (`segment` > 0, see `UdpSocket.recv`) every `segment` bytes back to back, the last perhaps
   * shorter. `body` is the view of the datagram that starts at the ciphertext.
   */
  forEach(
    i: number,
    segment: number,
    each: (datagram: Uint8Array, length: number, body: Uint8Array) => void,
  ): void {
    const buf = this.bufs[i]!;
    const size = this.sizes[i]!;
    if (segment === 0 || segment >= size) {
      each(buf, size, this.bodies[i]!);
      return;
    }
    for (let at = 0; at < size; at += segment) {
      const datagram = buf.subarray(at, Math.min(at + segment, size));
      each(datagram, datagram.length, datagram.subarray(HEADER_LEN));
    }
  }
}

/** Why datagrams were refused; the counters only grow. */
export interface RejectStats {
  /** Too short or of an unknown type. */
  malformed: number;
  /** Counter already seen or too far behind the window. */
  replayed: number;
  /** Failed authentication: tampered, forged, or sealed with a key this side does not have. */
  forged: number;
}

interface ReceiveKey {
  epoch: number;
  aead: Aead;
  salt: Uint8Array;
  window: ReplayWindow;
}

interface SendKey {
  epoch: number;
  aead: Aead;
  salt: Uint8Array;
  counter: number;
  since: number;
}

/**
 * The keys of one session on one side: the current sending key, and a receiving key for each
 * of the two phases, so that datagrams sealed just before a rekey still open after it.
 */
export class DatagramCrypto implements Disposable {
  readonly sessionId: number;
  readonly cipher: CipherName;
  /** Where refusals are counted: this session's own counters, or ones it shares. */
  readonly rejects: RejectStats;
  /** Type of the datagram {@linkcode open} last accepted. */
  type: DatagramType = DatagramType.DATA;

  readonly #isClient: boolean;
  #send: SendKey | undefined;
  readonly #receive: [ReceiveKey | undefined, ReceiveKey | undefined] = [undefined, undefined];
  readonly #nonce = new Uint8Array(NONCE_LEN);

  constructor(
    sessionId: number,
    cipher: CipherName,
    isClient: boolean,
    rejects: RejectStats = { malformed: 0, replayed: 0, forged: 0 },
  ) {
    this.rejects = rejects;
    this.sessionId = sessionId >>> 0;
    this.cipher = cipher;
    this.#isClient = isClient;
  }

  /** Epoch of the sending key; -1 before the first. */
  get sendEpoch(): number {
    return this.#send?.epoch ?? -1;
  }

  /** Packets sealed with the current sending key. */
  get sent(): number {
    return this.#send?.counter ?? 0;
  }

  /** `performance.now()` when the current sending key was installed. */
  get sendSince(): number {
    return this.#send?.since ?? 0;
  }

  /**
   * Moves the sending key's counter forward to `counter`, as if the packets in between had been
   * sealed: lets tests reach the usage limits without sealing 2^32 packets. Never backwards, so
   * no nonce can repeat.
   *
   * @throws {RangeError} when there is no sending key, or `counter` is below the current one or
   * not a safe integer
   */
  advanceSendCounter(counter: number): void {
    const send = this.#send;
    if (send === undefined) throw new RangeError("Cannot advance the counter: no sending key");
    if (!Number.isSafeInteger(counter) || counter < send.counter) {
      throw new RangeError(
        `Cannot move the send counter from ${send.counter} to ${counter}: it moves only forward, ` +
          `to a safe integer`,
      );
    }
    send.counter = counter;
  }

  /** Installs the receiving key of an epoch in its phase slot, replacing epoch - 2. */
  installReceive(keys: EpochKeys): void {
    const own = this.#isClient ? keys.serverToClient : keys.clientToServer;
    const phase = keys.epoch & 1;
    this.#receive[phase]?.aead.close();
    this.#receive[phase] = {
      epoch: keys.epoch,
      aead: Aead.create(this.cipher, own.key, false),
      salt: own.salt,
      window: new ReplayWindow(),
    };
  }

  /** Switches sending to an epoch whose receiving side the peer has installed. */
  installSend(keys: EpochKeys): void {
    const own = this.#isClient ? keys.clientToServer : keys.serverToClient;
    this.#send?.aead.close();
    this.#send = {
      epoch: keys.epoch,
      aead: Aead.create(this.cipher, own.key, true),
      salt: own.salt,
      counter: 0,
      since: performance.now(),
    };
  }

  /**
   * Seals `payload[0, length)` into `datagram`, whose view `body` starts at
   * {@linkcode HEADER_LEN}. Returns the datagram's length, or 0 when no key may seal.
   */
  seal(
    type: DatagramType,
    payload: Uint8Array,
    length: number,
    datagram: Uint8Array,
    body: Uint8Array,
  ): number {
    const send = this.#send;
    if (send === undefined || send.counter >= REJECT_AFTER_PACKETS) return 0;
    const counter = send.counter++;
    writeHeader(datagram, type, send.epoch & 1, this.sessionId, counter);
    this.#setNonce(send.salt, datagram);
    return HEADER_LEN + send.aead.seal(this.#nonce, datagram, HEADER_LEN, payload, length, body);
  }

  /**
   * Authenticates and decrypts `datagram[0, length)` (its view `body` starts at
   * {@linkcode HEADER_LEN}) into `out`. Returns the payload length and sets {@linkcode type},
   * or -1 (counted) for anything that is not a fresh datagram of this session.
   */
  open(datagram: Uint8Array, length: number, body: Uint8Array, out: Uint8Array): number {
    const type = datagram[0]! & 0x7f;
    if (length < OVERHEAD || type < DatagramType.DATA || type > DatagramType.PONG) {
      this.rejects.malformed++;
      return -1;
    }
    const key = this.#receive[datagram[0]! >> 7];
    if (key === undefined) {
      this.rejects.forged++;
      return -1;
    }
    const counter = datagramCounter(datagram);
    if (!key.window.check(counter)) {
      this.rejects.replayed++;
      return -1;
    }
    this.#setNonce(key.salt, datagram);
    const n = key.aead.open(this.#nonce, datagram, HEADER_LEN, body, length - HEADER_LEN, out);
    if (n < 0) {
      this.rejects.forged++;
      return -1;
    }
    if (!key.window.accept(counter)) {
      this.rejects.replayed++;
      return -1;
    }
    this.type = type as DatagramType;
    return n;
  }

  /** nonce = salt || the header's counter bytes; copied by hand to allocate nothing. */
  #setNonce(salt: Uint8Array, datagram: Uint8Array): void {
    const nonce = this.#nonce;
    for (let i = 0; i < SALT_LEN; i++) nonce[i] = salt[i]!;
    for (let i = 0; i < 8; i++) nonce[SALT_LEN + i] = datagram[5 + i]!;
  }

  /** Frees the native contexts. Safe to call twice. */
  close(): void {
    this.#send?.aead.close();
    this.#send = undefined;
    for (const key of this.#receive) key?.aead.close();
    this.#receive[0] = this.#receive[1] = undefined;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * Datagrams sealed into pre-allocated slots, leaving together in one `sendmmsg` (runs to one
 * peer as UDP GSO messages, see `UdpSocket.sendBatch`).
 */
export class DatagramBatch {
  readonly #socket: UdpSocket;
  readonly #out: DatagramSlots;

  constructor(socket: UdpSocket, slots = 64) {
    this.#socket = socket;
    this.#out = new DatagramSlots(slots);
  }

  /**
   * Seals `payload[0, length)` with `crypto` into the batch, for `to`. Sends the batch first
   * when it is full. False (nothing sealed: the caller sends it over TLS) when the key may seal
   * no more, or when the datagram would be longer than a UDP payload can be.
   */
  add(
    crypto: DatagramCrypto,
    type: DatagramType,
    payload: Uint8Array,
    length: number,
    to: SockAddr,
  ): boolean {
    if (length + OVERHEAD > MAX_UDP_PAYLOAD) return false;
    const out = this.#out;
    if (out.count === out.bufs.length) this.flush();
    const i = out.count;
    const size = crypto.seal(type, payload, length, out.bufs[i]!, out.bodies[i]!);
    if (size === 0) return false;
    out.sizes[i] = size;
    out.addrs[i] = to;
    out.count++;
    return true;
  }

  /** Sends what the batch holds. */
  flush(): void {
    const out = this.#out;
    if (out.count === 0) return;
    this.#socket.sendBatch(out.bufs, out.sizes, out.addrs, out.count);
    out.count = 0;
  }
}
