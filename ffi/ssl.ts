/**
 * TLS over bytes we feed in and take out: OpenSSL's libssl through FFI, with two memory BIOs
 * per connection instead of a socket.
 *
 * Why libssl and not `node:tls`: OpenVPN carries TLS inside its own control packets, so the
 * engine must run over a byte stream we pump. Deno's `node:tls` can do that over a Duplex, but
 * it does not verify the client's certificate chain and has no RFC 5705 exporter. libssl
 * verifies the chain and the CertificateVerify itself, runs synchronously (one call per chunk,
 * no promise), and has `SSL_export_keying_material`.
 *
 * The byte flow of one {@linkcode SslConnection}:
 *  1. bytes from the peer go into the read BIO (`BIO_write`, {@linkcode SslConnection.feed});
 *  2. `SSL_do_handshake` / `SSL_read` consume them, and put any reply (handshake flights,
 *     alerts) into the write BIO;
 *  3. `SSL_write` encrypts application data into the write BIO;
 *  4. the caller drains the write BIO (`BIO_read`, {@linkcode SslConnection.takeOutgoing}) and
 *     sends it to the peer.
 *
 * Only this file touches pointers. Every failure goes through {@linkcode failure}, which turns
 * OpenSSL's error queue into a {@linkcode TlsError} carrying OpenSSL's reason.
 *
 * @module
 */

