import { assert, assertEquals, assertThrows } from "./_assert.ts";
import {
  ControlMessageReader,
  encodeControlMessage,
  MAX_CONTROL_MESSAGE,
  PUSH_BUNDLE_SIZE,
  pushReplyMessages,
} from "../mod/openvpn/control_message.ts";
import { OpenVpnPacketError } from "../mod/openvpn/packet.ts";

const ascii = (text: string) => new TextEncoder().encode(text);

// The reply that made a stock 2.6.14 client work with a non-EKM server (OPENVPN.md 7.3, E6).
const LAB_C_OPTIONS = [
  "route-gateway 10.8.0.1",
  "topology subnet",
  "ping 10",
  "ping-restart 60",
  "ifconfig 10.8.0.2 255.255.255.0",
  "peer-id 0",
  "cipher AES-256-GCM",
  "protocol-flags cc-exit",
  "tun-mtu 1500",
];

Deno.test("ControlMessageReader splits on NUL and keeps an unfinished message", () => {
  const reader = new ControlMessageReader();
  assertEquals(reader.push(ascii("PUSH_REQ")), []);
  assertEquals(reader.push(ascii("UEST\0EXIT\0AUTH_")), ["PUSH_REQUEST", "EXIT"]);
  assertEquals(reader.push(ascii("FAILED,bad\0")), ["AUTH_FAILED,bad"]);
  assertEquals(reader.push(new Uint8Array()), []);
});

Deno.test("ControlMessageReader gives the same messages fed one byte at a time", () => {
  const stream = ascii("PUSH_REPLY,ping 10\0\0EXIT\r\n\0RESTART,[N]bye\0");
  const reader = new ControlMessageReader();
  const messages = [...stream].flatMap((byte) => reader.push(new Uint8Array([byte])));
  assertEquals(messages, ["PUSH_REPLY,ping 10", "EXIT", "RESTART,[N]bye"]);
});

Deno.test("ControlMessageReader strips trailing CR/LF and skips empty messages", () => {
  const reader = new ControlMessageReader();
  assertEquals(reader.push(ascii("PUSH_REQUEST\r\n\0\r\n\0\0EXIT\n\n\0")), [
    "PUSH_REQUEST",
    "EXIT",
  ]);
  assertEquals(reader.dropped, 0);
});

Deno.test("ControlMessageReader drops and counts a message with non-printable bytes", () => {
  const reader = new ControlMessageReader();
  const messages = reader.push(
    new Uint8Array([...ascii("A\nB\0"), ...ascii("x\x01\0"), 0xc3, 0xa9, 0, ...ascii("OK\0")]),
  );
  assertEquals(messages, ["OK"]);
  assertEquals(reader.dropped, 3);
});

Deno.test("ControlMessageReader accepts 2047 bytes and a NUL, refuses 2048 without NUL", () => {
  assertEquals(MAX_CONTROL_MESSAGE, 2048);
  const longest = "A".repeat(MAX_CONTROL_MESSAGE - 1);
  const reader = new ControlMessageReader();
  assertEquals(reader.push(ascii(longest)), []);
  assertEquals(reader.push(ascii("\0")), [longest]);
  assertThrows(() => reader.push(ascii("B".repeat(2048))), OpenVpnPacketError, /2047 bytes/);
  // Also when it arrives in pieces, and when its NUL is in the same chunk.
  const pieces = new ControlMessageReader();
  assertEquals(pieces.push(ascii("C".repeat(2000))), []);
  assertThrows(() => pieces.push(ascii("C".repeat(48))), OpenVpnPacketError);
  assertThrows(
    () => new ControlMessageReader().push(ascii("D".repeat(3000) + "\0")),
    OpenVpnPacketError,
  );
});

Deno.test("ControlMessageReader throws only OpenVpnPacketError on noise", () => {
  const reader = new ControlMessageReader();
  for (let i = 0; i < 500; i++) {
    const chunk = crypto.getRandomValues(new Uint8Array(i % 300));
    try {
      for (const message of reader.push(chunk)) assert(/^[ -~]+$/.test(message));
    } catch (error) {
      assert(error instanceof OpenVpnPacketError, String(error));
    }
  }
});

