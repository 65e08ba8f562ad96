/**
 * The TLS engine of the OpenVPN control channel: TLS driven over bytes, not a socket.
 *
 * OpenVPN carries TLS records inside its P_CONTROL_V1 packets (OPENVPN.md sections 4 and 12),
 * one independent TLS session per key_id, so the reliability layer feeds the engine the
 * reassembled byte stream and sends out whatever the engine produces:
 *
 *  1. the reliability layer hands received control payloads, in order, to
 *     {@linkcode TlsEngine.receive}, which runs the handshake, then decrypts records;
 *  2. key method 2 and the text messages go in with {@linkcode TlsEngine.write} (held back
 *     until the handshake allows) and come out of {@linkcode TlsEngine.read};
 *  3. after every step, {@linkcode TlsEngine.takeOutgoing} gives the TLS bytes to packetize.
 *
 * The policy is OpenVPN's: TLS 1.2 minimum, 1.3 preferred, the client certificate required
 * and verified by OpenSSL against the CA, no SNI, no session tickets or resumption, no
 * renegotiation. Checks OpenVPN layers on top (remote-cert-tls, verify-x509-name,
 * revocation) are the caller's, on {@linkcode TlsEngine.peerCertificate}.
 *
 * Everything the engine holds is bounded by {@linkcode MAX_QUEUED}, in both directions.
 *
 * @module
 */

import { SslConnection, SslContext, TlsError, type TlsVersion } from "../../ffi/ssl.ts";
import { concat } from "./bytes.ts";

export { sslUnavailable, TlsError, type TlsVersion } from "../../ffi/ssl.ts";

/** The certificate, key and trust anchor of one side, all PEM. */
export interface TlsIdentity {
  /** Our certificate (optionally followed by its chain). */
  certPem: string;
  /** The private key of `certPem`, unencrypted. */
  keyPem: string;
  /** The CA certificate(s) the peer's certificate must chain to. */
  caPem: string;
}

/** Options of {@linkcode TlsEngine.server} and {@linkcode TlsEngine.client}. */
export interface TlsOptions {
  /** The highest version offered (default TLS 1.3); TLS 1.2 is for tests and old peers. */
  maxVersion?: TlsVersion;
}

/** The most plaintext or ciphertext the engine queues in either direction: 1 MiB. */
export const MAX_QUEUED = 1 << 20;

/**
 * The most TLS bytes the engine lets wait for {@linkcode TlsEngine.takeOutgoing} while it
 * receives. Writes alone stop at {@linkcode MAX_QUEUED} of plaintext, which encryption grows
 * by at most ~30 bytes per 16 KiB record; past this headroom, only replies the peer provokes
 * (alerts, key updates) that the caller does not take can be growing the queue.
 */
const MAX_OUTGOING = MAX_QUEUED + MAX_QUEUED / 16;
/**
 * Received bytes go to OpenSSL in slices of at most this size, each consumed before the next,
 * so a large chunk never sits whole in the read BIO.
 */
const FEED_SLICE = 16 * 1024;
/** Room for one TLS record's plaintext (2^14), the most one `SSL_read` returns. */
const READ_SCRATCH = 16 * 1024;
/** Distinct identities whose SSL_CTX stays cached; a server has one. */
const CONTEXT_CACHE = 8;

/**
 * SSL_CTX per identity and role, least recently used first. Building one parses PEMs and
 * checks the key pair, which would otherwise be paid on every handshake.
 */
const contexts = new Map<string, SslContext>();

function contextFor(server: boolean, id: TlsIdentity, options: TlsOptions): SslContext {
  const maxVersion = options.maxVersion ?? "TLSv1.3";
  const key = JSON.stringify([server, maxVersion, id.certPem, id.keyPem, id.caPem]);
  const cached = contexts.get(key);
  if (cached !== undefined) {
    contexts.delete(key);
    contexts.set(key, cached);
    return cached;
  }
  const context = SslContext.create({ server, ...id, maxVersion });
  contexts.set(key, context);
  if (contexts.size > CONTEXT_CACHE) {
    const [oldestKey, oldest] = contexts.entries().next().value!;
    // Engines made from it keep their own reference to the SSL_CTX.
    oldest.close();
    contexts.delete(oldestKey);
  }
  return context;
}

/** A FIFO of byte chunks with its total length. */
class ByteQueue {
  #chunks: Uint8Array[] = [];
  #length = 0;

