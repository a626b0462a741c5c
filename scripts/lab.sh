#!/bin/sh
# The flannel multi-host tutorial on this machine, in one command (fresh Debian 12, as root):
#
#   sudo scripts/lab.sh                                  # 2 hosts, udp, ping across, tear down
#   sudo scripts/lab.sh --backend vxlan --hosts 3 --keep # leave it running
#   sudo scripts/lab.sh --docker                         # real dockerd and containers (docker.io)
#   sudo scripts/lab.sh --backend vxlan --ipv6           # dual stack: ping and ping -6 across
#   sudo scripts/lab.sh --backend wireguard              # encrypted: wg show, then ping across
#   sudo scripts/lab.sh --down-all                       # tear down kept labs
#
# scripts/bootstrap.sh installs what is missing (apt: etcd, iproute2, ping, iperf3, socat,
# iptables, wireguard-go and wireguard-tools, a C compiler, docker.io and busybox-static;
# pip: udpflannel into ./.venv), then this runs
# `udpflannel lab "$@"` (see `udpflannel lab --help`). The lab lives in network namespaces
# only: nothing is added to this machine's own addresses or routes.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ "$(id -u)" -ne 0 ]; then
    echo "lab.sh: run as root (network namespaces): sudo $0 $*" >&2
    exit 2
fi
bin=$("$ROOT/scripts/bootstrap.sh")
exec "$bin/udpflannel" lab "$@"
