/**
 * The OpenVPN side of `scripts/bench.ts`: a throwaway PKI made with the `openssl` command line
 * (EC P-256 CA, a server certificate with serverAuth, a client certificate with clientAuth) and
 * the server and client configuration files for Debian's `openvpn` 2.6, and the options that
 * make the same client of a profile written by `vpn client add --format ovpn`.
 *
 * @module
 */

/** Runs a command to completion; throws with its output when it fails. */
export type Runner = (cmd: string[]) => Promise<string>;

/** Paths of the PEM files of the OpenVPN PKI. */
export interface OpenVpnPki {
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
}

const OPENSSL_CONFIG = `[req]
distinguished_name = dn
prompt = no
[dn]
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:172.31.250.1
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
`;

function serial(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  bytes[0] = bytes[0]! & 0x7f;
  return "0x" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Creates the CA, server and client certificates and keys in `dir`. */
export async function makeOpenVpnPki(dir: string, run: Runner): Promise<OpenVpnPki> {
  const config = `${dir}/openssl.cnf`;
  await Deno.writeTextFile(config, OPENSSL_CONFIG);
  const key = async (name: string) => {
    const path = `${dir}/${name}.key`;
    await run([
      "openssl",
      "genpkey",
      "-algorithm",
      "EC",
      "-pkeyopt",
      "ec_paramgen_curve:P-256",
      "-out",
      path,
    ]);
    return path;
  };
  const ca = `${dir}/ca.crt`;
  const caKey = await key("ca");
  await run([
    "openssl",
    "req",
    "-new",
    "-x509",
    "-config",
    config,
    "-extensions",
    "ca",
    "-key",
    caKey,
    "-subj",
    "/CN=vpn-bench-ca",
    "-days",
    "2",
    "-sha256",
    "-out",
    ca,
  ]);
  const issue = async (name: string) => {
    const keyPath = await key(name);
    const csr = `${dir}/${name}.csr`;
    const cert = `${dir}/${name}.crt`;
    await run([
      "openssl",
      "req",
      "-new",
      "-config",
      config,
      "-key",
      keyPath,
      "-subj",
      `/CN=vpn-bench-${name}`,
      "-out",
      csr,
    ]);
    await run([
      "openssl",
      "x509",
      "-req",
      "-in",
      csr,
      "-CA",
      ca,
      "-CAkey",
      caKey,
      "-set_serial",
      serial(),
      "-days",
      "2",
      "-sha256",
      "-extfile",
      config,
      "-extensions",
      name,
      "-out",
      cert,
    ]);
    return { cert, key: keyPath };
  };
  const server = await issue("server");
  const client = await issue("client");
  return {
    ca,
    serverCert: server.cert,
    serverKey: server.key,
    clientCert: client.cert,
    clientKey: client.key,
  };
}

/** Settings both sides share: TUN, AES-256-GCM only, no DCO, no compression, quiet logs. */
const COMMON = [
  "dev tun",
  "cipher AES-256-GCM",
  "data-ciphers AES-256-GCM",
  "disable-dco",
  "verb 1",
  "persist-key",
];

/** The tun-mtu OpenVPN 2.6 takes when nothing sets one, as in both configurations here. */
export const OPENVPN_TUN_MTU = 1500;

/**
 * Command-line options that make `openvpn --config PROFILE`, on a profile `vpn client add
 * --format ovpn` wrote, the client of {@linkcode clientConfig} on the data path: the lines of
 * the shared settings the profile lacks or sets otherwise (options after `--config` override
 * the file's). What still differs touches no data packet: `persist-key` (used on restarts
 * only) and the profile's tls-crypt (which wraps control packets).
 */
export const PROFILE_OVERRIDES: readonly string[] = [
  "--disable-dco",
  "--data-ciphers",
  "AES-256-GCM",
  "--verb",
  "1",
];

/** The server configuration: 10.8.0.1/24 on a subnet topology, listening on 1194. */
export function serverConfig(pki: OpenVpnPki, proto: "tcp" | "udp"): string {
  return [
    ...COMMON,
    `proto ${proto === "tcp" ? "tcp-server" : "udp"}`,
    "local 172.31.250.1",
    "port 1194",
    "topology subnet",
    "server 10.8.0.0 255.255.255.0",
    "keepalive 10 60",
    `ca ${pki.ca}`,
    `cert ${pki.serverCert}`,
    `key ${pki.serverKey}`,
    "dh none",
    "remote-cert-tls client",
    "",
  ].join("\n");
}

/** The client configuration: dials 172.31.250.1:1194 and checks the server's certificate. */
export function clientConfig(pki: OpenVpnPki, proto: "tcp" | "udp"): string {
  return [
    ...COMMON,
    "client",
    `proto ${proto === "tcp" ? "tcp-client" : "udp"}`,
    "remote 172.31.250.1 1194",
    "nobind",
    `ca ${pki.ca}`,
    `cert ${pki.clientCert}`,
    `key ${pki.clientKey}`,
    "remote-cert-tls server",
    "",
  ].join("\n");
}
