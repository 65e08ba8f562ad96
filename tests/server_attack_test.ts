/**
 * The server's protocol promises (README "Security", PROTOCOL.md), tested from the attacker's
 * side without root: an in-process Server with a MemoryTun on 127.0.0.1 (tests/_lab.ts), and a
 * raw client (tests/_raw_client.ts) that speaks frames and datagrams itself over real TLS and
 * real UDP sockets, so it can send what a real Client never would.
 *
 * Numbers the promises name (10 s, 64, 65,545, 2^32, ...) are written out here, not imported,
 * so that a changed constant fails a test. Every wait is bounded.
 */

import { assert, assertEquals, assertMatch } from "./_assert.ts";
import {
  assertPasses,
  delay,
  HOST,
  ipv4Packet,
  type Lab,
  SHORT_MS,
  waitFor,
  within,
  withLab,
} from "./_lab.ts";
import { Inbox, RawClient, type RawUdp, signedAuth } from "./_raw_client.ts";
import { tcpNoDelay } from "../ffi/socket.ts";
import { UdpSocket } from "../ffi/udp.ts";
import { ClientError } from "../mod/native/client.ts";
import type { ServerConfig } from "../mod/config.ts";
import { DatagramType } from "../mod/native/datagram.ts";
import { setupLogging } from "../mod/log.ts";
import type { MemoryTun } from "../mod/core/memory_tun.ts";
import { decodeError, decodeRekey } from "../mod/native/messages.ts";
import { revokeClient } from "../mod/pki.ts";
import type { NativeSession } from "../mod/native/session.ts";
import { FrameType } from "../mod/native/wire.ts";

setupLogging("error");

// --- helpers -----------------------------------------------------------------------------

interface Closable {
  close(): unknown;
}

/** Registers something for {@linkcode attack} to close after the test; returns it. */
type Keep = <T extends Closable>(thing: T) => T;

/**
 * Runs `fn` in a fresh Lab; what `fn` passes to `keep` is closed after it, last first, before
 * the Lab closes, so that no socket or read loop outlives the test.
 */
async function attack(
  fn: (lab: Lab, keep: Keep) => Promise<void>,
  configure?: (config: ServerConfig) => void,
): Promise<void> {
  await withLab(async (lab) => {
    const things: Closable[] = [];
    try {
      await fn(lab, (thing) => {
        things.push(thing);
        return thing;
      });
    } finally {
      for (const thing of things.reverse()) await thing.close();
    }
  }, configure);
}

function caOf(lab: Lab): Promise<string> {
  return Deno.readTextFile(`${lab.dir}/ca.crt`);
}

/** A raw client of `lab`'s server, authenticated with a certificate issued as `name`. */
async function rawSession(lab: Lab, keep: Keep, name: string): Promise<RawClient> {
  return keep(await RawClient.authenticated(lab.port, await caOf(lab), await lab.issue(name)));
}

/** A raw TCP connection to the server that never starts TLS; closed after the test. */
async function idleTcp(lab: Lab, keep: Keep): Promise<Deno.TcpConn> {
  const conn = await within(Deno.connect({ hostname: HOST, port: lab.port }), SHORT_MS, "connect");
  keep({ close: () => closeQuietly(conn) });
  return conn;
}

/** Closes `conn` unless the test already did. */
function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Closed already.
  }
}

/** Reads `conn` until the server ends it (EOF or reset); resolves when that was seen. */
async function endOf(conn: Deno.Conn): Promise<number> {
  const buf = new Uint8Array(4096);
  try {
    while (await conn.read(buf) !== null);
  } catch {
    // A reset ends the connection as an EOF does.
  }
  return performance.now();
}

function describe(frame: { type: number; payload: Uint8Array } | null): string {
  if (frame === null) return "the end of the connection";
  const text = new TextDecoder().decode(frame.payload.subarray(0, 200));
  return `frame type ${frame.type} ${text}`;
}

/**
 * The server's next frames are ERROR `reason` (keepalive PINGs aside), then the end; returns
 * the ERROR's message.
 */
