/**
 * `vpn service install`: a systemd unit that runs `vpn serve --dir DIR` with only what a VPN
 * server needs: CAP_NET_ADMIN and CAP_NET_BIND_SERVICE, the PKI directory and /run/vpn
 * writable, /dev/net/tun the only device, and the rest of the system read-only or hidden.
 *
 * The unit is named for the PKI directory, like its control socket (`/run/vpn/NAME.sock`):
 * `vpn.service` for the default /etc/vpn, `vpn@NAME.service` for any other, so that several
 * servers of one host sit side by side and `systemctl status 'vpn@*'` lists them all. It is a
 * plain unit named as an instance, not a template: each has its directory written in.
 *
 * @module
 */

import { basename, dirname, isAbsolute, normalize, resolve } from "node:path";

import { controlSocketPath, loadServerConfig } from "./config.ts";
import { writeFileAtomic } from "./pki.ts";

/** The directory of the system's own units, where `installService` writes by default. */
const SYSTEM_UNIT_DIR = "/etc/systemd/system";

/** The PKI directory whose unit is plain `vpn.service` (mod/commands.ts DEFAULT_DIR). */
const DEFAULT_DIR = "/etc/vpn";

/** The runtime directory systemd makes for the unit: the default control sockets' home. */
const RUNTIME_DIR = "/run/vpn";

/** Directories systemd reads units from by name; a unit elsewhere is enabled by its path. */
const UNIT_SEARCH_DIRS = [
  "/etc/systemd/system",
  "/run/systemd/system",
  "/usr/local/lib/systemd/system",
  "/usr/lib/systemd/system",
  "/lib/systemd/system",
];

/** Trees that `ProtectHome=yes` hides: a program or directory in one needs `read-only`. */
const HOME_TREES = ["/home", "/root", "/run/user"];

/** systemd's longest unit name (UNIT_NAME_MAX less its NUL). */
const MAX_UNIT_NAME = 255;

/** Options of {@linkcode serviceUnit}. */
export interface ServiceUnitOptions {
  /** The PKI directory, absolute: the unit runs `serve --dir` on it and may write there. */
  dir: string;
  /**
   * The command that runs vpn, without its subcommand: the compiled binary
   * (`["/usr/local/bin/vpn"]`) or `deno run` of main.ts (`["/usr/bin/deno", "run",
   * "--allow-all", "--unstable-net", "/opt/vpn/main.ts"]`). The first word is an absolute
   * path; the unit adds `serve --dir DIR`, and `reload --dir DIR` for `systemctl reload`.
   */
  exec: string[];
  /**
   * The control socket (`controlSocketPath` of server.yaml); default `/run/vpn/NAME.sock`.
   * Its directory is made writable when it is not /run/vpn.
   */
  controlSocket?: string | undefined;
}

/**
 * The text of the systemd unit that runs vpn's server for `options.dir`.
 *
 * @throws {TypeError} naming the option when `dir` or the first word of `exec` is not an
 * absolute path, when `exec` already holds `serve`, or when a word has a control character
 * (a unit file cannot hold a newline in a path).
 *
 * @example
 * ```ts
 * const text = serviceUnit({ dir: "/etc/vpn", exec: ["/usr/local/bin/vpn"] });
 * // ExecStart="/usr/local/bin/vpn" "serve" "--dir" "/etc/vpn"
 * ```
 */
