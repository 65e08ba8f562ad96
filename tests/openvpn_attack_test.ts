/**
 * The OpenVPN server's promises about bad input, tested from the attacker's side without
 * root: an in-process Server with a MemoryTun on 127.0.0.1 (tests/_lab.ts) and a raw OpenVPN
 * client (tests/_ovpn_client.ts) that speaks the protocol itself over real UDP and TCP, so it
 * can send what a stock client never would. Each attack must be dropped and counted in the
 * right counter, and a good session running beside it must keep passing data.
 *
 * Numbers the promises name (8 handshakes per host, 8 acks, 53 prefixes) are written out
 * here, not imported, so that a changed constant fails a test. Every wait is bounded.
 */

import { configureSync, type LogRecord } from "@logtape/logtape";
import { assert, assertEquals, assertMatch } from "./_assert.ts";
import {
  type Credentials,
  delay,
  HOST,
  ipv4Packet,
  type Lab,
  SHORT_MS,
  takeFrom,
  waitFor,
  withLab,
} from "./_lab.ts";
import { OvpnClient, type OvpnClientOptions, PEER_INFO_2_6 } from "./_ovpn_client.ts";
import { loadTlsCryptKey } from "../mod/pki.ts";
import type { ServerConfig } from "../mod/config.ts";
import { within } from "./_wait.ts";

/** The product's log lines from info up, to check what the server said. */
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

// --- helpers -----------------------------------------------------------------------------

/** One attack's world: the lab and its raw clients, which are closed after the test. */
interface World {
  lab: Lab;
  /**
   * A raw client with the certificate issued as `name` (issued on first use, so clients of
   * one name share it); nothing is sent yet.
   */
  client(name: string, options?: Partial<OvpnClientOptions>): Promise<OvpnClient>;
  /** A raw client that completed its handshake and proved that data passes both ways. */
  good(name: string, options?: Partial<OvpnClientOptions>): Promise<OvpnClient>;
}

