/**
 * The two YAML files a user edits: the server's `server.yaml` and a client's profile
 * (`NAME.yaml`).
 *
 * Both are read strictly: a key that is not in the schema, at any level, or a value outside
 * its allowed range is a {@linkcode ConfigError} naming the file, the key, the value and what
 * is allowed, because a typo that silently falls back to a default is worse than a refusal.
 * A key that is missing or left empty takes its default, so an empty `server.yaml` is a valid
 * all-defaults configuration.
 *
 * @module
 */

import { Document, isMap, isScalar, parseDocument, type Scalar, type YAMLSeq } from "yaml";
import { AddressPool } from "./core/address_pool.ts";
import { formatIPv4, formatIPv6, parseCidr, parseIPv4, parseIPv6 } from "./core/ip.ts";
import { Subnet6 } from "./core/subnet6.ts";
import { MAX_ROUTES } from "./native/messages.ts";
import { DATA_CIPHERS, type DataCipher } from "./openvpn/data.ts";

/** How much the server and client log, from most to least. */
export type LogLevel = "debug" | "info" | "warning" | "error";

/** Every {@linkcode LogLevel}, from most to least verbose. */
export const LOG_LEVELS: readonly LogLevel[] = ["debug", "info", "warning", "error"];

/** The transport a client uses to reach the server. */
export type Proto = "auto" | "udp" | "tcp";

/** Every {@linkcode Proto}. */
export const PROTOS: readonly Proto[] = ["auto", "udp", "tcp"];

/** Where the server accepts clients (`listen` in `server.yaml`). */
export interface ListenConfig {
  /**
   * The local address to listen on: an IP address or a host name. `0.0.0.0` listens on every
   * IPv4 address, `::` on every address.
   *
   * @default "0.0.0.0"
   */
  host: string;
  /**
   * The port to listen on, from 1 to 65535.
   *
   * @default 1194
   */
  port: number;
  /**
   * Whether to also listen on UDP `port` for clients' data packets. The TCP port, which
   * carries the TLS session, is always open; without UDP, data travels in the TLS session.
   *
   * @default true
   */
  udp: boolean;
}

/**
 * Where and how the server takes stock OpenVPN 2.6 and OpenVPN Connect clients (`openvpn` in
 * `server.yaml`), beside its own.
 */
export interface OpenVpnConfig {
  /**
   * Whether to take OpenVPN clients over UDP on `listen.port`, the socket our own clients'
   * datagrams use too. The server opens that UDP port for them even when `listen.udp` is
   * false.
   *
   * @default true
   */
  udp: boolean;
  /**
   * Whether to take OpenVPN clients over TCP on `tcp_port`.
   *
   * @default true
   */
  tcp: boolean;
  /**
   * The TCP port for OpenVPN clients, from 1 to 65535; with `tcp` on it must differ from
   * `listen.port`, where our own TLS listens on TCP.
   *
   * @default 1195
   */
  tcp_port: number;
  /**
   * The data-channel ciphers offered to OpenVPN clients, in the server's order of preference
   * (the first one the client also has wins): `AES-256-GCM` and `CHACHA20-POLY1305`, in any
   * case, each at most once.
   *
   * @default ["AES-256-GCM", "CHACHA20-POLY1305"]
   */
  ciphers: DataCipher[];
}

/** How the server and its clients notice a dead peer (`keepalive` in `server.yaml`). */
export interface KeepaliveConfig {
  /**
   * Seconds between the keepalive pings each side sends, from 1 to 3600.
   *
   * @default 10
   */
  interval: number;
  /**
   * Seconds without hearing from a peer after which it is taken as gone, from 2 to 86400;
   * greater than `interval`.
   *
   * @default 60
   */
  timeout: number;
}

/** What the server tells clients to set up (`push` in `server.yaml`). */
export interface PushConfig {
  /**
   * Networks clients route through the VPN, as IPv4 or IPv6 CIDR blocks such as
   * `192.168.50.0/24`. The VPN subnet itself is always routed and need not be listed.
   *
   * @default []
   */
  routes: string[];
  /**
   * Whether clients send all their traffic through the VPN: each keeps a host route to the
   * server via its old gateway and routes 0.0.0.0/1 and 128.0.0.0/1 (and ::/1 and 8000::/1
   * when the tunnel has IPv6) into the tunnel. `vpn client set NAME --redirect-gateway` or
   * `--no-redirect-gateway` overrides it for one client.
   *
   * @default false
   */
  redirect_gateway: boolean;
  /** The DNS servers and search domains clients use while connected. */
  dns: DnsConfig;
}

/** The DNS settings pushed to clients (`push.dns` in `server.yaml`). */
export interface DnsConfig {
  /**
   * DNS servers, IPv4 or IPv6 addresses, at most {@linkcode MAX_DNS_SERVERS}. None: clients keep
   * their own DNS.
   *
   * @default []
   */
  servers: string[];
  /**
   * Search domains such as `corp.example`, at most {@linkcode MAX_DNS_DOMAINS}; with DNS
   * servers, names in these domains go to them.
   *
   * @default []
   */
  domains: string[];
}

/** DNS servers `push.dns.servers` may list (and a PUSH may carry). */
export const MAX_DNS_SERVERS = 8;
/** Search domains `push.dns.domains` may list (and a PUSH may carry). */
export const MAX_DNS_DOMAINS = 8;

/** The operator's control socket (`control` in `server.yaml`). */
export interface ControlConfig {
  /**
   * The Unix socket `vpn status`, `vpn client kill` and `vpn reload` talk to; empty for
   * `/run/vpn/NAME.sock`, NAME being the PKI directory's name. Mode 0600.
   *
   * @default ""
   */
  socket: string;
}

