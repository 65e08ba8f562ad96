/**
 * The `.ovpn` profile: its lines and blocks (mod/openvpn/profile.ts), what `vpn client add
 * --format ovpn` writes, and stock `openvpn` 2.6 reading that file without a warning.
 */

import { assert, assertEquals, assertMatch, assertThrows } from "./_assert.ts";
import { denoScript, Netns, rootTest, type RunResult } from "./_netns.ts";
import { exitOf, kill, within } from "./_wait.ts";
import { ovpnProfile, type OvpnProfileParams } from "../mod/openvpn/profile.ts";
import { formatStaticKey, parseStaticKey } from "../mod/openvpn/tls_crypt.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const OPENVPN = "/usr/sbin/openvpn";

const PEM = (label: string) => `-----BEGIN ${label}-----\nAAAA\n-----END ${label}-----\n`;
const KEY_TEXT = formatStaticKey(new Uint8Array(256).fill(7));

function params(overrides: Partial<OvpnProfileParams> = {}): OvpnProfileParams {
  return {
    remoteHost: "vpn.example.org",
    port: 1194,
    proto: "udp",
    caPem: PEM("CERTIFICATE"),
    certPem: PEM("CERTIFICATE"),
    keyPem: PEM("PRIVATE KEY"),
    tlsCryptKey: KEY_TEXT,
    ciphers: ["AES-256-GCM", "CHACHA20-POLY1305"],
    ...overrides,
  };
}

/** The option lines of a profile: neither comments nor the inline blocks. */
function optionLines(text: string): string[] {
  return text.replace(/<([a-z-]+)>\n[\s\S]*?\n<\/\1>\n?/g, "").split("\n")
    .filter((line) => line !== "" && !line.startsWith("#"));
}

/** The text between `<name>` and `</name>`. */
function block(text: string, name: string): string | undefined {
  return new RegExp(`^<${name}>\\n([\\s\\S]*?)\\n</${name}>$`, "m").exec(text)?.[1];
}

Deno.test("ovpnProfile() writes exactly the options a 2.6 and a Connect 3 client take, UDP", () => {
  assertEquals(optionLines(ovpnProfile(params())), [
    "client",
    "dev tun",
    "proto udp",
    "remote vpn.example.org 1194",
    "nobind",
    "remote-cert-tls server",
    "cipher AES-256-GCM",
    "verb 3",
  ]);
});

Deno.test("ovpnProfile() writes proto tcp-client and the port it is given for TCP", () => {
  const lines = optionLines(ovpnProfile(params({ proto: "tcp", port: 1195 })));
  assert(lines.includes("proto tcp-client"), lines.join("\n"));
  assert(lines.includes("remote vpn.example.org 1195"), lines.join("\n"));
  assert(!lines.some((line) => line === "proto udp" || line === "proto tcp"));
});

Deno.test("ovpnProfile() inlines the CA, certificate, key and tls-crypt key, each once", () => {
  const p = params({
    caPem: PEM("CERTIFICATE").replace("AAAA", "Q0E="),
    certPem: PEM("CERTIFICATE").replace("AAAA", "Q0VSVA=="),
    keyPem: PEM("EC PRIVATE KEY"),
  });
  const text = ovpnProfile(p);
  assertEquals(block(text, "ca"), p.caPem.trim());
  assertEquals(block(text, "cert"), p.certPem.trim());
  assertEquals(block(text, "key"), p.keyPem.trim());
  assertEquals(parseStaticKey(block(text, "tls-crypt")!), new Uint8Array(256).fill(7));
  for (const name of ["ca", "cert", "key", "tls-crypt"]) {
    assertEquals(text.split(`<${name}>`).length, 2, `one <${name}>`);
  }
  assert(text.endsWith("</tls-crypt>\n"));
});

Deno.test("ovpnProfile() names the server's first cipher and never data-ciphers", () => {
  const text = ovpnProfile(params({ ciphers: ["CHACHA20-POLY1305", "AES-256-GCM"] }));
  assert(optionLines(text).includes("cipher CHACHA20-POLY1305"));
  assert(!/data-ciphers/.test(text));
});

Deno.test("ovpnProfile() writes an IPv6 remote bare, as openvpn reads it", () => {
  const lines = optionLines(ovpnProfile(params({ remoteHost: "fd00::1", port: 443 })));
  assert(lines.includes("remote fd00::1 443"), lines.join("\n"));
});

Deno.test("ovpnProfile() refuses a host or inline text that would add options", () => {
  for (const remoteHost of ["vpn.example.org\nup /bin/sh", "a b", "", "-x", "[fd00::1]"]) {
    assertThrows(() => ovpnProfile(params({ remoteHost })), TypeError, /not a name or address/);
  }
  const escape = `${PEM("CERTIFICATE")}</ca>\nup /bin/sh\n<ca>\n${PEM("CERTIFICATE")}`;
  assertThrows(() => ovpnProfile(params({ caPem: escape })), TypeError, /Cannot inline <ca>/);
  assertThrows(() => ovpnProfile(params({ keyPem: "" })), TypeError, /Cannot inline <key>/);
  assertThrows(
    () => ovpnProfile(params({ tlsCryptKey: KEY_TEXT.replace("\n", "\r\n") })),
    TypeError,
    /Cannot inline <tls-crypt>/,
  );
});