async function assertEndsWith(client: RawClient, reason: string): Promise<string> {
  let frame = await client.next(SHORT_MS, `ERROR ${reason}`);
  while (frame?.type === FrameType.PING) frame = await client.next(SHORT_MS, `ERROR ${reason}`);
  assert(frame?.type === FrameType.ERROR, `expected ERROR ${reason}, got ${describe(frame)}`);
  const error = decodeError(frame.payload);
  assertEquals(error.reason, reason);
  const after = await client.next(SHORT_MS, "the end of the connection after ERROR");
  assertEquals(after, null, `nothing after the ERROR, got ${describe(after)}`);
  return error.message;
}

/** A client of `lab` still passes packets both ways (`address` is its tunnel address). */
async function assertStillServes(lab: Lab, tun: MemoryTun, address: string): Promise<void> {
  await assertPasses(tun, lab.serverTun, ipv4Packet(address, "10.8.0.1", "still up"));
  await assertPasses(lab.serverTun, tun, ipv4Packet("10.8.0.1", address, "still down"));
}

const keepalive1s3s = (config: ServerConfig) => config.keepalive = { interval: 1, timeout: 3 };

// --- handshake limits --------------------------------------------------------------------

Deno.test("Server closes a connection that has not authenticated after 10 s (not before 9.5 s, by 12 s): raw TCP, and TLS that stops after HELLO", async () => {
  await attack(async (lab, keep) => {
    const start = performance.now();
    const tcp = await idleTcp(lab, keep);
    const tcpEnd = endOf(tcp);
    const tls = keep(await RawClient.connect(lab.port, await caOf(lab)));
    await tls.hello();
    const tcpEndedAt = await within(tcpEnd, 15_000, "the server closes the idle TCP connection");
    await tls.closed(15_000, "the server closes the TLS connection that sent no AUTH");
    const ends: [string, number][] = [["raw TCP", tcpEndedAt], ["TLS after HELLO", tls.endedAt]];
    for (const [what, at] of ends) {
      const seconds = (at - start) / 1000;
      assert(seconds >= 9.5 && seconds <= 12, `${what}: closed after ${seconds} s, not 10 s`);
    }
    assertEquals(tls.frames, [], "the server sent nothing after HELLO");
    assertEquals(lab.server.stats.refused, 2);
  });
});

/**
 * Opens 8 raw TCP connections, all from 127.0.0.1 (one source), and waits until the server has
 * them all in their handshake.
 */
async function fillHandshakes(lab: Lab, keep: Keep): Promise<Deno.TcpConn[]> {
  const idle: Deno.TcpConn[] = [];
  for (let i = 0; i < 8; i++) idle.push(await idleTcp(lab, keep));
  await waitFor(() => lab.server.preAuthCount === 8, SHORT_MS, "8 connections in handshake");
  assertEquals(lab.server.stats.refused, 0);
  return idle;
}

Deno.test("Server keeps at most 8 connections of one source in their handshake: a 9th takes the place of the oldest, counted busy-source, and a client of that source still gets in", async () => {
  await attack(async (lab, keep) => {
    const { server } = lab;
    const idle = await fillHandshakes(lab, keep);
    const oldestEnd = endOf(idle[0]!);
    idle.push(await idleTcp(lab, keep));
    await within(oldestEnd, SHORT_MS, "the server closes the oldest of the source's 8");
    await waitFor(() => server.stats.refused === 1, SHORT_MS, "the oldest is counted");
    assertEquals(server.preAuthCount, 8);
    assertEquals(server.status().handshakes["busy-source"], 1);

    // A client of the same source, with 8 idle connections of its source in place.
    const alice = await lab.connected("alice");
    await assertStillServes(lab, alice.tun, alice.client.address!);
    assertEquals(server.stats.refused, 2, "alice's connection replaced the next oldest");
    for (const conn of idle) closeQuietly(conn);
    await waitFor(() => server.preAuthCount === 0, SHORT_MS, "the idle connections leave");
  });
});

// Closing a TlsConn whose handshake is pending leaves its socket open (ffi/socket.ts): a
// connection that lost its place must be shut down, not left to its pre-auth timer.
Deno.test("Server closes the connection a 9th of the same source takes the place of at once, not after 10 s", async () => {
  await attack(async (lab, keep) => {
    const idle = await fillHandshakes(lab, keep);
    await idleTcp(lab, keep);
    // Far sooner than the 10 s pre-auth timeout.
    await within(endOf(idle[0]!), 3000, "the server closes the oldest connection");
    assertEquals(lab.server.stats.refused, 1);
  });
});

// --- frames after AUTH -------------------------------------------------------------------

