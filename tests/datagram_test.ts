import { assert, assertEquals, assertThrows } from "./_assert.ts";
import {
  DatagramBatch,
  datagramCounter,
  DatagramCrypto,
  datagramSession,
  DatagramSlots,
  DatagramType,
  deriveKeys,
  HEADER_LEN,
  KeyHalf,
  OVERHEAD,
  writeHeader,
} from "../mod/native/datagram.ts";
import type { CipherName } from "../ffi/crypto.ts";
import { FrameError } from "../mod/native/wire.ts";
import { encodeSockAddr, UdpSocket } from "../ffi/udp.ts";
import { within } from "./_wait.ts";

const CLIENT_RANDOM = new Uint8Array(32).fill(1);
const SERVER_RANDOM = new Uint8Array(32).fill(2);
const SECRET = new Uint8Array(32).fill(9);

Deno.test("writeHeader() puts type, phase, session id and a 64-bit counter in 13 bytes", () => {
  const datagram = new Uint8Array(HEADER_LEN);
  writeHeader(datagram, DatagramType.PONG, 1, 0xdeadbeef, 2 ** 40 + 5);
  assertEquals([...datagram], [0x83, 0xde, 0xad, 0xbe, 0xef, 0, 0, 1, 0, 0, 0, 0, 5]);
  assertEquals(datagramSession(datagram), 0xdeadbeef);
  assertEquals(datagramCounter(datagram), 2 ** 40 + 5);
});

Deno.test("deriveKeys() gives each direction its own key and salt, and each epoch new ones", () => {
  const a = deriveKeys(CLIENT_RANDOM, SERVER_RANDOM, 7, 0, SECRET);
  const b = deriveKeys(CLIENT_RANDOM, SERVER_RANDOM, 7, 1, SECRET);
  const c = deriveKeys(CLIENT_RANDOM, SERVER_RANDOM, 8, 0, SECRET);
  assertEquals(a.clientToServer.key.length, 32);
  assertEquals(a.clientToServer.salt.length, 4);
  assert(a.clientToServer.key.toHex() !== a.serverToClient.key.toHex());
  assert(a.clientToServer.key.toHex() !== b.clientToServer.key.toHex());
  assert(a.clientToServer.key.toHex() !== c.clientToServer.key.toHex());
  assertEquals(deriveKeys(CLIENT_RANDOM, SERVER_RANDOM, 7, 0, SECRET), a, "deterministic");
});

Deno.test("deriveKeys() gives other keys for another X25519 secret: the randoms alone do not make them", () => {
  const a = deriveKeys(CLIENT_RANDOM, SERVER_RANDOM, 7, 1, SECRET);
  const b = deriveKeys(CLIENT_RANDOM, SERVER_RANDOM, 7, 1, new Uint8Array(32).fill(10));
  assert(a.clientToServer.key.toHex() !== b.clientToServer.key.toHex());
  assert(a.serverToClient.key.toHex() !== b.serverToClient.key.toHex());
});

Deno.test("KeyHalf: both sides agree on one secret, and a share of the wrong size or a low-order point is a protocol error", () => {
  const client = new KeyHalf();
  const server = new KeyHalf();
  assertEquals(client.agree(server.share), server.agree(client.share));
  assert(client.random.toHex() !== server.random.toHex());
  assertThrows(() => client.agree(new Uint8Array(31)), FrameError, /32 bytes/);
  // The all-zero point (and the other low-order ones) would give every pair the secret 0.
  assertThrows(() => client.agree(new Uint8Array(32)), FrameError, /not a usable X25519/);
});

function pair(cipher: CipherName, id = 42) {
  const client = new DatagramCrypto(id, cipher, true);
  const server = new DatagramCrypto(id, cipher, false);
  const keys = deriveKeys(CLIENT_RANDOM, SERVER_RANDOM, id, 0, SECRET);
  for (const side of [client, server]) {
    side.installReceive(keys);
    side.installSend(keys);
  }
  return { client, server };
}

