import { assertEquals, assertMatch } from "./_assert.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

async function vpn(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", "--unstable-net", MAIN, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
}

Deno.test("vpn --help lists the commands and exits 0", async () => {
  const { code, stdout } = await vpn("--help");
  assertEquals(code, 0);
  assertMatch(stdout, /Usage: vpn <command>/);
  assertMatch(stdout, /version/);
});

Deno.test("vpn version prints the version and exits 0", async () => {
  const { code, stdout } = await vpn("version");
  assertEquals(code, 0);
  assertMatch(stdout, /^vpn \d+\.\d+\.\d+ \(deno /);
});

Deno.test("vpn with an unknown command says what exists and exits 2", async () => {
  const { code, stderr } = await vpn("frobnicate");
  assertEquals(code, 2);
  assertMatch(stderr, /unknown command "frobnicate"/);
  assertMatch(stderr, /Commands:/);
});
