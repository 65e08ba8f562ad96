/**
 * TUN offload on the packet path: packets read from a TUN with `IFF_VNET_HDR` start with a
 * virtio-net header and may be 64 KiB TCP (or UDP) super-packets with a partial checksum.
 *
 * A peer that also has a virtio-net header on its TUN takes such a packet as is: over TLS the
 * whole super-packet travels in one frame and its kernel segments it. Everywhere else this module
 * cuts it up:
 *
 * - for a peer with a header but a datagram size limit (the UDP path), into MTU-sized segments
 *   that keep a partial checksum (`NEEDS_CSUM`): only the pseudo-header is summed here, and the
 *   peer's kernel, which trusts `CHECKSUM_PARTIAL` packets it delivers, finishes the job;
 * - for a peer without a header, into plain packets with every checksum complete.
 *
 * The header layout (`struct virtio_net_hdr`, little-endian as the TUN has it on x86 and arm):
 * flags u8, gso_type u8, hdr_len u16, gso_size u16, csum_start u16, csum_offset u16.
 *
 * @module
 */

/** Bytes in `struct virtio_net_hdr`. */
export const VNET_HDR_LEN = 10;

const F_NEEDS_CSUM = 1;
const F_DATA_VALID = 2;
const GSO_NONE = 0;
const GSO_TCPV4 = 1;
const GSO_TCPV6 = 4;
const GSO_UDP_L4 = 5;
const GSO_ECN = 0x80;
const PROTO_TCP = 6;
const PROTO_UDP = 17;
const TCP_FIN = 0x01;
const TCP_PSH = 0x08;
const TCP_CWR = 0x80;

/**
 * Fewest payload bytes per segment that a peer's super-packet may ask for (`gso_size`). A
 * kernel cuts at its TCP MSS, which a 576-byte path (the smallest tunnel MTU) keeps at 536 or
 * more; 64 leaves room for odd stacks and still refuses the 1-byte segments of an attack.
 */
export const MIN_GSO_SIZE = 64;
/**
 * Most segments one super-packet from a peer may be cut into: a 64 KiB super-packet at the
 * classic minimum MSS of 536 bytes has 122. The segmenter, the far kernel and the UDP batch
 * then spend at most this much work on one packet a peer chose.
 */
export const MAX_SEGMENTS = 128;

/**
 * Whether the virtio-net header at `buf[start]`, in front of the IP packet that ends at `end`,
 * is one a kernel could have written for that packet: only the NEEDS_CSUM and DATA_VALID flags;
 * a checksum position inside the packet, past its IP header; for a super-packet, a GSO type that
 * matches the IP version and protocol, the checksum of that TCP or UDP header, a payload, and a
 * `gso_size` of at least {@linkcode MIN_GSO_SIZE} that cuts it into at most
 * {@linkcode MAX_SEGMENTS}. A peer writes these bytes and our segmenter and our kernel act on
 * them, so every header from a peer passes here first; on a packet's own path, no allocation.
 */
export function validVnetHeader(buf: Uint8Array, start: number, end: number): boolean {
  const ip = start + VNET_HDR_LEN;
  const length = end - ip;
  if (length < 20) return false;
  const flags = buf[start]!;
  const gsoType = buf[start + 1]!;
  const hdrLen = buf[start + 2]! | (buf[start + 3]! << 8);
  const gsoSize = buf[start + 4]! | (buf[start + 5]! << 8);
  const csumStart = buf[start + 6]! | (buf[start + 7]! << 8);
  const csumOffset = buf[start + 8]! | (buf[start + 9]! << 8);
  const version = buf[ip]! >> 4;
  const ipHeader = version === 4 ? (buf[ip]! & 0x0f) * 4 : version === 6 ? 40 : 0;
  if ((flags & ~(F_NEEDS_CSUM | F_DATA_VALID)) !== 0 || hdrLen > length) return false;
  const needsCsum = (flags & F_NEEDS_CSUM) !== 0;
  if (needsCsum && (ipHeader < 20 || csumStart < ipHeader || csumStart + csumOffset + 2 > length)) {
    return false;
  }
  if (gsoType === GSO_NONE) return true;
  const udp = gsoType === GSO_UDP_L4;
  const tcpType = version === 4 ? GSO_TCPV4 : GSO_TCPV6;
  if (!udp && (gsoType & ~GSO_ECN) !== tcpType) return false;
  const protocol = version === 4 ? buf[ip + 9] : buf[ip + 6];
  if (ipHeader < 20 || protocol !== (udp ? PROTO_UDP : PROTO_TCP)) return false;
  if (length < ipHeader + (udp ? 8 : 20)) return false;
  const l4Header = udp ? 8 : (buf[ip + ipHeader + 12]! >> 4) * 4;
  const payload = length - ipHeader - l4Header;
  return needsCsum && csumStart === ipHeader && csumOffset === (udp ? 6 : 16) &&
    (udp || l4Header >= 20) && payload > 0 && gsoSize >= MIN_GSO_SIZE &&
    payload <= gsoSize * MAX_SEGMENTS;
}

