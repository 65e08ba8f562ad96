import { assert, assertEquals, assertMatch, assertThrows } from "./_assert.ts";
import {
  encodeFrame,
  FrameError,
  FrameReader,
  FrameType,
  FrameWriter,
  HEADER_LEN,
  MAX_PAYLOAD,
  MIN_FRAME_BUFFER,
} from "../mod/native/wire.ts";
import {
  decodeAuth,
  decodeHello,
  decodePush,
  decodeRekey,
  decodeUdpAccept,
  decodeUdpOffer,
  encodeMessage,
  keyMaterial,
  type Push,
} from "../mod/native/messages.ts";

/**
 * Reads `bytes` into `reader` as a socket would: at most what each `space()` offers. Without
 * `onFrame` the bytes must fit the reader's capacity; with it, frames are parsed as they come.
 */
function feed(reader: FrameReader, bytes: Uint8Array, onFrame?: () => void): void {
  for (let off = 0; off < bytes.length;) {
    const space = reader.space();
    if (space.length === 0) throw new Error("the reader is full: parse its frames");
    const count = Math.min(space.length, bytes.length - off);
    space.set(bytes.subarray(off, off + count));
    reader.commit(count);
    off += count;
    while (onFrame !== undefined && reader.next()) onFrame();
  }
}

Deno.test("encodeFrame() writes type and a 24-bit big-endian length", () => {
  const frame = encodeFrame(FrameType.PING, new Uint8Array([9, 8, 7]));
  assertEquals([...frame], [0x05, 0, 0, 3, 9, 8, 7]);
  const big = encodeFrame(FrameType.DATA, new Uint8Array(MAX_PAYLOAD));
  assertEquals([...big.subarray(0, 4)], [0, 0x01, 0x00, 0x09]);
});

Deno.test("FrameReader.next() parses several frames from one read", () => {
  const writer = new FrameWriter();
  writer.add(FrameType.DATA, new Uint8Array([1, 2, 3]));
  writer.add(FrameType.PING, new Uint8Array(8).fill(4));
  writer.add(FrameType.DATA, new Uint8Array(1400).fill(5), 100);
  const reader = new FrameReader();
  feed(reader, writer.bytes());
  const frames: [number, number[]][] = [];
  while (reader.next()) frames.push([reader.type, [...reader.payload()].slice(0, 3)]);
  assertEquals(frames, [[0, [1, 2, 3]], [5, [4, 4, 4]], [0, [5, 5, 5]]]);
  assertEquals(reader.payloadEnd - reader.payloadStart, 100);
});

Deno.test("FrameReader.next() waits for a frame split across reads", () => {
  const frame = encodeFrame(FrameType.DATA, new Uint8Array(3000).fill(6));
  const whole = new FrameReader();
  feed(whole, frame.subarray(0, 2));
  assert(!whole.next());
  feed(whole, frame.subarray(2, 1800));
  assert(!whole.next());
  feed(whole, frame.subarray(1800));
  assert(whole.next());
  assertEquals(whole.payload().length, 3000);
  assert(!whole.next());
});

Deno.test("FrameReader.space() keeps unparsed bytes across many reads", () => {
  const reader = new FrameReader();
  const frame = encodeFrame(FrameType.DATA, new Uint8Array(50_000).fill(1));
  let parsed = 0;
  for (let round = 0; round < 40; round++) {
    for (let off = 0; off < frame.length; off += 7000) {
      feed(reader, frame.subarray(off, Math.min(off + 7000, frame.length)));
      while (reader.next()) parsed++;
    }
  }
  assertEquals(parsed, 40);
});

Deno.test("FrameReader.next() takes a 65,545-byte payload whole, the largest PROTOCOL.md allows", () => {
  const reader = new FrameReader();
  const frame = new Uint8Array(4 + 65_545);
  frame.set([0, 0x01, 0x00, 0x09]);
  frame[4 + 65_544] = 0x5a;
  feed(reader, frame);
  assert(reader.next());
  assertEquals([reader.type, reader.payloadEnd - reader.payloadStart], [FrameType.DATA, 65_545]);
  assertEquals(reader.buffer[reader.payloadEnd - 1], 0x5a);
});