/** The Prometheus endpoint (`metrics` in `server.yaml`). */
export interface MetricsConfig {
  /**
   * Where `/metrics` listens, `host:port` (`127.0.0.1:9194`, `[::1]:9194`); empty: off.
   *
   * @default ""
   */
  listen: string;
}

/** What the server logs (`log` in `server.yaml`). */
export interface LogConfig {
  /**
   * The least severe messages logged: `debug`, `info`, `warning` or `error`.
   *
   * @default "info"
   */
  level: LogLevel;
}

/**
 * The server's settings, read from `server.yaml`.
 *
 * The PKI is not configured here: it lives in the directory that holds `server.yaml`.
 */
export interface ServerConfig {
  /** Where the server accepts clients. */
  listen: ListenConfig;
  /**
   * The IPv4 subnet of the VPN, as a network address and a prefix length from 8 to 30. The
   * server takes its first host address (`10.8.0.1`); clients get the others.
   *
   * @default "10.8.0.0/24"
   */
  subnet: string;
  /**
   * The IPv6 subnet of the VPN, a unicast prefix from /64 to /120 with at least as many
   * addresses as `subnet`, or `none` for an IPv4-only tunnel. The server takes its first host
   * address (`::1`); a client gets the address with the same host number as its IPv4 address
   * (10.8.0.5 → `::5`). `vpn init` writes a random ULA /64 (RFC 4193).
   *
   * @default "none"
   */
  subnet6: string;
  /**
   * Whether the server masquerades clients' traffic that leaves through its other interfaces
   * (nftables, table `inet vpn_DEV`) and turns IP forwarding on, as a full tunnel needs; it
   * removes both on exit. Without it the host's own routing and firewall decide (README).
   *
   * @default false
   */
  nat: boolean;
  /**
   * The MTU of the tunnel, in bytes: set on the server's TUN device and pushed to clients.
   * From 576 to 65535; values above the path MTU are meant for segmentation offload, where
   * the kernel splits large packets.
   *
   * @default 1400
   */
  mtu: number;
  /** How dead peers are noticed. */
  keepalive: KeepaliveConfig;
  /**
   * Seconds a UDP data channel key is used before the server agrees a new one with the client
   * over TLS, from 1 to 86400. A key is also replaced after 2^32 packets, whichever comes first.
   *
   * @default 3600
   */
  rekey_interval: number;
  /**
   * Seconds a client's address stays bound to it after it was last connected, from 60 to
   * 31536000: a client that comes back within this time, also after a server restart, gets the
   * same address without asking (OpenVPN clients never ask). Kept in `DIR/leases.json`.
   *
   * @default 604800
   */
  lease_time: number;
  /**
   * Whether the server's TUN uses segmentation offload (`IFF_VNET_HDR`): the kernel then hands
   * over 64 KiB TCP super-packets, which travel whole to clients that have offload too.
   *
   * @default true
   */
  offload: boolean;
  /**
   * Whether the server forwards packets between clients itself. When false (as in OpenVPN),
   * such packets go into the server's TUN, where the host's routing and firewall decide:
   * with IP forwarding off, clients cannot reach each other.
   *
   * @default false
   */
  client_to_client: boolean;
  /** What clients are told to set up. */
  push: PushConfig;
  /**
   * The name of the server's TUN device, at most 15 bytes. A `%d` in it is replaced by the
   * kernel with the lowest free number (`vpn%d` gives `vpn0`, then `vpn1`).
   *
   * @default "vpn%d"
   */
  dev: string;
  /** What the server logs. */
  log: LogConfig;
  /**
   * The user the server runs as once its TUN, sockets and routes are set up, when started as
   * root; it keeps CAP_NET_ADMIN and nothing else (README: Fewer privileges). `root` keeps
   * every privilege. Ignored when started as another user.
   *
   * @default "nobody"
   */
  user: string;
  /** Where and how OpenVPN clients connect. */
  openvpn: OpenVpnConfig;
  /** The control socket. */
  control: ControlConfig;
  /** The Prometheus endpoint. */
  metrics: MetricsConfig;
}

/** A client's profile, written by `vpn client add` as `NAME.yaml`. */
export interface ClientProfile {
  /**
   * The server to connect to: `host:port`, `host` (port 1194) or `[IPv6]:port`.
   * Required.
   */
  remote: string;
  /** The CA certificate that signed the server's certificate, in PEM. Required. */
  ca: string;
  /** This client's certificate, in PEM. Required. */
  cert: string;
  /** This client's private key, in PEM. Required; keep it secret. */
  key: string;
  /**
   * How data packets travel: `tcp` keeps them in the TLS session, `udp` sends them over UDP,
   * and `auto` tries UDP and stays on TCP when UDP does not get through.
   *
   * @default "auto"
   */
  proto: Proto;
  /**
   * The name of the client's TUN device, at most 15 bytes; `%d` is replaced by the lowest free
   * number.
   *
   * @default "vpn%d"
   */
  dev: string;
}

/** What {@linkcode profileYaml} needs: a profile whose optional settings may be left out. */
export type ClientProfileInit =
  & Omit<ClientProfile, "proto" | "dev">
  & Partial<Pick<ClientProfile, "proto" | "dev">>;

/** A host and port to connect to, from {@linkcode parseRemote}. */
export interface Remote {
  /** A host name or an IP address; IPv6 without brackets. */
  host: string;
  /** The port, from 1 to 65535. */
  port: number;
}

