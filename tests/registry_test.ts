/**
 * The client registry across processes: concurrent `vpn client add` and `vpn client revoke`
 * lose no certificate and no revocation, the lock bounds its wait, a revocation by serial,
 * and a server that admits only certificates the registry lists.
 */

import { assert, assertEquals, assertMatch } from "./_assert.ts";
import { denoScript, run, type RunResult } from "./_netns.ts";
import { within } from "./_wait.ts";
import { Lab, SHORT_MS } from "./_lab.ts";
import { ClientError } from "../mod/native/client.ts";
import { initPki, issueClient, listClients } from "../mod/pki.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

/** `vpn ARGS`, killed after 30 s (a lock wait is 10 s at most). */
function vpn(...args: string[]): Promise<RunResult> {
  return run(denoScript(MAIN, ...args), true, 30_000);
}

async function withDir(fn: (dir: string, root: string) => Promise<void>): Promise<void> {
  const root = await Deno.makeTempDir({ prefix: "vpn-registry-test-" });
  try {
    const dir = `${root}/pki`;
    await initPki(dir, { hosts: ["127.0.0.1"] });
    await fn(dir, root);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
}

function issuedSerial(result: RunResult): string {
  const serial = /serial ([0-9a-f]+)\)/.exec(result.stdout)?.[1];
  assert(serial !== undefined, `no serial in: ${result.stdout}${result.stderr}`);
  return serial;
}

Deno.test("20 rounds of concurrent vpn client add and revoke processes lose no certificate and no revocation", async () => {
  await withDir(async (dir, root) => {
    const issued = new Set<string>();
    const revoked = new Set<string>();
    const add = async (name: string) => {
      const result = await vpn(
        "client",
        "add",
        name,
        "--dir",
        dir,
        "--out",
        `${root}/${name}.yaml`,
      );
      assertEquals(result.code, 0, `add ${name}: ${result.stderr}`);
      issued.add(issuedSerial(result));
    };
    await add("victim-0");
    for (let round = 0; round < 20; round++) {
      // Two adds and a revocation at once: each reads and rewrites the whole registry.
      const revoke = vpn("client", "revoke", `victim-${round}`, "--dir", dir).then((result) => {
        assertEquals(result.code, 0, `revoke victim-${round}: ${result.stderr}`);
        revoked.add(issuedSerial(result));
      });
      await Promise.all([revoke, add(`victim-${round + 1}`), add(`bystander-${round}`)]);
    }
    const listed = new Map((await listClients(dir)).map((c) => [c.serial, c.status]));
    for (const serial of issued) {
      const want = revoked.has(serial) ? "revoked" : "valid";
      assertEquals(listed.get(serial), want, `certificate ${serial}`);
    }
    assertEquals(revoked.size, 20);
    assertEquals(listed.size, issued.size, "nothing but what was issued");
  });
});

Deno.test("vpn client add waits at most 10 s for the registry lock, then names the lock file", async () => {
  await withDir(async (dir, root) => {
    const lock = `${dir}/clients.lock`;
    // util-linux flock(1): another process holding flock(2) on the same file.
    const holder = new Deno.Command("flock", {
      args: [lock, "cat"],
      stdin: "piped",
      stdout: "null",
      stderr: "null",
    }).spawn();
    const writer = holder.stdin.getWriter();
    try {
      const held = async () => (await run(["flock", "-n", lock, "true"], true)).code !== 0;
      for (let tries = 0; !(await held()); tries++) {
        assert(tries < 500, "flock(1) never took the lock");
      }
      const blocked = await vpn("client", "add", "carol", "--dir", dir, "--out", `${root}/c.yaml`);
      assertEquals(blocked.code, 2, blocked.stderr);
      assertMatch(
        blocked.stderr,
        new RegExp(`Cannot lock ${lock}: another vpn command has held it for 10 s; let it finish`),
      );
      assertEquals(await listClients(dir), [], "nothing was issued");
    } finally {
      await writer.close();
      await within(holder.status, SHORT_MS, "flock(1) exits once its stdin closes");
    }
    const free = await vpn("client", "add", "carol", "--dir", dir, "--out", `${root}/c.yaml`);
    assertEquals(free.code, 0, free.stderr);
  });
});

Deno.test("vpn client revoke --serial revokes that certificate, any case, once", async () => {
  await withDir(async (dir) => {
    const alice = await issueClient(dir, "alice");
    const bob = await issueClient(dir, "bob");
    const byName = new Map<string, string>();
    const statuses = async () => {
      for (const c of await listClients(dir)) byName.set(c.name, c.status);
      return Object.fromEntries(byName);
    };
    const revoked = await vpn(
      "client",
      "revoke",
      "--serial",
      alice.serial.toUpperCase(),
      "--dir",
      dir,
    );
    assertEquals(revoked.code, 0, revoked.stderr);
    assertEquals(revoked.stdout, `revoked "alice" (serial ${alice.serial})\n`);
    assertEquals(await statuses(), { alice: "revoked", bob: "valid" });

    const again = await vpn("client", "revoke", "--serial", alice.serial, "--dir", dir);
    assertEquals(again.code, 2);
    assertMatch(
      again.stderr,
      new RegExp(`Certificate ${alice.serial} \\("alice"\\) is already revoked`),
    );
    const unknown = await vpn("client", "revoke", "--serial", "abcdef", "--dir", dir);
    assertEquals(unknown.code, 2);
    assertMatch(unknown.stderr, /No certificate with serial abcdef in .*vpn client list --dir/);
    const both = await vpn("client", "revoke", "bob", "--serial", bob.serial, "--dir", dir);
    assertEquals(both.code, 2);
    assertMatch(both.stderr, /unexpected argument "bob"/);
    const notHex = await vpn("client", "revoke", "--serial", "bob", "--dir", dir);
    assertEquals(notHex.code, 2);
    assertMatch(notHex.stderr, /--serial bob: must be the serial in hex/);
    assertEquals(await statuses(), { alice: "revoked", bob: "valid" });
  });
});

Deno.test("Server refuses a certificate signed by its CA that the registry does not list", async () => {
  const lab = await Lab.open();
  try {
    // A certificate the registry lost: signed with this CA, recorded only in a copy.
    const copy = `${lab.root}/copy`;
    await run(["cp", "-a", lab.dir, copy]);
    const ghost = await issueClient(copy, "ghost");
    const ca = await Deno.readTextFile(`${lab.dir}/ca.crt`);
    const running = await lab.connect("ghost", { cert: ghost.certPem, key: ghost.keyPem, ca });
    const error = await within(running.outcome, SHORT_MS, "run() rejects");
    assert(error instanceof ClientError, `expected ClientError, got ${String(error)}`);
    assertMatch(
      error.message,
      new RegExp(`certificate ${ghost.serial} is not in the client registry`),
    );
    assertEquals(lab.server.sessionCount, 0);
    assertEquals(lab.server.stats.refused, 1);
    // A certificate it lists is admitted.
    await lab.connected("alice");
    assertEquals(lab.server.sessionCount, 1);
  } finally {
    await lab.close();
  }
});
