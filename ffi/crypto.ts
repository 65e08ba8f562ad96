/**
 * AEAD for the data channels: AES-256-GCM and ChaCha20-Poly1305 through OpenSSL's libcrypto.
 * Our own UDP datagrams append the tag ({@linkcode Aead.seal}, {@linkcode Aead.open}); OpenVPN's
 * P_DATA_V2 puts it before the ciphertext ({@linkcode Aead.sealDetached},
 * {@linkcode Aead.openDetached}). Both pairs run the same two private routines.
 *
 * Why FFI: one reused `EVP_CIPHER_CTX` seals a 1400-byte packet in ~1.4 us (AES-256-GCM) or
 * ~3 us (ChaCha20-Poly1305), where WebCrypto and `node:crypto` took 16-90 us (measured on a
 * 2-vCPU VM with Deno 2.9; `deno bench -A scripts/crypto_bench.ts` gives this binding's figures).
 * That only holds when a call allocates nothing: the caller passes every buffer in, and the
 * `int *outl` and tag scratch are allocated once per context.
 *
 * Per packet, a context runs:
 *  1. `EVP_{En,De}cryptInit_ex(ctx, NULL, NULL, NULL, nonce)`: new IV, same cipher and key;
 *  2. `EVP_{En,De}cryptUpdate(ctx, NULL, ...)`: the AAD;
 *  3. `EVP_{En,De}cryptUpdate(ctx, out, ...)`: the data;
 *  4. open only: `EVP_CTRL_AEAD_SET_TAG` with the received tag;
 *  5. `EVP_{En,De}cryptFinal_ex`: open learns here whether the tag matched;
 *  6. seal only: `EVP_CTRL_AEAD_GET_TAG`.
 *
 * Both ciphers default to a 12-byte IV, so `EVP_CTRL_AEAD_SET_IVLEN` is never needed.
 *
 * @module
 */

const symbols = {
  /** EVP_CIPHER_CTX *EVP_CIPHER_CTX_new(void) */
  EVP_CIPHER_CTX_new: { parameters: [], result: "pointer" },
  /** void EVP_CIPHER_CTX_free(EVP_CIPHER_CTX *ctx) */
  EVP_CIPHER_CTX_free: { parameters: ["pointer"], result: "void" },
  /** const EVP_CIPHER *EVP_aes_256_gcm(void) */
  EVP_aes_256_gcm: { parameters: [], result: "pointer" },
  /** const EVP_CIPHER *EVP_chacha20_poly1305(void) */
  EVP_chacha20_poly1305: { parameters: [], result: "pointer" },
  /**
   * int EVP_EncryptInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *type, ENGINE *impl,
   *                        const unsigned char *key, const unsigned char *iv)
   */
  EVP_EncryptInit_ex: {
    parameters: ["pointer", "pointer", "pointer", "buffer", "buffer"],
    result: "i32",
  },
  /**
   * int EVP_DecryptInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *type, ENGINE *impl,
   *                        const unsigned char *key, const unsigned char *iv)
   */
  EVP_DecryptInit_ex: {
    parameters: ["pointer", "pointer", "pointer", "buffer", "buffer"],
    result: "i32",
  },
  /** int EVP_CIPHER_CTX_ctrl(EVP_CIPHER_CTX *ctx, int type, int arg, void *ptr) */
  EVP_CIPHER_CTX_ctrl: { parameters: ["pointer", "i32", "i32", "buffer"], result: "i32" },
  /**
   * int EVP_EncryptUpdate(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl,
   *                       const unsigned char *in, int inl)
   */
  EVP_EncryptUpdate: {
    parameters: ["pointer", "buffer", "buffer", "buffer", "i32"],
    result: "i32",
  },
  /** int EVP_EncryptFinal_ex(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl) */
  EVP_EncryptFinal_ex: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  /**
   * int EVP_DecryptUpdate(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl,
   *                       const unsigned char *in, int inl)
   */
  EVP_DecryptUpdate: {
    parameters: ["pointer", "buffer", "buffer", "buffer", "i32"],
    result: "i32",
  },
  /** int EVP_DecryptFinal_ex(EVP_CIPHER_CTX *ctx, unsigned char *outm, int *outl) */
  EVP_DecryptFinal_ex: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  /** unsigned long ERR_peek_last_error(void) */
  ERR_peek_last_error: { parameters: [], result: "u64" },
  /** void ERR_error_string_n(unsigned long e, char *buf, size_t len) */
  ERR_error_string_n: { parameters: ["u64", "buffer", "usize"], result: "void" },
  /** void ERR_clear_error(void) */
  ERR_clear_error: { parameters: [], result: "void" },
} as const satisfies Deno.ForeignLibraryInterface;

