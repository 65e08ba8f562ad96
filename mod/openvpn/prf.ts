/**
 * OpenVPN's data-channel key derivation without a TLS exporter: the TLS 1.0 PRF over the
 * randoms of the key-method-2 exchange (OPENVPN.md section 6, TV1, TV2).
 *
 * Deno's `node:tls` has no RFC 5705 exporter, so tls-ekm is out of reach; stock 2.6 peers fall
 * back to this PRF whenever tls-ekm is not negotiated (0.1). WebCrypto has no MD5, which the
 * PRF needs; `node:crypto` HMAC-MD5 works in Deno. The derivation runs once per key, not per
 * packet.
 *
 *   master = PRF(client pre_master, "OpenVPN master secret" || client random1 || server random1, 48)
 *   key2   = PRF(master, "OpenVPN key expansion" || client random2 || server random2
 *                        || client session id || server session id, 256)
 *
 * @module
 */

import { createHmac } from "node:crypto";
import { SESSION_ID_LEN } from "./packet.ts";
import { concat } from "./bytes.ts";

/** Bytes in the pre-master secret the client sends. */
export const PRE_MASTER_LEN = 48;
/** Bytes in each random of the key-method-2 messages. */
export const RANDOM_LEN = 32;
/** Bytes in the key block (key2). */
export const KEY_BLOCK_LEN = 256;
/** Bytes of a data-channel cipher key: AES-256-GCM and CHACHA20-POLY1305. */
export const DATA_KEY_LEN = 32;
/** Bytes of the implicit IV: the AEAD nonce (12) less the packet id (4). */
export const IMPLICIT_IV_LEN = 8;

const MASTER_LEN = 48;
// ASCII, no trailing space and no NUL (6.2); the wire draft shows a trailing space, wrongly.
const MASTER_LABEL = new TextEncoder().encode("OpenVPN master secret");
const EXPANSION_LABEL = new TextEncoder().encode("OpenVPN key expansion");

/**
 * The TLS 1.0/1.1 PRF (RFC 2246 section 5) with the label already in `seed`, as OpenVPN calls
 * it: P_MD5(first half of secret, seed) XOR P_SHA1(second half, seed), the halves sharing the
 * middle byte when the secret's length is odd.
 *
 * @example
 * ```ts
 * const text = new TextEncoder();
 * tls1Prf(text.encode("tls1-prf-test-secret"), text.encode("tls1-prf-test"), 8);
 * // -> 7144fe2540737595 (OpenVPN's own start-up self test)
 * ```
 */
export function tls1Prf(secret: Uint8Array, seed: Uint8Array, length: number): Uint8Array {
  if (!Number.isInteger(length) || length < 0) {
    throw new RangeError(`Cannot derive ${length} bytes: must be a non-negative integer`);
  }
  const half = Math.ceil(secret.length / 2);
  const out = pHash("md5", secret.subarray(0, half), seed, length);
  const sha1 = pHash("sha1", secret.subarray(secret.length - half), seed, length);
  for (let i = 0; i < length; i++) out[i]! ^= sha1[i]!;
  return out;
}

/** P_hash: HMAC(S, A1 || seed) || HMAC(S, A2 || seed) || ..., A0 = seed, Ai = HMAC(S, Ai-1). */
function pHash(
  hash: "md5" | "sha1",
  secret: Uint8Array,
  seed: Uint8Array,
  length: number,
): Uint8Array {
  const out = new Uint8Array(length);
  let a: Uint8Array = seed;
  for (let filled = 0; filled < length;) {
    a = createHmac(hash, secret).update(a).digest();
    const block = createHmac(hash, secret).update(a).update(seed).digest();
    const take = Math.min(block.length, length - filled);
    out.set(block.subarray(0, take), filled);
    filled += take;
  }
  return out;
}

