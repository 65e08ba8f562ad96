import { assert, assertEquals, assertThrows } from "./_assert.ts";
import { type OutgoingPacket, Reliable } from "../mod/openvpn/reliable.ts";

// Opcodes as literals (OPENVPN.md 1.2), so that a changed constant in the module fails here.
const SOFT_RESET_V1 = 3;
const CONTROL_V1 = 4;
const ACK_V1 = 5;
const HARD_RESET_CLIENT_V2 = 7;
const HARD_RESET_SERVER_V2 = 8;

const bytes = (...values: number[]) => new Uint8Array(values);

/** The message ids of the packets that carry one. */
function ids(packets: OutgoingPacket[]): number[] {
  return packets.flatMap((packet) => packet.messageId === undefined ? [] : [packet.messageId]);
}

/** mulberry32: a small seeded PRNG, so that every run of a lossy link is the same. */
function prng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

// ---------------------------------------------------------------------------------------------
// Two Reliables over a simulated link with a fake clock.

interface LinkConditions {
  /** Chance that a packet is lost. */
  loss?: number;
  /** Chance that an ack-only packet is lost (on top of `loss`). */
  ackLoss?: number;
  /** Every packet is sent twice (each copy may be lost or delayed on its own). */
  duplicate?: boolean;
  /** Extra random delay in ms, which reorders packets sent close together. */
  jitterMs?: number;
}

/** One end of the link, with what the simulation knows about it. */
interface End {
  name: string;
  rel: Reliable;
  /** Payloads the application has queued so far. */
  queued: number;
  /** What it delivered, in order. */
  inbox: { opcode: number; payload: Uint8Array }[];
  /** The peer's message ids it has received: every ACK it sends must be one of them. */
  receivedIds: Set<number>;
  /** Its own ids the peer has acked, as far as it has heard. */
  ackedIds: Set<number>;
  /** Arrivals with a message id above every one before (proves reordering happened). */
  overtakes: number;
  highestArrived: number;
}

interface Flight {
  at: number;
  order: number;
  to: End;
  packet: OutgoingPacket;
}

const LATENCY_MS = 5;
const PAYLOADS = 200;
const MAX_STEPS = 200_000;
const MAX_SIM_MS = 3_600_000;

/** The i-th payload of `end`: its name and index, so that a mix-up or a gap shows. */
function payloadOf(name: string, i: number): Uint8Array {
  return new TextEncoder().encode(`${name}:${i}`);
}

/** The opcode of the i-th payload: a reset first, as on a real session. */
function opcodeOf(name: string, i: number): number {
  if (i > 0) return CONTROL_V1;
  return name === "client" ? HARD_RESET_CLIENT_V2 : HARD_RESET_SERVER_V2;
}

function newEnd(name: string): End {
  return {
    name,
    rel: new Reliable(),
    queued: 0,
    inbox: [],
    receivedIds: new Set(),
    ackedIds: new Set(),
    overtakes: 0,
    highestArrived: -1,
  };
}

/** Checks one packet `from` puts on the wire against the promises of the layer. */
function checkOutgoing(from: End, packet: OutgoingPacket): void {
  for (const id of packet.acks) {
    assert(from.receivedIds.has(id), `${from.name} acked ${id}, which it never received`);
  }
  if (packet.messageId === undefined) {
    assertEquals(packet.opcode, ACK_V1, `${from.name}: a packet without id is not an ACK_V1`);
    assertEquals(packet.payload.length, 0);
    assert(packet.acks.length >= 1, `${from.name}: an empty ACK_V1`);
    assert(packet.acks.length <= 8, `${from.name}: ACK_V1 with ${packet.acks.length} acks`);
    return;
  }
  assert(packet.acks.length <= 4, `${from.name}: control packet with ${packet.acks.length} acks`);
  let oldestUnacked = 0;
  while (from.ackedIds.has(oldestUnacked)) oldestUnacked++;
  assert(
    packet.messageId < oldestUnacked + 6,
    `${from.name} sent ${packet.messageId} while ${oldestUnacked} was unacked`,
  );
}

