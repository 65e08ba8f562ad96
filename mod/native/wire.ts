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
 * The smallest frame buffer: where a reader starts and what its {@linkcode FrameReader.trim}
 * takes it back to, and a writer's first size once it has a frame to hold.
 */
export const MIN_FRAME_BUFFER = 4 * 1024;

/** An empty writer's buffer: an idle session holds no send buffer at all. */
const NO_BUFFER = new Uint8Array(0);

/**
 * Parses frames out of a byte stream. Read into {@linkcode space}, {@linkcode commit} the
 * count, then call {@linkcode next} until it returns false; each frame's payload is
 * `buffer[payloadStart, payloadEnd)` until the next call.
 *
 * The buffer starts small (an idle session holds 4 KiB, not the 256 KiB of a busy one) and
 * doubles, up to its capacity, when a read fills all it was offered or a frame needs more; a
 * {@linkcode trim} after a quiet period takes it back.
 */
export class FrameReader {
  /** The receive buffer, replaced when it grows or shrinks; views are valid until `space()`. */
  buffer: Uint8Array<ArrayBuffer>;
  /** Type of the current frame. */
  type: FrameType = FrameType.DATA;
  /** Start of the current frame's payload in `buffer`. */
  payloadStart = 0;
  /** End of the current frame's payload in `buffer`. */
  payloadEnd = 0;
  readonly #capacity: number;
  #start = 0; // first unparsed byte
  #end = 0; // end of received bytes
  /** The length of the last {@linkcode space}, and whether its read filled it. */
  #offered = 0;
  #filled = false;
  /** The largest read since the last {@linkcode trim}. */
  #peak = 0;
  #shrink = false;

  /** `capacity` must hold at least one largest frame. */
  constructor(capacity = 4 * (HEADER_LEN + MAX_PAYLOAD)) {
    if (capacity < HEADER_LEN + MAX_PAYLOAD) {
      throw new RangeError(`FrameReader capacity ${capacity} cannot hold a largest frame`);
    }
    this.#capacity = capacity;
    this.buffer = new Uint8Array(Math.min(capacity, MIN_FRAME_BUFFER));
  }

  /** Where the next read should go: the free tail, after moving unparsed bytes to the front. */
  space(): Uint8Array<ArrayBuffer> {
    if (this.#start > 0) {
      this.buffer.copyWithin(0, this.#start, this.#end);
      this.#end -= this.#start;
      this.#start = 0;
    }
    const size = this.buffer.length;
    if (this.#shrink && this.#end === 0 && size > MIN_FRAME_BUFFER) {
      this.buffer = new Uint8Array(MIN_FRAME_BUFFER);
    } else if (size < this.#capacity) {
      const frame = this.#end >= HEADER_LEN
        ? HEADER_LEN + ((this.buffer[1]! << 16) | (this.buffer[2]! << 8) | this.buffer[3]!)
        : 0;
      const wanted = Math.max(this.#filled ? size * 2 : size, frame <= this.#capacity ? frame : 0);
      if (wanted > size) {
        let grown = size;
        while (grown < wanted) grown *= 2;
        const buffer = new Uint8Array(Math.min(this.#capacity, grown));
        buffer.set(this.buffer.subarray(0, this.#end));
        this.buffer = buffer;
      }
    }
    this.#shrink = false;
    this.#offered = this.buffer.length - this.#end;
    return this.buffer.subarray(this.#end);
  }

  /**
   * Takes the buffer back to its first size at the next {@linkcode space} that finds it empty,
   * unless a read since the last call was larger than that: called once per keepalive interval.
   */
  trim(): void {
    this.#shrink = this.#peak < MIN_FRAME_BUFFER;
    this.#peak = 0;
  }

  /** Records that `count` bytes were read into the last {@linkcode space}. */
  commit(count: number): void {
    this.#end += count;
    this.#filled = count === this.#offered;
    if (count > this.#peak) this.#peak = count;
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
 * The buffer is made for the first frame (4 KiB) and doubles up to its capacity as batches
 * need it; each {@linkcode trim} sizes an empty one for what the last interval needed, none
 * at all for an idle session.
 */
export class FrameWriter {
  #buffer: Uint8Array<ArrayBuffer>;
  #length = 0;
  readonly #capacity: number;
  /** The largest batch since the last {@linkcode trim}. */
  #peak = 0;

  /** `capacity` must hold at least one largest frame. */
  constructor(capacity = 256 * 1024) {
    if (capacity < HEADER_LEN + MAX_PAYLOAD) {
      throw new RangeError(`FrameWriter capacity ${capacity} cannot hold a largest frame`);
    }
    this.#capacity = capacity;
    this.#buffer = NO_BUFFER;
  }

  /** Bytes collected so far. */
  get length(): number {
    return this.#length;
  }

  /** Bytes the buffer holds now, used or not: what this writer costs. */
  get allocated(): number {
    return this.#buffer.length;
  }

  /** Appends a frame whose payload is `source[0, length)`; false when it does not fit. */
  add(type: FrameType, source: Uint8Array, length = source.length): boolean {
    const end = this.#length + HEADER_LEN + length;
    if (end > this.#buffer.length && !this.#grow(end)) return false;
    writeHeader(this.#buffer, this.#length, type, length);
    this.#buffer.set(
      length === source.length ? source : source.subarray(0, length),
      this.#length + HEADER_LEN,
    );
    this.#length = end;
    if (end > this.#peak) this.#peak = end;
    return true;
  }

  /** Doubles the buffer (from 4 KiB) until `end` fits; false at the capacity. */
  #grow(end: number): boolean {
    if (end > this.#capacity) return false;
    const buffer = new Uint8Array(this.#sizeFor(end));
    buffer.set(this.#buffer.subarray(0, this.#length));
    this.#buffer = buffer;
    return true;
  }

  /** The buffer size that holds `bytes`: 4 KiB doubled as often as needed, within capacity. */
  #sizeFor(bytes: number): number {
    let size = MIN_FRAME_BUFFER;
    while (size < bytes) size *= 2;
    return Math.min(this.#capacity, size);
  }

  /**
   * Sizes an empty buffer for the largest batch since the last call, and gives it back when
   * there was none: called once per keepalive interval, never with a write in flight (a
   * writer holding frames keeps its buffer).
   */
  trim(): void {
    if (this.#length === 0) {
      const size = this.#peak === 0 ? 0 : this.#sizeFor(this.#peak);
      if (size !== this.#buffer.length) {
        this.#buffer = size === 0 ? NO_BUFFER : new Uint8Array(size);
      }
    }
    this.#peak = 0;
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
