/**
 * A client's network settings in OpenVPN's words: the PUSH_REPLY options that give an OpenVPN
 * 2.x or Connect client its addresses, routes, full tunnel and DNS (OPENVPN.md 7.3; the
 * openvpn(8) manual for `redirect-gateway`, `dhcp-option` and `dns`).
 *
 * @module
 */

import { formatIPv4, ipv4Netmask, parseCidr } from "../core/ip.ts";
import type { ClientNetwork } from "../core/session.ts";

/**
 * The options for `network`, in the order a stock server sends them; `dnsOption` says the
 * client announced the 2.6 `dns` option (IV_PROTO bit 6, or bit 11 from Connect).
 */
export function pushedNetworkOptions(network: ClientNetwork, dnsOption: boolean): string[] {
  const options: string[] = [];
  const ipv6 = network.address6 !== undefined;
  for (const server of network.dns.servers) {
    options.push(`dhcp-option ${server.includes(":") ? "DNS6" : "DNS"} ${server}`);
  }
  for (const domain of network.dns.domains) options.push(`dhcp-option DOMAIN ${domain}`);
  // dhcp-option stays for scripts (update-resolv-conf) and older clients; a 2.6 client that
  // takes `dns` applies that one.
  if (dnsOption && network.dns.servers.length > 0) {
    options.push(`dns server 0 address ${network.dns.servers.join(" ")}`);
  }
  if (dnsOption && network.dns.domains.length > 0) {
    options.push(`dns search-domains ${network.dns.domains.join(" ")}`);
  }
  // def1: 0.0.0.0/1 and 128.0.0.0/1 over the default route, which stays for the host route
  // to the server; `ipv6` does the same with ::/1 and 8000::/1.
  if (network.redirectGateway) {
    options.push(ipv6 ? "redirect-gateway def1 ipv6" : "redirect-gateway def1");
  }
  for (const route of network.routes) {
    const { family, network: address, prefix } = parseCidr(route);
    options.push(
      family === 4 ? `route ${address} ${formatIPv4(ipv4Netmask(prefix))}` : `route-ipv6 ${route}`,
    );
  }
  // 2.6 servers still send it; 2.3 and older clients need it for any IPv6.
  if (ipv6) options.push("tun-ipv6");
  options.push(`route-gateway ${network.gateway}`, "topology subnet");
  if (ipv6) {
    options.push(`ifconfig-ipv6 ${network.address6}/${network.prefix6} ${network.gateway6}`);
  }
  options.push(`ifconfig ${network.address} ${network.netmask}`);
  return options;
}