// No `NumberArgs` as in libc.ts: the per-packet calls take only `int` and pointers; the one
// 64-bit parameter belongs to the error path, where a BigInt costs nothing that matters.
type Libcrypto = Deno.DynamicLibrary<typeof symbols>["symbols"];

/** <openssl/evp.h> control codes. */
const EVP_CTRL_AEAD_GET_TAG = 0x10;
const EVP_CTRL_AEAD_SET_TAG = 0x11;
/** EVP_MAX_BLOCK_LENGTH: the most a Final call may write (nothing, for these two ciphers). */
const EVP_MAX_BLOCK_LENGTH = 32;

/** The data channel's ciphers. */
export type CipherName = "aes-256-gcm" | "chacha20-poly1305";
/** Key length in bytes of both ciphers. */
export const KEY_LEN = 32;
/** Nonce (IV) length in bytes of both ciphers. */
export const NONCE_LEN = 12;
/** Authentication tag length in bytes of both ciphers. */
export const TAG_LEN = 16;

const LIBRARY_NAMES = ["libcrypto.so.3", "libcrypto.so"];
const CIPHER_LABELS: Record<CipherName, string> = {
  "aes-256-gcm": "AES-256-GCM",
  "chacha20-poly1305": "ChaCha20-Poly1305",
};

type Loaded = { lib: Libcrypto; error?: never } | { lib?: never; error: string };
let loaded: Loaded | undefined;

/** Opens libcrypto on first use, so that importing this module needs no permission. */
function load(): Loaded {
  loaded ??= open();
  return loaded;
}

function open(): Loaded {
  let lib: Libcrypto | undefined;
  let failure = "";
  for (const name of LIBRARY_NAMES) {
    try {
      lib = Deno.dlopen(name, symbols).symbols;
      break;
    } catch (error) {
      if (
        error instanceof Deno.errors.NotCapable || error instanceof Deno.errors.PermissionDenied
      ) {
        return { error: "libcrypto cannot be loaded without FFI permission: run with --allow-ffi" };
      }
      failure ||= error instanceof Error ? error.message : String(error);
    }
  }
  if (lib === undefined) {
    return {
      error: /cannot open shared object/.test(failure)
        ? "libcrypto.so.3 not found: install OpenSSL 3 (Debian: apt-get install libssl3t64)"
        : `libcrypto.so.3 cannot be loaded: ${failure}`,
    };
  }
  // A cipher symbol can exist while its provider is not loaded (FIPS-only configurations):
  // only setting a key on a real context proves the cipher works.
  for (const cipher of ["aes-256-gcm", "chacha20-poly1305"] as const) {
    const ctx = lib.EVP_CIPHER_CTX_new();
    const ok = ctx !== null &&
      lib.EVP_EncryptInit_ex(ctx, cipherOf(lib, cipher), null, new Uint8Array(KEY_LEN), null) === 1;
    lib.EVP_CIPHER_CTX_free(ctx);
    if (!ok) {
      lib.ERR_clear_error();
      return { error: `libcrypto has no usable ${CIPHER_LABELS[cipher]} cipher` };
    }
  }
  return { lib };
}

function cipherOf(lib: Libcrypto, cipher: CipherName): Deno.PointerValue {
  return cipher === "aes-256-gcm" ? lib.EVP_aes_256_gcm() : lib.EVP_chacha20_poly1305();
}

