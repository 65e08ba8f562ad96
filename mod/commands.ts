/**
 * What each `vpn` command does, once `main.ts` has parsed its arguments. Each returns the exit
 * code: 0 done, 1 runtime failure, 2 usage or configuration error.
 *
 * @module
 */

import { Netlink } from "../ffi/netlink.ts";
import { TunError } from "../ffi/tun.ts";
import { Client, ClientError } from "./native/client.ts";
import {
  ConfigError,
  controlSocketPath,
  defaultServerConfig,
  loadProfile,
  loadServerConfig,
  parseRemote,
  parseServerConfig,
  profileYaml,
  type Proto,
  type ServerConfig,
  serverConfigYaml,
} from "./config.ts";
import { log, type LogLevel, setupLogging } from "./log.ts";
import { randomSubnet6 } from "./core/subnet6.ts";
import { type ClientSetCommand, SettingsCheck } from "./client_settings.ts";
import { UsageError } from "./usage_error.ts";
import {
  certificateNames,
  checkKeyPair,
  type ClientFormat,
  type ClientListing,
  DEFAULT_HOSTS,
  ensureTlsCryptKey,
  hasPki,
  initPki,
  issueClient,
  listClients,
  loadServerIdentity,
  loadTlsCryptKey,
  PkiError,
  pkiFilesIn,
  revokeClient,
  revokeSerial,
  setClientSettings,
  settingsOf,
  TLS_CRYPT_FILE,
  upgradeServerCertificate,
  writeFileAtomic,
} from "./pki.ts";
import type { UdpCipher } from "./native/messages.ts";
import { ovpnProfile } from "./openvpn/profile.ts";
import { formatStaticKey } from "./openvpn/tls_crypt.ts";
import { Server } from "./server.ts";
import { ControlServer } from "./control/server.ts";
import { installService } from "./service.ts";
import { becomeUser, openServerFiles, PrivilegeError, switchTarget } from "./system/privileges.ts";

/** Where `vpn serve`, `init` and `client` keep the PKI and `server.yaml` by default. */
export const DEFAULT_DIR = "/etc/vpn";

const logger = log("cli");

/** Exit code and message for an error that reached the top of a command. */
export function exitCodeOf(error: unknown): number {
  if (error instanceof Deno.errors.PermissionDenied) {
    console.error(`vpn: ${permissionMessage(error)}`);
    return 2;
  }
  const usage = error instanceof UsageError || error instanceof ConfigError ||
    error instanceof PkiError || error instanceof TunError || error instanceof TypeError ||
    error instanceof RangeError || error instanceof PrivilegeError;
  console.error(`vpn: ${error instanceof Error ? error.message : String(error)}`);
  return usage ? 2 : 1;
}

/**
 * "Permission denied (os error 13): open '/etc/vpn/ca.key'" as which file, who may use it, and
 * what to run. The file or directory that refused is the nearest one this user can stat.
 */
function permissionMessage(error: Error): string {
  const match = /^(.*?) \(os error \d+\): (\w+) '(.+)'$/.exec(error.message);
  if (match === null) return `${error.message}; run vpn as root (it needs CAP_NET_ADMIN too)`;
  const [, , call, path] = match as unknown as [string, string, string, string];
  const op = call.replace(/file$/, ""); // Deno says "readfile", "writefile"
  let owner = "";
  for (let p = path; p !== "" && p !== "/"; p = dirname(p)) {
    try {
      const info = Deno.statSync(p);
      const mode = (info.mode! & 0o7777).toString(8).padStart(4, "0");
      owner = ` (${p} belongs to uid ${info.uid}, mode ${mode}; this is uid ${Deno.uid()})`;
      break;
    } catch {
      continue;
    }
  }
  return `cannot ${op} ${path}: permission denied${owner}; run vpn as root (sudo) or as ` +
    `that owner, or give --dir, --out or --profile a path you may use`;
}

/** `path` without its last component ("." for a bare name). */
function dirname(path: string): string {
  const cut = path.replace(/\/+$/, "").lastIndexOf("/");
  return cut < 0 ? "." : cut === 0 ? "/" : path.slice(0, cut);
}