/** `to` receives `packet`. */
function arrive(to: End, packet: OutgoingPacket): void {
  const fresh = to.rel.acked(packet.acks);
  let newlyAcked = 0;
  for (const id of packet.acks) {
    if (!to.ackedIds.has(id)) newlyAcked++;
    to.ackedIds.add(id);
  }
  assertEquals(fresh, newlyAcked, `${to.name}: acked() miscounted new acks`);
  if (packet.messageId === undefined) return;
  to.receivedIds.add(packet.messageId);
  if (packet.messageId > to.highestArrived + 1) to.overtakes++;
  to.highestArrived = Math.max(to.highestArrived, packet.messageId);
  to.inbox.push(...to.rel.received(packet.messageId, packet.opcode, packet.payload));
}

/** Runs 200 payloads each way over the link; returns both ends when all arrived. */
function simulate(seed: number, conditions: LinkConditions): { client: End; server: End } {
  const random = prng(seed);
  const client = newEnd("client");
  const server = newEnd("server");
  const flights: Flight[] = [];
  let order = 0;
  let now = 0;

  const transmit = (from: End, to: End) => {
    for (const packet of from.rel.poll(now)) {
      checkOutgoing(from, packet);
      for (let copy = 0; copy < (conditions.duplicate ? 2 : 1); copy++) {
        if (random() < (conditions.loss ?? 0)) continue;
        if (packet.messageId === undefined && random() < (conditions.ackLoss ?? 0)) continue;
        const at = now + LATENCY_MS + random() * (conditions.jitterMs ?? 0);
        flights.push({ at, order: order++, to, packet });
      }
    }
  };
  const feed = (end: End) => {
    while (end.queued < PAYLOADS && end.rel.room > 0) {
      end.rel.send(opcodeOf(end.name, end.queued), payloadOf(end.name, end.queued));
      end.queued++;
    }
  };
  const done = () =>
    client.inbox.length === PAYLOADS && server.inbox.length === PAYLOADS &&
    client.rel.idle && server.rel.idle;

  for (let step = 0; step < MAX_STEPS && !done(); step++) {
    feed(client);
    feed(server);
    transmit(client, server);
    transmit(server, client);
    const candidates = [client.rel.nextDeadline(), server.rel.nextDeadline()]
      .concat(flights.map((flight) => flight.at))
      .filter((at): at is number => at !== undefined);
    assert(candidates.length > 0, `seed ${seed}: stalled at ${now} ms with nothing pending`);
    now = Math.max(now, Math.min(...candidates));
    assert(now < MAX_SIM_MS, `seed ${seed}: not done after an hour of simulated time`);
    flights.sort((x, y) => x.at - y.at || x.order - y.order);
    while (flights.length > 0 && flights[0]!.at <= now) {
      const flight = flights.shift()!;
      arrive(flight.to, flight.packet);
    }
  }
  assert(done(), `seed ${seed}: not done after ${MAX_STEPS} steps`);
  for (const [end, peer] of [[client, server], [server, client]] as const) {
    const expected = Array.from({ length: PAYLOADS }, (_, i) => ({
      opcode: opcodeOf(peer.name, i),
      payload: payloadOf(peer.name, i),
    }));
    assertEquals(end.inbox, expected, `seed ${seed}: ${end.name} got a gap, a mix-up or extras`);
  }
  return { client, server };
}

const SEEDS = [1, 2, 3, 4, 5];

Deno.test("Reliable delivers 200 payloads each way complete and in order under 30% loss", () => {
  for (const seed of SEEDS) {
    const { client, server } = simulate(seed, { loss: 0.3 });
    assert(client.rel.stats.retransmits > 0 && server.rel.stats.retransmits > 0);
  }
});

Deno.test("Reliable delivers 200 payloads each way when every packet is duplicated", () => {
  for (const seed of SEEDS) {
    const { client, server } = simulate(seed, { duplicate: true });
    assert(client.rel.stats.duplicates >= PAYLOADS && server.rel.stats.duplicates >= PAYLOADS);
  }
});