Deno.test("FrameReader.next() refuses an oversized frame and an unknown type", () => {
  const oversized = new FrameReader();
  feed(oversized, new Uint8Array([0, 0x01, 0x00, 0x0a]));
  assertThrows(() => oversized.next(), FrameError, /65546 bytes exceeds the 65545-byte limit/);
  const unknown = new FrameReader();
  feed(unknown, new Uint8Array([0x42, 0, 0, 0]));
  assertThrows(() => unknown.next(), FrameError, /unknown frame type 0x42/);
});

Deno.test("FrameWriter.add() refuses a frame that does not fit, then takes it after reset()", () => {
  const writer = new FrameWriter(HEADER_LEN + MAX_PAYLOAD);
  const packet = new Uint8Array(MAX_PAYLOAD);
  assert(writer.add(FrameType.DATA, packet));
  assert(!writer.add(FrameType.DATA, new Uint8Array(1)));
  writer.reset();
  assertEquals(writer.length, 0);
  assert(writer.add(FrameType.DATA, new Uint8Array(1)));
});

Deno.test("FrameReader starts at 4 KiB, grows for a burst and a large frame, and trim() takes it back once quiet", () => {
  const reader = new FrameReader();
  assertEquals(reader.buffer.length, MIN_FRAME_BUFFER);
  // A burst: reads that fill what they are offered double the buffer, up to its capacity.
  const burst = new FrameWriter(1 << 20);
  for (let i = 0; i < 200; i++) burst.add(FrameType.DATA, new Uint8Array(1400).fill(i));
  let frames = 0;
  feed(reader, burst.bytes(), () => frames++);
  assertEquals(frames, 200);
  const grown = reader.buffer.length;
  assert(grown >= 256 * 1024, `grew to ${grown}`);
  // A trim right after the burst keeps the buffer: that interval needed it.
  reader.trim();
  feed(reader, encodeFrame(FrameType.PING, new Uint8Array(8)));
  assert(reader.next());
  assertEquals(reader.buffer.length, grown);
  // A quiet interval (only small reads): the next space() of an empty buffer shrinks it.
  reader.trim();
  reader.space();
  assertEquals(reader.buffer.length, MIN_FRAME_BUFFER);
  // A largest frame arriving in pieces makes room for itself.
  const large = encodeFrame(FrameType.DATA, new Uint8Array(MAX_PAYLOAD).fill(7));
  feed(reader, large.subarray(0, 100));
  assert(!reader.next());
  feed(reader, large.subarray(100));
  assert(reader.next());
  assertEquals(reader.payload().length, MAX_PAYLOAD);
  assertEquals(reader.payload()[MAX_PAYLOAD - 1], 7);
});

Deno.test("FrameWriter holds no buffer until its first frame, grows up to its capacity, and trim() sizes an empty one for the last interval", () => {
  const writer = new FrameWriter(256 * 1024);
  assertEquals(writer.allocated, 0);
  writer.trim();
  assertEquals(writer.allocated, 0, "nothing sent: still nothing held");
  let added = 0;
  while (writer.add(FrameType.DATA, new Uint8Array(1400).fill(added))) {
    if (added++ === 0) assertEquals(writer.allocated, MIN_FRAME_BUFFER);
  }
  assertEquals(added, Math.floor(256 * 1024 / (HEADER_LEN + 1400)));
  assertEquals(writer.allocated, 256 * 1024);
  // The frames survive each growth.
  const reader = new FrameReader(1 << 20);
  const firsts: number[] = [];
  feed(reader, writer.bytes(), () => firsts.push(reader.payload()[0]!));
  assertEquals(firsts, Array.from({ length: added }, (_, i) => i & 0xff));
  writer.reset();
  writer.trim();
  assertEquals(writer.allocated, 256 * 1024, "the last interval needed it");
  writer.add(FrameType.PING, new Uint8Array(8));
  writer.trim();
  assertEquals(writer.allocated, 256 * 1024, "a writer holding frames keeps its buffer");
  writer.reset();
  writer.add(FrameType.PING, new Uint8Array(8));
  writer.reset();
  writer.trim();
  assertEquals(writer.allocated, MIN_FRAME_BUFFER, "a quiet interval needed 4 KiB");
  writer.trim();
  assertEquals(writer.allocated, 0, "an idle interval needed none");
  assert(writer.add(FrameType.DATA, new Uint8Array(MAX_PAYLOAD)), "a largest frame still fits");
});

/** A PUSH as a server sends it. */
const PUSH: Push = {
  address: "10.8.0.2",
  prefix: 24,
  gateway: "10.8.0.1",
  routes: ["192.168.50.0/24"],
  mtu: 1400,
  keepalive: { interval: 10, timeout: 60 },
};

