/**
 * A raw OpenVPN 2.x client for tests that play the attacker against `vpn serve`: it speaks
 * the protocol itself, over real UDP and TCP on 127.0.0.1, with nothing but the product's own
 * codecs (mod/openvpn/packet.ts, tls_crypt.ts, reliable.ts, tls.ts, key_method.ts,
 * control_message.ts, prf.ts, data.ts). A test can run the handshake a stock 2.6 client runs
 * (HARD_RESET, TLS, key method 2, PUSH_REPLY, P_DATA_V2) and, beside it, send any bytes a
 * stock client never would, with this session's ids and tls-crypt key or without them.
 *
 * Everything received is kept in arrays and counters that the test polls with a bounded
 * `waitFor`, so a broken server fails a test with a message instead of hanging it.
 *
 * Inbound, per packet: P_DATA_V2 opens with the data key once PUSH_REPLY gave cipher and
 * peer id; anything else must pass tls-crypt and name this session (its own id in the acks,
 * the server's id once learnt), then goes through the reliability layer to TLS, whose
 * plaintext is the server's key-method-2 message and then NUL-terminated control messages.
 *
 * @module
 */

import { HOST, SHORT_MS, waitFor, within } from "./_lab.ts";
import { ControlMessageReader, encodeControlMessage } from "../mod/openvpn/control_message.ts";
import {
  DATA_V2_HEADER,
  DATA_V2_OVERHEAD,
  type DataCipher,
  DataKey,
  type DataStats,
  isPing,
} from "../mod/openvpn/data.ts";
import {
  clientOptionsString,
  decodeKeyMethod2,
  encodeKeyMethod2,
  keyMethod2Length,
} from "../mod/openvpn/key_method.ts";
import {
  decodeControlBody,
  encodeControlBody,
  firstByte,
  frameTcp,
  Opcode,
  OpenVpnPacketError,
  SESSION_ID_LEN,
  TcpFramer,
} from "../mod/openvpn/packet.ts";
import {
  type DataKeys,
  dataKeys,
  keyExpansion,
  PRE_MASTER_LEN,
  RANDOM_LEN,
} from "../mod/openvpn/prf.ts";
import { Reliable } from "../mod/openvpn/reliable.ts";
import { TlsEngine, TlsError, type TlsIdentity } from "../mod/openvpn/tls.ts";
import { TlsCrypt } from "../mod/openvpn/tls_crypt.ts";

/** The peer-info of a stock 2.6.14 client without the TLS exporter (OPENVPN.md 5.4). */
export const PEER_INFO_2_6 = "IV_VER=2.6.14\nIV_PLAT=linux\nIV_PROTO=406\nIV_NCP=2\n" +
  "IV_CIPHERS=AES-256-GCM:CHACHA20-POLY1305\nIV_MTU=1600\n";

/** TLS bytes per CONTROL_V1 packet, as stock keeps datagrams under 1250 bytes. */
const CONTROL_CHUNK = 1100;
/** How often the reliability layer is polled for retransmissions (ms). */
const TICK_MS = 50;
/** The options string's tun-mtu: what a default stock profile says. */
const TUN_MTU = 1500;

/** What an {@linkcode OvpnClient} connects with. */
export interface OvpnClientOptions {
  /** `udp`: datagrams to the server's UDP port; `tcp`: one connection to its OpenVPN TCP port. */
  transport: "udp" | "tcp";
  /** The server's port for that transport, on 127.0.0.1. */
  port: number;
  /** The UDP socket's local address: another 127.0.0.x is another source host. Default 127.0.0.1. */
  bind?: string;
  /** The client certificate and key, and the CA the server's certificate must chain to. */
  identity: TlsIdentity;
  /** The server's 256-byte tls-crypt key (`DIR/tls-crypt.key`). */
  tlsCryptKey: Uint8Array;
  /** The peer-info lines of the key-method-2 message; default {@linkcode PEER_INFO_2_6}. */
  peerInfo?: string;
  /** A username and password in the key-method-2 message (`auth-user-pass`); none by default. */
  userPass?: { username: string; password: string };
}