/**
 * A configuration file that cannot be used: bad YAML, an unknown key, or a bad value. The
 * message names the file and the key; the command line exits with code 2 on it.
 */
export class ConfigError extends Error {
  /** The dotted key at fault (`keepalive.interval`), or undefined for the file as a whole. */
  readonly key: string | undefined;
  /** The file, as given to the parser. */
  readonly source: string;

  /** Makes the error `${source}: ${detail}`. */
  constructor(source: string, key: string | undefined, detail: string) {
    super(`${source}: ${detail}`);
    this.name = "ConfigError";
    this.source = source;
    this.key = key;
  }
}

/** The server settings used for every key `server.yaml` leaves out. */
export function defaultServerConfig(): ServerConfig {
  return {
    listen: { host: "0.0.0.0", port: 1194, udp: true },
    subnet: "10.8.0.0/24",
    subnet6: "none",
    nat: false,
    mtu: 1400,
    keepalive: { interval: 10, timeout: 60 },
    rekey_interval: 3600,
    lease_time: 604800,
    offload: true,
    client_to_client: false,
    push: { routes: [], redirect_gateway: false, dns: { servers: [], domains: [] } },
    dev: "vpn%d",
    log: { level: "info" },
    user: "nobody",
    openvpn: { udp: true, tcp: true, tcp_port: 1195, ciphers: [...DATA_CIPHERS] },
    control: { socket: "" },
    metrics: { listen: "" },
  };
}

/**
 * Parses and checks the text of `server.yaml`.
 *
 * @example
 * ```ts
 * import { parseServerConfig } from "./config.ts";
 * parseServerConfig("listen:\n  port: 443\n", "server.yaml").listen.port; // 443
 * ```
 * @param source The file name used in error messages.
 * @throws {ConfigError} on bad YAML, an unknown key or a bad value.
 */
export function parseServerConfig(text: string, source: string): ServerConfig {
  const r = new Reader(source);
  const d = defaultServerConfig();
  const top = r.root(text, Object.keys(d));
  const listen = r.mapping(top.listen, "listen", Object.keys(d.listen));
  const keepalive = r.mapping(top.keepalive, "keepalive", Object.keys(d.keepalive));
  const push = r.mapping(top.push, "push", Object.keys(d.push));
  const dns = r.mapping(push.dns, "push.dns", Object.keys(d.push.dns));
  const log = r.mapping(top.log, "log", Object.keys(d.log));
  const openvpn = r.mapping(top.openvpn, "openvpn", Object.keys(d.openvpn));
  const control = r.mapping(top.control, "control", Object.keys(d.control));
  const metrics = r.mapping(top.metrics, "metrics", Object.keys(d.metrics));

  const interval = r.value(
    keepalive.interval,
    "keepalive.interval",
    d.keepalive.interval,
    wholeNumber(1, 3600),
    "must be a whole number of seconds from 1 to 3600",
  );
  const timeout = r.value(
    keepalive.timeout,
    "keepalive.timeout",
    d.keepalive.timeout,
    wholeNumber(2, 86400),
    "must be a whole number of seconds from 2 to 86400",
  );
  if (timeout <= interval) {
    r.fail(
      "keepalive.timeout",
      timeout,
      `must be greater than keepalive.interval (${interval})`,
    );
  }

  const host = r.value(listen.host, "listen.host", d.listen.host, isHost, HOST_RULE);
  const port = r.value(listen.port, "listen.port", d.listen.port, wholeNumber(1, 65535), PORT_RULE);
  const ovpnTcp = r.value(openvpn.tcp, "openvpn.tcp", d.openvpn.tcp, isBoolean, BOOLEAN_RULE);
  const tcpPort = r.value(
    openvpn.tcp_port,
    "openvpn.tcp_port",
    d.openvpn.tcp_port,
    wholeNumber(1, 65535),
    PORT_RULE,
  );
  // Our own TLS already listens on TCP listen.port; the two protocols cannot share it.
  if (ovpnTcp && tcpPort === port) {
    r.fail(
      "openvpn.tcp_port",
      tcpPort,
      `must differ from listen.port (${port}), where our own TLS listens on TCP; pick another ` +
        `port, or set openvpn.tcp: false`,
    );
  }

  const subnet = r.subnet(top.subnet, "subnet", d.subnet);
  const subnet6 = r.subnet6(top.subnet6, "subnet6", d.subnet6, subnet);
  return {
    listen: {
      host,
      port,
      udp: r.value(listen.udp, "listen.udp", d.listen.udp, isBoolean, BOOLEAN_RULE),
    },
    subnet,
    subnet6,
    nat: r.value(top.nat, "nat", d.nat, isBoolean, BOOLEAN_RULE),
    mtu: r.value(
      top.mtu,
      "mtu",
      d.mtu,
      wholeNumber(576, 65535),
      "must be a whole number of bytes from 576 to 65535",
    ),
    keepalive: { interval, timeout },
    rekey_interval: r.value(
      top.rekey_interval,
      "rekey_interval",
      d.rekey_interval,
      wholeNumber(1, 86400),
      "must be a whole number of seconds from 1 to 86400",
    ),
    lease_time: r.value(
      top.lease_time,
      "lease_time",
      d.lease_time,
      wholeNumber(60, 31536000),
      "must be a whole number of seconds from 60 to 31536000 (a year)",
    ),
    offload: r.value(top.offload, "offload", d.offload, isBoolean, BOOLEAN_RULE),
    client_to_client: r.value(
      top.client_to_client,
      "client_to_client",
      d.client_to_client,
      isBoolean,
      BOOLEAN_RULE,
    ),
    push: {
      routes: r.routes(push.routes, "push.routes", subnet6 !== "none"),
      redirect_gateway: r.value(
        push.redirect_gateway,
        "push.redirect_gateway",
        d.push.redirect_gateway,
        isBoolean,
        BOOLEAN_RULE,
      ),
      dns: {
        servers: r.dnsServers(dns.servers, "push.dns.servers"),
        domains: r.dnsDomains(dns.domains, "push.dns.domains"),
      },
    },
    dev: r.value(top.dev, "dev", d.dev, isDeviceName, DEVICE_RULE),
    log: {
      level: r.value(log.level, "log.level", d.log.level, oneOf(LOG_LEVELS), LOG_LEVEL_RULE),
    },
    user: r.value(
      top.user,
      "user",
      d.user,
      (v): v is string => isString(v) && /^[A-Za-z_][A-Za-z0-9_.-]{0,31}$/.test(v),
      "must be a user name of this host such as nobody or vpn (root keeps every privilege)",
    ),
    openvpn: {
      udp: r.value(openvpn.udp, "openvpn.udp", d.openvpn.udp, isBoolean, BOOLEAN_RULE),
      tcp: ovpnTcp,
      tcp_port: tcpPort,
      ciphers: r.ciphers(openvpn.ciphers, "openvpn.ciphers", d.openvpn.ciphers),
    },
    control: {
      socket: r.value(
        control.socket,
        "control.socket",
        d.control.socket,
        (v): v is string => isString(v) && (v === "" || v.startsWith("/")),
        'must be an absolute path, or "" for /run/vpn/NAME.sock',
      ),
    },
    metrics: {
      listen: r.value(
        metrics.listen,
        "metrics.listen",
        d.metrics.listen,
        (v): v is string => isString(v) && (v === "" || isListenAddress(v)),
        'must be host:port such as 127.0.0.1:9194 or [::1]:9194, or "" for off',
      ),
    },
  };
}

