/**
 * One in-process VPN for protocol tests without root: a PKI in a temp dir, a Server on an
 * ephemeral port of 127.0.0.1 with a MemoryTun, and Clients with MemoryTuns, so packets are
 * injected and taken by the test; and the bounded waits every such test uses.
 *
 * @module
 */

import { assertEquals } from "./_assert.ts";
import { waitUntil, within } from "./_wait.ts";
import { Client } from "../mod/native/client.ts";
import { type ClientProfile, defaultServerConfig, type ServerConfig } from "../mod/config.ts";
import { MemoryTun } from "../mod/core/memory_tun.ts";
import { initPki, issueClient } from "../mod/pki.ts";
import { Server } from "../mod/server.ts";

export const HOST = "127.0.0.1";
export const HOSTS = [HOST, "localhost"];
/** Bound on waits for something that takes milliseconds when the code works. */
export const SHORT_MS = 5000;

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The bounded waits of tests/_wait.ts, by the names these tests have always used. */
export { waitUntil as waitFor, within };

/** The next packets written into `tun`, waiting at most SHORT_MS. */
export function takeFrom(tun: MemoryTun): Promise<Uint8Array[]> {
  return within(tun.take(), SHORT_MS, `a packet out of ${tun.name}`);
}

export function octets(address: string): number[] {
  return address.split(".").map(Number);
}

/** A UDP-over-IPv4 packet: 20-byte header (no options) and `payload` (no UDP header). */
export function ipv4Packet(source: string, destination: string, text: string): Uint8Array {
  const payload = new TextEncoder().encode(text);
  const packet = new Uint8Array(20 + payload.length);
  const view = new DataView(packet.buffer);
  packet[0] = 0x45; // version 4, IHL 5 words
  view.setUint16(2, packet.length); // total length
  packet[8] = 64; // TTL
  packet[9] = 17; // protocol: UDP
  packet.set(octets(source), 12);
  packet.set(octets(destination), 16);
  let sum = 0;
  for (let i = 0; i < 20; i += 2) sum += view.getUint16(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  view.setUint16(10, ~sum & 0xffff); // header checksum
  packet.set(payload, 20);
  return packet;
}

/** A running Client with its TUN; `outcome` settles with run(): undefined, or its error. */
export interface RunningClient {
  name: string;
  client: Client;
  tun: MemoryTun;
  outcome: Promise<unknown>;
}

/** Credentials of a client: its own cert and key, and the CA it trusts the server with. */
export interface Credentials {
  cert: string;
  key: string;
  ca: string;
}

/**
 * One test's world: a PKI in a temp dir, a server on an ephemeral port with a MemoryTun, and
 * clients. {@linkcode close} stops everything and removes the dir.
 */
export class Lab {
  readonly root: string;
  readonly dir: string;
  readonly config: ServerConfig;
  server!: Server;
  serverTun!: MemoryTun;
  readonly clients: RunningClient[] = [];
  #servers: Server[] = [];

  private constructor(root: string, config: ServerConfig) {
    this.root = root;
    this.dir = `${root}/pki`;
    this.config = config;
  }

  /** A fresh PKI and a started server; `configure` may change the config first. */
  static async open(configure: (config: ServerConfig) => void = () => {}): Promise<Lab> {
    const root = await Deno.makeTempDir({ prefix: "vpn-session-test-" });
    const config = defaultServerConfig();
    config.listen.host = HOST;
    config.listen.port = 0;
    configure(config);
    const lab = new Lab(root, config);
    try {
      await initPki(lab.dir, { hosts: HOSTS });
      await lab.startServer();
    } catch (error) {
      await lab.close();
      throw error;
    }
    return lab;
  }

  get port(): number {
    return this.server.port;
  }

  /** Starts a server (again) on `port`, 0 for any; it becomes {@linkcode server}. */
  async startServer(port = 0): Promise<Server> {
    this.serverTun = new MemoryTun({ name: "server-tun" });
    const config = { ...this.config, listen: { ...this.config.listen, port } };
    this.server = await Server.start({ dir: this.dir, config, tun: this.serverTun });
    this.#servers.push(this.server);
    return this.server;
  }

  /** Issues a client certificate from this lab's PKI. */
  async issue(name: string): Promise<Credentials> {
    const issued = await issueClient(this.dir, name);
    return { cert: issued.certPem, key: issued.keyPem, ca: issued.caPem };
  }

  /** Starts a client with `credentials` (issued here as `name` by default). */
  async connect(name: string, credentials?: Credentials): Promise<RunningClient> {
    const { cert, key, ca } = credentials ?? await this.issue(name);
    const port = this.port;
    const profile: ClientProfile = {
      remote: `${HOST}:${port}`,
      ca,
      cert,
      key,
      proto: "auto",
      dev: "vpn%d",
    };
    const tun = new MemoryTun({ name: `${name}-tun` });
    const client = new Client({ profile, host: HOST, port, tun });
    const outcome = client.run().then(() => undefined, (error: unknown) => error);
    const running = { name, client, tun, outcome };
    this.clients.push(running);
    return running;
  }

  /** Starts a client and waits until it has an address. */
  async connected(name: string, credentials?: Credentials): Promise<RunningClient> {
    const running = await this.connect(name, credentials);
    await waitUntil(
      () => running.client.connected,
      SHORT_MS,
      `${name} gets an address`,
    );
    return running;
  }

  /** Stops a client and waits (bounded) for its run() to settle; returns run()'s error. */
  async stopClient(running: RunningClient): Promise<unknown> {
    await running.client.stop();
    return await within(running.outcome, SHORT_MS, `${running.name}'s run() settles`);
  }

  /** Stops every client and server, then removes the temp dir. */
  async close(): Promise<void> {
    try {
      for (const running of this.clients) await this.stopClient(running);
      for (const server of this.#servers) await server.stop();
    } finally {
      await Deno.remove(this.root, { recursive: true });
    }
  }
}

/** Runs `fn` in a fresh Lab and always closes it. */
export async function withLab(
  fn: (lab: Lab) => Promise<void>,
  configure?: (config: ServerConfig) => void,
): Promise<void> {
  const lab = await Lab.open(configure);
  try {
    await fn(lab);
  } finally {
    await lab.close();
  }
}

/** Asserts that a packet injected into `from` comes out of `to`, byte for byte. */
export async function assertPasses(
  from: MemoryTun,
  to: MemoryTun,
  packet: Uint8Array,
): Promise<void> {
  from.inject(packet);
  assertEquals(await takeFrom(to), [packet]);
}
