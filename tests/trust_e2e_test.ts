/**
 * The client trusts the profile's CA and nothing else (issue 9, finding 1), end to end: real
 * `vpn serve` and `vpn connect` processes in namespaces, and a relay (tests/helpers/tls_relay.ts)
 * that terminates the client's TLS with a certificate from a foreign root and passes every byte
 * on to the real server, as someone holding a publicly trusted certificate for the server's name
 * could.
 */

import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { assert, assertEquals, assertMatch, assertRejects } from "./_assert.ts";
import { denoScript, rootTest, run } from "./_netns.ts";
import { within } from "./_wait.ts";
import { Topology, type VpnProcess } from "./_vpn.ts";
import { Channel } from "../mod/native/channel.ts";
import { Client, ClientError } from "../mod/native/client.ts";
import { MemoryTun } from "../mod/core/memory_tun.ts";
import { ALPN, decodeAuth, encodeMessage, PROTOCOL_VERSION } from "../mod/native/messages.ts";
import {
  authChallenge,
  certificateNames,
  initPki,
  issueClient,
  PkiError,
  serverIdentityName,
  upgradeServerCertificate,
} from "../mod/pki.ts";
import { FrameType } from "../mod/native/wire.ts";

x509.cryptoProvider.set(crypto);

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const RELAY = new URL("./helpers/tls_relay.ts", import.meta.url).pathname;
const EC_KEY = { name: "ECDSA", namedCurve: "P-256" };
const EC_SIGN = { name: "ECDSA", hash: "SHA-256" };
const DAY_MS = 24 * 60 * 60 * 1000;

async function pem(key: CryptoKey): Promise<string> {
  return x509.PemConverter.encode(await crypto.subtle.exportKey("pkcs8", key), "PRIVATE KEY");
}

/**
 * A root of someone else's, and a serverAuth certificate from it for `ip` (and `dns` names):
 * what a public CA, a company wildcard or a TLS-inspection CA gives whoever asks for the server's
 * address. A TLS-inspection CA also mints any other name, `.invalid` ones included.
 * Returns the paths of the root's certificate and of the relay's certificate and key.
 */
async function foreignRoot(dir: string, ip: string, dns: string[] = []) {
  const rootKeys = await crypto.subtle.generateKey(EC_KEY, true, ["sign", "verify"]);
  const now = Date.now();
  const root = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: "01",
    name: "CN=foreign root",
    notBefore: new Date(now - DAY_MS),
    notAfter: new Date(now + DAY_MS),
    keys: rootKeys,
    signingAlgorithm: EC_SIGN,
    extensions: [new x509.BasicConstraintsExtension(true, undefined, true)],
  });
  const leafKeys = await crypto.subtle.generateKey(EC_KEY, true, ["sign", "verify"]);
  const leaf = await x509.X509CertificateGenerator.create({
    serialNumber: "02",
    subject: `CN=${ip}`,
    issuer: root.subject,
    notBefore: new Date(now - DAY_MS),
    notAfter: new Date(now + DAY_MS),
    publicKey: leafKeys.publicKey,
    signingKey: rootKeys.privateKey,
    signingAlgorithm: EC_SIGN,
    extensions: [
      new x509.BasicConstraintsExtension(false),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension([
        { type: "ip", value: ip },
        ...dns.map((value) => ({ type: "dns" as const, value })),
      ]),
    ],
  });
  const paths = {
    root: `${dir}/foreign-root.pem`,
    cert: `${dir}/relay.crt`,
    key: `${dir}/relay.key`,
  };
  await Deno.writeTextFile(paths.root, root.toString("pem"));
  await Deno.writeTextFile(paths.cert, leaf.toString("pem"));
  await Deno.writeTextFile(paths.key, await pem(leafKeys.privateKey));
  return paths;
}

/** The relay on the server's link address, port 1197, passing everything on to port 1194. */
async function startRelay(net: Topology, paths: { cert: string; key: string }) {
  const ip = net.serverIp(0);
  const relay = net.spawnCommand(net.server, [
    Deno.execPath(),
    "run",
    "--allow-all",
    RELAY,
    ip,
    "1197",
    paths.cert,
    paths.key,
    ip,
    "1194",
    `${net.dir}/ca.crt`,
  ]);
  await relay.waitForLog(/"listening"/);
  return relay;
}