Deno.test("Server takes a 65,545-byte DATA frame and ends only that session, with ERROR protocol, at 65,546 bytes", async () => {
  await attack(async (lab, keep) => {
    const bob = await lab.connected("bob");
    const mallory = await rawSession(lab, keep, "mallory");
    assertEquals(lab.server.sessionCount, 2);

    const notIp = lab.server.stats.notIp;
    // Zeros are no IPv4 packet: the server takes the frame and drops it as not IP.
    await mallory.send(FrameType.DATA, new Uint8Array(65_545));
    await mallory.ping();
    assertEquals(lab.server.stats.notIp, notIp + 1, "the 65,545-byte frame was taken");
    assertEquals(lab.server.sessionCount, 2);

    await mallory.send(FrameType.DATA, new Uint8Array(65_546));
    await assertEndsWith(mallory, "protocol");
    await waitFor(() => lab.server.sessionCount === 1, SHORT_MS, "mallory's session ends");
    await assertStillServes(lab, bob.tun, bob.client.address!);
  });
});

Deno.test("Server ends only the session that sends an unknown frame type (0x0e) or HELLO after AUTH, with ERROR protocol", async () => {
  await attack(async (lab, keep) => {
    const bob = await lab.connected("bob");
    for (const [name, type] of [["mallory", 0x0e], ["trudy", FrameType.HELLO]] as const) {
      const raw = await rawSession(lab, keep, name);
      assertEquals(lab.server.sessionCount, 2);
      await raw.send(type, new TextEncoder().encode("{}"));
      await assertEndsWith(raw, "protocol");
      await waitFor(() => lab.server.sessionCount === 1, SHORT_MS, `${name}'s session ends`);
      await assertStillServes(lab, bob.tun, bob.client.address!);
    }
  });
});

// --- keepalive ---------------------------------------------------------------------------

Deno.test("Server ends a silent session 3 to 5.5 s after its last byte (keepalive 1 s, timeout 3 s) and keeps one that PINGs every 1 s", async () => {
  await attack(async (lab, keep) => {
    const quiet = await rawSession(lab, keep, "quiet");
    const chatty = await rawSession(lab, keep, "chatty");
    const pinging = setInterval(() => chatty.send(FrameType.PING).catch(() => {}), 1000);
    try {
      // The last byte goes out just after the server's first keepalive PING, between two of
      // its checks: the check 3 s later finds a little less than 3 s of silence, so the one
      // that ends the session comes about 4 s after it, inside the bounds either way.
      await quiet.until(FrameType.PING, 3000, "the server's first keepalive PING");
      const last = performance.now();
      await quiet.send(FrameType.PING);
      const error = await quiet.until(FrameType.ERROR, 7000, "the server ends the silent session");
      assertEquals(decodeError(error.payload).reason, "timeout");
      const seconds = (error.at - last) / 1000;
      assert(seconds >= 3 && seconds <= 5.5, `ended ${seconds} s after the last byte`);
      await quiet.closed(SHORT_MS, "the connection closes after ERROR timeout");

      assertEquals(chatty.ended, false);
      assertEquals(chatty.frames.filter((f) => f.type === FrameType.ERROR), []);
      await chatty.ping();
      assertEquals(lab.server.sessionCount, 1);
    } finally {
      clearInterval(pinging);
    }
  }, keepalive1s3s);
});

// --- authentication ----------------------------------------------------------------------

Deno.test("Server sends a different 32-byte nonce in the HELLO of every connection", async () => {
  await attack(async (lab, keep) => {
    const ca = await caOf(lab);
    const first = await keep(await RawClient.connect(lab.port, ca)).hello();
    const second = await keep(await RawClient.connect(lab.port, ca)).hello();
    assertEquals([first.length, second.length], [32, 32]);
    assert(first.toHex() !== second.toHex(), `the same nonce twice: ${first.toHex()}`);
  });
});

Deno.test("Server refuses an AUTH replayed from another connection with bad-signature", async () => {
  await attack(async (lab, keep) => {
    const ca = await caOf(lab);
    const keys = await lab.issue("alice");
    const original = keep(await RawClient.connect(lab.port, ca));
    const attacker = keep(await RawClient.connect(lab.port, ca));
    const auth = await signedAuth(keys, await original.hello(), HOST);
    await attacker.hello();
    await original.sendAuth(auth);
    await original.until(FrameType.PUSH, SHORT_MS, "PUSH for the AUTH on its own connection");
    // The attacker saw that AUTH and sends it as its own answer to a different challenge.
    await attacker.sendAuth(auth);
    await assertEndsWith(attacker, "bad-signature");
    assertEquals(lab.server.sessionCount, 1);
    await original.ping();
  });
});

