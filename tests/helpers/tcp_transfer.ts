/**
 * A checksummed TCP transfer for end-to-end tests, one JSON line of output per side.
 *
 * - `sink HOST PORT`: accept one connection, read to its end, report `{bytes, sha256}`.
 * - `send HOST PORT BYTES`: send BYTES of pseudo-random data, report `{bytes, sha256}`.
 *
 * @module
 */

import { createHash } from "node:crypto";

const [mode, host, port, size] = Deno.args;

if (mode === "sink") {
  using listener = Deno.listen({ hostname: host!, port: Number(port) });
  console.log(JSON.stringify({ listening: true }));
  const conn = await listener.accept();
  const hash = createHash("sha256");
  let bytes = 0;
  for await (const chunk of conn.readable) {
    hash.update(chunk);
    bytes += chunk.length;
  }
  console.log(JSON.stringify({ bytes, sha256: hash.digest("hex") }));
} else if (mode === "send") {
  const total = Number(size);
  const conn = await Deno.connect({ hostname: host!, port: Number(port) });
  const hash = createHash("sha256");
  const chunk = new Uint8Array(64 * 1024);
  let state = 0x12345678;
  for (let sent = 0; sent < total;) {
    const length = Math.min(chunk.length, total - sent);
    for (let i = 0; i < length; i++) {
      state = (state * 1103515245 + 12345) >>> 0; // a fixed LCG: reproducible data
      chunk[i] = state >>> 24;
    }
    const piece = chunk.subarray(0, length);
    hash.update(piece);
    for (let off = 0; off < length;) off += await conn.write(piece.subarray(off));
    sent += length;
  }
  conn.close();
  console.log(JSON.stringify({ bytes: total, sha256: hash.digest("hex") }));
} else {
  throw new Error(`tcp_transfer: unknown mode "${mode}"`);
}
