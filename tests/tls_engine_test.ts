/**
 * Tests of the control channel's TLS engine (mod/openvpn/tls.ts over ffi/ssl.ts): two engines
 * pumping bytes to each other in memory, certificate and key refusals, garbage and bounds, and
 * interop with `openssl s_client` / `openssl s_server` over real TCP sockets on 127.0.0.1.
 *
 * The certificates are ECDSA P-256 like those of mod/pki.ts, made here with the openssl tool so
 * that these tests do not depend on the PKI code.
 *
 * @module
 */

import { assert, assertEquals, assertMatch, assertThrows } from "./_assert.ts";
import { exitOf, kill, waitUntil, within } from "./_wait.ts";
import { MAX_QUEUED, TlsEngine, TlsError, type TlsIdentity } from "../mod/openvpn/tls.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// --- fixtures ----------------------------------------------------------------------------------

/** The certificates of the tests: two unrelated CAs and leaves of each. */
interface Fixtures {
  dir: string;
  /** Our server, issued by our CA. */
  server: TlsIdentity;
  /** Our client "alice", issued by our CA (EKU clientAuth). */
  alice: TlsIdentity;
  /** A client of another CA, trusting ours (so only its own certificate is at fault). */
  mallory: TlsIdentity;
  /** A server of another CA, trusting ours. */
  rogueServer: TlsIdentity;
  /** A key pair unrelated to any certificate. */
  strayKeyPem: string;
  /** Alice's key, encrypted with a passphrase. */
  encryptedKeyPem: string;
}

async function openssl(args: string[], cwd: string): Promise<void> {
  const output = await within(
    new Deno.Command("openssl", { args, cwd, stdout: "null", stderr: "piped" }).output(),
    10_000,
    `openssl ${args[0]}`,
  );
  if (!output.success) {
    throw new Error(`openssl ${args.join(" ")} failed: ${decoder.decode(output.stderr)}`);
  }
}

const P256 = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];

async function makeCa(dir: string, name: string): Promise<void> {
  await openssl([
    "req",
    "-x509",
    ...P256,
    "-keyout",
    `${name}.key`,
    "-out",
    `${name}.pem`,
    "-days",
    "30",
    "-subj",
    `/CN=${name}`,
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
  ], dir);
}

/** A leaf `name` signed by `ca`, with the usages of a lab server or client certificate. */
async function makeLeaf(
  dir: string,
  ca: string,
  name: string,
  usage: "serverAuth" | "clientAuth",
): Promise<void> {
  const ext = [
    "keyUsage=critical,digitalSignature",
    `extendedKeyUsage=${usage}`,
    ...(usage === "serverAuth" ? [`subjectAltName=DNS:${name}`] : []),
  ].join("\n");
  await Deno.writeTextFile(`${dir}/${name}.ext`, ext);
  await openssl([
    "req",
    "-new",
    ...P256,
    "-keyout",
    `${name}.key`,
    "-out",
    `${name}.csr`,
    "-subj",
    `/CN=${name}`,
  ], dir);
  const serial = `0x${Array.from(crypto.getRandomValues(new Uint8Array(8)), hex).join("")}`;
  await openssl([
    "x509",
    "-req",
    "-in",
    `${name}.csr`,
    "-CA",
    `${ca}.pem`,
    "-CAkey",
    `${ca}.key`,
    "-set_serial",
    serial,
    "-days",
    "30",
    "-out",
    `${name}.pem`,
    "-extfile",
    `${name}.ext`,
  ], dir);
}

function hex(byte: number): string {
  return byte.toString(16).padStart(2, "0");
}

let fixtures: Promise<Fixtures> | undefined;

