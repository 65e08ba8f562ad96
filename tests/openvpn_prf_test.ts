import { assertEquals, assertThrows } from "./_assert.ts";
import {
  dataKeys,
  keyExpansion,
  type KeySource,
  masterSecret,
  tls1Prf,
} from "../mod/openvpn/prf.ts";

const hex = (text: string) => Uint8Array.fromHex(text);
const ascii = (text: string) => new TextEncoder().encode(text);

// TV2: a Lab B session; the stock server logged the same master and keys (OPENVPN.md 16).
const TV2: KeySource = {
  clientSessionId: hex("5677dd57e30108b2"),
  serverSessionId: hex("9adf8e41775ca216"),
  preMaster: hex(
    "6d4f23f14045f926cb5aaf39ad93ff5b94283e2bd237568d055926b3c159a5b1f4b1bed96a4841b87fe1516d96f311f6",
  ),
  clientRandom1: hex("28cc4c83ac13ed0fe134eae664a53168ba3001e1551418f8c7997a51603b7667"),
  clientRandom2: hex("f909d7e8473251d76ca884a0b0e0100f47495580a5f8a1b851df34471ac1dfc6"),
  serverRandom1: hex("836bc6322d5bd3ae116264a41eececcdf66056b1e320dcc44f78d67ddd54f772"),
  serverRandom2: hex("e5d1ec10b4c09c620b7d2dd7da0dc875043227e63991e4511b81277de645e40d"),
};
const TV2_MASTER =
  "a575d66d44690e299fb4423fd1be1d94a0b86e803dd87fd3123793cfa71d1ce9f8014f85dff0a95ce5133b57b5f253ca";
const TV2_KEY2 = [
  "f6382e9b45dc8e8b2241db5161d7ec942d2b542d9996b08109f883394a304c20",
  "1987494d1b902fd839baa87c49756f08a4710d915c58610676c4f6830fed83bf",
  "036daf971548b4f3500ed98fe3b7e63fbb4bbd7fd8d42918209a331e24e2c141",
  "a4b7b17a4cf89aa0e0915284823457d7b0b8b2bbd606f999094f7d67048afc81",
  "f1fbfa0991acec2ec52f16523bc6949cd47580d7c485c36d503dfc3781edf894",
  "7f18a530d0074581c882aac6d82e72adc011b2417a370d97170bac3768842af0",
  "7bc970ec2be405529f805feda5ed8f84f8d10d7b4752d61b8a952bf804409be2",
  "c6807896c49149ba284180b1c82b2b14539f0e61ed8dec145a5f368aca7891ff",
];

Deno.test("tls1Prf() gives OpenVPN's start-up self-test value (TV1)", () => {
  assertEquals(
    tls1Prf(ascii("tls1-prf-test-secret"), ascii("tls1-prf-test"), 8).toHex(),
    "7144fe2540737595",
  );
});

Deno.test("masterSecret() gives TV2's master secret", () => {
  assertEquals(masterSecret(TV2).toHex(), TV2_MASTER);
});

Deno.test("keyExpansion() gives all 256 bytes of TV2's key2", () => {
  const block = keyExpansion(TV2);
  assertEquals(block.length, 256);
  for (const [i, slice] of TV2_KEY2.entries()) {
    assertEquals(block.subarray(32 * i, 32 * i + 32).toHex(), slice, `key2[${32 * i}..]`);
  }
});

Deno.test("dataKeys() gives the client key[0] to send and the server key[1] (TV2)", () => {
  const block = keyExpansion(TV2);
  const c2s = { key: TV2_KEY2[0]!, iv: "036daf971548b4f3" };
  const s2c = { key: TV2_KEY2[4]!, iv: "7bc970ec2be40552" };
  const hexOf = (keys: ReturnType<typeof dataKeys>) => ({
    encrypt: { key: keys.encryptKey.toHex(), iv: keys.encryptIv.toHex() },
    decrypt: { key: keys.decryptKey.toHex(), iv: keys.decryptIv.toHex() },
  });
  assertEquals(hexOf(dataKeys(block, "client")), { encrypt: c2s, decrypt: s2c });
  assertEquals(hexOf(dataKeys(block, "server")), { encrypt: s2c, decrypt: c2s });
  // Copies: wiping the block leaves the keys.
  const keys = dataKeys(block, "server");
  block.fill(0);
  assertEquals(keys.encryptKey.toHex(), s2c.key);
});

/** The TLS 1.0 PRF as OpenSSL's own implementation computes it (`openssl kdf TLS1-PRF`). */
async function opensslPrf(secret: Uint8Array, seed: Uint8Array, length: number): Promise<string> {
  const { code, stdout } = await new Deno.Command("openssl", {
    args: [
      "kdf",
      "-keylen",
      String(length),
      "-kdfopt",
      "digest:MD5-SHA1",
      "-kdfopt",
      `hexsecret:${secret.toHex()}`,
      "-kdfopt",
      `hexseed:${seed.toHex()}`,
      "TLS1-PRF",
    ],
    stdout: "piped",
    stderr: "inherit",
    signal: AbortSignal.timeout(10_000),
  }).output();
  assertEquals(code, 0);
  return new TextDecoder().decode(stdout).trim().replaceAll(":", "").toLowerCase();
}

Deno.test("tls1Prf() agrees with OpenSSL for odd and even secrets and odd lengths", async () => {
  // Odd secret lengths make the two halves share a byte; lengths not a multiple of 16 or 20
  // cut the last HMAC block of P_MD5 and P_SHA1.
  for (const [secretLength, length] of [[1, 1], [47, 48], [48, 256], [21, 37], [64, 100]]) {
    const secret = crypto.getRandomValues(new Uint8Array(secretLength!));
    const seed = crypto.getRandomValues(new Uint8Array(77));
    assertEquals(
      tls1Prf(secret, seed, length!).toHex(),
      await opensslPrf(secret, seed, length!),
      `secret ${secretLength}, length ${length}`,
    );
  }
});

Deno.test("tls1Prf() gives a prefix of a longer output for a shorter length", () => {
  const secret = ascii("tls1-prf-test-secret");
  const seed = ascii("tls1-prf-test");
  const long = tls1Prf(secret, seed, 100);
  assertEquals(tls1Prf(secret, seed, 33), long.subarray(0, 33));
  assertEquals(tls1Prf(secret, seed, 0), new Uint8Array());
  assertThrows(() => tls1Prf(secret, seed, -1), RangeError);
});

Deno.test("keyExpansion() and dataKeys() refuse inputs of the wrong length", () => {
  for (const field of Object.keys(TV2) as (keyof KeySource)[]) {
    const short = { ...TV2, [field]: TV2[field].subarray(1) };
    assertThrows(() => keyExpansion(short), RangeError, /bytes, not/);
  }
  assertThrows(() => dataKeys(new Uint8Array(255), "client"), RangeError, /256 bytes/);
});

Deno.test("keyExpansion() depends on every input, session ids included", () => {
  const base = keyExpansion(TV2).toHex();
  for (const field of Object.keys(TV2) as (keyof KeySource)[]) {
    const changed = TV2[field].slice();
    changed[0]! ^= 1;
    const block = keyExpansion({ ...TV2, [field]: changed }).toHex();
    assertEquals(block === base, false, field);
  }
  // The two session ids are not interchangeable.
  const swapped = keyExpansion({
    ...TV2,
    clientSessionId: TV2.serverSessionId,
    serverSessionId: TV2.clientSessionId,
  });
  assertEquals(swapped.toHex() === base, false);
});