/** The control socket's path: `control.socket`, or `/run/vpn/NAME.sock` for PKI dir `dir`. */
export function controlSocketPath(config: ServerConfig, dir: string): string {
  if (config.control.socket !== "") return config.control.socket;
  const name = dir.replace(/\/+$/, "").split("/").pop() || "vpn";
  return `/run/vpn/${name}.sock`;
}

/** `metrics.listen` as an address to bind: `127.0.0.1:9194`, `[::1]:9194`. */
export function parseListen(text: string): { hostname: string; port: number } {
  const { host, port } = parseRemote(text);
  return { hostname: host, port };
}

/** Whether `text` is an IP address with a port. */
function isListenAddress(text: string): boolean {
  try {
    const { host } = parseRemote(text);
    if (!/:\d+$/.test(text)) return false;
    return host.includes(":") ? isIPv6(host) : /^[0-9.]+$/.test(host) && isHost(host);
  } catch {
    return false;
  }
}

/**
 * Reads and parses a `server.yaml`. The PKI directory is the one that holds the file.
 *
 * @throws {ConfigError} on bad YAML, an unknown key or a bad value.
 * @throws {Deno.errors.NotFound} and other I/O errors from reading the file.
 */
export async function loadServerConfig(path: string): Promise<ServerConfig> {
  return parseServerConfig(await Deno.readTextFile(path), path);
}

/** The comment written above each key of `server.yaml`. */
const SERVER_COMMENTS = {
  listen: "Where clients connect.",
  "listen.host":
    'Local address to listen on: 0.0.0.0 for every IPv4 address, "::" (quoted) for every one.',
  "listen.port": "Port to listen on (1-65535).",
  "listen.udp": "Also take data packets over UDP on this port (TLS over TCP is always on).",
  subnet: "IPv4 subnet of the VPN (/8 to /30). The server takes the first host address.",
  subnet6:
    "IPv6 subnet of the VPN (/64 to /120), or none. A client gets the host number of its IPv4 address.",
  nat: "Masquerade client traffic leaving the server's other interfaces and turn IP forwarding on.",
  mtu: "MTU of the tunnel in bytes (576-65535), set on the TUN device and pushed to clients.",
  keepalive: "How dead peers are noticed, in seconds.",
  "keepalive.interval": "Seconds between keepalive pings from each side (1-3600).",
  "keepalive.timeout": "Drop a peer not heard from for this long (greater than interval).",
  rekey_interval: "Seconds before a UDP data channel key is replaced (1-86400).",
  lease_time:
    "Seconds a client keeps its address after it last connected, across restarts (60-31536000).",
  offload: "Use TUN segmentation offload: 64 KiB super-packets to clients that have it too.",
  client_to_client:
    "Forward packets between clients inside the server. Off: they go to the server's TUN and the host decides.",
  push: "What clients are told to set up.",
  "push.routes":
    "Networks clients route through the VPN, e.g. [192.168.50.0/24]; IPv6 ones need subnet6.",
  "push.redirect_gateway": "Send all of the clients' traffic through the VPN (full tunnel).",
  "push.dns": "DNS the clients use while connected.",
  "push.dns.servers": "DNS server addresses, e.g. [10.8.0.1]; none keeps the clients' own.",
  "push.dns.domains": "Search domains, e.g. [corp.example].",
  dev: "TUN device name, at most 15 bytes; %d becomes the lowest free number.",
  log: "What the server logs.",
  "log.level": "debug, info, warning or error.",
  user:
    "User to run as after set-up when started as root, keeping only CAP_NET_ADMIN; root keeps every privilege.",
  openvpn:
    "Stock OpenVPN 2.6 / OpenVPN Connect clients (profiles from `vpn client add --format ovpn`).",
  "openvpn.udp": "Take them over UDP on listen.port (opened for them even with listen.udp: false).",
  "openvpn.tcp": "Take them over TCP on tcp_port.",
  "openvpn.tcp_port": "TCP port for them (1-65535); not listen.port, where our own TLS listens.",
  "openvpn.ciphers": "Data ciphers, first preferred: AES-256-GCM and/or CHACHA20-POLY1305.",
  control: "The operator's control socket (vpn status, vpn client kill, vpn reload).",
  "control.socket": 'Its path, mode 0600; "" for /run/vpn/NAME.sock, NAME this directory\'s name.',
  metrics: "Prometheus metrics.",
  "metrics.listen": 'Where /metrics listens, e.g. 127.0.0.1:9194; "" for off.',
} satisfies Record<
  | keyof ServerConfig
  | `listen.${keyof ListenConfig}`
  | `keepalive.${keyof KeepaliveConfig}`
  | `push.${keyof PushConfig}`
  | `push.dns.${keyof DnsConfig}`
  | `log.${keyof LogConfig}`
  | `openvpn.${keyof OpenVpnConfig}`
  | `control.${keyof ControlConfig}`
  | `metrics.${keyof MetricsConfig}`,
  string
