/**
 * The handshake inside the TLS session (PROTOCOL.md), both sides:
 *
 * 1. server → HELLO { version, nonce }
 * 2. client → AUTH { version, cert, nonce, server_name, signature, address? }
 * 3. server → PUSH { address, prefix, gateway, routes, mtu, keepalive } or ERROR { reason }
 *
 * Why not mutual TLS: `Deno.listenTls` can neither ask for nor show a client certificate.
 * `node:tls` can, but moved 130-454 MB/s where Deno's TLS moved 170-1330 MB/s (measured before
 * this project began, on a 2-vCPU VM with Deno 2.9: loopback TLS echo, 16 KiB writes), and
 * the data channel is the product. So the server is authenticated by TLS, and the client proves
 * it holds its certificate's key by signing the server's fresh nonce, its own nonce and the name
 * it verified the server's certificate against (its CA's identity name, `serverIdentityName()`
 * in mod/pki.ts); the server checks the certificate with @peculiar/x509 (mod/pki.ts).
 *
 * @module
 */

import type { Channel } from "./channel.ts";
import {
  type Auth,
  decodeAuth,
  decodeError,
  decodeHello,
  decodePush,
  encodeMessage,
  type ErrorMessage,
  type ErrorReason,
  PROTOCOL_VERSION,
  type Push,
} from "./messages.ts";
import {
  authChallenge,
  AuthError,
  type ClientSettings,
  signChallenge,
  verifyClient,
} from "../pki.ts";
import { FrameError, FrameType } from "./wire.ts";

const NONCE_BYTES = 32;

/** The peer refused the session; `reason` says why in a word, `message` in a sentence. */
export class RefusedError extends Error {
  readonly reason: ErrorReason;
  constructor(error: ErrorMessage) {
    super(error.message);
    this.name = "RefusedError";
    this.reason = error.reason;
  }
}

function fromBase64(text: string, what: string): Uint8Array {
  try {
    return Uint8Array.fromBase64(text);
  } catch {
    throw new FrameError(`${what} is not base64`);
  }
}

async function expect(channel: Channel, type: FrameType, what: string): Promise<Uint8Array> {
  const frame = await channel.readFrame();
  if (frame === null) throw new FrameError(`connection closed before ${what}`);
  if (frame.type === FrameType.ERROR) throw new RefusedError(decodeError(frame.payload));
  if (frame.type !== type) throw new FrameError(`expected ${what}, got frame type ${frame.type}`);
  return frame.payload;
}

/** What the server knows once a client has proven who it is. */
export interface AuthenticatedClient {
  /** The certificate's common name. */
  name: string;
  /** The certificate's serial, hex. */
  serial: string;
  /** When the certificate expires: the session may not outlive it. */
  notAfter: Date;
  /** The address the client asks back, if any. */
  address?: string;
  /** The client's TUN takes virtio-net headers. */
  offload: boolean;
}

/** What the server checks a client against. */
export interface ServerTrust {
  caPem: string;
  /**
   * Names and IPs in the server certificate, lower case: the client must have verified one (the
   * identity name; older clients verified the name they dialled).
   */
  serverNames: Set<string>;
  /** Serials of revoked client certificates. */
  revoked: Set<string>;
  /** Serials in the registry and not revoked: no other client certificate is admitted. */
  valid: Set<string>;
  /** What `vpn client set` gave each valid client, by serial. */
  settings: Map<string, ClientSettings>;
}

/**
 * Runs the server side up to a verified client. Throws `AuthError` (the client is refused)
 * or `FrameError` (the client broke the protocol).
 */
export async function acceptClient(
  channel: Channel,
  trust: ServerTrust,
): Promise<AuthenticatedClient> {
  const serverNonce = crypto.getRandomValues(new Uint8Array(NONCE_BYTES));
  channel.sendControl(
    FrameType.HELLO,
    encodeMessage({ version: PROTOCOL_VERSION, nonce: serverNonce.toBase64() }),
  );
  const auth: Auth = decodeAuth(await expect(channel, FrameType.AUTH, "AUTH"));
  if (auth.version !== PROTOCOL_VERSION) {
    throw new FrameError(
      `client speaks protocol version ${auth.version}, this server ${PROTOCOL_VERSION}`,
    );
  }
  const serverName = auth.server_name.toLowerCase();
  if (!trust.serverNames.has(serverName)) {
    // Binding the verified name only helps if the server refuses names that are not its own.
    throw new AuthError(
      "bad-signature",
      `client dialled "${serverName}", which is not a name of this server`,
    );
  }
  const clientNonce = fromBase64(auth.nonce, "AUTH nonce");
  if (clientNonce.length !== NONCE_BYTES) {
    throw new FrameError(`AUTH nonce must be ${NONCE_BYTES} bytes`);
  }
  const verified = await verifyClient({
    certPem: auth.cert,
    caPem: trust.caPem,
    challenge: authChallenge(serverNonce, clientNonce, serverName),
    signature: fromBase64(auth.signature, "AUTH signature"),
    revoked: trust.revoked,
    valid: trust.valid,
  });
  const client: AuthenticatedClient = {
    name: verified.name,
    serial: verified.serial,
    notAfter: verified.notAfter,
    offload: auth.offload === true,
  };
  if (auth.address !== undefined) client.address = auth.address;
  return client;
}

/** Sends the client's settings: the end of a successful handshake. */
export function sendPush(channel: Channel, push: Push): void {
  channel.sendControl(FrameType.PUSH, encodeMessage(push));
}

/** Refuses a client with a reason, then closes. */
export function refuse(channel: Channel, reason: ErrorReason, message: string): Promise<void> {
  return channel.closeWith(FrameType.ERROR, encodeMessage({ reason, message }));
}

/** What the client proves itself with. */
export interface ClientCredentials {
  certPem: string;
  keyPem: string;
  /** The name the client verified the server's certificate against: its CA's identity name. */
  serverName: string;
  /** The address to ask back after a reconnect. */
  address?: string;
  /** Whether this client's TUN takes virtio-net headers. */
  offload: boolean;
}

/**
 * Runs the client side up to the server's PUSH. Throws `RefusedError` when the server says
 * no, `FrameError` when it breaks the protocol.
 */
export async function authenticate(
  channel: Channel,
  credentials: ClientCredentials,
): Promise<Push> {
  const hello = decodeHello(await expect(channel, FrameType.HELLO, "HELLO"));
  if (hello.version !== PROTOCOL_VERSION) {
    throw new FrameError(
      `server speaks protocol version ${hello.version}, this client ${PROTOCOL_VERSION}`,
    );
  }
  const serverNonce = fromBase64(hello.nonce, "HELLO nonce");
  const clientNonce = crypto.getRandomValues(new Uint8Array(NONCE_BYTES));
  const challenge = authChallenge(serverNonce, clientNonce, credentials.serverName);
  const auth: Auth = {
    version: PROTOCOL_VERSION,
    cert: credentials.certPem,
    nonce: clientNonce.toBase64(),
    server_name: credentials.serverName.toLowerCase(),
    signature: (await signChallenge(credentials.keyPem, challenge)).toBase64(),
  };
  if (credentials.address !== undefined) auth.address = credentials.address;
  if (credentials.offload) auth.offload = true;
  channel.sendControl(FrameType.AUTH, encodeMessage(auth));
  return decodePush(await expect(channel, FrameType.PUSH, "PUSH"));
}
