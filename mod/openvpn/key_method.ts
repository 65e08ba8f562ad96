/**
 * The key-method-2 messages: the first TLS application data of every key id, carrying the
 * randoms of the PRF key derivation, the options ("OCC") string, username/password and the
 * client's peer-info (OPENVPN.md section 5).
 *
 *   4 bytes   00 00 00 00
 *   1 byte    key method: low nibble 2 (the high nibble holds flags, 0 in practice)
 *   48 bytes  pre_master (client to server only)
 *   32 bytes  random1
 *   32 bytes  random2
 *   then four strings: options, username, password, peer-info
 *
 * A string is a u16 length that counts a trailing NUL, then the bytes and the NUL; a length of
 * 0 means absent. Every string has a bound (below), checked as soon as its length arrives.
 *
 * The message is TLS plaintext and may arrive in pieces: the caller accumulates plaintext and
 * calls {@linkcode keyMethod2Length} until it gives a number, then decodes that many bytes;
 * what follows belongs to the control messages (control_message.ts). The bounds keep what the
 * caller accumulates under {@linkcode KEY_METHOD_MAX_LEN}.
 *
 * @module
 */

import { OpenVpnPacketError } from "./packet.ts";
import { PRE_MASTER_LEN, RANDOM_LEN } from "./prf.ts";

/** Longest options string, counting its NUL: stock TLS_OPTIONS_LEN. */
export const OPTIONS_MAX = 512;
/**
 * Longest username or password, counting the NUL. Stock allows 128 without PKCS#11 and 4096
 * with it; Debian builds with PKCS#11, and auth tokens and SSO responses need the room, so
 * 4096: what a stock Debian server accepts.
 */
export const USER_PASS_MAX = 4096;
/**
 * Longest peer-info, counting the NUL. Stock reads it without a bound of its own (a 2.6 client
 * writes at most ~1.5 KB, inside one 2048-byte TLS read); 8192 leaves room for clients that
 * send `UV_` variables and GUI details, and bounds what we hold.
 */
export const PEER_INFO_MAX = 8192;
/** Longest key-method-2 message: the client's, with every string at its bound. */
export const KEY_METHOD_MAX_LEN = 5 + PRE_MASTER_LEN + 2 * RANDOM_LEN + 2 + OPTIONS_MAX +
  2 * (2 + USER_PASS_MAX) + 2 + PEER_INFO_MAX;

const KEY_METHOD_2 = 2;
const KEY_METHOD_MASK = 0x0f;
const STRING_BOUNDS = [
  ["options string", OPTIONS_MAX],
  ["username", USER_PASS_MAX],
  ["password", USER_PASS_MAX],
  ["peer-info", PEER_INFO_MAX],
] as const;

/** One key-method-2 message. */
export interface KeyMethodMessage {
  /** 48 random bytes; sent by the client only. */
  preMaster?: Uint8Array;
  /** 32 random bytes. */
  random1: Uint8Array;
  /** 32 random bytes. */
  random2: Uint8Array;
  /** The sender's options string (5.3); "" when absent. */
  options: string;
  /** Absent unless the client authenticates with username/password. */
  username?: string;
  /** Absent unless the client authenticates with username/password. */
  password?: string;
  /** The client's `NAME=value\n` lines (5.4); a 2.6 server sends none. */
  peerInfo?: string;
}

/**
 * Writes a key-method-2 message as `from` sends it.
 *
 * @throws {RangeError} for a pre_master where there must be one (client) or none (server), a
 *   random or pre_master of the wrong length, a string over its bound or containing NUL.
 */
