/**
 * The client's reconnect delays, as README.md and PROTOCOL.md state them: 1 s doubling to
 * 60 s, less up to 25% jitter. The numbers are literals, so a changed constant fails.
 */

import { assert, assertEquals } from "./_assert.ts";
import { backoff } from "../mod/native/client.ts";

Deno.test("backoff() without jitter waits 1, 2, 4 ... 32 s, then 60 s for good", () => {
  const ceilings = Array.from({ length: 12 }, (_, failures) => backoff(failures, 0));
  assertEquals(ceilings, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60, 60, 60]);
  assertEquals(backoff(1000, 0), 60);
});

Deno.test("backoff() takes off up to 25% as jitter, and never more", () => {
  assertEquals(backoff(0, 1), 0.75);
  assertEquals(backoff(3, 0.5), 7);
  assertEquals(backoff(20, 1), 45);
  // Math.random() by default: always inside [75%, 100%] of the ceiling, and not always equal.
  const delays = Array.from({ length: 200 }, () => backoff(2));
  assert(delays.every((d) => d >= 3 && d <= 4), `outside [3, 4]: ${delays.join(", ")}`);
  assert(new Set(delays).size > 1, "200 delays without any jitter");
});
