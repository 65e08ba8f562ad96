/**
 * The OpenVPN static key file and tls-crypt, the control-channel wrapping that encrypts and
 * authenticates every control packet with a pre-shared key (OPENVPN.md sections 2, 3.3, TV4).
 *
 * A wrapped packet is
 *
 *   byte 0        opcode | key id                     authenticated
 *   bytes 1-8     the sender's session id             authenticated
 *   bytes 9-12    replay packet id, u32               authenticated
 *   bytes 13-16   replay time, u32                    authenticated
 *   bytes 17-48   tag = HMAC-SHA256(Ka, bytes 0-16 || plaintext)
 *   bytes 49-     AES-256-CTR(Ke, counter block = tag[0..15], plaintext)
 *
 * where the plaintext is a control body (packet.ts). The tag doubles as the IV (SIV-like), so a
 * receiver must decrypt before it can check the tag, and compares tags in constant time.
 * Keys have fixed directions: the server sends with key-file bytes 0-31 (Ke) and 64-95 (Ka),
 * the client with 128-159 and 192-223.
 *
 * This is the control channel, not the data path: `node:crypto` is fast enough here.
 *
 * @module
 */

import {
  createCipheriv,
  createDecipheriv,
  createHmac,
  createSecretKey,
  type KeyObject,
  randomBytes,
  timingSafeEqual,
} from "node:crypto";
import { SESSION_ID_LEN } from "./packet.ts";

/** Bytes in a static key file: two 128-byte keys, each a 64-byte cipher and a 64-byte HMAC part. */
export const STATIC_KEY_LEN = 256;
/** Bytes a wrapped packet has before its ciphertext. */
export const TLS_CRYPT_HEADER_LEN = 1 + SESSION_ID_LEN + 4 + 4 + 32;

const HEADER_AD_LEN = 1 + SESSION_ID_LEN + 4 + 4;
const TAG_LEN = 32;
const IV_LEN = 16;
const CIPHER_KEY_LEN = 32;
const BEGIN = "-----BEGIN OpenVPN Static key V1-----";
const END = "-----END OpenVPN Static key V1-----";
const HEX_PER_LINE = 32;

/** A static key file that cannot be used; the message says what is wrong with it. */
export class StaticKeyError extends Error {
  constructor(message: string) {
    super(`tls-crypt key: ${message}`);
    this.name = "StaticKeyError";
  }
}

/**
 * Reads an "OpenVPN Static key V1" file as `openvpn --genkey secret` writes it: comment lines
 * (`#` or `;`) and blank lines around a BEGIN/END block of hex, 256 bytes in all. Like
 * OpenVPN, it does not insist on 16 lines of 32 digits, only on hex and whitespace.
 *
 * @throws {StaticKeyError} naming what is wrong: no BEGIN or END line, other text outside
 *   them, a non-hex character, an odd number of digits, or not exactly 256 bytes.
 *
 * @example
 * ```ts
 * const key = parseStaticKey(await Deno.readTextFile("tc.key"));
 * ```
 */
export function parseStaticKey(text: string): Uint8Array {
  const lines = text.split(/\r?\n/);
  const begin = lines.findIndex((line) => line.trim() === BEGIN);
  if (begin < 0) throw new StaticKeyError(`no "${BEGIN}" line`);
  const end = lines.findIndex((line, i) => i > begin && line.trim() === END);
  if (end < 0) throw new StaticKeyError(`no "${END}" line after the BEGIN line`);
  for (const [i, line] of lines.entries()) {
    if (i >= begin && i <= end) continue;
    const trimmed = line.trim();
    if (trimmed !== "" && !trimmed.startsWith("#") && !trimmed.startsWith(";")) {
      throw new StaticKeyError(`line ${i + 1} is outside the key block and not a comment`);
    }
  }
  const hex = lines.slice(begin + 1, end).join("").replace(/\s+/g, "");
  const bad = hex.search(/[^0-9a-fA-F]/);
  if (bad >= 0) {
    throw new StaticKeyError(`"${hex[bad]}" is not a hex digit`);
  }
  if (hex.length % 2 !== 0) {
    throw new StaticKeyError(`an odd number of hex digits (${hex.length})`);
  }
  if (hex.length !== 2 * STATIC_KEY_LEN) {
    throw new StaticKeyError(
      `expected ${STATIC_KEY_LEN} bytes of hex, got ${hex.length / 2}`,
    );
  }
  return Uint8Array.fromHex(hex);
}

/**
 * Writes `key` in the shape `openvpn --genkey secret` writes: a "2048 bit OpenVPN static key"
 * comment, then 16 lines of 32 lowercase hex digits between the BEGIN and END lines.
 *
 * @throws {RangeError} for a key that is not 256 bytes.
 */
export function formatStaticKey(key: Uint8Array): string {
  checkKeyLength(key);
  const hex = key.toHex();
  const lines = ["#", "# 2048 bit OpenVPN static key", "#", BEGIN];
  for (let i = 0; i < hex.length; i += HEX_PER_LINE) lines.push(hex.slice(i, i + HEX_PER_LINE));
  lines.push(END, "");
  return lines.join("\n");
}

/** A fresh static key from the system's CSPRNG. */
export function generateStaticKey(): Uint8Array {
  return new Uint8Array(randomBytes(STATIC_KEY_LEN));
}

/** The cleartext part of a wrapped packet: first byte, session id, and replay fields (3.2/3.3). */
export interface WrapHeader {
  /** Opcode and key id (packet.ts). */
  byte0: number;
  /** The sender's 8-byte session id. */
  sessionId: Uint8Array;
  /** Replay packet id, u32: 1 for the first packet of a session, +1 per transmission. */
  packetId: number;
  /** Replay time, u32: the sender's Unix time at session start, constant per session. */
  time: number;
}

