/**
 * The `vpn` command line: parses arguments and calls into `mod/`; nothing else.
 *
 * Exit codes: 0 done, 1 runtime failure, 2 usage or configuration error.
 *
 * @module
 */

import { parseArgs, type ParseArgsConfig } from "node:util";
import {
  clientAdd,
  clientList,
  clientRevoke,
  clientSet,
  connect,
  DEFAULT_DIR,
  exitCodeOf,
  init,
  OVPN_PROTOS,
  type OvpnProto,
  serve,
  serviceInstall,
} from "./mod/commands.ts";
import { UsageError } from "./mod/usage_error.ts";
import { clientKill, reload, status } from "./mod/control/cli.ts";
import { CLIENT_FORMATS, type ClientFormat } from "./mod/pki.ts";
import type { LogLevel } from "./mod/log.ts";
import { type Proto, PROTOS } from "./mod/config.ts";
import { UDP_CIPHERS, type UdpCipher } from "./mod/native/messages.ts";
import { VERSION } from "./mod/version.ts";

/** One command (or `client` action): its usage line, its help, and what runs it. */
interface Command {
  usage: string;
  help: string;
  run(args: string[]): Promise<number>;
}

const LOGGING_HELP = `  -v, --verbose    log debug messages
  -q, --quiet      log errors only`;
const DIR_HELP = `  --dir DIR        the PKI and server.yaml directory (default ${DEFAULT_DIR})`;
const HELP_HELP = "  -h, --help       print this help";

const LOGGING = {
  verbose: { type: "boolean", short: "v" },
  quiet: { type: "boolean", short: "q" },
} as const satisfies ParseArgsConfig["options"];

const DIR = { dir: { type: "string" } } as const satisfies ParseArgsConfig["options"];

const HELP_OPTION = { help: { type: "boolean", short: "h" } } as const satisfies ParseArgsConfig[
  "options"
];

/**
 * Parses `args` for `command`; `undefined` when `--help` was asked for (the help is printed).
 * Parser errors become a {@linkcode UsageError} that names the option and shows the usage.
 */
function parse<T extends NonNullable<ParseArgsConfig["options"]>>(
  command: Command,
  args: string[],
  options: T,
) {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: { ...options, ...HELP_OPTION },
      allowPositionals: true,
      strict: true,
    });
  } catch (error) {
    throw usageError(command, parserMessage(error as Error & { code?: string }));
  }
  if ((parsed.values as { help?: boolean }).help) {
    console.log(command.help);
    return undefined;
  }
  return parsed;
}

/** node:util's messages, reworded: they quote unevenly and suggest `--` for a typo. */
function parserMessage(error: Error & { code?: string }): string {
  const option = /'([^' ]+)/.exec(error.message)?.[1] ?? "";
  switch (error.code) {
    case "ERR_PARSE_ARGS_UNKNOWN_OPTION":
      return `unknown option ${option}`;
    case "ERR_PARSE_ARGS_INVALID_OPTION_VALUE":
      return /argument missing/.test(error.message)
        ? `${option} needs a value`
        : `${option} takes no value`;
    default:
      return error.message;
  }
}

function usageError(command: Command, message: string): UsageError {
  const name = command.usage.split(" [")[0]!.replace(/ NAME$/, "");
  return new UsageError(
    `${message}\nusage: ${command.usage}\n(${name} --help explains each option)`,
  );
}

function level(values: { verbose?: boolean; quiet?: boolean }): LogLevel | undefined {
  if (values.verbose) return "debug";
  if (values.quiet) return "error";
  return undefined;
}

function positionals(command: Command, list: string[], count: number): string[] {
  if (list.length !== count) {
    const what = list.length > count
      ? `unexpected argument "${list[count]}"`
      : "missing argument NAME";
    throw usageError(command, what);
  }
  return list;
}

function port(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const value = Number(text);
  if (!/^\d+$/.test(text) || value < 1 || value > 65535) {
    throw new UsageError(`--port ${text}: must be a whole number from 1 to 65535`);
  }
  return value;
}

