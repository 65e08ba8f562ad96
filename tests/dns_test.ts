/**
 * Tests of the client's DNS changes (mod/system/dns.ts): resolv.conf replaced and put back in
 * a real network namespace, whose /etc/resolv.conf is /etc/netns/NS/resolv.conf bind-mounted
 * by `ip netns exec` (the case where a rename over the file fails); the symlink and
 * someone-rewrote-it cases and systemd-resolved's detection on fixture files in a temp dir.
 */

import assert from "node:assert/strict";
import { Netns, rootTest } from "./_netns.ts";
import { failed, namespaceResolvConf, ok, probe, stateDir } from "./_host_changes.ts";
import {
  backupResolvConf,
  checkDns,
  namespaceResolvConf as mountedResolvConf,
  resolvConfContent,
  resolvectlCommands,
  resolvedRuns,
  restoreResolvConf,
  writeResolvConf,
} from "../mod/system/dns.ts";

const DNS = { servers: ["10.8.0.1", "fd00:8::1"], domains: ["corp.example", "lab.example"] };

rootTest(
  "setDns() replaces the namespace's resolv.conf in place; clearDns() puts it back",
  async () => {
    await using ns = await Netns.create("dns");
    const original = "# the system's own\nnameserver 192.0.2.53\n";
    using file = namespaceResolvConf(ns, original);
    using state = stateDir();
    const host = Deno.readTextFileSync("/etc/resolv.conf");
    const { results } = await probe(ns, {
      dev: "tun7",
      stateDir: state.path,
      calls: [
        ["open"],
        ["setDns", "tun7", DNS, true],
        ["resolvConf"],
        ["clearDns"],
        ["resolvConf"],
        ["undo"],
      ],
    });
    assert.match(ok<string>(results[1]), /^\/etc\/resolv\.conf replaced/);
    const written = ok<string>(results[2]);
    assert.match(written, /^# Written by the vpn client of tun7 \(pid \d+\)/);
    assert.match(
      written,
      /\nnameserver 10\.8\.0\.1\nnameserver fd00:8::1\nsearch corp\.example lab\.example\n$/,
    );
    ok(results[3]);
    assert.equal(ok<string>(results[4]), original);
    ok(results[5]);
    // The namespace's file was written through the bind mount, and is back as it was.
    assert.equal(Deno.readTextFileSync(file.path), original);
    assert.deepEqual([...Deno.readDirSync(state.path)], [], "undo() removes the record");
    assert.equal(Deno.readTextFileSync("/etc/resolv.conf"), host, "the host's file is untouched");
  },
);

rootTest("setDns() refuses a domain that would add a line to resolv.conf", async () => {
  await using ns = await Netns.create("dns");
  const original = "nameserver 192.0.2.53\n";
  using file = namespaceResolvConf(ns, original);
  using state = stateDir();
  const bad = { servers: ["10.8.0.1"], domains: ["corp.example\nnameserver 6.6.6.6"] };
  const { results } = await probe(ns, {
    dev: "tun7",
    stateDir: state.path,
    calls: [["open"], ["setDns", "tun7", bad, false], ["undo"]],
  });
  assert.equal(
    failed(results[1]),
    'DNS domain "corp.example\nnameserver 6.6.6.6" is not a DNS name ' +
      '(letters, digits, "-" and ".", at most 253 bytes)',
  );
  ok(results[2]);
  assert.equal(Deno.readTextFileSync(file.path), original);
});

/** A temp dir for fixture files, removed after `fn`. */
function inTempDir(fn: (dir: string) => void): void {
  const dir = Deno.makeTempDirSync({ prefix: "vpn-dns-" });
  try {
    fn(dir);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
}

Deno.test("writeResolvConf() replaces a symlink by a file; restoreResolvConf() puts the link back", () => {
  inTempDir((dir) => {
    const target = `${dir}/stub-resolv.conf`;
    Deno.writeTextFileSync(target, "nameserver 127.0.0.53\n");
    const path = `${dir}/resolv.conf`;
    Deno.symlinkSync(target, path);
    const backup = backupResolvConf(path);
    assert.deepEqual(backup, { kind: "symlink", target });
    const written = resolvConfContent("tun7", DNS);
    writeResolvConf(path, written, backup);
    assert.ok(Deno.lstatSync(path).isFile, "the symlink itself is replaced");
    assert.equal(Deno.readTextFileSync(path), written);
    assert.equal(Deno.readTextFileSync(target), "nameserver 127.0.0.53\n", "its target is not");
    assert.equal(restoreResolvConf(path, written, backup), true);
    assert.ok(Deno.lstatSync(path).isSymlink);
    assert.equal(Deno.readLinkSync(path), target);
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name).sort(), [
      "resolv.conf",
      "stub-resolv.conf",
    ]);
  });
});

Deno.test("restoreResolvConf() leaves a file someone rewrote since as it is", () => {
  inTempDir((dir) => {
    const path = `${dir}/resolv.conf`;
    Deno.writeTextFileSync(path, "nameserver 192.0.2.53\n");
    const backup = backupResolvConf(path);
    const written = resolvConfContent("tun7", DNS);
    writeResolvConf(path, written, backup);
    Deno.writeTextFileSync(path, "# NetworkManager\nnameserver 192.0.2.99\n");
    assert.equal(restoreResolvConf(path, written, backup), false);
    assert.equal(Deno.readTextFileSync(path), "# NetworkManager\nnameserver 192.0.2.99\n");
    // Replaced by a symlink since: also left.
    Deno.removeSync(path);
    Deno.symlinkSync("/run/NetworkManager/resolv.conf", path);
    assert.equal(restoreResolvConf(path, written, backup), false);
    assert.equal(Deno.readLinkSync(path), "/run/NetworkManager/resolv.conf");
  });
});

