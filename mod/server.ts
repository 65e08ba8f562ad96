/**
 * `vpn serve`: what a server runs, put together. One TUN and the router (mod/core/router.ts)
 * that owns it; our protocol's TLS listener (mod/native/listener.ts) and UDP data channel
 * (mod/native/server_udp.ts) on `listen.port`; OpenVPN's endpoints (mod/openvpn/server.ts):
 * UDP on the same socket, told apart by the first byte, and TCP on `openvpn.tcp_port`.
 *
 * @module
 */

import { LinuxTun, type TunDevice } from "../ffi/tun.ts";
import { Netlink } from "../ffi/netlink.ts";
import { ErrnoError } from "../ffi/libc.ts";
import { listenerIpv6Only } from "../ffi/socket.ts";
import { AddressPool } from "./core/address_pool.ts";
import { formatPeer, isUnspecified6 } from "./core/ip.ts";
import { type Lease, LeaseError, prepareStateDir, readLeases } from "./core/leases.ts";
import { Router, type ServerStats } from "./core/router.ts";
import { Subnet6 } from "./core/subnet6.ts";
import { Nat } from "./system/nat.ts";
import { loadServerConfig, parseListen, type ServerConfig } from "./config.ts";
import { MetricsServer } from "./metrics.ts";
import type { SessionStatus, SessionTraffic } from "./core/session.ts";
import { VERSION } from "./version.ts";
import { log, setupLogging } from "./log.ts";
import type { ServerTrust } from "./native/handshake.ts";
import { NativeListener } from "./native/listener.ts";
import { ALPN } from "./native/messages.ts";
import { REJECT_WORDS, type RejectReason, ServerUdp } from "./native/server_udp.ts";
import { cryptoUnavailable } from "../ffi/crypto.ts";
import type { DataStats } from "./openvpn/data.ts";
import { OpenVpnServer } from "./openvpn/server.ts";
import { sslUnavailable, type TlsIdentity } from "./openvpn/tls.ts";
import {
  certificateNames,
  ensureTlsCryptKey,
  loadServerIdentity,
  loadTlsCryptKey,
  readRegistrySerials,
  TLS_CRYPT_FILE,
} from "./pki.ts";

export type { ServerStats };

const logger = log("server");

/** How often dropped datagrams are reported (ms), when there were any. */
const REJECTS_EVERY_MS = 1000;

/** What the server runs with. */
export interface ServerOptions {
  /** The PKI directory (ca.crt, server.crt, server.key, clients.json). */
  dir: string;
  /** The validated configuration. */
  config: ServerConfig;
  /** A TUN to use as is (tests); by default a Linux TUN is created and configured. */
  tun?: TunDevice;
  /** The file `reload` reads again; default `DIR/server.yaml`. */
  configPath?: string;
}

/** The server as `vpn status` shows it (PROTOCOL.md, control socket). */
export interface ServerStatus {
  version: string;
  pid: number;
  /** ISO 8601. */
  startedAt: string;
  uptimeSeconds: number;
  /** `TLS 0.0.0.0:1194`, `UDP 0.0.0.0:1194`, `OpenVPN/TCP 0.0.0.0:1195`. */
  listeners: string[];
  subnet: string;
  subnet6: string;
  tun: string;
  /** The router's counters, then `udp_*` and `openvpn_*` drop counters; they only grow. */
  counters: Record<string, number>;
  /** Connections in their handshake now. */
  preAuth: number;
  /** Handshakes since start: `ok`, and each refusal reason. */
  handshakes: Record<string, number>;
  /** OpenVPN renegotiations and our UDP rekeys since start. */
  renegotiations: number;
  /** Every session's inner packets and bytes since start, ended ones included. */
  traffic: SessionTraffic;
  sessions: SessionStatus[];
}

/** What `reload` did: the keys taken at once, and those that need a restart. */
export interface ReloadResult {
  applied: string[];
  needRestart: string[];
}