>;

/**
 * Writes `config` as the text of `server.yaml`, every key written out with a comment above
 * it, as `vpn init` leaves it for the user to edit. {@linkcode parseServerConfig} reads it
 * back to an equal config.
 */
export function serverConfigYaml(config: ServerConfig): string {
  const doc = new Document(config);
  doc.commentBefore = " vpn server configuration, written by `vpn init`.\n" +
    " A key left out takes its default; unknown keys are refused.\n" +
    " The PKI (CA, certificates and keys) lives in this file's directory.";
  annotate(doc.contents, "", SERVER_COMMENTS);
  // One line, as the list reads in the documentation: ciphers: [AES-256-GCM, ...].
  (doc.getIn(["openvpn", "ciphers"], true) as YAMLSeq).flow = true;
  return doc.toString({ flowCollectionPadding: false });
}

/**
 * Parses and checks the text of a client profile.
 *
 * @param source The file name used in error messages.
 * @throws {ConfigError} on bad YAML, an unknown or missing key, or a bad value.
 */
export function parseProfile(text: string, source: string): ClientProfile {
  const r = new Reader(source);
  const top = r.root(text, ["remote", "proto", "dev", "ca", "cert", "key"]);
  const remote = r.required(top.remote, "remote", isString, REMOTE_RULE);
  try {
    parseRemote(remote);
  } catch (error) {
    r.fail("remote", remote, reasonOf(error));
  }
  return {
    remote,
    ca: r.required(top.ca, "ca", isPem(CERTIFICATE), CERTIFICATE_RULE),
    cert: r.required(top.cert, "cert", isPem(CERTIFICATE), CERTIFICATE_RULE),
    key: r.required(top.key, "key", isPem(PRIVATE_KEY), PRIVATE_KEY_RULE),
    proto: r.value(top.proto, "proto", "auto", oneOf(PROTOS), PROTO_RULE),
    dev: r.value(top.dev, "dev", "vpn%d", isDeviceName, DEVICE_RULE),
  };
}

/**
 * Reads and parses a client profile.
 *
 * @throws {ConfigError} on bad YAML, an unknown or missing key, or a bad value.
 * @throws {Deno.errors.NotFound} and other I/O errors from reading the file.
 */
export async function loadProfile(path: string): Promise<ClientProfile> {
  return parseProfile(await Deno.readTextFile(path), path);
}

/** The comment written above each key of a client profile. */
const PROFILE_COMMENTS = {
  remote: "Server to connect to: host:port, host (port 1194) or [IPv6]:port.",
  proto: "How data packets travel: udp, tcp, or auto (UDP, falling back to TCP).",
  dev: "TUN device name, at most 15 bytes; %d becomes the lowest free number.",
  ca: "CA certificate that signed the server's certificate.",
  cert: "This client's certificate.",
  key: "This client's private key.",
} satisfies Record<keyof ClientProfile, string>;

/**
 * Writes a client profile, with the certificates and key as YAML block literals so they read
 * like the PEM files they are. Left-out settings are written with their defaults.
 * {@linkcode parseProfile} reads it back to an equal profile.
 */
export function profileYaml(profile: ClientProfileInit): string {
  const doc = new Document({
    remote: profile.remote,
    proto: profile.proto ?? "auto",
    dev: profile.dev ?? "vpn%d",
    ca: profile.ca,
    cert: profile.cert,
    key: profile.key,
  });
  doc.commentBefore = " vpn client profile, written by `vpn client add`.\n" +
    " It holds this client's private key: keep it secret.";
  for (const name of ["ca", "cert", "key"]) {
    (doc.get(name, true) as Scalar).type = "BLOCK_LITERAL";
  }
  annotate(doc.contents, "", PROFILE_COMMENTS);
  return doc.toString();
}

/**
 * Splits a server address into host and port: `host:port`, `host` (port `defaultPort`),
 * `[IPv6]:port`, `[IPv6]`, or a bare IPv6 address (which cannot carry a port).
 *
 * @example
 * ```ts
 * import { parseRemote } from "./config.ts";
 * parseRemote("vpn.example.com:443"); // { host: "vpn.example.com", port: 443 }
 * parseRemote("[fd00::1]"); // { host: "fd00::1", port: 1194 }
 * ```
 * @throws {TypeError} when `text` is not one of those forms.
 * @throws {RangeError} when the port is outside 1 to 65535.
 */