const symbols = {
  // --- SSL_CTX -----------------------------------------------------------------------------
  /** const SSL_METHOD *TLS_server_method(void) */
  TLS_server_method: { parameters: [], result: "pointer" },
  /** const SSL_METHOD *TLS_client_method(void) */
  TLS_client_method: { parameters: [], result: "pointer" },
  /** SSL_CTX *SSL_CTX_new(const SSL_METHOD *meth) */
  SSL_CTX_new: { parameters: ["pointer"], result: "pointer" },
  /** void SSL_CTX_free(SSL_CTX *ctx) */
  SSL_CTX_free: { parameters: ["pointer"], result: "void" },
  /** uint64_t SSL_CTX_set_options(SSL_CTX *ctx, uint64_t op) */
  SSL_CTX_set_options: { parameters: ["pointer", "u64"], result: "u64" },
  /** long SSL_CTX_ctrl(SSL_CTX *ctx, int cmd, long larg, void *parg) */
  SSL_CTX_ctrl: { parameters: ["pointer", "i32", "i64", "pointer"], result: "i64" },
  /** int SSL_CTX_set_num_tickets(SSL_CTX *ctx, size_t num_tickets) */
  SSL_CTX_set_num_tickets: { parameters: ["pointer", "usize"], result: "i32" },
  /** int SSL_CTX_set_cipher_list(SSL_CTX *ctx, const char *str) */
  SSL_CTX_set_cipher_list: { parameters: ["pointer", "buffer"], result: "i32" },
  /** void SSL_CTX_set_verify(SSL_CTX *ctx, int mode, SSL_verify_cb callback) */
  SSL_CTX_set_verify: { parameters: ["pointer", "i32", "pointer"], result: "void" },
  /** int SSL_CTX_use_certificate(SSL_CTX *ctx, X509 *x) */
  SSL_CTX_use_certificate: { parameters: ["pointer", "pointer"], result: "i32" },
  /** int SSL_CTX_use_PrivateKey(SSL_CTX *ctx, EVP_PKEY *pkey) */
  SSL_CTX_use_PrivateKey: { parameters: ["pointer", "pointer"], result: "i32" },
  /** int SSL_CTX_check_private_key(const SSL_CTX *ctx) */
  SSL_CTX_check_private_key: { parameters: ["pointer"], result: "i32" },
  /** int SSL_CTX_add_client_CA(SSL_CTX *ctx, X509 *x): copies the subject name */
  SSL_CTX_add_client_CA: { parameters: ["pointer", "pointer"], result: "i32" },
  /** X509_STORE *SSL_CTX_get_cert_store(const SSL_CTX *ctx) */
  SSL_CTX_get_cert_store: { parameters: ["pointer"], result: "pointer" },
  /** int X509_STORE_add_cert(X509_STORE *store, X509 *x) */
  X509_STORE_add_cert: { parameters: ["pointer", "pointer"], result: "i32" },

  // --- SSL ---------------------------------------------------------------------------------
  /** SSL *SSL_new(SSL_CTX *ctx) */
  SSL_new: { parameters: ["pointer"], result: "pointer" },
  /** void SSL_free(SSL *ssl) */
  SSL_free: { parameters: ["pointer"], result: "void" },
  /** void SSL_set_bio(SSL *s, BIO *rbio, BIO *wbio) */
  SSL_set_bio: { parameters: ["pointer", "pointer", "pointer"], result: "void" },
  /** void SSL_set_accept_state(SSL *s) */
  SSL_set_accept_state: { parameters: ["pointer"], result: "void" },
  /** void SSL_set_connect_state(SSL *s) */
  SSL_set_connect_state: { parameters: ["pointer"], result: "void" },
  /** int SSL_do_handshake(SSL *s) */
  SSL_do_handshake: { parameters: ["pointer"], result: "i32" },
  /** int SSL_read(SSL *ssl, void *buf, int num) */
  SSL_read: { parameters: ["pointer", "buffer", "i32"], result: "i32" },
  /** int SSL_write(SSL *ssl, const void *buf, int num) */
  SSL_write: { parameters: ["pointer", "buffer", "i32"], result: "i32" },
  /** int SSL_get_error(const SSL *s, int ret_code) */
  SSL_get_error: { parameters: ["pointer", "i32"], result: "i32" },
  /** long SSL_get_verify_result(const SSL *ssl) */
  SSL_get_verify_result: { parameters: ["pointer"], result: "i64" },
  /** const char *SSL_get_version(const SSL *s) */
  SSL_get_version: { parameters: ["pointer"], result: "pointer" },
  /** const SSL_CIPHER *SSL_get_current_cipher(const SSL *s) */
  SSL_get_current_cipher: { parameters: ["pointer"], result: "pointer" },
  /** const char *SSL_CIPHER_get_name(const SSL_CIPHER *c) */
  SSL_CIPHER_get_name: { parameters: ["pointer"], result: "pointer" },
  /** X509 *SSL_get1_peer_certificate(const SSL *s) */
  SSL_get1_peer_certificate: { parameters: ["pointer"], result: "pointer" },
  /**
   * int SSL_export_keying_material(SSL *s, unsigned char *out, size_t olen, const char *label,
   *                                size_t llen, const unsigned char *context,
   *                                size_t contextlen, int use_context)
   */
  SSL_export_keying_material: {
    parameters: ["pointer", "buffer", "usize", "buffer", "usize", "buffer", "usize", "i32"],
    result: "i32",
  },

  // --- BIO, PEM, X509 (libcrypto, reached through libssl's dependencies) -------------------
  /** const BIO_METHOD *BIO_s_mem(void) */
  BIO_s_mem: { parameters: [], result: "pointer" },
  /** BIO *BIO_new(const BIO_METHOD *type) */
  BIO_new: { parameters: ["pointer"], result: "pointer" },
  /** BIO *BIO_new_mem_buf(const void *buf, int len) */
  BIO_new_mem_buf: { parameters: ["buffer", "i32"], result: "pointer" },
  /** int BIO_free(BIO *a) */
  BIO_free: { parameters: ["pointer"], result: "i32" },
  /** int BIO_write(BIO *b, const void *data, int dlen) */
  BIO_write: { parameters: ["pointer", "buffer", "i32"], result: "i32" },
  /** int BIO_read(BIO *b, void *data, int dlen) */
  BIO_read: { parameters: ["pointer", "buffer", "i32"], result: "i32" },
  /** size_t BIO_ctrl_pending(BIO *b) */
  BIO_ctrl_pending: { parameters: ["pointer"], result: "usize" },
  /** X509 *PEM_read_bio_X509(BIO *bp, X509 **x, pem_password_cb *cb, void *u) */
  PEM_read_bio_X509: { parameters: ["pointer", "pointer", "pointer", "buffer"], result: "pointer" },
  /** EVP_PKEY *PEM_read_bio_PrivateKey(BIO *bp, EVP_PKEY **x, pem_password_cb *cb, void *u) */
  PEM_read_bio_PrivateKey: {
    parameters: ["pointer", "pointer", "pointer", "buffer"],
    result: "pointer",
  },
  /** int i2d_X509_bio(BIO *bp, const X509 *x509) */
  i2d_X509_bio: { parameters: ["pointer", "pointer"], result: "i32" },
  /** void X509_free(X509 *a) */
  X509_free: { parameters: ["pointer"], result: "void" },
  /** void EVP_PKEY_free(EVP_PKEY *pkey) */
  EVP_PKEY_free: { parameters: ["pointer"], result: "void" },
  /** const char *X509_verify_cert_error_string(long n) */
  X509_verify_cert_error_string: { parameters: ["i64"], result: "pointer" },

  // --- errors ------------------------------------------------------------------------------
  /** unsigned long ERR_get_error(void) */
  ERR_get_error: { parameters: [], result: "u64" },
  /** void ERR_error_string_n(unsigned long e, char *buf, size_t len) */
  ERR_error_string_n: { parameters: ["u64", "buffer", "usize"], result: "void" },
  /** void ERR_clear_error(void) */
  ERR_clear_error: { parameters: [], result: "void" },
} as const satisfies Deno.ForeignLibraryInterface;