/** Options of `vpn init`. */
export interface InitCommand {
  dir: string;
  hosts: string[];
  subnet?: string;
  /** An IPv6 prefix or "none"; default a random unique local /64. */
  subnet6?: string;
  port?: number;
  force: boolean;
}

/**
 * `vpn init`: a CA, a server certificate and `server.yaml` with every default written out. An
 * existing `server.yaml` is the operator's and stays, unless `--force`.
 */
export async function init(options: InitCommand): Promise<number> {
  const config = defaultServerConfig();
  if (options.subnet !== undefined) config.subnet = options.subnet;
  // A random prefix, as RFC 4193 asks: two sites that later join will not clash.
  config.subnet6 = options.subnet6 ?? randomSubnet6();
  if (options.port !== undefined) {
    config.listen.port = options.port;
    // OpenVPN over TCP needs a port of its own; the next one, as 1195 follows 1194.
    config.openvpn.tcp_port = options.port < 65535 ? options.port + 1 : options.port - 1;
  }
  // Validated before anything is written, with the same rules as the file, and written in the
  // canonical form the server reads it in.
  const text = serverConfigYaml(
    parseServerConfig(serverConfigYaml(config), "--subnet/--subnet6/--port"),
  );
  const configPath = `${options.dir}/server.yaml`;
  const keepConfig = !options.force && await exists(configPath);
  const asked = [options.subnet, options.subnet6, options.port].some((o) => o !== undefined);
  if (keepConfig && asked) {
    throw new UsageError(
      `${configPath} exists; edit its subnet, subnet6 and listen.port there, or pass --force ` +
        `to write a new one`,
    );
  }
  const hosts = options.hosts.length > 0 ? options.hosts : localHosts();
  await initPki(options.dir, { hosts, force: options.force });
  // Atomic and never through a symlink planted at server.yaml, as the PKI's own files.
  if (!keepConfig) await writeFileAtomic(configPath, text, 0o644);
  console.log(
    `created the PKI in ${options.dir} (${keepConfig ? "kept the existing" : "and"} ` +
      `${configPath}) for ${hosts.join(", ")}`,
  );
  console.log(
    `created ${options.dir}/${TLS_CRYPT_FILE}, the tls-crypt key every OpenVPN profile ` +
      `("vpn client add NAME --format ovpn") carries`,
  );
  if (options.hosts.length === 0) {
    console.log(
      `profiles from "vpn client add" will connect to ${hosts[0]}; if clients know this ` +
        `server by another name, run "vpn init --dir ${options.dir} --host NAME --force"`,
    );
  }
  return 0;
}

/**
 * The names a fresh server is reached by, the likeliest to work from elsewhere first (the first
 * one goes into profiles). Anyone who connects can read them in the certificate, so they are no
 * more than clients need: a fully qualified host name and the public addresses (IPv4 first), or
 * where there is neither, the first private address (else a bare host name); loopback last.
 */
function localHosts(): string[] {
  const hosts = new Set<string>();
  let bare: string | undefined;
  const addresses: string[] = [];
  try {
    const name = Deno.hostname().toLowerCase();
    if (/^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$/.test(name) && !isLoopback(name)) {
      if (name.includes(".")) hosts.add(name);
      else bare = name;
    }
    using nl = Netlink.open();
    const all = nl.listAddresses().map((a) => a.address)
      .filter((a) => !isLoopback(a) && !/^(fe80:|169\.254\.)/i.test(a));
    addresses.push(...all.filter((a) => !a.includes(":")), ...all.filter((a) => a.includes(":")));
  } catch (error) {
    logger.debug("cannot list local addresses: {error}", { error: String(error) });
  }
  for (const a of addresses) if (!isPrivate(a)) hosts.add(a);
  const fallback = addresses[0] ?? bare;
  if (hosts.size === 0 && fallback !== undefined) hosts.add(fallback);
  for (const host of DEFAULT_HOSTS) hosts.add(host);
  return [...hosts];
}

/** Private (RFC 1918), shared (RFC 6598) and unique local (RFC 4193) addresses. */
function isPrivate(address: string): boolean {
  return /^(10\.|192\.168\.|172\.(1[6-9]|2\d|3[01])\.|100\.(6[4-9]|[7-9]\d|1[01]\d|12[0-7])\.|f[cd])/i
    .test(address);
}

