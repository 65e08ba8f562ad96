/**
 * Who had which tunnel address, kept in `DIR/state/leases.json` so that a client gets the same
 * address after a server restart without asking for it (OpenVPN clients never ask). A lease is
 * a certificate serial, its address and when it was last connected; the router writes the file
 * atomically when a session starts or ends, and drops leases older than `lease_time`.
 *
 * `DIR/state` is the one directory the server writes once it runs as `user:` (README: Fewer
 * privileges): the PKI directory itself stays closed to it, so that it cannot replace the CA.
 *
 * @module
 */

import { writeFileAtomic } from "../pki.ts";

/** The server's own directory in the PKI directory. */
export const STATE_DIR = "state";
/** The leases file, in the PKI directory. */
export const LEASES_FILE = `${STATE_DIR}/leases.json`;
/** Where versions before `state/` kept it. */
const OLD_LEASES_FILE = "leases.json";

/** One client's address. */
export interface Lease {
  /** The certificate serial, lowercase hex. */
  serial: string;
  /** The tunnel address. */
  address: string;
  /** When the client was last connected (ms since the epoch). */
  seen: number;
}

interface LeasesFile {
  version: 1;
  leases: { serial: string; address: string; seen: string }[];
}

/** A leases file that cannot be used; the server then starts without leases. */
export class LeaseError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "LeaseError";
  }
}

/**
 * Makes `DIR/state` (0700) if it is missing and moves a leases file of an older version there.
 * Runs at the server's start, while it may still write the PKI directory.
 */
export async function prepareStateDir(dir: string): Promise<void> {
  await Deno.mkdir(`${dir}/${STATE_DIR}`, { recursive: true, mode: 0o700 });
  try {
    await Deno.lstat(`${dir}/${LEASES_FILE}`);
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
    await Deno.rename(`${dir}/${OLD_LEASES_FILE}`, `${dir}/${LEASES_FILE}`).catch((e) => {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    });
  }
}

/**
 * The leases in `dir`: none when there is no file yet.
 *
 * @throws {LeaseError} for a file that is not what `writeLeases` writes.
 */
export async function readLeases(dir: string): Promise<Lease[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(`${dir}/${LEASES_FILE}`);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return [];
    throw new LeaseError(`cannot read ${dir}/${LEASES_FILE}: ${(error as Error).message}`);
  }
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch {
    throw new LeaseError(`${dir}/${LEASES_FILE} is not JSON`);
  }
  const file = data as Partial<LeasesFile>;
  if (file?.version !== 1 || !Array.isArray(file.leases)) {
    throw new LeaseError(`${dir}/${LEASES_FILE} is not a leases file of version 1`);
  }
  const leases: Lease[] = [];
  for (const entry of file.leases) {
    const seen = Date.parse(entry?.seen);
    if (typeof entry?.serial !== "string" || typeof entry.address !== "string" || isNaN(seen)) {
      throw new LeaseError(`${dir}/${LEASES_FILE} holds an entry without serial, address or seen`);
    }
    leases.push({ serial: entry.serial, address: entry.address, seen });
  }
  return leases;
}

/** Replaces the leases in `dir`, atomically. */
export function writeLeases(dir: string, leases: Lease[]): Promise<void> {
  const file: LeasesFile = {
    version: 1,
    leases: leases.map(({ serial, address, seen }) => ({
      serial,
      address,
      seen: new Date(seen).toISOString(),
    })),
  };
  return writeFileAtomic(`${dir}/${LEASES_FILE}`, JSON.stringify(file, null, 2) + "\n", 0o600);
}
