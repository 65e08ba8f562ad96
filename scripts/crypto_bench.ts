/**
 * AEAD micro-benchmark: seal and open of one 1400-byte packet through `ffi/crypto.ts`, one
 * reused context per direction, in place, with a new nonce per packet as the data channel
 * does it.
 *
 * Usage: deno bench -A scripts/crypto_bench.ts
 *
 * @module
 */

import { Aead, type CipherName, KEY_LEN, NONCE_LEN, TAG_LEN } from "../ffi/crypto.ts";

const PACKET = 1400;

for (const cipher of ["aes-256-gcm", "chacha20-poly1305"] satisfies CipherName[]) {
  const key = crypto.getRandomValues(new Uint8Array(KEY_LEN));
  const sealer = Aead.create(cipher, key, true);
  const opener = Aead.create(cipher, key, false);
  const nonce = new Uint8Array(NONCE_LEN);
  const nonceView = new DataView(nonce.buffer);
  const aad = new Uint8Array(16);
  const packet = crypto.getRandomValues(new Uint8Array(PACKET + TAG_LEN));
  let counter = 0;

  Deno.bench(`${cipher} seal ${PACKET} B`, { group: cipher, baseline: true }, () => {
    nonceView.setUint32(8, counter++);
    sealer.seal(nonce, aad, aad.length, packet, PACKET, packet);
  });

  // open() decrypts in place, so each iteration opens a fresh copy of one sealed packet.
  // Its own nonce: the seal benchmark keeps advancing the other one.
  const openNonce = new Uint8Array(NONCE_LEN);
  const sealed = new Uint8Array(PACKET + TAG_LEN);
  sealer.seal(openNonce, aad, aad.length, packet, PACKET, sealed);
  const work = new Uint8Array(PACKET + TAG_LEN);
  Deno.bench(`${cipher} open ${PACKET} B`, { group: cipher }, () => {
    work.set(sealed);
    if (opener.open(openNonce, aad, aad.length, work, work.length, work) !== PACKET) {
      throw new Error(`${cipher}: open() rejected a good packet`);
    }
  });
}