/** Receives one packet; `packet` is valid only during the call. */
export type Emit = (packet: Uint8Array) => void;

/** Counters of what could not be converted; they only grow. */
export interface OffloadStats {
  /** Packets with a header or layout this code does not handle, dropped. */
  malformed: number;
}

/** One's complement sum of `bytes[start, end)` as 16-bit big-endian words, added to `sum`. */
export function checksumAdd(bytes: Uint8Array, start: number, end: number, sum = 0): number {
  let i = start;
  for (; i + 1 < end; i += 2) sum += (bytes[i]! << 8) | bytes[i + 1]!;
  if (i < end) sum += bytes[i]! << 8;
  return sum;
}

/** Folds a sum to 16 bits. */
export function checksumFold(sum: number): number {
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return sum;
}

/** The pseudo-header sum of the IP packet at `ip` for a transport segment of `length` bytes. */
function pseudoHeader(ip: Uint8Array, version: number, protocol: number, length: number): number {
  if (version === 4) return checksumAdd(ip, 12, 20, protocol + length);
  return checksumAdd(ip, 8, 40, protocol + length);
}

function setU16(bytes: Uint8Array, at: number, value: number): void {
  bytes[at] = (value >>> 8) & 0xff;
  bytes[at + 1] = value & 0xff;
}

function getU16(bytes: Uint8Array, at: number): number {
  return (bytes[at]! << 8) | bytes[at + 1]!;
}

/**
 * Converts packets between the encodings of a TUN (with or without a virtio-net header) and of
 * a peer, splitting super-packets where needed. One instance per packet path: it owns the
 * scratch buffer that split segments are built in.
 */
export class Segmenter {
  readonly stats: OffloadStats = { malformed: 0 };
  readonly #scratch: Uint8Array;

  constructor(maxPacket = 65535 + VNET_HDR_LEN) {
    this.#scratch = new Uint8Array(maxPacket + VNET_HDR_LEN);
  }

