/**
 * Helpers for the tests of a client's host changes (tests/dns_test.ts,
 * tests/host_changes_e2e_test.ts): `HostChanges` calls run inside a namespace through
 * tests/helpers/host_changes_probe.ts, and a namespace's own resolv.conf.
 *
 * @module
 */

import assert from "node:assert/strict";
import { denoScript, type Netns } from "./_netns.ts";

/** The probe script; `hold` makes it wait to be killed after its calls. */
export const PROBE = new URL("./helpers/host_changes_probe.ts", import.meta.url).pathname;

/** One call's outcome as the probe prints it. */
export type ProbeResult = { ok: unknown } | { error: string };

/** What the probe is asked to do. */
export interface ProbeRequest {
  /** The TUN name of the client. */
  dev: string;
  /** The state directory of the records. */
  stateDir: string;
  /** `[method, ...args]`, in order. */
  calls: unknown[][];
  /** Wait to be killed after the calls. */
  hold?: boolean;
}

/** Runs probe calls inside `ns` to completion; returns their results and the log. */
export async function probe(
  ns: Netns,
  request: ProbeRequest,
): Promise<{ results: ProbeResult[]; log: string }> {
  const { stdout, stderr } = await ns.run(denoScript(PROBE, JSON.stringify(request)));
  return { results: JSON.parse(stdout.trim().split("\n").at(-1)!).results, log: stderr };
}

/** The value of a call that must have succeeded. */
export function ok<T>(result: ProbeResult | undefined): T {
  assert.ok(result !== undefined && "ok" in result, `expected success: ${JSON.stringify(result)}`);
  return result.ok as T;
}

/** The message of a call that must have failed. */
export function failed(result: ProbeResult | undefined): string {
  assert.ok(
    result !== undefined && "error" in result,
    `expected an error: ${JSON.stringify(result)}`,
  );
  return result.error;
}

/**
 * /etc/netns/NAME/resolv.conf holding `content`, which `ip netns exec NAME` mounts over
 * /etc/resolv.conf; the directory is removed on dispose. The host's /etc/resolv.conf is
 * never touched.
 */
export function namespaceResolvConf(ns: Netns, content: string): Disposable & { path: string } {
  const dir = `/etc/netns/${ns.name}`;
  Deno.mkdirSync(dir, { recursive: true });
  const path = `${dir}/resolv.conf`;
  Deno.writeTextFileSync(path, content);
  return { path, [Symbol.dispose]: () => Deno.removeSync(dir, { recursive: true }) };
}

/** A temporary state directory, removed on dispose. */
export function stateDir(): Disposable & { path: string } {
  const path = Deno.makeTempDirSync({ prefix: "vpn-host-changes-" });
  return { path, [Symbol.dispose]: () => Deno.removeSync(path, { recursive: true }) };
}
