/**
 * `vpn status`, `vpn client kill` and `vpn reload`: one request each to the running server's
 * control socket (DIR/server.yaml `control.socket`), and what the answer means, printed.
 *
 * @module
 */

import {
  controlSocketPath,
  defaultServerConfig,
  loadServerConfig,
  type ServerConfig,
} from "../config.ts";
import type { SessionStatus } from "../core/session.ts";
import type { ReloadResult, ServerStatus } from "../server.ts";
import { type ControlAsk, controlRequest } from "./client.ts";

/** How long the CLI waits for the server's answer: a reload rereads the registry too. */
const REQUEST_MS = 15_000;

/** The control socket of the server of `dir`, as its server.yaml names it. */
export async function controlSocketOf(dir: string): Promise<string> {
  let config: ServerConfig;
  try {
    config = await loadServerConfig(`${dir}/server.yaml`);
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
    config = defaultServerConfig(); // no server.yaml: the defaults, as vpn serve takes them
  }
  return controlSocketPath(config, dir);
}

async function ask(dir: string, request: ControlAsk): Promise<unknown> {
  return await controlRequest(await controlSocketOf(dir), request, REQUEST_MS, dir);
}

/** `vpn status`: the server and its sessions, as a table or as the ServerStatus JSON. */
export async function status(options: { dir: string; json: boolean }): Promise<number> {
  const result = await ask(options.dir, { cmd: "status" }) as ServerStatus;
  if (options.json) {
    console.log(JSON.stringify(result, null, 2));
    return 0;
  }
  console.log(statusText(result, Date.now()).join("\n"));
  return 0;
}

/** The lines of `vpn status` for `s`, with ages as of `now` (ms since the epoch). */
export function statusText(s: ServerStatus, now: number): string[] {
  const counters = Object.entries(s.counters).filter(([, n]) => n > 0);
  const handshakes = Object.entries(s.handshakes).map(([why, n]) => `${why} ${n}`);
  const lines = [
    `vpn ${s.version}, pid ${s.pid}, up ${duration(s.uptimeSeconds)} (since ${s.startedAt})`,
    `listening: ${s.listeners.join(", ") || "nothing"}`,
    `subnet ${s.subnet}, subnet6 ${s.subnet6}, TUN ${s.tun}`,
    `handshakes: ${handshakes.join(", ") || "none"}; in handshake now: ${s.preAuth}; ` +
    `renegotiations: ${s.renegotiations}`,
    `counters: ${counters.map(([key, n]) => `${key} ${n}`).join(", ") || "all zero"}`,
    "",
    `${s.sessions.length} session${s.sessions.length === 1 ? "" : "s"}`,
  ];
  if (s.sessions.length === 0) return lines;
  const rows = [[
    "NAME",
    "PROTO",
    "CIPHER",
    "PEER",
    "ADDRESSES",
    "SINCE",
    "LAST-HEARD",
    "IN",
    "OUT",
    "DROPS",
  ], ...s.sessions.map((session) => sessionRow(session, now))];
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  for (const row of rows) {
    lines.push(row.map((cell, i) => cell.padEnd(widths[i]!)).join("  ").trimEnd());
  }
  return lines;
}

function sessionRow(s: SessionStatus, now: number): string[] {
  const age = (iso: string) => duration(Math.max(0, Math.floor((now - Date.parse(iso)) / 1000)));
  return [
    s.name,
    s.protocol,
    s.cipher,
    s.peer,
    [s.address, s.address6].filter((a) => a).join(","),
    `${age(s.connectedAt)} ago`,
    `${age(s.lastHeardAt)} ago`,
    `${bytes(s.bytesIn)}/${s.packetsIn}p`,
    `${bytes(s.bytesOut)}/${s.packetsOut}p`,
    String(s.dropped),
  ];
}

/** 90061 as "1d 1h 1m 1s", leading zero units left out. */
function duration(seconds: number): string {
  const parts: string[] = [];
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60]] as const) {
    if (seconds >= size || parts.length > 0) parts.push(`${Math.floor(seconds / size)}${unit}`);
    seconds %= size;
  }
  parts.push(`${seconds}s`);
  return parts.join(" ");
}

/** 1536 as "1.5KiB": bytes to GiB, one decimal past KiB. */
function bytes(n: number): string {
  if (n < 1024) return `${n}B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let value = n / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(1)}${units[unit]}`;
}

/** `vpn client kill`: ends a client's session without revoking it; 1 when it had none. */
export async function clientKill(options: { dir: string; name: string }): Promise<number> {
  const result = await ask(options.dir, { cmd: "kill", name: options.name }) as {
    killed: boolean;
    protocol?: string;
    reconnects: boolean;
  };
  if (!result.killed) {
    console.error(`vpn: "${options.name}" has no session on the server of ${options.dir}`);
    return 1;
  }
  console.log(
    `ended the session of "${options.name}" (${result.protocol ?? "?"}); ` +
      (result.reconnects
        ? `the client will reconnect: to keep it out, run vpn client revoke ${options.name}`
        : "the client will not reconnect by itself"),
  );
  return 0;
}

/** `vpn reload`: the server rereads server.yaml and the registry. */
export async function reload(options: { dir: string }): Promise<number> {
  const result = await ask(options.dir, { cmd: "reload" }) as ReloadResult;
  console.log(`reloaded the configuration of the server of ${options.dir}`);
  console.log(`applied: ${result.applied.join(", ") || "nothing changed"}`);
  if (result.needRestart.length > 0) {
    console.log(
      `needs a restart of vpn serve to take effect: ${result.needRestart.join(", ")}`,
    );
  }
  return 0;
}
