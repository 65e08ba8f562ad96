/**
 * Revocation and address promises under races, without root: an in-process Server with a
 * MemoryTun on 127.0.0.1 (tests/_lab.ts), real Clients and raw clients (tests/_raw_client.ts)
 * over real TLS. A revocation that lands while an AUTH is being verified, a registry that
 * failed to read once, and a registry rewritten within one tick of the file system's clock
 * must all count; a client gets another certificate's former address only by lowest-free
 * order, never by asking for it.
 *
 * Every wait is bounded; the server polls the registry every second, so a drop is awaited for
 * up to 5 s (README: within 5 s).
 */

import { configureSync, type LogRecord } from "@logtape/logtape";
import { assert, assertEquals, assertMatch } from "./_assert.ts";
import { HOST, type Lab, SHORT_MS, waitFor, within, withLab } from "./_lab.ts";
import { RawClient, signedAuth } from "./_raw_client.ts";
import { ClientError } from "../mod/native/client.ts";
import { RefusedError } from "../mod/native/handshake.ts";
import { decodePush } from "../mod/native/messages.ts";
import { issueClient, REGISTRY_FILE, revokeClient } from "../mod/pki.ts";
import { FrameType } from "../mod/native/wire.ts";

/** The product's log lines from info up, to wait for what the server said. */
const lines: string[] = [];
configureSync({
  reset: true,
  sinks: {
    memory: (record: LogRecord) => lines.push(record.message.map(String).join("")),
  },
  loggers: [
    { category: ["vpn"], lowestLevel: "info", sinks: ["memory"] },
    { category: ["logtape", "meta"], lowestLevel: "warning", sinks: [] },
  ],
});

/** Bound on a revocation taking effect: one poll a second, with a wide margin. */
const DROP_MS = 5000;

/**
 * Holds every `crypto.subtle.verify` of this process (the server's checks of a certificate
 * and of an AUTH signature) until `open()`, so that a verification is in flight as long as the
 * test wants. Disposing opens it and puts the real method back.
 */
function holdVerifications() {
  const subtle = crypto.subtle;
  const verify = subtle.verify.bind(subtle);
  let open!: () => void;
  const opened = new Promise<void>((resolve) => open = resolve);
  let held = 0;
  Object.defineProperty(subtle, "verify", {
    configurable: true,
    value: async (...args: Parameters<SubtleCrypto["verify"]>) => {
      held++;
      await opened;
      return verify(...args);
    },
  });
  return {
    get held() {
      return held;
    },
    open,
    [Symbol.dispose]() {
      open();
      delete (subtle as { verify?: unknown }).verify;
    },
  };
}

/** The registry rewritten with `name` revoked, in exactly `bytes` bytes (padded with spaces). */
async function revokedRegistry(lab: Lab, name: string, bytes: number): Promise<string> {
  const registry = JSON.parse(await Deno.readTextFile(`${lab.dir}/${REGISTRY_FILE}`));
  const entry = registry.clients.find((c: { name: string }) => c.name === name);
  entry.revokedAt = new Date().toISOString();
  const text = JSON.stringify(registry);
  assert(text.length <= bytes, "the compact registry fits the size of the indented one");
  return text.padEnd(bytes);
}

/** Asserts that `outcome` (a Client's run()) ended with a refusal for revocation. */
async function assertRevoked(outcome: Promise<unknown>): Promise<void> {
  const error = await within(outcome, SHORT_MS, "run() rejects");
  assert(error instanceof ClientError, `expected ClientError, got ${String(error)}`);
  assertMatch(error.message, /revoked/);
}

Deno.test("Server refuses an AUTH whose verification began before a revocation was read", async () => {
  await withLab(async (lab) => {
    const carol = await lab.connected("carol");
    const alice = await lab.issue("alice");
    const raw = await RawClient.connect(lab.port, alice.ca);
    try {
      using verifications = holdVerifications();
      const answer = raw.authenticate(alice).then(() => "PUSH", (error: unknown) => error);
      await waitFor(() => verifications.held > 0, SHORT_MS, "the server verifies alice's AUTH");
      await revokeClient(lab.dir, "alice");
      await revokeClient(lab.dir, "carol");
      // Carol's drop shows that the server has read the registry with both revocations while
      // alice's AUTH was still being checked against the list before them.
      await waitFor(() => lab.server.sessionCount === 0, DROP_MS, "carol's session is dropped");
      verifications.open();
      const error = await within(answer, SHORT_MS, "the server answers alice's AUTH");
      assert(error instanceof RefusedError, `expected a refusal, got ${String(error)}`);
      assertEquals(error.reason, "revoked");
      assertEquals(lab.server.sessionCount, 0);
      await assertRevoked(carol.outcome);
    } finally {
      await raw.close();
    }
  });
});

