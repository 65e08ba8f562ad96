import { createCipheriv } from "node:crypto";
import { assert, assertEquals, assertThrows } from "./_assert.ts";
import {
  Aead,
  type CipherName,
  cryptoUnavailable,
  KEY_LEN,
  NONCE_LEN,
  TAG_LEN,
} from "../ffi/crypto.ts";
import { hex, pattern, toHex } from "./_bytes.ts";

const CIPHERS: CipherName[] = ["aes-256-gcm", "chacha20-poly1305"];

/** The same seal through node:crypto: ciphertext then tag. */
function nodeSeal(
  cipher: CipherName,
  key: Uint8Array,
  nonce: Uint8Array,
  aad: Uint8Array,
  plain: Uint8Array,
): Uint8Array {
  const options = { authTagLength: TAG_LEN };
  // One call per literal: node's typings pick the AEAD overload by the cipher name.
  const c = cipher === "aes-256-gcm"
    ? createCipheriv("aes-256-gcm", key, nonce, options)
    : createCipheriv("chacha20-poly1305", key, nonce, options);
  c.setAAD(aad, { plaintextLength: plain.length });
  const body = Buffer.concat([c.update(plain), c.final(), c.getAuthTag()]);
  return new Uint8Array(body);
}

interface Vector {
  cipher: CipherName;
  key: Uint8Array<ArrayBuffer>;
  nonce: Uint8Array<ArrayBuffer>;
  aad: Uint8Array<ArrayBuffer>;
  plain: Uint8Array<ArrayBuffer>;
  ciphertext: string;
  tag: string;
}

const VECTORS: Vector[] = [
  {
    // McGrew & Viega, "The Galois/Counter Mode of Operation", test case 16.
    cipher: "aes-256-gcm",
    key: hex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308"),
    nonce: hex("cafebabefacedbaddecaf888"),
    aad: hex("feedfacedeadbeeffeedfacedeadbeefabaddad2"),
    plain: hex(
      `d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72
       1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39`,
    ),
    ciphertext: `522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa
                 8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662`,
    tag: "76fc6ece0f4e1768cddf8853bb2d551b",
  },
  {
    // RFC 8439 section 2.8.2.
    cipher: "chacha20-poly1305",
    key: hex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"),
    nonce: hex("070000004041424344454647"),
    aad: hex("50515253c0c1c2c3c4c5c6c7"),
    plain: new TextEncoder().encode(
      "Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the " +
        "future, sunscreen would be it.",
    ),
    ciphertext: `d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6
                 3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36
                 92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc
                 3ff4def08e4b7a9de576d26586cec64b6116`,
    tag: "1ae10b594f09e26a7e902ecbd0600691",
  },
];

Deno.test("cryptoUnavailable() finds libcrypto with both ciphers", () => {
  assertEquals(cryptoUnavailable(), undefined);
});

for (const v of VECTORS) {
  Deno.test(`Aead.seal() matches the ${v.cipher} known-answer vector and node:crypto`, () => {
    using sealer = Aead.create(v.cipher, v.key, true);
    const out = new Uint8Array(v.plain.length + TAG_LEN);
    assertEquals(
      sealer.seal(v.nonce, v.aad, v.aad.length, v.plain, v.plain.length, out),
      out.length,
    );
    const expected = v.ciphertext.replace(/\s+/g, "") + v.tag;
    assertEquals(toHex(out), expected);
    assertEquals(toHex(nodeSeal(v.cipher, v.key, v.nonce, v.aad, v.plain)), expected);
  });

  Deno.test(`Aead.open() decrypts the ${v.cipher} known-answer vector`, () => {
    using opener = Aead.create(v.cipher, v.key, false);
    const sealed = hex(v.ciphertext + v.tag);
    const out = new Uint8Array(v.plain.length);
    assertEquals(opener.open(v.nonce, v.aad, v.aad.length, sealed, sealed.length, out), out.length);
    assertEquals(out, v.plain);
  });
}

