/**
 * The frame codec of the TLS channel: pure functions over bytes (PROTOCOL.md has the format).
 *
 * A frame is a 4-byte header, type (u8) and payload length (u24, big-endian), then the
 * payload. Data frames carry one IP packet each; several frames that are ready together go
 * into one TLS write. The reader parses every complete frame of what one TLS read returned
 * without copying or allocating per frame, beyond the view it hands out.
 *
 * @module
 */

/** Frame types. A type not listed here ends the session. */
export const FrameType = {
  /** One IP packet, or a virtio-net header and a super-packet when offload was agreed. */
  DATA: 0x00,
  /** Server to client, first frame: protocol version and the auth challenge nonce. */
  HELLO: 0x01,
  /** Client to server: certificate and proof of key possession. */
  AUTH: 0x02,
  /** Server to client: address, routes, MTU and keepalive, after successful auth. */
  PUSH: 0x03,
  /** Either way: why the session is refused or ended; the sender closes after it. */
  ERROR: 0x04,
  /** Either way: keepalive request; the payload is echoed in a PONG. */
  PING: 0x05,
  /** Either way: keepalive answer. */
  PONG: 0x06,
  /** Either way: orderly goodbye; the sender closes after it. */
  BYE: 0x07,
  /** Client to server: asks for the UDP data channel, with its key material. */
  UDP_OFFER: 0x08,
  /** Server to client: the UDP data channel's session id, cipher and key material. */
  UDP_ACCEPT: 0x09,
  /** Server to client: no UDP data channel, and why. */
  UDP_REFUSE: 0x0a,
  /** Server to client: new key material for the next epoch. */
  REKEY: 0x0b,
  /** Client to server: its key material for that epoch; it can now receive with it. */
  REKEY_ACK: 0x0c,
  /** Server to client: the server sends with the new epoch; the client may too. */
  REKEY_DONE: 0x0d,
} as const;

/** One of {@linkcode FrameType}. */
export type FrameType = typeof FrameType[keyof typeof FrameType];

/** Bytes in a frame header. */
export const HEADER_LEN = 4;

/** Largest payload: a 64 KiB packet plus a 10-byte virtio-net header. */
export const MAX_PAYLOAD = 65535 + 10;

/** A peer sent something that is not a valid frame; the session that got it ends. */
export class FrameError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "FrameError";
  }
}

/** Writes a frame header for `type` and `length` at `offset` of `buf`. */
export function writeHeader(buf: Uint8Array, offset: number, type: FrameType, length: number) {
  if (length > MAX_PAYLOAD) {
    throw new RangeError(`Cannot encode frame: ${length}-byte payload exceeds ${MAX_PAYLOAD}`);
  }
  buf[offset] = type;
  buf[offset + 1] = length >>> 16;
  buf[offset + 2] = (length >>> 8) & 0xff;
  buf[offset + 3] = length & 0xff;
}

/** One complete frame as encoded bytes (for control frames; data goes through FrameWriter). */
export function encodeFrame(type: FrameType, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const frame = new Uint8Array(HEADER_LEN + payload.length);
  writeHeader(frame, 0, type, payload.length);
  frame.set(payload, HEADER_LEN);
  return frame;
}

function isFrameType(type: number): type is FrameType {
  return type <= FrameType.REKEY_DONE;
}

/**
 * Parses frames out of a byte stream. Read into {@linkcode space}, {@linkcode commit} the
 * count, then call {@linkcode next} until it returns false; each frame's payload is
 * `buffer[payloadStart, payloadEnd)` until the next call.
 */
export class FrameReader {
  /** The receive buffer; a payload is only valid until the next call to `next()`. */
  readonly buffer: Uint8Array<ArrayBuffer>;
  /** Type of the current frame. */
  type: FrameType = FrameType.DATA;
  /** Start of the current frame's payload in `buffer`. */
  payloadStart = 0;
  /** End of the current frame's payload in `buffer`. */
  payloadEnd = 0;
  #start = 0; // first unparsed byte
  #end = 0; // end of received bytes

  /** `capacity` must hold at least one largest frame. */
  constructor(capacity = 4 * (HEADER_LEN + MAX_PAYLOAD)) {
    if (capacity < HEADER_LEN + MAX_PAYLOAD) {
      throw new RangeError(`FrameReader capacity ${capacity} cannot hold a largest frame`);
    }
    this.buffer = new Uint8Array(capacity);
  }

  /** Where the next read should go: the free tail, after moving unparsed bytes to the front. */
  space(): Uint8Array<ArrayBuffer> {
    if (this.#start > 0) {
      this.buffer.copyWithin(0, this.#start, this.#end);
      this.#end -= this.#start;
      this.#start = 0;
    }
    return this.buffer.subarray(this.#end);
  }

  /** Records that `count` bytes were read into the last {@linkcode space}. */
  commit(count: number): void {
    this.#end += count;
  }

  /** The current frame's payload as a view. */
  payload(): Uint8Array<ArrayBuffer> {
    return this.buffer.subarray(this.payloadStart, this.payloadEnd);
  }

  /** Advances to the next complete frame; false when more bytes are needed. */
  next(): boolean {
    const available = this.#end - this.#start;
    if (available < HEADER_LEN) return false;
    const b = this.buffer;
    const at = this.#start;
    const type = b[at]!;
    const length = (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!;
    if (!isFrameType(type)) throw new FrameError(`unknown frame type 0x${type.toString(16)}`);
    if (length > MAX_PAYLOAD) {
      throw new FrameError(`frame of ${length} bytes exceeds the ${MAX_PAYLOAD}-byte limit`);
    }
    if (available < HEADER_LEN + length) return false;
    this.type = type;
    this.payloadStart = at + HEADER_LEN;
    this.payloadEnd = this.payloadStart + length;
    this.#start = this.payloadEnd;
    return true;
  }
}

/**
 * Collects frames into one buffer so that a batch leaves in one TLS write. `add*()` return
 * false when the frame does not fit; flush the {@linkcode bytes} and {@linkcode reset} first.
 */
export class FrameWriter {
  readonly #buffer: Uint8Array<ArrayBuffer>;
  #length = 0;

  /** `capacity` must hold at least one largest frame. */
  constructor(capacity = 256 * 1024) {
    if (capacity < HEADER_LEN + MAX_PAYLOAD) {
      throw new RangeError(`FrameWriter capacity ${capacity} cannot hold a largest frame`);
    }
    this.#buffer = new Uint8Array(capacity);
  }

  /** Bytes collected so far. */
  get length(): number {
    return this.#length;
  }

  /** Appends a frame whose payload is `source[0, length)`; false when it does not fit. */
  add(type: FrameType, source: Uint8Array, length = source.length): boolean {
    if (this.#length + HEADER_LEN + length > this.#buffer.length) return false;
    writeHeader(this.#buffer, this.#length, type, length);
    this.#buffer.set(
      length === source.length ? source : source.subarray(0, length),
      this.#length + HEADER_LEN,
    );
    this.#length += HEADER_LEN + length;
    return true;
  }

  /** The collected frames, as a view valid until the next {@linkcode reset}. */
  bytes(): Uint8Array<ArrayBuffer> {
    return this.#buffer.subarray(0, this.#length);
  }

  /** Empties the writer for the next batch. */
  reset(): void {
    this.#length = 0;
  }
}
