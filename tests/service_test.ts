/**
 * The systemd unit of `vpn service install` (mod/service.ts): every setting of its text, the
 * quoting of paths with spaces, `%`, `$`, quotes and backslashes, the install into a temporary
 * directory (mode, refusal to replace a different unit, --force), and, where systemd-analyze
 * is installed, `systemd-analyze verify` of the written unit and systemd's own reading of the
 * quoted paths. Nothing here writes outside a temporary directory.
 */

import { fileURLToPath } from "node:url";
import { assert, assertEquals, assertMatch, assertRejects, assertThrows } from "./_assert.ts";
import { defaultUnitPath, installService, serviceUnit } from "../mod/service.ts";

const VPN = "/usr/local/bin/vpn";
const MAIN = fileURLToPath(new URL("../main.ts", import.meta.url));
/** How a developer runs vpn uncompiled: deno itself and this checkout's main.ts. */
const DENO_RUN = [Deno.execPath(), "run", "--allow-all", "--unstable-net", MAIN];

/** The unit's settings, `Key=value` in order, with the section headers and without comments. */
function settings(text: string): string[] {
  return text.split("\n").filter((line) => line !== "" && !line.startsWith("#"));
}

/** The value of `key` in the unit (its only line), or undefined. */
function setting(text: string, key: string): string | undefined {
  const lines = settings(text).filter((line) => line.startsWith(`${key}=`));
  assert(lines.length <= 1, `${key} is set ${lines.length} times`);
  return lines[0]?.slice(key.length + 1);
}

/** systemd-analyze's path, or undefined where it is not installed. */
function systemdAnalyze(): string | undefined {
  for (const path of ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]) {
    try {
      if (Deno.statSync(path).isFile) return path;
    } catch {
      // not here
    }
  }
  return undefined;
}

/**
 * `systemd-analyze verify` of `unitPath` with debug logging, which dumps the unit as systemd
 * read it: the exit code and the output. Bounded: it reads only files.
 */
async function verify(unitPath: string): Promise<{ code: number; output: string }> {
  const command = new Deno.Command(systemdAnalyze()!, {
    args: ["verify", unitPath],
    env: { SYSTEMD_LOG_LEVEL: "debug", SYSTEMD_PAGER: "cat" },
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(30_000),
  });
  const { code, stdout, stderr } = await command.output();
  const text = new TextDecoder();
  return { code, output: text.decode(stdout) + text.decode(stderr) };
}

/** Runs `fn` with a new temporary directory, removed after. */
async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "vpn-service-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("serviceUnit() for /etc/vpn and the compiled binary: every setting", () => {
  const text = serviceUnit({ dir: "/etc/vpn", exec: [VPN] });
  assertEquals(settings(text), [
    "[Unit]",
    "Description=vpn server of /etc/vpn",
    "Wants=network-online.target",
    "After=network-online.target",
    "[Service]",
    "Type=simple",
    `ExecStart="${VPN}" "serve" "--dir" "/etc/vpn"`,
    `ExecReload="${VPN}" "reload" "--dir" "/etc/vpn"`,
    "Restart=on-failure",
    "RestartSec=5s",
    "SyslogIdentifier=vpn",
    "Environment=NO_COLOR=1",
    "LimitNOFILE=65536",
    "UMask=0077",
    "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_SETUID CAP_SETGID CAP_CHOWN",
    "AmbientCapabilities=CAP_NET_ADMIN CAP_NET_BIND_SERVICE",
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    'ReadWritePaths="/etc/vpn"',
    "RuntimeDirectory=vpn",
    "RuntimeDirectoryPreserve=yes",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "DevicePolicy=closed",
    "DeviceAllow=/dev/net/tun rw",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK",
    "RestrictNamespaces=yes",
    "RestrictRealtime=yes",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "ProtectProc=invisible",
    "SystemCallArchitectures=native",
    "[Install]",
    "WantedBy=multi-user.target",
  ]);
  // What must stay off, each for a reason the unit's comments give.
  for (const key of ["MemoryDenyWriteExecute", "ProtectKernelTunables", "PrivateDevices"]) {
    assertEquals(setting(text, key), undefined, key);
  }
  assert(text.endsWith("\n"));
});

Deno.test("serviceUnit() keeps homes readable for deno run and for a directory in a home", () => {
  assertEquals(
    setting(serviceUnit({ dir: "/etc/vpn", exec: DENO_RUN }), "ProtectHome"),
    "read-only",
  );
  assertEquals(
    setting(serviceUnit({ dir: "/root/vpn", exec: [VPN] }), "ProtectHome"),
    "read-only",
  );
  assertEquals(
    setting(serviceUnit({ dir: "/srv/vpn", exec: ["/home/ann/bin/vpn"] }), "ProtectHome"),
    "read-only",
  );
  // "/homer" is no home.
  assertEquals(setting(serviceUnit({ dir: "/homer/vpn", exec: [VPN] }), "ProtectHome"), "yes");
});

