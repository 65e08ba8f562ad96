/**
 * The PKI of the VPN: one CA made by the tool, a server certificate, client certificates, a
 * registry of issued clients, and the proof of key possession that authenticates a client.
 *
 * Layout of a PKI directory (created 0700; `vpn init` refuses an existing one that is not this
 * user's alone, `vpn serve` one that others may write or whose keys they may read):
 *
 *   ca.crt        CA certificate (ECDSA P-256, self-signed, 10 years)       0644
 *   ca.key        CA private key, PKCS#8 PEM; read only to issue clients    0600
 *   server.crt    server certificate (serverAuth; --host names, identity)   0644
 *   server.key    server private key, PKCS#8 PEM                            0600
 *   clients.json  registry: every issued client, its serial, expiry,        0600
 *                 revocation time and settings (`vpn client set`); the
 *                 server admits only serials listed there and not revoked
 *   clients.lock  held (flock) by every read-modify-write of clients.json  0600
 *   tls-crypt.key the OpenVPN tls-crypt key (static key file, OPENVPN.md   0600
 *                 section 2), inlined into every `.ovpn` profile; made by
 *                 `vpn init`, or by `vpn serve` for a PKI older than it
 *
 * Client authentication (why not mutual TLS): `Deno.listenTls` can neither request nor see a
 * client certificate. `node:tls` can, but measured at 130-454 MB/s against 168-1331 MB/s for
 * `Deno.listenTls` (loopback TLS echo on a 2-vCPU VM, Deno 2.9). So the server keeps the fast rustls listener, and the
 * client proves possession of its key inside the server-authenticated TLS session:
 *
 *   1. the client dials the server and verifies its certificate (rustls, `caCerts: [ca]`)
 *      against the CA's identity name (`serverIdentityName()`), not the name it dialled
 *   2. server sends serverNonce; client sends clientNonce, that identity name, its cert
 *   3. both compute `authChallenge(serverNonce, clientNonce, identityName)`
 *   4. client sends `signChallenge(clientKey, challenge)`
 *   5. server runs `verifyClient()`: CA signature, the signature over the challenge, then
 *      validity, client usage and revocation
 *
 * OpenVPN clients authenticate with mutual TLS instead (their protocol has no other way); their
 * TLS handshake proves possession of the key, and `verifyClientCertificate()` makes every other
 * check of `verifyClient()`, by the same code, since Deno's `node:tls` does not verify a client
 * certificate's chain itself (OPENVPN.md section 0).
 *
 * @module
 */

// reflect-metadata must be loaded before @peculiar/x509, which throws at load without it.
import "reflect-metadata";
import * as x509 from "@peculiar/x509";
import { cString, errno, ErrnoError, libc } from "../ffi/libc.ts";
import { formatIPv4, formatIPv6, parseCidr, parseIPv4, parseIPv6 } from "./core/ip.ts";
import {
  formatStaticKey,
  generateStaticKey,
  parseStaticKey,
  StaticKeyError,
} from "./openvpn/tls_crypt.ts";
import {
  EAGAIN,
  EINTR,
  LOCK_EX,
  LOCK_NB,
  O_CLOEXEC,
  O_CREAT,
  O_EXCL,
  O_NOFOLLOW,
  O_RDONLY,
  O_WRONLY,
} from "../ffi/constants.ts";

x509.cryptoProvider.set(crypto);

// --- files and lifetimes -----------------------------------------------------------------

const CA_CERT = "ca.crt";
const CA_KEY = "ca.key";
const SERVER_CERT = "server.crt";
const SERVER_KEY = "server.key";
/** The client registry in the PKI directory; revocations show up here. */
export const REGISTRY_FILE = "clients.json";
const REGISTRY_VERSION = 1;
const REGISTRY_LOCK = "clients.lock";
/** The OpenVPN tls-crypt key in the PKI directory, in OpenVPN's static key file format. */
export const TLS_CRYPT_FILE = "tls-crypt.key";
/** How long a registry update waits for another process's to finish (ms); one takes ms. */
const LOCK_WAIT_MS = 10_000;
const LOCK_POLL_MS = 10;

const PRIVATE_MODE = 0o600;
const PUBLIC_MODE = 0o644;
const DIR_MODE = 0o700;
/**
 * The registry: readable by the PKI directory's group, which a server started as root gives
 * to its `user:` (mod/system/privileges.ts); it holds names, serials and settings, no secret.
 */
export const REGISTRY_MODE = 0o640;
/** What the directory may grant its group: passage to the files it may read, by name. */
const GROUP_PASSAGE = 0o010;

const CA_DAYS = 3650;
/** 825 days: the longest lifetime browsers and easy-rsa accept for a leaf certificate. */
const LEAF_DAYS = 825;
/**
 * notBefore is set this far in the past so that a peer whose clock runs a little behind
 * does not reject a certificate made a moment ago as "not yet valid".
 */
const BACKDATE_MS = 60 * 60 * 1000;
const DAY_MS = 24 * 60 * 60 * 1000;

const EC_KEY: EcKeyGenParams = { name: "ECDSA", namedCurve: "P-256" };
const EC_SIGN: EcdsaParams = { name: "ECDSA", hash: "SHA-256" };

/** Client names: they end up in file names and a certificate CN, so keep them plain. */
const CLIENT_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** Hosts used by `vpn init` when no `--host` is given. */
export const DEFAULT_HOSTS: readonly string[] = ["localhost", "127.0.0.1"];

// --- errors ------------------------------------------------------------------------------

/** A PKI operation that cannot proceed; the message says what to do about it. */
export class PkiError extends Error {
  /** Error name, for logs. */
  override name = "PkiError";
}

/** Why `verifyClient()` refused a client. */
export type AuthFailure =
  | "unknown-ca"
  | "expired"
  | "not-yet-valid"
  | "not-client"
  | "revoked"
  | "bad-signature"
  | "bad-certificate";

/** A client failed authentication; `reason` is for logs and metrics, `message` for humans. */
export class AuthError extends Error {
  /** Error name, for logs. */
  override name = "AuthError";
  /** Which check failed. */
  readonly reason: AuthFailure;

  /** Makes an error for the failed check `reason`, with a message for humans. */
  constructor(reason: AuthFailure, message: string) {
    super(message);
    this.reason = reason;
  }
}

// --- small helpers -----------------------------------------------------------------------

function join(dir: string, file: string): string {
  return dir.endsWith("/") ? dir + file : `${dir}/${file}`;
}