type Libssl = Deno.DynamicLibrary<typeof symbols>["symbols"];

// --- C constants, with their header names ----------------------------------------------------

/** <openssl/ssl.h> SSL_OP_BIT(30): refuse TLS 1.2 renegotiation (OpenVPN does the same). */
const SSL_OP_NO_RENEGOTIATION = 1n << 30n;
/** <openssl/ssl.h> SSL_OP_BIT(14): no TLS 1.2 session tickets. */
const SSL_OP_NO_TICKET = 1n << 14n;
/** <openssl/ssl.h> SSL_OP_BIT(17): no TLS compression (CRIME). */
const SSL_OP_NO_COMPRESSION = 1n << 17n;
/** <openssl/ssl.h> */
const SSL_CTRL_MODE = 33;
/** <openssl/ssl.h> */
const SSL_CTRL_SET_SESS_CACHE_MODE = 44;
/** <openssl/ssl.h> */
const SSL_CTRL_SET_MIN_PROTO_VERSION = 123;
/** <openssl/ssl.h> */
const SSL_CTRL_SET_MAX_PROTO_VERSION = 124;
/** <openssl/ssl.h> SSL_CTRL_EXTRA_CHAIN_CERT: the ctx takes ownership of the X509. */
const SSL_CTRL_EXTRA_CHAIN_CERT = 14;
/** <openssl/ssl.h> */
const SSL_SESS_CACHE_OFF = 0;
/** <openssl/ssl.h> Frees a connection's record buffers while it is idle. */
const SSL_MODE_RELEASE_BUFFERS = 0x10;
/** <openssl/ssl.h> */
const SSL_VERIFY_PEER = 0x01;
/** <openssl/ssl.h> */
const SSL_VERIFY_FAIL_IF_NO_PEER_CERT = 0x02;
/** <openssl/ssl.h> SSL_get_error() results. */
const SSL_ERROR_SSL = 1;
const SSL_ERROR_WANT_READ = 2;
const SSL_ERROR_SYSCALL = 5;
const SSL_ERROR_ZERO_RETURN = 6;
/** <openssl/prov_ssl.h> */
const TLS1_2_VERSION = 0x0303;
const TLS1_3_VERSION = 0x0304;
/** <openssl/x509_vfy.h> X509_V_OK */
const X509_V_OK = 0n;

/**
 * The TLS 1.2 cipher list: OpenSSL's DEFAULT without export, weak, static-(EC)DH, DSS, PSK,
 * SRP and RSA-key-transport suites, as stock OpenVPN restricts it (OPENVPN.md section 4), so
 * TLS 1.2 always has forward secrecy. TLS 1.3 suites are configured separately and untouched.
 */
const TLS12_CIPHERS = "DEFAULT:!EXP:!LOW:!MEDIUM:!kDH:!kECDH:!DSS:!PSK:!SRP:!kRSA";

const LIBRARY_NAMES = ["libssl.so.3", "libssl.so"];

type Loaded = { lib: Libssl; error?: never } | { lib?: never; error: string };
let loaded: Loaded | undefined;

/** Opens libssl on first use, so that importing this module needs no permission. */
function load(): Loaded {
  loaded ??= open();
  return loaded;
}