export function parseRemote(text: string, defaultPort = 1194): Remote {
  const fail = (reason: string): never => {
    throw new TypeError(`Cannot parse remote "${text}": ${reason}`);
  };
  let host = text;
  let portText: string | undefined;
  if (text.startsWith("[")) {
    const close = text.indexOf("]");
    if (close < 0) fail(`"[" has no matching "]"`);
    host = text.slice(1, close);
    const rest = text.slice(close + 1);
    if (rest !== "" && !rest.startsWith(":")) fail(`expected ":" and a port after "]"`);
    if (rest !== "") portText = rest.slice(1);
    if (!isIPv6(host)) fail(`"${host}" is not an IPv6 address`);
  } else if (text.indexOf(":") !== text.lastIndexOf(":")) {
    // Two or more colons: an IPv6 address, which needs brackets to carry a port.
    if (!isIPv6(text)) fail(`not an IPv6 address; write [address]:port to give a port`);
  } else {
    const colon = text.indexOf(":");
    if (colon >= 0) {
      host = text.slice(0, colon);
      portText = text.slice(colon + 1);
    }
    if (!isHost(host)) fail(`"${host}" is not a host name or IPv4 address`);
  }
  if (portText === undefined) return { host, port: defaultPort };
  if (!/^[0-9]{1,5}$/.test(portText)) fail(`port "${portText}" is not a number`);
  const port = Number(portText);
  if (port < 1 || port > 65535) {
    throw new RangeError(`Cannot parse remote "${text}": port must be from 1 to 65535`);
  }
  return { host, port };
}

const PORT_RULE = "must be a whole number from 1 to 65535";
const BOOLEAN_RULE = "must be true or false";
const HOST_RULE = "must be an IP address or a host name";
const DEVICE_RULE =
  `must be a device name of 1 to 15 bytes without "/", ":" or spaces, with at most one "%d"`;
const LOG_LEVEL_RULE = `must be one of ${LOG_LEVELS.join(", ")}`;
const PROTO_RULE = `must be one of ${PROTOS.join(", ")}`;
const REMOTE_RULE = "must be host:port, host or [IPv6]:port";
const CERTIFICATE = "CERTIFICATE";
const CERTIFICATE_RULE = "must be a PEM certificate (-----BEGIN CERTIFICATE-----)";
const PRIVATE_KEY = "[A-Z0-9 ]*PRIVATE KEY";
const PRIVATE_KEY_RULE = "must be a PEM private key (-----BEGIN PRIVATE KEY-----)";

/**
 * What a YAML error at `line` (1-based) most likely means: an unquoted value that starts with
 * ":" (`host: ::`, which YAML reads as a nested mapping), or a PEM block whose indentation broke
 * (named by its key, since the error points into base64 that says nothing).
 */
