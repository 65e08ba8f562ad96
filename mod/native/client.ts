/**
 * The VPN client: one TUN that outlives reconnects, one TLS session at a time, and beside it
 * the UDP data channel when the path allows (mod/native/client_udp.ts).
 *
 * Outbound, TUN → server (`#tunToServer`):
 *   1. one awaited batch read from the TUN (dropped while there is no session, like an
 *      unplugged cable);
 *   2. while UDP is alive, each packet is cut to the MTU where needed and sealed into the
 *      datagram batch (mod/core/offload.ts, mod/native/datagram.ts);
 *   3. otherwise it is queued on the TLS channel, whole when both ends have offload; a full
 *      buffer waits for the write in flight instead of dropping (this is the only session);
 *   4. the batch leaves in one `sendmmsg` or one TLS write.
 *
 * Inbound, server → TUN (`#runSession` for TLS frames, `ClientUdp` for datagrams, both into
 * `fromServer`): TCP segments are joined into super-packets when the TUN has offload, and
 * each read's packets go into the TUN in one batch; PING is answered, BYE and ERROR end the
 * session, REKEY and REKEY_DONE change the UDP keys.
 *
 * After a loss it reconnects with exponential backoff (1 s doubling to 60 s, with jitter) and
 * asks for its old address back. A refusal of its certificate ends the client (exit 1).
 *
 * What a PUSH sets up beyond the TUN (a full tunnel's host route to the server, DNS) goes
 * through mod/system/host_changes.ts, which records it so that exit, or the next start after a
 * SIGKILL, undoes it; the split default routes live on the TUN and go with it.
 *
 * @module
 */

import { cryptoUnavailable } from "../../ffi/crypto.ts";
import { Netlink } from "../../ffi/netlink.ts";
import { LinuxTun, type TunDevice } from "../../ffi/tun.ts";
import { Channel, type ChannelStats } from "./channel.ts";
import type { ClientProfile, Proto } from "../config.ts";
import { ClientUdp, type PacketSink } from "./client_udp.ts";
import { KeyHalf } from "./datagram.ts";
import { formatPeer, peerHost } from "../core/ip.ts";
import { Coalescer, Segmenter, validVnetHeader } from "../core/offload.ts";
import { authenticate, RefusedError } from "./handshake.ts";
import { certificateCommonName, serverIdentityName } from "../pki.ts";
import { BatchFailures, escapeText, log } from "../log.ts";
import { HostChanges } from "../system/host_changes.ts";
import { becomeUser, type UserEntry } from "../system/privileges.ts";
import {
  ALPN,
  decodeBye,
  decodeError,
  decodeRekey,
  decodeUdpAccept,
  decodeUdpRefuse,
  encodeMessage,
  type ErrorReason,
  type Push,
  UDP_CIPHERS,
  type UdpAccept,
  type UdpCipher,
} from "./messages.ts";
import { FrameError, FrameType, MAX_PAYLOAD } from "./wire.ts";

const logger = log("client");

const CONNECT_TIMEOUT_MS = 10_000;
const BACKOFF_MIN_S = 1;
const BACKOFF_MAX_S = 60;
const BATCH = 64;
/** How long `auto` and `udp` wait for the first answer over UDP (ms). */
const UDP_PROBE_MS = 2000;

/**
 * Refusals that no retry can fix, and what to do about each: the certificate itself is not
 * accepted, or another client with the same certificate took over the session (retrying would
 * only push it out again). NAME becomes the profile's client name. A Map, because the reason
 * comes from the server: an object would answer "constructor" too.
 */