function randomHex(bytes: number): string {
  const buf = crypto.getRandomValues(new Uint8Array(bytes));
  return Array.from(buf, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * 16 random bytes with the top bit clear (a positive DER INTEGER without padding) and the
 * next bit set (so the encoding is always 16 bytes): 126 random bits, as CAs are asked to use.
 */
function randomSerial(): string {
  const buf = crypto.getRandomValues(new Uint8Array(16));
  buf[0] = ((buf[0] ?? 0) & 0x3f) | 0x40;
  return Array.from(buf, (b) => b.toString(16).padStart(2, "0")).join("");
}

function checkDays(days: number): number {
  if (!Number.isInteger(days) || days < 1) {
    throw new RangeError(`Cannot issue a certificate for ${days} days: must be an integer >= 1`);
  }
  return days;
}

function fileExists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

function missingFile(dir: string, file: string): PkiError {
  return new PkiError(`${join(dir, file)} is missing; run \`vpn init --dir ${dir}\` first`);
}

async function readPkiFile(dir: string, file: string): Promise<string> {
  try {
    return await Deno.readTextFile(join(dir, file));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw missingFile(dir, file);
    throw e;
  }
}

/** A file mode as `ls -l` and chmod write it in octal: `0600`. */
export function octal(mode: number): string {
  return (mode & 0o7777).toString(8).padStart(4, "0");
}

/** `path` without its last component. */
function parentOf(path: string): string {
  const cut = path.lastIndexOf("/");
  return cut < 0 ? "." : cut === 0 ? "/" : path.slice(0, cut);
}

/**
 * `result` of a libc call on `path`, or its failure; EACCES and EPERM worded as Deno words
 * them, so that the CLI names the file's owner and mode (mod/commands.ts). Deno's file API
 * has neither fchmod nor O_NOFOLLOW, hence libc for the writes that need them.
 */
function fileCall(call: string, path: string, result: number): number {
  if (result >= 0) return result;
  const error = new ErrnoError(`${call} ${path}`, errno());
  if (error.code === "EACCES" || error.code === "EPERM") {
    throw new Deno.errors.PermissionDenied(
      `Permission denied (os error ${error.errno}): ${call} '${path}'`,
    );
  }
  throw error;
}

function openFd(path: string, flags: number, mode = 0): number {
  return fileCall("open", path, libc().open_mode(cString(path), flags | O_CLOEXEC, mode));
}

/** Makes the renames in `dir` durable: without it a crash may bring the old file back. */
function syncDirectory(dir: string): void {
  const fd = openFd(dir, O_RDONLY);
  try {
    fileCall("fsync", dir, libc().fsync(fd));
  } finally {
    libc().close(fd);
  }
}

/**
 * Writes a file so that readers see either the old or the new content, never a half-written
 * one, never through a symlink, and never a moment where a key is readable by others: the
 * temporary file is created with O_EXCL (which refuses any existing name, a symlink too) and
 * `mode`, chmod-ed through its descriptor (the umask may have removed bits), synced, renamed
 * over the target (replacing a symlink there, not its target), and the directory synced. The
 * rename replaces the inode, so an existing file's looser mode does not survive. `group`, when
 * given, becomes the file's group before it has any content.
 */
export async function writeFileAtomic(
  path: string,
  text: string,
  mode: number,
  group?: number,
): Promise<void> {
  const tmp = `${path}.tmp-${randomHex(6)}`;
  const c = libc();
  const fd = openFd(tmp, O_WRONLY | O_CREAT | O_EXCL, mode);
  try {
    try {
      if (group !== undefined) fileCall("fchown", tmp, c.fchown(fd, -1 >>> 0, group));
      fileCall("fchmod", tmp, c.fchmod(fd, mode));
      const data = new TextEncoder().encode(text);
      for (let off = 0; off < data.length;) {
        off += fileCall("write", tmp, c.write(fd, data.subarray(off), data.length - off));
      }
      fileCall("fsync", tmp, c.fsync(fd));
    } finally {
      c.close(fd);
    }
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
  syncDirectory(parentOf(path));
}

/**
 * Runs `fn` holding an exclusive flock(2) on DIR/clients.lock, which every read-modify-write
 * of the registry takes, in any process. The lock is polled (LOCK_NB): a blocking flock would
 * stop this thread's event loop. Closing the descriptor releases it, as does the process
 * ending, so a crashed command never leaves it held.
 */
async function holdingRegistryLock<T>(dir: string, fn: () => Promise<T>): Promise<T> {
  const path = join(dir, REGISTRY_LOCK);
  // O_NOFOLLOW: a symlink planted here must not make us create or lock a file elsewhere.
  // Read-only is enough for flock, and opens also when the umask took the write bit.
  const fd = openFd(path, O_RDONLY | O_CREAT | O_NOFOLLOW, PRIVATE_MODE);
  try {
    const deadline = Date.now() + LOCK_WAIT_MS;
    while (libc().flock(fd, LOCK_EX | LOCK_NB) < 0) {
      const code = errno();
      if (code !== EAGAIN && code !== EINTR) throw new ErrnoError(`flock ${path}`, code);
      if (Date.now() >= deadline) {
        throw new PkiError(
          `Cannot lock ${path}: another vpn command has held it for ${LOCK_WAIT_MS / 1000} s; ` +
            `let it finish (fuser -v ${path} shows it) and try again`,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, LOCK_POLL_MS));
    }
    return await fn();
  } finally {
    libc().close(fd);
  }
}

// --- keys and certificates ---------------------------------------------------------------

async function generateKeyPair(): Promise<CryptoKeyPair> {
  return await crypto.subtle.generateKey(EC_KEY, true, ["sign", "verify"]);
}

async function privateKeyPem(key: CryptoKey): Promise<string> {
  const pkcs8 = await crypto.subtle.exportKey("pkcs8", key);
  return x509.PemConverter.encode(pkcs8, "PRIVATE KEY") + "\n";
}

function certPem(cert: x509.X509Certificate): string {
  return cert.toString("pem") + "\n";
}

async function importPrivateKey(pem: string, what: string): Promise<CryptoKey> {
  let der: ArrayBuffer;
  try {
    der = x509.PemConverter.decodeFirst(pem);
  } catch {
    throw new PkiError(`Cannot parse ${what}: not a PEM private key`);
  }
  try {
    // Not extractable: once imported, the key can sign but cannot leave WebCrypto.
    return await crypto.subtle.importKey("pkcs8", der, EC_KEY, false, ["sign"]);
  } catch {
    throw new PkiError(`Cannot parse ${what}: not a PKCS#8 ECDSA P-256 private key`);
  }
}

function parseCert(pem: string, what: string): x509.X509Certificate {
  try {
    return new x509.X509Certificate(pem);
  } catch {
    throw new PkiError(`Cannot parse ${what}: not a PEM X.509 certificate`);
  }
}

/** The CA as needed to sign: its certificate and its private key. */
interface SigningCa {
  cert: x509.X509Certificate;
  key: CryptoKey;
}

/**
 * Reads the CA key from disk for one signing operation; it is not cached, so the key is in
 * memory only while a client certificate is being issued.
 */
async function loadSigningCa(dir: string): Promise<SigningCa> {
  const cert = parseCert(await readPkiFile(dir, CA_CERT), join(dir, CA_CERT));
  const key = await importPrivateKey(await readPkiFile(dir, CA_KEY), join(dir, CA_KEY));
  return { cert, key };
}

async function createCa(keys: CryptoKeyPair, days: number): Promise<x509.X509Certificate> {
  const now = Date.now();
  return await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    // A random id in the CN tells two PKIs apart in `openssl x509 -text` and error messages.
    name: [{ CN: [`vpn CA ${randomHex(4)}`] }],
    notBefore: new Date(now - BACKDATE_MS),
    notAfter: new Date(now + days * DAY_MS),
    keys,
    signingAlgorithm: EC_SIGN,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(
        x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign,
        true,
      ),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
}

/** What distinguishes a server from a client certificate. */
interface LeafProfile {
  cn: string;
  usage: x509.ExtendedKeyUsage;
  sans?: x509.JsonGeneralName[];
  notBefore: Date;
  notAfter: Date;
}

async function createLeaf(
  ca: SigningCa,
  publicKey: CryptoKey,
  profile: LeafProfile,
): Promise<x509.X509Certificate> {
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(false, undefined, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
    new x509.ExtendedKeyUsageExtension([profile.usage], false),
    await x509.SubjectKeyIdentifierExtension.create(publicKey),
    await x509.AuthorityKeyIdentifierExtension.create(ca.cert.publicKey),
  ];
  if (profile.sans) extensions.push(new x509.SubjectAlternativeNameExtension(profile.sans));
  return await x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: [{ CN: [profile.cn] }],
    issuer: ca.cert.subjectName,
    notBefore: profile.notBefore,
    notAfter: profile.notAfter,
    publicKey,
    signingKey: ca.key,
    signingAlgorithm: EC_SIGN,
    extensions,
  });
}

// --- hosts -------------------------------------------------------------------------------

const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
const DNS_LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

function isIpv6(host: string): boolean {
  if (!/^[0-9a-f:]+$/i.test(host) || !host.includes(":")) return false;
  const halves = host.split("::");
  if (halves.length > 2) return false;
  const groups = halves.flatMap((h) => (h === "" ? [] : h.split(":")));
  if (groups.some((g) => g.length < 1 || g.length > 4)) return false;
  return halves.length === 2 ? groups.length < 8 : groups.length === 8;
}

function isDnsName(host: string): boolean {
  const labels = host.split(".");
  // An all-digit last label is a mistyped IPv4 address ("300.1.1.1", "10.0.1"), not a name.
  if (/^\d+$/.test(labels.at(-1) ?? "")) return false;
  return host.length <= 253 && labels.every((label) => DNS_LABEL.test(label));
}

/**
 * Turns a `--host` value into a SAN. IP addresses become iPAddress entries: rustls matches an
 * IP the client dials only against those, never against a dNSName that spells the address.
 */
function hostToSan(host: string): x509.JsonGeneralName {
  const h = host.replace(/^\[(.*)\]$/, "$1");
  if (IPV4.test(h) || isIpv6(h)) return { type: "ip", value: h };
  // DNS names compare case-insensitively; a trailing dot means the same name.
  const name = h.toLowerCase().replace(/\.$/, "");
  if (isDnsName(name)) return { type: "dns", value: name };
  throw new PkiError(
    `Cannot use host "${host}": not an IPv4/IPv6 address or a DNS name (letters, digits, ` +
      `hyphens and dots; no wildcards)`,
  );
}

// --- init --------------------------------------------------------------------------------

/** Options of `initPki()`. */
export interface InitOptions {
  /** Names and addresses clients dial; the first one is the server certificate's CN. */
  hosts: string[];
  /** Replace an existing PKI; every client profile issued from it stops working. */
  force?: boolean;
  /** Lifetime of the server certificate in days (default 825). The CA lives 10 years. */
  days?: number;
}

/**
 * Creates a CA, a server certificate for `hosts`, a tls-crypt key and an empty client registry
 * in `dir`.
 *
 * @throws {PkiError} if a PKI already exists in `dir` and `force` is not set, or a host is
 *   neither an IP address nor a DNS name.
 * @example
 * ```ts
 * import { DEFAULT_HOSTS, initPki } from "./pki.ts";
 * await initPki("/etc/vpn", { hosts: [...DEFAULT_HOSTS] });
 * ```
 */
export async function initPki(dir: string, options: InitOptions): Promise<void> {
  const sans = options.hosts.map(hostToSan);
  const first = sans[0];
  if (!first) throw new PkiError("Cannot create a PKI without a host: pass at least one --host");
  const days = checkDays(options.days ?? LEAF_DAYS);
  if (!options.force) refuseExistingPki(dir);

  await preparePkiDir(dir);
  const caKeys = await generateKeyPair();
  const caCert = await createCa(caKeys, CA_DAYS);
  const serverKeys = await generateKeyPair();
  const now = Date.now();
  const serverCert = await createLeaf(
    { cert: caCert, key: caKeys.privateKey },
    serverKeys.publicKey,
    {
      cn: first.value,
      usage: x509.ExtendedKeyUsage.serverAuth,
      sans: [...sans, { type: "dns", value: await identityName(caCert) }],
      notBefore: new Date(now - BACKDATE_MS),
      notAfter: new Date(now + days * DAY_MS),
    },
  );

  const caKeyPem = await privateKeyPem(caKeys.privateKey);
  const serverKeyPem = await privateKeyPem(serverKeys.privateKey);
  // Under the registry lock, so that a `client add` running meanwhile signs with the old CA
  // and lands in the old registry, which goes, or waits for the new ones.
  await holdingRegistryLock(dir, async () => {
    // Keys first and ca.crt last: hasPki() looks at ca.crt, so it turns true only once the
    // rest is in place.
    await writeFileAtomic(join(dir, CA_KEY), caKeyPem, PRIVATE_MODE);
    await writeFileAtomic(join(dir, SERVER_KEY), serverKeyPem, PRIVATE_MODE);
    await writeFileAtomic(join(dir, SERVER_CERT), certPem(serverCert), PUBLIC_MODE);
    await writeTlsCryptKey(dir);
    // A new CA invalidates every client of the old one, so their registry goes too.
    await writeRegistry(dir, []);
    await writeFileAtomic(join(dir, CA_CERT), certPem(caCert), PUBLIC_MODE);
  });
}

/**
 * Makes `dir` (0700) if it is missing; an existing one must be this user's and closed to group
 * and others, since the private keys go there and whoever may write it may replace them. Its
 * group may pass (0710): a server that ran as `user:` gave it that, to read the registry.
 */
async function preparePkiDir(dir: string): Promise<void> {
  const created = !fileExists(dir);
  await Deno.mkdir(dir, { recursive: true, mode: DIR_MODE });
  if (created) {
    // The umask may have taken bits from DIR_MODE, and a mode set by path could follow a
    // symlink swapped in: set it on the descriptor.
    const fd = openFd(dir, O_RDONLY);
    try {
      fileCall("fchmod", dir, libc().fchmod(fd, DIR_MODE));
    } finally {
      libc().close(fd);
    }
    return;
  }
  const info = await Deno.stat(dir);
  const uid = Deno.uid();
  if (info.uid !== uid) {
    throw new PkiError(
      `${dir} belongs to uid ${info.uid}, not to this user (uid ${uid}), who would keep the ` +
        `PKI's private keys there; run: chown ${uid} ${dir} (or pass another --dir)`,
    );
  }
  const mode = info.mode ?? 0;
  if (mode & 0o077 & ~GROUP_PASSAGE) {
    throw new PkiError(
      `${dir} is mode ${octal(mode)}: group or others could read or replace the PKI's ` +
        `private keys there; run: chmod 700 ${dir}`,
    );
  }
}

/**
 * Refuses a PKI that others could change (a directory group or others may write) or whose
 * private keys they may read: either lets them act as this server or its CA.
 */
export async function refuseUnsafePki(dir: string): Promise<void> {
  const mode = (await Deno.stat(dir)).mode ?? 0;
  if (mode & 0o022) {
    throw new PkiError(
      `${dir} is mode ${octal(mode)}: group or others could replace the CA and the keys ` +
        `there; run: chmod 700 ${dir}`,
    );
  }
  for (const file of [CA_KEY, SERVER_KEY, TLS_CRYPT_FILE]) {
    const path = join(dir, file);
    let keyMode: number;
    try {
      keyMode = (await Deno.stat(path)).mode ?? 0;
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) continue; // ca.key may live offline
      throw e;
    }
    if (keyMode & 0o077) {
      throw new PkiError(
        `${path} is mode ${octal(keyMode)}: group or others may read this private key; ` +
          `run: chmod 600 ${path}`,
      );
    }
  }
}