function yamlHint(text: string, line: number): string {
  const lines = text.split("\n");
  const bad = lines[line - 1] ?? "";
  const colon = /^\s*([A-Za-z_][\w.]*):\s+(:\S*)\s*(#.*)?$/.exec(bad);
  if (colon) {
    return `; a value that starts with ":" must be quoted: ${colon[1]}: "${colon[2]}"`;
  }
  for (let i = Math.min(line, lines.length) - 1; i >= 0; i--) {
    const key = /^\s*([A-Za-z_]\w*):\s*(\|[-+]?)?\s*$/.exec(lines[i]!);
    if (key?.[2]) {
      return ` (in "${key[1]}", the block that starts at line ${i + 1}: every line of a PEM ` +
        `block must be indented like its first line)`;
    }
    if (/^\s*[A-Za-z_]\w*:/.test(lines[i]!)) break;
  }
  return "";
}

/** Reads values out of one parsed file, throwing {@linkcode ConfigError}s that name it. */
class Reader {
  constructor(readonly source: string) {}

  /** Throws the error for a bad `value` at `key`. */
  fail(key: string, value: unknown, rule: string): never {
    throw new ConfigError(
      this.source,
      key,
      `${key}: ${describe(key, value)} is not allowed: ${rule}`,
    );
  }

  /** Parses `text` as YAML and returns its top-level mapping (empty for an empty file). */
  root(text: string, known: readonly string[]): Record<string, unknown> {
    const doc = parseDocument(text);
    const error = doc.errors[0];
    if (error !== undefined) {
      const where = error.linePos?.[0];
      const at = where === undefined ? "" : `line ${where.line}, column ${where.col}: `;
      // The library appends its own position and an excerpt; the position is already in `at`.
      const what = error.message.replace(/ at line \d+, column \d+:[\s\S]*$/, "");
      const hint = where === undefined ? "" : yamlHint(text, where.line);
      throw new ConfigError(this.source, undefined, `${at}invalid YAML: ${what}${hint}`);
    }
    let value: unknown;
    try {
      value = doc.toJS();
    } catch (error) {
      // For example an alias to an anchor that is not defined.
      throw new ConfigError(this.source, undefined, `invalid YAML: ${(error as Error).message}`);
    }
    if (value !== null && !isMapping(value)) {
      throw new ConfigError(
        this.source,
        undefined,
        `the file must be a mapping of keys (${known.join(", ")}), not ${describe("", value)}`,
      );
    }
    return this.mapping(value, "", known);
  }

  /**
   * Returns the mapping at `key`, empty when it is missing, after refusing any key it has
   * that is not in `known`.
   */
  mapping(value: unknown, key: string, known: readonly string[]): Record<string, unknown> {
    if (value === null || value === undefined) return {};
    if (!isMapping(value)) this.fail(key, value, `must be a mapping of ${known.join(", ")}`);
    const prefix = key === "" ? "" : `${key}.`;
    for (const name of Object.keys(value)) {
      if (known.includes(name)) continue;
      const near = closest(name, known);
      const hint = near === undefined ? "" : ` (did you mean "${prefix}${near}"?)`;
      throw new ConfigError(this.source, prefix + name, `unknown key "${prefix}${name}"${hint}`);
    }
    return value;
  }

  /** Returns `value`, or `fallback` when it is missing or empty; fails unless `accept`ed. */
  value<T>(
    value: unknown,
    key: string,
    fallback: T,
    accept: (value: unknown) => value is T,
    rule: string,
  ): T {
    if (value === null || value === undefined) return fallback;
    return accept(value) ? value : this.fail(key, value, rule);
  }

  /** Returns `value`; fails when it is missing or not `accept`ed. */
  required<T>(
    value: unknown,
    key: string,
    accept: (value: unknown) => value is T,
    rule: string,
  ): T {
    if (value === null || value === undefined) {
      throw new ConfigError(this.source, key, `missing key "${key}": it ${rule}`);
    }
    return accept(value) ? value : this.fail(key, value, rule);
  }

  /** Returns the VPN subnet in canonical form; fails unless the address pool accepts it. */
  subnet(value: unknown, key: string, fallback: string): string {
    const text = this.value(value, key, fallback, isString, "must be an IPv4 CIDR block");
    try {
      return new AddressPool(text).subnet;
    } catch (error) {
      return this.fail(key, text, reasonOf(error));
    }
  }

  /** Returns `subnet6` in canonical form or "none"; fails unless {@linkcode Subnet6} takes it. */
  subnet6(value: unknown, key: string, fallback: string, subnet: string): string {
    const text = this.value(value, key, fallback, isString, 'must be an IPv6 prefix or "none"');
    if (text === "none") return text;
    try {
      return new Subnet6(text, Number(subnet.split("/")[1])).subnet;
    } catch (error) {
      return this.fail(key, text, `${reasonOf(error)}; or "none" for an IPv4-only tunnel`);
    }
  }

  /** Returns a list of DNS server addresses in canonical form. */
  dnsServers(value: unknown, key: string): string[] {
    const rule = `must be a list of at most ${MAX_DNS_SERVERS} IP addresses such as 10.8.0.1`;
    return this.list(value, key, rule, MAX_DNS_SERVERS, (item, itemKey) => {
      const text = isString(item) ? item : this.fail(itemKey, item, "must be an IP address");
      try {
        return text.includes(":") ? formatIPv6(parseIPv6(text)) : formatIPv4(parseIPv4(text));
      } catch (error) {
        return this.fail(itemKey, text, reasonOf(error));
      }
    });
  }

  /** Returns a list of DNS domain names, lower case, without a trailing dot. */
  dnsDomains(value: unknown, key: string): string[] {
    const rule = `must be a list of at most ${MAX_DNS_DOMAINS} domain names such as corp.example`;
    return this.list(value, key, rule, MAX_DNS_DOMAINS, (item, itemKey) => {
      const text = isString(item) ? item.replace(/\.$/, "").toLowerCase() : "";
      if (!isDomainName(text)) {
        this.fail(
          itemKey,
          item,
          "must be a domain name: labels of letters, digits and hyphens, joined by dots",
        );
      }
      return text;
    });
  }

  /** Each item of a list of at most `max`, checked by `item`; missing is empty. */
  list<T>(
    value: unknown,
    key: string,
    rule: string,
    max: number,
    item: (item: unknown, key: string) => T,
  ): T[] {
    if (value === null || value === undefined) return [];
    if (!Array.isArray(value) || value.length > max) return this.fail(key, value, rule);
    return value.map((element: unknown, i) => item(element, `${key}[${i}]`));
  }

  /**
   * Returns a list of data-cipher names in canonical (upper) case, `fallback` when it is
   * missing; fails on an empty list, an unknown name or one listed twice.
   */
  ciphers(value: unknown, key: string, fallback: DataCipher[]): DataCipher[] {
    if (value === null || value === undefined) return [...fallback];
    const names = DATA_CIPHERS.join(", ");
    if (!Array.isArray(value)) return this.fail(key, value, `must be a list of ${names}`);
    if (value.length === 0) {
      this.fail(key, value, `must name at least one of ${names}: an empty list offers no cipher`);
    }
    const seen: DataCipher[] = [];
    value.forEach((item: unknown, i) => {
      const itemKey = `${key}[${i}]`;
      const name = DATA_CIPHERS.find((c) => typeof item === "string" && c === item.toUpperCase());
      if (name === undefined) this.fail(itemKey, item, `must be ${DATA_CIPHERS.join(" or ")}`);
      if (seen.includes(name)) this.fail(itemKey, item, `${name} is listed twice`);
      seen.push(name);
    });
    return seen;
  }

  /** Returns a list of CIDR blocks in canonical form; IPv6 ones only when `ipv6` is true. */
  routes(value: unknown, key: string, ipv6: boolean): string[] {
    const rule = "must be a list of CIDR blocks such as 192.168.50.0/24";
    if (value === null || value === undefined) return [];
    if (!Array.isArray(value)) return this.fail(key, value, rule);
    if (value.length > MAX_ROUTES) {
      this.fail(key, value, `must list at most ${MAX_ROUTES} networks (one PUSH carries them all)`);
    }
    return value.map((item: unknown, i) => {
      const itemKey = `${key}[${i}]`;
      const text = isString(item) ? item : this.fail(itemKey, item, "must be a CIDR block");
      let cidr;
      try {
        cidr = parseCidr(text);
      } catch (error) {
        return this.fail(itemKey, text, reasonOf(error));
      }
      if (cidr.family !== 4 && !ipv6) {
        this.fail(
          itemKey,
          text,
          "is an IPv6 network and the tunnel has no IPv6: set subnet6 (or remove this route)",
        );
      }
      if (cidr.address !== cidr.network) {
        this.fail(
          itemKey,
          text,
          `host bits are set (did you mean "${cidr.network}/${cidr.prefix}"?)`,
        );
      }
      return `${cidr.network}/${cidr.prefix}`;
    });
  }
}

/** The reason in one of our `Cannot parse X "text": reason` errors. */
function reasonOf(error: unknown): string {
  return (error as Error).message.replace(/^Cannot [^"]*"[^"]*": /, "");
}

/** A short description of a value for an error message; never the text of a private key. */
function describe(key: string, value: unknown): string {
  if (typeof value === "string") {
    if (key === "key" || key === "ca" || key === "cert") {
      const first = value.split("\n", 1)[0]!;
      return /^-----BEGIN [A-Z0-9 ]+-----$/.test(first)
        ? `"${first}..."`
        : `a text of ${value.length} character${value.length === 1 ? "" : "s"}`;
    }
    return JSON.stringify(value.length > 60 ? `${value.slice(0, 57)}...` : value);
  }
  if (Array.isArray(value)) return "a list";
  if (value instanceof Uint8Array) return "binary data";
  if (typeof value === "object" && value !== null) return "a mapping";
  return String(value);
}

/** The name in `known` closest to a mistyped `name`, if any is close enough to suggest. */
function closest(name: string, known: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Math.min(3, name.length);
  for (const candidate of known) {
    const distance = editDistance(name, candidate);
    if (distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }
  return best;
}

/** The Levenshtein distance: how many one-character edits turn `a` into `b`. */
function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const substitution = previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1);
      current.push(Math.min(previous[j]! + 1, current[j - 1]! + 1, substitution));
    }
    previous = current;
  }
  return previous[b.length]!;
}