/** Made once for the whole file: some 15 openssl runs. */
function pki(): Promise<Fixtures> {
  fixtures ??= (async () => {
    const dir = await Deno.makeTempDir({ prefix: "tls_engine_test_" });
    fixtureDir = dir;
    await makeCa(dir, "ours");
    await makeCa(dir, "theirs");
    await makeLeaf(dir, "ours", "server", "serverAuth");
    await makeLeaf(dir, "ours", "alice", "clientAuth");
    await makeLeaf(dir, "theirs", "mallory", "clientAuth");
    await makeLeaf(dir, "theirs", "rogue", "serverAuth");
    await openssl([
      "genpkey",
      "-algorithm",
      "EC",
      "-pkeyopt",
      "ec_paramgen_curve:P-256",
      "-out",
      "stray.key",
    ], dir);
    await openssl([
      "pkey",
      "-in",
      "alice.key",
      "-aes256",
      "-passout",
      "pass:secret",
      "-out",
      "alice.enc.key",
    ], dir);
    const read = (file: string) => Deno.readTextFileSync(`${dir}/${file}`);
    const identity = (name: string, ca: string): TlsIdentity => ({
      certPem: read(`${name}.pem`),
      keyPem: read(`${name}.key`),
      caPem: read(`${ca}.pem`),
    });
    return {
      dir,
      server: identity("server", "ours"),
      alice: identity("alice", "ours"),
      mallory: identity("mallory", "ours"),
      rogueServer: identity("rogue", "ours"),
      strayKeyPem: read("stray.key"),
      encryptedKeyPem: read("alice.enc.key"),
    };
  })();
  return fixtures;
}

// The fixtures go when the test process ends, whichever tests ran.
let fixtureDir: string | undefined;
globalThis.addEventListener("unload", () => {
  if (fixtureDir !== undefined) Deno.removeSync(fixtureDir, { recursive: true });
});

// --- helpers -----------------------------------------------------------------------------------

/** Moves bytes between the two engines until neither has anything to send (at most 20 turns). */
function pump(client: TlsEngine, server: TlsEngine): void {
  for (let turn = 0; turn < 20; turn++) {
    const toServer = client.takeOutgoing();
    if (toServer) server.receive(toServer);
    const toClient = server.takeOutgoing();
    if (toClient) client.receive(toClient);
    if (!toServer && !toClient) return;
  }
  throw new Error("the engines were still talking after 20 turns");
}

/** The DER inside a one-certificate PEM. */
function der(pem: string): Uint8Array<ArrayBuffer> {
  const base64 = pem.replace(/-----[A-Z ]+-----/g, "").replace(/\s+/g, "");
  return Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
}

function pattern(length: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) bytes[i] = (i * 31 + seed) & 0xff;
  return bytes;
}

/** `parts` joined in one buffer. */
function concat(parts: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const all = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let at = 0;
  for (const part of parts) {
    all.set(part, at);
    at += part.length;
  }
  return all;
}

/**
 * Asserts byte equality, reporting the lengths and the first difference: a deep-equality diff
 * of 100 KB arrays takes minutes and gigabytes.
 */
function assertBytes(actual: Uint8Array | undefined, expected: Uint8Array, what: string): void {
  assert(actual !== undefined, `${what}: nothing`);
  let differs = actual.length === expected.length ? -1 : Math.min(actual.length, expected.length);
  for (let i = 0; differs < 0 && i < actual.length; i++) {
    if (actual[i] !== expected[i]) differs = i;
  }
  assert(
    differs < 0,
    `${what}: ${actual.length} bytes, expected ${expected.length}; first difference at ${differs}`,
  );
}

function toHex(bytes: Uint8Array): string {
  return Array.from(bytes, hex).join("");
}

// --- in memory ---------------------------------------------------------------------------------

Deno.test("TlsEngine completes a TLS 1.3 handshake in one round trip, without session tickets, and shows each side the peer's certificate", async () => {
  const { server: serverId, alice } = await pki();
  using server = TlsEngine.server(serverId);
  using client = TlsEngine.client(alice);
  assert(!server.handshakeDone && !client.handshakeDone);
  assertEquals(server.version, "");
  server.receive(client.takeOutgoing()!);
  client.receive(server.takeOutgoing()!);
  server.receive(client.takeOutgoing()!);
  assert(server.handshakeDone && client.handshakeDone);
  // One round trip and done: no NewSessionTicket follows the client's Finished.
  assertEquals(server.takeOutgoing(), undefined);
  assertEquals(client.takeOutgoing(), undefined);
  assertEquals([server.version, client.version], ["TLSv1.3", "TLSv1.3"]);
  assertMatch(
    server.cipher,
    /^TLS_(AES_256_GCM_SHA384|AES_128_GCM_SHA256|CHACHA20_POLY1305_SHA256)$/,
  );
  assertEquals(client.cipher, server.cipher);
  assertBytes(server.peerCertificate(), der(alice.certPem), "the client's certificate");
  assertBytes(client.peerCertificate(), der(serverId.certPem), "the server's certificate");
});

