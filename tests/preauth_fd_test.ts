/**
 * Connections before AUTH cost the server no walk over its descriptors (issue 9, finding 6):
 * with 5,000 more descriptors open in the server's process, certificate-less TLS handshakes,
 * connections that are not TLS and connections that lost their place at the cap of 8 handshakes
 * per source leave the count of descriptors examined (ffi/socket.ts `descriptorWalks`) where it
 * was. Each such walk used to examine every descriptor, milliseconds of the one loop per
 * connection.
 */

import { assert, assertEquals } from "./_assert.ts";
import { HOST, SHORT_MS, waitFor, within, withLab } from "./_lab.ts";
import { RawClient } from "./_raw_client.ts";
import { descriptorWalks } from "../ffi/socket.ts";
import { setupLogging } from "../mod/log.ts";

setupLogging("error");

const EXTRA_FDS = 5000;
const ROUNDS = 30;

/** Reads `conn` until the server ends it (EOF or reset). */
async function endOf(conn: Deno.Conn): Promise<void> {
  const buf = new Uint8Array(4096);
  try {
    while (await conn.read(buf) !== null);
  } catch {
    // A reset ends the connection as an EOF does.
  }
}

Deno.test(`Server walks none of ${EXTRA_FDS} more descriptors for connections before AUTH: TLS without a certificate, not TLS, replaced at the cap of one source`, async () => {
  const files = Array.from({ length: EXTRA_FDS }, () => Deno.openSync("/dev/null"));
  try {
    await withLab(async (lab) => {
      const { server } = lab;
      const ca = await Deno.readTextFile(`${lab.dir}/ca.crt`);
      const examined = descriptorWalks.examined;

      for (let i = 0; i < ROUNDS; i++) {
        const tls = await RawClient.connect(lab.port, ca);
        await tls.hello();
        await tls.close();
      }
      for (let i = 0; i < ROUNDS; i++) {
        const conn = await within(
          Deno.connect({ hostname: HOST, port: lab.port }),
          SHORT_MS,
          "connect",
        );
        await conn.write(new TextEncoder().encode("GET / HTTP/1.0\r\n\r\n"));
        await within(endOf(conn), SHORT_MS, "the server ends a connection that is not TLS");
        conn.close();
      }
      await waitFor(() => server.preAuthCount === 0, SHORT_MS, "the handshakes are over");

      // All from 127.0.0.1: one source, 8 places; each newer connection takes the oldest's.
      const idle: Deno.TcpConn[] = [];
      try {
        for (let i = 0; i < 8; i++) {
          idle.push(
            await within(Deno.connect({ hostname: HOST, port: lab.port }), SHORT_MS, "connect"),
          );
        }
        await waitFor(() => server.preAuthCount === 8, SHORT_MS, "8 connections in handshake");
        const refusedBefore = server.stats.refused;
        for (let i = 0; i < ROUNDS; i++) {
          const oldest = idle.shift()!;
          idle.push(
            await within(Deno.connect({ hostname: HOST, port: lab.port }), SHORT_MS, "connect"),
          );
          await within(endOf(oldest), SHORT_MS, "the server ends the oldest of the source's 8");
          oldest.close();
        }
        assertEquals(server.stats.refused - refusedBefore, ROUNDS, "each lost its place");
      } finally {
        for (const conn of idle) conn.close();
      }
      await waitFor(() => server.preAuthCount === 0, SHORT_MS, "the 8 connections leave");

      assertEquals(
        descriptorWalks.examined - examined,
        0,
        "descriptors examined for the connections (a walk where SOCK_DESTROY is refused)",
      );
      const alice = await lab.connected("alice");
      assert(alice.client.address !== undefined, "the server still admits a client");
    });
  } finally {
    for (const file of files) file.close();
  }
});
