/**
 * Control messages of the TLS channel: JSON payloads of HELLO, AUTH, PUSH, ERROR and BYE
 * frames, decoded with a check of every field so that a peer's bad message is a clear
 * {@linkcode FrameError}, never a crash.
 *
 * @module
 */

import { isDomainName, MAX_DNS_DOMAINS, MAX_DNS_SERVERS } from "../config.ts";
import { formatIPv6, parseCidr, parseIPv4, parseIPv6 } from "../core/ip.ts";
import { SUBNET6_MAX_PREFIX, SUBNET6_MIN_PREFIX } from "../core/subnet6.ts";
import type { AuthFailure } from "../pki.ts";
import { FrameError } from "./wire.ts";

/** Protocol version; it is also in the ALPN id so that mismatched peers fail the handshake. */
export const PROTOCOL_VERSION = 1;

/** ALPN id of this protocol version. */
export const ALPN = `vpn/${PROTOCOL_VERSION}`;

/** HELLO: the server's challenge. */
export interface Hello {
  version: number;
  /** 32 random bytes, base64; the client signs them (PROTOCOL.md). */
  nonce: string;
}

/** AUTH: the client's certificate and proof that it holds the key. */
export interface Auth {
  version: number;
  /** The client certificate, PEM. */
  cert: string;
  /** 32 random bytes of the client, base64. */
  nonce: string;
  /** The host name or IP the client dialled; bound into the signature. */
  server_name: string;
  /** ECDSA P-256 SHA-256 signature over the challenge, base64. */
  signature: string;
  /** The address the client had before, asked back after a reconnect. */
  address?: string;
  /** The client's TUN takes packets with a virtio-net header (TUN offload). */
  offload?: boolean;
}

/** PUSH: the network settings the server gives an authenticated client. */
export interface Push {
  /** The client's tunnel address, e.g. 10.8.0.2. */
  address: string;
  /** Prefix length of the tunnel subnet, e.g. 24. */
  prefix: number;
  /** The server's tunnel address. */
  gateway: string;
  /** Networks reached through the tunnel, CIDR; IPv6 ones only with `address6`. */
  routes: string[];
  /** Inner MTU of the tunnel. */
  mtu: number;
  /** Keepalive: ping every `interval` s; end after `timeout` s of silence. */
  keepalive: { interval: number; timeout: number };
  /** Every DATA frame and datagram, both ways, starts with a virtio-net header. */
  offload?: boolean;
  /** The client's IPv6 tunnel address when the tunnel carries IPv6 (`subnet6`), e.g. fd00:8::2. */
  address6?: string;
  /** Prefix length of `subnet6`, 64 to 120; present exactly when `address6` is. */
  prefix6?: number;
  /** The server's IPv6 tunnel address; present exactly when `address6` is. */
  gateway6?: string;
  /** Send all traffic through the tunnel: split default routes and a host route to the server. */
  redirect_gateway?: boolean;
  /** The DNS servers and search domains to use while connected. */
  dns?: PushDns;
}

/** The DNS part of a PUSH: IP literals and domain names, each list short (PROTOCOL.md). */
export interface PushDns {
  servers: string[];
  domains: string[];
}

/** Why a session was refused or ended: a refused certificate, or one of the others. */
export type ErrorReason =
  | AuthFailure
  | "pool-exhausted"
  | "protocol"
  | "timeout"
  | "replaced"
  | "shutdown";

/** ERROR: a refusal or a fatal problem; the sender closes after it. */
export interface ErrorMessage {
  reason: ErrorReason;
  message: string;
}

/** BYE: an orderly goodbye. */
export interface Bye {
  reason: string;
}

/** UDP_OFFER: the client asks for the UDP data channel. */
export interface UdpOffer {
  /** AEADs the client can use, most preferred first. */
  ciphers: string[];
  /** 32 random bytes, base64: the client's half of the key material. */
  random: string;
  /** The client's ephemeral X25519 public key for epoch 0, 32 bytes, base64. */
  share: string;
}

