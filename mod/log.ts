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

/**
 * Text that came from a peer (a name it sent, a TLS library's account of what it did) made
 * safe for one log line: control, format and separator characters, and the backslash, become
 * `\u{..}` escapes, so that a peer can neither end the line and forge another nor hide text
 * behind a bidi override. Everything else reads as it was.
 */
export function escapeText(text: string): string {
  return text.replace(
    /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\\]/gu,
    (char) => `\\u{${char.codePointAt(0)!.toString(16)}}`,
  );
}

/** One key of a {@linkcode RateLimit}: when its last line went out, and how many were held. */
interface Held {
  at: number;
  count: number;
}

/**
 * At most one log line per key, a reason and a source (e.g. "unknown-ca" from 192.0.2.7),
 * every `windowMs`; the lines held back in between are counted, and the next line of the key
 * says how many. The table holds at most `maxKeys` sources: when it is full, keys whose window
 * has passed make room (their count, if any, goes unsaid), and beyond that every new source
 * shares one key per reason, so that a scan from many addresses cannot grow memory. Reasons
 * are the caller's own short, fixed words, never a peer's text.
 */
export class RateLimit {
  readonly #windowMs: number;
  readonly #maxKeys: number;
  /** By key, in the order of their last line (re-inserted on each), oldest first. */
  readonly #keys = new Map<string, Held>();
  /** By reason: the keys of sources that found the table full. */
  readonly #shared = new Map<string, Held>();

  constructor(windowMs: number, maxKeys: number) {
    this.#windowMs = windowMs;
    this.#maxKeys = maxKeys;
  }

  /**
   * Whether a line about `reason` from `source` goes out at `now` (`performance.now()`):
   * undefined when one went out for the key less than a window ago (this one is counted),
   * else the end of the line: "", or " (and 12 more like it in the last 10 s)".
   */
  admit(reason: string, source: string, now = performance.now()): string | undefined {
    let table = this.#keys;
    let key = `${reason} ${source}`;
    if (!table.has(key) && table.size >= this.#maxKeys) {
      for (const [old, held] of table) {
        if (now - held.at < this.#windowMs) break;
        table.delete(old);
      }
      if (table.size >= this.#maxKeys) [table, key] = [this.#shared, reason];
    }
    const held = table.get(key);
    if (held !== undefined && now - held.at < this.#windowMs) {
      held.count++;
      return undefined;
    }
    table.delete(key);
    table.set(key, { at: now, count: 0 });
    if (held === undefined || held.count === 0) return "";
    const from = table === this.#shared ? " from any source" : "";
    const seconds = Math.round((now - held.at) / 1000);
    return ` (and ${held.count} more like it${from} in the last ${seconds} s)`;
  }
}

/**
 * The periodic line of counters that only grow: how much each moved since the last line, and
 * the totals. Nothing when none moved, so that a quiet server logs nothing.
 */
export class CounterLine<Name extends string> {
  readonly #words: Readonly<Record<Name, string>>;
  readonly #names: readonly Name[];
  readonly #last: Record<Name, number>;
  #at: number;

  /**
   * `words`: each counter's name in the line, in the order the line lists them; all start at
   * 0 at `now`.
   */
  constructor(words: Readonly<Record<Name, string>>, now = performance.now()) {
    this.#words = words;
    this.#names = Object.keys(words) as Name[];
    this.#last = Object.fromEntries(this.#names.map((name) => [name, 0])) as Record<Name, number>;
    this.#at = now;
  }

  /**
   * "in the last 10 s: 3 spoofed, 0 dropped; since start: 5 spoofed, 1 dropped" for `counts`
   * at `now`, or undefined when no counter moved since the last line.
   */
  next(counts: Readonly<Record<Name, number>>, now = performance.now()): string | undefined {
    const last = this.#last;
    if (this.#names.every((name) => counts[name] === last[name])) return undefined;
    const list = (count: (name: Name) => number) =>
      this.#names.map((name) => `${count(name)} ${this.#words[name]}`).join(", ");
    const seconds = Math.round((now - this.#at) / 1000);
    const line = `in the last ${seconds} s: ${list((name) => counts[name] - last[name])}; ` +
      `since start: ${list((name) => counts[name])}`;
    for (const name of this.#names) last[name] = counts[name];
    this.#at = now;
    return line;
  }
}
