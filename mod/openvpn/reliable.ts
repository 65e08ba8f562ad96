/**
 * The reliability layer of the OpenVPN control channel (OPENVPN.md 1.5, 1.6): message ids,
 * ACKs, retransmission and in-order delivery, so that TLS can run over UDP.
 *
 * One {@linkcode Reliable} serves one key state (key_id) of one session; a renegotiation makes
 * a new one, because message ids restart at 0 in both directions. The code is pure: it never
 * reads a clock and owns no timer. The caller passes `now` (ms) to
 * {@linkcode Reliable.poll}, puts what it returns on the wire, and sleeps until
 * {@linkcode Reliable.nextDeadline}.
 *
 * Sending: {@linkcode Reliable.send} numbers payloads 0, 1, 2, … and queues them. A payload
 * goes out once its id lies within `sendWindow` of the oldest unacked one (like stock 2.6, the
 * window spans ids rather than counting packets in flight, so the peer's 12 receive buffers
 * always cover what we send), then again after 2, 4, 8, 16, 16, … s until acked, or early
 * once 3 later packets were acked (the packet in between was most likely lost).
 *
 * Receiving: {@linkcode Reliable.received} buffers packets inside the receive window and
 * hands back the ones that have become deliverable in order. Every accepted packet and every
 * duplicate is acked; a packet beyond the window is dropped unacked, so that the peer resends
 * it once there is room. ACKs ride on our next control packets (at most 4 each) or on ACK_V1
 * packets (at most 8). Both also repeat recently sent ACKs (an MRU list of 8, as stock 2.6
 * does) where there is room, so one lost ACK does not cost the peer a retransmission timeout.
 *
 * Message ids are u32 on the wire and plain numbers here; ids are never wrapped (a key state
 * lives an hour at most, a few thousand packets), so nothing misbehaves near 2^32: larger ids
 * from the peer are dropped, and our own run out with a `RangeError`.
 *
 * @module
 */

// Protocol constants (OPENVPN.md 1.2, 1.3, 1.6).

/** P_ACK_V1: the opcode of an ack-only packet. */
const OPCODE_ACK_V1 = 5;
/**
 * The opcodes that carry a message id and so go through this layer: SOFT_RESET_V1,
 * CONTROL_V1, HARD_RESET_CLIENT_V2, HARD_RESET_SERVER_V2, HARD_RESET_CLIENT_V3, WKC_V1.
 */
const RELIABLE_OPCODES: ReadonlySet<number> = new Set([3, 4, 7, 8, 10, 11]);
/** ACKs on a control packet: stock sends at most 4 (SoftEther drops more, OPENVPN.md 1.6). */
const MAX_ACKS_CONTROL = 4;
/** ACKs on a P_ACK_V1 packet; stock rejects a packet with more than 8. */
const MAX_ACKS_ACK_V1 = 8;
/** Recently sent ACKs kept for repeating, as stock 2.6 keeps them. */
const MRU_SIZE = 8;
/** Later packets acked before an unacked one is resent without waiting for its timer. */
const FAST_RETRANSMIT_ACKS = 3;
/** The largest u32 message id. */
const MAX_MESSAGE_ID = 0xffff_ffff;

const DEFAULT_SEND_WINDOW = 6;
const DEFAULT_RECEIVE_WINDOW = 12;
/** `tls-timeout`: the first retransmission timeout. */
const DEFAULT_INITIAL_TIMEOUT_MS = 2_000;

// Tuning constants.

/**
 * The retransmission timeout stops doubling here. Stock never caps it, but its handshake
 * gives up after 60 s (hand-window), so its resends at +2, +6, +14, +30 s never use a longer
 * wait than 16 s; we send the same packets then, and one more at +46 s instead of falling
 * silent until the deadline. After the handshake, the cap keeps the recovery after an outage
 * within 16 s instead of letting the wait grow to minutes.
 */
const DEFAULT_MAX_TIMEOUT_MS = 16_000;
/** Payloads that may wait beyond the send window before `send` throws. */
const DEFAULT_BACKLOG = 64;
/**
 * ACKs waiting for a poll. A flood of duplicates cannot grow the list: an ACK beyond it is
 * forgotten, and the peer's next retransmission of that packet is acked instead.
 */
const MAX_PENDING_ACKS = 32;
/** The largest window either side may be given; windows are rings allocated up front. */
const MAX_WINDOW = 64;
/** The largest backlog; it is a ring allocated up front. */
const MAX_BACKLOG = 4096;

const EMPTY = new Uint8Array(0);