Deno.test("Reliable delivers 200 payloads each way in order under random reordering", () => {
  for (const seed of SEEDS) {
    const { client, server } = simulate(seed, { jitterMs: 40 });
    assert(client.overtakes > 0 && server.overtakes > 0, `seed ${seed}: nothing was reordered`);
  }
});

Deno.test("Reliable delivers 200 payloads each way under loss, duplication and reordering", () => {
  for (const seed of SEEDS) {
    const { client, server } = simulate(seed, { loss: 0.3, duplicate: true, jitterMs: 40 });
    for (const end of [client, server]) {
      const stats = end.rel.stats;
      assert(stats.retransmits > 0 && stats.duplicates > 0 && end.overtakes > 0);
    }
  }
});

Deno.test("Reliable delivers 200 payloads each way when most ack-only packets are lost", () => {
  for (const seed of SEEDS) simulate(seed, { ackLoss: 0.7, jitterMs: 10 });
});

// ---------------------------------------------------------------------------------------------
// Sending.

Deno.test("Reliable numbers packets 0, 1, 2, … and keeps at most 6 ids in flight", () => {
  const rel = new Reliable();
  rel.send(HARD_RESET_CLIENT_V2, bytes());
  for (let i = 1; i < 10; i++) rel.send(CONTROL_V1, bytes(i));
  const first = rel.poll(0);
  assertEquals(ids(first), [0, 1, 2, 3, 4, 5]);
  assertEquals(first[0]!.opcode, HARD_RESET_CLIENT_V2);
  assertEquals(first[3]!.payload, bytes(3));
  assertEquals(rel.poll(1), []);
  // Later acks do not open the window while id 0 is still out (the span counts, as stock);
  // they do make 0 due for a fast retransmit.
  assertEquals(rel.acked([1, 2, 3, 4, 5]), 5);
  assertEquals(ids(rel.poll(2)), [0]);
  assertEquals(rel.acked([0]), 1);
  assertEquals(ids(rel.poll(3)), [6, 7, 8, 9]);
});

Deno.test("Reliable retransmits after 2, 4, 8, 16 s and then every 16 s (exact deadlines)", () => {
  const rel = new Reliable();
  rel.send(HARD_RESET_CLIENT_V2, bytes());
  assertEquals(rel.nextDeadline(), 0, "a new packet is due at once");
  assertEquals(ids(rel.poll(1_000)), [0]);
  const expected = [3_000, 7_000, 15_000, 31_000, 47_000, 63_000];
  for (const deadline of expected) {
    assertEquals(rel.nextDeadline(), deadline);
    assertEquals(rel.poll(deadline - 1), [], `nothing due 1 ms before ${deadline}`);
    assertEquals(ids(rel.poll(deadline)), [0]);
  }
  assertEquals(rel.stats.retransmits, expected.length);
  // A late poll counts the next wait from when the packet really went out.
  assertEquals(ids(rel.poll(90_000)), [0]);
  assertEquals(rel.nextDeadline(), 106_000);
});

Deno.test("Reliable honours initialTimeoutMs and maxTimeoutMs", () => {
  const rel = new Reliable({ initialTimeoutMs: 500, maxTimeoutMs: 3_000 });
  rel.send(CONTROL_V1, bytes());
  rel.poll(0);
  const deadlines: (number | undefined)[] = [];
  for (let i = 0; i < 5; i++) {
    const deadline = rel.nextDeadline()!;
    deadlines.push(deadline);
    rel.poll(deadline);
  }
  assertEquals(deadlines, [500, 1_500, 3_500, 6_500, 9_500]);
});

Deno.test("Reliable resends a packet early once 3 later packets were acked", () => {
  const rel = new Reliable();
  for (let i = 0; i < 4; i++) rel.send(CONTROL_V1, bytes(i));
  assertEquals(ids(rel.poll(0)), [0, 1, 2, 3]);
  assertEquals(rel.acked([1, 2]), 2);
  assertEquals(rel.acked([2, 1]), 0, "repeated acks are not new");
  assertEquals(rel.nextDeadline(), 2_000, "two later acks (one repeated) are not enough");
  assertEquals(rel.poll(10), []);
  assertEquals(rel.acked([3]), 1);
  assertEquals(rel.nextDeadline(), 0);
  assertEquals(ids(rel.poll(20)), [0]);
  assertEquals(rel.stats.retransmits, 1);
  assertEquals(rel.nextDeadline(), 4_020, "an early resend doubles the timeout too");
  assertEquals(rel.poll(30), [], "the later acks were used up by the resend");
});