/** Whether a host name or address can only be reached from this machine. */
function isLoopback(host: string): boolean {
  const h = host.toLowerCase().replace(/\.$/, "");
  return h === "localhost" || h.endsWith(".localhost") || /^127\./.test(h) || h === "::1" ||
    /^::ffff:127\./.test(h);
}

/** Options of `vpn serve`. */
export interface ServeCommand {
  /** The PKI directory; default the directory of `config`, else {@linkcode DEFAULT_DIR}. */
  dir?: string;
  config?: string;
  level?: LogLevel;
}

/** `vpn serve`: runs the server until SIGINT or SIGTERM. */
export async function serve(options: ServeCommand): Promise<number> {
  const dir = options.dir ?? (options.config ? dirname(options.config) : DEFAULT_DIR);
  if (!hasPki(dir)) await firstRun(dir, options.config ?? `${dir}/server.yaml`);
  const configPath = options.config ?? `${dir}/server.yaml`;
  const config = await readServerConfig(configPath);
  setupLogging(options.level ?? config.log.level);
  // Before anything starts: an unknown user, or one that cannot reach the PKI, fails here.
  const user = switchTarget(config.user, `user in ${configPath}`);
  if (user !== undefined) await openServerFiles(dir, configPath, user);
  if (await upgradeServerCertificate(dir)) {
    logger.warn(
      "re-issued {path} with the name clients verify added and the key usages OpenVPN " +
        "clients check (digitalSignature, serverAuth) in place, same key and names",
      { path: `${dir}/server.crt` },
    );
  }
  if (await ensureTlsCryptKey(dir)) {
    logger.info("created {path}, the tls-crypt key of OpenVPN clients (a PKI older than it)", {
      path: `${dir}/${TLS_CRYPT_FILE}`,
    });
  }
  // The control socket first: a second server on this directory is refused by name there,
  // before it would fail on a port or the TUN.
  let server: Server | undefined;
  const running = () => {
    if (server === undefined) throw new Error("the server is still starting; try again");
    return server;
  };
  const control = await ControlServer.start(controlSocketPath(config, dir), {
    status: () => running().status(),
    kill: (name) => running().kill(name),
    reload: () => running().reload(),
  }, { dir });
  try {
    server = await Server.start({
      dir,
      config,
      ...(options.config ? { configPath: options.config } : {}),
    });
    if (user !== undefined) {
      try {
        becomeUser(user, `user in ${configPath}`);
      } catch (error) {
        await server.stop("could not give up root");
        throw error;
      }
    } else if (Deno.uid() !== 0) {
      logger.info("running as uid {uid}, as started ({key} applies to a start as root)", {
        uid: Deno.uid(),
        key: `user: ${config.user}`,
      });
    }
    const stop = () => server!.stop();
    Deno.addSignalListener("SIGINT", stop);
    Deno.addSignalListener("SIGTERM", stop);
    try {
      await server.done;
    } finally {
      Deno.removeSignalListener("SIGINT", stop);
      Deno.removeSignalListener("SIGTERM", stop);
    }
  } finally {
    await control.stop();
  }
  return 0;
}

/** Options of `vpn service install`. */
export interface ServiceInstallCommand {
  dir: string;
  /** Where to write the unit; default as {@linkcode installService} says. */
  unit?: string;
  force?: boolean;
}

/** `vpn service install`: writes the systemd unit of DIR's server and says what to run next. */
export async function serviceInstall(options: ServiceInstallCommand): Promise<number> {
  // The unit runs this very vpn: the compiled binary, or Deno on this checkout's main.ts.
  const exec = Deno.build.standalone ? [Deno.execPath()] : [
    Deno.execPath(),
    "run",
    "--allow-all",
    "--unstable-net",
    new URL("../main.ts", import.meta.url).pathname,
  ];
  console.log(
    await installService({
      dir: options.dir,
      exec,
      ...(options.unit ? { unitPath: options.unit } : {}),
      ...(options.force ? { force: true } : {}),
    }),
  );
  return 0;
}

/**
 * A PKI is created without being asked for only in the default directory, and only when it holds
 * nothing of ours yet: a new CA elsewhere would serve happily while every existing client fails.
 */
