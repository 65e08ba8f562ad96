/**
 * An idle TCP flood for end-to-end tests: `HOST PORT COUNT RATE` keeps up to COUNT connections
 * to HOST:PORT that never send a byte, opens at most RATE a second (all together), and opens
 * again each one the server closes. Run it in a process of its own with a raised file limit
 * (`prlimit --nofile=4096:4096`), so that the test's own limit does not matter.
 *
 * Every 100 ms it prints one JSON line: `opened` (connects that succeeded, those the server
 * closed since included), `held` (open now, as far as this side knows) and `failed` (connects
 * that failed). It runs until killed.
 *
 * @module
 */

const [host, portText, countText, rateText] = Deno.args;
const port = Number(portText);
const count = Number(countText);
const rate = Number(rateText);
if (host === undefined || !(port > 0) || !(count > 0) || !(rate > 0)) {
  throw new Error("usage: idle_flood.ts HOST PORT COUNT RATE (connects a second)");
}

let opened = 0;
let held = 0;
let failed = 0;

/** The earliest time (performance.now()) the next connect may start: the rate bound. */
let nextTurn = 0;

/** Waits for this connection's turn, so that all of them together keep to `rate`. */
async function turn(): Promise<void> {
  const now = performance.now();
  const at = Math.max(now, nextTurn);
  nextTurn = at + 1000 / rate;
  if (at > now) await new Promise((resolve) => setTimeout(resolve, at - now));
}

/** One place of the flood: connect, wait until the server ends it, connect again. */
async function hold(): Promise<never> {
  const buffer = new Uint8Array(64);
  while (true) {
    await turn();
    let conn: Deno.TcpConn;
    try {
      conn = await Deno.connect({ hostname: host!, port });
    } catch {
      failed++;
      continue;
    }
    opened++;
    held++;
    try {
      while (await conn.read(buffer) !== null);
    } catch {
      // A reset ends the connection as an EOF does.
    }
    held--;
    try {
      conn.close();
    } catch {
      // Closed already.
    }
  }
}

setInterval(() => console.log(JSON.stringify({ opened, held, failed })), 100);
for (let i = 0; i < count; i++) hold();
