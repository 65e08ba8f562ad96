/**
 * The checks of `vpn client set`: a client's fixed addresses and the networks behind it,
 * against `server.yaml` and every other client's settings, each refusal naming the option and
 * the fix.
 *
 * @module
 */

import type { ServerConfig } from "./config.ts";
import { type Cidr, formatIPv4, ipv4InCidr, parseCidr, parseIPv4, parseIPv6 } from "./core/ip.ts";
import { randomSubnet6, Subnet6 } from "./core/subnet6.ts";
import { type ClientSettings, MAX_CLIENT_ROUTES } from "./pki.ts";
import { UsageError } from "./usage_error.ts";

export interface ClientSetCommand {
  name: string;
  dir: string;
  address?: string | null;
  address6?: string | null;
  /** Replaces the list; empty for none. */
  routes?: string[];
  redirectGateway?: boolean | null;
}

/**
 * The checks of `vpn client set`, against server.yaml and the other clients' settings, each
 * refusal naming the option and the fix.
 */
export class SettingsCheck {
  readonly #options: ClientSetCommand;
  readonly #config: ServerConfig;
  readonly #subnet: Cidr;
  /** The IPv4 subnet's network address and how many addresses it spans. */
  readonly #network: number;
  readonly #span: number;
  readonly #subnet6: Subnet6 | undefined;
  readonly #yaml: string;

