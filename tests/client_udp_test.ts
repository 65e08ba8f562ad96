/**
 * The client's UDP path over loopback against a stand-in server socket: a batch whose handling
 * throws is dropped and the path goes on.
 */

import { assert, assertEquals } from "./_assert.ts";
import { waitUntil, within } from "./_wait.ts";
import { ClientUdp } from "../mod/native/client_udp.ts";
import {
  DatagramBatch,
  DatagramCrypto,
  DatagramSlots,
  DatagramType,
  deriveKeys,
  KeyHalf,
} from "../mod/native/datagram.ts";
import { BatchFailures } from "../mod/log.ts";
import { UdpSocket } from "../ffi/udp.ts";
import type { Logger } from "@logtape/logtape";

Deno.test("BatchFailures logs the first failure and counts the ones within the next second", () => {
  const lines: Record<string, unknown>[] = [];
  const logger = { error: (_: string, props: Record<string, unknown>) => lines.push(props) };
  const failures = new BatchFailures(logger as unknown as Logger, "UDP receive");
  failures.report(new Error("one"));
  failures.report(new Error("two"));
  failures.report(new Error("three"));
  assertEquals(lines, [{ path: "UDP receive", count: 1, error: "Error: one" }]);
});

Deno.test("ClientUdp drops a batch whose handling throws and delivers the next", async () => {
  using server = UdpSocket.bind("127.0.0.1", 0);
  const session = 7;
  const clientHalf = new KeyHalf();
  const serverHalf = new KeyHalf();
  const keys = deriveKeys(
    clientHalf.random,
    serverHalf.random,
    session,
    0,
    serverHalf.agree(clientHalf.share),
  );
  using serverCrypto = new DatagramCrypto(session, "aes-256-gcm", false);
  serverCrypto.installReceive(keys);
  serverCrypto.installSend(keys);

  const received: number[] = [];
  let calls = 0;
  const sink = {
    fromServer(packet: Uint8Array) {
      if (calls++ === 0) throw new Error("a bug in the sink");
      received.push(packet[0]!);
    },
    flush() {},
  };
  const accept = {
    cipher: "aes-256-gcm",
    session,
    random: serverHalf.random.toBase64(),
    share: serverHalf.share.toBase64(),
  };
  using client = ClientUdp.open(accept, clientHalf, "127.0.0.1", server.port, sink, 5000);
  const probing = client.probe(3000);

  // The client's first PING tells the stand-in server where the client is.
  const inbox = new DatagramSlots(8);
  const plain = new Uint8Array(2048);
  const probes = await within(
    server.recv(inbox.bufs, inbox.sizes, inbox.addrs),
    5000,
    "the client's first PING",
  );
  assert(probes > 0, "a probe arrived");
  assert(serverCrypto.open(inbox.bufs[0]!, inbox.sizes[0]!, inbox.bodies[0]!, plain) >= 0);
  assertEquals(serverCrypto.type, DatagramType.PING);
  const to = inbox.addrs[0]!;
  const out = new DatagramBatch(server);
  out.add(serverCrypto, DatagramType.PONG, plain, 8, to);
  out.flush();
  assert(await within(probing, 5000, "probe() settles"), "the probe was answered");

  // Two batches: the first one's handling throws, the second must still arrive.
  for (const first of [1, 2]) {
    out.add(serverCrypto, DatagramType.DATA, new Uint8Array([first, 0, 0, 0]), 4, to);
    out.flush();
    await waitUntil(() => calls >= first, 5000, `the sink is handed batch ${first}`);
  }
  assertEquals(calls, 2);
  assertEquals(received, [2]);
  assert(client.active, "the path is still up");
});