/**
 * Why the AEAD cannot be used, or `undefined` when libcrypto loads and both ciphers work.
 * Never throws.
 *
 * @example
 * ```ts
 * const missing = cryptoUnavailable();
 * if (missing) console.warn(`UDP data channel disabled: ${missing}`);
 * ```
 */
export function cryptoUnavailable(): string | undefined {
  return load().error;
}

/** A libcrypto call failed where it cannot fail on bad input; `call` names it. */
export class CryptoError extends Error {
  /** The failed call, e.g. `EVP_EncryptUpdate`. */
  readonly call: string;

  constructor(call: string, detail: string) {
    super(`${call} failed: ${detail}`);
    this.name = "CryptoError";
    this.call = call;
  }
}

/** A {@linkcode CryptoError} for `call`, with OpenSSL's reason from the thread's error queue. */
function failure(lib: Libcrypto, call: string): CryptoError {
  const code = lib.ERR_peek_last_error();
  lib.ERR_clear_error();
  if (code === 0n) return new CryptoError(call, "no OpenSSL error recorded");
  const text = new Uint8Array(256);
  lib.ERR_error_string_n(code, text, BigInt(text.length));
  const end = text.indexOf(0);
  return new CryptoError(call, new TextDecoder().decode(text.subarray(0, end < 0 ? 0 : end)));
}

/** Whether byte ranges [a, a+aLength) and [b, b+bLength) of one buffer partly overlap. */
function partlyOverlap(a: Uint8Array, aLength: number, b: Uint8Array, bLength: number): boolean {
  if (a.buffer !== b.buffer || a.byteOffset === b.byteOffset) return false;
  return a.byteOffset < b.byteOffset + bLength && b.byteOffset < a.byteOffset + aLength;
}

/** Whether byte ranges [a, a+aLength) and [b, b+bLength) share any byte. */
function overlap(a: Uint8Array, aLength: number, b: Uint8Array, bLength: number): boolean {
  if (a.buffer !== b.buffer || aLength === 0 || bLength === 0) return false;
  return a.byteOffset < b.byteOffset + bLength && b.byteOffset < a.byteOffset + aLength;
}

/**
 * One direction of an AEAD: an `EVP_CIPHER_CTX` with its cipher and key set once, then one
 * {@linkcode Aead.seal} or {@linkcode Aead.open} per packet with a fresh nonce.
 *
 * Buffers: `output` is either `input` itself (same start: in place) or does not overlap it;
 * partly overlapping views throw a `RangeError`. Calls allocate nothing: a detached tag is
 * read from and written to the caller's view through a scratch copy of 16 bytes.
 *
 * @example
 * ```ts
 * const key = crypto.getRandomValues(new Uint8Array(KEY_LEN));
 * using sealer = Aead.create("aes-256-gcm", key, true);
 * using opener = Aead.create("aes-256-gcm", key, false);
 * const nonce = new Uint8Array(NONCE_LEN);
 * const aad = new Uint8Array(8);
 * const packet = new Uint8Array(1400 + TAG_LEN);
 * const sealed = sealer.seal(nonce, aad, aad.length, packet, 1400, packet);
 * const opened = opener.open(nonce, aad, aad.length, packet, sealed, packet); // 1400, or -1
 * ```
 */
export class Aead implements Disposable {
  /** The cipher this context runs. */
  readonly cipher: CipherName;
  /** true: seal only; false: open only. */
  readonly encrypt: boolean;

  readonly #lib: Libcrypto;
  #ctx: Deno.PointerValue;
  // Off-heap backing stores: V8 keeps small typed arrays on its heap, where they may move.
  readonly #outl = new Int32Array(new ArrayBuffer(4));
  readonly #tag = new Uint8Array(new ArrayBuffer(TAG_LEN));
  readonly #final = new Uint8Array(new ArrayBuffer(EVP_MAX_BLOCK_LENGTH));

