/**
 * Load-test sessions of OpenVPN 2.x, over UDP or TCP, made of the product's own layers
 * (mod/openvpn/): tls-crypt around every control packet, the reliability layer, TLS over it
 * (libssl), key method 2 and the key expansion, control messages, and P_DATA_V2 with the data
 * key. The composition is the one tests/_ovpn_client.ts makes, cut to what a well-behaved
 * client does: that one keeps every packet for replays and dials 127.0.0.1 only.
 *
 * Each session has its own socket (the server tells OpenVPN peers on UDP apart by their
 * address), runs the handshake a stock 2.6 client runs, then pings as PUSH_REPLY's `ping`
 * says and sends an ICMP echo through the tunnel now and then (scripts/_load_session.ts).
 *
 * @module
 */

import { ControlMessageReader, encodeControlMessage } from "../mod/openvpn/control_message.ts";
import {
  DATA_V2_HEADER,
  DATA_V2_OVERHEAD,
  type DataCipher,
  DataKey,
  type DataStats,
  isPing,
  PING_PAYLOAD,
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
  MAX_TCP_PACKET,
  Opcode,
  OpenVpnPacketError,
  sameSessionId,
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
import { TlsEngine, TlsError } from "../mod/openvpn/tls.ts";
import { TlsCrypt } from "../mod/openvpn/tls_crypt.ts";
import type { IssuedClient } from "../mod/pki.ts";
import { escapeText } from "../mod/log.ts";
import {
  CLOSE_WAIT_MS,
  Echo,
  type LoadSession,
  newCounters,
  Schedule,
  type SessionCounters,
  Steps,
} from "./_load_session.ts";

/** What a stock 2.6.14 client says of itself, so that the server treats these alike. */
const PEER_INFO = "IV_VER=2.6.14\nIV_PLAT=linux\nIV_PROTO=406\nIV_NCP=2\n" +
  "IV_CIPHERS=AES-256-GCM:CHACHA20-POLY1305\nIV_MTU=1600\n";
/** TLS bytes per CONTROL_V1 packet, as stock keeps datagrams under 1250 bytes. */
const CONTROL_CHUNK = 1100;
/** How often the reliability layer is polled for retransmissions during the handshake (ms). */
const TICK_MS = 50;
/** The options string's tun-mtu, as a default stock profile says. */
const TUN_MTU = 1500;
/** How often a closing session looks whether its EXIT was acknowledged (ms). */
const CLOSE_POLL_MS = 20;

/** One plaintext buffer for every session: JavaScript opens one packet at a time. */
const plainScratch = new Uint8Array(MAX_TCP_PACKET);

/** Where the sessions of one run connect, and how. */
export interface OpenVpnTarget {
  transport: "udp" | "tcp";
  host: string;
  port: number;
  caPem: string;
  /** The server's tls-crypt key (`DIR/tls-crypt.key`). */
  tlsCryptKey: Uint8Array;
}

/** One way to the server: datagrams, or a TCP connection with length-prefixed packets. */
interface Link {
  /** One packet; a failure ends the session (TCP) or loses the datagram (UDP). */
  send(packet: Uint8Array): void;
  /** Resolves once the read loop has ended (closed by either side). */
  readonly done: Promise<void>;
  close(): void;
}

/** One OpenVPN client. */
export class OpenVpnLoadSession implements LoadSession {
  readonly counters: SessionCounters = newCounters();
  ended: string | undefined;
  /** Refusals of the server's data packets. */
  readonly dataStats: DataStats = { malformed: 0, forged: 0, replayed: 0 };

  readonly #index: number;
  readonly #target: OpenVpnTarget;
  readonly #client: IssuedClient;
  readonly #sessionId = crypto.getRandomValues(new Uint8Array(SESSION_ID_LEN));
  #serverSessionId: Uint8Array | undefined;
  readonly #tlsCrypt: TlsCrypt;
  readonly #time = Math.floor(Date.now() / 1000);
  #replayId = 0;
  readonly #reliable = new Reliable();
  #tls: TlsEngine | undefined;
  readonly #preMaster = crypto.getRandomValues(new Uint8Array(PRE_MASTER_LEN));
  readonly #random1 = crypto.getRandomValues(new Uint8Array(RANDOM_LEN));
  readonly #random2 = crypto.getRandomValues(new Uint8Array(RANDOM_LEN));
  #keyMethodIn = new Uint8Array(0);
  #keys: DataKeys | undefined;
  readonly #reader = new ControlMessageReader();
  #pushing: string[] = [];
  #dataKey: DataKey | undefined;
  #link: Link | undefined;
  /** Settles when the session carries data, or cannot. */
  readonly #up = Promise.withResolvers<void>();
  #connected = false;
  #closing = false;
  #echo: Echo | undefined;
  #schedule: Schedule | undefined;
  /** One sealed packet at a time: a ping or an echo. */
  readonly #out = new Uint8Array(DATA_V2_OVERHEAD + 64);
  readonly #outTag = this.#out.subarray(DATA_V2_HEADER, DATA_V2_OVERHEAD);
  readonly #outBody = this.#out.subarray(DATA_V2_OVERHEAD);

  constructor(index: number, target: OpenVpnTarget, client: IssuedClient) {
    this.#index = index;
    this.#target = target;
    this.#client = client;
    this.#tlsCrypt = new TlsCrypt(target.tlsCryptKey, "client");
    // Awaited by connect() only: a rejection after a failed connect is nobody's business.
    this.#up.promise.catch(() => {});
  }

  async connect(signal: AbortSignal): Promise<void> {
    const steps = new Steps(signal);
    const { transport, host, port } = this.#target;
    const link = transport === "udp" ? udpLink(host, port, this) : tcpLink(
      await steps.run("TCP connect", Deno.connect({ hostname: host, port, signal })),
      this,
    );
    this.#link = link;
    signal.addEventListener("abort", () => this.#connected || link.close(), { once: true });
    const timer = setInterval(() => this.#transmit(), TICK_MS);
    try {
      this.#reliable.send(Opcode.HARD_RESET_CLIENT_V2, new Uint8Array(0));
      this.#transmit();
      await steps.run(() => this.#step(), this.#up.promise);
      this.#connected = true;
    } catch (error) {
      link.close();
      await link.done;
      this.#free();
      throw error;
    } finally {
      clearInterval(timer);
    }
  }

  /** Where the handshake has got to, for a failure's message. */
  #step(): string {
    if (this.#serverSessionId === undefined) return "HARD_RESET";
    if (this.#keys === undefined) return "TLS and key method 2";
    return "PUSH_REPLY";
  }

  tick(now: number): void {
    if (!this.#connected || this.#closing || this.ended !== undefined) return;
    this.#transmit();
    const schedule = this.#schedule!;
    if (schedule.keepaliveDue(now) && this.#sendData(PING_PAYLOAD, PING_PAYLOAD.length)) {
      this.counters.keepaliveSent++;
    }
    if (schedule.echoDue(now)) {
      const echo = this.#echo!;
      echo.next();
      if (this.#sendData(echo.packet, echo.length)) this.counters.echoSent++;
    }
  }

  async close(): Promise<void> {
    this.#closing = true;
    const link = this.#link;
    if (link === undefined) return;
    const tls = this.#tls;
    if (this.ended === undefined && tls?.handshakeDone) {
      // What `--explicit-exit-notify` and a TCP close both tell the server: this client left.
      tls.write(encodeControlMessage("EXIT"));
      this.#pumpTls();
      const deadline = performance.now() + CLOSE_WAIT_MS;
      while (!this.#reliable.idle && this.ended === undefined && performance.now() < deadline) {
        this.#transmit();
        await new Promise((resolve) => setTimeout(resolve, CLOSE_POLL_MS));
      }
    }
    link.close();
    await link.done;
    this.#free();
  }

  #free(): void {
    this.#tls?.close();
    this.#dataKey?.close();
  }

  /** Seals `plain[0, length)` as the next data packet and sends it; false when it cannot. */
  #sendData(plain: Uint8Array, length: number): boolean {
    const size = this.#dataKey?.seal(plain, length, this.#out, this.#outTag, this.#outBody) ?? 0;
    if (size === 0) return false;
    this.#link!.send(this.#out.subarray(0, size));
    return true;
  }

  // --- inbound ---------------------------------------------------------------------------

  /** One packet from the server, valid during the call. */
  receive(packet: Uint8Array): void {
    if (packet.length === 0) return;
    if (packet[0]! >> 3 === Opcode.DATA_V2) {
      this.#receiveData(packet);
      return;
    }
    const unwrapped = this.#tlsCrypt.unwrap(packet);
    if (unwrapped === undefined) return;
    const { header, plain } = unwrapped;
    const opcode = header.byte0 >> 3;
    let body;
    try {
      body = decodeControlBody(opcode, plain);
    } catch (error) {
      if (!(error instanceof OpenVpnPacketError)) throw error;
      return;
    }
    // Acks name the session they are for; the server's packets carry its own id.
    if (body.acks.length > 0 && !sameSessionId(body.peerSessionId!, this.#sessionId)) return;
    if (this.#serverSessionId === undefined) {
      if (opcode !== Opcode.HARD_RESET_SERVER_V2 || body.acks.length === 0) return;
      this.#serverSessionId = header.sessionId;
    } else if (!sameSessionId(header.sessionId, this.#serverSessionId)) return;
    // Key id 0 only: a renegotiation (which the server starts after hours) is not run here.
    if ((header.byte0 & 7) !== 0) return;
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

  /** The link ended: the server closed the TCP connection, or the socket was closed. */
  linkEnded(why: string): void {
    this.#end(why);
  }

  #end(why: string): void {
    this.#up.reject(new Error(why));
    if (this.#connected && !this.#closing) this.ended ??= escapeText(why);
  }

  #receiveData(packet: Uint8Array): void {
    const key = this.#dataKey;
    if (key === undefined) return;
    const length = key.open(
      packet,
      packet.length,
      packet.subarray(DATA_V2_HEADER, DATA_V2_OVERHEAD),
      packet.subarray(DATA_V2_OVERHEAD),
      plainScratch,
    );
    if (length < 0) return;
    if (isPing(plainScratch, 0, length)) this.counters.serverPings++;
    else if (this.#echo?.isReply(plainScratch, 0, length)) this.counters.echoAnswered++;
  }

  /** The server's reset arrived: TLS starts, with our key-method-2 message queued behind it. */
  #startTls(): void {
    if (this.#tls !== undefined) return;
    const { certPem, keyPem, caPem } = this.#client;
    this.#tls = TlsEngine.client({ certPem, keyPem, caPem });
    this.#tls.write(encodeKeyMethod2({
      preMaster: this.#preMaster,
      random1: this.#random1,
      random2: this.#random2,
      options: clientOptionsString({
        proto: this.#target.transport === "udp" ? "UDPv4" : "TCPv4_CLIENT",
        tunMtu: TUN_MTU,
        cipher: "AES-256-GCM",
      }),
      peerInfo: PEER_INFO,
    }, "client"));
  }

  #tlsIn(payload: Uint8Array): void {
    const tls = this.#tls;
    if (tls === undefined) return;
    try {
      tls.receive(payload);
      for (let plain; (plain = tls.read()) !== undefined;) this.#plaintext(plain);
    } catch (error) {
      if (!(error instanceof TlsError || error instanceof OpenVpnPacketError)) throw error;
      this.#end(`TLS: ${error.message}`);
      this.#link?.close();
    }
  }

  /** TLS plaintext: the server's key-method-2 message first, then control messages. */
  #plaintext(plain: Uint8Array): void {
    if (this.#keys === undefined) {
      const joined = new Uint8Array(this.#keyMethodIn.length + plain.length);
      joined.set(this.#keyMethodIn);
      joined.set(plain, this.#keyMethodIn.length);
      const length = keyMethod2Length(joined, "server");
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
          clientSessionId: this.#sessionId,
          serverSessionId: this.#serverSessionId!,
        }),
        "client",
      );
      this.#keyMethodIn = new Uint8Array(0);
      plain = joined.subarray(length);
    }
    for (const text of this.#reader.push(plain)) this.#message(text);
  }

  #message(text: string): void {
    if (text.startsWith("AUTH_FAILED") || text.startsWith("RESTART") || text === "HALT") {
      this.#end(`the server said ${text.slice(0, 200)}`);
      this.#link?.close();
      return;
    }
    if (!text.startsWith("PUSH_REPLY,")) return;
    const options = text.slice("PUSH_REPLY,".length).split(",");
    const more = options.at(-1) === "push-continuation 2";
    this.#pushing.push(...options.filter((option) => !option.startsWith("push-continuation ")));
    if (more || this.#dataKey !== undefined) return;
    this.#pushed(this.#pushing);
  }

  /** The whole PUSH_REPLY: the data key, the addresses, the ping interval. */
  #pushed(options: string[]): void {
    const option = (name: string) =>
      options.find((o) => o.startsWith(`${name} `))?.slice(name.length + 1);
    const keys = this.#keys;
    const cipher = option("cipher");
    const peerId = Number(option("peer-id"));
    const address = option("ifconfig")?.split(" ")[0];
    const gateway = option("route-gateway");
    const ping = Number(option("ping"));
    if (
      keys === undefined || cipher === undefined || !Number.isInteger(peerId) ||
      address === undefined || gateway === undefined || !(ping > 0)
    ) {
      this.#end(`PUSH_REPLY lacks cipher, peer-id, ifconfig, route-gateway or ping: ${options}`);
      return;
    }
    this.#dataKey = new DataKey(
      cipher as DataCipher,
      { key: keys.encryptKey, implicitIv: keys.encryptIv },
      { key: keys.decryptKey, implicitIv: keys.decryptIv },
      0,
      peerId,
      this.dataStats,
    );
    this.#echo = new Echo(address, gateway, this.#index);
    this.#schedule = new Schedule(ping);
    this.#up.resolve();
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
    const link = this.#link;
    if (link === undefined) return;
    for (const packet of this.#reliable.poll(performance.now())) {
      const body = encodeControlBody(packet.opcode, {
        acks: packet.acks,
        ...(packet.acks.length > 0 ? { peerSessionId: this.#serverSessionId! } : {}),
        ...(packet.messageId !== undefined ? { messageId: packet.messageId } : {}),
        payload: packet.payload,
      });
      link.send(this.#tlsCrypt.wrap({
        byte0: firstByte(packet.opcode, 0),
        sessionId: this.#sessionId,
        packetId: ++this.#replayId,
        time: this.#time,
      }, body));
    }
  }
}

/** Datagrams between a socket of its own and the server's UDP port. */
function udpLink(host: string, port: number, session: OpenVpnLoadSession): Link {
  const socket = Deno.listenDatagram({
    transport: "udp",
    hostname: host.includes(":") ? "::" : "0.0.0.0",
    port: 0,
  });
  const server: Deno.NetAddr = { transport: "udp", hostname: host, port };
  let closed = false;
  const done = (async () => {
    try {
      for await (const [datagram] of socket) session.receive(datagram);
    } catch {
      // Closed while receiving.
    }
    session.linkEnded("the socket closed");
  })();
  return {
    send: (packet) => {
      // A datagram the kernel refuses is lost, as on the network; keepalive notices.
      if (!closed) socket.send(packet, server).catch(() => {});
    },
    done,
    close: () => {
      if (closed) return;
      closed = true;
      socket.close();
    },
  };
}

/** One TCP connection: every packet behind its 2-byte length (packet.ts `TcpFramer`). */
function tcpLink(conn: Deno.TcpConn, session: OpenVpnLoadSession): Link {
  conn.setNoDelay(true);
  let writes: Promise<void> = Promise.resolve();
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    conn.close();
  };
  const done = (async () => {
    const framer = new TcpFramer();
    const buffer = new Uint8Array(16 * 1024);
    let why = "the server closed the connection";
    try {
      for (let n; (n = await conn.read(buffer)) !== null;) {
        for (const packet of framer.push(buffer.subarray(0, n))) session.receive(packet);
      }
    } catch (error) {
      if (!closed) why = `connection failed: ${(error as Error).message}`;
    }
    close();
    session.linkEnded(why);
  })();
  return {
    send: (packet) => {
      if (closed) return;
      const bytes = frameTcp(packet);
      writes = writes.then(async () => {
        for (let at = 0; at < bytes.length && !closed;) at += await conn.write(bytes.subarray(at));
      }).catch(close);
    },
    done,
    close,
  };
}
