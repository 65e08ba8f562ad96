/**
 * What each `vpn` command does, once `main.ts` has parsed its arguments. Each returns the exit
 * code: 0 done, 1 runtime failure, 2 usage or configuration error.
 *
 * @module
 */

import { Netlink } from "../ffi/netlink.ts";
import { Client, ClientError } from "./client.ts";
import {
  ConfigError,
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
import {
  certificateNames,
  DEFAULT_HOSTS,
  hasPki,
  initPki,
  issueClient,
  listClients,
  loadServerIdentity,
  PkiError,
  revokeClient,
} from "./pki.ts";
import type { UdpCipher } from "./messages.ts";
import { Server } from "./server.ts";

/** Where `vpn serve`, `init` and `client` keep the PKI and `server.yaml` by default. */
export const DEFAULT_DIR = "/etc/vpn";

const logger = log("cli");

/** A usage or configuration problem: exit code 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/** Exit code and message for an error that reached the top of a command. */
export function exitCodeOf(error: unknown): number {
  const usage = error instanceof UsageError || error instanceof ConfigError ||
    error instanceof PkiError || error instanceof TypeError || error instanceof RangeError;
  console.error(`vpn: ${error instanceof Error ? error.message : String(error)}`);
  return usage ? 2 : 1;
}

/** Options of `vpn init`. */
export interface InitCommand {
  dir: string;
  hosts: string[];
  subnet?: string;
  port?: number;
  force: boolean;
}

/** `vpn init`: a CA, a server certificate and `server.yaml` with every default written out. */
export async function init(options: InitCommand): Promise<number> {
  const config = defaultServerConfig();
  if (options.subnet !== undefined) config.subnet = options.subnet;
  if (options.port !== undefined) config.listen.port = options.port;
  // Validate before anything is written, with the same rules as the file.
  const text = serverConfigYaml(config);
  parseServerConfig(text, "--subnet/--port");
  const hosts = options.hosts.length > 0 ? options.hosts : localHosts();
  await initPki(options.dir, { hosts, force: options.force });
  await Deno.writeTextFile(`${options.dir}/server.yaml`, text, { mode: 0o644 });
  console.log(`created the PKI and ${options.dir}/server.yaml for ${hosts.join(", ")}`);
  return 0;
}

/** The names a fresh server is reached by: loopback, the host name, and its addresses. */
function localHosts(): string[] {
  const hosts = new Set(DEFAULT_HOSTS);
  try {
    const name = Deno.hostname().toLowerCase();
    if (/^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$/.test(name)) hosts.add(name);
    using nl = Netlink.open();
    for (const a of nl.listAddresses()) {
      if (!a.address.startsWith("fe80:") && a.address !== "::1") hosts.add(a.address);
    }
  } catch (error) {
    logger.debug("cannot list local addresses: {error}", { error: String(error) });
  }
  return [...hosts];
}

/** Options of `vpn serve`. */
export interface ServeCommand {
  dir: string;
  config?: string;
  level?: LogLevel;
}

/** `vpn serve`: runs the server until SIGINT or SIGTERM. */
export async function serve(options: ServeCommand): Promise<number> {
  const { dir } = options;
  if (!hasPki(dir)) {
    console.log(`no PKI in ${dir}: creating one`);
    await init({ dir, hosts: [], force: false });
  }
  const config = await readServerConfig(options.config ?? `${dir}/server.yaml`);
  setupLogging(options.level ?? config.log.level);
  const server = await Server.start({ dir, config });
  const stop = () => server.stop();
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
  try {
    await server.done;
  } finally {
    Deno.removeSignalListener("SIGINT", stop);
    Deno.removeSignalListener("SIGTERM", stop);
  }
  return 0;
}

async function readProfile(path: string) {
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

/** Options of `vpn client add`. */
export interface ClientAddCommand {
  name: string;
  dir: string;
  remote?: string;
  out?: string;
}

/** `vpn client add`: a client certificate in one self-contained profile, mode 0600. */
export async function clientAdd(options: ClientAddCommand): Promise<number> {
  const out = options.out ?? `./${options.name}.yaml`;
  if (await exists(out)) throw new UsageError(`${out} exists; remove it or choose another --out`);
  const remote = options.remote ?? await defaultRemote(options.dir);
  parseRemote(remote);
  const issued = await issueClient(options.dir, options.name);
  const text = profileYaml({ remote, ca: issued.caPem, cert: issued.certPem, key: issued.keyPem });
  await Deno.writeTextFile(out, text, { mode: 0o600, createNew: true });
  await Deno.chmod(out, 0o600);
  console.log(`issued "${options.name}" (serial ${issued.serial}); profile written to ${out}`);
  return 0;
}

/** The server's first certificate name and its configured port. */
async function defaultRemote(dir: string): Promise<string> {
  const { certPem } = await loadServerIdentity(dir);
  const name = certificateNames(certPem)[0] ?? "localhost";
  let port = 1194;
  if (await exists(`${dir}/server.yaml`)) {
    port = (await loadServerConfig(`${dir}/server.yaml`)).listen.port;
  }
  return `${name.includes(":") ? `[${name}]` : name}:${port}`;
}

/** `vpn client revoke`: a running server drops the client within seconds. */
export async function clientRevoke(options: { name: string; dir: string }): Promise<number> {
  const entry = await revokeClient(options.dir, options.name);
  console.log(`revoked "${entry.name}" (serial ${entry.serial})`);
  return 0;
}

/** `vpn client list`: name, serial, status and expiry of every issued client. */
export async function clientList(options: { dir: string }): Promise<number> {
  const clients = await listClients(options.dir);
  const rows = [["NAME", "SERIAL", "STATUS", "EXPIRES"]];
  for (const c of clients) rows.push([c.name, c.serial, c.status, c.notAfter.slice(0, 10)]);
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  for (const row of rows) {
    console.log(row.map((cell, i) => cell.padEnd(widths[i]!)).join("  ").trimEnd());
  }
  return 0;
}

/** Options of `vpn connect`. */
export interface ConnectCommand {
  profile: string;
  remote?: string;
  dev?: string;
  proto?: Proto;
  /** false: no TUN segmentation offload. */
  offload?: boolean;
  /** The only AEAD to offer for the UDP data channel. */
  cipher?: UdpCipher;
  level?: LogLevel;
}

/** `vpn connect`: runs the client until SIGINT or SIGTERM, or until the server refuses it. */
export async function connect(options: ConnectCommand): Promise<number> {
  const profile = await readProfile(options.profile);
  const { host, port } = parseRemote(options.remote ?? profile.remote);
  setupLogging(options.level ?? "info");
  const client = new Client({
    profile,
    host,
    port,
    proto: options.proto ?? profile.proto,
    ...(options.offload === false ? { offload: false } : {}),
    ...(options.cipher ? { cipher: options.cipher } : {}),
    ...(options.dev ? { dev: options.dev } : {}),
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