const SERVE: Command = {
  usage: "vpn serve [--dir DIR] [--config FILE] [-v|-q]",
  help: `Usage: vpn serve [--dir DIR] [--config FILE] [-v|-q]

Runs the server in the foreground until SIGINT or SIGTERM.

Options:
  --dir DIR        the PKI: ca.crt, server.crt, server.key, clients.json, tls-crypt.key
                   (default: the directory of --config, else ${DEFAULT_DIR})
  --config FILE    the server configuration (default DIR/server.yaml)
${LOGGING_HELP}
${HELP_HELP}

On its first run with no PKI in ${DEFAULT_DIR}, it creates one as "vpn init" does and says so.
Any other directory without a PKI is refused: run "vpn init --dir DIR" first. A PKI made
before OpenVPN support gets its tls-crypt.key here.`,
  async run(args) {
    const parsed = parse(SERVE, args, { ...DIR, ...LOGGING, config: { type: "string" } });
    if (parsed === undefined) return 0;
    const { values, positionals: extra } = parsed;
    positionals(SERVE, extra, 0);
    const logLevel = level(values);
    return await serve({
      ...(values.dir ? { dir: values.dir } : {}),
      ...(values.config ? { config: values.config } : {}),
      ...(logLevel ? { level: logLevel } : {}),
    });
  },
};

const INIT: Command = {
  usage: "vpn init [--dir DIR] [--host NAME_OR_IP]... [--subnet CIDR] [--subnet6 CIDR|none] " +
    "[--port N] [--force]",
  help: `Usage: vpn init [--dir DIR] [--host NAME_OR_IP]... [--subnet CIDR]
         [--subnet6 CIDR|none] [--port N] [--force]

Creates DIR (mode 0700) with a CA, a server certificate, their private keys (0600), the
tls-crypt key of OpenVPN profiles (tls-crypt.key, 0600), an empty client registry and
server.yaml with every default written out. An existing server.yaml is kept.

Options:
${DIR_HELP}
  --host NAME_OR_IP  a name or address clients dial, repeatable; the first is the one
                   "vpn client add" writes into profiles (default: this machine's name and
                   addresses, public ones first)
  --subnet CIDR    the VPN's IPv4 subnet (default 10.8.0.0/24)
  --subnet6 CIDR   the VPN's IPv6 subnet, /64 to /120, or none for IPv4 only (default a
                   random unique local /64, fdXX:XXXX:XXXX:XXXX::/64)
  --port N         the port to listen on (default 1194); OpenVPN clients over TCP get
                   N+1 (openvpn.tcp_port)
  --force          replace an existing PKI (every client profile issued from it stops
                   working) and server.yaml
${HELP_HELP}`,
  async run(args) {
    const parsed = parse(INIT, args, {
      ...DIR,
      host: { type: "string", multiple: true },
      subnet: { type: "string" },
      subnet6: { type: "string" },
      port: { type: "string" },
      force: { type: "boolean", default: false },
    });
    if (parsed === undefined) return 0;
    const { values, positionals: extra } = parsed;
    positionals(INIT, extra, 0);
    const listenPort = port(values.port);
    return await init({
      dir: values.dir ?? DEFAULT_DIR,
      hosts: values.host ?? [],
      force: values.force,
      ...(values.subnet ? { subnet: values.subnet } : {}),
      ...(values.subnet6 ? { subnet6: values.subnet6 } : {}),
      ...(listenPort ? { port: listenPort } : {}),
    });
  },
};

const CLIENT_ADD_USAGE = "vpn client add NAME [--dir DIR] [--format vpn|ovpn] " +
  "[--proto udp|tcp] [--remote HOST:PORT] [--out FILE]";

