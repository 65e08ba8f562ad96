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
  connect,
  DEFAULT_DIR,
  exitCodeOf,
  init,
  serve,
  UsageError,
} from "./mod/commands.ts";
import type { LogLevel } from "./mod/log.ts";
import { type Proto, PROTOS } from "./mod/config.ts";
import { UDP_CIPHERS, type UdpCipher } from "./mod/messages.ts";
import { VERSION } from "./mod/version.ts";

const HELP = `vpn ${VERSION}: an SSL VPN with a TUN device on each side

Usage: vpn <command> [options]

Commands:
  serve [--dir DIR] [--config FILE]
        run the server; creates a PKI in DIR first if there is none
  init [--dir DIR] [--host NAME_OR_IP]... [--subnet CIDR] [--port N] [--force]
        create a CA, a server certificate and DIR/server.yaml
  client add NAME [--dir DIR] [--remote HOST:PORT] [--out FILE]
        issue a client certificate into one profile file (default ./NAME.yaml)
  client revoke NAME [--dir DIR]
        revoke a client; a running server drops it within seconds
  client list [--dir DIR]
        list issued clients: name, serial, status, expiry
  connect [HOST[:PORT]] --profile FILE [--dev NAME] [--proto auto|udp|tcp] [--no-offload]
          [--cipher aes-256-gcm|chacha20-poly1305]
        join a server; HOST:PORT overrides the profile's remote; --proto how data
        travels: auto (UDP when it works, else TLS; the default), udp (or fail), tcp;
        --no-offload: plain packets on the TUN, no segmentation offload;
        --cipher: the only AEAD to offer for UDP (default both, AES-256-GCM first)
  version
        print the version

Options:
  --dir DIR        PKI and server.yaml directory (default ${DEFAULT_DIR})
  -v, --verbose    log debug messages
  -q, --quiet      log errors only
  -h, --help       print this help

Exit codes: 0 done, 1 runtime failure, 2 usage or configuration error.
`;

const LOGGING = {
  verbose: { type: "boolean", short: "v" },
  quiet: { type: "boolean", short: "q" },
} as const satisfies ParseArgsConfig["options"];

const DIR = {
  dir: { type: "string", default: DEFAULT_DIR },
} as const satisfies ParseArgsConfig["options"];

function parse<T extends NonNullable<ParseArgsConfig["options"]>>(args: string[], options: T) {
  try {
    return parseArgs({ args, options, allowPositionals: true, strict: true });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
}

function level(values: { verbose?: boolean; quiet?: boolean }): LogLevel | undefined {
  if (values.verbose) return "debug";
  if (values.quiet) return "error";
  return undefined;
}

function positionals(list: string[], count: number, usage: string): string[] {
  if (list.length !== count) throw new UsageError(`usage: ${usage}`);
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

async function run(command: string, rest: string[]): Promise<number> {
  switch (command) {
    case "serve": {
      const { values, positionals: extra } = parse(rest, {
        ...DIR,
        ...LOGGING,
        config: { type: "string" },
      });
      positionals(extra, 0, "vpn serve [--dir DIR] [--config FILE]");
      const options = { dir: values.dir, ...(values.config ? { config: values.config } : {}) };
      const logLevel = level(values);
      return await serve(logLevel ? { ...options, level: logLevel } : options);
    }
    case "init": {
      const { values, positionals: extra } = parse(rest, {
        ...DIR,
        host: { type: "string", multiple: true },
        subnet: { type: "string" },
        port: { type: "string" },
        force: { type: "boolean", default: false },
      });
      positionals(
        extra,
        0,
        "vpn init [--dir DIR] [--host NAME_OR_IP]... [--subnet CIDR] [--port N] [--force]",
      );
      const listenPort = port(values.port);
      return await init({
        dir: values.dir,
        hosts: values.host ?? [],
        force: values.force,
        ...(values.subnet ? { subnet: values.subnet } : {}),
        ...(listenPort ? { port: listenPort } : {}),
      });
    }
    case "client": {
      const [action, ...args] = rest;
      if (action === "add") {
        const { values, positionals: names } = parse(args, {
          ...DIR,
          remote: { type: "string" },
          out: { type: "string" },
        });
        const [name] = positionals(
          names,
          1,
          "vpn client add NAME [--dir DIR] [--remote HOST:PORT] [--out FILE]",
        );
        return await clientAdd({
          name: name!,
          dir: values.dir,
          ...(values.remote ? { remote: values.remote } : {}),
          ...(values.out ? { out: values.out } : {}),
        });
      }
      if (action === "revoke") {
        const { values, positionals: names } = parse(args, DIR);
        const [name] = positionals(names, 1, "vpn client revoke NAME [--dir DIR]");
        return await clientRevoke({ name: name!, dir: values.dir });
      }
      if (action === "list") {
        const { values, positionals: extra } = parse(args, DIR);
        positionals(extra, 0, "vpn client list [--dir DIR]");
        return await clientList({ dir: values.dir });
      }
      throw new UsageError(`unknown "client" action "${action ?? ""}"; use add, revoke or list`);
    }
    case "connect": {
      const { values, positionals: remote } = parse(rest, {
        ...LOGGING,
        profile: { type: "string" },
        dev: { type: "string" },
        proto: { type: "string" },
        "no-offload": { type: "boolean", default: false },
        cipher: { type: "string" },
      });
      if (remote.length > 1 || values.profile === undefined) {
        throw new UsageError(
          "usage: vpn connect [HOST[:PORT]] --profile FILE [--dev NAME] [--proto auto|udp|tcp]",
        );
      }
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
        ...(logLevel ? { level: logLevel } : {}),
      });
    }
    case "version":
    case "--version":
      positionals(rest, 0, "vpn version");
      console.log(`vpn ${VERSION} (deno ${Deno.version.deno})`);
      return 0;
    default:
      throw new UsageError(`unknown command "${command}"\n\n${HELP}`);
  }
}

/** Runs the command line `args` and returns the exit code. */
export async function main(args: string[]): Promise<number> {
  const [command, ...rest] = args;
  if (command === undefined || command === "help" || command === "-h" || command === "--help") {
    console.log(HELP);
    return 0;
  }
  try {
    return await run(command, rest);
  } catch (error) {
    return exitCodeOf(error);
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
