/**
 * `ffi/socket.ts` on real TLS connections over 127.0.0.1, read back through getsockopt and the
 * peer. Every network wait is bounded, so a socket left open fails the test instead of hanging.
 */

import { assert, assertEquals } from "./_assert.ts";
import { within } from "./_wait.ts";
import { setTcpNoDelay, shutdownTcp } from "../ffi/socket.ts";
import { initPki, loadServerIdentity } from "../mod/pki.ts";

const probe = Deno.dlopen("libc.so.6", {
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
});

/** TCP_NODELAY of the local socket bound to `port`, read back by the test itself. */
function noDelayOf(port: number): number | undefined {
  for (const entry of Deno.readDirSync("/proc/self/fd")) {
    const fd = Number(entry.name);
    const addr = new Uint8Array(128);
    const length = new Uint32Array([128]);
    if (probe.symbols.getsockname(fd, addr, length) !== 0 || addr[0] !== 2) continue;
    if (((addr[2]! << 8) | addr[3]!) !== port) continue;
    const value = new Int32Array(1);
    probe.symbols.getsockopt(fd, 6, 1, value, new Uint32Array([4]));
    return value[0];
  }
  return undefined;
}

async function tlsListener() {
  const dir = await Deno.makeTempDir();
  await initPki(dir, { hosts: ["127.0.0.1"] });
  const identity = await loadServerIdentity(dir);
  await Deno.remove(dir, { recursive: true });
  const listener = Deno.listenTls({
    hostname: "127.0.0.1",
    port: 0,
    cert: identity.certPem,
    key: identity.keyPem,
  });
  return { listener, caPem: identity.caPem };
}

Deno.test("setTcpNoDelay() turns Nagle's algorithm off on a TLS connection's socket", async () => {
  const { listener, caPem } = await tlsListener();
  const accepted = listener.accept();
  const conn = await within(
    Deno.connectTls({ hostname: "127.0.0.1", port: listener.addr.port, caCerts: [caPem] }),
    5000,
    "connect",
  );
  const server = await within(accepted, 5000, "accept");
  await within(Promise.all([conn.handshake(), server.handshake()]), 5000, "the TLS handshake");
  assertEquals(noDelayOf(conn.localAddr.port), 0, "Deno leaves Nagle on");
  assert(setTcpNoDelay(conn.localAddr, conn.remoteAddr));
  assertEquals(noDelayOf(conn.localAddr.port), 1);
  conn.close();
  server.close();
  listener.close();
});

Deno.test("shutdownTcp() ends a connection whose TLS handshake never started", async () => {
  const { listener } = await tlsListener();
  const accepted = listener.accept();
  const idle = await within(
    Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port }),
    5000,
    "connect",
  );
  const server = await within(accepted, 5000, "accept");
  const handshake = server.handshake().catch(() => "failed");
  server.close(); // on its own this leaves the socket open: the peer would wait forever
  assert(shutdownTcp(server.localAddr, server.remoteAddr));
  const end = await within(idle.read(new Uint8Array(16)), 5000, "the idle peer sees the end");
  assertEquals(end, null, "the idle peer sees the end");
  assertEquals(await within(handshake, 5000, "the handshake fails"), "failed");
  assertEquals(shutdownTcp(server.localAddr, server.remoteAddr), false, "already gone");
  idle.close();
  listener.close();
});
