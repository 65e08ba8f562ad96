import { assert, assertEquals, assertThrows } from "./_assert.ts";
import {
  clientOptionsString,
  decodeKeyMethod2,
  encodeKeyMethod2,
  IvProto,
  KEY_METHOD_MAX_LEN,
  keyMethod2Length,
  type KeyMethodMessage,
  OPTIONS_MAX,
  parsePeerInfo,
  PEER_INFO_MAX,
  PEER_INFO_MAX_LINES,
  serverOptionsString,
  USER_PASS_MAX,
} from "../mod/openvpn/key_method.ts";
import { OpenVpnPacketError } from "../mod/openvpn/packet.ts";

const bytes = (length: number, fill: number) => new Uint8Array(length).fill(fill);

// The peer-info of a stock 2.6.14 client (OPENVPN.md 5.4).
const PEER_INFO = [
  "IV_VER=2.6.14",
  "IV_PLAT=linux",
  "IV_TCPNL=1",
  "IV_MTU=1600",
  "IV_NCP=2",
  "IV_CIPHERS=AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305",
  "IV_PROTO=990",
  "IV_LZO_STUB=1",
  "IV_COMP_STUB=1",
  "IV_COMP_STUBv2=1",
  "",
].join("\n");
// The options strings stock 2.6.14 exchanged (5.2, 5.3).
const CLIENT_OPTIONS =
  "V4,dev-type tun,link-mtu 1541,tun-mtu 1500,proto UDPv4,auth SHA1,keysize 128,key-method 2,tls-client";
const SERVER_OPTIONS =
  "V4,dev-type tun,link-mtu 1541,tun-mtu 1500,proto UDPv4,auth SHA1,keysize 128,key-method 2,tls-server";

const CLIENT: KeyMethodMessage = {
  preMaster: bytes(48, 0x11),
  random1: bytes(32, 0x22),
  random2: bytes(32, 0x33),
  options: CLIENT_OPTIONS,
  username: "alice",
  password: "pässwörd",
  peerInfo: PEER_INFO,
};
const SERVER: KeyMethodMessage = {
  random1: bytes(32, 0x44),
  random2: bytes(32, 0x55),
  options: SERVER_OPTIONS,
};

Deno.test("encodeKeyMethod2() lays out the client's message as OPENVPN.md 5.1", () => {
  const message = encodeKeyMethod2({ ...CLIENT, username: "u", password: "p" }, "client");
  const view = new DataView(message.buffer);
  assertEquals(message.subarray(0, 5).toHex(), "0000000002");
  assertEquals(message.subarray(5, 53), CLIENT.preMaster);
  assertEquals(message.subarray(53, 85), CLIENT.random1);
  assertEquals(message.subarray(85, 117), CLIENT.random2);
  assertEquals(view.getUint16(117), CLIENT_OPTIONS.length + 1);
  let offset = 119 + CLIENT_OPTIONS.length;
  assertEquals(message[offset], 0);
  offset++;
  assertEquals(message.subarray(offset, offset + 8).toHex(), "0002750000027000");
  offset += 8;
  assertEquals(view.getUint16(offset), PEER_INFO.length + 1);
  assertEquals(message.length, offset + 2 + PEER_INFO.length + 1);
  assertEquals(message[message.length - 1], 0);
});

Deno.test("encodeKeyMethod2() lays out the server's message as OPENVPN.md 5.2", () => {
  const message = encodeKeyMethod2(SERVER, "server");
  assertEquals(message.subarray(0, 5).toHex(), "0000000002");
  assertEquals(message.subarray(5, 37), SERVER.random1);
  assertEquals(message.subarray(37, 69), SERVER.random2);
  assertEquals(new DataView(message.buffer).getUint16(69), SERVER_OPTIONS.length + 1);
  // Options, its NUL, then username, password and peer-info absent: three u16 0.
  assertEquals(message.length, 71 + SERVER_OPTIONS.length + 1 + 6);
  assertEquals(message.subarray(-7).toHex(), "00000000000000");
});

Deno.test("decodeKeyMethod2() round-trips both sides' messages", () => {
  assertEquals(decodeKeyMethod2(encodeKeyMethod2(CLIENT, "client"), "client"), CLIENT);
  assertEquals(decodeKeyMethod2(encodeKeyMethod2(SERVER, "server"), "server"), SERVER);
  // An empty but present username is not an absent one.
  const empty = { ...SERVER, options: "", username: "", password: "" };
  const encoded = encodeKeyMethod2(empty, "server");
  assertEquals(encoded.subarray(69).toHex(), "000100" + "000100" + "000100" + "0000");
  assertEquals(decodeKeyMethod2(encoded, "server"), empty);
});

