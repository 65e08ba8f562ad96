/**
 * The VPN client: one TUN that outlives reconnects, and one TLS session at a time.
 *
 * Outbound, TUN → server (`#tunToServer`): one awaited batch read from the TUN; every packet is
 * queued on the current session's channel (dropped while there is none), and the batch leaves
 * in one TLS write.
 *
 * Inbound, server → TUN (`#runSession`): one TLS read; its DATA frames are collected and
 * written into the TUN in one batch; PING is answered, BYE and ERROR end the session.
 *
 * After a loss it reconnects with exponential backoff (1 s doubling to 60 s, with jitter) and
 * asks for its old address back. A refusal of its certificate ends the client (exit 1).
 *
 * @module
 */

import { LinuxTun, type TunDevice } from "../ffi/tun.ts";
import { Netlink } from "../ffi/netlink.ts";
import { Channel } from "./channel.ts";
import type { ClientProfile } from "./config.ts";
import { authenticate, RefusedError } from "./handshake.ts";
import { log } from "./log.ts";
import {
  ALPN,
  decodeBye,
  decodeError,
  encodeMessage,
  type ErrorReason,
  type Push,
} from "./messages.ts";
import { FrameError, FrameType, MAX_PAYLOAD } from "./wire.ts";

const logger = log("client");

const CONNECT_TIMEOUT_MS = 10_000;
const BACKOFF_MIN_S = 1;
const BACKOFF_MAX_S = 60;
const BATCH = 64;

/**
 * Refusals that no retry can fix: the certificate itself is not accepted, or another client
 * with the same certificate took over the session (retrying would only push it out again).
 */
const FATAL: ReadonlySet<ErrorReason> = new Set([
  "replaced",
  "unknown-ca",
  "expired",
  "not-yet-valid",
  "not-client",
  "revoked",
  "bad-signature",
  "bad-certificate",
]);

/** What the client runs with. */
export interface ClientOptions {
  profile: ClientProfile;
  /** Server host and port (from the profile, or overridden on the command line). */
  host: string;
  port: number;
  /** TUN name or pattern; default the profile's. */
  dev?: string;
  /** A TUN to use as is (tests); by default a Linux TUN is created and configured. */
  tun?: TunDevice;
}

/** The client ended for good; `message` says why and what to do. */
export class ClientError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ClientError";
  }
}

/** A VPN client that keeps its tunnel up until stopped. */
export class Client {
  /** The address the server gave, once connected. */
  address: string | undefined;

  readonly #options: ClientOptions;
  #tun: TunDevice | undefined;
  #tunIndex = 0;
  #push: Push | undefined;
  /** The authenticated session's channel: where TUN packets go. */
  #channel: Channel | undefined;
  /** A channel still in its handshake. */
  #connecting: Channel | undefined;
  #stopped = false;
  #wake: (() => void) | undefined;
  #pump: Promise<void> | undefined;

  constructor(options: ClientOptions) {
    this.#options = options;
  }

  /** True while a session is up: packets read from the TUN go to the server. */
  get connected(): boolean {
    return this.#channel !== undefined;
  }

  /** Connects and keeps the tunnel up until {@linkcode stop}; throws ClientError if refused. */
  async run(): Promise<void> {
    let failures = 0;
    try {
      while (!this.#stopped) {
        try {
          const channel = await this.#connect();
          failures = 0;
          await this.#runSession(channel);
        } catch (error) {
          if (error instanceof RefusedError && FATAL.has(error.reason)) {
            throw new ClientError(`the server refused this client: ${error.message}`);
          }
          if (isCertificateError(error)) {
            throw new ClientError(
              `the server's certificate is not trusted by this profile (${
                (error as Error).message
              }); check the profile's "ca" and the address dialled`,
            );
          }
          if (this.#stopped) break;
          logger.warn("connection to {host}:{port} failed: {error}", {
            host: this.#options.host,
            port: this.#options.port,
            error: (error as Error).message,
          });
        }
        if (this.#stopped) break;
        const delay = backoff(failures++);
        logger.info("reconnecting in {delay} s", { delay: delay.toFixed(1) });
        await this.#sleep(delay * 1000);
      }
    } finally {
      this.#tun?.close();
      await this.#pump;
    }
  }

  /** Says goodbye to the server and ends {@linkcode run}; the TUN and its routes go away. */
  async stop(reason = "client shutting down"): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#wake?.();
    this.#connecting?.close();
    await this.#channel?.closeWith(FrameType.BYE, encodeMessage({ reason }));
  }

  async #connect(): Promise<Channel> {
    const { host, port, profile } = this.#options;
    const conn = await withTimeout(
      Deno.connectTls({ hostname: host, port, caCerts: [profile.ca], alpnProtocols: [ALPN] }),
      CONNECT_TIMEOUT_MS,
      `TCP/TLS connect to ${host}:${port}`,
    );
    const channel = new Channel(conn);
    // Not yet #channel: TUN packets must not go out before AUTH. stop() still reaches it.
    this.#connecting = channel;
    try {
      await withTimeout(conn.handshake(), CONNECT_TIMEOUT_MS, "TLS handshake");
      const credentials = {
        certPem: profile.cert,
        keyPem: profile.key,
        serverName: host.replace(/^\[(.*)\]$/, "$1"),
        ...(this.address ? { address: this.address } : {}),
      };
      const push = await withTimeout(
        authenticate(channel, credentials),
        CONNECT_TIMEOUT_MS,
        "authentication",
      );
      this.#configure(push);
      this.#channel = channel;
      return channel;
    } catch (error) {
      channel.close();
      throw error;
    } finally {
      this.#connecting = undefined;
    }
  }

