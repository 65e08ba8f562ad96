/**
 * Stock OpenVPN 2.6 clients (`/usr/sbin/openvpn`) for end-to-end tests of `vpn serve`: profiles
 * exported by `vpn client add --format ovpn`, `openvpn` processes in the client namespaces of a
 * {@linkcode Topology}, edits of a profile's inline blocks, and packet counters.
 *
 * The client runs with the exported profile as its whole configuration; the command line adds
 * only `--verb 3`, a distinct `--dev` where several share a namespace, and whatever a test needs
 * on purpose (`--reneg-sec`). Every `openvpn` is started through the topology, which kills it on
 * dispose.
 *
 * @module
 */

import { parseDocument } from "yaml";
import type { Netns } from "./_netns.ts";
import type { Topology, VpnProcess } from "./_vpn.ts";

/** The stock client's UDP port on the server: `listen.port`, shared with our datagrams. */
export const OPENVPN_UDP_PORT = 1194;
/** The stock client's TCP port on the server: `openvpn.tcp_port` by default. */
export const OPENVPN_TCP_PORT = 1195;

/** The transport of a stock client. */
export type OvpnProto = "udp" | "tcp";

/** The server port a stock client of `proto` connects to. */
export function ovpnPort(proto: OvpnProto): number {
  return proto === "udp" ? OPENVPN_UDP_PORT : OPENVPN_TCP_PORT;
}

/**
 * Issues a client with `vpn client add NAME --format ovpn`, for client namespace `client` of
 * `net` (its remote is that namespace's server address), and returns the profile's path.
 */
export async function addOvpnClient(
  net: Topology,
  name: string,
  proto: OvpnProto = "udp",
  client = 0,
): Promise<string> {
  const out = `${net.dir}/${name}.ovpn`;
  await net.vpn([
    "client",
    "add",
    name,
    "--format",
    "ovpn",
    "--proto",
    proto,
    "--remote",
    `${net.serverIp(client)}:${ovpnPort(proto)}`,
    "--dir",
    net.dir,
    "--out",
    out,
  ]);
  return out;
}

/** Options of {@linkcode startOpenVpn}. */
export interface OpenVpnOptions {
  /** The TUN name, where several clients share a namespace. */
  dev?: string;
  /** More options for this test only, e.g. `["--reneg-sec", "6"]`. */
  extra?: string[];
}

/** Starts `openvpn --config PROFILE --verb 3` in client namespace `client` of `net`. */
export function startOpenVpn(
  net: Topology,
  client: number,
  profile: string,
  options: OpenVpnOptions = {},
): VpnProcess {
  const argv = ["openvpn", "--config", profile, "--verb", "3"];
  if (options.dev !== undefined) argv.push("--dev", options.dev);
  argv.push(...options.extra ?? []);
  return net.spawnCommand(net.clients[client]!, argv);
}

/** The stock client's line once its tunnel is up (addresses and routes set). */
export const TUNNEL_UP = /Initialization Sequence Completed/;

/** The text between `<name>` and `</name>` of a profile, trimmed; throws if there is none. */
export function inlineBlock(profile: string, name: string): string {
  const match = new RegExp(`<${name}>\\n([\\s\\S]*?)\\n</${name}>`).exec(profile);
  if (match === null) throw new Error(`the profile has no <${name}> block`);
  return match[1]!.trim();
}

/** `profile` with the body of its `<name>` block replaced by `body`. */
export function replaceBlock(profile: string, name: string, body: string): string {
  inlineBlock(profile, name);
  return profile.replace(
    new RegExp(`<${name}>\\n[\\s\\S]*?\\n</${name}>`),
    () => `<${name}>\n${body.trim()}\n</${name}>`,
  );
}

/** Writes a profile for the stock client: mode 0600, as `vpn client add` does. */
export async function writeProfile(path: string, text: string): Promise<string> {
  await Deno.writeTextFile(path, text, { mode: 0o600 });
  return path;
}

/**
 * Counts UDP packets a namespace exchanges with `port`, both ways, with two iptables rules
 * (no target: they only count). Read them with {@linkcode udpPackets}.
 */
export async function countUdp(ns: Netns, port: number): Promise<void> {
  await ns.run(["iptables", "-A", "OUTPUT", "-p", "udp", "--dport", String(port)]);
  await ns.run(["iptables", "-A", "INPUT", "-p", "udp", "--sport", String(port)]);
}

/** The packets counted by {@linkcode countUdp}: sent to the port and received from it. */
export async function udpPackets(
  ns: Netns,
  port: number,
): Promise<{ sent: number; received: number }> {
  const count = async (chain: string, match: string) => {
    const { stdout } = await ns.run(["iptables", "-L", chain, "-v", "-x", "-n"]);
    const line = stdout.split("\n").find((l) => l.trimEnd().endsWith(`udp ${match}:${port}`));
    if (line === undefined) throw new Error(`no counting rule in ${chain}:\n${stdout}`);
    return Number(line.trim().split(/\s+/)[0]);
  };
  return { sent: await count("OUTPUT", "dpt"), received: await count("INPUT", "spt") };
}

/** How many times `pattern` (which must have the `g` flag) matches `text`. */
export function occurrences(text: string, pattern: RegExp): number {
  return text.match(pattern)?.length ?? 0;
}

/**
 * Sets keys of the `server.yaml` that `vpn init` wrote for `net`, keeping the rest of it (and
 * its comments): `{ "openvpn.ciphers": ["CHACHA20-POLY1305"] }`. Unlike `Topology.configure`,
 * which replaces the file, every other setting stays as init wrote it.
 */
export async function mergeServerConfig(
  net: Topology,
  settings: Record<string, unknown>,
): Promise<void> {
  const path = `${net.dir}/server.yaml`;
  const doc = parseDocument(await Deno.readTextFile(path));
  for (const [key, value] of Object.entries(settings)) {
    doc.setIn(key.split("."), doc.createNode(value));
  }
  await Deno.writeTextFile(path, doc.toString());
}

/** `wait`, or its error with `other`'s output added: the other side's account of the failure. */
export async function alongside<T>(wait: Promise<T>, other: VpnProcess): Promise<T> {
  try {
    return await wait;
  } catch (error) {
    throw new Error(`${(error as Error).message}\nand meanwhile the other side:\n${other.log}`);
  }
}

/** Waits (20 s at most) until `client`'s tunnel is up; a failure shows `server`'s log too. */
export function waitForTunnel(client: VpnProcess, server: VpnProcess): Promise<true> {
  return alongside(client.waitForLog(TUNNEL_UP, 20_000), server);
}
