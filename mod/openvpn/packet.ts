/**
 * OpenVPN 2.x packet framing: opcodes, control packets and the TCP length prefix
 * (OPENVPN.md sections 1.1-1.5). Pure functions over bytes.
 *
 * A control packet without wrapping is
 *
 *   byte 0        opcode (high 5 bits) | key id (low 3 bits)
 *   bytes 1-8     the sender's session id
 *   byte 9        ack count n, 0-8
 *   4n bytes      acked message ids, u32 each
 *   8 bytes       the receiver's session id, echoed (only when n > 0)
 *   4 bytes       message id, u32 (absent in P_ACK_V1)
 *   the rest      payload: TLS bytes, or nothing for the resets
 *
 * tls-auth and tls-crypt keep bytes 0-8 in front and wrap everything after them, so the codec
 * is split the same way: {@linkcode encodeControlBody} and {@linkcode decodeControlBody} handle
 * the part from the ack count on (what tls-crypt encrypts), and
 * {@linkcode encodeControlPacket} / {@linkcode decodeControlPacket} add the first 9 bytes for the
 * unwrapped form. Every integer is big-endian.
 *
 * @module
 */

/** Packet opcodes (the high 5 bits of byte 0). 1 and 2 (key method 1) are gone from 2.6. */
export const Opcode = {
  /** Either side: starts a renegotiation on a new key id. */
  SOFT_RESET_V1: 3,
  /** Either side: carries TLS bytes. */
  CONTROL_V1: 4,
  /** Either side: acknowledgements only; has no message id and is never acknowledged. */
  ACK_V1: 5,
  /** Data channel, old format (peers without IV_PROTO bit 1). */
  DATA_V1: 6,
  /** Client: the first packet of a session. */
  HARD_RESET_CLIENT_V2: 7,
  /** Server: the answer to HARD_RESET_CLIENT_V2 or _V3. */
  HARD_RESET_SERVER_V2: 8,
  /** Data channel with a peer id (the 2.6 default). */
  DATA_V2: 9,
  /** Client with tls-crypt-v2: the first packet, with its wrapped client key appended. */
  HARD_RESET_CLIENT_V3: 10,
  /** Client with tls-crypt-v2 early negotiation: a CONTROL_V1 with the wrapped key appended. */
  CONTROL_WKC_V1: 11,
} as const;

/** Bytes in a session id. */
export const SESSION_ID_LEN = 8;
/** Most acks one packet may carry: stock 2.6 drops a packet with more (1.3, 1.6). */
/** Whether `a` and `b` are the same 8-byte session id. */
export function sameSessionId(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== SESSION_ID_LEN || b.length !== SESSION_ID_LEN) return false;
  for (let i = 0; i < SESSION_ID_LEN; i++) if (a[i] !== b[i]) return false;
  return true;
}

export const MAX_ACKS = 8;
/** Bytes before a control body: byte 0 and the sender's session id. */
export const CONTROL_HEADER_LEN = 1 + SESSION_ID_LEN;
/** The largest value of a u32 field (message ids, acks). */
const MAX_U32 = 0xffff_ffff;

/** A packet from the network that is not what its opcode says; the packet is dropped. */
export class OpenVpnPacketError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "OpenVpnPacketError";
  }
}

/** The opcode of a packet's first byte: its high 5 bits. */
export function opcodeOf(byte0: number): number {
  return byte0 >> 3;
}

/** The key id of a packet's first byte: its low 3 bits. */
export function keyIdOf(byte0: number): number {
  return byte0 & 7;
}

/** The first byte of a packet with this opcode and key id. */
export function firstByte(opcode: number, keyId: number): number {
  if (!Number.isInteger(opcode) || opcode < 0 || opcode > 31) {
    throw new RangeError(`Cannot make a first byte: opcode ${opcode} is not 0-31`);
  }
  if (!Number.isInteger(keyId) || keyId < 0 || keyId > 7) {
    throw new RangeError(`Cannot make a first byte: key id ${keyId} is not 0-7`);
  }
  return (opcode << 3) | keyId;
}

/**
 * True for a first byte OpenVPN 2.6 accepts: opcode 3..11, i.e. 0x18-0x5f. Our own datagrams
 * start with 0x01-0x03 or 0x81-0x83 (mod/native/datagram.ts: type | phase << 7), so one UDP
 * port can tell the two protocols apart by this byte alone.
 */