  constructor(options: ClientSetCommand, config: ServerConfig) {
    this.#options = options;
    this.#config = config;
    this.#subnet = parseCidr(config.subnet);
    this.#network = parseIPv4(this.#subnet.network);
    this.#span = 2 ** (32 - this.#subnet.prefix);
    this.#subnet6 = config.subnet6 === "none"
      ? undefined
      : new Subnet6(config.subnet6, this.#subnet.prefix);
    this.#yaml = `${options.dir}/server.yaml`;
  }

  /** The settings after the options, or a {@linkcode UsageError} for the first one refused. */
  apply(current: ClientSettings, others: Map<string, ClientSettings>): ClientSettings {
    const o = this.#options;
    const next: ClientSettings = { ...current, routes: [...current.routes] };
    if (o.address === null) delete next.address;
    if (typeof o.address === "string") next.address = this.#address(o.address, others);
    if (o.address6 === null) delete next.address6;
    if (typeof o.address6 === "string") next.address6 = this.#address6(o.address6, others);
    // A fixed address6 among the mapped ones depends on the address: check it when either moves.
    if (next.address6 !== undefined && (o.address !== undefined || o.address6 !== undefined)) {
      this.#mapped(next, typeof o.address6 === "string");
    }
    if (o.routes !== undefined) next.routes = this.#routes(o.routes, others);
    if (o.redirectGateway === null) delete next.redirectGateway;
    if (typeof o.redirectGateway === "boolean") next.redirectGateway = o.redirectGateway;
    return next;
  }

  #address(text: string, others: Map<string, ClientSettings>): string {
    const first = formatIPv4(this.#network + 2);
    const last = formatIPv4(this.#network + this.#span - 2);
    const range = `use one from ${first} to ${last}`;
    if (text.includes(":")) {
      throw new UsageError(`--address ${text} is an IPv6 address; use --address6 for it`);
    }
    let address;
    try {
      address = parseIPv4(text);
    } catch (error) {
      throw new UsageError(`--address ${text}: ${(error as Error).message}; ${range}`);
    }
    const canonical = formatIPv4(address);
    if (!ipv4InCidr(address, this.#network, this.#subnet.prefix)) {
      throw new UsageError(
        `--address ${text} is outside the VPN subnet ${this.#config.subnet} (${this.#yaml}); ` +
          range,
      );
    }
    const host = address - this.#network;
    const reserved = host === 0
      ? "the subnet's network address"
      : host === this.#span - 1
      ? "the subnet's broadcast address"
      : host === 1
      ? "the server's own address"
      : undefined;
    if (reserved !== undefined) throw new UsageError(`--address ${text} is ${reserved}; ${range}`);
    const holder = [...others].find(([, s]) => s.address === canonical)?.[0];
    if (holder !== undefined) {
      throw new UsageError(
        `--address ${text} is already the fixed address of "${holder}"; choose another, or ` +
          `free it first (vpn client set ${holder} --no-address --dir ${this.#options.dir})`,
      );
    }
    return canonical;
  }

  #address6(text: string, others: Map<string, ClientSettings>): string {
    const subnet6 = this.#subnet6;
    if (subnet6 === undefined) {
      throw new UsageError(
        `--address6 ${text}: the tunnel has no IPv6 (${this.#yaml} has no subnet6); set subnet6 ` +
          `in server.yaml (such as ${randomSubnet6()}) and restart vpn serve, or leave out ` +
          `--address6`,
      );
    }
    const range = `use an address of ${subnet6.subnet} such as ${subnet6.address(0x1000)}`;
    if (!text.includes(":")) {
      throw new UsageError(`--address6 ${text} is not an IPv6 address (--address takes IPv4)`);
    }
    let bytes;
    try {
      bytes = parseIPv6(text);
    } catch (error) {
      throw new UsageError(`--address6 ${text}: ${(error as Error).message}; ${range}`);
    }
    if (!subnet6.contains(text)) {
      throw new UsageError(
        `--address6 ${text} is outside the VPN's subnet6 ${subnet6.subnet} (${this.#yaml}); ` +
          range,
      );
    }
    const host = hostNumber6(bytes, subnet6.prefix);
    if (host === undefined) {
      throw new UsageError(
        `--address6 ${text}: its host number is 2^32 or more, and the server tells IPv6 ` +
          `clients apart by the last 32 bits of their address; ${range}`,
      );
    }
    if (host === 0) {
      throw new UsageError(`--address6 ${text} is the subnet6's network address; ${range}`);
    }
    if (host === 1) {
      throw new UsageError(
        `--address6 ${text} is the server's own address (${subnet6.serverAddress}); ${range}`,
      );
    }
    const canonical = subnet6.address(host);
    const holder = [...others].find(([, s]) => s.address6 === canonical)?.[0];
    if (holder !== undefined) {
      throw new UsageError(
        `--address6 ${text} is already the fixed address6 of "${holder}"; choose another, or ` +
          `free it first (vpn client set ${holder} --no-address6 --dir ${this.#options.dir})`,
      );
    }
    return canonical;
  }

  /**
   * Host numbers 2..N of subnet6 follow the IPv4 addresses (10.8.0.N gets `::N`), so a fixed
   * address6 among them would be the one the server gives whichever client has 10.8.0.N. It
   * is taken only as this client's own: the host number of its fixed IPv4 address.
   */
  #mapped(next: ClientSettings, asked: boolean): void {
    const subnet6 = this.#subnet6!;
    const text = next.address6!;
    const host = hostNumber6(parseIPv6(text), subnet6.prefix)!;
    const lastMapped = this.#span - 2;
    if (host > lastMapped) return;
    const own = next.address === undefined ? undefined : parseIPv4(next.address) - this.#network;
    if (own === host) return;
    const what = asked
      ? `--address6 ${text}`
      : `the address6 ${text} of "${this.#options.name}" (set before)`;
    const mine = own === undefined
      ? `"${this.#options.name}" has no fixed --address`
      : `this client's fixed address ${next.address} goes with ${subnet6.address(own)}`;
    throw new UsageError(
      `${what} is one the server gives with an IPv4 address: host numbers 2 to ` +
        `${lastMapped} follow the IPv4 addresses (${formatIPv4(this.#network + host)} gets ` +
        `${text}), and ${mine}; use the address6 of this client's fixed address, or a host ` +
        `number above ${lastMapped} such as ${subnet6.address(lastMapped + 2)}` +
        (asked ? "" : `, or --no-address6`),
    );
  }

  #routes(list: string[], others: Map<string, ClientSettings>): string[] {
    if (list.length > MAX_CLIENT_ROUTES) {
      throw new UsageError(
        `--route given ${list.length} times: a client may have at most ${MAX_CLIENT_ROUTES} ` +
          `networks behind it; join adjacent ones into a shorter prefix`,
      );
    }
    const vpn = [this.#subnet, ...(this.#subnet6 ? [parseCidr(this.#subnet6.subnet)] : [])];
    const taken = [...others].flatMap(([name, s]) => s.routes.map((r) => ({ name, r })));
    const routes: Cidr[] = [];
    for (const text of list) {
      const route = this.#route(text);
      const vpnHit = vpn.find((v) => overlaps(route, v));
      if (vpnHit !== undefined) {
        throw new UsageError(
          `--route ${text} overlaps the VPN's own ${cidrText(vpnHit)} (${this.#yaml}); a route ` +
            `is a network behind "${this.#options.name}", outside the tunnel's addresses`,
        );
      }
      const theirs = taken.find(({ r }) => overlaps(route, parseCidr(r)));
      if (theirs !== undefined) {
        throw new UsageError(
          `--route ${text} overlaps ${theirs.r}, a network behind "${theirs.name}"; a network ` +
            `has one client behind it: change that one first (vpn client set ${theirs.name} ` +
            `--route ... or --no-routes --dir ${this.#options.dir})`,
        );
      }
      const mine = routes.find((r) => overlaps(route, r));
      if (mine !== undefined) {
        throw new UsageError(
          `--route ${text} overlaps --route ${cidrText(mine)}; give the larger network only`,
        );
      }
      routes.push(route);
    }
    return routes.map(cidrText);
  }

  /** One `--route`, parsed: a network in canonical form, not a default route. */
  #route(text: string): Cidr {
    let route;
    try {
      route = parseCidr(text);
    } catch (error) {
      throw new UsageError(
        `--route ${text}: ${(error as Error).message}; give a network such as 192.168.60.0/24`,
      );
    }
    if (route.address !== route.network) {
      throw new UsageError(
        `--route ${text} has host bits set; did you mean --route ${cidrText(route)}?`,
      );
    }
    if (route.prefix === 0) {
      throw new UsageError(
        `--route ${text} is a default route; for all of the client's traffic use ` +
          `--redirect-gateway, and give --route the networks behind the client`,
      );
    }
    if (route.family === 6 && this.#subnet6 === undefined) {
      throw new UsageError(
        `--route ${text} is an IPv6 network and the tunnel has no IPv6 (${this.#yaml} has no ` +
          `subnet6); set subnet6 in server.yaml and restart vpn serve`,
      );
    }
    return route;
  }
}

