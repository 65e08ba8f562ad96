/**
 * Bounded waits for tests: every await on something outside the test's own code (a socket, a
 * child process, a timer of the product) goes through one of these, so that a broken product
 * fails fast with a message saying what never happened, instead of hanging the run.
 *
 * @module
 */

/** `promise`, or an error naming `what` once `ms` have passed; the timer never outlives it. */
export async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Polls `condition` every 10 ms; throws naming `what` once `ms` have passed without it. */
export async function waitUntil(condition: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = performance.now() + ms;
  while (!condition()) {
    if (performance.now() > deadline) throw new Error(`timed out after ${ms} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/**
 * The exit status of `child`, waiting at most `ms`; past that the child is killed (SIGKILL)
 * and the call throws naming `what`.
 */
export async function exitOf(
  child: Deno.ChildProcess,
  ms: number,
  what: string,
): Promise<Deno.CommandStatus> {
  try {
    return await within(child.status, ms, `${what} exits`);
  } catch (error) {
    kill(child);
    // SIGKILL cannot be ignored; the bound only guards against a process stuck in the kernel.
    await within(child.status, 5000, `${what} exits after SIGKILL`);
    throw error;
  }
}

/** Sends `signal` to `child` unless it has exited already. */
export function kill(child: Deno.ChildProcess, signal: Deno.Signal = "SIGKILL"): void {
  try {
    child.kill(signal);
  } catch {
    // Already exited: nothing to stop.
  }
}
