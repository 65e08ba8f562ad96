/**
 * Helpers for end-to-end tests that need root: throwaway network namespaces, commands run
 * inside them, and a test wrapper that skips where root is missing (and fails under CI).
 * Every wait here is bounded (tests/_wait.ts): a command that does not finish is killed and
 * reported with its output, rather than hanging the run.
 *
 * @module
 */

import { exitOf, kill, within } from "./_wait.ts";

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
 * True under CI: `CI` set to anything but empty, `0`, `false`, `no` or `off` (CI services
 * write `true`, `1` or `yes`).
 */
export function underCi(value: string | undefined): boolean {
  return value !== undefined && !["", "0", "false", "no", "off"].includes(value.toLowerCase());
}

/** Bound on one root test as a whole; its waits are bounded one by one as well. */
const ROOT_TEST_MS = 180_000;

/**
 * Registers a test that needs root and real devices. Without them it is ignored locally and
 * fails under CI ({@linkcode underCi}), so that a green CI run always includes it.
 *
 * The test fails once it has run `timeoutMs`: its own waits are each bounded, but a long chain
 * of them would still hold the run up for many minutes.
 */
export function rootTest(
  name: string,
  fn: (t: Deno.TestContext) => Promise<void> | void,
  timeoutMs = ROOT_TEST_MS,
): void {
  const ci = underCi(Deno.env.get("CI"));
  Deno.test({
    name,
    ignore: missing !== undefined && !ci,
    sanitizeResources: false,
    sanitizeOps: false,
    fn: missing !== undefined
      ? () => {
        throw new Error(`root test cannot run here (${missing}); CI requires it`);
      }
      : async (t) => {
        await within(Promise.resolve(fn(t)), timeoutMs, `the test "${name}" as a whole`);
      },
  });
}

/** The result of a finished command. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Bound on a command run to completion, unless the caller gives its own. */
const RUN_MS = 60_000;

/**
 * Runs `cmd` to completion; throws with its output unless `allowFail` and it fails. A command
 * still running after `timeoutMs` is killed, and the call throws with the command line and
 * the output so far (`allowFail` does not cover that).
 */
export async function run(
  cmd: string[],
  allowFail = false,
  timeoutMs = RUN_MS,
): Promise<RunResult> {
  const [program, ...args] = cmd;
  const child = new Deno.Command(program!, {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stdout: string[] = [];
  const stderr: string[] = [];
  const readers = [child.stdout.getReader(), child.stderr.getReader()];
  const collect = async (reader: ReadableStreamDefaultReader<Uint8Array>, into: string[]) => {
    const decoder = new TextDecoder();
    for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) {
      into.push(decoder.decode(chunk.value, { stream: true }));
    }
  };
  const output = Promise.all([collect(readers[0]!, stdout), collect(readers[1]!, stderr)]);
  let status: Deno.CommandStatus;
  try {
    // The output too: a child that left a process holding its pipes has not finished.
    [status] = await within(Promise.all([child.status, output]), timeoutMs, cmd.join(" "));
  } catch (error) {
    kill(child);
    const exited = await within(child.status, 5000, "SIGKILL").then(() => true, () => false);
    // Releases the pipes, also where another process still holds their other ends.
    for (const reader of readers) await reader.cancel().catch(() => {/* already closed */});
    throw new Error(
      `${(error as Error).message}; killed${exited ? "" : " (and still there 5 s later)"}; ` +
        `stdout so far: ${stdout.join("")}; stderr so far: ${stderr.join("")}`,
    );
  }
  const result = { code: status.code, stdout: stdout.join(""), stderr: stderr.join("") };
  if (!allowFail && status.code !== 0) {
    throw new Error(`${cmd.join(" ")} exited ${status.code}: ${result.stderr}${result.stdout}`);
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

  /** Runs a command inside this namespace to completion, for at most `timeoutMs`. */
  run(cmd: string[], allowFail = false, timeoutMs = RUN_MS): Promise<RunResult> {
    return run(this.exec(cmd), allowFail, timeoutMs);
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
 * The argv of the transfer helper (tests/helpers/tcp_transfer.ts), without Maglev: Deno 2.9.6's V8 now and then crashes (SIGSEGV in the
 * concurrent Maglev compiler) in the sender's hot loop on a busy machine, which would fail a
 * test the VPN did not break.
 */
export function transferScript(...args: string[]): string[] {
  const [deno, run, ...rest] = denoScript(TRANSFER, ...args);
  return [deno!, run!, "--v8-flags=--no-maglev", ...rest];
}

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
  const sink = to.spawn(transferScript("sink", address, "5201"));
  const events = new JsonLines(sink.stdout);
  try {
    await events.next((e) => e.listening === true);
    // The sender finishes once its data is in flight; a stalled tunnel stops it writing.
    const sent = await from.run(
      transferScript("send", address, "5201", String(bytes)),
      false,
      60_000,
    );
    const received = await events.next((e) => e.sha256 !== undefined, 30_000);
    if (received.bytes !== bytes || received.sha256 !== JSON.parse(sent.stdout).sha256) {
      throw new Error(
        `transfer to ${address}: sent ${bytes} bytes, received ${JSON.stringify(received)}`,
      );
    }
  } finally {
    kill(sink);
    await exitOf(sink, 5000, "the transfer sink");
  }
}
