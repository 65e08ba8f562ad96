/**
 * The OpenVPN 2.6 data channel (OPENVPN.md 8.1-8.4): P_DATA_V2 packets sealed with AES-256-GCM
 * or CHACHA20-POLY1305, one {@linkcode DataKey} per key id of a session.
 *
 * A packet is an 8-byte header, the 16-byte tag, then the ciphertext (as long as the plaintext):
 *
 *   byte 0      0x48 | key id (opcode P_DATA_V2 = 9, in the top five bits)
 *   bytes 1-3   peer id, u24 big-endian (the one the server assigned, in both directions)
 *   bytes 4-7   packet id, u32 big-endian: 1, 2, 3, ... per key and direction
 *   bytes 8-23  AEAD tag
 *   bytes 24-   ciphertext
 *
 * Seal: take the next packet id, write the header, nonce = packet id || the sender's 8-byte
 * implicit IV (6.1), AEAD over the plaintext with the header as AAD, the tag into bytes 8-23.
 * Open: check the header and that the packet id is fresh, the same nonce with the peer's
 * implicit IV, authenticate, and only then record the packet id, so that a forged packet cannot
 * move the replay window.
 *
 * The plaintext is an IP packet, or one of two magics the receiver consumes itself (8.2): the
 * keepalive ping ({@linkcode isPing}) and OCC messages ({@linkcode occOpcode}), of which a 2.6
 * peer sends only EXIT. Nothing here allocates per packet: callers pass precomputed views of
 * their buffers, and each key keeps one scratch nonce per direction.
 *
 * @module
 */

import { Aead, type CipherName, KEY_LEN, NONCE_LEN, TAG_LEN } from "../../ffi/crypto.ts";
import { ReplayWindow } from "../core/replay.ts";

/** The data-channel ciphers we offer, by their OpenVPN names. */
export type DataCipher = "AES-256-GCM" | "CHACHA20-POLY1305";

/** Server preference order. AES-128-GCM is not offered (we only have 256-bit ciphers). */
export const DATA_CIPHERS: readonly DataCipher[] = ["AES-256-GCM", "CHACHA20-POLY1305"];

/** P_DATA_V2 header: byte 0, peer id, packet id; the AEAD's associated data. */
export const DATA_V2_HEADER = 8;
/** Bytes a P_DATA_V2 packet adds to its plaintext: the header and the tag. */
export const DATA_V2_OVERHEAD = DATA_V2_HEADER + TAG_LEN;
/** The first packet id a key never uses: stock peers renegotiate when they reach it (8.3). */
export const PACKET_ID_LIMIT = 0xff000000;
/** The peer id meaning "none assigned" (8.1). */
export const NO_PEER_ID = 0xffffff;

/** The keepalive ping, exactly this plaintext (8.2, `src/openvpn/ping.c`). */
export const PING_PAYLOAD: Uint8Array = hex("2a187bf3641eb4cb07ed2d0a981fc748");
/** The magic that starts an OCC message; one opcode byte follows (8.2, `src/openvpn/occ.h`). */
export const OCC_MAGIC: Uint8Array = hex("287f346bd4ef7a812d56b8d3afc5459c");
/** The OCC opcode of an explicit-exit notification. */
export const OCC_EXIT = 6;

/** Opcode P_DATA_V2 (9) in the top five bits of byte 0; the key id fills the low three. */
const DATA_V2_BYTE0 = 9 << 3;
/** Implicit IV: the 12-byte nonce less the 4-byte packet id. */
const IMPLICIT_IV_LEN = NONCE_LEN - 4;
const AEAD_NAMES: Record<DataCipher, CipherName> = {
  "AES-256-GCM": "aes-256-gcm",
  "CHACHA20-POLY1305": "chacha20-poly1305",
};

