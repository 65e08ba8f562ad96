/**
 * Our protocol's server side over TCP: the TLS listener, the handshake of each connection
 * (TLS, then HELLO/AUTH, mod/native/handshake.ts), and the admission of each authenticated
 * client into the router as a {@linkcode NativeSession} with its PUSH.
 *
 * @module
 */

import { setListenerNoDelay, shutdownTcp } from "../../ffi/socket.ts";
import { formatPeer } from "../core/ip.ts";
import { PreAuthLimiter } from "../core/preauth.ts";
import type { Router } from "../core/router.ts";
import { describeNetwork } from "../core/session.ts";
import { log } from "../log.ts";
import { AuthError } from "../pki.ts";
import { Channel } from "./channel.ts";
import {
  acceptClient,
  type AuthenticatedClient,
  refuse,
  sendPush,
  type ServerTrust,
} from "./handshake.ts";
import { ALPN } from "./messages.ts";
import type { ServerUdp } from "./server_udp.ts";
import { NativeSession } from "./session.ts";
import { FrameError } from "./wire.ts";

const logger = log("server");

/** A connection must finish TLS and AUTH within this time (ms), or it is closed. */
const PRE_AUTH_TIMEOUT_MS = 10_000;
/** Connections in their handshake at once, every source together (mod/core/preauth.ts). */
const MAX_PRE_AUTH = 64;
/** Connections in their handshake from one source (an IPv4 address, an IPv6 /64) at once. */
const MAX_PRE_AUTH_PER_SOURCE = 8;

/** Why the server ended a connection in its handshake: the reason and detail of its refusal. */
type Cause = [reason: string, detail: string];

/** A connection in its handshake, with its place among them (mod/core/preauth.ts). */
class Handshake {
  readonly conn: Deno.TlsConn;
  #channel: Channel | undefined;
  /** Set once TLS is done: from then on close() alone ends the socket. */
  tlsDone = false;
  /** Why the server ended it, the first cause given; undefined while it has not. */
  cause: Cause | undefined;

  constructor(conn: Deno.TlsConn) {
    this.conn = conn;
  }

  /** The framed connection; made once the connection has a place, not for one refused. */
  get channel(): Channel {
    return this.#channel ??= new Channel(this.conn);
  }

  /** Ends the connection; its handshake then fails, and `cause` is what its refusal says. */
  drop(cause?: Cause): void {
    this.cause ??= cause;
    this.channel.close();
    // A TlsConn closed mid-handshake keeps its socket open (ffi/socket.ts says why).
    if (!this.tlsDone) shutdownTcp(this.conn.localAddr, this.conn.remoteAddr);
  }
}

