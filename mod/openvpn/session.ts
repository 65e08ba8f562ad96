/**
 * One OpenVPN 2.x client on the server, from its HARD_RESET to its end, and the router's
 * {@linkcode TunnelSession} once it has authenticated.
 *
 * Control channel, per key state (key id 0 from the HARD_RESET, then 1-7 and around again from
 * each renegotiation, OPENVPN.md section 9):
 *   1. packets arrive unwrapped from tls-crypt (mod/openvpn/tls_crypt.ts) and checked against
 *      this session's replay window and session ids;
 *   2. the reliability layer (mod/openvpn/reliable.ts) acks them and hands their payloads on in
 *      order to that key state's TLS engine (mod/openvpn/tls.ts);
 *   3. TLS plaintext is first the client's key-method-2 message (mod/openvpn/key_method.ts):
 *      the certificate is checked by our own PKI code, the server answers with its own, both
 *      derive the data keys (mod/openvpn/prf.ts); then NUL-terminated control messages
 *      (PUSH_REQUEST, EXIT);
 *   4. what TLS writes goes back as CONTROL_V1 packets through the reliability layer.
 *
 * Data channel: P_DATA_V2 packets (mod/openvpn/data.ts), opened with the key their key id
 * names (the current one, or the previous one during a renegotiation), into the router's
 * inbound batch; outbound, the router hands MTU-sized packets to `queue`, sealed with the
 * current key into the link's batch (UDP: one `sendmmsg`; TCP: one write).
 *
 * @module
 */

import type { Router } from "../core/router.ts";
import {
  type ClientNetwork,
  describeNetwork,
  type EndReason,
  newTraffic,
  type TunnelSession,
} from "../core/session.ts";
import { escapeText, log } from "../log.ts";
import { AuthError, derToPem, verifyClientCertificate } from "../pki.ts";
import { ReplayWindow } from "../core/replay.ts";
import {
  ControlMessageReader,
  encodeControlMessage,
  pushReplyMessages,
} from "./control_message.ts";
import {
  type DataCipher,
  DataKey,
  type DataStats,
  isPing,
  negotiateCipher,
  OCC_EXIT,
  occOpcode,
  PING_PAYLOAD,
} from "./data.ts";
import {
  decodeKeyMethod2,
  encodeKeyMethod2,
  KEY_METHOD_MAX_LEN,
  keyMethod2Length,
  type KeyMethodMessage,
  parsePeerInfo,
  type PeerInfo,
  serverOptionsString,
} from "./key_method.ts";
import {
  type ControlBody,
  decodeControlBody,
  encodeControlBody,
  Opcode,
  OpenVpnPacketError,
  sameSessionId,
} from "./packet.ts";
import { dataKeys, keyExpansion } from "./prf.ts";
import { Reliable } from "./reliable.ts";
import { TlsEngine, TlsError, type TlsIdentity } from "./tls.ts";
import type { TlsCrypt } from "./tls_crypt.ts";
import { concat } from "./bytes.ts";
import { pushedNetworkOptions } from "./push_options.ts";

const logger = log("server");

/** A new session must finish TLS, key method 2 and authentication within this time (ms). */
export const HAND_WINDOW_MS = 60_000;
/** TLS bytes per CONTROL_V1 packet: with tls-crypt and acks, datagrams stay under 1250 bytes. */
const CONTROL_CHUNK = 1100;
/** IV_PROTO bits (OPENVPN.md 5.4). */
const IV_PROTO_DATA_V2 = 2;
const IV_PROTO_REQUEST_PUSH = 4;
const IV_PROTO_CC_EXIT = 128;
/** The client takes the 2.6 `dns` option (bit 6); OpenVPN Connect announces bit 11 instead. */
const IV_PROTO_DNS_OPTION = 64 | 2048;
/** Repeated PUSH_REQUESTs are answered at most this often (ms). */
const PUSH_REPLY_EVERY_MS = 5000;
/** Packets one data key seals before the server renegotiates (ids end at 0xFF000000). */
const REKEY_AFTER_PACKETS = 0xf0000000;
/** How long the old key still opens packets after a renegotiation switched keys (ms). */
const LAME_DUCK_MS = 60_000;

