/**
 * ControlServer's bounds in one process: the directory it makes, the number of connections,
 * the time a request may take, the idle time, a handler's error, and the socket file it removes.
 */

import { assertEquals, assertMatch, assertRejects } from "./_assert.ts";
import { ControlServer } from "../mod/control/server.ts";
import { ControlError, controlRequest } from "../mod/control/client.ts";
import { within } from "./_wait.ts";

async function readLine(conn: Deno.UnixConn): Promise<string | null> {
  const buffer = new Uint8Array(4096);
  const n = await within(conn.read(buffer), 5000, "a line from the control socket");
  return n === null ? null : new TextDecoder().decode(buffer.subarray(0, n));
}

Deno.test("ControlServer bounds connections, request time and idle time", async () => {
  const root = await Deno.makeTempDir({ prefix: "vpn-control-" });
  const path = `${root}/run/vpn/test.sock`;
  const server = await ControlServer.start(path, {
    status: () => ({ pid: Deno.pid }),
    kill: (name) => Promise.reject(new Error(`no ${name} here`)),
    reload: () => new Promise(() => {}), // never ends
  }, { maxConnections: 2, requestTimeoutMs: 200, idleTimeoutMs: 500 });
  const held: Deno.UnixConn[] = [];
  try {
    assertEquals((await Deno.stat(`${root}/run/vpn`)).mode! & 0o777, 0o700, "the new directory");
    assertEquals((await Deno.lstat(path)).mode! & 0o777, 0o600, "the socket");
    assertEquals(await controlRequest(path, { cmd: "status" }, 2000), { pid: Deno.pid });
    await assertRejects(
      () => controlRequest(path, { cmd: "reload" }, 2000),
      ControlError,
      /^reload did not finish within 0\.2 s$/,
    );
    await assertRejects(
      () => controlRequest(path, { cmd: "kill", name: "eve" }, 2000),
      ControlError,
      /^no eve here$/,
    );

    // Two connections held open; a third is told why and closed.
    for (let i = 0; i < 2; i++) held.push(await Deno.connect({ transport: "unix", path }));
    const third = await Deno.connect({ transport: "unix", path });
    assertMatch((await readLine(third))!, /"ok":false,"error":"too many control connections/);
    assertEquals(await readLine(third), null);
    third.close();
    // An idle connection is closed after idleTimeoutMs.
    for (const conn of held) assertEquals(await readLine(conn), null);
    assertEquals(server.connections, 0);
  } finally {
    for (const conn of held) conn.close();
    await server.stop();
  }
  await assertRejects(() => Deno.lstat(path), Deno.errors.NotFound);
  await assertRejects(
    () => controlRequest(path, { cmd: "status" }, 2000, "/etc/vpn-test"),
    ControlError,
    /^no server runs on \/etc\/vpn-test \(no control socket at .*test\.sock\); start it with vpn serve --dir \/etc\/vpn-test$/,
  );
  await Deno.remove(root, { recursive: true });
});