/** One direction's keys. */
interface DirectionKeys {
  cipher: KeyObject;
  hmac: KeyObject;
}

/**
 * tls-crypt with one static key, for one side of a session.
 *
 * @example
 * ```ts
 * const key = generateStaticKey();
 * const client = new TlsCrypt(key, "client");
 * const server = new TlsCrypt(key, "server");
 * const header = { byte0: 0x38, sessionId: new Uint8Array(8).fill(1), packetId: 1, time: 0 };
 * const packet = client.wrap(header, new Uint8Array([0, 0, 0, 0, 0]));
 * server.unwrap(packet)?.plain; // 00 00000000
 * ```
 */
export class TlsCrypt {
  readonly #send: DirectionKeys;
  readonly #receive: DirectionKeys;

  /**
   * `role` decides directions: the server sends with key bytes 0-31 (cipher) / 64-95 (HMAC)
   * and receives with 128-159 / 192-223; the client the reverse.
   *
   * @throws {RangeError} for a key that is not 256 bytes.
   */
  constructor(key: Uint8Array, role: "server" | "client") {
    checkKeyLength(key);
    const serverToClient = directionKeys(key, 0);
    const clientToServer = directionKeys(key, 128);
    this.#send = role === "server" ? serverToClient : clientToServer;
    this.#receive = role === "server" ? clientToServer : serverToClient;
  }

  /**
   * The whole wrapped packet (UDP form; TCP puts the 2-byte length before it).
   *
   * @throws {RangeError} for a header field out of range (byte0 not a byte, a session id not
   *   8 bytes, a packet id or time not a u32).
   */
  wrap(header: WrapHeader, plain: Uint8Array): Uint8Array {
    checkHeader(header);
    const packet = new Uint8Array(TLS_CRYPT_HEADER_LEN + plain.length);
    const view = new DataView(packet.buffer);
    packet[0] = header.byte0;
    packet.set(header.sessionId, 1);
    view.setUint32(1 + SESSION_ID_LEN, header.packetId);
    view.setUint32(1 + SESSION_ID_LEN + 4, header.time);
    const tag = tagOf(this.#send.hmac, packet.subarray(0, HEADER_AD_LEN), plain);
    packet.set(tag, HEADER_AD_LEN);
    const cipher = createCipheriv("aes-256-ctr", this.#send.cipher, tag.subarray(0, IV_LEN));
    packet.set(cipher.update(plain), TLS_CRYPT_HEADER_LEN);
    cipher.final();
    return packet;
  }

  /**
   * Decrypts `packet` and checks its tag in constant time. Returns undefined when the tag
   * does not match or the packet is too short to hold one (< 49 bytes); never throws for bad
   * input. Replay is the caller's, per session: it gets `packetId` and `time` to check.
   * `header.sessionId` and `plain` are copies.
   */
  unwrap(packet: Uint8Array): { header: WrapHeader; plain: Uint8Array } | undefined {
    if (packet.length < TLS_CRYPT_HEADER_LEN) return undefined;
    const tag = packet.subarray(HEADER_AD_LEN, TLS_CRYPT_HEADER_LEN);
    const decipher = createDecipheriv(
      "aes-256-ctr",
      this.#receive.cipher,
      tag.subarray(0, IV_LEN),
    );
    const plain = new Uint8Array(packet.length - TLS_CRYPT_HEADER_LEN);
    plain.set(decipher.update(packet.subarray(TLS_CRYPT_HEADER_LEN)));
    decipher.final();
    const expected = tagOf(this.#receive.hmac, packet.subarray(0, HEADER_AD_LEN), plain);
    if (!timingSafeEqual(expected, tag)) return undefined;
    const view = new DataView(packet.buffer, packet.byteOffset, packet.byteLength);
    return {
      header: {
        byte0: packet[0]!,
        sessionId: packet.slice(1, 1 + SESSION_ID_LEN),
        packetId: view.getUint32(1 + SESSION_ID_LEN),
        time: view.getUint32(1 + SESSION_ID_LEN + 4),
      },
      plain,
    };
  }
}

/** The keys of one direction: its cipher part starts at `offset`, its HMAC part 64 bytes on. */
function directionKeys(key: Uint8Array, offset: number): DirectionKeys {
  return {
    cipher: createSecretKey(key.slice(offset, offset + CIPHER_KEY_LEN)),
    hmac: createSecretKey(key.slice(offset + 64, offset + 64 + TAG_LEN)),
  };
}

function tagOf(hmac: KeyObject, header: Uint8Array, plain: Uint8Array): Uint8Array {
  return new Uint8Array(createHmac("sha256", hmac).update(header).update(plain).digest());
}

function checkKeyLength(key: Uint8Array): void {
  if (key.length !== STATIC_KEY_LEN) {
    throw new RangeError(`A static key has ${STATIC_KEY_LEN} bytes, not ${key.length}`);
  }
}

function checkHeader(header: WrapHeader): void {
  const { byte0, sessionId, packetId, time } = header;
  if (!Number.isInteger(byte0) || byte0 < 0 || byte0 > 0xff) {
    throw new RangeError(`Cannot wrap: byte0 ${byte0} is not a byte`);
  }
  if (sessionId.length !== SESSION_ID_LEN) {
    throw new RangeError(`Cannot wrap: a session id of ${sessionId.length} bytes, not 8`);
  }
  for (const [name, value] of [["packet id", packetId], ["time", time]] as const) {
    if (!Number.isInteger(value) || value < 0 || value > 0xffff_ffff) {
      throw new RangeError(`Cannot wrap: ${name} ${value} is not a u32`);
    }
  }
}
