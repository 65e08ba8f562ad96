/**
 * The control socket's wire format (PROTOCOL.md, "Control socket"): one JSON object a line,
 * UTF-8, `\n` ended. A request is `{"v":1,"id":N,"cmd":"status"|"kill"|"reload"}`, with
 * `"name"` for `kill` only; its reply carries the same `id` and either `"ok":true,"result":...`
 * or `"ok":false,"error":"..."`. Decoding is strict: an unknown key, a wrong type or another
 * version is an error reply, so that a client of a later version learns at once what this server
 * does not take instead of having a field ignored.
 *
 * @module
 */

/** The version of the format; a request of another one is refused. */
export const CONTROL_VERSION = 1;

/** The longest request line the server reads (a request is a few dozen bytes). */
export const MAX_REQUEST_LINE = 64 * 1024;

/** The longest reply line a client reads: a status of some 50,000 sessions. */
export const MAX_REPLY_LINE = 32 * 1024 * 1024;

/** The longest client name `kill` takes, as `vpn client add` allows. */
const MAX_NAME = 64;

/** What a request asks for. */
export type ControlCommand = "status" | "kill" | "reload";

/** Every {@linkcode ControlCommand}. */
export const CONTROL_COMMANDS: readonly ControlCommand[] = ["status", "kill", "reload"];

/** A request as decoded. */
export type ControlRequest =
  | { v: 1; id: number; cmd: "status" | "reload" }
  | { v: 1; id: number; cmd: "kill"; name: string };

/** A reply as decoded. */
export type ControlReply =
  | { v: 1; id: number; ok: true; result: unknown }
  | { v: 1; id: number | null; ok: false; error: string };

/** A line that is not a valid request or reply; `id` is the request's when it could be read. */
export class ControlProtocolError extends Error {
  readonly id: number | null;

  constructor(message: string, id: number | null = null) {
    super(message);
    this.name = "ControlProtocolError";
    this.id = id;
  }
}

function isId(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}

/** The object of a JSON line, or a {@linkcode ControlProtocolError} saying what is wrong. */
function object(line: string, what: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    throw new ControlProtocolError(`the ${what} is not JSON: ${JSON.stringify(line.slice(0, 80))}`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new ControlProtocolError(`the ${what} must be a JSON object`);
  }
  return value as Record<string, unknown>;
}

function onlyKeys(
  value: Record<string, unknown>,
  allowed: readonly string[],
  what: string,
  id: number | null,
): void {
  const extra = Object.keys(value).filter((key) => !allowed.includes(key));
  if (extra.length > 0) {
    throw new ControlProtocolError(
      `unknown key ${JSON.stringify(extra[0])} in the ${what}; it takes ${allowed.join(", ")}`,
      id,
    );
  }
}

function version(value: Record<string, unknown>, what: string, id: number | null): void {
  if (value.v !== CONTROL_VERSION) {
    throw new ControlProtocolError(
      `the ${what} has "v": ${JSON.stringify(value.v) ?? "missing"}; this side speaks version ` +
        `${CONTROL_VERSION}: use a vpn of the same version`,
      id,
    );
  }
}

/** Decodes one request line (without its `\n`). */
export function decodeRequest(line: string): ControlRequest {
  const value = object(line, "request");
  const id = isId(value.id) ? value.id : null;
  version(value, "request", id);
  if (id === null) {
    throw new ControlProtocolError('"id" must be a whole number from 0 to 2^53-1');
  }
  const { cmd } = value;
  if (!CONTROL_COMMANDS.includes(cmd as ControlCommand)) {
    throw new ControlProtocolError(
      `"cmd" ${JSON.stringify(cmd) ?? "missing"}: must be ${CONTROL_COMMANDS.join(", ")}`,
      id,
    );
  }
  if (cmd !== "kill") {
    onlyKeys(value, ["v", "id", "cmd"], `${cmd} request`, id);
    return { v: 1, id, cmd: cmd as "status" | "reload" };
  }
  onlyKeys(value, ["v", "id", "cmd", "name"], "kill request", id);
  const { name } = value;
  if (typeof name !== "string" || name.length === 0 || name.length > MAX_NAME) {
    throw new ControlProtocolError(
      `"name" must be a client's name, 1 to ${MAX_NAME} characters`,
      id,
    );
  }
  return { v: 1, id, cmd: "kill", name };
}

