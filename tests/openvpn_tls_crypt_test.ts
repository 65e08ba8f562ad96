import { assert, assertEquals, assertMatch, assertThrows } from "./_assert.ts";
import {
  formatStaticKey,
  generateStaticKey,
  parseStaticKey,
  STATIC_KEY_LEN,
  StaticKeyError,
  TLS_CRYPT_HEADER_LEN,
  TlsCrypt,
  type WrapHeader,
} from "../mod/openvpn/tls_crypt.ts";

const hex = (text: string) => Uint8Array.fromHex(text.replace(/\s+/g, ""));

// TV4: the stock 2.6.14 client's tls-crypt HARD_RESET, captured (OPENVPN.md section 16).
const TV4_KE = hex("00a2237428ffae2dbf8c84ddd2e10f9b8f5188de5b31fd203e076f3806352884");
const TV4_KA = hex("8c93a10342e80079dbabb8711ec448269a3d4741969b8f98c2f5abf4558cf974");
const TV4_HEADER: WrapHeader = {
  byte0: 0x38,
  sessionId: hex("1cde327595e33b82"),
  packetId: 1,
  time: 0x6b0f0781,
};
const TV4_PLAIN = hex("00 00000000");
const TV4_WIRE = hex(`381cde327595e33b82000000016b0f0781
  553d9086eeb0d8d4b62aaceb54cc0425dd781f51ac51c3edb6743a436a7e4d8d
  8d8ffb5a39`);

/** A key with only the client-to-server half of TV4 set (bytes 128-159 and 192-223). */
function tv4Key(): Uint8Array {
  const key = new Uint8Array(STATIC_KEY_LEN);
  key.set(TV4_KE, 128);
  key.set(TV4_KA, 192);
  return key;
}

Deno.test("TlsCrypt.wrap() gives TV4's captured client HARD_RESET byte for byte", () => {
  const packet = new TlsCrypt(tv4Key(), "client").wrap(TV4_HEADER, TV4_PLAIN);
  assertEquals(packet.toHex(), TV4_WIRE.toHex());
  assertEquals(packet.length, 54);
});

Deno.test("TlsCrypt.unwrap() of TV4's packet gives its header and plaintext", () => {
  assertEquals(new TlsCrypt(tv4Key(), "server").unwrap(TV4_WIRE), {
    header: TV4_HEADER,
    plain: TV4_PLAIN,
  });
});

Deno.test("TlsCrypt.unwrap() does not accept a packet sent in its own direction", () => {
  // The client receives with bytes 0-31/64-95, which TV4's sender did not use.
  assertEquals(new TlsCrypt(tv4Key(), "client").unwrap(TV4_WIRE), undefined);
});

Deno.test("TlsCrypt.unwrap() rejects TV4's packet with any one bit flipped", () => {
  const server = new TlsCrypt(tv4Key(), "server");
  for (let bit = 0; bit < TV4_WIRE.length * 8; bit++) {
    const packet = TV4_WIRE.slice();
    packet[bit >> 3]! ^= 1 << (bit & 7);
    assertEquals(server.unwrap(packet), undefined, `bit ${bit}`);
  }
});

Deno.test("TlsCrypt.unwrap() rejects packets shorter than 49 bytes and extended ones", () => {
  const server = new TlsCrypt(tv4Key(), "server");
  for (let length = 0; length < TV4_WIRE.length; length++) {
    assertEquals(server.unwrap(TV4_WIRE.subarray(0, length)), undefined, `${length} bytes`);
  }
  assertEquals(server.unwrap(new Uint8Array([...TV4_WIRE, 0])), undefined);
  assertEquals(TLS_CRYPT_HEADER_LEN, 49);
  // 49 bytes is a whole packet with nothing encrypted.
  const empty = new TlsCrypt(tv4Key(), "client").wrap(TV4_HEADER, new Uint8Array());
  assertEquals(empty.length, 49);
  assertEquals(server.unwrap(empty)?.plain, new Uint8Array());
});

