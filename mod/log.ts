/**
 * Logging through `@logtape/logtape`: one text line per record on stderr, written
 * synchronously so that nothing is lost when the process exits right after.
 *
 * @module
 */

import { configureSync, getLogger, getTextFormatter, type Logger } from "@logtape/logtape";

import type { LogLevel } from "./config.ts";
export type { LogLevel };

/** Sets up logging for the whole process; later calls replace the level. */
export function setupLogging(level: LogLevel): void {
  // Strings unquoted: log lines read as sentences ("alice connected from 10.0.0.5:4000").
  const format = getTextFormatter({
    timestamp: "date-time-tz",
    value: (value) => typeof value === "string" ? value : Deno.inspect(value),
  });
  const encoder = new TextEncoder();
  configureSync({
    reset: true,
    sinks: { stderr: (record) => Deno.stderr.writeSync(encoder.encode(format(record))) },
    loggers: [
      { category: ["vpn"], lowestLevel: level, sinks: ["stderr"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["stderr"] },
    ],
  });
}

/** The logger of one part of vpn, e.g. `log("server")`. */
export function log(part: string): Logger {
  return getLogger(["vpn", part]);
}

/**
 * The log of a data path's unexpected errors: a batch of packets whose handling threw (a bug,
 * not bad input, which is counted and dropped where it is parsed) is lost, and the path goes
 * on serving everyone else. One line a second at most, with how many batches failed.
 */
export class BatchFailures {
  readonly #logger: Logger;
  readonly #path: string;
  #count = 0;
  #logged = -Infinity;

  /** `path` names the loop in the log, e.g. "UDP receive". */
  constructor(logger: Logger, path: string) {
    this.#logger = logger;
    this.#path = path;
  }

  /** Counts a failed batch; logs it unless a line went out less than a second ago. */
  report(error: unknown): void {
    this.#count++;
    const now = performance.now();
    if (now - this.#logged < 1000) return;
    this.#logged = now;
    this.#logger.error("{path}: {count} batch(es) of packets dropped after an error: {error}", {
      path: this.#path,
      count: this.#count,
      error: String(error),
    });
    this.#count = 0;
  }
}
