/**
 * Tests of the PKI: files and modes, client registry, client authentication, and real
 * rustls connections with the certificates it makes. Each test works in its own temp dir.
 */

import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { assert, assertEquals, assertMatch, assertRejects, assertThrows } from "./_assert.ts";
import { within } from "./_wait.ts";
import {
  authChallenge,
  AuthError,
  type AuthFailure,
  derToPem,
  ensureTlsCryptKey,
  hasPki,
  initPki,
  issueClient,
  listClients,
  loadServerIdentity,
  loadTlsCryptKey,
  PkiError,
  pkiFilesIn,
  readRegistrySerials,
  readRevokedSerials,
  revokeClient,
  signChallenge,
  upgradeServerCertificate,
  verifyClient,
  verifyClientCertificate,
} from "../mod/pki.ts";
import { formatStaticKey, parseStaticKey } from "../mod/openvpn/tls_crypt.ts";

const HOSTS = ["127.0.0.1", "localhost"];
const DAY_MS = 24 * 60 * 60 * 1000;

/** A temp dir with a fresh PKI at `dir/pki` (a path that does not exist before init). */
async function withPki(
  fn: (dir: string) => Promise<void>,
  hosts: string[] = HOSTS,
): Promise<void> {
  const root = await Deno.makeTempDir({ prefix: "vpn-pki-test-" });
  try {
    const dir = `${root}/pki`;
    await initPki(dir, { hosts });
    await fn(dir);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
}

function mode(path: string): number {
  return (Deno.statSync(path).mode ?? 0) & 0o777;
}

function nonce(): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(32));
}

/** A client's full proof for `dir`'s server: what verifyClient() gets. */
async function proof(
  dir: string,
  client: { certPem: string; keyPem: string },
  now?: Date,
) {
  const challenge = authChallenge(nonce(), nonce(), "127.0.0.1");
  const signature = await signChallenge(client.keyPem, challenge);
  const { caPem } = await loadServerIdentity(dir);
  return {
    certPem: client.certPem,
    caPem,
    challenge,
    signature,
    ...(await readRegistrySerials(dir)),
    ...(now ? { now } : {}),
  };
}

async function assertAuthFails(
  fn: () => Promise<unknown>,
  reason: AuthFailure,
  pattern?: RegExp,
): Promise<void> {
  const error = await assertRejects(fn, AuthError, pattern);
  assertEquals((error as AuthError).reason, reason);
}

// --- init --------------------------------------------------------------------------------

Deno.test("initPki() creates CA, server cert and registry with private files 0600, the registry 0640", async () => {
  await withPki(async (dir) => {
    assert(hasPki(dir));
    assertEquals(mode(dir), 0o700);
    for (const f of ["ca.key", "server.key", "tls-crypt.key"]) {
      assertEquals(mode(`${dir}/${f}`), 0o600, f);
    }
    for (const f of ["ca.crt", "server.crt"]) assertEquals(mode(`${dir}/${f}`), 0o644, f);
    assertEquals(mode(`${dir}/clients.json`), 0o640, "the registry: the group may read it");
    // The six files and clients.lock.
    assertEquals(pkiFilesIn(dir).length, 6);
    assertEquals(Array.from(Deno.readDirSync(dir)).length, 7, "no temp files left behind");
    assertEquals(await listClients(dir), []);
    const { keyPem } = await loadServerIdentity(dir);
    assertMatch(keyPem, /^-----BEGIN PRIVATE KEY-----\n/);
  });
});