  private constructor(
    lib: Libcrypto,
    ctx: Deno.PointerObject,
    cipher: CipherName,
    encrypt: boolean,
  ) {
    this.#lib = lib;
    this.#ctx = ctx;
    this.cipher = cipher;
    this.encrypt = encrypt;
  }

  /**
   * A context for `cipher` with `key` (32 bytes), sealing when `encrypt` is true and opening
   * otherwise. Throws a `RangeError` for a bad key length, and an `Error` saying what is
   * missing when libcrypto cannot be used.
   */
  static create(cipher: CipherName, key: Uint8Array, encrypt: boolean): Aead {
    if (!(cipher in CIPHER_LABELS)) {
      throw new TypeError(`Cannot create AEAD "${cipher}": use aes-256-gcm or chacha20-poly1305`);
    }
    if (key.length !== KEY_LEN) {
      throw new RangeError(
        `Cannot create ${cipher} context: key must be ${KEY_LEN} bytes, got ${key.length}`,
      );
    }
    const { lib, error } = load();
    if (error !== undefined) throw new Error(`Cannot create ${cipher} context: ${error}`);
    const ctx = lib.EVP_CIPHER_CTX_new();
    if (ctx === null) throw failure(lib, "EVP_CIPHER_CTX_new");
    const init = encrypt ? "EVP_EncryptInit_ex" : "EVP_DecryptInit_ex";
    if (lib[init](ctx, cipherOf(lib, cipher), null, key, null) !== 1) {
      const thrown = failure(lib, init);
      lib.EVP_CIPHER_CTX_free(ctx);
      throw thrown;
    }
    return new Aead(lib, ctx, cipher, encrypt);
  }

