/**
 * The VPN end to end: `vpn serve` and `vpn connect` processes on real TUNs, in namespaces
 * joined by veth pairs (tests/_vpn.ts), over real TLS. Every wait is bounded (commands,
 * logs, exits), so a broken data path fails with a message instead of hanging.
 */

import { assert, assertEquals, assertMatch } from "./_assert.ts";
import { denoScript, rootTest, transfer } from "./_netns.ts";
import { Topology, VpnProcess, waitFor } from "./_vpn.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

rootTest("vpn: two clients get .2 and .3, ping the server and move bulk data intact", async () => {
  await using net = await Topology.create(2);
  const server = await net.startServer();
  const a = net.connect(0, await net.addClient("alice"));
  await net.waitForAddress(net.clients[0]!, "10.8.0.2");
  const b = net.connect(1, await net.addClient("bob"));
  await net.waitForAddress(net.clients[1]!, "10.8.0.3");
  assert(await net.ping(net.clients[0]!, "10.8.0.1"), a.log);
  assert(await net.ping(net.clients[1]!, "10.8.0.1"), b.log);

  await transfer(net.clients[1]!, net.server, "10.8.0.1", 24 << 20);
  await server.waitForLog(/alice connected from 172\.30\.1\.2:\d+, address 10\.8\.0\.2/);
});

rootTest("vpn: client_to_client off blocks client-to-client traffic, on allows it", async () => {
  await using net = await Topology.create(2);
  for (const on of [false, true]) {
    await net.configure(`client_to_client: ${on}\n`);
    const server = await net.startServer();
    const a = net.connect(0, await net.addClient(`alice-${on}`));
    const b = net.connect(1, await net.addClient(`bob-${on}`));
    await net.waitForAddress(net.clients[0]!, "10.8.0.2");
    await net.waitForAddress(net.clients[1]!, "10.8.0.3");
    assert(await net.ping(net.clients[0]!, "10.8.0.1"), "the server is reachable either way");
    assertEquals(await net.ping(net.clients[0]!, "10.8.0.3", 2), on, `client_to_client: ${on}`);
    await a.stop();
    await b.stop();
    await server.stop();
  }
});

rootTest("vpn: a pushed route reaches a network behind the server", async () => {
  await using net = await Topology.create(1);
  // The network behind the server: a veth pair inside the server namespace.
  await net.server.run(["ip", "link", "add", "lan0", "type", "veth", "peer", "lan1"]);
  await net.server.run(["ip", "addr", "add", "192.168.50.1/24", "dev", "lan0"]);
  await net.server.run(["ip", "link", "set", "lan0", "up"]);
  await net.server.run(["ip", "link", "set", "lan1", "up"]);
  await net.configure("push:\n  routes: [192.168.50.0/24]\n");
  await net.startServer();
  net.connect(0, await net.addClient("alice"));
  const dev = await net.waitForAddress(net.clients[0]!, "10.8.0.2");
  const routes = JSON.parse(
    (await net.clients[0]!.run(["ip", "-j", "route", "show", "dev", dev])).stdout,
  );
  assert(routes.some((r: { dst: string }) => r.dst === "192.168.50.0/24"), JSON.stringify(routes));
  assert(await net.ping(net.clients[0]!, "192.168.50.1"));
});

rootTest("vpn: a revoked client is dropped within 5 s and refused afterwards", async () => {
  await using net = await Topology.create(1);
  const server = await net.startServer();
  const profile = await net.addClient("mallory");
  const client = net.connect(0, profile);
  await net.waitForAddress(net.clients[0]!, "10.8.0.2");
  await net.vpn(["client", "revoke", "mallory", "--dir", net.dir]);
  assertEquals(await client.exited(10_000), 1, client.log);
  assertMatch(client.log, /refused this client: certificate .*revoked/);
  await server.waitForLog(/mallory: certificate revoked, dropping its session/);
  const again = net.connect(0, profile);
  assertEquals(await again.exited(), 1);
  assertMatch(again.log, /revoked/);
  const list = await net.vpn(["client", "list", "--dir", net.dir]);
  assertMatch(list.stdout, /mallory\s+[0-9a-f]+\s+revoked/);
});