/** `vpn connect` to the relay in client namespace 0, the Deno runtime started with `flags`. */
function connectToRelay(
  net: Topology,
  profile: string,
  flags: string[],
  wrap: string[] = [],
): VpnProcess {
  return net.spawnCommand(net.clients[0]!, [
    ...wrap,
    Deno.execPath(),
    "run",
    "--allow-all",
    "--unstable-net",
    ...flags,
    MAIN,
    "connect",
    `${net.serverIp(0)}:1197`,
    "--profile",
    profile,
    "--proto",
    "tcp",
  ]);
}

rootTest(
  "trust: a relay with a certificate for the dialled name from a root the runtime trusts is refused before AUTH",
  async () => {
    await using net = await Topology.create(1);
    const server = await net.startServer();
    const profile = await net.addClient("alice");
    const foreign = await foreignRoot(net.dir, net.serverIp(0));
    const relay = await startRelay(net, foreign);
    const identity = await serverIdentityName(await Deno.readTextFile(`${net.dir}/ca.crt`));

    // `--cert` puts the foreign root beside Deno's built-in public roots, where no variable shows
    // it: it stands for a public CA that certified the server's address for someone else.
    const victim = connectToRelay(net, profile, ["--cert", foreign.root]);
    assertEquals(await victim.exited(), 1, victim.log);
    assertMatch(victim.log, /not trusted by this profile/);
    // Refused for the name, not the root: the chain to the foreign root was accepted.
    assert(victim.log.includes(`certificate not valid for name "${identity}"`), victim.log);
    await relay.waitForLog(/"tls-failed"/);
    assert(!relay.log.includes('"auth"'), `the relay saw an AUTH:\n${relay.log}`);
    assert(!/alice connected/.test(server.log), server.log);

    // The same profile directly: the refusal was the relay's doing.
    net.connect(0, profile, ["--proto", "tcp"]);
    await net.waitForAddress(net.clients[0]!, "10.8.0.2");
    await server.waitForLog(/alice connected/);
  },
);

rootTest("trust: vpn connect refuses to run with DENO_CERT or a system CA store", async () => {
  await using net = await Topology.create(1);
  await net.startServer();
  const profile = await net.addClient("alice");
  // Only the client machine's own roots could certify the identity name: this one does.
  const identity = await serverIdentityName(await Deno.readTextFile(`${net.dir}/ca.crt`));
  const foreign = await foreignRoot(net.dir, net.serverIp(0), [identity]);
  const relay = await startRelay(net, foreign);
  for (
    const [variable, env] of [
      ["DENO_CERT", [`DENO_CERT=${foreign.root}`]],
      // rustls-native-certs reads SSL_CERT_FILE: the system store is then the foreign root.
      ["DENO_TLS_CA_STORE", ["DENO_TLS_CA_STORE=mozilla,system", `SSL_CERT_FILE=${foreign.root}`]],
    ] as const
  ) {
    const client = connectToRelay(net, profile, [], ["env", ...env]);
    assertEquals(await client.exited(), 2, client.log);
    assertMatch(
      client.log,
      new RegExp(
        `vpn: ${variable} is set: it makes TLS trust more roots than the profile's CA, which is ` +
          `all this client trusts; unset it \\(env -u ${variable} vpn connect \\.\\.\\.\\)`,
      ),
    );
  }
  assertEquals(relay.log.trim(), '{"event":"listening"}', "no client ever reached the relay");
});

/**
 * Replaces server.crt with one as `vpn init` made it before the identity name: the same key,
 * names and validity, without that name.
 */
async function legacyServerCert(dir: string): Promise<x509.X509Certificate> {
  const ca = new x509.X509Certificate(await Deno.readTextFile(`${dir}/ca.crt`));
  const caKey = await crypto.subtle.importKey(
    "pkcs8",
    x509.PemConverter.decodeFirst(await Deno.readTextFile(`${dir}/ca.key`)),
    EC_KEY,
    false,
    ["sign"],
  );
  const current = new x509.X509Certificate(await Deno.readTextFile(`${dir}/server.crt`));
  const names = current.getExtension(x509.SubjectAlternativeNameExtension)!.names.toJSON()
    .filter((name) => !name.value.endsWith(".vpn.invalid"));
  const legacy = await x509.X509CertificateGenerator.create({
    serialNumber: "4a",
    subject: current.subject,
    issuer: ca.subject,
    notBefore: current.notBefore,
    notAfter: current.notAfter,
    publicKey: current.publicKey,
    signingKey: caKey,
    signingAlgorithm: EC_SIGN,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension(names),
    ],
  });
  await Deno.writeTextFile(`${dir}/server.crt`, legacy.toString("pem") + "\n");
  return legacy;
}

