/**
 * Handshake benchmark of the control channel's TLS engine (mod/openvpn/tls.ts): full TLS 1.3
 * handshakes with ECDSA P-256 certificates and client authentication, a server and a client
 * engine in this process pumping bytes to each other, then the same with `node:tls` over an
 * in-memory Duplex pair for comparison.
 *
 * Each handshake is a fresh TLS session on both sides, as OpenVPN starts one per key_id: the
 * SSL_CTX (certificates, key, CA) is built once and cached, as a server does; `node:tls` gets
 * one `SecureContext` per side for the same reason. Certificates are made with the openssl tool.
 *
 * Usage: deno run -A scripts/tls_engine_bench.ts [handshakes]
 *
 * @module
 */

import { Duplex } from "node:stream";
import * as tls from "node:tls";
import { TlsEngine, type TlsIdentity } from "../mod/openvpn/tls.ts";

const HANDSHAKES = Number(Deno.args[0] ?? 200);
const WARMUP = 10;

async function openssl(args: string[], cwd: string): Promise<void> {
  const output = await new Deno.Command("openssl", { args, cwd, stdout: "null", stderr: "piped" })
    .output();
  if (!output.success) {
    throw new Error(`openssl ${args[0]} failed: ${new TextDecoder().decode(output.stderr)}`);
  }
}

/** A CA, a server and a client certificate with the usages of our PKI, all P-256. */
async function identities(dir: string): Promise<{ server: TlsIdentity; client: TlsIdentity }> {
  const p256 = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  await openssl(
    [
      "req",
      "-x509",
      ...p256,
      "-keyout",
      "ca.key",
      "-out",
      "ca.pem",
      "-days",
      "2",
      "-subj",
      "/CN=ca",
    ]
      .concat(["-addext", "basicConstraints=critical,CA:TRUE"]),
    dir,
  );
  for (const [name, usage] of [["server", "serverAuth"], ["client", "clientAuth"]]) {
    await Deno.writeTextFile(
      `${dir}/${name}.ext`,
      `keyUsage=critical,digitalSignature\nextendedKeyUsage=${usage}\n`,
    );
    await openssl(
      [
        "req",
        "-new",
        ...p256,
        "-keyout",
        `${name}.key`,
        "-out",
        `${name}.csr`,
        "-subj",
        `/CN=${name}`,
      ],
      dir,
    );
    await openssl([
      "x509",
      "-req",
      "-in",
      `${name}.csr`,
      "-CA",
      "ca.pem",
      "-CAkey",
      "ca.key",
      "-set_serial",
      name === "server" ? "1" : "2",
      "-days",
      "2",
      "-out",
      `${name}.pem`,
      "-extfile",
      `${name}.ext`,
    ], dir);
  }
  const read = (file: string) => Deno.readTextFileSync(`${dir}/${file}`);
  const identity = (name: string) => ({
    certPem: read(`${name}.pem`),
    keyPem: read(`${name}.key`),
    caPem: read("ca.pem"),
  });
  return { server: identity("server"), client: identity("client") };
}

/** One full handshake between two new engines; throws unless both end up done in TLS 1.3. */
function engineHandshake(server: TlsIdentity, client: TlsIdentity): void {
  using s = TlsEngine.server(server);
  using c = TlsEngine.client(client);
  for (let turn = 0; turn < 10 && !(s.handshakeDone && c.handshakeDone); turn++) {
    const toServer = c.takeOutgoing();
    if (toServer) s.receive(toServer);
    const toClient = s.takeOutgoing();
    if (toClient) c.receive(toClient);
  }
  if (!s.handshakeDone || s.version !== "TLSv1.3") throw new Error("handshake did not complete");
}

/** Two Duplex streams wired back to back: what one writes, the other reads. */
function duplexPair(): [Duplex, Duplex] {
  const ends: Duplex[] = [];
  for (let i = 0; i < 2; i++) {
    ends.push(
      new Duplex({
        read() {},
        write(chunk, _encoding, done) {
          ends[1 - i]!.push(chunk);
          done();
        },
      }),
    );
  }
  return [ends[0]!, ends[1]!];
}

/** One full `node:tls` handshake (client certificate requested) over a Duplex pair. */
function nodeHandshake(
  serverContext: tls.SecureContext,
  clientContext: tls.SecureContext,
): Promise<void> {
  const [serverEnd, clientEnd] = duplexPair();
  const server = new tls.TLSSocket(serverEnd, {
    isServer: true,
    requestCert: true,
    rejectUnauthorized: true,
    secureContext: serverContext,
  });
  const client = tls.connect({
    socket: clientEnd,
    secureContext: clientContext,
    servername: "server",
    rejectUnauthorized: true,
  });
  return new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("node:tls handshake timed out")), 5000);
    let done = 0;
    const finish = () => {
      if (++done < 2) return;
      clearTimeout(timer);
      server.destroy();
      client.destroy();
      resolve();
    };
    server.once("secure", finish);
    client.once("secureConnect", finish);
    const fail = (error: Error) => {
      clearTimeout(timer);
      server.destroy();
      client.destroy();
      reject(error);
    };
    server.once("error", fail);
    client.once("error", fail);
  });
}

async function measure(what: string, run: () => unknown): Promise<void> {
  for (let i = 0; i < WARMUP; i++) await run();
  const start = performance.now();
  for (let i = 0; i < HANDSHAKES; i++) await run();
  const seconds = (performance.now() - start) / 1000;
  console.log(
    `${what}: ${HANDSHAKES} handshakes in ${seconds.toFixed(3)} s = ` +
      `${(HANDSHAKES / seconds).toFixed(0)} handshakes/s ` +
      `(${((seconds * 1000) / HANDSHAKES).toFixed(2)} ms each, both sides)`,
  );
}

const dir = await Deno.makeTempDir({ prefix: "tls_engine_bench_" });
try {
  const { server, client } = await identities(dir);
  await measure("TlsEngine (libssl FFI, memory BIOs)", () => engineHandshake(server, client));
  const serverContext = tls.createSecureContext({
    cert: server.certPem,
    key: server.keyPem,
    ca: server.caPem,
  });
  const clientContext = tls.createSecureContext({
    cert: client.certPem,
    key: client.keyPem,
    ca: client.caPem,
  });
  await measure("node:tls (Duplex pair)", () => nodeHandshake(serverContext, clientContext));
} finally {
  await Deno.remove(dir, { recursive: true });
}