async function firstRun(dir: string, configPath: string): Promise<void> {
  const present = pkiFilesIn(dir);
  if (present.length > 0) {
    throw new UsageError(
      `the PKI in ${dir} is incomplete: ${dir}/ca.crt is missing but ${present.join(", ")} ` +
        `exist; restore ca.crt from a backup, or run "vpn init --dir ${dir} --force" for a new ` +
        `CA (every client profile stops working)`,
    );
  }
  if (dir !== DEFAULT_DIR || await exists(configPath)) {
    throw new UsageError(
      `no PKI in ${dir} (no ca.crt); run "vpn init --dir ${dir}" to create one, or pass ` +
        `--dir with the directory that holds it`,
    );
  }
  console.error(
    `vpn: no PKI in ${dir}: first run, creating a new CA and server certificate there`,
  );
  await init({ dir, hosts: [], force: false });
}

async function readProfile(path: string) {
  await warnIfReadable(path);
  try {
    return await loadProfile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new UsageError(
        `${path} does not exist; on the server, "vpn client add NAME" writes one`,
      );
    }
    throw error;
  }
}

/** As ssh does for a key: a profile holds the client's private key, so others must not read it. */
async function warnIfReadable(path: string): Promise<void> {
  let mode: number | null;
  try {
    mode = (await Deno.stat(path)).mode;
  } catch {
    return; // loadProfile reports the missing file
  }
  if (mode !== null && (mode & 0o077) !== 0) {
    console.error(
      `vpn: warning: ${path} holds this client's private key but others may read it (mode ` +
        `${(mode & 0o777).toString(8).padStart(4, "0")}); run: chmod 600 ${path}`,
    );
  }
}

async function readServerConfig(path: string): Promise<ServerConfig> {
  try {
    return await loadServerConfig(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new UsageError(
        `${path} does not exist; run "vpn init --dir DIR" or pass --config FILE`,
      );
    }
    throw error;
  }
}

/** The transport of an OpenVPN profile. */
export type OvpnProto = "udp" | "tcp";

/** Every {@linkcode OvpnProto}. */
export const OVPN_PROTOS: readonly OvpnProto[] = ["udp", "tcp"];

/** Options of `vpn client add`. */
export interface ClientAddCommand {
  name: string;
  dir: string;
  remote?: string;
  out?: string;
  /** Our profile (`NAME.yaml`, the default) or OpenVPN's (`NAME.ovpn`). */
  format?: ClientFormat;
  /** The transport of an OpenVPN profile; default UDP, or TCP where server.yaml has no UDP. */
  proto?: OvpnProto;
}

/**
 * `vpn client add`: a client certificate in one self-contained profile, mode 0600: ours, or an
 * OpenVPN one with the tls-crypt key.
 */
export async function clientAdd(options: ClientAddCommand): Promise<number> {
  const format = options.format ?? "vpn";
  if (options.proto !== undefined && format !== "ovpn") {
    throw new UsageError(
      `--proto ${options.proto} is for OpenVPN profiles: add --format ovpn (a vpn profile ` +
        `picks UDP or TCP itself; "vpn connect --proto" overrides it)`,
    );
  }
  const out = options.out ?? `./${options.name}.${format === "ovpn" ? "ovpn" : "yaml"}`;
  if (await exists(out)) throw new UsageError(`${out} exists; remove it or choose another --out`);
  const config = await pkiServerConfig(options.dir);
  // Checked before issuing: a refused profile must not leave a certificate behind.
  const proto = format === "ovpn" ? ovpnProto(options.proto, config, options.dir) : undefined;
  const port = proto === "tcp" ? config.openvpn.tcp_port : config.listen.port;
  const remote = options.remote ?? await defaultRemote(options.dir, port);
  const target = parseRemote(remote, port);
  if (isLoopback(target.host)) {
    console.error(
      `vpn: warning: the profile's remote ${remote} is a loopback address: it works only on ` +
        `this machine; pass --remote HOST:PORT with the name or address clients reach this ` +
        `server by`,
    );
  }
  if (proto !== undefined && await ensureTlsCryptKey(options.dir)) {
    console.log(`created ${options.dir}/${TLS_CRYPT_FILE}, the tls-crypt key of OpenVPN profiles`);
  }
  const issued = await issueClient(options.dir, options.name, { format });
  const text = proto === undefined
    ? profileYaml({ remote, ca: issued.caPem, cert: issued.certPem, key: issued.keyPem })
    : ovpnProfile({
      remoteHost: target.host,
      port: target.port,
      proto,
      caPem: issued.caPem,
      certPem: issued.certPem,
      keyPem: issued.keyPem,
      tlsCryptKey: formatStaticKey(await loadTlsCryptKey(options.dir)),
      ciphers: config.openvpn.ciphers,
    });
  await Deno.writeTextFile(out, text, { mode: 0o600, createNew: true });
  await Deno.chmod(out, 0o600);
  console.log(`issued "${options.name}" (serial ${issued.serial}); profile written to ${out}`);
  return 0;
}