export function serviceUnit(options: ServiceUnitOptions): string {
  const dir = absoluteDir(options.dir);
  const exec = options.exec;
  if (exec.length === 0 || !isAbsolute(exec[0]!)) {
    throw new TypeError(
      `exec: the first word must be the absolute path of vpn or deno, not ${
        JSON.stringify(exec[0] ?? "")
      }`,
    );
  }
  if (exec.includes("serve")) {
    throw new TypeError('exec: give the command without "serve": the unit adds "serve --dir DIR"');
  }
  for (const word of exec) checkText("exec", word);
  if (/["'\\]/.test(exec[0]!)) {
    // systemd refuses them in the program's path ("Executable name contains special characters").
    throw new TypeError(
      `exec: systemd cannot run a program whose path has a quote or "\\": ${exec[0]}`,
    );
  }
  const socket = options.controlSocket ?? `${RUNTIME_DIR}/${basename(dir)}.sock`;
  checkText("controlSocket", socket);
  const writable = [dir];
  const socketDir = dirname(socket);
  if (socketDir !== RUNTIME_DIR && !isUnder(socketDir, dir)) writable.push(socketDir);
  // A home tree hidden whole would hide a program or PKI directory there, and the cache of a
  // `deno run` (an exec of more than one word), $HOME/.cache/deno: read-only keeps them
  // readable (tried: deno runs main.ts with its cache and the checkout read-only).
  const underHome = [dir, ...exec].some((word) => HOME_TREES.some((tree) => isUnder(word, tree)));
  const protectHome = underHome || exec.length > 1 ? "read-only" : "yes";
  const command = (words: string[]) =>
    [pathWord(exec[0]!), ...[...exec.slice(1), ...words, "--dir", dir].map(argumentWord)].join(" ");
  return `# Written by "vpn service install --dir ${dir}". Install it again (--force) after moving
# vpn or ${dir}, or changing control.socket in server.yaml.
[Unit]
Description=vpn server of ${specifiers(dir)}
Wants=network-online.target
After=network-online.target

[Service]
# vpn serve has no sd_notify: it is up once started, and logs when it listens.
Type=simple
ExecStart=${command(["serve"])}
ExecReload=${command(["reload"])}
Restart=on-failure
RestartSec=5s
SyslogIdentifier=vpn
# vpn's own lines have no colour, but Deno colours an uncaught error even when not on a
# terminal; the journal should hold plain text.
Environment=NO_COLOR=1
# Each TCP client holds a socket: systemd's soft limit of 1024 would cap them near that.
LimitNOFILE=65536
UMask=0077

# The TUN, routes, nftables and forwarding need CAP_NET_ADMIN; ports below 1024
# CAP_NET_BIND_SERVICE; becoming server.yaml's user (nobody by default) once set up, and
# giving it the registry and DIR/state, CAP_SETUID, CAP_SETGID and CAP_CHOWN. It then keeps
# CAP_NET_ADMIN alone. Root keeps no other capability: no file access past permissions.
CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE CAP_SETUID CAP_SETGID CAP_CHOWN
AmbientCapabilities=CAP_NET_ADMIN CAP_NET_BIND_SERVICE
NoNewPrivileges=yes

# Everything read-only but the PKI directory (registry, leases, tls-crypt key) and the
# control socket's directory. RuntimeDirectoryPreserve: /run/vpn is shared by every vpn unit
# of this host, and one that stops must not delete the others' sockets.
ProtectSystem=strict
ReadWritePaths=${writable.map(pathWord).join(" ")}
RuntimeDirectory=vpn
RuntimeDirectoryPreserve=yes
ProtectHome=${protectHome}
PrivateTmp=yes
# Not PrivateDevices=: its /dev has no /dev/net/tun.
DevicePolicy=closed
DeviceAllow=/dev/net/tun rw
# Sockets: UDP and TCP of both families, the control socket, rtnetlink and nf_tables.
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
SystemCallArchitectures=native
# Left out on purpose:
# - MemoryDenyWriteExecute=yes: V8's JIT maps memory writable and executable; Deno would die.
# - ProtectKernelTunables=yes: it makes /proc/sys read-only, and nat: true turns on
#   net.ipv4.ip_forward (and net.ipv6.conf.all.forwarding) there.
# - ProcSubset=pid: it hides /proc/sys as well.
# - SystemCallFilter=: a call missing from it kills the process (V8, FFI); not tried here yet.

[Install]
WantedBy=multi-user.target
`;
}

/** Options of {@linkcode installService}. */
export interface InstallServiceOptions {
  /** The PKI directory; a relative path is taken from the working directory. */
  dir: string;
  /** Where to write; default /etc/systemd/system/vpn.service or vpn@NAME.service. */
  unitPath?: string;
  /** As {@linkcode ServiceUnitOptions.exec}. */
  exec: string[];
  /** Replace an existing unit file that differs. */
  force?: boolean;
}

/**
 * Writes the unit of {@linkcode serviceUnit} for `options.dir` (atomically, mode 0644) and
 * returns what to run next: enable and start it, read its log. The control socket's path is
 * read from DIR/server.yaml where there is one. An identical file is left as it is.
 *
 * @throws {Error} when DIR is not a directory, when a different unit is at the path and
 * `force` is not set, or when the unit's directory does not exist (no systemd?).
 */
export async function installService(options: InstallServiceOptions): Promise<string> {
  const dir = resolve(options.dir);
  const info = await Deno.stat(dir).catch(() => undefined);
  if (!info?.isDirectory) {
    throw new Error(
      `${dir} is not a directory: run "vpn init --dir ${dir}" first (the unit makes only it writable)`,
    );
  }
  const unitPath = resolve(options.unitPath ?? defaultUnitPath(dir));
  const name = basename(unitPath);
  checkUnitName(name, unitPath);
  const text = serviceUnit({ dir, exec: options.exec, controlSocket: await socketOf(dir) });
  const old = await Deno.readTextFile(unitPath).catch((error) => {
    if (error instanceof Deno.errors.NotFound) return undefined;
    throw error;
  });
  if (old !== undefined && old !== text && !options.force) {
    throw new Error(
      `${unitPath} exists and is a different unit; look at it, then add --force to replace it`,
    );
  }
  if (old !== text) {
    const unitDir = dirname(unitPath);
    if (!(await Deno.stat(unitDir).catch(() => undefined))?.isDirectory) {
      throw new Error(`${unitDir} does not exist: is this a systemd host? Else pass --unit PATH`);
    }
    await writeFileAtomic(unitPath, text, 0o644);
  }
  const enable = UNIT_SEARCH_DIRS.includes(dirname(unitPath)) ? name : unitPath;
  return [
    old === text ? `${unitPath} is already this unit.` : `Wrote ${unitPath}.`,
    "Start it now and at every boot:",
    `  systemctl daemon-reload && systemctl enable --now ${shellWord(enable)}`,
    "Its log:",
    `  journalctl -u ${shellWord(name)} -f`,
  ].join("\n");
}

/**
 * Where {@linkcode installService} writes the unit of absolute PKI directory `dir` by default:
 * /etc/systemd/system/vpn.service for /etc/vpn, else vpn@NAME.service, NAME the directory's
 * name with what a unit name cannot hold as `\xNN` (`/srv/my vpn` → `vpn@my\x20vpn.service`).
 */
export function defaultUnitPath(dir: string): string {
  dir = absoluteDir(dir);
  const name = dir === DEFAULT_DIR ? "vpn.service" : `vpn@${unitEscape(basename(dir))}.service`;
  return `${SYSTEM_UNIT_DIR}/${name}`;
}

/** The control socket of DIR's server.yaml, or undefined for the default (or no server.yaml). */
async function socketOf(dir: string): Promise<string | undefined> {
  const path = `${dir}/server.yaml`;
  try {
    await Deno.stat(path);
  } catch {
    return undefined;
  }
  return controlSocketPath(await loadServerConfig(path), dir);
}

/**
 * `name` as a unit name's instance: the characters systemd allows there (letters, digits,
 * `:`, `_`, `.`, `-`) as they are, every other byte of its UTF-8 as `\xNN`, as
 * `systemd-escape` does (which also escapes `-`, needlessly outside paths).
 */
function unitEscape(name: string): string {
  let out = "";
  for (const byte of new TextEncoder().encode(name)) {
    const char = String.fromCharCode(byte);
    out += /[A-Za-z0-9:_.-]/.test(char) ? char : `\\x${byte.toString(16).padStart(2, "0")}`;
  }
  return out;
}

/** Refuses a file name systemd would not load as a service unit. */
function checkUnitName(name: string, path: string): void {
  const fix = "name it like vpn.service or vpn@NAME.service";
  if (!/^[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\-]+)?\.service$/.test(name)) {
    throw new TypeError(`--unit ${path}: not a service unit name systemd accepts; ${fix}`);
  }
  if (name.length > MAX_UNIT_NAME) {
    throw new TypeError(`--unit ${path}: longer than systemd's ${MAX_UNIT_NAME} characters`);
  }
}

