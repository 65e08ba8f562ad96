import { assert, assertEquals, assertThrows } from "./_assert.ts";
import { DatagramType } from "../mod/native/datagram.ts";
import {
  type ControlBody,
  decodeControlBody,
  decodeControlPacket,
  encodeControlBody,
  encodeControlPacket,
  firstByte,
  frameTcp,
  isControlOpcode,
  isOpenVpnFirstByte,
  keyIdOf,
  MAX_ACKS,
  Opcode,
  opcodeOf,
  OpenVpnPacketError,
  SESSION_ID_LEN,
  TcpFramer,
} from "../mod/openvpn/packet.ts";

const hex = (text: string) => Uint8Array.fromHex(text.replaceAll(" ", ""));
const CLIENT_SID = hex("1cde327595e33b82");
const SERVER_SID = hex("79fbbef1645e2321");
const EMPTY = new Uint8Array();

/** A deterministic PRNG (xorshift32), so that a failing fuzz case can be replayed. */
function random(seed: number): () => number {
  let state = seed;
  return () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 2 ** 32;
  };
}

Deno.test("Opcode has the numbers of OPENVPN.md 1.2", () => {
  assertEquals({ ...Opcode }, {
    SOFT_RESET_V1: 3,
    CONTROL_V1: 4,
    ACK_V1: 5,
    DATA_V1: 6,
    HARD_RESET_CLIENT_V2: 7,
    HARD_RESET_SERVER_V2: 8,
    DATA_V2: 9,
    HARD_RESET_CLIENT_V3: 10,
    CONTROL_WKC_V1: 11,
  });
  assertEquals(SESSION_ID_LEN, 8);
  assertEquals(MAX_ACKS, 8);
});

Deno.test("opcodeOf() and keyIdOf() split byte 0 into its high 5 and low 3 bits", () => {
  assertEquals([opcodeOf(0x38), keyIdOf(0x38)], [7, 0]);
  assertEquals([opcodeOf(0x19), keyIdOf(0x19)], [3, 1]);
  assertEquals([opcodeOf(0x4f), keyIdOf(0x4f)], [9, 7]);
  assertEquals([opcodeOf(0xff), keyIdOf(0xff)], [31, 7]);
  assertEquals(firstByte(Opcode.SOFT_RESET_V1, 7), 0x1f);
  assertThrows(() => firstByte(32, 0), RangeError);
  assertThrows(() => firstByte(4, 8), RangeError);
});

Deno.test("isOpenVpnFirstByte() accepts exactly opcodes 3..11 (0x18-0x5f)", () => {
  for (let byte = 0; byte < 256; byte++) {
    assertEquals(isOpenVpnFirstByte(byte), byte >= 0x18 && byte <= 0x5f, `0x${byte.toString(16)}`);
  }
  assert(!isOpenVpnFirstByte(-1));
  assert(!isOpenVpnFirstByte(256));
  assert(!isOpenVpnFirstByte(0x20 + 0.5));
});

Deno.test("isOpenVpnFirstByte() is false for every first byte of our own datagrams", () => {
  // mod/native/datagram.ts writes type | phase << 7.
  const native = new Set<number>();
  for (const type of Object.values(DatagramType)) {
    for (const phase of [0, 1]) native.add(type | (phase << 7));
  }
  assertEquals([...native].sort((a, b) => a - b), [0x01, 0x02, 0x03, 0x81, 0x82, 0x83]);
  for (let byte = 0; byte < 256; byte++) {
    assert(!(native.has(byte) && isOpenVpnFirstByte(byte)), `0x${byte.toString(16)} is both`);
  }
});

Deno.test("isControlOpcode() is true for the control opcodes only", () => {
  const control = [3, 4, 5, 7, 8, 10, 11];
  for (let opcode = 0; opcode < 32; opcode++) {
    assertEquals(isControlOpcode(opcode), control.includes(opcode), `${opcode}`);
  }
});

