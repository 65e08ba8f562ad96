/**
 * What every load-test session shares, whatever protocol it speaks (scripts/load.ts): the
 * counters it keeps, the interface the run drives it through, the ICMP echo it sends into the
 * tunnel, and the connect deadline.
 *
 * @module
 */

import { checksumAdd, checksumFold } from "../mod/core/offload.ts";
import { parseIPv4 } from "../mod/core/ip.ts";

/** How long one client may take from its TCP connect (or first packet) to carrying data. */
export const CONNECT_TIMEOUT_MS = 10_000;
/** How often each session sends an ICMP echo to the server's tunnel address. */
export const ECHO_EVERY_MS = 5_000;
/** How long a clean close may take per session before the connection is just closed. */
export const CLOSE_WAIT_MS = 1_000;

/** What one session counted; the run sums them. They only grow. */
export interface SessionCounters {
  /** Keepalive pings this client sent (our PING frames and datagrams, OpenVPN pings). */
  keepaliveSent: number;
  /** Answers to them: PONG frames and datagrams (OpenVPN does not answer pings). */
  keepaliveAnswered: number;
  /** Keepalive pings the server sent on its own. */
  serverPings: number;
  /** ICMP echo requests sent through the tunnel to the server's tunnel address. */
  echoSent: number;
  /** Echo replies that came back. */
  echoAnswered: number;
}

/** A fresh set of zero counters. */
export function newCounters(): SessionCounters {
  return { keepaliveSent: 0, keepaliveAnswered: 0, serverPings: 0, echoSent: 0, echoAnswered: 0 };
}

/** One load-test client, driven by the run. */
export interface LoadSession {
  readonly counters: SessionCounters;
  /** Why the session went down other than by {@linkcode close}; undefined while it is up. */
  readonly ended: string | undefined;
  /**
   * Connects and runs the handshake; resolves once the session carries data. `signal` ends the
   * attempt (the run's deadline or Ctrl-C); the rejection says at which step it failed.
   */
  connect(signal: AbortSignal): Promise<void>;
  /** About once a second, once connected: keepalive and an echo when due. */
  tick(now: number): void;
  /** Says goodbye and closes, waiting at most {@linkcode CLOSE_WAIT_MS} for the goodbye. */
  close(): Promise<void>;
}

/** A failed step of a connect: `step` says which, the message what happened. */
export class ConnectError extends Error {
  constructor(step: string, cause: unknown) {
    super(`${step}: ${cause instanceof Error ? cause.message : String(cause)}`);
    this.name = "ConnectError";
  }
}

/**
 * The steps of one connect, for its error: `run(step, promise)` awaits `promise` and turns its
 * failure, or the end of `signal`, into a {@linkcode ConnectError} naming `step` (a function
 * is asked at the failure: where a handshake had got to).
 */
export class Steps {
  readonly #signal: AbortSignal;

  constructor(signal: AbortSignal) {
    this.#signal = signal;
  }

  async run<T>(step: string | (() => string), promise: Promise<T>): Promise<T> {
    const signal = this.#signal;
    let onAbort: (() => void) | undefined;
    try {
      return await Promise.race([
        promise,
        new Promise<never>((_, reject) => {
          onAbort = () => reject(signal.reason);
          if (signal.aborted) onAbort();
          else signal.addEventListener("abort", onAbort, { once: true });
        }),
      ]);
    } catch (error) {
      const name = typeof step === "string" ? step : step();
      throw new ConnectError(name, signal.aborted ? signal.reason : error);
    } finally {
      if (onAbort !== undefined) signal.removeEventListener("abort", onAbort);
    }
  }
}

/** Bytes of the echo packet: IPv4 header, ICMP header, 16 bytes of payload. */
const ECHO_LEN = 20 + 8 + 16;
const ICMP = 1;
const ECHO_REQUEST = 8;
const ECHO_REPLY = 0;

/**
 * One session's ICMP echo request to the server's tunnel address, from its own: the server
 * routes it into its TUN, the kernel there answers, and the answer comes back through the
 * tunnel. One buffer per session, rewritten for each sequence number.
 */
export class Echo {
  /** The packet to send, {@linkcode length} bytes. */
  readonly packet: Uint8Array<ArrayBuffer> = new Uint8Array(ECHO_LEN);
  readonly length = ECHO_LEN;
  readonly #id: number;
  #sequence = 0;

  /** `id` tells this session's replies apart (the low 16 bits are used). */
  constructor(source: string, destination: string, id: number) {
    this.#id = id & 0xffff;
    const p = this.packet;
    const view = new DataView(p.buffer);
    p[0] = 0x45; // version 4, 5-word header
    view.setUint16(2, ECHO_LEN);
    p[8] = 64; // TTL
    p[9] = ICMP;
    view.setUint32(12, parseIPv4(source));
    view.setUint32(16, parseIPv4(destination));
    view.setUint16(10, ~checksumFold(checksumAdd(p, 0, 20)) & 0xffff);
    p[20] = ECHO_REQUEST;
    view.setUint16(24, this.#id);
    p.set(new TextEncoder().encode("vpn load test\0\0\0"), 28);
  }

  /** Moves to the next sequence number; the packet is then ready to send. */
  next(): void {
    const p = this.packet;
    this.#sequence = (this.#sequence + 1) & 0xffff;
    p[26] = this.#sequence >> 8;
    p[27] = this.#sequence & 0xff;
    p[22] = p[23] = 0;
    const sum = ~checksumFold(checksumAdd(p, 20, ECHO_LEN)) & 0xffff;
    p[22] = sum >> 8;
    p[23] = sum & 0xff;
  }

  /** Whether `packet[start, end)` is an echo reply to this session. */
  isReply(packet: Uint8Array, start: number, end: number): boolean {
    if (end - start < 28 || packet[start]! >> 4 !== 4 || packet[start + 9] !== ICMP) return false;
    const icmp = start + (packet[start]! & 0x0f) * 4;
    return icmp + 8 <= end && packet[icmp] === ECHO_REPLY &&
      ((packet[icmp + 4]! << 8) | packet[icmp + 5]!) === this.#id;
  }
}

/** Due times of a session's keepalive and echo, first ones at once. */
export class Schedule {
  #keepaliveAt = 0;
  #echoAt = 0;
  #keepaliveMs: number;

  constructor(keepaliveSeconds: number) {
    this.#keepaliveMs = keepaliveSeconds * 1000;
  }

  /** True when a keepalive is due at `now`; then the next one is an interval away. */
  keepaliveDue(now: number): boolean {
    if (now < this.#keepaliveAt) return false;
    this.#keepaliveAt = now + this.#keepaliveMs;
    return true;
  }

  /** True when an echo is due at `now`; then the next one is {@linkcode ECHO_EVERY_MS} away. */
  echoDue(now: number): boolean {
    if (now < this.#echoAt) return false;
    this.#echoAt = now + ECHO_EVERY_MS;
    return true;
  }
}
