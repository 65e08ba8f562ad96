/**
 * The server's UDP endpoint over loopback with a stand-in client socket: a batch whose
 * handling throws is dropped and the endpoint goes on serving.
 */

import { assert, assertEquals } from "./_assert.ts";
import { waitUntil, within } from "./_wait.ts";
import { ServerUdp, type UdpClient } from "../mod/native/server_udp.ts";
import {
  DatagramBatch,
  DatagramCrypto,
  DatagramType,
  deriveKeys,
  KeyHalf,
} from "../mod/native/datagram.ts";
import type { Channel } from "../mod/native/channel.ts";
import type { UdpAccept } from "../mod/native/messages.ts";
import { FrameType } from "../mod/native/wire.ts";
import { encodeSockAddr, UdpSocket } from "../ffi/udp.ts";

Deno.test("ServerUdp drops a batch whose handling throws and delivers the next", async () => {
  const received: number[] = [];
  let calls = 0;
  const sink = {
    fromClient(_: unknown, buffer: Uint8Array, start: number) {
      if (calls++ === 0) throw new Error("a bug in the sink");
      received.push(buffer[start]!);
    },
    flush() {},
  };
  const endpoint = ServerUdp.open("127.0.0.1", 0, sink, 30, 3600);
  assert(endpoint instanceof ServerUdp, String(endpoint));
  try {
    // The session's TLS channel, reduced to what the endpoint sends on it: UDP_ACCEPT.
    let accept: UdpAccept | undefined;
    const channel = {
      sendControl(type: FrameType, payload: Uint8Array) {
        if (type === FrameType.UDP_ACCEPT) accept = JSON.parse(new TextDecoder().decode(payload));
      },
    } as unknown as Channel;
    // The endpoint reads only these fields of a session.
    const client = { name: "alice", channel, udp: undefined } as unknown as UdpClient;
    const half = new KeyHalf();
    endpoint.accept(client, {
      ciphers: ["aes-256-gcm"],
      random: half.random.toBase64(),
      share: half.share.toBase64(),
    });
    assert(accept !== undefined, "UDP_ACCEPT was sent");

    using socket = UdpSocket.bind("127.0.0.1", 0);
    using sealer = new DatagramCrypto(accept.session, "aes-256-gcm", true);
    const keys = deriveKeys(
      half.random,
      Uint8Array.fromBase64(accept.random),
      accept.session,
      0,
      half.agree(Uint8Array.fromBase64(accept.share)),
    );
    sealer.installSend(keys);
    const to = encodeSockAddr("127.0.0.1", endpoint.port);
    const out = new DatagramBatch(socket);
    for (const first of [1, 2]) {
      out.add(sealer, DatagramType.DATA, new Uint8Array([first, 0, 0, 0]), 4, to);
      out.flush();
      await waitUntil(() => calls >= first, 5000, `the sink is handed batch ${first}`);
    }
    assertEquals(calls, 2);
    assertEquals(received, [2]);
    assertEquals(endpoint.stats.accepted, 2);
  } finally {
    await within(endpoint.close(), 5000, "the endpoint closes");
  }
});