Deno.test("encodeControlPacket() writes the 14-byte unwrapped client HARD_RESET", () => {
  const packet = encodeControlPacket(Opcode.HARD_RESET_CLIENT_V2, 0, CLIENT_SID, {
    acks: [],
    messageId: 0,
    payload: EMPTY,
  });
  assertEquals(packet.toHex(), "381cde327595e33b820000000000");
  const decoded = decodeControlPacket(packet);
  assertEquals(decoded.opcode, Opcode.HARD_RESET_CLIENT_V2);
  assertEquals(decoded.keyId, 0);
  assertEquals(decoded.sessionId, CLIENT_SID);
  assertEquals(decoded.body, { acks: [], messageId: 0, payload: EMPTY });
});

// The tls-crypt plaintexts the stock 2.6.14 client logged (OPENVPN.md E2).
const E2 = [
  {
    what: "client reset",
    opcode: Opcode.HARD_RESET_CLIENT_V2,
    bytes: "00 00000000",
    body: { acks: [], messageId: 0, payload: EMPTY },
  },
  {
    what: "server reset",
    opcode: Opcode.HARD_RESET_SERVER_V2,
    bytes: "01 00000000 1cde327595e33b82 00000000",
    body: { acks: [0], peerSessionId: CLIENT_SID, messageId: 0, payload: EMPTY },
  },
  {
    what: "ClientHello",
    opcode: Opcode.CONTROL_V1,
    bytes: "01 00000000 79fbbef1645e2321 00000001 1603010110",
    body: { acks: [0], peerSessionId: SERVER_SID, messageId: 1, payload: hex("1603010110") },
  },
  {
    what: "P_ACK_V1 [1, 0]",
    opcode: Opcode.ACK_V1,
    bytes: "02 00000001 00000000 79fbbef1645e2321",
    body: { acks: [1, 0], peerSessionId: SERVER_SID, payload: EMPTY },
  },
] satisfies { what: string; opcode: number; bytes: string; body: ControlBody }[];

Deno.test("decodeControlBody() reads the stock client's tls-crypt plaintexts (E2)", () => {
  for (const { what, opcode, bytes, body } of E2) {
    assertEquals(decodeControlBody(opcode, hex(bytes)), body, what);
  }
});

Deno.test("encodeControlBody() writes the stock client's tls-crypt plaintexts (E2)", () => {
  for (const { what, opcode, bytes, body } of E2) {
    assertEquals(encodeControlBody(opcode, body).toHex(), bytes.replaceAll(" ", ""), what);
  }
});

Deno.test("encodeControlBody() and decodeControlBody() round-trip 0 to 8 acks on every opcode", () => {
  const next = random(7);
  for (const opcode of [3, 4, 5, 7, 8, 10, 11]) {
    for (let count = 0; count <= MAX_ACKS; count++) {
      const acks = Array.from({ length: count }, () => Math.floor(next() * 2 ** 32));
      const payload = crypto.getRandomValues(new Uint8Array(Math.floor(next() * 100)));
      const body: ControlBody = {
        acks,
        ...(count > 0 && { peerSessionId: crypto.getRandomValues(new Uint8Array(8)) }),
        ...(opcode !== Opcode.ACK_V1 && { messageId: 0xffff_ffff - count }),
        payload,
      };
      assertEquals(decodeControlBody(opcode, encodeControlBody(opcode, body)), body);
    }
  }
});

Deno.test("encodeControlBody() leaves out a peer session id when there are no acks", () => {
  const body = { acks: [], peerSessionId: SERVER_SID, messageId: 3, payload: EMPTY };
  assertEquals(encodeControlBody(Opcode.CONTROL_V1, body).toHex(), "0000000003");
});

Deno.test("decodeControlBody() rejects every truncation of a packet's fixed fields", () => {
  for (const { what, opcode, bytes } of E2) {
    const full = hex(bytes);
    // Everything but the payload must be there; the payload may be cut anywhere.
    const fixed = full.length - (what === "ClientHello" ? 5 : 0);
    for (let length = 0; length < full.length; length++) {
      const prefix = full.subarray(0, length);
      if (length < fixed) {
        assertThrows(() => decodeControlBody(opcode, prefix), OpenVpnPacketError, /truncated/);
      } else {
        assertEquals(decodeControlBody(opcode, prefix).payload, full.subarray(fixed, length));
      }
    }
  }
});