const CLIENT_ADD: Command = {
  usage: CLIENT_ADD_USAGE,
  help: `Usage: vpn client add NAME [--dir DIR] [--format vpn|ovpn] [--proto udp|tcp]
         [--remote HOST:PORT] [--out FILE]

Issues a client certificate and writes one self-contained profile (remote, CA, certificate
and private key), mode 0600. Copy it to the client: vpn connect --profile FILE; or, with
--format ovpn, import it into OpenVPN 2.6+ or OpenVPN Connect (openvpn --config FILE).

Options:
${DIR_HELP}
  --format F       vpn: a profile for "vpn connect" (NAME.yaml, the default); ovpn: an
                   OpenVPN profile (NAME.ovpn) with the tls-crypt key and the data cipher
  --proto P        for --format ovpn: udp (the default; to listen.port) or tcp (to
                   openvpn.tcp_port); server.yaml must have openvpn.udp or openvpn.tcp on
  --remote HOST:PORT  where the client connects (default: the server certificate's first
                   public name and the port of DIR/server.yaml for the transport)
  --out FILE       where to write the profile (default ./NAME.yaml or ./NAME.ovpn)
${HELP_HELP}`,
  async run(args) {
    const parsed = parse(CLIENT_ADD, args, {
      ...DIR,
      format: { type: "string" },
      proto: { type: "string" },
      remote: { type: "string" },
      out: { type: "string" },
    });
    if (parsed === undefined) return 0;
    const { values, positionals: names } = parsed;
    const [name] = positionals(CLIENT_ADD, names, 1);
    const { format, proto } = values;
    if (format !== undefined && !CLIENT_FORMATS.includes(format as ClientFormat)) {
      throw usageError(CLIENT_ADD, `--format ${format}: must be ${CLIENT_FORMATS.join(" or ")}`);
    }
    if (proto !== undefined && !OVPN_PROTOS.includes(proto as OvpnProto)) {
      throw usageError(CLIENT_ADD, `--proto ${proto}: must be ${OVPN_PROTOS.join(" or ")}`);
    }
    return await clientAdd({
      name: name!,
      dir: values.dir ?? DEFAULT_DIR,
      ...(format ? { format: format as ClientFormat } : {}),
      ...(proto ? { proto: proto as OvpnProto } : {}),
      ...(values.remote ? { remote: values.remote } : {}),
      ...(values.out ? { out: values.out } : {}),
    });
  },
};

const CLIENT_REVOKE: Command = {
  usage: "vpn client revoke NAME [--dir DIR]",
  help: `Usage: vpn client revoke NAME [--dir DIR]
       vpn client revoke --serial HEX [--dir DIR]

Revokes the client's certificate; a running server drops its session within 5 s and refuses
it from then on.

Options:
${DIR_HELP}
  --serial HEX     revoke the certificate with this serial (as "vpn client list" shows it)
                   instead of the one called NAME
${HELP_HELP}`,
  async run(args) {
    const parsed = parse(CLIENT_REVOKE, args, { ...DIR, serial: { type: "string" } });
    if (parsed === undefined) return 0;
    const dir = parsed.values.dir ?? DEFAULT_DIR;
    const { serial } = parsed.values;
    if (serial === undefined) {
      const [name] = positionals(CLIENT_REVOKE, parsed.positionals, 1);
      return await clientRevoke({ name: name!, dir });
    }
    positionals(CLIENT_REVOKE, parsed.positionals, 0);
    if (!/^[0-9a-f]{1,40}$/i.test(serial)) {
      throw usageError(CLIENT_REVOKE, `--serial ${serial}: must be the serial in hex`);
    }
    return await clientRevoke({ serial, dir });
  },
};

const CLIENT_LIST: Command = {
  usage: "vpn client list [--dir DIR]",
  help: `Usage: vpn client list [--dir DIR]

Lists every client issued: name, serial, status (valid, revoked, expired), expiry, the
format of its profile (vpn or ovpn), and what "vpn client set" gave it: ADDRESS (its fixed
addresses), ROUTES (the networks behind it) and FULL-TUNNEL (yes, no, or - for the server's
push.redirect_gateway).

Options:
${DIR_HELP}
${HELP_HELP}`,
  async run(args) {
    const parsed = parse(CLIENT_LIST, args, DIR);
    if (parsed === undefined) return 0;
    positionals(CLIENT_LIST, parsed.positionals, 0);
    return await clientList({ dir: parsed.values.dir ?? DEFAULT_DIR });
  },
};

const CLIENT_SET_USAGE = "vpn client set NAME [--address A|--no-address] " +
  "[--address6 A6|--no-address6] [--route CIDR]... [--no-routes] " +
  "[--redirect-gateway|--no-redirect-gateway|--default-redirect-gateway] [--dir DIR]";

