/**
 * `ffi/socket.ts` on real TLS connections over 127.0.0.1, read back through getsockopt, the
 * process's descriptors and the peer. Every network wait is bounded, so a socket left open
 * fails the test instead of hanging.
 */

import { assert, assertEquals } from "./_assert.ts";
import { waitUntil, within } from "./_wait.ts";
import { descriptorWalks, setListenerNoDelay, shutdownTcp } from "../ffi/socket.ts";
import { tlsListener } from "./_tls.ts";

const probe = Deno.dlopen("libc.so.6", {
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  getpeername: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
});

/** Port of an IPv4 end of `fd` (getsockname or getpeername), read by the test itself. */
function portOf(fd: number, call: "getsockname" | "getpeername"): number | undefined {
  const addr = new Uint8Array(128);
  if (probe.symbols[call](fd, addr, new Uint32Array([128])) !== 0 || addr[0] !== 2) return;
  return (addr[2]! << 8) | addr[3]!;
}

/** The descriptor of this process's TCP socket from port `local` to port `peer`. */
function fdOf(local: number, peer: number): number | undefined {
  for (const entry of Deno.readDirSync("/proc/self/fd")) {
    const fd = Number(entry.name);
    if (portOf(fd, "getsockname") === local && portOf(fd, "getpeername") === peer) return fd;
  }
  return undefined;
}

/** TCP_NODELAY of the socket from port `local` to port `peer`. */
function noDelayOf(local: number, peer: number): number | undefined {
  const fd = fdOf(local, peer);
  if (fd === undefined) return undefined;
  const value = new Int32Array(1);
  probe.symbols.getsockopt(fd, 6, 1, value, new Uint32Array([4]));
  return value[0];
}

/** Whether some descriptor of this process still refers to the socket `link` names. */
function holds(link: string): boolean {
  for (const entry of Deno.readDirSync("/proc/self/fd")) {
    try {
      if (Deno.readLinkSync(`/proc/self/fd/${entry.name}`) === link) return true;
    } catch {
      // Closed while listed.
    }
  }
  return false;
}

/** A TLS connection to `listener`, both ends through their handshake. */
async function tlsPair(listener: Deno.TlsListener, caPem: string) {
  const accepted = listener.accept();
  const client = await within(
    Deno.connectTls({ hostname: "127.0.0.1", port: listener.addr.port, caCerts: [caPem] }),
    5000,
    "connect",
  );
  const server = await within(accepted, 5000, "accept");
  await within(Promise.all([client.handshake(), server.handshake()]), 5000, "the TLS handshake");
  return { client, server };
}

Deno.test("setListenerNoDelay() turns Nagle's algorithm off on every connection accepted after it", async () => {
  const { listener, caPem } = await tlsListener();
  const { port } = listener.addr;
  const before = await tlsPair(listener, caPem);
  assertEquals(noDelayOf(port, before.client.localAddr.port), 0, "Deno leaves Nagle on");
  assert(setListenerNoDelay(listener.addr));
  for (let i = 0; i < 3; i++) {
    const { client, server } = await tlsPair(listener, caPem);
    assertEquals(noDelayOf(port, client.localAddr.port), 1, `connection ${i + 1}`);
    client.close();
    server.close();
  }
  assertEquals(setListenerNoDelay({ hostname: "127.0.0.1", port: 1 }), false, "no listener");
  before.client.close();
  before.server.close();
  listener.close();
});

Deno.test("shutdownTcp() ends a connection whose TLS handshake never started and frees its descriptor, without walking the descriptors", async () => {
  const { listener, caPem } = await tlsListener();
  const accepted = listener.accept();
  const idle = await within(
    Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port }),
    5000,
    "connect",
  );
  const server = await within(accepted, 5000, "accept");
  const fd = fdOf(listener.addr.port, idle.localAddr.port);
  assert(fd !== undefined, "the server's socket is among the descriptors");
  const link = Deno.readLinkSync(`/proc/self/fd/${fd}`);
  const handshake = server.handshake().catch(() => "failed");
  server.close(); // on its own this leaves the socket open: the peer would wait forever
  const examined = descriptorWalks.examined;
  assert(shutdownTcp(server.localAddr, server.remoteAddr));
  assertEquals(descriptorWalks.examined, examined, "the kernel found the socket by its ends");
  const end = await within(
    idle.read(new Uint8Array(16)).then(() => "end", () => "end"), // the kernel's abort resets
    5000,
    "the idle peer sees the end",
  );
  assertEquals(end, "end");
  assertEquals(await within(handshake, 5000, "the handshake fails"), "failed");
  await waitUntil(() => !holds(link), 5000, "the server's descriptor is closed");
  // The kernel's lookup by these ends now finds the listener on the same port: it stays.
  assertEquals(shutdownTcp(server.localAddr, server.remoteAddr), false, "already gone");
  const after = await tlsPair(listener, caPem);
  after.client.close();
  after.server.close();
  idle.close();
  listener.close();
});

Deno.test("shutdownTcp() without CAP_NET_ADMIN finds the socket among the descriptors and shuts it down", async () => {
  // The probe runs the test above's steps in a process that may not abort sockets.
  const command = new Deno.Command("setpriv", {
    args: [
      "--inh-caps=-net_admin",
      "--bounding-set=-net_admin",
      Deno.execPath(),
      "run",
      "--allow-all",
      new URL("./helpers/shutdown_probe.ts", import.meta.url).pathname,
    ],
    cwd: new URL("..", import.meta.url).pathname,
    stdout: "piped",
    stderr: "piped",
  });
  const { code, stdout, stderr } = await within(command.output(), 30_000, "the probe");
  const text = new TextDecoder().decode(stdout);
  assertEquals(code, 0, `probe: ${text}${new TextDecoder().decode(stderr)}`);
  const report = JSON.parse(text);
  assertEquals(report.shutdown, true);
  assert(report.examined > 0, `the descriptors were walked: ${text}`);
  assertEquals(report.peer, "end", "the idle peer sees the end");
  assertEquals(report.again, false, "already gone");
});
