/**
 * The assertions the tests use, on `node:assert` (the Deno standard library lives on JSR,
 * which this project cannot reach).
 *
 * @module
 */

import nodeAssert from "node:assert/strict";

/** Asserts that `condition` is truthy. */
export function assert(condition: unknown, message?: string): asserts condition {
  nodeAssert.ok(condition, message);
}

/** Asserts deep, strict equality. */
export function assertEquals<T>(
  actual: unknown,
  expected: T,
  message?: string,
): asserts actual is T {
  nodeAssert.deepStrictEqual(actual, expected, message);
}

/** Asserts that `actual` matches `pattern`. */
export function assertMatch(actual: string, pattern: RegExp, message?: string): void {
  nodeAssert.match(actual, pattern, message);
}

/** Asserts `actual > expected`. */
export function assertGreater(actual: number, expected: number, message?: string): void {
  nodeAssert.ok(actual > expected, message ?? `expected ${actual} > ${expected}`);
}

/** Asserts that `fn` throws an instance of `type` whose message matches `pattern`. */
export function assertThrows(
  fn: () => unknown,
  type: abstract new (...args: never[]) => Error,
  pattern?: RegExp,
): Error {
  try {
    fn();
  } catch (error) {
    nodeAssert.ok(error instanceof type, `expected ${type.name}, got ${String(error)}`);
    if (pattern) nodeAssert.match(error.message, pattern);
    return error;
  }
  throw new nodeAssert.AssertionError({ message: `expected ${type.name} to be thrown` });
}

/** Asserts that `fn` rejects with an instance of `type` whose message matches `pattern`. */
export async function assertRejects(
  fn: () => Promise<unknown>,
  type: abstract new (...args: never[]) => Error,
  pattern?: RegExp,
): Promise<Error> {
  try {
    await fn();
  } catch (error) {
    nodeAssert.ok(error instanceof type, `expected ${type.name}, got ${String(error)}`);
    if (pattern) nodeAssert.match(error.message, pattern);
    return error;
  }
  throw new nodeAssert.AssertionError({ message: `expected ${type.name} to be rejected` });
}
