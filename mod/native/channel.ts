/**
 * One TLS connection carrying frames: batched, bounded sending and a read loop that hands
 * each frame to a callback.
 *
 * Sending: frames are appended to a `filling` buffer. When no write is in flight, the buffer
 * is swapped with the `flushing` one and written in one TLS write, so that every packet of a
 * TUN batch leaves together and the next batch fills while the last one is on its way. A
 * data frame that finds the filling buffer full is dropped and counted, the way a NIC drops
 * when its queue is full. Control frames wait in a short queue of their own and leave first;
 * when even that queue is full the peer has stopped reading, and the channel closes.
 *
 * @module
 */

import { encodeFrame, FrameReader, FrameType, FrameWriter } from "./wire.ts";

/** Control frames queued at once; more means the peer does not read, and the channel closes. */
const MAX_CONTROL_QUEUE = 64;

/** Counters of one channel; they only grow. */
export interface ChannelStats {
  /** Bytes received, frame headers included. */
  bytesIn: number;
  /** Bytes sent, frame headers included. */
  bytesOut: number;
  /** Data frames dropped because the send buffer was full. */
  dropped: number;
}

/** Receives each frame; the payload is `buffer[start, end)`, valid only during the call. */
export type FrameHandler = (
  type: FrameType,
  buffer: Uint8Array,
  start: number,
  end: number,
) => void;

/** A framed, batched TLS (or any byte stream) connection. */
export class Channel {
  readonly stats: ChannelStats = { bytesIn: 0, bytesOut: 0, dropped: 0 };
  /** `performance.now()` when bytes last arrived; drives the keepalive timeout. */
  lastReceived = performance.now();

  readonly #conn: Deno.Conn;
  readonly #reader = new FrameReader();
  readonly #control: Uint8Array[] = [];
  #filling: FrameWriter;
  #flushing: FrameWriter;
  #writing = false;
  #movedAt = 0;
  #closed = false;
  /** Who waits in {@linkcode drained} for the write in flight. */
  readonly #drainWaiters: (() => void)[] = [];

  /** `sendBuffer` bytes per direction of the double buffer. */
  constructor(conn: Deno.Conn, sendBuffer = 512 * 1024) {
    this.#conn = conn;
    this.#filling = new FrameWriter(sendBuffer);
    this.#flushing = new FrameWriter(sendBuffer);
  }

  /** True once closed by either side. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Queues a data frame with `packet[0, length)`; false (and counted) when dropped. */
  queueData(packet: Uint8Array, length: number): boolean {
    if (this.offerData(packet, length)) return true;
    this.stats.dropped++;
    return false;
  }

  /**
   * Queues a data frame if the send buffer has room; false (not counted) when it has not. A
   * sender with nobody else to serve then awaits {@linkcode drained} and queues again, so that
   * the kernel's TUN queue, not this buffer, absorbs the burst.
   */
  offerData(packet: Uint8Array, length: number): boolean {
    return !this.#closed && this.#filling.add(FrameType.DATA, packet, length);
  }

  /** `performance.now()` when the last write began or last moved bytes. */
  get movedAt(): number {
    return this.#movedAt;
  }

  /**
   * How long (ms) the write in flight has moved no bytes, 0 when none is in flight: a peer that
   * stops reading stops it for good, since TCP's buffers are full.
   */
  get stuckFor(): number {
    return this.#writing ? performance.now() - this.#movedAt : 0;
  }

  /** Resolves once the write in flight has finished, at once when there is none. */
  drained(): Promise<void> {
    if (!this.#writing) return Promise.resolve();
    return new Promise((resolve) => this.#drainWaiters.push(resolve));
  }

  /** Queues a control frame ahead of queued data and starts sending it. */
  sendControl(type: FrameType, payload: Uint8Array = new Uint8Array(0)): void {
    if (this.#closed) return;
    if (this.#control.length >= MAX_CONTROL_QUEUE) {
      // The peer has stopped reading: even a few small frames cannot leave.
      this.close();
      return;
    }
    this.#control.push(encodeFrame(type, payload));
    this.flush();
  }

  /** Starts writing what is queued, unless a write is already in flight. */
  flush(): void {
    if (this.#writing || this.#closed) return;
    if (this.#filling.length === 0 && this.#control.length === 0) return;
    this.#writing = true;
    this.#movedAt = performance.now();
    this.#writeLoop().catch(() => this.close());
  }

  async #writeLoop(): Promise<void> {
    try {
      while (!this.#closed && (this.#control.length > 0 || this.#filling.length > 0)) {
        // Control frames (keepalive answers among them) never wait behind a full data buffer.
        for (let frame; (frame = this.#control.shift()) !== undefined;) await this.#writeAll(frame);
        if (this.#filling.length === 0) continue;
        const batch = this.#filling;
        this.#filling = this.#flushing;
        this.#flushing = batch;
        await this.#writeAll(batch.bytes());
        batch.reset();
        this.#wakeDrainWaiters();
      }
    } finally {
      this.#writing = false;
      this.#wakeDrainWaiters();
    }
  }

  #wakeDrainWaiters(): void {
    for (let wake; (wake = this.#drainWaiters.shift()) !== undefined;) wake();
  }

  async #writeAll(bytes: Uint8Array): Promise<void> {
    for (let off = 0; off < bytes.length;) {
      off += await this.#conn.write(bytes.subarray(off));
      this.#movedAt = performance.now();
    }
    this.stats.bytesOut += bytes.length;
  }

  /** Sends a last control frame, waits (bounded) for it to leave, then closes. */
  async closeWith(type: FrameType, payload: Uint8Array, waitMs = 1000): Promise<void> {
    if (this.#closed) return;
    this.sendControl(type, payload);
    const deadline = performance.now() + waitMs;
    while (this.#writing && performance.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    this.close();
  }

  /**
   * Reads the next frame during the handshake, as a copy; null when the connection ended.
   * Frames that arrive behind it stay buffered for {@linkcode readFrames}.
   */
  async readFrame(): Promise<{ type: FrameType; payload: Uint8Array } | null> {
    const reader = this.#reader;
    while (!reader.next()) {
      if (!await this.#fill()) return null;
    }
    return { type: reader.type, payload: reader.payload().slice() };
  }

  /**
   * Reads until the connection ends, passing every frame to `onFrame` and calling `onBatch`
   * after each read's frames. A `FrameError` from a bad peer propagates to the caller.
   */
  async readFrames(onFrame: FrameHandler, onBatch: () => void): Promise<void> {
    const reader = this.#reader;
    do {
      while (reader.next()) {
        onFrame(reader.type, reader.buffer, reader.payloadStart, reader.payloadEnd);
      }
      onBatch();
    } while (await this.#fill());
  }

  /** One read from the connection into the frame buffer; false at its end. */
  async #fill(): Promise<boolean> {
    if (this.#closed) return false;
    const count = await this.#conn.read(this.#reader.space());
    if (count === null) return false;
    this.lastReceived = performance.now();
    this.stats.bytesIn += count;
    this.#reader.commit(count);
    return true;
  }

  /**
   * Gives back the memory of buffers grown for a burst once the burst is over: each buffer
   * shrinks if nothing since the last call needed more than its first size. Called once per
   * keepalive interval; a write in flight keeps its buffer.
   */
  trim(): void {
    this.#reader.trim();
    this.#filling.trim();
    this.#flushing.trim();
  }

  /** Closes the connection; safe to call twice. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#wakeDrainWaiters();
    try {
      this.#conn.close();
    } catch {
      // Already closed by the peer or by a failed write.
    }
  }
}