/** How a session reaches its client: a UDP address on the shared socket, or a TCP connection. */
export interface OpenVpnLink {
  /** `openvpn/udp` or `openvpn/tcp`. */
  readonly protocol: string;
  /** The client's address, for the log. */
  readonly peer: string;
  /** The client's host, for the refusal log's rate limit. */
  readonly host: string;
  /** Sends one control packet now. */
  sendControl(packet: Uint8Array): void;
  /** Seals a data packet into the pending batch; false when there is no room. */
  sealData(key: DataKey, plain: Uint8Array, length: number): boolean;
  /** Sends what was sealed. */
  flush(): void;
  /** Resolves once the write in flight has finished (TCP), at once for UDP. */
  drained(): Promise<void>;
  /** When the pending write last moved. */
  readonly movedAt: number;
  /** Gives back buffers a busy link grew (TCP); called once per keepalive interval. */
  trim(): void;
  /** Closes the link's own resources (a TCP connection); the UDP socket is shared. */
  close(): void;
}

/** What every session of one server shares. */
export interface OpenVpnContext {
  readonly router: Router;
  readonly tlsCrypt: TlsCrypt;
  readonly identity: TlsIdentity;
  readonly ciphers: readonly DataCipher[];
  /** Server-initiated renegotiation after this long (ms). */
  readonly rekeyMs: number;
  readonly stats: OpenVpnStats;
  readonly dataStats: DataStats;
  /** Takes a session that ended out of the endpoint's tables. */
  release(session: OpenVpnSession): void;
  /** A session authenticated: the handshake caps no longer count it. */
  admitted(session: OpenVpnSession): void;
}

/** Counters of the OpenVPN endpoints; they only grow. */
export interface OpenVpnStats {
  /** Control packets that failed tls-crypt: dropped before any other work. */
  unwrapFailed: number;
  /** Control packets replayed (tls-crypt packet id seen before). */
  replayed: number;
  /** Control packets that did not parse, named the wrong session or came out of order. */
  malformed: number;
  /** Packets for no session: data with an unknown peer id, control that is no HARD_RESET. */
  unknown: number;
  /** New sessions refused at the handshake caps. */
  busy: number;
}

/** One key state: its key id, reliability layer, TLS session and, once agreed, data key. */
class KeyState {
  readonly reliable = new Reliable();
  readonly tls: TlsEngine;
  /** TLS plaintext until the client's key-method-2 message is whole. */
  pending: Uint8Array = new Uint8Array(0);
  keyMethodDone = false;
  readonly messages = new ControlMessageReader();
  /** Set once our key-method-2 message is written: the data key can be used once it is acked. */
  data: DataKey | undefined;
  /** Our key-method-2 message went out and was acked: the client has the key too. */
  confirmed = false;
  readonly startedAt = performance.now();

  constructor(readonly keyId: number, identity: TlsIdentity) {
    this.tls = TlsEngine.server(identity);
  }

  close(): void {
    this.tls.close();
  }
}

/** The next key id after `keyId`: 1-7, then 1 again (0 only for a session's first key). */
function nextKeyId(keyId: number): number {
  return keyId === 7 ? 1 : keyId + 1;
}

/** One OpenVPN client: before authentication a handshake, afterwards a tunnel session. */
export class OpenVpnSession implements TunnelSession {
  name = "";
  serial = "";
  notAfter = new Date(0);
  address = "";
  addressNumber = 0;
  #network: ClientNetwork | undefined;
  readonly vnet = false;
  touched = false;
  stalledBatch = 0;
  stalledAt = -1;
  lastReceived = performance.now();
  /** The peer id this session's data packets carry (UDP demultiplexing). */
  readonly peerId: number;
  /** The client's session id, from its HARD_RESET. */
  readonly remoteSessionId: Uint8Array;
  readonly localSessionId = crypto.getRandomValues(new Uint8Array(8));
  readonly traffic = newTraffic();
  /** Bytes of data packets in and out, for the log. */
  bytesIn = 0;
  bytesOut = 0;

