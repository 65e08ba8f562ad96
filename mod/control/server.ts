/**
 * The server's control socket (PROTOCOL.md, "Control socket"): a Unix socket, mode 0600, in a
 * directory made 0700 where it is missing, that `vpn status`, `vpn client kill` and
 * `vpn reload` talk to.
 *
 * Only the user who started the server and root may use it. The file mode keeps others out of
 * the file; each accepted connection is checked again by the kernel's account of its peer
 * (`SO_PEERCRED`), which holds also where the mode does not (a socket path in a directory others
 * can replace files in, a peer with CAP_DAC_OVERRIDE). Connections are bounded in number, in
 * idle time and in the time each request may take, so that a stuck client or a slow handler
 * cannot pile up.
 *
 * @module
 */

import { dirname } from "node:path";
import { acceptedUnixSockets, type PeerCredentials, peerCredentials } from "../../ffi/unix.ts";
import { log } from "../log.ts";
import { ControlError, controlRequest } from "./client.ts";
import {
  ControlProtocolError,
  type ControlRequest,
  decodeRequest,
  encodeError,
  encodeResult,
  LineReader,
  MAX_REQUEST_LINE,
} from "./protocol.ts";

const logger = log("control");

/** What the control socket's commands call. */
export interface ControlHandlers {
  status(): unknown;
  kill(name: string): Promise<unknown>;
  reload(): Promise<unknown>;
}

/** Limits of {@linkcode ControlServer.start}; the defaults suit an operator's CLI. */
export interface ControlServerOptions {
  /** The server's PKI directory, for messages (default: the socket's directory). */
  dir?: string;
  /** Connections served at once; more are refused. Default 16. */
  maxConnections?: number;
  /** How long a request may take before it is answered with an error. Default 10 s. */
  requestTimeoutMs?: number;
  /** How long a connection may wait between requests before it is closed. Default 30 s. */
  idleTimeoutMs?: number;
}

/** How long the check of an existing socket waits for its server's answer. */
const PROBE_MS = 2000;
/** How long a reply may take to be written before the connection is closed. */
const WRITE_MS = 10_000;
/** How long, and how much, a refused connection is read from before it is closed. */
const DRAIN_MS = 1000;
const DRAIN_BYTES = 1024 * 1024;

const encoder = new TextEncoder();

/** One accepted connection: its socket's inode (to tell it from the next one) and its peer. */
interface Connection {
  conn: Deno.UnixConn;
  inode: string;
  peer: PeerCredentials | undefined;
}

/** A running control socket. */
export class ControlServer {
  /** The socket's path. */
  readonly path: string;
  readonly #listener: Deno.UnixListener;
  readonly #handlers: ControlHandlers;
  readonly #owner: number;
  readonly #max: number;
  readonly #requestMs: number;
  readonly #idleMs: number;
  readonly #connections = new Set<Connection>();
  readonly #accepting: Promise<void>;
  readonly #inode: number | null;
  #stopped = false;

  private constructor(
    path: string,
    listener: Deno.UnixListener,
    handlers: ControlHandlers,
    options: ControlServerOptions,
  ) {
    this.path = path;
    this.#listener = listener;
    this.#handlers = handlers;
    this.#owner = Deno.uid() ?? 0;
    this.#max = options.maxConnections ?? 16;
    this.#requestMs = options.requestTimeoutMs ?? 10_000;
    this.#idleMs = options.idleTimeoutMs ?? 30_000;
    this.#inode = Deno.lstatSync(path).ino;
    this.#accepting = this.#accept();
  }

  /**
   * Listens at `path`. A socket file left by a server that ended is replaced; one whose server
   * answers is not.
   *
   * @throws {Error} "a server already runs on DIR (pid N, socket PATH)", or naming what else is
   *   in the way.
   */
  static async start(
    path: string,
    handlers: ControlHandlers,
    options: ControlServerOptions = {},
  ): Promise<ControlServer> {
    const dir = options.dir ?? dirname(path);
    await ensureDirectory(dirname(path));
    await claim(path, dir);
    // The socket is created 0600 (umask 0177) instead of chmod-ed after bind: no moment when
    // another user could connect. The umask is process-wide, so it is restored at once, in the
    // same synchronous step.
    const umask = Deno.umask(0o177);
    let listener: Deno.UnixListener;
    try {
      listener = Deno.listen({ transport: "unix", path });
    } catch (error) {
      if (error instanceof Deno.errors.AddrInUse) {
        throw new Error(`a server already runs on ${dir} (socket ${path} was taken just now)`);
      }
      throw error;
    } finally {
      Deno.umask(umask);
    }
    logger.debug("control socket {path}", { path });
    return new ControlServer(path, listener, handlers, options);
  }