Deno.test("Reliable.resendAll() makes every unacked packet due now with the first timeout", () => {
  const rel = new Reliable();
  for (let i = 0; i < 3; i++) rel.send(CONTROL_V1, bytes(i));
  rel.poll(0);
  assertEquals(ids(rel.poll(2_000)), [0, 1, 2]);
  assertEquals(rel.nextDeadline(), 6_000);
  rel.acked([1]);
  rel.resendAll(2_500);
  assertEquals(rel.nextDeadline(), 2_500);
  assertEquals(ids(rel.poll(2_500)), [0, 2]);
  assertEquals(rel.nextDeadline(), 4_500, "the timeout is back at 2 s");
  assertEquals(rel.stats.retransmits, 5);
});

Deno.test("Reliable.send() throws RangeError beyond the 64-packet backlog", () => {
  const rel = new Reliable();
  assertEquals(rel.room, 70);
  for (let i = 0; i < 70; i++) rel.send(CONTROL_V1, bytes(i));
  assertEquals(rel.room, 0);
  assertThrows(() => rel.send(CONTROL_V1, bytes()), RangeError, /already unacked or queued/);
  assertEquals(ids(rel.poll(0)), [0, 1, 2, 3, 4, 5]);
  rel.acked([0, 1, 2]);
  assertEquals(rel.room, 3);
  for (let i = 0; i < 3; i++) rel.send(CONTROL_V1, bytes());
  assertThrows(() => rel.send(CONTROL_V1, bytes()), RangeError);
  assertEquals(ids(rel.poll(1)), [6, 7, 8]);

  const small = new Reliable({ backlog: 0, sendWindow: 2 });
  small.send(CONTROL_V1, bytes());
  small.send(CONTROL_V1, bytes());
  assertThrows(() => small.send(CONTROL_V1, bytes()), RangeError);
});

Deno.test("Reliable.send() rejects opcodes that carry no message id", () => {
  const rel = new Reliable();
  for (const opcode of [ACK_V1, 6, 9, 1, 2, 0, 12, -1, 4.5]) {
    assertThrows(() => rel.send(opcode, bytes()), RangeError, /reliably/);
  }
  for (const opcode of [SOFT_RESET_V1, CONTROL_V1, 7, 8, 10, 11]) rel.send(opcode, bytes());
  assertEquals(ids(rel.poll(0)), [0, 1, 2, 3, 4, 5]);
});

Deno.test("Reliable.acked() ignores unknown, unsent and malformed ids", () => {
  const rel = new Reliable();
  for (let i = 0; i < 8; i++) rel.send(CONTROL_V1, bytes());
  rel.poll(0); // 0…5 sent, 6 and 7 wait
  assertEquals(rel.acked([6, 7, 99, -1, 0.5, NaN, 2 ** 32, Infinity]), 0);
  assertEquals(rel.nextDeadline(), 2_000);
  assertEquals(rel.acked([0, 0, 0]), 1);
  assertEquals(rel.acked([0]), 0, "already acked");
});

Deno.test("Reliable.idle is true exactly when everything sent was acked", () => {
  const rel = new Reliable();
  assert(rel.idle);
  assertEquals(rel.nextDeadline(), undefined);
  rel.send(SOFT_RESET_V1, bytes());
  assert(!rel.idle, "queued");
  rel.poll(0);
  assert(!rel.idle, "in flight");
  rel.acked([0]);
  assert(rel.idle);
  assertEquals(rel.nextDeadline(), undefined);
  assertEquals(rel.poll(10_000), []);
});

// ---------------------------------------------------------------------------------------------
// Receiving and acking.