/** Counters of what the client dropped from the server; they only grow. */
export interface OvpnClientStats {
  /** Control packets that failed tls-crypt, did not parse, or named another session. */
  badControl: number;
  /** Control packets for a key id other than 0 (a renegotiation this client does not run). */
  otherKey: number;
  /** Data packets that came before the data key, or did not open with it. */
  badData: number;
}

/** One way to the server: datagrams, or a TCP connection with length-prefixed packets. */
interface Link {
  /** One packet: a datagram, or on TCP the packet after its 2-byte length. */
  send(packet: Uint8Array): Promise<void>;
  /** Bytes as they are: a datagram, or on TCP bytes of the stream without a length. */
  sendRaw(bytes: Uint8Array): Promise<void>;
  /** Resolves once the read loop has ended (closed by either side). */
  readonly done: Promise<void>;
  close(): void;
}

/**
 * One OpenVPN session with the server, driven by the test. Create it with
 * {@linkcode OvpnClient.open}, then {@linkcode OvpnClient.handshake} for a full session, or
 * send raw packets at once.
 *
 * @example
 * ```ts
 * const client = await OvpnClient.open({ transport: "udp", port, identity, tlsCryptKey });
 * await client.handshake(); // "PUSH_REPLY,route-gateway 10.8.0.1,..."
 * await client.sendData(ipv4Packet(client.address, "10.8.0.1", "hello"));
 * await client.close();
 * ```
 */
export class OvpnClient {
  /** This session's id, random. */
  readonly sessionId: Uint8Array = crypto.getRandomValues(new Uint8Array(SESSION_ID_LEN));
  /** The server's session id, from its HARD_RESET_SERVER_V2. */
  serverSessionId: Uint8Array | undefined;
  /** Every control message the server sent, in order (`PUSH_REPLY,...`, `AUTH_FAILED,...`). */
  readonly messages: string[] = [];
  /** The pushed options, once the last PUSH_REPLY message has arrived. */
  pushed: string[] | undefined;
  /** Plaintexts of the server's data packets, keepalive pings aside. */
  readonly received: Uint8Array[] = [];
  /** Keepalive pings received. */
  pings = 0;
  /** Every control packet this client put on the wire, wrapped, in order: material for replays. */
  readonly sentControl: Uint8Array[] = [];
  /** Why TLS failed, if it did. */
  tlsFailure: string | undefined;
  /**
   * TLS plaintext, as text, that came where the server's key-method-2 message belongs and is
   * none: what a stock 2.6 client fails on with "Unknown key_method" (OPENVPN.md 5.5: the
   * server writes its own key-method-2 message before anything else).
   */
  unparsed: string | undefined;
  /** Set once the server closed the TCP connection, or the socket was closed. */
  ended = false;
  /** What the client dropped from the server. */
  readonly stats: OvpnClientStats = { badControl: 0, otherKey: 0, badData: 0 };
  /** Refusals of the client's data key, as the server counts its own. */
  readonly dataStats: DataStats = { malformed: 0, forged: 0, replayed: 0 };

  readonly #options: OvpnClientOptions;
  readonly #link: Link;
  readonly #tlsCrypt: TlsCrypt;
  readonly #time = Math.floor(Date.now() / 1000);
  #replayId = 0;
  readonly #reliable = new Reliable();
  #tls: TlsEngine | undefined;
  /** Our key-method-2 randoms, kept until the server's message completes the key block. */
  readonly #preMaster = crypto.getRandomValues(new Uint8Array(PRE_MASTER_LEN));
  readonly #random1 = crypto.getRandomValues(new Uint8Array(RANDOM_LEN));
  readonly #random2 = crypto.getRandomValues(new Uint8Array(RANDOM_LEN));
  #keyMethodIn = new Uint8Array(0);
  #keys: DataKeys | undefined;
  readonly #reader = new ControlMessageReader();
  #pushing: string[] = [];
  #dataKey: DataKey | undefined;
  readonly #timer: ReturnType<typeof setInterval>;

