/**
 * Linux TUN devices through `/dev/net/tun`, read and written in batches.
 *
 * Read path: the fd is non-blocking. `read()` first drains what the kernel already holds with
 * synchronous `read(2)` calls (about 3 us each); only when the queue is empty does it await one
 * poll on a worker thread (ffi/readiness.ts), which `close()` wakes at once. No FFI call is ever
 * left pending on a closed device: an awaited blocking read could not be cancelled and would
 * keep the process alive (Deno waits for every pending nonblocking FFI call before it exits).
 *
 * Write path: synchronous `write(2)` per packet (about 3 us); a TUN write never blocks.
 *
 * @module
 */

import { check, cString, errno, ErrnoError, libc } from "./libc.ts";
import { Readiness } from "./readiness.ts";
import {
  EAGAIN,
  EINTR,
  IFF_NO_PI,
  IFF_TUN,
  IFF_VNET_HDR,
  IFNAMSIZ,
  O_CLOEXEC,
  O_NONBLOCK,
  O_RDWR,
  TUN_F_CSUM,
  TUN_F_TSO4,
  TUN_F_TSO6,
  TUN_F_USO4,
  TUN_F_USO6,
  TUNSETIFF,
  TUNSETOFFLOAD,
  TUNSETVNETHDRSZ,
} from "./constants.ts";

/** Size of `struct virtio_net_hdr`, which leads every packet on a device with offload. */
export const VNET_HDR_LEN = 10;

/** The largest packet a read can return: a 64 KiB super-packet and its virtio-net header. */
export const MAX_PACKET = 65535 + VNET_HDR_LEN;

/** What the kernel took of the offloads asked for. */
export interface TunOffloads {
  /** Packets may carry a partial checksum (`TUN_F_CSUM`). */
  csum: boolean;
  /** TCP segmentation offload for IPv4 (`TUN_F_TSO4`). */
  tso4: boolean;
  /** TCP segmentation offload for IPv6 (`TUN_F_TSO6`). */
  tso6: boolean;
  /** UDP segmentation offload for IPv4 (`TUN_F_USO4`, kernel 6.2+). */
  uso4: boolean;
  /** UDP segmentation offload for IPv6 (`TUN_F_USO6`, kernel 6.2+). */
  uso6: boolean;
}

/** Counters of one device; they only grow. */
export interface TunStats {
  /** Packets returned by `read()`. */
  readPackets: number;
  /** Packets the kernel accepted from `write()`. */
  writtenPackets: number;
  /** Packets the kernel refused in `write()` (malformed, or the device went down). */
  writeErrors: number;
}

/**
 * A virtual NIC moved in batches. `bufs[i]` are caller-owned buffers, reused across calls, so
 * that a read allocates nothing per packet.
 */
export interface TunDevice extends Disposable {
  /** The kernel's name for the interface, e.g. `vpn0`. */
  readonly name: string;
  /** True when every packet read or written starts with a {@linkcode VNET_HDR_LEN}-byte header. */
  readonly vnetHdr: boolean;
  /** How many packets one `read()` may return at most. */
  readonly batchSize: number;
  /** Counters since creation. */
  readonly stats: TunStats;
  /**
   * Waits for packets and reads up to `bufs.length` of them, packet i into `bufs[i]` with its
   * length in `sizes[i]`. Resolves the count, or 0 once the device is closed.
   */
  read(bufs: Uint8Array[], sizes: number[]): Promise<number>;
  /** Writes `bufs[0..count)`, each one whole packet. Returns how many the kernel accepted. */
  write(bufs: Uint8Array[], count?: number): number;
  /** Closes the device; the interface disappears. Safe to call twice. */
  close(): void;
}

/** Options of {@linkcode LinuxTun.create}. */
export interface TunOptions {
  /** Interface name or pattern with `%d`, at most 15 bytes. Default `vpn%d`. */
  name?: string;
  /** Ask for `IFF_VNET_HDR` and the kernel's TCP/UDP segmentation offloads. Default false. */
  offload?: boolean;
  /** Most packets one read returns. Default 64. */
  batchSize?: number;
  /** How long one poll waits before looking at the device again, in ms. Default 1000. */
  pollTimeoutMs?: number;
}

