/**
 * What scripts/load.ts reads of the server under test: its server.yaml, its `vpn status`
 * over the control socket, and from /proc (when its process is visible here) its memory
 * (VmRSS), its CPU time and its limit on open files.
 *
 * @module
 */

import {
  controlSocketPath,
  defaultServerConfig,
  loadServerConfig,
  type ServerConfig,
} from "../mod/config.ts";
import { controlRequest } from "../mod/control/client.ts";
import type { ServerStatus } from "../mod/server.ts";
import type { LoadReport, RssReport } from "./_load_report.ts";

/** How long the control socket may take to answer `status`. */
const STATUS_MS = 15_000;

/** DIR/server.yaml, or the defaults without one. */
export async function serverConfig(dir: string): Promise<ServerConfig> {
  try {
    return await loadServerConfig(`${dir}/server.yaml`);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return defaultServerConfig();
    throw error;
  }
}

/** The server's status over its control socket, or why it cannot be had. */
export async function serverStatus(dir: string): Promise<ServerStatus | string> {
  try {
    const path = controlSocketPath(await serverConfig(dir), dir);
    return await controlRequest(path, { cmd: "status" }, STATUS_MS, dir) as ServerStatus;
  } catch (error) {
    return (error as Error).message;
  }
}

/** This run's sessions in `status`, by protocol. */
export function serverSessions(status: ServerStatus | string, runId: string): LoadReport["server"] {
  if (typeof status === "string") return { sessions: null, byProtocol: {}, statusError: status };
  const byProtocol: Record<string, number> = {};
  let sessions = 0;
  for (const session of status.sessions) {
    if (!session.name.startsWith(`load-${runId}-`)) continue;
    sessions++;
    byProtocol[session.protocol] = (byProtocol[session.protocol] ?? 0) + 1;
  }
  return { sessions, byProtocol, statusError: null };
}

/**
 * The server's process as seen from here: PID from --pid, or the one `vpn status` reports
 * when that process is visible (the same PID namespace). Its VmRSS is sampled before the
 * first client, once all are up, and after the settle time.
 */
export class ServerProcess {
  /** The server's pid, when known and visible. */
  readonly pid: number | undefined;
  /** Its soft limit on open files, when readable. */
  readonly fileLimit: number | undefined;
  /** How the RSS is measured, or why it is not. */
  readonly #source: string;
  readonly #samples: Pick<RssReport, "beforeKiB" | "connectedKiB" | "settledKiB"> = {
    beforeKiB: null,
    connectedKiB: null,
    settledKiB: null,
  };

  /** `status` is the server's `vpn status`, or why it failed. */
  constructor(pid: number | undefined, status: ServerStatus | string) {
    if (pid !== undefined) this.#source = `/proc/${pid}/status VmRSS, --pid`;
    else if (typeof status === "string") {
      this.#source = `no --pid, and vpn status failed: ${status}`;
    } else if (readRss(status.pid) === undefined) {
      this.#source = `no --pid, and the pid vpn status gives (${status.pid}) is not visible here`;
    } else {
      pid = status.pid;
      this.#source = `/proc/${pid}/status VmRSS, pid from vpn status`;
    }
    this.pid = pid;
    this.fileLimit = pid === undefined ? undefined : processFileLimit(pid);
  }

  /** The server's CPU seconds so far, when its pid is known. */
  cpu(): number | undefined {
    return this.pid === undefined ? undefined : cpuSeconds(this.pid);
  }

  /** Takes the RSS sample `when`. */
  sample(when: "beforeKiB" | "connectedKiB" | "settledKiB"): void {
    if (this.pid !== undefined) this.#samples[when] = readRss(this.pid) ?? null;
  }

  /** The samples, and the growth per session of `up` sessions. */
  report(up: number): RssReport {
    const { beforeKiB, settledKiB } = this.#samples;
    return {
      source: this.pid !== undefined && beforeKiB === null
        ? `${this.#source}: not readable`
        : this.#source,
      pid: this.pid ?? null,
      ...this.#samples,
      perSessionKiB: beforeKiB !== null && settledKiB !== null && up > 0
        ? Math.round(((settledKiB - beforeKiB) / up) * 10) / 10
        : null,
    };
  }
}

/** VmRSS of process `pid` in KiB, from /proc/PID/status; undefined when it cannot be read. */
export function readRss(pid: number): number | undefined {
  try {
    const status = Deno.readTextFileSync(`/proc/${pid}/status`);
    const match = /^VmRSS:\s+(\d+) kB$/m.exec(status);
    return match === null ? undefined : Number(match[1]);
  } catch {
    return undefined;
  }
}

/** Clock ticks per second of /proc/PID/stat's times (USER_HZ: 100 on every Linux port). */
const USER_HZ = 100;

/**
 * CPU seconds process `pid` (or this one, "self") has used, user and system, all threads;
 * undefined when /proc/PID/stat cannot be read.
 */
export function cpuSeconds(pid: number | "self"): number | undefined {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    // The command name in parentheses may hold spaces: fields count from after it, utime and
    // stime being the 14th and 15th of the whole line.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / USER_HZ;
  } catch {
    return undefined;
  }
}

/** The soft limit on open files of process `pid` (/proc/PID/limits); undefined if unreadable. */
export function processFileLimit(pid: number): number | undefined {
  try {
    const limits = Deno.readTextFileSync(`/proc/${pid}/limits`);
    const match = /^Max open files\s+(\d+|unlimited)/m.exec(limits);
    if (match === null) return undefined;
    return match[1] === "unlimited" ? Infinity : Number(match[1]);
  } catch {
    return undefined;
  }
}