function open(): Loaded {
  let failure = "";
  for (const name of LIBRARY_NAMES) {
    try {
      return { lib: Deno.dlopen(name, symbols).symbols };
    } catch (error) {
      if (
        error instanceof Deno.errors.NotCapable || error instanceof Deno.errors.PermissionDenied
      ) {
        return { error: "libssl cannot be loaded without FFI permission: run with --allow-ffi" };
      }
      failure ||= error instanceof Error ? error.message : String(error);
    }
  }
  return {
    error: /cannot open shared object/.test(failure)
      ? "libssl.so.3 not found: install OpenSSL 3 (Debian: apt-get install libssl3t64)"
      : `libssl.so.3 cannot be loaded: ${failure}`,
  };
}

function library(what: string): Libssl {
  const { lib, error } = load();
  if (error !== undefined) throw new Error(`Cannot ${what}: ${error}`);
  return lib;
}

/**
 * Why TLS cannot be used, or `undefined` when libssl loads. Never throws.
 *
 * @example
 * ```ts
 * const missing = sslUnavailable();
 * if (missing) console.warn(`OpenVPN protocol disabled: ${missing}`);
 * ```
 */
export function sslUnavailable(): string | undefined {
  return load().error;
}

// --- errors ------------------------------------------------------------------------------------

/**
 * A TLS failure: a bad certificate or key, a peer that broke the protocol or sent an alert,
 * or an engine used after such a failure. `reason` is OpenSSL's own short reason where there
 * is one, e.g. `certificate verify failed`.
 */
export class TlsError extends Error {
  /** What failed, e.g. `SSL_do_handshake` or `load client key`. */
  readonly call: string;
  /** The short reason, e.g. `certificate verify failed` or `sslv3 alert bad certificate`. */
  readonly reason: string;

  constructor(call: string, reason: string, detail?: string) {
    super(`${call} failed: ${reason}${detail ? ` (${detail})` : ""}`);
    this.name = "TlsError";
    this.call = call;
    this.reason = reason;
  }
}

const decoder = new TextDecoder();

/**
 * A {@linkcode TlsError} for `call` with the first reason on the thread's OpenSSL error queue
 * (the cause; later entries say where it surfaced), which it then empties. `detail` adds what
 * the queue cannot say, such as which check of the certificate failed.
 */
function failure(lib: Libssl, call: string, fallback: string, detail?: string): TlsError {
  const code = lib.ERR_get_error();
  lib.ERR_clear_error();
  if (code === 0n) return new TlsError(call, fallback, detail);
  const text = new Uint8Array(256);
  lib.ERR_error_string_n(code, text, BigInt(text.length));
  const end = text.indexOf(0);
  // "error:0A000086:SSL routines::certificate verify failed": the reason is the fifth field.
  const full = decoder.decode(text.subarray(0, end < 0 ? text.length : end));
  const reason = full.split(":").slice(4).join(":") || full;
  return new TlsError(call, reason, detail);
}

function cString(pointer: Deno.PointerValue): string {
  return pointer === null ? "" : Deno.UnsafePointerView.getCString(pointer);
}

function zeroTerminated(text: string): Uint8Array {
  return new TextEncoder().encode(`${text}\0`);
}

// --- PEM loading -------------------------------------------------------------------------------

/**
 * Runs `read` over a read-only memory BIO holding `pem`. The bytes live in an ArrayBuffer of
 * their own (off V8's heap, so they cannot move under the BIO) and are wiped afterwards, since
 * they may hold a private key.
 */
function withPemBio<T>(lib: Libssl, pem: string, read: (bio: Deno.PointerObject) => T): T {
  const encoded = new TextEncoder().encode(pem);
  const bytes = new Uint8Array(new ArrayBuffer(encoded.length));
  bytes.set(encoded);
  encoded.fill(0);
  const bio = lib.BIO_new_mem_buf(bytes, bytes.length);
  if (bio === null) throw failure(lib, "BIO_new_mem_buf", "out of memory");
  try {
    return read(bio);
  } finally {
    lib.BIO_free(bio);
    bytes.fill(0);
  }
}

/** A PEM read failure; OpenSSL's "no start line" is said in plain words. */
function pemFailure(lib: Libssl, call: string, kind: string): TlsError {
  const error = failure(lib, call, `no PEM ${kind} found`);
  return error.reason === "no start line" ? new TlsError(call, `no PEM ${kind} found`) : error;
}

/** An empty passphrase: an encrypted key then fails to load instead of prompting on a TTY. */
const NO_PASSPHRASE = new Uint8Array(new ArrayBuffer(1));