Deno.test("decodeKeyMethod2() copies the key material out of the plaintext", () => {
  const encoded = encodeKeyMethod2(CLIENT, "client");
  const decoded = decodeKeyMethod2(encoded, "client");
  encoded.fill(0);
  assertEquals(decoded, CLIENT);
});

Deno.test("decodeKeyMethod2() takes an absent options string as empty", () => {
  const message = encodeKeyMethod2({ ...SERVER, options: "" }, "server");
  const absent = new Uint8Array([...message.subarray(0, 69), 0, 0, 0, 0, 0, 0, 0, 0]);
  assertEquals(decodeKeyMethod2(absent, "server"), { ...SERVER, options: "" });
});

Deno.test("keyMethod2Length() is undefined for every prefix and exact for the whole", () => {
  for (const [message, from] of [[CLIENT, "client"], [SERVER, "server"]] as const) {
    const encoded = encodeKeyMethod2(message, from);
    for (let length = 0; length < encoded.length; length++) {
      assertEquals(keyMethod2Length(encoded.subarray(0, length), from), undefined, `${length}`);
    }
    assertEquals(keyMethod2Length(encoded, from), encoded.length);
    // Control messages after it are not part of it.
    const followed = new Uint8Array([...encoded, ...new TextEncoder().encode("PUSH_REQUEST\0")]);
    assertEquals(keyMethod2Length(followed, from), encoded.length);
  }
});

Deno.test("decodeKeyMethod2() rejects every truncation and trailing bytes", () => {
  const encoded = encodeKeyMethod2(CLIENT, "client");
  for (let length = 0; length < encoded.length; length++) {
    assertThrows(
      () => decodeKeyMethod2(encoded.subarray(0, length), "client"),
      OpenVpnPacketError,
      /truncated/,
    );
  }
  assertThrows(
    () => decodeKeyMethod2(new Uint8Array([...encoded, 0]), "client"),
    OpenVpnPacketError,
    /1 unexpected bytes/,
  );
  // A server's message read as a client's is 48 bytes short.
  assertThrows(
    () => decodeKeyMethod2(encodeKeyMethod2(SERVER, "server"), "client"),
    OpenVpnPacketError,
  );
});

Deno.test("keyMethod2Length() rejects a non-zero literal as soon as its byte arrives", () => {
  const encoded = encodeKeyMethod2(CLIENT, "client");
  for (let i = 0; i < 4; i++) {
    const bad = encoded.slice(0, i + 1);
    bad[i] = 1;
    assertThrows(() => keyMethod2Length(bad, "client"), OpenVpnPacketError, /four zero bytes/);
  }
});

Deno.test("keyMethod2Length() rejects key methods other than 2 and ignores the flag nibble", () => {
  const encoded = encodeKeyMethod2(CLIENT, "client");
  for (const method of [0, 1, 3, 0x0f, 0x21]) {
    const bad = encoded.slice();
    bad[4] = method;
    assertThrows(() => keyMethod2Length(bad, "client"), OpenVpnPacketError, /key method/);
  }
  const flagged = encoded.slice();
  flagged[4] = 0x12;
  assertEquals(decodeKeyMethod2(flagged, "client"), CLIENT);
});

/** A server message whose four string lengths are `lengths`, the bytes not yet there. */
function withLengths(lengths: number[]): Uint8Array {
  const out = new Uint8Array(69 + 2 * lengths.length);
  out[4] = 2;
  const view = new DataView(out.buffer);
  let offset = 69;
  for (const length of lengths) {
    view.setUint16(offset, length);
    offset += 2;
  }
  return out;
}

Deno.test("keyMethod2Length() refuses a string over its bound before its bytes arrive", () => {
  assertThrows(
    () => keyMethod2Length(withLengths([OPTIONS_MAX + 1]), "server"),
    OpenVpnPacketError,
    /options string of 513 bytes is over its bound of 512/,
  );
  // A length field gives the position of the next only once its bytes are there.
  const toUser = (user: number) => {
    const head = withLengths([1]);
    return new Uint8Array([...head.subarray(0, 71), 0, user >> 8, user & 0xff]);
  };
  assertThrows(
    () => keyMethod2Length(toUser(USER_PASS_MAX + 1), "server"),
    OpenVpnPacketError,
    /username/,
  );
  assertEquals(keyMethod2Length(toUser(USER_PASS_MAX), "server"), undefined);
  assertEquals(OPTIONS_MAX, 512);
  assertEquals(USER_PASS_MAX, 4096);
  assertEquals(PEER_INFO_MAX, 8192);
});

