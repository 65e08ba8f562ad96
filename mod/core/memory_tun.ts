/**
 * An in-memory {@linkcode TunDevice} for tests: packets the test injects are what `read()`
 * returns, and packets the code under test writes are kept for the test to take.
 *
 * @module
 */

import type { TunDevice, TunStats } from "../../ffi/tun.ts";

/** Options of {@linkcode MemoryTun}. */
export interface MemoryTunOptions {
  /** Interface name to report. Default `mem0`. */
  name?: string;
  /** Whether packets carry a virtio-net header. Default false. */
  vnetHdr?: boolean;
  /** Most packets one read returns. Default 64. */
  batchSize?: number;
  /** Most packets held each way before new ones are dropped. Default 1024. */
  capacity?: number;
}

/** A TUN device backed by two bounded queues. */
export class MemoryTun implements TunDevice {
  readonly name: string;
  readonly vnetHdr: boolean;
  readonly batchSize: number;
  readonly stats: TunStats = { readPackets: 0, writtenPackets: 0, writeErrors: 0 };
  /** Packets dropped because a queue was full. */
  dropped = 0;

  readonly #capacity: number;
  readonly #inbound: Uint8Array[] = [];
  readonly #outbound: Uint8Array[] = [];
  #closed = false;
  #wakeReader: (() => void) | undefined;
  #wakeTaker: (() => void) | undefined;

  constructor(options: MemoryTunOptions = {}) {
    this.name = options.name ?? "mem0";
    this.vnetHdr = options.vnetHdr ?? false;
    this.batchSize = options.batchSize ?? 64;
    this.#capacity = options.capacity ?? 1024;
  }

  /** Queues a copy of `packet` as if the kernel had routed it into the device. */
  inject(packet: Uint8Array): boolean {
    if (this.#closed || this.#inbound.length >= this.#capacity) {
      this.dropped++;
      return false;
    }
    this.#inbound.push(packet.slice());
    this.#wakeReader?.();
    return true;
  }

  /** Takes every packet written so far, waiting until there is one or the device closes. */
  async take(): Promise<Uint8Array[]> {
    while (this.#outbound.length === 0 && !this.#closed) {
      await new Promise<void>((resolve) => this.#wakeTaker = resolve);
    }
    return this.#outbound.splice(0);
  }

  async read(bufs: Uint8Array[], sizes: number[]): Promise<number> {
    while (this.#inbound.length === 0 && !this.#closed) {
      await new Promise<void>((resolve) => this.#wakeReader = resolve);
    }
    const limit = Math.min(bufs.length, this.batchSize);
    let count = 0;
    while (count < limit && this.#inbound.length > 0) {
      const packet = this.#inbound.shift()!;
      const buf = bufs[count]!;
      if (packet.length > buf.length) {
        throw new RangeError(
          `MemoryTun.read(): a ${packet.length}-byte packet does not fit a ${buf.length}-byte buffer`,
        );
      }
      buf.set(packet);
      sizes[count++] = packet.length;
    }
    this.stats.readPackets += count;
    return count;
  }

  write(bufs: Uint8Array[], count = bufs.length): number {
    let written = 0;
    for (let i = 0; i < count && !this.#closed; i++) {
      if (this.#outbound.length >= this.#capacity) {
        this.dropped++;
        continue;
      }
      this.#outbound.push(bufs[i]!.slice());
      written++;
    }
    this.stats.writtenPackets += written;
    this.stats.writeErrors += count - written;
    if (written > 0) this.#wakeTaker?.();
    return written;
  }

  close(): void {
    this.#closed = true;
    this.#wakeReader?.();
    this.#wakeTaker?.();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
