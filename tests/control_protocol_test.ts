/**
 * The control socket's line format (PROTOCOL.md, "Control socket"): requests and replies as
 * the document writes them by hand, strict decoding of each malformed form, and the line cap.
 */

import { assert, assertEquals, assertMatch, assertThrows } from "./_assert.ts";
import {
  ControlProtocolError,
  decodeReply,
  decodeRequest,
  encodeError,
  encodeRequest,
  encodeResult,
  LineReader,
  MAX_REQUEST_LINE,
} from "../mod/control/protocol.ts";

Deno.test("control requests decode as PROTOCOL.md writes them", () => {
  assertEquals(decodeRequest('{"v":1,"id":7,"cmd":"status"}'), { v: 1, id: 7, cmd: "status" });
  assertEquals(decodeRequest('{"v":1,"id":0,"cmd":"reload"}'), { v: 1, id: 0, cmd: "reload" });
  assertEquals(decodeRequest('{"cmd":"kill","name":"alice","id":3,"v":1}'), {
    v: 1,
    id: 3,
    cmd: "kill",
    name: "alice",
  });
  const line = encodeRequest({ v: 1, id: 9, cmd: "kill", name: "bob" });
  assertEquals(line, '{"v":1,"id":9,"cmd":"kill","name":"bob"}\n');
  assertEquals(decodeRequest(line.trimEnd()), { v: 1, id: 9, cmd: "kill", name: "bob" });
});

Deno.test("control replies encode and decode both ways", () => {
  assertEquals(encodeResult(4, { pid: 1 }), '{"v":1,"id":4,"ok":true,"result":{"pid":1}}\n');
  assertEquals(encodeError(null, "no"), '{"v":1,"id":null,"ok":false,"error":"no"}\n');
  assertEquals(decodeReply('{"v":1,"id":4,"ok":true,"result":[1]}'), {
    v: 1,
    id: 4,
    ok: true,
    result: [1],
  });
  assertEquals(decodeReply('{"v":1,"id":null,"ok":false,"error":"x"}'), {
    v: 1,
    id: null,
    ok: false,
    error: "x",
  });
  // A handler that returns nothing still gives a result key.
  assertEquals(encodeResult(1, undefined), '{"v":1,"id":1,"ok":true,"result":null}\n');
});

Deno.test("malformed control requests are refused, saying what is wrong", () => {
  const cases: [string, RegExp, number | null][] = [
    ["", /not JSON/, null],
    ["{", /not JSON/, null],
    ["[1]", /JSON object/, null],
    ["null", /JSON object/, null],
    ['{"v":2,"id":1,"cmd":"status"}', /"v": 2; this side speaks version 1/, 1],
    ['{"id":1,"cmd":"status"}', /"v": missing/, 1],
    ['{"v":1,"cmd":"status"}', /"id" must be a whole number/, null],
    ['{"v":1,"id":-1,"cmd":"status"}', /"id"/, null],
    ['{"v":1,"id":1.5,"cmd":"status"}', /"id"/, null],
    ['{"v":1,"id":"1","cmd":"status"}', /"id"/, null],
    ['{"v":1,"id":2,"cmd":"stop"}', /"cmd" "stop": must be status, kill, reload/, 2],
    ['{"v":1,"id":2}', /"cmd" missing/, 2],
    ['{"v":1,"id":2,"cmd":"status","name":"a"}', /unknown key "name" in the status request/, 2],
    ['{"v":1,"id":2,"cmd":"kill"}', /"name" must be a client's name/, 2],
    ['{"v":1,"id":2,"cmd":"kill","name":""}', /"name"/, 2],
    ['{"v":1,"id":2,"cmd":"kill","name":7}', /"name"/, 2],
    [`{"v":1,"id":2,"cmd":"kill","name":"${"a".repeat(65)}"}`, /1 to 64/, 2],
    ['{"v":1,"id":2,"cmd":"kill","name":"a","x":1}', /unknown key "x"/, 2],
  ];
  for (const [line, pattern, id] of cases) {
    const error = assertThrows(() => decodeRequest(line), ControlProtocolError);
    assertMatch(error.message, pattern, line);
    assertEquals((error as ControlProtocolError).id, id, `the id of the refusal of ${line}`);
  }
});

Deno.test("malformed control replies are refused", () => {
  for (
    const line of [
      '{"v":1,"id":1,"ok":true}',
      '{"v":1,"ok":true,"result":1}',
      '{"v":1,"id":1,"ok":false}',
      '{"v":1,"id":1,"ok":"yes","error":"x"}',
      '{"v":1,"id":"1","ok":false,"error":"x"}',
      '{"v":1,"id":1,"ok":true,"result":1,"more":2}',
      '{"v":0,"id":1,"ok":true,"result":1}',
    ]
  ) {
    assertThrows(() => decodeReply(line), ControlProtocolError);
  }
});

Deno.test("LineReader splits lines across chunks and caps their length", () => {
  const bytes = (text: string) => new TextEncoder().encode(text);
  const reader = new LineReader(16);
  assertEquals(reader.push(bytes('{"a"')), []);
  assertEquals(reader.pending, 4);
  assertEquals(reader.push(bytes(":1}\n{}\n{")), ['{"a":1}', "{}"]);
  assertEquals(reader.push(bytes("}\n")), ["{}"]);
  // Exactly the cap is a line; one byte more is refused, also when spread over chunks.
  assertEquals(reader.push(bytes(`${"x".repeat(16)}\n`)), ["x".repeat(16)]);
  reader.push(bytes("x".repeat(10)));
  const error = assertThrows(() => reader.push(bytes("x".repeat(7))), ControlProtocolError);
  assertMatch(error.message, /longer than 16 bytes/);
  // A line that is not UTF-8 is an error in its place, and the lines after it still come.
  const other = new LineReader(MAX_REQUEST_LINE);
  const lines = other.push(new Uint8Array([0xff, 0xfe, 10, ...bytes("{}\n")]));
  assert(lines[0] instanceof ControlProtocolError, "a non-UTF-8 line is an error");
  assertEquals(lines[1], "{}");
});