  get length(): number {
    return this.#length;
  }

  push(bytes: Uint8Array): void {
    this.#chunks.push(bytes);
    this.#length += bytes.length;
  }

  /** Everything queued, concatenated, or `undefined` when empty. */
  take(): Uint8Array | undefined {
    const chunks = this.#chunks;
    if (chunks.length === 0) return undefined;
    this.#chunks = [];
    this.#length = 0;
    return concat(...chunks);
  }
}

/** One read scratch for all engines: JavaScript runs one engine call at a time. */
const scratch = new Uint8Array(new ArrayBuffer(READ_SCRATCH));

/**
 * One TLS session of one key_id, fed and drained by the caller.
 *
 * Failures: a bad certificate, a protocol error or an alert from the peer makes
 * {@linkcode TlsEngine.receive} throw a {@linkcode TlsError} whose `reason` is OpenSSL's
 * (e.g. `certificate verify failed`). The engine is then dead: `receive` and `write` throw
 * that error again, while {@linkcode TlsEngine.takeOutgoing} still returns the alert OpenSSL
 * queued for the peer. Misuse (a write over the bound, a closed engine) throws `RangeError` or
 * `Deno.errors.BadResource` and leaves the engine as it was.
 *
 * @example
 * ```ts
 * using server = TlsEngine.server(serverIdentity);
 * using client = TlsEngine.client(clientIdentity);
 * client.write(new TextEncoder().encode("hello"));
 * for (let i = 0; i < 10 && !server.handshakeDone; i++) {
 *   const toServer = client.takeOutgoing();
 *   if (toServer) server.receive(toServer);
 *   const toClient = server.takeOutgoing();
 *   if (toClient) client.receive(toClient);
 * }
 * server.read(); // "hello"
 * ```
 */
export class TlsEngine implements Disposable {
  readonly #connection: SslConnection;
  #closed = false;
  #failure: TlsError | undefined;
  #handshakeDone = false;
  #version = "";
  #cipher = "";
  #peer: Uint8Array | undefined;
  /** Plaintext written before the handshake allowed it. */
  readonly #unsent = new ByteQueue();
  /** Decrypted plaintext not yet taken by {@linkcode TlsEngine.read}. */
  readonly #received = new ByteQueue();

  private constructor(context: SslContext) {
    this.#connection = SslConnection.create(context);
  }

  /**
   * A TLS server that requires a client certificate and has OpenSSL verify it against
   * `id.caPem` (chain, validity, clientAuth usage if the certificate states usages, and the
   * CertificateVerify signature). Throws a {@linkcode TlsError} for unusable PEMs or a key
   * that does not match the certificate.
   */
  static server(id: TlsIdentity, options: TlsOptions = {}): TlsEngine {
    return new TlsEngine(contextFor(true, id, options));
  }

  /**
   * A TLS client that presents `id.certPem` and verifies the server's chain against
   * `id.caPem` (no host name check: OpenVPN compares names itself). Its ClientHello is ready
   * in {@linkcode TlsEngine.takeOutgoing} at once.
   */
  static client(id: TlsIdentity, options: TlsOptions = {}): TlsEngine {
    const engine = new TlsEngine(contextFor(false, id, options));
    engine.#pump();
    return engine;
  }

  /**
   * Whether the handshake is complete. On a TLS 1.3 client this turns true when it sends its
   * Finished, one flight before the server has judged its certificate: a refusal then
   * arrives as an alert on a later {@linkcode TlsEngine.receive}.
   */
  get handshakeDone(): boolean {
    return this.#handshakeDone;
  }

  /** The negotiated protocol, e.g. `TLSv1.3`; empty until the handshake is done. */
  get version(): string {
    return this.#version;
  }

  /** The negotiated cipher suite, e.g. `TLS_AES_256_GCM_SHA384`; empty until then. */
  get cipher(): string {
    return this.#cipher;
  }

  /** The peer's leaf certificate, DER, once the handshake is done. */
  peerCertificate(): Uint8Array | undefined {
    return this.#peer;
  }

