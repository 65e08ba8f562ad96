/**
 * Who had which tunnel address, kept in `DIR/leases.json` so that a client gets the same
 * address after a server restart without asking for it (OpenVPN clients never ask). A lease is
 * a certificate serial, its address and when it was last connected; the router writes the file
 * atomically when a session starts or ends, and drops leases older than `lease_time`.
 *
 * @module
 */

import { writeFileAtomic } from "../pki.ts";

/** The leases file in the PKI directory. */
export const LEASES_FILE = "leases.json";

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