  /** Creates the TUN on the first session; later sessions only change what changed. */
  #configure(push: Push): void {
    if (this.#tun === undefined) {
      const tun = this.#options.tun ??
        LinuxTun.create({ name: this.#options.dev ?? this.#options.profile.dev });
      this.#tun = tun;
      this.#pump = this.#tunToServer(tun);
    }
    if (this.#options.tun === undefined) this.#configureLinux(push);
    this.#push = push;
    this.address = push.address;
    logger.info(
      "connected: address {address}/{prefix}, gateway {gateway}, routes {routes}, MTU {mtu}",
      {
        address: push.address,
        prefix: push.prefix,
        gateway: push.gateway,
        routes: push.routes.join(", ") || "none",
        mtu: push.mtu,
      },
    );
  }

  #configureLinux(push: Push): void {
    using nl = Netlink.open();
    const old = this.#push;
    if (old === undefined) this.#tunIndex = nl.linkIndex(this.#tun!.name);
    const index = this.#tunIndex;
    if (old?.mtu !== push.mtu) nl.setMtu(index, push.mtu);
    if (old && (old.address !== push.address || old.prefix !== push.prefix)) {
      nl.removeAddress(index, `${old.address}/${old.prefix}`);
    }
    if (!old || old.address !== push.address || old.prefix !== push.prefix) {
      nl.addAddress(index, `${push.address}/${push.prefix}`);
    }
    nl.setLinkUp(index);
    for (const route of old?.routes ?? []) {
      if (!push.routes.includes(route)) nl.removeRoute({ destination: route, ifindex: index });
    }
    for (const route of push.routes) {
      if (!old?.routes.includes(route)) nl.addRoute({ destination: route, ifindex: index });
    }
  }

  async #runSession(channel: Channel): Promise<void> {
    const tun = this.#tun!;
    const { interval, timeout } = this.#push!.keepalive;
    const toTun: Uint8Array[] = [];
    let count = 0;
    let ended: string | undefined;
    const keepalive = setInterval(() => {
      if (performance.now() - channel.lastReceived > timeout * 1000) {
        ended = `no data from the server for ${timeout} s`;
        channel.close();
      } else channel.sendControl(FrameType.PING);
    }, interval * 1000);
    try {
      await channel.readFrames((type, buffer, start, end) => {
        switch (type) {
          case FrameType.DATA:
            toTun[count++] = buffer.subarray(start, end);
            return;
          case FrameType.PING:
            channel.sendControl(FrameType.PONG, buffer.slice(start, end));
            return;
          case FrameType.PONG:
            return;
          case FrameType.BYE:
            ended = `server said goodbye: ${decodeBye(buffer.subarray(start, end)).reason}`;
            channel.close();
            return;
          case FrameType.ERROR: {
            const error = decodeError(buffer.subarray(start, end));
            channel.close();
            throw new RefusedError(error);
          }
          default:
            throw new FrameError(`unexpected frame type ${type} after PUSH`);
        }
      }, () => {
        if (count > 0) tun.write(toTun, count);
        count = 0;
      });
    } catch (error) {
      if (ended === undefined) throw error;
    } finally {
      clearInterval(keepalive);
      channel.close();
      if (this.#channel === channel) this.#channel = undefined;
    }
    if (!this.#stopped) {
      logger.warn("session ended: {reason}", { reason: ended ?? "connection closed" });
    }
  }

  async #tunToServer(tun: TunDevice): Promise<void> {
    const bufs = Array.from({ length: BATCH }, () => new Uint8Array(MAX_PAYLOAD));
    const sizes = new Array<number>(BATCH).fill(0);
    try {
      for (let n; (n = await tun.read(bufs, sizes)) > 0;) {
        const channel = this.#channel;
        if (channel === undefined) continue; // between sessions: dropped, like an unplugged cable
        for (let i = 0; i < n; i++) channel.queueData(bufs[i]!, sizes[i]!);
        channel.flush();
      }
    } catch (error) {
      if (!this.#stopped) logger.error("TUN read failed: {error}", { error: String(error) });
    }
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.#wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }
}

/** Seconds to wait after `failures` failed attempts in a row: 1, 2, 4 ... 60, less up to 25%. */
export function backoff(failures: number, random = Math.random()): number {
  const ceiling = Math.min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** failures);
  return ceiling * (1 - 0.25 * random);
}

function isCertificateError(error: unknown): boolean {
  return error instanceof Error &&
    /invalid peer certificate|certificate not valid for name/i.test(error.message);
}

async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms / 1000} s`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
