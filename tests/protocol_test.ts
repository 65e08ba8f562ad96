/**
 * PROTOCOL.md's byte formats, checked against implementations written another way: the UDP
 * key schedule through WebCrypto's HKDF, datagrams opened with node:crypto from nothing but
 * the documented key, nonce and associated data, the AUTH challenge built by hand, and PUSH
 * as JSON written by hand: its optional IPv6, full-tunnel and DNS fields and their limits.
 */

import { createDecipheriv } from "node:crypto";
import { assertEquals, assertMatch, assertThrows } from "./_assert.ts";
import { decodePush, encodeMessage, type Push } from "../mod/native/messages.ts";
import { FrameError } from "../mod/native/wire.ts";
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

/** A PUSH of a server without subnet6, full tunnel or DNS: the fields PROTOCOL.md v1 began with. */
const OLD_PUSH = {
  address: "10.8.0.2",
  prefix: 24,
  gateway: "10.8.0.1",
  routes: ["192.168.50.0/24"],
  mtu: 1400,
  keepalive: { interval: 10, timeout: 60 },
};

/** The same with every optional field of issue 11, as PROTOCOL.md names them. */
const FULL_PUSH = {
  ...OLD_PUSH,
  address6: "fd00:8::2",
  prefix6: 64,
  gateway6: "fd00:8::1",
  routes: ["192.168.50.0/24", "fd00:50::/64"],
  redirect_gateway: true,
  dns: { servers: ["10.8.0.1", "fd00:8::1"], domains: ["corp.example", "lab.corp.example"] },
};

const json = (value: unknown) => new TextEncoder().encode(JSON.stringify(value));

Deno.test("decodePush() takes an old server's PUSH: no IPv6, no redirect_gateway, no dns", () => {
  const push = decodePush(json(OLD_PUSH));
  assertEquals(push, OLD_PUSH);
  assertEquals([push.address6, push.prefix6, push.gateway6], [undefined, undefined, undefined]);
  assertEquals([push.redirect_gateway, push.dns], [undefined, undefined]);
});

Deno.test("decodePush() takes address6/prefix6/gateway6, IPv6 routes, redirect_gateway and dns as documented", () => {
  assertEquals(decodePush(json(FULL_PUSH)), FULL_PUSH);
  // What the server encodes is what PROTOCOL.md spells: the same JSON keys and values.
  assertEquals(JSON.parse(new TextDecoder().decode(encodeMessage(FULL_PUSH as Push))), FULL_PUSH);
  for (const prefix6 of [64, 120]) {
    assertEquals(decodePush(json({ ...FULL_PUSH, prefix6 })).prefix6, prefix6);
  }
  const domainsOnly = { ...OLD_PUSH, dns: { servers: [], domains: ["corp.example"] } };
  assertEquals(decodePush(json(domainsOnly)).dns, domainsOnly.dns);
});

Deno.test("decodePush() refuses IPv6 fields that are not canonical, out of range or incomplete", () => {
  const bad = (change: Record<string, unknown>) =>
    assertThrows(() => decodePush(json({ ...FULL_PUSH, ...change })), FrameError).message;
  for (
    const address6 of ["FD00:8::2", "fd00:8:0::2", "fd00:0008::2", "10.8.0.2", "fd00::8::2"]
  ) {
    assertMatch(bad({ address6 }), /"address6" must be an IPv6 address in canonical form/);
  }
  assertMatch(bad({ address6: 7 }), /"address6" must be a string/);
  assertMatch(bad({ gateway6: "fd00:8::1%eth0" }), /"gateway6" must be an IPv6 address/);
  for (const prefix6 of [63, 121, 64.5, "64"]) {
    assertMatch(bad({ prefix6 }), /"prefix6" must be a whole number from 64 to 120/);
  }
  for (const missing of ["address6", "prefix6", "gateway6"]) {
    const partial: Record<string, unknown> = { ...FULL_PUSH };
    delete partial[missing];
    assertMatch(
      assertThrows(() => decodePush(json(partial)), FrameError).message,
      /"address6", "prefix6" and "gateway6" come together/,
    );
  }
});

Deno.test("decodePush() takes IPv6 routes only in canonical form and only with address6", () => {
  const bad = (push: Record<string, unknown>) =>
    assertThrows(() => decodePush(json(push)), FrameError).message;
  for (const route of ["fd00:50:0::/64", "FD00:50::/64", "fd00:50::1/64", "fd00::/129"]) {
    assertMatch(bad({ ...FULL_PUSH, routes: [route] }), /IPv6 networks in canonical form/, route);
  }
  assertMatch(
    bad({ ...OLD_PUSH, routes: ["fd00:50::/64"] }),
    /at most 256 IPv4 networks .*; IPv6 networks only with "address6"/,
  );
});

Deno.test("decodePush() takes at most 256 routes, IPv4 and IPv6 together", () => {
  const v4 = Array.from({ length: 128 }, (_, i) => `10.${i}.0.0/16`);
  const v6 = Array.from({ length: 128 }, (_, i) => `fd00:${(i + 1).toString(16)}::/64`);
  assertEquals(decodePush(json({ ...FULL_PUSH, routes: [...v4, ...v6] })).routes.length, 256);
  assertMatch(
    assertThrows(
      () => decodePush(json({ ...FULL_PUSH, routes: [...v4, ...v6, "fd00:ffff::/64"] })),
      FrameError,
    ).message,
    /"routes" must be a list of at most 256/,
  );
});

Deno.test("decodePush() refuses a redirect_gateway that is not a boolean and a malformed dns", () => {
  const bad = (change: Record<string, unknown>) =>
    assertThrows(() => decodePush(json({ ...FULL_PUSH, ...change })), FrameError).message;
  assertMatch(bad({ redirect_gateway: "yes" }), /"redirect_gateway" must be true or false/);
  for (const dns of [null, [], "10.8.0.1"]) {
    assertMatch(bad({ dns }), /"dns" must be an object/, JSON.stringify(dns));
  }
  const servers = (list: unknown) => bad({ dns: { servers: list, domains: [] } });
  const nine = Array.from({ length: 9 }, (_, i) => `10.8.0.${i + 1}`);
  assertEquals(
    decodePush(json({ ...FULL_PUSH, dns: { servers: nine.slice(0, 8), domains: [] } })).dns!
      .servers.length,
    8,
  );
  for (
    const list of [nine, ["10.8.0.256"], ["FD00::1"], ["fd00:0::1"], [1], "10.8.0.1", undefined]
  ) {
    assertMatch(servers(list), /"dns.servers" must be a list of at most 8 IPv4 or IPv6/);
  }
  const domains = (list: unknown) => bad({ dns: { servers: ["10.8.0.1"], domains: list } });
  const label = "a".repeat(63);
  const longest = [label, label, label, "a".repeat(61)].join("."); // 253 bytes
  assertEquals(
    decodePush(json({ ...FULL_PUSH, dns: { servers: [], domains: [longest] } })).dns!.domains,
    [longest],
  );
  const many = Array.from({ length: 9 }, (_, i) => `d${i}.example`);
  for (
    const list of [
      many,
      [`${longest}a`],
      ["bad_name.example"],
      ["a..b"],
      ["-a.example"],
      ["corp.example."],
      ["école.example"],
      [""],
      undefined,
    ]
  ) {
    assertMatch(domains(list), /"dns.domains" must be a list of at most 8 domain names/);
  }
});
