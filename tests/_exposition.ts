/**
 * A strict reader of the Prometheus text exposition format 0.0.4, written from the format's
 * description, for tests of `/metrics`: every line must be a HELP, a TYPE or a sample; names,
 * label names and values (with their escapes) and sample values must be well formed; a family's
 * HELP and TYPE come once, before its samples, and its samples are not split by another family.
 *
 * @module
 */

/** One sample: its metric name, labels (unescaped) and value. */
export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** What a scrape said. */
export interface Exposition {
  /** Each family's TYPE. */
  types: Map<string, string>;
  /** Each family's HELP, unescaped. */
  help: Map<string, string>;
  samples: Sample[];
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
/** Go's ParseFloat as Prometheus reads values: decimal, exponent, Inf and NaN. */
const VALUE = /^(?:[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?Inf|NaN)$/;
const TYPES = new Set(["counter", "gauge", "histogram", "summary", "untyped"]);

/** Parses `text`, throwing with the line number and why at the first fault. */
export function parseExposition(text: string): Exposition {
  if (!text.endsWith("\n")) throw new Error("the text does not end with a line feed");
  const types = new Map<string, string>();
  const help = new Map<string, string>();
  const samples: Sample[] = [];
  const series = new Set<string>();
  /** Families whose samples have ended: a later sample of one is out of place. */
  const closed = new Set<string>();
  let current = "";
  const lines = text.slice(0, -1).split("\n");
  lines.forEach((line, index) => {
    const fail = (why: string): never => {
      throw new Error(`line ${index + 1} ${JSON.stringify(line)}: ${why}`);
    };
    const enter = (name: string) => {
      if (name !== current) {
        if (closed.has(name)) fail(`family ${name} appears again after another family`);
        if (current !== "") closed.add(current);
        current = name;
      }
    };
    const comment = /^# (HELP|TYPE) (\S+) ?(.*)$/.exec(line);
    if (comment !== null) {
      const [, keyword, name, rest] = comment as unknown as [string, string, string, string];
      if (!METRIC_NAME.test(name)) fail(`bad metric name ${name}`);
      enter(name);
      if (samples.some((sample) => sample.name === name)) fail(`${keyword} after samples`);
      if (keyword === "HELP") {
        if (help.has(name)) fail("a second HELP");
        help.set(name, unescape(rest, false, fail));
      } else {
        if (types.has(name)) fail("a second TYPE");
        if (!TYPES.has(rest)) fail(`unknown type ${rest}`);
        types.set(name, rest);
      }
      return;
    }
    if (line.startsWith("#")) return; // another comment: allowed and ignored
    const sample = parseSample(line, fail);
    enter(sample.name);
    if (!types.has(sample.name)) fail("a sample before its TYPE");
    if (!help.has(sample.name)) fail("a sample before its HELP");
    const key = `${sample.name}${JSON.stringify(Object.entries(sample.labels).sort())}`;
    if (series.has(key)) fail("the same series twice");
    series.add(key);
    if (types.get(sample.name) === "counter" && !(sample.value >= 0)) fail("a negative counter");
    samples.push(sample);
  });
  return { types, help, samples };
}

function parseSample(line: string, fail: (why: string) => never): Sample {
  const name = /^[^{ ]*/.exec(line)![0];
  if (!METRIC_NAME.test(name)) fail(`bad metric name ${JSON.stringify(name)}`);
  let at = name.length;
  const labels: Record<string, string> = {};
  if (line[at] === "{") {
    at++;
    while (line[at] !== "}") {
      const label = /^[^=]*/.exec(line.slice(at))![0];
      if (!LABEL_NAME.test(label)) fail(`bad label name ${JSON.stringify(label)}`);
      if (label in labels) fail(`label ${label} twice`);
      at += label.length;
      if (line.slice(at, at + 2) !== '="') fail(`label ${label} without ="`);
      at += 2;
      let raw = "";
      while (at < line.length && line[at] !== '"') {
        if (line[at] === "\\") raw += line[at++];
        raw += line[at++] ?? "";
      }
      if (line[at] !== '"') fail(`label ${label}'s value is not closed`);
      at++;
      labels[label] = unescape(raw, true, fail);
      if (line[at] === ",") at++;
      else if (line[at] !== "}") fail(`after label ${label}: neither , nor }`);
    }
    at++;
  }
  const rest = line.slice(at);
  const parts = / ([^ ]+)(?: (-?\d+))?$/.exec(rest);
  if (parts === null || parts.index !== 0) fail("no value after the name and labels");
  const text = parts![1]!;
  if (!VALUE.test(text)) fail(`bad value ${text}`);
  const value = text.endsWith("Inf") ? (text.startsWith("-") ? -Infinity : Infinity) : Number(text);
  return { name, labels, value };
}

/** Undoes `\\`, `\n` and (in label values) `\"`; any other escape is a fault. */
function unescape(text: string, quote: boolean, fail: (why: string) => never): string {
  if (!quote && text.includes("\n")) fail("a raw line feed");
  return text.replace(/\\(.?)/g, (_, c: string) => {
    if (c === "\\") return "\\";
    if (c === "n") return "\n";
    if (c === '"' && quote) return '"';
    return fail(`bad escape \\${c}`);
  });
}

/** The value of the one sample of `name` whose labels include `labels`. */
export function valueOf(
  exposition: Exposition,
  name: string,
  labels: Record<string, string> = {},
): number | undefined {
  const found = exposition.samples.filter((sample) =>
    sample.name === name &&
    Object.entries(labels).every(([key, value]) => sample.labels[key] === value)
  );
  if (found.length > 1) {
    throw new Error(`${name} ${JSON.stringify(labels)} matches ${found.length}`);
  }
  return found[0]?.value;
}
