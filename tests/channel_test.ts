import { assert, assertEquals } from "./_assert.ts";
import { Channel } from "../mod/channel.ts";
import { FrameType, HEADER_LEN } from "../mod/wire.ts";

async function pair(): Promise<{ channel: Channel; peer: Deno.TcpConn; close: () => void }> {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const accepted = listener.accept();
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  const peer = await accepted;
  const channel = new Channel(conn, 70_000);
  return { channel, peer, close: () => (channel.close(), peer.close()) };
}

async function readAtLeast(conn: Deno.Conn, bytes: number): Promise<number> {
  const buf = new Uint8Array(65536);
  let total = 0;
  while (total < bytes) {
    const n = await conn.read(buf);
    if (n === null) break;
    total += n;
  }
  return total;
}

Deno.test("Channel.offerData() refuses without counting a drop; queueData() counts it", async () => {
  const { channel, close } = await pair();
  const packet = new Uint8Array(60_000);
  assert(channel.offerData(packet, packet.length));
  assertEquals(channel.offerData(packet, packet.length), false, "the buffer is full");
  assertEquals(channel.stats.dropped, 0);
  assertEquals(channel.queueData(packet, packet.length), false);
  assertEquals(channel.stats.dropped, 1);
  close();
});

Deno.test("Channel.drained() resolves once the write in flight is done, and there is room again", async () => {
  const { channel, peer, close } = await pair();
  const packet = new Uint8Array(60_000).fill(7);
  await channel.drained(); // nothing in flight: at once
  assert(channel.offerData(packet, packet.length));
  channel.flush();
  await channel.drained();
  assert(channel.offerData(packet, packet.length), "room after the write");
  channel.flush();
  await channel.drained();
  assertEquals(
    await readAtLeast(peer, 2 * (HEADER_LEN + packet.length)),
    2 * (HEADER_LEN + packet.length),
  );
  assertEquals(channel.stats.bytesOut, 2 * (HEADER_LEN + packet.length));
  close();
});

Deno.test("Channel sends control frames ahead of queued data", async () => {
  const { channel, peer, close } = await pair();
  assert(channel.offerData(new Uint8Array(100), 100));
  channel.sendControl(FrameType.PING, new Uint8Array([1, 2]));
  await channel.drained();
  const buf = new Uint8Array(4096);
  let got = 0;
  while (got < HEADER_LEN * 2 + 102) got += (await peer.read(buf.subarray(got))) ?? 0;
  assertEquals(buf[0], FrameType.PING, "the PING went first");
  assertEquals(buf[HEADER_LEN + 2], FrameType.DATA);
  close();
});
