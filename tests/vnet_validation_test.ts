/**
 * Virtio-net headers from a peer (PROTOCOL.md "Offload") are checked before the segmenter or a
 * kernel acts on them: a header no kernel writes (a 1-byte `gso_size`, an unknown GSO type, a
 * checksum or header length beyond the packet) costs that one packet, dropped and counted, and
 * never a flood of segments; the session lives on, and sound super-packets still pass.
 *
 * Unit tests of `validVnetHeader`, then an in-process server whose MemoryTun has offload, with
 * raw clients over real TLS on 127.0.0.1 (tests/_raw_client.ts), and a real Client with offload.
 */

import { assert, assertEquals } from "./_assert.ts";
import { HOST, HOSTS, SHORT_MS, waitFor, within } from "./_lab.ts";
import { type ClientKeys, RawClient } from "./_raw_client.ts";
import { Client } from "../mod/native/client.ts";
import { defaultServerConfig, type ServerConfig } from "../mod/config.ts";
import { authenticate } from "../mod/native/handshake.ts";
import { setupLogging } from "../mod/log.ts";
import { MemoryTun } from "../mod/core/memory_tun.ts";
import { checksumAdd, checksumFold, validVnetHeader, VNET_HDR_LEN } from "../mod/core/offload.ts";
import { initPki, issueClient } from "../mod/pki.ts";
import { Server } from "../mod/server.ts";
import { FrameType } from "../mod/native/wire.ts";

setupLogging("error");

// --- packets -------------------------------------------------------------------------------

interface Shape {
  source?: string;
  destination?: string;
  /** TCP payload bytes. */
  payload: number;
  flags?: number;
  gsoType?: number;
  hdrLen?: number;
  gsoSize?: number;
  csumStart?: number;
  csumOffset?: number;
  /** IP protocol; TCP by default. */
  protocol?: number;
}

function octets(address: string): number[] {
  return address.split(".").map(Number);
}

/**
 * A TCP/IPv4 packet behind a virtio-net header as a kernel with TSO writes it: by default a
 * super-packet (TCPV4, NEEDS_CSUM at the TCP checksum, `gso_size` 1000); `shape` overrides.
 */
function packet(shape: Shape): Uint8Array {
  const ipLength = 40 + shape.payload;
  const bytes = new Uint8Array(VNET_HDR_LEN + ipLength);
  const header = new DataView(bytes.buffer, 0, VNET_HDR_LEN);
  bytes[0] = shape.flags ?? 1;
  bytes[1] = shape.gsoType ?? 1;
  header.setUint16(2, shape.hdrLen ?? 40, true);
  header.setUint16(4, shape.gsoSize ?? 1000, true);
  header.setUint16(6, shape.csumStart ?? 20, true);
  header.setUint16(8, shape.csumOffset ?? 16, true);
  const ip = bytes.subarray(VNET_HDR_LEN);
  const view = new DataView(ip.buffer, ip.byteOffset);
  ip[0] = 0x45;
  view.setUint16(2, Math.min(ipLength, 0xffff));
  ip[8] = 64;
  ip[9] = shape.protocol ?? 6;
  ip.set(octets(shape.source ?? "10.8.0.2"), 12);
  ip.set(octets(shape.destination ?? "10.8.0.1"), 16);
  view.setUint16(10, ~checksumFold(checksumAdd(ip, 0, 20)) & 0xffff);
  view.setUint16(20, 40000); // source port
  view.setUint16(22, 5201); // destination port
  view.setUint32(24, 1); // sequence
  ip[32] = 0x50; // data offset: 5 words
  ip[33] = 0x18; // ACK, PSH
  view.setUint16(34, 65535); // window
  for (let i = 40; i < ipLength; i++) ip[i] = i & 0xff;
  return bytes;
}

const valid = (bytes: Uint8Array) => validVnetHeader(bytes, 0, bytes.length);

/** Headers a peer might send that no kernel writes, each with what is wrong with it. */
const BAD: [string, Shape][] = [
  ["gso_size 1 on a 64 KiB super-packet", { payload: 65495, gsoSize: 1 }],
  ["gso_size 63 (below 64)", { payload: 4000, gsoSize: 63 }],
  ["1024 segments of 64 bytes (more than 128)", { payload: 65495, gsoSize: 64 }],
  ["an unknown gso_type (3, UDP fragmentation)", { payload: 3000, gsoType: 3 }],
  ["gso_type 0x80 (ECN without a GSO type)", { payload: 3000, gsoType: 0x80 }],
  ["gso_type TCPV6 on an IPv4 packet", { payload: 3000, gsoType: 4 }],
  ["gso_type TCPV4 on a UDP packet", { payload: 3000, protocol: 17 }],
  ["an unknown flag (4)", { payload: 3000, flags: 1 | 4 }],
  ["a super-packet without NEEDS_CSUM", { payload: 3000, flags: 0 }],
  ["csum_start beyond the packet", { payload: 3000, csumStart: 5000 }],
  ["csum_start inside the IP header", { payload: 3000, gsoType: 0, csumStart: 10 }],
  ["csum_offset past the end", { payload: 100, gsoType: 0, csumOffset: 130 }],
  ["csum_offset 6 (UDP's) on a TCP super-packet", { payload: 3000, csumOffset: 6 }],
  ["hdr_len beyond the packet", { payload: 3000, hdrLen: 3041 }],
  ["a super-packet without payload", { payload: 0 }],
];