const CLIENT_SET: Command = {
  usage: CLIENT_SET_USAGE,
  help: `Usage: vpn client set NAME [--address A|--no-address] [--address6 A6|--no-address6]
         [--route CIDR]... [--no-routes]
         [--redirect-gateway|--no-redirect-gateway|--default-redirect-gateway] [--dir DIR]

Changes what the server gives one client, recorded in DIR/clients.json; an option left out
leaves that setting as it is. Each value is checked against DIR/server.yaml (subnet,
subnet6) and the other clients. A running server applies it at the client's next connection.

Options:
  --address A      a fixed IPv4 address inside subnet, never given to another client
  --no-address     an address from the pool again
  --address6 A6    a fixed IPv6 address inside subnet6. Host numbers 2 to N follow the IPv4
                   addresses (10.8.0.50 gets ::32, host number 50 in hex), so take the one
                   of this client's --address, or a host number above them
  --no-address6    the IPv6 address that follows the IPv4 one again
  --route CIDR     a network behind this client (a branch LAN), repeatable; the list given
                   replaces the recorded one. The server routes it to this client, takes it
                   as this client's source, and pushes it to the others when
                   client_to_client is on (at most 64; IPv6 needs subnet6)
  --no-routes      no networks behind this client
  --redirect-gateway     send all of this client's traffic through the VPN (full tunnel)
  --no-redirect-gateway  only the VPN's networks and the pushed routes
  --default-redirect-gateway  as push.redirect_gateway in server.yaml says
${DIR_HELP}
${HELP_HELP}`,
  async run(args) {
    const parsed = parse(CLIENT_SET, args, {
      ...DIR,
      address: { type: "string" },
      "no-address": { type: "boolean", default: false },
      address6: { type: "string" },
      "no-address6": { type: "boolean", default: false },
      route: { type: "string", multiple: true },
      "no-routes": { type: "boolean", default: false },
      "redirect-gateway": { type: "boolean", default: false },
      "no-redirect-gateway": { type: "boolean", default: false },
      "default-redirect-gateway": { type: "boolean", default: false },
    });
    if (parsed === undefined) return 0;
    const { values, positionals: names } = parsed;
    const [name] = positionals(CLIENT_SET, names, 1);
    const one = <T>(choices: [string, boolean, T][]): T | undefined => {
      const given = choices.filter(([, on]) => on);
      if (given.length > 1) {
        throw usageError(CLIENT_SET, `${given.map(([flag]) => flag).join(" and ")}: give one`);
      }
      return given[0]?.[2];
    };
    const address = one<string | null>([
      ["--address", values.address !== undefined, values.address ?? null],
      ["--no-address", values["no-address"], null],
    ]);
    const address6 = one<string | null>([
      ["--address6", values.address6 !== undefined, values.address6 ?? null],
      ["--no-address6", values["no-address6"], null],
    ]);
    const routes = one<string[]>([
      ["--route", values.route !== undefined, values.route ?? []],
      ["--no-routes", values["no-routes"], []],
    ]);
    const redirectGateway = one<boolean | null>([
      ["--redirect-gateway", values["redirect-gateway"], true],
      ["--no-redirect-gateway", values["no-redirect-gateway"], false],
      ["--default-redirect-gateway", values["default-redirect-gateway"], null],
    ]);
    if ([address, address6, routes, redirectGateway].every((v) => v === undefined)) {
      throw usageError(CLIENT_SET, "nothing to set: give at least one option");
    }
    return await clientSet({
      name: name!,
      dir: values.dir ?? DEFAULT_DIR,
      ...(address !== undefined ? { address } : {}),
      ...(address6 !== undefined ? { address6 } : {}),
      ...(routes !== undefined ? { routes } : {}),
      ...(redirectGateway !== undefined ? { redirectGateway } : {}),
    });
  },
};

const CLIENT_KILL: Command = {
  usage: "vpn client kill NAME [--dir DIR]",
  help: `Usage: vpn client kill NAME [--dir DIR]

Ends NAME's session on the running server without revoking it, as a restart of the server
would: the client is told to reconnect, and its address is free until it does. Says whether
the client will reconnect; "vpn client revoke NAME" keeps it out for good.

Options:
${DIR_HELP}
${HELP_HELP}`,
  async run(args) {
    const parsed = parse(CLIENT_KILL, args, DIR);
    if (parsed === undefined) return 0;
    const [name] = positionals(CLIENT_KILL, parsed.positionals, 1);
    return await clientKill({ name: name!, dir: parsed.values.dir ?? DEFAULT_DIR });
  },
};