/** `dir` made canonical (no trailing slash, no `..`); it must be absolute. */
function absoluteDir(dir: string): string {
  checkText("dir", dir);
  if (!isAbsolute(dir)) throw new TypeError(`dir: must be an absolute path, not "${dir}"`);
  const canonical = normalize(dir).replace(/(.)\/+$/, "$1");
  if (canonical === "/") throw new TypeError('dir: "/" cannot be the PKI directory');
  return canonical;
}

/** Refuses control characters: a unit file line cannot hold a newline in these settings. */
function checkText(option: string, text: string): void {
  if (/\p{Cc}/u.test(text)) {
    throw new TypeError(`${option}: ${JSON.stringify(text)} has a control character`);
  }
}

/** Whether `path` is `tree` or inside it. */
function isUnder(path: string, tree: string): boolean {
  return path === tree || path.startsWith(`${tree}/`);
}

/** `%` doubled: systemd expands `%x` specifiers in most settings. */
function specifiers(text: string): string {
  return text.replaceAll("%", "%%");
}

/** One path of a path list (ReadWritePaths=): double-quoted, `\` and `"` escaped. */
function pathWord(path: string): string {
  return `"${specifiers(path.replace(/[\\"]/g, "\\$&"))}"`;
}

/**
 * An argument of ExecStart=: as a path, and `$` doubled, since systemd expands `$NAME` in
 * arguments (not in the program's path).
 */
function argumentWord(word: string): string {
  return pathWord(word).replaceAll("$", "$$$$");
}

/** `word` for a POSIX shell: as it is when plain, else single-quoted. */
function shellWord(word: string): string {
  return /^[A-Za-z0-9@%+=:,./_-]+$/.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`;
}
