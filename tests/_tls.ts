/**
 * A TLS listener on 127.0.0.1 with the server certificate of a throwaway PKI, for tests of
 * the socket layer (tests/socket_test.ts and its subprocess, tests/helpers/shutdown_probe.ts).
 */

import { initPki, loadServerIdentity } from "../mod/pki.ts";

/** Listens on a free port of 127.0.0.1; `caPem` verifies the certificate it presents. */
export async function tlsListener(): Promise<{ listener: Deno.TlsListener; caPem: string }> {
  const dir = await Deno.makeTempDir();
  try {
    await initPki(dir, { hosts: ["127.0.0.1"] });
    const identity = await loadServerIdentity(dir);
    const listener = Deno.listenTls({
      hostname: "127.0.0.1",
      port: 0,
      cert: identity.certPem,
      key: identity.keyPem,
    });
    return { listener, caPem: identity.caPem };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