  /** Connections open now. */
  get connections(): number {
    return this.#connections.size;
  }

  /** Closes the socket and every connection; removes the socket file if it is still ours. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#listener.close();
    for (const { conn } of this.#connections) close(conn);
    await this.#accepting;
    try {
      if ((await Deno.lstat(this.path)).ino === this.#inode) await Deno.remove(this.path);
    } catch (error) {
      if (error instanceof Deno.errors.PermissionDenied) {
        // A server that gave up root may not write the socket's directory: the socket stays,
        // refusing connections, and the next server there replaces it.
        logger.debug("left {path}: {error}", { path: this.path, error: error.message });
      } else if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
  }

  async #accept(): Promise<void> {
    for (;;) {
      let conn: Deno.UnixConn;
      try {
        conn = await this.#listener.accept();
      } catch (error) {
        if (this.#stopped) return;
        // Out of descriptors, say: the socket is kept, and tried again once some are free.
        logger.error("control socket {path}: accept failed: {error}", {
          path: this.path,
          error: (error as Error).message,
        });
        await new Promise((resolve) => setTimeout(resolve, 1000));
        continue;
      }
      // Before the next accept: only then is this connection's socket the one new one.
      const connection = this.#identify(conn);
      this.#connections.add(connection);
      const refusal = this.#refusal(connection);
      const served = refusal === undefined
        ? this.#serve(connection)
        : this.#refuse(connection, refusal);
      served.finally(() => {
        close(conn);
        this.#connections.delete(connection);
      });
    }
  }

  /** The socket just accepted and its peer; no peer when it cannot be told apart. */
  #identify(conn: Deno.UnixConn): Connection {
    const known = new Set([...this.#connections].map((c) => c.inode));
    const fresh = new Map<string, number>();
    for (const [fd, inode] of acceptedUnixSockets(this.path)) {
      if (!known.has(inode)) fresh.set(inode, fd);
    }
    if (fresh.size !== 1) return { conn, inode: "", peer: undefined };
    const [[inode, fd]] = [...fresh] as [[string, number]];
    let peer: PeerCredentials | undefined;
    try {
      peer = peerCredentials(fd);
    } catch {
      peer = undefined; // gone already
    }
    return { conn, inode, peer };
  }

  /** Why `connection` may not talk to us; undefined when it may. */
  #refusal({ peer }: Connection): string | undefined {
    if (this.#connections.size > this.#max) {
      return `too many control connections (${this.#max}); try again in a moment`;
    }
    if (peer === undefined) return "the peer of this connection could not be identified";
    if (peer.uid === 0 || peer.uid === this.#owner) return undefined;
    logger.warn("control socket {path}: refused uid {uid} (pid {pid})", {
      path: this.path,
      uid: peer.uid,
      pid: peer.pid,
    });
    const who = this.#owner === 0 ? "root" : `uid ${this.#owner} (who runs the server) and root`;
    return `uid ${peer.uid} may not use this control socket: only ${who} may; run as ` +
      `${this.#owner === 0 ? "root" : "that user or as root"}`;
  }

  async #refuse({ conn }: Connection, reason: string): Promise<void> {
    if (await this.#write(conn, encodeError(null, reason))) await this.#drain(conn);
  }

  /**
   * Ends our side and reads what the client still sends, for a moment, before the close: Linux
   * resets a Unix connection closed with unread data in it, and the client would get the reset
   * instead of the error line that says why.
   */
  async #drain(conn: Deno.UnixConn): Promise<void> {
    try {
      await conn.closeWrite();
    } catch {
      return; // gone already
    }
    const buffer = new Uint8Array(4096);
    const deadline = Date.now() + DRAIN_MS;
    for (let total = 0; total < DRAIN_BYTES && Date.now() < deadline;) {
      const read = await this.#read(conn, buffer, deadline - Date.now());
      if (read === null) return;
      total += read;
    }
  }