for (const cipher of CIPHERS) {
  Deno.test(`Aead round-trips ${cipher} in place for 0, 1, 1400 and 65535 bytes`, () => {
    const key = pattern(KEY_LEN, 1);
    using sealer = Aead.create(cipher, key, true);
    using opener = Aead.create(cipher, key, false);
    const nonce = pattern(NONCE_LEN, 2);
    const aad = pattern(24, 3);
    for (const length of [0, 1, 1400, 65535]) {
      const plain = pattern(length, length);
      const packet = new Uint8Array(length + TAG_LEN);
      packet.set(plain);
      assertEquals(sealer.seal(nonce, aad, 20, packet, length, packet), length + TAG_LEN);
      assertEquals(packet, nodeSeal(cipher, key, nonce, aad.subarray(0, 20), plain));
      assertEquals(opener.open(nonce, aad, 20, packet, length + TAG_LEN, packet), length);
      assertEquals(packet.subarray(0, length), plain);
    }
  });

  Deno.test(`Aead.open() returns -1 for tampered ${cipher} packets and then recovers`, () => {
    const key = pattern(KEY_LEN, 4);
    using sealer = Aead.create(cipher, key, true);
    using opener = Aead.create(cipher, key, false);
    const nonce = pattern(NONCE_LEN, 5);
    const aad = pattern(16, 6);
    const plain = pattern(1400, 7);
    const sealed = new Uint8Array(1400 + TAG_LEN);
    sealer.seal(nonce, aad, aad.length, plain, plain.length, sealed);
    const out = new Uint8Array(1400);
    const good = () => opener.open(nonce, aad, aad.length, sealed, sealed.length, out);

    const flip = (index: number) => {
      const bad = sealed.slice();
      bad[index]! ^= 0x01;
      return opener.open(nonce, aad, aad.length, bad, bad.length, out);
    };
    const otherAad = aad.slice();
    otherAad[0]! ^= 0x80;
    const otherNonce = nonce.slice();
    otherNonce[11]! ^= 0x01;
    const cases: [string, () => number][] = [
      ["flipped ciphertext byte", () => flip(700)],
      ["flipped tag byte", () => flip(sealed.length - 1)],
      ["wrong AAD", () => opener.open(nonce, otherAad, aad.length, sealed, sealed.length, out)],
      ["shorter AAD", () => opener.open(nonce, aad, aad.length - 1, sealed, sealed.length, out)],
      ["wrong nonce", () => opener.open(otherNonce, aad, aad.length, sealed, sealed.length, out)],
      ["truncated", () => opener.open(nonce, aad, aad.length, sealed, sealed.length - 1, out)],
      ["shorter than a tag", () => opener.open(nonce, aad, aad.length, sealed, TAG_LEN - 1, out)],
    ];
    for (const [name, attempt] of cases) {
      assertEquals(attempt(), -1, name);
      out.fill(0);
      assertEquals(good(), 1400, `good packet after ${name}`);
      assertEquals(out, plain, `plaintext after ${name}`);
    }
  });

  Deno.test(`Aead reuses one ${cipher} context for 10,000 packets like fresh contexts`, () => {
    const key = pattern(KEY_LEN, 8);
    using sealer = Aead.create(cipher, key, true);
    using opener = Aead.create(cipher, key, false);
    const nonce = new Uint8Array(NONCE_LEN);
    const view = new DataView(nonce.buffer);
    const aad = new Uint8Array(8);
    const packet = new Uint8Array(1400 + TAG_LEN);
    for (let counter = 0; counter < 10_000; counter++) {
      view.setUint32(8, counter);
      aad.set(nonce.subarray(4));
      const length = 1 + (counter * 7) % 1400;
      const plain = pattern(length, counter);
      packet.set(plain);
      assertEquals(sealer.seal(nonce, aad, aad.length, packet, length, packet), length + TAG_LEN);
      if (counter % 997 === 0 || counter === 9_999) {
        using fresh = Aead.create(cipher, key, true);
        const expected = new Uint8Array(length + TAG_LEN);
        fresh.seal(nonce, aad, aad.length, plain, length, expected);
        assertEquals(packet.subarray(0, length + TAG_LEN), expected, `packet ${counter}`);
      }
      assertEquals(opener.open(nonce, aad, aad.length, packet, length + TAG_LEN, packet), length);
      if (counter % 997 === 0) assertEquals(packet.subarray(0, length), plain);
    }
  });
}