  private constructor(options: OvpnClientOptions, link: (client: OvpnClient) => Link) {
    this.#options = options;
    this.#tlsCrypt = new TlsCrypt(options.tlsCryptKey, "client");
    this.#link = link(this);
    this.#timer = setInterval(() => this.#transmit(), TICK_MS);
  }

  /** Opens the socket or connection; sends nothing yet. */
  static async open(options: OvpnClientOptions): Promise<OvpnClient> {
    if (options.transport === "udp") {
      const socket = Deno.listenDatagram({
        transport: "udp",
        hostname: options.bind ?? HOST,
        port: 0,
      });
      return new OvpnClient(options, (client) => udpLink(socket, options.port, client));
    }
    const conn = await within(
      Deno.connect({ hostname: HOST, port: options.port }),
      SHORT_MS,
      "TCP connect to the OpenVPN port",
    );
    conn.setNoDelay(true);
    return new OvpnClient(options, (client) => tcpLink(conn, client));
  }

  /** The value of pushed option `name` (`ifconfig` gives "10.8.0.2 255.255.255.0"), if pushed. */
  option(name: string): string | undefined {
    const found = this.pushed?.find((option) => option.startsWith(`${name} `));
    return found?.slice(name.length + 1);
  }

  /** The tunnel address the server pushed with `ifconfig`. */
  get address(): string {
    const address = this.option("ifconfig")?.split(" ")[0];
    if (address === undefined) throw new Error("no ifconfig pushed (yet)");
    return address;
  }

  /** Sends the HARD_RESET_CLIENT_V2 that starts the session (message id 0, no acks). */
  start(): void {
    this.#reliable.send(Opcode.HARD_RESET_CLIENT_V2, new Uint8Array(0));
    this.#transmit();
  }

  /**
   * Runs the whole handshake and resolves the first PUSH_REPLY message. Throws, saying what
   * came instead, when the server answers AUTH_FAILED, TLS fails or nothing comes in `ms`.
   */
  async handshake(ms = SHORT_MS): Promise<string> {
    this.start();
    await waitFor(
      () => this.pushed !== undefined || this.#refusal() !== undefined,
      ms,
      `PUSH_REPLY (messages so far: ${JSON.stringify(this.messages)})`,
    );
    const refusal = this.#refusal();
    if (this.pushed === undefined) throw new Error(`no PUSH_REPLY: ${refusal}`);
    return this.messages.find((text) => text.startsWith("PUSH_REPLY"))!;
  }

  /** The first control message starting with `prefix`, waiting at most `ms`. */
  async message(prefix: string, ms = SHORT_MS): Promise<string> {
    const find = () => this.messages.find((text) => text.startsWith(prefix));
    await waitFor(
      () => find() !== undefined,
      ms,
      `a control message ${prefix} (got ${JSON.stringify(this.messages)})`,
    );
    return find()!;
  }