function refuseExistingPki(dir: string): void {
  const [present] = pkiFilesIn(dir);
  if (present !== undefined) {
    throw new PkiError(
      `${present} exists; pass --force to replace the PKI (every issued client profile stops working)`,
    );
  }
}

/** The paths of the PKI's files that exist in `dir`: none before `initPki()`, six after. */
export function pkiFilesIn(dir: string): string[] {
  return [CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY, TLS_CRYPT_FILE, REGISTRY_FILE]
    .map((file) => join(dir, file)).filter(fileExists);
}

/** Whether `dir` holds a PKI made by `initPki()` (its CA certificate exists). */
export function hasPki(dir: string): boolean {
  return fileExists(join(dir, CA_CERT));
}

/** What the server needs to listen: PEM strings for `Deno.listenTls` and `verifyClient()`. */
export interface ServerIdentity {
  /** CA certificate: verifies client certificates. */
  caPem: string;
  /** Server certificate, for `Deno.listenTls({ cert })`. */
  certPem: string;
  /** Server private key (PKCS#8), for `Deno.listenTls({ key })`. */
  keyPem: string;
}

/**
 * Reads the server's certificate, key and the CA certificate from `dir`.
 *
 * @throws {PkiError} if a file is missing, group or others may write `dir`, or read a
 *   private key in it.
 */
export async function loadServerIdentity(dir: string): Promise<ServerIdentity> {
  const identity = {
    caPem: await readPkiFile(dir, CA_CERT),
    certPem: await readPkiFile(dir, SERVER_CERT),
    keyPem: await readPkiFile(dir, SERVER_KEY),
  };
  // After the reads, so that a file this user may not read is reported as such first.
  await refuseUnsafePki(dir);
  return identity;
}