export function encodeKeyMethod2(m: KeyMethodMessage, from: "client" | "server"): Uint8Array {
  const strings = [m.options, m.username, m.password, m.peerInfo].map((text, i) => {
    if (text === undefined) return undefined;
    const [what, bound] = STRING_BOUNDS[i]!;
    const bytes = new TextEncoder().encode(text);
    if (bytes.includes(0)) throw new RangeError(`Cannot encode a ${what} that contains NUL`);
    if (bytes.length + 1 > bound) {
      throw new RangeError(
        `Cannot encode a ${what} of ${bytes.length} bytes: at most ${bound - 1} fit`,
      );
    }
    return bytes;
  });
  if (from === "client") {
    if (m.preMaster?.length !== PRE_MASTER_LEN) {
      throw new RangeError(
        `A client's key-method-2 message needs a ${PRE_MASTER_LEN}-byte pre_master`,
      );
    }
  } else if (m.preMaster !== undefined) {
    throw new RangeError("A server's key-method-2 message has no pre_master");
  }
  for (const [what, random] of [["random1", m.random1], ["random2", m.random2]] as const) {
    if (random.length !== RANDOM_LEN) {
      throw new RangeError(`A ${what} has ${RANDOM_LEN} bytes, not ${random.length}`);
    }
  }
  const length = fixedLength(from) +
    strings.reduce((sum, bytes) => sum + 2 + (bytes ? bytes.length + 1 : 0), 0);
  const out = new Uint8Array(length);
  const view = new DataView(out.buffer);
  out[4] = KEY_METHOD_2;
  let offset = 5;
  for (const part of [m.preMaster, m.random1, m.random2]) {
    if (part === undefined) continue;
    out.set(part, offset);
    offset += part.length;
  }
  for (const bytes of strings) {
    if (bytes === undefined) {
      offset += 2; // u16 0: absent
      continue;
    }
    view.setUint16(offset, bytes.length + 1);
    out.set(bytes, offset + 2);
    offset += 2 + bytes.length + 1; // and the NUL, already 0
  }
  return out;
}

/**
 * How many bytes of `bytes` (the start of the plaintext) make up `from`'s key-method-2
 * message, or undefined while more are needed. Checks what it can as early as it can, so that
 * a bad or oversized message is refused before it is accumulated.
 *
 * @throws {OpenVpnPacketError} for a non-zero leading literal, a key method other than 2, or
 *   a string length over its bound.
 */
export function keyMethod2Length(
  bytes: Uint8Array,
  from: "client" | "server",
): number | undefined {
  for (let i = 0; i < Math.min(4, bytes.length); i++) {
    if (bytes[i] !== 0) {
      throw new OpenVpnPacketError("key-method-2 message does not start with four zero bytes");
    }
  }
  if (bytes.length < 5) return undefined;
  const method = bytes[4]! & KEY_METHOD_MASK;
  if (method !== KEY_METHOD_2) {
    throw new OpenVpnPacketError(`key method ${method} is not supported, only 2`);
  }
  let offset = fixedLength(from);
  for (const [what, bound] of STRING_BOUNDS) {
    if (bytes.length < offset + 2) return undefined;
    const length = (bytes[offset]! << 8) | bytes[offset + 1]!;
    if (length > bound) {
      throw new OpenVpnPacketError(`${what} of ${length} bytes is over its bound of ${bound}`);
    }
    offset += 2 + length;
  }
  return bytes.length < offset ? undefined : offset;
}

/**
 * Reads `from`'s key-method-2 message: exactly the bytes {@linkcode keyMethod2Length}
 * counted. The byte fields are copies, so the caller may wipe its plaintext buffer.
 *
 * @throws {OpenVpnPacketError} for anything {@linkcode keyMethod2Length} rejects, a truncated
 *   message, trailing bytes, or a string without its trailing NUL, with a NUL inside, or not
 *   UTF-8.
 */
export function decodeKeyMethod2(bytes: Uint8Array, from: "client" | "server"): KeyMethodMessage {
  const length = keyMethod2Length(bytes, from);
  if (length === undefined) throw new OpenVpnPacketError("key-method-2 message truncated");
  if (length < bytes.length) {
    throw new OpenVpnPacketError(
      `key-method-2 message followed by ${bytes.length - length} unexpected bytes`,
    );
  }
  // keyMethod2Length() has checked every length, so each field below is there.
  let offset = 5;
  const take = (n: number): Uint8Array => {
    const field = bytes.subarray(offset, offset + n);
    offset += n;
    return field;
  };
  const preMaster = from === "client" ? take(PRE_MASTER_LEN).slice() : undefined;
  const random1 = take(RANDOM_LEN).slice();
  const random2 = take(RANDOM_LEN).slice();
  const [options, username, password, peerInfo] = STRING_BOUNDS.map(([what]) => {
    const n = (bytes[offset]! << 8) | bytes[offset + 1]!;
    offset += 2;
    return n === 0 ? undefined : decodeString(take(n), what);
  });
  return {
    ...(preMaster && { preMaster }),
    random1,
    random2,
    options: options ?? "",
    ...(username !== undefined && { username }),
    ...(password !== undefined && { password }),
    ...(peerInfo !== undefined && { peerInfo }),
  };
}

