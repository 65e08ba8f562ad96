/**
 * The mutation list of `deno task mutate` stays true to the code: every mutation still
 * applies, names tests that exist, and the behaviours the suite is known to have missed are
 * all on it. (Running the mutations is `deno task mutate`, minutes per mutation; not here.)
 */

import { assert, assertEquals } from "./_assert.ts";
import { MUTATIONS } from "../scripts/mutations.ts";
import { occurrences } from "../scripts/mutate.ts";

const ROOT = new URL("..", import.meta.url).pathname;

Deno.test("MUTATIONS: each one's text occurs exactly once in its file and changes it", async () => {
  assert(MUTATIONS.length >= 20, `only ${MUTATIONS.length} mutations`);
  for (const m of MUTATIONS) {
    const text = await Deno.readTextFile(`${ROOT}${m.file}`);
    assertEquals(occurrences(text, m.find), 1, `${m.name}: "${m.find}" in ${m.file}`);
    assert(m.find !== m.replace, `${m.name} changes nothing`);
  }
});

Deno.test("MUTATIONS: names are unique and every named test file exists and holds the filter", async () => {
  assertEquals(new Set(MUTATIONS.map((m) => m.name)).size, MUTATIONS.length);
  for (const m of MUTATIONS) {
    assert(m.tests.length > 0, `${m.name} names no test`);
    const texts = await Promise.all(m.tests.map((t) => Deno.readTextFile(`${ROOT}${t}`)));
    if (m.filter !== undefined) {
      assert(texts.some((t) => t.includes(m.filter!)), `${m.name}: no test holds "${m.filter}"`);
    }
  }
});

Deno.test("MUTATIONS cover the 20 behaviours the suite was found to miss or catch", () => {
  const required = [
    "replay-window-1024",
    "frame-bound-plus-one",
    "preauth-timeout-30s",
    "preauth-cap-removed",
    "server-keepalive-tripled",
    "server-udp-never-dead",
    "udp-address-before-auth",
    "checksum-odd-byte-dropped",
    "hello-nonce-zeros",
    "dialled-name-unchecked",
    "client-mtu-unset",
    "revocation-poll-5500",
    "anti-spoofing-off",
    "replay-seen-accepted",
    "revocation-live-kept",
    "aead-tag-ignored",
    "frame-bound-removed",
    "pool-release-off",
    "client-udp-fallback-off",
    "malformed-frame-ends-all",
  ];
  const names = new Set(MUTATIONS.map((m) => m.name));
  assertEquals(required.filter((name) => !names.has(name)), []);
});

Deno.test("occurrences() counts exact, non-overlapping matches", () => {
  assertEquals(occurrences("abcabc", "abc"), 2);
  assertEquals(occurrences("aaaa", "aa"), 2);
  assertEquals(occurrences("abc", "x"), 0);
});
