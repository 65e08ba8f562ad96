/**
 * The PKI directory's safety: `vpn init` refuses a directory others may use and makes a new one
 * 0700 whatever the umask, never writes through a symlink, and `vpn serve` refuses a PKI that
 * others may change or whose keys they may read, each saying what to run.
 */

import { assert, assertEquals, assertMatch } from "./_assert.ts";
import { denoScript, Netns, rootTest, run, type RunResult } from "./_netns.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

/** `vpn ARGS` to its end; one that serves instead of refusing is killed after 30 s. */
function vpn(...args: string[]): Promise<RunResult> {
  return run(denoScript(MAIN, ...args), true, 30_000);
}

async function withRoot(fn: (root: string) => Promise<void>): Promise<void> {
  const root = await Deno.makeTempDir({ prefix: "vpn-pki-dir-test-" });
  try {
    await fn(root);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
}

function mode(path: string): number {
  return (Deno.lstatSync(path).mode ?? 0) & 0o7777;
}

const INIT = ["init", "--host", "vpn.example.org", "--dir"];

Deno.test("vpn init refuses an existing directory group or others may use, with the chmod to run", async () => {
  await withRoot(async (root) => {
    const dir = `${root}/pki`;
    for (const loose of [0o755, 0o770, 0o701]) {
      await Deno.mkdir(dir, { mode: 0o700 });
      await Deno.chmod(dir, loose);
      const refused = await vpn(...INIT, dir);
      assertEquals(refused.code, 2, refused.stderr);
      const shown = `0${loose.toString(8)}`;
      assertMatch(
        refused.stderr,
        new RegExp(
          `^vpn: ${dir} is mode ${shown}: group or others could read or replace .* ` +
            `run: chmod 700 ${dir}\\n$`,
        ),
      );
      assertEquals([...Deno.readDirSync(dir)], [], "nothing written");
      await Deno.remove(dir);
    }
    await Deno.mkdir(dir, { mode: 0o700 });
    await Deno.chmod(dir, 0o700);
    const ok = await vpn(...INIT, dir);
    assertEquals(ok.code, 0, ok.stderr);
  });
});

rootTest("vpn init refuses a directory of another user, with the chown to run", async () => {
  await withRoot(async (root) => {
    const dir = `${root}/pki`;
    await Deno.mkdir(dir, { mode: 0o700 });
    await Deno.chown(dir, 65534, 65534);
    const refused = await vpn(...INIT, dir);
    assertEquals(refused.code, 2, refused.stderr);
    assertMatch(
      refused.stderr,
      new RegExp(
        `^vpn: ${dir} belongs to uid 65534, not to this user \\(uid 0\\).*` +
          `run: chown 0 ${dir} \\(or pass another --dir\\)\\n$`,
      ),
    );
    assertEquals([...Deno.readDirSync(dir)], [], "nothing written");
  });
});

Deno.test("vpn init makes a new directory 0700 and its files 0600, 0640 and 0644 under any umask", async () => {
  await withRoot(async (root) => {
    const dir = `${root}/a/pki`;
    const init = await run(
      ["sh", "-c", 'umask 0277 && exec "$@"', "sh", ...denoScript(MAIN, ...INIT, dir)],
      true,
      30_000,
    );
    assertEquals(init.code, 0, init.stderr);
    assertEquals(mode(dir), 0o700);
    for (const f of ["ca.key", "server.key"]) {
      assertEquals(mode(`${dir}/${f}`), 0o600, f);
    }
    assertEquals(mode(`${dir}/clients.json`), 0o640);
    assertEquals(mode(`${dir}/clients.lock`) & 0o077, 0, "clients.lock is this user's alone");
    for (const f of ["ca.crt", "server.crt", "server.yaml"]) {
      assertEquals(mode(`${dir}/${f}`), 0o644, f);
    }
  });
});

Deno.test("vpn init --force replaces a symlink at server.yaml instead of writing through it", async () => {
  await withRoot(async (root) => {
    const dir = `${root}/pki`;
    assertEquals((await vpn(...INIT, dir)).code, 0);
    const victim = `${root}/victim`;
    await Deno.writeTextFile(victim, "precious\n");
    const absent = `${root}/absent`;
    for (const target of [victim, absent]) {
      await Deno.remove(`${dir}/server.yaml`);
      await Deno.symlink(target, `${dir}/server.yaml`);
      const force = await vpn(...INIT, dir, "--force");
      assertEquals(force.code, 0, force.stderr);
      assert(Deno.lstatSync(`${dir}/server.yaml`).isFile, "a file of its own, not the link");
      assertMatch(await Deno.readTextFile(`${dir}/server.yaml`), /^listen:/m);
    }
    assertEquals(await Deno.readTextFile(victim), "precious\n", "the link's target is untouched");
    assertEquals(await Deno.lstat(absent).then(() => true, () => false), false, "nothing created");
  });
});

rootTest("vpn serve refuses a PKI group or others may change or read the keys of", async () => {
  await using ns = await Netns.create("pkidir");
  await withRoot(async (root) => {
    const dir = `${root}/pki`;
    assertEquals((await vpn(...INIT, dir)).code, 0);
    // In a namespace of its own: a serve that does not refuse creates a TUN there, not here.
    const serve = () => ns.run(denoScript(MAIN, "serve", "--dir", dir), true, 15_000);
    const cases: [string, number, string][] = [
      [dir, 0o777, `${dir} is mode 0777: group or others could replace the CA and the keys`],
      [dir, 0o720, `${dir} is mode 0720: group or others could replace`],
      [`${dir}/server.key`, 0o640, `${dir}/server.key is mode 0640: group or others may read`],
      [`${dir}/ca.key`, 0o604, `${dir}/ca.key is mode 0604: group or others may read`],
    ];
    for (const [path, loose, message] of cases) {
      const safe = mode(path);
      await Deno.chmod(path, loose);
      const refused = await serve();
      assertEquals(refused.code, 2, refused.stderr);
      assertMatch(refused.stderr, new RegExp(`^vpn: ${message}.*; run: chmod [67]00 ${path}\\n$`));
      await Deno.chmod(path, safe);
    }
  });
});