Deno.test("Server tells whoever holds only a copy of a revoked certificate bad-signature, never revoked", async () => {
  await attack(async (lab, keep) => {
    const ca = await caOf(lab);
    const alice = await lab.issue("alice");
    await revokeClient(lab.dir, "alice");
    // Certificates are not secret: signed with another key, the refusal says nothing of alice's.
    const stranger = await lab.issue("stranger");
    const copy = keep(await RawClient.connect(lab.port, ca));
    const forged = await signedAuth({ ...stranger, cert: alice.cert }, await copy.hello(), HOST);
    await copy.sendAuth(forged);
    await assertEndsWith(copy, "bad-signature");
    // Alice herself, with her key, is told.
    const owner = keep(await RawClient.connect(lab.port, ca));
    await owner.sendAuth(await signedAuth(alice, await owner.hello(), HOST));
    await assertEndsWith(owner, "revoked");
  });
});

Deno.test("Server refuses an AUTH validly signed for another server name (evil.example) and takes one for its own", async () => {
  await attack(async (lab, keep) => {
    const ca = await caOf(lab);
    const keys = await lab.issue("alice");
    const relayed = keep(await RawClient.connect(lab.port, ca));
    await relayed.sendAuth(await signedAuth(keys, await relayed.hello(), "evil.example"));
    assertMatch(await assertEndsWith(relayed, "bad-signature"), /"evil\.example"/);
    assertEquals(lab.server.sessionCount, 0);

    // The same keys and signing, for a name in the server certificate: accepted.
    const honest = keep(await RawClient.connect(lab.port, ca));
    await honest.sendAuth(await signedAuth(keys, await honest.hello(), "localhost"));
    await honest.until(FrameType.PUSH, SHORT_MS, "PUSH for an AUTH naming localhost");
    assertEquals(lab.server.sessionCount, 1);
  });
});

Deno.test("Server drops a live session within 5 s of its revocation, even one made just after a poll", async () => {
  await withLab(async (lab) => {
    const alice = await lab.connected("alice");
    const bob = await lab.connected("bob");
    await revokeClient(lab.dir, "alice");
    await waitFor(() => lab.server.sessionCount === 1, 6000, "alice's session is dropped");
    // Alice went at a poll; bob's revocation lands just after it, a whole period before the next.
    const revoked = performance.now();
    await revokeClient(lab.dir, "bob");
    await waitFor(
      () => lab.server.sessionCount === 0,
      Math.round(revoked + 5000 - performance.now()),
      "bob's session is dropped within 5 s of his revocation",
    );
    for (const running of [alice, bob]) {
      const error = await within(running.outcome, SHORT_MS, `${running.name}'s run() rejects`);
      assert(error instanceof ClientError, `expected ClientError, got ${String(error)}`);
      assertMatch(error.message, /revoked/);
    }
  });
});

// --- UDP ---------------------------------------------------------------------------------

/** A raw session with its UDP path up: UDP_OFFER, UDP_ACCEPT, and a PING answered by a PONG. */
async function rawUdpSession(
  lab: Lab,
  keep: Keep,
  name: string,
): Promise<{ raw: RawClient; udp: RawUdp; address: string }> {
  const raw = await rawSession(lab, keep, name);
  const udp = keep(await raw.offerUdp());
  await udp.ping();
  return { raw, udp, address: raw.push!.address };
}

/** Whether `udp` has received a DATA datagram carrying exactly `packet`. */
function gotOverUdp(udp: RawUdp, packet: Uint8Array): boolean {
  return udp.received.some((r) =>
    r.type === DatagramType.DATA && r.payload?.toHex() === packet.toHex()
  );
}

/** Whether `raw` has received a DATA frame carrying exactly `packet`. */
function gotOverTls(raw: RawClient, packet: Uint8Array): boolean {
  return raw.frames.some((f) => f.type === FrameType.DATA && f.payload.toHex() === packet.toHex());
}

