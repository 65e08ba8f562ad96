import {
  type ClientProfile,
  ConfigError,
  controlSocketPath,
  defaultServerConfig,
  loadProfile,
  loadServerConfig,
  parseListen,
  parseProfile,
  parseRemote,
  parseServerConfig,
  profileYaml,
  type ServerConfig,
  serverConfigYaml,
} from "../mod/config.ts";
import { assert, assertEquals, assertMatch, assertRejects, assertThrows } from "./_assert.ts";

/** Parses `text` as server.yaml, expecting a ConfigError; returns it. */
function serverError(text: string): ConfigError {
  return assertThrows(() => parseServerConfig(text, "server.yaml"), ConfigError) as ConfigError;
}

Deno.test("parseServerConfig() gives every default for an empty or comment-only file", () => {
  assertEquals(parseServerConfig("", "server.yaml"), defaultServerConfig());
  assertEquals(parseServerConfig("# nothing yet\n", "server.yaml"), defaultServerConfig());
  assertEquals(defaultServerConfig(), {
    listen: { host: "0.0.0.0", port: 1194, udp: true },
    subnet: "10.8.0.0/24",
    subnet6: "none",
    nat: false,
    mtu: 1400,
    keepalive: { interval: 10, timeout: 60 },
    rekey_interval: 3600,
    lease_time: 604800,
    offload: true,
    client_to_client: false,
    push: { routes: [], redirect_gateway: false, dns: { servers: [], domains: [] } },
    dev: "vpn%d",
    log: { level: "info" },
    user: "nobody",
    openvpn: {
      udp: true,
      tcp: true,
      tcp_port: 1195,
      ciphers: ["AES-256-GCM", "CHACHA20-POLY1305"],
    },
    control: { socket: "" },
    metrics: { listen: "" },
  });
});

Deno.test("parseServerConfig() fills missing and empty keys with defaults", () => {
  const config = parseServerConfig("listen:\n  port: 443\nkeepalive:\npush:\n", "server.yaml");
  assertEquals(config, {
    ...defaultServerConfig(),
    listen: { host: "0.0.0.0", port: 443, udp: true },
  });
});

Deno.test("parseServerConfig() reads every key", () => {
  const text = `
listen: { host: "::", port: 1194, udp: false }
subnet: 10.99.0.0/16
subnet6: fd00:99::/64
nat: true
mtu: 65535
keepalive: { interval: 5, timeout: 6 }
rekey_interval: 60
lease_time: 120
offload: false
client_to_client: true
push:
  routes: [192.168.50.0/24, "172.16.0.0/12"]
  redirect_gateway: true
  dns: { servers: [10.99.0.1], domains: [corp.example] }
dev: tun7
log: { level: debug }
user: vpn
openvpn: { udp: false, tcp: true, tcp_port: 443, ciphers: [chacha20-poly1305, Aes-256-Gcm] }
control: { socket: /srv/vpn/control.sock }
metrics: { listen: "127.0.0.1:9194" }
`;
  assertEquals(parseServerConfig(text, "server.yaml"), {
    listen: { host: "::", port: 1194, udp: false },
    subnet: "10.99.0.0/16",
    subnet6: "fd00:99::/64",
    nat: true,
    mtu: 65535,
    keepalive: { interval: 5, timeout: 6 },
    rekey_interval: 60,
    lease_time: 120,
    offload: false,
    client_to_client: true,
    push: {
      routes: ["192.168.50.0/24", "172.16.0.0/12"],
      redirect_gateway: true,
      dns: { servers: ["10.99.0.1"], domains: ["corp.example"] },
    },
    dev: "tun7",
    log: { level: "debug" },
    user: "vpn",
    openvpn: {
      udp: false,
      tcp: true,
      tcp_port: 443,
      ciphers: ["CHACHA20-POLY1305", "AES-256-GCM"],
    },
    control: { socket: "/srv/vpn/control.sock" },
    metrics: { listen: "127.0.0.1:9194" },
  });
});