/** Every certificate in `pem`, in order; throws a {@linkcode TlsError} if there is none. */
function readCertificates(lib: Libssl, pem: string, what: string): Deno.PointerObject[] {
  return withPemBio(lib, pem, (bio) => {
    const certs: Deno.PointerObject[] = [];
    for (;;) {
      const cert = lib.PEM_read_bio_X509(bio, null, null, NO_PASSPHRASE);
      if (cert === null) break;
      certs.push(cert);
    }
    if (certs.length === 0) throw pemFailure(lib, `load ${what}`, "certificate");
    // The read that ended the loop left "no start line" on the queue: the normal end.
    lib.ERR_clear_error();
    return certs;
  });
}

function readPrivateKey(lib: Libssl, pem: string, what: string): Deno.PointerObject {
  return withPemBio(lib, pem, (bio) => {
    const key = lib.PEM_read_bio_PrivateKey(bio, null, null, NO_PASSPHRASE);
    if (key === null) throw pemFailure(lib, `load ${what}`, "private key");
    return key;
  });
}

// --- SslContext --------------------------------------------------------------------------------

/** The live `SSL_CTX` of a context, for {@linkcode SslConnection.create}; not exported. */
let contextPointer: (context: SslContext) => Deno.PointerObject;

/** The TLS versions a context may be capped at. */
export type TlsVersion = "TLSv1.2" | "TLSv1.3";

/** Options of {@linkcode SslContext.create}. */
export interface SslContextOptions {
  /** true: accept connections and require a client certificate; false: connect. */
  server: boolean;
  /** Our certificate, PEM; further certificates after it are sent as its chain. */
  certPem: string;
  /** The private key of `certPem`, PEM (PKCS#8 or traditional, unencrypted). */
  keyPem: string;
  /** The CA certificate(s), PEM, that the peer's certificate must chain to. */
  caPem: string;
  /** The highest TLS version offered (default TLS 1.3); TLS 1.2 is always the lowest. */
  maxVersion?: TlsVersion;
}

/**
 * An `SSL_CTX`: one identity (certificate, key, trusted CA) and the policy every connection
 * made from it follows: TLS 1.2 minimum, 1.3 preferred, the peer's certificate required and
 * verified, no session cache, tickets, renegotiation or compression.
 *
 * Closing it while connections made from it are open is safe: each holds its own reference.
 *
 * @example
 * ```ts
 * using context = SslContext.create({ server: true, certPem, keyPem, caPem });
 * using connection = SslConnection.create(context);
 * ```
 */
export class SslContext implements Disposable {
  /** Whether connections from this context accept (true) or connect (false). */
  readonly server: boolean;

  readonly #lib: Libssl;
  #ctx: Deno.PointerValue;

  private constructor(lib: Libssl, ctx: Deno.PointerObject, server: boolean) {
    this.#lib = lib;
    this.#ctx = ctx;
    this.server = server;
  }

  /**
   * A context for `options`. Throws a {@linkcode TlsError} when a PEM does not parse, the key
   * does not match the certificate, or OpenSSL refuses a setting; an `Error` saying what is
   * missing when libssl cannot be loaded.
   */
  static create(options: SslContextOptions): SslContext {
    const role = options.server ? "server" : "client";
    const lib = library(`create a TLS ${role} context`);
    lib.ERR_clear_error();
    const method = options.server ? lib.TLS_server_method() : lib.TLS_client_method();
    const ctx = lib.SSL_CTX_new(method);
    if (ctx === null) throw failure(lib, "SSL_CTX_new", "out of memory");
    const context = new SslContext(lib, ctx, options.server);
    try {
      context.#configure(options, role);
    } catch (error) {
      context.close();
      throw error;
    }
    return context;
  }

