/**
 * AEAD micro-benchmark: seal and open of one 1400-byte packet through `ffi/crypto.ts`, one
 * reused context per direction, in place, with a new nonce per packet as the data channel
 * does it; then the same through OpenVPN's `DataKey` (mod/openvpn/data.ts), which adds the
 * P_DATA_V2 header, the detached tag and the replay window.
 *
 * Usage: deno bench -A scripts/crypto_bench.ts
 *
 * @module
 */

import { Aead, type CipherName, KEY_LEN, NONCE_LEN, TAG_LEN } from "../ffi/crypto.ts";
import { DATA_V2_OVERHEAD, type DataCipher, DataKey } from "../mod/openvpn/data.ts";

const PACKET = 1400;
/** Packets one DataKey.open iteration opens. */
const BATCH = 16;

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

const DATA_CIPHERS: Record<CipherName, DataCipher> = {
  "aes-256-gcm": "AES-256-GCM",
  "chacha20-poly1305": "CHACHA20-POLY1305",
};

/** A P_DATA_V2 packet buffer with the views DataKey wants. */
function dataPacket() {
  const packet = new Uint8Array(DATA_V2_OVERHEAD + PACKET);
  const tag = packet.subarray(DATA_V2_OVERHEAD - TAG_LEN, DATA_V2_OVERHEAD);
  return { packet, tag, body: packet.subarray(DATA_V2_OVERHEAD) };
}

for (const cipher of ["aes-256-gcm", "chacha20-poly1305"] satisfies CipherName[]) {
  const name = DATA_CIPHERS[cipher];
  const random = () => crypto.getRandomValues(new Uint8Array(KEY_LEN));
  const c2s = { key: random(), implicitIv: new Uint8Array(8) };
  const s2c = { key: random(), implicitIv: new Uint8Array(8) };
  const stats = { malformed: 0, forged: 0, replayed: 0 };
  const client = new DataKey(name, c2s, s2c, 0, 1, stats);
  const server = new DataKey(name, s2c, c2s, 0, 1, stats);
  const { packet, tag, body } = dataPacket();
  crypto.getRandomValues(body);

  Deno.bench(`${name} DataKey.seal ${PACKET} B`, { group: cipher }, () => {
    client.seal(body, PACKET, packet, tag, body);
  });

  // A packet id opens only once, so each iteration seals a batch of fresh packets outside the
  // timed part, then opens them in place. Deno times start()..end() only for iterations of
  // 10 us or more, hence a batch: divide the row by BATCH for one packet.
  const batch = Array.from({ length: BATCH }, dataPacket);
  Deno.bench(`${name} DataKey.open ${BATCH} x ${PACKET} B`, { group: cipher }, (b) => {
    for (const p of batch) client.seal(body, PACKET, p.packet, p.tag, p.body);
    b.start();
    let opened = 0;
    for (const p of batch) {
      if (server.open(p.packet, p.packet.length, p.tag, p.body, p.body) === PACKET) opened++;
    }
    b.end();
    if (opened !== BATCH) throw new Error(`${name}: DataKey.open() rejected a good packet`);
  });
}