  /** Sends a control message (e.g. `PUSH_REQUEST`) over TLS. */
  sendMessage(text: string): void {
    if (this.#tls === undefined) throw new Error("no TLS session yet");
    this.#tls.write(encodeControlMessage(text));
    this.#pumpTls();
    this.#transmit();
  }

  /**
   * A control packet of this session wrapped with tls-crypt: `byte0`, then `body` (the part
   * tls-crypt encrypts, packet.ts `encodeControlBody`, or any bytes at all). Takes the next
   * replay id, so the server's replay check passes; `sessionId` replaces the sender's id.
   */
  wrap(byte0: number, body: Uint8Array, sessionId: Uint8Array = this.sessionId): Uint8Array {
    return this.#tlsCrypt.wrap(
      { byte0, sessionId, packetId: ++this.#replayId, time: this.#time },
      body,
    );
  }

  /** A wrapped HARD_RESET_CLIENT_V2 for session `sessionId` (default: a fresh one). */
  resetPacket(sessionId: Uint8Array = crypto.getRandomValues(new Uint8Array(8))): Uint8Array {
    const body = encodeControlBody(Opcode.HARD_RESET_CLIENT_V2, {
      acks: [],
      messageId: 0,
      payload: new Uint8Array(0),
    });
    return this.wrap(firstByte(Opcode.HARD_RESET_CLIENT_V2, 0), body, sessionId);
  }

  /** Sends one packet: a datagram, or on TCP the packet behind its 2-byte length. */
  send(packet: Uint8Array): Promise<void> {
    return this.#link.send(packet);
  }

  /** Sends bytes as they are: one datagram, or on TCP stream bytes without a length. */
  sendRaw(bytes: Uint8Array): Promise<void> {
    return this.#link.sendRaw(bytes);
  }

  /** `plain` sealed as the next P_DATA_V2 packet of this session (a fresh buffer). */
  sealData(plain: Uint8Array): Uint8Array {
    const key = this.#dataKey;
    if (key === undefined) throw new Error("no data key: PUSH_REPLY has not arrived");
    const packet = new Uint8Array(DATA_V2_OVERHEAD + plain.length);
    const size = key.seal(
      plain,
      plain.length,
      packet,
      packet.subarray(DATA_V2_HEADER, DATA_V2_OVERHEAD),
      packet.subarray(DATA_V2_OVERHEAD),
    );
    if (size === 0) throw new Error("the data key's packet ids are used up");
    return packet;
  }

  /** Seals and sends `plain`; resolves the packet as sent, for replays. */
  async sendData(plain: Uint8Array): Promise<Uint8Array> {
    const packet = this.sealData(plain);
    await this.send(packet);
    return packet;
  }

  /** Waits at most `ms` for a data plaintext (pings aside) that `match` accepts. */
  async dataMatching(
    match: (plain: Uint8Array) => boolean,
    what: string,
    ms = SHORT_MS,
  ): Promise<Uint8Array> {
    await waitFor(() => this.received.some(match), ms, what);
    return this.received.find(match)!;
  }

  /** Waits at most `ms` for the server to close the TCP connection. */
  async closed(ms = SHORT_MS, what = "the server closes the connection"): Promise<void> {
    await waitFor(() => this.ended, ms, what);
  }

  /** Stops the timer, closes the socket or connection and waits (bounded) for the read loop. */
  async close(): Promise<void> {
    clearInterval(this.#timer);
    this.#link.close();
    await within(this.#link.done, SHORT_MS, "the OpenVPN client's read loop ends");
    this.#tls?.close();
    this.#dataKey?.close();
  }

  /** What stands for a refusal: an AUTH_FAILED message, a TLS failure, the end. */
  #refusal(): string | undefined {
    const failed = this.messages.find((text) => text.startsWith("AUTH_FAILED"));
    if (failed !== undefined) return failed;
    if (this.unparsed !== undefined) return `instead of key method 2: ${this.unparsed}`;
    if (this.tlsFailure !== undefined) return `TLS failed: ${this.tlsFailure}`;
    return this.ended ? "the connection ended" : undefined;
  }

  // --- inbound ---------------------------------------------------------------------------

  /** One packet from the server (a copy the client may keep). */
  receive(packet: Uint8Array): void {
    if (packet.length === 0) {
      this.stats.badControl++;
      return;
    }
    if (packet[0]! >> 3 === Opcode.DATA_V2) {
      this.#receiveData(packet);
      return;
    }
    const unwrapped = this.#tlsCrypt.unwrap(packet);
    if (unwrapped === undefined) {
      this.stats.badControl++;
      return;
    }
    const { header, plain } = unwrapped;
    const opcode = header.byte0 >> 3;
    let body;
    try {
      body = decodeControlBody(opcode, plain);
    } catch (error) {
      if (!(error instanceof OpenVpnPacketError)) throw error;
      this.stats.badControl++;
      return;
    }
    // Acks name the session they are for: a reply to someone else's reset is not ours.
    if (body.acks.length > 0 && !same(body.peerSessionId!, this.sessionId)) {
      this.stats.badControl++;
      return;
    }
    if (this.serverSessionId === undefined) {
      if (opcode !== Opcode.HARD_RESET_SERVER_V2 || body.acks.length === 0) {
        this.stats.badControl++;
        return;
      }
      this.serverSessionId = header.sessionId;
    } else if (!same(header.sessionId, this.serverSessionId)) {
      this.stats.badControl++;
      return;
    }
    if ((header.byte0 & 7) !== 0) {
      this.stats.otherKey++;
      return;
    }
    this.#reliable.acked(body.acks);
    if (body.messageId !== undefined) {
      for (const delivered of this.#reliable.received(body.messageId, opcode, body.payload)) {
        if (delivered.opcode === Opcode.HARD_RESET_SERVER_V2) this.#startTls();
        else if (delivered.opcode === Opcode.CONTROL_V1) this.#tlsIn(delivered.payload);
      }
    }
    this.#pumpTls();
    this.#transmit();
  }

  /** Link end: the server closed the connection, or the socket closed. */
  end(): void {
    this.ended = true;
  }

  #receiveData(packet: Uint8Array): void {
    const key = this.#dataKey;
    if (key === undefined) {
      this.stats.badData++;
      return;
    }
    const out = new Uint8Array(packet.length);
    const length = key.open(
      packet,
      packet.length,
      packet.subarray(DATA_V2_HEADER, DATA_V2_OVERHEAD),
      packet.subarray(DATA_V2_OVERHEAD),
      out,
    );
    if (length < 0) this.stats.badData++;
    else if (isPing(out, 0, length)) this.pings++;
    else this.received.push(out.slice(0, length));
  }

  /** The server's reset arrived: TLS starts, with our key-method-2 message queued behind it. */
  #startTls(): void {
    if (this.#tls !== undefined) return;
    this.#tls = TlsEngine.client(this.#options.identity);
    this.#tls.write(encodeKeyMethod2({
      preMaster: this.#preMaster,
      random1: this.#random1,
      random2: this.#random2,
      options: clientOptionsString({
        proto: this.#options.transport === "udp" ? "UDPv4" : "TCPv4_CLIENT",
        tunMtu: TUN_MTU,
        cipher: "AES-256-GCM",
      }),
      peerInfo: this.#options.peerInfo ?? PEER_INFO_2_6,
      ...this.#options.userPass,
    }, "client"));
  }

  #tlsIn(payload: Uint8Array): void {
    const tls = this.#tls;
    if (tls === undefined || this.tlsFailure !== undefined) return;
    try {
      tls.receive(payload);
      for (let plain; (plain = tls.read()) !== undefined;) this.#plaintext(plain);
    } catch (error) {
      if (!(error instanceof TlsError || error instanceof OpenVpnPacketError)) throw error;
      this.tlsFailure = error.message;
    }
  }

  /** TLS plaintext: the server's key-method-2 message first, then control messages. */
  #plaintext(plain: Uint8Array): void {
    if (this.#keys === undefined) {
      const joined = new Uint8Array(this.#keyMethodIn.length + plain.length);
      joined.set(this.#keyMethodIn);
      joined.set(plain, this.#keyMethodIn.length);
      let length;
      try {
        length = keyMethod2Length(joined, "server");
      } catch (error) {
        this.unparsed = new TextDecoder().decode(joined);
        throw error;
      }
      if (length === undefined) {
        this.#keyMethodIn = joined;
        return;
      }
      const server = decodeKeyMethod2(joined.subarray(0, length), "server");
      this.#keys = dataKeys(
        keyExpansion({
          preMaster: this.#preMaster,
          clientRandom1: this.#random1,
          clientRandom2: this.#random2,
          serverRandom1: server.random1,
          serverRandom2: server.random2,
          clientSessionId: this.sessionId,
          serverSessionId: this.serverSessionId!,
        }),
        "client",
      );
      plain = joined.subarray(length);
    }
    for (const text of this.#reader.push(plain)) this.#message(text);
  }

  #message(text: string): void {
    this.messages.push(text);
    if (!text.startsWith("PUSH_REPLY,")) return;
    const options = text.slice("PUSH_REPLY,".length).split(",");
    const more = options.at(-1) === "push-continuation 2";
    this.#pushing.push(...options.filter((option) => !option.startsWith("push-continuation ")));
    if (more) return;
    this.pushed = this.#pushing;
    this.#pushing = [];
    this.#installDataKey();
  }

  /** The data key from the key block, with the pushed cipher and peer id. */
  #installDataKey(): void {
    const keys = this.#keys;
    const cipher = this.option("cipher");
    const peerId = Number(this.option("peer-id"));
    if (keys === undefined || cipher === undefined || !Number.isInteger(peerId)) return;
    this.#dataKey?.close();
    this.#dataKey = new DataKey(
      cipher as DataCipher,
      { key: keys.encryptKey, implicitIv: keys.encryptIv },
      { key: keys.decryptKey, implicitIv: keys.decryptIv },
      0,
      peerId,
      this.dataStats,
    );
  }

  // --- outbound --------------------------------------------------------------------------

  /** Moves TLS output into CONTROL_V1 packets. */
  #pumpTls(): void {
    const tls = this.#tls;
    if (tls === undefined) return;
    for (let out; (out = tls.takeOutgoing()) !== undefined;) {
      for (let at = 0; at < out.length; at += CONTROL_CHUNK) {
        this.#reliable.send(Opcode.CONTROL_V1, out.slice(at, at + CONTROL_CHUNK));
      }
    }
  }

  /** Puts every due control packet (new, resent, acks) on the wire. */
  #transmit(): void {
    if (this.ended) return;
    for (const packet of this.#reliable.poll(performance.now())) {
      const body = encodeControlBody(packet.opcode, {
        acks: packet.acks,
        ...(packet.acks.length > 0 ? { peerSessionId: this.serverSessionId! } : {}),
        ...(packet.messageId !== undefined ? { messageId: packet.messageId } : {}),
        payload: packet.payload,
      });
      const wrapped = this.wrap(firstByte(packet.opcode, 0), body);
      this.sentControl.push(wrapped);
      this.send(wrapped).catch(() => this.end());
    }
  }
}