/** `network/prefix`. */
function cidrText(cidr: Cidr): string {
  return `${cidr.network}/${cidr.prefix}`;
}

/** Whether two networks share an address: of one family, and one holds the other. */
function overlaps(a: Cidr, b: Cidr): boolean {
  if (a.family !== b.family) return false;
  const x = networkBytes(a);
  const y = networkBytes(b);
  const bits = Math.min(a.prefix, b.prefix);
  for (let bit = 0; bit < bits; bit += 8) {
    const mask = 0xff00 >> Math.min(8, bits - bit) & 0xff;
    if ((x[bit / 8]! & mask) !== (y[bit / 8]! & mask)) return false;
  }
  return true;
}

/** The network address of `cidr` as bytes, 4 or 16. */
function networkBytes(cidr: Cidr): Uint8Array {
  if (cidr.family === 6) return parseIPv6(cidr.network);
  const n = parseIPv4(cidr.network);
  return Uint8Array.of(n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255);
}

/**
 * The host number of IPv6 address `bytes` in a /`prefix` (its bits after the prefix), or
 * undefined when it is 2^32 or more.
 */
function hostNumber6(bytes: Uint8Array, prefix: number): number | undefined {
  for (let i = 0; i < 12; i++) {
    const keep = Math.min(8, Math.max(0, prefix - 8 * i));
    if ((bytes[i]! & (0xff >> keep)) !== 0) return undefined;
  }
  return new DataView(bytes.buffer, bytes.byteOffset + 12, 4).getUint32(0);
}

/** Options of `vpn connect`. */