Deno.test("decodeControlPacket() rejects every prefix of the 14-byte client reset", () => {
  const packet = hex("381cde327595e33b820000000000");
  for (let length = 0; length < packet.length; length++) {
    assertThrows(
      () => decodeControlPacket(packet.subarray(0, length)),
      OpenVpnPacketError,
      /truncated/,
    );
  }
  assertEquals(decodeControlPacket(packet).body.messageId, 0);
});

Deno.test("decodeControlBody() rejects 9 acks, even when all their bytes are there", () => {
  const nine = new Uint8Array(1 + 9 * 4 + 8 + 4);
  nine[0] = 9;
  assertThrows(() => decodeControlBody(Opcode.ACK_V1, nine), OpenVpnPacketError, /9 acks/);
  assertThrows(() => decodeControlBody(Opcode.CONTROL_V1, nine), OpenVpnPacketError, /9 acks/);
  nine[0] = 255;
  assertThrows(() => decodeControlBody(Opcode.CONTROL_V1, nine), OpenVpnPacketError, /255 acks/);
  nine[0] = 8;
  assertEquals(decodeControlBody(Opcode.ACK_V1, nine).acks.length, 8);
});

Deno.test("decodeControlBody() names the field a truncation cut", () => {
  const decode = (text: string, opcode: number = Opcode.CONTROL_V1) => () =>
    decodeControlBody(opcode, hex(text));
  assertThrows(decode(""), OpenVpnPacketError, /no ack count/);
  assertThrows(decode("02 00000001 000000"), OpenVpnPacketError, /2 acks do not fit/);
  assertThrows(
    decode("01 00000001 79fbbef1", Opcode.ACK_V1),
    OpenVpnPacketError,
    /without a peer session id/,
  );
  assertThrows(decode("01 00000001 79fbbef1645e2321 000000"), OpenVpnPacketError, /message id/);
});

Deno.test("decodeControlBody() rejects the data opcodes and the removed key-method-1 ones", () => {
  for (const opcode of [0, 1, 2, 6, 9, 12, 31]) {
    assertThrows(
      () => decodeControlBody(opcode, hex("00 00000000")),
      OpenVpnPacketError,
      /not a control opcode/,
    );
  }
});

Deno.test("encodeControlBody() refuses bodies its opcode cannot carry", () => {
  const body = { acks: [], messageId: 0, payload: EMPTY };
  assertThrows(() => encodeControlBody(Opcode.DATA_V2, body), RangeError, /not a control/);
  assertThrows(
    () =>
      encodeControlBody(Opcode.ACK_V1, {
        acks: [1, 2, 3, 4, 5, 6, 7, 8, 9],
        peerSessionId: SERVER_SID,
        payload: EMPTY,
      }),
    RangeError,
    /9 acks/,
  );
  assertThrows(
    () => encodeControlBody(Opcode.ACK_V1, { acks: [1], payload: EMPTY }),
    RangeError,
    /peer session id/,
  );
  assertThrows(
    () =>
      encodeControlBody(Opcode.ACK_V1, {
        acks: [1],
        peerSessionId: SERVER_SID.subarray(1),
        payload: EMPTY,
      }),
    RangeError,
    /7 bytes/,
  );
  assertThrows(() => encodeControlBody(Opcode.ACK_V1, body), RangeError, /ACK_V1/);
  assertThrows(
    () => encodeControlBody(Opcode.CONTROL_V1, { acks: [], payload: EMPTY }),
    RangeError,
    /without a message id/,
  );
  for (const bad of [-1, 2 ** 32, 1.5, NaN]) {
    assertThrows(
      () => encodeControlBody(Opcode.CONTROL_V1, { ...body, messageId: bad }),
      RangeError,
      /u32/,
    );
  }
});

Deno.test("decodeControlBody() and decodeControlPacket() throw only OpenVpnPacketError on noise", () => {
  const next = random(12345);
  for (let i = 0; i < 5000; i++) {
    const bytes = new Uint8Array(Math.floor(next() * 60));
    for (let j = 0; j < bytes.length; j++) bytes[j] = next() * 256;
    // Small ack counts, so that the later fields get exercised too.
    if (bytes.length > 0 && next() < 0.8) bytes[0] = Math.floor(next() * 10);
    for (const decode of [() => decodeControlPacket(bytes), () => decodeControlBody(4, bytes)]) {
      try {
        decode();
      } catch (error) {
        assert(error instanceof OpenVpnPacketError, `${bytes.toHex()}: ${error}`);
      }
    }
  }
});