/** Accepts our protocol's clients on TLS listeners (one, or IPv6 and IPv4 on one port). */
export class NativeListener {
  readonly #router: Router;
  readonly #listeners: Deno.TlsListener[];
  readonly #trust: ServerTrust;
  readonly #udp: ServerUdp | string;
  /** Connections still in their handshake, within the caps per source and in all. */
  readonly #preAuth = new PreAuthLimiter<Handshake>({
    perSource: MAX_PRE_AUTH_PER_SOURCE,
    total: MAX_PRE_AUTH,
  });
  #stopped = false;
  readonly #done: Promise<void>;

  /**
   * Serves `listeners`, all on one port; `udp` is the UDP data channel, or why there is none
   * (told to clients that offer one).
   */
  constructor(
    router: Router,
    listeners: Deno.TlsListener[],
    trust: ServerTrust,
    udp: ServerUdp | string,
  ) {
    this.#router = router;
    this.#listeners = listeners;
    this.#trust = trust;
    this.#udp = udp;
    this.#done = Promise.all(listeners.map((l) => this.#acceptLoop(l))).then(() => {});
  }

  /** Where the listeners are bound. */
  get port(): number {
    return this.#listeners[0]!.addr.port;
  }

  /** Number of connections in their handshake now (TLS or AUTH pending), at most 64. */
  get preAuthCount(): number {
    return this.#preAuth.size;
  }

  /** Closes the listener and drops every connection still in its handshake. */
  async stop(): Promise<void> {
    this.#stopped = true;
    for (const listener of this.#listeners) listener.close();
    for (const handshake of this.#preAuth.items()) handshake.drop();
    await this.#done;
  }

  async #acceptLoop(listener: Deno.TlsListener): Promise<void> {
    // Every accepted socket inherits TCP_NODELAY from the listener: no connection needs a
    // lookup of its socket for it (ffi/socket.ts).
    setListenerNoDelay(listener.addr);
    try {
      for await (const conn of listener) {
        const handshake = new Handshake(conn);
        if (this.#place(handshake)) this.#handshake(handshake);
      }
    } catch (error) {
      if (!this.#stopped) logger.error("listener failed: {error}", { error: String(error) });
    }
  }

  /**
   * Gives a new connection its place among those in their handshake (mod/core/preauth.ts),
   * before any TLS work; ends the one it takes the place of, or, when it gets none, itself.
   */
  #place(handshake: Handshake): boolean {
    const { conn } = handshake;
    const admission = this.#preAuth.admit(conn.remoteAddr.hostname, handshake);
    switch (admission.verdict) {
      case "admitted":
        return true;
      case "replaced":
        admission.dropped.drop([
          "busy-source",
          "replaced by a newer connection from the same source " +
          `(${MAX_PRE_AUTH_PER_SOURCE} in their handshake at most per source)`,
        ]);
        return true;
      case "displaced":
        admission.dropped.drop([
          "busy",
          `${MAX_PRE_AUTH} connections are in their handshake, the most of them from this ` +
          "source: its oldest made room for another source's",
        ]);
        return true;
      case "refused": {
        this.#router.stats.refused++;
        const { hostname, port } = conn.remoteAddr;
        this.#router.logRefusal(
          hostname,
          formatPeer(hostname, port),
          "busy",
          `${MAX_PRE_AUTH} connections are in their handshake already, as many from this ` +
            "source as from any other",
        );
        conn.close();
        // Its TLS handshake is pending, so close() alone leaves the socket open (ffi/socket.ts).
        shutdownTcp(conn.localAddr, conn.remoteAddr);
        return false;
      }
    }
  }

  async #handshake(handshake: Handshake): Promise<void> {
    const { conn, channel } = handshake;
    const { hostname } = conn.remoteAddr;
    const peer = formatPeer(hostname, conn.remoteAddr.port);
    const timer = setTimeout(
      () =>
        handshake.drop([
          "timeout",
          `no TLS handshake and AUTH within ${PRE_AUTH_TIMEOUT_MS / 1000} s`,
        ]),
      PRE_AUTH_TIMEOUT_MS,
    );
    try {
      const { alpnProtocol } = await conn.handshake();
      handshake.tlsDone = true;
      if (alpnProtocol !== ALPN) throw new FrameError(`client offered no "${ALPN}" ALPN id`);
      logger.debug("TLS from {peer}", { peer });
      // A revocation made a moment ago must already count for this client.
      await this.#router.checkRevocations();
      const client = await acceptClient(channel, this.#trust);
      this.#admit(channel, client, hostname, peer);
    } catch (error) {
      this.#router.stats.refused++;
      // At stop, every pending handshake is dropped: that is no client's failure.
      if (!this.#stopped) {
        this.#router.logRefusal(hostname, peer, ...(handshake.cause ?? refusal(error)));
      }
      if (error instanceof AuthError) await refuse(channel, error.reason, error.message);
      else if (error instanceof FrameError) await refuse(channel, "protocol", error.message);
      handshake.drop();
    } finally {
      clearTimeout(timer);
      this.#preAuth.release(handshake);
    }
  }

  #admit(channel: Channel, client: AuthenticatedClient, host: string, peer: string): void {
    const router = this.#router;
    if (this.#stopped || router.stopped) {
      channel.close();
      return;
    }
    // Frames carry virtio-net headers when both TUNs have them (mod/core/offload.ts).
    const vnet = client.offload && router.vnet;
    const session = router.admit(
      {
        name: client.name,
        serial: client.serial,
        ...(client.address ? { preferred: client.address } : {}),
      },
      peer,
      host,
      (network) => new NativeSession(router, this.#udp, channel, client, network, vnet, peer),
    ) as NativeSession | undefined;
    if (session === undefined) {
      refuse(channel, "pool-exhausted", "address pool exhausted");
      return;
    }
    const network = session.network;
    sendPush(channel, {
      address: network.address,
      prefix: network.prefix,
      gateway: network.gateway,
      routes: network.routes,
      mtu: network.mtu,
      keepalive: network.keepalive,
      ...(vnet ? { offload: true } : {}),
      ...(network.address6 !== undefined
        ? { address6: network.address6, prefix6: network.prefix6!, gateway6: network.gateway6! }
        : {}),
      ...(network.redirectGateway ? { redirect_gateway: true } : {}),
      ...(network.dns.servers.length + network.dns.domains.length > 0 ? { dns: network.dns } : {}),
    });
    logger.info("{name} connected from {peer}, {addresses}", {
      name: client.name,
      peer,
      addresses: describeNetwork(network),
    });
    session.start();
  }
}

/** What fixes what a TLS client's alert about this server's certificate says. */
const CERTIFICATE_ALERTS = new Map([
  ["UnknownCA", 'the client trusts another CA: give it a profile made here by "vpn client add"'],
  [
    "BadCertificate",
    "the client dialled a name or address that server.crt does not name (those given to " +
    '"vpn init --host"), or cannot use the certificate',
  ],
  [
    "CertificateExpired",
    "server.crt is outside its validity period by the client's clock; check both clocks",
  ],
]);

/**
 * The reason a connection was refused before auth, a short fixed word that keys the refusal
 * log's rate limit, and what to say about it. A TLS error's text comes from rustls and may
 * name what the peer sent: it goes into the detail, escaped by the caller, never into the
 * reason.
 */
function refusal(error: unknown): Cause {
  if (error instanceof AuthError) return [error.reason, error.message];
  if (error instanceof FrameError) return ["protocol", error.message];
  const message = error instanceof Error ? error.message : String(error);
  if (
    error instanceof Deno.errors.UnexpectedEof || error instanceof Deno.errors.ConnectionReset ||
    error instanceof Deno.errors.BrokenPipe
  ) {
    return ["closed", `the client closed the connection before it authenticated (${message})`];
  }
  const alert = /^received fatal alert: (\w+)$/.exec(message)?.[1];
  if (alert !== undefined && (alert === "UnknownCA" || alert.includes("Certificate"))) {
    const why = CERTIFICATE_ALERTS.get(alert) ?? "the client does not accept server.crt";
    return ["server-certificate-rejected", `${why} (TLS: ${message})`];
  }
  if (message === "peer doesn't support any known protocol") {
    return ["protocol", `client offered no "${ALPN}" ALPN id (TLS: ${message})`];
  }
  if (message.startsWith("received corrupt message")) {
    return ["not-tls", `the client does not speak TLS (${message})`];
  }
  return ["tls", `TLS handshake failed: ${message}`];
}