Deno.test("decodeKeyMethod2() accepts every string at its bound and refuses one byte more", () => {
  const atBound = {
    ...CLIENT,
    options: "o".repeat(OPTIONS_MAX - 1),
    username: "u".repeat(USER_PASS_MAX - 1),
    password: "p".repeat(USER_PASS_MAX - 1),
    peerInfo: "i".repeat(PEER_INFO_MAX - 1),
  };
  const encoded = encodeKeyMethod2(atBound, "client");
  assertEquals(encoded.length, KEY_METHOD_MAX_LEN);
  assertEquals(decodeKeyMethod2(encoded, "client"), atBound);
  for (const field of ["options", "username", "password", "peerInfo"] as const) {
    const over = { ...atBound, [field]: atBound[field] + "x" };
    assertThrows(() => encodeKeyMethod2(over, "client"), RangeError, /at most/);
  }
  // The same bound on the receiving side: the last string one byte longer.
  const view = new DataView(encoded.buffer);
  const peerInfoAt = encoded.length - PEER_INFO_MAX - 2;
  view.setUint16(peerInfoAt, PEER_INFO_MAX + 1);
  assertThrows(
    () => decodeKeyMethod2(new Uint8Array([...encoded, 0]), "client"),
    OpenVpnPacketError,
    /peer-info of 8193 bytes/,
  );
});

Deno.test("decodeKeyMethod2() rejects a string without its NUL, with a NUL inside, or not UTF-8", () => {
  const encoded = encodeKeyMethod2(SERVER, "server");
  const nulAt = 71 + SERVER_OPTIONS.length;
  assertEquals(encoded[nulAt], 0);
  const missing = encoded.slice();
  missing[nulAt] = 0x41;
  assertThrows(
    () => decodeKeyMethod2(missing, "server"),
    OpenVpnPacketError,
    /options string does not end with NUL/,
  );
  const inside = encoded.slice();
  inside[72] = 0;
  assertThrows(
    () => decodeKeyMethod2(inside, "server"),
    OpenVpnPacketError,
    /options string contains NUL/,
  );
  const latin1 = encoded.slice();
  latin1[72] = 0xe9;
  assertThrows(() => decodeKeyMethod2(latin1, "server"), OpenVpnPacketError, /not UTF-8/);
});

Deno.test("decodeKeyMethod2() throws only OpenVpnPacketError on mutated messages", () => {
  const encoded = encodeKeyMethod2(CLIENT, "client");
  let state = 2463534242;
  const next = () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 2 ** 32;
  };
  for (let i = 0; i < 3000; i++) {
    const mutated = encoded.slice(0, Math.floor(next() * (encoded.length + 1)));
    for (let j = 0; j < 3; j++) mutated[Math.floor(next() * mutated.length)] = next() * 256;
    for (
      const decode of [
        () => keyMethod2Length(mutated, "client"),
        () => decodeKeyMethod2(mutated, "client"),
      ]
    ) {
      try {
        decode();
      } catch (error) {
        assert(error instanceof OpenVpnPacketError, `${mutated.toHex()}: ${error}`);
      }
    }
  }
});

Deno.test("encodeKeyMethod2() refuses a message its side cannot send", () => {
  assertThrows(() => encodeKeyMethod2(SERVER, "client"), RangeError, /needs a 48-byte pre_master/);
  assertThrows(
    () => encodeKeyMethod2({ ...CLIENT, preMaster: bytes(47, 0) }, "client"),
    RangeError,
    /48-byte/,
  );
  assertThrows(() => encodeKeyMethod2(CLIENT, "server"), RangeError, /no pre_master/);
  assertThrows(
    () => encodeKeyMethod2({ ...SERVER, random2: bytes(31, 0) }, "server"),
    RangeError,
    /random2/,
  );
  assertThrows(() => encodeKeyMethod2({ ...SERVER, options: "a\0b" }, "server"), RangeError, /NUL/);
});

Deno.test("parsePeerInfo() reads a stock 2.6.14 client's peer-info", () => {
  const info = parsePeerInfo(PEER_INFO);
  assertEquals({ ...info, raw: undefined }, {
    version: "2.6.14",
    platform: "linux",
    proto: 990,
    ciphers: ["AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305"],
    ncp: 2,
    mtu: 1600,
    compStubV2: true,
    lzoStub: true,
    raw: undefined,
  });
  assertEquals(info.raw.get("IV_TCPNL"), "1");
  assertEquals(info.raw.size, 10);
  assert((info.proto & IvProto.REQUEST_PUSH) !== 0);
  assert((info.proto & IvProto.TLS_KEY_EXPORT) !== 0);
  assertEquals(
    IvProto.DATA_V2 + IvProto.REQUEST_PUSH + IvProto.TLS_KEY_EXPORT + IvProto.AUTH_PENDING_KW +
      IvProto.DNS_OPTION + IvProto.CC_EXIT_NOTIFY + IvProto.AUTH_FAIL_TEMP + IvProto.DYN_TLS_CRYPT,
    990,
  );
});

