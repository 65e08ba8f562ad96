/**
 * A usage or configuration problem, which the command line answers with exit code 2.
 *
 * @module
 */

/** A usage or configuration problem: exit code 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}
