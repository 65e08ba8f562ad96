/**
 * The `vpn` command line: parses arguments and calls into `mod/`; nothing else.
 *
 * Exit codes: 0 done, 1 runtime failure, 2 usage or configuration error.
 *
 * @module
 */

import { VERSION } from "./mod/version.ts";

const HELP = `vpn ${VERSION}: an SSL VPN with a TUN device on each side

Usage: vpn <command> [options]

Commands:
  version               print the version
  help                  print this help

Options:
  -h, --help            print this help
`;

/** Runs the command line `args` and returns the exit code. */
export function main(args: string[]): number {
  const [command, ...rest] = args;
  switch (command) {
    case undefined:
    case "help":
    case "-h":
    case "--help":
      console.log(HELP);
      return 0;
    case "version":
    case "--version":
      console.log(`vpn ${VERSION} (deno ${Deno.version.deno})`);
      return rest.length === 0 ? 0 : usage(`"version" takes no arguments`);
    default:
      return usage(`unknown command "${command}"`);
  }
}

function usage(problem: string): number {
  console.error(`vpn: ${problem}\n\n${HELP}`);
  return 2;
}

if (import.meta.main) Deno.exit(main(Deno.args));
