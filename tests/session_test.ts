/**
 * Protocol tests of Server and Client without root: real TLS over 127.0.0.1, a PKI in a temp
 * dir, and a MemoryTun on each side, so packets are injected and taken by the test
 * (tests/_lab.ts).
 *
 * Every wait is bounded (`waitFor`, `within`); no test asserts how long something took.
 */

import { assert, assertEquals, assertMatch } from "./_assert.ts";
import {
  assertPasses,
  delay,
  HOST,
  HOSTS,
  ipv4Packet,
  SHORT_MS,
  takeFrom,
  waitFor,
  within,
  withLab,
} from "./_lab.ts";
import { ClientError } from "../mod/native/client.ts";
import { setupLogging } from "../mod/log.ts";
import { ALPN, decodeError } from "../mod/native/messages.ts";
import { initPki, issueClient, revokeClient } from "../mod/pki.ts";
import { FrameReader, FrameType } from "../mod/native/wire.ts";

setupLogging("error");

// --- helpers -----------------------------------------------------------------------------

/** Reads the next frame from a raw TLS connection: null when it ended (EOF or reset). */
async function readFrame(
  conn: Deno.Conn,
  reader: FrameReader,
): Promise<{ type: number; payload: Uint8Array } | null> {
  while (!reader.next()) {
    let count: number | null;
    try {
      count = await within(conn.read(reader.space()), SHORT_MS, "a frame from the server");
    } catch (error) {
      if (error instanceof Error && error.message.startsWith("timed out")) throw error;
      return null; // reset by the server
    }
    if (count === null) return null;
    reader.commit(count);
  }
  return { type: reader.type, payload: reader.payload().slice() };
}

/** Reads until the server closes `conn`; bounded. */
async function readUntilClosed(conn: Deno.Conn): Promise<void> {
  const buf = new Uint8Array(4096);
  const deadline = performance.now() + SHORT_MS;
  while (performance.now() < deadline) {
    try {
      const count = await within(conn.read(buf), SHORT_MS, "the server closes the connection");
      if (count === null) return;
    } catch (error) {
      if (error instanceof Error && error.message.startsWith("timed out")) throw error;
      return; // reset by the server
    }
  }
  throw new Error("the server kept the connection open");
}

// --- data path ---------------------------------------------------------------------------

Deno.test("Client and Server: a packet injected into the client TUN comes out of the server TUN", async () => {
  await withLab(async (lab) => {
    const alice = await lab.connected("alice");
    assertEquals(alice.client.address, "10.8.0.2");
    await assertPasses(alice.tun, lab.serverTun, ipv4Packet("10.8.0.2", "10.8.0.1", "to server"));
  });
});

Deno.test("Client and Server: a packet the server TUN reads for 10.8.0.2 reaches that client's TUN", async () => {
  await withLab(async (lab) => {
    const alice = await lab.connected("alice");
    assertEquals(alice.client.address, "10.8.0.2");
    await assertPasses(lab.serverTun, alice.tun, ipv4Packet("10.8.0.1", "10.8.0.2", "to alice"));
  });
});

Deno.test("Server drops and counts a packet whose source is not the client's address", async () => {
  await withLab(async (lab) => {
    const alice = await lab.connected("alice");
    assertEquals(alice.client.address, "10.8.0.2");
    alice.tun.inject(ipv4Packet("10.8.0.99", "10.8.0.1", "spoofed"));
    // Frames keep their order on the TLS stream: once the good packet is out, the spoofed one
    // before it has been handled.
    const good = ipv4Packet("10.8.0.2", "10.8.0.1", "genuine");
    alice.tun.inject(good);
    assertEquals(await takeFrom(lab.serverTun), [good]);
    assertEquals(lab.server.stats.spoofed, 1);
    assertEquals(lab.serverTun.stats.writtenPackets, 1);
  });
});

