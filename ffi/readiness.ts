/**
 * Waiting for a non-blocking fd to become readable without blocking the event loop, and
 * stopping that wait at once: the owner of a TUN or a UDP socket drains it synchronously and
 * only awaits {@linkcode Readiness.wait} when it is empty.
 *
 * The wait is one `poll(2)` on a worker thread (Deno FFI `nonblocking`, 30-50 us) over the fd and
 * an eventfd. `close()` writes the eventfd, so the poll returns at once; the watched fd is
 * released only after that, since a poll still using a closed (and perhaps reused) descriptor
 * number would watch the wrong file, and a pending FFI call would keep the process alive.
 *
 * @module
 */

import { check, libc } from "./libc.ts";
import { EFD_CLOEXEC, EFD_NONBLOCK, POLLIN } from "./constants.ts";

/** Readability of one fd, with a wake-up for closing. */
export class Readiness {
  #wakeFd: number;
  #closed = false;
  #polling: Promise<number> | undefined;
  #release: (() => void) | undefined;
  // struct pollfd[2] { int fd; short events; short revents; }: the fd, then the eventfd.
  readonly #pollfds = new Uint8Array(16);

  /** Watches `fd`; throws an `ErrnoError` when no eventfd can be had. */
  constructor(fd: number) {
    this.#wakeFd = check("eventfd", libc().eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    const view = new DataView(this.#pollfds.buffer);
    view.setInt32(0, fd, true);
    view.setInt16(4, POLLIN, true);
    view.setInt32(8, this.#wakeFd, true);
    view.setInt16(12, POLLIN, true);
  }

  /** True once {@linkcode close} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Resolves when the fd may be readable or `timeoutMs` passed (true), or when closed (false).
   * A spurious wake-up is possible: the caller drains and waits again.
   */
  async wait(timeoutMs: number): Promise<boolean> {
    if (this.#closed) return false;
    this.#polling = libc().poll_async(this.#pollfds, 2, timeoutMs);
    await this.#polling;
    this.#polling = undefined;
    if (!this.#closed) return true;
    this.#finish();
    return false;
  }

  /**
   * Stops waiting; `release` (closing the watched fd) runs as soon as no poll uses it: now, or
   * when the pending wait returns. Safe to call twice.
   */
  close(release: () => void): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#release = release;
    if (this.#polling === undefined) this.#finish();
    else libc().write(this.#wakeFd, new BigUint64Array([1n]), 8);
  }

  #finish(): void {
    if (this.#wakeFd < 0) return;
    this.#release?.();
    libc().close(this.#wakeFd);
    this.#wakeFd = -1;
  }
}