rootTest(
  "trust: vpn serve adds the identity name to an older server.crt, once, and clients connect",
  async () => {
    await using net = await Topology.create(1);
    const legacy = await legacyServerCert(net.dir);
    const identity = await serverIdentityName(await Deno.readTextFile(`${net.dir}/ca.crt`));
    const server = await net.startServer();
    const line = new RegExp(`re-issued ${net.dir}/server\\.crt with the name clients verify added`);
    assertMatch(server.log, line);

    const upgraded = new x509.X509Certificate(await Deno.readTextFile(`${net.dir}/server.crt`));
    const legacyNames = legacy.getExtension(x509.SubjectAlternativeNameExtension)!.names.toJSON();
    assertEquals(upgraded.getExtension(x509.SubjectAlternativeNameExtension)!.names.toJSON(), [
      ...legacyNames,
      { type: "dns", value: identity },
    ]);
    assertEquals(
      new Uint8Array(upgraded.publicKey.rawData),
      new Uint8Array(legacy.publicKey.rawData),
      "the same key",
    );
    assertEquals([upgraded.notBefore, upgraded.notAfter], [legacy.notBefore, legacy.notAfter]);
    assertEquals(upgraded.subject, legacy.subject);

    const client = net.connect(0, await net.addClient("alice"));
    await net.waitForAddress(net.clients[0]!, "10.8.0.2");
    assert(await net.ping(net.clients[0]!, "10.8.0.1"), client.log);

    await client.stop();
    await server.stop();
    const again = await net.startServer();
    assert(!line.test(again.log), `re-issued again:\n${again.log}`);
  },
);