Deno.test("parseServerConfig() names file, key, value and rule for each bad value", () => {
  const cases: [string, string, string][] = [
    ["listen: 5", "listen", `listen: 5 is not allowed: must be a mapping of host, port, udp`],
    ["listen: {host: 10.0.0.256}", "listen.host", `listen.host: "10.0.0.256" is not allowed`],
    ["listen: {host: 'a b'}", "listen.host", `must be an IP address or a host name`],
    [
      "listen: {port: 0}",
      "listen.port",
      `listen.port: 0 is not allowed: must be a whole number from 1 to 65535`,
    ],
    ["listen: {port: 65536}", "listen.port", `65536 is not allowed`],
    ["listen: {port: '1194'}", "listen.port", `"1194" is not allowed`],
    [
      "listen: {udp: 'yes'}",
      "listen.udp",
      `listen.udp: "yes" is not allowed: must be true or false`,
    ],
    [
      "subnet: 10.8.0.0/31",
      "subnet",
      `subnet: "10.8.0.0/31" is not allowed: prefix length must be at most 30`,
    ],
    ["subnet: 10.8.0.0/33", "subnet", `prefix length must be at most 32`],
    ["subnet: 10.8.0.9/24", "subnet", `host bits are set (did you mean "10.8.0.0/24"?)`],
    ["subnet: fd00::/64", "subnet", `must be IPv4`],
    [
      'push: { routes: ["fd00:50::/64"] }',
      "push.routes[0]",
      `push.routes[0]: "fd00:50::/64" is not allowed: is an IPv6 network and the tunnel has no IPv6: set subnet6`,
    ],
    ["subnet6: fd00:8::/56", "subnet6", `the prefix length must be from /64 to /120`],
    ["subnet6: fd00:8::/121", "subnet6", `the prefix length must be from /64 to /120`],
    ["subnet6: fd00:8::1/64", "subnet6", `host bits are set (did you mean "fd00:8::/64"?)`],
    ["subnet6: ff05::/64", "subnet6", `it is a multicast prefix`],
    ["subnet6: fe80::/64", "subnet6", `it is link-local`],
    ["subnet6: 10.8.0.0/24", "subnet6", `it is not an IPv6 prefix`],
    [
      "subnet: 10.0.0.0/16\nsubnet6: fd00:8::/120",
      "subnet6",
      `a /120 has fewer addresses than the IPv4 subnet (/16); use a /112 or a shorter prefix; or "none"`,
    ],
    ["nat: yes", "nat", `nat: "yes" is not allowed: must be true or false`],
    ["control: {socket: vpn.sock}", "control.socket", `must be an absolute path`],
    ["metrics: {listen: localhost:9194}", "metrics.listen", `must be host:port such as`],
    ["metrics: {listen: '127.0.0.1'}", "metrics.listen", `must be host:port such as`],
    ["push: {redirect_gateway: 1}", "push.redirect_gateway", `must be true or false`],
    ["push: {dns: {servers: [10.8.0.256]}}", "push.dns.servers[0]", `is not allowed`],
    ["push: {dns: {servers: 10.8.0.1}}", "push.dns.servers", `must be a list of at most 8`],
    [
      "push: {dns: {servers: [1.1.1.1, 1.1.1.2, 1.1.1.3, 1.1.1.4, 1.1.1.5, 1.1.1.6, 1.1.1.7, 1.1.1.8, 1.1.1.9]}}",
      "push.dns.servers",
      `must be a list of at most 8 IP addresses`,
    ],
    ["push: {dns: {domains: [corp..example]}}", "push.dns.domains[0]", `must be a domain name`],
    ["push: {dns: {domains: ['-bad.example']}}", "push.dns.domains[0]", `must be a domain name`],
    [
      "subnet: [10.8.0.0/24]",
      "subnet",
      `subnet: a list is not allowed: must be an IPv4 CIDR block`,
    ],
    [
      "mtu: 575",
      "mtu",
      `mtu: 575 is not allowed: must be a whole number of bytes from 576 to 65535`,
    ],
    ["mtu: 65536", "mtu", `65536 is not allowed`],
    ["mtu: 1400.5", "mtu", `1400.5 is not allowed`],
    [
      "keepalive: {interval: 0}",
      "keepalive.interval",
      `keepalive.interval: 0 is not allowed: must be a whole number of seconds from 1 to 3600`,
    ],
    [
      "keepalive: {timeout: 1}",
      "keepalive.timeout",
      `must be a whole number of seconds from 2 to 86400`,
    ],
    [
      "keepalive: {interval: 30, timeout: 30}",
      "keepalive.timeout",
      `keepalive.timeout: 30 is not allowed: must be greater than keepalive.interval (30)`,
    ],
    [
      "client_to_client: 1",
      "client_to_client",
      `client_to_client: 1 is not allowed: must be true or false`,
    ],
    [
      "push: {routes: 10.0.0.0/8}",
      "push.routes",
      `push.routes: "10.0.0.0/8" is not allowed: must be a list of CIDR blocks`,
    ],
    [
      "push: {routes: [10.0.0.0/8, 10.1.0.0/33]}",
      "push.routes[1]",
      `push.routes[1]: "10.1.0.0/33" is not allowed: prefix length must be at most 32`,
    ],
    [
      "push: {routes: [10.0.0.1/8]}",
      "push.routes[0]",
      `host bits are set (did you mean "10.0.0.0/8"?)`,
    ],
    [
      "push: {routes: [5]}",
      "push.routes[0]",
      `push.routes[0]: 5 is not allowed: must be a CIDR block`,
    ],
    [
      "dev: abcdefghijklmnop",
      "dev",
      `dev: "abcdefghijklmnop" is not allowed: must be a device name of 1 to 15 bytes`,
    ],
    ["dev: 'a/b'", "dev", `"a/b" is not allowed`],
    ["dev: 'vpn%s'", "dev", `"vpn%s" is not allowed`],
    ["dev: 'a%d%d'", "dev", `"a%d%d" is not allowed`],
    ["dev: ''", "dev", `"" is not allowed`],
    ["user: ''", "user", `user: "" is not allowed: must be a user name of this host`],
    ["user: 'a b'", "user", `"a b" is not allowed`],
    ["user: 65534", "user", `65534 is not allowed`],
    [
      "log: {level: warn}",
      "log.level",
      `log.level: "warn" is not allowed: must be one of debug, info, warning, error`,
    ],
    [
      "openvpn: 5",
      "openvpn",
      `openvpn: 5 is not allowed: must be a mapping of udp, tcp, tcp_port, ciphers`,
    ],
    ["openvpn: {udp: 'yes'}", "openvpn.udp", `"yes" is not allowed: must be true or false`],
    ["openvpn: {tcp: 0}", "openvpn.tcp", `0 is not allowed: must be true or false`],
    [
      "openvpn: {tcp_port: 0}",
      "openvpn.tcp_port",
      `openvpn.tcp_port: 0 is not allowed: must be a whole number from 1 to 65535`,
    ],
    [
      "openvpn: {tcp_port: 1194}",
      "openvpn.tcp_port",
      `openvpn.tcp_port: 1194 is not allowed: must differ from listen.port (1194), where our ` +
      `own TLS listens on TCP; pick another port, or set openvpn.tcp: false`,
    ],
    [
      "listen: {port: 443}\nopenvpn: {tcp_port: 443}",
      "openvpn.tcp_port",
      `must differ from listen.port (443)`,
    ],
    [
      "openvpn: {ciphers: AES-256-GCM}",
      "openvpn.ciphers",
      `openvpn.ciphers: "AES-256-GCM" is not allowed: must be a list of AES-256-GCM, ` +
      `CHACHA20-POLY1305`,
    ],
    [
      "openvpn: {ciphers: []}",
      "openvpn.ciphers",
      `must name at least one of AES-256-GCM, CHACHA20-POLY1305: an empty list offers no cipher`,
    ],
    [
      "openvpn: {ciphers: [AES-256-GCM, AES-128-GCM]}",
      "openvpn.ciphers[1]",
      `openvpn.ciphers[1]: "AES-128-GCM" is not allowed: must be AES-256-GCM or ` +
      `CHACHA20-POLY1305`,
    ],
    [
      "openvpn: {ciphers: [5]}",
      "openvpn.ciphers[0]",
      `openvpn.ciphers[0]: 5 is not allowed: must be AES-256-GCM or CHACHA20-POLY1305`,
    ],
    [
      "openvpn: {ciphers: [aes-256-gcm, AES-256-GCM]}",
      "openvpn.ciphers[1]",
      `openvpn.ciphers[1]: "AES-256-GCM" is not allowed: AES-256-GCM is listed twice`,
    ],
  ];
  for (const [text, key, message] of cases) {
    const error = serverError(text);
    assertEquals(error.key, key, text);
    assertEquals(error.source, "server.yaml");
    assert(error.message.startsWith(`server.yaml: ${key}: `), error.message);
    assert(error.message.includes(message), `${error.message}\ndoes not include\n${message}`);
  }
});