Deno.test("initPki() makes a CA certificate and a server certificate for the hosts", async () => {
  await withPki(async (dir) => {
    const { caPem, certPem } = await loadServerIdentity(dir);
    const ca = new x509.X509Certificate(caPem);
    assertMatch(ca.subject, /^CN=vpn CA [0-9a-f]{8}$/);
    assert(await ca.isSelfSigned());
    const caBasic = ca.getExtension(x509.BasicConstraintsExtension);
    assert(caBasic?.ca && caBasic.critical);
    const caUsage = ca.getExtension(x509.KeyUsagesExtension);
    assertEquals(caUsage?.usages, x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign);
    assert(ca.getExtension(x509.SubjectKeyIdentifierExtension));

    const server = new x509.X509Certificate(certPem);
    assertEquals(server.subject, "CN=127.0.0.1");
    assert(await server.verify({ publicKey: ca, signatureOnly: true }));
    const san = server.getExtension(x509.SubjectAlternativeNameExtension);
    assertEquals(san?.names.toJSON(), [
      { type: "ip", value: "127.0.0.1" },
      { type: "dns", value: "localhost" },
      { type: "dns", value: await identityOf(caPem) },
    ]);
    assertEquals([...server.getExtension(x509.ExtendedKeyUsageExtension)?.usages ?? []], [
      x509.ExtendedKeyUsage.serverAuth,
    ]);
    assertEquals(server.getExtension(x509.BasicConstraintsExtension)?.ca, false);
    assert(server.getExtension(x509.AuthorityKeyIdentifierExtension));
    assertMatch(server.serialNumber, /^[4-7][0-9a-f]{31}$/);
    const days = (server.notAfter.getTime() - Date.now()) / DAY_MS;
    assert(days > 824 && days <= 825, `server cert lives ${days} days`);
  });
});

Deno.test("initPki() refuses to replace a PKI without force and replaces it with force", async () => {
  await withPki(async (dir) => {
    await issueClient(dir, "alice");
    const before = (await loadServerIdentity(dir)).caPem;
    await assertRejects(
      () => initPki(dir, { hosts: HOSTS }),
      PkiError,
      /ca\.crt exists; pass --force to replace the PKI \(every issued client profile stops working\)/,
    );
    assertEquals((await loadServerIdentity(dir)).caPem, before, "the old CA is untouched");
    await initPki(dir, { hosts: HOSTS, force: true });
    assert((await loadServerIdentity(dir)).caPem !== before, "a new CA");
    assertEquals(await listClients(dir), [], "the old CA's clients are gone");
    assertEquals(mode(`${dir}/ca.key`), 0o600);
  });
});

