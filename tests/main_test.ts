/**
 * The command line: `vpn` run as a process from main.ts, its exit code and output checked.
 */

import { assertEquals, assertMatch } from "./_assert.ts";
import { denoScript, run, type RunResult } from "./_netns.ts";

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
    assertMatch(await Deno.readTextFile(`${dir}/server.yaml`), /subnet: 10\.20\.0\.0\/24/);
    const again = await vpn("init", "--dir", dir);
    assertEquals(again.code, 2);
    assertMatch(again.stderr, /--force/);
    assertEquals((await vpn("init", "--dir", dir, "--force")).code, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vpn client add writes a 0600 profile, refuses a duplicate name, and list shows it", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await vpn("init", "--dir", dir, "--host", "vpn.example.org", "--port", "1195");
    const out = `${dir}/alice.yaml`;
    const add = await vpn("client", "add", "alice", "--dir", dir, "--out", out);
    assertEquals(add.code, 0, add.stderr);
    assertEquals((await Deno.stat(out)).mode! & 0o777, 0o600);
    assertMatch(await Deno.readTextFile(out), /remote: vpn\.example\.org:1195/);
    const duplicate = await vpn("client", "add", "alice", "--dir", dir, "--out", `${dir}/a2.yaml`);
    assertEquals(duplicate.code, 2);
    assertMatch(duplicate.stderr, /alice/);
    assertEquals((await vpn("client", "revoke", "alice", "--dir", dir)).code, 0);
    const list = await vpn("client", "list", "--dir", dir);
    assertMatch(
      list.stdout,
      /^NAME\s+SERIAL\s+STATUS\s+EXPIRES\nalice\s+[0-9a-f]{32}\s+revoked\s+\d{4}-\d\d-\d\d\n/,
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