function seal(from: DatagramCrypto, payload: Uint8Array, type: DatagramType = DatagramType.DATA) {
  const slots = new DatagramSlots(1, 2048);
  const size = from.seal(type, payload, payload.length, slots.bufs[0]!, slots.bodies[0]!);
  return slots.bufs[0]!.slice(0, size);
}

function open(to: DatagramCrypto, datagram: Uint8Array): Uint8Array | undefined {
  const buf = new Uint8Array(2048);
  buf.set(datagram);
  const out = new Uint8Array(2048);
  const n = to.open(buf, datagram.length, buf.subarray(HEADER_LEN), out);
  return n < 0 ? undefined : out.slice(0, n);
}

for (const cipher of ["aes-256-gcm", "chacha20-poly1305"] as const) {
  Deno.test(`DatagramCrypto (${cipher}) carries packets both ways and nothing else in clear`, () => {
    const { client, server } = pair(cipher);
    const packet = crypto.getRandomValues(new Uint8Array(1400));
    const datagram = seal(client, packet);
    assertEquals(datagram.length, packet.length + OVERHEAD);
    assertEquals(datagramSession(datagram), 42);
    assertEquals(datagramCounter(datagram), 0);
    assert(!datagram.toHex().includes(packet.subarray(0, 16).toHex()), "the payload is encrypted");
    assertEquals(open(server, datagram), packet);
    assertEquals(server.type, DatagramType.DATA);
    const reply = seal(server, new Uint8Array([1, 2, 3]), DatagramType.PONG);
    assertEquals(open(client, reply), new Uint8Array([1, 2, 3]));
    assertEquals(client.type, DatagramType.PONG);
  });
}

Deno.test("DatagramCrypto.open() rejects and counts a replay, a flipped byte and a wrong session's key", () => {
  const { client, server } = pair("aes-256-gcm");
  const datagram = seal(client, new Uint8Array(100).fill(9));
  assert(open(server, datagram) !== undefined);
  assertEquals(open(server, datagram), undefined, "replayed");
  assertEquals(server.rejects.replayed, 1);
  for (const at of [0, 4, 8, HEADER_LEN + 10, datagram.length - 1]) {
    const tampered = seal(client, new Uint8Array(100).fill(9));
    tampered[at]! ^= 0x01;
    assertEquals(open(server, tampered), undefined, `byte ${at} flipped`);
  }
  assertEquals(server.rejects.forged + server.rejects.malformed + server.rejects.replayed, 6);
  const stranger = pair("aes-256-gcm", 43).client;
  assertEquals(open(server, seal(stranger, new Uint8Array(10))), undefined);
  assertEquals(open(server, new Uint8Array(OVERHEAD - 1)), undefined, "too short");
  assert(open(server, seal(client, new Uint8Array(5))) !== undefined, "still works afterwards");
});

Deno.test("DatagramCrypto opens both epochs during a rekey, so nothing in flight is lost", () => {
  const { client, server } = pair("chacha20-poly1305");
  const inFlight = seal(client, new Uint8Array([1]));
  const next = deriveKeys(new Uint8Array(32).fill(3), new Uint8Array(32).fill(4), 42, 1, SECRET);
  // REKEY: the client can receive epoch 1; REKEY_ACK: the server receives and sends epoch 1.
  client.installReceive(next);
  server.installReceive(next);
  server.installSend(next);
  assertEquals(open(client, seal(server, new Uint8Array([2]))), new Uint8Array([2]));
  // REKEY_DONE: the client sends epoch 1; the epoch-0 datagram still opens.
  client.installSend(next);
  assertEquals(open(server, seal(client, new Uint8Array([3]))), new Uint8Array([3]));
  assertEquals(open(server, inFlight), new Uint8Array([1]));
  assertEquals(server.sendEpoch, 1);
});