Deno.test("serviceUnit() makes a control socket's directory outside /run/vpn writable", () => {
  const unit = (controlSocket: string) =>
    setting(serviceUnit({ dir: "/srv/vpn/", exec: [VPN], controlSocket }), "ReadWritePaths");
  assertEquals(unit("/run/vpn/other.sock"), '"/srv/vpn"');
  assertEquals(unit("/srv/vpn/control.sock"), '"/srv/vpn"');
  assertEquals(unit("/var/run/ops/vpn.sock"), '"/srv/vpn" "/var/run/ops"');
});

Deno.test("serviceUnit() quotes spaces, %, $, quotes and backslashes for systemd", () => {
  const dir = '/srv/my vpn %h $HOME "q" \\b';
  const text = serviceUnit({ dir, exec: ["/opt/my tools/100%/vpn", "--flag=$X"] });
  assertEquals(
    setting(text, "ExecStart"),
    '"/opt/my tools/100%%/vpn" "--flag=$$X" "serve" "--dir" "/srv/my vpn %%h $$HOME \\"q\\" \\\\b"',
  );
  assertEquals(setting(text, "ReadWritePaths"), '"/srv/my vpn %%h $HOME \\"q\\" \\\\b"');
  assertEquals(setting(text, "Description"), 'vpn server of /srv/my vpn %%h $HOME "q" \\b');
});

Deno.test("serviceUnit() refuses what systemd cannot run, naming the option", () => {
  const unit = (dir: string, exec: string[]) => () => serviceUnit({ dir, exec });
  assertThrows(unit("etc/vpn", [VPN]), TypeError, /^dir: must be an absolute path/);
  assertThrows(unit("/", [VPN]), TypeError, /^dir: "\/" cannot/);
  assertThrows(unit("/etc/vp\nn", [VPN]), TypeError, /^dir: .* control character/);
  assertThrows(unit("/etc/vpn", []), TypeError, /^exec: the first word must be/);
  assertThrows(unit("/etc/vpn", ["vpn"]), TypeError, /^exec: the first word must be/);
  assertThrows(unit("/etc/vpn", [VPN, "serve"]), TypeError, /^exec: give the command without/);
  assertThrows(unit("/etc/vpn", ['/opt/"vpn"']), TypeError, /^exec: systemd cannot run/);
  assertThrows(unit("/etc/vpn", ["/opt/v\\pn"]), TypeError, /^exec: systemd cannot run/);
});

Deno.test("defaultUnitPath() is vpn.service for /etc/vpn, else vpn@NAME.service", () => {
  assertEquals(defaultUnitPath("/etc/vpn/"), "/etc/systemd/system/vpn.service");
  assertEquals(defaultUnitPath("/srv/office-1"), "/etc/systemd/system/vpn@office-1.service");
  assertEquals(defaultUnitPath("/srv/my vpn/"), "/etc/systemd/system/vpn@my\\x20vpn.service");
  assertEquals(defaultUnitPath("/srv/café"), "/etc/systemd/system/vpn@caf\\xc3\\xa9.service");
});

Deno.test("installService() writes the unit atomically with mode 0644 and says what to run", async () => {
  await withTempDir(async (tmp) => {
    const dir = `${tmp}/my vpn`;
    await Deno.mkdir(dir);
    const unitPath = `${tmp}/vpn@my\\x20vpn.service`;
    const old = Deno.umask(0o077); // the mode must not depend on the umask
    let next;
    try {
      next = await installService({ dir, unitPath, exec: [VPN] });
    } finally {
      Deno.umask(old);
    }
    assertEquals(await Deno.readTextFile(unitPath), serviceUnit({ dir, exec: [VPN] }));
    assertEquals((await Deno.stat(unitPath)).mode! & 0o777, 0o644);
    assertEquals([...Deno.readDirSync(tmp)].map((entry) => entry.name).sort(), [
      "my vpn",
      "vpn@my\\x20vpn.service",
    ]);
    // Outside systemd's directories the unit is enabled by its path, which links it.
    assertEquals(
      next,
      [
        `Wrote ${unitPath}.`,
        "Start it now and at every boot:",
        `  systemctl daemon-reload && systemctl enable --now '${unitPath}'`,
        "Its log:",
        "  journalctl -u 'vpn@my\\x20vpn.service' -f",
      ].join("\n"),
    );
    // The same unit again: nothing to replace.
    const again = await installService({ dir, unitPath, exec: [VPN] });
    assertMatch(again, /^.* is already this unit\.\n/);
  });
});