Deno.test("parsePeerInfo() tolerates absent, malformed and unknown lines", () => {
  assertEquals(parsePeerInfo(""), {
    proto: 0,
    ciphers: [],
    compStubV2: false,
    lzoStub: false,
    raw: new Map(),
  });
  const info = parsePeerInfo(
    "garbage\r\n=x\nIV_PROTO=12abc\nIV_MTU=99999999999\nIV_CIPHERS=::AES-256-GCM:\r\n" +
      "UV_NAME=a=b\nIV_PLAT=win\r\nIV_PLAT=mac\nIV_COMP_STUBv2=0\n",
  );
  assertEquals(info.proto, 0);
  assertEquals(info.mtu, undefined);
  assertEquals(info.ciphers, ["AES-256-GCM"]);
  assertEquals(info.platform, "win");
  assertEquals(info.raw.get("UV_NAME"), "a=b");
  assertEquals(info.compStubV2, false);
  assertEquals(info.raw.has("garbage"), false);
});

Deno.test("parsePeerInfo() reads a bounded number of lines and characters", () => {
  const many = Array.from({ length: 5000 }, (_, i) => `K${i}=v`).join("\n");
  assertEquals(parsePeerInfo(many).raw.size, PEER_INFO_MAX_LINES);
  const long = "IV_VER=" + "9".repeat(20_000);
  assertEquals(parsePeerInfo(long).version?.length, PEER_INFO_MAX - "IV_VER=".length);
  const late = "X=" + "x".repeat(PEER_INFO_MAX) + "\nIV_PROTO=2";
  assertEquals(parsePeerInfo(late).proto, 0);
});

Deno.test("serverOptionsString() writes what stock 2.6.14 writes for the same settings", () => {
  // Each from the "Local Options String" of `openvpn --tls-server --dev tun --cipher C
  // --tun-mtu N --proto P`: link-mtu is tun-mtu + 49 (AES-GCM) or + 34 (CHACHA20), + 2 on TCP.
  const tail = "auth [null-digest],keysize 256,key-method 2,tls-server";
  assertEquals(
    serverOptionsString({ proto: "UDPv4", tunMtu: 1500, cipher: "AES-256-GCM" }),
    `V4,dev-type tun,link-mtu 1549,tun-mtu 1500,proto UDPv4,cipher AES-256-GCM,${tail}`,
  );
  assertEquals(
    serverOptionsString({ proto: "TCPv4_SERVER", tunMtu: 1500, cipher: "AES-256-GCM" }),
    `V4,dev-type tun,link-mtu 1551,tun-mtu 1500,proto TCPv4_SERVER,cipher AES-256-GCM,${tail}`,
  );
  assertEquals(
    serverOptionsString({ proto: "UDPv4", tunMtu: 1400, cipher: "CHACHA20-POLY1305" }),
    `V4,dev-type tun,link-mtu 1434,tun-mtu 1400,proto UDPv4,cipher CHACHA20-POLY1305,${tail}`,
  );
  assertEquals(
    serverOptionsString({ proto: "TCPv4_SERVER", tunMtu: 1280, cipher: "CHACHA20-POLY1305" }),
    `V4,dev-type tun,link-mtu 1316,tun-mtu 1280,proto TCPv4_SERVER,cipher CHACHA20-POLY1305,${tail}`,
  );
  assertEquals(
    serverOptionsString({ proto: "UDPv4", tunMtu: 1500, cipher: "AES-128-GCM" }),
    "V4,dev-type tun,link-mtu 1549,tun-mtu 1500,proto UDPv4,cipher AES-128-GCM," +
      "auth [null-digest],keysize 128,key-method 2,tls-server",
  );
});

Deno.test("clientOptionsString() is the server's with tls-client", () => {
  assertEquals(
    clientOptionsString({ proto: "TCPv4_CLIENT", tunMtu: 1500, cipher: "AES-256-GCM" }),
    "V4,dev-type tun,link-mtu 1551,tun-mtu 1500,proto TCPv4_CLIENT,cipher AES-256-GCM," +
      "auth [null-digest],keysize 256,key-method 2,tls-client",
  );
});

Deno.test("serverOptionsString() refuses a proto, MTU or cipher it cannot describe", () => {
  const good = { proto: "UDPv4", tunMtu: 1500, cipher: "AES-256-GCM" } as const;
  const cases = [
    { ...good, proto: "TCPv4_CLIENT" },
    { ...good, proto: "UDPv4,cipher BF-CBC" },
    { ...good, tunMtu: 67 },
    { ...good, tunMtu: 1500.5 },
    { ...good, cipher: "BF-CBC" },
    { ...good, cipher: "toString" },
  ];
  for (const params of cases) {
    // deno-lint-ignore no-explicit-any
    assertThrows(() => serverOptionsString(params as any), RangeError, /Cannot write/);
  }
});