Deno.test("TlsCrypt sends with bytes 0-31/64-95 as server and 128-159/192-223 as client", () => {
  const key = generateStaticKey();
  const header = { ...TV4_HEADER, byte0: 0x40 };
  const plain = crypto.getRandomValues(new Uint8Array(300));
  const fromServer = new TlsCrypt(key, "server").wrap(header, plain);
  // Swapping the halves turns the server's sending keys into a client's.
  const swapped = new Uint8Array([...key.subarray(128), ...key.subarray(0, 128)]);
  assertEquals(new TlsCrypt(swapped, "client").wrap(header, plain), fromServer);
  assertEquals(new TlsCrypt(key, "client").unwrap(fromServer)?.plain, plain);
  assertEquals(new TlsCrypt(key, "server").unwrap(fromServer), undefined);
  // Bytes outside the four 32-byte parts play no part.
  const noise = key.slice();
  for (const offset of [32, 96, 160, 224]) noise.fill(0x55, offset, offset + 32);
  assertEquals(new TlsCrypt(noise, "server").wrap(header, plain), fromServer);
});

Deno.test("TlsCrypt round-trips both ways, with the header's full u32 range", () => {
  const key = generateStaticKey();
  const server = new TlsCrypt(key, "server");
  const client = new TlsCrypt(key, "client");
  for (
    const [packetId, time] of [[0, 0], [1, 1796147073], [0xffff_ffff, 0xffff_ffff]] as const
  ) {
    for (const length of [0, 1, 16, 17, 1140]) {
      const plain = crypto.getRandomValues(new Uint8Array(length));
      const header = { byte0: 0x21, sessionId: generateStaticKey().subarray(0, 8), packetId, time };
      assertEquals(server.unwrap(client.wrap(header, plain)), { header, plain });
      assertEquals(client.unwrap(server.wrap(header, plain)), { header, plain });
    }
  }
});

Deno.test("TlsCrypt refuses a key that is not 256 bytes and header fields out of range", () => {
  assertThrows(() => new TlsCrypt(new Uint8Array(255), "server"), RangeError, /256/);
  const crypt = new TlsCrypt(tv4Key(), "client");
  const plain = new Uint8Array(5);
  for (
    const bad of [
      { byte0: 256 },
      { byte0: -1 },
      { sessionId: new Uint8Array(7) },
      { packetId: 2 ** 32 },
      { time: -1 },
      { time: 0.5 },
    ]
  ) {
    assertThrows(() => crypt.wrap({ ...TV4_HEADER, ...bad }, plain), RangeError);
  }
});

Deno.test("TlsCrypt.unwrap() returns undefined, never throws, for noise", () => {
  const crypt = new TlsCrypt(generateStaticKey(), "server");
  for (let i = 0; i < 2000; i++) {
    const packet = crypto.getRandomValues(new Uint8Array(i % 120));
    assertEquals(crypt.unwrap(packet), undefined);
  }
});

/** Runs the stock openvpn binary, bounded; returns its exit code and output. */
async function openvpn(...args: string[]): Promise<{ code: number; output: string }> {
  const { code, stdout, stderr } = await new Deno.Command("/usr/sbin/openvpn", {
    args,
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(20_000),
  }).output();
  const text = new TextDecoder();
  return { code, output: text.decode(stdout) + text.decode(stderr) };
}

/** The key bytes an openvpn log line (`...: CIPHER KEY: a26c1c85 41c662a8 ...`) shows. */
function loggedKey(output: string, line: string): string {
  const match = output.match(new RegExp(`${line}: ((?:[0-9a-f]{8} ?)+)`));
  assert(match, `no "${line}" in the openvpn output`);
  return match[1]!.replaceAll(" ", "");
}