  async #serve({ conn, peer }: Connection): Promise<void> {
    const reader = new LineReader(MAX_REQUEST_LINE);
    const buffer = new Uint8Array(4096);
    for (;;) {
      const read = await this.#read(conn, buffer);
      if (read === null) return;
      let lines;
      try {
        lines = reader.push(buffer.subarray(0, read));
      } catch (error) {
        // Past an overlong line the next one cannot be found with certainty.
        const line = encodeError(null, `${(error as Error).message}; closing`);
        if (await this.#write(conn, line)) await this.#drain(conn);
        return;
      }
      for (const line of lines) {
        if (!await this.#write(conn, await this.#answer(line, peer!))) return;
      }
    }
  }

  /** The next bytes, or null at the end, on an error or after `ms` (the idle time). */
  async #read(
    conn: Deno.UnixConn,
    buffer: Uint8Array,
    ms = this.#idleMs,
  ): Promise<number | null> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      return await Promise.race([
        conn.read(buffer),
        new Promise<null>((resolve) => {
          timer = setTimeout(() => resolve(null), ms);
        }),
      ]);
    } catch {
      return null; // reset by the client, or closed by stop()
    } finally {
      clearTimeout(timer);
    }
  }

  /** Writes `line` whole; false when that failed or took too long (the caller closes). */
  async #write(conn: Deno.UnixConn, line: string): Promise<boolean> {
    const bytes = encoder.encode(line);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const write = (async () => {
      for (let sent = 0; sent < bytes.length;) sent += await conn.write(bytes.subarray(sent));
      return true;
    })();
    try {
      return await Promise.race([
        write,
        new Promise<false>((resolve) => {
          timer = setTimeout(() => resolve(false), WRITE_MS);
        }),
      ]);
    } catch {
      return false;
    } finally {
      clearTimeout(timer);
      write.catch(() => {}); // a write cut short by the close that follows
    }
  }

  /** The reply line to one request line. */
  async #answer(line: string | ControlProtocolError, peer: PeerCredentials): Promise<string> {
    let request: ControlRequest;
    try {
      if (line instanceof ControlProtocolError) throw line;
      request = decodeRequest(line);
    } catch (error) {
      const id = error instanceof ControlProtocolError ? error.id : null;
      return encodeError(id, (error as Error).message);
    }
    const { id, cmd } = request;
    const asked = {
      cmd,
      name: request.cmd === "kill" ? ` ${request.name}` : "",
      uid: peer.uid,
      pid: peer.pid,
    };
    // status is polled (watch vpn status); what changes the server is worth a line at info.
    if (cmd === "status") logger.debug("control: {cmd} from uid {uid} (pid {pid})", asked);
    else logger.info("control: {cmd}{name} from uid {uid} (pid {pid})", asked);
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      const result = await Promise.race([
        this.#run(request),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new Error(`${cmd} did not finish within ${this.#requestMs / 1000} s`)),
            this.#requestMs,
          );
        }),
      ]);
      return encodeResult(id, result);
    } catch (error) {
      return encodeError(id, error instanceof Error ? error.message : String(error));
    } finally {
      clearTimeout(timer);
    }
  }

  async #run(request: ControlRequest): Promise<unknown> {
    switch (request.cmd) {
      case "status":
        return this.#handlers.status();
      case "kill":
        return await this.#handlers.kill(request.name);
      case "reload":
        return await this.#handlers.reload();
    }
  }
}

function close(conn: Deno.UnixConn): void {
  try {
    conn.close();
  } catch { /* closed already */ }
}

/** Creates `dir` 0700 where it is missing (/run/vpn after a boot); an existing one is kept. */
async function ensureDirectory(dir: string): Promise<void> {
  try {
    await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
  } catch (error) {
    if (error instanceof Deno.errors.PermissionDenied) {
      throw new Error(
        `cannot create ${dir} for the control socket: ${error.message}; run as root, or set ` +
          `control.socket in server.yaml to a path this user may create`,
      );
    }
    throw error;
  }
}

/**
 * Makes `path` free for a new socket: nothing there, or a socket file whose server ended (it is
 * removed). Throws when a server answers there, or when something else is in the way.
 */
async function claim(path: string, dir: string): Promise<void> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.lstat(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return;
    throw error;
  }
  if (!info.isSocket) {
    throw new Error(
      `${path} exists and is not a socket; remove it, or set control.socket in ` +
        `${dir}/server.yaml to another path`,
    );
  }
  let status: unknown;
  try {
    status = await controlRequest(path, { cmd: "status" }, PROBE_MS, dir);
  } catch (error) {
    if (error instanceof ControlError && error.reason === "absent") {
      logger.info("replacing the stale control socket {path} of a server that ended", { path });
      await Deno.remove(path);
      return;
    }
    if (error instanceof ControlError && error.reason === "server") {
      // It answered, though not to us (another user's server refusing this one).
      throw new Error(`a server already runs on ${dir} (socket ${path}): ${error.message}`);
    }
    throw new Error(
      `${path} is in use, but not by a server that answers (${(error as Error).message}); ` +
        `stop what listens there, or set control.socket in ${dir}/server.yaml to another path`,
    );
  }
  const pid = (status as { pid?: unknown } | null)?.pid;
  throw new Error(
    `a server already runs on ${dir} (pid ${typeof pid === "number" ? pid : "unknown"}, ` +
      `socket ${path})`,
  );
}
