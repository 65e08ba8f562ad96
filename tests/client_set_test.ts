/**
 * `vpn client set` run as a process: every refusal exits 2 naming the option and the fix and
 * changes nothing; what it accepts lands in clients.json, in canonical form, and shows in
 * `vpn client list` and in `readRegistrySerials().settings`.
 */

import { assertEquals, assertMatch } from "./_assert.ts";
import { denoScript, run, type RunResult } from "./_netns.ts";
import { issueClient, readRegistrySerials, revokeClient } from "../mod/pki.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

/** `vpn ARGS`, killed after 30 s: none of these commands waits for anything. */
function vpn(...args: string[]): Promise<RunResult> {
  return run(denoScript(MAIN, ...args), true, 30_000);
}

/** Runs `fn` with a PKI of clients alice and bob, subnet 10.8.0.0/24 and `subnet6`. */
async function withPki(
  subnet6: string,
  fn: (dir: string, set: (...args: string[]) => Promise<RunResult>) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "vpn-client-set-test-" });
  try {
    const init = await vpn("init", "--dir", dir, "--host", "vpn.example.org", "--subnet6", subnet6);
    assertEquals(init.code, 0, init.stderr);
    await issueClient(dir, "alice");
    await issueClient(dir, "bob");
    await fn(dir, (...args) => vpn("client", "set", ...args, "--dir", dir));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Asserts that `result` is a refusal (exit 2) matching `pattern` and that nothing changed. */
async function refused(dir: string, result: RunResult, pattern: RegExp): Promise<void> {
  assertEquals(result.code, 2, `${result.stdout}${result.stderr}`);
  assertMatch(result.stderr, pattern);
  assertEquals(result.stdout, "", "nothing reported as set");
  const text = await Deno.readTextFile(`${dir}/clients.json`);
  assertEquals(JSON.parse(text), registryBefore.get(dir), "clients.json changed");
}

/** clients.json as the last successful `set` (or the setup) left it, per PKI directory. */
const registryBefore = new Map<string, unknown>();

async function remember(dir: string): Promise<void> {
  registryBefore.set(dir, JSON.parse(await Deno.readTextFile(`${dir}/clients.json`)));
}

/** Runs a `set` that must succeed, and remembers the registry it leaves. */
async function accepted(dir: string, result: RunResult): Promise<string> {
  assertEquals(result.code, 0, result.stderr);
  await remember(dir);
  return result.stdout;
}

Deno.test("vpn client set records every setting, shows it, and list and the registry have it", async () => {
  await withPki("fd00:8::/64", async (dir, set) => {
    const out = await accepted(
      dir,
      await set(
        "alice",
        ...["--address", "10.8.0.50", "--address6", "FD00:8:0::32"],
        ...["--route", "192.168.60.0/24", "--route", "FD00:60::/64", "--redirect-gateway"],
      ),
    );
    assertEquals(
      out,
      `set "alice":\n` +
        `  address      10.8.0.50\n` +
        `  address6     fd00:8::32\n` +
        `  routes       192.168.60.0/24, fd00:60::/64\n` +
        `  full tunnel  yes\n` +
        `a running server applies it at alice's next connection\n`,
    );
    const alice = JSON.parse(await Deno.readTextFile(`${dir}/clients.json`)).clients[0];
    assertEquals(
      [alice.address, alice.address6, alice.routes, alice.redirect_gateway],
      ["10.8.0.50", "fd00:8::32", ["192.168.60.0/24", "fd00:60::/64"], true],
    );
    // A host number above the mapped ones needs no fixed IPv4 address.
    await accepted(dir, await set("bob", "--address6", "fd00:8::1:0", "--no-redirect-gateway"));
    const list = await vpn("client", "list", "--dir", dir);
    assertMatch(
      list.stdout,
      /^NAME\s+SERIAL\s+STATUS\s+EXPIRES\s+FORMAT\s+ADDRESS\s+ROUTES\s+FULL-TUNNEL\n/,
    );
    assertMatch(
      list.stdout,
      /\nalice\s+[0-9a-f]{32}\s+valid\s+\S+\s+vpn\s+10\.8\.0\.50,fd00:8::32\s+192\.168\.60\.0\/24,fd00:60::\/64\s+yes\n/,
    );
    assertMatch(list.stdout, /\nbob\s+[0-9a-f]{32}\s+valid\s+\S+\s+vpn\s+fd00:8::1:0\s+-\s+no\n$/);

    const { settings, valid } = await readRegistrySerials(dir);
    assertEquals([...settings.keys()].sort(), [...valid].sort());
    const byAddress6 = [...settings.values()].map((s) => s.address6).sort();
    assertEquals(byAddress6, ["fd00:8::1:0", "fd00:8::32"]);

    // Each option changes its own setting only; the "no" ones go back to the defaults.
    const cleared = await accepted(
      dir,
      await set("alice", "--no-address6", "--no-address", "--default-redirect-gateway"),
    );
    assertMatch(cleared, /address {6}from the pool\n/);
    assertMatch(cleared, /address6 {5}the one that follows the IPv4 address\n/);
    assertMatch(cleared, /routes {7}192\.168\.60\.0\/24, fd00:60::\/64\n/);
    assertMatch(cleared, /full tunnel {2}the server's default \(no\)\n/);
    await accepted(dir, await set("alice", "--route", "192.168.70.0/24"));
    await accepted(dir, await set("bob", "--no-routes", "--no-address6"));
    const after = JSON.parse(await Deno.readTextFile(`${dir}/clients.json`)).clients;
    assertEquals(after[0].routes, ["192.168.70.0/24"], "--route replaces the list");
    for (const key of ["address", "address6", "redirect_gateway"]) {
      assertEquals(key in after[0], false, `alice's ${key} was cleared`);
    }
    assertEquals(Object.keys(after[1]).sort(), [
      "format",
      "name",
      "notAfter",
      "redirect_gateway",
      "serial",
    ]);
  });
});

Deno.test("vpn client set refuses a bad --address, naming the range or the client that has it", async () => {
  await withPki("fd00:8::/64", async (dir, set) => {
    await remember(dir);
    const range = /use one from 10\.8\.0\.2 to 10\.8\.0\.254/;
    const cases: [string, RegExp][] = [
      [
        "10.9.0.5",
        /--address 10\.9\.0\.5 is outside the VPN subnet 10\.8\.0\.0\/24 \(.*server\.yaml\)/,
      ],
      ["10.8.0.0", /--address 10\.8\.0\.0 is the subnet's network address; use one from/],
      ["10.8.0.255", /--address 10\.8\.0\.255 is the subnet's broadcast address; use one from/],
      ["10.8.0.1", /--address 10\.8\.0\.1 is the server's own address; use one from/],
      ["10.8.0", /--address 10\.8\.0: Cannot parse IPv4 address .*; use one from/],
      ["fd00:8::5", /--address fd00:8::5 is an IPv6 address; use --address6 for it/],
    ];
    for (const [address, pattern] of cases) {
      const result = await set("alice", "--address", address);
      await refused(dir, result, pattern);
      if (address !== "fd00:8::5") assertMatch(result.stderr, range);
    }
    await accepted(dir, await set("alice", "--address", "10.8.0.254"));
    await refused(
      dir,
      await set("bob", "--address", "10.8.0.254"),
      /--address 10\.8\.0\.254 is already the fixed address of "alice"; .*vpn client set alice --no-address --dir /,
    );
    // A revoked client's address is free again.
    await revokeClient(dir, "alice");
    await remember(dir);
    await accepted(dir, await set("bob", "--address", "10.8.0.254"));
  });
});

Deno.test("vpn client set refuses a bad --address6: no subnet6, outside, reserved, too high, taken", async () => {
  await withPki("none", async (dir, set) => {
    await remember(dir);
    await refused(
      dir,
      await set("alice", "--address6", "fd00:8::1000"),
      /--address6 fd00:8::1000: the tunnel has no IPv6 .*; set subnet6 in server\.yaml/,
    );
  });
  await withPki("fd00:8::/64", async (dir, set) => {
    await remember(dir);
    const cases: [string, RegExp][] = [
      ["fd00:9::1000", /--address6 fd00:9::1000 is outside the VPN's subnet6 fd00:8::\/64/],
      ["fd00:8::", /--address6 fd00:8:: is the subnet6's network address/],
      ["fd00:8::1", /--address6 fd00:8::1 is the server's own address/],
      ["fd00:8::1:0:0", /--address6 fd00:8::1:0:0: its host number is 2\^32 or more.*last 32 bits/],
      ["10.8.0.50", /--address6 10\.8\.0\.50 is not an IPv6 address \(--address takes IPv4\)/],
      ["fd00:8::g", /--address6 fd00:8::g: Cannot parse IPv6 address/],
    ];
    for (const [address6, pattern] of cases) {
      const result = await set("alice", "--address6", address6);
      await refused(dir, result, pattern);
      if (address6 !== "10.8.0.50") assertMatch(result.stderr, /use an address of fd00:8::\/64/);
    }
    await accepted(dir, await set("alice", "--address6", "fd00:8::1000"));
    await refused(
      dir,
      await set("bob", "--address6", "fd00:8:0:0::1000"),
      /--address6 fd00:8:0:0::1000 is already the fixed address6 of "alice"; .*vpn client set alice --no-address6/,
    );
  });
});

Deno.test("vpn client set takes an --address6 among the mapped ones only as the client's own address's", async () => {
  await withPki("fd00:8::/64", async (dir, set) => {
    await remember(dir);
    // fd00:8::32 is what the server gives whoever has 10.8.0.50 (0x32 = 50).
    const mapped =
      /host numbers 2 to 254 follow the IPv4 addresses \(10\.8\.0\.50 gets fd00:8::32\).*or a host number above 254 such as fd00:8::100/;
    const alone = await set("alice", "--address6", "fd00:8::32");
    await refused(dir, alone, mapped);
    assertMatch(alone.stderr, /"alice" has no fixed --address/);
    const other = await set("alice", "--address", "10.8.0.51", "--address6", "fd00:8::32");
    await refused(dir, other, mapped);
    assertMatch(other.stderr, /this client's fixed address 10\.8\.0\.51 goes with fd00:8::33/);
    await accepted(dir, await set("alice", "--address", "10.8.0.50", "--address6", "fd00:8::32"));
    // Moving the address alone would leave the address6 someone else's.
    const moved = await set("alice", "--address", "10.8.0.60");
    await refused(
      dir,
      moved,
      /the address6 fd00:8::32 of "alice" \(set before\) is one the server gives/,
    );
    assertMatch(moved.stderr, /or --no-address6/);
    await refused(dir, await set("alice", "--no-address"), /"alice" has no fixed --address/);
    // Above the mapped host numbers (the broadcast's, 255, included) is anyone's.
    await accepted(dir, await set("bob", "--address6", "fd00:8::ff"));
  });
});

Deno.test("vpn client set refuses a bad --route: form, default, family, the VPN's own, another client's", async () => {
  await withPki("fd00:8::/64", async (dir, set) => {
    await remember(dir);
    const cases: [string[], RegExp][] = [
      [
        ["192.168.60.1/24"],
        /--route 192\.168\.60\.1\/24 has host bits set; did you mean --route 192\.168\.60\.0\/24\?/,
      ],
      [["192.168.60.0"], /--route 192\.168\.60\.0: Cannot parse CIDR .*; give a network such as/],
      [["0.0.0.0/0"], /--route 0\.0\.0\.0\/0 is a default route; .*use --redirect-gateway/],
      [["::/0"], /--route ::\/0 is a default route; .*use --redirect-gateway/],
      [["10.8.0.128/25"], /--route 10\.8\.0\.128\/25 overlaps the VPN's own 10\.8\.0\.0\/24/],
      [["10.0.0.0/8"], /--route 10\.0\.0\.0\/8 overlaps the VPN's own 10\.8\.0\.0\/24/],
      [["fd00:8::/96"], /--route fd00:8::\/96 overlaps the VPN's own fd00:8::\/64/],
      [["fd00::/16"], /--route fd00::\/16 overlaps the VPN's own fd00:8::\/64/],
      [
        ["192.168.0.0/16", "192.168.60.0/24"],
        /--route 192\.168\.60\.0\/24 overlaps --route 192\.168\.0\.0\/16; give the larger network only/,
      ],
    ];
    for (const [routes, pattern] of cases) {
      await refused(dir, await set("alice", ...routes.flatMap((r) => ["--route", r])), pattern);
    }
    const many = Array.from({ length: 65 }, (_, i) => `172.16.${i}.0/24`);
    await refused(
      dir,
      await set("alice", ...many.flatMap((r) => ["--route", r])),
      /--route given 65 times: a client may have at most 64 networks/,
    );
    await accepted(dir, await set("alice", ...many.slice(1).flatMap((r) => ["--route", r])));
    await accepted(dir, await set("bob", "--route", "fd00:60::/64"));
    await refused(
      dir,
      await set("bob", "--route", "172.16.1.128/25"),
      /--route 172\.16\.1\.128\/25 overlaps 172\.16\.1\.0\/24, a network behind "alice"/,
    );
    await refused(
      dir,
      await set("alice", "--route", "fd00:60::/48"),
      /--route fd00:60::\/48 overlaps fd00:60::\/64, a network behind "bob"; .*vpn client set bob/,
    );
    // The client's own earlier routes are replaced, not in the way.
    await accepted(dir, await set("alice", "--route", "172.16.1.0/25"));
  });
  await withPki("none", async (dir, set) => {
    await remember(dir);
    await refused(
      dir,
      await set("alice", "--route", "fd00:60::/64"),
      /--route fd00:60::\/64 is an IPv6 network and the tunnel has no IPv6 .*set subnet6 in server\.yaml/,
    );
  });
});

Deno.test("vpn client set refuses an unknown or revoked name, and no or clashing options", async () => {
  await withPki("fd00:8::/64", async (dir, set) => {
    await revokeClient(dir, "bob");
    await remember(dir);
    await refused(
      dir,
      await set("carol", "--address", "10.8.0.9"),
      /No client named "carol" in .*; "vpn client list --dir .*" shows the names/,
    );
    await refused(
      dir,
      await set("bob", "--address", "10.8.0.9"),
      /Client "bob" is revoked; "vpn client add bob --dir .*" issues a new profile/,
    );
    const none = await set("alice");
    await refused(
      dir,
      none,
      /nothing to set: give at least one option\nusage: vpn client set NAME/,
    );
    const clashes: [string[], RegExp][] = [
      [["--address", "10.8.0.9", "--no-address"], /--address and --no-address: give one/],
      [["--address6", "fd00:8::1:0", "--no-address6"], /--address6 and --no-address6: give one/],
      [["--route", "192.168.60.0/24", "--no-routes"], /--route and --no-routes: give one/],
      [
        ["--redirect-gateway", "--default-redirect-gateway"],
        /--redirect-gateway and --default-redirect-gateway: give one/,
      ],
    ];
    for (const [args, pattern] of clashes) await refused(dir, await set("alice", ...args), pattern);
    const missing = await vpn("client", "set", "--address", "10.8.0.9", "--dir", dir);
    await refused(dir, missing, /missing argument NAME\nusage: vpn client set NAME/);
  });
});

Deno.test("vpn client set without server.yaml checks against the defaults: 10.8.0.0/24, no subnet6", async () => {
  await withPki("fd00:8::/64", async (dir, set) => {
    await Deno.remove(`${dir}/server.yaml`);
    await remember(dir);
    await refused(
      dir,
      await set("alice", "--address", "10.20.0.5"),
      /outside the VPN subnet 10\.8\.0\.0\/24/,
    );
    await refused(dir, await set("alice", "--address6", "fd00:8::1000"), /the tunnel has no IPv6/);
    const out = await accepted(dir, await set("alice", "--address", "10.8.0.5"));
    assertMatch(out, /address6 {5}none \(no subnet6\)\n/);
  });
});

Deno.test("two vpn client set processes claiming one address at once: exactly one gets it", async () => {
  await withPki("fd00:8::/64", async (dir, set) => {
    for (let round = 0; round < 5; round++) {
      const address = `10.8.0.${100 + round}`;
      const results = await Promise.all([
        set("alice", "--address", address),
        set("bob", "--address", address),
      ]);
      assertEquals(
        results.map((r) => r.code).sort(),
        [0, 2],
        results.map((r) => r.stderr).join(""),
      );
      const { settings } = await readRegistrySerials(dir);
      const holders = [...settings.values()].filter((s) => s.address === address);
      assertEquals(holders.length, 1, `round ${round}`);
      // Free both for the next round.
      for (const name of ["alice", "bob"]) {
        assertEquals((await set(name, "--no-address")).code, 0);
      }
    }
  });
});
