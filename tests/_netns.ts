/**
 * Helpers for end-to-end tests that need root: throwaway network namespaces, commands run
 * inside them, and a test wrapper that skips where root is missing (and fails under CI).
 *
 * @module
 */

/** True where this process can create namespaces and TUN devices. */
export function canRunRootTests(): string | undefined {
  if (Deno.build.os !== "linux") return "not Linux";
  if (Deno.uid() !== 0) return "not root";
  try {
    Deno.statSync("/dev/net/tun");
  } catch {
    return "no /dev/net/tun";
  }
  return undefined;
}

const missing = canRunRootTests();

/**
 * Registers a test that needs root and real devices. Without them it is ignored locally and
 * fails under CI (`CI=true`), so that a green CI run always includes it.
 */
export function rootTest(name: string, fn: (t: Deno.TestContext) => Promise<void> | void): void {
  const ci = Deno.env.get("CI") === "true";
  Deno.test({
    name,
    ignore: missing !== undefined && !ci,
    sanitizeResources: false,
    sanitizeOps: false,
    fn: missing !== undefined
      ? () => {
        throw new Error(`root test cannot run here (${missing}); CI requires it`);
      }
      : fn,
  });
}

/** The result of a finished command. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `cmd` to completion; throws with its output unless `allowFail` and it fails. */
export async function run(cmd: string[], allowFail = false): Promise<RunResult> {
  const [program, ...args] = cmd;
  const out = await new Deno.Command(program!, {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const result = {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
  if (!allowFail && out.code !== 0) {
    throw new Error(`${cmd.join(" ")} exited ${out.code}: ${result.stderr}${result.stdout}`);
  }
  return result;
}

let counter = 0;
let swept = false;

/**
 * Deletes the namespaces left by an earlier test process that is gone: a run killed with
 * SIGKILL never reaches its disposers. Names carry the creating process's PID.
 */
async function sweepStale(): Promise<void> {
  const list = await run(["ip", "netns", "list"], true);
  for (const line of list.stdout.split("\n")) {
    const name = line.split(" ")[0]!;
    const pid = /^vpnt-.+-(\d+)-\d+$/.exec(name)?.[1];
    if (pid === undefined || Number(pid) === Deno.pid || alive(Number(pid))) continue;
    const pids = await run(["ip", "netns", "pids", name], true);
    for (const p of pids.stdout.split("\n").filter(Boolean)) {
      try {
        Deno.kill(Number(p), "SIGKILL");
      } catch {
        // Already gone.
      }
    }
    await run(["ip", "netns", "del", name], true);
  }
}

function alive(pid: number): boolean {
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}

/** A network namespace that exists until disposed. */
export class Netns implements AsyncDisposable {
  readonly name: string;

  private constructor(name: string) {
    this.name = name;
  }

  /** Creates a fresh namespace with loopback up; the name is unique to this process. */
  static async create(tag: string): Promise<Netns> {
    if (!swept) {
      swept = true;
      await sweepStale();
    }
    const name = `vpnt-${tag}-${Deno.pid}-${counter++}`;
    await run(["ip", "netns", "add", name]);
    const ns = new Netns(name);
    await ns.run(["ip", "link", "set", "lo", "up"]);
    return ns;
  }

  /** The argv prefix that runs a program inside this namespace. */
  exec(cmd: string[]): string[] {
    return ["ip", "netns", "exec", this.name, ...cmd];
  }

  /** Runs a command inside this namespace to completion. */
  run(cmd: string[], allowFail = false): Promise<RunResult> {
    return run(this.exec(cmd), allowFail);
  }

  /** Starts a long-running command inside this namespace. */
  spawn(cmd: string[], options: Deno.CommandOptions = {}): Deno.ChildProcess {
    const [program, ...args] = this.exec(cmd);
    return new Deno.Command(program!, {
      args,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      ...options,
    }).spawn();
  }

  /** Deletes the namespace; every process still in it loses its interfaces. */
  async [Symbol.asyncDispose](): Promise<void> {
    await run(["ip", "netns", "del", this.name], true);
  }
}

/** Joins two namespaces with a veth pair and gives each end an address. */
export async function veth(
  a: Netns,
  aAddr: string,
  b: Netns,
  bAddr: string,
): Promise<void> {
  const id = `${Deno.pid % 10000}${counter++}`;
  await run([
    "ip",
    "link",
    "add",
    `va${id}`,
    "netns",
    a.name,
    "type",
    "veth",
    "peer",
    `vb${id}`,
    "netns",
    b.name,
  ]);
  await a.run(["ip", "addr", "add", aAddr, "dev", `va${id}`]);
  await b.run(["ip", "addr", "add", bAddr, "dev", `vb${id}`]);
  await a.run(["ip", "link", "set", `va${id}`, "up"]);
  await b.run(["ip", "link", "set", `vb${id}`, "up"]);
}

/** The argv that runs a Deno script with every permission this project uses. */
export function denoScript(path: string, ...args: string[]): string[] {
  return [Deno.execPath(), "run", "--allow-all", "--unstable-net", path, ...args];
}

/** Reads a child's stdout as JSON lines, one event at a time, each wait bounded. */
export class JsonLines {
  readonly #reader: ReadableStreamDefaultReader<string>;
  #buffered = "";
  /** Every event read so far. */
  readonly seen: Record<string, unknown>[] = [];

  constructor(stream: ReadableStream<Uint8Array>) {
    this.#reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  }

  /** The next event for which `match` holds; throws after `timeoutMs` or at end of stream. */
  async next(
    match: (event: Record<string, unknown>) => boolean = () => true,
    timeoutMs = 10_000,
  ): Promise<Record<string, unknown>> {
    const deadline = Date.now() + timeoutMs;
    while (true) {
      const newline = this.#buffered.indexOf("\n");
      if (newline >= 0) {
        const line = this.#buffered.slice(0, newline);
        this.#buffered = this.#buffered.slice(newline + 1);
        if (!line.startsWith("{")) continue;
        const event = JSON.parse(line) as Record<string, unknown>;
        this.seen.push(event);
        if (match(event)) return event;
        continue;
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no matching event within ${timeoutMs} ms`);
      let timer: ReturnType<typeof setTimeout> | undefined;
      const chunk = await Promise.race([
        this.#reader.read(),
        new Promise<"timeout">((resolve) => timer = setTimeout(() => resolve("timeout"), left)),
      ]).finally(() => clearTimeout(timer));
      if (chunk === "timeout") {
        throw new Error(
          `no matching event within ${timeoutMs} ms; saw ${JSON.stringify(this.seen)}`,
        );
      }
      if (chunk.done) {
        throw new Error(`stream ended without a matching event; saw ${JSON.stringify(this.seen)}`);
      }
      this.#buffered += chunk.value;
    }
  }
}

const TRANSFER = new URL("./helpers/tcp_transfer.ts", import.meta.url).pathname;

/**
 * Sends `bytes` of data over TCP from namespace `from` to a sink at `address` in namespace
 * `to`, and checks that every byte arrived: same count, same SHA-256.
 */
export async function transfer(
  from: Netns,
  to: Netns,
  address: string,
  bytes: number,
): Promise<void> {
  const sink = to.spawn(denoScript(TRANSFER, "sink", address, "5201"));
  const events = new JsonLines(sink.stdout);
  try {
    await events.next((e) => e.listening === true);
    const sent = await from.run(denoScript(TRANSFER, "send", address, "5201", String(bytes)));
    const received = await events.next((e) => e.sha256 !== undefined, 60_000);
    if (received.bytes !== bytes || received.sha256 !== JSON.parse(sent.stdout).sha256) {
      throw new Error(
        `transfer to ${address}: sent ${bytes} bytes, received ${JSON.stringify(received)}`,
      );
    }
  } finally {
    try {
      sink.kill();
    } catch { /* already done */ }
    await sink.status;
  }
}