/**
 * The names and IP addresses in a certificate's subjectAltName, lower case: the names a client
 * may have dialled to reach this server.
 */
export function certificateNames(certPem: string): string[] {
  const cert = parseCert(certPem, "server certificate");
  const san = cert.getExtension(x509.SubjectAlternativeNameExtension);
  return (san?.names.toJSON() ?? []).map((name) => name.value.toLowerCase());
}

/**
 * The name clients verify the server certificate against instead of the name they dialled:
 * `<first 16 bytes of SHA-256 of the CA certificate's DER, hex>.vpn.invalid`. Deno's TLS trusts
 * its built-in public roots besides the profile's CA, and any of those may certify a dialled
 * name. `.invalid` is reserved (RFC 6761) and the CA/Browser Forum Baseline Requirements forbid
 * public CAs to certify it, so only this VPN's CA puts this name into a certificate.
 *
 * @throws {PkiError} if `caPem` is not a PEM certificate.
 */
export function serverIdentityName(caPem: string): Promise<string> {
  return identityName(parseCert(caPem, "the CA certificate"));
}

async function identityName(ca: x509.X509Certificate): Promise<string> {
  const hash = new Uint8Array(await crypto.subtle.digest("SHA-256", ca.rawData));
  return `${hash.subarray(0, 16).toHex()}.vpn.invalid`;
}

/**
 * Re-issues a server.crt that lacks what clients check: the identity name
 * (`serverIdentityName()`), which our clients verify, or the key usage digitalSignature and the
 * extended key usage serverAuth, which an OpenVPN client's `remote-cert-tls server` demands
 * (OPENVPN.md section 4). The new one has the same key, names and validity, signed again by
 * the CA in `dir`.
 *
 * @returns true if server.crt was re-issued, false if it had all of them already.
 * @throws {PkiError} if it lacks any and ca.key, needed to add them, is missing.
 */
export async function upgradeServerCertificate(dir: string): Promise<boolean> {
  const path = join(dir, SERVER_CERT);
  const old = parseCert(await readPkiFile(dir, SERVER_CERT), path);
  const caPem = await readPkiFile(dir, CA_CERT);
  const identity = await serverIdentityName(caPem);
  const sans = old.getExtension(x509.SubjectAlternativeNameExtension)?.names.toJSON() ?? [];
  // The identity goes last, as initPki() puts it.
  const others = sans.filter((san) => san.value.toLowerCase() !== identity);
  const lacks = [
    ...(others.length === sans.length ? [`the name ${identity}, which clients verify`] : []),
    ...missingServerUsage(old),
  ];
  if (lacks.length === 0) return false;
  if (!fileExists(join(dir, CA_KEY))) {
    throw new PkiError(
      `${path} lacks ${lacks.join(" and ")}, and ${join(dir, CA_KEY)} is missing to add ` +
        `${lacks.length === 1 ? "it" : "them"}: put ca.key back into ${dir} for one run of ` +
        `vpn serve`,
    );
  }
  const ca = await loadSigningCa(dir);
  const cert = await createLeaf(ca, await old.publicKey.export(EC_KEY, ["verify"]), {
    cn: old.subjectName.getField("CN")[0] ?? identity,
    usage: x509.ExtendedKeyUsage.serverAuth,
    sans: [...others, { type: "dns", value: identity }],
    notBefore: old.notBefore,
    notAfter: old.notAfter,
  });
  await writeFileAtomic(path, certPem(cert), PUBLIC_MODE);
  return true;
}

/**
 * What `remote-cert-tls server` finds missing in `cert`: OpenVPN requires a key usage
 * extension (OpenSSL then wants digitalSignature in it for an ECDSA handshake) and an extended
 * key usage with serverAuth.
 */
function missingServerUsage(cert: x509.X509Certificate): string[] {
  const missing: string[] = [];
  const ku = cert.getExtension(x509.KeyUsagesExtension);
  if (!ku || !(ku.usages & x509.KeyUsageFlags.digitalSignature)) {
    missing.push("the key usage digitalSignature, which OpenVPN clients check");
  }
  const eku = cert.getExtension(x509.ExtendedKeyUsageExtension);
  if (!eku?.usages.includes(x509.ExtendedKeyUsage.serverAuth)) {
    missing.push("the extended key usage serverAuth, which OpenVPN clients check");
  }
  return missing;
}

// --- tls-crypt key -----------------------------------------------------------------------

/** Writes a new tls-crypt key to DIR/tls-crypt.key, replacing any; callers hold the lock. */
async function writeTlsCryptKey(dir: string): Promise<void> {
  await writeFileAtomic(
    join(dir, TLS_CRYPT_FILE),
    formatStaticKey(generateStaticKey()),
    PRIVATE_MODE,
  );
}

/**
 * Creates DIR/tls-crypt.key (0600) unless it exists: PKIs made before OpenVPN support have
 * none. Run under the registry lock, so that two commands racing here (`vpn serve` and
 * `vpn client add --format ovpn`) cannot each keep a different key.
 *
 * @returns true if it had to create one.
 * @throws {PkiError} if `dir` holds no PKI.
 */
export async function ensureTlsCryptKey(dir: string): Promise<boolean> {
  return await withRegistry(dir, async () => {
    if (fileExists(join(dir, TLS_CRYPT_FILE))) return false;
    await writeTlsCryptKey(dir);
    return true;
  });
}

/**
 * Reads the 256-byte tls-crypt key from DIR/tls-crypt.key.
 *
 * @throws {PkiError} if the file is missing or not an OpenVPN static key, saying what to do.
 */
export async function loadTlsCryptKey(dir: string): Promise<Uint8Array> {
  const path = join(dir, TLS_CRYPT_FILE);
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
    throw new PkiError(`${path} is missing; "vpn serve --dir ${dir}" creates one at start`);
  }
  try {
    return parseStaticKey(text);
  } catch (e) {
    if (!(e instanceof StaticKeyError)) throw e;
    throw new PkiError(
      `Cannot use ${path}: ${e.message}; restore it from a backup, or remove it and run ` +
        `"vpn serve --dir ${dir}" for a new one (every .ovpn profile must then be issued again)`,
    );
  }
}

// --- client registry ---------------------------------------------------------------------

/** The kind of profile a client was issued: ours (`NAME.yaml`) or OpenVPN's (`NAME.ovpn`). */
export type ClientFormat = "vpn" | "ovpn";

/** Every {@linkcode ClientFormat}. */
export const CLIENT_FORMATS: readonly ClientFormat[] = ["vpn", "ovpn"];

/** One issued client certificate, as recorded in `clients.json`. */
export interface ClientEntry {
  /** Client name, the certificate's CN. */
  name: string;
  /** Certificate serial number, lowercase hex as `X509Certificate.serialNumber` gives it. */
  serial: string;
  /** End of the certificate's validity, ISO 8601. */
  notAfter: string;
  /** When the certificate was revoked, ISO 8601; absent while it is not. */
  revokedAt?: string;
  /** The profile it went into; absent in entries made before OpenVPN support: "vpn". */
  format?: ClientFormat;
  /** Fixed IPv4 address inside the server's `subnet` (`vpn client set --address`). */
  address?: string;
  /** Fixed IPv6 address inside the server's `subnet6` (`vpn client set --address6`). */
  address6?: string;
  /** Networks behind this client, canonical CIDR, IPv4 or IPv6 (`--route`); absent: none. */
  routes?: string[];
  /** Full tunnel for this client; absent: the server's `push.redirect_gateway`. */
  redirect_gateway?: boolean;
}

/**
 * A client's own settings, as `vpn client set` records them: what the server gives this client
 * instead of, or on top of, what `server.yaml` gives every client.
 */
export interface ClientSettings {
  /** Fixed IPv4 address; absent: one from the pool. */
  address?: string;
  /** Fixed IPv6 address; absent: the one that follows the IPv4 address. */
  address6?: string;
  /** Networks behind the client (canonical CIDR, IPv4 or IPv6), routed to its session. */
  routes: string[];
  /** Full tunnel or not; absent: the server's `push.redirect_gateway`. */
  redirectGateway?: boolean;
}