Deno.test("encodeControlMessage() appends one NUL and refuses what a receiver cannot read", () => {
  assertEquals(encodeControlMessage("PUSH_REQUEST"), ascii("PUSH_REQUEST\0"));
  assertEquals(encodeControlMessage("A".repeat(2047)).length, 2048);
  assertThrows(() => encodeControlMessage("A".repeat(2048)), RangeError, /at most 2047/);
  assertThrows(() => encodeControlMessage("EXIT\n"), RangeError, /0xa/);
  assertThrows(() => encodeControlMessage("h\u00e9"), RangeError, /printable ASCII/);
});

Deno.test("pushReplyMessages() writes one PUSH_REPLY without continuation when it fits", () => {
  assertEquals(pushReplyMessages(LAB_C_OPTIONS), [
    "PUSH_REPLY,route-gateway 10.8.0.1,topology subnet,ping 10,ping-restart 60," +
    "ifconfig 10.8.0.2 255.255.255.0,peer-id 0,cipher AES-256-GCM,protocol-flags cc-exit," +
    "tun-mtu 1500",
  ]);
  assertEquals(pushReplyMessages([]), ["PUSH_REPLY"]);
});

Deno.test("pushReplyMessages() splits a long reply with push-continuation 2 ... 1", () => {
  const routes = Array.from(
    { length: 200 },
    (_, i) => `route 10.${i >> 8}.${i & 0xff}.0 255.255.255.0`,
  );
  const options = [...routes, ...LAB_C_OPTIONS];
  const messages = pushReplyMessages(options);
  assert(messages.length > 1);
  for (const [i, message] of messages.entries()) {
    assert(message.startsWith("PUSH_REPLY,"), message);
    assert(message.length + 1 <= PUSH_BUNDLE_SIZE, `message ${i}: ${message.length} bytes`);
    const last = i === messages.length - 1;
    assert(message.endsWith(last ? ",push-continuation 1" : ",push-continuation 2"), message);
  }
  const carried = messages.flatMap((message) =>
    message.split(",").slice(1).filter((option) => !option.startsWith("push-continuation"))
  );
  assertEquals(carried, options);
  // Greedy: no message could have taken the next one's first option.
  for (let i = 0; i + 1 < messages.length; i++) {
    const next = messages[i + 1]!.split(",")[1]!;
    assert(messages[i]!.length + 1 + next.length + 1 > PUSH_BUNDLE_SIZE);
  }
});

Deno.test("pushReplyMessages() splits exactly when one message would pass 1024 bytes", () => {
  assertEquals(PUSH_BUNDLE_SIZE, 1024);
  // "PUSH_REPLY" and 1013 bytes of ",option" make 1023 bytes and the NUL: one message.
  const fits = ["a".repeat(500), "b".repeat(511)];
  assertEquals(pushReplyMessages(fits), [`PUSH_REPLY,${fits[0]},${fits[1]}`]);
  const over = ["a".repeat(500), "b".repeat(512)];
  assertEquals(pushReplyMessages(over), [
    `PUSH_REPLY,${over[0]},push-continuation 2`,
    `PUSH_REPLY,${over[1]},push-continuation 1`,
  ]);
});

Deno.test("pushReplyMessages() refuses options it cannot send whole", () => {
  // 1024 - NUL - "PUSH_REPLY," - ",push-continuation 2" leaves 992 bytes for one option.
  const widest = pushReplyMessages(["x".repeat(992), "y".repeat(30)]);
  assertEquals(widest.map((message) => message.length), [1023, 11 + 30 + 20]);
  assertThrows(() => pushReplyMessages(["x".repeat(993), "y"]), RangeError, /at most 992/);
  assertThrows(() => pushReplyMessages(["route a,b"]), RangeError, /comma/);
  assertThrows(() => pushReplyMessages([""]), RangeError, /empty/);
  assertThrows(() => pushReplyMessages(["ping 10\0"]), RangeError, /printable/);
});