  /**
   * Emits `buf[0, length)`, read from a TUN that does (`fromVnet`) or does not prefix a
   * virtio-net header, as one or more packets for a peer that does (`toVnet`) or does not, none
   * of whose IP packets is longer than `maxIp` bytes (single packets that are already longer
   * pass unchanged: the path fragments them). Returns how many were emitted; 0 for a packet
   * that was dropped (counted).
   */
  convert(
    buf: Uint8Array,
    length: number,
    fromVnet: boolean,
    toVnet: boolean,
    maxIp: number,
    emit: Emit,
  ): number {
    if (!fromVnet) {
      if (!toVnet) {
        emit(length === buf.length ? buf : buf.subarray(0, length));
        return 1;
      }
      // A plain packet for a peer with a header: an all-zero header says "nothing to do".
      const out = this.#scratch;
      out.fill(0, 0, VNET_HDR_LEN);
      out.set(buf.subarray(0, length), VNET_HDR_LEN);
      emit(out.subarray(0, VNET_HDR_LEN + length));
      return 1;
    }
    if (length < VNET_HDR_LEN + 20) {
      this.stats.malformed++;
      return 0;
    }
    const gsoType = buf[1]! & ~GSO_ECN;
    const ipLength = length - VNET_HDR_LEN;
    if (gsoType === GSO_NONE || (toVnet && ipLength <= maxIp)) {
      if (toVnet) {
        emit(length === buf.length ? buf : buf.subarray(0, length));
        return 1;
      }
      const packet = buf.subarray(VNET_HDR_LEN, length);
      if (buf[0]! & F_NEEDS_CSUM) {
        const start = buf[6]! | (buf[7]! << 8);
        const offset = buf[8]! | (buf[9]! << 8);
        if (start + offset + 2 > ipLength) {
          this.stats.malformed++;
          return 0;
        }
        setU16(
          packet,
          start + offset,
          ~checksumFold(checksumAdd(packet, start, ipLength)) & 0xffff,
        );
      }
      emit(packet);
      return 1;
    }
    if (gsoType === GSO_TCPV4 || gsoType === GSO_TCPV6 || gsoType === GSO_UDP_L4) {
      return this.#segment(buf, length, gsoType, toVnet, maxIp, emit);
    }
    this.stats.malformed++;
    return 0;
  }

  /** Cuts a TCP or UDP super-packet into segments of at most `gso_size` payload bytes. */
  #segment(
    buf: Uint8Array,
    length: number,
    gsoType: number,
    toVnet: boolean,
    maxIp: number,
    emit: Emit,
  ): number {
    const ip = buf.subarray(VNET_HDR_LEN, length);
    const version = ip[0]! >> 4;
    const udp = gsoType === GSO_UDP_L4;
    const ipHeader = version === 4 ? (ip[0]! & 0x0f) * 4 : 40;
    const protocol = version === 4 ? ip[9] : ip[6];
    if (
      (version !== 4 && version !== 6) || protocol !== (udp ? PROTO_UDP : PROTO_TCP) ||
      ip.length < ipHeader + (udp ? 8 : 20)
    ) {
      this.stats.malformed++;
      return 0;
    }
    const l4Header = udp ? 8 : (ip[ipHeader + 12]! >> 4) * 4;
    const headers = ipHeader + l4Header;
    let mss = buf[4]! | (buf[5]! << 8);
    if (mss > maxIp - headers) mss = maxIp - headers;
    if (mss <= 0 || headers > ip.length) {
      this.stats.malformed++;
      return 0;
    }
    const payload = ip.length - headers;
    const out = this.#scratch;
    const base = toVnet ? VNET_HDR_LEN : 0;
    const seq = udp ? 0 : ((ip[ipHeader + 4]! << 24) | (ip[ipHeader + 5]! << 16) |
      (ip[ipHeader + 6]! << 8) | ip[ipHeader + 7]!) >>> 0;
    const id = version === 4 ? getU16(ip, 4) : 0;
    let count = 0;
    for (let at = 0; at < payload; at += mss, count++) {
      const size = Math.min(mss, payload - at);
      const last = at + size >= payload;
      const segment = out.subarray(base, base + headers + size);
      segment.set(ip.subarray(0, headers));
      segment.set(ip.subarray(headers + at, headers + at + size), headers);
      if (version === 4) {
        setU16(segment, 2, headers + size);
        setU16(segment, 4, (id + count) & 0xffff);
        setU16(segment, 10, 0);
        setU16(segment, 10, ~checksumFold(checksumAdd(segment, 0, ipHeader)) & 0xffff);
      } else {
        setU16(segment, 4, l4Header + size);
      }
      const l4 = ipHeader;
      let checksumAt: number;
      if (udp) {
        setU16(segment, l4 + 4, 8 + size);
        checksumAt = l4 + 6;
      } else {
        const s = (seq + at) >>> 0;
        segment[l4 + 4] = s >>> 24;
        segment[l4 + 5] = (s >>> 16) & 0xff;
        segment[l4 + 6] = (s >>> 8) & 0xff;
        segment[l4 + 7] = s & 0xff;
        if (!last) segment[l4 + 13]! &= ~(TCP_FIN | TCP_PSH);
        if (count > 0) segment[l4 + 13]! &= ~TCP_CWR;
        checksumAt = l4 + 16;
      }
      const pseudo = pseudoHeader(segment, version, udp ? PROTO_UDP : PROTO_TCP, l4Header + size);
      if (toVnet) {
        // Partial checksum: the pseudo-header sum, which the peer's kernel completes.
        setU16(segment, checksumAt, checksumFold(pseudo));
        out.fill(0, 0, VNET_HDR_LEN);
        out[0] = F_NEEDS_CSUM;
        out[2] = headers & 0xff;
        out[3] = headers >>> 8;
        out[6] = l4 & 0xff;
        out[7] = l4 >>> 8;
        out[8] = checksumAt - l4;
        emit(out.subarray(0, VNET_HDR_LEN + headers + size));
      } else {
        setU16(segment, checksumAt, 0);
        let sum = ~checksumFold(checksumAdd(segment, l4, headers + size, pseudo)) & 0xffff;
        if (udp && sum === 0) sum = 0xffff; // 0 means "no checksum" in UDP over IPv4
        setU16(segment, checksumAt, sum);
        emit(segment);
      }
    }
    return count;
  }
}