Deno.test("TlsEngine carries plaintext intact both ways, 100 KB included, written before and after the handshake", async () => {
  const { server: serverId, alice } = await pki();
  using server = TlsEngine.server(serverId);
  using client = TlsEngine.client(alice);
  // Before the handshake: held back, then sent.
  const early = encoder.encode("key method 2 from the client");
  client.write(early);
  early.fill(0); // the engine holds its own copy
  server.write(encoder.encode("early server words"));
  pump(client, server);
  assertEquals(decoder.decode(server.read()), "key method 2 from the client");
  assertEquals(decoder.decode(client.read()), "early server words");
  assertEquals(server.read(), undefined);

  const up = pattern(100_000, 1);
  const down = pattern(100_000, 2);
  client.write(up.subarray(0, 40_000));
  client.write(up.subarray(40_000));
  server.write(down);
  pump(client, server);
  assertBytes(server.read(), up, "client to server");
  assertBytes(client.read(), down, "server to client");
});

Deno.test("TlsEngine with maxVersion TLSv1.2 completes an ECDHE-ECDSA handshake and carries data", async () => {
  const { server: serverId, alice } = await pki();
  using server = TlsEngine.server(serverId, { maxVersion: "TLSv1.2" });
  using client = TlsEngine.client(alice);
  client.write(encoder.encode("over TLS 1.2"));
  pump(client, server);
  assertEquals([server.version, client.version], ["TLSv1.2", "TLSv1.2"]);
  assertMatch(server.cipher, /^ECDHE-ECDSA-/);
  assertEquals(decoder.decode(server.read()), "over TLS 1.2");
  assertBytes(server.peerCertificate(), der(alice.certPem), "the client's certificate");
});

Deno.test("TlsEngine.receive() accepts the peer's bytes one at a time", async () => {
  const { server: serverId, alice } = await pki();
  using server = TlsEngine.server(serverId);
  using client = TlsEngine.client(alice);
  client.write(encoder.encode("byte by byte"));
  for (let turn = 0; turn < 10 && !(server.handshakeDone && client.handshakeDone); turn++) {
    for (const [from, to] of [[client, server], [server, client]] as const) {
      const bytes = from.takeOutgoing() ?? new Uint8Array();
      for (let i = 0; i < bytes.length; i++) to.receive(bytes.subarray(i, i + 1));
    }
  }
  pump(client, server);
  assertEquals(decoder.decode(server.read()), "byte by byte");
});

Deno.test("TlsEngine.exportKeyingMaterial() gives both sides the same RFC 5705 bytes, only after the handshake", async () => {
  const { server: serverId, alice } = await pki();
  using server = TlsEngine.server(serverId);
  using client = TlsEngine.client(alice);
  assertThrows(() => client.exportKeyingMaterial("EXPORTER-OpenVPN-datakeys", 256), TlsError);
  pump(client, server);
  const ours = server.exportKeyingMaterial("EXPORTER-OpenVPN-datakeys", 256);
  assertEquals(ours.length, 256);
  assertBytes(client.exportKeyingMaterial("EXPORTER-OpenVPN-datakeys", 256), ours, "exported");
  assert(toHex(client.exportKeyingMaterial("EXPORTER-other", 256)) !== toHex(ours));
});

// --- refusals ----------------------------------------------------------------------------------

Deno.test("TlsEngine.server() refuses a client certificate from another CA, tells the client, and stays dead", async () => {
  const { server: serverId, mallory } = await pki();
  using server = TlsEngine.server(serverId);
  using client = TlsEngine.client(mallory);
  server.receive(client.takeOutgoing()!);
  client.receive(server.takeOutgoing()!);
  // TLS 1.3: the client is done once it has sent its Finished; the verdict comes after.
  assert(client.handshakeDone);
  const error = assertThrows(() => server.receive(client.takeOutgoing()!), TlsError);
  assertEquals((error as TlsError).reason, "certificate verify failed");
  assertMatch(error.message, /unable to get local issuer certificate/);
  assert(!server.handshakeDone);
  assertEquals(server.peerCertificate(), undefined);
  // Dead: the same error again, but the alert is still there to send.
  assertEquals(assertThrows(() => server.receive(new Uint8Array(5)), TlsError), error);
  assertEquals(assertThrows(() => server.write(new Uint8Array(1)), TlsError), error);
  const alert = server.takeOutgoing();
  assert(alert !== undefined);
  assertThrows(() => client.receive(alert), TlsError, /alert unknown ca/);
});