Deno.test("Reliable.received() delivers out-of-order packets in message-id order", () => {
  const rel = new Reliable();
  assertEquals(rel.received(2, CONTROL_V1, bytes(2)), []);
  assertEquals(rel.received(1, CONTROL_V1, bytes(1)), []);
  assertEquals(rel.received(0, HARD_RESET_SERVER_V2, bytes(0)), [
    { opcode: HARD_RESET_SERVER_V2, payload: bytes(0) },
    { opcode: CONTROL_V1, payload: bytes(1) },
    { opcode: CONTROL_V1, payload: bytes(2) },
  ]);
  assertEquals(rel.received(4, CONTROL_V1, bytes(4)), []);
  assertEquals(rel.received(3, CONTROL_V1, bytes(3)), [
    { opcode: CONTROL_V1, payload: bytes(3) },
    { opcode: CONTROL_V1, payload: bytes(4) },
  ]);
  const [ack] = rel.poll(0);
  assertEquals(ack?.acks, [2, 1, 0, 4, 3], "every buffered packet is acked, in arrival order");
});

Deno.test("Reliable drops a packet beyond the receive window without acking it", () => {
  const rel = new Reliable();
  assertEquals(rel.received(12, CONTROL_V1, bytes(12)), []);
  assertEquals(rel.stats.outOfWindow, 1);
  assertEquals(rel.nextDeadline(), undefined);
  assertEquals(rel.poll(0), [], "no ACK for 12");
  assertEquals(rel.received(11, CONTROL_V1, bytes(11)), [], "the last id inside is buffered");
  assertEquals(rel.poll(0).map((packet) => packet.acks), [[11]]);
  for (let id = 0; id < 10; id++) assertEquals(rel.received(id, CONTROL_V1, bytes(id)).length, 1);
  assertEquals(rel.received(10, CONTROL_V1, bytes(10)).length, 2);
  assertEquals(rel.received(12, CONTROL_V1, bytes(12)).length, 1, "12 fits now");
  rel.poll(1); // sends the acks of 0…12
  assertEquals(rel.received(25, CONTROL_V1, bytes()), [], "13 + 12 is the first outside");
  assertEquals(rel.stats.outOfWindow, 2);
  assertEquals(rel.received(24, CONTROL_V1, bytes()), [], "13 + 12 - 1 is the last inside");
  assertEquals(rel.stats.outOfWindow, 2);
  assertEquals(rel.poll(2).map((packet) => packet.acks[0]), [24], "24 acked, 25 not");
});

Deno.test("Reliable.received() drops malformed and > u32 message ids without acking them", () => {
  const rel = new Reliable({ receiveWindow: 64 });
  for (const id of [-1, 0.5, NaN, Infinity, 2 ** 32, 2 ** 53]) {
    assertEquals(rel.received(id, CONTROL_V1, bytes()), []);
  }
  assertEquals(rel.stats.outOfWindow, 6);
  assertEquals(rel.poll(0), []);
  assertEquals(rel.received(0, CONTROL_V1, bytes(7)), [{ opcode: CONTROL_V1, payload: bytes(7) }]);
});

Deno.test("Reliable acks duplicates again and drops them", () => {
  const rel = new Reliable();
  assertEquals(rel.received(0, CONTROL_V1, bytes(0)).length, 1);
  assertEquals(rel.poll(0).map((packet) => packet.acks), [[0]]);
  assertEquals(rel.received(0, CONTROL_V1, bytes(0)), [], "delivered once only");
  assertEquals(rel.stats.duplicates, 1);
  assertEquals(rel.nextDeadline(), 0, "the repeated ACK is due");
  assertEquals(rel.poll(1).map((packet) => packet.acks), [[0]]);
  // A duplicate of a packet still buffered out of order.
  assertEquals(rel.received(2, CONTROL_V1, bytes(2)), []);
  rel.poll(2);
  assertEquals(rel.received(2, CONTROL_V1, bytes(2)), []);
  assertEquals(rel.stats.duplicates, 2);
  assertEquals(rel.poll(3).map((packet) => packet.acks), [[2, 0]]);
  assertEquals(rel.received(1, CONTROL_V1, bytes(1)).map((d) => d.payload), [bytes(1), bytes(2)]);
});