/** What the key expansion needs from one key-method-2 exchange and the control session. */
export interface KeySource {
  /** The client's 48-byte pre-master secret (5.1). */
  preMaster: Uint8Array;
  /** The client's first 32-byte random. */
  clientRandom1: Uint8Array;
  /** The client's second 32-byte random. */
  clientRandom2: Uint8Array;
  /** The server's first 32-byte random. */
  serverRandom1: Uint8Array;
  /** The server's second 32-byte random. */
  serverRandom2: Uint8Array;
  /** The TLS client's 8-byte control session id, whichever side computes. */
  clientSessionId: Uint8Array;
  /** The TLS server's 8-byte control session id. */
  serverSessionId: Uint8Array;
}

/**
 * The 48-byte master secret of one key exchange, the first PRF step of 6.2. Only
 * {@linkcode keyExpansion} needs it; it is exported for the test vector, which logs it.
 *
 * @throws {RangeError} for an input of the wrong length.
 */
export function masterSecret(
  source: Pick<KeySource, "preMaster" | "clientRandom1" | "serverRandom1">,
): Uint8Array {
  checkLength(source.preMaster, PRE_MASTER_LEN, "pre-master secret");
  checkLength(source.clientRandom1, RANDOM_LEN, "client random1");
  checkLength(source.serverRandom1, RANDOM_LEN, "server random1");
  return tls1Prf(
    source.preMaster,
    concat(MASTER_LABEL, source.clientRandom1, source.serverRandom1),
    MASTER_LEN,
  );
}

/**
 * The 256-byte key block ("key2", 6.1) of one key exchange.
 *
 * @throws {RangeError} for an input of the wrong length.
 */
export function keyExpansion(source: KeySource): Uint8Array {
  checkLength(source.clientRandom2, RANDOM_LEN, "client random2");
  checkLength(source.serverRandom2, RANDOM_LEN, "server random2");
  checkLength(source.clientSessionId, SESSION_ID_LEN, "client session id");
  checkLength(source.serverSessionId, SESSION_ID_LEN, "server session id");
  const master = masterSecret(source);
  const block = tls1Prf(
    master,
    concat(
      EXPANSION_LABEL,
      source.clientRandom2,
      source.serverRandom2,
      source.clientSessionId,
      source.serverSessionId,
    ),
    KEY_BLOCK_LEN,
  );
  master.fill(0);
  return block;
}

/**
 * One side's data-channel keys (6.1): a 32-byte cipher key and an 8-byte implicit IV per
 * direction.
 */
export interface DataKeys {
  /** The key this side seals with. */
  encryptKey: Uint8Array;
  /** The implicit IV this side seals with: the nonce is packet id || this. */
  encryptIv: Uint8Array;
  /** The key this side opens the peer's packets with. */
  decryptKey: Uint8Array;
  /** The peer's implicit IV. */
  decryptIv: Uint8Array;
}

/**
 * Cuts the key block into `role`'s keys: client to server is key[0] (cipher bytes 0-31,
 * IV bytes 64-71), server to client key[1] (128-159, 192-199). Copies, so the caller may wipe
 * the block.
 *
 * @throws {RangeError} for a block that is not 256 bytes.
 */
export function dataKeys(block: Uint8Array, role: "server" | "client"): DataKeys {
  checkLength(block, KEY_BLOCK_LEN, "key block");
  const clientToServer = {
    key: block.slice(0, DATA_KEY_LEN),
    iv: block.slice(64, 64 + IMPLICIT_IV_LEN),
  };
  const serverToClient = {
    key: block.slice(128, 128 + DATA_KEY_LEN),
    iv: block.slice(192, 192 + IMPLICIT_IV_LEN),
  };
  const [send, receive] = role === "client"
    ? [clientToServer, serverToClient]
    : [serverToClient, clientToServer];
  return {
    encryptKey: send.key,
    encryptIv: send.iv,
    decryptKey: receive.key,
    decryptIv: receive.iv,
  };
}

function checkLength(bytes: Uint8Array, length: number, what: string): void {
  if (bytes.length !== length) {
    throw new RangeError(`A ${what} has ${length} bytes, not ${bytes.length}`);
  }
}