Deno.test("TlsEngine.client() refuses a server certificate from another CA", async () => {
  const { rogueServer, alice } = await pki();
  using server = TlsEngine.server(rogueServer);
  using client = TlsEngine.client(alice);
  server.receive(client.takeOutgoing()!);
  const error = assertThrows(() => client.receive(server.takeOutgoing()!), TlsError);
  assertEquals((error as TlsError).reason, "certificate verify failed");
  assert(!client.handshakeDone);
});

Deno.test("TlsEngine.server() refuses a server-usage certificate presented as a client certificate", async () => {
  const { server: serverId } = await pki();
  using server = TlsEngine.server(serverId);
  // Our own server certificate, signed by our CA, but its EKU says serverAuth only.
  using client = TlsEngine.client(serverId);
  assertThrows(() => pump(client, server), TlsError, /unsuitable certificate purpose/);
  assert(!server.handshakeDone);
});

Deno.test("TlsEngine.client() refuses a private key that does not match the certificate", async () => {
  const { alice, strayKeyPem } = await pki();
  // OpenSSL compares the pair as it loads the key (SSL_CTX_use_PrivateKey), so such a client
  // never reaches the wire; the next test shows what the server does if one did.
  const error = assertThrows(
    () => TlsEngine.client({ ...alice, keyPem: strayKeyPem }),
    TlsError,
    /key values mismatch/,
  );
  assertEquals((error as TlsError).call, "load client key");
  assertThrows(() => TlsEngine.server({ ...alice, keyPem: strayKeyPem }), TlsError);
});

Deno.test("TlsEngine.client() refuses unparsable PEMs with TlsError", async () => {
  const { alice, encryptedKeyPem } = await pki();
  assertThrows(
    () => TlsEngine.client({ ...alice, keyPem: encryptedKeyPem }),
    TlsError,
    /load client key failed/,
  );
  assertThrows(
    () => TlsEngine.client({ ...alice, caPem: "no PEM here" }),
    TlsError,
    /load CA certificate failed: no PEM certificate found/,
  );
  assertThrows(
    () => TlsEngine.server({ ...alice, certPem: alice.keyPem }),
    TlsError,
    /load server certificate failed: no PEM certificate found/,
  );
});

