/**
 * TUN offload end to end: TCP transfers both ways through the VPN, over TLS and over UDP, with
 * offload on both sides, on one side only, and on neither. The receiving kernel checks every
 * checksum of the segments this project cut from super-packets or completed: it is the oracle,
 * independent of mod/core/offload.ts. A wrong checksum drops the segment (counted in the kernel's
 * InCsumErrors, which fails a transfer at once) and stalls the transfer on its retransmissions;
 * a wrong byte changes the hash.
 *
 * Bulk transfers (24 MiB) are whole multiples of 64 KiB; the odd sizes (1 MiB + 1 byte,
 * 200,003 bytes) end in a short segment of odd length, whose checksum covers a padded trailing
 * byte.
 */

import { assert, assertEquals } from "./_assert.ts";
import { JsonLines, type Netns, rootTest, run, transferScript } from "./_netns.ts";
import { Topology, type VpnProcess } from "./_vpn.ts";

/** The eight ways offload can be set up: TLS or UDP, offload on both, one or no side. */
const MODES: {
  name: string;
  server: string;
  client: string[];
  udp: boolean;
  serverOffload: boolean;
  clientOffload: boolean;
}[] = [];
for (const udp of [false, true]) {
  for (
    const [sides, serverOffload, clientOffload] of [
      ["both sides", true, true],
      ["the server only", true, false],
      ["the client only", false, true],
      ["neither side", false, false],
    ] as const
  ) {
    MODES.push({
      name: `${udp ? "UDP" : "TLS"}, offload on ${sides}`,
      server: serverOffload ? "" : "offload: false\n",
      client: ["--proto", udp ? "udp" : "tcp", ...(clientOffload ? [] : ["--no-offload"])],
      udp,
      serverOffload,
      clientOffload,
    });
  }
}

/** 1 MiB + 1 byte, and an odd size between two multiples of 64 KiB. */
const ODD_SIZES = [1_048_577, 200_003];

/** Bound on one odd-sized transfer: about a second when it works, forever when it stalls. */
const TRANSFER_MS = 30_000;

/** Whether the TUN in `ns` that holds `address` has a virtio-net header (`vnet_hdr on`). */
async function tunHasVnetHdr(net: Topology, ns: Netns, address: string): Promise<boolean> {
  const dev = await net.waitForAddress(ns, address);
  const details = (await ns.run(["ip", "-d", "link", "show", "dev", dev])).stdout;
  const flag = /vnet_hdr (on|off)/.exec(details);
  assert(flag !== null, `no vnet_hdr flag for ${dev}: ${details}`);
  return flag[1] === "on";
}

/** The TCP and UDP InCsumErrors counters of a /proc/net/snmp text. */
function parseCsumErrors(snmp: string): { tcp: number; udp: number } {
  const lines = snmp.split("\n");
  const counter = (proto: string) => {
    const [names, values] = lines.filter((line) => line.startsWith(`${proto}: `));
    const index = names?.split(" ").indexOf("InCsumErrors") ?? -1;
    assert(index > 0 && values !== undefined, `no ${proto} InCsumErrors in /proc/net/snmp`);
    return Number(values.split(" ")[index]);
  };
  return { tcp: counter("Tcp"), udp: counter("Udp") };
}

/** The kernel's checksum error counters in `ns`: segments it dropped for a wrong checksum. */
async function csumErrors(ns: Netns): Promise<{ tcp: number; udp: number }> {
  return parseCsumErrors((await ns.run(["cat", "/proc/net/snmp"])).stdout);
}

/**
 * Rejects as soon as the kernel of the namespace that process `pid` lives in counts a TCP
 * checksum error: a transfer then stalls on retransmissions of the same bad segment, and
 * waiting out the bound would only delay the verdict. Stops polling once `done` settles or the
 * process is gone, and then never settles.
 */
async function failOnCsumError(pid: number, done: Promise<unknown>): Promise<never> {
  let finished = false;
  done.then(() => finished = true, () => finished = true);
  const read = async () => {
    try {
      return parseCsumErrors(await Deno.readTextFile(`/proc/${pid}/net/snmp`)).tcp;
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) return undefined; // exited: its result decides
      throw error;
    }
  };
  const before = await read();
  while (!finished && before !== undefined) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    const now = await read();
    if (now === undefined) break;
    if (now > before) {
      throw new Error(`the receiving kernel counted ${now - before} TCP checksum errors`);
    }
  }
  return await new Promise<never>(() => {});
}

/** One TCP transfer through the tunnel, and what to show when it fails. */
interface TransferCase {
  what: string;
  from: Netns;
  to: Netns;
  address: string;
  bytes: number;
  /** The VPN processes carrying it: whether they still run, and their last log lines. */
  vpns: Record<string, VpnProcess>;
  /** Bound on the whole transfer. */
  ms: number;
}

/** Whether `process` still runs, else how it ended (a crash shows as a stall). */
async function processState(process: VpnProcess): Promise<string> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const state = await Promise.race([
    process.child.status.then((s) => `exited ${s.code}${s.signal ? ` (${s.signal})` : ""}`),
    new Promise<string>((resolve) => timer = setTimeout(() => resolve("running"), 0)),
  ]);
  clearTimeout(timer);
  return state;
}

