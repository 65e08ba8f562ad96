/**
 * One client that stops reading must not throttle the others (README "Speed": the server waits
 * up to 2 ms for a full TLS send buffer): after one wait for it times out, the rest of the TUN
 * batch for that client drops at once, and a session whose TLS writes stay stuck for
 * `keepalive.timeout` seconds ends. In-process server with a MemoryTun (tests/_lab.ts), a real
 * Client that reads, and a raw client over real TLS on 127.0.0.1 that never reads.
 */

import { assert, assertEquals } from "./_assert.ts";
import { HOST, ipv4Packet, type Lab, SHORT_MS, waitFor, within, withLab } from "./_lab.ts";
import { RawClient } from "./_raw_client.ts";
import { authenticate } from "../mod/native/handshake.ts";
import { setupLogging } from "../mod/log.ts";
import type { MemoryTun } from "../mod/core/memory_tun.ts";
import { FrameType } from "../mod/native/wire.ts";

setupLogging("error");

/** A client that authenticates over TLS and then never reads; it can still send. */
async function nonReader(lab: Lab, name: string): Promise<{ raw: RawClient; address: string }> {
  const raw = await RawClient.connect(lab.port, await Deno.readTextFile(`${lab.dir}/ca.crt`));
  const { cert, key } = await lab.issue(name);
  const credentials = { certPem: cert, keyPem: key, serverName: HOST, offload: false };
  const push = await within(authenticate(raw.channel, credentials), SHORT_MS, "PUSH");
  return { raw, address: push.address };
}

/** Counts every packet written into `tun` until it closes. */
function counter(tun: MemoryTun): { count: number } {
  const seen = { count: 0 };
  (async () => {
    for (let got; (got = await tun.take()).length > 0;) seen.count += got.length;
  })();
  return seen;
}

/**
 * Keeps the server's TUN fed for `ms` with `packets` in turn (its queue holds 1024), and
 * returns how many of them were for `counted`'s client and arrived there meanwhile; then waits
 * until the server has read them all, so that the next call starts with an empty queue.
 */
async function feed(
  tun: MemoryTun,
  packets: Uint8Array[],
  ms: number,
  counted: { count: number },
): Promise<number> {
  const start = counted.count;
  const end = performance.now() + ms;
  let injected = tun.stats.readPackets;
  for (let i = 0; performance.now() < end;) {
    while (injected - tun.stats.readPackets < 768) {
      tun.inject(packets[i++ % packets.length]!);
      injected++;
    }
    await waitFor(
      () => injected - tun.stats.readPackets < 256 || performance.now() >= end,
      ms + SHORT_MS,
      "the server reads its TUN",
    );
  }
  const count = counted.count - start;
  await waitFor(() => tun.stats.readPackets === injected, SHORT_MS * 2, "the TUN queue drains");
  return count;
}

Deno.test("a client that stops reading leaves another client at least half of its packet rate", async () => {
  await withLab(async (lab) => {
    const bob = await lab.connected("bob");
    const received = counter(bob.tun);
    const mallory = await nonReader(lab, "mallory");
    try {
      const gateway = lab.server.pool.serverAddress;
      const forBob = ipv4Packet(gateway, bob.client.address!, "x".repeat(1000));
      const forMallory = ipv4Packet(gateway, mallory.address, "y".repeat(1000));
      // Nobody has this address: the same traffic as below, without a stalled client.
      const forNobody = ipv4Packet(gateway, "10.8.0.200", "y".repeat(1000));
      // Fill mallory's TLS and TCP buffers until the server drops for it.
      const big = ipv4Packet(gateway, mallory.address, "z".repeat(60_000));
      await within(
        (async () => {
          while (lab.server.stats.dropped === 0) await feed(lab.serverTun, [big], 50, received);
        })(),
        SHORT_MS * 4,
        "mallory's buffers fill",
      );
      // Half of each batch for bob, half for nobody, then for mallory: before the fix each of
      // mallory's packets waited 2 ms for its buffer, here at most the first does.
      const alone = await feed(lab.serverTun, [forBob, forNobody], 1000, received);
      const stalled = await feed(lab.serverTun, [forBob, forMallory], 1000, received);
      assert(alone > 0, "bob gets packets");
      assert(stalled * 2 >= alone, `bob got ${stalled} packets beside mallory, ${alone} alone`);
    } finally {
      await mallory.raw.close();
    }
  });
});

Deno.test("a session whose TLS writes stay stuck ends after keepalive.timeout; the others live", async () => {
  await withLab(async (lab) => {
    const bob = await lab.connected("bob");
    const mallory = await nonReader(lab, "mallory");
    const gateway = lab.server.pool.serverAddress;
    // Mallory keeps sending, so only its stuck writes can end its session, not silence.
    const hello = ipv4Packet(mallory.address, gateway, "still here");
    const talking = setInterval(() => mallory.raw.send(FrameType.DATA, hello).catch(() => {}), 200);
    try {
      const big = ipv4Packet(gateway, mallory.address, "z".repeat(60_000));
      const received = counter(bob.tun);
      await within(
        (async () => {
          while (lab.server.stats.dropped === 0) await feed(lab.serverTun, [big], 50, received);
        })(),
        SHORT_MS * 4,
        "mallory's buffers fill",
      );
      const stuck = performance.now();
      assertEquals(lab.server.sessionCount, 2);
      // keepalive.timeout is 2 s, checked every interval (1 s): ended within 2 + 1 s, and
      // some margin. Before that, only 64 unanswered PINGs (64 s) would close it.
      await waitFor(() => lab.server.sessionCount === 1, 2000 + 1000 + 3000, "mallory's end");
      assert(performance.now() - stuck >= 1000, "not before its writes were stuck a while");
      assert(bob.client.connected, "bob lives on");
      const forBob = ipv4Packet(gateway, bob.client.address!, "after");
      lab.serverTun.inject(forBob);
      await waitFor(() => received.count > 0, SHORT_MS, "bob still gets packets");
    } finally {
      clearInterval(talking);
      await mallory.raw.close();
    }
  }, (config) => config.keepalive = { interval: 1, timeout: 2 });
});