/** A TUN device could not be created; `message` says why and what to do. */
export class TunError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "TunError";
  }
}

// Offload sets tried in order: newer kernels take all, older ones refuse USO with EINVAL.
const OFFLOAD_SETS = [
  TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6,
  TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
  TUN_F_CSUM,
];

/** Checks a TUN interface name before any ioctl sees it. */
export function validateTunName(name: string): void {
  const length = new TextEncoder().encode(name).length;
  if (length === 0) throw new RangeError("Cannot create TUN: interface name is empty");
  if (length >= IFNAMSIZ) {
    throw new RangeError(
      `Cannot create TUN "${name}": interface name is ${length} bytes, at most ${
        IFNAMSIZ - 1
      } are allowed`,
    );
  }
  if (/[\s/:]/.test(name)) {
    throw new RangeError(`Cannot create TUN "${name}": name must not contain spaces, "/" or ":"`);
  }
}

/** Encodes `struct ifreq` for TUNSETIFF: the name, then `ifr_flags` at offset 16. */
export function encodeIfreq(name: string, flags: number): Uint8Array<ArrayBuffer> {
  const ifreq = new Uint8Array(40);
  ifreq.set(new TextEncoder().encode(name));
  new DataView(ifreq.buffer).setUint16(16, flags, true);
  return ifreq;
}

/** Reads the NUL-terminated interface name back out of a `struct ifreq`. */
export function decodeIfreqName(ifreq: Uint8Array): string {
  const end = ifreq.indexOf(0);
  return new TextDecoder().decode(ifreq.subarray(0, end < 0 || end > IFNAMSIZ ? IFNAMSIZ : end));
}

function offloadsOf(flags: number): TunOffloads {
  return {
    csum: (flags & TUN_F_CSUM) !== 0,
    tso4: (flags & TUN_F_TSO4) !== 0,
    tso6: (flags & TUN_F_TSO6) !== 0,
    uso4: (flags & TUN_F_USO4) !== 0,
    uso6: (flags & TUN_F_USO6) !== 0,
  };
}

/** A Linux TUN device (`IFF_TUN | IFF_NO_PI`, optionally `IFF_VNET_HDR`). */
export class LinuxTun implements TunDevice {
  readonly name: string;
  readonly vnetHdr: boolean;
  readonly batchSize: number;
  /** Offloads the kernel took; all false without `offload: true`. */
  readonly offloads: TunOffloads;
  readonly stats: TunStats = { readPackets: 0, writtenPackets: 0, writeErrors: 0 };

  readonly #fd: number;
  readonly #ready: Readiness;
  #reading = false;
  readonly #pollTimeoutMs: number;

  private constructor(
    fd: number,
    ready: Readiness,
    name: string,
    offloadFlags: number,
    vnetHdr: boolean,
    options: TunOptions,
  ) {
    this.#fd = fd;
    this.#ready = ready;
    this.name = name;
    this.vnetHdr = vnetHdr;
    this.offloads = offloadsOf(offloadFlags);
    this.batchSize = options.batchSize ?? 64;
    this.#pollTimeoutMs = options.pollTimeoutMs ?? 1000;
  }

  /** Creates a TUN interface; it lives until `close()` or the end of the process. */
  static create(options: TunOptions = {}): LinuxTun {
    const requested = options.name ?? "vpn%d";
    validateTunName(requested);
    const c = libc();
    const fd = c.open(cString("/dev/net/tun"), O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) throw openError(errno());
    try {
      const vnetHdr = options.offload === true;
      const ifreq = encodeIfreq(requested, IFF_TUN | IFF_NO_PI | (vnetHdr ? IFF_VNET_HDR : 0));
      if (c.ioctl(fd, TUNSETIFF, ifreq) < 0) throw setIffError(requested, errno());
      let offloadFlags = 0;
      if (vnetHdr) {
        const size = new Int32Array([VNET_HDR_LEN]);
        check("ioctl(TUNSETVNETHDRSZ)", c.ioctl(fd, TUNSETVNETHDRSZ, size));
        offloadFlags = negotiateOffload(fd);
      }
      const ready = new Readiness(fd);
      return new LinuxTun(fd, ready, decodeIfreqName(ifreq), offloadFlags, vnetHdr, options);
    } catch (error) {
      c.close(fd);
      throw error;
    }
  }

