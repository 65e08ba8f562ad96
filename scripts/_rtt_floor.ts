/**
 * The round-trip floor of this runtime, for `deno task bench --floor`: the smallest UDP tunnel
 * a Deno program can be, one end per process. One thread blocks in one synchronous `poll(2)`
 * over a TUN and a UDP socket and moves each packet TUN → AES-256-GCM → `sendto` and back;
 * no event loop, batching, offload, routing or handshake. It is not a VPN (a fixed key, no
 * replay check): only a measure of how fast one wake-up per hop can be here.
 *
 * Usage (root, in a namespace): deno run -A scripts/_rtt_floor.ts TUN_CIDR PEER_IPV4
 * It prints "ready" once the TUN is up and runs until killed.
 *
 * @module
 */

import { check, cString, libc } from "../ffi/libc.ts";
import { Aead } from "../ffi/crypto.ts";
import { Netlink } from "../ffi/netlink.ts";
import { encodeSockAddr, newSockAddr } from "../ffi/udp.ts";
import {
  AF_INET,
  IFF_NO_PI,
  IFF_TUN,
  O_CLOEXEC,
  POLLIN,
  SOCK_CLOEXEC,
  SOCK_DGRAM,
  SOCK_NONBLOCK,
  TUNSETIFF,
} from "../ffi/constants.ts";

const PORT = 5555;
const NAME = "floor0";
const O_RDWR = 2;
const O_NONBLOCK = 0o4000;
const NONCE_LEN = 12;

const [cidr, peer] = Deno.args;
if (cidr === undefined || peer === undefined) {
  console.error("usage: deno run -A scripts/_rtt_floor.ts TUN_CIDR PEER_IPV4");
  Deno.exit(2);
}
const c = libc();

const tun = check(
  "open(/dev/net/tun)",
  c.open(cString("/dev/net/tun"), O_RDWR | O_NONBLOCK | O_CLOEXEC),
);
const ifreq = new Uint8Array(40);
ifreq.set(new TextEncoder().encode(NAME));
new DataView(ifreq.buffer).setUint16(16, IFF_TUN | IFF_NO_PI, true);
check("ioctl(TUNSETIFF)", c.ioctl(tun, TUNSETIFF, ifreq));
using netlink = Netlink.open();
const index = netlink.linkIndex(NAME);
netlink.setMtu(index, 1400);
netlink.addAddress(index, cidr);
netlink.setLinkUp(index);

const udp = check("socket", c.socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
const local = encodeSockAddr("0.0.0.0", PORT);
check("bind", c.bind(udp, local, 16));
const to = encodeSockAddr(peer, PORT, newSockAddr());

// Both ends share one key; the nonce travels in front of each datagram.
const key = new Uint8Array(32).fill(7);
using seal = Aead.create("aes-256-gcm", key, true);
using open = Aead.create("aes-256-gcm", key, false);
const nonce = new Uint8Array(NONCE_LEN);
const nonceView = new DataView(nonce.buffer);
const none = new Uint8Array(0);
const packet = new Uint8Array(2048);
const datagram = new Uint8Array(2048);
const sealed = datagram.subarray(NONCE_LEN);
const plain = new Uint8Array(2048);
let counter = 0;

// struct pollfd[2] { int fd; short events; short revents; }: the TUN, then the socket.
const pollfds = new Uint8Array(16);
const view = new DataView(pollfds.buffer);
view.setInt32(0, tun, true);
view.setInt16(4, POLLIN, true);
view.setInt32(8, udp, true);
view.setInt16(12, POLLIN, true);

console.log("ready");
for (;;) {
  if (c.poll(pollfds, 2, -1) < 0) continue; // EINTR
  for (let n; (n = c.read(tun, packet, packet.length)) > 0;) {
    nonceView.setUint32(8, ++counter);
    datagram.set(nonce);
    const length = seal.seal(nonce, none, 0, packet, n, sealed);
    c.sendto(udp, datagram, NONCE_LEN + length, 0, to, 16);
  }
  for (let n; (n = c.recv(udp, datagram, datagram.length, 0)) > 0;) {
    if (n <= NONCE_LEN) continue;
    for (let i = 0; i < NONCE_LEN; i++) nonce[i] = datagram[i]!;
    const length = open.open(nonce, none, 0, sealed, n - NONCE_LEN, plain);
    if (length > 0) c.write(tun, plain, length);
  }
}