/**
 * tests/_netns.ts `transfer()` with a bound on both ends (its sender is not bounded), a verdict as soon as the
 * receiving kernel drops a segment for its checksum, and a failure that names the case and
 * shows the kernel's view (the sockets with `ss -tin`, the checksum error counters of both
 * namespaces) and the VPN's (its processes and their last log lines).
 */
async function boundedTransfer(c: TransferCase): Promise<void> {
  const sink = c.to.spawn(transferScript("sink", c.address, "5201"));
  const events = new JsonLines(sink.stdout);
  let sender: Deno.ChildProcess | undefined;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const started = Date.now();
  const ms = c.ms;
  try {
    await events.next((e) => e.listening === true, ms);
    sender = c.from.spawn(transferScript("send", c.address, "5201", String(c.bytes)));
    const sent = sender.output();
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`not done within ${ms} ms`)), ms);
    });
    const arrived = Promise.all([sent, events.next((e) => e.sha256 !== undefined, ms)]);
    // A VPN process that ends takes the tunnel with it: say so now rather than at the bound.
    const vpnExit = Object.entries(c.vpns).map(([name, process]) =>
      process.child.status.then((s): never => {
        throw new Error(`vpn ${name} exited ${s.code} during the transfer`);
      })
    );
    const [out, received] = await Promise.race([
      arrived,
      timeout,
      failOnCsumError(sink.pid, Promise.race([arrived, timeout])),
      ...vpnExit,
    ]);
    if (!out.success) {
      throw new Error(`sender exited ${out.code}: ${new TextDecoder().decode(out.stderr)}`);
    }
    const report = JSON.parse(new TextDecoder().decode(out.stdout));
    assertEquals(received, { bytes: c.bytes, sha256: report.sha256 }, `${c.what}: what arrived`);
  } catch (error) {
    const state = [];
    for (const [side, ns] of [["sender", c.from], ["receiver", c.to]] as const) {
      const ss = await run(ns.exec(["ss", "-tin"]), true);
      state.push(`${side}: ${JSON.stringify(await csumErrors(ns))}\n${ss.stdout}`);
    }
    for (const [name, process] of Object.entries(c.vpns)) {
      const tail = process.log.split("\n").slice(-15).join("\n");
      state.push(`vpn ${name}: ${await processState(process)}; last lines:\n${tail}`);
    }
    throw new Error(
      `${c.what}: failed after ${Date.now() - started} ms: ${error}\n${state.join("\n")}`,
    );
  } finally {
    clearTimeout(timer);
    for (const child of [sink, sender]) {
      try {
        child?.kill("SIGKILL");
      } catch { /* already done */ }
      await child?.status;
    }
  }
}

/** Sends `bytes` from the client to the server through the tunnel, then the other way. */
async function bothWays(
  name: string,
  net: Topology,
  vpns: { server: VpnProcess; client: VpnProcess },
  bytes: number,
  ms = TRANSFER_MS,
): Promise<void> {
  const client = net.clients[0]!;
  for (
    const [from, to, address, way] of [
      [client, net.server, "10.8.0.1", "client to server"],
      [net.server, client, "10.8.0.2", "server to client"],
    ] as const
  ) {
    const what = `${name}: ${bytes} bytes ${way}`;
    await boundedTransfer({ what, from, to, address, bytes, vpns, ms });
  }
}

/** The bulk transfer: a whole number of 64 KiB super-packets. */
const BYTES = 24 << 20;

for (const mode of MODES) {
  rootTest(
    `vpn offload: 1 MiB + 1 byte, 200,003 bytes and 24 MiB arrive intact both ways, no checksum errors (${mode.name})`,
    async () => {
      await using net = await Topology.create(1);
      await net.configure(mode.server);
      const server = await net.startServer();
      const client = net.clients[0]!;
      const vpn = net.connect(0, await net.addClient("alice"), mode.client);
      await net.waitForAddress(client, "10.8.0.2");
      if (mode.udp) await vpn.waitForLog(/data goes over UDP/);
      // The case is what it says: each TUN has a virtio-net header exactly where offload is on.
      assertEquals(
        [
          await tunHasVnetHdr(net, net.server, "10.8.0.1"),
          await tunHasVnetHdr(net, client, "10.8.0.2"),
        ],
        [mode.serverOffload, mode.clientOffload],
        "vnet_hdr on the server's and the client's TUN",
      );
      for (const bytes of ODD_SIZES) await bothWays(mode.name, net, { server, client: vpn }, bytes);
      await bothWays(mode.name, net, { server, client: vpn }, BYTES, 60_000);
      // Each side's kernel verified every checksum it was handed complete, and none was wrong.
      assertEquals(await csumErrors(net.server), { tcp: 0, udp: 0 }, "server namespace");
      assertEquals(await csumErrors(client), { tcp: 0, udp: 0 }, "client namespace");
      assert(!server.log.includes("disconnected"), server.log);
      // A data path that failed (a receive loop ended by an error) shows here, even when the
      // transfers got through by some other path.
      assert(!server.log.includes("[ERR]"), server.log);
      assert(!vpn.log.includes("[ERR]"), vpn.log);
    },
  );
}
