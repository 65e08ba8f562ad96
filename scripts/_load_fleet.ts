/**
 * The sessions of one run, by protocol (scripts/load.ts): what makes each, and what they
 * share: nothing for OpenVPN (a socket each), the UDP socket of our protocol's data channel.
 *
 * @module
 */

import { type IssuedClient, loadTlsCryptKey, serverIdentityName } from "../mod/pki.ts";
import { NativeLoadSession, type NativeTarget, SharedUdp } from "./_load_native.ts";
import { OpenVpnLoadSession } from "./_load_openvpn.ts";
import type { LoadSession } from "./_load_session.ts";

/** The protocols of `--proto`. */
export const PROTOS = ["tcp", "udp", "openvpn-udp", "openvpn-tcp"] as const;
/** One of {@linkcode PROTOS}. */
export type LoadProto = typeof PROTOS[number];

/** What the sessions of a run need to know. */
export interface FleetOptions {
  proto: LoadProto;
  remote: { host: string; port: number };
  /** The PKI directory: the tls-crypt key for OpenVPN. */
  dir: string;
}

/** What makes the sessions of one protocol, and what they share. */
export interface Fleet {
  session(index: number, client: IssuedClient): LoadSession;
  /** After a tick of every session: sends what they queued on a shared socket. */
  flush(): void;
  /** UDP datagrams that opened for no session. */
  readonly dropped: number;
  close(): Promise<void>;
}

/** The sessions of `options.proto` to `options.remote`, whose server certificate `caPem` signed. */
export async function fleetFor(options: FleetOptions, caPem: string): Promise<Fleet> {
  const { host, port } = options.remote;
  if (options.proto === "openvpn-udp" || options.proto === "openvpn-tcp") {
    const target = {
      transport: options.proto === "openvpn-udp" ? "udp" as const : "tcp" as const,
      host,
      port,
      caPem,
      tlsCryptKey: await loadTlsCryptKey(options.dir),
    };
    return {
      session: (i, client) => new OpenVpnLoadSession(i, target, client),
      flush: () => {},
      dropped: 0,
      close: () => Promise.resolve(),
    };
  }
  const target: NativeTarget = {
    host,
    port,
    caPem,
    identity: await serverIdentityName(caPem),
    udp: options.proto === "udp",
  };
  const sockets = new Map<string, SharedUdp>();
  const shared = (ip: string) => {
    let socket = sockets.get(ip);
    if (socket === undefined) sockets.set(ip, socket = SharedUdp.open(ip, port));
    return socket;
  };
  return {
    session: (i, client) => new NativeLoadSession(i, target, client, shared),
    flush: () => sockets.forEach((socket) => socket.flush()),
    get dropped() {
      let dropped = 0;
      sockets.forEach((socket) => dropped += socket.dropped);
      return dropped;
    },
    close: async () => {
      for (const socket of sockets.values()) await socket.close();
    },
  };
}