function same(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}

/** Datagrams between `socket` and the server's UDP port on 127.0.0.1. */
function udpLink(socket: Deno.DatagramConn, port: number, client: OvpnClient): Link {
  const server: Deno.NetAddr = { transport: "udp", hostname: HOST, port };
  const done = (async () => {
    try {
      for await (const [datagram] of socket) client.receive(datagram);
    } catch {
      // Closed while receiving.
    }
    client.end();
  })();
  const send = async (bytes: Uint8Array) => {
    try {
      await socket.send(bytes, server);
    } catch {
      // A datagram the kernel refuses is lost, as on the network.
    }
  };
  return {
    send,
    sendRaw: send,
    done,
    close: () => {
      try {
        socket.close();
      } catch {
        // Closed already.
      }
    },
  };
}

/** One TCP connection: every packet behind its 2-byte length (packet.ts `TcpFramer`). */
function tcpLink(conn: Deno.TcpConn, client: OvpnClient): Link {
  let writes: Promise<unknown> = Promise.resolve();
  const done = (async () => {
    const framer = new TcpFramer();
    const buffer = new Uint8Array(64 * 1024);
    try {
      for (let n; (n = await conn.read(buffer)) !== null;) {
        for (const packet of framer.push(buffer.subarray(0, n))) client.receive(packet.slice());
      }
    } catch {
      // A reset or a bad length from the server ends the connection as an EOF does.
    }
    client.end();
  })();
  const sendRaw = (bytes: Uint8Array) => {
    const write = writes.then(async () => {
      for (let at = 0; at < bytes.length;) at += await conn.write(bytes.subarray(at));
    });
    writes = write.catch(() => {});
    return within(write, SHORT_MS, "a write to the OpenVPN TCP port");
  };
  return {
    send: (packet) => sendRaw(frameTcp(packet)),
    sendRaw,
    done,
    close: () => {
      try {
        conn.close();
      } catch {
        // Closed already.
      }
    },
  };
}