const TCP_ACK = 0x10;

/**
 * Receive offload in user space (GRO): consecutive TCP segments of one flow, over IPv4 (no IP
 * options, no fragments) or IPv6 (no extension headers), that arrive in the same batch are
 * joined into one super-packet with a GSO header, so that a TUN with a virtio-net header takes
 * 64 KiB in one write instead of 45 writes of 1400 bytes, and its kernel runs TCP once per
 * super-packet. Anything that does not join passes unchanged, in order.
 */
export class Coalescer {
  readonly #write: (packets: Uint8Array[], count: number) => void;
  readonly #slots: Uint8Array[];
  readonly #out: Uint8Array[] = [];
  #used = 0;
  /** The run being built: its slot, length, and what the next segment must match. */
  #run: Uint8Array | undefined;
  #runLength = 0;
  #runSegments = 0;
  #segmentSize = 0;
  /** The run's IP header length: 20 for IPv4, 40 for IPv6. */
  #ipHeader = 0;
  /** The run's IP and TCP header length. */
  #headerLength = 0;
  #nextSeq = 0;

  /** `write` takes each finished batch, e.g. a TUN's `write`. */
  constructor(
    write: (packets: Uint8Array[], count: number) => void,
    slots = 64,
    slotSize = 65535 + VNET_HDR_LEN,
  ) {
    this.#write = write;
    this.#slots = Array.from({ length: slots }, () => new Uint8Array(slotSize));
  }