Deno.test("decodePush() round-trips a PUSH message", () => {
  assertEquals(decodePush(encodeMessage(PUSH)), PUSH);
});

Deno.test("decodePush() refuses what the client must not apply: a bad address, prefix or route, over 256 routes", () => {
  const good = PUSH;
  const bad = (change: Record<string, unknown>) =>
    assertThrows(() => decodePush(encodeMessage({ ...good, ...change } as Push)), FrameError);
  assertMatch(bad({ address: "10.8.0.256" }).message, /"address" must be an IPv4 address/);
  assertMatch(bad({ gateway: "fd00::1" }).message, /"gateway" must be an IPv4 address/);
  assertMatch(bad({ prefix: 0 }).message, /"prefix"/);
  assertMatch(bad({ prefix: 31 }).message, /"prefix"/);
  assertMatch(bad({ mtu: 575 }).message, /"mtu"/);
  for (const route of ["fd00::/64", "192.168.50.1/24", "10.0.0.0/33", "x"]) {
    assertMatch(bad({ routes: [route] }).message, /at most 256 IPv4 networks/, route);
  }
  const many = Array.from({ length: 257 }, (_, i) => `10.${i >> 8}.${i & 255}.0/24`);
  assertMatch(bad({ routes: many }).message, /at most 256 IPv4 networks/);
  assertEquals(
    decodePush(encodeMessage({ ...good, routes: many.slice(0, 256) })).routes.length,
    256,
  );
});

Deno.test("decodeAuth() and decodeHello() refuse malformed payloads with FrameError", () => {
  const bytes = (text: string) => new TextEncoder().encode(text);
  assertThrows(() => decodeHello(bytes("not json")), FrameError, /not UTF-8 JSON/);
  assertThrows(() => decodeHello(bytes("[1]")), FrameError, /not a JSON object/);
  assertThrows(() => decodeHello(new Uint8Array([0xff, 0xfe])), FrameError, /not UTF-8 JSON/);
  assertThrows(
    () => decodeAuth(bytes(JSON.stringify({ version: 1, cert: 5 }))),
    FrameError,
    /"cert" must be a string/,
  );
  assertThrows(
    () => decodePush(bytes(JSON.stringify({ routes: "x" }))),
    FrameError,
    /"routes" must be a list/,
  );
});

Deno.test("decodeUdpOffer(), decodeUdpAccept() and decodeRekey() check the key material and cipher", () => {
  const bytes = (value: unknown) => new TextEncoder().encode(JSON.stringify(value));
  const random = new Uint8Array(32).fill(7).toBase64();
  const share = new Uint8Array(32).fill(5).toBase64();
  assertEquals(
    decodeUdpOffer(bytes({ ciphers: ["aes-256-gcm"], random, share })).random,
    random,
  );
  assertThrows(
    () => decodeUdpOffer(bytes({ ciphers: ["aes-256-gcm"], random })),
    FrameError,
    /"share" must be a string/,
  );
  assertThrows(
    () =>
      decodeUdpAccept(bytes({ cipher: "aes-256-gcm", session: 1, random, share: random + "AA" })),
    FrameError,
    /"share"/,
  );
  assertThrows(
    () => decodeUdpOffer(bytes({ ciphers: [], random: new Uint8Array(16).toBase64() })),
    FrameError,
    /"random" must be 32 bytes/,
  );
  assertThrows(
    () => decodeUdpOffer(bytes({ ciphers: [], random: "@@@" })),
    FrameError,
    /"random" is not base64/,
  );
  assertThrows(
    () => decodeUdpAccept(bytes({ cipher: "rot13", session: 1, random })),
    FrameError,
    /cipher "rot13" was not offered/,
  );
  const rekey = decodeRekey(bytes({ epoch: 2 }), "REKEY_ACK");
  assertThrows(() => keyMaterial(rekey, "REKEY_ACK"), FrameError, /"random" is missing/);
  const noShare = decodeRekey(bytes({ epoch: 2, random }), "REKEY");
  assertThrows(() => keyMaterial(noShare, "REKEY"), FrameError, /"share" is missing/);
  const material = keyMaterial(decodeRekey(bytes({ epoch: 2, random, share }), "REKEY"), "REKEY");
  assertEquals([material.random.length, material.share.length], [32, 32]);
});