// --- unit ----------------------------------------------------------------------------------

Deno.test("validVnetHeader() takes the headers a kernel with TSO writes", () => {
  assert(valid(packet({ payload: 65495, gsoSize: 1348 })), "a 64 KiB TCPV4 super-packet");
  assert(valid(packet({ payload: 3000, gsoType: 0x81 })), "TCPV4 with ECN");
  assert(valid(packet({ payload: 65495, hdrLen: 128 })), "hdr_len past the headers (headlen)");
  assert(valid(packet({ payload: 128 * 536, gsoSize: 536 })), "exactly 128 segments");
  assert(valid(packet({ payload: 200, gsoSize: 64 })), "gso_size 64 on a short one");
  assert(valid(packet({ payload: 100, flags: 0, gsoType: 0, gsoSize: 0 })), "all-zero header");
  assert(valid(packet({ payload: 100, gsoType: 0, gsoSize: 0 })), "one packet, NEEDS_CSUM");
  assert(valid(packet({ payload: 100, flags: 2, gsoType: 0 })), "one packet, DATA_VALID");
  const udp = packet({ payload: 100, protocol: 17, gsoType: 0, csumOffset: 6 });
  assert(valid(udp), "a UDP packet with NEEDS_CSUM at the UDP checksum");
  const uso = packet({ payload: 3000, protocol: 17, gsoType: 5, csumOffset: 6 });
  assert(valid(uso), "a UDP_L4 super-packet (USO)");
});

Deno.test("validVnetHeader() refuses every header no kernel writes", () => {
  for (const [what, shape] of BAD) assert(!valid(packet(shape)), what);
  assert(!valid(packet({ payload: 128 * 536 + 1, gsoSize: 536 })), "129 segments");
  const short = packet({ payload: 0, gsoType: 0 }).subarray(0, VNET_HDR_LEN + 19);
  assert(!valid(short), "shorter than an IPv4 header");
});

// --- in-process server with offload ----------------------------------------------------------

interface World {
  server: Server;
  tun: MemoryTun;
  port: number;
  ca: string;
  /** The client certificates issued before the server started, by name. */
  keys: Map<string, ClientKeys>;
}

/**
 * A PKI with a certificate for each of `names` and a server whose TUN has offload, on
 * 127.0.0.1; always stopped and removed.
 */