Deno.test("restoreResolvConf() removes a resolv.conf that was not there before", () => {
  inTempDir((dir) => {
    const path = `${dir}/resolv.conf`;
    const backup = backupResolvConf(path);
    assert.deepEqual(backup, { kind: "missing" });
    const written = resolvConfContent("tun7", DNS);
    writeResolvConf(path, written, backup);
    assert.equal(restoreResolvConf(path, written, backup), true);
    assert.throws(() => Deno.lstatSync(path), Deno.errors.NotFound);
  });
});

Deno.test("resolvConfContent() writes at most glibc's three nameservers", () => {
  const text = resolvConfContent("tun7", {
    servers: ["10.8.0.1", "10.8.0.2", "10.8.0.3", "10.8.0.4"],
    domains: [],
  });
  assert.equal(text.match(/^nameserver /gm)?.length, 3);
  assert.doesNotMatch(text, /search/);
});

Deno.test("resolvedRuns() needs resolved's files and a resolv.conf that leads to them", () => {
  inTempDir((dir) => {
    const runDir = `${dir}/run/systemd/resolve`;
    const resolvConf = `${dir}/resolv.conf`;
    Deno.writeTextFileSync(resolvConf, "nameserver 127.0.0.53\n");
    assert.equal(resolvedRuns({ runDir, resolvConf }), false, "no runtime directory");
    Deno.mkdirSync(runDir, { recursive: true });
    assert.equal(resolvedRuns({ runDir, resolvConf }), false, "neither socket nor stub file");
    Deno.writeTextFileSync(`${runDir}/stub-resolv.conf`, "nameserver 127.0.0.53\n");
    assert.equal(resolvedRuns({ runDir, resolvConf }), true, "a copy naming the stub");
    Deno.writeTextFileSync(resolvConf, "nameserver 192.0.2.53\n");
    assert.equal(resolvedRuns({ runDir, resolvConf }), false, "a file that bypasses resolved");
    Deno.removeSync(resolvConf);
    Deno.symlinkSync(`${runDir}/resolv.conf`, resolvConf);
    Deno.writeTextFileSync(`${runDir}/resolv.conf`, "nameserver 192.0.2.53\n");
    assert.equal(resolvedRuns({ runDir, resolvConf }), true, "a symlink into resolved's dir");
    Deno.removeSync(`${runDir}/stub-resolv.conf`);
    assert.equal(resolvedRuns({ runDir, resolvConf }), false, "the files without resolved");
    Deno.writeTextFileSync(`${runDir}/io.systemd.Resolve`, "");
    assert.equal(resolvedRuns({ runDir, resolvConf }), true, "its varlink socket");
  });
});

Deno.test("resolvectlCommands() routes all names to the tunnel only for a default route", () => {
  assert.deepEqual(resolvectlCommands("tun7", DNS, true), [
    ["dns", "tun7", "10.8.0.1", "fd00:8::1"],
    ["domain", "tun7", "corp.example", "lab.example", "~."],
    ["default-route", "tun7", "yes"],
  ]);
  assert.deepEqual(resolvectlCommands("tun7", { servers: ["10.8.0.1"], domains: [] }, false), [
    ["dns", "tun7", "10.8.0.1"],
    ["default-route", "tun7", "no"],
  ]);
});

Deno.test("checkDns() names the bad server, a missing server and too many domains", () => {
  assert.throws(() => checkDns({ servers: ["10.8.0.256"], domains: [] }), {
    name: "TypeError",
    message: /^DNS server: Cannot parse IP address "10\.8\.0\.256"/,
  });
  assert.throws(() => checkDns({ servers: [], domains: ["corp.example"] }), {
    message: "DNS settings have no server: push.dns.servers needs at least one",
  });
  assert.throws(() => checkDns({ servers: ["10.8.0.1"], domains: new Array(9).fill("a.b") }), {
    message: /at most 8 servers and 8 domains are taken/,
  });
  assert.throws(() => checkDns({ servers: ["10.8.0.1"], domains: ["-x y"] }), /not a DNS name/);
  checkDns(DNS);
});

Deno.test("namespaceResolvConf() takes only a file mounted for the namespace, through a symlink too", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vpn-dns-ns-" });
  try {
    const file = `${dir}/real resolv.conf`;
    await Deno.writeTextFile(file, "nameserver 192.0.2.1\n");
    await Deno.symlink(file, `${dir}/resolv.conf`);
    const mountinfo = `${dir}/mountinfo`;
    const line = (point: string) =>
      `59 55 254:0 /etc/netns/x/resolv.conf ${point} rw,relatime - ext4 /dev/vda rw\n`;
    await Deno.writeTextFile(mountinfo, line(file.replace(" ", "\\040")));
    assert.equal(mountedResolvConf(`${dir}/resolv.conf`, mountinfo), file);
    await Deno.writeTextFile(mountinfo, line("/etc/hosts"));
    assert.throws(
      () => mountedResolvConf(`${dir}/resolv.conf`, mountinfo),
      /this network namespace has no resolv\.conf of its own; create \/etc\/netns\/NAME\/resolv\.conf/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
