import { assertEquals, assertMatch, assertRejects } from "./_assert.ts";
import {
  LeaseError,
  LEASES_FILE,
  prepareStateDir,
  readLeases,
  writeLeases,
} from "../mod/core/leases.ts";
import { type Credentials, type Lab, withLab } from "./_lab.ts";
import { OvpnClient } from "./_ovpn_client.ts";
import { loadTlsCryptKey, revokeClient } from "../mod/pki.ts";

Deno.test("writeLeases() and readLeases() keep serial, address and time, in a file of mode 0600; no file is no leases", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await prepareStateDir(dir);
    assertEquals((await Deno.stat(`${dir}/state`)).mode! & 0o777, 0o700);
    assertEquals(await readLeases(dir), []);
    const leases = [
      { serial: "0a1b", address: "10.8.0.7", seen: Date.parse("2026-11-30T10:00:00Z") },
      { serial: "ff00", address: "10.8.0.2", seen: Date.parse("2026-12-01T09:30:00.123Z") },
    ];
    await writeLeases(dir, leases);
    assertEquals(await readLeases(dir), leases);
    assertEquals((await Deno.stat(`${dir}/${LEASES_FILE}`)).mode! & 0o777, 0o600);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("prepareStateDir() moves the leases.json of an older version into state/, and keeps a newer one", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const old = { serial: "0a1b", address: "10.8.0.7", seen: Date.parse("2026-11-30T10:00:00Z") };
    await Deno.writeTextFile(
      `${dir}/leases.json`,
      JSON.stringify({ version: 1, leases: [{ ...old, seen: new Date(old.seen).toISOString() }] }),
    );
    await prepareStateDir(dir);
    assertEquals(await readLeases(dir), [old]);
    await assertRejects(() => Deno.stat(`${dir}/leases.json`), Deno.errors.NotFound);
    // A second start finds state/leases.json and leaves a stray old file where it is.
    const newer = { ...old, address: "10.8.0.9" };
    await writeLeases(dir, [newer]);
    await Deno.writeTextFile(`${dir}/leases.json`, "{}");
    await prepareStateDir(dir);
    assertEquals(await readLeases(dir), [newer]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("readLeases() refuses a file that is not JSON, of another version, or with a bad entry", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await prepareStateDir(dir);
    for (
      const [text, why] of [
        ["{", /is not JSON/],
        ['{"version": 2, "leases": []}', /not a leases file of version 1/],
        ['{"version": 1, "leases": [{"serial": "a", "address": "10.8.0.2"}]}', /without serial/],
        ['{"version": 1, "leases": [null]}', /without serial/],
      ] as const
    ) {
      await Deno.writeTextFile(`${dir}/${LEASES_FILE}`, text);
      const error = await assertRejects(() => readLeases(dir), LeaseError);
      assertMatch(error.message, why);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** An OpenVPN client of `lab` over UDP that completed its handshake. */
async function joined(lab: Lab, credentials: Credentials): Promise<OvpnClient> {
  const client = await OvpnClient.open({
    transport: "udp",
    port: lab.port,
    identity: { certPem: credentials.cert, keyPem: credentials.key, caPem: credentials.ca },
    tlsCryptKey: await loadTlsCryptKey(lab.dir),
  });
  await client.handshake();
  return client;
}

Deno.test("Server gives an OpenVPN client (which never asks) its address of before a restart, and forgets a revoked client's", async () => {
  await withLab(async (lab) => {
    const alice = await lab.issue("alice");
    const bob = await lab.issue("bob");
    const carol = await lab.issue("carol");
    const first = [await joined(lab, alice), await joined(lab, bob), await joined(lab, carol)];
    assertEquals(first.map((c) => c.address), ["10.8.0.2", "10.8.0.3", "10.8.0.4"]);
    for (const client of first) await client.close();
    await lab.server.stop();
    await revokeClient(lab.dir, "alice");

    await lab.startServer(lab.config.listen.port);
    // Without leases carol, first back, would get 10.8.0.2, the lowest free address.
    const again = [await joined(lab, carol), await joined(lab, bob)];
    assertEquals(again.map((c) => c.address), ["10.8.0.4", "10.8.0.3"]);
    for (const client of again) await client.close();
    await lab.server.stop();
    const kept = (await readLeases(lab.dir)).map((l) => l.address).sort();
    assertEquals(kept, ["10.8.0.3", "10.8.0.4"], "a revoked client's lease is not kept");
  });
});

Deno.test("Server drops leases older than lease_time", async () => {
  await withLab(async (lab) => {
    const names = ["alice", "bob", "carol"];
    const credentials = await Promise.all(names.map((name) => lab.issue(name)));
    for (const c of credentials) await (await joined(lab, c)).close();
    await lab.server.stop();
    const leases = await readLeases(lab.dir);
    assertEquals(leases.map((l) => l.address).sort(), ["10.8.0.2", "10.8.0.3", "10.8.0.4"]);
    // carol's lease (10.8.0.4) is made older than lease_time (60 s here), bob's is not.
    await writeLeases(
      lab.dir,
      leases.map((l) => l.address === "10.8.0.4" ? { ...l, seen: Date.now() - 61_000 } : l),
    );
    await lab.startServer(lab.config.listen.port);
    const carol = await joined(lab, credentials[2]!);
    assertEquals(carol.address, "10.8.0.2", "an expired lease: the lowest free address");
    const bob = await joined(lab, credentials[1]!);
    assertEquals(bob.address, "10.8.0.3");
    await carol.close();
    await bob.close();
  }, (config) => config.lease_time = 60);
});