  readonly #ctx: OpenVpnContext;
  readonly #link: OpenVpnLink;
  /** tls-crypt replay state: our packet id and time, the client's window and time. */
  #sendPacketId = 0;
  readonly #sendTime = Math.floor(Date.now() / 1000);
  readonly #replay = new ReplayWindow();
  #peerTime: number | undefined;
  /** Key states by key id: the current one, the one being negotiated, the previous one. */
  readonly #keys: (KeyState | undefined)[] = new Array(8).fill(undefined);
  /** The key data goes out with, and the key id it belongs to. */
  #sendKey: DataKey | undefined;
  /** Data keys that may still open packets, by key id. */
  readonly #openKeys: (DataKey | undefined)[] = new Array(8).fill(undefined);
  #currentKeyId = 0;
  #established = false;
  #admitted = false;
  #cipher: DataCipher | undefined;
  #peerInfo: PeerInfo | undefined;
  #lastPushReply = -Infinity;
  /** The client's profile asks for compression: it gets the framing without compression. */
  #compression = false;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #timerAt = Infinity;
  readonly #handTimer: ReturnType<typeof setTimeout>;
  #ended = false;

  constructor(ctx: OpenVpnContext, link: OpenVpnLink, remoteSessionId: Uint8Array, peerId: number) {
    this.#ctx = ctx;
    this.#link = link;
    this.remoteSessionId = remoteSessionId.slice();
    this.peerId = peerId;
    this.#handTimer = setTimeout(
      () =>
        this.#refuse(
          "timeout",
          `no TLS handshake and key exchange within ${HAND_WINDOW_MS / 1000} s`,
        ),
      HAND_WINDOW_MS,
    );
  }

  /** What the router gave this client; set once it is admitted. */
  get network(): ClientNetwork {
    if (this.#network === undefined) throw new Error(`${this.name}: not admitted yet`);
    return this.#network;
  }

  /** The client's real address. */
  get peer(): string {
    return this.#link.peer;
  }

  get cipher(): string {
    return this.#cipher ?? "-";
  }

  get protocol(): string {
    return this.#link.protocol;
  }

  /** OpenVPN clients take plain packets of the tunnel's MTU. */
  get maxPacket(): number {
    return this.#ctx.router.config.mtu;
  }

  get movedAt(): number {
    return this.#link.movedAt;
  }

  /** The link, for the endpoint (a UDP session's address moves with its client). */
  get link(): OpenVpnLink {
    return this.#link;
  }

  get admitted(): boolean {
    return this.#admitted;
  }

  // --- control channel -------------------------------------------------------------------

  /**
   * One control packet from the client, unwrapped: `byte0`, the tls-crypt replay header and
   * the body. Anything wrong with it is counted and dropped; a TLS failure ends the session.
   */
  receiveControl(byte0: number, packetId: number, time: number, body: Uint8Array): void {
    if (this.#ended) return;
    const stats = this.#ctx.stats;
    if (this.#peerTime !== undefined && time !== this.#peerTime) {
      stats.replayed++;
      return;
    }
    if (!this.#replay.check(packetId)) {
      stats.replayed++;
      return;
    }
    const opcode = byte0 >> 3;
    const keyId = byte0 & 7;
    let control: ControlBody;
    try {
      control = decodeControlBodyChecked(opcode, body);
    } catch (error) {
      if (!(error instanceof OpenVpnPacketError)) throw error;
      stats.malformed++;
      return;
    }
    if (
      control.acks.length > 0 &&
      (control.peerSessionId === undefined ||
        !sameSessionId(control.peerSessionId, this.localSessionId))
    ) {
      stats.malformed++;
      return;
    }
    let state = this.#keys[keyId];
    if (state === undefined) {
      if (!this.#newKeyFromClient(opcode, keyId)) {
        stats.malformed++;
        return;
      }
      state = this.#keys[keyId]!;
    }
    this.#replay.accept(packetId);
    this.#peerTime = time;
    this.lastReceived = performance.now();
    state.reliable.acked(control.acks);
    if (control.messageId !== undefined) {
      for (const delivered of state.reliable.received(control.messageId, opcode, control.payload)) {
        if (delivered.opcode === Opcode.CONTROL_V1) this.#tlsIn(state, delivered.payload);
      }
    }
    this.#afterAcks(state);
    this.#transmit();
  }

  /** The HARD_RESET that makes this session: key state 0, answered with our own reset. */
  start(): void {
    const state = new KeyState(0, this.#ctx.identity);
    this.#keys[0] = state;
    state.reliable.send(Opcode.HARD_RESET_SERVER_V2, new Uint8Array(0));
  }

  /** A key id we do not have: only a SOFT_RESET for the next key of an established session. */
  #newKeyFromClient(opcode: number, keyId: number): boolean {
    if (opcode !== Opcode.SOFT_RESET_V1 || !this.#established) return false;
    if (keyId !== nextKeyId(this.#currentKeyId)) return false;
    this.#openKey(keyId);
    return true;
  }

  /** Starts key state `keyId` (a renegotiation) and sends our SOFT_RESET for it. */
  #openKey(keyId: number): void {
    this.#keys[keyId]?.close();
    const state = new KeyState(keyId, this.#ctx.identity);
    this.#keys[keyId] = state;
    state.reliable.send(Opcode.SOFT_RESET_V1, new Uint8Array(0));
    logger.debug("{name}: renegotiating, key id {keyId}", { name: this.name, keyId });
  }

  #tlsIn(state: KeyState, payload: Uint8Array): void {
    try {
      state.tls.receive(payload);
      for (let plain; (plain = state.tls.read()) !== undefined;) this.#plaintext(state, plain);
    } catch (error) {
      if (error instanceof TlsError) {
        // The alert OpenSSL queued tells the client why (e.g. "unknown ca").
        this.#pumpTls(state);
        this.#transmit();
        this.#refuse("tls", `TLS failed: ${error.message}`);
        return;
      }
      if (error instanceof OpenVpnPacketError) {
        this.#refuse("protocol", error.message);
        return;
      }
      throw error;
    }
  }

  #plaintext(state: KeyState, plain: Uint8Array): void {
    if (!state.keyMethodDone) {
      if (state.pending.length + plain.length > KEY_METHOD_MAX_LEN) {
        throw new OpenVpnPacketError("key-method-2 message too long");
      }
      const joined = concat(state.pending, plain);
      const length = keyMethod2Length(joined, "client");
      if (length === undefined) {
        state.pending = joined;
        return;
      }
      state.keyMethodDone = true;
      state.pending = new Uint8Array(0);
      const message = decodeKeyMethod2(joined.subarray(0, length), "client");
      this.#keyMethod(state, message).catch((error) => this.#refuse("internal", String(error)));
      plain = joined.subarray(length);
      if (plain.length === 0) return;
    }
    for (const text of state.messages.push(plain)) this.#message(text);
  }

  /** The client's key-method-2 message: authenticate (first key), answer, derive the keys. */
  async #keyMethod(state: KeyState, message: KeyMethodMessage): Promise<void> {
    const first = !this.#established && state.keyId === 0;
    const der = state.tls.peerCertificate();
    if (der === undefined) throw new OpenVpnPacketError("no client certificate after TLS");
    let cipher = this.#cipher;
    if (first) {
      this.#peerInfo = parsePeerInfo(message.peerInfo ?? "");
      cipher = negotiateCipher(this.#ctx.ciphers, this.#peerInfo.ciphers, this.#peerInfo.ncp);
    }
    // Our key-method-2 message comes first, whatever follows: a stock client reads the next
    // plaintext as that message, and takes an AUTH_FAILED in its place for garbage. It goes
    // after the certificate check, with no await between it and the data key below: a client
    // that has it sends with the new key at once, and a packet the key could not yet open
    // would be lost (the renegotiation of a busy server).
    const random1 = crypto.getRandomValues(new Uint8Array(32));
    const random2 = crypto.getRandomValues(new Uint8Array(32));
    const sendKeyMethod2 = () =>
      state.tls.write(
        encodeKeyMethod2(
          {
            random1,
            random2,
            options: serverOptionsString({
              proto: this.#link.protocol === "openvpn/tcp" ? "TCPv4_SERVER" : "UDPv4",
              tunMtu: this.#ctx.router.config.mtu,
              cipher: cipher ?? this.#ctx.ciphers[0]!,
            }),
          },
          "server",
        ),
      );
    let client;
    try {
      await this.#ctx.router.checkRevocations();
      client = await verifyClientCertificate({
        certPem: derToPem(der),
        ...this.#ctx.router.trust,
      });
    } catch (error) {
      if (!(error instanceof AuthError)) throw error;
      sendKeyMethod2();
      this.#authFailed(error.reason, error.message);
      return;
    }
    if (this.#ended) return;
    sendKeyMethod2();
    if (first) {
      const info = this.#peerInfo!;
      if ((info.proto & IV_PROTO_DATA_V2) === 0) {
        this.#authFailed("protocol", "client does not support P_DATA_V2 (OpenVPN 2.4 or later)");
        return;
      }
      if (cipher === undefined) {
        this.#authFailed(
          "no-cipher",
          `Data channel cipher negotiation failed (no shared cipher): client has ` +
            `${info.ciphers.join(":") || "none"}, server ${this.#ctx.ciphers.join(":")}`,
        );
        return;
      }
      if (message.username || message.password) {
        // As a 2.6 server without auth-user-pass-verify does: the certificate alone decides.
        logger.warn(
          "{name}: its profile sends a username and password; ignored, certificates only",
          {
            name: client.name,
          },
        );
      }
      this.#cipher = cipher;
      this.name = client.name;
      this.serial = client.serial;
      this.notAfter = client.notAfter;
    } else if (client.serial !== this.serial) {
      this.end("protocol", "renegotiated with another certificate");
      return;
    }
    const block = keyExpansion({
      preMaster: message.preMaster!,
      clientRandom1: message.random1,
      clientRandom2: message.random2,
      serverRandom1: random1,
      serverRandom2: random2,
      clientSessionId: this.remoteSessionId,
      serverSessionId: this.localSessionId,
    });
    const keys = dataKeys(block, "server");
    state.data = new DataKey(
      this.#cipher!,
      { key: keys.encryptKey, implicitIv: keys.encryptIv },
      { key: keys.decryptKey, implicitIv: keys.decryptIv },
      state.keyId,
      this.peerId,
      this.#ctx.dataStats,
    );
    this.#openKeys[state.keyId]?.close();
    this.#openKeys[state.keyId] = state.data;
    if (first) {
      if (!this.#admit(message)) return;
      // Clients that announce it take the reply without asking (IV_PROTO bit 2).
      if ((this.#peerInfo!.proto & IV_PROTO_REQUEST_PUSH) !== 0) this.#pushReply();
    }
    this.#pumpTls(state);
    this.#transmit();
  }

  /** Gives the client its address through the router; false when refused (it was told). */
  #admit(message: KeyMethodMessage): boolean {
    const router = this.#ctx.router;
    if (router.stopped) {
      this.end("closed", "server stopping");
      return false;
    }
    let session: TunnelSession | undefined;
    try {
      session = router.admit(
        { name: this.name, serial: this.serial },
        this.#link.peer,
        this.#link.host,
        (network) => {
          this.#network = network;
          this.address = network.address;
          this.addressNumber = network.addressNumber;
          return this;
        },
      );
    } catch (error) {
      if (!(error instanceof AuthError)) throw error;
      this.#authFailed(error.reason, error.message);
      return false;
    }
    if (session === undefined) {
      this.#authFailed("pool-exhausted", "address pool exhausted", false);
      return false;
    }
    clearTimeout(this.#handTimer);
    this.#admitted = true;
    this.#ctx.admitted(this);
    this.#established = true;
    this.#currentKeyId = 0;
    const info = this.#peerInfo!;
    const compression = /,comp-lzo|,compress/.test(message.options);
    this.#compression = compression;
    logger.info(
      "{name} connected from {peer} over {protocol}, cipher {cipher}, {addresses}{more}",
      {
        name: this.name,
        peer: this.#link.peer,
        protocol: this.protocol,
        cipher: this.#cipher!,
        addresses: describeNetwork(this.network),
        more: `; client ${escapeText(info.version ?? "?")} on ${escapeText(info.platform ?? "?")}` +
          (compression
            ? "; its profile asks for compression: it gets compress stub-v2 (no compression)"
            : ""),
      },
    );
    return true;
  }

  /** Sends PUSH_REPLY: address, routes, keepalive, peer id, cipher, MTU (OPENVPN.md 7.3). */
  #pushReply(): void {
    const now = performance.now();
    if (now - this.#lastPushReply < PUSH_REPLY_EVERY_MS) return;
    this.#lastPushReply = now;
    const { config } = this.#ctx.router;
    const info = this.#peerInfo!;
    const options = [
      ...pushedNetworkOptions(this.#network!, (info.proto & IV_PROTO_DNS_OPTION) !== 0),
      `ping ${config.keepalive.interval}`,
      `ping-restart ${config.keepalive.timeout}`,
      `peer-id ${this.peerId}`,
      `cipher ${this.#cipher}`,
    ];
    if ((info.proto & IV_PROTO_CC_EXIT) !== 0) options.push("protocol-flags cc-exit");
    // Over UDP the server hears of a client's exit only if the client says so (over TCP, the
    // connection closes): the exported profile leaves the option out for OpenVPN Connect's sake.
    if (this.#link.protocol === "openvpn/udp") options.push("explicit-exit-notify 1");
    // Framing without compression, as a 2.6 server's "compress migrate" gives such clients.
    if (this.#compression) options.push(info.compStubV2 ? "compress stub-v2" : "comp-lzo no");
    if (info.mtu === undefined || config.mtu <= info.mtu) options.push(`tun-mtu ${config.mtu}`);
    const state = this.#keys[this.#currentKeyId]!;
    for (const text of pushReplyMessages(options)) state.tls.write(encodeControlMessage(text));
    this.#pumpTls(state);
  }

  /** A control message of the client (OPENVPN.md 7.1). */
  #message(text: string): void {
    if (text === "PUSH_REQUEST") {
      if (this.#admitted) this.#pushReply();
      return;
    }
    if (text === "EXIT") {
      this.end("closed", "client exited");
      return;
    }
    logger.debug("{name}: control message {text} ignored", {
      name: this.name,
      text: escapeText(text.slice(0, 64)),
    });
  }

  /** Refuses the client with AUTH_FAILED, which makes a stock client stop, then drops it. */
  #authFailed(reason: string, detail: string, count = true): void {
    const state = this.#keys[this.#currentKeyId];
    if (state !== undefined && state.tls.handshakeDone) {
      state.tls.write(encodeControlMessage(`AUTH_FAILED,${detail.replace(/[^ -~]/g, "?")}`));
      this.#pumpTls(state);
      this.#transmit();
    }
    this.#refuse(reason, detail, count);
  }

  /** Ends a session that never authenticated: logged as a refusal, rate limited. */
  #refuse(reason: string, detail: string, count = true): void {
    if (this.#ended) return;
    if (this.#admitted) {
      this.end("protocol", detail);
      return;
    }
    const router = this.#ctx.router;
    if (count) router.stats.refused++;
    if (!router.stopped) {
      router.logRefusal(this.#link.host, this.#link.peer, reason, `${this.protocol}: ${detail}`);
    }
    this.#close();
  }

  /** Moves TLS output into CONTROL_V1 packets. */
  #pumpTls(state: KeyState): void {
    for (let out; (out = state.tls.takeOutgoing()) !== undefined;) {
      // A client that acks nothing cannot make the server queue without bound.
      if (Math.ceil(out.length / CONTROL_CHUNK) > state.reliable.room) {
        this.#refuse("protocol", "the client acks no control packets");
        return;
      }
      for (let at = 0; at < out.length; at += CONTROL_CHUNK) {
        state.reliable.send(
          Opcode.CONTROL_V1,
          out.subarray(at, Math.min(at + CONTROL_CHUNK, out.length)),
        );
      }
    }
  }

  /** After acks: a key whose answer the client has acked becomes the key data goes out with. */
  #afterAcks(state: KeyState): void {
    this.#pumpTls(state);
    if (state.data === undefined || state.confirmed || !state.reliable.idle) return;
    state.confirmed = true;
    this.#useKey(state);
  }

  /** Data goes out with `state`'s key from now on; the previous key opens packets a while longer. */
  #useKey(state: KeyState): void {
    const previous = this.#currentKeyId;
    this.#sendKey = state.data;
    if (previous === state.keyId) return;
    this.#currentKeyId = state.keyId;
    const old = this.#keys[previous];
    this.#keys[previous] = undefined;
    old?.close();
    const oldData = this.#openKeys[previous];
    setTimeout(() => {
      if (this.#openKeys[previous] === oldData) {
        this.#openKeys[previous] = undefined;
        oldData?.close();
      }
    }, LAME_DUCK_MS);
    this.#ctx.router.renegotiations++;
    logger.info("{name}: renegotiated, key id {keyId} in use", {
      name: this.name,
      keyId: state.keyId,
    });
  }

  /** Puts every due control packet on the wire and arms the retransmission timer. */
  #transmit(): void {
    if (this.#ended) return;
    const now = performance.now();
    let next = Infinity;
    for (const state of this.#keys) {
      if (state === undefined) continue;
      for (const packet of state.reliable.poll(now)) {
        const body = encodeControlBody(packet.opcode, {
          acks: packet.acks,
          ...(packet.acks.length > 0 ? { peerSessionId: this.remoteSessionId } : {}),
          ...(packet.messageId !== undefined ? { messageId: packet.messageId } : {}),
          payload: packet.payload,
        });
        this.#link.sendControl(
          this.#ctx.tlsCrypt.wrap({
            byte0: (packet.opcode << 3) | state.keyId,
            sessionId: this.localSessionId,
            packetId: ++this.#sendPacketId,
            time: this.#sendTime,
          }, body),
        );
      }
      next = Math.min(next, state.reliable.nextDeadline() ?? Infinity);
    }
    if (next === this.#timerAt) return;
    clearTimeout(this.#timer);
    this.#timerAt = next;
    if (next !== Infinity) {
      this.#timer = setTimeout(() => {
        this.#timerAt = Infinity;
        this.#transmit();
      }, Math.max(0, next - performance.now()));
    }
  }

  // --- data channel ----------------------------------------------------------------------

  /**
   * One P_DATA_V2 packet from the client. `tag` and `body` are views of `packet` at 8 and 24;
   * the plaintext goes into `out` (the router keeps a view of it until its flush). True when
   * the packet authenticated.
   */
  receiveData(
    packet: Uint8Array,
    size: number,
    tag: Uint8Array,
    body: Uint8Array,
    out: Uint8Array,
  ): boolean {
    const key = this.#openKeys[packet[0]! & 7];
    if (key === undefined || !this.#admitted) {
      this.#ctx.stats.unknown++;
      return false;
    }
    const length = key.open(packet, size, tag, body, out);
    if (length < 0) return false;
    this.lastReceived = performance.now();
    this.bytesIn += size;
    // The client sends with the new key once it has ours: ours is confirmed then too.
    const state = this.#keys[key.keyId];
    if (state !== undefined && !state.confirmed && state.data === key) {
      state.confirmed = true;
      this.#useKey(state);
    }
    if (isPing(out, 0, length)) return true;
    const occ = occOpcode(out, 0, length);
    if (occ === OCC_EXIT) this.end("closed", "client exited (explicit-exit-notify)");
    // Other OCC messages ask what a TLS-mode 2.6 server does not answer either.
    else if (occ < 0) this.#ctx.router.fromClient(this, out, 0, length);
    return true;
  }

  offer(packet: Uint8Array, length: number): boolean {
    const key = this.#sendKey;
    if (key === undefined || this.#ended) return false;
    if (!this.#link.sealData(key, packet, length)) return false;
    this.bytesOut += length;
    return true;
  }

  queue(packet: Uint8Array, length: number): boolean {
    return this.offer(packet, length);
  }

  drained(): Promise<void> {
    return this.#link.drained();
  }

  flush(): void {
    this.#link.flush();
  }

  /** Every keepalive interval: a ping (the client's ping-restart counts on it), and rekeying. */
  keepalive(): void {
    // Before the ping: a write in flight keeps the buffers it uses.
    this.#link.trim();
    const key = this.#sendKey;
    if (key !== undefined) {
      this.#link.sealData(key, PING_PAYLOAD, PING_PAYLOAD.length);
      this.#link.flush();
    }
    if (!this.#established) return;
    const now = performance.now();
    const next = nextKeyId(this.#currentKeyId);
    const pending = this.#keys[next];
    // A renegotiation has the hand window to finish, as the first handshake has; then the
    // current key goes on and the next keepalive tries again.
    if (pending !== undefined && !pending.confirmed && now - pending.startedAt > HAND_WINDOW_MS) {
      logger.warn("{name}: renegotiation of key id {keyId} did not finish in {seconds} s", {
        name: this.name,
        keyId: next,
        seconds: HAND_WINDOW_MS / 1000,
      });
      pending.close();
      this.#keys[next] = undefined;
      return;
    }
    const current = this.#keys[this.#currentKeyId];
    const due = current !== undefined && now - current.startedAt >= this.#ctx.rekeyMs;
    // Packet ids run out at 0xFF000000 (OPENVPN.md 8.3): renegotiate well before.
    if (pending === undefined && (due || (key !== undefined && key.sent >= REKEY_AFTER_PACKETS))) {
      this.#openKey(next);
      this.#transmit();
    }
  }

  /**
   * Ends the session and frees its address. A shutdown tells the client to reconnect
   * (RESTART); revocation and expiry refuse it (AUTH_FAILED); a dead path says nothing.
   */
  end(reason: EndReason, message: string): Promise<void> {
    if (this.#ended) return Promise.resolve();
    if (!this.#admitted) {
      this.#close();
      return Promise.resolve();
    }
    const word = reason === "bye"
      ? "RESTART"
      : reason === "revoked" || reason === "expired"
      ? `AUTH_FAILED,${message}`
      : undefined;
    const state = this.#keys[this.#currentKeyId];
    if (word !== undefined && state !== undefined) {
      state.tls.write(encodeControlMessage(word));
      this.#pumpTls(state);
      this.#transmit();
    }
    logger.info(
      "{name} ({address}, {peer}) disconnected: {message}; {protocol} {bytesIn} bytes in, " +
        "{bytesOut} out",
      {
        name: this.name,
        address: this.address,
        peer: this.#link.peer,
        message: escapeText(message),
        protocol: this.protocol,
        bytesIn: this.bytesIn,
        bytesOut: this.bytesOut,
      },
    );
    this.#close();
    return Promise.resolve();
  }

  #close(): void {
    if (this.#ended) return;
    this.#ended = true;
    clearTimeout(this.#handTimer);
    clearTimeout(this.#timer);
    if (this.#admitted) this.#ctx.router.forget(this);
    this.#ctx.release(this);
    for (const state of this.#keys) state?.close();
    for (const key of this.#openKeys) key?.close();
    this.#sendKey = undefined;
    this.#link.flush();
    this.#link.close();
  }
}

/** Decodes a control body, refusing opcodes a client may not send after its HARD_RESET. */
function decodeControlBodyChecked(opcode: number, body: Uint8Array): ControlBody {
  switch (opcode) {
    case Opcode.CONTROL_V1:
    case Opcode.ACK_V1:
    case Opcode.SOFT_RESET_V1:
    case Opcode.HARD_RESET_CLIENT_V2:
      break;
    default:
      throw new OpenVpnPacketError(`opcode ${opcode} is not a client control packet`);
  }
  return decodeControlBody(opcode, body);
}