  async read(bufs: Uint8Array[], sizes: number[]): Promise<number> {
    if (this.#reading) throw new Error(`TUN ${this.name}: read() is already in progress`);
    this.#reading = true;
    try {
      while (!this.#ready.closed) {
        const count = this.#drain(bufs, sizes);
        if (count > 0) return count;
        if (!await this.#ready.wait(this.#pollTimeoutMs)) break;
      }
      return 0;
    } finally {
      this.#reading = false;
    }
  }

  /** Synchronous reads until the kernel queue is empty or the batch is full. */
  #drain(bufs: Uint8Array[], sizes: number[]): number {
    const read = libc().read;
    const limit = Math.min(bufs.length, this.batchSize);
    let count = 0;
    let retried = false;
    while (count < limit) {
      const buf = bufs[count]!;
      const n = read(this.#fd, buf, buf.length);
      if (n < 0) {
        const code = errno();
        if (code === EAGAIN) break;
        if (code === EINTR) continue;
        // errno is read by a second FFI call, and the runtime may set it in between: seen here
        // as ENOENT, which read(2) on a TUN never returns, where the read at once after gave
        // EAGAIN. Only an error that repeats is the kernel's.
        if (!retried) {
          retried = true;
          continue;
        }
        throw new ErrnoError(`read(${this.name})`, code);
      }
      retried = false;
      sizes[count++] = n;
    }
    this.stats.readPackets += count;
    return count;
  }

  write(bufs: Uint8Array[], count = bufs.length): number {
    if (this.#ready.closed) return 0;
    const write = libc().write;
    let written = 0;
    for (let i = 0; i < count; i++) {
      const buf = bufs[i]!;
      if (write(this.#fd, buf, buf.length) === buf.length) written++;
    }
    this.stats.writtenPackets += written;
    this.stats.writeErrors += count - written;
    return written;
  }

  close(): void {
    this.#ready.close(() => libc().close(this.#fd));
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

function negotiateOffload(fd: number): number {
  for (const flags of OFFLOAD_SETS) {
    if (libc().ioctl_int(fd, TUNSETOFFLOAD, flags) === 0) return flags;
  }
  // The device still works with a virtio-net header and no offload: every packet is plain.
  return 0;
}

function openError(code: number): Error {
  const cause = new ErrnoError("open(/dev/net/tun)", code);
  if (cause.code === "ENOENT" || cause.code === "ENODEV") {
    return new TunError(
      "Cannot create TUN: /dev/net/tun is missing; load the module (modprobe tun) or, in a container, pass the device in (--device /dev/net/tun)",
      { cause },
    );
  }
  if (cause.code === "EACCES" || cause.code === "EPERM") {
    return new TunError(
      "Cannot create TUN: opening /dev/net/tun was refused; needs root or CAP_NET_ADMIN",
      { cause },
    );
  }
  return cause;
}

function setIffError(name: string, code: number): Error {
  const cause = new ErrnoError(`ioctl(TUNSETIFF, "${name}")`, code);
  if (cause.code === "EPERM" || cause.code === "EACCES") {
    return new TunError(`Cannot create TUN "${name}": needs root or CAP_NET_ADMIN`, { cause });
  }
  if (cause.code === "EBUSY") {
    return new TunError(
      `Cannot create TUN "${name}": an interface of that name exists and is not a free TUN; choose another name`,
      { cause },
    );
  }
  if (cause.code === "EINVAL") {
    return new TunError(
      `Cannot create TUN "${name}": the kernel refused the name or an interface of that name is of another type`,
      { cause },
    );
  }
  return cause;
}