/** Networks one client may have behind it (`vpn client set --route`). */
export const MAX_CLIENT_ROUTES = 64;

/** State of a client certificate: revocation wins over expiry. */
export type ClientStatus = "valid" | "revoked" | "expired";

/** A registry entry with its status, as `listClients()` returns it. */
export interface ClientListing extends ClientEntry {
  /** Derived from `revokedAt` and `notAfter` at listing time. */
  status: ClientStatus;
  /** The profile format, "vpn" where the entry has none. */
  format: ClientFormat;
}

interface RegistryFile {
  version: number;
  clients: ClientEntry[];
}

/** Status of a registry entry at `now`. */
export function clientStatus(entry: ClientEntry, now: Date = new Date()): ClientStatus {
  if (entry.revokedAt !== undefined) return "revoked";
  return Date.parse(entry.notAfter) < now.getTime() ? "expired" : "valid";
}

/** Why `v` is not a registry entry, or undefined when it is one. */
function entryProblem(v: unknown): string | undefined {
  if (typeof v !== "object" || v === null) return "not an object";
  const e = v as Record<string, unknown>;
  if (
    typeof e.name !== "string" || typeof e.serial !== "string" ||
    typeof e.notAfter !== "string" ||
    (e.revokedAt !== undefined && typeof e.revokedAt !== "string") ||
    (e.format !== undefined && !CLIENT_FORMATS.includes(e.format as ClientFormat))
  ) {
    return "name, serial, notAfter, revokedAt or format is missing or of the wrong type";
  }
  // Settings are checked here for form only; against server.yaml by `vpn client set`.
  if (e.address !== undefined && !isCanonical(e.address, parseIPv4, formatIPv4)) {
    return `address ${JSON.stringify(e.address)} is not an IPv4 address`;
  }
  if (e.address6 !== undefined && !isCanonical(e.address6, parseIPv6, formatIPv6)) {
    return `address6 ${JSON.stringify(e.address6)} is not an IPv6 address in canonical form`;
  }
  if (e.routes !== undefined) {
    if (!Array.isArray(e.routes) || e.routes.length > MAX_CLIENT_ROUTES) {
      return `routes must be a list of at most ${MAX_CLIENT_ROUTES} CIDR blocks`;
    }
    const bad = e.routes.find((r) => !isCanonicalCidr(r));
    if (bad !== undefined) return `route ${JSON.stringify(bad)} is not a network in CIDR form`;
  }
  if (e.redirect_gateway !== undefined && typeof e.redirect_gateway !== "boolean") {
    return "redirect_gateway must be true or false";
  }
  return undefined;
}

/** Whether `text` is an address as `format(parse(text))` writes it. */
function isCanonical<T>(
  text: unknown,
  parse: (text: string) => T,
  format: (address: T) => string,
): boolean {
  try {
    return typeof text === "string" && format(parse(text)) === text;
  } catch {
    return false;
  }
}

/** Whether `text` is a network in canonical CIDR form (`192.168.60.0/24`, `fd00:60::/64`). */
function isCanonicalCidr(text: unknown): boolean {
  try {
    if (typeof text !== "string") return false;
    const cidr = parseCidr(text);
    return `${cidr.network}/${cidr.prefix}` === text;
  } catch {
    return false;
  }
}

async function readRegistry(dir: string): Promise<ClientEntry[]> {
  const path = join(dir, REGISTRY_FILE);
  const text = await readPkiFile(dir, REGISTRY_FILE);
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (e) {
    throw new PkiError(`Cannot parse ${path}: ${(e as Error).message}`);
  }
  const file = data as Partial<RegistryFile> | null;
  if (file?.version !== REGISTRY_VERSION || !Array.isArray(file.clients)) {
    throw new PkiError(`Cannot read ${path}: not a version ${REGISTRY_VERSION} client registry`);
  }
  for (const [i, entry] of file.clients.entries()) {
    const problem = entryProblem(entry);
    if (problem !== undefined) {
      throw new PkiError(`Cannot read ${path}: entry ${i} is malformed: ${problem}`);
    }
  }
  return file.clients as ClientEntry[];
}

/** Writes the registry, with the directory's group (the server's, once it ran as `user:`). */
async function writeRegistry(dir: string, clients: ClientEntry[]): Promise<void> {
  const file: RegistryFile = { version: REGISTRY_VERSION, clients };
  const { gid } = await Deno.stat(dir);
  await writeFileAtomic(
    join(dir, REGISTRY_FILE),
    JSON.stringify(file, null, 2) + "\n",
    REGISTRY_MODE,
    gid !== null && gid !== Deno.gid() ? gid : undefined,
  );
}

/**
 * Checks that `keyPem` is the private key of `certPem` (a profile's `key` and `cert`), by a
 * signature over a throwaway message: a profile that fails this would fail every AUTH.
 *
 * @throws {PkiError} naming `source` and what is wrong.
 */
export async function checkKeyPair(certPem: string, keyPem: string, source: string): Promise<void> {
  const key = await importPrivateKey(keyPem, `${source}: key`);
  const cert = parseCert(certPem, `${source}: cert`);
  const probe = crypto.getRandomValues(new Uint8Array(32));
  const signature = new Uint8Array(await crypto.subtle.sign(EC_SIGN, key, probe));
  try {
    // The check the server makes of an AUTH, made here before any connection.
    await checkProof(cert, probe, signature);
  } catch (error) {
    if (!(error instanceof AuthError)) throw error;
    throw new PkiError(
      error.reason === "bad-certificate"
        ? `Cannot use ${source}: cert: its key is not ECDSA P-256`
        : `Cannot use ${source}: its key is not the private key of its cert; use the profile ` +
          `as "vpn client add" wrote it`,
    );
  }
}

/** A certificate's CN (a client certificate's CN is the client's name); undefined if none. */
export function certificateCommonName(certPem: string): string | undefined {
  try {
    return parseCert(certPem, "certificate").subjectName.getField("CN")[0];
  } catch {
    return undefined;
  }
}

/**
 * Registry updates are read-modify-write; each runs holding DIR/clients.lock, so that two
 * concurrent updates, in any processes, cannot lose an entry or a revocation. Within one
 * process they are also chained per directory, so that they queue instead of polling the lock.
 */
const registryQueues = new Map<string, Promise<unknown>>();

function withRegistry<T>(dir: string, update: () => Promise<T>): Promise<T> {
  const locked = () => {
    // Checked first: the lock file would otherwise be created in a directory without a PKI.
    if (!fileExists(join(dir, REGISTRY_FILE))) throw missingFile(dir, REGISTRY_FILE);
    return holdingRegistryLock(dir, update);
  };
  const prev = registryQueues.get(dir) ?? Promise.resolve();
  const next = prev.then(locked, locked);
  const settled = next.catch(() => {});
  registryQueues.set(dir, settled);
  settled.then(() => {
    if (registryQueues.get(dir) === settled) registryQueues.delete(dir);
  });
  return next;
}

function checkClientName(name: string): void {
  if (!CLIENT_NAME.test(name)) {
    throw new PkiError(
      `Cannot use client name "${name}": use 1-64 letters, digits, ".", "_" or "-", ` +
        `starting with a letter or digit`,
    );
  }
}

/** Options of `issueClient()`. */
export interface IssueOptions {
  /** Lifetime in days (default 825), cut to the CA's own expiry. */
  days?: number;
  /** Explicit start of validity; for tests of not-yet-valid certificates. */
  notBefore?: Date;
  /** Explicit end of validity, taken as is; for tests of expired certificates. */
  notAfter?: Date;
  /** The profile the certificate goes into, recorded in the registry (default "vpn"). */
  format?: ClientFormat;
  /**
   * The client's private key (PKCS#8 PEM, ECDSA P-256, e.g. from `generateClientKey()`) to
   * certify instead of a new one. A load test issues thousands of certificates for one key:
   * the server verifies each certificate and each proof of possession all the same.
   */
  keyPem?: string;
}

