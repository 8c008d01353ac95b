#!/usr/bin/env bash
# Install the Debian packages netwarden and its tests need, only those missing.
set -euo pipefail
PKGS=(
  python3 python3-venv
  iproute2 iptables nftables libnftables1 procps util-linux
  libpcap0.8 libpcap0.8-dev tcpdump tshark
  libbpf1 libbpf-dev bpftool clang llvm
  nmap curl dnsutils socat ethtool iputils-ping hping3 gcc liburing-dev
  chromium chromium-driver
)
missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "netwarden: missing Debian packages: ${missing[*]}; run 'make' as root or install them" >&2
  exit 3
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
