/**
 * `Channel` over a real TCP connection on 127.0.0.1, its peer read by the test. Every wait is
 * bounded, so a write that never completes fails the test instead of hanging it.
 */

import { assert, assertEquals } from "./_assert.ts";
import { within } from "./_wait.ts";
import { Channel } from "../mod/native/channel.ts";
import { FrameType, HEADER_LEN } from "../mod/native/wire.ts";

/** Bound on waits for something that takes milliseconds when the code works. */
const SHORT_MS = 5000;

async function pair(): Promise<{ channel: Channel; peer: Deno.TcpConn; close: () => void }> {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const accepted = listener.accept();
  const conn = await within(
    Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port }),
    SHORT_MS,
    "connect",
  );
  const peer = await within(accepted, SHORT_MS, "accept");
  const channel = new Channel(conn, 70_000);
  return { channel, peer, close: () => (channel.close(), peer.close()) };
}

/**
 * Reads from `conn` until `bytes` arrived or the connection ended, and returns the count. With
 * `into`, the bytes are kept there in order; without, they are only counted.
 */
async function readAtLeast(conn: Deno.Conn, bytes: number, into?: Uint8Array): Promise<number> {
  const scratch = new Uint8Array(65536);
  let total = 0;
  while (total < bytes) {
    const buf = into ? into.subarray(total) : scratch;
    const n = await within(conn.read(buf), SHORT_MS, `byte ${total} of ${bytes} from the peer`);
    if (n === null) break;
    total += n;
  }
  return total;
}

/** `channel.drained()`, bounded. */
function drained(channel: Channel): Promise<void> {
  return within(channel.drained(), SHORT_MS, "the write in flight completes");
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
  await drained(channel); // nothing in flight: at once
  assert(channel.offerData(packet, packet.length));
  channel.flush();
  await drained(channel);
  assert(channel.offerData(packet, packet.length), "room after the write");
  channel.flush();
  await drained(channel);
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
  await drained(channel);
  const buf = new Uint8Array(4096);
  assertEquals(await readAtLeast(peer, HEADER_LEN * 2 + 102, buf), HEADER_LEN * 2 + 102);
  assertEquals(buf[0], FrameType.PING, "the PING went first");
  assertEquals(buf[HEADER_LEN + 2], FrameType.DATA);
  close();
});
