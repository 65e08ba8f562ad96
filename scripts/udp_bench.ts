/**
 * UDP micro-benchmark: datagrams per second of 1400 bytes through loopback with `ffi/udp.ts`,
 * sent one `sendTo()` at a time or in `sendBatch()` batches of 64, received in `recv()`
 * batches of 64.
 *
 * The receiver runs in a child process (its own thread and event loop, as a peer would), so
 * that the two sides share nothing but the kernel. The sender sends as fast as the kernel
 * takes datagrams; what the receiver cannot keep up with the kernel drops, so "received" is the
 * receive path's rate and "sent" the send path's. On loopback the sender's system call also runs
 * the kernel's receive side up to the receiver's socket queue, so the sender is the bottleneck;
 * the CPU columns (whole process, per datagram) tell what each side costs.
 *
 * Usage: deno run -A scripts/udp_bench.ts [seconds]
 *
 * @module
 */

import { encodeSockAddr, newSockAddr, UdpSocket } from "../ffi/udp.ts";

const SIZE = 1400;
const BATCH = 64;

interface Received {
  received: number;
  seconds: number;
  batches: number;
  cpuSeconds: number;
}

/** User and system CPU time of this process so far (/proc/self/stat utime and stime). */
function cpuSeconds(): number {
  const fields = Deno.readTextFileSync("/proc/self/stat").split(") ")[1]!.split(" ");
  // Fields 14 and 15 of the file, counted after the command name; in clock ticks of 10 ms.
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** The child: receives until its stdin closes, then prints what it got. */
async function receiver(): Promise<void> {
  const socket = UdpSocket.bind("127.0.0.1", 0);
  console.log(JSON.stringify({ port: socket.port }));
  // The parent closes our stdin when it has stopped sending.
  Deno.stdin.readable.pipeTo(new WritableStream()).then(() => socket.close());
  const bufs = Array.from({ length: BATCH }, () => new Uint8Array(2048));
  const sizes = new Array<number>(BATCH).fill(0);
  const addrs = Array.from({ length: BATCH }, () => newSockAddr());
  let first = 0;
  let last = 0;
  let batches = 0;
  let cpu = 0;
  while (await socket.recv(bufs, sizes, addrs) > 0) {
    last = performance.now();
    if (batches++ === 0) [first, cpu] = [last, cpuSeconds()];
  }
  const result: Received = {
    received: socket.stats.received,
    seconds: (last - first) / 1000,
    batches,
    cpuSeconds: cpuSeconds() - cpu,
  };
  console.log(JSON.stringify(result));
}

async function measure(mode: "sendTo" | "sendBatch", seconds: number) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", import.meta.filename!, "receive"],
    stdin: "piped",
    stdout: "piped",
  }).spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  const nextLine = async () => {
    while (!buffered.includes("\n")) {
      const { value, done } = await lines.read();
      if (done) throw new Error("receiver ended early");
      buffered += value;
    }
    const line = buffered.slice(0, buffered.indexOf("\n"));
    buffered = buffered.slice(line.length + 1);
    return JSON.parse(line);
  };
  const { port } = await nextLine() as { port: number };

  using socket = UdpSocket.bind("127.0.0.1", 0);
  const to = encodeSockAddr("127.0.0.1", port);
  const bufs = Array.from({ length: BATCH }, (_, i) => new Uint8Array(SIZE).fill(i));
  const sizes = new Array<number>(BATCH).fill(SIZE);
  const addrs = new Array(BATCH).fill(to);
  const cpu = cpuSeconds();
  const start = performance.now();
  const end = start + seconds * 1000;
  while (performance.now() < end) {
    if (mode === "sendBatch") socket.sendBatch(bufs, sizes, addrs, BATCH);
    else for (let i = 0; i < BATCH; i++) socket.sendTo(bufs[i]!, SIZE, to);
  }
  const elapsed = (performance.now() - start) / 1000;
  const sendCpu = cpuSeconds() - cpu;
  // Let the receiver drain what is queued before it is told to stop.
  await new Promise((resolve) => setTimeout(resolve, 200));
  await child.stdin.close();
  const got = await nextLine() as Received;
  await child.status;
  const { sent, sendErrors } = socket.stats;
  return {
    mode,
    "sent/s": Math.round(sent / elapsed),
    "send errors": sendErrors,
    "received/s": Math.round(got.received / got.seconds),
    "datagrams/recv": +(got.received / got.batches).toFixed(1),
    "lost %": +(100 * (1 - got.received / sent)).toFixed(1),
    "send CPU us": +(1e6 * sendCpu / sent).toFixed(2),
    "recv CPU us": +(1e6 * got.cpuSeconds / got.received).toFixed(2),
  };
}

if (Deno.args[0] === "receive") {
  await receiver();
} else {
  const seconds = Number(Deno.args[0] ?? 3);
  const rows = [];
  for (const mode of ["sendTo", "sendBatch"] as const) rows.push(await measure(mode, seconds));
  console.table(rows);
}