Deno.test("parseServerConfig() accepts the edges of each range", () => {
  const config = parseServerConfig(
    "listen: {host: vpn.example.com, port: 65535}\nmtu: 576\nsubnet: 10.0.0.0/8\n" +
      "keepalive: {interval: 3600, timeout: 86400}\ndev: abcdefghijklmno\n",
    "server.yaml",
  );
  assertEquals(config.listen.port, 65535);
  assertEquals(config.mtu, 576);
  assertEquals(config.subnet, "10.0.0.0/8");
  assertEquals(config.keepalive, { interval: 3600, timeout: 86400 });
  assertEquals(config.dev, "abcdefghijklmno");
});

Deno.test("parseServerConfig() lets openvpn.tcp_port equal listen.port only with openvpn.tcp off", () => {
  const off = parseServerConfig("openvpn: {tcp: false, tcp_port: 1194}\n", "server.yaml");
  assertEquals(off.openvpn, {
    udp: true,
    tcp: false,
    tcp_port: 1194,
    ciphers: ["AES-256-GCM", "CHACHA20-POLY1305"],
  });
  assertEquals(serverError("openvpn: {tcp: true, tcp_port: 1194}\n").key, "openvpn.tcp_port");
});

Deno.test("parseServerConfig() takes OpenVPN over UDP with listen.udp off, and both off", () => {
  const config = parseServerConfig("listen: {udp: false}\nopenvpn: {udp: true}\n", "server.yaml");
  assertEquals([config.listen.udp, config.openvpn.udp], [false, true]);
  const none = parseServerConfig("openvpn: {udp: false, tcp: false}\n", "server.yaml");
  assertEquals([none.openvpn.udp, none.openvpn.tcp], [false, false]);
});