  #configure(options: SslContextOptions, role: string): void {
    const lib = this.#lib;
    const ctx = this.#ctx;
    lib.SSL_CTX_set_options(
      ctx,
      SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_TICKET | SSL_OP_NO_COMPRESSION,
    );
    // OpenVPN starts a fresh TLS session per key_id and never resumes one (OPENVPN.md 4):
    // no cache, and no TLS 1.3 tickets (SSL_OP_NO_TICKET alone still sends stateful ones).
    lib.SSL_CTX_ctrl(ctx, SSL_CTRL_SET_SESS_CACHE_MODE, BigInt(SSL_SESS_CACHE_OFF), null);
    if (lib.SSL_CTX_set_num_tickets(ctx, 0n) !== 1) {
      throw failure(lib, "SSL_CTX_set_num_tickets", "refused");
    }
    // Control channels idle for an hour between renegotiations; their ~34 KiB of record
    // buffers are better given back meanwhile.
    lib.SSL_CTX_ctrl(ctx, SSL_CTRL_MODE, BigInt(SSL_MODE_RELEASE_BUFFERS), null);
    this.#ctrl(SSL_CTRL_SET_MIN_PROTO_VERSION, TLS1_2_VERSION, "SSL_CTX_set_min_proto_version");
    const max = options.maxVersion === "TLSv1.2" ? TLS1_2_VERSION : TLS1_3_VERSION;
    this.#ctrl(SSL_CTRL_SET_MAX_PROTO_VERSION, max, "SSL_CTX_set_max_proto_version");
    if (lib.SSL_CTX_set_cipher_list(ctx, zeroTerminated(TLS12_CIPHERS)) !== 1) {
      throw failure(lib, "SSL_CTX_set_cipher_list", "no cipher left");
    }
    // No callback: OpenSSL's own verdict stands. On a server, a client without a certificate
    // fails the handshake instead of being let through unverified.
    const mode = options.server
      ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT
      : SSL_VERIFY_PEER;
    lib.SSL_CTX_set_verify(ctx, mode, null);
    this.#trust(options.caPem, options.server);
    this.#useIdentity(options.certPem, options.keyPem, role);
  }

  #ctrl(cmd: number, value: number, call: string): void {
    if (this.#lib.SSL_CTX_ctrl(this.#ctx, cmd, BigInt(value), null) !== 1n) {
      throw failure(this.#lib, call, "refused");
    }
  }

  /**
   * Adds every certificate of `caPem` to the context's X509_STORE; a server also names them
   * in its CertificateRequest, as stock OpenVPN does, for clients that pick a certificate by
   * its issuer.
   */
  #trust(caPem: string, server: boolean): void {
    const lib = this.#lib;
    const store = lib.SSL_CTX_get_cert_store(this.#ctx);
    if (store === null) throw failure(lib, "SSL_CTX_get_cert_store", "no store");
    const certs = readCertificates(lib, caPem, "CA certificate");
    try {
      for (const cert of certs) {
        // The store takes its own reference, so ours is freed in any case.
        if (lib.X509_STORE_add_cert(store, cert) !== 1) {
          throw failure(lib, "X509_STORE_add_cert", "refused");
        }
        if (server && lib.SSL_CTX_add_client_CA(this.#ctx, cert) !== 1) {
          throw failure(lib, "SSL_CTX_add_client_CA", "refused");
        }
      }
    } finally {
      for (const cert of certs) lib.X509_free(cert);
    }
  }

  #useIdentity(certPem: string, keyPem: string, role: string): void {
    const lib = this.#lib;
    const ctx = this.#ctx;
    const [leaf, ...chain] = readCertificates(lib, certPem, `${role} certificate`);
    try {
      if (lib.SSL_CTX_use_certificate(ctx, leaf!) !== 1) {
        throw failure(lib, "SSL_CTX_use_certificate", "refused");
      }
      while (chain.length > 0) {
        // On success the context owns the certificate; on failure the finally frees it.
        if (lib.SSL_CTX_ctrl(ctx, SSL_CTRL_EXTRA_CHAIN_CERT, 0n, chain[0]!) !== 1n) {
          throw failure(lib, "SSL_CTX_add_extra_chain_cert", "refused");
        }
        chain.shift();
      }
    } finally {
      lib.X509_free(leaf!);
      for (const cert of chain) lib.X509_free(cert);
    }
    const key = readPrivateKey(lib, keyPem, `${role} key`);
    try {
      if (lib.SSL_CTX_use_PrivateKey(ctx, key) !== 1) {
        throw failure(lib, `load ${role} key`, "refused");
      }
    } finally {
      lib.EVP_PKEY_free(key);
    }
    // SSL_CTX_use_PrivateKey already compares the key with the certificate; this also
    // catches the order key-before-certificate, should the code above ever change.
    if (lib.SSL_CTX_check_private_key(ctx) !== 1) {
      throw failure(lib, `load ${role} key`, "key does not match the certificate");
    }
  }

  static {
    contextPointer = (context) => {
      if (context.#ctx === null) throw new Deno.errors.BadResource("TLS context is closed");
      return context.#ctx;
    };
  }

  /** Drops this object's reference to the `SSL_CTX`; safe to call twice. */
  close(): void {
    if (this.#ctx === null) return;
    this.#lib.SSL_CTX_free(this.#ctx);
    this.#ctx = null;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

// --- SslConnection -----------------------------------------------------------------------------

/**
 * One TLS connection (`SSL` with a read and a write memory BIO) over bytes the caller moves.
 *
 * Every method that advances the connection throws a {@linkcode TlsError} on a fatal error;
 * OpenSSL has then queued an alert in the write BIO, which {@linkcode takeOutgoing} still
 * returns so that the peer learns why. Nothing here buffers beyond what OpenSSL holds: the
 * caller bounds what it feeds and drains.
 *
 * @example
 * ```ts
 * using connection = SslConnection.create(context);
 * connection.feed(bytesFromPeer);
 * if (connection.handshake()) console.log(connection.version, connection.cipher);
 * const toPeer = new Uint8Array(connection.outgoingLength);
 * connection.takeOutgoing(toPeer);
 * ```
 */
export class SslConnection implements Disposable {
  readonly #lib: Libssl;
  #ssl: Deno.PointerValue;
  /** Owned by the SSL (SSL_set_bio); kept to feed and drain it. */
  readonly #rbio: Deno.PointerObject;
  readonly #wbio: Deno.PointerObject;

  private constructor(
    lib: Libssl,
    ssl: Deno.PointerObject,
    rbio: Deno.PointerObject,
    wbio: Deno.PointerObject,
  ) {
    this.#lib = lib;
    this.#ssl = ssl;
    this.#rbio = rbio;
    this.#wbio = wbio;
  }

  /** A new connection from `context`, in the server or client role of the context. */
  static create(context: SslContext): SslConnection {
    const lib = library("create a TLS connection");
    lib.ERR_clear_error();
    const ssl = lib.SSL_new(contextPointer(context));
    if (ssl === null) throw failure(lib, "SSL_new", "out of memory");
    const rbio = lib.BIO_new(lib.BIO_s_mem());
    const wbio = lib.BIO_new(lib.BIO_s_mem());
    if (rbio === null || wbio === null) {
      const thrown = failure(lib, "BIO_new", "out of memory");
      if (rbio !== null) lib.BIO_free(rbio);
      if (wbio !== null) lib.BIO_free(wbio);
      lib.SSL_free(ssl);
      throw thrown;
    }
    lib.SSL_set_bio(ssl, rbio, wbio);
    if (context.server) lib.SSL_set_accept_state(ssl);
    else lib.SSL_set_connect_state(ssl);
    return new SslConnection(lib, ssl, rbio, wbio);
  }

  #live(what: string): Deno.PointerObject {
    if (this.#ssl === null) throw new Deno.errors.BadResource(`Cannot ${what}: TLS is closed`);
    return this.#ssl;
  }

  /** Appends `bytes` received from the peer to the read BIO (memory BIOs take everything). */
  feed(bytes: Uint8Array): void {
    this.#live("feed TLS bytes");
    if (bytes.length === 0) return;
    if (this.#lib.BIO_write(this.#rbio, bytes, bytes.length) !== bytes.length) {
      throw failure(this.#lib, "BIO_write", "short write");
    }
  }

  /** Advances the handshake with what was fed; true once it is complete. */
  handshake(): boolean {
    const ssl = this.#live("run the TLS handshake");
    this.#lib.ERR_clear_error();
    const result = this.#lib.SSL_do_handshake(ssl);
    if (result === 1) return true;
    return this.#wouldBlock(ssl, result, "SSL_do_handshake");
  }

  /**
   * Decrypts application data into `into`: the byte count, or 0 when no complete record is
   * left. A close_notify from the peer is a {@linkcode TlsError} too: nothing can follow it.
   */
  read(into: Uint8Array): number {
    const ssl = this.#live("read TLS data");
    if (into.length === 0) return 0;
    this.#lib.ERR_clear_error();
    const result = this.#lib.SSL_read(ssl, into, into.length);
    if (result > 0) return result;
    this.#wouldBlock(ssl, result, "SSL_read");
    return 0;
  }

  /** Encrypts all of `plain` into the write BIO. Call only once the handshake is done. */
  write(plain: Uint8Array): void {
    const ssl = this.#live("write TLS data");
    if (plain.length === 0) return;
    this.#lib.ERR_clear_error();
    const result = this.#lib.SSL_write(ssl, plain, plain.length);
    // Without SSL_MODE_ENABLE_PARTIAL_WRITE a success is the whole buffer.
    if (result > 0) return;
    this.#wouldBlock(ssl, result, "SSL_write");
    throw new TlsError("SSL_write", "handshake not complete");
  }

  /**
   * For a call that returned `result` <= 0: false when it only needs more input (the
   * handshake is not done), else throws the {@linkcode TlsError} that ended the connection.
   */
  #wouldBlock(ssl: Deno.PointerObject, result: number, call: string): false {
    const lib = this.#lib;
    const code = lib.SSL_get_error(ssl, result);
    if (code === SSL_ERROR_WANT_READ) return false;
    if (code === SSL_ERROR_ZERO_RETURN) {
      throw new TlsError(call, "the peer closed the TLS session (close_notify)");
    }
    const verify = lib.SSL_get_verify_result(ssl);
    const detail = verify === X509_V_OK
      ? undefined
      : cString(lib.X509_verify_cert_error_string(verify));
    if (code === SSL_ERROR_SSL || code === SSL_ERROR_SYSCALL) {
      throw failure(lib, call, "protocol error", detail);
    }
    throw failure(lib, call, `unexpected SSL_get_error ${code}`, detail);
  }

  /** Bytes waiting in the write BIO for the peer. */
  get outgoingLength(): number {
    if (this.#ssl === null) return 0;
    return Number(this.#lib.BIO_ctrl_pending(this.#wbio));
  }

  /** Moves up to `into.length` bytes of the write BIO into `into`; returns how many. */
  takeOutgoing(into: Uint8Array): number {
    this.#live("take TLS bytes");
    if (into.length === 0) return 0;
    const read = this.#lib.BIO_read(this.#wbio, into, into.length);
    return read > 0 ? read : 0;
  }

  /** The negotiated protocol, e.g. `TLSv1.3`. */
  get version(): string {
    return cString(this.#lib.SSL_get_version(this.#live("read the TLS version")));
  }

  /** The negotiated cipher suite, e.g. `TLS_AES_256_GCM_SHA384`; empty before it is chosen. */
  get cipher(): string {
    const cipher = this.#lib.SSL_get_current_cipher(this.#live("read the TLS cipher"));
    return cipher === null ? "" : cString(this.#lib.SSL_CIPHER_get_name(cipher));
  }

  /** The peer's leaf certificate, DER, or `undefined` if it sent none (yet). */
  peerCertificate(): Uint8Array | undefined {
    const lib = this.#lib;
    const cert = lib.SSL_get1_peer_certificate(this.#live("read the peer certificate"));
    if (cert === null) return undefined;
    const bio = lib.BIO_new(lib.BIO_s_mem());
    try {
      if (bio === null || lib.i2d_X509_bio(bio, cert) !== 1) {
        throw failure(lib, "i2d_X509_bio", "cannot encode the peer certificate");
      }
      const der = new Uint8Array(Number(lib.BIO_ctrl_pending(bio)));
      lib.BIO_read(bio, der, der.length);
      return der;
    } finally {
      if (bio !== null) lib.BIO_free(bio);
      lib.X509_free(cert);
    }
  }

  /**
   * `length` bytes of RFC 5705 keying material for `label`, without a context value (the way
   * OpenVPN's tls-ekm asks for it). The handshake must be done.
   */
  exportKeyingMaterial(label: string, length: number): Uint8Array {
    const ssl = this.#live("export keying material");
    if (!Number.isSafeInteger(length) || length < 1) {
      throw new RangeError(`Cannot export ${length} bytes of keying material`);
    }
    const out = new Uint8Array(new ArrayBuffer(length));
    const labelBytes = new TextEncoder().encode(label);
    const lib = this.#lib;
    lib.ERR_clear_error();
    const ok = lib.SSL_export_keying_material(
      ssl,
      out,
      BigInt(length),
      labelBytes,
      BigInt(labelBytes.length),
      null,
      0n,
      0,
    );
    if (ok !== 1) throw failure(lib, "SSL_export_keying_material", "handshake not complete");
    return out;
  }

  /** Frees the SSL and its two BIOs; safe to call twice. */
  close(): void {
    if (this.#ssl === null) return;
    this.#lib.SSL_free(this.#ssl);
    this.#ssl = null;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