/** UDP_ACCEPT: the server's answer to a UDP_OFFER. */
export interface UdpAccept {
  /** The AEAD chosen, from the client's list. */
  cipher: string;
  /** The session id every datagram of this session carries. */
  session: number;
  /** 32 random bytes, base64: the server's half of the key material. */
  random: string;
  /** The server's ephemeral X25519 public key for epoch 0, 32 bytes, base64. */
  share: string;
}

/** UDP_REFUSE: no UDP data channel. */
export interface UdpRefuse {
  reason: string;
}

/** REKEY, REKEY_ACK and REKEY_DONE: the next epoch's key material (none in REKEY_DONE). */
export interface Rekey {
  epoch: number;
  random?: string;
  /** The sender's ephemeral X25519 public key for this epoch (not in REKEY_DONE). */
  share?: string;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/** Encodes a control message as a frame payload. */
export function encodeMessage(
  message: Hello | Auth | Push | ErrorMessage | Bye | UdpOffer | UdpAccept | UdpRefuse | Rekey,
): Uint8Array {
  return encoder.encode(JSON.stringify(message));
}

type Fields = Record<string, unknown>;

function parse(payload: Uint8Array, what: string): Fields {
  let value: unknown;
  try {
    value = JSON.parse(decoder.decode(payload));
  } catch {
    throw new FrameError(`${what}: payload is not UTF-8 JSON`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new FrameError(`${what}: payload is not a JSON object`);
  }
  return value as Fields;
}

function string(fields: Fields, key: string, what: string, max = 8192): string {
  const value = fields[key];
  if (typeof value !== "string" || value.length > max) {
    throw new FrameError(`${what}: "${key}" must be a string of at most ${max} characters`);
  }
  return value;
}

function integer(fields: Fields, key: string, what: string, min: number, max: number): number {
  const value = fields[key];
  if (!Number.isInteger(value) || (value as number) < min || (value as number) > max) {
    throw new FrameError(`${what}: "${key}" must be a whole number from ${min} to ${max}`);
  }
  return value as number;
}

function boolean(fields: Fields, key: string, what: string): boolean {
  const value = fields[key];
  if (typeof value !== "boolean") throw new FrameError(`${what}: "${key}" must be true or false`);
  return value;
}

/** Decodes a HELLO payload. */
export function decodeHello(payload: Uint8Array): Hello {
  const f = parse(payload, "HELLO");
  return {
    version: integer(f, "version", "HELLO", 0, 255),
    nonce: string(f, "nonce", "HELLO", 64),
  };
}

/** Decodes an AUTH payload. */
export function decodeAuth(payload: Uint8Array): Auth {
  const f = parse(payload, "AUTH");
  const auth: Auth = {
    version: integer(f, "version", "AUTH", 0, 255),
    cert: string(f, "cert", "AUTH", 16384),
    nonce: string(f, "nonce", "AUTH", 64),
    server_name: string(f, "server_name", "AUTH", 255),
    signature: string(f, "signature", "AUTH", 256),
  };
  if (f.address !== undefined) auth.address = string(f, "address", "AUTH", 64);
  if (f.offload !== undefined) auth.offload = boolean(f, "offload", "AUTH");
  return auth;
}

/** Decodes a PUSH payload. */
export function decodePush(payload: Uint8Array): Push {
  const f = parse(payload, "PUSH");
  // The three IPv6 fields come together: an address without its prefix or gateway (or the
  // reverse) is no tunnel the client can set up.
  const v6 = ["address6", "prefix6", "gateway6"].filter((key) => f[key] !== undefined);
  if (v6.length !== 0 && v6.length !== 3) {
    throw new FrameError(`PUSH: "address6", "prefix6" and "gateway6" come together or not at all`);
  }
  const routes = pushRoutes(f.routes, v6.length === 3);
  const keepalive = f.keepalive;
  if (typeof keepalive !== "object" || keepalive === null) {
    throw new FrameError(`PUSH: "keepalive" must be an object`);
  }
  const push: Push = {
    address: ipv4(f, "address", "PUSH"),
    prefix: integer(f, "prefix", "PUSH", 8, 30),
    gateway: ipv4(f, "gateway", "PUSH"),
    routes,
    mtu: integer(f, "mtu", "PUSH", 576, 65535),
    keepalive: {
      interval: integer(keepalive as Fields, "interval", "PUSH keepalive", 1, 3600),
      timeout: integer(keepalive as Fields, "timeout", "PUSH keepalive", 2, 86400),
    },
  };
  if (f.offload !== undefined) push.offload = boolean(f, "offload", "PUSH");
  if (v6.length === 3) {
    push.address6 = ipv6(f, "address6", "PUSH");
    push.prefix6 = integer(f, "prefix6", "PUSH", SUBNET6_MIN_PREFIX, SUBNET6_MAX_PREFIX);
    push.gateway6 = ipv6(f, "gateway6", "PUSH");
  }
  if (f.redirect_gateway !== undefined) {
    push.redirect_gateway = boolean(f, "redirect_gateway", "PUSH");
  }
  if (f.dns !== undefined) push.dns = pushDns(f.dns);
  return push;
}

/** Routes one PUSH may carry (and `push.routes` may list), IPv4 and IPv6 in all. */
export const MAX_ROUTES = 256;

/** The `routes` of a PUSH: canonical networks, IPv6 ones only in a tunnel with IPv6. */
function pushRoutes(routes: unknown, ipv6: boolean): string[] {
  if (
    !Array.isArray(routes) || routes.length > MAX_ROUTES ||
    routes.some((r) => typeof r !== "string" || !isNetwork(r, ipv6))
  ) {
    throw new FrameError(
      `PUSH: "routes" must be a list of at most ${MAX_ROUTES} IPv4 networks (a.b.c.d/n)` +
        (ipv6
          ? " and IPv6 networks in canonical form (fd00:1::/64)"
          : `; IPv6 networks only with "address6"`),
    );
  }
  return routes as string[];
}

/** The `dns` of a PUSH: at most MAX_DNS_SERVERS IP literals, MAX_DNS_DOMAINS domain names. */
function pushDns(value: unknown): PushDns {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new FrameError(`PUSH: "dns" must be an object {servers, domains}`);
  }
  const { servers, domains } = value as Fields;
  if (
    !Array.isArray(servers) || servers.length > MAX_DNS_SERVERS ||
    servers.some((s) => typeof s !== "string" || !isAddress(s))
  ) {
    throw new FrameError(
      `PUSH: "dns.servers" must be a list of at most ${MAX_DNS_SERVERS} IPv4 or IPv6 ` +
        `addresses (IPv6 in canonical form)`,
    );
  }
  if (
    !Array.isArray(domains) || domains.length > MAX_DNS_DOMAINS ||
    domains.some((d) => typeof d !== "string" || !isDomainName(d))
  ) {
    throw new FrameError(
      `PUSH: "dns.domains" must be a list of at most ${MAX_DNS_DOMAINS} domain names ` +
        `(letters, digits, "-" and ".", at most 253 bytes)`,
    );
  }
  return { servers: servers as string[], domains: domains as string[] };
}

/** The string `key`, an IPv4 address in dotted-quad form. */
function ipv4(fields: Fields, key: string, what: string): string {
  const text = string(fields, key, what, 15);
  try {
    parseIPv4(text);
  } catch {
    throw new FrameError(`${what}: "${key}" must be an IPv4 address`);
  }
  return text;
}

/**
 * The string `key`, an IPv6 address in the canonical form of RFC 5952: what the server
 * sends, and so a reconnect's PUSH compares equal to the last one's as text.
 */
function ipv6(fields: Fields, key: string, what: string): string {
  const text = string(fields, key, what, 45);
  if (!isIpv6Canonical(text)) {
    throw new FrameError(`${what}: "${key}" must be an IPv6 address in canonical form`);
  }
  return text;
}

function isIpv6Canonical(text: string): boolean {
  try {
    return formatIPv6(parseIPv6(text)) === text;
  } catch {
    return false;
  }
}

/** Whether `text` is an IPv4 address or an IPv6 one in canonical form. */
function isAddress(text: string): boolean {
  if (text.includes(":")) return isIpv6Canonical(text);
  try {
    parseIPv4(text);
    return true;
  } catch {
    return false;
  }
}

/** Whether `text` is a network in canonical form (no host bits set), IPv6 only if `ipv6`. */
function isNetwork(text: string, ipv6: boolean): boolean {
  try {
    const cidr = parseCidr(text);
    return (cidr.family === 4 || ipv6) && text === `${cidr.network}/${cidr.prefix}`;
  } catch {
    return false;
  }
}

/** Decodes an ERROR payload. */
export function decodeError(payload: Uint8Array): ErrorMessage {
  const f = parse(payload, "ERROR");
  return {
    reason: string(f, "reason", "ERROR", 64) as ErrorReason,
    message: string(f, "message", "ERROR", 1024),
  };
}

/** Decodes a BYE payload. */
export function decodeBye(payload: Uint8Array): Bye {
  return { reason: string(parse(payload, "BYE"), "reason", "BYE", 1024) };
}

/** The base64 string `key` of 32 bytes: a random or an X25519 key share. */
function random32(fields: Fields, key: string, what: string): string {
  const text = string(fields, key, what, 64);
  let bytes: Uint8Array;
  try {
    bytes = Uint8Array.fromBase64(text);
  } catch {
    throw new FrameError(`${what}: "${key}" is not base64`);
  }
  if (bytes.length !== 32) throw new FrameError(`${what}: "${key}" must be 32 bytes`);
  return text;
}

/** AEADs of the UDP data channel, by their names on the wire. */
export const UDP_CIPHERS = ["aes-256-gcm", "chacha20-poly1305"] as const;

/** One of {@linkcode UDP_CIPHERS}. */
export type UdpCipher = typeof UDP_CIPHERS[number];

/** Decodes a UDP_OFFER payload. */
export function decodeUdpOffer(payload: Uint8Array): UdpOffer {
  const f = parse(payload, "UDP_OFFER");
  const ciphers = f.ciphers;
  if (!Array.isArray(ciphers) || ciphers.length > 8 || ciphers.some((c) => typeof c !== "string")) {
    throw new FrameError(`UDP_OFFER: "ciphers" must be a list of at most 8 names`);
  }
  return {
    ciphers: ciphers as string[],
    random: random32(f, "random", "UDP_OFFER"),
    share: random32(f, "share", "UDP_OFFER"),
  };
}

/** Decodes a UDP_ACCEPT payload. */
export function decodeUdpAccept(payload: Uint8Array): UdpAccept {
  const f = parse(payload, "UDP_ACCEPT");
  const cipher = string(f, "cipher", "UDP_ACCEPT", 64);
  if (!(UDP_CIPHERS as readonly string[]).includes(cipher)) {
    throw new FrameError(`UDP_ACCEPT: cipher "${cipher}" was not offered`);
  }
  return {
    cipher,
    session: integer(f, "session", "UDP_ACCEPT", 0, 0xffffffff),
    random: random32(f, "random", "UDP_ACCEPT"),
    share: random32(f, "share", "UDP_ACCEPT"),
  };
}

/** Decodes a UDP_REFUSE payload. */
export function decodeUdpRefuse(payload: Uint8Array): UdpRefuse {
  return { reason: string(parse(payload, "UDP_REFUSE"), "reason", "UDP_REFUSE", 1024) };
}

/** The key material a REKEY or REKEY_ACK must carry: the peer's random and key share. */
export function keyMaterial(
  rekey: Rekey,
  what: string,
): { random: Uint8Array; share: Uint8Array } {
  if (rekey.random === undefined) throw new FrameError(`${what}: "random" is missing`);
  if (rekey.share === undefined) throw new FrameError(`${what}: "share" is missing`);
  return { random: Uint8Array.fromBase64(rekey.random), share: Uint8Array.fromBase64(rekey.share) };
}

/** Decodes a REKEY, REKEY_ACK or REKEY_DONE payload. */
export function decodeRekey(payload: Uint8Array, what: string): Rekey {
  const f = parse(payload, what);
  const rekey: Rekey = { epoch: integer(f, "epoch", what, 1, Number.MAX_SAFE_INTEGER) };
  if (f.random !== undefined) rekey.random = random32(f, "random", what);
  if (f.share !== undefined) rekey.share = random32(f, "share", what);
  return rekey;
}