Deno.test("initPki() rejects hosts that are neither addresses nor DNS names", async () => {
  const root = await Deno.makeTempDir({ prefix: "vpn-pki-test-" });
  try {
    for (const host of ["my host", "*.example.com", "a..b", "300.1.1.1", "1.2.3", "-bad.example"]) {
      await assertRejects(() => initPki(root, { hosts: [host] }), PkiError, /Cannot use host/);
    }
    await assertRejects(() => initPki(root, { hosts: [] }), PkiError, /at least one --host/);
    assert(!hasPki(root), "nothing was written");
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("initPki() puts IPv6 addresses in iPAddress SANs", async () => {
  await withPki(async (dir) => {
    const { caPem, certPem } = await loadServerIdentity(dir);
    const server = new x509.X509Certificate(certPem);
    const san = server.getExtension(x509.SubjectAlternativeNameExtension);
    assertEquals(san?.names.toJSON(), [
      { type: "dns", value: "vpn.example.org" },
      { type: "ip", value: "::1" },
      { type: "ip", value: "2001:db8::7" },
      { type: "dns", value: await identityOf(caPem) },
    ]);
  }, ["VPN.example.org.", "::1", "[2001:db8::7]"]);
});

/** The CA's identity name as PROTOCOL.md states it: 16 bytes of SHA-256 of its DER, in hex. */
async function identityOf(caPem: string): Promise<string> {
  const der = new x509.X509Certificate(caPem).rawData;
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", der));
  return `${digest.subarray(0, 16).toHex()}.vpn.invalid`;
}

// --- registry ----------------------------------------------------------------------------

Deno.test("issueClient() issues a CA-signed client certificate and records it", async () => {
  await withPki(async (dir) => {
    const issued = await issueClient(dir, "alice.laptop_1");
    const { caPem } = await loadServerIdentity(dir);
    assertEquals(issued.caPem, caPem);
    const cert = new x509.X509Certificate(issued.certPem);
    assertEquals(cert.subject, "CN=alice.laptop_1");
    assertEquals(cert.serialNumber, issued.serial);
    assert(await cert.verify({ publicKey: new x509.X509Certificate(caPem), signatureOnly: true }));
    assertEquals([...cert.getExtension(x509.ExtendedKeyUsageExtension)?.usages ?? []], [
      x509.ExtendedKeyUsage.clientAuth,
    ]);
    assertEquals(
      cert.getExtension(x509.KeyUsagesExtension)?.usages,
      x509.KeyUsageFlags.digitalSignature,
    );
    assertMatch(issued.keyPem, /^-----BEGIN PRIVATE KEY-----\n/);
    assertEquals(await listClients(dir), [{
      name: "alice.laptop_1",
      serial: issued.serial,
      notAfter: cert.notAfter.toISOString(),
      format: "vpn",
      status: "valid",
    }]);
    // Readable by the directory's group: a server that gives up root reads it as its user.
    assertEquals(mode(`${dir}/clients.json`), 0o640);
    assertEquals(Array.from(Deno.readDirSync(dir)).length, 7, "no client key or temp file stored");
  });
});

Deno.test("issueClient() refuses a duplicate name until the first is revoked", async () => {
  await withPki(async (dir) => {
    await issueClient(dir, "bob");
    await assertRejects(
      () => issueClient(dir, "bob"),
      PkiError,
      /"bob" already exists; revoke it first/,
    );
    await revokeClient(dir, "bob");
    await issueClient(dir, "bob");
    const statuses = (await listClients(dir)).map((c) => `${c.name}:${c.status}`);
    assertEquals(statuses, ["bob:revoked", "bob:valid"]);
  });
});

Deno.test("issueClient() keeps every entry when called concurrently", async () => {
  await withPki(async (dir) => {
    const names = ["c1", "c2", "c3", "c4", "c5"];
    await Promise.all(names.map((n) => issueClient(dir, n)));
    assertEquals((await listClients(dir)).map((c) => c.name).sort(), names);
  });
});

Deno.test("issueClient() rejects invalid names", async () => {
  await withPki(async (dir) => {
    for (const name of ["", ".hidden", "-x", "a/b", "a b", "x".repeat(65), "é"]) {
      await assertRejects(() => issueClient(dir, name), PkiError, /Cannot use client name/);
    }
    await issueClient(dir, "x".repeat(64));
  });
});

Deno.test("issueClient() fails with a clear error when there is no PKI", async () => {
  const root = await Deno.makeTempDir({ prefix: "vpn-pki-test-" });
  try {
    await assertRejects(() => issueClient(root, "alice"), PkiError, /missing; run `vpn init/);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("revokeClient() marks the client revoked and lists its serial", async () => {
  await withPki(async (dir) => {
    const alice = await issueClient(dir, "alice");
    const bob = await issueClient(dir, "bob");
    const entry = await revokeClient(dir, "alice");
    assertEquals(entry.serial, alice.serial);
    assert(entry.revokedAt && Date.parse(entry.revokedAt) <= Date.now());
    assertEquals(await readRevokedSerials(dir), new Set([alice.serial]));
    const listed = await listClients(dir);
    assertEquals(listed.map((c) => c.status), ["revoked", "valid"]);
    assertEquals(listed[1]?.serial, bob.serial);
    await assertRejects(() => revokeClient(dir, "alice"), PkiError, /already revoked/);
    await assertRejects(() => revokeClient(dir, "carol"), PkiError, /No client named "carol"/);
  });
});

Deno.test("listClients() reports expired clients", async () => {
  await withPki(async (dir) => {
    await issueClient(dir, "old", { days: 1 });
    assertEquals((await listClients(dir)).map((c) => c.status), ["valid"]);
    const later = new Date(Date.now() + 2 * DAY_MS);
    assertEquals((await listClients(dir, later)).map((c) => c.status), ["expired"]);
  });
});

Deno.test("readRevokedSerials() fails closed on a corrupt registry", async () => {
  await withPki(async (dir) => {
    await Deno.writeTextFile(`${dir}/clients.json`, "{not json");
    await assertRejects(() => readRevokedSerials(dir), PkiError, /Cannot parse .*clients\.json/);
    await Deno.writeTextFile(`${dir}/clients.json`, '{"version":1,"clients":[{"name":1}]}');
    await assertRejects(() => readRevokedSerials(dir), PkiError, /entry 0 is malformed/);
  });
});

// --- authentication ----------------------------------------------------------------------

Deno.test("authChallenge() binds the label, both nonces and the server name", () => {
  const s = nonce();
  const c = nonce();
  const base = authChallenge(s, c, "vpn.example.org");
  assertEquals(new TextDecoder().decode(base.subarray(0, 12)), "vpn-auth-v1\0");
  assertEquals(authChallenge(s, c, "VPN.example.org"), base, "DNS names are case-insensitive");
  assert(String(authChallenge(s, c, "other.example.org")) !== String(base));
  assert(String(authChallenge(c, s, "vpn.example.org")) !== String(base));
  assertThrows(() => authChallenge(new Uint8Array(8), c, "x"), RangeError, /nonce of 8 bytes/);
});

Deno.test("verifyClient() accepts a good client", async () => {
  await withPki(async (dir) => {
    const alice = await issueClient(dir, "alice");
    const ok = await verifyClient(await proof(dir, alice));
    const notAfter = new x509.X509Certificate(alice.certPem).notAfter;
    assertEquals(ok, { name: "alice", serial: alice.serial, notAfter });
  });
});

Deno.test("verifyClient() rejects a certificate from another CA", async () => {
  await withPki(async (dir) => {
    await withPki(async (other) => {
      const stranger = await issueClient(other, "alice");
      await assertAuthFails(
        async () => verifyClient(await proof(dir, stranger)),
        "unknown-ca",
        /not signed by this server's CA/,
      );
    });
  });
});

Deno.test("verifyClient() rejects a revoked certificate", async () => {
  await withPki(async (dir) => {
    const alice = await issueClient(dir, "alice");
    await revokeClient(dir, "alice");
    await assertAuthFails(async () => verifyClient(await proof(dir, alice)), "revoked");
  });
});

Deno.test("verifyClient() rejects an expired certificate", async () => {
  await withPki(async (dir) => {
    const old = await issueClient(dir, "old", {
      notBefore: new Date(Date.now() - 3 * DAY_MS),
      notAfter: new Date(Date.now() - DAY_MS),
    });
    await assertAuthFails(async () => verifyClient(await proof(dir, old)), "expired", /expired at/);
    const fresh = await issueClient(dir, "fresh", { days: 1 });
    const later = new Date(Date.now() + 2 * DAY_MS);
    await assertAuthFails(async () => verifyClient(await proof(dir, fresh, later)), "expired");
  });
});

Deno.test("verifyClient() rejects a certificate that is not yet valid", async () => {
  await withPki(async (dir) => {
    const alice = await issueClient(dir, "alice");
    const earlier = new Date(Date.now() - 2 * 60 * 60 * 1000);
    await assertAuthFails(
      async () => verifyClient(await proof(dir, alice, earlier)),
      "not-yet-valid",
    );
  });
});

Deno.test("verifyClient() rejects the server certificate used as a client", async () => {
  await withPki(async (dir) => {
    const { certPem, keyPem, caPem } = await loadServerIdentity(dir);
    await assertAuthFails(
      async () => verifyClient(await proof(dir, { certPem, keyPem })),
      "not-client",
      /not issued for client authentication/,
    );
    const caKey = await Deno.readTextFile(`${dir}/ca.key`);
    await assertAuthFails(
      async () => verifyClient(await proof(dir, { certPem: caPem, keyPem: caKey })),
      "not-client",
      /CA certificate/,
    );
  });
});

Deno.test("verifyClient() rejects a signature over a different challenge", async () => {
  await withPki(async (dir) => {
    const alice = await issueClient(dir, "alice");
    const bob = await issueClient(dir, "bob");
    const good = await proof(dir, alice);
    // Same nonces, but the client dialled another name: a relayed challenge.
    const relayed = authChallenge(nonce(), nonce(), "rogue.example.org");
    await assertAuthFails(
      async () => verifyClient({ ...good, signature: await signChallenge(alice.keyPem, relayed) }),
      "bad-signature",
      /signature does not match/,
    );
    await assertAuthFails(
      async () =>
        verifyClient({ ...good, signature: await signChallenge(bob.keyPem, good.challenge) }),
      "bad-signature",
    );
    await assertAuthFails(
      () => verifyClient({ ...good, signature: new Uint8Array(7) }),
      "bad-signature",
    );
  });
});

Deno.test("verifyClient() rejects an unparsable certificate", async () => {
  await withPki(async (dir) => {
    const alice = await issueClient(dir, "alice");
    const good = await proof(dir, alice);
    await assertAuthFails(() => verifyClient({ ...good, certPem: "garbage" }), "bad-certificate");
  });
});

// --- OpenVPN clients: the certificate check without the proof -----------------------------

/** What verifyClientCertificate() gets for `certPem` from `dir`'s registry. */
async function certificateOnly(dir: string, certPem: string, now?: Date) {
  return {
    certPem,
    caPem: (await loadServerIdentity(dir)).caPem,
    ...(await readRegistrySerials(dir)),
    ...(now ? { now } : {}),
  };
}

/**
 * Expects verifyClientCertificate() to refuse `certPem` with `reason`, and verifyClient() to
 * refuse it with the same reason and message when the proof is good: the same checks.
 */
async function assertBothRefuse(
  dir: string,
  client: { certPem: string; keyPem: string },
  reason: AuthFailure,
  pattern: RegExp,
  now?: Date,
): Promise<void> {
  const params = await certificateOnly(dir, client.certPem, now);
  const error = await assertRejects(() => verifyClientCertificate(params), AuthError, pattern);
  assertEquals((error as AuthError).reason, reason);
  const native = await assertRejects(
    async () => verifyClient(await proof(dir, client, now)),
    AuthError,
  );
  assertEquals([(native as AuthError).reason, native.message], [reason, error.message]);
}

Deno.test("verifyClientCertificate() accepts a good client, also from DER through derToPem()", async () => {
  await withPki(async (dir) => {
    const alice = await issueClient(dir, "alice", { format: "ovpn" });
    const expected = {
      name: "alice",
      serial: alice.serial,
      notAfter: new x509.X509Certificate(alice.certPem).notAfter,
    };
    assertEquals(
      await verifyClientCertificate(await certificateOnly(dir, alice.certPem)),
      expected,
    );
    const der = new Uint8Array(x509.PemConverter.decodeFirst(alice.certPem));
    const pem = derToPem(der);
    assertEquals(pem, alice.certPem, "the same PEM as the CA wrote");
    assertEquals(await verifyClientCertificate(await certificateOnly(dir, pem)), expected);
  });
});

Deno.test("verifyClientCertificate() refuses another CA's certificate", async () => {
  await withPki(async (dir) => {
    await withPki(async (other) => {
      const stranger = await issueClient(other, "alice");
      await assertBothRefuse(dir, stranger, "unknown-ca", /not signed by this server's CA/);
    });
  });
});

Deno.test("verifyClientCertificate() refuses an expired and a not yet valid certificate", async () => {
  await withPki(async (dir) => {
    const old = await issueClient(dir, "old", {
      notBefore: new Date(Date.now() - 3 * DAY_MS),
      notAfter: new Date(Date.now() - DAY_MS),
    });
    await assertBothRefuse(dir, old, "expired", /expired at/);
    const alice = await issueClient(dir, "alice");
    const earlier = new Date(Date.now() - 2 * 60 * 60 * 1000);
    await assertBothRefuse(dir, alice, "not-yet-valid", /not valid before/, earlier);
  });
});

Deno.test("verifyClientCertificate() refuses the server certificate and the CA's (no clientAuth)", async () => {
  await withPki(async (dir) => {
    const { certPem, keyPem, caPem } = await loadServerIdentity(dir);
    await assertBothRefuse(
      dir,
      { certPem, keyPem },
      "not-client",
      /not issued for client authentication/,
    );
    const caKey = await Deno.readTextFile(`${dir}/ca.key`);
    await assertBothRefuse(dir, { certPem: caPem, keyPem: caKey }, "not-client", /CA certificate/);
  });
});

Deno.test("verifyClientCertificate() refuses a revoked certificate", async () => {
  await withPki(async (dir) => {
    const alice = await issueClient(dir, "alice", { format: "ovpn" });
    await revokeClient(dir, "alice");
    await assertBothRefuse(dir, alice, "revoked", /has been revoked/);
  });
});

Deno.test("verifyClientCertificate() refuses a certificate missing from the registry", async () => {
  await withPki(async (dir) => {
    const alice = await issueClient(dir, "alice");
    await Deno.writeTextFile(`${dir}/clients.json`, '{"version":1,"clients":[]}\n');
    await assertBothRefuse(dir, alice, "revoked", /not in the client registry/);
  });
});

Deno.test("verifyClientCertificate() refuses an unparsable certificate", async () => {
  await withPki(async (dir) => {
    const params = await certificateOnly(dir, "garbage");
    const error = await assertRejects(() => verifyClientCertificate(params), AuthError);
    assertEquals((error as AuthError).reason, "bad-certificate");
  });
});

// --- registry format ----------------------------------------------------------------------

Deno.test("issueClient() records the profile format and listClients() reads an old entry as vpn", async () => {
  await withPki(async (dir) => {
    await issueClient(dir, "alice", { format: "ovpn" });
    await issueClient(dir, "bob");
    const registry = JSON.parse(await Deno.readTextFile(`${dir}/clients.json`));
    assertEquals(registry.clients.map((c: { format?: string }) => c.format), ["ovpn", "vpn"]);
    delete registry.clients[1].format; // an entry from before OpenVPN support
    await Deno.writeTextFile(`${dir}/clients.json`, JSON.stringify(registry));
    assertEquals((await listClients(dir)).map((c) => `${c.name}:${c.format}`), [
      "alice:ovpn",
      "bob:vpn",
    ]);
    registry.clients[1].format = "wireguard";
    await Deno.writeTextFile(`${dir}/clients.json`, JSON.stringify(registry));
    await assertRejects(() => listClients(dir), PkiError, /entry 1 is malformed/);
  });
});

// --- tls-crypt key ------------------------------------------------------------------------

Deno.test("initPki() writes tls-crypt.key 0600 as an OpenVPN static key, a new one each time", async () => {
  await withPki(async (dir) => {
    const text = await Deno.readTextFile(`${dir}/tls-crypt.key`);
    assertMatch(text, /^-----BEGIN OpenVPN Static key V1-----$/m);
    const key = await loadTlsCryptKey(dir);
    assertEquals(key, parseStaticKey(text));
    assertEquals(key.length, 256);
    assertEquals(mode(`${dir}/tls-crypt.key`), 0o600);
    await initPki(dir, { hosts: HOSTS, force: true });
    assert(String(await loadTlsCryptKey(dir)) !== String(key), "a new PKI, a new key");
    assertEquals(mode(`${dir}/tls-crypt.key`), 0o600);
  });
});

Deno.test("ensureTlsCryptKey() creates the key of an older PKI once and keeps it", async () => {
  await withPki(async (dir) => {
    assertEquals(await ensureTlsCryptKey(dir), false, "init made one");
    const made = await loadTlsCryptKey(dir);
    assertEquals(await ensureTlsCryptKey(dir), false);
    assertEquals(await loadTlsCryptKey(dir), made, "kept");
    await Deno.remove(`${dir}/tls-crypt.key`);
    // Two commands at once (serve and client add): one creates it, both then read the same.
    const created = await Promise.all([ensureTlsCryptKey(dir), ensureTlsCryptKey(dir)]);
    assertEquals(created.sort(), [false, true]);
    assertEquals(mode(`${dir}/tls-crypt.key`), 0o600);
    const key = await loadTlsCryptKey(dir);
    assert(String(key) !== String(made), "a fresh key");
    assertEquals(await ensureTlsCryptKey(dir), false);
    assertEquals(await loadTlsCryptKey(dir), key);
  });
});

Deno.test("ensureTlsCryptKey() refuses a directory without a PKI", async () => {
  const root = await Deno.makeTempDir({ prefix: "vpn-pki-test-" });
  try {
    await assertRejects(() => ensureTlsCryptKey(root), PkiError, /missing; run `vpn init/);
    assertEquals([...Deno.readDirSync(root)], [], "nothing written");
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("loadTlsCryptKey() says what to do about a missing or broken key", async () => {
  await withPki(async (dir) => {
    await Deno.writeTextFile(`${dir}/tls-crypt.key`, "not a key\n");
    await assertRejects(
      () => loadTlsCryptKey(dir),
      PkiError,
      /Cannot use .*tls-crypt\.key: tls-crypt key: no "-----BEGIN OpenVPN Static key V1-----" line; restore it from a backup, or remove it and run "vpn serve --dir .*" for a new one/,
    );
    await Deno.remove(`${dir}/tls-crypt.key`);
    await assertRejects(
      () => loadTlsCryptKey(dir),
      PkiError,
      /tls-crypt\.key is missing; "vpn serve --dir .*" creates one at start/,
    );
  });
});

Deno.test("loadServerIdentity() refuses a tls-crypt.key that others may read", async () => {
  await withPki(async (dir) => {
    await Deno.chmod(`${dir}/tls-crypt.key`, 0o644);
    await assertRejects(
      () => loadServerIdentity(dir),
      PkiError,
      /tls-crypt\.key is mode 0644: .*run: chmod 600/,
    );
  });
});

Deno.test("formatStaticKey() of the loaded key reads back as the file's key", async () => {
  await withPki(async (dir) => {
    const key = await loadTlsCryptKey(dir);
    assertEquals(parseStaticKey(formatStaticKey(key)), key);
  });
});

// --- the server certificate for remote-cert-tls server -------------------------------------

/**
 * Replaces `dir`'s server.crt with one signed by its CA, with the same key and names but only
 * `extensions` besides basic constraints and the names: a certificate from before they were set.
 */
async function serverCertWith(dir: string, extensions: x509.Extension[]): Promise<void> {
  const ca = new x509.X509Certificate(await Deno.readTextFile(`${dir}/ca.crt`));
  const caKey = await crypto.subtle.importKey(
    "pkcs8",
    x509.PemConverter.decodeFirst(await Deno.readTextFile(`${dir}/ca.key`)),
    { name: "ECDSA", namedCurve: "P-256" },
    false,
    ["sign"],
  );
  const current = new x509.X509Certificate(await Deno.readTextFile(`${dir}/server.crt`));
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: "4b",
    subject: current.subject,
    issuer: ca.subject,
    notBefore: current.notBefore,
    notAfter: current.notAfter,
    publicKey: current.publicKey,
    signingKey: caKey,
    signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      current.getExtension(x509.SubjectAlternativeNameExtension)!,
      ...extensions,
    ],
  });
  await Deno.writeTextFile(`${dir}/server.crt`, cert.toString("pem") + "\n");
}

Deno.test("initPki() gives the server certificate what remote-cert-tls server checks", async () => {
  await withPki(async (dir) => {
    const cert = new x509.X509Certificate(await Deno.readTextFile(`${dir}/server.crt`));
    const ku = cert.getExtension(x509.KeyUsagesExtension)!;
    assertEquals([ku.usages, ku.critical], [x509.KeyUsageFlags.digitalSignature, true]);
    assertEquals([...cert.getExtension(x509.ExtendedKeyUsageExtension)!.usages], [
      x509.ExtendedKeyUsage.serverAuth,
    ]);
    assertEquals(await upgradeServerCertificate(dir), false);
  });
});

Deno.test("upgradeServerCertificate() adds key usage and serverAuth to an older server.crt", async () => {
  const cases: [string, x509.Extension[]][] = [
    ["no key usage", [new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth])]],
    ["no extended key usage", [
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
    ]],
    ["key usage without digitalSignature", [
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyAgreement, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
    ]],
    ["neither", []],
  ];
  await withPki(async (dir) => {
    const before = new x509.X509Certificate(await Deno.readTextFile(`${dir}/server.crt`));
    for (const [what, extensions] of cases) {
      await serverCertWith(dir, extensions);
      assertEquals(await upgradeServerCertificate(dir), true, what);
      const cert = new x509.X509Certificate(await Deno.readTextFile(`${dir}/server.crt`));
      assertEquals(
        cert.getExtension(x509.KeyUsagesExtension)?.usages,
        x509.KeyUsageFlags.digitalSignature,
        what,
      );
      assertEquals([...cert.getExtension(x509.ExtendedKeyUsageExtension)?.usages ?? []], [
        x509.ExtendedKeyUsage.serverAuth,
      ], what);
      assertEquals(
        cert.getExtension(x509.SubjectAlternativeNameExtension)?.names.toJSON(),
        before.getExtension(x509.SubjectAlternativeNameExtension)?.names.toJSON(),
        `${what}: the same names, in the same order`,
      );
      assertEquals(
        new Uint8Array(cert.publicKey.rawData),
        new Uint8Array(before.publicKey.rawData),
      );
      assertEquals(await upgradeServerCertificate(dir), false, `${what}: once`);
    }
  });
});

Deno.test("upgradeServerCertificate() without ca.key names what the certificate lacks and the fix", async () => {
  await withPki(async (dir) => {
    await serverCertWith(dir, []);
    await Deno.remove(`${dir}/ca.key`);
    await assertRejects(
      () => upgradeServerCertificate(dir),
      PkiError,
      /server\.crt lacks the key usage digitalSignature, which OpenVPN clients check and the extended key usage serverAuth, which OpenVPN clients check, and .*ca\.key is missing to add them: put ca\.key back into .* for one run of vpn serve/,
    );
  });
});

// --- real TLS ----------------------------------------------------------------------------

/**
 * Serves one TLS connection with `dir`'s server identity, dials it with `hostname` and
 * `caPem`, and exchanges a message each way. Rejects if the client's handshake fails, and
 * after 5 s of waiting on either side.
 */
async function tlsRoundTrip(dir: string, hostname: string, caPem: string): Promise<void> {
  const { certPem, keyPem } = await loadServerIdentity(dir);
  const listener = Deno.listenTls({ hostname: "127.0.0.1", port: 0, cert: certPem, key: keyPem });
  const bounded = <T>(promise: Promise<T>, what: string) => within(promise, 5000, what);
  const served = (async () => {
    const conn = await listener.accept();
    try {
      const buf = new Uint8Array(5);
      let got = 0;
      while (got < 5) {
        const n = await bounded(conn.read(buf.subarray(got)), "the server reads the message");
        if (n === null) throw new Error("client closed early");
        got += n;
      }
      assertEquals(new TextDecoder().decode(buf), "hello");
      await bounded(conn.write(new TextEncoder().encode("world")), "the server answers");
    } finally {
      conn.close();
    }
  })();
  try {
    const conn = await bounded(
      Deno.connectTls({ hostname, port: listener.addr.port, caCerts: [caPem] }),
      "connect",
    );
    try {
      await bounded(conn.handshake(), "the client's TLS handshake");
      await bounded(conn.write(new TextEncoder().encode("hello")), "the client writes");
      const buf = new Uint8Array(5);
      let got = 0;
      while (got < 5) {
        const n = await bounded(conn.read(buf.subarray(got)), "the client reads the answer");
        if (n === null) break;
        got += n;
      }
      assertEquals(new TextDecoder().decode(buf.subarray(0, got)), "world");
    } finally {
      conn.close();
    }
    await bounded(served, "the server side ends");
  } finally {
    listener.close();
    // Only reached with `served` unawaited when the client side threw already, which is the
    // failure reported; a failed handshake fails the server side too, as expected. On success
    // `served` was awaited above, so its errors are not swallowed here.
    await served.catch(() => {});
  }
}

Deno.test("TLS: rustls accepts the server certificate for an IP address SAN", async () => {
  await withPki(async (dir) => {
    await tlsRoundTrip(dir, "127.0.0.1", (await loadServerIdentity(dir)).caPem);
  });
});

Deno.test("TLS: rustls accepts the server certificate for a DNS name SAN", async () => {
  await withPki(async (dir) => {
    await tlsRoundTrip(dir, "localhost", (await loadServerIdentity(dir)).caPem);
  });
});

Deno.test("TLS: a client trusting another CA refuses the server", async () => {
  await withPki(async (dir) => {
    await withPki(async (other) => {
      const otherCa = (await loadServerIdentity(other)).caPem;
      await assertRejects(() => tlsRoundTrip(dir, "127.0.0.1", otherCa), Error, /certificate/i);
    });
  });
});

Deno.test("TLS: a client dialling a name not in the certificate refuses the server", async () => {
  await withPki(async (dir) => {
    // The server is reached at 127.0.0.1, but its certificate names only vpn.example.org.
    const { caPem } = await loadServerIdentity(dir);
    await assertRejects(
      () => tlsRoundTrip(dir, "127.0.0.1", caPem),
      Error,
      /certificate/i,
    );
  }, ["vpn.example.org"]);
});