const UTF8 = new TextDecoder("utf-8", { fatal: true });

/** A string field's bytes, its NUL included, as text. */
function decodeString(field: Uint8Array, what: string): string {
  if (field[field.length - 1] !== 0) {
    throw new OpenVpnPacketError(`${what} does not end with NUL`);
  }
  const text = field.subarray(0, field.length - 1);
  if (text.includes(0)) throw new OpenVpnPacketError(`${what} contains NUL`);
  try {
    return UTF8.decode(text);
  } catch {
    throw new OpenVpnPacketError(`${what} is not UTF-8`);
  }
}

/** Bytes before the options string. */
function fixedLength(from: "client" | "server"): number {
  return 5 + (from === "client" ? PRE_MASTER_LEN : 0) + 2 * RANDOM_LEN;
}

/** IV_PROTO bits (5.4). */
export const IvProto = {
  /** P_DATA_V2 and a peer id. */
  DATA_V2: 1 << 1,
  /** The server may push without waiting for PUSH_REQUEST. */
  REQUEST_PUSH: 1 << 2,
  /** RFC 5705 key derivation (tls-ekm): we never use it. */
  TLS_KEY_EXPORT: 1 << 3,
  /** `AUTH_PENDING,timeout N`. */
  AUTH_PENDING_KW: 1 << 4,
  /** The pushed `dns` option. */
  DNS_OPTION: 1 << 6,
  /** The `EXIT` control message; accepts `protocol-flags`. */
  CC_EXIT_NOTIFY: 1 << 7,
  /** `AUTH_FAILED,TEMP`. */
  AUTH_FAIL_TEMP: 1 << 8,
  /** Dynamic tls-crypt: needs the TLS exporter, never used. */
  DYN_TLS_CRYPT: 1 << 9,
  /** The 2.7+ epoch data format: never used. */
  DATA_EPOCH: 1 << 10,
} as const;

/** What a server needs from a client's peer-info (5.4, 5.5). */
export interface PeerInfo {
  /** IV_VER. */
  version?: string;
  /** IV_PLAT: linux, win, mac, android, ios, ... */
  platform?: string;
  /** IV_PROTO, a bit field of {@linkcode IvProto}; 0 when absent or not a number. */
  proto: number;
  /** IV_CIPHERS, the client's data ciphers in its order; empty when absent. */
  ciphers: string[];
  /** IV_NCP (2: AES-128-GCM and AES-256-GCM, for clients without IV_CIPHERS). */
  ncp?: number;
  /** IV_MTU: the largest tun MTU the client accepts in a pushed `tun-mtu`. */
  mtu?: number;
  /** IV_COMP_STUBv2=1: accepts `compress stub-v2`. */
  compStubV2: boolean;
  /** IV_LZO_STUB=1. */
  lzoStub: boolean;
  /** Every `NAME=value` line kept, the first of each name. */
  raw: Map<string, string>;
}

/** Most peer-info lines read; the rest are ignored. */
export const PEER_INFO_MAX_LINES = 256;
/** Most IV_CIPHERS entries read. */
const MAX_CIPHERS = 64;

/**
 * Reads a client's peer-info. Unknown lines are kept in `raw` only, lines without `=` are
 * ignored, and it reads at most {@linkcode PEER_INFO_MAX} characters and
 * {@linkcode PEER_INFO_MAX_LINES} lines: it never throws.
 *
 * @example
 * ```ts
 * parsePeerInfo("IV_VER=2.6.14\nIV_PROTO=990\nIV_CIPHERS=AES-256-GCM:CHACHA20-POLY1305\n");
 * // { version: "2.6.14", proto: 990, ciphers: ["AES-256-GCM", "CHACHA20-POLY1305"], ... }
 * ```
 */