Deno.test("DatagramCrypto seals up to packet 2^32 + 2^24 - 1 and nothing from 2^32 + 2^24 on", () => {
  const { client, server } = pair("aes-256-gcm");
  client.advanceSendCounter(2 ** 32 + 2 ** 24 - 1);
  const last = seal(client, new Uint8Array([7]));
  assertEquals(datagramCounter(last), 2 ** 32 + 2 ** 24 - 1);
  assertEquals(open(server, last), new Uint8Array([7]), "the last packet is a valid one");
  assertEquals(seal(client, new Uint8Array([8])).length, 0, "nothing sealed at 2^32 + 2^24");
  assertEquals(seal(client, new Uint8Array([9])).length, 0, "nor after");
  assertEquals(client.sent, 2 ** 32 + 2 ** 24);
});

Deno.test("DatagramCrypto.advanceSendCounter() moves the counter forward only", () => {
  const { client } = pair("aes-256-gcm");
  seal(client, new Uint8Array([1]));
  client.advanceSendCounter(1000);
  assertEquals(datagramCounter(seal(client, new Uint8Array([2]))), 1000);
  assertThrows(() => client.advanceSendCounter(1000), RangeError, /only forward/);
  assertThrows(() => client.advanceSendCounter(2 ** 53), RangeError, /only forward/);
  assertEquals(client.sent, 1001);
  const unkeyed = new DatagramCrypto(1, "aes-256-gcm", true);
  assertThrows(() => unkeyed.advanceSendCounter(5), RangeError, /no sending key/);
});

Deno.test("DatagramSlots.forEach() gives a whole slot, or each datagram of a GRO read", () => {
  const slots = new DatagramSlots(2, 4000);
  const seen: [number, number, number][] = [];
  const each = (datagram: Uint8Array, length: number, body: Uint8Array) =>
    seen.push([datagram[0]!, length, body.byteOffset - datagram.byteOffset]);
  slots.sizes[0] = 100;
  slots.bufs[0]![0] = 9;
  slots.forEach(0, 0, each);
  slots.forEach(0, 100, each); // a segment as large as the read: one datagram
  assertEquals(seen, [[9, 100, HEADER_LEN], [9, 100, HEADER_LEN]]);
  seen.length = 0;
  slots.sizes[1] = 3 * 1000 + 400;
  for (let k = 0; k < 4; k++) slots.bufs[1]![k * 1000] = k;
  slots.forEach(1, 1000, each);
  assertEquals(seen, [[0, 1000, HEADER_LEN], [1, 1000, HEADER_LEN], [2, 1000, HEADER_LEN], [
    3,
    400,
    HEADER_LEN,
  ]]);
});

Deno.test("DatagramBatch refuses a packet whose datagram would pass 65,507 bytes, and sends the rest of its batch", async () => {
  const { client, server } = pair("aes-256-gcm");
  using receiver = UdpSocket.bind("127.0.0.1", 0);
  using sender = UdpSocket.bind("127.0.0.1", 0);
  const batch = new DatagramBatch(sender);
  const to = encodeSockAddr("127.0.0.1", receiver.port);
  // 13 + 65,478 + 16 = 65,507 bytes: the largest UDP payload; one byte more cannot be sent.
  assertEquals(batch.add(client, DatagramType.DATA, new Uint8Array(65_479), 65_479, to), false);
  // Longer than a slot can seal: refused too, rather than thrown (which lost the whole batch).
  assertEquals(batch.add(client, DatagramType.DATA, new Uint8Array(65_535), 65_535, to), false);
  assert(batch.add(client, DatagramType.DATA, new Uint8Array([7]), 1, to));
  assert(batch.add(client, DatagramType.DATA, new Uint8Array(65_478), 65_478, to));
  batch.flush();
  const slots = new DatagramSlots(4);
  const lengths: number[] = [];
  while (lengths.length < 2) {
    const n = await within(receiver.recv(slots.bufs, slots.sizes, slots.addrs), 5000, "datagrams");
    for (let i = 0; i < n; i++) {
      const out = new Uint8Array(65_535);
      lengths.push(server.open(slots.bufs[i]!, slots.sizes[i]!, slots.bodies[i]!, out));
    }
  }
  assertEquals(lengths, [1, 65_478]);
});