Deno.test("Reliable repeats recently sent acks (MRU) on ACK_V1 and control packets", () => {
  const rel = new Reliable();
  rel.received(0, HARD_RESET_SERVER_V2, bytes());
  assertEquals(rel.poll(0).map((packet) => packet.acks), [[0]]);
  rel.received(1, CONTROL_V1, bytes());
  // Lab A: stock 2.6 sends P_ACK_V1 [1, 0] here.
  assertEquals(rel.poll(1), [{ opcode: ACK_V1, payload: bytes(), acks: [1, 0] }]);
  rel.send(CONTROL_V1, bytes(9));
  assertEquals(rel.poll(2).map((packet) => packet.acks), [[1, 0]], "repeated on a control packet");
  for (let id = 2; id < 12; id++) {
    rel.received(id, CONTROL_V1, bytes());
    rel.poll(id);
  }
  rel.received(12, CONTROL_V1, bytes());
  assertEquals(rel.poll(20).map((packet) => packet.acks), [[12, 11, 10, 9, 8, 7, 6, 5]]);
  assertEquals(rel.nextDeadline(), 2_002, "nothing but the retransmission timer is pending");
});

Deno.test("Reliable puts at most 4 acks on a control packet and at most 8 on an ACK_V1", () => {
  const rel = new Reliable();
  for (let id = 0; id < 10; id++) rel.received(id, CONTROL_V1, bytes());
  rel.send(CONTROL_V1, bytes());
  assertEquals(rel.poll(0), [
    { opcode: CONTROL_V1, messageId: 0, payload: bytes(), acks: [0, 1, 2, 3] },
    { opcode: ACK_V1, payload: bytes(), acks: [4, 5, 6, 7, 8, 9, 0, 1] },
  ]);

  const many = new Reliable({ receiveWindow: 20 });
  for (let id = 0; id < 20; id++) many.received(id, CONTROL_V1, bytes());
  assertEquals(many.poll(0).map((packet) => packet.acks), [
    [0, 1, 2, 3, 4, 5, 6, 7],
    [8, 9, 10, 11, 12, 13, 14, 15],
    [16, 17, 18, 19, 8, 9, 10, 11],
  ]);
});

Deno.test("Reliable keeps at most 32 pending acks under a flood of duplicates", () => {
  const rel = new Reliable();
  for (let id = 0; id < 40; id++) {
    rel.received(id, CONTROL_V1, bytes());
    rel.poll(id);
  }
  for (let round = 0; round < 3; round++) {
    for (let id = 0; id < 40; id++) rel.received(id, CONTROL_V1, bytes());
  }
  assertEquals(rel.stats.duplicates, 120);
  const acks = rel.poll(100).map((packet) => packet.acks);
  assertEquals(acks.length, 4);
  assertEquals(acks.flat().slice(0, 32), Array.from({ length: 32 }, (_, id) => id));
  assertEquals(rel.poll(101), []);
  // Repeats of one id take one place, so a new packet's ACK still gets in.
  for (let round = 0; round < 40; round++) rel.received(7, CONTROL_V1, bytes());
  rel.received(40, CONTROL_V1, bytes());
  assertEquals(rel.poll(102).map((packet) => packet.acks.slice(0, 2)), [[7, 40]]);
});

Deno.test("Reliable rejects options outside their range with RangeError", () => {
  const bad = [
    { sendWindow: 0 },
    { sendWindow: 65 },
    { receiveWindow: 0 },
    { receiveWindow: 1.5 },
    { initialTimeoutMs: 0 },
    { initialTimeoutMs: 3_000, maxTimeoutMs: 2_000 },
    { backlog: -1 },
    { backlog: 5_000 },
  ];
  for (const options of bad) {
    assertThrows(() => new Reliable(options), RangeError, /Invalid Reliable option/);
  }
  new Reliable({ initialTimeoutMs: 30_000 }); // the cap follows a larger first timeout
});
