/**
 * A real VPN in namespaces for end-to-end tests: one server namespace, client namespaces
 * joined to it by veth pairs, `vpn` processes started from main.ts, and their logs.
 *
 * Client i reaches the server at 172.30.(i+1).1 (and, with `ipv6`, at fd00:30:(i+1)::1); the
 * server certificate names all of them.
 *
 * @module
 */

import { parseDocument } from "yaml";
import { denoScript, Netns, run } from "./_netns.ts";
import { exitOf, kill, within } from "./_wait.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

/** Polls `check` until it returns a value other than undefined, for at most `ms`. */
export async function waitFor<T>(
  what: string,
  check: () => Promise<T | undefined> | T | undefined,
  ms = 15_000,
): Promise<T> {
  const deadline = Date.now() + ms;
  while (true) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** A `vpn` process (or any other long-running one) with its output kept. */
export class VpnProcess {
  readonly child: Deno.ChildProcess;
  readonly output: string[] = [];
  readonly #reading: Promise<void>;
  /** Set once both output streams ended: nothing more will be logged. */
  #ended = false;

  constructor(child: Deno.ChildProcess) {
    this.child = child;
    this.#reading = Promise.all([this.#collect(child.stdout), this.#collect(child.stderr)]).then(
      () => {
        this.#ended = true;
      },
    );
  }

  async #collect(stream: ReadableStream<Uint8Array>): Promise<void> {
    for await (const text of stream.pipeThrough(new TextDecoderStream())) this.output.push(text);
  }

  /** Everything the process printed so far. */
  get log(): string {
    return this.output.join("");
  }

  /**
   * Waits until the output matches `pattern`; fails at once when the process has ended
   * without it, and with the output either way.
   */
  async waitForLog(pattern: RegExp, ms = 15_000): Promise<true> {
    try {
      return await waitFor(`log ${pattern}`, () => {
        if (pattern.test(this.log)) return true;
        if (this.#ended) throw new Error(`the process ended without logging ${pattern}`);
        return undefined;
      }, ms);
    } catch (error) {
      throw new Error(`${(error as Error).message}; output:\n${this.log}`);
    }
  }

  /** Sends a signal and waits (bounded) for the exit code. */
  async stop(signal: Deno.Signal = "SIGTERM", ms = 10_000): Promise<number> {
    try {
      this.child.kill(signal);
    } catch { /* already gone */ }
    return await this.exited(ms);
  }

  /** The exit code, waiting at most `ms` (then the process is killed). */
  async exited(ms = 15_000): Promise<number> {
    let status: Deno.CommandStatus;
    try {
      status = await exitOf(this.child, ms, "the process");
    } catch (error) {
      throw new Error(`${(error as Error).message}; output:\n${this.log}`);
    }
    // Its pipes close with it; a process it left behind could hold them open.
    await within(this.#reading, 5000, `the end of the output of a process that exited`);
    return status.code;
  }
}

/** Options of {@linkcode Topology.create}. */
export interface TopologyOptions {
  /** Also give each link IPv6 addresses (fd00:30:(i+1)::1 and ::2), named in the certificate. */
  ipv6?: boolean;
}

/** A server namespace and client namespaces, torn down on dispose. */
export class Topology implements AsyncDisposable {
  readonly server: Netns;
  readonly clients: Netns[];
  readonly dir: string;
  readonly #processes: VpnProcess[] = [];

  private constructor(server: Netns, clients: Netns[], dir: string) {
    this.server = server;
    this.clients = clients;
    this.dir = dir;
  }

  /** Creates the namespaces and links, and a PKI for the server's link addresses. */
  static async create(
    clientCount: number,
    initArgs: string[] = [],
    options: TopologyOptions = {},
  ): Promise<Topology> {
    const dir = await Deno.makeTempDir({ prefix: "vpn-e2e-" });
    const server = await Netns.create("srv");
    const clients: Netns[] = [];
    const topology = new Topology(server, clients, dir);
    try {
      const hosts: string[] = [];
      for (let i = 0; i < clientCount; i++) {
        const ns = await Netns.create(`c${i}`);
        clients.push(ns);
        const link = `${Deno.pid % 1000}x${i}`;
        await run([
          "ip",
          "link",
          "add",
          `vs${link}`,
          "netns",
          server.name,
          "type",
          "veth",
          "peer",
          `vc${link}`,
          "netns",
          ns.name,
        ]);
        await server.run(["ip", "addr", "add", `${topology.serverIp(i)}/24`, "dev", `vs${link}`]);
        await ns.run(["ip", "addr", "add", `172.30.${i + 1}.2/24`, "dev", `vc${link}`]);
        await server.run(["ip", "link", "set", `vs${link}`, "up"]);
        await ns.run(["ip", "link", "set", `vc${link}`, "up"]);
        hosts.push("--host", topology.serverIp(i));
        if (options.ipv6) {
          // nodad: usable at once, instead of after duplicate address detection.
          const add = ["ip", "-6", "addr", "add"];
          await server.run([...add, `${topology.serverIp6(i)}/64`, "dev", `vs${link}`, "nodad"]);
          await ns.run([...add, `fd00:30:${i + 1}::2/64`, "dev", `vc${link}`, "nodad"]);
          hosts.push("--host", topology.serverIp6(i));
        }
      }
      await topology.vpn(["init", "--dir", dir, ...hosts, ...initArgs]);
      const config = parseDocument(await Deno.readTextFile(`${dir}/server.yaml`));
      config.setIn(["control", "socket"], topology.#controlSocket);
      await Deno.writeTextFile(`${dir}/server.yaml`, config.toString());
      return topology;
    } catch (error) {
      await topology[Symbol.asyncDispose]();
      throw error;
    }
  }

  /** The server's link address as seen by client i. */
  serverIp(i: number): string {
    return `172.30.${i + 1}.1`;
  }

  /** The server's IPv6 link address as seen by client i (with the `ipv6` option). */
  serverIp6(i: number): string {
    return `fd00:30:${i + 1}::1`;
  }

  /**
   * The environment of every `vpn` this topology starts: clients keep the record of what they
   * change on the host in the topology's directory, not in the host's /var/lib/vpn.
   */
  get env(): string[] {
    return ["env", `VPN_STATE_DIR=${this.dir}/client-state`];
  }

  /** Starts `vpn ARGS` as given in namespace `ns` (killed on dispose), e.g. without -v. */
  spawn(ns: Netns, args: string[], wrap: string[] = []): VpnProcess {
    const process = new VpnProcess(
      ns.spawn([...wrap, ...this.env, ...denoScript(MAIN, ...args)]),
    );
    this.#processes.push(process);
    return process;
  }

  /** Runs a short `vpn` command in the root namespace (init, client add/revoke/list). */
  async vpn(args: string[], allowFail = false) {
    return await run(denoScript(MAIN, ...args), allowFail);
  }

  /** Writes server.yaml lines (YAML text) over the defaults. */
  async configure(yaml: string): Promise<void> {
    const control = /^control:/m.test(yaml) ? "" : this.#controlYaml;
    await Deno.writeTextFile(`${this.dir}/server.yaml`, `${yaml.replace(/\n?$/, "\n")}${control}`);
  }

  /**
   * The control socket in the topology's directory, not the host's /run/vpn, where a server
   * killed at dispose would leave its socket.
   */
  get #controlYaml(): string {
    return `control:\n  socket: ${this.#controlSocket}\n`;
  }

  get #controlSocket(): string {
    return `${this.dir}/control.sock`;
  }

  /** Starts `vpn serve` in the server namespace and waits until it listens. */
  async startServer(extra: string[] = [], wrap: string[] = []): Promise<VpnProcess> {
    const argv = [...wrap, ...denoScript(MAIN, "serve", "--dir", this.dir, "-v", ...extra)];
    const process = new VpnProcess(this.server.spawn(argv));
    this.#processes.push(process);
    await process.waitForLog(/listening on/);
    return process;
  }

  /** Issues a client certificate; returns the profile path. */
  async addClient(name: string): Promise<string> {
    const out = `${this.dir}/${name}.yaml`;
    await this.vpn(["client", "add", name, "--dir", this.dir, "--out", out]);
    return out;
  }

  /** Starts any program `argv` in `ns` (tcpdump, a script), killed on dispose like `vpn`. */
  spawnCommand(ns: Netns, argv: string[], options: Deno.CommandOptions = {}): VpnProcess {
    const process = new VpnProcess(ns.spawn(argv, options));
    this.#processes.push(process);
    return process;
  }

  /** Starts `vpn connect` in client namespace i to its server address. */
  connect(i: number, profile: string, extra: string[] = [], wrap: string[] = []): VpnProcess {
    const ns = this.clients[i]!;
    const argv = denoScript(
      MAIN,
      "connect",
      `${this.serverIp(i)}:1194`,
      "--profile",
      profile,
      ...extra,
    );
    const process = new VpnProcess(ns.spawn([...wrap, ...this.env, ...argv]));
    this.#processes.push(process);
    return process;
  }

  /** Waits until a TUN in namespace `ns` carries `address` and returns that device's name. */
  waitForAddress(ns: Netns, address: string, ms = 15_000): Promise<string> {
    return waitFor(`${address} in ${ns.name}`, async () => {
      const links = JSON.parse((await ns.run(["ip", "-j", "-4", "addr", "show"])).stdout);
      const link = links.find((l: { addr_info: { local: string }[] }) =>
        l.addr_info.some((a) => a.local === address)
      );
      return link?.ifname as string | undefined;
    }, ms);
  }

  /** Pings from namespace `ns`; true when every echo came back. */
  async ping(ns: Netns, address: string, count = 3): Promise<boolean> {
    const result = await ns.run(
      ["ping", "-c", String(count), "-i", "0.2", "-W", "2", address],
      true,
    );
    // ping exits 0 after a single reply; the promise is every reply.
    const received = / (\d+) received/.exec(result.stdout)?.[1];
    return received === String(count);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    const stuck: string[] = [];
    for (const process of this.#processes) {
      kill(process.child);
      // Cleanup goes on past a process that does not die, and says so at the end.
      await within(process.child.status, 5000, "SIGKILL").catch(() => stuck.push(process.log));
    }
    for (const ns of [this.server, ...this.clients]) await ns[Symbol.asyncDispose]();
    await Deno.remove(this.dir, { recursive: true });
    if (stuck.length > 0) {
      throw new Error(`${stuck.length} processes outlived SIGKILL by 5 s; output:\n${stuck}`);
    }
  }
}

/**
 * An argv prefix that runs a command in a private mount namespace where every libcrypto of
 * the system reads as /dev/null: as on a machine without OpenSSL. The host is untouched.
 */
export function withoutLibcrypto(): string[] {
  const libraries: string[] = [];
  for (
    const dir of [
      "/usr/lib/x86_64-linux-gnu",
      "/lib/x86_64-linux-gnu",
      "/usr/lib/aarch64-linux-gnu",
      "/usr/lib",
    ]
  ) {
    try {
      for (const entry of Deno.readDirSync(dir)) {
        if (entry.name.startsWith("libcrypto.so")) libraries.push(`${dir}/${entry.name}`);
      }
    } catch { /* no such directory */ }
  }
  const mounts = libraries.map((path) => `mount --bind /dev/null ${path}`).join(" && ");
  return [
    "unshare",
    "--mount",
    "--propagation",
    "private",
    "sh",
    "-c",
    `${mounts} && exec "$@"`,
    "sh",
  ];
}