/** DIR/server.yaml, or the defaults where there is none (its absence means them). */
async function pkiServerConfig(dir: string): Promise<ServerConfig> {
  const path = `${dir}/server.yaml`;
  return await exists(path) ? await loadServerConfig(path) : defaultServerConfig();
}

/**
 * The transport of an OpenVPN profile: the one asked for, which server.yaml must have on, else
 * UDP where it is on, else TCP.
 */
function ovpnProto(asked: OvpnProto | undefined, config: ServerConfig, dir: string): OvpnProto {
  const on = OVPN_PROTOS.filter((proto) => config.openvpn[proto]);
  const [first] = on;
  if (first === undefined) {
    throw new UsageError(
      `${dir}/server.yaml has openvpn.udp and openvpn.tcp false: the server takes no OpenVPN ` +
        `clients; set one of them to true there and restart vpn serve`,
    );
  }
  if (asked === undefined) return first;
  if (!on.includes(asked)) {
    throw new UsageError(
      `--proto ${asked}: ${dir}/server.yaml has openvpn.${asked}: false, so the server takes ` +
        `no OpenVPN clients over ${asked.toUpperCase()}; pass --proto ${first}, or set ` +
        `openvpn.${asked}: true there and restart vpn serve`,
    );
  }
  return asked;
}

/**
 * The server certificate's first name that is not loopback (PKIs made before the first name
 * was the public one list `localhost` first) nor the identity name, which no resolver knows,
 * and `port`.
 */
async function defaultRemote(dir: string, port: number): Promise<string> {
  const { certPem } = await loadServerIdentity(dir);
  const names = certificateNames(certPem);
  const name = names.find((n) => !isLoopback(n) && !n.endsWith(".invalid")) ?? names[0] ??
    "localhost";
  return `${name.includes(":") ? `[${name}]` : name}:${port}`;
}

/** `vpn client revoke`: a running server drops the client within seconds. */
export async function clientRevoke(
  options: { dir: string } & ({ name: string } | { serial: string }),
): Promise<number> {
  const entry = "serial" in options
    ? await revokeSerial(options.dir, options.serial)
    : await revokeClient(options.dir, options.name);
  console.log(`revoked "${entry.name}" (serial ${entry.serial})`);
  return 0;
}