const CLIENT_ACTIONS: Record<string, Command> = {
  add: CLIENT_ADD,
  revoke: CLIENT_REVOKE,
  list: CLIENT_LIST,
  set: CLIENT_SET,
  kill: CLIENT_KILL,
};

/** The client actions, a line of usage and one of what each does, in both helps that list them. */
const CLIENT_ACTIONS_HELP =
  `  vpn client add NAME [--dir DIR] [--format vpn|ovpn] [--proto udp|tcp] [--remote HOST:PORT]
          [--out FILE]
        issue a client certificate into one profile file (./NAME.yaml, or an OpenVPN
        ./NAME.ovpn with --format ovpn)
  ${CLIENT_REVOKE.usage}
        revoke a client; a running server drops it within seconds
  ${CLIENT_LIST.usage}
        list issued clients: name, serial, status, expiry, format, settings
  vpn client set NAME [--address A|--no-address] [--address6 A6|--no-address6]
          [--route CIDR]... [--no-routes] [--redirect-gateway|--no-redirect-gateway|
          --default-redirect-gateway] [--dir DIR]
        give one client a fixed address, networks behind it, or its own full-tunnel choice
  ${CLIENT_KILL.usage}
        end a client's session on the running server (it reconnects)`;

const CLIENT: Command = {
  usage: "vpn client add|revoke|list|set|kill ...",
  help: `Usage: vpn client add|revoke|list|set|kill ...

${CLIENT_ACTIONS_HELP}

"vpn client ACTION --help" explains each option.`,
  run(args) {
    const [action, ...rest] = args;
    if (action === "-h" || action === "--help") {
      console.log(CLIENT.help);
      return Promise.resolve(0);
    }
    const command = CLIENT_ACTIONS[action ?? ""];
    if (command === undefined) {
      throw new UsageError(
        `unknown "client" action "${action ?? ""}"; use add, revoke, list, set or kill\n\n` +
          CLIENT.help,
      );
    }
    return command.run(rest);
  },
};

const CONNECT_USAGE = "vpn connect [HOST[:PORT]] --profile FILE [--dev NAME] " +
  "[--proto auto|udp|tcp] [--no-offload] [--cipher aes-256-gcm|chacha20-poly1305] [--no-dns] " +
  "[--user NAME] [-v|-q]";

const CONNECT: Command = {
  usage: CONNECT_USAGE,
  help: `Usage: vpn connect [HOST[:PORT]] --profile FILE [--dev NAME] [--proto auto|udp|tcp]
         [--no-offload] [--cipher aes-256-gcm|chacha20-poly1305] [--no-dns] [--user NAME]
         [-v|-q]

Joins a server and keeps the tunnel up (reconnecting after any loss) until SIGINT or SIGTERM.

Options:
  HOST[:PORT]      where to connect, instead of the profile's remote
  --profile FILE   the profile "vpn client add" wrote (required)
  --dev NAME       the TUN's name or pattern (default: the profile's dev, vpn%d)
  --proto P        how data travels: auto (UDP when it works, else TLS; the default),
                   udp (or fail), tcp (TLS only)
  --no-offload     plain packets on the TUN, no segmentation offload
  --cipher C       the only AEAD to offer for UDP, aes-256-gcm or chacha20-poly1305
                   (default both, AES-256-GCM first)
  --no-dns         keep this machine's DNS settings, ignoring the DNS servers and domains
                   the server pushes
  --user NAME      started as root, run as NAME once connected, keeping CAP_NET_ADMIN
                   alone (default nobody; root keeps every privilege). Not done when the
                   client changed DNS or routes outside its TUN: it puts them back at exit
${LOGGING_HELP}
${HELP_HELP}`,
  async run(args) {
    const parsed = parse(CONNECT, args, {
      ...LOGGING,
      profile: { type: "string" },
      dev: { type: "string" },
      proto: { type: "string" },
      "no-offload": { type: "boolean", default: false },
      cipher: { type: "string" },
      "no-dns": { type: "boolean", default: false },
      user: { type: "string" },
    });
    if (parsed === undefined) return 0;
    const { values, positionals: remote } = parsed;
    if (remote.length > 1) throw usageError(CONNECT, `unexpected argument "${remote[1]}"`);
    if (values.profile === undefined) throw usageError(CONNECT, "--profile FILE is required");
    const cipher = values.cipher;
    if (cipher !== undefined && !(UDP_CIPHERS as readonly string[]).includes(cipher)) {
      throw new UsageError(`--cipher ${cipher}: must be ${UDP_CIPHERS.join(" or ")}`);
    }
    const proto = values.proto;
    if (proto !== undefined && !PROTOS.includes(proto as Proto)) {
      throw new UsageError(`--proto ${proto}: must be auto, udp or tcp`);
    }
    const logLevel = level(values);
    return await connect({
      profile: values.profile,
      ...(remote[0] ? { remote: remote[0] } : {}),
      ...(values.dev ? { dev: values.dev } : {}),
      ...(proto ? { proto: proto as Proto } : {}),
      ...(values["no-offload"] ? { offload: false } : {}),
      ...(cipher ? { cipher: cipher as UdpCipher } : {}),
      ...(values["no-dns"] ? { dns: false } : {}),
      ...(values.user ? { user: values.user } : {}),
      ...(logLevel ? { level: logLevel } : {}),
    });
  },
};

