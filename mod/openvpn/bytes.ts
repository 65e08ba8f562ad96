/**
 * Joining byte arrays, for the control channel's buffers (not the data path: it allocates).
 *
 * @module
 */

/** `parts` one after another in one array; a single part is returned as it is. */
export function concat(...parts: Uint8Array[]): Uint8Array {
  if (parts.length === 1) return parts[0]!;
  const out = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}