const NEXT_STEP: ReadonlyMap<ErrorReason, string> = new Map([
  [
    "revoked",
    "This profile's certificate was revoked on the server: ask the server's operator for a new " +
    "profile (`vpn client add NAME` on the server).",
  ],
  [
    "replaced",
    "Another device connected with this same profile and took this session over: give each " +
    "device its own profile (`vpn client add` with a name per device, on the server).",
  ],
  [
    "unknown-ca",
    "The profile's certificate is from another server's CA: get a profile from this server " +
    "(`vpn client add NAME` on it).",
  ],
  [
    "expired",
    "The profile's certificate has expired: ask the server's operator for a new profile " +
    "(`vpn client revoke NAME`, then `vpn client add NAME`, on the server).",
  ],
  [
    "not-yet-valid",
    "The profile's certificate is not valid yet: check the clock of this machine and of the " +
    "server.",
  ],
  [
    "not-client",
    "The profile's certificate is not one for a client: use a profile written by " +
    "`vpn client add NAME` on the server.",
  ],
  [
    "bad-signature",
    "The profile's key does not belong to its certificate, or the server does not answer to " +
    "the name dialled: use the profile as `vpn client add` wrote it, and dial its remote.",
  ],
  [
    "bad-certificate",
    "The profile's certificate cannot be used: get a new profile (`vpn client add NAME` on the " +
    "server).",
  ],
]);

/** What the client runs with. */
export interface ClientOptions {
  profile: ClientProfile;
  /** Server host (a name or an IP, IPv6 without brackets: see `parseRemote`) and port. */
  host: string;
  port: number;
  /** TUN name or pattern; default the profile's. */
  dev?: string;
  /** How data travels: `auto` (UDP when it works, else TLS), `udp` (or fail), `tcp`. Default the profile's. */
  proto?: Proto;
  /** A TUN to use as is (tests); by default a Linux TUN is created and configured. */
  tun?: TunDevice;
  /** Ask for TUN segmentation offload (`IFF_VNET_HDR`). Default true. */
  offload?: boolean;
  /** The one AEAD to offer for the UDP data channel; default both, AES-256-GCM first. */
  cipher?: UdpCipher;
  /** Apply the DNS the server pushes; false is `--no-dns`. Default true. */
  dns?: boolean;
  /** Where the record of host changes is kept (tests); default HostChanges' own. */
  stateDir?: string;
  /**
   * Whom to become once the first session is set up, when it changed nothing outside the TUN
   * (mod/system/privileges.ts): routes and addresses on the TUN need CAP_NET_ADMIN alone,
   * which is kept; putting back a host route or DNS at exit needs root.
   */
  user?: UserEntry;
}

/** The split default routes of a full tunnel: more specific than any default, so they win. */
const SPLIT_DEFAULT4 = ["0.0.0.0/1", "128.0.0.0/1"];
const SPLIT_DEFAULT6 = ["::/1", "8000::/1"];

/** The client ended for good; `message` says why and what to do. */
export class ClientError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ClientError";
  }
}

/** A VPN client that keeps its tunnel up until stopped. */
export class Client implements PacketSink {
  /** The address the server gave, once connected. */
  address: string | undefined;
  /** Packets from the server dropped for a virtio-net header no kernel writes (mod/core/offload.ts). */
  badVnet = 0;

  readonly #options: ClientOptions;
  #tun: TunDevice | undefined;
  #tunIndex = 0;
  #push: Push | undefined;
  /** The host changes of a Linux TUN this client made itself (none for an injected TUN). */
  #host: HostChanges | undefined;
  /** Whom to become after the first session's set-up; cleared once that is decided. */
  #becomeUser: UserEntry | undefined;
  /** Who this client became: it may no longer change anything outside its TUN. */
  #became: string | undefined;
  /** Routes on the TUN that this client added and that are there: a reconnect diffs them. */
  readonly #routes = new Set<string>();
  /** The IPv6 address on the TUN (address6/prefix6), once added. */
  #address6: string | undefined;
  /** The server IP the host route leads to, once added (or found on-link). */
  #hostRoute: string | undefined;
  /** The DNS settings applied (JSON of servers, domains and default route), once applied. */
  #dnsApplied: string | undefined;
  /** The authenticated session's channel: where TUN packets go. */
  #channel: Channel | undefined;
  /** A channel still in its handshake. */
  #connecting: Channel | undefined;
  /** The UDP data channel of the current session, once the server accepted it. */
  #udp: ClientUdp | undefined;
  /** The server's IP as the TLS connection saw it: where datagrams go. */
  #serverIp = "";
  /** Whether DATA frames and datagrams of the current session carry virtio-net headers. */
  #vnet = false;
  /** Converts packets between the TUN's encoding and the session's (mod/core/offload.ts). */
  readonly #segmenter = new Segmenter();
  /** The inbound batch for a TUN without offload. */
  readonly #toTun: Uint8Array[] = [];
  #toTunCount = 0;
  /** With offload, joins inbound TCP segments into super-packets for the TUN (GRO). */
  #coalescer: Coalescer | undefined;
  #stopped = false;
  /** Cancels the TCP connect in progress. */
  #dialing: AbortController | undefined;
  #wake: (() => void) | undefined;
  #pump: Promise<void> | undefined;
  /** The byte counts of every session of this run, logged when it ends. */
  readonly #totals: Traffic = { tlsIn: 0, tlsOut: 0, dropped: 0, udpIn: 0, udpOut: 0 };
  #sessions = 0;