/** A newly issued client identity: everything a client profile needs. */
export interface IssuedClient {
  /** Client certificate, PEM. */
  certPem: string;
  /** Client private key, PKCS#8 PEM. Not stored on the server: hand it over, then drop it. */
  keyPem: string;
  /** CA certificate, PEM: the client verifies the server with it. */
  caPem: string;
  /** Serial number, lowercase hex. */
  serial: string;
}

/**
 * Issues a client certificate signed by the CA in `dir` and records it in the registry.
 *
 * @throws {PkiError} if the name is invalid, a non-revoked client of that name exists, or
 *   `dir` holds no PKI.
 * @example
 * ```ts
 * import { issueClient } from "./pki.ts";
 * const { certPem, keyPem, caPem } = await issueClient("/etc/vpn", "laptop");
 * ```
 */
export async function issueClient(
  dir: string,
  name: string,
  options: IssueOptions = {},
): Promise<IssuedClient> {
  checkClientName(name);
  const days = checkDays(options.days ?? LEAF_DAYS);
  return await withRegistry(dir, async () => {
    const clients = await readRegistry(dir);
    if (clients.some((c) => c.name === name && c.revokedAt === undefined)) {
      throw new PkiError(
        `Client "${name}" already exists; revoke it first (vpn client revoke ${name} --dir ${dir})`,
      );
    }
    const ca = await loadSigningCa(dir);
    const key = await clientKey(options.keyPem);
    const issued = await signClient(ca, name, key, options, days, clients);
    await writeRegistry(dir, clients);
    return issued;
  });
}

/**
 * Issues a client certificate for each of `names` as `issueClient()` does for one, under one
 * lock and with one registry write: issuing thousands one by one would rewrite the registry
 * each time. All or nothing: an invalid or taken name issues none. With `options.keyPem`,
 * every certificate is for that one key.
 *
 * @returns the issued clients, in the order of `names`.
 * @throws {PkiError} if a name is invalid or given twice, a non-revoked client of that name
 *   exists, or `dir` holds no PKI.
 * @example
 * ```ts
 * import { generateClientKey, issueClients } from "./pki.ts";
 * const keyPem = await generateClientKey();
 * const clients = await issueClients("/etc/vpn", ["load-a-0", "load-a-1"], { keyPem });
 * ```
 */
export async function issueClients(
  dir: string,
  names: readonly string[],
  options: IssueOptions = {},
): Promise<IssuedClient[]> {
  const wanted = new Set<string>();
  for (const name of names) {
    checkClientName(name);
    if (wanted.has(name)) throw new PkiError(`Cannot issue "${name}" twice in one batch`);
    wanted.add(name);
  }
  const days = checkDays(options.days ?? LEAF_DAYS);
  return await withRegistry(dir, async () => {
    const clients = await readRegistry(dir);
    const taken = clients.find((c) => c.revokedAt === undefined && wanted.has(c.name));
    if (taken !== undefined) {
      throw new PkiError(
        `Client "${taken.name}" already exists; revoke it first (vpn client revoke ` +
          `${taken.name} --dir ${dir}) or choose other names`,
      );
    }
    const ca = await loadSigningCa(dir);
    const shared = options.keyPem === undefined ? undefined : await clientKey(options.keyPem);
    const issued: IssuedClient[] = [];
    for (const name of names) {
      issued.push(
        await signClient(ca, name, shared ?? await clientKey(undefined), options, days, clients),
      );
    }
    await writeRegistry(dir, clients);
    return issued;
  });
}

/** A new client private key, PKCS#8 PEM, for {@linkcode IssueOptions.keyPem}. */
export async function generateClientKey(): Promise<string> {
  return await privateKeyPem((await generateKeyPair()).privateKey);
}

/** A client key to certify: its public half, and the private one as PEM for the profile. */
interface ClientKey {
  publicKey: CryptoKey;
  keyPem: string;
}

/** A new key pair, or the one of `keyPem` (its public half derived from the private key). */
async function clientKey(keyPem: string | undefined): Promise<ClientKey> {
  if (keyPem === undefined) {
    const keys = await generateKeyPair();
    return { publicKey: keys.publicKey, keyPem: await privateKeyPem(keys.privateKey) };
  }
  let der: ArrayBuffer;
  try {
    der = x509.PemConverter.decodeFirst(keyPem);
  } catch {
    throw new PkiError("Cannot certify the given client key: not a PEM private key");
  }
  let jwk: JsonWebKey;
  try {
    const key = await crypto.subtle.importKey("pkcs8", der, EC_KEY, true, ["sign"]);
    jwk = await crypto.subtle.exportKey("jwk", key);
  } catch {
    throw new PkiError("Cannot certify the given client key: not a PKCS#8 ECDSA P-256 key");
  }
  // The private key's JWK carries the public point (x, y) beside d: without d (and without
  // its "sign" usage) it is the public key.
  delete jwk.d;
  delete jwk.key_ops;
  const publicKey = await crypto.subtle.importKey("jwk", jwk, EC_KEY, true, ["verify"]);
  return { publicKey, keyPem };
}

/**
 * Signs the certificate of client `name` for `key` and appends its entry to `clients`; the
 * caller holds the registry lock and writes the registry.
 */
async function signClient(
  ca: SigningCa,
  name: string,
  key: ClientKey,
  options: IssueOptions,
  days: number,
  clients: ClientEntry[],
): Promise<IssuedClient> {
  const now = Date.now();
  const notAfter = options.notAfter ??
    new Date(Math.min(now + days * DAY_MS, ca.cert.notAfter.getTime()));
  const cert = await createLeaf(ca, key.publicKey, {
    cn: name,
    usage: x509.ExtendedKeyUsage.clientAuth,
    notBefore: options.notBefore ?? new Date(now - BACKDATE_MS),
    notAfter,
  });
  const serial = cert.serialNumber.toLowerCase();
  clients.push({
    name,
    serial,
    notAfter: cert.notAfter.toISOString(),
    format: options.format ?? "vpn",
  });
  return { certPem: certPem(cert), keyPem: key.keyPem, caPem: certPem(ca.cert), serial };
}

/**
 * The non-revoked entry called `name`, or a {@linkcode PkiError} saying what to run: `revoked`
 * says how a revoked one is named, `then` what comes after issuing it again.
 */
function liveEntry(
  clients: ClientEntry[],
  name: string,
  dir: string,
  revoked: string,
  then: string,
): ClientEntry {
  const entry = clients.find((c) => c.name === name && c.revokedAt === undefined);
  if (entry) return entry;
  const known = clients.some((c) => c.name === name);
  throw new PkiError(
    known
      ? `Client "${name}" ${revoked}; "vpn client add ${name} --dir ${dir}" issues a new ` +
        `profile under that name${then}`
      : `No client named "${name}" in ${dir}; "vpn client list --dir ${dir}" shows the names`,
  );
}

/**
 * Revokes the non-revoked client called `name`. Servers pick it up through
 * `readRegistrySerials()`.
 *
 * @returns the updated registry entry.
 * @throws {PkiError} if there is no such client or it is already revoked.
 */
export async function revokeClient(dir: string, name: string): Promise<ClientEntry> {
  return await withRegistry(dir, async () => {
    const clients = await readRegistry(dir);
    const entry = liveEntry(clients, name, dir, "is already revoked", "");
    return await markRevoked(dir, clients, entry);
  });
}

/**
 * Revokes the certificate with serial number `serial` (hex, any case, as `vpn client list`
 * shows it), whichever name it has.
 *
 * @returns the updated registry entry.
 * @throws {PkiError} if no certificate has that serial or it is already revoked.
 */
export async function revokeSerial(dir: string, serial: string): Promise<ClientEntry> {
  const wanted = serial.toLowerCase();
  return await withRegistry(dir, async () => {
    const clients = await readRegistry(dir);
    const entry = clients.find((c) => c.serial === wanted);
    if (!entry) {
      throw new PkiError(
        `No certificate with serial ${wanted} in ${dir} (a server admits only those listed ` +
          `there); "vpn client list --dir ${dir}" shows the serials`,
      );
    }
    if (entry.revokedAt !== undefined) {
      throw new PkiError(`Certificate ${wanted} ("${entry.name}") is already revoked`);
    }
    return await markRevoked(dir, clients, entry);
  });
}