Deno.test("TlsEngine.client() refuses an encrypted private key without prompting, even on a terminal", async () => {
  const { dir } = await pki();
  // OpenSSL's default passphrase callback reads /dev/tty, so only a process with a
  // controlling terminal would hang on it: `script` gives the probe one.
  const probe = `${dir}/encrypted_key_probe.ts`;
  await Deno.writeTextFile(
    probe,
    [
      `import { TlsEngine } from ${
        JSON.stringify(new URL("../mod/openvpn/tls.ts", import.meta.url).href)
      };`,
      `const read = (file: string) => Deno.readTextFileSync(${JSON.stringify(dir)} + "/" + file);`,
      `try {`,
      `  TlsEngine.client({ certPem: read("alice.pem"), keyPem: read("alice.enc.key"), caPem: read("ours.pem") });`,
      `  console.log("LOADED");`,
      `} catch (error) {`,
      `  console.log("REFUSED " + String(error));`,
      `}`,
    ].join("\n"),
  );
  const command = `${Deno.execPath()} run --allow-read --allow-ffi ${probe}`;
  const child = new Deno.Command("script", {
    args: ["-qec", command, "/dev/null"],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const output = child.output();
  const status = await exitOf(child, 15_000, "the probe under script");
  const text = decoder.decode((await output).stdout);
  assert(status.success, text);
  assertMatch(text, /REFUSED TlsError: load client key failed/);
  assert(!text.includes("pass phrase"), text);
});

// TLS 1.2 sends the client's CertificateVerify in clear, so a test can replace its signature
// with one made by another key over the same transcript: the forgery a client holding our
// certificate but not its key would send.

/** The handshake messages (type, length, body) inside the plaintext handshake records. */
function handshakeMessages(flight: Uint8Array): { messages: Uint8Array[]; rest: Uint8Array } {
  const stream: Uint8Array[] = [];
  let at = 0;
  while (at + 5 <= flight.length && flight[at] === 22) {
    const length = (flight[at + 3]! << 8) | flight[at + 4]!;
    stream.push(flight.subarray(at + 5, at + 5 + length));
    at += 5 + length;
  }
  const bytes = concat(stream);
  const messages: Uint8Array[] = [];
  for (let m = 0; m + 4 <= bytes.length;) {
    const length = (bytes[m + 1]! << 16) | (bytes[m + 2]! << 8) | bytes[m + 3]!;
    messages.push(bytes.subarray(m, m + 4 + length));
    m += 4 + length;
  }
  return { messages, rest: flight.subarray(at) };
}

/** A DER ECDSA-Sig-Value from WebCrypto's r || s. */
function derSignature(raw: Uint8Array): Uint8Array {
  const integer = (half: Uint8Array): number[] => {
    let start = 0;
    while (start < half.length - 1 && half[start] === 0) start++;
    const digits = [...half.subarray(start)];
    if (digits[0]! & 0x80) digits.unshift(0);
    return [0x02, digits.length, ...digits];
  };
  const body = [...integer(raw.subarray(0, 32)), ...integer(raw.subarray(32))];
  return new Uint8Array([0x30, body.length, ...body]);
}

/** `flight` with its CertificateVerify signed anew by `keyPem` over `transcript`. */
async function resign(flight: Uint8Array, transcript: Uint8Array[], keyPem: string) {
  const { messages, rest } = handshakeMessages(flight);
  const verify = messages.findIndex((m) => m[0] === 15);
  assert(verify > 0, "the flight holds a CertificateVerify");
  // ecdsa_secp256r1_sha256, which OpenSSL picks for a P-256 key
  assertEquals([messages[verify]![4], messages[verify]![5]], [0x04, 0x03]);
  const key = await crypto.subtle.importKey(
    "pkcs8",
    der(keyPem),
    { name: "ECDSA", namedCurve: "P-256" },
    false,
    ["sign"],
  );
  const signed = concat([...transcript, ...messages.slice(0, verify)]);
  const signature = derSignature(
    new Uint8Array(await crypto.subtle.sign({ name: "ECDSA", hash: "SHA-256" }, key, signed)),
  );
  const bodyLength = 4 + signature.length;
  const message = new Uint8Array([
    15,
    0,
    bodyLength >> 8,
    bodyLength & 0xff,
    0x04,
    0x03,
    signature.length >> 8,
    signature.length & 0xff,
    ...signature,
  ]);
  const handshake = concat([...messages.slice(0, verify), message, ...messages.slice(verify + 1)]);
  const header = new Uint8Array([22, 3, 3, handshake.length >> 8, handshake.length & 0xff]);
  return concat([header, handshake, rest]);
}

Deno.test("TlsEngine.server() refuses a TLS 1.2 CertificateVerify signed with a key other than the certificate's", async () => {
  const { server: serverId, alice, strayKeyPem } = await pki();
  for (
    const [keyPem, expected] of [[strayKeyPem, /bad signature/], [
      alice.keyPem,
      /digest check failed/,
    ]] as const
  ) {
    using server = TlsEngine.server(serverId, { maxVersion: "TLSv1.2" });
    using client = TlsEngine.client(alice);
    const hello = client.takeOutgoing()!;
    server.receive(hello);
    const serverFlight = server.takeOutgoing()!;
    client.receive(serverFlight);
    const transcript = [
      ...handshakeMessages(hello).messages,
      ...handshakeMessages(serverFlight).messages,
    ];
    const forged = await resign(client.takeOutgoing()!, transcript, keyPem);
    // With the right key the signature passes and only the Finished (computed over the
    // original signature) fails: proof that the forgery itself is well-formed.
    assertThrows(() => server.receive(forged), TlsError, expected);
    assert(!server.handshakeDone);
  }
});

// --- bad input and bounds ----------------------------------------------------------------------

Deno.test("TlsEngine.receive() throws TlsError for garbage before the handshake, never anything else", async () => {
  const { server: serverId } = await pki();
  using http = TlsEngine.server(serverId);
  assertThrows(() => http.receive(encoder.encode("GET / HTTP/1.1\r\nHost: x\r\n\r\n")), TlsError);
  let thrown = 0;
  for (let i = 0; i < 300; i++) {
    using server = TlsEngine.server(serverId);
    const bytes = crypto.getRandomValues(new Uint8Array(4 + (i * 37) % 700));
    // A third start like a handshake record, to get past the record layer.
    if (i % 3 === 0) bytes.set([22, 3, 1], 0);
    try {
      server.receive(bytes);
    } catch (error) {
      assert(error instanceof TlsError, `input ${i} threw ${String(error)}`);
      thrown++;
    }
  }
  // Random bytes may also look like the start of a record still arriving.
  assert(thrown > 200, `only ${thrown} of 300 garbage inputs were refused`);
});

Deno.test("TlsEngine.receive() throws TlsError for a record with one flipped bit after the handshake", async () => {
  const { server: serverId, alice } = await pki();
  using server = TlsEngine.server(serverId);
  using client = TlsEngine.client(alice);
  pump(client, server);
  client.write(encoder.encode("intact"));
  const record = client.takeOutgoing()!;
  record[record.length - 3]! ^= 0x10;
  assertThrows(() => server.receive(record), TlsError, /decryption failed or bad record mac/);
  assertEquals(server.read(), undefined);
});

Deno.test("TlsEngine bounds its queues: write() over MAX_QUEUED throws RangeError, unread plaintext over it throws TlsError", async () => {
  const { server: serverId, alice } = await pki();
  using server = TlsEngine.server(serverId);
  using client = TlsEngine.client(alice);
  // Held back before the handshake: up to the limit, not a byte more.
  client.write(new Uint8Array(MAX_QUEUED - 1));
  assertThrows(() => client.write(new Uint8Array(2)), RangeError, /limit/);
  client.write(new Uint8Array(1));
  assertEquals(client.read(), undefined);
  // Delivered, but the server never reads: the next megabyte is refused.
  pump(client, server);
  assertEquals(server.read()?.length, MAX_QUEUED);
  client.write(new Uint8Array(MAX_QUEUED / 2));
  // TLS bytes not taken count against the same limit.
  assertThrows(() => client.write(new Uint8Array(MAX_QUEUED / 2 + 1)), RangeError, /queued/);
  server.receive(client.takeOutgoing()!);
  client.write(new Uint8Array(MAX_QUEUED / 2 + 1));
  assertThrows(() => server.receive(client.takeOutgoing()!), TlsError, /not read/);
});

Deno.test("TlsEngine.close() is safe twice and a closed engine refuses receive and write", async () => {
  const { server: serverId, alice } = await pki();
  const client = TlsEngine.client(alice);
  const server = TlsEngine.server(serverId);
  client.close();
  client.close();
  assertEquals(client.takeOutgoing(), undefined);
  assertThrows(() => client.receive(new Uint8Array(1)), Deno.errors.BadResource);
  assertThrows(() => client.write(new Uint8Array(1)), Deno.errors.BadResource);
  server[Symbol.dispose]();
  server.close();
});

Deno.test("TlsEngine says clearly that it needs FFI permission, and sslUnavailable() tells in advance", async () => {
  const { dir } = await pki();
  const probe = `${dir}/no_ffi_probe.ts`;
  const module = new URL("../mod/openvpn/tls.ts", import.meta.url).href;
  await Deno.writeTextFile(
    probe,
    [
      `import { sslUnavailable, TlsEngine } from ${JSON.stringify(module)};`,
      `console.log("UNAVAILABLE " + sslUnavailable());`,
      `try {`,
      `  TlsEngine.client({ certPem: "", keyPem: "", caPem: "" });`,
      `} catch (error) {`,
      `  console.log("THROWN " + String(error));`,
      `}`,
    ].join("\n"),
  );
  const output = await within(
    new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-prompt", `--allow-read=${dir}`, probe],
      stdout: "piped",
      stderr: "piped",
    }).output(),
    15_000,
    "the probe without FFI permission",
  );
  const text = decoder.decode(output.stdout) + decoder.decode(output.stderr);
  assertMatch(
    text,
    /UNAVAILABLE libssl cannot be loaded without FFI permission: run with --allow-ffi/,
  );
  assertMatch(text, /THROWN Error: Cannot create a TLS client context: libssl cannot be loaded/);
});