/** Puts the comment for each key of `node` (and of its nested mappings) above the key. */
function annotate(node: unknown, prefix: string, comments: Record<string, string>): void {
  if (!isMap(node)) return;
  node.items.forEach((pair, i) => {
    if (!isScalar(pair.key)) return;
    const name = `${prefix}${String(pair.key.value)}`;
    const comment = comments[name];
    if (comment !== undefined) pair.key.commentBefore = ` ${comment}`;
    // A blank line between top-level sections; the header comment brings its own.
    if (prefix === "" && i > 0) pair.key.spaceBefore = true;
    annotate(pair.value, `${name}.`, comments);
  });
}

function isMapping(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && Object.getPrototypeOf(value) ===
      Object.prototype;
}

function isString(value: unknown): value is string {
  return typeof value === "string";
}

function isBoolean(value: unknown): value is boolean {
  return typeof value === "boolean";
}

function wholeNumber(min: number, max: number): (value: unknown) => value is number {
  return (value): value is number =>
    Number.isInteger(value) && (value as number) >= min &&
    (value as number) <= max;
}

function oneOf<T extends string>(allowed: readonly T[]): (value: unknown) => value is T {
  return (value): value is T => (allowed as readonly unknown[]).includes(value);
}

/** Whether `text` is a DNS name as resolvers take it: at most 253 bytes, labels of 1-63. */
export function isDomainName(text: string): boolean {
  return text.length > 0 && text.length <= 253 &&
    text.split(".").every((label) => /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/i.test(label));
}

function isIPv6(text: string): boolean {
  try {
    parseIPv6(text);
    return true;
  } catch {
    return false;
  }
}

/** An IPv4 address, an IPv6 address, or a DNS host name. */
function isHost(value: unknown): value is string {
  if (typeof value !== "string") return false;
  if (value.includes(":")) return isIPv6(value);
  // A name whose last label is all digits is no host name, so it must be an IPv4 address.
  if (/(^|\.)[0-9]+\.?$/.test(value)) {
    try {
      parseIPv4(value);
      return true;
    } catch {
      return false;
    }
  }
  const label = "[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?";
  return value.length <= 253 && new RegExp(`^${label}(\\.${label})*\\.?$`).test(value);
}

/** A Linux interface name (or `%d` pattern): what the kernel's dev_valid_name() accepts. */
function isDeviceName(value: unknown): value is string {
  if (typeof value !== "string" || value === "." || value === "..") return false;
  const bytes = new TextEncoder().encode(value).length;
  // IFNAMSIZ is 16 including the terminating NUL.
  if (bytes < 1 || bytes > 15 || /[/:\s]/.test(value)) return false;
  return !/%(?!d)/.test(value) && (value.match(/%/g) ?? []).length <= 1;
}

/** Accepts text made of one or more PEM blocks whose label matches `label` (a regex). */
function isPem(label: string): (value: unknown) => value is string {
  const block = new RegExp(
    `-----BEGIN (${label})-----\\r?\\n[A-Za-z0-9+/=\\s:,-]*?-----END \\1-----`,
    "g",
  );
  return (value): value is string =>
    typeof value === "string" && value.trim() !== "" && value.replace(block, "").trim() === "";
}