/** Tuning of one {@linkcode Reliable}; every field is optional. */
export interface ReliableOptions {
  /**
   * Our packets in flight, counted as the span from the oldest unacked id (6, as stock). Keep
   * it at most the peer's receive window (12 for stock) or the peer drops the excess.
   */
  sendWindow?: number;
  /** The peer's packets buffered ahead of the next one to deliver (12, as stock). */
  receiveWindow?: number;
  /** The first retransmission timeout in ms (2000, stock `tls-timeout`); doubles per resend. */
  initialTimeoutMs?: number;
  /** The retransmission timeout stops doubling at this many ms (16000, or initialTimeoutMs if larger). */
  maxTimeoutMs?: number;
  /** Payloads that may wait beyond the send window (64); one more makes `send` throw. */
  backlog?: number;
}

/** One packet for the caller to frame and put on the wire. */
export interface OutgoingPacket {
  /** The opcode the caller gave to send(), or ACK_V1 (5) for an ack-only packet. */
  opcode: number;
  /** undefined for an ack-only packet. */
  messageId?: number;
  /** The payload given to send() (not copied), or empty for an ack-only packet. */
  payload: Uint8Array;
  /** Peer message ids acked in this packet (<= 4 on a control packet, <= 8 on ACK_V1). */
  acks: number[];
}

/** A payload of the peer, delivered in message-id order. */
export interface DeliveredPayload {
  /** The opcode of the packet that carried it. */
  opcode: number;
  /** The payload given to received() (not copied). */
  payload: Uint8Array;
}

/** Counters of one {@linkcode Reliable}; they only grow. */
export interface ReliableStats {
  /** Our packets sent again, on their timer, early (fast retransmit) or after resendAll(). */
  retransmits: number;
  /** Peer packets received again (acked again, dropped). */
  duplicates: number;
  /** Peer packets dropped unacked: beyond the receive window, or not a u32 message id. */
  outOfWindow: number;
}

/** One of our payloads, from send() until acked. */
interface SendSlot {
  opcode: number;
  payload: Uint8Array;
  acked: boolean;
  /** When poll() resends it; meaningful once it was transmitted. */
  nextTry: number;
  /** The wait after its next transmission. */
  timeout: number;
  /** Later packets acked since it was last transmitted; drives fast retransmit. */
  laterAcks: number;
}

/** A peer packet that arrived ahead of its turn; `id` is -1 when the slot is free. */
interface ReceiveSlot {
  id: number;
  opcode: number;
  payload: Uint8Array;
}

/**
 * The reliability layer of one key state: numbers, retransmits and acks our control packets,
 * and orders and acks the peer's.
 *
 * Payloads are kept by reference, not copied: do not reuse a buffer given to `send()` before
 * it is acked ({@linkcode Reliable.idle}), nor one given to `received()` before it is
 * delivered.
 *
 * @example
 * ```ts
 * const rel = new Reliable();
 * rel.send(7, new Uint8Array()); // HARD_RESET_CLIENT_V2, message id 0
 * const [reset] = rel.poll(0); // { opcode: 7, messageId: 0, payload, acks: [] }
 * rel.nextDeadline(); // 2000: resend unless acked by then
 * rel.acked([0]); // 1
 * rel.received(0, 8, new Uint8Array()); // [{ opcode: 8, payload }]: the server's reset
 * rel.poll(10); // [{ opcode: 5, payload, acks: [0] }]: an ACK_V1
 * ```
 */
export class Reliable {
  readonly #sendWindow: number;
  readonly #receiveWindow: number;
  readonly #initialTimeout: number;
  readonly #maxTimeout: number;

  // Sending. Ids [base, unsent) were transmitted, [unsent, next) wait; slot of id = id % ring.
  readonly #sendRing: SendSlot[];
  /** The oldest unacked id (== #next when everything was acked). */
  #base = 0;
  /** The next id to transmit for the first time. */
  #unsent = 0;
  /** The id the next send() gets. */
  #next = 0;

  // Receiving. Slot of id = id % receiveWindow, for ids [expected, expected + receiveWindow).
  readonly #receiveRing: ReceiveSlot[];
  /** The peer's next message id to deliver. */
  #expected = 0;

  // ACKs: ids received and not yet sent in an ACK, and the most recently sent ones (first).
  readonly #pending = new Uint32Array(MAX_PENDING_ACKS);
  #pendingLength = 0;
  readonly #mru = new Uint32Array(MRU_SIZE);
  #mruLength = 0;

  readonly #stats: ReliableStats = { retransmits: 0, duplicates: 0, outOfWindow: 0 };