/** The server of one VPN subnet. */
export class Server {
  /** The UDP data channel, unless `listen.udp` is off or libcrypto is missing. */
  readonly udp: ServerUdp | undefined;
  /** Why there is no UDP data channel, told to clients that offer one. */
  readonly udpOff: string;

  /** The OpenVPN endpoints, unless both `openvpn.udp` and `openvpn.tcp` are off. */
  readonly openvpn: OpenVpnServer | undefined;

  readonly #router: Router;
  readonly #native: NativeListener;
  /** Masquerading and forwarding (`nat: true`), undone at stop. */
  readonly #nat: Nat | undefined;
  readonly #rejectsTimer: ReturnType<typeof setInterval>;
  readonly #startedAt = Date.now();
  /** What the listeners are, for `status`. */
  #listeners: string[] = [];
  #tunName = "";
  #configPath = "";
  /** The configuration as the file had it (IPv6 may be off in force), for `reload`. */
  #fileConfig: ServerConfig | undefined;
  /** `/metrics`, with `metrics.listen`. */
  #metrics: MetricsServer | undefined;
  /** The counters as the last drop report saw them. */
  readonly #lastUdp: Partial<Record<RejectReason, number>> = {};
  readonly #lastOpenVpn: Partial<Record<keyof typeof OPENVPN_DROP_WORDS, number>> = {};
  #stopped = false;

  private constructor(
    router: Router,
    listeners: Deno.TlsListener[],
    trust: ServerTrust,
    identity: TlsIdentity,
    tlsCryptKey: Uint8Array | undefined,
    nat: Nat | undefined,
  ) {
    this.#router = router;
    this.#nat = nat;
    const { listen, keepalive, rekey_interval, openvpn } = router.config;
    // OpenVPN over UDP needs the socket even when our own clients may not use it.
    const socket = listen.udp || openvpn.udp
      ? ServerUdp.open(
        listen.host,
        listeners[0]!.addr.port,
        router,
        keepalive.timeout,
        rekey_interval,
      )
      : "UDP is off on this server (listen.udp: false)";
    const udp = listen.udp ? socket : "UDP is off on this server (listen.udp: false)";
    this.udp = typeof socket === "string" ? undefined : socket;
    this.udpOff = typeof udp === "string" ? udp : "";
    if (typeof socket === "string" && (listen.udp || openvpn.udp)) {
      logger.warn("{why}; clients use TLS only", { why: socket });
    }
    if (this.udp) router.onFlush(() => this.udp!.flush());
    const missing = cryptoUnavailable() ?? sslUnavailable();
    if (tlsCryptKey !== undefined && missing !== undefined) {
      logger.warn("OpenVPN clients cannot be served without libcrypto and libssl ({why})", {
        why: missing,
      });
    } else if (tlsCryptKey !== undefined && (this.udp || openvpn.tcp)) {
      try {
        this.openvpn = OpenVpnServer.start({
          router,
          identity,
          tlsCryptKey,
          ciphers: openvpn.ciphers,
          ...(openvpn.udp && this.udp ? { udp: this.udp.socket } : {}),
          ...(openvpn.tcp ? { tcp: { host: listen.host, port: openvpn.tcp_port } } : {}),
        });
      } catch (error) {
        // Nothing serves yet: the caller closes the TLS listener and the router.
        this.udp?.close();
        throw error;
      }
      if (openvpn.udp && this.udp) this.udp.foreign = this.openvpn;
    }
    this.#native = new NativeListener(router, listeners, trust, udp);
    this.#rejectsTimer = setInterval(() => this.#reportRejects(), REJECTS_EVERY_MS);
  }