Deno.test("Aead.create() rejects a bad key length and an unknown cipher", () => {
  assertThrows(
    () => Aead.create("aes-256-gcm", new Uint8Array(16), true),
    RangeError,
    /key must be 32 bytes, got 16/,
  );
  assertThrows(
    () => Aead.create("aes-128-cbc" as CipherName, new Uint8Array(32), true),
    TypeError,
    /use aes-256-gcm or chacha20-poly1305/,
  );
});

Deno.test("Aead.seal() and open() reject misuse with clear errors", () => {
  const key = new Uint8Array(KEY_LEN);
  const sealer = Aead.create("aes-256-gcm", key, true);
  const nonce = new Uint8Array(NONCE_LEN);
  const buf = new Uint8Array(100);
  assertThrows(() => sealer.seal(new Uint8Array(8), buf, 0, buf, 10, buf), RangeError, /nonce/);
  assertThrows(() => sealer.seal(nonce, buf, 101, buf, 10, buf), RangeError, /aadLength/);
  assertThrows(() => sealer.seal(nonce, buf, 0, buf, 90, buf), RangeError, /needs 106/);
  assertThrows(
    () => sealer.seal(nonce, buf, 0, buf, 10, buf.subarray(4)),
    RangeError,
    /partly overlaps/,
  );
  assertThrows(() => sealer.open(nonce, buf, 0, buf, 20, buf), TypeError, /created to seal/);
  sealer.close();
  sealer.close();
  assertThrows(() => sealer.seal(nonce, buf, 0, buf, 10, buf), Deno.errors.BadResource, /closed/);
});

Deno.test("Aead.seal() works on separate buffers and views with an offset", () => {
  const key = pattern(KEY_LEN, 9);
  using sealer = Aead.create("chacha20-poly1305", key, true);
  using opener = Aead.create("chacha20-poly1305", key, false);
  const nonce = pattern(NONCE_LEN, 10);
  const frame = new Uint8Array(8 + 300 + TAG_LEN);
  const plain = pattern(300, 11);
  // The header before the payload serves as AAD, as a data-channel frame would use it.
  frame.set(pattern(8, 12));
  const aad = frame.subarray(0, 8);
  const body = frame.subarray(8);
  assertEquals(sealer.seal(nonce, aad, 8, plain, 300, body), 300 + TAG_LEN);
  assertEquals(body, nodeSeal("chacha20-poly1305", key, nonce, aad, plain));
  const out = new Uint8Array(300);
  assertEquals(opener.open(nonce, aad, 8, body, body.length, out), 300);
  assert(out.every((b, i) => b === plain[i]));
});