Deno.test("ovpnProfile() refuses a bad port and ciphers we do not have", () => {
  for (const port of [0, 65536, 1.5]) {
    assertThrows(() => ovpnProfile(params({ port })), RangeError, /must be from 1 to 65535/);
  }
  for (const ciphers of [[], ["AES-128-GCM"], ["AES-256-GCM", "BF-CBC"]]) {
    assertThrows(() => ovpnProfile(params({ ciphers })), RangeError, /name one or more of/);
  }
});

// --- what `vpn client add --format ovpn` writes --------------------------------------------

/** Runs `vpn ARGS` in `cwd` to its end, for at most 30 s. */
async function vpnIn(cwd: string, ...args: string[]): Promise<RunResult> {
  const [program, ...rest] = denoScript(MAIN, ...args);
  const child = new Deno.Command(program!, {
    args: rest,
    cwd,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  try {
    const out = await within(child.output(), 30_000, `vpn ${args.join(" ")}`);
    const text = new TextDecoder();
    return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
  } catch (error) {
    kill(child);
    await exitOf(child, 5000, "vpn").catch(() => {});
    throw error;
  }
}

/** A temp dir with `vpn init` run in DIR/pki for `host`; removed after `fn`. */
async function withInit(
  fn: (root: string, dir: string) => Promise<void>,
  ...initArgs: string[]
): Promise<void> {
  const root = await Deno.makeTempDir({ prefix: "vpn-ovpn-test-" });
  try {
    const dir = `${root}/pki`;
    const init = await vpnIn(root, "init", "--dir", dir, ...initArgs);
    assertEquals(init.code, 0, init.stderr);
    await fn(root, dir);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
}

Deno.test("vpn client add --format ovpn writes ./NAME.ovpn, mode 0600, with the PKI's blocks", async () => {
  await withInit(
    async (root, dir) => {
      const add = await vpnIn(root, "client", "add", "alice", "--dir", dir, "--format", "ovpn");
      assertEquals(add.code, 0, add.stderr);
      assertEquals(add.stderr, "", "no warning for a public name");
      const path = `${root}/alice.ovpn`;
      assertEquals((await Deno.stat(path)).mode! & 0o777, 0o600);
      const text = await Deno.readTextFile(path);
      assertEquals(optionLines(text).slice(2, 4), ["proto udp", "remote vpn.example.org 1194"]);
      assertEquals(block(text, "ca"), (await Deno.readTextFile(`${dir}/ca.crt`)).trim());
      assertMatch(block(text, "cert")!, /^-----BEGIN CERTIFICATE-----\n/);
      assertMatch(block(text, "key")!, /^-----BEGIN PRIVATE KEY-----\n/);
      assertEquals(
        parseStaticKey(block(text, "tls-crypt")!),
        parseStaticKey(await Deno.readTextFile(`${dir}/tls-crypt.key`)),
      );
      const again = await vpnIn(root, "client", "add", "bob", "--dir", dir, "--out", path);
      assertEquals(again.code, 2);
      assertMatch(again.stderr, /alice\.ovpn exists; remove it or choose another --out/);
    },
    "--host",
    "vpn.example.org",
  );
});

Deno.test("vpn client add --format ovpn --proto tcp takes openvpn.tcp_port of server.yaml", async () => {
  await withInit(
    async (root, dir) => {
      await Deno.writeTextFile(
        `${dir}/server.yaml`,
        "listen: {port: 443}\nopenvpn: {tcp_port: 8443, ciphers: [chacha20-poly1305]}\n",
      );
      const add = await vpnIn(
        root,
        ...["client", "add", "alice", "--dir", dir],
        "--format",
        "ovpn",
        "--proto",
        "tcp",
      );
      assertEquals(add.code, 0, add.stderr);
      const lines = optionLines(await Deno.readTextFile(`${root}/alice.ovpn`));
      assertEquals(
        lines.filter((l) => /^(proto|remote|cipher) /.test(l)),
        ["proto tcp-client", "remote vpn.example.org 8443", "cipher CHACHA20-POLY1305"],
      );
      const udp = await vpnIn(root, ...["client", "add", "bob", "--dir", dir, "--format", "ovpn"]);
      assertEquals(udp.code, 0, udp.stderr);
      assert(
        optionLines(await Deno.readTextFile(`${root}/bob.ovpn`)).includes(
          "remote vpn.example.org 443",
        ),
      );
      const given = await vpnIn(
        root,
        ...["client", "add", "carol", "--dir", dir, "--format", "ovpn", "--proto", "tcp"],
        ...["--remote", "[fd00::1]"],
      );
      assertEquals(given.code, 0, given.stderr);
      assert(
        optionLines(await Deno.readTextFile(`${root}/carol.ovpn`)).includes("remote fd00::1 8443"),
      );
    },
    "--host",
    "vpn.example.org",
  );
});

Deno.test("vpn client add refuses --proto without --format ovpn, and a proto server.yaml has off", async () => {
  await withInit(
    async (root, dir) => {
      const plain = await vpnIn(root, "client", "add", "alice", "--dir", dir, "--proto", "tcp");
      assertEquals(plain.code, 2);
      assertMatch(plain.stderr, /--proto tcp is for OpenVPN profiles: add --format ovpn/);
      await Deno.writeTextFile(`${dir}/server.yaml`, "openvpn: {udp: false}\n");
      const udp = await vpnIn(root, ...[
        "client",
        "add",
        "alice",
        "--dir",
        dir,
        "--format",
        "ovpn",
        "--proto",
        "udp",
      ]);
      assertEquals(udp.code, 2);
      assertMatch(
        udp.stderr,
        /--proto udp: .*server\.yaml has openvpn\.udp: false, so the server takes no OpenVPN clients over UDP; pass --proto tcp, or set openvpn\.udp: true there and restart vpn serve/,
      );
      await Deno.writeTextFile(`${dir}/server.yaml`, "openvpn: {udp: false, tcp: false}\n");
      const none = await vpnIn(root, ...[
        "client",
        "add",
        "alice",
        "--dir",
        dir,
        "--format",
        "ovpn",
      ]);
      assertEquals(none.code, 2);
      assertMatch(
        none.stderr,
        /openvpn\.udp and openvpn\.tcp false: the server takes no OpenVPN clients/,
      );
      const bad = await vpnIn(root, ...["client", "add", "alice", "--dir", dir, "--format", "wg"]);
      assertEquals(bad.code, 2);
      assertMatch(bad.stderr, /--format wg: must be vpn or ovpn/);
      const list = await vpnIn(root, "client", "list", "--dir", dir);
      assertEquals(
        list.stdout,
        "NAME  SERIAL  STATUS  EXPIRES  FORMAT  ADDRESS  ROUTES  FULL-TUNNEL\n",
        "nothing was issued",
      );
    },
    "--host",
    "vpn.example.org",
  );
});

// --- stock openvpn reads the profile -------------------------------------------------------

/**
 * Runs `openvpn --config PATH --verb 4` inside `ns` for ~3 s and returns its output. It logs
 * its options and starts connecting to 127.0.0.1 of the namespace, where nothing listens; a
 * TUN is only opened once a server answers, so nothing else happens.
 */
async function openvpnOutput(ns: Netns, path: string): Promise<string> {
  const child = ns.spawn([OPENVPN, "--config", path, "--verb", "4"]);
  const output = Promise.all([child.stdout, child.stderr].map(async (stream) => {
    let text = "";
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) text += chunk;
    return text;
  }));
  await new Promise((resolve) => setTimeout(resolve, 3000));
  kill(child, "SIGTERM");
  await exitOf(child, 10_000, "openvpn");
  return (await within(output, 5000, "the end of openvpn's output")).join("");
}

/**
 * Lines 2.6 writes about a profile it does not like. The note that DCO is missing is about
 * this kernel, not the profile.
 */
const COMPLAINT =
  /WARNING|Options error|DEPRECATED|Unrecognized option|ERROR|Note: (?!Kernel support for ovpn-dco missing)/;

rootTest("openvpn 2.6 reads both profiles vpn client add writes without a warning", async () => {
  await withInit(async (root, dir) => {
    for (const proto of ["udp", "tcp"]) {
      const add = await vpnIn(
        root,
        ...["client", "add", proto, "--dir", dir, "--format", "ovpn", "--proto", proto],
        ...["--remote", "127.0.0.1"],
      );
      assertEquals(add.code, 0, add.stderr);
    }
    await using ns = await Netns.create("ovpn");
    const udp = await openvpnOutput(ns, `${root}/udp.ovpn`);
    const tcp = await openvpnOutput(ns, `${root}/tcp.ovpn`);
    for (const [name, log] of [["udp", udp], ["tcp", tcp]] as const) {
      const complaints = log.split("\n").filter((line) => COMPLAINT.test(line));
      assertEquals(complaints, [], `${name}:\n${log}`);
      // It got past option parsing: the options took effect and it set out to connect.
      assertMatch(log, /remote_cert_eku = 'TLS Web Server Authentication'/, name);
      assertMatch(log, /ciphername = 'AES-256-GCM'/, name);
      assertMatch(log, /Outgoing Control Channel Encryption: Cipher 'AES-256-CTR'/, name);
    }
    assertMatch(udp, /UDPv4 link remote: \[AF_INET\]127\.0\.0\.1:1194/);
    assertMatch(tcp, /Attempting to establish TCP connection with \[AF_INET\]127\.0\.0\.1:1195/);
  });
});