  /** Creates the TUN, listens, and serves until {@linkcode stop}. */
  static async start(options: ServerOptions): Promise<Server> {
    const { dir } = options;
    const loaded = await loadServerIdentity(dir);
    const trust: ServerTrust = {
      caPem: loaded.caPem,
      serverNames: new Set(certificateNames(loaded.certPem)),
      ...(await readRegistrySerials(dir)),
    };
    let config = options.config;
    let tun = options.tun;
    if (tun === undefined) {
      const created = createServerTun(config);
      tun = created.tun;
      if (!created.ipv6) config = { ...config, subnet6: "none" };
    }
    const tls = (hostname: string, port: number) =>
      Deno.listenTls({
        hostname,
        port,
        cert: loaded.certPem,
        key: loaded.keyPem,
        alpnProtocols: [ALPN],
      });
    const listeners: Deno.TlsListener[] = [];
    try {
      const first = tls(config.listen.host, config.listen.port);
      listeners.push(first);
      // "::" takes IPv4 clients too, as the UDP socket does, also where net.ipv6.bindv6only
      // makes Deno's socket IPv6-only: then IPv4 gets a listener of its own on the same port.
      if (isUnspecified6(config.listen.host) && listenerIpv6Only(first.addr)) {
        listeners.push(tls("0.0.0.0", first.addr.port));
      }
    } catch (error) {
      for (const listener of listeners) listener.close();
      tun.close();
      if (error instanceof Deno.errors.AddrInUse) {
        const address = formatPeer(config.listen.host, config.listen.port);
        throw new Error(
          `Cannot listen on ${address}: the port is in use; ` +
            `stop the program holding it or choose another listen.port`,
        );
      }
      throw error;
    }
    let leases: Lease[] = [];
    try {
      await prepareStateDir(dir);
      leases = await readLeases(dir);
    } catch (error) {
      if (!(error instanceof LeaseError)) throw error;
      logger.warn("{error}; starting without leases: clients get the lowest free addresses", {
        error: error.message,
      });
    }
    const router = new Router(config, dir, tun, trust, leases);
    let server: Server;
    let nat: Nat | undefined;
    try {
      if (options.tun === undefined) {
        // Kept in step with the registry through the router's listener, which holds it.
        const siteRoutes = new SiteRoutes(tun.name, router);
        siteRoutes.sync();
        router.onRegistryRead(() => siteRoutes.sync());
        if (config.nat) {
          const subnets = [config.subnet, ...(router.subnet6 ? [router.subnet6.subnet] : [])];
          nat = Nat.enable(tun.name, subnets);
          logger.info(
            "nat: table inet {table} masquerades {subnets} leaving other interfaces{more}",
            {
              table: nat.table,
              subnets: subnets.join(", "),
              more: (nat.forwardingTurnedOn.length > 0
                ? `; turned on ${nat.forwardingTurnedOn.join(", ")}`
                : "") + (nat.staleTableRemoved ? "; replaced the table a killed server left" : ""),
            },
          );
        }
      }
      let tlsCryptKey: Uint8Array | undefined;
      if (config.openvpn.udp || config.openvpn.tcp) {
        if (await ensureTlsCryptKey(dir)) {
          logger.info("created {file}: OpenVPN profiles made from now on carry it", {
            file: `${dir}/${TLS_CRYPT_FILE}`,
          });
        }
        tlsCryptKey = await loadTlsCryptKey(dir);
      }
      const identity = { certPem: loaded.certPem, keyPem: loaded.keyPem, caPem: loaded.caPem };
      server = new Server(router, listeners, trust, identity, tlsCryptKey, nat);
    } catch (error) {
      nat?.disable();
      for (const listener of listeners) listener.close();
      await router.stop("start failed");
      await router.close();
      throw error;
    }
    const ovpn = server.openvpn;
    const transports = [
      "TLS",
      ...(server.udp && config.listen.udp ? ["UDP"] : []),
      ...(ovpn && config.openvpn.udp && server.udp ? ["OpenVPN/UDP"] : []),
      ...(ovpn?.tcpPort !== undefined ? [`OpenVPN/TCP on port ${ovpn.tcpPort}`] : []),
    ];
    const address = formatPeer(config.listen.host, server.port);
    server.#listeners = [
      `TLS ${address}`,
      ...(server.udp ? [`UDP ${address}`] : []),
      ...(ovpn?.tcpPort !== undefined
        ? [`OpenVPN/TCP ${formatPeer(config.listen.host, ovpn.tcpPort)}`]
        : []),
    ];
    server.#tunName = tun.name;
    if (config.metrics.listen !== "") {
      try {
        server.#metrics = MetricsServer.start(
          parseListen(config.metrics.listen),
          () => server.status(),
        );
      } catch (error) {
        await server.stop("metrics failed to start");
        throw error;
      }
    }
    server.#configPath = options.configPath ?? `${dir}/server.yaml`;
    server.#fileConfig = options.config;
    logger.info("listening on {address} ({transports}), subnet {subnet}, TUN {tun}", {
      address: formatPeer(config.listen.host, server.port),
      transports: transports.join(", "),
      subnet: config.subnet,
      tun: tun.name,
    });
    return server;
  }

  /** The core: sessions, routing, counters. */
  get router(): Router {
    return this.#router;
  }

  /** The server's counters. */
  get stats(): ServerStats {
    return this.#router.stats;
  }

  /** The address pool. */
  get pool(): AddressPool {
    return this.#router.pool;
  }

  /** The configuration in force. */
  get config(): ServerConfig {
    return this.#router.config;
  }

  /** Where our TLS listener is bound. */
  get port(): number {
    return this.#native.port;
  }

  /** Resolves once the server has stopped. */
  get done(): Promise<void> {
    return this.#router.done;
  }

  /** Number of authenticated sessions, every protocol. */
  get sessionCount(): number {
    return this.#router.sessionCount;
  }

  /** Number of connections in their handshake now (TLS or AUTH pending), at most 64. */
  get preAuthCount(): number {
    return this.#native.preAuthCount;
  }

  /** The server and every session, for `vpn status` and `/metrics`. */
  status(): ServerStatus {
    const router = this.#router;
    const counters: Record<string, number> = { ...router.stats };
    for (const [key, value] of Object.entries(this.udp?.stats ?? {})) {
      counters[`udp_${key}`] = value;
    }
    const openvpn = this.openvpn;
    if (openvpn !== undefined) {
      for (
        const [key, value] of Object.entries({ ...openvpn.stats, ...prefixed(openvpn.dataStats) })
      ) {
        counters[`openvpn_${key}`] = value;
      }
    }
    return {
      version: VERSION,
      pid: Deno.pid,
      startedAt: new Date(this.#startedAt).toISOString(),
      uptimeSeconds: Math.floor((Date.now() - this.#startedAt) / 1000),
      listeners: this.#listeners,
      subnet: router.config.subnet,
      subnet6: router.subnet6?.subnet ?? "none",
      tun: this.#tunName,
      counters,
      preAuth: this.preAuthCount + (openvpn?.pendingCount ?? 0),
      handshakes: { ...router.handshakes },
      renegotiations: router.renegotiations + (this.udp?.stats.rekeyed ?? 0),
      traffic: router.totalTraffic(),
      sessions: router.sessionStatus(),
    };
  }

  /**
   * Ends `name`'s live session without revoking it, as a server shutdown does: the client is
   * told to come back (BYE to ours, RESTART to OpenVPN clients) and reconnects. False when
   * `name` has no session.
   */
  async kill(name: string): Promise<{ killed: boolean; protocol?: string; reconnects: boolean }> {
    const session = this.#router.sessions().find((s) => s.name === name);
    if (session === undefined) return { killed: false, reconnects: false };
    const protocol = session.protocol;
    logger.info("{name}: session ended by the operator (vpn client kill)", { name });
    await session.end("bye", "ended by the operator; reconnect");
    return { killed: true, protocol, reconnects: true };
  }

  /**
   * Reads `server.yaml` and the registry again. What is pushed, keepalive, `client_to_client`,
   * `lease_time` and `log.level` change at once (for sessions from now on, where a session got
   * them at its start); per-client settings at each client's next connection. Any other change
   * is named as needing a restart.
   *
   * @throws {ConfigError} for a file that does not parse: nothing changes then.
   */
  async reload(): Promise<ReloadResult> {
    const next = await loadServerConfig(this.#configPath);
    const before = this.#fileConfig!;
    const applied = this.#router.reconfigure(next);
    if (next.log.level !== before.log.level) {
      setupLogging(next.log.level);
      applied.push("log.level");
    }
    const live = new Set(["push", "keepalive", "client_to_client", "lease_time", "log"]);
    const needRestart = (Object.keys(next) as (keyof ServerConfig)[])
      .filter((key) => !live.has(key) && JSON.stringify(next[key]) !== JSON.stringify(before[key]));
    // What needs a restart stays as it runs, so that the next reload names it again.
    const { push, keepalive, client_to_client, lease_time, log } = next;
    this.#fileConfig = { ...before, push, keepalive, client_to_client, lease_time, log };
    await this.#router.checkRevocations();
    logger.info("reloaded {file}: applied {applied}; needs a restart: {restart}", {
      file: this.#configPath,
      applied: applied.join(", ") || "nothing",
      restart: needRestart.join(", ") || "nothing",
    });
    return { applied, needRestart };
  }

  /** Says goodbye to every client, closes the listeners and the TUN. */
  async stop(reason = "server shutting down"): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    clearInterval(this.#rejectsTimer);
    await this.#metrics?.stop();
    const native = this.#native.stop();
    const openvpn = this.openvpn?.stop();
    await this.#router.stop(reason);
    await native;
    await openvpn;
    await this.udp?.close();
    await this.#router.close();
    // The TUN took its own routes with it.
    this.#nat?.disable();
    logger.info("stopped: {reason}", { reason });
  }

  /** Says, at most once a second, how many packets were dropped since the last time, and why. */
  #reportRejects(): void {
    const udp = this.udp?.stats;
    if (udp !== undefined) this.#report("UDP", "datagrams", udp, REJECT_WORDS, this.#lastUdp);
    const openvpn = this.openvpn;
    if (openvpn === undefined) return;
    const counts = { ...openvpn.stats, ...prefixed(openvpn.dataStats) };
    this.#report("OpenVPN", "packets", counts, OPENVPN_DROP_WORDS, this.#lastOpenVpn);
  }

  #report<K extends string>(
    what: string,
    unit: string,
    stats: Record<K, number>,
    words: Record<K, string>,
    last: Partial<Record<K, number>>,
  ): void {
    const keys = Object.keys(words) as K[];
    const reasons = keys.map((key) => [key, stats[key] - (last[key] ?? 0)] as const)
      .filter(([, count]) => count > 0);
    if (reasons.length === 0) return;
    logger.info(`${what}: dropped {count} ${unit} ({reasons}), {total} in all`, {
      count: reasons.reduce((sum, [, count]) => sum + count, 0),
      reasons: reasons.map(([key, count]) => `${count} ${words[key]}`).join(", "),
      total: keys.reduce((sum, key) => sum + stats[key], 0),
    });
    for (const key of keys) last[key] = stats[key];
  }
}

/**
 * The kernel routes to the networks behind clients (`vpn client set NAME --route`), on the
 * server's TUN, for every valid client whether connected or not: traffic for a network whose
 * client is away then ends at the router (counted unroutable) instead of leaving by the
 * default route. Kept in step with the registry.
 */
class SiteRoutes {
  readonly #tunName: string;
  readonly #router: Router;
  readonly #installed = new Set<string>();

  constructor(tunName: string, router: Router) {
    this.#tunName = tunName;
    this.#router = router;
  }

  /** Adds the routes the registry has and we lack, removes those it no longer has. */
  sync(): void {
    const wanted = new Set<string>();
    for (const settings of this.#router.trust.settings.values()) {
      for (const route of settings.routes) {
        if (!route.includes(":") || this.#router.subnet6 !== undefined) wanted.add(route);
      }
    }
    if (wanted.size === this.#installed.size && [...wanted].every((r) => this.#installed.has(r))) {
      return;
    }
    try {
      using nl = Netlink.open();
      const ifindex = nl.linkIndex(this.#tunName);
      for (const route of this.#installed) {
        if (wanted.has(route)) continue;
        this.#change(route, () => nl.removeRoute({ destination: route, ifindex }), "ESRCH");
        this.#installed.delete(route);
      }
      for (const route of wanted) {
        if (this.#installed.has(route)) continue;
        if (this.#change(route, () => nl.addRoute({ destination: route, ifindex }), "EEXIST")) {
          this.#installed.add(route);
          logger.info("route {route} dev {tun}: a network behind a client", {
            route,
            tun: this.#tunName,
          });
        }
      }
    } catch (error) {
      // Tried again at the next registry read; the tunnel goes on.
      logger.warn("cannot set the routes to the networks behind clients: {error}", {
        error: String(error),
      });
    }
  }

  /** Runs one route change; `done` is the error that means it is in place already. */
  #change(route: string, change: () => void, done: string): boolean {
    try {
      change();
      return true;
    } catch (error) {
      if (error instanceof ErrnoError && error.code === done) return true;
      logger.warn("cannot change the route {route} on {tun}: {error}", {
        route,
        tun: this.#tunName,
        error: String(error),
      });
      return false;
    }
  }
}

/** How the log names each reason an OpenVPN packet is dropped, in its order. */
const OPENVPN_DROP_WORDS = {
  unwrapFailed: "failing tls-crypt",
  replayed: "replayed control",
  malformed: "malformed control",
  unknown: "for no session",
  busy: "new sessions over the handshake caps",
  dataMalformed: "malformed data",
  dataForged: "data failing authentication",
  dataReplayed: "replayed data",
} as const;

/** The data channel's counters under the names the report gives them. */
function prefixed(stats: DataStats): Record<`data${Capitalize<keyof DataStats>}`, number> {
  return { dataMalformed: stats.malformed, dataForged: stats.forged, dataReplayed: stats.replayed };
}

/**
 * The server's TUN, up, with its addresses; `ipv6` false when the host refused the IPv6 one
 * (IPv6 disabled): the tunnel then runs IPv4 only, as `vpn init` writes a subnet6 by default.
 */
function createServerTun(config: ServerConfig): { tun: TunDevice; ipv6: boolean } {
  const tun = LinuxTun.create({ name: config.dev, offload: config.offload });
  // The router's pool is made from the same subnet: the same server address and prefix.
  const pool = new AddressPool(config.subnet);
  let ipv6 = config.subnet6 !== "none";
  try {
    using nl = Netlink.open();
    const index = nl.linkIndex(tun.name);
    nl.setMtu(index, config.mtu);
    nl.addAddress(index, `${pool.serverAddress}/${pool.prefix}`);
    // A TUN has IFF_NOARP, so the kernel skips duplicate address detection: usable at once.
    if (ipv6) {
      const subnet6 = new Subnet6(config.subnet6, pool.prefix);
      try {
        nl.addAddress(index, `${subnet6.serverAddress}/${subnet6.prefix}`);
      } catch (error) {
        if (!(error instanceof ErrnoError && error.code === "EACCES")) throw error;
        ipv6 = false;
        logger.warn(
          "IPv6 is disabled on this host ({error}); the tunnel carries IPv4 only. Turn IPv6 " +
            "on (sysctl net.ipv6.conf.all.disable_ipv6=0), or set subnet6: none in server.yaml",
          { error: error.message },
        );
      }
    }
    nl.setLinkUp(index);
  } catch (error) {
    tun.close();
    throw error;
  }
  return { tun, ipv6 };
}
