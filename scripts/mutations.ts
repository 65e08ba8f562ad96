/**
 * The deliberate breakages `deno task mutate` applies, one at a time, to a copy of the code.
 * Each breaks one promise of README.md or PROTOCOL.md; the tests named must then fail. A
 * mutation whose `find` no longer occurs exactly once in its file fails
 * tests/mutations_test.ts, so the list cannot silently go stale.
 *
 * @module
 */

/** One named breakage: an exact text replacement in one source file. */
export interface Mutation {
  /** Short name, for `--only`. */
  name: string;
  /** The promise it breaks, in a few words. */
  breaks: string;
  /** Source file, from the repository root. */
  file: string;
  /** Text that occurs exactly once in `file`. */
  find: string;
  /** What it becomes. */
  replace: string;
  /** Test files that must fail, from the repository root. */
  tests: string[];
  /** A `deno test --filter` that narrows them to the tests that should catch it. */
  filter?: string;
}

const ATTACK = "tests/server_attack_test.ts";
const CLAIMS = "tests/claims_e2e_test.ts";
const UDP_E2E = "tests/udp_e2e_vpn_test.ts";

/** The list, grouped by where the promise lives. */
export const MUTATIONS: Mutation[] = [
  // --- the UDP data channel ------------------------------------------------------------
  {
    name: "replay-window-1024",
    breaks: "a 2048-packet replay window",
    file: "mod/replay.ts",
    find: "export const WINDOW = 2048;",
    replace: "export const WINDOW = 1024;",
    tests: ["tests/replay_test.ts"],
  },
  {
    name: "replay-seen-accepted",
    breaks: "a replayed counter is dropped",
    file: "mod/replay.ts",
    find: "return (block & (1 << (counter & 31))) === 0;",
    replace: "return true;",
    tests: ["tests/replay_test.ts", ATTACK],
  },
  {
    name: "aead-tag-ignored",
    breaks: "a datagram that does not authenticate is dropped",
    file: "ffi/crypto.ts",
    find: "return lib.EVP_DecryptFinal_ex(ctx, this.#final, outl) > 0 ? plain : -1;",
    replace: "lib.EVP_DecryptFinal_ex(ctx, this.#final, outl);\n    return plain;",
    tests: ["tests/crypto_test.ts", ATTACK],
  },
  {
    name: "udp-address-before-auth",
    breaks: "the UDP address is learned only from authenticated datagrams",
    file: "mod/server_udp.ts",
    find: "const length = state.crypto.open(datagram, size, body, out);",
    replace:
      "copySockAddr(from, state.peer);\n    const length = state.crypto.open(datagram, size, body, out);",
    tests: [ATTACK],
  },
  {
    name: "bad-datagram-answered",
    breaks: "bad datagrams are answered with nothing",
    file: "mod/server_udp.ts",
    find: "      this.stats.unknown++;\n      return false;",
    replace:
      "      this.stats.unknown++;\n      this.#socket.sendBatch([datagram], [size], [from], 1);\n      return false;",
    tests: [ATTACK],
  },
  {
    name: "server-udp-never-dead",
    breaks: "the server moves a silent UDP path's data to TLS",
    file: "mod/server_udp.ts",
    find: "      state.alive = false;\n",
    replace: "",
    tests: [ATTACK, UDP_E2E],
  },
  {
    name: "client-udp-fallback-off",
    breaks: "the client moves its data to TLS when UDP goes silent",
    file: "mod/client_udp.ts",
    find: "      this.#active = false;\n",
    replace: "",
    tests: [UDP_E2E],
    filter: "UDP lost both ways",
  },
  {
    name: "rekey-after-2^33",
    breaks: "a rekey after 2^32 packets",
    file: "mod/datagram.ts",
    find: "export const REKEY_AFTER_PACKETS = 2 ** 32;",
    replace: "export const REKEY_AFTER_PACKETS = 2 ** 33;",
    tests: [ATTACK],
  },
  {
    name: "reject-after-raised",
    breaks: "a key seals nothing past 2^32 + 2^24 packets",
    file: "mod/datagram.ts",
    find: "export const REJECT_AFTER_PACKETS = 2 ** 32 + 2 ** 24;",
    replace: "export const REJECT_AFTER_PACKETS = 2 ** 33;",
    tests: ["tests/datagram_test.ts", ATTACK],
  },
  {
    name: "kdf-salt-changed",
    breaks: "the documented UDP key schedule",
    file: "mod/datagram.ts",
    find: 'const HKDF_SALT = new TextEncoder().encode("vpn udp v1");',
    replace: 'const HKDF_SALT = new TextEncoder().encode("vpn udp v2");',
    tests: ["tests/protocol_test.ts"],
  },
  {
    name: "nonce-counter-dropped",
    breaks: "the nonce is the salt and the datagram's counter",
    file: "mod/datagram.ts",
    find: "for (let i = 0; i < 8; i++) nonce[SALT_LEN + i] = datagram[5 + i]!;",
    replace: "",
    tests: ["tests/protocol_test.ts", "tests/datagram_test.ts"],
  },
  {
    name: "udp-mtu-overshoot-server",
    breaks: "1457-byte datagrams at the default MTU (server to client)",
    file: "mod/server.ts",
    find: "        this.#config.mtu,\n",
    replace: "        this.#config.mtu + 60,\n",
    tests: [CLAIMS],
  },
  {
    name: "udp-mtu-overshoot-client",
    breaks: "1457-byte datagrams at the default MTU (client to server)",
    file: "mod/client.ts",
    find: "const mtu = this.#push!.mtu;",
    replace: "const mtu = this.#push!.mtu + 60;",
    tests: [CLAIMS],
  },
  {
    name: "proto-tcp-offers-udp",
    breaks: "--proto tcp sends no UDP",
    file: "mod/client.ts",
    find: 'if (proto === "tcp") return undefined;',
    replace: "",
    tests: [CLAIMS],
  },
  // --- frames and the handshake --------------------------------------------------------
  {
    name: "frame-bound-plus-one",
    breaks: "the largest payload is 65,545 bytes",
    file: "mod/wire.ts",
    find: "export const MAX_PAYLOAD = 65535 + 10;",
    replace: "export const MAX_PAYLOAD = 65535 + 11;",
    tests: ["tests/wire_test.ts", ATTACK],
  },
  {
    name: "frame-bound-minus-one",
    breaks: "a 65,545-byte payload is taken",
    file: "mod/wire.ts",
    find: "export const MAX_PAYLOAD = 65535 + 10;",
    replace: "export const MAX_PAYLOAD = 65535 + 9;",
    tests: ["tests/wire_test.ts", ATTACK],
  },
  {
    name: "frame-bound-inclusive",
    breaks: "a payload of exactly 65,545 bytes is taken",
    file: "mod/wire.ts",
    find: "    if (length > MAX_PAYLOAD) {\n      throw new FrameError(",
    replace: "    if (length >= MAX_PAYLOAD) {\n      throw new FrameError(",
    tests: ["tests/wire_test.ts", ATTACK],
  },
  {
    name: "frame-bound-removed",
    breaks: "a longer frame ends the session",
    file: "mod/wire.ts",
    find: "    if (length > MAX_PAYLOAD) {\n      throw new FrameError(",
    replace: "    if (false) {\n      throw new FrameError(",
    tests: ["tests/wire_test.ts", ATTACK],
  },
  {
    name: "malformed-frame-ends-all",
    breaks: "a malformed frame after AUTH ends only its own session",
    file: "mod/session.ts",
    find: 'if (error instanceof FrameError) this.end("protocol", error.message);',
    replace: "if (error instanceof FrameError) this.#server.stop();",
    tests: [ATTACK],
  },
  {
    name: "hello-nonce-zeros",
    breaks: "HELLO carries a fresh nonce, so an AUTH cannot be replayed",
    file: "mod/handshake.ts",
    find: "const serverNonce = crypto.getRandomValues(new Uint8Array(NONCE_BYTES));",
    replace: "const serverNonce = new Uint8Array(NONCE_BYTES);",
    tests: [ATTACK],
  },
  {
    name: "dialled-name-unchecked",
    breaks: "an AUTH naming another server is refused",
    file: "mod/handshake.ts",
    find: "if (!trust.serverNames.has(serverName)) {",
    replace: "if (false) {",
    tests: [ATTACK],
  },
  {
    name: "preauth-timeout-30s",
    breaks: "a connection must authenticate within 10 s",
    file: "mod/server.ts",
    find: "const PRE_AUTH_TIMEOUT_MS = 10_000;",
    replace: "const PRE_AUTH_TIMEOUT_MS = 30_000;",
    tests: [ATTACK],
  },
  {
    name: "preauth-timeout-5s",
    breaks: "a connection has 10 s to authenticate",
    file: "mod/server.ts",
    find: "const PRE_AUTH_TIMEOUT_MS = 10_000;",
    replace: "const PRE_AUTH_TIMEOUT_MS = 5_000;",
    tests: [ATTACK],
  },
  {
    name: "preauth-cap-removed",
    breaks: "at most 64 connections in their handshake",
    file: "mod/server.ts",
    find: "if (this.#preAuth.size >= MAX_PRE_AUTH) {",
    replace: "if (false) {",
    tests: [ATTACK],
  },
  {
    name: "preauth-cap-63",
    breaks: "64 connections may be in their handshake",
    file: "mod/server.ts",
    find: "const MAX_PRE_AUTH = 64;",
    replace: "const MAX_PRE_AUTH = 63;",
    tests: [ATTACK],
  },
  {
    name: "preauth-cap-refusal-left-open",
    breaks: "a connection refused at the cap is closed at once",
    file: "mod/server.ts",
    find: "          shutdownTcp(conn.localAddr, conn.remoteAddr);\n          continue;",
    replace: "          continue;",
    tests: [ATTACK],
  },
  {
    name: "server-nodelay-off",
    breaks: "TCP_NODELAY on the server's TLS sockets",
    file: "mod/server.ts",
    find: "      setTcpNoDelay(conn.localAddr, conn.remoteAddr);\n",
    replace: "",
    tests: [ATTACK],
  },
  {
    name: "client-nodelay-off",
    breaks: "TCP_NODELAY on the client's TLS socket",
    file: "mod/client.ts",
    find: "      setTcpNoDelay(conn.localAddr, conn.remoteAddr);\n",
    replace: "",
    tests: [ATTACK],
  },
  // --- sessions on the server ----------------------------------------------------------
  {
    name: "anti-spoofing-off",
    breaks: "a client can only send from its own address",
    file: "mod/server.ts",
    find: "ipv4Source(buffer, ip) !== session.addressNumber",
    replace: "false",
    tests: ["tests/session_test.ts"],
  },
  {
    name: "pool-release-off",
    breaks: "a session's end frees its address",
    file: "mod/server.ts",
    find: "      this.pool.release(session.address);\n",
    replace: "",
    tests: ["tests/session_test.ts", "tests/vpn_e2e_test.ts"],
  },
  {
    name: "server-keepalive-tripled",
    breaks: "the server ends a session silent for keepalive.timeout",
    file: "mod/session.ts",
    find: "if (performance.now() - this.channel.lastReceived > timeout * 1000) {",
    replace: "if (performance.now() - this.channel.lastReceived > timeout * 3000) {",
    tests: [ATTACK],
  },
  {
    name: "revocation-poll-5500",
    breaks: "a revoked client is dropped within 5 s",
    file: "mod/server.ts",
    find: "const REVOCATION_POLL_MS = 1000;",
    replace: "const REVOCATION_POLL_MS = 5500;",
    tests: [ATTACK],
  },
  {
    name: "revocation-live-kept",
    breaks: "a revoked client's live session is dropped",
    file: "mod/server.ts",
    find: 'session.end("revoked", "certificate revoked");',
    replace: "",
    tests: ["tests/session_test.ts", ATTACK],
  },
  // --- the client ----------------------------------------------------------------------
  {
    name: "client-mtu-unset",
    breaks: "the pushed MTU is set on the client's TUN",
    file: "mod/client.ts",
    find: "if (old?.mtu !== push.mtu) nl.setMtu(index, push.mtu);",
    replace: "",
    tests: [CLAIMS],
  },
  {
    name: "client-keepalive-tripled",
    breaks: "the client ends a session the server left silent for keepalive.timeout",
    file: "mod/client.ts",
    find: "if (performance.now() - channel.lastReceived > timeout * 1000) {",
    replace: "if (performance.now() - channel.lastReceived > timeout * 3000) {",
    tests: [CLAIMS],
  },
  {
    name: "backoff-no-doubling",
    breaks: "reconnects wait 1 s doubling to 60 s",
    file: "mod/client.ts",
    find: "BACKOFF_MIN_S * 2 ** failures",
    replace: "BACKOFF_MIN_S * (failures + 1)",
    tests: ["tests/backoff_test.ts"],
  },
  {
    name: "backoff-ceiling-120",
    breaks: "reconnects wait at most 60 s",
    file: "mod/client.ts",
    find: "const BACKOFF_MAX_S = 60;",
    replace: "const BACKOFF_MAX_S = 120;",
    tests: ["tests/backoff_test.ts"],
  },
  {
    name: "backoff-no-jitter",
    breaks: "reconnect waits have up to 25% jitter",
    file: "mod/client.ts",
    find: "return ceiling * (1 - 0.25 * random);",
    replace: "return ceiling;",
    tests: ["tests/backoff_test.ts"],
  },
  // --- the command line ----------------------------------------------------------------
  {
    name: "sigint-ignored-serve",
    breaks: "vpn serve stops cleanly on SIGINT",
    file: "mod/commands.ts",
    find: 'server.stop();\n  Deno.addSignalListener("SIGINT", stop);',
    replace: "server.stop();",
    tests: [CLAIMS],
  },
  {
    name: "sigint-ignored-connect",
    breaks: "vpn connect says goodbye and cleans up on SIGINT",
    file: "mod/commands.ts",
    find: 'client.stop();\n  Deno.addSignalListener("SIGINT", stop);',
    replace: "client.stop();",
    tests: [CLAIMS],
  },
  {
    name: "verbose-ignored",
    breaks: "-v overrides log.level",
    file: "main.ts",
    find: 'if (values.verbose) return "debug";',
    replace: "",
    tests: [CLAIMS],
  },
  {
    name: "quiet-ignored",
    breaks: "-q overrides log.level",
    file: "main.ts",
    find: 'if (values.quiet) return "error";',
    replace: "",
    tests: [CLAIMS],
  },
  // --- the bounded-wait hygiene: each of these used to hang a test, now it fails it -----
  {
    name: "preauth-timer-never-drops",
    breaks: "an idle connection is closed after 10 s (used to hang the test)",
    file: "mod/server.ts",
    find: "const timer = setTimeout(drop, PRE_AUTH_TIMEOUT_MS);",
    replace: "const timer = setTimeout(() => {}, PRE_AUTH_TIMEOUT_MS);",
    tests: [ATTACK, "tests/vpn_e2e_test.ts"],
    filter: "not authenticated after 10 s",
  },
  {
    name: "shutdown-noop",
    breaks: "a connection closed mid-handshake is shut down",
    file: "ffi/socket.ts",
    find: "return fd !== undefined && libc().shutdown(fd, SHUT_RDWR) === 0;",
    replace: "return fd !== undefined;",
    tests: ["tests/socket_test.ts", ATTACK],
  },
  {
    name: "readiness-close-no-wake",
    breaks: "closing a socket wakes its pending receive",
    file: "ffi/readiness.ts",
    find: "else libc().write(this.#wakeFd, new BigUint64Array([1n]), 8);",
    replace: "else void 0;",
    tests: ["tests/udp_test.ts"],
  },
  {
    name: "control-frames-dropped",
    breaks: "control frames leave ahead of queued data",
    file: "mod/channel.ts",
    find: "this.#control.push(encodeFrame(type, payload));",
    replace: "void encodeFrame;",
    tests: ["tests/channel_test.ts"],
  },
  {
    name: "drained-never",
    breaks: "a sender waiting for the write in flight is woken",
    file: "mod/channel.ts",
    find: "return new Promise((resolve) => this.#drainWaiters.push(resolve));",
    replace: "return new Promise(() => {});",
    tests: ["tests/channel_test.ts"],
  },
  {
    name: "tun-writes-uncounted",
    breaks: "the TUN counts what it writes",
    file: "ffi/tun.ts",
    find: "this.stats.writtenPackets += written;",
    replace: "",
    tests: ["tests/tun_e2e_test.ts"],
  },
  {
    name: "parse-remote-keeps-brackets",
    breaks: "[v6]:port remotes",
    file: "mod/config.ts",
    find: "host = text.slice(1, close);",
    replace: "host = text.slice(0, close + 1);",
    tests: ["tests/config_test.ts", CLAIMS],
  },
  {
    name: "client-udp-ipv4-only",
    breaks: "the UDP data channel over IPv6",
    file: "mod/client_udp.ts",
    find: 'const ipv6 = host.includes(":");',
    replace: "const ipv6 = false;",
    tests: [CLAIMS],
  },
  // --- offload -------------------------------------------------------------------------
  {
    name: "checksum-odd-byte-dropped",
    breaks: "checksums cover an odd trailing byte",
    file: "mod/offload.ts",
    find: "  if (i < end) sum += bytes[i]! << 8;\n",
    replace: "",
    tests: ["tests/checksum_test.ts", "tests/offload_test.ts"],
  },
  {
    name: "checksum-fold-once",
    breaks: "checksums fold every carry",
    file: "mod/offload.ts",
    find: "while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);",
    replace: "if (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);",
    tests: ["tests/checksum_test.ts", "tests/offload_test.ts"],
  },
];