/** The request line (with its `\n`) for `request`. */
export function encodeRequest(request: ControlRequest): string {
  return `${JSON.stringify(request)}\n`;
}

/** The reply line (with its `\n`) carrying `result` for request `id`. */
export function encodeResult(id: number, result: unknown): string {
  return `${JSON.stringify({ v: CONTROL_VERSION, id, ok: true, result: result ?? null })}\n`;
}

/** The reply line (with its `\n`) refusing request `id` (null: it could not be read). */
export function encodeError(id: number | null, error: string): string {
  return `${JSON.stringify({ v: CONTROL_VERSION, id, ok: false, error })}\n`;
}

/** Decodes one reply line (without its `\n`). */
export function decodeReply(line: string): ControlReply {
  const value = object(line, "reply");
  const id = isId(value.id) ? value.id : null;
  version(value, "reply", id);
  if (value.ok === true) {
    onlyKeys(value, ["v", "id", "ok", "result"], "reply", id);
    if (id === null || !("result" in value)) {
      throw new ControlProtocolError('a reply with "ok": true needs "id" and "result"', id);
    }
    return { v: 1, id, ok: true, result: value.result };
  }
  onlyKeys(value, ["v", "id", "ok", "error"], "reply", id);
  if (value.ok !== false || typeof value.error !== "string") {
    throw new ControlProtocolError('a reply needs "ok": true and "result", or false and "error"');
  }
  if (value.id !== null && id === null) {
    throw new ControlProtocolError('"id" of a reply must be a whole number or null');
  }
  return { v: 1, id, ok: false, error: value.error };
}

/**
 * Splits a byte stream into lines of at most `max` bytes (without the `\n`). A longer line is an
 * error: past it the stream cannot be trusted to be in step, so the caller closes it.
 */
export class LineReader {
  readonly #max: number;
  #buffer: Uint8Array;
  #length = 0;
  readonly #decoder = new TextDecoder("utf-8", { fatal: true });

  constructor(max: number) {
    this.#max = max;
    // Grown as lines need it, up to max + 1 bytes: most lines are short.
    this.#buffer = new Uint8Array(Math.min(max + 1, 4096));
  }

  /**
   * Adds `chunk` and returns the lines it completed; a line that is not UTF-8 comes as a
   * {@linkcode ControlProtocolError} in its place (the stream is still in step after it).
   * Throws one for a line over the cap.
   */
  push(chunk: Uint8Array): (string | ControlProtocolError)[] {
    const lines: (string | ControlProtocolError)[] = [];
    let start = 0;
    for (let i = chunk.indexOf(10); i >= 0; i = chunk.indexOf(10, start)) {
      this.#append(chunk.subarray(start, i));
      lines.push(this.#take());
      start = i + 1;
    }
    this.#append(chunk.subarray(start));
    return lines;
  }

  /** Bytes of an unfinished line held. */
  get pending(): number {
    return this.#length;
  }

  #append(bytes: Uint8Array): void {
    if (this.#length + bytes.length > this.#max) {
      throw new ControlProtocolError(`a line is longer than ${this.#max} bytes`);
    }
    if (this.#length + bytes.length > this.#buffer.length) {
      const grown = new Uint8Array(
        Math.min(this.#max + 1, Math.max(this.#buffer.length * 2, this.#length + bytes.length)),
      );
      grown.set(this.#buffer.subarray(0, this.#length));
      this.#buffer = grown;
    }
    this.#buffer.set(bytes, this.#length);
    this.#length += bytes.length;
  }

  #take(): string | ControlProtocolError {
    const bytes = this.#buffer.subarray(0, this.#length);
    this.#length = 0;
    try {
      return this.#decoder.decode(bytes);
    } catch {
      return new ControlProtocolError("the line is not UTF-8");
    }
  }
}