Deno.test("parseServerConfig() refuses unknown keys at any level, suggesting the near one", () => {
  const top = serverError("kepalive:\n  interval: 5\n");
  assertEquals(top.key, "kepalive");
  assertEquals(top.message, `server.yaml: unknown key "kepalive" (did you mean "keepalive"?)`);
  const nested = serverError("listen:\n  prot: 443\n");
  assertEquals(nested.key, "listen.prot");
  assertEquals(
    nested.message,
    `server.yaml: unknown key "listen.prot" (did you mean "listen.port"?)`,
  );
  const far = serverError("log:\n  level: info\n  file: /var/log/vpn\n");
  assertEquals(far.message, `server.yaml: unknown key "log.file"`);
  assertEquals(
    serverError("openvpn:\n  tcp_prot: 1195\n").message,
    `server.yaml: unknown key "openvpn.tcp_prot" (did you mean "openvpn.tcp_port"?)`,
  );
  assertEquals(serverError("__proto__: {}\n").key, "__proto__");
});

Deno.test("parseServerConfig() reports YAML syntax errors with their line", () => {
  const error = serverError("listen:\n  port: 1194\nmtu: [1400\n");
  assertEquals(error.key, undefined);
  assertMatch(error.message, /^server\.yaml: line \d+, column \d+: invalid YAML: /);
  assertMatch(serverError("mtu: 1\nmtu: 2\n").message, /^server\.yaml: line 2, column 1: .*unique/);
  assertMatch(serverError("mtu: *size\n").message, /^server\.yaml: invalid YAML: .*alias/);
});

Deno.test("parseServerConfig() refuses a file that is not a mapping", () => {
  const error = serverError("- listen\n- mtu\n");
  assertEquals(error.key, undefined);
  assertMatch(
    error.message,
    /^server\.yaml: the file must be a mapping of keys \(listen, .*\), not a list$/,
  );
  assertMatch(serverError("just text").message, /not "just text"$/);
});