/** `vpn client list`: every issued client, its status, profile format and settings. */
export async function clientList(options: { dir: string }): Promise<number> {
  const clients = await listClients(options.dir);
  const rows = [[
    "NAME",
    "SERIAL",
    "STATUS",
    "EXPIRES",
    "FORMAT",
    "ADDRESS",
    "ROUTES",
    "FULL-TUNNEL",
  ]];
  for (const c of clients) {
    rows.push([
      c.name,
      c.serial,
      c.status,
      c.notAfter.slice(0, 10),
      c.format,
      ...settingsColumns(c),
    ]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  for (const row of rows) {
    console.log(row.map((cell, i) => cell.padEnd(widths[i]!)).join("  ").trimEnd());
  }
  return 0;
}

/** ADDRESS, ROUTES and FULL-TUNNEL of `vpn client list`; "-" for none or the server's default. */
function settingsColumns(c: ClientListing): string[] {
  const addresses = [c.address, c.address6].filter((a) => a !== undefined);
  return [
    addresses.length > 0 ? addresses.join(",") : "-",
    c.routes?.length ? c.routes.join(",") : "-",
    c.redirect_gateway === undefined ? "-" : c.redirect_gateway ? "yes" : "no",
  ];
}

/**
 * Options of `vpn client set`: each one absent leaves that setting as it is; `null` clears it
 * (a pool address, the address6 that follows the IPv4 one, the server's full-tunnel default).
 */
/** `vpn client set`: checks the settings against server.yaml and the other clients, records them. */
export async function clientSet(options: ClientSetCommand): Promise<number> {
  const config = await pkiServerConfig(options.dir);
  const check = new SettingsCheck(options, config);
  const entry = await setClientSettings(
    options.dir,
    options.name,
    (current, others) => check.apply(current, others),
  );
  const settings = settingsOf(entry);
  const pushed = config.push.redirect_gateway ? "yes" : "no";
  const rows = [
    ["address", settings.address ?? "from the pool"],
    [
      "address6",
      settings.address6 ??
        (config.subnet6 === "none" ? "none (no subnet6)" : "the one that follows the IPv4 address"),
    ],
    ["routes", settings.routes.length > 0 ? settings.routes.join(", ") : "none"],
    [
      "full tunnel",
      settings.redirectGateway === undefined
        ? `the server's default (${pushed})`
        : settings.redirectGateway
        ? "yes"
        : "no",
    ],
  ];
  console.log(`set "${options.name}":`);
  for (const [key, value] of rows) console.log(`  ${key!.padEnd(12)} ${value}`);
  console.log(`a running server applies it at ${options.name}'s next connection`);
  return 0;
}

export interface ConnectCommand {
  profile: string;
  remote?: string;
  dev?: string;
  proto?: Proto;
  /** false: no TUN segmentation offload. */
  offload?: boolean;
  /** The only AEAD to offer for the UDP data channel. */
  cipher?: UdpCipher;
  /** false: leave the host's DNS alone, whatever the server pushes. */
  dns?: boolean;
  /** Whom to become once connected, when started as root; default nobody. */
  user?: string;
  level?: LogLevel;
}

/**
 * Deno's TLS adds the roots these variables name to the profile's CA (read at the first TLS
 * use). Such a root, a TLS-inspection CA for instance, could certify the identity name the
 * client verifies (mod/pki.ts `serverIdentityName()`), which no public CA may.
 */
function refuseExtraRoots(): void {
  const stores = Deno.env.get("DENO_TLS_CA_STORE")?.split(",").map((s) => s.trim()) ?? [];
  const variable = Deno.env.has("DENO_CERT")
    ? "DENO_CERT"
    : stores.includes("system")
    ? "DENO_TLS_CA_STORE"
    : undefined;
  if (variable !== undefined) {
    throw new UsageError(
      `${variable} is set: it makes TLS trust more roots than the profile's CA, which is all ` +
        `this client trusts; unset it (env -u ${variable} vpn connect ...)`,
    );
  }
}

/** `vpn connect`: runs the client until SIGINT or SIGTERM, or until the server refuses it. */
export async function connect(options: ConnectCommand): Promise<number> {
  refuseExtraRoots();
  const profile = await readProfile(options.profile);
  const { host, port } = parseRemote(options.remote ?? profile.remote);
  // Before any connection: a key that cannot sign for its certificate fails every AUTH.
  await checkKeyPair(profile.cert, profile.key, options.profile);
  setupLogging(options.level ?? "info");
  const user = switchTarget(options.user ?? "nobody", "--user");
  const stateDir = Deno.env.get("VPN_STATE_DIR");
  const client = new Client({
    profile,
    host,
    port,
    proto: options.proto ?? profile.proto,
    ...(options.offload === false ? { offload: false } : {}),
    ...(options.cipher ? { cipher: options.cipher } : {}),
    ...(options.dns === false ? { dns: false } : {}),
    ...(options.dev ? { dev: options.dev } : {}),
    // Where the record of the host route and DNS it changed lives (README: Full tunnel).
    ...(stateDir ? { stateDir } : {}),
    ...(user ? { user } : {}),
  });
  const stop = () => client.stop();
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
  try {
    await client.run();
    return 0;
  } catch (error) {
    if (error instanceof ClientError) {
      logger.error("{message}", { message: error.message });
      return 1;
    }
    throw error;
  } finally {
    Deno.removeSignalListener("SIGINT", stop);
    Deno.removeSignalListener("SIGTERM", stop);
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}
