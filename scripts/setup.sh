#!/usr/bin/env bash
# Installs what vpn needs to run and to be tested, and nothing that is already there:
# Deno 2.9.6 from npm, the Debian packages the end-to-end tests use, the npm dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

DENO_VERSION=2.9.6
if ! command -v deno >/dev/null || [ "$(deno --version | head -1 | cut -d' ' -f2)" != "$DENO_VERSION" ]; then
  echo "setup: installing deno@$DENO_VERSION from npm"
  npm install -g --no-fund --no-audit "deno@$DENO_VERSION" >/dev/null
fi

# command -> Debian package
declare -A packages=([ip]=iproute2 [ping]=iputils-ping [iperf3]=iperf3 [iptables]=iptables [tcpdump]=tcpdump [conntrack]=conntrack [openvpn]=openvpn [openssl]=openssl)
missing=()
for cmd in "${!packages[@]}"; do
  command -v "$cmd" >/dev/null || missing+=("${packages[$cmd]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]} from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

deno install --quiet
echo "setup: ready ($(deno --version | head -1))"