const STATUS: Command = {
  usage: "vpn status [--json] [--dir DIR]",
  help: `Usage: vpn status [--json] [--dir DIR]

Asks the running server of DIR, through its control socket (control.socket in
DIR/server.yaml, default /run/vpn/NAME.sock), how it is: version, uptime, listeners, subnets
and counters, then one row per session: name, protocol, cipher, real address, VPN addresses,
connected since, last heard, traffic in and out (bytes/packets, in = from the client) and
packets dropped for it. Only the user who runs the server and root may ask.

Options:
  --json           print the whole status as JSON (PROTOCOL.md, Control socket)
${DIR_HELP}
${HELP_HELP}`,
  async run(args) {
    const parsed = parse(STATUS, args, { ...DIR, json: { type: "boolean", default: false } });
    if (parsed === undefined) return 0;
    positionals(STATUS, parsed.positionals, 0);
    return await status({ dir: parsed.values.dir ?? DEFAULT_DIR, json: parsed.values.json });
  },
};

const RELOAD: Command = {
  usage: "vpn reload [--dir DIR]",
  help: `Usage: vpn reload [--dir DIR]

Makes the running server of DIR read DIR/server.yaml and the client registry again, and
prints what it applied (pushed options, keepalive, client_to_client, lease_time, log.level:
for sessions from now on) and what needs a restart of vpn serve (listen, subnet, ...).
A server.yaml with an error changes nothing and is reported.

Options:
${DIR_HELP}
${HELP_HELP}`,
  async run(args) {
    const parsed = parse(RELOAD, args, DIR);
    if (parsed === undefined) return 0;
    positionals(RELOAD, parsed.positionals, 0);
    return await reload({ dir: parsed.values.dir ?? DEFAULT_DIR });
  },
};

const SERVICE_INSTALL: Command = {
  usage: "vpn service install [--dir DIR] [--unit PATH] [--force]",
  help: `Usage: vpn service install [--dir DIR] [--unit PATH] [--force]

Writes a systemd unit that runs "vpn serve --dir DIR" as this vpn (the compiled binary, or
deno on this main.ts), with only the capabilities and paths a VPN server needs, and prints
the commands that start it and show its log. "systemctl reload" runs "vpn reload".

Options:
${DIR_HELP}
  --unit PATH      where to write the unit (default /etc/systemd/system/vpn.service for
                   ${DEFAULT_DIR}, else /etc/systemd/system/vpn@NAME.service, NAME the
                   directory's name)
  --force          replace a different unit already at PATH
${HELP_HELP}`,
  async run(args) {
    const parsed = parse(SERVICE_INSTALL, args, {
      ...DIR,
      unit: { type: "string" },
      force: { type: "boolean", default: false },
    });
    if (parsed === undefined) return 0;
    positionals(SERVICE_INSTALL, parsed.positionals, 0);
    return await serviceInstall({
      dir: parsed.values.dir ?? DEFAULT_DIR,
      force: parsed.values.force,
      ...(parsed.values.unit ? { unit: parsed.values.unit } : {}),
    });
  },
};

