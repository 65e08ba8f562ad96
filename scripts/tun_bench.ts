/**
 * TUN micro-benchmark (root): packets per second through the read and write paths of
 * `ffi/tun.ts`, with and without offload.
 *
 * Two namespaces; a relay process in the first reads every packet from one TUN and writes it
 * into another TUN that lives in the second namespace (tests/helpers/tun_probe.ts `relay`).
 * iperf3 then pushes a TCP stream and a UDP flood through the pair. Each packet crosses one
 * TUN read and one TUN write, so the relay's packet rate is the rate of both paths together.
 *
 * Usage: deno run -A scripts/tun_bench.ts [seconds]
 *
 * @module
 */

const PROBE = new URL("../tests/helpers/tun_probe.ts", import.meta.url).pathname;
const seconds = Number(Deno.args[0] ?? 5);

async function sh(cmd: string[], allowFail = false): Promise<string> {
  const out = await new Deno.Command(cmd[0]!, { args: cmd.slice(1), stderr: "piped" }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success && !allowFail) {
    throw new Error(`${cmd.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
  return text;
}

for (const tool of ["ip", "iperf3"]) {
  if ((await new Deno.Command("sh", { args: ["-c", `command -v ${tool}`] }).output()).code) {
    console.error(
      `tun_bench: ${tool} is missing; run scripts/setup.sh (apt-get install ${
        tool === "ip" ? "iproute2" : tool
      })`,
    );
    Deno.exit(2);
  }
}

const nsA = `vpnb-a-${Deno.pid}`;
const nsB = `vpnb-b-${Deno.pid}`;

interface Row {
  mode: string;
  traffic: string;
  gbits: number;
  pps: number;
  largest: number;
}

async function measure(offload: boolean, udp: boolean): Promise<Row> {
  const deno = [Deno.execPath(), "run", "--allow-all", PROBE];
  const relay = new Deno.Command("ip", {
    args: ["netns", "exec", nsA, ...deno, "relay", nsB, offload ? "offload" : "plain"],
    stdin: "piped",
    stdout: "piped",
  }).spawn();
  const lines = relay.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  const nextLine = async () => {
    while (!buffered.includes("\n")) {
      const { value, done } = await lines.read();
      if (done) throw new Error("relay ended early");
      buffered += value;
    }
    const line = buffered.slice(0, buffered.indexOf("\n"));
    buffered = buffered.slice(line.length + 1);
    return JSON.parse(line);
  };
  await nextLine(); // ready
  await sh(["ip", "-n", nsB, "addr", "add", "10.79.0.2/24", "dev", "vpnrb"]);
  await sh(["ip", "-n", nsB, "link", "set", "vpnrb", "up"]);
  const server = new Deno.Command("ip", {
    args: ["netns", "exec", nsB, "iperf3", "-s", "-1", "-B", "10.79.0.2"],
    stdout: "null",
    stderr: "null",
  }).spawn();
  await new Promise((resolve) => setTimeout(resolve, 500));
  const args = ["-c", "10.79.0.2", "-t", String(seconds), "-J"];
  if (udp) args.push("-u", "-b", "0", "-l", "1400");
  const result = JSON.parse(await sh(["ip", "netns", "exec", nsA, "iperf3", ...args]));
  await server.status;
  await relay.stdin.close();
  const stats = await nextLine();
  await relay.status;
  const end = result.end;
  const bits = end.sum_received.bits_per_second; // what arrived, not what was offered
  const packets = stats.a.readPackets + stats.b.readPackets;
  return {
    mode: offload ? "offload" : "plain",
    traffic: udp ? "UDP 1400 B" : "TCP stream",
    gbits: bits / 1e9,
    pps: packets / stats.seconds,
    largest: stats.largestRead,
  };
}

try {
  await sh(["ip", "netns", "add", nsA]);
  await sh(["ip", "netns", "add", nsB]);
  const rows: Row[] = [];
  for (const offload of [false, true]) {
    for (const udp of [false, true]) rows.push(await measure(offload, udp));
  }
  console.log(
    "| TUN mode | traffic | iperf3 received Gbit/s | relay packets/s (read+write) | largest read |",
  );
  console.log("|---|---|---|---|---|");
  for (const r of rows) {
    console.log(
      `| ${r.mode} | ${r.traffic} | ${r.gbits.toFixed(2)} | ${Math.round(r.pps)} | ${r.largest} |`,
    );
  }
} finally {
  await sh(["ip", "netns", "del", nsA], true);
  await sh(["ip", "netns", "del", nsB], true);
}
