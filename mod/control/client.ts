/**
 * One request to a server's control socket (PROTOCOL.md, "Control socket"), as `vpn status`,
 * `vpn client kill` and `vpn reload` make it, with errors that say what to do.
 *
 * @module
 */

import { dirname } from "node:path";
import {
  type ControlRequest,
  decodeReply,
  encodeRequest,
  LineReader,
  MAX_REPLY_LINE,
} from "./protocol.ts";

/** Why a request failed. */
export type ControlFailure =
  /** No socket at the path, or nothing listens on it (a stale file). */
  | "absent"
  /** This user may not open the socket or its directory. */
  | "permission"
  /** No complete answer in time. */
  | "timeout"
  /** The server answered with an error. */
  | "server"
  /** The answer was no reply of the protocol, or the connection ended without one. */
  | "protocol";

/** A control request failed; the message names the socket and what to do. */
export class ControlError extends Error {
  readonly reason: ControlFailure;

  constructor(reason: ControlFailure, message: string) {
    super(message);
    this.name = "ControlError";
    this.reason = reason;
  }
}

/** A request without its version and id, which {@linkcode controlRequest} adds. */
export type ControlAsk = { cmd: "status" | "reload" } | { cmd: "kill"; name: string };

/**
 * Sends `request` to the control socket at `path` and returns the server's `result`. `dir` is
 * the server's PKI directory, for the messages (default: the socket's directory). The whole
 * exchange takes at most `timeoutMs`.
 *
 * @throws {ControlError} for no server, no permission, no answer in time, or the server's error.
 */
export async function controlRequest(
  path: string,
  request: ControlAsk,
  timeoutMs: number,
  dir = dirname(path),
): Promise<unknown> {
  const full = { v: 1, id: 1, ...request } as ControlRequest;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let conn: Deno.UnixConn | undefined;
  let expired = false;
  const timedOut = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      expired = true;
      conn?.close();
      reject(
        new ControlError(
          "timeout",
          `the server at ${path} did not answer within ${timeoutMs / 1000} s; its log may ` +
            `say why (journalctl -u vpn, or the terminal of vpn serve --dir ${dir})`,
        ),
      );
    }, timeoutMs);
  });
  try {
    return await Promise.race([
      (async () => {
        conn = await connect(path, dir);
        if (expired) conn.close(); // the exchange below then fails, after the race is decided
        return await exchange(conn, full, path);
      })(),
      timedOut,
    ]);
  } finally {
    clearTimeout(timer);
    try {
      conn?.close();
    } catch { /* closed by the timeout */ }
  }
}

async function connect(path: string, dir: string): Promise<Deno.UnixConn> {
  try {
    return await Deno.connect({ transport: "unix", path });
  } catch (error) {
    if (error instanceof Deno.errors.NotFound || error instanceof Deno.errors.ConnectionRefused) {
      const stale = error instanceof Deno.errors.ConnectionRefused
        ? `; ${path} is left from a server that ended`
        : ` at ${path}`;
      throw new ControlError(
        "absent",
        `no server runs on ${dir} (no control socket${stale}); start it with ` +
          `vpn serve --dir ${dir}`,
      );
    }
    if (error instanceof Deno.errors.PermissionDenied) {
      throw new ControlError("permission", await permissionMessage(path));
    }
    throw error;
  }
}

async function exchange(conn: Deno.UnixConn, request: ControlRequest, path: string) {
  try {
    await conn.write(new TextEncoder().encode(encodeRequest(request)));
  } catch (error) {
    // A server that refuses this peer writes why and closes before reading: the reason waits
    // to be read below.
    if (
      !(error instanceof Deno.errors.BrokenPipe || error instanceof Deno.errors.ConnectionReset)
    ) {
      throw error;
    }
  }
  const reader = new LineReader(MAX_REPLY_LINE);
  const buffer = new Uint8Array(64 * 1024);
  for (;;) {
    let read: number | null;
    try {
      read = await conn.read(buffer);
    } catch (error) {
      if (error instanceof Deno.errors.BadResource) throw error; // closed by the timeout
      read = null; // reset by the server
    }
    if (read === null) {
      throw new ControlError(
        "protocol",
        `the server at ${path} closed the connection without an answer`,
      );
    }
    let lines;
    try {
      lines = reader.push(buffer.subarray(0, read));
    } catch (error) {
      throw new ControlError("protocol", `the answer of ${path}: ${(error as Error).message}`);
    }
    for (const line of lines) {
      let reply;
      try {
        if (line instanceof Error) throw line;
        reply = decodeReply(line);
      } catch (error) {
        throw new ControlError("protocol", `the answer of ${path}: ${(error as Error).message}`);
      }
      if (!reply.ok) throw new ControlError("server", reply.error);
      if (reply.id === request.id) return reply.result;
    }
  }
}

/** Who owns the socket (or the directory that shut this user out) and whom to run as. */
async function permissionMessage(path: string): Promise<string> {
  const me = Deno.uid();
  for (const [target, what] of [[path, "the control socket"], [dirname(path), "its directory"]]) {
    try {
      const info = await Deno.lstat(target!);
      const owner = await userName(info.uid);
      const mode = ((info.mode ?? 0) & 0o777).toString(8).padStart(4, "0");
      return `permission denied: ${target === path ? "" : `${path}: `}${what} ${target} is ` +
        `${owner}'s (mode ${mode}) and uid ${me} may not use it; run this as ` +
        `${info.uid === 0 ? "root" : `${owner} or as root`} (sudo)`;
    } catch {
      // Not visible to this user either: try the directory.
    }
  }
  return `permission denied on the control socket ${path}; run this as the user who runs ` +
    `vpn serve, or as root (sudo)`;
}

/** The name of user `uid` from /etc/passwd, else "uid N". */
async function userName(uid: number | null): Promise<string> {
  if (uid === null) return "another user";
  try {
    for (const line of (await Deno.readTextFile("/etc/passwd")).split("\n")) {
      const [name, , id] = line.split(":");
      if (id === String(uid) && name) return name;
    }
  } catch { /* no passwd file: the number it is */ }
  return `uid ${uid}`;
}