  /**
   * Encrypts `input[0, length)`, authenticating `aad[0, aadLength)` with it, under `nonce`
   * (12 bytes, never reused with this key) into `output`: the ciphertext, then the 16-byte
   * tag at `output[length, length + 16)`. Returns `length + 16`.
   *
   * `output` may be `input` itself when it has 16 spare bytes after the data.
   */
  seal(
    nonce: Uint8Array,
    aad: Uint8Array,
    aadLength: number,
    input: Uint8Array,
    length: number,
    output: Uint8Array,
  ): number {
    const ctx = this.#use(true, nonce, aad, aadLength, input, length);
    if (output.length < length + TAG_LEN) {
      throw new RangeError(
        `Cannot seal ${length} bytes: output holds ${output.length}, needs ${length + TAG_LEN}`,
      );
    }
    if (partlyOverlap(input, length, output, length + TAG_LEN)) {
      throw new RangeError("Cannot seal: output partly overlaps input");
    }
    this.#encrypt(ctx, nonce, aad, aadLength, input, length, output);
    output.set(this.#tag, length);
    return length + TAG_LEN;
  }

  /**
   * {@linkcode Aead.seal} with the tag kept apart, for formats that put it before the
   * ciphertext (OpenVPN): the ciphertext goes to `output[0, length)` and the tag to
   * `tag[0, 16)`. Returns `length`.
   *
   * `output` may be `input` itself; `tag` must not overlap `output[0, length)`.
   */
  sealDetached(
    nonce: Uint8Array,
    aad: Uint8Array,
    aadLength: number,
    input: Uint8Array,
    length: number,
    output: Uint8Array,
    tag: Uint8Array,
  ): number {
    const ctx = this.#use(true, nonce, aad, aadLength, input, length);
    if (output.length < length) {
      throw new RangeError(`Cannot seal ${length} bytes: output holds ${output.length}`);
    }
    if (partlyOverlap(input, length, output, length)) {
      throw new RangeError("Cannot seal: output partly overlaps input");
    }
    if (tag.length < TAG_LEN) {
      throw new RangeError(`Cannot seal: tag must be ${TAG_LEN} bytes, got ${tag.length}`);
    }
    if (overlap(tag, TAG_LEN, output, length)) {
      throw new RangeError("Cannot seal: tag overlaps output");
    }
    this.#encrypt(ctx, nonce, aad, aadLength, input, length, output);
    tag.set(this.#tag);
    return length;
  }

  /**
   * Decrypts `input[0, length)`, whose last 16 bytes are the tag, under `nonce` and
   * `aad[0, aadLength)`, writing the plaintext into `output[0, length - 16)`. Returns the
   * plaintext length, or -1 when the packet is too short or does not authenticate: a forged
   * or corrupted packet is an ordinary event, so bad data never throws.
   *
   * `output` may be `input` itself. On -1, `output` holds unauthenticated bytes: drop them.
   */
  open(
    nonce: Uint8Array,
    aad: Uint8Array,
    aadLength: number,
    input: Uint8Array,
    length: number,
    output: Uint8Array,
  ): number {
    const ctx = this.#use(false, nonce, aad, aadLength, input, length);
    const plain = length - TAG_LEN;
    if (plain < 0) return -1;
    if (output.length < plain) {
      throw new RangeError(`Cannot open ${length} bytes: output holds ${output.length}`);
    }
    if (partlyOverlap(input, length, output, plain)) {
      throw new RangeError("Cannot open: output partly overlaps input");
    }
    // Copied before decrypting: in place, the tag bytes sit right after the plaintext.
    const tag = this.#tag;
    for (let i = 0; i < TAG_LEN; i++) tag[i] = input[plain + i]!;
    return this.#decrypt(ctx, nonce, aad, aadLength, input, plain, output);
  }

  /**
   * {@linkcode Aead.open} of a ciphertext `input[0, length)` whose 16-byte tag is `tag[0, 16)`,
   * wherever it sits. Writes the plaintext into `output[0, length)` and returns `length`, or
   * -1 when it does not authenticate (never throws for bad data).
   *
   * `output` may be `input` itself. On -1, `output` holds unauthenticated bytes: drop them.
   */
  openDetached(
    nonce: Uint8Array,
    aad: Uint8Array,
    aadLength: number,
    input: Uint8Array,
    length: number,
    tag: Uint8Array,
    output: Uint8Array,
  ): number {
    const ctx = this.#use(false, nonce, aad, aadLength, input, length);
    if (output.length < length) {
      throw new RangeError(`Cannot open ${length} bytes: output holds ${output.length}`);
    }
    if (partlyOverlap(input, length, output, length)) {
      throw new RangeError("Cannot open: output partly overlaps input");
    }
    if (tag.length < TAG_LEN) {
      throw new RangeError(`Cannot open: tag must be ${TAG_LEN} bytes, got ${tag.length}`);
    }
    // Copied first, so that an output over the tag cannot change it before it is checked.
    const scratch = this.#tag;
    for (let i = 0; i < TAG_LEN; i++) scratch[i] = tag[i]!;
    return this.#decrypt(ctx, nonce, aad, aadLength, input, length, output);
  }

  /**
   * Steps 1-3, 5 and 6 of a seal: ciphertext of `input[0, length)` into `output`, tag into
   * the scratch `#tag`. Arguments are checked by the caller.
   */
  #encrypt(
    ctx: Deno.PointerObject,
    nonce: Uint8Array,
    aad: Uint8Array,
    aadLength: number,
    input: Uint8Array,
    length: number,
    output: Uint8Array,
  ): void {
    const lib = this.#lib;
    const outl = this.#outl;
    if (lib.EVP_EncryptInit_ex(ctx, null, null, null, nonce) !== 1) {
      throw failure(lib, "EVP_EncryptInit_ex");
    }
    // out = NULL makes an Update call take AAD. Empty ranges skip their call, so that an
    // empty view can never reach C as a NULL `out` and turn a data call into an AAD call.
    if (aadLength > 0 && lib.EVP_EncryptUpdate(ctx, null, outl, aad, aadLength) !== 1) {
      throw failure(lib, "EVP_EncryptUpdate");
    }
    if (length > 0) {
      if (lib.EVP_EncryptUpdate(ctx, output, outl, input, length) !== 1) {
        throw failure(lib, "EVP_EncryptUpdate");
      }
      // Both ciphers are stream ciphers: anything else would mean a silently short packet.
      if (outl[0] !== length) {
        throw new CryptoError("EVP_EncryptUpdate", `wrote ${outl[0]} of ${length} bytes`);
      }
    }
    if (lib.EVP_EncryptFinal_ex(ctx, this.#final, outl) !== 1) {
      throw failure(lib, "EVP_EncryptFinal_ex");
    }
    // The tag goes through scratch because a pointer into a caller's buffer at an offset
    // would take a new view (an allocation) per packet.
    if (lib.EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, TAG_LEN, this.#tag) !== 1) {
      throw failure(lib, "EVP_CIPHER_CTX_ctrl(EVP_CTRL_AEAD_GET_TAG)");
    }
  }

  /**
   * Steps 1-5 of an open: plaintext of `input[0, plain)` into `output`, checked against the
   * tag the caller put in the scratch `#tag`. Returns `plain`, or -1 when it does not
   * authenticate.
   */
  #decrypt(
    ctx: Deno.PointerObject,
    nonce: Uint8Array,
    aad: Uint8Array,
    aadLength: number,
    input: Uint8Array,
    plain: number,
    output: Uint8Array,
  ): number {
    const lib = this.#lib;
    const outl = this.#outl;
    if (lib.EVP_DecryptInit_ex(ctx, null, null, null, nonce) !== 1) {
      throw failure(lib, "EVP_DecryptInit_ex");
    }
    if (aadLength > 0 && lib.EVP_DecryptUpdate(ctx, null, outl, aad, aadLength) !== 1) {
      throw failure(lib, "EVP_DecryptUpdate");
    }
    if (plain > 0) {
      if (lib.EVP_DecryptUpdate(ctx, output, outl, input, plain) !== 1) {
        throw failure(lib, "EVP_DecryptUpdate");
      }
      if (outl[0] !== plain) {
        throw new CryptoError("EVP_DecryptUpdate", `wrote ${outl[0]} of ${plain} bytes`);
      }
    }
    if (lib.EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, TAG_LEN, this.#tag) !== 1) {
      throw failure(lib, "EVP_CIPHER_CTX_ctrl(EVP_CTRL_AEAD_SET_TAG)");
    }
    return lib.EVP_DecryptFinal_ex(ctx, this.#final, outl) > 0 ? plain : -1;
  }

  /** The live context after checking the arguments both directions share. */
  #use(
    encrypt: boolean,
    nonce: Uint8Array,
    aad: Uint8Array,
    aadLength: number,
    input: Uint8Array,
    length: number,
  ): Deno.PointerObject {
    const call = encrypt ? "seal" : "open";
    const ctx = this.#ctx;
    if (ctx === null) {
      throw new Deno.errors.BadResource(`Cannot ${call}: ${this.cipher} context is closed`);
    }
    if (encrypt !== this.encrypt) {
      throw new TypeError(
        `Cannot ${call}: this ${this.cipher} context was created to ${
          this.encrypt ? "seal" : "open"
        }`,
      );
    }
    if (nonce.length !== NONCE_LEN) {
      throw new RangeError(`Cannot ${call}: nonce must be ${NONCE_LEN} bytes, got ${nonce.length}`);
    }
    if (!(aadLength >= 0 && aadLength <= aad.length)) {
      throw new RangeError(`Cannot ${call}: aadLength ${aadLength} is outside aad (${aad.length})`);
    }
    if (!(length >= 0 && length <= input.length)) {
      throw new RangeError(`Cannot ${call}: length ${length} is outside input (${input.length})`);
    }
    return ctx;
  }

  /** Frees the context (`EVP_CIPHER_CTX_free` wipes the key); safe to call twice. */
  close(): void {
    if (this.#ctx === null) return;
    this.#lib.EVP_CIPHER_CTX_free(this.#ctx);
    this.#ctx = null;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