  /** Throws `RangeError` for an option outside its range. */
  constructor(options: ReliableOptions = {}) {
    this.#sendWindow = intOption(
      "sendWindow",
      options.sendWindow,
      DEFAULT_SEND_WINDOW,
      1,
      MAX_WINDOW,
    );
    this.#receiveWindow = intOption(
      "receiveWindow",
      options.receiveWindow,
      DEFAULT_RECEIVE_WINDOW,
      1,
      MAX_WINDOW,
    );
    this.#initialTimeout = intOption(
      "initialTimeoutMs",
      options.initialTimeoutMs,
      DEFAULT_INITIAL_TIMEOUT_MS,
      1,
      2 ** 31,
    );
    this.#maxTimeout = intOption(
      "maxTimeoutMs",
      options.maxTimeoutMs,
      Math.max(DEFAULT_MAX_TIMEOUT_MS, this.#initialTimeout),
      this.#initialTimeout,
      2 ** 31,
    );
    const backlog = intOption("backlog", options.backlog, DEFAULT_BACKLOG, 0, MAX_BACKLOG);
    this.#sendRing = Array.from({ length: this.#sendWindow + backlog }, () => ({
      opcode: 0,
      payload: EMPTY,
      acked: false,
      nextTry: 0,
      timeout: 0,
      laterAcks: 0,
    }));
    this.#receiveRing = Array.from(
      { length: this.#receiveWindow },
      () => ({ id: -1, opcode: 0, payload: EMPTY }),
    );
  }

  /**
   * Queues a payload (opcode = CONTROL_V1, HARD_RESET_*, SOFT_RESET_V1, WKC_V1) for reliable
   * sending; it gets the next message id, 0 for the first. Throws `RangeError` for another
   * opcode, when the backlog is full ({@linkcode Reliable.room} is 0) or when the u32 message
   * ids are used up; the caller then ends the session.
   */
  send(opcode: number, payload: Uint8Array): void {
    if (!RELIABLE_OPCODES.has(opcode)) {
      throw new RangeError(`Cannot send opcode ${opcode} reliably: it carries no message id`);
    }
    if (this.room === 0) {
      throw new RangeError(
        `Cannot queue a control packet: ${this.#next - this.#base} are already unacked or queued`,
      );
    }
    if (this.#next > MAX_MESSAGE_ID) {
      throw new RangeError("Cannot queue a control packet: the u32 message ids are used up");
    }
    const slot = this.#sendSlot(this.#next++);
    slot.opcode = opcode;
    slot.payload = payload;
    slot.acked = false;
    slot.timeout = this.#initialTimeout;
    slot.laterAcks = 0;
  }

  /** The peer acked these ids of ours. Unknown ids are ignored. Returns how many were new. */
  acked(ids: readonly number[]): number {
    let fresh = 0;
    for (const id of ids) {
      // Only transmitted ids can be acked: anything else is stale, forged or a peer bug.
      if (!isMessageId(id) || id < this.#base || id >= this.#unsent) continue;
      const slot = this.#sendSlot(id);
      if (slot.acked) continue;
      slot.acked = true;
      slot.payload = EMPTY;
      fresh++;
      for (let earlier = this.#base; earlier < id; earlier++) {
        const before = this.#sendSlot(earlier);
        if (!before.acked) before.laterAcks++;
      }
    }
    while (this.#base < this.#unsent && this.#sendSlot(this.#base).acked) this.#base++;
    return fresh;
  }

  /**
   * A packet of the peer with a message id. Returns the payloads now deliverable in order
   * (maybe several, maybe none), each with its opcode. Records the ACK to send, unless the
   * packet is dropped beyond the receive window.
   */
  received(messageId: number, opcode: number, payload: Uint8Array): DeliveredPayload[] {
    if (!isMessageId(messageId) || messageId >= this.#expected + this.#receiveWindow) {
      this.#stats.outOfWindow++;
      return [];
    }
    const slot = this.#receiveRing[messageId % this.#receiveWindow]!;
    this.#ack(messageId);
    if (messageId < this.#expected || slot.id === messageId) {
      this.#stats.duplicates++;
      return [];
    }
    slot.id = messageId;
    slot.opcode = opcode;
    slot.payload = payload;
    return this.#deliver();
  }

  /**
   * Packets to put on the wire now, in this order: due retransmissions, new ones within the
   * window, and ack-only packets when ACKs are pending that those did not carry.
   */
  poll(now: number): OutgoingPacket[] {
    const out: OutgoingPacket[] = [];
    for (let id = this.#base; id < this.#unsent; id++) {
      const slot = this.#sendSlot(id);
      if (slot.acked) continue;
      if (slot.nextTry <= now || slot.laterAcks >= FAST_RETRANSMIT_ACKS) {
        this.#stats.retransmits++;
        out.push(this.#transmit(slot, id, now));
      }
    }
    while (this.#canTransmitNew()) {
      out.push(this.#transmit(this.#sendSlot(this.#unsent), this.#unsent, now));
      this.#unsent++;
    }
    while (this.#pendingLength > 0) {
      out.push({ opcode: OPCODE_ACK_V1, payload: EMPTY, acks: this.#takeAcks(MAX_ACKS_ACK_V1) });
    }
    return out;
  }

  /**
   * When poll() next has something to do (ms timestamp), or undefined if nothing is pending.
   * 0 (long past) means at once: there are ACKs or new packets to send, or a fast retransmit.
   */
  nextDeadline(): number | undefined {
    if (this.#pendingLength > 0 || this.#canTransmitNew()) return 0;
    let earliest: number | undefined;
    for (let id = this.#base; id < this.#unsent; id++) {
      const slot = this.#sendSlot(id);
      if (slot.acked) continue;
      if (slot.laterAcks >= FAST_RETRANSMIT_ACKS) return 0;
      if (earliest === undefined || slot.nextTry < earliest) earliest = slot.nextTry;
    }
    return earliest;
  }

  /**
   * Makes every transmitted, unacked packet due at `now`, its timeout back at the initial
   * value: the "burst" on the first valid packet of a new session or on a peer SOFT_RESET.
   */
  resendAll(now: number): void {
    for (let id = this.#base; id < this.#unsent; id++) {
      const slot = this.#sendSlot(id);
      if (slot.acked) continue;
      slot.nextTry = now;
      slot.timeout = this.#initialTimeout;
    }
  }

  /** Everything we sent has been acked and nothing is queued (pending ACKs do not count). */
  get idle(): boolean {
    return this.#base === this.#next;
  }

  /** How many more send() calls fit before it throws: free window and backlog places. */
  get room(): number {
    return this.#sendRing.length - (this.#next - this.#base);
  }

  /** A snapshot of the counters. */
  get stats(): Readonly<ReliableStats> {
    return { ...this.#stats };
  }

  #sendSlot(id: number): SendSlot {
    return this.#sendRing[id % this.#sendRing.length]!;
  }

  #canTransmitNew(): boolean {
    return this.#unsent < this.#next && this.#unsent < this.#base + this.#sendWindow;
  }

  /** Records a (re)transmission of `slot` at `now` and builds its packet. */
  #transmit(slot: SendSlot, id: number, now: number): OutgoingPacket {
    slot.nextTry = now + slot.timeout;
    slot.timeout = Math.min(slot.timeout * 2, this.#maxTimeout);
    slot.laterAcks = 0;
    return {
      opcode: slot.opcode,
      messageId: id,
      payload: slot.payload,
      acks: this.#takeAcks(MAX_ACKS_CONTROL),
    };
  }

  /** Hands out the payloads that are next in order, freeing their slots. */
  #deliver(): DeliveredPayload[] {
    const delivered: DeliveredPayload[] = [];
    for (;;) {
      const slot = this.#receiveRing[this.#expected % this.#receiveWindow]!;
      if (slot.id !== this.#expected) return delivered;
      delivered.push({ opcode: slot.opcode, payload: slot.payload });
      slot.id = -1;
      slot.payload = EMPTY;
      this.#expected++;
    }
  }

  /** Queues an ACK for `id` once; forgets it when the pending list is full (see above). */
  #ack(id: number): void {
    for (let i = 0; i < this.#pendingLength; i++) if (this.#pending[i] === id) return;
    if (this.#pendingLength < MAX_PENDING_ACKS) this.#pending[this.#pendingLength++] = id;
  }

  /**
   * The ACK list of one packet: up to `max` pending ids, oldest first, which move to the
   * front of the MRU list, then recently sent ones to fill the room.
   */
  #takeAcks(max: number): number[] {
    const taken = Math.min(this.#pendingLength, max);
    // Backwards, so that the first pending id ends up first in the MRU list and the packet.
    for (let i = taken - 1; i >= 0; i--) this.#remember(this.#pending[i]!);
    this.#pending.copyWithin(0, taken, this.#pendingLength);
    this.#pendingLength -= taken;
    return Array.from(this.#mru.subarray(0, Math.min(max, this.#mruLength)));
  }

  /** Puts `id` first in the MRU list, dropping its older place or else the oldest entry. */
  #remember(id: number): void {
    let at = this.#mru.subarray(0, this.#mruLength).indexOf(id);
    if (at < 0) {
      at = Math.min(this.#mruLength, MRU_SIZE - 1);
      if (this.#mruLength < MRU_SIZE) this.#mruLength++;
    }
    this.#mru.copyWithin(1, 0, at);
    this.#mru[0] = id;
  }
}

function isMessageId(id: number): boolean {
  return Number.isInteger(id) && id >= 0 && id <= MAX_MESSAGE_ID;
}

/** `value` if given and an integer in [min, max], `fallback` if not given; else RangeError. */
function intOption(
  name: string,
  value: number | undefined,
  fallback: number,
  min: number,
  max: number,
): number {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new RangeError(
      `Invalid Reliable option ${name} ${value}: must be an integer ${min}…${max}`,
    );
  }
  return value;
}
