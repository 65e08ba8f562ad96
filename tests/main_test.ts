/**
 * The command line: `vpn` run as a process from main.ts, its exit code and output checked.
 */

import { assert, assertEquals, assertMatch } from "./_assert.ts";
import { denoScript, Netns, rootTest, run, type RunResult, veth } from "./_netns.ts";
import { Topology } from "./_vpn.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

/**
 * Runs `vpn ARGS` to its end. Bounded: a command that should exit at once but serves or waits
 * instead (a check gone) is killed after 30 s and fails the test with its output.
 */
function vpn(...args: string[]): Promise<RunResult> {
  return run(denoScript(MAIN, ...args), true, 30_000);
}

Deno.test("vpn --help lists the commands and exits 0", async () => {
  const { code, stdout } = await vpn("--help");
  assertEquals(code, 0);
  assertMatch(stdout, /Usage: vpn <command>/);
  assertMatch(stdout, /version/);
});

Deno.test("vpn version prints the version and exits 0", async () => {
  const { code, stdout } = await vpn("version");
  assertEquals(code, 0);
  assertMatch(stdout, /^vpn \d+\.\d+\.\d+ \(deno /);
});

Deno.test("vpn with an unknown command says what exists and exits 2", async () => {
  const { code, stderr } = await vpn("frobnicate");
  assertEquals(code, 2);
  assertMatch(stderr, /unknown command "frobnicate"/);
  assertMatch(stderr, /Commands:/);
});

Deno.test("vpn serve with a bad config names the key and the fix, and exits 2", async () => {
  const dir = await Deno.makeTempDir();
  try {
    assertEquals((await vpn("init", "--dir", dir, "--host", "vpn.example.org")).code, 0);
    await Deno.writeTextFile(`${dir}/bad.yaml`, "keepalive:\n  interval: 0\n");
    const bad = await vpn("serve", "--dir", dir, "--config", `${dir}/bad.yaml`);
    assertEquals(bad.code, 2);
    assertMatch(bad.stderr, /keepalive\.interval: 0 is not allowed: must be a whole number/);
    await Deno.writeTextFile(`${dir}/typo.yaml`, "kepalive: {}\n");
    const typo = await vpn("serve", "--dir", dir, "--config", `${dir}/typo.yaml`);
    assertEquals(typo.code, 2);
    assertMatch(typo.stderr, /unknown key "kepalive" \(did you mean "keepalive"\?\)/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vpn init writes a PKI with private keys 0600 and refuses to overwrite it without --force", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const first = await vpn(
      "init",
      "--dir",
      dir,
      "--host",
      "vpn.example.org",
      "--subnet",
      "10.20.0.0/24",
    );
    assertEquals(first.code, 0, first.stderr);
    assertEquals((await Deno.stat(`${dir}/ca.key`)).mode! & 0o777, 0o600);
    assertEquals((await Deno.stat(`${dir}/tls-crypt.key`)).mode! & 0o777, 0o600);
    assertMatch(
      first.stdout,
      /created .*\/tls-crypt\.key, the tls-crypt key every OpenVPN profile/,
    );
    assertMatch(
      await Deno.readTextFile(`${dir}/tls-crypt.key`),
      /^-----BEGIN OpenVPN Static key V1-----$/m,
    );
    assertMatch(await Deno.readTextFile(`${dir}/server.yaml`), /subnet: 10\.20\.0\.0\/24/);
    const again = await vpn("init", "--dir", dir);
    assertEquals(again.code, 2);
    assertMatch(again.stderr, /--force/);
    assertEquals((await vpn("init", "--dir", dir, "--force")).code, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vpn init writes a random unique local subnet6, or the one --subnet6 names, or none", async () => {
  const root = await Deno.makeTempDir();
  try {
    const subnet6Of = async (dir: string) =>
      /^subnet6: (.+)$/m.exec(await Deno.readTextFile(`${dir}/server.yaml`))?.[1];
    const seen = new Set<string | undefined>();
    for (const name of ["a", "b"]) {
      const init = await vpn("init", "--dir", `${root}/${name}`, "--host", "vpn.example.org");
      assertEquals(init.code, 0, init.stderr);
      const subnet6 = await subnet6Of(`${root}/${name}`);
      assertMatch(subnet6 ?? "", /^fd[0-9a-f]{2}(:[0-9a-f]{1,4}){0,3}::\/64$/);
      seen.add(subnet6);
    }
    assertEquals(seen.size, 2, "each server a prefix of its own");
    const chosen = await vpn(
      "init",
      ...["--dir", `${root}/c`, "--host", "vpn.example.org", "--subnet6", "FD00:8:0:0::/64"],
    );
    assertEquals(chosen.code, 0, chosen.stderr);
    assertEquals(await subnet6Of(`${root}/c`), "fd00:8::/64", "canonical, as the server reads it");
    const off = await vpn("init", "--dir", `${root}/d`, "--host", "h.example", "--subnet6", "none");
    assertEquals(off.code, 0, off.stderr);
    assertEquals(await subnet6Of(`${root}/d`), "none");
    const bad = await vpn("init", "--dir", `${root}/e`, "--subnet6", "fd00:8::/48");
    assertEquals(bad.code, 2);
    assertMatch(bad.stderr, /subnet6.*fd00:8::\/48.*\/64 to \/120/);
    assertEquals(await exists(`${root}/e`), false, "nothing written for a refused --subnet6");
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("vpn connect takes --no-dns", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await vpn("init", "--dir", dir, "--host", "vpn.example.org");
    const profile = `${dir}/alice.yaml`;
    await vpn("client", "add", "alice", "--dir", dir, "--out", profile);
    // A TUN name of 16 bytes stops it before any network: parsed, and refused for the name only.
    const run = await vpn("connect", "--profile", profile, "--no-dns", "--dev", "x".repeat(16));
    assertEquals(run.code, 2, run.stderr);
    assertEquals(run.stderr.includes("unknown option"), false, run.stderr);
    assertMatch(run.stderr, /x{16}/);
    const value = await vpn("connect", "--profile", profile, "--no-dns=yes");
    assertEquals(value.code, 2);
    assertMatch(value.stderr, /--no-dns takes no value/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vpn client add writes a 0600 profile, refuses a duplicate name, and list shows it", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await vpn("init", "--dir", dir, "--host", "vpn.example.org", "--port", "1195");
    // OpenVPN over TCP moves out of the way of our own TLS, to the next port.
    assertMatch(await Deno.readTextFile(`${dir}/server.yaml`), /\n {2}tcp_port: 1196\n/);
    const out = `${dir}/alice.yaml`;
    const add = await vpn("client", "add", "alice", "--dir", dir, "--out", out);
    assertEquals(add.code, 0, add.stderr);
    assertEquals((await Deno.stat(out)).mode! & 0o777, 0o600);
    assertMatch(await Deno.readTextFile(out), /remote: vpn\.example\.org:1195/);
    const duplicate = await vpn("client", "add", "alice", "--dir", dir, "--out", `${dir}/a2.yaml`);
    assertEquals(duplicate.code, 2);
    assertMatch(duplicate.stderr, /alice/);
    assertEquals((await vpn("client", "revoke", "alice", "--dir", dir)).code, 0);
    const ovpn = `${dir}/bob.ovpn`;
    const bob = await vpn("client", "add", "bob", "--dir", dir, "--format", "ovpn", "--out", ovpn);
    assertEquals(bob.code, 0, bob.stderr);
    assertMatch(await Deno.readTextFile(ovpn), /^remote vpn\.example\.org 1195$/m);
    const list = await vpn("client", "list", "--dir", dir);
    assertMatch(
      list.stdout,
      new RegExp(
        "^NAME\\s+SERIAL\\s+STATUS\\s+EXPIRES\\s+FORMAT\\s+ADDRESS\\s+ROUTES\\s+FULL-TUNNEL\\n" +
          "alice\\s+[0-9a-f]{32}\\s+revoked\\s+\\d{4}-\\d\\d-\\d\\d\\s+vpn\\s+-\\s+-\\s+-\\n" +
          "bob\\s+[0-9a-f]{32}\\s+valid\\s+\\d{4}-\\d\\d-\\d\\d\\s+ovpn\\s+-\\s+-\\s+-\\n$",
      ),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vpn connect without a profile or with a missing one exits 2", async () => {
  const missing = await vpn("connect", "--profile", "/nonexistent/profile.yaml");
  assertMatch(missing.stderr, /does not exist; on the server, "vpn client add NAME" writes one/);
  assertEquals(missing.code, 2, missing.stderr);
  assertMatch(missing.stderr, /profile\.yaml/);
  const usage = await vpn("connect");
  assertEquals(usage.code, 2);
  assertMatch(usage.stderr, /--profile FILE/);
});

Deno.test("vpn connect with an unknown --cipher or --proto exits 2 and names the choices", async () => {
  const cipher = await vpn("connect", "--profile", "p.yaml", "--cipher", "rot13");
  assertEquals(cipher.code, 2);
  assertMatch(cipher.stderr, /--cipher rot13: must be aes-256-gcm or chacha20-poly1305/);
  const proto = await vpn("connect", "--profile", "p.yaml", "--proto", "sctp");
  assertEquals(proto.code, 2);
  assertMatch(proto.stderr, /--proto sctp: must be auto, udp or tcp/);
});

Deno.test("vpn COMMAND --help prints that command's usage and options and exits 0", async () => {
  const cases: [string[], RegExp][] = [
    [["serve", "--help"], /^Usage: vpn serve \[--dir DIR\] \[--config FILE\][\s\S]*--config FILE/],
    [["init", "-h"], /^Usage: vpn init [\s\S]*--host NAME_OR_IP[\s\S]*--force/],
    [["client", "--help"], /^Usage: vpn client add\|revoke\|list\|set[\s\S]*vpn client set NAME/],
    [
      ["client", "set", "--help"],
      /^Usage: vpn client set NAME[\s\S]*--address A[\s\S]*--route CIDR[\s\S]*--default-redirect-gateway/,
    ],
    [["help", "client", "set"], /^Usage: vpn client set NAME/],
    [["init", "--help"], /--subnet6 CIDR {3}the VPN's IPv6 subnet/],
    [["--help"], /vpn client set NAME[\s\S]*--no-dns/],
    [
      ["client", "add", "--help"],
      /^Usage: vpn client add NAME[\s\S]*--format F[\s\S]*--proto P[\s\S]*--remote HOST:PORT/,
    ],
    [["client", "revoke", "--help"], /^Usage: vpn client revoke NAME/],
    [["client", "list", "-h"], /^Usage: vpn client list/],
    [
      ["connect", "--help"],
      /^Usage: vpn connect [\s\S]*--no-offload[\s\S]*--cipher C[\s\S]*--no-dns {9}keep/,
    ],
    [["version", "--help"], /^Usage: vpn version/],
    [["help", "connect"], /^Usage: vpn connect /],
    [["help", "client", "revoke"], /^Usage: vpn client revoke NAME/],
    [["status", "--help"], /^Usage: vpn status \[--json\] \[--dir DIR\][\s\S]*--json/],
    [["reload", "-h"], /^Usage: vpn reload \[--dir DIR\][\s\S]*needs a restart/],
    [["client", "kill", "--help"], /^Usage: vpn client kill NAME \[--dir DIR\]/],
    [["help", "service", "install"], /^Usage: vpn service install [\s\S]*--unit PATH/],
    [["--help"], /vpn status \[--json\][\s\S]*vpn reload[\s\S]*vpn service install/],
  ];
  for (const [args, pattern] of cases) {
    const { code, stdout, stderr } = await vpn(...args);
    assertEquals(code, 0, `vpn ${args.join(" ")}: ${stderr}`);
    assertMatch(stdout, pattern, `vpn ${args.join(" ")}`);
  }
});

Deno.test("vpn with an unknown option names it, shows that command's usage and exits 2", async () => {
  const serve = await vpn("serve", "--bogus");
  assertEquals(serve.code, 2);
  assertMatch(serve.stderr, /^vpn: unknown option --bogus\nusage: vpn serve \[--dir DIR\]/);
  // node:util's own wording suggested `-- "--bogus"` with an unbalanced quote.
  assertEquals(serve.stderr.includes("'"), false, serve.stderr);
  const missing = await vpn("client", "add", "alice", "--dir");
  assertEquals(missing.code, 2);
  assertMatch(missing.stderr, /--dir needs a value\nusage: vpn client add NAME/);
});

Deno.test("vpn status, reload and client kill say when no server runs, and exit 1", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/server.yaml`, `control:\n  socket: ${dir}/c.sock\n`);
    for (const args of [["status"], ["reload"], ["client", "kill", "alice"]]) {
      const { code, stderr } = await vpn(...args, "--dir", dir);
      assertEquals(code, 1, `vpn ${args.join(" ")}: ${stderr}`);
      assertEquals(
        stderr,
        `vpn: no server runs on ${dir} (no control socket at ${dir}/c.sock); start it with ` +
          `vpn serve --dir ${dir}\n`,
      );
    }
    const usage = await vpn("client", "kill", "--dir", dir);
    assertEquals(usage.code, 2);
    assertMatch(usage.stderr, /missing argument NAME\nusage: vpn client kill NAME/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vpn connect's usage error lists every one of its options", async () => {
  const { code, stderr } = await vpn("connect");
  assertEquals(code, 2);
  assertMatch(stderr, /--profile FILE is required/);
  for (
    const flag of ["--profile", "--dev", "--proto", "--no-offload", "--cipher", "--no-dns", "-v|-q"]
  ) {
    assert(stderr.includes(flag), `${flag} missing from: ${stderr}`);
  }
});

Deno.test("vpn serve refuses a --dir without a PKI and creates nothing", async () => {
  const root = await Deno.makeTempDir();
  try {
    const typo = `${root}/typo`;
    const wrongDir = await vpn("serve", "--dir", typo);
    assertEquals(wrongDir.code, 2);
    assertMatch(wrongDir.stderr, new RegExp(`no PKI in ${typo} .*run "vpn init --dir ${typo}"`));
    assertEquals(await exists(typo), false, "the mistyped directory was created");
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("vpn serve in a directory that lost its ca.crt names what is left and the way out", async () => {
  const dir = await Deno.makeTempDir();
  try {
    assertEquals((await vpn("init", "--dir", dir, "--host", "vpn.example.org")).code, 0);
    await Deno.remove(`${dir}/ca.crt`);
    const { code, stderr } = await vpn("serve", "--dir", dir);
    assertEquals(code, 2);
    assertMatch(stderr, /the PKI in .* is incomplete: .*ca\.crt is missing but .*ca\.key/);
    assertMatch(stderr, /restore ca\.crt from a backup/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vpn init keeps an existing server.yaml, and refuses --port over it without --force", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/server.yaml`, "mtu: 1300\n");
    const first = await vpn("init", "--dir", dir, "--host", "vpn.example.org");
    assertEquals(first.code, 0, first.stderr);
    assertMatch(first.stdout, /kept the existing .*server\.yaml/);
    assertEquals(await Deno.readTextFile(`${dir}/server.yaml`), "mtu: 1300\n");
    await Deno.remove(`${dir}/ca.crt`);
    await Deno.remove(`${dir}/ca.key`);
    const port = await vpn("init", "--dir", dir, "--port", "1195");
    assertEquals(port.code, 2);
    assertMatch(
      port.stderr,
      /server\.yaml exists; edit its subnet, subnet6 and listen\.port there/,
    );
    const subnet6 = await vpn("init", "--dir", dir, "--subnet6", "none");
    assertEquals(subnet6.code, 2);
    assertMatch(subnet6.stderr, /server\.yaml exists; edit its subnet, subnet6/);
    assertEquals(await Deno.readTextFile(`${dir}/server.yaml`), "mtu: 1300\n");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("deno task vpn takes relative --dir and --out from the caller's directory", async () => {
  const caller = await Deno.makeTempDir();
  const repo = new URL("..", import.meta.url).pathname;
  try {
    const task = (...args: string[]) =>
      new Deno.Command(Deno.execPath(), {
        args: ["task", "-q", "--config", `${repo}deno.json`, "vpn", ...args],
        cwd: caller,
        // As from a shell: `deno task test` set INIT_CWD, and deno task keeps one already set.
        clearEnv: true,
        env: { ...withoutInitCwd(), NO_COLOR: "1" },
      }).output();
    const init = await task("init", "--dir", "pki", "--host", "vpn.example.org");
    assertEquals(init.code, 0, new TextDecoder().decode(init.stderr));
    const add = await task("client", "add", "alice", "--dir", "pki", "--out", "alice.yaml");
    assertEquals(add.code, 0, new TextDecoder().decode(add.stderr));
    assertEquals((await Deno.stat(`${caller}/alice.yaml`)).mode! & 0o777, 0o600);
    await Deno.stat(`${caller}/pki/ca.key`);
    assertEquals(await exists(`${repo}alice.yaml`), false, "the key landed in the repository");
    assertEquals(await exists(`${repo}pki`), false, "the PKI landed in the repository");
  } finally {
    await Deno.remove(caller, { recursive: true });
  }
});

Deno.test("vpn client add warns when the profile's remote is a loopback address", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await vpn("init", "--dir", dir, "--host", "localhost", "--host", "127.0.0.1");
    const local = await vpn("client", "add", "alice", "--dir", dir, "--out", `${dir}/a.yaml`);
    assertEquals(local.code, 0, local.stderr);
    assertMatch(await Deno.readTextFile(`${dir}/a.yaml`), /remote: localhost:1194/);
    assertMatch(
      local.stderr,
      /warning: the profile's remote localhost:1194 is a loopback address: .*--remote HOST:PORT/,
    );
    const explicit = await vpn(
      "client",
      "add",
      "bob",
      ...["--dir", dir, "--out", `${dir}/b.yaml`, "--remote", "[::1]:1194"],
    );
    assertMatch(explicit.stderr, /\[::1\]:1194 is a loopback address/);
    const other = await vpn(
      "client",
      "add",
      "carol",
      ...["--dir", dir, "--out", `${dir}/c.yaml`, "--remote", "vpn.example.org:1194"],
    );
    assertEquals(other.code, 0, other.stderr);
    assertEquals(other.stderr, "", "no warning for a public name");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vpn client add prefers the certificate's first name that is not loopback", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // As PKIs made by earlier versions were: localhost first.
    await vpn("init", ...["--dir", dir, "--host", "localhost", "--host", "vpn.example.org"]);
    const add = await vpn("client", "add", "alice", "--dir", dir, "--out", `${dir}/a.yaml`);
    assertEquals(add.stderr, "");
    assertMatch(await Deno.readTextFile(`${dir}/a.yaml`), /remote: vpn\.example\.org:1194/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vpn connect warns, as ssh does, about a profile that others may read", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await vpn("init", "--dir", dir, "--host", "vpn.example.org");
    const profile = `${dir}/alice.yaml`;
    await vpn("client", "add", "alice", "--dir", dir, "--out", profile);
    await Deno.chmod(profile, 0o644);
    // A TUN name of 16 bytes stops it right after the profile is read: no TUN, no network.
    const loose = await vpn("connect", "--profile", profile, "--cipher", "rot13");
    assertEquals(loose.stderr.includes("chmod"), false, "options are checked before any file");
    const { stderr } = await vpn("connect", "--profile", profile, "--dev", "x".repeat(16));
    assertMatch(
      stderr,
      new RegExp(
        `warning: ${profile} holds this client's private key but others may read it ` +
          `\\(mode 0644\\); run: chmod 600 ${profile}`,
      ),
    );
    await Deno.chmod(profile, 0o600);
    const tight = await vpn("connect", "--profile", profile, "--dev", "x".repeat(16));
    assertEquals(tight.stderr.includes("chmod"), false, tight.stderr);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

rootTest(
  "vpn without access to its PKI says which file, whose it is and what to run (exit 2)",
  async () => {
    const dir = await Deno.makeTempDir();
    try {
      assertEquals((await vpn("init", "--dir", dir, "--host", "vpn.example.org")).code, 0);
      await run(["chown", "-R", "65534:65534", dir]);
      // Root without the capabilities that bypass file modes: a user who is not the owner.
      const asOther = (...args: string[]) =>
        run(
          [
            "setpriv",
            "--bounding-set=-dac_override,-dac_read_search",
            ...denoScript(MAIN, ...args),
          ],
          true,
          30_000,
        );
      const expected = new RegExp(
        `^vpn: cannot \\w+ ${dir}/\\S+: permission denied \\(${dir} belongs to uid 65534, mode ` +
          `0700; this is uid 0\\); run vpn as root \\(sudo\\) or as that owner`,
      );
      for (const args of [["serve", "--dir", dir], ["client", "list", "--dir", dir]]) {
        const { code, stderr } = await asOther(...args);
        assertEquals(code, 2, `vpn ${args.join(" ")}: ${stderr}`);
        assertMatch(stderr, expected);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

rootTest(
  "vpn init without --host names this machine's public address first (no private ones) and loopback last",
  async () => {
    await using ns = await Netns.create("init");
    await using peer = await Netns.create("peer");
    await veth(ns, "192.0.2.77/24", peer, "192.0.2.78/24");
    const [link] = JSON.parse((await ns.run(["ip", "-j", "link", "show", "type", "veth"])).stdout);
    // A private address as well: anyone who connects reads the certificate, so it stays out.
    await ns.run(["ip", "addr", "add", "10.77.0.1/24", "dev", link.ifname]);
    const dir = await Deno.makeTempDir();
    try {
      const init = await ns.run(denoScript(MAIN, "init", "--dir", `${dir}/pki`));
      assertEquals(init.stdout.includes("10.77.0.1"), false, init.stdout);
      const host = Deno.hostname().toLowerCase();
      // A fully qualified host name is the one clients can look up; otherwise the address.
      const first = host.includes(".") ? host : "192.0.2.77";
      assertMatch(
        init.stdout,
        new RegExp(`for ${first.replaceAll(".", "\\.")}, .*localhost, 127\\.0\\.0\\.1\\n`),
      );
      assertMatch(init.stdout, /192\.0\.2\.77/);
      const out = `${dir}/alice.yaml`;
      const add = await vpn("client", "add", "alice", "--dir", `${dir}/pki`, "--out", out);
      assertEquals(add.stderr, "", "no loopback warning");
      assertMatch(
        await Deno.readTextFile(out),
        new RegExp(`remote: ${first.replaceAll(".", "\\.")}:1194`),
      );
      // With no public address and no host name with a domain: the first private address.
      await ns.run(["ip", "addr", "del", "192.0.2.77/24", "dev", link.ifname]);
      if (!host.includes(".")) {
        const other = await ns.run(denoScript(MAIN, "init", "--dir", `${dir}/private`));
        assertMatch(other.stdout, /for 10\.77\.0\.1, localhost, 127\.0\.0\.1\n/);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

function withoutInitCwd(): Record<string, string> {
  const env = Deno.env.toObject();
  delete env.INIT_CWD;
  return env;
}

Deno.test("vpn connect with a profile whose key is not its certificate's exits 2 at once", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await vpn("init", "--dir", dir, "--host", "vpn.example.org");
    for (const name of ["alice", "bob"]) {
      await vpn("client", "add", name, "--dir", dir, "--out", `${dir}/${name}.yaml`);
    }
    const keyOf = (text: string) => /key: \|\n((?: {2}.*\n)+)/.exec(text)![1]!;
    const alice = await Deno.readTextFile(`${dir}/alice.yaml`);
    const bob = await Deno.readTextFile(`${dir}/bob.yaml`);
    const mixed = `${dir}/mixed.yaml`;
    await Deno.writeTextFile(mixed, alice.replace(keyOf(alice), keyOf(bob)), { mode: 0o600 });
    // No server at all: it must not get as far as dialling (and retrying for ever).
    const { code, stderr } = await vpn("connect", "127.0.0.1:9", "--profile", mixed);
    assertEquals(code, 2, stderr);
    assertMatch(stderr, /mixed\.yaml: its key is not the private key of its cert/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

rootTest("vpn serve gives a PKI without tls-crypt.key one, once, and keeps it", async () => {
  await using net = await Topology.create(0);
  const path = `${net.dir}/tls-crypt.key`;
  await Deno.remove(path); // as a PKI from before OpenVPN support
  const first = await net.startServer();
  assertMatch(first.log, new RegExp(`created ${path}, the tls-crypt key of OpenVPN clients`));
  assertEquals((await Deno.stat(path)).mode! & 0o777, 0o600);
  const key = await Deno.readTextFile(path);
  assertEquals(await first.stop(), 0, first.log);
  const second = await net.startServer();
  assertEquals(second.log.includes("tls-crypt"), false, second.log);
  assertEquals(await Deno.readTextFile(path), key, "the same key");
  assertEquals(await second.stop(), 0, second.log);
});