Deno.test("Server without subnet6 counts a client's IPv6 packet (a router solicitation) as not IP, not as spoofed", async () => {
  await withLab(async (lab) => {
    const alice = await lab.connected("alice");
    // An IPv6 header (version 6, no payload, hop limit 255) from fe80::1 to ff02::2.
    const solicitation = new Uint8Array(40);
    solicitation.set([0x60, 0, 0, 0, 0, 0, 58, 255]);
    solicitation.set([0xfe, 0x80], 8);
    solicitation[23] = 1;
    solicitation.set([0xff, 0x02], 24);
    solicitation[39] = 2;
    alice.tun.inject(solicitation);
    const good = ipv4Packet("10.8.0.2", "10.8.0.1", "genuine");
    alice.tun.inject(good);
    assertEquals(await takeFrom(lab.serverTun), [good]);
    assertEquals(lab.server.stats.notIp, 1);
    assertEquals(lab.server.stats.spoofed, 0);
  });
});

// --- addresses ---------------------------------------------------------------------------

Deno.test("Server gives two clients .2 and .3 and a reconnecting client its old address", async () => {
  await withLab(async (lab) => {
    const alice = await lab.connected("alice");
    const bob = await lab.connected("bob");
    assertEquals([alice.client.address, bob.client.address], ["10.8.0.2", "10.8.0.3"]);

    // Alice leaves for good, so .2 is the lowest free address of a new server.
    assertEquals(await lab.stopClient(alice), undefined);
    const port = lab.port;
    await lab.server.stop();
    await lab.startServer(port);

    // Bob's Client reconnects by itself (after its ~1 s backoff) and asks for .3 back.
    await waitFor(
      () => lab.server.sessionCount === 1 && bob.client.connected,
      10_000,
      "bob reconnects",
    );
    assertEquals(bob.client.address, "10.8.0.3");
    await assertPasses(bob.tun, lab.serverTun, ipv4Packet("10.8.0.3", "10.8.0.1", "back"));

    // A client with no old address gets the lowest free one.
    const carol = await lab.connected("carol");
    assertEquals(carol.client.address, "10.8.0.2");
  });
});

Deno.test("Server refuses the second client on a /30 subnet with 'address pool exhausted'", async () => {
  await withLab(async (lab) => {
    const alice = await lab.connected("alice");
    assertEquals(alice.client.address, "10.9.0.2");
    const bob = await lab.connect("bob");
    // pool-exhausted is worth retrying: bob keeps trying (backoff 1 s, then 2 s).
    await waitFor(() => lab.server.stats.refused >= 2, 10_000, "bob is refused twice");
    assertEquals(bob.client.address, undefined);
    assertEquals(lab.server.sessionCount, 1);
    assertEquals(await lab.stopClient(bob), undefined);
    await assertPasses(alice.tun, lab.serverTun, ipv4Packet("10.9.0.2", "10.9.0.1", "still"));
  }, (config) => config.subnet = "10.9.0.0/30");
});

// --- authentication ----------------------------------------------------------------------

Deno.test("Server refuses a revoked client and the Client run() rejects with ClientError", async () => {
  await withLab(async (lab) => {
    const credentials = await lab.issue("mallory");
    await revokeClient(lab.dir, "mallory");
    const mallory = await lab.connect("mallory", credentials);
    const error = await within(mallory.outcome, SHORT_MS, "run() rejects");
    assert(error instanceof ClientError, `expected ClientError, got ${String(error)}`);
    assertMatch(error.message, /revoked/);
    assertEquals(mallory.client.address, undefined);
    assertEquals(lab.server.sessionCount, 0);
    assertEquals(lab.server.stats.refused, 1);
  });
});

