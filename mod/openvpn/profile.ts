/**
 * The `.ovpn` profile `vpn client add NAME --format ovpn` writes: one file a stock OpenVPN 2.6
 * client (`openvpn --config NAME.ovpn`) or OpenVPN Connect 3 imports as it is, with the CA, the
 * client's certificate and key, and the tls-crypt key inline (OPENVPN.md section 13).
 *
 * Every line is there because a client needs it, and none that either client warns about:
 * 2.6 prints a "Note" or "WARNING" for some options, and OpenVPN Connect 3 (the openvpn3 core,
 * `openvpn/client/cliopt.hpp`) lists options it does not implement as "Unsupported option
 * (ignored)". Line by line:
 *
 *   client                 = pull + tls-client: take addresses and routes from the server
 *   dev tun                a layer-3 tunnel; Connect and mobile clients have nothing else
 *   proto udp | tcp-client which socket; "tcp-client" rather than "tcp", which means the same
 *                          only together with `client`
 *   remote HOST PORT       the server; an IPv6 address goes in bare, without brackets
 *   nobind                 a random source port, so a restarted client is a new peer; 2.6
 *                          implies it for `client` and Connect ignores it silently, older
 *                          clients without it bind the fixed local port 1194
 *   remote-cert-tls server the server certificate must have key usage and serverAuth: without
 *                          it any certificate of the CA, a client's too, could act as server
 *                          (2.6 warns "No server certificate verification method")
 *   cipher X               the server's preferred data cipher. Without a `cipher` line 2.6
 *                          prints a note about the old BF-CBC fallback; X is one of its default
 *                          data-ciphers, so no "DEPRECATED OPTION" either, and Connect reads it.
 *                          `data-ciphers` is left out: the 2.6 default list
 *                          (AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305) holds every cipher the
 *                          server may pick, which it announces in PUSH_REPLY, and Connect flags
 *                          `data-ciphers` as unsupported
 *   verb 3                 the usual log detail (2.6 defaults to 1); Connect ignores it
 *                          silently
 *   <ca> <cert> <key> <tls-crypt>   the PEM blocks and the static key
 *
 * Left out: `resolv-retry infinite` (the 2.6 default already; Connect flags it),
 * `explicit-exit-notify` (Connect flags it; the server can push it to UDP clients instead),
 * `persist-key` (2.7 says "DEPRECATED OPTION: --persist-key option ignored"), `persist-tun`
 * (Connect flags it), `key-direction` (tls-auth only; tls-crypt has fixed directions), `auth`
 * (AEAD ciphers need no HMAC), any compression (section 8.5).
 *
 * @module
 */

import { DATA_CIPHERS, type DataCipher } from "./data.ts";

/** What goes into a profile. */
export interface OvpnProfileParams {
  /** The server's host name or IP address (IPv6 without brackets). */
  remoteHost: string;
  /** The server's port for `proto`, from 1 to 65535. */
  port: number;
  /** The transport: UDP on `listen.port`, or TCP on `openvpn.tcp_port`. */
  proto: "udp" | "tcp";
  /** The CA certificate, PEM. */
  caPem: string;
  /** The client's certificate, PEM. */
  certPem: string;
  /** The client's private key, PEM. */
  keyPem: string;
  /** The tls-crypt key, as the text of an OpenVPN static key file. */
  tlsCryptKey: string;
  /** The server's data ciphers, most preferred first (`openvpn.ciphers` of server.yaml). */
  ciphers: readonly string[];
}

/**
 * A host as `remote` takes it: a DNS name or an IPv4 or IPv6 address, nothing that could end
 * the line or start another option (the profile is a config file that `openvpn` obeys).
 */
const REMOTE_HOST = /^(?:[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9.])?|[0-9A-Fa-f:.]{2,45})$/;

/**
 * Text that may go inside an inline block. OpenVPN ends a block at a line `</name>`, and reads
 * every line of the profile as an option outside one; PEM and static keys never hold `<`,
 * `>`, NUL or CR, so refusing them keeps a block from closing early.
 */
const INLINE_TEXT = /^[^<>\0\r]+$/;

/**
 * The `.ovpn` profile for one client, as its text.
 *
 * @throws {TypeError} for a host that is no plain name or address, or inline text that could
 *   close its block.
 * @throws {RangeError} for a port outside 1-65535, or no cipher or one we do not have.
 * @example
 * ```ts
 * import { ovpnProfile } from "./profile.ts";
 * const text = ovpnProfile({
 *   remoteHost: "vpn.example.org", port: 1194, proto: "udp",
 *   caPem, certPem, keyPem, tlsCryptKey, ciphers: ["AES-256-GCM", "CHACHA20-POLY1305"],
 * });
 * await Deno.writeTextFile("alice.ovpn", text, { mode: 0o600, createNew: true });
 * ```
 */
export function ovpnProfile(p: OvpnProfileParams): string {
  if (!REMOTE_HOST.test(p.remoteHost)) {
    throw new TypeError(`Cannot write a profile for host "${p.remoteHost}": not a name or address`);
  }
  if (!Number.isInteger(p.port) || p.port < 1 || p.port > 65535) {
    throw new RangeError(`Cannot write a profile for port ${p.port}: must be from 1 to 65535`);
  }
  const lines = [
    "# OpenVPN client profile, written by `vpn client add --format ovpn`.",
    "# It holds this client's private key: keep it secret.",
    "client",
    "dev tun",
    `proto ${p.proto === "udp" ? "udp" : "tcp-client"}`,
    `remote ${p.remoteHost} ${p.port}`,
    "nobind",
    "remote-cert-tls server",
    `cipher ${preferredCipher(p.ciphers)}`,
    "verb 3",
    inline("ca", p.caPem),
    inline("cert", p.certPem),
    inline("key", p.keyPem),
    inline("tls-crypt", p.tlsCryptKey),
  ];
  return lines.join("\n") + "\n";
}

/** The first of `ciphers`, after checking that each is one we have. */
function preferredCipher(ciphers: readonly string[]): DataCipher {
  const unknown = ciphers.find((c) => !(DATA_CIPHERS as readonly string[]).includes(c));
  if (unknown !== undefined || ciphers.length === 0) {
    throw new RangeError(
      `Cannot write a profile with ciphers [${ciphers.join(", ")}]: name one or more of ` +
        DATA_CIPHERS.join(", "),
    );
  }
  return ciphers[0] as DataCipher;
}

/** `<name>`, the text on the lines after it, `</name>`. */
function inline(name: string, text: string): string {
  const body = text.trim();
  if (!INLINE_TEXT.test(body)) {
    throw new TypeError(`Cannot inline <${name}>: empty, or holds "<", ">", NUL or CR`);
  }
  return `<${name}>\n${body}\n</${name}>`;
}