Deno.test("Server keeps sending a client's UDP data to its own address after a forged datagram from another port", async () => {
  await attack(async (lab, keep) => {
    const { udp, address } = await rawUdpSession(lab, keep, "alice");
    const stats = lab.server.udp!.stats;
    const forger = keep(new Inbox(UdpSocket.bind(HOST, 0)));
    // Alice's session id and a fresh counter, but a tag that does not verify.
    const forged = udp.seal(DatagramType.DATA, ipv4Packet(address, "10.8.0.1", "forged"));
    forged[forged.length - 1]! ^= 0x01;
    const forgedBefore = stats.forged;
    udp.send(forged, forger.socket);
    await waitFor(() => stats.forged === forgedBefore + 1, SHORT_MS, "the forgery is counted");

    const packet = ipv4Packet("10.8.0.1", address, "for alice");
    lab.serverTun.inject(packet);
    await waitFor(() => gotOverUdp(udp, packet), SHORT_MS, "the data reaches alice's socket");
    await udp.ping();
    // Anything sent to the forger would have left with the data above; give it time to land.
    await delay(500);
    assertEquals(forger.received.length, 0, "nothing reaches the forging socket");
  });
});

Deno.test("Server moves a client's UDP address to a new port on an authenticated datagram from it (NAT rebinding)", async () => {
  await attack(async (lab, keep) => {
    const { udp, address } = await rawUdpSession(lab, keep, "alice");
    const rebound = keep(new Inbox(UdpSocket.bind(HOST, 0)));
    const heard = udp.received.length;
    udp.send(udp.seal(DatagramType.PING, new Uint8Array(8)), rebound.socket);
    await waitFor(() => rebound.received.length === 1, SHORT_MS, "the PONG at the new port");
    assertEquals(udp.unseal(rebound.received[0]!).type, DatagramType.PONG);

    const packet = ipv4Packet("10.8.0.1", address, "for alice at her new port");
    lab.serverTun.inject(packet);
    await waitFor(() => rebound.received.length === 2, SHORT_MS, "the data at the new port");
    assertEquals(udp.unseal(rebound.received[1]!).payload, packet);
    assertEquals(udp.received.length, heard, "nothing more to the old port");
  });
});

Deno.test("Server answers garbage, a short datagram, an unknown session, a replay and a tampered datagram with nothing, and counts each", async () => {
  await attack(async (lab, keep) => {
    const { udp } = await rawUdpSession(lab, keep, "alice");
    const stats = lab.server.udp!.stats;
    const captured = await udp.ping(); // a valid datagram to replay
    const before = { ...stats };
    const heard = udp.received.length;

    const garbage = crypto.getRandomValues(new Uint8Array(200));
    garbage[0] = DatagramType.PING; // ours: other first bytes go to the OpenVPN endpoint
    garbage[1] = (udp.sessionId >>> 24) ^ 0xff; // whatever else it is, not alice's session
    const short = udp.seal(DatagramType.PING, new Uint8Array(8)).subarray(0, 28);
    const stranger = udp.seal(DatagramType.PING, new Uint8Array(8));
    stranger[4] = stranger[4]! ^ 0x01; // session id + or - 1
    const tampered = udp.seal(DatagramType.PING, new Uint8Array(8));
    tampered[tampered.length - 1]! ^= 0x01;
    for (const datagram of [garbage, short, stranger, captured, tampered]) udp.send(datagram);

    await udp.ping(); // handled after the bad ones, which came first from the same socket
    const counted = () => ({
      unknown: stats.unknown - before.unknown,
      malformed: stats.malformed - before.malformed,
      replayed: stats.replayed - before.replayed,
      forged: stats.forged - before.forged,
      accepted: stats.accepted - before.accepted,
    });
    const expected = { unknown: 2, malformed: 1, replayed: 1, forged: 1, accepted: 1 };
    // Waits for the counts, then the assertion shows any difference.
    await waitFor(
      () => JSON.stringify(counted()) === JSON.stringify(expected),
      SHORT_MS,
      "the drops are counted",
    ).catch(() => {});
    assertEquals(counted(), expected);
    // An answer to a bad datagram would have left before the PONG; give a stray one time.
    await delay(500);
    assertEquals(udp.received.length, heard + 1, "only the PONG of the good PING came back");
  });
});