for (const cipher of CIPHERS) {
  Deno.test(`Aead.sealDetached() gives seal()'s ciphertext and tag, apart (${cipher})`, () => {
    const key = pattern(KEY_LEN, 13);
    using sealer = Aead.create(cipher, key, true);
    using opener = Aead.create(cipher, key, false);
    const nonce = pattern(NONCE_LEN, 14);
    const aad = pattern(8, 15);
    for (const length of [0, 1, 1400]) {
      const plain = pattern(length, 16);
      const joined = new Uint8Array(length + TAG_LEN);
      sealer.seal(nonce, aad, 8, plain, length, joined);
      // The OpenVPN layout: header, tag, then ciphertext, sealed in place in the body.
      const packet = new Uint8Array(8 + TAG_LEN + length);
      const tag = packet.subarray(8, 8 + TAG_LEN);
      const body = packet.subarray(8 + TAG_LEN);
      body.set(plain);
      assertEquals(sealer.sealDetached(nonce, aad, 8, body, length, body, tag), length);
      assertEquals(body, joined.subarray(0, length), `ciphertext of ${length} bytes`);
      assertEquals(tag, joined.subarray(length), `tag of ${length} bytes`);
      assertEquals(opener.openDetached(nonce, aad, 8, body, length, tag, body), length);
      assertEquals(body, plain);
    }
  });

  Deno.test(`Aead.openDetached() returns -1 for a tampered ${cipher} tag or body`, () => {
    const key = pattern(KEY_LEN, 17);
    using sealer = Aead.create(cipher, key, true);
    using opener = Aead.create(cipher, key, false);
    const nonce = pattern(NONCE_LEN, 18);
    const aad = pattern(8, 19);
    const plain = pattern(300, 20);
    const body = new Uint8Array(300);
    const tag = new Uint8Array(TAG_LEN);
    sealer.sealDetached(nonce, aad, 8, plain, 300, body, tag);
    const out = new Uint8Array(300);
    for (const [name, index] of [["tag", 0], ["tag", 15], ["body", 0], ["body", 299]] as const) {
      const target = name === "tag" ? tag : body;
      target[index]! ^= 0x02;
      assertEquals(opener.openDetached(nonce, aad, 8, body, 300, tag, out), -1, name);
      target[index]! ^= 0x02;
    }
    assertEquals(opener.openDetached(nonce, aad, 8, body, 300, tag, out), 300);
    assertEquals(out, plain);
  });
}

Deno.test("Aead.sealDetached() and openDetached() reject a short or overlapping tag", () => {
  const key = new Uint8Array(KEY_LEN);
  using sealer = Aead.create("aes-256-gcm", key, true);
  using opener = Aead.create("aes-256-gcm", key, false);
  const nonce = new Uint8Array(NONCE_LEN);
  const buf = new Uint8Array(100);
  const tag = new Uint8Array(TAG_LEN);
  assertThrows(
    () => sealer.sealDetached(nonce, buf, 0, buf, 10, buf, tag.subarray(1)),
    RangeError,
    /tag must be 16 bytes, got 15/,
  );
  assertThrows(
    () => sealer.sealDetached(nonce, buf, 0, buf, 20, buf, buf.subarray(10, 26)),
    RangeError,
    /tag overlaps output/,
  );
  assertThrows(
    () => sealer.sealDetached(nonce, buf, 0, buf, 20, buf.subarray(0, 19), tag),
    RangeError,
    /output holds 19/,
  );
  assertThrows(
    () => opener.openDetached(nonce, buf, 0, buf, 10, tag.subarray(8), buf),
    RangeError,
    /tag must be 16 bytes, got 8/,
  );
  assertThrows(
    () => opener.openDetached(nonce, buf, 0, buf, 10, tag, buf.subarray(1)),
    RangeError,
    /partly overlaps/,
  );
  assertThrows(() => opener.sealDetached(nonce, buf, 0, buf, 10, buf, tag), TypeError, /to open/);
});

Deno.test("Aead.openDetached() checks a tag that its output overwrites", () => {
  const key = pattern(KEY_LEN, 21);
  using sealer = Aead.create("chacha20-poly1305", key, true);
  using opener = Aead.create("chacha20-poly1305", key, false);
  const nonce = pattern(NONCE_LEN, 22);
  const plain = pattern(64, 23);
  const body = new Uint8Array(64);
  const output = new Uint8Array(64);
  const tag = output.subarray(10, 10 + TAG_LEN);
  sealer.sealDetached(nonce, body, 0, plain, 64, body, tag);
  assertEquals(opener.openDetached(nonce, body, 0, body, 64, tag, output), 64);
  assertEquals(output, plain);
});