Deno.test("parseStaticKey() reads what `openvpn --genkey secret` writes", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const file = `${dir}/tc.key`;
    const { code } = await openvpn("--genkey", "secret", file);
    assertEquals(code, 0);
    const text = await Deno.readTextFile(file);
    const key = parseStaticKey(text);
    const block = text.split("\n").filter((line) => /^[0-9a-f]{32}$/.test(line)).join("");
    assertEquals(key.toHex(), block);
    // And formatStaticKey() writes the same file, byte for byte.
    assertEquals(formatStaticKey(key), text);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("openvpn reads formatStaticKey()'s file with the same key bytes in each slot", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const key = generateStaticKey();
    const file = `${dir}/tc.key`;
    await Deno.writeTextFile(file, formatStaticKey(key));
    // --test-crypto reads the file as tls-crypt does (read_key_file) and needs no network.
    const plain = await openvpn(
      "--test-crypto",
      "--secret",
      file,
      "--cipher",
      "AES-256-CBC",
      "--verb",
      "7",
    );
    assertEquals(plain.code, 0, plain.output);
    assertMatch(plain.output, /crypto self-test mode SUCCEEDED/);
    assertEquals(
      loggedKey(plain.output, "Outgoing Static Key Encryption: CIPHER KEY"),
      key.subarray(0, 32).toHex(),
    );
    assertEquals(
      loggedKey(plain.output, "Outgoing Static Key Encryption: HMAC KEY"),
      key.subarray(64, 84).toHex(),
    );
    // Direction 1 selects the second key: bytes 128-159 and 192-.
    const one = await openvpn(
      "--test-crypto",
      "--secret",
      file,
      "1",
      "--cipher",
      "AES-256-CBC",
      "--verb",
      "7",
    );
    assertEquals(
      loggedKey(one.output, "Outgoing Static Key Encryption: CIPHER KEY"),
      key.subarray(128, 160).toHex(),
    );
    assertEquals(
      loggedKey(one.output, "Outgoing Static Key Encryption: HMAC KEY"),
      key.subarray(192, 212).toHex(),
    );
    assertEquals(
      loggedKey(one.output, "Incoming Static Key Encryption: CIPHER KEY"),
      key.subarray(0, 32).toHex(),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("formatStaticKey() writes the genkey shape: comment, 16 lines of 32 hex digits", () => {
  const key = new Uint8Array(256).map((_, i) => i);
  const lines = formatStaticKey(key).split("\n");
  assertEquals(lines.slice(0, 4), [
    "#",
    "# 2048 bit OpenVPN static key",
    "#",
    "-----BEGIN OpenVPN Static key V1-----",
  ]);
  assertEquals(lines.slice(4, 20).map((line) => line.length), new Array(16).fill(32));
  assertEquals(lines[4], "000102030405060708090a0b0c0d0e0f");
  assertEquals(lines.slice(20), ["-----END OpenVPN Static key V1-----", ""]);
  assertEquals(parseStaticKey(formatStaticKey(key)), key);
  assertThrows(() => formatStaticKey(new Uint8Array(128)), RangeError);
});

Deno.test("parseStaticKey() accepts CRLF, upper case, comments and re-wrapped lines", () => {
  const key = generateStaticKey();
  const upper = key.toHex().toUpperCase();
  const text = [
    "; a comment",
    "",
    "-----BEGIN OpenVPN Static key V1-----",
    upper.slice(0, 100),
    "  " + upper.slice(100, 512) + "  ",
    "-----END OpenVPN Static key V1-----",
    "# trailing comment",
  ].join("\r\n");
  assertEquals(parseStaticKey(text), key);
});

Deno.test("parseStaticKey() names what is wrong with a bad file", () => {
  const body = generateStaticKey().toHex().match(/.{32}/g)!;
  const file = (lines: string[]) =>
    ["-----BEGIN OpenVPN Static key V1-----", ...lines, "-----END OpenVPN Static key V1-----"]
      .join("\n");
  const cases: [string, RegExp][] = [
    ["", /no "-----BEGIN OpenVPN Static key V1-----" line/],
    ["-----BEGIN OpenVPN Static key V1-----\n" + body.join("\n"), /no "-----END/],
    [file(body.slice(0, 7).concat(body[7]!.slice(0, 16))), /expected 256 bytes of hex, got 120$/],
    [file(body.concat(body[0]!)), /expected 256 bytes of hex, got 272/],
    [file(body.slice(1).concat(body[0]!.slice(0, 31) + "g")), /"g" is not a hex digit/],
    [file(body.slice(0, 15).concat(body[15]!.slice(1))), /odd number of hex digits \(511\)/],
    ["junk\n" + file(body), /line 1 is outside the key block/],
    [file(body) + "\nmore", /line 19 is outside the key block/],
  ];
  for (const [text, pattern] of cases) {
    const error = assertThrows(() => parseStaticKey(text), StaticKeyError, pattern);
    assertMatch(error.message, /^tls-crypt key: /);
  }
});

Deno.test("generateStaticKey() makes 256 fresh random bytes", () => {
  const a = generateStaticKey();
  const b = generateStaticKey();
  assertEquals(a.length, 256);
  assert(a.toHex() !== b.toHex());
  assertEquals(Object.getPrototypeOf(a), Uint8Array.prototype);
});