function hex(text: string): Uint8Array {
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/**
 * Picks the first of `ours` that the client lists in IV_CIPHERS (compared case-insensitively,
 * since clients spell them as OpenSSL does, e.g. "ChaCha20-Poly1305"). A client without
 * IV_CIPHERS but with IV_NCP >= 2 supports AES-256-GCM (2.4 behaviour); otherwise there is no
 * shared cipher and the result is `undefined` (the server then answers AUTH_FAILED, 5.5).
 *
 * @example
 * ```ts
 * negotiateCipher(DATA_CIPHERS, ["AES-128-GCM", "chacha20-poly1305"], 2); // "CHACHA20-POLY1305"
 * negotiateCipher(DATA_CIPHERS, [], 2); // "AES-256-GCM"
 * negotiateCipher(DATA_CIPHERS, [], undefined); // undefined
 * ```
 */
export function negotiateCipher(
  ours: readonly DataCipher[],
  clientCiphers: readonly string[],
  ncp: number | undefined,
): DataCipher | undefined {
  if (clientCiphers.length > 0) {
    const theirs = new Set(clientCiphers.map((name) => name.trim().toUpperCase()));
    return ours.find((cipher) => theirs.has(cipher));
  }
  if (ncp !== undefined && ncp >= 2 && ours.includes("AES-256-GCM")) return "AES-256-GCM";
  return undefined;
}

/** Whether `buf` holds `magic` from `start` on. */
function startsWith(buf: Uint8Array, start: number, magic: Uint8Array): boolean {
  if (!(start >= 0 && start + magic.length <= buf.length)) return false;
  for (let i = 0; i < magic.length; i++) {
    if (buf[start + i] !== magic[i]) return false;
  }
  return true;
}

/**
 * Whether the plaintext `buf[start, start + length)` is a keepalive ping, which the receiver
 * drops after decryption (it still counts as traffic). Never throws.
 */
export function isPing(buf: Uint8Array, start: number, length: number): boolean {
  return length === PING_PAYLOAD.length && startsWith(buf, start, PING_PAYLOAD);
}

/**
 * The OCC opcode (e.g. {@linkcode OCC_EXIT}) if the plaintext `buf[start, start + length)` is
 * an OCC message, else -1. Never throws.
 */
export function occOpcode(buf: Uint8Array, start: number, length: number): number {
  const magic = OCC_MAGIC.length;
  if (!(length > magic && start + length <= buf.length)) return -1;
  return startsWith(buf, start, OCC_MAGIC) ? buf[start + magic]! : -1;
}

/** The peer id (u24) of a P_DATA_V2 packet, read without decrypting; -1 when too short. */
export function dataPeerId(packet: Uint8Array): number {
  if (packet.length < 4) return -1;
  return (packet[1]! << 16) | (packet[2]! << 8) | packet[3]!;
}

/** The key id (0-7) of a data packet, read without decrypting; -1 for an empty one. */
export function dataKeyId(packet: Uint8Array): number {
  return packet.length < 1 ? -1 : packet[0]! & 7;
}

/** One direction's data key material (6.1). */
export interface DirectionKeys {
  /** Cipher key, 32 bytes. */
  key: Uint8Array;
  /** The sender's implicit IV, 8 bytes: the last two thirds of every nonce. */
  implicitIv: Uint8Array;
}

/** Why packets were refused; the counters only grow. */
export interface DataStats {
  /** Shorter than header and tag, not P_DATA_V2 of this key id, or too big for `out`. */
  malformed: number;
  /** Failed authentication: tampered, or sealed with a key this side does not have. */
  forged: number;
  /** Packet id 0, already seen, or too far behind the newest. */
  replayed: number;
}

/** A 12-byte nonce whose last 8 bytes are `implicitIv`, off the V8 heap like Aead's scratch. */
function nonceWith(implicitIv: Uint8Array): Uint8Array {
  if (implicitIv.length !== IMPLICIT_IV_LEN) {
    throw new RangeError(
      `Cannot use implicit IV: it must be ${IMPLICIT_IV_LEN} bytes, got ${implicitIv.length}`,
    );
  }
  const nonce = new Uint8Array(new ArrayBuffer(NONCE_LEN));
  nonce.set(implicitIv, 4);
  return nonce;
}

/** Throws unless `view` starts `offset` bytes into `packet`: views precomputed wrongly. */
function checkView(
  call: string,
  name: string,
  packet: Uint8Array,
  view: Uint8Array,
  offset: number,
): void {
  if (view.buffer !== packet.buffer || view.byteOffset !== packet.byteOffset + offset) {
    throw new RangeError(`Cannot ${call}: ${name} must be the packet's view from byte ${offset}`);
  }
}

/** Copies the packet id (bytes 4-7, as on the wire) to the front of `nonce`. */
function setPacketId(nonce: Uint8Array, packet: Uint8Array): void {
  for (let i = 0; i < 4; i++) nonce[i] = packet[4 + i]!;
}

/**
 * One data key (one key id) of one session, both directions: a sealing and an opening AEAD
 * context, the send packet id and the receive replay window.
 *
 * Errors: bad network input returns -1 from {@linkcode DataKey.open} and is counted in the
 * {@linkcode DataStats}; only misuse by the caller (wrong views, a closed key) throws.
 *
 * @example
 * ```ts
 * const stats: DataStats = { malformed: 0, forged: 0, replayed: 0 };
 * const c2s = { key: new Uint8Array(32), implicitIv: new Uint8Array(8) };
 * const s2c = { key: new Uint8Array(32).fill(1), implicitIv: new Uint8Array(8).fill(1) };
 * using server = new DataKey("AES-256-GCM", s2c, c2s, 0, 5, stats);
 * using client = new DataKey("AES-256-GCM", c2s, s2c, 0, 5, stats);
 * const packet = new Uint8Array(1500 + DATA_V2_OVERHEAD);
 * const tag = packet.subarray(8, 24), body = packet.subarray(24);
 * const size = client.seal(PING_PAYLOAD, 16, packet, tag, body); // 40
 * const plain = new Uint8Array(1500);
 * const n = server.open(packet, size, tag, body, plain); // 16; isPing(plain, 0, n) is true
 * ```
 */
export class DataKey implements Disposable {
  /** The key id (0-7) in byte 0 of every packet of this key. */
  readonly keyId: number;
  /** The peer id this side writes into the packets it seals. */
  readonly peerId: number;
  /** The cipher both directions use. */
  readonly cipher: DataCipher;

  readonly #sealer: Aead;
  readonly #opener: Aead;
  readonly #sendNonce: Uint8Array;
  readonly #receiveNonce: Uint8Array;
  readonly #window = new ReplayWindow();
  readonly #stats: DataStats;
  readonly #byte0: number;
  /** Packets sealed, which is also the last packet id used. */
  #sent = 0;

  /**
   * A key sealing with `send` and opening with `receive` (the server sends with the key
   * block's server-to-client half, 6.1). Refusals are counted in `stats`, which a session may
   * share between its keys. Throws a `RangeError` for a bad key, IV, key id or peer id.
   */
  constructor(
    cipher: DataCipher,
    send: DirectionKeys,
    receive: DirectionKeys,
    keyId: number,
    peerId: number,
    stats: DataStats,
  ) {
    if (!(cipher in AEAD_NAMES)) {
      throw new TypeError(`Cannot create data key: unknown cipher "${cipher}"`);
    }
    if (!(Number.isInteger(keyId) && keyId >= 0 && keyId <= 7)) {
      throw new RangeError(`Cannot create data key: key id ${keyId} is not 0-7`);
    }
    if (!(Number.isInteger(peerId) && peerId >= 0 && peerId <= NO_PEER_ID)) {
      throw new RangeError(`Cannot create data key: peer id ${peerId} is not a u24`);
    }
    for (const { key } of [send, receive]) {
      if (key.length !== KEY_LEN) {
        throw new RangeError(
          `Cannot create data key: ${cipher} keys are ${KEY_LEN} bytes, got ${key.length}`,
        );
      }
    }
    this.cipher = cipher;
    this.keyId = keyId;
    this.peerId = peerId;
    this.#stats = stats;
    this.#byte0 = DATA_V2_BYTE0 | keyId;
    this.#sendNonce = nonceWith(send.implicitIv);
    this.#receiveNonce = nonceWith(receive.implicitIv);
    this.#sealer = Aead.create(AEAD_NAMES[cipher], send.key, true);
    try {
      this.#opener = Aead.create(AEAD_NAMES[cipher], receive.key, false);
    } catch (error) {
      this.#sealer.close();
      throw error;
    }
  }

  /** Packets sealed with this key, which is also the last packet id used. */
  get sent(): number {
    return this.#sent;
  }

  /**
   * Counts packet ids up to `sent` as used, as if those packets had been sealed: lets tests
   * reach {@linkcode PACKET_ID_LIMIT} without sealing 4 billion packets. Never backwards, so
   * no nonce can repeat.
   *
   * @throws {RangeError} when `sent` is below {@linkcode DataKey.sent} or above the limit
   */
  advanceSent(sent: number): void {
    if (!(Number.isInteger(sent) && sent >= this.#sent && sent < PACKET_ID_LIMIT)) {
      throw new RangeError(
        `Cannot move the packet id from ${this.#sent} to ${sent}: it moves only forward, ` +
          `below ${PACKET_ID_LIMIT}`,
      );
    }
    this.#sent = sent;
  }

  /**
   * Seals `plain[0, length)` as one P_DATA_V2 packet into `out` (header, tag, ciphertext).
   * `outTag` = `out.subarray(8, 24)` and `outBody` = `out.subarray(24)`, precomputed by the
   * caller; `plain` may be `outBody` itself (in place). Returns the packet size, or 0 when this
   * key's packet ids are used up (the next would be {@linkcode PACKET_ID_LIMIT}): the caller
   * renegotiates. Packet ids start at 1.
   *
   * @throws {RangeError} when `out` is too small or the views are not the ones above
   */
  seal(
    plain: Uint8Array,
    length: number,
    out: Uint8Array,
    outTag: Uint8Array,
    outBody: Uint8Array,
  ): number {
    checkView("seal", "outTag", out, outTag, DATA_V2_HEADER);
    checkView("seal", "outBody", out, outBody, DATA_V2_OVERHEAD);
    if (out.length < DATA_V2_OVERHEAD + length) {
      throw new RangeError(
        `Cannot seal ${length} bytes: out holds ${out.length}, needs ${DATA_V2_OVERHEAD + length}`,
      );
    }
    if (this.#sent + 1 >= PACKET_ID_LIMIT) return 0;
    const id = ++this.#sent;
    const peerId = this.peerId;
    out[0] = this.#byte0;
    out[1] = peerId >>> 16;
    out[2] = peerId >>> 8;
    out[3] = peerId;
    out[4] = id >>> 24;
    out[5] = id >>> 16;
    out[6] = id >>> 8;
    out[7] = id;
    setPacketId(this.#sendNonce, out);
    this.#sealer.sealDetached(this.#sendNonce, out, DATA_V2_HEADER, plain, length, outBody, outTag);
    return DATA_V2_OVERHEAD + length;
  }

  /**
   * Opens the P_DATA_V2 packet `packet[0, size)` into `out`; `tag` = `packet.subarray(8, 24)`
   * and `body` = `packet.subarray(24)`, precomputed by the caller; `out` may be `body` itself
   * (in place) or a separate buffer. Returns the plaintext length, or -1 (counted in the
   * stats) when the packet is malformed, fails authentication or is a replay. Packet id 0 is
   * always refused. On -1, `out` may hold unauthenticated bytes: drop them.
   *
   * @throws {RangeError} when `size` is outside `packet` or the views are not the ones above
   */
  open(
    packet: Uint8Array,
    size: number,
    tag: Uint8Array,
    body: Uint8Array,
    out: Uint8Array,
  ): number {
    checkView("open", "tag", packet, tag, DATA_V2_HEADER);
    checkView("open", "body", packet, body, DATA_V2_OVERHEAD);
    if (!(size >= 0 && size <= packet.length)) {
      throw new RangeError(`Cannot open: size ${size} is outside the packet (${packet.length})`);
    }
    const stats = this.#stats;
    const length = size - DATA_V2_OVERHEAD;
    if (length < 0 || packet[0] !== this.#byte0 || length > out.length) {
      stats.malformed++;
      return -1;
    }
    const id = ((packet[4]! << 24) | (packet[5]! << 16) | (packet[6]! << 8) | packet[7]!) >>> 0;
    if (id === 0 || !this.#window.check(id)) {
      stats.replayed++;
      return -1;
    }
    setPacketId(this.#receiveNonce, packet);
    const n = this.#opener.openDetached(
      this.#receiveNonce,
      packet,
      DATA_V2_HEADER,
      body,
      length,
      tag,
      out,
    );
    if (n < 0) {
      stats.forged++;
      return -1;
    }
    // Cannot fail: check() passed within this same synchronous call.
    this.#window.accept(id);
    return n;
  }

  /** Frees both AEAD contexts (which wipes the keys); safe to call twice. */
  close(): void {
    this.#sealer.close();
    this.#opener.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