/**
 * Revokes every certificate of `serials` (hex, any case) with one registry write: what
 * `revokeSerial()` does for one, for a load test's thousands. All or nothing for serials the
 * registry lacks; one already revoked is left as it is.
 *
 * @returns the entries this call revoked, in registry order.
 * @throws {PkiError} if a serial is not in the registry (nothing is revoked then).
 */
export async function revokeSerials(
  dir: string,
  serials: Iterable<string>,
): Promise<ClientEntry[]> {
  const wanted = new Set(Array.from(serials, (serial) => serial.toLowerCase()));
  return await withRegistry(dir, async () => {
    const clients = await readRegistry(dir);
    const known = new Set(clients.map((c) => c.serial));
    const missing = [...wanted].find((serial) => !known.has(serial));
    if (missing !== undefined) {
      throw new PkiError(
        `No certificate with serial ${missing} in ${dir}, so none was revoked; ` +
          `"vpn client list --dir ${dir}" shows the serials`,
      );
    }
    const revokedAt = new Date().toISOString();
    const revoked = clients.filter((c) => wanted.has(c.serial) && c.revokedAt === undefined);
    for (const entry of revoked) entry.revokedAt = revokedAt;
    if (revoked.length > 0) await writeRegistry(dir, clients);
    return revoked;
  });
}

async function markRevoked(
  dir: string,
  clients: ClientEntry[],
  entry: ClientEntry,
): Promise<ClientEntry> {
  entry.revokedAt = new Date().toISOString();
  await writeRegistry(dir, clients);
  return entry;
}

/** Every client ever issued from the PKI in `dir`, in issue order, with its status at `now`. */
export async function listClients(dir: string, now: Date = new Date()): Promise<ClientListing[]> {
  const clients = await readRegistry(dir);
  return clients.map((c) => ({ ...c, format: c.format ?? "vpn", status: clientStatus(c, now) }));
}

/** The serial numbers (lowercase hex) in the registry, for `verifyClient()`, and settings. */
export interface RegistrySerials {
  /** Issued and not revoked: the only ones a server admits (expiry is the certificate's). */
  valid: Set<string>;
  /** Revoked. */
  revoked: Set<string>;
  /** The settings of every serial in `valid` (routes empty and the rest absent where none). */
  settings: Map<string, ClientSettings>;
}

/**
 * The registry's serials, valid and revoked, and the valid ones' settings. A missing or
 * corrupt registry throws rather than returning empty sets, and a certificate the registry does
 * not list is refused: revocation fails closed.
 */
export async function readRegistrySerials(dir: string): Promise<RegistrySerials> {
  const serials: RegistrySerials = { valid: new Set(), revoked: new Set(), settings: new Map() };
  for (const c of await readRegistry(dir)) {
    const serial = c.serial.toLowerCase();
    if (c.revokedAt !== undefined) {
      serials.revoked.add(serial);
      continue;
    }
    serials.valid.add(serial);
    serials.settings.set(serial, settingsOf(c));
  }
  return serials;
}

/** The settings recorded in `entry`. */
export function settingsOf(entry: ClientEntry): ClientSettings {
  return {
    ...(entry.address !== undefined ? { address: entry.address } : {}),
    ...(entry.address6 !== undefined ? { address6: entry.address6 } : {}),
    routes: [...(entry.routes ?? [])],
    ...(entry.redirect_gateway !== undefined ? { redirectGateway: entry.redirect_gateway } : {}),
  };
}

/**
 * Replaces the settings of the non-revoked client called `name`. `decide` runs under the
 * registry lock, given that client's settings and every other non-revoked client's (by name),
 * so that a check against the others (a fixed address given twice) cannot race another
 * update; it returns the new settings or throws to change nothing.
 *
 * @returns the updated registry entry.
 * @throws {PkiError} if there is no such client or it is revoked; whatever `decide` throws.
 */
export async function setClientSettings(
  dir: string,
  name: string,
  decide: (current: ClientSettings, others: Map<string, ClientSettings>) => ClientSettings,
): Promise<ClientEntry> {
  return await withRegistry(dir, async () => {
    const clients = await readRegistry(dir);
    const entry = liveEntry(clients, name, dir, "is revoked", ", then set its settings");
    const others = new Map(
      clients.filter((c) => c !== entry && c.revokedAt === undefined)
        .map((c) => [c.name, settingsOf(c)]),
    );
    const next = decide(settingsOf(entry), others);
    delete entry.address;
    delete entry.address6;
    delete entry.routes;
    delete entry.redirect_gateway;
    if (next.address !== undefined) entry.address = next.address;
    if (next.address6 !== undefined) entry.address6 = next.address6;
    if (next.routes.length > 0) entry.routes = [...next.routes];
    if (next.redirectGateway !== undefined) entry.redirect_gateway = next.redirectGateway;
    // Checked as a read would: what is written here must read back.
    const problem = entryProblem(entry);
    if (problem !== undefined) throw new PkiError(`Cannot set "${name}": ${problem}`);
    await writeRegistry(dir, clients);
    return entry;
  });
}

/** The revoked serials of `readRegistrySerials()`. */
export async function readRevokedSerials(dir: string): Promise<Set<string>> {
  return (await readRegistrySerials(dir)).revoked;
}

// --- client authentication ---------------------------------------------------------------

const AUTH_LABEL = new TextEncoder().encode("vpn-auth-v1\0");
const MIN_NONCE = 16;
const MAX_NONCE = 255;

/**
 * The bytes a client signs to prove it holds its key:
 * `"vpn-auth-v1\0" || len || serverNonce || len || clientNonce || serverName` (one-byte
 * lengths; the name is last and needs none).
 *
 * - The label keeps the signature from being valid for anything else signed with the key.
 * - serverNonce makes every challenge fresh, so a recorded signature cannot be replayed;
 *   clientNonce means a server never gets a signature over bytes it chose alone.
 * - serverName is the name rustls verified: the client's CA's `serverIdentityName()` (older
 *   clients sent the name they dialled). Deno exposes no TLS exporter to bind the signature to
 *   the TLS session itself, so binding the name is what stops relaying: a server the client
 *   trusts under another name could otherwise pass the real server's challenge to the client
 *   and the signature back. The
 *   server must check that the name the client reports is one of its own certificate's
 *   names, and compute the challenge with it. DNS names are lowercased here, so either side
 *   may pass them in any case.
 *
 * @throws {RangeError} if a nonce is shorter than 16 or longer than 255 bytes.
 */
export function authChallenge(
  serverNonce: Uint8Array,
  clientNonce: Uint8Array,
  serverName: string,
): Uint8Array<ArrayBuffer> {
  for (const nonce of [serverNonce, clientNonce]) {
    if (nonce.length < MIN_NONCE || nonce.length > MAX_NONCE) {
      throw new RangeError(
        `Cannot build an auth challenge: nonce of ${nonce.length} bytes, must be ${MIN_NONCE}-${MAX_NONCE}`,
      );
    }
  }
  const name = new TextEncoder().encode(serverName.toLowerCase());
  const out = new Uint8Array(
    AUTH_LABEL.length + 2 + serverNonce.length + clientNonce.length + name.length,
  );
  const parts = [AUTH_LABEL, [serverNonce.length], serverNonce, [clientNonce.length], clientNonce];
  let off = 0;
  for (const part of [...parts, name]) {
    out.set(part, off);
    off += part.length;
  }
  return out;
}

/**
 * Signs a challenge with the client's key (ECDSA P-256, SHA-256). The signature is 64 bytes
 * in WebCrypto's raw r||s form, not DER.
 *
 * @throws {PkiError} if `keyPem` is not a PKCS#8 P-256 key.
 */