Deno.test("Server ends a session when its certificate expires (within 3 s), and the client stops", async () => {
  await withLab(async (lab) => {
    const notAfter = new Date(Date.now() + 3000);
    const issued = await issueClient(lab.dir, "brief", { notAfter });
    const brief = await lab.connected("brief", {
      cert: issued.certPem,
      key: issued.keyPem,
      ca: issued.caPem,
    });
    const error = await within(brief.outcome, 10_000, "run() rejects once the certificate expires");
    const ended = Date.now();
    assert(error instanceof ClientError, `expected ClientError, got ${String(error)}`);
    assertMatch(error.message, /certificate expired at .*has expired: ask the server's operator/);
    // A certificate's times have whole seconds: it expires at the start of notAfter's second.
    const expired = Math.floor(notAfter.getTime() / 1000) * 1000;
    assert(ended >= expired, "not before the certificate expired");
    assert(ended - expired < 3000, `${ended - expired} ms after it expired`);
    assertEquals(lab.server.sessionCount, 0);
  });
});

Deno.test("Server started after a revocation refuses that client with ClientError", async () => {
  await withLab(async (lab) => {
    const credentials = await lab.issue("mallory");
    await revokeClient(lab.dir, "mallory");
    await lab.server.stop();
    await lab.startServer();
    const mallory = await lab.connect("mallory", credentials);
    const error = await within(mallory.outcome, SHORT_MS, "run() rejects");
    assert(error instanceof ClientError, `expected ClientError, got ${String(error)}`);
    assertMatch(error.message, /revoked/);
    assertEquals(mallory.client.address, undefined);
    assertEquals(lab.server.stats.refused, 1);
  });
});

Deno.test("Server drops a live session within 5 s of revocation", async () => {
  await withLab(async (lab) => {
    const alice = await lab.connected("alice");
    assertEquals(lab.server.sessionCount, 1);
    await revokeClient(lab.dir, "alice");
    await waitFor(() => lab.server.sessionCount === 0, 6000, "the session is dropped");
    const error = await within(alice.outcome, SHORT_MS, "run() rejects");
    assert(error instanceof ClientError, `expected ClientError, got ${String(error)}`);
    assertMatch(error.message, /revoked/);
  });
});

Deno.test("Server refuses a client from another CA", async () => {
  await withLab(async (lab) => {
    const otherDir = `${lab.root}/other-pki`;
    await initPki(otherDir, { hosts: HOSTS });
    const stranger = await issueClient(otherDir, "stranger");
    const ca = await Deno.readTextFile(`${lab.dir}/ca.crt`);
    // Trusts this server, but holds a certificate of the other CA.
    const running = await lab.connect("stranger", {
      cert: stranger.certPem,
      key: stranger.keyPem,
      ca,
    });
    const error = await within(running.outcome, SHORT_MS, "run() rejects");
    assert(error instanceof ClientError, `expected ClientError, got ${String(error)}`);
    assertMatch(error.message, /CA/);
    assertEquals(lab.server.sessionCount, 0);
    assertEquals(lab.server.stats.refused, 1);
  });
});

// --- robustness --------------------------------------------------------------------------

Deno.test("Server survives garbage: random bytes, a TLS connection with an oversized frame, and an idle connection", async () => {
  await withLab(async (lab) => {
    const alice = await lab.connected("alice");
    const port = lab.port;

    const garbage = await Deno.connect({ hostname: HOST, port });
    const idle = await Deno.connect({ hostname: HOST, port });
    const tls = await Deno.connectTls({
      hostname: HOST,
      port,
      caCerts: [await Deno.readTextFile(`${lab.dir}/ca.crt`)],
      alpnProtocols: [ALPN],
    });
    try {
      const random = crypto.getRandomValues(new Uint8Array(4096));
      await garbage.write(random);
      await readUntilClosed(garbage);

      const reader = new FrameReader();
      assertEquals((await readFrame(tls, reader))?.type, FrameType.HELLO);
      await tls.write(new Uint8Array([0x00, 0xff, 0xff, 0xff]));
      const answer = await readFrame(tls, reader);
      if (answer !== null) {
        assertEquals(answer.type, FrameType.ERROR);
        assertEquals(decodeError(answer.payload).reason, "protocol");
        assertEquals(await readFrame(tls, reader), null);
      }

      await assertPasses(alice.tun, lab.serverTun, ipv4Packet("10.8.0.2", "10.8.0.1", "up"));
      await assertPasses(lab.serverTun, alice.tun, ipv4Packet("10.8.0.1", "10.8.0.2", "down"));
      assertEquals(lab.server.sessionCount, 1);
    } finally {
      garbage.close();
      tls.close();
      idle.close();
    }
    // The idle connection's handshake ends (and its timer is cleared) before the server stops.
    await waitFor(() => lab.server.stats.refused >= 3, SHORT_MS, "three connections refused");
  });
});

// --- client to client --------------------------------------------------------------------

Deno.test("Server with client_to_client on forwards a packet from one client to another", async () => {
  await withLab(async (lab) => {
    const alice = await lab.connected("alice");
    const bob = await lab.connected("bob");
    assertEquals([alice.client.address, bob.client.address], ["10.8.0.2", "10.8.0.3"]);
    await assertPasses(alice.tun, bob.tun, ipv4Packet("10.8.0.2", "10.8.0.3", "hi bob"));
    // The server TUN got nothing: the next thing out of it is a packet for the server.
    const forServer = ipv4Packet("10.8.0.2", "10.8.0.1", "hi server");
    await assertPasses(alice.tun, lab.serverTun, forServer);
    assertEquals(lab.serverTun.stats.writtenPackets, 1);
  }, (config) => config.client_to_client = true);
});

Deno.test("Server with client_to_client off writes a packet between clients into its TUN", async () => {
  await withLab(async (lab) => {
    const alice = await lab.connected("alice");
    const bob = await lab.connected("bob");
    assertEquals([alice.client.address, bob.client.address], ["10.8.0.2", "10.8.0.3"]);
    await assertPasses(alice.tun, lab.serverTun, ipv4Packet("10.8.0.2", "10.8.0.3", "hi bob"));
    // Bob's TUN got nothing: the next thing out of it is what the server TUN sends him.
    await assertPasses(lab.serverTun, bob.tun, ipv4Packet("10.8.0.1", "10.8.0.3", "from host"));
    assertEquals(bob.tun.stats.writtenPackets, 1);
  });
});

// --- regressions found by these tests ----------------------------------------------------

Deno.test("Client reconnects while its TUN keeps sending packets", async () => {
  await withLab(async (lab) => {
    const alice = await lab.connected("alice");
    let pumping = true;
    const pump = (async () => {
      for (let i = 0; pumping; i++) {
        alice.tun.inject(ipv4Packet("10.8.0.2", "10.8.0.1", `packet ${i}`));
        await delay(2);
      }
    })();
    try {
      const port = lab.port;
      await lab.server.stop();
      await lab.startServer(port);
      await waitFor(() => lab.server.sessionCount === 1, 10_000, "alice reconnects");
      assertEquals(lab.server.stats.refused, 0);
      assertEquals(alice.client.address, "10.8.0.2");
    } finally {
      pumping = false;
      await pump;
    }
  });
});

Deno.test("Server.stop() closes connections that are still in their handshake", async () => {
  await withLab(async (lab) => {
    const tls = await Deno.connectTls({
      hostname: HOST,
      port: lab.port,
      caCerts: [await Deno.readTextFile(`${lab.dir}/ca.crt`)],
      alpnProtocols: [ALPN],
    });
    try {
      const reader = new FrameReader();
      assertEquals((await readFrame(tls, reader))?.type, FrameType.HELLO);
      // The server now waits for AUTH. Stopping it must end this connection too.
      const stopped = lab.server.stop();
      const answer = await within(
        readFrame(tls, reader),
        2000,
        "the server closes a connection in its handshake",
      );
      if (answer !== null) assertEquals(await readFrame(tls, reader), null);
      await stopped;
    } finally {
      tls.close();
      // Let the server see the close, so that its pre-auth timer is cleared either way.
      await waitFor(() => lab.server.stats.refused >= 1, SHORT_MS, "the handshake ends");
    }
  });
});