Deno.test("serverConfigYaml() round-trips through parseServerConfig()", () => {
  const custom: ServerConfig = {
    listen: { host: "::", port: 443, udp: false },
    subnet: "10.99.0.0/16",
    subnet6: "fd00:99::/64",
    nat: true,
    mtu: 9000,
    keepalive: { interval: 3, timeout: 20 },
    rekey_interval: 600,
    lease_time: 3600,
    offload: false,
    client_to_client: true,
    push: {
      routes: ["192.168.50.0/24", "172.16.0.0/12", "2001:db8::/32"],
      redirect_gateway: true,
      dns: { servers: ["10.99.0.1", "fd00:99::1"], domains: ["corp.example"] },
    },
    dev: "tun%d",
    log: { level: "warning" },
    user: "vpn",
    openvpn: { udp: true, tcp: false, tcp_port: 443, ciphers: ["CHACHA20-POLY1305"] },
    control: { socket: "/run/vpn/office.sock" },
    metrics: { listen: "[::1]:9194" },
  };
  for (const config of [defaultServerConfig(), custom]) {
    assertEquals(parseServerConfig(serverConfigYaml(config), "server.yaml"), config);
  }
});

Deno.test("serverConfigYaml() writes every key with a comment above it", () => {
  const lines = serverConfigYaml(defaultServerConfig()).split("\n");
  const keyLines = lines.filter((line) => /^\s*[a-z_0-9]+:/.test(line));
  assertEquals(keyLines.length, 34);
  for (const line of keyLines) {
    const above = lines[lines.indexOf(line) - 1]!;
    assertMatch(above, /^\s*# \S/, `no comment above ${line}`);
  }
  assert(lines.includes("subnet: 10.8.0.0/24"));
  assert(lines.includes("  routes: []"));
  assert(lines.includes("  ciphers: [AES-256-GCM, CHACHA20-POLY1305]"));
});

Deno.test("loadServerConfig() reads a file and names it in errors", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/server.yaml`;
    await Deno.writeTextFile(path, serverConfigYaml(defaultServerConfig()));
    assertEquals(await loadServerConfig(path), defaultServerConfig());
    await Deno.writeTextFile(path, "mtu: 1\n");
    const error = await assertRejects(() => loadServerConfig(path), ConfigError, /mtu: 1 is/);
    assert(error.message.startsWith(`${path}: `));
    await assertRejects(() => loadServerConfig(`${dir}/missing.yaml`), Deno.errors.NotFound);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

const CERT =
  "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\nAbC+/=\n-----END CERTIFICATE-----\n";
const KEY = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49\n-----END PRIVATE KEY-----\n";

/** A profile as `vpn client add` would write it. */
function profile(): ClientProfile {
  return {
    remote: "vpn.example.com:1194",
    ca: CERT,
    cert: CERT,
    key: KEY,
    proto: "auto",
    dev: "vpn%d",
  };
}

/** Parses `text` as a profile, expecting a ConfigError; returns it. */
function profileError(text: string): ConfigError {
  return assertThrows(() => parseProfile(text, "alice.yaml"), ConfigError) as ConfigError;
}

Deno.test("profileYaml() writes PEMs as block literals and round-trips", () => {
  const text = profileYaml(profile());
  assert(text.includes("ca: |\n  -----BEGIN CERTIFICATE-----\n  MIIBszCCAVmgAwIBAgIU\n"), text);
  assert(text.includes("key: |\n  -----BEGIN PRIVATE KEY-----\n"), text);
  assertEquals(parseProfile(text, "alice.yaml"), profile());
  const custom = {
    ...profile(),
    ca: CERT + CERT,
    cert: CERT.trimEnd(),
    proto: "tcp" as const,
    dev: "work0",
  };
  assertEquals(parseProfile(profileYaml(custom), "alice.yaml"), custom);
});

Deno.test("profileYaml() writes the defaults of left-out settings", () => {
  const { remote, ca, cert, key } = profile();
  const text = profileYaml({ remote, ca, cert, key });
  assert(text.includes("\nproto: auto\n") && text.includes("\ndev: vpn%d\n"), text);
  assertEquals(parseProfile(text, "alice.yaml"), profile());
});

Deno.test("parseProfile() defaults proto and dev", () => {
  // JSON is YAML too, and leaves out proto and dev without block literals to write.
  const text = JSON.stringify({ remote: "192.0.2.1", ca: CERT, cert: CERT, key: KEY });
  const parsed = parseProfile(text, "alice.yaml");
  assertEquals(parsed.proto, "auto");
  assertEquals(parsed.dev, "vpn%d");
  assertEquals(parsed.remote, "192.0.2.1");
});

Deno.test("parseProfile() refuses missing, unknown and bad keys", () => {
  const good = profile();
  const yamlWith = (changes: Record<string, unknown>) =>
    profileYaml({ ...good, ...changes } as ClientProfile);
  assertEquals(
    profileError("remote: vpn.example.com\n").message,
    `alice.yaml: missing key "ca": it must be a PEM certificate (-----BEGIN CERTIFICATE-----)`,
  );
  assertEquals(profileError("").key, "remote");
  assertEquals(
    profileError(yamlWith({}) + "remtoe: x\n").message,
    `alice.yaml: unknown key "remtoe" (did you mean "remote"?)`,
  );
  assertEquals(
    profileError(yamlWith({ remote: "vpn.example.com:0" })).message,
    `alice.yaml: remote: "vpn.example.com:0" is not allowed: port must be from 1 to 65535`,
  );
  assertEquals(
    profileError(yamlWith({ proto: "quic" })).message,
    `alice.yaml: proto: "quic" is not allowed: must be one of auto, udp, tcp`,
  );
  assertEquals(profileError(yamlWith({ dev: "much-too-long-name" })).key, "dev");
  assertEquals(
    profileError(yamlWith({ ca: KEY })).message,
    `alice.yaml: ca: "-----BEGIN PRIVATE KEY-----..." is not allowed: must be a PEM certificate (-----BEGIN CERTIFICATE-----)`,
  );
  assertEquals(profileError(yamlWith({ key: CERT })).key, "key");
  assertEquals(profileError(yamlWith({ cert: CERT.replace("END", "FINISH") })).key, "cert");
});

Deno.test("parseProfile() never quotes a private key in an error", () => {
  const error = profileError(profileYaml({ ...profile(), key: "secret material\nmore secret" }));
  assertEquals(
    error.message,
    `alice.yaml: key: a text of 27 characters is not allowed: must be a PEM private key (-----BEGIN PRIVATE KEY-----)`,
  );
});

Deno.test("parseProfile() accepts EC and RSA key labels and certificate chains", () => {
  const ec = KEY.replaceAll("PRIVATE KEY", "EC PRIVATE KEY");
  const parsed = parseProfile(
    profileYaml({ ...profile(), key: ec, ca: CERT + "\n" + CERT }),
    "alice.yaml",
  );
  assertEquals(parsed.key, ec);
});

Deno.test("loadProfile() reads a file", async () => {
  const path = await Deno.makeTempFile({ suffix: ".yaml" });
  try {
    await Deno.writeTextFile(path, profileYaml(profile()));
    assertEquals(await loadProfile(path), profile());
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("parseRemote() reads host:port, host, [IPv6]:port and bare IPv6", () => {
  assertEquals(parseRemote("vpn.example.com:443"), { host: "vpn.example.com", port: 443 });
  assertEquals(parseRemote("vpn.example.com"), { host: "vpn.example.com", port: 1194 });
  assertEquals(parseRemote("vpn.example.com", 8443), { host: "vpn.example.com", port: 8443 });
  assertEquals(parseRemote("192.0.2.1:1"), { host: "192.0.2.1", port: 1 });
  assertEquals(parseRemote("[::1]:1194"), { host: "::1", port: 1194 });
  assertEquals(parseRemote("[fd00::1]"), { host: "fd00::1", port: 1194 });
  assertEquals(parseRemote("fd00::1"), { host: "fd00::1", port: 1194 });
  assertEquals(parseRemote("localhost:65535"), { host: "localhost", port: 65535 });
});

Deno.test("parseRemote() refuses bad forms with the reason", () => {
  assertThrows(
    () => parseRemote("host:0"),
    RangeError,
    /^Cannot parse remote "host:0": port must be from 1 to 65535$/,
  );
  assertThrows(() => parseRemote("host:65536"), RangeError);
  assertThrows(() => parseRemote("host:http"), TypeError, /port "http" is not a number/);
  assertThrows(() => parseRemote("host:"), TypeError, /port "" is not a number/);
  assertThrows(() => parseRemote(":1194"), TypeError, /"" is not a host name/);
  assertThrows(() => parseRemote("[::1"), TypeError, /no matching "\]"/);
  assertThrows(() => parseRemote("[::1]1194"), TypeError, /expected ":" and a port/);
  assertThrows(() => parseRemote("[vpn.example.com]:1"), TypeError, /not an IPv6 address/);
  assertThrows(() => parseRemote("fd00::1:x:1194"), TypeError, /write \[address\]:port/);
  assertThrows(() => parseRemote("10.0.0.256"), TypeError, /not a host name or IPv4 address/);
  assertThrows(() => parseRemote("bad host"), TypeError);
  assertThrows(() => parseRemote("-bad.example"), TypeError);
});

Deno.test("parseServerConfig() checks lease_time", () => {
  assertEquals(parseServerConfig("lease_time: 60\n", "server.yaml").lease_time, 60);
  assertMatch(
    serverError("lease_time: 59\n").message,
    /lease_time: 59 is not allowed: must be a whole number of seconds from 60 to 31536000/,
  );
});

Deno.test("parseServerConfig() checks rekey_interval", () => {
  assertEquals(parseServerConfig("rekey_interval: 2\n", "server.yaml").rekey_interval, 2);
  assertMatch(
    serverError("rekey_interval: 0\n").message,
    /rekey_interval: 0 is not allowed: must be a whole number of seconds from 1 to 86400/,
  );
});

Deno.test('parseServerConfig() says that listen.host: :: must be quoted, and reads "::"', () => {
  const error = serverError("listen:\n  host: ::\n");
  assertMatch(error.message, /line 2, column 9: invalid YAML: .*must be quoted: host: "::"$/);
  assertEquals(parseServerConfig('listen:\n  host: "::"\n', "server.yaml").listen.host, "::");
});

Deno.test("parseProfile() names the PEM block whose indentation broke", () => {
  const lines = profileYaml(profile()).split("\n");
  const keyLine = lines.indexOf("key: |");
  assert(keyLine > 0, "the profile has a key block");
  // One base64 line of the key pasted without its indentation.
  lines[keyLine + 2] = lines[keyLine + 2]!.trimStart();
  assertMatch(
    profileError(lines.join("\n")).message,
    new RegExp(
      `invalid YAML: .*\\(in "key", the block that starts at line ${keyLine + 1}: ` +
        `every line of a PEM block must be indented like its first line\\)`,
    ),
  );
  const caLines = profileYaml(profile()).split("\n");
  const caLine = caLines.indexOf("ca: |");
  caLines[caLine + 2] = ` ${caLines[caLine + 2]!.trimStart()}`;
  assertMatch(profileError(caLines.join("\n")).message, /\(in "ca", the block that starts at/);
});

Deno.test("parseServerConfig() takes subnet6, nat, a full tunnel and DNS, in canonical form", () => {
  const config = parseServerConfig(
    "subnet6: FD00:8:0::/64\nnat: true\npush:\n  redirect_gateway: true\n" +
      "  routes: [2001:db8::/32]\n  dns: {servers: [10.8.0.1, 'FD00:8::1'], domains: [Corp.Example.]}\n",
    "server.yaml",
  );
  assertEquals(config.subnet6, "fd00:8::/64");
  assertEquals(config.nat, true);
  assertEquals(config.push.redirect_gateway, true);
  assertEquals(config.push.routes, ["2001:db8::/32"]);
  assertEquals(config.push.dns, { servers: ["10.8.0.1", "fd00:8::1"], domains: ["corp.example"] });
  assertEquals(parseServerConfig("subnet6: none\n", "server.yaml").subnet6, "none");
  assertEquals(parseServerConfig("", "server.yaml").subnet6, "none");
});

Deno.test("controlSocketPath() is control.socket, or /run/vpn/NAME.sock after the PKI directory; parseListen() splits metrics.listen", () => {
  const config = defaultServerConfig();
  assertEquals(controlSocketPath(config, "/etc/vpn"), "/run/vpn/vpn.sock");
  assertEquals(controlSocketPath(config, "/srv/office/"), "/run/vpn/office.sock");
  config.control.socket = "/tmp/x.sock";
  assertEquals(controlSocketPath(config, "/etc/vpn"), "/tmp/x.sock");
  assertEquals(parseListen("127.0.0.1:9194"), { hostname: "127.0.0.1", port: 9194 });
  assertEquals(parseListen("[::1]:9194"), { hostname: "::1", port: 9194 });
});