export function isOpenVpnFirstByte(byte0: number): boolean {
  if (!Number.isInteger(byte0) || byte0 < 0 || byte0 > 0xff) return false;
  const opcode = opcodeOf(byte0);
  return opcode >= Opcode.SOFT_RESET_V1 && opcode <= Opcode.CONTROL_WKC_V1;
}

/** True for the opcodes of the control channel (everything but DATA_V1 and DATA_V2). */
export function isControlOpcode(opcode: number): boolean {
  return opcode === Opcode.SOFT_RESET_V1 || opcode === Opcode.CONTROL_V1 ||
    opcode === Opcode.ACK_V1 || opcode === Opcode.HARD_RESET_CLIENT_V2 ||
    opcode === Opcode.HARD_RESET_SERVER_V2 || opcode === Opcode.HARD_RESET_CLIENT_V3 ||
    opcode === Opcode.CONTROL_WKC_V1;
}

/**
 * The part of a control packet after byte 0 and the sender's session id: what tls-crypt
 * encrypts. ACK_V1 has no message id.
 */
export interface ControlBody {
  /** Message ids of the peer's packets acknowledged here, at most {@linkcode MAX_ACKS}. */
  acks: number[];
  /**
   * The receiver's session id, echoed. It travels only with acks: encoding ignores it when
   * `acks` is empty, and decoding gives it only when there are acks.
   */
  peerSessionId?: Uint8Array;
  /** The reliability sequence number; required on every opcode but ACK_V1, absent there. */
  messageId?: number;
  /** TLS bytes (CONTROL_V1, CONTROL_WKC_V1) or usually nothing (the resets). */
  payload: Uint8Array;
}

/** A whole unwrapped control packet, as {@linkcode decodeControlPacket} reads it. */
export interface ControlPacket {
  opcode: number;
  keyId: number;
  /** The sender's session id. */
  sessionId: Uint8Array;
  body: ControlBody;
}

/** Bytes {@linkcode encodeControlBody} writes for `body`. */
export function controlBodyLength(opcode: number, body: ControlBody): number {
  const acks = body.acks.length;
  return 1 + 4 * acks + (acks > 0 ? SESSION_ID_LEN : 0) +
    (opcode === Opcode.ACK_V1 ? 0 : 4) + body.payload.length;
}

/**
 * Writes a control body for `opcode`.
 *
 * @throws {RangeError} for a body the opcode cannot carry: not a control opcode, more than
 *   {@linkcode MAX_ACKS} acks, acks without an 8-byte peer session id, a message id missing
 *   (or present on ACK_V1), or an id that is not a u32.
 *
 * @example
 * ```ts
 * // The client's first packet: no acks, message id 0.
 * encodeControlBody(Opcode.HARD_RESET_CLIENT_V2, { acks: [], messageId: 0, payload: new Uint8Array() });
 * // -> 00 00000000
 * ```
 */
export function encodeControlBody(opcode: number, body: ControlBody): Uint8Array {
  const out = new Uint8Array(controlBodyLength(opcode, body));
  writeControlBody(out, 0, opcode, body);
  return out;
}

/**
 * Reads a control body for `opcode`. `peerSessionId` and `payload` are views into `bytes`.
 *
 * @throws {OpenVpnPacketError} when `opcode` is not a control opcode, the body is truncated
 *   (before the ack count, inside the acks, the peer session id or the message id), or it
 *   carries more than {@linkcode MAX_ACKS} acks.
 */
export function decodeControlBody(opcode: number, bytes: Uint8Array): ControlBody {
  if (!isControlOpcode(opcode)) {
    throw new OpenVpnPacketError(`opcode ${opcode} is not a control opcode`);
  }
  if (bytes.length < 1) throw new OpenVpnPacketError("control packet truncated: no ack count");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const count = bytes[0]!;
  if (count > MAX_ACKS) {
    throw new OpenVpnPacketError(`control packet has ${count} acks, at most ${MAX_ACKS} allowed`);
  }
  let offset = 1;
  if (bytes.length < offset + 4 * count) {
    throw new OpenVpnPacketError(`control packet truncated: ${count} acks do not fit`);
  }
  const acks: number[] = [];
  for (let i = 0; i < count; i++, offset += 4) acks.push(view.getUint32(offset));
  let peerSessionId: Uint8Array | undefined;
  if (count > 0) {
    if (bytes.length < offset + SESSION_ID_LEN) {
      throw new OpenVpnPacketError("control packet truncated: acks without a peer session id");
    }
    peerSessionId = bytes.subarray(offset, offset + SESSION_ID_LEN);
    offset += SESSION_ID_LEN;
  }
  let messageId: number | undefined;
  if (opcode !== Opcode.ACK_V1) {
    if (bytes.length < offset + 4) {
      throw new OpenVpnPacketError("control packet truncated: no message id");
    }
    messageId = view.getUint32(offset);
    offset += 4;
  }
  return {
    acks,
    ...(peerSessionId && { peerSessionId }),
    ...(messageId !== undefined && { messageId }),
    payload: bytes.subarray(offset),
  };
}

