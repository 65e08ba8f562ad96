/**
 * `deno task load` end to end: a real `vpn serve` in a namespace (tests/_vpn.ts) and the load
 * tool (scripts/load.ts) in a client namespace, 30 clients each over our protocol on TLS, on
 * the UDP data channel, and OpenVPN over UDP. Every client comes up, keeps its session and
 * gets answers through the tunnel; `vpn status` shows the sessions while the tool holds them;
 * `--cleanup` revokes the certificates the run issued.
 */

import { assert, assertEquals, assertGreater } from "./_assert.ts";
import { rootTest } from "./_netns.ts";
import { Topology } from "./_vpn.ts";

const LOAD = new URL("../scripts/load.ts", import.meta.url).pathname;
const CLIENTS = 30;

/** The parts of the tool's `--json` report this test reads. */
interface Report {
  connect: { up: number; failed: number };
  hold: { stayedUp: number };
  failures: Record<string, number>;
  traffic: { keepaliveAnswered: number; echoSent: number; echoAnswered: number };
  server: { sessions: number | null };
  rss: { pid: number | null; beforeKiB: number | null; perSessionKiB: number | null };
  cleanup: { revoked: number } | { error: string } | null;
}

/** The JSON report in the tool's output: its progress lines (stderr) all start "load: ". */
function reportOf(log: string): Report {
  const start = log.search(/^\{$/m);
  const end = log.lastIndexOf("\n}");
  assert(start >= 0 && end > start, `no JSON report in the output:\n${log}`);
  return JSON.parse(log.slice(start, end + 2));
}

/** `--proto` and the protocol `vpn status` then shows for every session. */
const PROTOCOLS = { tcp: "native/tls", udp: "native/udp", "openvpn-udp": "openvpn/udp" };

for (const [proto, protocol] of Object.entries(PROTOCOLS)) {
  rootTest(
    `deno task load --proto ${proto}: ${CLIENTS} clients come up and stay, the server lists ` +
      "them, --cleanup revokes them",
    async () => {
      await using net = await Topology.create(1);
      const server = await net.startServer();
      const tool = net.spawnCommand(net.clients[0]!, [
        Deno.execPath(),
        "run",
        "--allow-all",
        "--unstable-net",
        LOAD,
        "--clients",
        String(CLIENTS),
        "--proto",
        proto,
        "--remote",
        `${net.serverIp(0)}:1194`,
        "--dir",
        net.dir,
        "--duration",
        "3",
        "--settle",
        "1",
        "--json",
        "--pid",
        String(server.child.pid),
        "--cleanup",
      ]);
      await tool.waitForLog(/load: \d+ of \d+ up in .* holding for/, 30_000);
      const status = JSON.parse((await net.vpn(["status", "--json", "--dir", net.dir])).stdout);
      const held: { name: string; protocol: string }[] = status.sessions
        .filter((s: { name: string }) => s.name.startsWith("load-"));
      assertEquals(held.length, CLIENTS, `sessions while held:\n${tool.log}`);
      assertEquals(new Set(held.map((s) => s.protocol)), new Set([protocol]));

      assertEquals(await tool.exited(30_000), 0, tool.log);
      const report = reportOf(tool.log);
      assertEquals(report.connect.up, CLIENTS, tool.log);
      assertEquals(report.connect.failed, 0, tool.log);
      assertEquals(report.failures, {});
      assertEquals(report.hold.stayedUp, CLIENTS, tool.log);
      assertEquals(report.server.sessions, CLIENTS);
      assertGreater(report.traffic.echoAnswered, 0, "echo replies through the tunnel");
      if (!proto.startsWith("openvpn")) {
        assertGreater(report.traffic.keepaliveAnswered, 0, "PONGs to the keepalive pings");
      }
      assertEquals(report.rss.pid, server.child.pid);
      assert(report.rss.beforeKiB !== null && report.rss.beforeKiB > 0, "the server's RSS read");
      assertEquals(report.cleanup, { revoked: CLIENTS });

      const list = (await net.vpn(["client", "list", "--dir", net.dir])).stdout;
      const rows = list.split("\n").filter((line) => line.startsWith("load-"));
      assertEquals(rows.length, CLIENTS, list);
      assert(rows.every((row) => / revoked /.test(row)), `not every load client revoked:\n${list}`);
    },
    60_000,
  );
}
