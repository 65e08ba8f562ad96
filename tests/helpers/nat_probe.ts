/**
 * The parts of tests/nat_e2e_test.ts that run inside a network namespace (started with
 * `ip netns exec`), one JSON line of output per event:
 *
 * - `hold TUN SUBNET...`: `Nat.enable(TUN, SUBNETS)`, report `{enabled, table,
 *   staleTableRemoved, forwardingTurnedOn}` (or `{error}` and exit 1), wait for a line on
 *   stdin or its end, `disable()`, report `{disabled: true}`.
 * - `tables`: report `{tables}`, the names of every inet nf_tables table.
 * - `echo HOST PORT`: a UDP server that answers each datagram with the address it came from;
 *   reports `{listening: true}` first and exits after a minute at the latest.
 * - `ask HOST PORT`: send a datagram to HOST PORT up to three times; report `{reply}`, the
 *   answer's text, or `{reply: null}` when none came within 1.5 s.
 *
 * @module
 */

import { Nftables } from "../../ffi/nftables.ts";
import { Nat } from "../../mod/system/nat.ts";

const [mode, ...args] = Deno.args;
const print = (event: unknown) => console.log(JSON.stringify(event));
/** How long `echo` serves and `ask` waits, in ms. */
const ECHO_MS = 60_000;
const ASK_MS = 1500;
const ASK_TRIES = 3;

/** The next datagram on `socket`, or undefined after `ms`. */
async function receive(
  socket: Deno.DatagramConn,
  ms: number,
): Promise<[Uint8Array, Deno.NetAddr] | undefined> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<undefined>((resolve) =>
    timer = setTimeout(() => resolve(undefined), ms)
  );
  try {
    const received = await Promise.race([socket.receive(), timeout]);
    return received as [Uint8Array, Deno.NetAddr] | undefined;
  } finally {
    clearTimeout(timer);
  }
}

if (mode === "hold") {
  const [tun, ...subnets] = args;
  let nat: Nat;
  try {
    nat = Nat.enable(tun!, subnets);
  } catch (error) {
    print({ error: (error as Error).message });
    Deno.exit(1);
  }
  const { table, staleTableRemoved, forwardingTurnedOn } = nat;
  print({ enabled: true, table, staleTableRemoved, forwardingTurnedOn });
  // The first chunk of stdin, or its end when the test goes away.
  await Deno.stdin.readable.getReader().read();
  nat.disable();
  print({ disabled: true });
  Deno.exit(0);
} else if (mode === "tables") {
  using nft = Nftables.open();
  print({ tables: nft.listTables() });
} else if (mode === "echo") {
  const [hostname, port] = args;
  const socket = Deno.listenDatagram({ transport: "udp", hostname: hostname!, port: Number(port) });
  print({ listening: true });
  const deadline = Date.now() + ECHO_MS;
  for (let left = ECHO_MS; left > 0; left = deadline - Date.now()) {
    const received = await receive(socket, left);
    if (received === undefined) break;
    const [, from] = received;
    // The client's address when its packet was not masqueraded: then there is no route back.
    await socket.send(new TextEncoder().encode(from.hostname), from).catch(() => {});
  }
  socket.close();
} else if (mode === "ask") {
  const [hostname, port] = args;
  const v6 = hostname!.includes(":");
  const socket = Deno.listenDatagram({
    transport: "udp",
    hostname: v6 ? "::" : "0.0.0.0",
    port: 0,
  });
  // One receive for all tries: a second one while the first waits would be refused.
  const answer = socket.receive().then(([data]) => new TextDecoder().decode(data), () => null);
  let reply: string | null = null;
  for (let attempt = 0; attempt < ASK_TRIES && reply === null; attempt++) {
    // An unreachable network fails the send itself: that too is no answer.
    await socket.send(new TextEncoder().encode("who"), {
      transport: "udp",
      hostname: hostname!,
      port: Number(port),
    }).catch(() => {});
    let timer: ReturnType<typeof setTimeout> | undefined;
    const wait = new Promise<null>((resolve) =>
      timer = setTimeout(() => resolve(null), ASK_MS / ASK_TRIES)
    );
    reply = await Promise.race([answer, wait]).finally(() => clearTimeout(timer));
  }
  socket.close();
  print({ reply });
} else {
  throw new Error(`nat_probe: unknown mode "${mode}"`);
}
