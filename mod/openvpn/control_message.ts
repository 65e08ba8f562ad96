/**
 * Control-channel text messages (OPENVPN.md section 7): after key-method 2, each message is
 * printable ASCII followed by one NUL byte (`PUSH_REQUEST`, `PUSH_REPLY,...`, `AUTH_FAILED`,
 * `EXIT`, ...), and a long PUSH_REPLY is split into several with push-continuation.
 *
 * Sizes follow stock 2.6: a receiver reads messages into a 2048-byte buffer
 * (TLS_CHANNEL_BUF_SIZE), so a message and its NUL must fit 2048 bytes; a sender keeps each
 * PUSH_REPLY within 1024 bytes (PUSH_BUNDLE_SIZE).
 *
 * @module
 */

import { OpenVpnPacketError } from "./packet.ts";

/** Longest control message a receiver accepts, counting its NUL. */
export const MAX_CONTROL_MESSAGE = 2048;
/** Longest PUSH_REPLY message this module writes, counting its NUL. */
export const PUSH_BUNDLE_SIZE = 1024;

const NUL = 0;
const CR = 0x0d;
const LF = 0x0a;
const PUSH_REPLY = "PUSH_REPLY";
// Both continuation suffixes have the same length, so one reservation fits either.
const MORE = ",push-continuation 2";
const LAST = ",push-continuation 1";

/**
 * Splits accumulated control-channel plaintext into NUL-terminated messages, keeping an
 * unfinished one for the next push. Bounded: it holds at most one partial message, in a
 * buffer of {@linkcode MAX_CONTROL_MESSAGE} bytes allocated up front.
 *
 * As stock 2.6 does, trailing CR and LF are stripped, and a message with any other byte
 * outside printable ASCII (0x20-0x7e) is dropped and counted in
 * {@linkcode ControlMessageReader.dropped}; empty messages are skipped.
 *
 * @example
 * ```ts
 * const reader = new ControlMessageReader();
 * reader.push(new TextEncoder().encode("PUSH_REQ")); // []
 * reader.push(new TextEncoder().encode("UEST\0EXIT\0")); // ["PUSH_REQUEST", "EXIT"]
 * ```
 */
export class ControlMessageReader {
  readonly #partial = new Uint8Array(MAX_CONTROL_MESSAGE);
  #held = 0;
  #dropped = 0;

  /** How many messages were dropped for bytes outside printable ASCII. */
  get dropped(): number {
    return this.#dropped;
  }

  /**
   * Feeds plaintext; returns the messages it completes, in order.
   *
   * @throws {OpenVpnPacketError} when a message reaches {@linkcode MAX_CONTROL_MESSAGE}
   *   bytes without its NUL; the channel is then unusable, as for stock.
   */
  push(bytes: Uint8Array): string[] {
    const messages: string[] = [];
    let offset = 0;
    while (offset < bytes.length) {
      const nul = bytes.indexOf(NUL, offset);
      const end = nul < 0 ? bytes.length : nul;
      if (this.#held + (end - offset) >= MAX_CONTROL_MESSAGE) {
        throw new OpenVpnPacketError(
          `control message of more than ${MAX_CONTROL_MESSAGE - 1} bytes without NUL`,
        );
      }
      this.#partial.set(bytes.subarray(offset, end), this.#held);
      this.#held += end - offset;
      if (nul < 0) break;
      const message = this.#take();
      if (message !== undefined) messages.push(message);
      offset = nul + 1;
    }
    return messages;
  }

  /** The held message as text, or undefined to skip it; empties the buffer. */
  #take(): string | undefined {
    let length = this.#held;
    this.#held = 0;
    while (length > 0 && (this.#partial[length - 1] === CR || this.#partial[length - 1] === LF)) {
      length--;
    }
    if (length === 0) return undefined;
    const text = this.#partial.subarray(0, length);
    if (!text.every((byte) => byte >= 0x20 && byte <= 0x7e)) {
      this.#dropped++;
      return undefined;
    }
    return String.fromCharCode(...text);
  }
}

/**
 * `text` and its NUL, ready for the TLS writer (one message = one TLS write).
 *
 * @throws {RangeError} for text outside printable ASCII, or too long for a receiver
 *   ({@linkcode MAX_CONTROL_MESSAGE} bytes with the NUL).
 */
export function encodeControlMessage(text: string): Uint8Array {
  checkPrintable(text, "a control message");
  if (text.length + 1 > MAX_CONTROL_MESSAGE) {
    throw new RangeError(
      `Cannot send a control message of ${text.length} bytes: at most ${
        MAX_CONTROL_MESSAGE - 1
      } fit`,
    );
  }
  const out = new Uint8Array(text.length + 1);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
  return out;
}

/**
 * The PUSH_REPLY messages for `options` (each already a formatted option such as
 * `route 10.0.0.0 255.0.0.0`), in order. One message when all fit in
 * {@linkcode PUSH_BUNDLE_SIZE} bytes with its NUL; otherwise as many as needed, every
 * non-final one ending `,push-continuation 2` and the final one `,push-continuation 1`
 * (7.4). Options are never split across messages.
 *
 * @throws {RangeError} for an option that is empty, contains a comma or a byte outside
 *   printable ASCII, or cannot fit a message on its own.
 *
 * @example
 * ```ts
 * pushReplyMessages(["topology subnet", "ping 10"]); // ["PUSH_REPLY,topology subnet,ping 10"]
 * ```
 */
export function pushReplyMessages(options: string[]): string[] {
  // The room one message leaves for ",option" entries once the continuation is reserved.
  const room = PUSH_BUNDLE_SIZE - 1 - PUSH_REPLY.length - MORE.length;
  for (const option of options) {
    checkPrintable(option, "a pushed option");
    if (option === "" || option.includes(",")) {
      throw new RangeError(`Cannot push option "${option}": empty or with a comma`);
    }
    if (1 + option.length > room) {
      throw new RangeError(
        `Cannot push an option of ${option.length} bytes: at most ${room - 1} fit a message`,
      );
    }
  }
  const single = [PUSH_REPLY, ...options].join(",");
  if (single.length + 1 <= PUSH_BUNDLE_SIZE) return [single];
  const messages: string[] = [];
  let current = PUSH_REPLY;
  for (const option of options) {
    if (current.length + 1 + option.length > PUSH_REPLY.length + room) {
      messages.push(current + MORE);
      current = PUSH_REPLY;
    }
    current += "," + option;
  }
  messages.push(current + LAST);
  return messages;
}

function checkPrintable(text: string, what: string): void {
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code < 0x20 || code > 0x7e) {
      throw new RangeError(
        `Cannot send ${what} with character 0x${code.toString(16)} at ${i}: printable ASCII only`,
      );
    }
  }
}