export function parsePeerInfo(text: string): PeerInfo {
  const raw = new Map<string, string>();
  const lines = text.slice(0, PEER_INFO_MAX).split("\n", PEER_INFO_MAX_LINES);
  for (const line of lines) {
    const equals = line.indexOf("=");
    if (equals <= 0) continue;
    const name = line.slice(0, equals);
    if (!raw.has(name)) raw.set(name, line.slice(equals + 1).replace(/\r$/, ""));
  }
  const version = raw.get("IV_VER");
  const platform = raw.get("IV_PLAT");
  const ncp = decimal(raw.get("IV_NCP"));
  const mtu = decimal(raw.get("IV_MTU"));
  return {
    ...(version !== undefined && { version }),
    ...(platform !== undefined && { platform }),
    proto: decimal(raw.get("IV_PROTO")) ?? 0,
    ciphers: (raw.get("IV_CIPHERS") ?? "").split(":", MAX_CIPHERS).filter((name) => name !== ""),
    ...(ncp !== undefined && { ncp }),
    ...(mtu !== undefined && { mtu }),
    compStubV2: raw.get("IV_COMP_STUBv2") === "1",
    lzoStub: raw.get("IV_LZO_STUB") === "1",
    raw,
  };
}

/** A decimal of at most 9 digits (so an exact integer), or undefined. */
function decimal(value: string | undefined): number | undefined {
  return value !== undefined && /^[0-9]{1,9}$/.test(value) ? Number(value) : undefined;
}

/** The data ciphers an options string can name. */
export type DataCipher = "AES-256-GCM" | "AES-128-GCM" | "CHACHA20-POLY1305";

// What stock 2.6.14 adds to tun-mtu for its OCC link-mtu with each cipher, over UDP (TCP adds
// 2 for the length prefix), and the keysize it prints. Measured with `openvpn --tls-server
// --cipher X --tun-mtu N --verb 9` (its "Local Options String" line), N = 1280/1400/1500/9000.
const OCC_CIPHERS: Record<DataCipher, { linkOverhead: number; keysize: number }> = {
  "AES-256-GCM": { linkOverhead: 49, keysize: 256 },
  "AES-128-GCM": { linkOverhead: 49, keysize: 128 },
  "CHACHA20-POLY1305": { linkOverhead: 34, keysize: 256 },
};

/** Parameters of an options string. */
export interface OptionsStringParams<P extends string> {
  /** The OCC proto name: "UDPv4" (also for IPv6, as stock writes) or the TCP form. */
  proto: P;
  /** The tun MTU, 68-65535. */
  tunMtu: number;
  /** The data cipher. */
  cipher: DataCipher;
}

/**
 * The server's options string (5.3), as stock 2.6.14 writes it for the same settings, e.g.
 * `V4,dev-type tun,link-mtu 1549,tun-mtu 1500,proto UDPv4,cipher AES-256-GCM,auth
 * [null-digest],keysize 256,key-method 2,tls-server`. Peers compare it for warnings only, but
 * a 2.6 server falls back to its `cipher` for clients that announce no ciphers.
 *
 * @throws {RangeError} for a proto, MTU or cipher outside the ones listed.
 */
export function serverOptionsString(
  p: OptionsStringParams<"UDPv4" | "TCPv4_SERVER">,
): string {
  return optionsString(p, ["UDPv4", "TCPv4_SERVER"], "tls-server");
}

/** The client's options string: as the server's, with `tls-client`. */
export function clientOptionsString(
  p: OptionsStringParams<"UDPv4" | "TCPv4_CLIENT">,
): string {
  return optionsString(p, ["UDPv4", "TCPv4_CLIENT"], "tls-client");
}

function optionsString(
  p: OptionsStringParams<string>,
  protos: readonly string[],
  role: "tls-server" | "tls-client",
): string {
  if (!protos.includes(p.proto)) {
    throw new RangeError(`Cannot write an options string for proto "${p.proto}"`);
  }
  if (!Number.isInteger(p.tunMtu) || p.tunMtu < 68 || p.tunMtu > 65535) {
    throw new RangeError(`Cannot write an options string for tun-mtu ${p.tunMtu}: not 68-65535`);
  }
  const cipher = Object.hasOwn(OCC_CIPHERS, p.cipher) ? OCC_CIPHERS[p.cipher] : undefined;
  if (cipher === undefined) {
    throw new RangeError(`Cannot write an options string for cipher "${p.cipher}"`);
  }
  const linkMtu = p.tunMtu + cipher.linkOverhead + (p.proto === "UDPv4" ? 0 : 2);
  return [
    "V4",
    "dev-type tun",
    `link-mtu ${linkMtu}`,
    `tun-mtu ${p.tunMtu}`,
    `proto ${p.proto}`,
    `cipher ${p.cipher}`,
    "auth [null-digest]",
    `keysize ${cipher.keysize}`,
    "key-method 2",
    role,
  ].join(",");
}