// --- interop with the openssl tool over TCP ----------------------------------------------------

/** A running `openssl s_client` / `s_server` whose output the test watches. */
class OpensslProcess {
  readonly child: Deno.ChildProcess;
  output = "";
  readonly #writer: WritableStreamDefaultWriter<Uint8Array>;
  readonly #drained: Promise<void>;

  constructor(args: string[], cwd: string) {
    this.child = new Deno.Command("openssl", {
      args,
      cwd,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#writer = this.child.stdin.getWriter();
    const collect = async (stream: ReadableStream<Uint8Array>) => {
      for await (const chunk of stream.pipeThrough(new TextDecoderStream())) this.output += chunk;
    };
    this.#drained = Promise.all([collect(this.child.stdout), collect(this.child.stderr)]).then(
      () => {},
    );
  }

  async send(line: string): Promise<void> {
    await within(this.#writer.write(encoder.encode(line)), 5000, "write to openssl's stdin");
  }

  async waitFor(text: string): Promise<void> {
    await waitUntil(() => this.output.includes(text), 10_000, `openssl prints "${text}"`);
  }

  /** Closes stdin (openssl then ends the TLS session) and waits for the exit status. */
  async finish(): Promise<Deno.CommandStatus> {
    await this.#writer.close().catch(() => {});
    try {
      return await exitOf(this.child, 10_000, "openssl");
    } finally {
      await within(this.#drained, 5000, "openssl output ends");
    }
  }

  /** Stops the process at once (for the failure paths of a test). */
  async kill(): Promise<void> {
    kill(this.child);
    await this.finish().catch(() => {});
  }
}

/**
 * Runs `engine` over `conn` until the connection ends or the engine fails: every read goes to
 * receive(), `onData` sees the new plaintext, and the engine's output goes back. Resolves with
 * the engine's error, if any.
 */
async function serve(
  conn: Deno.Conn,
  engine: TlsEngine,
  onData: (text: string) => void,
): Promise<TlsError | undefined> {
  const buffer = new Uint8Array(16_384);
  let failure: TlsError | undefined;
  try {
    for (;;) {
      const out = engine.takeOutgoing();
      if (out) await conn.write(out);
      if (failure) break;
      const n = await conn.read(buffer);
      if (n === null) break;
      try {
        engine.receive(buffer.subarray(0, n));
      } catch (error) {
        if (!(error instanceof TlsError)) throw error;
        failure = error;
      }
      const data = engine.read();
      if (data) onData(decoder.decode(data));
    }
  } catch (error) {
    // The peer may reset the connection after its own failure; the engine's verdict stands.
    if (
      !(error instanceof Deno.errors.ConnectionReset || error instanceof Deno.errors.BrokenPipe)
    ) {
      throw error;
    }
  } finally {
    conn.close();
  }
  return failure;
}

/** `openssl s_client` to `port`, verifying the server against our CA, plus `args`. */
function sClient(dir: string, port: number, args: string[]): OpensslProcess {
  return new OpensslProcess([
    "s_client",
    "-connect",
    `127.0.0.1:${port}`,
    "-CAfile",
    "ours.pem",
    "-verify_return_error",
    ...args,
  ], dir);
}

/** Alice's certificate and key, as s_client options. */
const ALICE = ["-cert", "alice.pem", "-key", "alice.key"];

/**
 * `openssl s_server` for one connection on a free port of 127.0.0.1, requiring a client
 * certificate from our CA, plus `args`; resolves once it listens.
 */
async function sServer(
  dir: string,
  args: string[],
): Promise<{ server: OpensslProcess; port: number }> {
  const server = new OpensslProcess([
    "s_server",
    "-accept",
    "127.0.0.1:0",
    "-naccept",
    "1",
    "-cert",
    "server.pem",
    "-key",
    "server.key",
    "-CAfile",
    "ours.pem",
    "-Verify",
    "1",
    "-verify_return_error",
    ...args,
  ], dir);
  try {
    await server.waitFor("ACCEPT");
    const port = Number(/ACCEPT 127\.0\.0\.1:(\d+)/.exec(server.output)?.[1]);
    assert(port > 0, server.output);
    return { server, port };
  } catch (error) {
    await server.kill();
    throw error;
  }
}

Deno.test("TlsEngine.server() talks TLS 1.3 and 1.2 with openssl s_client over TCP, exporter included", async () => {
  const { dir, server: serverId } = await pki();
  for (const version of ["-tls1_3", "-tls1_2"]) {
    using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const client = sClient(dir, listener.addr.port, [
      version,
      ...ALICE,
      "-keymatexport",
      "EXPORTER-test",
      "-keymatexportlen",
      "32",
    ]);
    try {
      const conn = await within(listener.accept(), 10_000, "s_client connects");
      using engine = TlsEngine.server(serverId);
      let exported = "";
      let received = "";
      const served = serve(conn, engine, (text) => {
        received += text;
        if (received.endsWith("\n") && exported === "") {
          exported = toHex(engine.exportKeyingMaterial("EXPORTER-test", 32)).toUpperCase();
          engine.write(encoder.encode("hello from the engine\n"));
        }
      });
      await client.send("hello from s_client\n");
      await client.waitFor("hello from the engine");
      // On stdin EOF s_client sends a close_notify, which ends the engine too.
      const status = await client.finish();
      const failure = await within(served, 10_000, "the engine's connection ends");
      assert(status.success, client.output);
      assertEquals(received, "hello from s_client\n");
      assertEquals(engine.version, version === "-tls1_3" ? "TLSv1.3" : "TLSv1.2");
      assertMatch(client.output, /Verification: OK/);
      assertMatch(client.output, /Acceptable client certificate CA names\nCN = ours\n/);
      assertMatch(client.output, new RegExp(`Keying material: ${exported}\n`));
      assertMatch(failure?.message ?? "", /close_notify/);
      // No resumption: TLS 1.2 gets no session id (and neither version a ticket).
      if (version === "-tls1_2") assertMatch(client.output, /Session-ID: *\n/);
      assert(!client.output.includes("TLS session ticket"), client.output);
    } finally {
      await client.kill();
    }
  }
});

Deno.test("TlsEngine.server() refuses openssl s_client when it presents no certificate", async () => {
  const { dir, server: serverId } = await pki();
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const client = sClient(dir, listener.addr.port, []);
  try {
    const conn = await within(listener.accept(), 10_000, "s_client connects");
    using engine = TlsEngine.server(serverId);
    const failure = await within(serve(conn, engine, () => {}), 10_000, "the engine refuses");
    assertEquals(failure?.reason, "peer did not return a certificate");
    assert(!engine.handshakeDone);
    await client.finish();
    assertMatch(client.output, /alert certificate required/);
  } finally {
    await client.kill();
  }
});

Deno.test("TlsEngine.server() refuses a TLS 1.2 renegotiation that openssl s_client starts", async () => {
  const { dir, server: serverId } = await pki();
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const client = sClient(dir, listener.addr.port, ["-tls1_2", ...ALICE]);
  try {
    const conn = await within(listener.accept(), 10_000, "s_client connects");
    using engine = TlsEngine.server(serverId);
    let received = "";
    const served = serve(conn, engine, (text) => {
      received += text;
    });
    await client.send("before\n");
    await waitUntil(() => received === "before\n", 10_000, "the engine reads the first line");
    // "R" on a line of its own makes s_client renegotiate; the engine answers with a
    // no_renegotiation alert, which s_client takes as fatal.
    await client.send("R\n");
    await client.waitFor("no renegotiation");
    const failure = await within(served, 10_000, "the engine's connection ends");
    assertMatch(failure?.message ?? "", /alert handshake failure/);
    assertEquals(received, "before\n");
    await client.finish();
  } finally {
    await client.kill();
  }
});

Deno.test("TlsEngine.client() talks to openssl s_server over TCP and is verified by it", async () => {
  const { dir, alice } = await pki();
  const { server, port } = await sServer(dir, []);
  try {
    const conn = await within(Deno.connect({ hostname: "127.0.0.1", port }), 10_000, "connect");
    using engine = TlsEngine.client(alice);
    engine.write(encoder.encode("hello from the engine\n"));
    let received = "";
    const served = serve(conn, engine, (text) => {
      received += text;
    });
    await server.waitFor("hello from the engine");
    await server.send("hello from s_server\n");
    await waitUntil(() => received.includes("\n"), 10_000, "the engine reads s_server's line");
    assertEquals(received, "hello from s_server\n");
    assertEquals(engine.version, "TLSv1.3");
    assertMatch(server.output, /subject=CN = alice/);
    // On stdin EOF s_server drops the connection without a close_notify.
    await server.finish();
    assertEquals(await within(served, 10_000, "the engine's connection ends"), undefined);
  } finally {
    await server.kill();
  }
});

Deno.test("TlsEngine.client() refuses a TLS 1.2 renegotiation that openssl s_server starts", async () => {
  const { dir, alice } = await pki();
  const { server, port } = await sServer(dir, ["-tls1_2"]);
  try {
    const conn = await within(Deno.connect({ hostname: "127.0.0.1", port }), 10_000, "connect");
    using engine = TlsEngine.client(alice);
    engine.write(encoder.encode("before\n"));
    const served = serve(conn, engine, () => {});
    await server.waitFor("before");
    // "r" on a line of its own makes s_server send a HelloRequest.
    await server.send("r\n");
    await server.waitFor("no renegotiation");
    const failure = await within(served, 10_000, "the engine's connection ends");
    assertMatch(failure?.message ?? "", /alert handshake failure/);
    await server.finish();
  } finally {
    await server.kill();
  }
});