Deno.test("frameTcp() prefixes the 2-byte big-endian length (E8)", () => {
  const packet = new Uint8Array(0x36).fill(0x38);
  const framed = frameTcp(packet);
  assertEquals(framed.subarray(0, 3).toHex(), "003638");
  assertEquals(framed.length, 0x38);
  assertEquals(frameTcp(new Uint8Array(0xffff)).subarray(0, 2).toHex(), "ffff");
  assertThrows(() => frameTcp(EMPTY), RangeError);
  assertThrows(() => frameTcp(new Uint8Array(0x10000)), RangeError);
});

/** Packets of assorted lengths, one of each length class, and their framed stream. */
function stream(): { packets: Uint8Array[]; bytes: Uint8Array } {
  const packets = [1, 2, 14, 54, 66, 255, 256, 1206, 2048, 3].map((length, i) =>
    new Uint8Array(length).map((_, j) => (i * 31 + j) & 0xff)
  );
  const framed = packets.map(frameTcp);
  const bytes = new Uint8Array(framed.reduce((sum, part) => sum + part.length, 0));
  let offset = 0;
  for (const part of framed) {
    bytes.set(part, offset);
    offset += part.length;
  }
  return { packets, bytes };
}

/** Feeds `bytes` to a framer in chunks of the sizes `size` picks; copies what comes out. */
function feed(bytes: Uint8Array, size: () => number): Uint8Array[] {
  const framer = new TcpFramer(4096);
  const out: Uint8Array[] = [];
  for (let offset = 0; offset < bytes.length;) {
    const end = Math.min(bytes.length, offset + size());
    for (const packet of framer.push(bytes.subarray(offset, end))) out.push(packet.slice());
    offset = end;
  }
  return out;
}

Deno.test("TcpFramer gives the same packets fed one byte at a time", () => {
  const { packets, bytes } = stream();
  assertEquals(feed(bytes, () => 1), packets);
});

Deno.test("TcpFramer gives the same packets fed whole and in big or random chunks", () => {
  const { packets, bytes } = stream();
  assertEquals(feed(bytes, () => bytes.length), packets);
  assertEquals(feed(bytes, () => 1500), packets);
  assertEquals(feed(bytes, () => 3), packets);
  const next = random(99);
  for (let i = 0; i < 50; i++) {
    assertEquals(feed(bytes, () => 1 + Math.floor(next() * 700)), packets);
  }
});

Deno.test("TcpFramer keeps a packet it completed intact while the next one starts", () => {
  const framer = new TcpFramer(100);
  const a = new Uint8Array(10).fill(0xaa);
  const b = new Uint8Array(10).fill(0xbb);
  const bytes = new Uint8Array([...frameTcp(a), ...frameTcp(b)]);
  assertEquals(framer.push(bytes.subarray(0, 7)), []);
  // Completes A from the framer's buffer and leaves half of B in it.
  const [first] = framer.push(bytes.subarray(7, 19));
  assertEquals(first, a);
  assertEquals(framer.push(bytes.subarray(19)), [b]);
});

Deno.test("TcpFramer rejects length 0 and lengths over its maximum, then stays failed", () => {
  assertThrows(() => new TcpFramer().push(hex("0000")), OpenVpnPacketError, /length 0 /);
  const small = new TcpFramer(1500);
  assertThrows(() => small.push(hex("ffff")), OpenVpnPacketError, /65535 is outside 1-1500/);
  assertThrows(() => small.push(hex("0001 00")), OpenVpnPacketError, /65535/);
  const split = new TcpFramer(1500);
  assertEquals(split.push(hex("05")), []);
  assertThrows(() => split.push(hex("dd")), OpenVpnPacketError, /1501 is outside/);
  const exact = new TcpFramer(1500);
  assertEquals(exact.push(frameTcp(new Uint8Array(1500))).map((p) => p.length), [1500]);
  assertThrows(() => new TcpFramer(0), RangeError);
  assertThrows(() => new TcpFramer(65536), RangeError);
});