Deno.test("installService() refuses to replace a different unit without force", async () => {
  await withTempDir(async (tmp) => {
    const unitPath = `${tmp}/vpn@x.service`;
    await Deno.writeTextFile(unitPath, "[Service]\nExecStart=/bin/true\n");
    await assertRejects(
      () => installService({ dir: tmp, unitPath, exec: [VPN] }),
      Error,
      /exists and is a different unit; look at it, then add --force to replace it/,
    );
    assertEquals(await Deno.readTextFile(unitPath), "[Service]\nExecStart=/bin/true\n");
    await installService({ dir: tmp, unitPath, exec: [VPN], force: true });
    assertEquals(await Deno.readTextFile(unitPath), serviceUnit({ dir: tmp, exec: [VPN] }));
  });
});

Deno.test("installService() takes the control socket from server.yaml", async () => {
  await withTempDir(async (tmp) => {
    await Deno.writeTextFile(`${tmp}/server.yaml`, "control: { socket: /srv/ops/vpn.sock }\n");
    const unitPath = `${tmp}/vpn@x.service`;
    await installService({ dir: tmp, unitPath, exec: [VPN] });
    const text = await Deno.readTextFile(unitPath);
    assertEquals(setting(text, "ReadWritePaths"), `"${tmp}" "/srv/ops"`);
  });
});

Deno.test("installService() names what is missing or wrong", async () => {
  await withTempDir(async (tmp) => {
    await assertRejects(
      () => installService({ dir: `${tmp}/none`, unitPath: `${tmp}/vpn.service`, exec: [VPN] }),
      Error,
      /none is not a directory: run "vpn init --dir .*none" first/,
    );
    await assertRejects(
      () => installService({ dir: tmp, unitPath: `${tmp}/no/vpn.service`, exec: [VPN] }),
      Error,
      /no does not exist: is this a systemd host\? Else pass --unit PATH/,
    );
    for (const name of ["vpn.conf", "vpn@.service", "my vpn.service", "a@b@c.service"]) {
      await assertRejects(
        () => installService({ dir: tmp, unitPath: `${tmp}/${name}`, exec: [VPN] }),
        TypeError,
        /not a service unit name systemd accepts; name it like vpn.service/,
      );
    }
  });
});

Deno.test({
  name: "installService() writes a unit that systemd-analyze verify accepts, odd paths too",
  ignore: systemdAnalyze() === undefined,
  fn: async () => {
    await withTempDir(async (tmp) => {
      // Uncompiled vpn: the real deno and main.ts (verify checks that the program exists).
      const dir = `${tmp}/etc-vpn`;
      await Deno.mkdir(dir);
      const plain = `${tmp}/vpn@etc-vpn.service`;
      await installService({ dir, unitPath: plain, exec: DENO_RUN });
      const first = await verify(plain);
      assertEquals(first.code, 0, first.output.slice(-2000));

      // A program and a directory with every character that needs quoting; systemd's dump
      // shows the paths as it read them.
      const odd = `${tmp}/my vpn %h $HOME "q" \\b`;
      const bin = `${tmp}/100% tools $X`;
      await Deno.mkdir(odd);
      await Deno.mkdir(bin);
      await Deno.symlink(Deno.execPath(), `${bin}/vpn`);
      const unitPath = `${tmp}/vpn@odd.service`;
      await installService({ dir: odd, unitPath, exec: [`${bin}/vpn`] });
      const { code, output } = await verify(unitPath);
      assertEquals(code, 0, output.slice(-2000));
      assertEquals(dumped(output, "ReadWritePaths"), [odd]);
      assertEquals(dumped(output, "Description"), [`vpn server of ${odd}`]);
      // The dump quotes as a shell would; arguments keep `$$` until systemd runs them (then
      // `$`), the program's path has no `$` expanded.
      const shell = (text: string) => text.replace(/[\\"$]/g, "\\$&");
      assertEquals(dumped(output, "Command Line"), [
        `"${shell(bin)}/vpn" serve --dir "${shell(odd.replaceAll("$", "$$$$"))}"`,
        `"${shell(bin)}/vpn" reload --dir "${shell(odd.replaceAll("$", "$$$$"))}"`,
      ]);
    });
  },
});

if (systemdAnalyze() === undefined) {
  console.log("service_test: no systemd-analyze here: the unit is not verified by systemd");
}

/** The values of `key` in systemd-analyze's debug dump of a unit ("\t\tKey: value" lines). */
function dumped(output: string, key: string): string[] {
  const prefix = `${key}: `;
  return output.split("\n").map((line) => line.trim()).filter((line) => line.startsWith(prefix))
    .map((line) => line.slice(prefix.length));
}
