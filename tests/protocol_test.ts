/**
 * PROTOCOL.md's byte formats, checked against implementations written another way: the UDP
 * key schedule through WebCrypto's HKDF, datagrams opened with node:crypto from nothing but
 * the documented key, nonce and associated data, and the AUTH challenge built by hand.
 */

import { createDecipheriv } from "node:crypto";
import { assertEquals } from "./_assert.ts";
import {
  DatagramCrypto,
  DatagramSlots,
  DatagramType,
  deriveKeys,
  KeyHalf,
} from "../mod/native/datagram.ts";
import { authChallenge } from "../mod/pki.ts";

const RC = Uint8Array.from({ length: 32 }, (_, i) => i);
const RS = Uint8Array.from({ length: 32 }, (_, i) => 0xff - i);
/** An X25519 shared secret, as both sides would compute it. */
const Z = Uint8Array.from({ length: 32 }, (_, i) => (i * 7) & 0xff);

/** HKDF-SHA256 as PROTOCOL.md states it, through WebCrypto. */
async function documentedKeys(session: number, epoch: number): Promise<Uint8Array> {
  const ikm = await crypto.subtle.importKey(
    "raw",
    new Uint8Array([...RC, ...RS, ...Z]),
    "HKDF",
    false,
    [
      "deriveBits",
    ],
  );
  const bits = await crypto.subtle.deriveBits(
    {
      name: "HKDF",
      hash: "SHA-256",
      salt: new TextEncoder().encode("vpn udp v1"),
      info: new TextEncoder().encode(`keys ${session} ${epoch}`),
    },
    ikm,
    72 * 8,
  );
  return new Uint8Array(bits);
}

Deno.test("deriveKeys() is HKDF-SHA256(Rc || Rs || Z, 'vpn udp v1', 'keys <id> <e>'), split 32/4/32/4", async () => {
  for (const [session, epoch] of [[0, 0], [0xdeadbeef, 1], [7, 12345]] as const) {
    const okm = await documentedKeys(session, epoch);
    const keys = deriveKeys(RC, RS, session, epoch, Z);
    assertEquals(keys.clientToServer.key, okm.slice(0, 32));
    assertEquals(keys.clientToServer.salt, okm.slice(32, 36));
    assertEquals(keys.serverToClient.key, okm.slice(36, 68));
    assertEquals(keys.serverToClient.salt, okm.slice(68, 72));
  }
});

for (const cipher of ["aes-256-gcm", "chacha20-poly1305"] as const) {
  Deno.test(`a ${cipher} datagram opens with the documented key, nonce salt || counter and header as AAD`, async () => {
    const session = 0x01020304;
    const okm = await documentedKeys(session, 0);
    const sender = new DatagramCrypto(session, cipher, true);
    sender.installSend(deriveKeys(RC, RS, session, 0, Z));
    const slots = new DatagramSlots(1, 2048);
    const packet = new TextEncoder().encode("an IP packet, more or less");
    let size = 0;
    for (let i = 0; i < 3; i++) {
      size = sender.seal(
        DatagramType.DATA,
        packet,
        packet.length,
        slots.bufs[0]!,
        slots.bodies[0]!,
      );
    }
    const datagram = slots.bufs[0]!.slice(0, size);
    sender.close();
    // type 1, phase 0; session id; counter 2 (the third datagram of the key), all big-endian.
    assertEquals([...datagram.subarray(0, 13)], [1, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 2]);
    assertEquals(size, 13 + packet.length + 16);
    const nonce = new Uint8Array([...okm.slice(32, 36), ...datagram.subarray(5, 13)]);
    const key = okm.slice(0, 32);
    const options = { authTagLength: 16 };
    const decipher = cipher === "aes-256-gcm"
      ? createDecipheriv("aes-256-gcm", key, nonce, options)
      : createDecipheriv("chacha20-poly1305", key, nonce, options);
    decipher.setAAD(datagram.subarray(0, 13), { plaintextLength: packet.length });
    decipher.setAuthTag(datagram.subarray(size - 16));
    const plain = new Uint8Array([
      ...decipher.update(datagram.subarray(13, size - 16)),
      ...decipher.final(),
    ]);
    assertEquals(plain, packet);
  });
}

Deno.test("authChallenge() is 'vpn-auth-v1\\0' | len Ns | Ns | len Nc | Nc | lower-case name", () => {
  const ns = new Uint8Array(32).fill(0xaa);
  const nc = new Uint8Array(32).fill(0xbb);
  const expected = new Uint8Array([
    ...new TextEncoder().encode("vpn-auth-v1\0"),
    32,
    ...ns,
    32,
    ...nc,
    ...new TextEncoder().encode("vpn.example.org"),
  ]);
  assertEquals(authChallenge(ns, nc, "VPN.Example.org"), expected);
});

Deno.test("KeyHalf: Z is X25519 of one side's key and the other's 32-byte share, as WebCrypto computes it", async () => {
  const half = new KeyHalf();
  assertEquals(half.share.length, 32);
  const peer = await crypto.subtle.generateKey({ name: "X25519" }, true, [
    "deriveBits",
  ]) as CryptoKeyPair;
  const peerShare = new Uint8Array(await crypto.subtle.exportKey("raw", peer.publicKey));
  const ours = await crypto.subtle.importKey(
    "raw",
    new Uint8Array(half.share),
    { name: "X25519" },
    true,
    [],
  );
  const expected = new Uint8Array(
    await crypto.subtle.deriveBits({ name: "X25519", public: ours }, peer.privateKey, 256),
  );
  assertEquals(half.agree(peerShare), expected);
});
