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
