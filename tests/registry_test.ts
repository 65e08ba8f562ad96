/**
 * The client registry across processes: concurrent `vpn client add` and `vpn client revoke`
 * lose no certificate and no revocation, the lock bounds its wait, a revocation by serial,
 * a server that admits only certificates the registry lists, and the clients' settings
 * (`vpn client set`): read back, checked for form, and old registries without them.
 */

import { assert, assertEquals, assertMatch, assertRejects } from "./_assert.ts";
import { denoScript, run, type RunResult } from "./_netns.ts";
import { within } from "./_wait.ts";
import { Lab, SHORT_MS } from "./_lab.ts";
import { ClientError } from "../mod/native/client.ts";
import {
  initPki,
  issueClient,
  listClients,
  PkiError,
  readRegistrySerials,
  revokeClient,
  setClientSettings,
} from "../mod/pki.ts";

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

Deno.test("readRegistrySerials gives every valid serial its settings, and a registry without any still reads", async () => {
  await withDir(async (dir) => {
    // Entries as every earlier version wrote them: no settings at all (and here no format).
    const old = {
      version: 1,
      clients: [
        { name: "alice", serial: "aa01", notAfter: "2099-01-01T00:00:00.000Z" },
        { name: "bob", serial: "BB02", notAfter: "2099-01-01T00:00:00.000Z", format: "ovpn" },
        {
          name: "carol",
          serial: "cc03",
          notAfter: "2099-01-01T00:00:00.000Z",
          revokedAt: "2024-01-01T00:00:00.000Z",
          address: "10.8.0.7",
        },
      ],
    };
    await Deno.writeTextFile(`${dir}/clients.json`, JSON.stringify(old));
    const read = await readRegistrySerials(dir);
    assertEquals([...read.valid], ["aa01", "bb02"]);
    assertEquals([...read.revoked], ["cc03"]);
    assertEquals(
      Object.fromEntries(read.settings),
      { aa01: { routes: [] }, bb02: { routes: [] } },
      "revoked clients have none",
    );
    await setClientSettings(dir, "bob", () => ({
      address: "10.8.0.50",
      address6: "fd00:8::32",
      routes: ["192.168.60.0/24", "fd00:60::/64"],
      redirectGateway: false,
    }));
    assertEquals((await readRegistrySerials(dir)).settings.get("bb02"), {
      address: "10.8.0.50",
      address6: "fd00:8::32",
      routes: ["192.168.60.0/24", "fd00:60::/64"],
      redirectGateway: false,
    });
    const file = JSON.parse(await Deno.readTextFile(`${dir}/clients.json`));
    assertEquals(file.version, 1, "absent settings mean none: no new version");
    assertEquals(file.clients[1].redirect_gateway, false);
    assertEquals(file.clients[0], old.clients[0], "alice untouched");
  });
});

Deno.test("setClientSettings decides under the lock with the others' settings, and changes nothing on a throw", async () => {
  await withDir(async (dir) => {
    await issueClient(dir, "alice");
    await issueClient(dir, "bob");
    await issueClient(dir, "carol");
    await revokeClient(dir, "carol");
    await setClientSettings(dir, "alice", (current) => ({ ...current, address: "10.8.0.9" }));
    let seen: unknown;
    await setClientSettings(dir, "bob", (current, others) => {
      seen = { current, others: Object.fromEntries(others) };
      return { routes: ["192.168.60.0/24"] };
    });
    assertEquals(seen, {
      current: { routes: [] },
      others: { alice: { address: "10.8.0.9", routes: [] } },
    }, "itself and revoked carol are not among the others");
    const before = await Deno.readTextFile(`${dir}/clients.json`);
    await assertRejects(
      () =>
        setClientSettings(dir, "alice", () => {
          throw new RangeError("refused by the check");
        }),
      RangeError,
      /refused by the check/,
    );
    await assertRejects(
      () => setClientSettings(dir, "alice", () => ({ address: "10.8.0.09", routes: [] })),
      PkiError,
      /Cannot set "alice": address "10\.8\.0\.09" is not an IPv4 address/,
    );
    await assertRejects(
      () => setClientSettings(dir, "dave", (c) => c),
      PkiError,
      /No client named "dave" in .*vpn client list --dir/,
    );
    await assertRejects(
      () => setClientSettings(dir, "carol", (c) => c),
      PkiError,
      /Client "carol" is revoked; "vpn client add carol --dir .*" issues a new profile/,
    );
    assertEquals(await Deno.readTextFile(`${dir}/clients.json`), before, "nothing written");
    // No routes: the key goes, as in entries that never had any.
    await setClientSettings(dir, "bob", () => ({ routes: [] }));
    const bob = JSON.parse(await Deno.readTextFile(`${dir}/clients.json`)).clients[1];
    assertEquals("routes" in bob, false, JSON.stringify(bob));
  });
});

Deno.test("A registry whose settings are not of the right form is refused, naming the entry and field", async () => {
  await withDir(async (dir) => {
    const entry = { name: "alice", serial: "aa01", notAfter: "2099-01-01T00:00:00.000Z" };
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ address: "10.8.0" }, /address "10\.8\.0" is not an IPv4 address/],
      [{ address6: "fd00:8:0::32" }, /address6 "fd00:8:0::32" is not an IPv6 address in canonical/],
      [{ routes: "192.168.60.0/24" }, /routes must be a list of at most 64 CIDR blocks/],
      [{ routes: Array(65).fill("192.168.60.0/24") }, /routes must be a list of at most 64/],
      [{ routes: ["192.168.60.1/24"] }, /route "192\.168\.60\.1\/24" is not a network in CIDR/],
      [{ routes: [7] }, /route 7 is not a network in CIDR form/],
      [{ redirect_gateway: "yes" }, /redirect_gateway must be true or false/],
    ];
    for (const [fields, pattern] of cases) {
      const file = { version: 1, clients: [{ ...entry, ...fields }] };
      await Deno.writeTextFile(`${dir}/clients.json`, JSON.stringify(file));
      await assertRejects(() => readRegistrySerials(dir), PkiError, pattern);
      await assertRejects(() => readRegistrySerials(dir), PkiError, /entry 0 is malformed: /);
    }
  });
});