  constructor(options: ClientOptions) {
    this.#options = options;
    this.#becomeUser = options.user;
  }

  /** True while a session is up: packets read from the TUN go to the server. */
  get connected(): boolean {
    return this.#channel !== undefined;
  }

  /** Connects and keeps the tunnel up until {@linkcode stop}; throws ClientError if refused. */
  async run(): Promise<void> {
    let failures = 0;
    // The TUN first: a missing privilege fails at once, and AUTH can say what the TUN takes.
    const tun = this.#options.tun ??
      LinuxTun.create({
        name: this.#options.dev ?? this.#options.profile.dev,
        offload: this.#options.offload !== false,
      });
    this.#tun = tun;
    if (tun.vnetHdr) this.#coalescer = new Coalescer((p, n) => tun.write(p, n));
    this.#pump = this.#tunToServer(tun);
    try {
      // Also undoes what a client of this TUN killed before its exit left behind.
      if (this.#options.tun === undefined) {
        try {
          this.#host = HostChanges.open(
            tun.name,
            this.#options.stateDir === undefined ? {} : { stateDir: this.#options.stateDir },
          );
        } catch (error) {
          throw new ClientError((error as Error).message);
        }
      }
      while (!this.#stopped) {
        try {
          const channel = await this.#connect();
          failures = 0;
          await this.#runSession(channel);
        } catch (error) {
          if (error instanceof ClientError) throw error;
          const next = error instanceof RefusedError ? NEXT_STEP.get(error.reason) : undefined;
          if (next !== undefined) {
            throw new ClientError(
              `the server refused this client: ${escapeText((error as Error).message)}. ${
                next.replaceAll("NAME", certificateCommonName(this.#options.profile.cert) ?? "NAME")
              }`,
            );
          }
          if (isCertificateError(error)) {
            throw new ClientError(
              `the server's certificate is not trusted by this profile (${
                (error as Error).message
              }); check the profile's "ca" and the address dialled, and that the server runs ` +
                `this version's "vpn serve" (it adds the name this client verifies)`,
            );
          }
          if (this.#stopped) break;
          logger.warn("connection to {server} failed: {error}", {
            server: formatPeer(this.#options.host, this.#options.port),
            // A refusal's message comes from the server.
            error: escapeText((error as Error).message),
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
      // After the TUN: its split routes are gone with it, so no packet follows the default
      // route again before the host route is gone too.
      try {
        this.#host?.undo();
      } catch (error) {
        logger.error("could not undo the host route or DNS of this client: {error}", {
          error: String(error),
        });
      }
      logger.info(`totals of {sessions} session(s): ${TRAFFIC}`, {
        sessions: this.#sessions,
        ...this.#totals,
      });
    }
  }

  /** Says goodbye to the server and ends {@linkcode run}; the TUN and its routes go away. */
  async stop(reason = "client shutting down"): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#wake?.();
    this.#dialing?.abort(new Error("client stopped"));
    this.#connecting?.close();
    await this.#channel?.closeWith(FrameType.BYE, encodeMessage({ reason }));
  }

  async #connect(): Promise<Channel> {
    const { host, port, profile } = this.#options;
    // Deno's TLS also trusts its built-in public roots, which may certify `host`: verifying
    // the name that only the profile's CA issues leaves the profile's CA as the only anchor.
    const identity = await serverIdentityName(profile.ca);
    const tcp = await this.#dial(host, port);
    // Nagle's algorithm would hold back a small frame (a keepalive, a TCP ACK of the inner
    // traffic) behind unacknowledged data; set here, as the TlsConn has no setNoDelay().
    tcp.setNoDelay(true);
    // Only wraps the socket: the TLS handshake happens below, where stop() can close it.
    const conn = await Deno.startTls(tcp, {
      hostname: identity,
      caCerts: [profile.ca],
      alpnProtocols: [ALPN],
    });
    this.#serverIp = conn.remoteAddr.hostname;
    const channel = new Channel(conn);
    // Not yet #channel: TUN packets must not go out before AUTH. stop() still reaches it.
    this.#connecting = channel;
    try {
      // stop() during startTls found neither a connect to abort nor a channel to close.
      if (this.#stopped) throw new Error("client stopped");
      const { alpnProtocol } = await withTimeout(
        conn.handshake(),
        CONNECT_TIMEOUT_MS,
        "TLS handshake",
      );
      // PROTOCOL.md: a server that did not choose "vpn/1" speaks something else.
      if (alpnProtocol !== ALPN) {
        throw new FrameError(`the server chose no "${ALPN}" ALPN id; it is not a vpn server`);
      }
      const credentials = {
        certPem: profile.cert,
        keyPem: profile.key,
        serverName: identity,
        offload: this.#tun!.vnetHdr,
        ...(this.address ? { address: this.address } : {}),
      };
      const push = await withTimeout(
        authenticate(channel, credentials),
        CONNECT_TIMEOUT_MS,
        "authentication",
      );
      this.#configure(push);
      this.#giveUpRoot();
      this.#channel = channel;
      return channel;
    } catch (error) {
      channel.close();
      throw error;
    } finally {
      this.#connecting = undefined;
    }
  }

  /**
   * The TCP connection to the server. A signal cancels the connect itself (stop(), or the
   * timeout), where losing a race would leave it pending: a dropped SYN is retried for minutes.
   */
  async #dial(host: string, port: number): Promise<Deno.TcpConn> {
    const dialing = new AbortController();
    this.#dialing = dialing;
    const timedOut = new Error(
      `TCP connect to ${formatPeer(host, port)} timed out after ${CONNECT_TIMEOUT_MS / 1000} s`,
    );
    const timer = setTimeout(() => dialing.abort(timedOut), CONNECT_TIMEOUT_MS);
    try {
      return await Deno.connect({ hostname: host, port, signal: dialing.signal });
    } finally {
      clearTimeout(timer);
      this.#dialing = undefined;
    }
  }

  /** Sets the TUN up from the first PUSH; later sessions only change what changed. */
  #configure(push: Push): void {
    // Without its host route a full tunnel is left out, and the line below must not claim it.
    const fullTunnel = this.#options.tun === undefined
      ? this.#configureLinux(push)
      : push.redirect_gateway === true;
    this.#vnet = push.offload === true;
    this.#push = push;
    this.address = push.address;
    const dns = push.dns?.servers.length
      ? `, DNS ${push.dns.servers.join(" ")}` +
        (push.dns.domains.length > 0 ? ` (${push.dns.domains.join(" ")})` : "") +
        (this.#options.dns === false ? " not applied (--no-dns)" : "")
      : "";
    logger.info(
      "connected: address {address}/{prefix}{address6}, gateway {gateway}, routes {routes}, " +
        "MTU {mtu}{redirect}{dns}",
      {
        address: push.address,
        prefix: push.prefix,
        address6: push.address6 === undefined ? "" : `, IPv6 ${push.address6}/${push.prefix6}`,
        gateway: push.gateway,
        routes: push.routes.join(", ") || "none",
        mtu: push.mtu,
        redirect: fullTunnel ? ", full tunnel" : "",
        dns,
      },
    );
  }

  /**
   * The TUN's MTU and addresses, the routes, the host route and DNS of `push`. The IPv4
   * address is the tunnel: failing it fails the session. Whatever else fails is said and
   * left out, and the tunnel stays up without it; the next session tries it again. True when
   * the full tunnel is in place.
   */
  #configureLinux(push: Push): boolean {
    using nl = Netlink.open();
    const old = this.#push;
    if (old === undefined) this.#tunIndex = nl.linkIndex(this.#tun!.name);
    const index = this.#tunIndex;
    if (old?.mtu !== push.mtu) nl.setMtu(index, push.mtu);
    // The new address before the old one goes: a TUN left without an IPv4 address for a
    // moment loses every IPv4 route on it, which #routes would still count as there.
    if (!old || old.address !== push.address || old.prefix !== push.prefix) {
      nl.addAddress(index, `${push.address}/${push.prefix}`);
    }
    if (old && (old.address !== push.address || old.prefix !== push.prefix)) {
      nl.removeAddress(index, `${old.address}/${old.prefix}`);
    }
    this.#configureAddress6(nl, push);
    nl.setLinkUp(index);
    const redirect = push.redirect_gateway === true && this.#routeToServer(push);
    if (push.redirect_gateway !== true && this.#hostRoute !== undefined) {
      this.#hostRoute = undefined;
      this.#attempt(
        "remove the host route to the server",
        "it",
        () => this.#hostChanges().removeRouteToServer(),
      );
    }
    const has6 = this.#address6 !== undefined;
    const wanted = new Set([
      ...push.routes.filter((route) => has6 || !route.includes(":")),
      ...(redirect ? SPLIT_DEFAULT4 : []),
      ...(redirect && has6 ? SPLIT_DEFAULT6 : []),
    ]);
    for (const route of this.#routes) {
      if (wanted.has(route)) continue;
      this.#routes.delete(route);
      this.#attempt(
        `remove the route to ${route} from the tunnel`,
        "any change to it",
        () => nl.removeRoute({ destination: route, ifindex: index }),
      );
    }
    for (const route of wanted) {
      if (this.#routes.has(route)) continue;
      const added = this.#attempt(
        `add the route to ${route} through the tunnel`,
        "it",
        () => nl.addRoute({ destination: route, ifindex: index }),
      );
      if (added) this.#routes.add(route);
    }
    this.#configureDns(push, redirect);
    return redirect;
  }