  /**
   * Feeds TLS bytes received from the peer, in order and in any chunking, and runs the
   * handshake or decrypts records as far as they go.
   *
   * @throws {TlsError} on a fatal TLS error (the engine is then dead), or when more than
   *   {@linkcode MAX_QUEUED} bytes of plaintext wait for {@linkcode TlsEngine.read} or of TLS
   *   bytes for {@linkcode TlsEngine.takeOutgoing}.
   */
  receive(bytes: Uint8Array): void {
    this.#usable("receive TLS bytes");
    for (let at = 0; at < bytes.length; at += FEED_SLICE) {
      this.#guard(() => this.#connection.feed(bytes.subarray(at, at + FEED_SLICE)));
      this.#pump();
    }
  }

  /**
   * Queues application plaintext; it is encrypted now if the handshake is done, else as soon
   * as it is.
   *
   * @throws {RangeError} when it would take the queue (plaintext held back, or TLS bytes not
   *   yet taken) over {@linkcode MAX_QUEUED}; nothing is queued then.
   * @throws {TlsError} when the engine is dead.
   */
  write(plain: Uint8Array): void {
    this.#usable("write TLS data");
    if (plain.length === 0) return;
    const queued = this.#handshakeDone ? this.#connection.outgoingLength : this.#unsent.length;
    if (queued + plain.length > MAX_QUEUED) {
      throw new RangeError(
        `Cannot write ${plain.length} bytes: ${queued} are queued, the limit is ${MAX_QUEUED}`,
      );
    }
    if (this.#handshakeDone) this.#guard(() => this.#connection.write(plain));
    else this.#unsent.push(plain.slice());
  }

  /**
   * Drains the TLS bytes to send to the peer, concatenated, or `undefined` if there are none.
   * Works on a dead engine too, so that the alert explaining the failure reaches the peer.
   */
  takeOutgoing(): Uint8Array | undefined {
    if (this.#closed) return undefined;
    const length = this.#connection.outgoingLength;
    if (length === 0) return undefined;
    const out = new Uint8Array(length);
    const taken = this.#connection.takeOutgoing(out);
    return taken === length ? out : out.subarray(0, taken);
  }

  /** Drains the application plaintext received so far, or `undefined` if there is none. */
  read(): Uint8Array | undefined {
    return this.#received.take();
  }

  /**
   * `length` bytes of RFC 5705 keying material for `label`, without context (OpenVPN's
   * tls-ekm form, OPENVPN.md section 6.3).
   *
   * @throws {TlsError} before the handshake is done or on a dead engine.
   */
  exportKeyingMaterial(label: string, length: number): Uint8Array {
    this.#usable("export keying material");
    if (!this.#handshakeDone) {
      throw new TlsError("export keying material", "handshake not complete");
    }
    return this.#guard(() => this.#connection.exportKeyingMaterial(label, length));
  }

  /** Frees the SSL and its buffers; safe to call twice. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#connection.close();
    this.#unsent.take();
    this.#received.take();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #usable(what: string): void {
    if (this.#closed) throw new Deno.errors.BadResource(`Cannot ${what}: TLS engine is closed`);
    if (this.#failure !== undefined) throw this.#failure;
  }

  /** Runs `step`, recording a {@linkcode TlsError} from it as the engine's death. */
  #guard<T>(step: () => T): T {
    try {
      return step();
    } catch (error) {
      if (error instanceof TlsError) this.#failure ??= error;
      throw error;
    }
  }

  /** Moves the connection as far as the bytes fed so far allow. */
  #pump(): void {
    this.#guard(() => {
      if (!this.#handshakeDone) {
        if (this.#connection.handshake()) this.#completed();
      }
      if (this.#handshakeDone) {
        this.#flushUnsent();
        this.#readAll();
      }
      const outgoing = this.#connection.outgoingLength;
      if (outgoing > MAX_OUTGOING) {
        throw new TlsError("receive", `${outgoing} TLS bytes not taken (limit ${MAX_OUTGOING})`);
      }
    });
  }

  #completed(): void {
    this.#handshakeDone = true;
    this.#version = this.#connection.version;
    this.#cipher = this.#connection.cipher;
    this.#peer = this.#connection.peerCertificate();
  }

  #flushUnsent(): void {
    const unsent = this.#unsent.take();
    if (unsent !== undefined) this.#connection.write(unsent);
  }

  #readAll(): void {
    for (;;) {
      const length = this.#connection.read(scratch);
      if (length === 0) return;
      if (this.#received.length + length > MAX_QUEUED) {
        throw new TlsError(
          "receive",
          `${this.#received.length + length} bytes of plaintext not read (limit ${MAX_QUEUED})`,
        );
      }
      this.#received.push(scratch.slice(0, length));
    }
  }
}