Deno.test("Server moves a client's data from UDP to TLS once UDP has been silent for 3 s (keepalive 1 s, timeout 3 s) while TLS lives", async () => {
  await attack(async (lab, keep) => {
    const { raw, udp, address } = await rawUdpSession(lab, keep, "alice");
    const first = ipv4Packet("10.8.0.1", address, "over udp");
    lab.serverTun.inject(first);
    await waitFor(() => gotOverUdp(udp, first), SHORT_MS, "the packet arrives over UDP");
    assert(!gotOverTls(raw, first), "the packet came over UDP only");

    // From now on alice sends no datagram and keeps the TLS session alive with a PING a second.
    const silentSince = performance.now();
    const pinging = setInterval(() => raw.send(FrameType.PING).catch(() => {}), 1000);
    let sent = 0;
    const injecting = setInterval(() => {
      lab.serverTun.inject(ipv4Packet("10.8.0.1", address, `packet ${sent++}`));
    }, 250);
    try {
      const frame = await raw.until(FrameType.DATA, 6000, "a packet over TLS");
      const seconds = (frame.at - silentSince) / 1000;
      assert(seconds > 3 && seconds <= 5.5, `moved to TLS ${seconds} s into the silence`);
      assertMatch(new TextDecoder().decode(frame.payload.subarray(20)), /^packet \d+$/);
      assertEquals(lab.server.sessionCount, 1);
    } finally {
      clearInterval(injecting);
      clearInterval(pinging);
    }
  }, keepalive1s3s);
});

// --- usage limits ------------------------------------------------------------------------

Deno.test("Server's keepalive sends REKEY once the UDP key has sealed 2^32 packets, not at 2^32 - 1 (rekey_interval 86400 s)", async () => {
  await attack(async (lab, keep) => {
    const { server } = lab;
    // The test reaches the server's session through the one call every DATA frame makes.
    let session: NativeSession | undefined;
    const { router } = server;
    const fromClient = router.fromClient;
    router.fromClient = (s, buffer, start, end) => {
      session = s as NativeSession;
      fromClient.call(router, s, buffer, start, end);
    };
    const raw = await rawSession(lab, keep, "alice");
    keep(await raw.offerUdp());
    await raw.send(FrameType.DATA, ipv4Packet(raw.push!.address, "10.8.0.1", "hello"));
    await waitFor(() => session?.udp !== undefined, SHORT_MS, "the server's session is seen");
    const keys = session!.udp!.crypto;
    assertEquals(keys.sent, 0);

    keys.advanceSendCounter(2 ** 32 - 1);
    const from = raw.frames.length;
    const since = () => raw.frames.slice(from);
    // Three PINGs: at least two keepalive ticks that began after the counter moved.
    await waitFor(
      () => since().filter((f) => f.type === FrameType.PING).length >= 3,
      5000,
      "three keepalive ticks",
    );
    assertEquals(since().filter((f) => f.type === FrameType.REKEY), [], "no REKEY at 2^32 - 1");

    keys.advanceSendCounter(2 ** 32);
    const rekey = await raw.until(FrameType.REKEY, 2500, "REKEY at the next keepalive tick");
    assertEquals(decodeRekey(rekey.payload, "REKEY").epoch, 1);
  }, (config) => {
    config.keepalive = { interval: 1, timeout: 60 };
    config.rekey_interval = 86400;
  });
});

// --- sockets -----------------------------------------------------------------------------

/** Local ports of this host's established TCP connections to 127.0.0.1:`port`. */
async function portsConnectedTo(port: number): Promise<number[]> {
  const remote = `0100007F:${port.toString(16).toUpperCase().padStart(4, "0")}`;
  const rows = (await Deno.readTextFile("/proc/net/tcp")).split("\n").slice(1);
  return rows.map((row) => row.trim().split(/\s+/))
    .filter((f) => f[2] === remote && f[3] === "01")
    .map((f) => parseInt(f[1]!.split(":")[1]!, 16));
}

Deno.test("Server and Client turn TCP_NODELAY on for the TLS connection of a session", async () => {
  await withLab(async (lab) => {
    await lab.connected("alice");
    const ports = await portsConnectedTo(lab.port);
    assertEquals(ports.length, 1, `one connection to the server, got ports ${ports}`);
    const server = { hostname: HOST, port: lab.port };
    const client = { hostname: HOST, port: ports[0]! };
    assertEquals(tcpNoDelay(server, client), true, "the server's socket has TCP_NODELAY");
    assertEquals(tcpNoDelay(client, server), true, "the client's socket has TCP_NODELAY");
  });
});
