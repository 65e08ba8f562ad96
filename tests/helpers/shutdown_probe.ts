/**
 * `shutdownTcp` where the kernel refuses SOCK_DESTROY (tests/socket_test.ts runs this without
 * CAP_NET_ADMIN): a connection whose TLS handshake is pending is ended all the same. Prints one
 * JSON line `{shutdown, examined, peer, again}`.
 *
 * @module
 */

import { within } from "../_wait.ts";
import { descriptorWalks, shutdownTcp } from "../../ffi/socket.ts";
import { tlsListener } from "../_tls.ts";

const { listener } = await tlsListener();
const accepted = listener.accept();
const idle = await within(
  Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port }),
  5000,
  "connect",
);
const server = await within(accepted, 5000, "accept");
const handshake = server.handshake().catch(() => "failed");
server.close();
const shutdown = shutdownTcp(server.localAddr, server.remoteAddr);
const examined = descriptorWalks.examined;
const peer = await within(
  idle.read(new Uint8Array(16)).then((n) => n === null ? "end" : "data", () => "end"),
  5000,
  "the idle peer sees the end",
);
await within(handshake, 5000, "the handshake fails");
const again = shutdownTcp(server.localAddr, server.remoteAddr);
console.log(JSON.stringify({ shutdown, examined, peer, again }));
idle.close();
listener.close();
