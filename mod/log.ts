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