export async function signChallenge(
  keyPem: string,
  challenge: Uint8Array,
): Promise<Uint8Array<ArrayBuffer>> {
  const key = await importPrivateKey(keyPem, "the client key");
  return new Uint8Array(await crypto.subtle.sign(EC_SIGN, key, new Uint8Array(challenge)));
}

/** Input of `verifyClientCertificate()`. */
export interface VerifyCertificateParams {
  /** Certificate the client presented, PEM (`derToPem()` turns a DER one into it). */
  certPem: string;
  /** This server's CA certificate, PEM. */
  caPem: string;
  /** Revoked serials, from `readRegistrySerials()`. */
  revoked: Set<string>;
  /** Issued, not revoked serials, from `readRegistrySerials()`; no other serial is admitted. */
  valid: Set<string>;
  /** Time to check validity at; defaults to now. */
  now?: Date;
}

/** Input of `verifyClient()`: the certificate and the proof of its key. */
export interface VerifyClientParams extends VerifyCertificateParams {
  /** `authChallenge()` as the server computed it. */
  challenge: Uint8Array;
  /** The client's `signChallenge()` result. */
  signature: Uint8Array;
}

/** An authenticated client. */
export interface VerifiedClient {
  /** The certificate's CN, the name it was issued under. */
  name: string;
  /** Serial number, lowercase hex. */
  serial: string;
  /** The end of the certificate's validity: the session ends then. */
  notAfter: Date;
}

/**
 * The CA as needed to verify: parsed certificate and imported public key. A server verifies
 * every client against one CA, so the last one is kept; the key is public.
 */
let verifyingCa: { pem: string; cert: x509.X509Certificate; key: CryptoKey } | undefined;

async function caForVerify(caPem: string): Promise<{ cert: x509.X509Certificate; key: CryptoKey }> {
  if (verifyingCa?.pem === caPem) return verifyingCa;
  const cert = parseCert(caPem, "the CA certificate");
  let key: CryptoKey;
  try {
    key = await cert.publicKey.export(EC_KEY, ["verify"]);
  } catch {
    throw new PkiError("Cannot use the CA certificate: its key is not ECDSA P-256");
  }
  verifyingCa = { pem: caPem, cert, key };
  return verifyingCa;
}

function parseClientCert(pem: string): x509.X509Certificate {
  try {
    return new x509.X509Certificate(pem);
  } catch {
    throw new AuthError("bad-certificate", "client certificate cannot be parsed");
  }
}

async function checkIssuedBy(
  cert: x509.X509Certificate,
  ca: { cert: x509.X509Certificate; key: CryptoKey },
): Promise<void> {
  let ok = false;
  try {
    ok = cert.issuer === ca.cert.subject &&
      await cert.verify({ publicKey: ca.key, signatureOnly: true });
  } catch {
    // An algorithm our CA never uses (RSA, P-384, ...) cannot be one of our certificates.
  }
  if (!ok) throw new AuthError("unknown-ca", "certificate is not signed by this server's CA");
}

function checkValidity(cert: x509.X509Certificate, now: Date): void {
  // RFC 5280: both ends of the window are inclusive.
  if (now < cert.notBefore) {
    throw new AuthError(
      "not-yet-valid",
      `certificate is not valid before ${cert.notBefore.toISOString()}; check the clocks`,
    );
  }
  if (now > cert.notAfter) {
    throw new AuthError("expired", `certificate expired at ${cert.notAfter.toISOString()}`);
  }
}

function checkClientUsage(cert: x509.X509Certificate): void {
  const basic = cert.getExtension(x509.BasicConstraintsExtension);
  if (basic?.ca) throw new AuthError("not-client", "a CA certificate cannot authenticate a client");
  const eku = cert.getExtension(x509.ExtendedKeyUsageExtension);
  if (!eku?.usages.includes(x509.ExtendedKeyUsage.clientAuth)) {
    throw new AuthError("not-client", "certificate is not issued for client authentication");
  }
  const ku = cert.getExtension(x509.KeyUsagesExtension);
  if (ku && !(ku.usages & x509.KeyUsageFlags.digitalSignature)) {
    throw new AuthError("not-client", "certificate key may not be used for signatures");
  }
}

async function checkProof(
  cert: x509.X509Certificate,
  challenge: Uint8Array,
  signature: Uint8Array,
): Promise<void> {
  let key: CryptoKey;
  try {
    key = await cert.publicKey.export(EC_KEY, ["verify"]);
  } catch {
    throw new AuthError("bad-certificate", "certificate key is not ECDSA P-256");
  }
  let ok = false;
  try {
    ok = await crypto.subtle.verify(
      EC_SIGN,
      key,
      new Uint8Array(signature),
      new Uint8Array(challenge),
    );
  } catch {
    // A signature of the wrong length or shape is just a bad signature.
  }
  if (!ok) throw new AuthError("bad-signature", "signature does not match the challenge");
}

/**
 * Authenticates a client: its certificate must chain to `caPem`, `signature` must be its key's
 * signature of `challenge`, and it must be valid, issued for client auth, listed in the
 * registry and not revoked. Checks run in that order, so the reason names the first failure.
 *
 * @throws {AuthError} with the failed check as `reason`.
 * @throws {PkiError} if `caPem` itself is unusable (a server misconfiguration).
 * @example
 * ```ts
 * import { authChallenge, readRegistrySerials, verifyClient } from "./pki.ts";
 * const challenge = authChallenge(serverNonce, clientNonce, dialledName);
 * const { name } = await verifyClient({
 *   certPem, caPem, challenge, signature, ...(await readRegistrySerials(dir)),
 * });
 * ```
 */
export function verifyClient(params: VerifyClientParams): Promise<VerifiedClient> {
  return verifyCertificate(
    params,
    (cert) => checkProof(cert, params.challenge, params.signature),
  );
}

/**
 * Authenticates the certificate of a client whose TLS handshake proved possession of its key
 * (an OpenVPN client): every check of `verifyClient()` but the signature, in the same order,
 * with the same reasons.
 *
 * @throws {AuthError} with the failed check as `reason`.
 * @throws {PkiError} if `caPem` itself is unusable (a server misconfiguration).
 * @example
 * ```ts
 * import { derToPem, readRegistrySerials, verifyClientCertificate } from "./pki.ts";
 * const { name } = await verifyClientCertificate({
 *   certPem: derToPem(tlsSocket.getPeerCertificate().raw), caPem,
 *   ...(await readRegistrySerials(dir)),
 * });
 * ```
 */
export function verifyClientCertificate(params: VerifyCertificateParams): Promise<VerifiedClient> {
  return verifyCertificate(params);
}

/** The checks of `verifyClient()`, with the proof of possession as `proof` (if any). */
async function verifyCertificate(
  params: VerifyCertificateParams,
  proof?: (cert: x509.X509Certificate) => Promise<void>,
): Promise<VerifiedClient> {
  const cert = parseClientCert(params.certPem);
  const ca = await caForVerify(params.caPem);
  await checkIssuedBy(cert, ca);
  // Possession of the key first: whoever holds only a copy of a certificate (they are not
  // secret) learns nothing about its validity or revocation from the refusal.
  await proof?.(cert);
  checkValidity(cert, params.now ?? new Date());
  checkClientUsage(cert);
  const serial = cert.serialNumber.toLowerCase();
  if (params.revoked.has(serial)) {
    throw new AuthError("revoked", `certificate ${serial} has been revoked`);
  }
  // Signed by our CA is not enough: a certificate the registry lost could not be revoked.
  if (!params.valid.has(serial)) {
    throw new AuthError("revoked", `certificate ${serial} is not in the client registry`);
  }
  const name = cert.subjectName.getField("CN")[0];
  if (name === undefined) throw new AuthError("bad-certificate", "certificate has no CN");
  return { name, serial, notAfter: cert.notAfter };
}

/**
 * A DER certificate (as `node:tls` `getPeerCertificate().raw` gives it) as PEM, for
 * `verifyClientCertificate()` and the PEM APIs around it.
 */
export function derToPem(der: Uint8Array): string {
  return x509.PemConverter.encode(new Uint8Array(der), "CERTIFICATE") + "\n";
}
