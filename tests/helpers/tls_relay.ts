/**
 * A man in the middle for tests/trust_e2e_test.ts: terminates the client's TLS with a
 * certificate of its own, opens a TLS session to the real server as a client would, and copies
 * the bytes both ways unchanged. One JSON line per event on stdout:
 * `{event: "tls-failed", error}` when a client's handshake fails, `{event: "auth"}` when a
 * client's AUTH frame passes through it.
 *
 * Usage: tls_relay.ts LISTEN_HOST LISTEN_PORT CERT KEY SERVER_HOST SERVER_PORT SERVER_CA
 *
 * @module
 */

import { ALPN } from "../../mod/native/messages.ts";
import { FrameType } from "../../mod/native/wire.ts";

const [host, port, cert, key, serverHost, serverPort, serverCa] = Deno.args;
const say = (event: Record<string, unknown>) => console.log(JSON.stringify(event));

const listener = Deno.listenTls({
  hostname: host!,
  port: Number(port),
  cert: await Deno.readTextFile(cert!),
  key: await Deno.readTextFile(key!),
  alpnProtocols: [ALPN],
});
say({ event: "listening" });

/** Copies the client's bytes to the server, saying when a frame of type AUTH goes by. */
async function upstream(from: Deno.Conn, to: Deno.Conn): Promise<void> {
  const header = new Uint8Array(4);
  let headerBytes = 0;
  let payloadLeft = 0;
  for await (const chunk of from.readable) {
    for (let i = 0; i < chunk.length;) {
      if (payloadLeft > 0) {
        const n = Math.min(payloadLeft, chunk.length - i);
        payloadLeft -= n;
        i += n;
        continue;
      }
      header[headerBytes++] = chunk[i++]!;
      if (headerBytes < 4) continue;
      headerBytes = 0;
      payloadLeft = (header[1]! << 16) | (header[2]! << 8) | header[3]!;
      if (header[0] === FrameType.AUTH) say({ event: "auth" });
    }
    await to.write(chunk);
  }
}

async function relay(client: Deno.TlsConn): Promise<void> {
  try {
    await client.handshake();
  } catch (error) {
    say({ event: "tls-failed", error: (error as Error).message });
    client.close();
    return;
  }
  const server = await Deno.connectTls({
    hostname: serverHost!,
    port: Number(serverPort),
    caCerts: [await Deno.readTextFile(serverCa!)],
    alpnProtocols: [ALPN],
  });
  await Promise.allSettled([upstream(client, server), server.readable.pipeTo(client.writable)]);
}

for await (const client of listener) relay(client).catch(() => {/* either side hung up */});