async function withOffloadServer(
  names: string[],
  fn: (world: World) => Promise<void>,
  configure: (config: ServerConfig) => void = () => {},
): Promise<void> {
  const root = await Deno.makeTempDir({ prefix: "vpn-vnet-test-" });
  try {
    const dir = `${root}/pki`;
    await initPki(dir, { hosts: HOSTS });
    const keys = new Map<string, ClientKeys>();
    for (const name of names) {
      const issued = await issueClient(dir, name);
      keys.set(name, { cert: issued.certPem, key: issued.keyPem });
    }
    const config = defaultServerConfig();
    config.listen.host = HOST;
    config.listen.port = 0;
    configure(config);
    const tun = new MemoryTun({ name: "server-tun", vnetHdr: true });
    const server = await Server.start({ dir, config, tun });
    try {
      const ca = await Deno.readTextFile(`${dir}/ca.crt`);
      await fn({ server, tun, port: server.port, ca, keys });
    } finally {
      await within(server.stop(), SHORT_MS, "the server stops");
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
}

/** A raw client that says `offload: true` in AUTH: it sends frames with any header it likes. */
class OffloadPeer {
  readonly raw: RawClient;
  readonly address: string;
  readonly frames: { type: number; payload: Uint8Array }[] = [];
  readonly #reading: Promise<void>;

  private constructor(raw: RawClient, address: string) {
    this.raw = raw;
    this.address = address;
    this.#reading = raw.channel.readFrames(
      (type, buffer, start, end) => this.frames.push({ type, payload: buffer.slice(start, end) }),
      () => {},
    ).catch(() => {});
  }

  static async open(world: World, name: string): Promise<OffloadPeer> {
    const raw = await RawClient.connect(world.port, world.ca);
    const { cert, key } = world.keys.get(name)!;
    const credentials = { certPem: cert, keyPem: key, serverName: HOST, offload: true };
    const push = await within(authenticate(raw.channel, credentials), SHORT_MS, "PUSH");
    assertEquals(push.offload, true, "the server agrees to offload");
    return new OffloadPeer(raw, push.address);
  }

  send(bytes: Uint8Array): Promise<void> {
    return this.raw.send(FrameType.DATA, bytes);
  }

  /** A PING answered: every frame sent before it has been handled, and the session lives. */
  async ping(): Promise<void> {
    const payload = crypto.getRandomValues(new Uint8Array(8));
    await this.raw.send(FrameType.PING, payload);
    await waitFor(
      () =>
        this.frames.some((f) => f.type === FrameType.PONG && f.payload.toHex() === payload.toHex()),
      SHORT_MS,
      "the PONG of a PING",
    );
  }

  async close(): Promise<void> {
    this.raw.channel.close();
    await within(this.#reading, SHORT_MS, "the peer's read loop ends");
  }
}

/**
 * Takes what is written into `tun` until `good` arrives (bounded) and asserts that nothing
 * else came. The packets are 64 KiB: compared as hex, a failure names counts, not a diff.
 */
async function assertOnly(tun: MemoryTun, good: Uint8Array, what: string): Promise<void> {
  const got: Uint8Array[] = [];
  const hex = good.toHex();
  await within(
    (async () => {
      while (!got.some((p) => p.toHex() === hex)) {
        const taken = await tun.take();
        if (taken.length === 0) throw new Error(`${tun.name} closed`);
        got.push(...taken);
      }
    })(),
    SHORT_MS,
    `${what}: the good packet out of ${tun.name}`,
  );
  const others = got.filter((p) => p.toHex() !== hex).map((p) => p.length);
  assertEquals([got.length, others], [1, []], `${what}: packets other than the good one came out`);
}

Deno.test("a bad virtio-net header from a client costs that packet, counted; the session lives and good super-packets pass", async () => {
  await withOffloadServer(["mallory"], async (world) => {
    const peer = await OffloadPeer.open(world, "mallory");
    try {
      const source = peer.address;
      for (const [what, shape] of BAD) {
        const before = world.server.stats.badVnet;
        const good = packet({ source, payload: 3000 + world.tun.stats.writtenPackets });
        await peer.send(packet({ ...shape, source }));
        await peer.send(good);
        // The good one behind it comes out alone: the bad one never reached the kernel's TUN.
        await assertOnly(world.tun, good, what);
        assertEquals(world.server.stats.badVnet, before + 1, `${what}: counted once`);
        await peer.ping();
        assertEquals(world.server.sessionCount, 1, `${what}: the session lives`);
      }
      assertEquals(world.server.stats.badVnet, BAD.length);
    } finally {
      await peer.close();
    }
  });
});

Deno.test("a 1-byte gso_size from one client never floods another client with segments", async () => {
  await withOffloadServer(["mallory", "victim"], async (world) => {
    const attacker = await OffloadPeer.open(world, "mallory");
    // A client without offload: the server cuts super-packets for it into plain packets.
    const victim = await RawClient.authenticated(world.port, world.ca, world.keys.get("victim")!);
    try {
      const destination = victim.push!.address;
      const source = attacker.address;
      await attacker.send(packet({ source, destination, payload: 65495, gsoSize: 1 }));
      // Then a sound super-packet: 3 segments of at most 1000 bytes.
      await attacker.send(packet({ source, destination, payload: 2500 }));
      await attacker.ping();
      await waitFor(
        () => victim.frames.filter((f) => f.type === FrameType.DATA).length >= 3,
        SHORT_MS,
        "the victim gets the 3 segments of the good super-packet",
      );
      await victim.ping();
      const data = victim.frames.filter((f) => f.type === FrameType.DATA);
      assertEquals(data.map((f) => f.payload.length), [1040, 1040, 540], "only the good segments");
      assertEquals(world.server.stats.badVnet, 1);
      assertEquals(world.server.sessionCount, 2);
    } finally {
      await victim.close();
      await attacker.close();
    }
  }, (config) => config.client_to_client = true);
});

Deno.test("Client drops a server packet with a bad virtio-net header, counted, and takes the good one behind it", async () => {
  await withOffloadServer(["alice"], async (world) => {
    const { cert, key } = world.keys.get("alice")!;
    const tun = new MemoryTun({ name: "alice-tun", vnetHdr: true });
    const client = new Client({
      profile: {
        remote: `${HOST}:${world.port}`,
        ca: world.ca,
        cert,
        key,
        proto: "tcp",
        dev: "vpn%d",
      },
      host: HOST,
      port: world.port,
      proto: "tcp",
      tun,
    });
    const outcome = client.run().then(() => undefined, (error: unknown) => error);
    try {
      await waitFor(() => client.connected, SHORT_MS, "alice gets an address");
      const destination = client.address!;
      const source = "10.8.0.1";
      // The server passes its own TUN's headers on as they are; here its "kernel" lies.
      world.tun.inject(packet({ source, destination, payload: 65495, gsoSize: 1 }));
      const good = packet({ source, destination, payload: 65495, gsoSize: 1348 });
      world.tun.inject(good);
      await assertOnly(tun, good, "a 1-byte gso_size from the server");
      assertEquals(client.badVnet, 1);
      assert(client.connected, "the session lives");
    } finally {
      await client.stop();
      assertEquals(await within(outcome, SHORT_MS, "run() settles"), undefined);
    }
  });
});
