import { assertEquals } from "./_assert.ts";
import { pushedNetworkOptions } from "../mod/openvpn/push_options.ts";
import type { ClientNetwork } from "../mod/core/session.ts";

const BASE: ClientNetwork = {
  address: "10.8.0.2",
  addressNumber: 0x0a080002,
  prefix: 24,
  netmask: "255.255.255.0",
  gateway: "10.8.0.1",
  routes: [],
  sites: [],
  redirectGateway: false,
  dns: { servers: [], domains: [] },
  mtu: 1400,
  keepalive: { interval: 10, timeout: 60 },
};

Deno.test("pushedNetworkOptions() of an IPv4-only client: routes, gateway, topology and ifconfig, as a stock server", () => {
  assertEquals(pushedNetworkOptions({ ...BASE, routes: ["192.168.50.0/24"] }, false), [
    "route 192.168.50.0 255.255.255.0",
    "route-gateway 10.8.0.1",
    "topology subnet",
    "ifconfig 10.8.0.2 255.255.255.0",
  ]);
});

Deno.test("pushedNetworkOptions() of a full-tunnel client with IPv6 and DNS: dhcp-option always, dns for a client that takes it", () => {
  const network: ClientNetwork = {
    ...BASE,
    address6: "fd00:8::2",
    prefix6: 64,
    gateway6: "fd00:8::1",
    routes: ["192.168.60.0/24", "fd00:60::/64"],
    redirectGateway: true,
    dns: { servers: ["10.8.0.1", "fd00:8::1"], domains: ["corp.example", "lab.example"] },
  };
  const common = [
    "dhcp-option DNS 10.8.0.1",
    "dhcp-option DNS6 fd00:8::1",
    "dhcp-option DOMAIN corp.example",
    "dhcp-option DOMAIN lab.example",
  ];
  const rest = [
    "redirect-gateway def1 ipv6",
    "route 192.168.60.0 255.255.255.0",
    "route-ipv6 fd00:60::/64",
    "tun-ipv6",
    "route-gateway 10.8.0.1",
    "topology subnet",
    "ifconfig-ipv6 fd00:8::2/64 fd00:8::1",
    "ifconfig 10.8.0.2 255.255.255.0",
  ];
  assertEquals(pushedNetworkOptions(network, false), [...common, ...rest]);
  assertEquals(pushedNetworkOptions(network, true), [
    ...common,
    "dns server 0 address 10.8.0.1 fd00:8::1",
    "dns search-domains corp.example lab.example",
    ...rest,
  ]);
  assertEquals(
    pushedNetworkOptions({ ...BASE, redirectGateway: true }, false)[0],
    "redirect-gateway def1",
    "no ipv6 flag without IPv6 in the tunnel",
  );
});