/**
 * Writes a whole unwrapped control packet (protection mode "none", 3.1).
 *
 * @throws {RangeError} as {@linkcode encodeControlBody}, and for a key id outside 0-7 or a
 *   session id that is not 8 bytes.
 *
 * @example
 * ```ts
 * const sid = new Uint8Array([0x1c, 0xde, 0x32, 0x75, 0x95, 0xe3, 0x3b, 0x82]);
 * encodeControlPacket(Opcode.HARD_RESET_CLIENT_V2, 0, sid, {
 *   acks: [], messageId: 0, payload: new Uint8Array(),
 * }); // 14 bytes: 38 1cde327595e33b82 00 00000000
 * ```
 */
export function encodeControlPacket(
  opcode: number,
  keyId: number,
  sessionId: Uint8Array,
  body: ControlBody,
): Uint8Array {
  const byte0 = firstByte(opcode, keyId);
  checkSessionId(sessionId, "session id");
  const out = new Uint8Array(CONTROL_HEADER_LEN + controlBodyLength(opcode, body));
  out[0] = byte0;
  out.set(sessionId, 1);
  writeControlBody(out, CONTROL_HEADER_LEN, opcode, body);
  return out;
}

/**
 * Reads a whole unwrapped control packet. Views into `packet` are returned, no copies.
 *
 * @throws {OpenVpnPacketError} for a packet shorter than byte 0 and a session id, and for
 *   everything {@linkcode decodeControlBody} rejects.
 */
export function decodeControlPacket(packet: Uint8Array): ControlPacket {
  if (packet.length < CONTROL_HEADER_LEN) {
    throw new OpenVpnPacketError(
      `control packet truncated: ${packet.length} bytes, no room for a session id`,
    );
  }
  const opcode = opcodeOf(packet[0]!);
  return {
    opcode,
    keyId: keyIdOf(packet[0]!),
    sessionId: packet.subarray(1, CONTROL_HEADER_LEN),
    body: decodeControlBody(opcode, packet.subarray(CONTROL_HEADER_LEN)),
  };
}

/** Writes `body` into `out` at `offset`, after checking what encodeControlBody promises. */
function writeControlBody(
  out: Uint8Array,
  offset: number,
  opcode: number,
  body: ControlBody,
): void {
  if (!isControlOpcode(opcode)) {
    throw new RangeError(`Cannot encode a control body: opcode ${opcode} is not a control opcode`);
  }
  const { acks } = body;
  if (acks.length > MAX_ACKS) {
    throw new RangeError(`Cannot encode ${acks.length} acks: at most ${MAX_ACKS} fit a packet`);
  }
  const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
  out[offset++] = acks.length;
  for (const ack of acks) {
    checkU32(ack, "ack");
    view.setUint32(offset, ack);
    offset += 4;
  }
  if (acks.length > 0) {
    if (body.peerSessionId === undefined) {
      throw new RangeError("Cannot encode acks without the peer session id they echo");
    }
    checkSessionId(body.peerSessionId, "peer session id");
    out.set(body.peerSessionId, offset);
    offset += SESSION_ID_LEN;
  }
  if (opcode === Opcode.ACK_V1) {
    if (body.messageId !== undefined) {
      throw new RangeError("Cannot encode a message id in ACK_V1: it has none");
    }
  } else {
    if (body.messageId === undefined) {
      throw new RangeError(`Cannot encode opcode ${opcode} without a message id`);
    }
    checkU32(body.messageId, "message id");
    view.setUint32(offset, body.messageId);
    offset += 4;
  }
  out.set(body.payload, offset);
}

function checkU32(value: number, what: string): void {
  if (!Number.isInteger(value) || value < 0 || value > MAX_U32) {
    throw new RangeError(`Cannot encode ${what} ${value}: not a u32`);
  }
}

function checkSessionId(id: Uint8Array, what: string): void {
  if (id.length !== SESSION_ID_LEN) {
    throw new RangeError(`Cannot encode a ${what} of ${id.length} bytes: must be 8`);
  }
}

/** The largest packet a 2-byte TCP length prefix can describe. */
export const MAX_TCP_PACKET = 0xffff;