async function withPki(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "vpn-trust-test-" });
  try {
    await initPki(dir, { hosts: ["127.0.0.1", "vpn.example.org"] });
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("trust: the identity name is SHA-256 of the CA's DER under .vpn.invalid, in server.crt after the hosts", async () => {
  await withPki(async (dir) => {
    await withPki(async (other) => {
      const caPem = await Deno.readTextFile(`${dir}/ca.crt`);
      const identity = await serverIdentityName(caPem);
      const hash = await crypto.subtle.digest("SHA-256", x509.PemConverter.decodeFirst(caPem));
      assertEquals(identity, `${new Uint8Array(hash).subarray(0, 16).toHex()}.vpn.invalid`);
      assert(identity !== await serverIdentityName(await Deno.readTextFile(`${other}/ca.crt`)));
      const certPem = await Deno.readTextFile(`${dir}/server.crt`);
      const server = new x509.X509Certificate(certPem);
      assertEquals(server.getExtension(x509.SubjectAlternativeNameExtension)?.names.toJSON(), [
        { type: "ip", value: "127.0.0.1" },
        { type: "dns", value: "vpn.example.org" },
        { type: "dns", value: identity },
      ]);
      // What the server accepts as the name an AUTH is bound to.
      assert(certificateNames(certPem).includes(identity));
      assertEquals(await upgradeServerCertificate(dir), false, "nothing to upgrade");
    });
  });
});

Deno.test("trust: upgradeServerCertificate() adds the name to an older server.crt once, and needs ca.key for it", async () => {
  await withPki(async (dir) => {
    const legacy = await legacyServerCert(dir);
    assertEquals(await upgradeServerCertificate(dir), true);
    const upgraded = new x509.X509Certificate(await Deno.readTextFile(`${dir}/server.crt`));
    const ca = new x509.X509Certificate(await Deno.readTextFile(`${dir}/ca.crt`));
    assert(await upgraded.verify({ publicKey: ca, signatureOnly: true }), "signed by the CA");
    assertEquals(
      [...upgraded.getExtension(x509.ExtendedKeyUsageExtension)?.usages ?? []],
      [x509.ExtendedKeyUsage.serverAuth],
    );
    assertEquals(
      new Uint8Array(upgraded.publicKey.rawData),
      new Uint8Array(legacy.publicKey.rawData),
    );
    assertEquals(await upgradeServerCertificate(dir), false, "once");

    await legacyServerCert(dir);
    await Deno.remove(`${dir}/ca.key`);
    await assertRejects(
      () => upgradeServerCertificate(dir),
      PkiError,
      /server\.crt lacks the name [0-9a-f]{32}\.vpn\.invalid, which clients verify, and .*ca\.key is missing to add it: put ca\.key back into .* for one run of vpn serve/,
    );
  });
});

/**
 * A TLS server with `dir`'s server.crt that says HELLO and hands over the AUTH it gets; the
 * client under test is refused afterwards, so that its run() ends.
 */
async function captureAuth(dir: string) {
  const issued = await issueClient(dir, "alice");
  const listener = Deno.listenTls({
    hostname: "127.0.0.1",
    port: 0,
    cert: await Deno.readTextFile(`${dir}/server.crt`),
    key: await Deno.readTextFile(`${dir}/server.key`),
    alpnProtocols: [ALPN],
  });
  const nonce = crypto.getRandomValues(new Uint8Array(32));
  const auth = (async () => {
    const channel = new Channel(await listener.accept());
    try {
      channel.sendControl(
        FrameType.HELLO,
        encodeMessage({ version: PROTOCOL_VERSION, nonce: nonce.toBase64() }),
      );
      const frame = await channel.readFrame();
      const message = { reason: "revoked", message: "test over" };
      await channel.closeWith(FrameType.ERROR, encodeMessage(message));
      return frame?.type === FrameType.AUTH ? decodeAuth(frame.payload) : undefined;
    } finally {
      listener.close();
    }
  })();
  const client = new Client({
    profile: {
      remote: "127.0.0.1",
      ca: issued.caPem,
      cert: issued.certPem,
      key: issued.keyPem,
      proto: "tcp",
      dev: "vpn%d",
    },
    host: "127.0.0.1",
    port: listener.addr.port,
    tun: new MemoryTun({ name: "alice-tun" }),
  });
  const ended = within(client.run().then(() => undefined, (e) => e), 10_000, "run() ends");
  return { issued, nonce, auth, ended };
}

Deno.test("trust: the client's AUTH names and signs the identity name, not the address dialled", async () => {
  await withPki(async (dir) => {
    const { issued, nonce, auth, ended } = await captureAuth(dir);
    const got = await within(auth, 10_000, "the AUTH");
    assert(got !== undefined, "an AUTH");
    const identity = await serverIdentityName(issued.caPem);
    assertEquals(got.server_name, identity);
    const key = await new x509.X509Certificate(got.cert).publicKey.export(EC_KEY, ["verify"]);
    const challenge = authChallenge(nonce, Uint8Array.fromBase64(got.nonce), identity);
    const signature = Uint8Array.fromBase64(got.signature);
    assert(await crypto.subtle.verify(EC_SIGN, key, signature, challenge), "signed for it");
    assert(await ended instanceof ClientError);
  });
});

Deno.test("trust: a server.crt of the profile's CA without the identity name is refused, with the fix", async () => {
  await withPki(async (dir) => {
    await legacyServerCert(dir);
    const { auth, ended } = await captureAuth(dir);
    const error = await ended;
    assert(error instanceof ClientError, String(error));
    assertMatch(
      error.message,
      /not trusted by this profile \(.*certificate not valid for name "[0-9a-f]{32}\.vpn\.invalid".*\); check the profile's "ca" and the address dialled, and that the server runs this version's "vpn serve" \(it adds the name this client verifies\)/,
    );
    // The listener takes no second connection: the accept fails once it is closed.
    await within(auth, 10_000, "the server side ends").catch(() => undefined);
  });
});

Deno.test("trust: vpn connect refuses DENO_TLS_CA_STORE=system but not mozilla", async () => {
  const main = new URL("../main.ts", import.meta.url).pathname;
  const argv = denoScript(main, "connect", "127.0.0.1:1", "--profile", "/nonexistent/vpn.yaml");
  const refusal = /DENO_TLS_CA_STORE is set: it makes TLS trust more roots/;
  const system = await run(["env", "DENO_TLS_CA_STORE=system", ...argv], true);
  assertEquals(system.code, 2, system.stderr);
  assertMatch(system.stderr, refusal);
  const mozilla = await run(["env", "DENO_TLS_CA_STORE=mozilla", ...argv], true);
  assertEquals(mozilla.code, 2, mozilla.stderr);
  assert(!refusal.test(mozilla.stderr), mozilla.stderr);
  assertMatch(mozilla.stderr, /\/nonexistent\/vpn\.yaml does not exist/);
});