Deno.test("Server reads a registry that failed to read again at the next poll, though its size and mtime stay", async () => {
  await withLab(async (lab) => {
    const alice = await lab.connected("alice");
    const path = `${lab.dir}/${REGISTRY_FILE}`;
    const { size } = await Deno.stat(path);
    const revoked = await revokedRegistry(lab, "alice", size);
    // An hour old, so that only the failure can make the server read it again.
    const old = new Date(Date.now() - 3_600_000);
    await Deno.writeTextFile(path, "x".repeat(size));
    await Deno.utime(path, old, old);
    await waitFor(
      () => lines.some((line) => line.startsWith("cannot read the client registry")),
      DROP_MS,
      "the server fails to read the garbage registry",
    );
    // Fixed in place: the same inode, size and mtime as the garbage it replaces.
    await Deno.writeTextFile(path, revoked);
    await Deno.utime(path, old, old);
    await waitFor(() => lab.server.sessionCount === 0, DROP_MS, "alice's session is dropped");
    await assertRevoked(alice.outcome);
    assert(lines.includes("read the client registry again"), lines.join("\n"));
  });
});

Deno.test("Server notices a registry rewritten within one tick of the file system's clock", async () => {
  await withLab(async (lab) => {
    const alice = await lab.issue("alice");
    const carol = await lab.issue("carol");
    const path = `${lab.dir}/${REGISTRY_FILE}`;
    // Both writes carry this one mtime, as two writes within one tick of a coarse clock do.
    const now = new Date();
    await Deno.utime(path, now, now);
    const aliceClient = await lab.connected("alice", alice);
    // Carol's handshake re-reads the registry after its last write, to be sure it was read.
    await lab.connected("carol", carol);
    const { size } = await Deno.stat(path);
    await Deno.writeTextFile(path, await revokedRegistry(lab, "alice", size));
    await Deno.utime(path, now, now);
    await waitFor(() => lab.server.sessionCount === 1, DROP_MS, "alice's session is dropped");
    await assertRevoked(aliceClient.outcome);
  });
});

/** Authenticates `raw` with `keys`, asking for `address`; resolves the address given. */
async function askFor(raw: RawClient, keys: { cert: string; key: string }, address: string) {
  const nonce = await raw.hello();
  await raw.sendAuth({ ...await signedAuth(keys, nonce, HOST), address });
  const push = await raw.until(FrameType.PUSH, SHORT_MS, "PUSH");
  return decodePush(push.payload).address;
}

Deno.test("Server gives an address asked for only back to the certificate that held it last", async () => {
  await withLab(async (lab) => {
    const alice = await issueClient(lab.dir, "alice");
    const mallory = await issueClient(lab.dir, "mallory");
    const aliceKeys = { cert: alice.certPem, key: alice.keyPem };
    const malloryKeys = { cert: mallory.certPem, key: mallory.keyPem };
    const raws: RawClient[] = [];
    const connect = async () => {
      const raw = await RawClient.connect(lab.port, alice.caPem);
      raws.push(raw);
      return raw;
    };
    try {
      // Alice asks back the .9 she had before a server restart: nobody has held it since.
      const first = await connect();
      assertEquals(await askFor(first, aliceKeys, "10.8.0.9"), "10.8.0.9");
      // Her connection is lost; while she reconnects, mallory asks for her address.
      await first.close();
      await waitFor(() => lab.server.sessionCount === 0, SHORT_MS, "alice's session ends");
      assertEquals(await askFor(await connect(), malloryKeys, "10.8.0.9"), "10.8.0.2");
      assertEquals(await askFor(await connect(), aliceKeys, "10.8.0.9"), "10.8.0.9");
      assertEquals(lab.server.sessionCount, 2);
    } finally {
      for (const raw of raws) await raw.close();
    }
  });
});