/** A TCP port that was free a moment ago, for `openvpn.tcp_port`. */
function freeTcpPort(): number {
  const listener = Deno.listen({ hostname: HOST, port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/**
 * Runs `fn` against a fresh Lab whose server takes OpenVPN over UDP (the Lab's port) and
 * TCP (a free port); every client `fn` makes is closed after it, before the Lab closes.
 */
async function attack(
  fn: (world: World) => Promise<void>,
  configure: (config: ServerConfig) => void = () => {},
): Promise<void> {
  const tcpPort = freeTcpPort();
  await withLab(async (lab) => {
    const tlsCryptKey = await loadTlsCryptKey(lab.dir);
    const clients: OvpnClient[] = [];
    const issued = new Map<string, Credentials>();
    const client = async (name: string, options: Partial<OvpnClientOptions> = {}) => {
      let credentials = issued.get(name);
      if (credentials === undefined) issued.set(name, credentials = await lab.issue(name));
      const transport = options.transport ?? "udp";
      const opened = await OvpnClient.open({
        transport,
        port: transport === "udp" ? lab.port : tcpPort,
        identity: { certPem: credentials.cert, keyPem: credentials.key, caPem: credentials.ca },
        tlsCryptKey,
        ...options,
      });
      clients.push(opened);
      return opened;
    };
    const good = async (name: string, options: Partial<OvpnClientOptions> = {}) => {
      const opened = await client(name, options);
      await opened.handshake();
      await assertServes(lab, opened, name);
      return opened;
    };
    try {
      await fn({ lab, client, good });
    } finally {
      // Together: each socket's receive loop takes up to one poll interval to notice.
      await Promise.all(clients.map((opened) => opened.close()));
    }
  }, (config) => {
    config.openvpn.tcp_port = tcpPort;
    configure(config);
  });
}

/** Asserts that a packet of `client` reaches the server's TUN, and one from the TUN reaches it. */
async function assertServes(lab: Lab, client: OvpnClient, label: string): Promise<void> {
  const up = ipv4Packet(client.address, "10.8.0.1", `${label} ${crypto.randomUUID()}`);
  await client.sendData(up);
  assertEquals(await takeFrom(lab.serverTun), [up], `${label}'s packet reaches the TUN`);
  const down = ipv4Packet("10.8.0.1", client.address, `${label} ${crypto.randomUUID()}`);
  lab.serverTun.inject(down);
  const hex = down.toHex();
  await client.dataMatching((plain) => plain.toHex() === hex, `the TUN's packet reaches ${label}`);
}

/** Every counter the OpenVPN endpoints and the router keep about refusals. */
interface Counters {
  unwrapFailed: number;
  replayed: number;
  malformed: number;
  unknown: number;
  busy: number;
  dataMalformed: number;
  dataForged: number;
  dataReplayed: number;
  refused: number;
}

function counters(lab: Lab): Counters {
  const ovpn = lab.server.openvpn!;
  return {
    ...ovpn.stats,
    dataMalformed: ovpn.dataStats.malformed,
    dataForged: ovpn.dataStats.forged,
    dataReplayed: ovpn.dataStats.replayed,
    refused: lab.server.stats.refused,
  };
}

/**
 * Waits until the counters have moved by `moved` from `before`, then asserts that they moved
 * by exactly that and that no other counter moved, except those named in `loose`.
 */
async function assertCounted(
  lab: Lab,
  before: Counters,
  moved: Partial<Counters>,
  loose: (keyof Counters)[] = [],
): Promise<void> {
  const expected = { ...before };
  for (const [name, count] of Object.entries(moved) as [keyof Counters, number][]) {
    expected[name] += count;
  }
  const names = Object.keys(expected) as (keyof Counters)[];
  const reached = () => names.every((name) => counters(lab)[name] >= expected[name]);
  // On a timeout, the assertion below says which counter fell short.
  await waitFor(reached, SHORT_MS, `counters ${JSON.stringify(moved)}`).catch(() => {});
  // A moment for anything else the attack sent to be counted, if it is going to be.
  await delay(50);
  const actual = counters(lab);
  for (const name of loose) expected[name] = actual[name];
  assertEquals(actual, expected);
}

/** `length` random bytes that start with `first`. */
function junk(first: number[], length: number): Uint8Array {
  const bytes = new Uint8Array(length);
  // getRandomValues fills at most 64 KiB at a time.
  for (let at = 0; at < length; at += 65536) {
    crypto.getRandomValues(bytes.subarray(at, at + 65536));
  }
  bytes.set(first);
  return bytes;
}

/**
 * A control body (what tls-crypt encrypts) with `count` acks of id 0 echoing `peer`, and a
 * message id unless it is for P_ACK_V1; written by hand, since the codec refuses 9 acks.
 */
function ackBody(count: number, peer: Uint8Array, messageId?: number): Uint8Array {
  const body = new Uint8Array(1 + 4 * count + 8 + (messageId === undefined ? 0 : 4));
  body[0] = count;
  body.set(peer, 1 + 4 * count);
  if (messageId !== undefined) new DataView(body.buffer).setUint32(9 + 4 * count, messageId);
  return body;
}

const P_CONTROL_V1 = 0x20;
const P_ACK_V1 = 0x28;

// --- the raw client itself ---------------------------------------------------------------

for (const transport of ["udp", "tcp"] as const) {
  Deno.test(`OvpnClient over ${transport} completes a handshake, gets PUSH_REPLY with ifconfig, peer-id and cipher, and passes data both ways`, async () => {
    await attack(async ({ lab, client }) => {
      const alice = await client("alice", { transport });
      const reply = await alice.handshake();
      assertMatch(reply, /^PUSH_REPLY,/);
      assertMatch(alice.option("ifconfig")!, /^10\.8\.0\.\d+ 255\.255\.255\.0$/);
      assertMatch(alice.option("peer-id")!, /^\d+$/);
      assertEquals(alice.option("cipher"), "AES-256-GCM");
      assertEquals(alice.option("topology"), "subnet");
      assertEquals(lab.server.sessionCount, 1);
      assertEquals(lab.server.openvpn!.pendingCount, 0);
      await assertServes(lab, alice, "alice");
      assertEquals(alice.stats, { badControl: 0, otherKey: 0, badData: 0 });
    });
  });
}

// --- garbage and truncation --------------------------------------------------------------

Deno.test("OpenVPN server drops garbage datagrams, each counted where it fails, and a good session keeps passing data", async () => {
  await attack(async ({ lab, client, good }) => {
    const alice = await good("alice");
    const peerId = Number(alice.option("peer-id"));
    const mallory = await client("mallory");
    const before = counters(lab);
    // Control opcodes (and opcodes 1, 2, 8, 10, 11, 12, 31) and random bytes: tls-crypt fails.
    const controlFirst = [0x38, 0x20, 0x28, 0x18, 0x08, 0x10, 0x40, 0x50, 0x58, 0x60, 0xf8];
    for (const first of controlFirst) {
      for (let i = 0; i < 5; i++) await mallory.sendRaw(junk([first], 10 + 40 * i));
    }
    // P_DATA_V2: shorter than header and tag; an unknown peer id; alice's peer id, random tag.
    for (let i = 0; i < 5; i++) await mallory.sendRaw(junk([0x48], 1 + 4 * i));
    for (let i = 0; i < 5; i++) {
      await mallory.sendRaw(junk([0x48, 0xab, 0xcd, 0xef], 24 + 30 * i));
    }
    for (let i = 0; i < 5; i++) {
      const forged = junk([0x48, peerId >> 16, (peerId >> 8) & 0xff, peerId & 0xff], 40 + 30 * i);
      forged[4] = 0x10; // packet id >= 2^28: fresh for the replay window, so the tag is checked
      await mallory.sendRaw(forged);
    }
    await assertCounted(lab, before, {
      unwrapFailed: controlFirst.length * 5,
      dataMalformed: 5,
      unknown: 5,
      dataForged: 5,
    });
    assertEquals(lab.server.openvpn!.pendingCount, 0);
    await assertServes(lab, alice, "alice after the garbage");
  });
});

Deno.test("OpenVPN server drops each of the 53 proper prefixes of a wrapped HARD_RESET (tls-crypt fails) and makes no session; the whole one makes one", async () => {
  await attack(async ({ lab, client, good }) => {
    const alice = await good("alice");
    const mallory = await client("mallory");
    const reset = mallory.resetPacket(mallory.sessionId);
    assertEquals(reset.length, 54);
    const before = counters(lab);
    for (let length = 1; length < reset.length; length++) {
      await mallory.sendRaw(reset.subarray(0, length));
    }
    await assertCounted(lab, before, { unwrapFailed: 53 });
    assertEquals(lab.server.openvpn!.pendingCount, 0);
    await mallory.sendRaw(reset);
    await waitFor(() => lab.server.openvpn!.pendingCount === 1, SHORT_MS, "a pending session");
    await assertCounted(lab, before, { unwrapFailed: 53 });
    await assertServes(lab, alice, "alice after the prefixes");
  });
});

// --- replays and tampering ---------------------------------------------------------------

Deno.test("OpenVPN server drops every replayed control packet of a session (its reset, TLS, acks) as replayed; the session keeps passing data", async () => {
  await attack(async ({ lab, good }) => {
    const alice = await good("alice");
    const sent = alice.sentControl.slice();
    assert(sent.length >= 4, `alice sent ${sent.length} control packets`);
    const before = counters(lab);
    for (const packet of sent) await alice.sendRaw(packet);
    await assertCounted(lab, before, { replayed: sent.length });
    assertEquals(lab.server.openvpn!.pendingCount, 0);
    assertEquals(lab.server.sessionCount, 1);
    await assertServes(lab, alice, "alice after the replays");
  });
});

Deno.test("OpenVPN server drops a tampered data packet as forged (tag, ciphertext, packet id) or unknown (key id) and still takes the original; a replay of that is counted and never reaches the TUN", async () => {
  await attack(async ({ lab, good }) => {
    const alice = await good("alice");
    const plain = ipv4Packet(alice.address, "10.8.0.1", "original");
    const original = alice.sealData(plain);
    const before = counters(lab);
    for (const at of [10, 30, original.length - 1, 7]) {
      const tampered = original.slice();
      tampered[at]! ^= 0x01;
      await alice.sendRaw(tampered);
    }
    const otherKey = original.slice();
    otherKey[0] = 0x49; // key id 1: no such key
    await alice.sendRaw(otherKey);
    await assertCounted(lab, before, { dataForged: 4, unknown: 1 });
    await alice.sendRaw(original);
    assertEquals(await takeFrom(lab.serverTun), [plain]);
    await alice.sendRaw(original);
    await assertCounted(lab, before, { dataForged: 4, unknown: 1, dataReplayed: 1 });
    // The next packet comes out of the TUN alone: the replay never went in.
    const next = ipv4Packet(alice.address, "10.8.0.1", "after the replay");
    await alice.sendData(next);
    assertEquals(await takeFrom(lab.serverTun), [next]);
    await assertServes(lab, alice, "alice after the tampering");
  });
});

// --- opcodes and acks --------------------------------------------------------------------

Deno.test("OpenVPN server drops unknown and misplaced opcodes: unwrapFailed without the key, malformed in a session, unknown outside one", async () => {
  await attack(async ({ lab, client, good }) => {
    const alice = await good("alice");
    const mallory = await client("mallory");
    // 12, 31, key method 1 (1, 2), the server's reset (8), tls-crypt-v2 (10, 11), DATA_V1 (6).
    const firsts = [0x60, 0xf8, 0x08, 0x10, 0x40, 0x50, 0x58, 0x30];
    const body = new Uint8Array([0, 0, 0, 0, 1]); // no acks, message id 1
    let before = counters(lab);
    for (const first of firsts) await mallory.sendRaw(junk([first], 60));
    await assertCounted(lab, before, { unwrapFailed: firsts.length });
    before = counters(lab);
    for (const first of firsts) await alice.sendRaw(alice.wrap(first, body));
    await assertCounted(lab, before, { malformed: firsts.length });
    before = counters(lab);
    for (const first of firsts) await mallory.sendRaw(mallory.wrap(first, body));
    await assertCounted(lab, before, { unknown: firsts.length });
    assertEquals(lab.server.openvpn!.pendingCount, 0);
    await assertServes(lab, alice, "alice after the opcodes");
  });
});

Deno.test("OpenVPN server drops a control packet with 9 acks, or with acks for another session id, as malformed; 8 acks for its own id pass", async () => {
  await attack(async ({ lab, good }) => {
    const alice = await good("alice");
    const server = alice.serverSessionId!;
    const stranger = crypto.getRandomValues(new Uint8Array(8));
    const before = counters(lab);
    await alice.sendRaw(alice.wrap(P_ACK_V1, ackBody(9, server)));
    await alice.sendRaw(alice.wrap(P_CONTROL_V1, ackBody(9, server, 1000)));
    await alice.sendRaw(alice.wrap(P_ACK_V1, ackBody(1, stranger)));
    await alice.sendRaw(alice.wrap(P_CONTROL_V1, ackBody(2, stranger, 1000)));
    // Another sender session id from alice's address, without acks at all.
    await alice.sendRaw(alice.wrap(P_ACK_V1, new Uint8Array([0]), stranger));
    await assertCounted(lab, before, { malformed: 5 });
    await alice.sendRaw(alice.wrap(P_ACK_V1, ackBody(8, server)));
    await assertCounted(lab, before, { malformed: 5 });
    await assertServes(lab, alice, "alice after the acks");
  });
});

// --- handshake floods --------------------------------------------------------------------

/** What a flood did: resets sent, rounds, and the most handshakes pending after a round. */
interface Flooded {
  sent: number;
  rounds: number;
  maxPending: number;
}

/**
 * Sends wrapped HARD_RESETs with fresh session ids from `sockets` in turns, `per` each a
 * round, until `stop()` or `limit` resets, yielding to the server after each round.
 */
async function flood(
  lab: Lab,
  sockets: OvpnClient[],
  per: number,
  stop: () => boolean,
  limit: number,
): Promise<Flooded> {
  const flooded = { sent: 0, rounds: 0, maxPending: 0 };
  while (!stop() && flooded.sent < limit) {
    for (const socket of sockets) {
      for (let i = 0; i < per; i++, flooded.sent++) await socket.sendRaw(socket.resetPacket());
    }
    await delay(1);
    flooded.rounds++;
    flooded.maxPending = Math.max(flooded.maxPending, lab.server.openvpn!.pendingCount);
  }
  return flooded;
}

/** Runs `handshake` while `sockets` flood, `per` resets each a round. */
async function duringFlood(
  lab: Lab,
  sockets: OvpnClient[],
  per: number,
  handshake: () => Promise<unknown>,
): Promise<Flooded> {
  let done = false;
  const flooding = flood(lab, sockets, per, () => done, 1_000_000);
  try {
    await handshake();
  } finally {
    done = true;
  }
  return await flooding;
}

Deno.test("OpenVPN server under a HARD_RESET flood from one UDP socket keeps at most 8 handshakes of that host pending, and another host completes its handshake meanwhile", async () => {
  await attack(async ({ lab, client }) => {
    const mallory = await client("mallory");
    const before = await flood(lab, [mallory], 20, () => false, 300);
    assert(before.maxPending <= 8, `${before.maxPending} handshakes pending from one host`);
    const bob = await client("bob", { bind: "127.0.0.2" });
    const during = await duringFlood(lab, [mallory], 20, () => bob.handshake());
    assert(during.rounds >= 3, `the flood went on during the handshake: ${during.rounds} rounds`);
    assert(during.maxPending <= 9, `${during.maxPending} pending: 8 of the flood's host and bob`);
    assertEquals(counters(lab).busy, 0);
    await assertServes(lab, bob, "bob");
  });
});

Deno.test("OpenVPN server under a HARD_RESET flood from 40 sockets of one host keeps at most 8 of its handshakes pending, and another host completes its handshake meanwhile", async () => {
  await attack(async ({ lab, client }) => {
    const sockets: OvpnClient[] = [];
    for (let i = 0; i < 40; i++) sockets.push(await client("mallory"));
    const before = await flood(lab, sockets, 2, () => false, 400);
    assert(before.maxPending <= 8, `${before.maxPending} handshakes pending from one host`);
    assertEquals(lab.server.openvpn!.pendingCount, 8);
    const bob = await client("bob", { bind: "127.0.0.2" });
    const during = await duringFlood(lab, sockets, 1, () => bob.handshake());
    assert(during.rounds >= 3, `the flood went on during the handshake: ${during.rounds} rounds`);
    assert(during.maxPending <= 9, `${during.maxPending} pending: 8 of the flood's host and bob`);
    assertEquals(counters(lab).busy, 0);
    await assertServes(lab, bob, "bob");
  });
});

// --- TCP framing -------------------------------------------------------------------------

Deno.test("OpenVPN server over TCP drops a connection whose length prefix is 0 or 0xffff (then a few bytes) as malformed, and only that one: other TCP clients are fine", async () => {
  await attack(async ({ lab, client, good }) => {
    const alice = await good("alice", { transport: "tcp" });
    const zero = await client("zero", { transport: "tcp" });
    const big = await client("big", { transport: "tcp" });
    const before = counters(lab);
    await zero.sendRaw(new Uint8Array([0x00, 0x00, 0x38, 0x01, 0x02]));
    await zero.closed(SHORT_MS, "the server closes the connection with length 0");
    await big.sendRaw(junk([0xff, 0xff, 0x38], 100));
    await big.closed(SHORT_MS, "the server closes the connection with length 0xffff");
    await assertCounted(lab, before, { malformed: 2 });
    await assertServes(lab, alice, "alice after the bad connections");
    await good("bob", { transport: "tcp" });
    assertEquals(lab.server.sessionCount, 2);
  });
});

Deno.test("OpenVPN server over TCP closes a silent connection (no HARD_RESET) after 10 s, and a client meanwhile is fine", async () => {
  await attack(async ({ lab, good }) => {
    const silent = await Deno.connect({ hostname: HOST, port: lab.server.openvpn!.tcpPort! });
    try {
      const alice = await good("alice", { transport: "tcp" });
      // The server reads nothing from it, so the first read returns only when it closes.
      const read = silent.read(new Uint8Array(16)).catch(() => null);
      assertEquals(await within(read, 15_000, "the silent connection is closed"), null);
      await assertServes(lab, alice, "alice after the silent connection");
    } finally {
      silent.close();
    }
  });
});

Deno.test("OpenVPN server over TCP ends a session whose connection sends length 0, and only that session", async () => {
  await attack(async ({ lab, good }) => {
    const alice = await good("alice", { transport: "tcp" });
    const bob = await good("bob", { transport: "tcp" });
    const before = counters(lab);
    await bob.sendRaw(new Uint8Array([0x00, 0x00]));
    await bob.closed(SHORT_MS, "the server closes bob's connection");
    await waitFor(() => lab.server.sessionCount === 1, SHORT_MS, "bob's session ends");
    await assertCounted(lab, before, { malformed: 1 });
    await assertServes(lab, alice, "alice after bob's bad length");
  });
});

// --- refusals in key method 2 ------------------------------------------------------------

/** A peer-info that shares no cipher with the server: AES-128-GCM only, no IV_NCP. */
const NO_SHARED_CIPHER = "IV_VER=2.6.14\nIV_PLAT=linux\nIV_PROTO=406\nIV_CIPHERS=AES-128-GCM\n" +
  "IV_MTU=1600\n";
/** A peer-info without P_DATA_V2 (IV_PROTO bit 1). */
const NO_DATA_V2 = PEER_INFO_2_6.replace("IV_PROTO=406", "IV_PROTO=0");

/** The AUTH_FAILED message `client` got; waits at most SHORT_MS. */
function authFailed(client: OvpnClient): Promise<string> {
  return client.message("AUTH_FAILED", SHORT_MS);
}

Deno.test("OpenVPN server refuses a client without a shared cipher (IV_CIPHERS=AES-128-GCM, no IV_NCP) with AUTH_FAILED naming the cipher negotiation, logs and counts it", async () => {
  await attack(async ({ lab, client, good }) => {
    const alice = await good("alice");
    const before = counters(lab);
    const old = await client("old", { peerInfo: NO_SHARED_CIPHER });
    old.start();
    const failed = await authFailed(old);
    assertMatch(failed, /^AUTH_FAILED,Data channel cipher negotiation failed \(no shared cipher\)/);
    assertMatch(failed, /AES-128-GCM/);
    const logged = /refused 127\.0\.0\.1:\d+: no-cipher: .*cipher negotiation failed/;
    await waitFor(() => lines.some((line) => logged.test(line)), SHORT_MS, "the refusal's log");
    assertEquals(old.pushed, undefined);
    // The client's acks and alerts after the refusal find no session: unknown, any number.
    await assertCounted(lab, before, { refused: 1 }, ["unknown"]);
    assertEquals(lab.server.sessionCount, 1);
    assertEquals(lab.server.openvpn!.pendingCount, 0);
    await assertServes(lab, alice, "alice after the refusal");
  });
});

Deno.test("OpenVPN server refuses a client without P_DATA_V2 (IV_PROTO=0) with AUTH_FAILED saying so, and counts it", async () => {
  await attack(async ({ lab, client }) => {
    const before = counters(lab);
    const old = await client("old", { peerInfo: NO_DATA_V2 });
    old.start();
    assertMatch(await authFailed(old), /^AUTH_FAILED,.*P_DATA_V2/);
    assertEquals(old.pushed, undefined);
    await assertCounted(lab, before, { refused: 1 }, ["unknown"]);
    assertEquals(lab.server.sessionCount, 0);
    assertEquals(lab.server.openvpn!.pendingCount, 0);
  });
});

Deno.test({
  name:
    "OpenVPN server sends its key-method-2 message before AUTH_FAILED, so that a stock client reads the refusal",
  // A stock 2.6 client reads the first TLS plaintext as the server's key-method-2 message: an
  // AUTH_FAILED in its place fails as "Unknown key_method/flags=95" and the client reconnects
  // instead of stopping (OPENVPN.md 5.5).
  fn: async () => {
    await attack(async ({ client }) => {
      for (const peerInfo of [NO_SHARED_CIPHER, NO_DATA_V2]) {
        const old = await client("old", { peerInfo });
        old.start();
        await old.message("AUTH_FAILED");
        assertEquals(old.unparsed, undefined);
        assertEquals(old.tlsFailure, undefined);
      }
    });
  },
});

Deno.test("OpenVPN server ignores a username and password with a warning: the certificate alone decides", async () => {
  await attack(async ({ client }) => {
    const pass = await client("pass", { userPass: { username: "bob", password: "secret" } });
    await pass.handshake();
    assert(pass.address !== undefined, "the client got an address");
    assert(
      lines.some((line) => /pass: its profile sends a username and password; ignored/.test(line)),
      lines.join("\n"),
    );
    assert(!lines.some((line) => line.includes("secret")), "the password is never logged");
  });
});

Deno.test("OpenVPN server pushes topology subnet, the address with its netmask, the gateway, push.routes, keepalive, MTU and explicit-exit-notify over UDP", async () => {
  await attack(async ({ client }) => {
    const alice = await client("alice");
    const reply = await alice.handshake();
    for (
      const option of [
        "topology subnet",
        "ifconfig 10.8.0.2 255.255.255.0",
        "route-gateway 10.8.0.1",
        "route 192.168.50.0 255.255.255.0",
        "route 172.16.0.0 255.240.0.0",
        "ping 10",
        "ping-restart 60",
        "tun-mtu 1400",
        "explicit-exit-notify 1",
        "protocol-flags cc-exit",
      ]
    ) assert(reply.split(",").includes(option), `${option} in ${reply}`);
  }, (config) => config.push.routes = ["192.168.50.0/24", "172.16.0.0/12"]);
});

Deno.test("OpenVPN server gives AES-256-GCM to a client with IV_NCP=2 and no IV_CIPHERS", async () => {
  await attack(async ({ lab, client }) => {
    const peerInfo = "IV_VER=2.4.12\nIV_PLAT=linux\nIV_PROTO=6\nIV_NCP=2\n";
    const ncp = await client("ncp", { peerInfo });
    await ncp.handshake();
    assertEquals(ncp.option("cipher"), "AES-256-GCM");
    await assertServes(lab, ncp, "the 2.4-style client");
  });
});