rootTest("vpn: a profile from another CA is refused", async () => {
  await using net = await Topology.create(1);
  await using other = await Topology.create(0);
  const server = await net.startServer();
  const stranger = net.connect(0, await other.addClient("stranger"));
  assertEquals(await stranger.exited(), 1);
  // The stranger's profile trusts another CA, so it refuses our server's certificate first.
  assertMatch(stranger.log, /not trusted by this profile/);

  // With our CA but its own certificate, the server refuses it: unknown CA.
  const foreign = await Deno.readTextFile(`${other.dir}/stranger.yaml`);
  const ours = await Deno.readTextFile(`${net.dir}/ca.crt`);
  const mixed = foreign.replace(
    /ca: \|[\s\S]*?-----END CERTIFICATE-----\n/,
    `ca: |\n${ours.replace(/^/gm, "  ")}\n`,
  );
  const path = `${net.dir}/mixed.yaml`;
  await Deno.writeTextFile(path, mixed, { mode: 0o600 });
  const refused = net.connect(0, path);
  assertEquals(await refused.exited(), 1, refused.log);
  assertMatch(refused.log, /refused this client: certificate is not signed by this server's CA/);
  await server.waitForLog(/refused 172\.30\.1\.2:\d+: unknown-ca/);
});

rootTest("vpn: a /30 subnet refuses the second client with the pool error", async () => {
  await using net = await Topology.create(2, ["--subnet", "10.9.0.0/30"]);
  const server = await net.startServer();
  net.connect(0, await net.addClient("first"));
  await net.waitForAddress(net.clients[0]!, "10.9.0.2");
  const second = net.connect(1, await net.addClient("second"));
  await second.waitForLog(/address pool exhausted/);
  await server.waitForLog(/refused second from .*: address pool exhausted/);
  assert(await net.ping(net.clients[0]!, "10.9.0.1"), "the first client is unaffected");
});

rootTest(
  "vpn: after a server restart the client comes back by itself with its old address",
  async () => {
    await using net = await Topology.create(2);
    let server = await net.startServer();
    const a = net.connect(0, await net.addClient("alice"));
    await net.waitForAddress(net.clients[0]!, "10.8.0.2");
    const b = net.connect(1, await net.addClient("bob"));
    await net.waitForAddress(net.clients[1]!, "10.8.0.3");
    await a.stop();
    await server.stop("SIGKILL");
    server = await net.startServer();
    // bob asks for .3 back although .2, the lowest free address, is free again.
    await b.waitForLog(/reconnecting in/);
    await server.waitForLog(/bob connected from .*, address 10\.8\.0\.3/, 30_000);
    assert(await net.ping(net.clients[1]!, "10.8.0.1"), b.log);
  },
);

rootTest(
  "vpn: SIGTERM on a client removes its TUN and routes, and the server frees the address",
  async () => {
    await using net = await Topology.create(1);
    await net.configure("push:\n  routes: [192.168.60.0/24]\n");
    const server = await net.startServer();
    const client = net.connect(0, await net.addClient("alice"));
    const dev = await net.waitForAddress(net.clients[0]!, "10.8.0.2");
    assertEquals(await client.stop("SIGTERM"), 0, client.log);
    const links = await net.clients[0]!.run(["ip", "-j", "link", "show"]);
    assert(!links.stdout.includes(`"${dev}"`), links.stdout);
    const routes = await net.clients[0]!.run(["ip", "route", "show"]);
    assert(
      !routes.stdout.includes("192.168.60.0") && !routes.stdout.includes("10.8.0.0"),
      routes.stdout,
    );
    await server.waitForLog(/alice .* disconnected: client said goodbye/);
    // Freed: another client now gets alice's address, the lowest, rather than the next one.
    net.connect(0, await net.addClient("bob"));
    await net.waitForAddress(net.clients[0]!, "10.8.0.2");
    await server.waitForLog(/bob connected from .*, address 10\.8\.0\.2/);
  },
);

rootTest(
  "vpn: garbage, oversized frames and idle connections on the port do not disturb a client",
  async () => {
    await using net = await Topology.create(2);
    const server = await net.startServer();
    net.connect(0, await net.addClient("alice"));
    await net.waitForAddress(net.clients[0]!, "10.8.0.2");
    const ca = await Deno.readTextFile(`${net.dir}/ca.crt`);
    const attacker = net.clients[1]!;
    // The idle connections stay open until the test has checked the client with them in
    // place: it closes the script's stdin then.
    const script = `
    const host = "${net.serverIp(1)}";
    const idle = [];
    for (let i = 0; i < 20; i++) idle.push(await Deno.connect({ hostname: host, port: 1194 }));
    const junk = await Deno.connect({ hostname: host, port: 1194 });
    await junk.write(crypto.getRandomValues(new Uint8Array(4096))).catch(() => {});
    const tls = await Deno.connectTls({ hostname: host, port: 1194, caCerts: [${
      JSON.stringify(ca)
    }], alpnProtocols: ["vpn/1"] });
    await tls.read(new Uint8Array(4096));
    await tls.write(new Uint8Array([0, 0xff, 0xff, 0xff, 1, 2, 3]));
    const buf = new Uint8Array(4096);
    let closed = false;
    for (let i = 0; i < 10; i++) {
      const n = await tls.read(buf).catch(() => null);
      if (n === null) { closed = true; break; }
    }
    console.log(JSON.stringify({ oversizedClosed: closed }));
    for await (const _ of Deno.stdin.readable) { /* until the test closes it */ }
    for (const c of idle) c.close();
  `;
    const path = `${net.dir}/attack.ts`;
    await Deno.writeTextFile(path, script);
    const attack = net.spawnCommand(attacker, denoScript(path), { stdin: "piped" });
    await attack.waitForLog(/"oversizedClosed":/, 20_000);
    assertMatch(attack.log, /\{"oversizedClosed":true\}/, "the oversized frame closes its session");
    assert(await net.ping(net.clients[0]!, "10.8.0.1", 5), "the connected client still works");
    await attack.child.stdin.close();
    assertEquals(await attack.exited(10_000), 0, attack.log);
    await server.waitForLog(/exceeds the 65545-byte limit/);
    assert(
      await net.ping(net.clients[0]!, "10.8.0.1"),
      "and still after the idle connections went",
    );
  },
);

rootTest(
  "vpn: a silent client is dropped after the keepalive timeout and reconnects when the path is back",
  async () => {
    await using net = await Topology.create(1);
    await net.configure("keepalive:\n  interval: 1\n  timeout: 3\n");
    const server = await net.startServer();
    const client = net.connect(0, await net.addClient("alice"));
    await net.waitForAddress(net.clients[0]!, "10.8.0.2");
    const block = ["iptables", "-I", "OUTPUT", "-d", net.serverIp(0), "-j", "DROP"];
    await net.clients[0]!.run(block);
    await server.waitForLog(/alice .* disconnected: no data for 3 s/);
    await client.waitForLog(/session ended: no data from the server for 3 s/);
    await net.clients[0]!.run(["iptables", "-D", ...block.slice(2)]);
    // Back with its address, which it asks for again.
    await waitFor(
      "alice back",
      () =>
        (server.log.match(/alice connected from .*, address 10\.8\.0\.2/g)?.length ?? 0) >= 2 ||
        undefined,
      30_000,
    );
    assert(await net.ping(net.clients[0]!, "10.8.0.1"), client.log);
  },
);

rootTest(
  "vpn serve closes a connection that has not authenticated after 10 s (not before 9.5 s, by 12 s)",
  async () => {
    await using net = await Topology.create(1);
    await net.startServer();
    // The read gives up after 15 s, so that a server that never closes shows as still open.
    const script = `
    const conn = await Deno.connect({ hostname: "${net.serverIp(0)}", port: 1194 });
    const started = Date.now();
    let timer;
    const n = await Promise.race([
      conn.read(new Uint8Array(16)).catch(() => null),
      new Promise((resolve) => timer = setTimeout(() => resolve("open"), 15_000)),
    ]);
    clearTimeout(timer);
    const seconds = (Date.now() - started) / 1000;
    console.log(JSON.stringify({ closed: n === null, read: n, seconds }));
    Deno.exit(0);
  `;
    const path = `${net.dir}/idle.ts`;
    await Deno.writeTextFile(path, script);
    const { stdout } = await net.clients[0]!.run(denoScript(path), false, 30_000);
    const result = JSON.parse(stdout);
    assertEquals(result.closed, true, `not closed: ${stdout}`);
    assert(result.seconds >= 9.5, `closed after ${result.seconds} s, before the 10 s limit`);
    assert(result.seconds <= 12, `closed after ${result.seconds} s, long after the 10 s limit`);
  },
);

rootTest(
  "vpn: the same certificate connecting again replaces the old session and keeps the address",
  async () => {
    await using net = await Topology.create(2);
    const server = await net.startServer();
    const profile = await net.addClient("alice");
    const first = net.connect(0, profile);
    await net.waitForAddress(net.clients[0]!, "10.8.0.2");
    const second = net.connect(1, profile);
    await net.waitForAddress(net.clients[1]!, "10.8.0.2");
    assertEquals(await first.exited(), 1);
    assertMatch(first.log, /the same certificate connected again/);
    assert(await net.ping(net.clients[1]!, "10.8.0.1"), second.log);
    await server.waitForLog(/alice connected from 172\.30\.2\.2:\d+, address 10\.8\.0\.2/);
  },
);

/**
 * Runs `argv` with its own view of /etc: an overlay whose writes land in `dir`/upper, so that
 * a server that falls back to /etc/vpn never touches the host's. /etc/vpn starts out absent.
 */
async function privateEtc(dir: string, argv: string[]): Promise<{ argv: string[]; etc: string }> {
  const upper = `${dir}/etc-upper`;
  const work = `${dir}/etc-work`;
  await Deno.mkdir(upper);
  await Deno.mkdir(work);
  const script = `mount -t overlay overlay -o lowerdir=/etc,upperdir=${upper},workdir=${work} ` +
    `/etc && rm -rf /etc/vpn && exec "$@"`;
  return {
    argv: ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", ...argv],
    etc: upper,
  };
}

rootTest(
  "vpn serve on its first run, with no PKI in /etc/vpn, creates one there and says so",
  async () => {
    await using net = await Topology.create(1);
    const { argv, etc } = await privateEtc(net.dir, denoScript(MAIN, "serve"));
    const server = new VpnProcess(net.server.spawn(argv));
    try {
      await server.waitForLog(/listening on 0\.0\.0\.0:1194/);
      assertMatch(server.log, /no PKI in \/etc\/vpn: first run, creating a new CA/);
      for (const file of ["ca.crt", "ca.key", "server.crt", "server.key", "server.yaml"]) {
        await Deno.stat(`${etc}/vpn/${file}`);
      }
      assertEquals((await Deno.stat(`${etc}/vpn/ca.key`)).mode! & 0o777, 0o600);
      assertEquals((await Deno.stat(`${etc}/vpn/server.key`)).mode! & 0o777, 0o600);
      // The CA it made is the one it serves with: a profile issued from it connects.
      const profile = `${net.dir}/first.yaml`;
      // Issued in the server's mount namespace: the overlay does not show files renamed into
      // its upper directory from outside, and the server admits only clients its registry lists.
      const add = ["client", "add", "first", "--dir", "/etc/vpn", "--out", profile];
      const inServer = ["nsenter", "--target", String(server.child.pid), "--mount"];
      await net.server.run([...inServer, ...denoScript(MAIN, ...add)]);
      const client = net.connect(0, profile);
      await client.waitForLog(/connected: address 10\.8\.0\.2/);
    } finally {
      assertEquals(await server.stop(), 0);
    }
  },
);

rootTest(
  "vpn serve --config DIR/server.yaml without --dir serves DIR's PKI, and refuses a DIR without one",
  async () => {
    await using net = await Topology.create(1);
    await net.configure("mtu: 1300\n");
    const profile = await net.addClient("alice");
    const serve = denoScript(MAIN, "serve", "--config", `${net.dir}/server.yaml`);
    const { argv, etc } = await privateEtc(net.dir, serve);
    const server = new VpnProcess(net.server.spawn(argv));
    try {
      await server.waitForLog(/listening on/);
      net.connect(0, profile);
      await net.waitForAddress(net.clients[0]!, "10.8.0.2");
      await server.waitForLog(/alice connected from/);
      assertEquals(server.log.includes("no PKI"), false, server.log);
    } finally {
      assertEquals(await server.stop(), 0);
    }
    // A server.yaml whose directory holds no PKI: that directory is where the PKI belongs.
    const conf = `${net.dir}/conf`;
    await Deno.mkdir(conf);
    await Deno.writeTextFile(`${conf}/server.yaml`, "mtu: 1300\n");
    const empty = await privateEtc(
      conf,
      denoScript(MAIN, "serve", "--config", `${conf}/server.yaml`),
    );
    const refused = await net.server.run(empty.argv, true);
    assertEquals(refused.code, 2, refused.stderr);
    assertMatch(refused.stderr, new RegExp(`no PKI in ${conf} `));
    for (const upper of [etc, empty.etc]) {
      const created = await Array.fromAsync(Deno.readDir(upper));
      assertEquals(created.map((e) => e.name).filter((n) => n === "vpn"), [], "no /etc/vpn");
    }
  },
);

rootTest(
  "vpn serve on a port in use says so and exits 1, leaving the running server alone",
  async () => {
    await using net = await Topology.create(1);
    await net.startServer();
    // Another PKI (on the same directory the second server is refused by its control socket).
    const other = `${net.dir}/other`;
    await net.vpn(["init", "--dir", other, "--host", net.serverIp(0)]);
    await Deno.writeTextFile(`${other}/server.yaml`, `control:\n  socket: ${other}/control.sock\n`);
    const second = new VpnProcess(net.server.spawn(denoScript(MAIN, "serve", "--dir", other)));
    assertEquals(await second.exited(), 1);
    assertMatch(
      second.log,
      /Cannot listen on 0\.0\.0\.0:1194: the port is in use; stop the program holding it/,
    );
    net.connect(0, await net.addClient("alice"));
    await net.waitForAddress(net.clients[0]!, "10.8.0.2");
    assert(await net.ping(net.clients[0]!, "10.8.0.1"));
  },
);

rootTest(
  "vpn serve with openvpn.tcp_port in use names that port and the fix and exits 1, leaving no TUN",
  async () => {
    await using net = await Topology.create(1);
    const holder = net.server.spawn([
      "python3",
      "-c",
      "import socket, sys; s = socket.socket(); s.bind(('0.0.0.0', 1195)); s.listen(); " +
      "print('bound', flush=True); sys.stdin.read()",
    ], { stdin: "piped" });
    const held = new VpnProcess(holder);
    try {
      await held.waitForLog(/bound/);
      const server = new VpnProcess(net.server.spawn(denoScript(MAIN, "serve", "--dir", net.dir)));
      assertEquals(await server.exited(), 1, server.log);
      assertMatch(
        server.log,
        /Cannot listen for OpenVPN over TCP on 0\.0\.0\.0:1195: the port is in use; stop the program holding it, choose another openvpn\.tcp_port, or set openvpn\.tcp: false/,
      );
      const links = await net.server.run(["ip", "-o", "link"]);
      assert(!/vpn\d/.test(links.stdout), links.stdout);
    } finally {
      await holder.stdin.close();
      await held.exited();
    }
  },
);