const SERVICE: Command = {
  usage: "vpn service install ...",
  help: `Usage: vpn service install [--dir DIR] [--unit PATH] [--force]

  ${SERVICE_INSTALL.usage}
        write a systemd unit that runs the server of DIR

"vpn service install --help" explains each option.`,
  run(args) {
    const [action, ...rest] = args;
    if (action === "-h" || action === "--help") {
      console.log(SERVICE.help);
      return Promise.resolve(0);
    }
    if (action !== "install") {
      throw new UsageError(
        `unknown "service" action "${action ?? ""}"; use install\n\n${SERVICE.help}`,
      );
    }
    return SERVICE_INSTALL.run(rest);
  },
};

const VERSION_COMMAND: Command = {
  usage: "vpn version",
  help: "Usage: vpn version\n\nPrints the version of vpn and of the Deno it runs on.",
  run(args) {
    const parsed = parse(VERSION_COMMAND, args, {});
    if (parsed === undefined) return Promise.resolve(0);
    positionals(VERSION_COMMAND, parsed.positionals, 0);
    console.log(`vpn ${VERSION} (deno ${Deno.version.deno})`);
    return Promise.resolve(0);
  },
};

const COMMANDS: Record<string, Command> = {
  serve: SERVE,
  init: INIT,
  client: CLIENT,
  connect: CONNECT,
  status: STATUS,
  reload: RELOAD,
  service: SERVICE,
  version: VERSION_COMMAND,
  "--version": VERSION_COMMAND,
};

const HELP = `vpn ${VERSION}: an SSL VPN with a TUN device on each side

Usage: vpn <command> [options]

Commands:
  ${SERVE.usage}
        run the server; on its first run creates a PKI in ${DEFAULT_DIR}
  vpn init [--dir DIR] [--host NAME_OR_IP]... [--subnet CIDR] [--subnet6 CIDR|none] [--port N]
          [--force]
        create a CA, a server certificate and DIR/server.yaml
${CLIENT_ACTIONS_HELP}
  vpn connect [HOST[:PORT]] --profile FILE [--dev NAME] [--proto auto|udp|tcp] [--no-offload]
          [--cipher aes-256-gcm|chacha20-poly1305] [--no-dns] [--user NAME] [-v|-q]
        join a server; HOST:PORT overrides the profile's remote
  ${STATUS.usage}
        show the running server and its sessions
  ${RELOAD.usage}
        make the running server reread server.yaml and the client registry
  ${SERVICE_INSTALL.usage}
        write a systemd unit that runs the server of DIR
  ${VERSION_COMMAND.usage}
        print the version

"vpn COMMAND --help" (or "vpn help COMMAND") explains a command's options.
Relative paths are taken from the directory you run vpn in, also through "deno task vpn".

Exit codes: 0 done, 1 runtime failure, 2 usage or configuration error.`;

/** Runs the command line `args` and returns the exit code. */
export async function main(args: string[]): Promise<number> {
  const [name, ...rest] = args;
  if (name === undefined || name === "-h" || name === "--help") {
    console.log(HELP);
    return 0;
  }
  try {
    if (name === "help") {
      const topic = rest[0] === undefined ? undefined : COMMANDS[rest[0]];
      if (rest[0] !== undefined && topic === undefined) {
        throw new UsageError(`unknown command "${rest[0]}"\n\n${HELP}`);
      }
      const sub = topic === CLIENT && rest[1]
        ? CLIENT_ACTIONS[rest[1]]
        : topic === SERVICE && rest[1] === "install"
        ? SERVICE_INSTALL
        : undefined;
      console.log((sub ?? topic)?.help ?? HELP);
      return 0;
    }
    const command = COMMANDS[name];
    if (command === undefined) throw new UsageError(`unknown command "${name}"\n\n${HELP}`);
    return await command.run(rest);
  } catch (error) {
    return exitCodeOf(error);
  }
}

if (import.meta.main) {
  // `deno task vpn` runs in the repository root; its definition passes the caller's
  // directory here, so that relative paths mean what they mean where the user typed them.
  const caller = Deno.env.get("VPN_CALLER_DIR");
  if (caller) Deno.chdir(caller);
  Deno.exit(await main(Deno.args));
}