  /** Puts the PUSH's IPv6 address on the TUN in place of the last one, or says why not. */
  #configureAddress6(nl: Netlink, push: Push): void {
    const address6 = push.address6 === undefined ? undefined : `${push.address6}/${push.prefix6}`;
    if (this.#address6 === address6) return;
    const old = this.#address6;
    if (old !== undefined) {
      this.#address6 = undefined;
      this.#attempt(
        `remove ${old} from the tunnel`,
        "any change to it",
        () => nl.removeAddress(this.#tunIndex, old),
      );
    }
    if (address6 === undefined) return;
    const added = this.#attempt(
      `add the IPv6 address ${address6} to the tunnel (is IPv6 off on this machine?)`,
      "IPv6",
      () => nl.addAddress(this.#tunIndex, address6),
    );
    if (added) this.#address6 = address6;
  }

  /**
   * The host route that keeps the server reached the old way once the split default routes
   * take all else. False when it cannot be had: then the full tunnel is left out, as the
   * tunnel's own packets would go into the tunnel.
   */
  #routeToServer(push: Push): boolean {
    // A socket of the IPv6 family names an IPv4 server ::ffff:a.b.c.d.
    const server = peerHost(this.#serverIp);
    if (this.#hostRoute === server) return true;
    if (this.#hostRoute !== undefined) {
      this.#hostRoute = undefined;
      this.#attempt(
        "remove the host route to the server's former address",
        "any change to it",
        () => this.#hostChanges().removeRouteToServer(),
      );
    }
    return this.#attempt(
      `add a host route to the server ${server}`,
      `the full tunnel (only the pushed routes, ${
        push.routes.join(", ") || "none"
      }, go through it)`,
      () => {
        const how = this.#hostChanges().routeToServer(server);
        logger.info("host route to the server: {how}", {
          how: how ?? `none needed, ${server} is on a link of this machine`,
        });
        this.#hostRoute = server;
      },
    );
  }

  /** Applies the pushed DNS unless `--no-dns`, after clearing what an earlier session applied. */
  #configureDns(push: Push, defaultRoute: boolean): void {
    const dns = this.#options.dns !== false && push.dns !== undefined &&
        push.dns.servers.length > 0
      ? push.dns
      : undefined;
    const wanted = dns === undefined ? undefined : JSON.stringify([dns, defaultRoute]);
    if (wanted === this.#dnsApplied) return;
    if (this.#dnsApplied !== undefined) {
      this.#dnsApplied = undefined;
      this.#attempt(
        "put this machine's DNS back as it was",
        "any change to it",
        () => this.#hostChanges().clearDns(),
      );
    }
    if (dns === undefined) return;
    this.#attempt(
      `apply the pushed DNS servers ${dns.servers.join(" ")}`,
      "them (names resolve as they did before)",
      () => {
        const how = this.#hostChanges().setDns(this.#tun!.name, dns, defaultRoute);
        logger.info("DNS: {how}", { how });
        this.#dnsApplied = wanted;
      },
    );
  }

  /** The record of changes outside the TUN; none to be had once this client gave up root. */
  #hostChanges(): HostChanges {
    if (this.#became !== undefined) {
      throw new Error(
        `this client runs as ${this.#became} since its first session and may not change ` +
          `this machine's routes or DNS; run vpn connect --user root where the server pushes them`,
      );
    }
    return this.#host!;
  }

  /**
   * After the first session's set-up, becomes the user asked for, unless a host route or DNS
   * was changed: putting those back at exit (and the record of them) needs root.
   *
   * @throws {ClientError} when the switch fails: the client does not go on as root instead.
   */
  #giveUpRoot(): void {
    const user = this.#becomeUser;
    this.#becomeUser = undefined;
    if (user === undefined || this.#host === undefined) return;
    const changed = [
      ...(this.#hostRoute !== undefined ? ["a host route to the server"] : []),
      ...(this.#dnsApplied !== undefined ? ["DNS"] : []),
    ];
    if (changed.length > 0) {
      logger.info("keeps running as root: it changed {changed}, to put back at exit", {
        changed: changed.join(" and "),
      });
      return;
    }
    try {
      // Nothing to put back: only the record goes, while this client may still remove it.
      this.#host.undo();
      this.#host = undefined;
      becomeUser(user, "--user");
    } catch (error) {
      throw new ClientError((error as Error).message);
    }
    this.#became = user.name;
  }

  /**
   * Runs one host change; a failure is a warning that says `what` failed and that the tunnel
   * stays up `without` it, and false.
   */
  #attempt(what: string, without: string, change: () => void): boolean {
    try {
      change();
      return true;
    } catch (error) {
      logger.warn("could not {what}: {error}; the tunnel stays up without {without}", {
        what,
        error: String(error),
        without,
      });
      return false;
    }
  }

  async #runSession(channel: Channel): Promise<void> {
    const { interval, timeout } = this.#push!.keepalive;
    let ended: string | undefined;
    let fatal: ClientError | undefined;
    const fail = (error: ClientError) => {
      fatal = error;
      channel.close();
    };
    const udpHalf = this.#offerUdp(channel, fail);
    const keepalive = setInterval(() => {
      if (performance.now() - channel.lastReceived > timeout * 1000) {
        ended = `no data from the server for ${timeout} s`;
        channel.close();
        return;
      }
      channel.sendControl(FrameType.PING);
      this.#udp?.tick();
    }, interval * 1000);
    try {
      await channel.readFrames((type, buffer, start, end) => {
        const payload = () => buffer.subarray(start, end);
        switch (type) {
          case FrameType.DATA:
            this.fromServer(buffer.subarray(start, end));
            return;
          case FrameType.PING:
            channel.sendControl(FrameType.PONG, buffer.slice(start, end));
            return;
          case FrameType.PONG:
            return;
          case FrameType.BYE:
            ended = `server said goodbye: ${escapeText(decodeBye(payload()).reason)}`;
            channel.close();
            return;
          case FrameType.ERROR: {
            const error = decodeError(payload());
            channel.close();
            throw new RefusedError(error);
          }
          case FrameType.UDP_ACCEPT:
            if (udpHalf !== undefined) {
              this.#startUdp(decodeUdpAccept(payload()), udpHalf, fail);
            }
            return;
          case FrameType.UDP_REFUSE:
            this.#udpUnavailable(
              `the server refused UDP: ${escapeText(decodeUdpRefuse(payload()).reason)}`,
              fail,
            );
            return;
          case FrameType.REKEY:
            if (this.#udp) {
              const ack = this.#udp.rekey(decodeRekey(payload(), "REKEY"));
              channel.sendControl(FrameType.REKEY_ACK, encodeMessage(ack));
            }
            return;
          case FrameType.REKEY_DONE:
            this.#udp?.rekeyDone(decodeRekey(payload(), "REKEY_DONE"));
            return;
          default:
            throw new FrameError(`unexpected frame type ${type} after PUSH`);
        }
      }, () => this.flush());
    } catch (error) {
      if (ended === undefined && fatal === undefined) throw error;
    } finally {
      clearInterval(keepalive);
      channel.close();
      if (this.#channel === channel) this.#channel = undefined;
      const udp = this.#udp;
      await udp?.close();
      this.#udp = undefined;
      this.#account(channel.stats, udp);
    }
    if (fatal) throw fatal;
    if (!this.#stopped) {
      logger.warn("session ended: {reason}", { reason: ended ?? "connection closed" });
    }
  }

  /** Logs the byte counts of a session that ended and adds them to the run's. */
  #account(tls: ChannelStats, udp: ClientUdp | undefined): void {
    const session: Traffic = {
      tlsIn: tls.bytesIn,
      tlsOut: tls.bytesOut,
      dropped: tls.dropped,
      udpIn: udp?.bytesIn ?? 0,
      udpOut: udp?.bytesOut ?? 0,
    };
    logger.info(`session: ${TRAFFIC}`, { ...session });
    this.#sessions++;
    const totals = this.#totals;
    totals.tlsIn += session.tlsIn;
    totals.tlsOut += session.tlsOut;
    totals.dropped += session.dropped;
    totals.udpIn += session.udpIn;
    totals.udpOut += session.udpOut;
  }

  /** Asks for the UDP data channel unless `tcp`; returns this client's half of the keys sent. */
  #offerUdp(channel: Channel, fail: (error: ClientError) => void): KeyHalf | undefined {
    const proto = this.#options.proto ?? this.#options.profile.proto;
    if (proto === "tcp") {
      // `auto` says so only when it falls back: here nothing else would tell.
      logger.info("data goes over TLS to {server} (proto tcp)", {
        server: formatPeer(this.#options.host, this.#options.port),
      });
      return undefined;
    }
    const missing = cryptoUnavailable();
    if (missing !== undefined) {
      this.#udpUnavailable(`no UDP data channel without libcrypto (${missing})`, fail);
      return undefined;
    }
    const half = new KeyHalf();
    channel.sendControl(
      FrameType.UDP_OFFER,
      encodeMessage({
        ciphers: this.#options.cipher ? [this.#options.cipher] : [...UDP_CIPHERS],
        random: half.random.toBase64(),
        share: half.share.toBase64(),
      }),
    );
    return half;
  }

  #startUdp(accept: UdpAccept, half: KeyHalf, fail: (error: ClientError) => void): void {
    const { timeout } = this.#push!.keepalive;
    const udp = ClientUdp.open(
      accept,
      half,
      this.#serverIp,
      this.#options.port,
      this,
      timeout * 1000,
    );
    this.#udp = udp;
    udp.probe(UDP_PROBE_MS).then((works) => {
      if (!works && this.#udp === udp) {
        this.#udpUnavailable(
          `UDP to ${udp.server} got no answer within ${UDP_PROBE_MS / 1000} s`,
          fail,
        );
      }
    });
  }

  /** UDP cannot be had: `udp` fails, `auto` stays on TLS and says why. */
  #udpUnavailable(why: string, fail: (error: ClientError) => void): void {
    if ((this.#options.proto ?? this.#options.profile.proto) === "udp") {
      fail(
        new ClientError(
          `${why}; with --proto udp the client stops (use --proto auto to fall back to TLS)`,
        ),
      );
    } else {
      logger.warn("{why}; data stays on TLS (later pings try UDP again)", { why });
    }
  }

  /** A packet from the server (TLS frame or datagram) for the TUN; {@linkcode flush} ends a batch. */
  fromServer(packet: Uint8Array): void {
    // The server wrote this header, and our kernel would cut the packet as it says.
    if (this.#vnet && !validVnetHeader(packet, 0, packet.length)) {
      this.badVnet++;
      return;
    }
    if (this.#coalescer) this.#coalescer.add(packet, this.#vnet);
    else this.#toTun[this.#toTunCount++] = packet;
  }

  /** Writes the inbound batch into the TUN. */
  flush(): void {
    this.#coalescer?.flush();
    if (this.#toTunCount === 0) return;
    this.#tun!.write(this.#toTun, this.#toTunCount);
    this.#toTunCount = 0;
  }

  readonly #emitTls = (packet: Uint8Array) => this.#channel?.queueData(packet, packet.length);

  readonly #emitUdp = (packet: Uint8Array) => {
    // A key past its usage limit seals nothing; TLS carries the packet instead.
    if (!this.#udp?.queue(packet, packet.length)) this.#channel?.queueData(packet, packet.length);
  };

  async #tunToServer(tun: TunDevice): Promise<void> {
    const bufs = Array.from({ length: BATCH }, () => new Uint8Array(MAX_PAYLOAD));
    const sizes = new Array<number>(BATCH).fill(0);
    const failures = new BatchFailures(logger, "TUN to server");
    try {
      for (let n; (n = await tun.read(bufs, sizes)) > 0;) {
        try {
          await this.#send(tun, bufs, sizes, n);
        } catch (error) {
          failures.report(error);
        }
      }
    } catch (error) {
      if (!this.#stopped) logger.error("TUN read failed: {error}", { error: String(error) });
    }
  }

  /** Sends one batch read from the TUN to the server, over UDP when that path is up. */
  async #send(tun: TunDevice, bufs: Uint8Array[], sizes: number[], n: number): Promise<void> {
    const channel = this.#channel;
    if (channel === undefined) return; // between sessions: dropped, like an unplugged cable
    const segmenter = this.#segmenter;
    const udp = this.#udp;
    const vnet = this.#vnet;
    const mtu = this.#push!.mtu;
    for (let i = 0; i < n; i++) {
      const packet = bufs[i]!;
      const size = sizes[i]!;
      if (udp?.active) segmenter.convert(packet, size, tun.vnetHdr, vnet, mtu, this.#emitUdp);
      else if (tun.vnetHdr === vnet) {
        // The only session: wait for the write in flight rather than drop (backpressure).
        if (!channel.offerData(packet, size)) {
          channel.flush();
          await channel.drained();
          channel.queueData(packet, size);
        }
      } else segmenter.convert(packet, size, tun.vnetHdr, vnet, Infinity, this.#emitTls);
    }
    udp?.flush();
    channel.flush();
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

/** Bytes a session moved, or all of a run's sessions: the TLS channel's and the UDP path's. */
interface Traffic {
  tlsIn: number;
  tlsOut: number;
  dropped: number;
  udpIn: number;
  udpOut: number;
}

const TRAFFIC = "TLS {tlsIn} bytes in, {tlsOut} out, {dropped} packets dropped; " +
  "UDP {udpIn} bytes in, {udpOut} out";

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