/**
 * Prefixes `packet` with its 2-byte big-endian length, for TCP (1.1).
 *
 * @throws {RangeError} for an empty packet or one over {@linkcode MAX_TCP_PACKET} bytes.
 */
export function frameTcp(packet: Uint8Array): Uint8Array {
  if (packet.length === 0 || packet.length > MAX_TCP_PACKET) {
    throw new RangeError(`Cannot frame a ${packet.length}-byte packet for TCP: must be 1-65535`);
  }
  const out = new Uint8Array(2 + packet.length);
  out[0] = packet.length >> 8;
  out[1] = packet.length & 0xff;
  out.set(packet, 2);
  return out;
}

/**
 * Cuts a TCP byte stream into packets: every packet has a 2-byte big-endian length before it
 * (1.1). Bounded: it holds at most one partial packet, in two buffers of `maxPacket` bytes
 * allocated up front (two, so that a packet completed from one stays intact while the next
 * partial packet fills the other).
 *
 * A length of 0 or over `maxPacket` throws {@linkcode OpenVpnPacketError}; the stream cannot
 * be resynchronised, so the caller drops the connection, and every later push throws too.
 *
 * @example
 * ```ts
 * const framer = new TcpFramer(2048);
 * framer.push(new Uint8Array([0x00, 0x02, 0xaa])); // []: half a packet
 * framer.push(new Uint8Array([0xbb, 0x00])); // [aa bb]; one byte of the next length kept
 * ```
 */
export class TcpFramer {
  readonly #max: number;
  readonly #buffers: [Uint8Array, Uint8Array];
  /** Which of #buffers holds the partial packet. */
  #current = 0;
  /** Bytes of the partial packet held. */
  #held = 0;
  /** The length of the packet being assembled, or -1 while its prefix is incomplete. */
  #need = -1;
  /** The first byte of a length prefix split across two pushes, or -1. */
  #lengthHigh = -1;
  #failed: OpenVpnPacketError | undefined;

  /** `maxPacket`: the longest packet accepted, 1-65535 (default 65535). */
  constructor(maxPacket: number = MAX_TCP_PACKET) {
    if (!Number.isInteger(maxPacket) || maxPacket < 1 || maxPacket > MAX_TCP_PACKET) {
      throw new RangeError(
        `Cannot make a TcpFramer for ${maxPacket}-byte packets: must be 1-65535`,
      );
    }
    this.#max = maxPacket;
    this.#buffers = [new Uint8Array(maxPacket), new Uint8Array(maxPacket)];
  }

  /**
   * Feeds stream bytes; returns the packets they complete, in order. Packets wholly inside
   * `bytes` are views into it, a packet that began in an earlier push is a view into the
   * framer's buffer: either is valid only until the next push (and, for the first kind, until
   * the caller reuses `bytes`).
   *
   * @throws {OpenVpnPacketError} for a length prefix of 0 or over `maxPacket`.
   */
  push(bytes: Uint8Array): Uint8Array[] {
    if (this.#failed) throw this.#failed;
    const packets: Uint8Array[] = [];
    let offset = 0;
    while (offset < bytes.length) {
      if (this.#need < 0) {
        if (this.#lengthHigh >= 0) {
          this.#setNeed((this.#lengthHigh << 8) | bytes[offset++]!);
          this.#lengthHigh = -1;
        } else if (offset + 1 < bytes.length) {
          this.#setNeed((bytes[offset]! << 8) | bytes[offset + 1]!);
          offset += 2;
        } else {
          this.#lengthHigh = bytes[offset++]!;
          break;
        }
      }
      const missing = this.#need - this.#held;
      const available = bytes.length - offset;
      const buffer = this.#buffers[this.#current]!;
      if (available < missing) {
        buffer.set(bytes.subarray(offset), this.#held);
        this.#held += available;
        break;
      }
      if (this.#held === 0) {
        packets.push(bytes.subarray(offset, offset + missing));
      } else {
        buffer.set(bytes.subarray(offset, offset + missing), this.#held);
        packets.push(buffer.subarray(0, this.#need));
        // The next partial packet goes to the other buffer, so this view stays intact.
        this.#current ^= 1;
        this.#held = 0;
      }
      offset += missing;
      this.#need = -1;
    }
    return packets;
  }

  #setNeed(length: number): void {
    if (length === 0 || length > this.#max) {
      this.#failed = new OpenVpnPacketError(
        `TCP packet length ${length} is outside 1-${this.#max}`,
      );
      throw this.#failed;
    }
    this.#need = length;
  }
}