  /**
   * Adds `packet` (behind a virtio-net header when `vnet`) to the batch for a TUN that takes
   * virtio-net headers. The packet's bytes are used only until {@linkcode flush}.
   */
  add(packet: Uint8Array, vnet: boolean): void {
    // Out of slots: what is there goes now, and the batch goes on in fresh slots.
    if (this.#used === this.#slots.length) this.flush();
    const ipAt = vnet ? VNET_HDR_LEN : 0;
    const headerLength = this.#joinable(packet, ipAt, vnet);
    if (headerLength > 0 && this.#run !== undefined && this.#extends(packet, ipAt, headerLength)) {
      this.#append(packet, ipAt + headerLength);
      return;
    }
    this.#close();
    if (this.#used === this.#slots.length) this.flush();
    if (headerLength > 0) {
      this.#start(packet, ipAt, headerLength);
      return;
    }
    if (vnet) {
      this.#out.push(packet);
    } else {
      // A plain packet for a TUN with a header: an all-zero header says "nothing to do".
      const slot = this.#slots[this.#used++]!;
      slot.fill(0, 0, VNET_HDR_LEN);
      slot.set(packet, VNET_HDR_LEN);
      this.#out.push(slot.subarray(0, VNET_HDR_LEN + packet.length));
    }
  }

  /** Writes everything added since the last flush, joined where possible, and starts over. */
  flush(): void {
    this.#close();
    if (this.#out.length > 0) this.#write(this.#out, this.#out.length);
    this.#out.length = 0;
    this.#used = 0;
  }

  /**
   * The IP + TCP header length of a segment that may join a run, or 0: TCP data with ACK and
   * nothing but PSH besides, right after an IPv4 header without options or fragmentation or an
   * IPv6 header without extension headers, whose length field matches its bytes.
   */
  #joinable(packet: Uint8Array, ipAt: number, vnet: boolean): number {
    if (vnet && packet[ipAt - VNET_HDR_LEN + 1] !== GSO_NONE) return 0;
    const first = packet[ipAt];
    let ipHeader: number;
    let total: number;
    if (first === 0x45) {
      if (packet.length < ipAt + 40 || packet[ipAt + 9] !== PROTO_TCP) return 0;
      if ((packet[ipAt + 6]! & 0x3f) !== 0 || packet[ipAt + 7] !== 0) return 0; // fragments
      ipHeader = 20;
      total = getU16(packet, ipAt + 2);
    } else if (first !== undefined && first >> 4 === 6) {
      if (packet.length < ipAt + 60 || packet[ipAt + 6] !== PROTO_TCP) return 0;
      ipHeader = 40;
      total = 40 + getU16(packet, ipAt + 4);
    } else {
      return 0;
    }
    const tcp = ipAt + ipHeader;
    const flags = packet[tcp + 13]!;
    if ((flags & ~(TCP_ACK | TCP_PSH)) !== 0 || (flags & TCP_ACK) === 0) return 0;
    const tcpHeader = (packet[tcp + 12]! >> 4) * 4;
    if (tcpHeader < 20) return 0;
    const headerLength = ipHeader + tcpHeader;
    if (total !== packet.length - ipAt || total <= headerLength) return 0;
    return headerLength;
  }

  /** Whether the segment continues the current run: same flow and headers, next sequence. */
  #extends(packet: Uint8Array, ipAt: number, headerLength: number): boolean {
    const run = this.#run!;
    const payload = packet.length - ipAt - headerLength;
    if (headerLength !== this.#headerLength || payload > this.#segmentSize) return false;
    if (this.#runLength + payload > run.length - VNET_HDR_LEN) return false;
    if (this.#runLength - VNET_HDR_LEN + payload > 65535) return false;
    const at = VNET_HDR_LEN;
    // The first byte holds the version: an IPv4 and an IPv6 run never mix.
    if (packet[ipAt] !== run[at]) return false;
    const ipHeader = this.#ipHeader;
    if (ipHeader === 20) {
      // TOS, DF, TTL, protocol, addresses.
      if (packet[ipAt + 1] !== run[at + 1] || packet[ipAt + 6] !== run[at + 6]) return false;
      if (packet[ipAt + 8] !== run[at + 8]) return false;
      for (let i = 12; i < 20; i++) if (packet[ipAt + i] !== run[at + i]) return false;
    } else {
      // Traffic class, flow label, hop limit, addresses (the next header is TCP in both).
      if (packet[ipAt + 1] !== run[at + 1] || packet[ipAt + 2] !== run[at + 2]) return false;
      if (packet[ipAt + 3] !== run[at + 3] || packet[ipAt + 7] !== run[at + 7]) return false;
      for (let i = 8; i < 40; i++) if (packet[ipAt + i] !== run[at + i]) return false;
    }
    // Ports, ack, data offset, window, urgent pointer, options; not the sequence (checked
    // below), flags or checksum.
    const tcp = ipAt + ipHeader;
    const runTcp = at + ipHeader;
    for (let i = 0; i < 4; i++) if (packet[tcp + i] !== run[runTcp + i]) return false;
    for (let i = 8; i < 13; i++) if (packet[tcp + i] !== run[runTcp + i]) return false;
    if (packet[tcp + 14] !== run[runTcp + 14] || packet[tcp + 15] !== run[runTcp + 15]) {
      return false;
    }
    if (packet[tcp + 18] !== run[runTcp + 18] || packet[tcp + 19] !== run[runTcp + 19]) {
      return false;
    }
    for (let i = 20; i < headerLength - ipHeader; i++) {
      if (packet[tcp + i] !== run[runTcp + i]) return false;
    }
    return ((packet[tcp + 4]! << 24) | (packet[tcp + 5]! << 16) | (packet[tcp + 6]! << 8) |
          packet[tcp + 7]!) >>> 0 === this.#nextSeq;
  }

  #start(packet: Uint8Array, ipAt: number, headerLength: number): void {
    const slot = this.#slots[this.#used++]!;
    // The segment's own header (a partial checksum, say) holds while it stays alone.
    if (ipAt === VNET_HDR_LEN) slot.set(packet.subarray(0, VNET_HDR_LEN));
    else slot.fill(0, 0, VNET_HDR_LEN);
    slot.set(packet.subarray(ipAt), VNET_HDR_LEN);
    this.#run = slot;
    this.#runLength = VNET_HDR_LEN + packet.length - ipAt;
    this.#runSegments = 1;
    const ipHeader = packet[ipAt] === 0x45 ? 20 : 40;
    this.#ipHeader = ipHeader;
    this.#headerLength = headerLength;
    this.#segmentSize = packet.length - ipAt - headerLength;
    const tcp = ipAt + ipHeader;
    const seq = ((packet[tcp + 4]! << 24) | (packet[tcp + 5]! << 16) |
      (packet[tcp + 6]! << 8) | packet[tcp + 7]!) >>> 0;
    this.#nextSeq = (seq + this.#segmentSize) >>> 0;
    // A PSH or a short segment ends the run at once.
    if ((packet[tcp + 13]! & TCP_PSH) !== 0) this.#close();
  }

  #append(packet: Uint8Array, payloadAt: number): void {
    const run = this.#run!;
    const payload = packet.length - payloadAt;
    run.set(packet.subarray(payloadAt), this.#runLength);
    this.#runLength += payload;
    this.#runSegments++;
    this.#nextSeq = (this.#nextSeq + payload) >>> 0;
    const flagsAt = this.#ipHeader + 13;
    const tcpFlags = packet[payloadAt - this.#headerLength + flagsAt]!;
    run[VNET_HDR_LEN + flagsAt]! |= tcpFlags & TCP_PSH;
    if (payload < this.#segmentSize || (tcpFlags & TCP_PSH) !== 0) this.#close();
  }

  /** Finishes the run: one plain packet as it came, or a super-packet with a GSO header. */
  #close(): void {
    const run = this.#run;
    if (run === undefined) return;
    this.#run = undefined;
    const packet = run.subarray(0, this.#runLength);
    if (this.#runSegments > 1) {
      packet.fill(0, 0, VNET_HDR_LEN);
      const ip = packet.subarray(VNET_HDR_LEN);
      const ipHeader = this.#ipHeader;
      const tcpLength = ip.length - ipHeader;
      if (ipHeader === 20) {
        setU16(ip, 2, ip.length);
        setU16(ip, 10, 0);
        setU16(ip, 10, ~checksumFold(checksumAdd(ip, 0, 20)) & 0xffff);
        packet[1] = GSO_TCPV4;
      } else {
        setU16(ip, 4, tcpLength);
        packet[1] = GSO_TCPV6;
      }
      // Partial checksum: the pseudo-header sum, which the kernel completes per segment.
      const version = ipHeader === 20 ? 4 : 6;
      setU16(ip, ipHeader + 16, checksumFold(pseudoHeader(ip, version, PROTO_TCP, tcpLength)));
      packet[0] = F_NEEDS_CSUM;
      packet[2] = this.#headerLength & 0xff;
      packet[3] = this.#headerLength >>> 8;
      packet[4] = this.#segmentSize & 0xff;
      packet[5] = this.#segmentSize >>> 8;
      packet[6] = ipHeader;
      packet[8] = 16;
    }
    this.#out.push(packet);
  }
}
